"""The whole GPU story in one call: ``bash benchmarks/gpu/run.sh OUT_DIR [--smoke]`` (run.sh calls this).

Sections, in priority order, each with a time budget (config.py); results.json is rewritten after every
measurement, so a kill leaves everything measured so far:

1. preflight: versions, card, backend flags, which packages import, where the data is.
2. weights_cache: torchvision's / timm's ResNet18 ImageNet weights in the machine's caches (copied back).
3. model_only (headline): the four systems at bf16, channels_last, batch 512, eager then compiled, the
   bundled model, and multihead at every precision and layout (what the recommendation needs).
4. end_to_end: from JPEG bytes in memory, GPU decoding against CPU DataLoader workers, per stage.
5. features: the bundled model's features of the sample at its own size (640 px).
6. parity: every fast option against fp32 eager on real images; then the recommended CUDA default.
7. model_only (grid): the rest of batch x precision x layout x compile while time is left.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # the package need not be installed on the device: import it from the tree

import torch  # noqa: E402
import weights_cache  # noqa: E402
from agreement import parity  # noqa: E402
from config import Config, gpu_config, smoke_config  # noqa: E402
from environment import device_info, preflight, set_backend_flags  # noqa: E402
from harness import Run, Section, Terminated  # noqa: E402
from images import ImageFile, find_data, list_images  # noqa: E402
from model_only import Estimates, Setting, Systems, grid_plan, headline_plan, run_rows  # noqa: E402
from pipeline import end_to_end, features  # noqa: E402
from summary import finalize  # noqa: E402

logger = logging.getLogger("gpu")
SECTIONS = ("preflight", "weights_cache", "model_only_headline", "end_to_end", "features", "parity",
            "model_only_grid")


def _tune_dynamo() -> dict[str, int]:
    """Many compiled ResNets (eight heads' sizes, batch sizes) share one code object: raise Dynamo's limit
    of 8 graphs per code object, past which it silently runs eager. Rows record frames compiled."""
    import torch._dynamo

    limits = {}
    for name in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit", "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
            limits[name] = 64
    return limits


def run_all(out_dir: Path, cfg: Config) -> int:
    run = Run(out_dir, mode="smoke" if cfg.smoke else "gpu", deadline_s=cfg.deadline_s)
    run.data["config"] = asdict(cfg)
    run.data["planned_sections"] = list(SECTIONS)
    budgets, device = cfg.budgets_s, torch.device(cfg.device)
    systems: Systems | None = None
    files: list[ImageFile] = []
    reason = ""
    with run.section("preflight", budgets["preflight"]) as s:
        s.payload.update(preflight(REPO))
        run.data["device"] = device_info(device)
        run.data["flags"] = set_backend_flags(device)
        s.payload["dynamo_limits"] = _tune_dynamo()
        data_dir, tried = find_data(REPO)
        files, source = list_images(data_dir, REPO)
        s.payload.update(data_dir=data_dir and str(data_dir), data_tried=tried, data_source=source,
                         data_images=len(files))
        if device.type == "cuda" and not torch.cuda.is_available():
            reason = "no CUDA device: run with --smoke on a machine without a GPU"
        elif not s.payload["multihead"]["ok"]:
            reason = f"multihead does not import: {s.payload['multihead']['error']}"
        else:
            systems = Systems(cfg)
        s.payload["measurements_possible"] = systems is not None
        s.payload["reason"] = reason or None
        logger.info("device %s; data: %s", run.data["device"]["hardware"], source)
    with run.section("weights_cache", budgets["weights_cache"]) as s:
        s.payload.update(weights_cache.measure(out_dir, copy=cfg.copy_weights))
        logger.info("weights cache: %s", s.payload["verdict"])
    _measurements(run, cfg, systems, files, reason)
    run.data["status"] = "complete" if systems is not None else "nothing_measured"
    run.save()
    return 0 if systems is not None else 3


def _measurements(run: Run, cfg: Config, systems: Systems | None, files: list[ImageFile], reason: str) -> None:
    """Sections 3 to 7, each skipped (with the reason) when preflight found nothing to measure with."""
    budgets, estimates = cfg.budgets_s, Estimates(cfg)
    rows: list[dict] = run.data.setdefault("model_only", {}).setdefault("rows", [])
    source = run.data["preflight"].get("data_source", "")
    steps: list[tuple[str, str | None, Callable[[Section, Systems], None]]] = [
        ("model_only_headline", "model_only", lambda s, systems: run_rows(
            s, systems, headline_plan(cfg), rows, phase="headline", warmup=cfg.warmup, repeats=cfg.repeats,
            estimates=estimates)),
        ("end_to_end", None, lambda s, systems: end_to_end(s, cfg, systems, files)),
        ("features", None, lambda s, systems: features(s, cfg, systems, files)),
        ("parity", None, lambda s, systems: parity(s, cfg, systems, files, source)),
        ("model_only_grid", "model_only", lambda s, systems: run_rows(
            s, systems, grid_plan(cfg, {_setting_of(r) for r in rows}), rows, phase="grid", warmup=cfg.grid_warmup,
            repeats=cfg.grid_repeats, estimates=estimates, limit=cfg.grid_rows_limit)),
    ]
    for name, key, body in steps:
        with run.section(name, budgets[name], key=key) as s:
            if systems is None:
                s.status, s.payload["reason"] = "skipped", reason or "preflight failed"
            else:
                if name in ("end_to_end", "features"):
                    s.payload["data_source"] = source
                body(s, systems)


def _setting_of(row: dict) -> Setting:
    return Setting(row["model"], row["system"], row["precision"], row["channels_last"], row["compile"],
                   row["batch_size"])


def _terminate(_signum: int, _frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--smoke", action="store_true", help="the same code on the CPU at tiny sizes, in seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname).1s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    logging.captureWarnings(True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _terminate)
    cfg = smoke_config() if args.smoke else gpu_config()
    if cfg.smoke:  # tiny CPU forwards: one thread; two fighting a busy 2-core machine ran 100x slower here
        torch.set_num_threads(1)
    try:
        code = run_all(args.out_dir, cfg)
    except (Terminated, KeyboardInterrupt):
        logger.error("terminated: results.json holds what was measured")
        code = 124
    finalize(args.out_dir)
    return code


if __name__ == "__main__":
    sys.exit(main())
