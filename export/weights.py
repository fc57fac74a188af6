"""Where the weights of an export come from: a local checkpoint, the hub, or a seeded random draw."""

from __future__ import annotations

import os
from pathlib import Path

import hiera_model
from hiera_model import SAM2_TASKS, SAM2_VARIANTS, HieraModelError, get_variant
from runtime import files
from runtime.errors import FileError
from runtime.preprocess import Preprocessing

from .errors import ExportError

HUB_FILES = ["config.json", "model.safetensors", "preprocessor_config.json"]


# hiera_model's option names -> the export's (Options fields), for errors about one of them.
OPTIONS = {"allow_unverified": "allow_unverified", "task": "task", "input_size": "image_size",
           "out_features": "out_features", "with_loss": "loss", "variant": "variant"}


def load_weights(weights: str | None, variant: str | None, task: str, seed: int, allow_unverified: bool = False,
                 **build_options):
    """The model to export, the name its artifacts carry (the variant, else the checkpoint's name) and
    the checkpoint's path (None for random weights).

    `weights`: a local checkpoint path, "random", or "hub[:REPO_ID]"; None means the hub. A published
    file whose sha256 nothing on disk records is refused unless `allow_unverified`. `build_options`:
    hiera_model's (out_features, with_loss, input_size).
    """
    try:
        if variant is not None and variant not in SAM2_VARIANTS:
            get_variant(variant)
        if weights == "random":
            if variant is None:
                raise ExportError("random weights need a variant (one of: " + ", ".join(
                    [*hiera_model.VARIANTS, *SAM2_VARIANTS]) + ")", "variant")
            return hiera_model.create(variant, task, seed, **build_options), variant, None
        if weights is None or weights == "hub" or weights.startswith("hub:"):
            path = _download(weights, variant)
        else:
            path = Path(weights)
        model = hiera_model.load(path, task=task, allow_unverified=allow_unverified, **build_options)
    except HieraModelError as error:  # the same words, and the option it is about in the export's name for it
        raise ExportError(str(error), OPTIONS.get(error.option)) from None
    name = _check_variant(model, variant, path)
    return model, name, path


def is_sam2_model(model) -> bool:
    """SAM 2's image encoder, or its HieraDet alone (task "backbone", which Hiera has too)."""
    return isinstance(model.config, hiera_model.Sam2Config)


def _check_variant(model, variant: str | None, path: Path) -> str:
    if is_sam2_model(model):
        return _check_sam2_variant(model, variant, path)
    # A fine-tuned checkpoint keeps its variant's name whatever its number of classes.
    config = model.config
    match = next((v.name for v in hiera_model.VARIANTS.values() if v.config.is_video == config.is_video
                  and v.config_for(model.task) == config.replace(num_classes=v.config.num_classes,
                                                                 input_size=v.config.input_size)), None)  # any size
    if variant is not None and match != variant:
        found = f"Hiera-{match}" if match else "a custom Hiera config"
        raise ExportError(f"{path}: these weights are for {found}, not variant {variant}", "variant")
    return match or (path.stem if path.is_file() else path.resolve().name).removeprefix("hiera_").replace("-", "_")


def _check_sam2_variant(model, variant: str | None, path: Path) -> str:
    """A SAM 2 checkpoint's name: the variant asked for, whose architecture it must have (SAM 2 and 2.1 share
    theirs, so a checkpoint alone names the architecture, not the release), else the folder's name."""
    if variant is not None:
        expected = SAM2_VARIANTS[variant].config.at_size(model.config.input_size)
        if model.config != expected:
            raise ExportError(f"{path}: these weights are not {variant}'s architecture (embed_dim "
                              f"{model.config.embed_dim}, depths {model.config.depths})", "variant")
        return variant
    return (path.stem if path.is_file() else path.resolve().name).replace("-", "_")


def _download(weights: str | None, variant: str | None) -> Path:
    """The hub checkpoint (REPO_ID, else the variant's transformers classifier) in the local hub cache."""
    if weights and weights.startswith("hub:"):
        repo_id = weights[4:]
    elif variant is not None:
        repo_id = (SAM2_VARIANTS[variant] if variant in SAM2_VARIANTS else get_variant(variant)).transformers_id
    else:
        raise ExportError("no weights given: name a variant (to fetch its checkpoint from the hub), a checkpoint "
                          "path, or random weights", "weights")
    howto = (f"download it where there is a network (hf download {repo_id} --local-dir DIR), copy DIR here and "
             "give it as the weights; or use random weights for a seeded random model (graph and speed work only)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ExportError(f"cannot fetch {repo_id}: huggingface_hub is not installed; {howto}", "weights") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES))
    except Exception as error:  # the hub client raises many types; all mean the same here
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ExportError(f"cannot fetch {repo_id} ({reason[:120]}); {howto}", "weights") from None


def preprocessing_for(path: Path | None, input_size, task: str | None = None, sam2: bool = False) -> Preprocessing:
    """The checkpoint's own `preprocessor_config.json` (transformers' image processor), if it has one;
    otherwise the ImageNet recipe at the model's input size; for video, the Kinetics clip recipe; for SAM 2
    (its tasks, or `sam2`: its HieraDet backbone), its predictor's (the whole image resized to the input, which
    no BitImageProcessor setting describes)."""
    if task in SAM2_TASKS or sam2:
        return Preprocessing.for_sam2(input_size)
    if len(input_size) == 3:  # video: no published processor config describes clips
        return Preprocessing.for_clips(input_size)
    file = path / "preprocessor_config.json" if path is not None and path.is_dir() else None
    if file is None or not os.path.lexists(file):
        return Preprocessing.for_input_size(input_size)
    try:
        return Preprocessing.from_image_processor(files.read_json(file), input_size)
    except FileError as error:
        raise ExportError(str(error)) from None
    except ValueError as error:
        raise ExportError(f"{file}: {error}") from None
