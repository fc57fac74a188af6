"""OpenVINO in the runtime: our standard-op graphs against transformers, bf16, concurrency, the compiled-model
cache, auto's choice, and bad input as one line."""

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from export import Options, run
from runtime import Classifier, FeatureExtractor, HieraRuntimeError, Reconstructor, load
from runtime.openvino import CACHE_SUFFIX, OpenVinoSession, check_precision, read_onnx_header, shared_core

from ..conftest import ROOT

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'hiera-deploy[openvino]')")
HAS_BF16 = "BF16" in shared_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
TOLERANCE = 1e-4  # f32: max abs diff against transformers


@pytest.fixture(scope="module")
def standard(transformers_checkpoint, tmp_path_factory):
    """`(config name, task, batch) -> (standard-op fp32 graph, fp16 artifact, transformers model)`."""
    cache = {}

    def make(name: str, task: str = "classify", batch: int | None = None):
        if (name, task, batch) not in cache:
            directory, model = transformers_checkpoint(name, task)
            out = tmp_path_factory.mktemp(f"standard-{name}-{task}-{batch}")
            report = run(Options(weights=str(directory), task=task, batch=batch, out_dir=out, optimize=False,
                                 precisions=("fp32", "fp16"), validate=False))
            cache[name, task, batch] = (out / report["artifacts"]["fp32"]["file"],
                                        out / report["artifacts"]["fp16"]["file"], model)
        return cache[name, task, batch]

    return make


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


@torch.no_grad()
def test_f32_matches_transformers_and_auto_takes_openvino(standard):
    graph, half, reference = standard("small_q_pool")
    pixel_values = np.random.default_rng(0).standard_normal((3, 3, 64, 96), dtype=np.float32)
    expected = reference(torch.from_numpy(pixel_values)).logits.numpy()
    model = Classifier.load(graph, threads=2)  # auto: OpenVINO, for a standard-op graph on this x86 CPU
    assert isinstance(model.session, OpenVinoSession) and model.providers[0].endswith("CPU (f32)")
    assert model.session.input_shape == ["batch", 3, 64, 96] and model.session.output_names == ["logits"]
    assert json.loads(model.session.metadata["hiera.task"]) == "classify" and model.info.labels[3] == "class 3"
    assert np.abs(model.run(pixel_values)["logits"] - expected).max() <= TOLERANCE
    assert np.abs(model.run(pixel_values[:1])["logits"] - expected[:1]).max() <= TOLERANCE  # another batch size
    # the fp16 artifact: its outputs keep their names (OpenVINO also knows them by their casts' inputs)
    assert cosine(load(half, provider="openvino").run(pixel_values)["logits"], expected) >= 0.999


def test_an_ir_converted_from_our_graph_keeps_the_metadata(standard, tmp_path):
    """OpenVINO keeps an ONNX file's metadata_props in the model's runtime info and writes them into its IR."""
    graph, _, _ = standard("small_q_pool")
    ir = tmp_path / "converted.xml"
    ov.save_model(shared_core().read_model(graph), ir, compress_to_fp16=False)
    model = load(ir)  # auto: an IR is OpenVINO's
    assert isinstance(model, Classifier) and isinstance(model.session, OpenVinoSession)
    assert model.info.labels[3] == "class 3" and model.session.output_names == ["logits"]
    pixel_values = np.random.default_rng(0).standard_normal((2, 3, 64, 96), dtype=np.float32)
    np.testing.assert_allclose(model.run(pixel_values)["logits"], load(graph).run(pixel_values)["logits"], atol=1e-6)
    ir.with_suffix(".bin").unlink()
    with pytest.raises(HieraRuntimeError, match=r"converted.xml: OpenVINO cannot read this model \(.*bin file"):
        OpenVinoSession(ir, cache_dir=tmp_path / "cache")


def test_auto_leaves_the_fused_artifact_to_onnxruntime_and_openvino_refuses_it(exported):
    fused, _, _ = exported("small_q_pool", batch=None)
    assert "com.microsoft" in read_onnx_header(fused).domains
    assert Classifier.load(fused).providers == ["CPUExecutionProvider"]
    with pytest.raises(HieraRuntimeError) as error:
        Classifier.load(fused, provider="openvino")
    message = str(error.value)
    assert "\n" not in message
    assert f"give it {fused.stem}.openvino.onnx (python -m export --precision openvino writes it)" in message


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no native bf16")
@torch.no_grad()
def test_bf16_is_close_to_transformers(standard):
    graph, _, reference = standard("small_q_pool")
    pixel_values = np.random.default_rng(1).standard_normal((4, 3, 64, 96), dtype=np.float32)
    expected = reference(torch.from_numpy(pixel_values)).logits.numpy()
    model = Classifier.load(graph, inference_precision="bf16")
    assert model.providers[0].endswith("CPU (bf16)")
    got = model.run(pixel_values)["logits"]
    assert cosine(got, expected) >= 0.999
    assert np.abs(got - expected).max() > TOLERANCE  # it really ran in bf16


