"""Cross-checks on time series (N, C, T) against the released quantus 0.6.0 (a test-only
reference oracle), where Quantus runs on 1-D inputs.

Quantus' localisation metrics and its removal curves take (N, C, T) inputs; its ROAD imputer and
IROF's SLIC segmentation need images, so ROAD's 1-D imputation is checked against Quantus'
noisy linear imputation of one-row images (the 1-D problem embedded in 2-D) and IROF's default
series segments (fixed windows) have no Quantus counterpart: with the same segments given as a
label map both compute the same curve (tests/test_faithfulness_quantus.py shows that for
images). Deliberate differences: Quantus normalises over the batch (deviation C1; none of the
compared quantities depends on it), and its curves start after the first step (ours start at
the unperturbed input).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from evalkit import UndefinedScoreWarning
from evalkit.metrics import (
    AUC,
    ROAD,
    AttributionLocalisation,
    PixelFlipping,
    PointingGame,
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
    TopKIntersection,
)
from evalkit.perturb.imputation import SeriesLinearImputer

N, C, T = 8, 1, 40
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def series_inputs(seed: int = 0):
    """Series, continuous maps without ties, and one ground-truth interval per sample."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, C, T)).astype(np.float32)
    a = rng.gamma(2.0, size=(N, 1, T)) * rng.uniform(0.1, 10, (N, 1, 1))
    s = np.zeros((N, 1, T), np.float32)
    for i in range(N):
        start, length = rng.integers(0, T - 12), rng.integers(3, 12)
        s[i, 0, start:start + length] = 1
        a[i, 0, start:start + length] *= rng.uniform(1, 3)
    return x, a, s


def test_localisation_on_series_agrees_with_quantus(quantus):
    x, a, s = series_inputs()
    q = dict(disable_warnings=True)
    pairs = [
        (quantus.PointingGame(**q), PointingGame()),
        (quantus.RelevanceMassAccuracy(**q), RelevanceMassAccuracy()),
        (quantus.RelevanceRankAccuracy(**q), RelevanceRankAccuracy()),
        (quantus.AUC(**q), AUC()),
        (quantus.TopKIntersection(k=10, **q), TopKIntersection(k=10)),
        (quantus.AttributionLocalisation(**q), AttributionLocalisation(abs=True)),
    ]
    for theirs, mine in pairs:
        want = np.asarray(theirs(model=None, x_batch=x, y_batch=np.zeros(N, int),
                                 a_batch=a.copy(), s_batch=s.copy()), dtype=np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedScoreWarning)
            got = mine(None, x, None, a, s=s)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=repr(mine))


@pytest.fixture(scope="module")
def series_model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv1d(C, 4, 5, padding=2), nn.ReLU(), nn.Flatten(),
                              nn.Linear(4 * T, 3)).eval()
    x, a, _ = series_inputs(1)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    return model, x, y, a.astype(np.float32)


def test_pixel_flipping_curves_on_series_agree_with_quantus(quantus, series_model):
    """With one channel, Quantus' channel-value features are our time steps."""
    model, x, y, a = series_model
    theirs = quantus.PixelFlipping(features_in_step=4, disable_warnings=True)(
        model=model, x_batch=x, y_batch=y, a_batch=a, device="cpu")
    ours = PixelFlipping(features_in_step=4)
    ours(model, x, y, a)
    np.testing.assert_allclose(ours.curves_[:, 1:], np.asarray(theirs), **TOL)


def test_series_imputation_equals_quantus_on_one_row_images(quantus):
    from quantus.functions.perturb_func import noisy_linear_imputation

    rng = np.random.default_rng(0)
    xx = rng.random((4, 2, T))
    masks = rng.random((4, T)) < np.array([0.05, 0.3, 0.7, 0.95])[:, None]
    masks[:, 0] = False  # Quantus needs a kept pixel; ours keeps the ends as in the 2-D case
    ours = SeriesLinearImputer(0.0).fill(torch.from_numpy(xx),
                                         torch.from_numpy(masks)[:, None]).numpy()
    for i in range(4):
        ref = noisy_linear_imputation(xx[i][:, None, :], np.flatnonzero(masks[i]), noise=0.0)
        np.testing.assert_allclose(ours[i], ref[:, 0, :], rtol=1e-10, atol=1e-12)


def test_road_on_series_equals_quantus_road_on_one_row_images(quantus, series_model):
    """Quantus' ROAD needs images: the same model, reading a (N, C, 1, T) view, scores the
    same MoRF accuracies as our ROAD on the series (noise 0)."""
    model, x, y, a = series_model

    class OneRow(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, v):
            return self.inner(v[:, :, 0])

    pct = [10, 30, 50, 70, 90]
    q = quantus.ROAD(percentages=pct, noise=0.0, disable_warnings=True)(
        model=OneRow(model).eval(), x_batch=x[:, :, None], y_batch=y, a_batch=a[:, :, None],
        device="cpu", batch_size=64, channel_first=True)
    m = ROAD(percentages=pct, noise=0.0, order="morf")
    m(model, x, y, a)
    np.testing.assert_allclose(m.morf_curves_.mean(0), [q[p] for p in pct], atol=1e-12)
