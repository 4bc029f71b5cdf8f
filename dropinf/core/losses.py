"""Per-sample loss functions in the engine's ``loss_fn(model, batch) -> (B,)`` form."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


def cross_entropy_per_sample(
    model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Cross-entropy of each example of a classification batch.

    Args:
        model: A classifier returning logits of shape (B, C).
        batch: ``(inputs, labels)`` with integer labels of shape (B,).

    Returns:
        The per-sample losses, shape (B,), never reduced over the batch.
    """
    inputs, labels = batch
    logits = model(inputs)  # (B, C)
    return functional.cross_entropy(logits, labels, reduction="none")
