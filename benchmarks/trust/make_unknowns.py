"""Write a small, documented set of images that are none of the organs, made offline: uniform and Gaussian
noise, text rendered with PIL, synthetic patterns (checkerboards, stripes, gradients, circles), and the
photographs that the installed packages bundle (scikit-learn's ``china.jpg`` and ``flower.jpg``, matplotlib's
``grace_hopper.jpg`` and ``Minduka_Present_Blue_Pack.png``), each whole and as its four quadrants. The trust
page's scikit-image photographs are not installed here, so these stand in for them.

    python benchmarks/trust/make_unknowns.py /tmp/unknowns     # 96 PNG files, 512x512, seeded, + 20 photographs
    python benchmarks/trust/make_unknowns.py /tmp/unknowns-1 1  # a second set: other noise, text and patterns,
                                                                # the photographs cut at random instead of quadrants
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 512
TEXT = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. Invoice 2024-03 total due 1,284.00 EUR. "
        "The quick brown fox jumps over the lazy dog. Patient consent form, page 2 of 4.")
WORDS = TEXT.split(" ")


def _noise(rng: np.random.Generator, i: int) -> Image.Image:
    uniform = rng.integers(0, 256, (SIZE, SIZE, 3)) if i % 2 else None
    pixels = uniform if uniform is not None else np.clip(rng.normal(128, 40, (SIZE, SIZE, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def _text(rng: np.random.Generator, i: int) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(image)
    for line in range(int(rng.integers(10, 30))):
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 9))))
        draw.text((10, 10 + line * 16), words, fill=tuple(int(v) for v in rng.integers(0, 80, 3)))
    return image


def _pattern(rng: np.random.Generator, i: int) -> Image.Image:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    kind = i % 4
    period = int(rng.integers(8, 64))
    if kind == 0:
        mask = ((x // period + y // period) % 2).astype(float)
    elif kind == 1:
        mask = (np.sin(2 * np.pi * (x * np.cos(i) + y * np.sin(i)) / period) > 0).astype(float)
    elif kind == 2:
        mask = (x + y) / (2 * SIZE)
    else:
        mask = (((x - SIZE / 2) ** 2 + (y - SIZE / 2) ** 2) ** 0.5 // period % 2).astype(float)
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    pixels = a * mask[..., None] + b * (1 - mask[..., None])
    return Image.fromarray(pixels.astype(np.uint8))


def _photographs() -> list[tuple[str, Image.Image]]:
    """The photographs bundled with scikit-learn and matplotlib (whichever are installed)."""
    found = []
    for module, folder, names in (("sklearn.datasets", "images", ("china.jpg", "flower.jpg")),
                                  ("matplotlib", "mpl-data/sample_data",
                                   ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png"))):
        try:
            base = Path(__import__(module, fromlist=["_"]).__file__).parent / folder
        except ImportError:
            continue
        found += [(name, Image.open(base / name).convert("RGB")) for name in names if (base / name).is_file()]
    return found


def _crops(rng: np.random.Generator, w: int, h: int, seed: int) -> list[tuple[int, int, int, int]]:
    """Four crops (x, y, width, height): the quadrants for seed 0 (the committed set), random ones otherwise."""
    if seed == 0:
        return [(x, y, w // 2, h // 2) for x, y in ((0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2))]
    sizes = rng.uniform(0.3, 0.7, (4, 2)) * (w, h)
    return [(int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch)), int(cw), int(ch)) for cw, ch in sizes]


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/unknowns")
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    rng = np.random.default_rng(seed)
    for kind, make in (("noise", _noise), ("text", _text), ("pattern", _pattern)):
        (out / kind).mkdir(parents=True, exist_ok=True)
        for i in range(32):
            make(rng, i).save(out / kind / f"{kind}_{i:02d}.png")
    (out / "photo").mkdir(parents=True, exist_ok=True)
    photos = _photographs()
    for name, image in photos:
        stem = Path(name).stem
        image.save(out / "photo" / f"{stem}.png")
        w, h = image.size
        for i, (x, y, cw, ch) in enumerate(_crops(rng, w, h, seed)):
            image.crop((x, y, x + cw, y + ch)).save(out / "photo" / f"{stem}_q{i}.png")
    print(f"wrote {96 + 5 * len(photos)} images to {out} ({len(photos)} photographs, each whole and in "
          f"{'quadrants' if seed == 0 else 'four random crops'})")


if __name__ == "__main__":
    main()
