"""`--task mae`: HieraForPreTraining exported with `noise` as an input, against transformers on the same
weights and noise; and the runtime's `reconstruct`."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from export import ExportError, Options, read_artifact, run
from export.trt_check import check
from runtime import Reconstructor, load
from runtime.reconstruct import GAP, panels, patches

from ..conftest import ROOT, failed_rows, tampered
from .test_graph import ranks_and_shapes
from .test_parity import FP32_TOLERANCE


@pytest.fixture(scope="module")
def mae_export(transformers_mae, tmp_path_factory):
    directory, reference = transformers_mae
    out = tmp_path_factory.mktemp("mae-export")
    report = run(Options(weights=str(directory), task="mae", loss=True, batch=None, out_dir=out,
                         precisions=("fp32", "fp16")))
    assert report["passed"], failed_rows(report)
    return report, {p: out / a["file"] for p, a in report["artifacts"].items()}, reference


@torch.no_grad()
def test_onnx_matches_transformers(mae_export):
    _, files, reference = mae_export
    generator = np.random.default_rng(3)
    pixel_values = generator.standard_normal((3, 3, 64, 96), dtype=np.float32)
    noise = generator.random((3, 6), dtype=np.float32)
    expected = reference(pixel_values=torch.from_numpy(pixel_values), noise=torch.from_numpy(noise))
    model = load(files["fp32"], provider="cpu")
    assert isinstance(model, Reconstructor)
    got = model.run(pixel_values, noise=noise)
    assert list(got) == ["logits", "bool_masked_pos", "ids_restore", "loss"]
    assert np.abs(got["logits"] - expected.logits.numpy()).max() <= FP32_TOLERANCE
    assert np.array_equal(got["bool_masked_pos"], expected.bool_masked_pos.numpy())
    assert np.array_equal(got["ids_restore"], expected.ids_restore.numpy())
    assert abs(got["loss"].mean() - expected.loss.item()) <= FP32_TOLERANCE
    # fp16 keeps the noise's sort in fp32: the same units are hidden
    half = load(files["fp16"], provider="cpu").run(pixel_values, noise=noise)
    assert np.array_equal(half["ids_restore"], expected.ids_restore.numpy())


def test_graph_and_metadata(mae_export):
    report, files, _ = mae_export
    graph = onnx.load(files["fp32"])
    assert [i.name for i in graph.graph.input] == ["pixel_values", "noise"]
    assert max(len(shape) for shape in ranks_and_shapes(graph)) <= 4
    meta = read_artifact(files["fp32"])
    assert meta["task"] == "mae" and meta["mae"] == {"mask_units": 6, "mask_ratio": 0.6, "pred_stride": 16,
                                                     "norm_pix_loss": True}
    assert check(onnx.load(files["fp16"]), "10") == []  # the standard-op graph builds with TensorRT
    assert report["artifacts"]["fp32"]["parity"]["ids_restore"] == {"equal": True}


@pytest.mark.parametrize("stride", [0, "16", None, 10**9, 7, 8, 32])
def test_a_bad_pred_stride_is_one_line_naming_the_file(stride, mae_export, tmp_path, capsys):
    """The exported model predicts 16 x 16 patches of its 64 x 96 input (24 rows of 3 x 16 x 16 = 768 values):
    a stride of another type, out of range, that does not divide the input (7), or that the logits do not match
    (8, 32) is damaged metadata, one line and exit 2, never an internal error."""
    from runtime.cli import main

    _, files, _ = mae_export
    path = tampered(files["fp32"], tmp_path, "mae.pred_stride", stride)
    image = tmp_path / "photo.png"
    Image.fromarray(np.zeros((64, 96, 3), np.uint8)).save(image)
    capsys.readouterr()
    assert main(["reconstruct", str(image), "--model", str(path), "--out", str(tmp_path / "out.png")]) == 2
    stdout, stderr = capsys.readouterr()
    assert stdout == "" and stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"error: {path}: damaged Hiera metadata: hiera.mae: ") and "pred_stride" in stderr, stderr
    assert not (tmp_path / "out.png").exists()


def test_every_input_gets_a_tensorrt_profile_and_is_required(mae_export):
    from export.tensorrt import profile
    from runtime import HieraRuntimeError

    _, files, _ = mae_export
    shapes = profile(onnx.load(files["fp16"]), max_batch=8)
    assert shapes == {"pixel_values": {"min": [1, 3, 64, 96], "opt": [4, 3, 64, 96], "max": [8, 3, 64, 96]},
                      "noise": {"min": [1, 6], "opt": [4, 6], "max": [8, 6]}}
    pixel_values = np.zeros((1, 3, 64, 96), np.float32)
    with pytest.raises(HieraRuntimeError, match="takes inputs pixel_values, noise; given pixel_values$"):
        load(files["fp32"], provider="cpu").run(pixel_values)


def test_mae_only_options_are_refused(transformers_mae, tmp_path):
    directory, _ = transformers_mae
    with pytest.raises(ExportError, match="loss: only for task mae"):
        run(Options(variant="tiny", weights="random", loss=True, out_dir=tmp_path))
    with pytest.raises(ExportError, match="precision qdq: .* not for mae"):
        run(Options(weights=str(directory), task="mae", precisions=("qdq",), calibration=tmp_path, out_dir=tmp_path))


def test_panels_of_a_perfect_prediction_are_the_original():
    """Logits equal to the normalized target patches reconstruct the image exactly (up to uint8 rounding)."""
    from runtime.preprocess import Preprocessing

    preprocessing = Preprocessing(resize_shortest_edge=64, crop_size=(64, 96))  # the image's own size
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    pixel_values = preprocessing(Image.fromarray(image))
    target = patches(pixel_values, 16)
    normalized = (target - target.mean(1, keepdims=True)) / np.sqrt(target.var(1, ddof=1, keepdims=True) + 1e-6)
    visible = np.arange(len(target)) % 3 == 0
    got = panels(pixel_values, normalized, visible, preprocessing, 16, norm_pix_loss=True)
    assert np.abs(got["reconstruction"].astype(int) - got["original"].astype(int)).max() <= 1
    assert np.abs(got["original"].astype(int) - image.astype(int)).max() <= 1
    hidden = np.repeat(np.repeat(~visible.reshape(4, 6), 16, 0), 16, 1)
    assert np.all(np.abs(got["masked"][hidden].astype(int) - 128) <= 1)  # masked patches are gray


def test_reconstruct_command_writes_three_panels(mae_export, tmp_path):
    _, files, _ = mae_export
    image = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out.png"
    done = subprocess.run([sys.executable, "-m", "runtime", "reconstruct", str(image), "--model", str(files["fp32"]),
                           "--out", str(out), "--seed", "3"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "masked (2 of 6 mask units visible)" in done.stdout
    assert Image.open(out).size == (3 * 96 + 2 * GAP, 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "photo.jpg"]  # no temporary left
    bad = subprocess.run([sys.executable, "-m", "runtime", "reconstruct", str(image), "--model", str(files["fp32"]),
                          "--out", str(tmp_path / "out.jpg")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: --out {tmp_path / 'out.jpg'}: the reconstruction " \
                                                         "is written as PNG; name it .png"


def test_published_mae_weights_keep_their_variant_name(tmp_path):
    """An MAE checkpoint of Hiera-T (two query poolings, as published) is Hiera-T, not a custom config."""
    from export.weights import _check_variant
    from hiera_model import create

    model = create("tiny", task="mae")
    assert _check_variant(model, "tiny", tmp_path / "hiera-tiny-224-mae-hf") == "tiny"
    with pytest.raises(ExportError, match="these weights are for Hiera-tiny, not variant base"):
        _check_variant(model, "base", tmp_path / "hiera-tiny-224-mae-hf")
