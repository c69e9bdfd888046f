"""Cross-checks of the faithfulness metrics against the released quantus 0.6.0 (and captum).

Inputs are 1-channel 8x8 images and a small conv net, so that Quantus' channel-value features
coincide with pixels. Quantus normalises attributions over the whole batch (deviation C1); that does
not change orderings, rank correlations or scale-free quantities, and ``normalise=False`` is
used where it would. Where the definitions differ (the area under the curve, the start of the
curve), the raw curves are compared. Tolerance: 1e-5 (float32 model outputs, different batch
compositions). Where Quantus is buggy (docs/migrating-quantus.md), the test shows our behaviour.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit.metrics import (
    IROF,
    ROAD,
    FaithfulnessCorrelation,
    FaithfulnessEstimate,
    Infidelity,
    Monotonicity,
    MonotonicityCorrelation,
    PixelFlipping,
    RegionPerturbation,
    Selectivity,
    SensitivityN,
    Sufficiency,
)
from evalkit.perturb import CustomGrouping

N = 6
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                              nn.Linear(4 * 64, 5)).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand((N, 1, 8, 8), generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    a = torch.randn((N, 1, 8, 8), generator=g)
    return model, x.numpy(), y.numpy(), a.numpy()


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _q(quantus, cls, setup, call_kw=None, **kw):
    model, x, y, a = setup
    metric = cls(disable_warnings=True, **kw)
    return metric(model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu",
                  batch_size=64, **(call_kw or {}))


def test_pixel_flipping_curves(quantus, setup):
    model, x, y, a = setup
    q = np.array(_q(quantus, quantus.PixelFlipping, setup, features_in_step=4))
    ours = PixelFlipping(features_in_step=4)
    ours(model, x, y, a)
    np.testing.assert_allclose(ours.curves_[:, 1:], q, **TOL)


def test_region_perturbation_curves(quantus, setup):
    model, x, y, a = setup
    for order in ("morf", "lerf"):
        q = np.array(_q(quantus, quantus.RegionPerturbation, setup, patch_size=2,
                        regions_evaluation=10, order=order))
        ours = RegionPerturbation(patch_size=2, regions_evaluation=10, order=order)
        ours(model, x, y, a)
        np.testing.assert_allclose(ours.curves_[:, 1:], q, **TOL)


def test_region_perturbation_non_multiple_patch_size(quantus, setup):
    """8x8 with 3x3 patches: Quantus pads; the border patches are smaller here."""
    model, x, y, a = setup
    q = np.array(_q(quantus, quantus.RegionPerturbation, setup, patch_size=3,
                    regions_evaluation=9))
    ours = RegionPerturbation(patch_size=3, regions_evaluation=9)
    ours(model, x, y, a)
    np.testing.assert_allclose(ours.curves_[:, 1:], q, **TOL)


def test_selectivity_curves(quantus, setup):
    model, x, y, a = setup
    q = np.array(_q(quantus, quantus.Selectivity, setup, patch_size=2))
    ours = Selectivity(patch_size=2)
    ours(model, x, y, a)
    np.testing.assert_allclose(ours.curves_[:, 1:], q, **TOL)


def test_faithfulness_estimate(quantus, setup):
    model, x, y, a = setup
    q = np.array(_q(quantus, quantus.FaithfulnessEstimate, setup, features_in_step=4))
    ours = FaithfulnessEstimate(features_in_step=4)(model, x, y, a)
    np.testing.assert_allclose(ours, q, **TOL)


def test_faithfulness_correlation_with_the_same_subsets(quantus, setup, monkeypatch):
    """Quantus draws from NumPy's global RNG; feed it our subsets (run-major, then sample)."""
    model, x, y, a = setup
    ours_metric = FaithfulnessCorrelation(nr_runs=12, subset_size=10, seed=5)
    ours = ours_metric(model, x, y, a)
    subsets = ours_metric.subsets_  # (N, R, s)
    feed = iter([subsets[b, r] for r in range(12) for b in range(N)])

    def fake_choice(n, size, replace=False):
        assert (n, size, replace) == (64, 10, False)
        return next(feed)

    monkeypatch.setattr(np.random, "choice", fake_choice)
    q = np.array(_q(quantus, quantus.FaithfulnessCorrelation, setup, nr_runs=12, subset_size=10,
                    return_aggregate=False))
    np.testing.assert_allclose(ours, q, **TOL)


def test_monotonicity_correlation_deterministic_baseline(quantus, setup):
    model, x, y, a = setup
    q = np.array(_q(quantus, quantus.MonotonicityCorrelation, setup, nr_samples=2,
                    features_in_step=4, perturb_baseline="black"))
    ours = MonotonicityCorrelation(nr_samples=2, features_in_step=4,
                                   perturb_baseline="black")(model, x, y, a)
    np.testing.assert_allclose(ours, q, **TOL)


