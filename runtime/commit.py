"""Replacing what is on disk without losing anything: the one mechanism of every write that replaces
something (an export's files, a Hub folder, a Triton repository, an embedding and its index).

- **Locks** (`lock`): a lock file holding its owner's pid, locked with `flock`. The kernel drops the lock
  when its owner dies, so a lock file a killed run left blocks nothing; the next owner takes it, and every
  owner removes the file when it is done.
- **Staging and the decision.** New files are built in a staging folder beside their target (so that
  moving them is a rename on one filesystem). The commit writes a manifest into the staging folder last
  (`MANIFEST`): before it exists, the old state stands and an interruption or failure removes the staging
  folder; once it exists, the new state wins, and whatever stops the move (a signal, a kill, a full disk)
  is finished by the next run on that target (`recover_files`, `recover_folder`), roll forward.
- **Signals.** SIGTERM interrupts a commit as Ctrl-C does (`interruptible`); during the moves both are held
  back until the state is complete (`_held_signals`). `Interrupted`'s message says which state it is in.
- **Two kinds of commit.** `commit_files` moves files into a folder (an export's, an embedding's) and
  removes the files of the old set that the new one lacks. `replacing` swaps a whole folder (Hub,
  Triton): the old one is moved aside, the new one moved in, the old one removed.
- **Journals** (`Journal`): rows a long run appends to a hidden folder, each batch recorded with its rows'
  sha256 once they are on disk, so that a killed run continues from the rows that are intact.
- **Delete only what we wrote.** A folder swapped in whole keeps its manifest (`MANIFEST`, listing every
  file it was written with); a folder may be replaced only if every file in it is one that a manifest
  kept in it lists (`check_replaceable`). Anything else is refused, naming the file that would be lost.

`step_hook`, when set, is called with the name of each step of a commit: tests stop a commit there.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import signal
import threading
from pathlib import Path

from . import files
from .errors import FileError, HieraRuntimeError

try:
    import fcntl
except ImportError:  # not POSIX: no locks
    fcntl = None

MANIFEST = ".hiera-manifest.json"  # written last into a staging folder; kept in a folder swapped in whole
KEPT = ".hiera-manifest"  # every kept manifest's name starts so: MANIFEST, or an export's .hiera-manifest.<stem>.json
MANIFEST_LIMIT = 64 << 20
step_hook = None  # tests: called with each step's name


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a write that replaces something; the message says which state it left."""


class Busy(FileError):
    """Another live run holds the lock."""


def _step(name: str) -> None:
    if step_hook is not None:
        step_hook(name)


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


# ----------------------------------------------------------------------------------------------- locks

@contextlib.contextmanager
def lock(path, *, wait: bool = True, target=None):
    """Hold the lock file `path` for the block (created if need be, our pid written into it), then remove it.
    `wait=False`: when another live process holds it, FileError naming `target` (default `path`) and its pid."""
    path = Path(path)
    if fcntl is None:
        yield
        return
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as error:
            raise FileError(f"{path}: cannot write ({_reason(error)})") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise Busy(f"{target or path}: another run{_owner(fd)} is writing it now") from None
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its owner removed it while we waited: lock the one there now
    try:
        with contextlib.suppress(OSError):  # the pid only names the owner in messages
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            if _same_file(fd, path):
                path.unlink()
        os.close(fd)


