"""The probe an artifact carries (`hiera.probe`), so that it proves itself on the device that runs it, not only
on the machine that exported it (an int8 artifact that passes where it was made can be wrong on a CPU whose
integer kernel saturates, an fp16 one on a GPU that overflows).

The probe holds
- its inputs: the pixels of real photographs, cropped to the model's input as the preprocessing crops them
  (uint8, so nothing depends on a random generator or a resize), normalized here by `Preprocessing.normalize`;
  a video model sees each photograph as a still clip; an MAE model takes a fixed noise (`mae_noise`);
- PyTorch fp32's outputs on them, with the bound of the artifact's precision (the export's parity bound);
- the exporting engine's own outputs, with a tight bound: integer arithmetic without saturation and float
  kernels that round alike give about the same numbers on every CPU, so a device that computes otherwise fails
  here clearly, not at the edge of the precision's bound.
Outputs larger than `KEPT` values per sample are stored reduced (`reduce`): `KEPT` fixed projections, computed
the same way on both sides.

`check(model, probe)` runs the probe on a loaded model and returns its rows; `python -m runtime check` prints them
and `runtime.load` runs them once per artifact and device (see `verdicts`).
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import files
from .device import cpu_isa, cpu_name
from .errors import HieraRuntimeError

PROBE_VERSION = 1
KEPT = 1024  # values per sample and output: whole up to this many, else this many projections (`reduce`)
ENGINE_BOUND = {"cosine": 0.999}  # the exporting engine's outputs against this device's, same engine
MAX_VALUES = 1 << 24  # in any one stored array: a probe is small; a larger one is not a probe
DTYPES = {"uint8": np.uint8, "float32": np.float32, "float64": np.float64, "int64": np.int64, "bool": np.bool_}
# Artifacts no engine of this runtime runs, by suffix, and why: the export writes their probe with PyTorch's outputs
# only (no engine run to record), and neither its validation nor `check` runs them.
NOT_RUN_HERE = {".mlpackage": "not run: Core ML runs only on Apple systems (macOS, iOS)"}


def encode(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array)
    return {"dtype": array.dtype.name, "shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode()}


def decode(value, what: str) -> np.ndarray:
    """A stored array, checked: its type, its shape and that its bytes fill that shape exactly."""
    shape = value.get("shape") if isinstance(value, dict) else None
    if not isinstance(shape, list) or value.get("dtype") not in DTYPES or not isinstance(value.get("data"), str) \
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_VALUES for d in shape):
        raise HieraRuntimeError(f"damaged probe: {what} is not an array (dtype, shape, data)")
    dtype, shape = np.dtype(DTYPES[value["dtype"]]), value["shape"]
    count = int(np.prod(shape, dtype=np.int64))
    if count > MAX_VALUES or len(value["data"]) != 4 * -(-count * dtype.itemsize // 3):
        raise HieraRuntimeError(f"damaged probe: {what} does not hold {shape} {dtype.name} values")
    try:
        data = base64.b64decode(value["data"], validate=True)
    except ValueError:
        raise HieraRuntimeError(f"damaged probe: {what} is not base64") from None
    return np.frombuffer(data, dtype).reshape(shape).copy()


def reduce(value: np.ndarray) -> np.ndarray:
    """Per sample (axis 0): all values where there are at most `KEPT`, else `KEPT` fixed projections of them: each
    run of the flattened values summed with signs of a fixed hash of their index, over the run length's square
    root. Like a random projection it keeps cosines (and moves with any error pattern), without a generator."""
    rows = np.asarray(value).reshape(len(value), -1)
    if rows.shape[1] <= KEPT or not np.issubdtype(rows.dtype, np.floating):
        return rows
    index = np.arange(rows.shape[1], dtype=np.uint64)
    signs = 1.0 - 2.0 * ((index * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(63)).astype(np.float64)
    starts = np.linspace(0, rows.shape[1], KEPT + 1).astype(np.int64)
    sums = np.add.reduceat(rows.astype(np.float64) * signs, starts[:-1], axis=1)
    return sums / np.sqrt(np.diff(starts))


def mae_noise(samples: int, mask_units: int) -> np.ndarray:
    """MAE's noise input for the probe, without a random generator: a golden-ratio sequence per sample (its
    order decides which mask units are kept, and every sample's differs)."""
    golden = (5 ** 0.5 - 1) / 2
    index = np.arange(mask_units, dtype=np.float64)[None] + 7919 * np.arange(samples, dtype=np.float64)[:, None]
    return np.mod(index * golden, 1.0).astype(np.float32)


