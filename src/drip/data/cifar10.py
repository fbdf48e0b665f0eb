"""CIFAR-10, python version: ``data_batch_1..5``, ``test_batch`` and ``batches.meta``.

Each batch is a pickled dict with ``b"data"`` (N, 3072) uint8 in channel-major order and
``b"labels"``; read from a folder (``cifar-10-batches-py``) or straight from the official
``cifar-10-python.tar.gz`` (MD5 checked). Unpickling allows plain containers and numpy arrays only.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DripDataError
from .base import DataSplits, LabelledData
from .download import check_digest, download
from .mnist import safe_unpickle

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _batch(content: object, source: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(content, dict) or b"data" not in content or b"labels" not in content:
        raise DripDataError(f"{source}: expected a dict with b'data' and b'labels'")
    data = np.asarray(content[b"data"])
    labels = np.asarray(content[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DripDataError(
            f"{source}: data of shape {data.shape} / {data.dtype} with {len(labels)} labels, "
            "expected (N, 3072) uint8 and N labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DripDataError(f"{source}: labels outside 0..9")
    return data, labels


def _to_data(parts: list[tuple[np.ndarray, np.ndarray]], names: tuple[str, ...]) -> LabelledData:
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    x = torch.tensor(data, dtype=torch.float32).reshape(-1, 3, 32, 32) / 255.0
    return LabelledData("cifar10", x, torch.tensor(labels), 10, names)


def _names(meta: object) -> tuple[str, ...]:
    if isinstance(meta, dict) and b"label_names" in meta and len(meta[b"label_names"]) == 10:
        return tuple(name.decode() for name in meta[b"label_names"])
    return CLASS_NAMES


def _read_members(read: dict[str, bytes]) -> DataSplits:
    train = [_batch(safe_unpickle(read[name], name), name) for name in TRAIN_BATCHES]
    test = [_batch(safe_unpickle(read[TEST_BATCH], TEST_BATCH), TEST_BATCH)]
    names = _names(safe_unpickle(read[META], META)) if META in read else CLASS_NAMES
    return DataSplits(train=_to_data(train, names), test=_to_data(test, names))


def load_cifar10(folder: Path) -> DataSplits:
    """CIFAR-10 from ``folder`` (the batches, possibly in ``cifar-10-batches-py/``) or its tar.gz."""
    folder = Path(folder)
    for candidate in (folder, folder / "cifar-10-batches-py"):
        if all((candidate / name).is_file() for name in (*TRAIN_BATCHES, TEST_BATCH)):
            names = [*TRAIN_BATCHES, TEST_BATCH, *([META] if (candidate / META).is_file() else [])]
            return _read_members({name: (candidate / name).read_bytes() for name in names})
    archive = folder / ARCHIVE
    if archive.is_file():
        return load_cifar10_archive(archive)
    raise DripDataError(
        f"{folder}: no CIFAR-10 here (expected data_batch_1..5 and test_batch, or {ARCHIVE}); "
        "run `drip data fetch cifar10`"
    )


def load_cifar10_archive(archive: Path) -> DataSplits:
    """CIFAR-10 read straight from the official tar.gz, after checking its MD5 (read once)."""
    raw = archive.read_bytes()
    check_digest(raw, str(archive), md5=ARCHIVE_MD5)
    wanted = {*TRAIN_BATCHES, TEST_BATCH, META}
    read: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            for member in tar.getmembers():
                name = Path(member.name).name
                if member.isfile() and name in wanted:
                    read[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DripDataError(f"{archive}: corrupt or truncated archive: {err}") from None
    missing = sorted({*TRAIN_BATCHES, TEST_BATCH} - set(read))
    if missing:
        raise DripDataError(f"{archive}: missing {missing}")
    return _read_members(read)


def fetch_cifar10(folder: Path, *, log=print) -> Path:
    """Download the official archive into ``folder`` (MD5 checked); data already there is kept."""
    folder = Path(folder)
    download(URL, folder / ARCHIVE, md5=ARCHIVE_MD5, timeout_s=60)
    log(f"CIFAR-10: {folder / ARCHIVE} verified")
    return folder
