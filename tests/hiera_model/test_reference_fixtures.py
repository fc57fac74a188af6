"""Parity with FAIR `hiera` and timm, through golden fixtures that `tools/make_reference_fixtures.py`
wrote with those libraries (each checkpoint saved by the library's own save function)."""

import json

import pytest
import safetensors.torch
import torch

import hiera_model
from hiera_model import HieraConfig

from ..conftest import FIXTURES

REFERENCE = FIXTURES / "reference"
TOLERANCE = 1e-5  # max abs diff
# The architecture of the fixtures (FAIR's arguments are in about.json).
CONFIG = HieraConfig(embed_dim=16, num_heads=(1, 2, 4, 8), depths=(1, 2, 2, 1), input_size=(96, 128), num_classes=10)


@pytest.fixture(scope="module")
def expected():
    return safetensors.torch.load_file(REFERENCE / "expected.safetensors")


def max_diff(a, b):
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def test_fixture_config_is_the_one_recorded():
    fair = json.loads((REFERENCE / "about.json").read_text())["fair_args"]
    assert (fair["embed_dim"], tuple(fair["stages"]), tuple(fair["input_size"])) == (
        CONFIG.embed_dim, CONFIG.depths, CONFIG.input_size)


@pytest.mark.parametrize("path, variant", [
    ("hiera_fair_small.pth", CONFIG),  # FAIR's .pth with model_state: no config inside, so variant= says it
    ("fair_hub", None),  # FAIR's save_pretrained: config.json with FAIR's arguments
])
@torch.no_grad()
def test_fair(path, variant, expected):
    model = hiera_model.load(REFERENCE / path, variant=variant)
    assert model.config == CONFIG
    logits = model(expected["pixel_values"])
    assert max_diff(logits, expected["fair_logits"]) <= TOLERANCE
    # FAIR's head applies softmax in eval mode; ours returns logits, like transformers and timm.
    assert max_diff(logits.softmax(-1), expected["fair_probs"]) <= TOLERANCE
    _, stages = model.forward_features(expected["pixel_values"], return_stages=True)
    for i, stage in enumerate(stages):  # FAIR's return_intermediates: [batch, height, width, dim]
        assert max_diff(stage, expected[f"fair_stage{i}"]) <= TOLERANCE


@torch.no_grad()
def test_timm_hub_directory(expected):
    model = hiera_model.load(REFERENCE / "timm_hub")  # timm's save_for_hf: config.json with model_args
    assert model.config == CONFIG
    assert max_diff(model(expected["pixel_values"]), expected["timm_logits"]) <= TOLERANCE
    _, stages = model.forward_features(expected["pixel_values"], return_stages=True)
    for i, stage in enumerate(stages):  # timm's forward_intermediates: NCHW
        assert max_diff(stage.permute(0, 3, 1, 2), expected[f"timm_stage{i}"]) <= TOLERANCE


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@torch.no_grad()
def test_timm_state_dict_files(suffix, tmp_path, expected):
    """A bare timm state dict, as a .safetensors or a .pth file."""
    state = safetensors.torch.load_file(REFERENCE / "timm_hub" / "model.safetensors")
    file = tmp_path / f"hiera_small_timm{suffix}"
    if suffix == ".pth":
        torch.save(state, file)
    else:
        safetensors.torch.save_file(state, file)
    model = hiera_model.load(file, variant=CONFIG)
    assert max_diff(model(expected["pixel_values"]), expected["timm_logits"]) <= TOLERANCE


@torch.no_grad()
def test_features_from_a_classifier_checkpoint(expected):
    """task='features' drops the head; the pooled output is the head's input."""
    classifier = hiera_model.load(REFERENCE / "fair_hub")
    features = hiera_model.load(REFERENCE / "fair_hub", task="features")(expected["pixel_values"])
    assert max_diff(classifier.head(features["pooler_output"]), expected["fair_logits"]) <= TOLERANCE


# The video fixture: FAIR's `hiera_base_16x224` layout (3-D patches, pooling and mask units in space only,
# separate spatial and temporal position embeddings) at 4 frames of 64 x 64 (about.json's video_args).
VIDEO = HieraConfig(embed_dim=16, num_heads=(1, 2, 4, 8), depths=(1, 2, 2, 1), num_classes=10, input_size=(4, 64, 64),
                    q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4),
                    patch_padding=(1, 3, 3), sep_pos_embed=True)


@pytest.mark.parametrize("path, variant", [("video_fair_small.pth", VIDEO), ("video_fair_hub", None)])
@torch.no_grad()
def test_fair_video(path, variant):
    expected = safetensors.torch.load_file(REFERENCE / "expected_video.safetensors")
    model = hiera_model.load(REFERENCE / path, variant=variant)
    assert model.config == VIDEO
    assert max_diff(model(expected["pixel_values"]), expected["logits"]) <= TOLERANCE
    _, stages = model.forward_features(expected["pixel_values"], return_stages=True)
    for i, stage in enumerate(stages):  # [batch, frames, height, width, dim], as FAIR's return_intermediates
        assert max_diff(stage, expected[f"stage{i}"]) <= TOLERANCE


def test_video_weights_are_told_from_image_weights():
    """Without a config, the weights' shapes pick the variant: a video checkpoint of Hiera-B's shape is
    base_16x224, not base."""
    from hiera_model.checkpoints import infer_config

    for name in ("base", "base_16x224"):
        with torch.device("meta"):
            state = hiera_model.build(hiera_model.VARIANTS[name].config).state_dict()
        assert infer_config(state, name) == hiera_model.VARIANTS[name].config
