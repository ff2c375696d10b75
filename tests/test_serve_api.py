"""The HTTP API through FastAPI's test client: the same answers as the CLI, 4xx for every bad upload, and
requests from concurrent clients sharing forward passes. Tiny random models: nothing here needs accuracy."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import multihead
from multihead.cli import app as cli_app
from multihead.inference import FileResult
from multihead.serve import ServeSettings
from multihead.serve.batching import BATCH_CANDIDATES, MicroBatcher, QueueFullError, fastest_batch_size

fastapi_testclient = pytest.importorskip("fastapi.testclient", reason="the serve extra is not installed")
TestClient = fastapi_testclient.TestClient
from multihead.serve import create_app  # noqa: E402  (needs the extra, checked just above)
from multihead.serve.schemas import PredictionRecord  # noqa: E402

EXAMPLES = sorted((Path(multihead.__file__).parent / "examples").glob("*.jpg"))
LIMITS = ServeSettings(max_upload_bytes=256 * 1024, max_pixels=1_000_000, max_files=4, max_batch=8, batch_wait_ms=2)


@pytest.fixture(scope="module")
def client(tiny_model, one_torch_thread):
    with TestClient(create_app(tiny_model, settings=LIMITS)) as test_client:
        yield test_client


def upload(*paths: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (path.name, path.read_bytes(), "image/jpeg")) for path in paths]


def png_bytes(width: int = 40, height: int = 30, *, noise: bool = True) -> bytes:
    pixels = np.random.default_rng(width).integers(0, 255, (height, width, 3), dtype=np.uint8) if noise else \
        np.full((height, width, 3), 90, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def assert_same_record(served: dict, expected: dict) -> None:
    """Equal keys and answers; probabilities equal to float rounding (a batch's makeup may change the last bits)."""
    assert served.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, (float, dict)):
            assert served[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
        elif key == "top_k":
            assert [name for name, _ in served[key]] == [name for name, _ in value]
        else:
            assert served[key] == value, key


# --- good uploads ---------------------------------------------------------------------------------------

def test_classify_returns_what_the_cli_prints(client, tiny_model, tmp_path):
    model_path = tmp_path / "tiny.safetensors"
    multihead.save(tiny_model, model_path)
    images = EXAMPLES[:2]
    printed = CliRunner().invoke(cli_app, ["classify", *map(str, images), "-m", str(model_path), "--json", "-k", "3"])
    assert printed.exit_code == 0, printed.output
    expected = [json.loads(line) for line in printed.stdout.splitlines()]
    response = client.post("/v1/classify?top_k=3", files=upload(*images))
    assert response.status_code == 200, response.text
    served = response.json()["results"]
    assert [record["source"] for record in served] == [path.name for path in images]
    for record, line in zip(served, expected):
        assert_same_record(record, {**line, "source": Path(line["source"]).name})


def test_one_image_without_top_k_has_the_plain_record(client, tiny_model):
    response = client.post("/v1/classify", files=upload(EXAMPLES[0]))
    assert response.status_code == 200, response.text
    record, = response.json()["results"]
    expected = FileResult(EXAMPLES[0].name, multihead.classify(EXAMPLES[0], model=tiny_model)).to_dict()
    assert_same_record(record, expected)


def test_the_schema_has_the_records_keys_and_every_path(client, tiny_model):
    record = FileResult("x.png", multihead.classify(np.zeros((8, 8), np.uint8), model=tiny_model)).to_dict()
    assert set(PredictionRecord.model_fields) - {"top_k"} == set(record)
    schema = client.get("/openapi.json").json()
    assert {"/v1/classify", "/v1/explain", "/v1/model", "/healthz"} <= set(schema["paths"])
    classify = schema["paths"]["/v1/classify"]["post"]
    assert "multipart/form-data" in classify["requestBody"]["content"]
    assert {"200", "413", "422", "503"} <= set(classify["responses"])


def test_explain_returns_png_overlays_and_the_same_prediction(client, tiny_model):
    response = client.post("/v1/explain", files=upload(EXAMPLES[1]))
    assert response.status_code == 200, response.text
    record, = response.json()["results"]
    assert_same_record({k: v for k, v in record.items() if k != "gradcam"},
                       FileResult(EXAMPLES[1].name, multihead.classify(EXAMPLES[1], model=tiny_model)).to_dict())
    size = tiny_model.preprocessing.image_size
    for key in ("input", "organ", "subtype"):
        prefix, _, data = record["gradcam"][key].partition(",")
        assert prefix == "data:image/png;base64"
        assert Image.open(io.BytesIO(base64.b64decode(data))).size == (size, size)
    assert record["gradcam"]["layer"] == "layer4"

    figure = client.post("/v1/explain?format=png", files=upload(EXAMPLES[1]))
    assert figure.status_code == 200 and figure.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(figure.content)).format == "PNG"
    two = client.post("/v1/explain?format=png", files=upload(*EXAMPLES[:2]))
    assert two.status_code == 422 and "limit is 1" in two.json()["detail"]


