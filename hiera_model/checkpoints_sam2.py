"""SAM 2 checkpoints loaded into `Sam2ImageEncoder`, in the three published layouts: transformers' `Sam2Model`
folders (config.json + model.safetensors, as its `save_pretrained` writes them and `facebook/sam2*-hiera-*`
publishes them), FAIR's `sam2*_hiera_*.pt` (torch.save'd {"model": state dict}, names `image_encoder.trunk.*`,
no config: the published size is told from the weights, or given), and timm's `sam2_hiera_*` backbones
(HieraDet alone, for the "backbone" and "features" tasks; config.json as timm's `save_for_hf` writes it).

The same trust as Hiera's loader (`checkpoints`): every file through `runtime.files`, the config checked
field by field (one line naming the file and the field) before the weights are read, the weight files
against models.lock, tensors read within the file's own size and all finite, names and shapes compared
with the model built on the meta device before the weights are assigned. Only the image encoder's
weights are kept (with conv_s0, conv_s1 and the no-memory embedding); the prompt encoder and the rest of
the mask decoder are read, checked, and dropped (`sam2_decoder.load` keeps those, with FAIR's names for them
here: `decoder_from_fair`).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from . import lock as model_lock
from .errors import HieraModelError
from .file_access import read_json
from .sam2 import Sam2ImageEncoder, check_sam2_options
from .sam2_config import SAM2_VARIANTS, Sam2Config, check_sam2_field, get_sam2_variant

SAM2_MODEL_TYPES = ("sam2", "sam2_video")  # transformers' Sam2Model and Sam2VideoModel folders
# transformers' names for the encoder's weights -> ours (sam2.Sam2ImageEncoder)
_NAMES = [
    (r"^vision_encoder\.backbone\.patch_embed\.projection\.", "patch_embed."),
    (r"^vision_encoder\.backbone\.(pos_embed|pos_embed_window)$", r"\1"),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.mlp\.proj_in\.", r"blocks.\1.mlp.fc1."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.mlp\.proj_out\.", r"blocks.\1.mlp.fc2."),
    (r"^vision_encoder\.backbone\.blocks\.(\d+)\.(attn\.qkv|attn\.proj|proj)\.", r"blocks.\1.\2."),
    (r"^vision_encoder\.neck\.convs\.(\d+)\.", r"neck.\1."),
    (r"^mask_decoder\.(conv_s0|conv_s1)\.", r"\1."),
    (r"^no_memory_embedding$", "no_mem_embed"),
]
# What the image predictor's encoder does not use: the prompt encoder, the rest of the mask decoder, and
# (in a video model's folder) the memory modules.
_UNUSED = re.compile(r"^(prompt_encoder|mask_decoder|shared_image_embedding|memory_|mask_downsample|"
                     r"object_pointer_proj|temporal_positional_encoding|no_memory_positional_encoding|"
                     r"no_object_pointer|occlusion_spatial_embedding)")


# FAIR's names (sam2.modeling.sam2_base.SAM2Base) -> ours
_FAIR_NAMES = [
    (r"^image_encoder\.trunk\.patch_embed\.proj\.", "patch_embed."),
    (r"^image_encoder\.trunk\.(pos_embed|pos_embed_window)$", r"\1"),
    (r"^image_encoder\.trunk\.blocks\.(\d+)\.mlp\.layers\.0\.", r"blocks.\1.mlp.fc1."),
    (r"^image_encoder\.trunk\.blocks\.(\d+)\.mlp\.layers\.1\.", r"blocks.\1.mlp.fc2."),
    (r"^image_encoder\.trunk\.blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|proj)\.", r"blocks.\1.\2."),
    (r"^image_encoder\.neck\.convs\.(\d+)\.conv\.", r"neck.\1."),
    (r"^sam_mask_decoder\.(conv_s0|conv_s1)\.", r"\1."),
    (r"^no_mem_embed$", "no_mem_embed"),
]
# What FAIR's image predictor does not use for the image's features: the prompt encoder, the rest of the mask
# decoder, the memory modules and the video model's embeddings.
_FAIR_UNUSED = re.compile(r"^(sam_prompt_encoder\.|sam_mask_decoder\.|memory_attention\.|memory_encoder\.|"
                          r"mask_downsample\.|obj_ptr_proj\.|obj_ptr_tpos_proj\.|maskmem_tpos_enc$|no_mem_pos_enc$|"
                          r"no_obj_ptr$|no_obj_embed_spatial$)")
# FAIR's names for the prompt encoder and mask decoder (sam2.modeling.sam.prompt_encoder.PromptEncoder,
# mask_decoder.MaskDecoder, transformer.TwoWayTransformer) -> sam2_decoder.Sam2MaskDecoderModel's. FAIR's MLPs are
# `layers.0..n`: every published decoder's hypernetwork MLPs and IoU head have three (in, middle, out), its
# transformer's MLPs two. The four point embeddings (`point_embed.N`) are stacked and the random-Fourier matrix is
# shared by the two positional embeddings in `decoder_from_fair`.
_FAIR_MLP3 = r"(output_hypernetworks_mlps\.\d+|iou_prediction_head)"  # FAIR's three-layer MLPs in the decoder
_FAIR_DECODER_NAMES = [
    (r"^sam_prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$",
     "shared_image_embedding.positional_embedding"),
    (r"^sam_prompt_encoder\.point_embeddings\.(\d+)\.weight$", r"prompt_encoder.point_embed.\1"),
    (r"^sam_prompt_encoder\.(not_a_point_embed|no_mask_embed)\.", r"prompt_encoder.\1."),
    (r"^sam_prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^sam_prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^sam_prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^sam_prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^sam_prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^sam_mask_decoder\.(iou_token|mask_tokens|obj_score_token)\.", r"mask_decoder.\1."),
    (r"^sam_mask_decoder\.transformer\.(layers\.\d+\.\w+|final_attn_token_to_image)\.out_proj\.",
     r"mask_decoder.transformer.\1.o_proj."),
    (r"^sam_mask_decoder\.transformer\.(layers\.\d+\.\w+|final_attn_token_to_image)\.(q_proj|k_proj|v_proj)\.",
     r"mask_decoder.transformer.\1.\2."),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.norm([1-4])\.",
     r"mask_decoder.transformer.layers.\1.layer_norm\2."),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.mlp\.layers\.0\.",
     r"mask_decoder.transformer.layers.\1.mlp.proj_in."),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.mlp\.layers\.1\.",
     r"mask_decoder.transformer.layers.\1.mlp.proj_out."),
    (r"^sam_mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^sam_mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^sam_mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^sam_mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
    (rf"^sam_mask_decoder\.{_FAIR_MLP3}\.layers\.0\.", r"mask_decoder.\1.proj_in."),
    (rf"^sam_mask_decoder\.{_FAIR_MLP3}\.layers\.1\.", r"mask_decoder.\1.layers.0."),
    (rf"^sam_mask_decoder\.{_FAIR_MLP3}\.layers\.2\.", r"mask_decoder.\1.proj_out."),
]
# What the image predictor's prompt path does not use: the image encoder (with conv_s0, conv_s1 and the no-memory
# embedding: `_FAIR_NAMES`), the object score head (video tracking) and the video model's modules.
_FAIR_NOT_DECODER = re.compile(r"^(image_encoder\.|sam_mask_decoder\.(conv_s0|conv_s1|pred_obj_score_head)\.|"
                               r"memory_attention\.|memory_encoder\.|mask_downsample\.|obj_ptr_proj\.|"
                               r"obj_ptr_tpos_proj\.|maskmem_tpos_enc$|no_mem_embed$|no_mem_pos_enc$|no_obj_ptr$|"
                               r"no_obj_embed_spatial$)")
# timm's names (timm.models.hieradet_sam2.HieraDet) -> ours; its head's norm is the features task's, its
# classifier (head.fc, absent with num_classes=0) is not SAM 2's
_TIMM_NAMES = [
    (r"^patch_embed\.proj\.", "patch_embed."),
    (r"^(pos_embed|pos_embed_window)$", r"\1"),
    (r"^blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|proj|mlp\.fc1|mlp\.fc2)\.", r"blocks.\1.\2."),
    (r"^head\.norm\.", "norm."),
]
_TIMM_UNUSED = re.compile(r"^head\.")
TRANSFORMERS, FAIR, TIMM = "transformers", "FAIR", "timm"
FAIR_DECODER = "FAIR decoder"  # FAIR's layout, read for the prompt encoder and mask decoder
OWNERS = {TRANSFORMERS: "transformers'", FAIR: "FAIR's", TIMM: "timm's"}
# timm's SAM 2 backbones: the same architectures as our SAM 2 variants of the same names
TIMM_ARCHITECTURES = ("sam2_hiera_tiny", "sam2_hiera_small", "sam2_hiera_base_plus", "sam2_hiera_large")


def is_sam2_config(config) -> bool:
    """transformers' `Sam2Model` config.json, or timm's for a `sam2_hiera_*` backbone."""
    return isinstance(config, dict) and (config.get("model_type") in SAM2_MODEL_TYPES
                                         or config.get("architecture") in TIMM_ARCHITECTURES)


def is_sam2_state(state: dict) -> bool:
    """A SAM 2 checkpoint by its keys: transformers' (`vision_encoder.backbone.`), FAIR's (`image_encoder.trunk.`)
    or timm's (the window position table `pos_embed_window`, which Hiera has not)."""
    return "pos_embed_window" in state or any(k.startswith(("vision_encoder.backbone.", "image_encoder.trunk."))
                                              for k in state)


