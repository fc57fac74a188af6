"""A real Triton server (nvidia-pytriton's tritonserver, on loopback ports) serving the python-backend repository
of the digits model: what clients get over HTTP and gRPC is what `runtime predict` answers for the same files."""

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from runtime import FeatureExtractor, HieraRuntimeError, load_segmenter
from runtime.triton import Options, write_repository
from runtime.triton.repository import sanitized
from runtime.triton.server import LocalServer, python_path

from ..conftest import ROOT
from .conftest import SERVER_VENV, checkout_paths

http = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (pip install -e '.[triton]')")
grpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed (pip install -e '.[triton]')")
from tritonclient.utils import InferenceServerException  # noqa: E402

TOLERANCE = 1e-5  # softmax scores and features, against the runtime in this process


@pytest.fixture(scope="module")
def server(digits, sam2_encoder, sam2_decoder, tmp_path_factory):
    """The python-backend repository of the digits classifier, its features and its static-batch twin, and SAM 2's
    image encoder with its mask decoder (the prompt and one-shot models), served."""
    static = tmp_path_factory.mktemp("static") / "hiera_digits_static.onnx"
    static.write_bytes(digits["static"].read_bytes())
    repo = tmp_path_factory.mktemp("triton") / "models"
    try:
        paths = python_path(SERVER_VENV, *checkout_paths())
        write_repository([digits["classify"], digits["features"], static, sam2_encoder], repo,
                         Options(backend="python", python_path=tuple(paths)), decoder=sam2_decoder)
        server = LocalServer(repo, SERVER_VENV).start()
    except HieraRuntimeError as error:
        pytest.skip(f"no Triton server here: {error}")
    yield server
    server.close()


def request(protocol, url: str, model: str, images: list[bytes], outputs: list[str]) -> dict[str, np.ndarray]:
    """One inference request of `images` (encoded files, one per batch row) to `model`, over HTTP or gRPC."""
    client = protocol.InferenceServerClient(url)
    data = np.array([[image] for image in images], dtype=np.object_)
    image = protocol.InferInput("image", list(data.shape), "BYTES")
    image.set_data_from_numpy(data)
    result = client.infer(model, [image], outputs=[protocol.InferRequestedOutput(name) for name in outputs])
    return {name: result.as_numpy(name) for name in outputs}


def classify(protocol, url, images, model="hiera_digits_classify") -> list[list[dict]]:
    """The ensemble's answers as `runtime predict --json` prints them: per image, top-k index, label, score."""
    out = request(protocol, url, model, images, ["scores", "indices", "labels"])
    return [[{"index": int(i), "label": label.decode(), "score": float(s)} for s, i, label in zip(*row)]
            for row in zip(out["scores"], out["indices"], out["labels"])]


