"""The exception types of `runtime`: each message is written for the user, in one line."""


class HieraRuntimeError(Exception):
    """A bad image or model file, or a missing package; the message names the file and what is wrong."""


class FileError(HieraRuntimeError):
    """A path that cannot be read or written as asked (missing, not a regular file, too large, disk full).
    `hiera_model` and `export` raise it again as their own error type, with the same message."""


class MissingMetadata(HieraRuntimeError):
    """An ONNX file without Hiera metadata: it runs only with the preprocessing its caller gives (each front
    end says how: the API's `preprocessing=`, the CLI's `--crop-size`)."""
