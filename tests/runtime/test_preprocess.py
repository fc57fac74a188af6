"""The runtime's preprocessing against transformers' image processor as the Hiera checkpoints configure it."""

import numpy as np
from PIL import Image
from transformers import BitImageProcessor

from export.parity import photographs
from runtime.preprocess import Preprocessing

TOLERANCE = 1e-5  # max abs diff of the normalized pixels


def hiera_processor(edge=256, crop=224) -> BitImageProcessor:
    """`facebook/hiera-*-224-hf`'s preprocessor_config.json."""
    return BitImageProcessor(do_resize=True, size={"shortest_edge": edge}, resample=Image.Resampling.BICUBIC,
                             do_center_crop=True, crop_size={"height": crop, "width": crop}, do_rescale=True,
                             do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                             do_convert_rgb=True)


def test_photographs_match_transformers():
    ours = Preprocessing.for_input_size((224, 224))
    for name, image in photographs().items():
        for picture in (image, image.rotate(90, expand=True)):  # landscape and portrait
            expected = hiera_processor()(picture, return_tensors="np")["pixel_values"][0]
            got = ours(picture)
            assert got.shape == expected.shape == (3, 224, 224)
            assert np.abs(got - expected).max() <= TOLERANCE, name
