"""Log-odds (Shrikumar et al. 2017), the performance information curves SIC and AIC
(Kapishnikov et al. 2019) and Minimal Subset Deletion / Insertion (Gevaert et al. 2024):
known answers computed by hand, the paper's protocol details and the edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit import metrics as M
from evalkit.metrics._ties import CONSTANT_MAP
from evalkit.metrics.faithfulness.information import (
    NO_INFORMATION_GAIN,
    NO_SCORE_GAIN,
    aggregate_curves,
    compressed_size,
    interpolate_on_grid,
    to_uint8_planes,
)
from evalkit.metrics.faithfulness.logodds import SAME_CLASS
from evalkit.metrics.faithfulness.minimal_subset import NO_FLIP
from evalkit.models import BinaryTarget, wrap_model
from evalkit.testing import check_metric

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.UndefinedScoreWarning")


# ============================================================================ Log-odds
class Linear(nn.Module):
    """Logits W x (no bias); ``probabilities=True`` returns softmax(W x) instead."""

    def __init__(self, weight: torch.Tensor, probabilities: bool = False) -> None:
        super().__init__()
        self.weight = weight
        self.probabilities = probabilities

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.weight.T
        return z.softmax(1) if self.probabilities else z


W = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
X = torch.ones((1, 4))
Y = torch.tensor([0])
A_RANKED = torch.tensor([[4.0, 3.0, 2.0, 1.0]])


def test_log_odds_by_hand_on_a_linear_model():
    # z = (3, 1, 1): LO = 3 - log(e + e) = 2 - log 2; erasing the top 50% (columns 0 and 1,
    # to 0) gives z = (0, 1, 1): LO = -1 - log 2; the change is -3
    metric = M.LogOdds(fraction=0.5, perturb_baseline="zero")
    np.testing.assert_allclose(metric(Linear(W), X, Y, A_RANKED), [-3.0], rtol=1e-6)
    np.testing.assert_allclose(metric.log_odds_, [[2 - math.log(2), -1 - math.log(2)]],
                               rtol=1e-6)
    assert metric.n_erased_.tolist() == [2]
    # against one class: log(p0 / p2) = z0 - z2: 2 before, -1 after
    versus = M.LogOdds(fraction=0.5, versus=2, perturb_baseline="zero")
    np.testing.assert_allclose(versus(Linear(W), X, Y, A_RANKED), [-3.0], rtol=1e-6)
    np.testing.assert_allclose(versus.log_odds_, [[2.0, -1.0]], rtol=1e-6)
    # a model that outputs probabilities: the same log-odds from softmax=False
    probs = M.LogOdds(fraction=0.5, perturb_baseline="zero", softmax=False)
    np.testing.assert_allclose(probs(Linear(W, probabilities=True), X, Y, A_RANKED), [-3.0],
                               rtol=1e-5)


def test_log_odds_erases_only_positive_features_as_in_the_paper():
    # one positive column: k = min(round(0.5 * 4), 1) = 1; z after = (2, 1, 1)
    a = torch.tensor([[4.0, -3.0, -2.0, -1.0]])
    metric = M.LogOdds(fraction=0.5, perturb_baseline="zero", normalise=False)
    np.testing.assert_allclose(metric(Linear(W), X, Y, a), [-1.0], rtol=1e-6)
    assert metric.n_erased_.tolist() == [1]
    every = M.LogOdds(fraction=0.5, perturb_baseline="zero", normalise=False,
                      positive_only=False)
    # columns 0 and 3 (attribution 4, then -1) erased: z = (2, 1, 0), LO = 2 - log(e + 1)
    np.testing.assert_allclose(every(Linear(W), X, Y, a), [math.log(2) - math.log(1 + math.e)],
                               rtol=1e-6)
    assert every.n_erased_.tolist() == [2]
    # 20% of 784 pixels is 157 (half up), as in the paper
    mnist = M.LogOdds(positive_only=False)
    x = torch.rand((1, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    mnist(nn.Sequential(nn.Flatten(), nn.Linear(784, 3)), x, torch.tensor([0]),
          torch.rand((1, 1, 28, 28)))
    assert mnist.n_erased_.tolist() == [157]


def test_log_odds_stays_finite_where_a_float32_probability_rounds_to_one():
    big = Linear(100 * W)
    with torch.no_grad():
        assert big(X).softmax(1)[0, 0].item() == 1.0  # float32: p = 1, log(p / (1 - p)) = inf
    metric = M.LogOdds(fraction=0.5, perturb_baseline="zero")
    # LO: 200 - log 2 before, -100 - log 2 after
    np.testing.assert_allclose(metric(big, X, Y, A_RANKED), [-300.0], rtol=1e-6)


def test_log_odds_of_a_binary_decision_value_is_the_value():
    class Decision(nn.Module):
        def forward(self, x):
            return x @ torch.tensor([2.0, 1.0, 0.5])

    x = torch.ones((2, 3))
    y = torch.tensor([1, 0])
    a = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    model = wrap_model(Decision(), target=BinaryTarget())
    metric = M.LogOdds(fraction=1 / 3, perturb_baseline="zero")
    # d = 3.5; erasing column 0 gives 1.5: class 1's log-odds falls by 2, class 0's rises by 2
    np.testing.assert_allclose(metric(model, x, y, a), [-2.0, 2.0], rtol=1e-6)
    with pytest.raises(ValueError, match="versus"):
        M.LogOdds(versus=0)(model, x, y, a)


def test_log_odds_versus_its_own_class_is_nan_with_a_reason():
    x = torch.ones((2, 4))
    metric = M.LogOdds(fraction=0.5, versus=0, perturb_baseline="zero")
    s = metric(Linear(W), x, torch.tensor([0, 1]), A_RANKED.expand(2, 4))
    assert np.isnan(s[0]) and metric.nan_reasons_[0] == SAME_CLASS
    # class 1 against class 0: z1 - z0 = -2 before, 1 after erasing class 0's columns: +3
    np.testing.assert_allclose(s[1], 3.0, rtol=1e-6)
    with pytest.raises(ValueError, match="not a class"):
        M.LogOdds(versus=3)(Linear(W), x, torch.tensor([0, 1]), A_RANKED.expand(2, 4))


def test_log_odds_direction_and_metadata():
    meta = M.LogOdds.metadata()
    assert meta["family"] == "faithfulness" and meta["higher_is_better"] is False
    assert "Shrikumar" in meta["paper"]
    assert set(meta["modalities"]) == {"image", "series", "tabular", "tokens"}
    assert "lower is better" in " ".join(M.LogOdds.__doc__.split()).lower()


# ============================================================================ MSD / MSI
class ReadsRegion(nn.Module):
    """Class 0 when the sum of the 2x2 region R (top-left) exceeds ``threshold``."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, :, :2, :2].sum((1, 2, 3))
        return torch.stack([s, torch.full_like(s, self.threshold)], 1)


