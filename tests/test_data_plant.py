"""PlantVillage: an image-folder tree of JPG/PNG, resized to 64x64 RGB; bad images name the file."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures import write_plant_tree

from drip.data import load_dataset
from drip.errors import DripDataError


def test_tree_loads_sorted_classes_at_64x64(tmp_path):
    write_plant_tree(tmp_path)
    splits = load_dataset("plant-village", tmp_path)
    assert splits.test is None
    data = splits.train
    assert data.x.shape == (2 + 3 + 4, 3, 64, 64) and data.num_classes == 3
    assert data.class_names == ("Apple___healthy", "Corn___rust", "Tomato___Late_blight")
    assert np.bincount(data.y.numpy()).tolist() == [2, 4, 3]
    assert float(data.x.min()) >= 0 and float(data.x.max()) <= 1


def test_bad_images_and_missing_tree(tmp_path):
    write_plant_tree(tmp_path)
    (tmp_path / "Corn___rust" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DripDataError, match=r"broken\.jpg: not a readable image"):
        load_dataset("plant-village", tmp_path)
    with pytest.raises(DripDataError, match="PlantVillage"):
        load_dataset("plant-village", tmp_path / "absent")


def test_release_layout_wrapper_folder_and_background_class(tmp_path):
    release = tmp_path / "Plant_leave_diseases_dataset_without_augmentation"
    write_plant_tree(release, classes=("Apple___healthy", "Background_without_leaves", "Corn___rust"))
    data = load_dataset("plant-village", tmp_path).train
    assert data.class_names == ("Apple___healthy", "Corn___rust") and data.num_classes == 2
