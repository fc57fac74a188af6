"""The Python API: `Classifier` and `FeatureExtractor`, loaded from an exported artifact.

    from runtime import Classifier
    model = Classifier.load("artifacts/hiera_base_classify.onnx")
    model.predict("cat.jpg", top_k=5)       # [Prediction(index=281, label="tabby, tabby cat", score=0.91), ...]

Images may be paths, PIL images or HWC uint8 arrays, one or a list. The artifact's metadata says how to
preprocess them and what the outputs mean. Work goes to the session in batches, split in one place
(`_Model.batch_size`): a static batch takes its own size (the last one padded with zeros), a dynamic one
`batch_size` images at a time (default 8), within what the session can run. `outcomes` streams a list of
any length batch by batch, keeping each image's failure to itself; the CLI runs on it.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import executorch, litert, openvino, probe, reconstruct
from .artifact import MAX_BATCH, ModelInfo, for_foreign_model, from_metadata, report_verdict
from .errors import HieraRuntimeError, MissingMetadata
from .preprocess import MAX_PIXELS, Preprocessing, load_clip, load_image
from .session import OnnxSession
from .tensorrt import ENGINE_SUFFIXES, EngineSession

DEFAULT_BATCH_SIZE = 8  # images per call for a dynamic batch, unless asked otherwise
MAX_TOP_K = 1000  # the most classes per image a command line lists (ImageNet's 1000 are all of them)


def open_session(path, provider: str = "auto", threads: int | None = None, cache_dir=None,
                 io_binding: bool | None = None, inference_precision: str | None = None):
    """A `LiteRtSession` for a `.tflite` file (provider auto, cpu or litert), an `OnnxSession` for a `.onnx` file, an
    `EngineSession` for a TensorRT engine, an `OpenVinoSession` with
    provider "openvino" or an OpenVINO IR (`.xml`). `auto` takes OpenVINO on an x86 CPU where it is installed
    and the file holds only standard operators (`openvino.runs_best_here`), and whenever `inference_precision`
    is "bf16", which only OpenVINO offers."""
    path = Path(path)
    if path.suffix in probe.NOT_RUN_HERE:  # a Core ML package: no engine here runs it
        raise HieraRuntimeError(f"{path}: {probe.NOT_RUN_HERE[path.suffix]}")
    if path.suffix == litert.SUFFIX or provider == "litert":  # LiteRT runs .tflite files, and only it does
        if path.suffix != litert.SUFFIX:
            raise HieraRuntimeError(f"{path}: provider litert runs .tflite artifacts only")
        if provider not in ("auto", "cpu", "litert"):
            raise HieraRuntimeError(f"{path}: a .tflite artifact runs with LiteRT on the CPU (provider auto, cpu or "
                                    f"litert), not provider {provider!r}")
        return litert.LiteRtSession(path, threads=threads)
    if path.suffix == executorch.SUFFIX or provider == "executorch":  # XNNPACK is ExecuTorch's CPU backend
        if path.suffix != executorch.SUFFIX or provider not in ("auto", "cpu", "executorch"):
            raise HieraRuntimeError(f"{path}: provider executorch runs ExecuTorch programs (.pte), and a .pte runs "
                                    f"only with it, not with provider {provider!r}")
        return executorch.ExecuTorchSession(path, threads=threads)
    if path.suffix in ENGINE_SUFFIXES:
        if provider not in ("auto", "tensorrt"):
            raise HieraRuntimeError(f"{path}: a TensorRT engine runs only with TensorRT, not provider {provider!r}")
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
    if not any(key.startswith("hiera.") for key in session.metadata):
        if preprocessing is None:
            raise MissingMetadata(f"{session.path}: no Hiera metadata (hiera.* metadata_props): not exported by "
                                  "python -m export; give its preprocessing (a runtime.Preprocessing) to run it anyway")
        return session, for_foreign_model(session.path, session.input_shape, session.output_names, preprocessing)
    return session, from_metadata(session.metadata, session.metadata_path)


def check_labels(session, info: ModelInfo) -> None:
    """As many class names as the classifier has classes: the names of another model's classes would label
    every prediction wrongly."""
    shape = session.output_shapes.get("logits")
    classes = shape[-1] if shape else None
    if info.task == "classify" and info.labels and isinstance(classes, int) and classes != len(info.labels):
        raise HieraRuntimeError(f"{session.metadata_path}: damaged Hiera metadata: "
                                f"hiera.labels has {len(info.labels)} names, the model has {classes} classes")


def check_pred_stride(session, info: ModelInfo) -> None:
    """An MAE model's logits hold, for each pred_stride x pred_stride patch of the RGB input, its 3 x pred_stride²
    pixels: a stride that does not divide the input, or that the logits' shape does not match, would cut the
    image into patches the logits do not describe (checked where the graph states the axes)."""
    if info.task != "mae" or len(info.input_size) != 2:
        return
    stride, (height, width) = info.mae["pred_stride"], info.input_size
    expected = [(height // stride) * (width // stride), 3 * stride * stride]
    shape = (session.output_shapes.get("logits") or [])[1:]
    if height % stride or width % stride or any(isinstance(got, int) and got != want
                                                for got, want in zip(shape, expected)):
        raise HieraRuntimeError(f"{session.metadata_path}: damaged Hiera metadata: hiera.mae: pred_stride {stride} "
                                f"does not fit the model (input {height} x {width}, logits per image "
                                f"{[d if isinstance(d, int) else '?' for d in shape]})")


def non_finite(outputs: dict[str, np.ndarray]) -> str | None:
    """What is not finite in `outputs` (NaN or infinite values), or None when every value is."""
    for name, value in outputs.items():
        if np.issubdtype(value.dtype, np.floating):
            bad = value.size - np.count_nonzero(np.isfinite(value))
            if bad:
                return f"the model's {name} has {bad} of {value.size} values NaN or infinite"
    return None


def _whole(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low or \
            (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise HieraRuntimeError(f"{name} {value!r}: must be a whole number {bound}")
    return int(value)


def _name(item, index: int) -> str:
    """How an error names an item: its path, else its place in the list given."""
    return str(item) if isinstance(item, (str, Path)) else f"image {index}"


def _logits(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """A classifier's logits: ours are named so; a foreign model's one output is taken as them."""
    return outputs.get("logits", next(iter(outputs.values())))


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
        check_labels(session, info)
        check_pred_stride(session, info)
        self.session, self.info, self.max_pixels = session, info, _whole("max_pixels", max_pixels, 1)
        self.warnings: list[str] = []  # what a user must be told on every run (an artifact run although it failed)

    @classmethod
    def load(cls, path, *, max_pixels: int = MAX_PIXELS, check: bool = True, allow_failed: bool = False, **options):
        """Open an exported `.onnx` or TensorRT engine; `check` and `allow_failed` as for `load`, `options` as for
        `open_model` (provider, threads, cache_dir, preprocessing, io_binding, inference_precision)."""
        return _admitted(cls(*open_model(path, **options), max_pixels), check, allow_failed)

    @property
    def providers(self) -> list[str]:
        return self.session.providers

    def batch_size(self, requested: int | None = None) -> int:
        """Images per session call: a static batch's own size; else `requested` (default 8, at most 1024),
        and no more than the session runs at once (an engine's profile)."""
        size = DEFAULT_BATCH_SIZE if requested is None else _whole("batch_size", requested, 1, MAX_BATCH)
        if self.info.batch:
            return self.info.batch
        if requested is None:  # the default, within the megapixel guard of a call for large inputs
            size = min(size, self.info.preprocessing.largest_batch)
        try:
            self.info.preprocessing.check_batch(size)
        except ValueError as error:
            raise HieraRuntimeError(f"batch_size {error}") from None
        return min(size, self.session.max_batch) if self.session.max_batch else size

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

    def prepare(self, item, index: int = 0) -> np.ndarray:
        """One image (or clip) to model input, [3, height, width] ([3, frames, height, width]); an error names
        it (`index`: its place in a list, for an image that is not a path)."""
        p = self.info.preprocessing
        try:
            if p.frames:
                return p.clip(load_clip(item, p.frames, p.frame_stride, self.max_pixels))
            return p(load_image(item, self.max_pixels))
        except HieraRuntimeError as error:
            name, message = _name(item, index), str(error)
            raise HieraRuntimeError(message if message.startswith(f"{name}: ") else f"{name}: {message}") from None

    def preprocess(self, inputs) -> np.ndarray:
        """Images (one or a list) to the model's input, [n, 3, height, width] float32; clips to [n, 3, frames,
        height, width]."""
        items, _ = self.items(inputs)
        return np.stack([self.prepare(item, index) for index, item in enumerate(items)])

    def outcomes(self, items, batch_size: int | None = None) -> Iterator[tuple[dict | None, str | None]]:
        """For each image (or clip) of the list `items`, in order: `(outputs, None)`, its outputs (one row of
        each, by name), or `(None, error)`, one line naming it, when it cannot be read or the model's outputs
        for it are not finite. Lazy: each batch is read and run when the caller gets to it."""
        step = self.batch_size(batch_size)
        for start in range(0, len(items), step):
            prepared = []  # (model input, None) or (None, error), per item of the batch
            for index, item in enumerate(items[start:start + step], start):
                try:
                    prepared.append((self.prepare(item, index), None))
                except HieraRuntimeError as error:
                    prepared.append((None, str(error)))
            good = [pixels for pixels, error in prepared if error is None]
            outputs = self._forward(np.stack(good)) if good else {}
            row = 0
            for index, (_, error) in enumerate(prepared, start):
                if error is not None:
                    yield None, error
                    continue
                result = {name: value[row] for name, value in outputs.items()}
                row += 1
                problem = non_finite(result)
                yield (None, f"{_name(items[index], index)}: {problem}") if problem else (result, None)

    def _results(self, inputs, batch_size: int | None) -> tuple[list[dict], bool]:
        """Every item's outputs, or the first item's error raised."""
        items, several = self.items(inputs)
        results = []
        for outputs, error in self.outcomes(items, batch_size):
            if error is not None:
                raise HieraRuntimeError(error)
            results.append(outputs)
        return results, several

    def run(self, pixel_values: np.ndarray, batch_size: int | None = None,
            **other_inputs: np.ndarray) -> dict[str, np.ndarray]:
        """The model's raw outputs for preprocessed input (and any further inputs, one row per image), whatever
        its length, `batch_size` images per call (see `batch_size`)."""
        if not len(pixel_values):
            raise HieraRuntimeError("no images given")
        step = self.batch_size(batch_size)
        chunks = [self._forward(pixel_values[start:start + step],
                                **{name: array[start:start + step] for name, array in other_inputs.items()})
                  for start in range(0, len(pixel_values), step)]
        if len(chunks) == 1:
            return chunks[0]
        return {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}

    def _forward(self, pixel_values: np.ndarray, **other_inputs: np.ndarray) -> dict[str, np.ndarray]:
        """One session call on at most one batch: a static batch is padded with zeros, the padding's outputs
        dropped."""
        count, inputs = len(pixel_values), {"pixel_values": pixel_values, **other_inputs}
        if self.info.batch and count < self.info.batch:
            inputs = {name: np.concatenate([array, np.zeros((self.info.batch - count, *array.shape[1:]), array.dtype)])
                      for name, array in inputs.items()}
        outputs = self.session.run(**inputs)
        return outputs if not self.info.batch or count == self.info.batch else \
            {name: value[:count] for name, value in outputs.items()}


def rank(logits: np.ndarray, top_k: int, label=lambda index: None) -> list[list[Prediction]]:
    """The `top_k` classes of each row of finite `logits` [n, classes] by softmax probability (in float64), best
    first; `label(index)` names a class. What every classifier front end (the API, the CLI, Triton) answers."""
    logits = logits.astype(np.float64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    k = min(top_k, probabilities.shape[1])
    top = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]  # the k best, unordered: no full sort
    scores = np.take_along_axis(probabilities, top, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    top, scores = np.take_along_axis(top, order, axis=1), np.take_along_axis(scores, order, axis=1)
    return [[Prediction(i, label(i), s) for i, s in zip(indices, values)]
            for indices, values in zip(top.tolist(), scores.tolist())]


class Classifier(_Model):
    tasks = ("classify",)

    def predict(self, images, top_k: int = 5, batch_size: int | None = None):
        """The `top_k` classes of each image (or clip) by softmax probability: a list of `Prediction` for one,
        a list of such lists for a list of them. An image that cannot be read, or whose logits are not
        finite, raises `HieraRuntimeError` naming it (`outcomes` keeps going past it instead)."""
        _whole("top_k", top_k, 1)
        results, several = self._results(images, batch_size)
        predictions = self.top_k(np.stack([_logits(outputs) for outputs in results]), top_k)
        return predictions if several else predictions[0]

    def predict_arrays(self, pixel_values: np.ndarray, top_k: int = 5,
                       batch_size: int | None = None) -> list[list[Prediction]]:
        """`predict` for input already preprocessed, [n, 3, height, width] (clips: [n, 3, frames, height, width])."""
        _whole("top_k", top_k, 1)
        outputs = self.run(pixel_values, batch_size)
        logits = _logits(outputs)
        for index, row in enumerate(logits):
            if problem := non_finite({"logits": row}):
                raise HieraRuntimeError(f"image {index}: {problem}")
        return self.top_k(logits, top_k)

    def prediction(self, outputs: dict[str, np.ndarray], top_k: int = 5) -> list[Prediction]:
        """The `top_k` classes of one image's outputs (as `outcomes` gives them)."""
        return self.top_k(_logits(outputs)[None], top_k)[0]

    def top_k(self, logits: np.ndarray, top_k: int = 5) -> list[list[Prediction]]:
        """The `top_k` classes of each row of finite `logits` [n, classes], by softmax probability."""
        return rank(logits, top_k, self.info.label)


class FeatureExtractor(_Model):
    tasks = ("features", "backbone", "image-encoder")

    def extract(self, images, batch_size: int | None = None) -> dict[str, np.ndarray]:
        """The outputs for one image or a list of them, by name (`last_hidden_state` and `pooler_output`, or
        a backbone's `stage1`.. maps, NCHW), each with a leading axis of one entry per image. An image that
        cannot be read, or whose outputs are not finite, raises `HieraRuntimeError` naming it."""
        results, _ = self._results(images, batch_size)
        return {name: np.stack([outputs[name] for outputs in results]) for name in results[0]}


class Reconstructor(_Model):
    """An MAE pretraining model: it sees an image with most of its mask units hidden and predicts them."""

    tasks = ("mae",)

    def noise(self, count: int, seed: int = 0) -> np.ndarray:
        """The masking input for `count` images, [count, mask units]: the units with the lowest noise stay
        visible (as many as the exported mask ratio leaves)."""
        seed = _whole("seed", seed, 0, 2**63 - 1)
        return np.random.default_rng(seed).random((count, self.info.mae["mask_units"]), dtype=np.float32)

    def reconstruct(self, images, seed: int = 0) -> list[dict[str, np.ndarray]]:
        """For each image, the `original`, `masked` and `reconstruction` pictures (HWC uint8), with the mask
        drawn from `seed`."""
        items, _ = self.items(images)
        pixel_values = self.preprocess(items)
        outputs = self.run(pixel_values, noise=self.noise(len(pixel_values), seed))
        for index, logits in enumerate(outputs["logits"]):
            if problem := non_finite({"logits": logits}):
                raise HieraRuntimeError(f"{_name(items[index], index)}: {problem}")
        mae = self.info.mae
        return [reconstruct.panels(pixels, logits, visible, self.info.preprocessing, mae["pred_stride"],
                                   mae["norm_pix_loss"])
                for pixels, logits, visible in zip(pixel_values, outputs["logits"], outputs["bool_masked_pos"])]


class MaskDecoder(_Model):
    """SAM 2's mask decoder: prompts in, masks out; `runtime.segment.Segmenter` runs it with its image encoder."""

    tasks = ("mask-decoder",)


def model_class(task: str) -> type[_Model]:
    return {"classify": Classifier, "mae": Reconstructor, "mask-decoder": MaskDecoder}.get(task, FeatureExtractor)


def load(path, *, max_pixels: int = MAX_PIXELS, check: bool = True, allow_failed: bool = False,
         **options) -> Classifier | FeatureExtractor | Reconstructor:
    """A `Classifier`, `FeatureExtractor` or `Reconstructor`, whichever the artifact's task asks for (options
    as for `open_model`). An artifact whose export report says it failed is refused unless `allow_failed` (then
    `model.warnings` says so); one that carries a probe runs it on this device first unless `check` is False,
    and is refused if it fails (`runtime.probe.prove`)."""
    session, info = open_model(path, **options)
    return _admitted(model_class(info.task)(session, info, max_pixels), check, allow_failed)


def _admitted(model: _Model, check: bool, allow_failed: bool) -> _Model:
    """`model`, once neither its export report nor its probe on this device refuses it."""
    verdict = report_verdict(model.session.path)
    if verdict is not None and verdict.passed is False:
        said = f"its export report ({verdict.report.name}) says it FAILED: {'; '.join(verdict.failures) or 'see it'}"
        if not allow_failed:
            raise HieraRuntimeError(f"{model.session.path}: {said}; run an artifact of the export that passed, or "
                                    "allow_failed=True (--allow-failed) to run it anyway")
        model.warnings.append(f"{model.session.path}: run although {said}")
    if check:
        probe.prove(model)
    return model
