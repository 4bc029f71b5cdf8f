"""What a review decision is, its JSON form, and what the decisions of a run amount to.

Decisions (``keep``, ``relabel`` to a new label, ``remove``), flags (examples marked for review,
e.g. from the gradient map; a flag changes no data) and the history of decision batches live in
``RUN_DIR/decisions.json``::

    {"format": 1,
     "decisions": {"<train index>": {"action": "relabel", "label": 3,
                                     "updated": "2024-05-01T12:00:00+00:00"}},
     "flags": [<train index>, ...],
     "history": [{"indices": [<train index>, ...], "action": "relabel", "label": 3,
                  "previous": [<the decision it replaced, or null>, ...]}, ...]}

``flags`` and ``history`` are optional (older files have neither). Flags are ordered, most
recently flagged first; the history is in the order the batches were made, and undoing pops its
last batch and restores what that batch replaced, so decisions are reversible in order, across
reruns and sessions.

``dropinf.review.decisions_file`` reads and writes that file; the decisions turn into
``(removals, relabels)`` for retraining (flags never do).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from dropinf.errors import ConfigError, RunError

FORMAT_VERSION = 1
ACTIONS = ("keep", "relabel", "remove")
UNDECIDED = "undecided"
FLAGGED = "flagged"


@dataclass(frozen=True)
class Decision:
    """One reviewer decision about a training example.

    Attributes:
        action: ``keep``, ``relabel`` or ``remove``.
        label: The new label for ``relabel``; None otherwise.
        updated: ISO 8601 time of the decision.
    """

    action: str
    label: int | None = None
    updated: str = ""

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ConfigError(f"decision must be one of {', '.join(ACTIONS)}; got {self.action!r}")
        if self.action == "relabel" and not _is_label(self.label):
            raise ConfigError(f"relabel needs a non-negative integer label, got {self.label!r}")
        if self.action != "relabel" and self.label is not None:
            raise ConfigError(f"only relabel takes a label; {self.action} got {self.label!r}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in ``decisions.json``."""
        return {"action": self.action, "label": self.label, "updated": self.updated}


def decide(action: str, label: int | None = None) -> Decision:
    """A decision stamped with the current time (``label`` only for ``relabel``)."""
    label = int(label) if label is not None else None
    return Decision(action, label, datetime.now(UTC).isoformat(timespec="seconds"))


@dataclass(frozen=True)
class DecisionBatch:
    """One decision given to several examples at once, with the decisions it replaced.

    Attributes:
        indices: Training indices, each once.
        action: ``keep``, ``relabel`` or ``remove``.
        label: The new label for ``relabel``; None otherwise.
        previous: Per index, the decision it had before the batch, or None.
    """

    indices: tuple[int, ...]
    action: str
    label: int | None
    previous: tuple[Decision | None, ...]

    def __post_init__(self) -> None:
        Decision(self.action, self.label)
        if len(self.previous) != len(self.indices):
            raise RunError(
                f"history: expected one previous decision per index ({len(self.indices)}), "
                f"found {len(self.previous)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in the ``history`` of ``decisions.json``."""
        previous = [None if d is None else d.to_dict() for d in self.previous]
        return {"indices": list(self.indices), "action": self.action, "label": self.label,
                "previous": previous}  # fmt: skip


@dataclass
class ReviewDocument:
    """Everything ``decisions.json`` holds.

    Attributes:
        decisions: Training index -> decision.
        flags: Flagged training indices, most recently flagged first.
        history: Decision batches, oldest first.
    """

    decisions: dict[int, Decision] = field(default_factory=dict)
    flags: list[int] = field(default_factory=list)
    history: list[DecisionBatch] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# The JSON form
# --------------------------------------------------------------------------------------------


def parse_decisions(text: str | bytes, source: str = "decisions") -> dict[int, Decision]:
    """Decisions from the JSON text of a ``decisions.json`` file or an ``export_json`` export.

    Raises:
        RunError: The text is not a decisions document of a known format.
        ConfigError: A decision in it is invalid.
    """
    document = _parse_document(text, source)
    entries = document.get("decisions")
    if not isinstance(entries, dict):
        raise RunError(f"{source}: expected a 'decisions' object, found {type(entries).__name__}")
    return {_index(key, source): _decision(value, source) for key, value in entries.items()}


def parse_flags(text: str | bytes, source: str = "decisions") -> list[int]:
    """Flagged training indices from the JSON text of a ``decisions.json`` file.

    Returns:
        The indices, most recently flagged first; empty when the document has no ``flags``.

    Raises:
        RunError: The text is not a decisions document, or ``flags`` is not a list of indices.
    """
    flags = _parse_document(text, source).get("flags", [])
    if not isinstance(flags, list):
        raise RunError(f"{source}: expected a 'flags' list, found {type(flags).__name__}")
    return [_index(str(value), source) for value in flags]


def parse_history(text: str | bytes, source: str = "decisions") -> list[DecisionBatch]:
    """The decision batches, oldest first, from the JSON text of a ``decisions.json`` file.

    Returns:
        The batches; empty when the document has no ``history`` (files older than undo).

    Raises:
        RunError: The text is not a decisions document, or ``history`` is malformed.
        ConfigError: A batch holds an invalid decision.
    """
    history = _parse_document(text, source).get("history", [])
    if not isinstance(history, list):
        raise RunError(f"{source}: expected a 'history' list, found {type(history).__name__}")
    return [_batch(entry, f"{source} history entry {n}") for n, entry in enumerate(history)]


def encode_document(
    decisions: Mapping[int, Decision],
    flags: Sequence[int] = (),
    history: Sequence[DecisionBatch] | None = None,
) -> bytes:
    """Decisions, flags and (when given) history as ``decisions.json`` bytes.

    Args:
        decisions: Training index -> decision.
        flags: Flagged training indices, most recently flagged first.
        history: Decision batches, oldest first; None leaves the key out (an export).
    """
    entries = {str(i): decisions[i].to_dict() for i in sorted(decisions)}
    document: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "decisions": entries,
        "flags": [int(i) for i in flags],
    }
    if history is not None:
        document["history"] = [batch.to_dict() for batch in history]
    return json.dumps(document, indent=1).encode()


