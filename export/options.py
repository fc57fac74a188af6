"""What an export is asked to do (`Options`), and the one place that checks it before any work starts."""

from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from hiera_model import SAM2_TASKS, TASKS
from runtime import files
from runtime.artifact import MAX_BATCH, MAX_SIDE
from runtime.errors import FileError
from runtime.formats import DEFAULT_PRECISIONS, FORMATS, PRECISIONS  # the registry of artifact kinds

from . import tensorrt, trt_check
from .errors import ExportError
from .onnx_export import MIN_OPSET, max_opset

LAYOUTS = ("files", "hub")
MAX_SEED = 2**32 - 1  # numpy's and torch's generators both take 0..2**32-1
MAX_WORKSPACE_GB = 1024
# SAM 2's prompt encoder and mask decoder (export/mask_decoder.py); with its encoder as one export (segmenter.py)
DECODER_TASKS = ("mask-decoder", "segmenter")
DECODER_PRECISIONS = ("fp32", "fp16")  # what SAM 2's mask decoder is exported in (export/mask_decoder.py)


@dataclass(frozen=True)
class Options:
    variant: str | None = None
    task: str = "classify"
    weights: str | None = None  # a path, "random", "hub" or "hub:REPO_ID"; None: the hub
    allow_unverified: bool = False  # accept a published file whose sha256 nothing on disk records
    out_dir: Path = Path("artifacts")
    opset: int = 17
    batch: int | None = 1  # None: dynamic
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    calibration: Path | None = None  # a directory of images like those the model will see, for qdq
    out_features: tuple[str, ...] | None = None  # backbone: the stage maps to output (default: all)
    image_size: tuple[int, int] | None = None  # (height, width) other than the checkpoint's: pos. embeddings resized
    loss: bool = False  # mae: also output each image's loss
    trt_version: str = trt_check.DEFAULT_TARGET  # what the TensorRT check and the trtexec command target
    engine: tensorrt.EngineOptions = field(default_factory=tensorrt.EngineOptions)  # the report's trtexec command
    build_engine: bool = False  # build that engine here (needs TensorRT and a GPU)
    layout: str = "files"  # "hub": the output folder is also the Hugging Face folder (export/hub.py)
    optimize: bool = True
    validate: bool = True
    seed: int = 0


