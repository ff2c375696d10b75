"""Read ``<root>/<organ>/<subtype>/<image>`` folders into labelled records.

Organs are matched through the subtype folder names, so the Kaggle layout (``Brain Cancer/brain_glioma``)
and the short one (``brain/brain_glioma``) read the same. The download folder itself is accepted: wrapper
folders that hold only one folder (Kaggle's ``Multi Cancer/Multi Cancer/``) are walked down, and the scan
says which folder it used. Nothing here decodes pixels: files that turn out unreadable are skipped and listed
later, where they are decoded.

Several folders are read as their union. Each file's id (``relpath``) then starts with its folder's name
(``multi-cancer-extra/brain/brain_glioma/x.jpg``), so split files and checkpoints name folders, never paths of
the machine. A folder given twice is read once, folders inside one another are refused, and a file whose
bytes another folder already holds is read once: no image is silently counted twice.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..taxonomy import MULTI_CANCER, Organ, Subtype, Taxonomy
from .folders import is_image_file, visible_files

__all__ = ["DataSource", "DatasetScan", "ImageRecord", "find_data_root", "scan_dataset"]

_SEARCH_DEPTH = 4
"""How deep below a folder that is not a data folder to look for one to suggest."""


@dataclass(frozen=True)
class ImageRecord:
    """One labelled file; ``relpath`` (relative to the data root, with '/') is its stable id in split files."""

    path: Path
    relpath: str
    organ: str
    subtype: str
    source: str = ""
    """The name of the data folder the file is in (with several folders, also the first part of ``relpath``)."""


@dataclass(frozen=True)
class DataSource:
    """One data folder of a scan as a checkpoint records it: its name and image count, never its path."""

    name: str
    images: int

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "images": self.images}


@dataclass
class DatasetScan:
    """What a folder holds: records in a stable order, the taxonomy they use, and what was left out."""

    root: Path
    """The data folder (the first one when several were given: ``sources`` names them all)."""
    taxonomy: Taxonomy
    records: list[ImageRecord]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(relative path, reason) for files that are not images, not regular files or sit at the wrong depth."""
    given_root: Path | None = None
    """The folder the caller passed, when wrapper folders were walked down to reach ``root``."""
    sources: list[DataSource] = field(default_factory=list)
    """The data folders read, in the order given, with the images each gave."""
    notes: list[str] = field(default_factory=list)
    """What the union of several folders left out, in words (a folder given twice, byte-identical copies)."""

    @property
    def counts(self) -> dict[str, int]:
        """Images per subtype, every subtype of the taxonomy included (zeros too)."""
        counts = dict.fromkeys(self.taxonomy.subtype_names, 0)
        for record in self.records:
            counts[record.subtype] += 1
        return counts

    def describe(self) -> str:
        """The folders read, by name and image count: ``multi-cancer-sample (4907) + multi-cancer-extra (1567)``."""
        return " + ".join(f"{source.name} ({source.images})" for source in self.sources) or str(self.root)

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


def scan_dataset(root: str | os.PathLike | Sequence[str | os.PathLike],
                 taxonomy: Taxonomy | str | None = None) -> DatasetScan:
    """List the labelled images under ``root``, or under several folders as their union.

    Args:
        root: folder with ``<organ>/<subtype>/<image>`` below it, or a download folder that wraps one in
            folders holding only one folder (:func:`find_data_root`; ``DatasetScan.root`` is the one used);
            or a list of such folders. With more than one, each file's ``relpath`` starts with its folder's
            name (two folders of the same name are refused, so are folders inside one another); a folder
            given twice is read once, and a file byte-identical to one an earlier folder holds is left out
            (both said in ``DatasetScan.notes``).
        taxonomy: the taxonomy to match subtype folders against (default: ``MULTI_CANCER``), or
            ``"from-folders"`` to define one from the folder names (of all folders together).

    Raises:
        ValueError: a folder does not exist, a subtype folder is unknown to the taxonomy (all are listed,
            and the folder to point at instead when one is found below or above), no image was found, or
            the folders overlap.

    Example:
        >>> scan = scan_dataset("../shared/data/multi-cancer-sample")  # doctest: +SKIP
        >>> scan.counts["lung_aca"], scan.empty_organs
        (400, ['cervix'])
    """
    given = [Path(root)] if isinstance(root, (str, os.PathLike)) else [Path(r) for r in root]
    if not given:
        raise ValueError("no data folder given")
    for folder in given:
        if not folder.is_dir():
            raise ValueError(f"{folder}: data folder does not exist or is not a folder")
    notes: list[str] = []
    unique: dict[Path, Path] = {}  # resolved data folder -> the folder as given
    roots: dict[Path, Path] = {}
    for folder in given:
        root_found = find_data_root(folder)
        key = root_found.resolve()
        if key in unique:
            notes.append(f"{folder} was given twice: read once")
        else:
            unique[key], roots[key] = folder, root_found
    _refuse_overlaps({folder: key for key, folder in unique.items()})
    listings = {key: _subtype_folders(roots[key]) for key in unique}
    if taxonomy == "from-folders":
        taxonomy = _taxonomy_from_folders(roots[next(iter(unique))], [f for listing, _ in listings.values()
                                                                    for f in listing])
    elif taxonomy is None:
        taxonomy = MULTI_CANCER
    elif not isinstance(taxonomy, Taxonomy):
        raise ValueError(f"taxonomy must be a Taxonomy, 'from-folders' or None, got {taxonomy!r}")
    names = {key: _source_name(folder) for key, folder in unique.items()}
    several = len(unique) > 1
    if several:
        _refuse_shared_names(unique, names)
    records: list[ImageRecord] = []
    skipped: list[tuple[str, str]] = []
    sources: list[DataSource] = []
    seen: dict[str, str] = {}
    for key, folder in unique.items():
        folders, wrong_depth = listings[key]
        prefix = f"{names[key]}/" if several else ""
        found, left_out = _records(folder, roots[key], folders, taxonomy, prefix, names[key])
        skipped += [(prefix + relpath, reason) for relpath, reason in wrong_depth + left_out]
        if several:
            found = _drop_copies(found, seen, notes)
        records += found
        sources.append(DataSource(names[key], len(found)))
    first = next(iter(unique))
    given_root = unique[first] if not several and roots[first] != unique[first] else None
    return DatasetScan(roots[first], taxonomy, records, skipped, given_root=given_root, sources=sources,
                       notes=notes)


