"""`verify` certifies only what it checked: every file the export folder serves (the `--layout hub` copies
too) against the sha256 its report records, and only inside the folder: a name in the report that leaves it
(absolute, `..`, a symlink out) is a failed check and is never opened."""

import builtins
import json
import os
import shutil
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

from export import Options, run, verify
from export.__main__ import main
from export.artifact import seal

from ..conftest import ROOT

HUB_ONNX = ("model.onnx", "onnx/model.onnx")  # what optimum and transformers.js load


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The digits model exported with the Hub layout (fp32, unvalidated: only the files matter here)."""
    out = tmp_path_factory.mktemp("hub") / "digits"
    report = run(Options(weights=str(ROOT / "models" / "digits"), out_dir=out, precisions=("fp32",), validate=False,
                         layout="hub"))
    return Path(report["report_file"])


@pytest.fixture
def folder(exported, tmp_path):
    """A copy of the export to tamper with (hard links broken: each file its own)."""
    copy = tmp_path / "export"
    shutil.copytree(exported.parent, copy)
    return copy


def failing(result) -> dict[str, str]:
    return {check.subject: check.detail for check in result.failures}


def rewrite_report(report_file: Path, change) -> None:
    """The report edited and sealed again, as a forger would (the digest is a check, not a signature)."""
    report = json.loads(report_file.read_text())
    change(report)
    report_file.write_text(json.dumps(seal({k: v for k, v in report.items() if k != "integrity"})))


def test_the_hub_files_are_in_the_report_and_verify_holds(exported):
    described = json.loads(exported.read_text())["files"]
    assert {*HUB_ONNX, "config.json", "preprocessor_config.json", "README.md"} <= set(described)
    result = verify([exported])
    # every check of the files holds; the verdict does not (parity was not run, to keep the test cheap)
    assert failing(result) == {str(exported): "the export's parity check did not pass (it was not run)"}
    checked = {check.subject for check in result.checks if check.name == "sha256"}
    assert {str(exported.parent / name) for name in HUB_ONNX} <= checked


def test_hub_files_replaced_by_another_model_fail_naming_each(folder, capsys):
    report = next(folder.glob("*.report.json"))
    model = onnx.load(folder / "model.onnx")  # another model: one weight changed, our metadata kept
    weight = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) + 1, weight.name))
    for name in HUB_ONNX:
        (folder / name).unlink()  # replaced, not written through the hard link the export made
        onnx.save(model, folder / name)
    failures = failing(verify([report]))
    for name in HUB_ONNX:
        assert "the file changed after the export" in failures.get(str(folder / name), ""), failures
    capsys.readouterr()
    assert main(["verify", str(report)]) == 1
    out = capsys.readouterr().out
    assert all(str(folder / name) in out for name in HUB_ONNX), out


def test_hub_files_the_report_does_not_describe_fail(folder):
    """An export of before, whose report had no sha256 of its Hub files: nothing could check them."""
    report = next(folder.glob("*.report.json"))
    rewrite_report(report, lambda r: [r["files"].pop(name) for name in (*HUB_ONNX, "config.json")])
    failures = failing(verify([report]))
    assert any("config.json, model.onnx, onnx/model.onnx" in detail for detail in failures.values()), failures


def recording(open_function, opened: list):
    def opening(path, *args, **kwargs):
        opened.append(path)
        return open_function(path, *args, **kwargs)
    return opening


@pytest.mark.parametrize("name", ["../outside.onnx", "/OUTSIDE/outside.onnx", "linked/outside.onnx", "escape.onnx"])
def test_a_name_that_leaves_the_folder_fails_and_is_never_opened(folder, tmp_path, monkeypatch, name):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"not the export's")
    (folder / "linked").symlink_to(tmp_path, target_is_directory=True)
    (folder / "escape.onnx").symlink_to(outside)
    name = name.replace("/OUTSIDE", str(tmp_path))
    report = next(folder.glob("*.report.json"))
    rewrite_report(report, lambda r: r["files"].update({name: {"bytes": 16, "sha256": "0" * 64}}))
    opened = []
    for module in (builtins, os):  # every open, recorded
        monkeypatch.setattr(module, "open", recording(module.open, opened))
    result = verify([report])
    monkeypatch.undo()
    assert "leaves the export folder" in failing(result).get(name, ""), failing(result)
    assert not result.ok
    assert not [path for path in opened if isinstance(path, (str, os.PathLike))
                and Path(path).resolve() == outside.resolve()], opened
