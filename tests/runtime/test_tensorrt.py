"""TensorRT engines through the runtime: the sidecar checks run everywhere; running an engine needs
TensorRT, which cannot be installed in this workplace, so those tests skip with the reason."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from export import Options, read_artifact, run
from runtime import Classifier, HieraRuntimeError, Preprocessing, files
from runtime.artifact import read_sidecar, sidecar_path
from runtime.interface import Session
from runtime.tensorrt import EngineSession, check_compatible

from . import fake_tensorrt

NO_TENSORRT = "TensorRT's libraries come only from NVIDIA's package index, which this machine cannot reach"
SIDECAR = {"tensorrt_version": "10.3.0", "compute_capability": "8.9", "gpu": "NVIDIA L4", "onnx": "hiera.onnx",
           "engine_sha256": "0" * 64, "metadata": {}}


def refusal(sidecar: dict, version: str, capability: tuple) -> str | None:
    try:
        check_compatible(Path("m.engine"), sidecar, version, capability)
    except HieraRuntimeError as error:
        return str(error)
    return None


def test_an_engine_runs_only_where_it_was_built_for():
    assert refusal(SIDECAR, "10.3.0", (8, 9)) is None
    assert refusal(SIDECAR, "10.4.0", (8, 9)) == ("m.engine: built with TensorRT 10.3.0, this machine has 10.4.0; "
                                                 "rebuild it on this machine from hiera.onnx (python -m export --trt, "
                                                 "or trtexec)")
    other_gpu = refusal(SIDECAR, "10.3.0", (9, 0))
    assert "built for compute capability 8.9 (NVIDIA L4), this GPU is 9.0; rebuild" in other_gpu


def test_compatibility_options_widen_where_it_runs():
    portable = {**SIDECAR, "version_compatible": True, "hardware_compatible": True}
    assert refusal(portable, "10.8.1", (9, 0)) is None  # a later TensorRT 10 on a Hopper GPU
    assert refusal(portable, "10.2.0", (8, 9)) is not None  # but not an earlier TensorRT
    assert refusal(portable, "11.0.0", (8, 9)) is not None  # nor another major version
    assert refusal(portable, "10.3.0", (7, 5)) is not None  # nor a GPU before Ampere


def test_a_missing_or_damaged_sidecar_is_named(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    with pytest.raises(HieraRuntimeError, match=r"m.engine: no sidecar m.engine.json next to the engine"):
        read_sidecar(engine)
    sidecar_path(engine).write_text('{"tensorrt_version": "10.3.0"}')
    with pytest.raises(HieraRuntimeError, match=r"m.engine.json: damaged engine sidecar: compute_capability None"):
        read_sidecar(engine)
    for field, value in {"tensorrt_version": 10.3, "engine_sha256": "abc", "version_compatible": "yes",
                         "metadata": ["hiera.task"]}.items():
        sidecar_path(engine).write_text(json.dumps({**SIDECAR, field: value}))
        with pytest.raises(HieraRuntimeError, match=f"m.engine.json: damaged engine sidecar: {field}"):
            read_sidecar(engine)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
def test_without_tensorrt_an_engine_gets_an_install_hint(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    sidecar_path(engine).write_text(json.dumps(SIDECAR))
    with pytest.raises(HieraRuntimeError, match=r"m.engine: running a TensorRT engine needs tensorrt "
                                                r"\(pip install 'hiera-deploy\[tensorrt\]'\)"):
        Classifier.load(engine)
    with pytest.raises(HieraRuntimeError, match="runs only with TensorRT, not provider 'cpu'"):
        Classifier.load(engine, provider="cpu")


def test_an_engine_matches_onnxruntime(transformers_checkpoint, tmp_path):
    """Build an fp32 engine from the standard-op graph with TensorRT's own API, run both through the runtime."""
    trt = pytest.importorskip("tensorrt", reason=NO_TENSORRT)
    cudart = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    directory, _ = transformers_checkpoint("small_q_pool")
    report = run(Options(weights=str(directory), out_dir=tmp_path, precisions=("fp32",), optimize=False,
                         validate=False))
    onnx_file = tmp_path / report["artifacts"]["fp32"]["file"]
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(onnx_file))
    engine = tmp_path / "small.engine"
    engine.write_bytes(builder.build_serialized_network(network, builder.create_builder_config()))
    error, properties = cudart.cudaGetDeviceProperties(0)
    metadata = {f"hiera.{key}": json.dumps(value) for key, value in read_artifact(onnx_file).items()}
    sidecar_path(engine).write_text(json.dumps({"tensorrt_version": trt.__version__, "metadata": metadata,
                                                "compute_capability": f"{properties.major}.{properties.minor}",
                                                "engine_sha256": files.sha256(engine)}))
    image = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    expected = Classifier.load(onnx_file).predict(image)
    got = Classifier.load(engine).predict(image)
    assert [p.index for p in got] == [p.index for p in expected]
    assert np.abs(np.array([p.score for p in got]) - [p.score for p in expected]).max() <= 1e-4


