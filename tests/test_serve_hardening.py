"""Issue 20, the server: pixels decoded in flight are bounded, images are downscaled while decoded, Grad-CAM gets
only what it draws, /healthz counts forward passes, and, on a live loopback server, late headers and bodies
close the connection, a chunked 413 closes it, abandoned requests never reach the model, and Host is checked."""

from __future__ import annotations

import io
import socket
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from multihead.data.images import decode_image, finish_decoding, open_image
from multihead.serve import ServeSettings
from multihead.serve.budget import PixelBudget

fastapi_testclient = pytest.importorskip("fastapi.testclient", reason="the serve extra is not installed")
TestClient = fastapi_testclient.TestClient
from multihead.serve import create_app  # noqa: E402

from .conftest import live_server  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SETTINGS = ServeSettings(max_upload_bytes=256 * 1024, max_pixels=4_000_000, max_request_pixels=4_500_000,
                         max_pixels_in_flight=9_000_000, max_files=4, max_batch=2, batch_wait_ms=2)


def encoded(width: int, height: int, fmt: str = "PNG") -> bytes:
    """A few KB whatever the size (a smooth gradient compresses well): pixels cost the server, bytes do not."""
    row = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    pixels = np.broadcast_to((row + np.arange(height)[:, None, None] % 7) % 256, (height, width, 3)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def files(*blobs: bytes) -> list:
    return [("files", (f"image-{i}.png", blob, "image/png")) for i, blob in enumerate(blobs)]


@pytest.fixture(scope="module")
def client(tiny_model):
    with TestClient(create_app(tiny_model, settings=SETTINGS)) as test_client:
        yield test_client


# --- decoding ---------------------------------------------------------------------------------------------

def test_jpeg_decodes_at_a_reduced_scale_and_png_is_reduced_after_decoding():
    jpeg = encoded(2048, 1536, "JPEG")
    assert open_image(jpeg, reduce_to=64).size == (256, 192)  # draft: 1/8 scale, header only
    assert open_image(jpeg).size == (2048, 1536)
    assert decode_image(jpeg, reduce_to=64).size == (256, 192)
    png = encoded(1024, 800)
    assert open_image(png, reduce_to=64).size == (1024, 800)  # no draft for PNG: decoded whole, then reduced
    assert finish_decoding(open_image(png, reduce_to=64), reduce_to=64).size == (171, 134)  # // 6, >= 128 a side
    assert decode_image(png).size == (1024, 800)


def test_a_request_over_its_pixel_limit_is_422(client):
    response = client.post("/v1/classify", files=files(encoded(1600, 1500), encoded(1600, 1500)))
    assert response.status_code == 422, response.text
    assert "4,500,000 per request" in response.json()["detail"]


def test_past_the_server_pixel_budget_is_503_with_retry_after(client):
    budget: PixelBudget = client.app.state.service.budget
    assert budget.try_acquire(budget.limit - 1000)  # another request is decoding
    try:
        response = client.post("/v1/classify", files=files(encoded(100, 100)))
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "1" and "being decoded" in response.json()["detail"]
    finally:
        budget.release(budget.limit - 1000)
    assert client.post("/v1/classify", files=files(encoded(100, 100))).status_code == 200
    assert budget.in_use == 0  # every image's share came back


def test_explain_gets_only_the_model_input(client, monkeypatch):
    import multihead.serve.service as service_module

    seen = []
    real = service_module.explain
    monkeypatch.setattr(service_module, "explain", lambda image, model: seen.append(image) or real(image, model))
    response = client.post("/v1/explain", files=files(encoded(1200, 900)))
    assert response.status_code == 200, response.text
    image, = seen
    assert isinstance(image, torch.Tensor) and tuple(image.shape) == (3, 64, 64)  # not the 1200x900 upload


def test_healthz_counts_forward_passes(tiny_model):
    with TestClient(create_app(tiny_model, settings=SETTINGS)) as test_client:
        response = test_client.post("/v1/classify", files=files(*(encoded(40 + i, 30) for i in range(4))))
        assert response.status_code == 200, response.text
        stats = test_client.get("/healthz").json()["batching"]
    assert (stats["batches"], stats["largest_batch"], stats["images"], stats["requests"]) == (2, 2, 4, 1)


# --- a live server on loopback ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def live(tiny_model):
    settings = replace(SETTINGS, header_timeout_s=1.0, body_timeout_s=1.5, max_upload_bytes=64 * 1024)
    with live_server(tiny_model, settings) as running:
        yield running


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` (after any response) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
        return True
    except TimeoutError:
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True


def multipart(blob: bytes, host: str = "127.0.0.1") -> bytes:
    body = (b"--xx\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + blob + b"\r\n--xx--\r\n")
    return (f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=xx\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_unfinished_headers_close_the_connection(live):
    _, port = live
    with connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never the blank line
        assert closed_within(sock, 4.0)


def test_a_body_at_one_byte_a_second_closes_the_connection(live):
    _, port = live
    with connect(port) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                     b"boundary=xx\r\nContent-Length: 1000\r\n\r\n")
        began = time.monotonic()
        try:
            while time.monotonic() - began < 6:
                sock.sendall(b"x")
                time.sleep(0.25)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert time.monotonic() - began < 6, "the server kept reading a trickling body"


@pytest.mark.parametrize("preamble, status", [
    # an endless file part of valid multipart: the body limit answers
    (b"--xx\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n", b"413"),
    # no multipart at all: the parser may answer first (400); the connection closes all the same
    (b"", b"4"),
])
def test_a_chunked_body_over_the_limit_gets_413_and_the_connection_closes(live, preamble, status):
    _, port = live
    chunk = b"%x\r\n%s\r\n" % (16384, b"a" * 16384)
    sent = 0
    with connect(port) as sock:
        sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: multipart/form-data; boundary=xx\r\n\r\n")
        if preamble:
            sock.sendall(b"%x\r\n%s\r\n" % (len(preamble), preamble))
        try:
            while sent < 64 * 2**20:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < 64 * 2**20, "the server read 64 MiB past a 64 KiB limit"
        response = b""
        try:
            response = sock.recv(65536)
        except (ConnectionResetError, OSError):
            pass
    assert response == b"" or response.startswith(b"HTTP/1.1 " + status)


def test_the_host_header_is_checked_on_loopback(live):
    _, port = live
    for host, status in ((f"127.0.0.1:{port}", b"200"), ("localhost", b"200"), (f"[::1]:{port}", b"200"),
                         (f"rebound.example:{port}", b"400")):
        with connect(port) as sock:
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            assert sock.recv(65536).split(b" ")[1] == status, host


def test_abandoned_requests_never_reach_the_model(live):
    app, port = live
    service = app.state.service
    ran = []
    real_run = service.batcher.run

    def slow_run(batch):
        ran.append(batch.shape[0])
        time.sleep(1.5)
        return real_run(batch)

    service.batcher.run = slow_run
    try:
        first = connect(port)
        first.sendall(multipart(encoded(50, 40)))
        while not ran:
            time.sleep(0.02)  # the first request holds the model thread
        abandoned = [connect(port) for _ in range(4)]
        for i, sock in enumerate(abandoned):
            sock.sendall(multipart(encoded(60 + i, 40)))
        time.sleep(0.5)  # read, decoded and queued behind the first
        for sock in abandoned:
            sock.close()
        assert first.recv(65536).startswith(b"HTTP/1.1 200")
        first.close()
        time.sleep(2.0)
    finally:
        service.batcher.run = real_run
    assert ran == [1], f"the model ran batches of {ran} for clients that had gone"
    assert service.abandoned_requests >= 4
