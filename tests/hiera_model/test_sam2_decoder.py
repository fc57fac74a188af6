"""SAM 2's prompt encoder and mask decoder (`hiera_model.sam2_decoder`) against transformers' `Sam2Model` on the
small checkpoint transformers saved itself: point, box, point-and-box and mask prompts, multimask and single
mask (both branches of the dynamic fallback), within 1e-4 on the low-resolution logits and the IoU scores."""

import pytest
import torch

from hiera_model import HieraModelError, sam2_decoder

from ..sam2_reference import SIZE, reference_embeddings, sam2_checkpoint  # noqa: F401

TOLERANCE = 1e-4
LOW_RES = SIZE // 4  # the masks' side: 4 x the 8 x 8 embedding
POINTS = torch.tensor([[[30.0, 40.0], [90.0, 70.0]], [[100.0, 20.0], [10.0, 110.0]]])  # 2 prompts of 2 points
LABELS = torch.tensor([[1, 0], [1, 1]])
BOXES = torch.tensor([[10.0, 20.0, 80.0, 100.0], [50.0, 5.0, 120.0, 60.0]])


@pytest.fixture(scope="module")
def models(sam2_checkpoint):  # noqa: F811
    directory, reference = sam2_checkpoint
    decoder = sam2_decoder.load(directory, allow_unverified=True)
    pixel_values = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    embeddings = reference_embeddings(reference, pixel_values)
    return reference, decoder, embeddings


def ours_inputs(kind: str, mask=None):
    """Our prompt lists: the points, then a box's corners labelled 2 and 3 (the graph appends SAM 2's pad)."""
    coords, labels = [], []
    if kind in ("points", "both"):
        coords.append(POINTS)
        labels.append(LABELS.float())
    if kind in ("box", "both"):
        coords.append(BOXES.view(-1, 2, 2))
        labels.append(torch.tensor([[2.0, 3.0]]).expand(len(BOXES), 2))
    prompts = len(POINTS)
    mask_input = torch.zeros(prompts, 1, LOW_RES, LOW_RES) if mask is None else mask.expand(prompts, 1, -1, -1)
    return torch.cat(coords, 1), torch.cat(labels, 1), mask_input, torch.full((prompts,), float(mask is not None))


def reference_inputs(kind: str) -> dict:
    inputs = {}
    if kind in ("points", "both"):
        inputs.update(input_points=POINTS[None], input_labels=LABELS[None])
    if kind in ("box", "both"):
        inputs["input_boxes"] = BOXES[None]
    return inputs


@torch.no_grad()
@pytest.mark.parametrize("kind", ["points", "box", "both", "mask"])
@pytest.mark.parametrize("threshold", [None, 0.0, 1.01])  # the config's; always stable; never stable
def test_decoder_equals_transformers(models, kind, threshold):
    reference, decoder, e = models
    mask = torch.randn(1, 1, LOW_RES, LOW_RES, generator=torch.Generator().manual_seed(2)) * 5 if kind == "mask" \
        else None
    prompt = "points" if kind == "mask" else kind
    saved = reference.mask_decoder.dynamic_multimask_stability_thresh, decoder.mask_decoder.thresh
    if threshold is not None:
        reference.mask_decoder.dynamic_multimask_stability_thresh = decoder.mask_decoder.thresh = threshold
    try:
        masks, scores = decoder(e["image_embeddings"], e["high_res_feats_0"], e["high_res_feats_1"],
                                *ours_inputs(prompt, mask))
        for multimask, chosen in ((True, slice(1, None)), (False, slice(0, 1))):
            expected = reference(image_embeddings=[e["high_res_feats_0"], e["high_res_feats_1"], e["image_embeddings"]],
                                 multimask_output=multimask, input_masks=mask, **reference_inputs(prompt))
            assert masks.shape == (len(POINTS), 4, LOW_RES, LOW_RES)
            got_masks, got_scores = masks[None, :, chosen], scores[None, :, chosen]
            assert got_masks.shape == expected.pred_masks.shape
            assert (got_masks - expected.pred_masks).abs().max() <= TOLERANCE, (kind, multimask)
            assert (got_scores - expected.iou_scores).abs().max() <= TOLERANCE, (kind, multimask)
    finally:
        reference.mask_decoder.dynamic_multimask_stability_thresh, decoder.mask_decoder.thresh = saved


@torch.no_grad()
def test_fallback_changes_the_single_mask(models):
    """The two forced branches give different single masks here, so the test above sees both."""
    _, decoder, e = models
    answers = []
    for threshold in (0.0, 1.01):
        decoder.mask_decoder.thresh = threshold
        answers.append(decoder(e["image_embeddings"], e["high_res_feats_0"], e["high_res_feats_1"],
                               *ours_inputs("points"))[0][:, 0])
    decoder.mask_decoder.thresh = sam2_decoder.Sam2DecoderConfig().dynamic_multimask_stability_thresh
    assert (answers[0] - answers[1]).abs().max() > 1.0


def test_config_rules_are_one_line(tmp_path):
    config = {"model_type": "sam2", "prompt_encoder_config": {"image_size": 100, "patch_size": 16}}
    with pytest.raises(HieraModelError, match="image_size must be a multiple of patch_size"):
        sam2_decoder.config_from_transformers(config, tmp_path / "config.json")
    config = {"model_type": "sam2", "mask_decoder_config": {"num_attention_heads": "8"}}
    with pytest.raises(HieraModelError, match="num_attention_heads '8' must be a whole number"):
        sam2_decoder.config_from_transformers(config, tmp_path / "config.json")


@torch.no_grad()
@pytest.mark.parametrize("kind", ["points", "box", "both"])
def test_prompt_tokens_equal_transformers(models, kind):
    """The sparse prompt tokens themselves (random weights make the masks barely depend on where a point is, so a
    half-pixel slip in the coordinates shows here, not in the masks)."""
    reference, decoder, _ = models
    inputs = reference_inputs(kind)
    expected, _ = reference.prompt_encoder(input_points=inputs.get("input_points"),
                                           input_labels=inputs.get("input_labels"),
                                           input_boxes=inputs.get("input_boxes"), input_masks=None)
    coords, labels, _, _ = ours_inputs(kind)
    got = decoder.prompt_encoder.sparse(coords, labels)
    assert got.shape == expected.shape[1:]
    assert (got - expected[0]).abs().max() <= 1e-5
