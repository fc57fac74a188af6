"""The runtime's image loading and preprocessing against transformers' own image processor.

The reference is `BitImageProcessor` as `facebook/hiera-*-224-hf` configure it (the Pillow backend,
which is what transformers uses without torchvision), applied to the image that transformers'
`load_image` would give it for orientation: the EXIF rotation applied. Every image goes through a real
file, so Pillow's decoders for each format and mode are part of what is compared.
"""

import numpy as np
import pytest
from PIL import Image, ImageOps
from transformers import BitImageProcessor

from export.parity import photographs
from runtime import HieraRuntimeError, Preprocessing, load_image

TOLERANCE = 1e-5  # max abs diff of the normalized pixels
OURS = Preprocessing.for_input_size((224, 224))


def hiera_processor(edge=256, crop=224) -> BitImageProcessor:
    """`facebook/hiera-*-224-hf`'s preprocessor_config.json."""
    return BitImageProcessor(do_resize=True, size={"shortest_edge": edge}, resample=Image.Resampling.BICUBIC,
                             do_center_crop=True, crop_size={"height": crop, "width": crop}, do_rescale=True,
                             do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                             do_convert_rgb=True)


def transformers_pixels(image) -> np.ndarray:
    return hiera_processor()(image, return_tensors="np")["pixel_values"][0]


def assert_matches(ours: np.ndarray, reference: np.ndarray, what: str) -> None:
    assert ours.shape == reference.shape == (3, 224, 224), what
    assert np.abs(ours - reference).max() <= TOLERANCE, what


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return photographs()["china.jpg"]


def test_photographs_match_transformers():
    for name, image in photographs().items():
        for picture in (image, image.rotate(90, expand=True)):  # landscape and portrait
            assert_matches(OURS(picture), transformers_pixels(picture), name)


def alpha_ramp(size) -> Image.Image:
    """Transparent on the left, opaque on the right: every alpha value occurs."""
    width, height = size
    return Image.fromarray(np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1)), mode="L")


def saved(image: Image.Image, path, **options) -> Image.Image:
    image.save(path, **options)
    return Image.open(path)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "P+transparency", "RGBA", "CMYK", "1", "RGB"])
def test_every_image_mode_matches_transformers(mode, photo, tmp_path):
    if mode == "LA":
        image = photo.convert("L")
        image.putalpha(alpha_ramp(photo.size))
    elif mode == "RGBA":
        image = photo.copy()
        image.putalpha(alpha_ramp(photo.size))
    elif mode == "P+transparency":
        image = photo.convert("P", palette=Image.Palette.ADAPTIVE)
        image.info["transparency"] = 0  # palette entry 0 is transparent
    else:
        image = photo.convert(mode)
    file = saved(image, tmp_path / ("image.jpg" if mode == "CMYK" else "image.png"),
                 **({"transparency": 0} if mode == "P+transparency" else {}))
    assert file.mode == mode.split("+")[0]
    assert_matches(OURS(load_image(file.filename)), transformers_pixels(file), mode)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_transformers_load_image_does(orientation, photo, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = orientation  # the EXIF Orientation tag
    path = tmp_path / "rotated.jpg"
    photo.save(path, exif=exif, quality=95)
    upright = ImageOps.exif_transpose(Image.open(path))
    assert upright.size == (photo.size if orientation <= 4 else photo.size[::-1])
    assert_matches(OURS(load_image(path)), transformers_pixels(upright), f"orientation {orientation}")


def test_sixteen_bit_grayscale_is_scaled_not_clipped(photo, tmp_path):
    """A 16-bit PNG: transformers' processor (Pillow's conversion) clips every value above 255, which
    leaves a white image; the runtime scales to 8 bits and then matches transformers on that image."""
    noise = np.random.default_rng(0).integers(-128, 129, photo.size[::-1])
    gray = np.clip(np.asarray(photo.convert("L"), np.int64) * 257 + noise, 0, 65535).astype(np.uint16)
    file = saved(Image.fromarray(gray), tmp_path / "deep.png")
    assert file.mode == "I;16"
    eight_bit = Image.fromarray(np.round(gray / 257).astype(np.uint8))
    assert_matches(OURS(load_image(file.filename)), transformers_pixels(eight_bit), "I;16")
    white = transformers_pixels(Image.new("L", photo.size, 255))
    assert np.abs(transformers_pixels(file) - white).mean() < 0.1, "transformers no longer clips 16-bit images"


@pytest.mark.parametrize("channels", [None, 1, 3, 4])
def test_arrays_match_transformers(channels, photo):
    pixels = np.asarray(photo)
    if channels == 4:
        pixels = np.dstack([pixels, np.asarray(alpha_ramp(photo.size))])
    elif channels in (None, 1):
        pixels = np.asarray(photo.convert("L"))
    reference = transformers_pixels(pixels[..., None] if channels is None else
                                    pixels[..., None] if channels == 1 else pixels)
    assert_matches(OURS(load_image(pixels if channels is None else pixels[..., None] if channels == 1 else pixels)),
                   reference, f"{channels} channels")


def test_bad_arrays_are_refused():
    with pytest.raises(HieraRuntimeError, match="uint8"):
        load_image(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(HieraRuntimeError, match="channels"):
        load_image(np.zeros((8, 8, 2), np.uint8))
