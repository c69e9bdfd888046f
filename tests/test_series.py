"""Time series (and tables) end to end: ROAD's imputers off images, IROF's segments, interval
localisation and the AUCSE metric of Turbé et al. (2023), with answers computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit.metrics import AUCSE, IROF, ROAD, BoxLocalisation
from evalkit.metrics.localisation import masks_from_intervals
from evalkit.perturb import Columns, Windows
from evalkit.perturb.imputation import (
    ConditionalMeanImputer,
    KNNImputer,
    MarginalMeanImputer,
    NoisyLinearImputer,
    SeriesLinearImputer,
    linear_interpolation_1d,
)

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.EvalkitWarning")


class WindowReader(nn.Module):
    """Two classes over (N, C, T) series: logit 1 is the sum of channel 0 over steps
    [start, stop), logit 0 is 0. The model reads that window and nothing else."""

    def __init__(self, start: int = 2, stop: int = 6) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, 0, self.start:self.stop].sum(1)
        return torch.stack([torch.zeros_like(s), s], 1)


def _bump(t: int = 10, start: int = 2, stop: int = 6) -> tuple[torch.Tensor, torch.Tensor,
                                                               torch.Tensor]:
    """A series that is 1 on the read window and 0 elsewhere, a map on the window (the right
    explanation) and a map off it (the wrong one)."""
    x = torch.zeros(1, 1, t)
    x[0, 0, start:stop] = 1.0
    good = x.clone()
    return x, good, 1.0 - good


# ====================================================================== imputers: series
def test_series_imputation_is_linear_interpolation_by_hand():
    x = torch.tensor([[[0.0, 9.0, 9.0, 3.0, 9.0, 5.0, 9.0]]])
    m = torch.tensor([[[False, True, True, False, True, False, True]]])
    out = linear_interpolation_1d(x, m)
    # steps 1, 2 between 0 and 3; step 4 between 3 and 5; step 6 after the last kept step
    torch.testing.assert_close(out, torch.tensor([[[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 5.0]]]))
    lead = linear_interpolation_1d(x, torch.tensor([[[True, True, False] + [False] * 4]]))
    assert lead[0, 0, :3].tolist() == [9.0, 9.0, 9.0]  # before the first kept step
    assert linear_interpolation_1d(x, torch.ones_like(m)).abs().sum() == 0  # nothing kept


def test_series_imputer_is_the_image_imputer_on_one_row_images():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 17, generator=g)
    for mask in (torch.rand(5, 1, 17, generator=g) < 0.4,  # whole steps
                 torch.rand(5, 3, 17, generator=g) < 0.4):  # per channel
        keys = torch.arange(5, dtype=torch.int64) * 7919
        for noise in (0.0, 0.05):
            ours = SeriesLinearImputer(noise).fill(x, mask, keys=keys)
            image = NoisyLinearImputer(noise).fill(x.unsqueeze(2), mask.unsqueeze(2), keys=keys)
            torch.testing.assert_close(ours, image.squeeze(2), atol=1e-6, rtol=1e-6)
            # kept steps are untouched, and the noise of a row depends on its key only
            assert torch.equal(ours[~mask.expand_as(x)], x[~mask.expand_as(x)])
            again = SeriesLinearImputer(noise).fill(x[[3]], mask[[3]], keys=keys[[3]])
            torch.testing.assert_close(again, ours[[3]])


def test_a_mask_shared_by_the_channels_equals_its_expansion():
    # a (B, 1, T) mask is imputed on its own shape (neighbours found once per series): the
    # values, signed zeros included, are those of the mask expanded to every channel
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(6, 3, 40, generator=g, dtype=dtype)
        x[0, :, :5] = -0.0
        mask = torch.rand(6, 1, 40, generator=g) < 0.5
        mask[1], mask[2] = True, False  # every step removed, none removed
        mask[0, 0, :3] = True
        keys = torch.arange(6, dtype=torch.int64) * 104729
        full = mask.expand_as(x)
        for noise in (0.0, 0.01):
            shared = SeriesLinearImputer(noise).fill(x, mask, keys=keys)
            expanded = SeriesLinearImputer(noise).fill(x, full.clone(), keys=keys)
            assert torch.equal(shared, expanded)
            assert torch.equal(shared.signbit(), expanded.signbit())
        assert torch.equal(linear_interpolation_1d(x, mask), linear_interpolation_1d(x, full))


def test_series_imputer_needs_series_and_keys():
    with pytest.raises(ValueError, match="series"):
        SeriesLinearImputer().fill(torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4).bool())
    with pytest.raises(ValueError, match="keys"):
        SeriesLinearImputer(0.1).fill(torch.zeros(2, 1, 4), torch.ones(2, 1, 4).bool())
    assert not SeriesLinearImputer(0).stochastic and SeriesLinearImputer(0.01).stochastic


def _interpolated_by_hand(x: torch.Tensor, mask: torch.Tensor, noise: float,
                          keys: torch.Tensor | None) -> torch.Tensor:
    """SeriesLinearImputer's definition, one series and step at a time: the float64 line
    ``x0 + (x1 - x0) * (t - t0) / (t1 - t0)`` (in that order) cast to x's dtype, the nearest
    kept value at either end, 0 with nothing kept, then the row's noise field added."""
    from evalkit import _rng

    b, c, t_count = x.shape
    m = mask.expand(x.shape)
    out = x.clone()
    fields = (None if noise == 0 else
              _rng.normal(keys, (c, t_count), std=noise, dtype=x.dtype, stream=0x90AD))
    for i in range(b):
        for ch in range(c):
            kept = [t for t in range(t_count) if not m[i, ch, t]]
            for t in range(t_count):
                if not m[i, ch, t]:
                    continue
                before = [k for k in kept if k < t]
                after = [k for k in kept if k > t]
                x64 = x[i, ch].to(torch.float64)
                if before and after:
                    t0, t1 = before[-1], after[0]
                    v = ((x64[t1] - x64[t0]) * float(t - t0)) / float(t1 - t0) + x64[t0]
                elif before or after:
                    v = x64[(before or after)[-1 if before else 0]]
                else:
                    v = torch.tensor(0.0, dtype=torch.float64)
                v = v.to(x.dtype)
                out[i, ch, t] = v if fields is None else v + fields[i, ch, t]
    return out


