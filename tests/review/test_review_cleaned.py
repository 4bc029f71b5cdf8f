"""A cleaned dataset from decisions: .npz round trip, relabel manifest, folder copy."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dropinf.data import load_data
from dropinf.errors import ConfigError
from dropinf.models import TrainRecipe, train_model
from dropinf.review import (
    cleaned_npz_bytes,
    copy_cleaned_folder,
    decide,
    relabel_manifest,
)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits:noise=0.1,seed=0")


def test_cleaned_npz_loads_back_with_fixes_applied_and_the_test_split_kept(
    digits, tmp_path: Path
) -> None:
    decisions = {0: decide("remove"), 5: decide("relabel", 3), 7: decide("keep")}
    path = tmp_path / "cleaned.npz"
    path.write_bytes(cleaned_npz_bytes(digits, decisions))
    cleaned = load_data(str(path))
    assert len(cleaned.train) == len(digits.train) - 1
    assert int(cleaned.train.labels[4]) == 3, "train #5 is row 4 once #0 is dropped"
    np.testing.assert_array_equal(cleaned.train.inputs.numpy(), digits.train.inputs[1:].numpy())
    np.testing.assert_array_equal(cleaned.test.labels.numpy(), digits.test.labels.numpy())
    np.testing.assert_array_equal(cleaned.test.inputs.numpy(), digits.test.inputs.numpy())
    assert cleaned.class_names == digits.class_names


def test_cleaned_npz_trains(digits, tmp_path: Path) -> None:
    path = tmp_path / "cleaned.npz"
    path.write_bytes(cleaned_npz_bytes(digits, {1: decide("remove")}))
    recipe = TrainRecipe(arch="mlp", arch_args={"hidden_sizes": [32]}, epochs=3, lr=1e-2)
    trained = train_model(recipe, load_data(str(path)), device="cpu", progress=False)
    assert trained.test_accuracy > 0.3, "well above chance (0.1)"


def write_folder(root: Path) -> None:
    for label, name in enumerate(["cat", "dog"]):
        for split in ("train", "test"):
            (root / split / name).mkdir(parents=True)
            for index in range(4):
                pixels = np.full((4, 4), 40 * label + index, dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{index}.png")


def test_folder_manifest_and_copy_leave_the_source_alone(tmp_path: Path) -> None:
    source = tmp_path / "pets"
    write_folder(source)
    before = sorted(p.relative_to(source).as_posix() for p in source.rglob("*"))
    bundle = load_data(str(source))
    relabelled = bundle.train_ids.index("train/cat/1.png")
    removed = bundle.train_ids.index("train/dog/2.png")
    decisions = {relabelled: decide("relabel", 1), removed: decide("remove"), 0: decide("keep")}
    rows = list(csv.reader(io.StringIO(relabel_manifest(bundle, decisions).decode())))
    assert rows == [
        ["path", "old_label", "new_label", "action"],
        ["train/cat/1.png", "cat", "dog", "relabel"],
        ["train/dog/2.png", "dog", "", "remove"],
    ]
    target = copy_cleaned_folder(bundle, decisions, tmp_path / "exports")
    assert (target / "train/dog/1.png").is_file() and (
        target / "train/dog/1.from-cat.png"
    ).is_file()
    assert not (target / "train/cat/1.png").exists() and not (target / "train/dog/2.png").exists()
    assert len(list((target / "test").rglob("*.png"))) == 8
    assert sorted(p.relative_to(source).as_posix() for p in source.rglob("*")) == before
    assert copy_cleaned_folder(bundle, decisions, tmp_path / "exports") == target, "reused"
    copied = load_data(str(target))
    assert len(copied.train) == len(bundle.train) - 1
    assert sum(copied.train.labels.numpy() == 1) == 4 + 1 - 1


def test_data_without_paths_has_no_manifest(digits) -> None:
    with pytest.raises(ConfigError, match="names none"):
        relabel_manifest(digits, {0: decide("remove")})
