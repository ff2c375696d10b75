"""Property-based robustness: whatever bytes or arrays come in, the outcome is a result or the library's own error.

Allowed outcomes: a result, :class:`multihead.ImageError` for images and arrays, :class:`multihead.CheckpointError`
for checkpoints. Anything else (a Pillow, torch or safetensors exception, a lost result) fails the test.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from safetensors.torch import save_file

import multihead
from multihead.data.images import IMAGE_EXTENSIONS, ImageError, read_image
from multihead.data.tensors import to_rgb_tensor
from multihead.inference import classify_files
from multihead.model.checkpoint import FORMAT_VERSION, CheckpointError

FAST = settings(max_examples=100, deadline=None, derandomize=True,  # the same examples every run
               suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(FAST, max_examples=50)  # examples that run the model or build a trunk


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("properties")


# --- files with an image extension ------------------------------------------------------------------

def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


_PICTURE = Image.fromarray(np.random.default_rng(1).integers(0, 256, (12, 16, 3), dtype=np.uint8))
VALID = {
    "png-rgb": _encode(_PICTURE, "PNG"),
    "png-palette": _encode(_PICTURE.convert("P"), "PNG"),
    "png-16bit": _encode(Image.fromarray(np.arange(192, dtype=np.uint16).reshape(12, 16) * 300), "PNG"),
    "jpeg": _encode(_PICTURE, "JPEG"),
    "jpeg-cmyk": _encode(_PICTURE.convert("CMYK"), "JPEG"),
    "gif": _encode(_PICTURE.convert("P"), "GIF"),
    "bmp": _encode(_PICTURE, "BMP"),
    "tiff": _encode(_PICTURE, "TIFF"),
    "tiff-float": _encode(Image.fromarray(np.linspace(0, 1, 192, dtype=np.float32).reshape(12, 16)), "TIFF"),
    "webp": _encode(_PICTURE, "WEBP"),
}
MAGIC = [b"", b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00",
         b"MM\x00*", b"GIF89a", b"RIFF\x00\x01\x00\x00WEBPVP8 "]

random_files = st.tuples(st.sampled_from(MAGIC), st.binary(max_size=2048)).map(b"".join)


@st.composite
def damaged_images(draw) -> bytes:
    """A valid image with a few bytes overwritten and perhaps cut short."""
    data = bytearray(VALID[draw(st.sampled_from(sorted(VALID)))])
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return bytes(data[:cut])


any_file = st.one_of(random_files, damaged_images())


def _read_or_image_error(path) -> Image.Image | None:
    try:
        image = read_image(path)
    except ImageError as err:
        assert str(err).startswith(str(path) + ": ")
        event("outcome: ImageError")
        return None
    event("outcome: image")
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1
    return image


@FAST
@given(data=any_file, extension=st.sampled_from(sorted(IMAGE_EXTENSIONS)))
def test_any_bytes_read_as_an_image_or_image_error(workdir, data, extension):
    path = workdir / f"fuzz{extension}"
    path.write_bytes(data)
    image = _read_or_image_error(path)
    if image is not None:
        assert to_rgb_tensor(path).shape == (3, image.height, image.width)


@SLOW
@given(data=any_file)
def test_any_bytes_classify_or_image_error(tiny_model, workdir, data):
    path = workdir / "fuzz.png"
    path.write_bytes(data)
    try:
        prediction = multihead.classify(path, model=tiny_model)
    except ImageError as err:
        assert str(path) in str(err)
        event("outcome: ImageError")
    else:
        event("outcome: prediction")
        assert prediction.subtype in multihead.MULTI_CANCER.subtype_names


@settings(SLOW, max_examples=30)
@given(files=st.lists(st.one_of(st.sampled_from(sorted(VALID)), any_file), min_size=1, max_size=5),
       batch_size=st.integers(1, 4))
def test_a_folder_run_loses_no_result(tiny_model, workdir, files, batch_size):
    """Each input gets exactly one result, in order; every valid image gets a prediction."""
    paths = []
    for index, item in enumerate(files):
        path = workdir / f"run-{index}.jpg"
        path.write_bytes(VALID[item] if isinstance(item, str) else item)
        paths.append(path)
    results = list(classify_files(paths, tiny_model, config=multihead.InferenceConfig(batch_size=batch_size)))
    assert [r.path for r in results] == [str(p) for p in paths]
    for item, result in zip(files, results):
        assert (result.prediction is None) != (result.error is None)
        event(f"files: {'error' if result.prediction is None else 'prediction'}")
        if isinstance(item, str):
            assert result.prediction is not None, result.error


# --- arrays and tensors -----------------------------------------------------------------------------

DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int64, np.float16, np.float32, np.float64, np.longdouble,
          np.bool_, np.complex64, ">f4", ">u2"]
shapes = st.one_of(
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),  # mostly wrong
    st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(0, 5)),  # HxWxC, C often wrong
    st.tuples(st.integers(1, 6), st.integers(1, 6)) | st.tuples(st.integers(1, 6), st.integers(1, 6),
                                                                 st.sampled_from([1, 3, 4])),  # right
)


def _elements(dtype: np.dtype, in_range: bool) -> st.SearchStrategy:
    if dtype.kind != "f":
        return hnp.from_dtype(dtype)
    width = min(dtype.itemsize * 8, 64)
    return st.floats(0, 1, width=width) if in_range else st.floats(width=width)  # NaN, infinity, any size


arrays = st.tuples(st.sampled_from(DTYPES).map(np.dtype), st.booleans()).flatmap(
    lambda choice: hnp.arrays(choice[0], shapes, elements=_elements(*choice))
)


def _should_accept(array: np.ndarray) -> bool:
    """The documented contract: HxW or HxWxC (C in 1, 3, 4), uint8 or finite floats in [0, 1]."""
    shape = (*array.shape, 1) if array.ndim == 2 else array.shape
    if len(shape) != 3 or shape[2] not in (1, 3, 4) or shape[0] == 0 or shape[1] == 0:
        return False
    if array.dtype == np.uint8:
        return True
    values = array.astype(np.float64) if array.dtype.kind == "f" else None
    return values is not None and bool(np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1)


@FAST
@given(array=arrays)
def test_any_array_becomes_rgb_or_image_error(array):
    try:
        tensor = to_rgb_tensor(array)
    except ImageError as err:
        assert str(err).startswith("ndarray(")
        assert not _should_accept(array)
        event("outcome: ImageError")
    else:
        event("outcome: tensor")
        assert _should_accept(array)
        assert tensor.dtype == torch.uint8 and tensor.shape == (3, *array.shape[:2])


@FAST
@given(array=arrays)
def test_any_tensor_becomes_rgb_or_image_error(array):
    if array.dtype.kind not in "biufc" or array.dtype.itemsize > 8 or not array.dtype.isnative:
        array = array.astype(np.float64)  # torch has no long double nor big-endian tensors
    tensor = torch.from_numpy(np.moveaxis(array, 2, 0) if array.ndim == 3 else array)  # HxWxC -> CxHxW
    try:
        out = to_rgb_tensor(tensor)
    except ImageError as err:
        assert str(err).startswith("Tensor(")
        event("outcome: ImageError")
    else:
        event("outcome: tensor")
        assert out.dtype == torch.uint8 and out.shape == (3, *tensor.shape[1:])


@SLOW
@given(array=arrays)
def test_any_array_classifies_or_image_error(tiny_model, array):
    accept = all(_should_accept(a) for a in array) if array.ndim == 4 else _should_accept(array)  # 4-D: a batch
    try:
        predictions = multihead.classify(array, model=tiny_model)
    except ImageError:
        assert not accept
        event("outcome: ImageError")
    else:
        event("outcome: prediction")
        predictions = predictions if array.ndim == 4 else [predictions]
        assert accept and len(predictions) == len(array) if array.ndim == 4 else accept
        assert all(p.subtype in multihead.MULTI_CANCER.subtype_names for p in predictions)


# --- checkpoints ------------------------------------------------------------------------------------

SEED = 1234


@pytest.fixture(scope="module")
def small_checkpoint(tiny_model, workdir):
    """Heads only, the trunk referenced by name (no weights id): small enough to rewrite per example."""
    heads = {k: v.contiguous() for k, v in tiny_model.state_dict().items() if not k.startswith("trunk.")}
    torch.manual_seed(SEED)  # load() rebuilds this trunk from the same seed: damage, not chance, decides
    trunk = {**multihead.create_trunk("resnet18", weights=None).spec(), "embedded": False, "weights_id": None}
    metadata = {"format": "multihead", "format_version": str(FORMAT_VERSION), "taxonomy": tiny_model.taxonomy.to_json(),
                "trunk": json.dumps(trunk), "preprocessing": tiny_model.preprocessing.to_json(), "metadata": "{}"}
    path = workdir / "small.safetensors"
    save_file(heads, str(path), metadata=metadata)
    return path.read_bytes(), heads, metadata


def _load_or_checkpoint_error(path) -> None:
    torch.manual_seed(SEED)
    try:
        multihead.load(path)
    except CheckpointError as err:
        assert str(err).startswith(str(path) + ": ")
        event("outcome: CheckpointError")
    else:
        event("outcome: model")


@FAST
@given(data=st.one_of(
    st.binary(max_size=1024),
    st.tuples(st.integers(0, 2**64 - 1).map(lambda n: struct.pack("<Q", n)), st.binary(max_size=256)).map(b"".join),
))
def test_random_bytes_as_a_checkpoint(workdir, data):
    path = workdir / "random.safetensors"
    path.write_bytes(data)
    _load_or_checkpoint_error(path)


@FAST
@given(edits=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.none(), st.integers(0, 2**16)))
def test_damaged_checkpoint_bytes(small_checkpoint, workdir, edits, cut):
    """Edits fall anywhere: in the header (JSON, offsets) or in head tensors, which no checksum guards."""
    data = bytearray(small_checkpoint[0])
    for position, value in edits:
        data[position % len(data)] = value
    path = workdir / "damaged.safetensors"
    path.write_bytes(bytes(data[:cut]))
    _load_or_checkpoint_error(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@SLOW
@given(field=st.sampled_from(["format", "format_version", "taxonomy", "trunk", "preprocessing", "metadata", "joint"]),
       value=st.one_of(st.text(max_size=60), json_values.map(json.dumps), st.none()))
def test_damaged_checkpoint_metadata(small_checkpoint, workdir, field, value):
    _, heads, metadata = small_checkpoint
    metadata = {k: v for k, v in metadata.items() if k != field}
    if value is not None:
        metadata[field] = value
    path = workdir / "metadata.safetensors"
    save_file(heads, str(path), metadata=metadata)
    _load_or_checkpoint_error(path)


def test_the_small_checkpoint_loads(small_checkpoint, workdir):
    """The baseline the damage properties start from is a loadable model."""
    path = workdir / "baseline.safetensors"
    path.write_bytes(small_checkpoint[0])
    torch.manual_seed(SEED)
    assert multihead.load(path).taxonomy == multihead.MULTI_CANCER