def test_series_imputation_equals_its_definition_bit_for_bit():
    # removed steps only are computed (neighbours gathered): the same bits as the definition
    # step by step, with non-finite and signed-zero values, broadcast and per-channel masks,
    # rows with every or no step removed, repeated keys and several dtypes
    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = (torch.randn(5, 3, 23, generator=g) * 100).to(dtype)
        x[0, 1, 4], x[1, 0, 7], x[2, 2, 0], x[3, 0, 10] = math.nan, math.inf, -0.0, -math.inf
        keys = torch.tensor([11, 11, 5, 7, 5], dtype=torch.int64)
        for shape in ((5, 1, 23), (5, 3, 23), (1, 1, 23), (23,)):
            mask = torch.rand(shape, generator=g) < 0.5
            if len(shape) == 3 and shape[0] == 5:
                mask[1], mask[2] = True, False
            for noise in (0.0, 0.01):
                ours = SeriesLinearImputer(noise).fill(x, mask, keys=keys)
                m3 = mask.reshape((1,) * (3 - mask.ndim) + tuple(mask.shape))
                want = _interpolated_by_hand(x, m3, noise, keys)
                assert ours.dtype == x.dtype and ours.shape == x.shape
                assert torch.equal(ours.isnan(), want.isnan())
                assert torch.equal(ours.nan_to_num(0.0), want.nan_to_num(0.0))
                finite = ~want.isnan()
                assert torch.equal(ours.signbit()[finite], want.signbit()[finite])
            torch.testing.assert_close(linear_interpolation_1d(x, mask),
                                       SeriesLinearImputer(0.0).fill(x, mask), rtol=0, atol=0,
                                       equal_nan=True)
    with pytest.raises(ValueError, match="series"):
        linear_interpolation_1d(torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.bool))


