"""Parity (section 4): does each fast option give the answers of fp32 eager, on real images?

The reference is fp32, contiguous, eager, with TF32 off (strict fp32). Each option runs the same uint8
batches; compared are the predicted subtype (``model.decide``: the router's organ, then that organ's best
subtype), the organ, and the joint probabilities. Batches are padded to the headline batch size so that the
compiled models built by the model-only section run the shape they were compiled for (no recompilation);
the padding rows are dropped before comparing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from config import Config
from harness import Section, WallTimer, error_row
from images import ImageFile, decode_any, per_subtype, read_bytes, resize_batch
from model_only import Systems

logger = logging.getLogger("gpu")

# name -> (precision, channels_last, compile mode, tf32)
CANDIDATES = {
    "fp32_tf32": ("fp32", False, "none", True),
    "fp32_tf32_channels_last": ("fp32", True, "none", True),
    "bf16": ("bf16", False, "none", True),
    "bf16_channels_last": ("bf16", True, "none", True),
    "fp16": ("fp16", False, "none", True),
    "fp16_channels_last": ("fp16", True, "none", True),
    "fp32_tf32_channels_last_compiled": ("fp32", True, "default", True),
    "bf16_channels_last_compiled": ("bf16", True, "default", True),
    "bf16_channels_last_cudagraphs": ("bf16", True, "reduce-overhead", True),
}
AGREEMENT_NEEDED = 0.999


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for cuDNN convolutions and float32 matmuls on or off, restored afterwards."""
    old = (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cudnn.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old[0]
        torch.set_float32_matmul_precision(old[1])


def padded_batches(images: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Split into batches of ``size``, the last one filled up by repeating its first rows."""
    batches = list(images.split(size))
    last = batches[-1]
    if len(last) < size:
        batches[-1] = torch.cat([last, last[torch.arange(size - len(last)) % len(last)]])
    return batches


def outputs(model: Any, batches: list[torch.Tensor], config: Any, count: int) -> dict[str, torch.Tensor]:
    """Organ, subtype (``model.decide``) and joint probabilities of the first ``count`` rows, on the CPU."""
    from multihead.inference import run_batch

    organs, subtypes, joints = [], [], []
    with torch.inference_mode():
        for batch in batches:
            out = run_batch(model, batch, config)
            organ, subtype = model.decide(out)
            organs.append(organ.cpu())
            subtypes.append(subtype.cpu())
            joints.append(out.joint_probs.double().cpu())  # joint_log_probs is -inf for untrained organs
    return {"organ": torch.cat(organs)[:count], "subtype": torch.cat(subtypes)[:count],
            "joint": torch.cat(joints)[:count]}


def compare(reference: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor]) -> dict[str, Any]:
    diff = (reference["joint"] - candidate["joint"]).abs()
    return {"images": len(reference["subtype"]),
            "subtype_agreement": float((reference["subtype"] == candidate["subtype"]).double().mean()),
            "organ_agreement": float((reference["organ"] == candidate["organ"]).double().mean()),
            "subtypes_changed": int((reference["subtype"] != candidate["subtype"]).sum()),
            "max_abs_joint_prob_diff": float(diff.max()), "mean_abs_joint_prob_diff": float(diff.mean())}


def load_images(cfg: Config, files: list[ImageFile], size: int, preprocessing: Any) -> torch.Tensor:
    """The chosen files decoded (JPEG on the device) and resized to ``size``, 64 at a time, on the device."""
    device = torch.device(cfg.device)
    datas, jpeg = read_bytes(files), [f.is_jpeg for f in files]
    parts = [resize_batch(decode_any(datas[i:i + 64], jpeg[i:i + 64], device), size, preprocessing)
             for i in range(0, len(files), 64)]
    return torch.cat(parts)


def parity(section: Section, cfg: Config, systems: Systems, files: list[ImageFile], data_source: str) -> None:
    from multihead import InferenceConfig

    p = section.payload
    chosen = per_subtype(files, cfg.parity_per_subtype)
    p.update(reference="fp32, contiguous, eager, TF32 off", agreement_needed=AGREEMENT_NEEDED,
             images_per_subtype=cfg.parity_per_subtype, data_source=data_source, batch_size=cfg.headline_batch,
             rows=[], models={})
    for model_key in ("bundled", "resnet18"):
        if not section.affords(10.0 if not cfg.smoke else 0.0):
            section.skip(f"parity {model_key}")
            continue
        size = systems.image_size(model_key)
        reference_model = systems.fresh_model(model_key, channels_last=False)
        with WallTimer(torch.device(cfg.device)) as t:
            images = load_images(cfg, chosen, size, reference_model.preprocessing)
        p["models"][model_key] = {"image_size": size, "images": len(images), "load_s": round(t.seconds, 2),
                                  "heads": "trained (bundled default model)" if model_key == "bundled"
                                  else "random (seed 0): near-ties make it stricter than a trained model"}
        batches = padded_batches(images, cfg.headline_batch)
        strict = InferenceConfig(batch_size=cfg.headline_batch, precision="fp32", channels_last=False, backend="torch")
        with tf32(False):
            reference = outputs(reference_model, batches, strict, len(images))
        channels_last_model = None
        for name, (precision, channels_last, mode, use_tf32) in CANDIDATES.items():
            row: dict[str, Any] = {"model": model_key, "candidate": name, "precision": precision,
                                   "channels_last": channels_last, "compile": mode, "tf32": use_tf32}
            if not section.affords(3.0 if not cfg.smoke else 0.0):
                row.update(status="skipped", reason="budget")
                section.skipped.append(f"{model_key} {name}")
            elif mode == "none":
                if channels_last and channels_last_model is None:
                    channels_last_model = systems.fresh_model(model_key, channels_last=True)
                row.update(_run(channels_last_model if channels_last else reference_model, batches, reference,
                                InferenceConfig(batch_size=cfg.headline_batch, precision=precision,
                                                channels_last=channels_last, backend="torch"), use_tf32))
            elif not _compiled_row_ok(section, (model_key, precision, channels_last, mode, cfg.headline_batch)) or (
                    compiled := systems.multihead_model(model_key, channels_last, mode)) is None:
                row.update(status="skipped", reason="model_only did not compile this option at this batch and "
                                                    "precision (budget or error); compiling here would cost its time")
            else:
                row.update(_run(compiled, batches, reference, InferenceConfig(
                    batch_size=cfg.headline_batch, precision=precision, channels_last=channels_last,
                    backend="torch"), use_tf32))
            p["rows"].append(row)
            if row["status"] == "ok":
                logger.info("parity %-8s %-34s same subtype %.4f  max |dp| %.1e", model_key, name,
                            row["subtype_agreement"], row["max_abs_joint_prob_diff"])
            section.run.save()
        del images, batches, reference_model, channels_last_model


def _compiled_row_ok(section: Section, setting: tuple) -> bool:
    """A compiled model is reused only under the state it was compiled for (Dynamo guards on autocast and
    shapes): a model-only row at that precision and batch must have run."""
    rows = section.run.data.get("model_only", {}).get("rows", [])
    return any(r.get("status") == "ok" and r["system"] == "multihead"
               and (r["model"], r["precision"], r["channels_last"], r["compile"], r["batch_size"]) == setting
               for r in rows)


def _run(model: Any, batches: list[torch.Tensor], reference: dict[str, torch.Tensor], config: Any,
         use_tf32: bool) -> dict[str, Any]:
    device = model.device
    try:
        with tf32(use_tf32), WallTimer(device) as t:
            candidate = outputs(model, batches, config, len(reference["subtype"]))
    except Exception as err:
        return error_row(err, device)
    metrics = compare(reference, candidate)
    return {"status": "ok", **metrics, "seconds": round(t.seconds, 3),
            "passes": metrics["subtype_agreement"] >= AGREEMENT_NEEDED}
