"""Every artifact of an export loads and runs in onnxruntime-node and in onnxruntime-web (WASM, in Node), with the
outputs `runtime` (onnxruntime in Python) gives on the same file."""

import numpy as np

from export import Options, run
from runtime import load as load_model

from .clients import load, run_node, save
from .conftest import DIGITS

SAME_FILE = 1e-4  # max abs diff of float outputs between two onnxruntime builds running one file


def test_every_artifact_runs_in_onnxruntime_node_and_web(digits_export, photo_files, tmp_path):
    artifacts, _ = digits_export
    qdq = run(Options(weights=str(DIGITS), out_dir=tmp_path / "qdq", precisions=("qdq",), validate=False,
                      calibration=photo_files[0].parent))
    files = [*artifacts.values(), tmp_path / "qdq" / qdq["artifacts"]["qdq"]["file"]]
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32)
    result = run_node("onnxruntime_js.mjs", {"files": [str(f) for f in files],
                                             "inputs": {"pixel_values": save(tmp_path, "x", x)}}, tmp_path)
    for runtime in ("onnxruntime-node", "onnxruntime-web"):
        for file in files:
            outputs = result[runtime][str(file)]
            assert "error" not in outputs, f"{runtime} {file.name}: {outputs.get('error')}"
            expected = load_model(file, provider="cpu").run(x)["logits"]
            assert np.abs(load(outputs["logits"]) - expected).max() <= SAME_FILE, f"{runtime} {file.name}"