# ====================================================================== imputers: tables
def _table():
    # column 1 is exactly twice column 0; column 2 is independent
    x = torch.tensor([[1.0, 2.0, 5.0], [2.0, 4.0, 1.0], [3.0, 6.0, 3.0], [4.0, 8.0, 7.0]],
                     dtype=torch.float64)
    return x


def test_marginal_mean_leaves_the_row_out():
    x = _table()
    m = torch.zeros_like(x, dtype=torch.bool)
    m[:, 2] = True
    out = MarginalMeanImputer().with_background(x).fill(x, m)
    # row 0: mean of 1, 3, 7; row 1: mean of 5, 3, 7 ...
    torch.testing.assert_close(out[:, 2], torch.tensor([11 / 3, 5.0, 13 / 3, 3.0],
                                                       dtype=torch.float64))
    assert torch.equal(out[:, :2], x[:, :2])
    ref = MarginalMeanImputer(reference=x.numpy()).fill(x, m)  # a reference: no leaving out
    torch.testing.assert_close(ref[:, 2], torch.full((4,), 4.0, dtype=torch.float64))


def test_conditional_mean_follows_the_correlation():
    x = _table()
    m = torch.zeros_like(x, dtype=torch.bool)
    m[:, 1] = True  # remove column 1; column 0 predicts it exactly
    out = ConditionalMeanImputer(ridge=1e-9).with_background(x).fill(x, m)
    torch.testing.assert_close(out[:, 1], 2 * x[:, 0], atol=1e-5, rtol=0)
    # by hand for row 0 from the other rows (the Gaussian conditional mean)
    bg = x[1:].numpy()
    mu, cov = bg.mean(0), np.cov(bg.T)
    cov = cov + 1e-9 * np.diag(cov).mean() * np.eye(3)
    kept, gone = [0, 2], [1]
    want = mu[gone] + cov[np.ix_(gone, kept)] @ np.linalg.solve(cov[np.ix_(kept, kept)],
                                                                x[0, kept].numpy() - mu[kept])
    np.testing.assert_allclose(out[0, 1].item(), want[0], rtol=1e-9)
    # nothing kept: the background mean
    every = ConditionalMeanImputer().with_background(x).fill(x, torch.ones_like(m))
    torch.testing.assert_close(every[0], x[1:].mean(0))


def test_knn_averages_the_nearest_rows_on_the_kept_columns():
    x = _table()
    m = torch.zeros_like(x, dtype=torch.bool)
    m[:, 2] = True
    out = KNNImputer(k=2, standardise=False).with_background(x).fill(x, m)
    # row 0 (1, 2): nearest others are rows 1 (2, 4) and 2 (3, 6) -> (1 + 3) / 2
    # row 1 (2, 4): rows 0 and 2 tie at distance sqrt(5): both -> (5 + 3) / 2
    torch.testing.assert_close(out[:, 2], torch.tensor([2.0, 4.0, 4.0, 2.0],
                                                       dtype=torch.float64))


def test_table_imputers_leave_duplicates_out_and_refuse_without_background():
    x = torch.tensor([[1.0, 1.0], [1.0, 1.0], [3.0, 5.0]], dtype=torch.float64)
    m = torch.tensor([[False, True]] * 3)
    out = MarginalMeanImputer().with_background(x).fill(x, m)
    assert out[0, 1].item() == 5.0  # its copy (row 1) is left out too
    with pytest.raises(ValueError, match="background"):
        ConditionalMeanImputer().fill(x, m)
    with pytest.raises(ValueError, match="only copies"):
        MarginalMeanImputer().with_background(x[:2]).fill(x[:2], m[:2])
    with pytest.raises(ValueError, match="columns"):
        MarginalMeanImputer(reference=np.zeros((3, 4))).fill(x, m)


