import subprocess
import sys

import pytest

from export import Options, run

from ..conftest import ROOT
from .test_preprocess import hiera_processor


def runtime_cli(*args, **options) -> subprocess.CompletedProcess:
    """`python -m runtime ARGS` in a process of its own, from the repository's root."""
    return subprocess.run([sys.executable, "-m", "runtime", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          **options)


@pytest.fixture(scope="session")
def exported(transformers_checkpoint, tmp_path_factory):
    """`(config name, task, batch) -> (artifact, transformers directory, transformers model)`: the fp32
    export of a seeded transformers checkpoint, saved with `save_pretrained` next to Hiera's image
    processor config, as a published checkpoint directory holds it."""
    cache = {}

    def make(name: str, task: str = "classify", batch: int | None = 1):
        if (name, task, batch) not in cache:
            directory, model = transformers_checkpoint(name, task)
            if name == "tiny":
                hiera_processor().save_pretrained(directory)
            out = tmp_path_factory.mktemp(f"artifact-{name}-{task}-{batch}")
            report = run(Options(weights=str(directory), task=task, batch=batch, out_dir=out, precisions=("fp32",),
                                 validate=False))
            cache[name, task, batch] = out / report["artifacts"]["fp32"]["file"], directory, model
        return cache[name, task, batch]

    return make
