"""Hiera in PyTorch, written for export, with loaders for the transformers, FAIR and timm checkpoints.

    import hiera_model
    model = hiera_model.create("base")                       # seeded random weights
    model = hiera_model.load("hiera-base-224-in1k-hf/")       # a local checkpoint, any layout
    logits = model(pixel_values)                             # [batch, 1000]

The configs, the variant table and the error types need no torch; the models import it on first use
(PEP 562), so that `python -m hiera_model` can say which extra to install where torch is missing.
"""

from __future__ import annotations

import importlib

from .errors import HieraModelError, VerificationError
from .sam2_config import SAM2_TASKS, SAM2_VARIANTS, Sam2Config, Sam2Variant
from .variants import TASKS, VARIANTS, HieraConfig, Variant, check_task, get_variant

__all__ = ["create", "load", "build", "Hiera", "MaskedAutoencoder", "HieraConfig", "HieraModelError",
           "VerificationError", "Variant", "VARIANTS", "TASKS", "check_task", "get_variant",
           "Sam2ImageEncoder", "Sam2Config", "Sam2Variant", "SAM2_VARIANTS", "SAM2_TASKS"]

INSTALL_HINT = "pip install 'hiera-deploy[model]'"
_NEEDS_TORCH = {"create": "factory", "build": "factory", "init_weights": "factory", "load": "checkpoints",
                "Hiera": "model", "MaskedAutoencoder": "mae", "Sam2ImageEncoder": "sam2"}


def require_torch() -> None:
    """`HieraModelError` with the extra to install, where torch is missing."""
    try:
        importlib.import_module("torch")
    except ImportError:
        raise HieraModelError(f"hiera_model needs torch, which is not installed: {INSTALL_HINT}") from None


def __getattr__(name: str):
    if name not in _NEEDS_TORCH:
        raise AttributeError(f"module 'hiera_model' has no attribute {name!r}")
    require_torch()
    value = getattr(importlib.import_module(f".{_NEEDS_TORCH[name]}", __name__), name)
    globals()[name] = value
    return value
