import base64
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import transformers
from PIL import Image
from transformers import HieraConfig as TransformersConfig
from transformers import HieraForImageClassification, HieraModel

from export.parity import photographs
from hiera_model.testing import transformers_mae_model
from runtime.device import cpu_isa

transformers.logging.set_verbosity_error()

# A shell without job control starts a background job with SIGINT ignored, and an ignored signal stays ignored in
# every process it starts: the tests that press Ctrl-C on a command, or on themselves, would see it ignored. Python's
# own handler again (a handled signal is reset to its default in the commands these tests start).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
FAIR_FILE = FIXTURES / "reference" / "hiera_fair_small.pth"  # FAIR's own checkpoint of the fixture model


def cpu_flags() -> str:
    """This CPU's vector extensions: a figure that depends on the ISA names the one it was measured on."""
    return "a CPU with " + (" ".join(cpu_isa()) or "no known vector extension")


def fair_state() -> dict:
    """The FAIR fixture checkpoint's state dict, loaded as FAIR's code loads it."""
    return torch.load(FAIR_FILE, weights_only=True)["model_state"]


def failed_rows(report: dict) -> str:
    """The rows of an export report that failed, one line each with its figures, and the CPU: the message of an
    assertion on `report["passed"]` (rather than the whole report, truncated)."""
    rows = [f"{precision}: {'; '.join(entry['failures'])}" for precision, entry in report.get("artifacts", {}).items()
            if entry.get("passed") is False]
    rows += [f"openvino {row.get('artifact')} {row.get('inference_precision')}: {'; '.join(row['failures'])}"
             for row in (report.get("openvino") or {}).get("rows", []) if row.get("passed") is False]
    if (report.get("tensorrt") or {}).get("passed") is False:
        rows.append(f"tensorrt engine: {'; '.join(report['tensorrt']['failures'])}")
    return f"failed on {cpu_flags()}: " + (" | ".join(rows) or f"no failing row (passed = {report.get('passed')})")


def stored(array: dict) -> np.ndarray:
    """An array of a probe document, read with numpy alone (dtype, shape, base64 of its bytes), not with the
    runtime.probe code under test."""
    return np.frombuffer(base64.b64decode(array["data"]), array["dtype"]).reshape(array["shape"])


def probe_logits(document: dict, preprocessing: dict, model) -> tuple[np.ndarray, np.ndarray]:
    """(the probe's stored PyTorch logits, a transformers classifier's logits on the probe's own pixels normalized by
    hand with the artifact's rescale factor, mean and std)."""
    pixels = stored(document["pixels"]).astype(np.float32) * preprocessing["rescale_factor"]
    pixels = ((pixels - np.float32(preprocessing["mean"])) / np.float32(preprocessing["std"])).transpose(0, 3, 1, 2)
    with torch.no_grad():
        want = model(torch.from_numpy(np.ascontiguousarray(pixels, np.float32))).logits.numpy()
    return stored(document["reference"]["outputs"]["logits"]), want


def tampered(artifact, tmp_path, field: str, value, raw: str | None = None) -> Path:
    """A copy of `artifact` (`tmp_path/tampered.onnx`) whose `hiera.<field>` metadata (`key.inner` for an entry of
    an object) holds `value`, or the text `raw`."""
    model = onnx.load(artifact)
    props = {p.key: p.value for p in model.metadata_props}
    key, _, inner = field.partition(".")
    decoded = json.loads(props[f"hiera.{key}"])
    if inner:
        decoded[inner] = value
    else:
        decoded = value
    props[f"hiera.{key}"] = raw if raw is not None else json.dumps(decoded)
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    path = tmp_path / "tampered.onnx"
    onnx.save(model, path)
    return path


def decoder_of_another_encoder(decoder, tmp_path) -> Path:
    """`decoder` as an export from another checkpoint would have written it: its `hiera.encoder` names other weights."""
    props = {p.key: p.value for p in onnx.load(decoder).metadata_props}
    weights = json.loads(props["hiera.encoder"])["weights"]
    return tampered(decoder, tmp_path, "encoder.weights", {**weights, "sha256": "0" * 64})


@pytest.fixture
def private_lock(tmp_path, monkeypatch) -> Path:
    """A copy of models.lock that a test may change, made the one the package reads."""
    path = tmp_path / "models.lock"
    shutil.copy(ROOT / "models.lock", path)
    monkeypatch.setenv("HIERA_MODELS_LOCK", os.fspath(path))
    return path


# transformers configs of published variants and of a small one that exports in seconds.
CONFIGS = {
    "tiny": dict(embed_dim=96, depths=[1, 2, 7, 2], num_heads=[1, 2, 4, 8]),
    "base": dict(embed_dim=96, depths=[2, 3, 16, 3], num_heads=[1, 2, 4, 8]),
    # Fewer query poolings than stages - 1: the last stage's tokens are still in unit order.
    "small_q_pool": dict(embed_dim=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], image_size=[64, 96],
                         num_query_pool=2),
}


@pytest.fixture(scope="session")
def transformers_checkpoint(tmp_path_factory):
    """`(config name, task) -> (directory, model)`: a seeded transformers model saved with `save_pretrained`."""
    cache = {}

    def make(name: str, task: str = "classify"):
        if (name, task) not in cache:
            torch.manual_seed(0)
            config = TransformersConfig(**CONFIGS[name], num_labels=10, id2label={i: f"class {i}" for i in range(10)},
                                        label2id={f"class {i}": i for i in range(10)})
            model = (HieraForImageClassification if task == "classify" else HieraModel)(config).eval()
            directory = tmp_path_factory.mktemp(f"{name}-{task}")
            model.save_pretrained(directory)
            cache[name, task] = directory, model
        return cache[name, task]

    return make


@pytest.fixture(scope="session")
def transformers_mae(tmp_path_factory):
    """`(directory, model)`: `transformers_mae_model()` saved with `save_pretrained`."""
    model = transformers_mae_model()
    directory = tmp_path_factory.mktemp("mae")
    model.save_pretrained(directory)
    return directory, model


@pytest.fixture(scope="session")
def mae_artifact(transformers_mae, tmp_path_factory) -> Path:
    """`transformers_mae` exported in fp32 with a dynamic batch, not validated (a quick artifact to run)."""
    from export import Options, run

    out = tmp_path_factory.mktemp("mae-artifact")
    report = run(Options(weights=str(transformers_mae[0]), task="mae", batch=None, out_dir=out, precisions=("fp32",),
                         validate=False))
    return out / report["artifacts"]["fp32"]["file"]


@pytest.fixture(scope="session")
def photo_files(tmp_path_factory) -> list[Path]:
    """scikit-learn's two photographs as JPEG files, and a portrait PNG with transparency."""
    directory = tmp_path_factory.mktemp("photos")
    paths = []
    for name, image in photographs().items():
        image.save(directory / name, quality=95)
        paths.append(directory / name)
    portrait = photographs()["flower.jpg"].rotate(90, expand=True)
    portrait.putalpha(Image.linear_gradient("L").resize(portrait.size))
    portrait.save(directory / "flower-portrait.png")
    return [*paths, directory / "flower-portrait.png"]
