"""A folder one command wrote is not another's to replace (issue 23: delete only what the tool wrote): `segment
--out` given the export folder it reads its models from kept every file of it only by luck of the names before."""

import json
import types

import numpy as np
import pytest

from runtime import cli, commit, segment
from runtime.errors import FileError


def tree(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_segment_refuses_an_export_folder_as_out(photo, tmp_path, capsys, monkeypatch):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "enc.onnx").write_bytes(b"model")
    (artifacts / ".hiera-manifest.enc.json").write_text(json.dumps({"written_by": "python -m export",
                                                                    "files": ["enc.onnx"]}))
    before = tree(artifacts)
    answer = segment.Segmentation(masks=np.ones((1, 1, 2, 3), bool), scores=np.ones((1, 1)),
                                  logits=np.zeros((1, 1, 4, 4)))
    fake = types.SimpleNamespace(warnings=[], image=np.zeros((2, 3, 3), np.uint8), set_image=lambda image: None,
                                 predict=lambda *a: answer)
    monkeypatch.setattr(segment, "load_segmenter", lambda *a, **kw: fake)
    assert cli.main(["segment", str(photo), "--model", str(artifacts / "enc.onnx"), "--decoder", "d.onnx",
                     "--point", "1,1", "--out", str(artifacts)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {artifacts}: written by python -m export, not by python -m "
                                               "runtime segment; replacing it would lose that command's files: "
                                               "choose another folder")
    assert tree(artifacts) == before and sorted(p.name for p in tmp_path.iterdir()) == ["artifacts", "photo.png"]


@pytest.mark.parametrize("manifest", [{"written_by": "python -m runtime triton", "files": ["a.txt"]},
                                      {"files": ["a.txt"]}])  # a manifest naming no writer is no one's to replace
def test_a_folder_another_command_swapped_in_is_refused_and_kept(tmp_path, manifest):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("theirs")
    (out / commit.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(FileError, match=r"written by (python -m runtime triton|\(unknown\)), not by python -m "
                                         r"runtime segment"), commit.replacing(out, "python -m runtime segment"):
        pass
    assert (out / "a.txt").read_text() == "theirs" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_same_command_replaces_its_own_folder(tmp_path):
    out = tmp_path / "out"
    for text in ("first", "second"):
        with commit.replacing(out, "python -m runtime segment") as replacement:
            (replacement.staging / "a.txt").write_text(text)
    assert (out / "a.txt").read_text() == "second"


def test_an_out_below_a_file_names_that_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "sub" / "masks"
    with pytest.raises(FileError) as refused, commit.replacing(out, "python -m runtime segment"):
        pass
    assert str(refused.value) == f"{out}: cannot write ({tmp_path / 'notes.txt'} is not a folder)"
    assert (tmp_path / "notes.txt").read_text() == "mine"
