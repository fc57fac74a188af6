"""transformers.js (`@huggingface/transformers` in Node, remote models off) loads the Hub folder as it is.

- Given the same preprocessed pixels, each of its files (fp32, fp16, q8) gives the logits `runtime` gives on that
  file, and the same top-5.
- Given the photographs themselves (it decodes and resizes them with sharp, we with Pillow), the same top-1; how
  far its resize moves the pixels and the scores is measured, and bounded.
- A feature extractor loads as `HieraModel`: `last_hidden_state` and `pooler_output` within 1e-4 of `runtime`'s;
  so do a backbone (stage maps) and an MAE model (pixel_values and noise in; logits, mask, restore order out).
"""

import json

import numpy as np
import pytest

from export import Options, hub, run
from runtime import Classifier, FeatureExtractor, load_image
from runtime import load as runtime_load

from .clients import load, run_node, save

FILES = {"fp32": "onnx/model.onnx", "fp16": "onnx/model_fp16.onnx", "q8": "onnx/model_quantized.onnx"}
SAME_FILE = 1e-4  # max abs diff of the logits when both run one file (onnxruntime-node 1.30 vs onnxruntime 1.32)
# transformers.js resizes with sharp's affine transform, which does not widen the bicubic kernel when it shrinks an
# image as Pillow (and so transformers) does: its pixels differ from ours by a mean of 0.05 to 0.13 (normalized) on
# the two photographs, and the digits model's top-5 scores move by up to 0.12, no top-1. Bounds with some room:
RESIZE_SCORES = 0.2  # max abs diff of a top-5 softmax score, photographs through each library's own preprocessing
RESIZE_PIXELS = 0.2  # mean abs diff of the normalized pixels


@pytest.fixture(scope="module")
def pixels(digits_hub, photo_files) -> np.ndarray:
    """The JPEG photographs preprocessed by `runtime`, and seeded noise: one batch of 4."""
    photos = Classifier.load(digits_hub / FILES["fp32"]).preprocess([p for p in photo_files if p.suffix == ".jpg"])
    noise = np.random.default_rng(0).standard_normal((2, *photos.shape[1:]), dtype=np.float32)
    return np.concatenate([photos, noise])


@pytest.mark.parametrize("dtype", list(FILES))
def test_same_pixels_same_logits_and_top5(dtype, digits_hub, pixels, tmp_path):
    ours = Classifier.load(digits_hub / FILES[dtype], provider="cpu")
    expected = ours.run(pixels)["logits"]
    logits = []
    for i, row in enumerate(pixels):  # the artifact's batch is 1: one call per image, as its pipeline makes them
        result = run_node("transformers_js.mjs", {"folder": str(digits_hub), "dtype": dtype, "head": "classify",
                                                  "inputs": {"pixel_values": save(tmp_path, f"x{i}", row[None])}},
                          tmp_path)
        assert result["class"] == "HieraForImageClassification"
        logits.append(load(result["outputs"]["logits"])[0])
    logits = np.stack(logits)
    assert np.abs(logits - expected).max() <= SAME_FILE
    top5 = [[p.index for p in image] for image in ours.predict_arrays(pixels, top_k=5)]
    assert np.argsort(-logits, axis=1, kind="stable")[:, :5].tolist() == top5


def test_photographs_same_top1_and_how_far_sharp_moves_the_scores(digits_hub, photo_files, tmp_path, record_property):
    photos = [p for p in photo_files if p.suffix == ".jpg"]
    ours = Classifier.load(digits_hub / FILES["fp32"], provider="cpu")
    result = run_node("transformers_js.mjs", {"folder": str(digits_hub), "dtype": "fp32", "head": "classify",
                                              "images": [str(p) for p in photos]}, tmp_path)
    for photo, theirs, their_pixels in zip(photos, result["pipeline"], result["processor"]):
        predictions = ours.predict(photo, top_k=5)
        assert theirs[0]["label"] == predictions[0].label, photo.name
        our_pixels = ours.preprocess(photo)
        pixel_diff = np.abs(load(their_pixels) - our_pixels)
        ours_by_label = {p.label: p.score for p in ours.predict_arrays(our_pixels, top_k=10)[0]}
        score_shift = max(abs(entry["score"] - ours_by_label[entry["label"]]) for entry in theirs)
        record_property(f"{photo.name}: sharp vs Pillow", f"pixels max {pixel_diff.max():.3f} mean "
                        f"{pixel_diff.mean():.4f}, top-5 scores max {score_shift:.4f}")
        assert score_shift <= RESIZE_SCORES, photo.name
        assert 0 < pixel_diff.mean() < RESIZE_PIXELS, photo.name  # different resizers, same picture


