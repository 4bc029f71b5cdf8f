"""Demo presets (the default and the memorising one) and checkpoint schedules from training."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
import torch

from dropinf import paths
from dropinf.cli import build_parser, main
from dropinf.data import DEMO_DATA_SPEC
from dropinf.errors import ConfigError
from dropinf.models import (
    DEMO_PRESETS,
    DEMO_RECIPE,
    CheckpointSchedule,
    DemoPreset,
    TrainRecipe,
    checkpoint_epochs,
    demo_checkpoint_path,
    demo_checkpoints_dir,
    ensure_demo_checkpoint,
    load_checkpoint,
    sidecar_path,
    torch_threads,
    train_model,
)
from dropinf.models import demo as demo_module

TINY = TrainRecipe(arch="mlp", arch_args={"hidden_sizes": [16]}, epochs=5, batch_size=128)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Train on one thread, as the demo does: bit-stable."""
    with torch_threads(1):
        yield


def test_checkpoint_epochs_are_log_spaced_plus_the_last():
    assert checkpoint_epochs(1) == [1]
    assert checkpoint_epochs(2) == [1, 2]
    assert checkpoint_epochs(12) == [1, 2, 4, 8, 12]
    assert checkpoint_epochs(16) == [1, 2, 4, 8, 16]
    assert checkpoint_epochs(300) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]


def test_schedule_saves_normal_checkpoints_with_their_epoch(tmp_path, digits_bundle):
    schedule = CheckpointSchedule(tmp_path / "ckpts", TINY, digits_bundle)
    result = train_model(TINY, digits_bundle, "cpu", progress=False, on_epoch=schedule)
    plain = train_model(TINY, digits_bundle, "cpu", progress=False)
    names = sorted(path.name for path in (tmp_path / "ckpts").iterdir())
    assert names == [f"epoch-{e:04d}.safetensors{s}" for e in (1, 2, 4, 5) for s in ("", ".json")]
    for epoch, path in zip((1, 2, 4, 5), schedule.paths(), strict=True):
        loaded = load_checkpoint(path)
        assert loaded.extra["epoch"] == epoch and loaded.arch == "mlp"
        assert loaded.extra["recipe"] == TINY.to_dict()
        assert loaded.extra["data_fingerprint"] == digits_bundle.fingerprint
        assert set(loaded.extra["metrics"]) == {"train_accuracy", "test_accuracy", "test_loss"}
        assert json.loads(sidecar_path(path).read_text())["extra"]["epoch"] == epoch
    last = load_checkpoint(schedule.path(5)).model.state_dict()
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(last[name], tensor)  # the last checkpoint is the trained model
        assert torch.equal(plain.model.state_dict()[name], tensor)  # saving left training alone
    early = load_checkpoint(schedule.path(1)).extra["metrics"]["train_accuracy"]
    assert early < result.train_accuracy
    assert schedule.is_complete()


def test_schedule_refuses_a_folder_that_is_not_new_or_empty(tmp_path, digits_bundle):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"new or empty folder .* found 1 entries \(notes.txt\)"):
        CheckpointSchedule(tmp_path / "used", TINY, digits_bundle)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="expected a folder for the checkpoints"):
        CheckpointSchedule(tmp_path / "file", TINY, digits_bundle)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "epoch-0001.safetensors").write_text("an earlier run")
    with pytest.raises(ConfigError, match="new or empty folder"):
        CheckpointSchedule(tmp_path / "old", TINY, digits_bundle)
    assert (tmp_path / "used" / "notes.txt").read_text() == "mine"


def test_cli_train_saves_checkpoints(tmp_path, capsys):
    out, folder = tmp_path / "m.safetensors", tmp_path / "ckpts"
    argv = ["train", "--data", "digits", "--arch", "mlp", "--epochs", "3", "--out", str(out),
            "--save-checkpoints", str(folder)]  # fmt: skip
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["checkpoints"] == [str(folder / f"epoch-000{e}.safetensors") for e in (1, 2, 3)]
    assert [load_checkpoint(p).extra["epoch"] for p in printed["checkpoints"]] == [1, 2, 3]
    assert load_checkpoint(out).sha256 != load_checkpoint(folder / "epoch-0001.safetensors").sha256
    assert main(argv) == 2  # the folder is no longer empty: nothing is overwritten
    assert capsys.readouterr().err.startswith("error: expected a new or empty folder")


