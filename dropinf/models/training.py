"""Training: seeded recipes, models for an analyst's data, evaluation and the demo checkpoint.

Training is seeded and deterministic on the CPU for a fixed seed: the model is initialised after
``torch.manual_seed(seed)`` and batches are drawn by a ``torch.Generator`` seeded with the same
seed (an in-memory equivalent of a DataLoader with a seeded generator, without its per-item
overhead). The optimiser is AdamW.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional
from tqdm.auto import tqdm

from dropinf import paths
from dropinf.data import DEMO_DATA_SPEC, DatasetBundle, Split, load_data
from dropinf.errors import CheckpointError, ConfigError
from dropinf.models.checkpoints import (
    check_model_fits_data,
    load_checkpoint,
    save_checkpoint,
    sidecar_path,
)
from dropinf.models.registry import arch_args_for_data, build_model

EVAL_BATCH_SIZE = 512


@dataclass(frozen=True)
class TrainRecipe:
    """How a model is trained.

    Attributes:
        arch: Architecture name (see :func:`dropinf.models.architectures`).
        arch_args: Architecture arguments; those left out are filled from the dataset
            (input shape, class count) by :func:`dropinf.models.arch_args_for_data`.
        epochs: Passes over the training split.
        lr: AdamW learning rate.
        batch_size: Examples per step.
        weight_decay: AdamW weight decay.
        seed: Seed of the initialisation and the batch order.
    """

    arch: str = "small_cnn"
    arch_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 12
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.arch, str) or not self.arch:
            raise ConfigError(f"arch must be an architecture name, got {self.arch!r}")
        if not isinstance(self.arch_args, dict):
            raise ConfigError(
                f"arch_args must be a dict of argument names to values, got {self.arch_args!r}"
            )
        for name, low in (("epochs", 1), ("batch_size", 1), ("seed", 0)):
            if not (_is_int(getattr(self, name)) and getattr(self, name) >= low):
                raise ConfigError(
                    f"{name} must be an integer >= {low}, got {getattr(self, name)!r}"
                )
        if not (_is_finite_number(self.lr) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if not (_is_finite_number(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")

    def to_dict(self) -> dict[str, Any]:
        """The recipe as JSON-serialisable values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainRecipe:
        """Rebuild a recipe saved by :meth:`to_dict`.

        Raises:
            ConfigError: Unknown keys or bad values.
        """
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown train recipe keys {unknown}")
        return cls(**values)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


DEMO_RECIPE = TrainRecipe(arch="small_cnn", epochs=12, lr=1e-3, batch_size=64, seed=0)


@dataclass
class TrainResult:
    """A trained model and how well it does.

    Attributes:
        model: The trained model, in eval mode.
        arch: Architecture name.
        arch_args: The full architecture arguments used (recipe's merged with the data's).
        train_accuracy: Accuracy on the training split's given (possibly noisy) labels.
        test_accuracy: Accuracy on the test split.
        test_loss: Mean cross-entropy on the test split.
        seconds: Wall-clock training time.
    """

    model: nn.Module
    arch: str
    arch_args: dict[str, Any]
    train_accuracy: float
    test_accuracy: float
    test_loss: float
    seconds: float

    def metrics(self) -> dict[str, float]:
        """Accuracies and loss as a dict, for checkpoint provenance.

        The training time is left out so that retraining with the same seed writes a
        byte-identical checkpoint (its sha256 keys the runs computed from it).
        """
        return {
            "train_accuracy": self.train_accuracy,
            "test_accuracy": self.test_accuracy,
            "test_loss": self.test_loss,
        }


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The given device, else CUDA when available, else the CPU.

    Raises:
        ConfigError: The name is not ``cpu``, ``cuda`` or ``cuda:N``, or names a CUDA device
            this machine does not have.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N'; got {device!r}")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA devices; "
            "use 'cpu'"
        )
    return resolved


