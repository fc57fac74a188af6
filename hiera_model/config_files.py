"""A checkpoint directory's `config.json`, in the transformers, FAIR or timm layout, as a `HieraConfig`.

Every value is checked by the field's own rules (`variants.check_field`) under the name the file gives
it, so that a bad value (negative, boolean, NaN, absurdly large) is one line naming the file and the
field, before anything is built from it.
"""

from __future__ import annotations

from .errors import HieraModelError
from .variants import VARIANTS, HieraConfig, check_field, get_variant

# transformers' HieraConfig names for our fields; the first block must be present.
_TRANSFORMERS_REQUIRED = {
    "embed_dim": "embed_dim", "num_heads": "num_heads", "depths": "depths", "input_size": "image_size",
    "dim_mul": "embed_dim_multiplier", "q_pool": "num_query_pool", "q_stride": "query_stride",
    "mask_unit_size": "masked_unit_size", "mask_unit_attn": "masked_unit_attention", "patch_kernel": "patch_size",
    "patch_stride": "patch_stride", "patch_padding": "patch_padding", "mlp_ratio": "mlp_ratio",
}
_TRANSFORMERS_OPTIONAL = {
    "in_chans": "num_channels", "layer_norm_eps": "layer_norm_eps", "mask_ratio": "mask_ratio",
    "norm_pix_loss": "normalize_pixel_loss", "decoder_embed_dim": "decoder_hidden_size",
    "decoder_depth": "decoder_depth", "decoder_num_heads": "decoder_num_heads",
}
# FAIR's constructor arguments (also timm's `model_args`) that are our fields under the same name.
_FAIR_SAME = ("input_size", "in_chans", "embed_dim", "num_classes", "q_pool", "q_stride", "mask_unit_size",
              "mask_unit_attn", "dim_mul", "patch_kernel", "patch_stride", "patch_padding", "mlp_ratio",
              "sep_pos_embed", "decoder_embed_dim", "decoder_depth", "decoder_num_heads")
# Training-only settings (FAIR's and timm's), and ones whose supported value is checked below.
_FAIR_IGNORED = {"drop_path_rate", "drop_rate", "head_dropout", "head_init_scale", "norm_layer", "global_pool"}
_MAX_LABELS = 1 << 20


def config_from_file(config, path) -> tuple[HieraConfig, tuple[str, ...] | None, dict[str, str]]:
    """Our config, the class names if the file has them, and the file's name for each of our fields it set."""
    if not isinstance(config, dict):
        raise HieraModelError(f"{path}: expected a JSON object")
    try:
        if config.get("model_type") == "hiera":
            return _from_transformers(config, path)
        if isinstance(config.get("architecture"), str) and config["architecture"].startswith("hiera_"):
            return _from_timm(config, path)
        if "stages" in config and "embed_dim" in config:  # FAIR's PyTorchModelHubMixin
            config, names = _from_fair(config, path, HieraConfig())
            return config, None, names
    except HieraModelError as error:
        raise HieraModelError(f"{path}: {error}") from None
    raise HieraModelError(f"{path}: not a Hiera config (transformers, FAIR or timm)")


def _from_transformers(c: dict, path):
    if c.get("hidden_act", "gelu") != "gelu":
        raise HieraModelError(f"hidden_act {c['hidden_act']!r} is not supported (only 'gelu')")
    missing = [theirs for theirs in _TRANSFORMERS_REQUIRED.values() if theirs not in c]
    if missing:
        raise HieraModelError(f"lacks {', '.join(missing)}")
    names = {ours: theirs for ours, theirs in {**_TRANSFORMERS_REQUIRED, **_TRANSFORMERS_OPTIONAL}.items()
             if c.get(theirs) is not None}
    config = HieraConfig(**{ours: check_field(ours, c[theirs], theirs) for ours, theirs in names.items()})
    # transformers shrinks the mask-unit window at every stage, FAIR only where queries are pooled;
    # they agree unless mask-unit attention reaches a stage past the last pooling.
    stages = len(config.depths)
    if config.q_pool < stages - 1 and any(config.mask_unit_attn[config.q_pool:]):
        raise HieraModelError("mask-unit attention after the last query pooling is computed differently by "
                              "transformers and FAIR; this config is not supported")
    return config, _labels(c.get("id2label"), "id2label"), names


def _labels(id2label, field: str) -> tuple[str, ...] | None:
    """transformers' id2label ({"0": "tench", ...}) as names in class order; None unless complete."""
    if id2label is None or id2label == {}:
        return None
    if not isinstance(id2label, dict) or len(id2label) > _MAX_LABELS or \
            not all(isinstance(v, str) for v in id2label.values()):
        raise HieraModelError(f"{field} must map class numbers to names")
    labels = tuple(id2label.get(str(i)) for i in range(len(id2label)))
    return labels if None not in labels else None


def _from_timm(c: dict, path):
    """timm's `save_for_hf`: the architecture's name and the arguments it was created with."""
    name = c["architecture"].removeprefix("hiera_").removesuffix("_224")
    base = get_variant(name).config if name in VARIANTS else HieraConfig()
    args = c.get("model_args", {})
    if not isinstance(args, dict):
        raise HieraModelError("model_args must be a JSON object")
    config, names = _from_fair(args, path, base)
    pretrained = c.get("pretrained_cfg", {})
    labels = pretrained.get("label_names") if isinstance(pretrained, dict) else None
    if labels is not None and (not isinstance(labels, list) or len(labels) > _MAX_LABELS or
                               not all(isinstance(v, str) for v in labels)):
        raise HieraModelError("pretrained_cfg.label_names must be a list of names")
    return config, tuple(labels) if labels else None, names


def _from_fair(args: dict, path, base: HieraConfig) -> tuple[HieraConfig, dict[str, str]]:
    """FAIR's constructor arguments (also timm's `model_args`) applied to `base`."""
    unknown = set(args) - set(_FAIR_SAME) - {"stages", "num_heads", "head_mul", "img_size"} - _FAIR_IGNORED
    if unknown:
        raise HieraModelError(f"has arguments this loader does not know: {sorted(unknown)}")
    if args.get("global_pool", "avg") != "avg":
        raise HieraModelError(f"global_pool {args['global_pool']!r} is not supported (only 'avg')")
    if args.get("norm_layer", "LayerNorm") != "LayerNorm":
        raise HieraModelError(f"norm_layer {args['norm_layer']!r} is not supported (only LayerNorm)")
    names = {name: name for name in _FAIR_SAME if name in args}
    changes = {name: check_field(name, args[name]) for name in names}
    if "img_size" in args:  # timm's name, a number for a square
        size = args["img_size"]
        changes["input_size"] = check_field("input_size", [size, size] if isinstance(size, int) else size, "img_size")
        names["input_size"] = "img_size"
    if "stages" in args:
        changes["depths"] = check_field("depths", args["stages"], "stages")
        names["depths"] = "stages"
    depths = changes.get("depths", base.depths)
    if "num_heads" in args or "head_mul" in args:  # FAIR: the first stage's heads, times head_mul per stage
        (heads,) = check_field("num_heads", [args.get("num_heads", base.num_heads[0])], "num_heads")
        head_mul = check_field("dim_mul", args.get("head_mul", 2.0), "head_mul")  # a multiplier per stage, too
        changes["num_heads"] = check_field("num_heads", [int(heads * head_mul**s) for s in range(len(depths))],
                                           "num_heads")
        names["num_heads"] = "num_heads"
    return base.replace(**changes), names
