"""The one exception type of `export`: its message is written for the user, in one line."""

from __future__ import annotations


class ExportError(Exception):
    """Bad options, weights or output location, or a failed export step; the message says which.

    `option` is the `Options` field the error is about, when there is one, so that a command line can
    name its own flag for it; the message itself speaks the Python API's names."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option
