"""Training settings: one frozen dataclass, stored in every checkpoint, and the named presets.

Each setting is declared once, here: its default, its help text, its allowed values or bounds. The checks in
``TrainConfig.__post_init__`` and the options of ``multihead train`` (:func:`multihead.cli.training.train`) are made
from these declarations (:func:`option_specs`); only the checks between settings are written by hand.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from ..model.trunk_specs import stages_help, tune_from_help

__all__ = ["METHODS", "PRESETS", "OptionSpec", "TrainConfig", "option_specs"]

METHODS = ("multihead", "per-organ", "flat")
"""``multihead``: router and all heads on the joint loss; ``per-organ``: the paper's separately trained heads;
``flat``: one 26-way softmax."""


def _setting(default: Any, help: str, *, choices: tuple[str, ...] = (), low: float | None = None,
             high: float | None = None, positive: bool = False, cli: bool = True) -> Any:
    """A field with its one declaration: ``help`` for ``--help`` and the docs, ``choices`` or bounds (``low`` and
    ``high`` inclusive, ``positive`` exclusive of 0) for the checks, ``cli=False`` for settings kept to Python."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, "high": high,
                                            "positive": positive, "cli": cli})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how the heads are trained; stored in the checkpoint."""

    # what
    method: str = _setting("multihead", "multihead, per-organ (the paper) or flat (26-way).", choices=METHODS)
    # optimisation (Adam)
    epochs: int = _setting(30, "Epochs of head training.", low=1)
    lr: float = _setting(1e-3, "Adam learning rate of the heads.", positive=True)
    batch_size: int = _setting(32, "Images per training step.", low=1)
    weight_decay: float = _setting(1e-4, "Adam weight decay.", low=0.0, cli=False)
    class_weighting: bool = _setting(True, "Weight every subtype alike (inverse frequency).", cli=False)
    seed: int = _setting(0, "Seed of the split, the heads' initialisation and the batches.")
    views: str = _setting(
        "identity", "identity, dihedral (cached flip/rotation views, a random one each step), or augmented "
        "(online: the paper's rotation, flips and scaling through the trunk, a fresh view per epoch).",
        choices=("identity", "dihedral", "augmented"))
    # 640 px beat 448, 560 and 768 on the held-out images of four splits of the shared sample (448 had beaten
    # 224), at about twice the trunk's work of 448 (docs/accuracy.md, "Input size"); None: the trunk's size.
    image_size: int | None = _setting(
        640, "Input side in pixels (default 640; unset in Python: the trunk's own, which an hf-hub: trunk trains at "
        "unless this is given).", low=8)
    # pooled earlier stages beside the output, standardised for training (folded into the heads afterwards, so
    # inference is unchanged): both chosen on validation accuracy (docs/accuracy.md)
    stages: str = _setting(
        "auto", f"Earlier trunk stages whose pooled outputs join the features: auto ({stages_help()}), none, or module "
        "names joined by commas (features.13,features.16).")
    standardize: bool = _setting(True, "Standardise the features while training the heads.", cli=False)
    # probabilities: temperature scaling on the validation split after training (changes no prediction)
    calibrate: bool = _setting(True, "Temperature scaling on the validation split.", cli=False)
    # trust (multihead.model.thresholds, multihead.training.posthoc; docs/trust.md)
    target_accuracy: float = _setting(
        0.99, "Accuracy asked of the answers kept in full, per organ, certified at 95% confidence where the "
        "validation split allows a bound, else by plain validation accuracy (docs/trust.md).", positive=True,
        high=1.0)
    small_data: str = _setting(
        "follow", "Organs with too few validation answers for a confidence bound (fewer than 299 at 0.99): follow "
        "(their kept answers make half their validation mistakes, at most --target-accuracy) or strict (the target "
        "itself, which on a few dozen answers means every kept answer right; docs/trust.md).",
        choices=("follow", "strict"))  # multihead.model.thresholds.SMALL_DATA (torch: not imported for --help)
    abstain: bool = _setting(True, "Withhold unsure answers (thresholds fitted on validation); --no-abstain keeps "
                                   "every answer: thresholds 0, only images out of distribution or of an organ not "
                                   "covered are 'uncertain'.")
    min_covered_images: int = _setting(
        50, "Training images an organ needs to be claimed; answers naming an organ with fewer are 'uncertain' "
        "(multihead.training.posthoc.MIN_COVERED_IMAGES says why 50).", low=1)
    # tuning the top of the shared trunk (multihead.training.tune): the heads are warmed up first by the
    # settings above, then stages and heads are trained together
    tune_from: str = _setting(
        "none", "Tune the shared trunk's top jointly with the heads: none (frozen, the default), auto (the last "
        f"stages: {tune_from_help()}), a module name to tune from, or stem (the whole trunk; best on a GPU). Below "
        "it the trunk stays frozen and its maps are cached; trunks from the hub are not tuned.")
    tune_epochs: int = _setting(8, "Epochs of tuning (after the heads' warm-up).", low=1)
    tune_lr: float = _setting(1e-4, "AdamW learning rate of the tuned stages.", positive=True)
    tune_head_lr: float = _setting(1e-4, "AdamW learning rate of the router and heads while the stages are tuned.",
                                   positive=True)
    tune_batchnorm: str = _setting(
        "train", "BatchNorm of the tuned stages: train (batch statistics while tuning), frozen (ImageNet's "
        "statistics), or adapted (first re-estimated on the training maps and the heads warmed up again, then as "
        "train; docs/training.md).", choices=("train", "frozen", "adapted"))
    tune_views: str = _setting("flips", "Views of the cached maps while tuning: none, flips or dihedral (flips and "
                                        "90-degree rotations).", choices=("none", "flips", "dihedral"))
    # every run first dips below the warmed-up frozen top (docs/training.md): counted against it, patience 3 would
    # have stopped 29 of the 40 runs of docs/accuracy/tuning.jsonl at epoch 3 with the frozen top kept; counted
    # among the tuning epochs it still cuts 6 of them short of the epoch validation keeps when every epoch runs
    tune_patience: int | None = _setting(
        None, "Stop tuning after this many epochs without a better one (default: every epoch runs; the best on "
        "validation is kept either way).", low=1)
    tune_precision: str = _setting(
        "auto", "Arithmetic of the tuning steps: auto (bf16 where the device computes it in hardware, CUDA or a CPU "
        "with AVX-512 BF16 or AMX; fp32 elsewhere), fp32 or bf16. Evaluation stays fp32.",
        choices=("auto", "fp32", "bf16"))
    # 0.1 lowered organ-balanced validation accuracy on two seeds (docs/training.md), so 0 it stays
    tune_label_smoothing: float = _setting(0.0, "Share of each tuning target spread over all subtypes, in [0, 1).",
                                           low=0.0, cli=False)

    def __post_init__(self) -> None:
        for spec in option_specs(cli_only=False):
            _check(spec, getattr(self, spec.name))
        if not isinstance(self.tune_from, str) or not self.tune_from:
            raise ValueError(f"tune_from must be 'none', 'auto', 'stem' or a module name, got {self.tune_from!r}")
        if self.tune_from != "none" and self.method == "per-organ":
            raise ValueError("method 'per-organ' trains one model per organ; one tuned trunk cannot serve them: "
                             "use method 'multihead' or 'flat' with tune_from, or tune_from='none'")
        if self.tune_from != "none" and self.views == "augmented":
            raise ValueError("views='augmented' runs images through the frozen trunk; with tune_from the maps are "
                             "augmented instead (tune_views)")
        if not self.tune_label_smoothing < 1.0:
            raise ValueError(f"tune_label_smoothing must be in [0, 1), got {self.tune_label_smoothing!r}")
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


@dataclass(frozen=True)
class OptionSpec:
    """One setting's declaration, as the checks and the command line read it."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...]
    low: float | None
    high: float | None
    positive: bool
    cli: bool
    optional: bool
    """``None`` is allowed (``image_size``, ``tune_patience``)."""


