"""The removal and perturbation faithfulness metrics on token ids: a removed token becomes the
mask token (or is deleted with re-padding), so PixelFlipping, Deletion, RegionPerturbation,
Selectivity, Monotonicity, SensitivityN, FaithfulnessCorrelation, FaithfulnessEstimate and
MonotonicityCorrelation declare ``"tokens"`` whenever their replacement is defined for ids.
Known answers are computed by hand on a model that reads one planted token (the pattern of
``tests/test_text_metrics.py``)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from evalkit.metrics import (
    AverageDrop,
    AverageGain,
    AverageIncrease,
    Deletion,
    FaithfulnessCorrelation,
    FaithfulnessEstimate,
    Infidelity,
    Insertion,
    Monotonicity,
    MonotonicityCorrelation,
    PixelFlipping,
    RegionPerturbation,
    Selectivity,
    SensitivityN,
)
from evalkit.modality import TokensModality

PLANTED, W, LENGTH = 7, 3.0, 10
P_PLANTED = 1 / (1 + math.exp(-W))  # p(y=1 | x) with the planted token present
P_GONE = 0.5  # p(y=1 | x) without it: both logits 0


class Planted(nn.Module):
    """Two classes; logit_1 = W * (number of planted tokens), logit_0 = 0: the model reads
    only the planted token (and ignores positions, so deletion equals replacement)."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 1)
        with torch.no_grad():
            self.embedding.weight.zero_()
            self.embedding.weight[PLANTED] = W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hits = self.embedding(x).sum((1, 2))
        return torch.stack([torch.zeros_like(hits), hits], 1)


