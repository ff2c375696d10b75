"""Trunks from the Hugging Face hub, read offline from the local cache: ``hf-hub:ORG/NAME[@REVISION]``.

Nothing here downloads, nor calls huggingface_hub: the snapshot is found in the cache by its layout
(``models--ORG--NAME/refs/<branch>`` holds a commit, ``snapshots/<commit>/`` that commit's files), the architecture
and the preprocessing are read from its ``config.json`` (what timm's ``push_to_hf_hub`` writes: ``architecture``,
``model_args``, ``pretrained_cfg``), timm builds the network from them with no weights, and the weights file is then
streamed into it tensor by tensor, so a trunk costs its own memory and no more. A checkpoint references the trunk by
a record (:func:`check_record`): hub id, revision, weights file and its sha256, architecture and arguments. Loading
rebuilds the network from the record and reads the weights from the cache again (:func:`cached_weights`), refusing a
file that changed; an embedded trunk needs no cache at all. docs/training.md says how to fill the cache on a machine
with network (gated models included) and work offline afterwards.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._io import file_sha256
from .published import WeightsUnavailableError, unwrap_state_dict, weights_mismatch
from .trunk_specs import HUB_PREFIX, trunk_spec

if TYPE_CHECKING:
    from torch import nn

__all__ = ["WEIGHTS_FILES", "HubCacheError", "HubConfigError", "HubSnapshot", "build_network", "cached_weights",
           "check_record", "download_command", "find_snapshot", "hub_cache", "parse_hub_name", "preprocessing_args",
           "stream_weights"]

WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
"""The weights file of a timm repository, in the order they are looked for."""
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}(?:/[A-Za-z0-9][A-Za-z0-9_.-]{0,99}){0,3}")  # main, v1.0, pr/1
_ARCHITECTURE = re.compile(r"[A-Za-z0-9_.]{1,200}")
_NOT_BUILD_ARGUMENTS = frozenset({"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict",
                                  "checkpoint_path", "cache_dir", "features_only", "feature_cfg", "device", "dtype",
                                  "scriptable", "exportable", "no_jit"})
"""``model_args`` that would load or fetch weights, or change what the network is: never taken from a file."""


class HubCacheError(WeightsUnavailableError):
    """A hub trunk, the revision asked for or its weights file is not in the local cache, or the file is not the one a
    checkpoint recorded; the message names the hub id, the revision and the command that gets them."""


class HubConfigError(ValueError):
    """A hub trunk's name or ``config.json`` cannot be used: no pretrained config to preprocess with, an architecture
    timm cannot build, weights that do not fit it."""


def hub_cache() -> Path:
    """The Hugging Face hub cache, as the environment says when called: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``,
    else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path("~/.cache/huggingface/hub").expanduser()


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """``"hf-hub:ORG/NAME@REVISION"`` -> ``("ORG/NAME", "REVISION")`` (``None`` without ``@``).

    Example:
        >>> parse_hub_name("hf-hub:paige-ai/Virchow2@main")
        ('paige-ai/Virchow2', 'main')
    """
    if not name.startswith(HUB_PREFIX):
        raise HubConfigError(f"{name!r} is not a hub trunk name: expected {HUB_PREFIX}ORG/NAME[@REVISION]")
    repo_id, _, revision = name[len(HUB_PREFIX):].partition("@")
    if not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        raise HubConfigError(f"{name!r} is not a hub trunk name: expected {HUB_PREFIX}ORG/NAME[@REVISION], ORG and "
                             "NAME made of letters, digits, '-', '_' and '.'")
    if revision and (not _REF.fullmatch(revision) or ".." in revision):
        raise HubConfigError(f"{name!r}: {revision!r} is not a revision (a branch, a tag or a commit hash)")
    return repo_id, revision or None


def download_command(repo_id: str, revision: str, files: tuple[str, ...] = (), *, force: bool = False) -> str:
    """The command that puts ``files`` (default: the whole repository) of ``repo_id`` at ``revision`` in the cache, to
    run on a machine with network.

    Example:
        >>> download_command("paige-ai/Virchow2", "main")[:62]
        '`huggingface-cli download paige-ai/Virchow2 --revision main` ('
    """
    arguments = " ".join([repo_id, *files, "--revision", revision, *(["--force-download"] if force else [])])
    return f"`huggingface-cli download {arguments}` (`hf download` with huggingface_hub 1.0 or newer)"


def _repo_folder(repo_id: str) -> Path:
    return hub_cache() / ("models--" + repo_id.replace("/", "--"))


def _held(folder: Path) -> str:
    """The branches and commits the cache holds of a repository, for a message."""
    refs = sorted(str(p.relative_to(folder / "refs")) for p in (folder / "refs").rglob("*") if p.is_file())
    commits = sorted(p.name for p in (folder / "snapshots").glob("*") if p.is_dir())
    return ", ".join([*refs, *(commit[:12] for commit in commits)]) or "nothing"


