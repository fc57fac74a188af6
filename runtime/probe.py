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

A mask decoder's probe (format 2, `make_generated`) cannot store its inputs: they are its encoder's outputs, megabytes
of floats. It stores how to make them (`inputs`: each channel's mean and std of the encoder's outputs on the export's
validation photographs, and the prompts), and `generated` makes them alike on every machine, without a generator.

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

PROBE_VERSION = 2  # the newest probe format this runtime reads: 1 stores photographs, 2 generated inputs
PHOTOGRAPHS_VERSION = 1  # what `make` writes: runtimes that read format 1 only keep reading every other probe
GENERATED_VERSION = 2  # what `make_generated` writes (a mask decoder's)
PROBE_FORMAT = 2  # the metadata format (`hiera.format_version`) from which exports write `hiera.probe`
KEPT = 1024  # values per sample and output: whole up to this many, else this many projections (`reduce`)
ENGINE_BOUND = {"cosine": 0.999}  # the exporting engine's outputs against this device's, same engine
MAX_VALUES = 1 << 24  # in any one stored array: a probe is small; a larger one is not a probe
DTYPES = {"uint8": np.uint8, "float32": np.float32, "float64": np.float64, "int64": np.int64, "bool": np.bool_}
# Artifacts no engine of this runtime runs, by suffix, and why: the export writes their probe with PyTorch's outputs
# only (no engine run to record), and neither its validation nor `check` runs them.
NOT_RUN_HERE = {".mlpackage": "not run: Core ML runs only on Apple systems (macOS, iOS)"}
GENERATED = "generated embeddings"  # `inputs.kind` of a mask decoder's probe
EMBEDDINGS = ("image_embeddings", "high_res_feats_0", "high_res_feats_1")  # a decoder's inputs from its encoder
GOLDEN = (5 ** 0.5 - 1) / 2
SEQUENCE_STRIDE = MAX_VALUES  # each generated input's run of the sequence starts this far after the last one's
MAX_CALLS = 16  # decoder calls in one probe
# A generated value stays this close to 0 (mean + sqrt(3) std): an encoder's outputs and a mask's logits are far
# smaller, and a larger one (up to float64's 1e308) is no statistic of them: it overflows float32 or fp16 inside
MAX_MAGNITUDE = 1e6


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
    document = {"version": PHOTOGRAPHS_VERSION, "photos": photos, "pixels": encode(pixels)}
    return _with_outputs(document, reference, bound, engine, engine_outputs)


def make_generated(inputs: dict, reference: dict[str, np.ndarray], bound: dict, engine: str,
                   engine_outputs: dict[str, np.ndarray]) -> dict:
    """A mask decoder's probe document: its `inputs` (`decoder_inputs`), then outputs as `make` stores them."""
    return _with_outputs({"version": GENERATED_VERSION, "inputs": inputs}, reference, bound, engine, engine_outputs)


def _with_outputs(document: dict, reference: dict[str, np.ndarray], bound: dict, engine: str | None,
                  engine_outputs: dict[str, np.ndarray] | None) -> dict:
    document["reference"] = {"name": "PyTorch fp32", "bound": bound,
                             "outputs": {name: encode(reduce(value)) for name, value in reference.items()}}
    if engine is not None:
        document["engine"] = {"name": engine, "cpu": " ".join(cpu_isa()) or "unknown", "bound": ENGINE_BOUND,
                              "outputs": {name: encode(reduce(value)) for name, value in engine_outputs.items()}}
    return document


def generated(shape, mean, std, start: int) -> np.ndarray:
    """float32 values of `shape` [N, C, ...] made without a random generator, alike on every machine (float64
    arithmetic, each step correctly rounded): channel c (axis 1) holds mean[c] + std[c] * sqrt(3) * (2u - 1), u the
    fractional part of (start + k) * the golden ratio, k the value's index in the flattened array. u is spread
    evenly over [0, 1), so each channel has about that mean and std, and stays within sqrt(3) std of its mean."""
    shape = tuple(int(d) for d in shape)
    index = start + np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.float64)
    unit = np.sqrt(3.0) * (2.0 * np.mod(index * GOLDEN, 1.0) - 1.0)
    per_channel = (1, -1) + (1,) * (len(shape) - 2)
    mean, std = (np.asarray(v, np.float64).reshape(per_channel) for v in (mean, std))
    return (mean + std * unit.reshape(shape)).astype(np.float32)


