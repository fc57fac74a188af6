"""An export as one transaction: the output folder holds the old complete set of files or the new one.

    with Transaction(out_dir, "hiera_base_classify") as t:
        ... write every file into t.staging ...
        t.commit(["hiera_base_classify.onnx", ..., "hiera_base_classify.report.json"])

The mechanism is `runtime.commit`'s (staging, the manifest that decides, locks, signals); this module adds
what is the export's own:
- Everything is built in a private staging folder inside the output folder, held by its run (a lock in it)
  for as long as the run lives.
- `commit` moves the files into place with the report last, then removes the files of the previous export
  of the same name that the new set lacks: those its kept manifest (`.hiera-manifest.<stem>.json`, written
  with every commit) lists, or for a folder written before there were such manifests, its report. Nothing
  else is removed, and a file the new set would replace that neither lists is refused.
- The output folder's own lock (`.hiera.lock`) is taken only to commit and to clean up, so exports of other
  models into one folder run side by side and two exports of one name end with one complete set, the later.
- A run killed while building leaves a staging folder that nothing holds: the next run in the folder
  removes it. A run stopped while moving files (killed, or out of disk) leaves a decided manifest: the next
  run finishes the move (roll forward). A failed or interrupted run removes its staging folder, and the
  output folder if it made it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from runtime import commit, files
from runtime.errors import FileError, HieraRuntimeError

from .artifact import report_name
from .errors import ExportError

STAGING_PREFIX = ".hiera-staging-"
LOCK = ".hiera.lock"  # the output folder's lock: held to clean up and to commit
WRITTEN_BY = "python -m export"


def kept_manifest(stem: str) -> str:
    """The name of the manifest an export of `stem` keeps beside its files."""
    return f"{commit.KEPT}.{stem}.json"


class Transaction:
    def __init__(self, out_dir: Path, stem: str):
        self.out_dir, self.stem = Path(out_dir), stem
        self.staging: Path | None = None
        self._created: list[Path] = []  # the folders this run made, removed again if it fails
        self._held = contextlib.ExitStack()  # the staging folder's lock, and SIGTERM as an interruption
        self.committed = False

    def __enter__(self) -> Transaction:
        self._make_out_dir()
        try:
            self._held.enter_context(commit.interruptible())
            with self._folder_lock():
                recover(self.out_dir)
                staging = self.out_dir / f"{STAGING_PREFIX}{self.stem}-{os.getpid()}"
                staging.mkdir()
                self.staging = staging
                self._held.enter_context(commit.lock(commit.holder_lock(staging)))  # until the run ends, or dies
        except (OSError, FileError) as error:
            self.__exit__(None, None, None)
            reason = error.strerror or error if isinstance(error, OSError) else str(error)
            raise ExportError(f"{self.out_dir}: cannot write here ({reason})", "out_dir") from None
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def commit(self, names: list[str]) -> None:
        """Make the staged files (paths relative to the staging folder) the export's files, whole."""
        kept = kept_manifest(self.stem)
        with self._folder_lock():
            previous = previous_files(self.out_dir, self.stem)
            ours = previous | (commit.kept_files(self.out_dir) or set())
            for name in names:
                if (self.out_dir / name).exists() and name not in ours:
                    raise ExportError(f"{self.out_dir / name}: not written by an earlier export; this one would "
                                      "replace it: move it away, or choose another folder", "out_dir")
            try:
                commit.write_kept(self.staging / kept, names, WRITTEN_BY)
                commit.commit_files(self.staging, self.out_dir, [*names, kept], sorted(previous - {*names, kept}))
            except FileError as error:
                raise ExportError(str(error)) from None
        self.committed = True

    def __exit__(self, kind, error, traceback) -> None:
        undecided = self.staging is not None and commit.decided(self.staging) is None
        if undecided and not self.committed:
            shutil.rmtree(self.staging, ignore_errors=True)
        self._held.close()
        if not self.committed:
            for folder in reversed(self._created):  # innermost first; only if still empty
                with contextlib.suppress(OSError):
                    folder.rmdir()
        if kind is KeyboardInterrupt and undecided and not self.committed:
            raise commit.Interrupted(f"{self.out_dir} is as it was: nothing of {self.stem} was committed") from None

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

    def _folder_lock(self):
        return commit.lock(self.out_dir / LOCK)  # short: held to clean up, and to commit


def previous_files(out_dir: Path, stem: str) -> set[str]:
    """The files the export of `stem` now in `out_dir` wrote: those its kept manifest lists, else (a folder written
    before there were such manifests) its report's files and the report; none if neither can be read."""
    kept = commit.read_kept(Path(out_dir) / kept_manifest(stem))
    if kept is not None:
        return kept
    try:
        listed = [*files.read_json(Path(out_dir) / report_name(stem))["files"], report_name(stem)]
    except (HieraRuntimeError, KeyError, TypeError):
        return set()
    return {name for name in listed if commit.is_relative_name(name)}


def recover(out_dir: Path) -> list[str]:
    """Clean up after killed runs in `out_dir` (call with the folder locked): finish the move of a staging
    folder whose manifest decided it, remove one that is not; leave those a live run holds. Returns what
    was done, one line each."""
    done = []
    for staging in sorted(Path(out_dir).glob(STAGING_PREFIX + "*")):
        if not staging.is_dir() or staging.is_symlink():
            continue
        with commit.claimed(staging) as ours:
            if ours:
                done.append(commit.recover_files(staging, Path(out_dir)))
    return done


def pending(out_dir: Path) -> list[Path]:
    """Staging folders in `out_dir` with a decided manifest: commits a killed run left unfinished, which the
    next export into the folder completes."""
    return [staging for staging in sorted(Path(out_dir).glob(STAGING_PREFIX + "*")) if commit.decided(staging)]
