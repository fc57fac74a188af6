"""python -m export (or hiera-export): export Hiera to ONNX; `check-trt` and `verify` check files later.

Exit status, as every command of this project: 0 all good, 1 a check failed (parity, TensorRT, verify),
2 bad input (an option, a file, weights), with one line saying what.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

from hiera_model import HieraModelError
from runtime.errors import HieraRuntimeError
from runtime.shell import FAILED, OK, Number, Parser, Whole, run_command, say

from .errors import ExportError

# What `python -m export` needs beyond the runtime, by the extra that installs it.
NEEDS = {"torch": "model", "safetensors": "model", "onnx": "export", "onnxscript": "export", "onnxruntime": "export",
         "sklearn": "export"}
COMMANDS = {"check-trt": "check ONNX files against TensorRT's parser, without TensorRT",
            "verify": "check an export again: hashes, metadata, report, and parity against weights",
            "hub": "turn an export into the folder the Hugging Face Hub, transformers.js and optimum read"}
# What an interrupted or failed command leaves behind, as its last line says.
STATES = {"hub": "nothing was left half-written"}
STATE = "the output folder is as it was"


def missing_extras() -> str | None:
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    extras = ",".join(sorted({NEEDS[name] for name in missing}, key=["model", "export"].index))
    return (f"python -m export needs {', '.join(missing)}: pip install 'hiera-deploy[model,export]' (install torch "
            f"first, from the wheel you want; missing extra: {extras})")


def parse(argv):
    """The export's `Options`, checked; nothing here imports torch, so that bad arguments are refused at once."""
    from hiera_model import SAM2_TASKS, SAM2_VARIANTS, TASKS, VARIANTS
    from runtime.artifact import MAX_SIDE

    from .onnx_export import MIN_OPSET, max_opset
    from .options import (DECODER_PRECISIONS, DECODER_TASKS, DEFAULT_PRECISIONS, MAX_BATCH, MAX_SEED,
                          MAX_WORKSPACE_GB, PRECISIONS, Options, check)
    from .tensorrt import ENGINE_PRECISIONS, EngineOptions
    from .trt_check import DEFAULT_TARGET

    commands = "\n".join(f"  {name:10s} {about}" for name, about in COMMANDS.items())
    p = Parser(prog="python -m export", formatter_class=argparse.RawDescriptionHelpFormatter,
               description="Export Hiera to ONNX (fp32, fp16, int8, qdq), optimized for onnxruntime, validated "
               "against PyTorch, as one transaction: the output folder gets the whole new set of files or keeps "
               "the old one.",
               epilog=f"other commands (python -m export COMMAND --help):\n{commands}\n\nexit status: 0 ok, 1 a "
               "parity check failed (the artifacts are written and flagged in the report), 2 bad input")
    p.add_argument("--variant", choices=[*VARIANTS, *SAM2_VARIANTS], metavar="NAME", help="published variant: "
                   + ", ".join([*VARIANTS, *SAM2_VARIANTS]) + " (optional with --weights PATH: taken from the "
                   "checkpoint)")
    p.add_argument("--task", default="classify", choices=[*TASKS, *SAM2_TASKS, *DECODER_TASKS], help="classify "
                   "(logits), features (last_hidden_state, pooler_output), backbone (stage1..stage4 maps, NCHW), mae "
                   "(inputs pixel_values and noise; outputs logits, bool_masked_pos, ids_restore) or, for SAM 2 "
                   "variants, image-encoder (image_embeddings, high_res_feats_0, high_res_feats_1) and mask-decoder "
                   "(prompts in, masks and iou_scores out; docs/segment.md), or segmenter (both as one export); "
                   "default classify")
    p.add_argument("--loss", action="store_true", help="mae: also output each image's reconstruction loss")
    p.add_argument("--out-features", nargs="+", metavar="STAGE", help="backbone: the stage maps to output, e.g. "
                   "stage2 stage3 stage4 (default: all)")
    p.add_argument("--weights", help="a local checkpoint (transformers directory, FAIR .pth, timm file), "
                   "'random' for seeded random weights, or 'hub[:REPO_ID]' (the variant's transformers "
                   "checkpoint from the hub; needs a network)")
    p.add_argument("--allow-unverified", action="store_true", help="accept a published checkpoint whose sha256 "
                   "neither models.lock nor the Hub's download records (a warning is printed)")
    p.add_argument("--image-size", type=Whole(1, MAX_SIDE), nargs="+", metavar="N", help="H [W], each 1 to "
                   f"{MAX_SIDE}: export for another input size (one number: square), its position embeddings resized "
                   "as transformers' interpolate_pos_encoding does; the preprocessing follows (default: the "
                   "checkpoint's own size)")
    p.add_argument("--out", type=Path, default=Path("artifacts"), help="output directory (default artifacts/)")
    p.add_argument("--layout", choices=["files", "hub"], default="files", help="hub: the output folder is also the "
                   "folder the Hugging Face Hub, transformers.js and optimum read (config.json, "
                   "preprocessor_config.json, onnx/model*.onnx, model.onnx, a model card), beside our files")
    p.add_argument("--opset", type=Whole(MIN_OPSET, max_opset()), default=17, help=f"ONNX opset, {MIN_OPSET} to "
                   f"{max_opset()} (default 17; {MIN_OPSET} writes LayerNormalization as primitive operators, for "
                   "TensorRT 8.5)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=Whole(1, MAX_BATCH), default=1, help=f"static batch size, 1 to {MAX_BATCH} "
                       "(default 1)")
    batch.add_argument("--dynamic-batch", action="store_true", help=f"make the batch axis dynamic (up to {MAX_BATCH})")
    p.add_argument("--precision", nargs="+", metavar="P",
                   help=f"any of {' '.join(PRECISIONS)} (default: {' '.join(DEFAULT_PRECISIONS)}; the mask decoder: "
                   f"{' '.join(DECODER_PRECISIONS)}); qdq is static int8 for TensorRT and needs --calibration")
    p.add_argument("--calibration", type=Path, metavar="DIR", help="images like the ones the model will see (up "
                   "to 512, searched recursively), to set qdq's int8 scales")
    p.add_argument("--no-optimize", action="store_true", help="write the graph as traced, without fusions")
    p.add_argument("--no-validate", action="store_true", help="skip the parity check against PyTorch")
    p.add_argument("--seed", type=Whole(0, MAX_SEED), default=0, help="seed of random weights and validation inputs "
                   f"(default 0, at most {MAX_SEED})")
    trt = p.add_argument_group("TensorRT", "every export checks its artifacts against TensorRT's ONNX parser and "
                               "puts the trtexec command that builds the engine into the report")
    trt.add_argument("--trt", action="store_true", help="also build the engine here (needs TensorRT and a GPU)")
    trt.add_argument("--trt-version", default=DEFAULT_TARGET, metavar="X.Y", help="the TensorRT the check and the "
                     f"trtexec command target: 8.5 (JetPack 5), 8.6, 10 or 10.x (default {DEFAULT_TARGET})")
    trt.add_argument("--trt-precision", default="fp16", choices=ENGINE_PRECISIONS, help="fp16 (default: strongly "
                     "typed from the fp16 artifact on TensorRT 10), fp32, bf16; int8 and best need a Q/DQ graph")
    trt.add_argument("--max-batch", type=Whole(1, MAX_BATCH), default=8, help="the largest batch of a --dynamic-batch "
                     f"engine, 1 to {MAX_BATCH} (default 8)")
    trt.add_argument("--workspace", type=Number(0, MAX_WORKSPACE_GB), default=4.0, metavar="GB", help="builder "
                     f"workspace, above 0 and at most {MAX_WORKSPACE_GB} (default 4)")
    trt.add_argument("--timing-cache", type=Path, help="a timing cache file, read and updated: rebuilds are faster")
    trt.add_argument("--hardware-compatible", action="store_true", help="an engine for any GPU from Ampere on")
    trt.add_argument("--version-compatible", action="store_true", help="an engine later TensorRT releases of the "
                     "same major version can run")
    a = p.parse_args(argv)
    default = DECODER_PRECISIONS if a.task == "mask-decoder" else DEFAULT_PRECISIONS
    options = Options(variant=a.variant, task=a.task, weights=a.weights, allow_unverified=a.allow_unverified,
                   out_dir=a.out, opset=a.opset, batch=None if a.dynamic_batch else a.batch,
                   precisions=tuple(a.precision or default), calibration=a.calibration,
                   out_features=tuple(a.out_features) if a.out_features else None, loss=a.loss,
                   image_size=tuple(a.image_size) if a.image_size else None, layout=a.layout,
                   optimize=not a.no_optimize, validate=not a.no_validate, seed=a.seed, trt_version=a.trt_version,
                   engine=EngineOptions(precision=a.trt_precision, max_batch=a.max_batch, workspace_gb=a.workspace,
                                        timing_cache=a.timing_cache, hardware_compatible=a.hardware_compatible,
                                        version_compatible=a.version_compatible),
                   build_engine=a.trt)
    return check(options)  # every refusal before torch is imported


