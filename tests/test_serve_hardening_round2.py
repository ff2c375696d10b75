"""Issue 36, the server: what an attacker still got through after issue 20, each attack kept as a test on a live
loopback server (uvicorn, a random-weight 64 px model): progressive JPEG decode bombs, thin strips, clients
trickling headers, and POSTs from other sites' pages."""

from __future__ import annotations

import http.client
import io
import socket
import struct
import threading
import time

import numpy as np
import pytest
from PIL import Image

from multihead.data.images import MAX_JPEG_SCANS, MAX_SIDE, ImageError, finish_decoding, open_image, read_image
from multihead.serve import ServeSettings

from .conftest import live_server
from .test_hardening_round2 import strip_png

pytest.importorskip("fastapi.testclient", reason="the serve extra is not installed")

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SETTINGS = ServeSettings(max_upload_bytes=8 * 2**20, max_pixels=40_000_000, max_request_pixels=100_000_000,
                         max_files=4, max_batch=2, batch_wait_ms=2, header_timeout_s=2.0, body_timeout_s=5.0,
                         max_connections=8, decode_timeout_s=10.0, allowed_origins=("https://app.example",))


# --- hostile files, made here -------------------------------------------------------------------------------

def _scans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every scan of a JPEG: its SOS segment and the entropy-coded data after it."""
    found, position = [], 2
    while data[position + 1] != 0xD9:
        end = position + 2 + struct.unpack(">H", data[position + 2:position + 4])[0]
        if data[position + 1] == 0xDA:
            while data[end] != 0xFF or data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                end += 1
            found.append((position, end))
        position = end
    return found


def progressive_bomb(side: int, extra_scans: int) -> bytes:
    """A flat gray progressive JPEG with its last scan (an AC refinement, 59 bytes) repeated ``extra_scans`` times:
    each repeat is decoded over every block of the image again (6000x6000 with 3,000: 318 KB, 54 s to decode)."""
    buffer = io.BytesIO()
    Image.new("L", (side, side), 128).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    start, end = _scans(data)[-1]
    return data[:-2] + data[start:end] * extra_scans + data[-2:]


def good_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


# --- a live server on loopback --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def live(tiny_model):
    with live_server(tiny_model, SETTINGS) as running:
        yield running


def request(port: int, parts: list[tuple[str, bytes]], *, origin: str | None = None, host: str = "127.0.0.1"
            ) -> bytes:
    body = b"".join(b"--xx\r\nContent-Disposition: form-data; name=\"files\"; filename=\"%s\"\r\n"
                    b"Content-Type: application/octet-stream\r\n\r\n%s\r\n" % (name.encode(), blob)
                    for name, blob in parts) + b"--xx--\r\n"
    head = (f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=xx\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n" + (f"Origin: {origin}\r\n" if origin else "")
            + "\r\n")
    return head.encode() + body


def read_until(sock: socket.socket, deadline: float) -> bytes:
    """What the server sends on ``sock`` until it closes or ``deadline`` (``time.monotonic()``) passes."""
    received = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        if not data:
            break
        received += data
    return received


def answer(port: int, raw: bytes, timeout: float) -> tuple[int, bytes]:
    """Send ``raw`` on a new connection; (status, whole response) within ``timeout`` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        received = read_until(sock, time.monotonic() + timeout)
    assert received, f"no answer within {timeout} s"
    return int(received.split(b" ", 2)[1]), received


# --- 1. progressive JPEG decode bombs -------------------------------------------------------------------------

def test_a_good_request_is_answered_while_progressive_jpeg_bombs_are_sent(live):
    """The issue's attack: two 6000x6000 progressive JPEGs of one tiny scan repeated 3,000 times in one request,
    the client leaving after 3 s; before, both decoding threads were stuck and nobody was answered for minutes."""
    _, port = live
    bomb = progressive_bomb(6000, 3000)
    assert len(bomb) < 400_000
    outcome: dict[str, object] = {}

    def attack() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request(port, [("bomb-1.jpg", bomb), ("bomb-2.jpg", bomb)]))
            outcome["attack"] = read_until(sock, time.monotonic() + 3.0)  # the attacker leaves after 3 s

    attacker = threading.Thread(target=attack)
    attacker.start()
    time.sleep(0.3)
    began = time.monotonic()
    status, body = answer(port, request(port, [("good.png", good_png())]), timeout=15.0)
    assert status == 200 and time.monotonic() - began < 15, body[-300:]
    attacker.join(10)
    refused = outcome["attack"]
    assert refused.startswith(b"HTTP/1.1 422"), refused[:300]
    scans = bomb.count(b"\xff\xda")
    assert scans > 3000
    assert (f"bomb-1.jpg: a progressive JPEG of {scans:,} scans, more than the limit of {MAX_JPEG_SCANS}".encode()
            in refused)


