"""Bounds: every numeric option and API argument has a documented range; outside it, one line and exit 2
before anything is loaded, run or written. Preprocessing values are checked where they are made."""

import math

import numpy as np
import pytest

from runtime import Classifier, HieraRuntimeError, Preprocessing
from runtime.cli import main

from ..runtime.conftest import exported  # noqa: F401 (a fixture)

# (arguments after the command, the option named in the one line)
BAD_OPTIONS = {
    "batch too large": (["bench", "--batch", "100000"], "--batch: must be a whole number from 1 to 1024"),
    "batch zero": (["bench", "--batch", "0"], "--batch: must be a whole number from 1 to 1024"),
    "runs too many": (["bench", "--runs", "100001"], "--runs: must be a whole number from 1 to 100000"),
    "runs zero": (["bench", "--runs", "0"], "--runs: must be a whole number from 1 to 100000"),
    "warmup negative": (["bench", "--warmup", "-1"], "--warmup: must be a whole number from 0 to 10000"),
    "warmup nan": (["bench", "--warmup", "nan"], "--warmup: must be a whole number from 0 to 10000"),
    "threads zero": (["bench", "--threads", "0"], "--threads: must be a whole number from 1 to 1024"),
    "batch size too large": (["predict", "x.jpg", "--batch-size", "1025"],
                             "--batch-size: must be a whole number from 1 to 1024"),
    "top-k too large": (["predict", "x.jpg", "--top-k", "1001"], "--top-k: must be a whole number from 1 to 1000"),
    "top-k zero": (["predict", "x.jpg", "--top-k", "0"], "--top-k: must be a whole number from 1 to 1000"),
    "megapixels nan": (["predict", "x.jpg", "--max-megapixels", "nan"], "--max-megapixels: must be a number"),
    "megapixels inf": (["predict", "x.jpg", "--max-megapixels", "inf"], "--max-megapixels: must be a number"),
    "megapixels zero": (["predict", "x.jpg", "--max-megapixels", "0"], "--max-megapixels: must be a number"),
    "megapixels negative": (["predict", "x.jpg", "--max-megapixels", "-5"], "--max-megapixels: must be a number"),
    "crop size zero": (["predict", "x.jpg", "--crop-size", "0"], "--crop-size: must be N or HxW, each from 1 to 7000"),
    # 7001 / 0.875 resizes to 8001 x 8001 at the least: above the 64-megapixel guard
    "crop size past the guard": (["predict", "x.jpg", "--crop-size", "7001"], "--crop-size: must be N or HxW, each "
                                 "from 1 to 7000"),
    "crop size whose resize is too large": (["predict", "x.jpg", "--crop-size", "16384"], "--crop-size: must be N"),
    "crop size huge": (["predict", "x.jpg", "--crop-size", "99999x2"], "--crop-size: must be N or HxW"),
    "seed negative": (["reconstruct", "x.jpg", "--seed", "-1"], "--seed: must be a whole number from 0"),
    "embed batch size": (["embed", "x.jpg", "--out", "f.npy", "--batch-size", "0"], "--batch-size: must be a whole"),
    "segment point not numbers": (["segment", "x.jpg", "--decoder", "d.onnx", "--point", "1,x"],
                                  "--point: must be X,Y or X,Y,LABEL"),
    "segment point infinite": (["segment", "x.jpg", "--decoder", "d.onnx", "--point", "inf,1"],
                               "--point: must be X,Y or X,Y,LABEL"),
    "segment box of 3": (["segment", "x.jpg", "--decoder", "d.onnx", "--box", "1,2,3"], "--box: must be X0,Y0,X1,Y1"),
    "embed actors zero": (["embed", "x.jpg", "--out", "d", "--ray", "--actors", "0"],
                          "--actors: must be a whole number from 1 to 1024"),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_an_option_out_of_bounds_is_one_line_and_exit_2(case, tmp_path, monkeypatch, capsys):
    arguments, message = BAD_OPTIONS[case]
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "model.onnx"  # never opened: the arguments are refused first
    assert main([*arguments, "--model", str(model)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(f"error: argument {message}")
    assert list(tmp_path.iterdir()) == []


def test_help_documents_the_bounds(capsys):
    assert main(["bench", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "at most 1024" in text and "at most 100000" in text and "at most 10000" in text
    assert main(["predict", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "at most 1000)" in text and "at most 1000)" in text and "default 64, at most 1000" in text


def test_no_arguments_prints_usage_and_exit_2(capsys):
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: ") and "predict" in err and "embed" in err


@pytest.fixture(scope="module")
def classifier(exported):  # noqa: F811
    artifact, _, _ = exported("small_q_pool", batch=None)
    return Classifier.load(artifact)


@pytest.mark.parametrize("call, message", [
    (lambda m: m.predict(np.zeros((8, 8, 3), np.uint8), top_k=0), "top_k 0: must be a whole number at least 1"),
    (lambda m: m.predict(np.zeros((8, 8, 3), np.uint8), batch_size=0), "batch_size 0: must be a whole number from 1"),
    (lambda m: m.predict(np.zeros((8, 8, 3), np.uint8), batch_size=1025), "batch_size 1025: must be a whole number"),
    (lambda m: m.run(np.zeros((1, 3, 64, 96), np.float32), batch_size=True), "batch_size True: must be a whole"),
    (lambda m: m.run(np.zeros((0, 3, 64, 96), np.float32)), "no images given"),
    (lambda m: Classifier(m.session, m.info, max_pixels=0), "max_pixels 0: must be a whole number at least 1"),
])
def test_api_arguments_out_of_bounds_raise_one_line(classifier, call, message):
    with pytest.raises(HieraRuntimeError, match=f"^{message}"):
        call(classifier)


@pytest.mark.parametrize("fields, message", [
    (dict(resize_shortest_edge=0), "resize_shortest_edge 0 is not a whole number from 1 to 16384"),
    (dict(resize_shortest_edge=60000), "resize_shortest_edge 60000 is not a whole number from 1 to 16384"),
    (dict(resize_shortest_edge=True), "resize_shortest_edge True is not a whole number"),
    (dict(resize_shortest_edge=256.5), "resize_shortest_edge 256.5 is not a whole number"),
    (dict(crop_size=(224,)), r"crop_size \(224,\) is not \[height, width\]"),
    (dict(crop_size=(224, 0)), "crop_size 0 is not a whole number"),
    (dict(std=(0.0, 0.224, 0.225)), r"std \[0.0, 0.224, 0.225\] is not three finite numbers above 0"),
    (dict(std=(math.inf, 1, 1)), "std .* is not three finite numbers above 0"),
    (dict(mean=(math.nan, 0.5, 0.5)), "mean .* is not three finite numbers"),
    (dict(mean=(0.1, 0.2, 0.3, 0.4)), "mean .* is not three finite numbers"),
    (dict(resample="cubic"), "resample 'cubic' is not one of nearest, bilinear, bicubic, lanczos"),
    (dict(frames=-1), "frames -1 is not a whole number from 0"),
    (dict(frame_stride=0), "frame_stride 0 is not a whole number from 1"),
])
def test_preprocessing_refuses_what_it_cannot_be(fields, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        Preprocessing(**{"resize_shortest_edge": 256, "crop_size": (224, 224), **fields})
