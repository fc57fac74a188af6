"""python -m runtime predict IMAGE... --model FILE | reconstruct IMAGE --model FILE | bench --model FILE --batch N |
info --model FILE | sidecar ENGINE --onnx FILE.

A thin layer over the Python API: it parses arguments, expands directories, keeps going past bad
images, and prints. Exit status: 0 when every image was classified, 1 when some could not be, 2 for
bad arguments or a model that cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .bench import summarize, time_calls
from .errors import HieraRuntimeError
from .model import Classifier, Reconstructor, load
from .openvino import PRECISIONS
from .preprocess import MAX_PIXELS, Preprocessing, find_images
from .reconstruct import side_by_side
from .session import PROVIDERS
from .tensorrt import sidecar_for_trtexec


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other error of the command
        self.exit(2, f"error: {message} (see python -m runtime --help)\n")


def crop_size(text: str) -> tuple[int, int]:
    """`224` or `224x320` (height x width)."""
    sizes = [int(part) for part in text.lower().split("x")]
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise ValueError(text)
    return (sizes * 2)[:2] if len(sizes) == 1 else tuple(sizes)


def parse(argv) -> argparse.Namespace:
    p = Parser(prog="python -m runtime", description="Run exported Hiera models (ONNX or TensorRT) on images.")
    commands = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    def model_options(command):
        command.add_argument("--model", required=True, type=Path, help="an exported .onnx, an OpenVINO IR (.xml), or "
                             "a TensorRT engine (.engine/.plan) with its sidecar .json")
        command.add_argument("--provider", default="auto", choices=["auto", *PROVIDERS, "openvino"],
                             help="onnxruntime execution provider, or OpenVINO (default: the fastest available)")
        command.add_argument("--inference-precision", choices=PRECISIONS, help="OpenVINO: f32 (default, as the "
                             "artifact computes) or bf16 (faster, on CPUs with native bf16)")
        command.add_argument("--threads", type=int, help="CPU threads (default: the engine's choice)")
        command.add_argument("--cache-dir", type=Path, help="where the TensorRT provider caches its engines and "
                             "timing (default ~/.cache/hiera-deploy/tensorrt), and OpenVINO its compiled models "
                             "(default: none)")
        command.add_argument("--crop-size", type=crop_size, metavar="N|HxW", help="run an ONNX file without Hiera "
                             "metadata, with ImageNet preprocessing to this size (shortest edge to the crop's / 0.875, "
                             "bicubic, center crop)")

    predict = commands.add_parser("predict", help="classify images (or clips, with a video model)")
    predict.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files or directories "
                         "(searched recursively); for a video model, clips: multi-frame files (animated GIF, WebP "
                         "or PNG, multi-page TIFF) or directories of frames, sampled as the model was evaluated")
    model_options(predict)
    predict.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    predict.add_argument("--batch-size", type=int, default=8, help="images per call for a dynamic-batch model "
                         "(a static one takes its own batch size; default 8)")
    predict.add_argument("--json", action="store_true", help="one JSON object per image and line")
    predict.add_argument("--max-megapixels", type=float, default=MAX_PIXELS / 1e6,
                         help=f"refuse larger images, a decompression-bomb guard (default {MAX_PIXELS / 1e6:g})")
    predict.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                         help="show progress on stderr (default: when it is a terminal)")

    rebuild = commands.add_parser("reconstruct", help="MAE: hide most of an image and let the model fill it in; "
                                  "writes the original, the masked input and the reconstruction side by side")
    rebuild.add_argument("image", type=Path, help="an image file")
    model_options(rebuild)
    rebuild.add_argument("--out", type=Path, help="the PNG to write (default: IMAGE's name + .mae.png, here)")
    rebuild.add_argument("--seed", type=int, default=0, help="which mask units to hide (default 0)")
    rebuild.add_argument("--max-megapixels", type=float, default=MAX_PIXELS / 1e6,
                         help=f"refuse larger images, a decompression-bomb guard (default {MAX_PIXELS / 1e6:g})")

    bench = commands.add_parser("bench", help="latency and throughput on random input")
    model_options(bench)
    bench.add_argument("--batch", type=int, default=1, help="images per call (default 1)")
    bench.add_argument("--runs", type=int, default=20, help="timed calls (default 20)")
    bench.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    bench.add_argument("--json", action="store_true", help="print the figures as one JSON object")

    info = commands.add_parser("info", help="what an artifact says about itself")
    model_options(info)

    sidecar = commands.add_parser("sidecar", help="write the sidecar of an engine trtexec built here from our ONNX")
    sidecar.add_argument("engine", type=Path, help="the engine trtexec wrote (--saveEngine)")
    sidecar.add_argument("--onnx", type=Path, required=True, help="the exported .onnx it was built from")
    sidecar.add_argument("--hardware-compatible", action="store_true", help="built with "
                         "--hardwareCompatibilityLevel=ampere+")
    sidecar.add_argument("--version-compatible", action="store_true", help="built with --versionCompatible")
    args = p.parse_args(argv)
    for name in ("top_k", "batch_size", "batch", "runs", "threads"):
        if getattr(args, name, None) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def load_from_args(args, model_class=None):
    """`model_class` (Classifier) loaded from the arguments, or whichever class the artifact's task needs."""
    preprocessing = Preprocessing.for_input_size(args.crop_size) if args.crop_size else None
    max_pixels = int(args.max_megapixels * 1e6) if "max_megapixels" in args else MAX_PIXELS
    return (model_class.load if model_class else load)(args.model, provider=args.provider, threads=args.threads,
                                                       cache_dir=args.cache_dir, preprocessing=preprocessing,
                                                       max_pixels=max_pixels,
                                                       inference_precision=args.inference_precision)


