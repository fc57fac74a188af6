"""Two exports of one model, side by side: speed in onnxruntime and OpenVINO, interleaved in one process, and
each graph's node count and max rank. Made to compare the rank-4 graph with the rank-6 one it replaced
(export one with each version of the code, same variant and seed), on a machine that others may share:
every round times each engine's two graphs back to back (in alternating order), and the ratio of the two is
taken round by round, so that a load that comes and goes hits both alike.

    python -m benchmarks.rank_speed OLD_DIR NEW_DIR --stem hiera_base_classify     # table on stdout

Each folder holds an export with the fp32, int8 and openvino precisions (`--precision fp32 int8 openvino`).
Candidates: fp32 and int8 in onnxruntime (its CPU provider), the OpenVINO artifact in OpenVINO at f32, each
through the runtime's API with 2 threads, batch 1.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import onnx

from export.optimize import max_rank  # noqa: E402
from runtime import load  # noqa: E402
from runtime.bench import time_calls  # noqa: E402
from runtime.bench import MAX_RUNS  # noqa: E402
from runtime.shell import Whole  # noqa: E402

THREADS = 2
ENGINES = {"fp32, ort": ("", "cpu"), "int8, ort": (".int8", "cpu"), "openvino, OV f32": (".openvino", "openvino")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs=2, type=Path, help="the two exports (e.g. rank 6, then rank 4)")
    parser.add_argument("--stem", required=True, help="the files' common stem, e.g. hiera_base_classify")
    parser.add_argument("--rounds", type=Whole(1, MAX_RUNS),
                        default=10)
    parser.add_argument("--runs", type=Whole(1, MAX_RUNS),
                        default=8, help="timed calls per candidate and round (their median counts)")
    args = parser.parse_args()

    candidates, rows = {}, {}  # by (engine, folder)
    for engine, (suffix, provider) in ENGINES.items():
        for folder in args.folders:
            path = folder / f"{args.stem}{suffix}.onnx"
            graph = onnx.load(path, load_external_data=False)
            model = load(path, provider=provider, threads=THREADS)
            shape = (1, *[d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim[1:]])
            pixels = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
            candidates[engine, folder] = lambda model=model, pixels=pixels: model.run(pixels)
            rows[engine, folder] = {"nodes": len(graph.graph.node), "max_rank": max_rank(graph), "rounds": []}
    for round_ in range(args.rounds):
        for engine in ENGINES:  # the two graphs of an engine back to back, in alternating order
            for folder in args.folders[::-1] if round_ % 2 else args.folders:
                rows[engine, folder]["rounds"].append([t * 1000 for t in time_calls(candidates[engine, folder],
                                                                                   args.runs, 2)])
    # Under a shared load the fastest calls are the steadiest figure; the rounds' medians say how the rest went.
    print(f"{'candidate':<36} {'nodes':>5} {'rank':>4} {'min ms':>7} {'median ms':>9}  ratio to the first folder: "
          "of the minima, and the median [range] of the rounds' median ratios")
    for (engine, folder), row in rows.items():
        first = rows[engine, args.folders[0]]["rounds"]
        ratios = [statistics.median(mine) / statistics.median(theirs) for mine, theirs in zip(row["rounds"], first)]
        fastest, everything = min(map(min, row["rounds"])), [t for times in row["rounds"] for t in times]
        print(f"{engine + ': ' + folder.name:<36} {row['nodes']:>5} {row['max_rank']!s:>4} {fastest:>7.1f} "
              f"{statistics.median(everything):>9.1f}  {fastest / min(map(min, first)):.3f}, "
              f"{statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]")

if __name__ == "__main__":
    main()
