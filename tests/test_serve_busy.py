"""The HTTP 503 the API documents: a full decode budget or a full model queue answers "busy, retry", with
``Retry-After``, and the server keeps serving once the pressure is gone."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from multihead.serve import ServeSettings
from multihead.serve.batching import MicroBatcher, QueueFullError
from multihead.serve.budget import PixelBudget

fastapi_testclient = pytest.importorskip("fastapi.testclient", reason="the serve extra is not installed")
from multihead.serve import create_app  # noqa: E402  (needs the extra, checked just above)

SETTINGS = ServeSettings(max_upload_bytes=256 * 1024, max_pixels=1_000_000, max_files=4, max_batch=2, batch_wait_ms=2)


def _png() -> list[tuple[str, tuple[str, bytes, str]]]:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(buffer, "PNG")
    return [("files", ("a.png", buffer.getvalue(), "image/png"))]


@pytest.fixture(scope="module")
def client(tiny_model, one_torch_thread):
    with fastapi_testclient.TestClient(create_app(tiny_model, settings=SETTINGS)) as test_client:
        yield test_client


def test_a_full_decode_budget_is_503_then_served(client, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(PixelBudget, "try_acquire", lambda self, pixels: False)
        busy = client.post("/v1/classify", files=_png())
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    detail = busy.json()["detail"]
    assert detail.startswith("the server is busy: ") and "pixels are being decoded" in detail
    assert client.post("/v1/classify", files=_png()).status_code == 200


def test_a_full_model_queue_is_503_then_served(client, monkeypatch):
    async def full(self, images):
        raise QueueFullError("256 images are already waiting")

    with monkeypatch.context() as patch:
        patch.setattr(MicroBatcher, "submit", full)
        busy = client.post("/v1/classify", files=_png())
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    assert busy.json() == {"detail": "the server is busy: 256 images are already waiting"}
    assert client.post("/v1/classify", files=_png()).status_code == 200


def test_the_budget_refuses_beyond_its_limit():
    budget = PixelBudget(100)
    assert budget.try_acquire(80) and not budget.try_acquire(30) and budget.in_use == 80
    budget.release(80)
    assert budget.try_acquire(100) and budget.in_use == 100
