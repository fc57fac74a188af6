"""OpenVINO sessions: our standard-op ONNX graphs on the CPU with OpenVINO's own Python API.

`pip install 'hiera-deploy[openvino]'` (no onnxruntime, no torch). What OpenVINO runs:
- the standard-op fp32 graph (`<stem>.openvino.onnx`, which `python -m export` writes for it, or any
  `--no-optimize` fp32 artifact), the fp16 artifact and the qdq artifact (static int8: OpenVINO runs its
  Gemm/MatMul layers as int8), and an OpenVINO IR (`.xml` + `.bin`) converted from one of them.
- Not the default fp32 artifact nor the int8 one: they hold onnxruntime's own operators (domain
  `com.microsoft`), which are onnxruntime's to run; OpenVINO cannot convert some of them (QAttention)
  and translates the others its own way. They are refused, naming the file to use instead.

Inference precision: "f32" (the default: outputs match the artifact's fp32 math) or "bf16" (matmuls in
bfloat16: the fast path, refused on a CPU without native bf16, where OpenVINO would silently run f32).

Compiled models are cached when a `cache_dir` is given: an entry is OpenVINO's exported compiled model,
named by the sha256 of what it was compiled from (the model files' sha256, OpenVINO version, device,
precision, threads), behind a header that records those and the sha256 of the blob. An entry is written
atomically (never half-written under its name) and checked before use: OpenVINO imports a blob with
damaged weights without complaint and computes NaN from it, and would run another model's entry copied
under this one's name, so an entry that is damaged, or was compiled from anything else than what is asked
for now, is refused, saying to delete it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import json
import os
import platform
import queue
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import files
from .errors import HieraRuntimeError
from .interface import check_inputs

PRECISIONS = ("f32", "bf16")
OPENVINO_SUFFIX = ".openvino.onnx"  # the standard-op fp32 graph that python -m export writes for OpenVINO
IR_SUFFIX = ".xml"
STANDARD_DOMAINS = ("", "ai.onnx")
CACHE_MAGIC = b"hiera-deploy openvino cache 2\n"  # then a line: what it was compiled from; the blob's sha256
CACHE_KEY_LIMIT = 1 << 16
CACHE_SUFFIX = ".ovcache"
X86 = ("x86_64", "amd64", "i686", "x86")
DTYPES = {"f32": np.float32, "f16": np.float16, "f64": np.float64, "i64": np.int64, "i32": np.int32}


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise HieraRuntimeError("OpenVINO is not installed: pip install 'hiera-deploy[openvino]'") from None
    return openvino


def installed() -> bool:
    """Whether OpenVINO can be imported, without importing it."""
    return importlib.util.find_spec("openvino") is not None


# --- what an ONNX file says about itself, read without onnx or onnxruntime ---------------------------------
# Protobuf fields read: ModelProto 7 graph, 8 opset_import (OperatorSetIdProto: 1 domain), 14 metadata_props
# (StringStringEntryProto: 1 key, 2 value); GraphProto 11 input, 12 output (ValueInfoProto: 1 name). Nodes and
# weights are skipped unread.

def _varint(stream) -> int:
    value = shift = 0
    while shift < 64:
        byte = stream.read(1)
        if not byte:
            raise EOFError("truncated")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
    raise ValueError("varint too long")


def _fields(stream, end: int):
    """(field number, length) of each length-delimited field of the protobuf message that runs from the
    stream's position to `end`, the stream positioned at the field's data; the caller reads it, or not: the
    next field is found from the length. Fields of other wire types are skipped."""
    while stream.tell() < end:
        key = _varint(stream)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _varint(stream)
            continue
        length = {1: 8, 2: None, 5: 4}.get(wire, -1)
        length = _varint(stream) if length is None else length
        start = stream.tell()
        if length < 0 or start + length > end:
            raise ValueError(f"field {field} of wire type {wire} runs past its message")
        if wire == 2:
            yield field, length
        stream.seek(start + length)


def _strings(data: bytes, wanted=(1, 2)) -> dict[int, str]:
    """The string fields `wanted` of a small message."""
    stream = io.BytesIO(data)
    return {field: stream.read(length).decode() for field, length in _fields(stream, len(data)) if field in wanted}


class OnnxHeader(NamedTuple):
    domains: set[str]  # the operator domains imported; "" is the standard one
    metadata: dict[str, str]
    inputs: list[str]
    outputs: list[str]


def read_onnx_header(path) -> OnnxHeader:
    """What an ONNX file imports, says about itself and takes and gives, read without its nodes and weights."""
    header = OnnxHeader(set(), {}, [], [])
    try:
        with files.open_file(path) as stream:
            for field, length in _fields(stream, os.fstat(stream.fileno()).st_size):
                if field == 7:
                    for graph_field, size in _fields(stream, stream.tell() + length):
                        if graph_field in (11, 12):
                            name = _strings(stream.read(size), (1,)).get(1, "")
                            (header.inputs if graph_field == 11 else header.outputs).append(name)
                elif field in (8, 14):
                    entry = _strings(stream.read(length))
                    if field == 8:
                        header.domains.add(entry.get(1, ""))
                    else:
                        header.metadata[entry.get(1, "")] = entry.get(2, "")
    except (EOFError, ValueError, UnicodeDecodeError) as error:
        raise HieraRuntimeError(f"{path}: not an ONNX file ({error})") from None
    except OSError as error:
        raise files.FileError(f"{path}: cannot read ({error.strerror or error})") from None
    if not header.domains or not header.outputs:
        raise HieraRuntimeError(f"{path}: not an ONNX file (no operator set or no outputs)")
    return header


def refuse_foreign_operators(path: Path, domains: set[str]) -> None:
    """onnxruntime's fused artifacts are not for OpenVINO: say which file is."""
    foreign = sorted(domains - set(STANDARD_DOMAINS))
    if foreign:
        stem = path.name.removesuffix(".onnx").removesuffix(".int8")
        raise HieraRuntimeError(f"{path}: uses onnxruntime's own operators (domain {', '.join(foreign)}), not for "
                                f"OpenVINO; give it {stem}{OPENVINO_SUFFIX} (python -m export --precision openvino "
                                "writes it), the .fp16 or .qdq artifact, or run this file with onnxruntime "
                                "(provider cpu)")


