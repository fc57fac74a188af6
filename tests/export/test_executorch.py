"""ExecuTorch `.pte` artifacts (docs/edge.md): the export's parity rows pass through ExecuTorch's own runtime, the
program gives transformers' logits, its metadata sidecar is checked by `verify`, and a `.pte` without one is refused
in one line with exit 2."""

import base64
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from export import Options, options, run, verify
from export.errors import ExportError
from runtime import load
from runtime.cli import main

from ..conftest import ROOT, failed_rows, probe_logits, stored

pytest.importorskip("executorch", reason="the executorch extra is not installed")

# fp32 only: each program costs about 30 s to lower on these cores; executorch-int8's parity row is in the speed
# table's run (docs/edge.md), which exports it for Hiera-T.
PRECISIONS = ("executorch",)


@pytest.fixture(scope="module")
def exported(transformers_checkpoint, tmp_path_factory):
    """One export of a small transformers Hiera to an ExecuTorch program, validated through ExecuTorch's runtime."""
    directory, model = transformers_checkpoint("small_q_pool")
    out = tmp_path_factory.mktemp("executorch")
    report = run(Options(weights=str(directory), batch=1, out_dir=out, precisions=PRECISIONS))
    return report, out, model


def test_parity_rows_pass_through_executorchs_runtime(exported):
    report, out, _ = exported
    assert report["passed"] is True, failed_rows(report)
    for precision in PRECISIONS:
        entry = report["artifacts"][precision]
        assert entry["passed"] is True and entry["max_rank"] <= 4, (precision, entry.get("max_rank"))
        assert entry["delegated_calls"] >= 1, f"{precision}: nothing went to XNNPACK"
        assert (out / entry["file"]).is_file() and (out / (entry["file"] + ".json")).is_file()
    fp32 = report["artifacts"]["executorch"]["parity"]["logits"]
    assert fp32["max_abs"] <= 1e-4, f"executorch fp32: max abs diff {fp32['max_abs']}"


def test_the_program_gives_transformers_logits(exported):
    """Against the reference library itself: transformers' model on the same weights and preprocessed photographs."""
    report, out, reference = exported
    model = load(out / report["artifacts"]["executorch"]["file"])
    assert model.providers == ["ExecuTorch XNNPACK"]
    pixels = np.random.default_rng(0).standard_normal((3, 3, 64, 96), dtype=np.float32)  # 3 calls at the static batch 1
    got = model.run(pixels)["logits"]
    with torch.no_grad():
        want = reference(torch.from_numpy(pixels)).logits.numpy()
    assert np.abs(got - want).max() <= 1e-4, f"max abs diff {np.abs(got - want).max()} against transformers"


def test_verify_checks_the_program_and_its_sidecar(exported, tmp_path):
    report, out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    result = verify([copy / report["artifacts"]["executorch"]["file"]])
    assert result.ok, result.failures
    sidecar = copy / (report["artifacts"]["executorch"]["file"] + ".json")
    sidecar.write_text(sidecar.read_text().replace('"classify', '"features'))
    failures = verify([copy / report["report_file"].rsplit("/", 1)[1]]).failures
    assert sorted((f.name, os.path.basename(f.subject)) for f in failures) == [
        ("metadata", sidecar.name.removesuffix(".json")), ("sha256", sidecar.name)], failures


