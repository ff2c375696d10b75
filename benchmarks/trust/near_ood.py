"""Issue 35's measurement, one command: how a model answers real images that are none of its subtypes.

Per group of ``shared/data/near-ood`` (healthy brain MRI, kidney CT with cysts or stones, other cervical cell sets,
mouth and food photographs, dermoscopy): the share flagged out of distribution, the share still given an organ or
a subtype, AUROC and FPR at 95 % TPR of the score; for the held-out (test) images of the model's split: the share
flagged, withheld and answered with a subtype, the accuracy of those answers and the calibration error. Writes one
JSON file naming the model and the machine, and prints the table ``docs/trust.md`` shows.

    python benchmarks/trust/near_ood.py                                   # the bundled model
    python benchmarks/trust/near_ood.py --model m.safetensors --split m.split.json --json out.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import multihead
from multihead.benchmark import machine_info
from multihead.data.splits import Split
from multihead.evaluation import evaluate_folder
from multihead.evaluation.reports import near_ood_markdown
from multihead.evaluation.trust import ood_report
from multihead.inference import default_model_path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--data", type=Path, nargs="+",
                        default=[DATA / "multi-cancer-sample", DATA / "multi-cancer-extra"])
    parser.add_argument("--split", type=Path, default=REPO / "docs" / "accuracy" / "sample-extra" / "split.json")
    parser.add_argument("--ood", type=Path, default=DATA / "near-ood")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "near-ood-default-model.json")
    parser.add_argument("--page", type=Path, default=REPO / "docs" / "trust.md",
                        help="the page whose near-ood block is rewritten (none: --page '')")
    args = parser.parse_args()
    args.page = args.page if args.page and str(args.page) else None

    model = multihead.load(args.model)
    split = Split.load(args.split)
    started = time.perf_counter()
    report = ood_report(model, args.data, args.ood, split=split, subset="test", cache_dir=args.cache_dir)
    test, _ = evaluate_folder(model, args.data, split=split, subset="test", cache_dir=args.cache_dir)
    trust = test["trust"]
    result = {
        "model": {"file": args.model.name, "sha256": hashlib.sha256(args.model.read_bytes()).hexdigest(),
                  "trunk": model.trunk.name, "covered_organs": list(model.covered_organs)},
        "data": [folder.name for folder in args.data], "split": args.split.name, "near_ood": args.ood.name,
        "held_out": {"n": trust["n"], "flagged": trust["out_of_distribution_fraction"],
                     "answered_with_subtype": trust["coverage"], "accuracy_answered": trust["accuracy_kept"],
                     "organ_only": trust["organ_only_fraction"], "uncertain": trust["uncertain_fraction"],
                     "ece": test["overall"]["ece"], "accuracy_all": test["overall"]["accuracy"]},
        "groups": report["groups"], "in_distribution": report["in_distribution"], "threshold": report["threshold"],
        "score": report["score"], "skipped": report["skipped"],
        "seconds": round(time.perf_counter() - started, 1), "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1, default=float) + "\n")
    block = page_block(result, report, args.json.relative_to(REPO) if args.json.is_relative_to(REPO) else args.json)
    print(block)
    if args.page is not None:
        text = args.page.read_text()
        start, end = text.index(START), text.index(END)
        args.page.write_text(text[:text.index("\n", start) + 1] + block + text[end:])
        print(f"wrote {args.json} and the block of {args.page}")


START, END = "<!-- near-ood:start", "<!-- near-ood:end -->"
TARGETS = (  # issue 35: group(s), what is counted, the most it may be
    (("natural_photo", "mouth_photo", "skin_dermoscopy", "cervical_other"), "organ_claimed", 0.05),
    (("brain_notumor", "kidney_cyst_stone"), "subtype_claimed", 0.10),
)


def page_block(result: dict, report: dict, source: Path) -> str:
    """The trust page's table and the verdict on issue 35's targets, from one measurement."""
    held = result["held_out"]
    machine = result["machine"]
    lines = [near_ood_markdown(report, title=f"### {result['model']['file']} (`{source}`)").strip("\n"), "",
             f"On the {held['n']} test images: {100 * held['answered_with_subtype']:.1f} % answered with a subtype "
             f"({100 * held['accuracy_answered']:.2f} % of them right), {100 * held['organ_only']:.1f} % the organ "
             f"only, {100 * held['uncertain']:.1f} % `uncertain` ({100 * held['flagged']:.1f} % flagged out of "
             f"distribution); expected calibration error {held['ece']:.3f}.", "",
             "| target (issue 35) | measured | |", "|---|---|---|"]
    for groups, key, most in TARGETS:
        for group in groups:
            value = result["groups"][group][key] if group in result["groups"] else None
            verdict = "not measured" if value is None else "met" if value <= most else "**not met**"
            shown = "n/a" if value is None else f"{100 * value:.1f} %"
            lines.append(f"| {group}: {key.replace('_', ' ')} <= {100 * most:.0f} % | {shown} | {verdict} |")
    lines += [f"| test images flagged out of distribution <= 2 % | {100 * held['flagged']:.1f} % | "
              f"{'met' if held['flagged'] <= 0.02 else '**not met**'} |",
              f"| ECE <= 0.03 | {held['ece']:.3f} | {'met' if held['ece'] <= 0.03 else '**not met**'} |", "",
              f"Measured on {machine['cpu_model']} ({machine['torch_threads']} threads), {result['date']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
