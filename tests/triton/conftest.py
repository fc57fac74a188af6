import io
import os
import site
from pathlib import Path

import pytest
from PIL import Image

from export import Options, run

from ..conftest import ROOT
from ..sam2_reference import sam2_checkpoint  # noqa: F401

# The environment whose nvidia-pytriton runs the server (runtime/triton/server.py says why it is a separate one).
SERVER_VENV = Path(os.environ.get("HIERA_TRITONSERVER_VENV", ROOT / ".venv-tritonserver"))


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> dict[str, Path]:
    """The trained digits model (models/digits), exported in fp32: `classify` and `features` with a dynamic
    batch, `static` a classifier with a static batch of 2."""
    found = {}
    for key, task, batch in (("classify", "classify", None), ("features", "features", None), ("static", "classify", 2)):
        out = tmp_path_factory.mktemp(f"digits-{key}")
        report = run(Options(weights=str(ROOT / "models" / "digits"), task=task, batch=batch, out_dir=out,
                             precisions=("fp32",), validate=False))
        found[key] = out / report["artifacts"]["fp32"]["file"]
    return found


@pytest.fixture(scope="session")
def sam2_encoder(sam2_checkpoint, tmp_path_factory) -> Path:  # noqa: F811
    """SAM 2's image encoder (the small transformers checkpoint of tests/sam2_reference.py), exported in fp32."""
    directory, _ = sam2_checkpoint
    out = tmp_path_factory.mktemp("sam2-encoder")
    report = run(Options(weights=str(directory), task="image-encoder", batch=None, out_dir=out, precisions=("fp32",),
                         validate=False))
    return out / report["artifacts"]["fp32"]["file"]


@pytest.fixture(scope="session")
def sam2_decoder(sam2_checkpoint, tmp_path_factory) -> Path:  # noqa: F811
    """SAM 2's mask decoder from the same checkpoint as `sam2_encoder`, exported in fp32."""
    from export import mask_decoder

    directory, _ = sam2_checkpoint
    out = tmp_path_factory.mktemp("sam2-decoder")
    report = mask_decoder.run(Options(weights=str(directory), task="mask-decoder", out_dir=out, precisions=("fp32",)))
    return out / report["artifacts"]["fp32"]["file"]


def encoded(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def checkout_paths() -> list[str]:
    """Where this checkout and this environment's packages (Pillow, onnxruntime) are, for a repository's python
    models; the server environment's site-packages goes first (server.python_path)."""
    return [str(ROOT), *site.getsitepackages()]
