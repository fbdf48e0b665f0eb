"""Downloads: verified chunk by chunk, written whole or not at all (a file:// URL, no network)."""

from __future__ import annotations

import hashlib

import pytest

from drip.data import download as download_module
from drip.data.download import download
from drip.errors import DripDataError


def test_download_verifies_writes_and_rechecks(tmp_path, monkeypatch):
    monkeypatch.setattr(download_module, "_CHUNK", 7)  # many chunks through the hashes
    payload = bytes(range(256)) * 3
    source = tmp_path / "source.bin"
    source.write_bytes(payload)
    md5, sha256 = hashlib.md5(payload).hexdigest(), hashlib.sha256(payload).hexdigest()
    target = tmp_path / "data" / "file.bin"
    assert download(source.as_uri(), target, md5=md5, sha256=sha256) == target
    assert target.read_bytes() == payload
    # A file already there is checked, not fetched again; a damaged one is refused.
    source.unlink()
    assert download(source.as_uri(), target, sha256=sha256) == target
    target.write_bytes(payload[:-1])
    with pytest.raises(DripDataError, match="SHA-256"):
        download(source.as_uri(), target, sha256=sha256)


def test_a_download_with_the_wrong_digest_leaves_nothing(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"not the data set")
    target = tmp_path / "data" / "file.bin"
    with pytest.raises(DripDataError, match=r"MD5 .* expected 0+ "):
        download(source.as_uri(), target, md5="0" * 32)
    assert list(target.parent.iterdir()) == []
    with pytest.raises(DripDataError, match="download failed"):
        download((tmp_path / "absent.bin").as_uri(), target, md5="0" * 32)
    assert list(target.parent.iterdir()) == []