def _commit(folder: Path, repo_id: str, revision: str | None) -> str:
    """The commit of ``revision`` (a commit hash, or a branch or tag that ``refs/`` names) whose snapshot is here."""
    wanted = revision or "main"
    if _COMMIT.fullmatch(wanted) and (folder / "snapshots" / wanted).is_dir():
        return wanted
    ref = folder / "refs" / wanted
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else ""
    if _COMMIT.fullmatch(commit) and (folder / "snapshots" / commit).is_dir():
        return commit
    raise HubCacheError(f"revision {wanted!r} of hub trunk {repo_id} is not in the Hugging Face cache ({folder} holds "
                        f"{_held(folder)}): on a machine with network run {download_command(repo_id, wanted)} and copy "
                        f"{folder.name} into {hub_cache()} here, or name a revision it holds as "
                        f"{HUB_PREFIX}{repo_id}@REVISION")


@dataclass(frozen=True)
class HubSnapshot:
    """One revision of a hub repository in the local cache, its ``config.json`` read and checked."""

    repo_id: str
    revision: str
    """The commit (40 hexadecimal digits)."""
    folder: Path
    architecture: str
    model_args: dict[str, Any]
    pretrained_cfg: dict[str, Any]
    weights: Path | None
    """The weights file (:data:`WEIGHTS_FILES`), ``None`` when the cache holds none."""

    def record(self, weights: Path | None = None) -> dict[str, Any]:
        """What a checkpoint keeps of the trunk; ``weights``: the file read into it (its sha256 is recorded)."""
        licence = self.pretrained_cfg.get("license")
        return {"id": self.repo_id, "revision": self.revision, "architecture": self.architecture,
                "model_args": dict(self.model_args), "file": None if weights is None else weights.name,
                "sha256": None if weights is None else file_sha256(weights),
                "licence": licence if isinstance(licence, str) else None}