def decoder_inputs(statistics: dict[str, tuple[list, np.ndarray, np.ndarray]], of: list[str],
                   calls: list[tuple[np.ndarray, np.ndarray, np.ndarray]], mask_side: int, mask_std: float) -> dict:
    """A mask decoder probe's `inputs`: per embedding (`EMBEDDINGS`) its shape and each channel's mean and std
    (float64, measured on the images `of`); per call its point_coords [P, N, 2], point_labels [P, N] and
    has_mask_input [P]; the mask input's side and std (its mean is 0)."""
    return {"kind": GENERATED, "of": of,
            "rule": "runtime.probe.generated: channel c holds mean[c] + std[c] * sqrt(3) * (2 frac((start + k) * "
                    "golden ratio) - 1); start is the input's place (embeddings, then each call's mask_input) times "
                    f"{SEQUENCE_STRIDE}; mask_input is that with mean 0 and std mask_std where has_mask_input is 1",
            "embeddings": {name: {"shape": [int(d) for d in shape], "mean": encode(np.asarray(mean, np.float64)),
                                  "std": encode(np.asarray(std, np.float64))}
                           for name, (shape, mean, std) in statistics.items()},
            "mask_input": {"side": int(mask_side), "std": float(mask_std)},
            "calls": [{"point_coords": encode(np.asarray(coords, np.float32)),
                       "point_labels": encode(np.asarray(labels, np.float32)),
                       "has_mask_input": encode(np.asarray(has_mask, np.float32))}
                      for coords, labels, has_mask in calls]}


def decoder_calls(inputs) -> list[dict[str, np.ndarray]]:
    """The decoder calls a mask decoder's probe describes (`inputs`, from `decoder_inputs`), checked: the embeddings
    generated from their stored statistics (the same in every call), each call's prompts, and its mask input
    generated where has_mask_input is 1 (zeros elsewhere)."""
    if not isinstance(inputs, dict) or inputs.get("kind") != GENERATED:
        raise HieraRuntimeError(f"damaged probe: a mask decoder's inputs are {GENERATED!r} (inputs.kind)")
    stored = inputs.get("embeddings")
    if not isinstance(stored, dict) or sorted(stored) != sorted(EMBEDDINGS):
        raise HieraRuntimeError(f"damaged probe: inputs.embeddings does not hold {', '.join(EMBEDDINGS)}")
    embeddings = {}
    for place, name in enumerate(EMBEDDINGS):
        entry = stored[name] if isinstance(stored[name], dict) else {}
        shape = entry.get("shape")
        if not isinstance(shape, list) or len(shape) != 4 or shape[0] != 1 or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 < d <= MAX_VALUES for d in shape) \
                or np.prod(shape, dtype=np.int64) > MAX_VALUES:
            raise HieraRuntimeError(f"damaged probe: inputs.embeddings.{name} has no shape [1, C, H, W]")
        mean, std = (decode(entry.get(key), f"inputs.embeddings.{name}.{key}") for key in ("mean", "std"))
        if any(v.shape != (shape[1],) or not np.isfinite(v).all() for v in (mean, std)) or (std < 0).any() \
                or (np.abs(mean) + np.sqrt(3) * std > MAX_MAGNITUDE).any():
            raise HieraRuntimeError(f"damaged probe: inputs.embeddings.{name}: mean and std are not {shape[1]} "
                                    f"finite values each (std >= 0, |mean| + sqrt(3) std <= {MAX_MAGNITUDE:g})")
        embeddings[name] = generated(shape, mean, std, place * SEQUENCE_STRIDE)
    mask = inputs.get("mask_input")
    side, mask_std = (mask.get("side"), mask.get("std")) if isinstance(mask, dict) else (None, None)
    if not isinstance(side, int) or isinstance(side, bool) or not 0 < side <= 4096 \
            or not isinstance(mask_std, (int, float)) or isinstance(mask_std, bool) \
            or not 0 <= np.sqrt(3) * mask_std <= MAX_MAGNITUDE:
        raise HieraRuntimeError("damaged probe: inputs.mask_input has no side and std")
    calls = inputs.get("calls")
    if not isinstance(calls, list) or not 0 < len(calls) <= MAX_CALLS:
        raise HieraRuntimeError(f"damaged probe: inputs.calls is not a list of 1 to {MAX_CALLS} calls")
    from .segment import MAX_POINTS, MAX_PROMPTS  # the decoder's bounds on a call (not at the top: segment loads us)

    feeds = []
    for number, call in enumerate(calls):
        call = call if isinstance(call, dict) else {}
        what = f"inputs.calls[{number}]"
        coords, labels, has_mask = (decode(call.get(key), f"{what}.{key}")
                                    for key in ("point_coords", "point_labels", "has_mask_input"))
        prompts = len(has_mask)
        if coords.ndim != 3 or coords.shape[2] != 2 or labels.shape != coords.shape[:2] or has_mask.ndim != 1 \
                or not 0 < prompts == len(coords) <= MAX_PROMPTS or not 0 < coords.shape[1] <= MAX_POINTS \
                or prompts * side * side > MAX_VALUES \
                or not all(v.dtype == np.float32 and np.isfinite(v).all() for v in (coords, labels, has_mask)):
            raise HieraRuntimeError(f"damaged probe: {what}: point_coords [P, N, 2], point_labels [P, N] and "
                                    f"has_mask_input [P] are not of one P (finite float32, P <= {MAX_PROMPTS}, "
                                    f"N <= {MAX_POINTS})")
        start = (len(EMBEDDINGS) + number) * SEQUENCE_STRIDE
        mask_input = generated((prompts, 1, side, side), [0.0], [mask_std], start) * has_mask[:, None, None, None]
        feeds.append({**embeddings, "point_coords": coords, "point_labels": labels, "mask_input": mask_input,
                      "has_mask_input": has_mask})
    return feeds