def test_table_noise_scales_with_the_column_and_is_keyed():
    x = _table()
    m = torch.zeros_like(x, dtype=torch.bool)
    m[:, 2] = True
    keys = torch.tensor([11, 12, 13, 14])
    imp = MarginalMeanImputer(reference=x.numpy(), noise=0.5)
    a = imp.fill(x, m, keys=keys)
    b = imp.fill(x[[2]], m[[2]], keys=keys[[2]])
    torch.testing.assert_close(a[[2]], b)
    assert imp.stochastic and not MarginalMeanImputer().stochastic
    # same draws on a table scaled by 10: the noise follows the column's spread
    big = MarginalMeanImputer(reference=10 * x.numpy(), noise=0.5).fill(10 * x, m, keys=keys)
    torch.testing.assert_close(big[:, 2], 10 * a[:, 2])


def test_table_imputer_cache_tokens_follow_the_background():
    x = _table()
    a = ConditionalMeanImputer().with_background(x).cache_token()
    assert a == ConditionalMeanImputer().with_background(x.clone()).cache_token()
    assert a != ConditionalMeanImputer().with_background(x + 1).cache_token()
    assert a != ConditionalMeanImputer(ridge=1e-3).with_background(x).cache_token()


# ====================================================================== ROAD
def test_road_on_a_series_that_one_window_decides():
    x, good, bad = _bump()
    y = torch.tensor([1])
    road = ROAD(percentages=[40], noise=0.0, order="morf", score="confidence", softmax=False)
    # imputing the window from its neighbours (0 on both sides) erases it: 4 -> 0
    assert road(WindowReader(), x, y, good)[0] == pytest.approx(-4.0)
    # the wrong map removes 4 steps outside the window: the read window is untouched
    assert road(WindowReader(), x, y, bad)[0] == pytest.approx(0.0)
    assert ROAD().modalities == ("image", "series")


def test_road_image_default_is_the_noisy_linear_imputer():
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(3))
    x = torch.rand(3, 1, 8, 8, generator=g)
    model(x)
    y = torch.tensor([0, 1, 2])
    a = torch.rand(3, 1, 8, 8, generator=g)
    ours = ROAD(percentages=[30, 60], seed=0, score="confidence")(model, x, y, a)
    explicit = ROAD(percentages=[30, 60], seed=0, score="confidence",
                    imputer=NoisyLinearImputer(0.01))(model, x, y, a)
    np.testing.assert_array_equal(ours, explicit)


class TwinLinear(nn.Module):
    """Two classes over (N, 3) tables: logit 1 = x0 + x1, logit 0 = 0."""

    def forward(self, x):
        s = x[:, 0] + x[:, 1]
        return torch.stack([torch.zeros_like(s), s], 1)


def test_road_on_tables_imputes_from_correlated_columns():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(200, 3, generator=g, dtype=torch.float64)
    ref[:, 1] = ref[:, 0]  # column 1 duplicates column 0
    x = torch.tensor([[1.0, 1.0, 0.3], [-2.0, -2.0, 0.1]])
    y = torch.tensor([1, 1])
    a = torch.tensor([[0.0, 1.0, 0.5], [0.0, 1.0, 0.5]])  # column 1 first, then column 2
    kw = {"percentages": [34], "noise": 0.0, "order": "morf", "score": "confidence",
          "softmax": False}
    # the conditional mean puts column 1 back from column 0: the score does not move
    cond = ROAD(background=ref.numpy(), **kw)(TwinLinear(), x, y, a)
    np.testing.assert_allclose(cond, 0.0, atol=1e-4)
    # the marginal mean (about 0) removes the column's contribution instead
    marg = ROAD(imputer=MarginalMeanImputer(reference=ref.numpy()), **kw)(TwinLinear(), x, y, a)
    np.testing.assert_allclose(marg, -x[:, 1].numpy() + ref[:, 1].mean().item(), atol=1e-5)
    with pytest.raises(ValueError, match=r"ROAD.*background"):
        ROAD(**kw)(TwinLinear(), x, y, a)


