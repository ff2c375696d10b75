"""The feature cache: pooled trunk features on disk, so a frozen trunk runs once per image and view.

A cache folder belongs to one (trunk fingerprint, pooled stages, preprocessing, precision); inside, shards are
``.safetensors`` files whose keys are ``<sha256 of the file's bytes>/<view>``, so a renamed file is still
found and an edited one is not. A shard's metadata is checked before its tensors are read; a damaged shard
is deleted and its entries are extracted again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .._io import atomic_path
from ..data.images import ImageError, check_is_file
from ..inference.config import InferenceConfig
from ..model.heads import MultiHeadModel

__all__ = ["FeatureCache", "default_cache_dir", "file_digest"]

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("MULTIHEAD_CACHE", Path.home() / ".cache" / "multihead" / "features"))


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes: the cache key, so a renamed file is still found and an edited one is not. A FIFO,
    a device or a folder is refused (:func:`~multihead.data.images.check_is_file`), never read."""
    check_is_file(path)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise ImageError(f"{os.fsdecode(path)}: cannot read file ({err.strerror or err})") from None
    return digest.hexdigest()


class FeatureCache:
    """On-disk features for one trunk, preprocessing and precision."""

    def __init__(self, directory: str | os.PathLike, model: MultiHeadModel, config: InferenceConfig) -> None:
        self.identity = {
            "trunk": model.trunk.name,
            "fingerprint": model.trunk.fingerprint,
            "preprocessing": model.preprocessing.to_json(),
            "precision": config.precision,
        }
        if model.trunk.stages:  # only when present: caches of single-stage trunks keep their keys
            self.identity["stages"] = list(model.trunk.stages)
        key = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        self.directory = Path(directory) / f"{model.trunk.name}-{key}"
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
                    entries.update({k: reader.get_tensor(k) for k in reader.keys()})  # noqa: SIM118 (safe_open is no dict)
            except (SafetensorError, OSError, ValueError) as err:
                log.warning("damaged feature cache shard %s (%s); removed, its entries will be extracted again",
                            shard, err)
                shard.unlink(missing_ok=True)
        return entries

    @property
    def entries(self) -> dict[str, torch.Tensor]:
        if self._entries is None:
            self._entries = self._read()
        return self._entries

    def add(self, new: dict[str, torch.Tensor]) -> None:
        """Write ``new`` as one more shard (atomically) and remember it."""
        if not new:
            return
        name = hashlib.sha256("".join(sorted(new)).encode()).hexdigest()[:16]
        with atomic_path(self.directory / f"{name}.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in new.items()}, tmp,
                      metadata={"identity": json.dumps(self.identity, sort_keys=True)})
        self.entries.update(new)
