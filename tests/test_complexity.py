"""Known-answer, edge-case and cross-check tests of the complexity metrics (Sparseness,
Complexity, EffectiveComplexity)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from evalkit import UndefinedScoreWarning
from evalkit.metrics import Complexity, EffectiveComplexity, Sparseness

METRICS = (Sparseness, Complexity, EffectiveComplexity)


def run(metric, a, x=None):
    a = np.asarray(a, dtype=np.float64)
    x = np.zeros((a.shape[0], 3, *a.shape[2:])) if x is None else x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedScoreWarning)
        return metric(None, x, None, a)


def gini_by_hand(v: np.ndarray) -> float:
    """Gini index from its mean-absolute-difference definition (Hurley & Rickard 2009)."""
    v = np.abs(v.ravel())
    n = v.size
    return float(np.abs(v[:, None] - v[None, :]).sum() / (2 * n * v.sum()))


# --------------------------------------------------------------------------- known answers
def test_one_hot_and_uniform_maps():
    n = 7 * 9
    a = np.zeros((3, 1, 7, 9))
    a[0, 0, 3, 4] = 2.5  # one-hot
    a[1] = 0.4  # uniform
    a[2, 0, :, :3] = 1.0  # a third of the pixels, equal values
    np.testing.assert_allclose(run(Sparseness(), a), [(n - 1) / n, 0.0, 2 / 3], atol=1e-15)
    np.testing.assert_allclose(run(Complexity(), a), [0.0, math.log(n), math.log(21)],
                               rtol=1e-14)
    np.testing.assert_array_equal(run(EffectiveComplexity(), a), [1, n, 21])


def test_sparseness_matches_the_mean_difference_definition():
    rng = np.random.default_rng(0)
    a = rng.exponential(size=(5, 1, 6, 6)) * (rng.random((5, 1, 6, 6)) > 0.4)
    a *= rng.choice([-1, 1], size=a.shape)  # |a| is used
    ours = run(Sparseness(), a)
    np.testing.assert_allclose(ours, [gini_by_hand(a[i]) for i in range(5)], rtol=1e-12)


def test_complexity_two_level_map():
    a = np.zeros((1, 1, 2, 2))
    a[0, 0, 0, :] = [3.0, 1.0]  # p = (3/4, 1/4)
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    np.testing.assert_allclose(run(Complexity(), a), [expected], rtol=1e-14)


def test_effective_complexity_threshold_is_per_sample():
    a = np.zeros((2, 1, 4, 4))
    a[0, 0, 0, :] = [1.0, 0.5, 0.1, 0.01]
    a[1] = a[0] * 1000.0  # the same map at another scale
    np.testing.assert_array_equal(run(EffectiveComplexity(eps=0.05), a), [3, 3])
    # without normalisation eps is absolute
    np.testing.assert_array_equal(run(EffectiveComplexity(eps=0.05, normalise=False), a), [3, 4])
    # |a| is counted: negative values count too
    np.testing.assert_array_equal(run(EffectiveComplexity(eps=0.05), -a), [3, 3])


def test_scale_and_sign_invariance():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 3, 5, 5))
    for make in (Sparseness, Complexity):
        np.testing.assert_allclose(run(make(), a), run(make(), -7.5 * a), rtol=1e-12)
        np.testing.assert_allclose(run(make(), a), run(make(normalise=False), a), rtol=1e-12)


# --------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("make", METRICS)
def test_all_zero_map_is_nan_with_reason(make):
    a = np.ones((3, 1, 4, 4))
    a[1] = 0.0
    metric = make()
    with pytest.warns(UndefinedScoreWarning, match="all zero"):
        out = metric(None, np.zeros((3, 1, 4, 4)), None, a)
    assert np.isnan(out[1]) and np.isfinite(out[[0, 2]]).all()
    assert metric.nan_reasons_ == {1: "attribution is all zero"}


@pytest.mark.parametrize("make", METRICS)
def test_nan_rows_and_batch_independence(make):
    rng = np.random.default_rng(2)
    a = rng.normal(size=(5, 1, 6, 6)) * np.array([1, 100, 0.01, 1, 3])[:, None, None, None]
    whole = run(make(), a)
    for i in range(5):
        np.testing.assert_allclose(run(make(), a[i : i + 1]), whole[i : i + 1], rtol=1e-12)
    a_nan = a.copy()
    a_nan[3, 0, 1, 1] = np.inf
    metric = make()
    out = run(metric, a_nan)
    assert np.isnan(out[3]) and metric.nan_reasons_[3] == "attribution contains NaN or Inf"
    np.testing.assert_array_equal(out[[0, 1, 2, 4]], whole[[0, 1, 2, 4]])


def test_channel_maps_use_every_element():
    rng = np.random.default_rng(3)
    a3 = rng.random((2, 3, 4, 4))
    a_flat = a3.reshape(2, 1, 1, 48)
    x_flat = np.zeros((2, 3, 1, 48))
    for make in METRICS:
        np.testing.assert_allclose(run(make(), a3), run(make(), a_flat, x=x_flat), rtol=1e-12)
    # a 1-channel map on 3-channel inputs is scored as it is (not broadcast to 3 channels)
    a1 = rng.random((2, 1, 4, 4))
    assert run(EffectiveComplexity(), a1).max() <= 16


def test_inputs_not_mutated_and_torch_inputs():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(3, 1, 5, 5))
    a0 = a.copy()
    for make in METRICS:
        run(make(abs=False, normalise=False), a)  # Quantus mutates here (deviation C15)
    np.testing.assert_array_equal(a, a0)
    t = torch.from_numpy(a)
    np.testing.assert_allclose(Sparseness()(x=torch.zeros(3, 1, 5, 5), a=t),
                               run(Sparseness(), a), rtol=1e-12)


def test_metadata():
    assert Sparseness.higher_is_better and not Complexity.higher_is_better
    assert not EffectiveComplexity.higher_is_better
    for make in METRICS:
        assert make.family == "complexity" and not make.needs_model and make.default_abs
    assert EffectiveComplexity(eps=0.1).set_params(eps=0.2).eps == 0.2
    with pytest.raises(ValueError):
        EffectiveComplexity(eps=-1)


# --------------------------------------------------------------------------- Quantus oracle
def _quantus_inputs(seed=0, n=12):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 3, 28, 28)).astype(np.float32)
    a = rng.normal(size=(n, 1, 28, 28)) * rng.uniform(0.1, 10, size=(n, 1, 1, 1))
    a[:, :, :10] *= 0.01  # some near-zero regions
    return x, a


def _q(quantus, cls, x, a, **kw):
    metric = cls(disable_warnings=True, **kw)
    return np.asarray(metric(model=None, x_batch=x, y_batch=np.zeros(len(x), int),
                             a_batch=a.copy()), dtype=np.float64)


def test_sparseness_matches_quantus(quantus):
    x, a = _quantus_inputs()
    a = a / np.abs(a).reshape(len(a), -1).max(1)[:, None, None, None]  # each map in [-1, 1]
    theirs = _q(quantus, quantus.Sparseness, x, a, normalise=False)
    np.testing.assert_allclose(run(Sparseness(normalise=False), a, x=x), theirs, atol=1e-6)
    # exactly, once Quantus' +1e-7 offset is reproduced
    np.testing.assert_allclose(run(Sparseness(normalise=False), np.abs(a) + 1e-7, x=x), theirs,
                               rtol=1e-12)
    # with its default batch-global normalisation the offset weighs more on small maps: the
    # result then depends on the batch (here by up to ~1e-5)
    theirs_global = _q(quantus, quantus.Sparseness, x, a * np.arange(1, 13)[:, None, None, None])
    assert np.abs(theirs_global - theirs).max() > 1e-6
    np.testing.assert_allclose(run(Sparseness(), a * np.arange(1, 13)[:, None, None, None], x=x),
                               run(Sparseness(), a, x=x), rtol=1e-12)


def test_complexity_matches_quantus(quantus):
    x, a = _quantus_inputs(1)
    np.testing.assert_allclose(run(Complexity(), a, x=x), _q(quantus, quantus.Complexity, x, a),
                               atol=1e-9)


def test_effective_complexity_matches_quantus_without_normalisation(quantus):
    x, a = _quantus_inputs(2)
    a = a / np.abs(a).reshape(len(a), -1).max(1)[:, None, None, None]  # each map in [-1, 1]
    for eps in (1e-5, 0.05, 0.3):
        ours = run(EffectiveComplexity(eps=eps, normalise=False), a, x=x)
        theirs = _q(quantus, quantus.EffectiveComplexity, x, a, eps=eps, normalise=False)
        np.testing.assert_array_equal(ours, theirs)


def test_effective_complexity_batch_dependence_is_quantus_only(quantus):
    """Quantus normalises over the whole batch (deviation C1): a sample's count changes with the
    other samples. evalkit's count does not."""
    x, a = _quantus_inputs(3, n=8)
    a[1:] *= 50.0  # every other map is much larger
    eps = 0.05
    q_batch = _q(quantus, quantus.EffectiveComplexity, x, a, eps=eps)[0]
    q_alone = _q(quantus, quantus.EffectiveComplexity, x[:1], a[:1], eps=eps)[0]
    assert q_batch != q_alone
    ours_batch = run(EffectiveComplexity(eps=eps), a, x=x)[0]
    ours_alone = run(EffectiveComplexity(eps=eps), a[:1], x=x[:1])[0]
    assert ours_batch == ours_alone == q_alone
