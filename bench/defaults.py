"""Settle dropinf's defaults by LDS: mask × curvature × damping ratio on the peers grid.

For each setting (architecture, noise kind, noise seed) of bench/peers_setting.py, the model is
trained once; then every configuration mask ∈ {energy, uniform} × curvature ∈ {full, ekfac} ×
damping ratio (and optionally ekfac at more keep ratios) is fitted with ``InfluenceEngine``
and scored on the test split. Each configuration's LDS is measured against the same retrained
half-subsets (bench/lds.py, cached under bench/.cache), on the odd-indexed test examples like
bench/peers.py. One table per setting (best ratio of each row in bold) and a verdict: the mask
that wins at equal cost, whether the default damping ratio is within 0.01 of the best ratio of
every row, and what ekfac costs / gains against full.

Usage::

    .venv/bin/python bench/defaults.py                       # MLP and CNN, symmetric, seed 0
    .venv/bin/python bench/defaults.py --noise symmetric class_conditional --extra-keep 0.5
    .venv/bin/python bench/defaults.py --smoke --subsets 4   # seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from bench.adapters.measure import PeakMemory  # noqa: E402
from bench.lds import SubsetOutputs, lds_subset_outputs  # noqa: E402
from bench.peers_setting import CACHE, FULL, SMOKE, Size, load_setting, make_recipe, train  # noqa: E402
from bench.peers_table import report_lds  # noqa: E402
from dropinf.core import (  # noqa: E402
    DEFAULT_DAMPING_RATIOS,
    DEFAULT_MAX_KEPT_UNITS,
    CompressionConfig,
    CurvatureConfig,
    cross_entropy_per_sample,
)
from dropinf.data import DatasetBundle  # noqa: E402
from dropinf.engine import InfluenceEngine  # noqa: E402
from dropinf.metrics import fidelity, roc_auc  # noqa: E402

TOLERANCE = 0.01
BATCH = 256


@dataclass(frozen=True)
class Config:
    """One dropinf configuration of the grid.

    Attributes:
        mask: Dropout mask strategy.
        curvature: Curvature kind.
        keep_ratio: Keep ratio.
        damping_ratio: Damping ratio.
        method: Compression method: ``dropout``, or ``identity`` for exact influence.
    """

    mask: str
    curvature: str
    keep_ratio: float
    damping_ratio: float
    method: str = "dropout"

    @property
    def row(self) -> str:
        """The table row this configuration belongs to (everything but the damping)."""
        return f"{self.mask} · {self.curvature} · keep {self.keep_ratio:g}"

    @property
    def exact(self) -> bool:
        """Whether this is exact influence (no compression), the fidelity reference."""
        return self.method == "identity"


def grid(
    masks: list[str],
    curvatures: list[str],
    ratios: list[float],
    keep: float,
    extra_keep: list[float],
    exact: bool = False,
) -> list[Config]:
    """The configurations: masks × curvatures × ratios at ``keep``, plus ekfac at ``extra_keep``.

    With ``exact``, exact influence (identity compression, full curvature) comes first at every
    ratio, so the others get their Pearson correlation with it at the same ratio.
    """
    rows = [(mask, kind, keep) for mask in masks for kind in curvatures]
    rows += [(mask, "ekfac", extra) for mask in masks for extra in extra_keep]
    configs = [Config(mask, kind, k, ratio) for mask, kind, k in rows for ratio in ratios]
    if exact:
        configs = [Config("exact", "full", 1.0, r, method="identity") for r in ratios] + configs
    return configs


def run_config(
    config: Config, model: torch.nn.Module, bundle: DatasetBundle, subsets: SubsetOutputs
) -> tuple[dict, np.ndarray]:
    """Fit and score one configuration.

    Returns:
        Its row (LDS, seconds of fit + scoring, k, peak memory) and its (n_test, n_train)
        scores.
    """
    if config.exact:
        compression = CompressionConfig(method="identity", seed=0)
    else:
        compression = CompressionConfig(keep_ratio=config.keep_ratio, seed=0, mask=config.mask)
    curvature = CurvatureConfig(kind=config.curvature, damping_ratio=config.damping_ratio)
    with tempfile.TemporaryDirectory(prefix="dropinf-defaults-") as run_dir:
        engine = InfluenceEngine(
            copy.deepcopy(model),
            cross_entropy_per_sample,
            compression,
            curvature,
            run_dir=run_dir,
            device="cpu",
        )
        start = time.perf_counter()
        with PeakMemory() as memory:
            engine.fit(bundle.train, batch_size=BATCH)
            scores = engine.pairwise_scores(bundle.test, batch_size=BATCH).numpy()
        seconds = time.perf_counter() - start
        auc = roc_auc(engine.self_influence().numpy(), bundle.noisy_mask)
        k = int(engine.store.read_manifest()["k"])
    row = {
        **asdict(config),
        "row": config.row,
        "lds": report_lds(scores, subsets),
        "auc": auc,
        "seconds": seconds,
        "k": k,
        "peak_mb": memory.peak / 2**20,
    }
    return row, scores


def run_setting(
    size: Size,
    arch: str,
    kind: str,
    seed: int,
    configs: list[Config],
    n_subsets: int,
    cache_dir: Path,
) -> dict:
    """Train the setting's model once, retrain (or read) its subsets, run every configuration."""
    bundle = load_setting(size, kind, seed)
    recipe = make_recipe(arch, bundle, size.epochs)
    torch.manual_seed(0)
    model = train(recipe, bundle)
    start = time.perf_counter()
    subsets = lds_subset_outputs(recipe, bundle, n_subsets, 0.5, 0, cache_dir)
    print(
        f"{arch}/{kind}/{seed}: {n_subsets} subsets in {time.perf_counter() - start:.0f}s",
        file=sys.stderr,
        flush=True,
    )
    results, exact = [], {}
    for config in configs:
        last, scores = run_config(config, model, bundle, subsets)
        if config.exact:
            exact[config.damping_ratio] = scores
        elif config.damping_ratio in exact:
            agreement = fidelity(scores, exact[config.damping_ratio])
            last["pearson_exact"], last["spearman_exact"] = agreement.pearson, agreement.spearman
        results.append(last)
        print(
            f"  {config.row} · ratio {config.damping_ratio:g}: LDS {last['lds']:.3f} "
            f"AUC {last['auc']:.4f} {last['seconds']:.2f}s",
            file=sys.stderr,
            flush=True,
        )
    name = f"{arch} · {kind} · seed {seed}"
    return {
        "setting": name,
        "n_train": len(bundle.train),
        "n_test": len(bundle.test),
        "n_subsets": n_subsets,
        "results": results,
    }


