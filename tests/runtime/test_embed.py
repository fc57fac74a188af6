"""python -m runtime embed: features of many images in one file, equal to `FeatureExtractor.extract`, read
back with the safetensors library itself, resumable after a kill, never half-written."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import load_file

from runtime import FeatureExtractor, HieraRuntimeError, commit
from runtime.cli import main
from runtime.embed import embed, read

from ..conftest import ROOT
from .conftest import runtime_cli


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """20 small photographs-to-be in two subfolders, and one file that is not an image."""
    directory = tmp_path_factory.mktemp("dataset")
    for index in range(20):
        sub = directory / f"part{index % 2}"
        sub.mkdir(exist_ok=True)
        pixels = np.random.default_rng(index).integers(0, 256, (60 + index, 90, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(sub / f"{index:02d}.png")
    (directory / "part0" / "broken.jpg").write_bytes(b"not a jpeg")
    return directory


@pytest.fixture(scope="module")
def features(exported):
    artifact, _, _ = exported("small_q_pool", task="features", batch=None)
    return artifact


def good_images(folder) -> list:
    return sorted(p for p in folder.rglob("*.png"))


def test_npy_equals_extract_and_lists_the_failed(features, folder, tmp_path):
    out = tmp_path / "features.npy"
    result = runtime_cli("embed", folder, "--model", features, "--out", out)
    assert result.returncode == 1, result.stderr  # one image failed
    broken = folder / "part0" / "broken.jpg"
    assert result.stderr == f"error: {broken}: not an image this runtime reads (JPEG, PNG, WEBP, BMP, GIF, TIFF, " \
        "PPM, AVIF)\n"
    assert result.stdout.startswith(f"wrote {out}: 20 images, 1 failed; their errors in {out}.json")
    index = json.loads((tmp_path / "features.npy.json").read_text())
    images = good_images(folder)
    assert index["images"] == [str(p) for p in images]
    assert [entry["image"] for entry in index["failed"]] == [str(broken)]
    expected = FeatureExtractor.load(features).extract(images)
    np.testing.assert_array_equal(np.load(out), expected["pooler_output"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npy", "features.npy.json"]  # nothing else left


def test_safetensors_with_every_output_reads_with_the_library(features, folder, tmp_path):
    out = tmp_path / "features.safetensors"
    images = good_images(folder)[:7]
    extractor = FeatureExtractor.load(features)
    done = embed(extractor, images, out, outputs=["last_hidden_state", "pooler_output"], batch_size=3)
    assert done.images == [str(p) for p in images] and done.failed == [] and done.index is None
    tensors = load_file(out)  # the safetensors library's own reader
    expected = extractor.extract(images, batch_size=3)
    assert set(tensors) == {"last_hidden_state", "pooler_output"}
    for name, value in tensors.items():
        np.testing.assert_array_equal(value, expected[name])
    with safe_open(out, "np") as file:
        metadata = file.metadata()
    assert json.loads(metadata["images"]) == [str(p) for p in images] and json.loads(metadata["failed"]) == []
    assert metadata["model_sha256"] == done.model_sha256 and metadata["format"] == "hiera-embed"


def test_a_killed_run_continues_where_it_stopped_and_equals_an_uninterrupted_one(features, folder, tmp_path):
    whole = tmp_path / "whole.npy"
    assert runtime_cli("embed", folder, "--model", features, "--out", whole, "--batch-size", "1").returncode == 1
    out = tmp_path / "resumed.npy"
    journal = tmp_path / ".resumed.npy.partial" / "journal"
    command = [sys.executable, "-m", "runtime", "embed", str(folder), "--model", str(features), "--out", str(out),
               "--batch-size", "1"]
    run = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and run.poll() is None:
        if journal.exists() and journal.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.002)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not out.exists() and journal.exists(), "the run was to be killed half-way"
    lines = journal.read_bytes().count(b"\n")
    assert 3 <= lines < 20
    with open(journal, "ab") as file:  # as if the kill had cut a journal line short, rows written
        file.write(b'{"images": ["cut sh')
    with open(journal.with_name("rows"), "ab") as file:
        file.write(b"\0" * 100)
    resumed = runtime_cli("embed", folder, "--model", features, "--out", out, "--batch-size", "1")
    assert resumed.returncode == 1, resumed.stderr
    assert f"{lines} of them from an earlier run" in resumed.stdout
    assert out.read_bytes() == whole.read_bytes()
    index = json.loads((tmp_path / "resumed.npy.json").read_text())
    assert index == json.loads((tmp_path / "whole.npy.json").read_text())
    assert not journal.parent.exists()


def test_a_finished_output_is_reused_for_the_images_it_holds(features, folder, tmp_path):
    images = good_images(folder)
    extractor = FeatureExtractor.load(features)
    out = tmp_path / "grow.safetensors"
    first = embed(extractor, images[:8], out)
    assert first.reused == 0
    grown = embed(extractor, images, out)  # the same file, more images
    assert grown.reused == 8 and grown.images == [str(p) for p in images]
    embed(extractor, images, tmp_path / "direct.safetensors")
    assert out.read_bytes() == (tmp_path / "direct.safetensors").read_bytes()


def test_after_a_reuse_every_row_is_under_its_own_image(features, folder, tmp_path):
    """The reused rows are journalled first and the new ones after them; the file holds them in the index's order,
    each equal to the model run on that image alone."""
    images = good_images(folder)[:6]
    extractor = FeatureExtractor.load(features)
    out = tmp_path / "grow.npy"
    embed(extractor, images[3:], out)
    grown = embed(extractor, images, out)  # 3 to 5 reused, 0 to 2 computed after them
    assert grown.reused == 3 and read(out).images == [str(p) for p in images]
    rows = np.load(out)
    for row, image in zip(rows, images):
        alone = extractor.extract([image])["pooler_output"][0]
        assert np.abs(row - alone).max() <= 1e-5, f"{image.name}: its row is not its features"


def test_another_models_output_is_left_alone(features, exported, folder, tmp_path):
    other, _, _ = exported("small_q_pool", task="features", batch=2)  # other weights file: another sha256
    out = tmp_path / "features.npy"
    assert runtime_cli("embed", folder / "part1", "--model", features, "--out", out).returncode == 0
    before = out.read_bytes()
    refused = runtime_cli("embed", folder / "part1", "--model", other, "--out", out)
    assert refused.returncode == 2
    assert refused.stderr == f"error: {out}: holds other features (another model, or other outputs); choose another " \
        "output file, or remove it to write it anew\n"
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.npy", "features.npy.json"]


def test_one_run_at_a_time(features, folder, tmp_path):
    out = tmp_path / "features.npy"
    with commit.lock(tmp_path / ".features.npy.lock"):
        busy = runtime_cli("embed", folder, "--model", features, "--out", out)
    assert busy.returncode == 2
    assert busy.stderr == f"error: {out}: another run (pid {os.getpid()}) is writing it now\n"
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_requests_are_one_line(features, exported, folder, tmp_path, capsys):
    classifier, _, _ = exported("small_q_pool", batch=None)
    cases = {
        ("--model", classifier, "--out", tmp_path / "f.npy"): "a classify model; embed needs a features or backbone",
        ("--model", features, "--out", tmp_path / "f.csv"): "--out " + str(tmp_path / "f.csv") + ": name it .npy",
        ("--model", features, "--out", tmp_path / "f.npy", "--outputs", "pooler_output", "last_hidden_state"):
            "a .npy file holds one array",
        ("--model", features, "--out", tmp_path / "f.npy", "--outputs", "logits"): "outputs logits: choose each once",
    }
    capsys.readouterr()  # what making the fixtures printed
    for arguments, message in cases.items():
        assert main(["embed", str(folder), *map(str, arguments)]) == 2, arguments
        stdout, stderr = capsys.readouterr()
        assert stdout == "" and stderr.count("\n") == 1 and stderr.startswith("error: ") and message in stderr
    assert list(tmp_path.iterdir()) == []


def test_read_refuses_what_it_did_not_write(tmp_path):
    np.save(tmp_path / "plain.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(HieraRuntimeError, match=r"plain.npy.json: no such file"):
        read(tmp_path / "plain.npy")
    (tmp_path / "plain.npy.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(HieraRuntimeError, match=r"plain.npy: not an embedding this runtime reads"):
        read(tmp_path / "plain.npy")
    os.mkfifo(tmp_path / "fifo.npy")
    with pytest.raises(HieraRuntimeError, match=r"fifo.npy: a FIFO, not a regular file"):
        read(tmp_path / "fifo.npy")
