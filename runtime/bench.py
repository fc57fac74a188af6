"""Latency and throughput of a callable, as `python -m runtime bench` and the benchmarks report them."""

from __future__ import annotations

import time

import numpy as np

MAX_RUNS = 100_000  # timed calls a command line may ask for


def time_calls(call, runs: int, warmup: int = 2, on_call=None) -> list[float]:
    """Seconds per call, after `warmup` untimed calls; `on_call()` after each call, untimed (progress)."""
    for _ in range(warmup):
        call()
        if on_call:
            on_call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
        if on_call:
            on_call()
    return times


def summarize(seconds: list[float], batch: int) -> dict:
    """Median and 90th-percentile latency in ms, and images per second at the median."""
    median = float(np.median(seconds))
    return {"batch": batch, "runs": len(seconds), "median_ms": median * 1e3,
            "p90_ms": float(np.percentile(seconds, 90)) * 1e3, "images_per_s": batch / median}
