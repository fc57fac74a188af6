"""Mask-unit attention (or global attention), with optional query pooling, on unrolled tokens."""

from __future__ import annotations

import torch
from torch import nn


class MaskUnitAttention(nn.Module):
    """Attention within each mask unit (`use_mask_unit_attn`) or over all tokens of an image.

    Tokens arrive as rows [batch * tokens, dim], unrolled with each mask unit's `unit_tokens` rows
    contiguous (see `unroll`), so mask-unit attention is ordinary batched attention over groups of
    `unit_tokens` rows and every Linear is one GEMM. Query pooling is a max over the outermost stride
    within each unit. Every tensor stays at rank 4 or less; the head split and merge are rank-4
    transposes; only the leading axis depends on the batch.
    """

    def __init__(self, dim: int, dim_out: int, heads: int, q_stride: int, unit_tokens: int, units: int,
                 use_mask_unit_attn: bool):
        super().__init__()
        self.dim_out = dim_out
        self.heads = heads
        self.head_dim = dim_out // heads
        self.scale = self.head_dim**-0.5
        self.q_stride = q_stride
        self.unit_tokens = unit_tokens
        self.group_units = 1 if use_mask_unit_attn else units  # mask units per attention group
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [groups, tokens, 3 * heads, head_dim] -> [groups, 3 * heads, tokens, head_dim]
        group_tokens = self.group_units * self.unit_tokens
        qkv = self.qkv(x).reshape(-1, group_tokens, 3 * self.heads, self.head_dim).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=1)
        if self.q_stride > 1:  # a group's tokens: [units, q_stride, tokens per unit / q_stride]
            # Units and heads folded into the leading axis keep this at rank 4 (for LiteRT's GPU delegate and NNAPI).
            pooled_tokens = self.unit_tokens // self.q_stride
            q = q.reshape(-1, self.q_stride, pooled_tokens, self.head_dim).amax(dim=1)
            q = q.reshape(-1, self.heads, self.group_units * pooled_tokens, self.head_dim)
        attn = ((q * self.scale) @ k.transpose(-1, -2)).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(-1, self.dim_out)
        return self.proj(x)
