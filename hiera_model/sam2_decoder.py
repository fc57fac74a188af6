"""SAM 2's prompt encoder and mask decoder for export: one image's encoder outputs and a batch of prompts in,
low-resolution mask logits and predicted IoU out.

Written after transformers' `Sam2PromptEncoder` and `Sam2MaskDecoder` (the parameter names are theirs, so a
`Sam2Model` folder loads by dropping the encoder's tensors), with these differences, none of them numeric:
- One image per call, prompts along axis 0: the reference's [image, prompt, ...] tensors lose their image axis,
  so the image embedding broadcasts over the prompts and no tensor is above rank 4 (the reference's masks are
  rank 5).
- Points, box corners and padding are one list per prompt, told apart by label (`POINT_LABELS`); the graph
  always appends the one "not a point" token SAM 2 appends (after the points when no box is given, after the
  box corners otherwise), so the caller writes prompts the same way whatever they hold. Labels select their
  embeddings by comparison, not by a gather on data.
- The mask input is always an input, selected by `has_mask_input` (0: SAM 2's "no mask" embedding).
- Both answers come out at once, with no data-dependent control flow: mask 0 is SAM 2's single-mask answer
  (with the dynamic fallback to the best multimask mask when the single mask is unstable, as transformers does
  it when `multimask_output=False`), masks 1..3 the multimask answer (`multimask_output=True`).

`load` reads a transformers `Sam2Model` folder or FAIR's `sam2*_hiera_*.pt` (`checkpoints_sam2` owns FAIR's
names); FAIR's files have no config: the decoder's widths and depths are read from its weights and the rest is
what FAIR builds for every published config (`FAIR_SETTINGS`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .errors import HieraModelError

# Point labels as SAM 2 defines them (transformers' spelling): the graph takes them as float32 values.
POINT_LABELS = {1: "positive point", 0: "negative point", 2: "box top-left corner", 3: "box bottom-right corner",
                -1: "not a point", -10: "padding (ignored)"}
INPUT_NAMES = ["image_embeddings", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels",
               "mask_input", "has_mask_input"]
OUTPUT_NAMES = ["masks", "iou_scores"]


@dataclass(frozen=True)
class Sam2DecoderConfig:
    """transformers' `Sam2PromptEncoderConfig` and `Sam2MaskDecoderConfig`, the fields that shape the model."""

    hidden_size: int = 256
    image_size: int = 1024  # the prompt encoder's input frame: point coordinates are pixels of it
    patch_size: int = 16  # image_size / patch_size: the image embedding's side
    mask_input_channels: int = 16
    num_point_embeddings: int = 4
    prompt_layer_norm_eps: float = 1e-6
    mlp_dim: int = 2048
    num_hidden_layers: int = 2
    num_attention_heads: int = 8
    attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98

    @property
    def embedding_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def low_res_size(self) -> int:  # the masks' side: four times the embedding's
        return 4 * self.embedding_size


