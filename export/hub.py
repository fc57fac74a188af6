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

SAM 2 (a `--task segmenter` export: the image encoder and its mask decoder) has transformers.js' SAM 2 layout
instead (`sam2_layout`): `onnx/vision_encoder{suffix}.onnx` and `onnx/prompt_encoder_mask_decoder{suffix}.onnx`,
copies of the artifacts whose tensors carry transformers.js' names, the decoder wrapped in the prompt interface
transformers.js calls (docs/hub.md).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
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
NEEDS_FP32_SAM2 = ("the hub layout of SAM 2 needs the encoder's and the decoder's fp32 artifacts: transformers.js "
                   "loads onnx/vision_encoder.onnx and onnx/prompt_encoder_mask_decoder.onnx by default")


# transformers.js' Sam2Model is one model of two ONNX sessions, both loaded at from_pretrained: the image encoder
# and the prompt encoder with the mask decoder. Only a segmenter export (export/segmenter.py) has both.
SAM2_FAMILY = "segmenter"  # export/segmenter.py: TASK (not imported: segmenter imports pipeline, which imports this)
SAM2_NO_HUB = {
    "image-encoder": "the hub layout has no place for SAM 2's image encoder: transformers.js' Sam2Model loads two ONNX "
                     "files together, onnx/vision_encoder.onnx and onnx/prompt_encoder_mask_decoder.onnx; export the "
                     "encoder and its mask decoder as one with --task segmenter --layout hub (docs/hub.md)",
    "backbone": "the hub layout has no place for SAM 2's HieraDet backbone: no transformers.js model takes HieraDet's "
                "stage maps; run it with python -m runtime"}


def check(task: str, video: bool, precisions, sam2: bool = False) -> None:
    """Raise `ExportError` when an export of this kind cannot have the Hugging Face layout: call it before
    exporting, so that a refusal costs nothing. `sam2`: a SAM 2 model (whose backbone task is Hiera's name);
    task `segmenter`: SAM 2's encoder and decoder exported as one (`precisions`: the encoder's)."""
    if task == SAM2_FAMILY:
        if "fp32" not in precisions:
            raise ExportError(NEEDS_FP32_SAM2)
        return
    if task == "image-encoder" or sam2:
        raise ExportError(SAM2_NO_HUB["image-encoder" if task == "image-encoder" else "backbone"])
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
    summary = artifact.read_report(report)
    if summary.get("family") == SAM2_FAMILY:
        return sam2_layout(artifacts, Path(report), summary, checkpoint, speed)
    unknown = sorted(set(artifacts) - set(ONNX_FILES))
    if unknown:
        raise ExportError(f"the hub layout has no file name for precision {', '.join(unknown)}")
    if "fp32" not in artifacts:
        raise ExportError(NEEDS_FP32)
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
    artifacts = artifacts_of(summary, report.parent)  # the OpenVINO artifact has no place in the Hub's layout
    timed = artifacts
    if summary.get("family") == SAM2_FAMILY:
        timed = _sam2_parts(artifacts)[0]  # the encoder's files: the decoder takes prompts, not pixels
        check(SAM2_FAMILY, False, timed)
    else:
        first = _metadata(artifacts, summary, report)
        check(first["task"], len(first["input_size"]) == 3, artifacts)
    speed = measure(timed, a.bench_runs) if a.bench_runs else None
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


def artifacts_of(report: dict, folder: Path, leave_out=()) -> dict[str, Path]:
    """The artifacts a Hub folder can hold of an export's `report` (read, not trusted), as files of `folder`, by
    the report's keys: each precision with a Hub file name, and a segmenter family's decoder (`decoder-<precision>`);
    `leave_out`: keys not to take (the artifacts that failed)."""
    keys = set(ONNX_FILES)
    if report.get("family") == SAM2_FAMILY:
        keys |= {_decoder_key(precision) for precision in DECODER_HUB_PRECISIONS}
    return {key: Path(folder) / entry["file"] for key, entry in report["artifacts"].items()
            if key in keys and key not in leave_out and isinstance(entry, dict)
            and isinstance(entry.get("file"), str) and Path(entry["file"]).name == entry["file"]}


