"""Training: seeded recipes, models for an analyst's data, evaluation and the demo checkpoints.

Training is seeded and deterministic on the CPU for a fixed seed: the model is initialised after
``torch.manual_seed(seed)`` and batches are drawn by a ``torch.Generator`` seeded with the same
seed (an in-memory equivalent of a DataLoader with a seeded generator, without its per-item
overhead). The optimiser is AdamW. A ``CheckpointSchedule`` keeps checkpoints along the way
(log-spaced epochs plus the last), each a normal checkpoint whose metadata names its epoch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional
from tqdm.auto import tqdm

from dropinf.data import DatasetBundle, Split
from dropinf.errors import CheckpointError, ConfigError
from dropinf.models.checkpoints import (
    check_model_fits_data,
    load_checkpoint,
    save_checkpoint,
    sidecar_path,
)
from dropinf.models.registry import arch_args_for_data, build_architecture

EVAL_BATCH_SIZE = 512
EpochCallback = Callable[[int, nn.Module], None]


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
    trust_code: bool | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainResult:
    """Train a registry (or own-code) model on a dataset's training split.

    Args:
        recipe: Architecture and optimisation settings.
        bundle: The dataset (its training labels, noisy or fixed, are the targets).
        device: ``cpu``, ``cuda`` or None for CUDA when available.
        progress: Show a tqdm bar over epochs (on stderr).
        trust_code: The opt-in to import an own-code architecture (None: ``DROPINF_TRUST_CODE``).
        on_epoch: Called as ``on_epoch(epoch, model)`` after each epoch (1-based), e.g. a
            :class:`CheckpointSchedule` or a progress report; it must leave the model as it was.

    Returns:
        The model with train/test accuracy and test loss.

    Raises:
        DataModelMismatchError: The architecture does not fit the data.
    """
    started = time.perf_counter()
    device = resolve_device(device)
    arch_args = full_arch_args(recipe, bundle)
    torch.manual_seed(recipe.seed)
    model = build_architecture(recipe.arch, arch_args, trust_code).to(device)
    check_model_fits_data(model, bundle)
    _fit(model, bundle.train, recipe, device, progress, on_epoch)
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


def full_arch_args(recipe: TrainRecipe, bundle: DatasetBundle) -> dict[str, Any]:
    """The recipe's architecture arguments completed by the data's (input shape, classes)."""
    arch_args = {**arch_args_for_data(recipe.arch, bundle.input_shape, bundle.num_classes)}
    arch_args.update(recipe.arch_args)
    return arch_args


def _fit(
    model: nn.Module,
    train: Split,
    recipe: TrainRecipe,
    device: torch.device,
    progress: bool,
    on_epoch: EpochCallback | None,
) -> None:
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay
    )
    generator = torch.Generator().manual_seed(recipe.seed)
    model.train()
    epochs = tqdm(range(1, recipe.epochs + 1), desc=f"train {recipe.arch}", disable=not progress)
    for epoch in epochs:
        total_loss = 0.0
        for inputs, labels in iterate_batches(train, recipe.batch_size, generator):
            inputs, labels = inputs.to(device), labels.to(device)
            loss = functional.cross_entropy(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(labels)
        epochs.set_postfix(loss=f"{total_loss / len(train):.4f}")
        if on_epoch is not None:
            on_epoch(epoch, model)


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
    path: str | Path,
    result: TrainResult,
    recipe: TrainRecipe,
    bundle: DatasetBundle,
    epoch: int | None = None,
) -> Path:
    """Save a trained model as a checkpoint with its recipe, metrics and data provenance.

    Args:
        path: ``.safetensors`` or ``.pt`` destination (a ``.json`` sidecar is written next to it).
        result: What :func:`train_model` returned (or a model evaluated after ``epoch``).
        recipe: The recipe it was trained with.
        bundle: The data it was trained on.
        epoch: The epoch after which the weights were taken, recorded under ``extra.epoch``
            (checkpoints of a schedule); None for a finished training.

    Returns:
        The checkpoint path.
    """
    extra = {
        "recipe": recipe.to_dict(),
        "metrics": result.metrics(),
        "data_spec": bundle.spec,
        "data_fingerprint": bundle.fingerprint,
    }
    if epoch is not None:
        extra["epoch"] = epoch
    return save_checkpoint(path, result.model, result.arch, result.arch_args, extra=extra)


def checkpoint_epochs(epochs: int) -> list[int]:
    """The epochs a schedule keeps: 1, 2, 4, 8, ... (log-spaced) below ``epochs``, and ``epochs``.

    Args:
        epochs: The recipe's epoch count (>= 1).

    Returns:
        Increasing epoch numbers, the last one ``epochs``.
    """
    doublings = [2**power for power in range(epochs.bit_length()) if 2**power < epochs]
    return [*doublings, epochs]


class CheckpointSchedule:
    """Keeps checkpoints at log-spaced epochs plus the last while a model trains.

    Pass it as ``on_epoch`` to :func:`train_model`. Each kept epoch ``e`` is saved as
    ``<folder>/epoch-<eeee>.safetensors`` with its sidecar: a normal checkpoint (recipe, data
    provenance, train / test accuracy and test loss at that epoch) whose ``extra.epoch`` is ``e``.

    Args:
        folder: Where the checkpoints go: a new or empty folder.
        recipe: The recipe being trained.
        bundle: The data it is trained on.
        own_folder: The folder is dropinf's own (the demo's): it may already hold checkpoints
            of this very schedule (a training cut short), which are rewritten.

    Raises:
        ConfigError: The folder is a file, or holds anything this schedule would not write.
    """

    def __init__(
        self,
        folder: str | Path,
        recipe: TrainRecipe,
        bundle: DatasetBundle,
        own_folder: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.recipe, self.bundle = recipe, bundle
        self.epochs = checkpoint_epochs(recipe.epochs)
        self._check_folder(own_folder)

    def path(self, epoch: int) -> Path:
        """The checkpoint of ``epoch``."""
        return self.folder / f"epoch-{epoch:04d}.safetensors"

    def paths(self) -> list[Path]:
        """The checkpoints of the schedule, in epoch order."""
        return [self.path(epoch) for epoch in self.epochs]

    def is_complete(self) -> bool:
        """True when every checkpoint of the schedule is complete (it and its sidecar load)."""
        return all(is_complete_checkpoint(path) for path in self.paths())

    def __call__(self, epoch: int, model: nn.Module) -> None:
        """Save the model if ``epoch`` is in the schedule (evaluated, then back in train mode)."""
        if epoch not in self.epochs:
            return
        model.eval()
        train_accuracy, _ = evaluate(model, self.bundle.train)
        test_accuracy, test_loss = evaluate(model, self.bundle.test)
        model.train()
        result = TrainResult(
            model=model,
            arch=self.recipe.arch,
            arch_args=full_arch_args(self.recipe, self.bundle),
            train_accuracy=train_accuracy,
            test_accuracy=test_accuracy,
            test_loss=test_loss,
            seconds=0.0,
        )
        save_trained(self.path(epoch), result, self.recipe, self.bundle, epoch=epoch)

    def _check_folder(self, own_folder: bool) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise ConfigError(
                f"expected a folder for the checkpoints at {self.folder}, found a file"
            )
        if not self.folder.is_dir():
            return
        ours = {path.name for path in self.paths()} | {
            sidecar_path(path).name for path in self.paths()
        }
        found = sorted(entry.name for entry in self.folder.iterdir())
        foreign = [name for name in found if not (own_folder and name in ours)]
        if foreign:
            raise ConfigError(
                f"expected a new or empty folder for the checkpoints at {self.folder}, found "
                f"{len(foreign)} entries ({', '.join(foreign[:5])}); nothing was changed"
            )


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


def is_complete_checkpoint(path: Path) -> bool:
    """True when ``path`` and its sidecar exist and the checkpoint loads."""
    if not (path.is_file() and sidecar_path(path).is_file()):
        return False
    try:
        load_checkpoint(path)
    except CheckpointError:
        return False
    return True
