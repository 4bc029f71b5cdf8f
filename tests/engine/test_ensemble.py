"""Runs over several checkpoints: exact combination of per-checkpoint runs, reuse, the top level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import rankdata
from torch import nn
from torch.utils.data import TensorDataset

from dropinf.core import CompressionConfig, cross_entropy_per_sample
from dropinf.engine import (
    CheckpointInfo,
    EnsembleEngine,
    InfluenceEngine,
    combine_scores,
    fit_ensemble,
)
from dropinf.engine.ensemble import CheckpointProgress
from dropinf.errors import ConfigError, IncompleteRunError, RunConfigMismatchError
from dropinf.review import RunReview, leave_one_out_loss
from dropinf.run import EnsembleStore, RunStore, ensemble_section

EXACT = CompressionConfig(method="identity")


def make_mlp(seed: int, hidden: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 3)).double()


def make_data(n: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn((n, 6), generator=generator, dtype=torch.float64)
    return TensorDataset(inputs, torch.randint(0, 3, (n,), generator=generator))


TRAIN, TEST = make_data(40, 0), make_data(7, 1)


def infos(count: int) -> list[CheckpointInfo]:
    return [
        CheckpointInfo(name=f"epoch-{i}.pt", epoch=i, learning_rate=0.1 / (i + 1))
        for i in range(count)
    ]


def ensemble(run_dir: Path, combination: str = "rank", **options: object) -> EnsembleEngine:
    models = [make_mlp(seed) for seed in range(3)]
    return EnsembleEngine(
        models, cross_entropy_per_sample, EXACT, run_dir=run_dir, dtype=torch.float64,
        checkpoints=infos(3), combination=combination, **options,
    )  # fmt: skip


def single_runs(tmp_path: Path) -> list[InfluenceEngine]:
    """The reference: each model's own run, fitted apart."""
    return [
        InfluenceEngine(
            make_mlp(seed), cross_entropy_per_sample, EXACT, run_dir=tmp_path / f"single-{seed}",
            dtype=torch.float64,
        ).fit(TRAIN, 16, TEST)
        for seed in range(3)
    ]  # fmt: skip


# ------------------------------------------------------------------------ combinations


def test_rank_combination_is_the_mean_share_rank() -> None:
    scores = np.array([[3.0, 1.0, 2.0, 2.0], [10.0, 40.0, 20.0, 30.0]])
    expected = (np.array([4, 1, 2.5, 2.5]) / 4 + np.array([1, 4, 2, 3]) / 4) / 2
    np.testing.assert_allclose(combine_scores(scores, "rank"), expected)


def test_standardised_combination_is_the_mean_z_score() -> None:
    scores = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])  # a constant checkpoint adds zeros
    z = (scores[0] - 2.0) / np.std([1.0, 2.0, 3.0])
    np.testing.assert_allclose(combine_scores(scores, "standardised"), z / 2)


def test_tracin_combination_weights_by_learning_rate() -> None:
    scores = np.array([[1.0, 2.0], [3.0, 8.0]])
    combined = combine_scores(scores, "tracin", [3.0, 1.0])
    np.testing.assert_allclose(combined, [(3 * 1 + 3) / 4, (3 * 2 + 8) / 4])
    np.testing.assert_allclose(combine_scores(scores, "tracin"), [2.0, 5.0])


def test_combinations_act_on_the_last_axis_per_row() -> None:
    scores = np.random.default_rng(0).normal(size=(3, 4, 9))  # (C, n_test, n_train)
    combined = combine_scores(scores, "rank")
    row = combine_scores(scores[:, 2, :], "rank")
    assert combined.shape == (4, 9)
    np.testing.assert_allclose(combined[2], row)


@pytest.mark.parametrize(
    ("combination", "weights"), [("median", None), ("tracin", [1.0]), ("tracin", [-1.0, 2.0])]
)
def test_bad_combinations_are_refused(combination: str, weights: list[float] | None) -> None:
    with pytest.raises(ConfigError):
        combine_scores(np.ones((2, 3)), combination, weights)


# ------------------------------------------------------------------------------- runs


