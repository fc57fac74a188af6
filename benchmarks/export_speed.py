"""Speed and size of our ONNX export against the reference's, in one run on one machine.

Times (median and p90 of wall-clock latency) at batch 1 and 8 with 2 threads, on the same seeded weights
(a checkpoint written by the reference's own save function, which our export loads):
  transformers eager           HieraForImageClassification in PyTorch (FAIR's `hiera.Hiera` for video)
  ours eager                   hiera_model in PyTorch
  transformers ONNX            transformers' model through torch.onnx.export (opset 17), in onnxruntime
  ours fp32, traced            our graph as torch exports it (--no-optimize), in onnxruntime
  ours fp32                    the fp32 artifact (fused), in onnxruntime
  ours int8                    the int8 artifact, in onnxruntime
and the fp32 floor: the model's FLOPs at the rate of the fastest of its own linear layers' GEMMs
(constant weights, as in the graph) in onnxruntime. Candidates, and that GEMM, are timed in interleaved
rounds, so that a machine whose speed drifts during the run treats them alike.

    python -m benchmarks.export_speed --variant base            # table on stdout, JSON in benchmarks/results/
    python -m benchmarks.export_speed --variant base --task backbone
    python -m benchmarks.export_speed --variant base --image-size 448 --batches 1

With `--image-size` every candidate runs at that size: transformers with `interpolate_pos_encoding=True`
(eager and in its ONNX export), ours exported for the size; one more row, our fp32 graph at the
checkpoint's own size, shows in the same run what the larger size costs per image.

With `--task backbone` the models output the four stage maps (NCHW): transformers' side is its
`HieraModel` with its rerolled hidden states (`reshaped_hidden_states`), the maps its own `HieraBackbone`
should give but does not (it skips the unroll).

Video variants (`--variant base_16x224`) have no transformers model: the reference is FAIR's `hiera`
(PyPI hiera-transformer), which needs torchvision and so stays out of this project's install. Run them in
the environment of tools/make_reference_fixtures.py with onnx, onnxscript and onnxruntime added:

    /tmp/refenv/bin/pip install onnx onnxscript onnxruntime
    /tmp/refenv/bin/python -m benchmarks.export_speed --variant base_16x224 --batches 1 --runs 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]

import hiera_model  # noqa: E402
from export import Options, run  # noqa: E402
from runtime.artifact import MAX_BATCH, MAX_SIDE  # noqa: E402
from runtime.bench import MAX_RUNS, time_calls  # noqa: E402
from runtime.shell import Whole  # noqa: E402

THREADS = 2


def timed(call, runs: int, warmup: int) -> list[float]:
    """Milliseconds per call; the first runs after another candidate's pay for its threads and cold caches,
    hence the untimed warmup."""
    return [seconds * 1000 for seconds in time_calls(call, runs, warmup)]


def summary(times: list[float]) -> dict:
    return {"median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90)), "runs": len(times)}


def onnx_session(model) -> ort.InferenceSession:
    """A CPU session on a file path or serialized model bytes."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    model = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def linear_shapes(model, input_size) -> set[tuple[int, int, int]]:
    """(rows, in, out) of every Linear of `model` at batch 1."""
    shapes = set()
    hooks = [m.register_forward_hook(lambda m, args, out: shapes.add((args[0].numel() // m.in_features,
                                                                      m.in_features, m.out_features)))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        model(torch.zeros(1, 3, *input_size))
    for hook in hooks:
        hook.remove()
    return shapes


def gemm_probe(shape: tuple[int, int, int]):
    """A call running one fp32 GEMM [rows, in] x [in, out] with constant weights in onnxruntime, and
    its FLOPs."""
    rows, k, n = shape
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["a", "w"], ["c"])], "gemm",
        [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [rows, k])],
        [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [rows, n])], [weight])
    session = onnx_session(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
                           .SerializeToString())
    feed = {"a": rng.standard_normal((rows, k), dtype=np.float32)}
    return lambda: session.run(None, feed), 2 * rows * k * n