def config_from_transformers(config: dict, path) -> Sam2DecoderConfig:
    """The decoder's part of a `Sam2Model` config.json; every value checked under its own name."""
    prompt, decoder = config.get("prompt_encoder_config") or {}, config.get("mask_decoder_config") or {}
    if not isinstance(prompt, dict) or not isinstance(decoder, dict):
        raise HieraModelError(f"{path}: prompt_encoder_config and mask_decoder_config must be JSON objects")
    fields = {}
    whole = {"hidden_size": (prompt, "hidden_size"), "image_size": (prompt, "image_size"),
             "patch_size": (prompt, "patch_size"), "mask_input_channels": (prompt, "mask_input_channels"),
             "num_point_embeddings": (prompt, "num_point_embeddings"), "mlp_dim": (decoder, "mlp_dim"),
             "num_hidden_layers": (decoder, "num_hidden_layers"),
             "num_attention_heads": (decoder, "num_attention_heads"),
             "attention_downsample_rate": (decoder, "attention_downsample_rate"),
             "num_multimask_outputs": (decoder, "num_multimask_outputs"), "iou_head_depth": (decoder, "iou_head_depth"),
             "iou_head_hidden_dim": (decoder, "iou_head_hidden_dim")}
    for ours, (part, theirs) in whole.items():
        if theirs not in part:
            continue
        value = part[theirs]
        if ours in ("image_size", "patch_size") and isinstance(value, list) and len(value) == 2 \
                and value[0] == value[1]:
            value = value[0]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16384:
            where = "prompt_encoder_config" if part is prompt else "mask_decoder_config"
            raise HieraModelError(f"{path}: {where}.{theirs} {value!r} must be a whole number from 1 to 16384")
        fields[ours] = value
    for ours, theirs in (("dynamic_multimask_stability_delta", "dynamic_multimask_stability_delta"),
                         ("dynamic_multimask_stability_thresh", "dynamic_multimask_stability_thresh")):
        if theirs in decoder:
            value = decoder[theirs]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise HieraModelError(f"{path}: mask_decoder_config.{theirs} {value!r} must be a number from 0 to 1")
            fields[ours] = float(value)
    if "dynamic_multimask_via_stability" in decoder:
        if not isinstance(decoder["dynamic_multimask_via_stability"], bool):
            raise HieraModelError(f"{path}: mask_decoder_config.dynamic_multimask_via_stability must be true or false")
        fields["dynamic_multimask_via_stability"] = decoder["dynamic_multimask_via_stability"]
    if "layer_norm_eps" in prompt:
        fields["prompt_layer_norm_eps"] = float(prompt["layer_norm_eps"])
    for part, name, key, expected in ((prompt, "prompt_encoder_config", "hidden_act", "gelu"),
                                      (prompt, "prompt_encoder_config", "scale", 1),
                                      (decoder, "mask_decoder_config", "hidden_act", "gelu")):
        if part.get(key, expected) != expected:
            raise HieraModelError(f"{path}: {name}.{key} {part[key]!r} must be {expected!r}, as in every SAM 2 model")
    result = Sam2DecoderConfig(**fields)
    rules = [(result.image_size % result.patch_size == 0, "prompt_encoder_config.image_size must be a multiple of "
                                                          "patch_size"),
             (result.num_point_embeddings == 4, "prompt_encoder_config.num_point_embeddings must be 4 (positive, "
                                                "negative, two box corners)"),
             (result.hidden_size % (result.num_attention_heads * result.attention_downsample_rate) == 0,
              "mask_decoder_config.num_attention_heads times attention_downsample_rate must divide hidden_size"),
             (result.hidden_size % 8 == 0 and result.mask_input_channels % 4 == 0,
              "hidden_size must be a multiple of 8 and mask_input_channels of 4"),
             (result.iou_head_depth >= 2 and result.num_hidden_layers >= 1,
              "mask_decoder_config.iou_head_depth must be at least 2 and num_hidden_layers at least 1")]
    for holds, rule in rules:
        if not holds:
            raise HieraModelError(f"{path}: {rule}")
    return result


# What FAIR's files do not say and FAIR builds the same for all eight published configs (SAM 2 and 2.1): SAM2Base's
# _build_sam_heads (8 heads; backbone_stride 16 is the prompt frame's patch), build_sam2's apply_postprocessing
# (the stability fallback). The yaml files also set iou_prediction_use_sigmoid (the IoU head ends in a sigmoid
# here) and pred_obj_scores (the object-score token is always in this decoder; a file without it is refused).
# tests/fixtures/reference/about.json records them from FAIR's own build of each config.
FAIR_SETTINGS = {"patch_size": 16, "num_attention_heads": 8, "dynamic_multimask_via_stability": True,
                 "dynamic_multimask_stability_delta": 0.05, "dynamic_multimask_stability_thresh": 0.98}