def _owner(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f" (pid {int(os.pread(fd, 32, 0))})"
    return ""


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def holder_lock(folder: Path) -> Path:
    """The lock file inside a staging folder that its live run holds."""
    return Path(folder) / ".lock"


@contextlib.contextmanager
def claimed(folder: Path):
    """Hold the lock of the staging folder `folder` unless a live run does: yields whether we got it."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(lock(holder_lock(folder), wait=False))
        except FileError:  # a live run holds it, or it is being removed by the run that made it
            yield False
            return
        yield True


# --------------------------------------------------------------------------------------------- signals

@contextlib.contextmanager
def interruptible():
    """SIGTERM raises KeyboardInterrupt in the block, as Ctrl-C does, so that a stopped run cleans up the same
    way (where nobody else handles SIGTERM, and only in the main thread, where Python runs handlers)."""
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _held_signals:
    """Hold SIGINT and SIGTERM back while a decided commit moves files; `caught` says whether one came."""

    def __enter__(self):
        self.caught, self._previous = [], {}
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, lambda number, frame: self.caught.append(number))
        return self

    def __exit__(self, *exception):
        for number, handler in self._previous.items():
            signal.signal(number, handler)


# ------------------------------------------------------------------------------------ the manifest

def _write_manifest(folder: Path, data: dict) -> None:
    """The decision: from here on the staging folder's set wins."""
    files.write_json(folder / MANIFEST, data)
    _fsync(folder)


def decided(folder: Path) -> dict | None:
    """A staging folder's manifest if it has a complete one of ours, else None."""
    try:
        manifest = files.read_json(Path(folder) / MANIFEST, MANIFEST_LIMIT)
        names, remove = manifest["files"], manifest.get("remove", [])
    except (HieraRuntimeError, KeyError, TypeError):
        return None
    if not isinstance(names, list) or not isinstance(remove, list) or not all(map(is_relative_name, names + remove)):
        return None
    return manifest


def is_relative_name(name) -> bool:
    """A name a manifest may hold: a path inside its folder."""
    return isinstance(name, str) and bool(name) and not Path(name).is_absolute() and ".." not in Path(name).parts


def kept_files(folder: Path) -> set[str] | None:
    """Every file that a manifest kept at the top of `folder` lists (relative paths), the manifests too; None
    when it keeps none."""
    found = None
    for manifest in sorted(Path(folder).glob(glob.escape(KEPT) + "*.json")):
        listed = read_kept(manifest)
        if listed is not None:
            found = (found or set()) | listed | {manifest.name}
    return found


def read_kept(path: Path) -> set[str] | None:
    """The files a kept manifest lists; None if there is none at `path`, or one we did not write."""
    try:
        manifest = files.read_json(path, MANIFEST_LIMIT)
    except HieraRuntimeError:
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list) \
            or not all(map(is_relative_name, manifest["files"])):
        return None
    return set(manifest["files"])


def _kept_writers(folder: Path) -> list[str]:
    """The `written_by` of each kept manifest at the top of `folder` ("(unknown)" where it names none)."""
    writers = []
    for manifest in sorted(Path(folder).glob(glob.escape(KEPT) + "*.json")):
        with contextlib.suppress(HieraRuntimeError):
            kept = files.read_json(manifest, MANIFEST_LIMIT)
            writer = kept.get("written_by") if isinstance(kept, dict) else None
            writers.append(writer if isinstance(writer, str) else "(unknown)")
    return writers


def write_kept(path: Path, names: list[str], written_by: str) -> None:
    """A manifest to keep beside files we commit (an export's `.hiera-manifest.<stem>.json`)."""
    files.write_json(path, {"written_by": written_by, "files": names})


def check_replaceable(out: Path, written_by: str) -> bool:
    """Whether `out` exists and holds something (True: it is to be replaced). FileError unless it is a folder
    in which every file is one a kept manifest lists: it names the first file that would be lost."""
    out = Path(out)
    if not os.path.lexists(out):
        return False
    if out.is_symlink() or not out.is_dir():
        raise FileError(f"{out}: exists and is not a folder")
    try:
        entries = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    except OSError as error:
        raise FileError(f"{out}: cannot read ({_reason(error)})") from None
    if not entries:
        return False
    listed = kept_files(out)
    if listed is None:
        raise FileError(f"{out}: exists and is not a folder that {written_by} wrote (it has no {MANIFEST}); choose "
                        "another folder, or empty this one")
    other = next((writer for writer in _kept_writers(out) if writer != written_by), None)
    if other is not None:  # another command's output (an export folder given as segment's --out): never ours to lose
        raise FileError(f"{out}: written by {other}, not by {written_by}; replacing it would lose that command's "
                        "files: choose another folder")
    allowed = listed | {parent.as_posix() for name in listed for parent in Path(name).parents}
    for entry in entries:
        if entry not in allowed or (out / entry).is_symlink():
            raise FileError(f"{out / entry}: not written by {written_by}; replacing {out} would lose it: move it "
                            "away, or choose another folder")
    return True


