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


def test_main_returns_the_exit_status(capsys):
    from hiera_model.__main__ import main

    assert main(["info", "tiny"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[0] == "tiny"
    assert main(["info", "gigantic"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown variant 'gigantic'")


def test_without_torch_the_cli_names_the_extra_to_install(tmp_path):
    """torch made unimportable: the commands that need it say which extra to install, in one line, exit 2;
    the lock commands, which do not, still work; the package and its configs import."""
    def without_torch(*args):
        code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = ['hiera_model', *sys.argv[1:]]; "
                "runpy.run_module('hiera_model', run_name='__main__')")
        return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=ROOT)

    for args in (("info",), ("inspect", FIXTURES / "reference" / "timm_hub")):
        result = without_torch(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr == ("error: hiera_model needs torch, which is not installed: "
                                 "pip install 'hiera-deploy[model]'\n")
    result = without_torch("lock", "verify", FIXTURES / "reference" / "hiera_fair_small.pth")
    assert result.returncode == 1 and "no models.lock entry names this file" in result.stderr
    code = ("import sys; sys.modules['torch'] = None; import hiera_model\n"
            "assert hiera_model.HieraConfig(embed_dim=32).stage_dims[-1] == 256\n"
            "try:\n    hiera_model.create('tiny')\nexcept hiera_model.HieraModelError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout == "hiera_model needs torch, which is not installed: pip install 'hiera-deploy[model]'\n"


def test_a_failed_check_exits_1_and_names_this_clis_flag(tmp_path):
    lock_file = tmp_path / "models.lock"
    shutil.copy(ROOT / "models.lock", lock_file)
    env = {"HIERA_MODELS_LOCK": str(lock_file), "PATH": ""}
    file = tmp_path / "hiera_tiny_224.pth"
    shutil.copy(FIXTURES / "reference" / "hiera_fair_small.pth", file)
    result = run("inspect", file, "--variant", "tiny", env=env)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert result.stderr.rstrip().endswith("or pass --allow-unverified to load it unverified")
    assert run("lock", "fill", file, env=env).returncode == 0
    with open(file, "r+b") as f:  # one byte flipped after recording
        f.seek(500)
        byte = f.read(1)
        f.seek(500)
        f.write(bytes([byte[0] ^ 1]))
    result = run("lock", "verify", file, env=env)
    assert result.returncode == 1 and "disagrees with models.lock" in result.stderr


def test_a_bad_image_size_is_one_line_and_exit_2():
    result = run("inspect", FIXTURES / "reference" / "timm_hub", "--image-size", "100", "128")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "input size 100 x 128 breaks Hiera's rule" in result.stderr and "height 96 or 128" in result.stderr
    result = run("inspect", FIXTURES / "reference" / "timm_hub", "--image-size", "128")
    assert result.returncode == 0 and "input (128, 128)" in result.stdout
