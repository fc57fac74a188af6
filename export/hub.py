"""The Hugging Face layout of an export: the folder the Hub, transformers.js and optimum read as it is.

    config.json                   transformers' HieraConfig (the checkpoint's own when it has one), id2label
    preprocessor_config.json      transformers' BitImageProcessor stating our preprocessing exactly
    model.onnx                    fp32: optimum's onnxruntime models load this name
    onnx/model.onnx               fp32           transformers.js dtype "fp32"
    onnx/model_fp16.onnx          fp16           transformers.js dtype "fp16"
    onnx/model_quantized.onnx     dynamic int8   transformers.js dtype "q8" (its default on WASM)
    onnx/model_qdq.onnx           static int8 for TensorRT and OpenVINO (no Hugging Face tool picks it by name)
    hiera_<name>_<task>.report.json   the export's report, unchanged
    README.md                     the model card

The ONNX files are the export's artifacts themselves (hard links where the filesystem allows), so our
`hiera.*` metadata stays inside them and `python -m runtime` reads the same files. An artifact whose
weights live in an external `.data` file (over 2 GB) gets a rewritten graph file naming its data file
the way transformers.js expects (`onnx/model.onnx_data`); the data itself is linked, not copied.

`layout(...)` is a pure description, `{relative path: source file or bytes}`; `write` puts it into a
folder (the export's staging folder); `publish` builds it in a staging folder beside the target and
renames it into place whole, which is what `python -m export hub ARTIFACT.onnx --out DIR` does.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import onnx

from hiera_model import SAM2_VARIANTS, VARIANTS, HieraConfig, HieraModelError
from hiera_model.config_files import config_from_file
from runtime import commit, files
from runtime.artifact import PER_ARTIFACT, decoded, report_path
from runtime.bench import MAX_RUNS
from runtime.device import cpu_isa, cpu_name
from runtime.formats import FORMATS
from runtime.errors import FileError, HieraRuntimeError
from runtime.shell import Parser, Whole, say

from . import artifact
from .errors import ExportError

# transformers.js picks a file by dtype: onnx/model{suffix}.onnx. Our int8 is dynamic quantization with int8
# weights per output channel, which is what its "q8" (model_quantized.onnx) names.
ONNX_FILES = {name: kind.hub_file for name, kind in FORMATS.items() if kind.hub_file}  # runtime/formats.py
OPTIMUM_FILE = "model.onnx"
ARCHITECTURES = {"classify": "HieraForImageClassification", "features": "HieraModel", "backbone": "HieraBackbone",
                 "mae": "HieraForPreTraining"}
# PIL's enum values, as transformers stores them
PIL_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}
NEEDS_FP32 = "the hub layout needs the fp32 artifact: optimum and transformers.js load model.onnx by default"


# Why SAM 2 has no Hub folder here: transformers.js' Sam2Model (and transformers' Sam2Model) is one model of two
# ONNX sessions, both loaded at from_pretrained: onnx/vision_encoder*.onnx (outputs image_embeddings.0, .1, .2) and
# onnx/prompt_encoder_mask_decoder*.onnx, which this export does not make (issue 26). A folder with the encoder
# alone would be one that no Hugging Face tool loads.
SAM2_NO_HUB = ("the hub layout has no place for SAM 2's {what}: transformers.js' Sam2Model loads two ONNX files "
               "together, onnx/vision_encoder.onnx (outputs image_embeddings.0, .1, .2) and "
               "onnx/prompt_encoder_mask_decoder.onnx, and the mask decoder is not exported here (docs/sam2.md); "
               "serve the encoder with python -m runtime or python -m runtime triton")


def check(task: str, video: bool, precisions, sam2: bool = False) -> None:
    """Raise `ExportError` when an export of this kind cannot have the Hugging Face layout: call it before
    exporting, so that a refusal costs nothing. `sam2`: a SAM 2 model (whose backbone task is Hiera's name)."""
    if task == "image-encoder" or sam2:
        raise ExportError(SAM2_NO_HUB.format(what="image encoder" if task == "image-encoder" else "HieraDet backbone"))
    if video:
        raise ExportError("the hub layout is for image models: transformers has no video Hiera (no config.json a "
                          "Hugging Face tool reads can describe one) and no processor that makes clips; run the video "
                          "artifacts with python -m runtime")
    if task not in ARCHITECTURES:
        raise ExportError(f"the hub layout has no place for task {task!r}")
    if "fp32" not in precisions:
        raise ExportError(NEEDS_FP32)


def layout(artifacts: Mapping[str, Path], report: Path, checkpoint: Path | None = None, *,
           config: HieraConfig | None = None, speed: Mapping[str, dict] | None = None) -> dict[str, Path | bytes]:
    """The Hub folder of one export, as `{relative path: source file or bytes}`.

    `artifacts`: the export's ONNX files by precision (fp32 required; fp16, int8, qdq as exported).
    `report`: its `<name>.report.json`, which must describe exactly these files (sha256 checked).
    `checkpoint`: the weights it was exported from, if a local checkpoint: a transformers directory's
    `config.json` is used as it is. `config`: the architecture, when the checkpoint is not given (the
    export has it; otherwise a published variant's name gives it). `speed`: latency per precision
    (`runtime.bench.summarize` figures plus `threads`), for the model card.
    """
    artifacts = {precision: Path(path) for precision, path in artifacts.items()}
    unknown = sorted(set(artifacts) - set(ONNX_FILES))
    if unknown:
        raise ExportError(f"the hub layout has no file name for precision {', '.join(unknown)}")
    if "fp32" not in artifacts:
        raise ExportError(NEEDS_FP32)
    summary = artifact.read_report(report)
    meta = _metadata(artifacts, summary, report)
    check(meta["task"], len(meta["input_size"]) == 3, artifacts, sam2=meta["variant"] in SAM2_VARIANTS)
    out: dict[str, Path | bytes] = {}
    external = {}  # the transformers.js file names whose weights are in an external data file
    for precision, path in artifacts.items():
        target = ONNX_FILES[precision]
        data = path.with_name(path.name + ".data")
        if not data.is_file():
            out[target] = path
            if precision == "fp32":
                out[OPTIMUM_FILE] = path
            continue
        data_name = Path(target).name + "_data"  # transformers.js' name for it: model.onnx_data
        out[f"onnx/{data_name}"] = data
        out[target] = _with_data_location(path, data_name)
        external[Path(target).name] = 1
        if precision == "fp32":
            out[OPTIMUM_FILE] = _with_data_location(path, f"onnx/{data_name}")
    out["config.json"] = _json(_config(meta, summary, checkpoint, config, artifacts, external))
    out["preprocessor_config.json"] = _json(preprocessor_config(meta["preprocessing"]))
    out[Path(report).name] = Path(report)
    out["README.md"] = model_card(meta, summary, out, speed).encode()
    return out


def write(files_by_path: Mapping[str, Path | bytes], directory: Path) -> None:
    """Put a layout into `directory` (created if need be): sources hard-linked (copied where the filesystem
    cannot link them), bytes written. Not atomic by itself: write into a staging folder (see `publish`)."""
    directory = Path(directory)
    for relative, source in files_by_path.items():
        target = directory / _safe_relative(relative)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(source, bytes):
                target.write_bytes(source)
                continue
            files.require_file(source)
            if relative.endswith(("_data", ".data")):  # onnx refuses external data with several links
                shutil.copyfile(source, target)
                continue
            try:
                os.link(source, target)
            except OSError:  # another filesystem, or one without hard links
                shutil.copyfile(source, target)
        except FileError as error:
            raise ExportError(str(error)) from None
        except OSError as error:
            raise ExportError(f"{target}: cannot write ({error.strerror or error})") from None


def publish(files_by_path: Mapping[str, Path | bytes], out: Path) -> Path:
    """Write a layout to `out` as one transaction (`runtime.commit.replacing`): built in a staging folder beside
    it, then swapped into place. `out` then holds the previous complete folder or the new one, never a mix. An
    existing `out` must be empty or hold only files an export listed in the manifest it keeps there; anything
    else is refused, naming the file that would be lost."""
    out = Path(out)
    parent = out.resolve().parent
    if not parent.is_dir():
        raise ExportError(f"{parent}: no such directory")
    try:
        with commit.replacing(out, "python -m export") as replacement:
            write(files_by_path, replacement.staging)
    except FileError as error:
        raise ExportError(str(error)) from None
    return out


def preprocessor_config(preprocessing: Mapping) -> dict:
    """transformers' `BitImageProcessor` settings for our preprocessing (`hiera.preprocessing`): resize the shortest
    edge, center crop, scale to [0, 1], normalize, RGB. transformers and transformers.js both read it."""
    height, width = preprocessing["crop_size"]
    return {
        "image_processor_type": "BitImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": int(preprocessing["resize_shortest_edge"])},
        "resample": PIL_RESAMPLE[preprocessing["resample"]],
        "do_center_crop": True,
        "crop_size": {"height": int(height), "width": int(width)},
        "do_rescale": True,
        "rescale_factor": float(preprocessing.get("rescale_factor", 1 / 255)),
        "do_normalize": True,
        "image_mean": [float(x) for x in preprocessing["mean"]],
        "image_std": [float(x) for x in preprocessing["std"]],
    }


