"""Reference cases that the test suite and `tools/parity_report.py` share (as `numpy.testing` is numpy's): small
transformers configs and their inputs, the seeded transformers MAE model, and the architecture of FAIR's MAE
fixture. Not imported by the package itself; transformers is imported only by `transformers_mae_model`."""

from __future__ import annotations

import torch

from .variants import HieraConfig

# transformers `HieraConfig` arguments of the configs our model is compared with, on their own checkpoints.
PARITY_CONFIGS = {
    "tiny": dict(embed_dim=96, depths=[1, 2, 7, 2], num_heads=[1, 2, 4, 8]),
    "base": dict(embed_dim=96, depths=[2, 3, 16, 3], num_heads=[1, 2, 4, 8]),
    # Three stages, 4 x 4 mask units, a non-square input and another width.
    "custom": dict(embed_dim=48, depths=[1, 2, 3], num_heads=[2, 4, 8], image_size=[64, 96], num_query_pool=2,
                   masked_unit_size=[4, 4], masked_unit_attention=[True, False, False], mlp_ratio=3.0),
    # Fewer query poolings than stages - 1: the last stage stays partly unrolled.
    "custom_q_pool": dict(embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], image_size=[64, 64],
                          num_query_pool=2),
}

# MAE like the published `facebook/hiera-*-224-mae-hf` (two query poolings), small, with a small decoder.
MAE_CONFIG = dict(embed_dim=16, depths=[1, 2, 2, 1], num_heads=[1, 2, 4, 8], image_size=[64, 96], num_query_pool=2,
                  decoder_hidden_size=32, decoder_depth=2, decoder_num_heads=2)

# FAIR's arguments of the MAE fixture (tests/fixtures/reference/about.json's mae_args).
FAIR_MAE = HieraConfig(embed_dim=16, num_heads=(1, 2, 4, 8), depths=(1, 2, 2, 1), input_size=(64, 96), q_pool=2,
                       decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2)


def inputs_for(config) -> list[torch.Tensor]:
    """Four inputs for a transformers config: batch 1, 2 and 4 of seeded noise, and a smooth image normalized like
    the real ones."""
    height, width = config.image_size
    noise = [torch.randn(b, 3, height, width, generator=torch.Generator().manual_seed(b)) for b in (1, 2, 4)]
    ramp = torch.linspace(0, 1, height * width).reshape(1, 1, height, width)
    image = torch.cat([ramp, ramp.flip(-1), ramp.transpose(-1, -2).reshape(1, 1, height, width)], dim=1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return [*noise, (image - mean[:, None, None]) / std[:, None, None]]


def transformers_mae_model():
    """A seeded transformers `HieraForPreTraining` of `MAE_CONFIG`. Its initialization leaves the mask token
    and some biases at zero; every weight is perturbed so that none is."""
    from transformers import HieraConfig as TransformersConfig
    from transformers import HieraForPreTraining

    torch.manual_seed(0)
    model = HieraForPreTraining(TransformersConfig(**MAE_CONFIG)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model