def inputs(pixels: np.ndarray, preprocessing, input_size, mae: dict | None) -> dict[str, np.ndarray]:
    """The model inputs of stored uint8 crops [N, H, W, 3]: normalized, a still clip for a video model."""
    pixel_values = np.stack([preprocessing.normalize(crop) for crop in pixels])
    if len(input_size) == 3:  # video: [N, 3, frames, H, W]
        pixel_values = np.repeat(pixel_values[:, :, None], input_size[0], axis=2)
    feeds = {"pixel_values": pixel_values}
    if mae is not None:
        feeds["noise"] = mae_noise(len(pixels), mae["mask_units"])
    return feeds


def make(pixels: np.ndarray, photos: list[str], reference: dict[str, np.ndarray], bound: dict,
         engine: str | None, engine_outputs: dict[str, np.ndarray] | None) -> dict:
    """The probe document: the uint8 crops, PyTorch's outputs with the precision's bound, and the exporting
    engine's with `ENGINE_BOUND`, each reduced. `engine` None: no engine ran the artifact (`NOT_RUN_HERE`), so the
    probe holds PyTorch's outputs only."""
    document = {"version": PROBE_VERSION, "photos": photos, "pixels": encode(pixels),
                "reference": {"name": "PyTorch fp32", "bound": bound,
                              "outputs": {name: encode(reduce(value)) for name, value in reference.items()}}}
    if engine is not None:
        document["engine"] = {"name": engine, "cpu": " ".join(cpu_isa()) or "unknown", "bound": ENGINE_BOUND,
                              "outputs": {name: encode(reduce(value)) for name, value in engine_outputs.items()}}
    return document


@dataclass(frozen=True)
class Row:
    against: str  # whose outputs this device's are compared with
    figure: str  # "max_abs" or "cosine" (the smallest per sample and output), or "equal"
    value: float | None  # None: not computable (a missing output, NaN): fails
    bound: float
    passed: bool

    def describe(self) -> str:
        if self.figure == "equal":
            return f"{self.against}: {'equal' if self.passed else 'differ'}"
        value = "n/a" if self.value is None else \
            f"{self.value:.3g}" if self.figure == "max_abs" else f"{self.value:.6f}"
        sign = ("<=" if self.passed else ">") if self.figure == "max_abs" else (">=" if self.passed else "<")
        return f"{self.against}: {self.figure.replace('_', ' ')} {value} {sign} {self.bound:g}"

    def to_dict(self) -> dict:
        return asdict(self)


def engine_name(session) -> str:
    """The engine and the way it runs a model, as the probe records the exporting one: its name first."""
    if type(session).__name__ == "OnnxSession":
        from .session import import_onnxruntime

        return f"onnxruntime {import_onnxruntime().__version__} {session.providers[0]}"
    return session.providers[0]  # "OpenVINO 2026.4 CPU (f32)", "TensorRT 10.3 ..."


def check(model, probe: dict) -> list[Row]:
    """Run `probe` (a decoded `hiera.probe`) on `model` (a loaded `runtime` model) and compare: with PyTorch's
    outputs under the artifact's bound (bf16 inference in OpenVINO: cosine 0.999, as the export holds it), and,
    where the same engine made the probe, with its outputs under `ENGINE_BOUND`. A damaged probe is one line
    naming the file."""
    try:
        return _check(model, probe)
    except HieraRuntimeError as error:
        if str(error).startswith("damaged probe"):
            raise HieraRuntimeError(f"{model.session.metadata_path}: {error}") from None
        raise


def _check(model, probe: dict) -> list[Row]:
    info, session = model.info, model.session
    pixels = decode(probe.get("pixels"), "pixels")
    if pixels.ndim != 4 or pixels.shape[1:] != (*info.input_size[-2:], 3) or pixels.dtype != np.uint8:
        raise HieraRuntimeError(f"damaged probe: pixels {list(pixels.shape)} are not crops of the model's input "
                                f"{list(info.input_size[-2:])}")
    got = model.run(**inputs(pixels, info.preprocessing, info.input_size, info.mae))
    engine = engine_name(session)
    reference = _part(probe, "reference")
    bound = reference["bound"]
    if session.inference_precision == "bf16":
        bound = {"cosine": 0.999}
    rows = [_compare(got, reference["outputs"], bound, reference.get("name", "PyTorch fp32"))]
    recorded = _part(probe, "engine") if "engine" in probe else {}  # none: no engine ran it at export
    if recorded and str(recorded.get("name", "")).split(" ")[0].lower() == engine.split(" ")[0].lower():
        rows.append(_compare(got, recorded["outputs"], recorded["bound"],
                             f"{recorded['name']} on {recorded.get('cpu', 'unknown')} (the export's run)"))
    return rows


