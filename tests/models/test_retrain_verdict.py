"""Retrain verification: paired seeds, the interval and verdict, the "before" cache, progress."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dropinf.cli import main
from dropinf.models import (
    RETRAIN_PROGRESS_FILE,
    FixReport,
    TrainRecipe,
    paired_difference,
    retrain_with_fixes,
    save_trained,
    train_model,
)
from dropinf.models import retrain as retrain_module
from dropinf.review import Decision, save_decisions

TINY = TrainRecipe(arch="mlp", arch_args={"hidden_sizes": [16]}, epochs=2, batch_size=128)
T_975_DF2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2)


def report(before: list[float], after: list[float], n_test: int = 360) -> FixReport:
    return FixReport(
        seeds=list(range(len(before))), before_accuracy=before, after_accuracy=after,
        before_loss=[0.3] * len(before), after_loss=[0.2] * len(before), n_train_before=100,
        n_train_after=99, n_removed=1, n_relabeled=0, n_test=n_test,
    )  # fmt: skip


def test_paired_difference_is_a_t_interval_of_the_differences():
    change = paired_difference([1.0, 2.0, 3.0], [2.0, 2.0, 5.0])  # differences 1, 0, 2
    assert change["mean"] == pytest.approx(1.0)
    assert change["half_width"] == pytest.approx(T_975_DF2 * 1.0 / np.sqrt(3))
    assert (change["low"], change["high"]) == pytest.approx((1 - 2.4841, 1 + 2.4841), abs=1e-4)
    # The same seeds shifted alike: no spread of the differences, whatever the spread of each side.
    shifted = paired_difference([90.0, 95.0, 99.0], [91.0, 96.0, 100.0])
    assert (shifted["mean"], shifted["half_width"]) == pytest.approx((1.0, 0.0))
    assert paired_difference([97.0], [98.0]) == {
        "mean": 1.0, "half_width": None, "low": None, "high": None,
    }  # fmt: skip


def test_verdict_says_when_the_change_is_within_noise():
    noisy = report([0.9778, 0.9806, 0.9833], [0.9722, 0.9806, 0.9861])
    assert noisy.verdict().startswith("The change is within the noise of retraining: -0.1 ± 1.1 ")
    assert "over 3 seeds" in noisy.verdict() and "360 test examples" in noisy.verdict()
    better = report([0.90, 0.91, 0.92], [0.95, 0.955, 0.97])
    assert better.verdict().startswith("The fixes raised test accuracy beyond the noise")
    worse = report([0.95, 0.955, 0.97], [0.90, 0.91, 0.92])
    assert "lowered" in worse.verdict()
    assert "one seed cannot tell" in report([0.9], [0.95]).verdict()


def test_report_carries_the_interval_test_size_and_verdict():
    values = report([0.90, 0.91, 0.92], [0.95, 0.955, 0.97]).to_dict()
    assert values["n_test"] == 360 and values["verdict"].startswith("The fixes raised")
    assert "Student-t" in values["interval"]
    change = values["summary"]["accuracy_change"]
    assert change["mean"] == pytest.approx(14.5 / 3)  # points of accuracy
    assert values["summary"]["loss_change"]["mean"] == pytest.approx(-0.1)
    assert json.loads(json.dumps(values)) == values


def test_after_runs_use_each_seed_paired_with_before(digits_bundle, tmp_path):
    removals, relabels = [0, 1, 2], {3: 4}
    fixed = digits_bundle.with_fixes(removals, relabels)
    result = retrain_with_fixes(TINY, digits_bundle, removals, relabels, seeds=[0, 1, 2])
    for position, seed in enumerate([0, 1, 2]):
        alone = train_model(replace(TINY, seed=seed), fixed, "cpu", progress=False)
        assert result.after_loss[position] == alone.test_loss
        alone = train_model(replace(TINY, seed=seed), digits_bundle, "cpu", progress=False)
        assert result.before_loss[position] == alone.test_loss
    assert len(set(result.after_loss)) == 3  # each seed trains its own "after" model


def test_retraining_runs_on_one_thread(digits_bundle, monkeypatch):
    threads = []
    original = retrain_module.train_model

    def spy(*args, **kwargs):
        threads.append(torch.get_num_threads())
        return original(*args, **kwargs)

    monkeypatch.setattr(retrain_module, "train_model", spy)
    retrain_with_fixes(replace(TINY, epochs=1), digits_bundle, [0], {}, seeds=1)
    assert threads == [1, 1]


def test_before_results_are_cached_by_recipe_data_and_seed(digits_bundle, tmp_path, monkeypatch):
    trained = []
    original = retrain_module.train_model
    monkeypatch.setattr(
        retrain_module, "train_model",
        lambda recipe, data, *a, **k: trained.append((recipe.seed, data.fingerprint))
        or original(recipe, data, *a, **k),
    )  # fmt: skip
    cache = tmp_path / "cache"
    first = retrain_with_fixes(TINY, digits_bundle, [0], {}, seeds=2, cache_dir=cache)
    assert first.before_cached == [False, False] and len(trained) == 4
    trained.clear()
    again = retrain_with_fixes(TINY, digits_bundle, [5], {}, seeds=[1, 0, 2], cache_dir=cache)
    assert again.before_cached == [True, True, False]
    assert [seed for seed, _ in trained] == [2, 1, 0, 2]  # "before" of seed 2 only, then after
    assert again.before_loss[:2] == [first.before_loss[1], first.before_loss[0]]
    trained.clear()
    for recipe, data in ((replace(TINY, lr=2e-3), digits_bundle),
                         (TINY, digits_bundle.with_fixes([7], {}))):  # fmt: skip
        changed = retrain_with_fixes(recipe, data, [0], {}, seeds=1, cache_dir=cache)
        assert changed.before_cached == [False]


def test_a_corrupt_cache_entry_is_retrained(digits_bundle, tmp_path):
    cache = tmp_path / "cache"
    first = retrain_with_fixes(TINY, digits_bundle, [0], {}, seeds=1, cache_dir=cache)
    (entry,) = cache.glob("before-*.json")
    entry.write_text("{half")
    again = retrain_with_fixes(TINY, digits_bundle, [0], {}, seeds=1, cache_dir=cache)
    assert again.before_cached == [False] and again.before_loss == first.before_loss
    assert json.loads(entry.read_text())["test_loss"] == first.before_loss[0]


def test_progress_counts_epochs_with_an_estimate(digits_bundle):
    reports = []
    retrain_with_fixes(TINY, digits_bundle, [0], {}, seeds=2, on_progress=reports.append)
    assert set(reports[0]) == {"phase", "done", "total", "examples_per_s", "eta_s"}
    assert reports[0]["done"] == 0 and reports[0]["total"] == 2 * 2 * TINY.epochs
    assert [r["done"] for r in reports[1:-1]] == list(range(1, 9))
    assert {r["phase"] for r in reports[1:-1]} == {"before", "after"}
    assert all(r["eta_s"] is not None and r["eta_s"] >= 0 for r in reports[1:-1])
    assert reports[-1] == {"phase": "done", "done": 8, "total": 8, "examples_per_s": None,
                           "eta_s": None}  # fmt: skip


def test_cli_retrain_writes_the_verdict_progress_and_cache(digits_bundle, tmp_path, monkeypatch,
                                                          capsys):  # fmt: skip
    monkeypatch.setenv("DROPINF_HOME", str(tmp_path / "home"))
    result = train_model(TINY, digits_bundle, "cpu", progress=False)
    checkpoint = save_trained(tmp_path / "m.safetensors", result, TINY, digits_bundle)
    save_decisions(tmp_path / "decisions.json", {3: Decision("remove")})
    out = tmp_path / "run" / "retrain_report.json"
    argv = ["retrain", "--model", str(checkpoint), "--data", "digits", "--decisions",
            str(tmp_path / "decisions.json"), "--seeds", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["verdict"] in printed and '"accuracy_change"' in printed
    assert saved["n_test"] == 360 and saved["before_cached"] == [False, False]
    progress = json.loads((out.parent / RETRAIN_PROGRESS_FILE).read_text())
    assert progress["phase"] == "done" and progress["done"] == progress["total"] == 8
    assert main(argv) == 0
    assert json.loads(out.read_text())["before_cached"] == [True, True]
    assert main([*argv, "--no-cache"]) == 0
    assert json.loads(out.read_text())["before_cached"] == [False, False]
    assert list(Path(tmp_path / "home" / "retrain-cache").glob("before-*.json"))
