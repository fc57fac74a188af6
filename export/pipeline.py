"""The export, as the list of its stages: weights, reference, trace, optimize, convert, check, TensorRT,
validate, report. `run` checks the options, then runs each stage in a transaction (see `transaction`):
every file is built and validated in a staging folder and moved into place whole, report included.

Each stage takes the `Run` (what earlier stages handed on) and returns its part of the report, which is
merged into what earlier stages returned (a stage may add to an artifact's entry). A stage
keeps only what later ones need: the PyTorch outputs the artifacts are compared with are computed
before tracing, so the torch model is freed once the graph exists, and each artifact is written as soon
as it is converted. The report records each stage's time and peak resident memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import importlib
import importlib.metadata
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from runtime import files, load, probe
from runtime.artifact import to_metadata
from runtime.formats import FORMATS
from runtime.errors import HieraRuntimeError
from runtime.preprocess import find_images, load_clip, load_image

from . import artifact, convert, hub, openvino, parity, tensorrt, trt_check
from .errors import ExportError
from .onnx_export import to_opset_16, trace
from .optimize import max_rank, op_histogram, optimize
from .options import DEFAULT_PRECISIONS, PRECISIONS, Options, check
from .transaction import Transaction
from .weights import is_sam2_model, load_weights, preprocessing_for

__all__ = ["DEFAULT_PRECISIONS", "PRECISIONS", "Options", "run"]

CALIBRATION_IMAGES = 512  # at most, the first in sorted order
TRACED, OPTIMIZED = ".traced.onnx", ".optimized.onnx"  # the graphs the artifacts are made from, in staging
PRODUCER_PACKAGES = ("hiera-deploy", "torch", "onnx", "onnxscript", "onnxruntime")
# Which graph each precision is made from, and how. The traced graph has standard operators only (what
# GPU providers and TensorRT parse and fuse on their own); the optimized one has onnxruntime's fused
# operators (for its CPU provider). Without optimization both are the traced graph.
# OpenVINO fuses the standard-op graph itself (see export/openvino.py). From the registry, runtime/formats.py.
# The edge kinds (source "pytorch") are converted from the torch model by `_edge`, not from a graph.
CONVERSIONS = {name: (kind.source, getattr(convert, kind.converter) if kind.converter else None)
               for name, kind in FORMATS.items() if kind.source != "pytorch"}
# Core ML runs only on Apple systems: its artifacts are checked by the converter (conversion, ranks, operators), and
# validation records why they were not run, as it does for a TensorRT engine without a GPU.
NOT_RUN_HERE = probe.NOT_RUN_HERE


@dataclass
class Run:
    """What the stages hand on to each other."""
    options: Options
    progress: callable
    model: object = None  # the torch model, until the graph is traced
    name: str = ""  # the variant, or the checkpoint's name
    stem: str = ""  # the name every file of this export starts with
    staging: Path | None = None
    preprocessing: object = None
    props: dict = field(default_factory=dict)  # the artifacts' metadata, but for the precision
    inputs: dict | None = None  # validation inputs by name, one row per sample
    reference: dict | None = None  # the PyTorch fp32 outputs on them
    graphs: dict = field(default_factory=dict)  # "traced" / "optimized" -> the graph's file in staging
    files: dict = field(default_factory=dict)  # precision -> the artifact in staging
    engine: Path | None = None
    weights_path: Path | None = None  # the checkpoint, when the weights came from one
    config: object = None  # the model's HieraConfig
    probe_pixels: np.ndarray | None = None  # the probe's photographs, cropped: uint8 [N, H, W, 3]
    probe_reference: dict | None = None  # PyTorch fp32's outputs on them
    family: str | None = None  # a family's task (export/segmenter.py): the Hub layout's check is the family's


def run(options: Options, progress=lambda step, message: None, family=None) -> dict:
    """Export, validate and write the artifacts and their report as one transaction; return the report.
    Raises `ExportError` on bad input or a failed step (the output folder is then as it was). Failed
    parity does not raise: the artifacts are written, the report's `passed` is False and says why.
    `family` adds a second model to the export (`export/segmenter.py`): its `task` names the files' stem, and
    `family(r, report)`, run after the stages, writes its files into `r.staging` and returns its part of the report."""
    r = Run(check(options), progress, family=family.task if family is not None else None)
    report = {"report_version": artifact.REPORT_VERSION, "stages": {}}
    _stage(r, report, "weights", _weights)
    if family is not None:
        r.stem = r.stem.removesuffix(f"_{r.options.task}") + f"_{family.task}"
    with Transaction(r.options.out_dir, r.stem) as transaction:
        r.staging = transaction.staging
        for name, stage in STAGES:
            _stage(r, report, name, stage)
        if family is not None:
            _stage(r, report, family.task, lambda r: family(r, report))
        names = [*report["files"], artifact.report_name(r.stem)]
        artifact.write_report(r.staging / names[-1], report)
        extra = _hub_folder(r, r.staging / names[-1], report) if r.options.layout == "hub" else []
        if extra:  # the report describes the files the Hub folder serves too, so that verify checks each of them
            report["files"].update({name: _entry(r.staging / name) for name in extra})
            artifact.write_report(r.staging / names[-1], report)
        progress("commit", f"moving {len(names) + len(extra)} files into {r.options.out_dir}")
        transaction.commit([*extra, *names])
    report = artifact.seal(report)
    report["report_file"] = str(r.options.out_dir / names[-1])
    return report


def _weights(r: Run) -> dict:
    o = r.options
    r.progress("weights", "loading " + (o.weights or "from the hub"))
    model, r.name, r.weights_path = load_weights(o.weights, o.variant, o.task, o.seed, o.allow_unverified,
                                                 out_features=o.out_features, with_loss=o.loss, input_size=o.image_size)
    r.config = model.config
    if o.layout == "hub":  # refused now rather than after the work
        hub.check(r.family or o.task, model.config.is_video, o.precisions, sam2=is_sam2_model(model))
    size = "x".join(map(str, dict.fromkeys(o.image_size))) if o.image_size else None  # 448, or 224x448
    r.model, r.stem = model, artifact.family(f"{r.name}_{size}" if size else r.name, o.task)
    r.preprocessing = preprocessing_for(r.weights_path, model.config.input_size, o.task,
                                        sam2=is_sam2_model(model))
    r.props = dict(variant=r.name, task=o.task, outputs=model.output_names, input_size=model.config.input_size,
                   preprocessing=r.preprocessing.to_dict(), labels=model.labels, weights=dict(model.provenance),
                   opset=o.opset, batch=o.batch or "dynamic", versions=_versions(), mae=_mae_metadata(model))
    return {"variant": r.name, "task": o.task, "opset": o.opset, "batch": o.batch or "dynamic",
            "weights": r.props["weights"], "input_size": list(model.config.input_size), "producer": r.props["versions"]}


def _reference(r: Run) -> dict:
    """The validation inputs and PyTorch's outputs on them, computed now so that the model can go."""
    if not r.options.validate:
        return {"validation": None}
    r.inputs, names = parity.validation_inputs(r.model, r.preprocessing, r.options.seed)
    r.progress("reference", f"PyTorch fp32 on {len(names)} validation inputs")
    r.reference = parity.run_torch(r.model, r.inputs)
    if r.config.in_chans == 3:  # the probe each artifact carries: photographs, so RGB models only
        r.probe_pixels = np.stack([r.preprocessing.crop(photo) for photo in parity.photographs().values()])
        feeds = probe.inputs(r.probe_pixels, r.preprocessing, r.config.input_size, r.props["mae"])
        r.probe_reference = parity.run_torch(r.model, feeds)
    return {"validation": {"inputs": names, "seed": r.options.seed,
                           "reference": "PyTorch fp32 (this package's model, same weights)",
                           "runtime": "this package's runtime: onnxruntime CPUExecutionProvider (TensorRT for an "
                                      "engine)", "thresholds": parity.THRESHOLDS}}


