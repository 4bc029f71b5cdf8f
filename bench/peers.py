"""Side-by-side benchmark: dropinf against dattri, TRAK, Kronfluence, captum and cleanlab.

Run the full size by hand in the peers venv (see bench/PEERS.md), the smoke size in CI::

    bench/.peers-venv/bin/python bench/peers.py            # full: ~20 min on 2 cores
    bench/.peers-venv/bin/python bench/peers.py --smoke    # every method, tiny sizes
    .venv/bin/python bench/peers.py --smoke --dropinf-only # main venv, no peer installed

Every method gets the same checkpoint, the same train / test order, the same per-sample
cross-entropy, float32 and the same thread count. Results go to bench/PEERS.md (or --out) and
bench/peers_quality_vs_time.png, raw numbers to bench/.cache/peers-results.json (or --json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT)]

from peers_measure import MethodResult  # noqa: E402
from peers_methods import (  # noqa: E402
    Problem,
    captum_arnoldi_adapter,
    captum_tracin_adapter,
    cleanlab_adapter,
    dattri_block_adapter,
    dattri_if_adapter,
    dattri_trak_adapter,
    dropinf_adapter,
    kronfluence_adapter,
    run_method,
    traker_adapter,
)

from dropinf import metrics as evaluate  # noqa: E402
from dropinf.data import DatasetBundle, Split, load_data  # noqa: E402
from dropinf.models import arch_args_for_data  # noqa: E402

CACHE = BENCH / ".cache"
THREADS = 2
KEEP_RATIO = 0.25
DAMPING_GRID = (0.01, 0.1, 1.0)
HEAVY_SEED = 0  # the noise seed heavy methods run on
SELECTION_TESTS = 250  # held-out (even-indexed) test examples each method's damping is chosen on
SHIFTS = ((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0))


@dataclass(frozen=True)
class Size:
    """How big one run of the benchmark is.

    Attributes:
        replicas: Copies of each digits image (original + 1-pixel shifts), train and test.
        n_train: Training examples kept (the originals first, then shifted copies).
        n_test: Test examples scored.
        archs: Architectures.
        noise_kinds: Label-noise kinds.
        seeds: Noise seeds.
        lds_subsets: Retrained subsets for LDS (every setting; 0: no LDS).
        epochs: Training epochs of the recipe.
        method_timeout_s: A method still running after this is stopped and reported as such.
        damping_grid: The shared damping ratios every damped method chooses from.
        extra_keep_ratios: More dropinf dropout rows, at these keep ratios (peers keep the k of
            keep 0.25).
    """

    replicas: int
    n_train: int | None
    n_test: int
    archs: tuple[str, ...]
    noise_kinds: tuple[str, ...]
    seeds: tuple[int, ...]
    lds_subsets: int
    epochs: int
    method_timeout_s: int
    damping_grid: tuple[float, ...] = DAMPING_GRID
    extra_keep_ratios: tuple[float, ...] = ()


FULL = Size(
    3,
    2000,
    1000,
    ("mlp", "small_cnn"),
    ("symmetric", "class_conditional"),
    (0, 1, 2),
    50,
    8,
    240,
)
SMOKE = Size(1, 300, 40, ("mlp",), ("symmetric",), (0,), 6, 5, 120)


# ------------------------------------------------------------------------------------ data


def augmented_digits(replicas: int) -> Path:
    """Write (once) digits with each image repeated as 1-pixel shifts, train and test apart.

    The embedded digits have 1 437 training and 360 test images; shifting each image by one
    pixel (up / down / left / right) gives ``replicas`` distinct copies, so timings are not
    dominated by start-up. Train and test copies come from different originals.
    """
    path = CACHE / f"digits-x{replicas}.npz"
    if path.exists():
        return path
    base = load_data("digits")
    arrays = {}
    for name, split in (("", base.train), ("_test", base.test)):
        images = np.concatenate([_shift(split.inputs.numpy(), *s) for s in SHIFTS[:replicas]])
        arrays["x" + name] = images
        arrays["y" + name] = np.tile(split.labels.numpy(), replicas)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, class_names=np.array(base.class_names), **arrays)
    return path


def _shift(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    shifted = np.roll(images, (dy, dx), axis=(2, 3))
    if dy:
        shifted[:, :, 0 if dy > 0 else -1, :] = 0.0
    if dx:
        shifted[:, :, :, 0 if dx > 0 else -1] = 0.0
    return shifted


def load_setting(size: Size, kind: str, seed: int) -> DatasetBundle:
    """The noisy bundle of one setting (10 % noise), cut to the size's train / test counts."""
    bundle = load_data(f"{augmented_digits(size.replicas)}:noise=0.1,kind={kind},seed={seed}")
    if size.n_train is not None and size.n_train < len(bundle.train):
        bundle = bundle.with_fixes(removals=range(size.n_train, len(bundle.train)), relabels={})
    test = Split(bundle.test.inputs[: size.n_test], bundle.test.labels[: size.n_test])
    return replace(bundle, test=test)


