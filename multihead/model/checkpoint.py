"""One ``.safetensors`` file per model: metadata first, tensors second, nothing ever unpickled.

The header (string -> string, structured values as JSON) is read and checked before any tensor is touched, so an
incompatible file fails with one sentence naming the mismatch. A trunk with published weights (a torchvision weights
id) is referenced by id and fingerprint; any other trunk is embedded. Writes go to a temporary file in the same
folder and are renamed into place, so an interrupted save leaves the old file or the new one, never half of one.

Format 2 names the post-hoc buffers after the estimators that own them (``temperature.logit_scale``,
``thresholds.router``, ``ood.threshold``, ...); format 1 files, which had them flat on the model
(``logit_scale``, ``router_threshold``, ``ood_threshold``, ...), load with their keys mapped. Format 3 (issue 35)
holds one subtype threshold per organ, the organs the model covers (``organ_covered``) and the nearest-neighbour
out-of-distribution score, whose bank of training images (``ood.bank``) has as many rows as the model had
training images. Files of formats 1 and 2 load with their one subtype threshold given to every organ, every
trained organ covered, and no out-of-distribution score (their Mahalanobis buffers are not read; a warning says
so): refit it with :func:`multihead.training.fit_ood`, or train again.

A file also records ``header_sha256``, a checksum of what defines the model in its header, so an edited
``image_size`` is refused; loading never downloads, and refuses trunks too large for memory, inputs over
:data:`~multihead.model.memory.MEMORY_BUDGET` and NaN or infinite tensors (:mod:`.checkpoint_checks`).

A trunk from the Hugging Face hub (issue 41) is referenced by a record in ``trunk.hub``: hub id, revision, the weights
file and its sha256, the architecture and its arguments (:func:`~multihead.model.hub.check_record`). Loading rebuilds
the network from the record, finds the file in the local cache and refuses it if its sha256 changed; with
``embed_trunk=True`` the weights travel in the file and no cache is needed. Files without a hub trunk are unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .._io import atomic_path
from .._precision import STORAGE_DTYPES
from ..data.preprocessing import Preprocessing
from ..taxonomy import Taxonomy
from .checkpoint_checks import (
    LEGACY_OOD,
    CheckpointError,
    bank_rows,
    check_against_header,
    check_finite,
    expected_tensors,
    stored_names,
)
from .heads import MultiHeadModel
from .hub import cached_weights, check_record
from .memory import MEMORY_BUDGET, image_memory, machine_memory
from .metadata import (
    MetadataError,
    check_preprocessing,
    check_taxonomy,
    check_trunk,
    parse_json,
    printable,
)
from .records import check_metadata
from .trunk import (
    WeightsUnavailableError,
    create_trunk,
    fingerprint_state_dict,
    hub_trunk_from_record,
    local_weights_file,
)

__all__ = ["BYTES_PER_PARAMETER", "FORMAT_VERSION", "HUB_BYTES_PER_PARAMETER", "CheckpointError", "head_state",
           "header_checksum", "load", "model_header", "read_header", "save", "trunk_parameter_limit"]

log = logging.getLogger(__name__)

FORMAT = "multihead"
FORMAT_VERSION = 3
BYTES_PER_PARAMETER = 8
"""What loading takes per trunk parameter: the float32 weights built, and the copy read from the file."""
HUB_BYTES_PER_PARAMETER = 4
"""What loading a trunk referenced from the hub takes per parameter: the float32 weights built, its file read straight
into them (:func:`~multihead.model.hub.stream_weights`)."""
_TRUNK_DEFAULTS: dict[str, Any] = {"source": "torchvision", "weights_id": None, "stages": [], "stored_dtype": "float32",
                                   "tuned_from": None}

def head_state(model: MultiHeadModel) -> dict[str, torch.Tensor]:
    """Every tensor of the state dict but the trunk's (heads, mask, estimators), detached CPU copies."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
            if not k.startswith("trunk.")}


