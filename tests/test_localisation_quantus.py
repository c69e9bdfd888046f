"""Cross-checks of the localisation metrics against the released quantus 0.6.0 (a test-only
reference oracle), and tests showing that Quantus' localisation bugs are not repeated."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from evalkit import UndefinedScoreWarning
from evalkit.masks import quadrant_masks
from evalkit.metrics import (
    AUC,
    AttributionLocalisation,
    EnergyPointingGame,
    Focus,
    PointingGame,
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
    TopKIntersection,
)


def inputs(seed: int = 0, n: int = 16, size: int = 28):
    """RGB inputs, continuous 1-channel maps (no ties) at different scales, random boxes."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 3, size, size)).astype(np.float32)
    a = rng.gamma(2.0, size=(n, 1, size, size)) * rng.uniform(0.01, 100, (n, 1, 1, 1))
    s = np.zeros((n, 1, size, size), np.float32)
    for i in range(n):
        h, w = rng.integers(3, size // 2, 2)
        r, c = rng.integers(0, size - h), rng.integers(0, size - w)
        s[i, 0, r : r + h, c : c + w] = 1
        a[i, 0, r : r + h, c : c + w] *= rng.uniform(1, 3)  # some localisation signal
    return x, a, s


def quantus_scores(metric, x, a, s, **call):
    out = metric(model=call.pop("model", None), x_batch=x, y_batch=np.zeros(len(x), int),
                 a_batch=a.copy(), s_batch=None if s is None else s.copy(), **call)
    return np.asarray(out, dtype=np.float64)


def ours(metric, x, a, s, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedScoreWarning)
        return metric(None, x, None, a, s=s, **kw)


@pytest.mark.parametrize("normalise", [True, False])
def test_agreement_with_quantus(quantus, normalise):
    """Quantus' batch-global max normalisation scales every map by the same positive number,
    which none of these scores depends on: agreement with normalise=True and False."""
    x, a, s = inputs()
    q = dict(disable_warnings=True, normalise=normalise)
    pairs = [
        (quantus.PointingGame(**q), PointingGame(normalise=normalise)),
        (quantus.PointingGame(**q), PointingGame(ties="any", normalise=normalise)),
        (quantus.RelevanceMassAccuracy(**q), RelevanceMassAccuracy(normalise=normalise)),
        (quantus.RelevanceRankAccuracy(**q), RelevanceRankAccuracy(normalise=normalise)),
        (quantus.AUC(**q), AUC(normalise=normalise)),
        (quantus.TopKIntersection(k=100, **q), TopKIntersection(k=100, normalise=normalise)),
        (quantus.TopKIntersection(k=37, concept_influence=True, **q),
         TopKIntersection(k=37, concept_influence=True, normalise=normalise)),
        # Quantus' default (abs=True) is evalkit's AttributionLocalisation(abs=True)
        (quantus.AttributionLocalisation(**q), AttributionLocalisation(abs=True,
                                                                       normalise=normalise)),
    ]
    for theirs, mine in pairs:
        np.testing.assert_allclose(ours(mine, x, a, s), quantus_scores(theirs, x, a, s),
                                   rtol=0, atol=1e-6, err_msg=repr(mine))


def test_agreement_with_signed_maps(quantus):
    x, a, s = inputs(1)
    rng = np.random.default_rng(1)
    a = a * rng.choice([-1.0, 1.0], size=a.shape, p=[0.2, 0.8])
    q = dict(disable_warnings=True)
    for theirs, mine in [
        (quantus.AUC(**q), AUC()),
        (quantus.RelevanceRankAccuracy(**q), RelevanceRankAccuracy()),
        (quantus.PointingGame(**q), PointingGame()),
        (quantus.AttributionLocalisation(positive_attributions=True, abs=False, **q),
         AttributionLocalisation()),
        (quantus.AttributionLocalisation(positive_attributions=True, abs=False, **q),
         EnergyPointingGame()),
    ]:
        np.testing.assert_allclose(ours(mine, x, a, s), quantus_scores(theirs, x, a, s),
                                   rtol=0, atol=1e-6, err_msg=repr(mine))


def test_relevance_mass_accuracy_on_signed_maps(quantus):
    """Quantus divides the signed sums, so signed maps score outside [0, 1]; evalkit follows
    Arras et al. (positive relevance only) and equals Quantus given the positive part."""
    x, a, s = inputs(3)
    rng = np.random.default_rng(3)
    a = a * rng.choice([-1.0, 1.0], size=a.shape, p=[0.45, 0.55])
    q = dict(disable_warnings=True, normalise=False)
    theirs = quantus_scores(quantus.RelevanceMassAccuracy(**q), x, a, s)
    assert ((theirs > 1) | (theirs < 0)).any()
    mine = ours(RelevanceMassAccuracy(), x, a, s)
    assert ((mine >= 0) & (mine <= 1)).all()
    np.testing.assert_allclose(
        mine, quantus_scores(quantus.RelevanceMassAccuracy(**q), x, np.clip(a, 0, None), s),
        rtol=0, atol=1e-6)


def test_agreement_on_quantus_scenarios_without_ties(quantus):
    """Quantus' all_in_gt / none_in_gt / seg_bigger fixtures (noise background, no ties)."""
    rng = np.random.default_rng(2)
    n = 4
    for mask_sl, ones_sl in [((50, 150), (50, 150)), ((0, 100), (100, 200)),
                             ((0, 150), (50, 150))]:
        a = rng.uniform(0, 0.1, size=(n, 1, 64 * 2, 64 * 2))
        s = np.zeros(a.shape, np.float32)
        s[..., mask_sl[0] // 2 : mask_sl[1] // 2, mask_sl[0] // 2 : mask_sl[1] // 2] = 1
        a[..., ones_sl[0] // 2 : ones_sl[1] // 2, ones_sl[0] // 2 : ones_sl[1] // 2] = 1.0
        a += rng.uniform(0, 1e-6, size=a.shape)  # break the ties among the ones
        x = rng.normal(size=(n, 3, 128, 128)).astype(np.float32)
        q = dict(disable_warnings=True)
        for theirs, mine in [(quantus.AUC(**q), AUC()),
                             (quantus.RelevanceMassAccuracy(**q), RelevanceMassAccuracy()),
                             (quantus.RelevanceRankAccuracy(**q), RelevanceRankAccuracy()),
                             (quantus.TopKIntersection(k=2500, **q), TopKIntersection(k=2500)),
                             (quantus.PointingGame(**q), PointingGame())]:
            np.testing.assert_allclose(ours(mine, x, a, s), quantus_scores(theirs, x, a, s),
                                       rtol=0, atol=1e-6, err_msg=repr(mine))


def test_focus_agreement(quantus):
    rng = np.random.default_rng(3)
    n = 6
    x = rng.random((n, 3, 16, 16)).astype(np.float32)
    a = rng.normal(size=(n, 1, 16, 16))
    quadrants = rng.integers(0, 2, size=(n, 4))
    quadrants[:, 0] = 1
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten()).eval()
    theirs = quantus.Focus(disable_warnings=True)(
        model=model, x_batch=x, y_batch=np.zeros(n, int), a_batch=a.copy(),
        custom_batch=[tuple(int(v) for v in row) for row in quadrants])
    mine = Focus()(None, x, None, a, quadrants=quadrants)
    np.testing.assert_allclose(mine, np.asarray(theirs, float), rtol=0, atol=1e-6)
    np.testing.assert_allclose(mine, ours(EnergyPointingGame(), x, a,
                                          quadrant_masks(quadrants, 16)), rtol=1e-12)


# --------------------------------------------------------------------------- bugs not repeated
def test_empty_mask_is_not_a_hit_c7(quantus):
    x, a, s = inputs(4, n=4)
    s[1] = 0
    theirs = quantus_scores(quantus.PointingGame(disable_warnings=True), x, a, s)
    assert theirs[1] == 1.0  # Quantus: NaN cast to bool is True
    metric = PointingGame()
    mine = ours(metric, x, a, s)
    assert np.isnan(mine[1]) and metric.nan_reasons_[1] == "ground-truth mask is empty"


def test_weighted_pointing_game_works_c7(quantus):
    x, a, s = inputs(5, n=4)
    with pytest.raises(TypeError):
        quantus_scores(quantus.PointingGame(weighted=True, disable_warnings=True), x, a, s)
    hits = ours(PointingGame(), x, a, s)
    frac = s.reshape(4, -1).mean(1)
    np.testing.assert_allclose(ours(PointingGame(weighted=True), x, a, s), hits * (1 - frac))


def test_weighted_attribution_localisation_is_per_sample_c8(quantus):
    """Quantus weights by |mask| / x_batch[2:].size, which depends on the batch size N."""
    x, a, s = inputs(6, n=8)
    q = quantus.AttributionLocalisation(weighted=True, disable_warnings=True)
    theirs_8 = quantus_scores(q, x, a, s)[0]
    theirs_4 = quantus_scores(q, x[:4], a[:4], s[:4])[0]
    assert not np.isclose(theirs_8, theirs_4)
    mine = AttributionLocalisation(abs=True, weighted=True)
    mine_8, mine_4 = ours(mine, x, a, s)[0], ours(mine, x[:4], a[:4], s[:4])[0]
    assert mine_8 == mine_4
    # mu_w = mu * |input| / |mask|, where mu is Quantus' unweighted ratio
    mu = quantus_scores(quantus.AttributionLocalisation(disable_warnings=True), x, a, s)[0]
    assert mine_8 == pytest.approx(mu * s[0].size / s[0].sum(), rel=1e-8)


def test_auc_is_vectorised_and_matches_sklearn_on_large_batches(quantus):
    x, a, s = inputs(7, n=64)
    a = np.round(a, 0)  # ties
    theirs = quantus_scores(quantus.AUC(disable_warnings=True, normalise=False), x, a, s)
    np.testing.assert_allclose(ours(AUC(normalise=False), x, a, s), theirs, rtol=0, atol=1e-12)
