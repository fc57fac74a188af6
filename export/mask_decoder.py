"""`--task mask-decoder`: SAM 2's prompt encoder and mask decoder (`hiera_model.sam2_decoder`) exported from a
transformers `Sam2Model` folder, validated against PyTorch on real encoder outputs, as one transaction.

The decoder takes the image encoder artifact's three outputs for one image and a dynamic number of prompts
(axis 0) of a dynamic number of points (axis 1). Its validation inputs are what it meets in use: the folder's
encoder (PyTorch) run on the two photographs and one noise image, each with point, box and point-and-box prompts
(each group of one token count in its own call, as the runtime calls it). Beside the project's bounds on the
logits and IoU scores, each artifact gets a mask-IoU row by issue 26's rule (`compare_masks`): the masks
thresholded at 0 against PyTorch's, pixels whose PyTorch logit lies within `MASK_LOGIT_TOLERANCE` of 0 left out and
counted, a mask counted where PyTorch's covers 5% to 95% of it, and SAM 2's own decisions taken at their threshold
(the stability fallback, the best of three masks) left out and counted as the pixels at theirs are.

Precisions: fp32 (the traced graph, standard operators: onnxruntime, OpenVINO, TensorRT all take it) and fp16.

Each artifact carries a probe (`runtime.probe`, format 2): its inputs generated from each channel's mean and std of
PyTorch's encoder outputs on the validation photographs (`probe_inputs`), the prompts of `PROBE_CALLS`, PyTorch's
outputs on them and onnxruntime CPU's.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from runtime import files, probe
from runtime.artifact import to_metadata
from runtime.preprocess import Preprocessing
from runtime.segment import MAX_POINTS, MAX_PROMPTS
from runtime.session import OnnxSession

from . import artifact, convert, parity, trt_check
from .errors import ExportError
from .onnx_export import TRACE_OPSET, _quiet, to_opset_17
from .optimize import max_rank, op_histogram
from .options import DECODER_PRECISIONS, Options
from .transaction import Transaction
from .weights import load_weights

TASK = "mask-decoder"
PRECISIONS = DECODER_PRECISIONS
MASK_IOU_BOUNDS = {"fp32": 0.99, "fp16": 0.98}  # the smallest IoU of a mask with PyTorch's (issue 26)
MASK_LOGIT_TOLERANCE = 1e-3  # pixels whose PyTorch logit is within this of the threshold are left out, and counted
# A mask counts where PyTorch's covers this share of it and at most MAX_LEFT_OUT of its pixels are left out (issue 26:
# a mask of a few pixels, or of nearly all, says nothing about its edge)
MASK_COVERAGE, MAX_LEFT_OUT = (0.05, 0.95), 0.01
# SAM 2 decides which mask answers a prompt: the single mask where its stability score (the area above +delta over
# the area above -delta) reaches a threshold, else the multimask mask of the highest predicted IoU. Where logits
# moved as far as the artifact moves that prompt's other logits can take that decision either way, its rounding
# may answer with another of SAM 2's own masks: that answer is left out of the IoU, and counted, as a pixel within
# MASK_LOGIT_TOLERANCE of 0 is. A decision taken otherwise is an error: its mask counts. How far is measured per
# prompt on the multimask masks and scores, which no decision picks (`prompt_errors`), at least fp32's tolerances.
SCORE_TOLERANCE = 1e-4  # fp32's bound on the predicted IoUs
NOISE_IMAGES = 1
# Validation prompts in fractions of the input frame: (x, y, label) per token; each group is one call.
PROMPT_GROUPS = {
    "one point": [[(0.3, 0.4, 1)], [(0.7, 0.6, 1)], [(0.5, 0.2, 1)]],
    "two points": [[(0.3, 0.4, 1), (0.8, 0.8, 0)], [(0.6, 0.3, 1), (0.2, 0.7, 1)]],
    "box": [[(0.1, 0.2, 2), (0.6, 0.9, 3)]],
    "point and box": [[(0.4, 0.5, 1), (0.2, 0.3, 2), (0.7, 0.8, 3)]],
}

# The probe's calls, in fractions of the input frame: (x, y, label) per token, and has_mask_input for all of the
# call's prompts. Every label kind: positive, positive and negative, a box's corners, a point with padding; and a
# prompt with a (generated) mask input.
PROBE_CALLS = (
    ([[(0.3, 0.4, 1), (0.55, 0.6, 1)], [(0.35, 0.45, 1), (0.8, 0.75, 0)], [(0.15, 0.2, 2), (0.7, 0.85, 3)],
      [(0.6, 0.3, 1), (0.0, 0.0, -10)]], 0),
    ([[(0.45, 0.55, 1)]], 1),
)
PROBE_MASK_STD = 4.0  # the generated mask input's std: logits of about an answer's size


def check(o: Options) -> None:
    """What a decoder export refuses, before anything is loaded."""
    if o.weights in (None, "random") or str(o.weights).startswith("hub"):
        raise ExportError("task mask-decoder: give the transformers Sam2Model folder the encoder was exported from "
                          "(--weights PATH); random weights and the hub are not read for the decoder yet", "weights")
    extra = [p for p in o.precisions if p not in PRECISIONS]
    if extra:
        raise ExportError(f"precisions {' '.join(extra)}: the mask decoder is exported in {', '.join(PRECISIONS)}",
                          "precisions")
    if o.opset < 17:
        raise ExportError(f"opset {o.opset}: the mask decoder is written at opset 17 or later", "opset")
    for name, value, default in (("image_size", o.image_size, None), ("layout", o.layout, "files"),
                                 ("build_engine", o.build_engine, False), ("out_features", o.out_features, None)):
        if value != default:
            raise ExportError(f"{name}: not an option of task mask-decoder (it takes the encoder's input size)", name)


def prompt_feeds(size: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(group name, point_coords [P, N, 2], point_labels [P, N]) for each group of `PROMPT_GROUPS`, in pixels of a
    square input frame of side `size`."""
    feeds = []
    for name, prompts in PROMPT_GROUPS.items():
        coords = np.array([[(x * size, y * size) for x, y, _ in prompt] for prompt in prompts], np.float32)
        labels = np.array([[label for _, _, label in prompt] for prompt in prompts], np.float32)
        feeds.append((name, coords, labels))
    return feeds


