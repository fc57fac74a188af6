"""`models.lock`: the provenance of every published checkpoint, and the check of local files against it.

A local file is tied to a lock entry by its sha256, or else by its published name: the file name of
a direct download, or the hub repository's directory (``hiera-tiny-224-in1k-hf/`` as a local_dir,
``models--facebook--hiera-tiny-224-in1k-hf/`` in the hub cache) for hub files such as
``model.safetensors``. A named file is verified by the sha256 the lock records or, until someone records
it, by the sha256 the Hub published for it, which the Hub's client leaves on disk (`hub`). A file whose
sha256 disagrees with either is refused, always. A named file with neither to check it against is
refused unless the caller allows unverified files, and then warned about. Files that no entry names are
the user's own: they load, with their sha256 as provenance.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from runtime import files

from .errors import HieraModelError, VerificationError
from .file_access import file_errors, read_json
from .hub import published_sha256

ENV_VAR = "HIERA_MODELS_LOCK"
FIELDS = ("variant", "task", "format", "source", "revision", "file", "size", "sha256", "license")
BY_LOCK, BY_HUB = "models.lock", "the Hub's sha256"


@dataclass
class Entry:
    variant: str
    task: str
    format: str
    source: str  # a hub repository id, or the URL of a direct download
    revision: str | None
    file: str
    size: int | None = None
    sha256: str | None = None
    license: str | None = None  # the weights' licence, where the lock records it (SAM 2's rows)

    @property
    def label(self) -> str:
        return self.source if "://" in self.source else f"{self.source}/{self.file}"

    @property
    def source_at_revision(self) -> str:
        return self.source if self.revision is None else f"{self.source}@{self.revision}"

    def names(self, file: Path) -> bool:
        """Whether `file` is, by its path, this entry's published file."""
        if file.name != self.file:
            return False
        if "://" in self.source:
            return True
        repo_dirs = {self.source.split("/")[-1], "models--" + self.source.replace("/", "--")}
        return any(parent.name in repo_dirs for parent in file.absolute().parents)


def default_path() -> Path:
    """$HIERA_MODELS_LOCK, else the lock shipped in the package (in a checkout, a link to the repository's)."""
    return Path(os.environ.get(ENV_VAR) or Path(__file__).parent / "models.lock")


def read(lock_path=None) -> list[Entry]:
    path = Path(lock_path) if lock_path else default_path()
    if not path.exists():
        raise HieraModelError(f"{path}: models.lock not found; set {ENV_VAR} to its path")
    data = read_json(path)
    items = data.get("checkpoints") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise HieraModelError(f"{path}: not a valid models.lock (no list of checkpoints)")
    entries = []
    for i, item in enumerate(items):
        problem = _entry_problem(item)
        if problem:
            raise HieraModelError(f"{path}: not a valid models.lock (checkpoint {i}: {problem})")
        entries.append(Entry(**{k: item.get(k) for k in FIELDS}))
    return entries


def _entry_problem(item) -> str | None:
    if not isinstance(item, dict):
        return "not an object"
    for key in ("variant", "task", "format", "source", "file"):
        if not isinstance(item.get(key), str) or not item[key]:
            return f"{key} must be a non-empty string"
    if item.get("revision") is not None and not isinstance(item["revision"], str):
        return "revision must be a string or null"
    size = item.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        return "size must be a whole number or null"
    if item.get("sha256") is not None and not (isinstance(item["sha256"], str) and
                                               re.fullmatch("[0-9a-f]{64}", item["sha256"])):
        return "sha256 must be 64 lowercase hex digits or null"
    if item.get("license") is not None and (not isinstance(item["license"], str) or not item["license"]):
        return "license must be a non-empty string or null"
    return None


def write(entries: list[Entry], lock_path=None) -> None:
    """Rewrite the lock atomically (`runtime.files`), onto the file a link points to."""
    path = (Path(lock_path) if lock_path else default_path()).resolve()
    data = read_json(path)
    # A licence is written where one is recorded, so that the rows without one stay as they are.
    data["checkpoints"] = [{k: getattr(e, k) for k in FIELDS if k != "license" or e.license is not None}
                           for e in entries]
    with file_errors():
        files.write_json(path, data)


