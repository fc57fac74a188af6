"""Export Hiera to ONNX, optimize it, convert precisions and prove parity with PyTorch.

    python -m export --variant base --weights DIR         # the CLI
    report = export.run(export.Options(variant="base", weights="random"))
"""

from .artifact import read_artifact
from .errors import ExportError
from .pipeline import PRECISIONS, Options, run

__all__ = ["ExportError", "Options", "PRECISIONS", "read_artifact", "run"]
