"""The probe every artifact carries (runtime.probe): made by the export, run on this device by `runtime.load` (once:
the verdict is kept) and by `python -m runtime check`; an artifact that computes otherwise than its bounds allow is
refused in one line naming the figure, and so is one whose export report says it failed."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export import Options, run
from runtime import HieraRuntimeError, load, probe
from runtime.artifact import FORMAT_VERSION

from ..conftest import ROOT, cpu_flags, failed_rows

DIGITS = ROOT / "models" / "digits"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The digits model's fp32, int8 and OpenVINO artifacts, with their probes and report."""
    out = tmp_path_factory.mktemp("digits")
    report = run(Options(weights=str(DIGITS), out_dir=out, precisions=("fp32", "int8", "openvino")))
    assert report["passed"], failed_rows(report)
    return out


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Kept verdicts in this test's own folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "hiera-deploy" / "probe"


def copy_of(exported, tmp_path, name="hiera_digits_classify.onnx", report=False) -> "Path":  # noqa: F821
    folder = tmp_path / "copy"
    folder.mkdir(exist_ok=True)
    shutil.copy(exported / name, folder / name)
    if report:
        shutil.copy(exported / "hiera_digits_classify.report.json", folder / "hiera_digits_classify.report.json")
    return folder / name


def edited(path, change) -> None:
    """`path` rewritten with `change(model)` applied: its metadata, the probe among it, stays."""
    model = onnx.load(path)
    change(model)
    onnx.save(model, path)


@pytest.mark.parametrize("name, figure", [("hiera_digits_classify.onnx", "max_abs"),
                                          ("hiera_digits_classify.int8.onnx", "cosine")])
def test_every_artifact_carries_a_probe_that_passes_here(exported, name, figure):
    model = load(exported / name, provider="cpu", check=False)
    assert model.info.format_version == FORMAT_VERSION == 2 and model.info.probe is not None, name
    rows = probe.check(model, model.info.probe)
    assert [row.against.split(" ")[0] for row in rows] == ["PyTorch", "onnxruntime"], rows
    assert rows[0].figure == figure and rows[1].figure == "cosine" and rows[1].bound == 0.999
    for row in rows:
        assert row.passed, f"{name} on {cpu_flags()}: {row.describe()}"
    assert model.info.probe["photos"] == ["china.jpg", "flower.jpg"]
    assert probe.decode(model.info.probe["pixels"], "pixels").shape == (2, 64, 64, 3)


def test_a_bias_edited_with_the_probe_left_is_refused_in_one_line(exported, tmp_path):
    path = copy_of(exported, tmp_path)

    def shift_a_bias(model):
        bias = next(t for t in reversed(model.graph.initializer) if len(t.dims) == 1 and t.dims[0] == 10)
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(0.5), bias.name))
    edited(path, shift_a_bias)
    with pytest.raises(HieraRuntimeError) as refused:
        load(path, provider="cpu")
    message = str(refused.value)
    assert "\n" not in message and "fails its probe on this device" in message, message
    assert "PyTorch fp32: max abs 0.5 > 0.0001" in message, message
    assert load(path, provider="cpu", check=False).info.probe is not None  # asked not to check: it runs


def test_a_verdict_is_kept_once_per_artifact_and_device_and_only_if_private(exported, tmp_path, private_cache,
                                                                           monkeypatch):
    path = exported / "hiera_digits_classify.int8.onnx"
    load(path, provider="cpu")
    kept = list(private_cache.glob("*.json"))
    assert len(kept) == 1 and all(row["passed"] for row in json.loads(kept[0].read_text())["rows"])
    calls = []
    monkeypatch.setattr(probe, "check", lambda model, stored: calls.append(1) or [])
    load(path, provider="cpu")
    assert calls == []  # the kept verdict was used
    kept[0].write_text(json.dumps({"rows": [{"against": "forged", "figure": "cosine", "value": 1.0, "bound": 0.99,
                                             "passed": True}]}))
    os.chmod(kept[0], 0o666)  # writable by anyone: not a verdict the runtime can trust
    load(path, provider="cpu")
    assert calls == [1]


def test_a_read_only_cache_folder_keeps_nothing_and_still_checks(exported, tmp_path, private_cache, monkeypatch):
    private_cache.parent.mkdir(parents=True)
    private_cache.parent.chmod(0o500)
    try:
        if os.access(private_cache.parent, os.W_OK):
            pytest.skip("running as a user whom permissions do not stop (root)")
        assert load(exported / "hiera_digits_classify.onnx", provider="cpu").info.probe is not None
        assert not private_cache.exists()
    finally:
        private_cache.parent.chmod(0o700)


def test_an_artifact_without_a_probe_runs_and_says_so(exported, tmp_path):
    path = copy_of(exported, tmp_path)

    def older_format(model):
        props = [(p.key, p.value) for p in model.metadata_props if p.key != "hiera.probe"]
        del model.metadata_props[:]
        for key, value in props:
            model.metadata_props.add(key=key, value="1" if key == "hiera.format_version" else value)
    edited(path, older_format)
    model = load(path, provider="cpu")
    assert model.info.probe is None and model.info.format_version == 1


def test_a_newer_format_is_refused_in_one_line(exported, tmp_path):
    path = copy_of(exported, tmp_path)

    def newer(model):
        next(p for p in model.metadata_props if p.key == "hiera.format_version").value = str(FORMAT_VERSION + 1)
    edited(path, newer)
    with pytest.raises(HieraRuntimeError, match=r"metadata format 3 is newer than this runtime reads \(2\)"):
        load(path, provider="cpu")