def test_precisions_a_cpu_cannot_run_are_refused():
    check_precision("bf16", ["BF16", "FP32"], "a CPU with bf16")
    with pytest.raises(HieraRuntimeError, match=r"^inference precision bf16: this CPU \(Intel Core i7-8700\) has no "
                                                r"native bf16 .*; run in f32, or use the qdq artifact"):
        check_precision("bf16", ["FP32", "INT8", "FP16"], "Intel Core i7-8700")
    with pytest.raises(HieraRuntimeError, match="inference precision 'fp16': choose from f32, bf16"):
        check_precision("fp16", ["FP32"], "any")


@torch.no_grad()
def test_features_with_a_static_batch(standard):
    graph, _, reference = standard("small_q_pool", task="features", batch=2)
    extractor = FeatureExtractor.load(graph, provider="openvino")
    images = [np.random.default_rng(i).integers(0, 256, (80, 120, 3), dtype=np.uint8) for i in range(3)]
    features = extractor.extract(images)  # two chunks of two, the last padded
    expected = reference(torch.from_numpy(extractor.preprocess(images)))
    for name in ("last_hidden_state", "pooler_output"):
        assert features[name].shape[0] == 3
        assert np.abs(features[name] - expected[name].numpy()).max() <= TOLERANCE, name


@torch.no_grad()
def test_mae_masks_as_transformers_does(transformers_mae, tmp_path):
    directory, reference = transformers_mae
    report = run(Options(weights=str(directory), task="mae", batch=None, out_dir=tmp_path, optimize=False,
                         precisions=("fp32",), validate=False))
    model = load(tmp_path / report["artifacts"]["fp32"]["file"], provider="openvino")
    assert isinstance(model, Reconstructor) and model.session.other_inputs == {"noise": np.float32}
    generator = np.random.default_rng(3)
    pixel_values, noise = generator.standard_normal((2, 3, 64, 96), dtype=np.float32), model.noise(2, seed=5)
    expected = reference(pixel_values=torch.from_numpy(pixel_values), noise=torch.from_numpy(noise))
    got = model.run(pixel_values, noise=noise)
    assert np.abs(got["logits"] - expected.logits.numpy()).max() <= TOLERANCE
    assert np.array_equal(got["bool_masked_pos"], expected.bool_masked_pos.numpy())
    assert np.array_equal(got["ids_restore"], expected.ids_restore.numpy())
    with pytest.raises(HieraRuntimeError, match="the model takes inputs pixel_values, noise; given pixel_values$"):
        model.session.run(pixel_values)


def test_concurrent_calls_each_get_their_own_result(standard):
    graph, _, _ = standard("small_q_pool")
    session = OpenVinoSession(graph, threads=2)
    inputs = [np.random.default_rng(i).standard_normal((1 + i % 2, 3, 64, 96), dtype=np.float32) for i in range(6)]
    expected = [session.run(x)["logits"] for x in inputs]
    results, errors = {}, []

    def work(worker):
        try:
            for round_ in range(5):
                i = (worker + round_) % len(inputs)
                results[worker, round_] = i, session.run(inputs[i])["logits"]
        except Exception as error:  # noqa: BLE001 (reported below)
            errors.append(error)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 30
    for i, logits in results.values():
        np.testing.assert_array_equal(logits, expected[i])
    assert 1 <= session._idle.qsize() <= 6  # the pool: at most one request per caller at once


