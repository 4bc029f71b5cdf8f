"""The sub-commands: their arguments and what each runs."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dropinf.cli.arguments import (
    COMPRESSION_DEFAULTS,
    CURVATURE_DEFAULTS,
    NO_CAP,
    add_architecture_arguments,
    add_device_argument,
    add_recipe_arguments,
    kept_units,
    positive_int,
    recipe_from_args,
    trust_code_of,
)
from dropinf.cli.commands import DEFAULT_MAP_SEED, compute_request
from dropinf.core import (
    COMPRESSION_METHODS,
    CURVATURE_KINDS,
    MASK_STRATEGIES,
    default_damping_text,
)
from dropinf.engine.ensemble import COMBINATIONS, DEFAULT_COMBINATION
from dropinf.errors import ConfigError
from dropinf.run import RunRequest

if TYPE_CHECKING:
    from dropinf.data import DatasetBundle
    from dropinf.models import LoadedCheckpoint


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``train``."""
    parser.add_argument(
        "--demo",
        nargs="?",
        const="default",
        default=None,
        metavar="PRESET",
        help="train (or reuse) an embedded demo and its checkpoint schedule: alone, small_cnn "
        "on digits with 10%% label noise; 'memorising', an MLP that memorises 20%% label noise",
    )
    add_architecture_arguments(parser, "small_cnn")
    parser.add_argument("--data", help="dataset spec: digits, digits:noise=0.1,seed=0, x.npz, dir")
    parser.add_argument("--out", type=Path, help="checkpoint path (.safetensors or .pt)")
    parser.add_argument(
        "--save-checkpoints",
        type=Path,
        default=None,
        metavar="DIR",
        help="also keep checkpoints at epochs 1, 2, 4, 8, ... and the last in DIR (new or empty)",
    )
    add_recipe_arguments(parser)
    add_device_argument(parser)


def run_train(args: argparse.Namespace) -> None:
    """Train a model (or the demo) and save its checkpoint."""
    from dropinf.data import load_data
    from dropinf.models import CheckpointSchedule, ensure_demo_checkpoint, save_trained, train_model

    if args.demo is not None:
        print(ensure_demo_checkpoint(progress=True, preset=args.demo))
        return
    if not args.data or not args.out:
        raise ConfigError("train needs --data and --out (or --demo)")
    recipe = recipe_from_args(args, {"arch": args.arch, "arch_args": args.arch_args or {}})
    bundle = load_data(args.data)
    schedule = None
    if args.save_checkpoints is not None:
        schedule = CheckpointSchedule(args.save_checkpoints, recipe, bundle)
    trust_code = trust_code_of(args)
    result = train_model(recipe, bundle, args.device, True, trust_code, on_epoch=schedule)
    path = save_trained(args.out, result, recipe, bundle)
    saved = {"checkpoints": [str(p) for p in schedule.paths()]} if schedule else {}
    print(json.dumps({"checkpoint": str(path), **result.metrics(), **saved}, indent=2))


