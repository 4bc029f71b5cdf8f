"""The Cholesky blocks' Gram sums: lower block-triangle products, mirrored once."""

from __future__ import annotations

import pytest
import torch

from dropinf.core.curvature import CholeskyBlock, add_lower_gram, lower_symmetric


@pytest.mark.parametrize("k", [1, 2, 7, 64])
def test_lower_gram_sums_mirror_to_the_full_gram(k: int) -> None:
    generator = torch.Generator().manual_seed(k)
    chunks = [torch.randn(rows, k, generator=generator, dtype=torch.float64) for rows in (5, 9)]
    sums = torch.zeros(k, k, dtype=torch.float64)
    for chunk in chunks:
        add_lower_gram(sums, chunk)
    rows = torch.cat(chunks)
    torch.testing.assert_close(lower_symmetric(sums), rows.T @ rows, rtol=1e-12, atol=1e-12)


def test_whitening_runs_in_the_rows_precision() -> None:
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(50, 6, generator=generator, dtype=torch.float64)
    fisher = rows.T @ rows / 50 + torch.eye(6, dtype=torch.float64)
    block = CholeskyBlock(0, 6, torch.linalg.cholesky(fisher))
    exact = (rows @ torch.linalg.inv(fisher) * rows).sum(1)
    whitened = block.whiten(rows.float())
    assert whitened.dtype == torch.float32
    torch.testing.assert_close(whitened.double().pow(2).sum(1), exact, rtol=1e-5, atol=1e-6)
