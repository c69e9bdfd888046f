"""Faithfulness metrics: known answers on hand-computable models, semantics, invariances.

The workhorse is a linear model f(x) = <w, x> (class 0; class 1 is constant): with the zero
baseline the output change of removing a set S is exactly sum_{i in S} w_i x_i, so the
gradient x input attribution a = w * x predicts every removal exactly.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit import _rng
from evalkit.metrics import (
    IROF,
    ROAD,
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
    Sufficiency,
)
from evalkit.perturb import Baseline, CustomGrouping

warnings.filterwarnings("ignore", category=ek.UndefinedScoreWarning)


class LinearLogit(nn.Module):
    """logits = [<w, x> + b, 0]."""

    def __init__(self, w: torch.Tensor, b: float = 0.0) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone().double(), requires_grad=False)
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.w).flatten(1).sum(1) + self.b
        return torch.stack([s, torch.zeros_like(s)], 1)


def _data(n=5, c=1, h=4, w=4, seed=0, positive=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, c, h, w), generator=g, dtype=torch.float64) + 0.1
    wt = torch.randn((c, h, w), generator=g, dtype=torch.float64)
    if positive:
        wt = wt.abs() + 0.1
    y = torch.zeros(n, dtype=torch.long)
    return x, y, wt


def _manual_deletion_curve(x, wt, a, steps):
    """f(x with the first k groups (desc. a) zeroed) for 1-channel pixels."""
    n = x.shape[0]
    contrib = (x * wt).reshape(n, -1)
    order = torch.sort(a.reshape(n, -1), dim=1, descending=True, stable=True).indices
    sorted_c = contrib.gather(1, order)
    csum = torch.cat([torch.zeros(n, 1, dtype=torch.float64), sorted_c.cumsum(1)], 1)
    total = contrib.sum(1, keepdim=True)
    return total - csum[:, steps]


# ---------------------------------------------------------------------- curve metrics
def test_pixel_flipping_known_curve_and_auc():
    x, y, wt = _data()
    a = (x * wt) + 1e-3 * torch.arange(16.0, dtype=torch.float64).reshape(1, 1, 4, 4)
    model = LinearLogit(wt)
    m = PixelFlipping(features_in_step=3, perturb_baseline="zero", softmax=False,
                      normalise=False)
    scores = m(model, x, y, a)
    steps = torch.tensor([0, 3, 6, 9, 12, 15, 16])
    expected = _manual_deletion_curve(x, wt, a, steps)
    np.testing.assert_allclose(m.curves_, expected.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(m.curve_x_, steps.numpy() / 16)
    np.testing.assert_allclose(scores, np.trapezoid(expected.numpy(), steps.numpy() / 16, axis=1),
                               rtol=1e-10)


def test_deletion_equals_pixel_flipping_with_same_settings():
    x, y, wt = _data(seed=1)
    a = torch.randn_like(x)
    model = LinearLogit(wt)
    pf = PixelFlipping(features_in_step=4, perturb_baseline="zero")(model, x, y, a)
    de = Deletion(features_in_step=4)(model, x, y, a)
    np.testing.assert_array_equal(pf, de)
    # n_steps: 16 pixels in 4 steps of 4
    de2 = Deletion(n_steps=4)
    np.testing.assert_array_equal(de2(model, x, y, a), de)
    assert de2.curves_.shape == (5, 5)


def test_insertion_known_curve_zero_canvas():
    x, y, wt = _data(seed=2)
    a = x * wt
    model = LinearLogit(wt)
    m = Insertion(features_in_step=4, perturb_baseline="zero", softmax=False, normalise=False)
    m(model, x, y, a)
    contrib = (x * wt).reshape(5, -1)
    order = torch.sort(a.reshape(5, -1), dim=1, descending=True, stable=True).indices
    csum = torch.cat([torch.zeros(5, 1, dtype=torch.float64), contrib.gather(1, order).cumsum(1)],
                     1)
    np.testing.assert_allclose(m.curves_, csum[:, [0, 4, 8, 12, 16]].numpy(), atol=1e-10)
    assert m.curves_[:, 0] == pytest.approx(0.0)  # the canvas
    assert Insertion.higher_is_better and not Deletion.higher_is_better


def test_insertion_default_canvas_is_rise_blur():
    m = Insertion()
    b = m._plan.imputer
    assert isinstance(b, Baseline) and b.kind == "blur"
    assert (b.blur_sigma, b.blur_kernel_size) == (5.0, 11)


def test_insertion_blur_canvas_known_answer():
    """The canvas is a Gaussian blur (sigma 5, 11-pixel kernel, mirrored borders): the first
    point of the curve is f(blur(x)), the last f(x); with a linear model every point is
    f(canvas) + the inserted contributions of (x - canvas)."""
    from scipy.ndimage import gaussian_filter

    x, y, wt = _data(n=3, c=2, h=12, w=12, seed=32)
    model = LinearLogit(wt)
    a = torch.randn((3, 1, 12, 12), dtype=torch.float64)
    m = Insertion(features_in_step=36, softmax=False, normalise=False)
    m(model, x, y, a)
    canvas = torch.from_numpy(gaussian_filter(x.numpy(), sigma=(0, 0, 5, 5), mode="mirror",
                                              truncate=1.0))
    f = lambda z: (z * wt).flatten(1).sum(1)  # noqa: E731
    np.testing.assert_allclose(m.curves_[:, 0], f(canvas).numpy(), rtol=1e-10)
    np.testing.assert_allclose(m.curves_[:, -1], f(x).numpy(), rtol=1e-10)
    gain = ((x - canvas) * wt).sum(1).reshape(3, -1)  # per pixel
    order = torch.sort(a.reshape(3, -1), dim=1, descending=True, stable=True).indices
    csum = torch.cat([torch.zeros(3, 1, dtype=torch.float64), gain.gather(1, order).cumsum(1)],
                     1)
    expected = f(canvas).unsqueeze(1) + csum[:, [0, 36, 72, 108, 144]]
    np.testing.assert_allclose(m.curves_, expected.numpy(), rtol=1e-10, atol=1e-10)


def test_selectivity_known_curve():
    x, y, wt = _data(h=6, w=6, seed=33)
    model = LinearLogit(wt)
    a = torch.randn_like(x)
    m = Selectivity(patch_size=3, perturb_baseline="zero", softmax=False, normalise=False)
    s = m(model, x, y, a)
    # 4 patches of 3x3 (raster order), most relevant (largest attribution sum) first
    def patches(t):
        return t.reshape(5, 2, 3, 2, 3).permute(0, 1, 3, 2, 4).reshape(5, 4, 9).sum(2)

    contrib, att = patches(x * wt), patches(a)
    order = torch.sort(att, dim=1, descending=True, stable=True).indices
    total = contrib.sum(1, keepdim=True)
    curve = torch.cat([total, total - contrib.gather(1, order).cumsum(1)], 1)
    np.testing.assert_allclose(m.curves_, curve.numpy(), atol=1e-10)
    np.testing.assert_allclose(m.curve_x_, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(s, np.trapezoid(curve.numpy(), dx=0.25, axis=1), atol=1e-10)
    assert not Selectivity.higher_is_better


def test_region_perturbation_drops_and_aopc():
    x, y, wt = _data(h=4, w=4, seed=3)
    a = x * wt
    model = LinearLogit(wt)
    kw = dict(patch_size=2, regions_evaluation=3, perturb_baseline="zero", softmax=False,
              normalise=False)
    m = RegionPerturbation(**kw)
    auc = m(model, x, y, a)
    # patches of 2x2: contributions per patch, most relevant (largest sum) first
    pc = (x * wt).reshape(5, 2, 2, 2, 2).permute(0, 1, 3, 2, 4).reshape(5, 4, 4).sum(2)
    srt = torch.sort(pc, dim=1, descending=True, stable=True).values
    drops = torch.cat([torch.zeros(5, 1, dtype=torch.float64), srt.cumsum(1)[:, :3]], 1)
    np.testing.assert_allclose(m.curves_, drops.numpy(), atol=1e-10)
    np.testing.assert_allclose(m.curve_x_, [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(auc, np.trapezoid(drops.numpy(), [0, .25, .5, .75], axis=1))
    aopc = RegionPerturbation(score="aopc", **kw)(model, x, y, a)
    np.testing.assert_allclose(aopc, drops.numpy().mean(1), atol=1e-12)
    # direction: drops of a MoRF curve are higher-is-better (Quantus deviation C17); LeRF lower
    assert m.higher_is_better
    assert not RegionPerturbation(order="lerf").higher_is_better


def test_selectivity_is_pixel_flipping_on_patches():
    x, y, wt = _data(h=6, w=6, seed=4)
    a = torch.randn_like(x)
    model = LinearLogit(wt)
    s = Selectivity(patch_size=3, perturb_baseline="zero")(model, x, y, a)
    p = PixelFlipping(features_in_step=1, perturb_baseline="zero", grouping=3)(model, x, y, a)
    np.testing.assert_allclose(s, p)


def test_irof_known_curve_with_custom_segments():
    x, y, wt = _data(seed=5, positive=True)
    labels = torch.arange(16).reshape(4, 4) // 4  # 4 horizontal stripes
    a = x * wt
    model = LinearLogit(wt)
    m = IROF(perturb_baseline="zero", grouping=CustomGrouping(labels), softmax=False,
             normalise=False)
    score = m(model, x, y, a)
    contrib = (x * wt).reshape(5, 4, 4).sum(2)  # per stripe
    mean_a = a.reshape(5, 4, 4).mean(2)
    order = torch.sort(mean_a, dim=1, descending=True, stable=True).indices
    c_sorted = contrib.gather(1, order)
    total = contrib.sum(1, keepdim=True)
    curve = torch.cat([total, total - c_sorted.cumsum(1)], 1) / total
    np.testing.assert_allclose(m.curves_, curve.numpy(), atol=1e-10)
    np.testing.assert_allclose(score, 1 - np.trapezoid(curve.numpy(), np.linspace(0, 1, 5),
                                                        axis=1), atol=1e-10)


def test_irof_felzenszwalb_uses_scikit_image_segments():
    """IROF with Felzenszwalb superpixels is IROF over the segments scikit-image gives for the
    min-max scaled image (channels last), one image at a time."""
    from skimage.segmentation import felzenszwalb

    g = torch.Generator().manual_seed(3)
    x = torch.rand((3, 3, 12, 12), generator=g, dtype=torch.float64)
    x[:, :, :6] += 1.0  # two clearly different halves
    wt = torch.randn((3, 12, 12), generator=g, dtype=torch.float64)
    model, y, a = LinearLogit(wt), torch.zeros(3, dtype=torch.long), x * wt
    kw = {"scale": 5.0, "sigma": 0.3, "min_size": 4}
    m = IROF(segmentation_method="felzenszwalb", segmentation_kwargs=kw,
             perturb_baseline="zero", softmax=False)
    scores = m(model, x, y, a)
    for i in range(3):
        img = x[i].numpy()
        img = (img - img.min()) / (img.max() - img.min())
        labels = felzenszwalb(np.moveaxis(img, 0, -1), channel_axis=-1, **kw)
        assert len(np.unique(labels)) > 2
        ref = IROF(grouping=CustomGrouping(torch.from_numpy(labels)), perturb_baseline="zero",
                   softmax=False)
        np.testing.assert_allclose(scores[i], ref(model, x[i:i + 1], y[:1], a[i:i + 1])[0],
                                   rtol=1e-12)


def test_irof_superpixels_run_per_image_with_varying_segment_counts():
    g = torch.Generator().manual_seed(0)
    x = torch.rand((4, 3, 16, 16), generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 256, 3))
    y = torch.zeros(4, dtype=torch.long)
    a = torch.rand((4, 1, 16, 16), generator=g)
    m = IROF(segmentation_kwargs={"n_segments": 12})
    s = m(model, x, y, a)
    assert s.shape == (4,)
    assert np.isfinite(s).all()
    assert m.curves_.shape[0] == 4
    assert np.all(m.curves_[:, 0] == 1.0)


# ---------------------------------------------------------------------- monotonicity
def test_monotonicity_detects_monotone_and_non_monotone():
    x, y, wt = _data(seed=6, positive=True)
    model = LinearLogit(wt)
    a = x * wt  # all contributions positive: adding any feature raises f
    m = Monotonicity(perturb_baseline="zero", softmax=False)
    np.testing.assert_array_equal(m(model, x, y, a), np.ones(5))
    # curve: starts at the all-baseline input and ends at x, non-decreasing
    assert m.curves_[0, 0] == pytest.approx(0.0)
    np.testing.assert_allclose(m.curves_[:, -1], (x * wt).flatten(1).sum(1).numpy())
    # mixed-sign weights: restoring a negative contribution lowers f
    wt2 = wt.clone()
    wt2[0, 1, :] *= -1
    model2 = LinearLogit(wt2)
    np.testing.assert_array_equal(m(model2, x, y, x * wt2), np.zeros(5))


def test_monotonicity_restores_features_so_the_attribution_matters():
    """Quantus deviation C2: re-applying the baseline makes the result independent of the order."""
    x, y, wt = _data(n=1, seed=7, positive=True)
    # f = sum of contributions, clipped: with baseline 0 and order chosen so that the first
    # restored feature alone already exceeds... use a model with a negative contribution
    wt2 = wt.clone()
    wt2.view(-1)[0] = -5.0
    model = LinearLogit(wt2)
    m = Monotonicity(perturb_baseline="zero", softmax=False, abs=False, normalise=False)
    # order 1: the negative feature first (lowest attribution) -> its drop is in the first,
    # uncompared step, the rest only add: monotone
    a1 = torch.ones_like(x)
    a1.view(-1)[0] = -1.0
    assert m(model, x, y, a1)[0] == 1.0
    # order 2: the negative feature last -> the last step drops: not monotone
    a2 = torch.zeros_like(x)
    a2.view(-1)[0] = 1.0
    assert m(model, x, y, a2)[0] == 0.0


# ---------------------------------------------------------------------- correlations
@pytest.mark.parametrize("similarity", ["pearson", "spearman"])
def test_faithfulness_correlation_exact_for_linear_model(similarity):
    x, y, wt = _data(n=4, h=6, w=6, seed=8)
    model = LinearLogit(wt)
    a = x * wt
    m = FaithfulnessCorrelation(nr_runs=30, subset_size=5, perturb_baseline="zero", seed=3,
                                similarity_func=similarity)
    np.testing.assert_allclose(m(model, x, y, a), np.ones(4), atol=1e-10)
    np.testing.assert_allclose(m(model, x, y, -a), -np.ones(4), atol=1e-10)


def test_faithfulness_correlation_nan_reasons():
    x, y, wt = _data(n=3, h=6, w=6, seed=9)
    const_model = LinearLogit(torch.zeros_like(wt))
    m = FaithfulnessCorrelation(nr_runs=10, subset_size=4, seed=0)
    with pytest.warns(ek.UndefinedScoreWarning):
        s = m(const_model, x, y, torch.randn_like(x))
    assert np.isnan(s).all()
    assert all("did not change" in r for r in m.nan_reasons_.values())
    with pytest.warns(ek.UndefinedScoreWarning):
        s2 = m(LinearLogit(wt), x, y, torch.ones_like(x))
    assert np.isnan(s2).all()
    assert all("constant" in r for r in m.nan_reasons_.values())


@pytest.mark.parametrize("metric", [
    FaithfulnessCorrelation(nr_runs=10, subset_size=4, seed=0),
    FaithfulnessEstimate(features_in_step=4),
    MonotonicityCorrelation(nr_samples=3, features_in_step=4, seed=0),
    MonotonicityCorrelation(nr_samples=3, features_in_step=4, perturb_baseline="black"),
    SensitivityN(features_in_step=4, nr_subsets=5, seed=0),
    SensitivityN(features_in_step=4, subsets="morf"),
], ids=lambda m: repr(m)[:50])
def test_correlation_metrics_nan_with_reason_when_nothing_changes(metric):
    x, y, wt = _data(n=4, h=6, w=6, seed=30)
    with pytest.warns(ek.UndefinedScoreWarning):
        s = metric(LinearLogit(torch.zeros_like(wt)), x, y, torch.randn_like(x))
    assert np.isnan(s).all()
    assert all("did not change" in r for r in metric.nan_reasons_.values()), metric.nan_reasons_


@pytest.mark.parametrize("cls,kw", [
    (FaithfulnessEstimate, dict(features_in_step=4)),
    (FaithfulnessCorrelation, dict(nr_runs=12, subset_size=6, seed=2)),
    (MonotonicityCorrelation, dict(nr_samples=2, features_in_step=4, perturb_baseline="black")),
    (SensitivityN, dict(features_in_step=4, nr_subsets=6, seed=2)),
])
def test_callable_similarity_func_is_called_per_sample(cls, kw):
    """A callable f(a, b) -> float on two 1-D arrays (Quantus' signature) gives the same as the
    built-in correlation it implements."""
    from scipy.stats import pearsonr, spearmanr

    x, y, wt = _data(n=4, h=6, w=6, seed=31)
    model = LinearLogit(wt)
    a = torch.randn_like(x)
    builtin = cls(**kw)
    name = builtin.similarity_func
    fn = (lambda u, v: pearsonr(u, v)[0]) if name == "pearson" else (
        lambda u, v: spearmanr(u, v)[0])
    np.testing.assert_allclose(cls(similarity_func=fn, **kw)(model, x, y, a),
                               builtin(model, x, y, a), rtol=1e-10, atol=1e-12)


def test_faithfulness_correlation_subset_too_large():
    x, y, wt = _data(n=2)
    with pytest.raises(ValueError, match="subset_size"):
        FaithfulnessCorrelation(subset_size=17, seed=0)(LinearLogit(wt), x, y, x)


def test_faithfulness_estimate_exact_for_linear_model():
    x, y, wt = _data(n=4, h=6, w=6, seed=10)
    model = LinearLogit(wt)
    a = x * wt
    m = FaithfulnessEstimate(features_in_step=4, perturb_baseline="zero")
    np.testing.assert_allclose(m(model, x, y, a), np.ones(4), atol=1e-10)
    np.testing.assert_allclose(m(model, x, y, -a), -np.ones(4), atol=1e-10)


@pytest.mark.parametrize("subsets", ["random", "morf"])
def test_sensitivity_n_exact_for_linear_model(subsets):
    x, y, wt = _data(n=6, h=5, w=5, seed=11)
    model = LinearLogit(wt)
    a = x * wt
    m = SensitivityN(features_in_step=2, perturb_baseline="zero", subsets=subsets,
                     nr_subsets=8, seed=0, softmax=False, normalise=False)
    s = m(model, x, y, a)
    np.testing.assert_allclose(s, np.ones(6), atol=1e-10)
    assert m.curves_.shape == (6, int(0.8 * 25 // 2))
    np.testing.assert_allclose(m.curve_x_, np.arange(2, 22, 2) / 25)
    assert m.set_level == (subsets == "morf")


def test_sensitivity_n_morf_is_set_level_and_uses_cumulative_sums():
    """All samples get the set's value; the sum covers all n removed features (deviation C24)."""
    x, y, wt = _data(n=8, h=4, w=4, seed=12)
    model = LinearLogit(wt)
    a = torch.randn_like(x)
    m = SensitivityN(features_in_step=1, perturb_baseline="zero", subsets="morf",
                     normalise=False, softmax=False)
    s = m(model, x, y, a)
    assert np.all(s == s[0])
    # manual: for each n, Pearson across samples of (top-n attribution sum, output drop)
    order = torch.sort(a.reshape(8, -1), dim=1, descending=True, stable=True).indices
    att = a.reshape(8, -1).gather(1, order).cumsum(1)
    drop = (x * wt).reshape(8, -1).gather(1, order).cumsum(1)
    expected = [np.corrcoef(att[:, t].numpy(), drop[:, t].numpy())[0, 1]
                for t in range(int(0.8 * 16))]
    np.testing.assert_allclose(m.curves_[0], expected, atol=1e-10)
    assert s[0] == pytest.approx(np.mean(expected))


def test_sensitivity_n_morf_needs_three_samples():
    x, y, wt = _data(n=2)
    with pytest.warns(ek.UndefinedScoreWarning):
        s = SensitivityN(subsets="morf")(LinearLogit(wt), x, y, x)
    assert np.isnan(s).all()


def test_monotonicity_correlation_known_answer_deterministic_baseline():
    x, y, wt = _data(n=3, h=4, w=4, seed=13, positive=True)
    model = LinearLogit(wt, b=1.0)
    a = x * wt
    # v_k = (w_k x_k)^2 / f(x)^2 is increasing in a_k = w_k x_k > 0 -> Spearman 1
    m = MonotonicityCorrelation(nr_samples=7, perturb_baseline="zero", softmax=False,
                                eps=1e-5)
    np.testing.assert_allclose(m(model, x, y, a), np.ones(3), atol=1e-12)


def test_monotonicity_correlation_uniform_draws_per_element_and_seeded():
    x, y, wt = _data(n=3, h=4, w=4, seed=14)
    model = LinearLogit(wt)
    a = torch.randn_like(x)
    m = MonotonicityCorrelation(nr_samples=4, features_in_step=2, seed=5, softmax=False)
    s1 = m(model, x, y, a)
    s2 = m(model, x, y, a)
    np.testing.assert_array_equal(s1, s2)
    assert np.isfinite(s1).all()

    # what the model sees for one sample: each row replaces one block of 2 pixels with
    # U(0, 1) values, one draw per element (Quantus draws one value per sample, deviation C27), and
    # the nr_samples rows of a block draw differently
    seen = []

    class Spy(nn.Module):
        def forward(self, inp):
            seen.append(inp.detach().clone())
            return model(inp)

    m(Spy(), x[:1], y[:1], a[:1])
    rows = torch.cat(seen)
    changed = rows != x[:1].to(rows.dtype)  # the model runs in its own dtype
    perturbed = rows[changed.flatten(1).any(1)]
    assert perturbed.shape[0] == 4 * 8  # nr_samples x 8 blocks (the clean row is not here)
    per_row = changed.flatten(1)[changed.flatten(1).any(1)]
    assert (per_row.sum(1) <= 2 * x.shape[1]).all()
    values = [r.flatten()[c] for r, c in zip(perturbed, per_row, strict=True)]
    assert all(((v >= 0) & (v < 1)).all() for v in values)
    assert all(torch.unique(v).numel() == v.numel() for v in values if v.numel() > 1)
    first_block = [v for v, c in zip(values, per_row, strict=True)
                   if torch.equal(c, per_row[0])]
    assert len(first_block) == 4 and len({tuple(v.tolist()) for v in first_block}) == 4


# ---------------------------------------------------------------------- infidelity
def test_infidelity_zero_for_the_gradient_of_a_linear_model():
    x, y, wt = _data(n=4, c=2, h=4, w=4, seed=15)
    model = LinearLogit(wt)
    grad = wt.expand_as(x)
    for func in ("gaussian", "patches"):
        m = Infidelity(perturb_func=func, n_perturb_samples=6, seed=1, perturb_patch_sizes=[2],
                       perturb_baseline="black")
        np.testing.assert_allclose(m(model, x, y, grad), np.zeros(4), atol=1e-10)
        # a rescaled gradient only reaches zero with the optimal scaling
        assert np.all(m(model, x, y, 3 * grad) > 1e-6)
        ms = Infidelity(perturb_func=func, n_perturb_samples=6, seed=1,
                        perturb_patch_sizes=[2], optimal_scaling=True)
        np.testing.assert_allclose(ms(model, x, y, 3 * grad), np.zeros(4), atol=1e-10)


def test_infidelity_gaussian_matches_definition():
    x, y, wt = _data(n=3, c=1, h=4, w=4, seed=16)
    model = LinearLogit(wt)
    a = torch.randn_like(x)
    k, std = 5, 0.2
    m = Infidelity(n_perturb_samples=k, noise_std=std, seed=9)
    s = m(model, x, y, a)
    keys = _rng.sample_keys(x, m.seed_)
    noise = ek.metrics.faithfulness.infidelity_noise(keys, k, (1, 4, 4), std, torch.float64)
    dots = (a.unsqueeze(1) * noise).flatten(2).sum(2)
    deltas = (noise * wt).flatten(2).sum(2)  # f(x) - f(x - I) = <w, I>
    np.testing.assert_allclose(s, ((dots - deltas) ** 2).mean(1).numpy(), rtol=1e-10)


def test_infidelity_patches_any_size():
    """Quantus crashes when H, W are not multiples of the patch size (deviation C12)."""
    x, y, wt = _data(n=2, h=5, w=7, seed=17)
    s = Infidelity(perturb_func="patches", perturb_patch_sizes=[2, 3])(LinearLogit(wt), x, y,
                                                                       torch.randn_like(x))
    assert np.isfinite(s).all()


# ---------------------------------------------------------------------- ROAD
def test_road_confidence_with_zero_imputer_known_answer():
    x, y, wt = _data(n=3, h=4, w=4, seed=18)
    model = LinearLogit(wt)
    a = x * wt
    m = ROAD(percentages=[25, 50], imputer=Baseline("zero"), score="confidence", order="morf",
             softmax=False)
    s = m(model, x, y, a)
    curve = _manual_deletion_curve(x, wt, a, torch.tensor([4, 8]))
    change = curve - (x * wt).flatten(1).sum(1, keepdim=True)
    np.testing.assert_allclose(m.curves_, change.numpy(), atol=1e-10)
    np.testing.assert_allclose(s, change.mean(1).numpy(), atol=1e-10)
    assert not m.higher_is_better


def test_road_combined_lerf_minus_morf_over_two():
    x, y, wt = _data(n=3, h=6, w=6, seed=19)
    model = LinearLogit(wt)
    a = torch.randn_like(x)
    kw = dict(percentages=[20, 40, 60, 80], noise=0.01, score="confidence", seed=4)
    comb = ROAD(order="combined", **kw)
    s = comb(model, x, y, a)
    morf = ROAD(order="morf", **kw)(model, x, y, a)
    lerf = ROAD(order="lerf", **kw)(model, x, y, a)
    np.testing.assert_allclose(s, (lerf - morf) / 2, atol=1e-12)
    np.testing.assert_allclose(comb.curves_, (comb.lerf_curves_ - comb.morf_curves_) / 2)
    assert comb.higher_is_better


def test_road_rgb_with_one_channel_attribution():
    """Quantus raises IndexError here (deviation C13)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand((3, 3, 8, 8), generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 4))
    a = torch.rand((3, 1, 8, 8), generator=g)
    m = ROAD(percentages=[10, 50, 90], seed=1)
    s = m(model, x, torch.tensor([0, 1, 2]), a)
    assert s.shape == (3,)
    assert m.morf_curves_.shape == (3, 3)
    assert set(np.unique(m.morf_curves_)) <= {0.0, 1.0}


def test_road_rgb_one_channel_attribution_removes_whole_pixels_known_answer():
    """RGB inputs with a 1-channel map: pixels are ranked by the map and all three channels
    of a removed pixel go (Quantus crashes here, deviation C13). With the zero imputer on a linear
    model the change at p % is minus the removed pixels' contributions summed over channels."""
    x, y, wt = _data(n=3, c=3, h=4, w=4, seed=21)
    model = LinearLogit(wt)
    a = torch.randn((3, 1, 4, 4), generator=torch.Generator().manual_seed(5),
                    dtype=torch.float64)
    m = ROAD(percentages=[25, 50, 75], imputer=Baseline("zero"), score="confidence",
             order="morf", softmax=False)
    s = m(model, x, y, a)
    pixel_contrib = (x * wt).sum(1).reshape(3, -1)  # per pixel, all channels
    order = torch.sort(a.reshape(3, -1), dim=1, descending=True, stable=True).indices
    removed = torch.cat([torch.zeros(3, 1, dtype=torch.float64),
                         pixel_contrib.gather(1, order).cumsum(1)], 1)[:, [4, 8, 12]]
    np.testing.assert_allclose(m.curves_, -removed.numpy(), atol=1e-10)
    np.testing.assert_allclose(s, -removed.mean(1).numpy(), atol=1e-10)


def test_noise_free_imputation_of_rgb_pixels_is_per_channel():
    """With a 1-channel mask on RGB, every channel of a removed pixel is imputed from the same
    channel of its neighbours: the same as imputing each channel as its own 1-channel image."""
    from evalkit.perturb.imputation import NoisyLinearImputer

    g = torch.Generator().manual_seed(6)
    x = torch.rand((2, 3, 7, 9), generator=g, dtype=torch.float64)
    mask = torch.rand((2, 1, 7, 9), generator=g) < 0.6
    imp = NoisyLinearImputer(noise=0.0)
    rgb = imp.fill(x, mask)
    for ch in range(3):
        one = imp.fill(x[:, ch : ch + 1], mask)
        torch.testing.assert_close(rgb[:, ch : ch + 1], one, rtol=0, atol=1e-12)
    assert torch.equal(rgb[~mask.expand_as(x)], x[~mask.expand_as(x)])  # kept pixels kept


def test_road_accuracy_curve_reads_argmax():
    x, y, wt = _data(n=4, h=4, w=4, seed=20)
    model = LinearLogit(wt, b=0.0)
    a = torch.randn_like(x)
    m = ROAD(percentages=[50], order="morf", imputer=Baseline("zero"), softmax=False)
    m(model, x, y, a)
    kept = _manual_deletion_curve(x, wt, a, torch.tensor([8]))[:, 0]
    expected = (kept > 0).double()  # class 0 wins when its logit is > 0
    np.testing.assert_array_equal(m.morf_curves_[:, 0], expected.numpy())


# ---------------------------------------------------------------------- confidence change
class TwoLogits(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone().double(), requires_grad=False)

    def forward(self, x):
        s = (x * self.w).flatten(1).sum(1)
        return torch.stack([s, -s], 1)


def test_confidence_metrics_known_answers():
    x, y, wt = _data(n=6, h=4, w=4, seed=21)
    model = TwoLogits(wt)
    a = torch.randn_like(x)
    e = (a - a.flatten(1).amin(1).reshape(-1, 1, 1, 1))
    e = e / e.flatten(1).amax(1).reshape(-1, 1, 1, 1)
    p = lambda z: torch.softmax(model(z), 1)[:, 0]  # noqa: E731
    y0, y1 = p(x), p(x * e)
    drop = AverageDrop()(model, x, y, a)
    np.testing.assert_allclose(drop, ((y0 - y1).clamp_min(0) / y0).numpy(), rtol=1e-10)
    absdrop = AverageDrop(relative=False)(model, x, y, a)
    np.testing.assert_allclose(absdrop, (y0 - y1).clamp_min(0).numpy(), rtol=1e-10)
    inc = AverageIncrease()(model, x, y, a)
    np.testing.assert_array_equal(inc, (y1 > y0).double().numpy())
    gain = AverageGain()(model, x, y, a)
    np.testing.assert_allclose(gain, ((y1 - y0).clamp_min(0) / (1 - y0)).numpy(), rtol=1e-10)
    # thresholded + inverted: the top 25 % removed (the CAM tutorial's example)
    t = torch.quantile(e.flatten(1), 0.75, dim=1).reshape(-1, 1, 1, 1)
    keep = (e < t).double()
    y2 = p(x * keep)
    d2 = AverageDrop(threshold_percentile=75, invert=True)(model, x, y, a)
    np.testing.assert_allclose(d2, ((y0 - y2).clamp_min(0) / y0).numpy(), rtol=1e-10)
    assert AverageDrop(invert=True).higher_is_better
    assert not AverageDrop().higher_is_better


def test_confidence_metrics_baseline_and_constant_map():
    x, y, wt = _data(n=3, h=4, w=4, seed=22)
    model = TwoLogits(wt)
    a = torch.randn_like(x)
    e = (a - a.flatten(1).amin(1).reshape(-1, 1, 1, 1))
    e = e / e.flatten(1).amax(1).reshape(-1, 1, 1, 1)
    b = 0.5
    p = lambda z: torch.softmax(model(z), 1)[:, 0]  # noqa: E731
    inc = AverageIncrease(perturb_baseline=b)(model, x, y, a)
    np.testing.assert_array_equal(inc, (p(b + e * (x - b)) > p(x)).double().numpy())
    a2 = a.clone()
    a2[1] = 3.0
    m = AverageDrop()
    with pytest.warns(ek.UndefinedScoreWarning):
        s = m(model, x, y, a2)
    assert np.isnan(s[1]) and np.isfinite(s[[0, 2]]).all()
    assert "constant" in m.nan_reasons_[1]


# ---------------------------------------------------------------------- sufficiency
class FixedPred(nn.Module):
    """Predicts the class stored in the first pixel of each input."""

    def forward(self, x):
        c = x[:, 0, 0, 0].long()
        return torch.nn.functional.one_hot(c, 3).double()


def test_sufficiency_known_answer_and_set_level():
    x = torch.zeros((5, 1, 2, 2), dtype=torch.float64)
    x[:, 0, 0, 0] = torch.tensor([0, 0, 1, 1, 2], dtype=torch.float64)
    # two tight clusters of explanations: {0, 1, 2} and {3, 4}
    a = torch.tensor([[0, 0, 0, 0], [0.1, 0, 0, 0], [0, 0.1, 0, 0], [5, 5, 5, 5],
                      [5.1, 5, 5, 5]], dtype=torch.float64).reshape(5, 1, 2, 2)
    y = torch.zeros(5, dtype=torch.long)
    m = Sufficiency(threshold=0.1, distance_func="euclidean", abs=False, normalise=False)
    s = m(FixedPred(), x, y, a)
    # preds 0,0,1 | 1,2 ; sample 0: neighbours 1 (same), 2 (diff) -> 1/2
    np.testing.assert_allclose(s, [0.5, 0.5, 0.0, 0.0, 0.0])
    assert Sufficiency.set_level
    # every scipy distance works (Quantus deviation C9) and no neighbours -> NaN with a reason
    m2 = Sufficiency(threshold=0.0, distance_func="cityblock", abs=False, normalise=False)
    with pytest.warns(ek.UndefinedScoreWarning):
        s2 = m2(FixedPred(), x, y, a)
    assert np.isnan(s2).all() and "within the threshold" in m2.nan_reasons_[0]


def test_sufficiency_seuclidean_survives_zero_variance_features():
    g = torch.Generator().manual_seed(0)
    a = torch.rand((6, 1, 3, 3), generator=g, dtype=torch.float64)
    a[:, 0, 0, 0] = 1.0  # constant feature: Quantus gives NaN distances -> all zeros
    x = torch.zeros((6, 1, 3, 3), dtype=torch.float64)
    x[:, 0, 0, 0] = torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.float64)
    s = Sufficiency(threshold=0.9, normalise=False)(FixedPred(), x, torch.zeros(6).long(), a)
    assert np.isfinite(s).all()