def transformers_config(config: HieraConfig, task: str, labels, out_features=None) -> dict:
    """transformers' `HieraConfig` (its config.json fields) for our architecture."""
    stages = len(config.depths)
    d = {
        "model_type": "hiera",
        "architectures": [ARCHITECTURES[task]],
        "embed_dim": config.embed_dim,
        "image_size": list(config.input_size),
        "patch_size": list(config.patch_kernel),
        "patch_stride": list(config.patch_stride),
        "patch_padding": list(config.patch_padding),
        "mlp_ratio": config.mlp_ratio,
        "depths": list(config.depths),
        "num_heads": list(config.num_heads),
        "embed_dim_multiplier": config.dim_mul,
        "num_query_pool": config.q_pool,
        "query_stride": list(config.q_stride),
        "masked_unit_size": list(config.mask_unit_size),
        "masked_unit_attention": list(config.mask_unit_attn),
        "num_channels": config.in_chans,
        "hidden_act": "gelu",
        "layer_norm_eps": config.layer_norm_eps,
        "mask_ratio": config.mask_ratio,
        "normalize_pixel_loss": config.norm_pix_loss,
        "stage_names": ["stem", *(f"stage{i + 1}" for i in range(stages))],
    }
    if task == "mae":
        d.update(decoder_hidden_size=config.decoder_embed_dim, decoder_depth=config.decoder_depth,
                 decoder_num_heads=config.decoder_num_heads)
    if task == "backbone":
        names = list(out_features or [f"stage{i + 1}" for i in range(stages)])
        d.update(out_features=names, out_indices=[int(name.removeprefix("stage")) for name in names])
    names = list(labels) if labels else [f"LABEL_{i}" for i in range(config.num_classes)]
    d["id2label"] = {str(i): name for i, name in enumerate(names)}
    d["label2id"] = {name: i for i, name in enumerate(names)}
    return d


