"""Every swap survives every signal (`runtime.commit`). Each kind of write that replaces something (an export's
files, a Hub folder, a Triton repository, an embedding) is stopped at each step of its commit by each fault:
SIGINT and SIGTERM (sent to this process), a full disk (ENOSPC raised), and a kill (a forked child ending at
the step with os._exit). The target must then hold the old complete state or the new one, or a decided commit
that the next run finishes; the message must say which; and the next run must leave nothing behind. The
steps come from `runtime.commit.step_hook`, recorded on an uninterrupted run, so a new step is covered too.
Plus: only what the tool wrote is replaced, locks of dead runs block nothing, and one real process per
command and signal shows the command's own line and exit status."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from export import ExportError, Options, hub, run, verify
from export.transaction import STAGING_PREFIX, Transaction, kept_manifest
from runtime import FeatureExtractor, HieraRuntimeError, commit
from runtime.embed import embed, read
from runtime.triton.repository import Options as TritonOptions
from runtime.triton.repository import write_repository

from ..conftest import ROOT
from ..runtime.conftest import exported  # noqa: F401 (a fixture)

FAULTS = ("SIGINT", "SIGTERM", "ENOSPC", "SIGKILL")
KILLED = 137
DIGITS = ROOT / "models" / "digits"


@pytest.fixture(autouse=True)
def no_hook():
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "these tests send SIGTERM to themselves"
    yield
    commit.step_hook = None


def steps_of(write) -> list[str]:
    """The steps an uninterrupted `write()` goes through."""
    seen = []
    commit.step_hook = seen.append
    try:
        write()
    finally:
        commit.step_hook = None
    return seen


def stopped(write, step: str, fault: str) -> str | None:
    """Run `write()`, stopped at `step` by `fault`; the message it raised (None: it ended without one, or was
    killed)."""
    def hook(name):
        if name != step:
            return
        commit.step_hook = None  # once
        if fault == "ENOSPC":
            raise OSError(errno.ENOSPC, "No space left on device")
        if fault == "SIGKILL":
            os._exit(KILLED)
        os.kill(os.getpid(), getattr(signal, fault))

    commit.step_hook = hook
    try:
        if fault == "SIGKILL":
            child = os.fork()
            if child == 0:
                try:
                    write()
                finally:
                    os._exit(0)  # the step was never reached
            _, status = os.waitpid(child, 0)
            assert os.waitstatus_to_exitcode(status) == KILLED, f"{step} was not reached"
            return None
        try:
            write()
        except (KeyboardInterrupt, HieraRuntimeError, ExportError) as error:
            return str(error)
        return None
    finally:
        commit.step_hook = None


def check_outcome(fault: str, message: str | None, now, old, new, pending: bool) -> None:
    """The target is old or new and the message says which, or (a kill, a full disk after the decision) the
    commit is decided and the next run finishes it."""
    if fault in ("SIGINT", "SIGTERM"):
        assert now in (old, new) and not pending
        assert message and ("holds the new" if now == new else "as it was") in message, message
    elif fault == "ENOSPC":
        if pending or now == new:
            assert "the next run on it finishes it" in message, message
        else:
            assert now == old and "cannot write" in message, message
    else:
        assert pending or now in (old, new)


def tree(folder: Path, hidden: bool = False) -> dict[str, bytes]:
    """Every file below `folder` (relative path -> bytes); hidden ones only if asked."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and (hidden or not any(part.startswith(".") for part in p.relative_to(folder).parts))}


# ------------------------------------------------------------------------------------- an export's files

STEM = "hiera_x_classify"
OLD_EXPORT = {f"{STEM}.onnx": b"old fp32", f"{STEM}.fp16.onnx": b"old fp16", f"{STEM}.report.json": b"old report"}
NEW_EXPORT = {f"{STEM}.onnx": b"new fp32", f"{STEM}.report.json": b"new report"}  # the old fp16 goes
THEIRS = {"notes.txt": b"mine", f"{STEM}.int8.onnx": b"a name like ours, not ours"}


def export_files(out: Path, contents: dict) -> None:
    with Transaction(out, STEM) as transaction:
        for name, data in contents.items():
            (transaction.staging / name).parent.mkdir(parents=True, exist_ok=True)
            (transaction.staging / name).write_bytes(data)
        transaction.commit(list(contents))


def export_folder(tmp_path: Path) -> Path:
    out = tmp_path / "artifacts"
    export_files(out, OLD_EXPORT)
    for name, data in THEIRS.items():
        (out / name).write_bytes(data)
    return out


