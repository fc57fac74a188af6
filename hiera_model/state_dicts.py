"""The tensors of one checkpoint file, read without trusting the file.

- The file is opened through `runtime.files`: a regular file only, so a FIFO or a device fails at once.
- Memory is bounded by the file itself. A safetensors header's tensors must tile the rest of the file
  exactly, checked before any tensor is allocated. A torch file must be the zip archive `torch.save`
  writes, whose entries are stored, not compressed: no entry may inflate past its size on disk, so a
  small compressed file that would inflate to gigabytes is refused before it is read. Older torch files
  (before the zip format of PyTorch 1.6) and other pickles are refused.
- Pickles are only ever read with `torch.load(weights_only=True)`, which builds tensors and plain
  containers and runs no code from the file.
- Every weight must be finite: a tensor holding NaN or Inf is refused, named with its counts.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import torch

from runtime import files
from runtime.errors import FileError

from .errors import HieraModelError
from .file_access import file_errors

_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file or a torch file (any other suffix), all finite.

    Training checkpoints wrap the weights: FAIR in `model_state`, others in `state_dict` or `model`.
    """
    with file_errors(), files.open_file(path) as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            raise HieraModelError(f"{path}: empty file, not a checkpoint")
        try:
            read = _read_safetensors if path.suffix == ".safetensors" else _read_torch
            state = read(file, path, size)
        except OSError as error:
            raise HieraModelError(f"{path}: cannot read ({error.strerror or type(error).__name__})") from None
    check_finite(state, path)
    return state


def _read_exactly(file, size: int, path) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise HieraModelError(f"{path}: ends early (truncated)")
    return data


def _read_safetensors(file, path, size: int) -> dict[str, torch.Tensor]:
    def invalid(reason):
        return HieraModelError(f"{path}: not a valid safetensors file ({reason})")

    try:
        header, data_start = files.safetensors_header(file, path)
    except FileError as error:
        raise HieraModelError(str(error)) from None
    header_size = data_start - 8
    header.pop("__metadata__", None)

    entries = []  # (begin, end, name, dtype, shape)
    for name, entry in header.items():
        try:
            dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
            shape, (begin, end) = entry["shape"], entry["data_offsets"]
            numbers = [*shape, begin, end]
            if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                      for n in numbers):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise invalid(f"tensor {name!r} has no valid dtype, shape and data_offsets") from None
        declared = math.prod(shape) * dtype.itemsize
        if end - begin != declared:
            raise invalid(f"tensor {name!r} of shape {shape} in {entry['dtype']} needs {declared:,} bytes; its "
                          f"offsets span {end - begin:,}")
        entries.append((begin, end, name, dtype, shape))
    # The tensors must tile the data that follows the header, without gaps or overlaps (the format's rule):
    # then what is allocated below is exactly the size of the file.
    entries.sort(key=lambda e: e[:2])
    data_size, offset = size - 8 - header_size, 0
    for begin, end, name, _, _ in entries:
        if begin != offset:
            raise invalid(f"tensor {name!r} starts at byte {begin:,} of the data, not at {offset:,} where the "
                          "previous one ends")
        offset = end
    if offset != data_size:
        raise invalid(f"its tensors declare {offset:,} bytes of data; the file holds {data_size:,}")

    state = {}
    for begin, end, name, dtype, shape in entries:
        data = torch.empty(end - begin, dtype=torch.uint8)
        view, done = memoryview(data.numpy()), 0
        while done < len(view):  # read straight into the tensor's memory
            count = file.readinto(view[done:])
            if not count:
                raise HieraModelError(f"{path}: ends early (truncated)")
            done += count
        state[name] = data.view(dtype).reshape(shape)
    return state


def _read_torch(file, path, size: int) -> dict[str, torch.Tensor]:
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, ValueError, EOFError):
        file.seek(0)
        if file.read(1) == b"\x80":  # a pickle protocol marker: a pickle, or torch's format before 1.6
            raise HieraModelError(f"{path}: a plain pickle or a torch file older than PyTorch 1.6, which this loader "
                                  "does not read; save the weights again with torch.save or as safetensors") from None
        raise HieraModelError(f"{path}: not a loadable PyTorch checkpoint (torch.save writes a zip archive), "
                              "or truncated") from None
    declared = 0
    for entry in archive.infolist():
        if entry.compress_type != zipfile.ZIP_STORED or entry.file_size != entry.compress_size:
            raise HieraModelError(
                f"{path}: entry {entry.filename} is compressed ({entry.compress_size:,} bytes inflating to "
                f"{entry.file_size:,}); torch.save stores its entries as they are, so this file is refused unread")
        declared += entry.file_size
    if declared > size:
        raise HieraModelError(f"{path}: its entries declare {declared:,} bytes, more than the file's {size:,}")
    file.seek(0)
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types here (UnpicklingError, RuntimeError, EOFError, ...)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise HieraModelError(f"{path}: not a loadable PyTorch checkpoint, or truncated ({reason[:200]})") from None
    for key in ("model_state", "state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise HieraModelError(f"{path}: holds no state dict of tensors")
    odd = next((k for k, v in data.items() if v.layout != torch.strided or v.is_meta or v.is_quantized), None)
    if odd is not None:
        raise HieraModelError(f"{path}: tensor {odd} is not a plain dense tensor with data")
    return data


def check_finite(state: dict[str, torch.Tensor], path) -> None:
    """Refuse weights holding NaN or Inf, naming each tensor and its counts."""
    bad = []
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            nan = int(torch.isnan(tensor).sum())
            inf = int(torch.isinf(tensor).sum())
            bad.append(f"{name} ({nan:,} NaN, {inf:,} Inf)")
    if bad:
        listed = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise HieraModelError(f"{path}: non-finite weights in {len(bad)} tensor{'s' if len(bad) > 1 else ''}: "
                              f"{listed}; every weight must be a finite number")
