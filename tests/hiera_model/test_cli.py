"""`python -m hiera_model`, run as a user would: output, one-line errors, exit codes."""

import shutil
import subprocess
import sys

from ..conftest import FIXTURES, ROOT


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "hiera_model", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env)


def test_info_prints_the_variant_table():
    result = run("info")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["variant", "embed", "heads", "depths"]
    base = next(line for line in lines if line.startswith("base "))
    assert base.split() == ["base", "96", "1-2-4-8", "2-3-16-3", "51.52", "52", "9", "84.5",
                            "facebook/hiera-base-224-in1k-hf"]
    names = ("tiny", "small", "base", "base_plus", "large", "huge")
    assert [line.split()[0] for line in lines[1:7]] == list(names)


def test_errors_are_one_line_with_a_non_zero_exit(tmp_path):
    for args in (("info", "gigantic"), ("inspect", tmp_path / "absent.pth"), ("lock", "verify", tmp_path)):
        result = run(*args)
        assert result.returncode == 2  # bad input
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
        assert "Traceback" not in result.stderr


def test_inspect_a_checkpoint_directory():
    result = run("inspect", FIXTURES / "reference" / "timm_hub")
    assert result.returncode == 0, result.stderr
    assert "embed_dim 16, depths (1, 2, 2, 1)" in result.stdout
    assert "input (96, 128), task classify, classes 10" in result.stdout
    assert "local:model.safetensors (not verified: models.lock does not name it)" in result.stdout


def test_lock_fill_and_verify(tmp_path):
    lock_file = tmp_path / "models.lock"
    shutil.copy(ROOT / "models.lock", lock_file)
    env = {"HIERA_MODELS_LOCK": str(lock_file), "PATH": ""}
    file = tmp_path / "hiera_base_224.pth"
    shutil.copy(FIXTURES / "reference" / "hiera_fair_small.pth", file)
    before = run("lock", "verify", file, env=env)
    assert before.returncode == 1 and "has no sha256 for" in before.stderr
    filled = run("lock", "fill", file, env=env)
    assert filled.returncode == 0
    assert "recorded https://dl.fbaipublicfiles.com/hiera/hiera_base_224.pth" in filled.stdout
    after = run("lock", "verify", file, env=env)
    assert after.returncode == 0 and after.stdout.startswith(f"{file}: ok")