def test_a_damaged_probe_is_one_line(exported, tmp_path):
    path = copy_of(exported, tmp_path)

    def damage(model):
        entry = next(p for p in model.metadata_props if p.key == "hiera.probe")
        document = json.loads(entry.value)
        document["pixels"]["shape"] = [2, 64, 64, 4]
        entry.value = json.dumps(document)
    edited(path, damage)
    damaged = r"classify\.onnx: damaged probe: pixels does not hold \[2, 64, 64, 4\] uint8 values"
    with pytest.raises(HieraRuntimeError, match=damaged):
        load(path, provider="cpu")


def test_an_artifact_whose_report_says_it_failed_is_refused(exported, tmp_path, photo_files):
    path = copy_of(exported, tmp_path, "hiera_digits_classify.int8.onnx", report=True)
    report_file = path.with_name("hiera_digits_classify.report.json")
    report = json.loads(report_file.read_text())
    report["artifacts"]["int8"].update(passed=False, failures=["logits cosine 0.903 < 0.99"])
    report_file.write_text(json.dumps(report))
    with pytest.raises(HieraRuntimeError) as refused:
        load(path, provider="cpu")
    assert "report.json) says it FAILED: int8: logits cosine 0.903 < 0.99" in str(refused.value)
    model = load(path, provider="cpu", allow_failed=True)
    assert model.warnings and "FAILED" in model.warnings[0]
    result = subprocess.run([sys.executable, "-m", "runtime", "predict", str(photo_files[0]), "--model", str(path)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "says it FAILED" in result.stderr and len(result.stderr.splitlines()) == 1, \
        result.stderr


def runtime_check(*arguments) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", "check", *map(str, arguments)], capture_output=True,
                          text=True, cwd=ROOT)


def test_the_check_command_says_one_line_per_artifact_and_fails_an_edited_one(exported, tmp_path):
    fine = [exported / "hiera_digits_classify.onnx", exported / "hiera_digits_classify.int8.onnx"]
    result = runtime_check(*fine, "--provider", "cpu")
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 2, result.stdout + result.stderr
    assert lines[1].startswith(f"{fine[1]}: ok: PyTorch fp32: cosine 0.99") and "onnxruntime" in lines[1], lines[1]
    path = copy_of(exported, tmp_path)

    def shift_a_bias(model):
        bias = next(t for t in reversed(model.graph.initializer) if len(t.dims) == 1 and t.dims[0] == 10)
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(0.5), bias.name))
    edited(path, shift_a_bias)
    result = runtime_check(fine[0], path, "--provider", "cpu", "--json")
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 1 and [v["status"] for v in verdicts] == ["ok", "FAILED"], result.stdout
    assert verdicts[1]["rows"][0] == {"against": "PyTorch fp32", "figure": "max_abs", "value": verdicts[1]["rows"][0][
        "value"], "bound": 0.0001, "passed": False} and verdicts[1]["rows"][0]["value"] > 0.4
    result = runtime_check(fine[0], "--provider", "cuda")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and "provider cuda" in result.stderr, \
        result.stderr


@pytest.mark.parametrize("provider", ["cpu", "openvino"])
def test_every_session_keeps_the_one_interface(exported, provider):
    """runtime/interface.py's Session: what the model layer, the CLI and the probe read (TensorRT's engine session:
    tests/runtime/test_tensorrt.py, on its stand-in)."""
    from runtime.interface import Session

    name = "hiera_digits_classify.openvino.onnx" if provider == "openvino" else "hiera_digits_classify.onnx"
    session = load(exported / name, provider=provider, check=False).session
    assert isinstance(session, Session), type(session).__name__
    assert session.output_shapes["logits"][-1] == 10 and session.device == "cpu"
    with pytest.raises(HieraRuntimeError, match="the model takes inputs pixel_values; given pixel_values, noise$"):
        session.run(np.zeros((1, 3, 64, 64), np.float32), noise=np.zeros((1, 4), np.float32))


def test_large_outputs_are_stored_as_projections_that_keep_their_cosine():
    """A feature map of 96 x 56 x 56 values per sample: 1024 float64 projections, which survive the round trip and
    keep the cosine of the maps they stand for (its distance from 1 within a quarter); an output of at most 1024
    values is kept whole."""
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((2, 96, 56, 56)).astype(np.float32)
    noisy = maps + np.float32(0.05) * rng.standard_normal(maps.shape).astype(np.float32)
    reduced = probe.reduce(maps)
    assert reduced.shape == (2, probe.KEPT) and reduced.dtype == np.float64
    assert np.array_equal(probe.decode(probe.encode(reduced), "maps"), reduced)
    cosine = lambda a, b: (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)  # noqa: E731
    full = cosine(maps.reshape(2, -1).astype(np.float64), noisy.reshape(2, -1).astype(np.float64))
    projected = cosine(reduced, probe.reduce(noisy))
    assert np.abs((1 - projected) / (1 - full) - 1).max() < 0.25, (projected, full)
    logits = rng.standard_normal((2, 1000)).astype(np.float32)
    assert np.array_equal(probe.reduce(logits), logits)


def test_a_report_of_the_wrong_shape_beside_an_artifact_is_no_traceback(exported, tmp_path):
    """The report beside an artifact is read, not trusted: fields of another type count as absent."""
    path = copy_of(exported, tmp_path, "hiera_digits_classify.int8.onnx", report=True)
    report_file = path.with_name("hiera_digits_classify.report.json")
    report = json.loads(report_file.read_text())
    report.update(tensorrt="not an object", openvino={"rows": "not a list"})
    report["artifacts"]["int8"].update(passed=False, failures="not a list")
    report_file.write_text(json.dumps(report))
    with pytest.raises(HieraRuntimeError, match=r"says it FAILED: see it; run an artifact"):
        load(path, provider="cpu")
