"""The qdq artifact's graph: where its quantization steps sit, that the rewrites placing them for OpenVINO
change no result, and that OpenVINO compiles them as intended (its compiled graph, not a timing)."""

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import hiera_model
from export import convert
from export.onnx_export import trace
from runtime.openvino import shared_core

LINEAR = {"Gemm", "MatMul"}


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    """Hiera-T's qdq graph as the export writes it, and as onnxruntime's quantizer alone writes it (the
    rewrites turned off), both calibrated on the same inputs. The normalizations get random affine weights,
    as trained ones have (a created model's are 1 and 0, which OpenVINO folds away)."""
    model = hiera_model.create("tiny", seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    source = tmp_path_factory.mktemp("qdq") / "traced.onnx"
    trace(model, 17, 1, source)
    calibration = np.random.default_rng(0).standard_normal((8, 3, 224, 224), dtype=np.float32)
    ours = convert.to_qdq(source, calibration, batch=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(convert, "_normalize_at_rank_3", lambda graph: None)
        patch.setattr(convert, "_quantize_before_data_movement", lambda graph: None)
        plain = convert.to_qdq(source, calibration, batch=1)
    return ours, plain


def producers(model: onnx.ModelProto) -> dict:
    return {output: node for node in model.graph.node for output in node.output}


def test_quantization_steps_serve_only_the_linear_layers(graphs):
    """Every Gemm and MatMul reads dequantized inputs (through transposes and reshapes), and every quantization
    step feeds only those: no layer's output is quantized for the residual sums, GELU or the logits, which no
    integer kernel reads. A quantization step reads no transpose or reshape that feeds only it."""
    ours, _ = graphs
    made_by = producers(ours)
    readers = collections.defaultdict(list)
    for node in ours.graph.node:
        for name in node.input:
            readers[name].append(node)
    linear = [node for node in ours.graph.node if node.op_type in LINEAR]
    assert len(linear) == 12 * 6 + 3 + 1  # per block qkv, q @ k, attn @ v, proj, fc1, fc2; 3 pooling projections; head
    for node in linear:
        for name in node.input[:2]:
            while made_by[name].op_type in convert.DATA_MOVEMENT:
                name = made_by[name].input[0]
            assert made_by[name].op_type == "DequantizeLinear", node.name

    def final_readers(name: str) -> list:
        return [end for node in readers[name] for end in
                (final_readers(node.output[0]) if node.op_type in convert.DATA_MOVEMENT else [node])]

    for quantize in (node for node in ours.graph.node if node.op_type == "QuantizeLinear"):
        (dequantize,) = readers[quantize.output[0]]
        assert {node.op_type for node in final_readers(dequantize.output[0])} <= LINEAR, quantize.name
        source = made_by.get(quantize.input[0])
        assert source is None or source.op_type not in convert.DATA_MOVEMENT or len(readers[quantize.input[0]]) > 1


def test_every_normalization_is_of_a_rank_3_view(graphs):
    ours, plain = graphs
    made_by = producers(ours)
    norms = [node for node in ours.graph.node if node.op_type == "LayerNormalization"]
    assert len(norms) == sum(node.op_type == "LayerNormalization" for node in plain.graph.node) == 2 * 12 + 1
    assert all(made_by[node.input[0]].op_type == "Unsqueeze" for node in norms)


@pytest.mark.parametrize("scale, moved", [([0.1], True), ([0.1, 0.2, 0.3], False)])
def test_only_a_per_tensor_quantization_moves_before_a_transpose(scale, moved):
    """One scale commutes with a transpose; a scale per axis would then scale the wrong values."""
    helper = onnx.helper
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
         helper.make_node("QuantizeLinear", ["t", "scale", "zero"], ["q"], axis=1),
         helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], axis=1)], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [3, 3])],
        [onnx.numpy_helper.from_array(np.array(scale if len(scale) > 1 else scale[0], np.float32), "scale"),
         onnx.numpy_helper.from_array(np.zeros(len(scale) if len(scale) > 1 else (), np.int8), "zero")])
    convert._quantize_before_data_movement(graph)
    quantize = next(node for node in graph.node if node.op_type == "QuantizeLinear")
    assert (quantize.input[0] == "x") is moved
    assert graph.output[0].name in {output for node in graph.node for output in node.output}


def test_the_rewrites_change_no_result(graphs):
    """Moving a per-tensor quantization across a transpose, and normalizing a [1, rows, dim] view, are the same
    arithmetic: onnxruntime computes the same logits from both graphs."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    pixels = np.random.default_rng(2).standard_normal((1, 3, 224, 224), dtype=np.float32)
    ours, plain = (ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
                   .run(None, {"pixel_values": pixels})[0] for model in graphs)
    assert np.isfinite(ours).all()
    assert np.abs(ours - plain).max() <= 1e-5 * np.abs(plain).max()


def test_openvino_fuses_every_quantization_step(graphs):
    """In OpenVINO's compiled model of our graph no quantization step runs as a layer of its own (each is
    fused into the normalization or eltwise step before it) and fewer transposes run than in the quantizer's
    own graph, whose 25 post-normalization steps run alone."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'hiera-deploy[openvino]')")
    core = shared_core()

    def layers(model: onnx.ModelProto) -> collections.Counter:
        compiled = core.compile_model(core.read_model(model.SerializeToString()), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2})
        return collections.Counter(op.get_rt_info()["layerType"].astype(str)
                                   for op in compiled.get_runtime_model().get_ordered_ops())

    ours, plain = (layers(model) for model in graphs)
    assert plain["FakeQuantize"] >= 2 * 12 + 1
    assert ours["FakeQuantize"] == 0
    assert ours["Transpose"] < plain["Transpose"]
