"""Every CPU engine on one model, interleaved in one process: speed as median ms and as a ratio to
transformers' eager model, and what each costs in accuracy.

Candidates (same seeded weights: a checkpoint written by transformers' save_pretrained, which our export
loads; 2 threads everywhere):
  transformers eager              HieraForImageClassification in PyTorch
  transformers ONNX, ort          its own torch.onnx.export (opset 17) in onnxruntime
  transformers ONNX, OV f32|bf16  the same file in OpenVINO, at each inference precision
  transformers ONNX, OV NNCF int8 NNCF's post-training int8 of that file (model_type TRANSFORMER): the int8 peer
  ours fp32|int8|qdq, ort         our artifacts through the runtime's API on onnxruntime's CPU provider
  ours fp32, OV f32|bf16          the OpenVINO artifact (the standard-op graph) through the runtime's API
  ours qdq, OV int8 (+f32|bf16)   the qdq artifact in OpenVINO, the layers it leaves in float at f32 or bf16
  ours NNCF int8, OV              NNCF's int8 of our standard-op graph, as an IR with our metadata, through
                                  the runtime's API
bf16 rows only where the CPU has native bf16. Accuracy: against transformers eager on held-out inputs, the
smallest cosine similarity of the logits and the share of top-1 classes that agree; with `--digits`, the
trained digits model (models/digits) and its held-out top-1. The int8 candidates calibrate on the same
images (their own, not the held-out ones). Also recorded: the OpenVINO session's start, without a cache, when
it writes its cache and when it reads it (each in a fresh process), and with `--profile` where OpenVINO
spends the time of our graph (its per-layer-type counters) and what its fully connected layers alone take:
the floor under any graph of this model at that precision, since a graph only decides how they are connected.

    python -m benchmarks.cpu_engines --variant base                 # table on stdout, JSON in benchmarks/results/
    python -m benchmarks.cpu_engines --digits                       # speed and held-out top-1 of a trained model
    python -m benchmarks.cpu_engines --variant tiny --batches 1 --rounds 1 --runs 2   # a quick smoke run

Needs openvino and nncf (`pip install openvino nncf`); nncf is for this benchmark only.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

import hiera_model  # noqa: E402
from export import PRECISIONS, Options, run  # noqa: E402
from export.parity import photographs  # noqa: E402
from benchmarks.export_speed import Logits, onnx_session, summary, timed, transformers_reference  # noqa: E402
from runtime import load  # noqa: E402
from runtime.artifact import MAX_BATCH  # noqa: E402
from runtime.bench import MAX_RUNS  # noqa: E402
from runtime.device import cpu_isa  # noqa: E402
from runtime.openvino import OPENVINO_SUFFIX  # noqa: E402
from runtime.shell import Whole  # noqa: E402

MAX_CALIBRATION = 10_000  # images written to a folder and preprocessed one by one

THREADS = 2
DIGITS = ROOT / "models" / "digits"
EAGER = "transformers eager"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="base", choices=[v for v in hiera_model.VARIANTS if "16x" not in v])
    parser.add_argument("--digits", action="store_true", help="the trained digits model instead of a variant")
    parser.add_argument("--batches", type=Whole(1, MAX_BATCH), nargs="+", default=[1, 8],
                        help=f"each 1 to {MAX_BATCH} (default 1 8)")
    parser.add_argument("--rounds", type=Whole(1, MAX_RUNS), default=3,
                        help=f"interleaved rounds, 1 to {MAX_RUNS} (default 3)")
    parser.add_argument("--runs", type=Whole(1, MAX_RUNS), default=8,
                        help="timed runs per candidate and round at batch 1 "
                        f"(1 to {MAX_RUNS}, default 8; divided by the batch size, at least 2)")
    parser.add_argument("--calibration", type=Whole(1, MAX_CALIBRATION), default=64,
                        help=f"int8 calibration images, 1 to {MAX_CALIBRATION} (default 64)")
    parser.add_argument("--profile", action="store_true", help="OpenVINO's per-layer-type time of our graph")
    parser.add_argument("--json", type=Path, help="default: benchmarks/results/cpu_engines_<variant>.json")
    args = parser.parse_args()
    import nncf
    import onnxruntime as ort
    import openvino as ov

    torch.set_num_threads(THREADS)
    core = ov.Core()
    bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    tmp = Path(tempfile.mkdtemp(prefix="hiera-cpu-engines-"))
    name = "digits" if args.digits else args.variant
    if args.digits:
        eager, weights, versions = digits_reference()
        calibration_images, (held_out, labels) = digits_images(args.calibration)
    else:
        config = hiera_model.get_variant(args.variant).config
        _, eager, weights, versions = transformers_reference(config, "classify", tmp)
        eager.input_size = tuple(config.input_size)
        calibration_images, held_out, labels = photo_crops(args.calibration, seed=0), photo_crops(16, seed=1), None
    calibration_dir = tmp / "calibration"
    calibration_dir.mkdir()
    for i, image in enumerate(calibration_images):
        image.save(calibration_dir / f"{i:04d}.png")

    rows: dict[str, dict] = {}
    start, profile = None, None
    for batch in args.batches:
        print(f"batch {batch}: exporting ours and transformers'", file=sys.stderr, flush=True)
        files = our_artifacts(weights, batch, calibration_dir, tmp / f"ours-{batch}")
        preprocessing = load(files["fp32"], provider="cpu").info.preprocessing
        calibration = np.stack([preprocessing(image) for image in calibration_images])
        evaluation = np.stack([preprocessing(image) for image in held_out])
        theirs = tmp / f"transformers-{batch}.onnx"
        example = torch.from_numpy(calibration[:1].repeat(batch, 0))
        with torch.no_grad():
            torch.onnx.export(eager, (example,), theirs, opset_version=17, dynamo=False, input_names=["pixel_values"],
                              output_names=["logits"])
        print(f"batch {batch}: NNCF int8 of transformers' export and of ours", file=sys.stderr, flush=True)
        their_int8 = nncf_int8(nncf, core.read_model(theirs), calibration, batch)
        our_int8 = tmp / f"ours-{batch}" / f"hiera_{name}_classify.nncf.xml"
        ov.save_model(nncf_int8(nncf, core.read_model(files[OPENVINO_SUFFIX]), calibration, batch), our_int8,
                      compress_to_fp16=False)

        precisions = ["f32", "bf16"] if bf16 else ["f32"]
        candidates = {EAGER: lambda pixels: eager(torch.from_numpy(pixels)).numpy(),
                      "transformers ONNX, ort": onnxruntime_call(onnx_session(theirs))}
        candidates.update({f"transformers ONNX, OV {p}": compiled(core, core.read_model(theirs), p)
                           for p in precisions})
        candidates["transformers ONNX, OV NNCF int8"] = compiled(core, their_int8, "f32")
        candidates.update({f"ours {p}, ort": ours(files[p], "cpu") for p in ("fp32", "int8", "qdq")})
        candidates.update({f"ours fp32, OV {p}": ours(files[OPENVINO_SUFFIX], "openvino", p) for p in precisions})
        candidates.update({f"ours qdq, OV int8+{p}": ours(files["qdq"], "openvino", p) for p in precisions})
        candidates["ours NNCF int8, OV"] = ours(our_int8, "openvino")

        x = np.random.default_rng(batch).standard_normal((batch, 3, *eager.input_size), dtype=np.float32)
        times = {label: [] for label in candidates}
        runs = max(2, args.runs // batch)
        with torch.inference_mode():
            for round_ in range(args.rounds):
                print(f"batch {batch}: timing round {round_ + 1}/{args.rounds}", file=sys.stderr, flush=True)
                for label, call in candidates.items():
                    times[label] += timed(lambda c=call, pixels=x: c(pixels), runs, 2 if batch == 1 else 1)
            if batch == args.batches[0]:
                print(f"batch {batch}: accuracy on {len(evaluation)} held-out inputs", file=sys.stderr, flush=True)
                reference = chunked(candidates[EAGER], evaluation, batch)
                for label, call in candidates.items():
                    rows.setdefault(label, {})["accuracy"] = accuracy(chunked(call, evaluation, batch), reference,
                                                                      labels)
        for label in candidates:
            rows.setdefault(label, {})[f"batch {batch}"] = summary(times[label])
        if start is None:
            print("OpenVINO session start, each in a fresh process", file=sys.stderr, flush=True)
            start = start_times(files[OPENVINO_SUFFIX], tmp / "ov-cache")
        if args.profile and profile is None:
            profile = {"batch": batch, **{p: layer_profile(core, files[OPENVINO_SUFFIX], p, x) for p in precisions}}
        del candidates

    result = {"model": name, "threads": THREADS, "batches": args.batches, "calibration_images": len(calibration_images),
              "held_out": len(held_out), "accuracy_reference": "held-out top-1" if labels is not None else EAGER,
              "rows": rows, "openvino_start_s": start, "openvino_profile_ms": profile,
              "machine": {"cpu": core.get_property("CPU", "FULL_DEVICE_NAME"), "isa": list(cpu_isa()), "bf16": bf16,
                          "python": platform.python_version(), "torch": torch.__version__,
                          "onnxruntime": ort.__version__, "openvino": ov.__version__, "nncf": nncf.__version__,
                          **versions}}
    print(table(result))
    path = args.json or ROOT / "benchmarks" / "results" / f"cpu_engines_{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def compiled(core, model, precision: str):
    """An OpenVINO model compiled as its users compile it, at an inference precision, with our threads."""
    request = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                "INFERENCE_NUM_THREADS": THREADS}).create_infer_request()
    return lambda pixels: request.infer({"pixel_values": pixels})[0]


def onnxruntime_call(session):
    return lambda pixels: session.run(None, {"pixel_values": pixels})[0]


def ours(path: Path, provider: str, precision: str | None = None):
    """One of our artifacts through the runtime's API."""
    model = load(path, provider=provider, threads=THREADS, inference_precision=precision)
    return lambda pixels: model.run(pixels)["logits"]


