"""SAM 2's image encoder for export: HieraDet, its FPN neck, and what SAM 2's image predictor adds for the
mask decoder (the no-memory embedding on the coarsest map, conv_s0 and conv_s1 on the two finer ones).

The reference code partitions windows with a pad and a rank-6 view/permute, and pools queries with a
reshape to a spatial map. Here each block's window layout is a constant token order computed from the
config (`window_layout`), applied with one gather on the token axis; padding positions are then zeroed
by a constant 0/1 mask, so they are zeros after the block's first norm exactly as in the reference (a
Pad op would need opset 18's form). Within a
window that pools its queries the tokens are ordered [pooling offset, pooled position], so pooling is a
max over one axis of a rank-4 view. The stream between blocks is [batch, tokens, dim] in row-major order;
no tensor is above rank 4 and only axis 0 depends on the batch.

The state dict uses our names (`checkpoints_sam2` maps the published layouts onto them).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .blocks import Mlp
from .errors import HieraModelError
from .sam2_config import SAM2_MODEL_TASKS, Sam2Config, get_sam2_variant


def window_layout(grid: tuple[int, int], window: tuple[int, int], q_stride: int):
    """The token orders of one block that attends within `window` (height, width) on a `grid` of tokens
    and pools its queries by `q_stride` (1: no pooling).

    Returns `into`: for each window (row-major) and each token in it, the row-major index of the grid
    token it holds, or grid size (the zero token) for padding; within a pooling window the tokens run
    [offset in the q_stride x q_stride cell, pooled position]. And `out`: for each token of the output grid
    (the grid divided by q_stride, row-major), its position in the windows' pooled outputs.
    """
    (height, width), (wh, ww), s = grid, window, q_stride
    rows, cols = -(-height // wh), -(-width // ww)  # windows per column and row, padding included
    ph, pw = wh // s, ww // s  # a pooled window
    offsets = [(dy, dx) for dy in range(s) for dx in range(s)]
    into = np.empty((rows, cols, s * s, ph, pw), np.int64)
    for wy in range(rows):
        for wx in range(cols):
            for o, (dy, dx) in enumerate(offsets):
                y = wy * wh + np.arange(ph)[:, None] * s + dy
                x = wx * ww + np.arange(pw)[None, :] * s + dx
                into[wy, wx, o] = np.where((y < height) & (x < width), y * width + x, height * width)
    out_y, out_x = np.divmod(np.arange((height // s) * (width // s)), width // s)
    window_index = (out_y // ph) * cols + out_x // pw
    out = window_index * (ph * pw) + (out_y % ph) * pw + out_x % pw
    return into.reshape(-1), out


def pool_order(grid: tuple[int, int], q_stride: int) -> np.ndarray:
    """Row-major grid tokens ordered [offset in the q_stride x q_stride cell, pooled position]: a max over
    the first axis of that order is a max-pool of the map with kernel and stride q_stride."""
    height, width = grid
    y, x = np.divmod(np.arange((height // q_stride) * (width // q_stride)), width // q_stride)
    return np.concatenate([(y * q_stride + dy) * width + x * q_stride + dx
                           for dy in range(q_stride) for dx in range(q_stride)])


def bicubic_matrix(size: int, out: int) -> torch.Tensor:
    """[out, size]: the matrix that resizes one axis of length `size` to `out` as torch's bicubic interpolation
    (align_corners False) does, made by interpolating each unit vector. Bicubic resizing is separable, so a
    map resizes as rows @ map @ columns.T: two MatMuls in any opset, where the Resize op needs opset 18's form."""
    basis = torch.eye(size, device="cpu")[None, :, :, None]  # cpu: also when the model is built on meta
    return F.interpolate(basis, size=(out, 1), mode="bicubic")[0, :, :, 0].T.contiguous()


