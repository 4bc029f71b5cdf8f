"""Models: the architecture registry, safe checkpoints, training and retraining after fixes.

``registry`` builds ``mlp``, ``small_cnn``, ``resnet9`` and torchvision classifiers by name,
checking the arguments on the meta device; ``checkpoints`` saves and loads a state_dict with its
JSON sidecar and checks a model fits a dataset; ``safe_read`` reads checkpoint files as tensors
only (safetensors, or weights-only ``torch.load``), refusing pickled code unrun; ``training``
holds the seeded recipes, evaluation and the demo checkpoint; ``retrain`` retrains before and
after label fixes. It may import ``dropinf.data`` and ``dropinf.core`` (and ``dropinf.errors``,
``dropinf.paths``); never ``dropinf.run``, the engine, review or the dashboard.
"""

from __future__ import annotations

from dropinf.models.checkpoints import (
    LoadedCheckpoint,
    check_model_fits_data,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
    sidecar_path,
)
from dropinf.models.registry import (
    arch_args_for_data,
    architectures,
    build_model,
    count_parameters,
    small_cnn,
)
from dropinf.models.retrain import retrain_with_fixes
from dropinf.models.training import (
    DEMO_RECIPE,
    TrainRecipe,
    demo_checkpoint_path,
    ensure_demo_checkpoint,
    evaluate,
    resolve_device,
    save_trained,
    torch_threads,
    train_model,
)

__all__ = [
    "DEMO_RECIPE",
    "LoadedCheckpoint",
    "TrainRecipe",
    "arch_args_for_data",
    "architectures",
    "build_model",
    "check_model_fits_data",
    "count_parameters",
    "demo_checkpoint_path",
    "ensure_demo_checkpoint",
    "evaluate",
    "file_sha256",
    "load_checkpoint",
    "resolve_device",
    "retrain_with_fixes",
    "save_checkpoint",
    "save_trained",
    "sidecar_path",
    "small_cnn",
    "torch_threads",
    "train_model",
]
