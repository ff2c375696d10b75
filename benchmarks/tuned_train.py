"""Issue 17's time target and a tuned model's trust figures, from the command line a user would type.

Times ``multihead train`` on the whole shared sample from a cold cache (extraction included), with the tuned
top (``--tune-from auto``) or frozen (``--tune-from none``, for the ratio), then measures the checkpoint it
wrote: test accuracy through the whole trunk, calibration error with and without the fitted temperatures, and
the out-of-distribution figures of ``benchmarks/trust/ood_small_organs.py`` (flagged shares per organ and
split, the shipped examples, AUROC on the unknowns of ``benchmarks/trust/make_unknowns.py``). One JSON
object per call, appended to ``--out``; run it on an idle machine, the load average is recorded.

    python benchmarks/trust/make_unknowns.py /tmp/unknowns
    python benchmarks/tuned_train.py --tune-from auto --split docs/accuracy/split.json --work /tmp/tuned-train \
        --unknowns /tmp/unknowns
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

import multihead
from multihead.benchmark import machine_info
from multihead.data import VIEWS, scan_dataset
from multihead.data.splits import Split
from multihead.evaluation.metrics import metrics_report, predict_features
from multihead.features import dataset_features
from multihead.inference.backends import resolve_backend
from multihead.training import TrainConfig

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "multi-cancer-sample"
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2-imagenet-features.safetensors"


def _metrics(model: multihead.MultiHeadModel, data) -> dict[str, object]:
    """What ``multihead evaluate`` reports on these features: accuracy with its interval, router, ECE, organs."""
    report = metrics_report(model.taxonomy, predict_features(model, data.features[:, 0], data.subtypes,
                                                             data.relpaths), n_resamples=1000)
    overall = report["overall"]
    return {"n": report["n_images"], "accuracy": round(overall["accuracy"], 4),
            "accuracy_ci95": [round(v, 4) for v in overall["accuracy_ci95"]],
            "router": round(report["router"]["accuracy"], 4), "ece": round(overall["ece"], 4),
            "organs": {name: round(entry["accuracy"], 4) for name, entry in report["organs"].items()
                       if entry.get("n")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tune-from", default="auto")
    parser.add_argument("--px", type=int, default=448)
    parser.add_argument("--batchnorm", default="train", choices=("train", "frozen", "adapted"),
                        help="--tune-batchnorm of the command")
    parser.add_argument("--views", default="flips", choices=("none", "flips", "dihedral"),
                        help="--tune-views of the command")
    parser.add_argument("--epochs", type=int, default=TrainConfig.tune_epochs, help="--tune-epochs of the command")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="--tune-precision of the command")
    parser.add_argument("--data", type=Path, default=DATA, help="a folder under the shared sample's layout")
    parser.add_argument("--split", type=Path, default=None, help="e.g. docs/accuracy/split.json (the committed one)")
    parser.add_argument("--work", type=Path, required=True, help="checkpoint and cache folder; its cache must be new")
    parser.add_argument("--unknowns", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tuned-train.jsonl")
    args = parser.parse_args()

    suffix = ("" if args.batchnorm == "train" else f"-bn-{args.batchnorm}") + (
        "" if args.views == "flips" else f"-{args.views}") + (
        "" if args.epochs == TrainConfig.tune_epochs else f"-ep{args.epochs}") + (
        "" if args.precision == "auto" else f"-{args.precision}")
    name = f"mobilenet_v2-{args.px}-tune-{args.tune_from}{suffix}"
    cache, checkpoint = args.work / f"{name}-cache", args.work / f"{name}.safetensors"
    if cache.exists():
        shutil.rmtree(cache)  # a cold cache: the extraction is part of the time
    args.work.mkdir(parents=True, exist_ok=True)
    command = ["train", str(args.data), "--out", str(checkpoint), "--trunk", "mobilenet_v2", "--trunk-weights",
               str(WEIGHTS), "--image-size", str(args.px), "--cache-dir", str(cache), "--tune-from", args.tune_from,
               *(["--split", str(args.split)] if args.split else []),
               *(["--tune-batchnorm", args.batchnorm] if args.batchnorm != "train" else []),
               *(["--tune-views", args.views] if args.views != "flips" else []),
               *(["--tune-epochs", str(args.epochs)] if args.epochs != TrainConfig.tune_epochs else []),
               *(["--tune-precision", args.precision] if args.precision != "auto" else [])]
    machine = machine_info()
    # what computes the maps in the command (labelled_maps' backend "auto"); rows without it ran PyTorch's
    maps_backend = resolve_backend("auto", "fp32", "cpu") if args.tune_from != "none" else None
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "multihead", *command], capture_output=True, text=True)
    wall = time.perf_counter() - started
    (args.work / f"{name}.log").write_text(run.stdout + run.stderr)
    if "is not used for the maps" in run.stderr:  # the runtime was refused: labelled_maps fell back to PyTorch
        maps_backend = "torch"
    if run.returncode:
        raise SystemExit(f"multihead train exited {run.returncode}: {run.stderr[-2000:]}")
    load_after = os.getloadavg()

    model = multihead.load(checkpoint)
    split = Split(model.metadata["split"]["files"], model.metadata["split"]["info"])
    test = dataset_features(model, scan_dataset(args.data, model.taxonomy), split.files("test"), views=VIEWS[:1],
                            cache_dir=cache)[0]
    calibrated = _metrics(model, test)
    scale = model.temperature.logit_scale.clone()
    model.temperature.logit_scale.fill_(1.0)
    uncalibrated = _metrics(model, test)
    model.temperature.logit_scale.copy_(scale)

    ood_json = args.work / f"{name}-ood.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "trust" / "ood_small_organs.py"), "--model",
                    str(checkpoint), "--cache", str(cache), "--unknowns", str(args.unknowns), "--json",
                    str(ood_json)], check=True, capture_output=True)
    ood = json.loads(ood_json.read_text())["before"]  # "before": measured as stored, nothing refitted

    training = model.metadata["training"]
    record = {
        "name": name, "command": "multihead " + " ".join(command).replace(str(REPO.parent), ".."),
        "wall_s": round(wall, 1), "timings": {k: round(v, 1) for k, v in training["timings"].items()},
        "tuned_from": model.trunk.tuned_from, "maps_backend": maps_backend,
        # None: every tuning epoch ran; rows without the field ran the library's old default, patience 3
        "tune_patience": training["config"]["tune_patience"],
        # what the tuning steps computed in (rows without it: fp32 on the CPU)
        "tune_precision": next((r["precision"] for r in model.metadata["history"] if "precision" in r), None),
        "epochs": [{k: r.get(k) for k in ("epoch", "part", "val", "organ_balanced_accuracy", "best")}
                   for r in model.metadata["history"] if str(r["part"]).startswith("tune")],
        "ood_features_read": model.metadata["trust"]["ood"]["features_read"],
        "test_whole_trunk": {"calibrated": calibrated, "temperature_1": uncalibrated},
        "ood": {"threshold": ood["threshold"], "unknowns": ood["unknowns"], "targets": ood["targets"],
                "flagged": ood["flagged"]},
        "machine": {**machine, "load_average_1m_after": load_after[0], "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps({k: record[k] for k in ("name", "wall_s", "timings", "tuned_from", "test_whole_trunk")},
                     indent=1), flush=True)
    print(json.dumps(record["ood"]["targets"]), flush=True)
    with args.out.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
