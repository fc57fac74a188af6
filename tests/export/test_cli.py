"""`python -m export` as a user runs it: bad input gets one line and a non-zero exit, nothing half-written."""

import json
import os
import subprocess
import sys

import onnx
import pytest

import export.__main__ as cli
from export import Options, parity, run

from ..conftest import ROOT


def run_cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # as on a machine without network, and fast
    return subprocess.run([sys.executable, "-m", "export", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env)


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_bad_arguments(tmp_path, transformers_checkpoint):
    (tmp_path / "file").write_text("")
    directory, _ = transformers_checkpoint("small_q_pool")
    # A file models.lock names as a published checkpoint (by its hub directory) but has no hash for yet.
    published = tmp_path / "hiera-tiny-224-in1k-hf"
    published.mkdir()
    for file in transformers_checkpoint("tiny")[0].iterdir():
        (published / file.name).symlink_to(file)
    cases = {
        ("--variant", "gigantic", "--weights", "random"): "gigantic",
        ("--variant", "tiny", "--task", "segment"): "invalid choice: 'segment'",
        ("--variant", "tiny", "--weights", "random", "--opset", "15"): "--opset: must be a whole number from 16 to",
        ("--variant", "tiny", "--weights", "random", "--out", tmp_path / "file" / "out"): "cannot create the output",
        ("--variant", "tiny", "--weights", "random", "--precision", "int4"): "int4",
        ("--variant", "tiny", "--weights", tmp_path / "absent"): "absent",
        ("--variant", "base", "--weights", directory): "not variant base [--variant]",
        ("--weights", published): "[--allow-unverified]",
        ("--variant", "tiny", "--weights", "random", "--precision", "qdq"): "qdq needs calibration images",
        ("--variant", "tiny", "--weights", "random", "--precision", "qdq", "--calibration", tmp_path / "file"):
            "not a directory",
        ("--variant", "tiny", "--weights", "random", "--trt-version", "7.1"): "versions before 8.5",
        ("--variant", "tiny", "--weights", "random", "--max-batch", "0"): "--max-batch: must be a whole number from 1",
        ("--variant", "tiny", "--weights", "random", "--workspace", "nan"): "--workspace: must be a number above 0",
        ("--variant", "tiny", "--weights", "random", "--batch", "100000"): "--batch: must be a whole number from 1",
        ("--variant", "tiny", "--weights", "random", "--seed", "-1"): "--seed: must be a whole number from 0 to",
    }
    for args, expected in cases.items():
        out = () if "--out" in args else ("--out", tmp_path / "out")
        line = one_error_line(run_cli(*args, *out))
        assert expected in line, (args, line)
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_without_weights_or_network_it_says_how_to_get_them(tmp_path):
    line = one_error_line(run_cli("--variant", "tiny", "--out", tmp_path))
    assert "facebook/hiera-tiny-224-in1k-hf" in line and "hf download" in line and line.endswith("[--weights]")
    assert list(tmp_path.iterdir()) == []


def test_random_weights_are_labelled_as_such(tmp_path, capsys):
    assert cli.main(["--variant", "tiny", "--weights", "random", "--seed", "3", "--precision", "fp32",
                     "--out", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "random weights (random:3)" in out.err and "hiera_tiny_classify.onnx" in out.out
    report = json.loads((tmp_path / "hiera_tiny_classify.report.json").read_text())
    assert report["weights"]["source"] == "random:3" and report["passed"]


def test_failed_parity_keeps_the_artifact_flagged_and_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(parity.THRESHOLDS, "fp32", {"max_abs": 0.0})
    code = cli.main(["--variant", "tiny", "--weights", "random", "--precision", "fp32", "--out", str(tmp_path)])
    assert code == 1
    report = json.loads((tmp_path / "hiera_tiny_classify.report.json").read_text())
    assert report["passed"] is False and report["artifacts"]["fp32"]["failures"]
    assert (tmp_path / "hiera_tiny_classify.onnx").exists()
    assert "FAILED" in capsys.readouterr().out


def test_an_interrupted_write_leaves_no_finished_looking_file(tmp_path, monkeypatch):
    real_save = onnx.save_model

    def interrupted(model, path, *args, **kwargs):
        real_save(model, path, *args, **kwargs)
        with open(path, "r+b") as f:  # half of it on disk, then Ctrl-C
            f.truncate(os.path.getsize(path) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, "save_model", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(Options(variant="tiny", weights="random", out_dir=tmp_path, precisions=("fp32",), validate=False))
    assert list(tmp_path.iterdir()) == []


def test_hub_weights_come_from_the_cache_and_are_checked_against_the_lock(tmp_path, transformers_checkpoint):
    """`--variant tiny` fetches facebook/hiera-tiny-224-in1k-hf through huggingface_hub: offline, from its
    cache. The lock names that repository but records no hash yet, so it takes --allow-unverified."""
    snapshot = tmp_path / "hub" / "models--facebook--hiera-tiny-224-in1k-hf" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    for file in transformers_checkpoint("tiny")[0].iterdir():
        (snapshot / file.name).symlink_to(file)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    args = [sys.executable, "-m", "export", "--variant", "tiny", "--precision", "fp32", "--no-validate",
            "--out", tmp_path / "out"]
    refused = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env)
    assert one_error_line(refused).endswith("[--allow-unverified]")
    accepted = subprocess.run([*args, "--allow-unverified"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert accepted.returncode == 0, accepted.stderr
    weights = json.loads((tmp_path / "out" / "hiera_tiny_classify.report.json").read_text())["weights"]
    assert weights["source"] == "facebook/hiera-tiny-224-in1k-hf/model.safetensors (unverified)"
    assert weights["verified"] is False


def run_without(module: str, *args):
    """`python -m export ARGS` in an install that lacks `module` (its import fails, as if not installed)."""
    code = (f"import sys, runpy; sys.modules[{module!r}] = None; sys.argv = ['export', *{list(map(str, args))!r}]; "
            "runpy.run_module('export', run_name='__main__', alter_sys=True)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize("module, extra", [("torch", "model"), ("onnx", "export")])
def test_a_missing_extra_is_named_in_one_line(module, extra):
    result = run_without(module, "--variant", "tiny", "--weights", "random")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: python -m export needs {module}: pip install 'hiera-deploy[model,export]'")
    assert f"missing extra: {extra}" in result.stderr and result.stderr.count("\n") == 1


def test_no_arguments_print_usage_and_the_commands():
    result = run_cli()  # as python -m runtime: the help on stderr, exit 2
    assert result.returncode == 2 and result.stdout == "" and result.stderr.startswith("usage: python -m export")
    assert "check-trt" in result.stderr and "verify" in result.stderr and "16 to" in result.stderr


def test_each_task_defaults_to_the_precisions_it_is_exported_in():
    """The mask decoder is exported in fp32 and fp16 only: without --precision it takes those, where it took the
    encoder's default (with int8) and refused itself (docs/segment.md's command)."""
    assert cli.parse(["--task", "mask-decoder", "--weights", "sam2-folder"]).precisions == ("fp32", "fp16")
    assert cli.parse(["--variant", "tiny"]).precisions == ("fp32", "fp16", "int8")
