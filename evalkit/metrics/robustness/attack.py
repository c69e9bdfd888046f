"""Top-k intersection under a label-preserving adversarial attack (Ghorbani, Abid & Zou 2019).

The attack
----------
Every sample gets a bounded, seeded projected-gradient attack on its input: iterates
x^0, x^1, ..., x^P in the L-infinity ball of radius ``epsilon`` around x,

    x^{p+1} = proj_ball(x^p - step_size * sign(g(x^p)))    (then clipped to ``clip``)

with x^0 = x + U(-epsilon, epsilon) drawn from the sample's key (``random_start``; evalkit's
per-sample keys, never a global generator) and g the gradient of what the attack minimises:

* ``attack="topk"`` (default, the paper's top-k attack): the share of the explanation's mass
  that stays on the original top-k features, sum_{i in top-k(a)} m_i(x') / sum_i m_i(x'), where
  m(x') = |features of the differentiable explainer's map at x'| (``attack_explainer``:
  ``"Saliency"`` |dS/dx|, ``"InputXGradient"`` x * dS/dx or ``"Gradient"`` dS/dx, computed
  with ``create_graph=True``; S is the explained score, the model's target for ``y``). Its
  gradient needs a double backward through the model. The share, not the raw top-k mass, is
  minimised, so that shrinking the whole map does not count as moving it.
* ``attack="loss"``: the explained score S(x') itself (a first-order, label-preserving PGD
  that walks towards the decision boundary, where explanations tend to change); for models
  that cannot be differentiated twice.
* ``attack="random"``: random sign steps from the sample's key (no gradient; a baseline that
  says how much of the change a directed attack adds).

**ReLU networks** are piecewise linear: their Hessian is zero almost everywhere, so the gradient
of any gradient-based map with respect to the input vanishes and the top-k attack would not
move. As in the work that followed the paper (Dombrowski et al., "Explanations can be
manipulated and geometry is to blame", NeurIPS 2019), the attack *direction* is computed with
every ReLU replaced by softplus(beta x) / beta (``softplus_beta``, default 10; None keeps the
ReLUs). The replacement intercepts ``torch.relu``, ``torch.nn.functional.relu`` and
``nn.ReLU`` calls through a :class:`torch.overrides.TorchFunctionMode` while the direction is
computed; the model is never modified, and the label check, the choice of the iterate and the
final explanations use the unmodified model.

**Label preservation** (the paper's rejection rule): each iterate's predicted class is checked
with the unmodified model (the wrapper's target: ``predict`` and ``agree``). Of the iterates
that keep the predicted class of x, the attack returns the one that minimises its objective
(``"topk"``: the smallest top-k share of the real map; ``"loss"``: the lowest score;
``"random"``: the last one). x^0 counts as an iterate only with a random start (without it,
x^0 is x itself). A sample for which no iterate keeps the predicted class is NaN with a reason,
never silently scored on the unattacked input.

The score
---------
The attacked input x* is explained again with the user's explain function (the metric's
``explain_fn``, preprocessed like ``a``), and the score is |top-k(a) ∩ top-k(a*)| / k over the
features of the modality (pixels with the channels summed, time steps, columns). Tied values
are ranked in the order of the features (the lower index first), the same order on both maps,
so that an explanation the attack leaves unchanged scores 1 whatever its ties (a map with
exact zeros, e.g. behind a ReLU, ties many features at the k-th value; counting such ties
as independent random draws on the two maps scored an unchanged map about 0.5). An
explanation of x* that is constant keeps the first k features in that order. A constant
``a`` is NaN with a reason (:mod:`evalkit.metrics._ties`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ... import _rng
from ..._validation import check_bool, check_option, check_scalar, check_top_k
from ...models import ModelWrapper
from .._ties import RanksFeatures
from ..base import MetricBatch, explain_call_rows
from ..similarity import spearman

__all__ = ["ATTACKS", "ATTACK_EXPLAINERS", "AdversarialTopKIntersection"]

ATTACKS = ("topk", "loss", "random")
ATTACK_EXPLAINERS = ("Saliency", "InputXGradient", "Gradient")

#: rng streams of the random start and of the random sign steps
_START_STREAM = 0x47_4B_53  # "GKS"
_SIGN_STREAM = 0x47_4B_52  # "GKR"


class _SoftplusForReLU(TorchFunctionMode):
    """Inside this mode every ReLU call returns softplus(beta x) / beta (a new tensor, also for
    the in-place variants): a smooth stand-in whose Hessian is not zero."""

    _RELUS = frozenset({torch.relu, torch.relu_, F.relu, torch.Tensor.relu,
                        torch.Tensor.relu_})

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._RELUS:
            return F.softplus(args[0], beta=self.beta)
        return func(*args, **kwargs)


@contextmanager
def _smoothed(beta: float | None) -> Iterator[None]:
    if beta is None:
        yield
        return
    with _SoftplusForReLU(beta):
        yield


def topk_weights(values: torch.Tensor, k: int) -> torch.Tensor:
    """(N, F) float64: 1 for the ``k`` largest values of each row, 0 elsewhere. Tied values are
    ranked by feature index (the lower first: a stable descending sort), the same order for
    every map, so two identical maps have the same top-k set whatever their ties."""
    order = torch.sort(values.to(torch.float64), dim=1, descending=True, stable=True).indices
    out = torch.zeros(values.shape, dtype=torch.float64, device=values.device)
    return out.scatter_(1, order[:, :k], 1.0)


class AdversarialTopKIntersection(RanksFeatures):
    """Top-k intersection under a label-preserving adversarial attack (Ghorbani, Abid & Zou
    2019). **Higher is better** (1: the k most important features survive the attack).

    Each input is attacked in an L-infinity ball of radius ``epsilon`` by a seeded projected
    gradient attack that moves its explanation's mass off the original top-k features while the
    predicted class is kept (the paper's top-k attack; see the module docstring for the
    iteration, the ReLU smoothing and the label rule), the attacked input is explained again
    with the metric's explain function, and the score is the share of the original top-k
    features that are still in the top k: |top-k(a) ∩ top-k(a_adv)| / k. Tied values are
    ranked by feature index in both maps, so an explanation the attack leaves unchanged
    scores 1 whatever its ties.

    Parameters
    ----------
    k:
        Features in the top set: an int, or a fraction of the features (float in (0, 1],
        rounded half up, at least 1). Default 0.02, the paper's 1,000 of 224 x 224 ImageNet
        pixels. An int larger than the number of features is an error.
    epsilon:
        Radius of the L-infinity ball, in the units of ``x`` (default 8/255: the paper's
        bound of 8 on 0-255 pixel values, for inputs scaled to [0, 1]).
    nr_steps:
        Attack iterations P (default 10).
    step_size:
        Size of each signed step; None (default) uses 2.5 * epsilon / nr_steps (Madry et
        al.'s rule: the attack can cross the ball and come back).
    attack:
        ``"topk"`` (default: the paper's objective, double backward through
        ``attack_explainer``), ``"loss"`` (first-order PGD that lowers the explained score,
        for models without second derivatives) or ``"random"`` (random sign steps).
    attack_explainer:
        The differentiable map the top-k attack differentiates: ``"Saliency"`` (default),
        ``"InputXGradient"`` or ``"Gradient"``. Only the attack uses it; the score compares
        explanations of the metric's explain function.
    softplus_beta:
        ReLUs become softplus(beta x) / beta while the attack direction is computed (default
        10); None keeps them (a ReLU network's top-k attack then does not move).
    random_start:
        Start from x + U(-epsilon, epsilon), drawn from the sample's key (default True).
    clip:
        ``(low, high)``: keep the attacked inputs within the valid data range (e.g. (0, 1)
        for images); None (default): only the ball.

    ``constant_maps`` (keyword, from the metrics that rank features): ``"nan"`` (default) or
    ``"score"`` for a constant ``a``.

    After a call: ``spearman_`` (N,), the Spearman rank correlation between the original and
    the attacked explanation's features (the paper's second measure; NaN where the sample is
    NaN or a map is constant); ``prediction_kept_`` (N,) bool, whether a label-preserving
    iterate was found; ``perturbation_linf_`` (N,), ||x_adv - x||_inf; for ``attack="topk"``
    ``curves_`` (N, P + 1): the top-k share of the real map at every iterate (NaN where the
    iterate changed the prediction), ``curve_x_`` the iteration numbers.

    Scores depend on the seed through the random start (and the random steps of
    ``attack="random"``); with ``random_start=False`` the gradient attacks are deterministic.
    Needs a differentiable model (torch, or a callable on tensors); a constant or all-zero ``a``
    is NaN with a reason.

    Reference: A. Ghorbani, A. Abid, J. Zou, "Interpretation of Neural Networks is Fragile",
    AAAI 2019.
    """

    family = "robustness"
    higher_is_better = True
    needs_gradients = True
    re_explains = True
    stochastic = True
    default_abs = True
    default_normalise = False
    default_softmax = False
    paper = "Ghorbani, Abid & Zou, Interpretation of Neural Networks is Fragile, AAAI 2019"
    aliases = ("TopKIntersectionUnderAttack",)
    modalities = ("image", "series", "tabular")

    def __init__(
        self,
        k: int | float = 0.02,
        epsilon: float = 8 / 255,
        nr_steps: int = 10,
        step_size: float | None = None,
        attack: str = "topk",
        attack_explainer: str = "Saliency",
        softplus_beta: float | None = 10.0,
        random_start: bool = True,
        clip: tuple[float, float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.k = check_top_k(k)
        self.epsilon = check_scalar("epsilon", epsilon, (int, float), min_val=0)
        self.nr_steps = check_scalar("nr_steps", nr_steps, int, min_val=1)
        self.step_size = check_scalar("step_size", step_size, (int, float), min_val=0,
                                      include_min=False, allow_none=True)
        self.attack = check_option("attack", attack, ATTACKS)
        self.attack_explainer = check_option("attack_explainer", attack_explainer,
                                             ATTACK_EXPLAINERS)
        self.softplus_beta = check_scalar("softplus_beta", softplus_beta, (int, float),
                                          min_val=0, include_min=False, allow_none=True)
        self.random_start = check_bool("random_start", random_start)
        if clip is not None:
            if len(clip) != 2 or not all(isinstance(c, int | float) for c in clip) or (
                    clip[0] >= clip[1]):
                raise ValueError(f"`clip` must be None or (low, high) with low < high; got "
                                 f"{clip!r}.")
            clip = (float(clip[0]), float(clip[1]))
        self.clip = clip

    @classmethod
    def conformance_params(cls) -> dict[str, Any]:
        """Cheap settings for the conformance checks: a few steps and a ball large enough that
        the tiny fixtures' top sets move (and scores change with the seed)."""
        return {"k": 0.25, "epsilon": 0.5, "nr_steps": 3}

    def _random_sources(self) -> dict[str, Any]:
        return {"random start": self.random_start, "random steps": self.attack == "random"}

    # ------------------------------------------------------------------ helpers
    def _resolve_k(self, n_features: int) -> int:
        if isinstance(self.k, float):
            return max(1, math.floor(self.k * n_features + 0.5))
        if self.k > n_features:
            raise ValueError(f"{type(self).__name__}: k={self.k} exceeds the {n_features} "
                             "features per sample; use a smaller k or a fraction such as k=0.1.")
        return self.k

    def _step_size(self) -> float:
        if self.step_size is not None:
            return float(self.step_size)
        return 2.5 * float(self.epsilon) / self.nr_steps

    def _project(self, x_new: torch.Tensor, low: torch.Tensor, high: torch.Tensor
                 ) -> torch.Tensor:
        """``x_new`` clamped to the ball [low, high] = [x0 - eps, x0 + eps] (the bounds made
        once per chunk), then to ``clip``."""
        out = torch.clamp(x_new, low, high)  # min(max(x_new, low), high) in one pass
        if self.clip is not None:
            out = out.clamp(self.clip[0], self.clip[1])
        return out

    def _map(self, model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None,
             create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Model outputs and the differentiable explainer's map at ``x`` (requires grad)."""
        outputs = model(x)
        score = model.select(outputs, y)
        (grad,) = torch.autograd.grad(score.sum(), x, create_graph=create_graph)
        if self.attack_explainer == "Saliency":
            expl = grad.abs()
        elif self.attack_explainer == "InputXGradient":
            expl = x * grad
        else:
            expl = grad
        return outputs, expl

    def _share(self, batch: MetricBatch, expl: torch.Tensor, weights: torch.Tensor
               ) -> torch.Tensor:
        """The share of |map| on the original top-k features (differentiable), (S,)."""
        mass = batch.modality.feature_maps(expl)[0]
        if self.attack_explainer != "Saliency":  # |dS/dx| and its channel sums are >= 0
            mass = mass.abs()
        total = mass.sum(1)
        inside = (mass * (weights if weights.dtype == mass.dtype
                          else weights.to(mass.dtype))).sum(1)
        return inside / torch.where(total > 0, total, torch.ones_like(total))

    def _objective(self, batch: MetricBatch, model: ModelWrapper, x: torch.Tensor,
                   y: torch.Tensor | None, weights: torch.Tensor, *, with_grad: bool,
                   smooth: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(outputs, objective (S,), gradient of the objective or None) at ``x``."""
        xg = x.detach().requires_grad_(True)
        with _smoothed(self.softplus_beta if smooth else None):
            if self.attack == "topk":
                outputs, expl = self._map(model, xg, y, create_graph=with_grad)
                objective = self._share(batch, expl, weights)
            else:
                outputs = model(xg)
                objective = model.select(outputs, y)
            grad = None
            if with_grad:
                if not objective.requires_grad:  # e.g. a ReLU network's saliency share
                    grad = torch.zeros_like(xg)
                else:
                    try:
                        (grad,) = torch.autograd.grad(objective.sum(), xg, allow_unused=True)
                    except RuntimeError as exc:
                        raise RuntimeError(
                            f"{type(self).__name__}: the top-k attack differentiates the "
                            f"{self.attack_explainer} map (a double backward), which this model "
                            f"does not support ({exc}); pass attack='loss' for a first-order "
                            "attack.") from exc
                    if grad is None:
                        grad = torch.zeros_like(xg)
        return outputs.detach(), objective.detach().to(torch.float64), grad

    def _attack(self, batch: MetricBatch, idx: torch.Tensor, weights: torch.Tensor,
                pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attack the samples ``idx``: (x_adv, found (S,) bool, curve (S, P + 1))."""
        model = batch.require_model()
        target = batch.target
        x0 = batch.x[idx]
        y = None if batch.y is None else batch.y[idx]
        keys = batch.keys[idx]
        s = x0.shape[0]
        shape = tuple(x0.shape[1:])
        eps = float(self.epsilon)
        alpha = self._step_size()
        low, high = x0 - eps, x0 + eps
        if x0.is_floating_point():  # the maps' dtype: converted once, not at every iterate
            weights = weights.to(x0.dtype)
        if self.random_start:
            start = _rng.uniform(keys, shape, low=-eps, high=eps, dtype=x0.dtype,
                                 stream=_START_STREAM).to(x0.device)
            x_cur = self._project(x0 + start, low, high)
        else:
            x_cur = self._project(x0.clone(), low, high)
        signs = None
        if self.attack == "random":
            u = _rng.uniform(keys, (self.nr_steps, *shape), dtype=x0.dtype,
                             stream=_SIGN_STREAM).to(x0.device)
            signs = torch.where(u < 0.5, -torch.ones_like(u), torch.ones_like(u))
        smooth = self.softplus_beta is not None and self.attack == "topk"
        best = x0.clone()
        best_obj = torch.full((s,), math.inf, dtype=torch.float64, device=x0.device)
        found = torch.zeros(s, dtype=torch.bool, device=x0.device)
        curve = torch.full((s, self.nr_steps + 1), math.nan, dtype=torch.float64,
                           device=x0.device)
        for p in range(self.nr_steps + 1):
            last = p == self.nr_steps
            need_grad = not last and self.attack != "random"
            # the iterate is judged with the unmodified model ...
            outputs, obj, grad = self._objective(
                batch, model, x_cur, y, weights, with_grad=need_grad and not smooth,
                smooth=False)
            if need_grad and smooth:  # ... and the direction taken on the smoothed one
                _, _, grad = self._objective(batch, model, x_cur, y, weights, with_grad=True,
                                             smooth=True)
            kept = target.agree(target.predict(outputs), pred)
            if p > 0 or self.random_start:
                rank = obj if self.attack != "random" else torch.full_like(obj, -float(p))
                better = kept & (rank < best_obj)
                best = torch.where(_per_sample(better, x0), x_cur, best)
                best_obj = torch.where(better, rank, best_obj)
                found |= kept
            curve[:, p] = torch.where(kept, obj, torch.full_like(obj, math.nan))
            if last:
                break
            if signs is not None:
                moved = x_cur + alpha * signs[:, p]
            else:  # x - alpha * sign(g): the same values as x + alpha * (-sign(g))
                moved = x_cur.sub(torch.sign(grad), alpha=alpha)
            x_cur = self._project(moved, low, high).detach()
        return best, found, curve

    # ------------------------------------------------------------------ the metric
    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        model = batch.require_model()
        if not model.differentiable:
            raise TypeError(f"{type(self).__name__} attacks the input with gradients, but "
                            f"{type(model).__name__} is not differentiable; use a torch model "
                            "or a callable on tensors.")
        assert batch.a is not None
        n = batch.n
        feats_a, _ = batch.modality.feature_maps(batch.a)
        k = self._resolve_k(int(feats_a.shape[1]))
        w_a = topk_weights(feats_a, k)
        target = batch.target
        pred = target.predict(model.predict(batch.x))

        x_adv = batch.x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=batch.device)
        curves = torch.full((n, self.nr_steps + 1), math.nan, dtype=torch.float64,
                            device=batch.device)
        # small rows (a table's): the chunks of the re-explanations (explain_call_rows)
        size = explain_call_rows(batch, batch.x) or model.resolve_batch_size(batch.x,
                                                                              batch.batch_size)
        with model.evaluation(), torch.enable_grad():
            for start in range(0, n, size):
                idx = torch.arange(start, min(n, start + size), device=batch.device)
                adv, ok, curve = self._attack(batch, idx, w_a[idx], pred[idx])
                x_adv[idx] = adv
                found[idx] = ok
                curves[idx] = curve
        batch.set_nan(~found, "every attack iterate changed the predicted class (the paper "
                              "rejects such samples)")

        score = torch.full((n,), math.nan, dtype=torch.float64, device=batch.device)
        rho = torch.full((n,), math.nan, dtype=torch.float64, device=batch.device)
        rows = torch.nonzero(found).flatten()
        if rows.numel():
            y_rows = None if batch.y is None else batch.y[rows]
            raw = self._run_explain(batch, x_adv[rows], y_rows)
            finite = torch.isfinite(raw.reshape(raw.shape[0], -1)).all(1).to(batch.device)
            a_adv = self._preprocess_attributions(batch, raw, x_adv[rows], flag_nan=False)
            if a_adv.shape[1:] != batch.a.shape[1:]:
                raise ValueError(
                    f"{type(self).__name__}: the explain function returns attributions of shape "
                    f"{tuple(a_adv.shape[1:])} per input but `a` has {tuple(batch.a.shape[1:])};"
                    " compute `a` with the same explain function (or leave it None).")
            feats_adv, _ = batch.modality.feature_maps(a_adv)
            inter = (w_a[rows] * topk_weights(feats_adv, k)).sum(1) / k
            nan = torch.full_like(inter, math.nan)
            score[rows] = torch.where(finite, inter, nan)
            rho[rows] = torch.where(finite, spearman(feats_a[rows], feats_adv), nan)
            bad = torch.zeros(n, dtype=torch.bool, device=batch.device)
            bad[rows] = ~finite
            batch.set_nan(bad, "the explanation of the attacked input contains NaN or Inf")
        linf = (x_adv - batch.x).reshape(n, -1).abs().amax(1).to(torch.float64)
        batch.record("spearman", rho, per_sample=True)
        batch.record("prediction_kept", found, per_sample=True)
        batch.record("perturbation_linf", torch.where(found, linf, torch.full_like(linf, math.nan)),
                     per_sample=True)
        if self.attack == "topk":
            batch.set_curves(curves, torch.arange(self.nr_steps + 1))
        return score


def _per_sample(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample bool (S,) shaped to broadcast against a batch ``like`` (S, ...)."""
    return mask.reshape(-1, *([1] * (like.ndim - 1)))

