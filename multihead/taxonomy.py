"""A two-level label taxonomy: organs (router classes) and their subtypes (head classes).

The order of organs is the order of the router's logits; the order of subtypes (organ by organ) is the
global subtype index used by the joint distribution, reports and checkpoints. Head sizes come from here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

__all__ = ["MULTI_CANCER", "Organ", "Subtype", "Taxonomy"]


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not name or name != name.strip() or "/" in name or "." in name:
        raise ValueError(f"{what} name must be a non-empty string without '/', '.' or outer spaces, got {name!r}")
    return name


@dataclass(frozen=True)
class Subtype:
    """One leaf class: a machine name (the folder name in datasets) and a readable name."""

    name: str
    display_name: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name, "subtype")
        if not self.display_name:
            object.__setattr__(self, "display_name", self.name)


@dataclass(frozen=True)
class Organ:
    """One router class with its ordered subtypes."""

    name: str
    subtypes: tuple[Subtype, ...]
    display_name: str = ""

    def __post_init__(self) -> None:
        _check_name(self.name, "organ")
        subtypes = tuple(s if isinstance(s, Subtype) else Subtype(s) for s in self.subtypes)
        if not subtypes:
            raise ValueError(f"organ {self.name!r} has no subtypes; every organ needs at least one")
        object.__setattr__(self, "subtypes", subtypes)
        if not self.display_name:
            object.__setattr__(self, "display_name", self.name)

    @property
    def subtype_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.subtypes)


@dataclass(frozen=True)
class Taxonomy:
    """An immutable, ordered organ -> subtypes mapping with a global subtype index.

    Example:
        >>> tax = Taxonomy.from_dict({"lung": ["lung_aca", "lung_bnt"], "skin": ["mel", "nevus"]})
        >>> tax.subtype_index("mel"), tax.organ_of("mel")
        (2, 'skin')
    """

    organs: tuple[Organ, ...]
    name: str = "custom"

    def __post_init__(self) -> None:
        organs = tuple(self.organs)
        if not organs:
            raise ValueError("a taxonomy needs at least one organ")
        object.__setattr__(self, "organs", organs)
        seen: set[str] = set()
        for label in [o.name for o in organs] + [s.name for o in organs for s in o.subtypes]:
            if label in seen:
                raise ValueError(f"name {label!r} appears twice in the taxonomy; organ and subtype names must differ")
            seen.add(label)

    # --- construction and serialisation -------------------------------------------------------------
    @classmethod
    def from_dict(cls, mapping: Mapping[str, Iterable[str]], *, name: str = "custom") -> Taxonomy:
        """Build from ``{organ: [subtype, ...]}`` (insertion order is logit order)."""
        return cls(tuple(Organ(organ, tuple(Subtype(s) for s in subs)) for organ, subs in mapping.items()), name=name)

    def to_json(self) -> str:
        """A stable JSON string (used in checkpoint metadata and fingerprints)."""
        data = {
            "name": self.name,
            "organs": [
                {
                    "name": o.name,
                    "display_name": o.display_name,
                    "subtypes": [{"name": s.name, "display_name": s.display_name} for s in o.subtypes],
                }
                for o in self.organs
            ],
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Taxonomy:
        try:
            data = json.loads(text)
            organs = tuple(
                Organ(o["name"], tuple(Subtype(s["name"], s.get("display_name", "")) for s in o["subtypes"]),
                      o.get("display_name", ""))
                for o in data["organs"]
            )
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"not a valid taxonomy JSON: {err}") from err
        return cls(organs, name=data.get("name", "custom"))

    def fingerprint(self) -> str:
        """sha256 of the ordered names; two taxonomies with the same logit layout share it."""
        layout = [[o.name, list(o.subtype_names)] for o in self.organs]
        return hashlib.sha256(json.dumps(layout).encode()).hexdigest()

    # --- lookups ------------------------------------------------------------------------------------
    @property
    def organ_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.organs)

    @cached_property
    def subtype_names(self) -> tuple[str, ...]:
        return tuple(s.name for o in self.organs for s in o.subtypes)

    @property
    def num_organs(self) -> int:
        return len(self.organs)

    @property
    def num_subtypes(self) -> int:
        return len(self.subtype_names)

    @cached_property
    def head_sizes(self) -> tuple[int, ...]:
        return tuple(len(o.subtypes) for o in self.organs)

    @cached_property
    def subtype_organ_indices(self) -> tuple[int, ...]:
        """For each global subtype index, the index of its organ."""
        return tuple(i for i, o in enumerate(self.organs) for _ in o.subtypes)

    @cached_property
    def head_offsets(self) -> tuple[int, ...]:
        """Global index of each organ's first subtype."""
        offsets, total = [], 0
        for size in self.head_sizes:
            offsets.append(total)
            total += size
        return tuple(offsets)

    @cached_property
    def _organ_index(self) -> dict[str, int]:
        return {o.name: i for i, o in enumerate(self.organs)}

    @cached_property
    def _subtype_index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.subtype_names)}

    def organ(self, name: str) -> Organ:
        return self.organs[self.organ_index(name)]

    def organ_index(self, name: str) -> int:
        try:
            return self._organ_index[name]
        except KeyError:
            raise ValueError(f"unknown organ {name!r}; this taxonomy has {list(self.organ_names)}") from None

    def subtype_index(self, name: str) -> int:
        try:
            return self._subtype_index[name]
        except KeyError:
            raise ValueError(f"unknown subtype {name!r}; this taxonomy has {list(self.subtype_names)}") from None

    def organ_of(self, subtype: str) -> str:
        return self.organs[self.subtype_organ_indices[self.subtype_index(subtype)]].name

    def display_name(self, name: str) -> str:
        """Readable name of an organ or subtype."""
        if name in self._organ_index:
            return self.organ(name).display_name
        index = self.subtype_index(name)
        organ = self.organs[self.subtype_organ_indices[index]]
        return organ.subtypes[index - self.head_offsets[self.organ_index(organ.name)]].display_name

    def __len__(self) -> int:
        return self.num_subtypes

    def __repr__(self) -> str:
        return f"Taxonomy(name={self.name!r}, organs={self.num_organs}, subtypes={self.num_subtypes})"