def test_infidelity_patches(quantus, setup):
    model, x, y, a = setup
    q = np.array(_q(quantus, quantus.Infidelity, setup, perturb_patch_sizes=[2, 4],
                    n_perturb_samples=2))
    ours = Infidelity(perturb_func="patches", perturb_patch_sizes=[2, 4])(model, x, y, a)
    np.testing.assert_allclose(ours, q, rtol=1e-5, atol=1e-6)


def test_infidelity_gaussian_matches_captum(setup):
    from captum.metrics import infidelity

    model, x, y, a = setup
    k, std = 7, 0.1
    for scaling in (False, True):
        m = Infidelity(n_perturb_samples=k, noise_std=std, seed=3, optimal_scaling=scaling)
        ours = m(model, x, y, a)
        xt = torch.from_numpy(x)
        keys = ek._rng.sample_keys(xt, m.seed_)
        noise = ek.metrics.faithfulness.infidelity_noise(keys, k, (1, 8, 8), std)
        flat = noise.reshape(N * k, 1, 8, 8)

        def perturb(inputs, flat=flat):
            assert inputs.shape[0] == flat.shape[0]
            return flat, inputs - flat

        ref = infidelity(model, perturb, xt, torch.from_numpy(a).float(),
                         target=torch.from_numpy(y), n_perturb_samples=k, normalize=scaling)
        np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-5, atol=1e-6)


def test_irof_with_quantus_segments(quantus, setup):
    """Quantus' score is G - trapz(curve[1:], dx=1) with shorter curves zero-padded."""
    from quantus.helpers.utils import get_superpixel_segments

    model, x, y, a = setup
    segs = np.stack([get_superpixel_segments(np.moveaxis(xi, 0, -1).astype("double"), "slic")
                     for xi in x])[:, None]
    q = np.array(_q(quantus, quantus.IROF, setup, perturb_baseline=0.0,
                    return_aggregate=False))
    m = IROF(perturb_baseline=0.0, grouping=CustomGrouping(segs))
    m(model, x, y, a)
    g = np.array([len(np.unique(s)) for s in segs])
    g_max = g.max()
    recon = []
    for i in range(N):
        pts = np.zeros(g_max)
        pts[: g[i]] = m.curves_[i, 1 : g[i] + 1]
        recon.append(g[i] - np.trapezoid(pts))
    np.testing.assert_allclose(recon, q, **TOL)


def test_road_morf_accuracy_without_noise(quantus, setup):
    model, x, y, a = setup
    pct = [5, 20, 40, 60, 80, 95]
    q = _q(quantus, quantus.ROAD, setup, percentages=pct, noise=0.0)
    m = ROAD(percentages=pct, noise=0.0, order="morf")
    m(model, x, y, a)
    np.testing.assert_allclose(m.morf_curves_.mean(0), [q[p] for p in pct], atol=1e-12)


def test_road_imputation_equals_quantus(quantus):
    from quantus.functions.perturb_func import noisy_linear_imputation

    from evalkit.perturb.imputation import linear_imputation

    rng = np.random.default_rng(0)
    for c, h, w in [(1, 8, 8), (3, 7, 9)]:
        xx = rng.random((4, c, h, w))
        masks = rng.random((4, h, w)) < np.array([0.05, 0.3, 0.7, 0.99])[:, None, None]
        ours = linear_imputation(torch.from_numpy(xx), torch.from_numpy(masks)).numpy()
        for i in range(4):
            ref = noisy_linear_imputation(xx[i], np.flatnonzero(masks[i]), noise=0.0)
            np.testing.assert_allclose(ours[i], ref, rtol=1e-10, atol=1e-12)


