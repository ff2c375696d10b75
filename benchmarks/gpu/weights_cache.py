"""Is ResNet18's ImageNet checkpoint already in that machine's caches? If so, bring it back in parts.

This project cannot download torchvision's ResNet18 weights where it is built, so the bundled model uses a
MobileNetV2 trunk. A lent machine may have them cached (torch hub or the Hugging Face hub, for timm):
their sha256 is checked against the prefix in torchvision's file name (``resnet18-f37072fd.pth``: the first
8 hex digits of the sha256) and the file is split into parts under the 16 MiB a returned file may have.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

PART_BYTES = 15 * 2**20
MAX_PARTS = 4


def published_name() -> str:
    """torchvision's file name for ResNet18_Weights.IMAGENET1K_V1 (``resnet18-f37072fd.pth``)."""
    try:
        import torchvision

        return torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    except (ImportError, AttributeError):
        return "resnet18-f37072fd.pth"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def torch_dirs() -> list[Path]:
    home = Path.home()
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or home / ".cache",
                                                              "torch")
    dirs = [Path(torch_home) / "hub" / "checkpoints", home / ".cache" / "torch" / "hub" / "checkpoints"]
    return list(dict.fromkeys(dirs))


def hf_dirs() -> list[Path]:
    home = Path.home()
    dirs = [os.environ.get("HF_HUB_CACHE"), os.environ.get("HUGGINGFACE_HUB_CACHE"),
            os.environ.get("HF_HOME") and os.path.join(os.environ["HF_HOME"], "hub"),
            home / ".cache" / "huggingface" / "hub"]
    return list(dict.fromkeys(Path(d) for d in dirs if d))


def _describe(path: Path) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256(path)}
    match = re.fullmatch(r"resnet18-([0-9a-f]{8,})\.pth", path.name)
    if match:
        entry["name_hash_prefix"] = match.group(1)
        entry["hash_matches_name"] = entry["sha256"].startswith(match.group(1))
    return entry


def find() -> dict[str, Any]:
    """Every candidate file, with its size and sha256; nothing is copied."""
    searched, torchvision_files, timm_files = [], [], []
    for folder in torch_dirs():
        searched.append({"path": str(folder), "exists": folder.is_dir()})
        if folder.is_dir():
            torchvision_files += [_describe(p) for p in sorted(folder.glob("resnet18-*.pth")) if p.is_file()]
    for folder in hf_dirs():
        searched.append({"path": str(folder), "exists": folder.is_dir()})
        if folder.is_dir():
            for repo in sorted(folder.glob("models--timm--resnet18*")):
                timm_files += [{**_describe(p), "repo": repo.name} for p in sorted(repo.glob("snapshots/*/*"))
                               if p.is_file() and p.suffix in (".safetensors", ".bin", ".pth")]
    return {"searched": searched, "torchvision": torchvision_files, "timm": timm_files}


def choose(found: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The file worth bringing back: torchvision's published one first, else a hash-checked torchvision
    file, else a timm ``tv_in1k`` / ``a1_in1k`` safetensors (its hash is only recorded, no name to check)."""
    good = [f for f in found["torchvision"] if f.get("hash_matches_name")]
    good.sort(key=lambda f: Path(f["path"]).name != published_name())
    if good:
        return good[0], "resnet18.pth"
    timm = [f for f in found["timm"] if f["path"].endswith(".safetensors")]
    timm.sort(key=lambda f: "tv_in1k" not in f["repo"])
    if timm:
        return timm[0], "resnet18-timm.safetensors"
    return None


def split_copy(source: Path, out_dir: Path, stem: str) -> list[dict[str, Any]]:
    """``out_dir/<stem>.part0`` ... each under 16 MiB; ``cat <stem>.part* > file`` joins them."""
    parts = []
    with open(source, "rb") as handle:
        for index in range(MAX_PARTS):
            block = handle.read(PART_BYTES)
            if not block:
                break
            target = out_dir / f"{stem}.part{index}"
            target.write_bytes(block)
            parts.append({"file": target.name, "bytes": len(block), "sha256": hashlib.sha256(block).hexdigest()})
    return parts


def measure(out_dir: Path, *, copy: bool) -> dict[str, Any]:
    found = find()
    result: dict[str, Any] = {**found, "published_name": published_name(), "copied": None}
    chosen = choose(found)
    result["found_any"] = bool(found["torchvision"] or found["timm"])
    if chosen is None:
        result["verdict"] = "no ResNet18 ImageNet checkpoint in this machine's caches"
        return result
    entry, stem = chosen
    if entry["bytes"] > PART_BYTES * MAX_PARTS:
        result["verdict"] = f"found {entry['path']} but it is larger than {MAX_PARTS} parts; not copied"
        return result
    if not copy:
        result["verdict"] = f"found {entry['path']}; not copied (copy disabled)"
        return result
    parts = split_copy(Path(entry["path"]), out_dir, stem)
    original = Path(entry["path"]).name
    result["copied"] = {"source": entry["path"], "sha256": entry["sha256"], "bytes": entry["bytes"], "parts": parts,
                        "join": f"cat {stem}.part* > {original} && sha256sum {original}"}
    result["verdict"] = f"found and copied {original} in {len(parts)} parts"
    return result
