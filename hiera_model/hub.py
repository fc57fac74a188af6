"""The sha256 the Hugging Face Hub published for a downloaded file, where its client left it on disk.

The Hub serves large files through Git LFS and names each by its sha256 (the file's "etag"). Its client,
`huggingface_hub`, keeps that name in two places, and either is a record of what the Hub served:

- The hub cache (``hf download REPO``, `from_pretrained`): ``models--ORG--NAME/snapshots/COMMIT/FILE`` is a
  symbolic link to ``models--ORG--NAME/blobs/ETAG``, and for a large file ETAG is its sha256.
- A local folder (``hf download REPO --local-dir DIR``): ``DIR/.cache/huggingface/download/FILE.metadata``
  holds three lines: the commit, the etag, and when it was written.

Small files kept in git (config.json) have a git blob hash (40 hex digits) as their etag instead; they
yield nothing here, and neither do copies (a cache without symbolic links).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from runtime import files

from .file_access import file_errors

_SHA256 = re.compile(r"[0-9a-f]{64}")
_METADATA_LIMIT = 4096
_MAX_LINKS = 16


def published_sha256(file) -> tuple[str, str] | None:
    """(sha256, where it was found) for a file the Hub's client downloaded, or None."""
    return _from_cache(Path(file)) or _from_local_dir(Path(file))


def _from_cache(file: Path) -> tuple[str, str] | None:
    """Follow the file's links one at a time (a blob may itself link into a shared store named otherwise)
    until one of them is a blob named by its sha256."""
    path = file
    for _ in range(_MAX_LINKS):
        if path.parent.name == "blobs" and _SHA256.fullmatch(path.name) and path.parent.parent.name.startswith(
                ("models--", "datasets--", "spaces--")):
            return path.name, str(path)
        if not path.is_symlink():
            return None
        path = Path(os.path.normpath(path.parent / os.readlink(path)))
    return None


def _from_local_dir(file: Path) -> tuple[str, str] | None:
    """The etag in the download metadata of the nearest folder above `file` that has one for it."""
    file = file.absolute()
    for folder in file.parents:
        metadata = folder / ".cache" / "huggingface" / "download" / f"{file.relative_to(folder)}.metadata"
        if not metadata.exists():
            continue
        with file_errors():
            lines = files.read_bytes(metadata, _METADATA_LIMIT).decode("utf-8", "replace").splitlines()
        etag = lines[1].strip() if len(lines) > 1 else ""
        return (etag, str(metadata)) if _SHA256.fullmatch(etag) else None
    return None
