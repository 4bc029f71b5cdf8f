"""The embedded demos: their recipes and data, and their checkpoints trained once and cached."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from dropinf import paths
from dropinf.data import DEMO_DATA_SPEC, load_data
from dropinf.errors import ConfigError
from dropinf.models.training import (
    CheckpointSchedule,
    TrainRecipe,
    is_complete_checkpoint,
    save_trained,
    torch_threads,
    train_model,
)

DEMO_RECIPE = TrainRecipe(arch="small_cnn", epochs=12, lr=1e-3, batch_size=64, seed=0)


MEMORISING_RECIPE = TrainRecipe(
    arch="mlp",
    arch_args={"hidden_sizes": [256, 256]},
    epochs=300,
    lr=1e-3,
    batch_size=64,
    weight_decay=0.0,
    seed=0,
)


@dataclass(frozen=True)
class DemoPreset:
    """An embedded demo: a recipe trained on a dataset spec, on first use.

    Attributes:
        name: The preset's name (``python -m dropinf train --demo NAME``).
        recipe: How the demo model is trained.
        data_spec: The dataset it is trained on.
        description: What the preset shows, in a phrase.
    """

    name: str
    recipe: TrainRecipe
    data_spec: str
    description: str


DEFAULT_DEMO = "default"


DEMO_PRESETS = {
    DEFAULT_DEMO: DemoPreset(
        DEFAULT_DEMO, DEMO_RECIPE, DEMO_DATA_SPEC, "small_cnn on digits with 10% label noise"
    ),
    "memorising": DemoPreset(
        "memorising",
        MEMORISING_RECIPE,
        "digits:noise=0.2,seed=0",
        "an MLP 64-256-256-10 trained to memorise digits with 20% label noise (no weight decay)",
    ),
}


def demo_preset(name: str = DEFAULT_DEMO) -> DemoPreset:
    """The embedded demo called ``name``.

    Raises:
        ConfigError: No such preset.
    """
    if name not in DEMO_PRESETS:
        raise ConfigError(f"expected a demo preset in {sorted(DEMO_PRESETS)}, found {name!r}")
    return DEMO_PRESETS[name]


def demo_checkpoint_path(preset: str = DEFAULT_DEMO) -> Path:
    """Where a demo checkpoint lives; the name changes with the preset's recipe and data spec."""
    demo = demo_preset(preset)
    recipe = {"recipe": demo.recipe.to_dict(), "data": demo.data_spec, "threads": 1}
    key = json.dumps(recipe, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    prefix = "" if preset == DEFAULT_DEMO else f"{preset}-"
    source = demo.data_spec.split(":", 1)[0]
    return paths.demo_dir() / f"demo-{prefix}{demo.recipe.arch}-{source}-{digest}.safetensors"


def demo_checkpoints_dir(preset: str = DEFAULT_DEMO) -> Path:
    """The folder of a demo's checkpoint schedule (see :class:`CheckpointSchedule`)."""
    path = demo_checkpoint_path(preset)
    return path.with_name(f"{path.stem}-checkpoints")


def ensure_demo_checkpoint(progress: bool = True, preset: str = DEFAULT_DEMO) -> Path:
    """A demo checkpoint and its checkpoint schedule, trained on first use.

    ``default`` is small_cnn on digits with 10% symmetric noise; ``memorising`` an MLP that
    memorises digits with 20% noise. Training is deterministic (one CPU thread, fixed seed), so
    a deleted checkpoint comes back byte-identical. The checkpoint is written atomically after
    its sidecar; a checkpoint is taken as complete only when both exist and it loads, and the
    demo only when its schedule (:func:`demo_checkpoints_dir`) is complete too.

    Args:
        progress: Show a tqdm bar while training.
        preset: The demo's name (see ``DEMO_PRESETS``).

    Returns:
        The path of the ``.safetensors`` checkpoint (with ``<path>.json`` next to it).

    Raises:
        ConfigError: No such preset.
    """
    demo = demo_preset(preset)
    path = demo_checkpoint_path(preset)
    bundle = load_data(demo.data_spec)
    schedule = CheckpointSchedule(demo_checkpoints_dir(preset), demo.recipe, bundle, True)
    if is_complete_checkpoint(path) and schedule.is_complete():
        return path
    with torch_threads(1):
        result = train_model(demo.recipe, bundle, "cpu", progress, on_epoch=schedule)
    return save_trained(path, result, demo.recipe, bundle)