def model_card(meta: dict, report: dict, out: Mapping[str, Path | bytes], speed: Mapping[str, dict] | None) -> str:
    """README.md: what was exported, from which weights, how close each file is to PyTorch, how fast, how to load it."""
    task, variant = meta["task"], meta["variant"]
    weights = report.get("weights") or {}
    source = str(weights.get("source", "unknown"))
    base_model = re.sub(r"@.*$", "", source) if re.match(r"^(facebook|timm)/[\w.-]+(@\w+)?$", source) else None
    pipeline_tag = {"classify": "image-classification", "features": "image-feature-extraction"}.get(task)
    front = ["---", "library_name: transformers.js", "tags:", "- hiera", "- onnx", "- hiera-deploy"]
    front += [f"pipeline_tag: {pipeline_tag}"] if pipeline_tag else []
    front += [f"base_model: {base_model}"] if base_model else []
    front.append("---")

    random = source.startswith("random:")
    lines = [*front, "", f"# Hiera-{variant} ({task}), ONNX", "",
             f"Hiera (Ryali et al. 2023) exported with hiera-deploy: task `{task}`, input {_size(meta['input_size'])}, "
             f"batch {meta['batch']}, ONNX opset {meta['opset']}.", ""]
    if random:
        lines += ["**Random weights** (`" + source + "`): the graph and its speed are real, its outputs mean nothing.",
                  ""]
    lines += ["## Weights", "", f"- source: `{source}`",
              f"- sha256: `{weights.get('sha256') or '-'}`",
              f"- verified against hiera-deploy's models.lock: {'yes' if weights.get('verified') else 'no'}", ""]

    inputs = ", ".join((report.get("validation") or {}).get("inputs", [])) or "none"
    lines += ["## Files", "", "Each ONNX file carries hiera-deploy's `hiera.*` metadata (preprocessing, labels, "
              "provenance), so `python -m runtime` runs it as it is. Parity: against PyTorch fp32 with the same "
              f"weights, on the inputs the report names ({inputs}).",
              "", "| file | precision | MB | sha256 | max abs diff | min cosine | top-1 agree | runs in |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for precision, target in ONNX_FILES.items():
        entry = report["artifacts"].get(precision)
        if target not in out or entry is None:
            continue
        checked = entry.get("parity") or {}
        first = next(iter(checked.values()), {})
        bound = ((report.get("validation") or {}).get("thresholds") or {}).get(precision) or {}
        cells = [f"`{target}`" + (f", `{OPTIMUM_FILE}`" if precision == "fp32" else ""), precision,
                 f"{entry['bytes'] / 1e6:.1f}", f"`{entry['sha256'][:16]}…`",
                 _against(f"{first['max_abs']:.2e}", first["max_abs"], bound, "max_abs") if "max_abs" in first
                 else "not checked",
                 _against(f"{first['cosine']:.6f}", first["cosine"], bound, "cosine") if "cosine" in first else "-",
                 f"{first['top1_agreement']:.0%}" if "top1_agreement" in first else "-", RUNS_IN[precision]]
        lines.append("| " + " | ".join(cells) + " |")
    if any(name.endswith("_data") for name in out):
        lines += ["", "Weights over 2 GB are in `onnx/*.onnx_data`; the graph files beside them name that file (their "
                  "sha256 differs from the report's for that reason; the weights are the exported ones)."]
    lines += ["", "transformers.js picks a file by `dtype`: `fp32`, `fp16`, `q8` (the int8 file); this config.json "
              "makes `fp32` its default, and `q8` on WASM where the folder has it. optimum loads `model.onnx`, or "
              "another file with `subfolder='onnx', file_name=...`.", "",
              f"The export's own report: `{next(name for name in out if name.endswith('.report.json'))}`.", ""]

    lines += ["## Speed", ""]
    if speed:
        lines += [f"onnxruntime CPU, batch {next(iter(speed.values()))['batch']}, "
                  f"{next(iter(speed.values())).get('threads', '?')} threads, on {cpu_name()} "
                  f"({' '.join(cpu_isa()) or platform.machine()}; the machine that wrote this folder):", "",
                  "| file | median ms | p90 ms |", "| --- | --- | --- |"]
        lines += [f"| `{ONNX_FILES[p]}` | {s['median_ms']:.1f} | {s['p90_ms']:.1f} |" for p, s in speed.items()]
    else:
        lines.append("Not measured here. On your machine: `python -m runtime bench --model onnx/model.onnx`.")
    lines += ["", "## Use", "", *USAGE[task], ""]
    if task == "classify":
        lines += ["transformers.js decodes and resizes images itself (sharp in Node, a canvas in browsers): its "
                  "bicubic resize does not widen the filter when it shrinks an image as Pillow and transformers do, "
                  "and it drops an alpha channel where they composite onto white. Its scores on a photograph can "
                  "therefore differ a little from Python's; given the same pixel_values, the outputs are the same.", ""]
    return "\n".join(lines)


RUNS_IN = {name: kind.runs_in for name, kind in FORMATS.items()}

_JS_SETUP = ["```js", "import { env, pipeline, AutoModel, RawImage } from '@huggingface/transformers';",
             "env.allowRemoteModels = false;            // a local folder: its parent directory, then its name",
             "env.localModelPath = '/path/to/parent/';"]
USAGE = {
    "classify": [
        "transformers.js (Node: onnxruntime-node; browsers: WASM or WebGPU):", "", *_JS_SETUP,
        "const classify = await pipeline('image-classification', 'FOLDER', { dtype: 'fp32' });  // or 'q8', 'fp16'",
        "await classify('photo.jpg', { top_k: 5 });", "```", "",
        "optimum (Python; `model.onnx`):", "", "```python",
        "from optimum.onnxruntime import ORTModelForImageClassification",
        "from transformers import AutoImageProcessor",
        "model = ORTModelForImageClassification.from_pretrained('FOLDER')",
        "inputs = AutoImageProcessor.from_pretrained('FOLDER')(image, return_tensors='pt')",
        "logits = model(**inputs).logits", "```", "",
        "hiera-deploy's runtime (numpy, Pillow, onnxruntime; no torch):", "", "```sh",
        "python -m runtime predict photo.jpg --model FOLDER/onnx/model.onnx", "```"],
    "features": [
        "transformers.js (`HieraModel`; outputs `last_hidden_state`, `pooler_output`):", "", *_JS_SETUP,
        "const extract = await pipeline('image-feature-extraction', 'FOLDER', { dtype: 'fp32' });",
        "const model = await AutoModel.from_pretrained('FOLDER', { dtype: 'fp32' });  // all outputs by name",
        "```", "", "optimum (Python): `ORTModelForFeatureExtraction.from_pretrained('FOLDER')`.", "",
        "hiera-deploy's runtime: `runtime.FeatureExtractor.load('FOLDER/onnx/model.onnx').extract(images)`."],
    "backbone": [
        "No Hugging Face pipeline takes stage maps. transformers.js loads the folder as a model (`HieraModel`) whose "
        "outputs are the maps by name (`stage1`..`stage4`, NCHW):", "", *_JS_SETUP,
        "const model = await AutoModel.from_pretrained('FOLDER', { dtype: 'fp32' });",
        "const processor = await AutoProcessor.from_pretrained('FOLDER');",
        "const maps = await model(await processor(await RawImage.read('photo.jpg')));  // maps.stage1 ...", "```", "",
        "hiera-deploy's runtime: `runtime.FeatureExtractor.load('FOLDER/onnx/model.onnx').extract(images)`."],
    "mae": [
        "No Hugging Face pipeline runs MAE pretraining models. transformers.js loads the folder as a model "
        "(`HieraModel`): give it `pixel_values` and `noise` ([batch, mask units], uniform in [0, 1): the units with "
        "the lowest noise stay visible); the outputs are `logits`, `bool_masked_pos`, `ids_restore`.", "",
        *_JS_SETUP, "const model = await AutoModel.from_pretrained('FOLDER', { dtype: 'fp32' });",
        "const { logits, bool_masked_pos } = await model({ pixel_values, noise });", "```", "",
        "hiera-deploy's runtime: `python -m runtime reconstruct photo.jpg --model FOLDER/onnx/model.onnx`."],
}


def hub_command(argv) -> int:
    """python -m export hub ARTIFACT.onnx --out DIR: the Hugging Face folder of an existing export."""
    p = Parser(prog="python -m export hub", description="Turn an export (an artifact and the report beside it) into "
               "the folder the Hugging Face Hub, transformers.js and optimum load as it is.")
    p.add_argument("artifact", type=Path, metavar="ARTIFACT.onnx", help="any artifact of the export; all the "
                   "precisions its report lists are taken")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the folder to write (replaced whole if it "
                   "is one this command wrote)")
    p.add_argument("--checkpoint", type=Path, metavar="PATH", help="the checkpoint it was exported from: its "
                   "config.json is used as it is; needed for a custom architecture with no config.json")
    p.add_argument("--bench-runs", type=Whole(0, MAX_RUNS), default=10, metavar="N", help="time each file N times on "
                   f"onnxruntime's CPU provider for the model card (default 10, at most {MAX_RUNS}; 0: no timing)")
    a = p.parse_args(argv)
    report = report_for(a.artifact)
    summary = artifact.read_report(report)
    artifacts = {precision: report.with_name(entry["file"]) for precision, entry in summary["artifacts"].items()
                 if precision in ONNX_FILES}  # the OpenVINO artifact has no place in the Hub's layout
    first = _metadata(artifacts, summary, report)
    check(first["task"], len(first["input_size"]) == 3, artifacts)
    speed = measure(artifacts, a.bench_runs) if a.bench_runs else None
    out = publish(layout(artifacts, report, a.checkpoint, speed=speed), a.out)
    say(f"wrote {out}")
    for relative in sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()):
        say(f"  {relative}")
    return 0


