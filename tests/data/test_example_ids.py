"""Example ids: image folders keep their relative paths, .npz files may name their examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dropinf.data import load_data
from dropinf.errors import DatasetError


def _write_images(folder: Path, names: list[str], seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8), mode="L").save(folder / name)


def test_image_folder_ids_are_relative_paths_in_example_order(tmp_path):
    for split in ("train", "test"):
        _write_images(tmp_path / split / "cat", ["b.png", "a.png"])
        _write_images(tmp_path / split / "ant", ["z.png"], seed=1)
    bundle = load_data(str(tmp_path))
    assert bundle.train_ids == ("train/ant/z.png", "train/cat/a.png", "train/cat/b.png")
    assert bundle.test_ids == ("test/ant/z.png", "test/cat/a.png", "test/cat/b.png")
    assert bundle.example_id("train", 1) == "train/cat/a.png"
    on_disk = np.asarray(Image.open(tmp_path / bundle.example_id("train", 2)))
    assert np.array_equal(bundle.thumbnail("train", 2), on_disk)


def test_image_folder_split_by_seed_keeps_each_path_with_its_image(tmp_path):
    for index, name in enumerate(("a", "b")):
        _write_images(tmp_path / name, [f"{i}.png" for i in range(5)], seed=index)
    bundle = load_data(f"{tmp_path}:test_fraction=0.4,noise=0.2")
    assert len(bundle.train_ids) == len(bundle.train) and len(bundle.test_ids) == len(bundle.test)
    assert sorted(bundle.train_ids + bundle.test_ids) == sorted(
        f"{c}/{i}.png" for c in "ab" for i in range(5)
    )
    for split in ("train", "test"):
        for index in range(len(bundle.split(split))):
            on_disk = np.asarray(Image.open(tmp_path / bundle.example_id(split, index)))
            assert np.array_equal(bundle.thumbnail(split, index), on_disk)


def test_npz_ids_follow_examples_and_fixes(tmp_path):
    x, y = np.random.default_rng(0).random((6, 3)).astype(np.float32), np.array([0, 1] * 3)
    ids = np.array([f"row-{i}" for i in range(6)])
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y, ids=ids, x_test=x[:2], y_test=y[:2], ids_test=np.array(["t0", "t1"]))
    bundle = load_data(str(path))
    assert bundle.train_ids == tuple(ids) and bundle.test_ids == ("t0", "t1")
    fixed = bundle.with_fixes([1, 4], {0: 1})
    assert fixed.train_ids == ("row-0", "row-2", "row-3", "row-5")
    assert fixed.example_id("train", 1) == "row-2"


def test_datasets_without_ids_have_none(tmp_path, digits_bundle):
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 2), np.float32), y=np.arange(10) % 2)
    bundle = load_data(str(tmp_path / "d.npz"))
    assert bundle.train_ids is None and bundle.example_id("train", 0) is None
    assert digits_bundle.test_ids is None and digits_bundle.example_id("test", 3) is None


def test_ids_enter_the_fingerprint_only_when_present(tmp_path, digits_bundle):
    x, y = np.zeros((10, 2), np.float32), np.arange(10) % 2
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    np.savez(tmp_path / "a.npz", x=x, y=y, ids=np.array([f"a{i}" for i in range(10)]))
    np.savez(tmp_path / "b.npz", x=x, y=y, ids=np.array([f"b{i}" for i in range(10)]))
    plain, named_a, named_b = (load_data(str(tmp_path / f"{n}.npz")) for n in ("plain", "a", "b"))
    assert len({plain.fingerprint, named_a.fingerprint, named_b.fingerprint}) == 3
    assert load_data(str(tmp_path / "a.npz")).fingerprint == named_a.fingerprint
    assert digits_bundle.fingerprint == load_data("digits").fingerprint


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"ids": np.array(["a", "b"])}, r"ids has shape \(2,\); expected \(4,\), one per example"),
        ({"ids": np.arange(4)}, r"ids has dtype int64; expected strings"),
        ({"ids": np.array([["a"], ["b"], ["c"], ["d"]])}, r"expected \(4,\)"),
        ({"ids": np.array(["a", "b\x00c", "c", "d"])}, r"ids\[1\] holds a NUL character"),
        ({"ids_test": np.array(["a", "b"])}, r"ids_test needs x_test and y_test"),
        (
            {"x_test": np.zeros((2, 3)), "y_test": np.array([0, 1]), "ids_test": np.array(["a"])},
            r"ids_test has shape \(1,\); expected \(2,\)",
        ),
    ],
)
def test_bad_npz_ids_are_refused(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((4, 3), np.float32), y=np.array([0, 1, 0, 1]), **arrays)
    with pytest.raises(DatasetError, match=message):
        load_data(str(path))


def test_npz_signals_keep_channels_and_length(tmp_path):
    x = np.random.default_rng(0).random((8, 2, 16)).astype(np.float32)  # (N, C, L)
    np.savez(tmp_path / "s.npz", x=x, y=np.arange(8) % 2, layout=np.array("signals"))
    bundle = load_data(f"{tmp_path / 's.npz'}:test_fraction=0.25")
    assert bundle.input_shape == (2, 16) and bundle.train.inputs.shape == (6, 2, 16)
    assert bundle.thumbnail("train", 0).shape == (2, 16)
    np.savez(tmp_path / "i.npz", x=x, y=np.arange(8) % 2)
    assert load_data(str(tmp_path / "i.npz")).input_shape == (1, 2, 16)  # one-channel images


@pytest.mark.parametrize(
    ("layout", "x", "message"),
    [
        ("waves", np.zeros((4, 2, 3)), r"layout 'waves'; expected 'images' or 'signals'"),
        ("signals", np.zeros((4, 6)), r"layout 'signals' needs x of shape \(N, C, L\)"),
    ],
)
def test_bad_npz_layout_is_refused(tmp_path, layout, x, message):
    np.savez(tmp_path / "b.npz", x=x, y=np.array([0, 1, 0, 1]), layout=np.array(layout))
    with pytest.raises(DatasetError, match=message):
        load_data(str(tmp_path / "b.npz"))
