"""The Hub folder itself: names, links, config.json and preprocessor_config.json read by transformers (the real
library), onnxruntime on optimum's file, the atomic writer and the CLI's refusals."""

import filecmp
import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoConfig, AutoImageProcessor, HieraForImageClassification

import hiera_model
from export import ExportError, Options, artifact, hub, run
from export.parity import photographs
from runtime import Classifier

from ..conftest import CONFIGS, ROOT
from .conftest import DIGITS

PIXELS = 1e-5  # max abs diff of normalized pixels, as the runtime's own preprocessing tests


def test_files_are_the_artifacts_under_each_tools_names(digits_export, digits_hub):
    artifacts, report = digits_export
    names = sorted(p.relative_to(digits_hub).as_posix() for p in digits_hub.rglob("*") if p.is_file())
    assert names == sorted(["README.md", "config.json", "preprocessor_config.json", report.name, "model.onnx",
                            "onnx/model.onnx", "onnx/model_fp16.onnx", "onnx/model_quantized.onnx",
                            ".hiera-manifest.json"])  # what the folder was written with: it may be replaced
    for precision, name in (("fp32", "model.onnx"), ("fp32", "onnx/model.onnx"), ("fp16", "onnx/model_fp16.onnx"),
                            ("int8", "onnx/model_quantized.onnx")):
        assert os.path.samefile(digits_hub / name, artifacts[precision]), name  # hard links, not copies
        assert artifact.read_artifact(digits_hub / name)["precision"] == precision  # our metadata is inside
    assert (digits_hub / report.name).read_bytes() == report.read_bytes()
    card = (digits_hub / "README.md").read_text()
    weights = json.loads(report.read_text())["weights"]
    assert weights["sha256"] in card and "pipeline_tag: image-classification" in card


def test_config_is_the_checkpoints_own_plus_transformers_js_defaults(digits_hub):
    ours, own = json.loads((digits_hub / "config.json").read_text()), json.loads((DIGITS / "config.json").read_text())
    assert ours.pop("transformers.js_config") == {"dtype": "fp32", "device_config": {"wasm": {"dtype": "q8"}}}
    assert ours == own
    assert AutoConfig.from_pretrained(digits_hub).id2label[7] == "7"


def test_a_config_made_from_the_variant_runs_the_transformers_weights(exported, tmp_path):
    """Without the checkpoint, config.json comes from our architecture: transformers builds a model from it that
    the original checkpoint's weights load into (every key, every shape) and that gives the original's logits."""
    artifact_file, directory, model = exported("tiny")
    folder = hub.publish(hub.layout({"fp32": artifact_file}, hub.report_for(artifact_file)), tmp_path / "hub")
    rebuilt = HieraForImageClassification.from_pretrained(directory, config=AutoConfig.from_pretrained(folder))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(rebuilt(x).logits, model(x).logits)
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {str(i): f"class {i}" for i in range(10)}  # the labels in the artifact
    assert "transformers.js_config" in config and config["transformers.js_config"]["device_config"]["wasm"] == \
        {"dtype": "fp32"}  # no int8 artifact here: WASM's default must name a file that exists


@pytest.mark.parametrize("name", ["small_q_pool", "base"])
def test_transformers_config_matches_what_transformers_saves(name, tmp_path):
    from transformers import HieraConfig

    config = HieraConfig(**CONFIGS[name])
    config.save_pretrained(tmp_path)
    ours_config, *_ = hiera_model.config_files.config_from_file(json.loads((tmp_path / "config.json").read_text()),
                                                              tmp_path)
    ours = HieraConfig(**{k: v for k, v in hub.transformers_config(ours_config, "features", None).items()
                          if k not in ("model_type", "architectures", "id2label", "label2id")}).to_dict()
    theirs = config.to_dict()
    for key in ("transformers_version", "id2label", "label2id", "architectures"):
        ours.pop(key, None), theirs.pop(key, None)
    assert ours == theirs


def test_preprocessor_config_is_our_preprocessing_in_transformers(digits_hub):
    processor = AutoImageProcessor.from_pretrained(digits_hub)
    assert type(processor).__name__.startswith("BitImageProcessor")
    ours = Classifier.load(digits_hub / "onnx" / "model.onnx").info.preprocessing
    for name, image in photographs().items():
        for picture in (image, image.rotate(90, expand=True)):
            theirs = processor(picture, return_tensors="np")["pixel_values"][0]
            assert np.abs(ours(picture) - theirs).max() <= PIXELS, name


def test_optimums_file_runs_in_onnxruntime_as_the_runtime_runs_it(digits_hub):
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32)
    session = ort.InferenceSession(digits_hub / "model.onnx", providers=["CPUExecutionProvider"])
    expected = Classifier.load(digits_hub / "onnx" / "model.onnx").run(x)["logits"]
    assert np.abs(session.run(["logits"], {"pixel_values": x})[0] - expected).max() <= 1e-6