def _against(text: str, value, bound: dict, figure: str) -> str:
    """A parity figure with the bound it is held to and whether it holds (as the report's verdict decides)."""
    if figure not in bound or not isinstance(value, (int, float)):
        return text
    holds = value <= bound[figure] if figure == "max_abs" else value >= bound[figure]
    return f"{text} ({'≤' if figure == 'max_abs' else '≥'} {bound[figure]:g}: {'ok' if holds else 'FAILED'})"


def report_for(artifact: Path) -> Path:
    """The report beside an artifact (`runtime.artifact.report_path`): hiera_<name>_<task>.report.json."""
    artifact = Path(artifact)
    try:
        files.require_file(artifact)
    except FileError as error:
        raise ExportError(str(error)) from None
    report = report_path(artifact)
    if report is None or not report.is_file():
        raise ExportError(f"{artifact}: no report beside it (hiera_<name>_<task>.report.json); pass an "
                          "artifact that python -m export wrote, in its folder")
    return report


def measure(artifacts: Mapping[str, Path], runs: int, threads: int = 2) -> dict[str, dict]:
    """Median and p90 latency of each artifact on onnxruntime's CPU provider at its own batch."""
    import numpy as np

    from runtime import load
    from runtime.bench import summarize, time_calls

    speed = {}
    for precision, path in artifacts.items():
        try:
            model = load(path, provider="cpu", threads=threads)
        except HieraRuntimeError as error:
            raise ExportError(str(error)) from None
        batch = model.info.batch or 1
        inputs = {"pixel_values": np.zeros((batch, 3, *model.info.input_size), np.float32)}
        if model.info.task == "mae":
            inputs["noise"] = model.noise(batch)
        call = lambda model=model, inputs=inputs: model.run(**inputs)  # noqa: E731
        speed[precision] = {**summarize(time_calls(call, runs), batch), "threads": threads}
    return speed


