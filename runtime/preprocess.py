"""Images in, model input out: decoding, color conversion and the preprocessing an artifact describes.

The published checkpoints were trained with transformers' `BitImageProcessor` settings: resize the
shortest edge (bicubic), center crop, scale to [0, 1], normalize with the mean and std, RGB. Color
conversion follows the same processor (transparency composited onto white), with two additions a file
needs and the processor leaves to its caller: the EXIF orientation is applied, as transformers'
`load_image` does, and 16-bit grayscale is scaled to 8 bits where Pillow's conversion would clip it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import numbers
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import HieraRuntimeError
from .files import open_file

# Pillow logs some damage it finds as errors (a TIFF's samples per pixel) before it raises; with no handler of
# the application's, Python would print them raw to stderr beside the one line the error gives. An application
# that configures logging still receives them.
logging.getLogger("PIL").addHandler(logging.NullHandler())

RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
# What a directory is searched for; any file named on the command line is tried whatever its name.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".avif")
# The Pillow decoders an image may be read with (those of IMAGE_EXTENSIONS; a JPEG with several pictures opens
# as MPO through JPEG's). Pillow's others stay closed: some hand the file to another program (EPS to
# Ghostscript), and none is needed for photographs.
DECODERS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM", "AVIF")
# Decompression-bomb guard: a 64-megapixel RGB image already takes 192 MB once decoded. Pillow's own
# guard only warns below 179 megapixels.
MAX_PIXELS = 64_000_000
MAX_MEGAPIXELS = 1000.0  # the largest guard an option may set: Pillow refuses images above 179 megapixels anyway
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
MAX_EDGE = 16384  # the largest resize edge, crop side or clip length a Preprocessing accepts
_ABOVE_LIMIT = f"above the runtime's limit of {MAX_PIXELS / 1e6:.0f} (its megapixel guard)"
# transformers' image processors store the resample filter as PIL's enum value.
PIL_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


def _decoders() -> list[str]:
    Image.init()  # registers every plugin once; AVIF needs Pillow 11.3 or later
    return [name for name in DECODERS if name in Image.OPEN]


def _check_pixels(image: Image.Image, path, max_pixels: int, frame: int = 0) -> None:
    """The decompression-bomb guard, on the size a frame declares, before the frame is decoded."""
    width, height = image.size
    if width * height > max_pixels:
        where = f"frame {frame + 1}: " if frame else ""
        raise HieraRuntimeError(f"{path}: {where}{width} x {height} is {width * height / 1e6:.0f} megapixels, "
                                f"above the limit of {max_pixels / 1e6:.0f} (a decompression-bomb guard)")


def _decode(path, read, data: bytes | None = None):
    """`read(image)` on the image file at `path`, opened only if it is a regular file (a FIFO or a device
    fails at once), or on its bytes `data` already read (a Ray Data pipeline's), with Pillow's errors turned
    into one line naming the file."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Our own limit applies instead of Pillow's bomb warning, and what it warns of in damaged data (EXIF,
            # TIFF tags) would be two raw lines on stderr: the file decodes anyway, or is refused in one line.
            warnings.simplefilter("ignore")
            with open_file(path) if data is None else contextlib.nullcontext(io.BytesIO(data)) as file:
                if (os.fstat(file.fileno()).st_size if data is None else len(data)) == 0:
                    raise HieraRuntimeError(f"{path}: empty file")
                with Image.open(file, formats=_decoders()) as image:
                    return read(image)
    except UnidentifiedImageError:
        raise HieraRuntimeError(f"{path}: not an image this runtime reads ({', '.join(DECODERS)})") from None
    except Image.DecompressionBombError as error:
        raise HieraRuntimeError(f"{path}: {error}") from None
    except (HieraRuntimeError, MemoryError):
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # what Pillow's decoders raise on bad data
        raise HieraRuntimeError(f"{path}: cannot decode ({error})") from None
    except Exception as error:  # damaged data raises other types too, in any frame (a TIFF page without
        # its size: TypeError "Missing dimensions"): each is still this file's one line, and the next input runs
        raise HieraRuntimeError(f"{path}: cannot decode ({type(error).__name__}: {error})") from None


def open_image(path, max_pixels: int = MAX_PIXELS, data: bytes | None = None) -> Image.Image:
    """Decode an image file completely, upright (EXIF orientation applied), in its own mode. Only the first
    frame of a multi-frame file is decoded, and only once its size passed the guard. `data`: the file's bytes,
    already read (then `path` only names it in errors)."""

    def read(image):
        _check_pixels(image, path, max_pixels)
        image.load()
        return ImageOps.exif_transpose(image)  # a new image, also when there is nothing to rotate

    return _decode(path, read, data)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB, as transformers' `convert_to_rgb` does (transparency onto white)."""
    if image.mode in SIXTEEN_BIT:
        # Pillow converts 16-bit to 8-bit by clipping at 255, which turns most of a real image white.
        # round(x / 257) in integers: no value of x falls halfway, and 4 bytes a pixel instead of float64's 8
        image = Image.fromarray(((np.asarray(image, np.uint32) + 128) // 257).astype(np.uint8))
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def array_to_rgb(array: np.ndarray) -> Image.Image:
    """An HWC (or HW) uint8 array with 1, 3 or 4 channels to an RGB image, as transformers converts arrays."""
    if array.dtype != np.uint8:
        raise HieraRuntimeError(f"an array of {array.dtype}: expected uint8 pixels (0..255), height x width x channels")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise HieraRuntimeError(f"an array of shape {array.shape}: expected height x width x 1, 3 or 4 channels")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif array.shape[-1] == 4:
        alpha = array[..., 3:] / 255
        array = np.round(alpha * array[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def load_image(source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A path, a Pillow image or a uint8 array, as an upright RGB image."""
    if isinstance(source, np.ndarray):
        return array_to_rgb(source)
    if isinstance(source, Image.Image):
        return to_rgb(ImageOps.exif_transpose(source))
    if isinstance(source, (str, Path)):
        return to_rgb(open_image(source, max_pixels))
    raise HieraRuntimeError(f"an image of type {type(source).__name__}: expected a path, a PIL image or a numpy array")


def find_images(path) -> list[Path]:
    """A file as itself; a directory as the image files under it (recursively, sorted, hidden ones skipped)."""
    path = Path(path)
    if not path.is_dir():
        return [path]  # a missing or unreadable file is reported when it is opened
    found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not found:
        raise HieraRuntimeError(f"{path}: no images in this directory (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return found


def sample_frames(available: int, frames: int, stride: int) -> list[int]:
    """Which of `available` frames make a clip of `frames` at a temporal `stride`: the clip of frames * stride
    frames in the middle of the video, sampled evenly: SlowFast's and MAE-ST's centre view (FAIR evaluated
    its Hiera video models on 5 such views along the video). A shorter video repeats its last frame, as
    their sampler does."""
    span = frames * stride
    start = max(available - span, 0) / 2
    positions = np.linspace(start, start + span - 1, frames)
    return np.clip(positions, 0, available - 1).astype(int).tolist()


def open_clip(path, frames: int, stride: int, max_pixels: int = MAX_PIXELS) -> list[Image.Image]:
    """The sampled frames of a clip, upright, in their own mode: a multi-frame image file (animated GIF, WebP
    or PNG, multi-page TIFF) or a directory of frame images (in name order). Every frame is held to the
    megapixel guard before it is decoded."""
    path = Path(path)
    if path.is_dir():
        files = find_images(path)
        return [open_image(files[i], max_pixels) for i in sample_frames(len(files), frames, stride)]

    def read(video):
        _check_pixels(video, path, max_pixels)
        count = getattr(video, "n_frames", 1)  # reads frame headers only
        if count == 1:
            raise HieraRuntimeError(f"{path}: a single image, not a clip; pass a multi-frame file (animated GIF, "
                                    "WebP or PNG, multi-page TIFF) or a directory of frames (ffmpeg -i clip.mp4 "
                                    "DIR/%05d.png makes one)")
        wanted = sample_frames(count, frames, stride)
        decoded = {}
        # Frame by frame: seeking decodes the frame before (GIF and APNG frames build on the previous one),
        # and each frame's size is known, and checked, before then.
        for index in range(max(wanted) + 1):
            video.seek(index)
            _check_pixels(video, path, max_pixels, index)
            if index in wanted:
                decoded[index] = ImageOps.exif_transpose(video.copy())
        return [decoded[index] for index in wanted]

    return _decode(path, read)


def load_clip(source, frames: int, stride: int, max_pixels: int = MAX_PIXELS) -> list[Image.Image]:
    """A clip's sampled frames, upright RGB: from a path (see `open_clip`) or a list of frames (paths, Pillow
    images or uint8 arrays), sampled the same way."""
    if isinstance(source, (str, Path)):
        return [to_rgb(frame) for frame in open_clip(source, frames, stride, max_pixels)]
    if isinstance(source, (list, tuple)) and source:
        return [load_image(source[i], max_pixels) for i in sample_frames(len(source), frames, stride)]
    raise HieraRuntimeError(f"a clip of type {type(source).__name__}: expected a path (a multi-frame file or a "
                            "directory of frames) or a non-empty list of frames")


def _whole(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise ValueError(f"{name} {value!r} is not a whole number from {low} to {high}")
    return int(value)


def _three(name: str, values, positive: bool) -> tuple[float, float, float]:
    """Three finite numbers (above 0 if `positive`): a mean or std for R, G and B."""
    what = "three finite numbers" + (" above 0" if positive else "")
    if not isinstance(values, (list, tuple, np.ndarray)) or len(values) != 3:
        raise ValueError(f"{name} {values!r} is not {what}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                or (positive and value <= 0):
            raise ValueError(f"{name} {list(values)!r} is not {what}")
    return tuple(float(value) for value in values)


def _check_rescale(factor) -> None:
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not math.isclose(factor, 1 / 255):
        raise ValueError(f"rescale_factor {factor!r}: this runtime scales pixels by 1/255 only")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes model input: resize the shortest edge, center crop (or, for SAM 2, resize to the
    input size), scale to [0, 1], normalize, RGB. Checked when made: a bad value is a `ValueError` naming the
    field (the artifact decoder and export add the file)."""

    resize_shortest_edge: int
    crop_size: tuple[int, int]  # (height, width)
    resample: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    frames: int = 0  # video: frames per clip (0: an image model)
    frame_stride: int = 1  # video: the temporal stride the clip is sampled at
    # False: resize the whole image to crop_size, aspect ratio not kept, nothing cropped (SAM 2's recipe);
    # resize_shortest_edge is then unused.
    keep_aspect_ratio: bool = True

    def __post_init__(self):
        def set_field(name, value):  # frozen: normalized once, here
            object.__setattr__(self, name, value)

        set_field("resize_shortest_edge", _whole("resize_shortest_edge", self.resize_shortest_edge, 1, MAX_EDGE))
        crop = self.crop_size
        if not isinstance(crop, (list, tuple)) or len(crop) != 2:
            raise ValueError(f"crop_size {crop!r} is not [height, width]")
        set_field("crop_size", tuple(_whole("crop_size", side, 1, MAX_EDGE) for side in crop))
        if not isinstance(self.resample, str) or self.resample not in RESAMPLE:
            raise ValueError(f"resample {self.resample!r} is not one of {', '.join(RESAMPLE)}")
        set_field("mean", _three("mean", self.mean, positive=False))
        set_field("std", _three("std", self.std, positive=True))
        set_field("frames", _whole("frames", self.frames, 0, MAX_EDGE))
        set_field("frame_stride", _whole("frame_stride", self.frame_stride, 1, MAX_EDGE))
        if not isinstance(self.keep_aspect_ratio, bool):
            raise ValueError(f"keep_aspect_ratio {self.keep_aspect_ratio!r} is not true or false")
        # The megapixel guard holds what the recipe makes too, not only the images it is given: one input, and
        # the square image the shortest-edge resize makes at the least, are refused before anything is allocated.
        if self.pixels > MAX_PIXELS:
            frames = f" x {self.frames} frames" if self.frames else ""
            raise ValueError(f"crop_size {self.crop_size[0]} x {self.crop_size[1]}{frames} is "
                             f"{self.pixels / 1e6:.0f} megapixels an input, {_ABOVE_LIMIT}")
        if self.keep_aspect_ratio and self.resize_shortest_edge ** 2 > MAX_PIXELS:
            edge = self.resize_shortest_edge
            raise ValueError(f"resize_shortest_edge {edge} resizes every image to {edge} x {edge} or more, "
                             f"{edge * edge / 1e6:.0f} megapixels, {_ABOVE_LIMIT}")

    @property
    def pixels(self) -> int:
        """Pixels of one model input: height x width, times the frames of a clip."""
        return self.crop_size[0] * self.crop_size[1] * max(self.frames, 1)

    @property
    def largest_batch(self) -> int:
        """The most inputs one model call may hold under the megapixel guard (a batch of float32 inputs takes
        12 bytes a pixel)."""
        return MAX_PIXELS // self.pixels

    def check_batch(self, batch: int) -> int:
        """`batch`, if a call of that many inputs stays within the megapixel guard; else a `ValueError`."""
        if batch > self.largest_batch:
            raise ValueError(f"{batch} inputs of {self.pixels:,} pixels are "
                             f"{batch * self.pixels / 1e6:.0f} megapixels a call, {_ABOVE_LIMIT}: at most "
                             f"{self.largest_batch} a call")
        return batch

    @classmethod
    def for_input_size(cls, input_size) -> Preprocessing:
        """The ImageNet recipe scaled to an image input size: shortest edge input / 0.875 (256 for 224)."""
        return cls(resize_shortest_edge=int(min(input_size) / 0.875), crop_size=tuple(input_size))

    @classmethod
    def for_sam2(cls, input_size) -> Preprocessing:
        """SAM 2's image predictor (and transformers' `Sam2ImageProcessorFast`): the whole image resized to the
        input size (bilinear), aspect ratio not kept, ImageNet mean and std."""
        return cls(resize_shortest_edge=min(input_size), crop_size=tuple(input_size), resample="bilinear",
                   keep_aspect_ratio=False)

    @classmethod
    def for_clips(cls, input_size, frame_stride: int = 4) -> Preprocessing:
        """Kinetics clips as SlowFast and MAE-ST evaluate them (FAIR publishes no video preprocessing for
        Hiera): every `frame_stride`-th frame, shortest edge to the crop size (bilinear), centre crop, the
        Kinetics mean 0.45 and std 0.225."""
        frames, height, width = input_size
        return cls(resize_shortest_edge=min(height, width), crop_size=(height, width), resample="bilinear",
                   mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225), frames=frames, frame_stride=frame_stride)

    @classmethod
    def from_image_processor(cls, config: dict, input_size) -> Preprocessing:
        """A checkpoint's `preprocessor_config.json` (transformers' `BitImageProcessor` and the ImageNet-style
        processors like it), for a model taking `input_size` (height, width) images. A processor that crops
        another size has its recipe scaled to the model's: the resize edge by the ratio of the crops.

        What this runtime cannot do as the processor says (no resize, no crop, a fixed height and width
        that ignores the aspect ratio, another rescale than 1/255) is a `ValueError` naming the field."""
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
        if len(input_size) != 2:
            raise ValueError(f"input_size {list(input_size)}: an image processor describes images (height, width)")
        height, width = (_whole("input_size", side, 1, MAX_EDGE) for side in input_size)

        def flag(name):
            value = config.get(name, True)
            if not isinstance(value, bool):
                raise ValueError(f"{name} {value!r} is not true or false")
            return value

        for name, why in (("do_resize", "images of every size need resizing"),
                          ("do_center_crop", "the model takes one image size"),
                          ("do_rescale", "pixels are scaled to [0, 1]")):
            if not flag(name):
                raise ValueError(f"{name} false: this runtime always does it ({why})")
        _check_rescale(config.get("rescale_factor", 1 / 255))
        size = config.get("size")
        if not isinstance(size, dict) or "shortest_edge" not in size:
            raise ValueError(f"size {size!r}: this runtime resizes the shortest edge (size {{'shortest_edge': N}}), "
                             "not to a fixed height and width")
        edge = _whole("size.shortest_edge", size["shortest_edge"], 1, MAX_EDGE)
        crop = config.get("crop_size", {"height": height, "width": width})
        if not isinstance(crop, dict) or set(crop) != {"height", "width"}:
            raise ValueError(f"crop_size {crop!r} is not {{'height': H, 'width': W}}")
        crop = [_whole(f"crop_size.{key}", crop[key], 1, MAX_EDGE) for key in ("height", "width")]
        resample = config.get("resample", 3)
        if isinstance(resample, bool) or not isinstance(resample, int) or resample not in PIL_RESAMPLE_NAMES:
            names = ", ".join(f"{number} ({name})" for number, name in PIL_RESAMPLE_NAMES.items())
            raise ValueError(f"resample {resample!r} is not one of {names}")
        if flag("do_normalize"):
            mean, std = (config.get(key) for key in ("image_mean", "image_std"))
            mean, std = ([v] * 3 if isinstance(v, numbers.Real) and not isinstance(v, bool) else v for v in (mean, std))
            mean, std = _three("image_mean", mean, positive=False), _three("image_std", std, positive=True)
        else:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        if crop != [height, width]:
            edge = int(edge * min(height, width) / min(crop))
        return cls(resize_shortest_edge=edge, crop_size=(height, width), resample=PIL_RESAMPLE_NAMES[resample],
                   mean=mean, std=std)

    def to_dict(self) -> dict:
        d = {"resize_shortest_edge": self.resize_shortest_edge, "crop_size": list(self.crop_size),
             "resample": self.resample, "rescale_factor": 1 / 255, "mean": list(self.mean),
             "std": list(self.std), "color": "RGB"}
        if self.frames:
            d.update(frames=self.frames, frame_stride=self.frame_stride)
        if not self.keep_aspect_ratio:  # written only where it differs, so earlier artifacts read the same
            d["keep_aspect_ratio"] = False
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        """The inverse of `to_dict`, checked: a `ValueError` names the field."""
        if not isinstance(d, dict):
            raise ValueError(f"{d!r} is not an object")
        missing = [key for key in ("resize_shortest_edge", "crop_size", "resample", "mean", "std") if key not in d]
        if missing:
            raise ValueError(f"{', '.join(missing)} missing")
        _check_rescale(d.get("rescale_factor", 1 / 255))
        if d.get("color", "RGB") != "RGB":
            raise ValueError(f"color {d['color']!r}: this runtime feeds RGB only")
        return cls(d["resize_shortest_edge"], d["crop_size"], d["resample"], d["mean"], d["std"],
                   d.get("frames", 0), d.get("frame_stride", 1), d.get("keep_aspect_ratio", True))

    def clip(self, frames: list[Image.Image]) -> np.ndarray:
        """A clip's frames (as many as the model takes) to a normalized float32 array [3, frames, height, width]."""
        if len(frames) != self.frames:
            raise HieraRuntimeError(f"a clip of {len(frames)} frames: the model takes {self.frames}")
        return np.stack([self(frame) for frame in frames], axis=1)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One PIL image to a normalized float32 array [3, height, width]."""
        return self.normalize(self.crop(image))

    def crop(self, image: Image.Image) -> np.ndarray:
        """One PIL image resized and centre-cropped to the model's input: uint8 [height, width, 3]."""
        image = to_rgb(image)
        if not self.keep_aspect_ratio:
            crop_h, crop_w = self.crop_size
            return np.asarray(image.resize((crop_w, crop_h), RESAMPLE[self.resample]), dtype=np.uint8)
        width, height = image.size
        scale = self.resize_shortest_edge / min(width, height)
        # transformers rounds the long edge down (int()), so do we, to get the same pixels.
        size = (self.resize_shortest_edge, int(height * scale)) if width <= height else \
            (int(width * scale), self.resize_shortest_edge)
        if size[0] * size[1] > MAX_PIXELS:  # a 1 x 60000 image would resize to 256 x 15 million
            raise HieraRuntimeError(f"{width} x {height} pixels resize to {size[0]} x {size[1]}, above "
                                    f"{MAX_PIXELS / 1e6:.0f} megapixels: crop it closer to the model's aspect first")
        image = image.resize(size, RESAMPLE[self.resample])
        crop_h, crop_w = self.crop_size
        left, top = (size[0] - crop_w) // 2, (size[1] - crop_h) // 2
        return np.asarray(image.crop((left, top, left + crop_w, top + crop_h)), dtype=np.uint8)

    def normalize(self, crop: np.ndarray) -> np.ndarray:
        """A uint8 crop [height, width, 3] scaled to [0, 1] and normalized: float32 [3, height, width]."""
        pixels = crop.astype(np.float32) / 255
        pixels = (pixels - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
        return pixels.transpose(2, 0, 1)