@pytest.mark.parametrize("name", ["seuclidean", "euclidean", "sqeuclidean", "cityblock"])
@pytest.mark.parametrize("normalise_distances", [True, False])
def test_sufficiency_distances_equal_scipy(name, normalise_distances):
    """The torch route of the Euclidean distances gives scipy's cdist (to 1e-10, exactly 0
    on the diagonal); the other names go through scipy itself."""
    from scipy.spatial.distance import cdist

    g = torch.Generator().manual_seed(1)
    a = torch.rand((9, 20), generator=g, dtype=torch.float64)
    a[:, 3] = 0.5  # a constant feature (unit variance for seuclidean)
    a[4] = a[2]  # two identical maps: distance 0 off the diagonal
    m = Sufficiency(distance_func=name, normalise_distances=normalise_distances)
    an = a.numpy()
    if name == "seuclidean":
        var = an.var(axis=0, ddof=1)
        want = cdist(an, an, name, V=np.where(var > 0, var, 1.0))
    else:
        want = cdist(an, an, name)
    if normalise_distances:
        want = want / want.max()
    for given in (a, an):
        got = np.asarray(torch.as_tensor(m.distances(given)))
        np.testing.assert_allclose(got, want, atol=1e-10, rtol=0)
        assert (np.diag(got) == 0).all()
    assert isinstance(m.distances(an), np.ndarray)


