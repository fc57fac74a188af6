"""`python -m export verify` and `export.verify`: a good export passes; a flipped byte, an edited report,
other weights, a stray or missing file each fail, with one line each; bad input is exit 2."""

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from safetensors.numpy import load_file, save_file

from export import ExportError, Options, run, verify

from ..conftest import ROOT

DIGITS = ROOT / "models" / "digits"
STEM = "hiera_digits_classify"


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    report = run(Options(weights=str(DIGITS), out_dir=out, precisions=("fp32", "int8")))
    assert report["passed"]
    return out


@pytest.fixture
def copy(good, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(good, out)
    return out


def cli(*args):
    return subprocess.run([sys.executable, "-m", "export", "verify", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT)


def failed(result) -> list[str]:
    return [f"{c.name}: {c.detail}" for c in result.failures]


def test_a_good_export_passes_with_and_without_its_weights(good):
    assert verify([good / f"{STEM}.report.json"]).ok
    result = verify([good / f"{STEM}.onnx", good / f"{STEM}.int8.onnx"], weights=str(DIGITS))
    assert result.ok, failed(result)
    assert {c.name for c in result.checks} >= {"report", "sha256", "metadata", "weights", "parity"}
    done = cli(good / f"{STEM}.onnx", "--weights", DIGITS, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["ok"] is True


def flip_a_weight_byte(path):
    """One bit of the largest initializer flipped, in place: a file that still loads, with other weights."""
    model = onnx.load(path)
    weights = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    data = bytearray(path.read_bytes())
    at = data.find(weights.raw_data[:64]) + 1000
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_one_flipped_byte_in_an_initializer_fails(copy):
    path = copy / f"{STEM}.onnx"
    flip_a_weight_byte(path)
    result = verify([path], weights=str(DIGITS))
    assert [c.name for c in result.failures] == ["sha256"], failed(result)
    done = cli(path)
    assert done.returncode == 1
    assert done.stdout.splitlines()[0].startswith(f"FAILED {path}: sha256: ")


def test_an_edited_report_fails(copy):
    report_file = copy / f"{STEM}.report.json"
    report = json.loads(report_file.read_text())
    report["artifacts"]["int8"]["parity"]["logits"]["cosine"] = 0.9999999  # a prettier figure
    report_file.write_text(json.dumps(report, indent=2))
    result = verify([copy / f"{STEM}.int8.onnx"])
    assert failed(result) == ["report: edited after the export (its integrity digest does not match its content)"]
    assert cli(report_file).returncode == 1


def test_weights_edited_with_their_recorded_sha256_fail(copy):
    """The report's digest covers its list of files: new weights and their sha256 written into it together are an
    edited report (with the list outside the digest, verify would say ok)."""
    path = copy / f"{STEM}.int8.onnx"
    flip_a_weight_byte(path)
    report_file = copy / f"{STEM}.report.json"
    report = json.loads(report_file.read_text())
    report["files"][path.name]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    report_file.write_text(json.dumps(report, indent=2))
    for target in (path, report_file):
        assert failed(verify([target])) == ["report: edited after the export (its integrity digest does not match "
                                            "its content)"], target


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    """The digits export with its weights in an `.onnx.data` file: Hiera-H's layout, the threshold lowered."""
    import export.artifact

    out = tmp_path_factory.mktemp("external")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export.artifact, "EXTERNAL_DATA_BYTES", 10_000)
        report = run(Options(weights=str(DIGITS), out_dir=out, precisions=("fp32",)))
    assert report["passed"]
    return out


def test_a_changed_external_data_file_fails(external, tmp_path):
    out = tmp_path / "external"
    shutil.copytree(external, out)
    data = out / f"{STEM}.onnx.data"
    assert verify([out / f"{STEM}.onnx"]).ok and data.stat().st_size > 10_000
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    data.write_bytes(bytes(raw))
    for target in (out / f"{STEM}.onnx", out / f"{STEM}.report.json"):
        result = verify([target])
        assert {(c.subject, c.name) for c in result.failures} == {(str(data), "sha256")}, failed(result)


def test_other_weights_fail(copy, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(DIGITS, other)
    tensors = load_file(other / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + np.float32(0.01)
    save_file(tensors, other / "model.safetensors", metadata={"format": "pt"})
    result = verify([copy / f"{STEM}.onnx"], weights=str(other))
    assert [c.name for c in result.failures] == ["weights"]
    assert "not the weights of this export" in result.failures[0].detail
    assert cli(copy / f"{STEM}.onnx", "--weights", other).returncode == 1
    random = verify([copy / f"{STEM}.onnx"], weights="random")
    assert [c.name for c in random.failures] == ["weights"]


def test_a_file_the_report_does_not_describe_and_a_missing_one_fail(copy):
    (copy / f"{STEM}.fp16.onnx").write_bytes((copy / f"{STEM}.onnx").read_bytes())
    assert "not describe" in failed(verify([copy / f"{STEM}.report.json"]))[0]
    (copy / f"{STEM}.fp16.onnx").unlink()
    (copy / f"{STEM}.int8.onnx").unlink()
    assert "no such file" in failed(verify([copy / f"{STEM}.report.json"]))[0]
    assert verify([copy / f"{STEM}.onnx"]).ok is True  # what it was asked about still holds


def test_a_report_of_a_failed_export_does_not_verify(copy):
    report_file = copy / f"{STEM}.report.json"
    from export.artifact import read_report, write_report

    report = read_report(report_file)
    report["artifacts"]["int8"]["parity"]["logits"]["cosine"] = 0.5  # what a failed export recorded ...
    report.pop("integrity")
    write_report(report_file, report)  # ... sealed, but its verdict does not follow from its figures
    assert any("fail today's bounds" in line for line in failed(verify([report_file])))


def test_bad_input_is_exit_2(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for args, expected in {(tmp_path / "absent.onnx",): "no such file",
                           (tmp_path / "notes.txt",): "not an exported artifact",
                           ("/dev/null",): "not a regular file"}.items():
        done = cli(*args)
        assert done.returncode == 2 and done.stderr.startswith("error: ") and expected in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1
    with pytest.raises(ExportError, match="no such file"):
        verify([tmp_path / "absent.onnx"])
