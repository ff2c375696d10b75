"""Frozen trunk against a tuned top, on a leak-free split of the shared sample: one configuration per call.

Each call caches the frozen bottom's maps (once per input size and cut), warms the heads up on the frozen
top's features (that model is the *frozen* row: the same heads the frozen default trains), tunes the top
with them (:func:`multihead.training.tune.tune_top`), and appends one JSON line to ``--out``: per-organ
validation and test accuracy of both, every epoch's validation record and time, and the tuned model
measured again end to end through the whole trunk from the image files (``evaluate_folder``, float32 maps,
not the cached float16 ones). Choices are read off validation; test is reported. The committed split is
seed 0; ``--split`` takes another one made the same way (``benchmarks/probes/pooling/splits.py``), and its
seed goes into the row's name and ``split_seed``.

    python benchmarks/tuning.py --px 448 --tune-from auto --seed 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import multihead
from multihead.benchmark import machine_info
from multihead.data.scan import scan_dataset
from multihead.data.splits import Split
from multihead.evaluation import evaluate_folder
from multihead.evaluation.metrics import feature_metrics
from multihead.features.maps import labelled_maps
from multihead.model.heads import create_model
from multihead.model.trunk_split import split_trunk
from multihead.training import TrainConfig, fit_heads
from multihead.training.tune import organ_balanced_accuracy, top_features, tune_top

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "multi-cancer-sample"
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2-imagenet-features.safetensors"


def model_and_maps(scan, split: Split, config: TrainConfig, cache_dir: Path | None,
                   subsets: tuple[str, ...] = ("train", "val", "test")) -> tuple:
    """MobileNetV2 with ImageNet weights and untrained heads as ``config`` says, its trunk cut at
    ``config.tune_from``, and the maps at the cut of each subset of ``split`` (cached in ``cache_dir``);
    returns ``(model, parts, maps, seconds the maps took)``."""
    model = create_model("mobilenet_v2", WEIGHTS, scan.taxonomy, trunk_stages=config.trunk_stages,
                         image_size=config.image_size, seed=config.seed)
    parts = split_trunk(model.trunk, config.tune_from)
    started = time.perf_counter()
    maps = {subset: labelled_maps(model, parts, scan, split.files(subset), cache_dir=cache_dir)[0]
            for subset in subsets}
    return model, parts, maps, round(time.perf_counter() - started, 1)


def per_organ(model: multihead.MultiHeadModel, data) -> dict[str, float]:
    """End-to-end accuracy per organ with images (organ and subtype both right)."""
    with torch.no_grad():
        _, subtype = model.decide(model.forward_heads(data.features[:, 0].to(model.device)))
    right = (subtype.cpu() == data.subtypes).float()
    names = model.taxonomy.organ_names
    return {names[o]: round(float(right[data.organs == o].mean()), 4) for o in data.organs.unique().tolist()}


def summary(model: multihead.MultiHeadModel, data) -> dict[str, object]:
    metrics = feature_metrics(model, data)
    return {"n": len(data), "accuracy": round(metrics["accuracy"], 4), "router": round(metrics["router_accuracy"], 4),
            "organ_balanced": round(organ_balanced_accuracy(model, data), 4), "organs": per_organ(model, data)}


def subset(data, organ: int):
    """The images of one organ of a MapSet."""
    keep = (data.organs == organ).nonzero().flatten().tolist()
    return type(data)(data.organs[keep], data.subtypes[keep], [data.relpaths[i] for i in keep], data.cache,
                      [data.locations[i] for i in keep], [data.paths[i] for i in keep])


def per_organ_tuned(model: multihead.MultiHeadModel, parts, maps: dict, config: TrainConfig) -> dict[str, object]:
    """The paper's deployment, tuned: one copy of the top and head per organ, each tuned on its organ's images
    only; the frozen model's router picks the organ, that organ's tuned copy the subtype. Returns the
    end-to-end validation and test accuracy per organ and overall, as :func:`summary` does."""
    import copy

    router = copy.deepcopy(model)  # the warmed-up frozen model: its router decides the organ
    sets = {s: top_features(parts, maps[s], router) for s in ("val", "test")}
    with torch.no_grad():
        decided = {s: router.decide(router.forward_heads(sets[s].features[:, 0]))[0] for s in sets}
    right = {s: torch.zeros(len(maps[s]), dtype=torch.bool) for s in sets}
    for organ in maps["train"].organs.unique().tolist():
        own = copy.deepcopy(model)
        own_parts = split_trunk(own.trunk, config.tune_from)
        tune_top(own, own_parts, subset(maps["train"], organ), subset(maps["val"], organ), config)
        for s in sets:
            rows = (maps[s].organs == organ).nonzero().flatten()
            if not len(rows):
                continue
            features = top_features(own_parts, subset(maps[s], organ), own).features[:, 0]
            # the organ's own head, given the organ: its best subtype (the router of `own` saw one organ only)
            start = own.taxonomy.num_organs + own.taxonomy.head_offsets[organ]
            with torch.no_grad():
                logits = own.head_logits(features)[:, start:start + own.taxonomy.head_sizes[organ]]
            subtype = logits.argmax(1) + own.taxonomy.head_offsets[organ]
            right[s][rows] = (subtype == maps[s].subtypes[rows]) & (decided[s][rows] == organ)
        print(f"per-organ: {own.taxonomy.organ_names[organ]} tuned", flush=True)
    names = model.taxonomy.organ_names
    result = {}
    for s in sets:
        organs = maps[s].organs
        per = {names[o]: round(float(right[s][organs == o].float().mean()), 4) for o in organs.unique().tolist()}
        result[s] = {"n": len(organs), "accuracy": round(float(right[s].float().mean()), 4),
                     "router": round(float((decided[s] == organs).float().mean()), 4),
                     "organ_balanced": round(sum(per.values()) / len(per), 4), "organs": per}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--px", type=int, default=448)
    parser.add_argument("--tune-from", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="multihead", choices=("multihead", "flat", "per-organ"))
    parser.add_argument("--batchnorm", default="train", choices=("train", "frozen", "adapted"))
    parser.add_argument("--views", default="flips", choices=("none", "flips", "dihedral"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--tune-lr", type=float, default=TrainConfig.tune_lr)
    parser.add_argument("--tune-head-lr", type=float, default=TrainConfig.tune_head_lr)
    parser.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"),
                        help="tune_precision (rows without it in the config ran fp32 on the CPU)")
    parser.add_argument("--label-smoothing", type=float, default=0.0, help="tune_label_smoothing")
    parser.add_argument("--data", type=Path, default=SAMPLE)
    parser.add_argument("--split", type=Path, default=REPO / "docs" / "accuracy" / "split.json")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--models", type=Path, default=Path("runs/tuning"))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "accuracy" / "tuning.jsonl")
    parser.add_argument("--no-end-to-end", action="store_true", help="skip the evaluation through the whole trunk")
    args = parser.parse_args()

    config = TrainConfig(image_size=args.px, method="multihead" if args.method == "per-organ" else args.method,
                         seed=args.seed, tune_from=args.tune_from,
                         tune_epochs=args.epochs, tune_lr=args.tune_lr, tune_head_lr=args.tune_head_lr,
                         tune_batchnorm=args.batchnorm,
                         tune_views=args.views, tune_precision=args.precision,
                         tune_label_smoothing=args.label_smoothing,
                         tune_patience=args.epochs)  # all epochs: the curve is the result
    name = (f"mobilenet_v2-{args.px}-{args.method}-tune-{args.tune_from}-bn-{args.batchnorm}-{args.views}"
            f"-lr{args.tune_lr:g}-head{args.tune_head_lr:g}" + (f"-ep{args.epochs}" if args.epochs != 8 else "")
            + ("" if args.precision == "fp32" else f"-{args.precision}")
            + (f"-ls{args.label_smoothing:g}" if args.label_smoothing else "") + f"-seed{args.seed}")
    torch.manual_seed(args.seed)
    split = Split.load(args.split)
    split_seed = int(split.info.get("seed", 0))
    if split_seed:
        name += f"-split{split_seed}"
    scan = scan_dataset(args.data)
    model, parts, maps, maps_s = model_and_maps(scan, split, config, args.cache_dir)
    timings: dict[str, object] = {"maps_s": maps_s}
    print(f"{name}: maps {timings['maps_s']} s", flush=True)

    started = time.perf_counter()
    frozen_sets = {subset: top_features(parts, data, model) for subset, data in maps.items()}
    fit_heads(model, frozen_sets["train"], frozen_sets["val"], config)
    frozen = {subset: summary(model, frozen_sets[subset]) for subset in ("val", "test")}
    timings["frozen_heads_s"] = round(time.perf_counter() - started, 1)
    print(f"frozen: val {frozen['val']['accuracy']} test {frozen['test']['accuracy']} {frozen['test']['organs']}",
          flush=True)

    if args.method == "per-organ":  # a baseline, not a deployable model: one tuned top per organ
        started = time.perf_counter()
        tuned = per_organ_tuned(model, parts, maps, config)
        timings["tune_s"] = round(time.perf_counter() - started, 1)
        record = {"name": name, "config": {**config.to_dict(), "method": "per-organ"}, "cut": parts.cut,
                  "split_seed": split_seed,
                  "heads_space": "standardized",
                  "timings": timings, "frozen": frozen, "tuned": tuned, "best_epoch": None, "history": [],
                  "machine": machine_info(), "date": time.strftime("%Y-%m-%d")}
        print(f"per-organ tuned: val {tuned['val']['accuracy']} test {tuned['test']['accuracy']} "
              f"{tuned['test']['organs']}", flush=True)
        with args.out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        return

    epoch_times: list[float] = []
    last = [time.perf_counter()]

    def on_epoch(record: dict[str, object]) -> None:
        if str(record["part"]).startswith("tune"):
            epoch_times.append(round(time.perf_counter() - last[0], 1))
            print(f"epoch {record['epoch']} {epoch_times[-1]} s val {record['val']['accuracy']:.4f} "
                  f"balanced {record['organ_balanced_accuracy']:.4f}", flush=True)
        last[0] = time.perf_counter()

    started = time.perf_counter()
    history = tune_top(model, parts, maps["train"], maps["val"], config, on_epoch=on_epoch)
    model.trunk.mark_tuned(parts.cut)
    timings["tune_s"] = round(time.perf_counter() - started, 1)
    timings["epoch_s"] = epoch_times
    tuned_sets = {subset: top_features(parts, maps[subset], model) for subset in ("val", "test")}
    tuned = {subset: summary(model, tuned_sets[subset]) for subset in ("val", "test")}
    print(f"tuned: val {tuned['val']['accuracy']} test {tuned['test']['accuracy']} {tuned['test']['organs']}",
          flush=True)
    args.models.mkdir(parents=True, exist_ok=True)
    model.metadata = {"training": {"config": config.to_dict()}}
    multihead.save(model, args.models / f"{name}.safetensors")
    record: dict[str, object] = {
        "name": name, "config": config.to_dict(), "cut": parts.cut, "split_seed": split_seed, "timings": timings,
        "frozen": frozen,
        # rows without this key were run before the heads were tuned in the standardised space they were warmed
        # up in (they took AdamW steps on the folded, raw-feature heads)
        "heads_space": "standardized",
        "tuned": tuned, "best_epoch": max((r["epoch"] for r in history if r.get("best") and "tune" in r["part"]),
                                          default=0),
        "history": [{k: r.get(k) for k in ("epoch", "part", "val", "organ_balanced_accuracy", "val_organs", "best")}
                    for r in history if str(r["part"]).startswith("tune")],
        "machine": machine_info(), "date": time.strftime("%Y-%m-%d"),
    }
    if not args.no_end_to_end:
        report, _ = evaluate_folder(model, args.data, split=split, subset="test", cache_dir=args.cache_dir,
                                    n_resamples=200)
        record["tuned_end_to_end_test"] = {
            "accuracy": report["overall"]["accuracy"], "router": report["router"]["accuracy"],
            "ece": report["overall"]["ece"],
            "organs": {o: e.get("accuracy") for o, e in report["organs"].items() if e.get("n")},
        }
        print(f"end to end: {record['tuned_end_to_end_test']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