def _metadata(artifacts: Mapping[str, Path], report: dict, report_path: Path) -> dict:
    """The `hiera.*` metadata the artifacts share, after checking that the report describes exactly these files."""
    shared = None
    for key, path in artifacts.items():
        entry = report["artifacts"].get(key)
        if not isinstance(entry, dict) or entry.get("file") != path.name:
            raise ExportError(f"{report_path}: does not list {path.name} as the {key} artifact")
        precision = entry.get("precision", key)  # a family's decoder: its key is decoder-<precision>
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


# SAM 2: transformers.js' layout (@huggingface/transformers 4.3.1, the reference: models/sam2/modeling_sam2.js,
# models/session_config.js (MaskGeneration), models/sam/image_processing_sam.js, utils/dtypes.js).
# Sam2Model's sessions: `model` from onnx/vision_encoder{suffix}.onnx (pixel_values in, image_embeddings.0/.1/.2
# out: the high-resolution maps first) and `prompt_encoder_mask_decoder` from
# onnx/prompt_encoder_mask_decoder{suffix}.onnx, fed by input name: image_embeddings.0/.1/.2, input_points
# [B, point_batch, points, 2] float32 (pixels of the processor's resized frame), input_labels [B, point_batch,
# points] int64, input_boxes [B, boxes, 4] float32; when only boxes are given it feeds input_points [B, 1, 0, 2]
# and input_labels [B, boxes, 0], when only points input_boxes [B, 0, 4]. It reads iou_scores [B, point_batch, 3]
# and pred_masks [B, point_batch, 3, h, w] (transformers' multimask answer) and, if present, object_score_logits.
SAM2_FILES = {"encoder": "vision_encoder", "decoder": "prompt_encoder_mask_decoder"}
SAM2_ENCODER_OUTPUTS = {"high_res_feats_0": "image_embeddings.0", "high_res_feats_1": "image_embeddings.1",
                        "image_embeddings": "image_embeddings.2"}  # ours -> transformers.js'
DECODER_HUB_PRECISIONS = tuple(ONNX_FILES)  # the decoder's precisions a Hub file name exists for
_DECODER_INPUTS = {"image_embeddings", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels",
                   "mask_input", "has_mask_input"}  # hiera_model/sam2_decoder.py: INPUT_NAMES, OUTPUT_NAMES
_DECODER_OUTPUTS = {"masks", "iou_scores"}
_WRAP = "transformers_js/"  # the prefix of every tensor and node the decoder's wrapper adds
_INT64_MAX = np.iinfo(np.int64).max


def _decoder_key(precision: str) -> str:
    from .segmenter import decoder_key  # the family's key of its decoder's report entries

    return decoder_key(precision)


def sam2_file(part: str, precision: str) -> str:
    """The file transformers.js' Sam2Model loads for `part` ("encoder" or "decoder") at a precision: the Hiera
    folder's `model{suffix}.onnx` with SAM 2's session name in place of `model`."""
    return f"onnx/{SAM2_FILES[part]}{Path(ONNX_FILES[precision]).stem.removeprefix('model')}.onnx"


def _sam2_parts(artifacts: Mapping[str, Path]) -> tuple[dict[str, Path], dict[str, Path]]:
    """A family's artifacts by report key, split into the encoder's and the decoder's, each by precision."""
    decoder = {p: artifacts[_decoder_key(p)] for p in DECODER_HUB_PRECISIONS if _decoder_key(p) in artifacts}
    encoder = {key: path for key, path in artifacts.items() if key not in {_decoder_key(p) for p in decoder}}
    return encoder, decoder


