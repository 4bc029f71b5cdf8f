"""Training: accuracy on digits, determinism, the cached demo checkpoint, retraining after fixes."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from dropinf.errors import ConfigError, DataModelMismatchError
from dropinf.models import (
    DEMO_RECIPE,
    TrainRecipe,
    build_model,
    demo_checkpoint_path,
    ensure_demo_checkpoint,
    evaluate,
    load_checkpoint,
    retrain_with_fixes,
    save_checkpoint,
    save_trained,
    sidecar_path,
    torch_threads,
    train_model,
)
from dropinf.models import demo as demo_module
from dropinf.models import training as train_module

# Measured with DEMO_RECIPE (small_cnn, 12 epochs, AdamW 1e-3, batch 64), one thread, seeds 0-4:
# clean digits test accuracy 0.969-0.972; the demo (10% symmetric noise) 0.961-0.983 (seed 0:
# 0.978). About 2.5 s of CPU per training.
CLEAN_TEST_ACCURACY_FLOOR = 0.96
DEMO_TEST_ACCURACY_FLOOR = 0.95
SHORT = replace(DEMO_RECIPE, epochs=2)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Train on one thread, as the demo does: bit-stable, and fast even on a busy machine."""
    with torch_threads(1):
        yield


def test_recipe_validation_and_round_trip():
    assert TrainRecipe.from_dict(DEMO_RECIPE.to_dict()) == DEMO_RECIPE
    with pytest.raises(ConfigError, match="epochs must be an integer >= 1"):
        TrainRecipe(epochs=0)
    with pytest.raises(ConfigError, match="lr must be a positive number"):
        TrainRecipe(lr=float("nan"))
    with pytest.raises(ConfigError, match=r"unknown train recipe keys \['momentum'\]"):
        TrainRecipe.from_dict({"momentum": 0.9})


def test_small_cnn_reaches_stated_accuracy_on_clean_digits(digits_bundle):
    result = train_model(DEMO_RECIPE, digits_bundle, device="cpu", progress=False)
    assert result.test_accuracy >= CLEAN_TEST_ACCURACY_FLOOR
    assert result.train_accuracy >= 0.98
    assert result.arch_args == {"in_channels": 1, "input_size": 8, "num_classes": 10}
    assert (result.test_accuracy, result.test_loss) == pytest.approx(
        evaluate(result.model, digits_bundle.test)
    )


def test_training_is_deterministic_for_a_seed(digits_bundle):
    first = train_model(SHORT, digits_bundle, device="cpu", progress=False)
    again = train_model(SHORT, digits_bundle, device="cpu", progress=False)
    other = train_model(replace(SHORT, seed=1), digits_bundle, device="cpu", progress=False)
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], tensor)
    assert (first.test_accuracy, first.test_loss) == (again.test_accuracy, again.test_loss)
    assert first.test_loss != other.test_loss


def test_recipe_that_does_not_fit_the_data_is_named(digits_bundle):
    recipe = replace(SHORT, arch_args={"in_channels": 3})
    with pytest.raises(DataModelMismatchError, match=r"cannot take inputs of shape \(1, 8, 8\)"):
        train_model(recipe, digits_bundle, device="cpu", progress=False)


def test_save_trained_records_provenance(tmp_path, digits_bundle):
    result = train_model(replace(SHORT, epochs=1), digits_bundle, device="cpu", progress=False)
    path = save_trained(tmp_path / "m.pt", result, replace(SHORT, epochs=1), digits_bundle)
    loaded = load_checkpoint(path)
    assert loaded.extra["data_fingerprint"] == digits_bundle.fingerprint
    assert loaded.extra["recipe"]["epochs"] == 1
    assert loaded.extra["metrics"]["test_accuracy"] == result.test_accuracy
    assert evaluate(loaded.model, digits_bundle.test) == pytest.approx(
        (result.test_accuracy, result.test_loss)
    )


