"""LiteRT (TFLite) sessions on `.tflite` artifacts, with `ai-edge-litert`'s interpreter (XNNPACK on CPUs), and the
reader of the `hiera.*` metadata such a file carries (docs/edge.md).

The metadata lives in the flatbuffer's own metadata table (`Model.metadata`: a name and a buffer each), one entry
per `hiera.*` key whose buffer holds the UTF-8 JSON value: the same keys and values as an ONNX artifact's
metadata_props, readable without torch and without running the model (`read_metadata`).
"""

from __future__ import annotations

import importlib
import mmap
import threading
from pathlib import Path

import numpy as np

from . import artifact, files
from .errors import HieraRuntimeError
from .interface import check_inputs

SUFFIX = ".tflite"
IDENTIFIER = b"TFL3"  # the flatbuffer file identifier of a TFLite model, bytes 4..8
MAX_ENTRY_BYTES = 64 << 20  # one metadata value; the probe is the largest, tens of KB


def import_litert(module: str = "interpreter"):
    """A module of ai-edge-litert (its interpreter; `schema_py_generated`, the TFLite schema's reader)."""
    try:
        return importlib.import_module(f"ai_edge_litert.{module}")
    except ImportError:
        raise HieraRuntimeError("ai-edge-litert is not installed: pip install 'hiera-deploy[litert]'") from None


def read_metadata(path) -> dict[str, str]:
    """The entries of a `.tflite`'s metadata table whose name starts with `hiera.`, by name, each value as text.
    Read from the mapped file (a model's weights are never copied); one line if it is not a TFLite model."""
    schema = import_litert("schema_py_generated")  # the TFLite schema's reader (needs only flatbuffers)
    path = files.require_file(path)
    with files.open_file(path) as file:
        try:
            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):  # an empty file cannot be mapped
            raise HieraRuntimeError(f"{path}: not a TFLite model (empty)") from None
    with data:
        if data[4:8] != IDENTIFIER:
            raise HieraRuntimeError(f"{path}: not a TFLite model (no {IDENTIFIER.decode()} identifier)")
        try:
            model = schema.Model.GetRootAs(data, 0)
            entries = {}
            for index in range(model.MetadataLength()):
                entry = model.Metadata(index)
                name = (entry.Name() or b"").decode()
                if name in entries:  # two values for one key: which one a reader takes would decide what runs
                    raise HieraRuntimeError(f"{path}: damaged Hiera metadata: {name} is in its metadata table twice")
                if name.startswith("hiera."):
                    entries[name] = _buffer(data, model.Buffers(entry.Buffer()), path, name)
            return entries
        except HieraRuntimeError:
            raise
        except Exception as error:  # flatbuffers' reader raises struct.error, IndexError, ... on a damaged file
            kind = type(error).__name__ if type(error).__module__ == "builtins" else \
                f"{type(error).__module__}.{type(error).__name__}"  # struct's is called just "error"
            raise HieraRuntimeError(f"{path}: damaged TFLite model: its metadata table cannot be read "
                                    f"({kind}: {str(error).splitlines()[0] if str(error) else 'no detail'})") from None


def _buffer(data: mmap.mmap, buffer, path: Path, name: str) -> str:
    """A buffer's bytes as text: inside the flatbuffer, or (models above 2 GB) at an offset after it."""
    if buffer is None:
        raise HieraRuntimeError(f"{path}: damaged Hiera metadata: {name} names no buffer")
    size = buffer.DataLength() or buffer.Size()
    if size > MAX_ENTRY_BYTES:
        raise HieraRuntimeError(f"{path}: damaged Hiera metadata: {name} holds {size} bytes")
    if not buffer.DataLength() and buffer.Offset() + size > len(data):  # a slice past the end would read short
        raise HieraRuntimeError(f"{path}: damaged Hiera metadata: {name}'s {size} bytes at offset {buffer.Offset()} "
                                f"lie outside the file ({len(data)} bytes)")
    raw = buffer.DataAsNumpy().tobytes() if buffer.DataLength() else data[buffer.Offset():buffer.Offset() + size]
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise HieraRuntimeError(f"{path}: damaged Hiera metadata: {name} is not UTF-8 text") from None


