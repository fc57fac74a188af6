"""What the runtime writes, on a read-only filesystem and on a full disk: one line, the exit code, no
temporary file or half-written output left behind.

The filesystems are real: a tmpfs mounted read-only, or of one page, in a private mount namespace
(`unshare -m`) so that nothing outside the test sees it. Where the machine does not allow mounting, the
full disk is the kernel's file size limit (RLIMIT_FSIZE, EFBIG) and the read-only filesystem a writer
that fails as one does (EROFS)."""

import errno
import resource
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image

from runtime.cli import main

from ..conftest import ROOT
from ..runtime.conftest import exported  # noqa: F401 (a fixture)

# Mount a tmpfs ($1: its options) on $2, run the rest of the arguments, then list what is left in $2.
IN_TMPFS = ('mount -t tmpfs -o "$1" hiera-test "$2" || exit 99; dir="$2"; shift 2; "$@"; code=$?; '
            'echo "left: $(ls -A "$dir" | tr "\\n" " ")"; exit $code')
NOT_MOUNTED = 99


def in_tmpfs(options: str, mountpoint, *command) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "-m", "sh", "-c", IN_TMPFS, "sh", options, str(mountpoint), *map(str, command)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def can_mount(tmp_path) -> bool:
    try:
        return in_tmpfs("size=4k", tmp_path, "true").returncode != NOT_MOUNTED
    except (OSError, subprocess.SubprocessError):  # no unshare
        return False


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(path)
    return path


def test_reconstruct_on_a_read_only_filesystem(mae_artifact, photo, tmp_path, monkeypatch, capsys):
    target = tmp_path / "readonly"
    target.mkdir()
    out = target / "out.png"
    if can_mount(target):
        done = in_tmpfs("ro,size=1m", target, sys.executable, "-m", "runtime", "reconstruct", photo, "--model",
                        mae_artifact, "--out", out)
        code, stdout, err = done.returncode, done.stdout, done.stderr
        assert stdout == "left: \n"  # nothing written, nothing else printed
    else:  # a writer that fails as a read-only filesystem does
        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
        code = main(["reconstruct", str(photo), "--model", str(mae_artifact), "--out", str(out)])
        stdout, err = capsys.readouterr()
        assert stdout == "" and list(target.iterdir()) == []
    assert code == 2
    assert err == f"error: {out}: cannot write (Read-only file system)\n"


def test_reconstruct_on_a_full_disk(mae_artifact, photo, tmp_path):
    target = tmp_path / "full"
    target.mkdir()
    out = target / "out.png"
    command = [sys.executable, "-m", "runtime", "reconstruct", photo, "--model", mae_artifact, "--out", out]
    if can_mount(target):
        done = in_tmpfs("size=4k", target, *command)  # one page: the PNG does not fit
        reason = "No space left on device"
        assert done.stdout == "left: \n"
    else:  # the kernel's file size limit: EFBIG on the first write past 4 kB
        def limit():
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

        done = subprocess.run(list(map(str, command)), capture_output=True, text=True, cwd=ROOT, preexec_fn=limit)
        reason = "File too large"
        assert done.stdout == "" and list(target.iterdir()) == []
    assert done.returncode == 2
    assert done.stderr == f"error: {out}: cannot write ({reason})\n"


def test_embed_on_a_full_disk_keeps_its_rows_to_continue_and_no_output(exported, photo, tmp_path):  # noqa: F811
    features, _, _ = exported("small_q_pool", task="features", batch=None)
    target = tmp_path / "full"
    target.mkdir()
    if not can_mount(target):
        pytest.skip("this machine does not allow mounting a tmpfs (unshare -m)")
    out = target / "features.npy"
    # two pages: the lock file (its owner's pid) and the run's about.json fit, its rows do not
    done = in_tmpfs("size=8k", target, sys.executable, "-m", "runtime", "embed", photo, "--model", features,
                    "--out", out)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: {target}/.features.npy.partial")
    assert "No space left on device" in done.stderr
    assert done.stdout == "left: .features.npy.partial \n"  # the run's state, hidden; no output file
