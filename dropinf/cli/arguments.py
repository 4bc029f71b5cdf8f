"""Argument types and shared argument groups of the command line."""

from __future__ import annotations

import argparse
import json

from dropinf.core import (
    CompressionConfig,
    CurvatureConfig,
)
from dropinf.errors import ConfigError

NO_CAP = "none"
COMPRESSION_DEFAULTS = CompressionConfig()


CURVATURE_DEFAULTS = CurvatureConfig()


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