# ---------------------------------------------------------------------- invariances
def _stochastic_metrics():
    return [
        FaithfulnessCorrelation(nr_runs=8, subset_size=6, seed=11),
        SensitivityN(features_in_step=4, nr_subsets=5, seed=11),
        MonotonicityCorrelation(nr_samples=3, features_in_step=6, seed=11),
        Infidelity(n_perturb_samples=4, seed=11),
        ROAD(percentages=[20, 60], seed=11, score="confidence"),
        RegionPerturbation(patch_size=3, order="random", seed=11),
        PixelFlipping(features_in_step=5, perturb_baseline="uniform", seed=11),
    ]


@pytest.mark.parametrize("metric", _stochastic_metrics(), ids=lambda m: type(m).__name__)
def test_per_sample_invariance_to_batch_size_order_and_company(metric):
    g = torch.Generator().manual_seed(3)
    x = torch.rand((7, 3, 6, 6), generator=g)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                          nn.Linear(144, 3))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    a = torch.randn((7, 1, 6, 6), generator=g)
    full = metric(model, x, y, a)
    small = metric(model, x, y, a, batch_size=3)
    np.testing.assert_allclose(small, full, rtol=1e-5, atol=1e-6)
    perm = torch.tensor([6, 2, 4, 0, 1, 5, 3])
    permuted = metric(model, x[perm], y[perm], a[perm])
    np.testing.assert_allclose(permuted, full[perm.numpy()], rtol=1e-5, atol=1e-6)
    alone = metric(model, x[4:5], y[4:5], a[4:5])
    np.testing.assert_allclose(alone, full[4:5], rtol=1e-5, atol=1e-6)
    other_seed = metric.clone().set_params(seed=12)(model, x, y, a)
    assert not np.allclose(other_seed, full)


