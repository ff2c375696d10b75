"""Read a ``<root>/<organ>/<subtype>/<image>`` folder into labelled records.

Organs are matched through the subtype folder names, so the Kaggle layout (``Brain Cancer/brain_glioma``)
and the short one (``brain/brain_glioma``) read the same. The download folder itself is accepted: wrapper
folders that hold only one folder (Kaggle's ``Multi Cancer/Multi Cancer/``) are walked down, and the scan
says which folder it used. Nothing here decodes pixels: files that turn out unreadable are skipped and listed
later, where they are decoded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..taxonomy import MULTI_CANCER, Organ, Subtype, Taxonomy
from .folders import is_image_file, visible_files

__all__ = ["DatasetScan", "ImageRecord", "find_data_root", "scan_dataset"]

_SEARCH_DEPTH = 4
"""How deep below a folder that is not a data folder to look for one to suggest."""


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
    given_root: Path | None = None
    """The folder the caller passed, when wrapper folders were walked down to reach ``root``."""

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


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [folder / n for n in _visible(os.listdir(folder)) if (folder / n).is_dir()]
    except OSError:
        return []


def _holds_images(folder: Path) -> bool:
    try:
        return any(is_image_file(n) for n in os.listdir(folder) if not n.startswith("."))
    except OSError:
        return False


def _is_data_root(folder: Path) -> bool:
    """Images two levels down (``<organ>/<subtype>/<image>``) in at least one place."""
    return any(_holds_images(sub) for organ in _subfolders(folder) for sub in _subfolders(organ))


def find_data_root(folder: str | os.PathLike) -> Path:
    """The data folder at or below ``folder``: wrapper folders that hold one folder and nothing else visible
    are walked down (a Kaggle download unpacks as ``<download>/Multi Cancer/Multi Cancer/<organ>/...``) until
    a folder holds ``<organ>/<subtype>/<image>``. A folder that already does, or holds anything else, is
    returned as it is (a one-organ data folder is not mistaken for a wrapper).

    Example:
        >>> find_data_root("~/Downloads/multi-cancer")  # doctest: +SKIP
        PosixPath('~/Downloads/multi-cancer/Multi Cancer/Multi Cancer')
    """
    folder = Path(folder)
    current = folder
    for _ in range(_SEARCH_DEPTH + 1):
        if _is_data_root(current):
            return current
        try:
            entries = _visible(os.listdir(current))
        except OSError:
            return folder
        if len(entries) != 1 or not (current / entries[0]).is_dir():
            return folder
        current = current / entries[0]
    return folder


def _suggest_root(root: Path, known: set[str]) -> Path | None:
    """A folder to point at instead of ``root``: its parent when ``root`` is one organ's folder, else the
    first folder below it (breadth first, a few levels) whose second level holds known subtype folders."""
    if known & {p.name for p in _subfolders(root)}:
        return root.parent
    level = [root]
    for _ in range(_SEARCH_DEPTH):
        level = [sub for folder in level for sub in _subfolders(folder)]
        for folder in level:
            if known & {p.name for organ in _subfolders(folder) for p in _subfolders(organ)}:
                return folder
    return None


def scan_dataset(root: str | os.PathLike, taxonomy: Taxonomy | str | None = None) -> DatasetScan:
    """List the labelled images under ``root``.

    Args:
        root: folder with ``<organ>/<subtype>/<image>`` below it, or a download folder that wraps one in
            folders holding only one folder (:func:`find_data_root`; ``DatasetScan.root`` is the one used).
        taxonomy: the taxonomy to match subtype folders against (default: ``MULTI_CANCER``), or
            ``"from-folders"`` to define one from the folder names.

    Raises:
        ValueError: ``root`` is not a folder, a subtype folder is unknown to the taxonomy (all are listed,
            and the folder to point at instead when one is found below or above), or no image was found.

    Example:
        >>> scan = scan_dataset("../shared/data/multi-cancer-sample")  # doctest: +SKIP
        >>> scan.counts["lung_aca"], scan.empty_organs
        (400, ['cervix'])
    """
    given = Path(root)
    if not given.is_dir():
        raise ValueError(f"{given}: data folder does not exist or is not a folder")
    root = find_data_root(given)
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
        suggestion = _suggest_root(root, known)
        if suggestion is not None:
            raise ValueError(
                f"{given}: this is not the data folder (subtype folders unknown to taxonomy {taxonomy.name!r}: "
                f"{_shorten(unknown)}); point at {suggestion}, the folder that holds the organ folders")
        raise ValueError(
            f"{root}: subtype folders unknown to taxonomy {taxonomy.name!r}: {', '.join(unknown)}; expected "
            "<organ>/<subtype>/<image> with subtype folders named like brain_glioma (docs/training.md); rename "
            "them, or pass --taxonomy from-folders to define the taxonomy from the folders"
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
        suggestion = _suggest_root(root, set(taxonomy.subtype_names))
        hint = f"; point at {suggestion}, the folder that holds the organ folders" if suggestion else ""
        raise ValueError(f"{given}: no images found (expected <organ>/<subtype>/<image> files){hint}")
    return DatasetScan(root, taxonomy, records, skipped, given_root=given if root != given else None)


def _shorten(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _taxonomy_from_folders(root: Path, folders: list[tuple[str, str, Path]]) -> Taxonomy:
    organs: dict[str, list[str]] = {}
    for organ_dir, subtype_dir, _ in folders:
        organs.setdefault(organ_dir.replace(".", "_"), []).append(subtype_dir.replace(".", "_"))
    if not organs:
        raise ValueError(f"{root}: no <organ>/<subtype> folders to define a taxonomy from")
    return Taxonomy(
        tuple(Organ(o, tuple(Subtype(s) for s in subs)) for o, subs in organs.items()), name=root.name
    )
