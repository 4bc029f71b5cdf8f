"""Where dropinf keeps its files (the demo checkpoint, runs, uploads) and where it reads them.

One containment rule for every path that reaches the server from a user, a URL or a run's
manifest: it is resolved (``..`` and links followed) and must lie inside the data root or
dropinf's own demo and uploads folders (``confine``); a run key or an upload name must be a
plain name, no folders and not hidden (``run_dir_of``, ``save_upload``). Anything else raises
``ConfigError`` naming what was expected and what was found.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
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
    path = confine(root / text.strip(), [root], f"the data root {root}", text)
    if not path.exists():
        raise ConfigError(f"expected an existing file or folder under {root}; none at {path}")
    return path


def save_upload(content: bytes, name: str) -> Path:
    """Store uploaded bytes under ``uploads_dir()``, named by their content hash.

    The same content is stored once; the original name is kept after the hash so the suffix
    still tells the format.

    Args:
        content: The uploaded bytes.
        name: The name the file was uploaded under (a plain file name).

    Returns:
        The stored file.

    Raises:
        ConfigError: The name holds a folder or is hidden.
    """
    plain = _plain_name(name, "upload name")
    digest = hashlib.sha256(content).hexdigest()[:16]
    path = uploads_dir() / f"{digest}-{plain}"
    if not path.exists():
        path.write_bytes(content)
    return path


def readable_roots() -> list[Path]:
    """The folders the dashboard may read from: the data root, the demo and uploads folders."""
    return [data_root(), demo_dir(), uploads_dir()]


def confine(
    path: str | Path, roots: Sequence[Path] | None = None, where: str = "", shown: str = ""
) -> Path:
    """A path resolved (``..`` and links followed) and checked to lie inside one of ``roots``.

    Args:
        path: The path; a relative one is taken from the working directory.
        roots: Allowed folders (resolved); ``readable_roots()`` when None.
        where: How to name the roots in the message (default: the folders themselves).
        shown: How to name the path in the message (default: the path itself).

    Returns:
        The resolved path (it need not exist).

    Raises:
        ConfigError: The path holds a NUL character or lies outside every root.
    """
    roots = readable_roots() if roots is None else roots
    if "\0" in str(path):
        raise ConfigError(f"expected a path without NUL characters; got {shown or str(path)!r}")
    resolved = Path(path).expanduser().resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        where = where or " or ".join(str(root) for root in roots)
        raise ConfigError(f"expected a path inside {where}; got {shown or str(path)!r}")
    return resolved


def confine_data_spec(spec: str) -> str:
    """A data spec whose source, unless builtin (``digits``), is a path inside ``confine``'s roots.

    Args:
        spec: A spec understood by ``dropinf.data.load_data``.

    Returns:
        The spec, unchanged.

    Raises:
        ConfigError: The spec's path lies outside the readable folders.
        DatasetError: The spec is malformed.
    """
    from dropinf.data import parse_spec

    source, _ = parse_spec(spec)
    if source != "digits":
        confine(source, shown=spec)
    return spec


def run_dir_of(key: str) -> Path:
    """The directory of a run key: a plain folder name directly under ``runs_dir()``.

    Args:
        key: The run key (from a URL, a picker or the session).

    Returns:
        The resolved run directory (it need not exist).

    Raises:
        ConfigError: The key holds a folder, ``..``, is absolute or hidden, or links elsewhere.
    """
    runs = runs_dir()
    return confine(runs / _plain_name(key, "run key"), [runs], f"the runs folder {runs}", key)


def _plain_name(name: str, what: str) -> str:
    """``name`` when it is one visible file or folder name (no separators, not hidden)."""
    if not name or name != name.strip() or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise ConfigError(
            f"expected a plain {what} (one name: no folders, not hidden); got {name!r}"
        )
    return name
