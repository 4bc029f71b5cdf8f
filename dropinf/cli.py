"""``python -m dropinf``: the engine's operations without a browser.

Sub-commands: ``train`` (a registry model, or the demo), ``compute`` (a run directory the
dashboard opens), ``map`` (the UMAP of a run's gradients), ``retrain`` (test accuracy before
and after label fixes) and ``suspects`` (the ranked review queue as CSV). Bad input ends a
command with its message and exit status 2, never a traceback.

This module is also the one place that builds command lines for background jobs
(``compute_command``, ``map_command``, ``retrain_command``): what they spell, the parser reads
back unchanged, and the defaults of both come from the configs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dropinf.core import (
    COMPRESSION_METHODS,
    CURVATURE_KINDS,
    MASK_STRATEGIES,
    CompressionConfig,
    CurvatureConfig,
)
from dropinf.errors import ConfigError, DropinfError
from dropinf.run import DECISIONS_FILE, RETRAIN_REPORT_FILE, RunRequest

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
COMPRESSION_DEFAULTS = CompressionConfig()
CURVATURE_DEFAULTS = CurvatureConfig()
# Config fields `compute` has no option for: a request must leave them at their defaults.
FIXED_COMPRESSION_FIELDS = ("layer_keep_ratios", "calibration_batches")
FIXED_CURVATURE_FIELDS = ("damping_ratio", "max_full_dim")
NO_CAP = "none"
DEFAULT_MAP_SEED = 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one sub-command.

    Returns:
        The process exit status.
    """
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (DropinfError, OSError) as error:  # OSError: a path the user gave is unusable
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of every sub-command."""
    parser = argparse.ArgumentParser(
        prog="python -m dropinf",
        description="Influence functions on dropout-compressed gradients.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, add_arguments, handler, summary in SUBCOMMANDS:
        sub = commands.add_parser(name, help=summary, description=summary)
        add_arguments(sub)
        sub.set_defaults(handler=handler)
    return parser


def positive_int(text: str) -> int:
    """An argparse type: a positive integer.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not one (argparse prints it and exits 2).
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text}")
    return value


def kept_units(text: str) -> int | None:
    """An argparse type: a positive integer, or ``none`` for no cap.

    Raises:
        argparse.ArgumentTypeError: ``text`` is neither (argparse prints it and exits 2).
    """
    if text.strip().lower() == NO_CAP:
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or {NO_CAP}, found {text}"
        ) from None


def device_name(text: str) -> str:
    """An argparse type: a device of this machine (``cpu``, ``cuda``, ``cuda:N``).

    Raises:
        argparse.ArgumentTypeError: It is not one (argparse prints it and exits 2).
    """
    from dropinf.engine import resolve_device

    try:
        resolve_device(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--device`` argument of every sub-command that computes."""
    parser.add_argument(
        "--device", type=device_name, default=None, help="cpu or cuda (default: cuda if present)"
    )


def json_object(text: str) -> dict:
    """An argparse type: a JSON object, e.g. ``{"num_classes": 10}``.

    Raises:
        argparse.ArgumentTypeError: ``text`` is not one (argparse prints it and exits 2).
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(
            f"expected a JSON object, found {text!r} ({error})"
        ) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, found {text!r}")
    return value


def add_architecture_arguments(parser: argparse.ArgumentParser, default: str | None) -> None:
    """``--arch``, ``--arch-args`` and ``--trust-code``, for commands that build a model."""
    saved = "the checkpoint's sidecar" if default is None else default
    parser.add_argument(
        "--arch",
        default=default,
        help=f"architecture: a registry name or package.module:callable (default {saved})",
    )
    parser.add_argument(
        "--arch-args",
        type=json_object,
        default=None,
        help="architecture arguments as a JSON object, e.g. '{\"num_classes\": 10}'",
    )
    parser.add_argument(
        "--trust-code",
        action="store_true",
        help="allow --arch package.module:callable, which imports (runs) that code; "
        "DROPINF_TRUST_CODE=1 does the same",
    )


def trust_code_of(args: argparse.Namespace) -> bool | None:
    """True with ``--trust-code``; else None, leaving it to ``DROPINF_TRUST_CODE``."""
    return True if args.trust_code else None


# ---------------------------------------------------------------------------- train
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


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """Training-recipe arguments shared by ``train`` and ``retrain``."""
    parser.add_argument("--epochs", type=int, default=None, help="passes over the training set")
    parser.add_argument("--lr", type=float, default=None, help="AdamW learning rate")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="examples per step")
    parser.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay")
    parser.add_argument("--seed", type=int, default=None, help="initialisation and order seed")


