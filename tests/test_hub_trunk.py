"""Foundation-model trunks by name (issue 41): ``hf-hub:ORG/NAME[@REVISION]`` built by timm from the local Hugging Face
cache, never downloaded.

Tiny timm models are written into a hub cache under tmp, in the cache's own layout (``models--ORG--NAME/refs/main``,
``snapshots/<commit>/`` linking into ``blobs/``, as huggingface_hub leaves it), with the ``config.json`` timm's
``save_for_hf`` writes. ``HF_HUB_CACHE`` points there and ``HF_HUB_OFFLINE=1`` (conftest), except in the run of the
whole command-line path, which drops ``HF_HUB_OFFLINE``, points every proxy at a closed port and records any attempt
at a network call with an audit hook.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models._hub import save_for_hf
from typer.testing import CliRunner

import multihead
from multihead.cli import app
from multihead.model.checkpoint import CheckpointError, read_header
from multihead.model.hub import HubCacheError, HubConfigError, find_snapshot, hub_cache
from multihead.model.trunk import WeightsUnavailableError, create_trunk
from multihead.model.trunk_split import split_trunk

from .conftest import assert_handled_exit, copy_real_images

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"
VIT = "tiny/vit"
VIT_ARGS = {"embed_dim": 24, "depth": 2, "num_heads": 2, "img_size": 64}


def _publish(cache: Path, repo_id: str, files: dict[str, Path], commit: str = COMMIT, refs: tuple[str, ...] = ("main",)
             ) -> Path:
    """Put ``files`` (name -> file) into ``cache`` as huggingface_hub does: blobs named by their sha256, the
    snapshot's files linking to them, each ref naming the commit."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "blobs").mkdir(exist_ok=True)
    for name, source in files.items():
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        shutil.copy(source, folder / "blobs" / digest)
        (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / digest)
    for ref in refs:
        (folder / "refs").mkdir(exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
    return snapshot


def _publish_model(cache: Path, repo_id: str, network: torch.nn.Module, scratch: Path, **kwargs) -> Path:
    """A timm model as ``push_to_hf_hub`` uploads it: ``config.json`` and ``model.safetensors`` (``save_for_hf``)."""
    save_for_hf(network, str(scratch), safe_serialization=True)
    return _publish(cache, repo_id, {name: scratch / name for name in ("config.json", "model.safetensors")}, **kwargs)


def _publish_config(cache: Path, repo_id: str, config: dict, scratch: Path, **kwargs) -> Path:
    scratch.mkdir(parents=True)
    (scratch / "config.json").write_text(json.dumps(config))
    return _publish(cache, repo_id, {"config.json": scratch / "config.json"}, **kwargs)


def _virchow_like(seed: int = 0) -> torch.nn.Module:
    """Virchow2's layout, tiny: a ViT-H/14 with 4 register tokens, SwiGLU MLPs and no pooling (its model card)."""
    torch.manual_seed(seed)
    return timm.create_model("vit_huge_patch14_224", pretrained=False, num_classes=0, **VIRCHOW_ARGS,
                             mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU)


VIRCHOW_ARGS = {"img_size": 28, "patch_size": 14, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 5.3375,
                "reg_tokens": 4, "global_pool": "", "init_values": 1e-5, "dynamic_img_size": True}
PRETRAINED = {"input_size": [3, 28, 28], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
              "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center", "license": "CC-BY-NC-ND-4.0"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A hub cache with a tiny ViT (two refs, one commit), stand-ins for UNI and Virchow2, and broken repositories."""
    root = tmp_path_factory.mktemp("hf-home")
    cache, scratch = root / "hub", root / "scratch"
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **VIT_ARGS)
    _publish_model(cache, VIT, vit, scratch / "vit", refs=("main", "v1"))
    torch.manual_seed(1)
    uni = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=0, embed_dim=32, depth=1,
                            num_heads=2, img_size=32, init_values=1e-5)
    _publish_model(cache, "MahmoodLab/UNI", uni, scratch / "uni")
    virchow = _virchow_like()
    (scratch / "virchow").mkdir(parents=True)
    (scratch / "virchow" / "config.json").write_text(json.dumps(
        {"architecture": "vit_huge_patch14_224", "model_args": VIRCHOW_ARGS, "pretrained_cfg": PRETRAINED}))
    save_file(dict(virchow.state_dict()), str(scratch / "virchow" / "model.safetensors"))
    _publish(cache, "paige-ai/Virchow2", {name: scratch / "virchow" / name
                                          for name in ("config.json", "model.safetensors")})
    _publish_config(cache, "tiny/no-pretrained-cfg", {"architecture": "vit_tiny_patch16_224", "model_args": VIT_ARGS,
                                                      "pretrained_cfg": {"num_classes": 5}}, scratch / "no-cfg")
    _publish_config(cache, "tiny/unbuildable", {"architecture": "no_such_architecture_anywhere", "model_args": {},
                                                "pretrained_cfg": PRETRAINED}, scratch / "unbuildable")
    _publish_config(cache, "tiny/transformers", {"model_type": "vit", "hidden_size": 768}, scratch / "transformers")
    return cache


@pytest.fixture(autouse=True)
def _in_the_cache(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(cache.parent))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, sample_dir):
    """Five real images per subtype of two organs."""
    return copy_real_images(sample_dir, tmp_path_factory.mktemp("hub-data"), ("all", "lymphoma"), 5)


def _timm_reference(cache: Path, repo_id: str = VIT) -> torch.nn.Module:
    """The same repository loaded by timm itself (``local-dir:``, pretrained): what the weights must give."""
    return timm.create_model(f"local-dir:{find_snapshot(f'hf-hub:{repo_id}').folder}", pretrained=True,
                             num_classes=0).eval()


# --- the cache ------------------------------------------------------------------------------------------

def test_the_cache_is_where_the_environment_says(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    assert hub_cache() == tmp_path / "hub-cache"
    monkeypatch.delenv("HF_HUB_CACHE")
    assert hub_cache() == cache.parent / "hub"
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub_cache() == tmp_path / ".cache" / "huggingface" / "hub"


def test_a_name_finds_its_revision_by_branch_tag_or_commit(cache):
    for name in (f"hf-hub:{VIT}", f"hf-hub:{VIT}@main", f"hf-hub:{VIT}@v1", f"hf-hub:{VIT}@{COMMIT}"):
        snapshot = find_snapshot(name)
        assert (snapshot.repo_id, snapshot.revision, snapshot.architecture) == (VIT, COMMIT, "vit_tiny_patch16_224")
        assert snapshot.weights == snapshot.folder / "model.safetensors"


# --- the trunk --------------------------------------------------------------------------------------------

def test_a_hub_trunk_gives_what_timm_gives_with_the_repositorys_weights(cache):
    """Pooled output: the class token after the final norm, as timm computes it from the same files."""
    trunk = create_trunk(f"hf-hub:{VIT}", stages=())
    reference = _timm_reference(cache)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(trunk(images), reference(images))
    assert trunk.num_features == 24 and trunk.source == "timm" and trunk.name == f"hf-hub:{VIT}"
    assert trunk.weights_id == f"hf-hub:{VIT}@{COMMIT}"
    assert not any(p.requires_grad for p in trunk.parameters())


def test_auto_stages_pool_the_class_token_and_the_mean_of_patch_tokens(cache):
    trunk = create_trunk(f"hf-hub:{VIT}", stages="auto")
    assert trunk.stages == ("cls+mean",) and trunk.num_features == 48
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens = _timm_reference(cache).forward_features(images)
        torch.testing.assert_close(trunk(images), torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1))


def test_virchow2s_spec_builds_its_layout_and_leaves_out_its_register_tokens(cache):
    """The spec's classes (SwiGLU, SiLU) build the network the weights fit; auto pools the class token and the mean of
    the patch tokens only (tokens 1-4 are registers), as its model card computes the embedding."""
    trunk = create_trunk("hf-hub:paige-ai/Virchow2", stages="auto")
    assert trunk.stages == ("cls+mean",) and trunk.num_features == 64
    reference = _virchow_like().eval()
    images = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        output = reference(images)
        torch.testing.assert_close(trunk(images), torch.cat([output[:, 0], output[:, 5:].mean(1)], 1))
    with pytest.raises(ValueError, match="pools none of its tokens .* use stages='cls\\+mean'"):
        create_trunk("hf-hub:paige-ai/Virchow2", stages=())


def test_preprocessing_comes_from_the_pretrained_config(cache):
    model = multihead.create_model(f"hf-hub:{VIT}")
    config = find_snapshot(f"hf-hub:{VIT}").pretrained_cfg
    assert model.preprocessing == multihead.Preprocessing(
        image_size=64, resize_mode="crop", crop_pct=config["crop_pct"], mean=tuple(config["mean"]),
        std=tuple(config["std"]), interpolation=config["interpolation"])
    assert (config["crop_pct"], config["interpolation"], config["mean"]) == (0.9, "bicubic", [0.5, 0.5, 0.5])


@pytest.mark.parametrize(("crop_mode", "resize_mode"), [("center", "crop"), ("squash", "squash")])
def test_crop_pct_crops_as_timms_eval_transform_does(crop_mode, resize_mode):
    """Resize to ``size / crop_pct`` (the shorter side, or the whole image squashed), keep the centre: timm's own
    transform on the same noise image gives the same pixels but for rounding (torchvision's uint8 and float bicubic
    differ by a few levels; resized one pixel larger, 45 on average). Files without crop_pct keep their JSON."""
    image = torch.randint(0, 256, (3, 100, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    ours = multihead.Preprocessing(image_size=64, resize_mode=resize_mode, crop_pct=0.875, interpolation="bicubic")
    theirs = timm.data.create_transform(input_size=64, crop_pct=0.875, crop_mode=crop_mode, interpolation="bicubic")
    difference = (ours.resize(image).int() - theirs.transforms[1](theirs.transforms[0](image)).int()).abs()
    assert difference.shape == (3, 64, 64) and difference.float().mean() < 1 and difference.max() <= 24
    assert ours.scale_size == 73 and "the centre of 73 px" in ours.describe()
    assert multihead.Preprocessing.from_json(ours.to_json()) == ours
    assert "crop_pct" not in json.loads(multihead.Preprocessing().to_json())
    for bad in (0.3, 1.2, True, "0.9"):
        with pytest.raises(ValueError, match="crop_pct must be a number from 0.5 to 1"):
            multihead.Preprocessing(crop_pct=bad)


def test_a_fixed_input_size_is_kept_and_a_dynamic_one_follows_the_spec(cache):
    """The tiny ViT's position embeddings are fixed at 64 px; UNI's spec builds it with dynamic_img_size."""
    with pytest.raises(ValueError, match="takes 64x64 px inputs only .* not 96"):
        multihead.create_model(f"hf-hub:{VIT}", image_size=96)
    uni = multihead.create_model("hf-hub:MahmoodLab/UNI", image_size=48).eval()
    assert uni(torch.zeros(1, 3, 48, 48)).router_logits.shape == (1, 8)


def test_hub_trunks_are_not_tuned_and_say_why(cache):
    trunk = create_trunk(f"hf-hub:{VIT}", stages=())
    for cut in ("auto", "blocks.1", "stem"):
        with pytest.raises(ValueError, match=f"trunk 'hf-hub:{VIT}' cannot be tuned: foundation models from the "
                                             "Hugging Face hub stay frozen"):
            split_trunk(trunk, cut)


# --- bad input: one sentence each ---------------------------------------------------------------------------

BAD = [
    ("hf-hub:nobody/nothing", HubCacheError,
     "hub trunk nobody/nothing is not in the Hugging Face cache (", "huggingface-cli download nobody/nothing"),
    (f"hf-hub:{VIT}@v2", HubCacheError,
     f"revision 'v2' of hub trunk {VIT} is not in the Hugging Face cache (", "holds main, v1, 0123456789ab)"),
    (f"hf-hub:{VIT}@{OTHER}", HubCacheError,
     f"revision '{OTHER}' of hub trunk {VIT} is not in the Hugging Face cache", f"--revision {OTHER}"),
    ("hf-hub:tiny/no-pretrained-cfg", HubConfigError,
     f"the config.json of hub trunk tiny/no-pretrained-cfg at revision {COMMIT} has no pretrained config "
     "(input_size, mean, std missing", "which multihead takes the input size, mean and std from"),
    ("hf-hub:tiny/transformers", HubConfigError, "names no timm architecture", "multihead builds trunks with timm"),
    ("hf-hub:tiny/unbuildable", HubConfigError,
     "cannot build hub trunk tiny/unbuildable (architecture 'no_such_architecture_anywhere'", "Unknown model"),
    ("hf-hub:not a name", HubConfigError, "is not a hub trunk name: expected hf-hub:ORG/NAME[@REVISION]", ""),
]


@pytest.mark.parametrize(("name", "error", "start", "also"), BAD, ids=[case[0] for case in BAD])
def test_bad_hub_trunks_are_one_sentence_each(cache, name, error, start, also):
    with pytest.raises(error) as caught:
        multihead.create_model(name)
    message = str(caught.value)
    assert start in message and also in message and "\n" not in message
    assert isinstance(caught.value, (ValueError, WeightsUnavailableError))


@pytest.mark.parametrize(("name", "error", "start", "also"), BAD, ids=[case[0] for case in BAD])
def test_bad_hub_trunks_exit_2_on_the_command_line(cache, tiny_data, tmp_path, name, error, start, also):
    result = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(tmp_path / "m.safetensors"),
                                      "--trunk", name, "--taxonomy", "from-folders"])
    assert_handled_exit(result, 2, "Invalid value for '--trunk'", start, also)
    assert not (tmp_path / "m.safetensors").exists()


def test_tuning_a_hub_trunk_is_a_wrong_command_line(cache, tiny_data, tmp_path):
    result = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(tmp_path / "m.safetensors"),
                                      "--trunk", f"hf-hub:{VIT}", "--tune-from", "auto"])
    assert_handled_exit(result, 2, "Invalid value for '--tune-from'", "cannot be tuned", "--tune-from none")


# --- checkpoints --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def referenced(cache, tmp_path_factory) -> tuple[multihead.MultiHeadModel, Path]:
    with pytest.MonkeyPatch.context() as patch:  # module scope: built before the autouse fixture points there
        patch.setenv("HF_HUB_CACHE", str(cache))
        model = multihead.create_model(f"hf-hub:{VIT}", trunk_stages="auto", seed=0).eval()
    path = tmp_path_factory.mktemp("hub-checkpoints") / "referenced.safetensors"
    multihead.save(model, path)
    return model, path


def _same_outputs(model: multihead.MultiHeadModel, loaded: multihead.MultiHeadModel) -> None:
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).joint_log_probs, model(images).joint_log_probs)
    assert loaded.preprocessing == model.preprocessing


def test_the_checkpoint_references_the_trunk_by_id_revision_and_sha256(cache, referenced):
    model, path = referenced
    header = read_header(path)
    weights = find_snapshot(f"hf-hub:{VIT}").weights
    assert header["trunk"]["embedded"] is False and not any(k.startswith("trunk.") for k in header["keys"])
    assert header["trunk"]["hub"] == {
        "id": VIT, "revision": COMMIT, "architecture": "vit_tiny_patch16_224", "file": "model.safetensors",
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "licence": "apache-2.0",
        "model_args": json.loads((weights.parent / "config.json").read_text())["model_args"]}
    assert path.stat().st_size < weights.stat().st_size  # the trunk's weights are not in it
    _same_outputs(model, multihead.load(path))


def test_an_embedded_hub_trunk_loads_without_the_cache(cache, referenced, tmp_path, monkeypatch):
    model, _ = referenced
    multihead.save(model, tmp_path / "embedded.safetensors", embed_trunk=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    loaded = multihead.load(tmp_path / "embedded.safetensors")
    _same_outputs(model, loaded)
    assert read_header(tmp_path / "embedded.safetensors")["trunk"]["hub"]["id"] == VIT


def test_a_random_hub_trunk_cannot_be_saved_by_reference(cache, tmp_path):
    model = multihead.create_model(f"hf-hub:{VIT}", trunk_weights=None)
    with pytest.raises(ValueError, match="does not hold its repository's weights .* embed_trunk=True"):
        multihead.save(model, tmp_path / "m.safetensors", embed_trunk=False)
    multihead.save(model, tmp_path / "m.safetensors")  # embedded by default
    assert read_header(tmp_path / "m.safetensors")["trunk"]["embedded"] is True


def test_a_referenced_hub_trunk_is_sized_at_four_bytes_a_parameter(cache, referenced, tmp_path, monkeypatch):
    """The size check of loading counts what loading takes: a referenced hub trunk is read straight into the network
    (4 bytes a parameter), an embedded one is built and then copied in (8)."""
    from multihead.model import checkpoint as checkpoint_module

    model, path = referenced
    parameters = sum(v.numel() for v in model.trunk.network.state_dict().values())
    monkeypatch.setattr(checkpoint_module, "machine_memory", lambda: 16 * parameters + 64)
    multihead.load(path)
    multihead.save(model, tmp_path / "embedded.safetensors", embed_trunk=True)
    with pytest.raises(CheckpointError, match="a quarter of this machine's .* at 8 bytes a parameter to load"):
        multihead.load(tmp_path / "embedded.safetensors")


def _copy_cache(cache: Path, target: Path) -> Path:
    shutil.copytree(cache, target, symlinks=True)
    return target


def test_a_changed_weights_file_is_refused(cache, referenced, tmp_path, monkeypatch):
    _, path = referenced
    copy = _copy_cache(cache, tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(copy))
    weights = find_snapshot(f"hf-hub:{VIT}").weights
    state = load_file(str(weights))
    state["blocks.0.mlp.fc1.bias"][0] += 1.0  # one weight changed: same names, shapes and size
    target = weights.resolve()
    save_file(state, str(target))
    with pytest.raises(CheckpointError) as caught:
        multihead.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: its trunk is stored by reference, not embedded, and loading never downloads: "
                              f"the weights of hub trunk {VIT} at revision {COMMIT} have changed since the checkpoint "
                              "was trained")
    assert (f"huggingface-cli download {VIT} model.safetensors --revision {COMMIT} --force-download" in message
            and "\n" not in message)


@pytest.mark.parametrize("what", ["file", "revision", "repository"])
def test_a_missing_trunk_names_the_id_revision_and_command(cache, referenced, tmp_path, monkeypatch, what):
    _, path = referenced
    copy = _copy_cache(cache, tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(copy))
    folder = copy / f"models--{VIT.replace('/', '--')}"
    if what == "file":
        (folder / "snapshots" / COMMIT / "model.safetensors").unlink()
    elif what == "revision":  # the cache moved on to another commit
        (folder / "snapshots" / COMMIT).rename(folder / "snapshots" / OTHER)
        (folder / "refs" / "main").write_text(OTHER)
    else:
        shutil.rmtree(folder)
    with pytest.raises(CheckpointError) as caught:
        multihead.load(path)
    message = str(caught.value)
    assert f"hub trunk {VIT} at revision {COMMIT} is not in the Hugging Face cache" in message
    assert f"huggingface-cli download {VIT} config.json model.safetensors --revision {COMMIT}" in message
    assert "\n" not in message


@pytest.mark.parametrize(("change", "problem"), [
    ({"revision": "../../../../etc"}, "revision must be a commit"),
    ({"model_args": {"checkpoint_path": "/tmp/evil.pth"}}, "model_args may not set ['checkpoint_path']"),
    ({"model_args": {"pretrained": True}}, "model_args may not set ['pretrained']"),
    ({"file": "../../evil.safetensors"}, "file must be one of"),
    ({"id": "../x"}, "id must be ORG/NAME"),
])
def test_a_hostile_hub_record_is_refused_before_anything_is_built(referenced, tmp_path, change, problem):
    from safetensors import safe_open

    _, path = referenced
    with safe_open(str(path), framework="pt") as reader:
        metadata, tensors = dict(reader.metadata()), {k: reader.get_tensor(k) for k in reader.keys()}  # noqa: SIM118
    trunk = json.loads(metadata["trunk"])
    trunk["hub"].update(change)
    metadata["trunk"] = json.dumps(trunk)
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match="damaged metadata: 'trunk.hub'") as caught:
        read_header(tmp_path / "edited.safetensors")
    assert problem in str(caught.value)


# --- the whole command-line path, offline, no network call attempted ------------------------------------

_OFFLINE_RUN = textwrap.dedent('''
    import json, sys
    attempts = []

    def no_network(event, args):
        network = event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
                            "socket.gethostbyaddr", "urllib.Request")
        if network or (event == "socket.connect" and isinstance(args[1], tuple)):
            attempts.append(f"{event} {args!r}"[:300])
            raise OSError(f"network call attempted: {event}")

    sys.addaudithook(no_network)
    from pathlib import Path
    import torch
    from typer.testing import CliRunner
    import multihead
    from multihead.cli import app
    from multihead.inference.backends import open_runtime

    data, out = sys.argv[1], Path(sys.argv[2])
    model = str(out / "hub.safetensors")
    image = str(sorted(Path(data).glob("all/*/*"))[0])
    steps = {
        "train": ["train", data, "--out", model, "--trunk", "hf-hub:tiny/vit", "--taxonomy", "from-folders",
                  "--epochs", "2", "--batch-size", "8"],
        "info": ["info", model],
        "classify": ["classify", image, "--model", model, "--json"],
        "evaluate": ["evaluate", model, data, "--report", str(out / "report"), "--split",
                     str(out / "hub.split.json")],
        "export": ["export", model, "--out", str(out / "hub.onnx")],
    }
    results = {}
    for step, arguments in steps.items():
        result = CliRunner().invoke(app, arguments)
        results[step] = {"exit": result.exit_code, "stdout": result.stdout[-3000:], "stderr": result.stderr[-3000:]}
    loaded = multihead.load(model)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    expected = loaded.forward_features(loaded.preprocessing.normalize(images))
    for backend in ("openvino", "onnxruntime"):
        runtime = open_runtime(loaded, backend, onnx_file=out / "hub.onnx")
        results[backend] = float((runtime.features(images) - expected).abs().max())
    results["attempts"] = attempts
    print("RESULTS " + json.dumps(results))
''')


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.mark.slow
def test_the_whole_command_line_path_runs_offline_without_a_network_call(cache, tiny_data, tmp_path):
    """train, info, classify, evaluate, export, and the exported graph on OpenVINO and ONNX Runtime: with
    HF_HUB_OFFLINE unset and every proxy at a closed port, no name is looked up and no socket connects."""
    proxy = f"http://127.0.0.1:{_closed_port()}"
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home"),
           "MULTIHEAD_CACHE": str(tmp_path / "features"), "OMP_NUM_THREADS": "1",
           **{name: proxy for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                                       "all_proxy")}}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    (tmp_path / "run.py").write_text(_OFFLINE_RUN)
    done = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tiny_data), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    results = json.loads(lines[-1][len("RESULTS "):])
    assert results["attempts"] == []
    for step in ("train", "info", "classify", "evaluate", "export"):
        assert results[step]["exit"] == 0, (step, results[step])
    assert "wrote " in results["train"]["stdout"] and "train accuracy" in results["train"]["stdout"]
    assert f"from the hub: {VIT} at revision {COMMIT[:12]}" in " ".join(results["info"]["stdout"].split())
    prediction = json.loads(results["classify"]["stdout"].splitlines()[0])
    assert prediction["organ"] in ("all", "lymphoma")
    assert (tmp_path / "report" / "report.json").is_file()
    assert results["openvino"] < 1e-4 and results["onnxruntime"] < 1e-4
    header = read_header(tmp_path / "hub.safetensors")
    assert header["trunk"]["hub"]["id"] == VIT and header["trunk"]["embedded"] is False
    assert header["preprocessing"].image_size == 64  # the trunk's own size, not the preset's 640
    assert [p.name.startswith("hf-hub_tiny_vit-") for p in (tmp_path / "features").iterdir()] == [True]


def test_embed_trunk_on_the_command_line_makes_a_self_contained_file(cache, tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MULTIHEAD_CACHE", str(tmp_path / "features"))
    out = tmp_path / "embedded.safetensors"
    result = CliRunner().invoke(app, ["train", str(tiny_data), "--out", str(out), "--trunk", f"hf-hub:{VIT}",
                                      "--taxonomy", "from-folders", "--epochs", "1", "--embed-trunk"])
    assert result.exit_code == 0, result.output
    header = read_header(out)
    assert header["trunk"]["embedded"] is True and header["trunk"]["hub"]["revision"] == COMMIT
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert multihead.load(out).trunk.num_features == 48


# --- memory ----------------------------------------------------------------------------------------------

_MEASURE = textwrap.dedent('''
    import re, sys
    import timm, torch
    import multihead

    def peak():  # this process's peak resident memory (ru_maxrss would include the parent's, from before exec)
        with open("/proc/self/status") as status:
            return int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1)) * 1024

    timm.create_model("vit_tiny_patch16_224", num_classes=0, depth=1, embed_dim=24, num_heads=2, img_size=32)
    before = peak()
    model = multihead.load(sys.argv[1])
    grown = peak() - before
    trunk = sum(t.numel() * t.element_size() for t in model.trunk.network.state_dict().values())
    print(grown, trunk)
''')


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the peak memory from /proc (Linux)")
def test_loading_a_referenced_hub_trunk_costs_no_more_memory_than_the_trunk(tmp_path, monkeypatch):
    """A ViT-S (88 MB of weights): the process's peak memory grows by the trunk and little more while loading (the
    weights are read straight into the network; building it and then loading a copy would take twice as much)."""
    cache = tmp_path / "hub"
    torch.manual_seed(0)
    network = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, img_size=64)
    _publish_model(cache, "big/vit", network, tmp_path / "scratch")
    del network
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    multihead.save(multihead.create_model("hf-hub:big/vit", seed=0), tmp_path / "big.safetensors")
    (tmp_path / "measure.py").write_text(_MEASURE)
    done = subprocess.run([sys.executable, str(tmp_path / "measure.py"), str(tmp_path / "big.safetensors")],
                          env={**os.environ, "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    grown, trunk = map(int, done.stdout.split()[-2:])
    assert trunk > 80 * 2**20
    assert grown < 1.4 * trunk, f"loading grew the peak memory by {grown / 2**20:.0f} MiB, the trunk is " \
                                f"{trunk / 2**20:.0f} MiB"
