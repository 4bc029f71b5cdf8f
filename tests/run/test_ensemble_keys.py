"""Run keys of runs over several checkpoints, and the single-checkpoint key kept exactly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from dropinf.core import CompressionConfig, CurvatureConfig
from dropinf.errors import ConfigError
from dropinf.run import RunRequest, run_key

SHA = ["a1" * 32, "b2" * 32, "c3" * 32]
DATA = "dd" * 32


def single(**fields: object) -> RunRequest:
    return RunRequest(Path("/m/last.pt"), "digits", CompressionConfig(keep_ratio=0.5),
                      CurvatureConfig(kind="block"), **fields)  # type: ignore[arg-type]  # fmt: skip


def trajectory(combination: str | None = "tracin", count: int = 3, **fields: object) -> RunRequest:
    paths = tuple(Path(f"/m/epoch-{i}.pt") for i in range(count))
    return single(checkpoints=paths, combination=combination, **fields)


def key_before_ensembles(request: RunRequest, sha: str, data: str) -> str:
    """The key as dropinf spelled it before runs over several checkpoints existed."""
    identity = {
        "checkpoint_sha256": sha,
        "data_fingerprint": data,
        "compression": request.compression.to_dict(),
        "curvature": request.curvature.to_dict(),
    }
    if request.arch is not None:
        identity["architecture"] = {"arch": request.arch, "arch_args": request.arch_args or {}}
    encoded = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


@pytest.mark.parametrize("fields", [{}, {"arch": "mlp", "arch_args": {"hidden_sizes": [8]}}])
def test_a_single_checkpoint_keeps_its_key_exactly(fields: dict) -> None:
    request = single(**fields)
    expected = key_before_ensembles(request, SHA[0], DATA)
    assert run_key(request, SHA[0], DATA) == expected
    assert run_key(request, [SHA[0]], DATA) == expected  # a list of one is the same run
    one = single(checkpoints=(Path("/m/last.pt"),), combination="rank", **fields)
    assert run_key(one, SHA[0], DATA) == expected  # one checkpoint: no ensemble, no combination


def test_an_ensemble_key_names_every_checkpoint_in_order_and_the_combination() -> None:
    key = run_key(trajectory(), SHA, DATA)
    assert len(key) == 16 and key != run_key(single(), SHA[-1], DATA)
    assert run_key(trajectory(), SHA[::-1], DATA) != key  # order matters
    assert run_key(trajectory(), [SHA[0], SHA[1], "ff" * 32], DATA) != key
    assert run_key(trajectory("rank"), SHA, DATA) != key
    assert run_key(trajectory(count=2), SHA[:2], DATA) != key
    assert run_key(trajectory(), SHA, "ee" * 32) != key
    # where the files are, the device and the batch size do not name the run
    moved = RunRequest(Path("/x/z.pt"), "digits:seed=0", CompressionConfig(keep_ratio=0.5),
                       CurvatureConfig(kind="block"), device="cuda", batch_size=7,
                       checkpoints=(Path("/x/a"), Path("/x/b"), Path("/x/z.pt")),
                       combination="tracin")  # fmt: skip
    assert run_key(moved, SHA, DATA) == key


def test_ensemble_keys_refuse_what_does_not_fit() -> None:
    with pytest.raises(
        ConfigError, match="one sha256 per checkpoint of the request \\(3\\), found 2"
    ):
        run_key(trajectory(), SHA[:2], DATA)
    with pytest.raises(ConfigError, match="found 3"):
        run_key(single(), SHA, DATA)
    with pytest.raises(ConfigError, match="combination: expected"):
        run_key(trajectory(None), SHA, DATA)
