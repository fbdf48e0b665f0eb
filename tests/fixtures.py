"""Tiny data sets in the real on-disk formats, shared by the data and experiment tests."""

from __future__ import annotations

import gzip
import pickle
import wave
from pathlib import Path

import numpy as np
from PIL import Image

from drip.data import cifar10, mnist
from drip.data.speech_commands import KEYWORDS


def idx_bytes(array: np.ndarray) -> bytes:
    magic = 2051 if array.ndim == 3 else 2049
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist_idx(folder: Path, compress: bool = True, n_train: int = 12, n_test: int = 5) -> dict:
    """The four MNIST IDX files; images carry a class-dependent blob so a model can learn."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in (("train", n_train), ("test", n_test)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 60, (count, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 * label : 2 * label + 8, 4:24] = 255
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    for key, stem in mnist.IDX_FILES.items():
        data = idx_bytes(arrays[key])
        path = folder / (stem + (".gz" if compress else ""))
        path.write_bytes(gzip.compress(data) if compress else data)
    return arrays


def cifar_batch(n: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    content = {
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"labels": [i % 10 for i in range(n)],
    }
    return pickle.dumps(content)


def cifar_members(per_batch: int = 4, test: int = 3) -> dict[str, bytes]:
    files = {name: cifar_batch(per_batch, i) for i, name in enumerate(cifar10.TRAIN_BATCHES)}
    files["test_batch"] = cifar_batch(test, 9)
    files["batches.meta"] = pickle.dumps({b"label_names": [n.encode() for n in cifar10.CLASS_NAMES]})
    return files


def write_cifar_folder(folder: Path, per_batch: int = 4, test: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in cifar_members(per_batch, test).items():
        (folder / name).write_bytes(data)


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(rate)
        clip.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def write_speech_corpus(root: Path, per_word: int = 3) -> None:
    """Keyword folders, two unknown words, background noise and the two lists."""
    rng = np.random.default_rng(0)
    testing, validation = [], []
    for w, word in enumerate((*KEYWORDS, "bed", "cat")):
        for i in range(per_word):
            length = 16000 if i % 2 else 12000  # short clips get padded
            tone = np.sin(2 * np.pi * (200 + 150 * w) * np.arange(length) / 16000)
            write_wav(root / word / f"spk{i}_nohash_0.wav", 0.3 * tone + 0.05 * rng.standard_normal(length))
            (testing if i == 0 else validation if i == 1 else []).append(f"{word}/spk{i}_nohash_0.wav")
    write_wav(root / "_background_noise_" / "white.wav", 0.2 * rng.standard_normal(16000 * 8))
    (root / "testing_list.txt").write_text("\n".join(testing) + "\n")
    (root / "validation_list.txt").write_text("\n".join(validation) + "\n")


PLANT_CLASSES = ("Apple___healthy", "Tomato___Late_blight", "Corn___rust")


def write_plant_tree(root: Path, classes=PLANT_CLASSES, per_class: int | None = None) -> None:
    """JPG and PNG (RGBA too) leaves of odd sizes, one folder per class."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class or 2 + c):
            pixels = rng.integers(0, 256, (90 + 10 * (i % 3), 80, 3), dtype=np.uint8)
            pixels[..., c % 3] = 255
            suffix, mode = (".JPG", "RGB") if i % 2 else (".png", "RGBA")
            Image.fromarray(pixels).convert(mode).save(folder / f"leaf{i}{suffix}")
