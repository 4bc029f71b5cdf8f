"""Cost of ``fit`` at CIFAR size: seconds per phase, peak memory, bytes, query latency.

N CIFAR-shaped inputs (3×32×32, 10 classes) with **random pixels and random labels**: fine for
cost (time, memory, bytes depend on shapes, not on what the pixels show), meaningless for
quality. Each example is generated from its index by a seeded generator, so the data take no
memory that grows with N. The engine runs with its default settings, whatever
``CompressionConfig()`` and ``CurvatureConfig()`` are at run time (``--curvature``,
``--keep-ratio`` and ``--max-kept-units`` override them); k, the curvature kind and the damping
are read back from the run manifest.

Each (model, N) runs in its own child process, so its peak RSS (``ru_maxrss``) is its own. The
child first times one plain training epoch (forward + backward + AdamW step, same data, batch
size and threads), then resets the peak-RSS mark (Linux ``/proc/self/clear_refs``) and fits: the
peak RSS reported is the fit's (plus the interpreter and torch), the epoch's is reported beside
it. The data fingerprint is passed in, as the CLI passes its loaded bundle's, so the fit does no
hashing pass over the data. Then one new example is queried against the stored N (median of
``QUERY_REPEATS`` after one warm-up).

``--repeats R`` alternates R fits with R - 1 more epochs in the same child (epoch, fit,
epoch, fit, ...: both see the same machine state; on a shared machine a single pair can be
10 % apart either way) and reports the medians, every time kept in the JSON; the peak RSS is
the highest of the fits'.

``--reuse-freed-memory`` tunes the child's allocator the way ``python -m dropinf`` (the CLI
and the dashboard's jobs) tunes its own (``dropinf.cli.allocator``), before the epoch and the
fits alike; without it both run on glibc's defaults, as a plain training script does.

``--nproc 1 2`` measures each (model, N) once per process count, side by side: a count P > 1
runs the child under ``torch.distributed.run --standalone --nproc-per-node P`` (gloo on CPU,
NCCL on GPUs; torchrun gives each process one thread unless ``--threads`` says otherwise), every
process fitting its share of the one run; rank 0 reports the phases (which end together) and
the query. The plain epoch is measured by the single-process child only; a second table gives
each phase's speed-up over one process.

    .venv/bin/python bench/scale.py                                   # 10k 25k 50k, both models
    .venv/bin/python bench/scale.py --sizes 2000 5000 --models small_cnn
    .venv/bin/python bench/scale.py --device cuda --out-json scale.json
    .venv/bin/python bench/scale.py --sizes 5000 --models small_cnn --nproc 1 2
    .venv/bin/python bench/scale.py --sizes 10000 50000 --models small_cnn --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional
from torch.utils.data import DataLoader, Dataset

from dropinf import CompressionConfig, CurvatureConfig, InfluenceEngine
from dropinf.cli.allocator import reuse_freed_memory
from dropinf.core import cross_entropy_per_sample
from dropinf.engine.distributed import Team, torchrun_process_group
from dropinf.errors import ConfigError
from dropinf.models import build_model

IMAGE_SHAPE = (3, 32, 32)
NUM_CLASSES = 10
ARCH_ARGS: dict[str, dict[str, int]] = {
    "small_cnn": {"in_channels": 3, "num_classes": NUM_CLASSES, "input_size": 32},
    "resnet9": {"in_channels": 3, "num_classes": NUM_CLASSES},
}
PHASES = ("calibration", "gradients", "curvature", "self_influence")
DATA_SEED, QUERY_SEED = 0, 1
QUERY_REPEATS = 5
LEARNING_RATE = 1e-3
# option dest -> (config class, field name); forwarded to the engine only when given
OVERRIDES: dict[str, tuple[type, str]] = {
    "curvature": (CurvatureConfig, "kind"),
    "keep_ratio": (CompressionConfig, "keep_ratio"),
    "max_kept_units": (CompressionConfig, "max_kept_units"),
}
GB = 1024**3


class RandomImages(Dataset):
    """N random 3×32×32 images with random labels, each made from its index on demand.

    Args:
        size: Number of examples.
        seed: Seed of the whole set; example i depends on (seed, i) only.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(f"expected an index in [0, {self.size}), found {index}")
        generator = torch.Generator().manual_seed((self.seed << 40) + index)
        image = torch.rand(IMAGE_SHAPE, generator=generator)  # (3, 32, 32)
        label = torch.randint(NUM_CLASSES, (), generator=generator)
        return image, label