@pytest.mark.parametrize("combination", ["rank", "standardised", "tracin"])
def test_ensemble_equals_the_combination_of_separate_runs(tmp_path: Path, combination: str) -> None:
    references = single_runs(tmp_path)
    engine = ensemble(tmp_path / "run", combination).fit(TRAIN, 16, TEST)
    weights = [info.learning_rate for info in infos(3)]
    per_checkpoint = np.stack([r.self_influence().numpy() for r in references])
    np.testing.assert_allclose(engine.checkpoint_self_influence().numpy(), per_checkpoint)
    expected = combine_scores(per_checkpoint, combination, weights)
    np.testing.assert_allclose(engine.self_influence().numpy(), expected, rtol=1e-12)
    losses = np.stack([r.store.train_metadata()["loss"] for r in references])
    expected_loo = combine_scores(
        np.stack(
            [leave_one_out_loss(si, loss) for si, loss in zip(per_checkpoint, losses, strict=True)]
        ),
        combination,
        weights,
    )
    np.testing.assert_allclose(engine.leave_one_out_loss().numpy(), expected_loo, rtol=1e-12)
    pairwise = np.stack([r.pairwise_scores(TEST).numpy() for r in references])
    expected_pairwise = combine_scores(pairwise, combination, weights)
    np.testing.assert_allclose(engine.pairwise_scores(TEST).numpy(), expected_pairwise)
    np.testing.assert_allclose(RunStore(tmp_path / "run").test_scores(), expected_pairwise, 1e-6)


def test_an_ensemble_of_one_model_with_tracin_is_that_model(tmp_path: Path) -> None:
    single = single_runs(tmp_path)[0]
    engine = fit_ensemble(
        [make_mlp(0)], cross_entropy_per_sample, TRAIN, tmp_path / "run", batch_size=16,
        compression=EXACT, dtype=torch.float64, combination="tracin",
    )  # fmt: skip
    np.testing.assert_allclose(engine.self_influence().numpy(), single.self_influence().numpy())


def test_top_level_opens_as_a_run_reviewed_by_the_ensemble(tmp_path: Path) -> None:
    engine = ensemble(tmp_path / "run").fit(TRAIN, 16, TEST)
    store = RunStore(tmp_path / "run")
    last = engine.engines[-1]
    assert store.is_complete()
    np.testing.assert_array_equal(store.gradients(), last.store.gradients())
    np.testing.assert_array_equal(
        store.train_metadata()["loss"], last.store.train_metadata()["loss"]
    )
    review = RunReview(store)
    queue = review.queue()
    ranking = engine.leave_one_out_loss().numpy()
    np.testing.assert_array_equal(queue["train_index"], np.argsort(-ranking, kind="stable"))
    np.testing.assert_allclose(
        queue["self_influence"], engine.self_influence()[queue["train_index"]]
    )
    assert review.ensemble["checkpoint_self_influence"].shape == (3, len(TRAIN))
    reopened = InfluenceEngine.load(tmp_path / "run", make_mlp(2), cross_entropy_per_sample)
    batch = TEST[:3]
    np.testing.assert_allclose(reopened.query(batch), last.query(batch))


def test_manifest_records_the_checkpoints_and_the_combination(tmp_path: Path) -> None:
    ensemble(tmp_path / "run", "standardised").fit(TRAIN, 16)
    section = ensemble_section(RunStore(tmp_path / "run").read_manifest())
    assert section["combination"] == "standardised"
    assert [c["run"] for c in section["checkpoints"]] == ["00-epoch-0", "01-epoch-1", "02-epoch-2"]
    assert [c["epoch"] for c in section["checkpoints"]] == [0, 1, 2]
    assert section["gradients_of"] == "02-epoch-2"
    for entry in section["checkpoints"]:
        sub = RunStore(tmp_path / "run" / "checkpoints" / entry["run"]).read_manifest()
        assert sub["status"] == "complete"
        assert sub["model_fingerprint"] == entry["model_fingerprint"]


def test_a_complete_ensemble_is_reused_and_another_refused(tmp_path: Path) -> None:
    ensemble(tmp_path / "run").fit(TRAIN, 16)
    updated = RunStore(tmp_path / "run").read_manifest()["updated"]
    ensemble(tmp_path / "run").fit(TRAIN, 16)
    assert RunStore(tmp_path / "run").read_manifest()["updated"] == updated
    with pytest.raises(RunConfigMismatchError, match="combination"):
        ensemble(tmp_path / "run", "standardised").fit(TRAIN, 16)
    with pytest.raises(RunConfigMismatchError):
        ensemble(tmp_path / "run").fit(make_data(40, 5), 16)


