"""Checkpoints as older multihead versions wrote them, made from a current model (for the loading tests)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import multihead
from multihead.model.checkpoint_checks import FORMAT_1_KEYS
from multihead.model.trunk import fingerprint_state_dict


def write_legacy(model: multihead.MultiHeadModel, path: Path, version: int, *, drop: tuple[str, ...] = ()) -> None:
    """``model`` as checkpoint format 1 or 2 stored it: one subtype threshold (the first organ's), no coverage, and
    the Mahalanobis out-of-distribution buffers of that time (threshold 3); format 1 with the estimators' buffers
    flat on the model under their old names (``logit_scale``, ``router_threshold``, ``ood_threshold``, ...).
    ``drop``: stored keys (under the file's own names) to leave out."""
    multihead.save(model, path)
    with safe_open(str(path), framework="pt") as reader:
        metadata, tensors = reader.metadata(), {k: reader.get_tensor(k) for k in reader.keys()}  # noqa: SIM118
    tensors = {k: v for k, v in tensors.items() if not k.startswith("ood.") and k != "organ_covered"}
    tensors["thresholds.subtype"] = tensors["thresholds.subtype"][0].clone()
    features, organs = model.num_features, model.taxonomy.num_organs
    tensors.update({"ood.mean": torch.zeros(features), "ood.projection": torch.zeros(features, 64),
                    "ood.class_means": torch.zeros(organs, 64), "ood.organ_scale": torch.ones(organs),
                    "ood.threshold": torch.tensor(3.0)})
    if version == 1:
        old_name = {new: old for old, new in FORMAT_1_KEYS.items()}
        tensors = {old_name.get(k, k): v for k, v in tensors.items()}
    tensors = {k: v for k, v in tensors.items() if k not in drop}
    heads = {k: v for k, v in tensors.items() if not k.startswith("trunk.")}
    metadata = {k: v for k, v in metadata.items() if k != "header_sha256"}  # written since issue 36 only
    save_file(tensors, str(path), metadata={**metadata, "format_version": str(version),
                                            "heads_sha256": fingerprint_state_dict(heads)})
