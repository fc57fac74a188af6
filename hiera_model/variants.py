"""Hiera's architecture as data: `HieraConfig` (any valid Hiera) and `VARIANTS` (the published ones).

Field names follow FAIR's `hiera.Hiera`, except that heads are listed per stage (transformers' style),
which says plainly what FAIR derives from `num_heads * head_mul ** stage`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import HieraModelError

TASKS = ("classify", "features", "backbone", "mae")


@dataclass(frozen=True)
class HieraConfig:
    embed_dim: int = 96
    num_heads: tuple[int, ...] = (1, 2, 4, 8)
    depths: tuple[int, ...] = (2, 3, 16, 3)
    input_size: tuple[int, ...] = (224, 224)
    in_chans: int = 3
    num_classes: int = 1000
    dim_mul: float = 2.0
    q_pool: int = 3
    q_stride: tuple[int, ...] = (2, 2)
    mask_unit_size: tuple[int, ...] = (8, 8)
    mask_unit_attn: tuple[bool, ...] = (True, True, False, False)
    patch_kernel: tuple[int, ...] = (7, 7)
    patch_stride: tuple[int, ...] = (4, 4)
    patch_padding: tuple[int, ...] = (3, 3)
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6
    sep_pos_embed: bool = False  # video: a spatial and a temporal position embedding, summed
    # Backbone: the stages ("stage1"..) whose maps get a LayerNorm, as transformers' HieraBackbone has them.
    stage_norms: tuple[str, ...] = ()
    # MAE pretraining (task "mae"), FAIR's `MaskedAutoencoderHiera` defaults.
    mask_ratio: float = 0.6  # the share of mask units dropped
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    norm_pix_loss: bool = True  # the targets: each patch normalized to zero mean and unit variance

    def __post_init__(self):
        # Accept lists (JSON configs) but store tuples, so that configs stay hashable and comparable.
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):
                object.__setattr__(self, field.name, tuple(value))
        self._validate()

    def _validate(self):
        def fail(message):
            raise HieraModelError(f"invalid Hiera config: {message}")

        stages = len(self.depths)
        if stages < 1 or min(self.depths) < 1:
            fail(f"depths {self.depths} must list at least one stage, each with at least one block")
        for name in ("num_heads", "mask_unit_attn"):
            if len(getattr(self, name)) != stages:
                fail(f"{name} {getattr(self, name)} must have one entry per stage ({stages})")
        if len(self.input_size) not in (2, 3):
            fail(f"input_size {self.input_size} must be (height, width) or, for video, (frames, height, width)")
        if self.sep_pos_embed and len(self.input_size) != 3:
            fail("sep_pos_embed (separate spatial and temporal position embeddings) is for video input only")
        for name in ("q_stride", "mask_unit_size", "patch_kernel", "patch_stride", "patch_padding"):
            if len(getattr(self, name)) != len(self.input_size):
                fail(f"{name} {getattr(self, name)} must have one entry per input dimension")
        if not 0 <= self.q_pool < stages:
            fail(f"q_pool {self.q_pool} must be at least 0 and less than the number of stages ({stages})")
        # After a global-attention stage, the reference implementations disagree on the first block
        # of a later mask-unit stage (FAIR lags the previous stage's choice, transformers ORs it).
        if any(not a and b for a, b in zip(self.mask_unit_attn, self.mask_unit_attn[1:])):
            fail(f"mask_unit_attn {self.mask_unit_attn} turns mask-unit attention back on after a global stage")
        for size, stride in zip(self.input_size, self.patch_stride):
            if size % stride:
                fail(f"input_size {self.input_size} is not divisible by patch_stride {self.patch_stride}")
        unroll_factor = [s ** (stages - 1) for s in self.q_stride]
        for tokens, factor, unit in zip(self.tokens_spatial_shape, unroll_factor, self.mask_unit_size):
            if tokens % factor or tokens % unit:
                fail(
                    f"the token grid {self.tokens_spatial_shape} (input_size / patch_stride) must be divisible by "
                    f"q_stride ** (stages - 1) = {tuple(unroll_factor)} and by mask_unit_size {self.mask_unit_size}"
                )
        for unit, factor in zip(self.mask_unit_size, unroll_factor):
            if unit % factor:
                fail(f"mask_unit_size {self.mask_unit_size} must be divisible by q_stride ** (stages - 1) = "
                     f"{tuple(unroll_factor)}, so that each mask unit survives every pooling")
        for stage, (dim, heads) in enumerate(zip(self.stage_dims, self.num_heads)):
            if dim != self.embed_dim * self.dim_mul ** stage:
                fail(f"stage {stage}'s dim, embed_dim * dim_mul ** {stage} = {self.embed_dim * self.dim_mul ** stage}, "
                     "must be a whole number")
            if heads < 1 or dim % heads:
                fail(f"stage {stage}'s dim {dim} must be divisible by its {heads} heads")
        for stage in range(1, self.q_pool + 1):
            if self.stage_dims[stage] == self.stage_dims[stage - 1]:
                fail(f"stage {stage} pools its queries, so its dim must differ from the previous stage's "
                     f"(the residual is projected and pooled only where the dim changes); got dim_mul {self.dim_mul}")
        unknown = [name for name in self.stage_norms if name not in [f"stage{i + 1}" for i in range(stages)]]
        if unknown:
            fail(f"stage_norms {self.stage_norms}: {', '.join(unknown)} is not a stage (stage1..stage{stages})")
        if not 0 <= self.mask_ratio < 1:
            fail(f"mask_ratio {self.mask_ratio} must be at least 0 and less than 1")
        if self.num_classes < 1:
            fail(f"num_classes {self.num_classes} must be positive")

    @property
    def tokens_spatial_shape(self) -> tuple[int, ...]:
        return tuple(s // p for s, p in zip(self.input_size, self.patch_stride))

    @property
    def is_video(self) -> bool:
        return len(self.input_size) == 3

    @property
    def mask_units(self) -> int:
        """How many mask units tile the token grid (it stays the same through every pooling)."""
        return math.prod(self.tokens_spatial_shape) // math.prod(self.mask_unit_size)

    @property
    def visible_units(self) -> int:
        """MAE: how many mask units stay visible (FAIR's and transformers' rounding)."""
        return int(self.mask_units * (1 - self.mask_ratio))

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(int(self.embed_dim * self.dim_mul ** s) for s in range(len(self.depths)))

    @property
    def num_features(self) -> int:
        return self.stage_dims[-1]

    def replace(self, **changes) -> HieraConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Variant:
    """A published Hiera model and the facts the paper and the model zoo state about it."""

    name: str
    config: HieraConfig
    params_m: float  # parameters of the classifier in millions, as published
    gmacs: float  # G multiply-adds per image or clip (the paper's "FLOPs"), as published
    top1: float  # top-1 of the MAE-pretrained, fine-tuned checkpoint on its dataset (ImageNet-1k or Kinetics-400)

    @property
    def transformers_id(self) -> str | None:
        """transformers publishes the image models only."""
        return None if self.config.is_video else f"facebook/hiera-{self.name.replace('_', '-')}-224-in1k-hf"

    @property
    def fair_name(self) -> str:
        return f"hiera_{self.name}" if self.config.is_video else f"hiera_{self.name}_224"

    def config_for(self, task: str) -> HieraConfig:
        """The architecture of this variant's checkpoint for `task`: FAIR pretrained the MAE models with two
        query poolings (the fine-tuned ones use three)."""
        return self.config.replace(q_pool=2) if check_task(task) == "mae" else self.config


def _variant(name, embed_dim, heads, depths, params_m, gmacs, top1) -> Variant:
    config = HieraConfig(embed_dim=embed_dim, num_heads=tuple(heads * 2**s for s in range(4)), depths=depths)
    return Variant(name, config, params_m, gmacs, top1)


def _video(image: Variant, params_m, gmacs, top1) -> Variant:
    """The 16-frame video model of an image variant (FAIR's `hiera_*_16x224`): 16 frames of 224 x 224,
    patches of 3 x 7 x 7 at stride 2 x 4 x 4, pooling and mask units in space only, 400 Kinetics classes."""
    config = image.config.replace(
        input_size=(16, 224, 224), q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7),
        patch_stride=(2, 4, 4), patch_padding=(1, 3, 3), sep_pos_embed=True, num_classes=400)
    return Variant(f"{image.name}_16x224", config, params_m, gmacs, top1)


# Ryali et al. 2023 (tables 4 and 11) and the FAIR model zoo. Images at 224 x 224 with 1000 classes;
# video clips of 16 frames at a temporal stride of 4, 400 classes.
_IMAGE = [
    _variant("tiny", 96, 1, (1, 2, 7, 2), 28, 5, 82.8),
    _variant("small", 96, 1, (1, 2, 11, 2), 35, 6, 83.8),
    _variant("base", 96, 1, (2, 3, 16, 3), 52, 9, 84.5),
    _variant("base_plus", 112, 2, (2, 3, 16, 3), 70, 13, 85.2),
    _variant("large", 144, 2, (2, 6, 36, 4), 214, 40, 86.1),
    _variant("huge", 256, 4, (2, 6, 36, 4), 673, 125, 86.9),
]
_by_name = {v.name: v for v in _IMAGE}
_VIDEO = [
    _video(_by_name["base"], 51, 102, 84.0),
    _video(_by_name["base_plus"], 69, 133, 85.0),
    _video(_by_name["large"], 213, 413, 87.3),
    _video(_by_name["huge"], 672, 1159, 87.8),
]
VARIANTS: dict[str, Variant] = {v.name: v for v in _IMAGE + _VIDEO}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise HieraModelError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None


def check_task(task: str) -> str:
    if task not in TASKS:
        raise HieraModelError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    return task