# ------------------------------------------------------------------------------- files into a folder

def commit_files(staging: Path, target: Path, names: list[str], remove=()) -> None:
    """Move the staged files `names` (relative to `staging`, in this order) into `target`, then remove the files
    `remove` (relative to `target`) and the staging folder. Before the manifest is written a failure leaves
    `target` as it was (the caller removes `staging`); after it, the new set is finished here, or by the next
    `recover_files` if a full disk or a kill stops it."""
    staging, target = Path(staging), Path(target)
    missing = [name for name in names if not ((staging / name).is_file() or (staging / name).is_dir())]
    if missing:
        raise FileError(f"{staging}: {', '.join(missing)} was not written; nothing was committed")
    try:
        _step("staged")
        with _held_signals() as held:
            _write_manifest(staging, {"files": list(names), "remove": list(remove)})
            _finish(lambda: _move_files(staging, target), target, "the new files")
    except OSError as error:  # before the decision (after it, `_finish` says what is left)
        raise FileError(f"{target}: cannot write ({_reason(error)}); it is as it was") from None
    if held.caught:
        raise Interrupted(f"{target} holds the new files: the commit was finished first")


def _finish(move, target: Path, new: str) -> None:
    """Run the moves of a decided commit; interrupted anyhow, finish them; failing, say the next run will."""
    try:
        _step("decided")
        move()
    except KeyboardInterrupt:
        move()
        raise Interrupted(f"{target} holds {new}: the commit was finished first") from None
    except OSError as error:
        raise FileError(f"{target}: the commit of {new} is decided but unfinished ({_reason(error)}); the next "
                        "run on it finishes it") from None


def _move_files(staging: Path, target: Path) -> None:
    """Idempotent: a second call after an interrupted first one finishes the job."""
    manifest = decided(staging)
    for name in manifest["files"]:  # in order: a report listed last appears once what it describes is there
        if (staging / name).exists():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            if (staging / name).is_dir() and (target / name).is_dir():  # a folder artifact (.mlpackage) replaced
                shutil.rmtree(target / name)  # whole: a rename cannot replace a folder that holds files
            os.replace(staging / name, target / name)
            _step(f"moved {name}")
    for name in manifest["remove"]:
        if (target / name).is_dir() and not (target / name).is_symlink():
            shutil.rmtree(target / name)
        (target / name).unlink(missing_ok=True)
        for folder in Path(name).parents[:-1]:  # the folders it leaves empty (the Hub layout's onnx/)
            with contextlib.suppress(OSError):
                (target / folder).rmdir()
        _step(f"removed {name}")
    _fsync(target)
    shutil.rmtree(staging)
    _step("cleaned up")


def recover_files(staging: Path, target: Path) -> str:
    """What a killed run left in `staging` (a folder nobody holds): its decided commit finished, or the folder
    removed. Returns what was done, in a line."""
    if decided(staging) is not None:
        _move_files(staging, target)
        return f"finished the interrupted commit of {staging.name}"
    shutil.rmtree(staging, ignore_errors=True)
    return f"removed {staging.name}, left by a run that did not finish"


# ------------------------------------------------------------------------------------- whole folders

class Replacement:
    """A folder being built to replace `out` whole: write into `staging`; `replaced`: whether `out` held
    something before."""

    def __init__(self, out: Path, staging: Path, replaced: bool):
        self.out, self.staging, self.replaced = out, staging, replaced


