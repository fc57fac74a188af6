"""LiteRT sessions (runtime/litert.py): `python -m runtime predict` on a `.tflite` in a process where torch cannot
be imported, concurrent calls, and the files it refuses in one line with exit 2: no Hiera metadata, metadata that
disagrees with the model's tensors, a file that is not TFLite."""

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from export import Options, run
from runtime import load
from runtime.errors import HieraRuntimeError
from runtime.interface import Session

from ..conftest import ROOT, failed_rows

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

STEM = "hiera_digits_classify"


@pytest.fixture(scope="module")
def tflite(tmp_path_factory):
    out = tmp_path_factory.mktemp("litert")
    report = run(Options(weights=str(ROOT / "models" / "digits"), out_dir=out, precisions=("litert",)))
    assert report["passed"], failed_rows(report)
    return out / f"{STEM}.tflite"


def rewritten(source, target, change):
    """`source` written to `target` with its metadata entries passed through `change(name, text) -> text or None`
    (None drops the entry): the flatbuffer rewritten by ai-edge-litert's own tools."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(source.read_bytes()))
    kept = []
    for entry in model.metadata:
        name = entry.name.decode()
        text = change(name, bytes(model.buffers[entry.buffer].data).decode()) if name.startswith("hiera.") else ""
        if text is None:
            continue
        if name.startswith("hiera."):
            model.buffers[entry.buffer].data = list(text.encode())
        kept.append(entry)
    model.metadata = kept
    target.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    return target


def predict(model, image, *options):
    """`python -m runtime predict` with torch unimportable (None in sys.modules), as on an edge box."""
    code = ("import sys; sys.modules['torch'] = None; from runtime.cli import main; "
            f"sys.exit(main(['predict', {str(image)!r}, '--model', {str(model)!r}, *{list(options)!r}]))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


def one_line(result) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_predict_runs_without_torch(tflite, photo_files):
    result = predict(tflite, photo_files[0], "--json", "--provider", "litert")
    assert result.returncode == 0, result.stderr
    top = json.loads(result.stdout)["top_k"]
    assert len(top) == 5 and abs(sum(p["score"] for p in top) - 1) < 0.2  # ten classes: the best five hold most
    in_process = load(tflite).predict(photo_files[0], top_k=5)
    assert [p["index"] for p in top] == [p.index for p in in_process]


def test_a_tflite_without_hiera_metadata_is_one_line(tflite, photo_files, tmp_path):
    bare = rewritten(tflite, tmp_path / "bare.tflite", lambda name, text: None)
    line = one_line(predict(bare, photo_files[0]))
    assert "bare.tflite" in line and "no Hiera metadata" in line


@pytest.mark.parametrize("entry, value, says", [
    ("hiera.batch", "4", "input is [1, 3, 64, 64], its metadata says [4, 3, 64, 64]"),
    ("hiera.outputs", '["logits", "probabilities"]', "outputs are logits, its metadata says logits, probabilities"),
])
def test_metadata_that_disagrees_with_the_tensors_is_one_line(tflite, photo_files, tmp_path, entry, value, says):
    edited = rewritten(tflite, tmp_path / "edited.tflite", lambda name, text: value if name == entry else text)
    line = one_line(predict(edited, photo_files[0]))
    assert "edited.tflite" in line and "damaged Hiera metadata" in line and says in line, line


def test_a_file_that_is_not_tflite_is_one_line(photo_files, tmp_path):
    (tmp_path / "notes.tflite").write_text("not a model at all")
    line = one_line(predict(tmp_path / "notes.tflite", photo_files[0]))
    assert "notes.tflite" in line and "not a TFLite model" in line


def test_another_provider_is_refused(tflite):
    with pytest.raises(HieraRuntimeError, match="runs with LiteRT"):
        load(tflite, provider="openvino")


def test_concurrent_calls_give_the_serial_results(tflite):
    model = load(tflite, threads=1)
    assert isinstance(model.session, Session)  # runtime/interface.py's Protocol
    inputs = np.random.default_rng(0).standard_normal((8, 1, 3, 64, 64)).astype(np.float32)
    serial = [model.run(x)["logits"] for x in inputs]
    got = [None] * len(inputs)

    def work(index):
        got[index] = model.run(inputs[index])["logits"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(np.array_equal(a, b) for a, b in zip(got, serial))


def test_without_ai_edge_litert_it_is_one_line_naming_the_extra(tflite, photo_files):
    code = ("import sys; sys.modules['ai_edge_litert'] = None; from runtime.cli import main; "
            f"sys.exit(main(['predict', {str(photo_files[0])!r}, '--model', {str(tflite)!r}]))")
    line = one_line(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT))
    assert "pip install 'hiera-deploy[litert]'" in line
