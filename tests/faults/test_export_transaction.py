"""An export is one transaction: killed at any step, failed, run twice at once or on a full disk, the
output folder holds the old complete set of files or the new one, and its report describes exactly them."""

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from export import verify
from export.transaction import STAGING_PREFIX, recover

from ..conftest import ROOT

DIGITS = ROOT / "models" / "digits"
OLD = ("fp32", "fp16", "int8")  # the export already in the folder
NEW = ("fp32", "int8")  # the one being killed: its commit removes the old fp16 file


def export_command(out: Path, precisions, *extra) -> list[str]:
    return [sys.executable, "-m", "export", "--weights", str(DIGITS), "--out", str(out), "--precision", *precisions,
            *extra]


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def staging_folders(folder: Path) -> list[Path]:
    return sorted(folder.glob(STAGING_PREFIX + "*"))


def expected_names(precisions) -> list[str]:
    names = {"fp32": "hiera_digits_classify.onnx", "fp16": "hiera_digits_classify.fp16.onnx",
             "int8": "hiera_digits_classify.int8.onnx"}
    return sorted([names[p] for p in precisions] + ["hiera_digits_classify.report.json"])


def report_precisions(folder: Path) -> tuple:
    report = json.loads((folder / "hiera_digits_classify.report.json").read_text())
    return tuple(report["artifacts"])


@pytest.fixture(scope="module")
def old_export(tmp_path_factory) -> Path:
    """A finished export of the digits model, copied into each test's folder."""
    out = tmp_path_factory.mktemp("old")
    subprocess.run(export_command(out, OLD), check=True, capture_output=True, cwd=ROOT)
    return out


def fresh_copy(old_export: Path, tmp_path: Path) -> Path:
    out = tmp_path / "artifacts"
    out.mkdir()
    for file in old_export.iterdir():
        (out / file.name).write_bytes(file.read_bytes())
    return out


def kill_at(command: list[str], step: str) -> int:
    """Run an export and SIGKILL it as soon as its progress reaches `step`; returns its exit status."""
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT)
    for line in process.stderr:
        if line.startswith("[") and line.split("]", 1)[1].split()[0] == step:
            process.send_signal(signal.SIGKILL)
            break
    process.stderr.close()
    return process.wait()


@pytest.mark.parametrize("step", ["reference", "export", "optimize", "convert", "write", "validate", "commit"])
def test_a_killed_export_leaves_the_old_set_or_the_new_one(step, old_export, tmp_path):
    out = fresh_copy(old_export, tmp_path)
    assert kill_at(export_command(out, NEW), step) == -signal.SIGKILL
    if visible(out) == expected_names(OLD):  # killed before its commit
        assert report_precisions(out) == OLD
        assert verify([out / "hiera_digits_classify.report.json"]).ok
        assert len(staging_folders(out)) <= 1  # the killed run's, which nothing holds any more
    else:  # killed during its commit: the staged set is complete and the next run in the folder finishes it
        assert step == "commit"
        assert not verify([out / "hiera_digits_classify.report.json"]).ok  # a mix is never certified
        recover(out)
    if staging_folders(out):
        recover(out)  # what the next export into the folder does first
    assert not staging_folders(out)
    assert visible(out) in (expected_names(OLD), expected_names(NEW))
    result = verify([out / "hiera_digits_classify.report.json"])
    assert result.ok, result.failures


def test_the_next_export_removes_what_a_killed_one_left(old_export, tmp_path):
    out = fresh_copy(old_export, tmp_path)
    kill_at(export_command(out, NEW), "optimize")
    assert len(staging_folders(out)) == 1
    subprocess.run(export_command(out, NEW, "--no-validate"), check=True, capture_output=True, cwd=ROOT)
    assert not staging_folders(out)
    assert visible(out) == expected_names(NEW)  # the old fp16 artifact went with the swap
    assert report_precisions(out) == NEW


