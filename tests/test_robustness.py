"""Bad input never crashes a run, never loses work and never runs untrusted code (issue 8).

Every bad file or array is generated here (Pillow, numpy, hand-written bytes); nothing binary is committed.
Each case checks the outcome and that the error is the library's own, naming the input and the problem.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import multihead
from multihead.cli import app
from multihead.data.images import ImageError, read_image
from multihead.data.tensors import to_rgb_tensor
from multihead.inference import run_batch
from multihead.model.checkpoint import CheckpointError

from .conftest import assert_handled_exit

runner = CliRunner()
RNG = np.random.default_rng(0)
PICTURE = Image.fromarray(RNG.integers(0, 256, (40, 60, 3), dtype=np.uint8))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png(width: int, height: int, *, bit_depth: int = 8, color_type: int = 2, rows: bytes | None = None) -> bytes:
    """A PNG written by hand: any header, and pixel rows that may not match it (``None``: 1 byte of data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    data = zlib.compress(rows if rows is not None else b"\0")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# --- image files that must be read ------------------------------------------------------------------

def _gray16() -> Image.Image:
    return Image.fromarray(np.linspace(1000, 60000, 30 * 20).reshape(30, 20).astype(np.uint16))


def _rgb16_png() -> bytes:
    pixels = np.linspace(0, 65535, 6 * 5 * 3).astype(">u2").reshape(6, 5 * 3)
    rows = b"".join(b"\0" + row.tobytes() for row in pixels)
    return _png(5, 6, bit_depth=16, color_type=2, rows=rows)


def _palette_transparent() -> bytes:
    image = PICTURE.convert("P")
    return _encode(image, "PNG", transparency=0)


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (12, 10), color) for color in ("red", "lime", "blue")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


READABLE = {
    "rgb.jpg": lambda: _encode(PICTURE, "JPEG"),
    "rgb.png": lambda: _encode(PICTURE, "PNG"),
    "png-named.jpg": lambda: _encode(PICTURE, "PNG"),  # contents decide, not the extension
    "rgb.bmp": lambda: _encode(PICTURE, "BMP"),
    "rgb.webp": lambda: _encode(PICTURE, "WEBP"),
    "gray16.png": lambda: _encode(_gray16(), "PNG"),
    "gray16.tif": lambda: _encode(_gray16(), "TIFF"),
    "rgb16.png": _rgb16_png,
    "float.tif": lambda: _encode(Image.fromarray(RNG.random((30, 20)).astype(np.float32) * 7 - 3), "TIFF"),
    "cmyk.jpg": lambda: _encode(PICTURE.convert("CMYK"), "JPEG"),
    "palette.png": lambda: _encode(PICTURE.convert("P"), "PNG"),
    "palette-transparent.png": _palette_transparent,
    "rgba.png": lambda: _encode(PICTURE.convert("RGBA"), "PNG"),
    "gray-alpha.png": lambda: _encode(PICTURE.convert("LA"), "PNG"),
    "gray.png": lambda: _encode(PICTURE.convert("L"), "PNG"),
    "gray.jpg": lambda: _encode(PICTURE.convert("L"), "JPEG"),
    "bilevel.png": lambda: _encode(PICTURE.convert("1"), "PNG"),
    "animated.gif": _animated_gif,
    "1x1.png": lambda: _encode(Image.new("RGB", (1, 1), "white"), "PNG"),
    "1x5000.png": lambda: _encode(Image.new("L", (1, 5000), 128), "PNG"),
    "5000x1.jpg": lambda: _encode(Image.new("RGB", (5000, 1), "navy"), "JPEG"),
}


@pytest.mark.parametrize("name", sorted(READABLE))
def test_odd_but_valid_images_are_read(tiny_model, tmp_path, name):
    path = _write(tmp_path, name, READABLE[name]())
    image = read_image(path)
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
    tensor = to_rgb_tensor(path)
    assert tensor.dtype == torch.uint8 and tensor.shape == (3, image.height, image.width)
    prediction = multihead.classify(path, model=tiny_model)
    assert prediction.source == str(path) and 0.0 <= prediction.subtype_probability <= 1.0