def sam2_layout(state: dict) -> str:
    if any(k.startswith("vision_encoder.backbone.") for k in state):
        return TRANSFORMERS
    return FAIR if any(k.startswith("image_encoder.trunk.") for k in state) else TIMM


def config_from_transformers(config, path) -> Sam2Config:
    """A `Sam2Model` config.json as our config; every value checked under the file's own name for it."""
    if not is_sam2_config(config):
        raise HieraModelError(f"{path}: not a SAM 2 config (transformers' model_type 'sam2')")
    vision = config.get("vision_config")
    backbone = vision.get("backbone_config") if isinstance(vision, dict) else None
    if not isinstance(backbone, dict):
        raise HieraModelError(f"{path}: vision_config.backbone_config must be a JSON object")
    # transformers' names -> ours; a name missing takes transformers' default (its Sam2HieraDetConfig is
    # SAM 2.1 tiny's), which is ours too.
    names = {"embed_dim": "hidden_size", "num_heads": "num_attention_heads_per_stage", "depths": "blocks_per_stage",
             "window_sizes": "window_size_per_stage", "global_blocks": "global_attention_blocks",
             "window_pos_embed_size": "window_positional_embedding_background_size", "input_size": "image_size",
             "in_chans": "num_channels", "q_pool": "num_query_pool_stages", "mlp_ratio": "mlp_ratio",
             "layer_norm_eps": "layer_norm_eps", "patch_kernel": "patch_kernel_size", "patch_stride": "patch_stride",
             "patch_padding": "patch_padding", "q_stride": "query_stride"}
    fields = {}
    try:
        for ours, theirs in names.items():
            if backbone.get(theirs) is None:
                continue
            value = backbone[theirs]
            # transformers writes square sizes and strides as [n, n]; ours are one number
            if ours in ("patch_kernel", "patch_stride", "patch_padding", "q_stride") and isinstance(value, list):
                if len(value) != 2 or value[0] != value[1]:
                    raise HieraModelError(f"vision_config.backbone_config.{theirs} {value!r} must be square, as in "
                                          "every SAM 2 model")
                value = value[0]
            if ours == "input_size" and isinstance(value, int) and not isinstance(value, bool):
                value = [value, value]
            fields[ours] = check_sam2_field(ours, value, f"vision_config.backbone_config.{theirs}")
        for key, expected in (("hidden_act", "gelu"),):
            if backbone.get(key, expected) != expected:
                raise HieraModelError(f"vision_config.backbone_config.{key} {backbone[key]!r} must be {expected!r}")
        neck = {"fpn_dim": "fpn_hidden_size", "fpn_top_down_levels": "fpn_top_down_levels"}
        fields.update({ours: check_sam2_field(ours, vision[theirs], f"vision_config.{theirs}")
                       for ours, theirs in neck.items() if vision.get(theirs) is not None})
        for key, expected in (("fpn_kernel_size", 1), ("fpn_stride", 1), ("fpn_padding", 0),
                              ("num_feature_levels", 3)):
            if vision.get(key, expected) != expected:
                raise HieraModelError(f"vision_config.{key} {vision[key]!r} must be {expected}, as in every SAM 2 "
                                      "model")
        result = Sam2Config(**fields)
        stage_dims = backbone.get("embed_dim_per_stage")
        if stage_dims is not None and (not isinstance(stage_dims, list) or tuple(stage_dims) != result.stage_dims):
            raise HieraModelError(f"vision_config.backbone_config.embed_dim_per_stage {stage_dims!r} must double "
                                  f"hidden_size at each stage: {list(result.stage_dims)}")
    except HieraModelError as error:
        raise HieraModelError(f"{path}: {error}") from None
    return result


