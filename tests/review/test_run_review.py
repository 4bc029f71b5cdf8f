"""``RunReview``: one object for a run under review, its history of decisions and undo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dropinf.errors import ConfigError, RunError
from dropinf.review import PRIMARY_SCORE, Decision, RunReview, load_decisions, save_decisions
from dropinf.run import RunStore

LABELS = np.array([0, 1, 2, 0, 1, 2])
PREDICTIONS = np.array([0, 2, 2, 0, 1, 1])  # train #1 and #5 are predicted against their label
LOSSES = np.array([0.1, 2.0, 0.2, 0.1, 0.3, 1.5])
SELF_INFLUENCE = np.array([1.0, 6.0, 2.0, 0.5, 12.0, 3.0])


def write_store(run_dir: Path) -> RunStore:
    """A store holding one shard's metadata and the self-influence (enough to review)."""
    store = RunStore(run_dir)
    writer = store.shard_writer(0, rows=len(LABELS), k=2, dtype=np.dtype(np.float32))
    meta = {"label": LABELS, "prediction": PREDICTIONS, "loss": LOSSES}
    writer.append(np.zeros((len(LABELS), 2), dtype=np.float32), meta)
    writer.publish()
    store.save_self_influence(SELF_INFLUENCE)
    return store


@pytest.fixture
def run_review(tmp_path: Path) -> RunReview:
    return RunReview(write_store(tmp_path / "run"), class_names=["zero", "one", "two"])


def test_scores_name_the_primary_score_the_queue_follows(run_review: RunReview) -> None:
    scores = run_review.scores()
    assert next(iter(scores)) == PRIMARY_SCORE
    primary = scores[PRIMARY_SCORE]
    np.testing.assert_allclose(primary, LOSSES + SELF_INFLUENCE / len(LABELS))
    queue = run_review.queue()
    assert queue["train_index"].tolist() == np.argsort(-primary, kind="stable").tolist()
    assert queue["given_class"].tolist()[:2] == ["one", "one"]  # class names given once


def test_queue_puts_flags_first_and_hides_decided(run_review: RunReview) -> None:
    run_review.flag([3])
    run_review.decide([4], "keep")
    queue = run_review.queue()
    assert queue["train_index"].tolist()[0] == 3
    assert 4 not in queue["train_index"].tolist()
    assert 4 in run_review.queue(include_decided=True)["train_index"].tolist()


def test_suspects_are_disagreements_decisions_and_flags(run_review: RunReview) -> None:
    assert run_review.suspects().tolist() == [False, True, False, False, False, True]
    run_review.flag([0])
    run_review.decide([2], "remove")
    assert run_review.suspects().tolist() == [True, True, True, False, False, True]


def test_decide_then_undo_in_order_restores_each_previous_state(run_review: RunReview) -> None:
    run_review.decide([1, 5], "relabel", 0)
    first = run_review.decisions()
    run_review.decide([5, 2], "remove")
    run_review.decide([1], "keep")
    assert {i: d.action for i, d in run_review.decisions().items()} == {
        1: "keep",
        2: "remove",
        5: "remove",
    }
    assert run_review.undo() == [1]
    assert {i: d.action for i, d in run_review.decisions().items()} == {
        1: "relabel",
        2: "remove",
        5: "remove",
    }
    assert run_review.undo() == [5, 2]
    assert run_review.decisions() == first, "the relabel of #5 is back, with its own time"
    assert run_review.undo() == [1, 5]
    assert run_review.decisions() == {}
    assert run_review.undo() == [], "nothing left to undo"
    assert not run_review.can_undo()


def test_history_persists_across_instances(tmp_path: Path) -> None:
    store = write_store(tmp_path / "run")
    RunReview(store).decide([2], "relabel", 1)
    RunReview(store).decide([2], "keep")
    later = RunReview(RunStore(store.run_dir))
    assert later.can_undo()
    assert later.undo() == [2]
    assert later.decisions()[2].action == "relabel"
    history = json.loads((store.run_dir / "decisions.json").read_text())["history"]
    assert history == [
        {"indices": [2], "action": "relabel", "label": 1, "previous": [None]},
    ]


def test_flags_are_kept_by_decisions_and_undo(run_review: RunReview) -> None:
    run_review.flag([4, 0])
    run_review.decide([4], "keep")
    run_review.undo()
    assert run_review.flags() == [4, 0]
    run_review.unflag([4])
    assert run_review.flags() == [0]
    assert run_review.can_undo() is False, "flags are not decisions: nothing to undo"


def test_files_without_history_still_load_and_undo_nothing(tmp_path: Path) -> None:
    store = write_store(tmp_path / "run")
    old = {"format": 1, "decisions": {"1": {"action": "remove", "label": None, "updated": ""}}}
    (store.run_dir / "decisions.json").write_text(json.dumps(old))
    run_review = RunReview(store)
    assert run_review.decisions() == {1: Decision("remove")}
    assert run_review.undo() == []
    run_review.decide([2], "keep")
    assert run_review.undo() == [2]
    assert load_decisions(store.run_dir) == {1: Decision("remove")}


def test_plain_saves_keep_the_history(run_review: RunReview) -> None:
    run_review.decide([1], "remove")
    save_decisions(run_review.run_dir, run_review.decisions())
    assert run_review.undo() == [1]


@pytest.mark.parametrize(
    "history",
    [
        {"not": "a list"},
        [{"indices": [1], "action": "keep", "label": None}],  # no previous
        [{"indices": [1], "action": "keep", "label": None, "previous": []}],  # length
        [{"indices": [-1], "action": "keep", "label": None, "previous": [None]}],
        [{"indices": [1], "action": "delete", "label": None, "previous": [None]}],
        [{"indices": [1], "action": "keep", "label": None, "previous": [{"label": 2}]}],
    ],
)
def test_malformed_history_is_refused_by_name(run_review: RunReview, history: object) -> None:
    document = {"format": 1, "decisions": {}, "flags": [], "history": history}
    (run_review.run_dir / "decisions.json").write_text(json.dumps(document))
    with pytest.raises((RunError, ConfigError), match=r"history|decision must be one of"):
        run_review.undo()


def test_bad_decisions_are_refused_before_anything_is_written(run_review: RunReview) -> None:
    with pytest.raises(ConfigError, match="relabel needs"):
        run_review.decide([1], "relabel")
    with pytest.raises(ConfigError, match="one of keep, relabel, remove"):
        run_review.decide([1], "delete")
    assert run_review.decisions() == {} and not run_review.can_undo()
