"""The attribution preprocessing of every metric call (Metric._prepare): its shortcuts give
the maps of the plain route (convert to float64, normalise, take |.|) bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from evalkit.metrics import AverageDrop, normalise_by_max


def _maps(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    # per-sample scales within the dtype's range (float16 overflows above 65504)
    wide = dtype in (torch.float32, torch.float64, torch.bfloat16)
    scales = [1e-30 if wide else 1e-4, 1e-3, 1.0, 3.0, 1e20 if wide else 1e3, 1.0]
    a = torch.randn((6, 2, 40), generator=g) * torch.tensor(scales).reshape(-1, 1, 1)
    a[5] = 0.0  # an all-zero map stays zero
    a[3, 0, :5] = -0.0
    return a.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32,
                                   torch.float64])
@pytest.mark.parametrize("absolute", [True, False])
def test_normalised_maps_equal_the_float64_route(dtype, absolute):
    a = _maps(dtype)
    x = torch.randn(a.shape)
    model = nn.Sequential(nn.Flatten(), nn.Linear(80, 3))
    y = torch.zeros(6, dtype=torch.long)
    metric = AverageDrop(normalise=True, abs=absolute)
    got = metric._prepare(model, x, y, a, None, None, None, None, None, {}).a
    want = normalise_by_max(a.to(torch.float64))
    if absolute:
        want = want.abs()
    assert got.dtype == torch.float64
    assert torch.equal(got, want)
    assert torch.equal(torch.signbit(got), torch.signbit(want))  # -0.0 kept where it was
    assert torch.equal(a, _maps(dtype))  # the caller's map is not written into


def test_non_finite_rows_are_flagged_and_zeroed():
    a = _maps(torch.float32)
    a[2, 1, 3] = float("nan")
    x = torch.randn(a.shape)
    model = nn.Sequential(nn.Flatten(), nn.Linear(80, 3))
    batch = AverageDrop(normalise=True, abs=True)._prepare(
        model, x, torch.zeros(6, dtype=torch.long), a, None, None, None, None, None, {})
    assert 2 in batch.nan_reasons
    assert torch.equal(batch.a[2], torch.zeros_like(batch.a[2]))
    rest = [0, 1, 3, 4, 5]
    assert torch.equal(batch.a[rest], normalise_by_max(a[rest].double()).abs())
