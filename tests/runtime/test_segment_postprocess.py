"""The segmenter's own numpy against its references: the logits' bilinear resize against torch's
`F.interpolate(mode="bilinear", align_corners=False)` (what transformers' `Sam2ImageProcessor.post_process_masks`
calls; the processor itself needs torchvision, which is not installed here), the prompt scaling against
`Sam2Processor._normalize_coordinates`, and COCO run-length encoding against masks decoded by hand."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from transformers import Sam2Processor

from runtime.segment import coco_rle, upsample_logits


@pytest.mark.parametrize("size", [(427, 640), (1000, 700), (100, 70), (256, 256), (257, 255)])
def test_upsampling_equals_torch_bilinear(size):
    logits = np.random.default_rng(0).standard_normal((2, 3, 256, 256)).astype(np.float32) * 8
    expected = F.interpolate(torch.from_numpy(logits), size, mode="bilinear", align_corners=False).numpy()
    got = upsample_logits(logits, size)
    assert got.shape == expected.shape
    # torch computes the source positions and blends in float32: about 1e-5 of the steps between neighbouring
    # logits (here up to 60); measured 2.6e-4 at most
    assert np.abs(got - expected).max() <= 1e-3
    near = np.abs(expected) <= 1e-3  # the threshold's neighbourhood: float rounding may fall either side
    assert ((got > 0) == (expected > 0))[~near].all()


def test_prompt_scaling_equals_sam2_processor(tmp_path):
    from runtime.segment import Segmenter

    coords = np.array([[200.0, 150.0], [0.0, 426.0], [639.0, 3.5]])
    expected = Sam2Processor._normalize_coordinates(None, 1024, torch.from_numpy(coords), (427, 640)).numpy()
    segmenter = Segmenter.__new__(Segmenter)  # only the prompt arithmetic: no artifacts needed

    class Info:
        input_size = (1024, 1024)

    segmenter.encoder = type("Encoder", (), {"info": Info})()
    segmenter.image = np.zeros((427, 640, 3), np.uint8)
    got, labels = segmenter.prompts(points=[tuple(c) for c in coords])
    assert np.abs(got[0] - expected).max() <= 1e-4 and labels.tolist() == [[1, 1, 1]]
    boxes, labels = segmenter.prompts(boxes=[(10, 20, 300, 400), (0, 0, 640, 427)])
    expected = Sam2Processor._normalize_coordinates(None, 1024, torch.tensor([[10.0, 20, 300, 400], [0, 0, 640, 427]]),
                                                    (427, 640), is_bounding_box=True).numpy()
    assert np.abs(boxes.reshape(2, 4) - expected).max() <= 1e-4 and labels.tolist() == [[2, 3], [2, 3]]


def decode_rle(rle: dict) -> np.ndarray:
    """COCO's uncompressed RLE by its definition: alternating runs of 0 and 1 over the column-major pixels."""
    values = np.concatenate([np.full(count, index % 2, bool) for index, count in enumerate(rle["counts"])])
    return values.reshape(rle["size"][::-1]).T


def test_coco_rle_round_trips():
    rng = np.random.default_rng(1)
    for mask in (rng.random((7, 5)) > 0.5, np.ones((3, 4), bool), np.zeros((4, 3), bool)):
        rle = coco_rle(mask)
        assert sum(rle["counts"]) == mask.size and (decode_rle(rle) == mask).all()
    mask = np.array([[1, 0], [1, 1]], bool)  # column-major: 1 1 | 0 1 -> runs 0 zeros, 2 ones, 1 zero, 1 one
    assert coco_rle(mask) == {"size": [2, 2], "counts": [0, 2, 1, 1]}
