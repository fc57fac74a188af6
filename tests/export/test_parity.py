"""Exported graphs, run in onnxruntime, against transformers' own Hiera on the same weights.

Checkpoints are written by transformers' `save_pretrained`, exported with `export.run` as a user's
`python -m export --weights DIR` would, and both models see the same inputs.
"""

import numpy as np
import onnx
import pytest
import torch

from export import Options, read_artifact, run
from export.parity import run_artifact

from ..conftest import failed_rows

FP32_TOLERANCE = 1e-4  # max abs diff of every fp32 output against transformers


def inputs(config, batch: int) -> np.ndarray:
    generator = np.random.default_rng(batch)
    return generator.standard_normal((batch, 3, *config.image_size), dtype=np.float32)


def onnx_outputs(path, pixel_values) -> dict[str, np.ndarray]:
    return run_artifact(path, {"pixel_values": pixel_values})


@torch.no_grad()
def reference_outputs(model, pixel_values) -> dict[str, np.ndarray]:
    out = model(torch.from_numpy(pixel_values))
    if hasattr(out, "logits"):
        return {"logits": out.logits.numpy()}
    return {"last_hidden_state": out.last_hidden_state.numpy(), "pooler_output": out.pooler_output.numpy()}


# Hiera-T at full size. Hiera-B (82 s of CI) is a documented full-size check, not a test: `python -m export --variant
# base --weights random` proves its parity in its report; `python -m tools.parity_report` prints the model's.
@pytest.mark.parametrize("name", ["tiny"])
def test_classifier_matches_transformers(name, transformers_checkpoint, tmp_path):
    directory, reference = transformers_checkpoint(name)
    report = run(Options(weights=str(directory), variant=name, out_dir=tmp_path, precisions=("fp32", "int8")))
    assert report["passed"], failed_rows(report)
    fp32 = tmp_path / f"hiera_{name}_classify.onnx"
    pixel_values = inputs(reference.config, 1)
    expected = reference_outputs(reference, pixel_values)["logits"]
    got = onnx_outputs(fp32, pixel_values)["logits"]
    assert np.abs(got - expected).max() <= FP32_TOLERANCE
    int8 = onnx_outputs(tmp_path / f"hiera_{name}_classify.int8.onnx", pixel_values)["logits"]
    cosine = (int8 * expected).sum() / np.linalg.norm(int8) / np.linalg.norm(expected)
    assert cosine >= 0.99
    assert read_artifact(fp32)["labels"] == [f"class {i}" for i in range(10)]


@pytest.mark.parametrize("task", ["classify", "features"])
def test_dynamic_batch_matches_transformers(task, transformers_checkpoint, tmp_path):
    directory, reference = transformers_checkpoint("small_q_pool", task)
    report = run(Options(weights=str(directory), task=task, out_dir=tmp_path, batch=None, precisions=("fp32",)))
    assert report["passed"], failed_rows(report)
    (artifact,) = tmp_path.glob("*.onnx")
    for batch in (1, 3):
        pixel_values = inputs(reference.config, batch)
        expected, got = reference_outputs(reference, pixel_values), onnx_outputs(artifact, pixel_values)
        assert got.keys() == expected.keys()
        for key in expected:
            assert got[key].shape == expected[key].shape
            assert np.abs(got[key] - expected[key]).max() <= FP32_TOLERANCE, key


def test_fp16_keeps_the_sensitive_ops_in_fp32(transformers_checkpoint, tmp_path):
    directory, reference = transformers_checkpoint("small_q_pool")
    report = run(Options(weights=str(directory), out_dir=tmp_path, precisions=("fp16",)))
    assert report["passed"], failed_rows(report)
    assert report["artifacts"]["fp16"]["parity"]["logits"]["cosine"] >= 0.999

    (artifact,) = tmp_path.glob("*.fp16.onnx")
    graph = onnx.load(artifact).graph
    fp16_inputs = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    for node in graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert not fp16_inputs & set(node.input), node.name
    # The pooler's mean over the last stage's tokens (transformers' `sequence_output.mean(1)`, the graph's one
    # ReduceMean) reads and writes float32, by onnx's own type inference.
    inferred = onnx.shape_inference.infer_shapes(onnx.load(artifact)).graph
    types = {value.name: value.type.tensor_type.elem_type for value in inferred.value_info}
    (mean,) = [node for node in graph.node if node.op_type == "ReduceMean"]
    assert [types.get(mean.input[0]), types.get(mean.output[0])] == [onnx.TensorProto.FLOAT] * 2, mean.name
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_weights_beyond_protobufs_limit_go_to_external_data(transformers_checkpoint, tmp_path, monkeypatch):
    """The path Hiera-H (2.7 GB in fp32) takes, on a small model: the threshold lowered to 100 kB."""
    import export.artifact

    monkeypatch.setattr(export.artifact, "EXTERNAL_DATA_BYTES", 100_000)
    directory, reference = transformers_checkpoint("small_q_pool")
    report = run(Options(weights=str(directory), out_dir=tmp_path, batch=None, precisions=("fp32", "fp16", "int8")))
    assert report["passed"], failed_rows(report)
    for entry in report["artifacts"].values():
        data = tmp_path / f"{entry['file']}.data"
        assert data.is_file() and entry["bytes"] > data.stat().st_size > 100_000
        assert oct(data.stat().st_mode & 0o777) == oct((tmp_path / entry["file"]).stat().st_mode & 0o777)
    pixel_values = inputs(reference.config, 2)
    got = onnx_outputs(tmp_path / report["artifacts"]["fp32"]["file"], pixel_values)["logits"]
    assert np.abs(got - reference_outputs(reference, pixel_values)["logits"]).max() <= FP32_TOLERANCE
