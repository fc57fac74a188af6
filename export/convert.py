"""Reduced precisions, all with float32 inputs and outputs: fp16 for GPUs, dynamic int8 for CPUs (onnxruntime;
made in `quantize`, one weight at a time), static QDQ int8 for TensorRT and OpenVINO."""

from __future__ import annotations

import collections
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.transformers.float16 import convert_float_to_float16

from .artifact import EXTERNAL_DATA_BYTES, weight_bytes
from .quantize import require_no_saturation, to_int8  # noqa: F401 (dynamic int8: its own module)

# Kept in fp32: normalizations and softmax accumulate sums that overflow or lose precision in fp16; MAE's
# masking sorts its noise (TopK), which must rank it exactly as fp32 does.
FP32_OPS = ["LayerNormalization", "Softmax", "ReduceMean", "TopK"]


def to_fp16(source: Path) -> onnx.ModelProto:
    """Weights and matmuls in fp16, `FP32_OPS` in fp32; `pixel_values` and outputs stay float32."""
    converted = ir.from_proto(convert_float_to_float16(onnx.load(source), keep_io_types=True, op_block_list=FP32_OPS,
                                                       disable_shape_infer=True))
    converted.graph.sort()  # the converter appends the output casts after their consumers
    proto = ir.to_proto(converted)
    del proto.graph.value_info[:]  # some carry the float32 types of before; shape inference redoes them
    return proto


def _quantize(source: Path, quantizer) -> onnx.ModelProto:
    """Run an onnxruntime quantizer, which works on files: `quantizer(src, dst, large)` reads `source` (with its
    external data) and writes the quantized graph, which is returned."""
    large = weight_bytes(source) > EXTERNAL_DATA_BYTES
    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp, "quantized.onnx")
        root.setLevel(logging.ERROR)  # it advises shape-inference preprocessing we don't need
        try:
            quantizer(str(source), dst, large)
        finally:
            root.setLevel(level)
        return onnx.load(dst)


class _Calibration:
    """onnxruntime's calibration reader: the calibration images in batches the graph takes."""

    def __init__(self, images: np.ndarray, batch: int | None):
        step = batch or 1
        padded = np.concatenate([images, np.repeat(images[-1:], -len(images) % step, axis=0)])  # fill a static batch
        self.batches = iter([{"pixel_values": padded[i:i + step]} for i in range(0, len(padded), step)])

    def get_next(self):
        return next(self.batches, None)


def to_qdq(source: Path, calibration: np.ndarray, batch: int | None) -> onnx.ModelProto:
    """Static int8 in QDQ form, for TensorRT's explicit quantization and OpenVINO's int8 kernels:
    QuantizeLinear/DequantizeLinear pairs on the inputs of every Gemm and MatMul (the attention products
    included), weights per output channel, activation scales from the calibration images (min/max). Scales are
    symmetric: TensorRT takes only zero points of 0. The outputs of those layers stay float (they feed the
    residual sums, GELU and the logits, which no integer kernel reads), and a quantization that follows a
    transpose or reshape is moved before it (see `_quantize_before_data_movement`). The patch embedding's
    convolution stays float: in int8 it cost the digits model's logits a cosine of 0.92 for 1% of the time."""
    model = _quantize(source, lambda src, dst, large: quantize_static(
        src, dst, _Calibration(calibration, batch), quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"], per_channel=True, reduce_range=True, activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax, use_external_data_format=large,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                       "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]}))
    _normalize_at_rank_3(model.graph)
    _quantize_before_data_movement(model.graph)
    rewritten = ir.from_proto(model)
    rewritten.graph.sort()  # the rewrites append and move nodes
    return require_no_saturation(ir.to_proto(rewritten))


def _normalize_at_rank_3(graph: onnx.GraphProto) -> None:
    """Rewrite, in place, each LayerNormalization of token rows [rows, dim] as one of a [1, rows, dim] view:
    the same arithmetic, but OpenVINO's CPU plugin fuses the int8 quantization that follows a normalization
    into it only at rank 3 or more. At rank 2 that quantization runs as a pass of its own: 8% of Hiera-B's
    int8 time (docs/cpu-engines.md). Only this artifact is rewritten: in float there is nothing to fuse, and the
    views cost OpenVINO a copy of the residual stream at each normalization (measured no faster at f32 or bf16)."""
    norms = [node for node in graph.node if node.op_type == "LayerNormalization" and node.domain in ("", "ai.onnx")]
    axis = f"{graph.name}_unsqueeze_axis_0"
    if norms:
        graph.initializer.append(onnx.numpy_helper.from_array(np.array([0], np.int64), axis))
    for node in norms:
        rows, normalized = node.input[0], node.output[0]
        node.input[0], node.output[0] = f"{rows}_rank_3", f"{normalized}_rank_3"
        graph.node.extend([onnx.helper.make_node("Unsqueeze", [rows, axis], [node.input[0]]),
                           onnx.helper.make_node("Squeeze", [node.output[0], axis], [normalized])])


DATA_MOVEMENT = {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}


def _quantize_before_data_movement(graph: onnx.GraphProto) -> None:
    """Rewrite, in place, each `Transpose -> QuantizeLinear -> DequantizeLinear` (or a reshape in place of the
    transpose) whose transpose feeds nothing else into `QuantizeLinear -> DequantizeLinear -> Transpose`, where
    the quantization is per tensor (one scale): that commutes with moving values around, so the results are
    identical. A transpose that reads the dequantized values directly is one OpenVINO folds into the matmul
    after it (the keys of each attention); between quantization steps it runs as a copy of its own.
    onnxruntime's quantizer puts the pair after the transpose because that is the matmul's input."""
    producer = {output: node for node in graph.node for output in node.output}
    readers = collections.Counter(name for node in graph.node for name in node.input)
    readers.update(output.name for output in graph.output)
    dequantizers = {node.input[0]: node for node in graph.node if node.op_type == "DequantizeLinear"}
    scale_sizes = {tensor.name: int(np.prod(tensor.dims)) for tensor in graph.initializer}
    for quantize in [node for node in graph.node if node.op_type == "QuantizeLinear"]:
        mover = producer.get(quantize.input[0])
        dequantize = dequantizers.get(quantize.output[0])
        if dequantize is None or readers[quantize.output[0]] != 1 or scale_sizes.get(quantize.input[1]) != 1:
            continue
        while mover is not None and mover.op_type in DATA_MOVEMENT and readers[mover.output[0]] == 1:
            # x -> mover -> Q -> DQ -> y   becomes   x -> Q -> DQ -> mover -> y
            x, y = mover.input[0], dequantize.output[0]
            quantize.input[0] = x
            dequantize.output[0] = f"{y}_before_{mover.output[0]}"
            mover.input[0], mover.output[0] = dequantize.output[0], y
            producer.update({y: mover, dequantize.output[0]: dequantize})
            mover = producer.get(x)