def test_numpy_inputs_and_quantus_keywords():
    x, y, wt = _data(n=3, seed=23)
    model = LinearLogit(wt)
    a = torch.randn_like(x)
    m = PixelFlipping(features_in_step=4, perturb_baseline="zero")
    s1 = m(model, x.numpy(), y.numpy(), a.numpy())
    s2 = m(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy())
    np.testing.assert_array_equal(s1, s2)


def test_registry_and_metadata():
    names = ["FaithfulnessCorrelation", "FaithfulnessEstimate", "PixelFlipping",
             "RegionPerturbation", "Selectivity", "SensitivityN", "IROF", "Monotonicity",
             "MonotonicityCorrelation", "Infidelity", "Sufficiency", "ROAD", "Deletion",
             "Insertion", "AverageDrop", "AverageIncrease", "AverageGain"]
    frame = ek.metrics.list_metrics("faithfulness")
    assert set(names) <= set(frame["name"])
    for n in names:
        cls = ek.metrics.get(n)
        assert cls.family == "faithfulness"
        assert cls.paper
        m = cls()
        assert repr(m).startswith(n)
        assert type(m.clone()) is cls
    rows = frame.set_index("name")
    assert rows.loc["Sufficiency", "set_level"]
    assert not rows.loc["PixelFlipping", "higher_is_better"]
    assert rows.loc["RegionPerturbation", "higher_is_better"]
    assert not rows.loc["Infidelity", "higher_is_better"]