def test_how_far_sharp_moves_the_published_checkpoints_pixels(photo_files, tmp_path, record_property):
    """The published checkpoints' preprocessing (shortest edge 256, crop 224): transformers.js' pixels against ours.
    Its bicubic resize (sharp's affine transform) does not widen the kernel when it shrinks an image, as Pillow
    does, so the difference grows with the shrink factor (640 x 427 -> 384 x 256 here)."""
    from export.hub import preprocessor_config
    from runtime.preprocess import Preprocessing

    ours = Preprocessing.for_input_size((224, 224))
    folder = tmp_path / "imagenet"
    folder.mkdir()
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(ours.to_dict())))
    (folder / "config.json").write_text(json.dumps({"model_type": "hiera"}))
    photos = [p for p in photo_files if p.suffix == ".jpg"]
    result = run_node("transformers_js.mjs", {"folder": str(folder), "head": None, "images": [str(p) for p in photos]},
                      tmp_path)
    for photo, theirs in zip(photos, result["processor"]):
        diff = np.abs(load(theirs)[0] - ours(load_image(photo)))
        record_property(f"{photo.name} at 256/224: sharp vs Pillow",
                        f"pixels max {diff.max():.3f} mean {diff.mean():.4f}")
        assert 0 < diff.mean() < RESIZE_PIXELS, photo.name


def test_features_as_hieramodel(features_hub, tmp_path):
    folder, _, _ = features_hub
    ours = FeatureExtractor.load(folder / FILES["fp32"], provider="cpu")
    x = np.random.default_rng(1).standard_normal((1, 3, *ours.info.input_size), dtype=np.float32)
    expected = ours.run(x)
    result = run_node("transformers_js.mjs", {"folder": str(folder), "dtype": "fp32", "head": "model",
                                              "inputs": {"pixel_values": save(tmp_path, "x", x)}}, tmp_path)
    assert result["class"] == "HieraModel"
    assert sorted(result["outputs"]) == ["last_hidden_state", "pooler_output"]
    for name, value in expected.items():
        assert np.abs(load(result["outputs"][name]) - value).max() <= 1e-4, name


def test_backbone_and_mae_load_as_models_with_their_outputs_named(exported, transformers_mae, tmp_path):
    """No pipeline takes stage maps or MAE's masks, but transformers.js loads both folders as `HieraModel` and
    returns every output by name: the maps within 1e-4, MAE's mask and restore order exactly."""
    backbone, checkpoint, _ = exported("small_q_pool", "backbone")
    mae_dir, _ = transformers_mae
    report = run(Options(weights=str(mae_dir), task="mae", out_dir=tmp_path / "mae", precisions=("fp32",),
                         validate=False))
    mae = tmp_path / "mae" / report["artifacts"]["fp32"]["file"]
    for artifact, source in ((backbone, checkpoint), (mae, mae_dir)):
        folder = hub.publish(hub.layout({"fp32": artifact}, hub.report_for(artifact), source), tmp_path / artifact.stem)
        ours = runtime_load(folder / FILES["fp32"], provider="cpu")
        inputs = {"pixel_values": np.random.default_rng(2).standard_normal((1, 3, *ours.info.input_size),
                                                                           dtype=np.float32)}
        if ours.info.task == "mae":
            inputs["noise"] = ours.noise(1, seed=3)
        expected = ours.run(**inputs)
        result = run_node("transformers_js.mjs", {"folder": str(folder), "dtype": "fp32", "head": "model",
                                                  "inputs": {k: save(tmp_path, k, v) for k, v in inputs.items()}},
                          tmp_path)
        assert result["class"] == "HieraModel"
        assert sorted(result["outputs"]) == sorted(expected), ours.info.task
        for name, value in expected.items():
            got = load(result["outputs"][name])
            if np.issubdtype(value.dtype, np.floating):
                assert np.abs(got - value).max() <= 1e-4, name
            else:
                assert np.array_equal(got.astype(value.dtype), value), name
