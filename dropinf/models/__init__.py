"""Models: the architecture registry, safe checkpoints, training and the demo.

Models: the architecture registry (MLP, small CNN, ResNet-9, torchvision classifiers),
safe checkpoints (safetensors or weights-only .pt plus a JSON sidecar), training recipes, the
demo checkpoint and retraining with label fixes.

May import ``dropinf.data`` and ``dropinf.core``; never runs, the engine, review or the dashboard.
"""

from __future__ import annotations

from dropinf.models.checkpoints import (
    LoadedCheckpoint,
    arch_args_for_data,
    architectures,
    build_model,
    check_model_fits_data,
    count_parameters,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
    sidecar_path,
    small_cnn,
)
from dropinf.models.training import (
    DEMO_RECIPE,
    TrainRecipe,
    demo_checkpoint_path,
    ensure_demo_checkpoint,
    evaluate,
    resolve_device,
    retrain_with_fixes,
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