def model_header(model: MultiHeadModel, *, trunk_spec: dict[str, Any] | None = None) -> dict[str, str]:
    """What a file must say about the model it holds, as strings: taxonomy, trunk, preprocessing, joint rule
    and the heads' checksum. Checkpoints and exported ONNX graphs both carry it (and check it on reading)."""
    return {
        "taxonomy": model.taxonomy.to_json(),
        "trunk": json.dumps(model.trunk.spec() if trunk_spec is None else trunk_spec, sort_keys=True),
        "preprocessing": model.preprocessing.to_json(),
        "joint": model.joint,
        "heads_sha256": fingerprint_state_dict(head_state(model)),
    }


def header_checksum(taxonomy: Taxonomy, trunk: dict[str, Any], preprocessing: Preprocessing, joint: str,
                    heads_sha256: str | None) -> str:
    """sha256 of what defines the model in a checkpoint's header, each as parsed (a field an older file lacks counts
    as its default): taxonomy, trunk, preprocessing, joint rule and the heads' checksum."""
    given = trunk
    trunk = {key: trunk.get(key, default) for key, default in
             {**_TRUNK_DEFAULTS, "name": None, "fingerprint": None, "num_features": None, "embedded": None}.items()}
    if "hub" in given:  # only for trunks from the hub: every other file keeps its checksum
        trunk["hub"] = given["hub"]
    text = json.dumps({"taxonomy": taxonomy.to_json(), "trunk": trunk, "preprocessing": preprocessing.to_json(),
                       "joint": joint, "heads_sha256": heads_sha256}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def trunk_parameter_limit(memory: int | None = None, *, per_parameter: int = BYTES_PER_PARAMETER) -> int:
    """The most trunk parameters :func:`load` builds by default: as many as a quarter of this machine's memory holds
    at :data:`BYTES_PER_PARAMETER` each (16 GiB: 537 million; ResNet101 has 45 million, MobileNetV2 3.5 million).

    Example:
        >>> trunk_parameter_limit(16 * 2**30)
        536870912
    """
    return (machine_memory() if memory is None else memory) // 4 // per_parameter


def _trunk_state_as_stored(model: MultiHeadModel, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous().clone()
            for k, v in model.trunk.network.state_dict().items()}


def save(model: MultiHeadModel, path: str | os.PathLike, *, embed_trunk: bool | None = None,
         trunk_dtype: str = "float32") -> None:
    """Write ``model`` to ``path`` atomically, as one ``.safetensors`` file.

    Example:
        >>> multihead.save(multihead.create_model(trunk_weights=None), "model.safetensors")  # doctest: +SKIP

    Args:
        embed_trunk: store the trunk's weights in the file. Default: only when the trunk has no
            published weights id (a local file, random init, ...).
        trunk_dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` for an embedded trunk (smaller
            files; the stored fingerprint is that of the rounded weights, which loading restores).
    """
    if trunk_dtype not in STORAGE_DTYPES:
        raise ValueError(f"trunk_dtype must be one of {sorted(STORAGE_DTYPES)}, got {trunk_dtype!r}")
    if not isinstance(model, MultiHeadModel):
        raise TypeError(f"save writes a MultiHeadModel, got {type(model).__name__}")
    trunk = model.trunk
    embed = trunk.weights_id is None if embed_trunk is None else embed_trunk
    if not embed and trunk.hub is not None and trunk.weights_id is None:
        raise ValueError(f"trunk {trunk.name!r} does not hold its repository's weights (random, from a local file or "
                         "tuned), so nothing could find them again: save it with embed_trunk=True")
    tensors = head_state(model)
    fingerprint = trunk.fingerprint
    if embed:
        stored = _trunk_state_as_stored(model, STORAGE_DTYPES[trunk_dtype])
        fingerprint = fingerprint_state_dict(_restore_dtypes(stored, model.trunk.network.state_dict()))
        tensors.update({f"trunk.{k}": v for k, v in stored.items()})
    trunk_spec = {**trunk.spec(), "fingerprint": fingerprint, "embedded": embed, "stored_dtype": trunk_dtype}
    header = model_header(model, trunk_spec=trunk_spec)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        **header,
        "header_sha256": header_checksum(model.taxonomy, trunk_spec, model.preprocessing, model.joint,
                                         header["heads_sha256"]),
        "metadata": json.dumps(model.metadata, sort_keys=True, default=str),
    }
    _atomic_save(tensors, metadata, Path(path))


