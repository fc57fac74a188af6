"""The graph itself: static unroll, rank, static shapes, opset, size against transformers' own export."""

import io

import onnx
import pytest
import torch

from export import Options, read_artifact, run
from export.onnx_export import to_onnx
from hiera_model import create


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Hiera-T exported with random weights, fp32 only, both the traced and the optimized graph."""
    out = tmp_path_factory.mktemp("tiny")
    report = run(Options(variant="tiny", weights="random", out_dir=out, precisions=("fp32",), validate=False))
    return report, out / "hiera_tiny_classify.onnx", to_onnx(create("tiny"), 17, batch=1)


def ranks_and_shapes(model: onnx.ModelProto):
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    values = [*inferred.graph.value_info, *inferred.graph.output]
    return [[d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in values]


def test_traced_graph_is_static_opset_17_with_one_unroll_gather(tiny):
    _, _, traced = tiny
    assert {o.domain: o.version for o in traced.opset_import}[""] == 17
    ops = [n.op_type for n in traced.graph.node]
    assert ops.count("Gather") == 1  # the unroll, on a constant index
    assert ops.count("LayerNormalization") == 1 + 2 * 12  # opset 17's op, not a decomposition
    shapes = ranks_and_shapes(traced)
    assert max(len(s) for s in shapes) <= 4
    assert all(isinstance(d, int) and d > 0 for s in shapes for d in s)  # batch 1: everything static


def test_dynamic_batch_is_the_only_symbolic_axis():
    traced = to_onnx(create("tiny", task="features"), 17, batch=None)
    for shape in ranks_and_shapes(traced):
        assert all(isinstance(d, int) for d in shape[1:]), shape
    (pixel_values,) = traced.graph.input
    assert pixel_values.type.tensor_type.shape.dim[0].dim_param


def test_optimized_graph_fuses_attention_and_gelu(tiny):
    report, path, _ = tiny
    optimized = onnx.load(path)
    fused = report["graphs"]["optimized"]["fusions"]
    # Hiera-T: 12 blocks; the first block of stages 2 to 4 pools its queries and keeps the plain form.
    assert fused == {"attention": 12 - 3, "gelu": 12}
    ops = [n.op_type for n in optimized.graph.node]
    assert "Identity" not in ops and "Constant" not in ops
    assert len(optimized.graph.node) == report["graphs"]["optimized"]["nodes"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's TorchScript exporter, as transformers users run it
def test_at_most_a_third_of_transformers_node_count(tiny, transformers_checkpoint):
    """transformers' model, exported as its users do (torch.onnx.export, opset 17), on the same config."""
    _, reference = transformers_checkpoint("tiny")
    buffer = io.BytesIO()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = reference

        def forward(self, pixel_values):
            return self.model(pixel_values).logits

    torch.onnx.export(Logits(), (torch.zeros(1, 3, 224, 224),), buffer, opset_version=17, dynamo=False)
    theirs = len(onnx.load_from_string(buffer.getvalue()).graph.node)
    ours = len(onnx.load(tiny[1]).graph.node)
    assert ours * 3 <= theirs, (ours, theirs)


def test_metadata_carries_what_the_runtime_needs(tiny):
    report, path, _ = tiny
    meta = read_artifact(path)
    assert meta["variant"] == "tiny" and meta["task"] == "classify" and meta["input_size"] == [224, 224]
    assert meta["preprocessing"] == {"resize_shortest_edge": 256, "crop_size": [224, 224], "resample": "bicubic",
                                     "rescale_factor": 1 / 255, "mean": [0.485, 0.456, 0.406],
                                     "std": [0.229, 0.224, 0.225], "color": "RGB"}
    assert meta["weights"] == {"source": "random:0", "sha256": None, "verified": False} == report["weights"]
    assert meta["labels"] is None and meta["outputs"] == ["logits"]
    assert meta["opset"] == 17 and meta["precision"] == "fp32" and meta["batch"] == 1
    assert {"torch", "onnx", "onnxruntime"} <= set(meta["producer"])
