"""Terminal injection and output that must stay valid: labels and file names carrying escape sequences,
newlines or bidi overrides are printed escaped in every text line; --json stays strict JSON, NaN included."""

import json
import unicodedata

import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from runtime.cli import main
from runtime.shell import printable

from ..runtime.conftest import exported  # noqa: F401 (a fixture)

HOSTILE_LABELS = ["cat\x1b[2J\x1b[H", "dog\n  1.0000  forged  (class 7)", "\u202eevil", "bell\x07", "tab\there",
                  "ok", "\r  0.9999  over", "zero\u200bwidth", "c8", "c9"]


def strict_json(line: str):
    def refuse(constant):
        raise ValueError(f"{constant} in JSON output")

    return json.loads(line, parse_constant=refuse)


def raw_controls(text: str) -> list[str]:
    """Control and format characters other than the line breaks between lines."""
    return [c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]


@pytest.fixture(scope="module")
def artifacts(exported, tmp_path_factory):  # noqa: F811
    """The small classifier with hostile labels, and one whose logits are NaN for an image with no pixel
    above the mean (an all-black one): Log of the input's largest value, times 0, added to the logits."""
    artifact, _, _ = exported("small_q_pool", batch=None)
    directory = tmp_path_factory.mktemp("terminal")
    model = onnx.load(artifact)
    next(p for p in model.metadata_props if p.key == "hiera.labels").value = json.dumps(HOSTILE_LABELS)
    onnx.save(model, directory / "labels.onnx")

    model = onnx.load(artifact)
    graph = model.graph
    producer = next(node for node in graph.node if "logits" in node.output)
    producer.output[list(producer.output).index("logits")] = "logits_before"
    graph.initializer.append(helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]))
    graph.node.extend([
        helper.make_node("ReduceMax", ["pixel_values"], ["largest"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Flatten", ["largest"], ["largest_2d"], axis=1),
        helper.make_node("Log", ["largest_2d"], ["log"]),
        helper.make_node("Mul", ["log", "zero"], ["nan_or_zero"]),
        helper.make_node("Add", ["logits_before", "nan_or_zero"], ["logits"]),
    ])
    onnx.save(model, directory / "nan.onnx")
    return {"labels": directory / "labels.onnx", "nan": directory / "nan.onnx"}


def test_labels_with_escape_sequences_and_newlines_are_escaped(artifacts, photo, capsys):
    assert main(["predict", str(photo), "--model", str(artifacts["labels"]), "--top-k", "10"]) == 0
    out, err = capsys.readouterr()
    assert raw_controls(out) == [] and err == ""
    lines = out.splitlines()
    assert len(lines) == 11  # the path and ten classes: no forged line
    printed = {line[len("  0.1234  "):line.rindex("  (class ")] for line in lines[1:]}
    assert printed == {printable(label) for label in HOSTILE_LABELS}
    assert {"cat\\x1b[2J\\x1b[H", "\\u202eevil", "dog\\n  1.0000  forged  (class 7)"} <= printed


def test_json_keeps_the_labels_as_they_are(artifacts, photo, capsys):
    assert main(["predict", str(photo), "--model", str(artifacts["labels"]), "--top-k", "10", "--json"]) == 0
    out, _ = capsys.readouterr()
    assert raw_controls(out) == [] and len(out.splitlines()) == 1
    assert {p["label"] for p in strict_json(out)["top_k"]} == set(HOSTILE_LABELS)


def test_file_names_with_control_characters_are_escaped(artifacts, photo, capsys):
    hostile = photo.with_name("a\x1b]0;title\x07\n  1.0000  forged.png")
    photo.rename(hostile)
    broken = photo.with_name("b\x1b[31m\nerror: forged.png")
    broken.write_bytes(b"not an image")
    assert main(["predict", str(hostile), str(broken), "--model", str(artifacts["labels"])]) == 1
    out, err = capsys.readouterr()
    assert raw_controls(out + err) == []
    assert out.splitlines()[0] == printable(hostile) == str(hostile).replace("\x1b", "\\x1b").replace(
        "\x07", "\\x07").replace("\n", "\\n")
    assert len(out.splitlines()) == 6 and err.count("\n") == 1
    assert err.startswith(f"error: {printable(broken)}: not an image this runtime reads")


def test_an_undecodable_file_name_prints_its_bytes(artifacts, photo, capsys):
    named = photo.with_name(b"caf\xe9.png".decode("utf-8", "surrogateescape"))  # Latin-1, not UTF-8
    photo.rename(named)
    assert main(["predict", str(named), "--model", str(artifacts["labels"]), "--top-k", "1"]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines()[0] == str(named.parent / "caf\\xe9.png")


def test_non_finite_outputs_make_that_image_an_error(artifacts, photo, tmp_path, capsys):
    black = tmp_path / "black.png"
    Image.new("RGB", (100, 70)).save(black)
    assert main(["predict", str(black), str(photo), "--model", str(artifacts["nan"]), "--json"]) == 1
    out, err = capsys.readouterr()
    black_line, photo_line = (strict_json(line) for line in out.splitlines())
    assert black_line == {"image": str(black), "error": f"{black}: the model's logits has 10 of 10 values NaN or "
                                                        "infinite"}
    assert len(photo_line["top_k"]) == 5 and err == ""
    assert main(["predict", str(black), "--model", str(artifacts["nan"])]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {black}: the model's logits has 10 of 10 values NaN or infinite\n"


def test_progress_lines_are_escaped_and_apart_from_results(artifacts, photo, capsys):
    assert main(["predict", str(photo.parent), "--model", str(artifacts["labels"]), "--progress", "--top-k", "1"]) == 0
    out, err = capsys.readouterr()
    assert err == "1/1 images\n" and raw_controls(out) == []