@pytest.mark.slow
def test_demo_checkpoint_is_created_once_and_deterministic(dropinf_home, noisy_digits_bundle):
    threads = torch.get_num_threads()
    path = ensure_demo_checkpoint(progress=False)
    assert torch.get_num_threads() == threads  # the one-thread training restores the count
    assert path == demo_checkpoint_path() and path.parent == dropinf_home / "demo"
    loaded = load_checkpoint(path)
    assert loaded.arch == "small_cnn"
    assert loaded.extra["data_fingerprint"] == noisy_digits_bundle.fingerprint
    test_accuracy, _ = evaluate(loaded.model, noisy_digits_bundle.test)
    assert test_accuracy >= DEMO_TEST_ACCURACY_FLOOR
    modified = path.stat().st_mtime_ns
    assert ensure_demo_checkpoint(progress=False) == path
    assert path.stat().st_mtime_ns == modified  # cached, not retrained
    sidecar_path(path).unlink()  # as if killed between the two writes
    assert load_checkpoint(ensure_demo_checkpoint(progress=False)).sha256 == loaded.sha256


def test_truncated_demo_checkpoint_is_not_taken_for_complete(dropinf_home, monkeypatch):
    path = demo_checkpoint_path()
    save_checkpoint(
        path,
        build_model("mlp", input_dim=4, num_classes=2),
        "mlp",
        {"input_dim": 4, "num_classes": 2},
    )
    path.write_bytes(path.read_bytes()[:100])  # as if a copy was cut short
    retrained = []
    monkeypatch.setattr(demo_module, "train_model", lambda *a, **k: retrained.append(1) or _stop())
    with pytest.raises(RuntimeError, match="retraining started"):
        ensure_demo_checkpoint(progress=False)
    assert retrained == [1]


def _stop():
    raise RuntimeError("retraining started")


@pytest.mark.slow
def test_retrain_with_fixes_is_deterministic_and_reports(noisy_digits_bundle):
    bundle = noisy_digits_bundle
    flipped = np.flatnonzero(bundle.noisy_mask)
    removals = [int(i) for i in flipped[:40]]
    relabels = {int(i): int(bundle.clean_labels[i]) for i in flipped[40:80]}
    relabels[0] = int((bundle.clean_labels[0] + 1) % 10)  # one wrong "fix" of a clean label
    report = retrain_with_fixes(SHORT, bundle, removals, relabels, seeds=[0, 1])
    again = retrain_with_fixes(SHORT, bundle, removals, relabels, seeds=[0, 1])
    assert report.to_dict() == again.to_dict()
    assert json.loads(json.dumps(report.to_dict())) == report.to_dict()
    assert (report.n_train_before, report.n_train_after) == (1437, 1397)
    assert (report.n_removed, report.n_relabeled) == (40, 41)
    assert report.noise_truth == {
        "noisy_total": 144,
        "removed_noisy": 40,
        "relabeled_noisy": 40,
        "relabeled_to_clean": 40,
    }
    summary = report.summary()["after_accuracy"]
    assert summary["mean"] == pytest.approx(np.mean(report.after_accuracy))
    assert summary["std"] == pytest.approx(np.std(report.after_accuracy, ddof=1))
    assert report.before_accuracy[0] == pytest.approx(
        train_model(SHORT, bundle, device="cpu", progress=False).test_accuracy
    )


def test_retrain_seed_count_and_errors(digits_bundle):
    report = retrain_with_fixes(replace(SHORT, epochs=1), digits_bundle, [0], {}, seeds=1)
    assert report.seeds == [0] and report.summary()["before_accuracy"]["std"] == 0.0
    assert report.noise_truth is None
    with pytest.raises(ConfigError, match="at least one seed"):
        retrain_with_fixes(SHORT, digits_bundle, [], {}, seeds=[])


@pytest.mark.parametrize("device", ["bogus", "meta", 3.5])
def test_resolve_device_names_bad_devices(device):
    with pytest.raises(ConfigError, match="device must be"):
        train_module.resolve_device(device)
