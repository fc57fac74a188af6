"""The artifact kinds an export writes, one record each: every table of precisions in the project is derived from
`FORMATS` (the export's `--precision` choices and defaults, its conversions, the parity bounds, file names, what the
metadata records, the Hub's file names and the model card's engines). Adding a kind (LiteRT, ExecuTorch, Core ML) is
one record here and one converter in `export/convert.py`; `tests/test_formats.py` fails if a table drifts.

It lives in the base layer because the runtime reads what the metadata records (`computes`) and the export reads
the rest; the converter is named, not imported, so that this module imports nothing of the export's.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    name: str  # the export's --precision value and the report's key for the artifact
    suffix: str  # the file name after the export's stem
    source: str  # the graph it is made from: "optimized" (onnxruntime's fused operators) or "traced" (standard ops);
    # "pytorch": converted from the torch model itself (edge formats, docs/edge.md)
    converter: str | None  # the function of export/convert.py that makes it; None: the source graph as it is; for
    # source "pytorch" the module of export/ whose convert(model, example, path, metadata) writes it
    computes: str  # what its metadata records as `hiera.precision` (the runtime's PRECISIONS)
    bound: dict  # parity against PyTorch fp32: {"max_abs": x} (at most) or {"cosine": x} (at least), per sample
    hub_file: str | None  # its name in a Hugging Face folder (transformers.js and optimum); None: not published
    runs_in: str  # the engines that run it, as the model card says
    default: bool = False  # written when no --precision is given
    needs_calibration: bool = False  # made with calibration images (--calibration)


FORMATS = {f.name: f for f in (
    Format("fp32", ".onnx", "optimized", None, "fp32", {"max_abs": 1e-4}, "onnx/model.onnx",
           "onnxruntime: Python, Node, Web (WASM); com.microsoft fused ops, so not TensorRT", default=True),
    Format("fp16", ".fp16.onnx", "traced", "to_fp16", "fp16", {"cosine": 0.999}, "onnx/model_fp16.onnx",
           "onnxruntime on CUDA GPUs; CPUs and WASM run it, slower than fp32 (no fp16 arithmetic there)", default=True),
    Format("int8", ".int8.onnx", "optimized", "to_int8", "int8", {"cosine": 0.99}, "onnx/model_quantized.onnx",
           "onnxruntime on CPUs: Python, Node, Web (WASM); the fastest there", default=True),
    Format("qdq", ".qdq.onnx", "traced", "to_qdq", "qdq", {"cosine": 0.99}, "onnx/model_qdq.onnx",
           "TensorRT and OpenVINO int8; no Hugging Face tool picks it by name", needs_calibration=True),
    Format("openvino", ".openvino.onnx", "traced", None, "fp32", {"max_abs": 1e-4}, None,
           "OpenVINO (its fp32 and bf16), onnxruntime; the standard-op graph OpenVINO fuses itself"),
    # Edge kinds, source "pytorch": converted from the torch model itself by `export/<converter>.py: convert`
    Format("litert", ".tflite", "pytorch", "litert", "fp32", {"max_abs": 1e-4}, None,
           "LiteRT (TFLite): Android, its GPU delegate, XNNPACK on CPUs; batch 1"),
    Format("litert-fp16", ".fp16.tflite", "pytorch", "litert", "fp16", {"cosine": 0.999}, None,
           "LiteRT (TFLite) with fp16 weights: half the size; the GPU delegate computes in fp16"),
    Format("litert-int8", ".int8.tflite", "pytorch", "litert", "int8", {"cosine": 0.99}, None,
           "LiteRT (TFLite) with int8 weights, activations quantized as it runs (XNNPACK's dynamic range)"),
    Format("executorch", ".pte", "pytorch", "executorch", "fp32", {"max_abs": 1e-4}, None,
           "ExecuTorch with XNNPACK (Android, iOS, Linux boards); metadata in its sidecar .pte.json"),
    Format("executorch-int8", ".int8.pte", "pytorch", "executorch", "int8", {"cosine": 0.99}, None,
           "ExecuTorch with XNNPACK, int8 weights and dynamic int8 activations (its PT2E quantizer); sidecar .json"),
    Format("coreml", ".mlpackage", "pytorch", "coreml", "fp32", {"max_abs": 1e-4}, None,
           "Core ML (iOS 17, macOS 14 on), ML Program fp32; a folder; runs only on Apple systems"),
    Format("coreml-fp16", ".fp16.mlpackage", "pytorch", "coreml", "fp16", {"cosine": 0.999}, None,
           "Core ML (iOS 17, macOS 14 on), ML Program fp16 (the Neural Engine's); a folder; Apple systems only"),
)}

PRECISIONS = tuple(FORMATS)  # what the export writes
DEFAULT_PRECISIONS = tuple(name for name, f in FORMATS.items() if f.default)
COMPUTED = tuple(dict.fromkeys(f.computes for f in FORMATS.values()))  # what an artifact's metadata may record
