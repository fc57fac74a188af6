"""The interface every engine's session keeps: onnxruntime (`session.OnnxSession`), OpenVINO
(`openvino.OpenVinoSession`) and TensorRT (`tensorrt.EngineSession`). The model layer, the CLI and the probe read
these and nothing else; a new engine is a class that keeps them (docs/contributing.md), and `check_inputs` is the one
check of what a call gives."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from .errors import HieraRuntimeError


@runtime_checkable
class Session(Protocol):
    path: Path  # the model file
    metadata_path: Path  # where its hiera.* metadata is read from (an engine's sidecar; else the model file)
    metadata: dict[str, str]  # its metadata_props
    input_name: str  # pixel_values
    input_shape: list  # a symbolic or unknown axis as a string or None
    other_inputs: dict  # further inputs by name (MAE's noise), each with its numpy dtype
    output_names: list[str]
    output_shapes: dict[str, list]  # per output, None for an axis of unknown size
    providers: list[str]  # what runs it, the one in use first
    device: str  # "cpu" or "cuda": where its verdicts may be kept (runtime.probe)
    inference_precision: str | None  # OpenVINO's f32 or bf16; None where the artifact's own precision runs
    max_batch: int | None  # the largest batch one call takes (an engine's profile), None: any

    def run(self, pixel_values: np.ndarray, **other_inputs: np.ndarray) -> dict[str, np.ndarray]:
        """The outputs by name for one batch."""


def check_inputs(session: Session, other_inputs: dict) -> None:
    """A call gives exactly the inputs the model takes: one line naming them otherwise."""
    if set(other_inputs) != set(session.other_inputs):
        expected, given = [session.input_name, *session.other_inputs], [session.input_name, *other_inputs]
        raise HieraRuntimeError(f"{session.path}: the model takes inputs {', '.join(expected)}; "
                                f"given {', '.join(given)}")
