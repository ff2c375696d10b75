"""A training run end to end: folder -> split -> cached features -> trained heads -> checkpoint.

Library code with callbacks; the CLI draws progress bars and tables from them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.scan import DatasetScan, scan_dataset
from ..data.splits import Split, make_split
from ..data.views import VIEWS
from ..evaluation.metrics import feature_metrics
from ..evaluation.trust_state import describe_trust
from ..features.dataset import FeatureSet, dataset_features
from ..features.maps import MapSet, labelled_maps
from ..model.heads import MultiHeadModel, create_model
from ..model.records import DataSource, TrainingRecord, to_dict
from ..model.trunk import TrunkWeights
from ..model.trunk_split import STEM, split_trunk
from ..taxonomy import Taxonomy
from .config import TrainConfig
from .heads import fit_heads
from .posthoc import fit_temperatures, fit_trust
from .tune import top_features, tune_precision, tune_top

__all__ = ["TrainResult", "save_split_next_to", "train_from_folder"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: MultiHeadModel
    history: list[dict[str, object]]
    split: Split
    scan: DatasetScan
    failures: list[tuple[str, str]] = field(default_factory=list)
    """(relpath, reason) of files skipped because they could not be read."""
    timings: dict[str, float] = field(default_factory=dict)


DataFolders = str | os.PathLike | Sequence[str | os.PathLike]
"""One data folder, or several read as their union (:func:`~multihead.data.scan.scan_dataset`)."""


def train_from_folder(data_dir: DataFolders, *, config: TrainConfig | None = None,
                      trunk: str = "resnet18", trunk_weights: TrunkWeights = "imagenet",
                      taxonomy: Taxonomy | str | None = None, split: str | os.PathLike | Split | None = None,
                      cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                      on_stage: Callable[[str], None] | None = None,
                      on_progress: Callable[[str, int, int], None] | None = None,
                      on_epoch: Callable[[dict[str, object]], None] | None = None) -> TrainResult:
    """Train a model on ``<data_dir>/<organ>/<subtype>/<image>``, or on the union of several such folders.

    Args:
        data_dir: a data folder or a list of them. The split is leak-free across folders (near-duplicates
            are grouped whichever folder holds them), and the checkpoint records each folder by name and
            image count, never by path.
        config: training settings (see :data:`multihead.training.config.PRESETS`).
        split: a split file or :class:`Split` to reuse; default: a new leak-free split seeded by ``config.seed``.
        cache_dir: where trunk features (and, when tuning, the frozen bottom's maps) are cached (default
            ``$MULTIHEAD_CACHE`` or ``~/.cache/multihead``).
        device: where to train; tuning the trunk's top (``config.tune_from``) is the part a GPU speeds up.
        on_stage: called with a line of text at each stage (scan, split, calibration).
        on_progress: called as ``(task, done, total)`` while hashing and extracting.
        on_epoch: called with each epoch's record (losses and accuracies).

    Example:
        >>> result = train_from_folder("data/", trunk_weights="trunk.safetensors")  # doctest: +SKIP
        >>> result.model.save("model.safetensors")
    """
    config = config or TrainConfig()
    timings: dict[str, float] = {}
    stage = on_stage or (lambda name: log.info("%s", name))
    started = time.perf_counter()
    scan = scan_dataset(data_dir, taxonomy)
    if scan.given_root is not None:
        stage(f"using {scan.root}, the data folder inside {scan.given_root}")
    for note in scan.notes:
        stage(note)
    stage(f"found {len(scan.records)} images in {len(scan.taxonomy.organs) - len(scan.empty_organs)} organs"
          + (f" ({scan.describe()})" if len(scan.sources) > 1 else "")
          + (f"; no images for {', '.join(scan.empty_organs)}" if scan.empty_organs else ""))
    if isinstance(split, (str, os.PathLike)):
        split = Split.load(split)
    failures: list[tuple[str, str]] = []
    if split is None:
        split, failures = make_split(scan, seed=config.seed,
                                     progress=on_progress and (lambda d, t: on_progress("hashing", d, t)))
        stage(f"split {split.info['counts']}; {split.info['grouped_files']} near-duplicate files in "
              f"{split.info['groups']} groups kept within one split")
    timings["split_s"] = time.perf_counter() - started

    model = create_model(trunk, trunk_weights, scan.taxonomy, trunk_stages=config.trunk_stages,
                         image_size=config.image_size, seed=config.seed).to(device)
    if config.tune_from == "none":
        sets, history = _train_frozen(model, scan, split, config, cache_dir, timings, failures, on_progress, on_epoch)
    else:
        sets, history = _train_tuned(model, scan, split, config, cache_dir, timings, failures, on_progress, on_epoch,
                                     stage)
    calibration = None
    if config.calibrate and len(sets["val"]):
        calibration = fit_temperatures(model, sets["val"])
    trust = None
    if len(sets["train"]) > 1:
        trust = fit_trust(model, sets["train"], sets["val"], target_accuracy=config.target_accuracy,
                          abstain=config.abstain, min_covered_images=config.min_covered_images,
                          small_data=config.small_data)
    for line in describe_trust({"calibration": calibration, "trust": trust,
                                "available_organs": list(model.available_organs)}):
        stage(line)
    model.metadata = {
        "training": to_dict(TrainingRecord(config=config.to_dict(), trunk_weights=_weights_name(trunk_weights),
                                           data=[DataSource(s.name, s.images) for s in scan.sources], timings=timings)),
        "history": history,
        "split": {"info": split.info, "files": split.assignment},
        "available_organs": list(model.available_organs),
        "counts": {name: len(s) for name, s in sets.items()},
        "metrics": {name: feature_metrics(model, s) for name, s in sets.items() if len(s)},
        "skipped": failures,
        "calibration": calibration,
        "trust": trust,
    }
    return TrainResult(model, history, split, scan, failures, timings)


def _train_frozen(model: MultiHeadModel, scan: DatasetScan, split: Split, config: TrainConfig,
                  cache_dir: str | os.PathLike | None, timings: dict[str, float], failures: list[tuple[str, str]],
                  on_progress: Callable[[str, int, int], None] | None,
                  on_epoch: Callable[[dict[str, object]], None] | None,
                  ) -> tuple[dict[str, FeatureSet], list[dict[str, object]]]:
    """Cached features of the frozen trunk, then the heads."""
    views = VIEWS if config.views == "dihedral" else VIEWS[:1]
    started = time.perf_counter()
    sets: dict[str, FeatureSet] = {}
    for name in ("train", "val", "test"):
        online = name == "train" and config.views == "augmented"
        data, failed = dataset_features(
            model, scan, split.files(name), views=views if name == "train" else VIEWS[:1], cache_dir=cache_dir,
            progress=on_progress and (lambda d, t, name=name: on_progress(f"features {name}", d, t)),
            augmented_views=config.epochs if online else 0, seed=config.seed)
        sets[name] = data
        failures += failed
    timings["features_s"] = time.perf_counter() - started
    started = time.perf_counter()
    history = fit_heads(model, sets["train"], sets["val"], config, on_epoch=on_epoch)
    timings["heads_s"] = time.perf_counter() - started
    return sets, history


def _train_tuned(model: MultiHeadModel, scan: DatasetScan, split: Split, config: TrainConfig,
                 cache_dir: str | os.PathLike | None, timings: dict[str, float], failures: list[tuple[str, str]],
                 on_progress: Callable[[str, int, int], None] | None,
                 on_epoch: Callable[[dict[str, object]], None] | None, stage: Callable[[str], None],
                 ) -> tuple[dict[str, FeatureSet], list[dict[str, object]]]:
    """Cached maps of the frozen bottom, then heads warmed up and the top tuned with them; the features the
    post-hoc estimators are fitted on come from the tuned top."""
    parts = split_trunk(model.trunk, config.tune_from)
    stage(f"tuning trunk {model.trunk.name!r} from {parts.cut!r} up in {tune_precision(config, model.device)}; "
          "below it frozen" + ("" if parts.cut == STEM else ", its maps cached"))
    started = time.perf_counter()
    maps: dict[str, MapSet] = {}
    for name in ("train", "val", "test"):
        maps[name], failed = labelled_maps(
            model, parts, scan, split.files(name), cache_dir=cache_dir, batch_size=config.batch_size,
            progress=on_progress and (lambda d, t, name=name: on_progress(f"maps {name}", d, t)))
        failures += failed
    timings["maps_s"] = time.perf_counter() - started
    started = time.perf_counter()
    history = tune_top(model, parts, maps["train"], maps["val"], config, on_epoch=on_epoch, on_progress=on_progress)
    if any(r.get("best") for r in history if r.get("stage") == "tune"):
        model.trunk.mark_tuned(parts.cut)
    else:
        stage("no tuning epoch beat the frozen top on validation: the trunk stays as published (frozen)")
    timings["tune_s"] = time.perf_counter() - started
    sets = {name: top_features(parts, data, model) for name, data in maps.items()}
    return sets, history


def _weights_name(weights: TrunkWeights) -> str:
    """The trunk's weights as a checkpoint records them: an id as it is, a local file by its name only (the
    trunk's fingerprint identifies its contents; the machine's paths are nobody's business)."""
    if isinstance(weights, os.PathLike) or os.sep in str(weights):
        return Path(weights).name
    return str(weights)


def save_split_next_to(path: str | os.PathLike, split: Split) -> Path:
    """Write the split as ``<checkpoint stem>.split.json`` beside a checkpoint, for ``evaluate --split``."""
    target = Path(path).with_suffix(".split.json")
    split.save(target)
    return target
