"""Features at dataset scale: `python -m runtime embed`, and `embed()` for Python.

A features or backbone model's outputs for every image, streamed batch by batch, written to
- `.npy`: one output, [images, ...] float32, with its index beside it in `<out>.json`;
- `.safetensors`: each output chosen as a float32 tensor [images, ...], the index in the header's metadata
  (every value a string: `images` and `failed` are JSON lists).
The index holds the image paths in row order (`images`), the images that failed and why (`failed`), the
model file's name and sha256, and each output's shape per image. No torch and no `safetensors` package:
the file is written here (an 8-byte header length, a JSON header, the tensors' bytes), which also lets
it stream; `safetensors.numpy.load_file` reads it.

Resuming. While it runs, finished rows go to a hidden folder beside the output, `.<out name>.partial`:
`rows` (each image's outputs as float32, appended) and `journal` (a JSON line per batch naming its images
and each row's sha256, written once its rows are on disk). A run that finds the folder continues from it;
rows past the last journal line (a batch cut off by a kill) are dropped, and a row that is not finite or
not the one its journal line recorded is embedded again. A run that finds a finished output of the same
model and outputs reuses its finite rows for the images it holds. Either way the file written equals what
one uninterrupted run writes. Images that failed are tried again. A lock file beside the output,
`.<out name>.lock`, keeps two runs from writing one output at once.

Committing. The output (a `.npy` and its index, or the `.safetensors`) is written into the hidden folder,
then moved into place as one commit (`runtime.commit.commit_files`): killed or interrupted before the commit
is decided, the old output stays and the next run continues; after, the next run finishes the move. A
`.npy`'s index records the array file's sha256, and `read` refuses a pair that does not belong together.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import commit, files
from .errors import FileError, HieraRuntimeError
from .model import FeatureExtractor

FORMAT = "hiera-embed"
FORMAT_VERSION = 1
SUFFIXES = (".npy", ".safetensors")
INDEX_BYTES = 1 << 30  # an index of a few million paths
ROWS_PER_WRITE = 256  # rows gathered and written at a time when the output is assembled
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Embedding:
    """A finished embedding: its files, the images in row order, those that failed, and the arrays (memory
    mapped, by output name)."""

    out: Path
    index: Path | None  # the .npy's index file; None for .safetensors (the index is inside)
    images: list[str]
    failed: list[dict]  # {"image", "error"}
    model: str
    model_sha256: str
    arrays: dict[str, np.ndarray] = field(repr=False)
    reused: int = 0  # rows taken from an earlier run


def default_outputs(model: FeatureExtractor) -> list[str]:
    """`pooler_output` for a features model (one vector per image); the deepest stage map for a backbone."""
    names = model.session.output_names
    return ["pooler_output"] if "pooler_output" in names else [names[-1]]


def embed(model: FeatureExtractor, images, out, *, outputs: list[str] | None = None, batch_size: int | None = None,
          on_image: Callable[[str, str | None], None] | None = None) -> Embedding:
    """Write `outputs` (default: `default_outputs`) of every image in `images` (paths) to `out` (.npy or
    .safetensors), `batch_size` images per call, resuming from an earlier run of the same model (see the
    module's docstring). `on_image(path, error)` is called once for each image (each path once): at the
    start for those an earlier run did, then as each is embedded (error None) or fails."""
    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise HieraRuntimeError(f"{out}: write features to a .npy or .safetensors file")
    shapes = _shapes(model, list(outputs or default_outputs(model)), out)
    identity = {"model": model.session.path.name, "model_sha256": files.sha256(model.session.path),
                "outputs": {name: list(shape) for name, shape in shapes.items()}}
    images = [str(path) for path in images]
    if not images:
        raise HieraRuntimeError("no images given")

    partial = _Partial(out, identity)
    try:
        done = partial.open(images)
        reused = [path for path in dict.fromkeys(images) if path in done]
        for path in reused if on_image else ():
            on_image(path, None)
        failed = {}
        todo = list(dict.fromkeys(path for path in images if path not in done))
        for path in [path for path in todo if not _utf8(path)]:  # the index, JSON, cannot hold such a name
            failed[path] = f"{path}: its name is not valid UTF-8, which the index cannot record"
            if on_image:
                on_image(path, failed[path])
        todo = [path for path in todo if path not in failed]
        step, pending_paths, pending_rows = model.batch_size(batch_size), [], []
        for path, (result, error) in zip(todo, model.outcomes(todo, batch_size)):
            if error is None:
                pending_paths.append(path)
                pending_rows.append(np.concatenate([result[name].astype(np.float32).ravel() for name in shapes]))
            else:
                failed[path] = error
            if on_image:
                on_image(path, error)
            if len(pending_paths) >= step:
                done.update(partial.append(pending_paths, pending_rows))
                pending_paths, pending_rows = [], []
        if pending_paths:
            done.update(partial.append(pending_paths, pending_rows))
        rows = [done[path] for path in images if path in done]
        index = {"format": FORMAT, "format_version": FORMAT_VERSION, **identity,
                 "images": [path for path in images if path in done],
                 "failed": [{"image": path, "error": failed[path]} for path in dict.fromkeys(images) if path in failed]}
        written_index = _write(out, partial.folder, index, shapes, partial.rows(), rows)
    except KeyboardInterrupt as error:
        if isinstance(error, commit.Interrupted):
            raise
        raise commit.Interrupted(f"{out} is as it was; the rows done so far are kept in {partial.folder.name} to "
                                 "continue from") from None
    finally:
        partial.close()
    arrays = read(out).arrays
    return Embedding(out, written_index, index["images"], index["failed"], identity["model"], identity["model_sha256"],
                     arrays, len(reused))


def _shapes(model: FeatureExtractor, names: list[str], out: Path) -> dict[str, tuple[int, ...]]:
    """Each output's shape per image, for the outputs asked for."""
    if any(name not in model.session.output_names for name in names) or len(set(names)) != len(names):
        raise HieraRuntimeError(f"outputs {', '.join(names)}: choose each once from "
                                f"{', '.join(model.session.output_names)}")
    if out.suffix == ".npy" and len(names) != 1:
        raise HieraRuntimeError(f"{out}: a .npy file holds one array; choose one output, or write .safetensors")
    shapes = {}
    for name in names:
        shape = model.session.output_shapes[name][1:]
        if not all(isinstance(d, int) for d in shape):
            raise HieraRuntimeError(f"{model.session.path}: output {name} has no fixed shape per image ({shape})")
        shapes[name] = tuple(shape)
    return shapes


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a file name's undecodable bytes, kept by Python as lone surrogates
        return False
    return True


def index_path(out: Path) -> Path:
    """Where a .npy's index is: beside it, `<out>.json`."""
    return out.with_name(out.name + ".json")


def _write(out: Path, staging: Path, index: dict, shapes: dict[str, tuple], rows: np.ndarray,
           order: list[int]) -> Path | None:
    """The output file from the journalled `rows` picked in `order`, written in `staging` and committed with a
    .npy's index (which records the array's sha256); returns the index file of a .npy."""
    offsets, start = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        offsets[name], start = (start, start + size), start + size
    count = len(order)

    def stream(file, name):
        begin, end = offsets[name]
        for first in range(0, count, ROWS_PER_WRITE):
            picked = rows[order[first:first + ROWS_PER_WRITE], begin:end]
            file.write(np.ascontiguousarray(picked, dtype="<f4").tobytes())

    staged = staging / out.name
    if out.suffix == ".npy":
        (name, shape), = shapes.items()
        with _writing(out, staged) as file:
            np.lib.format.write_array_header_1_0(file, {"descr": "<f4", "fortran_order": False,
                                                        "shape": (count, *shape)})
            stream(file, name)
        files.write_json(staging / index_path(out).name, {**index, "array_sha256": files.sha256(staged)})
        commit.commit_files(staging, out.parent, [out.name, index_path(out).name])
        return index_path(out)
    header, position = {}, 0
    for name, shape in shapes.items():
        nbytes = count * int(np.prod(shape)) * 4
        header[name] = {"dtype": "F32", "shape": [count, *shape], "data_offsets": [position, position + nbytes]}
        position += nbytes
    header["__metadata__"] = {key: value if isinstance(value, str) else json.dumps(value, allow_nan=False)
                              for key, value in index.items()}
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    text += b" " * (-len(text) % 8)  # the tensors start 8-byte aligned
    if len(text) > files.SAFETENSORS_HEADER_LIMIT:
        raise HieraRuntimeError(f"{out}: {len(index['images']):,} image paths make a safetensors header of "
                                f"{len(text):,} bytes, above the {files.SAFETENSORS_HEADER_LIMIT:,} the format's "
                                "readers take; write .npy (its index is a separate file)")
    with _writing(out, staged) as file:
        file.write(struct.pack("<Q", len(text)) + text)
        for name in shapes:
            stream(file, name)
    commit.commit_files(staging, out.parent, [out.name])
    return None


@contextlib.contextmanager
def _writing(out: Path, staged: Path):
    """`staged` open for writing, flushed to disk at the end; a failed write is one line naming `out`."""
    try:
        with open(staged, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
    except OSError as error:
        raise FileError(f"{out}: cannot write ({error.strerror or error})") from None


def earlier_output(out: Path, identity: dict, instead: str) -> Embedding:
    """The finished output already at `out` (`runtime embed`'s file, or `--ray`'s folder), if it holds what a run
    of `identity` (model sha256, outputs and their shapes) writes; else one line ending in `instead`."""
    earlier = read(out)
    same = {"model_sha256": earlier.model_sha256,
            "outputs": {name: list(array.shape[1:]) for name, array in earlier.arrays.items()}}
    if same != {key: identity[key] for key in same}:
        raise HieraRuntimeError(f"{out}: holds other features (another model, or other outputs); {instead}")
    return earlier


def finite_rows(earlier: Embedding, images: list[str], names: list[str]):
    """The rows `earlier` holds for `images` (each once) whose values are all finite, `ROWS_PER_WRITE` at a time:
    (paths, rows [paths, floats of the outputs `names` in order]). The others are for a run to embed again."""
    position = {image: row for row, image in enumerate(earlier.images)}
    wanted = [image for image in dict.fromkeys(images) if image in position]
    for first in range(0, len(wanted), ROWS_PER_WRITE):
        chunk = wanted[first:first + ROWS_PER_WRITE]
        picked = [position[image] for image in chunk]
        rows = np.concatenate([np.asarray(earlier.arrays[name][picked]).reshape(len(chunk), -1) for name in names],
                              axis=1)
        finite = np.isfinite(rows).all(axis=1)
        yield [image for image, good in zip(chunk, finite) if good], rows[finite]


def journal_rows(journal: commit.Journal, row_floats: int) -> np.ndarray:
    """Every row a journal of `row_floats` float32 values per row holds, [rows, floats] (memory-mapped)."""
    if not journal.count:
        return np.zeros((0, row_floats), np.float32)
    return np.memmap(journal.rows_file, "<f4", "r", shape=(journal.count, row_floats))


def read(path) -> Embedding:
    """A finished embedding (from `embed` or `python -m runtime embed`), checked: arrays memory-mapped (a folder of
    Parquet files, from `embed --ray`: read into memory)."""
    path = Path(path)
    if not path.is_dir():  # a folder is the Parquet output of `embed --ray` (runtime/ray.py)
        files.require_file(path)
    try:
        if path.is_dir():
            from .ray import read_folder

            index, arrays = read_folder(path)
        elif path.suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            index = _read_json(index_path(path))
            if not isinstance(index, dict) or not isinstance(index.get("outputs"), dict) or len(index["outputs"]) != 1:
                raise ValueError(f"{index_path(path).name} is not the index of an embedding")
            if index.get("array_sha256") != files.sha256(path):  # a kill between two renames, or a copy
                raise ValueError(f"{index_path(path).name} is not its index: the sha256 it records is not the file's")
            arrays = {next(iter(index["outputs"])): array}
        elif path.suffix == ".safetensors":
            index, arrays = _read_safetensors(path)
        else:
            raise ValueError("not a .npy or .safetensors file")
        images, failed = index.get("images"), index.get("failed")
        digest = index.get("model_sha256")
        checks = {"format": index.get("format") == FORMAT,
                  "format_version": index.get("format_version") == FORMAT_VERSION,
                  "model_sha256": isinstance(digest, str) and SHA256.fullmatch(digest),
                  "images": isinstance(images, list) and all(isinstance(image, str) for image in images),
                  "failed": isinstance(failed, list) and all(isinstance(entry, dict) for entry in failed)}
        for key, good in checks.items():
            if not good:
                raise ValueError(f"its index has no valid {key}")
        for name, array in arrays.items():
            shape = index["outputs"].get(name)
            if array.dtype != np.float32 or list(array.shape) != [len(images), *(shape or [None])]:
                raise ValueError(f"{name} is {array.dtype} {list(array.shape)}, the index says float32 "
                                 f"[{len(images)}, {', '.join(map(str, shape or ['?']))}]")
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as error:
        raise HieraRuntimeError(f"{path}: not an embedding this runtime reads ({error})") from None
    index_file = path / "index.json" if path.is_dir() else index_path(path) if path.suffix == ".npy" else None
    return Embedding(path, index_file, images, failed,
                     str(index.get("model")), index["model_sha256"], arrays)


def _read_safetensors(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    with files.open_file(path) as file:
        size = os.fstat(file.fileno()).st_size
        header, data_start = files.safetensors_header(file, path)
        length = data_start - 8
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not all(isinstance(value, str) for value in metadata.values()):
        raise ValueError("no __metadata__ of strings")
    index = {key: files.loads(value) if key in ("format_version", "outputs", "images", "failed")
             else value for key, value in metadata.items()}
    arrays = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if entry["dtype"] != "F32" or not all(isinstance(d, int) and d >= 0 for d in shape) \
                or end - begin != 4 * int(np.prod(shape)) or not 0 <= begin <= end <= size - 8 - length:
            raise ValueError(f"tensor {name} is not float32 data within the file")
        arrays[name] = np.memmap(path, np.float32, "r", offset=8 + length + begin, shape=shape) if end > begin \
            else np.zeros(shape, np.float32)
    return index, arrays


def _read_json(path: Path):
    """A JSON file of ours, read up to its own size (files.read_json's buffer is the limit given)."""
    size = files.require_file(path).stat().st_size
    return files.read_json(path, min(size, INDEX_BYTES))


class _Partial:
    """The hidden folder in which a run keeps its finished rows (a `commit.Journal`), so that a killed run can
    continue; a lock file beside the output keeps two runs from writing it at once."""

    def __init__(self, out: Path, identity: dict):
        self.out, self.identity = out, identity
        self.folder = out.with_name(f".{out.name}.partial")
        self.row_floats = sum(int(np.prod(shape)) for shape in identity["outputs"].values())
        self.journal = commit.Journal(self.folder, self.row_floats * 4, f"remove {self.folder} to start {out.name} "
                                      "over")
        self._held = contextlib.ExitStack()  # the lock, and SIGTERM as an interruption

    def open(self, images: list[str]) -> dict[str, int]:
        """The rows already done, by image path: continued from this folder, or taken from a finished output
        of the same model. A refusal before the folder holds a run leaves no folder behind."""
        self._held.enter_context(commit.lock(self.out.with_name(f".{self.out.name}.lock"), wait=False,
                                             target=self.out))
        self._held.enter_context(commit.interruptible())
        if commit.decided(self.folder) is not None:  # a run stopped while moving its output into place
            commit.recover_files(self.folder, self.out.parent)
        created = not self.folder.exists()
        try:
            self.folder.mkdir(exist_ok=True)
        except OSError as error:
            raise HieraRuntimeError(f"{self.folder}: cannot write ({error.strerror or error})") from None
        for stale in glob.glob(glob.escape(str(self.out.parent / f".{self.out.name}.")) + "*.tmp"):
            Path(stale).unlink(missing_ok=True)  # a write a killed run left; ours now, under the lock
        about = self.folder / "about.json"
        if about.exists():
            if _read_json(about) != self.identity:
                raise HieraRuntimeError(f"{self.folder}: an unfinished run of another model or other outputs; "
                                        f"remove it to start {self.out.name} over")
            intact, rows = self.journal.resume(), self.rows()
            return {name: row for name, row in intact.items() if np.isfinite(rows[row]).all()}  # others run again
        try:
            earlier = self._earlier() if os.path.lexists(self.out) else None
            self.journal.start()
            files.write_json(about, self.identity)
        except BaseException:
            if created:
                self.remove()
            raise
        return self._reuse(earlier, images) if earlier else {}

    def _earlier(self) -> Embedding:
        """The finished output already at `out`, if it holds what this run writes."""
        return earlier_output(self.out, self.identity, "choose another output file, or remove it to write it anew")

    def _reuse(self, earlier: Embedding, images: list[str]) -> dict[str, int]:
        """The finite rows `earlier` holds for these images, copied in (the others are embedded again)."""
        reused = {}
        for paths, rows in finite_rows(earlier, images, list(self.identity["outputs"])):
            reused.update(self.append(paths, rows))
        return reused

    def append(self, paths: list[str], rows: list[np.ndarray]) -> dict[str, int]:
        return self.journal.append(paths, np.ascontiguousarray(rows, dtype="<f4").tobytes()) if paths else {}

    def rows(self) -> np.ndarray:
        """Every journalled row, [rows, floats] (memory-mapped)."""
        return journal_rows(self.journal, self.row_floats)

    def remove(self):
        self.journal.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def close(self):
        self.journal.close()
        self._held.close()
