import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture
def private_lock(tmp_path, monkeypatch) -> Path:
    """A copy of models.lock that a test may change, made the one the package reads."""
    path = tmp_path / "models.lock"
    shutil.copy(ROOT / "models.lock", path)
    monkeypatch.setenv("HIERA_MODELS_LOCK", os.fspath(path))
    return path
