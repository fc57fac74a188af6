"""Parity with FAIR `hiera` and timm, through golden fixtures that `tools/make_reference_fixtures.py`
wrote with those libraries (each checkpoint saved by the library's own save function)."""

import dataclasses
import json
import shutil

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


# SAM 2 (about.json's sam2_*): a small SAM 2 built from FAIR's classes and saved as FAIR's training saves it
# ({"model": state dict}, no config), its features as FAIR's SAM2ImagePredictor.set_image keeps them, and timm's
# sam2_hiera backbone with the same trunk weights, saved with timm's save_for_hf.
SAM2 = hiera_model.Sam2Config(embed_dim=6, num_heads=(1, 2, 4, 8), depths=(1, 2, 2, 1), window_sizes=(4, 4, 4, 2),
                              global_blocks=(2, 4), window_pos_embed_size=(7, 7), input_size=(96, 96), fpn_dim=32)
# set_image's names -> ours
SAM2_FEATURES = {"image_embed": "image_embeddings", "high_res_feats_0": "high_res_feats_0",
                 "high_res_feats_1": "high_res_feats_1"}


@pytest.fixture(scope="module")
def expected_sam2():
    return safetensors.torch.load_file(REFERENCE / "expected_sam2.safetensors")


def test_sam2_fixture_config_is_the_one_recorded():
    about = json.loads((REFERENCE / "about.json").read_text())
    trunk, neck = about["sam2_trunk_args"], about["sam2_neck_args"]
    heads = tuple(trunk["num_heads"] * 2 ** s for s in range(len(trunk["stages"])))  # FAIR doubles them per stage
    assert (trunk["embed_dim"], heads, tuple(trunk["stages"]), tuple(trunk["window_spec"]),
            tuple(trunk["global_att_blocks"]), tuple(trunk["window_pos_embed_bkg_spatial_size"]),
            (about["sam2_image_size"],) * 2, neck["d_model"], tuple(neck["fpn_top_down_levels"])) == (
        SAM2.embed_dim, SAM2.num_heads, SAM2.depths, SAM2.window_sizes, SAM2.global_blocks, SAM2.window_pos_embed_size,
        SAM2.input_size, SAM2.fpn_dim, SAM2.fpn_top_down_levels)


@torch.no_grad()
def test_sam2_fair_checkpoint_gives_set_image_features(expected_sam2):
    """FAIR's .pt has no config: variant= gives the small one's (a published size is told from the weights)."""
    encoder = hiera_model.load(REFERENCE / "sam2_fair_small.pt", variant=SAM2, task="image-encoder")
    assert encoder.provenance["source"] == "local:sam2_fair_small.pt"
    features = encoder(expected_sam2["pixel_values"])
    diffs = {theirs: max_diff(features[ours], expected_sam2[theirs]) for theirs, ours in SAM2_FEATURES.items()}
    assert max(diffs.values()) <= TOLERANCE, diffs
    backbone = hiera_model.load(REFERENCE / "sam2_fair_small.pt", variant=SAM2, task="backbone")
    maps = backbone(expected_sam2["pixel_values"])  # the trunk's four stage maps, NCHW as FAIR's trunk gives them
    diffs = {name: max_diff(maps[name], expected_sam2[f"fair_{name}"]) for name in backbone.output_names}
    assert len(diffs) == 4 and max(diffs.values()) <= TOLERANCE, diffs


@torch.no_grad()
def test_sam2_timm_backbone_gives_timm_stage_maps(expected_sam2, capsys, tmp_path):
    """timm's folder: its config.json (architecture, model_args, pretrained_cfg's input size) makes the config;
    task 'backbone' with no variant routes it to SAM 2 from Hiera's loader."""
    backbone = hiera_model.load(REFERENCE / "sam2_timm_hub", task="backbone")
    assert backbone.config == dataclasses.replace(SAM2, fpn_dim=256)  # timm's has no neck: the default width
    maps = backbone(expected_sam2["pixel_values"])
    diffs = {name: max_diff(maps[name], expected_sam2[f"timm_{name}"]) for name in ("stage1", "stage2", "stage3",
                                                                                    "stage4")}
    assert max(diffs.values()) <= TOLERANCE, diffs
    file = REFERENCE / "sam2_timm_hub" / "model.safetensors"  # without its config: the layout is told by the keys
    with pytest.raises(hiera_model.HieraModelError, match="HieraDet alone .*load it with task='backbone'"):
        hiera_model.load(file, variant=SAM2, task="image-encoder")
    # task 'features' (timm's pooled vector, tests/hiera_model/test_sam2.py) routes it to SAM 2 too
    assert hiera_model.load(file, task="features").output_names == ["last_hidden_state", "pooler_output"]
    # in a folder under the name of timm's published backbone: models.lock's row, no sha256 recorded yet
    published = tmp_path / "sam2_hiera_tiny.fb_r896"
    shutil.copytree(REFERENCE / "sam2_timm_hub", published)
    with pytest.raises(hiera_model.VerificationError, match="timm/sam2_hiera_tiny.fb_r896"):
        hiera_model.load(published, task="backbone")
    from hiera_model.__main__ import main

    assert main(["inspect", str(REFERENCE / "sam2_timm_hub"), "--task", "backbone"]) == 0
    assert "SAM 2's HieraDet (task backbone), embed_dim 6, depths (1, 2, 2, 1)" in capsys.readouterr().out


def test_sam2_fair_checkpoint_size_is_told_from_its_weights(tmp_path):
    """Heads, windows and global blocks cannot be read from weights: a FAIR file without a variant is matched
    against the published sizes by its shapes, else refused in one line."""
    from hiera_model.checkpoints_sam2 import infer_config

    for name in ("sam2.1_hiera_tiny", "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large"):
        with torch.device("meta"):
            state = hiera_model.Sam2ImageEncoder(hiera_model.SAM2_VARIANTS[name].config).state_dict()
        assert infer_config(state, name)[0] == hiera_model.SAM2_VARIANTS[name].config
    with pytest.raises(hiera_model.HieraModelError, match="sam2_fair_small.pt: no config, and its weights .*embed_dim "
                                                          r"6, depths \(1, 2, 2, 1\)\) match no published SAM 2 size"):
        hiera_model.load(REFERENCE / "sam2_fair_small.pt", task="image-encoder")
    # A file under a published FAIR name is checked against models.lock (no sha256 recorded yet), before reading.
    published = tmp_path / "sam2.1_hiera_tiny.pt"
    published.write_bytes(b"not read")
    with pytest.raises(hiera_model.VerificationError, match="sam2.1_hiera_tiny.pt"):
        hiera_model.load(published, task="image-encoder")
