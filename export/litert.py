"""LiteRT (`.tflite`) artifacts, converted from the PyTorch model with litert-torch (the `litert-export` extra):
fp32, fp16 weights and int8 weights (ai-edge-quantizer's dynamic-range recipe), with the `hiera.*` metadata in the
flatbuffer's metadata table, which `runtime/litert.py: read_metadata` reads back (docs/edge.md).

`convert` is the registry's converter for source "pytorch" (runtime/formats.py): the export's `_edge` stage calls
it with the torch model, before tracing frees it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import logging
import os
import re
import warnings
import weakref
from pathlib import Path

from runtime import files
from runtime.litert import IDENTIFIER

from .errors import ExportError

PACKAGE, EXTRA = "litert_torch", "litert-export"  # what export/options.py checks before anything is written
# The fp32 flatbuffer of each model converted in this process: fp16 and int8 are made from it, so an export that
# writes all three converts once (a conversion takes tens of seconds even for a small model).
_CONVERTED = weakref.WeakKeyDictionary()


def convert(model, example: dict, path: Path, metadata: dict[str, str]) -> dict:
    """Write `model` (a torch module in eval mode) as a `.tflite` at `path`, for the inputs of `example` (name ->
    batch-1 tensor), computing in what `metadata`'s `hiera.precision` says (fp32; fp16: fp16 weights; int8: int8
    weights); return the report's entry: file, max_rank, operators and what LiteRT's GPU delegate would take."""
    import torch

    with _quiet():  # its import prints notes of TensorFlow's and torchao's from C++
        import litert_torch
    precision = json.loads(metadata["hiera.precision"])
    shapes = {name: tuple(tensor.shape) for name, tensor in example.items()}
    converted = _CONVERTED.get(model)
    with _quiet(), torch.no_grad():
        if converted is None or converted[0] != shapes:
            try:
                edge = litert_torch.convert(_named_outputs(model), sample_kwargs=example)
            except Exception as error:  # the converter raises whatever torch.export or its lowering raised
                raise ExportError(f"litert-torch cannot convert this model: {_first_line(error)}") from None
            converted = _CONVERTED[model] = (shapes, edge.model_content())
            del edge
        content = converted[1]
        if precision != "fp32":
            content = _quantize(content, precision)
    content = with_metadata(content, metadata)
    files.write_bytes(path, content)
    operators, gpu = gpu_delegate(path)
    return {"file": Path(path).name, "max_rank": max_rank(content), "operators": operators, "gpu_delegate": gpu,
            "converter": f"litert-torch {_version('litert-torch')}", "batch": 1}


def _named_outputs(model):
    """`model` with its outputs as a dict under the artifact's names, which become the signature's output names
    (a bare tensor would be `output_0`)."""
    import torch

    class NamedOutputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values, noise=None):  # noise: MAE's second input
            outputs = self.model(pixel_values) if noise is None else self.model(pixel_values, noise)
            return outputs if isinstance(outputs, dict) else {model.output_names[0]: outputs}

    return NamedOutputs().eval()


def _quantize(content: bytes, precision: str) -> bytes:
    """fp16: every weight stored as fp16 (ai-edge-quantizer's float casting; XNNPACK and the GPU delegate read it
    as is); int8: int8 weights per channel, activations quantized as the model runs (dynamic range)."""
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe

    q = quantizer.Quantizer(content)
    if precision == "fp16":
        q.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                 algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
    elif precision == "int8":
        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    else:
        raise ExportError(f"LiteRT: no {precision} artifact")
    return bytes(q.quantize().quantized_model)


def with_metadata(content: bytes, metadata: dict[str, str]) -> bytes:
    """`content` (a TFLite flatbuffer) with `metadata`'s entries in its metadata table, each a buffer of UTF-8
    text; an entry of the same name is replaced (its old buffer emptied), the converter's own entries kept."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    model.metadata = model.metadata or []
    for entry in [m for m in model.metadata if (m.name or b"").decode() in metadata]:
        model.buffers[entry.buffer].data = None
        model.metadata.remove(entry)
    for key, value in metadata.items():
        buffer = schema.BufferT()
        buffer.data = list(value.encode())
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = key, len(model.buffers) - 1
        model.metadata.append(entry)
    content = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    if content[4:8] != IDENTIFIER:
        raise ExportError("LiteRT: the model written with metadata lost its TFLite identifier")
    return content


def append_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Add entries (the probe) to a written `.tflite`, atomically."""
    files.write_bytes(path, with_metadata(Path(path).read_bytes(), metadata))


def max_rank(content: bytes) -> int:
    """The highest rank of any tensor in the model's subgraphs."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(content, 0)
    return max((model.Subgraphs(s).Tensors(t).ShapeLength() for s in range(model.SubgraphsLength())
                for t in range(model.Subgraphs(s).TensorsLength())), default=0)


def gpu_delegate(path: Path) -> tuple[int | None, dict | None]:
    """The model's operator count and how many of them LiteRT's GPU delegate takes, as LiteRT's model analyzer
    says (its GPU compatibility check: one warning per operator it would leave to the CPU). (None, None) where
    the analyzer is not there."""
    try:
        from ai_edge_litert import _pywrap_analyzer_wrapper as analyzer
    except ImportError:
        return None, None
    with _quiet():
        text = analyzer.ModelAnalyzer(str(path), True, True)
    operators = len(re.findall(r"^\s*Op#\d+ ", text, re.MULTILINE))
    refused = re.findall(r"GPU COMPATIBILITY WARNING: (.*)", text)
    return operators, {"operators": operators - len(refused), "of": operators,
                       "refused": sorted(set(refused))[:20], "checked_by": "ai_edge_litert's model analyzer"}


@contextlib.contextmanager
def _quiet():
    """The converter, the quantizer and the analyzer print progress and notes about their own internals, from
    Python and from C++ (straight to the process's stdout and stderr): the export's own lines say what happens,
    and a failure comes back as an exception."""
    loggers = [logging.getLogger(name) for name in ("torch.export", "absl", "litert_torch")]
    levels = [logger.level for logger in loggers]
    saved = [os.dup(1), os.dup(2)]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()), open(os.devnull, "wb") as null:
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(unknown version)"
