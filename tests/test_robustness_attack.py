"""AdversarialTopKIntersection (Ghorbani, Abid & Zou 2019): known answers computed by hand,
the label rule, the ReLU smoothing, ties and edge cases (the protocol checks are in
tests/test_conformance.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from evalkit.metrics import AdversarialTopKIntersection, get, list_metrics
from evalkit.metrics._ties import CONSTANT_MAP
from evalkit.metrics.robustness.attack import topk_weights
from evalkit.testing import get_fixture

SALIENCY = {"method": "Saliency"}


class _HalfSquaredNorm(nn.Module):
    """Outputs [||x||^2 / 2, 0]: class 0 always wins (x != 0), and the input gradient of the
    class-0 score is x itself, so the Saliency map is |x|."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = 0.5 * (x ** 2).sum(1)
        return torch.stack([s, torch.zeros_like(s)], 1)


class _SumScore(nn.Module):
    """Outputs [sum x, -sum x]: the class follows the sign of the sum."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.sum(1)
        return torch.stack([s, -s], 1)


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(12, 3).eval()


def test_registered_with_its_metadata():
    row = list_metrics().set_index("name").loc["AdversarialTopKIntersection"]
    assert row["family"] == "robustness" and bool(row["higher_is_better"])
    assert bool(row["re_explains"]) and bool(row["needs_gradients"]) and bool(row["stochastic"])
    assert tuple(row["modalities"]) == ("image", "series", "tabular")
    assert "Ghorbani" in row["paper"] and "Fragile" in row["paper"]
    assert get("TopKIntersectionUnderAttack") is AdversarialTopKIntersection
    # deterministic without a random start and random steps
    assert not AdversarialTopKIntersection(random_start=False).stochastic
    assert AdversarialTopKIntersection(random_start=False, attack="random").stochastic


@pytest.mark.parametrize("attack", ["topk", "loss", "random"])
def test_linear_model_map_does_not_move(attack):
    # a linear model's Saliency map |W_y| does not depend on the input: whatever the attack,
    # the top-k set is the same and the score is exactly 1 (Spearman 1)
    model = _linear()
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1])
    metric = AdversarialTopKIntersection(k=4, epsilon=0.1, nr_steps=3, attack=attack, seed=3)
    scores = metric(model, x, y, explain_kwargs=SALIENCY)
    # labels are preserved for a small ball around these inputs
    assert metric.prediction_kept_.all()
    np.testing.assert_array_equal(scores, np.ones(5))
    np.testing.assert_allclose(metric.spearman_, np.ones(5))
    assert (metric.perturbation_linf_ <= 0.1 + 1e-6).all()


def test_known_answer_map_is_the_input():
    # map = |x| for x = [4, 3, 2, 1], k = 2: the top-k attack lowers x0, x1 and raises x2, x3
    # by epsilon = 1.2 (steps of 0.5, clamped to the ball): x* = [2.8, 1.8, 3.2, 2.2], whose
    # top 2 are {2, 0}: intersection {0}, score 1/2; Spearman of [4,3,2,1] and
    # [2.8,1.8,3.2,2.2] (ranks [3,1,4,2]): 1 - 6 * 10 / (4 * 15) = 0
    x = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    metric = AdversarialTopKIntersection(k=2, epsilon=1.2, step_size=0.5, nr_steps=4,
                                         random_start=False, seed=0)
    scores = metric(_HalfSquaredNorm(), x, torch.tensor([0]), explain_kwargs=SALIENCY)
    assert scores[0] == pytest.approx(0.5)
    assert metric.spearman_[0] == pytest.approx(0.0, abs=1e-12)
    assert metric.perturbation_linf_[0] == pytest.approx(1.2, abs=1e-6)
    # the share of |x'| on {0, 1} at every iterate (the sum stays 10): 7, 6, 5, 4.6, 4.6 / 10
    np.testing.assert_allclose(metric.curves_[0], [0.7, 0.6, 0.5, 0.46, 0.46], atol=1e-6)
    np.testing.assert_array_equal(metric.curve_x_, np.arange(5))


def test_iterates_that_change_the_class_are_rejected():
    # sum x = 0.01: the loss attack lowers the class-0 score sum x, so every step flips the
    # class; without a random start no iterate keeps it -> NaN with the reason
    x = torch.tensor([[0.01, 1.0, -1.0, 0.0]])
    metric = AdversarialTopKIntersection(k=2, epsilon=0.3, nr_steps=3, attack="loss",
                                         random_start=False, seed=0)
    with pytest.warns(UserWarning, match="undefined"):
        scores = metric(_SumScore(), x, torch.tensor([0]), a=x.abs())
    assert math.isnan(scores[0])
    assert "changed the predicted class" in metric.nan_reasons_[0]
    assert not metric.prediction_kept_[0] and math.isnan(metric.perturbation_linf_[0])


class _ReLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(6, 16)
        self.relu = nn.ReLU(inplace=True)  # in place, as in torchvision ResNets
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


def test_relu_networks_need_the_softplus_direction():
    # piecewise linear: the gradient of the Saliency share is zero, so without smoothing the
    # top-k attack (no random start) never moves; with softplus it does
    model = _ReLUNet().eval()
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    y = model(x).argmax(1)
    common = {"k": 2, "epsilon": 0.05, "nr_steps": 3, "random_start": False, "seed": 0}
    still = AdversarialTopKIntersection(softplus_beta=None, **common)
    np.testing.assert_array_equal(still(model, x, y, explain_kwargs=SALIENCY), np.ones(4))
    np.testing.assert_array_equal(still.perturbation_linf_, np.zeros(4))
    moved = AdversarialTopKIntersection(softplus_beta=10.0, **common)
    moved(model, x, y, explain_kwargs=SALIENCY)
    assert (moved.perturbation_linf_[moved.prediction_kept_] > 0).all()
    # the model itself is never changed: its ReLU is still a ReLU
    assert isinstance(model.relu, nn.ReLU)
    assert torch.equal(torch.relu(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))


def test_topk_weights_break_ties_by_feature_order():
    w = topk_weights(torch.tensor([[3.0, 1.0, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0],
                                   [0.0, 1.0, 0.0, 1.0]]), 2)
    np.testing.assert_array_equal(w.numpy(), [[1, 1, 0, 0], [1, 1, 0, 0], [0, 1, 0, 1]])


def test_an_unchanged_explanation_with_ties_scores_one():
    # an explanation that ignores the input is left unchanged by any attack; with exact zeros
    # tied at the k-th value (as behind a ReLU) the two identical maps must still have the
    # same top k (ties counted as independent random draws on each map scored about 0.5)
    f = get_fixture("image")
    fixed = torch.zeros_like(f.a)
    fixed.reshape(f.a.shape[0], -1)[:, :3] = torch.tensor([3.0, 2.0, 1.0])

    def explain_fn(model, x, y, **kwargs):
        return fixed[: x.shape[0]].clone()

    metric = AdversarialTopKIntersection(k=8, epsilon=0.1, nr_steps=2, seed=0, attack="random")
    scores = metric(f.model, f.x, f.y, fixed, explain_fn=explain_fn)
    assert np.isfinite(scores).any()
    np.testing.assert_array_equal(scores[np.isfinite(scores)], 1.0)


def test_constant_and_nan_maps_and_bad_inputs():
    f = get_fixture("image")
    metric = AdversarialTopKIntersection(k=4, epsilon=0.1, nr_steps=2, seed=0)
    a = f.a.clone()
    a[0] = 0.0
    a[1, 0, 0, 0] = float("nan")
    with pytest.warns(UserWarning, match="undefined"):
        scores = metric(f.model, f.x, f.y, a)
    assert math.isnan(scores[0]) and metric.nan_reasons_[0] == CONSTANT_MAP
    assert math.isnan(scores[1]) and "NaN" in metric.nan_reasons_[1]
    assert np.isfinite(scores[2:]).all()
    # constant_maps="score" scores the all-zero map (ties counted fractionally)
    keep = AdversarialTopKIntersection(k=4, epsilon=0.1, nr_steps=2, seed=0,
                                       constant_maps="score")
    assert np.isfinite(keep(f.model, f.x[:1], f.y[:1], torch.zeros_like(f.a[:1]))).all()
    x_nan = f.x.clone()
    x_nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError):
        metric(f.model, x_nan, f.y, f.a)
    with pytest.raises(ValueError, match="exceeds"):
        AdversarialTopKIntersection(k=1000)(f.model, f.x, f.y, f.a)
    with pytest.raises(ValueError):
        AdversarialTopKIntersection(attack="fgsm")
    with pytest.raises(ValueError):
        AdversarialTopKIntersection(attack_explainer="IntegratedGradients")
    with pytest.raises(ValueError):
        AdversarialTopKIntersection(clip=(1.0, 0.0))
    tokens = get_fixture("tokens")
    with pytest.raises(ValueError, match="AdversarialTopKIntersection"):
        metric(tokens.model, tokens.x, tokens.y, tokens.a)


def test_clip_keeps_inputs_in_range_and_the_seed_reproduces():
    f = get_fixture("image")
    x = f.x.clamp(-1.0, 1.0)
    metric = AdversarialTopKIntersection(k=8, epsilon=0.5, nr_steps=3, clip=(-1.0, 1.0),
                                         seed=4)
    first = metric(f.model, x, f.y, explain_kwargs=SALIENCY)
    again = AdversarialTopKIntersection(k=8, epsilon=0.5, nr_steps=3, clip=(-1.0, 1.0),
                                        seed=4)(f.model, x, f.y, explain_kwargs=SALIENCY)
    np.testing.assert_array_equal(first, again)
    assert (metric.perturbation_linf_[metric.prediction_kept_] <= 0.5 + 1e-6).all()


def test_the_top_k_attack_beats_random_perturbations_on_the_shapes_model():
    # the paper's finding: a directed top-k attack moves the top-k set much further than random
    # sign perturbations of the same size (ImageNet / CIFAR-10 there; the shipped shapes CNN,
    # a ReLU network with batch norm, here); measured means 0.17 vs 0.36 at these settings
    from evalkit.datasets import make_shapes
    from evalkit.zoo import load_shapes_cnn

    model, data = load_shapes_cnn(), make_shapes(16, seed=3)
    kw = {"method": "Saliency", "reduce_channels": "sum"}
    common = {"k": 0.05, "nr_steps": 5, "clip": (0.0, 1.0), "seed": 0,
              "disable_warnings": True}
    directed = AdversarialTopKIntersection(attack="topk", **common)
    random = AdversarialTopKIntersection(attack="random", **common)
    s_directed = directed(model, data.x, data.y, explain_kwargs=kw)
    s_random = random(model, data.x, data.y, explain_kwargs=kw)
    assert np.nanmean(s_directed) < np.nanmean(s_random) - 0.1
    assert np.nanmean(directed.spearman_) < np.nanmean(random.spearman_)
    # the attack lowers the top-k share of the real map along the way, where some step keeps
    # the class (iterates that changed it are NaN in the curves; this CNN is not adversarially
    # robust, so on some inputs every step of size 2.5 eps / 5 crosses the boundary and the
    # random start x^0 is the only label-preserving iterate)
    steps = directed.curves_[:, 1:]
    kept = ~np.isnan(steps).all(1)
    assert kept.sum() >= 8
    assert (np.nanmin(steps[kept], 1) < directed.curves_[kept, 0]).all()
    # inputs stay in the ball and the valid range
    assert (directed.perturbation_linf_ <= 8 / 255 + 1e-6).all()