def _edge(r: Run) -> dict:
    """The edge artifacts (source "pytorch": LiteRT, ...), each converted from the torch model itself while it is
    still here, by `export/<converter>.py: convert`, imported only now (its package is an optional extra, which
    `options.check` found before anything was written). They join `r.files`, so validation, the files' sha256
    and verify treat them as every other artifact; the probe goes in where the module can add metadata."""
    precisions = [p for p in r.options.precisions if FORMATS[p].source == "pytorch"]
    if not precisions:
        return {}
    import torch

    config = r.config
    example = {"pixel_values": torch.zeros(1, config.in_chans, *config.input_size)}  # edge artifacts: batch 1
    if "noise" in r.model.input_names:
        example["noise"] = torch.rand(1, config.mask_units)
    entries = {}
    for precision in precisions:
        module = importlib.import_module(f"export.{FORMATS[precision].converter}")
        path = r.staging / artifact.artifact_name(r.stem, precision)
        r.progress("convert", f"{precision}: converting the PyTorch model ({module.__name__})")
        metadata = to_metadata(precision=artifact.computes(precision), **{**r.props, "batch": 1})
        entries[precision] = module.convert(r.model, example, path, metadata)
        _release_memory()
        if r.probe_reference is not None and hasattr(module, "append_metadata"):
            _attach_probe(r, path, precision, module.append_metadata)
        r.files[precision] = path
    return {"artifacts": entries}


