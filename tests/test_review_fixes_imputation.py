"""Regression tests for the imputation bugs of the code review of main at 32b91e0 (a removed
value's NaN reaching the linear imputation of its neighbours or a table row's own imputation,
KNNImputer's distances on columns with a large offset). Each test failed before its fix."""

from __future__ import annotations

import pytest
import torch

from evalkit.perturb.imputation import (
    ConditionalMeanImputer,
    KNNImputer,
    MarginalMeanImputer,
    linear_imputation,
)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("size", [(3, 3), (161, 162)])  # banded, sparse (both sides > 160)
def test_linear_imputation_ignores_the_removed_pixels_values(bad, size):
    h, w = size
    torch.manual_seed(0)
    x = torch.rand(1, 2, h, w)
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    mask[0, 0, 0] = True
    mask[0, 1, 1] = True
    poisoned = x.clone()
    poisoned[0, :, 0, 0] = bad
    reference = x.clone()
    reference[0, :, 0, 0] = 123.0
    out = linear_imputation(poisoned, mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out, linear_imputation(reference, mask))


@pytest.mark.parametrize("standardise", [True, False])
def test_knn_imputer_finds_the_nearest_row_on_a_column_with_a_large_offset(standardise):
    # column 0 sits at 1e9 + {0, 1, 2, 3}: the row at 1e9 + 2.9 is nearest to the last
    # background row; before, |x|^2 - 2 x.r + |r|^2 on the raw values lost every digit and the
    # first row (10.0) was taken
    off = 1e9
    bg = torch.tensor([[off + 0.0, 10.0], [off + 1.0, 20.0], [off + 2.0, 30.0],
                       [off + 3.0, 40.0]], dtype=torch.float64)
    x = torch.tensor([[off + 2.9, 0.0], [off + 0.2, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[False, True], [False, True]])
    out = KNNImputer(bg, k=1, standardise=standardise).fill(x, mask)
    assert out[:, 1].tolist() == [40.0, 10.0]
    out = KNNImputer(bg, k=2, standardise=standardise).fill(x, mask)
    assert out[:, 1].tolist() == [35.0, 15.0]


_TABLE_IMPUTERS = [MarginalMeanImputer, ConditionalMeanImputer, KNNImputer]


@pytest.mark.parametrize("cls", _TABLE_IMPUTERS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("as_reference", [False, True])
def test_table_imputers_ignore_a_removed_nan(cls, bad, as_reference):
    # row [1, nan] with column 1 removed: before, the leave-one-out mean's correction c * x
    # (c = 0 copies) was 0 * NaN, and the row imputed NaN (MarginalMeanImputer: [1, nan], not
    # [1, 4]); KNN's distances had the same 0 * NaN
    bg = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [2.0, 7.0]])
    imputer = cls(bg) if as_reference else cls().with_background(bg)
    mask = torch.tensor([[False, True]])
    out = imputer.fill(torch.tensor([[1.0, bad]]), mask)
    assert torch.isfinite(out).all()
    assert torch.equal(out, imputer.fill(torch.tensor([[1.0, 123.0]]), mask))


def test_marginal_mean_of_a_row_with_a_removed_nan_is_the_background_mean():
    imputer = MarginalMeanImputer().with_background(
        torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    out = imputer.fill(torch.tensor([[1.0, float("nan")]]), torch.tensor([[False, True]]))
    assert out.tolist() == [[1.0, 4.0]]


@pytest.mark.parametrize("cls", _TABLE_IMPUTERS)
def test_table_imputers_still_leave_a_rows_own_copy_out(cls):
    # a row of the batch background is left out of its own imputation (unchanged behaviour)
    bg = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [2.0, 9.0]])
    out = cls().with_background(bg).fill(bg[3:], torch.tensor([[False, True]]))
    full = cls(bg[:3]).fill(bg[3:], torch.tensor([[False, True]]))
    assert torch.allclose(out, full)
