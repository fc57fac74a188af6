"""The exception types of `hiera_model`: each message is written for the user, in one line.

Where the way past an error is one API parameter the caller can change (`allow_unverified`, `task`,
`input_size`, ...), `error.option` names it. The message refers to it through an `{option}` placeholder:
`str(error)` spells it as Python does (``allow_unverified=True``), and a command line renders its own
flag with `error.render("--allow-unverified")`. No message names a CLI flag by itself.
"""

from __future__ import annotations

_NO_VALUE = object()


class HieraModelError(Exception):
    """A bad configuration, checkpoint, lock entry or argument; the message says which and what is wrong."""

    def __init__(self, message: str, option: str | None = None, value=_NO_VALUE):
        self.template = message
        self.option = option
        self.value = None if value is _NO_VALUE else value
        python = option if value is _NO_VALUE else f"{option}={value!r}"
        super().__init__(self.render(python) if option else message)

    def render(self, flag: str) -> str:
        """The message with the option spelled `flag`, as a CLI spells it ("--task features")."""
        return self.template.replace("{option}", flag)


class VerificationError(HieraModelError):
    """A file failed a provenance check: its sha256 disagrees with `models.lock` or with the Hub's, or
    nothing records the hash of a published file. CLIs exit 1 for these (a failed check), 2 for the rest."""


def from_file_error(error) -> HieraModelError:
    """`runtime.files.FileError` (a path that is missing, not a regular file, too large) as our own type."""
    return HieraModelError(str(error))