def test_two_exports_of_one_name_at_once_end_with_one_complete_set(tmp_path):
    out = tmp_path / "artifacts"
    runs = [subprocess.Popen(export_command(out, precisions), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, cwd=ROOT) for precisions in (OLD, NEW)]
    for process in runs:
        assert process.wait() == 0, process.stderr.read()
        process.stderr.close()
    assert visible(out) in (expected_names(OLD), expected_names(NEW))
    assert not staging_folders(out)
    result = verify([out / "hiera_digits_classify.report.json"], weights=str(DIGITS))
    assert result.ok, result.failures


def test_a_failed_export_leaves_no_folder_behind(tmp_path):
    out = tmp_path / "new" / "artifacts"
    result = subprocess.run(export_command(out, NEW, "--calibration", tmp_path / "absent"), capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert not (tmp_path / "new").exists()
    bad_weights = tmp_path / "bad"
    bad_weights.mkdir()
    (bad_weights / "model.safetensors").write_bytes(b"not safetensors")
    result = subprocess.run([sys.executable, "-m", "export", "--weights", bad_weights, "--out", out],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: {bad_weights / 'model.safetensors'}: not a valid safetensors file")
    assert not (tmp_path / "new").exists()


def tiny_filesystem(path: Path, megabytes: int) -> bool:
    """Mount a tmpfs of `megabytes` at `path` where this machine allows it (as root)."""
    path.mkdir()
    if os.geteuid() != 0:
        return False
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)],
                             capture_output=True)
    return mounted.returncode == 0


def test_a_full_disk_is_one_line_and_the_old_set_stays(old_export, tmp_path):
    disk = tmp_path / "disk"
    mounted = tiny_filesystem(disk, 3)
    try:
        out = disk / "artifacts"
        out.mkdir()
        for name in expected_names(("fp32",)):  # an export of 1.4 MB; the new one needs 2.6 MB more
            source = old_export / name
            (out / name).write_bytes(source.read_bytes())
        limit = None if mounted else lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))
        result = subprocess.run(export_command(out, OLD), capture_output=True, text=True, cwd=ROOT,
                                preexec_fn=limit)
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in result.stderr
        assert ("No space left on device" if mounted else "File too large") in errors[0]
        assert visible(out) == expected_names(("fp32",)) and not staging_folders(out)
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)


STEM = "hiera_digits_classify"
# An earlier export with every kind of file beside its artifacts: external data, an engine and its sidecar.
EARLIER = [f"{STEM}.onnx", f"{STEM}.onnx.data", f"{STEM}.fp16.onnx", f"{STEM}.fp16.onnx.data", f"{STEM}.fp16.engine",
           f"{STEM}.fp16.engine.json", f"{STEM}.report.json"]
LATER = [f"{STEM}.onnx", f"{STEM}.report.json"]
USERS = [f"{STEM}.int8.onnx.data", f"{STEM}.qdq.engine", "notes.md"]  # named like an export's files, or not: not ours


def commit_export(out: Path, names: list[str]) -> None:
    """What the pipeline's commit does with the files it staged (their content does not matter here)."""
    from export.transaction import Transaction

    with Transaction(out, STEM) as transaction:
        for name in names:
            content = {"files": {n: {} for n in names if n != name}} if name.endswith(".report.json") else name
            (transaction.staging / name).write_text(json.dumps(content))
        transaction.commit(names)


@pytest.mark.parametrize("listed_by", ["manifest", "report"])
def test_the_next_export_removes_every_old_file_it_wrote_and_nothing_else(listed_by, tmp_path):
    """An earlier export's `.onnx.data`, engine and sidecar go when the new export lacks them (by its kept manifest,
    or for a folder written before there were manifests, its report), and the files it did not write stay."""
    from export.transaction import kept_manifest

    commit_export(tmp_path, EARLIER)
    if listed_by == "report":
        (tmp_path / kept_manifest(STEM)).unlink()
    for name in USERS:
        (tmp_path / name).write_text("the user's")
    commit_export(tmp_path, LATER)
    assert visible(tmp_path) == sorted(LATER + USERS)
    assert all((tmp_path / name).read_text() == "the user's" for name in USERS)
