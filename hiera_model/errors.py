"""The one exception type of `hiera_model`: its message is written for the user, in one line."""


class HieraModelError(Exception):
    """A bad configuration, checkpoint or lock entry; the message says which and what is wrong."""
