"""SAM 2.1 tiny's mask decoder at full size (1024 x 1024 input, 256-wide decoder): export it from a transformers
`Sam2Model` (default `Sam2Config`, seeded random weights, saved with `save_pretrained`), print the report's rows,
and time one prompt through our decoder artifact (onnxruntime and OpenVINO) against transformers eager's
prompt encoder + mask decoder on the same image embedding, interleaved in one process.

    python -m benchmarks.segment_full_size --out /tmp/sam2-full --repeats 20
    python -m benchmarks.segment_full_size --out /tmp/sam2-family --family   # encoder and decoder as one export

Random weights: the figures say what the graph computes and how fast, not how good the masks are."""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import Sam2Config, Sam2Model

from export import Options
from export import mask_decoder
from runtime.session import OnnxSession
from runtime.bench import MAX_RUNS
from runtime.shell import Whole
from runtime.openvino import OpenVinoSession


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--repeats", type=Whole(1, MAX_RUNS),
                   default=20)
    p.add_argument("--time-only", action="store_true", help="time the decoder an earlier run exported into --out")
    p.add_argument("--family", action="store_true", help="export the encoder (fp32, fp16, int8) and the "
                   "decoder as one export (--task segmenter) and print its rows, the encoder's mask-IoU rows among "
                   "them; no timing")
    a = p.parse_args()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    checkpoint = a.out / "sam2.1-hiera-tiny-random"
    if not (checkpoint / "config.json").exists():
        Sam2Model(Sam2Config()).eval().save_pretrained(checkpoint)
    started = time.perf_counter()
    if a.time_only:
        report = json.loads((a.out / "hiera_sam2_1_hiera_tiny_random_mask-decoder.report.json").read_text())
        return timing(a, checkpoint, a.out / report["artifacts"]["fp32"]["file"])
    if a.family:
        return family(a, checkpoint, started)
    report = mask_decoder.run(Options(weights=str(checkpoint), task="mask-decoder", out_dir=a.out,
                                      precisions=("fp32", "fp16")), progress=lambda s, m: print(f"  {s}: {m}"))
    print(f"export: {time.perf_counter() - started:.1f} s, passed {report['passed']}, graph nodes "
          f"{report['graphs']['exported']['nodes']}, max rank {report['graphs']['exported']['max_rank']}")
    for precision, entry in report["artifacts"].items():
        masks, scores = entry["parity"]["masks"], entry["parity"]["iou_scores"]
        print(f"{precision}: masks max abs {masks['max_abs']:.2e}, cosine {masks['cosine']:.6f}, "
              f"{mask_decoder.describe_mask_row(masks)}; iou_scores max abs {scores['max_abs']:.2e}; "
              f"TensorRT check: {entry['tensorrt_check']['findings']}")
    timing(a, checkpoint, a.out / report["artifacts"]["fp32"]["file"])


def family(a, checkpoint: Path, started: float) -> None:
    from export import segmenter

    report = segmenter.run(Options(weights=str(checkpoint), task="segmenter", out_dir=a.out, batch=None,
                                   precisions=("fp32", "fp16", "int8")), progress=lambda s, m: print(f"  {s}: {m}"))
    print(f"export: {time.perf_counter() - started:.1f} s, passed {report['passed']}")
    for entry in report["artifacts"].values():
        row = entry.get("mask_iou") or entry["parity"]["masks"]  # an encoder's row through the decoder; the decoder's
        first = next(iter(entry["parity"].values()))
        verdict = "passed" if entry["passed"] else "FAILED: " + "; ".join(entry["failures"])
        print(f"{entry['file']}: {next(iter(entry['parity']))} max abs {first['max_abs']:.2e}, cosine "
              f"{first['cosine']:.6f}, {mask_decoder.describe_mask_row(row)}, {verdict}")


def timing(a, checkpoint: Path, artifact: Path) -> None:
    model = Sam2Model.from_pretrained(checkpoint).eval()
    rng = np.random.default_rng(0)
    embeddings = {"image_embeddings": rng.standard_normal((1, 256, 64, 64), dtype=np.float32),
                  "high_res_feats_0": rng.standard_normal((1, 32, 256, 256), dtype=np.float32),
                  "high_res_feats_1": rng.standard_normal((1, 64, 128, 128), dtype=np.float32)}
    feeds = dict(point_coords=np.array([[[500.0, 375.0]]], np.float32), point_labels=np.ones((1, 1), np.float32),
                 mask_input=np.zeros((1, 1, 256, 256), np.float32), has_mask_input=np.zeros(1, np.float32))
    sessions = {"ours, onnxruntime fp32": OnnxSession(artifact, provider="cpu", threads=2),
                "ours, OpenVINO f32": OpenVinoSession(artifact, threads=2)}
    torch.set_num_threads(2)
    reference = [torch.from_numpy(embeddings[k]) for k in ("high_res_feats_0", "high_res_feats_1", "image_embeddings")]

    def eager():
        with torch.no_grad():
            model(image_embeddings=reference, input_points=torch.tensor([[[[500.0, 375.0]]]]),
                  input_labels=torch.ones(1, 1, 1, dtype=torch.int), multimask_output=False)

    candidates = {name: (lambda s=s: s.run(embeddings["image_embeddings"],
                                           high_res_feats_0=embeddings["high_res_feats_0"],
                                           high_res_feats_1=embeddings["high_res_feats_1"], **feeds))
                  for name, s in sessions.items()}
    candidates["transformers eager (prompt encoder + mask decoder)"] = eager
    times = {name: [] for name in candidates}
    for _ in range(3):
        for call in candidates.values():
            call()
    for _ in range(a.repeats):  # interleaved: the machine's load falls on every candidate alike
        for name, call in candidates.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1000)
    base = statistics.median(times["transformers eager (prompt encoder + mask decoder)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:52s} median {median:7.1f} ms  {base / median:4.2f}x")


if __name__ == "__main__":
    main()
