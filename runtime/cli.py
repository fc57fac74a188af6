"""python -m runtime (the console script hiera-runtime): predict IMAGE... --model FILE | embed IMAGE... --model FILE
--out FILE | reconstruct IMAGE --model FILE | segment IMAGE... --model FILE --decoder FILE | bench --model FILE |
info --model FILE | check ARTIFACT... | sidecar ENGINE --onnx FILE | triton MODEL... --repo DIR.

A thin layer over the Python API: it parses arguments, expands directories, keeps going past bad
images, shows progress on a terminal, and prints. Exit status: 0 when every image was done, 1 when some
could not be (each says why in one line), 2 for bad arguments or a model that cannot be loaded.

Every line printed as text has its control characters escaped (a label or a file name cannot move the
cursor, clear the screen or forge a line); `--json` output is JSON, which escapes them itself, and never
holds NaN.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from . import files, probe
from .artifact import MAX_BATCH, decoded, report_verdict
from .bench import MAX_RUNS, summarize, time_calls
from .device import cpu_isa, cpu_name
from .embed import SUFFIXES as EMBED_SUFFIXES
from .embed import embed as write_embedding
from .errors import HieraRuntimeError, MissingMetadata
from .model import MAX_TOP_K, Classifier, FeatureExtractor, Reconstructor, load
from .openvino import PRECISIONS
from .preprocess import MAX_MEGAPIXELS, MAX_PIXELS, Preprocessing, find_images
from .reconstruct import side_by_side
from .session import PROVIDERS
from .segment import MAX_POINTS, MAX_PROMPTS
from .segment import command as segment
from .shell import Number, Numbers, Parser, Whole, run_command, say
from .tensorrt import sidecar_for_trtexec
from .triton import add_parser as add_triton_parser
from .triton import command as triton

# Upper bounds of the numeric options, as --help documents them.
MAX_WARMUP = 10_000
MAX_THREADS = 1024
MAX_ACTORS = 1024
# ImageNet preprocessing resizes to crop / 0.875, which the megapixel guard holds to sqrt(MAX_PIXELS) a side
MAX_CROP = int(math.isqrt(MAX_PIXELS) * 0.875)


def crop_size(text: str) -> Preprocessing:
    """`224` or `224x320` (height x width): ImageNet preprocessing to that crop."""
    try:
        sizes = [int(part) for part in text.lower().split("x")]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or not all(1 <= size <= MAX_CROP for size in sizes):
        raise argparse.ArgumentTypeError(f"must be N or HxW, each from 1 to {MAX_CROP}, not {text!r}")
    return Preprocessing.for_input_size(sizes * 2 if len(sizes) == 1 else sizes)


def program() -> str:
    return "hiera-runtime" if Path(sys.argv[0]).name == "hiera-runtime" else "python -m runtime"


def parse(argv) -> argparse.Namespace:
    p = Parser(prog=program(), description="Run exported Hiera models (ONNX or TensorRT) on images.")
    commands = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    def model_options(command):
        command.add_argument("--model", required=True, type=Path, help="an exported .onnx, an OpenVINO IR (.xml), a "
                             "LiteRT .tflite, an ExecuTorch .pte, or a TensorRT engine (.engine/.plan) with its "
                             "sidecar .json")
        command.add_argument("--provider", default="auto", choices=["auto", *PROVIDERS, "openvino", "litert",
                                                                    "executorch"],
                             help="onnxruntime execution provider, OpenVINO, LiteRT for .tflite or ExecuTorch for .pte "
                                  "(default: the fastest available)")
        command.add_argument("--inference-precision", choices=PRECISIONS, help="OpenVINO: f32 (default, as the "
                             "artifact computes) or bf16 (faster, on CPUs with native bf16)")
        command.add_argument("--threads", type=Whole(1, MAX_THREADS), help="CPU threads (default: the engine's "
                             f"choice; at most {MAX_THREADS})")
        command.add_argument("--cache-dir", type=Path, help="where the TensorRT provider caches its engines and "
                             "timing (default ~/.cache/hiera-deploy/tensorrt), and OpenVINO its compiled models "
                             "(default: none)")
        command.add_argument("--crop-size", type=crop_size, metavar="N|HxW", help="run an ONNX file without Hiera "
                             "metadata, with ImageNet preprocessing to this size (shortest edge to the crop's / 0.875, "
                             f"bicubic, center crop), each side 1 to {MAX_CROP}")
        command.add_argument("--no-check", dest="check", action="store_false", help="do not run the artifact's "
                             "probe on this device first (it runs once per artifact, engine and device otherwise)")
        command.add_argument("--allow-failed", action="store_true", help="run an artifact whose export report "
                             "says it failed (said on every run)")

    def image_options(command):
        command.add_argument("--max-megapixels", type=Number(0, MAX_MEGAPIXELS), default=MAX_PIXELS / 1e6,
                             help=f"refuse larger images (every frame of a clip), a decompression-bomb guard "
                                  f"(default {MAX_PIXELS / 1e6:g}, at most {MAX_MEGAPIXELS:g})")

    def progress_option(command):
        command.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                             help="show progress on stderr (default: when it is a terminal)")

    predict = commands.add_parser("predict", help="classify images (or clips, with a video model)")
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files or directories "
                         "(searched recursively); for a video model, clips: multi-frame files (animated GIF, WebP "
                         "or PNG, multi-page TIFF) or directories of frames, sampled as the model was evaluated")
    model_options(predict)
    predict.add_argument("--top-k", type=Whole(1, MAX_TOP_K), default=5,
                         help=f"classes per image (default 5, at most {MAX_TOP_K})")
    predict.add_argument("--batch-size", type=Whole(1, MAX_BATCH), default=None,
                         help=f"images per call for a dynamic-batch model (a static one takes its own batch size; "
                              f"default 8, at most {MAX_BATCH})")
    predict.add_argument("--json", action="store_true", help="one JSON object per image and line")
    image_options(predict)
    progress_option(predict)

    features = commands.add_parser("embed", help="features of many images (a folder, a dataset) to one .npy or "
                                   ".safetensors file, resumable")
    features.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files or directories "
                          "(searched recursively); for a video model, clips")
    model_options(features)
    features.add_argument("--out", type=Path, required=True, help="the .npy (one output, its index in OUT.json) or "
                          ".safetensors (every output chosen, the index inside) to write; if it exists, or a run "
                          "writing it was stopped, the images already done are not run again")
    features.add_argument("--outputs", nargs="+", metavar="NAME", help="the model outputs to write (default: "
                          "pooler_output of a features model, the deepest stage map of a backbone)")
    features.add_argument("--batch-size", type=Whole(1, MAX_BATCH), default=None,
                          help=f"images per call for a dynamic-batch model (default 8, at most {MAX_BATCH})")
    features.add_argument("--ray", nargs="?", const="", metavar="ADDRESS", help="run on a Ray cluster (the one at "
                          "ADDRESS, HOST:PORT or auto; a local one started for the run without): --out is then a "
                          "folder of Parquet files and their index (docs/ray.md); put it after the images")
    features.add_argument("--actors", type=Whole(1, MAX_ACTORS), help="with --ray: model sessions in the cluster "
                          f"(default one per two CPUs, at most {MAX_ACTORS})")
    image_options(features)
    progress_option(features)

    rebuild = commands.add_parser("reconstruct", help="MAE: hide most of an image and let the model fill it in; "
                                  "writes the original, the masked input and the reconstruction side by side")
    rebuild.add_argument("image", type=Path, help="an image file")
    model_options(rebuild)
    rebuild.add_argument("--out", type=Path, help="the PNG to write (default: IMAGE's name + .mae.png, here)")
    rebuild.add_argument("--seed", type=Whole(0, 2**63 - 1), default=0, help="which mask units to hide (default 0, "
                         f"at most {2**63 - 1})")
    image_options(rebuild)

    cut = commands.add_parser("segment", help="SAM 2: masks for points and boxes on images (the encoder once per "
                              "image, the decoder once per prompt group); PNG masks, COCO RLE with --json")
    cut.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    model_options(cut)
    cut.add_argument("--decoder", type=Path, required=True, help="the mask decoder exported from the same "
                     "checkpoint as --model (python -m export --task mask-decoder)")
    cut.add_argument("--point", type=Numbers((2, 3), "X,Y or X,Y,LABEL"), action="append", default=[],
                     metavar="X,Y[,LABEL]", help="a point in pixels of the image; LABEL 1 (default) inside the object, "
                     f"0 outside; all points make one prompt (at most {MAX_POINTS} points, a box counts as 2)")
    cut.add_argument("--box", type=Numbers((4,), "X0,Y0,X1,Y1"), action="append", default=[],
                     metavar="X0,Y0,X1,Y1", help=f"a box, top-left corner first; one prompt per box, each with the "
                     f"points (at most {MAX_PROMPTS})")
    cut.add_argument("--multimask", action="store_true", help="three masks per prompt instead of SAM 2's one")
    cut.add_argument("--out", type=Path, default=Path("segments"), help="the folder to write the masks into, "
                     "replaced whole (default segments/): IMAGE.promptP.maskM.png, and IMAGE.overlay.png")
    cut.add_argument("--overlay", action="store_true", help="also write each image with its masks drawn over it")
    cut.add_argument("--json", action="store_true", help="one JSON object per image and line: each mask's score "
                     "(predicted IoU), area, file and COCO run-length encoding")
    image_options(cut)

    bench = commands.add_parser("bench", help="latency and throughput on random input")
    model_options(bench)
    bench.add_argument("--batch", type=Whole(1, MAX_BATCH), default=1,
                       help=f"images per call (default 1, at most {MAX_BATCH})")
    bench.add_argument("--runs", type=Whole(1, MAX_RUNS), default=20,
                       help=f"timed calls (default 20, at most {MAX_RUNS})")
    bench.add_argument("--warmup", type=Whole(0, MAX_WARMUP), default=3,
                       help=f"untimed calls first (default 3, at most {MAX_WARMUP})")
    bench.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    progress_option(bench)

    info = commands.add_parser("info", help="what an artifact says about itself, and its export's verdict")
    model_options(info)
    info.add_argument("--json", action="store_true", help="as one JSON object")

    check = commands.add_parser("check", help="run each artifact's probe on this device: one line each, the "
                                "figures against their bounds (exit 1 if one fails)")
    check.add_argument("artifacts", nargs="+", type=Path, metavar="ARTIFACT", help="exported .onnx files (or "
                       "engines with their sidecars, .tflite, .pte)")
    check.add_argument("--provider", default="auto", choices=["auto", *PROVIDERS, "openvino", "litert", "executorch"],
                       help="the engine to check them on (default: the one `predict` would take)")
    check.add_argument("--inference-precision", choices=PRECISIONS, help="OpenVINO: f32 (default) or bf16")
    check.add_argument("--threads", type=Whole(1, MAX_THREADS), help=f"CPU threads (at most {MAX_THREADS})")
    check.add_argument("--json", action="store_true", help="one JSON object per artifact and line")

    sidecar = commands.add_parser("sidecar", help="write the sidecar of an engine trtexec built here from our ONNX")
    sidecar.add_argument("engine", type=Path, help="the engine trtexec wrote (--saveEngine)")
    sidecar.add_argument("--onnx", type=Path, required=True, help="the exported .onnx it was built from")
    sidecar.add_argument("--hardware-compatible", action="store_true", help="built with "
                         "--hardwareCompatibilityLevel=ampere+")
    sidecar.add_argument("--version-compatible", action="store_true", help="built with --versionCompatible")
    add_triton_parser(commands)
    return p.parse_args(argv)


def load_from_args(args, model_class=None):
    """`model_class` (Classifier, ...) loaded from the arguments, or whichever class the artifact's task needs."""
    preprocessing = args.crop_size  # a Preprocessing, or None
    max_pixels = int(args.max_megapixels * 1e6) if "max_megapixels" in args else MAX_PIXELS
    try:
        model = (model_class.load if model_class else load)(
            args.model, provider=args.provider, threads=args.threads, cache_dir=args.cache_dir,
            preprocessing=preprocessing, max_pixels=max_pixels, inference_precision=args.inference_precision,
            check=args.check and args.command != "info", allow_failed=args.allow_failed or args.command == "info")
        for warning in model.warnings:
            say(f"warning: {warning}", sys.stderr)
        return model
    except MissingMetadata as error:
        raise HieraRuntimeError(f"{args.model}: no Hiera metadata (hiera.* metadata_props): not exported by "
                                "python -m export; run it anyway with --crop-size N|HxW (ImageNet preprocessing)") \
            from error


