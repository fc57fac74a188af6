"""Parity with transformers' own Hiera on checkpoints it saved with `save_pretrained`.

Seeded random transformers models are saved, loaded back with `hiera_model.load`, and both models
run on the same inputs. Agreement here means the published `facebook/hiera-*-hf` weights load right.
"""

import pytest
import torch
import transformers
from transformers import HieraConfig as TransformersConfig
from transformers import HieraForImageClassification, HieraModel

import hiera_model
from hiera_model.testing import PARITY_CONFIGS as CONFIGS
from hiera_model.testing import inputs_for

transformers.logging.set_verbosity_error()
TOLERANCE = 1e-5  # max abs diff, on logits, last_hidden_state, pooler_output and stage maps

@pytest.fixture(scope="module", params=list(CONFIGS))
def saved(request, tmp_path_factory):
    """A seeded transformers classifier and features model of one config, each saved and loaded back."""
    config = TransformersConfig(**CONFIGS[request.param], num_labels=7)
    pairs = {}
    for task, cls in (("classify", HieraForImageClassification), ("features", HieraModel)):
        torch.manual_seed(0)
        reference = cls(config).eval()
        directory = tmp_path_factory.mktemp(f"{request.param}-{task}")
        reference.save_pretrained(directory)
        pairs[task] = reference, hiera_model.load(directory, task=task)
    return config, pairs


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@torch.no_grad()
def test_logits_match(saved):
    config, pairs = saved
    reference, ours = pairs["classify"]
    for pixel_values in inputs_for(config):
        expected = reference(pixel_values).logits
        assert max_diff(ours(pixel_values), expected) <= TOLERANCE
    assert ours.labels == tuple(config.id2label[i] for i in range(7))


@torch.no_grad()
def test_features_match(saved):
    config, pairs = saved
    reference, ours = pairs["features"]
    for pixel_values in inputs_for(config):
        expected = reference(pixel_values)
        outputs = ours(pixel_values)
        assert set(outputs) == {"last_hidden_state", "pooler_output"}
        assert max_diff(outputs["last_hidden_state"], expected.last_hidden_state) <= TOLERANCE
        assert max_diff(outputs["pooler_output"], expected.pooler_output) <= TOLERANCE


@torch.no_grad()
def test_stage_maps_match_rerolled_hidden_states(saved):
    """Our constant reroll gathers give transformers' `reshaped_hidden_states` of every stage."""
    config, pairs = saved
    reference, ours = pairs["features"]
    pixel_values = inputs_for(config)[1]
    expected = reference(pixel_values, output_hidden_states=True).reshaped_hidden_states[1:]
    _, stages = ours.forward_features(pixel_values, return_stages=True)
    assert len(stages) == len(expected) == len(config.depths)
    for ours_map, reference_map in zip(stages, expected):
        assert max_diff(ours_map, reference_map) <= TOLERANCE


@torch.no_grad()
def test_sharded_checkpoint(tmp_path):
    config = TransformersConfig(**CONFIGS["custom"], num_labels=5)
    torch.manual_seed(1)
    reference = HieraForImageClassification(config).eval()
    reference.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ours = hiera_model.load(tmp_path)
    pixel_values = inputs_for(config)[2]
    assert max_diff(ours(pixel_values), reference(pixel_values).logits) <= TOLERANCE
