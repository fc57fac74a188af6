"""FAIR's checkpoints for SAM 2's prompt encoder and mask decoder, against FAIR's `SAM2ImagePredictor` through
the golden fixtures of tools/make_reference_fixtures.py: its small SAM 2 (FAIR's classes, the published configs'
decoder settings) saved whole as FAIR saves it, `predict`'s answers for point, box, point-and-box and mask
prompts, and each published config's decoder as FAIR's `build_sam2` builds it (about.json)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import safetensors.torch
import torch

import hiera_model
from hiera_model import sam2_decoder
from hiera_model.checkpoints import misfits
from hiera_model.checkpoints_sam2 import decoder_from_fair
from runtime.segment import Segmenter

from .test_reference_fixtures import REFERENCE, SAM2

ABOUT = json.loads((REFERENCE / "about.json").read_text())
IMAGE_SIZE = (80, 112)  # the seeded image set_image embedded (height, width)
FAIR_CLAMP = 32.0  # SAM2ImagePredictor.predict returns its low-resolution logits clamped to +-32


@pytest.fixture(scope="module")
def expected():
    return {**safetensors.torch.load_file(REFERENCE / "expected_sam2.safetensors"),
            **safetensors.torch.load_file(REFERENCE / "expected_sam2_decoder.safetensors")}


@pytest.fixture(scope="module")
def decoder():
    return sam2_decoder.load(REFERENCE / "sam2_fair_small.pt", variant=SAM2)


class TorchDecoderSession:
    """The runtime's decoder session (`run(first, **feeds)` -> outputs by name), running the PyTorch decoder: the
    runtime's prompt mapping and post-processing around this package's decoder."""

    path = "the PyTorch decoder"

    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def run(self, image_embeddings, **feeds):
        feeds["image_embeddings"] = image_embeddings
        outputs = self.model(*(torch.from_numpy(np.asarray(feeds[name])) for name in sam2_decoder.INPUT_NAMES))
        return {name: output.numpy() for name, output in zip(sam2_decoder.OUTPUT_NAMES, outputs)}


def segmenter(decoder, expected) -> Segmenter:
    """runtime.segment's Segmenter on FAIR's set_image features for the 80 x 112 image, deciding with `decoder`."""
    weights = {"source": "fixture", "sha256": None}
    size = [SAM2.input_size[0], SAM2.input_size[1]]
    encoder = SimpleNamespace(info=SimpleNamespace(task="image-encoder", variant="small", weights=weights,
                                                   input_size=size), warnings=[], session=None)
    mask_decoder = SimpleNamespace(info=SimpleNamespace(encoder={"variant": "small", "weights": weights,
                                                                 "input_size": size}),
                                   warnings=[], session=TorchDecoderSession(decoder))
    seg = Segmenter(encoder, mask_decoder)
    seg.set_embedding({"image_embeddings": expected["image_embed"].numpy(),
                       "high_res_feats_0": expected["high_res_feats_0"].numpy(),
                       "high_res_feats_1": expected["high_res_feats_1"].numpy()}, IMAGE_SIZE)
    return seg


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def test_published_decoders_are_what_the_loader_builds_for_fair():
    """Every published config (SAM 2 and 2.1, built by FAIR's build_sam2) has the decoder settings this loader
    assumes for FAIR's files, and its tensors map by name and shape onto this package's decoder."""
    published = ABOUT["sam2_published_decoder"]
    assert len(published["configs"]) == 8
    for name in ("dynamic_multimask_via_stability", "dynamic_multimask_stability_delta",
                 "dynamic_multimask_stability_thresh", "num_heads", "backbone_stride"):
        ours = sam2_decoder.FAIR_SETTINGS[{"num_heads": "num_attention_heads",
                                           "backbone_stride": "patch_size"}.get(name, name)]
        assert ours == published[name], name
    # what this decoder always does: an IoU head ending in a sigmoid, the object-score token, the high-res features
    assert published["iou_prediction_use_sigmoid"] and published["pred_obj_scores"]
    assert published["use_high_res_features"]
    state = {key: torch.empty(shape, device="meta") for key, shape in published["shapes"].items()}
    mapped = decoder_from_fair(state, "published")
    encoder = hiera_model.SAM2_VARIANTS["sam2.1_hiera_tiny"].config
    config = sam2_decoder.config_from_fair(mapped, encoder, "published")
    assert (config.image_size, config.hidden_size, config.mask_input_channels, config.num_hidden_layers,
            config.mlp_dim, config.num_attention_heads, config.attention_downsample_rate,
            config.num_multimask_outputs, config.iou_head_depth, config.iou_head_hidden_dim) == (
        published["image_size"], published["hidden_dim"], published["mask_in_chans"],
        published["transformer_depth"], published["mlp_dim"], published["num_heads"],
        published["attention_downsample_rate"], published["num_multimask_outputs"], published["iou_head_depth"],
        published["iou_head_hidden_dim"])
    with torch.device("meta"):
        wanted = sam2_decoder.Sam2MaskDecoderModel(config).state_dict()
    assert misfits(mapped, wanted, wanted) is None


@torch.no_grad()
def test_fair_checkpoint_answers_as_sam2_image_predictor(decoder, expected):
    """Each recorded predict call through runtime.segment (its coordinate mapping, its choice of masks, its
    upsampling and threshold) around the decoder loaded from FAIR's file: low-resolution logits and predicted IoU
    within 1e-4, masks at the image's size with IoU >= 0.99, and the prompt tokens within 1e-5 (FAIR orders them
    box corners, points, padding; the runtime points, box corners, padding)."""
    assert decoder.provenance["source"] == "local:sam2_fair_small.pt"
    seg = segmenter(decoder, expected)
    figures = {}
    for name, prompt in ABOUT["sam2_prompts"].items():
        mask_input = expected["point.low_res_logits"][0].numpy() if prompt["mask_input"] else None
        boxes = [prompt["box"]] if prompt["box"] else None
        answer = seg.predict(points=prompt["points"] or None, boxes=boxes, multimask=prompt["multimask_output"],
                             mask_input=mask_input)
        fair_masks = np.unpackbits(expected[f"{name}.masks_packed"].numpy())
        fair_masks = fair_masks[:answer.masks[0].size].reshape(answer.masks[0].shape).astype(bool)
        logits = np.clip(answer.logits[0], -FAIR_CLAMP, FAIR_CLAMP)
        coords, labels = seg.prompts(prompt["points"] or None, boxes)
        tokens = decoder.prompt_encoder.sparse(torch.from_numpy(coords), torch.from_numpy(labels))[0]
        points = len(prompt["points"])
        tokens = torch.cat([tokens[points:-1], tokens[:points], tokens[-1:]])  # FAIR's order
        figures[name] = {
            "logits": float(np.abs(logits - expected[f"{name}.low_res_logits"].numpy()).max()),
            "iou": float(np.abs(answer.scores[0] - expected[f"{name}.iou"].numpy()).max()),
            "mask_iou": min(mask_iou(ours, theirs) for ours, theirs in zip(answer.masks[0], fair_masks)),
            "tokens": float((tokens - expected[f"{name}.sparse"]).abs().max())}
        if prompt["mask_input"]:
            dense = decoder.prompt_encoder.dense(torch.from_numpy(mask_input)[None, None], torch.ones(1))[0]
            figures[name]["dense"] = float((dense - expected[f"{name}.dense"]).abs().max())
    failed = {name: row for name, row in figures.items() if not (
        row["logits"] <= 1e-4 and row["iou"] <= 1e-4 and row["mask_iou"] >= 0.99 and row["tokens"] <= 1e-5
        and row.get("dense", 0) <= 1e-5)}
    assert len(figures) == 5 and not failed, failed


def test_refused_in_one_line(tmp_path):
    """A FAIR checkpoint without its decoder's weights (an encoder-only file), one without the object-score token
    every published config has, and a Hiera checkpoint given as SAM 2's decoder."""
    state = torch.load(REFERENCE / "sam2_fair_small.pt", weights_only=True)["model"]
    cases = {
        "encoder_only.pt": ({k: v for k, v in state.items() if not k.startswith(("sam_mask_decoder.transformer.",
                                                                                 "sam_mask_decoder.iou_prediction"))},
                            "encoder_only.pt: FAIR's SAM 2 checkpoint has no two-way transformer"),
        "no_object_score.pt": ({k: v for k, v in state.items() if not k.startswith("sam_mask_decoder.obj_score")},
                               "no_object_score.pt: FAIR's SAM 2 checkpoint has no object-score token"),
    }
    for file, (weights, message) in cases.items():
        torch.save({"model": weights}, tmp_path / file)
        with pytest.raises(hiera_model.HieraModelError) as error:
            sam2_decoder.load(tmp_path / file, variant=SAM2)
        assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
    with pytest.raises(hiera_model.HieraModelError) as error:
        sam2_decoder.load(REFERENCE / "hiera_fair_small.pth")
    assert "hiera_fair_small.pth: not a SAM 2 checkpoint" in str(error.value), str(error.value)
    assert "a Hiera checkpoint has no prompt encoder or mask decoder" in str(error.value)
