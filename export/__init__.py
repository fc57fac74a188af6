"""Export Hiera to ONNX, optimize it, convert precisions and prove parity with PyTorch.

    python -m export --variant base --weights DIR         # the CLI (also: hiera-export)
    report = export.run(export.Options(variant="base", weights="random"))
    assert export.verify(["artifacts/hiera_base_classify.onnx"], weights="random").ok

Importing `export` loads nothing heavy: torch and onnx come with the first use of what needs them, so
that `python -m export` can say which extra is missing instead of failing on an import.
"""

from __future__ import annotations

import importlib

from .errors import ExportError

_LAZY = {"Options": "options", "PRECISIONS": "options", "run": "pipeline", "verify": "verification",
         "VerifyResult": "verification", "read_artifact": "artifact"}

__all__ = ["ExportError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
