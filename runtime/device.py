"""What this machine computes with: the CPU's vector extensions that decide which kernels the engines take, and so
the figures an artifact gives here (an int8 product sums in 16-bit lanes without VNNI: docs/int8.md)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# /proc/cpuinfo's flag -> the name this project records (tables, reports, test messages)
ISA_FLAGS = {"avx2": "avx2", "avx512f": "avx512", "avx512_vnni": "vnni", "avx_vnni": "vnni", "amx_tile": "amx",
             "avx512_bf16": "bf16", "amx_bf16": "bf16"}


@functools.cache
def cpu_isa() -> tuple[str, ...]:
    """The extensions of `ISA_FLAGS` this CPU has, sorted; empty where the CPU says nothing (not Linux, not x86)."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return ()
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return tuple(sorted({ISA_FLAGS[flag] for flag in flags if flag in ISA_FLAGS}))


@functools.cache
def cpu_name() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it (else the machine's architecture)."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    return name or platform.machine() or "unknown CPU"
