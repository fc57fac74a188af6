"""Images in, model input out: decoding, color conversion and the preprocessing an artifact describes.

The published checkpoints were trained with transformers' `BitImageProcessor` settings: resize the
shortest edge (bicubic), center crop, scale to [0, 1], normalize with the mean and std, RGB. Color
conversion follows the same processor (transparency composited onto white), with two additions a file
needs and the processor leaves to its caller: the EXIF orientation is applied, as transformers'
`load_image` does, and 16-bit grayscale is scaled to 8 bits where Pillow's conversion would clip it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import HieraRuntimeError

RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
# What a directory is searched for; any file named on the command line is tried whatever its name.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".avif")
# Decompression-bomb guard: a 64-megapixel RGB image already takes 192 MB once decoded. Pillow's own
# guard only warns below 179 megapixels.
MAX_PIXELS = 64_000_000
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def open_image(path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file completely, upright (EXIF orientation applied), in its own mode."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies instead
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise HieraRuntimeError(f"{path}: {width} x {height} is {width * height / 1e6:.0f} megapixels, "
                                            f"above the limit of {max_pixels / 1e6:.0f} (a decompression-bomb guard)")
                image.load()
                return ImageOps.exif_transpose(image)  # a new image, also when there is nothing to rotate
    except FileNotFoundError:
        raise HieraRuntimeError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise HieraRuntimeError(f"{path}: is a directory") from None
    except PermissionError:
        raise HieraRuntimeError(f"{path}: permission denied") from None
    except UnidentifiedImageError:
        what = "empty file" if path.stat().st_size == 0 else "not an image Pillow can read"
        raise HieraRuntimeError(f"{path}: {what}") from None
    except Image.DecompressionBombError as error:
        raise HieraRuntimeError(f"{path}: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:  # what Pillow's decoders raise on bad data
        raise HieraRuntimeError(f"{path}: cannot decode ({error})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB, as transformers' `convert_to_rgb` does (transparency onto white)."""
    if image.mode in SIXTEEN_BIT:
        # Pillow converts 16-bit to 8-bit by clipping at 255, which turns most of a real image white.
        image = Image.fromarray(np.round(np.asarray(image, np.float64) / 257).astype(np.uint8))
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
    or PNG, multi-page TIFF) or a directory of frame images (in name order)."""
    path = Path(path)
    if path.is_dir():
        files = find_images(path)
        return [open_image(files[i], max_pixels) for i in sample_frames(len(files), frames, stride)]
    open_image(path, max_pixels)  # a single image's checks and errors, on the first frame
    try:
        with Image.open(path) as video:
            count = getattr(video, "n_frames", 1)
            if count == 1:
                raise HieraRuntimeError(f"{path}: a single image, not a clip; pass a multi-frame file (animated GIF, "
                                        "WebP or PNG, multi-page TIFF) or a directory of frames (ffmpeg -i clip.mp4 "
                                        "DIR/%05d.png makes one)")
            clip = []
            for index in sample_frames(count, frames, stride):
                video.seek(index)
                clip.append(ImageOps.exif_transpose(video.copy()))
            return clip
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise HieraRuntimeError(f"{path}: cannot decode its frames ({error})") from None


def load_clip(source, frames: int, stride: int, max_pixels: int = MAX_PIXELS) -> list[Image.Image]:
    """A clip's sampled frames, upright RGB: from a path (see `open_clip`) or a list of frames (paths, Pillow
    images or uint8 arrays), sampled the same way."""
    if isinstance(source, (str, Path)):
        return [to_rgb(frame) for frame in open_clip(source, frames, stride, max_pixels)]
    if isinstance(source, (list, tuple)) and source:
        return [load_image(source[i], max_pixels) for i in sample_frames(len(source), frames, stride)]
    raise HieraRuntimeError(f"a clip of type {type(source).__name__}: expected a path (a multi-frame file or a "
                            "directory of frames) or a non-empty list of frames")


@dataclass(frozen=True)
class Preprocessing:
    resize_shortest_edge: int
    crop_size: tuple[int, int]  # (height, width)
    resample: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    frames: int = 0  # video: frames per clip (0: an image model)
    frame_stride: int = 1  # video: the temporal stride the clip is sampled at

    @classmethod
    def for_input_size(cls, input_size) -> Preprocessing:
        """The ImageNet recipe scaled to an image input size: shortest edge input / 0.875 (256 for 224)."""
        return cls(resize_shortest_edge=int(min(input_size) / 0.875), crop_size=tuple(input_size))

    @classmethod
    def for_clips(cls, input_size, frame_stride: int = 4) -> Preprocessing:
        """Kinetics clips as SlowFast and MAE-ST evaluate them (FAIR publishes no video preprocessing for
        Hiera): every `frame_stride`-th frame, shortest edge to the crop size (bilinear), centre crop, the
        Kinetics mean 0.45 and std 0.225."""
        frames, height, width = input_size
        return cls(resize_shortest_edge=min(height, width), crop_size=(height, width), resample="bilinear",
                   mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225), frames=frames, frame_stride=frame_stride)

    def to_dict(self) -> dict:
        d = {"resize_shortest_edge": self.resize_shortest_edge, "crop_size": list(self.crop_size),
             "resample": self.resample, "rescale_factor": 1 / 255, "mean": list(self.mean),
             "std": list(self.std), "color": "RGB"}
        if self.frames:
            d.update(frames=self.frames, frame_stride=self.frame_stride)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        if d["resample"] not in RESAMPLE:
            raise ValueError(f"resample {d['resample']!r} is not one of {', '.join(RESAMPLE)}")
        return cls(int(d["resize_shortest_edge"]), tuple(int(x) for x in d["crop_size"]), d["resample"],
                   tuple(float(x) for x in d["mean"]), tuple(float(x) for x in d["std"]),
                   int(d.get("frames", 0)), int(d.get("frame_stride", 1)))

    def clip(self, frames: list[Image.Image]) -> np.ndarray:
        """A clip's frames (as many as the model takes) to a normalized float32 array [3, frames, height, width]."""
        if len(frames) != self.frames:
            raise HieraRuntimeError(f"a clip of {len(frames)} frames: the model takes {self.frames}")
        return np.stack([self(frame) for frame in frames], axis=1)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One PIL image to a normalized float32 array [3, height, width]."""
        image = to_rgb(image)
        width, height = image.size
        scale = self.resize_shortest_edge / min(width, height)
        # transformers rounds the long edge down (int()), so do we, to get the same pixels.
        size = (self.resize_shortest_edge, int(height * scale)) if width <= height else \
            (int(width * scale), self.resize_shortest_edge)
        image = image.resize(size, RESAMPLE[self.resample])
        crop_h, crop_w = self.crop_size
        left, top = (size[0] - crop_w) // 2, (size[1] - crop_h) // 2
        pixels = np.asarray(image.crop((left, top, left + crop_w, top + crop_h)), dtype=np.float32) / 255
        pixels = (pixels - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
        return pixels.transpose(2, 0, 1)
