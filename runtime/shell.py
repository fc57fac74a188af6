"""The one command shell of every command line (`python -m export`, `python -m runtime`, `python -m hiera_model`
and their subcommands): what they print, how they parse, how they end.

- `printable` / `say`: every line a command prints as text is escaped here, and only here (control and
  format characters, a file name's undecodable bytes), so that no label, file name or argument can move
  the cursor, clear the screen or forge a line.
- `Parser`: argparse whose errors are one escaped line and exit 2, and which, given no arguments at all,
  prints its help on stderr and exits 2 (argparse's own convention for a missing argument).
- `Whole`, `Number`: option types with their range, which each option's --help states.
- `FLAGS` / `flag`: how the command lines spell the API options that errors name (`error.option`).
- `run_command`: runs a command's main and turns whatever ends it into its exit status and at most one
  line on stderr. HIERA_DEBUG=1 shows an unexpected error's traceback instead.

Exit status, of every command: 0 ok, 1 a check failed, 2 bad input (also out of memory and an internal
error: never a false "ok"), 130 interrupted (Ctrl-C or SIGTERM), 141 broken pipe (the reader of the
output went away: quietly, as a pipeline's killed writer would).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import threading
import unicodedata

OK, FAILED, BAD_INPUT, INTERRUPTED, BROKEN_PIPE = 0, 1, 2, 130, 141

UNSAFE = {"Cc", "Cf", "Cs", "Zl", "Zp"}  # controls, format characters (bidi overrides), surrogates, line breaks
ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

# The API options errors name (`error.option`: export's `Options` fields, hiera_model's build options) that
# the command lines spell otherwise than `--` + the name with dashes.
FLAGS = {"out_dir": "--out", "precisions": "--precision", "input_size": "--image-size",
         "engine.precision": "--trt-precision", "engine.max_batch": "--max-batch", "engine.workspace_gb": "--workspace",
         "build_engine": "--trt", "optimize": "--no-optimize"}


def printable(text) -> str:
    """`text` with every control character escaped as Python writes it (`\\x1b`, `\\n`, `\\u202e`): escape
    sequences, newlines and bidi overrides in a label or file name cannot act on the terminal. A file name's
    undecodable byte (a lone surrogate to Python, from surrogateescape) shows as the byte, `\\xff`."""

    def escape(char: str) -> str:
        code = ord(char)
        if char in ESCAPES:
            return ESCAPES[char]
        if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the byte code - 0xDC00
            return f"\\x{code - 0xDC00:02x}"
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"

    return "".join(escape(c) if unicodedata.category(c) in UNSAFE else c for c in str(text))


def say(text, stream=None) -> None:
    """One line of text, escaped, in what the stream's encoding can hold (the rest as backslash escapes)."""
    stream = stream or sys.stdout
    encoding = getattr(stream, "encoding", None) or "utf-8"
    line = printable(text).encode(encoding, "backslashreplace").decode(encoding)
    stream.write(line + "\n")
    stream.flush()


class Parser(argparse.ArgumentParser):
    def parse_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        if not args:  # one convention for every command: no arguments at all is help on stderr, exit 2
            self.print_help(sys.stderr)
            self.exit(BAD_INPUT)
        return super().parse_args(args, namespace)

    def error(self, message):  # one line, like every other error of the command
        self.exit(BAD_INPUT, f"error: {printable(message)} (see {self.prog} --help)\n")


class Whole:
    """An argparse type: a whole number from `low` to `high` (the option's help states them)."""

    def __init__(self, low: int, high: int):
        self.low, self.high = low, high

    def __call__(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not self.low <= value <= self.high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {self.low} to {self.high}, not {text!r}")
        return value


class Number:
    """An argparse type: a finite number above `low` and at most `high` (the option's help states them)."""

    def __init__(self, low: float, high: float):
        self.low, self.high = low, high

    def __call__(self, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and self.low < value <= self.high):
            raise argparse.ArgumentTypeError(f"must be a number above {self.low:g} and at most {self.high:g}, "
                                             f"not {text!r}")
        return value


class Numbers:
    """An argparse type: `counts` comma-separated finite numbers (e.g. a point X,Y or X,Y,LABEL); `spelled` is how
    the option's help writes them."""

    def __init__(self, counts: tuple[int, ...], spelled: str):
        self.counts, self.spelled = counts, spelled

    def __call__(self, text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(part) for part in text.split(","))
        except ValueError:
            values = ()
        if len(values) not in self.counts or not all(math.isfinite(value) for value in values):
            raise argparse.ArgumentTypeError(f"must be {self.spelled} (finite numbers, comma-separated), not {text!r}")
        return values


def flag(option: str) -> str:
    return FLAGS.get(option, "--" + option.replace("_", "-"))


def error_line(error: Exception) -> str:
    """An error of the API as a command line says it: its option spelled as that command's flag, either in
    the message's own words (hiera_model's `{option}` placeholder) or after it, in brackets."""
    option = getattr(error, "option", None)
    if option is None:
        return f"error: {error}"
    if hasattr(error, "render"):  # HieraModelError: "load it with {option}" -> "load it with --task features"
        value = getattr(error, "value", None)
        return f"error: {error.render(flag(option) + ('' if value is None or value is True else f' {value}'))}"
    return f"error: {error} [{flag(option)}]"


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM leaves the way Ctrl-C does: every cleanup on the way out runs


def run_command(command, argv, *, errors: tuple = (), failed: tuple = (), state: str = "") -> int:
    """`command(argv)`'s exit status, whatever ends it. Errors of the `errors` types (their messages are
    written for the user) are one line and exit 2, or 1 for those of the `failed` types (a check that
    failed); `state` says in those lines what an interruption or failure left behind ("the output folder
    is as it was")."""
    note, also = (f": {state}", f" ({state})") if state else ("", "")
    in_main_thread = threading.current_thread() is threading.main_thread()  # where signal handlers may be set
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        try:
            status = command(argv)
        except SystemExit as stop:  # argparse: --help, or an argument error already said in one line
            status = stop.code if isinstance(stop.code, int) else OK if stop.code is None else BAD_INPUT
        sys.stdout.flush()  # here, so that a reader gone before the last line is a broken pipe like any other
        return status
    except KeyboardInterrupt as error:  # runtime.commit's Interrupted says which state its target is in
        say(f"interrupted: {error}" if str(error) else f"interrupted{note}", sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # before `errors`, which may hold OSError
        with contextlib.suppress(OSError, ValueError):  # (stdout may be no file descriptor: a test's capture)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return BROKEN_PIPE
    except failed as error:
        say(error_line(error), sys.stderr)
        return FAILED
    except errors as error:
        say(error_line(error), sys.stderr)
        return BAD_INPUT
    except MemoryError:
        say(f"error: out of memory{also}", sys.stderr)
        return BAD_INPUT
    except Exception as error:  # a bug or a library's surprise: still one line, and never a false "ok"
        if os.environ.get("HIERA_DEBUG", "") not in ("", "0"):
            raise
        first = str(error).splitlines()[0] if str(error) else ""
        where = f"{state}; " if state else ""
        say(f"error: internal error, {type(error).__name__}: {first} ({where}HIERA_DEBUG=1 shows the traceback)",
            sys.stderr)
        return BAD_INPUT
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