def _subtype_folders(root: Path) -> tuple[list[tuple[str, str, Path]], list[tuple[str, str]]]:
    """``(organ folder, subtype folder, path)`` of every subtype folder under ``root``, and the files found
    where folders belong."""
    skipped: list[tuple[str, str]] = []
    folders: list[tuple[str, str, Path]] = []
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
    return folders, skipped


def _records(given: Path, root: Path, folders: list[tuple[str, str, Path]], taxonomy: Taxonomy, prefix: str,
             source: str) -> tuple[list[ImageRecord], list[tuple[str, str]]]:
    """The labelled image files of one data folder, and the files left out with the reason."""
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
    skipped: list[tuple[str, str]] = []
    for _, subtype_dir, folder in folders:
        organ = taxonomy.organ_of(subtype_dir)
        for path in visible_files(folder):
            relpath = path.relative_to(root).as_posix()
            if path.parent != folder:
                skipped.append((relpath, "file below the subtype level"))
            elif not is_image_file(path):
                skipped.append((relpath, f"not an image extension ({path.suffix or 'none'})"))
            elif not path.is_file():  # a FIFO or a link to a device would block the first read for ever
                skipped.append((relpath, "not a regular file"))
            else:
                records.append(ImageRecord(path, prefix + relpath, organ, subtype_dir, source))
    if not records:
        suggestion = _suggest_root(root, known)
        hint = f"; point at {suggestion}, the folder that holds the organ folders" if suggestion else ""
        raise ValueError(f"{given}: no images found (expected <organ>/<subtype>/<image> files){hint}")
    return records, skipped


def _source_name(folder: Path) -> str:
    """What a data folder is called in relpaths and checkpoints: its own name (``.`` resolved)."""
    return folder.resolve().name or "data"


def _refuse_overlaps(roots: dict[Path, Path]) -> None:
    """Folders inside one another would read the inner one's images twice (and under two labels)."""
    for outer, outer_root in roots.items():
        for inner, inner_root in roots.items():
            if outer is not inner and outer_root in inner_root.parents:
                raise ValueError(f"{inner} lies inside {outer}: overlapping data folders would read its images "
                                 "twice; give one of them")


def _refuse_shared_names(folders: dict[Path, Path], names: dict[Path, str]) -> None:
    by_name: dict[str, list[Path]] = {}
    for key, name in names.items():
        by_name.setdefault(name, []).append(folders[key])
    for name, same in by_name.items():
        if len(same) > 1:
            raise ValueError(f"{' and '.join(map(str, same))} are both named {name!r}: the union names each file by "
                             "its folder's name, so give them different names (a symbolic link will do)")


def _drop_copies(records: list[ImageRecord], seen: dict[str, str], notes: list[str]) -> list[ImageRecord]:
    """``records`` without the files whose bytes an earlier record has (``seen``: sha256 -> relpath)."""
    kept, copies = [], []
    for record in records:
        try:
            digest = hashlib.sha256(record.path.read_bytes()).hexdigest()
        except OSError:  # unreadable: kept, and reported where it is decoded
            kept.append(record)
            continue
        if digest in seen:
            copies.append((record.relpath, seen[digest]))
        else:
            seen[digest] = record.relpath
            kept.append(record)
    if copies:
        notes.append(f"{len(copies)} files are byte-identical copies of files already read and were left out "
                     f"(first: {copies[0][0]}, a copy of {copies[0][1]})")
    return kept


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
