"""The web lane: onnxruntime-web (WASM, in Node) running our graphs and transformers' own export of the same weights.

One seeded transformers checkpoint (as benchmarks/export_speed.py builds it) gives every candidate:
  transformers ONNX        transformers' HieraForImageClassification through torch.onnx.export (opset 17)
  ours fp32, fused         our fp32 artifact (com.microsoft Attention and Gelu): what onnx/model.onnx holds
  ours fp32, standard ops  our graph as torch exports it (--no-optimize): standard ONNX ops only
  ours fp16                our fp16 artifact (onnx/model_fp16.onnx)
  ours int8                our dynamic int8 artifact (onnx/model_quantized.onnx, transformers.js' "q8")
  ours int8, standard ops  the same quantization of the standard-op graph
Each runs in onnxruntime-web's WASM backend in one Node process per thread count, at batch 1, one timed run of each
candidate in turn; each output is checked against Python onnxruntime on the same file first. The table gives the
median (and, for a busy machine, the minimum) latency and the median's speed-up over transformers' export at each
thread count; the JSON has every time.

    python -m benchmarks.web_lane --variant base                    # table on stdout, JSON in benchmarks/results/
    python -m benchmarks.web_lane --variant tiny --rounds 1 --runs 2 --threads 1   # a smoke run

Needs Node 18+ and the hub tests' npm packages: cd tests/hub/js && npm ci --ignore-scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]

import hiera_model  # noqa: E402
from benchmarks.export_speed import transformers_reference  # noqa: E402
from export import Options, run  # noqa: E402
from export.convert import to_int8  # noqa: E402
from runtime.bench import MAX_RUNS  # noqa: E402
from runtime.shell import Whole  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "web_lane.mjs"
NODE_MODULES = ROOT / "tests" / "hub" / "js" / "node_modules" / "onnxruntime-web"
REFERENCE = "transformers ONNX"


def candidates(variant: str, tmp: Path) -> tuple[dict[str, Path], dict]:
    """The ONNX files to compare, all from one seeded checkpoint, and the library versions that made them."""
    config = hiera_model.get_variant(variant).config
    _, wrapped, weights, versions = transformers_reference(config, "classify", tmp)
    files = {REFERENCE: tmp / "transformers.onnx"}
    with torch.no_grad():
        torch.onnx.export(wrapped, (torch.zeros(1, 3, *config.input_size),), files[REFERENCE], opset_version=17,
                          dynamo=False, input_names=["pixel_values"], output_names=["logits"])
    fused = run(Options(weights=str(weights), out_dir=tmp / "fused", validate=False))
    standard = run(Options(weights=str(weights), out_dir=tmp / "standard", optimize=False, precisions=("fp32",),
                           validate=False))
    files["ours fp32, fused"] = tmp / "fused" / fused["artifacts"]["fp32"]["file"]
    files["ours fp32, standard ops"] = tmp / "standard" / standard["artifacts"]["fp32"]["file"]
    files["ours fp16"] = tmp / "fused" / fused["artifacts"]["fp16"]["file"]
    files["ours int8"] = tmp / "fused" / fused["artifacts"]["int8"]["file"]
    files["ours int8, standard ops"] = tmp / "standard_int8.onnx"
    onnx.save(to_int8(files["ours fp32, standard ops"]), files["ours int8, standard ops"])
    return files, versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="base", choices=[n for n, v in hiera_model.VARIANTS.items()
                                                              if not v.config.is_video])
    parser.add_argument("--threads", type=Whole(1, 64),
                        nargs="+", default=[1, 2], help="WASM threads, one Node process each "
                        "(default 1 2)")
    parser.add_argument("--rounds", type=Whole(1, MAX_RUNS),
                        default=3, help="rounds, each with untimed runs first (default 3)")
    parser.add_argument("--runs", type=Whole(1, MAX_RUNS),
                        default=5, help="timed runs per candidate and round (default 5), after 2 "
                        "untimed")
    parser.add_argument("--json", type=Path, help="default: benchmarks/results/web_lane_<variant>.json")
    args = parser.parse_args()
    node = shutil.which("node")
    if node is None or not NODE_MODULES.is_dir():
        sys.exit("needs Node 18+ and onnxruntime-web: cd tests/hub/js && npm ci --ignore-scripts")

    tmp = Path(tempfile.mkdtemp(prefix="hiera-web-"))
    print("exporting the candidates", file=sys.stderr, flush=True)
    files, versions = candidates(args.variant, tmp)
    config = hiera_model.get_variant(args.variant).config
    x = np.random.default_rng(0).standard_normal((1, 3, *config.input_size), dtype=np.float32)
    x.tofile(tmp / "input.bin")
    reference = {}
    for name, file in files.items():  # what Python onnxruntime gives on each file: the WASM run must agree
        out = ort.InferenceSession(file, providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})[0]
        out.astype(np.float32).tofile(tmp / f"reference-{len(reference)}.bin")
        reference[name] = {"file": str(tmp / f"reference-{len(reference)}.bin"), "dims": list(out.shape)}

    runs = {}
    for threads in args.threads:
        print(f"onnxruntime-web, {threads} thread(s): timing {len(files)} candidates", file=sys.stderr, flush=True)
        spec = tmp / f"spec-{threads}.json"
        spec.write_text(json.dumps({"files": {n: str(f) for n, f in files.items()}, "reference": reference,
                                    "input": {"file": str(tmp / "input.bin"), "dims": list(x.shape)},
                                    "threads": threads, "rounds": args.rounds, "runs": args.runs, "warmup": 2}))
        done = subprocess.run([node, SCRIPT, spec], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"web_lane.mjs failed: {done.stderr.strip()[-2000:]}")
        runs[threads] = json.loads(done.stdout.strip().splitlines()[-1])

    rows = {}
    for name, file in files.items():
        model = onnx.load(file)
        rows[name] = {"nodes": len(model.graph.node), "mb": file.stat().st_size / 1e6,
                      "ops": sorted({n.op_type for n in model.graph.node if n.domain == "com.microsoft"}),
                      "threads": {}}
        for threads, result in runs.items():
            entry = result["candidates"][name]
            if "error" in entry:
                rows[name]["threads"][threads] = {"error": entry["error"]}
                continue
            rows[name]["threads"][threads] = {"median_ms": statistics.median(entry["times_ms"]),
                                              "min_ms": min(entry["times_ms"]),
                                              "p90_ms": float(np.percentile(entry["times_ms"], 90)),
                                              "runs": len(entry["times_ms"]), "load_ms": entry["load_ms"],
                                              "max_abs_diff_vs_onnxruntime": entry["max_abs_diff"]}
    result = {"variant": args.variant, "batch": 1, "rows": rows, "recommendation": recommend(rows, args.threads),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "onnxruntime_web": runs[args.threads[0]]["onnxruntime_web"], "node": node_version(node),
                          "onnxruntime": ort.__version__, "torch": torch.__version__, **versions}}
    print(table(result, args.threads))
    path = args.json or ROOT / "benchmarks" / "results" / f"web_lane_{args.variant}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def recommend(rows: dict, thread_counts) -> dict:
    """The fastest candidate at each thread count, and its speed-up over transformers' export."""
    best = {}
    for threads in thread_counts:
        timed = {name: row["threads"][threads]["median_ms"] for name, row in rows.items()
                 if "median_ms" in row["threads"][threads]}
        name = min(timed, key=timed.get)
        best[threads] = {"fastest": name, "speedup_vs_transformers": timed[REFERENCE] / timed[name],
                         "fp32_speedup_vs_transformers": timed[REFERENCE] / min(
                             timed[n] for n in timed if "fp32" in n)}
    return best


