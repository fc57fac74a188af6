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
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxscript.optimizer
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


def max_rank(model: onnx.ModelProto) -> int:
    """The highest rank of any tensor in the graph (inputs, initializers, every node's output), by onnx's shape
    inference: the figure mobile engines and GPU delegates limit (most to 4)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    shapes = [v.type.tensor_type.shape for v in [*graph.input, *graph.value_info, *graph.output]
              if v.type.tensor_type.HasField("shape")]
    return max([len(shape.dim) for shape in shapes] + [len(t.dims) for t in graph.initializer])
