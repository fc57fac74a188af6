"""Dynamic int8 (export.quantize): the graph onnxruntime's `quantize_dynamic(reduce_range=True)` makes, with the same
7-bit int8 weights, scales and outputs, made one weight at a time; and weights that no x86 CPU's integer kernel can
saturate."""

import collections
import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from export import ExportError, Options, run
from export.quantize import to_int8

from ..conftest import ROOT, failed_rows

DIGITS = ROOT / "models" / "digits"


def onnxruntime_int8(source, destination) -> onnx.ModelProto:
    """onnxruntime's own dynamic quantization of `source` with 7-bit weights (`reduce_range`), the format of the
    export's int8 artifact (docs/int8.md)."""
    quantize_dynamic(source, destination, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                     op_types_to_quantize=["MatMul", "Gemm", "Attention"], extra_options={"MatMulConstBOnly": True})
    return onnx.load(destination)


def histogram(model: onnx.ModelProto) -> dict:
    return collections.Counter((node.domain, node.op_type) for node in model.graph.node)


def quantized_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The int8 weights and their scales by the name of the float weight (onnxruntime names a Gemm's transposed
    weight `<name>_Transposed`)."""
    return {t.name.replace("_Transposed", ""): numpy_helper.to_array(t) for t in model.graph.initializer
            if t.name.endswith(("_quantized", "_scale"))}


def outputs(path, feeds: list[dict]) -> list[np.ndarray]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return [output for feed in feeds for output in session.run(None, feed)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, transformers_checkpoint):
    """`name -> folder`: the export's fp32 and int8 artifacts of the digits model or a small transformers
    checkpoint (its int8 made from the export's staging graph, whose weights are in external data), and
    onnxruntime's int8 of the fp32 artifact as `reference.int8.onnx`."""
    cache = {}

    def make(name):
        if name not in cache:
            weights = DIGITS if name == "digits" else transformers_checkpoint(name)[0]
            out = tmp_path_factory.mktemp(name)
            report = run(Options(weights=str(weights), out_dir=out, precisions=("fp32", "int8")))
            assert report["passed"], failed_rows(report)
            stem = f"hiera_{report['variant']}_classify"
            onnxruntime_int8(out / f"{stem}.onnx", out / "reference.int8.onnx")
            cache[name] = out, stem
        return cache[name]

    return make


@pytest.mark.parametrize("name", ["digits", "small_q_pool"])
def test_same_graph_weights_and_outputs_as_onnxruntime(exported, name):
    out, stem = exported(name)
    ours, theirs = onnx.load(out / f"{stem}.int8.onnx"), onnx.load(out / "reference.int8.onnx")
    assert histogram(ours) == histogram(theirs)
    assert histogram(ours)["com.microsoft", "QAttention"] > 0 and histogram(ours)["", "MatMulInteger"] > 0
    assert not [t.name for t in ours.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2]
    ours_weights, their_weights = quantized_weights(ours), quantized_weights(theirs)
    assert ours_weights.keys() == their_weights.keys()
    for key, weights in ours_weights.items():
        assert weights.dtype == their_weights[key].dtype and np.array_equal(weights, their_weights[key]), key
    shape = [d.dim_value for d in ours.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    feeds = [{"pixel_values": rng.standard_normal(shape, dtype=np.float32)} for _ in range(3)]
    for mine, reference in zip(outputs(out / f"{stem}.int8.onnx", feeds), outputs(out / "reference.int8.onnx", feeds)):
        np.testing.assert_array_equal(mine, reference)


def test_digits_held_out_accuracy_unchanged(exported, tmp_path):
    out, stem = exported("digits")
    scores = tmp_path / "accuracy.json"
    subprocess.run([sys.executable, ROOT / "tools" / "digits.py", "evaluate", out / f"{stem}.int8.onnx",
                    out / "reference.int8.onnx", "--json", scores], check=True, capture_output=True)
    top1 = json.loads(scores.read_text())["top1"]
    assert top1[f"{stem}.int8.onnx"] == top1["reference.int8.onnx"]
    assert top1[f"{stem}.int8.onnx"] >= top1["PyTorch fp32"] - 0.005


def linear_layers() -> onnx.ModelProto:
    """Every form of linear layer the quantizer meets: MatMul by a constant, Gemm with transB and a bias, Gemm
    without either, a weight read by two layers and one read both ways, one activation read by three layers,
    and what stays float: a scaled Gemm and a MatMul by a computed matrix. One weight has a channel of zeros,
    one a channel of negative values only."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 6)).astype(np.float32)
    w[:, 2], w[:, 3] = 0, -np.abs(w[:, 3])
    weights = {"w": w, "wt": rng.standard_normal((6, 8)), "b": rng.standard_normal(6),
               "w2": rng.standard_normal((6, 8)), "w3": rng.standard_normal((6, 8))}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="matmul"),
             helper.make_node("Gemm", ["x", "wt", "b"], ["g"], name="gemm_transposed", transB=1),
             helper.make_node("Gemm", ["a", "w2"], ["h"], name="gemm"),
             helper.make_node("MatMul", ["g", "w2"], ["s"], name="matmul_shared_weight"),
             helper.make_node("Gemm", ["a", "w"], ["t"], name="gemm_weight_both_ways", transB=1),
             helper.make_node("Gemm", ["g", "w3"], ["k"], name="gemm_scaled", alpha=0.5),
             helper.make_node("MatMul", ["x", "y"], ["m"], name="matmul_computed"),
             helper.make_node("Sum", ["h", "k", "s", "t"], ["out"])]
    graph = helper.make_graph(
        nodes, "linear_layers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 8]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [5, 8]),
         helper.make_tensor_value_info("m", TensorProto.FLOAT, [5, 3])],
        [numpy_helper.from_array(np.asarray(value, np.float32), name) for name, value in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("external", [False, True])
def test_every_form_of_linear_layer_as_onnxruntime_quantizes_it(tmp_path, external):
    source = tmp_path / "linear.onnx"
    onnx.save(linear_layers(), source, save_as_external_data=external, size_threshold=0)
    ours = to_int8(source)
    onnx.checker.check_model(ours, full_check=True)
    onnx.save(ours, tmp_path / "ours.onnx")
    theirs = onnxruntime_int8(source, tmp_path / "theirs.onnx")
    assert histogram(ours) == histogram(theirs)
    assert histogram(ours)["", "MatMulInteger"] == 5 and histogram(ours)["", "DynamicQuantizeLinear"] == 3
    floats = {t.name for t in ours.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2}
    assert floats == {"w3"}  # read by the scaled Gemm only
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((5, 8), dtype=np.float32), "y": rng.standard_normal((8, 3), dtype=np.float32)}]
    for mine, reference in zip(outputs(tmp_path / "ours.onnx", feeds), outputs(tmp_path / "theirs.onnx", feeds)):
        np.testing.assert_array_equal(mine, reference)


def test_a_weight_that_is_not_finite_is_refused(tmp_path):
    model = linear_layers()
    weights = next(t for t in model.graph.initializer if t.name == "w2")
    weights.CopyFrom(numpy_helper.from_array(np.full((6, 8), np.nan, np.float32), "w2"))
    onnx.save(model, tmp_path / "nan.onnx")
    with pytest.raises(ExportError, match=r"nan\.onnx: weight w2 has values that are not finite"):
        to_int8(tmp_path / "nan.onnx")
