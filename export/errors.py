"""The one exception type of `export`: its message is written for the user, in one line."""


class ExportError(Exception):
    """Bad arguments, weights or output location, or a failed export step; the message says which."""
