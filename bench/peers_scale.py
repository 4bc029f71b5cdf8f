"""The peers at CIFAR size: seconds and peak memory of dropinf and the peers, side by side.

N CIFAR-shaped inputs (3×32×32, 10 classes) with **random pixels and random labels**: fine for
cost (time and memory depend on shapes, not on what the pixels show), meaningless for quality,
so there is no LDS here (at this size its retrained subsets are unaffordable on 2 cores; quality
is judged on the peers grid, bench/PEERS.md). One ``small_cnn`` (in_channels 3, input_size 32)
checkpoint is trained briefly (``--epochs``, AdamW) in this process; then every method runs in
its own child process through its bench/adapters adapter, on the same checkpoint, the same
train / test order, float32 and the same thread count, and scores ``--n-test`` test examples
against all N plus the self-influence of all N, as in bench/peers.py.

- dropinf runs with its default settings (``CompressionConfig()``, ``CurvatureConfig()``); the
  peers with a compressed dimension (dattri LoGra / FactGraSS) get its k, as in bench/peers.py;
  the damped peers get the grid's middle ratio 0.1 (damping does not change their cost).
- **end to end** = the adapter's phases (fit + scoring + self-influence); **child wall** adds the
  child's start-up (imports, data, checkpoint).
- **peak RSS** = the child's high-water mark (``VmHWM``, polled by the parent, and the child's
  own ``ru_maxrss``): interpreter, torch, the data and the method; **above start** = the
  adapter's own sampler (RSS above the level when the method started).
- A child still running after ``--timeout-s`` is killed and reported with its peak so far.

    bench/.peers-venv/bin/python bench/peers_scale.py                     # N 20 000, all methods
    bench/.peers-venv/bin/python bench/peers_scale.py --n 10000 --timeout-s 600
    .venv/bin/python bench/peers_scale.py --n 64 --n-test 8 --methods dropinf   # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional
from torch.utils.data import DataLoader

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:  # run as a script; the peers venv does not install dropinf
    sys.path.insert(0, str(ROOT))

from bench.adapters import (  # noqa: E402
    MethodResult,
    Problem,
    captum_tracin_adapter,
    dattri_block_adapter,
    dropinf_adapter,
    kronfluence_adapter,
    run_method,
)
from bench.scale import positive_int  # noqa: E402
from dropinf import CompressionConfig  # noqa: E402
from dropinf.data import Split  # noqa: E402
from dropinf.models import build_model  # noqa: E402

IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
ARCH_ARGS = {"in_channels": 3, "num_classes": NUM_CLASSES, "input_size": 32}
TRAIN_SEED, TEST_SEED = 0, 1
TRAIN_BATCH, LEARNING_RATE, WEIGHT_DECAY = 64, 1e-3, 1e-4  # bench/peers_setting's recipe
PEER_DAMPING_RATIO = 0.1
FALLBACK_K = 2048  # the peers' k when dropinf did not run (or failed) before them
POLL_S = 0.2
MB = 2**20


def dropinf_default_adapter(problem: Problem, result: MethodResult) -> None:
    """Run dropinf with its default settings: the default compression and ``CurvatureConfig()``."""
    defaults = CompressionConfig()
    adapter = dropinf_adapter(defaults.method, defaults.keep_ratio, defaults.mask)
    # damping_ratio None: the curvature kind's own default ratio (CurvatureConfig's default)
    adapter(replace(problem, damping_ratio=None), result)


METHODS: dict[str, tuple[str, Any]] = {
    "dropinf": ("dropinf (defaults)", dropinf_default_adapter),
    "logra": ("dattri LoGra", dattri_block_adapter("logra")),
    "factgrass": ("dattri FactGraSS", dattri_block_adapter("factgrass")),
    "tracincp": ("captum TracInCP", captum_tracin_adapter),
    "kronfluence": ("Kronfluence EK-FAC", kronfluence_adapter),
}
"""Option name -> (table label, adapter), in run order: dropinf first (it fixes k)."""


# ------------------------------------------------------------------------------------ data


def random_split(size: int, seed: int) -> Split:
    """``size`` random 3×32×32 images in [0, 1) with random labels, from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.rand((size, *IMAGE_SHAPE), generator=generator)  # (size, 3, 32, 32)
    labels = torch.randint(NUM_CLASSES, (size,), generator=generator)  # (size,)
    return Split(inputs, labels)