def sam2_layout(artifacts: Mapping[str, Path], report: Path, summary: dict, checkpoint: Path | None = None,
                speed: Mapping[str, dict] | None = None) -> dict[str, Path | bytes]:
    """The Hub folder of a segmenter export (`layout` calls it for one) in transformers.js' SAM 2 layout.

    `artifacts` by the report's keys: the encoder's precisions and the decoder's `decoder-<precision>`, fp32 of
    both required. Each file is a copy of the artifact with transformers.js' names (`_sam2_encoder`,
    `_sam2_decoder`), our `hiera.*` metadata kept (the encoder's probe under the new output names, so
    `python -m runtime check` still proves it; the decoder copy's probe dropped: its calls are our interface's);
    config.json is the checkpoint's own Sam2Config where given."""
    encoder, decoder = _sam2_parts(artifacts)
    unknown = sorted(key for key in encoder if key not in ONNX_FILES)
    if unknown:
        raise ExportError(f"the hub layout has no file name for {', '.join(unknown)}")
    if "fp32" not in encoder or "fp32" not in decoder:
        raise ExportError(NEEDS_FP32_SAM2)
    meta = _metadata(encoder, summary, report)
    decoder_meta = _metadata({_decoder_key(p): path for p, path in decoder.items()}, summary, report)
    if meta.get("task") != "image-encoder" or decoder_meta.get("task") != "mask-decoder":
        raise ExportError(f"{report}: not SAM 2's image encoder and mask decoder (tasks {meta.get('task')!r}, "
                          f"{decoder_meta.get('task')!r})")
    out: dict[str, Path | bytes] = {}
    for part, group, copy in (("encoder", encoder, _sam2_encoder), ("decoder", decoder, _sam2_decoder)):
        for precision, path in group.items():
            if path.with_name(path.name + ".data").exists():  # SAM 2's largest encoder is 0.9 GB in fp32
                raise ExportError(f"{path}: its weights are in an external data file; the hub layout of SAM 2 "
                                  "writes graphs of under 2 GB only")
            out[sam2_file(part, precision)] = copy(path)
    out["config.json"] = _json(_sam2_config(meta, checkpoint, encoder))
    out["preprocessor_config.json"] = _json(sam2_preprocessor_config(meta["preprocessing"]))
    out[Path(report).name] = Path(report)
    out["README.md"] = sam2_model_card(meta, summary, out, speed).encode()
    return out


