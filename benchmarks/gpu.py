"""Hiera on one NVIDIA GPU: transformers' eager model against ours, eager and under torch.compile, in fp32
and fp16, and onnxruntime's CUDA provider on our artifacts and transformers' export where onnxruntime-gpu
is installed; images/s and ms at batch 1 and 64, interleaved in one process.

    python -m benchmarks.gpu --variant base          # table on stdout, JSON in benchmarks/results/gpu_<variant>.json

Same seeded weights for every row (a checkpoint written by transformers' save_pretrained, which our model
loads). Rows:
  transformers eager fp32|fp16      HieraForImageClassification in PyTorch (fp16: .half())
  ours eager fp32|fp16              hiera_model in PyTorch
  ours torch.compile fp32|fp16      the same under torch.compile (default mode; compiled before timing)
  ort CUDA: transformers ONNX fp32  transformers' own torch.onnx.export (opset 17, dynamic batch)
  ort CUDA: ours fp32|fp16          our fp32 (fused) and fp16 artifacts through the runtime's API (IO binding)
Each call takes a host batch and returns the logits on the host (as a user's call does), and each row also
gives the cosine similarity of its logits to transformers' fp32 eager ones. Without an NVIDIA GPU
(torch.cuda.is_available() false) it prints one line and exits with status 1; without onnxruntime-gpu the ort
rows are skipped with the reason.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

import hiera_model  # noqa: E402
from benchmarks.export_speed import summary, transformers_reference  # noqa: E402
from runtime.artifact import MAX_BATCH  # noqa: E402
from runtime.bench import MAX_RUNS  # noqa: E402
from runtime.shell import Whole  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="base", choices=[v for v in hiera_model.VARIANTS if "16x" not in v])
    parser.add_argument("--batches", type=Whole(1, MAX_BATCH),
                        nargs="+", default=[1, 64])
    parser.add_argument("--rounds", type=Whole(1, MAX_RUNS),
                        default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--runs", type=Whole(1, MAX_RUNS),
                        default=20, help="timed runs per candidate and round (default 20)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows (they compile for "
                        "minutes)")
    parser.add_argument("--json", type=Path, help="default: benchmarks/results/gpu_<variant>.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"no NVIDIA GPU here (torch {torch.__version__}: torch.cuda.is_available() is False); run this on a "
              "machine with one and a CUDA build of torch", file=sys.stderr)
        return 1

    config = hiera_model.get_variant(args.variant).config
    tmp = Path(tempfile.mkdtemp(prefix="hiera-gpu-"))
    _, reference, weights, versions = transformers_reference(config, "classify", tmp)
    ours = hiera_model.load(weights)
    models = {"transformers eager": reference, "ours eager": ours}
    candidates = {}
    for name, model in models.items():
        candidates[f"{name} fp16"] = torch_call(_half(copy.deepcopy(model)), torch.float16)
        candidates[f"{name} fp32"] = torch_call(model.cuda().eval(), torch.float32)
    if not args.no_compile:
        print("compiling ours with torch.compile (fp32, fp16)", file=sys.stderr, flush=True)
        candidates["ours torch.compile fp32"] = torch_call(torch.compile(hiera_model.load(weights).cuda().eval()),
                                                           torch.float32)
        candidates["ours torch.compile fp16"] = torch_call(torch.compile(_half(hiera_model.load(weights))),
                                                           torch.float16)
    skipped = {}
    onnxruntime_rows, reason = onnxruntime_candidates(reference, weights, config, tmp)
    if reason:
        skipped["ort CUDA"] = reason
    candidates.update(onnxruntime_rows)

    rows = {name: {} for name in candidates}
    for batch in args.batches:
        x = np.random.default_rng(batch).standard_normal((batch, 3, *config.input_size), dtype=np.float32)
        expected = candidates["transformers eager fp32"](x)
        for name, call in candidates.items():  # warm up (and compile, for torch.compile: once per shape)
            print(f"batch {batch}: warming up {name}", file=sys.stderr, flush=True)
            rows[name][f"batch {batch}"] = {"cosine": cosine(call(x), expected)}
            call(x)
        times = {name: [] for name in candidates}
        for round_ in range(args.rounds):
            print(f"batch {batch}: timing round {round_ + 1}/{args.rounds}", file=sys.stderr, flush=True)
            for name, call in candidates.items():
                for _ in range(args.runs):
                    started = time.perf_counter()
                    call(x)  # each call ends with its outputs on the host: synchronized
                    times[name].append((time.perf_counter() - started) * 1e3)
        for name in candidates:
            figures = summary(times[name])
            rows[name][f"batch {batch}"].update(figures, images_per_s=batch / figures["median_ms"] * 1e3)

    result = {"variant": args.variant, "batches": args.batches, "rows": rows, "skipped": skipped,
              "machine": {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
                          "python": platform.python_version(), "torch": torch.__version__,
                          "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, **versions}}
    print(table(result))
    path = args.json or ROOT / "benchmarks" / "results" / f"gpu_{args.variant}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


def _half(model):
    return model.cuda().eval().half()


def torch_call(model, dtype):
    """A call on a host batch: to the GPU in `dtype`, the model, the logits back as float32 numpy."""
    def call(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x).cuda().to(dtype)).float().cpu().numpy()

    return call


def onnxruntime_candidates(reference, weights: Path, config, tmp: Path) -> tuple[dict, str | None]:
    """onnxruntime's CUDA provider rows, or none and the reason."""
    try:
        import onnxruntime
    except ImportError:
        return {}, "onnxruntime is not installed"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return {}, (f"this onnxruntime ({onnxruntime.__version__}) has no CUDA provider: pip install onnxruntime-gpu "
                    "(in place of onnxruntime)")
    from export import Options, run
    from runtime import load

    print("exporting ours (dynamic batch, fp32 and fp16) and transformers'", file=sys.stderr, flush=True)
    report = run(Options(weights=str(weights), batch=None, out_dir=tmp / "ours", precisions=("fp32", "fp16"),
                         validate=False))
    theirs = tmp / "transformers.onnx"
    example = torch.zeros(1, 3, *config.input_size)
    torch.onnx.export(copy.deepcopy(reference).cpu(), (example,), theirs, opset_version=17, dynamo=False,
                      input_names=["pixel_values"], output_names=["logits"],
                      dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}})
    session = onnxruntime.InferenceSession(str(theirs), providers=["CUDAExecutionProvider"])
    rows = {"ort CUDA: transformers ONNX fp32": lambda x: session.run(None, {"pixel_values": x})[0]}
    for precision, entry in report["artifacts"].items():
        model = load(tmp / "ours" / entry["file"], provider="cuda")
        rows[f"ort CUDA: ours {precision}"] = lambda x, m=model: m.run(x)["logits"]
    return rows, None


def cosine(got: np.ndarray, expected: np.ndarray) -> float:
    a, b = got.astype(np.float64).reshape(len(got), -1), expected.astype(np.float64).reshape(len(expected), -1)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def table(result: dict) -> str:
    batches = result["batches"]
    header = ["", *[f"b{b} ms" for b in batches], *[f"b{b} images/s" for b in batches], "min cosine"]
    lines = [header]
    for name, row in result["rows"].items():
        lines.append([name, *[f"{row[f'batch {b}']['median_ms']:.2f}" for b in batches],
                      *[f"{row[f'batch {b}']['images_per_s']:.0f}" for b in batches],
                      f"{min(row[f'batch {b}']['cosine'] for b in batches):.5f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rows = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    rows.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    notes = [f"skipped {name}: {reason}" for name, reason in result["skipped"].items()]
    return "\n".join([f"Hiera-{result['variant']} on {result['machine']['gpu']} (torch {result['machine']['torch']}, "
                      f"CUDA {result['machine']['cuda']})", "", *rows, *([""] + notes if notes else [])])


if __name__ == "__main__":
    sys.exit(main())