def find_snapshot(name: str) -> HubSnapshot:
    """The cached snapshot of hub trunk ``name`` (``hf-hub:ORG/NAME[@REVISION]``; no revision: ``main``).

    Raises:
        HubCacheError: the repository or that revision is not in the cache, or its ``config.json`` is missing.
        HubConfigError: a malformed name, or a ``config.json`` without an architecture or a pretrained config.
    """
    repo_id, revision = parse_hub_name(name)
    folder = _repo_folder(repo_id)
    if not folder.is_dir():
        raise HubCacheError(f"hub trunk {repo_id} is not in the Hugging Face cache ({hub_cache()}; nothing is ever "
                            f"downloaded): on a machine with network run "
                            f"{download_command(repo_id, revision or 'main')} and copy {folder.name} into "
                            f"{hub_cache()} here (docs/training.md)")
    commit = _commit(folder, repo_id, revision)
    snapshot = folder / "snapshots" / commit
    path = snapshot / "config.json"
    if not path.is_file():
        raise HubCacheError(f"hub trunk {repo_id} at revision {commit} has no config.json in the Hugging Face cache "
                            f"({snapshot}): on a machine with network run {download_command(repo_id, commit)}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise HubConfigError(f"{path}: the config.json of hub trunk {repo_id} is not readable JSON ({err})") from None
    where = f"the config.json of hub trunk {repo_id} at revision {commit}"
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise HubConfigError(f"{where} names no timm architecture: it is not a timm model (a transformers model, "
                             "perhaps), and multihead builds trunks with timm")
    pretrained = config.get("pretrained_cfg", config)  # without one: timm's older, flat layout
    missing = [key for key in ("input_size", "mean", "std")
               if not isinstance(pretrained, dict) or key not in pretrained]
    if missing:
        raise HubConfigError(f"{where} has no pretrained config ({', '.join(missing)} missing from its "
                             "'pretrained_cfg'), which multihead takes the input size, mean and std from")
    model_args = config.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise HubConfigError(f"{where}: 'model_args' must be an object, got {type(model_args).__name__}")
    weights = next((snapshot / file for file in WEIGHTS_FILES if (snapshot / file).is_file()), None)
    found = HubSnapshot(repo_id, commit, snapshot, config["architecture"], model_args, pretrained, weights)
    preprocessing_args(found)  # refused here, with the name, rather than when the trunk is built
    check_record(found.record(), f"{where}:")
    return found


def preprocessing_args(snapshot: HubSnapshot) -> dict[str, Any]:
    """:class:`~multihead.data.preprocessing.Preprocessing` arguments from the snapshot's pretrained config: input
    size (the model's own ``img_size`` where its input size is fixed, as timm reads it), mean, std, interpolation
    and crop (``center``: resize the shorter side to ``size / crop_pct`` and take the centre; ``squash`` and
    ``border``: the whole image resized to a square)."""
    config, where = snapshot.pretrained_cfg, f"the pretrained config of hub trunk {snapshot.repo_id}"
    size = config["input_size"]
    image_size = snapshot.model_args.get("img_size")
    if image_size is not None and config.get("fixed_input_size"):
        size = [3, *([image_size] * 2 if isinstance(image_size, int) else image_size)]
    if (not isinstance(size, (list, tuple)) or len(size) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        raise HubConfigError(f"{where}: input_size must be [channels, height, width], got {size!r}")
    if size[0] != 3 or size[1] != size[2]:
        raise HubConfigError(f"{where} asks for {size[0]}-channel {size[1]}x{size[2]} inputs; multihead feeds square "
                             "RGB images")
    crop_pct = config.get("crop_pct")
    if crop_pct is None:
        from timm.data import DEFAULT_CROP_PCT  # what timm assumes when a config names none

        crop_pct = DEFAULT_CROP_PCT
    interpolation = config.get("interpolation", "bicubic")
    from ..data.preprocessing import Preprocessing

    try:
        arguments = {"image_size": size[-1], "mean": tuple(config["mean"]), "std": tuple(config["std"]),
                     "interpolation": interpolation if interpolation in ("bilinear", "bicubic") else "bilinear",
                     "resize_mode": "crop" if config.get("crop_mode", "center") == "center" else "squash",
                     "crop_pct": float(crop_pct)}
        Preprocessing(**arguments)
    except (TypeError, ValueError) as err:  # mean, std or crop_pct that are no numbers, or out of range
        raise HubConfigError(f"{where}: {err}") from None
    return arguments


def check_record(value: Any, where: str = "'trunk.hub'") -> dict[str, Any]:
    """A checkpoint's record of a hub trunk, checked field by field before anything is built from it (its revision
    and file name become paths in the cache; its arguments go to timm).

    Raises:
        HubConfigError: one sentence naming the field.
    """
    if not isinstance(value, dict):
        raise HubConfigError(f"{where} must be an object")
    problems = []
    if not isinstance(value.get("id"), str) or not _REPO_ID.fullmatch(value["id"]) or ".." in value["id"]:
        problems.append("id must be ORG/NAME")
    if not isinstance(value.get("revision"), str) or not _COMMIT.fullmatch(value["revision"]):
        problems.append("revision must be a commit (40 hexadecimal digits)")
    if not isinstance(value.get("architecture"), str) or not _ARCHITECTURE.fullmatch(value["architecture"]):
        problems.append("architecture must be a timm model name")
    arguments = value.get("model_args")
    if not isinstance(arguments, dict) or not all(isinstance(k, str) and k.isidentifier() for k in arguments):
        problems.append("model_args must be an object of argument names")
    elif set(arguments) & _NOT_BUILD_ARGUMENTS:
        problems.append(f"model_args may not set {sorted(set(arguments) & _NOT_BUILD_ARGUMENTS)}")
    file, sha256 = value.get("file"), value.get("sha256")
    if (file is None) != (sha256 is None):
        problems.append("file and sha256 go together")
    elif file is not None and (file not in WEIGHTS_FILES or not isinstance(sha256, str)
                               or not re.fullmatch(r"[0-9a-f]{64}", sha256)):
        problems.append(f"file must be one of {list(WEIGHTS_FILES)} and sha256 64 hexadecimal digits")
    if value.get("licence") is not None and not isinstance(value["licence"], str):
        problems.append("licence must be a string")
    if problems:
        raise HubConfigError(f"{where} " + "; ".join(problems))
    return value


def cached_weights(record: dict[str, Any]) -> Path:
    """The weights file a checkpoint's record names, found in the local cache and checked against its sha256.

    Raises:
        HubCacheError: the file is not there, or it is not the one the checkpoint was trained with.
    """
    repo_id, revision, file = record["id"], record["revision"], record["file"]
    if file is None:
        raise HubCacheError(f"hub trunk {repo_id} at revision {revision} was not read from a weights file of its "
                            "repository (random or local weights), so there is nothing to find: embed it when saving")
    path = _repo_folder(repo_id) / "snapshots" / revision / file
    if not path.is_file():
        raise HubCacheError(f"hub trunk {repo_id} at revision {revision} is not in the Hugging Face cache ({path} is "
                            f"missing; nothing is ever downloaded): on a machine with network run "
                            f"{download_command(repo_id, revision, ('config.json', file))} and copy "
                            f"{_repo_folder(repo_id).name} into {hub_cache()} here")
    digest = file_sha256(path)
    if digest != record["sha256"]:
        raise HubCacheError(f"the weights of hub trunk {repo_id} at revision {revision} have changed since the "
                            f"checkpoint was trained ({path} has sha256 {digest[:12]}..., the checkpoint recorded "
                            f"{record['sha256'][:12]}...): get them again with "
                            f"{download_command(repo_id, revision, (file,), force=True)}")
    return path


def _imported(path: str) -> Any:
    module, _, attribute = path.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def build_network(record: dict[str, Any]) -> nn.Module:
    """The record's architecture built by timm with no weights and no classifier (``num_classes=0``), with the
    arguments of its ``config.json`` and those its spec adds (:class:`~multihead.model.trunk_specs.TrunkSpec`).

    Raises:
        HubConfigError: timm cannot build it; the message names the id, the architecture and timm's reason.
    """
    import timm

    spec = trunk_spec(HUB_PREFIX + record["id"])
    arguments = {key: value for key, value in record["model_args"].items() if key not in _NOT_BUILD_ARGUMENTS}
    if spec is not None:
        arguments.update({**spec.build_args, **{key: _imported(path) for key, path in spec.build_classes.items()}})
    try:
        return timm.create_model(record["architecture"], pretrained=False, **{**arguments, "num_classes": 0})
    except Exception as err:  # unknown architectures, unknown or wrong arguments: timm raises many types
        reason = (str(err).splitlines() or [""])[0]
        raise HubConfigError(f"timm {timm.__version__} cannot build hub trunk {record['id']} (architecture "
                             f"{record['architecture']!r} with its model_args): {type(err).__name__}: "
                             f"{reason}") from None


def stream_weights(network: nn.Module, path: str | os.PathLike, *, what: str) -> None:
    """Read a state dict file into ``network``, its keys and shapes checked first (the classifier's left out).

    A ``.safetensors`` file is read straight into the network's own tensors, one at a time, with plain file reads:
    nothing is held beside the network, not even a memory map (whose pages would count as the process's memory).
    Any other file is loaded by torch with ``weights_only=True``, memory-mapped, and copied tensor by tensor.
    """
    import torch

    path = Path(path)
    classifier = network.pretrained_cfg.get("classifier") or ()
    ignored = tuple(f"{name}." for name in ([classifier] if isinstance(classifier, str) else classifier))
    own = network.state_dict()
    shapes = {key: tuple(tensor.shape) for key, tensor in own.items()}
    try:
        if path.suffix == ".safetensors":
            _read_safetensors(own, shapes, path, ignored, what)
            return
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except HubConfigError:
        raise
    except Exception as err:  # damaged files: json, struct, torch and pickle raise many types
        raise HubConfigError(f"{path}: the weights of {what} are not readable ({type(err).__name__}: {err})") from None
    state = unwrap_state_dict(state)
    if state is None:
        raise HubConfigError(f"{path}: the weights of {what} are not a state dict (a dict of tensors)")
    _check_fit(shapes, {k: tuple(v.shape) for k, v in state.items()}, ignored, what)
    with torch.no_grad():
        for key, target in own.items():
            target.copy_(state[key])


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _read_safetensors(own: dict[str, Any], shapes: dict[str, tuple[int, ...]], path: Path, ignored: tuple[str, ...],
                      what: str) -> None:
    """The safetensors layout (an 8-byte header size, a JSON index, the data) read into ``own``'s tensors."""
    import torch

    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        if not 2 <= size <= 100 * 2**20:
            raise ValueError(f"a header of {size} bytes")
        index = json.loads(handle.read(size))
        index.pop("__metadata__", None)
        _check_fit(shapes, {key: tuple(entry["shape"]) for key, entry in index.items()}, ignored, what)
        for key, target in own.items():
            begin, end = index[key]["data_offsets"]
            dtype = getattr(torch, _SAFETENSORS_DTYPES[index[key]["dtype"]])
            handle.seek(8 + size + begin)
            direct = dtype == target.dtype and target.is_contiguous()
            buffer = target.reshape(-1) if direct else torch.empty(target.shape, dtype=dtype).reshape(-1)
            nbytes = buffer.numel() * buffer.element_size()
            if end - begin != nbytes or (nbytes and handle.readinto(buffer.view(torch.uint8).numpy()) != nbytes):
                raise ValueError(f"{key} holds {end - begin} bytes, not the {nbytes} of its shape and dtype")
            if not direct:
                with torch.no_grad():
                    target.copy_(buffer.reshape(target.shape))


def _check_fit(shapes: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], ignored: tuple[str, ...],
               what: str) -> None:
    problem = weights_mismatch(shapes, found, ignored_unexpected=ignored)
    if problem:
        raise HubConfigError(f"weights do not fit {what}: {problem}")
