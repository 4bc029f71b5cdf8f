from __future__ import annotations

import csv
import io
import json
import os
import threading

import numpy as np
import pytest
import torch

from dropinf import metrics as evaluate
from dropinf.errors import ConfigError, MissingFileError, RunError
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
    self_influence = np.array([50.0, 10.0, 30.0, 5.0])
    losses = np.array([0.1, 2.0, 0.2, 0.5])
    assert suspicion(self_influence, losses, "self_influence").tolist() == [50.0, 10.0, 30.0, 5.0]
    held_out = suspicion(self_influence, losses)
    np.testing.assert_allclose(held_out, [12.6, 4.5, 7.7, 1.75])  # loss + SI / N, N = 4
    with pytest.raises(ConfigError, match="suspicion must be one of"):
        suspicion(self_influence, losses, "disagreement")


def _fit_logistic(inputs, labels, weight_decay, start=None):
    """Full-batch L-BFGS to convergence of mean cross-entropy + weight_decay/2 · ||w||²."""
    model = torch.nn.Linear(inputs.shape[1], 3)
    if start is not None:
        model.load_state_dict(start)
    optimizer = torch.optim.LBFGS(
        model.parameters(), max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        optimizer.zero_grad()
        penalty = sum(p.pow(2).sum() for p in model.parameters())
        loss = torch.nn.functional.cross_entropy(model(inputs), labels) + weight_decay / 2 * penalty
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def test_leave_one_out_loss_tracks_retraining_without_the_example():
    from dropinf.core import CompressionConfig, CurvatureConfig, cross_entropy_per_sample
    from dropinf.engine import InfluenceEngine

    torch.set_default_dtype(torch.float64)
    try:
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(60, 4, generator=generator)
        labels = (inputs[:, 0] > 0).long() + (inputs[:, 1] > 0.5).long()
        labels[:6] = (labels[:6] + 1) % 3  # a few wrong labels
        weight_decay = 0.05
        model = _fit_logistic(inputs, labels, weight_decay)
        dataset = torch.utils.data.TensorDataset(inputs, labels)
        engine = InfluenceEngine(
            model, cross_entropy_per_sample, CompressionConfig(method="identity"),
            CurvatureConfig(kind="full", damping=weight_decay), dtype=torch.float64,
        ).fit(dataset)  # fmt: skip
        losses = engine.store.train_metadata()["loss"]
        estimate = suspicion(engine.self_influence().numpy(), losses)
        actual = []
        for i in range(len(labels)):
            keep = torch.arange(len(labels)) != i
            refit = _fit_logistic(inputs[keep], labels[keep], weight_decay, model.state_dict())
            with torch.no_grad():
                logits = refit(inputs[i : i + 1])
            actual.append(float(torch.nn.functional.cross_entropy(logits, labels[i : i + 1])))
    finally:
        torch.set_default_dtype(torch.float32)
    actual = np.array(actual)
    assert evaluate.rowwise_spearman(estimate[None], actual[None])[0] > 0.99  # measured 0.9987
    error, error_of_loss = np.abs(estimate - actual).mean(), np.abs(losses - actual).mean()
    assert error < 0.3 * error_of_loss  # measured 0.026 vs 0.126: the SI / N term is the gap


def test_review_queue_ranks_and_shows_status():
    self_influence = np.array([5.0, 1.0, 3.0, 0.5])
    labels = np.array([0, 0, 1, 1])
    predictions = np.array([0, 1, 1, 0])
    decisions = {3: Decision("relabel", 0)}
    losses = np.zeros(4)
    queue = review_queue(self_influence, losses, labels, predictions, decisions,
                         kind="self_influence", class_names=["x", "y"])  # fmt: skip
    assert queue["train_index"].tolist() == [0, 2, 1, 3]
    assert queue["rank"].tolist() == [1, 2, 3, 4]
    assert queue["status"].tolist() == ["undecided"] * 3 + ["relabel"]
    assert queue["new_label"].tolist()[-1] == 0 and queue["given_class"].tolist()[0] == "x"
    assert queue["disagrees"].tolist() == [False, False, True, True]
    open_only = review_queue(self_influence, np.array([0.0, 9.0, 0.0, 0.0]), labels, predictions,
                             decisions, include_decided=False)  # fmt: skip
    assert open_only["train_index"].tolist() == [1, 0, 2], "a high loss leads"


# ---------------------------------------------------------------- flags


def test_flags_persist_newest_first_and_keep_decisions(tmp_path):
    from dropinf.review import load_flags, update_flags

    assert load_flags(tmp_path) == []
    save_decisions(tmp_path, DECISIONS)
    assert update_flags(tmp_path, add=[4, 3]) == [4, 3]
    assert update_flags(tmp_path, add=[8, 3]) == [8, 3, 4]
    assert update_flags(tmp_path, remove=[4, 99]) == [8, 3]
    assert load_flags(tmp_path) == [8, 3] and load_decisions(tmp_path) == DECISIONS
    assert json.loads(decisions_path(tmp_path).read_text())["flags"] == [8, 3]


def test_decision_updates_keep_the_flags(tmp_path):
    from dropinf.review import load_flags, update_flags

    update_flags(tmp_path, add=[1, 2])
    update_decisions(tmp_path, {2: Decision("keep")})
    save_decisions(tmp_path, {5: Decision("remove")})
    assert load_flags(tmp_path) == [1, 2]
    save_decisions(tmp_path, {}, flags=[])
    assert load_flags(tmp_path) == []


def test_flags_never_become_fixes(tmp_path):
    from dropinf.review import update_flags

    update_flags(tmp_path, add=[0, 1, 2])
    update_decisions(tmp_path, {1: Decision("keep")})
    assert fixes_from_decisions(load_decisions(tmp_path)) == ([], {})
    assert set(load_decisions(tmp_path)) == {1}


def test_files_without_flags_and_malformed_flags(tmp_path):
    from dropinf.review import load_flags, parse_flags

    path = decisions_path(tmp_path)
    path.write_text('{"format": 1, "decisions": {}}')
    assert load_flags(path) == [] and load_decisions(path) == {}
    cases = [('{"format": 1, "decisions": {}, "flags": 3}', "'flags' list"),
             ('{"format": 1, "decisions": {}, "flags": ["a"]}', "indices")]  # fmt: skip
    for text, message in cases:
        with pytest.raises(RunError, match=message):
            parse_flags(text)


def test_exports_include_flags():
    from dropinf.review import parse_flags

    payload = export_json(DECISIONS, [3, 7])
    assert parse_decisions(payload) == DECISIONS and parse_flags(payload) == [3, 7]
    rows = list(csv.DictReader(io.StringIO(export_csv(DECISIONS, flags=[3, 7]).decode())))
    assert [r["train_index"] for r in rows] == ["2", "3", "5", "7", "9"]
    flagged_only = rows[1]
    assert flagged_only["action"] == "flag" and flagged_only["flagged"] == "True"
    assert rows[3]["action"] == "remove" and rows[3]["flagged"] == "True"
    assert rows[0]["flagged"] == "False"
    assert "flagged" not in export_csv(DECISIONS).decode().splitlines()[0]


def test_review_status_shows_flags_until_decided():
    status = review_status(10, DECISIONS, flags=[0, 7])
    assert status[0] == "flagged" and status[7] == "remove" and status[1] == "undecided"


def test_review_queue_puts_flagged_first_in_flag_order():
    self_influence = np.array([5.0, 1.0, 3.0, 0.5, 4.0])
    labels = predictions = np.zeros(5, dtype=int)
    losses = np.zeros(5)
    queue = review_queue(self_influence, losses, labels, predictions, {1: Decision("keep")},
                         kind="self_influence", flags=[3, 1])  # fmt: skip
    assert queue["train_index"].tolist() == [3, 1, 0, 4, 2]
    assert queue["flagged"].tolist() == [True, True, False, False, False]
    assert queue["rank"].tolist() == [5, 4, 1, 2, 3]
    pending = review_queue(self_influence, losses, labels, predictions, {1: Decision("keep")},
                           kind="self_influence", include_decided=False, flags=[3, 1])  # fmt: skip
    assert pending["train_index"].tolist() == [3, 0, 4, 2]


# ---------------------------------------------------------------- what the pages show


def test_suspect_mask():
    from dropinf.review import suspect_mask

    labels, predictions = np.array([0, 1, 2, 0, 1]), np.array([0, 2, 2, 0, 1])
    mask = suspect_mask(labels, predictions, {3: Decision("keep")}, flags=[4])
    assert mask.tolist() == [False, True, False, True, True]
    assert suspect_mask(labels, predictions, {}).tolist() == [False, True, False, False, False]


def test_mislabel_scores_lead_with_the_queue_order():
    from dropinf.review import mislabel_scores

    scores = mislabel_scores(np.array([6.0, 3.0, 3.0]), np.array([0.1, 0.1, 3.0]))
    assert list(scores) == ["mislabel score (queue order)", "self-influence", "training loss"]
    assert np.argsort(-scores["mislabel score (queue order)"]).tolist() == [2, 0, 1]
    assert scores["self-influence"].tolist() == [6.0, 3.0, 3.0]


def test_decided_flips():
    from dropinf.review import decided_flips

    noisy = np.array([False, False, True, False, False, False, False, True, False, False])
    assert decided_flips(DECISIONS, noisy) == (2, 4)
    assert decided_flips({}, noisy) == (0, 0)


def test_retrain_report(tmp_path):  # the retrain command line: tests/test_cli.py
    from dropinf.review import load_retrain_report, retrain_report_path

    assert load_retrain_report(tmp_path) is None
    retrain_report_path(tmp_path).write_text('{"summary": {}}')
    assert load_retrain_report(tmp_path) == {"summary": {}}
    retrain_report_path(tmp_path).write_text("{half")
    with pytest.raises(RunError, match="not valid JSON"):
        load_retrain_report(tmp_path)


def test_a_named_decisions_file_must_exist(tmp_path):
    assert load_decisions(tmp_path / "missing.json") == {}  # a run not reviewed yet
    with pytest.raises(MissingFileError, match="found no file"):
        load_decisions(tmp_path / "missing.json", missing_ok=False)
