"""Hiera in PyTorch, written for export, with loaders for the transformers, FAIR and timm checkpoints.

    import hiera_model
    model = hiera_model.create("base")                       # seeded random weights
    model = hiera_model.load("hiera-base-224-in1k-hf/")       # a local checkpoint, any layout
    logits = model(pixel_values)                             # [batch, 1000]
"""

from __future__ import annotations

import torch

from .checkpoints import load
from .errors import HieraModelError
from .mae import MaskedAutoencoder
from .model import Hiera, build, init_weights
from .variants import TASKS, VARIANTS, HieraConfig, Variant, check_task, get_variant

__all__ = ["create", "load", "Hiera", "MaskedAutoencoder", "HieraConfig", "HieraModelError", "Variant", "VARIANTS",
           "TASKS"]


def create(variant: str | HieraConfig = "base", task: str = "classify", seed: int = 0) -> Hiera:
    """An eval-mode Hiera with seeded random weights: a published variant's name (in its architecture for
    `task`) or any valid `HieraConfig`."""
    config = variant if isinstance(variant, HieraConfig) else get_variant(variant).config_for(task)
    with torch.random.fork_rng(devices=[]):  # the layers' default init draws from the global RNG
        model = init_weights(build(config, check_task(task)), seed)
    model.provenance = {"source": f"random:{seed}", "sha256": None, "verified": False}
    return model.eval()