class Progress:
    """`done/total images` on stderr, as work goes: on a terminal one line redrawn in place (at most ten
    times a second), elsewhere (--progress) a line every few seconds and at the end."""

    def __init__(self, total: int, enabled: bool | None, unit: str = "images"):
        self.stream = sys.stderr
        terminal = self.stream.isatty()
        self.enabled = terminal if enabled is None else enabled
        self.in_place = self.enabled and terminal
        self.total, self.unit, self.done, self.failed = total, unit, 0, 0
        self.started, self.shown_at, self.shown = time.monotonic(), -math.inf, False

    def step(self, failed: bool = False) -> None:
        self.done, self.failed = self.done + 1, self.failed + failed
        now = time.monotonic()
        if self.enabled and (self.done == self.total or now - self.shown_at >= (0.1 if self.in_place else 5)):
            self.shown_at = now
            text = f"{self.done}/{self.total} {self.unit}" + (f", {self.failed} failed" if self.failed else "")
            if now - self.started >= 1:
                text += f", {self.done / (now - self.started):.1f}/s"
            self.stream.write(f"\r{text}\x1b[K" if self.in_place else text + "\n")
            self.stream.flush()
            self.shown = self.in_place

    def clear(self) -> None:
        """Before another line goes to the terminal."""
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.shown = False

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.shown = False