def test_the_tensorrt_provider_of_onnxruntime(transformers_checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no TensorRT provider (onnxruntime-gpu with TensorRT's libraries)")
    directory, _ = transformers_checkpoint("small_q_pool")
    report = run(Options(weights=str(directory), out_dir=tmp_path, precisions=("fp32",), validate=False))
    onnx_file = tmp_path / report["artifacts"]["fp32"]["file"]
    image = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    got = Classifier.load(onnx_file, provider="tensorrt", cache_dir=tmp_path / "cache")
    assert got.providers[0] == "TensorrtExecutionProvider"
    expected = Classifier.load(onnx_file, provider="cpu").predict(image)
    assert np.abs(np.array([p.score for p in got.predict(image)]) - [p.score for p in expected]).max() <= 1e-3


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
def test_the_sidecar_command_for_trtexec_engines_needs_tensorrt(tmp_path):
    from runtime.cli import main

    engine = tmp_path / "m.engine"
    assert main(["sidecar", str(engine), "--onnx", "m.onnx"]) == 2  # a missing engine
    engine.write_bytes(b"engine")
    assert main(["sidecar", str(engine), "--onnx", "m.onnx"]) == 2  # no TensorRT to say what built it
    assert not sidecar_path(engine).exists()


def stand_in_metadata(labels: int = fake_tensorrt.CLASSES) -> dict[str, str]:
    """The hiera.* metadata of a classifier as the stand-in engine is one: 8 x 12 images, dynamic batch."""
    values = {"format_version": 1, "variant": "stand-in", "task": "classify", "input_size": list(fake_tensorrt.SIZE),
              "batch": "dynamic", "outputs": ["logits"], "precision": "fp16",
              "preprocessing": Preprocessing.for_input_size(fake_tensorrt.SIZE).to_dict(),
              "labels": [f"class {i}" for i in range(labels)],
              "weights": {"source": "random:0", "sha256": None, "verified": False}}
    return {f"hiera.{key}": json.dumps(value) for key, value in values.items()}


def test_an_engine_runs_through_the_classifier(tmp_path, monkeypatch):
    """EngineSession's logic on the stand-in for TensorRT and CUDA: the classifier's top 5 from its logits."""
    fake_tensorrt.install(monkeypatch)
    engine = tmp_path / "model.engine"
    fake_tensorrt.write_engine(engine, metadata=stand_in_metadata())
    classifier = Classifier.load(engine)
    assert classifier.providers == ["TensorRT 10.3.0"] and classifier.session.max_batch == fake_tensorrt.MAX_BATCH
    assert isinstance(classifier.session, Session)  # the interface every engine keeps (runtime/interface.py)
    images = [np.random.default_rng(i).integers(0, 256, (30, 40, 3), dtype=np.uint8) for i in range(11)]
    predictions = classifier.predict(images, batch_size=16)  # two calls: the profile takes at most 8
    logits = fake_tensorrt.expected_logits(classifier.preprocess(images)).astype(np.float64)
    scores = np.exp(logits - logits.max(1, keepdims=True))
    scores /= scores.sum(1, keepdims=True)
    for top5, expected in zip(predictions, scores):
        assert [p.index for p in top5] == list(np.argsort(-expected)[:5])
        assert np.abs([p.score for p in top5] - np.sort(expected)[::-1][:5]).max() <= 1e-6
        assert top5[0].label == f"class {top5[0].index}"


def test_a_swapped_engine_is_refused_before_it_is_deserialized(tmp_path, monkeypatch):
    deserialized = fake_tensorrt.install(monkeypatch)
    engine = tmp_path / "model.engine"
    fake_tensorrt.write_engine(engine, metadata=stand_in_metadata())
    engine.write_bytes(fake_tensorrt.MAGIC + b"another model's weights")  # same TensorRT, same GPU
    with pytest.raises(HieraRuntimeError) as refused:
        EngineSession(engine)
    assert str(refused.value) == (f"{engine}: not the engine its sidecar model.engine.json describes (its sha256 "
                                  "differs from engine_sha256); rebuild the engine and its sidecar from model.onnx")
    assert deserialized == []


def test_a_damaged_engine_is_one_line(tmp_path, monkeypatch):
    fake_tensorrt.install(monkeypatch)
    engine = tmp_path / "model.engine"
    fake_tensorrt.write_engine(engine, plan=b"garbage that hashes as recorded")
    with pytest.raises(HieraRuntimeError, match=r"model.engine: TensorRT cannot deserialize this engine"):
        EngineSession(engine)


def test_labels_must_match_the_engines_classes(tmp_path, monkeypatch):
    fake_tensorrt.install(monkeypatch)
    engine = tmp_path / "model.engine"
    fake_tensorrt.write_engine(engine, metadata=stand_in_metadata(labels=9))
    with pytest.raises(HieraRuntimeError) as refused:
        Classifier.load(engine)
    assert str(refused.value) == (f"{sidecar_path(engine)}: damaged Hiera metadata: hiera.labels has 9 names, the "
                                  "model has 10 classes")
