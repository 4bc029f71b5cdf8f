"""Tests of bench/defaults.py: the verdict logic on known numbers, and a tiny run end to end."""

from __future__ import annotations

import json

import pytest

from bench import defaults


def result(
    mask: str, curvature: str, ratio: float, lds: float, seconds: float = 1.0, auc: float = 0.9
) -> dict:
    config = defaults.Config(mask, curvature, 0.25, ratio)
    return {
        **vars(config),
        "row": config.row,
        "lds": lds,
        "seconds": seconds,
        "k": 610,
        "peak_mb": 5.0,
        "auc": auc,
    }


def setting(*results: dict) -> dict:
    return {
        "setting": "mlp · symmetric · seed 0",
        "n_train": 300,
        "n_test": 40,
        "n_subsets": 4,
        "results": list(results),
    }


def test_grid_crosses_masks_curvatures_ratios_and_adds_ekfac_keeps():
    configs = defaults.grid(["energy", "uniform"], ["full", "ekfac"], [0.1, 1.0], 0.25, [0.5])
    assert len(configs) == 2 * 2 * 2 + 2 * 2
    extra = [c for c in configs if c.keep_ratio == 0.5]
    assert {c.curvature for c in extra} == {"ekfac"} and {c.mask for c in extra} == {
        "energy",
        "uniform",
    }


def test_grid_puts_exact_influence_first_at_every_ratio():
    configs = defaults.grid(["uniform"], ["full"], [0.1, 1.0], 0.25, [], exact=True)
    assert [(c.method, c.damping_ratio) for c in configs[:2]] == [
        ("identity", 0.1),
        ("identity", 1.0),
    ]
    assert all(c.exact for c in configs[:2]) and not any(c.exact for c in configs[2:])


def test_table_marks_only_the_best_ratio_of_each_row():
    table = defaults.markdown_table(
        setting(
            result("uniform", "full", 0.1, 0.50),
            result("uniform", "full", 1.0, 0.60),
            result("energy", "full", 0.1, 0.70),
            result("energy", "full", 1.0, 0.40),
        )
    )
    uniform_row = next(line for line in table.splitlines() if line.startswith("| uniform"))
    energy_row = next(line for line in table.splitlines() if line.startswith("| energy"))
    # the gap is the default ratio's (1 for full) minus the best
    assert "| 0.500 | **0.600** |" in uniform_row and uniform_row.endswith("| +0.000 | 0.900 |")
    assert "| **0.700** | 0.400 |" in energy_row and energy_row.endswith("| -0.300 | 0.900 |")


@pytest.mark.parametrize(("default_lds", "verdict"), [(0.595, "met"), (0.585, "missed")])
def test_damping_verdict_uses_the_tolerance(default_lds, verdict):
    lines = defaults.damping_verdict(
        setting(result("uniform", "ekfac", 0.1, default_lds), result("uniform", "ekfac", 1.0, 0.6))
    )
    assert len(lines) == 1 and f": {verdict} (best 0.600 @ 1" in lines[0]


def test_damping_verdict_reads_each_kinds_own_default_ratio():
    lines = defaults.damping_verdict(
        setting(
            result("uniform", "full", 0.1, 0.40),
            result("uniform", "full", 1.0, 0.60),
            result("uniform", "ekfac", 0.1, 0.50),
            result("uniform", "ekfac", 1.0, 0.60),
        )
    )
    assert lines[0].startswith("- uniform · full · keep 0.25: met") and "default 0.600" in lines[0]
    assert lines[1].startswith("- uniform · ekfac · keep 0.25: missed")
    assert "default 0.500" in lines[1]


def test_mask_and_curvature_verdicts_compare_like_with_like():
    data = setting(
        result("energy", "full", 0.1, 0.55, seconds=2.0),
        result("uniform", "full", 0.1, 0.58, seconds=1.0),
        result("energy", "ekfac", 0.1, 0.60, seconds=1.0),
        result("uniform", "ekfac", 0.1, 0.62, seconds=0.5),
    )
    masks = defaults.mask_verdict(data)
    assert [line.split(":")[0] for line in masks] == ["- full · keep 0.25", "- ekfac · keep 0.25"]
    assert all("**uniform**" in line and "seconds 2.00×" in line for line in masks)
    curvature = defaults.curvature_verdict(data)
    assert curvature[0].startswith("- energy · keep 0.25: ekfac / full seconds 0.50×")
    assert "best-ratio LDS +0.050" in curvature[0]


@pytest.mark.slow
def test_tiny_run_prints_tables_and_writes_every_configuration(tmp_path, capsys):
    out = tmp_path / "defaults.json"
    flags = "--smoke --archs mlp --subsets 3 --ratios 0.1 1 --masks uniform energy --exact"
    argv = [*flags.split(), "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    assert defaults.main(argv) == 0
    printed = capsys.readouterr().out
    payload = json.loads(out.read_text())
    results = payload["settings"][0]["results"]
    assert len(results) == 2 + 2 * 2 * 2
    for row in results:
        assert -1.0 <= row["lds"] <= 1.0 and row["seconds"] > 0 and row["k"] > 0
        assert 0.5 < row["auc"] <= 1.0  # self-influence finds the 10 % flips better than chance
        assert row["method"] == "identity" or -1.0 <= row["pearson_exact"] <= 1.0
    assert printed.count("**mlp · symmetric · seed 0**") == 1
    assert "### Default damping ratio (per kind: full 1, ekfac 0.1) within 0.01" in printed
    assert list((tmp_path / "cache").glob("lds-*.npz")), "the retrained subsets are cached"


def test_auc_column_shows_the_rows_range_over_ratios():
    results = [result("uniform", "full", r, 0.5, auc=a) for r, a in ((0.1, 0.91), (1.0, 0.95))]
    assert defaults.auc_range(results) == "0.910–0.950"
    assert defaults.auc_range(results[:1]) == "0.910"
