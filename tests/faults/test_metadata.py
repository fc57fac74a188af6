"""Tampered artifact metadata: the runtime trusts nothing it reads. Each bad field is one line naming the
file and the field, exit 2, never a traceback, never a silent exit 0."""

import subprocess
import sys

import pytest

from export import Options, run
from runtime import HieraRuntimeError, load

from ..conftest import ROOT, tampered

GOOD = {"format_version": 1, "task": "classify", "batch": 1}
# field -> (bad JSON value, what the message says)
CASES = {
    "batch -1": ("batch", -1, "hiera.batch: -1 is not a whole number from 1 to 1024"),
    "batch true": ("batch", True, "hiera.batch: True is not a whole number"),
    "batch huge": ("batch", 10**9, "hiera.batch: 1000000000 is not a whole number"),
    "task mae without its entry": ("task", "mae", "hiera.outputs: ['logits'] lacks bool_masked_pos, ids_restore"),
    "task mask-decoder on a classifier": ("task", "mask-decoder", "hiera.outputs: ['logits'] lacks iou_scores, masks"),
    "unknown task": ("task", "segment", "hiera.task: 'segment' is not one of classify"),
    "format from the future": ("format_version", 99, "metadata format 99 is newer than this runtime reads (2)"),
    "input size of strings": ("input_size", ["64", "64"], "hiera.input_size: '64' is not a whole number"),
    "input size other than the crop": ("input_size", [32, 32], "hiera.preprocessing: crops [64, 64], the model takes "
                                                              "[32, 32]"),
    "labels not strings": ("labels", [1, 2], "hiera.labels: 1 is not a non-empty string"),
    "outputs not a list": ("outputs", "logits", "hiera.outputs: 'logits' is not a non-empty list"),
    "weights verified as text": ("weights", {"source": "x", "sha256": None, "verified": "yes"},
                                 "hiera.weights: verified 'yes' is not true or false"),
    "unknown precision": ("precision", "int4", "hiera.precision: 'int4' is not one of"),
    "resize 0": ("preprocessing.resize_shortest_edge", 0, "hiera.preprocessing: "),
    "resize 60000": ("preprocessing.resize_shortest_edge", 60000, "hiera.preprocessing: "),
    "a mean of 4 values": ("preprocessing.mean", [0.5, 0.5, 0.5, 0.5], "hiera.preprocessing: "),
    "std 0": ("preprocessing.std", [0.0, 0.2, 0.2], "hiera.preprocessing: "),
    "unknown resample": ("preprocessing.resample", "magic", "hiera.preprocessing: "),
    "clip frames on an image model": ("preprocessing.frames", 16, "hiera.preprocessing: "),
    # sizes the runtime would allocate, held to the megapixel guard before anything is
    "crop 12000 x 12000": ("preprocessing.crop_size", [12000, 12000], "hiera.preprocessing: crop_size 12000 x 12000 "
                           "is 144 megapixels an input, above the runtime's limit of 64 (its megapixel guard)"),
    "resize 9000": ("preprocessing.resize_shortest_edge", 9000, "hiera.preprocessing: resize_shortest_edge 9000 "
                    "resizes every image to 9000 x 9000 or more, 81 megapixels, above the runtime's limit of 64"),
}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    report = run(Options(weights=str(ROOT / "models" / "digits"), out_dir=out, precisions=("fp32",), validate=False))
    return out / report["artifacts"]["fp32"]["file"]


@pytest.mark.parametrize("case", CASES)
def test_tampered_metadata_is_one_line_naming_the_file_and_field(case, artifact, tmp_path):
    field, value, expected = CASES[case]
    path = tampered(artifact, tmp_path, field, value)
    with pytest.raises(HieraRuntimeError) as error:
        load(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and expected in message and "\n" not in message, message


def test_not_json_and_nan_are_refused(artifact, tmp_path):
    for raw, expected in (("{", "hiera.labels is not JSON"), ("[NaN]", "NaN is not a JSON number")):
        path = tampered(artifact, tmp_path, "labels", None, raw=raw)
        with pytest.raises(HieraRuntimeError, match=expected):
            load(path)


def test_the_cli_says_one_line_and_exits_2(artifact, tmp_path):
    path = tampered(artifact, tmp_path, "batch", -1)
    for command in (["info", "--model", path], ["bench", "--model", path, "--runs", "1"]):
        result = subprocess.run([sys.executable, "-m", "runtime", *map(str, command)], capture_output=True, text=True,
                                cwd=ROOT)
        assert result.returncode == 2 and result.stdout == "", result
        assert result.stderr.splitlines() == [f"error: {path}: damaged Hiera metadata: hiera.batch: -1 is not a whole "
                                              "number from 1 to 1024"]
