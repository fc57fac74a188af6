"""The export, step by step: weights, torch -> ONNX, optimize, convert precisions, validate, report.

`run` is the whole job; the CLI (`python -m export`) only parses arguments and shows progress.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from hiera_model.lock import sha256
from runtime.errors import HieraRuntimeError
from runtime.preprocess import find_images, load_image

from . import artifact, convert, parity, tensorrt, trt_check
from .errors import ExportError
from .onnx_export import check_opset, to_onnx, to_opset_16
from .optimize import op_histogram, optimize
from .weights import load_weights, preprocessing_for

PRECISIONS = ("fp32", "fp16", "int8", "qdq")
DEFAULT_PRECISIONS = ("fp32", "fp16", "int8")  # qdq (static int8 for TensorRT) needs calibration images
CALIBRATION_IMAGES = 512  # at most, the first in sorted order
PRODUCER_PACKAGES = ("hiera-deploy", "torch", "onnx", "onnxscript", "onnxruntime")


@dataclass
class Options:
    variant: str | None = None
    task: str = "classify"
    weights: str | None = None  # a path, "random", "hub" or "hub:REPO_ID"; None: the hub
    allow_unverified: bool = False  # accept a published file whose sha256 models.lock does not record yet
    out_dir: Path = Path("artifacts")
    opset: int = 17
    batch: int | None = 1  # None: dynamic
    precisions: tuple[str, ...] = DEFAULT_PRECISIONS
    calibration: Path | None = None  # a directory of images like those the model will see, for qdq
    out_features: tuple[str, ...] | None = None  # backbone: the stage maps to output (default: all)
    loss: bool = False  # mae: also output each image's loss
    trt_version: str = trt_check.DEFAULT_TARGET  # what the TensorRT check and the trtexec command target
    engine: tensorrt.EngineOptions = field(default_factory=tensorrt.EngineOptions)  # the report's trtexec command
    build_engine: bool = False  # build that engine here (needs TensorRT and a GPU)
    optimize: bool = True
    validate: bool = True
    seed: int = 0


def run(options: Options, progress=lambda step, message: None) -> dict:
    """Export, write the artifacts and their report; return the report. Raises `ExportError` on bad
    input. Failed parity does not raise: the report's `passed` is False and says why."""
    unknown = set(options.precisions) - set(PRECISIONS)
    if unknown or not options.precisions:
        raise ExportError(f"--precision {' '.join(options.precisions)}: choose from {', '.join(PRECISIONS)}")
    if options.batch is not None and options.batch < 1:
        raise ExportError(f"--batch {options.batch}: must be at least 1")
    check_opset(options.opset)
    if "qdq" in options.precisions and options.calibration is None:
        raise ExportError("--precision qdq needs --calibration DIR: a few hundred images like the ones the model "
                          "will see, to set the int8 scales")
    if options.loss and options.task != "mae":
        raise ExportError("--loss: only for --task mae")
    if options.task == "mae" and "qdq" in options.precisions:
        raise ExportError("--precision qdq: static int8 for TensorRT is made for the classifier and feature tasks, "
                          "not for --task mae")
    if options.calibration is not None and not Path(options.calibration).is_dir():
        raise ExportError(f"--calibration {options.calibration}: not a directory")
    try:
        trt_check.target(options.trt_version)
    except ValueError as error:
        raise ExportError(f"--trt-version: {error}") from None
    installed_trt = tensorrt.tensorrt_version()
    if options.build_engine and installed_trt is None:
        raise ExportError("--trt: TensorRT is not installed here (its wheels come from NVIDIA's package index); "
                          "export without --trt and build on the GPU machine with the trtexec command in the report")
    _check_writable(options.out_dir)
    timings = {}

    start = time.perf_counter()
    progress("weights", "loading " + (options.weights or "from the hub"))
    model, name, weights_path = load_weights(options.weights, options.variant, options.task, options.seed,
                                             options.allow_unverified)
    config = model.config
    if options.out_features:
        _select_features(model, options.out_features)
    model.with_loss = options.loss
    preprocessing = preprocessing_for(weights_path, config.input_size)
    timings["weights"] = time.perf_counter() - start

    start = time.perf_counter()
    progress("export", f"tracing Hiera-{name} ({options.task}) to ONNX opset {options.opset}")
    exported = to_onnx(model, options.opset, options.batch)
    timings["export"] = time.perf_counter() - start
    graphs = {"exported": {"nodes": len(exported.graph.node), "ops": op_histogram(exported)}}

    start = time.perf_counter()
    fp32 = exported
    if options.optimize:
        progress("optimize", "fusing and folding")
        fp32, fused = optimize(exported)
        graphs["optimized"] = {"nodes": len(fp32.graph.node), "ops": op_histogram(fp32), "fusions": fused}
    timings["optimize"] = time.perf_counter() - start

    start = time.perf_counter()
    models = {}
    for precision in options.precisions:
        progress("convert", precision)
        if precision == "fp32":
            models[precision] = fp32
        elif precision == "fp16":  # for GPUs, whose providers fuse on their own: the standard graph
            models[precision] = convert.to_fp16(exported)
        elif precision == "qdq":  # for TensorRT: the standard graph too
            calibration = _calibration_inputs(options.calibration, preprocessing)
            progress("convert", f"qdq: calibrating int8 scales on {len(calibration)} images from {options.calibration}")
            models[precision] = convert.to_qdq(exported, calibration, options.batch)
        else:
            models[precision] = convert.to_int8(fp32)
    if options.opset == 16:  # once every conversion is done: fp16's keeps LayerNormalization's inputs in fp32
        for graph in models.values():
            to_opset_16(graph)
    timings["convert"] = time.perf_counter() - start

    weights, versions = dict(model.provenance), _versions()
    props = dict(variant=name, task=options.task, outputs=model.output_names, input_size=config.input_size,
                 preprocessing=preprocessing.to_dict(), labels=model.labels, weights=weights, opset=options.opset,
                 batch=options.batch or "dynamic", versions=versions, mae=_mae_metadata(model))
    for precision, graph in models.items():
        artifact.set_metadata(graph, artifact.metadata(precision=precision, **props))
        _check(graph, precision)
    files = {}
    for precision, graph in models.items():
        path = artifact.artifact_path(options.out_dir, name, options.task, precision)
        progress("write", str(path))
        artifact.save(graph, path)
        files[precision] = path

    report = {
        "variant": name, "task": options.task, "opset": options.opset, "batch": options.batch or "dynamic",
        "weights": weights, "input_size": list(config.input_size), "graphs": graphs, "artifacts": {},
        "producer": versions,
    }
    for precision, path in files.items():
        findings = trt_check.check(models[precision], options.trt_version)
        report["artifacts"][precision] = {"file": path.name, "bytes": _size(path), "sha256": sha256(path),
                                          "nodes": len(models[precision].graph.node),
                                          "tensorrt_check": {"version": options.trt_version, "findings": findings}}

    report["tensorrt"] = _engine(options, installed_trt, files, models, name, progress)

    start = time.perf_counter()
    report["passed"] = None
    if options.validate:
        inputs, names = parity.validation_inputs(model, preprocessing, options.seed)
        report["validation"] = {"inputs": names, "reference": "PyTorch fp32 (this package's model, same weights)",
                                "runtime": "this package's runtime: onnxruntime CPUExecutionProvider (TensorRT for an "
                                           "engine)", "thresholds": parity.THRESHOLDS}
        reference = parity.run_torch(model, inputs)
        report["passed"] = True
        for precision, path in files.items():
            progress("validate", f"{precision} against PyTorch fp32 on {len(names)} inputs")
            result = parity.compare(reference, parity.run_artifact(path, inputs))
            failed = parity.failures(precision, result)
            report["artifacts"][precision].update(parity=result, passed=not failed, failures=failed)
            report["passed"] &= not failed
        if "engine" in report["tensorrt"]:
            progress("validate", f"the TensorRT engine against PyTorch fp32 on {len(names)} inputs")
            result = parity.compare(reference, parity.run_artifact(report["tensorrt"]["engine"], inputs))
            failed = parity.failures("fp16", result)  # TensorRT's fp32 uses TF32 matmuls: held to fp16's bound
            report["tensorrt"].update(parity=result, passed=not failed, failures=failed)
            report["passed"] &= not failed
    timings["validate"] = time.perf_counter() - start
    report["timings_s"] = {step: round(seconds, 2) for step, seconds in timings.items()}

    report_file = artifact.report_path(options.out_dir, name, options.task)
    artifact.write_json(report_file, report)
    report["report_file"] = str(report_file)
    return report


