"""What an artifact says about itself: the `hiera.*` metadata that export writes (../shared/ARCHITECTURE.md).

The runtime reads nothing else to run a model: task, input size, batch, preprocessing and labels all
come from here, so an exported file is self-contained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .errors import HieraRuntimeError
from .preprocess import Preprocessing

FORMAT_VERSION = 1  # the newest metadata format this runtime reads
TASKS = ("classify", "features", "backbone", "mae")


@dataclass(frozen=True)
class ModelInfo:
    task: str  # one of TASKS
    input_size: tuple[int, ...]  # (height, width), or (frames, height, width) for video
    batch: int | None  # the static batch size, None when the batch axis is dynamic
    preprocessing: Preprocessing
    labels: tuple[str, ...] | None
    variant: str | None = None
    precision: str | None = None
    weights: dict | None = None  # {"source", "sha256", "verified"}
    mae: dict | None = None  # MAE models: {"mask_units", "mask_ratio", "pred_stride", "norm_pix_loss"}

    def label(self, index: int) -> str | None:
        return self.labels[index] if self.labels and index < len(self.labels) else None


def from_metadata(props: dict[str, str], path) -> ModelInfo:
    """Decode the `hiera.*` entries of an ONNX file's (or an engine sidecar's) metadata."""
    values = {key.removeprefix("hiera."): value for key, value in props.items() if key.startswith("hiera.")}
    if not values:
        raise HieraRuntimeError(f"{path}: no Hiera metadata (hiera.* metadata_props): not exported by python -m "
                                "export; pass the preprocessing explicitly (--crop-size) to run it anyway")
    try:
        meta = {key: json.loads(value) for key, value in values.items()}
        if meta["format_version"] > FORMAT_VERSION:
            raise HieraRuntimeError(f"{path}: metadata format {meta['format_version']} is newer than this runtime "
                                    f"reads ({FORMAT_VERSION}); upgrade hiera-deploy")
        if meta["task"] not in TASKS:
            raise HieraRuntimeError(f"{path}: task {meta['task']!r} is not one this runtime runs ({', '.join(TASKS)})")
        batch = meta["batch"]
        return ModelInfo(task=meta["task"], input_size=tuple(meta["input_size"]),
                         batch=None if batch == "dynamic" else int(batch),
                         preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
                         labels=tuple(meta["labels"]) if meta.get("labels") else None, variant=meta.get("variant"),
                         precision=meta.get("precision"), weights=meta.get("weights"), mae=meta.get("mae"))
    except (KeyError, TypeError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        raise HieraRuntimeError(f"{path}: damaged Hiera metadata ({type(error).__name__}: {error})") from None


def for_foreign_model(path, input_shape, output_names, preprocessing: Preprocessing) -> ModelInfo:
    """A model without our metadata, described by its own input shape and outputs and the caller's preprocessing.

    A single output is taken as logits."""
    size = tuple(input_shape[2:4])
    if all(isinstance(d, int) for d in size) and size != tuple(preprocessing.crop_size):
        raise HieraRuntimeError(f"{path}: takes {size[0]} x {size[1]} images, the preprocessing given crops "
                                f"{preprocessing.crop_size[0]} x {preprocessing.crop_size[1]}")
    batch = input_shape[0] if isinstance(input_shape[0], int) else None
    task = "classify" if len(output_names) == 1 else "features"
    return ModelInfo(task=task, input_size=preprocessing.crop_size, batch=batch, preprocessing=preprocessing,
                     labels=None)
