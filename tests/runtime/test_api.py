"""The Python API against transformers: the same images through transformers' processor and model."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from PIL import Image, ImageOps
from transformers import AutoImageProcessor

import runtime
from runtime import Classifier, FeatureExtractor, HieraRuntimeError, Preprocessing
from runtime.session import PROVIDERS, OnnxSession, choose_providers

from ..conftest import ROOT

TOLERANCE = 1e-4  # max abs diff of softmax scores and of features


@torch.no_grad()
def transformers_top5(directory, model, path) -> list[tuple[str, float]]:
    """What a transformers user gets: the checkpoint's processor on the upright image, softmax, top 5."""
    processor = AutoImageProcessor.from_pretrained(directory)
    pixel_values = processor(ImageOps.exif_transpose(Image.open(path)), return_tensors="pt")["pixel_values"]
    scores = model(pixel_values).logits.double().softmax(-1)[0]
    top = scores.topk(5)
    return [(model.config.id2label[int(i)], float(s)) for s, i in zip(top.values, top.indices)]


def test_end_to_end_top5_matches_transformers(exported, photo_files):
    """Export tiny from a save_pretrained directory, classify real photographs with the runtime."""
    artifact, directory, reference = exported("tiny")
    classifier = Classifier.load(artifact)
    predictions = classifier.predict(photo_files, top_k=5)
    assert len(predictions) == len(photo_files)
    for path, top5 in zip(photo_files, predictions):
        expected = transformers_top5(directory, reference, path)
        assert [p.label for p in top5] == [label for label, _ in expected], path.name
        assert np.abs(np.array([p.score for p in top5]) - [s for _, s in expected]).max() <= TOLERANCE, path.name
    single = classifier.predict(photo_files[0], top_k=3)  # one image in, one list of predictions out
    assert [p.index for p in single] == [p.index for p in predictions[0][:3]]


@torch.no_grad()
def test_static_batch_is_filled_in_chunks_and_padded(exported):
    artifact, _, reference = exported("small_q_pool", batch=2)
    classifier = Classifier.load(artifact)
    assert classifier.info.batch == 2
    pixel_values = np.random.default_rng(0).standard_normal((5, 3, 64, 96), dtype=np.float32)
    logits = classifier.run(pixel_values)["logits"]
    assert logits.shape == (5, 10)
    assert np.abs(logits - reference(torch.from_numpy(pixel_values)).logits.numpy()).max() <= TOLERANCE


@torch.no_grad()
def test_features_with_a_dynamic_batch_match_transformers(exported):
    artifact, _, reference = exported("small_q_pool", task="features", batch=None)
    extractor = FeatureExtractor.load(artifact)
    assert extractor.info.batch is None
    images = [np.random.default_rng(i).integers(0, 256, (80 + 10 * i, 120, 3), dtype=np.uint8) for i in range(3)]
    features = extractor.extract(images)
    expected = reference(torch.from_numpy(extractor.preprocess(images)))
    for name in ("last_hidden_state", "pooler_output"):
        assert features[name].shape[0] == 3
        assert np.abs(features[name] - expected[name].numpy()).max() <= TOLERANCE, name


def test_io_binding_gives_the_same_outputs(exported):
    """The IO-binding path (the default on GPUs) run on the CPU, against plain `run`."""
    artifact, _, _ = exported("small_q_pool", batch=None)
    pixel_values = np.random.default_rng(0).standard_normal((3, 3, 64, 96), dtype=np.float32)
    plain, bound = OnnxSession(artifact), OnnxSession(artifact, io_binding=True)
    assert not plain.io_binding and bound.io_binding
    for batch in (3, 1, 3):  # a binding per batch size, reused
        inputs = pixel_values[:batch]
        np.testing.assert_array_equal(bound.run(inputs)["logits"], plain.run(inputs)["logits"])


def test_the_task_picks_the_class(exported):
    classify, _, _ = exported("small_q_pool", batch=None)
    features, _, _ = exported("small_q_pool", task="features", batch=None)
    assert isinstance(runtime.load(classify), Classifier)
    assert isinstance(runtime.load(features), FeatureExtractor)
    with pytest.raises(HieraRuntimeError, match="a features model; load it with FeatureExtractor"):
        Classifier.load(features)


def test_labels_and_preprocessing_come_from_the_metadata(exported):
    artifact, directory, _ = exported("tiny")
    info = Classifier.load(artifact).info
    assert info.labels == tuple(f"class {i}" for i in range(10))
    assert info.preprocessing == Preprocessing(256, (224, 224), "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert info.variant == "tiny" and info.precision == "fp32" and info.input_size == (224, 224)


def without_metadata(artifact, path):
    model = onnx.load(artifact)
    del model.metadata_props[:]
    onnx.save(model, path)
    return path


def test_an_onnx_file_without_our_metadata_is_refused_unless_preprocessing_is_given(exported, tmp_path):
    artifact, _, _ = exported("small_q_pool", batch=2)
    foreign = without_metadata(artifact, tmp_path / "foreign.onnx")
    with pytest.raises(HieraRuntimeError, match=r"foreign.onnx: no Hiera metadata .*give its preprocessing"):
        Classifier.load(foreign)
    preprocessing = Preprocessing(73, (64, 96))
    ours, theirs = Classifier.load(artifact), Classifier.load(foreign, preprocessing=preprocessing)
    assert theirs.info.batch == 2 and theirs.info.labels is None
    image = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    assert [(p.index, p.score) for p in theirs.predict(image)] == [(p.index, p.score) for p in ours.predict(image)]
    assert theirs.predict(image)[0].label is None


def test_damaged_metadata_is_named(exported, tmp_path):
    artifact, _, _ = exported("small_q_pool", batch=2)
    model = onnx.load(artifact)
    next(p for p in model.metadata_props if p.key == "hiera.preprocessing").value = "{not json"
    onnx.save(model, tmp_path / "damaged.onnx")
    with pytest.raises(HieraRuntimeError, match=r"damaged.onnx: damaged Hiera metadata"):
        Classifier.load(tmp_path / "damaged.onnx")


def test_providers_are_chosen_by_availability_with_an_override():
    everything = list(PROVIDERS.values())
    assert choose_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert choose_providers("auto", everything[::-1]) == everything  # fastest first, whatever the order given
    assert choose_providers("cuda", everything) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("cpu", everything) == ["CPUExecutionProvider"]
    with pytest.raises(HieraRuntimeError, match=r"provider cuda is not available .*hiera-deploy\[gpu\]"):
        choose_providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(HieraRuntimeError, match="choose from"):
        choose_providers("rocm", everything)


def test_labels_must_match_the_classifiers_classes(exported, tmp_path):
    artifact, _, _ = exported("small_q_pool", batch=2)
    model = onnx.load(artifact)
    next(p for p in model.metadata_props if p.key == "hiera.labels").value = json.dumps([f"c{i}" for i in range(11)])
    onnx.save(model, tmp_path / "labels.onnx")
    with pytest.raises(HieraRuntimeError) as refused:
        Classifier.load(tmp_path / "labels.onnx")
    assert str(refused.value) == (f"{tmp_path / 'labels.onnx'}: damaged Hiera metadata: hiera.labels has 11 names, "
                                  "the model has 10 classes")


def test_the_runtime_imports_no_torch():
    code = "import runtime, runtime.cli, runtime.embed, sys; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