def _trace(r: Run) -> dict:
    o = r.options
    if not any(precision in CONVERSIONS for precision in o.precisions):  # edge artifacts only: no ONNX graph
        r.model = None
        _release_memory()
        return {}
    r.progress("export", f"tracing Hiera-{r.name} ({o.task}) to ONNX opset {o.opset}")
    r.graphs["traced"] = r.staging / TRACED
    trace(r.model, o.opset, o.batch, r.graphs["traced"])
    r.model = None  # everything later works on the graph
    _release_memory()
    traced = artifact.load_graph(r.graphs["traced"], weights=False)
    return {"graphs": {"exported": {"nodes": len(traced.graph.node), "ops": op_histogram(traced),
                                    "max_rank": max_rank(traced)}}}


def _optimize(r: Run) -> dict:
    if "traced" not in r.graphs:  # nothing traced (edge artifacts only)
        return {}
    if not r.options.optimize:
        r.graphs["optimized"] = r.graphs["traced"]
        return {}
    r.progress("optimize", "fusing and folding")
    r.graphs["optimized"] = r.staging / OPTIMIZED
    fused = optimize(r.graphs["traced"], r.graphs["optimized"])
    graph = artifact.load_graph(r.graphs["optimized"], weights=False)
    return {"graphs": {"optimized": {"nodes": len(graph.graph.node), "ops": op_histogram(graph), "fusions": fused}}}


def _convert(r: Run) -> dict:
    """Each precision from its source graph (a file in staging), with metadata, checked by onnx, written at once."""
    entries = {}
    for precision in (p for p in r.options.precisions if p in CONVERSIONS):
        source, converter = CONVERSIONS[precision]
        r.progress("convert", precision)
        if FORMATS[precision].needs_calibration:
            images = _calibration_inputs(r.options.calibration, r.preprocessing)
            r.progress("convert", f"{precision}: calibrating int8 scales on {len(images)} images from "
                                  f"{r.options.calibration}")
            converter = functools.partial(converter, calibration=images, batch=r.options.batch)
        # fp32 is its source graph with metadata: its weights are copied from the source's file as it is written
        graph = converter(r.graphs[source]) if converter else artifact.load_graph(r.graphs[source], weights=False)
        if r.options.opset == 16:  # after conversion: fp16's keeps LayerNormalization's inputs in fp32
            to_opset_16(graph)
        artifact.set_metadata(graph, to_metadata(precision=artifact.computes(precision), **r.props))
        path = r.staging / artifact.artifact_name(r.stem, precision)
        findings = trt_check.check(graph, r.options.trt_version)
        entries[precision] = {"file": path.name, "nodes": len(graph.graph.node), "max_rank": max_rank(graph),
                              "tensorrt_check": {"version": r.options.trt_version, "findings": findings}}
        r.progress("write", path.name)
        artifact.save_graph(graph, path, weights_dir=r.staging)
        del graph
        if r.probe_reference is not None:
            _attach_probe(r, path, precision)
        _onnx_check(path, precision)
        _release_memory()
        r.files[precision] = path
    return {"artifacts": entries}


def _attach_probe(r: Run, path: Path, precision: str, append=artifact.append_metadata) -> None:
    """Add the probe (`runtime.probe`) to the artifact just written: its photographs, PyTorch's outputs with the
    precision's bound, and this engine's own outputs (onnxruntime's CPU provider, as validation runs it; LiteRT
    for a .tflite, ExecuTorch's for a .pte; none for a Core ML package, which nothing runs here). `append` writes
    metadata into the artifact's kind of file."""
    engine = outputs = None
    if path.suffix not in NOT_RUN_HERE:
        model = load(path, provider="cpu", threads=2, check=False)
        outputs = model.run(**probe.inputs(r.probe_pixels, r.preprocessing, r.config.input_size, r.props["mae"]))
        engine = probe.engine_name(model.session)
        del model
    document = probe.make(r.probe_pixels, list(parity.photographs()), r.probe_reference,
                          parity.THRESHOLDS[precision], engine, outputs)
    append(path, {"hiera.probe": json.dumps(document, allow_nan=False)})