def _part(probe: dict, name: str) -> dict:
    part = probe.get(name)
    bound = part.get("bound") if isinstance(part, dict) else None
    if not isinstance(part, dict) or not isinstance(part.get("outputs"), dict) or not isinstance(bound, dict) \
            or len(bound) != 1 or next(iter(bound)) not in ("max_abs", "cosine") \
            or not isinstance(next(iter(bound.values())), (int, float)):
        raise HieraRuntimeError(f"damaged probe: {name} lacks its outputs or its bound")
    return part


def _compare(got: dict[str, np.ndarray], stored: dict, bound: dict, against: str) -> Row:
    """One row: every stored output against this device's, reduced the same way; the worst figure counts."""
    (figure, limit), = bound.items()
    worst, equal = None, True
    for name, value in stored.items():
        expected = decode(value, f"{against} {name}")
        if name not in got or reduce(got[name]).shape != expected.shape:
            return Row(against, figure, None, limit, False)
        mine = reduce(got[name])
        if not np.issubdtype(expected.dtype, np.floating):
            equal &= bool(np.array_equal(mine, expected))
            continue
        a, b = expected.astype(np.float64), mine.astype(np.float64)
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            return Row(against, figure, None, limit, False)
        if figure == "max_abs":
            value = float(np.abs(a - b).max(initial=0))
            worst = value if worst is None else max(worst, value)
        else:
            norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
            value = float(((a * b).sum(axis=1) / norms).min())
            worst = value if worst is None else min(worst, value)
    if worst is None:
        return Row(against, "equal", None, 0, equal)
    within = worst <= limit if figure == "max_abs" else worst >= limit
    return Row(against, figure, worst, limit, bool(within and equal))


# Verdicts on this device, kept so that a model is proven once per artifact, device, engine and precision

def verdict_dir() -> Path:
    """Where verdicts are kept: the user's cache folder (`XDG_CACHE_HOME`, else ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hiera-deploy" / "probe"


def prove(model) -> list[Row] | None:
    """Run the probe of a loaded model once on this device (a kept verdict otherwise) and refuse the model, in one
    line naming the figure, if this device computes it otherwise than its bounds allow. None: it has no probe.

    A verdict is kept for a CPU session only, keyed by the artifact's sha256, the engine (with its version and
    inference precision), and the CPU (its name and extensions). A kept verdict is a claim the runtime wrote:
    it is read only from a folder and a file of this user's that nobody else may write; where the cache folder
    cannot be written, nothing is kept."""
    info, session = model.info, model.session
    if info.probe is None:
        return None
    engine = engine_name(session)
    device = f"{cpu_name()} ({' '.join(cpu_isa()) or 'no known extensions'})"
    keep = session.device == "cpu"
    entry = verdict_dir() / f"{_key(files.sha256(session.path), engine, device)}.json" if keep else None
    rows = _kept(entry) if entry else None
    if rows is None:
        rows = check(model, info.probe)
        if entry:
            _keep(entry, rows)
    failed = [row for row in rows if not row.passed]
    if failed:
        raise HieraRuntimeError(
            f"{session.path}: fails its probe on this device ({engine}, {device}): "
            f"{'; '.join(row.describe() for row in failed)}: this device computes it otherwise than the machine that "
            f"exported it; run this export's fp32 artifact here (or another engine), or load it with check=False "
            f"(--no-check) to run it anyway")
    return rows


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _private(path: Path) -> bool:
    """Ours and writable by nobody else: a kept verdict anyone could have written proves nothing."""
    stat = path.stat()
    return stat.st_uid == os.getuid() and not stat.st_mode & 0o022


def _kept(entry: Path) -> list[Row] | None:
    try:
        if not (_private(entry.parent) and _private(entry)):
            return None
        rows = files.read_json(entry, 1 << 20)["rows"]
        return [Row(str(r["against"]), str(r["figure"]), None if r["value"] is None else float(r["value"]),
                    float(r["bound"]), r["passed"] is True) for r in rows]
    except (OSError, HieraRuntimeError, KeyError, TypeError, ValueError):
        return None  # none kept, or not ours, or damaged: prove it again


def _keep(entry: Path, rows: list[Row]) -> None:
    try:
        entry.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        files.write_json(entry, {"rows": [row.to_dict() for row in rows]})
    except (OSError, HieraRuntimeError):
        pass  # a read-only cache folder: the verdict is simply not kept
