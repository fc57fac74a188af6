"""The artifact contract (../shared/ARCHITECTURE.md): file names, metadata_props, atomic writes.

Every `.onnx` carries the same metadata, as JSON strings under `hiera.*` keys, so the runtime needs
nothing else: what the model is, how to preprocess its input, what its outputs mean, where its
weights came from and what produced it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import onnx

from .errors import ExportError

METADATA_VERSION = 1
# Beyond this, protobuf cannot hold the weights in one file (Hiera-H in fp32 is 2.7 GB).
EXTERNAL_DATA_BYTES = 1_900_000_000


def artifact_path(out_dir: Path, name: str, task: str, precision: str) -> Path:
    suffix = "" if precision == "fp32" else f".{precision}"
    return out_dir / f"hiera_{name}_{task}{suffix}.onnx"


def engine_path(out_dir: Path, name: str, task: str, precision: str) -> Path:
    return out_dir / f"hiera_{name}_{task}.{precision}.engine"


def report_path(out_dir: Path, name: str, task: str) -> Path:
    return out_dir / f"hiera_{name}_{task}.report.json"


def metadata(*, variant: str, task: str, outputs: list[str], input_size, preprocessing: dict, labels, weights: dict,
             opset: int, precision: str, batch, versions: dict, mae: dict | None = None) -> dict[str, str]:
    """The `metadata_props` of an artifact: every value a JSON document (`mae` only for MAE models)."""
    values = {
        "format_version": METADATA_VERSION,
        "variant": variant,
        "task": task,
        "input_size": list(input_size),
        "batch": batch,  # an int, or "dynamic"
        "outputs": outputs,
        "preprocessing": preprocessing,
        "labels": list(labels) if labels else None,
        "weights": weights,  # {"source", "sha256", "verified"}; source "random:SEED" for random weights
        "opset": opset,
        "precision": precision,
        "producer": versions,
    }
    if mae is not None:
        values["mae"] = mae  # {"mask_units", "mask_ratio", "pred_stride", "norm_pix_loss"}
    return {f"hiera.{key}": json.dumps(value) for key, value in values.items()}


def is_large(model: onnx.ModelProto) -> bool:
    """Whether the weights need external data: counted tensor by tensor, because the ModelProto's own
    ByteSize() fails above protobuf's 2 GB."""
    return sum(weights.ByteSize() for weights in model.graph.initializer) > EXTERNAL_DATA_BYTES


def without_weights(model: onnx.ModelProto, keep_bytes: int = 1 << 16) -> onnx.ModelProto:
    """A copy of `model` for checks such as shape inference, which protobuf cannot serialize above 2 GB:
    initializers larger than `keep_bytes` keep their name, type and shape but no data (shape tensors and
    other small constants, which inference reads, are kept whole)."""
    graph = onnx.helper.make_graph(list(model.graph.node), model.graph.name, list(model.graph.input),
                                   list(model.graph.output), value_info=list(model.graph.value_info))
    for weights in model.graph.initializer:
        if weights.ByteSize() <= keep_bytes:
            graph.initializer.append(weights)
            continue
        stub = graph.initializer.add(name=weights.name, data_type=weights.data_type, dims=weights.dims,
                                     data_location=onnx.TensorProto.EXTERNAL)
        stub.external_data.add(key="location", value="(not loaded)")
    light = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                                   functions=list(model.functions))
    light.metadata_props.extend(model.metadata_props)
    return light


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def read_artifact(path) -> dict:
    """The `hiera.*` metadata of an artifact file, decoded (weights are not read)."""
    model = onnx.load(path, load_external_data=False)
    return {p.key.removeprefix("hiera."): json.loads(p.value) for p in model.metadata_props
            if p.key.startswith("hiera.")}


def save(model: onnx.ModelProto, path: Path) -> None:
    """Write a model atomically; weights too large for one protobuf go to `<file>.data` next to it
    (renamed into place before the `.onnx`, which appears last)."""
    external = is_large(model)
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as staging:
            tmp = Path(staging) / path.name
            onnx.save_model(model, tmp, save_as_external_data=external, location=f"{path.name}.data")
            if external:
                data = tmp.with_name(f"{path.name}.data")
                shutil.copymode(tmp, data)  # onnx creates it readable by its owner only
                os.replace(data, path.with_name(f"{path.name}.data"))
            os.replace(tmp, path)
    except OSError as error:
        raise ExportError(f"{path}: cannot write ({error.strerror or error})") from None


def write_bytes(path: Path, data: bytes) -> None:
    """Write atomically: a temporary file next to `path`, renamed over it once complete."""
    try:
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as staging:
            tmp = Path(staging) / path.name
            tmp.write_bytes(data)
            os.replace(tmp, path)
    except OSError as error:
        raise ExportError(f"{path}: cannot write ({error.strerror or error})") from None


def write_json(path: Path, data: dict) -> None:
    write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
