"""Cost of the K-FAC statistics (``KroneckerStats``) on top of the gradient capture.

On ``small_cnn(in_channels=3, input_size=32)`` with random pixels (cost only), one batch is
captured without and with ``kronecker=stats``, alternating in this process; the medians and their
ratio are printed (absolute times on a shared 2-core machine mean little). The statistics step
alone (activation and output-gradient moments of an already captured batch) is timed too, as a
share of the plain capture: it is the same number with less noise.

    .venv/bin/python bench/kfac_stats.py                      # exact, 256 examples, 7 repeats
    .venv/bin/python bench/kfac_stats.py --position-step 2    # A on a 1/4 sub-grid of positions
    .venv/bin/python bench/kfac_stats.py --threads 1          # steadier on a busy machine
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from dropinf.core import (
    CompressionConfig,
    GradientCapture,
    build_compressor,
    cross_entropy_per_sample,
    discover_layers,
)
from dropinf.models import build_model


def seconds(run: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def build_capture(seed: int) -> GradientCapture:
    """The default dropout masks (uniform, so no calibration pass) on the CIFAR-shaped CNN."""
    torch.manual_seed(seed)
    model = build_model("small_cnn", in_channels=3, input_size=32, num_classes=10).eval()
    layout = discover_layers(model)
    config = CompressionConfig(mask="uniform", seed=seed)
    compressors = [build_compressor(spec, config, i) for i, spec in enumerate(layout.specs)]
    return GradientCapture(model, layout, compressors)


def main() -> None:
    """Print the side-by-side medians and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--position-step", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    capture = build_capture(seed=0)
    generator = torch.Generator().manual_seed(1)
    batch = [
        torch.randn(args.batch_size, 3, 32, 32, generator=generator),
        torch.randint(0, 10, (args.batch_size,), generator=generator),
    ]
    calls, losses, _ = capture._forward(cross_entropy_per_sample, batch, gather=True)
    output_grads = capture._output_grads(losses, calls)

    def plain() -> object:
        return capture.capture(cross_entropy_per_sample, batch)

    def with_stats() -> object:
        stats = capture.kronecker_stats(args.position_step)
        return capture.capture(cross_entropy_per_sample, batch, kronecker=stats)

    def stats_only() -> None:
        stats = capture.kronecker_stats(args.position_step)
        capture._add_kronecker(stats, calls, output_grads, args.batch_size)

    times: dict[str, list[float]] = {"plain": [], "stats": [], "stats_only": []}
    for run in (plain, with_stats, stats_only):  # warm-up
        run()
    for _ in range(args.repeats):
        times["plain"].append(seconds(plain))
        times["stats"].append(seconds(with_stats))
        times["stats_only"].append(seconds(stats_only))
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"small_cnn 3x32x32, batch {args.batch_size}, position_step {args.position_step}, "
        f"{args.repeats} repeats, {torch.get_num_threads()} threads"
    )
    print(f"capture without stats  {medians['plain']:.3f} s (median)")
    print(f"capture with stats     {medians['stats']:.3f} s (median)")
    print(f"ratio with / without   {medians['stats'] / medians['plain']:.3f}")
    share = medians["stats_only"] / medians["plain"]
    print(f"stats step alone       {medians['stats_only'] * 1000:.1f} ms = {share:.1%} of capture")


if __name__ == "__main__":
    main()