def _metadata(artifacts: Mapping[str, Path], report: dict, report_path: Path) -> dict:
    """The `hiera.*` metadata the artifacts share, after checking that the report describes exactly these files."""
    shared = None
    for precision, path in artifacts.items():
        entry = report["artifacts"].get(precision)
        if not isinstance(entry, dict) or entry.get("file") != path.name:
            raise ExportError(f"{report_path}: does not list {path.name} as the {precision} artifact")
        if entry.get("passed") is False:
            raise ExportError(f"{path}: its export report says it FAILED ({'; '.join(entry.get('failures') or [])}): "
                              "a Hub folder would publish it; publish an export whose artifacts passed")
        try:
            digest = files.sha256(path)
        except FileError as error:
            raise ExportError(str(error)) from None
        if digest != entry.get("sha256"):
            raise ExportError(f"{path}: sha256 {digest[:16]}… is not the one {report_path.name} records "
                              f"({str(entry.get('sha256'))[:16]}…): the file changed after the export")
        meta = _read_metadata(path)
        if meta.get("precision") != precision:
            raise ExportError(f"{path}: its metadata says precision {meta.get('precision')!r}, not {precision}")
        common = {k: v for k, v in meta.items() if k not in PER_ARTIFACT}
        if shared is None:
            shared = common
        elif common != shared:
            raise ExportError(f"{path}: its metadata differs from the other artifacts' (not one export)")
    missing = [key for key in ("task", "variant", "input_size", "preprocessing", "outputs") if key not in shared]
    if missing:
        raise ExportError(f"{next(iter(artifacts.values()))}: its hiera metadata lacks {', '.join(missing)}")
    return shared


