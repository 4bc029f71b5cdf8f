"""What the Load page offers to pick: datasets and checkpoints found under the data root.

A bounded, shallow walk (a few folder levels, a capped number of folders and entries) so a large
data root answers in milliseconds: hidden folders, virtual environments, caches and dropinf's own
run directories are skipped, and a dataset folder (image classes, CIFAR batches) is listed
without walking into it.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from dropinf.data import IMAGE_SUFFIXES

CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")
SKIPPED_FOLDERS = frozenset({"venv", "__pycache__", "node_modules", "site-packages", "runs"})
MAX_DEPTH = 3
MAX_FOLDERS = 400
MAX_ENTRIES = 500


@dataclass
class Finds:
    """Datasets and checkpoints found under a root, as paths relative to it (``/``-separated).

    Attributes:
        datasets: ``.npz`` files, image folders and CIFAR batch folders.
        checkpoints: ``.safetensors``, ``.pt`` and ``.pth`` files.
        truncated: True when the walk stopped at its bounds before seeing everything.
    """

    datasets: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def checkpoint_folders(self) -> list[str]:
        """Folders holding at least two of ``checkpoints`` (e.g. a training trajectory), sorted."""
        counts = Counter(PurePosixPath(path).parent.as_posix() for path in self.checkpoints)
        return sorted(folder for folder, count in counts.items() if count >= 2)


def find_inputs(root: str | Path, max_depth: int = MAX_DEPTH) -> Finds:
    """Datasets and checkpoints under ``root``, breadth first, within the walk's bounds.

    Args:
        root: The folder to look in (the data root).
        max_depth: Folder levels below ``root`` walked into.

    Returns:
        The finds, each list sorted.
    """
    root = Path(root)
    finds, queue, visited = Finds(), deque([(root, 0)]), 0
    while queue:
        folder, depth = queue.popleft()
        visited += 1
        if visited > MAX_FOLDERS:
            finds.truncated = True
            break
        for sub in _scan_folder(root, folder, finds):
            if depth < max_depth:
                queue.append((sub, depth + 1))
            else:
                finds.truncated = True
    finds.datasets.sort()
    finds.checkpoints.sort()
    return finds


def _scan_folder(root: Path, folder: Path, finds: Finds) -> list[Path]:
    """Record the finds directly in ``folder``; return the sub-folders worth walking into."""
    entries = _entries(folder)
    if entries is None:
        return []
    if len(entries) > MAX_ENTRIES:
        finds.truncated = True
    subfolders = []
    for entry in entries[:MAX_ENTRIES]:
        relative = Path(entry.path).relative_to(root).as_posix()
        if entry.is_dir(follow_symlinks=False):
            if is_dataset_folder(Path(entry.path)):
                finds.datasets.append(relative)
            elif _walkable(entry.name):
                subfolders.append(Path(entry.path))
        elif entry.name.lower().endswith(".npz"):
            finds.datasets.append(relative)
        elif entry.name.lower().endswith(CHECKPOINT_SUFFIXES):
            finds.checkpoints.append(relative)
    return subfolders


def _entries(folder: Path) -> list[os.DirEntry[str]] | None:
    """The visible entries of a folder, sorted by name; None when it cannot be read."""
    try:
        with os.scandir(folder) as scan:
            return sorted((e for e in scan if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:
        return None


def _walkable(name: str) -> bool:
    return name not in SKIPPED_FOLDERS and not name.endswith((".egg-info", ".dist-info"))


def is_dataset_folder(folder: Path) -> bool:
    """True for a CIFAR batch folder or an image folder (class folders holding pictures).

    Only the first entries of the first class folder are looked at: a guess for the picker,
    which the loader confirms.
    """
    if (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file():
        return True
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        folder = folder / "train"
    classes = [entry for entry in (_entries(folder) or [])[:MAX_ENTRIES] if entry.is_dir()]
    return bool(classes) and _holds_images(Path(classes[0].path))


def _holds_images(folder: Path) -> bool:
    entries = (_entries(folder) or [])[:20]
    return any(entry.name.lower().endswith(IMAGE_SUFFIXES) for entry in entries)