def option_specs(*, cli_only: bool = True) -> list[OptionSpec]:
    """The settings' declarations in field order (those of the command line only, by default)."""
    specs = []
    for item in fields(TrainConfig):
        meta = item.metadata
        annotation = str(item.type)
        kind = {"int": int, "float": float, "str": str, "bool": bool}[annotation.split(" ")[0]]
        spec = OptionSpec(item.name, kind, None if item.default is MISSING else item.default, meta["help"],
                          meta["choices"], meta["low"], meta["high"], meta["positive"], meta["cli"],
                          "None" in annotation)
        if spec.cli or not cli_only:
            specs.append(spec)
    return specs


def _check(spec: OptionSpec, value: Any) -> None:
    """One setting against its declaration; the message names it and what it allows."""
    if value is None and spec.optional:
        return
    if spec.type is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{spec.name} must be True or False, got {value!r}")
        return
    if spec.type is str:
        if spec.choices and value not in spec.choices:
            raise ValueError(f"{spec.name} must be one of {', '.join(repr(c) for c in spec.choices)}, got {value!r}")
        return
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not numeric or (spec.type is int and not isinstance(value, int)):
        kind = "an integer" if spec.type is int else "a number"
        raise ValueError(f"{spec.name} must be {kind}, got {value!r}")
    if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high) or (
            spec.positive and not value > 0):
        bounds = (f"in (0, {spec.high:g}]" if spec.positive and spec.high is not None else "positive" if spec.positive
                  else f"at least {spec.low:g}" if spec.high is None else f"in [{spec.low:g}, {spec.high:g}]")
        raise ValueError(f"{spec.name} must be {bounds}, got {value!r}")


PRESETS = {
    "default": TrainConfig(),
    # The paper: Adam, lr 1e-3, batch 32, 4 epochs, last layer only, no class weighting, images augmented by
    # rotation, flips and scaling on every pass.
    "paper": TrainConfig(epochs=4, lr=1e-3, batch_size=32, weight_decay=0.0, class_weighting=False,
                         views="augmented", image_size=224, calibrate=False, stages="none", standardize=False),
}
