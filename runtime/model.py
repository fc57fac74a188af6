"""The Python API: `Classifier` and `FeatureExtractor`, loaded from an exported artifact.

    from runtime import Classifier
    model = Classifier.load("artifacts/hiera_base_classify.onnx")
    model.predict("cat.jpg", top_k=5)       # [Prediction(index=281, label="tabby, tabby cat", score=0.91), ...]

Images may be paths, PIL images or HWC uint8 arrays, one or a list. The artifact's metadata says how to
preprocess them and what the outputs mean; a static batch is filled in chunks (the last one padded),
a dynamic one takes all images at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import openvino, reconstruct
from .artifact import ModelInfo, for_foreign_model, from_metadata
from .errors import HieraRuntimeError
from .preprocess import MAX_PIXELS, Preprocessing, load_clip, load_image
from .session import OnnxSession
from .tensorrt import ENGINE_SUFFIXES, EngineSession


def open_session(path, provider: str = "auto", threads: int | None = None, cache_dir=None,
                 io_binding: bool | None = None, inference_precision: str | None = None):
    """An `OnnxSession` for a `.onnx` file, an `EngineSession` for a TensorRT engine, an `OpenVinoSession` with
    provider "openvino" or an OpenVINO IR (`.xml`). `auto` takes OpenVINO on an x86 CPU where it is installed
    and the file holds only standard operators (`openvino.runs_best_here`), and whenever `inference_precision`
    is "bf16", which only OpenVINO offers."""
    path = Path(path)
    if path.suffix in ENGINE_SUFFIXES:
        if provider not in ("auto", "tensorrt"):
            raise HieraRuntimeError(f"{path}: a TensorRT engine runs only with TensorRT, not --provider {provider}")
        return EngineSession(path)
    if provider == "openvino" or (provider == "auto" and (
            inference_precision == "bf16" or openvino.runs_best_here(path))):
        return openvino.OpenVinoSession(path, threads=threads, inference_precision=inference_precision or "f32",
                                        cache_dir=cache_dir)
    if inference_precision not in (None, "f32"):
        raise HieraRuntimeError(f"inference precision {inference_precision}: OpenVINO's (provider openvino or auto), "
                                f"not onnxruntime's {provider} provider, which runs the artifact's own precision")
    return OnnxSession(path, provider=provider, threads=threads, cache_dir=cache_dir, io_binding=io_binding)


def open_model(path, *, provider: str = "auto", threads: int | None = None, cache_dir=None,
               preprocessing: Preprocessing | None = None, io_binding: bool | None = None,
               inference_precision: str | None = None):
    """The session and what the artifact says about itself. `preprocessing` is needed only for an ONNX
    file that `python -m export` did not write; it changes nothing for one that it did."""
    session = open_session(path, provider=provider, threads=threads, cache_dir=cache_dir, io_binding=io_binding,
                           inference_precision=inference_precision)
    if preprocessing is not None and not any(key.startswith("hiera.") for key in session.metadata):
        return session, for_foreign_model(session.path, session.input_shape, session.output_names, preprocessing)
    return session, from_metadata(session.metadata, session.path)


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str | None  # None when the artifact carries no class names
    score: float  # softmax probability

    def to_dict(self) -> dict:
        return asdict(self)


class _Model:
    tasks: tuple[str, ...]

    def __init__(self, session, info: ModelInfo, max_pixels: int = MAX_PIXELS):
        if info.task not in self.tasks:
            kind = model_class(info.task).__name__
            raise HieraRuntimeError(f"{session.path}: a {info.task} model; load it with {kind}")
        self.session, self.info, self.max_pixels = session, info, max_pixels

    @classmethod
    def load(cls, path, *, max_pixels: int = MAX_PIXELS, **options):
        """Open an exported `.onnx` or TensorRT engine; `options` as for `open_model` (provider, threads,
        cache_dir, preprocessing, io_binding, inference_precision)."""
        return cls(*open_model(path, **options), max_pixels)

    @property
    def providers(self) -> list[str]:
        return self.session.providers

    def items(self, inputs) -> tuple[list, bool]:
        """The images (clips, for a video model) in `inputs`, and whether a list of them was given. A clip is
        a path or a list of frames; a list of Pillow images or arrays given to a video model is one clip."""
        frames = (Image.Image, np.ndarray)
        several = isinstance(inputs, (list, tuple)) and not (
            self.info.preprocessing.frames and inputs and all(isinstance(x, frames) for x in inputs))
        items = list(inputs) if several else [inputs]
        if not items:
            raise HieraRuntimeError("no images given")
        return items, several

    def preprocess(self, inputs) -> np.ndarray:
        """Images (one or a list) to the model's input, [n, 3, height, width] float32; clips to [n, 3, frames,
        height, width]."""
        p = self.info.preprocessing
        items, _ = self.items(inputs)
        if p.frames:
            return np.stack([p.clip(load_clip(clip, p.frames, p.frame_stride, self.max_pixels)) for clip in items])
        return np.stack([p(load_image(image, self.max_pixels)) for image in items])

    def run(self, pixel_values: np.ndarray, **other_inputs: np.ndarray) -> dict[str, np.ndarray]:
        """The model's raw outputs for preprocessed input (and any further inputs, one row per image), whatever
        its length: a static batch is filled in chunks, the last one padded with zeros (and the padding's
        outputs dropped)."""
        count = len(pixel_values)
        step = self.info.batch or self.session.max_batch or count
        if count == step:
            return self.session.run(pixel_values, **other_inputs)
        inputs = {"pixel_values": pixel_values, **other_inputs}
        chunks = []
        for start in range(0, count, step):
            chunk = {name: array[start:start + step] for name, array in inputs.items()}
            chunk = {name: np.concatenate([array, np.zeros((step - len(array), *array.shape[1:]), array.dtype)])
                     for name, array in chunk.items()}
            chunks.append(self.session.run(**chunk))
        return {name: np.concatenate([c[name] for c in chunks])[:count] for name in chunks[0]}


class Classifier(_Model):
    tasks = ("classify",)

    def predict(self, images, top_k: int = 5):
        """The `top_k` classes of each image (or clip) by softmax probability: a list of `Prediction` for one,
        a list of such lists for a list of them."""
        _, several = self.items(images)
        predictions = self.predict_arrays(self.preprocess(images), top_k)
        return predictions if several else predictions[0]

    def predict_arrays(self, pixel_values: np.ndarray, top_k: int = 5) -> list[list[Prediction]]:
        """`predict` for input already preprocessed, [n, 3, height, width] (clips: [n, 3, frames, height, width])."""
        if top_k < 1:
            raise HieraRuntimeError(f"top_k {top_k}: must be at least 1")
        outputs = self.run(pixel_values)
        logits = outputs.get("logits", next(iter(outputs.values()))).astype(np.float64)
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        k = min(top_k, probabilities.shape[1])
        top = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]  # the k best, unordered: no full sort
        scores = np.take_along_axis(probabilities, top, axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")
        top, scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(scores, order, axis=1)
        return [[Prediction(i, self.info.label(i), s) for i, s in zip(indices, values)]
                for indices, values in zip(top.tolist(), scores.tolist())]


class FeatureExtractor(_Model):
    tasks = ("features", "backbone")

    def extract(self, images) -> dict[str, np.ndarray]:
        """The outputs for one image or a list of them, by name (`last_hidden_state` and `pooler_output`, or
        a backbone's `stage1`.. maps, NCHW), each with a leading axis of one entry per image."""
        return self.run(self.preprocess(images))


class Reconstructor(_Model):
    """An MAE pretraining model: it sees an image with most of its mask units hidden and predicts them."""

    tasks = ("mae",)

    def noise(self, count: int, seed: int = 0) -> np.ndarray:
        """The masking input for `count` images, [count, mask units]: the units with the lowest noise stay
        visible (as many as the exported mask ratio leaves)."""
        return np.random.default_rng(seed).random((count, self.info.mae["mask_units"]), dtype=np.float32)

    def reconstruct(self, images, seed: int = 0) -> list[dict[str, np.ndarray]]:
        """For each image, the `original`, `masked` and `reconstruction` pictures (HWC uint8), with the mask
        drawn from `seed`."""
        pixel_values = self.preprocess(images)
        outputs = self.run(pixel_values, noise=self.noise(len(pixel_values), seed))
        mae = self.info.mae
        return [reconstruct.panels(pixels, logits, visible, self.info.preprocessing, mae["pred_stride"],
                                   mae["norm_pix_loss"])
                for pixels, logits, visible in zip(pixel_values, outputs["logits"], outputs["bool_masked_pos"])]


def model_class(task: str) -> type[_Model]:
    return {"classify": Classifier, "mae": Reconstructor}.get(task, FeatureExtractor)


def load(path, *, max_pixels: int = MAX_PIXELS, **options) -> Classifier | FeatureExtractor | Reconstructor:
    """A `Classifier`, `FeatureExtractor` or `Reconstructor`, whichever the artifact's task asks for (options
    as for `open_model`)."""
    session, info = open_model(path, **options)
    return model_class(info.task)(session, info, max_pixels)
