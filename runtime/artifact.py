"""The artifact format (../docs/architecture.md): the one module that writes and reads what an artifact says
about itself.

- An exported `.onnx` carries `hiera.*` metadata_props, each value a JSON document: what the model is,
  how to preprocess its input, what its outputs mean, where its weights came from and what produced
  it. `to_metadata` encodes them (export writes through it); `from_metadata` decodes and validates
  them (the runtime reads nothing else to run a model).
- A TensorRT engine has a sidecar `<engine>.json`: the TensorRT version and GPU it was built for, the
  sha256 of its source ONNX and of the engine itself, and the source's `hiera.*` metadata.

Nothing read is trusted: every field is checked for its type and range, and a bad one is one line
naming the file and the field. Files are read and written through `runtime.files`.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from . import files
from .errors import HieraRuntimeError
from .formats import COMPUTED
from .preprocess import Preprocessing
from .probe import PROBE_VERSION

FORMAT_VERSION = 2  # the newest metadata format this runtime reads (and export writes); 2 adds hiera.probe
TASKS = ("classify", "features", "backbone", "mae", "image-encoder", "mask-decoder")  # the last two: SAM 2's
PRECISIONS = COMPUTED  # what hiera.precision may say (runtime/formats.py)
PER_ARTIFACT = ("precision", "probe")  # the hiera.* entries that differ between the artifacts of one export
MAX_BATCH = 1024  # the largest batch an artifact may declare (and export traces for a dynamic batch)
MAX_SIDE = 16384  # pixels (or frames) along one input axis
SIDECAR_BYTES = 64 << 20  # a sidecar is a few KB; a larger file is not one
TASK_OUTPUTS = {"classify": {"logits"}, "features": {"last_hidden_state", "pooler_output"},
                "mae": {"logits", "bool_masked_pos", "ids_restore"},
                "image-encoder": {"image_embeddings", "high_res_feats_0", "high_res_feats_1"},
                "mask-decoder": {"masks", "iou_scores"}}


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
    outputs: tuple[str, ...] = ()
    probe: dict | None = None  # hiera.probe (runtime.probe), None where the artifact carries none
    format_version: int = FORMAT_VERSION
    encoder: dict | None = None  # a mask decoder's: the encoder it belongs to {"variant", "weights", "input_size"}

    def label(self, index: int) -> str | None:
        return self.labels[index] if self.labels and index < len(self.labels) else None


def to_metadata(*, variant: str, task: str, outputs: list[str], input_size, preprocessing: dict, labels,
                weights: dict, opset: int, precision: str, batch, versions: dict,
                mae: dict | None = None, encoder: dict | None = None) -> dict[str, str]:
    """The `hiera.*` metadata_props of an artifact: every value a JSON document (`mae` only for MAE models).
    NaN and Inf are refused: they are not JSON."""
    values = {
        "format_version": FORMAT_VERSION,
        "variant": variant,
        "task": task,
        "input_size": list(input_size),
        "batch": batch,  # an int, or "dynamic"
        "outputs": list(outputs),
        "preprocessing": preprocessing,
        "labels": list(labels) if labels else None,
        "weights": weights,  # {"source", "sha256", "verified"}; source "random:SEED" for random weights
        "opset": opset,
        "precision": precision,
        "producer": versions,
    }
    if mae is not None:
        values["mae"] = mae  # {"mask_units", "mask_ratio", "pred_stride", "norm_pix_loss"}
    if encoder is not None:
        values["encoder"] = encoder  # a mask decoder's: {"variant", "weights", "input_size"} of its encoder
    return {f"hiera.{key}": json.dumps(value, allow_nan=False) for key, value in values.items()}


class _Bad(ValueError):
    """A field that fails its check: `from_metadata` names the file and the field."""


def _int(value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _Bad(f"{value!r} is not a whole number from {low} to {high}")
    return value


def _number(value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise _Bad(f"{value!r} is not a number from {low:g} to {high:g}")
    return float(value)


def _text(value) -> str:
    if not isinstance(value, str) or not value:
        raise _Bad(f"{value!r} is not a non-empty string")
    return value


def _object(value) -> dict:
    if not isinstance(value, dict):
        raise _Bad(f"{value!r} is not an object")
    return value


def _one_of(value, choices) -> str:
    if value not in choices:
        raise _Bad(f"{value!r} is not one of {', '.join(choices)}")
    return value


def _input_size(value) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) not in (2, 3):
        raise _Bad(f"{value!r} is not [height, width] or [frames, height, width]")
    return tuple(_int(side, 1, MAX_SIDE) for side in value)


def _texts(value) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _Bad(f"{value!r} is not a non-empty list of strings")
    return tuple(_text(item) for item in value)


def _decode_fields(meta: dict) -> ModelInfo:
    """The validated ModelInfo of decoded metadata; raises `_Bad` with the field's name first."""
    def field(name, check, *args, required=True):
        if name not in meta:
            if required:
                raise _Bad(f"hiera.{name}: missing")
            return None
        try:
            return check(meta[name], *args)
        except (ValueError, TypeError, KeyError) as error:  # ours (_Bad), or Preprocessing's own checks
            raise _Bad(f"hiera.{name}: {error}") from None

    version = field("format_version", _int, 1, 1 << 30)
    if version > FORMAT_VERSION:
        raise HieraRuntimeError(f"metadata format {version} is newer than this runtime reads ({FORMAT_VERSION}); "
                                "upgrade hiera-deploy")
    task = field("task", _one_of, TASKS)
    input_size = field("input_size", _input_size)
    batch = field("batch", lambda v: None if v == "dynamic" else _int(v, 1, MAX_BATCH))
    outputs = field("outputs", _texts)
    expected = TASK_OUTPUTS.get(task, set())
    if not expected <= set(outputs):
        raise _Bad(f"hiera.outputs: {list(outputs)} lacks {', '.join(sorted(expected - set(outputs)))} for a "
                   f"{task} model")
    preprocessing = field("preprocessing", lambda v: Preprocessing.from_dict(_object(v)))
    if tuple(preprocessing.crop_size) != input_size[-2:]:
        raise _Bad(f"hiera.preprocessing: crops {list(preprocessing.crop_size)}, the model takes "
                   f"{list(input_size[-2:])}")
    if preprocessing.frames != (input_size[0] if len(input_size) == 3 else 0):
        raise _Bad(f"hiera.preprocessing: {preprocessing.frames} frames per clip for input size {list(input_size)}")
    if batch is not None:  # a static batch is what every call allocates: held to the megapixel guard
        field("batch", preprocessing.check_batch)
    labels = field("labels", lambda v: None if v is None else _texts(v), required=False)
    weights = field("weights", _weights, required=False)
    precision = field("precision", _one_of, PRECISIONS, required=False)
    variant = field("variant", _text, required=False)
    mae = field("mae", _mae) if task == "mae" else None
    if mae is not None and mae["mask_units"] > preprocessing.pixels:  # the noise input is [batch, mask units]
        raise _Bad(f"hiera.mae: mask_units {mae['mask_units']} for inputs of {preprocessing.pixels} pixels: a mask "
                   "unit holds one pixel at the least")
    probe = field("probe", _probe, required=False)
    encoder = field("encoder", _encoder) if task == "mask-decoder" else None
    return ModelInfo(task=task, input_size=input_size, batch=batch, preprocessing=preprocessing, labels=labels,
                     variant=variant, precision=precision, weights=weights, mae=mae, outputs=outputs, probe=probe,
                     format_version=version, encoder=encoder)


