"""The forward cache: metrics that walk the same perturbed inputs share forward passes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit import metrics as M
from evalkit.cache import ForwardCache, active_cache, forward_cache

warnings.filterwarnings("ignore", category=ek.UndefinedScoreWarning)


@pytest.fixture()
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 64, 4)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand((10, 3, 8, 8), generator=g)
    y = torch.arange(10) % 4
    a = torch.randn((10, 1, 8, 8), generator=g)
    return model, x, y, a


def _suite():
    return [
        M.PixelFlipping(features_in_step=4),
        M.Deletion(features_in_step=4, perturb_baseline="black"),
        M.SensitivityN(features_in_step=4, subsets="morf"),
        M.FaithfulnessEstimate(features_in_step=4, softmax=True),
        M.RegionPerturbation(patch_size=2, regions_evaluation=8),
        M.Selectivity(patch_size=2),
        M.IROF(grouping=2, perturb_baseline="black"),
        M.AverageDrop(),
        M.AverageIncrease(),
        M.AverageGain(),
        M.ROAD(percentages=[25, 50], score="confidence", seed=0),
        M.ROAD(percentages=[25, 50], order="morf", score="confidence", seed=0),
    ]


def _run(suite, model, x, y, a, cache=None):
    w = ek.wrap_model(model)
    w.counter.reset()
    w.output_shape(x)  # the label check's one-row forward, done before counting
    w.counter.reset()
    if cache is None:
        scores = [m(w, x, y, a) for m in suite]
    else:
        with cache:
            scores = [m(w, x, y, a) for m in suite]
    return scores, w.counter.rows


def test_suite_issues_fewer_rows_with_identical_scores(setup):
    model, x, y, a = setup
    sep, rows_sep = _run(_suite(), model, x, y, a)
    cache = ForwardCache()
    shared, rows_shared = _run(_suite(), model, x, y, a, cache)
    # not bit for bit: the model's float32 output for a row may differ in its last bit with
    # the number of rows in its forward call (a few rows take another matrix-product path),
    # and shared rows come from other metrics' calls (the unperturbed rows share a call with
    # the perturbed ones); SensitivityN's correlation of near-equal deltas amplifies that to
    # about 2e-6
    for s1, s2, m in zip(sep, shared, _suite(), strict=True):
        np.testing.assert_allclose(s2, s1, rtol=1e-5, atol=1e-7, err_msg=repr(m))
    assert rows_shared < 0.6 * rows_sep, (rows_shared, rows_sep)
    st = cache.stats()
    assert st.hits > 0 and st.misses == rows_shared
    # a second pass over the same suite is free
    again, rows_again = _run(_suite(), model, x, y, a, cache)
    assert rows_again == 0
    for s1, s2 in zip(shared, again, strict=True):
        np.testing.assert_array_equal(s1, s2)


def test_pixel_flipping_and_deletion_share_every_row(setup):
    model, x, y, a = setup
    w = ek.wrap_model(model)
    with forward_cache() as cache:
        pf = M.PixelFlipping(features_in_step=8)(w, x, y, a)
        w.counter.reset()
        de = M.Deletion(features_in_step=8, perturb_baseline="black")(w, x, y, a)
        assert w.counter.rows <= 1  # at most the label check
    np.testing.assert_array_equal(pf, de)
    assert len(cache) > 0


def test_same_order_different_values_share(setup):
    """Rows are keyed by the order of the groups, not by the attribution values."""
    model, x, y, a = setup
    w = ek.wrap_model(model)
    m = M.PixelFlipping(features_in_step=8, normalise=False)
    with forward_cache():
        s1 = m(w, x, y, a)
        w.counter.reset()
        s2 = m(w, x, y, 3 * a + 1)
        assert w.counter.rows <= 1
        w.counter.reset()
        m(w, x, y, -a)  # another order: recomputed
        assert w.counter.rows > 10
    np.testing.assert_array_equal(s1, s2)


def test_model_update_invalidates(setup):
    model, x, y, a = setup
    w = ek.wrap_model(model)
    m = M.PixelFlipping(features_in_step=8)
    with forward_cache():
        s1 = m(w, x, y, a)
        with torch.no_grad():
            model[0].weight.mul_(1.5)  # an in-place update, as an optimiser step does
        w.counter.reset()
        s2 = m(w, x, y, a)
        assert w.counter.rows > 10
    assert not np.allclose(s1, s2)
    s3 = m(w, x, y, a)
    np.testing.assert_allclose(s3, s2, rtol=1e-6)


def test_softmax_and_labels_are_part_of_the_key(setup):
    model, x, y, a = setup
    w = ek.wrap_model(model)
    with forward_cache():
        p = M.PixelFlipping(features_in_step=8)(w, x, y, a)
        logits = M.PixelFlipping(features_in_step=8, softmax=False)(w, x, y, a)
        other_y = M.PixelFlipping(features_in_step=8)(w, x, (y + 1) % 4, a)
    assert np.all(p <= 1) and not np.allclose(p, logits)
    np.testing.assert_allclose(other_y, M.PixelFlipping(features_in_step=8)(w, x, (y + 1) % 4, a))


def test_off_by_default_and_context_scoping(setup):
    model, x, y, a = setup
    assert active_cache() is None
    w = ek.wrap_model(model)
    m = M.PixelFlipping(features_in_step=8)
    m(w, x, y, a)
    w.counter.reset()
    m(w, x, y, a)
    assert w.counter.rows > 10
    with forward_cache() as outer:
        assert active_cache() is outer
        with forward_cache() as inner:
            assert active_cache() is inner
        assert active_cache() is outer
    assert active_cache() is None


def test_memory_bound_evicts_least_recent_samples(setup):
    model, x, y, a = setup
    w = ek.wrap_model(model)
    m = M.PixelFlipping(features_in_step=4)
    ref = m(w, x, y, a)
    cache = ForwardCache(max_rows=40)
    with cache:
        s = m(w, x, y, a)
        assert len(cache) <= 40
        assert cache.stats().evicted > 0
        s2 = m(w, x, y, a)
    np.testing.assert_allclose(s, ref, rtol=1e-6)
    np.testing.assert_allclose(s2, ref, rtol=1e-6)
    with pytest.raises(ValueError):
        ForwardCache(max_rows=0)


def test_stochastic_baselines_share_only_identical_draws(setup):
    model, x, y, a = setup
    w = ek.wrap_model(model)
    with forward_cache():
        s1 = M.PixelFlipping(features_in_step=8, perturb_baseline="uniform", seed=1)(w, x, y, a)
        w.counter.reset()
        s2 = M.PixelFlipping(features_in_step=8, perturb_baseline="uniform", seed=2)(w, x, y, a)
        assert w.counter.rows > 10  # other draws, other inputs
        w.counter.reset()
        s3 = M.PixelFlipping(features_in_step=8, perturb_baseline="uniform", seed=1)(w, x, y, a)
        assert w.counter.rows <= 1
    np.testing.assert_array_equal(s1, s3)
    assert not np.allclose(s1, s2)


class _PrivateFill(ek.perturb.Imputer):
    """A user's imputer whose state is private (its repr shows nothing of it)."""

    def __init__(self, value: float) -> None:
        self._value = value

    def fill(self, x, mask, *, keys=None):
        return torch.where(mask, torch.full_like(x, self._value), x)


