"""Label review: which training examples to inspect first, and what the reviewer decided.

Suspicion ranks the training examples most likely to carry a wrong label. Decisions (``keep``,
``relabel`` to a new label, ``remove``) and flags (examples marked for review, e.g. from the
gradient map; a flag changes no data) live in ``RUN_DIR/decisions.json``::

    {"format": 1, "decisions": {"<train index>": {"action": "relabel", "label": 3,
                                                  "updated": "2024-05-01T12:00:00+00:00"}},
     "flags": [<train index>, ...]}

``flags`` is optional (files without it have none) and ordered, most recently flagged first.

Writes go through a uniquely named temporary file and a rename, so a crash never leaves a
half-written file, and ``update_decisions`` holds an ``flock`` around read-modify-write so two
browser sessions reviewing the same run do not lose each other's decisions. The decisions turn
into ``(removals, relabels)`` for retraining (flags never do), and export as CSV or as JSON in
the same format (which ``load_decisions`` and ``python -m dropinf retrain --decisions`` read
back). Retraining with the fixes applied runs as a job (``retrain_command``) that writes
``RUN_DIR/retrain_report.json``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dropinf.errors import ConfigError, MissingFileError, RunError
from dropinf.run import DECISIONS_FILE, RETRAIN_REPORT_FILE, exclusive_lock

FORMAT_VERSION = 1
RETRAIN_JOB = "retrain"
ACTIONS = ("keep", "relabel", "remove")
UNDECIDED = "undecided"
FLAGGED = "flagged"
FLAG_ACTION = "flag"  # the action column of a flagged, undecided example in the CSV export
SUSPICION_SCORES = ("leave_one_out_loss", "self_influence")
DEFAULT_SUSPICION = "leave_one_out_loss"


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


# --------------------------------------------------------------------------------------------
# Persistence
# --------------------------------------------------------------------------------------------


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
    try:
        text = path.read_text()
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise MissingFileError(f"expected a decisions file at {path}, found no file") from None
    return parse_decisions(text, source=str(path))


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


def load_flags(path: str | Path) -> list[int]:
    """Read the flagged training indices of a ``decisions.json`` file (or a run directory).

    Returns:
        The indices, most recently flagged first; empty when the file does not exist yet.

    Raises:
        RunError: The file is not a decisions file of a known format.
    """
    path = _resolve(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return parse_flags(text, source=str(path))


def save_decisions(
    path: str | Path, decisions: Mapping[int, Decision], flags: Sequence[int] | None = None
) -> None:
    """Write decisions atomically: a unique temporary file, fsync, then rename into place.

    Args:
        path: The file, or a run directory.
        decisions: Training index -> decision.
        flags: Flagged training indices; None keeps the flags stored in the file.
    """
    path = _resolve(path)
    payload = export_json(decisions, load_flags(path) if flags is None else flags)
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


def update_decisions(
    path: str | Path, changes: Mapping[int, Decision | None]
) -> dict[int, Decision]:
    """Apply changes to the stored decisions under a file lock, and save them.

    Args:
        path: The file, or a run directory.
        changes: Training index -> new decision, or None to clear the index's decision.

    Returns:
        All decisions after the change.
    """
    path = _resolve(path)
    with exclusive_lock(path.with_name(f"{path.name}.lock")):
        decisions = load_decisions(path)
        for index, decision in changes.items():
            if decision is None:
                decisions.pop(int(index), None)
            else:
                decisions[int(index)] = decision
        save_decisions(path, decisions)
    return decisions


def update_flags(
    path: str | Path, add: Sequence[int] = (), remove: Sequence[int] = ()
) -> list[int]:
    """Flag and unflag training examples under the file lock, and save.

    Flags mark examples for review; they never change the data (``fixes_from_decisions`` reads
    decisions only). Newly flagged examples go first, in the given order.

    Args:
        path: The file, or a run directory.
        add: Training indices to flag.
        remove: Training indices to unflag.

    Returns:
        All flags after the change, most recently flagged first.
    """
    path = _resolve(path)
    with exclusive_lock(path.with_name(f"{path.name}.lock")):
        added = [int(i) for i in add]
        dropped = {*added, *(int(i) for i in remove)}
        flags = [*dict.fromkeys(added), *(i for i in load_flags(path) if i not in dropped)]
        save_decisions(path, load_decisions(path), flags)
    return flags


def _parse_document(text: str | bytes, source: str) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except ValueError as error:
        raise RunError(f"{source} is not valid JSON: {error}") from error
    if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise RunError(f"{source}: expected a decisions document of format 1, found {found!r}")
    return document


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    return decisions_path(path) if path.is_dir() else path


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


# --------------------------------------------------------------------------------------------
# Decisions -> fixes and export
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


def export_json(decisions: Mapping[int, Decision], flags: Sequence[int] = ()) -> bytes:
    """Decisions and flags as ``decisions.json`` bytes (``parse_decisions`` / ``parse_flags``).

    Args:
        decisions: Training index -> decision.
        flags: Flagged training indices, most recently flagged first.
    """
    entries = {str(i): decisions[i].to_dict() for i in sorted(decisions)}
    flagged = [int(i) for i in flags]
    document = {"format": FORMAT_VERSION, "decisions": entries, "flags": flagged}
    return json.dumps(document, indent=1).encode()


def export_csv(
    decisions: Mapping[int, Decision],
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    predictions: np.ndarray | None = None,
    self_influence: np.ndarray | None = None,
    flags: Sequence[int] | None = None,
) -> bytes:
    """The decisions as CSV bytes, one row per decided (or flagged) training example, by index.

    Args:
        decisions: Training index -> decision.
        labels: (n_train,) given labels; adds ``given_label`` (and ``given_class``).
        class_names: Names of the classes; adds the ``*_class`` columns.
        predictions: (n_train,) predicted labels; adds ``predicted_label``.
        self_influence: (n_train,) self-influence; adds ``self_influence``.
        flags: Flagged training indices; adds a ``flagged`` column, and a row with the action
            ``flag`` for each flagged example without a decision.

    Returns:
        UTF-8 CSV with a header: ``train_index, action, new_label, [new_class,] ...``.
    """
    flagged = set() if flags is None else {int(i) for i in flags}
    rows = [_export_row(i, decisions.get(i), labels, class_names, predictions, self_influence)
            for i in sorted({*decisions, *flagged})]  # fmt: skip
    columns = _export_columns(labels, class_names, predictions, self_influence)
    if flags is not None:
        columns.insert(columns.index("updated"), "flagged")
        for row in rows:
            row["flagged"] = row["train_index"] in flagged
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _export_columns(
    labels: np.ndarray | None,
    class_names: Sequence[str] | None,
    predictions: np.ndarray | None,
    self_influence: np.ndarray | None,
) -> list[str]:
    named = class_names is not None
    columns = ["train_index", "action", "new_label"] + (["new_class"] if named else [])
    if labels is not None:
        columns += ["given_label"] + (["given_class"] if named else [])
    if predictions is not None:
        columns += ["predicted_label"] + (["predicted_class"] if named else [])
    if self_influence is not None:
        columns.append("self_influence")
    return [*columns, "updated"]


def _export_row(
    index: int,
    decision: Decision | None,
    labels: np.ndarray | None,
    class_names: Sequence[str] | None,
    predictions: np.ndarray | None,
    self_influence: np.ndarray | None,
) -> dict[str, Any]:
    action, label, updated = (
        (decision.action, decision.label, decision.updated) if decision else (FLAG_ACTION, None, "")
    )
    row: dict[str, Any] = {
        "train_index": index,
        "action": action,
        "new_label": "" if label is None else label,
        "updated": updated,
    }
    labelled = {"new": label}
    if labels is not None:
        labelled["given"] = row["given_label"] = int(labels[index])
    if predictions is not None:
        labelled["predicted"] = row["predicted_label"] = int(predictions[index])
    if class_names is not None:
        for prefix, label in labelled.items():
            row[f"{prefix}_class"] = "" if label is None else class_names[label]
    if self_influence is not None:
        row["self_influence"] = float(self_influence[index])
    return row


# --------------------------------------------------------------------------------------------
# What to review first
# --------------------------------------------------------------------------------------------


def leave_one_out_loss(self_influence: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """First-order estimate of each training example's loss had it been left out of training.

    Dropping z from the mean training loss moves the parameters by about
    ``(F + λI)⁻¹ g(z) / N``, which raises z's own loss by ``g(z)ᵀ (F + λI)⁻¹ g(z) / N``: the
    held-out loss is ``ℓ(z) + self_influence(z) / N``. A wrong label has a high held-out loss
    whether the model fits it (high self-influence) or not (high loss); this is the influence
    analogue of the cross-validated probabilities cleanlab ranks by, without retraining.

    Args:
        self_influence: (n_train,) self-influence ``g(z)ᵀ (F + λI)⁻¹ g(z)``.
        losses: (n_train,) the model's loss on each training example.

    Returns:
        (n_train,) float64 estimated held-out losses.
    """
    self_influence = np.asarray(self_influence, dtype=np.float64).ravel()
    return np.asarray(losses, dtype=np.float64).ravel() + self_influence / self_influence.size


def suspicion(
    self_influence: np.ndarray, losses: np.ndarray, kind: str = DEFAULT_SUSPICION
) -> np.ndarray:
    """How likely each training label is wrong; higher = inspect first.

    Args:
        self_influence: (n_train,) self-influence ``g(z)ᵀ (F + λI)⁻¹ g(z)``.
        losses: (n_train,) the model's loss on each training example.
        kind: ``leave_one_out_loss`` (the default, see ``leave_one_out_loss``) or
            ``self_influence`` (the classic signal). Measured ROC AUC of the flipped labels,
            self-influence → leave-one-out loss (dropout keep 0.25, energy mask; 2 000 shifted
            digits, 10 % noise, bench/peers.py's recipe): MLP symmetric 0.992 → 0.995,
            class-conditional 0.975 → 0.993; small CNN symmetric 0.999 → 1.000,
            class-conditional 0.975 → 0.993. Models that memorise their flipped labels (digits,
            20 % noise, lr 3e-3, no weight decay) lose little: MLP, 150 epochs (228 of 287 flips
            fitted) 0.934 → 0.925; small CNN, 60 epochs (all 287 fitted) 0.903 → 0.903.

    Returns:
        (n_train,) float64 scores.

    Raises:
        ConfigError: Unknown ``kind``.
    """
    if kind not in SUSPICION_SCORES:
        raise ConfigError(f"suspicion must be one of {', '.join(SUSPICION_SCORES)}; got {kind!r}")
    if kind == "self_influence":
        return np.asarray(self_influence, dtype=np.float64).ravel()
    return leave_one_out_loss(self_influence, losses)


def review_queue(
    self_influence: np.ndarray,
    losses: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    decisions: Mapping[int, Decision],
    kind: str = DEFAULT_SUSPICION,
    class_names: Sequence[str] | None = None,
    include_decided: bool = True,
    flags: Sequence[int] = (),
) -> pd.DataFrame:
    """Training examples ranked by suspicion, with their review status; flagged ones first.

    Args:
        self_influence: (n_train,) self-influence.
        losses: (n_train,) the model's loss on each training example.
        labels: (n_train,) given labels.
        predictions: (n_train,) predicted labels.
        decisions: Training index -> decision so far.
        kind: The suspicion score (see ``suspicion``).
        class_names: Names of the classes; adds ``given_class`` / ``predicted_class``.
        include_decided: Keep examples that already have a decision.
        flags: Flagged training indices, in the order they lead the queue.

    Returns:
        Columns ``rank``, ``train_index``, ``suspicion``, ``self_influence``, ``loss``,
        ``given_label``,
        ``predicted_label``, ``disagrees``, ``status``, ``new_label``, ``flagged`` (and class
        names): flagged examples first (in flag order), then the others most suspicious first;
        ``rank`` is the suspicion rank over all examples.
    """
    scores = suspicion(self_influence, losses, kind)
    order = np.argsort(-scores, kind="stable")
    labels, predictions = np.asarray(labels)[order], np.asarray(predictions)[order]
    table = pd.DataFrame({
        "rank": np.arange(1, order.size + 1), "train_index": order, "suspicion": scores[order],
        "self_influence": np.asarray(self_influence, dtype=np.float64)[order],
        "loss": np.asarray(losses, dtype=np.float64)[order],
        "given_label": labels, "predicted_label": predictions, "disagrees": labels != predictions,
        "status": review_status(len(scores), decisions)[order],
        "new_label": [_new_label(decisions.get(int(i))) for i in order],
    })  # fmt: skip
    if class_names is not None:
        table["given_class"] = [class_names[label] for label in labels]
        table["predicted_class"] = [class_names[label] for label in predictions]
    table = _flagged_first(table, flags)
    return table if include_decided else table[table["status"] == UNDECIDED]


def _flagged_first(table: pd.DataFrame, flags: Sequence[int]) -> pd.DataFrame:
    """The table with a ``flagged`` column, flagged rows moved to the front in flag order."""
    position = {int(index): order for order, index in enumerate(flags)}
    keys = np.array([position.get(int(i), len(position)) for i in table["train_index"]])
    table["flagged"] = keys < len(position)
    return table.iloc[np.argsort(keys, kind="stable")]


def _new_label(decision: Decision | None) -> int | None:
    return decision.label if decision is not None else None


def suspect_mask(
    labels: np.ndarray,
    predictions: np.ndarray,
    decisions: Mapping[int, Decision],
    flags: Sequence[int] = (),
) -> np.ndarray:
    """(n_train,) True for examples predicted against their label, decided on, or flagged.

    Args:
        labels: (n_train,) given labels.
        predictions: (n_train,) predicted labels.
        decisions: Training index -> decision.
        flags: Flagged training indices.
    """
    suspects = np.asarray(labels).ravel() != np.asarray(predictions).ravel()
    suspects[[int(i) for i in [*decisions, *flags]]] = True
    return suspects


def mislabel_scores(self_influence: np.ndarray, losses: np.ndarray) -> dict[str, np.ndarray]:
    """The suspicion scores a detection panel compares, by display name; the queue's first.

    Args:
        self_influence: (n_train,) self-influence.
        losses: (n_train,) the model's loss on each training example.
    """
    return {
        "mislabel score (queue order)": suspicion(self_influence, losses),
        "self-influence": np.asarray(self_influence, dtype=np.float64).ravel(),
        "training loss": np.asarray(losses, dtype=np.float64).ravel(),
    }


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


def suggested_label(given_label: int, predicted_label: int, proponent_labels: Sequence[int]) -> int:
    """The label to propose for a queue item.

    The model's prediction when it disagrees with the given label; otherwise the most common
    given label among the item's strongest proponents (ties: the label of the stronger
    proponent); the prediction when there are no proponents.

    Args:
        given_label: The item's given label.
        predicted_label: The model's prediction for it.
        proponent_labels: Given labels of its strongest proponents, strongest first.
    """
    if int(predicted_label) != int(given_label) or len(proponent_labels) == 0:
        return int(predicted_label)
    labels = [int(label) for label in proponent_labels]
    counts = {label: labels.count(label) for label in labels}  # insertion order = strength
    return max(counts, key=counts.__getitem__)


# --------------------------------------------------------------------------------------------
# Verifying the fixes: retraining with the decisions applied
# --------------------------------------------------------------------------------------------


def retrain_report_path(run_dir: str | Path) -> Path:
    """Where the retraining report of a run's decisions is written."""
    return Path(run_dir) / RETRAIN_REPORT_FILE


def load_retrain_report(run_dir: str | Path) -> dict[str, Any] | None:
    """The last retraining report of a run (``FixReport.to_dict()``), or None.

    Raises:
        RunError: The report is not valid JSON.
    """
    path = retrain_report_path(run_dir)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise RunError(f"{path} is not valid JSON: {error}") from error


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
    return [
        sys.executable, "-m", "dropinf", "retrain", "--model", str(checkpoint),
        "--data", data_spec, "--decisions", str(decisions_path(run_dir)),
        "--seeds", str(seeds), "--out", str(retrain_report_path(run_dir)),
    ]  # fmt: skip
