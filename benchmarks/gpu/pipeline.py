"""End to end from JPEG bytes in memory (section 2) and feature extraction at the bundled model's size (3).

Two ways to feed the model from bytes: (a) nvJPEG batched decoding, resizing and normalising on the GPU;
(b) decoding and resizing on the CPU in DataLoader workers, batches pinned and sent to the GPU. Each of (a)'s
stages is also timed alone, on the previous stage's output kept on the device, to say which bounds it.
File reading is left out everywhere: the bytes are read once, before timing.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import Any

import torch
from config import Config
from harness import Section, WallTimer, error_row, synchronize
from images import (
    ImageFile,
    JpegDataset,
    chunks,
    decode_any,
    decode_jpegs,
    one_thread,
    read_bytes,
    replicate,
    resize_batch,
)
from model_only import Systems

logger = logging.getLogger("gpu")


def _rate(images: int, seconds: float) -> dict[str, Any]:
    return {"images": images, "seconds": round(seconds, 4), "images_per_second": images / seconds if seconds else None}


def _e2e_model(systems: Systems) -> tuple[Any, str]:
    """The headline multihead (ResNet18, bf16, channels_last): compiled if model_only built it, else eager."""
    for mode in ("default", "none"):
        model = systems.multihead_model("resnet18", True, mode)
        if model is not None:
            return model, mode
    return systems.fresh_model("resnet18", channels_last=True), "none"


def end_to_end(section: Section, cfg: Config, systems: Systems, files: list[ImageFile]) -> None:
    from multihead import InferenceConfig
    from multihead.inference import run_batch

    p, device, size, b = section.payload, torch.device(cfg.device), cfg.image_size, cfg.e2e_batch
    jpegs = [f for f in files if f.is_jpeg]
    distinct = replicate(jpegs, min(len(jpegs), cfg.e2e_items))
    with WallTimer(torch.device("cpu")) as read:
        datas = read_bytes(distinct)
    items = replicate(datas, cfg.e2e_items)
    model, mode = _e2e_model(systems)
    config = InferenceConfig(batch_size=b, precision="bf16", channels_last=True, backend="torch")
    p.update(items=len(items), distinct_files=len(datas), megabytes=round(sum(d.numel() for d in datas) / 1e6, 1),
             read_s=round(read.seconds, 3), batch_size=b, image_size=size, decode_device=str(device),
             model=f"multihead, resnet18 (random weights), bf16, channels_last, compile={mode}")
    batches = chunks(items, b)
    gpu: dict[str, Any] = p.setdefault("gpu_decode", {})
    try:
        decode_jpegs(batches[0], device)  # nvJPEG's handles and buffers
        with WallTimer(device) as t:
            decoded = [decode_jpegs(batch, device) for batch in batches]
        gpu["decode"] = _rate(len(items), t.seconds)
        section.run.save()
        with WallTimer(device) as t:
            resized = []
            for images in decoded:
                resized.append(resize_batch(images, size, model.preprocessing))
                model.preprocessing.normalize(resized[-1])
        gpu["resize_normalise"] = _rate(len(items), t.seconds)
        del decoded
        run_batch(model, resized[0], config)
        with WallTimer(device) as t:
            for batch in resized:
                run_batch(model, batch, config)
        gpu["model"] = _rate(len(items), t.seconds)
        del resized
        section.run.save()
        with WallTimer(device) as t:
            for batch in batches:
                run_batch(model, resize_batch(decode_jpegs(batch, device), size, model.preprocessing), config)
        gpu["end_to_end"] = _rate(len(items), t.seconds)
        stages = {k: gpu[k]["images_per_second"] for k in ("decode", "resize_normalise", "model")}
        gpu["bound_by"] = min(stages, key=lambda k: stages[k])
        gpu["status"] = "ok"
    except Exception as err:  # nvJPEG missing or failing: the CPU path below still runs
        gpu.update(error_row(err, device))
    section.run.save()
    if not section.affords(10.0 if not cfg.smoke else 0.0):
        section.skip("cpu_loader")
        return
    model_rate = gpu.get("model", {}).get("images_per_second")
    p["cpu_loader"] = _cpu_loader(cfg, items, model, config, run_batch, model_rate)


def _cpu_loader(cfg: Config, items: list[torch.Tensor], model: Any, config: Any, run_batch: Any,
                model_rate: float | None) -> dict[str, Any]:
    """(b): workers decode and resize on the CPU; the model stage alone is (a)'s, on the same batches."""
    device, workers = torch.device(cfg.device), min(cfg.loader_workers, os.cpu_count() or 1)
    out: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    try:
        loader = torch.utils.data.DataLoader(JpegDataset(items, cfg.image_size), batch_size=cfg.e2e_batch,
                                             num_workers=workers, pin_memory=device.type == "cuda",
                                             persistent_workers=workers > 0, worker_init_fn=one_thread,
                                             prefetch_factor=4 if workers else None)
        with WallTimer(device) as t:
            count = sum(len(batch) for batch in loader)
        out["loader_alone"] = {**_rate(count, t.seconds), "note": "includes starting the workers"}
        count, first = 0, None
        with WallTimer(device) as t:
            for batch in loader:
                run_batch(model, batch, config)
                count += len(batch)
                if first is None:
                    synchronize(device)
                    first = t.elapsed()
        out["end_to_end"] = _rate(count, t.seconds)
        if first is not None and count > cfg.e2e_batch:
            out["end_to_end_after_first_batch"] = _rate(count - cfg.e2e_batch, t.seconds - first)
        loader_rate = out["loader_alone"]["images_per_second"]
        out["bound_by"] = "model" if model_rate is not None and model_rate < loader_rate else "cpu decode (loader)"
        out["status"] = "ok"
        del loader
        gc.collect()
    except Exception as err:
        out.update(error_row(err, device))
    return out