def sam2_preprocessor_config(preprocessing: Mapping) -> dict:
    """transformers' `Sam2ImageProcessorFast` settings for SAM 2's preprocessing (the whole image resized to the
    input size, aspect ratio not kept, rescale, normalize); transformers.js reads it as its Sam2ImageProcessor (a
    fixed height and width resize, `size` also the frame its post_process_masks upsamples into) and, through
    `processor_class`, `AutoProcessor` gives its Sam2Processor."""
    if preprocessing.get("keep_aspect_ratio", True):
        raise ExportError("the hub layout of SAM 2 takes SAM 2's preprocessing (resize to the input size, aspect "
                          "ratio not kept); this export's keeps the aspect ratio")
    height, width = (int(side) for side in preprocessing["crop_size"])
    return {
        "image_processor_type": "Sam2ImageProcessorFast",
        "processor_class": "Sam2Processor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"height": height, "width": width},
        "resample": PIL_RESAMPLE[preprocessing["resample"]],
        "do_rescale": True,
        "rescale_factor": float(preprocessing.get("rescale_factor", 1 / 255)),
        "do_normalize": True,
        "image_mean": [float(x) for x in preprocessing["mean"]],
        "image_std": [float(x) for x in preprocessing["std"]],
        "do_pad": False,
        "mask_size": {"height": height // 4, "width": width // 4},
    }


def _sam2_config(meta: dict, checkpoint: Path | None, encoder: Mapping[str, Path]) -> dict:
    """config.json: the checkpoint's own transformers `Sam2Config` where it is given, else the fields transformers.js
    reads (model_type, vision_config.num_feature_levels) and the input size; plus transformers.js' defaults: dtype
    per session (the decoder has no int8 file, so a plain `q8` would ask for one)."""
    own = _checkpoint_config(checkpoint)
    if own is not None and own.get("model_type") == "sam2":
        result = dict(own)
    else:
        size = int(meta["input_size"][-1])
        result = {"model_type": "sam2", "architectures": ["Sam2Model"],
                  "vision_config": {"model_type": "sam2_vision_model", "num_feature_levels": len(SAM2_ENCODER_OUTPUTS),
                                    "backbone_feature_sizes": [[size // 4] * 2, [size // 8] * 2, [size // 16] * 2]},
                  "prompt_encoder_config": {"model_type": "sam2_prompt_encoder", "image_size": size}}
    vision = result.get("vision_config")
    levels = vision.get("num_feature_levels", len(SAM2_ENCODER_OUTPUTS)) if isinstance(vision, dict) else None
    if levels != len(SAM2_ENCODER_OUTPUTS):
        raise ExportError(f"{checkpoint}/config.json: vision_config.num_feature_levels {levels!r}: SAM 2's encoder "
                          f"artifact gives {len(SAM2_ENCODER_OUTPUTS)} feature levels")
    result["vision_config"] = {**vision, "num_feature_levels": levels}
    wasm = "q8" if "int8" in encoder else "fp32"
    result["transformers.js_config"] = {
        "dtype": {SAM2_FILES["encoder"]: "fp32", SAM2_FILES["decoder"]: "fp32"},
        "device_config": {"wasm": {"dtype": {SAM2_FILES["encoder"]: wasm, SAM2_FILES["decoder"]: "fp32"}}}}
    return result


def _rename(graph: onnx.GraphProto, names: Mapping[str, str], where: Path) -> None:
    """Rename tensors everywhere `graph` (and any subgraph) mentions them; a new name already taken is refused."""
    taken = {name for node in graph.node for name in (*node.input, *node.output)}
    taken |= {v.name for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)}
    clash = sorted(set(names.values()) & (taken - set(names)))
    if clash:
        raise ExportError(f"{where}: already has a tensor named {clash[0]}, transformers.js' name for another")

    def visit(g: onnx.GraphProto) -> None:
        for node in g.node:
            node.input[:] = [names.get(name, name) for name in node.input]
            node.output[:] = [names.get(name, name) for name in node.output]
            for attribute in node.attribute:
                for sub in (attribute.g,) if attribute.HasField("g") else tuple(attribute.graphs):
                    visit(sub)
        for value in (*g.input, *g.output, *g.value_info):
            value.name = names.get(value.name, value.name)

    visit(graph)


def _load_graph(path: Path, inputs: set, outputs: set, what: str) -> onnx.ModelProto:
    """An artifact's graph, refused in one line unless its inputs and outputs are `what`'s."""
    try:
        model = onnx.load(path)
    except Exception as error:  # onnx and protobuf raise many types: all mean this
        raise ExportError(f"{path}: not a readable ONNX file ({type(error).__name__})") from None
    given_in, given_out = {i.name for i in model.graph.input}, {o.name for o in model.graph.output}
    if not inputs <= given_in or given_out != outputs:
        raise ExportError(f"{path}: inputs {sorted(given_in)} and outputs {sorted(given_out)} are not {what}'s")
    return model


def _sam2_encoder(path: Path) -> bytes:
    """The encoder artifact with its outputs under transformers.js' names (`SAM2_ENCODER_OUTPUTS`), in its order;
    the probe's recorded outputs renamed alike, so the runtime's probe still compares each with its own."""
    model = _load_graph(path, {"pixel_values"}, set(SAM2_ENCODER_OUTPUTS), "SAM 2's image encoder")
    _rename(model.graph, SAM2_ENCODER_OUTPUTS, path)
    ordered = sorted(model.graph.output, key=lambda output: output.name)
    model.graph.ClearField("output")
    model.graph.output.extend(ordered)
    for entry in model.metadata_props:
        if entry.key == "hiera.probe":
            probe = files.loads(entry.value)  # JSON: `_metadata` decoded it
            for part in (probe.get(name) for name in ("reference", "engine")) if isinstance(probe, dict) else ():
                if isinstance(part, dict) and isinstance(part.get("outputs"), dict):  # else the runtime says damaged
                    part["outputs"] = {SAM2_ENCODER_OUTPUTS.get(name, name): value
                                       for name, value in part["outputs"].items()}
            entry.value = json.dumps(probe, allow_nan=False)
    return model.SerializeToString()


def _sam2_decoder(path: Path) -> bytes:
    """The decoder artifact in the interface transformers.js' Sam2Model calls: our graph, whole and unchanged, with
    nodes before it that make its inputs of transformers.js' and nodes after it that take transformers.js' outputs.

    - image_embeddings.0/.1/.2 are our high_res_feats_0, high_res_feats_1, image_embeddings (renamed).
    - input_points [1, P, N, 2] and input_labels [1, P, N] (int64) are the prompts' points (our point_coords,
      point_labels: the same pixel frame and labels); input_boxes [1, B, 4] adds each box's corners after the
      points with labels 2 and 3, as transformers does: B = 1 box for every prompt, B = P boxes one each, or none
      (B = 0); with boxes alone transformers.js gives points [1, 1, 0, 2], which are broadcast to the B prompts.
      One image per call (axis 0 of 1), as our decoder takes it.
    - No mask prompt (transformers.js has none): mask_input zeros, has_mask_input 0.
    - pred_masks [1, P, 3, h, w] and iou_scores [1, P, 3]: our masks and iou_scores 1..3, the multimask answer,
      which is what transformers' Sam2Model gives by default. No object_score_logits (our decoder has no such
      head; transformers.js only passes it on)."""
    model = _load_graph(path, _DECODER_INPUTS, _DECODER_OUTPUTS, "SAM 2's mask decoder")
    graph = model.graph
    declared = {value.name: value for value in graph.input}
    side = declared["mask_input"].type.tensor_type.shape.dim[-1].dim_value  # the low-resolution masks' side
    answers = next(o for o in graph.output if o.name == "masks").type.tensor_type.shape.dim[1].dim_value
    if not side or answers != 4:
        raise ExportError(f"{path}: its mask_input side ({side or 'dynamic'}) and masks per prompt ({answers}) are "
                          "not SAM 2's decoder's (static, 4)")
    _rename(graph, {**SAM2_ENCODER_OUTPUTS, "masks": f"{_WRAP}masks", "iou_scores": f"{_WRAP}iou_scores"}, path)
    embeddings = [value for value in graph.input if value.name in SAM2_ENCODER_OUTPUTS.values()]
    graph.ClearField("input")
    float_, int64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    graph.input.extend([*sorted(embeddings, key=lambda value: value.name),
                        onnx.helper.make_tensor_value_info("input_points", float_, [1, "point_batch", "points", 2]),
                        onnx.helper.make_tensor_value_info("input_labels", int64, [1, "label_batch", "points"]),
                        onnx.helper.make_tensor_value_info("input_boxes", float_, [1, "boxes", 4])])
    constants = {"zero": [0], "one": [1], "two": [2], "axis0": [0], "axis1": [1], "end": [_INT64_MAX],
                 "flat_corners": [-1, 2, 2], "side": [side]}
    for name, values in constants.items():
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(values, np.int64), f"{_WRAP}{name}"))
    graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((1, 4), np.float32), f"{_WRAP}no_box"))
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([[2.0, 3.0]], np.float32),
                                                          f"{_WRAP}corner_labels"))
    zero_float = onnx.helper.make_tensor("value", float_, [1], [0.0])

    def op(kind, inputs, output, **attributes):
        t = lambda name: name if name in ("input_points", "input_labels", "input_boxes") or name in _DECODER_INPUTS \
            else f"{_WRAP}{name}"  # noqa: E731
        return onnx.helper.make_node(kind, [t(name) for name in inputs], [t(output)], name=f"{_WRAP}{output}",
                                     **attributes)

    before = [
        op("Squeeze", ["input_points", "axis0"], "points"),  # [P, N, 2]: one image
        op("Squeeze", ["input_labels", "axis0"], "labels_int"),
        op("Cast", ["labels_int"], "labels", to=float_),  # our decoder takes its labels as float32 values
        op("Squeeze", ["input_boxes", "axis0"], "boxes"),  # [B, 4]
        op("Shape", ["points"], "points_shape"),
        op("Slice", ["points_shape", "zero", "one"], "point_prompts"),
        op("Slice", ["points_shape", "one", "two"], "point_count"),
        op("Shape", ["labels"], "labels_shape"),
        op("Slice", ["labels_shape", "zero", "one"], "label_prompts"),
        op("Shape", ["boxes"], "boxes_shape"),
        op("Slice", ["boxes_shape", "zero", "one"], "box_count"),
        op("Max", ["point_prompts", "label_prompts", "box_count"], "prompts"),  # P: 1 and 0 broadcast
        op("Concat", ["prompts", "point_count", "two"], "coords_shape", axis=0),
        op("Expand", ["points", "coords_shape"], "coords"),
        op("Concat", ["prompts", "point_count"], "labels_shape_out", axis=0),
        op("Expand", ["labels", "labels_shape_out"], "point_labels_only"),
        # a box's corners for each prompt, or none: the boxes with a zero row below (so there is a first row to
        # broadcast when B = 0), broadcast to [P, 2, 2], then cut to the first 2 x min(B, 1) corners
        op("Concat", ["boxes", "no_box"], "boxes_padded", axis=0),
        op("Max", ["box_count", "one"], "box_rows"),
        op("Slice", ["boxes_padded", "zero", "box_rows", "axis0"], "box_rows_taken"),
        op("Reshape", ["box_rows_taken", "flat_corners"], "corners_each"),
        op("Concat", ["prompts", "two", "two"], "corners_shape", axis=0),
        op("Expand", ["corners_each", "corners_shape"], "corners_all"),
        op("Min", ["box_count", "one"], "has_box"),
        op("Mul", ["has_box", "two"], "corner_count"),
        op("Slice", ["corners_all", "zero", "corner_count", "axis1"], "corners"),
        op("Concat", ["prompts", "two"], "corner_labels_shape", axis=0),
        op("Expand", ["corner_labels", "corner_labels_shape"], "corner_labels_all"),
        op("Slice", ["corner_labels_all", "zero", "corner_count", "axis1"], "box_labels"),
        op("Concat", ["coords", "corners"], "point_coords", axis=1),
        op("Concat", ["point_labels_only", "box_labels"], "point_labels", axis=1),
        op("Concat", ["prompts", "one", "side", "side"], "mask_shape", axis=0),
        op("ConstantOfShape", ["mask_shape"], "mask_input", value=zero_float),
        op("ConstantOfShape", ["prompts"], "has_mask_input", value=zero_float),
    ]
    after = [
        op("Slice", ["masks", "one", "end", "axis1"], "multimask"),
        onnx.helper.make_node("Unsqueeze", [f"{_WRAP}multimask", f"{_WRAP}axis0"], ["pred_masks"],
                              name=f"{_WRAP}pred_masks"),
        op("Slice", ["iou_scores", "one", "end", "axis1"], "multimask_iou"),
        onnx.helper.make_node("Unsqueeze", [f"{_WRAP}multimask_iou", f"{_WRAP}axis0"], ["iou_scores"],
                              name=f"{_WRAP}iou_scores_out"),
    ]
    nodes = [*before, *graph.node, *after]
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.ClearField("output")
    graph.output.extend([
        onnx.helper.make_tensor_value_info("pred_masks", float_, [1, "point_batch", answers - 1, side, side]),
        onnx.helper.make_tensor_value_info("iou_scores", float_, [1, "point_batch", answers - 1])])
    # The probe's calls are in our decoder's interface, which this copy no longer has: it goes, not the rest of
    # our metadata (runtime check then says the copy has no probe; the artifact it was made from proves itself)
    kept = [entry for entry in model.metadata_props if entry.key != "hiera.probe"]
    model.ClearField("metadata_props")
    model.metadata_props.extend(kept)
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"{path}: its transformers.js interface is not a valid graph ({str(error)[:200]})") from None
    return model.SerializeToString()


