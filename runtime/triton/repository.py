"""A Triton model repository for exported artifacts: what `python -m runtime triton` writes.

For each artifact `<stem>.onnx` (or TensorRT engines of one model, each with its sidecar), four models
that follow Triton's layout (`<model>/config.pbtxt`, `<model>/1/...`):

    <name>_preprocess   python backend: encoded image files (TYPE_STRING, one per batch row) -> pixel_values,
                        runtime's decoding and the artifact's own preprocessing
    <name>_model        the artifact: onnxruntime_onnx (1/model.onnx) or tensorrt_plan (1/model.plan; several
                        GPUs' engines by cc_model_filenames); or, with backend "python", runtime running it
    <name>_postprocess  classifiers only, python backend: logits -> softmax top-k scores, indices, labels
    <name>              the ensemble clients call: image bytes in, the task's outputs out

With a SAM 2 mask decoder `<decoder>.onnx` beside its image encoder (`segment`, below), two python-backend models more:

    <decoder>           prompt many: the encoder's three embeddings, the image's size and prompts -> masks, scores
    <decoder>_segment   one shot: image bytes and prompts -> masks, scores (calls <encoder>_model, then <decoder>)

`<name>` is the artifact's file stem with anything but letters, digits, `_` and `-` turned into `_`. Beside
the models: `hiera_repository.json` (what was written from what) and
`inferenceservice.yaml` (KServe). Triton reads only the model folders.

The repository is built in a staging folder beside the target and swapped into place whole
(`runtime.commit.replacing`): an existing folder is replaced only if every file in it is one this command
listed in the manifest it keeps there (`.hiera-manifest.json`); anything else is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import probe
from ..artifact import ModelInfo, from_metadata, read_sidecar, report_verdict, sidecar_path
from ..errors import FileError, HieraRuntimeError
from ..commit import replacing
from ..files import open_file, read_bytes, require_file, sha256, write_bytes, write_json
from ..preprocess import MAX_PIXELS
from ..model import FeatureExtractor, MaskDecoder, load
from ..segment import Segmenter
from ..session import OnnxSession
from ..tensorrt import ENGINE_SUFFIXES

MARKER = "hiera_repository.json"
MANIFEST = "inferenceservice.yaml"
FORMAT_VERSION = 1
WRITTEN_BY = "python -m runtime triton"
DEFAULT_MAX_BATCH = 8  # for a dynamic batch axis with no other limit
BACKENDS = ("native", "python")
KINDS = ("cpu", "gpu")
# onnxruntime's element types -> Triton's, and Triton's -> numpy's (the preprocess step casts to the model's type)
TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(double)": "TYPE_FP64",
         "tensor(int64)": "TYPE_INT64", "tensor(int32)": "TYPE_INT32", "tensor(bool)": "TYPE_BOOL"}
NUMPY_TYPES = {"TYPE_FP32": "float32", "TYPE_FP16": "float16", "TYPE_FP64": "float64"}
PYTHON_MODEL = Path(__file__).with_name("python_model.py")


@dataclass(frozen=True)
class Options:
    backend: str = "native"  # "native": onnxruntime_onnx / tensorrt_plan; "python": runtime runs the artifact
    kind: str = "cpu"  # where the model step's instances run: "cpu" or "gpu"
    instances: int = 1  # instances of the model step and of the preprocessing (decoding), each
    max_batch: int | None = None  # default: a static artifact's batch, an engine profile's largest, else 8
    top_k: int = 5  # classifiers: classes per image in the ensemble's outputs
    dynamic_batching: bool = True  # the model step and the postprocessing
    preferred_batch: tuple[int, ...] | None = None  # default: half the max batch and the max batch
    queue_delay_us: int = 100  # how long the dynamic batcher may hold a request to fill a preferred batch
    trt_fp16: bool = False  # native ONNX on GPU: onnxruntime's TensorRT accelerator in fp16
    python_path: tuple[str, ...] = ()  # import paths for the python steps (written to python_path.json)
    max_pixels: int = MAX_PIXELS  # the preprocessing's decompression-bomb guard


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # Triton's name: TYPE_FP32, ...
    dims: tuple[int, ...]  # without the batch axis; -1 where the size varies


@dataclass(frozen=True)
class Served:
    """One model as the repository serves it."""

    name: str
    info: ModelInfo
    platform: str  # onnxruntime_onnx or tensorrt_plan
    files: dict[str, Path]  # file name in the version folder -> the file it is copied from
    artifacts: tuple[str, ...]  # the model files among them (engines: one per compute capability)
    capabilities: dict[str, str]  # several engines: compute capability -> file name
    input: Tensor
    outputs: tuple[Tensor, ...]
    max_batch: int
    top_k: int  # classifiers: top k, at most the number of classes
    probe: str = "not run"  # what its probe said on the engine the server will use, where that engine is here

    @property
    def steps(self) -> list[str]:
        post = [f"{self.name}_postprocess"] if self.info.task == "classify" else []
        return [f"{self.name}_preprocess", f"{self.name}_model", *post]


# ----------------------------------------------------------------------------------------------- config text

class Enum(str):
    """A protobuf enum value, written bare (TYPE_FP32), where other strings are quoted."""


def quote(text: str) -> str:
    """A protobuf text-format string: printable ASCII as is (quote and backslash escaped), every other byte of
    its UTF-8 as an octal escape."""
    escaped = {34: '\\"', 92: "\\\\"}
    return '"' + "".join(escaped.get(b) or (chr(b) if 32 <= b < 127 else f"\\{b:03o}") for b in text.encode()) + '"'


def pbtxt(message: dict, indent: int = 0) -> str:
    """A message in protobuf text format (Triton's config.pbtxt): dicts are messages, lists of dicts repeated
    messages, lists of scalars repeated scalars; map fields are lists of {"key", "value"} dicts."""
    pad, lines = " " * indent, []
    for key, value in message.items():
        if isinstance(value, list) and not any(isinstance(item, dict) for item in value):
            if value:
                lines.append(f"{pad}{key}: [ {', '.join(scalar(item) for item in value)} ]")
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                inner = pbtxt(item, indent + 2)
                lines += [f"{pad}{key} {{", *([inner] if inner else []), f"{pad}}}"]
            else:
                lines.append(f"{pad}{key}: {scalar(item)}")
    return "\n".join(lines)


def scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, (int, float)):
        return repr(value)
    return quote(str(value))


def tensor(t: Tensor) -> dict:
    return {"name": t.name, "data_type": Enum(t.data_type), "dims": list(t.dims)}


def parameters(values: dict[str, str]) -> list[dict]:
    return [{"key": key, "value": {"string_value": value}} for key, value in values.items()]


# ----------------------------------------------------------------------------------------------- what to serve

def sanitized(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem)


def tensors(values, path) -> tuple[Tensor, ...]:
    """onnxruntime's input or output descriptions as Triton tensors, without the batch axis."""
    found = []
    for value in values:
        if value.type not in TYPES:
            raise HieraRuntimeError(f"{path}: {value.name} is {value.type}, which this repository does not serve")
        found.append(Tensor(value.name, TYPES[value.type], tuple(d if isinstance(d, int) else -1
                                                                    for d in value.shape[1:])))
    return tuple(found)


def describe_onnx(path: Path):
    """The metadata, input and outputs of an ONNX file, read by onnxruntime (no graph optimization: only
    the descriptions are needed)."""
    session = OnnxSession(require_file(path), provider="cpu", optimization="disable")
    info = from_metadata(session.metadata, path)
    inputs = session.session.get_inputs()
    if info.task == "mae" or len(inputs) != 1:
        raise HieraRuntimeError(f"{path}: an MAE model: its second input, noise, is drawn on the client from a seed "
                                "(runtime.Reconstructor.noise); an ensemble that takes only image bytes cannot draw "
                                "it. Reconstruct with the runtime instead")
    return info, tensors(inputs, path)[0], tensors(session.session.get_outputs(), path)


def external_data(path: Path) -> dict[str, Path]:
    """The weights file export writes beside an artifact over 2 GB (`<file>.data`), under its own name: the
    ONNX file refers to it by that name."""
    data = path.with_name(path.name + ".data")
    return {data.name: data} if data.exists() else {}


def engine_limit(sidecar: dict) -> int | None:
    """The largest batch of an engine's optimization profile, where its sidecar records it."""
    try:
        return int(sidecar["profile"]["pixel_values"]["max"][0])
    except (KeyError, TypeError, IndexError, ValueError):  # a static engine, or one trtexec built: not recorded
        return None


def read_engines(engines: list[Path]):
    """Engines of one model (one source ONNX): their metadata, tensors (from the source ONNX beside them,
    whose sha256 the sidecars record), files by compute capability and the smallest profile limit."""
    sidecars = [read_sidecar(require_file(engine)) for engine in engines]
    first, sidecar = engines[0], sidecars[0]
    if not sidecar.get("onnx"):
        raise HieraRuntimeError(f"{first}: its sidecar names no source ONNX file; the repository's config needs the "
                                "input and output shapes it records")
    source = first.with_name(sidecar["onnx"])
    if not source.is_file():
        raise HieraRuntimeError(f"{first}: its source {sidecar['onnx']} (named in its sidecar) is not beside it; "
                                "the repository's config needs the input and output shapes it records")
    if sha256(source) != sidecar.get("onnx_sha256"):
        raise HieraRuntimeError(f"{first}: {source.name} beside it is not the file it was built from (sha256 "
                                "differs from its sidecar's)")
    _, model_input, outputs = describe_onnx(source)
    info = from_metadata(sidecar["metadata"], first)
    by_capability = {}
    for engine, engine_sidecar in zip(engines, sidecars):
        capability = str(engine_sidecar["compute_capability"])
        if capability in by_capability:
            raise HieraRuntimeError(f"{engine}: another engine of the same model is for compute capability "
                                    f"{capability} too ({by_capability[capability]}); give one engine per GPU kind")
        by_capability[capability] = engine
    limits = [limit for limit in map(engine_limit, sidecars) if limit]
    return info, model_input, outputs, by_capability, min(limits) if limits else None


def group(paths: list[Path]) -> list[list[Path]]:
    """Each ONNX file alone; engines grouped by the ONNX file they were built from (one model, several GPUs)."""
    groups, engines = [], {}
    for path in paths:
        if path.suffix not in ENGINE_SUFFIXES:
            groups.append([path])
            continue
        sidecar = read_sidecar(require_file(path))
        key = sidecar.get("onnx_sha256") or str(path)
        if key not in engines:
            engines[key] = []
            groups.append(engines[key])
        engines[key].append(path)
    return groups


def check_options(o: Options) -> None:
    for name in ("instances", "top_k", "max_batch"):
        if getattr(o, name) is not None and getattr(o, name) < 1:
            raise HieraRuntimeError(f"{name} {getattr(o, name)}: must be at least 1")
    if o.backend not in BACKENDS:
        raise HieraRuntimeError(f"backend {o.backend!r}: choose from {', '.join(BACKENDS)}")
    if o.kind not in KINDS:
        raise HieraRuntimeError(f"kind {o.kind!r}: choose from {', '.join(KINDS)}")
    if o.queue_delay_us < 0:
        raise HieraRuntimeError(f"queue_delay_us {o.queue_delay_us}: must be 0 or more")
    if o.trt_fp16 and (o.kind != "gpu" or o.backend != "native"):
        raise HieraRuntimeError("trt_fp16 is onnxruntime's TensorRT accelerator in Triton's onnxruntime backend: it "
                                "needs kind gpu and the native backend")
    for path in o.python_path:
        if not os.path.isabs(path):
            raise HieraRuntimeError(f"python_path {path}: must be absolute (a path on the server's machine)")


def proven(path: Path, o: Options) -> str:
    """Refuse an artifact whose export report says it failed; run the probe of one the native backend will serve
    on a CPU with onnxruntime (the engine the server runs it with), here and now. The python backend's models run
    it themselves when the server loads them (runtime.load); a GPU's engine cannot be run here."""
    verdict = report_verdict(path)
    if verdict is not None and verdict.passed is False:
        raise HieraRuntimeError(f"{path}: its export report ({verdict.report.name}) says it FAILED: "
                                f"{'; '.join(verdict.failures) or 'see it'}; serve an artifact that passed")
    if path.suffix in ENGINE_SUFFIXES or o.backend != "native" or o.kind != "cpu":
        return "runs when the server loads it" if o.backend == "python" else "not run here (the server's GPU)"
    model = load(path, provider="cpu", check=False)
    rows = probe.prove(model)
    return "none in the artifact" if rows is None else \
        f"ok on {probe.engine_name(model.session)}: " + "; ".join(row.describe() for row in rows)


def serve(paths: list[Path], o: Options) -> Served:
    """What one model (an ONNX file, or engines of one model) becomes in the repository."""
    first = paths[0]
    checked = [proven(path, o) for path in paths][0]
    if first.suffix in ENGINE_SUFFIXES:
        info, model_input, outputs, by_capability, limit = read_engines(paths)
        if o.trt_fp16:
            raise HieraRuntimeError(f"{first}: an engine is already built for its precision; trt_fp16 is for ONNX")
        if len(by_capability) == 1:
            files, capabilities = {"model.plan": first}, {}
        else:
            capabilities = {cc: f"model_sm{cc.replace('.', '')}.plan" for cc in by_capability}
            files = {capabilities[cc]: engine for cc, engine in by_capability.items()}
        artifacts = tuple(files)
        files.update({name + ".json": sidecar_path(engine) for name, engine in list(files.items())})
        platform = "tensorrt_plan"
    else:
        info, model_input, outputs = describe_onnx(first)
        files, capabilities, limit = {"model.onnx": first, **external_data(first)}, {}, None
        artifacts, platform = ("model.onnx",), "onnxruntime_onnx"
    if info.batch is None:
        if limit and o.max_batch and o.max_batch > limit:
            raise HieraRuntimeError(f"{first}: its engine's profile runs batches up to {limit}; max_batch "
                                    f"{o.max_batch} is more")
        max_batch = o.max_batch or min(limit or DEFAULT_MAX_BATCH, info.preprocessing.largest_batch)
        try:  # what a batch of the preprocessing step allocates: the runtime's megapixel guard of a call
            info.preprocessing.check_batch(max_batch)
        except ValueError as error:
            raise HieraRuntimeError(f"{first}: max_batch {error}") from None
    else:
        if o.backend == "native":
            raise HieraRuntimeError(f"{first}: a static batch of {info.batch}; Triton's {platform} backend batches "
                                    "only along a variable batch axis: export it with a dynamic batch, or serve this "
                                    "file with the python backend (the runtime fills its batch)")
        if o.max_batch and o.max_batch > info.batch:
            raise HieraRuntimeError(f"{first}: a static batch of {info.batch}; it cannot take batches of "
                                    f"max_batch {o.max_batch} (export it with a dynamic batch for larger ones)")
        max_batch = o.max_batch or info.batch
    if o.preferred_batch and max(o.preferred_batch) > max_batch:
        raise HieraRuntimeError(f"preferred_batch {max(o.preferred_batch)}: above the max batch of {first.name}, "
                                f"{max_batch}")
    top_k = min(o.top_k, outputs[0].dims[-1]) if info.task == "classify" and outputs[0].dims[-1] > 0 else o.top_k
    return Served(name=sanitized(first.stem), info=info, platform=platform, files=files, artifacts=artifacts,
                  capabilities=capabilities, input=model_input, outputs=outputs, max_batch=max_batch, top_k=top_k,
                  probe=checked)


def plan(paths, options: Options = Options()) -> list[Served]:
    """Everything the repository will hold, checked: reads the artifacts, writes nothing."""
    check_options(options)
    paths = [Path(p) for p in paths]
    if not paths:
        raise HieraRuntimeError("no models given")
    served = [serve(models, options) for models in group(paths)]
    names = {}
    for s in served:
        for name in (s.name, *s.steps):
            if name in names:
                raise HieraRuntimeError(f"{s.files[s.artifacts[0]]} and {names[name]} would both be served as "
                                        f"{name}; rename one of them")
            names[name] = s.files[s.artifacts[0]]
    return served


# ----------------------------------------------------------------------------------------------- configs

def instance_group(count: int, kind: str) -> list[dict]:
    return [{"count": count, "kind": Enum("KIND_GPU" if kind == "gpu" else "KIND_CPU")}]


def batching(max_batch: int, o: Options) -> dict:
    """Triton's dynamic batcher: it holds a request up to the queue delay to form one of the preferred sizes."""
    if not o.dynamic_batching or max_batch == 1:
        return {}
    preferred = sorted(set(o.preferred_batch or (max(1, max_batch // 2), max_batch)))
    return {"dynamic_batching": {"preferred_batch_size": preferred, "max_queue_delay_microseconds": o.queue_delay_us}}


def model_config(s: Served, o: Options) -> dict:
    common = {"name": f"{s.name}_model", "max_batch_size": s.max_batch, "input": [tensor(s.input)],
              "output": [tensor(t) for t in s.outputs],
              "instance_group": instance_group(o.instances, o.kind), **batching(s.max_batch, o)}
    if o.backend == "python":
        return {"name": common.pop("name"), "backend": "python", **common, "parameters": parameters({
            "hiera_step": "model", "artifacts": json.dumps(list(s.artifacts)),
            "outputs": json.dumps([t.name for t in s.outputs])})}
    config = {"name": common.pop("name"), "platform": s.platform, **common}
    if s.capabilities:
        config["cc_model_filenames"] = [{"key": cc, "value": name} for cc, name in s.capabilities.items()]
    if o.trt_fp16:
        config["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
            {"name": "tensorrt", "parameters": [{"key": "precision_mode", "value": "FP16"}]}]}}
    return config


def preprocess_config(s: Served, o: Options) -> dict:
    pixel_values = Tensor("pixel_values", s.input.data_type, s.input.dims)
    return {"name": f"{s.name}_preprocess", "backend": "python", "max_batch_size": s.max_batch,
            "input": [tensor(Tensor("image", "TYPE_STRING", (1,)))], "output": [tensor(pixel_values)],
            # No dynamic batching: decoding is per image, a batch only makes images wait for each other (measured
            # several times slower than one request at a time); instances run it in parallel.
            "instance_group": instance_group(o.instances, "cpu"),
            "parameters": parameters({"hiera_step": "preprocess",
                                      "preprocessing": json.dumps(s.info.preprocessing.to_dict()),
                                      "max_pixels": str(o.max_pixels),
                                      "dtype": NUMPY_TYPES.get(s.input.data_type, "float32")})}


def classifier_outputs(s: Served) -> list[Tensor]:
    return [Tensor("scores", "TYPE_FP32", (s.top_k,)), Tensor("indices", "TYPE_INT64", (s.top_k,)),
            Tensor("labels", "TYPE_STRING", (s.top_k,))]


def postprocess_config(s: Served, o: Options) -> dict:
    return {"name": f"{s.name}_postprocess", "backend": "python", "max_batch_size": s.max_batch,
            "input": [tensor(Tensor("logits", s.outputs[0].data_type, s.outputs[0].dims))],
            "output": [tensor(t) for t in classifier_outputs(s)],
            "instance_group": instance_group(1, "cpu"), **batching(s.max_batch, o),
            "parameters": parameters({"hiera_step": "postprocess", "top_k": str(s.top_k),
                                      "labels": json.dumps(list(s.info.labels or []))})}


def ensemble_config(s: Served) -> dict:
    def step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> dict:
        """`inputs`, `outputs`: the step model's tensor name -> the ensemble's tensor name."""
        return {"model_name": model, "model_version": -1,
                "input_map": [{"key": key, "value": value} for key, value in inputs.items()],
                "output_map": [{"key": key, "value": value} for key, value in outputs.items()]}

    model_outputs = {t.name: t.name for t in s.outputs}
    steps = [step(f"{s.name}_preprocess", {"image": "image"}, {"pixel_values": "pixel_values"}),
             step(f"{s.name}_model", {"pixel_values": "pixel_values"}, model_outputs)]
    outputs = list(s.outputs)
    if s.info.task == "classify":
        outputs = classifier_outputs(s)
        steps.append(step(f"{s.name}_postprocess", {"logits": s.outputs[0].name}, {t.name: t.name for t in outputs}))
    return {"name": s.name, "platform": "ensemble", "max_batch_size": s.max_batch,
            "input": [tensor(Tensor("image", "TYPE_STRING", (1,)))], "output": [tensor(t) for t in outputs],
            "ensemble_scheduling": {"step": steps}}


def configs(s: Served, o: Options) -> dict[str, dict]:
    """Each model folder's config, by folder name."""
    found = {s.name: ensemble_config(s), f"{s.name}_preprocess": preprocess_config(s, o),
             f"{s.name}_model": model_config(s, o)}
    if s.info.task == "classify":
        found[f"{s.name}_postprocess"] = postprocess_config(s, o)
    return found


# ----------------------------------------------------------------------------------------------- SAM 2 segmentation

EMBEDDINGS = ("image_embeddings", "high_res_feats_0", "high_res_feats_1")  # the image encoder's outputs
# Optional inputs of both segment models, as Segmenter.predict takes them: points in pixels of the original image
# (x, y), their labels (1 positive, 0 negative; 1 where not sent), boxes (x0, y0, x1, y1; one prompt each), and
# whether to answer SAM 2's three masks per prompt rather than one.
PROMPTS = (Tensor("point_coords", "TYPE_FP32", (-1, 2)), Tensor("point_labels", "TYPE_INT32", (-1,)),
           Tensor("boxes", "TYPE_FP32", (-1, 4)), Tensor("multimask", "TYPE_BOOL", (1,)))
# masks [prompts, masks, height, width] at the original image's size (thresholded as `runtime segment` does),
# iou_scores [prompts, masks]: SAM 2's predicted IoU
ANSWERS = (Tensor("masks", "TYPE_BOOL", (-1, -1, -1, -1)), Tensor("iou_scores", "TYPE_FP32", (-1, -1)))


@dataclass(frozen=True)
class Segmenting:
    """SAM 2's mask decoder served beside its image encoder's models."""

    name: str  # the prompt model; `<name>_segment` is the one-shot model
    encoder: Served
    decoder: Path
    embeddings: tuple[Tensor, ...]  # what the prompt model takes: the encoder model's outputs, batch of 1

    @property
    def one_shot(self) -> str:
        return f"{self.name}_segment"


def plan_segmenting(served: list[Served], decoder, o: Options) -> Segmenting:
    """The mask decoder at `decoder`, checked against the one SAM 2 image encoder among `served`: it must belong to
    it (runtime.segment.check_belongs) and its export must not have failed."""
    decoder = Path(decoder)
    encoders = [s for s in served if s.info.task == "image-encoder"]
    if len(encoders) != 1:
        raise HieraRuntimeError(f"{decoder}: a mask decoder is served with its SAM 2 image encoder: give exactly one "
                                f"among MODEL ({len(encoders)} given)")
    encoder = encoders[0]
    if encoder.platform != "onnxruntime_onnx":
        raise HieraRuntimeError(f"{decoder}: its prompt model reads the encoder's ONNX file (the input frame, what it "
                                f"belongs to): serve the encoder as .onnx, not {encoder.files[encoder.artifacts[0]]}")
    source = encoder.files[encoder.artifacts[0]]
    Segmenter(FeatureExtractor.load(source, provider="cpu", check=False),
              MaskDecoder.load(require_file(decoder), provider="cpu", check=False))  # refuses a stranger
    by_name = {t.name: t for t in encoder.outputs}
    embeddings = tuple(Tensor(name, by_name[name].data_type, (1, *by_name[name].dims)) for name in EMBEDDINGS)
    return Segmenting(name=sanitized(decoder.stem), encoder=encoder, decoder=decoder, embeddings=embeddings)


def optional(t: Tensor) -> dict:
    return {**tensor(t), "optional": True}


def segmenting_configs(g: Segmenting, o: Options) -> dict[str, dict]:
    """The prompt model and the one-shot model's configs, by folder name. No batching: one request is one image's
    prompts, and the prompts of one image are already one decoder run."""
    prompt = {"name": g.name, "backend": "python", "max_batch_size": 0,
              "input": [tensor(t) for t in g.embeddings] + [tensor(Tensor("image_size", "TYPE_INT64", (2,)))]
              + [optional(t) for t in PROMPTS], "output": [tensor(t) for t in ANSWERS],
              "instance_group": instance_group(o.instances, o.kind),
              "parameters": parameters({"hiera_step": "prompt", "encoder": f"{g.encoder.name}_model/1/model.onnx",
                                        "max_pixels": str(o.max_pixels)})}
    one_shot = {"name": g.one_shot, "backend": "python", "max_batch_size": 0,
                "input": [tensor(Tensor("image", "TYPE_STRING", (1,)))] + [optional(t) for t in PROMPTS],
                "output": [tensor(t) for t in ANSWERS], "instance_group": instance_group(o.instances, "cpu"),
                "parameters": parameters({"hiera_step": "segment", "encoder_model": f"{g.encoder.name}_model",
                                          "prompt_model": g.name,
                                          "preprocessing": json.dumps(g.encoder.info.preprocessing.to_dict()),
                                          "max_pixels": str(o.max_pixels),
                                          "dtype": NUMPY_TYPES.get(g.encoder.input.data_type, "float32")})}
    return {g.name: prompt, g.one_shot: one_shot}


# ----------------------------------------------------------------------------------------------- KServe

def kserve_name(text: str) -> str:
    """A Kubernetes resource name (RFC 1035 label): lowercase letters, digits and '-', starting with a letter."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:45].rstrip("-")  # KServe adds suffixes of its own to the 63 allowed
    return name or "hiera"


def kserve_manifest(name: str, folder: str, kind: str) -> str:
    if kind == "gpu":
        resources = ('        requests: {cpu: "4", memory: 16Gi, nvidia.com/gpu: "1"}\n'
                     '        limits: {cpu: "4", memory: 16Gi, nvidia.com/gpu: "1"}\n')
    else:
        resources = ('        requests: {cpu: "4", memory: 8Gi}\n'
                     '        limits: {cpu: "4", memory: 8Gi}\n')
    return (f"# KServe InferenceService serving this Triton model repository (python -m runtime triton).\n"
            f"# Upload the folder, set storageUri to where it is and image to a Triton image with hiera-deploy\n"
            f"# installed (docs/serving.md), then: kubectl apply -f {MANIFEST}\n"
            "apiVersion: serving.kserve.io/v1beta1\n"
            "kind: InferenceService\n"
            "metadata:\n"
            f"  name: {name}\n"
            "spec:\n"
            "  predictor:\n"
            "    model:\n"
            "      modelFormat:\n"
            "        name: triton\n"
            "      runtime: kserve-tritonserver\n"
            f"      storageUri: s3://BUCKET/PATH/{folder}  # placeholder: where this folder is uploaded\n"
            "      image: REGISTRY/tritonserver-hiera:TAG  # placeholder: nvcr.io/nvidia/tritonserver + hiera-deploy\n"
            "      resources:\n"
            f"{resources}")


# ----------------------------------------------------------------------------------------------- writing

def copy_file(source: Path, target: Path) -> None:
    with open_file(source) as reader:
        try:
            with open(target, "wb") as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)
        except OSError as error:
            raise FileError(f"{target}: cannot write ({error.strerror or error})") from None


def write_model_folder(folder: Path, config: dict, files: dict[str, Path], python: bool, o: Options) -> None:
    (folder / "1").mkdir(parents=True)
    write_bytes(folder / "config.pbtxt", (pbtxt(config) + "\n").encode())
    for name, source in files.items():
        copy_file(source, folder / "1" / name)
    if python:
        write_bytes(folder / "1" / "model.py", read_bytes(PYTHON_MODEL, 1 << 20))
        if o.python_path:
            write_json(folder / "python_path.json", list(o.python_path))


def record(served: list[Served], o: Options, segmenting: Segmenting | None = None) -> dict:
    segment = {} if segmenting is None else {"segment": {
        "prompt_model": segmenting.name, "one_shot_model": segmenting.one_shot, "encoder": segmenting.encoder.name,
        "artifact": {"file": segmenting.decoder.name, "as": "model.onnx", "sha256": sha256(segmenting.decoder)}}}
    return {**segment, "format_version": FORMAT_VERSION, "written_by": WRITTEN_BY, "options": asdict(o),
            "models": [{"name": s.name, "task": s.info.task, "steps": s.steps, "platform": s.platform,
                        "backend": o.backend, "max_batch": s.max_batch, "probe": s.probe,
                        "artifacts": [{"file": s.files[name].name, "as": name, "sha256": sha256(s.files[name])}
                                      for name in s.artifacts]} for s in served]}


def write_repository(paths, repo, options: Options = Options(), decoder=None) -> dict:
    """Write the repository for the artifacts at `paths` to the folder `repo`, whole or not at all. Returns
    what it wrote (the content of hiera_repository.json) with `replaced`: whether a repository of ours was
    there before. `decoder`: a SAM 2 mask decoder artifact of the image encoder among `paths`, served as the
    prompt and one-shot models."""
    served = plan(paths, options)
    segmenting = None if decoder is None else plan_segmenting(served, decoder, options)
    if segmenting is not None:
        taken = {name for s in served for name in (s.name, *s.steps)} & {segmenting.name, segmenting.one_shot}
        if taken:
            raise HieraRuntimeError(f"{decoder}: would be served as {sorted(taken)[0]}, a name another model has; "
                                    "rename one of them")
    repo = Path(repo)
    with replacing(repo, WRITTEN_BY) as replacement:
        staging = replacement.staging
        for s in served:
            for folder, config in configs(s, options).items():
                files = s.files if folder == f"{s.name}_model" else {}
                write_model_folder(staging / folder, config, files, config.get("backend") == "python", options)
        if segmenting is not None:
            for folder, config in segmenting_configs(segmenting, options).items():
                files = {"model.onnx": segmenting.decoder, **external_data(segmenting.decoder)} \
                    if folder == segmenting.name else {}
                write_model_folder(staging / folder, config, files, True, options)
        result = record(served, options, segmenting)
        write_json(staging / MARKER, result)
        write_bytes(staging / MANIFEST, kserve_manifest(kserve_name(repo.name), repo.name, options.kind).encode())
    return {**result, "replaced": replacement.replaced}


