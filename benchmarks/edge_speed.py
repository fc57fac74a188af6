"""Every engine that runs here on Hiera-T and Hiera-B, interleaved in one process: ms per image at batch 1 with 2
threads, the ratio to transformers' eager model on the same weights, each artifact's size and its export's parity
figure, the CPU's vector extensions and the machine's load average while it was timed (docs/edge.md).

    python -m benchmarks.edge_speed --variant tiny base     # one markdown table on stdout, JSON in benchmarks/results/

The weights are random (seeded) in transformers' layout, saved with `save_pretrained`: transformers' model is the
baseline, and each artifact is made from that folder by `python -m export --precision P` (one folder per precision, so
that no export replaces another's files) and loaded with `runtime.load`. A precision this install cannot make or run
(its extra missing, or not in this version's registry) is a row "not available: <why>", not a crash.
Each round times every candidate of one variant back to back (in turn), so that a load that comes and goes hits all
alike; the figure is the median over the rounds' medians. Each variant's exports go into `--work`/<variant>/, where a
later run reuses them; its figures into `benchmarks/results/edge_speed_<variant>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import HieraConfig, HieraForImageClassification

from export.parity import photographs
from runtime import load
from runtime.bench import MAX_RUNS, time_calls
from runtime.device import cpu_isa, cpu_name
from runtime.shell import Whole

ROOT = Path(__file__).resolve().parents[1]

THREADS = 2
CONFIGS = {"tiny": dict(embed_dim=96, depths=[1, 2, 7, 2], num_heads=[1, 2, 4, 8]),
           "base": dict(embed_dim=96, depths=[2, 3, 16, 3], num_heads=[1, 2, 4, 8])}
# (row, the export's --precision, the runtime's provider)
ENGINES = [("onnxruntime fp32", "fp32", "cpu"), ("onnxruntime int8", "int8", "cpu"),
           ("OpenVINO f32", "openvino", "openvino"),
           ("LiteRT XNNPACK fp32", "litert", "litert"), ("LiteRT XNNPACK fp16", "litert-fp16", "litert"),
           ("LiteRT XNNPACK int8", "litert-int8", "litert"),
           ("ExecuTorch XNNPACK fp32", "executorch", "executorch"),
           ("ExecuTorch XNNPACK int8", "executorch-int8", "executorch")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", nargs="+", choices=CONFIGS, default=["tiny"],
                        help="one or more, measured in turn in this run (default: tiny)")
    parser.add_argument("--rounds", type=Whole(1, MAX_RUNS),
                        default=5)
    parser.add_argument("--runs", type=Whole(1, MAX_RUNS),
                        default=10, help="timed calls per candidate and round")
    parser.add_argument("--work", type=Path, help="where the checkpoint and exports go (default: a temporary folder)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    transformers.logging.set_verbosity_error()
    variants = list(dict.fromkeys(args.variant))
    command = f"python -m benchmarks.edge_speed --variant {' '.join(variants)}"
    results, written = [], []
    with tempfile.TemporaryDirectory() as temporary:
        for variant in variants:
            result = measure(variant, (args.work or Path(temporary)) / variant, args.rounds, args.runs)
            result["command"] = command
            out = ROOT / "benchmarks" / "results" / f"edge_speed_{variant}.json"
            out.write_text(json.dumps(result, indent=1) + "\n")
            results.append(result)
            written.append(str(out.relative_to(ROOT)))
    print(table(results))
    print(f"\nwritten: {', '.join(written)}")


def measure(variant: str, work: Path, rounds: int, runs: int) -> dict:
    torch.manual_seed(0)
    config = HieraConfig(**CONFIGS[variant], num_labels=1000)
    reference = HieraForImageClassification(config).eval()
    checkpoint, photos = work / "checkpoint", work / "photos"
    reference.save_pretrained(checkpoint)
    photos.mkdir(parents=True, exist_ok=True)
    for name, image in photographs().items():
        image.save(photos / name, quality=95)
    pixels = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    with torch.no_grad():
        want = reference(torch.from_numpy(pixels)).logits.numpy()

    def eager():
        with torch.no_grad():
            return reference(torch.from_numpy(pixels)).logits

    candidates, rows = {"transformers eager (PyTorch fp32)": eager}, {}
    rows["transformers eager (PyTorch fp32)"] = {"precision": "-", "bytes": None, "parity": "reference"}
    for row, precision, provider in ENGINES:
        entry, why = export(checkpoint, photos, work / precision, precision)
        if entry is None:
            rows[row] = {"precision": precision, "not_available": why}
            print(f"{row}: not available: {why}", file=sys.stderr, flush=True)
            continue
        try:
            model = load(work / precision / entry["file"], provider=provider, threads=THREADS)
        except Exception as error:  # noqa: BLE001 (a row says why, the table goes on)
            rows[row] = {"precision": precision, "not_available": f"{type(error).__name__}: {error}"}
            continue
        got = model.run(pixels)["logits"]
        logits = (entry.get("parity") or {}).get("logits", {})
        rows[row] = {"precision": precision, "bytes": entry.get("bytes"), "max_rank": entry.get("max_rank"),
                     "parity": {"max_abs_diff": logits.get("max_abs"), "min_cosine": logits.get("cosine"),
                                "passed": entry.get("passed")},
                     "max_abs_diff_to_transformers": float(np.abs(got - want).max()),
                     "providers": model.providers}
        candidates[row] = lambda model=model: model.run(pixels)
    timings = {row: [] for row in candidates}
    load_before = os.getloadavg()[0]
    for round_ in range(rounds):
        order = list(candidates)[round_ % len(candidates):] + list(candidates)[:round_ % len(candidates)]
        for row in order:
            timings[row].append(statistics.median(time_calls(candidates[row], runs, 2)) * 1000)
    # PyTorch's OpenMP threads suffer most from the other engines' threads spinning after their calls (and from a
    # shared machine): its rounds spread widely, so the fastest round is given beside the median, with its ratio.
    baseline = statistics.median(timings["transformers eager (PyTorch fp32)"])
    best = min(timings["transformers eager (PyTorch fp32)"])
    for row, times in timings.items():
        rows[row].update(ms=round(statistics.median(times), 2), ratio=round(statistics.median(times) / baseline, 3),
                         best_ms=round(min(times), 2), best_ratio=round(min(times) / best, 3),
                         rounds_ms=[round(t, 2) for t in times])
    # the 1-minute load average as the timing began and ended: above the threads used, other work shared the cores
    load_average = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return {"variant": f"Hiera-{variant[0].upper()}", "batch": 1, "threads": THREADS, "input": [1, 3, 224, 224],
            "cpu_isa": list(cpu_isa()), "cpu": cpu_name(), "load_average": load_average, "cores": os.cpu_count(),
            "rounds": rounds, "runs_per_round": runs, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "rows": rows}


def export(checkpoint: Path, photos: Path, out: Path, precision: str) -> tuple[dict | None, str]:
    """This precision's report entry from `python -m export` (an export already in `out` is reused: remove the folder
    to make it again), or None and the export's one line of why not."""
    reports = sorted(out.glob("*.report.json")) if out.is_dir() else []
    if reports:
        return json.loads(reports[0].read_text())["artifacts"][precision], ""
    done = subprocess.run([sys.executable, "-m", "export", "--weights", str(checkpoint), "--precision", precision,
                           "--calibration", str(photos), "--batch", "1", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    reports = sorted(out.glob("*.report.json")) if out.is_dir() else []
    if done.returncode not in (0, 1) or not reports:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        return None, lines[-1] if lines else f"python -m export exited {done.returncode}"
    report = json.loads(reports[0].read_text())
    return report["artifacts"][precision], ""


def table(results: list[dict]) -> str:
    """One markdown table for every variant measured, under a line with the CPU, its ISA and each variant's load."""
    first = results[0]
    loads = "; ".join(f"{r['variant']} {r['load_average'][0]:.1f} to {r['load_average'][1]:.1f}" for r in results)
    lines = [f"batch 1, {first['threads']} threads, {first['cpu']} ({' '.join(first['cpu_isa'])}), "
             f"{first['cores']} cores, load average while timed: {loads}; median of {first['rounds']} interleaved "
             f"rounds of {first['runs_per_round']} calls; `{first['command']}`", "",
             "| model | engine | ms (median) | ratio to eager | ms (fastest round) | ratio | size MB | max rank | "
             "parity vs PyTorch | max abs diff vs transformers |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for result in results:
        lines += [f"| {result['variant']} | {line}" for line in table_rows(result)]
    return "\n".join(lines)


def table_rows(result: dict) -> list[str]:
    """One variant's rows of the table, each without its first column."""
    lines = []
    for row, entry in result["rows"].items():
        if "not_available" in entry:
            lines.append(f"{row} | not available: {entry['not_available']} | | | | | | | |")
            continue
        parity = entry["parity"]
        if isinstance(parity, dict):
            parity = (f"max abs {parity['max_abs_diff']:.1e}, cosine {parity['min_cosine']:.5f}, "
                      f"{'passed' if parity['passed'] else 'FAILED'}") if parity["max_abs_diff"] is not None else "-"
        size = f"{entry['bytes'] / 1e6:.1f}" if entry.get("bytes") else "-"
        diff = entry.get("max_abs_diff_to_transformers")
        lines.append(f"{row} | {entry['ms']:.1f} | {entry['ratio']:.2f} | {entry['best_ms']:.1f} | "
                     f"{entry['best_ratio']:.2f} | {size} | {entry.get('max_rank', '-')} | "
                     f"{parity} | {'-' if diff is None else f'{diff:.1e}'} |")
    return lines


if __name__ == "__main__":
    main()