def _read_metadata(path: Path) -> dict:
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as error:  # onnx and protobuf raise many types (DecodeError, ValueError, OSError): all mean this
        raise ExportError(f"{path}: not a readable ONNX file ({type(error).__name__})") from None
    try:
        meta = decoded({p.key: p.value for p in model.metadata_props}, path)
    except HieraRuntimeError as error:
        raise ExportError(str(error)) from None
    if not meta:
        raise ExportError(f"{path}: no hiera.* metadata: not written by python -m export")
    if "batch" not in meta:
        meta["batch"] = 1
    meta["classes"] = _classes(model)
    return meta


def _classes(model: onnx.ModelProto) -> int | None:
    """The width of a classifier's `logits` output, from the graph's declared shape."""
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        if output.name == "logits" and len(dims) == 2 and dims[1].HasField("dim_value"):
            return dims[1].dim_value
    return None


def _config(meta: dict, report: dict, checkpoint: Path | None, config: HieraConfig | None,
            artifacts: Mapping[str, Path], external: dict) -> dict:
    """config.json: the checkpoint's own transformers config, else one made from our architecture; plus
    transformers.js' settings (which file each device loads by default, external data)."""
    task, labels = meta["task"], meta.get("labels")
    own = _checkpoint_config(checkpoint)
    if own is not None and own.get("model_type") == "hiera":
        result = dict(own)
        if task == "classify" and not result.get("id2label"):
            names = labels or [f"LABEL_{i}" for i in range(meta["classes"] or 0)]
            result["id2label"] = {str(i): name for i, name in enumerate(names)}
    else:
        architecture = config or _architecture(meta, checkpoint, own)
        if meta.get("classes"):
            architecture = architecture.replace(num_classes=meta["classes"])
        out_features = [name for name in meta["outputs"] if name.startswith("stage")] if task == "backbone" else None
        result = transformers_config(architecture, task, labels if task == "classify" else None, out_features)
        if task != "classify":  # no classes: transformers' default two labels would only mislead
            result.pop("id2label"), result.pop("label2id")
    # transformers.js picks q8 on WASM unless told otherwise: name the files this folder has.
    js = {"dtype": "fp32", "device_config": {"wasm": {"dtype": "q8" if "int8" in artifacts else "fp32"}}}
    if external:
        js["use_external_data_format"] = external
    result["transformers.js_config"] = js
    return result