def test_model_card_healthz_and_page(client, tiny_model):
    card = client.get("/v1/model").json()
    assert card["trunk"]["name"] == "resnet18" and card["preprocessing"]["image_size"] == 64
    assert [organ["name"] for organ in card["taxonomy"]["organs"]] == list(tiny_model.taxonomy.organ_names)
    assert "split" not in card and "history" not in card
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["model"]["trunk"] == "resnet18"
    assert health["batching"]["max_batch"] == LIMITS.max_batch
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    static = Path(multihead.__file__).parent / "serve" / "static"
    for path in static.iterdir():  # nothing loaded from elsewhere: the machine may be offline
        assert "http://" not in path.read_text() and "https://" not in path.read_text(), path.name


# --- bad uploads: always 4xx, naming the file ---------------------------------------------------------------

def _header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels: the limit must refuse it before decoding."""
    data = bytearray(png_bytes(8, 8))
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


BAD_UPLOADS = {
    "garbage.jpg": b"\x00\x01 this is not an image \xff" * 10,
    "empty.png": b"",
    "truncated.jpg": EXAMPLES[0].read_bytes()[:600],
    "notes.txt": b"organ: lung\n",
    "page.html": b"<html><body>hello</body></html>",
    "bomb.png": _header_claiming(60_000, 60_000),  # Pillow's own decompression-bomb limit refuses this one
    "wide.png": _header_claiming(5_000, 1_000),
    "big.png": png_bytes(1100, 1000, noise=False),  # 1.1 Mpx, over the 1 Mpx test limit, in a few kB
}


@pytest.mark.parametrize("name", sorted(BAD_UPLOADS))
def test_a_bad_upload_is_a_422_naming_it(client, name):
    response = client.post("/v1/classify", files=[("files", (name, BAD_UPLOADS[name], "application/octet-stream"))])
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"{name}: ")
    if name in ("wide.png", "big.png"):
        assert "pixels is more than the limit of 1,000,000" in response.json()["detail"]


def test_one_bad_file_fails_the_request_and_only_it_is_named(client):
    files = [*upload(EXAMPLES[0]), ("files", ("broken.jpg", b"nope", "image/jpeg"))]
    for endpoint in ("/v1/classify", "/v1/explain"):
        response = client.post(endpoint, files=files)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert "broken.jpg" in detail and EXAMPLES[0].name not in detail


@pytest.mark.parametrize("request_kwargs, expected", [
    ({}, "no image in the request"),
    ({"json": {"files": "x"}}, "got content type application/json"),
    ({"data": {"files": "not a file"}}, "files"),
    ({"files": [("image", ("a.png", png_bytes(), "image/png"))]}, "field 'files'"),
])
def test_requests_without_images_are_422(client, request_kwargs, expected):
    response = client.post("/v1/classify", **request_kwargs)
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"]


def test_too_many_files_and_bad_parameters_are_422(client):
    response = client.post("/v1/classify", files=upload(*EXAMPLES, EXAMPLES[0]))
    assert response.status_code == 422 and "5 images in one request, the limit is 4" in response.json()["detail"]
    response = client.post("/v1/classify?top_k=0", files=upload(EXAMPLES[0]))
    assert response.status_code == 422 and "top_k" in response.json()["detail"]
    response = client.post("/v1/explain?format=gif", files=upload(EXAMPLES[0]))
    assert response.status_code == 422 and "format" in response.json()["detail"]


def test_an_oversized_body_is_413_before_and_while_reading(client):
    big = [("files", ("big.jpg", b"\xff" * (LIMITS.max_upload_bytes + 1), "image/jpeg"))]
    response = client.post("/v1/classify", files=big)  # Content-Length says it: refused before reading
    assert response.status_code == 413, response.text
    assert "larger than the limit of 262,144 bytes" in response.json()["detail"]

    def chunks():  # no Content-Length: counted as it streams
        yield b"--xyz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.jpg\"\r\n\r\n"
        for _ in range(LIMITS.max_upload_bytes // 65536 + 2):
            yield b"\xff" * 65536

    response = client.post("/v1/classify", content=chunks(),
                           headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert response.status_code == 413, response.text


def test_unexpected_errors_are_json_and_image_errors_stay_422(tiny_model, monkeypatch):
    app = create_app(tiny_model, settings=LIMITS)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        service = app.state.service

        def broken(batch):
            raise RuntimeError("a bug")

        monkeypatch.setattr(service.batcher, "run", broken)
        response = test_client.post("/v1/classify", files=upload(EXAMPLES[0]))
        assert response.status_code == 500
        assert response.json() == {"detail": "internal error (RuntimeError); the server log has the details"}

        def unreadable(batch):  # an ImageError from anywhere inside is still the client's problem: 422
            raise multihead.ImageError("x.png: image holds NaN or infinite values")

        monkeypatch.setattr(service.batcher, "run", unreadable)
        response = test_client.post("/v1/classify", files=upload(EXAMPLES[0]))
        assert response.status_code == 422 and response.json()["detail"] == "x.png: image holds NaN or infinite values"


# --- batching -----------------------------------------------------------------------------------------

def test_concurrent_requests_are_answered_correctly_and_share_passes(tiny_model, one_torch_thread):
    settings = ServeSettings(max_batch=8, batch_wait_ms=150)
    images = [png_bytes(30 + 7 * i, 40) for i in range(8)]
    expected = [multihead.classify(Image.open(io.BytesIO(data)), model=tiny_model) for data in images]
    with TestClient(create_app(tiny_model, settings=settings)) as test_client:
        start, answers = threading.Barrier(len(images)), {}

        def send(index: int) -> None:
            start.wait()
            files = [("files", (f"img-{index}.png", images[index], "image/png"))]
            answers[index] = test_client.post("/v1/classify", files=files)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(images))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for index, prediction in enumerate(expected):
            assert answers[index].status_code == 200, answers[index].text
            record, = answers[index].json()["results"]
            assert record["source"] == f"img-{index}.png"
            assert_same_record(record, FileResult(f"img-{index}.png", prediction).to_dict())
        stats = test_client.get("/healthz").json()["batching"]
    assert stats["requests"] == len(images) and stats["images"] == len(images)
    assert stats["combined_batches"] >= 1 and stats["largest_batch"] > 1, stats
    assert stats["batches"] < len(images)


def test_batcher_splits_at_max_batch_and_answers_each_caller():
    seen: list[int] = []

    def run(batch: torch.Tensor) -> list[float]:
        seen.append(batch.shape[0])
        if (batch < 0).any():
            raise ValueError("negative")
        return batch[:, 0].tolist()

    async def scenario() -> None:
        batcher = MicroBatcher(run, max_batch=4, max_wait_ms=20, max_queue=10)
        await batcher.start()
        sizes = [1, 3, 2, 2, 1]
        requests = [torch.full((n, 1), float(i)) for i, n in enumerate(sizes)]
        answers = await asyncio.gather(*(batcher.submit(r) for r in requests))
        assert answers == [[float(i)] * n for i, n in enumerate(sizes)]
        assert max(seen) <= 4 and sum(seen) == sum(sizes) and len(seen) < len(sizes)
        seen.clear()  # a request larger than max_batch runs alone, in passes of max_batch
        assert await batcher.submit(torch.full((7, 1), 5.0)) == [5.0] * 7 and seen == [4, 3]
        assert batcher.stats.combined_batches >= 1
        with pytest.raises(ValueError, match="negative"):  # a failing batch fails its callers, not the batcher
            await batcher.submit(torch.full((1, 1), -1.0))
        assert await batcher.submit(torch.ones(2, 1)) == [1.0, 1.0]
        with pytest.raises(QueueFullError):
            await batcher.submit(torch.ones(11, 1))
        assert await batcher.call(sum, [1, 2]) == 3  # other model work runs on the same thread
        await batcher.stop()
        with pytest.raises(RuntimeError, match="not running"):
            await batcher.submit(torch.ones(1, 1))

    asyncio.run(scenario())


def test_the_fastest_batch_size_is_measured_not_assumed(tiny_model, one_torch_thread, monkeypatch):
    clock = [0.0]  # a fake clock that each pass advances by its modelled cost: no wall-clock flakiness under load
    monkeypatch.setattr("multihead.serve.batching.time.perf_counter", lambda: clock[0])

    def fixed_cost(batch):  # a pass costs the same whatever its size: the biggest batch wins
        clock[0] += 0.004

    def quadratic_cost(batch):  # bigger batches cost more per image: one at a time wins
        clock[0] += 0.001 * batch.shape[0] ** 2

    example = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    assert fastest_batch_size(fixed_cost, example)[0] == max(BATCH_CANDIDATES)
    chosen, rates = fastest_batch_size(quadratic_cost, example)
    assert chosen == 1 and list(rates) == list(BATCH_CANDIDATES)

    monkeypatch.undo()  # the server's own measurement at start runs on the real clock
    with TestClient(create_app(tiny_model)) as test_client:  # default settings: the server measures at start
        batching = test_client.get("/healthz").json()["batching"]
    assert batching["max_batch"] in BATCH_CANDIDATES
    assert set(batching["measured_images_per_second"]) == {str(size) for size in BATCH_CANDIDATES}


@pytest.mark.parametrize("kwargs, message", [
    ({"max_batch": 0}, "max_batch"), ({"batch_wait_ms": -1}, "batch_wait_ms"), ({"max_pixels": 1.5}, "max_pixels"),
    ({"max_queue": 4}, "max_queue"),
])
def test_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ServeSettings(**kwargs)


# --- the command and the extra ---------------------------------------------------------------------------

def test_serve_command_fails_in_one_line_on_a_missing_model(tmp_path):
    result = CliRunner().invoke(cli_app, ["serve", "--model", str(tmp_path / "nope.safetensors")])
    assert result.exit_code == 1
    assert "nope.safetensors: model checkpoint does not exist" in result.output


def test_without_the_extra_the_library_works_and_serve_names_the_install(monkeypatch):
    code = ("import sys; sys.modules['fastapi'] = None; sys.modules['uvicorn'] = None\n"
            "import multihead, multihead.cli, multihead.serve\n"
            "from typer.testing import CliRunner\n"
            "result = CliRunner().invoke(multihead.cli.app, ['serve'])\n"
            "print(result.exit_code, result.output)\n")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert output.returncode == 0, output.stderr
    assert output.stdout.startswith("1 ") and "pip install 'multihead[serve]'" in output.stdout, output.stdout
