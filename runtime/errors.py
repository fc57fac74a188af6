"""The one exception type of `runtime`: its message is written for the user, in one line."""


class HieraRuntimeError(Exception):
    """A bad image or model file, or a missing package; the message names the file and what is wrong."""