def _restore_dtypes(stored: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(reference[k].dtype) if k in reference else v for k, v in stored.items()}


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a checkpoint's metadata without loading tensors.

    Every field is checked against the schema in :mod:`multihead.model.metadata` (types, required keys,
    bounds such as ``image_size``), so a damaged or hostile header fails here with one sentence.

    Returns a dict with ``taxonomy`` (:class:`Taxonomy`), ``trunk`` (dict), ``preprocessing``
    (:class:`Preprocessing`), ``metadata`` (dict), ``format_version`` (int), ``keys`` (tensor names) and
    ``tensors`` (name -> (safetensors dtype such as ``"F32"``, shape)), and ``header_sha256`` (``None`` in files
    written before issue 36).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        with safe_open(str(path), framework="pt") as reader:
            raw = reader.metadata() or {}
            keys = list(reader.keys())
            tensors = {key: (reader.get_slice(key).get_dtype(), tuple(reader.get_slice(key).get_shape()))
                       for key in keys}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a multihead checkpoint (no 'format': 'multihead' in its metadata)")
    try:
        version = int(raw.get("format_version", ""))
    except ValueError:
        raise CheckpointError(f"{path}: format_version {raw.get('format_version')!r} is not an integer") from None
    if not 1 <= version <= FORMAT_VERSION:
        newer = version > FORMAT_VERSION
        raise CheckpointError(
            f"{path}: written in checkpoint format {version}, this multihead reads 1 to {FORMAT_VERSION}"
            + ("; upgrade multihead" if newer else "")
        )
    try:
        taxonomy = check_taxonomy(parse_json(raw.get("taxonomy"), "taxonomy"))
        trunk = check_trunk(parse_json(raw.get("trunk"), "trunk"))
        if "hub" in trunk:
            _check_hub(trunk)
        preprocessing = check_preprocessing(parse_json(raw.get("preprocessing"), "preprocessing"))
        organs = tuple(organ["name"] for organ in taxonomy["organs"])
        metadata = check_metadata(parse_json(raw.get("metadata", "{}"), "metadata"), organs=organs)
        header = {
            "format_version": version,
            "taxonomy": Taxonomy.from_json(json.dumps(taxonomy)),
            "trunk": trunk,
            "preprocessing": Preprocessing.from_json(json.dumps(preprocessing)),
            "metadata": metadata,
            "joint": raw.get("joint", "hierarchical"),
            "heads_sha256": raw.get("heads_sha256"),
            "header_sha256": raw.get("header_sha256"),
            "keys": keys,
            "tensors": tensors,
        }
        if header["header_sha256"] is not None and not re.fullmatch(r"[0-9a-f]{64}", str(header["header_sha256"])):
            raise MetadataError("'header_sha256' must be 64 hexadecimal digits (a sha256)")
    except MetadataError as err:
        raise CheckpointError(f"{path}: damaged metadata: {err}") from None
    except (KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: damaged metadata ({type(err).__name__}: {printable(err)})") from None
    return header


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu",
         max_trunk_parameters: int | Literal["auto"] | None = "auto",
         memory_budget: int | None = MEMORY_BUDGET) -> MultiHeadModel:
    """Load a model written by :func:`save`, checking everything before trusting it.

    The architecture the header names is first built on the meta device (shapes, no memory) and compared
    with the file's tensor names, shapes and dtypes, so a 1 MB file naming a 7-billion-parameter trunk is
    refused before anything large is allocated. A trunk stored by reference is read from this machine's caches
    only: loading never downloads, and a missing file is named (:func:`~multihead.model.trunk.local_weights_file`).

    Args:
        max_trunk_parameters: refuse trunks with more parameters than this; ``"auto"`` (the default): as many as a
            quarter of this machine's memory holds (:func:`trunk_parameter_limit`; a trunk referenced from the hub
            takes half as much a parameter); ``None``: no limit, for trusted
            files (the architecture is then built for real, so trunks the meta device cannot build, such as
            RegNet, load too).
        memory_budget: refuse a model whose preprocessing asks for inputs so large that one image through the trunk
            would take more bytes than this (:func:`~multihead.model.memory.image_memory`); ``None``: no limit.

    Raises:
        CheckpointError: not a multihead file, a newer format, damaged metadata, tensors that do not fit
            the architecture and taxonomy, a trunk over ``max_trunk_parameters``, an input size over
            ``memory_budget``, a trunk referenced but not on this machine, trunk weights that do not match the
            recorded fingerprint, a header that does not match its checksum, or NaN or infinite tensors.
    """
    path = Path(path)
    header = read_header(path)
    spec = header["trunk"]
    name, fingerprint, embedded = spec["name"], spec["fingerprint"], spec["embedded"]
    meta = max_trunk_parameters is not None
    skeleton = _build(path, header, weights=None, meta=meta)  # trusted: built for real, no size check
    bank = bank_rows(path, header)
    skeleton.ood.resize_bank(bank)
    heads, trunk_keys = expected_tensors(header, skeleton)
    per_parameter = HUB_BYTES_PER_PARAMETER if "hub" in spec and not embedded else BYTES_PER_PARAMETER
    limit = (trunk_parameter_limit(per_parameter=per_parameter) if max_trunk_parameters == "auto"
             else max_trunk_parameters)
    why = (f" (a quarter of this machine's {machine_memory() / 2**30:.1f} GiB of memory, at {per_parameter} bytes a "
           "parameter to load)") if max_trunk_parameters == "auto" else ""
    check_against_header(path, header, skeleton, {**heads, **trunk_keys}, limit, why=why)
    if memory_budget is not None:
        _check_input_size(path, header, skeleton if meta else None, memory_budget)
    weights = None if embedded else ("imagenet" if spec.get("source") == "timm" else spec.get("weights_id"))
    if weights is not None and "hub" in spec:  # the file the record names, checked against its sha256
        try:
            weights = cached_weights(spec["hub"])
        except WeightsUnavailableError as err:
            raise CheckpointError(f"{path}: its trunk is stored by reference, not embedded, and loading never "
                                  f"downloads: {printable(err)}") from None
    elif weights is not None:
        try:
            local_weights_file(name, weights)  # before anything is built for real
        except ValueError as err:  # an unknown weights id: named in the metadata
            raise CheckpointError(f"{path}: the model its metadata describes cannot be built "
                                  f"({printable(err)})") from None
        except WeightsUnavailableError as err:
            raise CheckpointError(f"{path}: its trunk is stored by reference, not embedded, and loading never "
                                  f"downloads: {printable(err)}") from None
    model = _build(path, header, weights=weights, meta=False)
    model.ood.resize_bank(bank)
    trunk = model.trunk
    try:
        with safe_open(str(path), framework="pt") as reader:
            stored_heads = {k: reader.get_tensor(k) for k in heads}
            trunk_state = {k[len("trunk."):]: reader.get_tensor(k).to(v.dtype) for k, v in trunk_keys.items()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: tensors cannot be read, the file may be truncated ({err})") from None
    current_name = {old: new for new, old in stored_names(header["format_version"]).items()}
    state = {current_name.get(k, k): v for k, v in stored_heads.items()}
    if header["format_version"] < 3:
        state = {k: v for k, v in state.items() if not k.startswith(LEGACY_OOD)}
    check_finite(path, {**state, **{f"trunk.{k}": v for k, v in trunk_state.items()}})
    if embedded:
        try:
            trunk.load_weights(trunk_state)
        except ValueError as err:
            raise CheckpointError(f"{path}: embedded trunk weights do not fit ({err})") from None
    if trunk.fingerprint != fingerprint:
        raise CheckpointError(
            f"{path}: trunk {name!r} weights have fingerprint {trunk.fingerprint[:12]}..., the checkpoint was "
            f"trained on {fingerprint[:12]}...; its heads do not fit these trunk weights"
        )
    if header["heads_sha256"] is not None and fingerprint_state_dict(stored_heads) != header["heads_sha256"]:
        raise CheckpointError(f"{path}: head tensors do not match the checksum in the metadata; the file is damaged")
    if header["header_sha256"] is not None and header["header_sha256"] != header_checksum(
            header["taxonomy"], spec, header["preprocessing"], header["joint"], header["heads_sha256"]):
        raise CheckpointError(f"{path}: its header (taxonomy, trunk, preprocessing or joint rule) does not match the "
                              "checksum saved with it (header_sha256): the header was edited, the file is damaged")
    if header["format_version"] < 3:
        state["thresholds.subtype"] = state["thresholds.subtype"].expand(model.taxonomy.num_organs).clone()
    model.load_state_dict(state, strict=False)  # the trunk is loaded and verified above
    if header["format_version"] < 3:
        model.organ_covered.copy_(model.organ_mask)
        log.warning("%s: written in checkpoint format %d, whose out-of-distribution score this multihead no longer "
                    "reads: nothing is flagged until it is refitted (multihead.training.fit_ood, or train again)",
                    path, header["format_version"])
    model.metadata = header["metadata"]
    return model.to(device).eval()


def _check_input_size(path: Path, header: dict[str, Any], skeleton: MultiHeadModel | None, budget: int) -> None:
    """One image of the header's input size through its trunk must fit in ``budget`` bytes."""
    size, name = header["preprocessing"].image_size, header["trunk"]["name"]
    if skeleton is None and "hub" in header["trunk"]:  # its network is known from the record, not from its name
        skeleton = _build(path, header, weights=None, meta=True)
    needed = image_memory(name, size, network=None if skeleton is None else skeleton.trunk.network)
    if needed > budget:
        raise CheckpointError(f"{path}: its preprocessing asks for {size}x{size} px inputs, which would take about "
                              f"{needed / 2**30:.1f} GiB per image through trunk {name!r}, more than the memory "
                              f"budget of {budget / 2**30:.1f} GiB; pass memory_budget=None if the file is trusted")


def _check_hub(trunk: dict[str, Any]) -> None:
    """A hub trunk's record (its revision and file name become paths in the cache, its arguments go to timm), and its
    name, which must be the record's."""
    try:
        check_record(trunk["hub"])
    except ValueError as err:
        raise MetadataError(str(err)) from None
    if trunk["name"] != f"hf-hub:{trunk['hub']['id']}":
        raise MetadataError(f"'trunk.name' {printable(trunk['name'])!r} is not the hub record's "
                            f"'hf-hub:{trunk['hub']['id']}'")


def _build(path: Path, header: dict[str, Any], *, weights: Any, meta: bool) -> MultiHeadModel:
    """The model the header describes; on the meta device (shapes and dtypes only) when ``meta``."""
    spec = header["trunk"]
    try:
        with torch.device("meta") if meta else contextlib.nullcontext():
            if "hub" in spec:  # rebuilt from its record: the cache only holds the weights of a referenced one
                trunk = hub_trunk_from_record(spec["hub"], weights=weights, stages=spec.get("stages", ()),
                                              preprocessing=header["preprocessing"])
            else:
                trunk = create_trunk(spec["name"], weights=weights, stages=spec.get("stages", ()), download=False)
            trunk.tuned_from = spec.get("tuned_from")  # a tuned top: the weights are embedded, the cut recorded
            return MultiHeadModel(trunk, header["taxonomy"], preprocessing=header["preprocessing"],
                                  joint=header["joint"])
    except ValueError as err:  # an unknown trunk or weights id, an unknown joint rule: named in the metadata
        raise CheckpointError(f"{path}: the model its metadata describes cannot be built ({printable(err)})") from None
    except WeightsUnavailableError as err:  # gone since it was looked for: loading never downloads
        raise CheckpointError(f"{path}: its trunk is stored by reference, not embedded, and loading never "
                              f"downloads: {printable(err)}") from None
    except (RuntimeError, NotImplementedError, TypeError, AttributeError) as err:
        if not meta:
            raise
        raise CheckpointError(f"{path}: trunk {spec['name']!r} cannot be checked before it is built "
                              f"({type(err).__name__}: {printable(err)}); pass max_trunk_parameters=None if the "
                              "file is trusted") from None


