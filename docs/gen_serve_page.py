"""Regenerate docs/serve-page.png: the page after three uploads, with the bundled model.

    python docs/gen_serve_page.py [--brain PATH]     # needs the dev extra and /usr/bin/chromium

The three images, top to bottom: a bundled example (ALL, answered in full), a test-split brain MRI from the
shared sample whose subtype the model is unsure of (the organ only), and random noise (out of distribution).
"""

from __future__ import annotations

import argparse
import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import uvicorn
from PIL import Image
from playwright.sync_api import sync_playwright

import multihead
from multihead.serve import create_app

DOCS = Path(__file__).resolve().parent
SAMPLE = DOCS.parents[1] / "shared" / "data" / "multi-cancer-sample"
EXAMPLE = Path(multihead.__file__).parent / "examples" / "WBC-Malignant-Early-011.jpg"
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brain", type=Path, default=SAMPLE / "brain" / "brain_menin" / "Tr-me_0086.jpg")
    parser.add_argument("--out", type=Path, default=DOCS / "serve-page.png")
    args = parser.parse_args()
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (320, 320, 3), dtype=np.uint8)).save(noise, "PNG")
    files = [{"name": EXAMPLE.name, "mimeType": "image/jpeg", "buffer": EXAMPLE.read_bytes()},
             {"name": args.brain.name, "mimeType": "image/jpeg", "buffer": args.brain.read_bytes()},
             {"name": "noise.png", "mimeType": "image/png", "buffer": noise.getvalue()}]

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.set_default_timeout(120_000)
        page.goto(f"http://127.0.0.1:{port}")
        page.locator("#model-info", has_text="Model:").wait_for()
        for file in reversed(files):  # one at a time; the page shows the newest first
            page.set_input_files("#file-input", files=[file])
            result = page.locator(f'article.result[data-file="{file["name"]}"]')
            result.and_(page.locator("[data-gradcam=done]")).wait_for()
        page.screenshot(path=str(args.out), full_page=True)
        browser.close()
    server.should_exit = True
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
