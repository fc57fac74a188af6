"""`--task image-encoder`: SAM 2's encoder exported from a checkpoint transformers saved itself, its artifact
against transformers' `Sam2Model.get_image_embeddings`, the graph's rank, SAM 2's preprocessing in the
metadata, and bad input on the command line."""

import numpy as np
import onnx
import pytest
import safetensors.torch
import torch
from PIL import Image

from export import Options, read_artifact, run
from export.parity import photographs
from export.optimize import max_rank
from runtime import FeatureExtractor
from runtime import cli as runtime_cli
from runtime.preprocess import Preprocessing

from ..conftest import FIXTURES, failed_rows
from ..hiera_model.test_sam2 import timm_features, timm_features_folder
from ..sam2_reference import OUTPUTS, SIZE, reference_embeddings, sam2_checkpoint  # noqa: F401
from .test_cli import one_error_line, run_cli
from .test_parity import FP32_TOLERANCE, onnx_outputs


@pytest.fixture(scope="module")
def exported(sam2_checkpoint, tmp_path_factory):  # noqa: F811
    directory, _ = sam2_checkpoint
    out, calibration = tmp_path_factory.mktemp("sam2-export"), tmp_path_factory.mktemp("sam2-calibration")
    for name, image in photographs().items():  # qdq's calibration, capped: the two photographs
        image.save(calibration / name)
    report = run(Options(weights=str(directory), task="image-encoder", batch=None, out_dir=out,
                         precisions=("fp32", "fp16", "int8", "qdq", "openvino"), calibration=calibration))
    return out, report


def test_artifacts_pass_every_bound_at_rank_4(exported):
    out, report = exported
    assert report["passed"], failed_rows(report)
    assert report["task"] == "image-encoder" and report["graphs"]["exported"]["max_rank"] == 4
    # onnxruntime's fused Attention in the fp32 graph for the 4 of 7 blocks that do not pool their queries
    assert report["graphs"]["optimized"]["fusions"]["attention"] == 4
    assert set(report["artifacts"]) == {"fp32", "fp16", "int8", "qdq", "openvino"}
    for precision, entry in report["artifacts"].items():
        assert set(entry["parity"]) == set(OUTPUTS), precision
        assert max_rank(onnx.load(out / entry["file"], load_external_data=False)) == 4, precision
    assert report["openvino"]["passed"] and {row["inference_precision"] for row in report["openvino"]["rows"]} >= {
        "f32"}


@torch.no_grad()
def test_fp32_artifact_equals_transformers_get_image_embeddings(exported, sam2_checkpoint):  # noqa: F811
    out, report = exported
    _, reference = sam2_checkpoint
    artifact = out / report["artifacts"]["fp32"]["file"]
    pixel_values = np.random.default_rng(3).standard_normal((3, 3, SIZE, SIZE), dtype=np.float32)
    expected = reference_embeddings(reference, torch.from_numpy(pixel_values))
    got = onnx_outputs(artifact, pixel_values)
    for name in OUTPUTS:
        assert got[name].shape == tuple(expected[name].shape)
        assert np.abs(got[name] - expected[name].numpy()).max() <= FP32_TOLERANCE, name
    assert max_rank(onnx.load(artifact, load_external_data=False)) == 4


def test_metadata_carries_sam2_preprocessing(exported, capsys):
    out, report = exported
    artifact = out / report["artifacts"]["fp32"]["file"]
    meta = read_artifact(artifact)
    assert meta["task"] == "image-encoder"
    assert meta["outputs"] == ["image_embeddings", "high_res_feats_0", "high_res_feats_1"]
    preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    assert preprocessing == Preprocessing.for_sam2((SIZE, SIZE)) and not preprocessing.keep_aspect_ratio
    # A wide image is squeezed to the input, not cropped: its left and right edges survive.
    image = np.zeros((60, 240, 3), np.uint8)
    image[:, :30] = 255
    pixels = preprocessing.crop(Image.fromarray(image))
    assert pixels.shape == (SIZE, SIZE, 3) and pixels[:, :8].min() == 255 and pixels[:, -8:].max() == 0
    maps = FeatureExtractor.load(artifact).extract([image])
    assert maps["image_embeddings"].shape == (1, 32, SIZE // 16, SIZE // 16)
    assert runtime_cli.main(["info", "--model", str(artifact)]) == 0
    assert f"resized to {SIZE} x {SIZE} (bilinear), aspect ratio not kept" in capsys.readouterr().out


def test_max_rank_sees_every_tensor():
    tensor = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Unsqueeze", ["x", "axes"], ["y"])], "g", [tensor("x", onnx.TensorProto.FLOAT,
                                                                                [1, 2, 3, 4])],
        [tensor("z", onnx.TensorProto.FLOAT, None)],
        initializer=[onnx.numpy_helper.from_array(np.array([0], np.int64), "axes")])
    graph.node.append(onnx.helper.make_node("Identity", ["y"], ["z"]))
    assert max_rank(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])) == 5


