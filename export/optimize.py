"""Graph optimization for onnxruntime: fusions into the kernels its CPU provider runs fastest, then
constant folding and dead-code removal.

- Attention: each block's qkv Gemm, head split, scaled q @ k^T, softmax, @ v and head merge become
  one `com.microsoft.Attention` (the blocks that pool their queries keep the plain form).
- GELU: the exact erf form becomes `com.microsoft.Gelu`.
onnxruntime adds its own fusions when it loads the graph. Measured on Hiera-B (benchmarks/export_speed.py,
2 threads), these two pay; fusing the residual into `SkipLayerNormalization` was slower on CPU, so it
is not done. The result uses contrib ops: it is for onnxruntime. The fp16 artifact and
`--no-optimize` keep the standard-op graph that other runtimes (TensorRT) build from.
"""

from __future__ import annotations

import collections
import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxscript.optimizer
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions.erfgelu import fuse_erfgelu


def _attention_pattern(op, x, weight, bias, head_shape, scale, row_shape):
    """`hiera_model.attention.MaskUnitAttention` without query pooling, as torch exports it."""
    qkv = op.Reshape(op.Gemm(x, weight, bias, transB=1), head_shape)  # [groups, tokens, 3 * heads, head_dim]
    q, k, v = op.Split(op.Transpose(qkv, perm=[0, 2, 1, 3]), axis=1, _outputs=3)
    attn = op.Softmax(op.MatMul(op.Mul(q, scale), op.Transpose(k, perm=[0, 1, 3, 2])), axis=-1)
    return op.Reshape(op.Transpose(op.MatMul(attn, v), perm=[0, 2, 1, 3]), row_shape)


def _is_constant(context, weight, bias, head_shape, scale, row_shape, **_) -> bool:
    return all(value.const_value is not None for value in (weight, bias, head_shape, scale, row_shape))


def _attention(op, x, weight, bias, head_shape, scale, row_shape):
    _, tokens, three_heads, _ = head_shape.const_value.numpy().tolist()
    w = weight.const_value.numpy()  # [3 * dim, dim_in]; Attention wants [dim_in, 3 * dim], columns q | k | v
    groups = op.Reshape(x, op.Constant(value=ir.tensor(np.array([-1, tokens, w.shape[1]], np.int64))))
    out = op.Attention(groups, op.Constant(value=ir.tensor(np.ascontiguousarray(w.T))), bias,
                       num_heads=three_heads // 3, scale=float(scale.const_value.numpy()), _domain="com.microsoft")
    return op.Reshape(out, row_shape)


ATTENTION = pattern.RewriteRule(_attention_pattern, _attention, _is_constant)


def _window_attention_pattern(op, x, weight, bias, q_shape, k_shape, v_shape, scale, out_shape):
    """`hiera_model.sam2.WindowAttention` without query pooling, as torch exports it: windows [groups, tokens,
    dim] through one qkv MatMul, split into q, k and v, each split into heads."""
    q, k, v = op.Split(op.Add(op.MatMul(x, weight), bias), axis=2, _outputs=3)
    q = op.Mul(op.Transpose(op.Reshape(q, q_shape), perm=[0, 2, 1, 3]), scale)
    attn = op.Softmax(op.MatMul(q, op.Transpose(op.Reshape(k, k_shape), perm=[0, 2, 3, 1])), axis=-1)
    out = op.MatMul(attn, op.Transpose(op.Reshape(v, v_shape), perm=[0, 2, 1, 3]))
    return op.Reshape(op.Transpose(out, perm=[0, 2, 1, 3]), out_shape)


def _is_window_attention(context, weight, bias, q_shape, k_shape, v_shape, scale, out_shape, **_) -> bool:
    values = (weight, bias, q_shape, k_shape, v_shape, scale, out_shape)
    if any(value.const_value is None for value in values):
        return False
    shapes = [shape.const_value.numpy().tolist() for shape in (q_shape, k_shape, v_shape)]
    return shapes[0] == shapes[1] == shapes[2] and len(shapes[0]) == 4 and scale.const_value.numpy().size == 1


def _window_attention(op, x, weight, bias, q_shape, scale, out_shape, **_):
    heads = int(q_shape.const_value.numpy()[2])  # [groups, tokens, heads, head_dim]
    out = op.Attention(x, weight, bias, num_heads=heads, scale=float(scale.const_value.numpy()),
                       _domain="com.microsoft")
    return op.Reshape(out, out_shape)


WINDOW_ATTENTION = pattern.RewriteRule(_window_attention_pattern, _window_attention, _is_window_attention)


def optimize(source: Path, destination: Path) -> dict[str, int]:
    """Optimize the graph saved as `source` into `destination` (weights in `<destination>.data`), and say how many
    of each fusion were made. The weights are read from disk as the rewrites need them, never all at once."""
    graph = ir.load(source)
    fused = {"attention": ATTENTION.apply_to_model(graph) + WINDOW_ATTENTION.apply_to_model(graph),
             "gelu": fuse_erfgelu(graph)}
    onnxscript.optimizer.optimize(graph)
    ir.save(graph, destination, external_data=f"{destination.name}.data", size_threshold_bytes=1024)
    return fused


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    return dict(collections.Counter(node.op_type for node in model.graph.node).most_common())


@contextlib.contextmanager
def _scratch_directory():
    """Run in a temporary working directory: onnxruntime's symbolic inference saves the graph it could not finish
    to `sym_shape_infer_temp.onnx` (and its weights beside it) in the working directory, the user's folder."""
    before = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="hiera-shape-inference-") as scratch:
        os.chdir(scratch)
        try:
            yield
        finally:
            os.chdir(before)


def max_rank(model: onnx.ModelProto) -> int | None:
    """The highest rank of any tensor of `model`: inputs, outputs, initializers and every value after shape
    inference; None if some value's rank cannot be inferred. onnx's own inference stops at onnxruntime's fused
    operators, so this is onnxruntime's symbolic inference; it does not know `QAttention` either, whose output
    has its input's rank, as `guess_output_rank` assumes for an operator it does not know."""
    graph = model.graph
    # The weights become inputs of their type and shape: inference reads the values of small constants
    # (shapes, axes) only, and must not read weights (left on disk, or above protobuf's 2 GB).
    weights = {w.name: w for w in graph.initializer if w.data_location == onnx.TensorProto.EXTERNAL
               or w.ByteSize() > 1 << 16}
    declared = [onnx.helper.make_tensor_value_info(w.name, w.data_type, w.dims) for w in weights.values()]
    constants = [w for w in graph.initializer if w.name not in weights]
    light = onnx.helper.make_model(onnx.helper.make_graph(list(graph.node), graph.name, [*graph.input, *declared],
                                                          list(graph.output), constants),
                                   opset_imports=list(model.opset_import),
                                   ir_version=model.ir_version, functions=list(model.functions))
    try:
        with _scratch_directory():
            inferred = SymbolicShapeInference.infer_shapes(light, auto_merge=True, guess_output_rank=True)
    except Exception:  # it raises a bare Exception when it cannot infer every value
        return None
    values = {v.name: v for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    produced = [name for node in inferred.graph.node for name in node.output if name]
    if any(name not in values or not values[name].type.tensor_type.HasField("shape") for name in produced):
        return None
    ranks = [len(v.type.tensor_type.shape.dim) for v in values.values()]
    return max(ranks + [len(w.dims) for w in graph.initializer])