def _probe(value) -> dict:
    """The probe's envelope; its arrays are checked when it runs (runtime.probe)."""
    _object(value)
    version = _int(value.get("version"), 1, 1 << 30)
    if version > PROBE_VERSION:
        raise _Bad(f"probe format {version} is newer than this runtime reads ({PROBE_VERSION}); upgrade hiera-deploy")
    return value


def _weights(value) -> dict:
    _object(value)
    _text(value.get("source"))
    if value.get("sha256") is not None and not isinstance(value["sha256"], str):
        raise _Bad(f"sha256 {value['sha256']!r} is not a string")
    if not isinstance(value.get("verified"), bool):
        raise _Bad(f"verified {value.get('verified')!r} is not true or false")
    return value


def _encoder(value) -> dict:
    """A mask decoder's encoder: what an encoder artifact's own metadata must say for the two to run together."""
    _object(value)
    try:
        return {"variant": _text(value.get("variant")), "weights": _weights(value.get("weights")),
                "input_size": list(_input_size(value.get("input_size")))}
    except _Bad as error:
        raise _Bad(f"{error} (variant, weights, input_size)") from None


def _mae(value) -> dict:
    _object(value)
    try:
        units = _int(value.get("mask_units"), 1, MAX_SIDE * MAX_SIDE)
        ratio = _number(value.get("mask_ratio"), 0, 0.999999)
        stride = _int(value.get("pred_stride"), 1, MAX_SIDE)
    except _Bad as error:
        raise _Bad(f"{error} (mask_units, mask_ratio, pred_stride)") from None
    if not isinstance(value.get("norm_pix_loss"), bool):
        raise _Bad(f"norm_pix_loss {value.get('norm_pix_loss')!r} is not true or false")
    if int(units * (1 - ratio)) < 1:
        raise _Bad(f"mask_ratio {ratio} leaves none of {units} mask units visible")
    return {"mask_units": units, "mask_ratio": ratio, "pred_stride": stride, "norm_pix_loss": value["norm_pix_loss"]}


