"""Tests of bench/ensemble_lds.py: the trajectory, the combined rows and a tiny run end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench import ensemble_lds
from bench.peers_setting import SMOKE, load_setting, make_recipe, train
from dropinf.engine import COMBINATIONS, combine_scores


def test_trajectory_keeps_the_schedule_and_ends_with_the_trained_model():
    bundle = load_setting(SMOKE, "symmetric", 0)
    recipe = make_recipe("mlp", bundle, 3)
    trajectory = ensemble_lds.train_trajectory(recipe, bundle, None)
    assert trajectory.epochs == [1, 2, 3] and len(trajectory.models) == 3
    final = train(recipe, bundle)
    for kept, trained in zip(
        trajectory.models[-1].state_dict().values(), final.state_dict().values(), strict=True
    ):
        assert torch.equal(kept, trained)
    first, last = trajectory.models[0].state_dict(), trajectory.models[-1].state_dict()
    assert any(not torch.equal(first[name], last[name]) for name in first)
    assert ensemble_lds.train_trajectory(recipe, bundle, 2).epochs == [2, 3]


def ensemble_scores() -> ensemble_lds.EnsembleScores:
    rng = np.random.default_rng(0)
    return ensemble_lds.EnsembleScores(
        scores=rng.normal(size=(3, 4, 6)),
        self_influence=rng.random((3, 6)),
        losses=rng.random((3, 6)),
        fit_seconds=10.0,
        checkpoint_fit_seconds=np.array([2.0, 3.0, 4.0]),
        checkpoint_score_seconds=np.array([0.5, 0.25, 0.125]),
        weights=[1.0, 2.0, 3.0],
    )


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_combined_part_uses_its_checkpoints_weights_and_costs(combination):
    ensemble = ensemble_scores()
    later = ensemble.combined(slice(1, None), combination)
    expected = combine_scores(ensemble.scores[1:], combination, [2.0, 3.0])
    np.testing.assert_allclose(later.scores, expected)
    leave_one_out = ensemble.losses[1:] + ensemble.self_influence[1:] / 6
    np.testing.assert_allclose(
        later.leave_one_out, combine_scores(leave_one_out, combination, [2.0, 3.0])
    )
    assert later.seconds == pytest.approx(3.0 + 4.0 + 0.25 + 0.125)
    assert ensemble.combined(slice(None), combination).seconds == pytest.approx(10.875)


def test_verdict_compares_the_best_ensemble_with_the_reference_peer():
    def result(combination: str, lds: float) -> dict:
        return {"scores_from": "all checkpoints", "combination": combination, "lds": lds,
                "seconds": 1.0}  # fmt: skip

    setting = {
        "setting": "mlp · symmetric · seed 0",
        "arch": "mlp",
        "rows": [result("—", 0.5), result("rank", 0.6), result("tracin", 0.671)],
    }
    lines = ensemble_lds.verdict(setting)
    assert "best ensemble LDS 0.671 (tracin" in lines[0] and lines[0].endswith("**met**")
    setting["rows"][-1]["lds"] = 0.65
    assert ensemble_lds.verdict(setting)[0].endswith("**missed**")


@pytest.mark.slow
def test_smoke_run_prints_and_writes_every_row(tmp_path, capsys):
    out = tmp_path / "ensemble.json"
    argv = ["--smoke", "--archs", "mlp", "--subsets", "3", "--cache-dir", str(tmp_path / "cache")]
    assert ensemble_lds.main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    (setting,) = json.loads(out.read_text())["results"]
    epochs = setting["epochs"]
    assert epochs == [1, 2, 4, SMOKE.epochs]
    rows = setting["rows"]
    assert len(rows) == 1 + 2 * len(COMBINATIONS) + len(epochs)
    assert [r["scores_from"] for r in rows[:7]] == ["final model alone"] + [
        "all checkpoints"
    ] * 3 + ["later half"] * 3
    assert [r["epochs"] for r in rows[-len(epochs) :]] == [[e] for e in epochs]
    for result in rows:
        assert -1.0 <= result["lds"] <= 1.0 and result["seconds"] > 0
        # the 10 % flips, above chance (0.5) even for the smoke size's epoch-1 checkpoint
        assert 0.6 < result["auc_self_influence"] <= 1.0
        assert 0.6 < result["auc_leave_one_out"] <= 1.0
    # The final model alone is the ensemble's last checkpoint, scored the same way.
    assert setting["final_vs_last_checkpoint"] < 1e-6
    assert rows[0]["lds"] == rows[-1]["lds"]
    assert printed.count("| all checkpoints | 1, 2, 4, 5 |") == len(COMBINATIONS)
    assert "vs Kronfluence EK-FAC 0.670" in printed
    assert list((tmp_path / "cache").glob("lds-*.npz")), "the retrained subsets are cached"
