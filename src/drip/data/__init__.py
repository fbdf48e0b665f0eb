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


# Each loader takes the folder and whether to show progress bars (the slow loaders have them).
LOADERS: dict[str, Callable[[Path, bool], DataSplits]] = {
    "digits": lambda folder, progress: DataSplits(load_digits(), None),
    "mnist": lambda folder, progress: load_mnist(folder),
    "cifar10": lambda folder, progress: load_cifar10(folder),
    "speech-commands": lambda folder, progress: load_speech_commands(folder, progress=progress),
    "plant-village": lambda folder, progress: load_plant_village(folder, progress=progress),
}
FETCHERS: dict[str, Callable[..., Path]] = {
    "mnist": fetch_mnist,
    "cifar10": fetch_cifar10,
    "speech-commands": fetch_speech_commands,
}


def dataset_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder of data set ``name``: ``data_dir``, or ``$DRIP_DATA/<name>``."""
    return Path(data_dir) if data_dir is not None else data_root() / name


def load_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, progress: bool = True
) -> DataSplits:
    """Training data and official test split (or None) of data set ``name``."""
    if name not in LOADERS:
        raise DripInputError(f"dataset: expected one of {sorted(LOADERS)}, got {name!r}")
    return LOADERS[name](dataset_dir(name, data_dir), progress)


def load_or_fetch(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, progress: bool = True, log=print
) -> DataSplits:
    """``load_dataset``, first fetching a public data set whose folder is missing or empty.

    A folder that holds anything is never fetched into: a loading error there is the user's to
    see (a damaged file, a wrong layout), not a reason to download over it.
    """
    folder = dataset_dir(name, data_dir)
    empty = not folder.is_dir() or not any(folder.iterdir())
    if name in FETCHERS and empty:
        log(f"drip: {name} is not in {folder}; fetching it (checksums verified)")
        FETCHERS[name](folder)
    return load_dataset(name, data_dir, progress=progress)


__all__ = [
    "FETCHERS",
    "LOADERS",
    "DataSplits",
    "LabelledData",
    "data_root",
    "dataset_dir",
    "fetch_cifar10",
    "fetch_mnist",
    "fetch_speech_commands",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_or_fetch",
    "load_plant_village",
    "load_speech_commands",
    "stratified_split",
]
