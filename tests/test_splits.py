"""Leak-free splits on synthetic images whose near-copies are known: no group ever spans two splits, for
many groups and seeds, and the counts, ties and files come out as worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from multihead import Taxonomy
from multihead.data.scan import DatasetScan, ImageRecord
from multihead.data.splits import SPLITS, Split, dihedral_hashes, group_near_duplicates, make_split

TAXONOMY = Taxonomy.from_dict({"skin": ["mel", "nevus"]})
HASHES_OF_THE_FIXED_PICTURE = [5038569695195994322, 6469533502975239860, 12876831287551395285, 12840451742851815764,
                               15615359054899144392, 11876722517415663852, 7013328625782256178, 8778928700400120243]
COPIES = (Image.Transpose.ROTATE_90, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.TRANSPOSE,
          Image.Transpose.ROTATE_180)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[DatasetScan, list[set[str]]]:
    """Per subtype: 18 random originals; originals 1-4 also have 1-4 rotated or flipped copies (28 files)."""
    root = tmp_path_factory.mktemp("splits")
    rng = np.random.default_rng(0)
    records, groups = [], []
    for subtype in TAXONOMY.subtype_names:
        (root / "skin" / subtype).mkdir(parents=True)
        for index in range(18):
            image = Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
            group = set()
            for copy, transform in enumerate([None, *COPIES[:index % 5]] if index < 6 else [None]):
                relpath = f"skin/{subtype}/{index:02d}-{copy}.png"
                (image if transform is None else image.transpose(transform)).save(root / relpath)
                records.append(ImageRecord(root / relpath, relpath, "skin", subtype))
                group.add(relpath)
            groups.append(group)
    return DatasetScan(root, TAXONOMY, records), groups


@pytest.mark.parametrize("seed", range(6))
def test_no_group_ever_spans_two_splits(dataset, seed):
    scan, groups = dataset
    split, unreadable = make_split(scan, fractions=(0.5, 0.25, 0.25), seed=seed)
    assert not unreadable and set(split.assignment) == {r.relpath for r in scan.records}
    for group in groups:
        assert len({split.assignment[f] for f in group}) == 1, sorted(group)
    multi = [g for g in groups if len(g) > 1]
    assert split.info["groups"] == len(multi) == 8 and split.info["grouped_files"] == sum(map(len, multi)) == 28


def test_without_grouping_some_seed_does_split_a_group(dataset):
    """The check above has teeth: files assigned one by one land on both sides of a group."""
    scan, groups = dataset
    spanning = 0
    for seed in range(6):
        split, _ = make_split(scan, fractions=(0.5, 0.25, 0.25), seed=seed, leak_free=False)
        spanning += sum(len({split.assignment[f] for f in g}) > 1 for g in groups)
        assert split.info["grouped_files"] == 0 and split.info["leak_free"] is False
    assert spanning > 0


def test_counts_follow_the_fractions_per_subtype(dataset):
    scan, _ = dataset
    split, _ = make_split(scan, fractions=(0.5, 0.25, 0.25), seed=1, leak_free=False)
    for subtype in TAXONOMY.subtype_names:  # 28 files each: whole targets, met exactly one file at a time
        counts = {s: sum(1 for f, v in split.assignment.items() if v == s and f"/{subtype}/" in f) for s in SPLITS}
        assert counts == {"train": 14, "val": 7, "test": 7}, subtype
    assert split.info["counts"] == {"train": 28, "val": 14, "test": 14}
    assert split.info | {"counts": None} == {"seed": 1, "fractions": [0.5, 0.25, 0.25], "leak_free": False,
                                             "hash": "dhash8-dihedral", "order": "largest-first", "threshold": 4,
                                             "grouped_files": 0,
                                             "groups": 0, "counts": None, "unreadable": 0}
    assert list(split.assignment) == sorted(split.assignment)


def test_split_is_seeded(dataset):
    scan, _ = dataset
    first, _ = make_split(scan, seed=4)
    assert make_split(scan, seed=4)[0].assignment == first.assignment
    assert make_split(scan, seed=5)[0].assignment != first.assignment


def test_ties_go_to_test_then_val_then_train(tmp_path):
    """Two images at 50/25/25: one to train, then test and val are equally short of their targets and test
    wins; one image at 0/50/50 goes to test."""
    records = []
    for index in range(2):
        Image.fromarray(np.full((9, 9, 3), index * 200, np.uint8)).save(tmp_path / f"{index}.png")
        records.append(ImageRecord(tmp_path / f"{index}.png", f"skin/mel/{index}.png", "skin", "mel"))
    split, _ = make_split(DatasetScan(tmp_path, TAXONOMY, records), fractions=(0.5, 0.25, 0.25), leak_free=False)
    assert sorted(split.assignment.values()) == ["test", "train"]
    split, _ = make_split(DatasetScan(tmp_path, TAXONOMY, records[:1]), fractions=(0.0, 0.5, 0.5), leak_free=False)
    assert list(split.assignment.values()) == ["test"]


def test_unreadable_files_are_left_out_and_listed(dataset, tmp_path):
    scan, _ = dataset
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    records = [*scan.records[:5], ImageRecord(broken, "skin/mel/broken.png", "skin", "mel")]
    seen = []
    split, unreadable = make_split(DatasetScan(scan.root, TAXONOMY, records), progress=lambda *a: seen.append(a))
    assert [r for r, _ in unreadable] == ["skin/mel/broken.png"] and "broken.png" in unreadable[0][1]
    assert "skin/mel/broken.png" not in split.assignment and len(split.assignment) == 5
    assert split.info["unreadable"] == 1 and seen == [(i, 6) for i in range(1, 7)]
    split, unreadable = make_split(DatasetScan(scan.root, TAXONOMY, records), leak_free=False)
    assert not unreadable and len(split.assignment) == 6  # without hashing nothing is decoded


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.5, 0.6, -0.1), (0.5, 0.3, 0.3), (0.5, 0.2, 0.2)])
def test_bad_fractions_are_refused(dataset, fractions):
    with pytest.raises(ValueError, match=r"fractions must be three non-negative numbers summing to 1, got"):
        make_split(dataset[0], fractions=fractions)


def test_split_files_save_and_load(tmp_path):
    split = Split({"a.png": "train", "b.png": "test", "c.png": "train"}, {"seed": 3})
    assert split.files("train") == ["a.png", "c.png"] and split.files("val") == []
    with pytest.raises(ValueError, match=r"unknown split 'dev'; expected one of \('train', 'val', 'test'\)"):
        split.files("dev")
    split.save(tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text()) == {"info": {"seed": 3}, "files": split.assignment}
    again = Split.load(tmp_path / "s.json")
    assert again.assignment == split.assignment and again.info == {"seed": 3}
    (tmp_path / "no-info.json").write_text('{"files": {"a.png": "val"}}')
    assert Split.load(tmp_path / "no-info.json").info == {}
    for text, message in [("{", "not a readable split file"), ('{"files": 3}', "not a readable split file"),
                          ('{"files": {"a.png": "dev"}}', r"unknown split names \['dev'\]")]:
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(ValueError, match=message):
            Split.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="missing.json: not a readable split file"):
        Split.load(tmp_path / "missing.json")


def test_dihedral_hashes_of_a_gradient_worked_by_hand():
    """Columns brighten left to right: the plain view is all ones, its mirror all zeros, a quarter turn
    gives constant rows (all zeros), the half turn mirrors the plain view."""
    gradient = Image.fromarray(np.tile(np.arange(9, dtype=np.uint8) * 30, (9, 1)))
    full = 2**64 - 1
    assert dihedral_hashes(gradient).tolist() == [full, 0, 0, 0, 0, full, 0, 0]
    assert dihedral_hashes(gradient).dtype == np.uint64
    rotated = dihedral_hashes(gradient.transpose(Image.Transpose.ROTATE_90))
    assert sorted(rotated.tolist()) == sorted(dihedral_hashes(gradient).tolist())


def test_grouping_threshold_and_chains():
    """i joins j when any view of i is within ``threshold`` bits of j's first view; groups chain."""
    full = 2**64 - 1  # the other seven views: at least 24 bits from every first view below

    def hashes(*first_views):
        return np.array([[v] + [full] * 7 for v in first_views], dtype=np.uint64)

    # 0b1111 is 4 bits from 0: grouped at threshold 4, not at 3
    assert group_near_duplicates(hashes(0, 0b1111), threshold=4).tolist() == [0, 0]
    assert group_near_duplicates(hashes(0, 0b1111), threshold=3).tolist() == [0, 1]
    assert group_near_duplicates(hashes(0, 0b11111)).tolist() == [0, 1]  # default threshold is 4
    # a chain: 0 ~ 0b1111 ~ 0b11111111 although the two ends are 8 bits apart
    assert group_near_duplicates(hashes(0, 0b1111, 0b11111111, 2**40 - 1)).tolist() == [0, 0, 0, 3]
    # a later view of i matching j's first view counts too
    block = (2**40 - 1) << 20  # 40 bits set; full ^ block has the other 24
    views = np.array([[block] + [0] * 7, [0] * 8, [full ^ block] * 8], dtype=np.uint64)
    assert group_near_duplicates(views).tolist() == [0, 0, 2]
    # joining two groups keeps one id for all their members
    assert group_near_duplicates(hashes(0, block, block ^ 1, 1)).tolist() == [0, 1, 1, 0]