def test_sixteen_bit_and_float_images_use_their_own_range(tmp_path):
    gray16 = np.asarray(read_image(_write(tmp_path, "g.png", _encode(_gray16(), "PNG"))))
    assert gray16.min() == 0 and gray16.max() == 255
    floats = np.asarray(read_image(_write(tmp_path, "f.tif", READABLE["float.tif"]())))
    assert floats.min() == 0 and floats.max() == 255


def test_transparent_pixels_become_black_and_grayscale_is_repeated(tmp_path):
    clear = Image.new("RGBA", (4, 4), (255, 255, 255, 0))
    assert np.asarray(read_image(_write(tmp_path, "clear.png", _encode(clear, "PNG")))).max() == 0
    gray = np.asarray(read_image(_write(tmp_path, "g.png", _encode(PICTURE.convert("L"), "PNG"))))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_animated_gif_gives_its_first_frame(tmp_path):
    image = read_image(_write(tmp_path, "a.gif", _animated_gif()))
    assert image.size == (12, 10) and image.getpixel((5, 5)) == (255, 0, 0)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_rotates_the_pixels(tmp_path, fmt):
    stored = Image.new("RGB", (30, 20), "blue")
    stored.paste((255, 0, 0), (0, 0, 10, 10))  # red square at the stored top left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _write(tmp_path, f"rotated.{fmt.lower()}", _encode(stored, fmt, exif=exif, **({"quality": 95}
                                                                                        if fmt == "JPEG" else {})))
    shown = read_image(path)
    assert shown.size == (20, 30)
    expected = np.asarray(stored.transpose(Image.Transpose.ROTATE_270), dtype=np.int16)
    error = np.abs(np.asarray(shown, dtype=np.int16) - expected)
    assert error.max() == 0 if fmt == "PNG" else error.mean() < 8  # JPEG blurs the edges a little
    assert shown.getpixel((15, 5))[0] > 200  # the red square is now at the top right


def test_thin_images_classify(tiny_model):
    for shape in [(1, 1), (1, 5000), (5000, 1), (2, 3000, 3)]:
        assert multihead.classify(np.full(shape, 200, dtype=np.uint8), model=tiny_model).subtype


# --- image files that must be refused with a named ImageError ---------------------------------------

