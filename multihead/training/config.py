"""Training settings: one frozen dataclass, stored in every checkpoint, and the named presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

__all__ = ["METHODS", "PRESETS", "TrainConfig"]

METHODS = ("multihead", "per-organ", "flat")
"""``multihead``: router and all heads on the joint loss; ``per-organ``: the paper's separately trained heads;
``flat``: one 26-way softmax."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how the heads are trained; stored in the checkpoint."""

    # what
    method: str = "multihead"
    # optimisation (Adam)
    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 1e-4
    class_weighting: bool = True
    seed: int = 0
    # data: "identity" trains on the image as it is; "dihedral" on a random cached flip/90-degree view each
    # step; "augmented" is the online mode: the paper's rotation/flip/scaling through the trunk, a fresh
    # view of every image for every epoch (multihead.features.augmented_features).
    views: str = "identity"
    # 640 px beat 448, 560 and 768 on the held-out images of four splits of the shared sample (448 had beaten
    # 224), at about twice the trunk's work of 448 (docs/accuracy.md, "Input size"); None: the trunk's size.
    image_size: int | None = 640
    # features: the trunk's pooled output, plus average-pooled earlier stages ("auto": the end of every stage
    # but the last, multihead.model.trunk.AUTO_STAGES; "none"; or module names joined by commas). Standardising
    # them for training (folded into the heads afterwards, so inference is unchanged) lets Adam treat
    # stages of very different scales alike. Both chosen on validation accuracy (docs/accuracy.md).
    stages: str = "auto"
    standardize: bool = True
    # probabilities: temperature scaling on the validation split after training (changes no prediction)
    calibrate: bool = True
    # trust: the accuracy asked of the answers kept in full, at 95 % confidence where the validation split is
    # large enough to certify it, by plain validation accuracy where not (multihead.model.thresholds);
    # abstain=False keeps every answer (thresholds 0; out-of-distribution images are still flagged)
    target_accuracy: float = 0.99
    abstain: bool = True
    # coverage: an organ with fewer training images than this is not claimed (answers naming it are "uncertain";
    # multihead.training.posthoc.MIN_COVERED_IMAGES says why 50)
    min_covered_images: int = 50
    # tuning the top of the shared trunk (multihead.training.tune): "none" keeps the trunk frozen (the design's
    # default and the paper's); "auto" tunes the last stages (multihead.model.trunk_split.AUTO_TUNE_FROM);
    # a module name ("layer4", "features.14") tunes it and everything after it; "stem" the whole trunk.
    # Heads are warmed up first by the settings above, then stages and heads are trained together.
    tune_from: str = "none"
    tune_epochs: int = 8
    tune_lr: float = 1e-4
    tune_head_lr: float = 1e-4
    tune_batchnorm: str = "train"
    tune_views: str = "flips"
    # None: every tuning epoch runs (the cosine decay reaches its end) and validation keeps the best one; an int
    # stops after that many epochs without a better one among the tuning epochs. Every run first dips below the
    # warmed-up frozen top (docs/training.md): counted against it, patience 3 would have stopped 29 of the 40
    # runs of docs/accuracy/tuning.jsonl at epoch 3 with the frozen top kept; counted as now, it still cuts 6 of
    # them short of the epoch validation keeps when every epoch runs.
    tune_patience: int | None = None
    # arithmetic of the tuning steps (forward and backward through the top; the heads, the loss and every
    # evaluation stay fp32): "bf16" autocast, "fp32", or "auto": bf16 where the device computes it in hardware
    # (CUDA; CPUs with AVX-512 BF16 or AMX, multihead._precision.native_bf16), fp32 elsewhere
    tune_precision: str = "auto"
    # label smoothing of the tuning loss: this share of each image's target spread evenly over the 26 subtypes
    # (0.1 lowered organ-balanced validation accuracy on two seeds, docs/training.md, so 0 it stays)
    tune_label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        if self.views not in ("identity", "dihedral", "augmented"):
            raise ValueError(f"views must be 'identity', 'dihedral' or 'augmented', got {self.views!r}")
        if isinstance(self.min_covered_images, bool) or not isinstance(self.min_covered_images, int) or \
                self.min_covered_images < 1:
            raise ValueError(f"min_covered_images must be a positive integer, got {self.min_covered_images!r}")
        for name in ("epochs", "batch_size", "tune_epochs", "tune_patience"):
            if name == "tune_patience" and self.tune_patience is None:
                continue
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0.0 < self.target_accuracy <= 1.0:
            raise ValueError(f"target_accuracy must be in (0, 1], got {self.target_accuracy!r}")
        for name in ("lr", "tune_lr", "tune_head_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not isinstance(self.tune_from, str) or not self.tune_from:
            raise ValueError(f"tune_from must be 'none', 'auto', 'stem' or a module name, got {self.tune_from!r}")
        if self.tune_from != "none" and self.method == "per-organ":
            raise ValueError("method 'per-organ' trains one model per organ; one tuned trunk cannot serve them: "
                             "use method 'multihead' or 'flat' with tune_from, or tune_from='none'")
        if self.tune_from != "none" and self.views == "augmented":
            raise ValueError("views='augmented' runs images through the frozen trunk; with tune_from the maps are "
                             "augmented instead (tune_views)")
        if self.tune_batchnorm not in ("train", "frozen", "adapted"):
            raise ValueError(f"tune_batchnorm must be 'train', 'frozen' or 'adapted', got {self.tune_batchnorm!r}")
        if not 0.0 <= self.tune_label_smoothing < 1.0:
            raise ValueError(f"tune_label_smoothing must be in [0, 1), got {self.tune_label_smoothing!r}")
        if self.tune_precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"tune_precision must be 'auto', 'fp32' or 'bf16', got {self.tune_precision!r}")
        if self.tune_views not in ("none", "flips", "dihedral"):
            raise ValueError(f"tune_views must be 'none', 'flips' or 'dihedral', got {self.tune_views!r}")
        if not isinstance(self.stages, str):
            raise ValueError(f"stages must be 'auto', 'none' or module names joined by commas, got {self.stages!r}")

    @property
    def trunk_stages(self) -> tuple[str, ...] | str:
        """``stages`` in the form :func:`multihead.create_model` takes."""
        if self.stages in ("auto", "none", ""):
            return "auto" if self.stages == "auto" else ()
        return tuple(part.strip() for part in self.stages.split(",") if part.strip())

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def override(self, **changes: object) -> TrainConfig:
        """A copy with the given fields changed; ``None`` values are ignored (unset CLI options)."""
        unknown = sorted(set(changes) - set(asdict(self)))
        if unknown:
            raise ValueError(f"unknown training options {unknown}; expected some of {sorted(asdict(self))}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


PRESETS = {
    "default": TrainConfig(),
    # The paper: Adam, lr 1e-3, batch 32, 4 epochs, last layer only, no class weighting, images augmented by
    # rotation, flips and scaling on every pass.
    "paper": TrainConfig(epochs=4, lr=1e-3, batch_size=32, weight_decay=0.0, class_weighting=False,
                         views="augmented", image_size=224, calibrate=False, stages="none", standardize=False),
}