def test_hash_compares_neighbours_of_a_colour_image():
    """Columns 0, 100, 50, 100, 50, ...: each bit compares a pixel with its left neighbour (up, down, up ...),
    so a row reads 10101010 in both the plain and the mirrored view; the colour image is hashed as grey."""
    row = np.array([0, 100, 50, 100, 50, 100, 50, 100, 50], dtype=np.uint8)
    image = Image.fromarray(np.repeat(np.tile(row, (9, 1))[:, :, None], 3, axis=2))
    assert image.mode == "RGB"
    assert dihedral_hashes(image)[:2].tolist() == [0xAAAAAAAAAAAAAAAA] * 2


def test_hash_of_a_fixed_picture_does_not_drift():
    """Recorded splits name this hash ("dhash8-dihedral"): the same picture must keep the same eight hashes
    (grey conversion, bilinear resize to 9 x 9, one bit per neighbour pair, views in a fixed order)."""
    picture = Image.fromarray(np.random.default_rng(7).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    assert dihedral_hashes(picture).tolist() == HASHES_OF_THE_FIXED_PICTURE


def test_defaults_seed_and_threshold(dataset):
    scan, _ = dataset
    assert make_split(scan)[0].assignment == make_split(scan, seed=0)[0].assignment
    loose = make_split(scan, threshold=64)[0]  # every file is within 64 bits of every other: one group each
    assert loose.info["threshold"] == 64 and loose.info["groups"] == 2 and loose.info["grouped_files"] == 56
    assert len(set(loose.assignment.values())) == 1
