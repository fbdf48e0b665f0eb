"""CIFAR-10: pickled python batches in a folder or the tar.gz, checksum and corruption errors."""

from __future__ import annotations

import io
import pickle
import tarfile

import numpy as np
import pytest
from fixtures import cifar_members, write_cifar_folder

from drip.data import cifar10, load_dataset
from drip.errors import DripDataError


def test_folder_of_batches(tmp_path):
    write_cifar_folder(tmp_path / "cifar-10-batches-py")
    splits = load_dataset("cifar10", tmp_path)
    assert splits.train.x.shape == (20, 3, 32, 32) and splits.test.x.shape == (3, 3, 32, 32)
    raw = pickle.loads(cifar_members()["data_batch_1"])[b"data"][1]
    assert np.allclose(splits.train.x[1].numpy().reshape(-1) * 255, raw)  # channel-major order
    assert splits.train.class_names[0] == "airplane"


def write_archive(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_archive_with_checksum(tmp_path, monkeypatch):
    archive = tmp_path / cifar10.ARCHIVE
    write_archive(archive, cifar_members())
    with pytest.raises(DripDataError, match="MD5"):
        load_dataset("cifar10", tmp_path)
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", __import__("hashlib").md5(archive.read_bytes()).hexdigest())
    assert len(load_dataset("cifar10", tmp_path).train) == 20


def test_truncated_archive_and_bad_batches_name_the_file(tmp_path, monkeypatch):
    archive = tmp_path / cifar10.ARCHIVE
    write_archive(archive, cifar_members())
    archive.write_bytes(archive.read_bytes()[:200])
    monkeypatch.setattr(cifar10, "ARCHIVE_MD5", __import__("hashlib").md5(archive.read_bytes()).hexdigest())
    with pytest.raises(DripDataError, match="corrupt or truncated archive"):
        load_dataset("cifar10", tmp_path)
    folder = tmp_path / "batches"
    folder.mkdir()
    files = cifar_members()
    files["data_batch_3"] = pickle.dumps({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]})
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with pytest.raises(DripDataError, match=r"data_batch_3: data of shape \(2, 100\)"):
        load_dataset("cifar10", folder)
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DripDataError, match="data_batch_3: not a readable pickle"):
        load_dataset("cifar10", folder)
