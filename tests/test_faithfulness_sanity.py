"""Sanity: on a model whose output depends only on a known region, an attribution concentrated
on that region scores better than a random attribution, for every faithfulness metric.

The model sees two 4x4 regions of a 3x12x12 image, A and B: logit_0 = 2 (mean(x_A) - mean(x_B)),
logit_1 = -logit_0; nothing else matters. Class-0 images have a bright A and a dark B, class-1
images the reverse; the background is darker than both (so imputing a region from its
surroundings removes its evidence). The good attribution is a 1-channel map (on RGB inputs)
concentrated on the region: gradient x input of the predicted class's logit (averaged over
channels), i.e. +A -B (times the pixel values) for class 0 and -A +B for class 1, small noise
elsewhere. The random attribution is i.i.d. N(0, 1).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit import metrics as M

warnings.filterwarnings("ignore", category=ek.UndefinedScoreWarning)

A = (slice(1, 5), slice(1, 5))
B = (slice(7, 11), slice(7, 11))


class RegionModel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 2.0 * (x[:, :, A[0], A[1]].mean((1, 2, 3)) - x[:, :, B[0], B[1]].mean((1, 2, 3)))
        return torch.stack([s, -s], 1)


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    n = 12
    x = 0.1 * torch.rand((n, 3, 12, 12), generator=g)
    cls = torch.arange(n) % 2
    bright = 0.7 + 0.3 * torch.rand((n, 3, 4, 4), generator=g)
    dark = 0.2 + 0.1 * torch.rand((n, 3, 4, 4), generator=g)
    c0 = (cls == 0).reshape(-1, 1, 1, 1)
    x[:, :, A[0], A[1]] = torch.where(c0, bright, dark)
    x[:, :, B[0], B[1]] = torch.where(c0, dark, bright)
    model = RegionModel()
    with torch.no_grad():
        y = model(x).argmax(1)
    assert torch.equal(y, cls)
    sign = torch.where(cls == 0, 1.0, -1.0).reshape(-1, 1, 1, 1)
    good = 0.02 * torch.randn((n, 1, 12, 12), generator=g)
    xm = x.mean(1, keepdim=True)  # gradient x input of logit_0, up to the factor 2/16
    good[:, :, A[0], A[1]] = sign * xm[:, :, A[0], A[1]]
    good[:, :, B[0], B[1]] = -sign * xm[:, :, B[0], B[1]]
    rand = torch.randn((n, 1, 12, 12), generator=g)
    return model, x, y, good, rand


CASES = [
    M.PixelFlipping(features_in_step=8),
    M.Deletion(n_steps=18),
    M.Insertion(n_steps=18),
    M.RegionPerturbation(patch_size=2, regions_evaluation=16),
    M.Selectivity(patch_size=2),
    M.IROF(segmentation_kwargs={"n_segments": 25}),
    M.SensitivityN(features_in_step=8, nr_subsets=20, seed=0),
    # set-level: the correlation across samples needs comparable (unnormalised) magnitudes
    M.SensitivityN(features_in_step=8, subsets="morf", normalise=False, softmax=False),
    M.FaithfulnessCorrelation(nr_runs=50, subset_size=20, seed=0),
    M.FaithfulnessEstimate(features_in_step=4),
    M.MonotonicityCorrelation(nr_samples=4, features_in_step=8, seed=0),
    M.Infidelity(seed=0),
    M.Infidelity(optimal_scaling=True, seed=0),
    M.Infidelity(perturb_func="patches", perturb_patch_sizes=[2], optimal_scaling=True),
    M.ROAD(percentages=[20, 40, 60, 80], score="confidence", seed=0),
    M.ROAD(percentages=[20, 40, 60, 80], seed=0),
    M.AverageDrop(),
    M.AverageIncrease(),
    M.AverageGain(),
    M.Sufficiency(threshold=0.92, abs=False, normalise=False),
    # issue 19: the text metrics on pixels
    M.AOPC(features_in_step=8),
    M.ERASERComprehensiveness(),
    M.ERASERSufficiency(),
    M.SoftComprehensiveness(nr_samples=4, seed=0),
    M.SoftSufficiency(nr_samples=4, seed=0),
    M.PGI(nr_samples=20, perturb_std=0.3, seed=0),
    M.PGU(nr_samples=20, perturb_std=0.3, seed=0),
    # issue 23
    M.LogOdds(),
    M.MinimalSubsetDeletion(features_in_step=4),
    M.MinimalSubsetInsertion(features_in_step=4),
    M.SIC(blur_kernel_size=5, blur_sigma=2.0),
    M.AIC(perturb_baseline="black"),

    # issue 23: post-Quantus faithfulness (NAOPC on 4x4 patches: 9 features, beam bounds)
    M.ABPC(features_in_step=8),
    M.SRG(features_in_step=8),
    M.NAOPC(grouping=4, beam_width=3),
    # F-Fidelity's stochastic removal on the model as given (no fine-tuning)
    M.FFidelity(fine_tuned_model="none", alpha=0.2, n_draws=4, quantity="score", seed=0),
    M.FFidelity(sign="-", fine_tuned_model="none", alpha=0.2, n_draws=4, quantity="score",
                seed=0),
]


@pytest.mark.parametrize("metric", CASES, ids=lambda m: repr(m)[:60])
def test_concentrated_attribution_beats_random(metric, data):
    model, x, y, good, rand = data
    s_good = np.nanmean(metric(model, x, y, good))
    s_rand = np.nanmean(metric(model, x, y, rand))
    assert np.isfinite(s_good) and np.isfinite(s_rand)
    if metric.higher_is_better:
        assert s_good > s_rand, (s_good, s_rand)
    else:
        assert s_good < s_rand, (s_good, s_rand)


def test_monotonicity_on_the_region_model(data):
    """Monotonicity (features added back onto the baseline in ascending order; the first
    addition is not compared, as in AIX360) with signed attributions and one region per step:
    the concentrated map restores the whole 'against' region (lowest attribution) in the first,
    uncompared step, then background (no effect), then the 'for' region (each step raises the
    score): monotone. A random map mixes the regions' pixels over many steps: not monotone."""
    model, x, y, good, rand = data
    m = M.Monotonicity(features_in_step=16, abs=False)
    s_good = m(model, x, y, good)
    s_rand = m(model, x, y, rand)
    np.testing.assert_array_equal(s_good, np.ones(len(x)))
    assert np.mean(s_good) > np.mean(s_rand)
    # with the default abs=True both regions rank high and interleave: neither map is monotone
    # (the docstring says so: the signless order cannot reward a faithful map on signed
    # evidence), and the concentrated one must at least not lose
    m_abs = M.Monotonicity(features_in_step=8)
    assert np.nanmean(m_abs(model, x, y, good)) >= np.nanmean(m_abs(model, x, y, rand))
    # and on a model with positive evidence only, every order is monotone: nothing to tell apart
    class Positive(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = 4.0 * x[:, :, A[0], A[1]].mean((1, 2, 3))
            return torch.stack([s, -s], 1)

    x_pos = x.clone()
    x_pos[:, :, A[0], A[1]] = x[:, :, A[0], A[1]].clamp_min(0.7)
    y_pos = torch.zeros(len(x), dtype=torch.long)
    np.testing.assert_array_equal(m_abs(Positive(), x_pos, y_pos, rand), np.ones(len(x)))


def test_every_faithfulness_metric_has_a_sanity_case():
    covered = {type(m).__name__ for m in CASES} | {"Monotonicity"}
    # the region model reads images; series-only metrics (AUCSE) have their sanity case (a
    # model that reads one window) in tests/test_series.py
    frame = ek.metrics.list_metrics("faithfulness")
    assert covered == {n for n, mods in zip(frame["name"], frame["modalities"], strict=True)
                       if "image" in mods}