def rows_of(setting: dict) -> dict[str, list[dict]]:
    """The setting's results grouped by table row, in grid order."""
    rows: dict[str, list[dict]] = {}
    for result in setting["results"]:
        rows.setdefault(result["row"], []).append(result)
    return rows


def best_of(results: list[dict]) -> dict:
    """The result with the highest LDS."""
    return max(results, key=lambda result: result["lds"])


def at_ratio(results: list[dict], ratio: float) -> dict | None:
    """The result at one damping ratio, if the row has it."""
    return next((r for r in results if r["damping_ratio"] == ratio), None)


def at_default(results: list[dict]) -> dict | None:
    """A row's result at its curvature kind's default damping ratio, if the row has it."""
    return at_ratio(results, CurvatureConfig().ratio_for(results[0]["curvature"]))


def default_ratios_text() -> str:
    """The grid's curvature kinds with their default ratios, e.g. ``full 1, ekfac 0.1``."""
    return ", ".join(f"{kind} {DEFAULT_DAMPING_RATIOS[kind]:g}" for kind in ("full", "ekfac"))


def markdown_table(setting: dict) -> str:
    """One setting's table: rows mask · curvature · keep, columns ratios, best in bold."""
    rows = rows_of(setting)
    ratios = [r["damping_ratio"] for r in next(iter(rows.values()))]
    head = "| mask · curvature · keep | k | " + " | ".join(f"ratio {r:g}" for r in ratios)
    lines = [head + " | s / run | peak MB | default − best | mislabel AUC |"]
    lines.append("|---" * (len(ratios) + 6) + "|")
    for row, results in rows.items():
        best = best_of(results)
        cells = [cell(r, r is best) for r in results]
        default = at_default(results)
        gap = f"{default['lds'] - best['lds']:+.3f}" if default else "—"
        seconds = np.mean([r["seconds"] for r in results])
        peak = max(r["peak_mb"] for r in results)
        lines.append(
            f"| {row} | {results[0]['k']} | "
            + " | ".join(cells)
            + f" | {seconds:.2f} | {peak:.0f} | {gap} | {auc_range(results)} |"
        )
    title = (
        f"**{setting['setting']}** (n_train {setting['n_train']}, LDS on "
        f"{setting['n_test'] // 2} odd test examples, {setting['n_subsets']} subsets; "
        "(r, ρ): Pearson, Spearman with exact influence at the same ratio)"
    )
    return title + "\n\n" + "\n".join(lines)


def auc_range(results: list[dict]) -> str:
    """The row's self-influence mislabel AUC over its ratios (one value when they agree)."""
    low, high = min(r["auc"] for r in results), max(r["auc"] for r in results)
    return f"{low:.3f}" if round(low, 3) == round(high, 3) else f"{low:.3f}–{high:.3f}"


def cell(result: dict, best: bool) -> str:
    """A table cell: the LDS (bold when the row's best), then the Pearson with exact if any."""
    text = f"**{result['lds']:.3f}**" if best else f"{result['lds']:.3f}"
    pearson = result.get("pearson_exact")
    if pearson is None:
        return text
    return f"{text} (r {pearson:.2f}, ρ {result['spearman_exact']:.2f})"


