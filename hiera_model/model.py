"""Hiera for export: one gather to unroll, plain reshapes inside, constant gathers to reroll."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .blocks import HieraBlock
from .errors import HieraModelError
from .unroll import reroll_order, stage_grids, unroll_order
from .variants import HieraConfig, check_task


class PatchEmbed(nn.Module):
    def __init__(self, config: HieraConfig):
        super().__init__()
        conv = nn.Conv3d if config.is_video else nn.Conv2d
        self.proj = conv(config.in_chans, config.embed_dim, config.patch_kernel, config.patch_stride,
                         config.patch_padding)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_values).flatten(2).transpose(1, 2)  # [batch, tokens in spatial order, dim]


class Hiera(nn.Module):
    """Hiera for images or clips; `task` picks the output: "classify" gives logits, "features" a dict with
    `last_hidden_state` (the final tokens, as transformers' `HieraModel`) and `pooler_output`, "backbone"
    a dict of stage maps `stage1`.. channels first (FAIR's `return_intermediates`, NCHW or NCTHW), those
    named in `out_features` (default: all), layer-normed where `config.stage_norms` says. Task "mae" is
    `mae.MaskedAutoencoder`, built on this class. Make models with `factory.build` (it checks the options).

    The state dict uses FAIR's names, except that `head` is the classifier Linear itself (FAIR's
    `head.projection`) and returns logits: FAIR applies softmax in eval mode, transformers and timm don't.
    """

    def __init__(self, config: HieraConfig, task: str = "classify", out_features: tuple[str, ...] | None = None):
        super().__init__()
        if check_task(task) == "mae" and type(self) is Hiera:
            raise HieraModelError("task 'mae' is the MaskedAutoencoder model: make it with build(), create() or load()")
        self.config = config
        self.task = task
        self.labels: tuple[str, ...] | None = None  # class names, when the checkpoint carries them
        # Where the weights came from (create() and load() set it): source, sha256, verified against models.lock.
        self.provenance = {"source": "untrained", "sha256": None, "verified": False}

        dims = config.stage_dims
        self.patch_embed = PatchEmbed(config)
        tokens = config.tokens_spatial_shape
        if config.sep_pos_embed:  # video: FAIR's names and shapes
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, math.prod(tokens[1:]), config.embed_dim))
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, tokens[0], config.embed_dim))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(tokens), config.embed_dim))

        # Token orders (see `unroll`): ours keeps each mask unit contiguous; the reference's strides them.
        grids = stage_grids(config)
        units = config.mask_units
        self.register_buffer("unroll", torch.from_numpy(unroll_order(*grids[0], units)), persistent=False)
        for stage, grid in enumerate(grids):
            self.register_buffer(f"reroll{stage}", torch.from_numpy(reroll_order(*grid, units)), persistent=False)
        self.stage_sizes = [size for size, _ in grids]
        # `last_hidden_state` is in the reference's order: a gather, unless the orders agree at the end
        # (one token per unit, as in every published variant).
        to_reference = reroll_order(*grids[-1], units)[unroll_order(*grids[-1])]
        in_order = (to_reference == np.arange(len(to_reference))).all()
        self.register_buffer("to_reference", None if in_order else torch.from_numpy(to_reference), persistent=False)

        # The units that attention groups: MAE's encoder sees only the visible ones.
        attention_units = config.visible_units if task == "mae" else units
        self.blocks = nn.ModuleList()
        self.stage_ends = []
        dim, tokens = config.embed_dim, math.prod(self.stage_sizes[0])  # per image, at the block's input
        for stage, depth in enumerate(config.depths):
            for i in range(depth):
                first = i == 0 and stage > 0
                q_stride = math.prod(config.q_stride) if first and stage <= config.q_pool else 1
                self.blocks.append(HieraBlock(
                    dim=dim,
                    dim_out=dims[stage],
                    heads=config.num_heads[stage],
                    mlp_ratio=config.mlp_ratio,
                    q_stride=q_stride,
                    unit_tokens=tokens // units,
                    units=attention_units,
                    # A stage's first block still attends within the previous stage's mask units.
                    use_mask_unit_attn=config.mask_unit_attn[stage - 1 if first else stage],
                    eps=config.layer_norm_eps,
                ))
                dim, tokens = dims[stage], tokens // q_stride
            self.stage_ends.append(len(self.blocks) - 1)

        self.norm = nn.LayerNorm(dim, eps=config.layer_norm_eps) if task in ("classify", "features") else None
        self.head = nn.Linear(dim, config.num_classes) if task == "classify" else None
        # backbone: the stage maps it outputs, in stage order
        self.out_features = out_features or tuple(f"stage{i + 1}" for i in range(len(config.depths)))
        # transformers' HieraBackbone builds its stage norms with LayerNorm's default eps, not the model's.
        self.stage_norms = nn.ModuleDict({name: nn.LayerNorm(dims[int(name.removeprefix("stage")) - 1])
                                          for name in config.stage_norms} if task == "backbone" else {})

    def position_embedding(self) -> torch.Tensor:
        """[1, tokens, dim] in spatial order; video sums a spatial and a temporal table (a constant once exported)."""
        if not self.config.sep_pos_embed:
            return self.pos_embed
        frames = self.pos_embed_temporal.shape[1]
        return (self.pos_embed_spatial.repeat(1, frames, 1)
                + self.pos_embed_temporal.repeat_interleave(self.pos_embed_spatial.shape[1], dim=1))

    def forward_features(self, pixel_values: torch.Tensor, return_stages: bool = False):
        """Final tokens [batch, tokens, dim] in the model's own order and, if asked, each stage's output
        rerolled to a spatial map [batch, (frames,) height, width, dim] (FAIR's `return_intermediates`)."""
        x = self.patch_embed(pixel_values) + self.position_embedding()
        x = x.index_select(1, self.unroll).flatten(0, 1)  # the blocks work on rows [batch * tokens, dim]
        stages = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if return_stages and i in self.stage_ends:
                stage = len(stages)
                size = self.stage_sizes[stage]
                rerolled = x.unflatten(0, (-1, math.prod(size))).index_select(1, getattr(self, f"reroll{stage}"))
                stages.append(rerolled.unflatten(1, size))
        return x.unflatten(0, (-1, math.prod(self.stage_sizes[-1]))), stages

    @property
    def input_names(self) -> list[str]:
        return ["pixel_values"]

    @property
    def output_names(self) -> list[str]:
        return {"classify": ["logits"], "features": ["last_hidden_state", "pooler_output"],
                "backbone": list(self.out_features)}[self.task]

    def forward(self, pixel_values: torch.Tensor):
        if self.task == "backbone":
            _, stages = self.forward_features(pixel_values, return_stages=True)
            maps = {name: stages[int(name.removeprefix("stage")) - 1] for name in self.out_features}
            maps = {name: self.stage_norms[name](x) if name in self.stage_norms else x for name, x in maps.items()}
            return {name: x.movedim(-1, 1) for name, x in maps.items()}  # channels first
        tokens, _ = self.forward_features(pixel_values)
        pooled = self.norm(tokens.mean(dim=1))
        if self.head is None:
            if self.to_reference is not None:
                tokens = tokens.index_select(1, self.to_reference)
            return {"last_hidden_state": tokens, "pooler_output": pooled}
        return self.head(pooled)