def recipe_from_args(args: argparse.Namespace, base: dict) -> object:
    """A TrainRecipe from ``base`` values overridden by the arguments that were given."""
    from dropinf.models import TrainRecipe

    names = ("epochs", "lr", "batch_size", "weight_decay", "seed")
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    return TrainRecipe.from_dict({**base, **given})


def run_train(args: argparse.Namespace) -> None:
    """Train a model (or the demo) and save its checkpoint."""
    from dropinf.data import load_data
    from dropinf.errors import ConfigError
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


# -------------------------------------------------------------------------- compute
def add_compute_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``compute``."""
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        help="checkpoint (.safetensors or .pt) with its <ckpt>.json sidecar, or with --arch",
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
        help="λ added to the Fisher diagonal (default 0.1 · mean diag F)",
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


def run_compute(args: argparse.Namespace) -> None:
    """Compute a run directory: compressed gradients, curvature, self-influence, test scores."""
    from dropinf.core import cross_entropy_per_sample
    from dropinf.data import load_data
    from dropinf.engine import InfluenceEngine
    from dropinf.models import check_model_fits_data, load_checkpoint

    request = compute_request(args)
    checkpoint = load_checkpoint(
        args.model, request.arch, request.arch_args, trust_code=trust_code_of(args)
    )
    bundle = load_data(args.data)
    check_model_fits_data(checkpoint.model, bundle)
    provenance = {
        "checkpoint": str(checkpoint.path.resolve()),
        "checkpoint_sha256": checkpoint.sha256,
        "arch": checkpoint.arch,
        "arch_args": checkpoint.arch_args,
        "data_spec": bundle.spec,
        "data_fingerprint": bundle.fingerprint,
    }
    engine = InfluenceEngine(
        checkpoint.model,
        cross_entropy_per_sample,
        request.compression,
        request.curvature,
        run_dir=args.out,
        device=request.device,
        overwrite=args.overwrite,
        provenance=provenance,
        show_progress=True,
    )
    test = None if args.no_test_scores else bundle.test
    engine.fit(bundle.train, request.batch_size, test, data_fingerprint=bundle.fingerprint)
    manifest = engine.store.read_manifest()
    summary = {
        key: manifest[key] for key in ("status", "k", "n_train", "curvature_kind", "damping")
    }
    print(json.dumps({"run_dir": str(args.out), **summary}, indent=2))


def compute_request(args: argparse.Namespace) -> RunRequest:
    """The run request that parsed ``compute`` arguments ask for.

    Without ``--device``, the device is the one the engine would pick (CUDA when present).

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
        checkpoint=args.model,
        data_spec=args.data,
        compression=compression,
        curvature=CurvatureConfig(kind=args.curvature, damping=args.damping),
        device=args.device if args.device is not None else str(resolve_device(None)),
        batch_size=args.batch_size,
        arch=args.arch,
        arch_args=args.arch_args,
    )


def compute_command(request: RunRequest, run_dir: str | Path) -> list[str]:
    """The CLI command that computes (or resumes) a request's run.

    Args:
        request: The run request.
        run_dir: Where the run is written.

    Returns:
        An argv list starting with ``sys.executable -m dropinf compute``; ``compute_request``
        of its parsed arguments is ``request``.

    Raises:
        ConfigError: The request sets an option the CLI cannot pass on (the job would compute
            a different run than its key names).
    """
    compression, curvature = request.compression, request.curvature
    _check_expressible(compression, curvature)
    cap = compression.max_kept_units
    options = {
        "--model": str(request.checkpoint),
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
    if request.arch is not None:
        options["--arch"] = request.arch
    if request.arch_args is not None:
        options["--arch-args"] = json.dumps(request.arch_args, sort_keys=True)
    return [sys.executable, "-m", "dropinf", "compute", *_spell(options)]


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


# ------------------------------------------------------------------------------ map
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


# -------------------------------------------------------------------------- retrain
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


# -------------------------------------------------------------------------- suspects
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
SUBCOMMANDS: list[tuple[str, Callable[[argparse.ArgumentParser], None], Handler, str]] = [
    ("train", add_train_arguments, run_train, "Train a registry model, or the demo."),
    (
        "compute",
        add_compute_arguments,
        run_compute,
        "Compute a run: compressed gradients, curvature, self-influence and test scores.",
    ),
    ("map", add_map_arguments, run_map, "Cache the UMAP of a run's training gradients."),
    (
        "retrain",
        add_retrain_arguments,
        run_retrain,
        "Retrain before and after label fixes over several seeds; report test accuracy.",
    ),
    (
        "suspects",
        add_suspects_arguments,
        run_suspects,
        "Write the ranked suspects of a run (the Label issues queue) as CSV.",
    ),
]