def sha256(file) -> str:
    with file_errors():
        return files.sha256(file)


def check(file, entries: list[Entry]) -> tuple[list[Entry], str, str | None]:
    """The entries `file` is (by hash, else by name; none for the user's own files), its sha256, and what
    verified it (`BY_LOCK`, `BY_HUB`, or None: a named file that nothing records a hash for, or the user's own).

    Raises `VerificationError` where the lock or the Hub records another hash for the file."""
    file = Path(file)
    digest = sha256(file)
    by_hash = [e for e in entries if e.sha256 == digest]
    if by_hash:
        return by_hash, digest, BY_LOCK
    named = [e for e in entries if e.names(file)]
    for entry in named:
        if entry.sha256:
            raise VerificationError(
                f"{file}: sha256 {digest} disagrees with models.lock for {entry.label} ({entry.sha256}); the file is "
                "corrupt, altered or of another revision: download it again")
    published = published_sha256(file)
    if published and published[0] != digest:
        raise VerificationError(
            f"{file}: sha256 {digest} disagrees with the one the Hub published for it ({published[0]}, recorded at "
            f"download in {published[1]}); the file is corrupt or altered: download it again")
    return named, digest, BY_HUB if named and published else None


def unrecorded(file, matched: list[Entry], digest: str) -> str:
    labels = " or ".join(e.label for e in matched)
    return (f"{file}: models.lock has no sha256 for {labels} yet, and no record of the Hub's sha256 was found "
            f"beside it (this file's is {digest}); compare it with the one its source shows, then record it with "
            f"`python -m hiera_model lock fill {file}`")


def verify_files(paths: list[Path], allow_unverified: bool = False, lock_path=None) -> dict:
    """Check checkpoint files against the lock (and the Hub's hashes) and return their provenance for the
    model's metadata: source (" (verified by the Hub's sha256)" added where the Hub's record verified it),
    sha256, and verified (every file's hash confirmed by the lock or the Hub)."""
    entries = read(lock_path)
    sources, digests, how = [], [], []
    for file in paths:
        matched, digest, verified_by = check(file, entries)
        digests.append(digest)
        how.append(verified_by)
        if not matched:
            sources.append(f"local:{file.name}")
        elif verified_by == BY_HUB:
            sources.append(f"{matched[0].source_at_revision} (verified by {BY_HUB})")
        elif verified_by:
            sources.append(matched[0].source_at_revision)
        else:
            message = unrecorded(file, matched, digest)
            if not allow_unverified:
                raise VerificationError(message + ", or pass {option} to load it unverified", option="allow_unverified",
                                        value=True)
            warnings.warn(message + "; loading it unverified, as allowed", stacklevel=3)
            sources.append(" or ".join(e.label for e in matched) + " (unverified)")
    return {"source": ", ".join(dict.fromkeys(sources)), "sha256": ", ".join(digests), "verified": all(how)}


def fill(file, lock_path=None) -> Entry:
    """Record the sha256 and size of a downloaded file in the entry that names it; a file whose sha256
    disagrees with the Hub's (where its client recorded one) is refused."""
    file = Path(file)
    entries = read(lock_path)
    matched, digest, _ = check(file, entries)
    if not matched:
        raise HieraModelError(f"{file}: no models.lock entry names this file (published checkpoints keep their file "
                              "name, or live in a directory named after their hub repository)")
    if len(matched) > 1:
        labels = ", ".join(e.label for e in matched)
        raise HieraModelError(f"{file}: the path names several models.lock entries ({labels}); "
                              "load it from the hub cache path (models--ORG--NAME) to tell them apart")
    entry = matched[0]
    entry.sha256, entry.size = digest, os.stat(file).st_size
    write(entries, lock_path)
    return entry
