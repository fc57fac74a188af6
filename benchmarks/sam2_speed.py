"""SAM 2's image encoder at its full size, batch 1, 2 threads, interleaved repeats in one process: our artifacts in
onnxruntime (fp32, int8) against transformers' `Sam2Model.get_image_embeddings` in PyTorch (eager) and against
transformers' own `torch.onnx` export of `Sam2VisionModel` (dynamo, opset 18) in onnxruntime. The weights are
random (speed does not depend on them); the graphs' node counts and max ranks are printed too.

    python -m export --variant sam2.1_hiera_tiny --task image-encoder --weights random --out artifacts
    python -m benchmarks.sam2_speed artifacts --repeats 5

Only SAM 2.1 tiny (transformers' default Sam2Config), the variant the artifacts' folder holds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import transformers

from export.onnx_export import _quiet
from export.optimize import max_rank
from runtime.bench import MAX_RUNS
from runtime.cli import MAX_THREADS
from runtime.shell import Whole

STEM = "hiera_sam2_1_hiera_tiny_image-encoder"


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def transformers_onnx(model: transformers.Sam2Model, folder: Path) -> Path:
    """transformers' vision encoder as torch.onnx exports it (the FPN levels; without conv_s0, conv_s1 and the
    no-memory embedding, which its export leaves to the caller)."""
    class Levels(torch.nn.Module):
        def __init__(self, vision):
            super().__init__()
            self.vision = vision

        def forward(self, pixel_values):
            return tuple(self.vision(pixel_values).fpn_hidden_states)

    path = folder / "transformers_sam2_vision.onnx"
    with _quiet(), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Levels(model.vision_encoder), (torch.zeros(1, 3, 1024, 1024),), dynamo=True,
                                    opset_version=18, optimize=True)
        program.save(str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where the export wrote the sam2.1_hiera_tiny artifacts")
    parser.add_argument("--repeats", type=Whole(1, MAX_RUNS), default=5, help=f"1 to {MAX_RUNS} (default 5)")
    parser.add_argument("--threads", type=Whole(1, MAX_THREADS), default=2, help=f"1 to {MAX_THREADS} (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    reference = transformers.Sam2Model(transformers.Sam2Config()).eval()
    pixel_values = np.random.default_rng(0).standard_normal((1, 3, 1024, 1024), dtype=np.float32)
    with tempfile.TemporaryDirectory() as folder:
        theirs = transformers_onnx(reference, Path(folder))
        files = {"ours onnxruntime fp32": args.folder / f"{STEM}.onnx",
                 "ours onnxruntime int8": args.folder / f"{STEM}.int8.onnx",
                 "transformers ONNX onnxruntime": theirs}
        for name, path in files.items():
            graph = onnx.load(path, load_external_data=False)
            print(f"{name:30s} {len(graph.graph.node):4d} nodes, max rank {max_rank(graph)}")
        sessions = {name: session(path, args.threads) for name, path in files.items()}
        runs = {name: (lambda s=s: s.run(None, {s.get_inputs()[0].name: pixel_values})) for name, s in sessions.items()}
        tensor = torch.from_numpy(pixel_values)
        runs["transformers eager"] = lambda: reference.get_image_embeddings(tensor)
        times = {name: [] for name in runs}
        with torch.no_grad():
            for run in runs.values():
                run()  # warm up
            for _ in range(args.repeats):
                for name, run in runs.items():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
    eager = statistics.median(times["transformers eager"])
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"{name:30s} median {median * 1000:6.0f} ms  min {min(measured) * 1000:6.0f} ms  "
              f"{eager / median:.2f}x transformers eager")


if __name__ == "__main__":
    main()