# ---------------------------------------------------------------------------------- training


def make_recipe(arch: str, bundle: DatasetBundle, epochs: int):
    """The one training recipe of an architecture (used for the checkpoint, LDS and cleanlab)."""
    from dropinf.models import TrainRecipe

    arch_args = arch_args_for_data(arch, bundle.input_shape, bundle.num_classes)
    return TrainRecipe(
        arch=arch,
        arch_args=arch_args,
        epochs=epochs,
        lr=1e-3,
        batch_size=64,
        weight_decay=1e-4,
        seed=0,
    )


def train(recipe, bundle: DatasetBundle) -> torch.nn.Module:
    """Train the recipe on a bundle; the model comes back in eval mode."""
    from dropinf.models import train_model

    return train_model(recipe, bundle, progress=False).model.eval()


def fold_trainer(recipe, bundle: DatasetBundle):
    """A function training the recipe on the training examples of a boolean mask."""

    def train_on(mask: np.ndarray) -> torch.nn.Module:
        return train(recipe, bundle.with_fixes(np.flatnonzero(~mask).tolist(), {}))

    return train_on


# ---------------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class Method:
    """A row of the table.

    Attributes:
        adapter: The method's adapter.
        damped: It takes the shared damping grid (chosen on noise seed 0 of each architecture ×
            noise kind, reused on the other seeds).
        heavy: It runs on noise seed 0 only (minutes per setting on 2 cores).
    """

    adapter: Callable[[Problem, MethodResult], None]
    damped: bool = False
    heavy: bool = False


def method_table(
    dropinf_only: bool, recipe, bundle: DatasetBundle, extra_keep: tuple[float, ...] = ()
) -> dict[str, Method]:
    """Method label -> method, in table order (dropinf dropout first: it fixes k)."""
    methods = {
        "dropinf dropout": Method(dropinf_adapter("dropout", KEEP_RATIO, "uniform"), True),
        "dropinf dropout (energy mask)": Method(
            dropinf_adapter("dropout", KEEP_RATIO, "energy"), True
        ),
    }
    for keep in extra_keep:
        adapter = dropinf_adapter("dropout", keep, "uniform")
        methods[f"dropinf dropout (keep {keep})"] = Method(adapter, damped=True)
    if dropinf_only:
        return methods
    methods |= {
        "TRAK (traker)": Method(traker_adapter, damped=True),
        "dattri TRAK": Method(dattri_trak_adapter),  # its λ is not reachable: 0
        "dattri LoGra": Method(dattri_block_adapter("logra"), damped=True),
        "dattri FactGraSS": Method(dattri_block_adapter("factgrass"), damped=True),
        "dattri IF (Arnoldi)": Method(dattri_if_adapter("arnoldi"), damped=True),
        "dattri IF (DataInf)": Method(dattri_if_adapter("datainf"), damped=True, heavy=True),
        "dattri IF (explicit)": Method(dattri_if_adapter("explicit")),
        "Kronfluence EK-FAC": Method(kronfluence_adapter, damped=True),
        "captum TracInCP": Method(captum_tracin_adapter),
        "captum IF (Arnoldi)": Method(captum_arnoldi_adapter, damped=True, heavy=True),
        "cleanlab": Method(cleanlab_adapter(fold_trainer(recipe, bundle))),
    }
    return methods


def reference_curvature(arch: str) -> str:
    """Curvature used for the fidelity pair (dropout vs identity at the same curvature).

    The MLP's 9 610 parameters allow the exact full Fisher; the CNN's 151 k do not, so its
    fidelity pair uses the identity curvature (gradient similarity) on both sides.
    """
    return "full" if arch == "mlp" else "identity"