def _region_data(n: int = 3):
    x = torch.zeros((n, 1, 4, 4))
    x[:, :, :2, :2] = 1.0
    a = torch.rand((n, 1, 4, 4), generator=torch.Generator().manual_seed(0)) * 0.1
    a[:, :, :2, :2] += 1.0  # the region first
    return x, torch.zeros(n, dtype=torch.long), a


def test_minimal_subset_deletion_equals_the_region_share():
    x, y, a = _region_data()
    # the prediction flips only once the whole region (4 of 16 pixels) is removed
    msd = M.MinimalSubsetDeletion(features_in_step=1, perturb_baseline="zero")
    np.testing.assert_allclose(msd(ReadsRegion(0.5), x, y, a), [0.25] * 3)
    # the curve is 1 while the prediction is kept
    np.testing.assert_array_equal(msd.curves_[0, :6], [1, 1, 1, 1, 0, 0])
    np.testing.assert_allclose(msd.curve_x_[:6], np.arange(6) / 16)
    # one region pixel is enough when the margin is small
    np.testing.assert_allclose(msd(ReadsRegion(3.5), x, y, a), [1 / 16] * 3)
    # the step sets the resolution: 3 then 6 removed, the flip is read at 6
    coarse = M.MinimalSubsetDeletion(features_in_step=3, perturb_baseline="zero")
    np.testing.assert_allclose(coarse(ReadsRegion(0.5), x, y, a), [6 / 16] * 3)
    # a map that ranks the region last needs (nearly) every pixel
    np.testing.assert_allclose(msd(ReadsRegion(0.5), x, y, -a), [1.0] * 3)


