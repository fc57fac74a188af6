"""The one place that makes a model from (config, task, options): `build` (untrained), `create` (seeded
random weights); `checkpoints.load` builds through it too. Every option is checked here, once:

- `input_size` (height, width): the model for that input (a video keeps its frame count); a size that
  breaks Hiera's rules is refused with the rule and the nearest valid sizes.
- `out_features` (task "backbone"): the stage maps to output, refused with the choices if unknown.
- `with_loss` (task "mae"): add each image's loss to the outputs.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import HieraModelError
from .mae import MaskedAutoencoder
from .model import Hiera
from .sam2_config import is_sam2
from .variants import HieraConfig, check_task, get_variant


def build(config: HieraConfig, task: str = "classify", *, out_features=None, with_loss: bool = False,
          input_size=None) -> Hiera:
    """The model for `task` with untrained weights: a `Hiera`, or for "mae" its `MaskedAutoencoder`."""
    config = check_options(config, task, out_features=out_features, with_loss=with_loss, input_size=input_size)
    if task == "mae":
        return MaskedAutoencoder(config, with_loss=with_loss)
    return Hiera(config, task, out_features=_stage_order(config, out_features))


def check_options(config: HieraConfig, task: str, *, out_features=None, with_loss: bool = False,
                  input_size=None) -> HieraConfig:
    """`config` at `input_size`, once the options are known to suit `task`; else `HieraModelError`."""
    check_task(task)
    if input_size is not None:
        config = config.at_size(input_size)
    if with_loss not in (True, False):
        raise HieraModelError(f"{{option}} must be True or False, not {with_loss!r}", option="with_loss")
    if with_loss and task != "mae":
        raise HieraModelError(f"{{option}} adds the loss of MAE pretraining; task {task!r} has none",
                              option="with_loss")
    if out_features is not None:
        choices = [f"stage{i + 1}" for i in range(len(config.depths))]
        if task != "backbone":
            raise HieraModelError(f"{{option}} picks the stage maps of task 'backbone'; task {task!r} has none",
                                  option="out_features")
        if not isinstance(out_features, (str, list, tuple)):
            raise HieraModelError(f"{{option}} must be stage names, not {out_features!r}", option="out_features")
        names = [out_features] if isinstance(out_features, str) else list(out_features)
        unknown = [repr(n) for n in names if n not in choices]
        if not names or unknown:
            raise HieraModelError(f"{{option}} {', '.join(unknown) or '(none)'}: choose one or more of "
                                  f"{', '.join(choices)}", option="out_features")
    return config


def _stage_order(config: HieraConfig, out_features) -> tuple[str, ...] | None:
    if out_features is None:
        return None
    names = [out_features] if isinstance(out_features, str) else out_features
    return tuple(f"stage{i + 1}" for i in range(len(config.depths)) if f"stage{i + 1}" in names)


def create(variant: str | HieraConfig = "base", task: str = "classify", seed: int = 0, *, out_features=None,
           with_loss: bool = False, input_size=None) -> Hiera:
    """An eval-mode model with seeded random weights: a published variant's name (in its architecture for
    `task`) or any valid `HieraConfig`; the options as `build` takes them. A SAM 2 variant (or `Sam2Config`)
    makes SAM 2's image encoder (`sam2.create`)."""
    if is_sam2(variant):
        from .sam2 import create as create_sam2
        return create_sam2(variant, task, seed, out_features=out_features, with_loss=with_loss, input_size=input_size)
    config = variant if isinstance(variant, HieraConfig) else get_variant(variant).config_for(check_task(task))
    with torch.random.fork_rng(devices=[]):  # the layers' default init draws from the global RNG
        model = build(config, task, out_features=out_features, with_loss=with_loss, input_size=input_size)
    model = init_weights(model, seed)
    model.provenance = {"source": f"random:{seed}", "sha256": None, "verified": False}
    return model.eval()


@torch.no_grad()
def init_weights(model: Hiera, seed: int) -> Hiera:
    """Seeded random weights, drawn like transformers' `HieraPreTrainedModel._init_weights` (truncated
    normal, std 0.02; biases 0.02) but from a private generator, so no global RNG state is touched."""
    generator = torch.Generator().manual_seed(seed)
    std = 0.02
    for parameter in model.parameters(recurse=False):  # position embeddings, MAE's mask token
        nn.init.trunc_normal_(parameter, std=std, generator=generator)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            nn.init.trunc_normal_(module.weight, std=std, generator=generator)
            nn.init.constant_(module.bias, std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.constant_(module.bias, std)
    return model
