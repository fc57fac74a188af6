"""Run Hub folders with optimum's onnxruntime models (in the interpreter that has optimum; see clients.py):

    python tests/hub/optimum_run.py JOBS.json

JOBS: a list of {folder, task, file, pixels, out}: task classify loads ORTModelForImageClassification, features
ORTModelForFeatureExtraction; file is a path inside the folder (model.onnx is optimum's default); pixels a .npy of
pixel_values; the outputs are written by name to out (.npz). One process for all jobs: importing optimum is slow.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTModelForImageClassification

for job in json.loads(Path(sys.argv[1]).read_text()):
    file = Path(job["file"])
    model_class = ORTModelForImageClassification if job["task"] == "classify" else ORTModelForFeatureExtraction
    model = model_class.from_pretrained(job["folder"], subfolder="" if file.parent == Path(".") else str(file.parent),
                                        file_name=file.name)
    outputs = model(pixel_values=torch.from_numpy(np.load(job["pixels"])))
    np.savez(job["out"], **{name: value.numpy() for name, value in outputs.items() if value is not None})