def test_demo_flag_names_a_preset():
    parser = build_parser()
    assert parser.parse_args(["train", "--demo"]).demo == "default"
    assert parser.parse_args(["train", "--demo", "memorising"]).demo == "memorising"
    assert parser.parse_args(["train", "--data", "digits"]).demo is None


def test_unknown_preset_is_refused(dropinf_home, capsys):
    assert main(["train", "--demo", "bogus"]) == 2
    assert "error: expected a demo preset in ['default', 'memorising'], found 'bogus'" in (
        capsys.readouterr().err
    )


def test_default_demo_path_is_unchanged_and_presets_differ(dropinf_home):
    key = json.dumps({"recipe": DEMO_RECIPE.to_dict(), "data": DEMO_DATA_SPEC, "threads": 1},
                     sort_keys=True)  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    assert (
        demo_checkpoint_path() == paths.demo_dir() / f"demo-small_cnn-digits-{digest}.safetensors"
    )
    memorising = demo_checkpoint_path("memorising")
    assert memorising.name.startswith("demo-memorising-mlp-digits-")
    assert demo_checkpoints_dir().name == f"demo-small_cnn-digits-{digest}-checkpoints"
    preset = DEMO_PRESETS["memorising"]
    assert preset.recipe.weight_decay == 0 and preset.recipe.arch_args == {
        "hidden_sizes": [256, 256]
    }
    assert preset.data_spec == "digits:noise=0.2,seed=0"


def test_demo_keeps_its_schedule_and_restores_it(dropinf_home, monkeypatch):
    tiny = DemoPreset("tiny", replace(TINY, epochs=3), "digits:noise=0.2,seed=0", "a test demo")
    monkeypatch.setitem(demo_module.DEMO_PRESETS, "tiny", tiny)
    path = ensure_demo_checkpoint(progress=False, preset="tiny")
    folder = demo_checkpoints_dir("tiny")
    kept = sorted(folder.glob("*.safetensors"))
    assert [load_checkpoint(p).extra["epoch"] for p in kept] == [1, 2, 3]
    digest = load_checkpoint(kept[1]).sha256
    kept[1].unlink()  # as if killed while writing the schedule
    assert ensure_demo_checkpoint(progress=False, preset="tiny") == path
    assert load_checkpoint(kept[1]).sha256 == digest  # retrained, byte-identical
    (folder / "stray.txt").write_text("not dropinf's")
    with pytest.raises(ConfigError, match=r"stray\.txt"):
        ensure_demo_checkpoint(progress=False, preset="tiny")


@pytest.mark.slow
def test_memorising_demo_memorises_and_influence_beats_the_loss(dropinf_home):
    """Measured: train accuracy 1.0; AUC of the loss 0.854, of the leave-one-out estimate 0.879."""
    import numpy as np
    from torch.nn import functional

    from dropinf.core import cross_entropy_per_sample
    from dropinf.data import load_data
    from dropinf.engine import InfluenceEngine
    from dropinf.metrics import roc_auc
    from dropinf.review import leave_one_out_loss

    checkpoint = load_checkpoint(ensure_demo_checkpoint(progress=False, preset="memorising"))
    assert checkpoint.extra["metrics"]["train_accuracy"] == 1.0
    assert len(list(demo_checkpoints_dir("memorising").glob("*.safetensors"))) == 10
    bundle = load_data(DEMO_PRESETS["memorising"].data_spec)
    with torch.no_grad():
        logits = checkpoint.model(bundle.train.inputs)
    losses = functional.cross_entropy(logits, bundle.train.labels, reduction="none").numpy()
    engine = InfluenceEngine(checkpoint.model, cross_entropy_per_sample).fit(bundle.train)
    estimate = leave_one_out_loss(engine.self_influence().numpy(), losses)
    loss_auc = roc_auc(losses, bundle.noisy_mask)
    estimate_auc = roc_auc(estimate, bundle.noisy_mask)
    assert loss_auc < 0.9 and estimate_auc > loss_auc + 0.01
    assert np.isfinite(estimate).all()