def test_road_with_the_batch_as_background_is_set_level():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, generator=g)
    x[:, 1] = x[:, 0]
    y = torch.ones(6, dtype=torch.int64)
    a = torch.tensor([[0.0, 1.0, 0.5]]).expand(6, 3)
    road = ROAD(background="batch", percentages=[34], noise=0.0, order="morf",
                score="confidence", softmax=False)
    assert road.set_level and "tabular" in road.modalities
    assert not ROAD(background=np.zeros((4, 3))).set_level
    out = road(TwinLinear(), x, y, a)
    np.testing.assert_allclose(out, 0.0, atol=1e-3)  # the other rows carry the correlation
    with pytest.raises(ValueError, match="background"):
        ROAD(background="train")


# ====================================================================== IROF
def test_irof_on_series_removes_windows():
    x, good, bad = _bump(t=10, start=0, stop=5)
    y = torch.tensor([1])
    kw = {"perturb_baseline": 0.0, "softmax": False, "segmentation_kwargs": {"n_segments": 2}}
    model = WindowReader(0, 5)
    # two windows of 5 steps; the right map removes the read window first:
    # curve f(x_k) / f(x) = [1, 0, 0] over [0, 1/2, 1] -> 1 - AUC = 1 - 1/4
    assert IROF(**kw)(model, x, y, good)[0] == pytest.approx(0.75)
    # the wrong map removes the other window first: [1, 1, 0] -> 1 - 3/4
    assert IROF(**kw)(model, x, y, bad)[0] == pytest.approx(0.25)
    irof = IROF(**kw)
    irof(model, x, y, good)
    np.testing.assert_allclose(irof.curve_x_, [0.0, 0.5, 1.0])


def test_irof_default_segments_per_modality():
    class Stub:
        def __init__(self, name, x):
            self.modality = ek.modality.as_modality(name)
            self.x = x

    irof = IROF(segmentation_kwargs={"n_segments": 4})
    series = irof._segments(Stub("series", torch.zeros(2, 3, 10)))
    assert isinstance(series, Windows) and series.window_size == 3  # ceil(10 / 4)
    assert int(series(torch.zeros(2, 3, 10)).n_groups[0]) == 4  # the last window is shorter
    assert isinstance(irof._segments(Stub("tabular", torch.zeros(2, 5))), Columns)
    with pytest.raises(ValueError, match="n_segments"):
        IROF(segmentation_kwargs={"n_segments": 0})._segments(Stub("series", torch.zeros(1, 1, 5)))


def test_irof_on_tables_removes_columns():
    x = torch.tensor([[1.0, 2.0, 0.5]])
    y = torch.tensor([1])
    a = torch.tensor([[0.1, 1.0, 0.0]])  # column 1, then 0, then 2
    irof = IROF(perturb_baseline=0.0, softmax=False)
    out = irof(TwinLinear(), x, y, a)
    # f = x0 + x1 = 3; curve [3, 1, 0, 0] / 3 over [0, 1/3, 2/3, 1]
    curve = np.array([1.0, 1 / 3, 0.0, 0.0])
    np.testing.assert_allclose(irof.curves_[0], curve)
    assert out[0] == pytest.approx(1 - np.trapezoid(curve, [0, 1 / 3, 2 / 3, 1]))


# ====================================================================== localisation
def test_box_localisation_on_series_intervals():
    x = torch.zeros(2, 1, 20)
    a = torch.zeros(2, 1, 20)
    a[0, 0, 5:10] = 1.0
    a[1, 0, 12:16] = 1.0
    a[1, 0, 2] = 0.5  # a weaker, separate run: not the largest component
    intervals = [[5, 10], [10, 16]]
    iou = BoxLocalisation(return_iou=True)(None, x, None, a, boxes=intervals)
    np.testing.assert_allclose(iou, [1.0, 4 / 6])  # [12, 16) vs [10, 16)
    s = masks_from_intervals(intervals, 20)
    assert s.shape == (2, 1, 20) and s[1, 0, 10:16].all() and s.sum() == 11
    for masks in (s, s[:, 0], s.expand(2, 3, 20)):
        got = BoxLocalisation(return_iou=True)(None, x.expand(2, 3, 20), None, a, s=masks)
        np.testing.assert_allclose(got, [1.0, 4 / 6])
    assert BoxLocalisation(iou_threshold=0.7)(None, x, None, a, boxes=intervals).tolist() == [
        1.0, 0.0]
    # several intervals per sample: the best match counts
    several = np.array([[[0, 3], [5, 10]], [[12, 16], [np.nan, np.nan]]])
    np.testing.assert_allclose(
        BoxLocalisation(return_iou=True)(None, x, None, a, boxes=several), [1.0, 1.0])


