"""The real clients the hub tests run: Node scripts (transformers.js, onnxruntime-node, onnxruntime-web) and
optimum. Each is found or skipped with the reason; arrays travel as raw files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

JS = Path(__file__).resolve().parent / "js"
DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_}
NPM_INSTALL = "cd tests/hub/js && npm ci --ignore-scripts (or .ci/run)"
# optimum's onnxruntime models pin transformers below 4.58 (optimum-onnx 0.1.0) or 4.54 (optimum 1.27): no release
# installs beside this project's transformers 5. .ci/run installs the pinned set into a folder of its own, which only
# the optimum subprocess puts first on its path; HIERA_OPTIMUM_PATH names that folder.
OPTIMUM_PATH = "HIERA_OPTIMUM_PATH"


def require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (Node.js 18 or later runs transformers.js)")
    if not (JS / "node_modules" / "@huggingface" / "transformers").is_dir():
        pytest.skip(f"transformers.js is not installed: {NPM_INSTALL}")
    return node


def save(directory: Path, name: str, array: np.ndarray) -> dict:
    """An input for a Node script: the array's raw bytes and its description."""
    array = np.ascontiguousarray(array)
    type_ = next(key for key, value in DTYPES.items() if value == array.dtype)
    file = directory / f"{name}.in.bin"
    file.write_bytes(array.tobytes())
    return {"file": str(file), "dims": list(array.shape), "type": type_}


def load(entry: dict) -> np.ndarray:
    return np.fromfile(entry["file"], DTYPES[entry["type"]]).reshape(entry["dims"])


def run_node(script: str, spec: dict, directory: Path, timeout: float = 300) -> dict:
    """Run a script of tests/hub/js with `spec` (written to a file) and return the JSON it prints."""
    node = require_node()
    spec_file = directory / f"{script}.spec.json"
    spec_file.write_text(json.dumps({"out": str(directory), **spec}))
    done = subprocess.run([node, JS / script, spec_file], cwd=JS, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{script} failed: {done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def optimum_command() -> tuple[list[str], dict]:
    """The interpreter and environment that import optimum's onnxruntime models, or a skip saying why not."""
    environment = dict(os.environ)
    overlay = os.environ.get(OPTIMUM_PATH)
    if overlay:
        environment["PYTHONPATH"] = os.pathsep.join([overlay, environment.get("PYTHONPATH", "")])
    probe = subprocess.run([sys.executable, "-c", "import optimum.onnxruntime"], env=environment, capture_output=True,
                           text=True)
    if probe.returncode:
        reason = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "import failed"
        pytest.skip(f"optimum's onnxruntime models are not importable ({reason[:150]}): no optimum release installs "
                    "beside transformers 5 (optimum-onnx pins transformers<4.58); .ci/run installs them apart and "
                    f"sets {OPTIMUM_PATH}")
    return [sys.executable], environment