def config_from_fair(state: dict, encoder, path) -> Sam2DecoderConfig:
    """The decoder of a FAIR checkpoint (its weights in our names: `checkpoints_sam2.decoder_from_fair`): widths
    and depths read from the weights, the input frame and width from the encoder's config (`Sam2Config`), the rest
    `FAIR_SETTINGS`. A file without the decoder's weights is refused naming what is missing."""
    def rows(key: str, what: str) -> int:
        tensor = state.get(key)
        if tensor is None or tensor.dim() < 1:
            raise HieraModelError(f"{path}: FAIR's SAM 2 checkpoint has no {what} (sam_prompt_encoder.* and "
                                  "sam_mask_decoder.* are SAM 2's prompt encoder and mask decoder): not a whole "
                                  "SAM 2 model; its image encoder loads with task image-encoder")
        return int(tensor.shape[0])

    hidden = encoder.fpn_dim
    height, width = encoder.input_size
    if height != width:
        raise HieraModelError(f"{path}: input size {height} x {width}: FAIR's SAM 2 takes a square image (image_size)")
    block = re.compile(r"mask_decoder\.transformer\.layers\.(\d{1,6})\.")
    layers = 1 + max((int(m[1]) for k in state if (m := block.match(k))), default=-1)
    fields = dict(hidden_size=hidden, image_size=height, **FAIR_SETTINGS,
                  mask_input_channels=rows("prompt_encoder.mask_embed.conv2.weight", "mask embedding"),
                  mlp_dim=rows("mask_decoder.transformer.layers.0.mlp.proj_in.weight", "two-way transformer"),
                  num_hidden_layers=layers,
                  attention_downsample_rate=hidden // max(1, rows(
                      "mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight",
                      "two-way transformer")),
                  num_multimask_outputs=rows("mask_decoder.mask_tokens.weight", "mask tokens") - 1,
                  iou_head_hidden_dim=rows("mask_decoder.iou_prediction_head.proj_in.weight", "IoU head"),
                  iou_head_depth=3)  # the name table maps FAIR's three-layer heads, as every published one is
    rows("mask_decoder.obj_score_token.weight", "object-score token (pred_obj_scores, which every published "
         "config sets and this decoder always has)")
    for name in ("mask_input_channels", "mlp_dim", "num_hidden_layers", "attention_downsample_rate",
                 "num_multimask_outputs", "iou_head_hidden_dim"):
        if not 1 <= fields[name] <= 16384:
            raise HieraModelError(f"{path}: its weights give the mask decoder {name} {fields[name]}: not from 1 to "
                                  "16384")
    if hidden % (fields["num_attention_heads"] * fields["attention_downsample_rate"]) or hidden % 8:
        heads, rate = fields["num_attention_heads"], fields["attention_downsample_rate"]
        raise HieraModelError(f"{path}: a mask decoder {hidden} wide cannot have FAIR's {heads} heads at attention "
                              f"downsample rate {rate}")
    return Sam2DecoderConfig(**fields)


class FeedForward(nn.Module):
    """transformers' Sam2FeedForward: Linear, ReLU, ..., Linear (a sigmoid for the IoU head)."""

    def __init__(self, dim_in: int, hidden: int, dim_out: int, layers: int, sigmoid: bool = False):
        super().__init__()
        self.proj_in = nn.Linear(dim_in, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 2))
        self.proj_out = nn.Linear(hidden, dim_out)
        self.sigmoid = sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.proj_in(x))
        for layer in self.layers:
            x = F.relu(layer(x))
        x = self.proj_out(x)
        return torch.sigmoid(x) if self.sigmoid else x


class Attention(nn.Module):
    """transformers' Sam2Attention on [prompts, tokens, dim] (broadcasting a leading 1): heads folded to rank 4."""

    def __init__(self, dim: int, heads: int, downsample: int):
        super().__init__()
        internal = dim // downsample
        self.heads, self.head_dim = heads, internal // heads
        self.scaling = self.head_dim**-0.5
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, internal) for _ in range(3))
        self.o_proj = nn.Linear(internal, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [n, tokens, internal] -> [n, heads, tokens, head_dim]
        return x.unflatten(2, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q_proj(query)), self._split(self.k_proj(key)), self._split(self.v_proj(value))
        attention = torch.softmax((q @ k.transpose(-1, -2)) * self.scaling, dim=-1)
        return self.o_proj((attention @ v).transpose(1, 2).flatten(2))


class TwoWayBlock(nn.Module):
    """transformers' Sam2TwoWayAttentionBlock: tokens attend to themselves and to the image, the image to them."""

    def __init__(self, c: Sam2DecoderConfig, skip_first_layer_pe: bool):
        super().__init__()
        dim, heads = c.hidden_size, c.num_attention_heads
        self.self_attn = Attention(dim, heads, 1)
        self.layer_norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, heads, c.attention_downsample_rate)
        self.layer_norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, c.mlp_dim, dim, c.num_hidden_layers)
        self.layer_norm3 = nn.LayerNorm(dim)
        self.layer_norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, heads, c.attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            query = queries + query_pe
            queries = queries + self.self_attn(query, query, queries)
        queries = self.layer_norm1(queries)
        queries = self.layer_norm2(queries + self.cross_attn_token_to_image(queries + query_pe, keys + key_pe, keys))
        queries = self.layer_norm3(queries + self.mlp(queries))
        keys = keys + self.cross_attn_image_to_token(keys + key_pe, queries + query_pe, queries)
        return queries, self.layer_norm4(keys)