def trt_verdict(findings: list[str]) -> str:
    if not findings:
        return "ok"
    # the fused fp32 graph and onnxruntime's int8 are meant for onnxruntime: say so rather than "no"
    return "onnxruntime only" if all("onnxruntime" in f for f in findings) else "no (see report)"


def _figure(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def summary(report: dict) -> str:
    checked_by_trt = [e["tensorrt_check"] for e in report["artifacts"].values() if "tensorrt_check" in e]
    trt = f"TensorRT {checked_by_trt[0]['version']}" if checked_by_trt else "TensorRT"
    rows = [("artifact", "MB", "nodes", "max abs diff", "min cosine", "top-1 agree", trt, "parity")]
    for entry in report["artifacts"].values():
        checked = entry.get("parity")
        first = next((e for e in checked.values() if "max_abs" in e), {}) if checked else {}
        nodes = entry.get("nodes", entry.get("operators"))  # an edge artifact's operators (export/litert.py)
        rows.append((entry["file"], f"{entry['bytes'] / 1e6:.1f}", str(nodes if nodes is not None else "-"),
                     _figure(first.get("max_abs"), ".2e"), _figure(first.get("cosine"), ".6f"),
                     _figure(first.get("top1_agreement"), ".0%"),
                     trt_verdict(entry["tensorrt_check"]["findings"]) if "tensorrt_check" in entry else "-",
                     ("ok" if entry["passed"] else "FAILED: " + "; ".join(entry["failures"])) if checked else
                     entry.get("skipped", "not checked")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def check_trt(argv) -> int:
    """python -m export check-trt FILE.onnx [--trt-version X.Y]: exit 0 when TensorRT's parser takes the graph."""
    from .trt_check import DEFAULT_TARGET, check_file, target

    p = Parser(prog="python -m export check-trt", description="Check, without TensorRT, that an ONNX file is one "
               "TensorRT's ONNX parser builds: operators, opset, ranks, static shapes, types, weight sizes. Exit 0 "
               "when every file passes, 1 when one does not, 2 for a file that is not ONNX.")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--trt-version", default=DEFAULT_TARGET, metavar="X.Y",
                   help=f"8.5 (JetPack 5), 8.6, 10 or 10.x (default {DEFAULT_TARGET})")
    a = p.parse_args(argv)
    target(a.trt_version)
    findings = {file: check_file(file, a.trt_version) for file in a.files}
    for file, found in findings.items():
        say(f"{file}: {'ok' if not found else 'not buildable'} for TensorRT {a.trt_version}")
        for finding in found:
            say(f"  {finding}")
    return FAILED if any(findings.values()) else OK


def verify(argv) -> int:
    """python -m export verify ARTIFACT... [--weights PATH] [--json]: exit 0 when every check holds."""
    p = Parser(prog="python -m export verify", description="Check exported files against their report and "
               "metadata (sha256 of every file, the report's integrity and verdict, the metadata), and with "
               "--weights run their parity against PyTorch again. Exit 0 when every check holds, 1 when one "
               "fails (each failure one line), 2 for bad input.")
    p.add_argument("files", nargs="+", type=Path, metavar="ARTIFACT", help="exported .onnx files or engines, or a "
                   ".report.json (then every file it describes)")
    p.add_argument("--weights", help="the checkpoint the export was made from ('random' for random weights): "
                   "refused unless it is the one the report records; then parity runs again")
    p.add_argument("--allow-unverified", action="store_true", help="accept a published checkpoint whose sha256 "
                   "nothing on disk records")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    a = p.parse_args(argv)
    from .verification import verify as run_verify  # torch: after the arguments are read

    result = run_verify(a.files, a.weights, allow_unverified=a.allow_unverified, progress=_progress())
    if a.json:
        print(json.dumps(result.to_dict(), allow_nan=False))
    else:
        for check in result.checks:
            if not check.ok:
                say(f"FAILED {check.subject}: {check.name}: {check.detail}")
        say(f"{'ok' if result.ok else 'FAILED'}: {len(result.checks) - len(result.failures)} of "
            f"{len(result.checks)} checks hold")
    return OK if result.ok else FAILED


def hub(argv) -> int:
    from .hub import hub_command

    return hub_command(argv)


def _progress():
    started = time.perf_counter()

    def progress(step: str, message: str) -> None:
        say(f"[{time.perf_counter() - started:6.1f}s] {step:9s} {message}", sys.stderr)

    return progress


def export(argv) -> int:
    options = parse(argv)
    if options.task == "mask-decoder":  # SAM 2's decoder: its own export (torch: after the arguments are checked)
        from .mask_decoder import check as check_decoder, run
        check_decoder(options)
    elif options.task == "segmenter":  # SAM 2's encoder and decoder as one export (docs/segment.md)
        from .segmenter import check as check_family, run
        check_family(options)
    else:
        from .pipeline import run  # torch: after the arguments are read and checked

    report = run(options, _progress())
    if report["weights"]["source"].startswith("random:"):
        say(f"note: random weights ({report['weights']['source']}): the graph and its speed are real, "
            "its outputs mean nothing", sys.stderr)
    for line in summary(report).splitlines():
        say(line)
    engine = report.get("tensorrt", {})  # none when only edge formats were made
    if not engine:
        pass
    elif "engine" in engine:
        say(f"engine: {engine['engine']} (TensorRT {engine['version']})")
    elif "plan_error" in engine:
        say(f"TensorRT {engine['version']}: {engine['plan_error']}")
    elif len(engine["trtexec"]) < 400:
        say(f"TensorRT {engine['version']}: build the engine on the GPU machine with  {engine['trtexec']}")
    else:  # a weakly typed build names every fp32 layer: too long for a terminal
        say(f"TensorRT {engine['version']}: the trtexec command that builds the engine on the GPU machine is "
            "tensorrt.trtexec in the report")
    say(f"report: {report['report_file']}")
    if report["passed"] is False:
        say("error: parity checks failed (see the table and the report); the artifacts are kept, flagged in the "
            "report", sys.stderr)
        return FAILED
    return OK


def run(argv) -> int:
    needs = missing_extras()
    if needs:
        raise ExportError(needs)
    command = {"check-trt": check_trt, "verify": verify, "hub": hub}.get(argv[0]) if argv else None
    return command(argv[1:]) if command else export(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    state = STATES.get(argv[0], STATE) if argv else STATE
    return run_command(run, argv, errors=(ExportError, HieraModelError, HieraRuntimeError), state=state)


if __name__ == "__main__":
    sys.exit(main())