def test_weights_over_2gb_keep_their_external_data_under_transformers_js_names(tmp_path, monkeypatch):
    """An artifact with its weights in `<file>.data` (Hiera-H): the folder links the data as `onnx/model.onnx_data`
    and its graph files name it; both ONNX files run."""
    monkeypatch.setattr(artifact, "EXTERNAL_DATA_BYTES", 100_000)  # the digits model's 1.3 MB then counts as large
    report = run(Options(weights=str(DIGITS), out_dir=tmp_path / "export", precisions=("fp32",), validate=False))
    fp32 = tmp_path / "export" / report["artifacts"]["fp32"]["file"]
    assert fp32.with_name(fp32.name + ".data").is_file()
    folder = hub.publish(hub.layout({"fp32": fp32}, hub.report_for(fp32), DIGITS), tmp_path / "hub")
    data = folder / "onnx" / "model.onnx_data"  # a copy: onnx refuses external data with several hard links
    assert filecmp.cmp(data, fp32.with_name(fp32.name + ".data"), shallow=False) and data.stat().st_nlink == 1
    assert json.loads((folder / "config.json").read_text())["transformers.js_config"]["use_external_data_format"] == \
        {"model.onnx": 1}
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32)
    expected = Classifier.load(fp32).run(x)["logits"]
    for name in ("model.onnx", "onnx/model.onnx"):
        got = ort.InferenceSession(folder / name, providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})[0]
        assert np.array_equal(got, expected), name


def test_tasks_without_a_place_are_refused_in_one_line():
    with pytest.raises(ExportError, match="transformers has no video Hiera"):
        hub.check("classify", True, ("fp32",))
    with pytest.raises(ExportError, match="needs the fp32 artifact"):
        hub.check("classify", False, ("fp16", "int8"))
    for task in ("classify", "features", "backbone", "mae"):
        hub.check(task, False, ("fp32",))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "export", "hub", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_cli_writes_the_folder_and_replaces_its_own(digits_export, tmp_path):
    artifacts, _ = digits_export
    out = tmp_path / "hub"
    for _ in range(2):  # the second run replaces the first folder whole
        done = cli(artifacts["fp16"], "--out", out, "--checkpoint", DIGITS, "--bench-runs", "2")
        assert done.returncode == 0, done.stderr
        assert "onnx/model_quantized.onnx" in done.stdout
    assert "| `onnx/model.onnx` |" in (out / "README.md").read_text()  # the speed table
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hub"]  # no staging, old folder or lock left


def test_cli_refuses_without_writing(digits_export, tmp_path):
    artifacts, report = digits_export
    stranger = tmp_path / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep me")
    done = cli(artifacts["fp32"], "--out", stranger, "--checkpoint", DIGITS, "--bench-runs", "0")
    assert done.returncode == 2 and "is not a folder that python -m export wrote" in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert [p.name for p in stranger.iterdir()] == ["notes.txt"]

    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(artifacts["fp32"].read_bytes())
    done = cli(lonely, "--out", tmp_path / "a")
    assert done.returncode == 2 and "no report beside it" in done.stderr

    changed = tmp_path / "changed"
    changed.mkdir()
    for file in (*artifacts.values(), report):
        (changed / file.name).write_bytes(file.read_bytes())
    with open(changed / artifacts["int8"].name, "ab") as handle:
        handle.write(b"\0")
    done = cli(changed / artifacts["fp32"].name, "--out", tmp_path / "b", "--bench-runs", "0")
    assert done.returncode == 2 and "changed after the export" in done.stderr
    assert not (tmp_path / "b").exists()

    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    done = cli(fifo, "--out", tmp_path / "c")
    assert done.returncode == 2 and "FIFO" in done.stderr

    done = cli(artifacts["fp32"], "--out", tmp_path / "d", "--bench-runs", "0")  # a custom architecture
    assert done.returncode == 2 and "pass the checkpoint it was exported from" in done.stderr
    assert cli(artifacts["fp32"], "--out", tmp_path / "e", "--bench-runs", "-1").returncode == 2
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == \
        ["changed", "fifo.onnx", "lonely.onnx", "mine"]


def test_a_failed_write_leaves_nothing(digits_export, tmp_path):
    artifacts, report = digits_export
    files = hub.layout(artifacts, report, DIGITS)
    files["onnx/broken.onnx"] = tmp_path  # a directory where a file should be: the write fails midway
    with pytest.raises(ExportError, match="not a regular file"):
        hub.publish(files, tmp_path / "hub")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("checkpoint", ["fair_hub", "timm_hub"])
def test_fair_and_timm_weights_get_a_transformers_config_of_their_architecture(checkpoint, tmp_path):
    """FAIR's and timm's checkpoints have no transformers config: config.json is made from the architecture our
    loader reads from their config.json, and reads back as the same architecture."""
    path = ROOT / "tests" / "fixtures" / "reference" / checkpoint
    report = run(Options(weights=str(path), out_dir=tmp_path / "export", precisions=("fp32",), validate=False))
    fp32 = tmp_path / "export" / report["artifacts"]["fp32"]["file"]
    folder = hub.publish(hub.layout({"fp32": fp32}, hub.report_for(fp32), path), tmp_path / "hub")
    config = json.loads((folder / "config.json").read_text())
    assert AutoConfig.from_pretrained(folder).model_type == "hiera"
    assert config["id2label"] == {str(i): f"LABEL_{i}" for i in range(10)}
    ours, *_ = hiera_model.config_files.config_from_file(config, folder)
    assert ours.replace(num_classes=len(config["id2label"])) == hiera_model.load(path).config  # classes: from the head
