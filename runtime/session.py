"""onnxruntime sessions: provider choice, session options, and IO binding on GPUs."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from . import files
from .errors import HieraRuntimeError
from .interface import check_inputs

PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
# An explicit choice keeps the providers after it as fallbacks: onnxruntime places each node the first
# provider does not support (e.g. TensorRT and our contrib-op Attention) on the next one.
FALLBACKS = {"tensorrt": ["tensorrt", "cuda", "cpu"], "cuda": ["cuda", "cpu"], "cpu": ["cpu"]}
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise HieraRuntimeError("onnxruntime is not installed: pip install 'hiera-deploy[cpu]' (or [gpu] for CUDA "
                                "and TensorRT)") from None
    return onnxruntime


def choose_providers(requested: str, available: list[str]) -> list[str]:
    """onnxruntime provider names for `auto` (the fastest available) or an explicit tensorrt, cuda or cpu."""
    if requested == "auto":
        return [name for name in PROVIDERS.values() if name in available]
    if requested not in PROVIDERS:
        raise HieraRuntimeError(f"provider {requested!r}: choose from auto, {', '.join(PROVIDERS)}")
    if PROVIDERS[requested] not in available:
        raise HieraRuntimeError(f"provider {requested} is not available in this onnxruntime (it has "
                                f"{', '.join(available)}); install onnxruntime-gpu: pip install 'hiera-deploy[gpu]'")
    return [PROVIDERS[name] for name in FALLBACKS[requested] if PROVIDERS[name] in available]


def default_cache_dir() -> Path:
    """Where the TensorRT provider keeps its engines and timing cache: building them takes minutes."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hiera-deploy" / "tensorrt"


class OnnxSession:
    """One onnxruntime session on an ONNX file: `run(pixel_values, **other_inputs)` returns the outputs by name
    (MAE models take a second input, `noise`).

    Safe to call from several threads at once, each call with its own buffers: onnxruntime's `run` is
    thread-safe and allocates each call's outputs. With IO binding (the default on GPUs) a binding and its
    device input buffer serve one call at a time: a call takes an idle one of its batch shape from a pool
    (or makes one) and gives it back when done, so serial calls reuse one and concurrent calls never share.
    """

    def __init__(self, path, provider: str = "auto", threads: int | None = None, optimization: str = "all",
                 cache_dir=None, io_binding: bool | None = None):
        ort = import_onnxruntime()
        self.path = files.require_file(path)  # a FIFO or a device would hang onnxruntime's reader
        external = self.path.with_name(self.path.name + ".data")  # weights beyond 2 GB, as export writes them
        if os.path.lexists(external):
            files.require_file(external)
        self.metadata_path = self.path  # where the hiera.* metadata is read from
        if optimization not in OPTIMIZATION_LEVELS:
            raise HieraRuntimeError(f"optimization {optimization!r}: choose from {', '.join(OPTIMIZATION_LEVELS)}")
        providers = choose_providers(provider, ort.get_available_providers())
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: provider placement notes are not the user's concern
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimization]
        provider_options = [self._options(name, cache_dir) for name in providers]
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers,
                                                provider_options=provider_options)
        except Exception as error:  # onnxruntime raises its own types (InvalidProtobuf, Fail, InvalidGraph, ...)
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise HieraRuntimeError(f"{self.path}: onnxruntime cannot load this model ({reason})") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        model_input = self.session.get_inputs()[0]
        self.input_name, self.input_shape = model_input.name, model_input.shape
        self.input_dtype = DTYPES.get(model_input.type, np.float32)
        self.other_inputs = {i.name: DTYPES.get(i.type, np.float32) for i in self.session.get_inputs()[1:]}
        self.output_names = [output.name for output in self.session.get_outputs()]
        # Each output's shape, a name (str) or None where it depends on the input (the batch axis).
        self.output_shapes = {output.name: [d if isinstance(d, int) and d >= 0 else None for d in output.shape]
                              for output in self.session.get_outputs()}
        self.providers = self.session.get_providers()
        self.device = "cuda" if self.providers[0] in (PROVIDERS["tensorrt"], PROVIDERS["cuda"]) else "cpu"
        # On a GPU, binding a device buffer per batch size saves onnxruntime a staging copy and an allocation
        # per call; on the CPU onnxruntime reads the numpy array in place, so plain run() is already best.
        self.io_binding = self.device == "cuda" if io_binding is None else io_binding
        self._idle_bindings = {}  # input shape -> [(IOBinding, input OrtValue)] not in use by any call
        self._lock = threading.Lock()
        self.max_batch = None  # any batch the input's batch axis allows (engines have a profile's limit)
        self.inference_precision = None  # the artifact's own
        self._ort = ort

    @staticmethod
    def _options(provider: str, cache_dir) -> dict:
        if provider != PROVIDERS["tensorrt"]:
            return {}
        cache = str(Path(cache_dir) if cache_dir else default_cache_dir())
        try:
            Path(cache).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise HieraRuntimeError(f"{cache}: cannot make the TensorRT cache folder ({error.strerror or error})") \
                from None
        return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": cache,
                "trt_timing_cache_enable": "True", "trt_timing_cache_path": cache}

    def run(self, pixel_values: np.ndarray, **other_inputs: np.ndarray) -> dict[str, np.ndarray]:
        pixel_values = np.ascontiguousarray(pixel_values, dtype=self.input_dtype)
        check_inputs(self, other_inputs)
        try:
            if not self.io_binding or other_inputs:  # the bound path serves the one-input models
                feeds = {name: np.ascontiguousarray(value, dtype=self.other_inputs[name])
                         for name, value in other_inputs.items()}
                outputs = self.session.run(self.output_names, {self.input_name: pixel_values, **feeds})
                return dict(zip(self.output_names, outputs))
            return self._run_bound(pixel_values)
        except Exception as error:  # e.g. an input shape a foreign model does not take, or device memory
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise HieraRuntimeError(f"{self.path}: onnxruntime failed on input {list(pixel_values.shape)} "
                                    f"({reason})") from None

    def _run_bound(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        shape = pixel_values.shape
        with self._lock:
            idle = self._idle_bindings.setdefault(shape, [])
            bound = idle.pop() if idle else None
        if bound is None:
            bound = self._new_binding(shape)
        binding, device_input = bound
        device_input.update_inplace(pixel_values)
        self.session.run_with_iobinding(binding)
        outputs = dict(zip(self.output_names, binding.copy_outputs_to_cpu()))
        with self._lock:  # only after a clean run: a binding whose run failed is dropped
            self._idle_bindings[shape].append(bound)
        return outputs

    def _new_binding(self, shape):
        device_input = self._ort.OrtValue.ortvalue_from_shape_and_type(shape, self.input_dtype, self.device, 0)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, device_input)
        for name in self.output_names:
            binding.bind_output(name, self.device, 0)
        return binding, device_input