class TwoWayTransformer(nn.Module):
    def __init__(self, c: Sam2DecoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(c, skip_first_layer_pe=i == 0) for i in range(c.num_hidden_layers))
        self.final_attn_token_to_image = Attention(c.hidden_size, c.num_attention_heads, c.attention_downsample_rate)
        self.layer_norm_final_attn = nn.LayerNorm(c.hidden_size)

    def forward(self, tokens, keys, key_pe):
        queries = tokens
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, key_pe)
        queries = queries + self.final_attn_token_to_image(queries + tokens, keys + key_pe, keys)
        return self.layer_norm_final_attn(queries), keys


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """transformers' Sam2LayerNorm with data_format channels_first: NCHW, normalized over C."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PositionalEmbedding(nn.Module):
    """transformers' Sam2PositionalEmbedding: random Fourier features of coordinates in [0, 1]."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("positional_embedding", torch.zeros(2, dim // 2))

    def forward(self, coordinates: torch.Tensor) -> torch.Tensor:
        projected = 2 * math.pi * ((2 * coordinates - 1) @ self.positional_embedding)
        return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)


class MaskEmbedding(nn.Module):
    """transformers' Sam2MaskEmbedding: a low-resolution mask downscaled 4 x to the image embedding's grid."""

    def __init__(self, c: Sam2DecoderConfig):
        super().__init__()
        quarter = c.mask_input_channels // 4
        self.conv1 = nn.Conv2d(1, quarter, kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(quarter, c.mask_input_channels, kernel_size=2, stride=2)
        self.conv3 = nn.Conv2d(c.mask_input_channels, c.hidden_size, kernel_size=1)
        self.layer_norm1 = ChannelsFirstLayerNorm(quarter, eps=c.prompt_layer_norm_eps)
        self.layer_norm2 = ChannelsFirstLayerNorm(c.mask_input_channels, eps=c.prompt_layer_norm_eps)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.layer_norm1(self.conv1(masks)))
        x = F.gelu(self.layer_norm2(self.conv2(x)))
        return self.conv3(x)