def expand(arguments: list[Path], clips: bool) -> list[tuple[Path, str | None]]:
    """The images the arguments name, in order, each with None, or with why the argument gives none (an
    empty directory). Directories are searched (skipping what is not a regular file); for a video model
    each argument is one clip."""
    items = []
    for argument in arguments:
        if clips:
            items.append((argument, None))
            continue
        try:
            items += [(path, None) for path in find_images(argument)]
        except HieraRuntimeError as error:
            items.append((argument, str(error)))
    return items


def predict(args) -> int:
    model = load_from_args(args, Classifier)
    items = expand(args.images, clips=bool(model.info.preprocessing.frames))
    outcomes = model.outcomes([path for path, error in items if error is None], args.batch_size)
    progress = Progress(len(items), args.progress)
    failed = 0
    try:
        for path, error in items:
            outputs = None
            if error is None:
                outputs, error = next(outcomes)
            progress.clear()
            if args.json:
                entry = {"image": str(path), "error": error} if error else \
                    {"image": str(path), "top_k": [p.to_dict() for p in model.prediction(outputs, args.top_k)]}
                say(json.dumps(entry, allow_nan=False))
            elif error:
                say(f"error: {error}", sys.stderr)
            else:
                say(path)
                for p in model.prediction(outputs, args.top_k):
                    say(f"  {p.score:.4f}  {p.label if p.label is not None else '-'}  (class {p.index})")
            failed += error is not None
            progress.step(failed=error is not None)
    finally:  # the progress line ends before any error that stops the run
        progress.close()
    return 1 if failed else 0


