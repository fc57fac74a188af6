"""Print the measured parity figures the README quotes: max abs diff of our model against transformers,
FAIR `hiera` and timm, on the same configs, weights and inputs as the tests (which bound them by 1e-5):
classifiers and features, MAE (transformers' HieraForPreTraining, FAIR's MAE fixture) and video (FAIR's
video fixture).

    python -m tools.parity_report
"""

import tempfile
from pathlib import Path

import safetensors.torch
import torch
from transformers import HieraConfig as TransformersConfig
from transformers import HieraForImageClassification, HieraModel

import hiera_model
from hiera_model.testing import FAIR_MAE, PARITY_CONFIGS, inputs_for, transformers_mae_model

REFERENCE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "reference"  # the golden fixtures' files


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def transformers_rows():
    for name, kwargs in PARITY_CONFIGS.items():
        config = TransformersConfig(**kwargs, num_labels=7)
        worst = dict.fromkeys(["logits", "last_hidden_state", "pooler_output", "stage maps"], 0.0)
        for task, cls in (("classify", HieraForImageClassification), ("features", HieraModel)):
            torch.manual_seed(0)
            reference = cls(config).eval()
            with tempfile.TemporaryDirectory() as directory:
                reference.save_pretrained(directory)
                ours = hiera_model.load(directory, task=task)
            for pixel_values in inputs_for(config):
                expected, outputs = reference(pixel_values, output_hidden_states=True), ours(pixel_values)
                if task == "classify":
                    worst["logits"] = max(worst["logits"], max_diff(outputs, expected.logits))
                    continue
                for key in ("last_hidden_state", "pooler_output"):
                    worst[key] = max(worst[key], max_diff(outputs[key], getattr(expected, key)))
                _, stages = ours.forward_features(pixel_values, return_stages=True)
                for ours_map, reference_map in zip(stages, expected.reshaped_hidden_states[1:]):
                    worst["stage maps"] = max(worst["stage maps"], max_diff(ours_map, reference_map))
        for output, diff in worst.items():
            yield "transformers", name, output, diff


@torch.no_grad()
def fixture_rows():
    expected = safetensors.torch.load_file(REFERENCE / "expected.safetensors")
    pixel_values = expected["pixel_values"]
    model = hiera_model.load(REFERENCE / "fair_hub")
    logits = model(pixel_values)
    _, stages = model.forward_features(pixel_values, return_stages=True)
    yield "FAIR hiera", "fixture", "logits", max_diff(logits, expected["fair_logits"])
    yield "FAIR hiera", "fixture", "eval softmax", max_diff(logits.softmax(-1), expected["fair_probs"])
    yield "FAIR hiera", "fixture", "intermediates", max(max_diff(s, expected[f"fair_stage{i}"])
                                                        for i, s in enumerate(stages))
    yield "timm", "fixture", "logits", max_diff(logits, expected["timm_logits"])
    yield "timm", "fixture", "intermediates", max(max_diff(s.permute(0, 3, 1, 2), expected[f"timm_stage{i}"])
                                                  for i, s in enumerate(stages))


@torch.no_grad()
def mae_rows():
    reference = transformers_mae_model()
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        ours = hiera_model.load(directory, task="mae", with_loss=True)
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(3, 3, 64, 96, generator=generator)
    noise = torch.rand(3, ours.config.mask_units, generator=generator)
    expected, got = reference(pixel_values=pixel_values, noise=noise), ours(pixel_values, noise)
    yield "transformers", "mae", "logits", max_diff(got["logits"], expected.logits)
    yield "transformers", "mae", "loss", max_diff(got["loss"].mean(), expected.loss)
    yield "transformers", "mae", "mask, ids_restore", max(
        max_diff(got["bool_masked_pos"].int(), expected.bool_masked_pos.int()),
        max_diff(got["ids_restore"], expected.ids_restore))

    expected = safetensors.torch.load_file(REFERENCE / "expected_mae.safetensors")
    model = hiera_model.load(REFERENCE / "mae_fair_small.pth", variant=FAIR_MAE, task="mae", with_loss=True)
    got = model(expected["pixel_values"], expected["noise"])
    masked = ~got["bool_masked_pos"]
    yield "FAIR hiera", "mae fixture", "predictions", max_diff(got["logits"][masked], expected["pred"])
    yield "FAIR hiera", "mae fixture", "loss", max_diff(got["loss"].mean(), expected["loss"])


@torch.no_grad()
def video_rows():
    expected = safetensors.torch.load_file(REFERENCE / "expected_video.safetensors")
    model = hiera_model.load(REFERENCE / "video_fair_hub")
    yield "FAIR hiera", "video fixture", "logits", max_diff(model(expected["pixel_values"]), expected["logits"])
    _, stages = model.forward_features(expected["pixel_values"], return_stages=True)
    yield "FAIR hiera", "video fixture", "intermediates", max(max_diff(s, expected[f"stage{i}"])
                                                              for i, s in enumerate(stages))


def main() -> None:
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    print(f"{'reference':<13} {'config':<14} {'output':<18} max abs diff")
    for reference, config, output, diff in (*transformers_rows(), *fixture_rows(), *mae_rows(), *video_rows()):
        print(f"{reference:<13} {config:<14} {output:<18} {diff:.1e}")


if __name__ == "__main__":
    main()