def nearest_2x_order(grid: tuple[int, int]) -> np.ndarray:
    """For each token of a grid twice the size of `grid` (row-major), the token of `grid` that nearest
    upsampling copies into it."""
    height, width = grid
    y, x = np.divmod(np.arange(4 * height * width), 2 * width)
    return (y // 2) * width + x // 2


class WindowAttention(nn.Module):
    """Attention within groups of tokens [groups, tokens, dim]; with query pooling, each group's tokens run
    [offset, pooled position] and the queries are max-pooled over the `pool` offsets."""

    def __init__(self, dim: int, dim_out: int, heads: int, pool: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim_out // heads
        self.scale = self.head_dim**-0.5
        self.pool = pool  # q_stride ** 2; 1: no pooling
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[groups, tokens, dim] -> [groups, heads, tokens, head_dim]"""
        return x.unflatten(2, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=2)  # the reference's [3, heads, head_dim] column order
        if self.pool > 1:
            q = q.unflatten(1, (self.pool, -1)).amax(dim=1)
        attn = ((self._heads(q) * self.scale) @ self._heads(k).transpose(-1, -2)).softmax(dim=-1)
        return self.proj((attn @ self._heads(v)).transpose(1, 2).flatten(2))


class Sam2Block(nn.Module):
    """Pre-norm window (or global) attention and MLP on [batch, tokens, dim] in row-major grid order; the
    first block of a stage projects the residual and, at a pooling stage, max-pools it and the queries."""

    def __init__(self, config: Sam2Config, grid: tuple[int, int], dim: int, dim_out: int, heads: int, window: int,
                 q_stride: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attn = WindowAttention(dim, dim_out, heads, q_stride**2)
        self.norm2 = nn.LayerNorm(dim_out, eps=config.layer_norm_eps)
        self.mlp = Mlp(dim_out, int(dim_out * config.mlp_ratio))
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        self.pool = q_stride**2
        # A global block is one window over the whole grid; with no pooling its orders are the identity.
        window_shape = (window, window) if window else grid
        into, out = window_layout(grid, window_shape, q_stride)
        identity = len(into) == math.prod(grid) and (into == np.arange(len(into))).all()
        self.window_tokens = math.prod(window_shape)
        self.windows = len(into) // self.window_tokens  # per image
        padding = into == math.prod(grid)
        # Padding positions gather token 0 and are multiplied by 0.
        self.register_buffer("keep", torch.from_numpy(~padding).float()[None, :, None] if padding.any() else None,
                             persistent=False)
        into = np.where(padding, 0, into)
        self.register_buffer("into", None if identity else torch.from_numpy(into), persistent=False)
        self.register_buffer("out", None if identity else torch.from_numpy(out), persistent=False)
        self.register_buffer("pool_order", torch.from_numpy(pool_order(grid, q_stride)) if q_stride > 1 else None,
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(x)
        if self.proj is not None:
            x = self.proj(normed)
            if self.pool_order is not None:
                x = x.index_select(1, self.pool_order).unflatten(1, (self.pool, -1)).amax(dim=1)
        windows = normed
        if self.into is not None:
            windows = windows.index_select(1, self.into)
            if self.keep is not None:
                windows = windows * self.keep
            windows = windows.unflatten(1, (-1, self.window_tokens)).flatten(0, 1)
        attended = self.attn(windows)
        if self.out is not None:
            attended = attended.unflatten(0, (-1, self.windows)).flatten(1, 2).index_select(1, self.out)
        x = x + attended
        return x + self.mlp(self.norm2(x))


class Sam2ImageEncoder(nn.Module):
    """SAM 2's image encoder as its image predictor runs it: `pixel_values` [batch, 3, H, W] (normalized)
    -> `image_embeddings` [batch, fpn_dim, H/16, W/16] (no-memory embedding added), `high_res_feats_0`
    [batch, fpn_dim/8, H/4, W/4] (conv_s0), `high_res_feats_1` [batch, fpn_dim/4, H/8, W/8] (conv_s1).
    Make it with `hiera_model.create` or `hiera_model.load` (a SAM 2 variant, config or checkpoint).

    With task "backbone" it is HieraDet alone: `stage1` ... `stage4` [batch, stage width, height, width], each
    stage's last block's output (timm's `sam2_hiera_*` features), without the neck and the predictor's parts.
    With task "features" it is HieraDet and the head of timm's `sam2_hiera_*` model with num_classes=0:
    `last_hidden_state` [batch, tokens, width], the last block's tokens in row-major grid order (timm's
    `forward_features`, NHWC, flattened), and `pooler_output` [batch, width], their mean through a LayerNorm
    (`norm`, timm's `head.norm`)."""

    def __init__(self, config: Sam2Config, task: str = "image-encoder"):
        super().__init__()
        self.config = config
        self.task = task
        self.labels = None
        self.provenance = {"source": "untrained", "sha256": None, "verified": False}
        dims, grids = config.stage_dims, config.stage_grids
        self.patch_embed = nn.Conv2d(config.in_chans, config.embed_dim, config.patch_kernel, config.patch_stride,
                                     config.patch_padding)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.embed_dim, *config.window_pos_embed_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, config.embed_dim, config.window_sizes[0],
                                                         config.window_sizes[0]))
        for axis, (size, out) in enumerate(zip(config.window_pos_embed_size, grids[0])):
            self.register_buffer(f"pos_resize{axis}", bicubic_matrix(size, out), persistent=False)
        self.blocks = nn.ModuleList()
        self.stage_ends = []
        dim, grid = config.embed_dim, grids[0]
        for stage, depth in enumerate(config.depths):
            for i in range(depth):
                first = i == 0 and stage > 0
                q_stride = config.q_stride if first and stage <= config.q_pool else 1
                # A stage's first block still attends within the previous stage's windows.
                window = config.window_sizes[stage - 1 if first else stage]
                window = 0 if len(self.blocks) in config.global_blocks else window
                self.blocks.append(Sam2Block(config, grid, dim, dims[stage], config.num_heads[stage], window,
                                             q_stride))
                dim, grid = dims[stage], grids[stage]
            self.stage_ends.append(len(self.blocks) - 1)
        if task == "features":  # timm's ClNormMlpClassifierHead without its classifier: average, then norm
            self.norm = nn.LayerNorm(dims[-1], eps=config.layer_norm_eps)
        if task != "image-encoder":
            return
        # The neck's lateral 1x1 convolutions, coarsest stage first (FAIR's and transformers' order).
        self.neck = nn.ModuleList(nn.Conv2d(d, config.fpn_dim, 1) for d in reversed(dims))
        self.conv_s0 = nn.Conv2d(config.fpn_dim, config.fpn_dim // 8, 1)
        self.conv_s1 = nn.Conv2d(config.fpn_dim, config.fpn_dim // 4, 1)
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, config.fpn_dim))
        # The neck's top-down path doubles a map's size (nearest): one constant gather on its flattened grid
        # (a Resize would need opset 18's form), one per level that receives it.
        for level in config.fpn_top_down_levels:
            if level + 1 < len(grids):
                self.register_buffer(f"upsample{level}", torch.from_numpy(nearest_2x_order(grids[level + 1])),
                                     persistent=False)

    @property
    def input_names(self) -> list[str]:
        return ["pixel_values"]

    @property
    def output_names(self) -> list[str]:
        if self.task == "backbone":
            return [f"stage{stage}" for stage in range(1, len(self.config.depths) + 1)]
        if self.task == "features":
            return ["last_hidden_state", "pooler_output"]
        return ["image_embeddings", "high_res_feats_0", "high_res_feats_1"]

    def position_embedding(self) -> torch.Tensor:
        """[1, dim, grid height, grid width]: the background table resized (bicubic) to the token grid, plus
        the window table tiled over it (a constant for a fixed input size)."""
        height, width = self.config.tokens_spatial_shape
        window = self.pos_embed_window.shape[-1]
        background = self.pos_resize0 @ self.pos_embed @ self.pos_resize1.T  # bicubic, to the token grid
        # Tiled by concatenation: `repeat` lowers to a rank-8 broadcast in LiteRT (torch decomposes it through
        # an interleaved view), which its GPU delegate refuses; copies joined along each axis stay at rank 4.
        tiles = torch.cat([self.pos_embed_window] * (height // window), dim=2)
        return background + torch.cat([tiles] * (width // window), dim=3)

    def forward_stages(self, pixel_values: torch.Tensor, maps: bool = True):
        """Each stage's output map [batch, dim, height, width]; without `maps`, the last block's tokens [batch,
        tokens, dim] in row-major grid order."""
        x = (self.patch_embed(pixel_values) + self.position_embedding()).flatten(2).transpose(1, 2)
        stage_maps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if maps and i in self.stage_ends:
                stage_maps.append(x.transpose(1, 2).unflatten(2, self.config.stage_grids[len(stage_maps)]))
        return stage_maps if maps else x

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.task == "features":
            tokens = self.forward_stages(pixel_values, maps=False)
            return {"last_hidden_state": tokens, "pooler_output": self.norm(tokens.mean(dim=1))}
        maps = self.forward_stages(pixel_values)
        if self.task == "backbone":
            return dict(zip(self.output_names, maps))
        last = len(maps) - 1
        levels = [None] * len(maps)
        for level in range(last, -1, -1):  # coarse to fine; only the top-down levels add the coarser one
            lateral = self.neck[last - level](maps[level])
            if level in self.config.fpn_top_down_levels and level != last:
                coarse = levels[level + 1].flatten(2).index_select(2, getattr(self, f"upsample{level}"))
                lateral = lateral + coarse.unflatten(2, lateral.shape[2:])
            levels[level] = lateral
        return {
            "image_embeddings": levels[2] + self.no_mem_embed.transpose(1, 2).unsqueeze(-1),
            "high_res_feats_0": self.conv_s0(levels[0]),
            "high_res_feats_1": self.conv_s1(levels[1]),
        }


def check_sam2_options(task: str, out_features=None, with_loss: bool = False) -> None:
    """SAM 2's encoder has its tasks and none of Hiera's task options."""
    if task not in SAM2_MODEL_TASKS:
        raise HieraModelError(f"a SAM 2 image encoder has task 'image-encoder', not {task!r} (or HieraDet alone: "
                              "'backbone', its stage maps, or 'features', its pooled vector)", option="task")
    if out_features is not None or with_loss:
        option = "out_features" if out_features is not None else "with_loss"
        raise HieraModelError("{option} is an option of Hiera's tasks; SAM 2's image encoder has none",
                              option=option)


def create(variant: str | Sam2Config, task: str = "image-encoder", seed: int = 0, *, input_size=None,
           **hiera_options) -> Sam2ImageEncoder:
    """An eval-mode encoder with seeded random weights (`factory.init_weights`, as every model here): a
    published SAM 2 variant's name or any valid `Sam2Config`, at `input_size` if given."""
    from .factory import init_weights  # factory routes SAM 2 variants here

    check_sam2_options(task, **hiera_options)
    config = variant if isinstance(variant, Sam2Config) else get_sam2_variant(variant).config
    if input_size is not None:
        config = config.at_size(tuple(input_size) if isinstance(input_size, list) else input_size)
    with torch.random.fork_rng(devices=[]):  # the layers' default init draws from the global RNG
        model = Sam2ImageEncoder(config, task)
    model = init_weights(model, seed)
    model.provenance = {"source": f"random:{seed}", "sha256": None, "verified": False}
    return model.eval()