def from_transformers(state: dict, path, layout: str = TRANSFORMERS) -> dict:
    """A checkpoint's weights (transformers' `Sam2Model`, or in `layout` FAIR's `SAM2Base` or timm's `HieraDet`)
    in our names, the parts the encoder does not use dropped; in layout `FAIR_DECODER`, FAIR's prompt encoder and
    mask decoder in the decoder's names, the rest dropped (`decoder_from_fair` completes them)."""
    names, unused, model = {TRANSFORMERS: (_NAMES, _UNUSED, "a transformers Sam2Model"),
                            FAIR: (_FAIR_NAMES, _FAIR_UNUSED, "FAIR's SAM 2 (SAM2Base)"),
                            TIMM: (_TIMM_NAMES, _TIMM_UNUSED, "timm's sam2_hiera backbone (HieraDet)"),
                            FAIR_DECODER: (_FAIR_DECODER_NAMES, _FAIR_NOT_DECODER, "FAIR's SAM 2 (SAM2Base)")}[layout]
    mapped = {}
    for key, value in state.items():
        for pattern, replacement in names:
            if re.match(pattern, key):
                mapped[re.sub(pattern, replacement, key)] = value
                break
        else:
            if not unused.match(key):
                shown = key if len(key) <= 80 else key[:77] + "..."
                raise HieraModelError(f"{path}: tensor {shown} is not part of {model}")
    return mapped


