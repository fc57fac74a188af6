"""Writes that fail half-way (the kernel's file-size limit, as `ulimit -f` sets it: the same error path as a
full disk) leave the old file whole and no temporary file, and say so in one line."""

import contextlib
import resource

import pytest

from export import ExportError
from export.tensorrt import Plan, save_build
from runtime import files
from runtime.errors import FileError

from ..conftest import ROOT


@contextlib.contextmanager
def file_size_limit(limit: int):
    """Writes beyond `limit` bytes fail with EFBIG (Python ignores SIGXFSZ, so they raise OSError)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "cache.bin"
    path.write_bytes(b"old" * 100)
    with file_size_limit(1000), pytest.raises(FileError) as error:
        files.write_bytes(path, b"new" * 10_000)
    assert str(error.value) == f"{path}: cannot write (File too large)"
    assert path.read_bytes() == b"old" * 100
    assert [p.name for p in tmp_path.iterdir()] == ["cache.bin"]
    with pytest.raises(ValueError, match="not JSON compliant"):
        files.write_json(path, {"score": float("nan")})
    assert path.read_bytes() == b"old" * 100


def test_a_failed_timing_cache_write_keeps_the_cache_the_user_had(tmp_path):
    """TensorRT builds read and update a timing cache the user keeps between builds (`--timing-cache`)."""
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"x" * 500)
    source = tmp_path / "model.onnx"
    source.write_bytes((ROOT / "models" / "digits" / "config.json").read_bytes())  # not read before the cache
    plan = Plan(source=str(source), precision="fp16", strongly_typed=True, flags=[], timing_cache=str(cache))
    with file_size_limit(20_000), pytest.raises(ExportError, match="timing.cache: cannot write"):
        save_build(plan, tmp_path / "m.engine", b"e" * 1000, b"t" * 50_000, tensorrt_version="10.3.0", gpu="GPU",
                   compute_capability="8.9")
    assert cache.read_bytes() == b"x" * 500
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "model.onnx", "timing.cache"]