def train_model(
    recipe: TrainRecipe,
    bundle: DatasetBundle,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train a registry model on a dataset's training split.

    Args:
        recipe: Architecture and optimisation settings.
        bundle: The dataset (its training labels, noisy or fixed, are the targets).
        device: ``cpu``, ``cuda`` or None for CUDA when available.
        progress: Show a tqdm bar over epochs (on stderr).

    Returns:
        The model with train/test accuracy and test loss.

    Raises:
        DataModelMismatchError: The architecture does not fit the data.
    """
    started = time.perf_counter()
    device = resolve_device(device)
    arch_args = {**arch_args_for_data(recipe.arch, bundle.input_shape, bundle.num_classes)}
    arch_args.update(recipe.arch_args)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.arch, **arch_args).to(device)
    check_model_fits_data(model, bundle)
    _fit(model, bundle.train, recipe, device, progress)
    model.eval()
    train_accuracy, _ = evaluate(model, bundle.train, device)
    test_accuracy, test_loss = evaluate(model, bundle.test, device)
    return TrainResult(
        model=model,
        arch=recipe.arch,
        arch_args=arch_args,
        train_accuracy=train_accuracy,
        test_accuracy=test_accuracy,
        test_loss=test_loss,
        seconds=time.perf_counter() - started,
    )


def _fit(
    model: nn.Module, train: Split, recipe: TrainRecipe, device: torch.device, progress: bool
) -> None:
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    generator = torch.Generator().manual_seed(recipe.seed)
    model.train()
    epochs = tqdm(range(recipe.epochs), desc=f"train {recipe.arch}", disable=not progress)
    for _ in epochs:
        total_loss = 0.0
        for inputs, labels in iterate_batches(train, recipe.batch_size, generator):
            inputs, labels = inputs.to(device), labels.to(device)
            loss = functional.cross_entropy(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(labels)
        epochs.set_postfix(loss=f"{total_loss / len(train):.4f}")


def iterate_batches(
    split: Split, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of a split, shuffled by ``generator`` (in order when it is None).

    Args:
        split: The split.
        batch_size: Examples per batch (the last batch may be smaller).
        generator: Seeded generator for the shuffle, or None for the stored order.

    Yields:
        ``(inputs, labels)`` pairs, (B, ...) float32 and (B,) int64.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, batch_size):
        index = order[start : start + batch_size]
        yield split.inputs[index], split.labels[index]


@torch.no_grad()
def evaluate(
    model: nn.Module, split: Split, device: str | torch.device | None = None
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of a model on a split.

    Args:
        model: The classifier (put in eval mode by the caller).
        split: The examples and labels to score.
        device: Where to run; default the model's device.

    Returns:
        ``(accuracy, mean_loss)``.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    correct, total_loss = 0, 0.0
    for inputs, labels in iterate_batches(split, EVAL_BATCH_SIZE):
        inputs, labels = inputs.to(device), labels.to(device)
        logits = model(inputs)  # (B, C)
        total_loss += functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == labels).sum())
    return correct / len(split), total_loss / len(split)


def save_trained(
    path: str | Path, result: TrainResult, recipe: TrainRecipe, bundle: DatasetBundle
) -> Path:
    """Save a trained model as a checkpoint with its recipe, metrics and data provenance.

    Args:
        path: ``.safetensors`` or ``.pt`` destination (a ``.json`` sidecar is written next to it).
        result: What :func:`train_model` returned.
        recipe: The recipe it was trained with.
        bundle: The data it was trained on.

    Returns:
        The checkpoint path.
    """
    extra = {
        "recipe": recipe.to_dict(),
        "metrics": result.metrics(),
        "data_spec": bundle.spec,
        "data_fingerprint": bundle.fingerprint,
    }
    return save_checkpoint(path, result.model, result.arch, result.arch_args, extra=extra)


def demo_checkpoint_path() -> Path:
    """Where the demo checkpoint lives; the name changes with the demo recipe and data spec."""
    recipe = {"recipe": DEMO_RECIPE.to_dict(), "data": DEMO_DATA_SPEC, "threads": 1}
    key = json.dumps(recipe, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return paths.demo_dir() / f"demo-small_cnn-digits-{digest}.safetensors"


def ensure_demo_checkpoint(progress: bool = True) -> Path:
    """The demo checkpoint (small_cnn on digits with 10% symmetric noise), trained on first use.

    Training is deterministic (one CPU thread, fixed seed), so a deleted checkpoint comes back
    byte-identical. The checkpoint is written atomically after its sidecar; a checkpoint is taken
    as complete only when both exist and it loads.

    Args:
        progress: Show a tqdm bar while training.

    Returns:
        The path of the ``.safetensors`` checkpoint (with ``<path>.json`` next to it).
    """
    path = demo_checkpoint_path()
    if _is_complete_checkpoint(path):
        return path
    bundle = load_data(DEMO_DATA_SPEC)
    with torch_threads(1):
        result = train_model(DEMO_RECIPE, bundle, device="cpu", progress=progress)
    return save_trained(path, result, DEMO_RECIPE, bundle)


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` intra-op CPU threads, restoring the previous count after.

    The demo trains on one thread: float sums then do not depend on the machine's core count, so
    every machine writes the same bytes, and a busy machine does not slow it by oversubscription.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _is_complete_checkpoint(path: Path) -> bool:
    if not (path.is_file() and sidecar_path(path).is_file()):
        return False
    try:
        load_checkpoint(path)
    except CheckpointError:
        return False
    return True
