"""Every artifact the export writes stays at rank 4 (a video model's at rank 5: its clip input, the 3-D patch
embedding's output and its NCTHW stage maps), as LiteRT's GPU delegate and NNAPI require; the report says so
as `max_rank`."""

from pathlib import Path

import onnx
import pytest

from export import Options, run
from export.optimize import _scratch_directory, max_rank

from ..conftest import FIXTURES

IMAGE_PRECISIONS = ("fp32", "fp16", "int8", "qdq", "openvino")


@pytest.mark.parametrize("task", ["classify", "features", "backbone", "mae", "video"])
def test_every_artifact_is_at_rank_4(task, transformers_checkpoint, transformers_mae, photo_files, tmp_path):
    if task == "mae":
        weights, precisions, limit = transformers_mae[0], ("fp32", "fp16", "int8", "openvino"), 4  # no qdq for mae
    elif task == "video":  # qdq's calibration feeds images, not clips
        weights, precisions, limit = FIXTURES / "reference" / "video_fair_hub", ("fp32", "fp16", "int8", "openvino"), 5
    else:
        checkpoint = transformers_checkpoint("small_q_pool", "classify" if task == "classify" else "features")
        weights, precisions, limit = checkpoint[0], IMAGE_PRECISIONS, 4
    report = run(Options(weights=str(weights), task="classify" if task == "video" else task, batch=1,
                         out_dir=tmp_path, precisions=precisions, calibration=photo_files[0].parent
                         if "qdq" in precisions else None, loss=task == "mae", validate=False))
    ranks = {precision: entry["max_rank"] for precision, entry in report["artifacts"].items()}
    assert list(ranks) == list(precisions) and all(rank is not None and rank <= limit for rank in ranks.values()), ranks
    fp32 = onnx.load(tmp_path / report["artifacts"]["fp32"]["file"], load_external_data=False)
    assert max_rank(fp32) == ranks["fp32"]  # what the report says is what the file holds


def test_max_rank_sees_every_value_through_onnxruntimes_fused_operators():
    """A rank-6 value between two fused operators, which onnx's own shape inference does not know."""
    make = onnx.helper.make_node
    graph = onnx.helper.make_graph(
        [make("Gelu", ["x"], ["g"], domain="com.microsoft"),
         make("Reshape", ["g", "six"], ["r"]),
         make("Gelu", ["r"], ["y"], domain="com.microsoft")],
        "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor("six", onnx.TensorProto.INT64, [6], [1, 2, 2, 2, 2, 4])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                         onnx.helper.make_opsetid("com.microsoft", 1)])
    assert max_rank(model) == 6


def test_shape_inference_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """onnxruntime's symbolic inference saves a graph it cannot finish to `sym_shape_infer_temp.onnx` in the working
    directory; `max_rank` runs it in a scratch directory, and comes back to the user's."""
    monkeypatch.chdir(tmp_path)
    with _scratch_directory():
        Path("sym_shape_infer_temp.onnx").write_bytes(b"what onnxruntime leaves")
        assert Path.cwd() != tmp_path
    assert Path.cwd() == tmp_path and list(tmp_path.iterdir()) == []
