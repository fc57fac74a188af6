"""A small seeded fuzzer over what the runtime reads: images (PNG, JPEG, multi-page TIFF, animated GIF and WebP)
with bytes flipped, cut, grown or set to huge numbers, and artifact metadata with each field set to values within
and past its range, of the wrong type, huge, NaN. Every case is a result or one line naming the file, never a
traceback, and never more memory than the megapixel guard allows: the cases run in a child process whose data
segment is capped (RLIMIT_DATA), so an allocation the guards missed is a MemoryError there, not a slow machine.

A few runs of the CLI check the same through the command line: damaged files among good ones (each one line,
the good ones still run), a damaged later page of a clip, an artifact asking for a crop or batch past the guard.

The models are hand-built ONNX graphs (a channel mean through a fixed matrix) with our metadata: nothing here
needs torch. `python -m tests.faults.test_fuzz [CASES]` runs the fuzzer alone and prints its findings."""

import json
import logging
import math
import os
import resource
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from runtime import HieraRuntimeError
from runtime.artifact import from_metadata, to_metadata
from runtime.preprocess import Preprocessing, load_clip, load_image

ROOT = Path(__file__).resolve().parents[2]  # not tests/conftest's: the fuzzer's child process imports no torch

SEED = 23
MUTANTS = 400  # per seed file: 5 files x 400 (and the metadata cases) in about 3 s of CPU
GUARD = 64_000_000  # the megapixel guard of docs/runtime.md, in pixels: what no input or call may exceed
MEMORY_CAP = 2 << 30  # the fuzzer's data segment: a 64-megapixel image decodes and converts well within it
HUGE = [-1, 0, 2**31, 2**63, 10**30, 1e308, math.nan, math.inf, -math.inf, True, None, "64", [], {}, [[1]] * 3]


