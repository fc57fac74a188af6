"""A small SAM 2 trained on synthetic shapes, to measure what export precisions do to real masks.

Random weights make masks that hardly depend on the prompt, so they cannot show what fp16 or int8 do to a mask's
edge. This trains transformers' own `Sam2Model` (HieraDet trunk with windows, global blocks, the window position
table and query pooling; the FPN neck with its high-resolution features; the prompt encoder and mask decoder) on
seeded synthetic images (filled discs, rectangles and triangles in random colours on textured backgrounds) with
prompts sampled as SAM trains (a point inside the target with three masks, a jittered box, a point and a second
positive or negative point), with SAM's loss (focal and dice on the masks, the one of the three with the least loss
for a single point; mean squared error on the predicted IoU). It saves it with `save_pretrained`, and evaluates the
exported family (each encoder precision through each decoder precision) on held-out images against it.

    python -m tools.shapes train                      # stage 0 of 4 (models/shapes/README.md); writes models/shapes/
    python -m tools.shapes evaluate --out /tmp/shapes # exports the family, prints mask IoU per precision
    python -m tools.shapes images heldout/            # held-out images as PNGs
"""

from __future__ import annotations

import functools
import json
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]

from hiera_model import HieraModelError  # noqa: E402
from runtime.errors import HieraRuntimeError  # noqa: E402
from runtime.preprocess import Preprocessing  # noqa: E402
from runtime.shell import Parser, Whole, run_command  # noqa: E402

CHECKPOINT = ROOT / "models" / "shapes"
SIZE = 128  # the input frame: a 32 x 32 token grid, 8 x 8 image embedding, 32 x 32 low-resolution masks
PREPROCESSING = Preprocessing.for_sam2((SIZE, SIZE))
TRAIN_SEED, HELDOUT_SEED = 0, 1  # the images' generators: held-out images are never trained on
MIN_AREA = 48  # pixels of a shape left visible, to be a target
TARGETS = 2  # objects prompted per image and step (every image has at least this many)
MAX_STEPS = 20000
# SAM's loss weights: focal 20, dice 1, IoU prediction 1 (Kirillov et al. 2023, section 3 and appendix A)
FOCAL_WEIGHT, DICE_WEIGHT, IOU_WEIGHT = 20.0, 1.0, 1.0
# SAM 2's stability fallback (transformers' defaults, which model_config keeps): the single mask is kept where the
# area above +delta over the area above -delta reaches the threshold
STABILITY = (0.05, 0.98)  # (delta, threshold)


