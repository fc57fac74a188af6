"""An export as one transaction: the output folder holds the old complete set of files or the new one.

    with Transaction(out_dir, "hiera_base_classify") as t:
        ... write every file into t.staging ...
        t.commit(["hiera_base_classify.onnx", ..., "hiera_base_classify.report.json"])

- Everything is built in a private staging folder inside the output folder (so that moving it into
  place is a rename on one filesystem), held under a lock for as long as the run lives.
- `commit` writes a manifest into the staging folder (from then on the new set is complete and will
  win), moves each file into place, removes the files of the same family that the new set does not
  contain (so the report lists exactly the files beside it), and deletes the staging folder.
- The output folder's own lock is taken only to commit and to clean up, so exports of other models
  into one folder run side by side and two exports of one name end with one complete set, the later.
- A run killed while building leaves a staging folder that nothing holds: the next run in the folder
  removes it. A run killed while moving files leaves a complete manifest: the next run finishes the
  move (roll forward). A failed run removes its staging folder, and the output folder if it made it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from runtime import files
from runtime.errors import HieraRuntimeError

from .artifact import in_family
from .errors import ExportError

STAGING_PREFIX = ".hiera-staging-"
MANIFEST = ".complete.json"  # written last into a staging folder: its files are a complete set


class Transaction:
    def __init__(self, out_dir: Path, stem: str):
        self.out_dir, self.stem = Path(out_dir), stem
        self.staging: Path | None = None
        self._created: list[Path] = []  # the folders this run made, removed again if it fails
        self._staging_fd: int | None = None
        self.committed = False

    def __enter__(self) -> Transaction:
        self._make_out_dir()
        try:
            with self._folder_lock():
                recover(self.out_dir)
                self.staging = self.out_dir / f"{STAGING_PREFIX}{self.stem}-{os.getpid()}"
                self.staging.mkdir()
                self._staging_fd = os.open(self.staging, os.O_RDONLY)
                fcntl.flock(self._staging_fd, fcntl.LOCK_EX)  # held until the run ends, or dies
        except OSError as error:
            self.__exit__(None, None, None)
            raise ExportError(f"{self.out_dir}: cannot write here ({error.strerror or error})", "out_dir") from None
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def commit(self, names: list[str], owned=None) -> None:
        """Make the staged files (paths relative to the staging folder) the export's files, whole. `owned`:
        a test of other relative paths this kind of export writes (the Hub layout's), which the commit removes
        when the new set does not contain them, as it does the family's files."""
        missing = [name for name in names if not (self.staging / name).is_file()]
        if missing:
            raise ExportError(f"{self.staging}: {', '.join(missing)} was not written; nothing was committed")
        with self._folder_lock():
            owned_now = sorted(p for p in _relative_files(self.out_dir) if owned and owned(p) and p not in names)
            files.write_json(self.staging / MANIFEST, {"stem": self.stem, "files": names, "remove": owned_now})
            _fsync_dir(self.staging)
            _move_into_place(self.staging, self.out_dir)
        self.committed = True

    def __exit__(self, kind, error, traceback) -> None:
        if self._staging_fd is not None:
            os.close(self._staging_fd)  # releases the staging lock
            self._staging_fd = None
        if self.staging is not None and not self.committed:
            shutil.rmtree(self.staging, ignore_errors=True)
        if not self.committed:
            for folder in reversed(self._created):  # innermost first; only if still empty
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def _make_out_dir(self) -> None:
        missing = []
        folder = self.out_dir.absolute()
        while not folder.exists() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            except OSError as error:
                self.__exit__(None, None, None)
                raise ExportError(f"{self.out_dir}: cannot create the output folder ({error.strerror or error})",
                                  "out_dir") from None
            self._created.append(folder)
        if not self.out_dir.is_dir():
            raise ExportError(f"{self.out_dir}: not a directory", "out_dir")

    @contextlib.contextmanager
    def _folder_lock(self):
        fd = os.open(self.out_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # short: held to clean up, and to commit
            yield
        finally:
            os.close(fd)


def recover(out_dir: Path) -> list[str]:
    """Clean up after killed runs in `out_dir` (call with the folder locked): finish the move of a staging
    folder whose manifest is complete, remove one that is not; leave those a live run holds. Returns what
    was done, one line each."""
    done = []
    for staging in sorted(Path(out_dir).glob(STAGING_PREFIX + "*")):
        if not staging.is_dir() or staging.is_symlink():
            continue
        fd = os.open(staging, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live run's
            if _manifest(staging) is not None:
                _move_into_place(staging, Path(out_dir))
                done.append(f"completed the interrupted commit of {staging.name}")
            else:
                shutil.rmtree(staging, ignore_errors=True)
                done.append(f"removed {staging.name}, left by a run that did not finish")
        finally:
            os.close(fd)
    return done


def pending(out_dir: Path) -> list[Path]:
    """Staging folders in `out_dir` with a complete manifest that no run holds: commits a killed run left
    unfinished, which the next export into the folder completes."""
    found = []
    for staging in sorted(Path(out_dir).glob(STAGING_PREFIX + "*")):
        if _manifest(staging) is not None:
            found.append(staging)
    return found


def _manifest(staging: Path) -> tuple[str, list[str], list[str]] | None:
    """The stem, files and files to remove of a staging folder's manifest; None if it has none, or one we did
    not write."""
    try:
        manifest = files.read_json(staging / MANIFEST, 1 << 20)
        stem, names, remove = manifest["stem"], manifest["files"], manifest.get("remove", [])
    except (HieraRuntimeError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(stem, str) or not isinstance(names, list) or not isinstance(remove, list) or not all(
            isinstance(n, str) and n and not Path(n).is_absolute() and ".." not in Path(n).parts
            for n in names + remove):
        return None
    return stem, names, remove


def _relative_files(folder: Path) -> list[str]:
    """Every file below `folder` (not in hidden folders), as a path relative to it."""
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts[:-1])]


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Idempotent: a second call after an interrupted first one finishes the job."""
    stem, names, remove = _manifest(staging)
    for name in names:  # the report is last in the list: it appears once everything it describes is there
        source = staging / name
        if source.exists():
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, out_dir / name)
    keep = set(names)
    for old in out_dir.iterdir():
        if old.is_file() and in_family(old.name, stem) and old.name not in keep:
            old.unlink()
    for name in remove:
        (out_dir / name).unlink(missing_ok=True)
    _fsync_dir(out_dir)
    shutil.rmtree(staging, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