def fidelity_pair(problem: Problem, arch: str) -> tuple[dict[str, float], np.ndarray]:
    """Fidelity of dropout against identity compression at the same curvature and damping.

    Returns:
        The fidelity report (plus the curvature used) and the exact (identity) scores.
    """
    from dropinf.core import CompressionConfig, CurvatureConfig, cross_entropy_per_sample
    from dropinf.engine import InfluenceEngine

    curvature = CurvatureConfig(kind=reference_curvature(arch), damping_ratio=problem.damping_ratio)
    scores = {}
    for method in ("dropout", "identity"):
        compression = CompressionConfig(
            method=method, keep_ratio=KEEP_RATIO, seed=0, mask="uniform"
        )
        engine = InfluenceEngine(problem.model, cross_entropy_per_sample, compression, curvature)
        scores[method] = engine.fit(problem.train).pairwise_scores(problem.test).numpy()
    report = evaluate.fidelity(scores["dropout"], scores["identity"], top=10).to_dict()
    report["curvature"] = curvature.kind
    return report, scores["identity"]


def selection_rows(n_test: int) -> np.ndarray:
    """The held-out test examples damping is chosen on: the first even-indexed ones."""
    return np.arange(0, n_test, 2)[:SELECTION_TESTS]


def choose_damping(
    name: str,
    method: Method,
    problem: Problem,
    subsets: evaluate.SubsetOutputs,
    timeout_s: int,
    grid: tuple[float, ...] = DAMPING_GRID,
) -> tuple[float, MethodResult | None]:
    """The grid ratio with the best LDS on the held-out (even-indexed) test examples.

    Returns:
        The ratio, and the failed run if the method failed on the held-out examples.
    """
    rows = selection_rows(len(problem.test))
    held_out = replace(problem, test=Subset(problem.test, rows.tolist()))
    best, best_lds = grid[0], -np.inf
    for ratio in grid:
        result = run_method(name, method.adapter, replace(held_out, damping_ratio=ratio), timeout_s)
        if result.error is not None:
            return ratio, result
        margins = subsets.margins[:, rows]
        lds = evaluate.linear_datamodeling_score(result.scores, subsets.masks, margins).lds
        if lds > best_lds:
            best, best_lds = ratio, lds
    return best, None


def report_lds(scores: np.ndarray, subsets: evaluate.SubsetOutputs) -> float:
    """LDS on the odd-indexed test examples (the even ones choose the damping)."""
    rows = np.arange(1, scores.shape[0], 2)
    report = evaluate.linear_datamodeling_score(
        scores[rows], subsets.masks, subsets.margins[:, rows]
    )
    return report.lds


# ---------------------------------------------------------------------------------- settings


@dataclass
class Carry:
    """What later settings of one invocation reuse from earlier ones.

    Attributes:
        timed_out: ``"arch/method"`` -> the setting where the method ran past the time limit;
            it is not run again on that architecture.
        ratios: ``"arch/noise/method"`` -> the damping ratio chosen on noise seed 0.
        skip: Methods not run in this invocation (``--skip-methods``).
    """

    timed_out: dict[str, str] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    skip: tuple[str, ...] = ()

    @classmethod
    def from_earlier(cls, settings: list[dict], skip: tuple[str, ...] = ()) -> Carry:
        """Start from an earlier results file: its time-outs and the ratios chosen on seed 0."""
        carry = cls(skip=skip)
        for setting in settings:
            label = f"{setting['arch']} / {setting['noise']} / seed {setting['seed']}"
            for row in setting["methods"]:
                if "MethodTimeoutError: ran past" in (row.get("error") or ""):
                    carry.timed_out[f"{setting['arch']}/{row['method']}"] = label
                elif row.get("damping_ratio") is not None and setting["seed"] == HEAVY_SEED:
                    key = f"{setting['arch']}/{setting['noise']}/{row['method']}"
                    carry.ratios[key] = row["damping_ratio"]
        return carry


