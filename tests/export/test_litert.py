"""LiteRT artifacts (export/litert.py, docs/edge.md): the digits model exported as `.tflite` (fp32, fp16 weights,
int8 weights) passes its parity rows through ai-edge-litert, stays at rank 4 with every operator on LiteRT's GPU
delegate, verifies, and gives the ONNX artifact's logits on the held-out images, each artifact preprocessing them
by its own metadata."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export import Options, run, verify
from runtime import load
from runtime.artifact import from_metadata, read_metadata

from ..conftest import ROOT, cpu_flags, failed_rows

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

DIGITS = ROOT / "models" / "digits"
LITERT = ("litert", "litert-fp16", "litert-int8")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("litert")
    return out, run(Options(weights=str(DIGITS), out_dir=out, precisions=("fp32", *LITERT)))


@pytest.fixture(scope="module")
def heldout(tmp_path_factory) -> list:
    out = tmp_path_factory.mktemp("heldout")
    subprocess.run([sys.executable, ROOT / "tools" / "digits.py", "images", out], check=True, capture_output=True)
    return sorted(out.rglob("*.png"))[::15]  # 30 of the 450 held-out images, every class


def test_each_litert_artifact_passes_its_parity_rows_at_rank_4_on_the_gpu_delegate(exported):
    out, report = exported
    assert report["passed"], failed_rows(report)
    for precision, suffix, computes in (("litert", ".tflite", "fp32"), ("litert-fp16", ".fp16.tflite", "fp16"),
                                        ("litert-int8", ".int8.tflite", "int8")):
        entry = report["artifacts"][precision]
        assert entry["file"] == "hiera_digits_classify" + suffix and entry["parity"]["logits"]["top1_agreement"] == 1
        assert entry["max_rank"] <= 4, (precision, entry["max_rank"])
        gpu = entry["gpu_delegate"]
        assert gpu["operators"] == gpu["of"] == entry["operators"] > 0, (precision, gpu)
        info = from_metadata(read_metadata(out / entry["file"]), entry["file"])
        assert (info.precision, info.batch, info.task, info.input_size) == (computes, 1, "classify", (64, 64))
        assert info.probe is not None  # proven on this device by runtime.load
    sizes = {precision: report["artifacts"][precision]["bytes"] for precision in LITERT}
    assert sizes["litert-int8"] < sizes["litert-fp16"] < sizes["litert"], sizes  # the weights are what was asked


def test_the_export_verifies_again_with_its_weights(exported):
    out, _ = exported
    result = verify([out / "hiera_digits_classify.report.json"], weights=str(DIGITS))
    assert result.ok, [f"{c.name}: {c.detail}" for c in result.failures]
    assert {Path(c.subject).name for c in result.checks if c.name == "parity"} >= {
        "hiera_digits_classify.tflite", "hiera_digits_classify.fp16.tflite", "hiera_digits_classify.int8.tflite"}


def test_the_tflite_gives_the_onnx_logits_and_top5_on_heldout_images(exported, heldout):
    """Each model preprocesses the images by its own metadata: a .tflite that carried other preprocessing (mean,
    std, crop, color) than the ONNX artifact gets other logits here."""
    out, _ = exported
    tflite, onnx = load(out / "hiera_digits_classify.tflite"), load(out / "hiera_digits_classify.onnx", provider="cpu")
    assert tflite.providers[0].startswith("LiteRT") and tflite.session.max_batch == 1
    got = tflite.run(tflite.preprocess(heldout))["logits"]  # 30 images: run in chunks of its static batch
    want = onnx.run(onnx.preprocess(heldout))["logits"]
    worst = float(np.abs(got - want).max())
    assert worst <= 1e-4, f"max abs diff {worst:.3g} between the .tflite's and the .onnx's logits on {cpu_flags()}"
    top5 = [[p.index for p in predictions] for predictions in tflite.predict(heldout, top_k=5)]
    assert top5 == [[p.index for p in predictions] for predictions in onnx.predict(heldout, top_k=5)]
    assert np.mean([row[0] == int(path.parent.name) for row, path in zip(top5, heldout)]) >= 0.9  # it reads digits


def test_features_task(tmp_path):
    report = run(Options(weights=str(DIGITS), task="features", out_dir=tmp_path, precisions=("litert",)))
    assert report["passed"], failed_rows(report)
    assert set(report["artifacts"]["litert"]["parity"]) == {"last_hidden_state", "pooler_output"}
    assert report["artifacts"]["litert"]["max_rank"] <= 4


def test_a_missing_converter_is_one_line_naming_the_extra_before_anything_is_written(monkeypatch, tmp_path):
    import importlib.util

    from export import ExportError

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "litert_torch" else
                        find_spec(name, *a))
    with pytest.raises(ExportError, match=r"precision litert-fp16: .*pip install 'hiera-deploy\[litert-export\]'"):
        run(Options(weights=str(DIGITS), out_dir=tmp_path / "out", precisions=("fp32", "litert-fp16")))
    assert not (tmp_path / "out").exists()