def sam2_model_card(meta: dict, report: dict, out: Mapping[str, Path | bytes], speed: Mapping[str, dict] | None) -> str:
    """README.md of a SAM 2 folder: what was exported, the weights, each file with its parity figures and the
    artifact it was made from, speed, and how transformers.js runs it."""
    weights = report.get("weights") or {}
    source = str(weights.get("source", "unknown"))
    size = _size(meta["input_size"])
    lines = ["---", "library_name: transformers.js", "pipeline_tag: mask-generation", "tags:", "- sam2", "- onnx",
             "- hiera-deploy", "---", "", f"# SAM 2 {meta['variant']} (image encoder and mask decoder), ONNX", "",
             f"SAM 2's image encoder and its prompt encoder and mask decoder, exported with hiera-deploy (`python -m "
             f"export --task segmenter`): input {size}, ONNX opset {meta['opset']}, in transformers.js' SAM 2 layout.",
             ""]
    if source.startswith("random:"):
        lines += ["**Random weights** (`" + source + "`): the graphs and their speed are real, the masks mean nothing.",
                  ""]
    lines += ["## Weights", "", f"- source: `{source}`", f"- sha256: `{weights.get('sha256') or '-'}`",
              f"- verified against hiera-deploy's models.lock: {'yes' if weights.get('verified') else 'no'}", "",
              "## Files", "", "Each file is a copy of the export's artifact (named in the table, with its sha256 in "
              "the report) whose inputs and outputs carry transformers.js' names: the encoder's outputs renamed "
              "(`image_embeddings.0`, `.1`, `.2` are our `high_res_feats_0`, `high_res_feats_1`, "
              "`image_embeddings`), the decoder wrapped in the prompt interface transformers.js calls (`input_points`, "
              "`input_labels`, `input_boxes` in; `pred_masks`, `iou_scores`: SAM 2's three masks out). Our `hiera.*` "
              "metadata stays in them. Parity: against PyTorch fp32 with the same weights, as the export measured it "
              "(masks: mask IoU through the fp32 decoder).", "",
              "| file | made from | precision | MB | parity | min mask IoU |", "| --- | --- | --- | --- | --- | --- |"]
    for part, key in (("encoder", lambda p: p), ("decoder", _decoder_key)):
        for precision in ONNX_FILES:
            target, entry = sam2_file(part, precision), report["artifacts"].get(key(precision))
            if target not in out or entry is None:
                continue
            name, figures = next(iter((entry.get("parity") or {"-": {}}).items()))
            parity = ", ".join(f"{figure} {figures[figure]:.2e}" if figure == "max_abs" else
                               f"{figure} {figures[figure]:.6f}" for figure in ("max_abs", "cosine")
                               if isinstance(figures.get(figure), (int, float)))
            iou = (entry.get("mask_iou") or figures).get("min_mask_iou")
            lines.append(f"| `{target}` | `{entry['file']}` | {precision} | {len(out[target]) / 1e6:.1f} | "
                         f"{name}: {parity or 'not checked'} | {f'{iou:.4f}' if isinstance(iou, float) else '-'} |")
    lines += ["", f"The export's own report: `{next(name for name in out if name.endswith('.report.json'))}`.", "",
              "## Speed", ""]
    if speed:
        first = next(iter(speed.values()))
        lines += [f"The image encoder, onnxruntime CPU, batch {first['batch']}, {first.get('threads', '?')} threads, "
                  f"on {cpu_name()} ({' '.join(cpu_isa()) or platform.machine()}; the machine that wrote this folder):",
                  "", "| file | median ms | p90 ms |", "| --- | --- | --- |"]
        lines += [f"| `{sam2_file('encoder', p)}` | {s['median_ms']:.1f} | {s['p90_ms']:.1f} |"
                  for p, s in speed.items()]
    else:
        lines.append("Not measured here.")
    int8 = sam2_file("encoder", "int8") in out
    lines += ["", "## Use", "", "transformers.js (Node: onnxruntime-node; browsers: WASM or WebGPU):", "",
              "```js", "import { env, AutoProcessor, RawImage, Sam2Model } from '@huggingface/transformers';",
              *_JS_SETUP[2:], "const model = await Sam2Model.from_pretrained('FOLDER', { dtype: 'fp32' });",
              "const processor = await AutoProcessor.from_pretrained('FOLDER');",
              "const image = await RawImage.read('photo.jpg');",
              "const inputs = await processor(image, { input_points: [[[200, 150]]], input_labels: [[1]] });",
              "const { pred_masks, iou_scores } = await model(inputs);  // 3 masks per prompt",
              "const masks = await processor.post_process_masks(pred_masks, inputs.original_sizes, "
              "inputs.reshaped_input_sizes);", "```", "",
              "Boxes: `{ input_boxes: [[[x0, y0, x1, y1]]] }` (with points: one box for all of them). The decoder has "
              "fp32 and fp16 files only: give a per-file dtype for the others, e.g. `dtype: { vision_encoder: "
              + ("'q8'" if int8 else "'fp16'") + ", prompt_encoder_mask_decoder: 'fp32' }`; this config.json makes "
              "fp32 the default" + (", and the int8 encoder on WASM." if int8 else "."), "",
              "One image per call (the decoder takes one image's embeddings); no mask prompt. transformers.js resizes "
              "the image itself (sharp in Node, a canvas in browsers), which differs a little from Pillow's resize "
              "(and so from transformers' and hiera-deploy's): give it `pixel_values` made by Python where the last "
              "digit matters.", "",
              "hiera-deploy's runtime runs the export's own artifacts (numpy, Pillow, onnxruntime; no torch): "
              "`python -m runtime segment photo.jpg --model ENCODER.onnx --decoder DECODER.onnx --point 200,150`.", ""]
    return "\n".join(lines)
