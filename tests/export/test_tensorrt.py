"""The TensorRT engine build, all but the calls into TensorRT: which graph, which typing and flags, the
profile, the trtexec command, the sidecar the runtime checks. Building needs TensorRT and a GPU; that
test skips here with the reason."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from export import ExportError, Options, run
from export.tensorrt import EngineOptions, plan, sidecar, trtexec_command
from runtime import Classifier, HieraRuntimeError
from runtime.artifact import read_sidecar, sidecar_path
from runtime.tensorrt import check_compatible

from ..conftest import ROOT

@pytest.fixture(scope="module")
def photo_directory(tmp_path_factory):
    """Calibration images: crops of scikit-learn's two photographs."""
    from export.parity import photographs

    directory = tmp_path_factory.mktemp("calibration")
    for name, image in photographs().items():
        for i in range(4):
            image.crop((60 * i, 40 * i, 60 * i + 300, 40 * i + 250)).save(directory / f"{i}-{name}")
    return directory


NO_TENSORRT = "TensorRT's libraries come only from NVIDIA's package index, which this machine cannot reach"


@pytest.fixture(scope="module")
def exports(tensorrt_exports, transformers_checkpoint, photo_directory, tmp_path_factory):
    """Dynamic-batch exports of one checkpoint: default (optimized), standard-op, opset 16 for TensorRT 8.5 (shared
    with test_trt_check), and the calibrated qdq artifact for TensorRT's int8."""
    directory, _ = transformers_checkpoint("small_q_pool")
    out = tmp_path_factory.mktemp("qdq")
    report = run(Options(weights=str(directory), out_dir=out, batch=None, validate=False, precisions=("fp32", "qdq"),
                         calibration=photo_directory))
    made = {**tensorrt_exports, "qdq": ({p: out / entry["file"] for p, entry in report["artifacts"].items()}, report)}
    return {name: (files, {p: onnx.load(f) for p, f in files.items()}, report)
            for name, (files, report) in made.items()}


def test_fp16_on_tensorrt_10_is_strongly_typed_from_the_mixed_precision_artifact(exports):
    files, models, report = exports["optimized"]
    p = plan(files, models, EngineOptions(max_batch=16), "10.3")
    assert p.source == str(files["fp16"]) and p.strongly_typed and p.flags == [] and p.fp32_layers == []
    assert p.profile == {"pixel_values": {"min": [1, 3, 64, 96], "opt": [8, 3, 64, 96], "max": [16, 3, 64, 96]}}
    source, engine = files["fp16"].name, files["fp16"].with_suffix(".engine")
    assert trtexec_command(p, engine) == (
        f"trtexec --onnx={source} --saveEngine={engine.name} --memPoolSize=workspace:4096M --stronglyTyped "
        "--minShapes=pixel_values:1x3x64x96 --optShapes=pixel_values:8x3x64x96 --maxShapes=pixel_values:16x3x64x96")
    assert report["tensorrt"]["trtexec"].startswith(f"trtexec --onnx={source} ")


def test_before_tensorrt_10_fp16_is_weakly_typed_with_the_norms_in_fp32(exports):
    files, models, _ = exports["standard"]
    p = plan(files, models, EngineOptions(), "8.6")
    assert p.source == str(files["fp32"]) and not p.strongly_typed
    assert p.flags == ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
    graph = {n.name: n.op_type for n in models["fp32"].graph.node}
    kept = {graph[name] for name in p.fp32_layers}
    assert {"LayerNormalization", "Softmax", "ReduceMean"} <= kept
    assert not kept & {"MatMul", "Gemm"}  # the matmuls are what fp16 is for
    command = trtexec_command(p, files["fp32"].with_suffix(".engine"))
    assert " --fp16 --precisionConstraints=obey --layerPrecisions=" in command and "node_layer_norm:fp32" in command


