"""AOPC (Samek et al. 2017) over the features of any modality: the mean drop of the target
score as features are removed in order of relevance."""

from __future__ import annotations

from typing import Any

import torch

from ..._validation import check_option, check_scalar
from ...perturb import make_grouping, make_imputer
from .._removal import RemovalPlan, clean_scores, order_groups, removal_curve
from .._ties import RanksFeatures
from ..base import MetricBatch
from ._common import set_curves
from .rationales import FollowsRemovalPlan


class AOPC(FollowsRemovalPlan, RanksFeatures):
    """Area over the perturbation curve, AOPC (Samek et al. 2017), over the features of any
    modality: pixels, time steps, columns or **tokens**.

    Features (groups of ``grouping``: the modality's own features by default) are removed
    ``features_in_step`` at a time in ``order`` of their attribution, cumulatively, for L
    steps (``n_steps``; None: until every feature is removed); x^(k) is the input after k
    steps. The score is the mean drop of the target score over k = 0..L,

        AOPC(x) = 1 / (L + 1) * sum_{k=0..L} f(x) - f(x^(k)),

    (the k = 0 term is 0, as in the paper's average over L + 1 points); ``curves_`` holds the
    drops f(x) - f(x^(k)) over the fraction of features removed. With ``order="morf"`` (most
    relevant first, the paper's) a faithful explanation makes the score fall fast: **higher is
    better**; with ``order="lerf"`` (least relevant first) small drops are better (the
    instance's ``higher_is_better`` is False).

    On token ids a removed token is replaced by the modality's mask token
    (``TokensModality(mask_token_id=...)``; any named ``perturb_baseline`` means the mask
    token, a number is an explicit id) or, with ``perturb_baseline="delete"``, deleted and
    the sequence re-padded (:class:`~evalkit.perturb.TokenDeletion`). Ties in the attribution
    are removed in feature order (a constant map gives a finite score). The area is the
    paper's AOPC for one sample; the paper's dataset AOPC is the mean of the scores.

    Parameters
    ----------
    order:
        ``"morf"`` (default) or ``"lerf"``.
    features_in_step:
        Features removed per step.
    n_steps:
        Steps L (None: ceil(G / features_in_step), every feature removed at the end).
    perturb_baseline:
        Replacement (a name, number, array, ``"delete"`` for token deletion, or an
        :class:`~evalkit.perturb.Imputer`); see :mod:`evalkit.perturb.baselines`.
    grouping:
        The features (default ``"pixels"``: pixels, time steps, columns or tokens).

    :class:`RegionPerturbation` with ``score="aopc"`` is the same quantity over square patches.

    Reference: W. Samek, A. Binder, G. Montavon, S. Lapuschkin, K.-R. Müller, "Evaluating the
    Visualization of What a Deep Neural Network Has Learned", IEEE TNNLS 28(11), 2017.
    """

    family = "faithfulness"
    higher_is_better = True
    default_softmax = True
    modalities = ("image", "series", "tabular", "tokens")
    paper = ("Samek et al., Evaluating the Visualization of What a Deep Neural Network Has "
             "Learned, IEEE TNNLS 2017")

    def __init__(self, order: str = "morf", features_in_step: int = 1,
                 n_steps: int | None = None, perturb_baseline: Any = "black", *,
                 grouping: Any = "pixels", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.order = check_option("order", order, ("morf", "lerf"))
        self.features_in_step = check_scalar("features_in_step", features_in_step, int,
                                             min_val=1)
        self.n_steps = check_scalar("n_steps", n_steps, int, min_val=1, allow_none=True)
        self.perturb_baseline = perturb_baseline
        self.grouping = grouping
        self._plan = RemovalPlan(make_grouping(grouping), make_imputer(perturb_baseline),
                                 order=order)

    def _derived_metadata(self) -> dict[str, Any]:
        return {**super()._derived_metadata(), "higher_is_better": self.order == "morf"}

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        drops, fractions, valid = aopc_drops(batch, self._plan, self.order,
                                             self.features_in_step, self.n_steps,
                                             desc=type(self).__name__)
        set_curves(batch, drops, fractions)
        return mean_over_steps(drops, valid)


def aopc_drops(batch: MetricBatch, plan: RemovalPlan, order: str, features_in_step: int = 1,
               n_steps: int | None = None, *, desc: str | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The AOPC curve of every sample: the drops f(x) - f(x^(k)) (N, T) as features are
    removed ``features_in_step`` at a time in ``order`` ("morf" or "lerf") for L steps
    (``n_steps``; None: until every feature is removed), their x-axis (fraction of features
    removed, (N, T)) and which steps a sample has ((N, T) bool; a sample with fewer steps
    holds its last one, which the kernel computes once). Shared by AOPC, ABPC, SRG and NAOPC."""
    ordering = order_groups(batch, plan.grouping, order)
    g = ordering.n_groups.to(batch.device)
    steps_needed = -(-g // features_in_step)  # ceil(G / features_in_step)
    last = steps_needed if n_steps is None else steps_needed.clamp(max=n_steps)
    t = torch.arange(int(last.max()) + 1, device=batch.device)
    # removed features at step t, held at the sample's last step (a repeated window is
    # computed once by the kernel)
    steps = (torch.minimum(t.unsqueeze(0), last.unsqueeze(1)) * features_in_step
             ).clamp(max=g.unsqueeze(1))
    scores, fractions, _ = removal_curve(batch, plan, steps, ordering=ordering, desc=desc)
    drops = clean_scores(batch).unsqueeze(1) - scores
    return drops, fractions, t.unsqueeze(0) <= last.unsqueeze(1)


def mean_over_steps(curve: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The mean of each sample's curve over its own steps (the AOPC average over L + 1
    points)."""
    return (curve * valid).sum(1) / valid.sum(1)
