"""One place builds every model: `build(config, task, out_features=, with_loss=, input_size=)`; `create` and
`load` take the same options, and the loader keeps exactly the weights of the model it built."""

import ast

import pytest
import torch

import hiera_model
from hiera_model import HieraConfig, HieraModelError, build

from ..conftest import ROOT

SMALL = HieraConfig(embed_dim=16, depths=(1, 1, 2, 1), input_size=(64, 64), num_classes=5)


def test_out_features_pick_the_stage_maps_in_stage_order():
    model = build(SMALL, "backbone", out_features=("stage4", "stage2"))
    assert model.out_features == ("stage2", "stage4") == tuple(model.output_names)
    maps = model(torch.randn(1, 3, 64, 64))
    assert list(maps) == ["stage2", "stage4"] and maps["stage4"].shape == (1, 128, 2, 2)
    assert build(SMALL, "backbone").out_features == ("stage1", "stage2", "stage3", "stage4")


@pytest.mark.parametrize("task, options, message", [
    ("backbone", {"out_features": ("stage9", "stage1")}, "out_features 'stage9': choose one or more of stage1, "
                                                         "stage2, stage3, stage4"),
    ("backbone", {"out_features": ()}, "out_features (none): choose one or more of"),
    ("features", {"out_features": ("stage1",)}, "out_features picks the stage maps of task 'backbone'; task "
                                                "'features' has none"),
    ("classify", {"with_loss": True}, "with_loss adds the loss of MAE pretraining; task 'classify' has none"),
    ("mae", {"with_loss": "yes"}, "with_loss must be True or False"),
])
def test_bad_options_are_refused_by_build_with_the_choices(task, options, message):
    with pytest.raises(HieraModelError) as error:
        build(SMALL.replace(q_pool=2) if task == "mae" else SMALL, task, **options)
    assert message in str(error.value)
    assert error.value.option == next(iter(options))
    assert error.value.render("--out-features").startswith("--out-features") or "out_features" not in options


def test_create_and_load_take_the_same_options(transformers_checkpoint, transformers_mae):
    model = hiera_model.create(SMALL, task="backbone", out_features=["stage3"], input_size=(128, 64))
    assert model.out_features == ("stage3",) and model.config.input_size == (128, 64)

    directory, _ = transformers_checkpoint("small_q_pool", "features")
    loaded = hiera_model.load(directory, task="backbone", out_features=["stage3"])
    assert loaded.output_names == ["stage3"]
    # the loader keeps exactly the keys of the model it built: no pooler norm for a backbone
    assert set(loaded.state_dict()) == set(build(loaded.config, "backbone").state_dict())
    assert not any(key.startswith("norm.") for key in loaded.state_dict())
    with pytest.raises(HieraModelError, match="out_features 'stage5': choose"):
        hiera_model.load(directory, task="backbone", out_features=["stage5"])

    directory, _ = transformers_mae
    mae = hiera_model.load(directory, task="mae", with_loss=True)
    assert mae.output_names[-1] == "loss"
    noise = torch.rand(1, mae.config.mask_units)
    assert mae(torch.randn(1, 3, *mae.config.input_size), noise)["loss"].shape == (1,)


def test_a_classifier_checkpoint_loads_as_any_encoder_task(transformers_checkpoint):
    directory, reference = transformers_checkpoint("small_q_pool")
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = reference(pixel_values, output_hidden_states=True).reshaped_hidden_states[-1]
        maps = hiera_model.load(directory, task="backbone")(pixel_values)
    assert (maps["stage4"] - expected.permute(0, 3, 1, 2)).abs().max() <= 1e-5
    assert hiera_model.load(directory, task="features").head is None


def test_weights_are_assigned_not_copied_into_a_second_model(transformers_checkpoint):
    """The model is built on the meta device and the weights assigned to it: every parameter is a real,
    trainable float32 tensor on the CPU, and the index buffers were computed."""
    directory, _ = transformers_checkpoint("small_q_pool")
    model = hiera_model.load(directory)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    assert model.unroll.device.type == "cpu" and model.unroll.dtype == torch.int64


def test_mae_and_model_do_not_import_each_other():
    def imports(name):
        tree = ast.parse((ROOT / "hiera_model" / f"{name}.py").read_text())
        return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}

    assert "mae" not in imports("model") and "model" in imports("mae")
