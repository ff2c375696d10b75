"""Throughput of one fused pass against the deployments it replaces: timm-style runners returning flat dicts.

Every system starts from the same uint8 batch on the host, crosses to the device, is normalised there and
runs at the same precision and memory format, so the only difference is the network work:

- ``multihead``: one ResNet18 trunk, the router and all subtype heads as one matmul (:func:`run_batch`).
- ``eight_models``: the paper's deployment, one ResNet18 classifier per organ, all eight run because the
  organ of a new image is unknown.
- ``cascade``: a ResNet18 router, then the chosen organ's ResNet18 (images grouped by organ): two passes.
- ``trunk_only``: ResNet18 pooled features only, the upper bound for ``multihead``.

``multihead`` and ``trunk_only`` also run on the other backends (:mod:`multihead.inference.backends`: the trunk as an
exported graph on ONNX Runtime or OpenVINO), at the precisions each runs (int8: OpenVINO, a quantised trunk); the
baselines run in PyTorch only.

Weights are random (speed does not depend on their values) and nothing is downloaded. :func:`time_classify` times
something else: a real model, ``classify`` end to end from files (decoding included), per configuration.
"""

from __future__ import annotations

from .endtoend import time_classify
from .machine import hardware_slug, machine_info
from .parity import collect_outputs, compare_outputs
from .runner import RATIO_SPREAD_WARNING, run_benchmark, summarize
from .systems import BACKEND_SYSTEMS, PRECISIONS, SYSTEMS, BenchSystem, build_system, model_system, prepare_int8
from .timing import benchmark_system

__all__ = [
    "BACKEND_SYSTEMS",
    "PRECISIONS",
    "RATIO_SPREAD_WARNING",
    "SYSTEMS",
    "BenchSystem",
    "benchmark_system",
    "build_system",
    "collect_outputs",
    "compare_outputs",
    "hardware_slug",
    "machine_info",
    "model_system",
    "prepare_int8",
    "run_benchmark",
    "summarize",
    "time_classify",
]