def _truncated(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


REFUSED = {
    "zero.jpg": (lambda: b"", "is empty"),
    "zero.png": (lambda: b"", "is empty"),
    "truncated.jpg": (lambda: _truncated(_encode(PICTURE, "JPEG")), "damaged or truncated"),
    "truncated.png": (lambda: _truncated(_encode(PICTURE, "PNG")), "damaged or truncated"),
    "header-only.png": (lambda: _encode(PICTURE, "PNG")[:30], "not an image file"),
    "text.png": (lambda: b"This is a text file, not a picture.\n" * 3, "not an image file"),
    "random.jpg": (lambda: RNG.integers(0, 256, 2000, dtype=np.uint8).tobytes(), "not an image file"),
    "jpeg-magic-then-junk.jpg": (lambda: b"\xff\xd8\xff\xe0" + b"\x00" * 200, "header is damaged"),
    "wrong-rows.png": (lambda: _png(50, 50, rows=b"\0" * 10), "damaged or truncated"),
    "nan.tif": (lambda: _encode(Image.fromarray(np.full((4, 4), np.nan, np.float32)), "TIFF"), "NaN"),
    "eps-in-disguise.jpg": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
                            "not an image file"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_bad_files_raise_image_error_naming_the_file(tiny_model, tmp_path, name):
    make, message = REFUSED[name]
    path = _write(tmp_path, name, make())
    with pytest.raises(ImageError, match=message) as caught:
        read_image(path)
    assert str(caught.value).startswith(str(path) + ": ")
    with pytest.raises(ImageError, match=message):
        multihead.classify(path, model=tiny_model)


def test_postscript_is_never_handed_to_ghostscript(tmp_path, monkeypatch):
    """Pillow would open this as EPS and run Ghostscript on it; multihead only opens its own formats."""
    from PIL import EpsImagePlugin

    path = _write(tmp_path, "slide.jpg", REFUSED["eps-in-disguise.jpg"][0]())
    assert Image.open(path).format == "EPS"  # the danger is real
    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *args, **kwargs: calls.append(args))
    with pytest.raises(ImageError, match="not an image file"):
        read_image(path)
    assert calls == []


def test_just_over_the_pixel_limit_is_refused_from_the_header(tmp_path, monkeypatch):
    # 9000 x 9000 claimed, one byte of pixel data: decoding would fail differently and take ~240 MB.
    # (How fast the refusal is: benchmarks/robustness_timing.py; unit tests assert no clock.)
    path = _write(tmp_path, "bomb.png", _png(9000, 9000))
    decoded = []
    with monkeypatch.context() as patch:  # pixels must load again below
        patch.setattr(ImageFile.ImageFile, "load", lambda self, *a: decoded.append(self.size))
        with pytest.raises(ImageError, match="9000x9000 pixels is more than the limit of 80,999,999"):
            read_image(path, max_pixels=9000 * 9000 - 1)
    assert decoded == []  # refused from the header, before any pixel was decoded
    small = _write(tmp_path, "small.png", _encode(Image.new("RGB", (101, 100)), "PNG"))
    with pytest.raises(ImageError, match="more than the limit"):
        to_rgb_tensor(small, max_pixels=101 * 100 - 1)
    assert to_rgb_tensor(small, max_pixels=101 * 100).shape == (3, 100, 101)


def test_pillow_bomb_limit_still_applies_without_max_pixels(tmp_path):
    path = _write(tmp_path, "huge.png", _png(20000, 20000))
    with pytest.raises(ImageError, match=r"huge\.png: .*decompression bomb"):
        read_image(path, max_pixels=None)


def test_missing_folder_broken_link_and_link_loop(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "gone.jpg")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    cases = {"missing.jpg": "does not exist", "folder.jpg": "is a folder", "broken.jpg": "is a broken symbolic link",
             "loop.jpg": "is a symbolic link loop"}
    for name, message in cases.items():
        with pytest.raises(ImageError, match=f"{name}: {message}"):
            read_image(tmp_path / name)


def test_permission_denied_is_named(tmp_path, monkeypatch):
    path = _write(tmp_path, "secret.png", _encode(PICTURE, "PNG"))

    def refuse(file, *args, **kwargs):
        if os.fsdecode(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr("multihead.data.images.open", refuse, raising=False)
    with pytest.raises(ImageError, match="secret.png: permission denied"):
        read_image(path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_mode(tmp_path):
    path = _write(tmp_path, "locked.png", _encode(PICTURE, "PNG"))
    path.chmod(0)
    try:
        with pytest.raises(ImageError, match="permission denied"):
            read_image(path)
    finally:
        path.chmod(0o644)


def test_file_names_that_are_not_utf8(tiny_model, tmp_path):
    raw = os.fsencode(tmp_path) + b"/slide-\xff\xfe.png"
    with open(raw, "wb") as handle:
        handle.write(_encode(PICTURE, "PNG"))
    assert read_image(raw).size == (60, 40)
    prediction = multihead.classify(raw, model=tiny_model)
    assert prediction.source.endswith("slide-\\xff\\xfe.png")
    prediction.source.encode("utf-8")  # printable: no lone surrogates
    as_str = os.fsdecode(raw)  # what os.listdir / os.walk hand out
    assert to_rgb_tensor(as_str).shape == (3, 40, 60)
    broken = os.fsencode(tmp_path) + b"/broken-\xff.jpg"
    with open(broken, "wb") as handle:
        handle.write(b"junk")
    with pytest.raises(ImageError, match=r"broken-\\xff\.jpg: not an image") as caught:
        read_image(broken)
    str(caught.value).encode("utf-8")


# --- arrays and tensors -----------------------------------------------------------------------------

BAD_ARRAYS = {
    "rank 1": (np.zeros(16, np.uint8), "HxW or HxWxC"),
    "rank 0": (np.array(3, np.uint8), "HxW or HxWxC"),
    "rank 4": (np.zeros((2, 8, 8, 3), np.uint8), "HxW or HxWxC"),
    "2 channels": (np.zeros((8, 8, 2), np.uint8), "C in"),
    "5 channels": (np.zeros((8, 8, 5), np.uint8), "C in"),
    "float above 1": (np.full((8, 8), 1.5), r"\[0, 1\]"),
    "float below 0": (np.full((8, 8, 3), -0.1, np.float32), r"\[0, 1\]"),
    "float 0-255": (np.full((8, 8, 3), 200.0), "divide by 255"),
    "NaN": (np.full((8, 8), np.nan, np.float32), "NaN"),
    "infinity": (np.full((8, 8), np.inf), "infinite"),
    "empty": (np.zeros((0, 0), np.uint8), "no pixels"),
    "empty rows": (np.zeros((0, 8, 3), np.uint8), "no pixels"),
    "size 0": (np.zeros(0), "HxW or HxWxC"),
    "bool": (np.zeros((8, 8), bool), "dtype bool"),
    "object": (np.full((8, 8), None, object), "dtype object"),
    "complex": (np.zeros((8, 8), np.complex64), "dtype complex64"),
    "int64": (np.zeros((8, 8), np.int64), "dtype int64"),
    "uint16": (np.zeros((8, 8, 3), np.uint16), "dtype uint16"),
    "strings": (np.full((8, 8), "a"), "dtype <U1"),
}


BATCHES = {"rank 4", "batch"}
"""Arrays and tensors no image reader takes, that ``classify`` takes as a batch ``[B, ...]``."""


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_bad_arrays_are_refused(tiny_model, case):
    array, message = BAD_ARRAYS[case]
    with pytest.raises(ImageError, match=message) as caught:
        to_rgb_tensor(array)
    assert str(caught.value).startswith("ndarray(")
    if case in BATCHES:  # no image, but classify takes it as a batch: one prediction per row
        assert len(multihead.classify(array, model=tiny_model)) == len(array)
        return
    with pytest.raises(ImageError, match=message):
        multihead.classify(array, model=tiny_model)


BAD_TENSORS = {
    "rank 2": (torch.zeros(8, 8), "CxHxW"),
    "channels last": (torch.zeros(8, 8, 3), "CxHxW"),
    "batch": (torch.zeros(2, 3, 8, 8), "CxHxW"),
    "float above 1": (torch.full((3, 8, 8), 2.0), r"\[0, 1\]"),
    "NaN": (torch.full((3, 8, 8), float("nan")), "NaN"),
    "infinity": (torch.full((1, 8, 8), float("-inf"), dtype=torch.float16), "infinite"),
    "empty": (torch.zeros(3, 0, 8, dtype=torch.uint8), "no pixels"),
    "bool": (torch.zeros(3, 8, 8, dtype=torch.bool), "torch.bool"),
    "complex": (torch.zeros(3, 8, 8, dtype=torch.complex64), "torch.complex64"),
    "int32": (torch.zeros(3, 8, 8, dtype=torch.int32), "torch.int32"),
}


@pytest.mark.parametrize("case", sorted(BAD_TENSORS))
def test_bad_tensors_are_refused(tiny_model, case):
    tensor, message = BAD_TENSORS[case]
    with pytest.raises(ImageError, match=message):
        to_rgb_tensor(tensor)
    if case in BATCHES:  # no image, but classify takes it as a batch: one prediction per row
        assert len(multihead.classify(tensor, model=tiny_model)) == len(tensor)
        return
    with pytest.raises(ImageError, match=message):
        multihead.classify(tensor, model=tiny_model)


def test_unusual_but_valid_arrays(tiny_model):
    floats = RNG.random((8, 9, 3))
    expected = to_rgb_tensor(floats)
    for variant in (floats.astype(">f8"), floats.astype(np.float32), floats.astype(np.longdouble),
                    np.asfortranarray(floats), floats[::-1, ::-1][::-1, ::-1]):
        assert (to_rgb_tensor(variant).int() - expected.int()).abs().max() <= 1
    half = torch.from_numpy(floats).permute(2, 0, 1).to(torch.bfloat16).requires_grad_()
    assert to_rgb_tensor(half).shape == (3, 8, 9)
    assert multihead.classify(np.broadcast_to(np.uint8(7), (8, 8)), model=tiny_model).subtype


def test_empty_list_and_bad_member(tiny_model):
    assert multihead.classify([], model=tiny_model) == []
    assert multihead.classify((), model=tiny_model) == []
    with pytest.raises(ImageError, match=r"ndarray\(4, 4, 2\)"):
        multihead.classify([np.zeros((4, 4), np.uint8), np.zeros((4, 4, 2), np.uint8)], model=tiny_model)
    with pytest.raises(ImageError, match="unsupported input type"):
        multihead.classify([None], model=tiny_model)


@pytest.mark.parametrize("batch", [
    torch.zeros(3, 64, 64, dtype=torch.uint8),
    torch.zeros(2, 1, 64, 64, dtype=torch.uint8),
    torch.zeros(2, 64, 64, 3, dtype=torch.uint8),
    torch.zeros(2, 3, 64, 64),
    torch.zeros(0, 3, 64, 64, dtype=torch.uint8),
])
def test_run_batch_names_the_expected_batch(tiny_model, batch):
    with pytest.raises(ValueError, match=r"uint8 batch of shape \[B, 3, S, S\]|empty batch"):
        run_batch(tiny_model, batch)


# --- folders through the CLI ------------------------------------------------------------------------

@pytest.fixture()
def model_file(tiny_model, tmp_path):
    path = tmp_path / "model.safetensors"
    multihead.save(tiny_model, path)
    return str(path)


def _records(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_cli_empty_folder_is_exit_1(model_file, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".hidden.png").write_bytes(_encode(PICTURE, "PNG"))
    (empty / "notes.txt").write_text("not an image")
    result = runner.invoke(app, ["classify", str(empty), "-m", model_file])
    assert_handled_exit(result, 1, "no image files found")


def test_cli_folder_with_broken_files_keeps_every_result(model_file, tmp_path):
    root = tmp_path / "slides"
    good = {
        "top.png": _encode(PICTURE, "PNG"),
        "a/b/c/d/e/deep.jpg": _encode(PICTURE, "JPEG"),
        "a/UPPER.PNG": _encode(PICTURE.convert("L"), "PNG"),
        "a/b/anim.gif": _animated_gif(),
        "odd/16bit.tif": _encode(_gray16(), "TIFF"),
    }
    bad = {
        "empty.jpg": b"",
        "a/text.png": b"hello",
        "a/b/c/cut.jpg": _truncated(_encode(PICTURE, "JPEG")),
        "odd/eps.jpg": REFUSED["eps-in-disguise.jpg"][0](),
    }
    ignored = {".hidden.jpg": _encode(PICTURE, "JPEG"), ".cache/inside.png": _encode(PICTURE, "PNG"),
               "a/readme.txt": b"notes"}
    for name, data in {**good, **bad, **ignored}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "a" / "dangling.png").symlink_to(root / "nowhere.png")
    (root / "a" / "loop.png").symlink_to(root / "a" / "loop.png")
    with open(os.fsencode(root) + b"/latin-\xe9.png", "wb") as handle:
        handle.write(_encode(PICTURE, "PNG"))
    bad_names = {*bad, "a/dangling.png", "a/loop.png"}

    result = runner.invoke(app, ["classify", str(root), "-m", model_file, "--json", "--batch-size", "2"])
    assert result.exit_code == 3, result.output
    records = {os.path.relpath(r["source"], root): r for r in _records(result.stdout)}
    assert set(records) == {*good, *bad_names, "latin-\\xe9.png"}
    for name in [*good, "latin-\\xe9.png"]:
        assert records[name]["error"] is None and records[name]["subtype"] in multihead.MULTI_CANCER.subtype_names
    for name in bad_names:
        assert records[name]["error"].startswith(str(root / name) + ": ")
    assert f"{len(bad_names)} of {len(records)} files could not be classified" in result.output

    table = runner.invoke(app, ["classify", str(root), "-m", model_file])
    assert_handled_exit(table, 3, f"{len(bad_names)} of {len(records)} files could not be classified")
    assert "deep.jpg" in table.output


def test_cli_missing_input_and_bad_model(model_file, tmp_path):
    image = _write(tmp_path, "ok.png", _encode(PICTURE, "PNG"))
    result = runner.invoke(app, ["classify", str(image), str(tmp_path / "missing.png"), "-m", model_file, "--json"])
    assert result.exit_code == 3
    assert [r["error"] is None for r in _records(result.stdout)] == [True, False]
    (tmp_path / "junk.safetensors").write_bytes(b"\0" * 100)
    result = runner.invoke(app, ["classify", str(image), "-m", str(tmp_path / "junk.safetensors")])
    assert_handled_exit(result, 1, "junk.safetensors")


# --- checkpoints ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    multihead.save(tiny_model, path)
    with safe_open(str(path), "pt") as reader:
        metadata = dict(reader.metadata())
    return path, metadata, load_file(str(path))


def _variant(saved, tmp_path, *, metadata=None, tensors=None) -> Path:
    _, base_metadata, base_tensors = saved
    path = tmp_path / "variant.safetensors"
    save_file({**base_tensors, **(tensors or {})}, str(path), metadata={**base_metadata, **(metadata or {})})
    return path


@pytest.mark.parametrize("field", ["taxonomy", "trunk", "preprocessing", "metadata"])
def test_metadata_that_is_not_json(saved, tmp_path, field):
    path = _variant(saved, tmp_path, metadata={field: '{"organs": [unterminated'})
    with pytest.raises(CheckpointError, match=r"variant\.safetensors: damaged metadata"):
        multihead.load(path)


@pytest.mark.parametrize("update, message", [
    ({"trunk": "[1, 2]"}, "'trunk' must be an object"),
    ({"metadata": '"text"'}, "'metadata' must be an object"),
    ({"trunk": json.dumps({"name": "resnet18", "fingerprint": "x", "embedded": "yes"})}, "embedded"),
    ({"trunk": json.dumps({"name": 18, "fingerprint": "x", "embedded": True})}, "name"),
    ({"trunk": json.dumps({"name": "no_such_net", "fingerprint": "0" * 64, "embedded": True, "num_features": 8})},
     "unknown trunk"),
    ({"format_version": "one"}, "not an integer"),
    ({"format": "other"}, "not a multihead checkpoint"),
])
def test_metadata_with_wrong_values(saved, tmp_path, update, message):
    with pytest.raises(CheckpointError, match=message):
        multihead.load(_variant(saved, tmp_path, metadata=update))


def test_embedded_trunk_tensor_with_wrong_shape(saved, tmp_path):
    path = _variant(saved, tmp_path, tensors={"trunk.conv1.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match=r"embedded trunk weights do not fit .*conv1\.weight"):
        multihead.load(path)


@pytest.mark.parametrize("claimed", [2**63 - 1, 2**40, 50_000_000, 10])
def test_header_claiming_a_huge_size(tmp_path, claimed):
    path = _write(tmp_path, "huge.safetensors", struct.pack("<Q", claimed) + b'{"__metadata__": {}}')
    with pytest.raises(CheckpointError, match=r"huge\.safetensors: not a readable safetensors file"):
        multihead.load(path)


@pytest.mark.parametrize("make", [lambda p: p.write_bytes(b""), lambda p: p.mkdir()], ids=["zero bytes", "folder"])
def test_empty_or_folder_checkpoint(tmp_path, make):
    path = tmp_path / "m.safetensors"
    make(path)
    with pytest.raises(CheckpointError, match=r"m\.safetensors: "):
        multihead.load(path)


class _Evil:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_pickled_code_in_trunk_weights_never_runs(tmp_path, zipped):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _Evil(marker)}, path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(ValueError, match=r"evil\.pth: not a state dict torch can load with weights_only"):
        multihead.create_model("resnet18", trunk_weights=path, image_size=64)
    assert not marker.exists()


@pytest.mark.parametrize("data", [b"", b"\x80\x02junk", b"PK\x03\x04" + b"\0" * 64], ids=["empty", "pickle", "zip"])
def test_broken_trunk_weights_files(tmp_path, data):
    path = _write(tmp_path, "weights.pth", data)
    with pytest.raises(ValueError, match=r"weights\.pth: "):
        multihead.create_trunk("resnet18", weights=path)
