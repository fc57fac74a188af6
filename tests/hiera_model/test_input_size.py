"""Any input size: the model built for the size asked, its position embeddings resized at load exactly as
transformers' `interpolate_pos_encoding` resizes them, checked against transformers at that size."""

import numpy as np
import pytest
import torch
from transformers import HieraConfig as TransformersConfig
from transformers import HieraForImageClassification, HieraForPreTraining, HieraModel

import hiera_model
from hiera_model import HieraModelError
from hiera_model.resize import resize_table
from hiera_model.testing import MAE_CONFIG, inputs_for

from ..conftest import FIXTURES
from .test_unroll import MaxRank

TOLERANCE = 1e-5  # max abs diff, PyTorch against PyTorch: logits, last_hidden_state, pooler_output
MAP_TOLERANCE = 1e-4  # backbone maps against transformers' rerolled hidden states
# A small Hiera trained (here: seeded) at 224 x 224, like the published ones but narrow, so that 448 runs fast.
SMALL_224 = dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8])
SIZES = [(448, 448), (224, 448), (192, 320)]  # twice the size, twice the width, smaller height and larger width


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A seeded transformers classifier and features model at 224, each saved with `save_pretrained`."""
    config = TransformersConfig(**SMALL_224, num_labels=7)
    saved = {}
    for task, cls in (("classify", HieraForImageClassification), ("features", HieraModel)):
        torch.manual_seed(0)
        reference = cls(config).eval()
        with torch.no_grad():  # away from init's zeros and ones, so that every weight matters
            for parameter in reference.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.02)
        directory = tmp_path_factory.mktemp(task)
        reference.save_pretrained(directory)
        saved[task] = directory, reference
    return saved


def sized_inputs(size) -> list[torch.Tensor]:
    """Batch 2 of noise, and a smooth image normalized like the real ones."""
    inputs = inputs_for(TransformersConfig(image_size=list(size)))
    return [inputs[1], inputs[-1]]


@pytest.mark.parametrize("size", SIZES)
@torch.no_grad()
def test_classify_and_features_match_transformers_interpolation(checkpoints, size):
    directory, reference = checkpoints["classify"]
    ours = hiera_model.load(directory, input_size=size)
    assert ours.config.input_size == size and ours.pos_embed.shape[1] == size[0] * size[1] // 16
    for pixel_values in sized_inputs(size):
        expected = reference(pixel_values, interpolate_pos_encoding=True).logits
        assert (ours(pixel_values) - expected).abs().max() <= TOLERANCE

    directory, reference = checkpoints["features"]
    ours = hiera_model.load(directory, task="features", input_size=size)
    for pixel_values in sized_inputs(size):
        expected = reference(pixel_values, interpolate_pos_encoding=True)
        got = ours(pixel_values)
        assert (got["last_hidden_state"] - expected.last_hidden_state).abs().max() <= TOLERANCE
        assert (got["pooler_output"] - expected.pooler_output).abs().max() <= TOLERANCE


@torch.no_grad()
def test_backbone_maps_at_448_match_transformers_rerolled_hidden_states(checkpoints):
    """transformers rerolls hidden states on the grid of its config's size, so the reference at 448 is its own
    HieraModel built for 448 with the 224 checkpoint's weights and the table its interpolate_pos_encoding
    makes; that it equals the 224 model run with interpolate_pos_encoding=True is checked first."""
    _, reference = checkpoints["features"]
    at_448 = HieraModel(TransformersConfig(**SMALL_224, image_size=[448, 448])).eval()
    state = reference.state_dict()
    embeddings = reference.embeddings
    state["embeddings.position_embeddings"] = embeddings.interpolate_pos_encoding(
        torch.zeros(1, 112 * 112, 16), embeddings.position_embeddings, 448, 448)
    at_448.load_state_dict(state)
    pixel_values = sized_inputs((448, 448))[0]
    expected = at_448(pixel_values, output_hidden_states=True)
    interpolated = reference(pixel_values, interpolate_pos_encoding=True).last_hidden_state
    assert (expected.last_hidden_state - interpolated).abs().max() <= 1e-6

    directory, _ = checkpoints["features"]
    ours = hiera_model.load(directory, task="backbone", input_size=(448, 448))
    maps = ours(pixel_values)
    assert list(maps) == ["stage1", "stage2", "stage3", "stage4"]
    for (name, got), hidden in zip(maps.items(), expected.reshaped_hidden_states[1:]):
        assert got.shape == hidden.permute(0, 3, 1, 2).shape
        assert (got - hidden.permute(0, 3, 1, 2)).abs().max() <= MAP_TOLERANCE, name
    assert maps["stage1"].shape[2:] == (112, 112) and maps["stage4"].shape[2:] == (14, 14)


def test_position_table_is_resized_as_transformers_resizes_it(checkpoints):
    """Bicubic, align_corners=False, no antialias: the same numbers as transformers' own method, upward and down."""
    _, reference = checkpoints["features"]
    embeddings = reference.embeddings
    table = embeddings.position_embeddings.detach()
    for height, width in [(448, 448), (160, 96)]:
        expected = embeddings.interpolate_pos_encoding(torch.zeros(1, 1, 16), table, height, width)
        assert torch.equal(resize_table(table, (56, 56), (height // 4, width // 4)), expected)


@torch.no_grad()
def test_the_resized_model_exports_static_with_one_unroll_gather(checkpoints):
    """As tests/hiera_model/test_export_ready.py checks at the native size: at 448 x 224 the traced graph
    still has one constant gather for the unroll and only the batch axis dynamic, and no tensor above rank 4."""
    directory, _ = checkpoints["classify"]
    model = hiera_model.load(directory, input_size=(448, 224))
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.randn(2, 3, 448, 224),), dynamic_shapes={"pixel_values": {0: batch}})
    ops = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert ops.count(torch.ops.aten.index_select.default) == 1
    assert torch.ops.aten.index.Tensor not in ops
    shapes = [node.meta["val"].shape for node in program.graph.nodes if isinstance(node.meta.get("val"), torch.Tensor)]
    assert all(isinstance(d, int) for shape in shapes for d in shape[1:])  # only the leading (batch) axis symbolic
    pixel_values = torch.randn(3, 3, 448, 224)
    torch.testing.assert_close(program.module()(pixel_values), model(pixel_values), rtol=0, atol=1e-6)
    with MaxRank() as mode:
        hiera_model.load(directory, task="features", input_size=(448, 224)).forward_features(
            pixel_values, return_stages=True)
    assert mode.rank <= 4


@torch.no_grad()
def test_mae_at_another_size(tmp_path):
    """transformers' HieraForPreTraining cannot run at another size (its mask and decoder grids come from its
    config), so the reference is its model built for the new size, holding the checkpoint's weights with both
    position tables resized by transformers' own interpolate_pos_encoding: our loader must build the same."""
    config = {**MAE_CONFIG, "image_size": [64, 64]}  # transformers' interpolation needs a square grid
    torch.manual_seed(0)
    reference = HieraForPreTraining(TransformersConfig(**config)).eval()
    for parameter in reference.parameters():
        parameter.add_(torch.randn_like(parameter) * 0.02)
    reference.save_pretrained(tmp_path)
    at_96 = HieraForPreTraining(TransformersConfig(**{**config, "image_size": [96, 96]})).eval()
    state = reference.state_dict()
    interpolate = reference.hiera.embeddings.interpolate_pos_encoding  # its patch stride: 4
    encoder_table, decoder_table = (state[k] for k in ("hiera.embeddings.position_embeddings",
                                                       "decoder.decoder_position_embeddings"))
    state["hiera.embeddings.position_embeddings"] = interpolate(torch.zeros(1, 1, 16), encoder_table, 96, 96)
    # the decoder's grid is the final one (16 x 16 tokens pooled twice: 4 x 4, at 96: 6 x 6)
    state["decoder.decoder_position_embeddings"] = interpolate(torch.zeros(1, 1, 32), decoder_table, 6 * 4, 6 * 4)
    at_96.load_state_dict(state)

    ours = hiera_model.load(tmp_path, task="mae", input_size=(96, 96), with_loss=True)
    assert ours.config.mask_units == 9 and ours.decoder_pos_embed.shape == (1, 36, 32)
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(2, 3, 96, 96, generator=generator)
    noise = torch.rand(2, 9, generator=generator)
    expected, got = at_96(pixel_values=pixel_values, noise=noise), ours(pixel_values, noise)
    assert (got["logits"] - expected.logits).abs().max() <= TOLERANCE
    assert torch.equal(got["bool_masked_pos"], expected.bool_masked_pos)
    assert (got["loss"].mean() - expected.loss).abs() <= TOLERANCE


@torch.no_grad()
def test_video_resizes_space_and_keeps_its_frames():
    """FAIR's video Hiera (and no other reference) has no resizing; ours resizes the spatial table only."""
    stored = hiera_model.load(FIXTURES / "reference" / "video_fair_hub")
    frames, height, width = stored.config.input_size
    model = hiera_model.load(FIXTURES / "reference" / "video_fair_hub", input_size=(96, 128))
    assert model.config.input_size == (frames, 96, 128)
    assert torch.equal(model.pos_embed_temporal, stored.pos_embed_temporal)
    grid = stored.config.tokens_spatial_shape[1:]
    assert torch.equal(model.pos_embed_spatial, resize_table(stored.pos_embed_spatial, grid, (24, 32)))
    assert model(torch.randn(1, 3, frames, 96, 128)).shape == (1, stored.config.num_classes)
    with pytest.raises(HieraModelError, match=r"must be \(height, width\)") as error:
        hiera_model.load(FIXTURES / "reference" / "video_fair_hub", input_size=(frames * 2, 96, 128))
    assert error.value.option == "input_size"


@pytest.mark.parametrize("size, message", [
    ((225, 224), "input size 225 x 224 breaks Hiera's rule: each side a multiple of 32 (patch stride 4 x mask unit 8)"
                 ", so that the token grid tiles into mask units and survives every query pooling; nearest valid "
                 "sizes: height 224 or 256, width 224"),
    ((16, 470), "nearest valid sizes: height 32, width 448 or 480"),
    ((224,), "input_size (224,) must be (height, width), two positive whole numbers"),
    ((224, 0), "input_size (224, 0) must be (height, width)"),
    ((224, True), "must be (height, width)"),
    ((8192, 8192), "makes 4,194,304 tokens"),
])
def test_sizes_that_break_the_rules_name_the_rule_and_the_nearest_sizes(size, message):
    with pytest.raises(HieraModelError) as error:
        hiera_model.create("tiny", input_size=size)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert error.value.option == "input_size"


def test_a_bad_size_is_refused_before_the_weights_are_read(checkpoints, monkeypatch):
    import hiera_model.checkpoints as checkpoints_module

    def never(*args):
        raise AssertionError("weights read")

    monkeypatch.setattr(checkpoints_module, "_read_weights", never)
    directory, _ = checkpoints["classify"]
    with pytest.raises(HieraModelError, match="input size 230 x 224 breaks"):
        hiera_model.load(directory, input_size=(230, 224))


def test_create_builds_for_the_size_and_counts_its_tokens():
    model = hiera_model.create(hiera_model.HieraConfig(embed_dim=8, depths=(1, 1, 1, 1)), task="backbone",
                               input_size=(512, 384))
    assert model.config.input_size == (512, 384) and model.stage_sizes[0] == (128, 96)
    assert model.pos_embed.shape == (1, 128 * 96, 8)
    assert np.prod(model.stage_sizes[-1]) == 128 * 96 // 64
