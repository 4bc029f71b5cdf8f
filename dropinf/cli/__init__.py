"""``python -m dropinf``: the engine's operations without a browser.

Sub-commands: ``train`` (a registry model, or the demo), ``compute`` (a run directory the
dashboard opens), ``map`` (the UMAP of a run's gradients), ``retrain`` (test accuracy before
and after label fixes) and ``suspects`` (the ranked review queue as CSV). Bad input ends a
command with its message and exit status 2, never a traceback.

This package is also the one place that builds command lines for background jobs
(``compute_command``, ``map_command``, ``retrain_command``): what they spell, the parser reads
back unchanged, and the defaults of both come from the configs (``commands.py``). Argument
types live in ``arguments.py``, the sub-commands in ``handlers.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from dropinf.cli.commands import compute_command, compute_request, map_command, retrain_command
from dropinf.cli.handlers import (
    Handler,
    add_compute_arguments,
    add_map_arguments,
    add_retrain_arguments,
    add_suspects_arguments,
    add_train_arguments,
    run_compute,
    run_map,
    run_retrain,
    run_suspects,
    run_train,
)
from dropinf.errors import DropinfError

__all__ = [
    "EXIT_BAD_INPUT",
    "build_parser",
    "compute_command",
    "compute_request",
    "main",
    "map_command",
    "retrain_command",
]

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


# ---------------------------------------------------------------------------- train


# -------------------------------------------------------------------------- compute


# ------------------------------------------------------------------------------ map


# -------------------------------------------------------------------------- retrain


# -------------------------------------------------------------------------- suspects


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
