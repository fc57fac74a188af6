"""The one command shell (runtime/shell.py) under every command: Ctrl-C and SIGTERM, a broken pipe, out of
memory and an unexpected error each end in the same one line and documented exit status; argument errors
are one escaped line, refused before torch is imported; every numeric option's range is in its --help."""

import argparse
import json
import os
import signal
import subprocess
import sys
import types

import onnx
import pytest
from onnx import TensorProto, helper

import export.__main__ as export_cli
import hiera_model.__main__ as model_cli
import runtime.cli as runtime_cli
from runtime import shell
from runtime.shell import Number, Whole, printable

from ..conftest import ROOT


def raise_(error):
    def fault(*args, **kwargs):
        raise error

    return fault


def ctrl_c(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)  # a real signal: Python's handler raises KeyboardInterrupt
    signal.pause()


def sigterm(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    signal.pause()


# Every command, the arguments that get it past its parser, and where a fault is put in after that:
# (module or module name, attribute).
COMMANDS = {
    "hiera-export": (export_cli.main, ["--variant", "tiny", "--weights", "random"], ("export.options", "check")),
    "hiera-export verify": (export_cli.main, ["verify", "a.onnx"], ("export.verification", "verify")),
    "hiera-export check-trt": (export_cli.main, ["check-trt", "a.onnx"], ("export.trt_check", "check_file")),
    "hiera-export hub": (export_cli.main, ["hub", "a.onnx", "--out", "hub"], ("export.hub", "report_for")),
    "hiera-runtime": (runtime_cli.main, ["predict", "x.jpg", "--model", "m.onnx"], ("runtime.cli", "load_from_args")),
    "hiera-runtime triton": (runtime_cli.main, ["triton", "m.onnx", "--repo", "r"],
                             ("runtime.triton", "write_repository")),
    "hiera-runtime segment": (runtime_cli.main, ["segment", "x.jpg", "--model", "m.onnx", "--decoder", "d.onnx",
                                                 "--point", "1,1"], ("runtime.segment", "load_segmenter")),
    "hiera-model": (model_cli.main, ["lock", "verify", "x.pth"], ("hiera_model.lock", "read")),
}
STATE = {"hiera-export": "the output folder is as it was", "hiera-export verify": "the output folder is as it was",
         "hiera-export check-trt": "the output folder is as it was",
         "hiera-export hub": "nothing was left half-written"}
# What an interruption says it left, where the command knows better than its shell's state: segment names its --out
# (the default here, `segments`) and whether the new masks were committed.
INTERRUPTED_STATE = {"hiera-runtime segment": "segments is as it was: nothing was written"}
DEBUG = "HIERA_DEBUG=1 shows the traceback"


def expected(command: str, fault: str) -> tuple[str, int]:
    state = STATE.get(command)
    stopped = INTERRUPTED_STATE.get(command, state)
    return {"ctrl-c": (f"interrupted: {stopped}\n" if stopped else "interrupted\n", 130),
            "sigterm": (f"interrupted: {stopped}\n" if stopped else "interrupted\n", 130),
            "broken pipe": ("", 141),
            "out of memory": (f"error: out of memory ({state})\n" if state else "error: out of memory\n", 2),
            "unexpected": ("error: internal error, ZeroDivisionError: boom\\x1b[2J (" + (f"{state}; " if state else "")
                           + DEBUG + ")\n", 2)}[fault]


FAULTS = {"ctrl-c": ctrl_c, "sigterm": sigterm, "broken pipe": raise_(BrokenPipeError()),
          "out of memory": raise_(MemoryError()), "unexpected": raise_(ZeroDivisionError("boom\x1b[2J\nsecond line"))}


def inject(monkeypatch, where, fault):
    module, name = where
    if module == "export.verification":  # a stand-in: the real module imports torch, which this test needs not
        monkeypatch.setitem(sys.modules, module, types.SimpleNamespace(**{name: fault}))
    else:
        monkeypatch.setattr(f"{module}.{name}", fault)


@pytest.fixture
def sigterm_fallback():
    """A SIGTERM the shell does not catch fails the test instead of ending the test run."""
    def fallback(signum, frame):
        raise LookupError("SIGTERM reached the test's handler, not the shell's")

    previous = signal.signal(signal.SIGTERM, fallback)
    yield fallback
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_ends_a_fault_in_one_line_and_its_status(command, fault, monkeypatch, tmp_path, capsys,
                                                                sigterm_fallback):
    if fault == "ctrl-c" and signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler here")
    main, arguments, where = COMMANDS[command]
    monkeypatch.chdir(tmp_path)
    inject(monkeypatch, where, FAULTS[fault])
    status = main(arguments)
    out, err = capsys.readouterr()
    assert (err, status) == expected(command, fault) and out == ""
    assert signal.getsignal(signal.SIGTERM) is sigterm_fallback  # the shell's handler is in place only while it runs


def test_the_debug_switch_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("HIERA_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        shell.run_command(raise_(ZeroDivisionError("boom")), [])


def test_a_broken_pipe_is_never_taken_for_a_commands_own_error(capsys):
    """tools/digits.py counts OSError among its errors; BrokenPipeError is one."""
    assert shell.run_command(raise_(BrokenPipeError()), [], errors=(OSError,)) == 141
    assert capsys.readouterr().err == ""


def test_a_check_that_failed_is_1_and_bad_input_2(capsys):
    class Refused(Exception):
        option = "engine.workspace_gb"

    assert shell.run_command(raise_(Refused("workspace 0 GB")), [], errors=(Refused,)) == 2
    assert shell.run_command(raise_(Refused("workspace 0 GB")), [], errors=(Exception,), failed=(Refused,)) == 1
    assert capsys.readouterr().err == "error: workspace 0 GB [--workspace]\n" * 2


def test_a_real_broken_pipe_is_quiet_and_141(tmp_path):
    """`python -m export check-trt FILE | head -0`: the reader is gone before the first line is written."""
    relu = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(relu, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "relu.onnx")
    process = subprocess.Popen([sys.executable, "-m", "export", "check-trt", tmp_path / "relu.onnx"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    process.stdout.close()
    err = process.stderr.read()
    assert process.wait() == 141 and err == b""


def test_printable_escapes_controls_bidi_and_undecodable_bytes():
    name = "a\x1b[2J\nok\r\t\u202eevil\x07" + b"caf\xe9".decode("utf-8", "surrogateescape") + "\u00e9\U0001f600"
    assert printable(name) == "a\\x1b[2J\\nok\\r\\t\\u202eevil\\x07caf\\xe9\u00e9\U0001f600"
    assert printable(b"\xff".decode("utf-8", "surrogateescape")) == "\\xff"


FORGED = "--x\x1b[2J\nok: 18 of 18 checks hold"


def test_a_forged_line_in_an_argument_is_escaped():
    result = subprocess.run([sys.executable, "-m", "export", "verify", FORGED], capture_output=True, cwd=ROOT)
    assert result.returncode == 2 and result.stdout == b""
    assert b"\x1b" not in result.stderr and result.stderr.count(b"\n") == 1
    assert result.stderr.startswith(b"error: ") and b"\\x1b[2J\\nok: 18 of 18 checks hold" in result.stderr


@pytest.mark.parametrize("main, arguments", [(export_cli.main, ["verify", "a.onnx", "--x\x1b[2J\nok"]),
                                             (runtime_cli.main, ["info", "--model", "m.onnx", "--x\x1b[2J\nok"]),
                                             (model_cli.main, ["info", "--x\x1b[2J\nok"])])
def test_argparse_errors_are_escaped_in_every_command(main, arguments, capsys):
    assert main(arguments) == 2
    out, err = capsys.readouterr()
    assert out == "" and "\x1b" not in err and err.count("\n") == 1 and "--x\\x1b[2J\\nok" in err


@pytest.mark.parametrize("main", [export_cli.main, runtime_cli.main, model_cli.main])
def test_no_arguments_is_the_help_on_stderr_and_exit_2(main, capsys):
    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: ")


def test_refused_arguments_import_no_torch():
    """Each command refuses a bad argument before torch (or onnxruntime) is imported: one fresh interpreter
    runs them all and reports what they imported."""
    refused = [("export", ["--variant", "bse"]), ("export", ["--variant", "tiny", "--seed", "-1"]),
               ("export", ["--variant", "tiny", "--weights", "random", "--precision", "int4"]),
               ("export", ["verify"]), ("export", ["check-trt", "--bogus"]), ("export", ["hub", "--bench-runs", "x"]),
               ("runtime.cli", ["predict", "x.jpg", "--model", "m.onnx", "--top-k", "0"]),
               ("runtime.cli", ["triton", "m.onnx", "--repo", "r", "--instances", "0"]),
               ("hiera_model", ["inspect", "x.pth", "--variant", "bse"])]
    code = f"""
import contextlib, io, json, sys
import export.__main__, hiera_model.__main__, runtime.cli
mains = {{"export": export.__main__.main, "hiera_model": hiera_model.__main__.main, "runtime.cli": runtime.cli.main}}
results = []
for module, arguments in {refused!r}:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        results.append([mains[module](arguments), err.getvalue()])
heavy = [name for name in ("torch", "onnxruntime", "onnx_ir", "onnxscript") if name in sys.modules]
print(json.dumps({{"results": results, "heavy": heavy}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["heavy"] == []
    for (module, arguments), (status, err) in zip(refused, report["results"]):
        assert status == 2 and (err.startswith("error: ") and err.count("\n") == 1 or err.startswith("usage: ")), \
            (module, arguments, err)


TRITON_REFUSED = {"--instances": ["1000000000000", "0"], "--max-batch": ["99999999999", "0"],
                  "--queue-delay-us": ["1e24", "-1"], "--max-megapixels": ["-5", "nan", "inf", "0"],
                  "--top-k": ["0", "1001"], "--preferred-batch": ["0", "2000"]}


@pytest.mark.parametrize("option", TRITON_REFUSED)
def test_triton_options_outside_what_triton_and_the_runtime_take_are_refused(option, tmp_path, capsys):
    for value in TRITON_REFUSED[option]:
        status = runtime_cli.main(["triton", str(tmp_path / "m.onnx"), "--repo", str(tmp_path / "r"), option, value])
        out, err = capsys.readouterr()
        assert status == 2 and out == "" and err.count("\n") == 1, (option, value, err)
        assert err.startswith(f"error: argument {option}: must be a ") and repr(value) in err, (option, value, err)
    assert list(tmp_path.iterdir()) == []


def parsers(monkeypatch) -> list:
    """Every parser of every command, each with its subcommands' (collected as they parse)."""
    found = []

    def collect(parser, args=None, namespace=None):
        found.append(parser)
        raise SystemExit(0)

    monkeypatch.setattr(shell.Parser, "parse_args", collect)
    for main, arguments in [(export_cli.main, ["--help"]), (export_cli.main, ["verify"]),
                            (export_cli.main, ["check-trt"]), (export_cli.main, ["hub"]), (runtime_cli.main, []),
                            (model_cli.main, [])]:
        assert main(arguments) == 0
    every = []
    while found:
        parser = found.pop()
        every.append(parser)
        found += [sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
                  for sub in action.choices.values()]
    return every


def test_every_ranged_option_states_its_range_in_its_help(monkeypatch):
    ranged = 0
    for parser in parsers(monkeypatch):
        for action in parser._actions:
            if isinstance(action.type, (Whole, Number)):
                ranged += 1
                high = f"{action.type.high:g}" if isinstance(action.type, Number) else str(action.type.high)
                assert action.help and high in action.help, (parser.prog, action.option_strings, action.help)
    assert ranged >= 29  # export 6, hub 1, runtime 15 (five commands' options), triton 6, hiera_model 1