def tiny_model(path: Path, input_size=(16, 16), batch="dynamic", task="classify", preprocessing=None, mae=None):
    """An ONNX graph with our metadata: pixel_values -> logits, the mean of each channel through a fixed 3 x 3
    matrix. `preprocessing` (a dict) replaces the one the input size implies, as tampered metadata would."""
    frames = input_size[:-2]
    shape = ["batch" if batch == "dynamic" else batch, 3, *input_size]
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["pixel_values", "axes"], ["mean"], keepdims=0),
         helper.make_node("MatMul", ["mean", "weight"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [shape[0], 3])],
        [helper.make_tensor("weight", TensorProto.FLOAT, [3, 3], [1, 0, 0, 0, 1, 0, 0, 0, 1]),
         helper.make_tensor("axes", TensorProto.INT64, [len(input_size)], list(range(2, 2 + len(input_size))))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    if preprocessing is None:
        preprocessing = (Preprocessing.for_clips(tuple(input_size), frame_stride=1) if frames else
                         Preprocessing.for_input_size(tuple(input_size))).to_dict()
    for key, value in metadata(input_size, batch, task, preprocessing, mae).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


def metadata(input_size, batch, task, preprocessing: dict, mae=None) -> dict[str, str]:
    outputs = ["logits", "bool_masked_pos", "ids_restore"] if task == "mae" else ["logits"]
    return to_metadata(variant="tiny", task=task, outputs=outputs, input_size=input_size, preprocessing=preprocessing,
                       labels=["red", "green", "blue"], weights={"source": "random:0", "sha256": None,
                                                                 "verified": False},
                       opset=18, precision="fp32", batch=batch, versions={}, mae=mae)


# Images

def seed_files(folder: Path) -> dict[str, Path]:
    """One small valid file of each format the runtime reads, three frames where the format has frames."""
    rng = np.random.default_rng(SEED)
    frames = [Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)) for _ in range(3)]
    folder.mkdir(parents=True, exist_ok=True)
    made = {"png": ("p.png", {}), "jpeg": ("j.jpg", {}), "tiff": ("t.tif", {"save_all": True}),
            "gif": ("g.gif", {"save_all": True}), "webp": ("w.webp", {"save_all": True, "lossless": True})}
    paths = {}
    for kind, (name, options) in made.items():
        paths[kind] = folder / name
        extra = {"append_images": frames[1:]} if options.get("save_all") else {}
        frames[0].save(paths[kind], **options, **extra)
    return paths


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One seeded mutation: bytes flipped (mostly in the headers), a cut, a segment doubled, or a header number
    set to a huge value."""
    data = bytearray(data)
    where = lambda: int(rng.integers(0, min(len(data), 256))) if rng.random() < 0.7 else \
        int(rng.integers(0, len(data)))  # noqa: E731
    kind = rng.integers(0, 4)
    if kind == 0:
        for _ in range(int(rng.integers(1, 9))):
            data[where()] = int(rng.integers(0, 256))
    elif kind == 1:
        del data[int(rng.integers(1, len(data))):]
    elif kind == 2:
        start = where()
        data[start:start] = data[start:start + int(rng.integers(1, 64))]
    else:
        at = where()
        data[at:at + 4] = bytes(rng.choice([b"\xff\xff\xff\xff", b"\xff\x7f\x00\x00", b"\x00\x00\xff\x7f",
                                            b"\x40\x1f\x40\x1f"]))  # 8000 x 8000 as two 16-bit sides
    return bytes(data)


def mutants(folder: Path, count: int = MUTANTS) -> list[Path]:
    """`count` mutants of each seed file, and one case the fuzzer found at 2,000 a format: a PNG whose data
    chunk declares 4 GB (Pillow reads that length at once; Python allocated it before reading 1.5 KB)."""
    rng = np.random.default_rng(SEED)
    made = []
    for kind, path in seed_files(folder / "seeds").items():
        data = path.read_bytes()
        for index in range(count):
            made.append(folder / f"{kind}-{index:03d}{path.suffix}")
            made[-1].write_bytes(mutate(data, rng))
        if kind == "png":
            at = data.index(b"IDAT") - 4  # the chunk's length, big-endian
            made.append(folder / "png-declares-4gb.png")
            made[-1].write_bytes(data[:at] + b"\xff\xff\xff\xf0" + data[at + 4:])
    return made


def outcome(path, call, named: bool = True) -> str | None:
    """None when `call()` gives a result or one line (naming `path` if `named`); else what went wrong."""
    try:
        call()
    except HieraRuntimeError as error:
        message = str(error)
        if "\n" in message or (named and not message.startswith(f"{path}: ")):
            return f"{path}: not one line naming the file: {message!r}"
    except MemoryError:
        return f"{path}: an allocation past the guards (MemoryError under a {MEMORY_CAP >> 30} GiB cap)"
    except Exception as error:  # what the fuzzer is for: anything else escaped
        return f"{path}: {type(error).__name__}: {error}"
    return None


def check_image(path: Path) -> list[str]:
    recipe = Preprocessing.for_input_size((16, 16))
    found = [outcome(path, lambda: recipe(load_image(path)))]
    if path.suffix in (".tif", ".gif", ".webp"):
        clips = Preprocessing.for_clips((3, 16, 16), frame_stride=1)
        found.append(outcome(path, lambda: clips.clip(load_clip(path, 3, 1))))
    return [problem for problem in found if problem]


# Metadata

def metadata_cases() -> list[tuple[str, dict[str, str]]]:
    """Valid metadata of an image, a video and an MAE model, each with one field set to each hostile value, and
    to values within and just past its range."""
    rng = np.random.default_rng(SEED)
    image = Preprocessing.for_input_size((16, 16)).to_dict()
    bases = {"image": ((16, 16), 8, "classify", image, None),
             "video": ((4, 16, 16), "dynamic", "classify", Preprocessing.for_clips((4, 16, 16), 1).to_dict(), None),
             "mae": ((16, 16), 1, "mae", image, {"mask_units": 16, "mask_ratio": 0.5, "pred_stride": 4,
                                                 "norm_pix_loss": True})}
    cases = []
    for base, (size, batch, task, recipe, mae) in bases.items():
        props = metadata(size, batch, task, recipe, mae)
        for key, value in props.items():
            decoded = json.loads(value)
            fields = [None, *decoded] if isinstance(decoded, dict) else [None]
            fields += [index for index in range(len(decoded))] if isinstance(decoded, list) else []
            for field in fields:
                current = decoded if field is None else decoded[field]
                numbers = [current] if isinstance(current, (int, float)) and not isinstance(current, bool) else []
                values = [*HUGE, *(n * k for n in numbers for k in (2, 1000, 2**20)),
                          *(int(rng.integers(1, 20000)) for _ in numbers), 7000, 12000, 16384, 16385]
                for new in values:
                    changed = json.loads(value)
                    if field is None:
                        changed = new
                    else:
                        changed[field] = new
                    text = json.dumps(changed)  # NaN and Infinity as Python writes them, which JSON refuses
                    cases.append((f"{base} {key}[{field}] = {new!r}", {**props, key: text}))
        # the sizes of the issue, together, as a forger would write them
        for side, edge in ((12000, 7000), (16384, 16384), (7000, 8000), (8000, 8000)):
            big = {**recipe, "crop_size": [side, side], "resize_shortest_edge": edge}
            sizes = (*size[:-2], side, side)
            cases.append((f"{base} crop {side} resize {edge}", metadata(sizes, batch, task, big, mae)))
    return cases


def check_metadata(name: str, props: dict[str, str]) -> list[str]:
    """The decoder's verdict; for what it accepts, the sizes it would allocate are within the guard, and a
    small image runs through its preprocessing."""
    path = f"fuzz/{name.replace(' ', '_')}.onnx"
    try:
        info = from_metadata(props, path)
    except HieraRuntimeError as error:
        message = str(error)
        return [] if "\n" not in message and message.startswith(f"{path}: ") else [f"{name}: {message!r}"]
    except Exception as error:
        return [f"{name}: {type(error).__name__}: {error}"]
    p = info.preprocessing
    pixels = math.prod(info.input_size)
    problems = [f"{name}: accepted {what} of {value:,} pixels, past the guard" for what, value in (
        ("an input", pixels), ("a static batch", pixels * (info.batch or 1)),
        ("a resize", p.resize_shortest_edge ** 2 if p.keep_aspect_ratio else 0),
        ("a noise input", (info.mae or {}).get("mask_units", 0) * (info.batch or 1))) if value > GUARD]
    if info.mae and info.mae["mask_units"] > pixels:  # a mask unit holds one pixel at the least
        problems.append(f"{name}: accepted {info.mae['mask_units']} mask units for inputs of {pixels} pixels")
    if not problems and pixels <= 1 << 20:
        photo = Image.new("RGB", (30, 20), "red")  # an image, not a file: the model's caller names it
        problems += [problem for problem in [outcome(name, lambda: p.clip([photo] * p.frames) if p.frames
                                                     else p(photo), named=False)] if problem]
    return problems


class Printed(logging.Handler):
    """Python's handler of last resort, recording: what a library logs where the application configured no
    logging would be printed raw on stderr."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def fuzz(folder: Path, count: int = MUTANTS) -> dict:
    """Every case, in this process: the findings, one line each, and how many cases ran. A warning or a log
    line that reaches the user's terminal is a finding too."""
    warnings.simplefilter("error")
    logging.lastResort = printed = Printed()
    images = mutants(folder, count)
    found = []
    for path in images:
        found += check_image(path)
        found += [f"{path}: printed {line!r}" for line in printed.lines]
        printed.lines.clear()
    cases = metadata_cases()
    found += [problem for name, props in cases for problem in check_metadata(name, props)]
    return {"images": len(images), "metadata": len(cases), "found": found}


