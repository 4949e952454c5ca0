"""Content hashes: of files (bundle and source manifests) and of JSON-able settings (prepared-data keys)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def settings_hash(settings, length: int = 16) -> str:
    """Hex SHA-256 of `settings` as sorted-key JSON (values JSON cannot write as str), cut to `length`."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:length]
