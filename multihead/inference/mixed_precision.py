"""Mixed precision: which of the int8 trunk's quantizers to take back to fp32 so that its answers stay the fp32
trunk's, found by NNCF's accuracy control and recorded by name, so :func:`~multihead.inference.quantize.quantize_trunk`
rebuilds exactly that graph from the cache.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..model.heads import MultiHeadModel
from .quantize import (
    CalibrationItem,
    _calibration_tensor,
    _nncf,
    _quantize,
    _quantizers,
    _quiet_nncf,
    _store_calibration,
    _trunk_graph,
    quantized_dir,
)

__all__ = ["find_fp32_quantizers"]


def find_fp32_quantizers(model: MultiHeadModel, calibration: Sequence[CalibrationItem],
                         validation: Sequence[tuple[torch.Tensor, torch.Tensor]], *,
                         metric: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], max_drop: float,
                         ranking_batches: int | None = None) -> list[str]:
    """The quantizers to take out so that the int8 trunk's ``metric`` drops by at most ``max_drop``: those NNCF's
    accuracy control (``quantize_with_accuracy_control``) returns to fp32, having ranked every quantizer by how much
    it costs and reverted the costliest first until the drop was within bounds.

    Args:
        calibration: as :func:`quantize_trunk`.
        validation: ``(uint8 batch [B, 3, S, S], reference)`` pairs; ``metric(features, reference)`` scores each
            image of a batch from the trunk's features (1 for an answer equal to the fp32 one, 0 otherwise: the
            agreement the guard measures).
        max_drop: the largest absolute drop of the mean metric allowed (``1 - 0.995`` for 99.5 % agreement).
        ranking_batches: batches NNCF ranks the quantizers on (default: all).

    Returns:
        Quantizer names for :func:`quantize_trunk`'s ``fp32_quantizers`` (empty when full int8 is within bounds).
    """
    nncf = _nncf()
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    with tempfile.TemporaryDirectory(prefix="multihead-int8-") as scratch:
        stored = _store_calibration(model, calibration, quantized_dir(model) / "calibration")
        everything = set(_quantizers(_quantize(model, _trunk_graph(model, Path(scratch)), stored, ())))

        def validate(compiled: Any, data: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, list[float]]:
            scores = []
            for batch, reference in data:
                features = torch.from_numpy(np.asarray(compiled(batch.numpy())[compiled.output("features")]))
                scores.append(float(metric(features, reference).double().mean()))
            return (sum(scores) / len(scores) if scores else 0.0), scores

        parameters = AdvancedAccuracyRestorerParameters(ranking_subset_size=ranking_batches)
        with _quiet_nncf():
            restored = nncf.quantize_with_accuracy_control(
                _trunk_graph(model, Path(scratch)),
                nncf.Dataset(list(stored), lambda path: _calibration_tensor(model, path)),
                nncf.Dataset(list(validation), lambda item: item[0].numpy()), validate, max_drop=max_drop,
                subset_size=len(stored), advanced_accuracy_restorer_parameters=parameters)
    return sorted(everything - set(_quantizers(restored)))