def test_export_steps_are_the_moves_in_order(tmp_path):
    out = export_folder(tmp_path)
    assert steps_of(lambda: export_files(out, NEW_EXPORT)) == [
        "staged", "decided", f"moved {STEM}.onnx", f"moved {STEM}.report.json", f"moved {kept_manifest(STEM)}",
        f"removed {STEM}.fp16.onnx", "cleaned up"]
    assert tree(out) == {**NEW_EXPORT, **THEIRS}  # only what the previous export listed was removed


@pytest.mark.parametrize("fault", FAULTS)
def test_an_export_commit_stopped_at_any_step(fault, tmp_path):
    first = export_folder(tmp_path / "steps")
    steps = steps_of(lambda: export_files(first, NEW_EXPORT))
    old, new = {**OLD_EXPORT, **THEIRS}, {**NEW_EXPORT, **THEIRS}
    for number, step in enumerate(steps):
        out = export_folder(tmp_path / str(number))
        message = stopped(lambda out=out: export_files(out, NEW_EXPORT), step, fault)
        pending = any(commit.decided(staging) for staging in out.glob(STAGING_PREFIX + "*"))
        check_outcome(fault, message, tree(out), old, new, pending)
        with Transaction(out, STEM):  # the next run into the folder
            pass
        assert tree(out) == (new if pending else tree(out)) and tree(out) in (old, new), step
        assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [kept_manifest(STEM)], step


def test_an_export_removes_the_files_of_the_previous_one_and_the_folders_it_empties(tmp_path):
    out = tmp_path / "artifacts"
    export_files(out, {**NEW_EXPORT, "onnx/model.onnx": b"the Hub layout's", "onnx/model.onnx_data": b"data"})
    export_files(out, NEW_EXPORT)
    assert sorted(os.listdir(out)) == sorted([*NEW_EXPORT, kept_manifest(STEM)])


def test_an_export_replaces_no_file_it_did_not_write(tmp_path):
    out = tmp_path / "artifacts"
    out.mkdir()
    (out / f"{STEM}.onnx").write_bytes(b"the user's own")
    with pytest.raises(ExportError, match=f"{STEM}.onnx: not written by an earlier export"):
        export_files(out, NEW_EXPORT)
    assert sorted(p.name for p in out.iterdir()) == [f"{STEM}.onnx"]


# --------------------------------------------------------------------------------- Hub folder, Triton

OLD_HUB = {"README.md": b"old card", "onnx/model.onnx": b"old", "onnx/model_fp16.onnx": b"old fp16"}
NEW_HUB = {"README.md": b"new card", "onnx/model.onnx": b"new", "config.json": b"{}"}


def swap_outcomes(tmp_path, make_old, write_new, fault):
    """Each step of a folder swap stopped by `fault`: (message, folder now, old, new, pending) for each, the
    folder recovered as the next run does, and nothing left beside it."""
    reference = make_old(tmp_path / "old")
    old = tree(reference)
    write_new(reference)
    new = tree(reference)
    first = make_old(tmp_path / "steps")
    for number, step in enumerate(steps_of(lambda: write_new(first))):
        target = make_old(tmp_path / str(number))
        message = stopped(lambda target=target: write_new(target), step, fault)
        pending = any(commit.decided(s) for s in target.parent.glob(f".{target.name}.*.staging"))
        now = tree(target) if target.exists() else None
        check_outcome(fault, message, now, old, new, pending)
        with commit.lock(target.parent / f".{target.name}.lock"):  # what the next run does first
            commit.recover_folder(target, "a test")
        assert tree(target) == (new if pending else now), step
        assert os.listdir(target.parent) == [target.name], step


