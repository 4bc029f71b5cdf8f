"""Datasets: the embedded digits, label noise with ground truth, and every loader (incl. broken)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dropinf.data import (
    CIFAR10_CLASS_NAMES,
    DIGITS_FLIP_PAIRS,
    inject_label_noise,
    load_data,
    parse_spec,
    safe_unpickle,
)
from dropinf.errors import ConfigError, DatasetError

# ---------------------------------------------------------------- digits


def test_digits_split_sizes_shapes_and_range(digits_bundle):
    assert (len(digits_bundle.train), len(digits_bundle.test)) == (1437, 360)
    assert digits_bundle.input_shape == (1, 8, 8)
    assert digits_bundle.train.inputs.dtype == torch.float32
    assert digits_bundle.train.labels.dtype == torch.int64
    assert digits_bundle.train.inputs.min() == 0.0 and digits_bundle.train.inputs.max() == 1.0
    assert digits_bundle.class_names == [str(d) for d in range(10)]
    assert digits_bundle.noisy_mask is None and digits_bundle.clean_labels is None


def test_digits_split_is_stratified_and_fixed(digits_bundle):
    test_counts = np.bincount(digits_bundle.test.labels.numpy(), minlength=10)
    assert test_counts.min() >= 35 and test_counts.max() <= 37
    again = load_data("digits")
    assert again.fingerprint == digits_bundle.fingerprint
    assert torch.equal(again.test.inputs, digits_bundle.test.inputs)


def test_split_yields_input_label_pairs(digits_bundle):
    inputs, label = digits_bundle.train[5]
    assert inputs.shape == (1, 8, 8) and label.ndim == 0 and label.dtype == torch.int64


def test_thumbnail_is_uint8_image(digits_bundle):
    thumb = digits_bundle.thumbnail("test", 3)
    assert thumb.dtype == np.uint8 and thumb.shape == (8, 8)
    expected = np.rint(digits_bundle.test.inputs[3, 0].numpy() * 255).astype(np.uint8)
    assert np.array_equal(thumb, expected)
    with pytest.raises(IndexError):
        digits_bundle.thumbnail("train", 1437)
    with pytest.raises(DatasetError, match="'train' or 'test'"):
        digits_bundle.thumbnail("val", 0)


def test_spec_parsing():
    assert parse_spec("digits") == ("digits", {})
    assert parse_spec("/d/x.npz:noise=0.2,seed=3") == ("/d/x.npz", {"noise": "0.2", "seed": "3"})
    with pytest.raises(DatasetError, match="expected key=value with key one of"):
        load_data("digits:nois=0.1")
    with pytest.raises(DatasetError, match="expected a number"):
        load_data("digits:noise=lots")
    with pytest.raises(DatasetError, match="data not found"):
        load_data("/no/such/place")
    with pytest.raises(DatasetError, match="empty data spec"):
        load_data("  ")


# ---------------------------------------------------------------- label noise


def test_symmetric_noise_statistics():
    labels = np.random.default_rng(0).integers(0, 10, size=20_000)
    noisy, mask = inject_label_noise(labels, 10, rate=0.1, seed=1)
    assert mask.sum() == 2000  # exactly round(rate * n)
    assert np.array_equal(mask, noisy != labels)  # never flipped to the same class
    assert noisy.min() >= 0 and noisy.max() <= 9
    targets = np.bincount(noisy[mask], minlength=10) / mask.sum()
    assert np.all(np.abs(targets - 0.1) < 0.03)  # flips spread over the other classes
    for source in range(10):
        offsets = (noisy[mask & (labels == source)] - source) % 10
        assert set(offsets.tolist()) == set(range(1, 10))


def test_noise_is_seeded():
    labels = np.arange(1000) % 10
    first = inject_label_noise(labels, 10, 0.2, seed=5)
    again = inject_label_noise(labels, 10, 0.2, seed=5)
    other = inject_label_noise(labels, 10, 0.2, seed=6)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])


def test_class_conditional_noise_flips_only_within_pairs():
    labels = np.arange(3000) % 10
    pairs = [(1, 7), (3, 8)]
    noisy, mask = inject_label_noise(
        labels, 10, 0.3, seed=0, kind="class_conditional", flip_pairs=pairs
    )
    eligible = np.isin(labels, [1, 7, 3, 8])
    assert mask.sum() == round(0.3 * eligible.sum())
    assert not mask[~eligible].any()
    partner = {1: 7, 7: 1, 3: 8, 8: 3}
    assert all(noisy[i] == partner[labels[i]] for i in np.flatnonzero(mask))
    assert np.array_equal(mask, noisy != labels)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 1.5}, "noise rate must be a number in"),
        ({"kind": "adversarial"}, "noise kind must be one of"),
        ({"kind": "class_conditional", "flip_pairs": [(2, 2)]}, "flips a class into itself"),
        ({"kind": "class_conditional", "flip_pairs": [(1, 7), (7, 3)]}, "more than one flip pair"),
        ({"kind": "class_conditional", "flip_pairs": [(1, 12)]}, r"expected classes in 0\.\.9"),
    ],
)
def test_noise_argument_errors(kwargs, message):
    arguments = {"rate": 0.1, "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=message):
        inject_label_noise(np.arange(100) % 10, 10, **arguments)


def test_noisy_bundle_keeps_ground_truth(digits_bundle, noisy_digits_bundle):
    noisy = noisy_digits_bundle
    assert noisy.noisy_mask.sum() == round(0.1 * 1437)
    assert np.array_equal(noisy.clean_labels, digits_bundle.train.labels.numpy())
    assert np.array_equal(noisy.noisy_mask, noisy.train.labels.numpy() != noisy.clean_labels)
    assert torch.equal(noisy.test.labels, digits_bundle.test.labels)  # test split never noisy
    assert noisy.fingerprint != digits_bundle.fingerprint


def test_class_conditional_spec_uses_digit_pairs(digits_bundle):
    bundle = load_data("digits:noise=0.2,kind=class_conditional,seed=1")
    flipped = np.flatnonzero(bundle.noisy_mask)
    partner = dict(DIGITS_FLIP_PAIRS) | {b: a for a, b in DIGITS_FLIP_PAIRS}
    given = bundle.train.labels.numpy()
    assert all(given[i] == partner[bundle.clean_labels[i]] for i in flipped)
    custom = load_data("digits:noise=0.5,kind=class_conditional,pairs=1-7,seed=0")
    assert set(np.unique(custom.clean_labels[custom.noisy_mask])) == {1, 7}


def test_with_fixes_removes_relabels_and_carries_truth(noisy_digits_bundle):
    bundle = noisy_digits_bundle
    flipped = np.flatnonzero(bundle.noisy_mask)
    relabel_index, removed = int(flipped[0]), [int(flipped[1]), 0]
    fixed = bundle.with_fixes(removed, {relabel_index: int(bundle.clean_labels[relabel_index])})
    assert len(fixed.train) == len(bundle.train) - 2
    assert fixed.noisy_mask.sum() == bundle.noisy_mask.sum() - 1  # one removed; relabelled stays
    shifted = relabel_index - sum(i < relabel_index for i in removed)
    assert fixed.train.labels[shifted] == bundle.clean_labels[relabel_index]
    assert len(fixed.test) == len(bundle.test) and fixed.fingerprint != bundle.fingerprint
    assert len(bundle.train) == 1437  # the original is untouched
    with pytest.raises(DatasetError, match=r"out of range: expected 0\.\.1436"):
        bundle.with_fixes([5000], {})
    with pytest.raises(DatasetError, match=r"expected a label in 0\.\.9"):
        bundle.with_fixes([], {3: 10})
    with pytest.raises(DatasetError, match="both removed and relabelled"):
        bundle.with_fixes([3], {3: 1})


# ---------------------------------------------------------------- .npz


def _save_npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def test_npz_images_with_test_split(tmp_path):
    rng = np.random.default_rng(0)
    spec = _save_npz(
        tmp_path / "d.npz",
        x=rng.integers(0, 256, (30, 6, 6), dtype=np.uint8),
        y=np.arange(30) % 3,
        x_test=rng.integers(0, 256, (9, 6, 6), dtype=np.uint8),
        y_test=np.arange(9) % 3,
        class_names=np.array(["cat", "dog", "eel"]),
    )
    bundle = load_data(spec)
    assert bundle.input_shape == (1, 6, 6) and (len(bundle.train), len(bundle.test)) == (30, 9)
    assert bundle.class_names == ["cat", "dog", "eel"]
    assert bundle.train.inputs.min() >= 0.0 and bundle.train.inputs.max() <= 1.0  # uint8 scaled
    assert bundle.thumbnail("train", 0).shape == (6, 6)


def test_npz_vectors_split_by_seed_and_noise(tmp_path):
    x = np.random.default_rng(1).normal(size=(100, 5)).astype(np.float32)
    spec = _save_npz(tmp_path / "v.npz", x=x, y=np.arange(100) % 4)
    bundle = load_data(spec + ":noise=0.1,seed=2")
    assert (len(bundle.train), len(bundle.test)) == (80, 20) and bundle.input_shape == (5,)
    assert bundle.noisy_mask.sum() == 8 and bundle.class_names == ["0", "1", "2", "3"]
    assert bundle.thumbnail("train", 0).shape == (1, 5)
    assert load_data(spec).fingerprint == load_data(spec).fingerprint
    assert load_data(spec + ":split_seed=1").fingerprint != load_data(spec).fingerprint


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.full((10, 4), np.nan), "y": np.arange(10) % 2}, "hold NaN or infinity"),
        ({"x": np.full((10, 4), np.inf), "y": np.arange(10) % 2}, "hold NaN or infinity"),
        ({"x": np.zeros(10), "y": np.arange(10) % 2}, r"expected \(N, C, H, W\)"),
        ({"x": np.zeros((10, 4)), "y": np.zeros((10, 2), int)}, r"expected \(10,\), one per input"),
        ({"x": np.zeros((10, 4)), "y": np.arange(9) % 2}, r"expected \(10,\), one per input"),
        ({"x": np.zeros((10, 4)), "y": np.linspace(0, 1, 10)}, "expected integers"),
        ({"x": np.zeros((10, 4)), "y": np.arange(10) - 1}, "is negative"),
        ({"x": np.zeros((0, 4)), "y": np.zeros(0, int)}, "no examples"),
        ({"x": np.zeros((10, 4)), "y": np.zeros(10, int)}, "one class only"),
        ({"x": np.zeros((10, 4))}, "no array 'y'"),
        (
            {"x": np.zeros((10, 4)), "y": np.arange(10) % 3, "class_names": np.array(["a", "b"])},
            r"label 2 out of range; expected labels in 0\.\.1 for 2 class names",
        ),
        (
            {"x": np.zeros((6, 4)), "y": np.arange(6) % 2, "x_test": np.zeros((2, 5))},
            "x_test and y_test must come together",
        ),
        (
            {
                "x": np.zeros((6, 4)),
                "y": np.arange(6) % 2,
                "x_test": np.zeros((2, 5)),
                "y_test": np.arange(2),
            },
            r"test examples have shape \(5,\), expected the training shape \(4,\)",
        ),
    ],
)
def test_npz_validation_errors(tmp_path, arrays, message):
    with pytest.raises(DatasetError, match=message):
        load_data(_save_npz(tmp_path / "bad.npz", **arrays))


def test_npz_corrupt_and_object_arrays_refused(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(DatasetError, match=r"not a readable \.npz archive"):
        load_data(str(garbage))
    spec = _save_npz(tmp_path / "obj.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.arange(4))
    with pytest.raises(DatasetError, match="object arrays"):
        load_data(spec)
    other = tmp_path / "data.csv"
    other.write_text("1,2\n")
    with pytest.raises(DatasetError, match=r"expected a \.npz file"):
        load_data(str(other))


# ---------------------------------------------------------------- ImageFolder


def _write_images(folder: Path, count: int, size=(5, 5), mode="L", seed=0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = () if mode == "L" else (3,)
    for i in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], *channels), dtype=np.uint8)
        Image.fromarray(pixels, mode=mode).save(folder / f"img{i}.png")


def test_image_folder_with_train_and_test(tmp_path):
    for split, count in (("train", 4), ("test", 2)):
        for name in ("bird", "ant"):
            _write_images(tmp_path / split / name, count)
    (tmp_path / "README.txt").write_text("root-level files are ignored")
    (tmp_path / "train" / "ant" / ".DS_Store").write_bytes(b"hidden files are skipped")
    bundle = load_data(str(tmp_path))
    assert bundle.class_names == ["ant", "bird"] and bundle.input_shape == (1, 5, 5)
    assert (len(bundle.train), len(bundle.test)) == (8, 4)
    assert bundle.train.labels.tolist() == [0] * 4 + [1] * 4
    first = np.asarray(Image.open(tmp_path / "train" / "ant" / "img0.png"))
    assert np.array_equal(bundle.thumbnail("train", 0), first)


def test_image_folder_rgb_split_by_seed(tmp_path):
    for i, name in enumerate(("a", "b")):
        _write_images(tmp_path / name, 10, size=(4, 3), mode="RGB", seed=i)
    bundle = load_data(str(tmp_path))
    assert bundle.input_shape == (3, 3, 4) and (len(bundle.train), len(bundle.test)) == (16, 4)
    assert bundle.thumbnail("test", 0).shape == (3, 4, 3)


def test_image_folder_errors(tmp_path):
    _write_images(tmp_path / "a", 3)
    _write_images(tmp_path / "b", 3)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match=r"non-image entry in class folder: .*notes\.txt"):
        load_data(str(tmp_path))
    (tmp_path / "a" / "notes.txt").unlink()
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"unreadable image .*broken\.png"):
        load_data(str(tmp_path))
    (tmp_path / "a" / "broken.png").unlink()
    Image.new("L", (7, 7)).save(tmp_path / "b" / "big.png")
    with pytest.raises(DatasetError, match="is 7×7; expected 5×5"):
        load_data(str(tmp_path))
    (tmp_path / "b" / "big.png").unlink()
    (tmp_path / "c").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        load_data(str(tmp_path))


def test_empty_image_folder(tmp_path):
    with pytest.raises(DatasetError, match="no class folders"):
        load_data(str(tmp_path))


# ---------------------------------------------------------------- CIFAR-10


def _write_cifar_batch(path: Path, count: int, seed: int, protocol: int = 2) -> None:
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"testing batch",
        b"labels": [int(v) for v in rng.integers(0, 10, count)],
        b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
        b"filenames": [f"img{i}.png".encode() for i in range(count)],
    }
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def _write_cifar(folder: Path, protocol: int = 2) -> Path:
    folder.mkdir()
    for i in (1, 2):
        _write_cifar_batch(folder / f"data_batch_{i}", 6, seed=i, protocol=protocol)
    _write_cifar_batch(folder / "test_batch", 4, seed=9, protocol=protocol)
    meta = {b"label_names": [name.encode() for name in CIFAR10_CLASS_NAMES]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return folder


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_load(tmp_path, protocol):
    folder = _write_cifar(tmp_path / "cifar-10-batches-py", protocol)
    bundle = load_data(str(folder))
    assert bundle.input_shape == (3, 32, 32) and (len(bundle.train), len(bundle.test)) == (12, 4)
    assert bundle.class_names == list(CIFAR10_CLASS_NAMES)
    raw = pickle.loads((folder / "data_batch_1").read_bytes())
    assert bundle.train.labels[:6].tolist() == raw[b"labels"]
    pixel = raw[b"data"][0].reshape(3, 32, 32)[:, 0, 0] / 255.0
    assert torch.allclose(bundle.train.inputs[0, :, 0, 0], torch.tensor(pixel, dtype=torch.float32))
    assert bundle.thumbnail("train", 0).shape == (32, 32, 3)


class _CreatesFile:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_cifar_malicious_pickle_is_refused_without_running(tmp_path):
    folder = _write_cifar(tmp_path / "cifar")
    marker = tmp_path / "pwned"
    payload = {b"data": _CreatesFile(marker), b"labels": [0]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DatasetError, match=r"refused to unpickle (posix|os)\.system"):
        load_data(str(folder))
    assert not marker.exists()


def test_cifar_malformed_batches(tmp_path):
    folder = _write_cifar(tmp_path / "cifar")
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})
    )
    with pytest.raises(DatasetError, match=r"expected a uint8 \(N, 3072\) array"):
        load_data(str(folder))
    (folder / "test_batch").write_bytes(b"\x80\x02 truncated")
    with pytest.raises(DatasetError, match="corrupt pickle"):
        load_data(str(folder))
    (folder / "test_batch").unlink()
    with pytest.raises(DatasetError, match="expected CIFAR-10 python batches"):
        load_data(str(folder))


def test_safe_unpickle_allows_plain_containers():
    value = {b"k": [1, "two", b"three", 4.0], b"a": np.arange(3)}
    loaded = safe_unpickle(pickle.dumps(value, protocol=2))
    assert loaded[b"k"] == [1, "two", b"three", 4.0] and np.array_equal(loaded[b"a"], np.arange(3))


# ---------------------------------------------------------------- pictures from outside


def picture_bytes(pixels: np.ndarray, format: str = "PNG") -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def test_inputs_from_image_matches_the_dataset_format(digits_bundle):
    thumbnail = digits_bundle.thumbnail("test", 3)  # uint8 (8, 8)
    inputs = digits_bundle.inputs_from_image(picture_bytes(thumbnail))
    assert inputs.shape == (1, *digits_bundle.input_shape) and inputs.dtype == torch.float32
    assert torch.allclose(inputs[0], digits_bundle.test.inputs[3], atol=1 / 255)


def test_inputs_from_image_resizes_and_converts_colour(digits_bundle):
    colour = np.zeros((32, 24, 3), dtype=np.uint8)
    colour[..., 0] = 255
    inputs = digits_bundle.inputs_from_image(picture_bytes(colour, "JPEG"))
    assert inputs.shape == (1, 1, 8, 8) and 0.0 < float(inputs.mean()) < 1.0


def test_inputs_from_image_rejects_unreadable_files(digits_bundle):
    with pytest.raises(DatasetError, match="expected a picture file"):
        digits_bundle.inputs_from_image(b"not a picture")
    truncated = picture_bytes(np.zeros((64, 64), dtype=np.uint8))[:60]
    with pytest.raises(DatasetError, match="expected a picture file"):
        digits_bundle.inputs_from_image(truncated)


def test_inputs_from_image_needs_an_image_dataset(digits_bundle):
    from dataclasses import replace

    vectors = replace(digits_bundle, input_shape=(64,))
    with pytest.raises(DatasetError, match="image dataset"):
        vectors.inputs_from_image(picture_bytes(np.zeros((8, 8), dtype=np.uint8)))


def test_class_name(digits_bundle):
    assert digits_bundle.class_name(3) == str(digits_bundle.class_names[3])
    assert digits_bundle.class_name(99) == "99" and digits_bundle.class_name(-1) == "-1"


@pytest.mark.parametrize(
    "spec", ["digits:split_seed=-1", "digits:noise=0.1,noise=0.2", "digits:seed=1.5,noise=0.1"]
)
def test_spec_option_values_are_checked_even_where_unused(spec):
    with pytest.raises((ConfigError, DatasetError)):
        load_data(spec)
