"""ExecuTorch `.pte` programs for the XNNPACK backend, converted from the PyTorch model itself (the registry's source
"pytorch", runtime/formats.py): `torch.export`, then `to_edge_transform_and_lower` with the XNNPACK partitioner.
fp32 as it is; int8 (a `.int8.pte`) through ExecuTorch's PT2E quantizer (`XNNPACKQuantizer`): symmetric per-channel
int8 weights and dynamic int8 activations (each row's scale computed at run time). Static activations calibrated on
images kept less than the int8 bound (cosine 0.984 < 0.99 on the tests' small Hiera, three photographs); dynamic ones
keep it and need no calibration images.

The program holds no metadata of ours: ExecuTorch reads a `.pte`'s constants only by running the program (torch in
the process), so the `hiera.*` metadata goes into a sidecar `<file>.json` with the program's sha256
(`runtime/executorch.py: read_metadata`), which the export's `_files` hashes and `verify` checks like any file.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import torch

from runtime.executorch import read_metadata, write_sidecar

from .errors import ExportError

PACKAGE, EXTRA = "executorch", "executorch"  # what export/options.py checks before anything is written


class _Positional(torch.nn.Module):
    """The model with its outputs as a tuple in `output_names` order: the program's outputs carry no names."""

    def __init__(self, model, output_names):
        super().__init__()
        self.model, self.output_names = model, list(output_names)

    def forward(self, *inputs):
        out = self.model(*inputs)
        return tuple(out[name] for name in self.output_names) if isinstance(out, dict) else (out,)


def convert(model, example: dict, path: Path, metadata: dict[str, str]) -> dict:
    """Write the `.pte` of `model` at `path` (int8 for a `.int8.pte`) and its sidecar; return the report's entry: the
    exported program's highest tensor rank, the calls XNNPACK takes and the operators left to ExecuTorch's portable
    kernels."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as error:
        raise ExportError(f"ExecuTorch is not installed ({error}): pip install 'hiera-deploy[{EXTRA}]'") from None
    wrapped = _Positional(model, model.output_names).eval()
    args = tuple(example.values())
    with torch.no_grad(), _quiet():
        program = torch.export.export(wrapped, args, strict=False)
        if Path(path).name.endswith(".int8.pte"):
            program = torch.export.export(_quantized(program, args), args, strict=False)
        ranks = max_rank(program)
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        lowered = edge.exported_program().graph.nodes
        calls = [n for n in lowered if n.op == "call_function" and "getitem" not in str(n.target)]
        delegated = sum("executorch_call_delegate" in str(n.target) for n in calls)
        buffer = edge.to_executorch().buffer
    Path(path).write_bytes(buffer)
    write_sidecar(Path(path), metadata)
    return {"file": Path(path).name, "max_rank": ranks, "backend": "XNNPACK",
            "delegated_calls": delegated, "undelegated_ops": len(calls) - delegated}


def append_metadata(path: Path, metadata: dict[str, str]) -> None:
    """Add entries (the probe) to the program's metadata: its sidecar, written again whole (atomically); the program
    itself is unchanged."""
    write_sidecar(Path(path), {**read_metadata(path), **metadata})


def max_rank(program) -> int:
    """The highest rank of any tensor the exported program computes (its inputs and outputs included)."""
    return max(node.meta["val"].dim() for node in program.graph.nodes if isinstance(node.meta.get("val"), torch.Tensor))


def _quantized(program, args):
    """The PT2E int8 model: XNNPACK's quantizer, per-channel weights, dynamic activations (one call to place them)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                          get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    prepared = prepare_pt2e(program.module(), quantizer)
    prepared(*args)
    return convert_pt2e(prepared)


@contextlib.contextmanager
def _quiet():
    """ExecuTorch's lowering prints per-pass chatter to stdout; the export's progress is the only thing said."""
    if os.environ.get("HIERA_DEBUG"):
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield
