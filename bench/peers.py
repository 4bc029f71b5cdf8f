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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:  # run as a script; the peers venv does not install dropinf
    sys.path.insert(0, str(ROOT))

from bench.adapters import MethodResult, Problem, run_method  # noqa: E402
from bench.lds import SubsetOutputs, lds_subset_outputs  # noqa: E402
from bench.peers_setting import (  # noqa: E402
    CACHE,
    FULL,
    SMOKE,
    Size,
    load_setting,
    make_recipe,
    train,
)
from bench.peers_table import (  # noqa: E402
    Method,
    choose_damping,
    fidelity_pair,
    method_table,
    report_lds,
)
from dropinf import metrics  # noqa: E402
from dropinf.core import CURVATURE_KINDS  # noqa: E402
from dropinf.data import DatasetBundle  # noqa: E402
from dropinf.models import TrainRecipe  # noqa: E402

THREADS = 2
HEAVY_SEED = 0  # the noise seed heavy methods run on


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
        table = method_table(
            dropinf_only, recipe, bundle, size.extra_keep_ratios, size.extra_curvature
        )
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


def _subset_outputs(size: Size, recipe: TrainRecipe, bundle: DatasetBundle) -> SubsetOutputs:
    start = time.perf_counter()
    outputs = lds_subset_outputs(
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
        report = metrics.detection_report(result.suspicion, bundle.noisy_mask)
        row["auc"], row["recall_10"] = report.auc, report.recall_at_share[0.1]
    self_influence = result.self_influence
    if self_influence is None and result.scores is not None:
        self_influence = result.suspicion  # an influence method detects by self-influence
    if self_influence is not None:
        row["auc_self_influence"] = metrics.roc_auc(self_influence, bundle.noisy_mask)
    if result.scores is not None:
        row["agreement_exact"] = metrics.fidelity(result.scores, exact).spearman
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
    parser.add_argument(
        "--extra-curvature",
        default="auto",
        choices=CURVATURE_KINDS,
        help="the curvature kind of the --extra-keep rows",
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
    given = {k: tuple(v) for k, v in overrides.items() if v}
    size = replace(size, extra_curvature=args.extra_curvature, **given)
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
    from bench.peers_report import write_plot, write_report

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
