"""One spec per supported trunk (issue 39): the facts a spec states are the ones the code and the weights give, and
the trunk, the split and the command line read them from it (no second copy to drift)."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision

from multihead.cli import app
from multihead.data.preprocessing import Preprocessing
from multihead.model.hub import build_network
from multihead.model.published import torchvision_preprocessing
from multihead.model.trunk import AUTO_STAGES, create_trunk
from multihead.model.trunk_specs import HUB_PREFIX, TOKENS, TRUNK_SPECS, trunk_spec
from multihead.model.trunk_split import AUTO_TUNE_FROM, split_trunk, tuning_refusal

CNNS = [spec for spec in TRUNK_SPECS if not spec.name.startswith(HUB_PREFIX)]
HUB = [spec for spec in TRUNK_SPECS if spec.name.startswith(HUB_PREFIX)]


@pytest.mark.parametrize("spec", CNNS, ids=lambda spec: spec.name)
def test_a_cnn_spec_states_what_its_network_gives(spec):
    """Its stages exist and pool to the stated width; its tune cut splits the network (on the meta device)."""
    with torch.device("meta"):
        trunk = create_trunk(spec.name, weights=None, stages="auto")
        assert trunk.stages == spec.stages and trunk.num_features == spec.num_features
        assert split_trunk(trunk, "auto").cut == spec.tune_from
    assert AUTO_STAGES[spec.name] == spec.stages and AUTO_TUNE_FROM[spec.name] == spec.tune_from


@pytest.mark.parametrize("spec", CNNS, ids=lambda spec: spec.name)
def test_a_cnn_specs_preprocessing_is_what_every_published_weights_expect(spec):
    """torchvision states each weights' transforms; the spec's one preprocessing must match all of them, and a trunk
    with random or local weights is preprocessed the same way."""
    for weights in torchvision.models.get_model_weights(spec.name):
        assert torchvision_preprocessing(weights) == Preprocessing(**spec.preprocessing), weights
    assert create_trunk(spec.name, weights=None).preprocessing == Preprocessing(**spec.preprocessing)


def test_a_trunk_reads_its_preprocessing_from_its_spec(monkeypatch):
    from multihead.model import trunk_specs

    changed = trunk_specs.TrunkSpec("resnet18", preprocessing={"image_size": 160, "interpolation": "bicubic"})
    monkeypatch.setitem(trunk_specs._BY_NAME, "resnet18", changed)
    assert create_trunk("resnet18", weights=None).preprocessing == Preprocessing(image_size=160,
                                                                                 interpolation="bicubic")


@pytest.mark.parametrize("spec", HUB, ids=lambda spec: spec.name)
def test_a_foundation_spec_builds_with_its_arguments_and_is_never_tuned(spec):
    """Every argument a spec adds reaches timm (a tiny ViT of the family, on the meta device): its classes are the
    network's layers, its values its settings."""
    import timm

    record = {"id": spec.name[len(HUB_PREFIX):], "architecture": "vit_base_patch16_224",
              "model_args": {"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 32}}
    with torch.device("meta"):
        network = build_network(record)
    layers = {type(module) for module in network.modules()}
    for path in spec.build_classes.values():
        module, _, name = path.rpartition(".")
        layer = getattr(__import__(module, fromlist=[name]), name)
        assert getattr(layer, "func", layer) in layers, path  # SwiGLUPacked is a partial of GluMlp
    checks = {"dynamic_img_size": lambda value: network.dynamic_img_size is value,
              "init_values": lambda value: isinstance(network.blocks[0].ls1, timm.layers.LayerScale)}
    for argument, value in spec.build_args.items():
        assert checks[argument](value), argument
    assert spec.untunable and tuning_refusal(spec.name).startswith(f"trunk {spec.name!r} cannot be tuned")
    assert spec.num_features and spec.licence and spec.about


def test_specs_are_found_by_hub_id_without_regard_to_case_or_revision():
    assert trunk_spec("hf-hub:mahmoodlab/uni@main") is trunk_spec("hf-hub:MahmoodLab/UNI") is not None
    assert trunk_spec("hf-hub:someone/else") is None and trunk_spec("vgg11") is None


def _option_help(command: str, option: str) -> str:
    import typer.main

    params = typer.main.get_command(app).commands[command].params
    return next(p.help for p in params if option in getattr(p, "opts", ()))


def test_the_command_line_help_lists_what_the_specs_say():
    tune_from, stages, trunk = (_option_help("train", name) for name in ("--tune-from", "--stages", "--trunk"))
    for spec in CNNS:
        assert re.search(rf"{spec.name}\b[^:]*: {re.escape(spec.tune_from)}", tune_from), spec.name
        assert spec.name in trunk
    for spec in HUB:
        assert spec.name in trunk
    assert TOKENS in stages


def test_the_foundation_table_in_the_docs_matches_the_specs():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text(encoding="utf-8")
    section = page.split("## A foundation model as the trunk", 1)[1].split("\n## ", 1)[0]
    for spec in HUB:
        row = next((line for line in section.splitlines() if f"`{spec.name}`" in line), None)
        assert row is not None, spec.name
        assert f"{spec.num_features:,}" in row and spec.licence.split(",")[0] in row
        kib = spec.num_features * 4 / 1024
        assert f"{kib:g} KiB" in row