def model_config():
    """A small transformers `Sam2Config` that keeps every feature of the published ones: windows in every stage,
    padded windows (stage 3's 6 on an 8 x 8 grid), two global blocks, the window position table tiled over a
    7 x 7 background table, three query poolings, the neck's top-down levels and its high-resolution features."""
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2VisionConfig

    backbone = Sam2HieraDetConfig(
        hidden_size=16, num_attention_heads_per_stage=[1, 2, 4, 8], blocks_per_stage=[1, 2, 3, 1],
        embed_dim_per_stage=[16, 32, 64, 128], window_size_per_stage=[4, 4, 6, 2], global_attention_blocks=[2, 4],
        window_positional_embedding_background_size=[7, 7], image_size=[SIZE, SIZE])
    grid = SIZE // 4
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[128, 64, 32, 16], fpn_hidden_size=64,
                              backbone_feature_sizes=[[grid, grid], [grid // 2, grid // 2], [grid // 4, grid // 4]])
    return Sam2Config(vision_config=vision, prompt_encoder_config=dict(hidden_size=64, image_size=SIZE),
                      mask_decoder_config=dict(hidden_size=64, mlp_dim=256, num_attention_heads=4,
                                               iou_head_hidden_dim=64))


# -- the synthetic images ---------------------------------------------------------------------------------------

def _smooth_noise(rng, cells: int) -> np.ndarray:
    """[SIZE, SIZE] in 0..1: a random `cells` x `cells` grid, resized bicubic (a low-frequency texture)."""
    grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((SIZE, SIZE), Image.Resampling.BICUBIC), np.float32) / 255


def _shape_mask(rng) -> np.ndarray:
    """One filled disc (an ellipse), rectangle (rotated) or triangle, somewhere in the frame, as a bool map."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    cx, cy = rng.uniform(0.1, 0.9, 2) * SIZE
    kind = rng.integers(3)
    if kind == 0:  # disc (ellipse)
        rx, ry = rng.uniform(6, 30, 2)
        angle = rng.uniform(0, np.pi)
        u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
        v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
        return (u / rx) ** 2 + (v / ry) ** 2 <= 1
    if kind == 1:  # rectangle
        half_w, half_h = rng.uniform(5, 30, 2)
        angle = rng.uniform(0, np.pi) if rng.random() < 0.5 else 0.0
        u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
        v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
        return (np.abs(u) <= half_w) & (np.abs(v) <= half_h)
    corners = np.array([cx, cy]) + rng.uniform(-35, 35, (3, 2))  # triangle: on one side of each edge
    inside = []
    for i in range(3):
        (x0, y0), (x1, y1), (x2, y2) = corners[i], corners[(i + 1) % 3], corners[(i + 2) % 3]
        edge = (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)
        inside.append(edge * ((x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)) >= 0)
    return inside[0] & inside[1] & inside[2]


def _colour(rng, away_from: np.ndarray) -> np.ndarray:
    """A random RGB colour at least 80 (sum of the channels' differences) from `away_from`."""
    while True:
        colour = rng.uniform(0, 255, 3)
        if np.abs(colour - away_from).sum() >= 80:
            return colour


def make_image(rng) -> tuple[np.ndarray, list[np.ndarray]]:
    """An HWC uint8 image and the visible masks of its shapes (at least `TARGETS`, each at least `MIN_AREA`):
    two to five shapes painted in turn over a textured background, each hiding what it covers."""
    while True:
        base, other = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        blend = _smooth_noise(rng, int(rng.integers(2, 9)))[..., None]
        if rng.random() < 0.5:  # stripes of a random frequency and direction
            y, x = np.mgrid[0:SIZE, 0:SIZE]
            angle, period = rng.uniform(0, np.pi), rng.uniform(6, 40)
            stripes = 0.5 + 0.5 * np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)
            blend = 0.5 * blend + 0.5 * stripes[..., None]
        image = base * (1 - blend) + other * blend
        background = image.reshape(-1, 3).mean(0)
        masks = []
        for _ in range(int(rng.integers(2, 6))):
            shape = _shape_mask(rng)
            colour = _colour(rng, background)
            shade = colour + (_smooth_noise(rng, 4)[..., None] - 0.5) * rng.uniform(0, 60)  # a textured fill
            image = np.where(shape[..., None], shade, image)
            masks = [mask & ~shape for mask in masks] + [shape]
        image = np.clip(image + rng.normal(0, rng.uniform(0, 8), image.shape), 0, 255).astype(np.uint8)
        masks = [mask for mask in masks if mask.sum() >= MIN_AREA]
        if len(masks) >= TARGETS:
            return image, masks


def images(seed: int, count: int) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    rng = np.random.default_rng(seed)
    return [make_image(rng) for _ in range(count)]


# -- prompts, as SAM samples them in training ------------------------------------------------------------------

def sample_point(rng, mask: np.ndarray) -> tuple[float, float]:
    """A pixel of `mask`, uniformly: (x, y) in pixels of the input frame."""
    ys, xs = np.nonzero(mask)
    i = rng.integers(len(xs))
    return float(xs[i]), float(ys[i])


def jittered_box(rng, mask: np.ndarray) -> tuple[float, float, float, float]:
    """The mask's bounding box, each corner moved by noise of std 10% of the box's side, at most 20 pixels (SAM's
    box prompts in training), kept in the frame."""
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64)
    side = np.array([box[2] - box[0], box[3] - box[1]] * 2)
    box = box + np.clip(rng.normal(0, 0.1, 4) * side, -20, 20)
    box = np.clip(box, 0, SIZE - 1)
    x0, x1 = sorted(box[[0, 2]])
    y0, y1 = sorted(box[[1, 3]])
    return float(x0), float(y0), float(x1), float(y1)


