"""Hiera's MAE pretraining model (FAIR's `MaskedAutoencoderHiera`, transformers' `HieraForPreTraining`).

The mask is drawn from an input, `noise` [batch, mask units], exactly as both references draw it: the
units with the smallest noise stay visible. The graph is deterministic and every shape in it is static:
the number of visible units is fixed by the mask ratio, only which ones varies.

Unlike the references, which select visible tokens with boolean indexing and scatter them back with
boolean assignment (data-dependent shapes), this model gathers whole mask units:

    noise -> ids_shuffle (argsort) -> the first `visible` units are kept, in shuffled order
    tokens [batch, units, unit tokens, dim] -> gather the kept units -> encoder
    decoder: [kept units ; mask tokens] -> gather with ids_restore -> every unit back in its place

Attention is the same whatever the order of the units it sees, so the shuffled order changes nothing.
The multi-scale fusion heads are convolutions whose kernel equals their stride inside each mask unit:
one constant gather lines up each patch's tokens and the convolution becomes a matrix product.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import HieraBlock
from .errors import HieraModelError
from .model import Hiera
from .unroll import stage_grids, unit_patch_order, windows_to_spatial
from .variants import HieraConfig


class MaskedAutoencoder(Hiera):
    """`forward(pixel_values, noise)` returns `logits` [batch, tokens, pred_stride ** 2 * 3] (per patch of
    the final token grid, in spatial order), `bool_masked_pos` [batch, tokens] (True: visible, as
    transformers returns it), `ids_restore` [batch, mask units] and, with `with_loss`, the `loss` [batch]
    of each image: every image masks as many patches, so their mean is the references' batch loss.

    State dict names are FAIR's (`encoder_norm`, `multi_scale_fusion_heads.{i}`, `decoder_*`, `mask_token`).
    """

    def __init__(self, config: HieraConfig, with_loss: bool = False):
        if config.is_video:
            raise HieraModelError("MAE for video Hiera is not supported; export the video classifier instead")
        unroll_factor = tuple(s ** (len(config.depths) - 1) for s in config.q_stride)
        if config.mask_unit_size != unroll_factor:
            raise HieraModelError(f"MAE needs mask units as large as the unroll (q_stride ** (stages - 1) = "
                                  f"{unroll_factor}), as the references assume; got {config.mask_unit_size}")
        if config.visible_units < 1:
            raise HieraModelError(f"mask_ratio {config.mask_ratio} leaves no mask unit of {config.mask_units} visible")
        super().__init__(config, "mae")
        self.with_loss = with_loss  # add the loss to the outputs (it needs no labels: the targets are the pixels)
        dims, pools = config.stage_dims, config.q_pool
        final_unit = tuple(u // s**pools for u, s in zip(config.mask_unit_size, config.q_stride))
        final_grid = tuple(n // s**pools for n, s in zip(config.tokens_spatial_shape, config.q_stride))
        self.final_unit_tokens = math.prod(final_unit)
        self.pred_stride = config.patch_stride[-1] * config.q_stride[-1] ** pools
        self.unit_grid = tuple(n // u for n, u in zip(config.tokens_spatial_shape, config.mask_unit_size))

        # Fusion: the first `q_pool` stages through a convolution down to the final unit size, and the last stage.
        self.fused_stages = [*range(pools), len(dims) - 1]
        self.encoder_norm = nn.LayerNorm(dims[-1], eps=config.layer_norm_eps)
        self.multi_scale_fusion_heads = nn.ModuleList()
        grids = stage_grids(config)
        for i, stage in enumerate(self.fused_stages):
            unit_size = tuple(u // s ** min(stage, pools) for u, s in zip(config.mask_unit_size, config.q_stride))
            kernel = tuple(u // f for u, f in zip(unit_size, final_unit))
            if stage < pools:
                self.multi_scale_fusion_heads.append(nn.Conv2d(dims[stage], dims[-1], kernel, kernel))
            size, schedule = grids[stage]
            order = unit_patch_order(size, schedule, config.mask_units, unit_size, kernel)
            self.register_buffer(f"fusion_order{i}", torch.from_numpy(order), persistent=False)

        d = config.decoder_embed_dim
        self.decoder_embed = nn.Linear(dims[-1], d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, math.prod(final_grid), d))
        self.decoder_blocks = nn.ModuleList(
            HieraBlock(dim=d, dim_out=d, heads=config.decoder_num_heads, mlp_ratio=config.mlp_ratio, q_stride=1,
                       unit_tokens=math.prod(final_grid), units=1, use_mask_unit_attn=False,
                       eps=config.layer_norm_eps)
            for _ in range(config.decoder_depth))
        self.decoder_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.decoder_pred = nn.Linear(d, self.pred_stride ** 2 * config.in_chans)
        # The decoder works in spatial order of the final grid; the units arrive one after another.
        self.register_buffer("to_spatial", torch.from_numpy(windows_to_spatial(final_grid, final_unit)),
                             persistent=False)

    @property
    def input_names(self) -> list[str]:
        return ["pixel_values", "noise"]

    @property
    def output_names(self) -> list[str]:
        return ["logits", "bool_masked_pos", "ids_restore"] + (["loss"] if self.with_loss else [])

    def fuse(self, index: int, rows: torch.Tensor) -> torch.Tensor:
        """A fused stage's token rows [batch * kept units * unit tokens, dim] to [rows of final tokens, final dim]."""
        order = getattr(self, f"fusion_order{index}")
        patches = rows.unflatten(0, (-1, len(order))).index_select(1, order)  # [unit, patch tokens in order, dim]
        patches = patches.reshape(-1, len(order) // self.final_unit_tokens * rows.shape[-1])
        if index == len(self.multi_scale_fusion_heads):  # the last stage: no head
            return patches
        conv = self.multi_scale_fusion_heads[index]  # kernel == stride: a matrix product over each patch
        weight = conv.weight.permute(0, 2, 3, 1).flatten(1)  # [out, (kernel rows, kernel cols, in)]
        return nn.functional.linear(patches, weight, conv.bias)

    def forward(self, pixel_values: torch.Tensor, noise: torch.Tensor) -> dict[str, torch.Tensor]:
        units, visible = self.config.mask_units, self.config.visible_units
        ids_shuffle = noise.argsort(dim=1)  # ascending: the first `visible` units stay
        # The inverse permutation, sorted as floats (exact for any unit count): TensorRT's TopK takes floats.
        ids_restore = ids_shuffle.float().argsort(dim=1)
        kept = ids_restore < visible  # [batch, units], True where visible

        # Zero the dropped units' pixels before the patch embedding, whose kernel overlaps its neighbours.
        # Each row of units, [batch * unit rows, 1, unit columns, 1], is expanded to its pixels (rank 4 at most).
        (uh, uw), (sh, sw) = self.unit_grid, self.config.input_size
        pixel_mask = kept.to(pixel_values.dtype).reshape(-1, 1, uw, 1)
        pixel_mask = pixel_mask.expand(-1, sh // uh, -1, sw // uw).reshape(-1, 1, sh, sw)
        x = self.patch_embed(pixel_values * pixel_mask) + self.position_embedding()
        x = x.index_select(1, self.unroll).unflatten(1, (units, -1))  # [batch, units, unit tokens, dim]
        ids_keep = ids_shuffle[:, :visible, None, None].expand(-1, -1, *x.shape[2:])
        x = x.gather(1, ids_keep).flatten(0, 2)

        fused, fused_ends = 0, [self.stage_ends[s] for s in self.fused_stages]
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in fused_ends:
                fused = fused + self.fuse(fused_ends.index(i), x)
        x = self.decoder_embed(self.encoder_norm(fused))  # [batch * kept * final unit tokens, decoder dim]

        x = x.unflatten(0, (-1, visible, self.final_unit_tokens))
        mask_tokens = self.mask_token.unsqueeze(0).expand(x.shape[0], units - visible, self.final_unit_tokens, -1)
        x = torch.cat([x, mask_tokens], dim=1).gather(1, ids_restore[:, :, None, None].expand(-1, -1, *x.shape[2:]))
        x = x.flatten(1, 2).index_select(1, self.to_spatial) + self.decoder_pos_embed
        tokens = x.shape[1]
        x = x.flatten(0, 1)
        for block in self.decoder_blocks:
            x = block(x)
        logits = self.decoder_pred(self.decoder_norm(x)).unflatten(0, (-1, tokens))

        visible_tokens = kept.unsqueeze(2).expand(-1, -1, self.final_unit_tokens).flatten(1)
        outputs = {"logits": logits, "bool_masked_pos": visible_tokens.index_select(1, self.to_spatial),
                   "ids_restore": ids_restore}
        if self.with_loss:
            outputs["loss"] = self.loss(pixel_values, logits, outputs["bool_masked_pos"])
        return outputs

    def targets(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The pixels each logit row predicts: [batch, tokens, channels * pred_stride ** 2], each patch
        normalized on its own with `norm_pix_loss` (as both references compute it)."""
        p = self.pred_stride
        batch, channels, height, width = pixel_values.shape
        # [batch, channels, rows, p, columns, p] -> [batch, rows * columns, channels * p * p], in rank-4 steps:
        grid = pixel_values.reshape(-1, p, width // p, p).transpose(1, 2)  # [batch * channels * rows, columns, p, p]
        patches = grid.reshape(batch, channels, -1, p * p).transpose(1, 2)  # [batch, patches, channels, p * p]
        label = patches.reshape(batch, -1, channels * p * p)
        if self.config.norm_pix_loss:
            label = (label - label.mean(-1, keepdim=True)) / (label.var(-1, keepdim=True) + 1e-6).sqrt()
        return label

    def loss(self, pixel_values: torch.Tensor, logits: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Each image's mean squared error over its masked patches, [batch]. Per image, so that it does not
        depend on how images are batched."""
        masked = (~visible).to(logits.dtype).unsqueeze(-1)
        error = (logits - self.targets(pixel_values)).square() * masked
        return error.sum(dim=(1, 2)) / (masked.sum(dim=(1, 2)) * logits.shape[-1])