def test_the_cache_is_used_checked_and_never_half_written(standard, tmp_path):
    graph, _, _ = standard("small_q_pool")
    cache = tmp_path / "cache"
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 96), dtype=np.float32)
    first = OpenVinoSession(graph, cache_dir=cache).run(x)["logits"]
    (entry,) = cache.iterdir()
    assert entry.suffix == CACHE_SUFFIX
    written = entry.stat().st_mtime_ns
    np.testing.assert_array_equal(OpenVinoSession(graph, cache_dir=cache).run(x)["logits"], first)
    assert entry.stat().st_mtime_ns == written  # read, not written again
    OpenVinoSession(graph, cache_dir=cache, threads=1)  # other options, another entry
    assert len(list(cache.iterdir())) == 2
    # a flipped byte in the weights: OpenVINO would import it and compute NaN; the digest refuses it
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))
    for damage in (lambda: None, lambda: entry.write_bytes(entry.read_bytes()[:1000]), lambda: entry.write_bytes(b"")):
        damage()
        with pytest.raises(HieraRuntimeError) as error:
            OpenVinoSession(graph, cache_dir=cache)
        assert str(error.value) == (f"{entry}: damaged OpenVINO cache entry (its contents do not match their "
                                    "sha256); delete it, and the model is compiled and cached again")
    entry.unlink()
    np.testing.assert_array_equal(OpenVinoSession(graph, cache_dir=cache).run(x)["logits"], first)
    assert entry.exists() and not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary left
    (tmp_path / "not-a-dir").write_text("")
    with pytest.raises(HieraRuntimeError, match="not-a-dir/cache: cannot create the OpenVINO cache directory"):
        OpenVinoSession(graph, cache_dir=tmp_path / "not-a-dir" / "cache")


def test_a_cache_entry_is_used_only_for_what_it_was_compiled_from(standard, tmp_path):
    honest, _, _ = standard("small_q_pool")
    other, _, _ = standard("small_q_pool", batch=2)  # another model file that takes the same input
    cache = tmp_path / "cache"
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 96), dtype=np.float32)
    OpenVinoSession(honest, cache_dir=cache)
    (entry,) = cache.iterdir()
    OpenVinoSession(other, cache_dir=tmp_path / "other")
    (swapped,) = (tmp_path / "other").iterdir()
    entry.write_bytes(swapped.read_bytes())  # another model's entry under the honest one's name
    with pytest.raises(HieraRuntimeError) as error:
        OpenVinoSession(honest, cache_dir=cache).run(x)
    assert str(error.value) == (f"{entry}: an OpenVINO cache entry compiled from another model file, OpenVINO, "
                                "device or precision than the one asked for; delete it, and the model is compiled "
                                "and cached again")
    if HAS_BF16:  # the same model in another precision: another entry, never this one
        OpenVinoSession(honest, cache_dir=cache, inference_precision="bf16")
        assert len(list(cache.iterdir())) == 2


def test_bad_files_are_one_line(tmp_path):
    (tmp_path / "text.onnx").write_text("not a model")
    (tmp_path / "empty.onnx").write_bytes(b"")
    for path, message in ((tmp_path / "missing.onnx", "no such file"), (tmp_path / "text.onnx", "not an ONNX file"),
                          (tmp_path / "empty.onnx", "not an ONNX file"), (tmp_path, "a directory, not a regular file")):
        with pytest.raises(HieraRuntimeError, match=message) as error:
            OpenVinoSession(path)
        assert "\n" not in str(error.value)


def runtime_cli(*args, code: str = "pass") -> subprocess.CompletedProcess:
    """python -m runtime ARGS, after `code` (e.g. making a module unimportable)."""
    program = f"import sys; {code}; from runtime.cli import main; sys.exit(main({[str(a) for a in args]!r}))"
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT)


def test_cli_provider_and_inference_precision(standard, exported, photo_files):
    graph, _, _ = standard("small_q_pool")
    result = runtime_cli("predict", photo_files[0], "--model", graph, "--provider", "openvino", "--json",
                         *(["--inference-precision", "bf16"] if HAS_BF16 else []))
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["top_k"]) == 5
    fused, _, _ = exported("small_q_pool", batch=None)
    for args, message in (
            (["--provider", "openvino"], "uses onnxruntime's own operators (domain com.microsoft), not for OpenVINO"),
            (["--provider", "cpu", "--inference-precision", "bf16"], "inference precision bf16: OpenVINO's")):
        result = runtime_cli("info", "--model", fused, *args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_without_openvino(standard):
    """`openvino` set to None in sys.modules cannot be imported: auto falls back to onnxruntime, and asking for
    OpenVINO says how to install it."""
    graph, _, _ = standard("small_q_pool")
    hidden = "sys.modules['openvino'] = None"
    result = runtime_cli("info", "--model", graph, "--json", code=hidden)
    assert result.returncode == 0 and json.loads(result.stdout)["providers"] == ["CPUExecutionProvider"]
    result = runtime_cli("info", "--model", graph, "--provider", "openvino", code=hidden)
    assert result.returncode == 2
    assert result.stderr == "error: OpenVINO is not installed: pip install 'hiera-deploy[openvino]'\n"