def _engine(r: Run) -> dict:
    """The TensorRT plan of this export and its trtexec command; with `build_engine`, the engine itself."""
    o = r.options
    version = tensorrt.tensorrt_version() if o.build_engine else o.trt_version
    engine = r.staging / artifact.engine_name(r.stem, o.engine.precision)
    onnx_files = {precision: path for precision, path in r.files.items() if FORMATS[precision].source != "pytorch"}
    if not onnx_files:  # edge formats only: TensorRT takes none of them
        return {}
    models = {precision: artifact.load_graph(path, weights=False) for precision, path in onnx_files.items()}
    try:
        plan = tensorrt.plan(onnx_files, models, o.engine, version)
    except ExportError as error:
        if o.build_engine:
            raise
        return {"tensorrt": {"version": version, "plan_error": str(error)}}
    entry = {"version": version, "plan": asdict(plan), "trtexec": tensorrt.trtexec_command(plan, engine)}
    if o.build_engine:
        r.progress("tensorrt", f"building {engine.name} with TensorRT {version} (minutes)")
        entry["sidecar"] = tensorrt.build(plan, engine)
        entry["engine"] = engine.name
        r.engine = engine
    return {"tensorrt": entry}


def _validate(r: Run) -> dict:
    """Each artifact (and the engine) through the runtime, against the PyTorch outputs, one at a time."""
    if not r.options.validate:
        return {"passed": None}
    artifacts, passed = {}, True
    count = len(next(iter(r.inputs.values())))
    for precision, path in r.files.items():
        if path.suffix in NOT_RUN_HERE:
            artifacts[precision] = {"parity": None, "passed": None, "failures": [],
                                    "skipped": NOT_RUN_HERE[path.suffix]}
            continue
        r.progress("validate", f"{precision} against PyTorch fp32 on {count} inputs")
        result = parity.compare(r.reference, parity.run_artifact(path, r.inputs))
        _release_memory()
        failed = parity.failures(precision, result)
        artifacts[precision] = {"parity": result, "passed": not failed, "failures": failed}
        passed &= not failed
    out = {"artifacts": artifacts, "passed": passed}
    if openvino.ARTIFACT in r.files:  # its rows: every artifact OpenVINO runs, at each inference precision
        out["openvino"] = openvino.parity(r.files, r.reference, r.inputs, r.progress)
        out["passed"] = passed and out["openvino"].get("passed") is not False
    if r.engine is not None:
        r.progress("validate", f"the TensorRT engine against PyTorch fp32 on {count} inputs")
        result = parity.compare(r.reference, parity.run_artifact(r.engine, r.inputs))
        failed = parity.failures("fp16", result)  # TensorRT's fp32 uses TF32 matmuls: held to fp16's bound
        out["tensorrt"] = {"parity": result, "passed": not failed, "failures": failed}
        out["passed"] = out["passed"] and not failed
    return out


def _entry(file: Path) -> dict:
    """What the report records of one file: its size and sha256."""
    return {"bytes": file.stat().st_size, "sha256": files.sha256(file)}


def _files(r: Run) -> dict:
    """Size and sha256 of every file of the export but the report, as written to staging."""
    entries, artifacts = {}, {}
    for precision, path in r.files.items():
        written = [file for file in (path, artifact.data_file(path), artifact.sidecar_of(path)) if file.exists()]
        for file in written:  # a Core ML package is a folder
            entries[file.name] = {"bytes": sum(f.stat().st_size for f in file.rglob("*") if f.is_file()),
                                  "sha256": files.sha256_folder(file)} \
                if file.is_dir() else {"bytes": file.stat().st_size, "sha256": files.sha256(file)}
        artifacts[precision] = {"bytes": sum(entries[file.name]["bytes"] for file in written),
                                "sha256": entries[path.name]["sha256"]}
    if r.engine is not None:
        for file in (r.engine, r.engine.with_name(r.engine.name + ".json")):
            entries[file.name] = {"bytes": file.stat().st_size, "sha256": files.sha256(file)}
    return {"artifacts": artifacts, "files": entries}


# The stages that run inside the transaction, in order (weights come first, to name the export's files).
STAGES = [("reference", _reference), ("edge", _edge), ("export", _trace), ("optimize", _optimize),
          ("convert", _convert), ("tensorrt", _engine), ("validate", _validate), ("files", _files)]


