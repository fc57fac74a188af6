import errno
import json
import os
import re
import shutil

import pytest

import hiera_model
from hiera_model import HieraConfig, HieraModelError, VARIANTS
from hiera_model import lock

from ..conftest import FIXTURES, ROOT

FAIR_FILE = FIXTURES / "reference" / "hiera_fair_small.pth"
FAIR_HUB = FIXTURES / "reference" / "fair_hub"
SMALL = HieraConfig(embed_dim=16, num_heads=(1, 2, 4, 8), depths=(1, 2, 2, 1), input_size=(96, 128), num_classes=10)


def test_the_lock_lists_every_published_checkpoint():
    entries = lock.read(ROOT / "models.lock")
    assert len({(e.source, e.file) for e in entries}) == len(entries)
    shipped = [e for e in entries if e.source == "hiera-deploy/digits"]  # tools/digits.py's model, in models/
    assert len(shipped) == 1 and shipped[0].sha256 == lock.sha256(ROOT / "models" / "digits" / "model.safetensors")
    for entry in entries:
        assert entry.variant in VARIANTS or entry in shipped
        assert entry.task in hiera_model.TASKS
        assert entry.format in ("transformers", "fair", "timm")
        assert entry.sha256 is None or re.fullmatch("[0-9a-f]{64}", entry.sha256)
    for name, variant in VARIANTS.items():
        sources = {e.source for e in entries if e.variant == name}
        assert f"https://dl.fbaipublicfiles.com/hiera/{variant.fair_name}.pth" in sources
        if variant.config.is_video:  # FAIR publishes the video models; transformers and timm do not
            assert variant.transformers_id is None
            assert {e.format for e in entries if e.variant == name} == {"fair"}
        else:
            assert variant.transformers_id in sources
            assert {e.format for e in entries if e.variant == name} == {"transformers", "fair", "timm"}
            assert {e.task for e in entries if e.variant == name} == {"classify", "features", "mae"}
            assert f"https://dl.fbaipublicfiles.com/hiera/mae_{variant.fair_name}.pth" in sources


def published_copy(tmp_path):
    """The fixture under a published FAIR file name, as a user's download would be named."""
    file = tmp_path / "hiera_tiny_224.pth"
    shutil.copy(FAIR_FILE, file)
    return file


def test_a_published_file_with_no_recorded_hash_needs_consent(tmp_path, private_lock):
    file = published_copy(tmp_path)
    with pytest.raises(HieraModelError, match="models.lock has no sha256 for https://dl.fbaipublicfiles.com/hiera/"
                                              "hiera_tiny_224.pth yet, .*python -m hiera_model lock fill"):
        hiera_model.load(file, variant=SMALL)
    with pytest.warns(UserWarning, match="no sha256"):
        model = hiera_model.load(file, variant=SMALL, allow_unverified=True)
    assert model.provenance["verified"] is False
    assert model.provenance["sha256"] == lock.sha256(file)


def test_fill_then_verify_then_detect_tampering(tmp_path, private_lock):
    file = published_copy(tmp_path)
    entry = lock.fill(file)
    assert (entry.sha256, entry.size) == (lock.sha256(file), file.stat().st_size)
    recorded = json.loads(private_lock.read_text())["checkpoints"]
    assert sum(e["sha256"] == entry.sha256 for e in recorded) == 1
    assert sorted(p.name for p in private_lock.parent.iterdir() if p.name.startswith(".models.lock")) == []

    model = hiera_model.load(file, variant=SMALL)
    assert model.provenance == {"source": "https://dl.fbaipublicfiles.com/hiera/hiera_tiny_224.pth",
                                "sha256": entry.sha256, "verified": True, "verified_by": "models.lock"}

    with open(file, "r+b") as f:  # flip one byte
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(HieraModelError, match="disagrees with models.lock .* download it again"):
        hiera_model.load(file, variant=SMALL)


def test_hub_files_are_named_by_their_repository_directory(tmp_path, private_lock):
    # A plain directory of a hub repository's name may be FAIR's repository or timm's: refuse to guess.
    bare = tmp_path / "hiera_tiny_224.mae_in1k_ft_in1k"
    shutil.copytree(FAIR_HUB, bare)
    with pytest.raises(HieraModelError, match="names several models.lock entries"):
        lock.fill(bare / "model.safetensors")

    # The hub cache's directory names the organization too.
    snapshot = tmp_path / "models--facebook--hiera_tiny_224.mae_in1k_ft_in1k" / "snapshots" / "0123abc"
    shutil.copytree(FAIR_HUB, snapshot)
    entry = lock.fill(snapshot / "model.safetensors")
    assert entry.source == "facebook/hiera_tiny_224.mae_in1k_ft_in1k" and entry.format == "fair"
    assert hiera_model.load(snapshot).provenance["source"] == "facebook/hiera_tiny_224.mae_in1k_ft_in1k@main"


def test_fill_through_a_link_keeps_the_link(tmp_path, monkeypatch):
    """In a checkout the package's lock links to the repository's: a fill must update that file."""
    real = tmp_path / "repo" / "models.lock"
    real.parent.mkdir()
    shutil.copy(ROOT / "models.lock", real)
    link = tmp_path / "models.lock"
    link.symlink_to(real)
    monkeypatch.setenv(lock.ENV_VAR, str(link))
    entry = lock.fill(published_copy(tmp_path))
    assert link.is_symlink()
    assert entry.sha256 in real.read_text()


def test_a_failed_write_leaves_the_lock_as_it_was(tmp_path, private_lock, monkeypatch):
    """A full disk halfway through: one clear error, the old lock intact, no temp file left."""
    before = private_lock.read_text()

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)  # runtime.files syncs the temp file before renaming it
    with pytest.raises(HieraModelError, match="cannot write .No space left on device"):
        lock.fill(published_copy(tmp_path))
    assert private_lock.read_text() == before
    assert [p.name for p in private_lock.parent.iterdir() if p.name.startswith(".models.lock")] == []


def test_the_package_ships_the_repository_lock():
    assert (ROOT / "hiera_model" / "models.lock").read_text() == (ROOT / "models.lock").read_text()


def test_users_own_files_load_with_their_hash(private_lock):
    model = hiera_model.load(FAIR_FILE, variant=SMALL)
    assert model.provenance == {"source": "local:hiera_fair_small.pth", "sha256": lock.sha256(FAIR_FILE),
                                "verified": False, "verified_by": None}
    with pytest.raises(HieraModelError, match="no models.lock entry names this file"):
        lock.fill(FAIR_FILE)


def test_a_missing_or_broken_lock_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(lock.ENV_VAR, str(tmp_path / "absent.lock"))
    with pytest.raises(HieraModelError, match="models.lock not found; set HIERA_MODELS_LOCK"):
        hiera_model.load(FAIR_FILE, variant=SMALL)
    (tmp_path / "broken.lock").write_text("{}")
    monkeypatch.setenv(lock.ENV_VAR, str(tmp_path / "broken.lock"))
    with pytest.raises(HieraModelError, match="not a valid models.lock"):
        hiera_model.load(FAIR_FILE, variant=SMALL)
