"""Regression tests for the robustness and perturbation bugs of the code review of main at
32b91e0 (Consistency with n=0, ColumnNoise's validation). Each test failed before its fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from evalkit import metrics as M

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.UndefinedScoreWarning")


def _model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    x = torch.randn(4, 6)
    return model, x, torch.tensor([0, 1, 2, 0]), torch.randn(4, 6)


# -------------------------------------------------------------------------------- Consistency


@pytest.mark.parametrize("func", ["top_n", "top_n_sign"])
def test_consistency_top_n_rejects_n_zero_with_a_clear_error(func):
    # before: a RuntimeError from torch.unique on the (N, 0) codes, at call time
    with pytest.raises(ValueError, match="`n` must be at least 1"):
        M.Consistency(discretise_func=func, n=0)


def test_consistency_floating_points_keeps_n_zero():
    model, x, y, a = _model_and_data()
    a = torch.tensor([[0.2, 1.4, 0.0, 0.0, 0.0, 0.0]] * 2 + [[0.1, 0.6, 0.0, 0.0, 0.0, 0.0]] * 2)
    scores = M.Consistency(discretise_func="floating_points", n=0, abs=False,
                           normalise=False)(model, x, y, a)
    assert np.isfinite(scores).all()


def test_consistency_callable_with_zero_width_codes_gives_one_label():
    # a callable returning (N, 0) codes: every map has the same (empty) label
    model, x, y, a = _model_and_data()
    metric = M.Consistency(discretise_func=lambda f: np.zeros((f.shape[0], 0)), abs=False,
                           normalise=False)
    same = M.Consistency(discretise_func=lambda f: np.zeros(f.shape[0]), abs=False,
                         normalise=False)
    assert np.array_equal(metric(model, x, y, a), same(model, x, y, a), equal_nan=True)


# -------------------------------------------------------------------------------- ColumnNoise


def _column_noise(**kwargs):
    from evalkit.perturb import ColumnNoise, GaussianNoise

    kwargs.setdefault("levels", {1: [0.0, 1.0, 2.0]})
    return ColumnNoise(GaussianNoise(0, 0.1), **kwargs)


def test_column_noise_rejects_an_unknown_kind():
    # before: "continous" was silently treated as continuous-like (not clipped, not snapped)
    with pytest.raises(ValueError, match="`kinds` must each be one of"):
        _column_noise(kinds=["continous", "categorical"])


def test_column_noise_rejects_scales_of_the_wrong_length():
    # before: accepted, then a broadcast error at the first draw
    with pytest.raises(ValueError, match="`scales` needs one value per column: 3 for 2"):
        _column_noise(kinds=["continuous", "categorical"], scales=[1.0, 1.0, 5.0])


def test_column_noise_rejects_a_label_outside_its_categories():
    # before: 7.0 was read as category 0 and resampled among the others
    from evalkit import _rng

    noise = _column_noise(kinds=["continuous", "categorical"], flip_prob=1.0)
    x = torch.tensor([[0.5, 7.0], [0.5, 0.0]])
    with pytest.raises(ValueError, match=r"column 1 holds 7.0, which is not among"):
        noise(x, _rng.sample_keys(x, 0))
    good = torch.tensor([[0.5, 2.0], [0.5, 0.0]])
    out = noise(good, _rng.sample_keys(good, 0))
    assert set(out[:, 1].tolist()) <= {0.0, 1.0, 2.0}
    assert (out[:, 1] != good[:, 1]).all()  # flip_prob=1: always another category


@pytest.mark.parametrize("cls", [M.RelativeInputStability, M.LocalLipschitzEstimate])
def test_a_model_writing_into_its_input_leaves_the_perturbed_inputs_intact(cls):
    """RIS's and LLE's input change is read after the perturbed forward passes: a model that
    writes into its input (an in-place ReLU first) must see copies, not the engine's stack."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 3)

    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = lin

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(torch.relu_(x))

    class Pure(InPlace):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(torch.relu(x))

    x = torch.randn(8, 6)
    y = torch.zeros(8, dtype=torch.long)

    def explain(model, inputs, targets, **kwargs):  # the same map for both models
        return inputs.detach().clone()

    kw = {"nr_samples": 5, "seed": 0, "disable_warnings": True}
    pure = cls(**kw)(Pure().eval(), x.clone(), y, explain_fn=explain)
    in_place = cls(**kw)(InPlace().eval(), x.clone(), y, explain_fn=explain)
    np.testing.assert_array_equal(in_place, pure)