def gflops(flops: int, times_ms: list[float]) -> float:
    return flops / (statistics.median(times_ms) / 1000) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="base", choices=list(hiera_model.VARIANTS))
    parser.add_argument("--task", default="classify", choices=["classify", "backbone"])
    parser.add_argument("--batches", type=Whole(1, MAX_BATCH), nargs="+", default=[1, 8],
                        help=f"each 1 to {MAX_BATCH} (default 1 8)")
    parser.add_argument("--rounds", type=Whole(1, MAX_RUNS), default=3,
                        help=f"interleaved rounds, 1 to {MAX_RUNS} (default 3)")
    parser.add_argument("--runs", type=Whole(1, MAX_RUNS), default=8,
                        help=f"timed runs per candidate and round at batch 1, after 3 untimed (1 to {MAX_RUNS}, "
                        "default 8; divided by the batch size, at least 2, after 1 untimed)")
    parser.add_argument("--image-size", type=Whole(1, MAX_SIDE), nargs="+", metavar="N",
                        help=f"H [W], each 1 to {MAX_SIDE}: run at another input size")
    parser.add_argument("--json", type=Path, help="default: benchmarks/results/export_speed_<variant>[_backbone]"
                        "[_<size>].json")
    args = parser.parse_args()
    if 1 not in args.batches:
        parser.error("--batches must include 1: the comparisons and the floor are at batch 1")
    torch.set_num_threads(THREADS)

    config = hiera_model.get_variant(args.variant).config
    native = tuple(config.input_size)
    size = tuple((args.image_size * 2)[:2]) if args.image_size else native
    tmp = Path(tempfile.mkdtemp(prefix="hiera-bench-"))
    if config.is_video:
        if args.task != "classify":
            parser.error("video variants: --task classify only")
        library, exported_reference, weights, versions = fair_video(args.variant, tmp)
    else:
        library, exported_reference, weights, versions = transformers_reference(config, args.task, tmp,
                                                                                 interpolate=size != native)
    ours = hiera_model.load(weights, task=args.task, input_size=size if size != native else None)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        ours(torch.zeros(1, 3, *size))
    flops = counter.get_total_flops()
    print("finding the fastest of the linear layers' GEMM shapes", file=sys.stderr, flush=True)
    probes = [gemm_probe(shape) for shape in linear_shapes(ours, size)]
    probe, probe_flops = max(probes, key=lambda p: gflops(p[1], timed(p[0], runs=10, warmup=3)))
    probe_times = []

    rows: dict[str, dict] = {}
    for batch in args.batches:
        x = np.random.default_rng(batch).standard_normal((batch, 3, *size), dtype=np.float32)
        tx = torch.from_numpy(x)
        print(f"batch {batch}: exporting", file=sys.stderr, flush=True)
        files = {}
        for name, optimize in (("ours fp32, traced", False), ("ours fp32", True)):
            out = tmp / f"{batch}-{optimize}"
            report = run(Options(weights=str(weights), task=args.task, out_dir=out, batch=batch, optimize=optimize,
                                 validate=False, precisions=("fp32", "int8") if optimize else ("fp32",),
                                 image_size=size if size != native else None))
            files[name] = out / report["artifacts"]["fp32"]["file"]
            if optimize:
                files["ours int8"] = out / report["artifacts"]["int8"]["file"]
        if size != native:  # what the larger input costs, in the same run
            out = tmp / f"{batch}-native"
            report = run(Options(weights=str(weights), task=args.task, out_dir=out, batch=batch, validate=False,
                                 precisions=("fp32",)))
            files[f"ours fp32 at {native[0]}x{native[1]}"] = out / report["artifacts"]["fp32"]["file"]
        theirs = tmp / f"{library}-{batch}.onnx"
        with torch.no_grad():
            torch.onnx.export(exported_reference, (tx,), theirs, opset_version=17, dynamo=False,
                              input_names=["pixel_values"], output_names=ours.output_names)
        files = {f"{library} ONNX": theirs, **files}

        sessions = {name: onnx_session(path) for name, path in files.items()}
        candidates = {f"{library} eager": lambda t=tx: exported_reference(t), "ours eager": lambda t=tx: ours(t)}
        native_x = np.ascontiguousarray(x[..., :native[0], :native[1]]) if size != native else x
        candidates.update({name: lambda s=session, feed={"pixel_values": native_x if " at " in name else x}:
                           s.run(None, feed) for name, session in sessions.items()})
        times = {name: [] for name in candidates}
        runs, warmup = max(2, args.runs // batch), 3 if batch == 1 else 1
        with torch.inference_mode():
            for round_ in range(args.rounds):
                print(f"batch {batch}: timing round {round_ + 1}/{args.rounds}", file=sys.stderr, flush=True)
                for name, call in candidates.items():
                    times[name] += timed(call, runs, warmup)
                if batch == 1:  # the GEMM rate, measured in the same rounds as the models
                    probe_times += timed(probe, 10 * runs, warmup)
        for name in candidates:
            nodes = len(onnx.load(files[name]).graph.node) if name in files else None
            rows.setdefault(name, {"nodes": nodes})[f"batch {batch}"] = summary(times[name])
        del sessions, candidates

    rate = gflops(probe_flops, probe_times)
    floor_ms = flops / (rate * 1e9) * 1000
    result = {
        "variant": args.variant, "task": args.task, "image_size": list(size), "reference": library, "threads": THREADS,
        "gflop_batch1": flops / 1e9,
        "gemm_gflops": rate, "fp32_floor_ms_batch1": floor_ms, "rows": rows,
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": ort.__version__, **versions},
    }
    print(table(result, args.batches))
    suffix = ("" if args.task == "classify" else f"_{args.task}") + (
        "" if size == native else "_" + "x".join(map(str, dict.fromkeys(size))))
    path = args.json or ROOT / "benchmarks" / "results" / f"export_speed_{args.variant}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def transformers_reference(config, task: str, tmp: Path, interpolate: bool = False):
    """transformers' model of `config` with seeded random weights, as its users export it (logits, or the
    rerolled stage maps; with `interpolate`, at another size through interpolate_pos_encoding), and the
    directory `save_pretrained` wrote it to."""
    import transformers

    transformers.logging.set_verbosity_error()
    reference_class = transformers.HieraForImageClassification if task == "classify" else transformers.HieraModel
    torch.manual_seed(0)
    reference = reference_class(transformers.HieraConfig(
        embed_dim=config.embed_dim, num_heads=list(config.num_heads), depths=list(config.depths))).eval()
    reference.save_pretrained(tmp / "weights")
    if interpolate and task != "classify":
        sys.exit("--image-size: transformers rerolls its hidden states on its config's grid; time the classifier")
    wrapped = Logits(reference, interpolate) if task == "classify" else StageMaps(reference)
    return "transformers", wrapped, tmp / "weights", {"transformers": transformers.__version__}


def fair_video(variant: str, tmp: Path):
    """FAIR's video model of `variant` with seeded random weights, and the FAIR .pth it was saved to."""
    try:
        import hiera
    except ImportError:
        sys.exit("video variants are compared with FAIR's hiera (pip install hiera-transformer, which needs "
                 "torchvision); see this script's docstring")
    torch.manual_seed(0)
    reference = getattr(hiera, f"hiera_{variant}")(pretrained=False).eval()
    weights = tmp / "fair_video.pth"  # not a published file name: nothing for models.lock to verify
    torch.save({"model_state": reference.state_dict()}, weights)
    from importlib.metadata import version

    return "FAIR", reference, weights, {"hiera-transformer": version("hiera-transformer")}


class Logits(torch.nn.Module):
    """transformers' classifier returning the logits tensor, as its users export it."""

    def __init__(self, model, interpolate: bool = False):
        super().__init__()
        self.model, self.interpolate = model, interpolate

    def forward(self, pixel_values):
        return self.model(pixel_values, interpolate_pos_encoding=self.interpolate).logits


class StageMaps(torch.nn.Module):
    """transformers' HieraModel returning each stage's rerolled map, NCHW: what a backbone user needs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        states = self.model(pixel_values, output_hidden_states=True).reshaped_hidden_states[1:]
        return tuple(state.permute(0, 3, 1, 2) for state in states)


def table(result: dict, batches) -> str:
    reference = f"{result['reference']} eager"
    base = result["rows"][reference]["batch 1"]["median_ms"]
    header = ["", "nodes"] + [f"b{b} median / p90 ms" for b in batches] + [f"b1 vs {reference}"]
    lines = [header]
    for name, row in result["rows"].items():
        cells = [name, str(row["nodes"] or "-")]
        cells += [f"{row[f'batch {b}']['median_ms']:.1f} / {row[f'batch {b}']['p90_ms']:.1f}" for b in batches]
        cells.append(f"{base / row['batch 1']['median_ms']:.2f}x")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines)
    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    first, *rest = text.splitlines()
    return "\n".join([
        f"Hiera-{result['variant']}, {result['gflop_batch1']:.1f} GFLOP per "
        f"{'clip' if hiera_model.get_variant(result['variant']).config.is_video else 'image'}, "
        f"{result['threads']} threads",
        "", first, rule, *rest, "",
        f"fp32 floor at batch 1: {result['fp32_floor_ms_batch1']:.1f} ms; ours fp32 takes "
        f"{result['rows']['ours fp32']['batch 1']['median_ms'] / result['fp32_floor_ms_batch1']:.2f}x that "
        f"(the fastest of the model's own GEMM shapes reaches {result['gemm_gflops']:.0f} GFLOP/s in onnxruntime here)",
    ])


if __name__ == "__main__":
    main()
