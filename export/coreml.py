"""Core ML packages (`.mlpackage`, an ML Program), converted from the PyTorch model itself (the registry's source
"pytorch", runtime/formats.py) with coremltools: `torch.export`, then `coremltools.convert` for iOS 17 / macOS 14 on,
fp32 or fp16 compute. The `hiera.*` metadata is the package's user-defined metadata (what Xcode shows and
`MLModel.modelDescription.metadata[.creatorDefinedKey]` reads in Swift).

A package is a folder: the export hashes it with `runtime.files.sha256_folder` and commits it whole. Core ML runs only
on Apple systems, so here the checks are the ones that need no Apple machine: the conversion succeeds (coremltools
refuses an operator it cannot map), every tensor of the program is within Core ML's rank 5, and the report lists the
program's operators. The run itself is left out of validation with the reason (`pipeline.NOT_RUN_HERE`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import warnings
from pathlib import Path

import torch

from runtime import files

from .errors import ExportError

PACKAGE, EXTRA = "coremltools", "coreml"  # what export/options.py checks before anything is written
MAX_RANK = 5  # Core ML's largest tensor rank
PRECISIONS = {".fp16.mlpackage": "FLOAT16", ".mlpackage": "FLOAT32"}  # by the artifact's suffix


class _Named(torch.nn.Module):
    """The model with one input `pixel_values` (the program's input name is the argument's) and its outputs as a tuple
    in `output_names` order (named as the other artifacts' by `convert`)."""

    def __init__(self, model, output_names):
        super().__init__()
        self.model, self.output_names = model, list(output_names)

    def forward(self, pixel_values):
        out = self.model(pixel_values)
        return tuple(out[name] for name in self.output_names) if isinstance(out, dict) else (out,)


def convert(model, example: dict, path: Path, metadata: dict[str, str]) -> dict:
    """Write the `.mlpackage` folder of `model` at `path` (fp16 compute for a `.fp16.mlpackage`); return the report's
    entry: the program's highest tensor rank, its operators, its precision and deployment target."""
    try:
        import coremltools as ct
    except ImportError as error:
        raise ExportError(f"coremltools is not installed ({error}): pip install 'hiera-deploy[{EXTRA}]'") from None
    if list(example) != ["pixel_values"]:
        raise ExportError(f"Core ML packages are made for models whose one input is pixel_values, not "
                          f"{', '.join(example)}")
    path = Path(path)
    precision = next(p for suffix, p in PRECISIONS.items() if path.name.endswith(suffix))
    wrapped = _Named(model, model.output_names).eval()
    with torch.no_grad(), _quiet():
        program = torch.export.export(wrapped, (example["pixel_values"],), strict=False).run_decompositions({})
        try:
            package = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                                 compute_precision=getattr(ct.precision, precision),
                                 outputs=[ct.TensorType(name=name) for name in wrapped.output_names])
        except Exception as error:  # noqa: BLE001 (coremltools raises many kinds; each is one line here)
            raise ExportError(f"{path.name}: coremltools {ct.__version__} cannot convert this model from torch "
                              f"{torch.__version__}: {type(error).__name__}: {str(error).splitlines()[0]}") from None
    spec = package.get_spec()
    ops, rank = operators(spec)
    if rank > MAX_RANK:
        raise ExportError(f"{path.name}: a tensor of rank {rank} in the Core ML program; Core ML takes {MAX_RANK} at "
                          "most")
    names = [output.name for output in spec.description.output]
    if names != wrapped.output_names:
        raise ExportError(f"{path.name}: the Core ML program's outputs are {', '.join(names)}, not "
                          f"{', '.join(wrapped.output_names)}")
    package.user_defined_metadata.update(metadata)
    package.short_description = "Hiera exported by hiera-deploy; hiera.* entries: docs/edge.md"
    package.save(str(path))
    return {"file": path.name, "max_rank": rank, "ops": dict(sorted(ops.items())),
            "compute_precision": precision.lower(), "deployment_target": "iOS17",
            "run": "not here: Core ML runs only on Apple systems"}


def operators(spec) -> tuple[collections.Counter, int]:
    """The ML Program's operators (a histogram by type) and the highest rank of any tensor they make."""
    ops, rank = collections.Counter(), 0
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                ops[op.type] += 1
                rank = max([rank, *(out.type.tensorType.rank for out in op.outputs if out.type.HasField("tensorType"))])
    return ops, rank


def read_metadata(path) -> dict[str, str]:
    """The user-defined metadata of the `.mlpackage` at `path` (its model spec, read with coremltools, which needs no
    Apple machine for that)."""
    import coremltools as ct

    try:
        spec = ct.utils.load_spec(str(path))
    except Exception as error:  # noqa: BLE001 (a damaged package: protobuf's and coremltools' errors alike)
        raise ExportError(f"{path}: not a readable Core ML package ({type(error).__name__}: {error})") from None
    return dict(spec.description.metadata.userDefined)


def append_metadata(path, metadata: dict[str, str]) -> None:
    """Add entries (the probe) to the package's user-defined metadata: its model spec (the package's root model file)
    written again, atomically; the weights and the manifest stay as they are."""
    import coremltools as ct
    from coremltools.libmodelpackage import ModelPackage

    spec_file = Path(ModelPackage(str(path)).getRootModel().path())
    spec = ct.utils.load_spec(str(path))
    spec.description.metadata.userDefined.update(metadata)
    files.write_bytes(spec_file, spec.SerializeToString())


@contextlib.contextmanager
def _quiet():
    """coremltools warns about its tested torch version and draws progress bars; the export's progress is what is
    said (docs/edge.md records the versions this was checked with)."""
    logger = logging.getLogger("coremltools")
    level, logger.level = logger.level, logging.ERROR
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
