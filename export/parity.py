"""Parity of exported artifacts with the PyTorch fp32 model: what is compared with what, in numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from runtime import load
from runtime.formats import FORMATS
from runtime.preprocess import Preprocessing
from runtime.tensorrt import ENGINE_SUFFIXES

# Checks by precision: the largest absolute difference allowed (fp32), the smallest cosine similarity
# per sample (fp16, int8).
THRESHOLDS = {name: dict(kind.bound) for name, kind in FORMATS.items()}
# SAM 2's encoder (`--task segmenter`): the smallest IoU of the masks its artifact's outputs give through the fp32
# decoder with PyTorch's, by what the artifact computes; fp32 and fp16 as the decoder's own (issue 26).
ENCODER_MASK_IOU_BOUNDS = {"fp32": 0.99, "fp16": 0.98, "int8": 0.9, "qdq": 0.9}
RANDOM_INPUTS = 4


def photographs() -> dict[str, Image.Image]:
    """Real photographs that scikit-learn ships (a Chinese temple and a flower, both 640 x 427)."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images()
    return {Path(name).name: Image.fromarray(array) for name, array in zip(images.filenames, images.images)}


def validation_inputs(model, preprocessing: Preprocessing, seed: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """The model's inputs by name, one row per sample, and the samples' names: seeded normal noise and, for
    image models, the photographs preprocessed as the runtime will; MAE's `noise` seeded uniform."""
    config = model.config
    rng = np.random.default_rng(seed)
    pixel_values = rng.standard_normal((RANDOM_INPUTS, config.in_chans, *config.input_size), dtype=np.float32)
    names = [f"random:{seed}:{i}" for i in range(RANDOM_INPUTS)]
    if config.in_chans == 3 and not config.is_video:
        photos = photographs()
        pixel_values = np.concatenate([pixel_values, np.stack([preprocessing(image) for image in photos.values()])])
        names += list(photos)
    inputs = {"pixel_values": pixel_values}
    if "noise" in model.input_names:
        inputs["noise"] = rng.random((len(pixel_values), config.mask_units), dtype=np.float32)
    return inputs, names


@torch.no_grad()
def run_torch(model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = model(*(torch.from_numpy(inputs[name]) for name in model.input_names))
    out = out if isinstance(out, dict) else {"logits": out}
    return {name: value.numpy() for name, value in out.items()}


def run_artifact(path, inputs: dict[str, np.ndarray], threads: int = 2) -> dict[str, np.ndarray]:
    """An artifact's outputs, run by the runtime as a deployment runs it: a `.onnx` on onnxruntime's CPU
    provider, an engine with TensorRT (a static batch is filled in padded chunks, an engine's batches stay
    within its profile)."""
    provider = "tensorrt" if Path(path).suffix in ENGINE_SUFFIXES else "cpu"
    return load(path, provider=provider, threads=threads, check=False, allow_failed=True).run(**inputs)


def compare(reference: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict:
    """Per output: how many values are not finite (in the reference and in the artifact's output), max and
    mean absolute difference, the smallest per-sample cosine similarity; for logits also the share of
    samples whose top-1 class, and whose set of top-5 classes, agree; for integer and boolean outputs
    (MAE's mask and restore order) whether they are equal. A figure that cannot be computed (an output
    missing, of another shape, or not finite) is None, never NaN: the report is JSON."""
    result = {}
    for name, ref in reference.items():
        out = got.get(name)
        if out is None or out.shape != ref.shape:
            result[name] = {"shape": None if out is None else list(out.shape), "expected_shape": list(ref.shape)}
            continue
        if not np.issubdtype(ref.dtype, np.floating):
            result[name] = {"equal": bool(np.array_equal(ref, out))}
            continue
        out, ref = out.astype(np.float64), ref.astype(np.float64)
        entry = {"nonfinite_reference": int(np.size(ref) - np.isfinite(ref).sum()),
                 "nonfinite": int(np.size(out) - np.isfinite(out).sum()),
                 "max_abs": None, "mean_abs": None, "cosine": None}
        if entry["nonfinite_reference"] == 0 and entry["nonfinite"] == 0:
            diff = np.abs(out - ref)
            a, b = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
            cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
            entry.update(max_abs=float(diff.max()), mean_abs=float(diff.mean()), cosine=float(cosine.min()))
            if name == "logits" and ref.ndim == 2:  # a classifier's
                k = min(5, ref.shape[1])
                top_ref, top_out = np.argsort(-ref, 1)[:, :k], np.argsort(-out, 1)[:, :k]
                entry["top1_agreement"] = float((top_ref[:, 0] == top_out[:, 0]).mean())
                entry["top5_agreement"] = float(np.mean([set(r) == set(o) for r, o in zip(top_ref, top_out)]))
        result[name] = entry
    return result


def failures(precision: str, parity: dict) -> list[str]:
    """The checks an artifact of `precision` fails, each as a short sentence. Each bound is written so that
    only a finite figure within it passes: a missing figure (None) or NaN fails."""
    limits = THRESHOLDS[precision]
    found = [] if parity else ["no output was compared"]
    for name, entry in parity.items():
        if "expected_shape" in entry:
            found.append(f"{name} has shape {entry['shape']}, expected {entry['expected_shape']}" if entry["shape"]
                         else f"{name} is missing")
            continue
        if "equal" in entry:
            if entry["equal"] is not True:
                found.append(f"{name} differs")
            continue
        if entry.get("nonfinite_reference") or entry.get("nonfinite"):
            if entry.get("nonfinite_reference"):
                found.append(f"PyTorch's {name} has {entry['nonfinite_reference']} non-finite values (NaN or Inf): "
                             "the weights or the preprocessing are broken")
            if entry.get("nonfinite"):
                found.append(f"{name} has {entry['nonfinite']} non-finite values (NaN or Inf)")
            continue
        if "max_abs" in limits and not _within(entry.get("max_abs"), limits["max_abs"]):
            found.append(f"{name} max abs diff {_figure(entry.get('max_abs'))} > {limits['max_abs']:g}")
        if "cosine" in limits and not _within(limits["cosine"], entry.get("cosine")):
            found.append(f"{name} cosine {_figure(entry.get('cosine'))} < {limits['cosine']}")
    return found


def _within(value, bound) -> bool:
    """value <= bound, for finite numbers only (a comparison with NaN is False, so NaN never passes)."""
    return isinstance(value, (int, float)) and isinstance(bound, (int, float)) and bool(value <= bound)


def _figure(value) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else "not computed"
