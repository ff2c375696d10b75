"""The trust state of a checkpoint in words: its thresholds and how they were chosen, which heads are
calibrated and which were skipped, and whether the out-of-distribution score is fitted.

One function reads the checkpoint's metadata (no tensors, no torch), so ``train``, ``info``, the model card
and the evaluate report say the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["describe_trust", "status_breakdown"]

_RULES = {"confidence_bound": "certified by a confidence bound", "validation_accuracy": "by plain validation accuracy",
          "given": "set by hand"}


def status_breakdown(selective: Mapping[str, Any]) -> str:
    """``"67.8% organ_and_subtype, 32.2% organ_only, 0.0% uncertain"`` from a selective report."""
    full = float(selective.get("coverage", 0.0))
    organ_only = float(selective.get("organ_only_fraction", 0.0))
    uncertain = float(selective.get("uncertain_fraction", max(0.0, 1.0 - full - organ_only)))
    return f"{full:.1%} organ_and_subtype, {organ_only:.1%} organ_only, {uncertain:.1%} uncertain"


def _thresholds(selective: Mapping[str, Any]) -> list[str]:
    rules = selective.get("rules", {})
    router, subtype = float(selective["router_threshold"]), float(selective["subtype_threshold"])
    if rules.get("router") == "given" and rules.get("subtype") == "given" and router == 0 and subtype == 0:
        return ["thresholds: off (trained with --no-abstain): every answer is kept unless it is out of distribution"]
    target, level = selective.get("target_accuracy"), selective.get("confidence_level")
    lines = [f"thresholds: P(organ) >= {router:.3f} ({_RULES.get(rules.get('router'), 'rule not recorded')}), "
             f"P(subtype | organ) >= {subtype:.3f} ({_RULES.get(rules.get('subtype'), 'rule not recorded')}); "
             f"target {target:.1%} accuracy" + (f" at {level:.0%} confidence" if level else "")]
    if "validation_accuracy" in rules.values() and level:
        lines.append(f"  validation too small to certify the target: a bound needs at least "
                     f"{selective.get('images_to_certify')} images, the validation split has {selective.get('n')}; "
                     "the thresholds keep the answers whose validation accuracy reaches it instead (choose with "
                     "train --target-accuracy, or --no-abstain)")
    if "n" in selective:
        lines.append(f"  on the {selective['n']} validation images: {status_breakdown(selective)}")
    if router >= 1.0:
        lines.append("  P(organ) threshold 1.0: almost every answer is 'uncertain'")
    elif subtype >= 1.0:
        lines.append("  P(subtype | organ) threshold 1.0: subtypes are withheld ('organ_only')")
    return lines


def _calibration(calibration: Mapping[str, Any] | None) -> list[str]:
    if not calibration:
        return ["temperature scaling: not run (all temperatures 1)"]
    skipped = calibration.get("skipped")
    temperatures = {"router": calibration.get("router"), **calibration.get("heads", {})}
    if "flat" in calibration:
        temperatures = {"flat": calibration["flat"]}
    if skipped is None:  # written before skipped heads were recorded
        shown = ", ".join(f"{k} T={v:.2f}" for k, v in temperatures.items() if v is not None)
        return [f"temperature scaling: {shown}"]
    fitted = [f"{k} T={v:.2f}" for k, v in temperatures.items() if v is not None and k not in skipped]
    lines = [f"temperature scaling: calibrated {', '.join(fitted) or 'no head'}"]
    lines += [f"  skipped {head} (T=1): {reason}" for head, reason in skipped.items()]
    return lines


def _ood(ood: Mapping[str, Any] | None) -> list[str]:
    if not ood:
        return ["out of distribution: not fitted (nothing is flagged)"]
    line = (f"out of distribution: fitted on {ood.get('fitted_on')} training images, threshold "
            f"{float(ood['threshold']):.1f} (keeps {float(ood.get('tpr', 0.95)):.0%} of the "
            f"{ood.get('threshold_from')} images)")
    small = ood.get("scale_rule", {})
    shrunk = [organ for organ, rule in small.items() if rule == "shrunk"]
    pooled = [organ for organ, rule in small.items() if rule not in ("own", "shrunk")]
    if shrunk:
        line += (f"; scale shrunk toward the pooled one (too few validation images for their own) for "
                 f"{', '.join(shrunk)}")
    if pooled:
        line += f"; pooled scale (too few validation images for their own) for {', '.join(pooled)}"
    return [line]


def describe_trust(metadata: Mapping[str, Any]) -> list[str]:
    """Lines describing the trust state recorded in a checkpoint's ``metadata``.

    Example:
        >>> describe_trust({})[0]
        'thresholds: never abstain (not fitted)'
    """
    trust = metadata.get("trust") or {}
    selective = trust.get("selective")
    lines = _thresholds(selective) if selective else ["thresholds: never abstain (not fitted)"]
    return lines + _calibration(metadata.get("calibration")) + _ood(trust.get("ood"))
