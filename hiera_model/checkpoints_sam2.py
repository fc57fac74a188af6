"""SAM 2 checkpoints: transformers' `Sam2Model` folders (config.json + model.safetensors, as its
`save_pretrained` writes them and `facebook/sam2*-hiera-*` publishes them), loaded into `Sam2ImageEncoder`.

The same trust as Hiera's loader (`checkpoints`): every file through `runtime.files`, the config checked
field by field (one line naming the file and the field) before the weights are read, the weight files
against models.lock, tensors read within the file's own size and all finite, names and shapes compared
with the model built on the meta device before the weights are assigned. Only the image encoder's
weights are kept (with conv_s0, conv_s1 and the no-memory embedding); the prompt encoder and the rest of
the mask decoder are read, checked, and dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from . import lock as model_lock
from .errors import HieraModelError
from .file_access import read_json
from .sam2 import Sam2ImageEncoder, check_sam2_options
from .sam2_config import Sam2Config, check_sam2_field, get_sam2_variant

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


def is_sam2_config(config) -> bool:
    return isinstance(config, dict) and config.get("model_type") in SAM2_MODEL_TYPES


def is_sam2_state(state: dict) -> bool:
    """A SAM 2 checkpoint by its keys: transformers' (`vision_encoder.backbone.`) or FAIR's (`image_encoder.trunk.`)."""
    return any(k.startswith(("vision_encoder.backbone.", "image_encoder.trunk.")) for k in state)


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


def from_transformers(state: dict, path) -> dict:
    """transformers' `Sam2Model` weights in our names, the parts the encoder does not use dropped."""
    mapped = {}
    for key, value in state.items():
        for pattern, replacement in _NAMES:
            if re.match(pattern, key):
                mapped[re.sub(pattern, replacement, key)] = value
                break
        else:
            if not _UNUSED.match(key):
                shown = key if len(key) <= 80 else key[:77] + "..."
                raise HieraModelError(f"{path}: tensor {shown} is not part of a transformers Sam2Model")
    return mapped


def load(path, variant=None, task: str = "image-encoder", *, allow_unverified: bool = False, lock_path=None,
         input_size=None, **hiera_options) -> Sam2ImageEncoder:
    """A transformers `Sam2Model` folder (or its model.safetensors beside its config.json) as an eval-mode
    `Sam2ImageEncoder`; `variant` (a SAM 2 variant name or a `Sam2Config`) overrides the file's config, and
    `input_size` builds the encoder for another input (the position embedding is resized to it in forward,
    as the references do)."""
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
        config, where = config_from_transformers(file_config, config_file), str(config_file)
    else:
        raise HieraModelError(f"{path}: a SAM 2 checkpoint needs its config.json or a SAM 2 variant ({{option}})",
                              option="variant")
    target = config.at_size(tuple(input_size)) if input_size is not None else config
    provenance = model_lock.verify_files(weight_files, allow_unverified=allow_unverified, lock_path=lock_path)
    state = _read_weights(weight_files)
    if not is_sam2_state(state):
        raise HieraModelError(f"{path}: not a SAM 2 checkpoint (no vision_encoder.backbone weights); a Hiera "
                              "checkpoint loads as Hiera, with a Hiera task")
    if any(k.startswith("image_encoder.trunk.") for k in state):
        raise HieraModelError(f"{path}: FAIR's SAM 2 checkpoint layout is not read yet; convert it to a "
                              "transformers Sam2Model folder")
    state = from_transformers(state, path)
    with torch.device("meta"):  # names and shapes only
        model = Sam2ImageEncoder(target)
    wanted = model.state_dict()
    misfit = misfits(state, wanted, wanted, shown=4)
    if misfit:
        raise HieraModelError(f"{where}: the weights do not fit SAM 2's encoder (embed_dim {config.embed_dim}, "
                              f"depths {config.depths}): {misfit}")
    model.load_state_dict({k: state[k].to(torch.float32).contiguous() for k in wanted}, assign=True)
    model.provenance = provenance
    return model.eval()
