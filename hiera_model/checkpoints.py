"""Checkpoint loading: local files in the transformers, FAIR and timm layouts, detected from the keys.

Each foreign layout has one function that maps its keys to ours (FAIR's names, see `model.Hiera`).
The architecture comes from the checkpoint's own config when it has one, from `variant` when given,
and otherwise from matching the weights' shapes against the published variants.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from . import lock as model_lock
from .errors import HieraModelError
from .model import Hiera, build
from .variants import VARIANTS, HieraConfig, check_task, get_variant

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TRANSFORMERS, FAIR, TIMM = "transformers", "fair", "timm"


def load(path, variant: str | HieraConfig | None = None, task: str = "classify", *,
         allow_unverified: bool = False, lock_path=None) -> Hiera:
    """Load a Hiera checkpoint from a local file or directory into an eval-mode `Hiera`.

    `variant` (a registry name or a `HieraConfig`) overrides the architecture a file implies. A file
    that `models.lock` names is checked against its sha256; one whose hash the lock does not know
    yet is refused unless `allow_unverified` (then a warning is issued).
    """
    check_task(task)
    path = Path(path)
    weight_files, file_config = _locate(path)
    provenance = model_lock.verify_files(weight_files, allow_unverified=allow_unverified, lock_path=lock_path)
    state = {}
    for file in weight_files:
        state.update(read_state_dict(file))
    layout = detect_layout(state, path)
    state = {TRANSFORMERS: from_transformers, FAIR: from_fair, TIMM: from_timm}[layout](state)

    is_mae = "decoder_pred.weight" in state
    if is_mae != (task == "mae"):
        raise HieraModelError(f"{path}: an MAE pretraining checkpoint; load it with task='mae'" if is_mae else
                              f"{path}: task 'mae' needs an MAE pretraining checkpoint (with the decoder); this one "
                              "has none")
    labels = None
    if isinstance(variant, HieraConfig):
        config = variant
    elif variant is not None:
        config = get_variant(variant).config_for(task)
    elif file_config is not None:
        config, labels = config_from_file(file_config, path)
    else:
        config = infer_config(state, path, task)
    if "head.weight" in state:
        config = config.replace(num_classes=state["head.weight"].shape[0])
    elif task == "classify":
        raise HieraModelError(f"{path}: the checkpoint has no classification head; load it with task='features'")
    if task != "classify":
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    if task in ("backbone", "mae"):  # neither pools: the pooled output's norm has no use
        state = {k: v for k, v in state.items() if not k.startswith("norm.")}
    norms = tuple(sorted({k.split(".")[1] for k in state if k.startswith("stage_norms.")}))
    if task == "backbone":
        config = config.replace(stage_norms=norms)  # transformers' HieraBackbone: a norm per stage it outputs
    else:
        state = {k: v for k, v in state.items() if not k.startswith("stage_norms.")}
    if is_mae:
        config = config.replace(**_decoder_shape(state))

    model = build(config, task)
    _load_strict(model, state, path)
    model.labels = labels if labels and len(labels) == config.num_classes else None
    model.provenance = provenance
    return model.eval()


def _locate(path: Path) -> tuple[list[Path], dict | None]:
    """The weight files of a checkpoint and its config.json (a directory's), if any."""
    if not path.exists():
        raise HieraModelError(f"{path}: no such file or directory")
    if path.is_file():
        return [path], None
    for name in WEIGHT_FILES:
        file = path / name
        if file.is_file():
            break
    else:
        raise HieraModelError(f"{path}: directory holds no weights (looked for {', '.join(WEIGHT_FILES)})")
    if name.endswith(".index.json"):
        index = _read_json(file)
        try:
            shards = sorted(set(index["weight_map"].values()))
        except (KeyError, TypeError, AttributeError):
            raise HieraModelError(f"{file}: not a safetensors index (no weight_map)") from None
        files = [path / shard for shard in shards]
    else:
        files = [file]
    config_file = path / "config.json"
    return files, _read_json(config_file) if config_file.is_file() else None


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HieraModelError(f"{file}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict):
        raise HieraModelError(f"{file}: expected a JSON object")
    return data


def read_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or a torch pickle (loaded with weights_only=True, never unsafely).

    Training checkpoints wrap the weights: FAIR in `model_state`, others in `state_dict` or `model`.
    """
    if not file.is_file():
        raise HieraModelError(f"{file}: no such file")
    if file.stat().st_size == 0:
        raise HieraModelError(f"{file}: empty file, not a checkpoint")
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(file)
        except (SafetensorError, OSError, ValueError) as error:
            raise HieraModelError(f"{file}: not a valid safetensors file ({error})") from None
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types here (UnpicklingError, RuntimeError, EOFError, ...)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HieraModelError(f"{file}: not a loadable PyTorch checkpoint, or truncated ({reason})") from None
    for key in ("model_state", "state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise HieraModelError(f"{file}: holds no state dict of tensors")
    return data


def detect_layout(state: dict[str, torch.Tensor], path) -> str:
    keys = set(state)
    if any(k.startswith(("hiera.", "embeddings.", "encoder.stages.")) for k in keys):
        return TRANSFORMERS
    if any(k.startswith("head.norm.") or k.startswith("head.fc.") for k in keys):
        return TIMM
    if "patch_embed.proj.weight" in keys or any(k.startswith("blocks.") for k in keys):
        return FAIR
    sample = ", ".join(sorted(keys)[:5])
    raise HieraModelError(f"{path}: not a Hiera checkpoint in a known layout (transformers, FAIR, timm); "
                          f"first keys: {sample}")


def from_fair(state: dict) -> dict:
    return {re.sub(r"^head\.projection\.", "head.", k): v for k, v in state.items()}


def from_timm(state: dict) -> dict:
    return {re.sub(r"^head\.fc\.", "head.", re.sub(r"^head\.norm\.", "norm.", k)): v for k, v in state.items()}


_TRANSFORMERS_NAMES = {
    "embeddings.patch_embeddings.projection.": "patch_embed.proj.",
    "embeddings.position_embeddings": "pos_embed",
    "pooler.layernorm.": "norm.",
    "hidden_states_norms.": "stage_norms.",  # HieraBackbone's
    # HieraForPreTraining's decoder and fusion heads
    "multiscale_fusion.": "",
    "decoder.decoder_embeddings.": "decoder_embed.",
    "decoder.decoder_position_embeddings": "decoder_pos_embed",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_norm.": "decoder_norm.",
    "decoder.decoder_pred.": "decoder_pred.",
}
_TRANSFORMERS_BLOCK_NAMES = {"layernorm_before.": "norm1.", "layernorm_after.": "norm2."}


def from_transformers(state: dict) -> dict:
    """`hiera.encoder.stages.{s}.layers.{l}.*` -> `blocks.{i}.*`, classifier -> head (prefix `hiera.` optional);
    MAE's `decoder.decoder_block.layers.{l}.*` -> `decoder_blocks.{l}.*`."""
    state = {k.removeprefix("hiera."): v for k, v in state.items()}
    layer = re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.(.*)$")
    decoder_layer = re.compile(r"^decoder\.decoder_block\.layers\.(\d+)\.(.*)$")
    depths: dict[int, int] = {}
    for key in state:
        if match := layer.match(key):
            stage, index = int(match[1]), int(match[2])
            depths[stage] = max(depths.get(stage, 0), index + 1)
    offsets = {stage: sum(depths.get(s, 0) for s in range(stage)) for stage in depths}

    def block_names(rest: str) -> str:
        for old, new in _TRANSFORMERS_BLOCK_NAMES.items():
            if rest.startswith(old):
                return new + rest.removeprefix(old)
        return rest

    mapped = {}
    for key, value in state.items():
        if match := layer.match(key):
            key = f"blocks.{offsets[int(match[1])] + int(match[2])}.{block_names(match[3])}"
        elif match := decoder_layer.match(key):
            key = f"decoder_blocks.{match[1]}.{block_names(match[2])}"
        elif key.startswith("classifier."):
            key = "head." + key.removeprefix("classifier.")
        else:
            for old, new in _TRANSFORMERS_NAMES.items():
                if key.startswith(old):
                    key = new + key.removeprefix(old)
                    break
        mapped[key] = value
    return mapped


def config_from_file(config: dict, path) -> tuple[HieraConfig, tuple[str, ...] | None]:
    """Our config (and class names) from a checkpoint directory's config.json, in any of the three layouts."""
    try:
        return _config_from_file(config, path)
    except (TypeError, ValueError, AttributeError) as error:  # a value of the wrong type somewhere in the JSON
        raise HieraModelError(f"{path}: config.json holds a value of the wrong type ({error})") from None


def _config_from_file(config: dict, path) -> tuple[HieraConfig, tuple[str, ...] | None]:
    if config.get("model_type") == "hiera":
        return _config_from_transformers(config, path)
    if str(config.get("architecture", "")).startswith("hiera_"):  # timm's save_for_hf
        name = config["architecture"].removeprefix("hiera_").removesuffix("_224")
        base = get_variant(name).config if name in VARIANTS else HieraConfig()
        labels = config.get("pretrained_cfg", {}).get("label_names")
        return _config_from_fair(config.get("model_args", {}), path, base), tuple(labels) if labels else None
    if "stages" in config and "embed_dim" in config:  # FAIR's PyTorchModelHubMixin
        return _config_from_fair(config, path, HieraConfig()), None
    raise HieraModelError(f"{path}: config.json is not a Hiera config (transformers, FAIR or timm)")


def _config_from_transformers(c: dict, path) -> tuple[HieraConfig, tuple[str, ...] | None]:
    if c.get("hidden_act", "gelu") != "gelu":
        raise HieraModelError(f"{path}: hidden_act {c['hidden_act']!r} is not supported (only 'gelu')")
    try:
        config = HieraConfig(
            embed_dim=c["embed_dim"], num_heads=c["num_heads"], depths=c["depths"], input_size=c["image_size"],
            in_chans=c.get("num_channels", 3),
            dim_mul=c["embed_dim_multiplier"], q_pool=c["num_query_pool"], q_stride=c["query_stride"],
            mask_unit_size=c["masked_unit_size"], mask_unit_attn=c["masked_unit_attention"],
            patch_kernel=c["patch_size"], patch_stride=c["patch_stride"], patch_padding=c["patch_padding"],
            mlp_ratio=c["mlp_ratio"], layer_norm_eps=c.get("layer_norm_eps", 1e-6),
            mask_ratio=c.get("mask_ratio", 0.6), norm_pix_loss=bool(c.get("normalize_pixel_loss", True)),
            **{ours: c[theirs] for ours, theirs in (("decoder_embed_dim", "decoder_hidden_size"),
                                                    ("decoder_depth", "decoder_depth"),
                                                    ("decoder_num_heads", "decoder_num_heads")) if c.get(theirs)},
        )
    except KeyError as missing:
        raise HieraModelError(f"{path}: config.json lacks {missing}") from None
    # transformers shrinks the mask-unit window at every stage, FAIR only where queries are pooled;
    # they agree unless mask-unit attention reaches a stage past the last pooling.
    stages = len(config.depths)
    if config.q_pool < stages - 1 and any(config.mask_unit_attn[config.q_pool:]):
        raise HieraModelError(f"{path}: mask-unit attention after the last query pooling is computed differently "
                              "by transformers and FAIR; this config is not supported")
    id2label = c.get("id2label") or {}
    labels = tuple(id2label.get(str(i)) for i in range(len(id2label)))
    return config, labels if labels and None not in labels else None


def _config_from_fair(args: dict, path, base: HieraConfig) -> HieraConfig:
    """FAIR's constructor arguments (also timm's `model_args`) applied to `base`."""
    known = {"input_size", "in_chans", "embed_dim", "num_heads", "num_classes", "stages", "q_pool", "q_stride",
             "mask_unit_size", "mask_unit_attn", "dim_mul", "head_mul", "patch_kernel", "patch_stride",
             "patch_padding", "mlp_ratio", "img_size", "sep_pos_embed", "decoder_embed_dim", "decoder_depth",
             "decoder_num_heads"}
    # Training-only settings (FAIR's and timm's), and ones whose supported value is checked below.
    ignored = {"drop_path_rate", "drop_rate", "head_dropout", "head_init_scale", "norm_layer", "global_pool"}
    unknown = set(args) - known - ignored
    if unknown:
        raise HieraModelError(f"{path}: config.json has arguments this loader does not know: {sorted(unknown)}")
    if args.get("global_pool", "avg") != "avg":
        raise HieraModelError(f"{path}: global_pool {args['global_pool']!r} is not supported (only 'avg')")
    if args.get("norm_layer", "LayerNorm") != "LayerNorm":
        raise HieraModelError(f"{path}: norm_layer {args['norm_layer']!r} is not supported (only LayerNorm)")
    changes = {k: args[k] for k in known - {"stages", "num_heads", "head_mul", "img_size"} if k in args}
    if "img_size" in args:  # timm's name
        size = args["img_size"]
        changes["input_size"] = (size, size) if isinstance(size, int) else size
    if "stages" in args:
        changes["depths"] = args["stages"]
    depths = changes.get("depths", base.depths)
    if "num_heads" in args or "head_mul" in args:
        heads, head_mul = args.get("num_heads", base.num_heads[0]), args.get("head_mul", 2.0)
        changes["num_heads"] = tuple(int(heads * head_mul**s) for s in range(len(depths)))
    return base.replace(**changes)


def infer_config(state: dict, path, task: str = "classify") -> HieraConfig:
    """The published variant whose embed dim, depths and kind (image or video) match the weights, in its
    architecture for `task`; an error lists the candidates otherwise."""
    try:
        video = "pos_embed_temporal" in state
        embed_dim = state["pos_embed_spatial" if video else "pos_embed"].shape[-1]
        blocks = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    except (KeyError, ValueError):
        raise HieraModelError(f"{path}: cannot read embed dim and depth from the weights") from None
    stage_starts = [i for i in range(blocks) if f"blocks.{i}.proj.weight" in state]
    bounds = [0, *stage_starts, blocks]
    depths = tuple(b - a for a, b in zip(bounds, bounds[1:]))
    matches = [v for v in VARIANTS.values()
               if (v.config.embed_dim, v.config.depths, v.config.is_video) == (embed_dim, depths, video)]
    if len(matches) == 1:
        return matches[0].config_for(task)
    candidates = "; ".join(f"{v.name} (embed_dim {v.config.embed_dim}, depths {v.config.depths})"
                           for v in (matches or VARIANTS.values()))
    problem = "matches several variants" if matches else "matches no published variant"
    raise HieraModelError(f"{path}: {'video ' if video else ''}weights with embed_dim {embed_dim} and depths {depths} "
                          f"{problem}; pass variant= a name or a HieraConfig. Candidates: {candidates}")


def _decoder_shape(state: dict) -> dict:
    """An MAE checkpoint's decoder width and depth, read from its weights (its heads cannot be; FAIR's are 16)."""
    depth = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("decoder_blocks.")), default=-1)
    return {"decoder_embed_dim": state["decoder_embed.weight"].shape[0], "decoder_depth": depth}


def _load_strict(model: Hiera, state: dict, path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        def listed(label, items):
            shown = ", ".join(items[:6]) + (f" (+{len(items) - 6} more)" if len(items) > 6 else "")
            return f"{label} {len(items)}: {shown}" if items else None
        parts = filter(None, [listed("missing", missing), listed("unexpected", unexpected),
                              listed("wrong shape (file vs model)", wrong)])
        raise HieraModelError(f"{path}: weights do not fit {_describe(model.config)}: " + "; ".join(parts))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})


def _describe(config: HieraConfig) -> str:
    names = [v.name for v in VARIANTS.values()
             if config.replace(num_classes=v.config.num_classes) in (v.config, v.config_for("mae"))]
    shape = f"embed_dim {config.embed_dim}, depths {config.depths}, input {config.input_size}"
    return f"Hiera-{names[0]} ({shape})" if names else f"Hiera ({shape})"
