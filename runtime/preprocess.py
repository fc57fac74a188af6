"""Image preprocessing in numpy and Pillow, as the artifact's metadata describes it.

The published checkpoints were trained with transformers' `BitImageProcessor` settings: resize the
shortest edge (bicubic), center crop, scale to [0, 1], normalize with the mean and std, RGB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class Preprocessing:
    resize_shortest_edge: int
    crop_size: tuple[int, int]  # (height, width)
    resample: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @classmethod
    def for_input_size(cls, input_size) -> Preprocessing:
        """The ImageNet recipe scaled to an input size: shortest edge input / 0.875 (256 for 224)."""
        return cls(resize_shortest_edge=int(min(input_size) / 0.875), crop_size=tuple(input_size))

    def to_dict(self) -> dict:
        return {"resize_shortest_edge": self.resize_shortest_edge, "crop_size": list(self.crop_size),
                "resample": self.resample, "rescale_factor": 1 / 255, "mean": list(self.mean),
                "std": list(self.std), "color": "RGB"}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(int(d["resize_shortest_edge"]), tuple(d["crop_size"]), d["resample"], tuple(d["mean"]),
                   tuple(d["std"]))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One RGB PIL image to a normalized float32 array [3, height, width]."""
        image = image.convert("RGB")
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