def node_version(node: str) -> str:
    return subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()


def table(result: dict, thread_counts) -> str:
    rows = result["rows"]
    header = ["", "nodes", "MB", *(f"{t} thr median / min ms" for t in thread_counts),
              *(f"{t} thr vs transformers" for t in thread_counts), "max abs diff"]
    lines = [header]
    for name, row in rows.items():
        cells = [name, str(row["nodes"]), f"{row['mb']:.1f}"]
        for t in thread_counts:
            entry = row["threads"][t]
            cells.append(f"{entry['median_ms']:.1f} / {entry['min_ms']:.1f}" if "median_ms" in entry else "error")
        for t in thread_counts:
            entry, base = row["threads"][t], rows[REFERENCE]["threads"][t]
            cells.append(f"{base['median_ms'] / entry['median_ms']:.2f}x"
                         if "median_ms" in entry and "median_ms" in base else "-")
        diffs = [row["threads"][t].get("max_abs_diff_vs_onnxruntime") for t in thread_counts]
        cells.append(f"{max(d for d in diffs if d is not None):.1e}" if any(d is not None for d in diffs) else "-")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    text.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    machine = result["machine"]
    notes = [f"Hiera-{result['variant']}, batch 1, onnxruntime-web {machine['onnxruntime_web']} (WASM, SIMD build) in "
             f"Node {machine['node']}; max abs diff: WASM against Python onnxruntime {machine['onnxruntime']} on the "
             "same file", "", *text, ""]
    for t, best in result["recommendation"].items():
        notes.append(f"{t} thread(s): fastest {best['fastest']} ({best['speedup_vs_transformers']:.2f}x transformers' "
                     f"export); our best fp32 {best['fp32_speedup_vs_transformers']:.2f}x")
    for name, row in rows.items():
        for t in thread_counts:
            if "error" in row["threads"][t]:
                notes.append(f"{name}, {t} thread(s): {row['threads'][t]['error']}")
    return "\n".join(notes)


if __name__ == "__main__":
    main()
