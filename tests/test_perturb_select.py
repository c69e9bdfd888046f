"""Bit selection (evalkit.perturb._select) against torch.where: the same bits, every dtype."""

from __future__ import annotations

import pytest
import torch

from evalkit.modality import Modality, TokensModality, as_modality
from evalkit.perturb._select import (
    RankWindows,
    rank_select,
    replaces_by_where,
    select,
    select_kept,
    window_select,
    zero_unkept_,
)

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64,
          torch.int32, torch.uint8]


def _data(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype.is_floating_point:
        x = (torch.randn(shape, generator=g) * 3).to(dtype)
        flat = x.view(-1)
        specials = (float("nan"), -0.0, float("-inf"))  # their bits must survive
        for j in range(min(3, flat.numel())):
            flat[j] = specials[j]
        return x
    return torch.randint(0, 200, shape, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fill_shape", [(), (5, 1), (1, 7), (5, 7)])
def test_select_is_where_bit_for_bit(dtype, fill_shape):
    x = _data(dtype, (5, 7), 0)
    fill = _data(dtype, fill_shape, 1) if fill_shape else _data(dtype, (1,), 1)[0]
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(2)) < 0.5
    want = torch.where(mask, fill, x)
    got = select(mask, fill, x)
    assert got.dtype == want.dtype and got.shape == want.shape
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64, 1: torch.uint8}[x.element_size()]
    assert torch.equal(got.view(bits), want.view(bits))


def test_select_broadcasts_a_larger_mask():
    x = torch.randn(4, 1, 6)
    mask = torch.rand(4, 3, 6) < 0.5
    fill = torch.tensor(-2.0)
    assert torch.equal(select(mask, fill, x), torch.where(mask, fill, x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_select_kept_is_where_of_the_kept_elements(dtype):
    x = _data(dtype, (5, 3, 7), 0)
    fill = _data(dtype, (5, 1, 1), 1)
    kept = torch.rand(5, 1, 7, generator=torch.Generator().manual_seed(2)) < 0.5
    want = torch.where(kept, x, fill)
    got = select_kept(kept, x, fill)
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64, 1: torch.uint8}[x.element_size()]
    assert got.shape == want.shape and torch.equal(got.view(bits), want.view(bits))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.int64])
@pytest.mark.parametrize("windows", [False, True])
@pytest.mark.parametrize("fill_shape", [(6, 1, 1), (1, 1, 1), (6, 2, 9)])
def test_rank_windows_are_where_of_the_rank_window(dtype, windows, fill_shape):
    n, c, t = 6, 2, 9
    x = _data(dtype, (n, c, t), 3)
    rank = torch.stack([torch.randperm(t) for _ in range(n)]).reshape(n, 1, t)  # shared over c
    fill = _data(dtype, fill_shape, 4)
    rw = RankWindows.make(x, fill, rank)
    assert rw is not None
    i = torch.tensor([0, 0, 3, 5, 5, 2])
    hi = torch.tensor([0, 4, 9, 1, 7, 3])
    lo = torch.tensor([0, 2, 3, 0, 7, 1]) if windows else None
    got = rw.rows(i, rw.thresholds(hi), None if lo is None else rw.thresholds(lo))
    r = rank[i]
    perturbed = r < hi.reshape(-1, 1, 1)
    if lo is not None:
        perturbed &= r >= lo.reshape(-1, 1, 1)
    want = torch.where(perturbed, fill[i] if fill.shape[0] == n else fill, x[i])
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
    assert torch.equal(got.view(bits), want.view(bits))


def test_bit_selection_only_where_it_applies():
    x = torch.randn(3, 4)
    assert RankWindows.make(x.requires_grad_(), torch.tensor(0.0), torch.zeros(3, 4)) is None
    assert RankWindows.make(torch.ones(3, 4, dtype=torch.bool), torch.tensor(False),
                            torch.zeros(3, 4)) is None
    assert replaces_by_where(as_modality("tabular", torch.zeros(2, 3)))
    assert replaces_by_where(Modality())
    assert not replaces_by_where(TokensModality())


def test_large_chunks_take_torch_where_with_the_same_result():
    x = torch.randn(600, 500)  # above the cache-sized limit: the torch.where path
    rank = torch.randint(0, 500, (600, 1, 500)).reshape(600, 500)
    fill = torch.full((600, 1), -1.0)
    want = torch.where(rank < 200, fill, x)
    assert torch.equal(rank_select(rank, torch.tensor(200), fill, x), want)
    assert torch.equal(select(rank < 200, fill, x), want)
    assert torch.equal(window_select(rank, torch.tensor(0), torch.tensor(200), fill, x), want)


@pytest.mark.parametrize("dtype", [*DTYPES, torch.bool])
@pytest.mark.parametrize("kept_shape", [(5, 3, 7), (5, 1, 7), (1, 3, 1)])
def test_zero_unkept_is_masked_fill_bit_for_bit(dtype, kept_shape):
    x = (_data(dtype, (5, 3, 7), 0) if dtype != torch.bool
         else torch.rand(5, 3, 7, generator=torch.Generator().manual_seed(0)) < 0.5)
    kept = torch.rand(kept_shape, generator=torch.Generator().manual_seed(2)) < 0.5
    want = x.clone().masked_fill_(~kept, 0)
    out = x.clone()
    assert zero_unkept_(out, kept) is out  # in place
    if dtype == torch.bool:
        assert torch.equal(out, want)
        return
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64, 1: torch.uint8}[x.element_size()]
    # kept elements keep their bits (NaN, -0.0, -inf among them); dropped ones are +0.0
    assert torch.equal(out.view(bits), want.view(bits))


def test_zero_unkept_of_a_large_chunk_is_masked_fill():
    x = torch.randn(600, 500)  # above the cache-sized limit: masked_fill_
    kept = torch.rand(600, 500) < 0.5
    assert torch.equal(zero_unkept_(x.clone(), kept), x.masked_fill(~kept, 0))
