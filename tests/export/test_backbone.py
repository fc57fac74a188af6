"""`--task backbone`: stage maps in NCHW, against FAIR's `return_intermediates` (golden fixtures) and
transformers' own rerolled hidden states. transformers' `HieraBackbone` is not a reference: it skips the
unroll before its encoder, so its maps disagree with its own `HieraModel` (shown below)."""

import numpy as np
import onnx
import pytest
import safetensors.torch
import torch
from transformers import HieraBackbone, HieraModel
from transformers import HieraConfig as TransformersConfig

import hiera_model

from export import ExportError, Options, read_artifact, run
from runtime import FeatureExtractor

from ..conftest import CONFIGS, FIXTURES, failed_rows
from .test_graph import ranks_and_shapes
from .test_parity import FP32_TOLERANCE, inputs, onnx_outputs

REFERENCE = FIXTURES / "reference"


@pytest.fixture(scope="module")
def fair_backbone(tmp_path_factory):
    out = tmp_path_factory.mktemp("fair-backbone")
    report = run(Options(weights=str(REFERENCE / "fair_hub"), task="backbone", batch=None, out_dir=out,
                         precisions=("fp32",)))
    assert report["passed"], failed_rows(report)
    return out / report["artifacts"]["fp32"]["file"]


def test_maps_match_fair_return_intermediates(fair_backbone):
    expected = safetensors.torch.load_file(REFERENCE / "expected.safetensors")
    got = onnx_outputs(fair_backbone, expected["pixel_values"].numpy())
    assert list(got) == ["stage1", "stage2", "stage3", "stage4"] == read_artifact(fair_backbone)["outputs"]
    for i, name in enumerate(got):  # FAIR's maps are [batch, height, width, channels]; ours NCHW
        reference = expected[f"fair_stage{i}"].permute(0, 3, 1, 2).numpy()
        assert got[name].shape == reference.shape
        assert np.abs(got[name] - reference).max() <= FP32_TOLERANCE, name
    assert max(len(shape) for shape in ranks_and_shapes(onnx.load(fair_backbone))) <= 4


@torch.no_grad()
def test_maps_match_transformers_rerolled_hidden_states(transformers_checkpoint, tmp_path):
    directory, reference = transformers_checkpoint("small_q_pool", "features")
    report = run(Options(weights=str(directory), task="backbone", out_dir=tmp_path, batch=None, precisions=("fp32",),
                         out_features=("stage4", "stage2")))
    assert report["passed"], failed_rows(report)
    artifact = tmp_path / report["artifacts"]["fp32"]["file"]
    pixel_values = inputs(reference.config, 2)
    expected = reference(torch.from_numpy(pixel_values), output_hidden_states=True).reshaped_hidden_states
    got = onnx_outputs(artifact, pixel_values)
    assert list(got) == ["stage2", "stage4"]  # the stages asked for, in stage order
    for name in got:
        reference_map = expected[int(name[-1])].permute(0, 3, 1, 2).numpy()  # [0] is the embedding
        assert np.abs(got[name] - reference_map).max() <= FP32_TOLERANCE, name
    image = np.random.default_rng(0).integers(0, 256, (80, 120, 3), dtype=np.uint8)
    maps = FeatureExtractor.load(artifact).extract([image, image])
    assert maps["stage2"].shape == (2, *got["stage2"].shape[1:])


def test_out_features_are_checked(transformers_checkpoint, tmp_path):
    directory, _ = transformers_checkpoint("small_q_pool", "features")
    choices = "choose one or more of stage1, stage2, stage3, stage4"
    with pytest.raises(ExportError, match=f"out_features 'stage9': {choices}") as refused:
        run(Options(weights=str(directory), task="backbone", out_dir=tmp_path, out_features=("stage9",)))
    assert refused.value.option == "out_features"
    with pytest.raises(ExportError, match="only for task backbone"):
        run(Options(weights=str(directory), task="features", out_dir=tmp_path, out_features=("stage1",)))


@torch.no_grad()
def test_transformers_hiera_backbone_disagrees_with_its_own_model(transformers_checkpoint):
    """Why transformers' HieraBackbone is not our reference: with the same weights, and its per-stage norms
    applied to HieraModel's rerolled hidden states too, its maps differ by more than 1."""
    _, model = transformers_checkpoint("small_q_pool", "features")
    config = TransformersConfig(**CONFIGS["small_q_pool"], out_features=["stage1", "stage2", "stage3", "stage4"])
    backbone = HieraBackbone(config).eval()
    missing, _ = backbone.load_state_dict(model.state_dict(), strict=False)
    assert all(key.startswith("hidden_states_norms.") for key in missing)
    pixel_values = torch.from_numpy(inputs(model.config, 2))
    hidden = model(pixel_values, output_hidden_states=True).reshaped_hidden_states[1:]
    for i, (state, feature_map) in enumerate(zip(hidden, backbone(pixel_values).feature_maps)):
        normed = backbone.hidden_states_norms[f"stage{i + 1}"](state).permute(0, 3, 1, 2)
        assert (normed - feature_map).abs().max() > 1


@torch.no_grad()
def test_stage_norms_of_a_transformers_backbone_checkpoint(tmp_path):
    """A checkpoint of transformers' HieraBackbone (say, from a detection fine-tune) carries a LayerNorm per
    stage it outputs. We load them and apply them to the correct maps: its `HieraModel`'s rerolled hidden
    states, normed by its own `hidden_states_norms`."""
    torch.manual_seed(0)
    config = TransformersConfig(**CONFIGS["small_q_pool"], out_features=["stage2", "stage4"])
    backbone = HieraBackbone(config).eval()
    for parameter in backbone.hidden_states_norms.parameters():  # fresh norms are the identity's weights
        parameter.add_(torch.randn_like(parameter) * 0.1)
    backbone.save_pretrained(tmp_path / "checkpoint")
    model = HieraModel(config).eval()
    missing, unexpected = model.load_state_dict(backbone.state_dict(), strict=False)
    assert all(k.startswith("pooler.") for k in missing)
    assert all(k.startswith("hidden_states_norms.") for k in unexpected)

    ours = hiera_model.load(tmp_path / "checkpoint", task="backbone")
    assert ours.config.stage_norms == ("stage2", "stage4")
    report = run(Options(weights=str(tmp_path / "checkpoint"), task="backbone", out_dir=tmp_path / "out", batch=None,
                         precisions=("fp32",)))
    assert report["passed"], failed_rows(report)
    pixel_values = inputs(model.config, 2)
    hidden = model(torch.from_numpy(pixel_values), output_hidden_states=True).reshaped_hidden_states[1:]
    got = onnx_outputs(tmp_path / "out" / report["artifacts"]["fp32"]["file"], pixel_values)
    for i, name in enumerate(got):  # all four stages; stage2 and stage4 normed
        expected = backbone.hidden_states_norms[name](hidden[i]) if name in ours.config.stage_norms else hidden[i]
        assert np.abs(got[name] - expected.permute(0, 3, 1, 2).numpy()).max() <= FP32_TOLERANCE, name
    with pytest.raises(hiera_model.HieraModelError, match="missing 2: norm.bias, norm.weight"):
        hiera_model.load(tmp_path / "checkpoint", task="features")  # a backbone has no pooler norm