def _engine(options: Options, installed_trt: str | None, files: dict, models: dict, name: str, progress) -> dict:
    """The TensorRT plan of this export and its trtexec command; with `options.build_engine`, the engine itself."""
    version = installed_trt if options.build_engine else options.trt_version
    engine = artifact.engine_path(options.out_dir, name, options.task, options.engine.precision)
    try:
        plan = tensorrt.plan(files, models, options.engine, version)
    except ExportError as error:
        if options.build_engine:
            raise
        return {"version": version, "plan_error": str(error)}
    entry = {"version": version, "plan": asdict(plan), "trtexec": tensorrt.trtexec_command(plan, engine)}
    if options.build_engine:
        progress("tensorrt", f"building {engine.name} with TensorRT {installed_trt} (minutes)")
        entry["sidecar"] = tensorrt.build(plan, engine)
        entry["engine"] = str(engine)
    return entry


def _mae_metadata(model) -> dict | None:
    """What the runtime needs to draw masks and put an MAE model's patches together."""
    if model.task != "mae":
        return None
    c = model.config
    return {"mask_units": c.mask_units, "mask_ratio": c.mask_ratio, "pred_stride": model.pred_stride,
            "norm_pix_loss": c.norm_pix_loss}


def _select_features(model, names: tuple[str, ...]) -> None:
    if model.task != "backbone":
        raise ExportError("--out-features: only for --task backbone")
    unknown = [n for n in names if n not in model.out_features]
    if unknown or not names:
        raise ExportError(f"--out-features {' '.join(names)}: choose from {', '.join(model.out_features)}")
    model.out_features = tuple(n for n in model.out_features if n in names)  # in stage order


def _calibration_inputs(directory: Path, preprocessing):
    """The images of `directory` (recursively, sorted, at most CALIBRATION_IMAGES), preprocessed as the runtime
    will preprocess its input."""
    try:
        paths = find_images(directory)[:CALIBRATION_IMAGES]
        return np.stack([preprocessing(load_image(path)) for path in paths])
    except HieraRuntimeError as error:
        raise ExportError(f"--calibration: {error}") from None


def _check(model: onnx.ModelProto, precision: str) -> None:
    """onnx's full check (with strict shape inference) on every artifact before it is written."""
    try:
        if not artifact.is_large(model):
            onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(artifact.without_weights(model), check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ExportError(f"the {precision} graph fails onnx's checker: {str(error).splitlines()[0]}") from None


def _check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test."):
            pass
    except OSError as error:
        raise ExportError(f"{out_dir}: output directory is not writable ({error.strerror or error})") from None


def _size(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _versions() -> dict[str, str]:
    versions = {}
    for package in PRODUCER_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


