"""The Hiera transformer block and its MLP."""

from __future__ import annotations

import torch
from torch import nn

from .attention import MaskUnitAttention


def pool(x: torch.Tensor, stride: int, unit_tokens: int) -> torch.Tensor:
    """Max-pool unrolled token rows [batch * tokens, dim] over the outermost unroll stride of each
    mask unit of `unit_tokens` rows (see `unroll`)."""
    return x.unflatten(0, (-1, stride, unit_tokens // stride)).amax(dim=1).flatten(0, 1) if stride > 1 else x


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class HieraBlock(nn.Module):
    """Pre-norm attention and MLP on token rows [batch * tokens, dim]; the first block of a stage also
    projects (and pools) the residual."""

    def __init__(self, dim: int, dim_out: int, heads: int, mlp_ratio: float, q_stride: int, unit_tokens: int,
                 units: int, use_mask_unit_attn: bool, eps: float):
        super().__init__()
        self.q_stride = q_stride
        self.unit_tokens = unit_tokens
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = MaskUnitAttention(dim, dim_out, heads, q_stride, unit_tokens, units, use_mask_unit_attn)
        self.norm2 = nn.LayerNorm(dim_out, eps=eps)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio))
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_norm = self.norm1(x)
        if self.proj is not None:
            x = pool(self.proj(x_norm), self.q_stride, self.unit_tokens)
        x = x + self.attn(x_norm)
        return x + self.mlp(self.norm2(x))
