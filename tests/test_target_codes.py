"""``Target.codes``: rows share a code exactly when their predictions agree (``agree``)."""

from __future__ import annotations

import math

import torch

from evalkit.models.targets import ClassTarget


def _same_code(codes: torch.Tensor) -> torch.Tensor:
    return codes.unsqueeze(0) == codes.unsqueeze(1)


def _agree_pairwise(target: ClassTarget, p: torch.Tensor) -> torch.Tensor:
    n = p.shape[0]
    return torch.stack([target.agree(p[i].expand_as(p), p) for i in range(n)])


def test_float_class_predictions_with_nan():
    # predict_or_nan's output: classes as float64, NaN for an undefined row; the two rows of
    # class 1 must share a code although NaN rows sit between them (torch.unique(dim=0) split
    # them), -0.0 agrees with 0.0, a NaN agrees with nothing (not even itself: no partner)
    target = ClassTarget()
    p = torch.tensor([1.0, math.nan, 0.0, math.nan, -0.0, 1.0, 2.0], dtype=torch.float64)
    codes = target.codes(p)
    assert codes.dtype == torch.int64 and codes.shape == (7,)
    assert int(codes.min()) >= 0
    agree = _agree_pairwise(target, p)
    off_diagonal = ~torch.eye(7, dtype=torch.bool)
    assert torch.equal(_same_code(codes) & off_diagonal, agree & off_diagonal)
    assert codes[0] == codes[5] and codes[2] == codes[4]
    assert codes[1] != codes[3]


def test_single_column_and_multi_column_rows():
    target = ClassTarget()
    g = torch.Generator().manual_seed(0)
    column = torch.randint(0, 4, (50, 1), generator=g).to(torch.float64)
    assert torch.equal(_same_code(target.codes(column)),
                       column == column.T)  # (50, 1) rows: one value each
    rows = torch.randint(0, 2, (60, 3), generator=g)
    codes = target.codes(rows)
    want = (rows.unsqueeze(0) == rows.unsqueeze(1)).all(2)
    assert torch.equal(_same_code(codes), want)


def test_integer_classes_pass_through():
    p = torch.tensor([2, 0, 2, 1])
    assert torch.equal(ClassTarget().codes(p), p)