@dataclasses.dataclass
class Row:
    """One (model, N) configuration, measured in its own process."""

    model: str
    n: int
    batch_size: int
    device: str
    threads: int
    k: int
    curvature_kind: str
    damping: float
    compression: dict[str, Any]
    phases: dict[str, float]
    fit_s: float
    epoch_s: float | None
    fit_per_epoch: float | None
    peak_rss_gb: float
    epoch_peak_rss_gb: float | None
    peak_rss_is_fit_only: bool
    peak_gpu_gb: float | None
    run_dir_bytes: int
    query_s: float
    processes: int = 1  # torch.distributed world size; epoch fields are None when > 1
    peak_rss_ratio: float | None = None  # to the smallest N of the same model, set by the parent
    fit_s_each: list[float] | None = None  # every fit, in order (fit_s is their median)
    epoch_s_each: list[float] | None = None  # every epoch, in order (epoch_s is their median)


# ------------------------------------------------------------------ child: one configuration
def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_training_epoch(
    model: torch.nn.Module, dataset: Dataset, batch_size: int, device: torch.device
) -> float:
    """Seconds of one training epoch: forward + loss + backward + AdamW step per batch."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    synchronize(device)
    started = time.perf_counter()
    for inputs, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        loss = functional.cross_entropy(model(inputs.to(device)), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    synchronize(device)
    return time.perf_counter() - started


def peak_rss_gb() -> float:
    """This process's peak resident set size so far (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def reset_peak_rss() -> bool:
    """Lower the peak-RSS mark to the current RSS (Linux ≥ 4.0); False where impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def engine_configs(overrides: dict[str, Any]) -> tuple[CompressionConfig, CurvatureConfig]:
    """The default configs with the given overrides (option dest -> value) applied.

    Raises:
        ConfigError: An override names a field the config does not have (yet), or a value
            the config refuses.
    """
    fields: dict[type, dict[str, Any]] = {CompressionConfig: {}, CurvatureConfig: {}}
    for dest, value in overrides.items():
        config_class, field = OVERRIDES[dest]
        known = {known.name for known in dataclasses.fields(config_class)}
        if field not in known:
            raise ConfigError(
                f"expected --{dest.replace('_', '-')} to set a field of {config_class.__name__} "
                f"({', '.join(sorted(known))}); found no field {field!r}"
            )
        fields[config_class][field] = value
    compression = CompressionConfig(**fields[CompressionConfig])
    return compression, CurvatureConfig(**fields[CurvatureConfig])


def timed_query(engine: InfluenceEngine, device: torch.device) -> float:
    """Median seconds of ``query()`` of one new example, after one warm-up."""
    image, label = RandomImages(1, QUERY_SEED)[0]
    batch = (image[None], label[None])  # (1, 3, 32, 32), (1,)
    engine.query(batch)
    times = []
    for _ in range(QUERY_REPEATS):
        synchronize(device)
        started = time.perf_counter()
        engine.query(batch)
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def directory_bytes(path: Path) -> int:
    """Total size of the files under ``path``."""
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def fit_and_measure(engine: InfluenceEngine, dataset: RandomImages, batch_size: int) -> float:
    """Seconds of ``engine.fit`` on the dataset (fingerprint given, as the CLI gives its own)."""
    fingerprint = f"bench-scale-random:n={len(dataset)},seed={dataset.seed}"
    synchronize(engine.device)
    started = time.perf_counter()
    engine.fit(dataset, batch_size=batch_size, data_fingerprint=fingerprint)
    synchronize(engine.device)
    return time.perf_counter() - started


def measure_one(args: argparse.Namespace, run_dir: Path) -> Row | None:
    """Time epochs and fits alternately, then query and measure one (model, N) in this process.

    The first epoch trains the weights every fit uses; with ``--repeats R`` the child then
    alternates R fits with R - 1 more epochs (each on a copy of the trained model), so both
    see the same machine state, and reports medians. Under torchrun every process trains the
    same epoch (the fitted model is the trained one) but its time is not reported, every
    process fits its share, and only rank 0 queries and returns the row (the others return
    None).
    """
    (model_name,), (n,) = args.models, args.sizes
    team = Team.current()
    device = torch.device(args.device)
    torch.manual_seed(0)
    dataset = RandomImages(n, DATA_SEED)
    model = build_model(model_name, **ARCH_ARGS[model_name]).to(device)
    epochs = [plain_training_epoch(model, dataset, args.batch_size, device)]  # also the weights
    gc.collect()
    epoch_peak = peak_rss_gb()
    fits: list[tuple[float, dict[str, float]]] = []
    fit_peak, fit_only = 0.0, True
    for repeat in range(args.repeats):
        if repeat:
            epochs.append(plain_training_epoch(copy.deepcopy(model), dataset, args.batch_size,
                                               device))  # fmt: skip
            shutil.rmtree(run_dir)
            gc.collect()
        engine, fit_s, fit_only_now = fit_once(args, model, dataset, run_dir)
        fits.append((fit_s, engine.store.read_manifest()["timings"]))
        fit_peak, fit_only = max(fit_peak, peak_rss_gb()), fit_only and fit_only_now
    if not team.leader:
        return None
    epoch_s = None if team.distributed else statistics.median(epochs)  # all trained at once
    fit_s = statistics.median(seconds for seconds, _ in fits)
    gpu_peak = torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None
    manifest = engine.store.read_manifest()
    return Row(
        model=model_name,
        n=n,
        batch_size=args.batch_size,
        device=str(device),
        threads=torch.get_num_threads(),
        k=manifest["k"],
        curvature_kind=manifest["curvature_kind"],
        damping=manifest["damping"],
        compression=manifest["compression"],
        phases=median_phases([phases for _, phases in fits]),
        fit_s=fit_s,
        epoch_s=epoch_s,
        fit_per_epoch=None if epoch_s is None else fit_s / epoch_s,
        peak_rss_gb=fit_peak,
        epoch_peak_rss_gb=None if team.distributed else epoch_peak,
        peak_rss_is_fit_only=fit_only,
        peak_gpu_gb=gpu_peak,
        run_dir_bytes=directory_bytes(run_dir),
        query_s=timed_query(engine, device),
        processes=team.size,
        fit_s_each=[seconds for seconds, _ in fits],
        epoch_s_each=None if team.distributed else epochs,
    )


def fit_once(
    args: argparse.Namespace, model: torch.nn.Module, dataset: RandomImages, run_dir: Path
) -> tuple[InfluenceEngine, float, bool]:
    """A fresh engine fitted into ``run_dir``: (engine, seconds, peak RSS mark was reset)."""
    fit_only = reset_peak_rss()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    compression, curvature = engine_configs(given_overrides(args))
    engine = InfluenceEngine(
        model, cross_entropy_per_sample, compression, curvature, run_dir=run_dir, device=device
    )
    return engine, fit_and_measure(engine, dataset, args.batch_size), fit_only


def median_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each phase's median seconds over the fits that recorded it."""
    names = {name for phases in runs for name in phases}
    return {
        name: statistics.median(phases[name] for phases in runs if name in phases)
        for name in sorted(names)
    }