def second_point(rng, mask: np.ndarray, first) -> tuple[float, float, int]:
    """A correction click: half of the time another point on the object (label 1), else one off it (label 0) near
    it (within its box grown by 16 pixels), as SAM's iterative training adds points in the error region."""
    if rng.random() < 0.5:
        return (*sample_point(rng, mask), 1)
    ys, xs = np.nonzero(mask)
    near = np.zeros_like(mask)
    near[max(ys.min() - 16, 0):ys.max() + 17, max(xs.min() - 16, 0):xs.max() + 17] = True
    off = near & ~mask
    return (*sample_point(rng, off if off.any() else ~mask), 0)


def prompts_for(rng, masks: list[np.ndarray], count: int | None = None) -> dict:
    """For `count` of the masks (all when None): the target masks and each prompt kind's inputs, as transformers'
    `Sam2Model` takes them (one image: [prompts, ...])."""
    chosen = rng.permutation(len(masks))[:count] if count else range(len(masks))
    targets = np.stack([masks[i] for i in chosen])
    points = [sample_point(rng, mask) for mask in targets]
    seconds = [second_point(rng, mask, point) for mask, point in zip(targets, points)]
    return {
        "targets": targets,
        "point": np.array(points, np.float32)[:, None],  # [P, 1, 2]
        "box": np.array([jittered_box(rng, mask) for mask in targets], np.float32),  # [P, 4]
        "two points": np.array([[p, s[:2]] for p, s in zip(points, seconds)], np.float32),  # [P, 2, 2]
        "two points labels": np.array([[1, s[2]] for s in seconds], np.int64),  # [P, 2]
    }


# -- training ---------------------------------------------------------------------------------------------------

def image_features(model, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    """`Sam2Model.get_image_embeddings` with gradients (it is a no_grad method): [feats_s0, feats_s1, embeddings]."""
    features = model.get_image_features(pixel_values, return_dict=True).fpn_hidden_states
    features = list(features)
    features[-1] = features[-1] + model.no_memory_embedding
    return [f.permute(1, 2, 0).view(len(pixel_values), -1, *size)
            for f, size in zip(features, model.backbone_feature_sizes)]


def mask_losses(logits: torch.Tensor, targets: torch.Tensor):
    """SAM's losses of each low-resolution mask [B, P, M, h, w] against the targets [B, P, H, W]: focal (alpha
    0.25, gamma 2) and dice, each [B, P, M], on the low-resolution grid against the targets' share of each cell
    (SAM computes them on the upsampled logits; on 2 cores the low-resolution ones cost a fifth); and each mask's
    IoU with its target at full resolution (the logits resized bilinear), what the IoU head learns to predict."""
    batch, prompts, count = logits.shape[:3]
    target = F.adaptive_avg_pool2d(targets, logits.shape[-2:])[:, :, None].expand_as(logits)
    probability = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = probability * target + (1 - probability) * (1 - target)
    focal = ((0.25 * target + 0.75 * (1 - target)) * ce * (1 - p_t) ** 2).mean((-1, -2))
    dice = 1 - (2 * (probability * target).sum((-1, -2)) + 1) / (probability.sum((-1, -2)) + target.sum((-1, -2)) + 1)
    with torch.no_grad():
        up = F.interpolate(logits.flatten(0, 1), size=targets.shape[-2:], mode="bilinear", align_corners=False)
        predicted, truth = up.unflatten(0, (batch, prompts)) > 0, targets[:, :, None] > 0.5
        union = (predicted | truth).sum((-1, -2))
        iou = torch.where(union > 0, (predicted & truth).sum((-1, -2)) / union.clamp(min=1), 1.0)
    return focal, dice, iou


def prompt_loss(output, targets: torch.Tensor) -> torch.Tensor:
    """SAM's loss for one call: focal x 20 + dice on the mask with the least of it (of three, or the one), and the
    IoU head's mean squared error on every mask."""
    focal, dice, iou = mask_losses(output.pred_masks, targets)
    combined = FOCAL_WEIGHT * focal + DICE_WEIGHT * dice
    best = combined.min(dim=-1).values
    return best.mean() + IOU_WEIGHT * F.mse_loss(output.iou_scores, iou)


def training_batch(rng, count: int):
    """pixel_values [B, 3, S, S] and the prompts of `TARGETS` objects per image, stacked for transformers."""
    pixels, prompts = [], []
    for image, masks in (make_image(rng) for _ in range(count)):
        if rng.random() < 0.5:  # mirrored: the shapes are symmetric, the prompts' positions are not
            image, masks = image[:, ::-1], [mask[:, ::-1] for mask in masks]
        pixels.append(PREPROCESSING(Image.fromarray(np.ascontiguousarray(image))))
        prompts.append(prompts_for(rng, masks, TARGETS))
    batch = {key: torch.from_numpy(np.stack([p[key] for p in prompts])) for key in prompts[0]}
    batch["targets"] = batch["targets"].float()
    return torch.from_numpy(np.stack(pixels)), batch


def fresh_model():
    """transformers' `Sam2Model` of `model_config`, each layer initialized as PyTorch initializes it, as FAIR's SAM 2
    builds them: transformers' own (normal, std 0.02) left this small model's masks stuck at all-background (a batch
    of 4 images was not fitted in 100 steps; with PyTorch's, to IoU 0.8)."""
    from transformers import Sam2Model

    model = Sam2Model(model_config())
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Embedding)):
            module.reset_parameters()
    return model


