"""Dynamic int8 quantization for onnxruntime's CPU provider, made one weight at a time.

onnxruntime's `quantize_dynamic` makes this graph too, but on whole copies of the model: it loads it, copies
it, and saves and reloads it for shape inference (about three times the model on top of what the process
already holds). Here the graph is read with its weights left on disk; each weight is read, quantized and let
go in turn, so the process holds the int8 weights (a quarter of the model) and one float tensor at a time.

The graph is the one `quantize_dynamic(weight_type=QInt8, per_channel=True, reduce_range=True, MatMulConstBOnly)`
makes, with the same operators, int8 weights and scales, so that onnxruntime fuses and runs it with the same
kernels and gives the same outputs. Each MatMul by a constant weight, and each plain Gemm (`alpha = beta = 1`, weight
transposed where `transB`), becomes

    x_q, x_scale, x_zero_point = DynamicQuantizeLinear(x)         uint8, once per activation x
    y = Cast(MatMulInteger(x_q, w_q, x_zero_point, w_zero_point), float) * (x_scale * w_scale)  (+ Gemm's bias)

and each fused `com.microsoft.Attention` becomes `QAttention` on the same quantized input and weight. Weights
are symmetric 7-bit integers in int8, one scale per output channel (the last axis of the [in, out] weight):
`scale = max |w| / 64`, `w_q = round(w / scale)` (half to even), zero point 0. A channel of zeros gets scale 1.
Seven bits, so that no x86 CPU's integer kernel saturates (`WEIGHT_LIMIT`, docs/int8.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from runtime import files
from runtime.errors import FileError

from .artifact import load_graph
from .errors import ExportError

MS_DOMAIN = "com.microsoft"
# The largest |int8 weight|. x86 CPUs without VNNI multiply uint8 activations by int8 weights with `vpmaddubsw`,
# which adds each pair of products in a signed 16-bit lane and saturates: 2 x 255 x 127 = 64770 does not fit,
# 2 x 255 x 64 = 32640 does. So weights take 7 bits, on every CPU (see docs/int8.md).
WEIGHT_LIMIT = 64
LANE_LIMIT = 2**15 - 1  # what one 16-bit lane holds


def to_int8(source: Path) -> onnx.ModelProto:
    """The dynamic int8 graph of the graph saved as `source` (its weights inline or in external data)."""
    source = Path(source)
    model = ir.from_proto(load_graph(source, weights=False))
    ir.external_data.set_base_dir(model.graph, source.parent)
    graph = model.graph
    names = {value.name for value in _values(graph)}
    activations, weights = {}, {}  # what is quantized already, shared by the nodes that read it
    for node in list(graph):
        found = _weight_of(node)
        if found is None:
            continue
        weight, transposed = found
        if node.inputs[0] not in activations:
            activations[node.inputs[0]] = _dynamic_quantize(graph, node, names)
        if (weight.name, transposed) not in weights:
            weights[weight.name, transposed] = _quantized_weight(graph, weight, transposed, names, source)
        x_q, x_scale, x_zero = activations[node.inputs[0]]
        w_q, w_scale, w_zero = weights[weight.name, transposed]
        if node.op_type == "Attention":
            mask, past = (list(node.inputs[3:5]) + [None, None])[:2]
            replacement = [ir.Node(MS_DOMAIN, "QAttention", [x_q, w_q, node.inputs[2], x_scale, w_scale, mask,
                                                             x_zero, w_zero, past],
                                   attributes=list(node.attributes.values()), num_outputs=len(node.outputs),
                                   name=f"{node.name}_quant")]
        else:
            replacement = _integer_matmul(node, x_q, x_scale, x_zero, w_q, w_scale, w_zero)
        graph.insert_before(node, replacement)
        _replace(graph, node, replacement[-1].outputs)
        if not weight.uses() and not weight.is_graph_output():
            del graph.initializers[weight.name]
            _release(weight)
    if any(node.domain == MS_DOMAIN for node in graph):
        model.opset_imports.setdefault(MS_DOMAIN, 1)
    for value in graph.initializers.values():  # what stays float (biases, norms, ...): small, read into the graph
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            value.const_value = ir.tensor(np.array(_array(value, source)), name=value.name)
            tensor.release()
    return require_no_saturation(ir.to_proto(model))


def quantize_weight(weight: np.ndarray, transposed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 7-bit int8 per output channel of a float32 [in, out] weight (given as [out, in] where
    `transposed`): the [in, out] int8 weight within [-WEIGHT_LIMIT, WEIGHT_LIMIT] and the [out] float32 scales, as
    onnxruntime's quantizer computes them with `reduce_range` (the scale rounded from float64 to float32, the
    division in float32)."""
    axis = 1 if transposed else 0  # the input axis, reduced over
    absmax = np.maximum(-weight.min(axis=axis), weight.max(axis=axis))  # max |w|, and 0 for an all-negative row
    scale = absmax.astype(np.float64) / WEIGHT_LIMIT  # onnxruntime's (2 max|w|) / (64 - -64): the same quotient
    scale = np.where(scale < np.finfo(np.float32).tiny, 1.0, scale).astype(np.float32)
    scaled = weight / (scale[:, None] if transposed else scale)
    np.round(scaled, out=scaled)
    np.clip(scaled, -WEIGHT_LIMIT, WEIGHT_LIMIT, out=scaled)
    quantized = scaled.astype(np.int8)
    del scaled
    return (np.ascontiguousarray(quantized.T) if transposed else quantized), scale