def features(section: Section, cfg: Config, systems: Systems, files: list[ImageFile]) -> None:
    """The bundled model's pooled features for every image of the sample, from bytes, as ``extract`` would."""
    from multihead import InferenceConfig
    from multihead.inference import run_features

    p, device = section.payload, torch.device(cfg.device)
    files = files[:cfg.features_limit] if cfg.features_limit else files
    with WallTimer(torch.device("cpu")) as read:
        datas = read_bytes(files)
    jpeg = [f.is_jpeg for f in files]
    size = systems.image_size("bundled")
    p.update(images=len(files), jpeg=sum(jpeg), other=len(files) - sum(jpeg), read_s=round(read.seconds, 3),
             image_size=size, batch_size=cfg.features_batch,
             pipeline="JPEG decoded on the device (nvJPEG, batched), PNG on the CPU; resize on the device; "
                      "run_features", rows=[])
    batches = list(zip(chunks(datas, cfg.features_batch), chunks(jpeg, cfg.features_batch)))
    for precision, channels_last in (("fp32", False), ("bf16", True)):
        name = f"{precision}{', channels_last' if channels_last else ''}, eager"
        if not section.affords(8.0 if not cfg.smoke else 0.0):
            section.skip(name)
            continue
        row: dict[str, Any] = {"option": name, "precision": precision, "channels_last": channels_last}
        try:
            model = systems.multihead_model("bundled", channels_last, "none") or systems.fresh_model(
                "bundled", channels_last)
            config = InferenceConfig(batch_size=cfg.features_batch, precision=precision, channels_last=channels_last,
                                     backend="torch")

            def extract(part: list[torch.Tensor], kinds: list[bool], model: Any = model, config: Any = config) -> Any:
                batch = resize_batch(decode_any(part, kinds, device), size, model.preprocessing)
                return run_features(model, batch, config)

            extract(*batches[0])  # warm-up: cuDNN's algorithm search, nvJPEG
            with WallTimer(device) as t:
                dims = [extract(part, kinds).shape[1] for part, kinds in batches]
            row.update(status="ok", feature_dim=dims[0], **_rate(len(files), t.seconds))
        except Exception as err:
            row.update(error_row(err, device))
        p["rows"].append(row)
        logger.info("features %s: %s", name, f"{row.get('images_per_second', 0):.0f} img/s" if row["status"] == "ok"
                    else row["status"])
        section.run.save()