def test_tensorrt_8_5_builds_the_opset_16_graph_with_each_layer_norm_step_in_fp32(exports):
    files, models, report = exports["opset16"]
    p = plan(files, models, EngineOptions(), "8.5")
    squared = [name for name in p.fp32_layers if name.endswith("/squared")]  # the step that overflows in fp16
    assert len(squared) == 11
    assert report["tensorrt"]["version"] == "8.5" and "--fp16" in report["tensorrt"]["trtexec"]
    assert all(not entry["tensorrt_check"]["findings"] for entry in report["artifacts"].values()
               if not entry["file"].endswith(".int8.onnx"))


def test_int8_is_explicit_quantization_of_the_qdq_artifact(exports):
    files, models, _ = exports["qdq"]
    int8 = plan(files, models, EngineOptions(precision="int8"), "10")
    assert int8.source == str(files["qdq"]) and int8.flags == ["INT8"] and int8.fp32_layers == []
    best = plan(files, models, EngineOptions(precision="best"), "10")
    assert best.flags == ["INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"]
    assert {n.op_type for n in models["qdq"].graph.node if n.name in best.fp32_layers} >= {"LayerNormalization"}
    assert " --int8 --fp16 --precisionConstraints=obey " in trtexec_command(best, files["qdq"].with_suffix(".engine"))


def test_plans_that_cannot_build_say_why(exports):
    files, models, _ = exports["optimized"]
    with pytest.raises(ExportError, match="fused Attention: export it without optimization"):
        plan(files, models, EngineOptions(precision="fp32"), "10")
    with pytest.raises(ExportError, match="builds from the qdq artifact: add qdq to the precisions with calibration"):
        plan(files, models, EngineOptions(precision="int8"), "10")
    with pytest.raises(ExportError, match="fp8: needs an FP8 Q/DQ graph"):
        plan(files, models, EngineOptions(precision="fp8"), "10")
    with pytest.raises(ExportError, match="add fp16 to the precisions"):
        plan({"fp32": files["fp32"]}, models, EngineOptions(), "10")


def test_the_sidecar_is_what_the_runtime_checks(exports, tmp_path):
    files, models, _ = exports["optimized"]
    p = plan(files, models, EngineOptions(hardware_compatible=True), "10.3")
    engine = tmp_path / "small.fp16.engine"
    engine.write_bytes(b"serialized engine")
    metadata = {m.key: m.value for m in models["fp16"].metadata_props}
    data = sidecar(p, engine, tensorrt_version="10.3.0", gpu="NVIDIA L4", compute_capability="8.9",
                   metadata=metadata)
    sidecar_path(engine).write_text(json.dumps(data))
    read = read_sidecar(engine)
    assert read["onnx"] == files["fp16"].name and read["profile"]["pixel_values"]["max"] == [8, 3, 64, 96]
    check_compatible(engine, read, "10.3.0", (9, 0))  # hardware-compatible: a Hopper GPU runs it too
    with pytest.raises(HieraRuntimeError, match="built with TensorRT 10.3.0, this machine has 10.4.0"):
        check_compatible(engine, read, "10.4.0", (8, 9))


def test_trt_without_tensorrt_is_one_line_and_exit_2(transformers_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    if __import__("importlib").util.find_spec("tensorrt"):
        pytest.skip("TensorRT is installed")
    directory, _ = transformers_checkpoint("small_q_pool")
    result = subprocess.run([sys.executable, "-m", "export", "--weights", directory, "--out", tmp_path, "--trt"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "TensorRT is not installed here" in result.stderr and "trtexec command in the report" in result.stderr
    assert not list(tmp_path.iterdir())  # refused before any work


def test_build_an_engine_and_run_it_through_the_runtime(transformers_checkpoint, tmp_path):
    pytest.importorskip("tensorrt", reason=NO_TENSORRT)
    directory, _ = transformers_checkpoint("small_q_pool")
    report = run(Options(weights=str(directory), out_dir=tmp_path, batch=None, build_engine=True,
                         engine=EngineOptions(max_batch=4)))
    assert report["passed"] and report["tensorrt"]["passed"], report["tensorrt"]
    image = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    engine = Classifier.load(report["tensorrt"]["engine"])
    reference = Classifier.load(tmp_path / report["artifacts"]["fp32"]["file"])
    assert [p.index for p in engine.predict(image)][:1] == [p.index for p in reference.predict(image)][:1]