def test_road_quantus_crashes_on_rgb_ours_works(quantus):
    """Deviation C13: 1-channel attributions on RGB inputs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 4))
    x = np.random.default_rng(0).random((3, 3, 8, 8)).astype(np.float32)
    a = np.random.default_rng(1).random((3, 1, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2])
    with pytest.raises(Exception):  # noqa: B017
        quantus.ROAD(percentages=[50], disable_warnings=True)(
            model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu")
    s = ROAD(percentages=[50], seed=0)(model, x, y, a)
    assert np.isfinite(s).all()


def test_sensitivity_n_first_step_and_bug_c24(quantus, setup):
    """For n = features_in_step both agree; later Quantus pairs the cumulative output change
    with the last step's attribution sum only (deviation C24), we with the sum over all n
    features."""
    model, x, y, a = setup
    q = np.array(_q(quantus, quantus.SensitivityN, setup, features_in_step=4,
                    normalise=False, return_aggregate=False))
    m = SensitivityN(features_in_step=4, subsets="morf", normalise=False)
    m(model, x, y, a)
    assert q.shape == m.curves_[0].shape
    np.testing.assert_allclose(m.curves_[0, 0], q[0], **TOL)
    assert not np.allclose(m.curves_[0, 1:], q[1:], atol=1e-3)


def test_monotonicity_quantus_is_a_no_op_ours_is_not(quantus):
    """Deviation C2: with the black baseline Quantus says True whatever the model does."""
    torch.manual_seed(0)
    w = torch.ones(1, 1, 4, 4)
    w[0, 0, 0, :] = -4.0  # restoring these pixels lowers the class-0 score

    class Lin(nn.Module):
        def forward(self, z):
            s = (z * w).flatten(1).sum(1)
            return torch.stack([s, -s], 1)

    x = np.random.default_rng(0).random((4, 1, 4, 4)).astype(np.float32) + 0.5
    a = np.random.default_rng(1).random((4, 1, 4, 4)).astype(np.float32)
    y = np.zeros(4, dtype=int)
    q = quantus.Monotonicity(features_in_step=2, disable_warnings=True)(
        model=Lin().eval(), x_batch=x, y_batch=y, a_batch=a, device="cpu")
    assert all(q)
    ours = Monotonicity(features_in_step=2)(Lin(), x, y, a)
    np.testing.assert_array_equal(ours, np.zeros(4))


def test_sufficiency(quantus, setup):
    model, x, y, a = setup
    q = np.array(_q(quantus, quantus.Sufficiency, setup, threshold=0.85, normalise=False))
    m = Sufficiency(threshold=0.85, normalise=False)
    ours = m(model, x, y, a)
    defined = np.isfinite(ours)
    assert defined.any()
    np.testing.assert_allclose(ours[defined], q[defined], **TOL)
    np.testing.assert_array_equal(q[~defined], 0.0)  # Quantus: 0 without neighbours


def test_region_perturbation_random_order_with_the_same_permutations(quantus, setup,
                                                                      monkeypatch):
    """Quantus draws the random patch order from NumPy's global RNG: feed it ours."""
    model, x, y, a = setup
    ours = RegionPerturbation(patch_size=2, regions_evaluation=10, order="random", seed=4)
    ours(model, x, y, a)
    feed = iter(list(ours.order_))

    def fake_permutation(n):
        assert n == 16
        return next(feed)

    monkeypatch.setattr(np.random, "permutation", fake_permutation)
    q = np.array(_q(quantus, quantus.RegionPerturbation, setup, patch_size=2,
                    regions_evaluation=10, order="random"))
    np.testing.assert_allclose(ours.curves_[:, 1:], q, **TOL)


def test_region_perturbation_direction_bug_c17(quantus):
    """Quantus declares LOWER for a curve of prediction drops; MoRF drops are better large."""
    assert quantus.RegionPerturbation.score_direction.name == "LOWER"
    assert RegionPerturbation(order="morf").higher_is_better
    assert not RegionPerturbation(order="lerf").higher_is_better


def test_quantus_similarity_functions_work_as_similarity_func(quantus, setup):
    model, x, y, a = setup
    for name, fn in [("pearson", quantus.similarity_func.correlation_pearson),
                     ("spearman", quantus.similarity_func.correlation_spearman)]:
        builtin = FaithfulnessEstimate(features_in_step=4, similarity_func=name)(model, x, y, a)
        given = FaithfulnessEstimate(features_in_step=4, similarity_func=fn)(model, x, y, a)
        np.testing.assert_allclose(given, builtin, rtol=1e-10, atol=1e-12)