def hub_folder(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return hub.publish(OLD_HUB, parent / "hub")


@pytest.mark.parametrize("fault", FAULTS)
def test_a_hub_folder_swap_stopped_at_any_step(fault, tmp_path):
    swap_outcomes(tmp_path, hub_folder, lambda out: hub.publish(NEW_HUB, out), fault)


def test_a_folder_with_files_it_did_not_write_is_refused_and_kept(tmp_path):
    clone = hub_folder(tmp_path)  # published, cloned with git, a note added
    (clone / ".git").mkdir()
    (clone / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (clone / "NOTES.md").write_text("mine")
    before = tree(clone, hidden=True)
    with pytest.raises(ExportError) as refused:
        hub.publish(NEW_HUB, clone)
    assert str(refused.value).startswith(f"{clone / '.git'}: not written by python -m export; replacing {clone} "
                                         "would lose it")
    shutil.rmtree(clone / ".git")
    with pytest.raises(ExportError, match=f"{clone / 'NOTES.md'}: not written by python -m export"):
        hub.publish(NEW_HUB, clone)
    (clone / "NOTES.md").unlink()
    hub.publish(NEW_HUB, clone)
    assert tree(clone) == NEW_HUB and before["NOTES.md"] == b"mine"


def test_what_an_older_version_left_is_recovered(tmp_path):
    out = hub_folder(tmp_path)
    os.rename(out, tmp_path / f".hub.{os.getpid() + 1}.old")  # killed between its two renames
    (tmp_path / ".hub.abc123.staging").mkdir()  # and its staging folder, undecided
    with commit.lock(tmp_path / ".hub.lock"):
        assert commit.recover_folder(out, "python -m export") == [
            "removed .hub.abc123.staging, left by a run that did not finish", "moved hub back, as it was"]
    assert tree(out) == OLD_HUB and os.listdir(tmp_path) == ["hub"]


def test_a_lock_file_of_a_dead_run_blocks_nothing(tmp_path):
    out = hub_folder(tmp_path)
    child = os.fork()
    if child == 0:  # takes the lock and dies holding it
        with commit.lock(tmp_path / ".hub.lock"):
            os._exit(KILLED)
    os.waitpid(child, 0)
    assert (tmp_path / ".hub.lock").read_text() == f"{child}\n"
    hub.publish(NEW_HUB, out)
    assert tree(out) == NEW_HUB and os.listdir(tmp_path) == ["hub"]


def test_a_live_lock_names_its_owner(tmp_path):
    out = hub_folder(tmp_path)
    with commit.lock(tmp_path / ".hub.lock"), pytest.raises(ExportError) as busy:
        hub.publish(NEW_HUB, out)
    assert str(busy.value) == f"{out}: another run (pid {os.getpid()}) is writing it now"
    assert tree(out) == OLD_HUB and sorted(os.listdir(tmp_path)) == ["hub"]


@pytest.fixture(scope="module")
def digits_fp32(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    report = run(Options(weights=str(DIGITS), out_dir=out, batch=None, precisions=("fp32",), validate=False))
    return out / report["artifacts"]["fp32"]["file"]


@pytest.mark.parametrize("fault", FAULTS)
def test_a_triton_repository_swap_stopped_at_any_step(fault, digits_fp32, tmp_path):
    def old_repository(parent: Path) -> Path:
        write_repository([digits_fp32], parent / "models", TritonOptions(instances=1))
        return parent / "models"

    swap_outcomes(tmp_path, old_repository, lambda repo: write_repository([digits_fp32], repo,
                                                                          TritonOptions(instances=2)), fault)


# --------------------------------------------------------------------------------------------- embed

@pytest.fixture(scope="module")
def extractor(exported):  # noqa: F811
    artifact, _, _ = exported("small_q_pool", task="features", batch=None)
    return FeatureExtractor.load(artifact, threads=1)  # one thread: a forked child may run it


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    for index in range(4):
        pixels = np.random.default_rng(index).integers(0, 256, (64, 96, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    return sorted(folder.iterdir())


def embedding(out: Path) -> tuple | None:
    """What `read` makes of `out`: (images, rows), or None where it refuses it."""
    try:
        done = read(out)
    except HieraRuntimeError:
        return None
    return done.images, np.asarray(done.arrays["pooler_output"]).tolist()


@pytest.mark.parametrize("fault", FAULTS)
def test_an_embedding_commit_stopped_at_any_step(fault, extractor, photos, tmp_path):
    reference = tmp_path / "reference" / "f.npy"
    reference.parent.mkdir()
    embed(extractor, photos[:2], reference)
    old = embedding(reference)
    new_steps = steps_of(lambda: embed(extractor, photos, reference))
    new = embedding(reference)
    assert new_steps[-4:] == ["decided", "moved f.npy", "moved f.npy.json", "cleaned up"]
    for number, step in enumerate(new_steps):
        out = tmp_path / str(number) / "f.npy"
        out.parent.mkdir()
        embed(extractor, photos[:2], out)
        message = stopped(lambda out=out: embed(extractor, photos, out), step, fault)
        pending = commit.decided(out.with_name(".f.npy.partial")) is not None
        now = embedding(out)
        assert now is not None or pending, step  # a mix is refused, never read as either
        check_outcome(fault, message, now, old, new, pending)
        if fault in ("SIGINT", "SIGTERM") and now == old:
            assert "the rows done so far are kept" in message or "as it was" in message
        embed(extractor, photos, out)  # the next run
        assert out.read_bytes() == reference.read_bytes(), step
        assert json.loads(out.with_name("f.npy.json").read_text()) == json.loads(
            reference.with_name("f.npy.json").read_text())
        assert sorted(os.listdir(out.parent)) == ["f.npy", "f.npy.json"], step


def test_read_refuses_a_pair_that_does_not_belong_together(extractor, photos, tmp_path):
    old, new = tmp_path / "old.npy", tmp_path / "new.npy"
    embed(extractor, photos[:2], old)
    embed(extractor, photos, new)
    shutil.copyfile(old.with_name("old.npy.json"), new.with_name("new.npy.json"))  # the index of other rows
    with pytest.raises(HieraRuntimeError, match="new.npy.json is not its index: the sha256 it records is not"):
        read(new)


def test_resumed_rows_are_checked_before_they_count(extractor, photos, tmp_path):
    whole = embed(extractor, photos, tmp_path / "whole.npy", batch_size=1)  # rows one at a time, as below
    out = tmp_path / "f.npy"
    assert stopped(lambda: embed(extractor, photos, out, batch_size=1), "staged", "SIGKILL") is None
    rows = out.with_name(".f.npy.partial") / "rows"
    stored = np.fromfile(rows, "<f4").reshape(len(photos), -1)
    stored[1, 0] = np.nan  # not finite
    stored[2, 3] += 1.0  # finite, but not the row its journal line recorded
    stored.tofile(rows)
    embedded = []
    resumed = embed(extractor, photos, out, batch_size=1, on_image=lambda path, error: embedded.append(path))
    assert resumed.reused == 2 and embedded[2:] == [str(photos[1]), str(photos[2])]  # those two run again
    assert out.read_bytes() == whole.out.read_bytes()


def test_reused_rows_that_are_not_finite_are_embedded_again(extractor, photos, tmp_path):
    whole = embed(extractor, photos, tmp_path / "whole.safetensors", batch_size=1)  # rows one at a time, as below
    out = tmp_path / "f.safetensors"
    embed(extractor, photos[:2], out, batch_size=1)
    data = bytearray(out.read_bytes())
    data[-4:] = np.array([np.nan], "<f4").tobytes()  # the last float of row 1
    out.write_bytes(bytes(data))
    grown = embed(extractor, photos, out, batch_size=1)
    assert grown.reused == 1 and out.read_bytes() == whole.out.read_bytes()


# ------------------------------------------------------------------------- one real process per command

STOP_AT = ("import os, signal, sys, runpy\n"
           "from runtime import commit\n"
           "step, number = sys.argv.pop(1), getattr(signal, sys.argv.pop(1))\n"
           "commit.step_hook = lambda name: name == step and os.kill(os.getpid(), number)\n"
           "sys.argv[0] = sys.argv[1]\n"
           "runpy.run_module(sys.argv.pop(1), run_name='__main__')\n")


def stop_command(step: str, number: str, module: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", STOP_AT, step, number, module, *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_export_interrupted_during_its_commit_finishes_it_and_says_so(digits_fp32, tmp_path):
    out = tmp_path / "artifacts"
    shutil.copytree(digits_fp32.parent, out)  # a dynamic-batch export; the new one has a static batch
    done = stop_command(f"moved {digits_fp32.name}", "SIGINT", "export", "--weights", DIGITS, "--out", out,
                        "--precision", "fp32", "--no-validate")
    assert done.returncode == 130, done.stderr
    assert done.stderr.splitlines()[-1] == f"interrupted: {out} holds the new files: the commit was finished first"
    report = out / digits_fp32.name.replace(".onnx", ".report.json")
    assert json.loads(report.read_text())["batch"] == 1  # the new export's report, with its files
    failed = [check for check in verify([report]).checks if not check.ok]
    assert [check.detail for check in failed] == ["the export's parity check did not pass (it was not run)"]


def test_export_hub_interrupted_at_its_swap_keeps_a_whole_folder(digits_fp32, tmp_path):
    out = hub_folder(tmp_path)
    done = stop_command("moved the old folder aside", "SIGINT", "export", "hub", digits_fp32, "--out", out,
                        "--checkpoint", DIGITS, "--bench-runs", "0")
    assert done.returncode == 130, done.stderr
    assert done.stderr == f"interrupted: {out} holds the new folder: the commit was finished first\n"
    assert (out / "model.onnx").exists() and os.listdir(tmp_path) == ["hub"]


def test_runtime_triton_terminated_before_its_swap_keeps_the_old_repository(digits_fp32, tmp_path):
    repo = tmp_path / "models"
    write_repository([digits_fp32], repo, TritonOptions(instances=1))
    before = tree(repo, hidden=True)
    done = stop_command("staged", "SIGTERM", "runtime", "triton", digits_fp32, "--repo", repo, "--instances", "2")
    assert done.returncode == 130, done.stderr
    assert done.stderr == f"interrupted: {repo} is as it was: nothing was replaced\n"
    assert tree(repo, hidden=True) == before and os.listdir(tmp_path) == ["models"]