def decoded(props: dict[str, str], path) -> dict:
    """The `hiera.*` entries of a file's metadata, each decoded as strict JSON (no NaN), by name without the prefix:
    the one reader of them (`from_metadata` validates what it returns; the export, the Hub layout and the CLI read
    through it). Empty where the file has none."""
    meta = {}
    for key, value in props.items():
        if not key.startswith("hiera."):
            continue
        if not isinstance(value, str):
            raise HieraRuntimeError(f"{path}: damaged Hiera metadata: {key} is not a string")
        try:
            meta[key.removeprefix("hiera.")] = files.loads(value)
        except ValueError as error:
            raise HieraRuntimeError(f"{path}: damaged Hiera metadata: {key} is not JSON ({error})") from None
    return meta


def from_metadata(props: dict[str, str], path) -> ModelInfo:
    """Decode and validate the `hiera.*` entries of an ONNX file's (or an engine sidecar's) metadata."""
    meta = decoded(props, path)
    if not meta:
        raise HieraRuntimeError(f"{path}: no Hiera metadata (hiera.* metadata_props): not exported by python -m "
                                "export; give the preprocessing explicitly to run it anyway")
    try:
        return _decode_fields(meta)
    except _Bad as error:
        raise HieraRuntimeError(f"{path}: damaged Hiera metadata: {error}") from None
    except HieraRuntimeError as error:
        raise HieraRuntimeError(f"{path}: {error}") from None


# Edge artifacts keep their metadata in their own containers (docs/edge.md): by file suffix, the runtime module
# whose `read_metadata(path) -> dict[str, str]` reads it. An ONNX file's metadata_props are read by its session.
EDGE_METADATA = {".tflite": "litert", ".pte": "executorch"}


def read_metadata(path) -> dict[str, str] | None:
    """The `hiera.*` metadata of an edge artifact (by its suffix), as text by key; None for any other file."""
    module = EDGE_METADATA.get(Path(path).suffix)
    if module is None:
        return None
    return importlib.import_module(f".{module}", __package__).read_metadata(path)


def for_foreign_model(path, input_shape, output_names, preprocessing: Preprocessing) -> ModelInfo:
    """A model without our metadata, described by its own input shape and outputs and the caller's preprocessing.

    A single output is taken as logits."""
    size = tuple(input_shape[2:4])
    if all(isinstance(d, int) for d in size) and size != tuple(preprocessing.crop_size):
        raise HieraRuntimeError(f"{path}: takes {size[0]} x {size[1]} images, the preprocessing given crops "
                                f"{preprocessing.crop_size[0]} x {preprocessing.crop_size[1]}")
    batch = input_shape[0] if isinstance(input_shape[0], int) else None
    if batch is not None:  # the graph's own static batch: every call allocates it
        try:
            preprocessing.check_batch(_int(batch, 1, MAX_BATCH))
        except ValueError as error:
            raise HieraRuntimeError(f"{path}: its input {list(input_shape)}: {error}") from None
    task = "classify" if len(output_names) == 1 else "features"
    return ModelInfo(task=task, input_size=preprocessing.crop_size, batch=batch, preprocessing=preprocessing,
                     labels=None, outputs=tuple(output_names))


# The export report beside an artifact

REPORT_BYTES = 64 << 20  # a report is tens of KB; a larger file is not one


def report_path(artifact: Path) -> Path | None:
    """The export report that describes `artifact`: `<stem>.report.json` in its folder, where the artifact's name
    is the stem and a suffix (`.onnx`, `.int8.onnx`, `.openvino.onnx`, `.fp16.engine`, ...); None if there is
    none. The longest such stem wins (stems may hold dots: `hiera_sam2.1_...`)."""
    artifact = Path(artifact)
    stems = [report.name.removesuffix(".report.json") for report in artifact.parent.glob("*.report.json")]
    stems = [stem for stem in stems if artifact.name.startswith(stem + ".")]
    return artifact.with_name(max(stems, key=len) + ".report.json") if stems else None