def embed(args) -> int:
    if args.ray is None and args.out.suffix not in EMBED_SUFFIXES:
        raise HieraRuntimeError(f"--out {args.out}: name it .npy or .safetensors")
    model = load_from_args(args)
    if not isinstance(model, FeatureExtractor):
        raise HieraRuntimeError(f"{args.model}: a {model.info.task} model; embed needs a features or backbone model "
                                "(python -m export --task features)")
    items = expand(args.images, clips=bool(model.info.preprocessing.frames))
    for error in (error for _, error in items if error):
        say(f"error: {error}", sys.stderr)
    images = [path for path, error in items if error is None]
    progress = Progress(len(set(map(str, images))), args.progress)  # each image once

    def on_image(path, error):
        if error:
            progress.clear()
            say(f"error: {error}", sys.stderr)
        progress.step(failed=error is not None)

    try:
        if args.ray is None:
            result = write_embedding(model, images, args.out, outputs=args.outputs, batch_size=args.batch_size,
                                     on_image=on_image)
        else:  # imported here: Ray only when asked for
            from .ray import embed as embed_on_ray

            load_options = {"provider": args.provider, "cache_dir": args.cache_dir, "preprocessing": args.crop_size,
                            "max_pixels": model.max_pixels, "inference_precision": args.inference_precision,
                            "check": args.check, "allow_failed": args.allow_failed,
                            **({"threads": args.threads} if args.threads else {})}
            result = embed_on_ray(model, images, args.out, address=args.ray or None, actors=args.actors,
                                  outputs=args.outputs, batch_size=args.batch_size, load_options=load_options,
                                  on_image=on_image)
    finally:
        progress.close()
    where = f"; their errors in {result.index}" if result.index else ""
    reused = f", {result.reused} of them from an earlier run" if result.reused else ""
    failed = f", {len(result.failed)} failed{where}" if result.failed else ""
    shapes = ", ".join(f"{name} {list(array.shape)}" for name, array in result.arrays.items())
    say(f"wrote {result.out}: {len(result.images)} images{reused}{failed} ({shapes})")
    return 1 if result.failed or any(error for _, error in items) else 0


