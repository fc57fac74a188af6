"""SAM 2's Hiera image encoder as data: `Sam2Config` (any valid HieraDet with SAM 2's neck) and `SAM2_VARIANTS`
(the four published sizes of SAM 2 and SAM 2.1). No torch here: the table and the checks are imported by
command lines before torch is.

HieraDet (Ryali et al. 2023, as SAM 2 uses it) is Hiera without mask units: attention runs in square
windows whose size is set per stage, a few blocks attend globally, and the position embedding is a
small "background" table resized to the token grid plus a window-sized table tiled over it. The
encoder's outputs are what SAM 2's mask decoder consumes (`sam2.Sam2ImageEncoder`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import HieraModelError

SAM2_TASKS = ("image-encoder",)  # the tasks only SAM 2 has
# What a SAM 2 model can be built for: its image encoder, or HieraDet alone: "backbone" (the four stage maps, as
# timm's features_only model gives them) or "features" (the last stage's tokens and the pooled vector timm's
# `sam2_hiera_*` model gives with num_classes=0). Those two are Hiera's task names too (SAM2_SHARED_TASKS), so
# they route to SAM 2 by the variant or the checkpoint, not by the task.
SAM2_MODEL_TASKS = ("image-encoder", "backbone", "features")
SAM2_SHARED_TASKS = tuple(task for task in SAM2_MODEL_TASKS if task not in SAM2_TASKS)
SAM2_LICENSE = "Apache-2.0"  # FAIR's SAM 2 and SAM 2.1 weights (their code and checkpoints)

MAX_STAGES = 8
MAX_BLOCKS = 1024
MAX_TOKENS = 1 << 20  # a 4096 x 4096 image at patch stride 4
MAX_DIM = 16384


@dataclass(frozen=True)
class Sam2Config:
    """Field names follow FAIR's `sam2.modeling.backbones.hieradet.Hiera` where it has them."""

    embed_dim: int = 96
    num_heads: tuple[int, ...] = (1, 2, 4, 8)  # per stage
    depths: tuple[int, ...] = (1, 2, 7, 2)
    window_sizes: tuple[int, ...] = (8, 4, 14, 7)  # per stage; a stage's first block uses the previous stage's
    global_blocks: tuple[int, ...] = (5, 7, 9)  # blocks (counted over all stages) that attend over the whole map
    window_pos_embed_size: tuple[int, int] = (7, 7)  # the background position table, resized to the token grid
    input_size: tuple[int, int] = (1024, 1024)
    in_chans: int = 3
    q_pool: int = 3  # how many stage changes pool the queries (by 2 x 2)
    fpn_dim: int = 256  # the neck's width: the image embedding's channels
    fpn_top_down_levels: tuple[int, ...] = (2, 3)  # the levels that add the coarser level, upsampled
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-6
    # Fixed in every SAM 2 model; kept as fields so that a config file stating other values is refused by name.
    patch_kernel: int = 7
    patch_stride: int = 4
    patch_padding: int = 3
    q_stride: int = 2

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            object.__setattr__(self, field.name, check_sam2_field(field.name, value))
        self._validate()

    def _validate(self):
        def fail(message):
            raise HieraModelError(f"invalid SAM 2 config: {message}")

        stages = len(self.depths)
        blocks = sum(self.depths)
        if min(self.depths) < 1 or blocks > MAX_BLOCKS:
            fail(f"depths {self.depths} must give each stage at least one block, at most {MAX_BLOCKS} in all")
        for name in ("num_heads", "window_sizes"):
            if len(getattr(self, name)) != stages:
                fail(f"{name} {getattr(self, name)} must have one entry per stage ({stages})")
        if not 0 <= self.q_pool < stages:
            fail(f"q_pool {self.q_pool} must be at least 0 and less than the number of stages ({stages})")
        if stages < 3 or any(level not in range(stages) for level in self.fpn_top_down_levels):
            fail(f"fpn_top_down_levels {self.fpn_top_down_levels} must be stages (0..{stages - 1}); the neck needs "
                 "at least 3 stages")
        past = [b for b in self.global_blocks if b >= blocks]
        if past:
            fail(f"global-attention block {past[0]} is past the depth: the blocks are 0..{blocks - 1}")
        for stage in range(1, self.q_pool + 1):
            first = sum(self.depths[:stage])
            if first in self.global_blocks:
                fail(f"global-attention block {first} is the first block of stage {stage}, which pools its queries "
                     "inside windows; neither SAM 2 nor transformers can run that")
            if self.window_sizes[stage - 1] % self.q_stride:
                fail(f"window size {self.window_sizes[stage - 1]} of stage {stage - 1} must be divisible by the query "
                     f"stride {self.q_stride}: stage {stage}'s first block pools its queries inside those windows")
        for stage, (dim, heads) in enumerate(zip(self.stage_dims, self.num_heads)):
            if dim > MAX_DIM or dim % heads:
                fail(f"stage {stage}'s width {dim} must be divisible by its {heads} heads and at most {MAX_DIM}")
        self._validate_size(fail)

    def _validate_size(self, fail):
        height, width = self.input_size
        if height % self.patch_stride or width % self.patch_stride:
            fail(f"input size {height} x {width} must be divisible by the patch stride {self.patch_stride}")
        grid = self.tokens_spatial_shape
        if math.prod(grid) > MAX_TOKENS:
            fail(f"input size {height} x {width} makes {math.prod(grid):,} tokens, more than {MAX_TOKENS:,}")
        step = self.patch_stride * self.q_stride ** self.q_pool
        if any(side % (self.q_stride ** self.q_pool) for side in grid):
            fail(f"input size {height} x {width}: each side must be a multiple of {step} (patch stride "
                 f"{self.patch_stride} x query stride {self.q_stride} ** {self.q_pool} poolings), so that every "
                 "query pooling halves the token grid exactly")
        window = self.window_sizes[0]
        if any(side % window for side in grid):
            fail(f"input size {height} x {width}: the token grid {grid[0]} x {grid[1]} must be divisible by the first "
                 f"stage's window size {window}, which the window position embedding is tiled by")

    def at_size(self, size) -> Sam2Config:
        """This architecture for inputs of `size` = (height, width); the checks say which rule a size breaks."""
        shown = size if isinstance(size, (tuple, list)) else repr(size)
        if not isinstance(size, (tuple, list)) or len(size) != 2 or \
                not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size):
            raise HieraModelError(f"input_size {shown} must be (height, width), two positive whole numbers",
                                  option="input_size")
        try:
            return dataclasses.replace(self, input_size=tuple(size))
        except HieraModelError as error:
            raise HieraModelError(str(error), option="input_size") from None

    @property
    def is_video(self) -> bool:  # asked of every model's config by the export
        return False

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2 ** s for s in range(len(self.depths)))

    @property
    def tokens_spatial_shape(self) -> tuple[int, int]:
        return tuple(side // self.patch_stride for side in self.input_size)

    @property
    def stage_grids(self) -> list[tuple[int, int]]:
        """Each stage's token grid (height, width)."""
        height, width = self.tokens_spatial_shape
        grids = []
        for stage in range(len(self.depths)):
            if 0 < stage <= self.q_pool:
                height, width = height // self.q_stride, width // self.q_stride
            grids.append((height, width))
        return grids

    @property
    def output_shapes(self) -> dict[str, tuple[int, int, int]]:
        """Each output's [channels, height, width] per image."""
        grids = self.stage_grids
        return {"image_embeddings": (self.fpn_dim, *grids[2]), "high_res_feats_0": (self.fpn_dim // 8, *grids[0]),
                "high_res_feats_1": (self.fpn_dim // 4, *grids[1])}


_INT_FIELDS = {"embed_dim": (1, 4096), "in_chans": (1, 64), "q_pool": (0, MAX_STAGES), "fpn_dim": (8, 4096),
               "patch_kernel": (7, 7), "patch_stride": (4, 4), "patch_padding": (3, 3), "q_stride": (2, 2)}
_TUPLE_FIELDS = {"num_heads": (1, 1024), "depths": (1, 128), "window_sizes": (1, 1024),
                 "global_blocks": (0, MAX_BLOCKS - 1), "window_pos_embed_size": (1, 1024), "input_size": (1, 16384),
                 "fpn_top_down_levels": (0, MAX_STAGES - 1)}
_FLOAT_FIELDS = {"mlp_ratio": 64.0, "layer_norm_eps": 1.0}


def check_sam2_field(name: str, value, label: str | None = None):
    """`value` as field `name` holds it (a list as a tuple), or one line naming the field, as `label` (a config
    file's own name for it) where given, and its rule."""
    label = label or name
    def whole(n, low, high):
        return isinstance(n, int) and not isinstance(n, bool) and low <= n <= high

    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    if name in _INT_FIELDS:
        low, high = _INT_FIELDS[name]
        if not whole(value, low, high):
            rule = f"{low}, as in every SAM 2 model" if low == high else f"a whole number from {low} to {high}"
            raise HieraModelError(f"invalid SAM 2 config: {label} {shown} must be {rule}")
        return value
    if name in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 < value <= _FLOAT_FIELDS[name]:
            raise HieraModelError(f"invalid SAM 2 config: {label} {shown} must be a number above 0, at most "
                                  f"{_FLOAT_FIELDS[name]}")
        return float(value)
    low, high = _TUPLE_FIELDS[name]
    fewest, most = {"window_pos_embed_size": (2, 2), "input_size": (2, 2),
                    "global_blocks": (0, MAX_BLOCKS)}.get(name, (1, MAX_STAGES))
    entries = f"{fewest}" if fewest == most else f"{fewest} to {most}"
    if not isinstance(value, (list, tuple)) or not fewest <= len(value) <= most \
            or not all(whole(n, low, high) for n in value):
        raise HieraModelError(f"invalid SAM 2 config: {label} {shown} must be a list of {entries} whole numbers from "
                              f"{low} to {high}")
    if name == "global_blocks":
        return tuple(sorted(set(value)))
    return tuple(value)


@dataclass(frozen=True)
class Sam2Variant:
    """A published SAM 2 or SAM 2.1 image encoder: FAIR's name, the checkpoints' sources and licence."""

    name: str  # FAIR's config name: sam2_hiera_tiny, sam2.1_hiera_tiny, ...
    config: Sam2Config
    license: str = SAM2_LICENSE

    @property
    def transformers_id(self) -> str:
        return "facebook/" + self.name.replace("_hiera_", "-hiera-").replace("_", "-")

    @property
    def fair_file(self) -> str:
        return f"{self.name}.pt"


def _sizes() -> dict[str, Sam2Config]:
    """FAIR's sam2 configs (sam2_hiera_{t,s,b+,l}.yaml); SAM 2.1 changed training, not the image encoder."""
    return {
        "tiny": Sam2Config(embed_dim=96, num_heads=(1, 2, 4, 8), depths=(1, 2, 7, 2), global_blocks=(5, 7, 9)),
        "small": Sam2Config(embed_dim=96, num_heads=(1, 2, 4, 8), depths=(1, 2, 11, 2), global_blocks=(7, 10, 13)),
        "base_plus": Sam2Config(embed_dim=112, num_heads=(2, 4, 8, 16), depths=(2, 3, 16, 3),
                                global_blocks=(12, 16, 20), window_pos_embed_size=(14, 14)),
        "large": Sam2Config(embed_dim=144, num_heads=(2, 4, 8, 16), depths=(2, 6, 36, 4), global_blocks=(23, 33, 43),
                            window_sizes=(8, 4, 16, 8)),
    }


SAM2_VARIANTS: dict[str, Sam2Variant] = {
    f"{release}_hiera_{size}": Sam2Variant(f"{release}_hiera_{size}", config)
    for release in ("sam2", "sam2.1") for size, config in _sizes().items()
}


def is_sam2(variant) -> bool:
    """Whether `variant` (a name or a config) is a SAM 2 image encoder."""
    return isinstance(variant, Sam2Config) or (isinstance(variant, str) and variant in SAM2_VARIANTS)


def get_sam2_variant(name: str) -> Sam2Variant:
    try:
        return SAM2_VARIANTS[name]
    except KeyError:
        raise HieraModelError(f"unknown SAM 2 variant {name!r}; known: {', '.join(SAM2_VARIANTS)}") from None
