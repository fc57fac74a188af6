"""Images per second of `embed` on Ray (runtime/ray.py) against `embed` on one machine, same images, same artifact.

For each model (the digits model, and Hiera-T and Hiera-B features models with random weights), in one process:
  runtime embed      runtime.embed.embed, what `python -m runtime embed` runs (8 images per call)
  ray, N actors      runtime.ray.embed on a local Ray cluster of this machine's CPUs, already started (its start,
                     paid once per run of the command, is timed on its own line)
each writing a fresh output, so nothing is resumed. The table and the JSON (benchmarks/results/ray_embed.json)
name the CPU and the load average before and after (on a shared machine, what else ran).

    python -m benchmarks.ray_embed                        # about 10 minutes on 2 idle cores
    python -m benchmarks.ray_embed --tiny-images 64 --base-images 32 --actors 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from runtime import FeatureExtractor
from runtime.device import cpu_isa, cpu_name
from runtime.embed import embed as embed_here
from runtime.ray import embed as embed_on_ray
from runtime.cli import MAX_ACTORS
from runtime.shell import Whole

ROOT = Path(__file__).resolve().parents[1]


def export(out: Path, **options) -> Path:
    from export import Options, run  # torch is needed only to make the files

    report = run(Options(out_dir=out, task="features", batch=None, precisions=("fp32",), validate=False, **options))
    return out / report["artifacts"]["fp32"]["file"]


def photographs(folder: Path, count: int) -> list[Path]:
    """`count` 256 x 320 noise pictures, saved as PNG (decoded and resized like any photograph)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for number in range(count):
        Image.fromarray(rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)).save(folder / f"{number:04d}.png")
    return sorted(folder.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actors", type=Whole(1, MAX_ACTORS),
                        nargs="+", default=[1, 2])
    parser.add_argument("--tiny-images", type=Whole(1, 100_000),
                        default=96, help="images for the Hiera-T model (default 96)")
    parser.add_argument("--base-images", type=Whole(1, 100_000),
                        default=48, help="images for the Hiera-B model (default 48)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "ray_embed.json")
    args = parser.parse_args()

    import ray

    results = {"cpu": cpu_name(), "isa": cpu_isa(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "ray": ray.__version__, "load_average_before": os.getloadavg(), "rows": []}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        digits_images = scratch / "digits"
        subprocess.run([sys.executable, "-m", "tools.digits", "images", digits_images], check=True,
                       capture_output=True, cwd=ROOT)
        photos = photographs(scratch / "photos", max(args.tiny_images, args.base_images))
        cases = {"digits": (export(scratch / "d", weights=str(ROOT / "models" / "digits")),
                            sorted(digits_images.rglob("*.png"))),
                 "hiera-tiny (random weights)": (export(scratch / "t", variant="tiny", weights="random"),
                                                 photos[:args.tiny_images]),
                 "hiera-base (random weights)": (export(scratch / "b", variant="base", weights="random"),
                                                 photos[:args.base_images])}
        start = time.perf_counter()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 logging_level="error")
        results["ray_start_s"] = round(time.perf_counter() - start, 2)
        try:
            for name, (artifact, images) in cases.items():
                model = FeatureExtractor.load(artifact)
                runs = [("runtime embed", embed_here, scratch / f"{name}.npy", {})]
                runs += [(f"ray, {actors} actor{'s' if actors > 1 else ''}", embed_on_ray, scratch / f"{name}-{actors}",
                          {"actors": actors}) for actors in args.actors]
                for how, embed, out, options in runs:
                    start = time.perf_counter()
                    embed(model, images, out, **options)
                    seconds = time.perf_counter() - start
                    results["rows"].append({"model": name, "run": how, "images": len(images),
                                            "seconds": round(seconds, 2),
                                            "images_per_s": round(len(images) / seconds, 1)})
        finally:
            ray.shutdown()
    results["load_average_after"] = os.getloadavg()

    print(f"{results['cpu']} ({' '.join(results['isa'])}), {results['cpus']} CPUs, Ray {results['ray']}")
    print(f"{'model':28s} {'run':16s} {'images':>6s} {'seconds':>8s} {'images/s':>9s}")
    for row in results["rows"]:
        print(f"{row['model']:28s} {row['run']:16s} {row['images']:6d} {row['seconds']:8.2f} "
              f"{row['images_per_s']:9.1f}")
    print(f"(starting the local Ray cluster, once per run of the command: {results['ray_start_s']:.1f} s)")
    print("load average (1, 5, 15 min) before: {:.1f} {:.1f} {:.1f}, after: {:.1f} {:.1f} {:.1f}".format(
        *results["load_average_before"], *results["load_average_after"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
