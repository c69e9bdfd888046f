"""Regression tests for the faithfulness bugs of the code review of main at 32b91e0 (PGI/PGU's
per-sample k, SensitivityN's subset sizes and its sample count after non-finite outputs,
FaithfulnessCorrelation's error message). Each test failed before its fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from evalkit import metrics as M

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.UndefinedScoreWarning")


def _two_groupings() -> np.ndarray:
    """Labels of two 1x4x4 samples: sample 0 has 16 features (pixels), sample 1 has 4
    (quadrants)."""
    lab = np.zeros((2, 1, 4, 4), dtype=np.int64)
    lab[0, 0] = np.arange(16).reshape(4, 4)
    lab[1, 0] = np.arange(16).reshape(4, 4) % 4 // 2 + 2 * (np.arange(4)[:, None] // 2)
    return lab


def _linear_image_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def _two_sample_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor,
                                 np.ndarray]:
    """The linear model, two 1x4x4 inputs, their labels and attributions, and
    :func:`_two_groupings`."""
    model = _linear_image_model()
    torch.manual_seed(1)
    x = torch.randn(2, 1, 4, 4)
    y = torch.tensor([0, 1])
    a = torch.randn(2, 1, 4, 4)
    return model, x, y, a, _two_groupings()


# ---------------------------------------------------------------------------------- PGI / PGU


@pytest.mark.parametrize("cls", [M.PGI, M.PGU])
def test_pg_fractional_k_is_resolved_from_each_samples_own_feature_count(cls):
    # k=0.25 of 16 features is 4, of 4 features is 1 (OpenXAI: ceil(0.25 * 4)); before, the
    # sample with 4 features got k=4 (all of them) and PGU scored it 0
    model, x, y, a, lab = _two_sample_case()
    assert [len(np.unique(v)) for v in lab] == [16, 4]
    metric = cls(k=0.25, nr_samples=8, grouping=lab, seed=0)
    mixed = metric(model, x, y, a)
    assert metric.k_.tolist() == [4, 1]
    # the small sample's score is the one it gets alone (keys are per sample)
    alone = cls(k=0.25, nr_samples=8, grouping=lab[1:], seed=0)(model, x[1:], y[1:], a[1:])
    assert np.allclose(mixed[1:], alone, rtol=1e-6, atol=0)
    assert mixed[1] > 0


def test_pg_int_k_and_equal_feature_counts_keep_their_k():
    model, x, y, a, lab = _two_sample_case()
    metric = M.PGI(k=3, nr_samples=4, grouping=lab, seed=0)
    metric(model, x, y, a)
    assert metric.k_.tolist() == [3, 3]
    metric = M.PGI(k=0.3, nr_samples=4, seed=0)  # pixels: 16 each, ceil(4.8) = 5
    metric(model, x, y, a)
    assert metric.k_.tolist() == [5, 5]


def test_pg_auc_with_different_ks_keeps_the_smaller_samples_gap_at_its_k():
    model, x, y, a, lab = _two_sample_case()
    metric = M.PGI(k=0.25, nr_samples=4, grouping=lab, seed=0, auc=True)
    metric(model, x, y, a)
    curves = metric.curves_
    assert curves.shape == (2, 4)
    at_k = M.PGI(k=1, nr_samples=4, grouping=lab[1:], seed=0)(model, x[1:], y[1:], a[1:])
    assert np.allclose(curves[1], at_k[0])


# ------------------------------------------------------------------------------ SensitivityN


class _NanWhenFirstRemoved(nn.Module):
    """A linear model whose output is NaN once feature 0 is removed (set to 0)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x)
        return torch.where(x[:, :1] == 0, torch.full_like(out, float("nan")), out)


