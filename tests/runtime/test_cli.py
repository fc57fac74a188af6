"""python -m runtime: predictions, bad input one line at a time, bench and info."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from runtime import Classifier

from ..conftest import ROOT
from .conftest import runtime_cli


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, photo_files) -> dict:
    """Each kind of bad input the runtime must survive, by the file a user would name."""
    d = tmp_path_factory.mktemp("bad")
    (d / "empty-dir").mkdir()
    (d / "empty-dir" / "notes.txt").write_text("no images here")
    (d / "text.jpg").write_text("this is not a JPEG")
    (d / "truncated.jpg").write_bytes(photo_files[0].read_bytes()[:20_000])
    (d / "zero.png").write_bytes(b"")
    Image.new("1", (10_000, 10_000)).save(d / "huge.png")  # 100 megapixels, 12 kB on disk
    return {"missing": d / "missing.jpg", "empty directory": d / "empty-dir", "text": d / "text.jpg",
            "truncated": d / "truncated.jpg", "zero bytes": d / "zero.png", "100 megapixels": d / "huge.png"}


MESSAGES = {"missing": "no such file", "empty directory": "no images in this directory", "text": "not an image",
            "truncated": "cannot decode (image file is truncated", "zero bytes": "empty file",
            "100 megapixels": "100 megapixels, above the limit of 64 (a decompression-bomb guard)"}


def test_json_lines_for_good_and_bad_images(exported, photo_files, bad_inputs):
    artifact, _, _ = exported("tiny")
    arguments = [photo_files[0], *bad_inputs.values(), *photo_files[1:]]
    result = runtime_cli("predict", *arguments, "--model", artifact, "--json", "--top-k", "3")
    assert result.returncode == 1, result.stderr  # some images failed
    assert "Traceback" not in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    by_image = {line["image"]: line for line in lines}
    assert len(lines) == len(by_image) == len(arguments)
    for kind, path in bad_inputs.items():
        assert by_image[str(path)]["error"].startswith(f"{path}: "), kind
        assert MESSAGES[kind] in by_image[str(path)]["error"], kind
    expected = Classifier.load(artifact).predict(photo_files, top_k=3)
    for path, top3 in zip(photo_files, expected):  # the good images of the same call are all classified
        assert by_image[str(path)]["top_k"] == [p.to_dict() for p in top3]
        assert [p["label"] for p in by_image[str(path)]["top_k"]][0].startswith("class ")


def test_text_output_and_one_error_line_per_bad_input(exported, photo_files, bad_inputs):
    artifact, _, _ = exported("tiny")
    result = runtime_cli("predict", photo_files[0], *bad_inputs.values(), "--model", artifact)
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert len(errors) == len(bad_inputs)
    for line, (kind, path) in zip(errors, bad_inputs.items()):
        assert line.startswith(f"error: {path}: ") and MESSAGES[kind] in line, kind
    assert result.stdout.splitlines()[0] == str(photo_files[0]) and len(result.stdout.splitlines()) == 6


def test_directories_are_expanded_with_progress(exported, photo_files):
    artifact, _, _ = exported("small_q_pool", batch=2)
    result = runtime_cli("predict", photo_files[0].parent, "--model", artifact, "--json", "--progress")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["image"] for line in result.stdout.splitlines()] == sorted(map(str, photo_files))
    # not a terminal: a line now and then, and one at the end
    assert result.stderr.splitlines()[-1] == "3/3 images"
    quiet = runtime_cli("predict", photo_files[0].parent, "--model", artifact, "--json", "--no-progress")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == result.stdout


def test_a_bad_model_is_one_line_and_exit_2(exported, photo_files, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 100)
    artifact, _, _ = exported("small_q_pool", batch=2)
    foreign = tmp_path / "foreign.onnx"
    from .test_api import without_metadata
    without_metadata(artifact, foreign)
    features, _, _ = exported("small_q_pool", task="features", batch=None)
    cases = {corrupt: "onnxruntime cannot load this model", foreign: "no Hiera metadata",
             tmp_path / "absent.onnx": "no such file", features: "a features model"}
    for model, message in cases.items():
        result = runtime_cli("predict", photo_files[0], "--model", model)
        assert result.returncode == 2, model
        assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {model}: "), result.stderr
        assert message in result.stderr
    mismatch = runtime_cli("predict", photo_files[0], "--model", foreign, "--crop-size", "64")
    assert mismatch.returncode == 2 and mismatch.stderr == f"error: {foreign}: takes 64 x 96 images, the " \
        "preprocessing given crops 64 x 64\n"
    accepted = runtime_cli("predict", photo_files[0], "--model", foreign, "--crop-size", "64x96", "--json")
    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout)["top_k"][0]["label"] is None


def test_bench_and_info(exported):
    artifact, _, _ = exported("small_q_pool", batch=2)
    result = runtime_cli("bench", "--model", artifact, "--batch", "4", "--runs", "3", "--warmup", "1", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert figures["inference"]["batch"] == 4 and figures["inference"]["runs"] == 3
    assert figures["inference"]["p90_ms"] >= figures["inference"]["median_ms"] > 0
    assert figures["providers"] == ["CPUExecutionProvider"] and figures["artifact_batch"] == 2
    table = runtime_cli("bench", "--model", artifact, "--runs", "2")
    assert table.returncode == 0 and "median ms" in table.stdout and "images/s" in table.stdout
    info = json.loads(runtime_cli("info", "--model", artifact, "--json").stdout)
    assert info["api"] == "Classifier" and info["task"] == "classify" and info["batch"] == 2 and info["labels"] == 10
    readable = runtime_cli("info", "--model", artifact)
    assert readable.returncode == 0, readable.stderr
    lines = readable.stdout.splitlines()
    assert lines[0] == str(artifact)
    assert "  input         pixel_values [2, 3, 64, 96], static batch 2" in lines
    assert "  labels        10: class 0, class 1, class 2, class 3, class 4, ..." in lines
    assert any(line.startswith("  preprocessing shortest edge to 73 (bicubic), center crop 64 x 96") for line in lines)


def test_bad_arguments_are_one_line():
    for args in (["predict", "x.jpg"], ["predict", "x.jpg", "--model", "m.onnx", "--top-k", "0"], ["nothing"]):
        result = runtime_cli(*args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")


def test_the_cli_runs_with_torch_unimportable(exported, photo_files):
    """What an edge box has: numpy, pillow, onnxruntime. `torch` set to None in sys.modules cannot be imported."""
    artifact, _, _ = exported("tiny")
    code = ("import sys; sys.modules['torch'] = None; from runtime.cli import main; "
            f"sys.exit(main(['predict', {str(photo_files[0])!r}, '--model', {str(artifact)!r}, '--json']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["top_k"]) == 5
