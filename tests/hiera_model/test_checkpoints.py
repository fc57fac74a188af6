"""Checkpoint loading: layout detection, variant inference, and one clear error for every bad input."""

import os
import pickle
import shutil

import pytest
import safetensors.torch
import torch

import hiera_model
from hiera_model import HieraConfig, HieraModelError, VARIANTS
from hiera_model.checkpoints import detect_layout, infer_config
from hiera_model.model import Hiera

from ..conftest import FAIR_FILE, FIXTURES, fair_state

FAIR_HUB = FIXTURES / "reference" / "fair_hub"
SMALL = HieraConfig(embed_dim=16, num_heads=(1, 2, 4, 8), depths=(1, 2, 2, 1), input_size=(96, 128), num_classes=10)


def assert_one_line_error(call, *fragments):
    with pytest.raises(HieraModelError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message, message
    return message


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_published_variant_is_inferred_from_its_weights(name):
    with torch.device("meta"):
        state = Hiera(VARIANTS[name].config).state_dict()
    assert infer_config(state, "x.pth") == VARIANTS[name].config


def test_published_variant_loads_from_a_plain_state_dict_without_config(tmp_path):
    """A FAIR-layout tiny with no config: the variant comes from the shapes, the classes from the head."""
    model = hiera_model.create("tiny")
    state = {k.replace("head.", "head.projection."): v for k, v in model.state_dict().items()}
    torch.save({"model_state": state}, tmp_path / "my_tiny.pth")
    loaded = hiera_model.load(tmp_path / "my_tiny.pth")
    assert loaded.config == VARIANTS["tiny"].config
    pixel_values = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values), model(pixel_values))


def test_unknown_shapes_list_the_candidates():
    assert_one_line_error(lambda: hiera_model.load(FAIR_FILE), FAIR_FILE, "embed_dim 16 and depths (1, 2, 2, 1)",
                          "matches no published variant", "pass its architecture as variant: a variant name",
                          "tiny (embed_dim 96, depths (1, 2, 7, 2))")


def test_ambiguous_shapes_list_the_matches(monkeypatch):
    import hiera_model.checkpoints as checkpoints
    twin = VARIANTS["tiny"]
    monkeypatch.setattr(checkpoints, "VARIANTS", {**VARIANTS, "tiny_twin": twin})
    with torch.device("meta"):
        state = Hiera(twin.config).state_dict()
    assert_one_line_error(lambda: infer_config(state, "twin.pth"), "twin.pth", "matches several variants",
                          "Candidates: tiny (embed_dim 96, depths (1, 2, 7, 2)); tiny (embed_dim 96")


def test_weights_for_another_variant(tmp_path):
    """Compared with the weights' shapes before any model is built: the fields that disagree are named."""
    assert_one_line_error(lambda: hiera_model.load(FAIR_FILE, variant="base"), FAIR_FILE,
                          "variant 'base': embed_dim 96",
                          "disagree with the weights: patch_embed.proj.weight is (16, 3, 7, 7), that config needs "
                          "(96, 3, 7, 7)")
    same_width = SMALL.replace(input_size=(64, 64))
    assert_one_line_error(lambda: hiera_model.load(FAIR_FILE, variant=same_width),
                          "the given config: input_size (64, 64) disagree with the weights: pos_embed is (1, 768, 16), "
                          "that config needs (1, 256, 16)")
    deeper = SMALL.replace(depths=(1, 2, 3, 1))
    assert_one_line_error(lambda: hiera_model.load(FAIR_FILE, variant=deeper),
                          "depths (1, 2, 3, 1) make 7 blocks; the weights hold 6")


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = fair_state()
    del state["blocks.0.norm1.weight"]
    state["blocks.0.extra.weight"] = torch.zeros(1)
    file = tmp_path / "edited.pth"
    torch.save({"model_state": state}, file)
    assert_one_line_error(lambda: hiera_model.load(file, variant=SMALL), file,
                          "missing 1: blocks.0.norm1.weight", "unexpected 1: blocks.0.extra.weight")


