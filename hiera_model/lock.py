"""`models.lock`: the provenance of every published checkpoint, and the check of local files against it.

A local file is tied to a lock entry by its sha256, or else by its published name: the file name of
a direct download, or the hub repository's directory (``hiera-tiny-224-in1k-hf/`` as a local_dir,
``models--facebook--hiera-tiny-224-in1k-hf/`` in the hub cache) for hub files such as
``model.safetensors``. A named file whose hash disagrees with the lock is refused; one whose hash the
lock does not record yet is refused unless the caller allows unverified files, and then warned about.
Files that no entry names are the user's own: they load, with their sha256 as provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import HieraModelError

ENV_VAR = "HIERA_MODELS_LOCK"
FIELDS = ("variant", "task", "format", "source", "revision", "file", "size", "sha256")


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

    @property
    def label(self) -> str:
        return self.source if "://" in self.source else f"{self.source}/{self.file}"

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
    try:
        data = json.loads(path.read_text())
        return [Entry(**{k: item.get(k) for k in FIELDS}) for item in data["checkpoints"]]
    except FileNotFoundError:
        raise HieraModelError(f"{path}: models.lock not found; set {ENV_VAR} to its path") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise HieraModelError(f"{path}: not a valid models.lock ({error})") from None


def write(entries: list[Entry], lock_path=None) -> None:
    """Rewrite the lock atomically: a temp file beside it, then a rename (onto the file a link points to)."""
    path = (Path(lock_path) if lock_path else default_path()).resolve()
    data = json.loads(path.read_text())
    data["checkpoints"] = [{k: getattr(e, k) for k in FIELDS} for e in entries]
    tmp = None
    try:
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".models.lock.", delete=False) as file:
            tmp = Path(file.name)
            json.dump(data, file, indent=1)
            file.write("\n")
        os.replace(tmp, path)
    except OSError as error:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise HieraModelError(f"{path}: cannot write models.lock ({error.strerror})") from None


def sha256(file: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(file, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    except OSError as error:
        raise HieraModelError(f"{file}: cannot read it ({error.strerror})") from None
    return digest.hexdigest()


def match(file, entries: list[Entry]) -> tuple[list[Entry], str]:
    """The entries `file` is, by hash or else by name (none for the user's own files), and its sha256.

    Raises where an entry names the file but records another hash."""
    file = Path(file)
    digest = sha256(file)
    by_hash = [e for e in entries if e.sha256 == digest]
    if by_hash:
        return by_hash, digest
    named = [e for e in entries if e.names(file)]
    for entry in named:
        if entry.sha256:
            raise HieraModelError(
                f"{file}: sha256 {digest} disagrees with models.lock for {entry.label} ({entry.sha256}); the file is "
                "corrupt, altered or of another revision: download it again")
    return named, digest


def unrecorded(file, matched: list[Entry], digest: str) -> str:
    labels = " or ".join(e.label for e in matched)
    return (f"{file}: models.lock has no sha256 for {labels} yet (this file's is {digest}); "
            f"compare it with the source's, then record it with `python -m hiera_model lock fill {file}`")


def verify_files(files: list[Path], allow_unverified: bool = False, lock_path=None) -> dict:
    """Check checkpoint files against the lock and return their provenance for the model's metadata."""
    entries = read(lock_path)
    sources, digests, verified = [], [], True
    for file in files:
        matched, digest = match(file, entries)
        digests.append(digest)
        if not matched:
            sources.append(f"local:{file.name}")
            verified = False
        elif matched[0].sha256 == digest:
            entry = matched[0]
            sources.append(entry.source if entry.revision is None else f"{entry.source}@{entry.revision}")
        else:
            labels = " or ".join(e.label for e in matched)
            message = unrecorded(file, matched, digest)
            if not allow_unverified:
                raise HieraModelError(message + ", or load with allow_unverified=True")
            warnings.warn(message, stacklevel=3)
            sources.append(f"{labels} (unverified)")
            verified = False
    # verified: every file's hash is one the lock records.
    return {"source": ", ".join(dict.fromkeys(sources)), "sha256": ", ".join(digests), "verified": verified}


def fill(file, lock_path=None) -> Entry:
    """Record the sha256 and size of a downloaded file in the entry that names it."""
    file = Path(file)
    if not file.is_file():
        raise HieraModelError(f"{file}: no such file")
    entries = read(lock_path)
    matched, digest = match(file, entries)
    if not matched:
        raise HieraModelError(f"{file}: no models.lock entry names this file (published checkpoints keep their file "
                              "name, or live in a directory named after their hub repository)")
    if len(matched) > 1:
        labels = ", ".join(e.label for e in matched)
        raise HieraModelError(f"{file}: the path names several models.lock entries ({labels}); "
                              "load it from the hub cache path (models--ORG--NAME) to tell them apart")
    entry = matched[0]
    entry.sha256, entry.size = digest, file.stat().st_size
    write(entries, lock_path)
    return entry
