"""python -m export --variant base --opset 17: write the ONNX artifacts, their report and a summary."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hiera_model import TASKS, VARIANTS

from .errors import ExportError
from .pipeline import DEFAULT_PRECISIONS, PRECISIONS, Options, run
from .tensorrt import EngineOptions
from .trt_check import DEFAULT_TARGET, check_file, target


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other error of the command
        self.exit(2, f"error: {message} (see python -m export --help)\n")


def parse(argv) -> Options:
    p = Parser(prog="python -m export", description="Export Hiera to ONNX (fp32, fp16, int8), optimized for "
               "onnxruntime, with a parity report against PyTorch.")
    p.add_argument("--variant", help="published variant: " + ", ".join(VARIANTS)
                   + " (optional with --weights PATH: taken from the checkpoint)")
    p.add_argument("--task", default="classify", help="classify (logits), features (last_hidden_state, "
                   "pooler_output), backbone (stage1..stage4 maps, NCHW) or mae (inputs pixel_values and noise; "
                   "outputs logits, bool_masked_pos, ids_restore); default classify")
    p.add_argument("--loss", action="store_true", help="mae: also output each image's reconstruction loss")
    p.add_argument("--out-features", nargs="+", metavar="STAGE", help="backbone: the stage maps to output, e.g. "
                   "stage2 stage3 stage4 (default: all)")
    p.add_argument("--weights", help="a local checkpoint (transformers directory, FAIR .pth, timm file), "
                   "'random' for seeded random weights, or 'hub[:REPO_ID]' (default: the variant's transformers "
                   "checkpoint from the hub)")
    p.add_argument("--allow-unverified", action="store_true", help="accept a published checkpoint whose sha256 "
                   "models.lock does not record yet (a warning is printed; record it with python -m hiera_model "
                   "lock fill FILE)")
    p.add_argument("--out", type=Path, default=Path("artifacts"), help="output directory (default artifacts/)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or later (default 17)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=1, help="static batch size (default 1)")
    batch.add_argument("--dynamic-batch", action="store_true", help="make the batch axis dynamic")
    p.add_argument("--precision", nargs="+", default=list(DEFAULT_PRECISIONS), metavar="P",
                   help=f"any of {' '.join(PRECISIONS)} (default: {' '.join(DEFAULT_PRECISIONS)}); qdq is static "
                   "int8 for TensorRT and needs --calibration")
    p.add_argument("--calibration", type=Path, metavar="DIR", help="images like the ones the model will see (up "
                   "to 512, searched recursively), to set qdq's int8 scales")
    p.add_argument("--no-optimize", action="store_true", help="write the graph as traced, without fusions")
    p.add_argument("--no-validate", action="store_true", help="skip the parity check against PyTorch")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights and validation inputs")
    trt = p.add_argument_group("TensorRT", "every export checks its artifacts against TensorRT's ONNX parser and "
                               "puts the trtexec command that builds the engine into the report")
    trt.add_argument("--trt", action="store_true", help="also build the engine here (needs TensorRT and a GPU)")
    trt.add_argument("--trt-version", default=DEFAULT_TARGET, metavar="X.Y", help="the TensorRT the check and the "
                     f"trtexec command target: 8.5 (JetPack 5), 8.6, 10 or 10.x (default {DEFAULT_TARGET})")
    trt.add_argument("--trt-precision", default="fp16", help="fp16 (default: strongly typed from the fp16 "
                     "artifact on TensorRT 10), fp32, bf16; int8, fp8 and best need a Q/DQ graph")
    trt.add_argument("--max-batch", type=int, default=8, help="the largest batch of a --dynamic-batch engine "
                     "(default 8)")
    trt.add_argument("--workspace", type=float, default=4.0, metavar="GB", help="builder workspace (default 4)")
    trt.add_argument("--timing-cache", type=Path, help="a timing cache file, read and updated: rebuilds are faster")
    trt.add_argument("--hardware-compatible", action="store_true", help="an engine for any GPU from Ampere on")
    trt.add_argument("--version-compatible", action="store_true", help="an engine later TensorRT releases of the "
                     "same major version can run")
    a = p.parse_args(argv)
    if a.max_batch < 1 or a.workspace <= 0:
        p.error("--max-batch and --workspace must be positive")
    if a.task not in TASKS:
        p.error(f"--task {a.task}: choose from {', '.join(TASKS)}")
    return Options(variant=a.variant, task=a.task, weights=a.weights, allow_unverified=a.allow_unverified,
                   out_dir=a.out, opset=a.opset,
                   batch=None if a.dynamic_batch else a.batch, precisions=tuple(a.precision),
                   calibration=a.calibration, out_features=tuple(a.out_features) if a.out_features else None,
                   loss=a.loss, optimize=not a.no_optimize, validate=not a.no_validate, seed=a.seed,
                   trt_version=a.trt_version,
                   engine=EngineOptions(precision=a.trt_precision, max_batch=a.max_batch, workspace_gb=a.workspace,
                                        timing_cache=a.timing_cache, hardware_compatible=a.hardware_compatible,
                                        version_compatible=a.version_compatible),
                   build_engine=a.trt)


def trt_verdict(findings: list[str]) -> str:
    if not findings:
        return "ok"
    # the fused fp32 graph and onnxruntime's int8 are meant for onnxruntime: say so rather than "no"
    return "onnxruntime only" if all("onnxruntime" in f for f in findings) else "no (see report)"


def summary(report: dict) -> str:
    trt = f"TensorRT {next(iter(report['artifacts'].values()))['tensorrt_check']['version']}"
    rows = [("artifact", "MB", "nodes", "max abs diff", "min cosine", "top-1 agree", trt, "parity")]
    for entry in report["artifacts"].values():
        checked = entry.get("parity")
        first = next(iter(checked.values())) if checked else {}
        rows.append((entry["file"], f"{entry['bytes'] / 1e6:.1f}", str(entry["nodes"]),
                     f"{first['max_abs']:.2e}" if first else "-", f"{first['cosine']:.6f}" if first else "-",
                     f"{first['top1_agreement']:.0%}" if "top1_agreement" in first else "-",
                     trt_verdict(entry["tensorrt_check"]["findings"]),
                     ("ok" if entry["passed"] else "FAILED: " + "; ".join(entry["failures"])) if checked else
                     "not checked"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def check_trt(argv) -> int:
    """python -m export check-trt FILE.onnx [--trt-version X.Y]: exit 0 when TensorRT's parser takes the graph."""
    p = Parser(prog="python -m export check-trt", description="Check, without TensorRT, that an ONNX file is one "
               "TensorRT's ONNX parser builds: operators, opset, ranks, static shapes, types, weight sizes.")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--trt-version", default=DEFAULT_TARGET, metavar="X.Y",
                   help=f"8.5 (JetPack 5), 8.6, 10 or 10.x (default {DEFAULT_TARGET})")
    a = p.parse_args(argv)
    try:
        target(a.trt_version)
    except ValueError as error:
        p.error(f"--trt-version: {error}")
    failed = False
    for file in a.files:
        try:
            findings = check_file(file, a.trt_version)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        failed |= bool(findings)
        print(f"{file}: {'ok' if not findings else 'not buildable'} for TensorRT {a.trt_version}")
        for finding in findings:
            print(f"  {finding}")
    return 1 if failed else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check-trt"]:
        return check_trt(argv[1:])
    if argv[:1] == ["hub"]:
        from .hub import hub_command

        return hub_command(argv[1:])
    options = parse(argv)
    started = time.perf_counter()

    def progress(step: str, message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {step:9s} {message}", file=sys.stderr, flush=True)

    try:
        report = run(options, progress)
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no finished artifact was left half-written", file=sys.stderr)
        return 130
    if report["weights"]["source"].startswith("random:"):
        print(f"note: random weights ({report['weights']['source']}): the graph and its speed are real, "
              "its outputs mean nothing", file=sys.stderr)
    print(summary(report))
    engine = report["tensorrt"]
    if "engine" in engine:
        print(f"engine: {engine['engine']} (TensorRT {engine['version']})")
    elif "plan_error" in engine:
        print(f"TensorRT {engine['version']}: {engine['plan_error']}")
    elif len(engine["trtexec"]) < 400:
        print(f"TensorRT {engine['version']}: build the engine on the GPU machine with  {engine['trtexec']}")
    else:  # a weakly typed build names every fp32 layer: too long for a terminal
        print(f"TensorRT {engine['version']}: the trtexec command that builds the engine on the GPU machine is "
              "tensorrt.trtexec in the report")
    print(f"report: {report['report_file']}")
    if report["passed"] is False:
        print("error: parity checks failed (see the table and the report); the artifacts are kept, flagged in the "
              "report", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