def add_compute_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``compute``."""
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        nargs="+",
        action="extend",
        metavar="CKPT",
        help="checkpoint (.safetensors or .pt) with its <ckpt>.json sidecar, or with --arch; "
        "several checkpoints, or a folder of them (ordered by the epoch in their metadata, then "
        "name), make one run per checkpoint and their combined scores",
    )
    parser.add_argument(
        "--combination",
        default=DEFAULT_COMBINATION,
        choices=COMBINATIONS,
        help="how several checkpoints' scores are combined: tracin (learning-rate-weighted "
        "mean, the default), rank (mean rank: ranks suspects, but its test scores lose the "
        "magnitudes attribution needs) or standardised (mean z-score)",
    )
    add_architecture_arguments(parser, None)
    parser.add_argument("--data", required=True, help="dataset spec (see `train --help`)")
    parser.add_argument("--out", required=True, type=Path, help="run directory to write")
    parser.add_argument(
        "--method", default=COMPRESSION_DEFAULTS.method, choices=COMPRESSION_METHODS
    )
    parser.add_argument(
        "--keep-ratio",
        type=float,
        default=COMPRESSION_DEFAULTS.keep_ratio,
        help="share of each layer's input and output units kept (0, 1]",
    )
    parser.add_argument(
        "--mask",
        default=COMPRESSION_DEFAULTS.mask,
        choices=MASK_STRATEGIES,
        help="how dropout picks kept units",
    )
    parser.add_argument(
        "--seed", type=int, default=COMPRESSION_DEFAULTS.seed, help="seed of masks and projections"
    )
    parser.add_argument(
        "--max-kept-units",
        type=kept_units,
        default=COMPRESSION_DEFAULTS.max_kept_units,
        help="at most this many kept output units and input columns per layer, or "
        f"{NO_CAP} for no cap (default {COMPRESSION_DEFAULTS.max_kept_units})",
    )
    parser.add_argument("--curvature", default=CURVATURE_DEFAULTS.kind, choices=CURVATURE_KINDS)
    parser.add_argument(
        "--damping",
        type=float,
        default=CURVATURE_DEFAULTS.damping,
        help="λ added to the Fisher diagonal (default: --damping-ratio · mean diag F)",
    )
    parser.add_argument(
        "--damping-ratio",
        type=float,
        default=CURVATURE_DEFAULTS.damping_ratio,
        help="the default λ's factor of mean diag F (kfac / ekfac: per layer, of its mean "
        f"eigenvalue); default per kind: {default_damping_text()}",
    )
    parser.add_argument("--batch-size", type=positive_int, default=RunRequest.batch_size)
    add_device_argument(parser)
    parser.add_argument(
        "--no-test-scores", action="store_true", help="skip scoring the dataset's test split"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a run directory that holds a different configuration",
    )


def check_model_fits_data(model: Any, bundle: DatasetBundle) -> None:
    """``dropinf.models.check_model_fits_data``, imported when a command needs it."""
    from dropinf.models import check_model_fits_data as check

    check(model, bundle)


def run_compute(args: argparse.Namespace) -> None:
    """Compute a run directory: compressed gradients, curvature, self-influence, test scores.

    One checkpoint makes a run of one model; several (or a folder of several) make a run per
    checkpoint and their combined scores (``dropinf.engine.EnsembleEngine``).
    """
    from dropinf.data import load_data

    request = compute_request(args)
    checkpoints = load_compute_checkpoints(args.model, request, trust_code_of(args))
    bundle = load_data(args.data)
    for checkpoint in checkpoints:
        check_model_fits_data(checkpoint.model, bundle)
    if len(checkpoints) == 1:
        engine = _fit_one_model(args, request, checkpoints[0], bundle)
    else:
        engine = _fit_checkpoints(args, request, checkpoints, bundle)
    manifest = engine.store.read_manifest()
    summary = {
        key: manifest[key] for key in ("status", "k", "n_train", "curvature_kind", "damping")
    }
    if len(checkpoints) > 1:
        summary.update(checkpoints=len(checkpoints), combination=args.combination)
    print(json.dumps({"run_dir": str(args.out), **summary}, indent=2))


def load_compute_checkpoints(
    models: list[Path], request: RunRequest, trust_code: bool | None
) -> list[LoadedCheckpoint]:
    """The checkpoints ``--model`` names: files as given, a folder's in epoch order.

    Raises:
        CheckpointError: A file is missing or unreadable, or a folder holds no checkpoint.
        CheckpointMismatchError: Several checkpoints that are not of one architecture, shape
            and training set (naming the odd one out), or one given twice.
    """
    from dropinf.models import load_checkpoint
    from dropinf.run import check_one_model_family, checkpoint_files, in_epoch_order

    def load(path: Path) -> LoadedCheckpoint:
        return load_checkpoint(path, request.arch, request.arch_args, trust_code=trust_code)

    checkpoints: list[LoadedCheckpoint] = []
    for model in models:
        if model.is_dir():
            checkpoints += in_epoch_order([load(path) for path in checkpoint_files(model)])
        else:
            checkpoints.append(load(model))
    if len(checkpoints) > 1:
        check_one_model_family(checkpoints)
    return checkpoints


def _provenance(checkpoint: LoadedCheckpoint, bundle: DatasetBundle) -> dict[str, Any]:
    return {
        "checkpoint": str(checkpoint.path.resolve()),
        "checkpoint_sha256": checkpoint.sha256,
        "arch": checkpoint.arch,
        "arch_args": checkpoint.arch_args,
        "data_spec": bundle.spec,
        "data_fingerprint": bundle.fingerprint,
    }


def _fit_one_model(
    args: argparse.Namespace,
    request: RunRequest,
    checkpoint: LoadedCheckpoint,
    bundle: DatasetBundle,
) -> Any:
    """The run of one checkpoint, fitted."""
    from dropinf.core import cross_entropy_per_sample
    from dropinf.engine import InfluenceEngine

    engine = InfluenceEngine(
        checkpoint.model,
        cross_entropy_per_sample,
        request.compression,
        request.curvature,
        run_dir=args.out,
        device=request.device,
        overwrite=args.overwrite,
        provenance=_provenance(checkpoint, bundle),
        show_progress=True,
    )
    test = None if args.no_test_scores else bundle.test
    return engine.fit(bundle.train, request.batch_size, test, data_fingerprint=bundle.fingerprint)


def _fit_checkpoints(
    args: argparse.Namespace,
    request: RunRequest,
    checkpoints: list[LoadedCheckpoint],
    bundle: DatasetBundle,
) -> Any:
    """The run over several checkpoints (one run each, scores combined), fitted.

    The top level's provenance names the last checkpoint (the final model: the dashboard loads
    it for queries) and lists them all.
    """
    from dropinf.core import cross_entropy_per_sample
    from dropinf.engine import CheckpointInfo, EnsembleEngine
    from dropinf.run import checkpoint_epoch, checkpoint_learning_rate

    infos = [
        CheckpointInfo(
            name=checkpoint.path.name,
            path=str(checkpoint.path.resolve()),
            sha256=checkpoint.sha256,
            epoch=checkpoint_epoch(checkpoint),
            learning_rate=checkpoint_learning_rate(checkpoint),
        )
        for checkpoint in checkpoints
    ]
    provenance = {
        **_provenance(checkpoints[-1], bundle),
        "checkpoints": [info.path for info in infos],
    }
    engine = EnsembleEngine(
        [checkpoint.model for checkpoint in checkpoints],
        cross_entropy_per_sample,
        request.compression,
        request.curvature,
        run_dir=args.out,
        device=request.device,
        overwrite=args.overwrite,
        provenance=provenance,
        checkpoints=infos,
        combination=args.combination,
        show_progress=True,
    )
    test = None if args.no_test_scores else bundle.test
    return engine.fit(bundle.train, request.batch_size, test, data_fingerprint=bundle.fingerprint)


def add_map_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``map``."""
    parser.add_argument("--run", required=True, type=Path, help="a complete run directory")
    parser.add_argument(
        "--no-whiten",
        action="store_true",
        help="map the raw compressed gradients, not the curvature-whitened ones",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_MAP_SEED, help="UMAP seed")


