"""`runtime.files` (the one owner of safe file access) as this package uses it: its errors as ours."""

from __future__ import annotations

import contextlib
import json

from runtime.errors import FileError
from runtime import files

from .errors import HieraModelError, from_file_error

JSON_LIMIT = 16 << 20  # config.json, a safetensors index, models.lock: a few kB to a few MB in practice


@contextlib.contextmanager
def file_errors():
    """Raise `runtime.files`' errors (missing, not a regular file, too large, cannot write) as ours."""
    try:
        yield
    except FileError as error:
        raise from_file_error(error) from None


def read_json(path, limit: int = JSON_LIMIT):
    """A JSON document from a regular file of at most `limit` bytes. NaN and Infinity are read as floats
    so that whoever checks the values can name the field that holds one (`runtime.files.read_json`
    refuses them without saying where)."""
    with file_errors():
        data = files.read_bytes(path, limit)
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        raise HieraModelError(f"{path}: not valid JSON ({error})") from None
    except RecursionError:
        raise HieraModelError(f"{path}: not valid JSON (nested too deeply)") from None
