import errno
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from huggingface_hub import try_to_load_from_cache
from huggingface_hub._local_folder import read_download_metadata, write_download_metadata
from huggingface_hub.file_download import _cache_commit_hash_for_specific_revision, _create_symlink, repo_folder_name

import hiera_model
from hiera_model import HieraConfig, HieraModelError, VARIANTS, VerificationError
from hiera_model import lock

from ..conftest import FIXTURES, ROOT

FAIR_FILE = FIXTURES / "reference" / "hiera_fair_small.pth"
FAIR_HUB = FIXTURES / "reference" / "fair_hub"
SMALL = HieraConfig(embed_dim=16, num_heads=(1, 2, 4, 8), depths=(1, 2, 2, 1), input_size=(96, 128), num_classes=10)


def test_the_lock_lists_every_published_checkpoint():
    entries = lock.read(ROOT / "models.lock")
    assert len({(e.source, e.file) for e in entries}) == len(entries)
    # the models this project trained and ships in models/: tools/digits.py's Hiera, tools/shapes.py's SAM 2
    shipped = {e.variant: e for e in entries if e.source.startswith("hiera-deploy/")}
    assert {name: (e.source, e.task) for name, e in shipped.items()} == {
        "digits": ("hiera-deploy/digits", "classify"), "shapes": ("hiera-deploy/shapes", "segmenter")}
    for name, entry in shipped.items():
        assert entry.sha256 == lock.sha256(ROOT / "models" / name / entry.file), name
    sam2 = [e for e in entries if e.variant in hiera_model.SAM2_VARIANTS]  # tests/hiera_model/test_sam2.py
    for entry in [e for e in entries if e not in sam2 and e.variant not in shipped]:
        assert entry.variant in VARIANTS
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
                                "sha256": entry.sha256, "verified": True}

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
                                "verified": False}
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


def flip_a_byte(file, at=1000):
    with open(file, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 1]))


def test_a_hash_mismatch_is_refused_even_when_unverified_files_are_allowed(tmp_path, private_lock):
    file = published_copy(tmp_path)
    lock.fill(file)
    flip_a_byte(file)
    with pytest.raises(VerificationError, match="disagrees with models.lock"):
        hiera_model.load(file, variant=SMALL, allow_unverified=True)


# The Hub's own sha256, where its client left it: built with huggingface_hub's functions, which work offline.
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FAIR_REPO = "facebook/hiera_tiny_224.mae_in1k_ft_in1k"


def hub_cache(tmp_path, repo_id: str, source: Path) -> Path:
    """`source`'s files in a hub cache as `hf_hub_download` lays one out: each a blob named by its etag (the
    sha256 for a large file, the git blob hash for a small one), linked from the snapshot of COMMIT, which
    the ref `main` names. huggingface_hub's own reader must find the file there."""
    cache = tmp_path / "cache"
    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    for file in source.iterdir():
        data = file.read_bytes()
        etag = (hashlib.sha256(data) if file.suffix == ".safetensors" else
                hashlib.sha1(b"blob %d\0" % len(data) + data)).hexdigest()
        blob = storage / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        pointer = storage / "snapshots" / COMMIT / file.name
        pointer.parent.mkdir(parents=True, exist_ok=True)
        _create_symlink(str(blob), str(pointer), new_blob=True)
    _cache_commit_hash_for_specific_revision(str(storage), "main", COMMIT)
    snapshot = storage / "snapshots" / COMMIT
    assert try_to_load_from_cache(repo_id, "model.safetensors", cache_dir=cache) == str(snapshot / "model.safetensors")
    return snapshot


def test_a_hub_cache_download_is_verified_by_the_hubs_sha256(tmp_path, private_lock):
    snapshot = hub_cache(tmp_path, FAIR_REPO, FAIR_HUB)
    model = hiera_model.load(snapshot)  # the lock records no sha256 for it: the Hub's verifies it
    assert model.provenance == {"source": f"{FAIR_REPO}@main (verified by the Hub's sha256)",
                                "sha256": lock.sha256(FAIR_HUB / "model.safetensors"), "verified": True}
    entry = lock.fill(snapshot / "model.safetensors")  # and lock fill records it
    assert entry.sha256 == model.provenance["sha256"]
    assert hiera_model.load(snapshot).provenance["source"] == f"{FAIR_REPO}@main"  # now by the lock


def test_a_hub_cache_file_that_disagrees_with_its_blob_name_is_refused(tmp_path, private_lock):
    snapshot = hub_cache(tmp_path, FAIR_REPO, FAIR_HUB)
    flip_a_byte(snapshot / "model.safetensors", at=-100 % (FAIR_HUB / "model.safetensors").stat().st_size)
    for allow in (False, True):
        with pytest.raises(VerificationError, match="disagrees with the one the Hub published for it .* download it "
                                                    "again"):
            hiera_model.load(snapshot, allow_unverified=allow)
    with pytest.raises(VerificationError, match="disagrees with the one the Hub published"):
        lock.fill(snapshot / "model.safetensors")


def local_dir_download(tmp_path, name: str, source: Path) -> Path:
    """`source`'s files as `hf download REPO --local-dir DIR` leaves them: the files, and for each its download
    metadata (commit, etag, time) written by huggingface_hub's own function, which its reader accepts."""
    directory = tmp_path / name
    shutil.copytree(source, directory)
    for file in source.iterdir():
        etag = lock.sha256(file) if file.suffix == ".safetensors" else "a" * 40
        write_download_metadata(directory, file.name, COMMIT, etag)
        assert read_download_metadata(directory, file.name).etag == etag
    return directory


def test_a_local_dir_download_is_verified_by_the_hubs_sha256(tmp_path, private_lock, transformers_checkpoint):
    checkpoint, _ = transformers_checkpoint("small_q_pool")
    directory = local_dir_download(tmp_path, "hiera-tiny-224-in1k-hf", checkpoint)
    model = hiera_model.load(directory)
    assert model.provenance["source"] == "facebook/hiera-tiny-224-in1k-hf@main (verified by the Hub's sha256)"
    assert model.provenance["verified"]

    flip_a_byte(directory / "model.safetensors", at=-100 % (directory / "model.safetensors").stat().st_size)
    with pytest.raises(VerificationError, match=r"recorded at download in .*model.safetensors.metadata"):
        hiera_model.load(directory, allow_unverified=True)


def test_neither_a_lock_hash_nor_a_hub_record_needs_consent(tmp_path, private_lock, transformers_checkpoint):
    checkpoint, _ = transformers_checkpoint("small_q_pool")
    directory = tmp_path / "hiera-tiny-224-in1k-hf"
    shutil.copytree(checkpoint, directory)
    with pytest.raises(VerificationError) as error:
        hiera_model.load(directory)
    assert error.value.option == "allow_unverified"
    assert "no record of the Hub's sha256 was found" in str(error.value)
    assert str(error.value).endswith("or pass allow_unverified=True to load it unverified")
    assert error.value.render("--allow-unverified").endswith("or pass --allow-unverified to load it unverified")
    with pytest.warns(UserWarning, match="loading it unverified, as allowed"):
        assert not hiera_model.load(directory, allow_unverified=True).provenance["verified"]