def test_user_imputers_never_share_rows_their_repr_cannot_tell_apart(setup):
    model, x, y, a = setup
    assert repr(_PrivateFill(0.0)) == repr(_PrivateFill(5.0))
    ref = M.PixelFlipping(features_in_step=8, perturb_baseline=_PrivateFill(5.0))(model, x, y, a)
    with forward_cache():
        M.PixelFlipping(features_in_step=8, perturb_baseline=_PrivateFill(0.0))(model, x, y, a)
        got = M.PixelFlipping(features_in_step=8, perturb_baseline=_PrivateFill(5.0))(
            model, x, y, a)
    np.testing.assert_array_equal(got, ref)
    # one instance shares with itself, and equal built-in imputers share with each other
    same = _PrivateFill(5.0)
    assert same.cache_token() == same.cache_token() != _PrivateFill(5.0).cache_token()
    noisy = ek.perturb.imputation.NoisyLinearImputer
    assert noisy(0.01).cache_token() == noisy(0.01).cache_token() != noisy(0.02).cache_token()
    with forward_cache() as cache:
        first = M.ROAD(percentages=[50], seed=0)(model, x, y, a)
        misses = cache.stats().misses
        second = M.ROAD(percentages=[50], seed=0)(model, x, y, a)  # a new, equal imputer
        assert cache.stats().misses == misses and cache.stats().hits > 0
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("metric", [
    M.AverageDrop(), M.ERASERComprehensiveness(), M.SoftSufficiency(seed=0),
    M.LogOdds(fraction=0.25),
])
def test_unperturbed_rows_share_the_perturbed_rows_pass(setup, metric):
    """A metric that reads the unperturbed scores and perturbed ones forwards both in one
    chunked pass (one call where they fit a chunk), and a cached unperturbed score is read,
    not forwarded again."""
    model, x, y, a = setup
    w = ek.wrap_model(model)
    w.output_shape(x)  # the label check's one-row forward, done before counting
    w.counter.reset()
    ref = metric(w, x, y, a)
    assert w.counter.calls == 1 and w.counter.rows > x.shape[0]
    rows_alone = w.counter.rows
    with forward_cache():
        M.AverageDrop()(w, x, y, a)  # caches the unperturbed scores (and x * e)
        w.counter.reset()
        got = metric(w, x, y, a)
        # AverageDrop's own rows all come from the cache; the others forward only their
        # perturbed rows (LogOdds scores log-odds: another target, nothing shared)
        if isinstance(metric, M.AverageDrop):
            expected = 0
        elif isinstance(metric, M.LogOdds):
            expected = rows_alone
        else:
            expected = rows_alone - x.shape[0]
        assert w.counter.rows == expected
        if isinstance(metric, M.LogOdds):  # its own unperturbed rows, once cached, are read
            w.counter.reset()
            M.LogOdds(fraction=0.5)(w, x, y, a)
            assert w.counter.rows == x.shape[0]
    np.testing.assert_allclose(got, ref, rtol=1e-5, equal_nan=True)
