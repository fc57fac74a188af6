"""Promises about the repository itself: CI runs what the README says, the runtime stays torch-free."""

import ast
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


SCRIPT_FOLDERS = ("tools", "benchmarks")  # run as modules from the repository's root: `python -m tools.digits`
MUTATORS = {"insert", "append", "extend", "remove", "pop", "clear"}


def _is_sys_path(node, sys_names: set[str], path_names: set[str]) -> bool:
    """`sys.path` (under whatever name `sys` or its `path` was imported as), or an item or slice of it."""
    node = node.value if isinstance(node, ast.Subscript) else node
    return isinstance(node, ast.Name) and node.id in path_names or isinstance(node, ast.Attribute) and \
        node.attr == "path" and isinstance(node.value, ast.Name) and node.value.id in sys_names


def script_problems(path) -> list[str]:
    """Where a script imports from the test suite or changes the import path, one line each."""
    tree = ast.parse(path.read_text(), filename=str(path))
    imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    sys_names = {alias.asname or alias.name for node in imports if isinstance(node, ast.Import)
                 for alias in node.names if alias.name == "sys"}
    path_names = {alias.asname or alias.name for node in imports if isinstance(node, ast.ImportFrom)
                  and node.module == "sys" for alias in node.names if alias.name == "path"}
    found = []
    for node in ast.walk(tree):
        modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        if any(module.split(".")[0] == "tests" for module in modules):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} imports from tests/")
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        mutated = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
            node.func.attr in MUTATORS and _is_sys_path(node.func.value, sys_names, path_names)
        if mutated or any(_is_sys_path(target, sys_names, path_names) for target in targets):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} changes sys.path")
    return sorted(found, key=lambda line: int(line.split(":")[1].split()[0]))


def test_tools_and_benchmarks_neither_import_tests_nor_change_sys_path():
    scripts = sorted(path for folder in SCRIPT_FOLDERS for path in (ROOT / folder).rglob("*.py"))
    assert len(scripts) >= 10, scripts
    assert [line for path in scripts for line in script_problems(path)] == []


def test_the_script_check_finds_both(tmp_path, monkeypatch):
    """The check itself, on a hand-written script that does both in each way it knows."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    script = tmp_path / "bad.py"
    script.write_text("import sys\nimport tests.conftest\nfrom tests.hiera_model import test_mae\n"
                      "sys.path.insert(0, '.')\nsys.path[:0] = ['.']\nsys.path += ['.']\nprint(sys.path)\n"
                      "from .tests import x\nimport sys as s\ns.path.append('.')\nfrom sys import path as p\n"
                      "p.extend(['.'])\n")
    assert script_problems(script) == ["bad.py:2 imports from tests/", "bad.py:3 imports from tests/",
                                       "bad.py:4 changes sys.path", "bad.py:5 changes sys.path",
                                       "bad.py:6 changes sys.path", "bad.py:10 changes sys.path",
                                       "bad.py:12 changes sys.path"]