def mask_verdict(setting: dict) -> list[str]:
    """Energy against uniform per curvature and keep: best-ratio and default-ratio LDS, cost."""
    rows = rows_of(setting)
    lines = []
    for row, energy in rows.items():
        if not row.startswith("energy"):
            continue
        uniform = rows.get(row.replace("energy", "uniform", 1))
        if uniform is None:
            continue
        tail = row.removeprefix("energy · ")
        e_best, u_best = best_of(energy), best_of(uniform)
        e_def, u_def = at_default(energy), at_default(uniform)
        winner = "energy" if e_best["lds"] > u_best["lds"] else "uniform"
        default_text = (
            f"; at the default ratio {e_def['damping_ratio']:g}: energy {e_def['lds']:.3f} vs "
            f"uniform {u_def['lds']:.3f}"
            if e_def and u_def
            else ""
        )
        cost = np.mean([r["seconds"] for r in energy]) / np.mean([r["seconds"] for r in uniform])
        lines.append(
            f"- {tail}: **{winner}** (best ratio: energy {e_best['lds']:.3f} @ "
            f"{e_best['damping_ratio']:g}, uniform {u_best['lds']:.3f} @ "
            f"{u_best['damping_ratio']:g}{default_text}; energy / uniform seconds {cost:.2f}×)"
        )
    return lines


def damping_verdict(setting: dict) -> list[str]:
    """Whether the default ratio's LDS is within the tolerance of the best ratio's, per row."""
    lines = []
    for row, results in rows_of(setting).items():
        best, default = best_of(results), at_default(results)
        if default is None:
            continue
        gap = best["lds"] - default["lds"]
        verdict = "met" if round(gap, 3) <= TOLERANCE else "missed"  # as printed
        lines.append(
            f"- {row}: {verdict} (best {best['lds']:.3f} @ {best['damping_ratio']:g}, "
            f"default {default['lds']:.3f}, gap {gap:.3f})"
        )
    return lines


def curvature_verdict(setting: dict) -> list[str]:
    """EK-FAC against full at the same mask and keep: seconds ratio and LDS difference."""
    rows = rows_of(setting)
    lines = []
    for row, full in rows.items():
        ekfac = rows.get(row.replace(" · full · ", " · ekfac · "))
        if " · full · " not in row or ekfac is None:
            continue
        cost = np.mean([r["seconds"] for r in ekfac]) / np.mean([r["seconds"] for r in full])
        best_gain = best_of(ekfac)["lds"] - best_of(full)["lds"]
        spread_full = best_of(full)["lds"] - min(r["lds"] for r in full)
        spread_ekfac = best_of(ekfac)["lds"] - min(r["lds"] for r in ekfac)
        lines.append(
            f"- {row.replace(' · full', '')}: ekfac / full seconds {cost:.2f}×, "
            f"best-ratio LDS {best_gain:+.3f}, LDS spread over ratios full "
            f"{spread_full:.3f} vs ekfac {spread_ekfac:.3f}"
        )
    return lines


def report(settings: list[dict]) -> str:
    """The markdown tables and the verdict of every setting."""
    parts = [markdown_table(setting) for setting in settings]
    for title, verdict in (
        ("Mask (same k, same curvature)", mask_verdict),
        (
            f"Default damping ratio (per kind: {default_ratios_text()}) within {TOLERANCE} of "
            "the best",
            damping_verdict,
        ),
        ("ekfac vs full", curvature_verdict),
    ):
        lines = [f"### {title}"]
        for setting in settings:
            lines += [f"*{setting['setting']}*", *verdict(setting)]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the peers' smoke size (seconds)")
    parser.add_argument("--archs", nargs="+", default=["mlp", "small_cnn"])
    parser.add_argument("--noise", nargs="+", default=["symmetric"])
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--subsets", type=int, default=30, help="retrained LDS subsets")
    parser.add_argument("--masks", nargs="+", default=["energy", "uniform"])
    parser.add_argument("--curvatures", nargs="+", default=["full", "ekfac"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.01, 0.1, 1.0, 10.0])
    parser.add_argument("--keep", type=float, default=0.25)
    parser.add_argument(
        "--extra-keep",
        nargs="*",
        type=float,
        default=[],
        help="more ekfac rows at these keep ratios",
    )
    parser.add_argument(
        "--exact", action="store_true", help="add exact influence and Pearson against it"
    )
    parser.add_argument("--cache-dir", type=Path, default=CACHE, help="LDS subset cache")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the grid on every setting and print the tables and the verdict."""
    args = parse_args(argv)
    size = replace(SMOKE if args.smoke else FULL, lds_subsets=args.subsets)
    configs = grid(args.masks, args.curvatures, args.ratios, args.keep, args.extra_keep, args.exact)
    settings = [
        run_setting(size, arch, kind, args.seed, configs, args.subsets, args.cache_dir)
        for arch in args.archs
        for kind in args.noise
    ]
    command = "bench/defaults.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"Command: `{command}` (max_kept_units {DEFAULT_MAX_KEPT_UNITS}, default)\n")
    print(report(settings))
    if args.json is not None:
        args.json.write_text(json.dumps({"command": command, "settings": settings}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