def reconstruct(args) -> int:
    model = load_from_args(args, Reconstructor)
    out = args.out or Path(args.image.stem + ".mae.png")
    if out.suffix.lower() != ".png":
        raise HieraRuntimeError(f"--out {out}: the reconstruction is written as PNG; name it .png")
    panels = model.reconstruct(args.image, seed=args.seed)[0]
    picture = side_by_side([panels["original"], panels["masked"], panels["reconstruction"]])
    with files.atomic_path(out) as temporary:  # never a half-written PNG under the name asked for
        picture.save(temporary, format="PNG")
    mae = model.info.mae
    visible = int(mae["mask_units"] * (1 - mae["mask_ratio"]))
    say(f"wrote {out}: original | masked ({visible} of {mae['mask_units']} mask units visible) | reconstruction")
    return 0


def bench(args) -> int:
    model = load_from_args(args)
    try:  # refused before the batch is allocated
        model.info.preprocessing.check_batch(args.batch)
    except ValueError as error:
        raise HieraRuntimeError(f"--batch {error}") from None
    shape = (args.batch, 3, *model.info.input_size)
    pixel_values = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    # A classifier is timed with its softmax and top-k, a feature extractor with its outputs' copy: the
    # whole call a user makes, less the image decoding, which is timed on its own below.
    if isinstance(model, Classifier):
        call = lambda: model.predict_arrays(pixel_values, batch_size=args.batch)  # noqa: E731
    elif isinstance(model, Reconstructor):
        noise = model.noise(args.batch)
        call = lambda: model.run(pixel_values, args.batch, noise=noise)  # noqa: E731
    else:
        call = lambda: model.run(pixel_values, args.batch)  # noqa: E731
    progress = Progress(2 * (args.warmup + args.runs), args.progress, unit="calls")
    figures = summarize(time_calls(call, args.runs, args.warmup, on_call=progress.step), args.batch)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    preprocessing = summarize(time_calls(lambda: model.info.preprocessing(photo), args.runs, args.warmup,
                                         on_call=progress.step), 1)
    progress.close()
    result = {"model": str(args.model), "providers": model.providers, "artifact_batch": model.info.batch or "dynamic",
              "inference": figures, "preprocess_640x480": preprocessing}
    if args.json:
        say(json.dumps(result, allow_nan=False))
        return 0
    say(f"{args.model}  ({', '.join(model.providers)}; artifact batch {result['artifact_batch']})")
    say(f"{'':22s}{'median ms':>10s}{'p90 ms':>10s}{'images/s':>10s}")
    for name, row in ((f"inference, batch {args.batch}", figures), ("preprocess, 640x480", preprocessing)):
        say(f"{name:22s}{row['median_ms']:10.2f}{row['p90_ms']:10.2f}{row['images_per_s']:10.1f}")
    return 0


def dims(shape) -> str:
    """[batch, 3, 224, 224]: a tensor's shape, a symbolic or unknown axis by name."""
    return "[" + ", ".join(str(d) if isinstance(d, int) else "batch" if i == 0 else str(d or "?")
                           for i, d in enumerate(shape or [])) + "]"


