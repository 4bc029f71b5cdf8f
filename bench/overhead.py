"""Cost of the gradient phase of ``fit`` relative to one plain training epoch.

The plain epoch is forward + loss + ``.backward()`` over the same data, same batch size, no
optimizer step. The gradient phase is the engine's capture + compression + writing the shards.
Both run side by side in this process, alternating, and the ratio of medians is printed (absolute
times on a shared 2-core machine mean little).

    .venv/bin/python bench/overhead.py                 # CNN, 28×28, 10 782 examples, CPU
    .venv/bin/python bench/overhead.py --device cuda   # the same on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.nn import functional
from torch.utils.data import DataLoader, TensorDataset

from dropinf import CompressionConfig, CurvatureConfig, InfluenceEngine
from dropinf.core import cross_entropy_per_sample
from dropinf.data import load_data
from dropinf.models import build_model


def upsampled_digits(size: int, copies: int, seed: int) -> TensorDataset:
    """Digits resized to size×size and replicated with pixel noise (copies × 1 437 examples)."""
    train = load_data("digits").train
    generator = torch.Generator().manual_seed(seed)
    images = functional.interpolate(train.inputs, size=(size, size), mode="bilinear")
    inputs = torch.cat(
        [images + 0.05 * torch.randn(images.shape, generator=generator) for _ in range(copies)]
    )
    return TensorDataset(inputs, train.labels.repeat(copies))


def plain_epoch(
    model: torch.nn.Module, dataset: TensorDataset, batch_size: int, device: torch.device
) -> float:
    """Seconds for forward + loss + backward over the dataset (no optimizer step)."""
    synchronize(device)
    started = time.perf_counter()
    for inputs, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        inputs, labels = inputs.to(device), labels.to(device)
        functional.cross_entropy(model(inputs), labels).backward()
        model.zero_grad(set_to_none=True)
    synchronize(device)
    return time.perf_counter() - started


def gradient_phase(
    model: torch.nn.Module,
    dataset: TensorDataset,
    batch_size: int,
    config: CompressionConfig,
    device: torch.device,
) -> float:
    """Seconds of ``fit``'s gradient phase, as recorded in the run manifest."""
    with tempfile.TemporaryDirectory() as run_dir:
        engine = InfluenceEngine(
            model,
            cross_entropy_per_sample,
            config,
            CurvatureConfig(kind="identity"),
            run_dir=run_dir,
            device=device,
        )
        engine.fit(dataset, batch_size=batch_size)
        return engine.store.read_manifest()["timings"]["gradients"]


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--copies", type=int, default=8, help="replicas of the 1 437 digits")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep-ratio", type=float, default=0.25)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    dataset = upsampled_digits(args.size, args.copies, seed=0)
    model = build_model("small_cnn", in_channels=1, num_classes=10, input_size=args.size)
    model = model.to(device).eval()
    configs = {
        mask: CompressionConfig(keep_ratio=args.keep_ratio, mask=mask)
        for mask in ("uniform", "energy")
    }
    plain_epoch(model, dataset, args.batch_size, device)  # warm-up
    times: dict[str, list[float]] = {"plain epoch": [], "uniform": [], "energy": []}
    for _ in range(args.repeats):
        times["plain epoch"].append(plain_epoch(model, dataset, args.batch_size, device))
        for mask, config in configs.items():
            times[mask].append(gradient_phase(model, dataset, args.batch_size, config, device))
    report(times, len(dataset), args)


def report(times: dict[str, list[float]], n: int, args: argparse.Namespace) -> None:
    """Print medians and the ratios to the plain epoch."""
    plain = statistics.median(times["plain epoch"])
    print(
        f"small_cnn {args.size}x{args.size}, n={n}, batch {args.batch_size}, "
        f"keep ratio {args.keep_ratio}, device {args.device}, torch threads "
        f"{torch.get_num_threads()}, {args.repeats} repeats (medians)"
    )
    print(f"{'what':<32}{'seconds':>10}{'ratio':>8}")
    print(f"{'plain epoch (fwd+loss+bwd)':<32}{plain:>10.2f}{1.0:>8.2f}")
    for mask in ("uniform", "energy"):
        median = statistics.median(times[mask])
        print(f"{'fit gradient phase, ' + mask:<32}{median:>10.2f}{median / plain:>8.2f}")


if __name__ == "__main__":
    main()