def _stage(r: Run, report: dict, name: str, stage) -> None:
    """Run one stage and merge its part into `report`, with its time and peak resident memory."""
    started = time.perf_counter()
    with _PeakMemory() as peak:
        _merge(report, stage(r))
    report["stages"][name] = {"seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": peak.mb}


def _merge(into: dict, part: dict) -> None:
    for key, value in part.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _hub_folder(r: Run, report_file: Path, report: dict) -> list[str]:
    """The Hugging Face files of the export (config.json, preprocessor_config.json, the ONNX files under the
    names transformers.js and optimum look for, a model card), made in staging beside the artifacts they link.
    An artifact that failed its checks is left out (said in the progress); without a passing fp32 there is none."""
    failed = {precision: entry["failures"] for precision, entry in report.get("artifacts", {}).items()
              if entry.get("passed") is False}
    for precision, failures in failed.items():
        r.progress("hub", f"{precision} left out of the Hub folder: it FAILED ({'; '.join(failures)})")
    for needed in ("fp32", "decoder-fp32"):  # decoder-fp32: a segmenter family's (export/segmenter.py)
        if needed in failed:
            r.progress("hub", f"no Hub folder: its {needed} artifact FAILED")
            return []
    r.progress("hub", "config.json, preprocessor_config.json, model card, ONNX files under the Hub's names")
    artifacts = hub.artifacts_of(report, r.staging, leave_out=failed)  # a family's decoder too
    tree = hub.layout(artifacts, report_file, r.weights_path, config=r.config)
    tree.pop(report_file.name)  # the report is already there, under its own name
    hub.write(tree, r.staging)
    return list(tree)


def _mae_metadata(model) -> dict | None:
    """What the runtime needs to draw masks and put an MAE model's patches together."""
    if model.task != "mae":
        return None
    c = model.config
    return {"mask_units": c.mask_units, "mask_ratio": c.mask_ratio, "pred_stride": model.pred_stride,
            "norm_pix_loss": c.norm_pix_loss}


def _calibration_inputs(directory: Path, preprocessing):
    """The images of `directory` (recursively, sorted, at most CALIBRATION_IMAGES), preprocessed as the runtime
    will preprocess its input; for a video model, its clips: each entry of `directory` (a multi-frame file or a
    folder of frames, sorted, hidden ones skipped), sampled and preprocessed as the runtime samples a clip."""
    try:
        if preprocessing.frames:
            clips = sorted(p for p in directory.iterdir() if not p.name.startswith("."))[:CALIBRATION_IMAGES]
            if not clips:
                raise HieraRuntimeError(f"{directory}: no clips in this directory (a video model calibrates on clips: "
                                        "multi-frame files or folders of frames)")
            return np.stack([preprocessing.clip(load_clip(path, preprocessing.frames, preprocessing.frame_stride))
                             for path in clips])
        paths = find_images(directory)[:CALIBRATION_IMAGES]
        return np.stack([preprocessing(load_image(path)) for path in paths])
    except HieraRuntimeError as error:
        raise ExportError(f"calibration: {error}", "calibration") from None


def _onnx_check(path: Path, precision: str) -> None:
    """onnx's full check, with strict shape inference, on every artifact as written (from the file, so that the
    check reads what users will read, and holds no second copy of a large model in Python)."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ExportError(f"the {precision} graph fails onnx's checker: {str(error).splitlines()[0]}") from None


def _release_memory() -> None:
    """Free what the last step dropped and give it back to the system (glibc keeps freed heap otherwise), so
    that the next step's peak starts from what is really in use."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _versions() -> dict[str, str]:
    versions = {}
    for package in PRODUCER_PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


class _PeakMemory:
    """The largest resident size of this process while a stage runs, sampled every 5 ms from /proc/self/statm by a
    thread (Linux; `mb` is None elsewhere). Sampling leaves the process's own peak (VmHWM) alone, which
    `/usr/bin/time` and memory monitors read: resetting it per stage (clear_refs) made them under-report. A spike
    shorter than a sample can be missed; each stage's steps hold their memory far longer than that."""

    INTERVAL = 0.005

    def __enter__(self):
        self.pages, self._done = 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._done.wait(self.INTERVAL):
            self._sample()

    def _sample(self) -> None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            self.pages = max(self.pages, int(Path("/proc/self/statm").read_text().split()[1]))

    @property
    def mb(self) -> float | None:
        return round(self.pages * self._page / (1 << 20), 1) if self.pages else None

