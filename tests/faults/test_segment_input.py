"""`python -m runtime segment` given files in the wrong place and stopped before its commit (issue 23's classes):
one line naming the file and what it is, exit 2 or 130, and --out as it was."""

import types

import pytest

from runtime import cli, segment
from runtime.model import MaskDecoder


def segment_args(model, decoder, out, photo):
    return ["segment", str(photo), "--model", str(model), "--decoder", str(decoder), "--point", "1,1",
            "--out", str(out), "--provider", "cpu", "--no-check"]


def test_a_model_of_another_task_as_decoder_is_named_as_such(mae_artifact, photo, tmp_path, capsys):
    assert cli.main(segment_args(mae_artifact, mae_artifact, tmp_path / "masks", photo)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {mae_artifact}: a mae model, not SAM 2's mask decoder (python -m export --task " \
                  "mask-decoder writes it)", err
    assert not (tmp_path / "masks").exists()


def test_a_model_of_another_task_as_encoder_is_named_as_such(mae_artifact, photo, tmp_path, capsys, monkeypatch):
    decoder = MaskDecoder.__new__(MaskDecoder)  # stands for a real decoder: only the encoder's role is under test
    decoder.info, decoder.session = types.SimpleNamespace(task="mask-decoder"), types.SimpleNamespace(path="dec.onnx")
    real_load = segment.load
    monkeypatch.setattr(segment, "load", lambda path, **kw: decoder if path == "dec.onnx" else real_load(path, **kw))
    with pytest.raises(Exception, match="a mae model, not SAM 2's image encoder"):
        segment.load_segmenter(mae_artifact, "dec.onnx", check=False, provider="cpu")


@pytest.mark.parametrize("stage", ["load_segmenter", "printing"])
def test_an_interruption_says_which_state_out_is_in(stage, photo, tmp_path, capsys, monkeypatch):
    out = tmp_path / "masks"
    out.mkdir()
    (out / "old.png").write_bytes(b"old")  # empty otherwise: replaceable, and never replaced here

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    if stage == "load_segmenter":
        monkeypatch.setattr(segment, "load_segmenter", stop)
        expected = f"interrupted: {out} is as it was: nothing was written"
    else:  # after the commit: a fake segmenter's one mask is committed, then the first printed line is stopped
        import numpy as np

        answer = segment.Segmentation(masks=np.ones((1, 1, 2, 3), bool), scores=np.ones((1, 1)),
                                      logits=np.zeros((1, 1, 4, 4)))
        fake = types.SimpleNamespace(warnings=[], image=np.zeros((2, 3, 3), np.uint8), set_image=lambda image: None,
                                     predict=lambda *a: answer)
        monkeypatch.setattr(segment, "load_segmenter", lambda *a, **kw: fake)
        (out / "old.png").unlink()
        monkeypatch.setattr("sys.stdout", types.SimpleNamespace(write=stop, flush=stop, encoding="utf-8"))
        expected = f"interrupted: {out} holds the new masks (not every line was printed)"
    assert cli.main(segment_args("enc.onnx", "dec.onnx", out, photo)) == 130
    assert capsys.readouterr().err.strip() == expected
    if stage == "load_segmenter":
        assert sorted(p.name for p in out.iterdir()) == ["old.png"]
    else:
        assert (out / "photo.prompt0.mask0.png").exists()
