"""Hiera's token orders as constant index vectors.

Hiera "unrolls" the patch grid once so that query pooling and mask-unit attention become plain
reshapes. The reference code does this with a chain of view/permute steps on the activations
(up to rank 10 for video); for a fixed input size it is just a permutation of the tokens, computed
here once from the config and applied in the model as a single gather on the token axis.

A 4 x 4 token grid with one (2, 2) stride in the schedule:

    spatial order           unrolled order (4 groups of 4 tokens)
     0  1  2  3
     4  5  6  7     ->      [0 2 8 10 | 1 3 9 11 | 4 6 12 14 | 5 7 13 15]
     8  9 10 11              (y, x) even/even, even/odd, odd/even, odd/odd
    12 13 14 15

Each group holds one position of the 2 x 2 stride at every 2 x 2 window, so a max over the groups
(``x.unflatten(1, (4, -1)).amax(1)``) is a 2 x 2 max-pool whose result is again in spatial order for
the 2 x 2 grid. With k strides in the schedule, the first pooling consumes the outermost stride and
leaves the rest unrolled; after all k, whole mask units are contiguous runs of the innermost axis.

In that order (FAIR's and transformers'), a mask unit's tokens are strided by the number of units.
The model keeps them contiguous instead (``windows=`` the number of mask units): the same tokens as a
[tokens per unit, units] matrix, transposed. With 2 x 2 mask units on the grid above:

    [0 1 4 5 | 2 3 6 7 | 8 9 12 13 | 10 11 14 15]     each group one mask unit, in unrolled order

Attention within a unit is then a plain batched attention over [batch * units, tokens per unit], and
its head split a rank-4 transpose; pooling is a max over the outermost stride inside each unit.
Everything else in the model is per token and ignores the order.

`reroll_order` goes back: for the tokens of a stage (after its poolings), the position in the
sequence of each token of the stage's grid, in row-major spatial order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def unroll_order(size: Sequence[int], schedule: Sequence[Sequence[int]], windows: int = 1) -> np.ndarray:
    """Index vector `idx` with ``unrolled[:, i] = spatial[:, idx[i]]`` for a token grid of `size`; with
    `windows` mask units, each unit's tokens made contiguous (1: the reference's order).

    Built by applying the reference's reshape steps to a grid of token numbers instead of activations.
    """
    tokens = np.arange(math.prod(size)).reshape(1, *size)  # leading axis: the strides moved out so far
    for strides in schedule:
        size = [n // s for n, s in zip(size, strides)]
        split = [d for pair in zip(size, strides) for d in pair]  # (n0 // s0, s0, n1 // s1, s1, ...)
        tokens = tokens.reshape(tokens.shape[0], *split)
        stride_axes = list(range(2, 2 * len(size) + 1, 2))
        grid_axes = list(range(1, 2 * len(size), 2))
        tokens = tokens.transpose(0, *stride_axes, *grid_axes).reshape(-1, *size)
    return tokens.reshape(-1, windows).T.reshape(-1)


def reroll_order(size: Sequence[int], schedule: Sequence[Sequence[int]], windows: int = 1) -> np.ndarray:
    """Index vector `idx` with ``spatial[:, j] = unrolled[:, idx[j]]``: the inverse of `unroll_order`."""
    return np.argsort(unroll_order(size, schedule, windows))


def stage_grids(config) -> list[tuple[tuple[int, ...], list[tuple[int, ...]]]]:
    """For each stage of `config`: its token grid and the part of the unroll schedule still pending."""
    size = config.tokens_spatial_shape
    schedule = [tuple(config.q_stride)] * (len(config.depths) - 1)
    grids = []
    for stage in range(len(config.depths)):
        if 0 < stage <= config.q_pool:
            size = tuple(n // s for n, s in zip(size, config.q_stride))
            schedule = schedule[1:]
        grids.append((size, schedule))
    return grids


def unit_patch_order(size: Sequence[int], schedule: Sequence[Sequence[int]], units: int, unit_size: Sequence[int],
                     kernel: Sequence[int]) -> np.ndarray:
    """Index vector over one mask unit's tokens in the model's order (`unroll_order` with `units` windows)
    that lists them patch by patch: the (unit_size / kernel) patches of `kernel` tokens in row-major order,
    each patch's tokens in row-major order. With it, a convolution whose kernel equals its stride, applied
    inside each unit, is one matrix product (MAE's fusion heads); a kernel of ones gives spatial order.

    Every unit's tokens sit at the same offsets, so one vector serves all units (checked here).
    """
    order = unroll_order(size, schedule, units).reshape(units, -1)  # [unit, position] -> spatial token index
    coords = np.stack(np.unravel_index(order, size), axis=-1)  # [unit, position, axis]
    origins = coords.min(axis=1, keepdims=True)
    offsets = coords - origins  # position within the unit
    unit_grid = [n // u for n, u in zip(size, unit_size)]
    in_row_major = np.ravel_multi_index(tuple((origins[:, 0] // unit_size).T), unit_grid) == np.arange(units)
    if not (offsets == offsets[:1]).all() or (offsets.max(axis=(0, 1)) + 1 != np.asarray(unit_size)).any() \
            or not in_row_major.all():
        raise ValueError(f"the mask units of grid {tuple(size)} are not {tuple(unit_size)} blocks in row-major order")
    patches = [u // k for u, k in zip(unit_size, kernel)]
    patch = np.ravel_multi_index(tuple((offsets[0] // kernel).T), patches)
    within = np.ravel_multi_index(tuple((offsets[0] % kernel).T), tuple(kernel))
    return np.argsort(patch * math.prod(kernel) + within)


def windows_to_spatial(size: Sequence[int], unit_size: Sequence[int]) -> np.ndarray:
    """Index vector `idx` with ``spatial[:, j] = windowed[:, idx[j]]``, where `windowed` lists the tokens of
    a grid of `size` mask unit by mask unit (units in row-major order, each unit's tokens in row-major order)."""
    grid = np.arange(math.prod(size)).reshape(size)
    units = [n // u for n, u in zip(size, unit_size)]
    split = [d for pair in zip(units, unit_size) for d in pair]  # (units0, unit0, units1, unit1, ...)
    axes = list(range(0, 2 * len(size), 2)) + list(range(1, 2 * len(size), 2))
    windowed = grid.reshape(split).transpose(axes).reshape(-1)  # spatial index at each windowed position
    return np.argsort(windowed)
