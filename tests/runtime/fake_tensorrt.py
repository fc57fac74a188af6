"""A stand-in for what `EngineSession` calls in `tensorrt` and `cuda.bindings.runtime`, which cannot be
installed here, so that the session's own logic (sidecar and sha256 checks, buffers, streams, the lock)
runs in tests.

It keeps TensorRT's rules where they matter: device memory is separate memory (host buffers here) reached
only by copies; copies and execution are queued on a stream and happen at `cudaStreamSynchronize`; an
execution reads the tensor addresses and shapes the context held when it was queued. The "engine" maps
pixel_values [batch, 3, H, W] to logits [batch, 10] (each channel's mean times a fixed matrix), pausing
between reading its input and writing its output so that calls sharing a context, stream or buffer
interleave and corrupt each other, as they would on a GPU.
"""

from __future__ import annotations

import ctypes
import sys
import time
import types

import numpy as np

MAGIC = b"FAKE TENSORRT ENGINE\n"  # what the stand-in deserializes; anything else is "damaged"
SIZE = (8, 12)  # the engine's image height and width
CLASSES = 10
MAX_BATCH = 8
WEIGHTS = np.linspace(-1, 1, 3 * CLASSES, dtype=np.float32).reshape(3, CLASSES)
VERSION = "10.3.0"
CAPABILITY = (8, 9)


def expected_logits(pixel_values: np.ndarray) -> np.ndarray:
    return pixel_values.mean(axis=(2, 3), dtype=np.float32) @ WEIGHTS


class Device:
    """cudaMalloc'd memory: a host buffer per pointer."""

    def __init__(self):
        self.buffers = {}

    def malloc(self, nbytes):
        buffer = ctypes.create_string_buffer(nbytes)
        self.buffers[ctypes.addressof(buffer)] = buffer
        return ctypes.addressof(buffer)

    def array(self, pointer, shape) -> np.ndarray:
        count = int(np.prod(shape))
        return np.frombuffer((ctypes.c_float * count).from_address(pointer), np.float32).reshape(shape)


class Stream:
    streams = {}

    def __init__(self):
        self.queued = []
        Stream.streams[id(self)] = self

    def __int__(self):
        return id(self)


def make_cudart(device: Device) -> types.ModuleType:
    cudart = types.ModuleType("cuda.bindings.runtime")
    ok = 0
    cudart.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudart.cudaGetDeviceProperties = lambda index: (ok, types.SimpleNamespace(
        name=b"Stand-in GPU\x00", major=CAPABILITY[0], minor=CAPABILITY[1]))
    cudart.cudaStreamCreate = lambda: (ok, Stream())
    cudart.cudaStreamDestroy = lambda stream: (ok,)
    cudart.cudaMalloc = lambda nbytes: (ok, device.malloc(nbytes))

    def free(pointer):
        device.buffers.pop(int(pointer))
        return (ok,)

    def copy(destination, source, nbytes, kind, stream):
        stream.queued.append(lambda: ctypes.memmove(int(destination), int(source), nbytes))
        return (ok,)

    def synchronize(stream):
        while stream.queued:
            stream.queued.pop(0)()
        return (ok,)

    cudart.cudaFree, cudart.cudaMemcpyAsync, cudart.cudaStreamSynchronize = free, copy, synchronize
    return cudart


class Context:
    def __init__(self, device: Device):
        self.device, self.addresses, self.shapes = device, {}, {}

    def set_tensor_address(self, name, pointer):
        self.addresses[name] = int(pointer)

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)

    def get_tensor_shape(self, name):
        return self.shapes["pixel_values"][:1] + (CLASSES,) if name == "logits" else self.shapes[name]

    def execute_async_v3(self, stream_handle):
        source, target = self.addresses["pixel_values"], self.addresses["logits"]
        shape = self.shapes["pixel_values"]

        def execute():
            logits = expected_logits(self.device.array(source, shape).copy())
            time.sleep(0.002)  # a kernel takes time; other threads run meanwhile
            self.device.array(target, (shape[0], CLASSES))[:] = logits

        Stream.streams[stream_handle].queued.append(execute)
        return True


class Engine:
    num_io_tensors = 2

    def __init__(self, device: Device):
        self.device = device

    def get_tensor_name(self, index):
        return ("pixel_values", "logits")[index]

    def get_tensor_mode(self, name):
        return "input" if name == "pixel_values" else "output"

    def get_tensor_shape(self, name):
        return (-1, 3, *SIZE) if name == "pixel_values" else (-1, CLASSES)

    def get_tensor_profile_shape(self, name, profile):
        return (1, 3, *SIZE), (4, 3, *SIZE), (MAX_BATCH, 3, *SIZE)

    def get_tensor_dtype(self, name):
        return "float32"

    def create_execution_context(self):
        return Context(self.device)


def make_tensorrt(device: Device, deserialized: list) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = VERSION
    trt.Logger = type("Logger", (), {"ERROR": 3, "__init__": lambda self, severity: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.nptype = lambda dtype: np.float32

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            deserialized.append(bytes(plan))
            return Engine(device) if bytes(plan).startswith(MAGIC) else None

    trt.Runtime = Runtime
    return trt


def install(monkeypatch) -> list:
    """Put the stand-in in place of `tensorrt` and `cuda.bindings.runtime`; returns the list of plans
    TensorRT was asked to deserialize."""
    device, deserialized = Device(), []
    cudart = make_cudart(device)
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, cudart
    for name, module in {"tensorrt": make_tensorrt(device, deserialized), "cuda": cuda, "cuda.bindings": bindings,
                         "cuda.bindings.runtime": cudart}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return deserialized


def write_engine(path, plan: bytes = MAGIC + b"weights", metadata: dict | None = None, **sidecar) -> None:
    """An engine file and its sidecar as `python -m export --trt` writes them (sha256 of the engine)."""
    import hashlib
    import json

    path.write_bytes(plan)
    record = {"tensorrt_version": VERSION, "compute_capability": ".".join(map(str, CAPABILITY)),
              "gpu": "Stand-in GPU", "onnx": "model.onnx", "onnx_sha256": "0" * 64,
              "engine_sha256": hashlib.sha256(plan).hexdigest(), "metadata": metadata or {}, **sidecar}
    path.with_name(path.name + ".json").write_text(json.dumps(record))
