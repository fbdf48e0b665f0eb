"""Downloads with checksums, written atomically: a data file is either whole and verified, or absent."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import DripDataError

# Data sets run to gigabytes (Speech Commands: 2.3 GB): hashed and written a chunk at a time.
_CHUNK = 1 << 20


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    while chunk := stream.read(_CHUNK):
        yield chunk


def check_digest(
    data: bytes | Iterable[bytes], source: str, *, md5: str | None = None, sha256: str | None = None
) -> None:
    """Raise ``DripDataError`` unless ``data`` (bytes, or its chunks) has the given MD5 / SHA-256."""
    hashes = {name: hashlib.new(name) for name, expected in (("md5", md5), ("sha256", sha256)) if expected}
    for chunk in [data] if isinstance(data, bytes) else data:
        for digest in hashes.values():
            digest.update(chunk)
    for name, title, expected in (("md5", "MD5", md5), ("sha256", "SHA-256", sha256)):
        if expected and (found := hashes[name].hexdigest()) != expected:
            raise DripDataError(f"{source}: {title} {found}, expected {expected} (corrupt download?)")


def download(
    url: str, path: Path, *, md5: str | None = None, sha256: str | None = None, timeout_s: float = 20.0
) -> Path:
    """Fetch ``url`` into ``path`` after checking its digest; a file already there is verified."""
    if path.is_file():
        with path.open("rb") as existing:
            check_digest(_chunks(existing), str(path), md5=md5, sha256=sha256)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:

                def copied() -> Iterator[bytes]:
                    for chunk in _chunks(response):
                        tmp.write(chunk)
                        yield chunk

                check_digest(copied(), url, md5=md5, sha256=sha256)
            tmp.flush()
            os.fsync(tmp.fileno())
        except (urllib.error.URLError, OSError, ValueError) as err:
            os.unlink(tmp.name)
            raise DripDataError(f"{url}: download failed ({err})") from None
        except DripDataError:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)
    return path