def train_checkpoint(n: int, epochs: int, path: Path) -> float:
    """Train ``small_cnn`` on the random training split, save its weights; seconds per epoch."""
    torch.manual_seed(0)
    model = build_model("small_cnn", **ARCH_ARGS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    batches = DataLoader(random_split(n, TRAIN_SEED), batch_size=TRAIN_BATCH, shuffle=True)
    started = time.perf_counter()
    for _ in range(epochs):
        for inputs, labels in batches:
            loss = functional.cross_entropy(model(inputs), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    torch.save(model.eval().state_dict(), path)
    return (time.perf_counter() - started) / epochs


# ---------------------------------------------------------------------- child: one method


def run_child(args: argparse.Namespace) -> None:
    """``--one``: run one method on the saved checkpoint and write its row as JSON."""
    torch.set_num_threads(args.threads)
    label, adapter = METHODS[args.one]
    model = build_model("small_cnn", **ARCH_ARGS)
    model.load_state_dict(torch.load(args.checkpoint, weights_only=True))
    workdir = Path(args.work_dir)
    problem = Problem(
        model.eval(),
        random_split(args.n, TRAIN_SEED),
        random_split(args.n_test, TEST_SEED),
        k=args.k,
        damping_ratio=PEER_DAMPING_RATIO,
        num_classes=NUM_CLASSES,
        workdir=workdir,
    )
    with contextlib.chdir(workdir):  # peers that write into the working directory (dattri)
        result = run_method(label, adapter, problem)
    row = {
        "phases": result.phases,
        "total_s": result.total_s,
        "peak_above_start_mb": result.peak_bytes / MB,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "stored_mb": result.bytes_stored / MB,
        "k": result.k,
        "note": result.note.splitlines()[0] if result.note else "",
        "error": result.error,
    }
    Path(args.row_json).write_text(json.dumps(row))


# ------------------------------------------------------------------- parent: every method


def high_water_mb(pid: int) -> float:
    """A live process's peak resident memory (``VmHWM``) in MB; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return 0.0


def child_command(args: argparse.Namespace, method: str, k: int, work: Path) -> list[str]:
    """The command line of the child that runs one method."""
    return [sys.executable, str(Path(__file__).resolve()), "--one", method, "--n", str(args.n),
            "--n-test", str(args.n_test), "--threads", str(args.threads), "--k", str(k),
            "--checkpoint", str(work / "checkpoint.pt"), "--work-dir", str(work / method),
            "--row-json", str(work / f"{method}.json")]  # fmt: skip


def measure(args: argparse.Namespace, method: str, k: int, work: Path) -> dict[str, Any]:
    """Run one method in a child under the time limit; its row (status, seconds, memory)."""
    (work / method).mkdir()
    label = METHODS[method][0]
    print(f"running {label} ...", file=sys.stderr, flush=True)
    started, peak = time.perf_counter(), 0.0
    with open(work / f"{method}.log", "w") as log:
        child = subprocess.Popen(child_command(args, method, k, work), stdout=log, stderr=log)
        while child.poll() is None and time.perf_counter() - started < args.timeout_s:
            peak = max(peak, high_water_mb(child.pid))
            time.sleep(POLL_S)
        if child.poll() is None:
            peak = max(peak, high_water_mb(child.pid))
            child.kill()
            child.wait()
    wall = time.perf_counter() - started
    row: dict[str, Any] = {"method": label, "child_wall_s": wall, "peak_rss_mb": peak}
    row_file = work / f"{method}.json"
    if row_file.exists():
        row |= json.loads(row_file.read_text())
        row["peak_rss_mb"] = max(peak, row["ru_maxrss_mb"])
        row["status"] = "failed" if row["error"] else "finished"
    elif child.returncode == -9:
        row["status"] = f"killed after {args.timeout_s} s (time limit)"
    else:
        tail = (work / f"{method}.log").read_text().strip().splitlines()[-1:]
        row["status"] = f"exit {child.returncode}: {' '.join(tail)[:200]}"
    print(f"  {label}: {row['status']}, {wall:.1f} s", file=sys.stderr, flush=True)
    return row


def measure_all(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Every chosen method in run order; dropinf's k goes to the peers after it."""
    rows, k = [], FALLBACK_K
    for method in [name for name in METHODS if name in args.methods]:
        row = measure(args, method, k, work)
        if method == "dropinf" and row.get("k"):
            k = row["k"]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------- report


def fit_seconds(phases: dict[str, float]) -> float | None:
    """Gradients + curvature (None when the method has neither: it fuses them into scoring)."""
    fit = [phases[p] for p in ("gradients", "curvature") if p in phases]
    return sum(fit) if fit else None


def number(value: float | None, digits: int = 1, unit: str = "") -> str:
    """A number for the table, or — when there is none."""
    return "—" if value is None else f"{value:,.{digits}f}{unit}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table, end to end also as a multiple of dropinf's."""
    label = METHODS["dropinf"][0]
    dropinf = next((r for r in rows if r["method"] == label and r["status"] == "finished"), None)
    lines = [
        "| method | status | k | fit s | scoring s | self-infl. s | end to end s | × dropinf "
        "| child wall s | peak RSS | above start | stored |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        phases = row.get("phases", {})
        total = row["total_s"] if row["status"] == "finished" else None
        times = total / dropinf["total_s"] if dropinf and total else None
        above = row.get("peak_above_start_mb")  # None: killed before the adapter returned
        lines.append(
            f"| {row['method']} | {row['status']} | {row.get('k') or '—'} "
            f"| {number(fit_seconds(phases))} | {number(phases.get('scoring'))} "
            f"| {number(phases.get('self_influence'))} | {number(total)} "
            f"| {number(times, 2, '×')} | {row['child_wall_s']:.1f} "
            f"| {number(row['peak_rss_mb'] / 1024, 2, ' GB')} "
            f"| {number(above and above / 1024, 2, ' GB')} "
            f"| {number(row.get('stored_mb'), 0, ' MB')} |"
        )
    return "\n".join(lines)


def report(args: argparse.Namespace, epoch_s: float, rows: list[dict[str, Any]]) -> str:
    """The setting, the table and the command, as printed."""
    shown = Path(sys.executable)
    if shown.is_relative_to(Path.cwd()):
        shown = shown.relative_to(Path.cwd())
    command = shlex.join([str(shown), *sys.argv])
    notes = "\n".join(f"- {row['method']}: {row['note']}" for row in rows if row.get("note"))
    return (
        f"N = {args.n} train / {args.n_test} test, CIFAR-shaped random pixels and labels "
        f"(3x32x32, 10 classes): fine for cost, meaningless for quality. small_cnn trained "
        f"{args.epochs} epoch(s), {epoch_s:.1f} s per epoch (batch {TRAIN_BATCH}). torch "
        f"{torch.__version__}, {args.threads} threads, time limit {args.timeout_s} s per method."
        f"\n\n{markdown_table(rows)}\n\n{notes}\n\n`{command}`"
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=positive_int, default=20_000, help="training examples")
    parser.add_argument("--n-test", type=positive_int, default=100, help="test examples scored")
    parser.add_argument("--epochs", type=positive_int, default=1, help="checkpoint training")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--timeout-s", type=positive_int, default=900, help="per method")
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads")
    parser.add_argument("--json", type=Path, help="write the rows here")
    suppress = argparse.SUPPRESS
    parser.add_argument("--one", choices=list(METHODS), help=suppress)
    parser.add_argument("--k", type=positive_int, default=FALLBACK_K, help=suppress)
    for hidden in ("--checkpoint", "--work-dir", "--row-json"):
        parser.add_argument(hidden, help=suppress)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.one:
        run_child(args)
        return 0
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="peers-scale-") as folder:
        work = Path(folder)
        epoch_s = train_checkpoint(args.n, args.epochs, work / "checkpoint.pt")
        rows = measure_all(args, work)
    text = report(args, epoch_s, rows)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"n": args.n, "n_test": args.n_test, "epoch_s": epoch_s, "rows": rows}
        args.json.write_text(json.dumps(payload | {"report": text}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
