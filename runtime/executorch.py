"""ExecuTorch `.pte` programs (XNNPACK backend): their metadata sidecar and `ExecuTorchSession`.

ExecuTorch's Python runtime (`executorch.runtime`, built on `portable_lib`) imports torch: tried with torch blocked
(docs/edge.md), both fail at import. So this session needs torch in the process, unlike every other one. It is
imported only when a `.pte` is opened (`runtime/model.py: open_session`), so `import runtime` stays torch-free and a
torch-free install that opens a `.pte` gets one line naming the extra. On a phone or board the program runs under
ExecuTorch's C++ runtime, which has no torch; this session is how the export and this machine check it.

The `.pte` holds no metadata of ours (its constants are read only by running it): `<file>.json` beside it holds the
`hiera.*` metadata and the program's sha256, so that a sidecar is never read for another program.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from . import files
from .artifact import from_metadata
from .errors import HieraRuntimeError
from .interface import check_inputs

SUFFIX = ".pte"
SIDECAR_BYTES = 64 << 20  # metadata and a probe are a few hundred KB at most
SIDECAR_KIND = "hiera-deploy executorch sidecar"
INSTALL = "pip install 'hiera-deploy[executorch]' (ExecuTorch's Python runtime; it brings torch)"


def sidecar_path(program: Path) -> Path:
    return program.with_name(program.name + ".json")


def write_sidecar(program: Path, metadata: dict[str, str]) -> Path:
    """The sidecar of the `.pte` at `program`, as written (atomically, like every single file)."""
    path = sidecar_path(program)
    files.write_json(path, {"kind": SIDECAR_KIND, "program_sha256": files.sha256(program),
                            "metadata": dict(metadata)})
    return path


def read_metadata(program) -> dict[str, str]:
    """The `hiera.*` metadata of the `.pte` at `program`, from its sidecar; one line if there is none, if it is damaged
    or if it describes another program (its recorded sha256 differs)."""
    program = files.require_file(program)
    path = sidecar_path(program)
    if not path.exists():
        # not MissingMetadata: a program runs only through its sidecar's shapes and outputs, whatever preprocessing
        raise HieraRuntimeError(f"{program}: no Hiera metadata: its sidecar {path.name} is missing (not exported by "
                                "python -m export, or copied without it)")
    sidecar = files.read_json(path, SIDECAR_BYTES)
    metadata = sidecar.get("metadata") if isinstance(sidecar, dict) else None
    if not isinstance(sidecar, dict) or sidecar.get("kind") != SIDECAR_KIND or not isinstance(metadata, dict) or \
            not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise HieraRuntimeError(f"{path}: damaged ExecuTorch sidecar: not a JSON object of kind {SIDECAR_KIND!r} "
                                "with metadata of strings")
    if sidecar.get("program_sha256") != files.sha256(program):
        raise HieraRuntimeError(f"{program}: not the program its sidecar {path.name} describes (its sha256 differs "
                                "from program_sha256): export it again")
    return metadata


class ExecuTorchSession:
    """A `.pte` run by ExecuTorch's runtime (XNNPACK kernels on the CPU), with `runtime/interface.py`'s interface.
    One call at a time (a loaded method is one set of buffers), under a lock."""

    def __init__(self, path, threads: int | None = None):
        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        self.metadata_path = sidecar_path(self.path)
        info = from_metadata(self.metadata, self.metadata_path)
        try:
            from executorch.runtime import Runtime  # imports torch
        except ImportError as error:
            raise HieraRuntimeError(f"{self.path}: ExecuTorch's runtime cannot be imported ({error}): {INSTALL}") \
                from None
        import torch

        self._torch = torch
        if threads:  # XNNPACK runs on ExecuTorch's own threadpool (not torch's): process-wide, one thread per core
            from executorch.extension.pybindings import portable_lib  # until asked; no public call sizes it yet

            if portable_lib._threadpool_get_thread_count() != threads:
                portable_lib._unsafe_reset_threadpool(threads)  # unsafe while a program runs: opening is not running
        try:
            self._method = Runtime.get().load_program(self.path).load_method("forward")
        except (RuntimeError, ValueError) as error:
            raise HieraRuntimeError(f"{self.path}: ExecuTorch cannot load this program ({error})") from None
        meta = self._method.metadata
        shapes = [list(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
        self.input_name, self.input_shape = "pixel_values", shapes[0]
        self.other_inputs = {"noise": np.float32} if info.task == "mae" else {}
        self.output_names = list(info.outputs)
        if len(shapes) != 1 + len(self.other_inputs) or meta.num_outputs() != len(self.output_names):
            raise HieraRuntimeError(f"{self.path}: the program takes {len(shapes)} inputs and gives "
                                    f"{meta.num_outputs()} outputs; its metadata says {1 + len(self.other_inputs)} "
                                    f"and {len(self.output_names)} ({', '.join(self.output_names)})")
        self.output_shapes = {name: list(meta.output_tensor_meta(i).sizes())
                              for i, name in enumerate(self.output_names)}
        self.providers, self.device, self.inference_precision = ["ExecuTorch XNNPACK"], "cpu", None
        self.max_batch = self.input_shape[0]  # a program's shapes are static
        self._lock = threading.Lock()

    def run(self, pixel_values: np.ndarray, **other_inputs: np.ndarray) -> dict[str, np.ndarray]:
        check_inputs(self, other_inputs)
        feeds = [pixel_values, *(other_inputs[name] for name in self.other_inputs)]
        tensors = [self._torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)) for value in feeds]
        with self._lock:
            outputs = self._method.execute(tensors)
        return {name: value.numpy().copy() for name, value in zip(self.output_names, outputs)}
