"""Checkpoint loading: local files in the transformers, FAIR and timm layouts, detected from the keys.

Nothing in a checkpoint is trusted; `load` goes, in order:
1. Every path through `runtime.files` (regular files only, bounded reads): the checkpoint, config.json,
   a safetensors index and every shard it names.
2. The config (config.json, or `variant`) is checked field by field (`config_files`).
3. Each weight file's sha256 against models.lock, or the Hub's record of it (`lock`).
4. The tensors, read within the file's own size and all finite (`state_dicts`).
5. The config against the weights' shapes (width, patch grid, depth, MLP width) before any model is built.
   Then the model is built on the meta device (its parameters take no memory), the weights' names and
   shapes are compared with it, and the weights are assigned to it: a load holds one copy of them.

Each foreign layout has one function that maps its keys to ours (FAIR's names, see `model.Hiera`).
The architecture comes from `variant` when given, from the checkpoint's own config when it has one,
and otherwise from matching the weights' shapes against the published variants.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch

from runtime import files

from . import lock as model_lock
from .checkpoints_sam2 import is_sam2_config, is_sam2_state, load as load_sam2, sam2_layout
from .factory import build, check_options
from .config_files import config_from_file
from .errors import HieraModelError
from .file_access import file_errors, read_json
from .model import Hiera
from .resize import resize_position_embeddings
from .sam2_config import SAM2_SHARED_TASKS, SAM2_TASKS, is_sam2
from .state_dicts import read_state_dict
from .variants import VARIANTS, HieraConfig, check_task, get_variant

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TRANSFORMERS, FAIR, TIMM = "transformers", "fair", "timm"
MAX_SHARDS = 10_000
MAX_BLOCKS = 1024  # 8 stages of 128 blocks: the most a config may hold (variants.py)


def load(path, variant: str | HieraConfig | None = None, task: str = "classify", *, allow_unverified: bool = False,
         lock_path=None, out_features=None, with_loss: bool = False, input_size=None) -> Hiera:
    """Load a Hiera checkpoint from a local file or directory into an eval-mode model for `task`.

    `variant` (a registry name or a `HieraConfig`) overrides the architecture a file implies. A file
    that `models.lock` names is checked against its sha256 (or the Hub's, until the lock records one);
    one that nothing records a hash for is refused unless `allow_unverified` (then a warning is issued).
    The options are `build`'s: with `input_size` the model is built for that input and the checkpoint's
    position embeddings are resized to it, as transformers' `interpolate_pos_encoding` does.
    A SAM 2 task or variant loads SAM 2's image encoder (`checkpoints_sam2.load`).
    """
    if task in SAM2_TASKS or is_sam2(variant):
        return load_sam2(path, variant, task, allow_unverified=allow_unverified, lock_path=lock_path,
                         out_features=out_features, with_loss=with_loss, input_size=input_size)
    check_task(task)
    path = Path(path)
    weight_files, config_file = _locate(path)
    config, labels, names, where = None, None, {}, f"{path}: variant {variant!r}"
    if isinstance(variant, HieraConfig):
        config, where = variant, f"{path}: the given config"
    elif variant is not None:
        config = get_variant(variant).config_for(task)
    elif config_file is not None:
        file_config = read_json(config_file)
        if is_sam2_config(file_config):
            if task in SAM2_SHARED_TASKS:  # HieraDet's stage maps or pooled vector, from a SAM 2 folder
                return load_sam2(path, None, task, allow_unverified=allow_unverified, lock_path=lock_path,
                                 out_features=out_features, with_loss=with_loss, input_size=input_size)
            raise HieraModelError(f"{config_file}: a SAM 2 checkpoint (Segment Anything 2's image encoder), not "
                                  "Hiera; load it with {option}", option="task", value="image-encoder")
        config, labels, names = config_from_file(file_config, config_file)
        where = str(config_file)
    if config is not None:  # refuse bad options before reading any weights
        check_options(config, task, out_features=out_features, with_loss=with_loss, input_size=input_size)
    provenance = model_lock.verify_files(weight_files, allow_unverified=allow_unverified, lock_path=lock_path)
    state = _read_weights(weight_files)
    if task in SAM2_SHARED_TASKS and variant is None and is_sam2_state(state):  # HieraDet alone, read once
        return load_sam2(path, None, task, lock_path=lock_path, out_features=out_features, with_loss=with_loss,
                         input_size=input_size, read=(state, provenance))
    state = {TRANSFORMERS: from_transformers, FAIR: from_fair, TIMM: from_timm}[detect_layout(state, path)](state)

    held = held_task(state)
    if held == "mae" and task != "mae":
        raise HieraModelError(f"{path}: an MAE pretraining checkpoint; load it with {{option}}", option="task",
                              value="mae")
    if task == "mae" and held != "mae":
        raise HieraModelError(f"{path}: task 'mae' needs an MAE pretraining checkpoint (with the decoder); this one "
                              "has none")
    if task == "classify" and held != "classify":
        raise HieraModelError(f"{path}: the checkpoint has no classification head; load it with {{option}}",
                              option="task", value="features")
    if config is None:
        config, where = infer_config(state, path, task), f"{path}: the published variant its weights match"
    config = _from_weights(config, state, path)
    _check_against_weights(config, state, where, names)
    target = check_options(config, task, out_features=out_features, with_loss=with_loss, input_size=input_size)
    if task != "backbone":
        target = target.replace(stage_norms=())  # only a backbone has them
    with torch.device("meta"):  # names and shapes only: no parameter takes memory
        model = build(target, task, out_features=out_features, with_loss=with_loss)
        stored = model if (held, config) == (task, target) else build(config, held)
    weights = _keep_fitting(state, stored.state_dict(), model.state_dict(), path, config)
    resize_position_embeddings(weights, config, target)
    model.load_state_dict(weights, assign=True)
    model.labels = labels if labels and len(labels) == config.num_classes else None
    model.provenance = provenance
    return model.eval()


def held_task(state: dict) -> str:
    """Which task's model a checkpoint (in our names) holds: its decoder, head or stage norms tell."""
    if "decoder_pred.weight" in state:
        return "mae"
    if "head.weight" in state:
        return "classify"
    return "backbone" if any(k.startswith("stage_norms.") for k in state) else "features"


def _locate(path: Path) -> tuple[list[Path], Path | None]:
    """The weight files of a checkpoint and its config.json (a directory's), if any."""
    with file_errors():
        files.require_file_or_directory(path)
    if path.is_file():
        return [path], None
    for name in WEIGHT_FILES:
        file = path / name
        if os.path.lexists(file):  # present but not a regular file (a FIFO, a broken link) is refused below
            break
    else:
        raise HieraModelError(f"{path}: directory holds no weights (looked for {', '.join(WEIGHT_FILES)})")
    config_file = path / "config.json"
    config_file = config_file if os.path.lexists(config_file) else None
    if not name.endswith(".index.json"):
        return [file], config_file
    index = read_json(file)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise HieraModelError(f"{file}: not a safetensors index (no weight_map of tensor names to shard files)")
    shards = sorted(set(weight_map.values()))
    if len(shards) > MAX_SHARDS:
        raise HieraModelError(f"{file}: names {len(shards):,} shards, more than {MAX_SHARDS:,}")
    for shard in shards:
        if not shard or Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise HieraModelError(f"{file}: shard {shard!r} is not a file inside the checkpoint directory")
    return [path / shard for shard in shards], config_file


def _read_weights(weight_files: list[Path]) -> dict[str, torch.Tensor]:
    state, origin = {}, {}
    for file in weight_files:
        for key, tensor in read_state_dict(file).items():
            if key in state:
                raise HieraModelError(f"{file}: tensor {key} is also in {origin[key]}")
            state[key], origin[key] = tensor, file
    return state


def _short(name: str) -> str:
    """A tensor name as an error shows it: a file's names may be any length."""
    return name if len(name) <= 80 else name[:77] + "..."


def _block_count(state: dict) -> int:
    return 1 + max((int(m[1]) for k in state if (m := re.match(r"blocks\.(\d{1,6})\.", k))), default=-1)


def _from_weights(config: HieraConfig, state: dict, path) -> HieraConfig:
    """What the weights decide: the classes (from the head), the stage norms (a transformers HieraBackbone's)
    and MAE's decoder width and depth (its heads cannot be read; FAIR's are 16)."""
    def rows(key):
        if key not in state or state[key].dim() != 2:
            raise HieraModelError(f"{path}: {key} is missing or not a matrix")
        return state[key].shape[0]

    changes = {"stage_norms": tuple(sorted({k.split(".")[1] for k in state if k.startswith("stage_norms.")}))}
    if "head.weight" in state:
        changes["num_classes"] = rows("head.weight")
    if "decoder_pred.weight" in state:
        changes["decoder_embed_dim"] = rows("decoder_embed.weight")
        changes["decoder_depth"] = 1 + max(
            (int(m[1]) for k in state if (m := re.match(r"decoder_blocks\.(\d{1,6})\.", k))), default=-1)
    try:
        return config.replace(**changes)
    except HieraModelError as error:
        raise HieraModelError(f"{path}: the weights make an {error}") from None


def _check_against_weights(config: HieraConfig, state: dict, where: str, names: dict[str, str]) -> None:
    """The config's sizes against the weights' shapes, before anything is built from the config: its width,
    channels and patch kernel, its token grid, its depth and MLP width. `names`: the config file's names."""
    c = config
    tokens = c.tokens_spatial_shape
    anchors = [("patch_embed.proj.weight", (c.embed_dim, c.in_chans, *c.patch_kernel), "embed_dim, in_chans, "
                                                                                        "patch_kernel")]
    if c.sep_pos_embed:
        anchors += [("pos_embed_spatial", (1, math.prod(tokens[1:]), c.embed_dim), "input_size"),
                    ("pos_embed_temporal", (1, tokens[0], c.embed_dim), "input_size")]
    else:
        anchors.append(("pos_embed", (1, math.prod(tokens), c.embed_dim), "input_size"))
    anchors.append(("blocks.0.mlp.fc1.weight", (int(c.embed_dim * c.mlp_ratio), c.embed_dim), "mlp_ratio"))

    def named(fields: str) -> str:
        return ", ".join(f"{names.get(f, f)} {getattr(c, f)}" for f in fields.split(", "))

    for key, expected, fields in anchors:
        if key in state and tuple(state[key].shape) != expected:
            raise HieraModelError(f"{where}: {named(fields)} disagree with the weights: {key} is "
                                  f"{tuple(state[key].shape)}, that config needs {expected}")
    blocks = _block_count(state)
    if blocks != sum(c.depths):
        raise HieraModelError(f"{where}: {named('depths')} make {sum(c.depths)} blocks; the weights hold {blocks}")


def _keep_fitting(state: dict, stored: dict, wanted: dict, path, config: HieraConfig) -> dict:
    """The weights the model wants, as float32; the file's names and shapes must be those of the model it
    holds (`stored`), and must include all the model wants."""
    misfit = misfits(state, stored, wanted)
    if misfit:
        raise HieraModelError(f"{path}: weights do not fit {_describe(config)}: {misfit}")
    return {k: state[k].to(wanted[k].dtype).contiguous() for k in wanted}


def misfits(state: dict, stored: dict, wanted: dict, shown: int = 6) -> str | None:
    """What keeps a file's weights (`state`) from a model: names `wanted` that it lacks, names the model that
    wrote it (`stored`) has not, and shapes that differ from `stored`'s, each list cut to `shown`; None if they
    fit."""
    missing = sorted(set(wanted) - set(state))
    unexpected = sorted(set(state) - set(stored))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(stored[k].shape)}"
             for k in stored if k in state and state[k].shape != stored[k].shape]

    def listed(label, items):
        more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
        return f"{label} {len(items)}: {', '.join(map(_short, items[:shown]))}{more}" if items else None
    parts = [part for part in (listed("missing", missing), listed("unexpected", unexpected),
                               listed("wrong shape (file vs model)", wrong)) if part]
    return "; ".join(parts) or None