def _morf_inputs(n_nan: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4 samples; the first ``n_nan`` rank feature 0 first (removed at n=1: NaN output)."""
    torch.manual_seed(0)
    x = torch.rand(4, 5) + 0.5
    a = torch.rand(4, 5)
    a[:n_nan, 0] = 10.0
    a[n_nan:, 0] = -10.0
    return x, torch.tensor([0, 1, 2, 0]), a


def test_sensitivity_n_morf_needs_three_samples_with_finite_outputs():
    # 2 of 4 samples' outputs turn NaN: the set left has 2 samples, whose correlation is
    # always +-1; before, samples 2 and 3 scored -1
    x, y, a = _morf_inputs(2)
    metric = M.SensitivityN(subsets="morf", n_max_percentage=0.4, perturb_baseline=0.0,
                            softmax=False, normalise=False, abs=False)
    scores = metric(_NanWhenFirstRemoved(), x, y, a)
    assert np.isnan(scores).all()
    assert "not finite" in metric.nan_reasons_[0]
    assert "at least 3 samples" in metric.nan_reasons_[2]
    assert "at least 3 samples" in metric.nan_reasons_[3]


def test_sensitivity_n_morf_with_three_samples_left_is_defined():
    x, y, a = _morf_inputs(1)
    metric = M.SensitivityN(subsets="morf", n_max_percentage=0.4, perturb_baseline=0.0,
                            softmax=False, normalise=False, abs=False)
    scores = metric(_NanWhenFirstRemoved(), x, y, a)
    assert np.isnan(scores[0]) and np.isfinite(scores[1:]).all()


def test_sensitivity_n_sizes_stop_at_each_samples_own_share():
    # n_max_percentage=0.5: 8 sizes for the 16-feature sample, 2 for the 4-feature one; before,
    # the small sample's sizes were capped at 4 features and scored up to all of them
    model, x, y, a, lab = _two_sample_case()
    metric = M.SensitivityN(n_max_percentage=0.5, nr_subsets=5, grouping=lab,
                            perturb_baseline=0.0, seed=0)
    scores = metric(model, x, y, a)
    assert np.allclose(metric.curve_x_[0], np.arange(1, 9) / 16)
    assert np.allclose(metric.curve_x_[1, :2], [0.25, 0.5])
    assert np.isnan(metric.curve_x_[1, 2:]).all() and np.isnan(metric.curves_[1, 2:]).all()
    assert np.isfinite(metric.curves_[1, :2]).all()
    assert np.isclose(scores[1], metric.curves_[1, :2].mean())


def test_sensitivity_n_sample_without_a_size_is_nan_with_a_reason():
    model, x, y, a, lab = _two_sample_case()
    # 0.2 * 16 = 3.2 -> 3 sizes for sample 0; 0.2 * 4 = 0.8 -> none for sample 1
    metric = M.SensitivityN(n_max_percentage=0.2, nr_subsets=5, grouping=lab,
                            perturb_baseline=0.0, seed=0)
    scores = metric(model, x, y, a)
    assert np.isfinite(scores[0]) and np.isnan(scores[1])
    assert "no subset size" in metric.nan_reasons_[1]


def test_sensitivity_n_morf_leaves_samples_beyond_their_share_out_of_the_set():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.randn(5, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1])
    a = torch.randn(5, 1, 4, 4)
    lab = np.zeros((5, 1, 4, 4), dtype=np.int64)
    lab[:3, 0] = np.arange(16).reshape(4, 4)
    lab[3:] = _two_groupings()[1]
    metric = M.SensitivityN(n_max_percentage=0.5, subsets="morf", grouping=lab,
                            perturb_baseline=0.0)
    scores = metric(model, x, y, a)
    # sizes 1-2 correlate over 5 samples, 3-8 over the 3 large ones only: the same values as
    # the 3 large samples alone
    big = M.SensitivityN(n_max_percentage=0.5, subsets="morf", grouping=lab[:3],
                         perturb_baseline=0.0)
    big(model, x[:3], y[:3], a[:3])
    assert np.allclose(metric.curves_[0, 2:], big.curves_[0, 2:])
    assert np.isnan(metric.curve_x_[3:, 2:]).all()
    assert np.allclose(scores, scores[0])


# ------------------------------------------------------------------- FaithfulnessCorrelation


def test_faithfulness_correlation_error_names_the_smallest_number_of_features():
    # the message printed subset_size where it meant the smallest input's number of features
    # (the same number whenever it is raised, so it read as a repetition)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    x = torch.randn(2, 6)
    y = torch.tensor([0, 1])
    a = torch.randn(2, 6)
    lab = np.array([[0, 1, 2, 3, 4, 5], [0, 0, 1, 1, 2, 3]])  # 6 and 4 features
    with pytest.raises(ValueError, match=r"`subset_size`=4 .*the smallest has 4: every subset"):
        M.FaithfulnessCorrelation(nr_runs=3, subset_size=4, grouping=lab, seed=0)(
            model, x, y, a)


# -------------------------------------------------------------------------------- Sufficiency


def test_sufficiency_seuclidean_is_pdist_not_plain_cdist():
    # the documented variance (docstring fix only: the values did not change): pdist's, i.e.
    # var(A, ddof=1); plain cdist(A, A) differs by one common factor, which the default
    # normalisation removes
    from scipy.spatial.distance import cdist, pdist, squareform

    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 5))
    raw = M.Sufficiency(distance_func="seuclidean", normalise_distances=False).distances(a)
    assert np.allclose(raw, squareform(pdist(a, "seuclidean")), rtol=1e-10, atol=1e-12)
    v = np.var(a, axis=0, ddof=1)
    assert np.allclose(raw, cdist(a, a, "seuclidean", V=v), rtol=1e-10, atol=1e-12)
    plain = cdist(a, a, "seuclidean")
    n = a.shape[0]
    assert np.allclose(plain, raw * np.sqrt((2 * n - 1) / (2 * (n - 1))), rtol=1e-10)
    normalised = M.Sufficiency(distance_func="seuclidean").distances(a)
    assert np.allclose(normalised, plain / plain.max(), rtol=1e-10, atol=1e-12)
    # a tensor in gives a tensor out
    assert isinstance(M.Sufficiency().distances(torch.as_tensor(a)), torch.Tensor)


def test_sensitivity_n_random_subsets_of_a_sample_do_not_depend_on_the_others_counts():
    """The random subsets are drawn over each sample's own groups: a sample with 4 groups
    scores the same alone and beside a sample with 16 (its draws were laid out over the
    largest sample's count, so its subsets changed with its neighbours)."""
    model, x, y, a, lab = _two_sample_case()
    kw = dict(n_max_percentage=0.5, nr_subsets=6, perturb_baseline=0.0, seed=0)
    mixed = M.SensitivityN(grouping=lab, **kw)(model, x, y, a)
    alone = M.SensitivityN(grouping=lab[1:], **kw)(model, x[1:], y[1:], a[1:])
    assert np.isfinite(mixed[1]) and mixed[1] == pytest.approx(alone[0], abs=1e-12)
    first = M.SensitivityN(grouping=lab[:1], **kw)(model, x[:1], y[:1], a[:1])
    assert mixed[0] == pytest.approx(first[0], abs=1e-12)
