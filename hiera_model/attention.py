"""Mask-unit attention (or global attention), with optional query pooling, on unrolled tokens."""

from __future__ import annotations

import torch
from torch import nn


class MaskUnitAttention(nn.Module):
    """Attention within each mask unit (`use_mask_unit_attn`) or over all tokens.

    Tokens arrive unrolled (see `unroll`), so a mask unit's tokens are strided by the number of
    windows: viewing the sequence as [tokens_per_window, num_windows] puts each unit in a column.
    Query pooling is a max over the outermost stride, which in that view is a leading block of rows.
    Every tensor stays at rank 6 or less.
    """

    def __init__(self, dim: int, dim_out: int, heads: int, q_stride: int, window_size: int, use_mask_unit_attn: bool):
        super().__init__()
        self.dim_out = dim_out
        self.heads = heads
        self.head_dim = dim_out // heads
        self.scale = self.head_dim**-0.5
        self.q_stride = q_stride
        self.window_size = window_size
        self.use_mask_unit_attn = use_mask_unit_attn
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        windows = tokens // (self.q_stride * self.window_size) if self.use_mask_unit_attn else 1
        # [batch, tokens_per_window, windows, 3, heads, head_dim]
        #   -> [3, batch, heads, windows, tokens_per_window, head_dim]
        qkv = self.qkv(x).reshape(batch, -1, windows, 3, self.heads, self.head_dim).permute(3, 0, 4, 2, 1, 5)
        q, k, v = qkv.unbind(0)
        if self.q_stride > 1:
            q = q.unflatten(3, (self.q_stride, -1)).amax(dim=3)
        attn = ((q * self.scale) @ k.transpose(-1, -2)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 3).reshape(batch, -1, self.dim_out)
        return self.proj(x)