def run_child(args: argparse.Namespace) -> None:
    """``--one``: measure the single configuration and write its row as JSON."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reuse_freed_memory and not reuse_freed_memory():
        print("warning: the allocator could not be tuned here (not glibc, or set by the user)",
              file=sys.stderr)  # fmt: skip
    with torchrun_process_group():
        row = measure_one(args, Path(args.work_dir))
    if row is not None:
        Path(args.row_json).write_text(json.dumps(dataclasses.asdict(row)))


# ------------------------------------------------------------------ parent: every configuration
def given_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The engine overrides given on the command line (option dest -> value)."""
    return {dest: getattr(args, dest) for dest in OVERRIDES if hasattr(args, dest)}


def child_command(
    args: argparse.Namespace, model: str, n: int, run_dir: Path, row: Path, processes: int = 1
) -> list[str]:
    """The command line of the child process (torchrun's, for several) that measures (model, n)."""
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                     str(processes)]  # fmt: skip
    command = [*launcher, str(Path(__file__).resolve()), "--one", "--models", model,
               "--sizes", str(n), "--batch-size", str(args.batch_size), "--device", args.device,
               "--work-dir", str(run_dir), "--row-json", str(row),
               "--repeats", str(args.repeats)]  # fmt: skip
    if args.reuse_freed_memory:
        command.append("--reuse-freed-memory")
    if args.threads:
        command += ["--threads", str(args.threads)]
    for dest, value in given_overrides(args).items():
        command += [f"--{dest.replace('_', '-')}", "none" if value is None else str(value)]
    return command


