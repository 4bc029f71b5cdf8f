from __future__ import annotations

import csv
import io
import json
import os
import threading

import numpy as np
import pytest

from dropinf.errors import ConfigError, RunError
from dropinf.review import (
    Decision,
    decide,
    decisions_path,
    export_csv,
    export_json,
    fixes_from_decisions,
    load_decisions,
    parse_decisions,
    review_queue,
    review_status,
    save_decisions,
    suspicion,
    update_decisions,
)

DECISIONS = {
    7: Decision("remove", None, "2024-01-01T00:00:00+00:00"),
    2: Decision("relabel", 1, "2024-01-01T00:00:01+00:00"),
    5: Decision("keep", None, "2024-01-01T00:00:02+00:00"),
    9: Decision("relabel", 0, "2024-01-01T00:00:03+00:00"),
}


def test_decision_validation():
    with pytest.raises(ConfigError, match="one of keep, relabel, remove"):
        Decision("delete")
    with pytest.raises(ConfigError, match="relabel needs"):
        Decision("relabel")
    with pytest.raises(ConfigError, match="only relabel"):
        Decision("remove", 3)
    stamped = decide("relabel", np.int64(4))
    assert stamped.label == 4 and type(stamped.label) is int and stamped.updated.startswith("20")


def test_missing_file_means_no_decisions(tmp_path):
    assert load_decisions(tmp_path) == {}
    assert load_decisions(tmp_path / "decisions.json") == {}


def test_save_load_roundtrip_through_run_dir_and_file(tmp_path):
    save_decisions(tmp_path, DECISIONS)
    assert decisions_path(tmp_path).exists()
    assert load_decisions(tmp_path) == DECISIONS
    assert load_decisions(tmp_path / "decisions.json") == DECISIONS
    stored = json.loads((tmp_path / "decisions.json").read_text())
    assert stored["format"] == 1
    assert stored["decisions"]["2"] == {"action": "relabel", "label": 1,
                                        "updated": "2024-01-01T00:00:01+00:00"}  # fmt: skip


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    save_decisions(tmp_path, DECISIONS)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        save_decisions(tmp_path, {1: Decision("keep")})
    assert load_decisions(tmp_path) == DECISIONS  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decisions.json"]  # no temp left


def test_malformed_files_raise_run_error(tmp_path):
    path = tmp_path / "decisions.json"
    for text, message in (("{not json", "not valid JSON"), ('{"format": 2}', "format 1"),
                          ('{"format": 1, "decisions": []}', "'decisions' object"),
                          ('{"format": 1, "decisions": {"x": {"action": "keep"}}}', "indices"),
                          ('{"format": 1, "decisions": {"1": "keep"}}', "'action'")):  # fmt: skip
        path.write_text(text)
        with pytest.raises(RunError, match=message):
            load_decisions(path)


def test_update_decisions_sets_and_clears(tmp_path):
    save_decisions(tmp_path, DECISIONS)
    after = update_decisions(tmp_path, {7: None, 3: Decision("remove")})
    assert set(after) == {2, 3, 5, 9}
    assert load_decisions(tmp_path) == after


def test_concurrent_updates_lose_nothing(tmp_path):
    def review(start: int) -> None:
        for index in range(start, start + 20):
            update_decisions(tmp_path, {index: Decision("remove")})

    threads = [threading.Thread(target=review, args=(start,)) for start in (0, 100, 200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(load_decisions(tmp_path)) == 60


def test_fixes_from_decisions():
    removals, relabels = fixes_from_decisions(DECISIONS)
    assert removals == [7]
    assert relabels == {2: 1, 9: 0} and list(relabels) == [2, 9]
    given = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    assert fixes_from_decisions(DECISIONS, given) == ([7], {2: 1})  # 9 -> 0 changes nothing


def test_review_status():
    status = review_status(10, DECISIONS)
    assert status.tolist() == ["undecided", "undecided", "relabel", "undecided", "undecided",
                               "keep", "undecided", "remove", "undecided", "relabel"]  # fmt: skip


def test_export_json_reads_back():
    payload = export_json(DECISIONS)
    assert parse_decisions(payload) == DECISIONS
    assert list(json.loads(payload)["decisions"]) == ["2", "5", "7", "9"]


def test_export_csv_contents():
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    predictions = np.array([0, 1, 1, 0, 1, 2, 0, 1, 2, 0])
    self_influence = np.linspace(0, 0.9, 10)
    payload = export_csv(DECISIONS, labels, ["a", "b", "c"], predictions, self_influence)
    rows = list(csv.DictReader(io.StringIO(payload.decode())))
    assert [row["train_index"] for row in rows] == ["2", "5", "7", "9"]
    assert rows[0] == {
        "train_index": "2", "action": "relabel", "new_label": "1", "new_class": "b",
        "given_label": "2", "given_class": "c", "predicted_label": "1", "predicted_class": "b",
        "self_influence": "0.2", "updated": "2024-01-01T00:00:01+00:00",
    }  # fmt: skip
    assert rows[2]["new_label"] == "" and rows[2]["new_class"] == ""


def test_export_csv_minimal():
    header = export_csv({}).decode().strip()
    assert header == "train_index,action,new_label,updated"


def test_suspicion_kinds():
    self_influence = np.array([5.0, 1.0, 3.0, 0.5])
    labels = np.array([0, 0, 1, 1])
    predictions = np.array([0, 1, 1, 0])
    assert suspicion(self_influence, labels, predictions, "self_influence").tolist() == [
        5.0, 1.0, 3.0, 0.5]  # fmt: skip
    combined = suspicion(self_influence, labels, predictions)
    assert np.argsort(-combined).tolist() == [1, 3, 0, 2]  # disagreements first, then by SI
    with pytest.raises(ConfigError, match="suspicion must be one of"):
        suspicion(self_influence, labels, predictions, "loss")


def test_review_queue_ranks_and_shows_status():
    self_influence = np.array([5.0, 1.0, 3.0, 0.5])
    labels = np.array([0, 0, 1, 1])
    predictions = np.array([0, 1, 1, 0])
    decisions = {3: Decision("relabel", 0)}
    queue = review_queue(self_influence, labels, predictions, decisions,
                         kind="self_influence", class_names=["x", "y"])  # fmt: skip
    assert queue["train_index"].tolist() == [0, 2, 1, 3]
    assert queue["rank"].tolist() == [1, 2, 3, 4]
    assert queue["status"].tolist() == ["undecided"] * 3 + ["relabel"]
    assert queue["new_label"].tolist()[-1] == 0 and queue["given_class"].tolist()[0] == "x"
    assert queue["disagrees"].tolist() == [False, False, True, True]
    open_only = review_queue(self_influence, labels, predictions, decisions, include_decided=False)
    assert open_only["train_index"].tolist() == [1, 0, 2]
