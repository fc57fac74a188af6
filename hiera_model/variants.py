"""Hiera's architecture as data: `HieraConfig` (any valid Hiera) and `VARIANTS` (the published ones).

Field names follow FAIR's `hiera.Hiera`, except that heads are listed per stage (transformers' style),
which says plainly what FAIR derives from `num_heads * head_mul ** stage`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import HieraModelError
from .sam2_config import SAM2_TASKS, SAM2_VARIANTS

TASKS = ("classify", "features", "backbone", "mae")

# What each config field may hold: its kind and, for numbers, its range (floats: above the low end). Wide
# enough for any real Hiera, narrow enough that no config (a hostile config.json) can make the model
# allocate without bound before its weights are compared with it. Tuples hold 1 to MAX_ENTRIES entries.
_FIELDS = {
    "embed_dim": (int, 1, 4096),
    "num_heads": ((int,), 1, 1024),
    "depths": ((int,), 0, 128),  # 0 is refused with Hiera's rule, below
    "input_size": ((int,), 1, 16384),
    "in_chans": (int, 1, 64),
    "num_classes": (int, 1, 1 << 20),
    "dim_mul": (float, 0, 8),
    "q_pool": (int, 0, 8),
    "q_stride": ((int,), 1, 16),
    "mask_unit_size": ((int,), 1, 1024),
    "mask_unit_attn": ((bool,), None, None),
    "patch_kernel": ((int,), 1, 64),
    "patch_stride": ((int,), 1, 64),
    "patch_padding": ((int,), 0, 64),
    "mlp_ratio": (float, 0, 64),
    "layer_norm_eps": (float, 0, 1),
    "sep_pos_embed": (bool, None, None),
    "stage_norms": ((str,), None, None),
    "mask_ratio": (float, None, None),  # its range is Hiera's rule, below
    "decoder_embed_dim": (int, 1, 4096),
    "decoder_depth": (int, 1, 128),
    "decoder_num_heads": (int, 1, 1024),
    "norm_pix_loss": (bool, None, None),
}
MAX_ENTRIES = 8  # stages or input dimensions
MAX_TOKENS = 1 << 20  # tokens of the patch grid: a 4096 x 4096 image at patch stride 4
MAX_DIM = 16384  # the widest stage


def check_field(name: str, value, label: str | None = None):
    """`value` as `HieraConfig` holds field `name` (a JSON list as a tuple, a whole number as a float where a
    float is due), or `HieraModelError` naming the field as `label` (a config file's own name for it)."""
    kind, low, high = _FIELDS[name]

    def fail(expected):
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise HieraModelError(f"invalid Hiera config: {label or name} {shown} must be {expected}")

    def one(item, kind):
        if kind is bool:
            return item if isinstance(item, bool) else None
        if kind is str:
            return item if isinstance(item, str) else None
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            return None
        if kind is int:
            return item if isinstance(item, int) and low <= item <= high else None
        if not math.isfinite(item) or (low is not None and not low < item <= high):
            return None
        return float(item)

    if isinstance(kind, tuple):
        (kind,) = kind
        what = {bool: "true/false values", str: "names"}.get(kind) or (
            f"whole numbers from {low} to {high}" if kind is int else f"numbers above {low}, at most {high}")
        if not isinstance(value, (list, tuple)) or len(value) > MAX_ENTRIES or (not value and kind is not str):
            fail(f"a list of {'0' if kind is str else '1'} to {MAX_ENTRIES} {what}")
        items = tuple(one(item, kind) for item in value)
        if any(item is None for item in items):
            fail(f"a list of {what}")
        return items
    checked = one(value, kind)
    if checked is None:
        fail({bool: "true or false", int: f"a whole number from {low} to {high}"}.get(kind) or (
            f"a finite number above {low}, at most {high}" if low is not None else "a finite number"))
    return checked


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
            object.__setattr__(self, field.name, check_field(field.name, getattr(self, field.name)))
        self._validate()

    def _validate(self):
        def fail(message):
            raise HieraModelError(f"invalid Hiera config: {message}")

        stages = len(self.depths)
        if min(self.depths) < 1:
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
        tokens = math.prod(self.tokens_spatial_shape)
        if tokens > MAX_TOKENS:
            fail(f"input_size {self.input_size} makes {tokens:,} tokens (input_size / patch_stride), more than the "
                 f"{MAX_TOKENS:,} a model here may have")
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
            if dim > MAX_DIM:
                fail(f"stage {stage}'s dim, embed_dim * dim_mul ** {stage} = {dim}, is more than the {MAX_DIM} a model "
                     "here may have")
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
        if self.decoder_embed_dim % self.decoder_num_heads:
            fail(f"decoder_embed_dim {self.decoder_embed_dim} must be divisible by decoder_num_heads "
                 f"{self.decoder_num_heads}")

    def at_size(self, size) -> HieraConfig:
        """This architecture for inputs of `size` = (height, width); a video keeps its frame count (no
        reference implementation resizes the temporal position embedding). A size that breaks Hiera's rules
        is refused with the rule and the nearest sizes that keep it."""
        shown = size if isinstance(size, (tuple, list)) else repr(size)
        if not isinstance(size, (tuple, list)) or len(size) != 2 or \
                not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size):
            raise HieraModelError(f"input_size {shown} must be (height, width), two positive whole numbers",
                                  option="input_size")
        spatial = len(self.input_size) - 2  # the first spatial axis
        # The token grid must divide by the mask units (which divide by every query stride), so each side
        # must be a multiple of patch stride x mask unit.
        steps = [self.patch_stride[spatial + i] * self.mask_unit_size[spatial + i] for i in range(2)]
        if any(n % step for n, step in zip(size, steps)):
            def nearest(n, step):
                options = sorted({max(step, n // step * step), -(-n // step) * step})
                return " or ".join(map(str, options))
            rule = (f"each side a multiple of {steps[0]} (patch stride {self.patch_stride[spatial]} x mask unit "
                    f"{self.mask_unit_size[spatial]})" if steps[0] == steps[1] else
                    f"the height a multiple of {steps[0]} and the width of {steps[1]} (patch stride x mask unit)")
            raise HieraModelError(
                f"input size {size[0]} x {size[1]} breaks Hiera's rule: {rule}, so that the token grid tiles into "
                f"mask units and survives every query pooling; nearest valid sizes: height "
                f"{nearest(size[0], steps[0])}, width {nearest(size[1], steps[1])}", option="input_size")
        try:
            return self.replace(input_size=(*self.input_size[:spatial], *size))
        except HieraModelError as error:  # too many tokens
            raise HieraModelError(str(error), option="input_size") from None

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
    if task in SAM2_TASKS:
        raise HieraModelError(f"task {task!r} is SAM 2's image encoder: use a SAM 2 variant "
                              f"({', '.join(SAM2_VARIANTS)}) or checkpoint")
    if task not in TASKS:
        raise HieraModelError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    return task
