"""What the export writes and checks for OpenVINO.

The artifact: `hiera_<name>_<task>.openvino.onnx`, the standard-op fp32 graph as torch traced it, with the
artifact's metadata (precision fp32). Measured on Hiera-B (docs/cpu-engines.md): OpenVINO compiles this
graph, onnxruntime's fused one and an IR converted from either into the same kernels, to within noise at
f32 and bf16; it does its own fusions (attention into its MHA subgraphs, GELU into the matmuls). An IR
would only save the ONNX read at start (0.3 s of about 1 s), which the runtime's compiled-model cache
saves as well, and would tie the artifact to an OpenVINO release; the ONNX file runs on any of them and
on every other engine. The fused fp32 artifact is not it: its onnxruntime operators (`com.microsoft`)
are onnxruntime's, and OpenVINO cannot convert the int8 artifact's at all (QAttention).

The report's OpenVINO rows (`parity`): every artifact OpenVINO runs, at each inference precision this CPU
offers, through the runtime as a deployment runs it, against PyTorch fp32, with these bounds:
  fp32 graph, f32: max abs 1e-4 (fp32's)   fp32 graph, bf16: cosine 0.999 (fp16's)
  fp16, f32 or bf16: cosine 0.999          qdq (int8 in OpenVINO), f32 or bf16: cosine 0.99 (qdq's)
"""

from __future__ import annotations

from pathlib import Path

from runtime import load
from runtime.errors import HieraRuntimeError
from runtime.openvino import STANDARD_DOMAINS, check_precision, import_openvino, read_onnx_header, shared_core

from . import parity as checks

ARTIFACT = "openvino"  # its key among the export's precisions; the file is `<stem>.openvino.onnx`
INFERENCE_PRECISIONS = ("f32", "bf16")
# The parity.THRESHOLDS entry that bounds each (artifact precision, inference precision).
BOUNDS = {("fp32", "f32"): "fp32", ("fp32", "bf16"): "fp16", ("fp16", "f32"): "fp16", ("fp16", "bf16"): "fp16",
          ("qdq", "f32"): "qdq", ("qdq", "bf16"): "qdq"}
THREADS = 2


def parity(files: dict[str, Path], reference: dict, inputs: dict, progress=lambda step, message: None) -> dict:
    """OpenVINO's rows of the report. `files`: the artifacts written, by precision (the OpenVINO artifact under
    ARTIFACT); `reference`: PyTorch fp32's outputs on `inputs`. Returns {"version", "cpu", "threads", "rows",
    "passed"}, or {"skipped": reason} without OpenVINO. Each row: the artifact, the inference precision, the
    bound, the parity figures, passed and failures; a bf16 row on a CPU without bf16 says why it is skipped."""
    try:
        ov = import_openvino()
    except HieraRuntimeError as error:
        return {"skipped": str(error)}
    core = shared_core()
    cpu = core.get_property("CPU", "FULL_DEVICE_NAME")
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    rows = []
    for key, path in files.items():
        precision = "fp32" if key == ARTIFACT else key
        if Path(path).suffix != ".onnx" or not read_onnx_header(path).domains <= set(STANDARD_DOMAINS):
            continue  # onnxruntime's fused artifacts, engines
        for inference in INFERENCE_PRECISIONS:
            bound = BOUNDS.get((precision, inference))
            if bound is None:
                continue
            row = {"artifact": Path(path).name, "inference_precision": inference, "bound": checks.THRESHOLDS[bound]}
            try:
                check_precision(inference, capabilities, cpu)
            except HieraRuntimeError as error:
                rows.append({**row, "skipped": str(error)})
                continue
            progress("validate", f"{Path(path).name} in OpenVINO ({inference}) against PyTorch fp32")
            model = load(path, provider="openvino", threads=THREADS, inference_precision=inference, check=False,
                         allow_failed=True)
            result = checks.compare(reference, model.run(**inputs))
            failed = checks.failures(bound, result)
            rows.append({**row, "parity": result, "passed": not failed, "failures": failed})
    return {"version": ov.__version__.split("-")[0], "cpu": cpu, "threads": THREADS, "rows": rows,
            "passed": all(row.get("passed", True) for row in rows)}
