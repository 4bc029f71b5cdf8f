"""Architectures of an analyst's own, built by ``--arch tests.models.own_models:<name>``.

Importable from the repository root (``tests`` is a namespace package). Only tests import it.
"""

from __future__ import annotations

import torch
from torch import nn


def conv1d_net(in_channels: int, num_classes: int, width: int = 8) -> nn.Module:
    """A 1-D convolutional classifier of (N, C, L) signals, with BatchNorm1d.

    Args:
        in_channels: Channels C of the signals.
        num_classes: Width of the output logits.
        width: Channels of the convolutions.

    Returns:
        conv1d → BatchNorm1d → ReLU → conv1d → ReLU → global average pool → linear.
    """
    return nn.Sequential(
        nn.Conv1d(in_channels, width, kernel_size=3, padding=1),
        nn.BatchNorm1d(width),
        nn.ReLU(),
        nn.Conv1d(width, width, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(width, num_classes),
    )


class LayerNormMLP(nn.Module):
    """An MLP with LayerNorm and Dropout, its first layer frozen, and a buffer of its own."""

    def __init__(self, input_dim: int, num_classes: int, hidden: int = 16) -> None:
        super().__init__()
        self.frozen = nn.Linear(input_dim, hidden)
        self.frozen.requires_grad_(False)
        self.body = nn.Sequential(
            nn.LayerNorm(hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, num_classes)
        )
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))  # 0-dim, like BN's
        self.register_buffer("scale", torch.ones(2, 1, dtype=torch.float16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Flatten, project with the frozen layer, then normalise, drop out and classify."""
        return self.body(self.frozen(x.flatten(1)))


def not_a_model(**_: object) -> str:
    """A callable that builds no model."""
    return "not a model"


def broken(**_: object) -> nn.Module:
    """A callable that fails."""
    raise RuntimeError("the analyst's builder broke")


NOT_CALLABLE = 3