def test_infidelity_patch_size_not_dividing_the_image_bug_c12(quantus, setup):
    """Quantus cannot reshape 8x8 inputs into 3x3 patches; ours uses smaller border patches.
    Known answer on a linear model: the mean over the cumulative raster steps k of
    (sum (a - w)(x - x_k))^2, where x_k has the first k patches replaced by the black baseline
    (the sample's minimum)."""
    _, x, _, a = setup
    with pytest.raises(ValueError, match="reshape"):
        _q(quantus, quantus.Infidelity, setup, perturb_patch_sizes=[3])
    w = torch.randn((1, 8, 8), generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    class Lin(nn.Module):
        def forward(self, z):
            s = (z * w).flatten(1).sum(1)
            return torch.stack([s, -s], 1)

    xt, at = torch.from_numpy(x).double(), torch.from_numpy(a).double()
    ours = Infidelity(perturb_func="patches", perturb_patch_sizes=[3])(
        Lin(), xt, torch.zeros(N, dtype=torch.long), at)
    base = xt.flatten(1).amin(1).reshape(-1, 1, 1, 1)
    labels = (torch.arange(8) // 3).reshape(8, 1) * 3 + (torch.arange(8) // 3).reshape(1, 8)
    removed = torch.zeros_like(xt, dtype=torch.bool)
    losses = []
    for k in range(9):
        removed = removed | (labels == k)
        diff = torch.where(removed, xt - base, torch.zeros_like(xt))
        losses.append((((at - w) * diff).flatten(1).sum(1)) ** 2)
    np.testing.assert_allclose(ours, torch.stack(losses, 1).mean(1).numpy(), rtol=1e-10)


def test_road_first_chunk_only_bug_c4(quantus, setup):
    """With batch_size=3 Quantus' ROAD returns the accuracy of the first 3 samples only; ours
    scores every sample (each as it scores alone)."""
    model, x, y, a = setup
    pct = [20, 60]
    q = _q(quantus, quantus.ROAD, setup, percentages=pct, noise=0.0, call_kw={})
    q3 = quantus.ROAD(percentages=pct, noise=0.0, disable_warnings=True)(
        model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu", batch_size=3)
    m = ROAD(percentages=pct, noise=0.0, order="morf")
    s = m(model, x, y, a, batch_size=3)
    np.testing.assert_allclose([q3[p] for p in pct], m.morf_curves_[:3].mean(0), atol=1e-12)
    np.testing.assert_allclose([q[p] for p in pct], m.morf_curves_.mean(0), atol=1e-12)
    assert s.shape == (N,) and np.isfinite(s).all()
    for i in range(N):
        np.testing.assert_array_equal(m(model, x[i : i + 1], y[i : i + 1], a[i : i + 1]), s[i])


def test_sufficiency_other_distances_bug_c9(quantus, setup):
    """Quantus passes V=None to every scipy distance: only 'seuclidean' runs."""
    from scipy.spatial.distance import cdist

    model, x, y, a = setup
    with pytest.raises(TypeError):
        _q(quantus, quantus.Sufficiency, setup, distance_func="euclidean")
    m = Sufficiency(threshold=0.7, distance_func="euclidean", normalise=False)
    s = m(model, x, y, a)
    flat = np.abs(a.reshape(N, -1)).astype(np.float64)
    d = cdist(flat, flat, "euclidean")
    d = d / d.max()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    assert np.isfinite(s).sum() >= 2
    for i in range(N):
        near = [j for j in range(N) if j != i and d[i, j] <= 0.7]
        if near:
            assert s[i] == pytest.approx(np.mean([pred[j] == pred[i] for j in near]))
        else:
            assert np.isnan(s[i])


@pytest.fixture(scope="module")
def rgb():
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                              nn.Linear(4 * 36, 5)).eval()
    g = torch.Generator().manual_seed(4)
    x = torch.rand((N, 3, 6, 6), generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    a = torch.randn((N, 3, 6, 6), generator=g)  # per channel value: Quantus' features
    return model, x.numpy(), y.numpy(), a.numpy()


@pytest.mark.parametrize("name", ["PixelFlipping", "FaithfulnessEstimate", "Monotonicity[C2]"])
def test_rgb_channel_values_reproduce_quantus_features(quantus, rgb, name):
    """On RGB inputs Quantus' features are channel values; grouping='channel_values' gives
    the same computation."""
    model, x, y, a = rgb
    if name == "PixelFlipping":
        q = np.array(_q(quantus, quantus.PixelFlipping, rgb, features_in_step=6))
        ours = PixelFlipping(features_in_step=6, grouping="channel_values")
        ours(model, x, y, a)
        np.testing.assert_allclose(ours.curves_[:, 1:], q, **TOL)
    elif name == "FaithfulnessEstimate":
        q = np.array(_q(quantus, quantus.FaithfulnessEstimate, rgb, features_in_step=6))
        ours = FaithfulnessEstimate(features_in_step=6, grouping="channel_values")
        np.testing.assert_allclose(ours(model, x, y, a), q, **TOL)
    else:  # Quantus' no-op (deviation C2): the all-baseline curve is flat, so it always says True
        q = _q(quantus, quantus.Monotonicity, rgb, features_in_step=6)
        assert all(q)
        ours = Monotonicity(features_in_step=6, grouping="channel_values")
        ours(model, x, y, a)
        assert np.ptp(ours.curves_, axis=1).min() > 0  # ours restores x: the curve moves
