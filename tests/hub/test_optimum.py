"""optimum's onnxruntime models load the Hub folder as it is: logits within 1e-4 of `runtime`'s on the same
pixel_values, for each ONNX file; a feature extractor's `last_hidden_state` too.

optimum runs in a subprocess: no optimum release installs beside this project's transformers 5 (see clients.py)."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from runtime import load

from .clients import optimum_command

SCRIPT = Path(__file__).resolve().parent / "optimum_run.py"
SAME_FILE = 1e-4
FILES = ["model.onnx", "onnx/model.onnx", "onnx/model_fp16.onnx", "onnx/model_quantized.onnx"]


@pytest.fixture(scope="module")
def optimum():
    return optimum_command()  # or skip, before any folder is built


@pytest.fixture(scope="module")
def results(optimum, digits_hub, features_hub, tmp_path_factory):
    """`{(folder, file): (pixel_values, optimum's outputs)}` for the digits folder's files and the features folder."""
    command, environment = optimum
    tmp = tmp_path_factory.mktemp("optimum")
    rng = np.random.default_rng(0)
    jobs, pixels = [], {}
    features_folder = features_hub[0]
    for folder, task, file, size in [*((digits_hub, "classify", f, (64, 64)) for f in FILES),
                                     (features_folder, "features", "model.onnx", load(features_folder / "model.onnx")
                                      .info.input_size)]:
        x = rng.standard_normal((1, 3, *size), dtype=np.float32)
        name = f"{len(jobs)}"
        np.save(tmp / f"{name}.npy", x)
        jobs.append({"folder": str(folder), "task": task, "file": file, "pixels": str(tmp / f"{name}.npy"),
                     "out": str(tmp / f"{name}.npz")})
        pixels[folder, file] = x
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run([*command, SCRIPT, tmp / "jobs.json"], env=environment, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {(Path(job["folder"]), job["file"]): (pixels[Path(job["folder"]), job["file"]], dict(np.load(job["out"])))
            for job in jobs}


@pytest.mark.parametrize("file", FILES)
def test_image_classification_logits(file, digits_hub, results):
    x, got = results[digits_hub, file]
    expected = load(digits_hub / file, provider="cpu").run(x)["logits"]
    assert np.abs(got["logits"] - expected).max() <= SAME_FILE


def test_feature_extraction(features_hub, results):
    folder = features_hub[0]
    x, got = results[folder, "model.onnx"]
    assert np.abs(got["last_hidden_state"] - load(folder / "model.onnx", provider="cpu").run(x)["last_hidden_state"]
                  ).max() <= SAME_FILE