class Progress:
    """`done/total images` on one rewritten stderr line."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.done, self.failed = total, enabled, 0, 0

    def step(self, done: int, failed: int) -> None:
        self.done, self.failed = self.done + done, self.failed + failed
        if self.enabled:
            failed = f", {self.failed} failed" if self.failed else ""
            print(f"\r{self.done}/{self.total} images{failed}", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def predict(args) -> int:
    model = load_from_args(args, Classifier)
    items = []  # (path, error): the images to classify, and arguments already known to be bad, in order
    for argument in args.images:
        if model.info.preprocessing.frames:  # a video model: each argument is one clip (a file or a frames directory)
            items.append((argument, None))
            continue
        try:
            items += [(path, None) for path in find_images(argument)]
        except HieraRuntimeError as error:
            items.append((argument, str(error)))
    step = model.info.batch or args.batch_size
    progress = Progress(len(items), sys.stderr.isatty() if args.progress is None else args.progress)
    failed = 0
    for start in range(0, len(items), step):
        chunk, inputs, errors = items[start:start + step], [], []
        for path, error in chunk:
            if error is None:
                try:
                    inputs.append(model.preprocess(path)[0])
                except HieraRuntimeError as bad:
                    error = str(bad)
            errors.append(error)
        predictions = iter(model.predict_arrays(np.stack(inputs), args.top_k) if inputs else [])
        bad = sum(error is not None for error in errors)
        progress.step(len(chunk), bad)
        for (path, _), error in zip(chunk, errors):
            report(args, path, error=error, top_k=None if error else next(predictions))
        failed += bad
    progress.close()
    return 1 if failed else 0


def reconstruct(args) -> int:
    model = load_from_args(args, Reconstructor)
    out = args.out or Path(args.image.stem + ".mae.png")
    if out.suffix.lower() != ".png":
        raise HieraRuntimeError(f"--out {out}: the reconstruction is written as PNG; name it .png")
    panels = model.reconstruct(args.image, seed=args.seed)[0]
    picture = side_by_side([panels["original"], panels["masked"], panels["reconstruction"]])
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        picture.save(temporary, format="PNG")
        os.replace(temporary, out)  # never a half-written PNG under the name asked for
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise HieraRuntimeError(f"{out}: cannot write ({error.strerror or error})") from None
    mae = model.info.mae
    visible = int(mae["mask_units"] * (1 - mae["mask_ratio"]))
    print(f"wrote {out}: original | masked ({visible} of {mae['mask_units']} mask units visible) | reconstruction")
    return 0


def report(args, path: Path, error: str | None = None, top_k=None) -> None:
    if args.json:
        entry = {"image": str(path), "error": error} if error else \
            {"image": str(path), "top_k": [p.to_dict() for p in top_k]}
        print(json.dumps(entry), flush=True)
    elif error:
        print(f"error: {error}", file=sys.stderr, flush=True)
    else:
        print(path)
        for p in top_k:
            print(f"  {p.score:.4f}  {p.label if p.label is not None else '-'}  (class {p.index})")


def bench(args) -> int:
    model = load_from_args(args)
    shape = (args.batch, 3, *model.info.input_size)
    pixel_values = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    # A classifier is timed with its softmax and top-k, a feature extractor with its outputs' copy: the
    # whole call a user makes, less the image decoding, which is timed on its own below.
    if isinstance(model, Classifier):
        call = lambda: model.predict_arrays(pixel_values)  # noqa: E731
    elif isinstance(model, Reconstructor):
        noise = model.noise(args.batch)
        call = lambda: model.run(pixel_values, noise=noise)  # noqa: E731
    else:
        call = lambda: model.run(pixel_values)  # noqa: E731
    figures = summarize(time_calls(call, args.runs, args.warmup), args.batch)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    preprocessing = summarize(time_calls(lambda: model.info.preprocessing(photo), args.runs, args.warmup), 1)
    result = {"model": str(args.model), "providers": model.providers, "artifact_batch": model.info.batch or "dynamic",
              "inference": figures, "preprocess_640x480": preprocessing}
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.model}  ({', '.join(model.providers)}; artifact batch {result['artifact_batch']})")
    print(f"{'':22s}{'median ms':>10s}{'p90 ms':>10s}{'images/s':>10s}")
    for name, row in ((f"inference, batch {args.batch}", figures), ("preprocess, 640x480", preprocessing)):
        print(f"{name:22s}{row['median_ms']:10.2f}{row['p90_ms']:10.2f}{row['images_per_s']:10.1f}")
    return 0


def info(args) -> int:
    model = load_from_args(args)
    details = {"file": str(args.model), "api": type(model).__name__, "providers": model.providers,
               "input": model.session.input_shape, "outputs": model.session.output_names,
               **{key.removeprefix("hiera."): json.loads(value) for key, value in model.session.metadata.items()
                  if key.startswith("hiera.") and key != "hiera.labels"},
               "labels": len(model.info.labels) if model.info.labels else None}
    print(json.dumps(details, indent=2))
    return 0


def sidecar(args) -> int:
    path = sidecar_for_trtexec(args.engine, args.onnx, args.hardware_compatible, args.version_compatible)
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    args = parse(argv)
    try:
        commands = {"predict": predict, "reconstruct": reconstruct, "bench": bench, "info": info, "sidecar": sidecar}
        return commands[args.command](args)
    except HieraRuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader stopped (`| head`): quietly, as a killed pipeline would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return 141
