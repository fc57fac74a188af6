"""SAM 2's image encoder at its full size, batch 1, 2 threads, interleaved repeats in one process: our artifacts in
onnxruntime (fp32, int8) and OpenVINO (the standard-op graph, f32) against transformers'
`Sam2Model.get_image_embeddings` in PyTorch (eager) and against transformers' own `torch.onnx` export of
`Sam2VisionModel` (dynamo, opset 18) in onnxruntime and in OpenVINO (f32). The weights are random (speed does not
depend on them); transformers' model is built from the same published size's config (`transformers_config`). One
table: each candidate's median and fastest time, its speed against transformers eager, the graph's node count and
max rank. With `--profile`, then onnxruntime's profile of the two fp32 graphs: the time per operator type, per call.

    for size in tiny base_plus; do
      python -m export --variant sam2.1_hiera_$size --task image-encoder --weights random \\
        --precision fp32 int8 openvino --out artifacts
    done
    python -m benchmarks.sam2_speed artifacts --variant sam2.1_hiera_tiny sam2.1_hiera_base_plus --repeats 5 --profile
"""

from __future__ import annotations

import argparse
import collections
import json
import os
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

from export.artifact import family
from export.onnx_export import _quiet
from export.optimize import max_rank
from hiera_model import SAM2_VARIANTS, Sam2Config
from runtime.bench import MAX_RUNS
from runtime.cli import MAX_THREADS
from runtime.openvino import OpenVinoSession
from runtime.shell import Whole

PROFILED = 12  # operator types shown per profile, the slowest first


def session(path: Path, threads: int, profile: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def transformers_config(config: Sam2Config) -> transformers.Sam2Config:
    """transformers' Sam2Config for one of our SAM 2 configs: its default is SAM 2.1 tiny, so every other size
    (base_plus: 112 wide, 2 heads first, blocks 2-3-16-3, global blocks 12, 16, 20, a 14 x 14 background table)
    is spelled out, and the neck's channel list follows the stage widths."""
    backbone = transformers.Sam2HieraDetConfig(
        hidden_size=config.embed_dim, num_attention_heads=config.num_heads[0],
        num_attention_heads_per_stage=list(config.num_heads), blocks_per_stage=list(config.depths),
        embed_dim_per_stage=list(config.stage_dims), window_size_per_stage=list(config.window_sizes),
        global_attention_blocks=list(config.global_blocks),
        window_positional_embedding_background_size=list(config.window_pos_embed_size),
        image_size=list(config.input_size))
    vision = transformers.Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=list(reversed(
        config.stage_dims)), fpn_hidden_size=config.fpn_dim, fpn_top_down_levels=list(config.fpn_top_down_levels))
    return transformers.Sam2Config(vision_config=vision)


def transformers_onnx(model: transformers.Sam2Model, folder: Path, size: tuple[int, int]) -> Path:
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
        program = torch.onnx.export(Levels(model.vision_encoder), (torch.zeros(1, 3, *size),), dynamo=True,
                                    opset_version=18, optimize=True)
        program.save(str(path))
    return path


def op_profile(path: Path, threads: int, pixel_values: np.ndarray, runs: int) -> dict[str, float]:
    """onnxruntime's profile of `runs` calls after one warm-up: ms per call by operator type."""
    profiled = session(path, threads, profile=True)
    feeds = {profiled.get_inputs()[0].name: pixel_values}
    for _ in range(1 + runs):
        profiled.run(None, feeds)
    trace = Path(profiled.end_profiling())
    try:
        events = json.loads(trace.read_text())
    finally:
        trace.unlink()
    seen, totals = collections.Counter(), collections.Counter()
    for event in events:  # one "<node>_kernel_time" event per node and call; each node's first is the warm-up
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            seen[event["name"]] += 1
            if seen[event["name"]] > 1:
                totals[event["args"]["op_name"]] += event["dur"] / 1000 / runs
    return dict(totals)