def test_overwrite_recombines_and_reuses_the_checkpoints_runs(tmp_path: Path) -> None:
    ensemble(tmp_path / "run").fit(TRAIN, 16)
    sub = RunStore(tmp_path / "run" / "checkpoints" / "00-epoch-0")
    sub_updated = sub.read_manifest()["updated"]
    engine = ensemble(tmp_path / "run", "standardised", overwrite=True).fit(TRAIN, 16)
    assert sub.read_manifest()["updated"] == sub_updated
    expected = combine_scores(engine.checkpoint_self_influence().numpy(), "standardised")
    np.testing.assert_allclose(RunStore(tmp_path / "run").self_influence(), expected, rtol=1e-6)


def test_an_interrupted_ensemble_resumes_without_recomputing_done_checkpoints(
    tmp_path: Path,
) -> None:
    engine = ensemble(tmp_path / "run").fit(TRAIN, 16)
    expected = engine.self_influence().numpy()
    top = RunStore(tmp_path / "run")
    EnsembleStore(top).scores_path.unlink()
    top.update_manifest(status="cancelled")
    subs = [e.store.read_manifest()["updated"] for e in engine.engines]
    resumed = ensemble(tmp_path / "run").fit(TRAIN, 16)
    assert [e.store.read_manifest()["updated"] for e in resumed.engines] == subs
    np.testing.assert_allclose(resumed.self_influence().numpy(), expected)
    assert top.is_complete()


def test_a_plain_run_is_never_taken_for_an_unfinished_ensemble(tmp_path: Path) -> None:
    top = RunStore(tmp_path / "run")
    engine = ensemble(tmp_path / "run")
    with top.writer_lock():
        engine._open_top(engine.signature(len(TRAIN), "fp"), None)
    with pytest.raises(RunConfigMismatchError, match="model_fingerprint"):
        InfluenceEngine(make_mlp(2), cross_entropy_per_sample, EXACT, run_dir=top.run_dir,
                        dtype=torch.float64).fit(TRAIN, 16)  # fmt: skip


def test_reloaded_ensemble_scores_like_the_fitted_one(tmp_path: Path) -> None:
    engine = ensemble(tmp_path / "run").fit(TRAIN, 16)
    models = [make_mlp(seed) for seed in range(3)]
    reloaded = EnsembleEngine.load(tmp_path / "run", models, cross_entropy_per_sample)
    np.testing.assert_allclose(reloaded.query(TEST[:4]), engine.query(TEST[:4]))
    with pytest.raises(RunConfigMismatchError, match="expected 3 models"):
        EnsembleEngine.load(tmp_path / "run", models[:2], cross_entropy_per_sample)


def test_scores_before_fit_are_refused(tmp_path: Path) -> None:
    with pytest.raises(IncompleteRunError):
        ensemble(tmp_path / "run").self_influence()


def test_models_of_different_architectures_are_refused() -> None:
    with pytest.raises(ConfigError, match="model 1"):
        EnsembleEngine([make_mlp(0), make_mlp(1, hidden=4)], cross_entropy_per_sample)
    with pytest.raises(ConfigError, match="one description per model"):
        EnsembleEngine([make_mlp(0)], cross_entropy_per_sample, checkpoints=infos(2))
    with pytest.raises(ConfigError, match="at least one model"):
        EnsembleEngine([], cross_entropy_per_sample)


def test_progress_names_the_checkpoint_at_the_top_level(tmp_path: Path) -> None:
    top, sub = RunStore(tmp_path / "run"), RunStore(tmp_path / "run" / "checkpoints" / "01-x")
    sub.run_dir.mkdir(parents=True)
    CheckpointProgress(sub, top, 1, 3, "01-x").write("gradients", 10, 40, 5.0)
    progress = top.read_progress()
    assert progress["phase"] == "gradients" and progress["done"] == 10
    assert (progress["checkpoint"], progress["checkpoint_index"], progress["checkpoints"]) == (
        "01-x", 1, 3,
    )  # fmt: skip
    assert sub.read_progress()["done"] == 10
    ensemble(tmp_path / "full").fit(TRAIN, 16)
    done = EnsembleStore(RunStore(tmp_path / "full")).read_checkpoint_progress()
    assert (done["done"], done["total"]) == (3, 3)


def test_rank_reference_uses_average_ranks() -> None:
    values = np.array([[0.5, 0.5, 2.0]])
    np.testing.assert_allclose(combine_scores(values, "rank"), rankdata(values[0]) / 3)
