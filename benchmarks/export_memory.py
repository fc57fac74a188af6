"""Peak resident memory of a whole default export, against the size of the model it writes.

    python -m benchmarks.export_memory --variant base huge [--baseline REV]

For each variant it runs `python -m export --variant V --weights random` (fp32, fp16, int8, validated) in a
fresh process and reads each stage's peak resident size from the report (the export restarts the kernel's
peak counter at each stage, so the report's figures are per stage and their maximum is the run's peak). The
footprint of the imports alone (torch, onnx, onnxruntime, onnxscript and the export itself) is measured in
another fresh process. The goal: the peak at most 4x the fp32 model's size above that footprint.

`--baseline REV` runs the export of an earlier revision of this repository (from a temporary git worktree)
on the same variant, its whole-process peak measured by the kernel (`ru_maxrss`), so that the table shows
what the change bought in the same run. Prints a table and writes benchmarks/results/export_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 4.0
IMPORTS = ("import torch, onnx, onnxruntime, onnxscript, sklearn, export.pipeline; "
           "print([int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0] / 1024)")


def imports_mb() -> float:
    done = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(done.stdout.strip())


def ours(variant: str, out: Path) -> dict:
    subprocess.run([sys.executable, "-m", "export", "--variant", variant, "--weights", "random", "--out", str(out)],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    report = json.loads((out / f"hiera_{variant}_classify.report.json").read_text())
    fp32 = sum(entry["bytes"] for name, entry in report["files"].items()
               if name.startswith(f"hiera_{variant}_classify.onnx"))
    stages = {name: stage["peak_rss_mb"] for name, stage in report["stages"].items()}
    return {"fp32_mb": fp32 / 1e6, "peak_mb": max(stages.values()), "stages_mb": stages}


def baseline(revision: str, variant: str, out: Path) -> float | None:
    """The whole-process peak of an earlier revision's export of `variant`, in MB; None when it was killed for
    want of memory. (Such a revision must not restart the kernel's peak counter, as this project's export now
    does per stage: every one before that change qualifies.)"""
    tree = out / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), revision], check=True, cwd=ROOT,
                   capture_output=True)
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        done = subprocess.run([sys.executable, "-m", "export", "--variant", variant, "--weights", "random", "--out",
                               str(out / "artifacts")], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if done.returncode == -signal.SIGKILL:  # the kernel's out-of-memory killer: it did not fit this machine
            return None
        done.check_returncode()
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if peak <= before:
            raise SystemExit("the baseline's peak is hidden by an earlier, larger child; run it first or alone")
        return peak / 1024
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", nargs="+", default=["base"])
    parser.add_argument("--baseline", metavar="REV", help="also measure this revision's export (e.g. f5022a9)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export_memory.json")
    args = parser.parse_args()
    footprint = imports_mb()
    rows = []
    for variant in args.variant:
        with tempfile.TemporaryDirectory() as folder:
            before = baseline(args.baseline, variant, Path(folder)) if args.baseline else None
            row = {"variant": variant, "imports_mb": footprint, **ours(variant, Path(folder) / "ours")}
        row["ratio"] = (row["peak_mb"] - footprint) / row["fp32_mb"]
        if args.baseline:
            row.update(baseline_revision=args.baseline, baseline_peak_mb=before,
                       baseline_ratio=None if before is None else (before - footprint) / row["fp32_mb"])
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    header = ["variant", "fp32 MB", "imports MB", "peak MB", "x fp32 above imports", "target"]
    if args.baseline:
        header[3:3] = [f"{args.baseline} peak MB", f"{args.baseline} x"]
    print("| " + " | ".join(header) + " |\n|" + " --- |" * len(header))
    for r in rows:
        cells = [r["variant"], f"{r['fp32_mb']:.0f}", f"{r['imports_mb']:.0f}", f"{r['peak_mb']:.0f}",
                 f"{r['ratio']:.2f}", f"<= {TARGET:g}"]
        if args.baseline:
            killed = r["baseline_peak_mb"] is None
            cells[3:3] = ["killed: out of memory" if killed else f"{r['baseline_peak_mb']:.0f}",
                          "-" if killed else f"{r['baseline_ratio']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    for r in rows:
        print(f"{r['variant']} per stage (MB): " + ", ".join(f"{k} {v:.0f}" for k, v in r["stages_mb"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"target_ratio": TARGET, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
