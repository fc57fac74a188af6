"""Segment anything, torch-free: SAM 2's image encoder artifact once per image, its mask decoder artifact once per
group of prompts.

    import runtime
    seg = runtime.load_segmenter("hiera_sam2_1_hiera_tiny_image-encoder.onnx",
                                 "hiera_sam2_1_hiera_tiny_mask-decoder.onnx")
    seg.set_image("photo.jpg")                              # the encoder runs here, once
    result = seg.predict(points=[(200, 150)])               # one prompt: its points (label 1 unless given)
    result = seg.predict(boxes=[(10, 20, 300, 240), ...])   # one prompt per box (with `points`, each box has them)
    result.masks, result.scores                             # [prompts, masks, height, width] bool, [prompts, masks]

Coordinates are pixels of the original image, x to the right and y down; they are scaled to the encoder's input
frame as transformers' `Sam2Processor` does (x by input width / image width, y by input height / image height).
The decoder's low-resolution logits are resized to the original image with bilinear interpolation
(align_corners False) and thresholded at 0, as `Sam2ImageProcessor.post_process_masks` does (without its
optional hole and sprinkle filling, which is off by default there too).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import HieraRuntimeError
from .model import FeatureExtractor, MaskDecoder, load
from .preprocess import MAX_PIXELS, load_image

MAX_PROMPTS = 64  # prompts per image in one call (the decoder is traced for up to this many)
MAX_POINTS = 16  # tokens per prompt: points and a box's two corners
USER_LABELS = {1: "positive", 0: "negative"}  # what a caller may give a point; 2, 3 are box corners, -1 padding
BOX_LABELS = (2.0, 3.0)
MASK_THRESHOLD = 0.0
# One predict's masks at the image's size, one byte a pixel: 64 prompts x 3 masks of a 12-megapixel photo would be
# 2.3 GB (and 18 GB of float64 logits resized at once, as this code did before), so they are bounded like images.
MAX_MASK_PIXELS = 1 << 30
OVERLAY_COLORS = np.array([(30, 144, 255), (255, 64, 64), (64, 200, 64), (255, 190, 0), (200, 64, 255),
                           (0, 210, 210)], np.float32)


@dataclass
class Segmentation:
    """One `predict`'s answer for its P prompts: `masks` [P, M, H, W] bool at the original size, `scores` [P, M]
    (the predicted IoU), `logits` [P, M, h, w] (the decoder's low-resolution logits). M is 1, or 3 with
    multimask."""

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray


def bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """[size_out, size_in]: resizing one axis as torch's bilinear interpolation with align_corners=False does
    (without antialiasing): output i reads input (i + 0.5) * in / out - 0.5, clamped at 0, between its two
    neighbours. The source positions are computed in float32, as torch computes them for float32 logits; torch
    also blends in float32, so the two agree to about 1e-5 of the largest step between neighbouring logits."""
    scale = np.float32(size_in) / np.float32(size_out)
    source = np.maximum(scale * (np.arange(size_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5),
                        np.float32(0))
    low = np.minimum(np.floor(source).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    weight = np.clip(source - low.astype(np.float32), 0, 1).astype(np.float64)
    matrix = np.zeros((size_out, size_in), np.float64)
    np.add.at(matrix, (np.arange(size_out), low), 1.0 - weight)
    np.add.at(matrix, (np.arange(size_out), high), weight)
    return matrix


def upsample_logits(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[..., h, w] low-resolution logits to [..., height, width] (`size`), bilinear as `bilinear_matrix`."""
    rows, cols = bilinear_matrix(logits.shape[-2], size[0]), bilinear_matrix(logits.shape[-1], size[1])
    return np.einsum("Hh,...hw,Ww->...HW", rows, logits.astype(np.float64), cols, optimize=True)


def coco_rle(mask: np.ndarray) -> dict:
    """A binary mask as COCO's uncompressed run-length encoding: runs over the pixels in column-major order,
    starting with a run of zeros (possibly empty)."""
    flat = np.asarray(mask, bool).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The image (HWC uint8) with each mask [N, H, W] tinted in its own color."""
    picture = image.astype(np.float32)
    for index, mask in enumerate(masks):
        color = OVERLAY_COLORS[index % len(OVERLAY_COLORS)]
        picture[mask] = (1 - alpha) * picture[mask] + alpha * color
    return Image.fromarray(np.clip(picture + 0.5, 0, 255).astype(np.uint8))


def check_belongs(encoder: FeatureExtractor, decoder: MaskDecoder) -> None:
    """The decoder was exported from the same checkpoint as the encoder (variant, weights, input size)."""
    theirs, ours = decoder.info.encoder, encoder.info
    mine = {"variant": ours.variant, "weights": ours.weights and {k: ours.weights.get(k) for k in ("source", "sha256")},
            "input_size": list(ours.input_size)}
    wanted = {"variant": theirs["variant"], "weights": {k: theirs["weights"].get(k) for k in ("source", "sha256")},
              "input_size": theirs["input_size"]}
    differ = [key for key in wanted if mine[key] != wanted[key]]
    if differ:
        key = differ[0]
        raise HieraRuntimeError(f"{decoder.session.path}: this mask decoder belongs to another encoder: its "
                                f"{key} is {json.dumps(wanted[key])}, {encoder.session.path}'s is "
                                f"{json.dumps(mine[key])}")


class Segmenter:
    """An image encoder and its mask decoder: `set_image` runs the encoder once, `predict` the decoder per call.
    `encoder_runs` counts the encoder's runs."""

    def __init__(self, encoder: FeatureExtractor, decoder: MaskDecoder, max_pixels: int = MAX_PIXELS):
        if encoder.info.task != "image-encoder":
            raise HieraRuntimeError(f"{encoder.session.path}: a {encoder.info.task} model, not SAM 2's image encoder")
        check_belongs(encoder, decoder)
        self.encoder, self.decoder, self.max_pixels = encoder, decoder, max_pixels
        self.warnings = [*encoder.warnings, *decoder.warnings]
        self.encoder_runs = 0
        self.image: np.ndarray | None = None  # the original image, HWC uint8
        self._embedding: dict[str, np.ndarray] | None = None

    def set_image(self, image) -> None:
        """Embed one image (a path, a Pillow image or an HWC uint8 array): one encoder run."""
        picture = load_image(image, self.max_pixels)
        pixel_values = self.encoder.info.preprocessing(picture)[None]
        outputs = self.encoder.session.run(pixel_values)
        self.encoder_runs += 1
        for name, value in outputs.items():
            if not np.isfinite(value).all():
                raise HieraRuntimeError(f"{_name(image)}: the encoder's {name} is not finite")
        self.image = np.asarray(picture)
        self._embedding = {name: outputs[name] for name in ("image_embeddings", "high_res_feats_0",
                                                             "high_res_feats_1")}

    def set_embedding(self, embedding: dict, size) -> None:
        """Take the encoder's three outputs for an image of `size` (height, width) that was embedded elsewhere (a
        Triton server's encoder model): `predict` then answers as after `set_image` of that image. `image` becomes
        a blank of that size (there is no picture to draw an overlay on)."""
        height, width = (int(side) for side in size)
        if not (height > 0 and width > 0 and height * width <= self.max_pixels):
            raise HieraRuntimeError(f"image size {height} x {width}: give a height and width of at least 1 and at most "
                                    f"{self.max_pixels} pixels in all")
        names = ("image_embeddings", "high_res_feats_0", "high_res_feats_1")
        for name in names:
            if name not in embedding:
                raise HieraRuntimeError(f"the embedding has no {name} (give the image encoder's three outputs)")
            if not np.isfinite(embedding[name]).all():
                raise HieraRuntimeError(f"the embedding's {name} is not finite")
        self.image = np.broadcast_to(np.zeros((), np.uint8), (height, width, 3))  # a size, no memory
        self._embedding = {name: np.asarray(embedding[name]) for name in names}

    def prompts(self, points=None, boxes=None) -> tuple[np.ndarray, np.ndarray]:
        """The decoder's `point_coords` [P, N, 2] (in the encoder's input frame) and `point_labels` [P, N] for
        `points` ((x, y) or (x, y, label) in pixels of the image, one prompt) and `boxes` ((x0, y0, x1, y1), one
        prompt each, with the points if both are given); one line for anything SAM 2 cannot take."""
        if self.image is None:
            raise HieraRuntimeError("no image: call set_image first")
        height, width = self.image.shape[:2]
        points = [] if points is None else [tuple(point) for point in points]
        boxes = [] if boxes is None else [tuple(box) for box in boxes]
        if not points and not boxes:
            raise HieraRuntimeError("empty prompt: give at least one point or one box")
        coords, labels = [], []
        for point in points:
            if len(point) not in (2, 3):
                raise HieraRuntimeError(f"point {_show(point)}: give x, y or x, y, label")
            shown = f"point {_show(point)}"
            x, y = _coordinate(point[0], "x", shown, width), _coordinate(point[1], "y", shown, height)
            label = point[2] if len(point) == 3 else 1
            if isinstance(label, bool) or label not in USER_LABELS:
                raise HieraRuntimeError(f"point {_show(point)}: label {label!r} is not one SAM 2 defines for a point "
                                        "(1 positive, 0 negative)")
            coords.append((x, y))
            labels.append(float(label))
        for box in boxes:
            if len(box) != 4:
                raise HieraRuntimeError(f"box {_show(box)}: give x0, y0, x1, y1")
            shown = f"box {_show(box)}"
            x0, y0 = _coordinate(box[0], "x0", shown, width), _coordinate(box[1], "y0", shown, height)
            x1, y1 = _coordinate(box[2], "x1", shown, width), _coordinate(box[3], "y1", shown, height)
            if x1 < x0 or y1 < y0:
                raise HieraRuntimeError(f"box {_show(box)}: x1 < x0 or y1 < y0 (give the top-left corner first)")
        count = max(len(boxes), 1)
        if count > MAX_PROMPTS or len(points) + 2 * bool(boxes) > MAX_POINTS:
            raise HieraRuntimeError(f"{count} prompts of {len(points) + 2 * bool(boxes)} points: at most "
                                    f"{MAX_PROMPTS} prompts of at most {MAX_POINTS} points (a box counts as 2)")
        prompt_coords = np.array([coords] * count, np.float64).reshape(count, len(points), 2)
        prompt_labels = np.array([labels] * count, np.float32).reshape(count, len(points))
        if boxes:
            corners = np.array(boxes, np.float64).reshape(count, 2, 2)
            prompt_coords = np.concatenate([prompt_coords, corners], axis=1)
            prompt_labels = np.concatenate([prompt_labels, np.tile(np.array(BOX_LABELS, np.float32), (count, 1))], 1)
        frame_height, frame_width = self.encoder.info.input_size[-2:]
        scale = np.array([frame_width / width, frame_height / height])  # Sam2Processor's _normalize_coordinates
        return (prompt_coords * scale).astype(np.float32), prompt_labels

    def predict(self, points=None, boxes=None, multimask: bool = False, mask_input=None) -> Segmentation:
        """Masks for one prompt (`points`) or one per box (see `prompts`), on the image `set_image` embedded: the
        single-mask answer (SAM 2's, with its fallback to the best of three when unstable), or with `multimask`
        three masks per prompt. `mask_input`: low-resolution logits of an earlier answer ([h, w], the same for every
        prompt, or [prompts, h, w]), which SAM 2 refines."""
        coords, labels = self.prompts(points, boxes)
        height, width = self.image.shape[:2]
        count = len(coords) * (3 if multimask else 1)
        pixels = count * height * width
        if pixels > MAX_MASK_PIXELS:
            raise HieraRuntimeError(f"{count} masks of {width} x {height} pixels are {pixels / 1e9:.1f} gigapixels, "
                                    f"above the limit of {MAX_MASK_PIXELS / 1e9:.1f} for one call: give fewer prompts, "
                                    "or a smaller image")
        side = 4 * self._embedding["image_embeddings"].shape[-1]  # the low-resolution masks' side
        has_mask = np.zeros(len(coords), np.float32)
        masks_in = np.zeros((len(coords), 1, side, side), np.float32)
        if mask_input is not None:
            given = np.asarray(mask_input, np.float32)
            if given.shape not in ((side, side), (len(coords), side, side)) or not np.isfinite(given).all():
                raise HieraRuntimeError(f"mask_input of shape {list(given.shape)}: give finite low-resolution logits "
                                        f"[{side}, {side}] or [{len(coords)}, {side}, {side}] (an answer's logits)")
            masks_in[:, 0] = given
            has_mask[:] = 1
        outputs = self.decoder.session.run(
            self._embedding["image_embeddings"], high_res_feats_0=self._embedding["high_res_feats_0"],
            high_res_feats_1=self._embedding["high_res_feats_1"], point_coords=coords, point_labels=labels,
            mask_input=masks_in, has_mask_input=has_mask)
        chosen = slice(1, None) if multimask else slice(0, 1)
        logits, scores = outputs["masks"][:, chosen], outputs["iou_scores"][:, chosen]
        if not (np.isfinite(logits).all() and np.isfinite(scores).all()):
            raise HieraRuntimeError(f"{self.decoder.session.path}: the decoder's outputs are not finite")
        masks = np.empty((*logits.shape[:2], height, width), bool)
        for prompt, mask in np.ndindex(*logits.shape[:2]):  # one mask at a time: one image of float64, not P x M
            masks[prompt, mask] = upsample_logits(logits[prompt, mask], (height, width)) > MASK_THRESHOLD
        return Segmentation(masks=masks, scores=scores, logits=logits)


def load_segmenter(encoder, decoder, *, max_pixels: int = MAX_PIXELS, check: bool = True, allow_failed: bool = False,
                   **options) -> Segmenter:
    """A `Segmenter` from SAM 2's image encoder artifact and the mask decoder artifact exported from the same
    checkpoint (refused in one line otherwise); `options` as for `runtime.load` (provider, threads, ...).
    Each is loaded as whatever its metadata says it is, so that a file given in the other's place (the two
    swapped, a classifier) is refused with what it is and where it belongs, not with a class of the API. The
    decoder, the smaller, is loaded first: a wrong one is refused before the encoder's session is built."""
    decoder_model = load(decoder, check=check, allow_failed=allow_failed, **options)
    if not isinstance(decoder_model, MaskDecoder):
        raise HieraRuntimeError(f"{decoder_model.session.path}: a {decoder_model.info.task} model, not SAM 2's mask "
                                "decoder (python -m export --task mask-decoder writes it)")
    encoder_model = load(encoder, max_pixels=max_pixels, check=check, allow_failed=allow_failed, **options)
    if encoder_model.info.task != "image-encoder":
        raise HieraRuntimeError(f"{encoder_model.session.path}: a {encoder_model.info.task} model, not SAM 2's "
                                "image encoder (the encoder comes first, then its mask decoder)")
    return Segmenter(encoder_model, decoder_model, max_pixels)


def _coordinate(value, name: str, shown: str, limit: int) -> float:
    """A finite coordinate inside the image (0 to its width or height)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value):
        raise HieraRuntimeError(f"{shown}: {name} {value!r} is not a number")
    if not 0 <= value <= limit:
        raise HieraRuntimeError(f"{shown}: {name} {value:g} is outside the image (0 to {limit})")
    return float(value)


def _show(values) -> str:
    return ",".join(f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else repr(v) for v in values)


def _name(image) -> str:
    return str(image) if isinstance(image, (str, Path)) else "the image"


def command(args) -> int:
    """python -m runtime segment IMAGE... --model ENCODER --decoder DECODER --point X,Y[,LABEL]... --box
    X0,Y0,X1,Y1...: every image is segmented into a staging folder, then the folder --out is replaced whole."""
    from .commit import replacing
    from .shell import say

    if args.crop_size is not None:
        raise HieraRuntimeError("--crop-size: SAM 2's encoder carries its own preprocessing; segment takes no other")
    if not args.point and not args.box:
        raise HieraRuntimeError("empty prompt: give at least one --point X,Y or --box X0,Y0,X1,Y1")
    stems = [image.stem for image in args.images]
    twice = next((stem for stem in stems if stems.count(stem) > 1), None)
    if twice is not None:
        raise HieraRuntimeError(f"two images named {twice}: their masks would have one name; segment them apart")
    try:  # nothing is written before `replacing` below: an interruption here leaves --out untouched, and says so
        segmenter = load_segmenter(args.model, args.decoder, max_pixels=int(args.max_megapixels * 1e6),
                                   check=args.check, allow_failed=args.allow_failed, provider=args.provider,
                                   threads=args.threads, cache_dir=args.cache_dir,
                                   inference_precision=args.inference_precision)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"{args.out} is as it was: nothing was written") from None
    for warning in segmenter.warnings:
        say(f"warning: {warning}", sys.stderr)
    documents = []
    # Each image's masks go into the staging folder as soon as they are made (memory holds one image's, whatever
    # the number of images); --out is replaced only when every image is done, and is as it was otherwise.
    with replacing(args.out, "python -m runtime segment") as folder:
        for image in args.images:
            segmenter.set_image(image)
            try:
                answer = segmenter.predict(args.point, args.box, args.multimask)
            except HieraRuntimeError as error:
                raise HieraRuntimeError(f"{image}: {error}") from None
            picture = segmenter.image
            document = {"image": str(image), "size": list(picture.shape[:2]), "masks": []}
            for prompt, (masks, scores) in enumerate(zip(answer.masks, answer.scores)):
                for index, (mask, score) in enumerate(zip(masks, scores)):
                    name = f"{image.stem}.prompt{prompt}.mask{index}.png"
                    Image.fromarray(mask.astype(np.uint8) * 255).save(folder.staging / name, format="PNG")
                    entry = {"prompt": prompt, "mask": index, "score": float(score), "area": int(mask.sum()),
                             "file": name}
                    document["masks"].append({**entry, "rle": coco_rle(mask)} if args.json else entry)
            if args.overlay:
                chosen = answer.masks.reshape(-1, *answer.masks.shape[-2:])
                overlay(picture, chosen).save(folder.staging / f"{image.stem}.overlay.png", format="PNG")
            documents.append(document)
    try:
        for document in documents:
            if args.json:
                say(json.dumps(document, allow_nan=False))
            else:
                for entry in document["masks"]:
                    say(f"{document['image']}: prompt {entry['prompt']} mask {entry['mask']}: score "
                        f"{entry['score']:.4f}, {entry['area']} pixels -> {args.out / entry['file']}")
    except KeyboardInterrupt:  # the folder was committed whole before the first line
        raise KeyboardInterrupt(f"{args.out} holds the new masks (not every line was printed)") from None
    return 0
