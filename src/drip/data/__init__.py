"""Data sets in one return shape (``DataSplits`` of ``LabelledData``), their loaders and fetchers.

``load_dataset(name, data_dir)`` reads a data set from its standard on-disk layout;
``data_dir=None`` means ``$DRIP_DATA/<name>`` (default ``~/.cache/drip/<name>``). The embedded
default, scikit-learn's digits, needs no folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..errors import DripInputError
from .base import DataSplits, LabelledData, stratified_split
from .cifar10 import fetch_cifar10, load_cifar10
from .digits import load_digits
from .mnist import fetch_mnist, load_mnist
from .plant_village import load_plant_village
from .speech_commands import fetch_speech_commands, load_speech_commands


def data_root() -> Path:
    """``$DRIP_DATA`` or ``~/.cache/drip``."""
    return Path(os.environ.get("DRIP_DATA", Path.home() / ".cache" / "drip"))


LOADERS: dict[str, Callable[[Path], DataSplits]] = {
    "digits": lambda folder: DataSplits(load_digits(), None),
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "speech-commands": load_speech_commands,
    "plant-village": load_plant_village,
}
FETCHERS: dict[str, Callable[..., Path]] = {
    "mnist": fetch_mnist,
    "cifar10": fetch_cifar10,
    "speech-commands": fetch_speech_commands,
}


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None) -> DataSplits:
    """Training data and official test split (or None) of data set ``name``."""
    if name not in LOADERS:
        raise DripInputError(f"dataset: expected one of {sorted(LOADERS)}, got {name!r}")
    return LOADERS[name](Path(data_dir) if data_dir is not None else data_root() / name)


__all__ = [
    "FETCHERS",
    "LOADERS",
    "DataSplits",
    "LabelledData",
    "data_root",
    "fetch_cifar10",
    "fetch_mnist",
    "fetch_speech_commands",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_plant_village",
    "load_speech_commands",
    "stratified_split",
]
