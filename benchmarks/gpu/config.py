"""Sizes and time budgets of the GPU run, and their tiny CPU twins for ``--smoke``.

The GPU budget: run.sh kills Python at 450 s and then writes the summary, so the whole run stays under
8 minutes; Python stops itself at ``deadline_s``. Sections run in priority order (see run_gpu.py), and the
rest of the model-only grid takes whatever time is left at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Config:
    smoke: bool
    device: str
    image_size: int
    """ResNet18 systems (random weights)."""
    bundled_size: int | None
    """The bundled default model; ``None``: its own size (640 px)."""
    batch_sizes: tuple[int, ...]
    headline_batch: int
    precisions: tuple[str, ...] = ("bf16", "fp16", "fp32")
    compile_modes: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
    compile_backend: str = "inductor"
    """``"eager"`` in smoke mode: the same torch.compile code path (Dynamo) without minutes of codegen."""
    warmup: int = 3
    repeats: int = 10
    grid_warmup: int = 3
    grid_repeats: int = 5
    grid_rows_limit: int | None = None
    """Smoke mode runs only this many rows of the grid; the rest are recorded as skipped."""
    compile_estimates_s: dict[str, float] = field(default_factory=dict)
    eager_estimate_s: float = 3.0
    e2e_items: int = 4096
    e2e_batch: int = 512
    loader_workers: int = 8
    features_batch: int = 256
    features_limit: int | None = None
    parity_per_subtype: int = 30
    deadline_s: float = 425.0
    budgets_s: dict[str, float] = field(default_factory=dict)
    copy_weights: bool = True


GPU_BUDGETS = {"preflight": 30, "weights_cache": 20, "model_only_headline": 240, "end_to_end": 60, "features": 35,
               "parity": 75, "model_only_grid": 430}
SMOKE_BUDGETS = {name: 120.0 for name in GPU_BUDGETS}


def gpu_config() -> Config:
    return Config(smoke=False, device="cuda", image_size=224, bundled_size=None, batch_sizes=(512, 256, 1024, 64),
                  headline_batch=512, budgets_s=dict(GPU_BUDGETS),
                  compile_estimates_s={"multihead/default": 60, "multihead/reduce-overhead": 60,
                                       "multihead/max-autotune-no-cudagraphs": 240, "eight_models/default": 120,
                                       "cascade/default": 150, "eight_models/reduce-overhead": 150,
                                       "cascade/reduce-overhead": 200})


def smoke_config() -> Config:
    return Config(smoke=True, device="cpu", image_size=32, bundled_size=64, batch_sizes=(4, 2), headline_batch=4,
                  compile_backend="eager", warmup=1, repeats=1, grid_warmup=1, grid_repeats=1, grid_rows_limit=1,
                  eager_estimate_s=0.0, e2e_items=16, e2e_batch=4, loader_workers=2, features_batch=4,
                  features_limit=8, parity_per_subtype=1, deadline_s=300.0, budgets_s=dict(SMOKE_BUDGETS),
                  copy_weights=True)