def digits_reference():
    """transformers' digits classifier (tools/digits.py trains it), as its users run it."""
    import transformers

    transformers.logging.set_verbosity_error()
    model = transformers.HieraForImageClassification.from_pretrained(DIGITS).eval()
    eager = Logits(model)
    eager.input_size = tuple(model.config.image_size)
    return eager, DIGITS, {"transformers": transformers.__version__}


def digits_images(count: int):
    """Calibration images from the digits' training split, and the held-out split with its labels."""
    from tools import digits

    split = digits.split()
    return split["train"][0][:count], split["test"]


def photo_crops(count: int, seed: int) -> list:
    """`count` random crops of scikit-learn's two photographs (different seeds, different crops)."""
    rng = np.random.default_rng(seed)
    photos = list(photographs().values())
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        width, height = rng.integers(240, 400), rng.integers(240, 400)
        left, top = rng.integers(0, photo.width - width), rng.integers(0, photo.height - height)
        crops.append(photo.crop((left, top, left + width, top + height)))
    return crops


def our_artifacts(weights: Path, batch: int, calibration: Path, out: Path) -> dict:
    """Our fp32 (fused), int8 and qdq artifacts and the OpenVINO one (under OPENVINO_SUFFIX), at a static batch.
    Until the export writes the OpenVINO artifact itself, it is the --no-optimize fp32 graph: the same graph."""
    precisions = ("fp32", "int8", "qdq") + (("openvino",) if "openvino" in PRECISIONS else ())
    report = run(Options(weights=str(weights), batch=batch, out_dir=out, precisions=precisions,
                         calibration=calibration, validate=False))
    files = {p: out / entry["file"] for p, entry in report["artifacts"].items()}
    if "openvino" in files:
        files[OPENVINO_SUFFIX] = files.pop("openvino")
    else:
        plain = run(Options(weights=str(weights), batch=batch, out_dir=out / "plain", precisions=("fp32",),
                            optimize=False, validate=False))
        files[OPENVINO_SUFFIX] = out / "plain" / plain["artifacts"]["fp32"]["file"]
    return files


