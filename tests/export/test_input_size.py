"""`python -m export --image-size`: the exported graph at another size against transformers with
`interpolate_pos_encoding=True` (onnxruntime within 1e-4), static, TensorRT-ready, and the runtime's
preprocessing for the new size equal to transformers' processor configured for it."""

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from transformers import BitImageProcessor, HieraModel
from transformers import HieraConfig as TransformersConfig

from export import Options, run
from export.trt_check import check
from runtime import Classifier, FeatureExtractor

from ..hiera_model.test_input_size import SIZES, SMALL_224, checkpoints, sized_inputs  # noqa: F401 (a fixture)
from ..runtime.test_preprocess import hiera_processor

ONNX_TOLERANCE = 1e-4


def export_at(directory, size, task, tmp_path, **options):
    report = run(Options(weights=str(directory), task=task, image_size=size, out_dir=tmp_path, precisions=("fp32",),
                         validate=False, **options))
    return tmp_path / report["artifacts"]["fp32"]["file"]


@pytest.mark.parametrize("size", SIZES)
@torch.no_grad()
def test_classifier_at_other_sizes_matches_transformers(size, checkpoints, tmp_path):  # noqa: F811
    directory, reference = checkpoints["classify"]
    artifact = export_at(directory, size, "classify", tmp_path)
    assert artifact.name == f"hiera_{directory.name}_{'x'.join(map(str, dict.fromkeys(size)))}_classify.onnx"
    model = Classifier.load(artifact)
    for pixel_values in sized_inputs(size):
        expected = reference(pixel_values, interpolate_pos_encoding=True).logits.numpy()
        got = model.run(pixel_values.numpy())["logits"]
        assert np.abs(got - expected).max() <= ONNX_TOLERANCE


@torch.no_grad()
def test_features_and_backbone_maps_at_448(checkpoints, tmp_path):  # noqa: F811
    directory, reference = checkpoints["features"]
    pixel_values = sized_inputs((448, 448))[0]
    features = FeatureExtractor.load(export_at(directory, (448, 448), "features", tmp_path / "features"))
    expected = reference(pixel_values, interpolate_pos_encoding=True)
    got = features.run(pixel_values.numpy())
    assert np.abs(got["last_hidden_state"] - expected.last_hidden_state.numpy()).max() <= ONNX_TOLERANCE
    assert np.abs(got["pooler_output"] - expected.pooler_output.numpy()).max() <= ONNX_TOLERANCE
    # transformers rerolls its hidden states on its config's grid: its HieraModel built for 448 with the table
    # its interpolate_pos_encoding makes (tests/hiera_model/test_input_size.py shows the two agree)
    at_448 = HieraModel(TransformersConfig(**SMALL_224, image_size=[448, 448])).eval()
    state = reference.state_dict()
    state["embeddings.position_embeddings"] = reference.embeddings.interpolate_pos_encoding(
        torch.zeros(1, 112 * 112, 16), reference.embeddings.position_embeddings, 448, 448)
    at_448.load_state_dict(state)
    hidden = at_448(pixel_values, output_hidden_states=True).reshaped_hidden_states[1:]
    maps = FeatureExtractor.load(export_at(directory, 448, "backbone", tmp_path / "backbone")).run(pixel_values.numpy())
    for (name, got_map), expected_map in zip(maps.items(), hidden):
        assert np.abs(got_map - expected_map.permute(0, 3, 1, 2).numpy()).max() <= ONNX_TOLERANCE, name


def test_the_graph_at_448_stays_static_and_passes_the_tensorrt_check(checkpoints, tmp_path):  # noqa: F811
    directory, _ = checkpoints["classify"]
    graph = onnx.load(export_at(directory, (448, 448), "classify", tmp_path, optimize=False))
    assert check(graph, "10") == []
    assert [n.op_type for n in graph.graph.node].count("Gather") <= 2  # the unroll (and the head's pooling order)
    assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 448, 448]


def test_runtime_preprocessing_at_448_is_transformers_processor_at_448(checkpoints, tmp_path):  # noqa: F811
    """The checkpoint's processor (shortest edge 256, crop 224) scaled as its user would configure it for 448:
    shortest edge 512, crop 448; the runtime's predictions on a photograph then equal transformers' processor and
    model with interpolate_pos_encoding=True."""
    directory, reference = checkpoints["classify"]
    hiera_processor().save_pretrained(directory)
    model = Classifier.load(export_at(directory, 448, "classify", tmp_path))
    assert model.info.preprocessing.resize_shortest_edge == 512 and model.info.preprocessing.crop_size == (448, 448)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (427, 640, 3), dtype=np.uint8))
    processor: BitImageProcessor = hiera_processor(edge=512, crop=448)
    pixels = processor(photo, return_tensors="pt")["pixel_values"]
    assert np.abs(model.preprocess(photo)[0] - pixels[0].numpy()).max() <= 1e-5
    with torch.no_grad():
        logits = reference(pixels, interpolate_pos_encoding=True).logits[0].double()
    expected = torch.softmax(logits, 0).numpy()
    for prediction in model.predict(photo, top_k=5):
        assert abs(prediction.score - expected[prediction.index]) <= 1e-5
    assert [p.index for p in model.predict(photo, top_k=5)] == list(np.argsort(-expected)[:5])