@contextlib.contextmanager
def replacing(out, written_by: str):
    """Build a folder in `Replacement.staging` beside `out`; when the block ends without error it replaces `out`
    whole, so that `out` is always the old complete folder or the new one. `out` must be absent, empty or
    replaceable (`check_replaceable`). One run at a time per `out` (a lock file beside it); what killed runs
    left beside it is recovered first."""
    out = Path(os.path.abspath(out))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        blocking = next((p for p in reversed(out.parents) if os.path.lexists(p) and not p.is_dir()), None)
        reason = f"{blocking} is not a folder" if blocking else _reason(error)  # "File exists" would name nothing
        raise FileError(f"{out}: cannot write ({reason})") from None
    with lock(out.parent / f".{out.name}.lock", wait=False, target=out), interruptible():
        recover_folder(out, written_by)
        replaced = check_replaceable(out, written_by)
        staging = out.parent / f".{out.name}.{os.getpid()}.staging"
        try:
            staging.mkdir()
        except OSError as error:
            raise FileError(f"{out}: cannot write ({_reason(error)})") from None
        try:
            yield Replacement(out, staging, replaced)
            names = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*")  # files, and empty folders
                           if not p.is_dir() or not any(p.iterdir()))
            _step("staged")
            with _held_signals() as held:
                _write_manifest(staging, {"written_by": written_by, "files": names})
                _finish(lambda: _swap(staging, out), out, "the new folder")
        except Interrupted:
            raise
        except KeyboardInterrupt:
            if decided(staging) is not None:
                raise
            shutil.rmtree(staging, ignore_errors=True)
            raise Interrupted(f"{out} is as it was: nothing was replaced") from None
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise FileError(f"{out}: cannot write ({_reason(error)}); it is as it was") from None
        except BaseException:
            if decided(staging) is None:
                shutil.rmtree(staging, ignore_errors=True)
            raise
    if held.caught:
        raise Interrupted(f"{out} holds the new folder: the commit was finished first")


def _swap(staging: Path, out: Path) -> None:
    """Idempotent: the old folder aside, the new one in, the old one removed."""
    if staging.exists():
        if os.path.lexists(out):
            os.rename(out, out.parent / f".{out.name}.{os.getpid()}.old")
            _step("moved the old folder aside")
        os.rename(staging, out)
        _step("moved the new folder in")
    _fsync(out.parent)
    for old in _beside(out, "old"):
        shutil.rmtree(old)
        _step("removed the old folder")


def _beside(out: Path, kind: str) -> list[Path]:
    """The hidden folders a run makes beside `out`: `.<name>.<pid>.staging` and `.<name>.<pid>.old`, oldest first."""
    found = [Path(p) for p in glob.glob(glob.escape(str(out.parent / f".{out.name}.")) + f"*.{kind}")]
    return sorted((p for p in found if p.is_dir() and not p.is_symlink()), key=lambda p: p.stat().st_mtime_ns)


def recover_folder(out: Path, written_by: str) -> list[str]:
    """Finish or undo what killed runs left beside `out` (call it holding `out`'s lock): a decided staging folder
    is swapped in, one that is not is removed; an old folder is removed once `out` exists, or else moved back.
    Returns what was done, a line each."""
    out, done = Path(out), []
    for staging in _beside(out, "staging"):
        manifest = decided(staging)
        if manifest is None:
            shutil.rmtree(staging)
            done.append(f"removed {staging.name}, left by a run that did not finish")
            continue
        if not _beside(out, "old"):  # the old folder, unless someone put a file of theirs into it since; the
            # swap is the deciding run's, so the folder is checked as that run checked it (whoever runs now)
            check_replaceable(out, manifest.get("written_by", written_by))
        _swap(staging, out)
        done.append(f"finished the interrupted replacement of {out.name}")
    olds = _beside(out, "old")
    if olds and not os.path.lexists(out):  # left by an older version of this module, moved aside then killed
        os.rename(olds.pop(), out)
        done.append(f"moved {out.name} back, as it was")
    for old in olds:
        shutil.rmtree(old)
        done.append(f"removed {old.name}, the folder a finished replacement left")
    return done


# ------------------------------------------------------------------------------------------------ journals