class LiteRtSession:
    """One `.tflite` on LiteRT's interpreter (XNNPACK on the CPU): `run(pixel_values, **other_inputs)` returns the
    outputs by name. The artifact has a static batch (converted at batch 1): the model layer runs larger batches
    in chunks, as for any static batch.

    An interpreter serves one call at a time, so each thread that calls gets its own (made on its first call);
    calls from several threads run side by side."""

    def __init__(self, path, threads: int | None = None):
        self._litert = import_litert()
        self.path = files.require_file(path)
        self.metadata_path = self.path
        self.metadata = artifact.read_metadata(self.path)  # which comes back to read_metadata below
        self.threads = threads
        self._local = threading.local()
        runner = self._runner()
        inputs, outputs = runner.get_input_details(), runner.get_output_details()
        names = list(inputs)
        self.input_name = "pixel_values" if "pixel_values" in inputs else names[0]
        self.input_shape = [int(d) for d in inputs[self.input_name]["shape"]]
        self.input_dtype = np.dtype(inputs[self.input_name]["dtype"])
        self.other_inputs = {name: np.dtype(inputs[name]["dtype"]) for name in names if name != self.input_name}
        self.output_names = list(outputs)
        self.output_shapes = {name: [int(d) for d in detail["shape"]] for name, detail in outputs.items()}
        self.max_batch = self.input_shape[0]
        self.providers = [f"LiteRT {_version()} XNNPACK CPU"]
        self.device = "cpu"
        self.inference_precision = None  # the artifact's own
        self._check_against_metadata()

    def _runner(self):
        """This thread's signature runner (its interpreter made on first use)."""
        runner = getattr(self._local, "runner", None)
        if runner is None:
            try:
                interpreter = self._litert.Interpreter(model_path=str(self.path), num_threads=self.threads)
                runner = interpreter.get_signature_runner()
            except (ValueError, RuntimeError) as error:
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise HieraRuntimeError(f"{self.path}: LiteRT cannot load this model ({reason})") from None
            self._local.interpreter, self._local.runner = interpreter, runner
        return runner

    def _check_against_metadata(self) -> None:
        """The tensors are what the metadata says: its batch, input size and outputs (a file edited or put together
        from two exports would otherwise run with the wrong preprocessing or labels)."""
        if not self.metadata:
            return  # a foreign model: open_model asks for its preprocessing
        info = artifact.from_metadata(self.metadata, self.path)
        expected = [info.batch or 1, self.input_shape[1], *info.input_size]
        if self.input_shape != expected:
            raise HieraRuntimeError(f"{self.path}: damaged Hiera metadata: the model's input is {self.input_shape}, "
                                    f"its metadata says {expected}")
        if set(self.output_names) != set(info.outputs):
            raise HieraRuntimeError(f"{self.path}: damaged Hiera metadata: the model's outputs are "
                                    f"{', '.join(self.output_names)}, its metadata says {', '.join(info.outputs)}")

    def run(self, pixel_values: np.ndarray, **other_inputs: np.ndarray) -> dict[str, np.ndarray]:
        check_inputs(self, other_inputs)
        feeds = {self.input_name: np.ascontiguousarray(pixel_values, dtype=self.input_dtype),
                 **{name: np.ascontiguousarray(value, dtype=self.other_inputs[name])
                    for name, value in other_inputs.items()}}
        if list(feeds[self.input_name].shape) != self.input_shape:
            raise HieraRuntimeError(f"{self.path}: takes input {self.input_shape}, given "
                                    f"{list(feeds[self.input_name].shape)}")
        try:
            outputs = self._runner()(**feeds)
        except (ValueError, RuntimeError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise HieraRuntimeError(f"{self.path}: LiteRT failed on input {self.input_shape} ({reason})") from None
        return {name: np.array(outputs[name]) for name in self.output_names}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai-edge-litert")
    except PackageNotFoundError:
        return "(unknown version)"
