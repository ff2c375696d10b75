"""The trunk's weights shared between threads: a relayout waits for every pass running on them.

Swapping the weights' data under a running convolution crashed the process (a segfault in
tests/test_explain_threads.py, 4 runs of 6 on a loaded 2-core machine), not with an error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import torch

from multihead.inference import shared_weights
from multihead.inference.backends import open_runtime
from multihead.inference.export import export_onnx
from multihead.inference.shared_weights import match_weight_layout, weights_in_use


def _channels_last(model) -> bool:
    return all(p.is_contiguous(memory_format=torch.channels_last) for p in model.trunk.parameters() if p.dim() == 4)


def _relayout_during(model, pass_: Callable[[], object], monkeypatch, owner: object, name: str) -> list[bool]:
    """Run ``pass_`` with ``owner.name`` (a call on the weights inside it) slowed down; while that call runs,
    another thread asks for the channels_last layout. Returns whether the layout had changed under the call
    (before it and after its pause) and, last, whether it changed once the pass was over."""
    match_weight_layout(model, False)
    running, seen = threading.Event(), []
    inner = getattr(owner, name)

    def slowed(*args, **kwargs):
        seen.append(_channels_last(model))
        running.set()
        time.sleep(0.5)  # long enough for an unguarded relayout to land
        seen.append(_channels_last(model))
        return inner(*args, **kwargs)

    monkeypatch.setattr(owner, name, slowed)
    relayer = threading.Thread(target=lambda: (running.wait(60), match_weight_layout(model, True)))
    relayer.start()
    try:
        pass_()
    finally:
        running.set()
        relayer.join(60)
        monkeypatch.undo()
    seen.append(_channels_last(model))
    match_weight_layout(model, False)
    return seen


def test_relaying_the_weights_waits_for_the_passes_running_on_them(tiny_model):
    match_weight_layout(tiny_model, False)
    relaid = threading.Event()
    relayer = threading.Thread(target=lambda: (match_weight_layout(tiny_model, True), relaid.set()))
    with weights_in_use():
        relayer.start()
        assert not relaid.wait(0.5) and not _channels_last(tiny_model)
    assert relaid.wait(30) and _channels_last(tiny_model)
    relayer.join()
    match_weight_layout(tiny_model, False)


def test_the_onnx_exporter_traces_before_or_after_a_relayout_never_during_it(tiny_model, tmp_path, monkeypatch):
    seen = _relayout_during(tiny_model, lambda: export_onnx(tiny_model, tmp_path / "m.onnx"), monkeypatch,
                            torch.onnx, "export")
    assert seen == [False, False, True]


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_backends_probe_runs_the_torch_weights_outside_a_relayout(tiny_model, tmp_path, monkeypatch, backend):
    onnx_file = export_onnx(tiny_model, tmp_path / "m.onnx")
    seen = _relayout_during(tiny_model, lambda: open_runtime(tiny_model, backend, onnx_file=onnx_file), monkeypatch,
                            tiny_model, "forward_features")
    assert seen == [False, False, True]


def test_a_pass_asked_for_while_a_relayout_waits_runs_after_it_but_a_nested_one_goes_on(tiny_model):
    """Overlapping passes would otherwise hold a relayout off for ever; a pass nested in a held one must not
    wait for it, or the two would wait for each other."""
    match_weight_layout(tiny_model, False)
    seen: dict[str, bool] = {}

    def newcomer() -> None:
        with weights_in_use():
            seen["newcomer"] = _channels_last(tiny_model)

    def scenario() -> None:
        relayer = threading.Thread(target=match_weight_layout, args=(tiny_model, True))
        late = threading.Thread(target=newcomer)
        with weights_in_use():
            relayer.start()
            deadline = time.monotonic() + 30
            while not shared_weights._WEIGHTS._relayouts_asked and time.monotonic() < deadline:
                time.sleep(0.01)
            late.start()
            time.sleep(0.3)  # the newcomer is waiting now (it ran at once before)
            with weights_in_use():
                seen["nested"] = _channels_last(tiny_model)
        relayer.join(30)
        late.join(30)

    runner = threading.Thread(target=scenario, daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive(), "the nested pass waited for the relayout that waited for it"
    assert seen == {"nested": False, "newcomer": True}
    match_weight_layout(tiny_model, False)
