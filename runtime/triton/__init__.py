"""Serving with NVIDIA Triton: `python -m runtime triton MODEL... --repo DIR` writes a Triton model repository.

    from runtime.triton import Options, write_repository
    write_repository(["artifacts/hiera_base_classify.onnx"], "models", Options(kind="gpu", instances=2))

The repository layout is in `repository.py`, the python-backend steps it writes in `python_model.py`, and a
local server for tests and benchmarks in `server.py`. docs/serving.md is the user's guide.
"""

from __future__ import annotations

from pathlib import Path

from ..artifact import MAX_BATCH
from ..model import MAX_TOP_K
from ..preprocess import MAX_MEGAPIXELS, MAX_PIXELS
from ..shell import Number, Whole, say
from .repository import DEFAULT_MAX_BATCH, EMBEDDINGS, MANIFEST, MARKER, Options, Served, plan, write_repository

__all__ = ["Options", "Served", "add_parser", "command", "plan", "write_repository"]

# Upper bounds of the numeric options, as --help documents them. Triton's schema takes any int32 count and
# any uint64 delay; these are what a server can hold and a client would wait for.
MAX_INSTANCES = 1024
MAX_QUEUE_DELAY_US = 60_000_000  # a minute


def add_parser(commands) -> None:
    """The `triton` subcommand, on the `python -m runtime` subparsers."""
    p = commands.add_parser("triton", help="write a Triton model repository (and a KServe manifest) for artifacts",
                            description="Write a Triton model repository: for each artifact an ensemble that takes "
                                        "encoded images and runs the artifact's own preprocessing, the model and, "
                                        "for a classifier, softmax top-k.")
    p.add_argument("models", nargs="+", type=Path, metavar="MODEL", help="exported .onnx files, or TensorRT engines "
                   "with their sidecars (engines of one model for several GPUs are served as one model)")
    p.add_argument("--decoder", type=Path, help="SAM 2: a mask decoder artifact exported with the image encoder among "
                   "MODEL, served as two python-backend models: DECODER (the encoder's embeddings, the image size and "
                   "prompts in) and DECODER_segment (image bytes and prompts in); masks at the image's size and "
                   "iou_scores out (docs/serving.md)")
    p.add_argument("--repo", type=Path, required=True, help="the folder to write; an existing repository written "
                   "by this command is replaced whole, any other non-empty folder refused")
    p.add_argument("--backend", choices=["native", "python"], default="native", help="the model step: Triton's "
                   "onnxruntime or TensorRT backend (default), or a python-backend model running the artifact "
                   "through this runtime")
    p.add_argument("--kind", choices=["cpu", "gpu"], default="cpu", help="where the model step runs (default cpu)")
    p.add_argument("--instances", type=Whole(1, MAX_INSTANCES), default=1, help="instances of the model step and of "
                   f"the preprocessing (default 1, at most {MAX_INSTANCES})")
    p.add_argument("--max-batch", type=Whole(1, MAX_BATCH), help="largest batch Triton forms (default: a static "
                   f"artifact's batch, an engine profile's largest, else {DEFAULT_MAX_BATCH}; at most {MAX_BATCH})")
    p.add_argument("--top-k", type=Whole(1, MAX_TOP_K), default=5, help="classifiers: classes per image (default 5, "
                   f"at most {MAX_TOP_K})")
    p.add_argument("--no-dynamic-batching", dest="dynamic_batching", action="store_false",
                   help="run the model on each request as it comes (default: Triton's dynamic batcher forms "
                   "batches across requests)")
    p.add_argument("--preferred-batch", type=Whole(1, MAX_BATCH), nargs="+", metavar="N", help="batch sizes the "
                   f"dynamic batcher waits for, 1 to {MAX_BATCH} (default: half the max batch and the max batch)")
    p.add_argument("--queue-delay-us", type=Whole(0, MAX_QUEUE_DELAY_US), default=100, help="how long the dynamic "
                   "batcher may hold a request to fill a preferred batch, in microseconds (default 100, at most "
                   f"{MAX_QUEUE_DELAY_US})")
    p.add_argument("--trt-fp16", action="store_true", help="--kind gpu, ONNX: onnxruntime's TensorRT accelerator "
                   "in fp16")
    p.add_argument("--python-path", nargs="+", default=[], metavar="DIR", help="absolute import paths for the "
                   "python steps, for a server whose Python lacks hiera-deploy (default: the server's own)")
    p.add_argument("--max-megapixels", type=Number(0, MAX_MEGAPIXELS), default=MAX_PIXELS / 1e6,
                   help=f"refuse larger images, a decompression-bomb guard (default {MAX_PIXELS / 1e6:g}, at most "
                        f"{MAX_MEGAPIXELS:g})")


def command(args) -> int:
    options = Options(backend=args.backend, kind=args.kind, instances=args.instances, max_batch=args.max_batch,
                      top_k=args.top_k, dynamic_batching=args.dynamic_batching,
                      preferred_batch=tuple(args.preferred_batch) if args.preferred_batch else None,
                      queue_delay_us=args.queue_delay_us, trt_fp16=args.trt_fp16,
                      python_path=tuple(args.python_path), max_pixels=int(args.max_megapixels * 1e6))
    written = write_repository(args.models, args.repo, options, decoder=args.decoder)
    say(f"{'replaced' if written['replaced'] else 'wrote'} {args.repo}")
    for model in written["models"]:
        outputs = "scores, indices, labels" if model["task"] == "classify" else f"{model['task']} outputs"
        engine = "python backend (runtime)" if model["backend"] == "python" else model["platform"]
        say(f"  {model['name']}: image bytes -> {outputs}; max batch {model['max_batch']}")
        say(f"    {' -> '.join(model['steps'])}  ({engine}, {options.kind} x{options.instances})")
        say(f"    probe: {model['probe']}")
    if "segment" in written:
        segment = written["segment"]
        say(f"  {segment['prompt_model']}: {', '.join(EMBEDDINGS)} (from {segment['encoder']}), image_size and "
            "prompts -> masks, iou_scores")
        say(f"  {segment['one_shot_model']}: image bytes and prompts -> masks, iou_scores "
            f"({segment['encoder']}_model, then {segment['prompt_model']})")
    say(f"  {MARKER}: what was written from what; {MANIFEST}: KServe (set storageUri and image)")
    say(f"serve: tritonserver --model-repository {args.repo.resolve()}")
    return 0