def _organ(name: str, display: str, subtypes: list[tuple[str, str]]) -> Organ:
    return Organ(name, tuple(Subtype(s, d) for s, d in subtypes), display)


MULTI_CANCER = Taxonomy(
    (
        _organ("all", "Acute lymphoblastic leukaemia", [
            ("all_benign", "ALL: benign"), ("all_early", "ALL: early pre-B"),
            ("all_pre", "ALL: pre-B"), ("all_pro", "ALL: pro-B"),
        ]),
        _organ("brain", "Brain MRI", [
            ("brain_glioma", "Brain: glioma"), ("brain_menin", "Brain: meningioma"),
            ("brain_tumor", "Brain: pituitary tumour"),
        ]),
        _organ("breast", "Breast histopathology", [
            ("breast_benign", "Breast: benign"), ("breast_malignant", "Breast: malignant"),
        ]),
        _organ("cervix", "Cervical cytology", [
            ("cervix_dyk", "Cervix: dyskeratotic"), ("cervix_koc", "Cervix: koilocytotic"),
            ("cervix_mep", "Cervix: metaplastic"), ("cervix_pab", "Cervix: parabasal"),
            ("cervix_sfi", "Cervix: superficial-intermediate"),
        ]),
        _organ("kidney", "Kidney CT", [
            ("kidney_normal", "Kidney: normal"), ("kidney_tumor", "Kidney: tumour"),
        ]),
        _organ("lung_colon", "Lung and colon histopathology", [
            ("colon_aca", "Colon: adenocarcinoma"), ("colon_bnt", "Colon: benign tissue"),
            ("lung_aca", "Lung: adenocarcinoma"), ("lung_bnt", "Lung: benign tissue"),
            ("lung_scc", "Lung: squamous cell carcinoma"),
        ]),
        _organ("lymphoma", "Malignant lymphoma", [
            ("lymph_cll", "Lymphoma: chronic lymphocytic leukaemia"), ("lymph_fl", "Lymphoma: follicular"),
            ("lymph_mcl", "Lymphoma: mantle cell"),
        ]),
        _organ("oral", "Oral histopathology", [
            ("oral_normal", "Oral: normal"), ("oral_scc", "Oral: squamous cell carcinoma"),
        ]),
    ),
    name="multi_cancer",
)
"""The taxonomy of the public Multi Cancer Dataset: 8 organs, 26 subtypes."""
