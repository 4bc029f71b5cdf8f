"""``python -m dropinf``: the engine's operations without a browser.

Sub-commands: ``train`` (a registry model, or the demo), ``compute`` (a run directory the
dashboard opens), ``map`` (the UMAP of a run's gradients) and ``retrain`` (test accuracy before
and after label fixes). Bad input ends a command with its message and exit status 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dropinf.core import COMPRESSION_METHODS, CURVATURE_KINDS, MASK_STRATEGIES
from dropinf.errors import ConfigError, DropinfError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


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


# ---------------------------------------------------------------------------- train
def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``train``."""
    parser.add_argument(
        "--demo",
        action="store_true",
        help="train (or reuse) the demo: small_cnn on digits with 10%% label noise",
    )
    parser.add_argument("--arch", default="small_cnn", help="architecture name (default small_cnn)")
    parser.add_argument(
        "--arch-args",
        type=json.loads,
        default={},
        help="architecture arguments as JSON, e.g. '{\"hidden_sizes\": [64]}'",
    )
    parser.add_argument("--data", help="dataset spec: digits, digits:noise=0.1,seed=0, x.npz, dir")
    parser.add_argument("--out", type=Path, help="checkpoint path (.safetensors or .pt)")
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
    from dropinf.models import ensure_demo_checkpoint, save_trained, train_model

    if args.demo:
        print(ensure_demo_checkpoint(progress=True))
        return
    if not args.data or not args.out:
        raise ConfigError("train needs --data and --out (or --demo)")
    recipe = recipe_from_args(args, {"arch": args.arch, "arch_args": args.arch_args})
    bundle = load_data(args.data)
    result = train_model(recipe, bundle, device=args.device, progress=True)
    path = save_trained(args.out, result, recipe, bundle)
    print(json.dumps({"checkpoint": str(path), **result.metrics()}, indent=2))


# -------------------------------------------------------------------------- compute
def add_compute_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``compute``."""
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        help="checkpoint (.safetensors or .pt) with its <ckpt>.json sidecar",
    )
    parser.add_argument("--data", required=True, help="dataset spec (see `train --help`)")
    parser.add_argument("--out", required=True, type=Path, help="run directory to write")
    parser.add_argument("--method", default="dropout", choices=COMPRESSION_METHODS)
    parser.add_argument(
        "--keep-ratio",
        type=float,
        default=0.25,
        help="share of each layer's input and output units kept (0, 1]",
    )
    parser.add_argument(
        "--mask", default="energy", choices=MASK_STRATEGIES, help="how dropout picks kept units"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of masks and projections")
    parser.add_argument("--curvature", default="auto", choices=CURVATURE_KINDS)
    parser.add_argument(
        "--damping",
        type=float,
        default=None,
        help="λ added to the Fisher diagonal (default 0.1 · mean diag F)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=256)
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
    from dropinf.core import CompressionConfig, CurvatureConfig, cross_entropy_per_sample
    from dropinf.data import load_data
    from dropinf.engine import InfluenceEngine
    from dropinf.models import check_model_fits_data, load_checkpoint

    compression = CompressionConfig(
        method=args.method, keep_ratio=args.keep_ratio, seed=args.seed, mask=args.mask
    )
    curvature = CurvatureConfig(kind=args.curvature, damping=args.damping)
    checkpoint = load_checkpoint(args.model)
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
        compression,
        curvature,
        run_dir=args.out,
        device=args.device,
        overwrite=args.overwrite,
        provenance=provenance,
        show_progress=True,
    )
    test = None if args.no_test_scores else bundle.test
    engine.fit(bundle.train, args.batch_size, test, data_fingerprint=bundle.fingerprint)
    manifest = engine.store.read_manifest()
    summary = {
        key: manifest[key] for key in ("status", "k", "n_train", "curvature_kind", "damping")
    }
    print(json.dumps({"run_dir": str(args.out), **summary}, indent=2))


# ------------------------------------------------------------------------------ map
def add_map_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``map``."""
    parser.add_argument("--run", required=True, type=Path, help="a complete run directory")
    parser.add_argument(
        "--no-whiten",
        action="store_true",
        help="map the raw compressed gradients, not the curvature-whitened ones",
    )
    parser.add_argument("--seed", type=int, default=0, help="UMAP seed")


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
    parser.add_argument("--out", required=True, type=Path, help="report JSON to write")
    add_recipe_arguments(parser)
    add_device_argument(parser)


def run_retrain(args: argparse.Namespace) -> None:
    """Retrain before and after the decided fixes and write the report."""
    from dropinf.data import load_data
    from dropinf.models import load_checkpoint, retrain_with_fixes
    from dropinf.review import fixes_from_decisions, load_decisions
    from dropinf.run import atomic_write_json

    checkpoint = load_checkpoint(args.model)
    saved = checkpoint.extra.get("recipe", {"arch": checkpoint.arch})
    recipe = recipe_from_args(args, {**saved, "arch_args": checkpoint.arch_args})
    removals, relabels = fixes_from_decisions(load_decisions(args.decisions, missing_ok=False))
    report = retrain_with_fixes(
        recipe,
        load_data(args.data),
        removals,
        relabels,
        seeds=args.seeds,
        device=args.device,
        progress=True,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, report.to_dict())
    print(json.dumps(report.summary(), indent=2))


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
]