def train(args) -> None:
    from transformers import Sam2Model

    torch.manual_seed(TRAIN_SEED + args.stage)
    # One thread: on 2 cores shared with other work, two threads' synchronization made a step 5 to 10 times slower
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(TRAIN_SEED if args.stage == 0 else [TRAIN_SEED, args.stage])  # a later one: others
    # a later stage goes on from the checkpoint the stage before saved
    model = fresh_model() if args.init is None else Sam2Model.from_pretrained(args.init)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"Sam2Model: {parameters:,} parameters, {SIZE} x {SIZE} input, stage {args.stage}", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    started = time.time()
    model.train()
    total = 0.0
    for step in range(1, args.steps + 1):
        pixels, batch = training_batch(rng, args.batch)
        features = image_features(model, pixels)
        targets = batch["targets"]
        one = torch.ones(targets.shape[:2] + (1,), dtype=torch.int64)
        loss = (prompt_loss(model(image_embeddings=features, input_points=batch["point"], input_labels=one,
                                  multimask_output=True), targets)
                + prompt_loss(model(image_embeddings=features, input_boxes=batch["box"], multimask_output=False),
                              targets)
                + prompt_loss(model(image_embeddings=features, input_points=batch["two points"],
                                    input_labels=batch["two points labels"], multimask_output=False), targets))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        total += loss.item()
        if step % args.log_every == 0 or step == args.steps:
            print(f"step {step:5d}/{args.steps}  loss {total / args.log_every:.4f}  {time.time() - started:5.0f}s",
                  flush=True)
            total = 0.0
    print(f"trained in {time.time() - started:.0f}s")
    model.eval()
    iou = ground_truth_iou(model, args.heldout)
    print("held-out mask IoU with the true shapes (PyTorch fp32): "
          + ", ".join(f"{kind} {value:.4f}" for kind, value in iou.items()))
    model.save_pretrained(args.out)
    print(f"saved {args.out}")


# -- evaluation -------------------------------------------------------------------------------------------------

KINDS = ("point", "point, best of 3", "box", "two points")


def heldout(count: int) -> list[dict]:
    """`count` held-out images (their own seed) with every visible shape prompted by each kind: the image, its
    preprocessed pixels, the targets and the prompts in the decoder's form (coordinates [P, N, 2], labels [P, N])."""
    rng = np.random.default_rng(HELDOUT_SEED)
    cases = []
    for image, masks in images(HELDOUT_SEED, count):
        p = prompts_for(rng, masks)
        boxes = p["box"].reshape(-1, 2, 2)
        cases.append({
            "image": image, "pixels": PREPROCESSING(Image.fromarray(image)), "targets": p["targets"],
            "point": (p["point"], np.ones(p["point"].shape[:2], np.float32)),
            "box": (boxes, np.tile(np.array([2, 3], np.float32), (len(boxes), 1))),
            "two points": (p["two points"], p["two points labels"].astype(np.float32)),
        })
    return cases