def test_minimal_subset_insertion_equals_the_region_share():
    x, y, a = _region_data()
    msi = M.MinimalSubsetInsertion(features_in_step=1, perturb_baseline="zero")
    # zero canvas: class 1; class 0 comes back once the sum exceeds 3.5 (all 4 region pixels)
    np.testing.assert_allclose(msi(ReadsRegion(3.5), x, y, a), [0.25] * 3)
    np.testing.assert_allclose(msi(ReadsRegion(0.5), x, y, a), [1 / 16] * 3)
    # a canvas that already gets the prediction needs no feature
    np.testing.assert_allclose(msi(ReadsRegion(-1.0), x, y, a), [0.0] * 3)
    # inserting every feature restores the input: last region pixel ranked last -> 1.0
    np.testing.assert_allclose(msi(ReadsRegion(3.5), x, y, -a), [1.0] * 3)


def test_minimal_subset_deletion_never_flipped():
    x, y, a = _region_data()
    keep = ReadsRegion(-1.0)  # class 0 whatever is removed
    np.testing.assert_allclose(M.MinimalSubsetDeletion(perturb_baseline="zero")(keep, x, y, a),
                               [1.0] * 3)
    nan = M.MinimalSubsetDeletion(perturb_baseline="zero", never_flipped="nan")
    s = nan(keep, x, y, a)
    assert np.isnan(s).all() and set(nan.nan_reasons_.values()) == {NO_FLIP}


def test_minimal_subset_compares_with_the_prediction_not_the_label():
    x, _, a = _region_data()
    wrong = torch.ones(3, dtype=torch.long)  # labels that disagree with the prediction
    msd = M.MinimalSubsetDeletion(features_in_step=1, perturb_baseline="zero")
    np.testing.assert_allclose(msd(ReadsRegion(0.5), x, wrong, a), [0.25] * 3)


# ============================================================================ SIC / AIC
def test_interpolation_on_the_grid():
    xs = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64)
    ys = torch.tensor([[0.0, 1.0, 1.0]], dtype=torch.float64)
    np.testing.assert_allclose(interpolate_on_grid(xs, ys, 4), [[0, 0.5, 1, 1, 1]])
    # unsorted points are sorted by x; at equal x the later point wins
    xs = torch.tensor([[0.0, 0.5, 0.5, 1.0]], dtype=torch.float64)
    ys = torch.tensor([[0.0, 0.2, 0.6, 1.0]], dtype=torch.float64)
    np.testing.assert_allclose(interpolate_on_grid(xs, ys, 4), [[0, 0.1, 0.6, 0.8, 1]])
    xs = torch.tensor([[0.0, 0.75, 0.25, 1.0]], dtype=torch.float64)
    ys = torch.tensor([[0.0, 0.9, 0.3, 1.0]], dtype=torch.float64)
    np.testing.assert_allclose(interpolate_on_grid(xs, ys, 4), [[0, 0.3, 0.6, 0.9, 1]])
    # the grid closes at (1, 1), as in the reference code
    np.testing.assert_allclose(interpolate_on_grid(xs, ys * 0.5, 4)[0, -1], 1.0)


def test_aggregate_curves_matches_the_reference_codes_example():
    """The example of the XRAI reference code's aggregation test (two curves on a 5-point
    grid): the mean curve and its trapezoid area; the median of two is the same; an undefined
    image (NaN row) is left out."""
    x = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    curves = np.array([[0.0, 0.2, 0.4, 0.6, 1.0], [0.0, 0.4, 0.4, 0.4, 1.0]])
    want_auc = (0 + 0.3) / 8 + (0.3 + 0.4) / 8 + (0.4 + 0.5) / 8 + (0.5 + 1.0) / 8
    for method in ("mean", "median"):
        curve, auc = aggregate_curves(curves, x, method)
        np.testing.assert_allclose(curve, [0.0, 0.3, 0.4, 0.5, 1.0])
        assert auc == pytest.approx(want_auc)
    with_nan = np.vstack([curves, np.full(5, np.nan)])
    assert aggregate_curves(with_nan, x, "mean")[1] == pytest.approx(want_auc)
    assert np.isnan(aggregate_curves(with_nan[2:], x)[1])