def test_classify_needs_a_head(tmp_path):
    state = {k: v for k, v in fair_state().items() if not k.startswith("head.")}
    file = tmp_path / "headless.pth"
    torch.save(state, file)
    assert_one_line_error(lambda: hiera_model.load(file, variant=SMALL), file, "no classification head",
                          "task='features'")
    assert hiera_model.load(file, variant=SMALL, task="features").head is None


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_text("this is not a checkpoint\n"), "not a loadable PyTorch checkpoint"),
    (lambda p: p.write_bytes(FAIR_FILE.read_bytes()[: FAIR_FILE.stat().st_size // 2]), "or truncated"),
    (lambda p: torch.save([1, 2, 3], p), "holds no state dict of tensors"),
    (lambda p: torch.save({"a": torch.zeros(2)}, p), "not a Hiera checkpoint in a known layout"),
])
def test_bad_pth_files(tmp_path, make, reason):
    file = tmp_path / "model.pth"
    make(file)
    assert_one_line_error(lambda: hiera_model.load(file), file, reason)


@pytest.mark.parametrize("make", [
    lambda p: p.write_text("{not safetensors"),
    lambda p: p.write_bytes((FAIR_HUB / "model.safetensors").read_bytes()[:50_000]),
])
def test_bad_safetensors_files(tmp_path, make):
    file = tmp_path / "model.safetensors"
    make(file)
    assert_one_line_error(lambda: hiera_model.load(file), file, "not a valid safetensors file")


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickles_are_never_executed(tmp_path, monkeypatch):
    """A torch.save archive whose unpickling would run code is refused and runs nothing. The environment
    makes torch.load unsafe by default, so the test fails if the loader ever stops passing weights_only=True."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "pwned"
    file = tmp_path / "evil.pth"
    torch.save({"model_state": Exploit(os.fspath(marker))}, file)
    assert_one_line_error(lambda: hiera_model.load(file), file, "not a loadable PyTorch checkpoint")
    assert not marker.exists()


def test_plain_pickles_are_refused_unread(tmp_path):
    marker = tmp_path / "pwned"
    file = tmp_path / "evil.pth"
    with open(file, "wb") as f:
        pickle.dump({"model_state": Exploit(os.fspath(marker))}, f, protocol=2)
    assert_one_line_error(lambda: hiera_model.load(file), file, "a plain pickle or a torch file older than PyTorch 1.6")
    assert not marker.exists()


def test_paths_that_are_no_checkpoint(tmp_path):
    assert_one_line_error(lambda: hiera_model.load(tmp_path / "absent.pth"), "absent.pth", "no such file or directory")
    assert_one_line_error(lambda: hiera_model.load(tmp_path), tmp_path, "directory holds no weights")


def test_bad_config_json(tmp_path):
    shutil.copytree(FAIR_HUB, tmp_path / "hub")
    config = tmp_path / "hub" / "config.json"
    config.write_text("{oops")
    assert_one_line_error(lambda: hiera_model.load(tmp_path / "hub"), config, "not valid JSON")
    config.write_text('{"embed_dim": 16, "stages": [1, 2, 2, 1], "input_size": [96, 128], "num_heads": 3}')
    assert_one_line_error(lambda: hiera_model.load(tmp_path / "hub"), "invalid Hiera config",
                          "divisible by its 3 heads")
    config.write_text('{"embed_dim": "sixteen", "stages": [1, 2, 2, 1]}')
    assert_one_line_error(lambda: hiera_model.load(tmp_path / "hub"), config, "embed_dim 'sixteen' must be a whole "
                          "number")
    config.write_text('{"model_type": "bert"}')
    assert_one_line_error(lambda: hiera_model.load(tmp_path / "hub"), config, "not a Hiera config")


def test_layouts_are_detected_from_keys():
    assert detect_layout({"hiera.embeddings.position_embeddings": 0}, "p") == "transformers"
    assert detect_layout({"encoder.stages.0.layers.0.attn.qkv.weight": 0}, "p") == "transformers"
    assert detect_layout({"head.fc.weight": 0, "blocks.0.norm1.weight": 0}, "p") == "timm"
    assert detect_layout({"patch_embed.proj.weight": 0, "blocks.0.norm1.weight": 0}, "p") == "fair"
    assert detect_layout({"patch_embed.proj.weight": 0, "decoder_pred.weight": 0}, "p") == "fair"  # FAIR's MAE
    with pytest.raises(HieraModelError, match="not a Hiera checkpoint in a known layout"):
        detect_layout({"encoder_norm.weight": 0, "decoder_pred.weight": 0}, "p")


def test_half_precision_checkpoints_load_as_float32(tmp_path):
    state = {k: v.half() for k, v in fair_state().items()}
    safetensors.torch.save_file(state, tmp_path / "half.safetensors")
    model = hiera_model.load(tmp_path / "half.safetensors", variant=SMALL)
    assert model.pos_embed.dtype == torch.float32
    assert torch.equal(model.pos_embed, state["pos_embed"].float())