class PromptEncoder(nn.Module):
    def __init__(self, c: Sam2DecoderConfig):
        super().__init__()
        self.shared_embedding = PositionalEmbedding(c.hidden_size)
        self.mask_embed = MaskEmbedding(c)
        self.no_mask_embed = nn.Embedding(1, c.hidden_size)
        self.point_embed = nn.Embedding(c.num_point_embeddings, c.hidden_size)
        self.not_a_point_embed = nn.Embedding(1, c.hidden_size)
        self.image_size = c.image_size

    def sparse(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[prompts, points, 2] pixels of the input frame and [prompts, points] labels -> [prompts, points + 1,
        dim]: the reference's `_embed_points` and `_embed_boxes` (a box's corners are labels 2 and 3), and the
        "not a point" token it appends."""
        embedding = self.shared_embedding((coords + 0.5) / self.image_size)  # pixel centres, in [0, 1]
        labels = labels[..., None]
        embedding = torch.where(labels == -1, self.not_a_point_embed.weight, embedding)
        embedding = torch.where(labels != -10, embedding, torch.zeros_like(embedding))
        for label in range(self.point_embed.num_embeddings):  # the reference adds point_embed[label] for labels >= 0
            embedding = embedding + self.point_embed.weight[label] * (labels == label).to(embedding.dtype)
        pad = self.not_a_point_embed.weight.expand(embedding.shape[0], 1, -1)
        return torch.cat([embedding, pad], dim=1)

    def dense(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """[prompts, dim, h, w]: the mask's embedding where `has_mask_input` is 1, SAM 2's "no mask" one where 0."""
        has = has_mask_input.reshape(-1, 1, 1, 1)
        return has * self.mask_embed(mask_input) + (1 - has) * self.no_mask_embed.weight.reshape(1, -1, 1, 1)


class MaskDecoder(nn.Module):
    def __init__(self, c: Sam2DecoderConfig):
        super().__init__()
        dim = c.hidden_size
        self.num_mask_tokens = c.num_multimask_outputs + 1
        self.obj_score_token = nn.Embedding(1, dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.transformer = TwoWayTransformer(c)
        self.upscale_conv1 = nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2)
        self.upscale_conv2 = nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2)
        self.upscale_layer_norm = ChannelsFirstLayerNorm(dim // 4, eps=1e-6)
        self.output_hypernetworks_mlps = nn.ModuleList(FeedForward(dim, dim, dim // 8, 3)
                                                       for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = FeedForward(dim, c.iou_head_hidden_dim, self.num_mask_tokens, c.iou_head_depth,
                                               sigmoid=True)
        self.dynamic = c.dynamic_multimask_via_stability
        self.delta = c.dynamic_multimask_stability_delta
        self.thresh = c.dynamic_multimask_stability_thresh

    def forward(self, image_embeddings, image_pe, sparse, dense, feats_s0, feats_s1):
        prompts = sparse.shape[0]
        height, width = image_embeddings.shape[-2:]
        output_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight])
        tokens = torch.cat([output_tokens.expand(prompts, -1, -1), sparse], dim=1)
        keys = (image_embeddings + dense).flatten(2).transpose(1, 2)  # [prompts, h * w, dim]
        queries, keys = self.transformer(tokens, keys, image_pe.flatten(2).transpose(1, 2))
        iou_token_out = queries[:, 1]
        mask_tokens_out = queries[:, 2:2 + self.num_mask_tokens]
        keys = keys.transpose(1, 2).unflatten(2, (height, width))
        upscaled = F.gelu(self.upscale_layer_norm(self.upscale_conv1(keys) + feats_s1))
        upscaled = F.gelu(self.upscale_conv2(upscaled) + feats_s0)  # [prompts, dim / 8, 4h, 4w]
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
                               dim=1)  # [prompts, masks, dim / 8]
        masks = (hyper_in @ upscaled.flatten(2)).unflatten(2, upscaled.shape[-2:])
        iou = self.iou_prediction_head(iou_token_out)
        single, single_iou = masks[:, :1], iou[:, :1]
        if self.dynamic:
            single, single_iou = self._stable_single_mask(masks, iou)
        return torch.cat([single, masks[:, 1:]], dim=1), torch.cat([single_iou, iou[:, 1:]], dim=1)

    def _stable_single_mask(self, masks, iou):
        """transformers' `_dynamic_multimask_via_stability`: the single mask where its logits are stable under
        +-delta (IoU of the two thresholded masks >= thresh), else the multimask mask of the highest predicted IoU.
        The areas are taken as means (the same ratio; sums of 65536 would overflow an fp16 graph)."""
        best = iou[:, 1:].argmax(dim=1, keepdim=True)  # [prompts, 1]
        best_mask = torch.gather(masks[:, 1:], 1, best[:, :, None, None].expand(-1, -1, *masks.shape[-2:]))
        best_iou = torch.gather(iou[:, 1:], 1, best)
        single = masks[:, :1].flatten(2)
        inner = (single > self.delta).to(masks.dtype).mean(dim=-1)
        outer = (single > -self.delta).to(masks.dtype).mean(dim=-1)
        stability = torch.where(outer > 0, inner / outer, torch.ones_like(outer))
        stable = stability >= self.thresh  # [prompts, 1]
        return (torch.where(stable[:, :, None, None], masks[:, :1], best_mask),
                torch.where(stable, iou[:, :1], best_iou))


class Sam2MaskDecoderModel(nn.Module):
    """`image_embeddings` [1, dim, h, w], `high_res_feats_0` [1, dim/8, 4h, 4w], `high_res_feats_1` [1, dim/4, 2h,
    2w] (the encoder artifact's outputs for one image), `point_coords` [P, N, 2] (x, y in pixels of the encoder's
    input frame), `point_labels` [P, N] (`POINT_LABELS`, float), `mask_input` [P, 1, 4h, 4w] (low-res logits),
    `has_mask_input` [P] (1 or 0) -> `masks` [P, 4, 4h, 4w] low-resolution logits (0: the single-mask answer,
    1..3: the multimask answer) and `iou_scores` [P, 4]."""

    task = "mask-decoder"
    input_names = INPUT_NAMES
    output_names = OUTPUT_NAMES

    def __init__(self, config: Sam2DecoderConfig):
        super().__init__()
        self.config = config
        self.provenance = {"source": "untrained", "sha256": None, "verified": False}
        self.shared_image_embedding = PositionalEmbedding(config.hidden_size)
        self.prompt_encoder = PromptEncoder(config)
        self.mask_decoder = MaskDecoder(config)

    def image_positional_embedding(self) -> torch.Tensor:
        """[1, dim, h, w]: the reference's `get_image_wide_positional_embeddings` (cell centres in [0, 1])."""
        side = self.config.embedding_size
        centres = (torch.arange(side, dtype=torch.float32) + 0.5) / side
        grid = torch.stack([centres[None, :].expand(side, side), centres[:, None].expand(side, side)], dim=-1)
        return self.shared_image_embedding(grid).permute(2, 0, 1).unsqueeze(0)

    def forward(self, image_embeddings, high_res_feats_0, high_res_feats_1, point_coords, point_labels, mask_input,
                has_mask_input):
        sparse = self.prompt_encoder.sparse(point_coords, point_labels)
        dense = self.prompt_encoder.dense(mask_input, has_mask_input)
        return self.mask_decoder(image_embeddings, self.image_positional_embedding(), sparse, dense,
                                 high_res_feats_0, high_res_feats_1)

    def example_inputs(self, prompts: int = 2, points: int = 3) -> tuple[torch.Tensor, ...]:
        """Inputs of the right shapes, for tracing."""
        c, side = self.config, self.config.embedding_size
        return (torch.zeros(1, c.hidden_size, side, side), torch.zeros(1, c.hidden_size // 8, 4 * side, 4 * side),
                torch.zeros(1, c.hidden_size // 4, 2 * side, 2 * side), torch.zeros(prompts, points, 2),
                torch.ones(prompts, points), torch.zeros(prompts, 1, 4 * side, 4 * side), torch.zeros(prompts))


# transformers' tensors the decoder does not use: the image encoder's (checkpoints_sam2 loads those), the object
# score head (SAM 2's video tracking), and a video model's memory modules.
_NOT_DECODER = ("vision_encoder.", "no_memory_embedding", "mask_decoder.conv_s0.", "mask_decoder.conv_s1.",
                "mask_decoder.pred_obj_score_head.")
_DECODER = ("shared_image_embedding.", "prompt_encoder.", "mask_decoder.")


def load(path, variant=None, *, allow_unverified: bool = False, lock_path=None) -> Sam2MaskDecoderModel:
    """The prompt encoder and mask decoder of a transformers `Sam2Model` folder or of FAIR's `sam2*_hiera_*.pt`,
    with the encoder loader's trust (`checkpoints_sam2`: files through runtime.files, the config checked field by
    field, the weights against models.lock, tensors within the file's size and finite, names and shapes on the
    meta device first). FAIR's file has no config: `variant` (a SAM 2 variant name or a `Sam2Config`) gives the
    encoder's, as for the encoder, else the published size its weights match. The model's `encoder_input_size`
    is the encoder's input size it belongs to."""
    from . import lock as model_lock
    from .checkpoints import _locate, _read_weights
    from .checkpoints_sam2 import config_from_transformers as encoder_config, is_sam2_config, is_sam2_state
    from .file_access import read_json

    path = Path(path)
    weight_files, config_file = _locate(path)
    if config_file is None and path.is_file() and (path.parent / "config.json").exists():
        config_file = path.parent / "config.json"
    if config_file is None:  # FAIR's file, or weights without their config: the weights say which
        return _load_fair(path, weight_files, variant, allow_unverified, lock_path)
    file_config = read_json(config_file)
    if not is_sam2_config(file_config):
        kind = file_config.get("model_type") if isinstance(file_config, dict) else None
        raise HieraModelError(f"{config_file}: a {kind or 'non-SAM 2'} checkpoint, not SAM 2 (transformers' "
                              "Sam2Model, model_type 'sam2')")
    encoder = encoder_config(file_config, config_file)
    config = config_from_transformers(file_config, config_file)
    if (config.image_size, config.image_size) != tuple(encoder.input_size) or config.hidden_size != encoder.fpn_dim:
        raise HieraModelError(f"{config_file}: prompt_encoder_config.image_size {config.image_size} and hidden_size "
                              f"{config.hidden_size} must be the encoder's input size {list(encoder.input_size)} "
                              f"and fpn_hidden_size {encoder.fpn_dim}")
    provenance = model_lock.verify_files(weight_files, allow_unverified=allow_unverified, lock_path=lock_path)
    state = _read_weights(weight_files)
    if not is_sam2_state(state):
        raise HieraModelError(f"{path}: not a SAM 2 checkpoint (no vision_encoder.backbone weights)")
    state = {k: v for k, v in state.items() if k.startswith(_DECODER) and not k.startswith(_NOT_DECODER)}
    return _assign(state, config, provenance, encoder, str(config_file))


def _load_fair(path: Path, weight_files, variant, allow_unverified: bool, lock_path) -> Sam2MaskDecoderModel:
    """FAIR's `{"model": state dict}` (no config): the encoder's config from `variant` or the published size the
    weights match, the decoder's from its weights (`config_from_fair`)."""
    from . import lock as model_lock
    from .checkpoints import _read_weights
    from .checkpoints_sam2 import (FAIR, TIMM, TRANSFORMERS, decoder_from_fair, from_transformers, infer_config,
                                   is_sam2_state, sam2_layout)
    from .sam2_config import Sam2Config, get_sam2_variant

    provenance = model_lock.verify_files(weight_files, allow_unverified=allow_unverified, lock_path=lock_path)
    state = _read_weights(weight_files)
    if not is_sam2_state(state):
        raise HieraModelError(f"{path}: not a SAM 2 checkpoint (no image_encoder.trunk or vision_encoder.backbone "
                              "weights): a Hiera checkpoint has no prompt encoder or mask decoder")
    layout = sam2_layout(state)
    if layout == TRANSFORMERS:
        raise HieraModelError(f"{path}: transformers' Sam2Model weights without their config.json: give the folder")
    if layout == TIMM:
        raise HieraModelError(f"{path}: timm's sam2_hiera backbone is HieraDet alone: it has no prompt encoder or "
                              "mask decoder")
    if isinstance(variant, Sam2Config):
        encoder = variant
    elif variant is not None:
        encoder = get_sam2_variant(variant).config
    else:
        encoder, _ = infer_config(from_transformers(state, path, FAIR), path)
    state = decoder_from_fair(state, path)
    return _assign(state, config_from_fair(state, encoder, path), provenance, encoder, str(path))


def _assign(state: dict, config: Sam2DecoderConfig, provenance: dict, encoder, where: str) -> Sam2MaskDecoderModel:
    """The decoder of `config` with `state`'s weights, once their names and shapes fit it on the meta device."""
    from .checkpoints import misfits

    with torch.device("meta"):
        model = Sam2MaskDecoderModel(config)
    wanted = model.state_dict()
    misfit = misfits(state, wanted, wanted, shown=4)
    if misfit:
        raise HieraModelError(f"{where}: the weights do not fit SAM 2's mask decoder (hidden_size "
                              f"{config.hidden_size}): {misfit}")
    model.load_state_dict({k: state[k].to(torch.float32).contiguous() for k in wanted}, assign=True)
    model.provenance = provenance
    model.encoder_input_size = tuple(encoder.input_size)
    return model.eval()
