"""What a run's signature names: the model, the data and the loss, each by a digest or name."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dropinf.core import LossFn

FINGERPRINT_BATCH = 1024


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a tensor of any dtype and shape (0-dim included)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)  # (numel,): view() needs ≥ 1 dim
    return flat.view(torch.uint8).numpy().tobytes()


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model's parameters and buffers: names, dtypes, shapes and values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


def dataset_fingerprint(dataset: Dataset) -> str:
    """sha256 over every example of a dataset (inputs and labels), streamed in order.

    One digest per item of an example (inputs, label...), so the batch size does not matter.
    """
    digests: list[Any] = []
    for batch in DataLoader(dataset, batch_size=FINGERPRINT_BATCH, shuffle=False):
        items = batch if isinstance(batch, list | tuple) else [batch]
        digests = digests or [hashlib.sha256() for _ in items]
        for digest, item in zip(digests, items, strict=True):
            values = torch.as_tensor(item)
            digest.update(f"{values.dtype}:{tuple(values.shape[1:])}".encode())
            digest.update(tensor_bytes(values))
    combined = hashlib.sha256(f"{len(dataset)}".encode())
    for digest in digests:
        combined.update(digest.digest())
    return combined.hexdigest()


def loss_name(loss_fn: LossFn) -> str:
    """``module.qualified_name`` of a loss function (part of a run's signature)."""
    name = getattr(loss_fn, "__qualname__", type(loss_fn).__qualname__)
    return f"{getattr(loss_fn, '__module__', '')}.{name}"