def check(options: Options) -> Options:
    """`options` with its paths as `Path`s, or `ExportError` naming the option that is wrong. Nothing is
    loaded or written here: every refusal comes before the work starts."""
    size = options.image_size
    size = (size, size) if isinstance(size, int) and not isinstance(size, bool) else size
    if size is not None and len(tuple(size)) == 1:
        size = (tuple(size)[0],) * 2
    o = replace(options, out_dir=Path(options.out_dir), precisions=tuple(options.precisions),
                image_size=tuple(size) if size is not None else None,
                calibration=Path(options.calibration) if options.calibration is not None else None,
                out_features=tuple(options.out_features) if options.out_features is not None else None)
    if o.task not in (*TASKS, *SAM2_TASKS, *DECODER_TASKS):
        raise ExportError(f"task {o.task!r}: choose from {', '.join((*TASKS, *SAM2_TASKS, *DECODER_TASKS))}", "task")
    unknown = [p for p in o.precisions if p not in PRECISIONS]
    if unknown or not o.precisions or len(set(o.precisions)) != len(o.precisions):
        raise ExportError(f"precisions {' '.join(o.precisions) or '(none)'}: choose each once from "
                          f"{', '.join(PRECISIONS)}", "precisions")
    _check_edge_converters(o.precisions)
    if o.batch is not None and not _whole(o.batch, 1, MAX_BATCH):
        raise ExportError(f"batch {o.batch!r}: a whole number from 1 to {MAX_BATCH}", "batch")
    if not _whole(o.opset, MIN_OPSET, max_opset()):
        raise ExportError(f"opset {o.opset!r}: this export writes opsets {MIN_OPSET} to {max_opset()} (17 and later "
                          f"have LayerNormalization; {MIN_OPSET} writes it as primitive operators, for TensorRT 8.5)",
                          "opset")
    if o.image_size is not None and (len(o.image_size) != 2 or not all(_whole(side, 1, MAX_SIDE)
                                                                      for side in o.image_size)):
        raise ExportError(f"image_size {options.image_size!r}: a height and width of 1 to {MAX_SIDE} pixels (or one "
                          "number for both)", "image_size")
    if not _whole(o.seed, 0, MAX_SEED):
        raise ExportError(f"seed {o.seed!r}: a whole number from 0 to {MAX_SEED}", "seed")
    if "qdq" in o.precisions:
        if o.calibration is None:
            raise ExportError("precision qdq needs calibration images: a directory of a few hundred images like the "
                              "ones the model will see, to set the int8 scales", "calibration")
        if o.task == "mae":
            raise ExportError("precision qdq: static int8 for TensorRT is made for the classify, features and "
                              "backbone tasks, not for mae", "precisions")
    _check_edge(o)
    if o.calibration is not None:
        try:
            files.require_directory(o.calibration)
        except FileError as error:
            raise ExportError(str(error), "calibration") from None
    if o.layout not in LAYOUTS:
        raise ExportError(f"layout {o.layout!r}: choose from {', '.join(LAYOUTS)}", "layout")
    if o.loss and o.task != "mae":
        raise ExportError("loss: only for task mae", "loss")
    if o.out_features is not None and o.task != "backbone":
        raise ExportError("out_features: only for task backbone", "out_features")
    if o.out_dir.exists() and not o.out_dir.is_dir():
        raise ExportError(f"{o.out_dir}: exists and is not a directory", "out_dir")
    try:
        trt_check.target(o.trt_version)
    except ExportError as error:
        raise ExportError(str(error), "trt_version") from None
    _check_engine(o.engine)
    if o.build_engine and tensorrt.tensorrt_version() is None:
        raise ExportError("build_engine: TensorRT is not installed here (its wheels come from NVIDIA's package "
                          "index); export without building and build on the GPU machine with the trtexec command "
                          "in the report", "build_engine")
    return o


def _check_edge_converters(precisions) -> None:
    """An edge kind (source "pytorch") is converted by `export/<converter>.py`, whose package (`PACKAGE`) is an
    optional extra (`EXTRA`): one line naming the extra where it is not installed."""
    for precision in precisions:
        kind = FORMATS[precision]
        if kind.source != "pytorch":
            continue
        module = importlib.import_module(f"export.{kind.converter}")  # imports its package only when converting
        if importlib.util.find_spec(module.PACKAGE) is None:
            raise ExportError(f"precision {precision}: its converter ({module.PACKAGE}) is not installed: pip install "
                              f"'hiera-deploy[{module.EXTRA}]'", "precisions")


def _check_engine(engine: tensorrt.EngineOptions) -> None:
    if engine.precision not in tensorrt.ENGINE_PRECISIONS:
        raise ExportError(f"engine precision {engine.precision!r}: choose from {', '.join(tensorrt.ENGINE_PRECISIONS)}",
                          "engine.precision")
    if not _whole(engine.max_batch, 1, MAX_BATCH):
        raise ExportError(f"engine max_batch {engine.max_batch!r}: a whole number from 1 to {MAX_BATCH}",
                          "engine.max_batch")
    gb = engine.workspace_gb
    number = isinstance(gb, (int, float)) and not isinstance(gb, bool)
    if not number or not math.isfinite(gb) or not 0 < gb <= MAX_WORKSPACE_GB:
        raise ExportError(f"engine workspace {gb!r} GB: a number above 0 and at most {MAX_WORKSPACE_GB}",
                          "engine.workspace_gb")


def _whole(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_edge(o: Options) -> None:
    """Core ML packages are made for models whose one input is the image. (Every edge artifact is made at batch 1,
    whatever `batch` says for the ONNX ones: their programs have static shapes, and the runtime runs a larger batch
    in chunks.)"""
    for precision in o.precisions:
        if FORMATS[precision].converter == "coreml" and o.task == "mae":
            raise ExportError(f"precision {precision}: Core ML packages are made for image models, not mae (two "
                              "inputs)", "precisions")