def measure(name: str, folder: Path, args) -> tuple[list[tuple], list[tuple] | None]:
    """The rows of one published size: (candidate, nodes, max rank, median ms, min ms, speed-up), and its profile
    rows (operator type, ours ms, theirs ms) with `--profile`."""
    config = SAM2_VARIANTS[name].config
    stem = family(name, "image-encoder")
    torch.manual_seed(0)
    reference = transformers.Sam2Model(transformers_config(config)).eval()
    pixel_values = np.random.default_rng(0).standard_normal((1, 3, *config.input_size), dtype=np.float32)
    with tempfile.TemporaryDirectory() as scratch:
        theirs = transformers_onnx(reference, Path(scratch), config.input_size)
        graphs = {"ours, onnxruntime fp32": folder / f"{stem}.onnx",
                  "ours, onnxruntime int8": folder / f"{stem}.int8.onnx",
                  "ours, OpenVINO f32": folder / f"{stem}.openvino.onnx",
                  "transformers ONNX, onnxruntime": theirs,
                  "transformers ONNX, OpenVINO f32": theirs}
        shapes = {}
        for candidate, path in graphs.items():
            graph = onnx.load(path, load_external_data=False)
            shapes[candidate] = (len(graph.graph.node), max_rank(graph))
        runs = {}
        for candidate, path in graphs.items():
            if "OpenVINO" in candidate:
                ov = OpenVinoSession(path, threads=args.threads)
                runs[candidate] = lambda s=ov: s.run(pixel_values)
            else:
                s = session(path, args.threads)
                runs[candidate] = lambda s=s: s.run(None, {s.get_inputs()[0].name: pixel_values})
        tensor = torch.from_numpy(pixel_values)
        runs["transformers eager"] = lambda: reference.get_image_embeddings(tensor)
        times = {candidate: [] for candidate in runs}
        with torch.no_grad():
            for run in runs.values():
                run()  # warm up
            for _ in range(args.repeats):
                for candidate, run in runs.items():
                    start = time.perf_counter()
                    run()
                    times[candidate].append(time.perf_counter() - start)
        profile = None
        if args.profile:
            ours, other = (op_profile(graphs[c], args.threads, pixel_values, args.profile_runs)
                           for c in ("ours, onnxruntime fp32", "transformers ONNX, onnxruntime"))
            kinds = sorted(set(ours) | set(other), key=lambda k: -max(ours.get(k, 0), other.get(k, 0)))
            profile = [(kind, ours.get(kind, 0.0), other.get(kind, 0.0)) for kind in kinds[:PROFILED]]
            rest = [(sum(p.get(k, 0.0) for k in kinds[PROFILED:])) for p in (ours, other)]
            profile += [("(the rest)", *rest), ("total", sum(ours.values()), sum(other.values()))]
    eager = statistics.median(times["transformers eager"])
    rows = [(candidate, *shapes.get(candidate, ("-", "-")), statistics.median(measured) * 1000,
             min(measured) * 1000, eager / statistics.median(measured)) for candidate, measured in times.items()]
    return rows, profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where the export wrote the variants' image-encoder artifacts "
                        "(fp32, int8, openvino)")
    parser.add_argument("--variant", nargs="+", default=["sam2.1_hiera_tiny"], choices=list(SAM2_VARIANTS),
                        metavar="NAME", help="published SAM 2 sizes, each exported in FOLDER (default "
                        "sam2.1_hiera_tiny)")
    parser.add_argument("--repeats", type=Whole(1, MAX_RUNS), default=5, help=f"1 to {MAX_RUNS} (default 5)")
    parser.add_argument("--threads", type=Whole(1, MAX_THREADS), default=2, help=f"1 to {MAX_THREADS} (default 2)")
    parser.add_argument("--profile", action="store_true", help="then onnxruntime's time per operator type of the "
                        "two fp32 graphs (ours and transformers' export)")
    parser.add_argument("--profile-runs", type=Whole(1, MAX_RUNS), default=3, help="calls profiled (default 3)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    missing = [str(args.folder / f"{family(name, 'image-encoder')}{suffix}") for name in args.variant
               for suffix in (".onnx", ".int8.onnx", ".openvino.onnx") if not (args.folder / (
                   family(name, "image-encoder") + suffix)).is_file()]
    if missing:
        parser.error(f"{missing[0]} is missing: export the variant first (see --help)")
    load = os.getloadavg()
    results = {name: measure(name, args.folder, args) for name in args.variant}
    print(f"batch 1, {args.threads} threads, {args.repeats} interleaved repeats; load average before "
          f"{load[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    print(f"{'variant':24s} {'candidate':32s} {'nodes':>5s} {'rank':>4s} {'median ms':>9s} {'min ms':>7s}  "
          "vs transformers eager")
    for name, (rows, _) in results.items():
        for candidate, nodes, rank, median, fastest, speedup in rows:
            print(f"{name:24s} {candidate:32s} {nodes!s:>5s} {rank!s:>4s} {median:9.0f} {fastest:7.0f}  {speedup:.2f}x")
    for name, (_, profile) in results.items():
        if profile:
            print(f"\n{name}: onnxruntime fp32 profile, ms per call by operator type ({args.profile_runs} calls)")
            print(f"{'operator':28s} {'ours':>8s} {'transformers ONNX':>18s}")
            for kind, ours, theirs in profile:
                print(f"{kind:28s} {ours:8.0f} {theirs:18.0f}")


if __name__ == "__main__":
    main()
