import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import hiera_model
from hiera_model import HieraConfig, HieraModelError, VARIANTS
from hiera_model.model import Hiera


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameter_counts_are_the_published_ones(name):
    variant = VARIANTS[name]
    with torch.device("meta"):
        params = sum(p.numel() for p in Hiera(variant.config).parameters())
    assert round(params / 1e6) == variant.params_m


@pytest.mark.parametrize("name", list(VARIANTS))
def test_compute_is_the_published_one(name):
    """The paper's "FLOPs" count multiply-adds: counted on meta tensors, the image models' round to its
    figures; the video models' come within 1% (132.3 against 133 for B+, the farthest: the paper's counter
    also counts some element-wise work, which weighs more with 25,088 tokens)."""
    variant = VARIANTS[name]
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        Hiera(variant.config)(torch.empty(1, 3, *variant.config.input_size))
    gmacs = counter.get_total_flops() / 2e9
    if variant.config.is_video:
        assert gmacs == pytest.approx(variant.gmacs, rel=1e-2)
    else:
        assert round(gmacs) == variant.gmacs


def test_published_variants_are_told_apart_by_their_weights():
    """Shape inference relies on this: embed dim, depths or kind (image or video) differ between any two."""
    keys = [(v.config.embed_dim, v.config.depths, v.config.is_video) for v in VARIANTS.values()]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize("changes, message", [
    (dict(input_size=(200, 224)), "token grid (50, 56)"),
    (dict(input_size=(226, 224)), "not divisible by patch_stride"),
    (dict(num_heads=(1, 2, 4)), "one entry per stage"),
    (dict(num_heads=(1, 2, 5, 8)), "stage 2's dim 384 must be divisible by its 5 heads"),
    (dict(q_pool=4), "less than the number of stages"),
    (dict(mask_unit_attn=(True, False, True, False)), "back on after a global stage"),
    (dict(mask_unit_size=(4, 4)), "mask_unit_size (4, 4) must be divisible"),
    (dict(dim_mul=1.0), "dim must differ"),
    (dict(dim_mul=1.5, embed_dim=91), "embed_dim * dim_mul ** 1 = 136.5, must be a whole number"),
    (dict(input_size=(16, 224, 224)), "q_stride (2, 2) must have one entry per input dimension"),
    (dict(input_size=(2, 16, 224, 224)), "must be (height, width) or, for video, (frames, height, width)"),
    (dict(sep_pos_embed=True), "sep_pos_embed (separate spatial and temporal position embeddings) is for video"),
    (dict(mask_ratio=1.0), "mask_ratio 1.0 must be at least 0 and less than 1"),
    (dict(depths=(2, 0, 16, 3)), "at least one block"),
])
def test_invalid_configs_are_refused_with_the_reason(changes, message):
    with pytest.raises(HieraModelError, match="invalid Hiera config") as error:
        HieraConfig(**changes)
    assert message in str(error.value)


@pytest.mark.parametrize("config", [
    HieraConfig(embed_dim=32, depths=(1, 1, 1, 1), input_size=(128, 96), num_classes=3),
    HieraConfig(embed_dim=24, num_heads=(1, 2, 4), depths=(1, 2, 1), q_pool=2, mask_unit_size=(4, 4),
                mask_unit_attn=(True, False, False), input_size=(48, 80)),
    HieraConfig(embed_dim=32, num_heads=(2, 4), depths=(2, 2), q_pool=1, q_stride=(2, 2), mask_unit_size=(2, 2),
                mask_unit_attn=(False, False), input_size=(32, 32), mlp_ratio=2.0),
])
@torch.no_grad()
def test_custom_configs_run(config):
    model = hiera_model.create(config)
    assert model(torch.randn(2, 3, *config.input_size)).shape == (2, config.num_classes)
    features = hiera_model.create(config, task="features")(torch.randn(1, 3, *config.input_size))
    assert features["pooler_output"].shape == (1, config.num_features)


def test_configs_from_json_lists_equal_tuples():
    assert HieraConfig(depths=[2, 3, 16, 3], q_stride=[2, 2]) == VARIANTS["base"].config


def test_create_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = (hiera_model.create("tiny", seed=s) for s in (7, 7, 8))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.pos_embed, c.pos_embed)
    assert not a.training and a.provenance["source"] == "random:7"


@pytest.mark.parametrize("call, message", [
    (lambda: hiera_model.create("gigantic"), "unknown variant 'gigantic'; known: tiny, small"),
    (lambda: hiera_model.create("tiny", task="detect"), "unknown task 'detect'; known: classify, features"),
])
def test_unknown_names(call, message):
    with pytest.raises(HieraModelError, match=message):
        call()
