"""LDS and mislabel AUC of checkpoint ensembles on the peers grid (issue 14).

For each setting of bench/peers_setting.py (architecture, noise kind, noise seed), the peers'
recipe is trained once while a copy of the model is kept at the epochs of dropinf's checkpoint
schedule (``checkpoint_epochs``: 1, 2, 4, ... below the last, and the last). Then, side by side:

- the final model alone: one ``InfluenceEngine`` run (the engine's default settings, unless
  ``--keep`` / ``--mask`` / ``--curvature`` / ``--damping-ratio`` say otherwise; every run of
  the invocation uses the same);
- ``EnsembleEngine`` over every checkpoint, its per-checkpoint test scores combined by each
  combination (``rank``, ``standardised``, ``tracin``);
- the same over the later half of the checkpoints;
- each checkpoint alone (the ensemble's own runs).

Each row gets the LDS on the odd test examples (``report_lds``, as bench/defaults.py and
bench/peers.py; "LDS (even)": on the first 250 even ones, which settings compared across
invocations are chosen on) against the retrained half-subsets of bench/lds.py (cached under
bench/.cache: the same recipe, size and subset count hit the cache of bench/defaults.py), the
ROC AUC of the flipped labels by self-influence and by the leave-one-out estimate (``loss +
self-influence / N``, the review queue's score), and its seconds: fit plus scoring of the test
set. The ensemble is fitted once; its combinations share that fit (combining is a weighted mean
over a stack of scores), so their seconds are the same. The later half's seconds are its
checkpoints' recorded phase seconds plus their scoring. One torch thread by default.

Usage::

    nice -n 10 .venv/bin/python bench/ensemble_lds.py                  # MLP and CNN, symmetric
    nice -n 10 .venv/bin/python bench/ensemble_lds.py --archs small_cnn --max-checkpoints 3
    .venv/bin/python bench/ensemble_lds.py --smoke --subsets 3         # seconds
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from bench.lds import (  # noqa: E402
    SubsetOutputs,
    lds_subset_outputs,
    linear_datamodeling_score,
)
from bench.peers_setting import CACHE, FULL, SMOKE, Size, load_setting, make_recipe  # noqa: E402
from bench.peers_table import report_lds, selection_rows  # noqa: E402
from dropinf.core import CompressionConfig, CurvatureConfig, cross_entropy_per_sample  # noqa: E402
from dropinf.data import DatasetBundle  # noqa: E402
from dropinf.engine import (  # noqa: E402
    COMBINATIONS,
    DEFAULT_COMBINATION,
    CheckpointInfo,
    EnsembleEngine,
    InfluenceEngine,
    combine_scores,
)
from dropinf.metrics import roc_auc  # noqa: E402
from dropinf.models import TrainRecipe, checkpoint_epochs, train_model  # noqa: E402

BATCH = 256
# The best peer's LDS of each architecture on this setting (bench/RESULTS.md §4, PEERS.md:
# mean over noise seeds 0-2, symmetric noise, 50 subsets, damping chosen per method).
REFERENCE_LDS = {
    "mlp": ("Kronfluence EK-FAC", 0.670),
    "small_cnn": ("dattri FactGraSS", 0.370),
}


@dataclass(frozen=True)
class Settings:
    """The engine settings every run of the benchmark uses (None: the engine's default).

    Attributes:
        keep_ratio: Dropout keep ratio.
        mask: Dropout mask strategy.
        curvature: Curvature kind.
        damping_ratio: Damping ratio.
    """

    keep_ratio: float | None = None
    mask: str | None = None
    curvature: str | None = None
    damping_ratio: float | None = None

    def compression(self) -> CompressionConfig:
        """The compression config: the defaults, with the given fields replaced."""
        given = {"keep_ratio": self.keep_ratio, "mask": self.mask}
        return CompressionConfig(**{k: v for k, v in given.items() if v is not None})

    def curvature_config(self) -> CurvatureConfig:
        """The curvature config: the defaults, with the given fields replaced."""
        given = {"kind": self.curvature, "damping_ratio": self.damping_ratio}
        return CurvatureConfig(**{k: v for k, v in given.items() if v is not None})

    def describe(self) -> str:
        """The settings in words, for the report."""
        compression, curvature = self.compression(), self.curvature_config()
        ratio = curvature.damping_ratio
        damping = "the kind's default" if ratio is None else f"{ratio:g}"
        return (
            f"mask {compression.mask}, keep {compression.keep_ratio:g}, curvature "
            f"{curvature.kind}, damping ratio {damping}"
        )


@dataclass
class Trajectory:
    """The models kept along one training run.

    Attributes:
        epochs: The kept epochs, increasing; the last is the final model's.
        models: The model after each kept epoch, in eval mode.
        learning_rate: The (constant) learning rate of the recipe: TracIn's weight.
        seconds: The training's wall-clock seconds.
    """

    epochs: list[int]
    models: list[nn.Module]
    learning_rate: float
    seconds: float


@dataclass
class Scored:
    """What one scoring of the test set gives.

    Attributes:
        scores: (n_test, n_train) test-by-train scores.
        self_influence: (n_train,) self-influence.
        leave_one_out: (n_train,) leave-one-out loss estimate.
        seconds: Fit plus scoring.
        extra: Anything else worth reporting (k, the checkpoints' timings...).
    """

    scores: np.ndarray
    self_influence: np.ndarray
    leave_one_out: np.ndarray
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def train_trajectory(
    recipe: TrainRecipe, bundle: DatasetBundle, max_checkpoints: int | None
) -> Trajectory:
    """Train the recipe once, keeping a copy of the model at the schedule's epochs.

    Args:
        recipe: The peers' recipe of the architecture.
        bundle: The setting's data.
        max_checkpoints: Keep only the last this many epochs of the schedule (None: all).

    Returns:
        The ``Trajectory``; its last model is the one ``bench.peers_setting.train`` gives.
    """
    epochs = checkpoint_epochs(recipe.epochs)[-(max_checkpoints or 0) :]
    kept: dict[int, nn.Module] = {}

    def keep(epoch: int, model: nn.Module) -> None:
        if epoch in epochs:
            kept[epoch] = copy.deepcopy(model).eval()

    started = time.perf_counter()
    train_model(recipe, bundle, progress=False, on_epoch=keep)
    seconds = time.perf_counter() - started
    return Trajectory(epochs, [kept[e] for e in epochs], recipe.lr, seconds)


def score_final_model(model: nn.Module, bundle: DatasetBundle, settings: Settings) -> Scored:
    """One ``InfluenceEngine`` run on the final model: fit, then score the test set."""
    with tempfile.TemporaryDirectory(prefix="dropinf-ensemble-lds-") as run_dir:
        engine = InfluenceEngine(
            copy.deepcopy(model),
            cross_entropy_per_sample,
            settings.compression(),
            settings.curvature_config(),
            run_dir=run_dir,
            device="cpu",
        )
        started = time.perf_counter()
        engine.fit(bundle.train, BATCH, data_fingerprint=bundle.fingerprint)
        scores = engine.pairwise_scores(bundle.test, BATCH).numpy().astype(np.float64)
        seconds = time.perf_counter() - started
        self_influence = engine.self_influence().numpy().astype(np.float64)
        losses = np.asarray(engine.store.train_metadata()["loss"], dtype=np.float64)
        k = int(engine.store.read_manifest()["k"])
    leave_one_out = losses + self_influence / self_influence.size
    return Scored(scores, self_influence, leave_one_out, seconds, {"k": k})


@dataclass
class EnsembleScores:
    """The per-checkpoint arrays of one ensemble fit, and what each checkpoint cost.

    Attributes:
        scores: (C, n_test, n_train) each checkpoint's test scores.
        self_influence: (C, n_train) each checkpoint's self-influence.
        losses: (C, n_train) each checkpoint's training losses.
        fit_seconds: The whole ``EnsembleEngine.fit``.
        checkpoint_fit_seconds: (C,) each checkpoint run's recorded phase seconds.
        checkpoint_score_seconds: (C,) scoring the test set with each checkpoint.
        weights: The ensemble's TracIn weights.
    """

    scores: np.ndarray
    self_influence: np.ndarray
    losses: np.ndarray
    fit_seconds: float
    checkpoint_fit_seconds: np.ndarray
    checkpoint_score_seconds: np.ndarray
    weights: list[float]

    def combined(self, members: slice, combination: str) -> Scored:
        """The checkpoints ``members`` combined by ``combination``, with their cost.

        The whole ensemble costs its measured fit; a part of it, its checkpoints' recorded
        phase seconds. Both add their checkpoints' scoring.
        """
        weights = self.weights[members]
        leave_one_out = self.losses + self.self_influence / self.self_influence.shape[1]
        whole = len(weights) == len(self.weights)
        fit = self.fit_seconds if whole else float(self.checkpoint_fit_seconds[members].sum())
        return Scored(
            combine_scores(self.scores[members], combination, weights),
            combine_scores(self.self_influence[members], combination, weights),
            combine_scores(leave_one_out[members], combination, weights),
            fit + float(self.checkpoint_score_seconds[members].sum()),
        )


def fit_trajectory_ensemble(
    trajectory: Trajectory, bundle: DatasetBundle, settings: Settings
) -> EnsembleScores:
    """Fit ``EnsembleEngine`` over every kept model, then score the test set with each."""
    infos = [
        CheckpointInfo(name=f"epoch-{e:04d}", epoch=e, learning_rate=trajectory.learning_rate)
        for e in trajectory.epochs
    ]
    with tempfile.TemporaryDirectory(prefix="dropinf-ensemble-lds-") as run_dir:
        engine = EnsembleEngine(
            [copy.deepcopy(model) for model in trajectory.models],
            cross_entropy_per_sample,
            settings.compression(),
            settings.curvature_config(),
            run_dir=run_dir,
            device="cpu",
            checkpoints=infos,
        )
        started = time.perf_counter()
        engine.fit(bundle.train, BATCH, data_fingerprint=bundle.fingerprint)
        fit_seconds = time.perf_counter() - started
        scores, score_seconds = [], []
        for member in engine.engines:
            started = time.perf_counter()
            scores.append(member.pairwise_scores(bundle.test, BATCH).numpy())
            score_seconds.append(time.perf_counter() - started)
        stores = [member.store for member in engine.engines]
        return EnsembleScores(
            scores=np.stack(scores).astype(np.float64),
            self_influence=engine.checkpoint_self_influence().numpy(),
            losses=np.stack([store.train_metadata()["loss"] for store in stores]),
            fit_seconds=fit_seconds,
            checkpoint_fit_seconds=np.array(
                [sum(store.read_manifest()["timings"].values()) for store in stores]
            ),
            checkpoint_score_seconds=np.array(score_seconds),
            weights=engine.weights,
        )


def row(
    label: str,
    epochs: list[int],
    combination: str,
    scored: Scored,
    bundle: DatasetBundle,
    subsets: SubsetOutputs,
) -> dict:
    """One table row: LDS, mislabel AUC by self-influence and leave-one-out estimate, seconds."""
    noisy = np.asarray(bundle.noisy_mask)
    return {
        "scores_from": label,
        "epochs": epochs,
        "combination": combination,
        "lds": report_lds(scored.scores, subsets),
        "selection_lds": selection_lds(scored.scores, subsets),
        "auc_self_influence": roc_auc(scored.self_influence, noisy),
        "auc_leave_one_out": roc_auc(scored.leave_one_out, noisy),
        "seconds": scored.seconds,
        **scored.extra,
    }


def selection_lds(scores: np.ndarray, subsets: SubsetOutputs) -> float:
    """LDS on the held-out even test examples (bench/peers.py chooses its damping on them).

    Settings compared across invocations (keep, curvature, damping) are chosen on this, so the
    LDS reported on the odd examples stays out of the choice.
    """
    rows = selection_rows(scores.shape[0])
    margins = subsets.margins[:, rows]
    return linear_datamodeling_score(scores[rows], subsets.masks, margins).lds


def ensemble_rows(
    ensemble: EnsembleScores, epochs: list[int], bundle: DatasetBundle, subsets: SubsetOutputs
) -> list[dict]:
    """Every combination over all checkpoints and over the later half, then each one alone."""
    later = slice(len(epochs) // 2, None)
    rows = []
    for label, members in (("all checkpoints", slice(None)), ("later half", later)):
        for combination in COMBINATIONS:
            scored = ensemble.combined(members, combination)
            rows.append(row(label, epochs[members], combination, scored, bundle, subsets))
    for index, epoch in enumerate(epochs):
        scored = ensemble.combined(slice(index, index + 1), DEFAULT_COMBINATION)
        rows.append(row("one checkpoint", [epoch], "—", scored, bundle, subsets))
    return rows


def run_setting(
    size: Size,
    arch: str,
    kind: str,
    seed: int,
    settings: Settings,
    max_checkpoints: int | None,
    cache_dir: Path,
) -> dict:
    """Train once with checkpoints, read (or retrain) the LDS subsets, score every row."""
    bundle = load_setting(size, kind, seed)
    recipe = make_recipe(arch, bundle, size.epochs)
    trajectory = train_trajectory(recipe, bundle, max_checkpoints)
    log(f"{arch}/{kind}/{seed}: trained, epochs {trajectory.epochs}, {trajectory.seconds:.0f}s")
    subsets = lds_subset_outputs(recipe, bundle, size.lds_subsets, 0.5, 0, cache_dir)
    final = score_final_model(trajectory.models[-1], bundle, settings)
    rows = [row("final model alone", trajectory.epochs[-1:], "—", final, bundle, subsets)]
    log(f"  final model: LDS {rows[0]['lds']:.3f} {final.seconds:.1f}s")
    ensemble = fit_trajectory_ensemble(trajectory, bundle, settings)
    rows += ensemble_rows(ensemble, trajectory.epochs, bundle, subsets)
    for result in rows[1:]:
        log(f"  {result['scores_from']} {result['combination']}: LDS {result['lds']:.3f}")
    return {
        "setting": f"{arch} · {kind} · seed {seed}",
        "arch": arch,
        "n_train": len(bundle.train),
        "n_test": len(bundle.test),
        "n_subsets": size.lds_subsets,
        "epochs": trajectory.epochs,
        "train_seconds": trajectory.seconds,
        "final_vs_last_checkpoint": float(np.abs(final.scores - ensemble.scores[-1]).max()),
        "rows": rows,
    }


def log(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


def markdown_table(setting: dict) -> str:
    """One setting's table: every row's LDS, mislabel AUCs and seconds."""
    lines = [
        f"**{setting['setting']}** (n_train {setting['n_train']}, LDS on "
        f"{setting['n_test'] // 2} odd test examples, {setting['n_subsets']} subsets; "
        f"training {setting['train_seconds']:.1f} s; final model vs the ensemble's last "
        f"checkpoint, max |Δ score| {setting['final_vs_last_checkpoint']:.2g})",
        "",
        "| scores from | epochs | combination | LDS | LDS (even) | self-infl. AUC | "
        "leave-one-out AUC | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    best = max(r["lds"] for r in setting["rows"])
    for result in setting["rows"]:
        lds = f"{result['lds']:.3f}"
        lines.append(
            f"| {result['scores_from']} | {', '.join(map(str, result['epochs']))} | "
            f"{result['combination']} | {f'**{lds}**' if result['lds'] == best else lds} | "
            f"{result['selection_lds']:.3f} | "
            f"{result['auc_self_influence']:.3f} | {result['auc_leave_one_out']:.3f} | "
            f"{result['seconds']:.1f} |"
        )
    return "\n".join(lines)


def verdict(setting: dict) -> list[str]:
    """The best ensemble against the reference peer, and each combination's best LDS."""
    ensembles = [r for r in setting["rows"] if r["combination"] in COMBINATIONS]
    final = setting["rows"][0]
    best = max(ensembles, key=lambda r: r["lds"])
    peer, reference = REFERENCE_LDS.get(setting["arch"], ("—", float("nan")))
    met = "met" if round(best["lds"], 3) >= reference else "missed"
    lines = [
        f"- {setting['setting']}: best ensemble LDS {best['lds']:.3f} ({best['combination']}, "
        f"{best['scores_from']}, {best['seconds']:.1f} s) vs final model alone "
        f"{final['lds']:.3f} ({final['seconds']:.1f} s) vs {peer} {reference:.3f}: **{met}**"
    ]
    for combination in COMBINATIONS:
        own = [r["lds"] for r in ensembles if r["combination"] == combination]
        if own:
            lines.append(f"  - {combination}: best LDS {max(own):.3f}")
    return lines


def report(settings: list[dict], description: str) -> str:
    """The markdown tables and the verdicts."""
    parts = [f"Engine settings: {description}."]
    parts += [markdown_table(setting) for setting in settings]
    parts.append("\n".join(line for setting in settings for line in verdict(setting)))
    return "\n\n".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the peers' smoke size (seconds)")
    parser.add_argument("--archs", nargs="+", default=["mlp", "small_cnn"])
    parser.add_argument("--noise", nargs="+", default=["symmetric"])
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    parser.add_argument("--subsets", type=int, default=30, help="retrained LDS subsets")
    parser.add_argument(
        "--max-checkpoints", type=int, help="keep only the last N epochs of the schedule"
    )
    parser.add_argument("--keep", type=float, help="keep ratio (default: the engine's)")
    parser.add_argument("--mask", help="mask strategy (default: the engine's)")
    parser.add_argument("--curvature", help="curvature kind (default: the engine's)")
    parser.add_argument("--damping-ratio", type=float, help="damping ratio (default: engine's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--cache-dir", type=Path, default=CACHE, help="LDS subset cache")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)
    if args.max_checkpoints is not None and args.max_checkpoints < 1:
        parser.error(f"--max-checkpoints: expected an integer >= 1, found {args.max_checkpoints}")
    if args.subsets < 2:
        parser.error(f"--subsets: expected an integer >= 2, found {args.subsets}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every setting and print the tables and the verdicts."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    size = replace(SMOKE if args.smoke else FULL, lds_subsets=args.subsets)
    settings = Settings(args.keep, args.mask, args.curvature, args.damping_ratio)
    results = [
        run_setting(size, arch, kind, args.seed, settings, args.max_checkpoints, args.cache_dir)
        for arch in args.archs
        for kind in args.noise
    ]
    command = "bench/ensemble_lds.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"Command: `{command}`\n")
    print(report(results, settings.describe()))
    if args.json is not None:
        payload = {"command": command, "settings": settings.describe(), "results": results}
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