def read_report(path: Path) -> dict:
    """An export report, read with a size bound: a JSON object that lists its artifacts."""
    report = files.read_json(path, REPORT_BYTES)
    if not isinstance(report, dict) or not isinstance(report.get("artifacts"), dict):
        raise HieraRuntimeError(f"{path}: not an export report (no artifacts listed)")
    return report


@dataclass(frozen=True)
class ReportVerdict:
    report: Path
    passed: bool | None  # None: exported without validation
    failures: tuple[str, ...]  # the failed checks, each with its figure


def report_verdict(artifact: Path) -> ReportVerdict | None:
    """What the export report beside `artifact` says of it, or None where no report lists it."""
    path = report_path(artifact)
    if path is None:
        return None
    report = read_report(path)
    name = Path(artifact).name

    def part(value, kind):  # a report is read, not trusted: a field of another type counts as absent
        return value if isinstance(value, kind) else kind()

    rows = [(key, entry) for key, entry in report["artifacts"].items()
            if isinstance(entry, dict) and entry.get("file") == name]
    tensorrt = part(report.get("tensorrt"), dict)
    if not rows and name == tensorrt.get("engine"):
        rows = [("tensorrt", tensorrt)]
    if not rows:
        return None
    key, entry = rows[0]
    passed = entry.get("passed")
    failures = [f"{key}: {failure}" for failure in part(entry.get("failures"), list) if isinstance(failure, str)]
    for row in part(part(report.get("openvino"), dict).get("rows"), list):  # OpenVINO's rows of this file
        if isinstance(row, dict) and row.get("artifact") == name and row.get("passed") is False:
            passed = False
            failures += [f"OpenVINO {row.get('inference_precision')}: {failure}"
                         for failure in part(row.get("failures"), list) if isinstance(failure, str)]
    return ReportVerdict(path, passed if isinstance(passed, bool) else None, tuple(failures))


# The engine sidecar

SHA256 = re.compile(r"[0-9a-f]{64}")
VERSION = re.compile(r"\d+(\.\d+)*")
CAPABILITY = re.compile(r"\d+\.\d+")


def sidecar_path(engine: Path) -> Path:
    return Path(engine).with_name(Path(engine).name + ".json")


def read_sidecar(engine: Path) -> dict:
    """The validated sidecar of `engine`: a bad field is one line naming the sidecar and the field."""
    engine = Path(engine)
    files.require_file(engine)
    path = sidecar_path(engine)
    try:
        files.require_file(path)
    except HieraRuntimeError:
        if path.exists():
            raise
        raise HieraRuntimeError(f"{engine}: no sidecar {path.name} next to the engine (python -m export --trt "
                                "writes it; the runtime needs it to check the engine and to preprocess)") from None
    sidecar = files.read_json(path, SIDECAR_BYTES)
    checks = {"tensorrt_version": VERSION, "compute_capability": CAPABILITY, "engine_sha256": SHA256}
    if not isinstance(sidecar, dict):
        raise HieraRuntimeError(f"{path}: damaged engine sidecar: not a JSON object")
    for key, pattern in checks.items():
        value = sidecar.get(key)
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise HieraRuntimeError(f"{path}: damaged engine sidecar: {key} {value!r} is not a "
                                    f"{'sha256' if pattern is SHA256 else 'version string such as 10.3'}")
    for key in ("version_compatible", "hardware_compatible"):
        if not isinstance(sidecar.get(key, False), bool):
            raise HieraRuntimeError(f"{path}: damaged engine sidecar: {key} {sidecar[key]!r} is not true or false")
    metadata = sidecar.get("metadata")
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HieraRuntimeError(f"{path}: damaged engine sidecar: metadata is not an object of strings")
    return sidecar


def make_sidecar(engine: Path, onnx_file: Path, metadata: dict[str, str], *, tensorrt_version: str, gpu: str,
                 compute_capability: str, build: dict) -> dict:
    """The sidecar of `engine`, built from `onnx_file` (whose `hiera.*` metadata it carries) on this GPU;
    `build` holds the build options (precision, profile, hardware_compatible, version_compatible, ...)."""
    return {"tensorrt_version": tensorrt_version, "gpu": gpu, "compute_capability": compute_capability,
            "onnx": Path(onnx_file).name, "onnx_sha256": files.sha256(onnx_file),
            "engine_sha256": files.sha256(engine), "metadata": metadata, **build}


def write_sidecar(engine: Path, sidecar: dict) -> Path:
    """Atomically, as `<engine>.json`."""
    path = sidecar_path(engine)
    files.write_json(path, sidecar)
    return path

