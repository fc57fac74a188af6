"""`segment`'s masks are bounded like images (issue 23, item 6): many prompts times three masks on a large photo are
one line before the decoder runs, not gigabytes allocated; an image that fails after others leaves --out as it was.
The figures are hand-computed."""

import types

import numpy as np
import pytest

from runtime import cli, segment
from runtime.errors import HieraRuntimeError


def segmenter_on(height: int, width: int) -> segment.Segmenter:
    """A Segmenter as set_image leaves it on an image of that size; no session: the refusal must come first."""
    segmenter = segment.Segmenter.__new__(segment.Segmenter)
    segmenter.image = np.zeros((height, width, 3), np.uint8)  # calloc'd: its pages are never touched
    segmenter.encoder = types.SimpleNamespace(info=types.SimpleNamespace(input_size=(1024, 1024)))
    segmenter._embedding = {"image_embeddings": np.zeros((1, 256, 64, 64), np.float32)}
    segmenter.decoder = None
    return segmenter


def test_64_boxes_of_three_masks_on_a_12_megapixel_photo_are_one_line():
    with pytest.raises(HieraRuntimeError) as refused:
        segmenter_on(3000, 4000).predict(boxes=[(0, 0, 10, 10)] * 64, multimask=True)
    assert str(refused.value) == ("192 masks of 4000 x 3000 pixels are 2.3 gigapixels, above the limit of 1.1 for one "
                                  "call: give fewer prompts, or a smaller image")


def test_an_image_that_fails_after_others_leaves_out_as_it_was(photo, tmp_path, capsys, monkeypatch):
    out = tmp_path / "masks"
    out.mkdir()
    answer = segment.Segmentation(masks=np.ones((1, 1, 2, 3), bool), scores=np.ones((1, 1)),
                                  logits=np.zeros((1, 1, 4, 4)))

    def predict(*args):
        if fake.calls == 1:
            raise HieraRuntimeError("the second image fails")
        fake.calls += 1
        return answer

    fake = types.SimpleNamespace(warnings=[], image=np.zeros((2, 3, 3), np.uint8), set_image=lambda image: None,
                                 predict=predict, calls=0)
    monkeypatch.setattr(segment, "load_segmenter", lambda *a, **kw: fake)
    second = tmp_path / "second.png"
    second.write_bytes(photo.read_bytes())
    assert cli.main(["segment", str(photo), str(second), "--model", "e.onnx", "--decoder", "d.onnx", "--point", "1,1",
                     "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {second}: the second image fails"
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["masks", "photo.png",
                                                                                       "second.png"]