class Journal:
    """Rows of `row_bytes` each, appended in `folder` so that a killed run can continue: `rows` (appended) and
    `journal` (a JSON line per batch naming its rows and each row's sha256, written once the rows are on disk).
    Rows past the last complete line (a batch cut off by a kill) are dropped, and a row whose bytes are not
    the ones its line recorded does not count. `start_over` (what to remove to start over) ends the messages
    about a journal that cannot be continued."""

    def __init__(self, folder: Path, row_bytes: int, start_over: str):
        self.folder, self.row_bytes, self.start_over = Path(folder), row_bytes, start_over
        self.rows_file, self.journal_file = self.folder / "rows", self.folder / "journal"
        self.count = 0  # rows in the file, those that count or not
        self._rows = self._journal = None

    def start(self) -> None:
        """An empty journal."""
        for path in (self.rows_file, self.journal_file):
            path.unlink(missing_ok=True)
        self._open()

    def resume(self) -> dict[str, int]:
        """The rows an earlier run journalled that are intact: their positions by name. What a kill cut off is
        truncated away."""
        with files.open_file(self.journal_file) as file:
            lines = file.read().split(b"\n")
        listed, kept = [], 0
        for number, line in enumerate(lines):
            try:
                entry = files.loads(line)
                names, digests = entry["images"], entry.get("sha256")
                if not all(isinstance(name, str) for name in names):
                    raise TypeError("names that are not strings")
            except (ValueError, TypeError, KeyError, AttributeError) as error:
                if number == len(lines) - 1:  # the last line, cut short by a kill: its rows are dropped too
                    break
                raise HieraRuntimeError(f"{self.journal_file}: damaged line {number + 1} ({error}); "
                                        f"{self.start_over}") from None
            if not isinstance(digests, list) or len(digests) != len(names):
                digests = [None] * len(names)  # rows no digest vouches for: done again
            listed += zip(names, digests)
            kept += len(line) + 1
        self.count = len(listed)
        size = files.require_file(self.rows_file).stat().st_size
        if size < self.count * self.row_bytes:
            raise HieraRuntimeError(f"{self.rows_file}: {size:,} bytes, fewer than the {self.count:,} rows its "
                                    f"journal lists; {self.start_over}")
        try:
            os.truncate(self.rows_file, self.count * self.row_bytes)
            os.truncate(self.journal_file, kept)
        except OSError as error:
            raise HieraRuntimeError(f"{self.folder}: cannot write ({_reason(error)})") from None
        intact = {}
        with files.open_file(self.rows_file) as rows:
            for position, (name, digest) in enumerate(listed):
                if hashlib.sha256(rows.read(self.row_bytes)).hexdigest() == digest:
                    intact[name] = position
        self._open()
        return intact

    def append(self, names: list[str], rows: bytes) -> dict[str, int]:
        """Rows on disk first, then the line naming them with their digests: a kill between leaves rows the
        journal does not list, dropped when the run continues. Returns their positions by name."""
        digests = [hashlib.sha256(rows[start:start + self.row_bytes]).hexdigest()
                   for start in range(0, len(names) * self.row_bytes, self.row_bytes)]
        try:
            for file, data in ((self._rows, rows), (self._journal, json.dumps({"images": names, "sha256": digests})
                                                                   .encode() + b"\n")):
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        except OSError as error:
            raise HieraRuntimeError(f"{self.folder}: cannot write ({_reason(error)}); the rows written so far stay "
                                    "there, and the next run continues from them") from None
        first, self.count = self.count, self.count + len(names)
        return {name: row for row, name in enumerate(names, first)}

    def _open(self) -> None:
        try:
            self._rows = open(self.rows_file, "ab")  # noqa: SIM115 (closed by close)
            self._journal = open(self.journal_file, "ab")  # noqa: SIM115
        except OSError as error:
            raise HieraRuntimeError(f"{self.folder}: cannot write ({_reason(error)})") from None

    def close(self) -> None:
        for file in (self._rows, self._journal):
            if file is not None and not file.closed:
                with contextlib.suppress(OSError):  # its buffer could not be flushed (a full disk): rows that
                    file.close()                    # no journal line names, dropped when the run continues


def _fsync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
