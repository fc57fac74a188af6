"""What the runtime's wrapper costs: `runtime bench` against a bare onnxruntime session, same file, one run.

Both run the same artifact on the CPU provider with the same threads and the same input batch:
  bare onnxruntime    InferenceSession.run on the preprocessed batch, nothing else
  runtime             Classifier.predict_arrays, the call `python -m runtime bench` times (session,
                      batching, softmax, top-5 and the Prediction objects)
in interleaved rounds, so that a machine whose speed drifts treats them alike. Image decoding and
preprocessing are not part of either; `runtime bench` reports them on their own line.

    python -m benchmarks.runtime_overhead --variant tiny --batch 8      # table, JSON in benchmarks/results/
    python -m benchmarks.runtime_overhead --model FILE.onnx --batch 8
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]

from runtime import Classifier  # noqa: E402
from runtime.artifact import MAX_BATCH  # noqa: E402
from runtime.bench import MAX_RUNS, summarize, time_calls  # noqa: E402
from runtime.cli import MAX_THREADS  # noqa: E402
from runtime.shell import Whole  # noqa: E402


def export_random(variant: str, batch: int, out_dir: Path) -> Path:
    from export import Options, run  # torch is needed only to make the file

    report = run(Options(variant=variant, weights="random", batch=batch, out_dir=out_dir, precisions=("fp32",),
                         validate=False))
    return out_dir / report["artifacts"]["fp32"]["file"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an exported .onnx (default: export --variant with random weights)")
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--batch", type=Whole(1, MAX_BATCH), default=8, help=f"1 to {MAX_BATCH} (default 8)")
    parser.add_argument("--threads", type=Whole(1, MAX_THREADS), default=2, help=f"1 to {MAX_THREADS} (default 2)")
    parser.add_argument("--rounds", type=Whole(1, MAX_RUNS), default=5, help=f"1 to {MAX_RUNS} (default 5)")
    parser.add_argument("--runs", type=Whole(1, MAX_RUNS), default=6,
                        help=f"timed calls per candidate and round, 1 to {MAX_RUNS} (default 6)")
    parser.add_argument("--json", type=Path, help="default benchmarks/results/runtime_overhead_<name>.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or export_random(args.variant, args.batch, Path(scratch))
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        bare = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        classifier = Classifier.load(model, provider="cpu", threads=args.threads)
        height, width = classifier.info.input_size
        pixel_values = np.random.default_rng(0).standard_normal((args.batch, 3, height, width), dtype=np.float32)
        candidates = {"bare onnxruntime": lambda: bare.run(None, {"pixel_values": pixel_values}),
                      "runtime": lambda: classifier.predict_arrays(pixel_values)}
        times = {name: [] for name in candidates}
        for round_ in range(args.rounds):
            order = list(candidates) if round_ % 2 == 0 else list(candidates)[::-1]
            for name in order:
                times[name] += time_calls(candidates[name], args.runs, warmup=1)
            print(f"round {round_ + 1}/{args.rounds}", file=sys.stderr, flush=True)
        results = {name: summarize(seconds, args.batch) for name, seconds in times.items()}
        ratio = results["runtime"]["images_per_s"] / results["bare onnxruntime"]["images_per_s"]

    print(f"{model.name}, batch {args.batch}, {args.threads} threads, {args.rounds} x {args.runs} runs each")
    print(f"{'':18s}{'median ms':>10s}{'p90 ms':>10s}{'images/s':>10s}")
    for name, row in results.items():
        print(f"{name:18s}{row['median_ms']:10.1f}{row['p90_ms']:10.1f}{row['images_per_s']:10.2f}")
    print(f"runtime throughput = {ratio:.1%} of bare onnxruntime")
    name = model.stem if args.model else args.variant
    out = args.json or ROOT / "benchmarks" / "results" / f"runtime_overhead_{name}.json"
    out.write_text(json.dumps({"model": model.name, "batch": args.batch, "threads": args.threads,
                               "onnxruntime": ort.__version__, "machine": platform.processor() or platform.machine(),
                               "results": results, "runtime_over_bare": ratio}, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