def run_map(args: argparse.Namespace) -> None:
    """Compute and cache the 2-D UMAP of a run's training gradients."""
    from dropinf.dashboard import compute_gradient_map

    print(compute_gradient_map(args.run, whiten=not args.no_whiten, seed=args.seed))


def add_retrain_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``retrain``."""
    parser.add_argument(
        "--model", required=True, type=Path, help="the checkpoint whose recipe is repeated"
    )
    parser.add_argument("--data", required=True, help="dataset spec of the unfixed data")
    parser.add_argument(
        "--decisions",
        required=True,
        type=Path,
        help="decisions.json written by the label-issues page",
    )
    parser.add_argument("--seeds", type=positive_int, default=3, help="training seeds 0..N-1")
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="report JSON to write; retrain_progress.json (phase, done, total, eta_s) goes next "
        "to it while training",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="retrain 'before' too, instead of reusing the cached results of the same recipe, "
        "data and seeds",
    )
    add_architecture_arguments(parser, None)
    add_recipe_arguments(parser)
    add_device_argument(parser)


def run_retrain(args: argparse.Namespace) -> None:
    """Retrain before and after the decided fixes and write the report."""
    from dropinf.data import load_data
    from dropinf.models import (
        RETRAIN_PROGRESS_FILE,
        load_checkpoint,
        retrain_cache_dir,
        retrain_with_fixes,
    )
    from dropinf.review import fixes_from_decisions, load_decisions
    from dropinf.run import atomic_write_json

    trust_code = trust_code_of(args)
    checkpoint = load_checkpoint(args.model, args.arch, args.arch_args, trust_code=trust_code)
    saved = checkpoint.extra.get("recipe", {"arch": checkpoint.arch})
    recipe = recipe_from_args(
        args, {**saved, "arch": checkpoint.arch, "arch_args": checkpoint.arch_args}
    )
    removals, relabels = fixes_from_decisions(load_decisions(args.decisions, missing_ok=False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    progress_file = args.out.parent / RETRAIN_PROGRESS_FILE
    report = retrain_with_fixes(
        recipe,
        load_data(args.data),
        removals,
        relabels,
        seeds=args.seeds,
        device=args.device,
        progress=True,
        trust_code=trust_code,
        cache_dir=None if args.no_cache else retrain_cache_dir(),
        on_progress=lambda progress: atomic_write_json(progress_file, progress),
    )
    atomic_write_json(args.out, report.to_dict())
    print(json.dumps({**report.summary(), "n_test": report.n_test}, indent=2))
    print(report.verdict())


def add_suspects_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``suspects``."""
    parser.add_argument("--run", required=True, type=Path, help="a complete run directory")
    parser.add_argument("--top", type=positive_int, default=None, help="rows written (default all)")
    parser.add_argument("--out", required=True, type=Path, help="CSV file to write")


def run_suspects(args: argparse.Namespace) -> None:
    """Write the review queue's ranked training examples (the Label issues page's order)."""
    from dropinf.data import load_data
    from dropinf.errors import IncompleteRunError, RunNotFoundError
    from dropinf.review import RunReview, suspects_csv
    from dropinf.run import RunStore

    if not args.run.is_dir():
        raise RunNotFoundError(f"expected a run directory at {args.run}, found none")
    store = RunStore(args.run)
    if not store.is_complete():
        raise IncompleteRunError(f"expected a complete run at {args.run}, found {store.status}")
    data_spec = (store.read_manifest().get("provenance") or {}).get("data_spec")
    bundle = load_data(data_spec) if data_spec else None
    review = RunReview(store, bundle.class_names if bundle else None)
    grid = review.grid(ids=bundle.train_ids if bundle else None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(suspects_csv(grid, args.top))
    print(f"{min(len(grid), args.top or len(grid)):,} suspects written to {args.out}")


Handler = Callable[[argparse.Namespace], None]
