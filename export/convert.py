"""Reduced precisions, all with float32 inputs and outputs: fp16 for GPUs, dynamic int8 for CPUs (onnxruntime;
made in `quantize`, one weight at a time), static QDQ int8 for TensorRT."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.transformers.float16 import convert_float_to_float16

from .artifact import EXTERNAL_DATA_BYTES, weight_bytes
from .quantize import to_int8  # noqa: F401 (dynamic int8: its own module)

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
    """Static int8 in QDQ form, for TensorRT's explicit quantization: QuantizeLinear/DequantizeLinear pairs on
    the inputs of every Gemm and MatMul with constant weights (the attention products stay in float), weights
    per output channel, activation scales from the calibration images (min/max). Scales are symmetric: TensorRT
    takes only zero points of 0."""
    return _quantize(source, lambda src, dst, large: quantize_static(
        src, dst, _Calibration(calibration, batch), quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"], per_channel=True, activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax, use_external_data_format=large,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "MatMulConstBOnly": True}))