def _parse_document(text: str | bytes, source: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError as error:
        raise RunError(f"{source} is not valid JSON: {error}") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise RunError(f"{source}: expected a decisions document of format 1, found {found!r}")
    return document


def _index(key: str, source: str) -> int:
    try:
        index = int(key)
    except ValueError:
        index = -1
    if index < 0:
        raise RunError(f"{source}: expected non-negative training indices as keys, found {key!r}")
    return index


def _decision(value: Any, source: str) -> Decision:
    if not isinstance(value, dict) or "action" not in value:
        raise RunError(f"{source}: expected {{'action': ..., 'label': ...}}, found {value!r}")
    return Decision(value["action"], value.get("label"), str(value.get("updated") or ""))


def _is_label(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 0


def _batch(value: Any, source: str) -> DecisionBatch:
    keys = {"indices", "action", "label", "previous"}
    if not isinstance(value, dict) or not keys <= set(value):
        raise RunError(f"{source}: expected {{{', '.join(sorted(keys))}}}, found {value!r}")
    indices, previous = value["indices"], value["previous"]
    if not isinstance(indices, list) or not isinstance(previous, list):
        raise RunError(f"{source}: expected lists of indices and previous decisions")
    return DecisionBatch(
        tuple(_index(str(i), source) for i in indices),
        value["action"],
        value["label"],
        tuple(None if d is None else _decision(d, source) for d in previous),
    )


# --------------------------------------------------------------------------------------------
# What the decisions amount to
# --------------------------------------------------------------------------------------------


def fixes_from_decisions(
    decisions: Mapping[int, Decision], given_labels: np.ndarray | None = None
) -> tuple[list[int], dict[int, int]]:
    """The training-set fixes the decisions ask for.

    Args:
        decisions: Training index -> decision.
        given_labels: (n_train,) labels as given; when passed, relabels to the same label are
            dropped (they change nothing).

    Returns:
        (removals, relabels): sorted indices to drop, and index -> new label (sorted by index).
        ``keep`` decisions change nothing.
    """
    removals = sorted(i for i, d in decisions.items() if d.action == "remove")
    relabels = {
        i: int(d.label)
        for i, d in sorted(decisions.items())
        if d.action == "relabel" and (given_labels is None or int(given_labels[i]) != d.label)
    }
    return removals, relabels


def review_status(
    n_train: int, decisions: Mapping[int, Decision], flags: Sequence[int] = ()
) -> np.ndarray:
    """(n_train,) strings: each example's action, else ``flagged`` or ``undecided`` (map colours).

    Args:
        n_train: Training examples.
        decisions: Training index -> decision.
        flags: Flagged training indices (shown only while undecided).
    """
    status = np.full(n_train, UNDECIDED, dtype=object)
    status[[i for i in flags if 0 <= i < n_train]] = FLAGGED
    for index, decision in decisions.items():
        if 0 <= index < n_train:
            status[index] = decision.action
    return status


def decided_flips(decisions: Mapping[int, Decision], noisy_mask: np.ndarray) -> tuple[int, int]:
    """How many decided examples had their label flipped on purpose.

    Args:
        decisions: Training index -> decision.
        noisy_mask: (n_train,) True where the given label was flipped.

    Returns:
        ``(flipped, decided)``.
    """
    decided = [int(i) for i in decisions]
    return int(np.asarray(noisy_mask)[decided].sum()) if decided else 0, len(decided)