def mask_ious(reference: np.ndarray, got: np.ndarray,
              tolerance: float = MASK_LOGIT_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """Per mask (the last two axes): the IoU of `got > 0` with `reference > 0`, pixels whose reference logit lies
    within `tolerance` of 0 left out (a mask empty in both counts as 1), and how many pixels were left out."""
    counted = np.abs(reference) > tolerance
    a, b = (reference > 0) & counted, (got > 0) & counted
    union = (a | b).sum(axis=(-1, -2))
    return (np.where(union > 0, (a & b).sum(axis=(-1, -2)) / np.maximum(union, 1), 1.0),
            (~counted).sum(axis=(-1, -2)))


def mask_iou(reference: np.ndarray, got: np.ndarray, tolerance: float = MASK_LOGIT_TOLERANCE) -> tuple[float, int]:
    """The smallest IoU over masks of `mask_ious`, and how many pixels were left out in all."""
    iou, left_out = mask_ious(reference, got, tolerance)
    return float(iou.min()), int(left_out.sum())


def stability_range(single: np.ndarray, delta: float, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """The least and the greatest stability score [P] that single masks [P, h, w] can have when each logit moves by
    at most `tolerance`: SAM 2's score is the area above +delta over the area above -delta (1 where both are empty,
    as transformers' `_dynamic_multimask_via_stability`)."""
    def score(inner, outer):
        inner, outer = inner.sum((-1, -2)), outer.sum((-1, -2))
        return np.where(outer > 0, inner / np.maximum(outer, 1), 1.0)

    tolerance = np.asarray(tolerance, np.float64)[..., None, None]  # one per mask, or one for all

    # the least: what is above +delta moved down, what is below -delta moved up; the greatest the other way, at
    # most 1 (where the tolerance exceeds delta, the two moves overlap and the bound alone would pass 1)
    return (score(single > delta + tolerance, single > -delta - tolerance),
            np.minimum(score(single > delta - tolerance, single > -delta + tolerance), 1.0))


def decisions(masks: np.ndarray) -> np.ndarray:
    """Which mask answers each prompt's single-mask output, from the decoder's masks [P, 4, h, w]: k in 1..3 where
    mask 0 is the multimask mask k (the stability fallback copied it), else 0 (the single mask, judged stable)."""
    same = (masks[:, :1] == masks[:, 1:]).all(axis=(-1, -2))  # [P, 3]
    return np.where(same.any(axis=1), 1 + same.argmax(axis=1), 0)


def decided_at_threshold(reference: np.ndarray, got: np.ndarray, kept_single: np.ndarray, score_gap: np.ndarray,
                         stability: tuple[float, float], tolerance, score_tolerance) -> np.ndarray:
    """[P] bool: where two answers come from different decisions (`decisions`, or the best of three) that logits
    moved by `tolerance` (a number, or one per prompt) can take either way: one kept the single mask, and that
    mask's (`kept_single` [P, h, w], of the side that kept it) stability range (`stability_range`) straddles the
    threshold; or both took a multimask mask, and PyTorch's two best predicted IoUs (`score_gap`) lie within twice
    `score_tolerance` (each may move by it). A side that kept a single mask whose own score is below the threshold
    (within fp32's tolerance: summation order) took no decision of SAM 2's (its fallback is missing or broken): that
    answer counts, however wide the tolerance (one wider than delta takes the range of every unstable mask to 1)."""
    delta, threshold = stability
    low, high = stability_range(kept_single, delta, tolerance)
    own_high = stability_range(kept_single, delta, MASK_LOGIT_TOLERANCE)[1]
    kept = (reference == 0) | (got == 0)
    near = np.where(kept, (low < threshold) & (high >= threshold) & (own_high >= threshold),
                    score_gap <= 2 * np.asarray(score_tolerance))
    return (reference != got) & near


def top_two_gap(scores: np.ndarray) -> np.ndarray:
    """[P]: the highest predicted IoU of the multimask masks (scores [P, 4]) less the second highest."""
    top = np.sort(scores[:, 1:], axis=1)
    return top[:, -1] - top[:, -2]


def prompt_errors(reference: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """[P] each: how far `got` moved each prompt's multimask logits and predicted IoUs (masks 1..3 of [P, 4, ...],
    which no decision of SAM 2 picks) from PyTorch's, at least `MASK_LOGIT_TOLERANCE` and `SCORE_TOLERANCE`."""
    logits = np.abs(got["masks"][:, 1:] - reference["masks"][:, 1:]).max(axis=(1, 2, 3), initial=0)
    scores = np.abs(got["iou_scores"][:, 1:] - reference["iou_scores"][:, 1:]).max(axis=1, initial=0)
    return (np.maximum(np.nan_to_num(logits, nan=np.inf), MASK_LOGIT_TOLERANCE),
            np.maximum(np.nan_to_num(scores, nan=np.inf), SCORE_TOLERANCE))


def answers_at_threshold(reference: dict[str, np.ndarray], got: dict[str, np.ndarray],
                         stability: tuple[float, float] | None) -> np.ndarray:
    """[P] bool: the prompts whose single-mask answers (mask 0 of the decoder's [P, 4, h, w]) come from decisions
    taken at their threshold (`decided_at_threshold` within each prompt's own `prompt_errors`; `stability`: the
    decoder's (delta, threshold), None where it has no fallback, so never)."""
    ref, out = reference["masks"], got["masks"]
    if stability is None or ref.shape[1] < 2:
        return np.zeros(len(ref), bool)
    ref_decision, got_decision = decisions(ref), decisions(out)
    kept = np.where((ref_decision == 0)[:, None, None], ref[:, 0], out[:, 0])
    return decided_at_threshold(ref_decision, got_decision, kept, top_two_gap(reference["iou_scores"]), stability,
                                *prompt_errors(reference, got))


def without_answers(outputs: dict[str, np.ndarray], prompts: np.ndarray) -> dict[str, np.ndarray]:
    """The decoder's outputs with the single-mask answers (mask 0 and its score) of `prompts` [P] bool zeroed: left
    out of the logits' parity (`parity.compare`) on both sides, as `compare_masks` leaves them out of the IoU."""
    left = dict(outputs)
    for name in ("masks", "iou_scores"):
        if name in left:
            left[name] = left[name].copy()
            left[name][prompts, 0] = 0
    return left


def compare_masks(reference: dict[str, np.ndarray], got: dict[str, np.ndarray],
                  stability: tuple[float, float] | None) -> dict:
    """The decoder's masks [P, 4, h, w] against PyTorch's (`reference`, with its `iou_scores`) by issue 26's rule:
    each mask's IoU thresholded at 0, pixels whose PyTorch logit lies within `MASK_LOGIT_TOLERANCE` of 0 left out; a
    mask counts where PyTorch's covers `MASK_COVERAGE` of it and at most `MAX_LEFT_OUT` of its pixels are left out,
    and a single-mask answer does not count where it and PyTorch's come from decisions taken at their threshold
    (`answers_at_threshold`). The row: the smallest IoU over the masks that count (None where none does:
    `mask_row_failures`), and what was left out."""
    ref = reference["masks"]
    side = ref.shape[-2] * ref.shape[-1]
    iou, left_out = mask_ious(ref, got["masks"])
    coverage = (ref > 0).mean((-1, -2))
    counts = (left_out <= MAX_LEFT_OUT * side) & (coverage >= MASK_COVERAGE[0]) & (coverage <= MASK_COVERAGE[1])
    at_threshold = answers_at_threshold(reference, got, stability)
    counts[:, 0] &= ~at_threshold
    # how many single masks PyTorch kept: where it kept none, the rows never compared the single-mask token's answer
    kept = int((decisions(ref) == 0).sum()) if ref.shape[1] > 1 else len(ref)
    return {"min_mask_iou": float(iou[counts].min()) if counts.any() else None,
            "masks_counted": int(counts.sum()), "masks": int(counts.size),
            "decisions_at_threshold": int(at_threshold.sum()), "single_masks_kept": kept,
            "pixels_left_out": int(left_out.sum()), "pixels": int(ref.size)}


def judge(reference: dict[str, np.ndarray], got: dict[str, np.ndarray], stability: tuple[float, float] | None,
          precision: str) -> tuple[dict, list[str]]:
    """A decoder artifact's outputs on the validation calls against PyTorch's (`reference`), as its export and
    `verify` hold them: the precision's bounds on `masks` and `iou_scores` (`parity`), with the single-mask answers
    that come from decisions at their threshold left out on both sides (`answers_at_threshold`, `without_answers`),
    and the mask-IoU row (`compare_masks`) against `MASK_IOU_BOUNDS`. Returns the parity rows (the mask-IoU row
    under `masks`) and why the artifact fails (empty: it passes)."""
    bound = MASK_IOU_BOUNDS.get(precision)
    if bound is None or "masks" not in got or "iou_scores" not in got:
        result = parity.compare(reference, got)
        return result, [*parity.failures(precision, result), *mask_row_failures(None, bound, "masks")]
    left = answers_at_threshold(reference, got, stability)
    result = parity.compare(without_answers(reference, left), without_answers(got, left))
    failed = parity.failures(precision, result)
    row = compare_masks(reference, got, stability)
    result["masks"].update(row)
    return result, failed + mask_row_failures(row, bound, "masks")


def mask_row_failures(row, bound: float | None, what: str) -> list[str]:
    """Why a mask-IoU row (`compare_masks`, or read from a report) fails `bound`: nothing where it holds, or where
    no mask of PyTorch's counted (masks_counted 0: the validation showed no mask edge to compare, and the row says
    so; which masks count is PyTorch's to decide, but for a single-mask answer from a decision at its threshold).
    A row read from a report holds only what `compare_masks` writes: masks_counted a count (rows made before the
    whole rule have none), an IoU between 0 and 1 where a mask counted and none where none did."""
    if bound is None:
        return [f"{what}: no mask-IoU bound for this precision"]
    if not isinstance(row, dict):
        return [f"{what} min IoU n/a (no row) < {bound}"]
    iou, counted = row.get("min_mask_iou"), row.get("masks_counted")
    if "masks_counted" in row and (not isinstance(counted, int) or isinstance(counted, bool) or counted < 0):
        return [f"{what} masks_counted {counted!r} is not a count of masks"]
    if counted == 0:
        return [] if iou is None else [f"{what} min IoU {iou!r} where no mask counted"]
    if not isinstance(iou, (int, float)) or isinstance(iou, bool) or not 0 <= iou <= 1:  # NaN is no IoU either
        return [f"{what} min IoU {iou!r} is not an IoU (0 to 1)"]
    return [] if iou >= bound else [f"{what} min IoU {iou:.4f} < {bound}"]


def describe_mask_row(row: dict) -> str:
    """A mask-IoU row (`compare_masks`) in words: its figure and what was counted and left out."""
    iou = row["min_mask_iou"]
    return (f"min mask IoU {'n/a' if iou is None else f'{iou:.4f}'} ({row['masks_counted']} of {row['masks']} "
            f"masks counted, {row['decisions_at_threshold']} answers from decisions at their threshold and "
            f"{row['pixels_left_out']} of {row['pixels']} pixels left out; PyTorch kept {row['single_masks_kept']} "
            "single masks)")


@dataclass
class Prepared:
    """What the decoder's export holds between loading and writing: the torch decoder, its artifacts' metadata, the
    validation images (preprocessed) with PyTorch's encoder outputs on them, the prompt feeds and PyTorch's answers."""
    decoder: object
    name: str
    props: dict
    report: dict
    images: np.ndarray  # [I, 3, H, W], as the runtime preprocesses them
    feeds: list[dict]  # one decoder call each: an image's encoder outputs and one prompt group
    reference: dict[str, np.ndarray]  # the PyTorch decoder's outputs on `feeds`, concatenated
    stability: tuple[float, float] | None  # SAM 2's fallback (delta, threshold), for `compare_masks`; None: none


def run(options: Options, progress=lambda step, message: None) -> dict:
    """Export, validate and write the decoder's artifacts and report as one transaction; the report."""
    check(options)
    prepared = prepare(options, progress)
    report = prepared.report
    stem = artifact.family(prepared.name, TASK)
    with Transaction(options.out_dir, stem) as transaction:
        build(prepared, transaction.staging, stem, options, progress)
        names = [*report["files"], artifact.report_name(stem)]
        artifact.write_report(transaction.staging / names[-1], report)
        progress("commit", f"moving {len(names)} files into {options.out_dir}")
        transaction.commit(names)
    report = artifact.seal(report)
    report["report_file"] = str(Path(options.out_dir) / names[-1])
    return report


def prepare(o: Options, progress) -> Prepared:
    """The decoder and encoder from the folder, and PyTorch's answers on the validation prompts; the report so far."""
    from hiera_model import sam2_decoder

    started = time.perf_counter()
    progress("weights", f"loading {o.weights}")
    encoder, name, path = load_weights(o.weights, o.variant, "image-encoder", o.seed, o.allow_unverified)
    # FAIR's file has no config: the encoder's, as its loader resolved it, is the decoder's too
    decoder = sam2_decoder.load(path, variant=encoder.config, allow_unverified=o.allow_unverified)
    size = encoder.config.input_size
    preprocessing = Preprocessing.for_sam2(size)
    encoder_entry = {"variant": name, "weights": dict(encoder.provenance), "input_size": list(size)}
    props = dict(variant=name, task=TASK, outputs=decoder.output_names, input_size=size,
                 preprocessing=preprocessing.to_dict(), labels=None, weights=dict(decoder.provenance), opset=o.opset,
                 batch="dynamic", versions=_versions(), encoder=encoder_entry)
    report = {"report_version": artifact.REPORT_VERSION, "variant": name, "task": TASK, "opset": o.opset,
              "batch": "dynamic", "weights": props["weights"], "input_size": list(size), "producer": props["versions"],
              "encoder": encoder_entry, "stages": {}}

    progress("reference", "the encoder (PyTorch) on the photographs, then the decoder on each prompt group")
    rng = np.random.default_rng(o.seed)
    images = {f"random:{o.seed}:{i}": rng.standard_normal((3, *size), dtype=np.float32) for i in range(NOISE_IMAGES)}
    images.update({photo: preprocessing(image) for photo, image in parity.photographs().items()})
    pixels = np.stack(list(images.values()))
    with torch.no_grad():
        embeddings = {key: value.numpy() for key, value in encoder(torch.from_numpy(pixels)).items()}
    del encoder
    feeds = prompt_calls(embeddings, size[0], decoder.config.low_res_size)
    reference = run_decoder(decoder, feeds)
    report["validation"] = {"inputs": list(images), "prompt_groups": {k: v for k, v in PROMPT_GROUPS.items()},
                            "prompts": int(len(reference["masks"])), "reference": "PyTorch fp32 (this package's "
                            "decoder on this package's encoder outputs, same weights)",
                            "runtime": "onnxruntime CPUExecutionProvider",
                            "thresholds": {p: {**parity.THRESHOLDS[p], "mask_iou": MASK_IOU_BOUNDS[p]}
                                           for p in PRECISIONS}, "mask_logit_tolerance": MASK_LOGIT_TOLERANCE,
                            "mask_rule": {"coverage": list(MASK_COVERAGE), "max_left_out": MAX_LEFT_OUT,
                                          "decision_tolerance": "each prompt's own error on its multimask masks "
                                          f"and scores, at least {MASK_LOGIT_TOLERANCE} and {SCORE_TOLERANCE}"}}
    report["stages"]["reference"] = {"seconds": round(time.perf_counter() - started, 2)}
    c = decoder.config
    stability = (c.dynamic_multimask_stability_delta, c.dynamic_multimask_stability_thresh) \
        if c.dynamic_multimask_via_stability else None
    return Prepared(decoder, name, props, report, pixels, feeds, reference, stability)


def prompt_calls(embeddings: dict[str, np.ndarray], size: int, low_res_size: int) -> list[dict]:
    """The decoder's validation calls: for each image (axis 0 of the encoder's outputs), each prompt group of
    `PROMPT_GROUPS` in its own call, without a mask prompt."""
    calls = []
    for index in range(len(embeddings["image_embeddings"])):
        image = {key: value[index:index + 1] for key, value in embeddings.items()}
        for _, coords, labels in prompt_feeds(size):
            calls.append({**image, "point_coords": coords, "point_labels": labels,
                          "mask_input": np.zeros((len(coords), 1, low_res_size, low_res_size), np.float32),
                          "has_mask_input": np.zeros(len(coords), np.float32)})
    return calls


def probe_inputs(p: Prepared) -> dict:
    """The stored inputs of the decoder's probe (`runtime.probe.decoder_inputs`): each embedding's shape and
    per-channel mean and std over PyTorch's encoder outputs on the validation photographs (the noise image left
    out: its statistics are not a photograph's), and `PROBE_CALLS` in pixels of the input frame."""
    per_image = p.feeds[::len(PROMPT_GROUPS)]  # `prompt_calls`: each image's groups in turn
    photographs = per_image[NOISE_IMAGES:]
    statistics = {}
    for name in probe.EMBEDDINGS:
        values = np.concatenate([feed[name] for feed in photographs]).astype(np.float64)
        statistics[name] = ([1, *values.shape[1:]], values.mean(axis=(0, 2, 3)), values.std(axis=(0, 2, 3)))
    height, width = p.report["input_size"]
    calls = [(np.array([[(x * width, y * height) for x, y, _ in prompt] for prompt in prompts], np.float32),
              np.array([[label for _, _, label in prompt] for prompt in prompts], np.float32),
              np.full(len(prompts), has_mask, np.float32)) for prompts, has_mask in PROBE_CALLS]
    of = p.report["validation"]["inputs"][NOISE_IMAGES:]
    return probe.decoder_inputs(statistics, of, calls, p.feeds[0]["mask_input"].shape[-1], PROBE_MASK_STD)


@torch.no_grad()
def run_decoder(decoder, calls: list[dict]) -> dict[str, np.ndarray]:
    """The PyTorch decoder's outputs on `calls`, concatenated along the prompts."""
    return _concatenate([dict(zip(decoder.output_names, (t.numpy() for t in decoder(
        *(torch.from_numpy(call[k]) for k in decoder.input_names))))) for call in calls])


def build(p: Prepared, staging: Path, stem: str, o: Options, progress) -> None:
    """Trace the decoder, write each precision's artifact as `artifact_name(stem, precision)` into `staging` and
    validate it on `p.feeds`, and add its probe; its rows go into `p.report` (graphs, artifacts, files, passed,
    tensorrt). The torch decoder is freed once traced."""
    report, reference, feeds = p.report, p.reference, p.feeds
    started = time.perf_counter()
    probed = probe_inputs(p)
    probe_reference = probe.multimask(run_decoder(p.decoder, probe.decoder_calls(probed)))
    traced = staging / f".traced.{stem}.onnx"
    progress("export", f"tracing SAM 2's mask decoder to ONNX opset {o.opset}")
    _trace(p.decoder, o.opset, traced)
    p.decoder = None
    graph = onnx.load(traced)
    report["graphs"] = {"exported": {"nodes": len(graph.graph.node), "ops": op_histogram(graph),
                                     "max_rank": max_rank(graph)}}
    report["artifacts"], report["files"], passed = {}, {}, True
    for precision in o.precisions:
        progress("convert", precision)
        model = convert.to_fp16(traced) if precision == "fp16" else onnx.load(traced)
        artifact.set_metadata(model, to_metadata(precision=artifact.computes(precision), **p.props))
        target = staging / artifact.artifact_name(stem, precision)
        findings = trt_check.check(model, o.trt_version)
        entry = {"file": target.name, "nodes": len(model.graph.node), "max_rank": max_rank(model),
                 "tensorrt_check": {"version": o.trt_version, "findings": findings}}
        onnx.save_model(model, target)
        onnx.checker.check_model(str(target), full_check=True)
        progress("validate", f"{precision} against PyTorch fp32 on {len(reference['masks'])} prompts")
        session = OnnxSession(target, provider="cpu", threads=2)
        got = _concatenate([session.run(feed["image_embeddings"], **{k: v for k, v in feed.items()
                                                                       if k != "image_embeddings"})
                            for feed in feeds])
        result, failed = judge(reference, got, p.stability, precision)
        _attach_probe(target, session, probed, probe_reference, precision)
        sha = files.sha256(target)  # after the probe: the report's sha256 covers it
        entry.update(parity=result, passed=not failed, failures=failed, bytes=target.stat().st_size, sha256=sha)
        report["artifacts"][precision] = entry
        report["files"][target.name] = {"bytes": entry["bytes"], "sha256": sha}
        passed &= not failed
    traced.unlink()
    report["passed"] = passed
    report["tensorrt"] = {"version": o.trt_version, "plan_error": "the mask decoder's TensorRT plan is not "
                          "written yet (its graph is checked against the parser: tensorrt_check)"}
    report["stages"]["total"] = {"seconds": round(time.perf_counter() - started + report["stages"]["reference"]
                                                  ["seconds"], 2)}


def _attach_probe(target: Path, session: OnnxSession, inputs: dict, reference: dict[str, np.ndarray],
                  precision: str) -> None:
    """Append the probe to the written artifact: PyTorch fp32's outputs on the probe's inputs under the precision's
    bound (as its validation holds it), and this onnxruntime CPU session's own."""
    document = probe.make_generated(inputs, reference, parity.THRESHOLDS[precision], probe.engine_name(session),
                                    probe.decoder_outputs(session, inputs))
    artifact.append_metadata(target, {"hiera.probe": json.dumps(document, allow_nan=False)})


def _trace(decoder, opset: int, path: Path) -> None:
    """The decoder as ONNX with the prompt and point axes dynamic; small enough to hold in one file."""
    prompts = torch.export.Dim("prompts", min=1, max=MAX_PROMPTS)
    points = torch.export.Dim("points", min=1, max=MAX_POINTS)
    dynamic = {"image_embeddings": None, "high_res_feats_0": None, "high_res_feats_1": None,
               "point_coords": {0: prompts, 1: points}, "point_labels": {0: prompts, 1: points},
               "mask_input": {0: prompts}, "has_mask_input": {0: prompts}}
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(decoder, decoder.example_inputs(), dynamo=True,
                                    opset_version=max(opset, TRACE_OPSET), input_names=decoder.input_names,
                                    output_names=decoder.output_names, dynamic_shapes=dynamic, optimize=True,
                                    verbose=False)
    graph = program.model_proto
    for node in graph.graph.node:  # the exporter's notes: stack traces with this machine's paths in them
        del node.metadata_props[:]
    if opset < TRACE_OPSET:
        to_opset_17(graph)
    if opset == 16:
        raise ExportError("opset 16: the mask decoder is written at opset 17 or later", "opset")
    onnx.save_model(graph, path)


def _concatenate(outputs: list[dict]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([o[name] for o in outputs]) for name in outputs[0]}


def _versions() -> dict:
    from .pipeline import _versions as versions  # one owner of the producer's versions

    return versions()
