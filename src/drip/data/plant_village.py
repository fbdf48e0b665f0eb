"""PlantVillage (Plant Disease): an image-folder tree, one folder per class, resized to 64x64 RGB.

The public release has 38 classes (e.g. ``Plant_leave_diseases_dataset_without_augmentation`` from
Mendeley Data, doi:10.17632/tywbtsjrjv.1); any tree of at least two class folders of JPG/PNG images
loads the same way, class names being the sorted folder names. There is no official test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from ..errors import DripDataError
from .base import DataSplits, LabelledData

SIZE = 64
SUFFIXES = {".jpg", ".jpeg", ".png"}
# The Mendeley release ships a 39th folder of leafless backgrounds; the paper's task has 38 classes.
EXCLUDED = ("Background_without_leaves",)
SOURCE = "the PlantVillage dataset (Mendeley Data, doi:10.17632/tywbtsjrjv.1)"


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            resized = image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
            return np.asarray(resized, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DripDataError(f"{path}: not a readable image: {err}") from None


def load_plant_village(
    folder: Path, *, exclude: tuple[str, ...] = EXCLUDED, progress: bool = True
) -> DataSplits:
    """Every image under ``folder/<class>/`` as ``x: (N, 3, 64, 64)`` in [0, 1]; no test split.

    A single wrapper folder (as unzipping the release gives) is looked through; class folders
    named in ``exclude`` are skipped.
    """
    folder = Path(folder)
    classes = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if len(classes) == 1:
        return load_plant_village(classes[0], exclude=exclude, progress=progress)
    classes = [p for p in classes if p.name not in exclude]
    if len(classes) < 2:
        raise DripDataError(f"{folder}: expected one folder of images per class (at least 2); get {SOURCE}")
    paths, labels = [], []
    for label, class_dir in enumerate(classes):
        images = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in SUFFIXES)
        if not images:
            raise DripDataError(f"{class_dir}: no JPG or PNG images")
        paths += images
        labels += [label] * len(images)
    pixels = np.stack([_read_image(p) for p in tqdm(paths, desc="plant village", disable=not progress)])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    names = tuple(p.name for p in classes)
    data = LabelledData("plant-village", x, torch.tensor(labels, dtype=torch.int64), len(classes), names)
    return DataSplits(train=data, test=None)