@pytest.fixture(scope="module")
def expected(digits, photo_files) -> dict[str, list[dict]]:
    """What `python -m runtime predict --json` prints for each photograph, by file name."""
    result = subprocess.run([sys.executable, "-m", "runtime", "predict", *map(str, photo_files), "--model",
                             str(digits["classify"]), "--json", "--top-k", "5"], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    return {json.loads(line)["image"]: json.loads(line)["top_k"] for line in result.stdout.splitlines()}


def assert_same(got: list[dict], want: list[dict], what: str) -> None:
    assert [p["index"] for p in got] == [p["index"] for p in want], what
    assert [p["label"] for p in got] == [p["label"] for p in want], what
    assert max(abs(g["score"] - w["score"]) for g, w in zip(got, want)) <= TOLERANCE, what


@pytest.mark.parametrize("protocol", [http, grpc], ids=["http", "grpc"])
def test_each_photograph_gets_what_runtime_predict_answers(server, photo_files, expected, protocol):
    url = server.http_url if protocol is http else server.grpc_url
    for path in photo_files:
        [got] = classify(protocol, url, [path.read_bytes()])
        assert_same(got, expected[str(path)], path.name)


def test_a_batch_of_several_images_in_one_request(server, photo_files, expected):
    images = [path.read_bytes() for path in photo_files]
    for protocol, url in ((http, server.http_url), (grpc, server.grpc_url)):
        rows = classify(protocol, url, images)
        assert len(rows) == len(photo_files)
        for got, path in zip(rows, photo_files):
            assert_same(got, expected[str(path)], path.name)
    # the static-batch artifact (batch 2) behind the python backend: the runtime fills its batch
    for got, path in zip(classify(http, server.http_url, images[:2], "hiera_digits_static"), photo_files):
        assert_same(got, expected[str(path)], path.name)


def test_features_are_the_models_own_outputs(server, digits, photo_files):
    reference = FeatureExtractor.load(digits["features"]).extract(photo_files)
    out = request(grpc, server.grpc_url, "hiera_digits_features", [p.read_bytes() for p in photo_files],
                  list(reference))
    for name, want in reference.items():
        assert out[name].shape == want.shape and np.abs(out[name] - want).max() <= TOLERANCE, name


def test_sam2_image_encoder_serves_its_three_outputs(server, sam2_encoder, photo_files):
    """Image bytes in, SAM 2's image_embeddings and two high-resolution maps out, as the runtime extracts them
    (SAM 2's preprocessing: the whole image resized, aspect ratio not kept)."""
    reference = FeatureExtractor.load(sam2_encoder).extract(photo_files)
    assert list(reference) == ["image_embeddings", "high_res_feats_0", "high_res_feats_1"]
    model = sanitized(sam2_encoder.name.removesuffix(".onnx"))
    for protocol, url in ((http, server.http_url), (grpc, server.grpc_url)):
        out = request(protocol, url, model, [p.read_bytes() for p in photo_files], list(reference))
        for name, want in reference.items():
            assert out[name].shape == want.shape and np.abs(out[name] - want).max() <= TOLERANCE, name


def test_a_bad_image_fails_its_request_and_the_server_keeps_serving(server, photo_files, expected):
    good = photo_files[0].read_bytes()
    for bad, reason in ((b"not an image at all", "not an image this runtime reads"),
                        (good[:len(good) // 3], "cannot decode"), (b"", "empty file")):
        for protocol, url in ((http, server.http_url), (grpc, server.grpc_url)):
            with pytest.raises(InferenceServerException) as error:
                classify(protocol, url, [good, bad, good])
            assert "image 2 of 3" in error.value.message() and reason in error.value.message()
            assert error.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")  # the client's fault
            [got] = classify(protocol, url, [good])  # the next request is served as ever
            assert_same(got, expected[str(photo_files[0])], "after a bad image")


def test_restart_while_clients_send_gives_errors_never_wrong_answers(server, photo_files, expected):
    """Four clients send without pause while the server stops and starts again: every answer they get is the
    right one; what fails, fails as an error. Bounded: at most 60 s and 400 requests per client."""
    images = [path.read_bytes() for path in photo_files]
    answers = [expected[str(path)] for path in photo_files]
    restarted, stop = threading.Event(), threading.Event()
    outcomes = []  # (client, after the restart, "ok" | "wrong" | "error")

    def send(client: int):
        protocol, url = (http, server.http_url) if client % 2 else (grpc, server.grpc_url)
        for attempt in range(400):
            if stop.is_set():
                return
            which = (client + attempt) % len(images)
            after = restarted.is_set()
            try:
                [got] = classify(protocol, url, [images[which]])
            except Exception:  # noqa: BLE001 - refused connections, unavailable models: errors are expected here
                outcomes.append((client, after, "error"))
                time.sleep(0.05)
                continue
            right = [p["index"] for p in got] == [p["index"] for p in answers[which]] and \
                max(abs(g["score"] - w["score"]) for g, w in zip(got, answers[which])) <= TOLERANCE
            outcomes.append((client, after, "ok" if right else "wrong"))

    clients = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in clients:
        thread.start()
    deadline = time.monotonic() + 60
    try:
        time.sleep(1)  # clients are being answered
        server.restart()
        restarted.set()
        while time.monotonic() < deadline and not all(
                sum(1 for c, after, kind in outcomes if c == i and after and kind == "ok") >= 3 for i in range(4)):
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=30)
    kinds = [kind for _, _, kind in outcomes]
    assert "wrong" not in kinds and "error" in kinds  # errors: the clients did send while it was down
    assert kinds.count("ok") > 12, kinds  # answered before and after the restart
    assert any(after and kind == "ok" for _, after, kind in outcomes)


# Prompts on the photographs, in pixels of each (the smallest is 427 high): two points (one negative), two boxes
# (two prompts of one decoder run), and three masks for one point.
PROMPTS = [({"point_coords": [[200, 150], [320, 300]], "point_labels": [1, 0]}, False),
           ({"boxes": [[10, 20, 300, 240], [150, 100, 400, 400]]}, False),
           ({"point_coords": [[100, 100]]}, True)]


def prompt_inputs(protocol, prompt: dict, multimask: bool) -> list:
    types = {"point_coords": (np.float32, "FP32"), "point_labels": (np.int32, "INT32"), "boxes": (np.float32, "FP32")}
    inputs = []
    for name, values in prompt.items():
        data = np.array(values, types[name][0])
        inputs.append(protocol.InferInput(name, list(data.shape), types[name][1]))
        inputs[-1].set_data_from_numpy(data)
    if multimask:
        inputs.append(protocol.InferInput("multimask", [1], "BOOL"))
        inputs[-1].set_data_from_numpy(np.array([True]))
    return inputs


def segment_request(protocol, url: str, model: str, inputs: list) -> dict[str, np.ndarray]:
    result = protocol.InferenceServerClient(url).infer(model, inputs, outputs=[
        protocol.InferRequestedOutput(name) for name in ("masks", "iou_scores")])
    return {name: result.as_numpy(name) for name in ("masks", "iou_scores")}


def assert_same_segmentation(got: dict, want, what: str) -> None:
    assert got["masks"].shape == want.masks.shape and got["masks"].dtype == bool, what
    assert (got["masks"] == want.masks).all(), (what, int((got["masks"] != want.masks).sum()), "pixels differ")
    assert np.abs(got["iou_scores"] - want.scores).max() <= TOLERANCE, (what, got["iou_scores"], want.scores)


def test_sam2_segments_through_the_server_as_the_segmenter_does(server, sam2_encoder, sam2_decoder, photo_files):
    """Embed once (the encoder's ensemble), prompt many (the decoder's prompt model), and the one-shot model: the
    masks and scores that `Segmenter.predict` answers for the same image and prompts."""
    segmenter = load_segmenter(sam2_encoder, sam2_decoder, provider="cpu")
    encoder_model = sanitized(sam2_encoder.name.removesuffix(".onnx"))
    prompt_model = sanitized(sam2_decoder.name.removesuffix(".onnx"))
    for path in photo_files[:2]:
        segmenter.set_image(path)
        height, width = segmenter.image.shape[:2]
        embedding = request(http, server.http_url, encoder_model, [path.read_bytes()],
                            ["image_embeddings", "high_res_feats_0", "high_res_feats_1"])
        for prompt, multimask in PROMPTS:
            points = prompt.get("point_coords") and [(*xy, label) for xy, label in zip(
                prompt["point_coords"], prompt.get("point_labels", [1] * len(prompt["point_coords"])))]
            want = segmenter.predict(points, prompt.get("boxes"), multimask)
            what = f"{path.name} {prompt} multimask {multimask}"
            inputs = []
            for name, value in embedding.items():
                inputs.append(http.InferInput(name, list(value.shape), "FP32"))
                inputs[-1].set_data_from_numpy(value)
            inputs.append(http.InferInput("image_size", [2], "INT64"))
            inputs[-1].set_data_from_numpy(np.array([height, width], np.int64))
            got = segment_request(http, server.http_url, prompt_model, inputs + prompt_inputs(http, prompt, multimask))
            assert_same_segmentation(got, want, f"prompt model, {what}")
            for protocol, url in ((http, server.http_url), (grpc, server.grpc_url)):
                image = protocol.InferInput("image", [1], "BYTES")
                image.set_data_from_numpy(np.array([path.read_bytes()], np.object_))
                got = segment_request(protocol, url, f"{prompt_model}_segment",
                                      [image, *prompt_inputs(protocol, prompt, multimask)])
                assert_same_segmentation(got, want, f"one-shot model ({protocol.__name__}), {what}")


def test_a_bad_prompt_fails_its_request_in_one_line(server, sam2_decoder, photo_files):
    one_shot = f"{sanitized(sam2_decoder.name.removesuffix('.onnx'))}_segment"
    good = photo_files[0].read_bytes()
    for prompt, reason in (({"point_coords": [[700, 150]]}, "x 700 is outside the image (0 to 640)"),
                           ({"boxes": [[300, 10, 200, 200]]}, "x1 < x0 or y1 < y0"),
                           ({"point_coords": [[10, 10]], "point_labels": [5]}, "label 5 is not one SAM 2 defines"),
                           ({}, "empty prompt")):
        image = http.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([good], np.object_))
        with pytest.raises(InferenceServerException) as error:
            segment_request(http, server.http_url, one_shot, [image, *prompt_inputs(http, prompt, False)])
        assert reason in error.value.message() and error.value.status() == "400", (prompt, error.value.message())