def measure_all(args: argparse.Namespace, work_dir: Path, keep_runs: bool) -> tuple[list, list]:
    """Run one child per (model, N); returns (rows, failures), rows as dicts."""
    rows, failures = [], []
    for model in args.models:
        for n in args.sizes:
            for processes in args.nproc:
                row, failure = measure_in_child(args, work_dir, keep_runs, model, n, processes)
                rows += [row] if row else []
                failures += [failure] if failure else []
    add_rss_ratios(rows)
    return rows, failures


def measure_in_child(
    args: argparse.Namespace,
    work_dir: Path,
    keep_runs: bool,
    model: str,
    n: int,
    processes: int,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Measure (model, n) with ``processes`` processes in a child: (row, None) or (None, why)."""
    suffix = "" if processes == 1 else f"-p{processes}"
    run_dir = Path(tempfile.mkdtemp(prefix=f"{model}-n{n}{suffix}-", dir=work_dir))
    row_file = run_dir.with_suffix(".row.json")
    print(f"measuring {model} n={n} processes={processes} ...", file=sys.stderr, flush=True)
    command = child_command(args, model, n, run_dir, row_file, processes)
    done = subprocess.run(command, check=False)
    row = json.loads(row_file.read_text()) if done.returncode == 0 else None
    failure = None
    if row is None:
        failure = {"model": model, "n": n, "processes": processes, "returncode": done.returncode}
    row_file.unlink(missing_ok=True)
    if not keep_runs:
        shutil.rmtree(run_dir)
    return row, failure


def add_rss_ratios(rows: list[dict[str, Any]]) -> None:
    """Set each row's peak RSS relative to the smallest N measured for its model (and P)."""
    for row in rows:
        same_model = [
            other
            for other in rows
            if other["model"] == row["model"] and other["processes"] == row["processes"]
        ]
        smallest = min(same_model, key=lambda other: other["n"])
        row["peak_rss_ratio"] = row["peak_rss_gb"] / smallest["peak_rss_gb"]


def seconds(phases: dict[str, float], phase: str) -> str:
    """A phase's seconds for the table, or — when the engine did not record it."""
    return f"{phases[phase]:.1f}" if phase in phases else "—"


def damping(value: float | None) -> str:
    """The damping for the table, or — when the curvature kind has none."""
    return "—" if value is None else f"{value:.2g}"


def size_text(size: int) -> str:
    """Bytes as GB, or as MB below one GB."""
    return f"{size / GB:.2f} GB" if size >= GB else f"{size / 1024**2:.1f} MB"


def optional(value: float | None, unit: str = "", digits: int = 1) -> str:
    """A number for the table, or — when it was not measured (several processes)."""
    return "—" if value is None else f"{value:.{digits}f}{unit}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table for bench/RESULTS.md."""
    lines = [
        "| model | N | processes | k | curvature (λ) | calibration | gradients | curvature "
        "| self-infl. | whole fit | plain epoch | fit ÷ epoch | peak RSS | ÷ smallest N | run dir "
        "| query |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        phases = row["phases"]
        lines.append(
            f"| {row['model']} | {row['n']} | {row['processes']} | {row['k']} "
            f"| {row['curvature_kind']} ({damping(row['damping'])}) "
            f"| {' | '.join(seconds(phases, p) for p in PHASES)} | {row['fit_s']:.1f} s "
            f"| {optional(row['epoch_s'], ' s')} | {optional(row['fit_per_epoch'], '', 2)} "
            f"| {row['peak_rss_gb']:.2f} GB | {row['peak_rss_ratio']:.2f} "
            f"| {size_text(row['run_dir_bytes'])} | {row['query_s']:.3f} s |"
        )
    return "\n".join(lines)


def speedup_table(rows: list[dict[str, Any]]) -> str:
    """Each phase's (and the fit's) seconds with one process ÷ with P, for every P > 1 row."""
    lines = [
        f"| model | N | processes | {' | '.join(PHASES)} | whole fit |",
        "|---|---|---|" + "---|" * (len(PHASES) + 1),
    ]
    for row in rows:
        single = [
            other
            for other in rows
            if (other["model"], other["n"], other["processes"]) == (row["model"], row["n"], 1)
        ]
        if row["processes"] == 1 or not single:
            continue
        ratios = [ratio(single[0]["phases"].get(p), row["phases"].get(p)) for p in PHASES]
        lines.append(
            f"| {row['model']} | {row['n']} | {row['processes']} | {' | '.join(ratios)} "
            f"| {ratio(single[0]['fit_s'], row['fit_s'])} |"
        )
    return "\n".join(lines)


def ratio(one: float | None, several: float | None) -> str:
    """``one ÷ several`` as ``1.84×``, or — when a phase was not recorded."""
    return "—" if not one or not several else f"{one / several:.2f}×"


def command_line() -> str:
    """This run's command line, the interpreter relative to the working directory if inside."""
    executable = Path(sys.executable)
    inside = executable.is_relative_to(Path.cwd())
    shown = os.path.relpath(executable) if inside else str(executable)
    return shlex.join([shown, *sys.argv])


def report(args: argparse.Namespace, rows: list[dict[str, Any]], failures: list) -> None:
    """Print the setting, the table, the peak-RSS ratios and the command."""
    threads = rows[0]["threads"] if rows else args.threads or torch.get_num_threads()
    allocator = "freed memory reused" if args.reuse_freed_memory else "glibc defaults"
    print(
        f"\nCIFAR-shaped random pixels and labels (3x32x32, 10 classes): fine for cost, not "
        f"quality. batch {args.batch_size}, device {args.device}, torch threads {threads}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}. Phases and fit in seconds; plain "
        f"epoch = forward + backward + AdamW step; query = one new example against the stored "
        f"N, median of {QUERY_REPEATS}. Allocator: {allocator}; fit and epoch: medians of "
        f"{args.repeats} alternated.\n"
    )
    print(markdown_table(rows))
    if any(row["processes"] > 1 for row in rows):
        print("\nSpeed-up over one process (seconds with 1 ÷ seconds with P):\n")
        print(speedup_table(rows))
    for row in rows:
        print(f"peak RSS {row['model']} n={row['n']}: {row['peak_rss_ratio']:.2f}x smallest N"
              f"{'' if row['peak_rss_is_fit_only'] else ' (includes the epoch peak)'}")  # fmt: skip
    for failure in failures:
        print(f"FAILED {failure['model']} n={failure['n']} processes={failure['processes']}: "
              f"exit {failure['returncode']}")  # fmt: skip
    print(f"\n`{command_line()}`")


def positive_int(text: str) -> int:
    """An integer ≥ 1 (an argparse type)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {text}")
    return value


def kept_units(text: str) -> int | None:
    """``--max-kept-units``: an integer, or ``none`` for no cap (an argparse type)."""
    return None if text.lower() == "none" else int(text)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[10_000, 25_000, 50_000])
    parser.add_argument("--models", nargs="+", choices=list(ARCH_ARGS), default=list(ARCH_ARGS))
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=positive_int, help="torch.set_num_threads")
    parser.add_argument(
        "--nproc",
        type=positive_int,
        nargs="+",
        default=[1],
        help="process counts to measure side by side (P > 1: under torchrun)",
    )
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=1,
        help="fits per configuration, alternating with epochs; medians are reported",
    )
    parser.add_argument(
        "--reuse-freed-memory",
        action="store_true",
        help="tune the child's allocator as `python -m dropinf` does (epoch and fit alike)",
    )
    parser.add_argument("--out-json", type=Path, help="write every row here")
    parser.add_argument("--work-dir", type=Path, help="keep the run directories here")
    suppress = argparse.SUPPRESS
    parser.add_argument("--curvature", default=suppress, help="CurvatureConfig.kind")
    parser.add_argument("--keep-ratio", type=float, default=suppress)
    parser.add_argument("--max-kept-units", type=kept_units, default=suppress, help="or none")
    parser.add_argument("--one", action="store_true", help=suppress)
    parser.add_argument("--row-json", help=suppress)
    return parser


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a bad device or engine override before any child starts (exit 2)."""
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"expected --device cpu or cuda, found {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("expected a CUDA device for --device cuda, found none")
    if args.repeats > 1 and max(args.nproc) > 1:
        parser.error(f"expected --repeats 1 with --nproc > 1, found --repeats {args.repeats}")
    try:
        engine_configs(given_overrides(args))
    except ConfigError as error:
        parser.error(str(error))


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    check_options(parser, args)
    if args.one:
        run_child(args)
        return
    temporary = None if args.work_dir else tempfile.TemporaryDirectory(prefix="dropinf-scale-")
    work_dir = args.work_dir or Path(temporary.name)
    work_dir.mkdir(parents=True, exist_ok=True)
    rows, failures = measure_all(args, work_dir, keep_runs=temporary is None)
    if temporary is not None:
        temporary.cleanup()
    report(args, rows, failures)
    if args.out_json:
        payload = {"command": command_line(), "rows": rows, "failures": failures}
        args.out_json.write_text(json.dumps(payload, indent=1))
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
