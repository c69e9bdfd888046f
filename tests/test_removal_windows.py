"""The window bookkeeping of the removal kernel: its NumPy form (CPU) equals its torch form."""

import pytest
import torch

from evalkit.metrics._removal import _window_rows_numpy, _window_rows_torch


@pytest.mark.parametrize("t_count", [1, 2, 6])
@pytest.mark.parametrize("seed", range(5))
def test_window_rows_numpy_equals_torch(t_count: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = 7
    n_groups = torch.randint(1, 9, (n,), generator=gen)
    # windows that start before 0, end past G, repeat the step before or are empty
    lo = torch.randint(-2, 6, (n, t_count), generator=gen)
    hi = lo + torch.randint(-1, 5, (n, t_count), generator=gen)
    if t_count > 2:
        lo[:, 2], hi[:, 2] = lo[:, 1], hi[:, 1]
    got = _window_rows_numpy(lo, hi, n_groups)
    expected = _window_rows_torch(lo, hi, n_groups, torch.device("cpu"))
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype
        assert torch.equal(a, b)