def test_every_localisation_metric_takes_series_masks():
    x = torch.zeros(2, 2, 12)
    a = torch.zeros(2, 2, 12)
    a[:, :, 3:6] = 1.0
    s = torch.zeros(2, 12, dtype=torch.bool)
    s[:, 3:6] = True
    m = ek.metrics
    want = {m.PointingGame(): 1.0, m.RelevanceMassAccuracy(): 1.0,
            m.RelevanceRankAccuracy(): 1.0, m.AttributionLocalisation(): 1.0,
            m.EnergyPointingGame(): 1.0, m.TopKIntersection(k=3): 1.0, m.AUC(): 1.0,
            m.BoxLocalisation(): 1.0}
    for metric, value in want.items():
        for masks in (s, s[:, None], s[:, None].expand(2, 2, 12)):
            np.testing.assert_allclose(metric(None, x, None, a, s=masks), value,
                                       err_msg=type(metric).__name__)
        np.testing.assert_allclose(metric(None, x, None, a, boxes=[[3, 6], [3, 6]]), value)
    with pytest.raises(ValueError, match="different masks per channel"):
        per_channel = torch.zeros(2, 2, 12, dtype=torch.bool)
        per_channel[:, 0, :3] = True
        m.RelevanceMassAccuracy()(None, x, None, a, s=per_channel)
    with pytest.raises(ValueError, match="Focus"):
        m.Focus()(None, x, None, a, s=s)


# ====================================================================== AUCSE
def test_aucse_known_answer_on_a_window_reader():
    x, good, bad = _bump()
    y = torch.tensor([1])
    metric = AUCSE(noise_std=0.0, softmax=False)
    # candidates: all 10 points (relevance >= 0): 0 x 6, 1 x 4. Quantiles >= 0.65 mask the
    # 4 window points (S -> 0, S~ = 1), quantiles <= 0.55 mask all 10 (S~ = 1); E is the
    # fully masked score 0. Curve (0, 0), (0.4, 1), (1, 1): area 0.2 + 0.6
    assert metric(WindowReader(), x, y, good)[0] == pytest.approx(0.8)
    np.testing.assert_allclose(metric.masked_fractions_[0], [0.4] * 5 + [1.0] * 6)
    np.testing.assert_allclose(metric.score_drops_[0], 4.0)
    # the wrong map masks the 6 outside points first (S~ = 0) until quantile 0.25 masks all:
    # (0, 0), (0.6, 0), (1, 1): area 0.2
    assert metric(WindowReader(), x, y, bad)[0] == pytest.approx(0.2)
    # the paper's data-set expectation, given as one number per class
    given = AUCSE(noise_std=0.0, softmax=False, expected_score=[5.0, 0.0])
    assert given(WindowReader(), x, y, good)[0] == pytest.approx(0.8)


def test_aucse_normalises_by_the_expected_score_and_clips():
    x, good, _ = _bump()
    y = torch.tensor([1])
    # E = 2: masking the window gives S = 0, S~ = 1 - (0 - 2) / (4 - 2) = 2 -> clipped to 1
    metric = AUCSE(noise_std=0.0, softmax=False, expected_score=2.0)
    metric(WindowReader(), x, y, good)
    assert metric.curves_.max() == 1.0
    # E equal to S: undefined with a reason
    same = AUCSE(noise_std=0.0, softmax=False, expected_score=4.0)
    assert np.isnan(same(WindowReader(), x, y, good)[0])
    assert "expected score" in same.nan_reasons_[0]
    negative = AUCSE(noise_std=0.0, softmax=False, normalise=False)
    assert np.isnan(negative(WindowReader(), x, y, -good - 1)[0])
    assert "non-negative" in negative.nan_reasons_[0]


