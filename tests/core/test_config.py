"""The configs' measured defaults: each curvature kind's damping ratio, the mask."""

from __future__ import annotations

import pytest

from dropinf.core import DEFAULT_DAMPING_RATIOS, CompressionConfig, CurvatureConfig


@pytest.mark.parametrize(("kind", "ratio"), [("full", 1.0), ("block", 1.0), ("ekfac", 0.1)])
def test_each_kind_has_its_own_default_damping_ratio(kind: str, ratio: float) -> None:
    assert CurvatureConfig().ratio_for(kind) == ratio == DEFAULT_DAMPING_RATIOS[kind]


def test_a_given_damping_ratio_applies_to_every_kind() -> None:
    config = CurvatureConfig(damping_ratio=0.3)
    assert {config.ratio_for(kind) for kind in ("full", "block", "kfac", "ekfac")} == {0.3}


def test_the_default_mask_is_uniform_and_round_trips() -> None:
    config = CompressionConfig()
    assert config.mask == "uniform"
    assert CurvatureConfig.from_dict(CurvatureConfig().to_dict()) == CurvatureConfig()
