"""Coherency, ADCC (Poppi et al. 2021) and ARCC (Domeniconi et al. 2026): known answers computed
by hand, edge cases, and pytorch-grad-cam 1.5.7's metrics as an oracle where they import."""

from __future__ import annotations

import importlib
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit.metrics import ADCC, ARCC, ROAD, Coherency, get, list_metrics
from evalkit.metrics.faithfulness.adcc import harmonic_mean3


class TwoLogits(nn.Module):
    """Logits (s, -s) with s = sum(w * x): the class-0 probability is sigmoid(2 s)."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone().double(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.w).flatten(1).sum(1)
        return torch.stack([s, -s], 1)


def identity_explainer(model, x, y, **kwargs):
    """The explanation of x is x itself."""
    return x.detach().clone()


FIXED = torch.tensor([[[[0.0, 1.0], [3.0, 2.0]]]], dtype=torch.float64)


def fixed_explainer(model, x, y, **kwargs):
    """A map that does not depend on the input."""
    return FIXED.expand(x.shape[0], -1, -1, -1).clone()


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def ramp() -> torch.Tensor:
    """One 1 x 2 x 2 image with pixels 0, 1, 2, 3 (raster order)."""
    return torch.arange(4, dtype=torch.float64).reshape(1, 1, 2, 2)


# ============================================================================ known answers
def test_harmonic_mean_by_hand():
    one = torch.ones(1, dtype=torch.float64)
    half = one / 2
    np.testing.assert_allclose(harmonic_mean3(one, one, one), [1.0])
    np.testing.assert_allclose(harmonic_mean3(half, half, half), [0.5])
    # 3 / (1 + 2 + 4) = 3 / 7
    np.testing.assert_allclose(harmonic_mean3(one, half, half / 2), [3 / 7])
    # a zero component: the limit 0, not a division by zero
    np.testing.assert_array_equal(harmonic_mean3(one * 0, one, one), [0.0])
    np.testing.assert_array_equal(harmonic_mean3(one * 0, one * 0, one), [0.0])


def test_map_independent_of_the_input_is_fully_coherent():
    x = torch.randn(3, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = TwoLogits(torch.ones(1, 1, 2, 2))
    y = torch.zeros(3, dtype=torch.long)
    a = fixed_explainer(None, x, y)
    scores = Coherency()(model, x, y, a, explain_fn=fixed_explainer)
    np.testing.assert_allclose(scores, 1.0, rtol=1e-12)


def test_identity_map_on_a_linear_model_by_hand():
    x = ramp()
    y = torch.zeros(1, dtype=torch.long)
    model = TwoLogits(torch.ones(1, 1, 2, 2))
    a = identity_explainer(None, x, y)
    # e = x / 3 = (0, 1/3, 2/3, 1); x * e = (0, 1/3, 4/3, 3); centred: (-3, -1, 1, 3) / 2 and
    # (-7, -5, 1, 11) / 6: covariance sum 5, variances 5 and 49 / 9, rho = 3 sqrt(5) / 7
    rho = 3 * math.sqrt(5) / 7
    coherency = (rho + 1) / 2
    np.testing.assert_allclose(Coherency()(model, x, y, a, explain_fn=identity_explainer),
                               [coherency], rtol=1e-12)
    # complexity: mean of e = (0 + 1/3 + 2/3 + 1) / 4 = 1/2
    complexity = 0.5
    # p0 = sigmoid(2 s): s(x) = 6, s(x * e) = 14 / 3
    y0, y1 = sigmoid(12.0), sigmoid(28 / 3)
    drop = (y0 - y1) / y0
    m = ADCC()
    score = m(model, x, y, a, explain_fn=identity_explainer)
    expected = 3 / (1 / coherency + 1 / (1 - complexity) + 1 / (1 - drop))
    np.testing.assert_allclose(score, [expected], rtol=1e-12)
    np.testing.assert_allclose(m.coherency_, [coherency], rtol=1e-12)
    np.testing.assert_allclose(m.complexity_, [complexity], rtol=1e-12)
    np.testing.assert_allclose(m.average_drop_, [drop], rtol=1e-10)
    assert {"coherency", "complexity", "average_drop"} <= m.per_sample_diagnostics_


def test_one_hot_map_complexity_is_one_over_size():
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    model = TwoLogits(torch.ones(1, 3, 4, 5))
    y = torch.zeros(2, dtype=torch.long)
    a = torch.zeros(2, 1, 4, 5, dtype=torch.float64)
    a[0, 0, 1, 2] = 1.0
    a[1, 0, 3, 4] = 7.0

    def one_hot(model, xs, ys, **kwargs):
        return a[: xs.shape[0]].clone()

    m = ADCC()
    m(model, x, y, a, explain_fn=one_hot)
    np.testing.assert_allclose(m.complexity_, [1 / 20, 1 / 20], rtol=1e-12)
    np.testing.assert_allclose(m.coherency_, [1.0, 1.0], rtol=1e-12)


def test_arcc_matches_its_components_and_road():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 6, 6, dtype=torch.float64)
    w = torch.rand(1, 1, 6, 6, dtype=torch.float64)
    model = TwoLogits(w)
    y = torch.zeros(3, dtype=torch.long)

    def grad_times_input(model, xs, ys, **kwargs):
        return (xs * model.w).detach()

    a = grad_times_input(model, x, y)
    m = ARCC(noise=0.0)
    scores = m(model, x, y, a, explain_fn=grad_times_input)
    road = ROAD(percentages=(20, 40, 60, 80), noise=0.0, score="confidence")(model, x, y, a)
    np.testing.assert_allclose(m.road_, road, rtol=1e-12)
    comp = torch.from_numpy(np.stack([m.coherency_, 1 - m.complexity_,
                                      np.clip(2 * road, 0, 1)]))
    np.testing.assert_allclose(scores, harmonic_mean3(*comp).numpy(), rtol=1e-12)
    coh = Coherency()(model, x, y, a, explain_fn=grad_times_input)
    np.testing.assert_allclose(m.coherency_, coh, rtol=1e-12)
    assert m.curves_ is None and m.morf_curves_.shape == (3, 4)


def test_arcc_is_zero_when_road_says_the_map_is_backwards():
    # a map that ranks the pixels the linear model needs least first: removing its "most
    # relevant" pixels raises the score and removing its "least relevant" ones lowers it, so
    # ROAD < 0, clip(2 ROAD, 0, 1) = 0 and the harmonic mean is 0
    torch.manual_seed(1)
    x = torch.rand(2, 1, 6, 6, dtype=torch.float64) + 0.5
    model = TwoLogits(torch.full((1, 1, 6, 6), 0.2))
    y = torch.zeros(2, dtype=torch.long)

    def backwards(model, xs, ys, **kwargs):
        return -xs.detach()

    m = ARCC(noise=0.0)
    scores = m(model, x, y, backwards(model, x, y), explain_fn=backwards)
    assert (m.road_ < 0).all()
    np.testing.assert_array_equal(scores, [0.0, 0.0])


# ============================================================================ edge cases
@pytest.mark.parametrize("cls", [Coherency, ADCC, ARCC])
def test_constant_zero_and_nan_maps_are_nan_with_a_reason(cls):
    torch.manual_seed(2)
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    model = TwoLogits(torch.rand(1, 1, 4, 4))
    y = torch.zeros(4, dtype=torch.long)
    a = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    a[1] = 0.0
    a[2] = 5.0
    a[3, 0, 0, 0] = float("nan")

    def given(model, xs, ys, **kwargs):
        return torch.rand(xs.shape, dtype=torch.float64)

    m = cls(noise=0.0) if cls is ARCC else cls()
    with pytest.warns(ek.UndefinedScoreWarning):
        s = m(model, x, y, a, explain_fn=given)
    assert np.isfinite(s[0])
    assert np.isnan(s[1:]).all()
    assert "constant" in m.nan_reasons_[1] and "constant" in m.nan_reasons_[2]
    assert "NaN" in m.nan_reasons_[3]


def test_constant_or_nan_re_explanation_is_nan_with_a_reason():
    torch.manual_seed(3)
    x = torch.rand(2, 1, 3, 3, dtype=torch.float64)
    model = TwoLogits(torch.rand(1, 1, 3, 3))
    y = torch.zeros(2, dtype=torch.long)
    a = torch.rand(2, 1, 3, 3, dtype=torch.float64)

    def broken(model, xs, ys, **kwargs):
        out = torch.zeros(xs.shape, dtype=torch.float64)
        out[1, 0, 0, 0] = float("nan")
        return out

    m = Coherency()
    with pytest.warns(ek.UndefinedScoreWarning):
        s = m(model, x, y, a, explain_fn=broken)
    assert np.isnan(s).all()
    assert "masked input is constant" in m.nan_reasons_[0]
    assert "NaN or Inf" in m.nan_reasons_[1]


def test_metadata_and_registration():
    names = set(list_metrics("faithfulness")["name"])
    assert {"Coherency", "ADCC", "ARCC"} <= names
    for name in ("Coherency", "ADCC", "ARCC"):
        meta = get(name).metadata()
        assert meta["higher_is_better"] and meta["re_explains"]
        assert "image" in meta["modalities"]
    assert "Poppi" in ADCC.paper and "Domeniconi" in ARCC.paper
    assert ARCC().stochastic and not ARCC(noise=0.0).stochastic
    assert not ADCC().stochastic


# ============================================================================ oracle
ORACLE = Path(__file__).resolve().parents[1] / ".oracle" / "gradcam"


def _gradcam_arcc_module():
    """pytorch-grad-cam 1.5.7's ``metrics/arcc.py``, imported from ``.oracle/gradcam`` with the
    package ``__init__`` side-stepped (it imports torchvision, which does not import beside
    this torch); ``base_cam`` is only a type hint there and gets a stand-in module."""
    pkg_dir = ORACLE / "pytorch_grad_cam"
    if not (pkg_dir / "metrics" / "arcc.py").exists():
        # an optional oracle outside the dev extra (its package pulls another torch): absent
        # in CI, so the skip wording is not one of a missing dev tool (tests/conftest.py)
        pytest.skip("the optional pytorch-grad-cam 1.5.7 oracle is absent from .oracle/gradcam "
                    "(pip install --no-deps --target .oracle/gradcam grad-cam==1.5.7 "
                    "opencv-python-headless)")
    saved = {k: v for k, v in sys.modules.items() if k.startswith("pytorch_grad_cam")}
    sys.path.insert(0, str(ORACLE))
    try:
        pytest.importorskip("cv2", reason="opencv is needed by pytorch-grad-cam's metrics")
        pkg = types.ModuleType("pytorch_grad_cam")
        pkg.__path__ = [str(pkg_dir)]
        base = types.ModuleType("pytorch_grad_cam.base_cam")
        base.BaseCAM = object
        metrics = types.ModuleType("pytorch_grad_cam.metrics")
        metrics.__path__ = [str(pkg_dir / "metrics")]
        sys.modules.update({"pytorch_grad_cam": pkg, "pytorch_grad_cam.base_cam": base,
                            "pytorch_grad_cam.metrics": metrics})
        arcc = importlib.import_module("pytorch_grad_cam.metrics.arcc")
        road = importlib.import_module("pytorch_grad_cam.metrics.road")
    finally:
        sys.path.remove(str(ORACLE))
        for k in [k for k in sys.modules if k.startswith("pytorch_grad_cam")]:
            del sys.modules[k]
        sys.modules.update(saved)
    return arcc, road


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # NumPy 2 on its torch arrays
def test_against_pytorch_grad_cam_arcc(monkeypatch):
    arcc, road = _gradcam_arcc_module()
    # deterministic imputation on both sides (pytorch-grad-cam draws its noise from torch's
    # global generator; evalkit from per-sample keys)
    monkeypatch.setattr(road.NoisyLinearImputer.__init__, "__defaults__",
                        (0.0, road.neighbors_weights))
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3)).eval()
    # 10 x 10 pixels: pytorch-grad-cam's percentile thresholds remove exactly 20, 40, 60 and
    # 80 pixels, as evalkit's floor(100 p / 100)
    x = torch.randn(3, 3, 10, 10)
    y = model(x).argmax(1)

    def cam_of(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """Gradient x input of the class probability, summed over channels, min-max: a
        CAM-like map in [0, 1] (N, H, W) without ties (a ReLU would tie its zeros, which the
        two libraries' thresholds split differently)."""
        xs = xs.detach().clone().requires_grad_(True)
        p = torch.softmax(model(xs), 1).gather(1, ys[:, None]).sum()
        (g,) = torch.autograd.grad(p, xs)
        cam = (g * xs).sum(1).detach()
        lo = cam.flatten(1).amin(1)[:, None, None]
        hi = cam.flatten(1).amax(1)[:, None, None]
        return (cam - lo) / (hi - lo)

    def explain_fn(model, xs, ys, **kwargs):
        return cam_of(xs, ys)[:, None]

    def base_method(input_tensor, targets):
        return cam_of(input_tensor, y[: input_tensor.shape[0]]).numpy()

    targets = [lambda out, c=int(c): torch.softmax(out, -1)[c] for c in y]
    cams = cam_of(x, y).numpy()
    a = torch.from_numpy(cams)[:, None]

    ref_complexity = arcc.Complexity()(cams)
    ref_coherency = arcc.Coherency()(x, cams, targets, model, base_method)
    ref_arcc = arcc.ARCC(base_method, road_percentiles=[20, 40, 60, 80])(x, cams, targets, model)
    ref_road = road.ROADCombined(percentiles=[20, 40, 60, 80])(x, cams, targets, model)

    m = ARCC(noise=0.0)
    ours = m(model, x, y, a, explain_fn=explain_fn)
    np.testing.assert_allclose(m.complexity_, ref_complexity, rtol=1e-5)
    np.testing.assert_allclose(m.coherency_, ref_coherency, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m.road_, ref_road, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ours, ref_arcc, rtol=1e-4, atol=1e-6)
    coh = Coherency()(model, x, y, a, explain_fn=explain_fn)
    np.testing.assert_allclose(coh, ref_coherency, rtol=1e-5, atol=1e-6)