def _checkpoint_config(checkpoint: Path | None) -> dict | None:
    if checkpoint is None:
        return None
    file = Path(checkpoint) / "config.json"
    if not Path(checkpoint).is_dir() or not file.is_file():
        return None
    try:
        own = files.read_json(file, 1 << 20)
    except FileError as error:
        raise ExportError(str(error)) from None
    if not isinstance(own, dict):
        raise ExportError(f"{file}: expected a JSON object")
    return own


def _architecture(meta: dict, checkpoint: Path | None, own: dict | None) -> HieraConfig:
    """Our architecture of the export: from a FAIR or timm config.json, the checkpoint's weights, or the published
    variant the artifacts are named after."""
    try:
        if own is not None:
            return config_from_file(own, checkpoint)[0]
        if checkpoint is not None:
            import warnings

            import hiera_model

            with warnings.catch_warnings():  # the export already accepted these weights; only the shape is read here
                warnings.simplefilter("ignore")
                return hiera_model.load(checkpoint, task=meta["task"], allow_unverified=True).config
    except HieraModelError as error:
        raise ExportError(str(error)) from None
    variant = VARIANTS.get(meta["variant"])
    if variant is None:
        raise ExportError(f"Hiera-{meta['variant']} is not a published variant, and its architecture is not in the "
                          "artifacts: pass the checkpoint it was exported from")
    return variant.config_for(meta["task"])


def _with_data_location(path: Path, location: str) -> bytes:
    """The graph of an artifact with external data, naming `location` as its data file (weights not loaded)."""
    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    return model.SerializeToString()


def _safe_relative(relative: str) -> Path:
    path = Path(relative)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ExportError(f"{relative}: not a path inside the folder")
    return path


def _json(data: dict) -> bytes:
    return files.json_text(data).encode()


def _size(input_size) -> str:
    return " x ".join(str(n) for n in input_size)
