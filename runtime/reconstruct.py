"""MAE reconstructions as pictures: the model's patches put back together, next to what it was shown.

An MAE model predicts, for every patch of `pred_stride` x `pred_stride` pixels, the pixels in channel-major
order; with `norm_pix_loss` (all published Hiera MAE checkpoints) each predicted patch is normalized to
zero mean and unit variance, so it is drawn with the mean and spread of the original patch, as FAIR's
README advises: the picture shows the predicted structure, not predicted brightness.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .preprocess import Preprocessing

MASKED_GRAY = 0.5  # how the masked patches look in the "masked" panel, in [0, 1]
GAP = 8  # pixels between panels


def patches(pixel_values: np.ndarray, stride: int) -> np.ndarray:
    """[channels, height, width] -> [patches, channels * stride * stride], patches row-major, pixels channel-major."""
    channels, height, width = pixel_values.shape
    grid = pixel_values.reshape(channels, height // stride, stride, width // stride, stride)
    return grid.transpose(1, 3, 0, 2, 4).reshape(-1, channels * stride * stride)


def unpatch(rows: np.ndarray, stride: int, height: int, width: int) -> np.ndarray:
    """The inverse of `patches`: [patches, channels * stride * stride] -> [channels, height, width]."""
    channels = rows.shape[1] // (stride * stride)
    grid = rows.reshape(height // stride, width // stride, channels, stride, stride)
    return grid.transpose(2, 0, 3, 1, 4).reshape(channels, height, width)


def panels(pixel_values: np.ndarray, logits: np.ndarray, visible: np.ndarray, preprocessing: Preprocessing,
           stride: int, norm_pix_loss: bool) -> dict[str, np.ndarray]:
    """One image's `original`, `masked` and `reconstruction` (visible patches as given, masked ones
    predicted) as HWC uint8 arrays, from its model input [3, H, W] and the model's `logits` and `visible`."""
    _, height, width = pixel_values.shape
    target = patches(pixel_values, stride)
    predicted = logits.astype(np.float64)
    if norm_pix_loss:  # the targets were normalized per patch (unbiased variance, as torch.var)
        mean, var = target.mean(axis=1, keepdims=True), target.var(axis=1, ddof=1, keepdims=True)
        predicted = predicted * np.sqrt(var + 1e-6) + mean
    keep = visible[:, None]
    mean, std = (np.asarray(v, np.float64)[:, None, None] for v in (preprocessing.mean, preprocessing.std))

    def to_rgb(normalized_rows: np.ndarray) -> np.ndarray:
        image = unpatch(normalized_rows, stride, height, width) * std + mean
        return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)

    gray = (MASKED_GRAY - mean.reshape(1, -1, 1)) / std.reshape(1, -1, 1)  # per channel, in model space
    gray = np.broadcast_to(gray, (1, 3, stride * stride)).reshape(1, -1)
    return {"original": to_rgb(target), "masked": to_rgb(np.where(keep, target, gray)),
            "reconstruction": to_rgb(np.where(keep, target, predicted))}


def side_by_side(images: list[np.ndarray]) -> Image.Image:
    """HWC uint8 arrays of one height in a row on white, `GAP` pixels apart."""
    height = images[0].shape[0]
    width = sum(image.shape[1] for image in images) + GAP * (len(images) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    left = 0
    for image in images:
        canvas.paste(Image.fromarray(image), (left, 0))
        left += image.shape[1] + GAP
    return canvas