def _extra_scans_to(total: int) -> int:
    """How many repeats make a :func:`progressive_bomb` of ``total`` scans (a few hundred at most)."""
    assert total <= 1000, "a limit this high would make these files too large to build here"
    return total - progressive_bomb(8, 0).count(b"\xff\xda")


def test_a_scan_bomb_is_refused_from_its_header():
    blob = progressive_bomb(2000, _extra_scans_to(MAX_JPEG_SCANS + 1))
    with pytest.raises(ImageError, match=rf"bomb.jpg: a progressive JPEG of {MAX_JPEG_SCANS + 1} scans, more than "
                                         rf"the limit of {MAX_JPEG_SCANS} \(encoders write about 10"):
        open_image(blob, name="bomb.jpg", reduce_to=64)
    at_the_limit = open_image(progressive_bomb(2000, _extra_scans_to(MAX_JPEG_SCANS)), reduce_to=64)
    assert finish_decoding(at_the_limit, reduce_to=64).size == (250, 250)


def test_a_file_of_many_scans_is_refused_from_disk_too(tmp_path):
    path = tmp_path / "bomb.jpg"
    path.write_bytes(progressive_bomb(800, _extra_scans_to(500)))
    began = time.monotonic()
    with pytest.raises(ImageError, match="bomb.jpg: a progressive JPEG of 500 scans"):
        read_image(path)
    assert time.monotonic() - began < 0.5


def test_decoding_has_a_time_limit_and_stops_when_told():
    """Under the scan limit a progressive JPEG can still take seconds (6300x6300, 100 scans: about 2 s here):
    decoding checks its time limit and its stop event between scans."""
    blob = progressive_bomb(6300, _extra_scans_to(MAX_JPEG_SCANS))
    with pytest.raises(ImageError, match=r"slow.jpg: not decoded within the 0.5 s allowed"):
        finish_decoding(open_image(blob, name="slow.jpg", reduce_to=64), name="slow.jpg", reduce_to=64,
                        time_limit=0.5, started=time.monotonic() - 1.0)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    began = time.monotonic()
    with pytest.raises(ImageError, match="decoding stopped: the request was abandoned"):
        finish_decoding(open_image(blob, name="slow.jpg", reduce_to=64), name="slow.jpg", reduce_to=64, stop=stop)
    assert time.monotonic() - began < 1.0, "decoding went on after it was told to stop"


def test_decoding_stops_when_the_client_is_gone(live):
    app, port = live
    service = app.state.service
    blob = progressive_bomb(6300, _extra_scans_to(MAX_JPEG_SCANS))  # within every limit, about 2 s to decode
    stopped = service.stopped_decodes
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request(port, [("slow.jpg", blob)]))
        for _ in range(100):
            if service.budget.in_use:
                break
            time.sleep(0.01)
        assert service.budget.in_use >= 6300 * 6300  # charged at full size: coefficients are kept at full size
        time.sleep(0.2)
    gone = time.monotonic()
    while service.budget.in_use and time.monotonic() - gone < 5:
        time.sleep(0.01)
    assert time.monotonic() - gone < 1.0, "the image was decoded on for a client that had gone"
    assert service.stopped_decodes == stopped + 1


# --- 2 and 3. thin strips --------------------------------------------------------------------------------------

