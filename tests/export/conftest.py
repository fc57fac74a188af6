import pytest

from export import Options, run

from ..conftest import failed_rows


@pytest.fixture(scope="session")
def tensorrt_exports(transformers_checkpoint, tmp_path_factory) -> dict[str, tuple[dict, dict]]:
    """One checkpoint's dynamic-batch exports for the TensorRT tests (test_trt_check, test_tensorrt), made once:
    optimized (the default), standard-op (--no-optimize) and opset 16 for TensorRT 8.5 (JetPack 5). Each name maps
    to (artifact path by precision, report)."""
    directory, _ = transformers_checkpoint("small_q_pool")
    made = {}
    for name, options in {"optimized": {}, "standard": {"optimize": False},
                          "opset16": {"optimize": False, "opset": 16, "trt_version": "8.5"}}.items():
        out = tmp_path_factory.mktemp(name)
        report = run(Options(weights=str(directory), out_dir=out, batch=None, **options))
        assert report["passed"], failed_rows(report)
        made[name] = {p: out / entry["file"] for p, entry in report["artifacts"].items()}, report
    return made