def test_bad_input_is_one_line(tmp_path):
    cases = {
        ("--variant", "sam2.1_hiera_tiny", "--task", "classify"): "a SAM 2 image encoder has task 'image-encoder'",
        ("--variant", "tiny", "--task", "image-encoder"): "task 'image-encoder' is SAM 2's image encoder",
        ("--variant", "sam2.1_hiera_tiny", "--task", "image-encoder", "--image-size", "1000"):
            "each side must be a multiple of 32",
        # transformers.js' Sam2Model needs the mask decoder's ONNX file beside the encoder's (issue 26)
        ("--variant", "sam2.1_hiera_tiny", "--task", "image-encoder", "--layout", "hub"):
            "no place for SAM 2's image encoder: transformers.js' Sam2Model loads two ONNX files together",
        ("--variant", "sam2.1_hiera_tiny", "--task", "backbone", "--layout", "hub"):
            "no place for SAM 2's HieraDet backbone",
    }
    for args, expected in cases.items():
        line = one_error_line(run_cli(*args, "--weights", "random", "--out", tmp_path))
        assert expected in line, line
    # no network here: the hub's folder for the variant is named, with how to get it
    line = one_error_line(run_cli("--variant", "sam2.1_hiera_tiny", "--task", "image-encoder", "--out", tmp_path))
    assert "cannot fetch facebook/sam2.1-hiera-tiny" in line and "hf download" in line, line
    assert not any(tmp_path.iterdir())


@torch.no_grad()
def test_sam2_backbone_from_timm_exports_its_stage_maps(tmp_path):
    """`--task backbone` on timm's sam2_hiera folder (the reference fixture): HieraDet's four stage maps at rank 4,
    the export's parity row per map, timm's recorded maps reproduced by the artifact, SAM 2's preprocessing."""
    reference = FIXTURES / "reference"
    report = run(Options(weights=str(reference / "sam2_timm_hub"), task="backbone", batch=None, out_dir=tmp_path,
                         precisions=("fp32",)))
    assert report["passed"], failed_rows(report)
    stages = ["stage1", "stage2", "stage3", "stage4"]
    entry = report["artifacts"]["fp32"]
    assert list(entry["parity"]) == stages and entry["max_rank"] == 4
    meta = read_artifact(tmp_path / entry["file"])
    assert meta["task"] == "backbone" and meta["outputs"] == stages
    assert Preprocessing.from_dict(meta["preprocessing"]) == Preprocessing.for_sam2((96, 96))
    expected = safetensors.torch.load_file(reference / "expected_sam2.safetensors")
    got = onnx_outputs(tmp_path / entry["file"], expected["pixel_values"].numpy())
    diffs = {name: float(np.abs(got[name] - expected[f"timm_{name}"].numpy()).max()) for name in stages}
    assert max(diffs.values()) <= FP32_TOLERANCE, diffs


@torch.no_grad()
def test_sam2_features_from_timm_export_and_embed(tmp_path):
    """`--task features` on timm's sam2_hiera folder (the fixture, head.norm redrawn): the artifact gives timm's
    tokens and pooled vector (tests/hiera_model/test_sam2.py: timm_features), and `runtime embed` takes it."""
    import hiera_model

    folder, state = timm_features_folder(tmp_path)
    out = tmp_path / "artifacts"
    report = run(Options(weights=str(folder), task="features", batch=None, out_dir=out, precisions=("fp32",)))
    assert report["passed"], failed_rows(report)
    entry = report["artifacts"]["fp32"]
    outputs = ["last_hidden_state", "pooler_output"]
    assert list(entry["parity"]) == outputs and entry["max_rank"] == 4
    artifact = out / entry["file"]
    meta = read_artifact(artifact)
    assert meta["task"] == "features" and meta["outputs"] == outputs
    assert Preprocessing.from_dict(meta["preprocessing"]) == Preprocessing.for_sam2((96, 96))
    maps = safetensors.torch.load_file(FIXTURES / "reference" / "expected_sam2.safetensors")
    expected = timm_features(maps["timm_stage4"], state)
    got = onnx_outputs(artifact, maps["pixel_values"].numpy())
    diffs = {name: float(np.abs(got[name] - expected[name].numpy()).max()) for name in outputs}
    assert max(diffs.values()) <= FP32_TOLERANCE, diffs
    # embed writes one pooled vector per image: the PyTorch model's on the runtime's preprocessing
    images = []
    for index, shape in enumerate([(80, 112, 3), (130, 90, 3)]):
        images.append(tmp_path / f"{index}.png")
        Image.fromarray(np.random.default_rng(index).integers(0, 256, shape, dtype=np.uint8)).save(images[-1])
    assert runtime_cli.main(["embed", *map(str, images), "--model", str(artifact), "--out",
                             str(tmp_path / "pooled.npy")]) == 0
    pooled = np.load(tmp_path / "pooled.npy")
    preprocessing = Preprocessing.for_sam2((96, 96))
    pixel_values = torch.from_numpy(np.stack([preprocessing(Image.open(path)) for path in images]))
    reference = hiera_model.load(folder, task="features")(pixel_values)["pooler_output"].numpy()
    assert pooled.shape == (2, 48) and np.abs(pooled - reference).max() <= FP32_TOLERANCE
