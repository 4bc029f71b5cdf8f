"""Own architectures: a model built by code the analyst names, ``package.module:callable``.

An architecture spelled ``package.module:callable`` (the torch.hub / uvicorn convention) is built
by importing ``package.module`` and calling ``callable(**arch_args)``. Importing code runs it, so
this is opt-in: ``trust_code=True`` (the CLI's ``--trust-code``) or ``DROPINF_TRUST_CODE=1`` in
the environment. The opt-in is checked before anything is imported.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from dropinf.errors import ConfigError, UnknownArchitectureError

TRUST_CODE_ENV = "DROPINF_TRUST_CODE"
_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
CODE_REFERENCE = re.compile(rf"{_IDENTIFIER}(\.{_IDENTIFIER})*:{_IDENTIFIER}(\.{_IDENTIFIER})*")
REGISTRY_HINT = "mlp, small_cnn, resnet9 or a torchvision classifier such as resnet18"


def is_code_reference(arch: str) -> bool:
    """Whether an architecture names code (``pkg.mod:fn``) rather than a registry entry.

    Any name with a colon counts, so a malformed reference is refused as code, never looked up.
    """
    return ":" in arch


def code_trusted(trust_code: bool | None = None) -> bool:
    """Whether own-code architectures may be imported.

    Args:
        trust_code: True or False decides; None reads ``DROPINF_TRUST_CODE`` (``1`` trusts).

    Returns:
        True when importing the analyst's code is allowed.
    """
    if trust_code is not None:
        return trust_code
    return os.environ.get(TRUST_CODE_ENV, "").strip() == "1"


def build_from_code(
    reference: str, arch_args: Mapping[str, Any], trust_code: bool | None = None
) -> nn.Module:
    """Import ``package.module`` and build ``callable(**arch_args)``, once trusted.

    Args:
        reference: ``package.module:callable`` (the callable may be ``Class.attribute``).
        arch_args: Keyword arguments of the callable.
        trust_code: The opt-in (None: ``DROPINF_TRUST_CODE``).

    Returns:
        The model, in training mode.

    Raises:
        UnknownArchitectureError: Code is not trusted (checked before any import), the reference
            is malformed, the module cannot be imported, or the callable is missing.
        ConfigError: The callable rejects the arguments or does not return an ``nn.Module``.
    """
    if not code_trusted(trust_code):
        raise UnknownArchitectureError(
            f"expected a registry architecture ({REGISTRY_HINT}); found code reference "
            f"{reference!r} — importing code runs it; pass --trust-code or set {TRUST_CODE_ENV}=1"
        )
    if not CODE_REFERENCE.fullmatch(reference):
        raise UnknownArchitectureError(
            f"expected an architecture like package.module:callable; found {reference!r}"
        )
    builder = _resolve(reference)
    try:
        model = builder(**arch_args)
    except Exception as error:  # the analyst's code may raise anything
        raise ConfigError(
            f"{reference}(**{dict(arch_args)}) failed: {type(error).__name__}: {error}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"{reference} returned {type(model).__name__}; expected a torch.nn.Module"
        )
    return model


def _resolve(reference: str) -> Any:
    module_name, _, attribute_path = reference.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise UnknownArchitectureError(
            f"cannot import {module_name!r} for architecture {reference!r}: {error}; expected a "
            "module on the Python path (installed, or under the folder dropinf runs from)"
        ) from None
    except Exception as error:  # importing runs the analyst's module, which may raise anything
        raise UnknownArchitectureError(
            f"importing {module_name!r} for architecture {reference!r} failed: "
            f"{type(error).__name__}: {error}"
        ) from None
    for attribute in attribute_path.split("."):
        if not hasattr(target, attribute):
            raise UnknownArchitectureError(
                f"{module_name} has no {attribute_path!r}; expected a callable building the model"
            )
        target = getattr(target, attribute)
    if not callable(target):
        raise UnknownArchitectureError(f"{reference} is a {type(target).__name__}, not callable")
    return target
