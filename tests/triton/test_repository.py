"""python -m runtime triton: the repository it writes, checked against Triton's own config schema; bad input."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from runtime import Classifier, Preprocessing
from runtime.cli import main
from runtime.session import OnnxSession
from runtime.tensorrt import make_sidecar, write_sidecar
from runtime.triton import Options, write_repository
from runtime.triton.repository import MANIFEST, MARKER, PYTHON_MODEL, quote

from ..conftest import ROOT, decoder_of_another_encoder

try:  # Triton's own schema of config.pbtxt; without it the tests that parse configs skip, the others run
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2
except ImportError:
    model_config_pb2 = text_format = None
needs_schema = pytest.mark.skipif(model_config_pb2 is None, reason="tritonclient is not installed (pip install -e "
                                  "'.[triton]')")
TYPE_FP32, TYPE_STRING = (model_config_pb2.TYPE_FP32, model_config_pb2.TYPE_STRING) if model_config_pb2 else (0, 0)


def parse_repository(repo) -> dict:
    """Every config.pbtxt of a repository, parsed with Triton's ModelConfig schema: a field Triton does not know,
    or a value of the wrong type, fails here."""
    configs = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert config.name == path.parent.name
        assert (path.parent / "1").is_dir()  # every model, ensembles too, needs a version folder
        configs[config.name] = config
    return configs


def parameters(config) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def fake_engine(onnx_file, folder, capability: str, max_batch: int = 8):
    """An engine as `python -m export --trt` leaves it on a GPU machine: beside its source ONNX, with the sidecar
    runtime.tensorrt writes. No TensorRT here, so the plan is opaque bytes: the repository only copies it."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / onnx_file.name
    shutil.copy(onnx_file, source)
    engine = folder / f"{onnx_file.stem}.fp16.engine"
    engine.write_bytes(b"a TensorRT plan for compute capability " + capability.encode())
    shape = [3, 64, 64]
    profile = {"pixel_values": {"min": [1, *shape], "opt": [max_batch // 2, *shape], "max": [max_batch, *shape]}}
    write_sidecar(engine, make_sidecar(engine, source, OnnxSession(source, provider="cpu").metadata,
                                       tensorrt_version="10.8.0", gpu="a GPU", compute_capability=capability,
                                       build={"built_by": "python -m export", "precision": "fp16",
                                              "profile": profile}))
    return engine


@needs_schema
def test_native_repository_parses_and_says_what_the_artifact_says(digits, tmp_path):
    repo = tmp_path / "models"
    write_repository([digits["classify"], digits["features"]], repo)
    configs = parse_repository(repo)
    assert set(configs) == {f"hiera_digits_{task}{step}" for task in ("classify", "features")
                            for step in ("", "_preprocess", "_model")} | {"hiera_digits_classify_postprocess"}
    classifier = Classifier.load(digits["classify"])

    model = configs["hiera_digits_classify_model"]
    assert model.platform == "onnxruntime_onnx" and model.max_batch_size == 8
    assert [(t.name, t.data_type, list(t.dims)) for t in model.input] == [("pixel_values", TYPE_FP32, [3, 64, 64])]
    assert [(t.name, t.data_type, list(t.dims)) for t in model.output] == [("logits", TYPE_FP32, [10])]
    assert list(model.dynamic_batching.preferred_batch_size) == [4, 8]
    assert model.dynamic_batching.max_queue_delay_microseconds == 100
    assert not configs["hiera_digits_classify_preprocess"].HasField("dynamic_batching")  # decoding: one at a time
    assert [(g.count, g.kind) for g in model.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert (repo / "hiera_digits_classify_model" / "1" / "model.onnx").read_bytes() == digits["classify"].read_bytes()

    ensemble = configs["hiera_digits_classify"]
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 8
    assert [(t.name, t.data_type, list(t.dims)) for t in ensemble.input] == [("image", TYPE_STRING, [1])]
    assert [(t.name, list(t.dims)) for t in ensemble.output] == [("scores", [5]), ("indices", [5]), ("labels", [5])]
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == [
        "hiera_digits_classify_preprocess", "hiera_digits_classify_model", "hiera_digits_classify_postprocess"]

    preprocess = parameters(configs["hiera_digits_classify_preprocess"])
    assert preprocess["hiera_step"] == "preprocess"
    assert Preprocessing.from_dict(json.loads(preprocess["preprocessing"])) == classifier.info.preprocessing
    postprocess = parameters(configs["hiera_digits_classify_postprocess"])
    assert json.loads(postprocess["labels"]) == list(classifier.info.labels) and postprocess["top_k"] == "5"
    for name in ("hiera_digits_classify_preprocess", "hiera_digits_classify_postprocess"):
        assert (repo / name / "1" / "model.py").read_text() == PYTHON_MODEL.read_text()
        assert not (repo / name / "python_path.json").exists()  # the server's own Python, unless asked

    features = configs["hiera_digits_features"]  # the model's own outputs, no postprocessing
    session = OnnxSession(digits["features"], provider="cpu")
    assert [t.name for t in features.output] == session.output_names
    assert [list(t.dims) for t in features.output] == [o.shape[1:] for o in session.session.get_outputs()]
    assert len(features.ensemble_scheduling.step) == 2

    record = json.loads((repo / MARKER).read_text())
    assert [m["name"] for m in record["models"]] == ["hiera_digits_classify", "hiera_digits_features"]


@needs_schema
def test_gpu_repository_with_instances_batching_and_the_tensorrt_accelerator(digits, tmp_path):
    options = Options(kind="gpu", instances=2, max_batch=16, preferred_batch=(4, 16), queue_delay_us=500,
                      trt_fp16=True, top_k=20)
    write_repository([digits["classify"]], tmp_path / "gpu", options)
    configs = parse_repository(tmp_path / "gpu")
    model = configs["hiera_digits_classify_model"]
    assert model.max_batch_size == 16 and list(model.dynamic_batching.preferred_batch_size) == [4, 16]
    assert model.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in model.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    accelerator = model.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and dict(accelerator.parameters) == {"precision_mode": "FP16"}
    preprocess = configs["hiera_digits_classify_preprocess"]  # decoding stays on the CPU
    assert [(g.count, g.kind) for g in preprocess.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert [list(t.dims) for t in configs["hiera_digits_classify"].output] == [[10]] * 3  # top 20 of 10 classes
    manifest = (tmp_path / "gpu" / MANIFEST).read_text()
    assert 'nvidia.com/gpu: "1"' in manifest


@needs_schema
def test_python_backend_repository(digits, tmp_path):
    options = Options(backend="python", python_path=("/opt/hiera", "/opt/venv/lib/python3.11/site-packages"),
                      dynamic_batching=False)
    write_repository([digits["classify"]], tmp_path / "python", options)
    configs = parse_repository(tmp_path / "python")
    model = configs["hiera_digits_classify_model"]
    assert model.backend == "python" and not model.platform and not model.HasField("dynamic_batching")
    assert parameters(model)["artifacts"] == '["model.onnx"]' and parameters(model)["outputs"] == '["logits"]'
    for name in ("hiera_digits_classify_model", "hiera_digits_classify_preprocess"):
        assert (tmp_path / "python" / name / "1" / "model.py").read_text() == PYTHON_MODEL.read_text()
        assert json.loads((tmp_path / "python" / name / "python_path.json").read_text()) == list(options.python_path)


@needs_schema
def test_a_static_batch_is_served_by_the_python_backend_up_to_its_batch(digits, tmp_path):
    static = tmp_path / "static" / "hiera_digits_static.onnx"
    static.parent.mkdir()
    shutil.copy(digits["static"], static)
    write_repository([static], tmp_path / "repo", Options(backend="python"))
    configs = parse_repository(tmp_path / "repo")
    model = configs["hiera_digits_static_model"]
    assert model.max_batch_size == 2 and list(model.dynamic_batching.preferred_batch_size) == [1, 2]


@needs_schema
def test_engines_of_one_model_for_several_gpus(digits, tmp_path):
    gpus = (("a100", "8.0"), ("l4", "8.9"))
    engines = [fake_engine(digits["classify"], tmp_path / folder, cc) for folder, cc in gpus]
    write_repository(engines, tmp_path / "native")
    configs = parse_repository(tmp_path / "native")
    model = configs["hiera_digits_classify_fp16_model"]
    assert model.platform == "tensorrt_plan" and model.max_batch_size == 8  # the profile's largest batch
    assert dict(model.cc_model_filenames) == {"8.0": "model_sm80.plan", "8.9": "model_sm89.plan"}
    version = tmp_path / "native" / "hiera_digits_classify_fp16_model" / "1"
    assert (version / "model_sm80.plan").read_bytes() == engines[0].read_bytes()
    assert json.loads((version / "model_sm89.plan.json").read_text())["compute_capability"] == "8.9"  # sidecars too

    write_repository(engines, tmp_path / "python", Options(backend="python"))
    model = parse_repository(tmp_path / "python")["hiera_digits_classify_fp16_model"]
    assert json.loads(parameters(model)["artifacts"]) == ["model_sm80.plan", "model_sm89.plan"]

    write_repository(engines[:1], tmp_path / "one")  # a single engine: Triton's default file name
    model = parse_repository(tmp_path / "one")["hiera_digits_classify_fp16_model"]
    assert not model.cc_model_filenames and (tmp_path / "one" / model.name / "1" / "model.plan").is_file()


@needs_schema
def test_config_strings_survive_any_character():
    text = 'a "quoted" label, a back\\slash, a new\nline and a crème brûlée'
    message = text_format.Parse(f'parameters {{ key: "x" value {{ string_value: {quote(text)} }} }}',
                                model_config_pb2.ModelConfig())
    assert message.parameters["x"].string_value == text


def test_kserve_manifest_beside_the_models(digits, tmp_path):
    yaml = pytest.importorskip("yaml")
    write_repository([digits["classify"]], tmp_path / "Hiera Models_v2")
    manifest = yaml.safe_load((tmp_path / "Hiera Models_v2" / MANIFEST).read_text())
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    assert manifest["metadata"]["name"] == "hiera-models-v2"  # a valid Kubernetes name
    model = manifest["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["runtime"] == "kserve-tritonserver"
    assert model["storageUri"].endswith("/Hiera Models_v2") and "nvidia.com/gpu" not in model["resources"]["limits"]


def cli(capsys, *args) -> tuple[int, str, str]:
    try:
        status = main(["triton", *map(str, args)])
    except SystemExit as exit:  # argparse's errors
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_writes_and_then_replaces_a_repository_of_its_own(digits, tmp_path, capsys):
    repo = tmp_path / "models"
    status, out, err = cli(capsys, digits["classify"], "--repo", repo, "--instances", "2")
    assert status == 0 and out.startswith(f"wrote {repo}\n") and not err
    assert f"serve: tritonserver --model-repository {repo}" in out
    status, out, _ = cli(capsys, digits["features"], "--repo", repo)
    assert status == 0 and out.startswith(f"replaced {repo}\n")
    assert sorted(os.listdir(repo)) == sorted([MARKER, MANIFEST, ".hiera-manifest.json", "hiera_digits_features",
                                               "hiera_digits_features_model", "hiera_digits_features_preprocess"])
    assert os.listdir(tmp_path) == ["models"]  # no staging or old folder left beside it


def test_cli_as_a_subprocess(digits, tmp_path):
    result = subprocess.run([sys.executable, "-m", "runtime", "triton", str(digits["classify"]), "--repo",
                             str(tmp_path / "models"), "--backend", "python"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and not result.stderr
    assert "hiera_digits_classify_preprocess -> hiera_digits_classify_model -> hiera_digits_classify_postprocess" \
        in result.stdout


def test_bad_input_is_one_line_exit_2_and_writes_nothing(digits, mae_artifact, tmp_path, capsys):
    lonely = tmp_path / "engines" / "hiera_digits_classify.engine"  # an engine without its sidecar
    lonely.parent.mkdir()
    lonely.write_bytes(b"plan")
    orphan = fake_engine(digits["classify"], tmp_path / "orphan", "8.0")
    (orphan.parent / digits["classify"].name).unlink()  # its sidecar names a source ONNX no longer beside it
    twins = [fake_engine(digits["classify"], tmp_path / folder, "8.6") for folder in ("one", "two")]
    other = tmp_path / "other"  # somebody else's folder
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    cases = {
        "mae": ([mae_artifact], [], "an MAE model"),
        "static batch, native": ([digits["static"]], [], "a static batch of 2"),
        "static batch, above it": ([digits["static"]], ["--backend", "python", "--max-batch", "4"],
                                   "cannot take batches of max_batch 4"),
        "engine without sidecar": ([lonely], [], "no sidecar hiera_digits_classify.engine.json"),
        "engine without its ONNX": ([orphan], [], "is not beside it"),
        "two engines for one GPU": (twins, [], "compute capability 8.6 too"),
        "missing file": ([tmp_path / "missing.onnx"], [], "no such file"),
        "max batch above the profile": (twins[:1], ["--max-batch", "32"], "runs batches up to 8"),
        "trt fp16 on cpu": ([digits["classify"]], ["--trt-fp16"], "needs kind gpu"),
        "two models, one name": ([digits["classify"], digits["static"]], ["--backend", "python"],
                                 "would both be served as hiera_digits_classify"),
        "not a repository": ([digits["classify"]], ["--repo", other], "is not a folder that python -m runtime triton"),
        "top k": ([digits["classify"]], ["--top-k", "0"], "--top-k: must be a whole number from 1 to 1000"),
        "relative python path": ([digits["classify"]], ["--backend", "python", "--python-path", "lib"],
                                 "must be absolute"),
    }
    before = sorted(os.listdir(tmp_path))
    for case, (models, options, message) in cases.items():
        repo = ["--repo", tmp_path / "models"] if "--repo" not in options else []
        status, out, err = cli(capsys, *models, *repo, *options)
        assert status == 2, case
        assert not out and err.startswith("error: ") and err.count("\n") == 1 and message in err, (case, err)
        assert sorted(os.listdir(tmp_path)) == before, case  # nothing written, nothing left beside the target
    assert os.listdir(other) == ["notes.txt"]


@needs_schema
def test_sam2_decoder_adds_the_prompt_and_one_shot_models(sam2_encoder, sam2_decoder, tmp_path, capsys):
    repo = tmp_path / "models"
    status, out, err = cli(capsys, sam2_encoder, "--decoder", sam2_decoder, "--repo", repo, "--instances", "2")
    assert status == 0 and not err, err
    encoder, prompt = (path.name.removesuffix(".onnx").replace(".", "_") for path in (sam2_encoder, sam2_decoder))
    configs = parse_repository(repo)
    assert set(configs) == {encoder, f"{encoder}_preprocess", f"{encoder}_model", prompt, f"{prompt}_segment"}
    assert f"{prompt}_segment: image bytes and prompts -> masks, iou_scores" in out
    optional = {"point_coords": [-1, 2], "point_labels": [-1], "boxes": [-1, 4], "multimask": [1]}
    for name, first in ((prompt, ["image_embeddings", "high_res_feats_0", "high_res_feats_1", "image_size"]),
                        (f"{prompt}_segment", ["image"])):
        config = configs[name]
        assert config.backend == "python" and config.max_batch_size == 0 and config.instance_group[0].count == 2
        assert [i.name for i in config.input] == first + list(optional), name
        assert {i.name: list(i.dims) for i in config.input if i.optional} == optional, name
        assert [(o.name, o.data_type) for o in config.output] == [("masks", model_config_pb2.TYPE_BOOL),
                                                                  ("iou_scores", TYPE_FP32)], name
    # the prompt model takes the encoder model's outputs as they come: a batch of one
    outputs = {o.name: list(o.dims) for o in configs[f"{encoder}_model"].output}
    assert {i.name: list(i.dims) for i in configs[prompt].input[:3]} == {k: [1, *v] for k, v in outputs.items()}
    assert sorted(os.listdir(repo / prompt / "1")) == ["model.onnx", "model.py"]
    assert (repo / prompt / "1" / "model.onnx").read_bytes() == sam2_decoder.read_bytes()
    assert json.loads((repo / MARKER).read_text())["segment"]["artifact"]["file"] == sam2_decoder.name


def test_a_decoder_of_another_encoder_is_refused_and_nothing_written(sam2_encoder, sam2_decoder, digits, tmp_path,
                                                                     capsys):
    stranger = decoder_of_another_encoder(sam2_decoder, tmp_path)
    cases = {"another encoder's": ([sam2_encoder], stranger, "belongs to another encoder: its weights"),
             "no encoder": ([digits["classify"]], sam2_decoder, "give exactly one among MODEL (0 given)")}
    before = sorted(os.listdir(tmp_path))
    for case, (models, decoder, message) in cases.items():
        status, out, err = cli(capsys, *models, "--decoder", decoder, "--repo", tmp_path / "models")
        assert status == 2 and not out and err.count("\n") == 1 and message in err, (case, err)
        assert sorted(os.listdir(tmp_path)) == before, case