def test_aucse_random_reference_and_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 2, 24, generator=g)
    y = torch.ones(4, dtype=torch.int64)
    a = torch.zeros(4, 2, 24)
    a[:, 0, 2:6] = 1.0
    model = WindowReader()
    right = AUCSE(seed=0, softmax=False)(model, x, y, a)
    random = AUCSE(order="random", seed=0, softmax=False)(model, x, y, a)
    assert AUCSE(order="random").stochastic and AUCSE().stochastic
    assert not AUCSE(noise_std=0.0).stochastic
    assert right.mean() > random.mean()
    again = AUCSE(seed=0, softmax=False)(model, x[[2]], y[[2]], a[[2]])
    np.testing.assert_allclose(again, right[[2]])


def test_aucse_metadata_and_refusals():
    row = ek.metrics.list_metrics().query("name == 'AUCSE'").iloc[0]
    assert row["family"] == "faithfulness" and bool(row["higher_is_better"])
    assert tuple(row["modalities"]) == ("series",) and "Turbé" in row["paper"]
    assert ek.metrics.get("InterpretTime") is AUCSE
    with pytest.raises(ValueError, match="AUCSE"):
        AUCSE()(nn.Flatten(), torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64),
                torch.ones(2, 3, 4, 4))
    with pytest.raises(ValueError, match="quantiles"):
        AUCSE(quantiles=[1.5])


@pytest.mark.parametrize("grouping", ["channel_values", "pixels"])
def test_aucse_threshold_masks_equal_the_sorted_order_masks(grouping):
    """AUCSE selects each quantile's points by comparing with the threshold instead of
    sorting them; the masks, so every score, curve and drop, are those of the prefixes of the
    sorted morf order (which an active forward cache still uses): ties, zeros, negative
    relevance, a constant map and a map without a non-negative value included."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 2, 40, generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(80, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(3, 80, generator=g))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    a = torch.round(torch.randn(6, 2, 40, generator=g) * 2) / 2  # many ties and zeros
    a[3] = 0.25  # constant
    a[4] = -torch.rand(2, 40, generator=g) - 0.1  # no non-negative relevance
    kwargs = dict(grouping=grouping, seed=0, normalise=False, disable_warnings=True)
    fast = AUCSE(**kwargs)
    scores = fast(model, x, y, a)
    with ek.forward_cache():  # the keys name the full order: the sorted path
        slow = AUCSE(**kwargs)
        ref = slow(model, x, y, a)
    np.testing.assert_array_equal(scores, ref)
    np.testing.assert_array_equal(fast.curves_, slow.curves_)
    np.testing.assert_array_equal(fast.score_drops_, slow.score_drops_)
    assert fast.nan_reasons_ == slow.nan_reasons_


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_aucse_threshold_counts_compare_in_float64(dtype):
    """The counts at each quantile's threshold (float64, interpolated between two close
    relevances) are those of the sorted morf order, for float32 and float64 attributions
    alike (the thresholds are compared in float64, never rounded)."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(5, 3, 64, generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
    y = torch.tensor([0, 1, 2, 0, 1])
    # consecutive float32 values (shuffled): each threshold lies between two of them
    steps = torch.stack([torch.randperm(192, generator=g) for _ in range(5)])
    a = (1.0 + steps.to(torch.float64) * 2.0 ** -23).reshape(5, 3, 64).to(dtype)
    kwargs = dict(quantiles=[0.03, 0.31, 0.5, 0.77, 0.99], seed=0, normalise=False,
                  disable_warnings=True)
    fast = AUCSE(**kwargs)
    scores = fast(model, x, y, a)
    with ek.forward_cache():  # the sorted path
        slow = AUCSE(**kwargs)
        ref = slow(model, x, y, a)
    np.testing.assert_array_equal(scores, ref)
    np.testing.assert_array_equal(fast.masked_fractions_, slow.masked_fractions_)
