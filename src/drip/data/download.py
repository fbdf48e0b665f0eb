"""Downloads with checksums, written atomically: a data file is either whole and verified, or absent."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import DripDataError


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(data)
        tmp.flush()
        os.fsync(tmp.fileno())
    os.replace(tmp.name, path)


def check_digest(data: bytes, source: str, *, md5: str | None = None, sha256: str | None = None) -> None:
    """Raise ``DripDataError`` unless ``data`` has the given MD5 / SHA-256."""
    for name, expected, found in (
        ("MD5", md5, hashlib.md5(data).hexdigest() if md5 else None),
        ("SHA-256", sha256, sha256_of(data) if sha256 else None),
    ):
        if expected and found != expected:
            raise DripDataError(f"{source}: {name} {found}, expected {expected} (corrupt download?)")


def download(
    url: str, path: Path, *, md5: str | None = None, sha256: str | None = None, timeout_s: float = 20.0
) -> Path:
    """Fetch ``url`` into ``path`` after checking its digest; a file already there is verified."""
    if path.is_file():
        check_digest(path.read_bytes(), str(path), md5=md5, sha256=sha256)
        return path
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise DripDataError(f"{url}: download failed ({err})") from None
    check_digest(data, url, md5=md5, sha256=sha256)
    write_atomically(path, data)
    return path
