"""Where dropinf keeps its files (the demo checkpoint, runs, uploads) and where it reads them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from dropinf.errors import ConfigError


def home_dir() -> Path:
    """The dropinf home: ``$DROPINF_HOME``, else ``.dropinf`` in the working directory."""
    home = Path(os.environ.get("DROPINF_HOME", ".dropinf")).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def runs_dir() -> Path:
    """The folder holding content-addressed run directories."""
    path = home_dir() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def demo_dir() -> Path:
    """The folder holding the demo checkpoint, created on first use."""
    path = home_dir() / "demo"
    path.mkdir(parents=True, exist_ok=True)
    return path


def uploads_dir() -> Path:
    """The folder holding files uploaded through the dashboard, created on first use."""
    path = home_dir() / "uploads"
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_root() -> Path:
    """The folder server-side paths typed in the dashboard are resolved in.

    ``$DROPINF_DATA_ROOT``, else the dropinf home.
    """
    root = os.environ.get("DROPINF_DATA_ROOT")
    return Path(root).expanduser().resolve() if root else home_dir()


def path_under_data_root(text: str) -> Path:
    """A path typed by a user, resolved inside the data root (nothing outside it is reachable).

    Args:
        text: A path relative to the data root (an absolute one must lie inside it).

    Returns:
        The resolved, existing path.

    Raises:
        ConfigError: The path escapes the data root, or does not exist.
    """
    root = data_root()
    path = (root / text.strip()).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(f"expected a path inside the data root {root}, got {text!r}")
    if not path.exists():
        raise ConfigError(f"expected an existing file or folder under {root}; none at {path}")
    return path


def save_upload(content: bytes, name: str) -> Path:
    """Store uploaded bytes under ``uploads_dir()``, named by their content hash.

    The same content is stored once; the original name (without any folders) is kept after
    the hash so the suffix still tells the format.

    Args:
        content: The uploaded bytes.
        name: The name the file was uploaded under.

    Returns:
        The stored file.
    """
    digest = hashlib.sha256(content).hexdigest()[:16]
    path = uploads_dir() / f"{digest}-{Path(name).name}"
    if not path.exists():
        path.write_bytes(content)
    return path