def info(args) -> int:
    model = load_from_args(args)
    session, i = model.session, model.info
    extra = decoded(session.metadata, session.metadata_path)  # valid: the model loaded
    details = {"file": str(args.model), "api": type(model).__name__, "providers": model.providers,
               "input": session.input_shape, "outputs": session.output_names,
               **{key: value for key, value in extra.items() if key != "labels"},
               "labels": len(i.labels) if i.labels else None, "verdict": _verdict(model)}
    details.pop("probe", None)  # its arrays: `check` runs it
    if args.json:
        say(json.dumps(details, allow_nan=False, default=str))
        return 0
    p = i.preprocessing
    clips = f"clips of {p.frames} frames (every {p.frame_stride}th), " if p.frames else ""
    resize = (f"shortest edge to {p.resize_shortest_edge} ({p.resample}), center crop {p.crop_size[0]} x "
              f"{p.crop_size[1]}" if p.keep_aspect_ratio else
              f"resized to {p.crop_size[0]} x {p.crop_size[1]} ({p.resample}), aspect ratio not kept")
    rows = [("model", f"{i.variant or 'unnamed'}, {i.task} ({type(model).__name__})"
                      + (f", {i.precision}" if i.precision else "")),
            ("input", f"{session.input_name} {dims(session.input_shape)}, "
                      + (f"static batch {i.batch}" if i.batch else "dynamic batch")),
            ("outputs", ", ".join(f"{name} {dims(session.output_shapes.get(name))}"
                                  for name in session.output_names)),
            ("preprocessing", f"{clips}{resize}, mean {' '.join(f'{v:g}' for v in p.mean)}, "
                              f"std {' '.join(f'{v:g}' for v in p.std)}, RGB"),
            ("labels", f"{len(i.labels)}: {', '.join(i.labels[:5])}{', ...' if len(i.labels) > 5 else ''}"
             if i.labels else "none")]
    if i.weights:
        digest = i.weights.get("sha256")
        rows.append(("weights", f"{i.weights.get('source')}" + (f", sha256 {digest[:16]}..." if digest else "")
                     + (", verified" if i.weights.get("verified") else ", not verified")))
    if i.mae:
        rows.append(("mae", ", ".join(f"{key} {value}" for key, value in i.mae.items())))
    if isinstance(extra.get("producer"), dict):
        rows.append(("produced by", ", ".join(f"{name} {version}" for name, version in extra["producer"].items())))
    if "opset" in extra:
        rows.append(("opset", str(extra["opset"])))
    rows.append(("runs on", ", ".join(model.providers)))
    rows.append(("verdict", _verdict(model)))
    say(args.model)
    for name, text in rows:
        say(f"  {name:14s}{text}")
    return 0


def _verdict(model) -> str:
    """The export report's verdict on the artifact, and whether it carries a probe (which `check` runs)."""
    verdict = report_verdict(model.session.path)
    said = "no export report beside it" if verdict is None else \
        "export report: not validated" if verdict.passed is None else \
        f"export report: {'passed' if verdict.passed else 'FAILED: ' + '; '.join(verdict.failures)}"
    carried = "a probe (python -m runtime check runs it here)" if model.info.probe else \
        f"no probe (metadata format {model.info.format_version})"
    return f"{said}; {carried}"


def check(args) -> int:
    """Each artifact's probe on this device's engine: one line (or JSON object) per artifact."""
    worst = 0
    for path in args.artifacts:
        try:
            model = load(path, provider=args.provider, threads=args.threads,
                         inference_precision=args.inference_precision, check=False, allow_failed=True)
            rows = probe.check(model, model.info.probe) if model.info.probe else None
        except HieraRuntimeError as error:
            say(json.dumps({"artifact": str(path), "error": str(error)}) if args.json else f"error: {error}",
                sys.stderr if not args.json else sys.stdout)
            worst = max(worst, 2)
            continue
        engine, device = probe.engine_name(model.session), f"{cpu_name()} ({' '.join(cpu_isa()) or 'no extensions'})"
        status = "no probe" if rows is None else "ok" if all(row.passed for row in rows) else "FAILED"
        worst = max(worst, 1 if status == "FAILED" else 0)
        if args.json:
            say(json.dumps({"artifact": str(path), "status": status, "engine": engine, "device": device,
                            "rows": [row.to_dict() for row in rows or []]}, allow_nan=False))
        elif rows is None:  # "older" only where the format predates the probe: today's exports write none for some
            made = "made by an older export" if model.info.format_version < probe.PROBE_FORMAT else \
                "its export wrote none"
            say(f"{path}: no probe (metadata format {model.info.format_version}, {made}): "
                f"nothing to run on this device; checked only its metadata ({engine}, {device})")
        else:
            say(f"{path}: {status}: {'; '.join(row.describe() for row in rows)} ({engine}, {device})")
    return worst


def sidecar(args) -> int:
    path = sidecar_for_trtexec(args.engine, args.onnx, args.hardware_compatible, args.version_compatible)
    say(f"wrote {path}")
    return 0


COMMANDS = {"predict": predict, "embed": embed, "reconstruct": reconstruct, "bench": bench, "info": info,
            "check": check, "sidecar": sidecar, "triton": triton, "segment": segment}


def run(argv) -> int:
    args = parse(argv)
    return COMMANDS[args.command](args)


def main(argv=None) -> int:
    """The command line (python -m runtime, hiera-runtime): returns the exit status."""
    return run_command(run, argv, errors=(HieraRuntimeError,))
