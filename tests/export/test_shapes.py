"""The trained shapes model (tools/shapes.py, models/shapes/): what each precision does to real masks.

The segmenter family is exported once (the encoder in fp32 and fp16, the decoder in its precisions); on a few
held-out images, each prompted by a point (single mask and best of three), a jittered box and two points, every pair
of an encoder and the fp32 decoder, and the fp32 encoder with each decoder, runs as the runtime runs it and its
masks are compared with transformers' `Sam2Model` on the same checkpoint by issue 26's rule as the export applies it
(`tools.shapes.compare_masks`: pixels within 1e-3 of the threshold left out; a prompt counts where its reference mask
covers 5% to 95% of the image, and where its answer does not come from a decision of SAM 2 taken at its threshold
under the precision's logit tolerance). The bounds: MASK_IOU_BOUNDS; a trained model's masks (against the true
shapes) show that the weights are the trained ones."""

import pytest
import torch
from transformers import Sam2Model

from export import Options, segmenter
from export.options import DECODER_PRECISIONS
from tools import shapes

from ..conftest import ROOT, cpu_flags, failed_rows

CHECKPOINT = ROOT / "models" / "shapes"
IMAGES = 6
# (mean IoU over every prompt, smallest IoU over the prompts that count): issue 26's 0.99 (fp32) and 0.98 (fp16)
MASK_IOU_BOUNDS = {"fp32": (0.999, 0.99), "fp16": (0.99, 0.98)}
AT_THRESHOLD = 0.05  # at most this share of the counted prompts answered from a decision at its threshold
TRUE_SHAPES_IOU = 0.6  # the trained model: 0.75 to 0.79 (models/shapes/README.md); after 1,800 steps 0.4; untrained 0.0


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """{row name: compare_masks row}: the family exported once, each pair against transformers."""
    out = tmp_path_factory.mktemp("shapes")
    report = segmenter.run(Options(weights=str(CHECKPOINT), task="segmenter", batch=None, out_dir=out,
                                   precisions=("fp32", "fp16")))
    assert report["passed"], failed_rows(report)
    cases = shapes.heldout(IMAGES)
    torch.set_num_threads(1)
    model = Sam2Model.from_pretrained(CHECKPOINT).eval()
    reference = [shapes.reference_logits(model, case) for case in cases]
    encoders = {p: shapes.encoder_outputs(out / report["artifacts"][p]["file"], cases) for p in ("fp32", "fp16")}
    decoders = {p: out / report["artifacts"][f"decoder-{p}"]["file"] for p in DECODER_PRECISIONS}
    rows = {"PyTorch": shapes.compare_masks(reference, reference, cases)}
    for encoder, decoder in shapes.pairs(encoders, decoders):
        rows[f"encoder {encoder}, decoder {decoder}"] = shapes.compare_masks(
            reference, shapes.artifact_logits(encoders[encoder], decoders[decoder], cases), cases)
    return rows


def test_the_weights_are_trained(measured):
    row = measured["PyTorch"]
    assert row["mean_iou_true_shapes"] >= TRUE_SHAPES_IOU, f"PyTorch: mean IoU with the true shapes {row}"


@pytest.mark.parametrize("encoder, decoder", [("fp32", "fp32"), ("fp16", "fp32"), ("fp32", "fp16")])
def test_mask_iou_against_transformers(measured, encoder, decoder):
    name = f"encoder {encoder}, decoder {decoder}"
    row = measured[name]
    mean_bound, min_bound = MASK_IOU_BOUNDS["fp16" if "fp16" in (encoder, decoder) else "fp32"]
    assert row["counted"] >= 10, f"{name}: {row['counted']} of {row['prompts']} prompts count by issue 26's rule"
    assert row["mean_iou"] >= mean_bound, f"{name}: mean mask IoU {row['mean_iou']:.4f} < {mean_bound} ({row}) on " \
        f"{cpu_flags()}"
    assert row["min_iou"] >= min_bound, f"{name}: min mask IoU {row['min_iou']:.4f} < {min_bound} ({row}) on " \
        f"{cpu_flags()}"
    assert row["pixels_left_out"] <= 0.01 * row["pixels"], f"{name}: pixels left out {row}"
    at_threshold = [flip for flip in row["decisions_differ"] if flip["at_threshold"]]
    assert len(at_threshold) <= AT_THRESHOLD * row["counted"], f"{name}: answers from decisions at their threshold " \
        f"{at_threshold} of {row['counted']} on {cpu_flags()}"