def run_setting(
    size: Size, arch: str, kind: str, seed: int, dropinf_only: bool, carry: Carry
) -> dict:
    """Train, run every method, evaluate: one table's worth of results.

    Args:
        size: The benchmark size.
        arch: Architecture.
        kind: Noise kind.
        seed: Noise seed.
        dropinf_only: Skip the peers.
        carry: Time-outs and chosen damping ratios of earlier settings (updated here).
    """
    bundle = load_setting(size, kind, seed)
    recipe = make_recipe(arch, bundle, size.epochs)
    torch.manual_seed(0)
    model = train(recipe, bundle)
    subsets = _subset_outputs(size, recipe, bundle) if size.lds_subsets > 0 else None
    workdir = Path(tempfile.mkdtemp(prefix="peers-"))
    problem = Problem(
        model,
        bundle.train,
        bundle.test,
        k=0,
        damping_ratio=0.1,
        num_classes=bundle.num_classes,
        workdir=workdir,
    )
    results, ratios = [], {}
    with contextlib.chdir(workdir):  # peers that write into the working directory (dattri)
        table = method_table(dropinf_only, recipe, bundle, size.extra_keep_ratios)
        for name, method in table.items():
            skipped = _skip_reason(name, method, arch, seed, size, carry)
            if skipped:
                results.append(MethodResult(name=name, skipped=skipped))
                continue
            known = carry.ratios.get(f"{arch}/{kind}/{name}")
            result, ratios[name] = _run_chosen(name, method, problem, subsets, size, known)
            if name == "dropinf dropout" and result.k:
                problem.k = result.k  # every peer with a compressed dimension gets the same k
            if result.error and "MethodTimeoutError" in result.error:
                carry.timed_out[f"{arch}/{name}"] = f"{arch} / {kind} / seed {seed}"
            if ratios[name] is not None and not result.error:
                carry.ratios[f"{arch}/{kind}/{name}"] = ratios[name]
            results.append(result)
            print(f"  {name}: {result.total_s:.2f}s {result.error or ''}", flush=True)
    fidelity, exact = fidelity_pair(
        replace(problem, damping_ratio=ratios.get("dropinf dropout") or 0.1), arch
    )
    rows = [_method_row(r, bundle, subsets, exact, ratios.get(r.name)) for r in results]
    return {
        "arch": arch,
        "noise": kind,
        "seed": seed,
        "n_train": len(bundle.train),
        "n_test": len(bundle.test),
        "recipe": asdict(recipe),
        "damping_ratio": ratios.get("dropinf dropout"),
        "k": problem.k,
        "fidelity": fidelity,
        "methods": rows,
    }


def _skip_reason(name: str, method: Method, arch: str, seed: int, size: Size, carry: Carry) -> str:
    """Why a method is not run on this setting ("" when it is)."""
    first = carry.timed_out.get(f"{arch}/{name}")
    if first:
        return f"ran past the {size.method_timeout_s} s limit on {first}; not run again"
    if method.heavy and seed != HEAVY_SEED:
        return f"heavy: runs on noise seed {HEAVY_SEED} only"
    if name in carry.skip:
        return "minutes per setting on 2 cores: not run on this setting (--skip-methods)"
    return ""


def _run_chosen(
    name: str, method: Method, problem: Problem, subsets, size: Size, known: float | None
) -> tuple[MethodResult, float | None]:
    """Choose the method's damping on held-out examples (unless known), then run it timed."""
    ratio = known
    if method.damped and ratio is None and subsets is not None:
        ratio, failed = choose_damping(
            name, method, problem, subsets, size.method_timeout_s, size.damping_grid
        )
        if failed is not None:
            return failed, ratio
    elif method.damped and ratio is None:
        ratio = problem.damping_ratio
    chosen = replace(problem, damping_ratio=ratio if ratio is not None else problem.damping_ratio)
    return run_method(name, method.adapter, chosen, timeout_s=size.method_timeout_s), ratio


def _subset_outputs(size: Size, recipe, bundle: DatasetBundle) -> evaluate.SubsetOutputs:
    start = time.perf_counter()
    outputs = evaluate.lds_subset_outputs(
        recipe, bundle, n_subsets=size.lds_subsets, fraction=0.5, seed=0, cache_dir=CACHE
    )
    print(f"  LDS subsets ready in {time.perf_counter() - start:.1f}s", flush=True)
    return outputs