def worst_pair_sums(model: onnx.ModelProto) -> dict[str, int]:
    """For each int8 weight matrix of `model` (the dynamic int8 or the qdq graph), the largest |sum| that a pair of
    its products with activations in 0..255 can reach in one 16-bit lane: 2 x 255 x max |w|. Integer kernels feed
    uint8 activations (the qdq graph's int8 ones are shifted to uint8 for its constant weights) and pair
    neighbouring inputs; packing decides which, so the bound takes the largest weight twice. Over `LANE_LIMIT`, CPUs
    without VNNI saturate."""
    return {tensor.name: 2 * 255 * int(np.abs(onnx.numpy_helper.to_array(tensor).astype(np.int64)).max(initial=0))
            for tensor in model.graph.initializer
            if tensor.data_type == onnx.TensorProto.INT8 and len(tensor.dims) == 2}


def require_no_saturation(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model`, after checking that no pair of its integer products can saturate a 16-bit lane on any x86 CPU:
    a weight past the limit is a fault of the converter, which must not be written as an artifact."""
    over = {name: value for name, value in worst_pair_sums(model).items() if value > LANE_LIMIT}
    if over:
        name, value = max(over.items(), key=lambda item: item[1])
        raise ExportError(f"{len(over)} int8 weights can saturate the 16-bit lanes of CPUs without VNNI "
                          f"(the worst, {name}: pairs of products up to {value} > {LANE_LIMIT})")
    return model


def _weight_of(node: ir.Node) -> tuple[ir.Value, bool] | None:
    """The constant float32 [in, out] weight `node` multiplies by and whether it is stored transposed ([out, in]),
    or None for a node onnxruntime's dynamic quantizer leaves in float."""
    attributes = {name: attribute.value for name, attribute in node.attributes.items()}
    if node.domain in ("", "ai.onnx") and node.op_type == "MatMul":
        transposed = False
    elif node.domain in ("", "ai.onnx") and node.op_type == "Gemm":
        if attributes.get("transA", 0) or attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0:
            return None
        transposed = attributes.get("transB", 0) == 1
    elif node.domain == MS_DOMAIN and node.op_type == "Attention":
        # QAttention has no separate q, k, v sizes, nor the inputs after `past`
        if "qkv_hidden_sizes" in attributes or len(node.inputs) > 5:
            return None
        transposed = False
    else:
        return None
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if (weight is None or not weight.is_initializer() or weight.const_value is None
            or weight.const_value.dtype != ir.DataType.FLOAT or len(weight.const_value.shape) != 2):
        return None
    return weight, transposed


def _dynamic_quantize(graph: ir.Graph, consumer: ir.Node, names: set[str]) -> tuple[ir.Value, ...]:
    """uint8 `x`, its scale and zero point, computed at run time: a `DynamicQuantizeLinear` placed before the first
    node that reads them."""
    x = consumer.inputs[0]
    node = ir.node("DynamicQuantizeLinear", [x], name=_fresh(f"{x.name}_QuantizeLinear", names),
                   outputs=[ir.Value(name=_fresh(f"{x.name}{suffix}", names))
                            for suffix in ("_quantized", "_scale", "_zero_point")])
    graph.insert_before(consumer, node)
    return tuple(node.outputs)


def _quantized_weight(graph: ir.Graph, weight: ir.Value, transposed: bool, names: set[str],
                      source: Path) -> tuple[ir.Value, ...]:
    """The int8 weight, its scales and zero points, as new initializers."""
    array = _array(weight, source)
    if not np.isfinite(array).all():
        raise ExportError(f"{source}: weight {weight.name} has values that are not finite; it cannot be quantized")
    quantized, scale = quantize_weight(array, transposed)
    del array
    _release(weight)
    values = []
    for suffix, data in (("_quantized", quantized), ("_scale", scale), ("_zero_point", np.zeros_like(scale, np.int8))):
        name = _fresh(weight.name + suffix, names)
        value = ir.Value(name=name, const_value=ir.tensor(data, name=name))
        graph.register_initializer(value)
        values.append(value)
    return tuple(values)


def _integer_matmul(node: ir.Node, x_q, x_scale, x_zero, w_q, w_scale, w_zero) -> list[ir.Node]:
    """MatMulInteger, Cast to float, times the product of the scales (and plus a Gemm's bias), named as
    onnxruntime names them."""
    name = f"{node.name}_quant"
    product = ir.node("MatMulInteger", [x_q, w_q, x_zero, w_zero], name=name)
    as_float = ir.node("Cast", product.outputs, {"to": ir.DataType.FLOAT}, name=f"{name}_cast")
    scales = ir.node("Mul", [x_scale, w_scale], name=f"{name}_scales_mul")
    nodes = [product, as_float, scales,
             ir.node("Mul", [as_float.outputs[0], scales.outputs[0]], name=f"{name}_output_scale_mul")]
    bias = node.inputs[2] if node.op_type == "Gemm" and len(node.inputs) > 2 else None
    if bias is not None:
        nodes.append(ir.node("Add", [nodes[-1].outputs[0], bias], name=f"{node.name}_Add"))
    return nodes


def _replace(graph: ir.Graph, node: ir.Node, outputs) -> None:
    """Put `outputs` in the place of `node`'s, names and types included, and remove `node`."""
    for old, new in zip(node.outputs, outputs):
        new.type, new.shape = old.type, old.shape
    names = [old.name for old in node.outputs]
    ir.convenience.replace_all_uses_with(node.outputs, list(outputs), replace_graph_outputs=True)
    graph.remove(node, safe=True)
    for name, new in zip(names, outputs):
        new.name = name  # a graph output keeps its name


def _array(value: ir.Value, source: Path) -> np.ndarray:
    """A weight's data: read from disk for external data (after checking that its file is a regular file)."""
    tensor = value.const_value
    try:
        if isinstance(tensor, ir.ExternalTensor):
            files.require_file(tensor.path)
        return tensor.numpy()
    except FileError as error:
        raise ExportError(str(error)) from None
    except (OSError, ValueError) as error:
        raise ExportError(f"{source}: cannot read weight {value.name} ({error})") from None


def _release(value: ir.Value) -> None:
    """Unmap a weight read from external data: its pages would count as the process's memory."""
    if isinstance(value.const_value, ir.ExternalTensor):
        value.const_value.release()


def _values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph:
        yield from node.outputs


def _fresh(name: str, names: set[str]) -> str:
    """`name`, or `name_1`, `name_2`, ... if the graph has it already; recorded as taken."""
    candidate, count = name, 0
    while candidate in names:
        count += 1
        candidate = f"{name}_{count}"
    names.add(candidate)
    return candidate