def decoder_from_fair(state: dict, path) -> dict:
    """A FAIR checkpoint's prompt encoder and mask decoder in `sam2_decoder.Sam2MaskDecoderModel`'s names; the rest
    dropped. FAIR keeps the point embeddings as four [1, dim] tables (ours: one [4, dim]) and the random-Fourier
    matrix once (ours: in the image's and the prompts' positional embeddings, as transformers has it)."""
    mapped = from_transformers(state, path, FAIR_DECODER)
    points = sorted((int(k.rsplit(".", 1)[1]), k) for k in mapped if k.startswith("prompt_encoder.point_embed."))
    if points:
        tables = [mapped.pop(key) for _, key in points]
        if [index for index, _ in points] != list(range(len(points))) or len({t.shape for t in tables}) != 1 \
                or tables[0].dim() != 2 or tables[0].shape[0] != 1:
            raise HieraModelError(f"{path}: sam_prompt_encoder.point_embeddings must be tables 0, 1, ... of one "
                                  f"[1, dim] shape each (found {', '.join(str(i) for i, _ in points)})")
        mapped["prompt_encoder.point_embed.weight"] = torch.cat(tables)
    if "shared_image_embedding.positional_embedding" in mapped:
        mapped["prompt_encoder.shared_embedding.positional_embedding"] = mapped[
            "shared_image_embedding.positional_embedding"]
    return mapped


