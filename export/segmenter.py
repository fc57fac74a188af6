"""`--task segmenter`: SAM 2's image encoder and its mask decoder as one export: one transaction, one report.

The encoder is the export of `--task image-encoder` (`pipeline.run`, every precision asked for); the decoder is
`mask_decoder`'s, in fp32 and fp16, written into the same staging folder before the commit. The files share one
stem, `hiera_<name>_segmenter`: the encoder's are named as any export's (`.onnx`, `.fp16.onnx`, ...), the decoder's
are `<stem>.decoder.onnx` and `<stem>.decoder.fp16.onnx`, and the report (`<stem>.report.json`) lists both models'
artifacts and files (the decoder's under `decoder-<precision>`).

Each encoder artifact also gets a mask-IoU row: its outputs on the decoder's validation images, fed to the fp32
decoder (PyTorch) with the validation prompts, against PyTorch's encoder outputs fed to it; an encoder that passes
its cosine but spoils the masks fails the export.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from runtime.formats import FORMATS

from . import hub, mask_decoder, parity, pipeline
from .errors import ExportError
from .options import Options

TASK = "segmenter"
ENCODER_TASK = "image-encoder"
DECODER = "decoder"  # the decoder's files are `<stem>.decoder<suffix>`, its report keys `decoder-<precision>`


def decoder_key(precision: str) -> str:
    return f"{DECODER}-{precision}"


def check(o: Options) -> None:
    """What the family refuses, before anything is loaded: another input size (the decoder's prompt frame is the
    checkpoint's), a Hub layout without fp32 (`hub.check`: transformers.js' SAM 2 layout, export/hub.py), an export
    without validation (the mask-IoU rows are the point), and what the decoder's own export refuses (weights that
    are not a Sam2Model folder)."""
    if o.image_size is not None:
        raise ExportError("image_size: not an option of task segmenter (the decoder's prompts are in the "
                          "checkpoint's input frame)", "image_size")
    if o.layout == "hub":
        hub.check(TASK, False, o.precisions)
    if not o.validate:
        raise ExportError("validate: task segmenter always validates (its mask-IoU rows)", "validate")
    mask_decoder.check(replace(o, precisions=mask_decoder.PRECISIONS, build_engine=False, layout="files"))


def run(options: Options, progress=lambda step, message: None) -> dict:
    """The encoder (the precisions asked for) and the decoder (fp32, fp16) exported, validated and written as one
    transaction; the report."""
    check(options)
    return pipeline.run(replace(options, task=ENCODER_TASK), progress, family=_Family(options, progress))


class _Family:
    """`pipeline.run`'s hook: names the files' stem, and adds the decoder to the export inside its transaction."""
    task = TASK

    def __init__(self, options: Options, progress):
        self.options = replace(options, task=mask_decoder.TASK, precisions=mask_decoder.PRECISIONS)
        self.progress = progress

    def __call__(self, r, report: dict) -> dict:
        prepared = mask_decoder.prepare(self.options, self.progress)
        if prepared.name != r.name:
            raise ExportError(f"{self.options.weights}: the decoder's variant {prepared.name} is not the encoder's "
                              f"{r.name}")
        artifacts = {}
        for precision, path in r.files.items():  # every encoder artifact, through the fp32 decoder (PyTorch)
            self.progress("validate", f"{precision}: its outputs through the fp32 decoder, masks against PyTorch's")
            embeddings = parity.run_artifact(path, {"pixel_values": prepared.images})
            row = encoder_mask_row(prepared, embeddings, precision)
            failures = [*report["artifacts"][precision].get("failures", []), *row.pop("failures")]
            artifacts[precision] = {"mask_iou": row, "failures": failures, "passed": not failures}
        mask_decoder.build(prepared, r.staging, f"{r.stem}.{DECODER}", self.options, self.progress)
        decoded = prepared.report
        for precision, entry in decoded["artifacts"].items():  # what verify and the runtime compare its metadata with
            entry.update(precision=precision, task=mask_decoder.TASK, weights=decoded["weights"])
            artifacts[decoder_key(precision)] = entry
        passed = report.get("passed") is not False and all(a["passed"] for a in artifacts.values())
        return {"artifacts": artifacts, "files": decoded["files"], "passed": passed, "family": TASK,
                DECODER: {key: decoded[key] for key in ("task", "weights", "encoder", "validation", "graphs",
                                                        "tensorrt")}}


def encoder_mask_row(prepared: mask_decoder.Prepared, embeddings: dict[str, np.ndarray], precision: str) -> dict:
    """An encoder artifact's mask-IoU row: `embeddings` (its outputs on `prepared.images`) through the PyTorch
    decoder with the validation prompts, against `prepared.reference` (PyTorch's encoder outputs through it), by
    `mask_decoder.compare_masks`' rule; its bound is `parity.ENCODER_MASK_IOU_BOUNDS` of what the artifact computes.
    The row's `failures` says why it fails (empty when it passes)."""
    reference = prepared.reference
    calls = mask_decoder.prompt_calls(embeddings, prepared.report["input_size"][0], reference["masks"].shape[-1])
    row = mask_decoder.compare_masks(reference, mask_decoder.run_decoder(prepared.decoder, calls), prepared.stability)
    bound = parity.ENCODER_MASK_IOU_BOUNDS[FORMATS[precision].computes]
    row.update(bound=bound, through="the fp32 decoder (PyTorch), on the decoder's validation prompts")
    row["failures"] = mask_decoder.mask_row_failures(row, bound, "masks through the fp32 decoder:")
    return row
