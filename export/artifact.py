"""What an export writes, by name: the files of one export (its "family"), ONNX files and the report.

The metadata inside each artifact is `runtime.artifact`'s format; this module names the files, writes
ONNX graphs (external data beyond protobuf's 2 GB) and seals the report so that `verify` can tell an
edited one. Every write goes through `runtime.files`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import onnx

from runtime import files
from runtime import artifact as runtime_artifact
from runtime.artifact import decoded
from runtime.errors import HieraRuntimeError
from runtime.formats import FORMATS
from runtime.errors import FileError

from .errors import ExportError

REPORT_VERSION = 1
# Beyond this, protobuf cannot hold the weights in one file (Hiera-H in fp32 is 2.7 GB).
EXTERNAL_DATA_BYTES = 1_900_000_000
# The files an export writes, after its family name: `hiera_base_classify.onnx`, `.fp16.onnx`, `.onnx.data`,
# `.report.json`, `.fp16.engine` and its `.fp16.engine.json`; the edge formats' `.tflite`, `.pte` with its `.pte.json`
# and the `.mlpackage` folder (docs/edge.md). Only such names are ever replaced or removed.
FAMILY_SUFFIX = re.compile(r"(\.[a-z0-9_]+)*\.(onnx|onnx\.data|report\.json|engine|engine\.json"
                           r"|tflite|pte|pte\.json|mlpackage)")


def family(name: str, task: str) -> str:
    """The stem every file of one export starts with; a dot in the name (sam2.1_hiera_tiny) becomes "_", since
    the stem ends at the first dot (`family_of`)."""
    return f"hiera_{name.replace('.', '_')}_{task}"


def in_family(file_name: str, stem: str) -> bool:
    return file_name.startswith(stem + ".") and FAMILY_SUFFIX.fullmatch(file_name[len(stem):]) is not None


def computes(precision: str) -> str:
    """The precision an artifact computes in, as its metadata says: the OpenVINO artifact is an fp32 graph."""
    return FORMATS[precision].computes


def artifact_name(stem: str, precision: str) -> str:
    return stem + FORMATS[precision].suffix


def engine_name(stem: str, precision: str) -> str:
    return f"{stem}.{precision}.engine"


def report_name(stem: str) -> str:
    return f"{stem}.report.json"


def family_of(path: Path) -> str:
    """The family stem of an export's file (`hiera_base_classify.fp16.onnx` -> `hiera_base_classify`)."""
    return Path(path).name.split(".", 1)[0]


def sidecar_of(path: Path) -> Path:
    """The metadata sidecar an edge artifact keeps beside it (an ExecuTorch `.pte`'s `<file>.json`, docs/edge.md)."""
    return path.with_name(path.name + ".json")


def data_file(path: Path) -> Path:
    return path.with_name(path.name + ".data")


def weight_bytes(path: Path) -> int:
    """The size of a saved graph's weights: its external data, or else the file itself."""
    data = data_file(Path(path))
    return data.stat().st_size if data.exists() else Path(path).stat().st_size


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


def append_metadata(path: Path, props: dict[str, str]) -> None:
    """Add metadata_props to a written graph without writing it again: a serialized ModelProto appended to one
    parses as their merge (protobuf's rule for repeated records, as `save_graph` writes initializers)."""
    entries = onnx.ModelProto()
    for key, value in props.items():
        entries.metadata_props.add(key=key, value=value)
    try:
        with open(path, "ab") as out:
            out.write(entries.SerializeToString())
    except OSError as error:
        raise ExportError(f"{path}: cannot write ({error.strerror or error})") from None


def read_artifact(path) -> dict:
    """The `hiera.*` metadata of an artifact file, decoded as JSON (weights are not read)."""
    model = load_graph(path, weights=False)
    try:
        return decoded({p.key: p.value for p in model.metadata_props}, path)
    except HieraRuntimeError as error:
        raise ExportError(str(error)) from None


def load_graph(path, weights: bool = True) -> onnx.ModelProto:
    """An ONNX file (with its external data, if `weights`); one line naming the file when it is not one."""
    try:
        with files.open_file(path) as file:
            model = onnx.load(file, load_external_data=False)
        if weights and has_external_data(model):
            load_weights(model, path)
    except FileError as error:
        raise ExportError(str(error)) from None
    except Exception as error:  # protobuf's DecodeError and its kin: not an ONNX file
        raise ExportError(f"{path}: not an ONNX model ({type(error).__name__})") from None
    return model


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def load_weights(model: onnx.ModelProto, path: Path) -> None:
    """Read the external data of `model`, saved as `path`, back into it."""
    files.require_file(data_file(Path(path)))
    onnx.load_external_data_for_model(model, str(Path(path).parent))


