"""Continuity's zero shift (``include_zero_shift``), issue 22.

The paper's continuity is a maximum over x' != x (Montavon et al. 2018), so by default a
perturbation that leaves the input unchanged is left out and an explainer's own randomness only
shows through the smallest non-zero shift. ``include_zero_shift=True`` scores x' = x: a
re-explanation of the unchanged input that differs from ``a`` makes the ratio unbounded (NaN with
a reason); an equal one adds 0. Quantus 0.6 scores its grid's zero shift with ``+1e-9`` in the
denominator (deviation C38).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_robustness import CNN, CountingExplain, _manual_shift, cnn_data, identity_explain

import evalkit as ek
from evalkit.metrics import Continuity
from evalkit.metrics.robustness import translation_shifts

OFFSET = 0.25


def offset_explain(model, x, y, **kw):
    """The identity map plus a constant: given ``a = x``, every re-explanation differs from ``a``
    by the same draw of "randomness", which is what makes it computable by hand."""
    return x + OFFSET


class RandomExplain:
    """Saliency plus fresh Gaussian noise on every call (its own generator: unseeded by the
    metric, like an explainer with internal randomness)."""

    def __init__(self, scale: float = 0.05) -> None:
        self.g = torch.Generator().manual_seed(7)
        self.scale = scale

    def __call__(self, model, x, y, **kw):
        a = ek.explain(model, x, y, method="Saliency")
        return a + self.scale * torch.randn(a.shape, generator=self.g, dtype=a.dtype)


def _quiet(metric, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(*args, **kwargs)


def test_grid_holds_the_zero_shift():
    # the tests below rely on which grids contain x' = x
    assert 0 in translation_shifts(8, 8)
    assert 0 not in translation_shifts(8, 5)


def test_offset_explainer_by_hand():
    """C = max over the non-zero shifts of ||(x - x'_k) - offset||_1 / ||x - x'_k||_2 by default;
    with the zero shift the offset is a difference at ||x - x'|| = 0: NaN with a reason."""
    x, y = cnn_data(3)
    kw = dict(nr_steps=8, perturb_baseline=0.0, abs=False, normalise=False)
    default = _quiet(Continuity(**kw), CNN, x, y, x, explain_fn=offset_explain)
    expected = []
    for i in range(3):
        img = x[i].numpy().astype(np.float64)
        best = -np.inf
        for s in translation_shifts(8, 8):
            d = img - _manual_shift(img, s, 0.0, 2)
            if np.linalg.norm(d) > 0:
                best = max(best, np.abs(d - OFFSET).sum() / np.linalg.norm(d))
        expected.append(best)
    np.testing.assert_allclose(default, expected, rtol=1e-5)

    metric = Continuity(include_zero_shift=True, **kw)
    with pytest.warns(ek.UndefinedScoreWarning, match="zero shift"):
        scored = metric(CNN, x, y, x, explain_fn=offset_explain)
    assert np.isnan(scored).all()
    assert all("zero shift" in r for r in metric.nan_reasons_.values())


def test_random_explainer_shows_at_the_zero_shift():
    """The difference the option makes: a random explainer is finite (its noise divided by the
    smallest shift's input change) by default, and unbounded (NaN) with the zero shift."""
    x, y = cnn_data(4)
    a = RandomExplain()(CNN, x, y)
    default = _quiet(Continuity(nr_steps=8), CNN, x, y, a, explain_fn=RandomExplain())
    assert np.isfinite(default).all()
    metric = Continuity(nr_steps=8, include_zero_shift=True)
    scored = _quiet(metric, CNN, x, y, a, explain_fn=RandomExplain())
    assert np.isnan(scored).all() and len(metric.nan_reasons_) == 4


@pytest.mark.parametrize("nr_steps", [8, 5])  # a grid with and without the zero shift
def test_deterministic_explainer_unchanged(nr_steps):
    """An explainer that re-explains x exactly as ``a`` adds 0 at the zero shift, which never
    changes the maximum: the same scores with and without the option. Where the grid lacks the
    zero shift, one unperturbed copy per sample is appended (K + 1 re-explanations)."""
    x, y = cnn_data(3)
    plain, zero = CountingExplain(identity_explain), CountingExplain(identity_explain)
    kw = dict(nr_steps=nr_steps, abs=False, normalise=False)
    out = Continuity(**kw)(CNN, x, y, x, explain_fn=plain)
    metric = Continuity(include_zero_shift=True, **kw)
    np.testing.assert_array_equal(metric(CNN, x, y, x, explain_fn=zero), out)
    has_zero = 0 in translation_shifts(8, nr_steps)
    assert plain.rows == 3 * nr_steps
    assert zero.rows == 3 * (nr_steps + (0 if has_zero else 1))
    # the zero shift's column is left out by default (NaN) and 0 with the option
    column = translation_shifts(8, nr_steps).index(0) if has_zero else nr_steps
    assert (metric.draw_scores_[:, column] == 0).all()


def test_noise_perturbation_appends_the_unperturbed_copy():
    x, y = cnn_data(3)
    a = RandomExplain()(CNN, x, y)
    kw = dict(perturb_func="gaussian", perturb_std=0.05, nr_steps=4, seed=0)
    assert np.isfinite(_quiet(Continuity(**kw), CNN, x, y, a, explain_fn=RandomExplain())).all()
    metric = Continuity(include_zero_shift=True, **kw)
    assert np.isnan(_quiet(metric, CNN, x, y, a, explain_fn=RandomExplain())).all()
    assert metric.draw_scores_.shape == (3, 5)


def test_evalkit_seeded_explainers_repeat_at_the_zero_shift():
    """evalkit's own random explainers draw from each sample's key, so the re-explanation of
    the unchanged input repeats ``a``: the option changes nothing for them."""
    x, y = cnn_data(3)
    kw = {"method": "GradientShap"}
    a = ek.explain(CNN, x, y, **kw)
    out = Continuity(nr_steps=8)(CNN, x, y, a, explain_kwargs=kw)
    zero = Continuity(nr_steps=8, include_zero_shift=True)(CNN, x, y, a, explain_kwargs=kw)
    np.testing.assert_array_equal(zero, out)


def test_option_is_checked():
    with pytest.raises(TypeError, match="include_zero_shift"):
        Continuity(include_zero_shift="yes")  # type: ignore[arg-type]


def test_quantus_scores_the_zero_shift(quantus):
    """Quantus 0.6 divides the zero shift's difference of two re-explanations of x by 1e-9
    (deviation C38): a random explainer's score is about 1e9 times its noise, where the default
    here is finite and of the order of a deterministic explainer's."""
    x, y = cnn_data(4)
    rand = RandomExplain()

    def explain_np(model, inputs, targets, **kw):
        out = rand(model, torch.as_tensor(inputs), torch.as_tensor(targets))
        return out.numpy()

    q = quantus.Continuity(nr_steps=8, disable_warnings=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = np.asarray(q(model=CNN, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None,
                              explain_func=explain_np, device="cpu"), dtype=np.float64)
    a = RandomExplain()(CNN, x, y)
    ours = _quiet(Continuity(nr_steps=8), CNN, x, y, a, explain_fn=RandomExplain())
    assert (theirs > 1e6).all()
    assert (ours < 1e3).all()
