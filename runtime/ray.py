"""Features at cluster scale: `python -m runtime embed ... --ray [ADDRESS] --out DIR`, and the pieces a Ray Data
pipeline of one's own needs (`Embedder`, `plan`). Needs the `ray` extra (`pip install hiera-deploy[ray]`); `import
runtime` never imports Ray, and neither does this module until a function here runs.

- **`Embedder`**, a callable class for `Dataset.map_batches`: each actor loads the artifact once (any engine
  `runtime.load` runs; the file's sha256 checked against the driver's, since every node reads its own copy),
  and turns a batch of `path` (and, from `ray.data.read_binary_files(..., include_paths=True)`, `bytes`) into
  rows of `path`, each output as a float32 fixed-size list, and `error`. Images are decoded by the runtime's
  own code with the same megapixel guard (`runtime.preprocess`); an image that fails is a row with its error
  and null outputs, never a dropped row or a dead actor.
- **`plan`**: resources that cannot deadlock a small node. Ray Data's read tasks ask for one CPU each; actors
  that hold every CPU leave the read task waiting forever (2 actors on a 2-CPU node). So the actors share what
  is left after one read task's CPU (`READ_CPUS`), and each session runs as many threads as its share of the
  node's cores.
- **`embed`**, the command's work. The output is a folder: Parquet files (`part-NNNNN.parquet`: one row per
  image in the order given, failed images included with their error) and `index.json`, the index the
  `.npy`/`.safetensors` outputs have (model, its sha256, each output's shape, `images` in row order, `failed`,
  the counts) plus each Parquet file's sha256; `runtime.embed.read(DIR)` reads it.

Resuming, and why a half-written block never counts: Ray's workers write nothing. The driver takes each block
of rows as Ray hands it over and appends its rows to a `runtime.commit.Journal` in `.<DIR>.partial` beside the
output (rows on disk first, then the journal line with each row's sha256). A kill between the two leaves rows
no line names, dropped when the run continues; a block Ray had not handed over is simply not there. The
Parquet files and the index are written only at the end, from the journal, into a staging folder that replaces
DIR whole (`runtime.commit.replacing`: DIR must be absent, empty, or a folder this command wrote). A run killed
at any point and run again embeds only the images no intact journal row holds. A run that finds no journal but a
finished output of the same model and outputs at DIR takes its finite rows, as `runtime embed` does with its
file; with nothing left to embed it asks no cluster. The driver writing the files also means `--out` is a path on
the driver's machine, as for every other command, on a cluster of any size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import signal
import socket
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import commit, files
from .embed import (FORMAT, FORMAT_VERSION, ROWS_PER_WRITE, SUFFIXES, Embedding, _shapes, _utf8, default_outputs,
                    earlier_output, finite_rows, journal_rows, read)
from .errors import HieraRuntimeError
from .model import FeatureExtractor, load
from .preprocess import MAX_PIXELS, open_image, to_rgb

READ_CPUS = 1.0  # what one Ray Data read task asks for: kept free of actors so that reading never waits on them
ROWS_PER_FILE = 100_000  # rows per Parquet file of the output
BATCHES_PER_BLOCK = 4  # model batches per Ray block: what the driver journals at a time
ATTEMPTS = 3  # Ray jobs a run tries when Ray loses an actor or a node, each continuing from the rows journalled
INDEX = "index.json"
WRITTEN_BY = "python -m runtime embed --ray"
CONNECT_SECONDS = 5.0  # how long a cluster address may take to answer


@dataclass(frozen=True)
class Plan:
    """How a cluster's CPUs are shared: `actors` sessions, each asking Ray for `actor_cpus` CPUs (the
    `num_cpus` of `map_batches`) and running `threads` threads."""

    actors: int
    actor_cpus: float
    threads: int


def plan(cluster_cpus: float, node_cpus: float | None = None, actors: int | None = None) -> Plan:
    """The actors' share of `cluster_cpus` (all nodes') that leaves one read task its CPU (half the cluster on a
    1-CPU cluster), so that no number of actors can starve the reading, and no more than one node
    (`node_cpus`, the largest) has beside a read task; threads per session: the cluster's CPUs over the
    actors, at most one node's. Default actors: one per two CPUs."""
    if not cluster_cpus or cluster_cpus <= 0:
        raise HieraRuntimeError("the Ray cluster has no CPUs")
    node_cpus = node_cpus or cluster_cpus
    actors = actors or max(1, int(cluster_cpus) // 2)
    free = cluster_cpus - min(READ_CPUS, cluster_cpus / 2)
    largest = node_cpus - min(READ_CPUS, node_cpus / 2)  # an actor fits on one node, beside a read task
    actor_cpus = math.floor(min(free / actors, largest) * 100) / 100  # rounded down: never more than is free
    if actor_cpus <= 0:
        raise HieraRuntimeError(f"{actors} actors: more than the Ray cluster's {cluster_cpus:g} CPUs can run "
                                "(at most 100 per CPU)")
    return Plan(actors, actor_cpus, max(1, min(int(node_cpus), int(cluster_cpus // actors))))


# ------------------------------------------------------------------------------------- the rows

def _offsets(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, int]]:
    """Where each output lies in a row of all outputs concatenated (the journal's rows)."""
    offsets, start = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        offsets[name], start = (start, start + size), start + size
    return offsets


def _schema(shapes: dict[str, tuple[int, ...]]):
    import pyarrow as pa

    return pa.schema([("path", pa.string()),
                      *[(name, pa.list_(pa.float32(), int(np.prod(shape)))) for name, shape in shapes.items()],
                      ("error", pa.string())])


def _table(paths: list[str], rows: np.ndarray, errors: list[str | None], shapes: dict[str, tuple[int, ...]]):
    """Rows as Arrow: `rows` [n, floats of every output] (what an error row holds is ignored: its outputs are
    null)."""
    import pyarrow as pa

    failed = pa.array([error is not None for error in errors], pa.bool_())
    columns = [pa.array(paths, pa.string())]
    for begin, end in _offsets(shapes).values():
        values = pa.array(np.ascontiguousarray(rows[:, begin:end], np.float32).ravel(), pa.float32())
        columns.append(pa.FixedSizeListArray.from_arrays(values, end - begin, mask=failed))
    columns.append(pa.array(errors, pa.string()))
    return pa.Table.from_arrays(columns, schema=_schema(shapes))


def _rows(table, shapes: dict[str, tuple[int, ...]]) -> np.ndarray:
    """The outputs of `table`'s rows (none of them failed), concatenated: [n, floats of every output]."""
    parts = [table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
             .reshape(table.num_rows, -1) for name in shapes]
    return np.concatenate(parts, axis=1).astype("<f4") if parts else np.zeros((table.num_rows, 0), "<f4")


class Embedder:
    """`Dataset.map_batches(Embedder, fn_constructor_kwargs={"model": path, ...}, concurrency=..., num_cpus=...)`:
    the model's outputs for a batch of images, a row each (see the module's docstring). `sha256`: the artifact's,
    as the driver read it (a node with another file refuses to start); `outputs`: the outputs to return
    (default: `runtime.embed.default_outputs`); `root`: the folder relative paths are taken from (the driver's);
    `options`: `runtime.load`'s (provider, threads, max_pixels, ...)."""

    def __init__(self, model, sha256: str | None = None, outputs: list[str] | None = None,
                 batch_size: int | None = None, root: str | None = None, **options):
        path = Path(root or ".", model)
        if sha256 is not None and files.sha256(path) != sha256:
            raise HieraRuntimeError(f"{path} on {socket.gethostname()}: not the artifact the driver runs (its sha256 "
                                    "differs); every node must read the same file")
        self.model = load(path, **options)
        if not isinstance(self.model, FeatureExtractor) or self.model.info.preprocessing.frames:
            raise HieraRuntimeError(f"{path}: a {self.model.info.task} model of clips or classes; embedding on Ray "
                                    "needs an image features, backbone or image-encoder model")
        self.shapes = _shapes(self.model, list(outputs or default_outputs(self.model)), path)
        self.root, self.batch_size = root, batch_size
        self.max_pixels = options.get("max_pixels", MAX_PIXELS)

    def __call__(self, batch: dict):
        paths = [str(path) for path in batch["path"]]
        data = batch.get("bytes")
        items, errors = [], [None] * len(paths)
        for number, path in enumerate(paths):
            try:  # bytes Ray read are decoded here, as a file is (the same decoders and guard)
                items.append(to_rgb(open_image(path, self.max_pixels, bytes(data[number]))) if data is not None
                             else str(Path(self.root or ".", path)))
            except HieraRuntimeError as error:
                items.append(None)
                errors[number] = str(error)
        rows = np.zeros((len(paths), sum(end - begin for begin, end in _offsets(self.shapes).values())), np.float32)
        good = [number for number, item in enumerate(items) if item is not None]
        try:
            results = list(self.model.outcomes([items[number] for number in good], self.batch_size))
        except Exception as error:  # noqa: BLE001  the session failed on the batch: its rows say so, the actor lives
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            results = [(None, f"{paths[number]}: the model failed on its batch ({reason})") for number in good]
        for place, (number, (outputs, error)) in enumerate(zip(good, results)):
            if error is not None:  # errors name a decoded image by its place, a file as it was opened
                named = f"image {place}: " if not isinstance(items[number], str) else f"{items[number]}: "
                errors[number] = paths[number] + ": " + error.removeprefix(named) if error.startswith(named) \
                    else error
                continue
            rows[number] = np.concatenate([outputs[name].astype(np.float32).ravel() for name in self.shapes])
        return _table(paths, rows, errors, self.shapes)


# ---------------------------------------------------------------------------------------- the cluster

@contextlib.contextmanager
def connected(address: str | None):
    """A Ray session for the block: on the cluster at `address` ("host:port", what `ray start --head` printed,
    or "auto"), or on a local cluster started here for the block when None; the session this process already
    has (its own `ray.init`), left open, when there is one and no address. An address nothing answers at is
    one line, before Ray is asked."""
    try:
        import ray
        from ray.data import DataContext
    except ImportError:
        raise HieraRuntimeError("embedding on Ray needs Ray Data: pip install 'hiera-deploy[ray]'") from None
    if address is None and ray.is_initialized():
        yield ray
        return
    if address not in (None, "auto"):
        host, port = cluster_address(address)
        try:
            socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
        except OSError as error:
            raise HieraRuntimeError(f"Ray cluster {address}: does not answer ({error.strerror or error})") from None
    # Ray's own lines would drown the command's: its failures reach the command as exceptions, said in one line
    logging.getLogger("ray").setLevel(logging.ERROR)
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # it logs the stack of a failure it then raises
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=address or "local", include_dashboard=False if address is None else None,
                 log_to_driver=False, logging_level=logging.ERROR, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise HieraRuntimeError(f"Ray cluster {address or '(local)'}: cannot connect ({_line(error)})") from None
    finally:  # ray.init makes SIGTERM exit at once (status 15, no line); it stays an interruption, as Ctrl-C is
        if on_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_sigterm)
    context = DataContext.get_current()
    context.enable_progress_bars = context.enable_operator_progress_bars = False
    context.enable_auto_log_stats = False
    try:
        yield ray
    finally:
        ray.shutdown()


def cluster_address(address: str) -> tuple[str, int]:
    """The host and port of a Ray cluster's address, HOST:PORT or ray://HOST:PORT (Ray Client); one line for
    anything else, before any connection: another scheme (a dashboard's http:// URL is the usual slip), no host,
    or a port outside 1..65535."""
    scheme, found, rest = address.partition("://")
    if found and scheme != "ray":
        raise HieraRuntimeError(f"Ray cluster {address}: a {scheme}:// URL; give HOST:PORT (what ray start --head "
                                "printed) or ray://HOST:PORT")
    host, _, port = (rest if found else address).rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # an IPv6 address in brackets
    if not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise HieraRuntimeError(f"Ray cluster {address}: give it as HOST:PORT or ray://HOST:PORT (a port from 1 to "
                                "65535)")
    return host, int(port)


def _line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


def cluster_plan(ray, actors: int | None) -> Plan:
    """`plan` for the cluster Ray is connected to."""
    nodes = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
    return plan(ray.cluster_resources().get("CPU", 0), max(nodes, default=None), actors)


def _stream(ray, todo: list[str], embedder: dict, step: int, resources: Plan):
    """The rows of `todo`'s images as Arrow tables, block by block as the actors finish them (in any order)."""
    # Blocks of a few batches: each block costs Ray a task and the driver a journal line (two fsyncs), and Ray's
    # default (about 200 blocks) made blocks of two images for 450 digits, a third of the speed.
    blocks = max(resources.actors, math.ceil(len(todo) / (step * BATCHES_PER_BLOCK)))
    dataset = ray.data.from_items([{"path": path} for path in todo], override_num_blocks=blocks)
    with warnings.catch_warnings():
        # `max_restarts` is one of the "ray_remote_args" Ray 2.60 calls deprecated, yet names no other way to set.
        # Without it, Ray's core prints a warning about restartable actors' arguments on every run; with it, an
        # actor lost (its node gone) stops the run, which continues from its journal when run again.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        dataset = dataset.map_batches(Embedder, fn_constructor_kwargs=embedder, batch_size=step, batch_format="numpy",
                                      compute=ray.data.ActorPoolStrategy(size=resources.actors),
                                      num_cpus=resources.actor_cpus, max_restarts=0)
    try:
        yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    except ray.exceptions.RayError as error:  # an actor that could not start (the artifact on its node), a lost node
        cause = getattr(error, "cause", None)
        if isinstance(cause, HieraRuntimeError):  # the artifact, refused where it runs: no second try helps
            raise HieraRuntimeError(str(cause)) from None
        raise _JobFailed(f"the Ray job failed: {_line(error)}") from None


class _JobFailed(HieraRuntimeError):
    """Ray lost an actor or a node: another try may go through (a worker that started too slowly on a busy node)."""


# ------------------------------------------------------------------------------------------ the command

def embed(model: FeatureExtractor, images, out, *, address: str | None = None, actors: int | None = None,
          outputs: list[str] | None = None, batch_size: int | None = None, load_options: dict | None = None,
          on_image: Callable[[str, str | None], None] | None = None) -> Embedding:
    """`runtime.embed.embed` on a Ray cluster (`connected(address)`), into the folder `out` (see the module's
    docstring). `model`: the artifact as the driver loaded it (its checks, outputs and sha256); the actors load
    the same file with `load_options` (`runtime.load`'s; threads default to `plan`'s). As `runtime.embed.embed`
    does, a run continues an unfinished run's journal, or else takes the finite rows a finished output of the
    same model and outputs holds at `out`; with nothing left to embed it does not connect to a cluster."""
    out = Path(os.path.abspath(out))
    if out.suffix in SUFFIXES:
        raise HieraRuntimeError(f"{out}: on Ray the output is a folder (Parquet files and their index); name a folder")
    if model.info.preprocessing.frames:
        raise HieraRuntimeError(f"{model.session.path}: a video model; embedding on Ray takes images, not clips")
    if address not in (None, "auto"):
        cluster_address(address)  # its form, before anything else; whether it answers, once there is work for it
    shapes = _shapes(model, list(outputs or default_outputs(model)), out)
    identity = {"model": model.session.path.name, "model_sha256": files.sha256(model.session.path),
                "outputs": {name: list(shape) for name, shape in shapes.items()}}
    images = list(dict.fromkeys(str(path) for path in images))
    if not images:
        raise HieraRuntimeError("no images given")
    row_floats = sum(end - begin for begin, end in _offsets(shapes).values())
    # The folder first: a refusal costs no cluster start; the cluster before the journal: a cluster that does not
    # answer leaves nothing behind.
    with commit.replacing(out, WRITTEN_BY) as replacement:
        partial = out.with_name(f".{out.name}.partial")
        journal = commit.Journal(partial, row_floats * 4, f"remove {partial} to start {out.name} over")
        try:
            done = _resume(partial, journal, identity, row_floats)
            earlier = earlier_output(out, identity, "choose another folder, or remove it to write it anew") \
                if done is None and replacement.replaced else None
            reusable = list(finite_rows(earlier, images, list(identity["outputs"]))) if earlier else []
            have = {path for paths, _ in reusable for path in paths} if done is None else done
            failed = {path: f"{path}: its name is not valid UTF-8, which Arrow cannot record"
                      for path in images if path not in have and not _utf8(path)}
            todo = [path for path in images if path not in have and path not in failed]
            with (connected(address) if todo else contextlib.nullcontext()) as ray:
                if done is None:
                    done = _start(partial, journal, identity)
                    for paths, rows in reusable:  # journalled as the rows embedded here are
                        if paths:
                            done.update(journal.append(paths, np.ascontiguousarray(rows, "<f4").tobytes()))
                reused = sum(path in done for path in images)
                for path in images if on_image else ():
                    if path in done:
                        on_image(path, None)
                    elif path in failed:
                        on_image(path, failed[path])
                if todo:
                    _run(ray, model, todo, shapes, journal, done, failed, on_image, actors, batch_size, load_options,
                         identity["model_sha256"])
            index = {"format": FORMAT, "format_version": FORMAT_VERSION, **identity,
                     "images": [path for path in images if path in done],
                     "failed": [{"image": path, "error": failed[path]} for path in images if path in failed],
                     "counts": {"images": len(images), "embedded": sum(path in done for path in images),
                                "failed": len(failed)}}
            index["files"] = _write_parquet(replacement.staging, images, done, failed, journal, row_floats, shapes)
            files.write_json(replacement.staging / INDEX, index)
        except KeyboardInterrupt as error:
            if isinstance(error, commit.Interrupted):
                raise
            shutil.rmtree(replacement.staging, ignore_errors=True)
            kept = f"; the rows done so far are kept in {partial.name} to continue from" if partial.exists() else ""
            raise commit.Interrupted(f"{out} is as it was{kept}") from None
        finally:
            journal.close()
    shutil.rmtree(partial, ignore_errors=True)  # committed: a kill before this only makes the next run commit again
    return dataclasses.replace(read(out), reused=reused)


def _run(ray, model: FeatureExtractor, todo: list[str], shapes: dict, journal, done: dict[str, int],
         failed: dict[str, str], on_image, actors: int | None, batch_size: int | None, load_options: dict | None,
         sha256: str) -> None:
    """Embed `todo` on the cluster, journalling the rows; an image Ray returns no row for is failed."""
    resources = cluster_plan(ray, actors)
    options = {"threads": resources.threads, **(load_options or {})}
    embedder = {"model": str(model.session.path), "sha256": sha256, "outputs": list(shapes), "batch_size": batch_size,
                "root": os.getcwd(), **options}
    wanted = set(todo)
    for attempt in range(1, ATTEMPTS + 1):  # each try runs what the ones before did not return
        try:
            # closed before Ray is shut down, however the loop ends (Ctrl-C while a block is journalled): Ray Data's
            # executor, left to the garbage collector, calls Ray after the shutdown, which starts Ray again
            with contextlib.closing(_stream(ray, [path for path in todo if path in wanted], embedder,
                                            model.batch_size(batch_size), resources)) as tables:
                _collect(tables, wanted, shapes, journal, done, failed, on_image)
            break
        except _JobFailed:
            if attempt == ATTEMPTS:
                raise
    for path in [path for path in todo if path in wanted]:  # never silently missing from the output
        failed[path] = f"{path}: the Ray job returned no row for it"
        if on_image:
            on_image(path, failed[path])


def _collect(tables, wanted: set[str], shapes: dict, journal, done: dict[str, int], failed: dict[str, str],
             on_image) -> None:
    """Journal the rows of `tables` (as Ray hands them over) for the images still `wanted`, record the failed."""
    for table in tables:
        paths, errors = table.column("path").to_pylist(), table.column("error").to_pylist()
        fresh = [path in wanted for path in paths]  # a row handed over twice (a retried task) counts once
        good = table.filter([new and error is None for new, error in zip(fresh, errors)])
        if good.num_rows:
            done.update(journal.append(good.column("path").to_pylist(), _rows(good, shapes).tobytes()))
        for path, error, new in zip(paths, errors, fresh):
            if new:
                wanted.discard(path)
                if error is not None:
                    failed[path] = error
                if on_image:
                    on_image(path, error)


def _resume(partial: Path, journal, identity: dict, row_floats: int) -> dict[str, int] | None:
    """The rows an unfinished run of this model and these outputs journalled, intact and finite, by image path;
    None when there is no unfinished run."""
    about = partial / "about.json"
    if not about.exists():
        return None
    if files.read_json(about, 1 << 20) != identity:
        raise HieraRuntimeError(f"{partial}: an unfinished run of another model or other outputs; remove it to "
                                "start over")
    intact = journal.resume()
    rows = journal_rows(journal, row_floats)
    return {path: row for path, row in intact.items() if np.isfinite(rows[row]).all()}  # others run again


def _start(partial: Path, journal, identity: dict) -> dict[str, int]:
    """An empty journal for this run."""
    try:
        partial.mkdir(exist_ok=True)
        journal.start()
        files.write_json(partial / "about.json", identity)  # last: a folder without it is started over
    except OSError as error:
        raise HieraRuntimeError(f"{partial}: cannot write ({error.strerror or error})") from None
    return {}


def _write_parquet(staging: Path, images: list[str], done: dict[str, int], failed: dict[str, str], journal,
                   row_floats: int, shapes: dict) -> list[dict]:
    """The Parquet files in `staging`: every image done or failed, in the order given (a name that is not UTF-8
    is only in the index's `failed`); returns each file's name, rows and sha256."""
    import pyarrow.parquet as pq

    rows = journal_rows(journal, row_floats)
    order = [path for path in images if path in done or (path in failed and _utf8(path))]
    written = []
    for number, first in enumerate(range(0, max(len(order), 1), ROWS_PER_FILE)):
        name, chunk = f"part-{number:05d}.parquet", order[first:first + ROWS_PER_FILE]
        try:
            with pq.ParquetWriter(staging / name, _schema(shapes)) as writer:
                for start in range(0, len(chunk), ROWS_PER_WRITE):
                    paths = chunk[start:start + ROWS_PER_WRITE]
                    picked = np.zeros((len(paths), row_floats), np.float32)
                    for place, path in enumerate(paths):
                        if path in done:
                            picked[place] = rows[done[path]]
                    writer.write_table(_table(paths, picked, [failed.get(path) for path in paths], shapes))
        except OSError as error:
            raise HieraRuntimeError(f"{staging / name}: cannot write ({error.strerror or error})") from None
        written.append({"name": name, "rows": len(chunk), "sha256": files.sha256(staging / name)})
    return written


def read_folder(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """The index and arrays (the rows of `images`, in its order) of an output folder `embed` wrote; ValueError
    when its files are not the ones its index records."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise HieraRuntimeError(f"{path}: reading Parquet needs pyarrow: pip install 'hiera-deploy[ray]'") from None
    index = files.read_json(files.require_file(path / INDEX), max(1 << 20, (path / INDEX).stat().st_size))
    if not isinstance(index, dict) or not isinstance(index.get("outputs"), dict) or \
            not isinstance(index.get("files"), list):
        raise ValueError(f"{INDEX} is not the index of an embedding")
    tables = []
    for entry in index["files"]:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not commit.is_relative_name(name) or "/" in name or files.sha256(files.require_file(path / name)) != \
                entry.get("sha256"):
            raise ValueError(f"{name}: not the file its index records (sha256)")
        tables.append(pq.read_table(path / name))
    table = pa.concat_tables(tables) if tables else None
    if table is None:
        raise ValueError(f"{INDEX} lists no Parquet file")
    table = table.filter(table.column("error").is_null())
    if table.column("path").to_pylist() != index.get("images"):
        raise ValueError(f"its rows are not the images its {INDEX} lists, in that order")
    arrays = {}
    for name, shape in index["outputs"].items():
        values = table.column(name).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        arrays[name] = values.astype(np.float32).reshape(table.num_rows, *shape)
    return index, arrays
