"""A checkpoint at another input size: its position embeddings resized to the new token grid.

Exactly as transformers' `interpolate_pos_encoding` resizes them (bicubic, `align_corners=False`, no
antialias), but once, at load, so that the model and its exported graph hold the resized table as a
constant: a [1, tokens, dim] table is read as its 2-D grid, resized, and flattened back row by row.
Video resizes its spatial table (the frame count stays: no reference implementation resizes the temporal
one); MAE's decoder table, over the final token grid, is resized the same way.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import HieraModelError
from .variants import HieraConfig


def position_grids(config: HieraConfig) -> dict[str, tuple[int, ...]]:
    """The grid that each position table of a model of `config` covers, by state dict key."""
    tokens = config.tokens_spatial_shape
    pooled = tuple(n // s ** config.q_pool for n, s in zip(tokens, config.q_stride))
    if config.sep_pos_embed:  # video: [1, height * width, dim] and [1, frames, dim]
        return {"pos_embed_spatial": tokens[1:]}
    return {"pos_embed": tokens, "decoder_pos_embed": pooled}


def resize_position_embeddings(state: dict[str, torch.Tensor], old: HieraConfig, new: HieraConfig) -> None:
    """Resize, in `state`, the tables of a checkpoint of config `old` for a model of config `new`."""
    if old.tokens_spatial_shape == new.tokens_spatial_shape:
        return
    if old.is_video and not old.sep_pos_embed:
        raise HieraModelError("a video model with one position table over frames and space cannot change its input "
                              "size (no reference implementation resizes such a table)", option="input_size")
    new_grids = position_grids(new)
    for key, grid in position_grids(old).items():
        if key in state and grid != new_grids[key]:
            state[key] = resize_table(state[key], grid, new_grids[key])


def resize_table(table: torch.Tensor, grid, new_grid) -> torch.Tensor:
    """[1, prod(grid), dim] -> [1, prod(new_grid), dim], bicubic over the 2-D grid."""
    if len(grid) != 2 or table.shape[1] != math.prod(grid):
        raise HieraModelError(f"a position table of shape {tuple(table.shape)} is not a 2-D grid {tuple(grid)}")
    dim = table.shape[-1]
    image = table.reshape(1, *grid, dim).permute(0, 3, 1, 2)
    resized = nn.functional.interpolate(image, size=tuple(new_grid), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).reshape(1, -1, dim).contiguous()