def choose(masks: np.ndarray, scores: np.ndarray, kind: str) -> np.ndarray:
    """Which of the decoder's four masks [P, 4, ...] answers each prompt: the single-mask answer (mask 0), or for
    "point, best of 3" the multimask answer the IoU head scores highest."""
    if kind != "point, best of 3":
        return np.zeros(len(masks), np.int64)
    return 1 + scores[:, 1:].argmax(1)


def answers(masks: np.ndarray, scores: np.ndarray, kind: str, resize) -> dict[str, np.ndarray]:
    """Each prompt's answer from the decoder's four low-resolution masks [P, 4, h, w] and scores [P, 4]: its logits
    resized to the image by `resize` ([P, h, w] -> [P, H, W]); and for `mask_decoder.decided_at_threshold`, the
    decision of SAM 2 that chose it (0: the single mask; k: the multimask mask k, by the stability fallback or as
    the best of three), and the low-resolution masks and scores themselves."""
    from export.mask_decoder import decisions

    chosen = choose(masks, scores, kind)
    return {"logits": resize(masks[np.arange(len(masks)), chosen]),
            "decision": chosen if kind == "point, best of 3" else decisions(masks), "masks": masks,
            "iou_scores": scores}


def resize(logits: np.ndarray, size) -> np.ndarray:
    """Low-resolution logits [P, h, w] at the image's size, bilinear, as `Sam2Processor.post_process_masks`."""
    resized = F.interpolate(torch.from_numpy(logits)[:, None], size=size, mode="bilinear", align_corners=False)
    return resized[:, 0].numpy()


@torch.no_grad()
def reference_logits(model, case: dict) -> dict[str, dict[str, np.ndarray]]:
    """transformers' `Sam2Model` on one case: per prompt kind, its `answers` (resized as `Sam2Processor` does)."""
    features = model.get_image_embeddings(torch.from_numpy(case["pixels"][None]))
    result = {}
    for kind in KINDS:
        coords, labels = case["box" if kind == "box" else "point" if kind.startswith("point") else kind]
        inputs = ({"input_boxes": torch.from_numpy(coords.reshape(1, -1, 4))} if kind == "box" else
                  {"input_points": torch.from_numpy(coords[None]),
                   "input_labels": torch.from_numpy(labels[None]).long()})
        single = model(image_embeddings=features, multimask_output=False, **inputs)
        multi = model(image_embeddings=features, multimask_output=True, **inputs)
        masks = torch.cat([single.pred_masks, multi.pred_masks], 2)[0]  # the decoder artifact's [P, 4, h, w]
        scores = torch.cat([single.iou_scores, multi.iou_scores], 2)[0]
        result[kind] = answers(masks.numpy(), scores.numpy(), kind,
                               functools.partial(resize, size=case["image"].shape[:2]))
    return result


def ground_truth_iou(model, count: int) -> dict[str, float]:
    """transformers' model's mean mask IoU with the true shapes on `count` held-out images, per prompt kind."""
    ious = {kind: [] for kind in KINDS}
    for case in heldout(count):
        for kind, answer in reference_logits(model, case).items():
            ious[kind].extend(iou(answer["logits"] > 0, case["targets"]))
    return {kind: float(np.mean(values)) for kind, values in ious.items()}


