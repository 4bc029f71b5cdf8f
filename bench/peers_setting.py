"""The settings of the peer benchmark: sizes, the augmented digits data and the one recipe.

Every method of one setting gets the same noisy bundle (digits with 1-pixel shifted copies,
10 % flipped labels) and the same checkpoint, trained with the architecture's one recipe, which
LDS and cleanlab retrain too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from dropinf.data import DatasetBundle, Split, load_data
from dropinf.models import TrainRecipe, arch_args_for_data, train_model

CACHE = Path(__file__).resolve().parent / ".cache"
DAMPING_GRID = (0.01, 0.1, 1.0)
SHIFTS = ((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0))


@dataclass(frozen=True)
class Size:
    """How big one run of the benchmark is.

    Attributes:
        replicas: Copies of each digits image (original + 1-pixel shifts), train and test.
        n_train: Training examples kept (the originals first, then shifted copies).
        n_test: Test examples scored.
        archs: Architectures.
        noise_kinds: Label-noise kinds.
        seeds: Noise seeds.
        lds_subsets: Retrained subsets for LDS (every setting; 0: no LDS).
        epochs: Training epochs of the recipe.
        method_timeout_s: A method still running after this is stopped and reported as such.
        damping_grid: The shared damping ratios every damped method chooses from.
        extra_keep_ratios: More dropinf dropout rows, at these keep ratios (peers keep the k of
            keep 0.25).
        extra_curvature: The curvature kind of those rows (``auto``, as the default row's).
    """

    replicas: int
    n_train: int | None
    n_test: int
    archs: tuple[str, ...]
    noise_kinds: tuple[str, ...]
    seeds: tuple[int, ...]
    lds_subsets: int
    epochs: int
    method_timeout_s: int
    damping_grid: tuple[float, ...] = DAMPING_GRID
    extra_keep_ratios: tuple[float, ...] = ()
    extra_curvature: str = "auto"


FULL = Size(
    3,
    2000,
    1000,
    ("mlp", "small_cnn"),
    ("symmetric", "class_conditional"),
    (0, 1, 2),
    50,
    8,
    240,
)
SMOKE = Size(1, 300, 40, ("mlp",), ("symmetric",), (0,), 6, 5, 120)


# ------------------------------------------------------------------------------------ data


def augmented_digits(replicas: int) -> Path:
    """Write (once) digits with each image repeated as 1-pixel shifts, train and test apart.

    The embedded digits have 1 437 training and 360 test images; shifting each image by one
    pixel (up / down / left / right) gives ``replicas`` distinct copies, so timings are not
    dominated by start-up. Train and test copies come from different originals.
    """
    path = CACHE / f"digits-x{replicas}.npz"
    if path.exists():
        return path
    base = load_data("digits")
    arrays = {}
    for name, split in (("", base.train), ("_test", base.test)):
        images = np.concatenate([_shift(split.inputs.numpy(), *s) for s in SHIFTS[:replicas]])
        arrays["x" + name] = images
        arrays["y" + name] = np.tile(split.labels.numpy(), replicas)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, class_names=np.array(base.class_names), **arrays)
    return path


def _shift(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    shifted = np.roll(images, (dy, dx), axis=(2, 3))
    if dy:
        shifted[:, :, 0 if dy > 0 else -1, :] = 0.0
    if dx:
        shifted[:, :, :, 0 if dx > 0 else -1] = 0.0
    return shifted


def load_setting(size: Size, kind: str, seed: int) -> DatasetBundle:
    """The noisy bundle of one setting (10 % noise), cut to the size's train / test counts."""
    bundle = load_data(f"{augmented_digits(size.replicas)}:noise=0.1,kind={kind},seed={seed}")
    if size.n_train is not None and size.n_train < len(bundle.train):
        bundle = bundle.with_fixes(removals=range(size.n_train, len(bundle.train)), relabels={})
    test = Split(bundle.test.inputs[: size.n_test], bundle.test.labels[: size.n_test])
    return replace(bundle, test=test)


# ---------------------------------------------------------------------------------- training


def make_recipe(arch: str, bundle: DatasetBundle, epochs: int) -> TrainRecipe:
    """The one training recipe of an architecture (used for the checkpoint, LDS and cleanlab)."""
    arch_args = arch_args_for_data(arch, bundle.input_shape, bundle.num_classes)
    return TrainRecipe(
        arch=arch,
        arch_args=arch_args,
        epochs=epochs,
        lr=1e-3,
        batch_size=64,
        weight_decay=1e-4,
        seed=0,
    )


def train(recipe: TrainRecipe, bundle: DatasetBundle) -> torch.nn.Module:
    """Train the recipe on a bundle; the model comes back in eval mode."""
    return train_model(recipe, bundle, progress=False).model.eval()


def fold_trainer(
    recipe: TrainRecipe, bundle: DatasetBundle
) -> Callable[[np.ndarray], torch.nn.Module]:
    """A function training the recipe on the training examples of a boolean mask."""

    def train_on(mask: np.ndarray) -> torch.nn.Module:
        return train(recipe, bundle.with_fixes(np.flatnonzero(~mask).tolist(), {}))

    return train_on