@pytest.mark.parametrize("bad", [
    lambda: FaithfulnessCorrelation(nr_runs=1),
    lambda: RegionPerturbation(order="up"),
    lambda: SensitivityN(subsets="all"),
    lambda: ROAD(percentages=[120]),
    lambda: ROAD(order="both"),
    lambda: Infidelity(perturb_func="square"),
    lambda: AverageDrop(threshold_percentile=101),
    lambda: FaithfulnessEstimate(similarity_func="kendall"),
    lambda: PixelFlipping(features_in_step=0),
])
def test_parameter_validation(bad):
    with pytest.raises((ValueError, TypeError)):
        bad()


def test_caller_arrays_are_not_mutated():
    x, y, wt = _data(n=3, seed=24)
    a = torch.randn_like(x)
    xc, ac = x.clone(), a.clone()
    xn, an = x.numpy().copy(), a.numpy().copy()
    model = LinearLogit(wt)
    for m in [PixelFlipping(features_in_step=4), ROAD(percentages=[50], seed=0),
              Infidelity(seed=0), AverageDrop(), FaithfulnessCorrelation(nr_runs=4,
                                                                         subset_size=3, seed=0)]:
        m(model, x, y, a)
        m(model, xn, y.numpy(), an)
    assert torch.equal(x, xc) and torch.equal(a, ac)
    np.testing.assert_array_equal(xn, x.numpy())
    np.testing.assert_array_equal(an, a.numpy())
    assert math.isfinite(float(model.w.sum()))