def planted_batch(n: int = 3):
    """Ids 1..19 without the planted one, the planted token at position 2 + i, labels 1, and
    the planted map (1 at the planted token, a small increasing ramp elsewhere: no ties)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 20, (n, LENGTH), generator=g)
    x[x == PLANTED] = 1
    pos = torch.arange(n) + 2
    x[torch.arange(n), pos] = PLANTED
    a = torch.linspace(0.0, 0.1, LENGTH).expand(n, LENGTH).clone()
    a[torch.arange(n), pos] = 1.0
    return x, torch.ones(n, dtype=torch.int64), a


def _trapezoid(curve: list[float]) -> float:
    """The area under a curve over the fractions 0, 1/T, ..., 1 (T + 1 points), by hand."""
    step = 1 / (len(curve) - 1)
    return sum((u + v) / 2 * step for u, v in itertools.pairwise(curve))


def test_pixel_flipping_on_the_planted_map_and_on_the_reversed_map():
    x, y, a = planted_batch()
    reversed_map = 1.0 - a  # the planted token last, the ramp reversed (still no ties)
    model = Planted()
    # the planted map removes the planted token first: P, then 0.5 for the 10 other steps
    planted_curve = [P_PLANTED] + [P_GONE] * LENGTH
    # the reversed map removes it last: P for the first 9 removals, 0.5 at the end
    reversed_curve = [P_PLANTED] * LENGTH + [P_GONE]
    expected_planted = 0.1 * (P_PLANTED + P_GONE) / 2 + 0.1 * 9 * P_GONE
    expected_reversed = 0.1 * 9 * P_PLANTED + 0.1 * (P_PLANTED + P_GONE) / 2
    assert _trapezoid(planted_curve) == pytest.approx(expected_planted)
    assert _trapezoid(reversed_curve) == pytest.approx(expected_reversed)

    metric = PixelFlipping()
    assert "tokens" in metric.modalities
    got = metric(model, x, y, a)
    assert np.allclose(metric.curves_, [planted_curve] * 3)
    assert np.allclose(got, expected_planted)
    got_reversed = metric(model, x, y, reversed_map)
    assert np.allclose(metric.curves_, [reversed_curve] * 3)
    assert np.allclose(got_reversed, expected_reversed)
    assert (got < got_reversed).all()  # lower is better: the planted map wins
    # the ids reach the model as ids: the input is never cast
    assert x.dtype == torch.int64


def test_pixel_flipping_follows_the_mask_token_and_token_deletion():
    x, y, a = planted_batch()
    model = Planted()
    expected = 0.1 * (P_PLANTED + P_GONE) / 2 + 0.1 * 9 * P_GONE
    # the planted token as the mask token: removing it changes nothing, every later removal
    # plants one more (p rises with the count)
    metric = PixelFlipping()
    metric(model, x, y, a, modality=TokensModality(mask_token_id=PLANTED))
    counts = [1, 1, *range(2, LENGTH + 1)]  # planted tokens after k removals
    curve = [1 / (1 + math.exp(-W * c)) for c in counts]
    assert np.allclose(metric.curves_, [curve] * 3)
    # an explicit id (the mask token 0 of the default modality) and deletion with re-padding
    assert np.allclose(PixelFlipping(perturb_baseline=0)(model, x, y, a), expected)
    deleting = PixelFlipping(perturb_baseline="delete")
    assert deleting.modalities == ("tokens",)
    assert np.allclose(deleting(model, x, y, a), expected)


def test_deletion_and_selectivity_on_the_planted_map():
    x, y, a = planted_batch()
    model = Planted()
    expected = 0.1 * (P_PLANTED + P_GONE) / 2 + 0.1 * 9 * P_GONE
    # RISE's defaults: ceil(10 / 100) = 1 token per step; "zero" is the id 0
    assert np.allclose(Deletion()(model, x, y, a), expected)
    # one-token patches: the same curve
    assert np.allclose(Selectivity(patch_size=1)(model, x, y, a), expected)
    # windows of 5 tokens: the planted token (position 2..4) is in the first window, whose
    # attribution sum is the largest
    sel = Selectivity(patch_size=5)
    assert np.allclose(sel(model, x, y, a), 0.5 * (P_PLANTED + P_GONE) / 2 + 0.5 * P_GONE)


def test_region_perturbation_and_faithfulness_estimate_on_the_planted_map():
    x, y, a = planted_batch()
    model = Planted()
    # AOPC of the drops for k = 0..L regions (one token each): 0, then P - 0.5 ten times
    rp = RegionPerturbation(patch_size=1, score="aopc")
    assert np.allclose(rp(model, x, y, a), LENGTH * (P_PLANTED - P_GONE) / (LENGTH + 1))
    # one block per token, most relevant first: drops (P - 0.5, 0, ..., 0) against the
    # attributions (1, ramp values, descending): their Pearson correlation, by hand
    fe = FaithfulnessEstimate()
    got = fe(model, x, y, a)
    for i in range(3):
        att = np.sort(a[i].numpy() / a[i].abs().max().item())[::-1]
        drops = np.r_[P_PLANTED - P_GONE, np.zeros(LENGTH - 1)]
        assert got[i] == pytest.approx(np.corrcoef(att, drops)[0, 1])


def test_monotonicity_and_random_subset_metrics_run_on_ids():
    x, y, a = planted_batch()
    model = Planted()
    # inserting tokens back in ascending order from the mask-token input: p never falls
    assert np.allclose(Monotonicity()(model, x, y, a), 1.0)
    # five-token subsets: the drop is P - 0.5 exactly when the subset holds the planted
    # token, and then its attribution sum is above 1 (else at most 0.5): a correlation near 1
    fc = FaithfulnessCorrelation(nr_runs=50, subset_size=5)
    assert (fc(model, x, y, a) > 0.9).all()
    sn = SensitivityN(n_max_percentage=0.5, nr_subsets=10)
    assert np.isfinite(sn(model, x, y, a)).all()
    mc = MonotonicityCorrelation(nr_samples=2, perturb_baseline="black")
    assert "tokens" in mc.modalities
    assert np.isfinite(mc(model, x, y, a)).all()


@pytest.mark.parametrize("metric, why", [
    (MonotonicityCorrelation(nr_samples=2), "the default uniform draws are no ids"),
    (PixelFlipping(perturb_baseline="uniform"), "random values are no ids"),
    (Insertion(), "a blurred canvas of ids is no input"),
    (Infidelity(), "additive noise on ids"),
    (Infidelity(perturb_func="patches"), "I = x - x_k is a difference of ids"),
    (AverageDrop(threshold_percentile=50, perturb_baseline="uniform"),
     "random values are no ids"),
])
def test_metrics_whose_replacement_is_not_defined_for_ids_refuse_them(metric, why):
    x, y, a = planted_batch()
    assert "tokens" not in metric.modalities, why
    with pytest.raises(ValueError, match=f"{type(metric).__name__} does not apply to tokens"):
        metric(Planted(), x, y, a)


def test_confidence_metrics_on_ids_need_a_binary_map():
    x, y, a = planted_batch()
    model = Planted()
    # a continuous map would mix ids: refused with the option to pass
    for metric in (AverageDrop(), AverageIncrease(), AverageGain()):
        assert "tokens" not in metric.modalities
        with pytest.raises(ValueError, match="pass `threshold_percentile=`"):
            metric(model, x, y, a)
    # the 90th percentile of 10 values lies between the two largest: only the top token is
    # kept, every other one becomes the id 0 (the default baseline)
    keep_top = AverageDrop(threshold_percentile=90)
    assert "tokens" in keep_top.modalities
    assert np.allclose(keep_top(model, x, y, a), 0.0)  # the planted token kept: no drop
    drop = (P_PLANTED - P_GONE) / P_PLANTED
    assert np.allclose(keep_top(model, x, y, 1.0 - a), drop)  # the reversed map drops it
    # invert=True removes the top token instead
    assert np.allclose(AverageDrop(threshold_percentile=90, invert=True)(model, x, y, a), drop)
    assert np.allclose(AverageIncrease(threshold_percentile=90)(model, x, y, a), 0.0)
    # the mask token of the modality for a named baseline: the planted id keeps p unchanged
    # for the kept token, and every replaced token adds one more planted token
    named = AverageGain(threshold_percentile=90, perturb_baseline="black")
    got = named(model, x, y, a, modality=TokensModality(mask_token_id=PLANTED))
    p_all = 1 / (1 + math.exp(-W * LENGTH))
    assert np.allclose(got, (p_all - P_PLANTED) / (1 - P_PLANTED))
