"""Concurrent calls into one session: every result must equal the serial one. The IO-binding path (the
default on GPUs) is forced on the CPU so that it runs here."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from runtime import Classifier, FeatureExtractor

from ..runtime.conftest import exported  # noqa: F401 (a fixture)

THREADS = 8
CALLS = 48


def images(count: int) -> list[np.ndarray]:
    return [np.random.default_rng(seed).integers(0, 256, (70 + 7 * seed, 110, 3), dtype=np.uint8)
            for seed in range(count)]


def concurrently(call, count: int) -> list:
    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(call, range(count)))


def test_predict_from_threads_with_io_binding_matches_serial(exported):  # noqa: F811
    artifact, _, _ = exported("small_q_pool", batch=None)
    classifier = Classifier.load(artifact, provider="cpu", io_binding=True)
    assert classifier.session.io_binding
    photos = images(5)
    serial = [classifier.predict(photo, top_k=3) for photo in photos]
    got = concurrently(lambda i: classifier.predict(photos[i % 5], top_k=3), CALLS)
    wrong = sum(got[i] != serial[i % 5] for i in range(CALLS))
    assert wrong == 0, f"{wrong} of {CALLS} concurrent results differ from the serial ones"


def test_features_from_threads_with_io_binding_and_mixed_batches_match_serial(exported):  # noqa: F811
    artifact, _, _ = exported("small_q_pool", task="features", batch=None)
    extractor = FeatureExtractor.load(artifact, provider="cpu", io_binding=True)
    photos = images(6)
    batches = [photos[:1], photos[1:3], photos[3:6]]  # three batch shapes, each with its own pool of bindings
    serial = [extractor.extract(batch) for batch in batches]
    got = concurrently(lambda i: extractor.extract(batches[i % 3]), CALLS)
    for i, outputs in enumerate(got):
        for name, value in outputs.items():
            np.testing.assert_array_equal(value, serial[i % 3][name], err_msg=f"call {i}, {name}")


def test_engine_session_from_threads_matches_serial(tmp_path, monkeypatch):
    """The TensorRT engine session's own logic, on a stand-in for TensorRT and CUDA that keeps their rules
    (copies and kernels queued on a stream, device buffers the calls would share)."""
    from runtime.tensorrt import EngineSession

    from ..runtime import fake_tensorrt

    fake_tensorrt.install(monkeypatch)
    engine = tmp_path / "model.engine"
    fake_tensorrt.write_engine(engine)
    session = EngineSession(engine)
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((batch, 3, *fake_tensorrt.SIZE), dtype=np.float32) for batch in (1, 2, 1, 3, 1)]
    serial = [session.run(x)["logits"] for x in inputs]
    for x, logits in zip(inputs, serial):
        np.testing.assert_allclose(logits, fake_tensorrt.expected_logits(x), rtol=1e-6)
    got = concurrently(lambda i: session.run(inputs[i % 5])["logits"], CALLS)
    wrong = sum(not np.array_equal(got[i], serial[i % 5]) for i in range(CALLS))
    assert wrong == 0, f"{wrong} of {CALLS} concurrent results differ from the serial ones"
