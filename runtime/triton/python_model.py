"""The python-backend model that `python -m runtime triton` writes as `1/model.py` of each python step.

One file for every step; the model's config says which one it is (parameter `hiera_step`):
- `preprocess`: encoded image files (TYPE_STRING, one per batch row) -> `pixel_values`, with `runtime`'s own
  decoding and the artifact's preprocessing, as `python -m runtime predict` does for a file;
- `model`: the artifact itself, run by `runtime` (onnxruntime, or TensorRT for an engine);
- `postprocess`: a classifier's logits -> softmax top-k `scores`, `indices` and `labels`, ranked by
  `runtime.model.rank`, as every classifier front end ranks them.

This file runs inside Triton's python backend stub, not in this package: it imports only the standard library
until the import paths are set. The stub imports it, then `triton_python_backend_utils` (which needs numpy), so
the paths the repository was written with (`python_path.json` beside config.pbtxt, from `--python-path`) must
be on `sys.path` when this module is imported, not later.
"""

import json
import os
import sys
import tempfile

_MODEL_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PATHS = os.path.join(_MODEL_DIR, "python_path.json")
if os.path.isfile(_PATHS):  # numpy, Pillow, onnxruntime and hiera-deploy where the server's Python lacks them
    with open(_PATHS) as _file:
        sys.path[:0] = [path for path in json.load(_file) if path not in sys.path]

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from runtime import HieraRuntimeError, Preprocessing, load  # noqa: E402
from runtime.model import non_finite, rank  # noqa: E402
from runtime.preprocess import load_clip, load_image  # noqa: E402


def _parameters(args) -> dict:
    config = json.loads(args["model_config"])
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def _error(message: str, code=None):
    """An error response for one request: INTERNAL unless given (INVALID_ARG for what the client sent)."""
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(error=error)


class Preprocess:
    """Each row's encoded file through what `runtime predict` does with a file of the same bytes."""

    def __init__(self, parameters: dict, args):
        self.preprocessing = Preprocessing.from_dict(json.loads(parameters["preprocessing"]))
        self.max_pixels = int(parameters["max_pixels"])
        self.dtype = np.dtype(parameters["dtype"])

    def decode(self, data: bytes) -> np.ndarray:
        # runtime's decoding reads files (its checks, its messages); a request's bytes go through the same
        # code from a temporary file.
        with tempfile.NamedTemporaryFile(prefix="hiera-image-") as file:
            file.write(data)
            file.flush()
            p = self.preprocessing
            if p.frames:  # a video model: each row is one clip (a multi-frame file)
                return p.clip(load_clip(file.name, p.frames, p.frame_stride, self.max_pixels))
            return p(load_image(file.name, self.max_pixels))

    def execute(self, requests) -> list:
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
            try:
                pixels = []
                for index, data in enumerate(rows):
                    try:
                        pixels.append(self.decode(bytes(data)))
                    except HieraRuntimeError as error:  # the message names the temporary file: name the row
                        reason = str(error).split(": ", 1)[-1]
                        raise HieraRuntimeError(f"image {index + 1} of {len(rows)}: {reason}") from None
            except HieraRuntimeError as error:
                responses.append(_error(str(error), pb_utils.TritonError.INVALID_ARG))
                continue
            pixel_values = np.stack(pixels).astype(self.dtype, copy=False)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("pixel_values", pixel_values)]))
        return responses


class Model:
    """The artifact, run by `runtime`: all requests of a dynamic batch in one call."""

    def __init__(self, parameters: dict, args):
        version_dir = os.path.dirname(os.path.abspath(__file__))
        provider = "cpu" if args["model_instance_kind"] == "CPU" else "auto"
        errors = []
        for name in json.loads(parameters["artifacts"]):  # engines for several GPUs: the first one this GPU runs
            try:
                self.model = load(os.path.join(version_dir, name), provider=provider)
                break
            except HieraRuntimeError as error:
                errors.append(str(error))
        else:
            raise pb_utils.TritonModelException("; ".join(errors))
        self.outputs = json.loads(parameters["outputs"])

    def execute(self, requests) -> list:
        inputs = [pb_utils.get_input_tensor_by_name(r, "pixel_values").as_numpy() for r in requests]
        try:
            outputs = self.model.run(np.concatenate(inputs))
        except HieraRuntimeError as error:
            return [_error(str(error)) for _ in requests]
        responses, start = [], 0
        for rows in inputs:
            stop = start + len(rows)
            responses.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor(name, np.ascontiguousarray(outputs[name][start:stop])) for name in self.outputs]))
            start = stop
        return responses


class Postprocess:
    def __init__(self, parameters: dict, args):
        labels = json.loads(parameters["labels"]) or []
        self.label = lambda index: labels[index] if index < len(labels) else None
        self.top_k = int(parameters["top_k"])

    def execute(self, requests) -> list:
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "logits").as_numpy()
            if problem := non_finite({"logits": logits}):  # an answer for this request only, never NaN scores
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(problem)))
                continue
            predictions = rank(logits, self.top_k, self.label)
            scores = np.array([[p.score for p in row] for row in predictions], np.float32)
            indices = np.array([[p.index for p in row] for row in predictions], np.int64)
            labels = np.array([[(p.label or "").encode() for p in row] for row in predictions], np.object_)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("scores", scores),
                                                         pb_utils.Tensor("indices", indices),
                                                         pb_utils.Tensor("labels", labels)]))
        return responses


STEPS = {"preprocess": Preprocess, "model": Model, "postprocess": Postprocess}


class TritonPythonModel:
    def initialize(self, args):
        parameters = _parameters(args)
        try:
            self.step = STEPS[parameters["hiera_step"]](parameters, args)
        except HieraRuntimeError as error:
            raise pb_utils.TritonModelException(str(error)) from None

    def execute(self, requests):
        return self.step.execute(requests)
