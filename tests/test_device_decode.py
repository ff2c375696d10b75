"""The device decode path (multihead.data.device_decode): on the CPU it must give the pixels the Pillow path
gives, and a broken file must cost only itself."""

from __future__ import annotations

import torch
import torchvision

from multihead.data.device_decode import decode_batch, is_jpeg, resize_batch
from multihead.data.images import ImageError
from multihead.data.preprocessing import Preprocessing


def test_decoded_and_resized_batch_equals_the_pillow_path(real_images):
    preprocessing = Preprocessing(image_size=96)
    encoded = [torchvision.io.read_file(str(path)) for path in real_images]
    assert sum(is_jpeg(e) for e in encoded) >= 10 and not all(is_jpeg(e) for e in encoded)  # JPEG and PNG
    batch = resize_batch(decode_batch(encoded, names=[str(p) for p in real_images]), preprocessing)
    expected = torch.stack([preprocessing.load(path) for path in real_images])
    assert batch.shape == expected.shape and batch.dtype == torch.uint8
    assert (batch.int() - expected.int()).abs().max() <= 1  # identical here; libjpeg versions may round apart


def test_a_broken_file_fails_alone_with_its_name(real_images):
    good = torchvision.io.read_file(str(real_images[0]))
    truncated = good[: len(good) // 3]
    results = decode_batch([good, truncated, good], names=["a.jpg", "cut.jpg", "c.jpg"])
    assert isinstance(results[1], ImageError) and str(results[1]).startswith("cut.jpg: cannot decode")
    assert torch.equal(results[0], results[2]) and results[0].shape[0] == 3


def test_resize_batch_keeps_the_order_of_mixed_sizes():
    dark, grey = torch.zeros(3, 10, 12, dtype=torch.uint8), torch.full((3, 10, 12), 100, dtype=torch.uint8)
    large = torch.full((3, 40, 30), 200, dtype=torch.uint8)
    batch = resize_batch([dark, large, grey], Preprocessing(image_size=8))  # dark and grey resize together
    assert batch[:, 0, 0, 0].tolist() == [0, 200, 100]
