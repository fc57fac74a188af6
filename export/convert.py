"""Reduced precisions: fp16 for GPUs, int8 for CPUs, both with float32 inputs and outputs."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx
import onnx_ir as ir
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers.float16 import convert_float_to_float16

from .artifact import EXTERNAL_DATA_BYTES

# Kept in fp32: normalizations and softmax accumulate sums that overflow or lose precision in fp16.
FP32_OPS = ["LayerNormalization", "Softmax", "ReduceMean"]


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Weights and matmuls in fp16, `FP32_OPS` in fp32; `pixel_values` and outputs stay float32."""
    source = onnx.ModelProto()
    source.CopyFrom(model)  # the converter rewrites its argument, which may be the fp32 artifact (--no-optimize)
    converted = ir.from_proto(convert_float_to_float16(source, keep_io_types=True, op_block_list=FP32_OPS,
                                                       disable_shape_infer=True))
    converted.graph.sort()  # the converter appends the output casts after their consumers
    proto = ir.to_proto(converted)
    del proto.graph.value_info[:]  # some carry the float32 types of before; shape inference redoes them
    return proto


def to_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Dynamic quantization (onnxruntime): int8 weights per output channel, activations quantized at
    run time, for the Gemm/MatMul layers and the fused Attention (its qkv projection), which hold
    nearly all of the compute. On CPUs with VNNI these run as integer dot products."""
    large = model.ByteSize() > EXTERNAL_DATA_BYTES  # the quantizer works on files; these need external data
    root = logging.getLogger()
    level = root.level
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        onnx.save_model(model, src, save_as_external_data=large)
        root.setLevel(logging.ERROR)  # it advises shape-inference preprocessing we don't need
        try:
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, use_external_data_format=large,
                             op_types_to_quantize=["MatMul", "Gemm", "Attention"],
                             extra_options={"MatMulConstBOnly": True})
        finally:
            root.setLevel(level)
        return onnx.load(dst)
