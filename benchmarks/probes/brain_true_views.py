"""Issue 17, brain: do true augmented views through the frozen bottom help where the cached maps' symmetries did not?

The tuned top learns from cached maps, augmented only by the square's symmetries (``tune_views="dihedral"``).
The brain data curve (``brain_data_curve.py``) says brain gains about 3.6 validation points for every doubling
of its training images; the paper's augmentation (rotation up to 20 degrees, flips, scaling 0.9-1.1,
:func:`multihead.data.augment.paper_augmentation`) makes new images of a sort the symmetries cannot. This
probe runs ``--views`` such views of every brain training image through the frozen bottom once (on the CPU
runtime the map cache uses), and tunes brain-only models whose every training row is, each time it is read,
the image itself or one of its views drawn at random (then a random symmetry, as in the picked recipe). The
same seeds without views are the baseline. Brain-only, as the data curve: the joint model's brain is within a
point of them. Choices are read on validation; test is reported.

    python benchmarks/probes/brain_true_views.py --cache-dir /work/mhcache-maps
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from multihead.benchmark import machine_info
from multihead.data.augment import AugmentedViews
from multihead.inference.backends import bottom_runtime_for, resolve_backend
from multihead.inference.export import bottom_outputs
from multihead.model.trunk_split import split_trunk
from multihead.training import TrainConfig
from multihead.training.tune import organ_accuracies, top_features, tune_top

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from brain_data_curve import brain_maps
from tuning import SAMPLE

REPO = Path(__file__).resolve().parents[2]


class RandomViews:
    """A map cache's ``gather`` where row ``i`` of the training set is, at every read, its cached map or one of
    its views, drawn at random."""

    def __init__(self, cache, locations, view_maps: torch.Tensor, view_pooled: torch.Tensor, seed: int) -> None:
        self.cache, self.locations = cache, locations
        self.view_maps, self.view_pooled = view_maps, view_pooled  # [images, views, ...]
        self.generator = torch.Generator().manual_seed(seed)

    def gather(self, rows: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.tensor([i for i, _ in rows])
        maps, pooled = self.cache.gather([self.locations[i] for i in index.tolist()])
        drawn = torch.randint(0, self.view_maps.shape[1] + 1, (len(index),), generator=self.generator)
        use = (drawn > 0).nonzero().flatten()
        if len(use):
            maps[use] = self.view_maps[index[use], drawn[use] - 1].float()
            pooled[use] = self.view_pooled[index[use], drawn[use] - 1]
        return maps, pooled


def with_views(data, view_maps: torch.Tensor, view_pooled: torch.Tensor, seed: int):
    """``data`` (a MapSet) read through :class:`RandomViews`."""
    return type(data)(data.organs, data.subtypes, list(data.relpaths),
                      RandomViews(data.cache, data.locations, view_maps, view_pooled, seed),
                      [(i, 0) for i in range(len(data))], list(data.paths))


@torch.no_grad()
def view_maps_of(model, parts, paths: list[Path], n_views: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_views`` paper-augmented views of every image through the frozen bottom: float16 maps, pooled stages."""
    views = AugmentedViews(model.preprocessing, n_views=n_views, seed=0)
    runtime = bottom_runtime_for(model, parts, resolve_backend("auto", "fp32", "cpu"), fallback=True)
    maps, pooled = [], []
    for position, path in enumerate(paths):
        images = views((position, path))
        if runtime is not None:
            out = runtime.run(images, bottom_outputs(parts))
            found = out["maps"], out.get("pooled", out["maps"].new_zeros(len(images), 0))
        else:
            found = parts.bottom_forward(model.preprocessing.normalize(images))
        maps.append(found[0].half())
        pooled.append(found[1].float())
    return torch.stack(maps), torch.stack(pooled)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, default=REPO / "docs" / "accuracy" / "split.json")
    parser.add_argument("--data", type=Path, default=SAMPLE)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--views", type=int, default=4, help="augmented views per training image")
    parser.add_argument("--seeds", type=int, default=2, help="training seeds, from --first-seed on")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="above 0: the runs are added to --out's (same views and settings)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "accuracy" / "brain-true-views.json")
    args = parser.parse_args()

    # the page's picked recipe; every epoch runs (the kept one is chosen on validation)
    config = TrainConfig(image_size=448, tune_from="auto", tune_epochs=args.epochs, tune_lr=1e-4, tune_head_lr=1e-4,
                         tune_batchnorm="adapted", tune_views="dihedral", tune_patience=args.epochs)
    scan, model, parts, maps = brain_maps(args.data, args.split, config, args.cache_dir)
    brain = scan.taxonomy.organ_index("brain")
    started = time.perf_counter()
    view_maps, view_pooled = view_maps_of(model, parts, maps["train"].paths, args.views)
    views_s = round(time.perf_counter() - started, 1)
    print(f"{args.views} views of {len(maps['train'])} brain training images in {views_s} s", flush=True)
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for arm in ("cached maps", f"+ {args.views} true views"):
            tuned = copy.deepcopy(model)
            tuned_parts = split_trunk(tuned.trunk, config.tune_from)
            train = maps["train"] if arm == "cached maps" else with_views(maps["train"], view_maps, view_pooled, seed)
            started = time.perf_counter()
            torch.manual_seed(seed)
            history = tune_top(tuned, tuned_parts, train, maps["val"], config.override(seed=seed))
            moved = {s: top_features(tuned_parts, maps[s], tuned) for s in ("val", "test")}
            tuning = [r for r in history if str(r["part"]).startswith("tune")]
            name = scan.taxonomy.organ_names[brain]
            run = {"arm": arm, "seed": seed, **{s: round(organ_accuracies(tuned, moved[s])[name][0], 4)
                                                for s in ("val", "test")},
                   "kept_epoch": max((r["epoch"] for r in tuning if r.get("best")), default=0),
                   "val_by_epoch": [round(r["val"]["accuracy"], 4) for r in tuning],
                   "seconds": round(time.perf_counter() - started, 1)}
            runs.append(run)
            print(json.dumps(run), flush=True)
    record = {"probe": "benchmarks/probes/brain_true_views.py", "config": config.to_dict(), "cut": parts.cut,
              "views": args.views, "views_s": views_s, "split": args.split.name, "train_images": len(maps["train"]),
              "val_images": len(maps["val"]), "test_images": len(maps["test"]), "runs": runs,
              "machine": machine_info(), "date": time.strftime("%Y-%m-%d")}
    if args.first_seed:  # more seeds for the same probe
        before = json.loads(args.out.read_text())
        if (before["config"], before["views"]) != (record["config"], record["views"]):
            raise SystemExit(f"{args.out} holds another probe's runs (settings or views differ)")
        record["runs"] = before["runs"] + runs
        record["views_s"] = before["views_s"]  # the first run's, measured alone
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