def _sufficiency_from_whole_matrix(m, model, x, a, threshold):
    """Sufficiency by definition from the whole distance matrix: the share of each sample's
    neighbours (distance <= threshold, itself excluded) with its predicted class; NaN without
    neighbours."""
    near = torch.as_tensor(m.distances(a)) <= threshold
    near.fill_diagonal_(False)
    with torch.no_grad():
        pred = model(x).argmax(1)
    same = pred.unsqueeze(0) == pred.unsqueeze(1)
    count = near.sum(1)
    want = ((near & same).sum(1).double() / count.clamp_min(1)).numpy()
    want[(count == 0).numpy()] = np.nan
    return want


@pytest.mark.parametrize("name", ["seuclidean", "euclidean", "sqeuclidean"])
@pytest.mark.parametrize("normalise_distances", [True, False])
def test_sufficiency_blocked_counts_equal_the_distance_matrix(name, normalise_distances):
    """The Euclidean fast path (row blocks, one comparison of d^2 per pair, neighbours counted
    per predicted class) gives the scores of the whole distance matrix bit for bit: several
    blocks, identical maps (distance 0 off the diagonal) and distances on the threshold."""
    g = torch.Generator().manual_seed(3)
    n = 700  # several row blocks
    a = torch.randint(0, 3, (n, 8), generator=g).to(torch.float64)
    a[:50] = a[0]
    x = torch.randn((n, 8), generator=g)
    model = nn.Linear(8, 3)
    y = torch.zeros(n, dtype=torch.long)
    m = Sufficiency(threshold=0.5, distance_func=name, normalise_distances=normalise_distances,
                    abs=False, normalise=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = m(model, x, y, a)
    want = _sufficiency_from_whole_matrix(m, model, x, a, 0.5)
    assert np.array_equal(got, want, equal_nan=True)


@pytest.mark.parametrize("name", ["seuclidean", "euclidean", "sqeuclidean"])
@pytest.mark.parametrize("threshold", [0.5, 1e-9, 0.0])
@pytest.mark.parametrize("by_matrix_product", [True, False])
def test_sufficiency_upper_triangle_counts_equal_the_distance_matrix(name, threshold,
                                                                     by_matrix_product,
                                                                     monkeypatch):
    """The fast path finishes and tests the pairs i <= j only and skips the scan for
    cancelling pairs where it provably changes nothing: near-identical float maps (whose
    matrix-product d^2 cancels), tiny and zero thresholds (the scan then runs), several
    blocks, neighbours counted per class by a matrix product or pair by pair; the same scores
    bit for bit as the whole distance matrix and as the path that always scans."""
    from evalkit.metrics.faithfulness import sufficiency as module

    if not by_matrix_product:
        monkeypatch.setattr(module, "_COUNTED_CLASSES", 1)
    g = torch.Generator().manual_seed(5)
    n = 600
    a = torch.rand((n, 12), generator=g, dtype=torch.float64)
    a[100:140] = a[7] + 1e-9 * torch.rand((40, 12), generator=g, dtype=torch.float64)
    a[200:220] = a[9]
    x = torch.randn((n, 12), generator=g)
    y = torch.zeros(n, dtype=torch.long)
    model = nn.Linear(12, 3)
    with torch.no_grad():
        model.weight.copy_(torch.randn((3, 12), generator=g))
    m = Sufficiency(threshold=threshold, distance_func=name, abs=False, normalise=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = m(model, x, y, a)
        with monkeypatch.context() as always_scan:
            always_scan.setattr(module, "_CANCEL_MARGIN", math.inf)
            scanned = m(model, x, y, a)
    want = _sufficiency_from_whole_matrix(m, model, x, a, threshold)
    assert np.array_equal(got, want, equal_nan=True)
    assert np.array_equal(scanned, want, equal_nan=True)


def test_sufficiency_blocks_wider_than_the_block_budget(monkeypatch):
    """Where N exceeds the block budget, a block is one row of N - start pairs: its buffers
    hold it (a small budget stands in for 2^17 samples)."""
    from evalkit.metrics.faithfulness import sufficiency as module

    g = torch.Generator().manual_seed(2)
    n = 300
    a = torch.rand((n, 5), generator=g, dtype=torch.float64)
    x = torch.randn((n, 5), generator=g)
    y = torch.zeros(n, dtype=torch.long)
    model = nn.Linear(5, 3)
    m = Sufficiency(threshold=0.3, abs=False, normalise=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = m(model, x, y, a)
        monkeypatch.setattr(module, "_BLOCK_ELEMENTS", 256)
        got = m(model, x, y, a)
    assert np.array_equal(got, want, equal_nan=True)
