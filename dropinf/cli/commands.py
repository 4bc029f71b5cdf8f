"""The one place that builds the command lines of background jobs (compute, map, retrain).

Each builder spells a request so that parsing the argv gives the same request back.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from dropinf.cli.arguments import COMPRESSION_DEFAULTS, CURVATURE_DEFAULTS, NO_CAP
from dropinf.core import (
    CompressionConfig,
    CurvatureConfig,
)
from dropinf.errors import ConfigError
from dropinf.run import DECISIONS_FILE, RETRAIN_REPORT_FILE, RunRequest

# Config fields `compute` has no option for: a request must leave them at their defaults.
FIXED_COMPRESSION_FIELDS = ("layer_keep_ratios", "calibration_batches")


FIXED_CURVATURE_FIELDS = ("max_full_dim",)


DEFAULT_MAP_SEED = 0


def compute_request(args: argparse.Namespace) -> RunRequest:
    """The run request that parsed ``compute`` arguments ask for.

    Without ``--device``, the device is the one the engine would pick (CUDA when present). Its
    checkpoint is the (last) ``--model`` given: a file, or a folder of checkpoints (the
    handler reads every ``--model`` and ``--combination`` itself).

    Raises:
        ConfigError: A config value is out of range (e.g. ``--keep-ratio 2``).
    """
    from dropinf.engine import resolve_device

    compression = CompressionConfig(
        method=args.method,
        keep_ratio=args.keep_ratio,
        seed=args.seed,
        mask=args.mask,
        max_kept_units=args.max_kept_units,
    )
    return RunRequest(
        checkpoint=args.model[-1],
        data_spec=args.data,
        compression=compression,
        curvature=CurvatureConfig(
            kind=args.curvature, damping=args.damping, damping_ratio=args.damping_ratio
        ),
        device=args.device if args.device is not None else str(resolve_device(None)),
        batch_size=args.batch_size,
        arch=args.arch,
        arch_args=args.arch_args,
    )


def compute_command(
    request: RunRequest,
    run_dir: str | Path,
    checkpoints: Sequence[str | Path] | None = None,
    combination: str | None = None,
    processes: int = 1,
) -> list[str]:
    """The CLI command that computes (or resumes) a request's run.

    A request whose checkpoint is a folder of checkpoints computes a run over all of them, as
    does one with ``checkpoints`` (given here or in ``request.checkpoints``). With several
    ``processes``, the command is ``torch.distributed.run`` (torchrun) starting that many on
    this machine (``--standalone``), each running ``-m dropinf compute`` on its share.

    Args:
        request: The run request.
        run_dir: Where the run is written.
        checkpoints: Several checkpoints to compute one run over, in training order; the last
            must be ``request.checkpoint``. None: ``request.checkpoints``, else
            ``request.checkpoint`` alone.
        combination: How several checkpoints' scores are combined; None:
            ``request.combination``, else the CLI's default.
        processes: Processes computing the run together (one per GPU); 1 runs it in one.

    Returns:
        An argv list starting with ``sys.executable -m dropinf compute`` (one process) or
        ``sys.executable -m torch.distributed.run --standalone --nproc-per-node P -m dropinf
        compute``; ``compute_request`` of the parsed ``compute`` arguments is ``request``
        (without its ``checkpoints`` and ``combination``, spelled as ``--model`` values and
        ``--combination``).

    Raises:
        ConfigError: The request sets an option the CLI cannot pass on (the job would compute
            a different run than its key names), or ``processes`` is below 1.
    """
    compression, curvature = request.compression, request.curvature
    _check_expressible(compression, curvature)
    if checkpoints is None and request.checkpoints:
        checkpoints = request.checkpoints
    combination = combination if combination is not None else request.combination
    models = _model_arguments(request, checkpoints)
    cap = compression.max_kept_units
    options = {
        "--data": request.data_spec,
        "--method": compression.method,
        "--keep-ratio": repr(compression.keep_ratio),
        "--mask": compression.mask,
        "--seed": str(compression.seed),
        "--max-kept-units": NO_CAP if cap is None else str(cap),
        "--curvature": curvature.kind,
        "--batch-size": str(request.batch_size),
        "--device": request.device,
        "--out": str(run_dir),
    }
    if curvature.damping is not None:
        options["--damping"] = repr(curvature.damping)
    if curvature.damping_ratio is not None:
        options["--damping-ratio"] = repr(curvature.damping_ratio)
    if request.arch is not None:
        options["--arch"] = request.arch
    if request.arch_args is not None:
        options["--arch-args"] = json.dumps(request.arch_args, sort_keys=True)
    if combination is not None:
        options["--combination"] = combination
    spelled_models = [token for model in models for token in _spell({"--model": model})]
    program = ["-m", "dropinf", "compute", *spelled_models, *_spell(options)]
    return [sys.executable, *_launcher(processes), *program]


def _launcher(processes: int) -> list[str]:
    """What runs ``-m dropinf``: Python itself, or torchrun starting ``processes`` of it.

    Raises:
        ConfigError: ``processes`` is not a positive integer.
    """
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ConfigError(f"processes: expected a positive integer, found {processes!r}")
    if processes == 1:
        return []
    return ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]


def _model_arguments(request: RunRequest, checkpoints: Sequence[str | Path] | None) -> list[str]:
    """The ``--model`` values of a request's command: its checkpoint, or all ``checkpoints``.

    Raises:
        ConfigError: ``checkpoints`` is empty or does not end with ``request.checkpoint``.
    """
    if checkpoints is None:
        return [str(request.checkpoint)]
    models = [str(path) for path in checkpoints]
    if not models or Path(models[-1]) != Path(request.checkpoint):
        raise ConfigError(
            f"checkpoints: expected a list ending with the request's checkpoint "
            f"{request.checkpoint}, found {models}"
        )
    return models


def _check_expressible(compression: CompressionConfig, curvature: CurvatureConfig) -> None:
    for config, defaults, names in (
        (compression, COMPRESSION_DEFAULTS, FIXED_COMPRESSION_FIELDS),
        (curvature, CURVATURE_DEFAULTS, FIXED_CURVATURE_FIELDS),
    ):
        for name in names:
            default = getattr(defaults, name)
            if getattr(config, name) != default:
                raise ConfigError(
                    f"`python -m dropinf compute` has no option for {name}; expected the default "
                    f"{default!r}, found {getattr(config, name)!r}"
                )


def map_command(
    run_dir: str | Path, whiten: bool = True, seed: int = DEFAULT_MAP_SEED
) -> list[str]:
    """The CLI command that computes a run's gradient map in a background job.

    Start it with ``JobRunner.start(map_command(run_dir), run_dir, name=MAP_JOB)``.

    Args:
        run_dir: A complete run directory.
        whiten: Map the curvature-whitened gradients (else the raw ones).
        seed: The UMAP seed.

    Returns:
        An argv list starting with ``sys.executable -m dropinf map``.
    """
    command = [sys.executable, "-m", "dropinf", "map"]
    command += _spell({"--run": str(run_dir), "--seed": str(seed)})
    return command if whiten else [*command, "--no-whiten"]


def retrain_command(
    checkpoint: str | Path, data_spec: str, run_dir: str | Path, seeds: int
) -> list[str]:
    """The CLI command retraining with a run's decisions applied, over several seeds.

    Args:
        checkpoint: The model checkpoint the run was computed from.
        data_spec: Its dataset spec.
        run_dir: The run holding ``decisions.json``; the report goes next to it.
        seeds: Training seeds before and after the fixes.

    Returns:
        An argv list starting with ``sys.executable -m dropinf retrain``.
    """
    options = {
        "--model": str(checkpoint),
        "--data": data_spec,
        "--decisions": str(Path(run_dir) / DECISIONS_FILE),
        "--seeds": str(seeds),
        "--out": str(Path(run_dir) / RETRAIN_REPORT_FILE),
    }
    return [sys.executable, "-m", "dropinf", "retrain", *_spell(options)]


def _spell(options: dict[str, str]) -> list[str]:
    """``--name value`` per option; ``--name=value`` when the value starts with a dash.

    argparse takes a separate token starting with ``-`` for an option, never for a value.
    """
    argv: list[str] = []
    for name, value in options.items():
        argv += [f"{name}={value}"] if value.startswith("-") else [name, value]
    return argv
