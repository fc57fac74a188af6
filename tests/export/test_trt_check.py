"""The TensorRT check (no TensorRT needed): our standard-op graphs pass, and each reason to fail is caught
on a small hand-built graph. Also the opset-16 graph that TensorRT 8.5 (JetPack 5) can build."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import hiera_model
from export.onnx_export import to_onnx, to_opset_16
from export.trt_check import check

from ..conftest import ROOT
from .test_parity import FP32_TOLERANCE, inputs, onnx_outputs, reference_outputs


@pytest.fixture(scope="module")
def graphs(tensorrt_exports, transformers_checkpoint):
    """The artifacts of one checkpoint: optimized (default), standard-op (--no-optimize), and at opset 16."""
    _, reference = transformers_checkpoint("small_q_pool")
    return {name: files | {"report": report} for name, (files, report) in tensorrt_exports.items()}, reference


def test_standard_op_graphs_pass_for_tensorrt_8_6_and_10(graphs):
    made, _ = graphs
    for precision in ("fp32", "fp16"):
        model = onnx.load(made["standard"][precision])
        assert check(model, "10") == check(model, "10.3") == check(model, "8.6") == [], precision
        assert made["standard"]["report"]["artifacts"][precision]["tensorrt_check"]["findings"] == []


def test_tensorrt_8_5_needs_the_opset_16_graph(graphs):
    made, reference = graphs
    (finding,) = check(onnx.load(made["standard"]["fp32"]), "8.5")
    assert finding.startswith("LayerNormalization, 11 nodes (node_layer_norm, node_layer_norm_1,")
    assert "not supported by TensorRT 8.5's ONNX parser; export at opset 16" in finding
    for precision in ("fp32", "fp16"):
        model = onnx.load(made["opset16"][precision])
        assert {o.domain: o.version for o in model.opset_import}[""] == 16
        assert "LayerNormalization" not in {n.op_type for n in model.graph.node}
        assert check(model, "8.5") == [], precision
    pixel_values = inputs(reference.config, 2)  # and the decomposition computes the same model
    expected = reference_outputs(reference, pixel_values)["logits"]
    assert np.abs(onnx_outputs(made["opset16"]["fp32"], pixel_values)["logits"] - expected).max() <= FP32_TOLERANCE


@pytest.mark.parametrize("variant, task", [("base_16x224", "classify"), ("base", "mae")])
def test_base_size_video_and_mae_graphs_pass(variant, task):
    """Hiera-B's video classifier (25,088 tokens) and MAE graph (TopK, gathers with computed indices), as
    traced: the TensorRT 10 check, and the 8.5 check once LayerNormalization is decomposed (--opset 16)."""
    graph = to_onnx(hiera_model.create(variant, task=task), 17, batch=1)
    assert check(graph, "10") == []
    to_opset_16(graph)
    assert check(graph, "8.5") == []


def test_onnxruntime_only_graphs_are_named_as_such(graphs):
    made, _ = graphs
    findings = check(onnx.load(made["optimized"]["fp32"]))
    assert [f.split(",")[0] for f in findings] == ["Attention", "Gelu"]
    assert all("com.microsoft operator, which only onnxruntime runs" in f for f in findings)
    int8 = check(onnx.load(made["optimized"]["int8"]))
    assert any(f.startswith("DynamicQuantizeLinear") and "TensorRT's int8 is the qdq artifact" in f for f in int8)


def model_of(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.x", 1)])


def tensor(name, shape, elem_type=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem_type, shape)


def test_each_reason_to_fail_is_found_and_named():
    x = tensor("x", ["batch", 4])
    ok = model_of([helper.make_node("Relu", ["x"], ["y"], name="relu")], [x], [tensor("y", ["batch", 4])])
    assert check(ok) == []
    cases = {
        "Det, 1 node (det): not supported by TensorRT 10's ONNX parser":
            model_of([helper.make_node("Det", ["m"], ["y"], name="det")], [tensor("m", [2, 3, 3])], [tensor("y", [2])]),
        "Fused, 1 node (fused): com.x operator, which only onnxruntime runs":
            model_of([helper.make_node("Fused", ["x"], ["y"], name="fused", domain="com.x")], [x], [tensor("y", None)]),
        "tensor y: rank 9, above TensorRT's limit of 8":
            model_of([helper.make_node("Reshape", ["x", "shape"], ["y"], name="deep")], [tensor("x", [512])],
                     [tensor("y", [2] * 9)], [helper.make_tensor("shape", TensorProto.INT64, [9], [2] * 9)]),
        "input x: axes [1] are not static (only the batch axis may be dynamic)":
            model_of([helper.make_node("Relu", ["x"], ["y"], name="relu")], [tensor("x", [1, "width"])],
                     [tensor("y", [1, "width"])]),
        "tensor x: element type UINT16 is not one TensorRT 10 has":
            model_of([helper.make_node("Identity", ["x"], ["y"], name="id")], [tensor("x", [1], TensorProto.UINT16)],
                     [tensor("y", [1], TensorProto.UINT16)]),
        "opset 21: TensorRT 10's parser reads opsets up to 20":
            model_of([helper.make_node("Relu", ["x"], ["y"], name="relu")], [x], [tensor("y", ["batch", 4])], opset=21),
    }
    huge = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**16, 2**15 + 1])  # 8 GB, never allocated
    huge.data_location = TensorProto.EXTERNAL
    huge.external_data.add(key="location", value="w.bin")
    cases[f"initializer w: {2**16 * (2**15 + 1)} elements, above TensorRT's 2147483647"] = model_of(
        [helper.make_node("Add", ["x", "w"], ["y"], name="add")], [tensor("x", [2**16, 2**15 + 1])],
        [tensor("y", [2**16, 2**15 + 1])], [huge])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zero = helper.make_tensor("z", TensorProto.INT8, [], [3])
    cases["QuantizeLinear, 1 node (q): zero point is not 0: TensorRT quantizes symmetrically"] = model_of(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="q")], [x],
        [tensor("y", ["batch", 4], TensorProto.INT8)], [scale, zero])
    for expected, model in cases.items():
        findings = check(model)
        assert any(f.startswith(expected) for f in findings), (expected, findings)


def test_the_check_trt_command(graphs, tmp_path):
    made, _ = graphs
    command = [sys.executable, "-m", "export", "check-trt"]
    passing = subprocess.run([*command, made["opset16"]["fp16"], "--trt-version", "8.5"], capture_output=True,
                             text=True, cwd=ROOT)
    assert passing.returncode == 0 and passing.stdout.strip().endswith("ok for TensorRT 8.5")
    failing = subprocess.run([*command, made["standard"]["fp32"], "--trt-version", "8.5"], capture_output=True,
                             text=True, cwd=ROOT)
    assert failing.returncode == 1 and "not buildable for TensorRT 8.5" in failing.stdout
    assert "node_layer_norm_1" in failing.stdout
    (tmp_path / "text.onnx").write_text("not a model")
    for args, message in (([tmp_path / "text.onnx"], "text.onnx: not an ONNX model"),
                          ([made["opset16"]["fp16"], "--trt-version", "7.1"], "versions before 8.5")):
        bad = subprocess.run([*command, *args], capture_output=True, text=True, cwd=ROOT)
        assert bad.returncode == 2 and bad.stderr.startswith("error: ") and message in bad.stderr
        assert bad.stderr.count("\n") == 1


def test_the_parser_tables_are_pinned():
    """The operator tables transcribe onnx-tensorrt's support matrix for each release; a change to them must
    be deliberate (update these figures with the matrix it follows), never an accident such as a dropped row."""
    import hashlib

    from export.trt_check import TARGETS

    def digest(names) -> str:
        return hashlib.sha256(" ".join(sorted(names)).encode()).hexdigest()[:16]

    pinned = {"8.5": (38, "4fb38a419b94caed", 17), "8.6": (37, "35ddd788205518a1", 17),
              "10": (42, "5c97462e940c3282", 20)}
    assert {name: (len(t.unsupported), digest(t.unsupported), t.max_opset) for name, t in TARGETS.items()} == pinned
    for name, target in TARGETS.items():  # every row matters: each listed operator is found in a graph
        for op in sorted(target.unsupported)[:3] + ["MatMulInteger"]:
            node = helper.make_node(op, ["x"], ["y"], name=f"n_{op}")
            graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            assert any(f.startswith(f"{op}, 1 node (n_{op})") for f in check(model, name)), (name, op)
