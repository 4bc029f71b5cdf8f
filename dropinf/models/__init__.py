"""Models: the architecture registry, safe checkpoints, training and retraining after fixes.

``registry`` builds ``mlp``, ``small_cnn``, ``resnet9`` and torchvision classifiers by name,
checking the arguments on the meta device; ``own_code`` builds an analyst's own architecture
(``package.module:callable``) only after the trust opt-in; ``checkpoints`` saves and loads a
state_dict with its JSON sidecar (or writes the sidecar alone) and checks a model fits a
dataset; ``safe_read`` reads checkpoint files as tensors only (safetensors, or weights-only
``torch.load``), refusing pickled code unrun; ``training`` holds the seeded recipes, evaluation
and the demo checkpoint; ``retrain`` retrains before and after label fixes. It may import
``dropinf.data`` and ``dropinf.core`` (and ``dropinf.errors``, ``dropinf.paths``);
never ``dropinf.run``, the engine, review or the dashboard.
"""

from __future__ import annotations

from dropinf.models.checkpoints import (
    LoadedCheckpoint,
    check_model_fits_data,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
    sidecar_path,
    write_sidecar,
)
from dropinf.models.demo import (
    DEMO_PRESETS,
    DEMO_RECIPE,
    DemoPreset,
    demo_checkpoint_path,
    demo_checkpoints_dir,
    ensure_demo_checkpoint,
)
from dropinf.models.own_code import TRUST_CODE_ENV, code_trusted, is_code_reference
from dropinf.models.registry import (
    arch_args_for_data,
    architectures,
    build_architecture,
    build_model,
    count_parameters,
    small_cnn,
)
from dropinf.models.retrain import (
    RETRAIN_PROGRESS_FILE,
    FixReport,
    paired_difference,
    retrain_cache_dir,
    retrain_with_fixes,
)
from dropinf.models.training import (
    CheckpointSchedule,
    TrainRecipe,
    checkpoint_epochs,
    evaluate,
    resolve_device,
    save_trained,
    torch_threads,
    train_model,
)

__all__ = [
    "DEMO_PRESETS",
    "DEMO_RECIPE",
    "RETRAIN_PROGRESS_FILE",
    "TRUST_CODE_ENV",
    "CheckpointSchedule",
    "DemoPreset",
    "FixReport",
    "LoadedCheckpoint",
    "TrainRecipe",
    "arch_args_for_data",
    "architectures",
    "build_architecture",
    "build_model",
    "check_model_fits_data",
    "checkpoint_epochs",
    "code_trusted",
    "count_parameters",
    "demo_checkpoint_path",
    "demo_checkpoints_dir",
    "ensure_demo_checkpoint",
    "evaluate",
    "file_sha256",
    "is_code_reference",
    "load_checkpoint",
    "paired_difference",
    "resolve_device",
    "retrain_cache_dir",
    "retrain_with_fixes",
    "save_checkpoint",
    "save_trained",
    "sidecar_path",
    "small_cnn",
    "torch_threads",
    "train_model",
    "write_sidecar",
]
