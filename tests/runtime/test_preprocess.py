"""The runtime's image loading and preprocessing against transformers' own image processor.

The reference is `BitImageProcessor` as `facebook/hiera-*-224-hf` configure it (the Pillow backend,
which is what transformers uses without torchvision), applied to the image that transformers'
`load_image` would give it for orientation: the EXIF rotation applied. Every image goes through a real
file, so Pillow's decoders for each format and mode are part of what is compared.
"""

import os

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


@pytest.mark.parametrize("settings", [
    dict(edge=256, crop=224, resample=Image.Resampling.BICUBIC, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    dict(edge=288, crop=256, resample=Image.Resampling.BILINEAR, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
])
def test_a_checkpoints_processor_config_gives_transformers_pixels(settings, photo):
    """`Preprocessing.from_image_processor` on the dict transformers itself writes to preprocessor_config.json."""
    crop = {"height": settings["crop"], "width": settings["crop"]}
    processor = BitImageProcessor(do_resize=True, size={"shortest_edge": settings["edge"]},
                                  resample=settings["resample"], do_center_crop=True, crop_size=crop, do_rescale=True,
                                  do_normalize=True, image_mean=settings["mean"], image_std=settings["std"],
                                  do_convert_rgb=True)
    config = processor.to_dict()
    ours = Preprocessing.from_image_processor(config, (settings["crop"], settings["crop"]))
    for picture in (photo, photo.rotate(90, expand=True)):
        reference = processor(picture, return_tensors="np")["pixel_values"][0]
        assert np.abs(ours(picture) - reference).max() <= TOLERANCE


def test_a_processor_for_another_crop_is_scaled_to_the_model():
    config = hiera_processor().to_dict()  # shortest edge 256, crop 224
    assert Preprocessing.from_image_processor(config, (224, 224)) == OURS
    assert Preprocessing.from_image_processor(config, (384, 384)) == Preprocessing.for_input_size((384, 384))


@pytest.mark.parametrize("change, message", [
    ({"size": {"shortest_edge": 0}}, "size.shortest_edge 0 is not a whole number from 1 to 16384"),
    ({"image_std": [0, 0, 0]}, r"image_std \[0, 0, 0\] is not three finite numbers above 0"),
    ({"image_std": 0}, r"image_std \[0, 0, 0\] is not three finite numbers above 0"),
    ({"image_mean": [0.5, 0.5]}, r"image_mean \[0.5, 0.5\] is not three finite numbers"),
    ({"size": {"height": 224, "width": 224}}, "size .*: this runtime resizes the shortest edge"),
    ({"crop_size": {"height": -1, "width": 224}}, "crop_size.height -1 is not a whole number"),
    ({"resample": 4}, r"resample 4 is not one of 0 \(nearest\), 1 \(lanczos\), 2 \(bilinear\), 3 \(bicubic\)"),
    ({"do_center_crop": False}, "do_center_crop false: this runtime always does it"),
    ({"do_rescale": "yes"}, "do_rescale 'yes' is not true or false"),
    ({"rescale_factor": 1.0}, "rescale_factor 1.0: this runtime scales pixels by 1/255 only"),
])
def test_processor_configs_this_runtime_cannot_follow_are_refused_by_field(change, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        Preprocessing.from_image_processor({**hiera_processor().to_dict(), **change}, (224, 224))


def test_from_dict_round_trips_and_names_what_is_wrong():
    clip = Preprocessing.for_clips((16, 224, 224))
    assert Preprocessing.from_dict(clip.to_dict()) == clip and Preprocessing.from_dict(OURS.to_dict()) == OURS
    for change, message in [({"resize_shortest_edge": None}, "resize_shortest_edge None is not a whole number"),
                            ({"crop_size": "224"}, "crop_size '224' is not"), ({"color": "BGR"}, "color 'BGR'"),
                            ({"rescale_factor": 2}, "rescale_factor 2"), ({"std": [1, 1, -1]}, "std")]:
        with pytest.raises(ValueError, match=message):
            Preprocessing.from_dict({**OURS.to_dict(), **change})
    with pytest.raises(ValueError, match="^mean, std missing$"):
        Preprocessing.from_dict({"resize_shortest_edge": 1, "crop_size": [1, 1], "resample": "nearest"})


def test_export_reads_a_checkpoints_processor_config_through_it(tmp_path):
    from export import ExportError
    from export.weights import preprocessing_for

    hiera_processor().save_pretrained(tmp_path)
    assert preprocessing_for(tmp_path, (224, 224)) == OURS
    config = tmp_path / "preprocessor_config.json"
    config.write_text(config.read_text().replace('"shortest_edge": 256', '"shortest_edge": 0'))
    with pytest.raises(ExportError) as refused:
        preprocessing_for(tmp_path, (224, 224))
    assert str(refused.value) == f"{config}: size.shortest_edge 0 is not a whole number from 1 to 16384"
    config.unlink()
    os.mkfifo(config)
    with pytest.raises(ExportError, match=r"preprocessor_config.json: a FIFO, not a regular file$"):
        preprocessing_for(tmp_path, (224, 224))