def nncf_int8(nncf, model, calibration: np.ndarray, batch: int):
    """NNCF's post-training int8 of an OpenVINO model for transformers, on the calibration images in batches."""
    batches = [calibration[i:i + batch] for i in range(0, len(calibration) - batch + 1, batch)]
    dataset = nncf.Dataset(batches, lambda x: {"pixel_values": x})
    return nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches))


def chunked(call, inputs: np.ndarray, batch: int) -> np.ndarray:
    """`call` on `inputs` in chunks of a static batch, the last padded."""
    outputs = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        padded = np.concatenate([chunk, np.zeros((batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        outputs.append(np.asarray(call(padded))[:len(chunk)])
    return np.concatenate(outputs)


def accuracy(logits: np.ndarray, reference: np.ndarray, labels) -> dict:
    a, b = logits.astype(np.float64), reference.astype(np.float64)
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    result = {"min_cosine": float(cosine.min()), "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean())}
    if labels is not None:
        result["top1"] = float((a.argmax(1) == labels).mean())
    return result


START = """
import sys, time
started = time.perf_counter()
from runtime.openvino import OpenVinoSession
OpenVinoSession(sys.argv[1], threads=2, cache_dir=sys.argv[2] if len(sys.argv) > 2 else None)
print(time.perf_counter() - started)
"""


def start_times(path: Path, cache: Path) -> dict:
    """Seconds from import to a compiled OpenVINO session, each in a fresh process: without a cache, compiling
    and writing the cache, and reading it."""
    def seconds(*extra) -> float:
        result = subprocess.run([sys.executable, "-c", START, str(path), *map(str, extra)], capture_output=True,
                                text=True, check=True, cwd=ROOT)
        return round(float(result.stdout.strip().splitlines()[-1]), 3)

    return {"no cache": seconds(), "first, writing the cache": seconds(cache), "second, from the cache": seconds(cache)}


def layer_profile(core, path: Path, precision: str, x: np.ndarray, runs: int = 5) -> dict:
    """ms per run by OpenVINO layer type and kernel, largest first (its PERF_COUNT counters)."""
    compiled = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                     "INFERENCE_NUM_THREADS": THREADS, "PERF_COUNT": True})
    request = compiled.create_infer_request()
    request.infer({"pixel_values": x})
    totals = collections.Counter()
    for _ in range(runs):
        request.infer({"pixel_values": x})
        for layer in request.profiling_info:
            totals[f"{layer.node_type} ({layer.exec_type})"] += layer.real_time.total_seconds() * 1e3 / runs
    return {name: round(ms, 3) for name, ms in totals.most_common() if ms >= 0.01}


def table(result: dict) -> str:
    batches = result["batches"]
    base = {b: result["rows"][EAGER][f"batch {b}"]["median_ms"] for b in batches}
    digits = result["accuracy_reference"] == "held-out top-1"
    header = ["", *[f"b{b} median ms" for b in batches], *[f"b{b} vs eager" for b in batches],
              "held-out top-1" if digits else "min cosine", "top-1 agree"]
    lines = [header]
    for label, row in result["rows"].items():
        cells = [label, *[f"{row[f'batch {b}']['median_ms']:.1f}" for b in batches],
                 *[f"{base[b] / row[f'batch {b}']['median_ms']:.2f}x" for b in batches]]
        quality = row.get("accuracy", {})
        cells += [f"{quality['top1']:.2%}" if digits else f"{quality.get('min_cosine', float('nan')):.5f}",
                  f"{quality.get('top1_agreement', float('nan')):.0%}"]
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rows = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    rows.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    start = result["openvino_start_s"]
    notes = [f"Hiera-{result['model']}, {result['threads']} threads, {result['machine']['cpu']} "
             f"({' '.join(result['machine'].get('isa', [])) or 'ISA not recorded'}); int8 calibrated on "
             f"{result['calibration_images']} images, accuracy on {result['held_out']} held-out ones", "", *rows, "",
             "OpenVINO session start (s, fresh processes): " + ", ".join(f"{k} {v:.2f}" for k, v in start.items())]
    profile = dict(result["openvino_profile_ms"] or {})
    batch = profile.pop("batch", None)
    for precision, layers in profile.items():
        total = sum(layers.values())
        top = ", ".join(f"{name} {ms:.1f} ms ({ms / total:.0%})" for name, ms in list(layers.items())[:4])
        notes.append(f"OpenVINO {precision}, our graph at batch {batch}, {total:.1f} ms in layers: {top}")
        linear = sum(ms for name, ms in layers.items() if name.startswith("FullyConnected"))
        ratio = base[batch] / result["rows"][f"ours fp32, OV {precision}"][f"batch {batch}"]["median_ms"]
        notes.append(f"  its fully connected layers take {linear / total:.0%} of that: were everything else free, it "
                     f"would be {total / linear:.2f}x faster, {ratio * total / linear:.2f}x eager")
    return "\n".join(notes)


if __name__ == "__main__":
    main()