def config_from_timm(config: dict, path) -> Sam2Config:
    """timm's config.json of a `sam2_hiera_*` backbone (`save_for_hf`: the architecture, the arguments it was
    made with, the input size in pretrained_cfg) as our config; every value checked under timm's name for it."""
    architecture = config["architecture"]
    args = config.get("model_args", {})
    fields = {}
    try:
        if not isinstance(args, dict):
            raise HieraModelError("model_args must be a JSON object")
        base = SAM2_VARIANTS[architecture].config
        # timm's HieraDet arguments -> ours; a stride, kernel or padding is [n, n] there
        names = {"embed_dim": "embed_dim", "stages": "depths", "window_spec": "window_sizes",
                 "global_att_blocks": "global_blocks", "global_pos_size": "window_pos_embed_size",
                 "in_chans": "in_chans", "q_pool": "q_pool", "patch_kernel": "patch_kernel",
                 "patch_stride": "patch_stride", "patch_padding": "patch_padding", "q_stride": "q_stride"}
        fixed = {"dim_mul": 2.0, "head_mul": 2.0, "patch_size": None, "init_values": None, "norm_layer": "LayerNorm",
                 "act_layer": "GELU"}  # what every SAM 2 trunk has (layer scale would add weights SAM 2 has not)
        ignored = ("num_classes", "global_pool", "drop_rate", "drop_path_rate", "weight_init", "fix_init",
                   "head_init_scale")  # the classifier head and training only
        heads = None
        for theirs, value in args.items():
            if theirs in ignored:
                continue
            if theirs in fixed:
                if value != fixed[theirs]:
                    raise HieraModelError(f"model_args.{theirs} {value!r} must be {fixed[theirs]!r}, as in every SAM 2 "
                                          "model")
            elif theirs == "num_heads":
                heads = check_sam2_field("num_heads", [value], f"model_args.{theirs}")[0]
            elif theirs in names:
                if names[theirs] in ("patch_kernel", "patch_stride", "patch_padding", "q_stride") \
                        and isinstance(value, list):
                    if len(value) != 2 or value[0] != value[1]:
                        raise HieraModelError(f"model_args.{theirs} {value!r} must be square, as in every SAM 2 model")
                    value = value[0]
                fields[names[theirs]] = check_sam2_field(names[theirs], value, f"model_args.{theirs}")
            else:
                raise HieraModelError(f"model_args.{theirs} is not an argument of timm's HieraDet that SAM 2 uses")
        stages = len(fields.get("depths", base.depths))
        first_heads = base.num_heads[0] if heads is None else heads
        fields["num_heads"] = tuple(first_heads * 2 ** s for s in range(stages))  # timm doubles them per stage
        input_size = (config.get("pretrained_cfg") or {}).get("input_size")
        if input_size is not None:
            if not isinstance(input_size, list) or len(input_size) != 3:
                raise HieraModelError(f"pretrained_cfg.input_size {input_size!r} must be [channels, height, width]")
            fields["input_size"] = check_sam2_field("input_size", input_size[1:], "pretrained_cfg.input_size")
        return dataclasses.replace(base, **fields)
    except HieraModelError as error:
        raise HieraModelError(f"{path}: {error}") from None


def infer_config(state: dict, path) -> tuple[Sam2Config, str]:
    """The published SAM 2 size whose shapes the weights (in our names) have: FAIR's files have no config, and
    the heads, windows and global blocks cannot be read from weights, only matched."""
    blocks = 1 + max((int(m[1]) for k in state if (m := re.match(r"blocks\.(\d{1,6})\.", k))), default=-1)
    widths = [state[f"blocks.{i}.mlp.fc1.weight"].shape[-1] if f"blocks.{i}.mlp.fc1.weight" in state else None
              for i in range(blocks)]
    depths = tuple(widths.count(width) for width in dict.fromkeys(widths))
    table = tuple(state["pos_embed"].shape[2:]) if "pos_embed" in state else None
    for variant in SAM2_VARIANTS.values():
        c = variant.config
        if (widths[:1], depths, table) == ([c.embed_dim], c.depths, c.window_pos_embed_size):
            return c, f"{path}: the published SAM 2 size its weights match ({variant.name.split('_hiera_')[1]})"
    raise HieraModelError(f"{path}: no config, and its weights (embed_dim {widths[0] if widths else None}, depths "
                          f"{depths}) match no published SAM 2 size; give its variant or a Sam2Config ({{option}})",
                          option="variant")