def _method_row(
    result: MethodResult, bundle: DatasetBundle, subsets, exact, damping_ratio: float | None
) -> dict:
    row = {
        "method": result.name,
        "phases": result.phases,
        "total_s": result.total_s,
        "peak_mb": result.peak_bytes / 2**20,
        "stored_mb": result.bytes_stored / 2**20,
        "k": result.k,
        "damping_ratio": damping_ratio,
        "note": result.note.splitlines()[0] if result.note else "",
        "error": result.error,
        "skipped": result.skipped,
    }
    if result.error is not None or result.skipped:
        return row
    if result.suspicion is not None:
        report = evaluate.detection_report(result.suspicion, bundle.noisy_mask)
        row["auc"], row["recall_10"] = report.auc, report.recall_at_share[0.1]
    self_influence = result.self_influence
    if self_influence is None and result.scores is not None:
        self_influence = result.suspicion  # an influence method detects by self-influence
    if self_influence is not None:
        row["auc_self_influence"] = evaluate.roc_auc(self_influence, bundle.noisy_mask)
    if result.scores is not None:
        row["agreement_exact"] = evaluate.fidelity(result.scores, exact).spearman
        if subsets is not None:
            row["lds"] = report_lds(result.scores, subsets)
    return row


# ------------------------------------------------------------------------------------- main


def versions() -> dict[str, str]:
    """Versions of Python, torch and every peer importable here."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version(), "machine": platform.machine()}
    for package in ("torch", "numpy", "dattri", "traker", "kronfluence", "captum", "cleanlab"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def kept_settings(earlier: list[dict], fresh: list[dict]) -> list[dict]:
    """Settings of an earlier results file that this run did not recompute."""
    done = {(s["arch"], s["noise"], s["seed"]) for s in fresh}
    return [s for s in earlier if (s["arch"], s["noise"], s["seed"]) not in done]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, every method")
    parser.add_argument("--dropinf-only", action="store_true", help="skip the peers")
    parser.add_argument("--out", type=Path, default=BENCH / "PEERS.md")
    parser.add_argument("--plot", type=Path, default=BENCH / "peers_quality_vs_time.png")
    parser.add_argument("--json", type=Path, default=CACHE / "peers-results.json")
    parser.add_argument(
        "--keep-from",
        type=Path,
        help="an earlier results JSON whose settings not run now are kept in the report",
    )
    parser.add_argument("--archs", nargs="+", help="override the size's architectures")
    parser.add_argument("--kinds", nargs="+", help="override the size's noise kinds")
    parser.add_argument("--seeds", nargs="+", type=int, help="override the size's noise seeds")
    parser.add_argument("--skip-methods", nargs="+", default=(), help="method labels not to run")
    parser.add_argument("--damping-grid", nargs="+", type=float, help="override the damping grid")
    parser.add_argument(
        "--extra-keep", nargs="+", type=float, help="more dropinf rows at these keep ratios"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    torch.set_default_dtype(torch.float32)
    size = SMOKE if args.smoke else FULL
    overrides = {
        "archs": args.archs,
        "noise_kinds": args.kinds,
        "seeds": args.seeds,
        "damping_grid": args.damping_grid,
        "extra_keep_ratios": args.extra_keep,
    }
    size = replace(size, **{k: tuple(v) for k, v in overrides.items() if v})
    earlier = json.loads(args.keep_from.read_text()) if args.keep_from else None
    kept = earlier["settings"] if earlier else []
    settings, carry = [], Carry.from_earlier(kept, tuple(args.skip_methods))
    for arch in size.archs:
        for kind in size.noise_kinds:
            for seed in size.seeds:
                print(f"{arch} / {kind} / seed {seed}", flush=True)
                settings.append(run_setting(size, arch, kind, seed, args.dropinf_only, carry))
                write_results(args, size, settings, earlier)  # a stop loses little
    return 0


def write_results(
    args: argparse.Namespace, size: Size, settings: list[dict], earlier: dict | None
) -> None:
    """The raw JSON, the markdown report and the plot of the settings done so far.

    Args:
        args: The command line (output paths).
        size: The benchmark size.
        settings: The settings this run computed.
        earlier: The ``--keep-from`` results, read once; their other settings are kept.
    """
    from peers_report import write_plot, write_report

    commands = [sys.argv]
    if earlier is not None:
        settings = kept_settings(earlier["settings"], settings) + settings
        commands = (earlier["commands"] if "commands" in earlier else [earlier["argv"]]) + commands
    payload = {"size": asdict(size), "versions": versions(), "commands": commands}
    payload["settings"] = settings
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=1, default=float))
    write_report(payload, args.out)
    write_plot(payload, args.plot)


if __name__ == "__main__":
    raise SystemExit(main())
