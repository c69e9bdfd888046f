"""Log-odds (Shrikumar et al. 2017): the change of the target class's log-odds when the
features the explanation ranks highest are erased."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..._validation import check_bool, check_scalar
from ...models.targets import BinaryTarget, ClassTarget
from ...perturb import make_grouping, make_imputer
from .._removal import Ordering, RemovalPlan, order_groups, window_scores
from .._ties import RanksFeatures
from ..base import MetricBatch
from ._views import batch_view
from .rationales import FollowsRemovalPlan

#: the NaN reason of a sample whose class is the ``versus`` class
SAME_CLASS = "the scored class is the `versus` class: their log-odds is 0 whatever is erased"


class ClassLogOdds(ClassTarget):
    """The log-odds of class ``y[i]``, computed in float64 from the outputs' log-probabilities
    (``log_softmax`` of logits when ``from_logits``, else the log of the outputs, which are
    then probabilities): against every other class, ``log(p_y / (1 - p_y))``
    (``versus=None``), or against one class c, ``log(p_y / p_c)`` (``versus=c``).

    From logits this is ``z_y - logsumexp_{j != y} z_j`` (resp. ``z_y - z_c``), exact where a
    float32 probability would round to 1."""

    def __init__(self, versus: int | None = None, from_logits: bool = True) -> None:
        self.versus = versus
        self.from_logits = from_logits

    def __call__(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if y is None:
            raise ValueError("ClassLogOdds needs class labels `y`, one per sample.")
        if outputs.ndim != 2:
            raise ValueError(f"ClassLogOdds expects outputs of shape (N, n_classes); got "
                             f"{tuple(outputs.shape)}.")
        values = outputs.to(torch.float64)
        logp = values.log_softmax(1) if self.from_logits else values.log()
        idx = y.to(device=outputs.device, dtype=torch.long).reshape(-1, 1)
        own = logp.gather(1, idx).squeeze(1)
        if self.versus is None:
            rest = logp.scatter(1, idx, -math.inf).logsumexp(1)
        else:
            rest = logp[:, self.versus]
        return own - rest


class LogOdds(FollowsRemovalPlan, RanksFeatures):
    """Log-odds (Shrikumar, Greenside & Kundaje 2017, the DeepLIFT MNIST experiment): the
    change of the target class's log-odds when the ``fraction`` of features the explanation
    ranks highest is erased. **Lower is better** (more negative).

        LogOdds(x) = LO(x with the top-k features erased) - LO(x),   k = round(fraction * G),

    with LO the log-odds of class y: against all other classes, ``log(p_y / (1 - p_y))``
    (``versus=None``, default), or against one class c, ``log(p_y / p_c)`` (``versus=c``, the
    paper's "log-odds score between classes c_o and c_t"). The score is negative when erasing
    the top features removes evidence for the class, and a faithful explanation makes it as
    negative as possible (a score near 0 or positive means the erased features did not carry
    the class).

    The paper erases up to 157 pixels (20% of a 28x28 image, ``fraction=0.2``) among those with
    a positive attribution (``positive_only=True``: k is at most the number of features whose
    attribution is > 0; a map with none erases nothing and scores 0); its ranking is the
    difference of the explanations of the two classes, so pass ``a = a_{c_o} - a_{c_t}`` with
    ``versus=c_t`` to reproduce it. Features are groups of ``grouping`` (pixels by default;
    token ids use the mask token, as in :class:`AOPC`), erased with ``perturb_baseline``
    (default ``"black"``, the per-sample minimum: MNIST's black background); k rounds half up
    (157 of 784 at 20%).

    The probabilities come from the call's softmax: with the softmax on (default) LO is
    computed from the logits (``log_softmax``, in float64), so confident predictions whose
    float32 probability rounds to 1 keep a finite log-odds; with ``softmax=False`` the model's
    outputs are taken as probabilities. For a binary classifier with one decision value
    (``target=BinaryTarget()``) the score of class y is already its log-odds (for a logistic
    model) and is used as it is. Other targets are refused. ``curves_`` is not set; the
    log-odds before and after are kept in ``log_odds_`` (N, 2) and the number of features
    erased in ``n_erased_``.

    Reference: A. Shrikumar, P. Greenside, A. Kundaje, "Learning Important Features Through
    Propagating Activation Differences", ICML 2017.
    """

    family = "faithfulness"
    higher_is_better = False
    default_softmax = True
    modalities = ("image", "series", "tabular", "tokens")
    paper = ("Shrikumar, Greenside & Kundaje, Learning Important Features Through Propagating "
             "Activation Differences, ICML 2017")

    def __init__(self, fraction: float = 0.2, versus: int | None = None,
                 perturb_baseline: Any = "black", *, positive_only: bool = True,
                 grouping: Any = "pixels", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fraction = check_scalar("fraction", fraction, (int, float), min_val=0, max_val=1,
                                     include_min=False)
        self.versus = check_scalar("versus", versus, int, min_val=0, allow_none=True)
        self.perturb_baseline = perturb_baseline
        self.positive_only = check_bool("positive_only", positive_only)
        self.grouping = grouping
        self._plan = RemovalPlan(make_grouping(grouping), make_imputer(perturb_baseline))

    def _log_odds_batch(self, batch: MetricBatch) -> MetricBatch:
        """A view of the batch whose target score is the log-odds (see the class docstring)."""
        wrapper = batch.require_model()
        target = wrapper.target
        if isinstance(target, BinaryTarget):
            if self.versus is not None:
                raise ValueError("LogOdds: a binary classifier has one other class; `versus` "
                                 "applies to outputs with a class axis (ClassTarget).")
            return batch
        if type(target) is not ClassTarget:
            raise ValueError(f"LogOdds needs a classifier's class probabilities (ClassTarget "
                             f"or BinaryTarget); the model's target is {target!r}.")
        if self.versus is not None:
            n_classes = wrapper.output_shape(batch.x)[0]
            if self.versus >= n_classes:
                raise ValueError(f"LogOdds: `versus`={self.versus} is not a class of the model "
                                 f"(it outputs {n_classes} classes).")
            if batch.y is not None:
                batch.set_nan(batch.y.to(torch.long) == self.versus, SAME_CLASS)
        view = wrapper.with_options(
            softmax=False, target=ClassLogOdds(self.versus, from_logits=bool(wrapper.softmax)))
        return batch_view(batch, model=view)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        scored = self._log_odds_batch(batch)
        ordering = order_groups(batch, self._plan.grouping, "morf")
        k, hi = self._erased(ordering, batch.device)
        # the deletion curve at 0 and k groups (removal_curve's windows, without its
        # fractions, which this score does not read)
        log_odds = window_scores(scored, ordering, self._plan.imputer, torch.zeros_like(hi), hi,
                                 desc=type(self).__name__)
        batch.record("log_odds", log_odds)
        batch.record("n_erased", k)
        return log_odds[:, 1] - log_odds[:, 0]

    def _erased(self, ordering: Ordering, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The number of groups each sample erases, k (N,) int64 (``fraction`` of its G
        rounded half up, at most its positive groups with ``positive_only``, at most G), and
        the windows' upper bounds (N, 2): 0 and k."""
        g = ordering.n_groups.to(device)
        k = torch.floor(self.fraction * g.to(torch.float64) + 0.5).to(torch.int64)
        if self.positive_only:
            k = torch.minimum(k, (ordering.group_scores > 0).sum(1).to(device))
        k = torch.minimum(k, g)
        return k, torch.stack([torch.zeros_like(k), k], 1)
