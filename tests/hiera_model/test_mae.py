"""The MAE pretraining model against transformers' `HieraForPreTraining` (a `save_pretrained` checkpoint) and
FAIR's `MaskedAutoencoderHiera` (golden fixtures), on the same weights and the same noise."""

import numpy as np
import pytest
import safetensors.torch
import torch

import hiera_model
from hiera_model import HieraConfig, HieraModelError
from hiera_model.testing import FAIR_MAE
from hiera_model.unroll import unit_patch_order, unroll_order, windows_to_spatial

from ..conftest import FIXTURES

TOLERANCE = 1e-5  # max abs diff, PyTorch against PyTorch
REFERENCE = FIXTURES / "reference"


@torch.no_grad()
def test_matches_transformers_for_pretraining(transformers_mae):
    directory, reference = transformers_mae
    model = hiera_model.load(directory, task="mae", with_loss=True)
    assert model.config.q_pool == 2 and model.config.decoder_embed_dim == 32
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(3, 3, 64, 96, generator=generator)
    noise = torch.rand(3, model.config.mask_units, generator=generator)
    expected = reference(pixel_values=pixel_values, noise=noise)
    got = model(pixel_values, noise)
    assert list(got) == ["logits", "bool_masked_pos", "ids_restore", "loss"] == model.output_names
    assert got["logits"].shape == expected.logits.shape == (3, 24, 16 * 16 * 3)
    assert (got["logits"] - expected.logits).abs().max() <= TOLERANCE
    assert torch.equal(got["bool_masked_pos"], expected.bool_masked_pos)
    assert torch.equal(got["ids_restore"], expected.ids_restore)
    assert got["loss"].shape == (3,)  # per image; their mean is transformers' batch loss
    assert (got["loss"].mean() - expected.loss).abs() <= TOLERANCE


@torch.no_grad()
def test_matches_fair_masked_autoencoder():
    expected = safetensors.torch.load_file(REFERENCE / "expected_mae.safetensors")
    model = hiera_model.load(REFERENCE / "mae_fair_small.pth", variant=FAIR_MAE, task="mae", with_loss=True)
    got = model(expected["pixel_values"], expected["noise"])
    visible_units = got["ids_restore"] < model.config.visible_units
    assert torch.equal(visible_units, expected["mask"])  # FAIR's mask is per mask unit
    masked = ~got["bool_masked_pos"]  # FAIR returns the masked patches only, in order
    assert (got["logits"][masked] - expected["pred"]).abs().max() <= TOLERANCE
    assert (model.targets(expected["pixel_values"])[masked] - expected["label"]).abs().max() <= TOLERANCE
    assert (got["loss"].mean() - expected["loss"]).abs() <= TOLERANCE


def test_published_mae_variants_pool_twice():
    model = hiera_model.create("tiny", task="mae")
    assert model.config.q_pool == 2 and model.config.visible_units == 19  # 49 mask units at 224, 60% hidden
    assert model.pred_stride == 16 and model.decoder_pred.out_features == 16 * 16 * 3


def test_checkpoint_and_task_must_agree(transformers_mae, transformers_checkpoint):
    directory, _ = transformers_mae
    with pytest.raises(HieraModelError, match="an MAE pretraining checkpoint; load it with task='mae'"):
        hiera_model.load(directory, task="features")
    classifier, _ = transformers_checkpoint("small_q_pool")
    with pytest.raises(HieraModelError, match="task 'mae' needs an MAE pretraining checkpoint"):
        hiera_model.load(classifier, task="mae")


@pytest.mark.parametrize("changes, message", [
    (dict(input_size=(16, 224, 224), q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7),
          patch_stride=(2, 4, 4), patch_padding=(1, 3, 3)), "MAE for video Hiera is not supported"),
    (dict(mask_unit_size=(16, 16), input_size=(256, 256)), "mask units as large as the unroll"),
    (dict(mask_ratio=0.99), "leaves no mask unit"),
])
def test_unsupported_mae_configs_are_refused(changes, message):
    with pytest.raises(HieraModelError, match=message):
        hiera_model.create(HieraConfig(q_pool=2).replace(**changes), task="mae")


def test_unit_patch_order_lines_up_patches():
    """On an 8 x 8 grid of 2 x 2 mask units of 4 x 4 tokens, unrolled twice by 2 x 2: each unit's tokens in
    patch order are the unit's 2 x 2 patches, row-major, each patch's tokens row-major."""
    size, schedule, units = (8, 8), [(2, 2), (2, 2)], 4
    order = unroll_order(size, schedule, units).reshape(units, -1)  # spatial index of each token, per unit
    patched = order[:, unit_patch_order(size, schedule, units, (4, 4), (2, 2))]
    rows, cols = np.divmod(patched[0], 8)
    assert rows.tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]
    assert cols.tolist() == [0, 1, 0, 1, 2, 3, 2, 3, 0, 1, 0, 1, 2, 3, 2, 3]
    assert (patched - patched[:, :1] == patched[0] - patched[0, 0]).all()  # every unit alike
    assert patched[:, 0].tolist() == [0, 4, 32, 36]  # units in row-major order


def test_windows_to_spatial():
    windowed = np.array([0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15])  # 2 x 2 units of a 4 x 4 grid
    assert windowed[windows_to_spatial((4, 4), (2, 2))].tolist() == list(range(16))


def test_the_encoder_class_alone_is_not_an_mae_model():
    with pytest.raises(HieraModelError, match="task 'mae' is the MaskedAutoencoder model"):
        hiera_model.Hiera(FAIR_MAE, task="mae")
