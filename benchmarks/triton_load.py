"""Load on a Triton server: images/s, p50/p99 latency and failed requests at several client concurrencies, with
Triton's dynamic batching on and off.

For each setting it writes the python-backend repository of one classifier (`python -m runtime triton MODEL
--backend python`), starts nvidia-pytriton's tritonserver on loopback ports (runtime/triton/server.py, in
`--server-venv`), and sends a fixed number of requests, one encoded image each, from 1, 4 and 16 client threads
that each wait for their answer before sending again. Every answer is checked against the runtime's own
prediction for that image; a wrong one counts as failed.

    python3 -m venv .venv-tritonserver && .venv-tritonserver/bin/pip install nvidia-pytriton==0.7.0   # once
    python -m benchmarks.triton_load                       # the digits model and its held-out images
    python -m benchmarks.triton_load --model FILE.onnx --images DIR --requests 400 --protocol http

It prints a table and writes JSON (default benchmarks/results/triton_load_<model>.json). The server runs on this
machine beside the clients, so both share its cores.
"""

from __future__ import annotations

import argparse
import json
import platform
import site
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from runtime import Classifier  # noqa: E402
from runtime.preprocess import find_images  # noqa: E402
from runtime.artifact import MAX_BATCH  # noqa: E402
from runtime.bench import MAX_RUNS  # noqa: E402
from runtime.shell import Whole  # noqa: E402
from runtime.triton import Options, write_repository  # noqa: E402
from runtime.triton.server import LocalServer, python_path  # noqa: E402


def export_digits(out_dir: Path) -> Path:
    from export import Options as ExportOptions  # torch is needed only to make the file
    from export import run

    report = run(ExportOptions(weights=str(ROOT / "models" / "digits"), batch=None, out_dir=out_dir,
                               precisions=("fp32",), validate=False))
    return out_dir / report["artifacts"]["fp32"]["file"]


def heldout_digits(out_dir: Path) -> list[Path]:
    """The digits model's held-out images (8 x 8 grayscale PNGs, tools/digits.py), the input it is made for."""
    from tools.digits import split

    out_dir.mkdir()
    images, _ = split()["test"]
    for i, image in enumerate(images):
        image.save(out_dir / f"{i:03d}.png")
    return sorted(out_dir.glob("*.png"))


def drive(client_module, url: str, model: str, images: list[bytes], answers: list[list[int]], requests: int,
          concurrency: int) -> dict:
    """`requests` requests from `concurrency` threads, each sending its next request when the last is answered."""
    counter, lock = iter(range(requests)), threading.Lock()
    latencies, failed = [], []

    def client():
        connection = client_module.InferenceServerClient(url)
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            which = index % len(images)
            data = np.array([[images[which]]], dtype=np.object_)
            image = client_module.InferInput("image", [1, 1], "BYTES")
            image.set_data_from_numpy(data)
            started = time.perf_counter()
            try:
                result = connection.infer(model, [image], outputs=[client_module.InferRequestedOutput("indices")])
                right = result.as_numpy("indices")[0].tolist() == answers[which]
            except Exception:  # noqa: BLE001 - any failure of the request counts, whatever raised it
                right = False
            with lock:
                (latencies if right else failed).append(time.perf_counter() - started)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return {"concurrency": concurrency, "requests": requests, "failed": len(failed), "seconds": wall,
            "images_per_s": len(latencies) / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="an exported classifier .onnx with a dynamic batch (default: "
                        "the digits model, exported here)")
    parser.add_argument("--images", type=Path, help="a folder of images to send (default: the digits model's 450 "
                        "held-out images)")
    parser.add_argument("--server-venv", type=Path, default=ROOT / ".venv-tritonserver",
                        help="the environment with nvidia-pytriton (default .venv-tritonserver)")
    parser.add_argument("--requests", type=Whole(1, MAX_RUNS),
                        default=200, help="requests per concurrency (default 200)")
    parser.add_argument("--concurrency", type=Whole(1, 1024),
                        nargs="+", default=[1, 4, 16])
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--instances", type=Whole(1, 64),
                        default=1, help="instances of the model and preprocessing steps")
    parser.add_argument("--max-batch", type=Whole(1, MAX_BATCH),
                        default=16)
    parser.add_argument("--queue-delay-us", type=Whole(0, 10_000_000),
                        default=Options.queue_delay_us)
    parser.add_argument("--json", type=Path, help="default benchmarks/results/triton_load_<model>.json")
    args = parser.parse_args()
    if args.protocol == "grpc":
        import tritonclient.grpc as client_module
    else:
        import tritonclient.http as client_module

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model = args.model or export_digits(scratch / "artifact")
        files = find_images(args.images) if args.images else heldout_digits(scratch / "images")
        images = [path.read_bytes() for path in files]
        answers = [[p.index for p in row] for row in Classifier.load(model, provider="cpu").predict(files)]
        paths = tuple(python_path(args.server_venv, ROOT, *site.getsitepackages()))
        rows = []
        for batching in (True, False):
            options = Options(backend="python", instances=args.instances, max_batch=args.max_batch,
                              dynamic_batching=batching, queue_delay_us=args.queue_delay_us, python_path=paths)
            repo = scratch / f"repo-{'batched' if batching else 'unbatched'}"
            written = write_repository([model], repo, options)
            name = written["models"][0]["name"]
            with LocalServer(repo, args.server_venv) as server:
                url = server.grpc_url if args.protocol == "grpc" else server.http_url
                drive(client_module, url, name, images, answers, 2 * max(args.concurrency), max(args.concurrency))
                for concurrency in args.concurrency:
                    row = {"dynamic_batching": batching, **drive(client_module, url, name, images, answers,
                                                                 args.requests, concurrency)}
                    rows.append(row)
                    print(f"batching {'on ' if batching else 'off'}  concurrency {concurrency:3d}: "
                          f"{row['images_per_s']:7.1f} images/s", file=sys.stderr, flush=True)

    print(f"{model.name} through Triton ({args.protocol}, python backend, {args.instances} instance(s), "
          f"max batch {args.max_batch}, queue delay {args.queue_delay_us} us), {args.requests} requests of one image")
    print(f"{'dynamic batching':18s}{'concurrency':>12s}{'images/s':>10s}{'p50 ms':>9s}{'p99 ms':>9s}{'failed':>8s}")
    for row in rows:
        print(f"{'on' if row['dynamic_batching'] else 'off':18s}{row['concurrency']:12d}{row['images_per_s']:10.1f}"
              f"{row['p50_ms']:9.1f}{row['p99_ms']:9.1f}{row['failed']:8d}")
    out = args.json or ROOT / "benchmarks" / "results" / f"triton_load_{model.stem}.json"
    out.write_text(json.dumps({"model": model.name, "protocol": args.protocol, "instances": args.instances,
                               "max_batch": args.max_batch, "queue_delay_us": args.queue_delay_us,
                               "images": len(images), "machine": platform.processor() or platform.machine(),
                               "results": rows}, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
