"""The feature cache: pooled trunk features on disk, so a frozen trunk runs once per image and view.

A cache folder belongs to one (trunk fingerprint, pooled stages, preprocessing, precision); inside, shards are
``.safetensors`` files whose keys are ``<sha256 of the file's bytes>/<view>``, so a renamed file is still
found and an edited one is not. A shard's metadata is checked before its tensors are read, and its tensors
before they are used (issue 36: float32, the trunk's feature width, finite, within :data:`MAX_FEATURE`); a damaged
or tampered shard is deleted and its entries are extracted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .._io import atomic_path, file_sha256
from ..data.images import ImageError, check_is_file
from ..inference.config import InferenceConfig
from ..inference.quantize import manifest_state
from ..model.heads import MultiHeadModel

__all__ = ["MAX_FEATURE", "FeatureCache", "default_cache_dir", "file_digest"]

log = logging.getLogger(__name__)

MAX_FEATURE = 1e6
"""Largest feature magnitude a cache shard may hold: pooled trunk features lie within a few hundred (ResNet50 with
random weights: 117; the bundled model: 4); a shard holding 1e30 was written by something else."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("MULTIHEAD_CACHE", Path.home() / ".cache" / "multihead" / "features"))


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes: the cache key, so a renamed file is still found and an edited one is not. A FIFO,
    a device or a folder is refused (:func:`~multihead.data.images.check_is_file`), never read."""
    check_is_file(path)
    try:
        return file_sha256(path)
    except OSError as err:
        raise ImageError(f"{os.fsdecode(path)}: cannot read file ({err.strerror or err})") from None


class FeatureCache:
    """On-disk features for one trunk, preprocessing and precision."""

    def __init__(self, directory: str | os.PathLike, model: MultiHeadModel, config: InferenceConfig) -> None:
        precision = config.resolve(model.device, model).precision  # "auto" as it runs (fp32 without a guard)
        self.identity = {
            "trunk": model.trunk.name,
            "fingerprint": model.trunk.fingerprint,
            "preprocessing": model.preprocessing.to_json(),
            "precision": precision,
        }
        if precision == "int8":  # which quantised graph: another calibration gives other features
            self.identity["int8"] = manifest_state(model)
        if model.trunk.stages:  # only when present: caches of single-stage trunks keep their keys
            self.identity["stages"] = list(model.trunk.stages)
        key = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        folder = re.sub(r"[^\w.+-]", "_", model.trunk.name)  # hf-hub:ORG/NAME -> hf-hub_ORG_NAME; others as named
        self.directory = Path(directory) / f"{folder}-{key}"
        self.width = model.num_features
        self._entries: dict[str, torch.Tensor] | None = None

    def _read(self) -> dict[str, torch.Tensor]:
        entries: dict[str, torch.Tensor] = {}
        for shard in sorted(self.directory.glob("*.safetensors")):
            try:
                with safe_open(str(shard), framework="pt") as reader:
                    metadata = reader.metadata() or {}
                    if json.loads(metadata.get("identity", "{}")) != self.identity:
                        log.warning("%s belongs to other trunk weights or preprocessing; ignored", shard)
                        continue
                    found = {k: reader.get_tensor(k) for k in reader.keys()}  # noqa: SIM118 (safe_open is no dict)
                self._check(found)
            except (SafetensorError, OSError, ValueError) as err:
                log.warning("damaged feature cache shard %s (%s); removed, its entries will be extracted again",
                            shard, err)
                shard.unlink(missing_ok=True)
                continue
            entries.update(found)
        return entries

    def _check(self, found: dict[str, torch.Tensor]) -> None:
        """Raise ``ValueError`` unless every entry is a finite float32 feature vector of the trunk's width whose
        values lie within :data:`MAX_FEATURE` (one pass over the shard stacked)."""
        for key, tensor in found.items():
            if tensor.dtype != torch.float32 or tuple(tensor.shape) != (self.width,):
                raise ValueError(f"entry {key[:80]!r} is {tensor.dtype} {tuple(tensor.shape)}, features of this "
                                 f"trunk are torch.float32 ({self.width},)")
        if not found:
            return
        stacked = torch.stack(list(found.values()))
        if not bool(torch.isfinite(stacked).all()):
            raise ValueError("it holds NaN or infinite features")
        largest = float(stacked.abs().max())
        if largest > MAX_FEATURE:
            raise ValueError(f"it holds features as large as {largest:.3g}, no trunk's are beyond {MAX_FEATURE:g}")

    @property
    def entries(self) -> dict[str, torch.Tensor]:
        if self._entries is None:
            self._entries = self._read()
        return self._entries

    def add(self, new: dict[str, torch.Tensor]) -> None:
        """Write ``new`` as one more shard (atomically) and remember it."""
        if not new:
            return
        entries = self.entries  # the shards already there, read (and checked) before this one is written
        name = hashlib.sha256("".join(sorted(new)).encode()).hexdigest()[:16]
        with atomic_path(self.directory / f"{name}.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in new.items()}, tmp,
                      metadata={"identity": json.dumps(self.identity, sort_keys=True)})
        entries.update(new)
