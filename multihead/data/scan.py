"""Read a ``<root>/<organ>/<subtype>/<image>`` folder into labelled records.

Organs are matched through the subtype folder names, so the Kaggle layout (``Brain Cancer/brain_glioma``)
and the short one (``brain/brain_glioma``) read the same. Nothing here decodes pixels: files that turn out
unreadable are skipped and listed later, where they are decoded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..taxonomy import MULTI_CANCER, Organ, Subtype, Taxonomy
from .folders import is_image_file, visible_files

__all__ = ["DatasetScan", "ImageRecord", "scan_dataset"]


@dataclass(frozen=True)
class ImageRecord:
    """One labelled file; ``relpath`` (relative to the data root, with '/') is its stable id in split files."""

    path: Path
    relpath: str
    organ: str
    subtype: str


@dataclass
class DatasetScan:
    """What a folder holds: records in a stable order, the taxonomy they use, and what was left out."""

    root: Path
    taxonomy: Taxonomy
    records: list[ImageRecord]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(relative path, reason) for files that are not images or sit at the wrong depth."""

    @property
    def counts(self) -> dict[str, int]:
        """Images per subtype, every subtype of the taxonomy included (zeros too)."""
        counts = dict.fromkeys(self.taxonomy.subtype_names, 0)
        for record in self.records:
            counts[record.subtype] += 1
        return counts

    @property
    def empty_organs(self) -> list[str]:
        """Organs of the taxonomy with no images at all (they stay in the taxonomy)."""
        present = {r.organ for r in self.records}
        return [o for o in self.taxonomy.organ_names if o not in present]


def _visible(names: list[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith("."))


def scan_dataset(root: str | os.PathLike, taxonomy: Taxonomy | str | None = None) -> DatasetScan:
    """List the labelled images under ``root``.

    Args:
        root: folder with ``<organ>/<subtype>/<image>`` below it.
        taxonomy: the taxonomy to match subtype folders against (default: ``MULTI_CANCER``), or
            ``"from-folders"`` to define one from the folder names.

    Raises:
        ValueError: ``root`` is not a folder, a subtype folder is unknown to the taxonomy (all are listed),
            or no image was found.

    Example:
        >>> scan = scan_dataset("../shared/data/multi-cancer-sample")  # doctest: +SKIP
        >>> scan.counts["lung_aca"], scan.empty_organs
        (400, ['cervix'])
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: data folder does not exist or is not a folder")
    skipped: list[tuple[str, str]] = []
    folders: list[tuple[str, str, Path]] = []  # (organ folder, subtype folder, path)
    for organ_dir in _visible(os.listdir(root)):
        organ_path = root / organ_dir
        if not organ_path.is_dir():
            skipped.append((organ_dir, "file at the organ level (expected <organ>/<subtype>/<image>)"))
            continue
        for subtype_dir in _visible(os.listdir(organ_path)):
            if (organ_path / subtype_dir).is_dir():
                folders.append((organ_dir, subtype_dir, organ_path / subtype_dir))
            else:
                skipped.append((f"{organ_dir}/{subtype_dir}", "file at the subtype level"))

    if taxonomy == "from-folders":
        taxonomy = _taxonomy_from_folders(root, folders)
    elif taxonomy is None:
        taxonomy = MULTI_CANCER
    elif not isinstance(taxonomy, Taxonomy):
        raise ValueError(f"taxonomy must be a Taxonomy, 'from-folders' or None, got {taxonomy!r}")
    known = set(taxonomy.subtype_names)
    unknown = sorted(f"{o}/{s}" for o, s, _ in folders if s not in known)
    if unknown:
        raise ValueError(
            f"{root}: subtype folders unknown to taxonomy {taxonomy.name!r}: {', '.join(unknown)}; "
            "rename them, or pass --taxonomy from-folders to define the taxonomy from the folders"
        )

    records: list[ImageRecord] = []
    for _, subtype_dir, folder in folders:
        organ = taxonomy.organ_of(subtype_dir)
        for path in visible_files(folder):
            relpath = path.relative_to(root).as_posix()
            if path.parent != folder:
                skipped.append((relpath, "file below the subtype level"))
            elif not is_image_file(path):
                skipped.append((relpath, f"not an image extension ({path.suffix or 'none'})"))
            else:
                records.append(ImageRecord(path, relpath, organ, subtype_dir))
    if not records:
        raise ValueError(f"{root}: no images found (expected <organ>/<subtype>/<image> files)")
    return DatasetScan(root, taxonomy, records, skipped)


def _taxonomy_from_folders(root: Path, folders: list[tuple[str, str, Path]]) -> Taxonomy:
    organs: dict[str, list[str]] = {}
    for organ_dir, subtype_dir, _ in folders:
        organs.setdefault(organ_dir.replace(".", "_"), []).append(subtype_dir.replace(".", "_"))
    if not organs:
        raise ValueError(f"{root}: no <organ>/<subtype> folders to define a taxonomy from")
    return Taxonomy(
        tuple(Organ(o, tuple(Subtype(s) for s in subs)) for o, subs in organs.items()), name=root.name
    )