def load(path, variant=None, task: str = "image-encoder", *, allow_unverified: bool = False, lock_path=None,
         input_size=None, read=None, **hiera_options) -> Sam2ImageEncoder:
    """A transformers `Sam2Model` folder (or its model.safetensors beside its config.json), FAIR's `sam2*.pt` or
    timm's `sam2_hiera_*` folder as an eval-mode `Sam2ImageEncoder` for `task` ("image-encoder"; "backbone": the
    four stage maps; "features", timm's folders only: the pooled vector); `variant` (a SAM 2 variant name or a
    `Sam2Config`) overrides the file's config, and `input_size` builds the encoder for another input (the position
    embedding is resized to it in forward, as the references do). `read`: (state, provenance) where Hiera's loader
    has already read the files."""
    from .checkpoints import _locate, _read_weights, misfits  # one owner of paths, shards, reading, fitting

    path = Path(path)
    try:
        check_sam2_options(task, **hiera_options)
    except HieraModelError as error:
        raise HieraModelError(f"{path}: {error.template}", error.option, *(
            () if error.value is None else (error.value,))) from None
    weight_files, config_file = _locate(path)
    if config_file is None and path.is_file() and (path.parent / "config.json").exists():
        config_file = path.parent / "config.json"
    config = None  # FAIR's files have none: then the weights tell the published size
    if isinstance(variant, Sam2Config):
        config, where = variant, f"{path}: the given config"
    elif variant is not None:
        config, where = get_sam2_variant(variant).config, f"{path}: variant {variant!r}"
    elif config_file is not None:
        file_config = read_json(config_file)
        if not is_sam2_config(file_config):
            kind = file_config.get("model_type") if isinstance(file_config, dict) else None
            raise HieraModelError(f"{config_file}: a {kind or 'non-SAM 2'} checkpoint, not SAM 2 (transformers' "
                                  "Sam2Model, model_type 'sam2')" + ("; load it as Hiera, with a Hiera task"
                                                                     if kind == "hiera" else ""))
        read_config = config_from_timm if "architecture" in file_config else config_from_transformers
        config, where = read_config(file_config, config_file), str(config_file)
    if config is not None and input_size is not None:  # a size the windows cannot tile: refused before reading
        config.at_size(tuple(input_size))
    if read is None:
        provenance = model_lock.verify_files(weight_files, allow_unverified=allow_unverified, lock_path=lock_path)
        state = _read_weights(weight_files)
    else:
        state, provenance = read
    if not is_sam2_state(state):
        raise HieraModelError(f"{path}: not a SAM 2 checkpoint (no vision_encoder.backbone, image_encoder.trunk or "
                              "pos_embed_window weights); a Hiera checkpoint loads as Hiera, with a Hiera task")
    layout = sam2_layout(state)
    if layout == TIMM and task == "image-encoder":
        raise HieraModelError(f"{path}: timm's sam2_hiera backbone is HieraDet alone (no FPN neck, conv_s0, conv_s1 "
                              "or no-memory embedding); load it with {option}", option="task", value="backbone")
    if layout != TIMM and task == "features":
        raise HieraModelError(f"{path}: task 'features' is timm's pooled vector, whose norm (timm's head.norm) only "
                              f"timm's sam2_hiera folders hold, not {OWNERS[layout]} SAM 2 checkpoint; load this one "
                              "with {option} (or 'backbone': HieraDet's stage maps)", option="task",
                              value="image-encoder")
    state = from_transformers(state, path, layout)
    # The model that wrote the file: the whole encoder, or timm's HieraDet with its head's norm or without it
    # (a model saved after timm's reset_classifier(0, reset_other=True))
    stored_task = "image-encoder" if layout != TIMM else "features" if "norm.weight" in state else "backbone"
    if task == "features" and stored_task != "features":
        raise HieraModelError(f"{path}: timm's sam2_hiera folder has no head.norm (saved without its head), which "
                              "task 'features' pools through; load it with {option}", option="task", value="backbone")
    if config is None:
        config, where = infer_config(state, path)
    target = config.at_size(tuple(input_size)) if input_size is not None else config
    with torch.device("meta"):  # names and shapes only
        model = Sam2ImageEncoder(target, task)
        stored = model if task == stored_task else Sam2ImageEncoder(target, stored_task)
    wanted = model.state_dict()
    misfit = misfits(state, stored.state_dict(), wanted, shown=4)
    if misfit:
        raise HieraModelError(f"{where}: the weights do not fit SAM 2's encoder (embed_dim {config.embed_dim}, "
                              f"depths {config.depths}): {misfit}")
    model.load_state_dict({k: state[k].to(torch.float32).contiguous() for k in wanted}, assign=True)
    model.provenance = provenance
    return model.eval()
