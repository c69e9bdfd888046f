"""Regression tests for the imputation bugs of the code review of main at 32b91e0 (a removed
value's NaN reaching the linear imputation of its neighbours or a table row's own imputation,
KNNImputer's distances on columns with a large offset). Each test failed before its fix."""

from __future__ import annotations

import pytest
import torch

from evalkit.perturb.imputation import linear_imputation


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