def iou(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Per mask (axis 0): IoU of two boolean masks; 1 where both are empty."""
    union = (a | b).sum((-1, -2))
    return list(np.where(union > 0, (a & b).sum((-1, -2)) / np.maximum(union, 1), 1.0))


def encoder_outputs(path: Path, cases: list[dict]) -> list[dict[str, np.ndarray]]:
    """An encoder artifact's three outputs for each case's pixels, run by the runtime (onnxruntime, CPU)."""
    from runtime import load

    encoder = load(path, provider="cpu", threads=1, check=False, allow_failed=True)
    return [encoder.run(case["pixels"][None]) for case in cases]


def artifact_logits(embeddings: list[dict], decoder_path: Path, cases: list[dict]) -> list[dict[str, dict]]:
    """A decoder artifact's `answers` on each case, per prompt kind: the runtime's path from encoder outputs to
    masks (onnxruntime, CPU; `runtime.segment.upsample_logits`)."""
    from runtime import load
    from runtime.segment import upsample_logits

    decoder = load(decoder_path, provider="cpu", threads=1, check=False, allow_failed=True)
    side = 4 * embeddings[0]["image_embeddings"].shape[-1]
    results = []
    for embedding, case in zip(embeddings, cases):
        result = {}
        for kind in KINDS:
            coords, labels = case["box" if kind == "box" else "point" if kind.startswith("point") else kind]
            out = decoder.session.run(embedding["image_embeddings"], high_res_feats_0=embedding["high_res_feats_0"],
                                      high_res_feats_1=embedding["high_res_feats_1"],
                                      point_coords=coords.astype(np.float32), point_labels=labels.astype(np.float32),
                                      mask_input=np.zeros((len(coords), 1, side, side), np.float32),
                                      has_mask_input=np.zeros(len(coords), np.float32))
            result[kind] = answers(out["masks"], out["iou_scores"], kind,
                                   functools.partial(upsample_logits, size=case["image"].shape[:2]))
        results.append(result)
    return results


def compare_masks(reference: list[dict], got: list[dict], cases: list[dict]) -> dict:
    """Mask IoU of `got` against `reference` (per case and prompt kind, `answers`) by issue 26's rule, as the export
    applies it (`export.mask_decoder.compare_masks`): pixels whose reference logit is within 1e-3 of 0 left out, and
    counted; a prompt counts where at most 1% is left out and the reference mask covers 5% to 95% of the image, and
    where its answer and the reference's do not come from decisions of SAM 2 taken at their threshold
    (`decided_at_threshold` within each prompt's own `prompt_errors`); and against the true shapes. The mean
    over every prompt, the smallest over those that count (overall and per kind), over those that count by the
    first two rules alone (`min_iou_any_decision`), and over all; and each prompt of those whose answer came from
    another decision than the reference's (`decisions_differ`, with `at_threshold` where it does not count)."""
    from export.mask_decoder import (MASK_COVERAGE, MAX_LEFT_OUT, decided_at_threshold, mask_iou, prompt_errors,
                                     stability_range, top_two_gap)

    per_kind = {kind: [] for kind in KINDS}
    every, any_decision, differ, truth, left_out, pixels = [], [], [], [], 0, 0
    for index, (ref, out, case) in enumerate(zip(reference, got, cases)):
        for kind in KINDS:
            r, o = ref[kind], out[kind]
            kept = np.where((r["decision"] == 0)[:, None, None], r["masks"][:, 0], o["masks"][:, 0])
            gap = top_two_gap(r["iou_scores"])
            near = decided_at_threshold(r["decision"], o["decision"], kept, gap, STABILITY, *prompt_errors(r, o))
            for prompt, (r_logits, o_logits) in enumerate(zip(r["logits"], o["logits"])):
                value, skipped = mask_iou(r_logits, o_logits)
                every.append(value)
                if skipped <= MAX_LEFT_OUT * r_logits.size \
                        and MASK_COVERAGE[0] <= (r_logits > 0).mean() <= MASK_COVERAGE[1]:
                    any_decision.append(value)
                    if not near[prompt]:
                        per_kind[kind].append(value)
                    if r["decision"][prompt] != o["decision"][prompt]:
                        differ.append({"image": index, "kind": kind, "prompt": prompt, "iou": value,
                                       "decisions": [int(r["decision"][prompt]), int(o["decision"][prompt])],
                                       "kept_stability": float(stability_range(kept[prompt:prompt + 1], STABILITY[0],
                                                                               0.0)[0][0]),
                                       "top_two_gap": float(gap[prompt]),
                                       "at_threshold": bool(near[prompt])})
                left_out, pixels = left_out + skipped, pixels + r_logits.size
            truth.extend(iou(o["logits"] > 0, case["targets"]))
    counted = [v for values in per_kind.values() for v in values]
    return {"prompts": len(every), "counted": len(counted), "mean_iou": float(np.mean(every)),
            "min_iou": float(np.min(counted)), "min_iou_any_decision": float(np.min(any_decision)),
            "min_iou_all": float(np.min(every)), "below_0.9": int(np.sum(np.array(every) < 0.9)),
            "min_iou_by_kind": {kind: float(np.min(values, initial=1.0)) for kind, values in per_kind.items()},
            "decisions_differ": differ, "pixels_left_out": left_out, "pixels": pixels,
            "mean_iou_true_shapes": float(np.mean(truth))}


# What the evaluation pairs: every encoder precision through the fp32 decoder, the fp32 encoder through every decoder
# precision, and the pairs a deployment takes (both in fp16, both in int8).
def pairs(encoders, decoders) -> list[tuple[str, str]]:
    chosen = [(e, "fp32") for e in encoders] + [("fp32", d) for d in decoders if d != "fp32"]
    chosen += [(p, p) for p in ("fp16", "int8") if p != "fp32" and p in encoders and p in decoders]
    return list(dict.fromkeys(chosen))


def evaluate(args) -> None:
    """Export the checkpoint's segmenter family, then mask IoU of each pair against transformers' `Sam2Model` on
    held-out images (and of each against the true shapes, for scale)."""
    from transformers import Sam2Model

    from export import Options, segmenter
    from export.quantize import to_int8
    import onnx

    if not (args.checkpoint / "config.json").is_file():  # before anything is written
        raise HieraModelError(f"{args.checkpoint}: no config.json (give a folder that tools.shapes train saved)")
    torch.set_num_threads(1)
    started = time.time()
    calibration = args.out / "calibration"
    write_images(Namespace(out=calibration, split="train", count=args.calibration))
    artifacts = args.out / "artifacts"
    report = segmenter.run(Options(weights=str(args.checkpoint), task="segmenter", batch=None, out_dir=artifacts,
                                   precisions=tuple(args.precisions), calibration=calibration))
    print(f"exported in {time.time() - started:.0f}s: {'passed' if report['passed'] else 'FAILED'}")
    encoders = {p: artifacts / report["artifacts"][p]["file"] for p in args.precisions}
    decoders = {key.removeprefix("decoder-"): artifacts / entry["file"] for key, entry in report["artifacts"].items()
                if key.startswith("decoder-")}
    if "int8" not in decoders:  # not a decoder precision of the export: made here the same way, to measure it
        decoders["int8"] = args.out / "decoder.int8.onnx"
        onnx.save_model(to_int8(decoders["fp32"]), decoders["int8"])
    cases = heldout(args.images)
    model = Sam2Model.from_pretrained(args.checkpoint).eval()
    reference = [reference_logits(model, case) for case in cases]
    rows = {"PyTorch (transformers) fp32": compare_masks(reference, reference, cases)}
    embeddings = {p: encoder_outputs(path, cases) for p, path in encoders.items()}
    for encoder, decoder in pairs(encoders, decoders):
        rows[f"encoder {encoder}, decoder {decoder}"] = compare_masks(
            reference, artifact_logits(embeddings[encoder], decoders[decoder], cases), cases)
    width = max(map(len, rows))
    first = rows[next(iter(rows))]
    print(f"{len(cases)} held-out images, {first['prompts']} prompts ({', '.join(KINDS)}), {first['counted']} of them "
          "counted by issue 26's rule (mask 5% to 95% of the image); mask IoU against PyTorch (pixels within 1e-3 of "
          "the threshold left out; also left out: answers from SAM 2's decisions taken at their threshold), and "
          "against the true shapes")
    print(f"{'':{width}s}  mean IoU  min IoU (counted)  at threshold  min IoU (any decision)  min IoU (all)  "
          "below 0.9  worst kind        true shapes")
    for name, row in rows.items():
        worst = min(row["min_iou_by_kind"], key=row["min_iou_by_kind"].get)
        left = sum(flip["at_threshold"] for flip in row["decisions_differ"])
        print(f"{name:{width}s}  {row['mean_iou']:.4f}    {row['min_iou']:.4f}             {left:5d}         "
              f"{row['min_iou_any_decision']:.4f}                  {row['min_iou_all']:.4f}         "
              f"{row['below_0.9']:5d}      {worst:16s}  {row['mean_iou_true_shapes']:.4f}")
    print("prompts of the 5% to 95% whose answer came from another of SAM 2's decisions than the reference's "
          "(0: the single mask, kept as stable; k: the multimask mask k):")
    for name, row in rows.items():
        for flip in row["decisions_differ"]:
            near = "at its threshold: left out" if flip["at_threshold"] else "NOT at its threshold: counted"
            print(f"  {name}: image {flip['image']}, {flip['kind']} {flip['prompt']}: decision "
                  f"{flip['decisions'][0]} -> {flip['decisions'][1]}, IoU {flip['iou']:.4f}, kept mask's stability "
                  f"{flip['kept_stability']:.4f} (threshold {STABILITY[1]}), reference's top-two score gap "
                  f"{flip['top_two_gap']:.4f}: {near}")
    print(f"evaluated in {time.time() - started:.0f}s")
    if args.json:
        args.json.write_text(json.dumps({"images": len(cases), "rows": rows}, indent=2) + "\n")


def write_images(args) -> None:
    """Images as PNGs: the held-out ones (to segment with the runtime), or training ones (qdq's calibration)."""
    args.out.mkdir(parents=True, exist_ok=True)
    seed = HELDOUT_SEED if args.split == "test" else TRAIN_SEED
    for i, (image, _) in enumerate(images(seed, args.count)):
        Image.fromarray(image).save(args.out / f"{i:03d}.png")
    print(f"wrote {args.count} images to {args.out}")


def run(argv) -> int:
    parser = Parser(prog="tools/shapes.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = commands.add_parser("train", help="train and save models/shapes/")
    p.add_argument("--steps", type=Whole(1, MAX_STEPS), default=900, help=f"default 900, at most {MAX_STEPS}")
    p.add_argument("--batch", type=Whole(1, 256), default=8, help="images per step, default 8, at most 256")
    p.add_argument("--init", type=Path, help="go on from this checkpoint (a later stage)")
    p.add_argument("--stage", type=Whole(0, 100), default=0, help="seeds a stage's images, default 0")
    p.add_argument("--threads", type=Whole(1, 64), default=1, help="torch's threads, default 1")
    p.add_argument("--lr", type=float, default=1e-3, help="the peak learning rate, default 1e-3")
    p.add_argument("--log-every", type=Whole(1, MAX_STEPS), default=25)
    p.add_argument("--heldout", type=Whole(1, 1000), default=50, help="held-out images to measure, default 50")
    p.add_argument("--out", type=Path, default=CHECKPOINT)
    p.set_defaults(run=train)
    p = commands.add_parser("evaluate", help="export the family and measure mask IoU per precision")
    p.add_argument("--out", type=Path, required=True, help="a folder for the artifacts and calibration images")
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    p.add_argument("--precisions", nargs="+", choices=["fp32", "fp16", "int8", "qdq"],
                   default=["fp32", "fp16", "int8", "qdq"], help="the encoder's, default all four")
    p.add_argument("--images", type=Whole(1, 1000), default=100, help="held-out images, default 100")
    p.add_argument("--calibration", type=Whole(1, 1000), default=64, help="training images for qdq, default 64")
    p.add_argument("--json", type=Path, help="also write the rows here")
    p.set_defaults(run=evaluate)
    p = commands.add_parser("images", help="write images as PNG files")
    p.add_argument("out", type=Path)
    p.add_argument("--split", choices=["test", "train"], default="test", help="default: test, the held-out images")
    p.add_argument("--count", type=Whole(1, 10000), default=100, help="default 100")
    p.set_defaults(run=write_images)
    args = parser.parse_args(argv)
    args.run(args)
    return 0


def main(argv=None) -> int:
    from export.errors import ExportError

    return run_command(run, argv, errors=(HieraModelError, HieraRuntimeError, ExportError, OSError))


if __name__ == "__main__":
    sys.exit(main())