def detect_layout(state: dict[str, torch.Tensor], path) -> str:
    if is_sam2_state(state):
        task = "backbone" if sam2_layout(state) == "timm" else "image-encoder"  # timm's holds HieraDet alone
        raise HieraModelError(f"{path}: a SAM 2 checkpoint (Segment Anything 2's image encoder), not Hiera; load it "
                              "with {option}", option="task", value=task)
    keys = set(state)
    if any(k.startswith(("hiera.", "embeddings.", "encoder.stages.")) for k in keys):
        return TRANSFORMERS
    if any(k.startswith("head.norm.") or k.startswith("head.fc.") for k in keys):
        return TIMM
    if "patch_embed.proj.weight" in keys or any(k.startswith("blocks.") for k in keys):
        return FAIR
    sample = ", ".join(map(_short, sorted(keys)[:5]))
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
    layer = re.compile(r"^encoder\.stages\.(\d{1,6})\.layers\.(\d{1,6})\.(.*)$")
    decoder_layer = re.compile(r"^decoder\.decoder_block\.layers\.(\d{1,6})\.(.*)$")
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


def infer_config(state: dict, path, task: str = "classify") -> HieraConfig:
    """The published variant whose embed dim, depths and kind (image or video) match the weights, in its
    architecture for `task`; an error lists the candidates otherwise."""
    try:
        video = "pos_embed_temporal" in state
        embed_dim = state["pos_embed_spatial" if video else "pos_embed"].shape[-1]
        blocks = _block_count(state)
    except (KeyError, IndexError):
        raise HieraModelError(f"{path}: cannot read embed dim and depth from the weights") from None
    if blocks > MAX_BLOCKS:
        raise HieraModelError(f"{path}: weights with {blocks:,} blocks; no Hiera has more than {MAX_BLOCKS}")
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
                          f"{problem}; pass its architecture as {{option}}: a variant name or a HieraConfig. "
                          f"Candidates: {candidates}",
                          option="variant")


def _describe(config: HieraConfig) -> str:
    names = [v.name for v in VARIANTS.values()
             if config.replace(num_classes=v.config.num_classes) in (v.config, v.config_for("mae"))]
    shape = f"embed_dim {config.embed_dim}, depths {config.depths}, input {config.input_size}"
    return f"Hiera-{names[0]} ({shape})" if names else f"Hiera ({shape})"
