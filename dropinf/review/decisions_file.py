"""``RUN_DIR/decisions.json``: read it, write it atomically, change it under a lock.

Writes go through a uniquely named temporary file and a rename, so a crash never leaves a
half-written file, and every read-modify-write holds an ``flock`` on ``decisions.json.lock``, so
two browser sessions reviewing the same run do not lose each other's decisions. Decision buttons
go through ``record_decisions`` (one batch of the history each) and ``undo_decisions`` pops the
last batch; ``update_decisions`` changes decisions without a history entry.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from dropinf.errors import MissingFileError
from dropinf.review.decisions import (
    Decision,
    DecisionBatch,
    ReviewDocument,
    encode_document,
    parse_decisions,
    parse_flags,
    parse_history,
)
from dropinf.run import DECISIONS_FILE, exclusive_lock


def decisions_path(run_dir: str | Path) -> Path:
    """Where a run's decisions are stored: ``RUN_DIR/decisions.json``."""
    return Path(run_dir) / DECISIONS_FILE


def load_decisions(path: str | Path, missing_ok: bool = True) -> dict[int, Decision]:
    """Read decisions from a ``decisions.json`` file (or a run directory holding one).

    Args:
        path: The file, or a run directory.
        missing_ok: Read a missing file as no decisions (a run not reviewed yet); False when
            the user named the file.

    Returns:
        Training index -> decision; empty when the file does not exist yet and ``missing_ok``.

    Raises:
        MissingFileError: The file does not exist and ``missing_ok`` is False.
        RunError: The file is not a decisions file of a known format.
        ConfigError: A decision in it is invalid.
    """
    path = _resolve(path)
    text = _read_text(path)
    if text is None and not missing_ok:
        raise MissingFileError(f"expected a decisions file at {path}, found no file")
    return {} if text is None else parse_decisions(text, source=str(path))


def load_flags(path: str | Path) -> list[int]:
    """Read the flagged training indices of a ``decisions.json`` file (or a run directory).

    Returns:
        The indices, most recently flagged first; empty when the file does not exist yet.

    Raises:
        RunError: The file is not a decisions file of a known format.
    """
    path = _resolve(path)
    text = _read_text(path)
    return [] if text is None else parse_flags(text, source=str(path))


def load_document(path: str | Path) -> ReviewDocument:
    """Read decisions, flags and history of a ``decisions.json`` file (or a run directory).

    Returns:
        The document; empty when the file does not exist yet.

    Raises:
        RunError: The file is not a decisions file of a known format.
        ConfigError: A decision in it is invalid.
    """
    path = _resolve(path)
    text = _read_text(path)
    if text is None:
        return ReviewDocument()
    source = str(path)
    history = parse_history(text, source)
    return ReviewDocument(parse_decisions(text, source), parse_flags(text, source), history)


def save_decisions(
    path: str | Path,
    decisions: Mapping[int, Decision],
    flags: Sequence[int] | None = None,
    history: Sequence[DecisionBatch] | None = None,
) -> None:
    """Write decisions atomically: a unique temporary file, fsync, then rename into place.

    Args:
        path: The file, or a run directory.
        decisions: Training index -> decision.
        flags: Flagged training indices; None keeps the flags stored in the file.
        history: Decision batches; None keeps the history stored in the file.
    """
    path = _resolve(path)
    stored = load_document(path) if flags is None or history is None else ReviewDocument()
    flags = stored.flags if flags is None else flags
    history = stored.history if history is None else history
    _write_atomically(path, encode_document(decisions, flags, history))


def update_decisions(
    path: str | Path, changes: Mapping[int, Decision | None]
) -> dict[int, Decision]:
    """Apply changes to the stored decisions under a file lock, and save them (no history).

    Args:
        path: The file, or a run directory.
        changes: Training index -> new decision, or None to clear the index's decision.

    Returns:
        All decisions after the change.
    """
    with _locked(path) as document:
        _apply(document.decisions, changes)
    return document.decisions


def record_decisions(
    path: str | Path, indices: Sequence[int], decision: Decision
) -> dict[int, Decision]:
    """Give one decision to several examples under the file lock, as one batch of the history.

    Args:
        path: The file, or a run directory.
        indices: Training indices (repeats count once).
        decision: The decision each of them gets.

    Returns:
        All decisions after the change.
    """
    unique = tuple(dict.fromkeys(int(i) for i in indices))
    with _locked(path) as document:
        previous = tuple(document.decisions.get(i) for i in unique)
        if unique:
            batch = DecisionBatch(unique, decision.action, decision.label, previous)
            document.history.append(batch)
        _apply(document.decisions, dict.fromkeys(unique, decision))
    return document.decisions


def undo_decisions(path: str | Path) -> list[int]:
    """Revert the last decision batch of the history under the file lock.

    Args:
        path: The file, or a run directory.

    Returns:
        The batch's training indices, in its order; empty when there is nothing to undo.
    """
    with _locked(path) as document:
        if not document.history:
            return []
        batch = document.history.pop()
        _apply(document.decisions, dict(zip(batch.indices, batch.previous, strict=True)))
    return list(batch.indices)


def update_flags(
    path: str | Path, add: Sequence[int] = (), remove: Sequence[int] = ()
) -> list[int]:
    """Flag and unflag training examples under the file lock, and save.

    Flags mark examples for review; they never change the data (``fixes_from_decisions`` reads
    decisions only) and are not part of the decision history. Newly flagged examples go first,
    in the given order.

    Args:
        path: The file, or a run directory.
        add: Training indices to flag.
        remove: Training indices to unflag.

    Returns:
        All flags after the change, most recently flagged first.
    """
    added = [int(i) for i in add]
    dropped = {*added, *(int(i) for i in remove)}
    with _locked(path) as document:
        kept = [i for i in document.flags if i not in dropped]
        document.flags[:] = [*dict.fromkeys(added), *kept]
    return document.flags


@contextmanager
def _locked(path: str | Path) -> Iterator[ReviewDocument]:
    """The stored document under the file lock, saved when the block ends without an error."""
    path = _resolve(path)
    with exclusive_lock(path.with_name(f"{path.name}.lock")):
        document = load_document(path)
        yield document
        _write_atomically(path, encode_document(**vars(document)))


def _apply(decisions: dict[int, Decision], changes: Mapping[int, Decision | None]) -> None:
    for index, decision in changes.items():
        if decision is None:
            decisions.pop(int(index), None)
        else:
            decisions[int(index)] = decision


def _write_atomically(path: Path, payload: bytes) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    return decisions_path(path) if path.is_dir() else path
