"""Promises about the repository itself: CI runs what the README says, the runtime stays torch-free."""

import re
import subprocess
import sys

import pytest

from .conftest import ROOT


def readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"```sh\n(?:.*\n)*?(python -m pytest[^\n]*)\n", readme)
    assert match, "README.md shows no test command in a ```sh block"
    return match[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_test_command() in ci


def test_runtime_does_not_import_torch():
    code = ("import sys, runtime, runtime.cli, runtime.bench, runtime.tensorrt, runtime.litert; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_installing_the_runtime_pulls_no_torch():
    """The base install and the runtime's extras: what an edge box gets from pip."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for requirements in (project["dependencies"], extras["cpu"], extras["gpu"], extras["tensorrt"], extras["litert"]):
        names = {re.split(r"[<>=\[ ;]", requirement)[0].lower() for requirement in requirements}
        assert not names & {"torch", "torchvision", "transformers", "timm", "onnxscript"}, names
