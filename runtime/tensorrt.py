"""TensorRT engines: whether this machine can run one, and a thin session over `tensorrt`.

An engine is tied to the TensorRT version and the GPU it was built for. Its sidecar `<engine>.json`
(format: `runtime.artifact`; `python -m export --trt` writes it, `python -m runtime sidecar` does for an
engine trtexec built) says which, with the sha256 of the engine and the artifact's `hiera.*` metadata.
The runtime checks the sidecar before it deserializes anything, so a mismatch is a message saying what
to rebuild rather than a TensorRT error.

Running an engine needs the `tensorrt` and `cuda-python` packages (`pip install 'hiera-deploy[tensorrt]'`).
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np

from . import files
from .artifact import make_sidecar, read_sidecar, sidecar_path, write_sidecar
from .errors import HieraRuntimeError
from .interface import check_inputs

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
# Engines built with the hardware-compatibility level "ampere_plus" run on any GPU from Ampere (8.0) on.
AMPERE = (8, 0)


def this_gpu(cudart) -> tuple[str, str]:
    """The name and compute capability ("8.9") of GPU 0."""
    properties = _cuda(cudart.cudaGetDeviceProperties(0))
    name = properties.name.decode() if isinstance(properties.name, bytes) else str(properties.name)
    return name.rstrip("\x00"), f"{properties.major}.{properties.minor}"


def sidecar_for_trtexec(engine: Path, onnx_file: Path, hardware_compatible: bool = False,
                        version_compatible: bool = False) -> Path:  # pragma: no cover - needs TensorRT and a GPU
    """Write the sidecar of an engine that `trtexec` built on this machine from our `onnx_file`."""
    from .session import OnnxSession

    if not engine.is_file():
        raise HieraRuntimeError(f"{engine}: no such file")
    trt, cudart = _import(engine)
    gpu, capability = this_gpu(cudart)
    metadata = OnnxSession(onnx_file, provider="cpu").metadata
    if not any(key.startswith("hiera.") for key in metadata):
        raise HieraRuntimeError(f"{onnx_file}: no Hiera metadata (hiera.* metadata_props): not exported by python "
                                "-m export")
    return write_sidecar(engine, make_sidecar(
        engine, onnx_file, metadata, tensorrt_version=trt.__version__, gpu=gpu, compute_capability=capability,
        build={"built_by": "trtexec", "hardware_compatible": hardware_compatible,
               "version_compatible": version_compatible}))


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def check_compatible(engine: Path, sidecar: dict, tensorrt_version: str, compute_capability: tuple[int, int]) -> None:
    """Refuse an engine that this TensorRT or this GPU cannot run, saying what to rebuild."""
    rebuild = (f"rebuild it on this machine from {sidecar.get('onnx', 'its ONNX file')} (python -m export --trt, or "
               "trtexec)")
    built = sidecar["tensorrt_version"]
    if sidecar.get("version_compatible"):  # runs on the same major version, the one it was built with or later
        runs = (version_tuple(tensorrt_version)[:1] == version_tuple(built)[:1]
                and version_tuple(tensorrt_version) >= version_tuple(built))
    else:
        runs = version_tuple(tensorrt_version) == version_tuple(built)
    if not runs:
        raise HieraRuntimeError(f"{engine}: built with TensorRT {built}, this machine has {tensorrt_version}; "
                                f"{rebuild}")
    built_cc = tuple(version_tuple(str(sidecar["compute_capability"])))
    runs = compute_capability >= AMPERE if sidecar.get("hardware_compatible") else compute_capability == built_cc
    if not runs:
        gpu = ".".join(map(str, compute_capability))
        raise HieraRuntimeError(f"{engine}: built for compute capability {sidecar['compute_capability']} "
                                f"({sidecar.get('gpu', 'another GPU')}), this GPU is {gpu}; {rebuild}")


def _import(engine: Path):
    try:
        import tensorrt
        from cuda.bindings import runtime as cudart
    except ImportError as error:
        raise HieraRuntimeError(f"{engine}: running a TensorRT engine needs {error.name} "
                                "(pip install 'hiera-deploy[tensorrt]'); or run the .onnx with onnxruntime's "
                                "TensorRT provider") from None
    return tensorrt, cudart


def _cuda(result):
    """cuda-python returns (error, *values): raise on an error, else the values."""
    error, *values = result
    if int(error) != 0:
        raise HieraRuntimeError(f"CUDA error {error}")
    return values[0] if len(values) == 1 else values


# The largest engine read: Hiera-H in fp32 is 2.7 GB; an engine of 32 GB fits no GPU's memory either.
MAX_ENGINE_BYTES = 32 << 30


class EngineSession:
    """A TensorRT engine with the same interface as `OnnxSession`: `run(pixel_values, **other_inputs)` ->
    outputs by name.

    Before anything is deserialized, the sidecar must say this TensorRT and this GPU can run the engine,
    and the engine's sha256 must be the `engine_sha256` the sidecar records: the labels and preprocessing
    in the sidecar describe that engine and no other.

    Safe to call from several threads at once, serialized: TensorRT lets an optimization profile serve one
    execution context at a time (our engines have one), so calls take turns on the one context, its stream
    and its device buffers, under a lock. Each call has its own host arrays, in and out.
    """

    def __init__(self, path):
        self.path = Path(path)
        sidecar = read_sidecar(self.path)
        self.metadata_path = sidecar_path(self.path)
        trt, self._cudart = _import(self.path)
        _, capability = this_gpu(self._cudart)
        check_compatible(self.path, sidecar, trt.__version__, tuple(version_tuple(capability)))
        size = self.path.stat().st_size
        if size > MAX_ENGINE_BYTES:
            raise HieraRuntimeError(f"{self.path}: {size:,} bytes, more than any engine ({MAX_ENGINE_BYTES:,})")
        plan = files.read_bytes(self.path, size)  # hashed and deserialized from the same bytes
        if hashlib.sha256(plan).hexdigest() != sidecar.get("engine_sha256"):
            raise HieraRuntimeError(f"{self.path}: not the engine its sidecar {self.metadata_path.name} describes "
                                    "(its sha256 differs from engine_sha256); rebuild the engine and its sidecar "
                                    f"from {sidecar.get('onnx', 'its ONNX file')}")
        self.metadata = sidecar["metadata"]
        self.engine = trt.Runtime(trt.Logger(trt.Logger.ERROR)).deserialize_cuda_engine(plan)
        del plan
        if self.engine is None:
            raise HieraRuntimeError(f"{self.path}: TensorRT cannot deserialize this engine (damaged, or built "
                                    "with other options than its sidecar says)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_name, self.output_names = inputs[0], [n for n in names if n not in inputs]
        self.other_inputs = inputs[1:]
        self.input_shape = [d if d >= 0 else "batch" for d in self.engine.get_tensor_shape(self.input_name)]
        self.output_shapes = {n: [d if d >= 0 else None for d in self.engine.get_tensor_shape(n)]
                              for n in self.output_names}
        # A dynamic batch runs up to its optimization profile's largest batch.
        self.max_batch = self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0] \
            if self.input_shape[0] == "batch" else None
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.providers = [f"TensorRT {trt.__version__}"]
        self.device, self.inference_precision = "cuda", None
        self.context = self.engine.create_execution_context()
        self.stream = _cuda(self._cudart.cudaStreamCreate())
        self._device = {}  # tensor name -> (device pointer, bytes): grown, never shrunk
        self._lock = threading.Lock()  # one call at a time on the context, stream and buffers

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self._device.get(name, (None, 0))
        if size < nbytes:
            if pointer is not None:
                _cuda(self._cudart.cudaFree(pointer))
                del self._device[name]
            pointer = _cuda(self._cudart.cudaMalloc(nbytes))
            self._device[name] = pointer, nbytes
            self.context.set_tensor_address(name, int(pointer))
        return pointer

    def run(self, pixel_values: np.ndarray, **other_inputs: np.ndarray) -> dict[str, np.ndarray]:
        check_inputs(self, other_inputs)
        host_inputs = {name: np.ascontiguousarray(value, dtype=self.dtypes[name])
                       for name, value in {self.input_name: pixel_values, **other_inputs}.items()}
        with self._lock:
            return self._run(host_inputs)

    def _run(self, host_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        for name, host_input in host_inputs.items():  # kept alive until the stream is synchronized
            self.context.set_input_shape(name, host_input.shape)
            _cuda(cudart.cudaMemcpyAsync(self._buffer(name, host_input.nbytes), host_input.ctypes.data,
                                         host_input.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        outputs = {name: np.empty(tuple(self.context.get_tensor_shape(name)), self.dtypes[name])
                   for name in self.output_names}
        for name, host in outputs.items():
            self._buffer(name, host.nbytes)
        if not self.context.execute_async_v3(int(self.stream)):
            _cuda(cudart.cudaStreamSynchronize(self.stream))  # the copies already queued still read our arrays
            raise HieraRuntimeError(f"{self.path}: TensorRT failed to run the engine")
        for name, host in outputs.items():
            _cuda(cudart.cudaMemcpyAsync(host.ctypes.data, self._device[name][0], host.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        _cuda(cudart.cudaStreamSynchronize(self.stream))
        return outputs

    def __del__(self):
        cudart = getattr(self, "_cudart", None)
        for pointer, _ in getattr(self, "_device", {}).values():
            cudart.cudaFree(pointer)
        if getattr(self, "stream", None) is not None:
            cudart.cudaStreamDestroy(self.stream)