def test_thin_strips_are_refused_from_their_header(live, monkeypatch):
    """1x600,000 PNGs took 2.4 GB (two: 2.9 GB) when resized; a 1x39,999,999 one (78 KB, within max_pixels) was a
    500 after a 102 GB allocation. Now each is a 422 of one sentence, before any pixel is decoded."""
    import multihead.serve.service as service_module

    decoded = []
    real = service_module.finish_decoding
    monkeypatch.setattr(service_module, "finish_decoding",
                        lambda image, **kw: decoded.append(kw) or real(image, **kw))
    _, port = live
    strip = strip_png(1, 600_000)
    status, body = answer(port, request(port, [("a.png", strip), ("b.png", strip)]), timeout=10)
    assert status == 422, body[-300:]
    assert (f"a.png: 1x600000 pixels has a side longer than {MAX_SIDE:,} pixels, too thin a strip to resize; cut it "
            "into tiles").encode() in body and b"b.png: 1x600000" in body
    tallest = strip_png(1, 39_999_999)
    assert len(tallest) < 100_000
    status, body = answer(port, request(port, [("tall.png", tallest)]), timeout=10)
    assert status == 422 and b"tall.png: 1x39999999 pixels has a side longer than" in body, body[-300:]
    assert decoded == []


# --- 4. clients trickling headers -------------------------------------------------------------------------------

def test_clients_trickling_headers_cannot_starve_healthz(live):
    """Three times ``max_connections`` sockets sending their headers a byte at a time: before, every /healthz got 503
    until they timed out; now they wait apart from requests, and the longest waiting is closed for a new one."""
    _, port = live
    trickling = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3 * SETTINGS.max_connections)]
    stop = threading.Event()

    def trickle() -> None:
        for sock in trickling:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            except OSError:
                pass
        while not stop.wait(0.05):
            for sock in trickling:
                try:
                    sock.sendall(b"a")
                except OSError:
                    pass

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        time.sleep(0.3)
        for _ in range(5):
            began = time.monotonic()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            assert response.status == 200, response.read()[:300]
            response.read()
            connection.close()
            assert time.monotonic() - began < 1.0
    finally:
        stop.set()
        thread.join(5)
        for sock in trickling:
            sock.close()


def test_requests_in_progress_are_still_limited(tiny_model):
    """Requests past ``max_connections`` at once still get 503 (now counted by the app, once their headers are in)."""
    from fastapi.testclient import TestClient

    from multihead.serve import create_app

    app = create_app(tiny_model, settings=ServeSettings(max_connections=1, max_batch=1, max_files=1, max_queue=4))
    with TestClient(app) as client:
        service = app.state.service
        real_run, running = service.batcher.run, threading.Event()

        def slow_run(batch):
            running.set()
            time.sleep(1.0)
            return real_run(batch)

        service.batcher.run = slow_run
        first = threading.Thread(target=lambda: client.post("/v1/classify", files={"files": ("a.png", good_png())}))
        first.start()
        assert running.wait(10)
        response = client.get("/healthz")  # while the classification is in progress
        first.join(10)
        service.batcher.run = real_run
        assert response.status_code == 503 and response.headers["Retry-After"] == "1", response.text
        assert "1 requests are in progress (the limit is 1)" in response.json()["detail"]
        assert client.get("/healthz").status_code == 200


# --- 5. POSTs from other sites' pages ---------------------------------------------------------------------------

@pytest.mark.parametrize(("origin", "status"), [
    ("https://evil.example", 403),
    ("null", 403),  # a sandboxed frame or a file: page
    ("http://127.0.0.1:{port}", 200),  # the server's own page
    ("https://app.example", 200),  # named with --allow-origin
    (None, 200),  # curl, scripts
])
def test_cross_origin_posts_are_refused_unless_allowed(live, origin, status):
    _, port = live
    shown = origin.format(port=port) if origin else None
    code, body = answer(port, request(port, [("good.png", good_png())], origin=shown, host=f"127.0.0.1:{port}"),
                        timeout=10)
    assert code == status, body[-300:]
    if status == 403:
        assert (f"a request from the page of another site ({shown}) is refused: start the server with "
                f"--allow-origin {shown} to accept it").encode() in body
    if origin == "https://app.example":
        assert b"access-control-allow-origin: https://app.example" in body.lower()


def test_allow_origin_reaches_the_server_settings(monkeypatch):
    from typer.testing import CliRunner

    import multihead.serve as serve_module
    from multihead.cli import app

    seen = {}
    monkeypatch.setattr(serve_module, "run_server", lambda model, **kwargs: seen.update(kwargs))
    result = CliRunner().invoke(app, ["serve", "--allow-origin", "https://App.example/", "--allow-origin",
                                      "http://localhost:3000"])
    assert result.exit_code == 0, result.output
    assert seen["settings"].allowed_origins == ("https://app.example", "http://localhost:3000")
