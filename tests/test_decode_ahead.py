"""classify's decoding (issue 37): the next files decoded in threads while the trunk runs, large JPEGs decoded at a
reduced scale; the same batches, the same failures, the same answers as before for images that are not large."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from multihead.data.images import ImageError, read_image
from multihead.data.loading import decode_threads, load_batches
from multihead.data.preprocessing import Preprocessing
from multihead.inference import InferenceConfig, classify_files


def _load(item: int) -> torch.Tensor:
    if item % 5 == 3:
        raise ImageError(f"item {item}: broken")
    return torch.full((3, 2, 2), item, dtype=torch.uint8)


def _flatten(batches):
    return [(b.indices, None if b.images is None else b.images.tolist(), b.failures, b.inputs) for b in batches]


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_give_the_same_batches_and_failures_in_order(threads):
    items = list(range(23))
    expected = _flatten(load_batches(items, _load, batch_size=4))
    assert _flatten(load_batches(items, _load, batch_size=4, threads=threads)) == expected
    assert _flatten(load_batches(iter(items), _load, batch_size=4, threads=threads)) == expected  # read lazily


def test_threads_decode_ahead_in_other_threads_and_stop_with_the_caller():
    seen: list[str] = []
    read: list[int] = []

    def load(item: int) -> torch.Tensor:
        seen.append(threading.current_thread().name)
        return torch.zeros(3, 1, 1, dtype=torch.uint8)

    def items():
        for item in range(1000):
            read.append(item)
            yield item

    batches = load_batches(items(), load, batch_size=2, threads=2)
    next(batches)
    batches.close()  # the caller stops: nothing more is read than two batches ahead
    assert all(name.startswith("multihead-decode") for name in seen)
    assert len(read) <= 2 * 2 + 2
    assert 1 <= decode_threads() <= 4


def _jpeg(path, side: int) -> None:
    y, x = np.mgrid[0:side, 0:side]
    pixels = np.stack([(x * 255 // side), (y * 255 // side), ((x + y) * 127 // side)], -1).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=95)


def test_only_a_jpeg_four_times_the_input_side_is_decoded_at_a_reduced_scale(tmp_path):
    small, large = tmp_path / "small.jpg", tmp_path / "large.jpg"
    _jpeg(small, 255)
    _jpeg(large, 1100)
    preprocessing = Preprocessing(image_size=64)
    assert torch.equal(preprocessing.load(small, draft=True), preprocessing.load(small))
    assert read_image(large, reduce_to=64).size[0] < 1100 // 2 + 1  # drafted at a smaller scale
    assert read_image(large, reduce_to=64).size[0] >= 2 * 64  # never below twice the side
    assert read_image(large).size == (1100, 1100)  # without it: in full
    reduced, full = preprocessing.load(large, draft=True).float(), preprocessing.load(large).float()
    assert reduced.shape == full.shape == (3, 64, 64)
    assert (reduced - full).abs().mean() < 2.0  # a smooth image looks the same


def test_classify_files_answers_the_same_with_and_without_decode_threads(tiny_model, real_images):
    config = InferenceConfig(batch_size=3, backend="torch")
    alone = [r.to_dict() for r in classify_files(real_images, tiny_model, config=config, decode_threads=0)]
    ahead = [r.to_dict() for r in classify_files(real_images, tiny_model, config=config, decode_threads=2)]
    assert ahead == alone
