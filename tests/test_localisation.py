"""Known-answer and edge-case tests of the localisation metrics (`evalkit.metrics.localisation`).

The scenarios port the ideas of Quantus' localisation fixtures (all_in_gt, none_in_gt,
half_in_gt, seg_bigger, none_in_gt_fourth, *_zeros, non_normalised) with exact expected values
computed by hand; the code is written from scratch.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import evalkit as ek
from evalkit import UndefinedScoreWarning
from evalkit.masks import make_mosaics, masks_from_boxes
from evalkit.metrics import (
    AUC,
    AttributionLocalisation,
    BoxLocalisation,
    EnergyPointingGame,
    Focus,
    PointingGame,
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
    TopKIntersection,
)

ALL_METRICS = [
    PointingGame, AttributionLocalisation, EnergyPointingGame, RelevanceMassAccuracy,
    RelevanceRankAccuracy, lambda **kw: TopKIntersection(k=10, **kw), AUC, BoxLocalisation,
]


def score(metric, a, s, x=None, **kwargs):
    """Score attributions a (N, 1, ...) against masks s with 3-channel dummy inputs."""
    a = np.asarray(a, dtype=np.float64)
    if x is None:
        x = np.zeros((a.shape[0], 3, *a.shape[2:]), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedScoreWarning)
        return metric(None, x, None, a, s=s, **kwargs)


# --------------------------------------------------------------------------- scenarios
def scenario(kind: str, dim: int, seed: int = 0):
    """Ports of Quantus' fixtures: attributions a and masks s of shape (n, 1, 224[, 224]),
    three samples in 1-D, one in 2-D (to keep the suite fast)."""
    rng = np.random.default_rng(seed)
    n = 3 if dim == 1 else 1
    shape = (n, 1) + (224,) * dim
    zeros = kind.endswith("_zeros")
    a = np.zeros(shape) if zeros else rng.uniform(0, 0.1, size=shape)
    s = np.zeros(shape, bool)

    def sl(lo, hi):
        return (slice(None), slice(None)) + (slice(lo, hi),) * dim

    base = kind.removesuffix("_zeros")
    if base == "all_in_gt":
        s[sl(50, 150)] = True
        a[sl(50, 150)] = 1.0
    elif base == "none_in_gt":
        s[sl(0, 100)] = True
        a[sl(100, 200)] = 1.0
    elif base == "seg_bigger":
        s[sl(0, 150)] = True
        a[sl(50, 150)] = 1.0
    elif base == "fourth":
        s[sl(0, 112)] = True
        a[sl(112, 224)] = 1.0
    elif base == "half_in_gt" and dim == 1:
        s[..., 50:100] = True
        a[..., 0:100] = 1.0
    elif base == "half_in_gt" and dim == 2:
        s[..., 50:100, 50:100] = True
        a[..., 0:100, 75:100] = 1.0
    else:  # pragma: no cover
        raise ValueError(kind)
    return a, s


@pytest.mark.parametrize("dim", [1, 2])
def test_all_in_gt(dim):
    a, s = scenario("all_in_gt", dim)
    n_mask = 100**dim
    n_all = 224**dim
    assert (score(PointingGame(), a, s) == 1).all()
    assert (score(AUC(), a, s) == 1).all()
    assert (score(RelevanceRankAccuracy(), a, s) == 1).all()
    assert (score(TopKIntersection(k=n_mask), a, s) == 1).all()
    np.testing.assert_allclose(score(TopKIntersection(k=2 * n_mask), a, s), 0.5)
    np.testing.assert_allclose(score(TopKIntersection(k=n_mask, concept_influence=True), a, s),
                               n_all / n_mask)  # 2.24 in 1-D, 5.0176 in 2-D (as Quantus)
    inside = (a * s).reshape(len(a), -1).sum(1)
    np.testing.assert_allclose(score(RelevanceMassAccuracy(), a, s),
                               inside / a.reshape(len(a), -1).sum(1))
    a0, s0 = scenario("all_in_gt_zeros", dim)
    for metric in (RelevanceMassAccuracy(), AttributionLocalisation(), EnergyPointingGame(),
                   AUC(), RelevanceRankAccuracy(), PointingGame()):
        np.testing.assert_array_equal(score(metric, a0, s0), 1.0)
    np.testing.assert_allclose(score(AttributionLocalisation(weighted=True), a0, s0),
                               n_all / n_mask)


@pytest.mark.parametrize("dim", [1, 2])
def test_none_in_gt(dim):
    a, s = scenario("none_in_gt", dim)
    assert (score(PointingGame(), a, s) == 0).all()
    assert (score(TopKIntersection(k=100**dim), a, s) == 0).all()
    assert (score(RelevanceRankAccuracy(), a, s) == 0).all()
    a0, s0 = scenario("none_in_gt_zeros", dim)
    for metric in (RelevanceMassAccuracy(), AttributionLocalisation(),
                   AttributionLocalisation(weighted=True), EnergyPointingGame(),
                   RelevanceRankAccuracy(), PointingGame()):
        np.testing.assert_array_equal(score(metric, a0, s0), 0.0)
    # AUC with ties: mask pixels are all 0; negatives are 100**dim ones and the rest zeros,
    # which tie with the mask pixels and count half.
    n_all, n_pos, n_ones = 224**dim, 100**dim, 100**dim
    n_neg = n_all - n_pos
    np.testing.assert_allclose(score(AUC(), a0, s0), 0.5 * (n_neg - n_ones) / n_neg)


def test_none_in_gt_zeros_topk_ties_expected_value():
    # 1-D: top-200 = the 100 ones (outside the mask) + 100 of the 124 tied zeros, 100 of which
    # are in the mask: expected hits 100 * 100 / 124. Quantus' argsort gives 0.38 here.
    a, s = scenario("none_in_gt_zeros", 1)
    np.testing.assert_allclose(score(TopKIntersection(k=200), a, s), (100 * 100 / 124) / 200)


def test_half_in_gt():
    a, s = scenario("half_in_gt_zeros", 1)
    np.testing.assert_allclose(score(RelevanceMassAccuracy(), a, s), 0.5)
    np.testing.assert_allclose(score(AttributionLocalisation(), a, s), 0.5)
    np.testing.assert_allclose(score(RelevanceRankAccuracy(), a, s), 0.5)
    # k=50 falls inside a tie of 100 ones, 50 of them in the mask (Quantus: 0.98 by argsort)
    np.testing.assert_allclose(score(TopKIntersection(k=50), a, s), 0.5)
    np.testing.assert_allclose(score(TopKIntersection(k=125), a, s), 50 / 125)
    # AUC: positives are all 1; negatives: 50 ones (ties, half credit) and 124 zeros
    np.testing.assert_allclose(score(AUC(), a, s), (124 + 0.5 * 50) / 174)
    # the maximum is shared by 100 pixels, 50 of them in the mask
    np.testing.assert_allclose(score(PointingGame(), a, s), 0.5)
    np.testing.assert_array_equal(score(PointingGame(ties="any"), a, s), 1.0)
    np.testing.assert_array_equal(score(PointingGame(ties="first"), a, s), 0.0)
    a2, s2 = scenario("half_in_gt_zeros", 2)
    np.testing.assert_allclose(score(RelevanceMassAccuracy(), a2, s2), 0.5)
    np.testing.assert_allclose(score(TopKIntersection(k=2500), a2, s2), 0.5)
    np.testing.assert_allclose(score(TopKIntersection(k=1250), a2, s2), 0.5)
    a3, s3 = scenario("half_in_gt", 2)  # noise U(0, 0.1) around the ones
    expected = (a3 * s3).reshape(len(a3), -1).sum(1) / a3.reshape(len(a3), -1).sum(1)
    np.testing.assert_allclose(score(RelevanceMassAccuracy(), a3, s3), expected, rtol=1e-12)


@pytest.mark.parametrize("dim", [1, 2])
def test_seg_bigger_and_fourth(dim):
    a, s = scenario("seg_bigger_zeros", dim)
    np.testing.assert_array_equal(score(RelevanceMassAccuracy(), a, s), 1.0)
    # K = |mask| pixels: the 100**dim ones (all in the mask), then a tie among the zeros:
    # (K - 100**dim) of them are drawn, and a share (K - 100**dim) / #zeros lies in the mask
    k, ones = 150**dim, 100**dim
    zeros = 224**dim - ones
    expected = (ones + (k - ones) * (k - ones) / zeros) / k  # 0.8011 in 1-D, 0.6173 in 2-D
    np.testing.assert_allclose(score(RelevanceRankAccuracy(), a, s), expected)
    a, s = scenario("fourth_zeros", dim)
    # 1-D: every negative is a one, AUC 0; 2-D: a third of the negatives are ones, two
    # thirds tie with the (zero) mask pixels: 0.5 * 2/3
    np.testing.assert_allclose(score(AUC(), a, s), 0.0 if dim == 1 else 1 / 3)


def test_non_normalised_auc():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 20, size=(3, 1, 64, 64))
    s = np.zeros(a.shape, bool)
    s[..., 10:40, 10:40] = True
    a[s] = 25.0
    np.testing.assert_array_equal(score(AUC(normalise=False), a, s), 1.0)


# --------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("make", ALL_METRICS)
def test_empty_mask_is_nan_with_reason(make):
    rng = np.random.default_rng(0)
    a = rng.random((3, 1, 8, 8))
    s = np.zeros(a.shape, bool)
    s[0, 0, 2:5, 2:5] = True
    s[2, 0, 0, 0] = True
    metric = make()
    with pytest.warns(UndefinedScoreWarning):
        out = metric(None, np.zeros((3, 3, 8, 8)), None, a, s=s)
    assert np.isnan(out[1]) and not np.isnan(out[0])
    assert metric.nan_reasons_[1] == "ground-truth mask is empty"


def test_empty_mask_pointing_game_is_not_a_hit():
    a = np.zeros((1, 1, 4, 4))
    a[0, 0, 1, 1] = 1
    out = score(PointingGame(ties="any"), a, np.zeros((1, 1, 4, 4), bool))
    assert np.isnan(out[0])  # Quantus returns True (deviation C7)


def test_full_mask():
    rng = np.random.default_rng(1)
    a = rng.random((2, 1, 6, 6))
    s = np.ones(a.shape, bool)
    for metric in (RelevanceRankAccuracy(), TopKIntersection(k=5), RelevanceMassAccuracy(),
                   PointingGame(), AttributionLocalisation(), AttributionLocalisation(
                       weighted=True), EnergyPointingGame()):
        np.testing.assert_allclose(score(metric, a, s), 1.0)
    np.testing.assert_array_equal(score(PointingGame(weighted=True), a, s), 0.0)
    metric = AUC()
    out = score(metric, a, s)
    assert np.isnan(out).all() and "whole input" in metric.nan_reasons_[0]


def test_constant_maps_score_at_chance_or_nan():
    a = np.full((2, 1, 10, 10), 0.3)
    a[1] = 0.0
    s = np.zeros(a.shape, bool)
    s[..., :2, :] = True  # 20 % of the pixels
    # rank-based metrics have nothing to rank: NaN with a reason by default, the expected
    # score over random tie orders (chance level) with constant_maps="score"
    for make in (PointingGame, RelevanceRankAccuracy, lambda **kw: TopKIntersection(k=7, **kw),
                 AUC):
        metric = make()
        out = score(metric, a, s)
        assert np.isnan(out).all() and "constant" in metric.nan_reasons_[1]
    for metric in (PointingGame(constant_maps="score"),
                   RelevanceRankAccuracy(constant_maps="score"),
                   TopKIntersection(k=7, constant_maps="score")):
        np.testing.assert_allclose(score(metric, a, s), 0.2)
    np.testing.assert_allclose(score(AUC(constant_maps="score"), a, s), 0.5)
    np.testing.assert_allclose(score(RelevanceMassAccuracy(), a, s)[0], 0.2)
    np.testing.assert_allclose(score(AttributionLocalisation(weighted=True), a, s)[0], 1.0)
    for metric in (RelevanceMassAccuracy(), AttributionLocalisation(), EnergyPointingGame()):
        out = score(metric, a, s)
        assert np.isnan(out[1]) and "zero" in metric.nan_reasons_[1]


@pytest.mark.parametrize("make", ALL_METRICS)
def test_nan_attribution_rows(make):
    rng = np.random.default_rng(2)
    a = rng.random((3, 1, 8, 8))
    s = np.zeros(a.shape, bool)
    s[..., 2:6, 2:6] = True
    clean = score(make(), a, s)
    a[1, 0, 3, 3] = np.nan
    metric = make()
    out = score(metric, a, s)
    assert np.isnan(out[1]) and metric.nan_reasons_[1] == "attribution contains NaN or Inf"
    np.testing.assert_array_equal(out[[0, 2]], clean[[0, 2]])


@pytest.mark.parametrize("make", [*ALL_METRICS, Focus])
def test_scores_do_not_depend_on_the_batch(make):
    rng = np.random.default_rng(3)
    a = rng.normal(size=(6, 3, 12, 12))
    a[2] *= 1000.0  # a map at a very different scale
    s = np.zeros((6, 1, 12, 12), bool)
    for i in range(6):
        r, c = rng.integers(0, 6, 2)
        s[i, 0, r : r + 5, c : c + 6] = True
    kw = {"s": s} if make is not Focus else {"quadrants": rng.integers(0, 2, (6, 4))}
    whole = score(make(), a, kw.get("s"), **({} if make is not Focus else kw))
    for i in range(6):
        sub = {k: v[i : i + 1] for k, v in kw.items()}
        alone = score(make(), a[i : i + 1], sub.get("s"),
                      **({} if make is not Focus else sub))
        np.testing.assert_allclose(alone, whole[i : i + 1], rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- channels
def test_channel_attributions_are_summed_per_pixel():
    rng = np.random.default_rng(4)
    a3 = rng.normal(size=(4, 3, 10, 10))
    s = np.zeros((4, 1, 10, 10), bool)
    s[..., 3:7, 2:8] = True
    for make in ALL_METRICS:
        per_channel = score(make(), a3, s)
        summed = score(make(), a3.sum(1, keepdims=True), s)
        np.testing.assert_allclose(per_channel, summed, rtol=1e-12, err_msg=str(make))
    # channels that cancel: the summed map, not |a| per channel, decides
    a = np.zeros((1, 3, 4, 4))
    a[0, 0, 0, 0], a[0, 1, 0, 0] = 5.0, -5.0  # cancels: pixel (0, 0) sums to 0
    a[0, 2, 3, 3] = 1.0
    s1 = np.zeros((1, 1, 4, 4), bool)
    s1[0, 0, 3, 3] = True
    assert PointingGame()(None, np.zeros((1, 3, 4, 4)), None, a, s=s1)[0] == 1.0


def test_mask_shapes():
    rng = np.random.default_rng(5)
    a = rng.random((2, 1, 6, 6))
    s = np.zeros((2, 6, 6), bool)
    s[:, 1:4, 1:4] = True
    x = np.zeros((2, 3, 6, 6))
    ref = AUC()(None, x, None, a, s=s[:, None])
    np.testing.assert_array_equal(AUC()(None, x, None, a, s=s), ref)  # (N, H, W)
    np.testing.assert_array_equal(AUC()(None, x, None, a, s=np.repeat(s[:, None], 3, 1)), ref)
    bad = np.repeat(s[:, None], 3, 1)
    bad[0, 2] = False
    with pytest.raises(ValueError, match="per channel"):
        AUC()(None, x, None, a, s=bad)
    with pytest.raises(ValueError, match="needs ground-truth masks"):
        AUC()(None, x, None, a)
    with pytest.raises(ValueError, match="binary"):
        AUC()(None, x, None, a, s=s * 2)


def test_tabular_and_time_series():
    a = np.array([[0.1, 0.9, 0.3, 0.2], [0.5, 0.4, 0.3, 0.2]])
    s = np.array([[0, 1, 1, 0], [0, 0, 0, 1]], bool)
    x = np.zeros((2, 4))
    np.testing.assert_allclose(AUC()(None, x, None, a, s=s), [1.0, 0.0])
    np.testing.assert_allclose(RelevanceRankAccuracy()(None, x, None, a, s=s), [1.0, 0.0])
    np.testing.assert_allclose(TopKIntersection(k=3)(None, x, None, a, s=s), [2 / 3, 0.0])
    with pytest.raises(ValueError, match="spatial"):
        PointingGame(tolerance=1)(None, x, None, a, s=s)
    ts = np.zeros((1, 1, 20))
    ts[0, 0, 3] = 1.0
    m = np.zeros((1, 1, 20), bool)
    m[0, 0, 6:9] = True
    x_ts = np.zeros((1, 2, 20))
    assert PointingGame(tolerance=2)(None, x_ts, None, ts, s=m)[0] == 0.0
    assert PointingGame(tolerance=3)(None, x_ts, None, ts, s=m)[0] == 1.0


# --------------------------------------------------------------------------- PointingGame
def test_pointing_game_tolerance_euclidean():
    a = np.zeros((1, 1, 40, 40))
    a[0, 0, 10, 10] = 1.0
    s = np.zeros(a.shape, bool)
    s[0, 0, 10 + 9, 10 + 12] = True  # distance 15 exactly
    assert score(PointingGame(), a, s)[0] == 0.0
    assert score(PointingGame(tolerance=15), a, s)[0] == 1.0
    assert score(PointingGame(tolerance=14.99), a, s)[0] == 0.0  # TorchRay's strict "< 15"
    s2 = np.zeros(a.shape, bool)
    s2[0, 0, 10 + 11, 10 + 11] = True  # distance 15.56
    assert score(PointingGame(tolerance=15), a, s2)[0] == 0.0


def test_pointing_game_weighted():
    a = np.zeros((2, 1, 10, 10))
    a[:, 0, 1, 1] = 1.0
    s = np.zeros(a.shape, bool)
    s[0, 0, :2, :5] = True  # 10 % of the image, hit
    s[1, 0, 5:, 5:] = True  # miss
    np.testing.assert_allclose(score(PointingGame(weighted=True), a, s), [0.9, 0.0])
    # with a tolerance the weight uses the dilated hit region
    s3 = np.zeros((1, 1, 10, 10), bool)
    s3[0, 0, 5, 5] = True
    a3 = np.zeros((1, 1, 10, 10))
    a3[0, 0, 5, 6] = 1.0
    np.testing.assert_allclose(score(PointingGame(tolerance=1, weighted=True), a3, s3), [0.95])


def test_pointing_game_ties():
    a = np.zeros((1, 1, 3, 4))
    a[0, 0, 0, 3] = a[0, 0, 2, 0] = a[0, 0, 2, 1] = 1.0  # three maxima
    s = np.zeros(a.shape, bool)
    s[0, 0, 2, :] = True  # two of them in the mask
    np.testing.assert_allclose(score(PointingGame(), a, s), [2 / 3])
    assert score(PointingGame(ties="any"), a, s)[0] == 1.0
    assert score(PointingGame(ties="first"), a, s)[0] == 0.0  # (0, 3) comes first
    with pytest.raises(ValueError, match="ties"):
        PointingGame(ties="random")


# --------------------------------------------------------------------------- mass-based
def test_attribution_localisation_options():
    a = np.zeros((1, 1, 4, 5))
    a[0, 0, 0, 0] = 3.0  # inside
    a[0, 0, 3, 4] = 1.0  # outside
    a[0, 0, 2, 2] = -2.0  # outside, negative
    s = np.zeros(a.shape, bool)
    s[0, 0, :2, :2] = True  # 4 of 20 pixels
    np.testing.assert_allclose(score(AttributionLocalisation(), a, s), [0.75])
    np.testing.assert_allclose(score(AttributionLocalisation(weighted=True), a, s), [0.75 * 5])
    np.testing.assert_allclose(score(AttributionLocalisation(abs=True), a, s), [0.5])
    # signed ratio: 3 / (3 + 1 - 2) = 1.5 is outside [0, 1]: NaN with a reason
    metric = AttributionLocalisation(positive_attributions=False)
    out = score(metric, a, s)
    assert np.isnan(out[0]) and "outside [0, 1]" in metric.nan_reasons_[0]
    # max_size excludes large objects
    big = np.zeros(a.shape, bool)
    big[0, 0, :3, :] = True
    metric = AttributionLocalisation(max_size=0.5)
    assert np.isnan(score(metric, a, big)[0]) and "max_size" in metric.nan_reasons_[0]
    with pytest.raises(ValueError, match="max_size"):
        AttributionLocalisation(max_size=0)


def test_energy_pointing_game_with_boxes():
    rng = np.random.default_rng(6)
    a = rng.normal(size=(4, 1, 16, 16))
    boxes = np.array([[0, 0, 8, 8], [4, 2, 12, 16], [1, 1, 2, 2], [0, 0, 16, 16]])
    x = np.zeros((4, 3, 16, 16))
    via_boxes = EnergyPointingGame()(None, x, None, a, boxes=boxes)
    masks = masks_from_boxes(boxes, 16)
    np.testing.assert_array_equal(via_boxes, EnergyPointingGame()(None, x, None, a, s=masks))
    np.testing.assert_array_equal(via_boxes, AttributionLocalisation()(None, x, None, a, s=masks))
    pos = np.clip(a, 0, None)[:, 0]
    expected = (pos * masks[:, 0]).sum((1, 2)) / pos.sum((1, 2))
    np.testing.assert_allclose(via_boxes, expected, rtol=1e-12)
    assert via_boxes[3] == 1.0
    with pytest.raises(TypeError, match="not both"):
        EnergyPointingGame()(None, x, None, a, s=masks, boxes=boxes)
    with pytest.raises(ValueError, match="image inputs"):
        EnergyPointingGame()(None, np.zeros((4, 16)), None, a[:, 0, 0], boxes=boxes)
    # channels-last inputs take boxes too
    hwc = EnergyPointingGame()(None, x.transpose(0, 2, 3, 1), None, a.transpose(0, 2, 3, 1),
                               boxes=boxes, channel_first=False)
    np.testing.assert_array_equal(hwc, via_boxes)


def test_relevance_mass_accuracy_uses_positive_relevance():
    """Arras et al. 2022 sum positive relevance only: R_within = sum of R_p > 0 in the mask,
    R_total = sum of R_p > 0, so the score is a share in [0, 1] for signed maps too."""
    a = np.zeros((4, 1, 2, 2))
    a[0, 0, 0, 0], a[0, 0, 1, 1] = 2.0, -1.0  # signed total 1, inside 2: Quantus gives 2
    a[1, 0, 0, 0], a[1, 0, 0, 1], a[1, 0, 1, 1] = 1.0, -5.0, 3.0  # -5 in the mask is ignored
    a[2] = -1.0  # no positive relevance at all
    a[3, 0, 1, 0], a[3, 0, 0, 0] = 4.0, -4.0  # signed total 0, positive mass all outside
    s = np.zeros(a.shape, bool)
    s[:, 0, 0, :] = True  # the top row
    metric = RelevanceMassAccuracy()
    out = score(metric, a, s)
    np.testing.assert_array_equal(out[[0, 1, 3]], [1.0, 1 / 4, 0.0])
    assert np.isnan(out[2]) and "no positive attribution" in metric.nan_reasons_[2]
    # abs=True scores the magnitude |a|: 2/3, 6/9, a uniform 1/2, 4/8
    np.testing.assert_allclose(score(RelevanceMassAccuracy(abs=True), a, s),
                               [2 / 3, 6 / 9, 1 / 2, 1 / 2])


def test_relevance_mass_accuracy_signed_ratio_option():
    a = np.zeros((3, 1, 2, 2))
    a[0, 0, 0, 0], a[0, 0, 1, 1] = 2.0, -1.0  # ratio 2: not a share
    a[1, 0, 0, 0], a[1, 0, 1, 1] = 1.0, -3.0  # negative total
    a[2, 0, 0, 0], a[2, 0, 1, 1] = 1.0, 3.0  # non-negative: 1/4 in both readings
    s = np.zeros(a.shape, bool)
    s[:, 0, 0, 0] = True
    metric = RelevanceMassAccuracy(positive_attributions=False)
    out = score(metric, a, s)
    assert np.isnan(out[:2]).all() and out[2] == 0.25
    assert "outside [0, 1]" in metric.nan_reasons_[0]
    assert "not positive" in metric.nan_reasons_[1]
    with pytest.raises(TypeError, match="positive_attributions"):
        RelevanceMassAccuracy(positive_attributions="yes")


def test_mass_scores_of_signed_channel_maps_are_shares():
    """InputXGradient-like signed 3-channel maps (summed per pixel) on every localisation
    metric without a chance rescaling: each score is in [0, 1], and the mass ratios equal a
    NumPy computation of the positive-relevance definition."""
    rng = np.random.default_rng(7)
    a = rng.normal(size=(32, 3, 9, 9)) + rng.normal(0.3, 0.2, size=(32, 1, 1, 1))
    s = np.zeros((32, 1, 9, 9), bool)
    for i in range(32):
        r, c = rng.integers(0, 5, 2)
        s[i, 0, r : r + 4, c : c + 3] = True
    pix = np.clip(a.sum(1), 0, None).reshape(32, -1)
    expected = (pix * s.reshape(32, -1)).sum(1) / pix.sum(1)
    for metric in (RelevanceMassAccuracy(), AttributionLocalisation(), EnergyPointingGame()):
        np.testing.assert_allclose(score(metric, a, s), expected, rtol=1e-12, atol=0)
    signed = (a.sum(1).reshape(32, -1) * s.reshape(32, -1)).sum(1) / a.sum((1, 2, 3))
    assert ((signed > 1) | (signed < 0)).any()  # the signed ratio (Quantus) leaves [0, 1] here
    for make in [*ALL_METRICS, lambda: RelevanceMassAccuracy(positive_attributions=False)]:
        out = score(make(), a, s)
        finite = out[np.isfinite(out)]
        assert finite.size and (finite >= 0).all() and (finite <= 1).all(), make


def test_relevance_mass_accuracy_input_x_gradient_on_a_model():
    """End to end with a signed explainer: InputXGradient of a trained CNN, 3 channels."""
    from evalkit.datasets import make_shapes
    from evalkit.zoo import load_shapes_cnn

    model = load_shapes_cnn()
    data = make_shapes(6, seed=3)
    a = ek.explain(model, data.x, data.y, method="InputXGradient")
    assert a.shape[1] == 3 and (a < 0).any()
    metric = RelevanceMassAccuracy()
    out = metric(model, data.x, data.y, a, s=data.masks)
    pix = np.clip(a.astype(np.float64).sum(1), 0, None).reshape(len(a), -1)
    inside = (pix * data.masks.reshape(len(a), -1)).sum(1)
    np.testing.assert_allclose(out, inside / pix.sum(1), rtol=1e-12)
    assert ((out >= 0) & (out <= 1)).all()


# --------------------------------------------------------------------------- rank-based
def test_topk_parameters():
    a = np.arange(16, dtype=float).reshape(1, 1, 4, 4)
    s = np.zeros(a.shape, bool)
    s[0, 0, 3, :] = True  # the four largest values
    np.testing.assert_allclose(score(TopKIntersection(k=4), a, s), [1.0])
    np.testing.assert_allclose(score(TopKIntersection(k=8), a, s), [0.5])
    np.testing.assert_allclose(score(TopKIntersection(k=0.5), a, s), [0.5])  # 8 pixels
    np.testing.assert_allclose(score(TopKIntersection(k=4, concept_influence=True), a, s), [4.0])
    with pytest.raises(ValueError, match="exceeds"):
        score(TopKIntersection(k=17), a, s)
    with pytest.raises(ValueError):
        TopKIntersection(k=1.5)
    with pytest.raises(ValueError):
        TopKIntersection(k=0)


def test_rank_accuracy_random_tie_breaking_expectation():
    # brute force: average the rank accuracy over every random order of the tied pixels
    rng = np.random.default_rng(7)
    a = rng.integers(0, 3, size=(5, 1, 3, 4)).astype(float)  # many ties
    s = rng.random((5, 1, 3, 4)) > 0.5
    s[:, 0, 0, 0] = True
    out = score(RelevanceRankAccuracy(), a, s)
    for i in range(5):
        v, m = a[i].ravel(), s[i].ravel()
        k = m.sum()
        draws = []
        for seed in range(4000):
            jitter = np.random.default_rng(seed).random(v.size) * 1e-3
            order = np.argsort(-(v + jitter), kind="stable")
            draws.append(m[order[:k]].mean())
        assert out[i] == pytest.approx(np.mean(draws), abs=0.01)


def test_auc_equals_sklearn_with_ties():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(8)
    a = np.round(rng.normal(size=(20, 1, 9, 11)), 1)  # coarse values: many ties
    s = rng.random((20, 1, 9, 11)) < rng.uniform(0.05, 0.6, size=(20, 1, 1, 1))
    ours = score(AUC(), a, s)
    ref = [sklearn_metrics.roc_auc_score(s[i].ravel(), a[i].ravel()) for i in range(20)]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- Focus
def _artificial_mosaic_maps():
    """Attributions 1 in chosen quadrants (4 mosaics of 2x2 tiles of 6x6 pixels)."""
    layouts = np.array([[0, 0, 1, 1], [1, 1, 0, 0], [0, 1, 0, 1], [1, 0, 1, 0]])
    tiles = np.repeat(layouts[:, :, None, None, None], 6, 3).repeat(6, 4).astype(float)
    from evalkit.masks import build_mosaics

    return build_mosaics(tiles), layouts


def test_focus_known_values():
    a, layouts = _artificial_mosaic_maps()
    x = np.ones((4, 1, 12, 12))
    np.testing.assert_array_equal(Focus()(None, x, None, a, quadrants=layouts), 1.0)
    np.testing.assert_array_equal(Focus()(None, x, None, a, quadrants=1 - layouts), 0.0)
    # Quantus' custom_batch of 4-tuples is accepted
    custom = [tuple(int(v) for v in row) for row in layouts]
    np.testing.assert_array_equal(Focus()(None, x, None, a, custom_batch=custom), 1.0)
    # one target quadrant of the two relevant ones: half the positive relevance
    one = np.array([[0, 0, 1, 0]] * 4)
    np.testing.assert_allclose(Focus()(None, x, None, a, quadrants=one), [0.5, 0.0, 0.0, 0.5])
    # negative relevance is ignored; masks work in place of quadrants
    a_neg = a - 0.5 * (1 - a)
    np.testing.assert_array_equal(Focus()(None, x, None, a_neg, quadrants=layouts), 1.0)
    from evalkit.masks import quadrant_masks

    np.testing.assert_array_equal(
        Focus()(None, x, None, a, s=quadrant_masks(layouts, 12)), 1.0)


def test_focus_errors_and_nan():
    a, layouts = _artificial_mosaic_maps()
    x = np.ones((4, 1, 12, 12))
    with pytest.raises(ValueError, match="quadrants"):
        Focus()(None, x, None, a)
    with pytest.raises(ValueError, match="rows"):
        Focus()(None, x, None, a, quadrants=layouts[:2])
    with pytest.raises(TypeError, match="not both"):
        Focus()(None, x, None, a, quadrants=layouts, custom_batch=layouts)
    metric = Focus()
    with pytest.warns(UndefinedScoreWarning):
        out = metric(None, x, None, -a, quadrants=layouts)
    assert np.isnan(out).all() and "positive" in metric.nan_reasons_[0]


def test_focus_end_to_end_with_a_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 3)).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(12, 1, 8, 8, generator=gen)
    y = torch.arange(12) % 3
    mos = make_mosaics(x, y, mosaics_per_class=2, seed=0)

    def gradient(model, inputs, targets):  # explain on demand: a plain input gradient
        inputs = inputs.clone().requires_grad_(True)
        out = model(inputs).gather(1, targets.reshape(-1, 1)).sum()
        return torch.autograd.grad(out, inputs)[0]

    out = Focus()(model, mos.x, mos.y, quadrants=mos.quadrants, explain_fn=gradient)
    assert out.shape == (6,) and np.all((out >= 0) & (out <= 1))


# --------------------------------------------------------------------------- BoxLocalisation
def test_box_localisation_metric():
    a = np.zeros((3, 1, 12, 12))
    a[:, 0, 6:10, 6:10] = 1.0
    a[:, 0, 0, 0] = 2.0  # a small hot spot: the big component still wins
    boxes = np.array([[6, 6, 10, 10], [5, 6, 10, 10], [0, 0, 3, 3]])
    x = np.zeros((3, 3, 12, 12))
    np.testing.assert_array_equal(BoxLocalisation()(None, x, None, a, boxes=boxes),
                                  [1.0, 1.0, 0.0])
    np.testing.assert_allclose(BoxLocalisation(return_iou=True)(None, x, None, a, boxes=boxes),
                               [1.0, 0.8, 0.0])
    # from masks: their tight boxes
    np.testing.assert_array_equal(
        BoxLocalisation()(None, x, None, a, s=masks_from_boxes(boxes, 12)), [1.0, 1.0, 0.0])
    assert ek.metrics.get("CAMLocalisation") is BoxLocalisation


# --------------------------------------------------------------------------- protocol
def test_metadata_and_params():
    for cls in (PointingGame, AttributionLocalisation, EnergyPointingGame,
                RelevanceMassAccuracy, RelevanceRankAccuracy, TopKIntersection, AUC, Focus,
                BoxLocalisation):
        assert cls.family == "localisation" and cls.higher_is_better and not cls.needs_model
        assert cls.needs_masks == (cls is not Focus)
        metric = cls()
        assert type(metric.clone()) is cls
    m = PointingGame(tolerance=15).set_params(weighted=True)
    assert m.tolerance == 15 and m.weighted
    assert "tolerance=15" in repr(PointingGame(tolerance=15))
    assert ek.metrics.get("pointing_game") is PointingGame


def test_torch_inputs_and_quantus_names():
    rng = np.random.default_rng(9)
    a = rng.random((3, 1, 8, 8))
    s = np.zeros(a.shape, bool)
    s[..., 2:6, 1:4] = True
    x = np.zeros((3, 3, 8, 8))
    ref = AUC()(None, x, None, a, s=s)
    out = AUC()(x_batch=torch.from_numpy(x), a_batch=torch.from_numpy(a),
                s_batch=torch.from_numpy(s))
    np.testing.assert_array_equal(out, ref)
    agg = AUC(return_aggregate=True)(None, x, None, a, s=s)
    assert agg.shape == (1,) and agg[0] == pytest.approx(ref.mean())  # Quantus' [aggregate]


def test_inputs_are_not_mutated():
    rng = np.random.default_rng(10)
    a = rng.normal(size=(3, 3, 8, 8))
    s = np.zeros((3, 1, 8, 8), bool)
    s[..., 2:6, 1:4] = True
    a0, s0 = a.copy(), s.copy()
    for make in ALL_METRICS:
        make(abs=True)(None, np.zeros((3, 3, 8, 8)), None, a, s=s)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(s, s0)


# --------------------------------------------------------------------------- validation fast paths
def test_finite_rows_and_bool_masks_fast_path():
    from evalkit._validation import check_masks, finite_rows

    t = torch.zeros(5, 3, dtype=torch.float32)
    t[1, 0] = 3e38
    t[1, 1] = 3e38  # finite values whose sum overflows: still finite
    t[2, 2] = float("nan")
    t[3, 0], t[3, 1] = float("inf"), float("-inf")  # the sum is NaN
    t[4, 0] = float("-inf")
    assert finite_rows(t).tolist() == [True, True, False, False, False]
    assert finite_rows(torch.ones(2, 2, dtype=torch.int64)).all()
    x = torch.zeros(2, 3, 4, 4)
    s = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    assert check_masks(s, x) is s  # bool masks are neither copied nor converted
    with pytest.raises(ValueError, match="NaN or Inf"):
        check_masks(torch.full((2, 1, 4, 4), float("nan")), x)
    with pytest.raises(ValueError, match="binary"):
        check_masks(torch.full((2, 1, 4, 4), 0.5), x)
    assert check_masks(torch.ones(2, 4, 4), x).dtype == torch.bool