def test_the_probe_holds_transformers_outputs_and_check_runs_it_through_executorch(exported, capsys):
    """The sidecar's probe: its photographs, normalized by hand with the sidecar's own mean and std, give transformers'
    logits within fp32's bound; `check` runs it through ExecuTorch's runtime, comparing with ExecuTorch's own run."""
    report, out, reference = exported
    program = out / report["artifacts"]["executorch"]["file"]
    metadata = json.loads((out / (program.name + ".json")).read_text())["metadata"]
    document, pre = json.loads(metadata["hiera.probe"]), json.loads(metadata["hiera.preprocessing"])
    got, want = probe_logits(document, pre, reference)
    assert got.shape == want.shape == (2, 10) and np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()
    assert document["engine"]["name"].startswith("ExecuTorch"), document["engine"]["name"]
    assert main(["check", str(program)]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and line.startswith(f"{program}: ok: PyTorch fp32: max abs "), line
    assert "; ExecuTorch XNNPACK on " in line, line  # the engine's row: the same engine ran it at export


def test_a_tampered_probe_or_program_fails_check_in_one_line_naming_it(exported, tmp_path, capsys):
    report, out, _ = exported
    name = report["artifacts"]["executorch"]["file"]
    for folder in ("probe", "program"):
        (tmp_path / folder).mkdir()
        for file in (name, name + ".json"):
            shutil.copy(out / file, tmp_path / folder / file)
    sidecar_file = tmp_path / "probe" / (name + ".json")
    sidecar = json.loads(sidecar_file.read_text())
    document = json.loads(sidecar["metadata"]["hiera.probe"])
    logits = stored(document["reference"]["outputs"]["logits"]).copy()
    logits[0, 3] += 0.5
    document["reference"]["outputs"]["logits"]["data"] = base64.b64encode(logits.tobytes()).decode()
    sidecar["metadata"]["hiera.probe"] = json.dumps(document)
    sidecar_file.write_text(json.dumps(sidecar))
    assert main(["check", str(tmp_path / "probe" / name)]) == 1
    line = capsys.readouterr().out
    assert line.count("\n") == 1, line
    assert line.startswith(f"{tmp_path / 'probe' / name}: FAILED: PyTorch fp32: max abs 0.5 > 0.0001; "), line
    program = tmp_path / "program" / name
    data = bytearray(program.read_bytes())
    data[len(data) // 2] ^= 1
    program.write_bytes(bytes(data))
    assert main(["check", str(program)]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.count("\n") == 1, printed
    assert printed.err.startswith(f"error: {program}: not the program its sidecar"), printed.err


def test_a_program_without_its_sidecar_is_one_line_and_exit_2(exported, photo_files, tmp_path):
    report, out, _ = exported
    bare = tmp_path / "model.pte"
    shutil.copy(out / report["artifacts"]["executorch"]["file"], bare)
    done = subprocess.run([sys.executable, "-m", "runtime", "predict", str(photo_files[0]), "--model", str(bare)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=120)
    assert done.returncode == 2 and done.stdout == "", (done.returncode, done.stdout)
    assert done.stderr.count("\n") == 1 and str(bare) in done.stderr and "sidecar" in done.stderr, done.stderr


def test_a_missing_converter_is_one_line_naming_the_extra_before_anything_is_written(monkeypatch, tmp_path):
    monkeypatch.setattr(options.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ExportError, match=r"precision executorch: its converter \(executorch\) is not installed: "
                                         r"pip install 'hiera-deploy\[executorch\]'"):
        run(Options(variant="tiny", weights="random", out_dir=tmp_path / "out", precisions=("executorch",)))
    assert not (tmp_path / "out").exists()


BLOCK_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked")
sys.meta_path.insert(0, NoTorch())
"""


def test_without_torch_a_program_is_one_line_naming_the_extra(exported):
    """ExecuTorch's Python runtime imports torch (docs/edge.md): in a process without torch, opening a .pte says so in
    one line, and `import runtime` itself still works. If ExecuTorch's runtime ever runs without torch, this fails and
    docs/edge.md's decision can be revisited."""
    report, out, _ = exported
    program = out / report["artifacts"]["executorch"]["file"]
    code = BLOCK_TORCH + f"""
import runtime
from runtime.errors import HieraRuntimeError
try:
    runtime.load({str(program)!r})
except HieraRuntimeError as error:
    print(error)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("\n") == 1 and "hiera-deploy[executorch]" in done.stdout and "torch" in done.stdout, \
        done.stdout