def decoder_outputs(session, inputs) -> dict[str, np.ndarray]:
    """`session` (a mask decoder's) on the calls of its probe's `inputs`, the outputs concatenated along the
    prompts, as the probe stores and compares them (`multimask`)."""
    outputs = [session.run(call["image_embeddings"], **{k: v for k, v in call.items() if k != "image_embeddings"})
               for call in decoder_calls(inputs)]
    return multimask({name: np.concatenate([output[name] for output in outputs]) for name in outputs[0]})


def multimask(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A mask decoder's outputs as its probe holds them: the multimask masks and scores (1..3 of `masks` [P, 4, h, w]
    and `iou_scores` [P, 4]), other outputs whole. The single-mask answer (0) is one of SAM 2's decisions (its
    stability fallback may copy a multimask mask there), which a device whose rounding differs may take the other way
    at its threshold: a sound artifact would fail its probe. The multimask outputs are the same arithmetic without
    the decision; the export's validation holds the decision (`export.mask_decoder.judge`)."""
    return {name: value[:, 1:] if name in ("masks", "iou_scores") else value for name, value in outputs.items()}


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
    if info.task == "mask-decoder":  # its inputs are generated (`decoder_calls`), its outputs per prompt
        got = decoder_outputs(session, probe.get("inputs"))
    else:
        pixels = decode(probe.get("pixels"), "pixels")
        if pixels.ndim != 4 or pixels.shape[1:] != (*info.input_size[-2:], 3) or pixels.dtype != np.uint8:
            raise HieraRuntimeError(f"damaged probe: pixels {list(pixels.shape)} are not crops of the model's input "
                                    f"{list(info.input_size[-2:])}")
        got = model.run(**inputs(pixels, info.preprocessing, info.input_size, info.mae))
    engine = engine_name(session)
    reference = _part(probe, "reference")
    if info.task == "mask-decoder" and sorted(reference["outputs"]) != sorted(got):  # each output is compared
        raise HieraRuntimeError(f"damaged probe: reference holds outputs {', '.join(sorted(reference['outputs']))}; "
                                f"the decoder gives {', '.join(sorted(got))}")
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