def cap_memory():
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_CAP, MEMORY_CAP))


def test_the_fuzzer_finds_nothing(tmp_path):
    """Mutated images and metadata, in a child process under the memory cap."""
    code = f"import json; from tests.faults.test_fuzz import fuzz; print(json.dumps(fuzz(__import__('pathlib')" \
           f".Path({str(tmp_path)!r}))))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                            preexec_fn=cap_memory, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["images"] == 5 * MUTANTS + 1 and report["metadata"] > 500, report
    assert report["found"] == [], "\n".join(report["found"][:20])


# The command line

def cli(*args, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime", *map(str, args)], capture_output=True, text=True,
                          cwd=options.get("cwd", ROOT), timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def damaged_later_pages(path: Path) -> Path:
    """A three-page TIFF whose second and third pages lack their width (the ImageWidth tag renamed): the first
    page decodes, seeking to the second raised `TypeError: Missing dimensions`."""
    frames = [Image.new("RGB", (20, 20), color) for color in ("red", "green", "blue")]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    data = bytearray(path.read_bytes())
    assert data[:4] == b"II*\x00"
    ifd, page = int.from_bytes(data[4:8], "little"), 0
    while ifd:
        count = int.from_bytes(data[ifd:ifd + 2], "little")
        for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
            if page and int.from_bytes(data[entry:entry + 2], "little") == 256:  # ImageWidth
                data[entry:entry + 2] = (65000).to_bytes(2, "little")
        ifd, page = int.from_bytes(data[ifd + 2 + 12 * count:ifd + 6 + 12 * count], "little"), page + 1
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-cli")


def test_a_damaged_later_page_of_a_clip_is_one_line_and_the_next_clip_runs(folder):
    model = tiny_model(folder / "video.onnx", input_size=(3, 16, 16))
    bad = damaged_later_pages(folder / "bad.tif")
    good = folder / "good.tif"
    Image.new("RGB", (20, 20), "green").save(good, save_all=True, append_images=[Image.new("RGB", (20, 20), "green")])
    result = cli("predict", bad, good, "--model", model, "--no-check")
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [f"error: {bad}: cannot decode (TypeError: Missing dimensions)"], result
    # the good clip, green (0, 128, 0) only: its normalized channel means (Kinetics' mean 0.45, std 0.225) are
    # -2, (128 / 255 - 0.45) / 0.225 = 0.2309 and -2, whose softmax gives green e^0.2309 / (e^0.2309 + 2e^-2) = 0.8231
    assert result.stdout.splitlines()[:2] == [str(good), "  0.8231  green  (class 1)"], result.stdout


def test_damaged_images_among_good_ones_are_one_line_each(folder):
    """A CLI run over mutated files of every format: each is a prediction or its one line; the good image last
    still runs; nothing else is printed."""
    model = tiny_model(folder / "image.onnx")
    images = mutants(folder / "mutants", 12)
    good = folder / "good.png"
    Image.new("RGB", (30, 20), "blue").save(good)
    result = cli("predict", *images, good, "--model", model, "--no-check")
    assert result.returncode in (0, 1), result.stderr[-3000:]
    errors = result.stderr.splitlines()
    assert all(line.startswith("error: ") and any(line.startswith(f"error: {p}: ") for p in images)
               for line in errors), errors
    assert str(good) in result.stdout.splitlines() and "blue" in result.stdout.splitlines()[-3], result.stdout


@pytest.mark.parametrize("case", ["crop", "batch", "foreign batch", "batch-size", "bench", "triton"])
def test_sizes_past_the_guard_are_refused_naming_the_artifact_and_the_limit(folder, case):
    photo = folder / "photo.png"
    Image.new("RGB", (30, 20), "red").save(photo)
    if case == "crop":  # the issue's: a 12000 x 12000 crop after a resize to 7000
        recipe = {**Preprocessing.for_input_size((16, 16)).to_dict(), "crop_size": [12000, 12000],
                  "resize_shortest_edge": 7000}
        model = tiny_model(folder / "crop.onnx", input_size=(12000, 12000), preprocessing=recipe)
        args, expected = ["predict", photo], (f"error: {model}: damaged Hiera metadata: hiera.preprocessing: "
                                              "crop_size 12000 x 12000 is 144 megapixels an input, above the "
                                              "runtime's limit of 64 (its megapixel guard)")
    elif case == "batch":  # 256 x 256 inputs in a static batch of 1024: 67 megapixels a call
        model = tiny_model(folder / "batch.onnx", input_size=(256, 256), batch=1024)
        args, expected = ["predict", photo], (f"error: {model}: damaged Hiera metadata: hiera.batch: 1024 inputs of "
                                              "65,536 pixels are 67 megapixels a call, above the runtime's limit "
                                              "of 64 (its megapixel guard): at most 976 a call")
    elif case == "foreign batch":  # the same, from the graph's own input shape: no Hiera metadata to check
        model = tiny_model(folder / "foreign.onnx", input_size=(256, 256), batch=1024)
        graph = onnx.load(model)
        del graph.metadata_props[:]
        onnx.save(graph, model)
        args, expected = ["predict", photo, "--crop-size", 256], (
            f"error: {model}: its input [1024, 3, 256, 256]: 1024 inputs of 65,536 pixels are 67 megapixels a call, "
            "above the runtime's limit of 64 (its megapixel guard): at most 976 a call")
    elif case == "batch-size":
        model = tiny_model(folder / "dynamic.onnx", input_size=(512, 512))
        args, expected = ["predict", photo, "--batch-size", 1000], (
            "error: batch_size 1000 inputs of 262,144 pixels are 262 megapixels a call, above the runtime's limit of "
            "64 (its megapixel guard): at most 244 a call")
    elif case == "triton":  # the batch its preprocessing step would decode and stack
        model = tiny_model(folder / "served.onnx", input_size=(512, 512))
        args, expected = ["triton", model, "--repo", folder / "repo", "--max-batch", 1000], (
            f"error: {model}: max_batch 1000 inputs of 262,144 pixels are 262 megapixels a call, above the runtime's "
            "limit of 64 (its megapixel guard): at most 244 a call")
    else:
        model = tiny_model(folder / "dynamic.onnx", input_size=(512, 512))
        args, expected = ["bench", "--batch", 1000, "--runs", 1], (
            "error: --batch 1000 inputs of 262,144 pixels are 262 megapixels a call, above the runtime's limit of 64 "
            "(its megapixel guard): at most 244 a call")
    result = cli(*args, *(["--model", model, "--no-check"] if case != "triton" else []))
    assert not (folder / "repo").exists()
    assert (result.returncode, result.stdout, result.stderr.splitlines()) == (2, "", [expected]), result


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        cap_memory()
        found = fuzz(Path(scratch), int(sys.argv[1]) if len(sys.argv) > 1 else MUTANTS)
        print("\n".join(found["found"]) or f"nothing found in {found['images']} images and {found['metadata']} "
                                             "metadata cases")
