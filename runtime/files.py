"""Reading and writing files safely: the one place every package goes through for a path it is given.

- A path that should be a file is opened only if it is a regular file: a FIFO, a device (`/dev/zero`)
  or a socket would hang a reader or feed it forever. The check is made on the opened descriptor
  (opened non-blocking, so that even a FIFO swapped in after a check cannot block), never by name alone.
- Reads are bounded by what the caller expects, not by what the file claims.
- Writes are atomic: a temporary file beside the target, flushed to disk, renamed over it. A failed
  write (disk full, read-only filesystem, `ulimit -f`) removes its temporary file and says why in one line.
  Whatever replaces several files, or a folder, goes through `runtime.commit`.
- `sha256` is the digest every provenance record and sidecar uses.

Errors are `FileError` (a `HieraRuntimeError`), one line naming the path; `hiera_model` and `export`
re-raise it as their own error type with the same message.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import tempfile
from pathlib import Path

from .errors import FileError

CHUNK = 1 << 20


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


def _require(path, kinds: dict, missing: str) -> Path:
    """`path` if it names one of `kinds` ({stat test: what it is called}) after following links; else
    `FileError` saying what it is instead."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileError(f"{path}: no such {missing}") from None
    except OSError as error:
        raise FileError(f"{path}: cannot read ({_reason(error)})") from None
    if not any(test(mode) for test in kinds):
        raise FileError(f"{path}: {_kind(mode)}, not {' or '.join(kinds.values())}")
    return path


def require_file(path) -> Path:
    return _require(path, {stat.S_ISREG: "a regular file"}, "file")


def require_directory(path) -> Path:
    return _require(path, {stat.S_ISDIR: "a directory"}, "directory")


def require_file_or_directory(path) -> Path:
    """For arguments that may be either (a checkpoint, an image or a folder of them)."""
    return _require(path, {stat.S_ISREG: "a regular file", stat.S_ISDIR: "a directory"}, "file or directory")


class _Reader(io.BufferedReader):
    """A file whose reads never allocate more than it holds. Python allocates the whole size a read asks for
    before reading, and readers ask for the lengths a file declares: a 1.5 KB PNG whose chunk claims 3.7 GB
    would take 3.7 GB (or fail with out of memory under a limit) to return its last bytes."""

    def read(self, size=-1):
        if size is not None and size > CHUNK:
            size = min(size, max(os.fstat(self.fileno()).st_size - self.tell(), 0))
        return super().read(size)


def open_file(path):
    """A binary file object for reading `path`, which must be a regular file. The descriptor is opened
    non-blocking and checked before anything is read, so a FIFO fails at once instead of hanging."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FileError(f"{path}: a directory, not a regular file") from None
    except OSError as error:
        raise FileError(f"{path}: cannot read ({_reason(error)})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FileError(f"{path}: {_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)
        raw = io.FileIO(fd, "rb")
        raw.name = os.fspath(path)  # readers (onnx, Pillow) take the name for the file's folder and format
        return _Reader(raw)
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path, limit: int) -> bytes:
    """The whole of a regular file of at most `limit` bytes."""
    with open_file(path) as file:
        size = os.fstat(file.fileno()).st_size
        if size > limit:
            raise FileError(f"{path}: {size:,} bytes, more than the {limit:,} such a file can need")
        try:
            data = file.read(size + 1)  # one byte more than it says: a file that grows is caught
        except OSError as error:
            raise FileError(f"{path}: cannot read ({_reason(error)})") from None
    if len(data) > limit or len(data) > size:  # grew while being read
        raise FileError(f"{path}: more than the {limit:,} bytes such a file can need")
    return data


def loads(text):
    """`json.loads` that refuses NaN and Infinity: they are not JSON, and no value we read may be non-finite.
    Raises ValueError (json.JSONDecodeError is one)."""
    return json.loads(text, parse_constant=_refuse_constant)


def _refuse_constant(constant):
    raise ValueError(f"{constant} is not a JSON number")


SAFETENSORS_HEADER_LIMIT = 100_000_000  # the largest header the safetensors library itself reads


def safetensors_header(file, path) -> tuple[dict, int]:
    """The JSON header of an open safetensors file and the offset its tensors' data starts at: the 8-byte length
    checked against the file's size and the format's limit before anything is allocated, the header strict JSON
    (see `loads`) and an object. The one reader of the format's header (checkpoints, embeddings)."""
    def invalid(reason):
        return FileError(f"{path}: not a valid safetensors file ({reason})")

    size = os.fstat(file.fileno()).st_size
    if size < 8:
        raise invalid(f"{size} bytes, shorter than the 8-byte header length")
    length = int.from_bytes(file.read(8), "little")
    if not 0 < length <= min(SAFETENSORS_HEADER_LIMIT, size - 8):
        raise invalid(f"its header declares {length:,} bytes; the file holds {size - 8:,} after the length")
    text = file.read(length)
    if len(text) != length:
        raise invalid("it ends early (truncated)")
    try:
        header = loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise invalid("its header is not JSON") from None
    if not isinstance(header, dict):
        raise invalid("its header is not a JSON object")
    return header, 8 + length


def read_json(path, limit: int = 64 << 20):
    """A JSON document (see `loads`) from a regular file of at most `limit` bytes."""
    data = read_bytes(path, limit)
    try:
        return loads(data)
    except (UnicodeDecodeError, RecursionError, ValueError) as error:  # too deep a nesting is no document of ours
        raise FileError(f"{path}: not valid JSON ({error})") from None


def sha256(path) -> str:
    """The hex sha256 of a regular file."""
    digest = hashlib.sha256()
    with open_file(path) as file:
        try:
            while block := file.read(CHUNK):
                digest.update(block)
        except OSError as error:
            raise FileError(f"{path}: cannot read ({_reason(error)})") from None
    return digest.hexdigest()


def sha256_folder(path) -> str:
    """The hex sha256 of a folder artifact (a Core ML `.mlpackage`): sha256 over its files in sorted order of their
    relative POSIX paths, one line each, `<relative path> <the file's sha256>`. An empty folder, a link or anything but
    folders and regular files inside is refused: an artifact holds none."""
    root = require_directory(path)
    lines = []
    for folder, folders, names in os.walk(root):
        for name in [*folders, *names]:
            entry = Path(folder) / name
            if entry.is_symlink() or not (entry.is_dir() or entry.is_file()):
                raise FileError(f"{entry}: a link or special file inside the folder artifact {root}")
        lines += [((Path(folder) / name).relative_to(root).as_posix(), sha256(Path(folder) / name)) for name in names]
    if not lines:
        raise FileError(f"{root}: an empty folder, not an artifact")
    return hashlib.sha256("".join(f"{name} {digest}\n" for name, digest in sorted(lines)).encode()).hexdigest()


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside `path` to write to; renamed over `path` when the block ends without error,
    removed when it fails. The file keeps the mode a new file would get (tempfile makes it 0600)."""
    path = Path(path)
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise FileError(f"{path}: cannot write ({_reason(error)})") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as file:  # to disk before the rename makes it visible
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as error:
        raise FileError(f"{path}: cannot write ({_reason(error)})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def json_text(data) -> str:
    """Indented JSON; a NaN or Inf anywhere is an error, never written (it is not JSON)."""
    return json.dumps(data, indent=2, allow_nan=False) + "\n"


def write_json(path, data) -> None:
    write_bytes(path, json_text(data).encode())
