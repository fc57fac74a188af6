"""A `.tflite` whose metadata table points a `hiera.*` entry at bytes the file does not hold (issue 23: hostile
metadata): one line naming the file and the entry, never a short read passed on as the value. The files are written
with TFLite's own schema writer (ai-edge-litert's `schema_py_generated` and flatbuffers), no converter needed."""

import numpy as np
import pytest

from runtime import litert
from runtime.errors import HieraRuntimeError

schema = pytest.importorskip("ai_edge_litert.schema_py_generated")
flatbuffers = pytest.importorskip("flatbuffers")


def tflite_with_batch_entry(path, *, data: bytes | None = None, offset: int = 0, size: int = 0, entries: int = 1):
    """A model holding nothing but the metadata entry `hiera.batch`: its buffer inline (`data`) or, as TFLite
    writes models above 2 GB, as `size` bytes at `offset` from the file's start."""
    buffer = schema.BufferT()
    if data is not None:
        buffer.data = np.frombuffer(data, np.uint8)
    else:
        buffer.offset, buffer.size = offset, size
    entry = schema.MetadataT()
    entry.name, entry.buffer = "hiera.batch", 1
    model = schema.ModelT()
    model.version, model.buffers, model.metadata = 3, [schema.BufferT(), buffer], [entry] * entries
    builder = flatbuffers.Builder(256)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


def test_an_inline_entry_is_read(tmp_path):
    assert litert.read_metadata(tflite_with_batch_entry(tmp_path / "m.tflite", data=b"1")) == {"hiera.batch": "1"}


def test_an_entry_stored_after_the_flatbuffer_is_read(tmp_path):
    path = tmp_path / "m.tflite"
    length = len(tflite_with_batch_entry(path, offset=1, size=2).read_bytes())  # the same length for any offset
    tflite_with_batch_entry(path, offset=length, size=2)
    path.write_bytes(path.read_bytes() + b"42")  # the value after the flatbuffer, where the offset points
    assert litert.read_metadata(path) == {"hiera.batch": "42"}


@pytest.mark.parametrize("offset, size", [(10**12, 10), (0, 4096)])  # past the end; from inside to past the end
def test_an_entry_outside_the_file_is_one_line(tmp_path, offset, size):
    path = tflite_with_batch_entry(tmp_path / "m.tflite", offset=offset, size=size)
    with pytest.raises(HieraRuntimeError) as refused:
        litert.read_metadata(path)
    assert str(refused.value) == (f"{path}: damaged Hiera metadata: hiera.batch's {size} bytes at offset {offset} "
                                  f"lie outside the file ({path.stat().st_size} bytes)")


def test_a_truncated_table_is_one_line_saying_why(tmp_path):
    path = tflite_with_batch_entry(tmp_path / "m.tflite", data=b"1")
    path.write_bytes(path.read_bytes()[:24])  # the root table's offsets point past the end
    with pytest.raises(HieraRuntimeError) as refused:
        litert.read_metadata(path)
    assert str(refused.value).startswith(f"{path}: damaged TFLite model: its metadata table cannot be read "
                                         "(struct.error: unpack_from requires a buffer of at least"), refused.value


def test_a_key_given_twice_is_one_line(tmp_path):
    path = tflite_with_batch_entry(tmp_path / "m.tflite", data=b"1", entries=2)
    with pytest.raises(HieraRuntimeError) as refused:
        litert.read_metadata(path)
    assert str(refused.value) == f"{path}: damaged Hiera metadata: hiera.batch is in its metadata table twice"
