"""Gradient phase of models with GroupNorm / LayerNorm: the norms' γ, β from hooks vs from vmap.

The capture gives a norm's per-sample γ / β gradients from its forward hook and the one
``autograd.grad`` call (``dropinf/core/norms.py``); without that, they come from
``torch.func.vmap``, a second forward and backward over the whole model. Two models on N random
3×32×32 images (random pixels: fine for cost, meaningless for quality):

- ``resnet9-gn``: the registry's resnet9 with every BatchNorm replaced by a GroupNorm
  (groups of 16 channels), as trained with small batches;
- ``token-mlp``: a ViT-style token model — 4×4 patches embedded by a strided conv into 64
  tokens, two pre-LayerNorm MLP blocks over the tokens with residuals, a final LayerNorm.

Each model's gradient phase (``fit`` with ``identity`` curvature, the manifest's timing) runs
alternately with the hooks (dropinf's default) and with them turned off, ``--repeats`` times in
one process; medians, their ratio, the peak RSS above the start of each (sampled), and the
largest difference between the two runs' stored gradients (they must agree).

    .venv/bin/python bench/norms.py
    .venv/bin/python bench/norms.py --n 500 --repeats 1 --models token-mlp
    .venv/bin/python bench/norms.py --device cuda --n 20000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

import dropinf.core.capture as capture  # noqa: E402
from bench.adapters.measure import PeakMemory  # noqa: E402
from bench.scale import RandomImages  # noqa: E402
from dropinf import CurvatureConfig, InfluenceEngine  # noqa: E402
from dropinf.core import cross_entropy_per_sample  # noqa: E402
from dropinf.models import build_model  # noqa: E402

GROUP_CHANNELS = 16
MB = 2**20


def resnet9_gn(width: int) -> nn.Module:
    """The registry's resnet9 with each BatchNorm2d replaced by a GroupNorm."""
    model = build_model("resnet9", in_channels=3, num_classes=10, width=width)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                channels = child.num_features
                groups = max(1, channels // GROUP_CHANNELS)
                setattr(parent, name, nn.GroupNorm(groups, channels))
    return model


class Tokens(nn.Module):
    """(B, D, H, W) feature maps as (B, H·W, D) tokens."""

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """The tokens."""
        return maps.flatten(2).transpose(1, 2)


class TokenBlock(nn.Module):
    """``x + MLP(LayerNorm(x))`` over each token."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        hidden = 2 * width
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The block's output tokens."""
        return tokens + self.mlp(self.norm(tokens))


class MeanToken(nn.Module):
    """(B, T, D) tokens → (B, D), their mean."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The mean token."""
        return tokens.mean(1)


def token_mlp(width: int) -> nn.Module:
    """Patch embedding, two LayerNorm MLP blocks, a final LayerNorm, a linear head."""
    return nn.Sequential(
        nn.Conv2d(3, width, 4, stride=4), Tokens(), TokenBlock(width), TokenBlock(width),
        nn.LayerNorm(width), MeanToken(), nn.Linear(width, 10),
    )  # fmt: skip


MODELS: dict[str, Callable[[int], nn.Module]] = {"resnet9-gn": resnet9_gn, "token-mlp": token_mlp}


@contextmanager
def norms_through_vmap(enabled: bool) -> Iterator[None]:
    """While ``enabled``, the capture hooks no norm, so vmap computes their γ / β."""
    hooked = capture.hookable_norms
    if enabled:
        capture.hookable_norms = lambda *_args: {}
    try:
        yield
    finally:
        capture.hookable_norms = hooked


def gradient_phase(
    model: nn.Module, data: RandomImages, args: argparse.Namespace, vmap: bool
) -> dict:
    """One gradient phase: seconds, peak RSS above the start, the stored gradients."""
    with tempfile.TemporaryDirectory(prefix="dropinf-norms-") as run_dir:
        engine = InfluenceEngine(
            model, cross_entropy_per_sample, curvature=CurvatureConfig(kind="identity"),
            run_dir=run_dir, device=args.device,
        )  # fmt: skip
        with norms_through_vmap(vmap), PeakMemory() as memory:
            engine.fit(data, batch_size=args.batch_size)
        return {
            "seconds": engine.store.read_manifest()["timings"]["gradients"],
            "peak_mb": memory.peak / MB,
            "gradients": np.array(engine.store.gradients(), dtype=np.float32),
            "k": engine.capture.k,
        }


def measure(name: str, args: argparse.Namespace) -> dict:
    """Alternate hooks and vmap ``args.repeats`` times on one model; medians and agreement."""
    torch.manual_seed(0)
    model = MODELS[name](args.width).eval()
    data = RandomImages(args.n, seed=0)
    runs: dict[str, list[dict]] = {"hooks": [], "vmap": []}
    for _ in range(args.repeats):
        for way in runs:
            runs[way].append(gradient_phase(model, data, args, way == "vmap"))
    hooks, vmap = runs["hooks"][0]["gradients"], runs["vmap"][0]["gradients"]
    scale = float(np.abs(vmap).max()) or 1.0
    return {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "k": runs["hooks"][0]["k"],
        **{f"{way}_s": statistics.median(r["seconds"] for r in runs[way]) for way in runs},
        **{f"{way}_mb": max(r["peak_mb"] for r in runs[way]) for way in runs},
        "max_difference": float(np.abs(hooks - vmap).max()) / scale,
    }


def report(rows: list[dict], args: argparse.Namespace) -> None:
    """Print the table."""
    print(
        f"N {args.n} random 3x32x32 images, batch {args.batch_size}, width {args.width}, "
        f"device {args.device}, {torch.get_num_threads()} torch threads, medians of "
        f"{args.repeats} alternated (hooks, vmap, hooks, ...); peak host RSS above the start of "
        "each fit.\n"
    )
    print("| model | parameters | k | gradients, norms by hooks | by vmap | vmap ÷ hooks | "
          "peak RSS hooks | vmap | max diff. (÷ max) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['model']} | {row['parameters']:,} | {row['k']:,} | {row['hooks_s']:.1f} s "
            f"| {row['vmap_s']:.1f} s | {row['vmap_s'] / row['hooks_s']:.2f} "
            f"| {row['hooks_mb']:.0f} MB | {row['vmap_mb']:.0f} MB "
            f"| {row['max_difference']:.1e} |"
        )


def main(argv: list[str] | None = None) -> None:
    """Measure every model and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--n", type=int, default=2000, help="training examples")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--width", type=int, default=64, help="channels / token features")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    report([measure(name, args) for name in args.models], args)


if __name__ == "__main__":
    main()
