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

from .artifact import ModelInfo, for_foreign_model, from_metadata
from .errors import HieraRuntimeError
from .preprocess import MAX_PIXELS, Preprocessing, load_image
from .session import OnnxSession
from .tensorrt import ENGINE_SUFFIXES, EngineSession


def open_session(path, provider: str = "auto", threads: int | None = None, cache_dir=None,
                 io_binding: bool | None = None):
    """An `OnnxSession` for a `.onnx` file, an `EngineSession` for a TensorRT engine."""
    path = Path(path)
    if path.suffix in ENGINE_SUFFIXES:
        if provider not in ("auto", "tensorrt"):
            raise HieraRuntimeError(f"{path}: a TensorRT engine runs only with TensorRT, not --provider {provider}")
        return EngineSession(path)
    return OnnxSession(path, provider=provider, threads=threads, cache_dir=cache_dir, io_binding=io_binding)


def open_model(path, *, provider: str = "auto", threads: int | None = None, cache_dir=None,
               preprocessing: Preprocessing | None = None, io_binding: bool | None = None):
    """The session and what the artifact says about itself. `preprocessing` is needed only for an ONNX
    file that `python -m export` did not write; it changes nothing for one that it did."""
    session = open_session(path, provider=provider, threads=threads, cache_dir=cache_dir, io_binding=io_binding)
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
            kind = "Classifier" if info.task == "classify" else "FeatureExtractor"
            raise HieraRuntimeError(f"{session.path}: a {info.task} model; load it with {kind}")
        self.session, self.info, self.max_pixels = session, info, max_pixels

    @classmethod
    def load(cls, path, *, max_pixels: int = MAX_PIXELS, **options):
        """Open an exported `.onnx` or TensorRT engine; `options` as for `open_model` (provider, threads,
        cache_dir, preprocessing, io_binding)."""
        return cls(*open_model(path, **options), max_pixels)

    @property
    def providers(self) -> list[str]:
        return self.session.providers

    def preprocess(self, images) -> np.ndarray:
        """Images (one or a list) to the model's input, [n, 3, height, width] float32."""
        images = images if isinstance(images, (list, tuple)) else [images]
        if not images:
            raise HieraRuntimeError("no images given")
        return np.stack([self.info.preprocessing(load_image(image, self.max_pixels)) for image in images])

    def run(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """The model's raw outputs for preprocessed input, whatever its length: a static batch is filled in
        chunks, the last one padded with zeros (and the padding's outputs dropped)."""
        count = len(pixel_values)
        step = self.info.batch or self.session.max_batch or count
        if count == step:
            return self.session.run(pixel_values)
        chunks = []
        for start in range(0, count, step):
            chunk = pixel_values[start:start + step]
            if len(chunk) < step:
                chunk = np.concatenate([chunk, np.zeros((step - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            chunks.append(self.session.run(chunk))
        return {name: np.concatenate([c[name] for c in chunks])[:count] for name in chunks[0]}


class Classifier(_Model):
    tasks = ("classify",)

    def predict(self, images, top_k: int = 5):
        """The `top_k` classes of each image by softmax probability: a list of `Prediction` for one image,
        a list of such lists for a list of images."""
        predictions = self.predict_arrays(self.preprocess(images), top_k)
        return predictions if isinstance(images, (list, tuple)) else predictions[0]

    def predict_arrays(self, pixel_values: np.ndarray, top_k: int = 5) -> list[list[Prediction]]:
        """`predict` for input already preprocessed, [n, 3, height, width]."""
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



def load(path, *, max_pixels: int = MAX_PIXELS, **options) -> Classifier | FeatureExtractor:
    """A `Classifier` or a `FeatureExtractor`, whichever the artifact's task is (options as for `open_model`)."""
    session, info = open_model(path, **options)
    return (Classifier if info.task == "classify" else FeatureExtractor)(session, info, max_pixels)
