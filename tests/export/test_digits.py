"""The trained digits model (tools/digits.py, models/digits/): what each precision costs in accuracy."""

import json
import subprocess
import sys

from export import Options, run

from ..conftest import ROOT, cpu_flags, failed_rows

CHECKPOINT = ROOT / "models" / "digits"


def test_int8_loses_at_most_half_a_point(tmp_path):
    report = run(Options(weights=str(CHECKPOINT), out_dir=tmp_path))
    assert report["passed"], failed_rows(report)
    assert report["variant"] == "digits"
    scores = tmp_path / "accuracy.json"
    subprocess.run([sys.executable, "-m", "tools.digits", "evaluate", *sorted(tmp_path.glob("*.onnx")),
                    "--json", scores], check=True, capture_output=True, cwd=ROOT)
    top1 = json.loads(scores.read_text())["top1"]
    torch_fp32 = top1["PyTorch fp32"]
    assert torch_fp32 >= 0.97
    assert top1["hiera_digits_classify.onnx"] == torch_fp32
    assert top1["hiera_digits_classify.fp16.onnx"] >= torch_fp32 - 0.005
    assert top1["hiera_digits_classify.int8.onnx"] >= torch_fp32 - 0.005, f"{top1} on {cpu_flags()}"


def test_static_int8_for_tensorrt_calibrated_on_the_training_split(tmp_path):
    """The qdq artifact (symmetric int8 scales from 512 training images) loses at most half a point, and TensorRT's
    parser takes it."""
    train = tmp_path / "train"
    tool = [sys.executable, ROOT / "tools" / "digits.py"]
    subprocess.run([*tool, "images", train, "--split", "train"], check=True, capture_output=True)
    report = run(Options(weights=str(CHECKPOINT), out_dir=tmp_path, precisions=("fp32", "qdq"), calibration=train))
    assert report["passed"], failed_rows(report)
    assert report["artifacts"]["qdq"]["tensorrt_check"]["findings"] == []
    scores = tmp_path / "accuracy.json"
    subprocess.run([*tool, "evaluate", tmp_path / "hiera_digits_classify.qdq.onnx", "--json", scores], check=True,
                   capture_output=True)
    top1 = json.loads(scores.read_text())["top1"]
    assert top1["hiera_digits_classify.qdq.onnx"] >= top1["PyTorch fp32"] - 0.005, f"{top1} on {cpu_flags()}"


def test_the_tool_names_a_bad_file_in_one_line(tmp_path):
    """`tools/digits.py` on a missing artifact, a file that is not ONNX, and a folder with no weights: one line
    naming the path, status 2, no traceback."""
    (tmp_path / "notes.onnx").write_text("not a model")
    (tmp_path / "empty").mkdir()
    for arguments, path in ((["evaluate", tmp_path / "missing.onnx"], "missing.onnx"),
                            (["evaluate", tmp_path / "notes.onnx"], "notes.onnx"),
                            (["evaluate", "--checkpoint", tmp_path / "empty"], "empty")):
        result = subprocess.run([sys.executable, ROOT / "tools" / "digits.py", *arguments], capture_output=True,
                                text=True)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and path in line
