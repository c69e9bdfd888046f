"""Cross-checks against the released quantus 0.6.0 on tabular inputs (N, F).

Quantus runs a metric on (N, F) inputs where it never needs a spatial layout: the complexity
metrics, the removal curves and FaithfulnessEstimate (each column one feature, as evalkit's
columns without a column spec). A small MLP on 6 columns, 3 classes. Tolerance 1e-5 (float32
outputs, different batch compositions).

Deliberate differences, shown below:

* **Localisation**: Quantus asserts masks of shape (N, 1, ...), so a tabular ground-truth feature
  set (N, F) cannot be passed to it; evalkit scores (N, F) boolean masks.
* **Column groups**: Quantus has no column spec; with ``TabularModality(groups=...)`` evalkit
  removes a one-hot block as one feature (a shorter curve), without it the curves agree.
* **features_in_step**: Quantus checks it against the axes after the second, so on (N, F)
  inputs only ``features_in_step=1`` runs there.
* **Monotonicity** (deviation C2) and the random baselines/subsets of MonotonicityCorrelation
  and FaithfulnessCorrelation (seeded per sample here, from the global RNG there) are not
  compared value by value.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from evalkit.metrics import (
    Complexity,
    FaithfulnessEstimate,
    PixelFlipping,
    RelevanceRankAccuracy,
    Sparseness,
)
from evalkit.modality import TabularModality

N, F = 8, 6
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def setup():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(F, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, F)).astype(np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    a = rng.normal(size=(N, F)).astype(np.float32)
    return model, x, y, a


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _q(cls, setup, **kw):
    model, x, y, a = setup
    metric = cls(disable_warnings=True, **kw)
    return np.asarray(metric(model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu"),
                      dtype=np.float64)


@pytest.mark.parametrize("name", ["Sparseness", "Complexity"])
def test_complexity_on_tables(quantus, setup, name):
    model, x, y, a = setup
    ours = {"Sparseness": Sparseness, "Complexity": Complexity}[name]()
    np.testing.assert_allclose(ours(model, x, y, a), _q(getattr(quantus, name), setup), **TOL)


def test_pixel_flipping_curves_on_columns(quantus, setup):
    model, x, y, a = setup
    q = _q(quantus.PixelFlipping, setup, features_in_step=1, perturb_baseline="black")
    ours = PixelFlipping(features_in_step=1, perturb_baseline="black")
    ours(model, x, y, a)
    # evalkit's curve starts at the unperturbed input; Quantus' after the first removal
    np.testing.assert_allclose(ours.curves_[:, 1:], q, **TOL)
    # Quantus checks features_in_step against the product of the axes after the second, which
    # is 1 for (N, F) inputs: it refuses features_in_step=2 on tables; evalkit removes two
    # columns per step
    with pytest.raises(AssertionError):
        _q(quantus.PixelFlipping, setup, features_in_step=2, perturb_baseline="black")
    ours2 = PixelFlipping(features_in_step=2, perturb_baseline="black")
    ours2(model, x, y, a)
    np.testing.assert_allclose(ours2.curves_[:, 1:], ours.curves_[:, 2::2], **TOL)


def test_faithfulness_estimate_on_columns(quantus, setup):
    model, x, y, a = setup
    q = _q(quantus.FaithfulnessEstimate, setup, features_in_step=1, perturb_baseline="black")
    ours = FaithfulnessEstimate(features_in_step=1, perturb_baseline="black")
    np.testing.assert_allclose(ours(model, x, y, a), q, **TOL)


def test_column_groups_are_a_deliberate_difference(quantus, setup):
    model, x, y, a = setup
    xs = x.copy()
    xs[:, 3:6] = np.eye(3, dtype=np.float32)[np.arange(N) % 3]  # columns 3-5 one-hot
    q = np.asarray(quantus.PixelFlipping(features_in_step=1, perturb_baseline="black",
                                         disable_warnings=True)(
        model=model, x_batch=xs, y_batch=y, a_batch=a, device="cpu"))
    plain = PixelFlipping(features_in_step=1, perturb_baseline="black")
    plain(model, xs, y, a)
    np.testing.assert_allclose(plain.curves_[:, 1:], q, **TOL)
    spec = TabularModality(kinds=["continuous"] * 3 + ["categorical"] * 3, groups=[[3, 4, 5]])
    grouped = PixelFlipping(features_in_step=1, perturb_baseline="black")
    grouped(model, xs, y, a, modality=spec)
    assert q.shape[1] == 6 and grouped.curves_.shape[1] == 1 + 4  # 4 features, 1 block
    # the block's columns leave together: the last point (everything removed) is shared
    np.testing.assert_allclose(grouped.curves_[:, -1], q[:, -1], **TOL)


def test_tabular_ground_truth_runs_here_not_in_quantus(quantus, setup):
    model, x, y, a = setup
    s = np.zeros((N, F), dtype=bool)
    s[:, :2] = True
    with pytest.raises(AssertionError):
        quantus.RelevanceRankAccuracy(disable_warnings=True)(
            model=model, x_batch=x, y_batch=y, a_batch=a, s_batch=s, device="cpu")
    scores = RelevanceRankAccuracy()(None, x, y, a, s=s)
    # by hand: the share of the two mask columns among the two largest attributions
    top2 = np.argsort(-a, axis=1)[:, :2]
    np.testing.assert_allclose(scores, (top2 < 2).sum(1) / 2)
