"""Core ML packages (docs/edge.md): a small Hiera converts to ML Program packages (fp32, fp16) whose user-defined
metadata, inputs, outputs and ranks are checked with coremltools' own reader; the packages are folders, which the
export hashes, commits (a new export replaces and removes them whole) and `verify` checks, a changed byte inside
failing it. The run itself needs an Apple system: the report records that it was not run, and why."""

import hashlib
import json
import shutil

import numpy as np
import pytest

from export import Options, run, verify
from runtime import commit, files
from runtime.cli import main
from runtime.errors import FileError

from ..conftest import failed_rows, probe_logits

ct = pytest.importorskip("coremltools", reason="the coreml extra is not installed")

PRECISIONS = ("coreml-fp16",)  # one conversion (about 10 s here); fp32 differs only in compute_precision


@pytest.fixture(scope="module")
def exported(transformers_checkpoint, tmp_path_factory):
    directory, model = transformers_checkpoint("small_q_pool")
    out = tmp_path_factory.mktemp("coreml")
    report = run(Options(weights=str(directory), batch=1, out_dir=out, precisions=PRECISIONS))
    return report, out, model


def test_the_packages_carry_our_metadata_and_stay_within_core_mls_ranks(exported):
    report, out, model = exported
    assert report["passed"] is True, failed_rows(report)
    for precision in PRECISIONS:
        entry = report["artifacts"][precision]
        assert entry["passed"] is None and "Apple" in entry["skipped"], (precision, entry)
        assert entry["max_rank"] <= 4, f"{precision}: rank {entry['max_rank']}"
        assert {"linear", "softmax", "layer_norm"} <= set(entry["ops"]), f"{precision}: ops {entry['ops']}"
        spec = ct.utils.load_spec(str(out / entry["file"]))
        assert [i.name for i in spec.description.input] == ["pixel_values"]
        assert list(spec.description.input[0].type.multiArrayType.shape) == [1, 3, 64, 96]
        assert [o.name for o in spec.description.output] == ["logits"]
        meta = dict(spec.description.metadata.userDefined)
        assert json.loads(meta["hiera.precision"]) == ("fp16" if precision == "coreml-fp16" else "fp32")
        assert json.loads(meta["hiera.labels"]) == [model.config.id2label[i] for i in range(10)]
        assert json.loads(meta["hiera.input_size"]) == [64, 96] and json.loads(meta["hiera.task"]) == "classify"


def test_the_package_carries_pytorchs_probe_and_check_says_it_is_not_run_here(exported, capsys):
    """The probe in the package's metadata holds its photographs and PyTorch's outputs (transformers' logits on those
    pixels, normalized here by hand) with fp16's bound, and no engine's run (nothing runs a package here); `check` on
    a package is one line saying why it is not run, exit 2 as for any engine this machine cannot run."""
    report, out, reference = exported
    package = out / report["artifacts"]["coreml-fp16"]["file"]
    meta = dict(ct.utils.load_spec(str(package)).description.metadata.userDefined)
    document, pre = json.loads(meta["hiera.probe"]), json.loads(meta["hiera.preprocessing"])

    got, want = probe_logits(document, pre, reference)
    assert got.shape == want.shape == (2, 10) and np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()
    assert document["reference"]["bound"] == {"cosine": 0.999} and "engine" not in document, document.keys()
    assert main(["check", str(package)]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == f"error: {package}: not run: Core ML runs only on Apple systems " \
                                                "(macOS, iOS)\n", printed
    for command in (["predict", "--model", str(package), str(package)], ["info", "--model", str(package)]):
        assert main(command) == 2, command  # every command that would run it says why not, in one line
        printed = capsys.readouterr()
        assert printed.err == f"error: {package}: not run: Core ML runs only on Apple systems (macOS, iOS)\n", printed


def test_a_package_is_hashed_as_its_files(exported):
    """The report's sha256 of a package: sha256 over `<relative path> <sha256>` lines in path order, computed here
    with hashlib from the files themselves."""
    report, out, _ = exported
    package = out / report["artifacts"]["coreml-fp16"]["file"]
    lines = sorted((p.relative_to(package).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest())
                   for p in package.rglob("*") if p.is_file())
    expected = hashlib.sha256("".join(f"{name} {digest}\n" for name, digest in lines).encode()).hexdigest()
    assert report["files"][package.name]["sha256"] == expected
    assert report["files"][package.name]["bytes"] == sum((package / name).stat().st_size for name, _ in lines)


def test_verify_passes_on_the_packages_and_fails_on_a_changed_file_inside(exported, tmp_path):
    report, out, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    report_file = copy / report["report_file"].rsplit("/", 1)[1]
    assert verify([report_file]).ok, verify([report_file]).failures
    weights = next((copy / report["artifacts"]["coreml-fp16"]["file"]).rglob("weight.bin"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    failures = verify([report_file]).failures
    assert [(f.name, f.subject.rsplit("/", 1)[1]) for f in failures] == [
        ("sha256", report["artifacts"]["coreml-fp16"]["file"])], failures


def test_a_commit_replaces_and_removes_folders_whole(tmp_path):
    """runtime/commit.py with folder artifacts: a package of the new set replaces the old one whole (no file of the old
    one left inside), and a package of the old set that the new one lacks is removed."""
    staging, target = tmp_path / "staging", tmp_path / "target"
    for folder, names in ((staging / "a.mlpackage", ["new.bin"]), (target / "a.mlpackage", ["old.bin", "x/y.bin"]),
                          (target / "b.mlpackage", ["old.bin"])):
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(name)
    commit.commit_files(staging, target, ["a.mlpackage"], remove=["b.mlpackage"])
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["a.mlpackage", "a.mlpackage/new.bin"]
    assert not staging.exists()


def test_a_link_inside_a_folder_artifact_is_refused(tmp_path):
    (tmp_path / "model.mlpackage").mkdir()
    (tmp_path / "model.mlpackage" / "Manifest.json").write_text("{}")
    (tmp_path / "model.mlpackage" / "elsewhere").symlink_to("/etc/hostname")
    with pytest.raises(FileError, match="elsewhere: a link"):
        files.sha256_folder(tmp_path / "model.mlpackage")
