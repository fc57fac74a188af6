import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def photo(tmp_path):
    """A 100 x 70 PNG of seeded noise."""
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (70, 100, 3), dtype=np.uint8)).save(path)
    return path
