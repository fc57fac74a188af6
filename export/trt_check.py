"""Will TensorRT's ONNX parser take this graph? A static check that needs no TensorRT and no GPU.

Checked, for a TensorRT version: the opset; every operator (standard ONNX operators the parser imports;
nothing from other domains, such as onnxruntime's fused `com.microsoft` operators); tensor ranks (at
most 8); input and output shapes (static apart from the batch axis); element types; initializer sizes.
Each finding names the node or tensor, so that `python -m export check-trt FILE` says what to change.

The operator tables are the "N" rows of the parser's support matrix (onnx-tensorrt `docs/operators.md`)
for each release: 8.5 is JetPack 5's TensorRT, 8.6 added `LayerNormalization`, 10 is the current line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx.numpy_helper

from .artifact import load_graph, without_weights
from .errors import ExportError

MAX_RANK = 8
MAX_WEIGHT_ELEMENTS = 2**31 - 1  # TensorRT counts weights in int32

# Standard operators (up to opset 17) that the parser of TensorRT 8.5 does not import.
UNSUPPORTED_8_5 = frozenset("""
    Bernoulli BitShift BlackmanWindow Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear
    HammingWindow HannWindow Hardmax IsInf LayerNormalization MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix
    Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul
    STFT SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap
    SoftmaxCrossEntropyLoss SplitToSequence StringNormalizer TfIdfVectorizer Unique""".split())
UNSUPPORTED_8_6 = UNSUPPORTED_8_5 - {"LayerNormalization"}
# TensorRT 10 (opsets 9 to 20 in 10.0; newer operators are caught by the opset check).
UNSUPPORTED_10 = frozenset("""
    AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Col2Im CenterCropPad Compress
    ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear ImageDecoder MatMulInteger MaxRoiPool
    MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional OptionalGetElement
    OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct SequenceEmpty
    SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence
    StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique""".split())

P = onnx.TensorProto
TYPES_8 = frozenset({P.FLOAT, P.FLOAT16, P.DOUBLE, P.INT8, P.UINT8, P.INT32, P.INT64, P.BOOL})
TYPES_10 = TYPES_8 | {P.BFLOAT16, P.FLOAT8E4M3FN, P.INT4}


@dataclass(frozen=True)
class Target:
    name: str
    max_opset: int
    unsupported: frozenset
    types: frozenset


TARGETS = {
    "8.5": Target("8.5", 17, UNSUPPORTED_8_5, TYPES_8),
    "8.6": Target("8.6", 17, UNSUPPORTED_8_6, TYPES_8),
    "10": Target("10", 20, UNSUPPORTED_10, TYPES_10),
}
DEFAULT_TARGET = "10"
# What a finding suggests, by operator.
REMEDIES = {"LayerNormalization": "export at opset 16, which writes it as ReduceMean/Sub/Mul/Sqrt/Div",
            "DynamicQuantizeLinear": "onnxruntime's dynamic int8; TensorRT's int8 is the qdq artifact",
            "MatMulInteger": "onnxruntime's dynamic int8; TensorRT's int8 is the qdq artifact"}


def target(version: str) -> Target:
    """The table for a TensorRT version: 8.5, 8.6, 10 or 10.x (any 10 release, and later majors, use 10's)."""
    try:
        major, minor = (int(part) for part in (str(version).split(".") + ["0"])[:2])
    except ValueError:
        raise ExportError(f"TensorRT version {version!r}: expected MAJOR.MINOR, e.g. 8.5 or 10.3") from None
    if (major, minor) < (8, 5):
        raise ExportError(f"TensorRT {version}: versions before 8.5 are not supported (JetPack 5 has 8.5)")
    return TARGETS["8.5" if (major, minor) == (8, 5) else "8.6" if major < 10 else "10"]


def _nonzero_zero_point(node: onnx.NodeProto, initializers: dict) -> bool:
    if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3 or not node.input[2]:
        return False
    zero_point = initializers.get(node.input[2])
    if zero_point is None or zero_point.data_location == onnx.TensorProto.EXTERNAL:  # computed, or not read
        return False
    return bool(np.any(onnx.numpy_helper.to_array(zero_point) != 0))


def check_file(path, version: str = DEFAULT_TARGET) -> list[str]:
    """`check` on a file (its weights are not read); raises ExportError when it is not an ONNX model."""
    return check(load_graph(path, weights=False), version)


def check(model: onnx.ModelProto, version: str = DEFAULT_TARGET) -> list[str]:
    """What stops TensorRT `version`'s parser from building `model`, one sentence each; empty if nothing."""
    t = target(version)
    findings = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and opset > t.max_opset:
        findings.append(f"opset {opset}: TensorRT {t.name}'s parser reads opsets up to {t.max_opset} "
                        f"(export at opset {min(t.max_opset, 17)})")
    offending = {}  # (operator, reason) -> the names of the nodes, reported together
    initializers = {w.name: w for w in model.graph.initializer}
    for node in model.graph.node:
        if _nonzero_zero_point(node, initializers):
            reason = "zero point is not 0: TensorRT quantizes symmetrically (quantize with symmetric activations)"
        elif node.domain not in ("", "ai.onnx"):
            reason = (f"{node.domain} operator, which only onnxruntime runs (TensorRT needs the standard-op graph: "
                      "the unoptimized fp32 graph, or the fp16 artifact)")
        elif node.op_type in t.unsupported:
            remedy = REMEDIES.get(node.op_type)
            reason = f"not supported by TensorRT {t.name}'s ONNX parser" + (f"; {remedy}" if remedy else "")
        else:
            continue
        offending.setdefault((node.op_type, reason), []).append(node.name or "(unnamed)")
    for (op, reason), names in offending.items():
        findings.append(f"{op}, {len(names)} node{'s' if len(names) > 1 else ''} ({', '.join(names)}): {reason}")
    try:
        graph = onnx.shape_inference.infer_shapes(without_weights(model)).graph  # above 2 GB too
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as error:
        findings.append(f"the graph fails onnx's shape inference ({str(error).splitlines()[0]}): TensorRT's parser "
                        "cannot infer it either")
        graph = model.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            findings.append(f"tensor {value.name}: not a tensor (sequences and maps are not supported)")
            continue
        if tensor.elem_type not in t.types:
            findings.append(f"tensor {value.name}: element type {P.DataType.Name(tensor.elem_type)} is not one "
                            f"TensorRT {t.name} has")
        if tensor.HasField("shape") and len(tensor.shape.dim) > MAX_RANK:
            findings.append(f"tensor {value.name}: rank {len(tensor.shape.dim)}, above TensorRT's limit of {MAX_RANK}")
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        dynamic = [axis for axis, dim in enumerate(dims) if axis > 0 and not dim.HasField("dim_value")]
        if dynamic:
            findings.append(f"{'input' if value in graph.input else 'output'} {value.name}: axes {dynamic} are not "
                            "static (only the batch axis may be dynamic)")
    for weights in model.graph.initializer:
        elements = 1
        for d in weights.dims:
            elements *= d
        if weights.data_type not in t.types:
            findings.append(f"initializer {weights.name}: element type {P.DataType.Name(weights.data_type)} is not "
                            f"one TensorRT {t.name} has")
        if elements > MAX_WEIGHT_ELEMENTS:
            findings.append(f"initializer {weights.name}: {elements} elements, above TensorRT's {MAX_WEIGHT_ELEMENTS}")
    return findings