def _external(tensor: onnx.TensorProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def tensor_bytes(tensor: onnx.TensorProto) -> int:
    """The size of a tensor's data, whether it is in the graph or in an external file."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return int(_external(tensor).get("length", 0))
    return tensor.ByteSize()


def save_graph(model: onnx.ModelProto, path: Path, weights_dir: Path | None = None) -> None:
    """Write a graph into the export's staging folder (the transaction makes it appear whole). Its weights
    may be in the graph or, where `weights_dir` is given, in the external data file of the graph they were
    loaded from (`load_graph(..., weights=False)`), which is then read one tensor at a time.

    Below protobuf's 2 GB the file is one protobuf, written tensor by tensor: a serialized ModelProto
    followed by more of them parses as their merge (protobuf's rule for repeated records), so each
    initializer goes out as its own small ModelProto, and the graph is never serialized whole (that takes
    twice its size again). Larger weights go to `<file>.data` beside it: copied from `weights_dir` when
    they are all there in one file already, else written by onnx."""
    try:
        if sum(tensor_bytes(t) for t in model.graph.initializer) > EXTERNAL_DATA_BYTES:
            _save_external(model, path, weights_dir)
        else:
            _save_streamed(model, path, weights_dir)
    except OSError as error:
        raise ExportError(f"{path}: cannot write ({error.strerror or error})") from None


def _save_streamed(model: onnx.ModelProto, path: Path, weights_dir: Path | None) -> None:
    with open(path, "wb") as out:
        out.write(without_initializers(model).SerializeToString())
        for tensor in model.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                tensor = _read_external(tensor, weights_dir)
            out.write(onnx.ModelProto(graph=onnx.GraphProto(initializer=[tensor])).SerializeToString())


def without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph's structure: a copy of everything but its initializers (which are large, and not copied)."""
    structure = onnx.ModelProto()
    _copy_fields(model, structure, skip="graph")
    _copy_fields(model.graph, structure.graph, skip="initializer")
    return structure


def _copy_fields(source, target, skip: str) -> None:
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend"):  # a repeated field
            getattr(target, field.name).extend(value)
        elif hasattr(value, "CopyFrom"):  # a message
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def _read_external(tensor: onnx.TensorProto, weights_dir: Path | None) -> onnx.TensorProto:
    if weights_dir is None:
        raise ExportError(f"tensor {tensor.name}: its data is in an external file, and no folder was given")
    entry = _external(tensor)
    loaded = onnx.TensorProto()
    loaded.CopyFrom(tensor)
    del loaded.external_data[:]
    loaded.data_location = onnx.TensorProto.DEFAULT
    with files.open_file(Path(weights_dir) / entry["location"]) as data:
        data.seek(int(entry.get("offset", 0)))
        loaded.raw_data = data.read(int(entry["length"]))
    return loaded


def _save_external(model: onnx.ModelProto, path: Path, weights_dir: Path | None) -> None:
    locations = {_external(t).get("location") for t in model.graph.initializer
                 if t.data_location == onnx.TensorProto.EXTERNAL}
    if weights_dir is not None and len(locations) == 1 and all(
            t.data_location == onnx.TensorProto.EXTERNAL or t.ByteSize() < 1 << 20 for t in model.graph.initializer):
        # A copy, streamed: onnx refuses external data with several hard links (a guard against link attacks).
        shutil.copyfile(Path(weights_dir) / locations.pop(), data_file(path))
        structure = onnx.ModelProto()
        structure.CopyFrom(model)
        for tensor in structure.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = data_file(path).name
        onnx.save_model(structure, path)
    else:
        onnx.save_model(model, path, save_as_external_data=True, location=data_file(path).name)
        shutil.copymode(path, data_file(path))  # onnx makes it readable by its owner only


def seal(report: dict) -> dict:
    """The report with its `integrity` digest: the sha256 of its canonical JSON, so that `verify` can tell a
    report edited after the export (it is a check against accidents and hand edits, not a signature)."""
    body = {key: value for key, value in report.items() if key != "integrity"}
    return {**body, "integrity": {"sha256": _digest(body)}}


def is_sealed(report: dict) -> bool:
    """Whether the report's integrity digest matches its content."""
    integrity = report.get("integrity")
    recorded = integrity.get("sha256") if isinstance(integrity, dict) else None
    body = {key: value for key, value in report.items() if key != "integrity"}
    return recorded == _digest(body)


def _digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()).hexdigest()


def write_report(path: Path, report: dict) -> None:
    try:
        files.write_json(path, seal(report))
    except FileError as error:
        raise ExportError(str(error)) from None


def read_report(path: Path) -> dict:
    """runtime.artifact.read_report, the one reader of reports, with the export's error type."""
    try:
        return runtime_artifact.read_report(path)
    except HieraRuntimeError as error:
        raise ExportError(str(error)) from None