def runs_best_here(path) -> bool:
    """Whether `provider="auto"` takes OpenVINO for `path`: an IR always; an ONNX file when OpenVINO is
    installed on an x86 CPU, onnxruntime has no GPU provider, and the file holds only standard operators."""
    path = Path(path)
    if path.suffix == IR_SUFFIX:
        return True
    if platform.machine().lower() not in X86 or not installed() or _onnxruntime_has_gpu():
        return False
    try:
        domains = read_onnx_header(path).domains
    except HieraRuntimeError:
        return False  # onnxruntime's session reports what is wrong with the file
    return domains <= set(STANDARD_DOMAINS)


def _onnxruntime_has_gpu() -> bool:
    if importlib.util.find_spec("onnxruntime") is None:
        return False
    import onnxruntime

    return bool({"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(onnxruntime.get_available_providers()))


def check_precision(precision: str, capabilities, cpu: str) -> None:
    """Refuse an inference precision this CPU cannot run natively (`capabilities`: OpenVINO's
    OPTIMIZATION_CAPABILITIES of the CPU)."""
    if precision not in PRECISIONS:
        raise HieraRuntimeError(f"inference precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    if precision == "bf16" and "BF16" not in capabilities:
        raise HieraRuntimeError(f"inference precision bf16: this CPU ({cpu}) has no native bf16 (AVX512_BF16 or "
                                "AMX); run in f32, or use the qdq artifact (int8) for speed")


def model_files(path: Path) -> list[Path]:
    """The files a model is read from: an ONNX file and its external weights (`<file>.data`), or an IR's
    .xml and .bin."""
    extra = path.with_suffix(".bin") if path.suffix == IR_SUFFIX else path.with_name(path.name + ".data")
    return [path, extra] if path.suffix == IR_SUFFIX or extra.exists() else [path]


@functools.cache
def shared_core():
    """One OpenVINO Core for the process. Each Core loads the CPU plugin, which on loading points the thread's
    alternate signal stack at memory of its own; a Core let go can unload it and leave that pointer dangling, and
    the next signal Python handles on that stack (SIGTERM, Ctrl-C) then kills the process with SIGSEGV instead of
    running its handler. Kept, the plugin and its memory stay."""
    return import_openvino().Core()


class OpenVinoSession:
    """A compiled OpenVINO model with the interface of `OnnxSession`: `run(pixel_values, **other_inputs)`
    returns the outputs by name.

    Safe under concurrent calls: each call takes an idle infer request from a pool, creating one when all are
    busy, and returns it after, so N threads run on N requests of one compiled model (OpenVINO's latency
    hint: one stream, which they share). `threads`: OpenVINO's INFERENCE_NUM_THREADS (default: all cores).
    """

    def __init__(self, path, threads: int | None = None, inference_precision: str = "f32", cache_dir=None):
        ov = import_openvino()
        self.path = files.require_file(path)
        core = shared_core()
        check_precision(inference_precision, core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"),
                        core.get_property("CPU", "FULL_DEVICE_NAME"))
        self.inference_precision = inference_precision
        config = {"INFERENCE_PRECISION_HINT": inference_precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        model = None
        if self.path.suffix == IR_SUFFIX:  # the metadata travels in the IR's rt_info, as OpenVINO converted it
            model = self._read(core)
            self.metadata = _rt_metadata(model)
            names = _listed(self.metadata.get("hiera.outputs")) + ["pixel_values", "noise"]
        else:
            header = read_onnx_header(self.path)
            refuse_foreign_operators(self.path, header.domains)
            self.metadata, names = header.metadata, header.inputs + header.outputs
        key = cache_key(self.path, ov.get_version(), core.get_property("CPU", "FULL_DEVICE_NAME"), config)
        entry = cache_entry(Path(cache_dir).expanduser(), key) if cache_dir else None
        compiled = read_cache(core, entry, key, config) if entry else None
        if compiled is None:
            model = model or self._read(core)
            try:
                compiled = core.compile_model(model, "CPU", config)
            except RuntimeError as error:
                raise HieraRuntimeError(f"{self.path}: OpenVINO cannot compile this model ({_first_line(error)})") \
                    from None
            if entry:
                write_cache(entry, key, compiled)
        self.compiled = compiled
        inputs = compiled.inputs
        self.input_name = _name(inputs[0], names)
        self.input_shape = _shape(inputs[0].get_partial_shape())
        self.other_inputs = {_name(i, names): DTYPES.get(i.get_element_type().get_type_name(), np.float32)
                             for i in inputs[1:]}
        self.output_names = [_name(output, names) for output in compiled.outputs]
        self.providers = [f"OpenVINO {ov.__version__.split('-')[0]} CPU ({inference_precision})"]
        self.max_batch = None  # any batch the input's batch axis allows
        self.metadata_path, self.device = self.path, "cpu"
        self.output_shapes = {name: _shape(output.get_partial_shape())
                              for name, output in zip(self.output_names, compiled.outputs)}
        self._idle = queue.SimpleQueue()  # infer requests not in use

    def _read(self, core):
        try:
            return core.read_model(str(self.path))
        except RuntimeError as error:
            raise HieraRuntimeError(f"{self.path}: OpenVINO cannot read this model ({_first_line(error)})") from None

    def run(self, pixel_values: np.ndarray, **other_inputs: np.ndarray) -> dict[str, np.ndarray]:
        check_inputs(self, other_inputs)
        feeds = {self.input_name: np.ascontiguousarray(pixel_values, dtype=np.float32)}
        feeds.update({name: np.ascontiguousarray(value, dtype=self.other_inputs[name])
                      for name, value in other_inputs.items()})
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            outputs = request.infer(feeds, share_inputs=True)  # copies the outputs out of the request
            return {name: outputs[i] for i, name in enumerate(self.output_names)}
        except RuntimeError as error:  # e.g. an input shape a static model does not take
            raise HieraRuntimeError(f"{self.path}: OpenVINO failed on input {list(pixel_values.shape)} "
                                    f"({_first_line(error)})") from None
        finally:
            self._idle.put(request)


def _listed(value: str | None) -> list[str]:
    """A JSON list of names from the metadata, or none (a damaged entry is the metadata reader's to report)."""
    try:
        names = json.loads(value or "[]")
    except ValueError:
        return []
    return [name for name in names if isinstance(name, str)] if isinstance(names, list) else []


def _first_line(error: Exception) -> str:
    """OpenVINO's messages run over many lines (a C++ trace); the last non-empty one says what happened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and not line.startswith("Exception")]
    return lines[-1] if lines else type(error).__name__


def _name(port, names: list[str]) -> str:
    """A port's name as the model file gives it: OpenVINO may know a tensor by several (the fp16 artifact's
    outputs are also their casts' inputs) and picks any of them."""
    return next((name for name in names if name in port.get_names()), port.get_any_name())


def _shape(shape) -> list:
    return [d.get_length() if d.is_static else "batch" if i == 0 else "?" for i, d in enumerate(shape)]


def _rt_metadata(model) -> dict[str, str]:
    """The `hiera.*` metadata of an IR: OpenVINO keeps an ONNX file's metadata_props in the model's
    rt_info["framework"], and writes them into the IRs it converts."""
    if not model.has_rt_info("framework"):
        return {}
    return {key: value.astype(str) for key, value in model.get_rt_info()["framework"].items()}


# --- the compiled-model cache --------------------------------------------------------------------------------

def cache_key(path: Path, version: str, cpu: str, config: dict) -> bytes:
    """What a compiled model is made from: the model's files (sha256), this OpenVINO, the device, the options
    (inference precision, threads); one line of JSON."""
    return json.dumps({"format": CACHE_MAGIC.decode().strip(), "model": [files.sha256(f) for f in model_files(path)],
                       "openvino": version, "device": f"CPU {cpu}",
                       "config": {name: str(value) for name, value in sorted(config.items())}}).encode() + b"\n"


def cache_entry(cache_dir: Path, key: bytes) -> Path:
    """The cache file of what `key` says: named by its sha256, so a changed model, another OpenVINO or other
    options never meet an old entry."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise files.FileError(f"{cache_dir}: cannot create the OpenVINO cache directory "
                              f"({error.strerror or error})") from None
    files.require_directory(cache_dir)
    return cache_dir / (hashlib.sha256(key).hexdigest() + CACHE_SUFFIX)


def read_cache(core, entry: Path, key: bytes, config: dict):
    """The compiled model in `entry`, or None when there is none yet; an entry that is damaged or was compiled
    from anything but `key` is refused."""
    if not entry.exists():
        return None
    with files.open_file(entry) as stream:
        try:
            magic, made_from = stream.read(len(CACHE_MAGIC)), stream.readline(CACHE_KEY_LIMIT)
            digest, blob = stream.read(64), stream.read()  # the blob unsliced: no copy of it
        except OSError as error:
            raise files.FileError(f"{entry}: cannot read ({error.strerror or error})") from None
    damaged = "delete it, and the model is compiled and cached again"
    if magic != CACHE_MAGIC or hashlib.sha256(blob).hexdigest().encode() != digest:
        raise HieraRuntimeError(f"{entry}: damaged OpenVINO cache entry (its contents do not match their sha256); "
                                f"{damaged}")
    if made_from != key:  # another model's entry under this one's name would run without complaint
        raise HieraRuntimeError(f"{entry}: an OpenVINO cache entry compiled from another model file, OpenVINO, "
                                f"device or precision than the one asked for; {damaged}")
    try:
        return core.import_model(blob, "CPU", config)
    except RuntimeError as error:
        raise HieraRuntimeError(f"{entry}: OpenVINO cannot import this cache entry ({_first_line(error)}); "
                                f"{damaged}") from None


def write_cache(entry: Path, key: bytes, compiled) -> None:
    """Atomically: the entry appears complete or not at all."""
    blob = compiled.export_model().getbuffer()
    with files.atomic_path(entry) as tmp, open(tmp, "wb") as out:  # header and blob, without joining them
        out.write(CACHE_MAGIC + key + hashlib.sha256(blob).hexdigest().encode())
        out.write(blob)