def _textured(n: int = 2, size: int = 16) -> torch.Tensor:
    """Images whose left half is noise (information) and right half flat."""
    g = torch.Generator().manual_seed(1)
    x = torch.full((n, 1, size, size), 0.5)
    x[:, :, :, : size // 2] = torch.rand((n, 1, size, size // 2), generator=g)
    return x


class LeftHalf(nn.Module):
    """logit_0 = 4 * (mean of the left half - 0.25), logit_1 = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 4.0 * (x[:, :, :, : x.shape[-1] // 2].mean((1, 2, 3)) - 0.25)
        return torch.stack([s, torch.zeros_like(s)], 1)


def _sic_by_hand(model, x, a, thresholds, compression, n_points, aic=False):
    """The protocol written out with NumPy, one image at a time, on a zero canvas."""
    out = []
    for i in range(x.shape[0]):
        xi, ai = x[i], a[i, 0].flatten()
        order = torch.argsort(-ai, stable=True)
        g = ai.numel()
        ks = [0] + [math.floor(f * g + 0.5) for f in thresholds] + [g]
        images = []
        for k in ks:
            keep = torch.zeros(g, dtype=torch.bool)
            keep[order[:k]] = True
            images.append(torch.where(keep.reshape(xi.shape[1:]), xi, torch.zeros_like(xi)))
        images = torch.stack(images)
        planes = to_uint8_planes(images, xi.min().double(), xi.max().double())
        sizes = np.array([compressed_size(p, compression) for p in planes], dtype=float)
        with torch.no_grad():
            logits = model(images).double()
        if aic:
            pred = logits.argmax(1).numpy()
            ys = (pred == pred[-1]).astype(float)
        else:
            ys = logits.softmax(1)[:, 0].numpy()
        info = np.clip((sizes[1:-1] - sizes[0]) / (sizes[-1] - sizes[0]), 0, 1)
        score = np.clip((ys[1:-1] - ys[0]) / (ys[-1] - ys[0]), 0, 1)
        score = np.maximum.accumulate(score)
        px = np.concatenate([[0.0], info, [1.0]])
        py = np.concatenate([[0.0], score, [1.0]])
        assert np.all(np.diff(px) > 0)  # np.interp needs increasing x
        grid = np.arange(n_points) / n_points
        curve = np.append(np.interp(grid, px, py), 1.0)
        out.append(np.trapezoid(curve, np.append(grid, 1.0)))
    return np.array(out)


@pytest.mark.parametrize("compression", ["png", "webp"])
def test_sic_by_hand(compression):
    x = _textured()
    # the attribution reveals the textured (informative) half first, column by column
    a = torch.arange(16, 0, -1, dtype=torch.float32).expand(2, 1, 16, 16).clone()
    thresholds = (0.125, 0.25, 0.375)
    metric = M.SIC(thresholds, perturb_baseline="zero", compression=compression, n_points=200)
    got = metric(LeftHalf(), x, torch.zeros(2, dtype=torch.long), a)
    want = _sic_by_hand(LeftHalf(), x, a, thresholds, compression, 200)
    np.testing.assert_allclose(got, want, rtol=1e-6)  # softmax in float32 vs float64
    assert metric.curves_.shape == (2, 201) and metric.curve_x_[-1] == 1.0
    assert np.all((0 <= got) & (got <= 1))


def test_identical_images_are_encoded_once_per_call():
    # thresholds that reveal the same number of pixels (0.5 % and 1 % of 64 both round to
    # 0 and 1, 3 % and 4 % to 2 and 3, ...) and a repeated sample give identical 8-bit images:
    # each is encoded once per call, and the sizes are those of encoding every image
    x = _textured(n=2, size=8)
    a = torch.arange(64, 0, -1, dtype=torch.float32).reshape(1, 1, 8, 8).expand(3, 1, 8, 8)
    thresholds = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.5)

    def run(xs: torch.Tensor) -> tuple[list[bytes], np.ndarray]:
        metric = M.SIC(thresholds, perturb_baseline="zero", compression="png", n_points=100)
        encoded: list[bytes] = []
        encode = metric._encode
        metric._encode = lambda image: encoded.append(image.tobytes()) or encode(image)
        metric(LeftHalf(), xs, torch.zeros(len(xs), dtype=torch.long), a[: len(xs)].clone())
        return encoded, metric.compressed_sizes_

    encoded, sizes = run(x)
    assert len(encoded) == len(set(encoded))  # nothing encoded twice
    ks = [0] + [math.floor(f * 64 + 0.5) for f in thresholds] + [64]
    assert len(encoded) <= 2 * len(set(ks)) < 2 * len(ks)
    again, sizes3 = run(torch.cat([x, x[:1]]))
    assert len(again) == len(encoded)  # the repeated sample costs no encoding
    np.testing.assert_array_equal(sizes3[:2], sizes)
    np.testing.assert_array_equal(sizes3[2], sizes[0])
    # the sizes of encoding every image, by hand (the ranking reveals pixels in raster order)
    images = torch.stack([torch.where((torch.arange(64) < k).reshape(1, 8, 8), x[0], 0.0)
                          for k in ks])
    planes = to_uint8_planes(images, x[0].min().double(), x[0].max().double())
    np.testing.assert_array_equal(sizes[0], [compressed_size(p, "png") for p in planes])


def test_aic_by_hand():
    x = _textured()
    a = torch.arange(16, 0, -1, dtype=torch.float32).expand(2, 1, 16, 16).clone()
    thresholds = (0.125, 0.25, 0.375)
    metric = M.AIC(thresholds, perturb_baseline="zero", compression="png", n_points=200)
    got = metric(LeftHalf(), x, torch.zeros(2, dtype=torch.long), a)
    want = _sic_by_hand(LeftHalf(), x, a, thresholds, "png", 200, aic=True)
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert set(np.unique(metric.normalised_scores_)) <= {0.0, 1.0}


class LeftQuarter(nn.Module):
    """logit_0 = 4 * (mean of the 4 leftmost columns - 0.25), logit_1 = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 4.0 * (x[:, :, :, :4].mean((1, 2, 3)) - 0.25)
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_information_curves_prefer_the_evidence_to_a_distractor():
    """The evidence (columns 0-3) and a distractor (columns 4-7) are equally textured: an
    order that reveals the distractor first spends information without recovering the
    score."""
    x = _textured()
    y = torch.zeros(2, dtype=torch.long)
    jitter = torch.rand((2, 1, 16, 4), generator=torch.Generator().manual_seed(3))
    good = torch.zeros((2, 1, 16, 16))
    good[..., :4] = 2.0 + jitter
    good[..., 4:8] = 1.0 + jitter
    bad = good.clone()
    bad[..., :4], bad[..., 4:8] = good[..., 4:8], good[..., :4]
    for cls in (M.SIC, M.AIC):
        metric = cls(perturb_baseline="zero", compression="png")
        assert np.all(metric(LeftQuarter(), x, y, good) > metric(LeftQuarter(), x, y, bad))


def test_blurred_canvas_is_the_default_and_is_deterministic():
    x = _textured()
    a = torch.arange(16, 0, -1, dtype=torch.float32).expand(2, 1, 16, 16).clone()
    metric = M.SIC(blur_kernel_size=5, blur_sigma=2.0, compression="png")
    s1 = metric(LeftHalf(), x, torch.zeros(2, dtype=torch.long), a)
    s2 = metric.clone()(LeftHalf(), x, torch.zeros(2, dtype=torch.long), a)
    np.testing.assert_array_equal(s1, s2)
    assert not metric.stochastic
    sizes = metric.compressed_sizes_
    assert np.all(sizes[:, 0] < sizes[:, -1])  # the blurred image carries less information


def test_information_curves_undefined_cases_are_nan_with_reasons():
    x = _textured()
    y = torch.zeros(2, dtype=torch.long)
    a = torch.arange(16, 0, -1, dtype=torch.float32).expand(2, 1, 16, 16).clone()

    class Constant(nn.Module):  # the blurred image scores as high as the image
        def forward(self, x):
            return torch.zeros((x.shape[0], 2)) + torch.tensor([2.0, 0.0])

    metric = M.SIC(perturb_baseline="zero", compression="png")
    s = metric(Constant(), x, y, a)
    assert np.isnan(s).all() and set(metric.nan_reasons_.values()) == {NO_SCORE_GAIN}
    # a flat image on a zero canvas: both are one value, nothing to reveal
    flat = torch.full((2, 1, 16, 16), 0.7)
    s = metric(LeftHalf(), flat, y, a)
    assert np.isnan(s).all() and set(metric.nan_reasons_.values()) == {NO_INFORMATION_GAIN}
    # the reference code's filter on confident images
    low = M.SIC(perturb_baseline="zero", compression="png", min_score=0.99)
    assert np.isnan(low(LeftHalf(), x, y, a)).all()


def test_information_curves_are_image_only():
    assert M.SIC.metadata()["modalities"] == ("image",)
    assert M.AIC.metadata()["modalities"] == ("image",)
    with pytest.raises(ValueError, match="SIC"):
        M.SIC()(Linear(W), X, Y, A_RANKED)
    for cls in (M.SIC, M.AIC):
        assert cls.higher_is_better and "Kapishnikov" in cls.paper
        assert "higher is better" in " ".join(cls.__doc__.split()).lower()


# ============================================================================ shared edges
ALL = {
    "LogOdds": M.LogOdds(fraction=0.5, perturb_baseline="zero"),
    "MinimalSubsetDeletion": M.MinimalSubsetDeletion(perturb_baseline="zero"),
    "MinimalSubsetInsertion": M.MinimalSubsetInsertion(perturb_baseline="zero"),
    "SIC": M.SIC(perturb_baseline="zero", compression="png"),
    "AIC": M.AIC(perturb_baseline="zero", compression="png"),
}


@pytest.mark.parametrize("name", list(ALL))
def test_constant_and_nan_maps(name):
    x = _textured(3)
    y = torch.zeros(3, dtype=torch.long)
    a = torch.rand((3, 1, 16, 16), generator=torch.Generator().manual_seed(5))
    a[0] = 0.0
    a[1, 0, 3, 3] = float("nan")
    metric = ALL[name]
    s = metric(LeftHalf(), x, y, a)
    assert np.isnan(s[:2]).all()
    assert metric.nan_reasons_[0] == CONSTANT_MAP
    assert "NaN or Inf" in metric.nan_reasons_[1]
    np.testing.assert_allclose(s[2:], metric(LeftHalf(), x[2:], y[2:], a[2:]), rtol=1e-12)


def test_registered_with_their_metadata():
    frame = ek.metrics.list_metrics("faithfulness").set_index("name")
    for name in ALL:
        assert name in frame.index
        assert frame.loc[name, "higher_is_better"] == (name in ("SIC", "AIC"))
    # check_metric on every declared modality runs in tests/test_conformance.py, which picks
    # every registered metric up; one cheap direct call here
    check_metric(M.MinimalSubsetDeletion(n_steps=4), modality="tabular")


def test_forward_cache_never_mixes_log_odds_predictions_and_scores():
    """Inside one forward cache, metrics that walk the same inputs with other targets (the
    log-odds wrapper) or other labels (the original predictions) get their own rows: every
    score equals the score computed without the cache."""
    x = _textured(3)
    y = torch.zeros(3, dtype=torch.long)
    a = torch.rand((3, 1, 16, 16), generator=torch.Generator().manual_seed(7))
    metrics = [M.PixelFlipping(features_in_step=16, perturb_baseline="zero"),
               M.LogOdds(fraction=0.5, perturb_baseline="zero", positive_only=False),
               M.MinimalSubsetDeletion(features_in_step=16, perturb_baseline="zero"),
               M.AOPC(features_in_step=16, perturb_baseline="zero")]
    alone = [m.clone()(LeftQuarter(), x, y, a) for m in metrics]
    with ek.forward_cache():
        shared = [m.clone()(LeftQuarter(), x, y, a) for m in metrics]
    for m, want, got in zip(metrics, alone, shared, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=type(m).__name__)
