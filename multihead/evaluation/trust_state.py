"""The trust state of a checkpoint in words: the organs it covers, its thresholds and how they were chosen, which
heads are calibrated and which were skipped, and whether the out-of-distribution score is fitted.

One function reads the checkpoint's metadata as typed records (:mod:`multihead.model.records`; no tensors, no
torch), so ``train``, ``info``, the model card and the evaluate report say the same thing. Its lines are plain
text: a checkpoint's strings are data, so terminal control sequences in them (a clipboard write in a skipped
head's reason, say) are removed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..model.metadata import printable
from ..model.records import (
    Calibration,
    Coverage,
    ModelMetadata,
    OodFit,
    Selective,
    SelectiveRules,
    Trust,
    read_metadata,
    to_dict,
)

__all__ = ["describe_trust", "status_breakdown"]

_RULES = {"confidence_bound": "certified by a confidence bound", "validation_accuracy": "by plain validation accuracy",
          "small_data": "small: half its validation mistakes", "too_few_images": "too few validation images: subtypes "
          "withheld", "given": "set by hand"}


def status_breakdown(selective: Selective | Mapping[str, Any]) -> str:
    """``"67.8% organ_and_subtype, 32.2% organ_only, 0.0% uncertain"`` from a selective report."""
    if isinstance(selective, Selective):
        selective = to_dict(selective)
    full = float(selective.get("coverage", 0.0))
    organ_only = float(selective.get("organ_only_fraction", 0.0))
    uncertain = float(selective.get("uncertain_fraction", max(0.0, 1.0 - full - organ_only)))
    return f"{full:.1%} organ_and_subtype, {organ_only:.1%} organ_only, {uncertain:.1%} uncertain"


def _subtype_thresholds(selective: Selective) -> dict[str, tuple[float | None, str | None]]:
    """Organ -> (subtype threshold, rule); checkpoints before issue 35 held one threshold for every organ."""
    rules = selective.rules.subtype if selective.rules else None
    if selective.subtype_thresholds is not None:
        by_organ = rules if isinstance(rules, dict) else {}
        return {organ: (value, by_organ.get(organ)) for organ, value in selective.subtype_thresholds.items()}
    return {"every organ": (selective.subtype_threshold, rules if isinstance(rules, str) else None)}


def _thresholds(selective: Selective) -> list[str]:
    rules = selective.rules or SelectiveRules()
    router = selective.router_threshold
    subtypes = _subtype_thresholds(selective)
    if rules.router == "given" and router == 0 and all(t == 0 and r == "given" for t, r in subtypes.values()):
        return ["thresholds: off (trained with --no-abstain): every answer is kept unless it is out of distribution "
                "or of an organ not covered"]
    target, level = selective.target_accuracy, selective.confidence_level
    lines = [f"thresholds: P(organ) >= {router:.3f} ({_RULES.get(rules.router, 'rule not recorded')}); "
             f"target {target:.1%} accuracy" + (f" at {level:.0%} confidence" if level else "")]
    targets = selective.subtype_targets or {}
    shown = [f"{organ} " + (f">= {value:.3f}" if value is not None else "withheld") + " ("
             + ("no validation answer names it: subtypes withheld" if rule is None and value is None
                else _RULES.get(rule, "rule not recorded"))
             + (f", target {targets[organ]:.1%}" if rule == "small_data" and targets.get(organ) is not None else "")
             + ")" for organ, (value, rule) in subtypes.items()]
    lines.append("  P(subtype | organ): " + ", ".join(shown))
    if level and any(rule in ("validation_accuracy", "small_data") for _, rule in subtypes.values()):
        lines.append(f"  a confidence bound needs at least {selective.images_to_certify} validation answers "
                     "without a confident mistake among the first; where none could be met the thresholds keep the "
                     "answers whose validation accuracy reaches the target, and an organ with fewer answers aims at "
                     "half its validation mistakes (choose with train --target-accuracy, --small-data strict, "
                     "or --no-abstain)")
    if selective.n is not None:
        lines.append(f"  on the {selective.n} validation images: {status_breakdown(selective)}")
    if router >= 1.0:
        lines.append("  P(organ) threshold 1.0: almost every answer is 'uncertain'")
    return lines


def _coverage(coverage: Coverage | None, available: Sequence[str] | None) -> list[str]:
    if not coverage:
        return []
    covered = list(coverage.covered or [])
    shown = ", ".join(f"{organ} ({coverage.organs.get(organ, '?')} training images)" for organ in covered)
    lines = [f"covers: {shown or 'no organ'}; an answer naming another organ is 'uncertain'"]
    few = [f"{organ} ({coverage.organs.get(organ)})" for organ in (available or []) if organ not in covered]
    if few:
        lines.append(f"  not claimed (fewer than {coverage.min_images} training images): {', '.join(few)}")
    return lines


def _calibration(calibration: Calibration | None, available: Sequence[str] | None) -> list[str]:
    """The temperatures of the heads the model answers with (an untrained organ's head is never used)."""
    if calibration is None:
        return ["temperature scaling: not run (all temperatures 1)"]
    heads = {organ: t for organ, t in (calibration.heads or {}).items() if available is None or organ in available}
    temperatures = {"router": calibration.router, **heads}
    if calibration.flat is not None:
        temperatures = {"flat": calibration.flat}
    skipped = calibration.skipped
    if skipped is None:  # written before skipped heads were recorded
        shown = ", ".join(f"{k} T={v:.2f}" for k, v in temperatures.items() if v is not None)
        return [f"temperature scaling: {shown}"]
    fitted = [f"{k} T={v:.2f}" for k, v in temperatures.items() if v is not None and k not in skipped]
    lines = [f"temperature scaling: calibrated {', '.join(fitted) or 'no head'}"]
    lines += [f"  skipped {head} (T=1): {reason}" for head, reason in skipped.items()]
    return lines


def _ood(ood: OodFit | None) -> list[str]:
    if ood is None:
        return ["out of distribution: not fitted (nothing is flagged)"]
    if ood.score != "nearest_neighbour" or ood.threshold is None:
        return ["out of distribution: fitted by an older multihead (Mahalanobis), not read by this one: nothing is "
                "flagged until it is refitted"]
    return [f"out of distribution: distance to the nearest of {ood.fitted_on} training images, threshold "
            f"{ood.threshold:.3f} (keeps {ood.tpr:.0%} of the {ood.threshold_from} images)"]


def describe_trust(metadata: ModelMetadata | Mapping[str, Any]) -> list[str]:
    """Lines describing the trust state recorded in a checkpoint's ``metadata``.

    Example:
        >>> describe_trust({})[0]
        'thresholds: never abstain (not fitted)'
    """
    if not isinstance(metadata, ModelMetadata):
        metadata = read_metadata(metadata)
    trust = metadata.trust or Trust()
    lines = _coverage(trust.coverage, metadata.available_organs)
    lines += _thresholds(trust.selective) if trust.selective else ["thresholds: never abstain (not fitted)"]
    lines += _calibration(metadata.calibration, metadata.available_organs) + _ood(trust.ood)
    return [printable(line) for line in lines]
