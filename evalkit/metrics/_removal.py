"""The shared kernel of removal and insertion curves.

Many faithfulness metrics are the same computation with different knobs: order the feature
groups by attribution, replace the first k_t groups for a sequence of k_t (or insert them onto a
baseline canvas), and read the model's target score at each step. :func:`removal_curve` does
that for every sample and step in one runner call, building each perturbed input on the fly
from a per-element rank map: the input for (sample i, step t) is
``where(rank_i < k_t, baseline_i, x_i)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _rng
from ..perturb import FeatureGrouping, Grouping, Imputer, rank_groups
from ..perturb.baselines import Baseline
from .base import MetricBatch

__all__ = ["RemovalPlan", "removal_curve", "steps_from_features_in_step", "trapezoid_auc"]


@dataclass(frozen=True)
class RemovalPlan:
    """How groups are ordered and replaced.

    ``order``: ``"morf"``, ``"lerf"`` or ``"random"``; ``group_reduction``: how a group's
    attribution is summarised for the ordering (``"sum"`` or ``"mean"``); ``mode``:
    ``"deletion"`` replaces the first k groups of x by the baseline, ``"insertion"`` starts
    from the baseline and puts the first k groups of x back.
    """

    grouping: FeatureGrouping
    imputer: Imputer
    order: str = "morf"
    group_reduction: str = "sum"
    mode: str = "deletion"


def steps_from_features_in_step(n_groups: torch.Tensor, features_in_step: int) -> torch.Tensor:
    """k_t = min(t * features_in_step, G_i) for t = 0..T, T = ceil(max G / features_in_step).

    Returns (N, T + 1) int64 counts of groups perturbed at each step (step 0: none).
    """
    g_max = int(n_groups.max())
    n_steps = -(-g_max // features_in_step)
    t = torch.arange(n_steps + 1, device=n_groups.device, dtype=torch.int64)
    return torch.minimum(t.unsqueeze(0) * features_in_step, n_groups.unsqueeze(1))


def removal_curve(
    batch: MetricBatch,
    plan: RemovalPlan,
    steps: torch.Tensor | None = None,
    *,
    features_in_step: int = 1,
    grouping: Grouping | None = None,
    desc: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, Grouping]:
    """Target scores along a removal (or insertion) curve.

    Parameters
    ----------
    steps:
        (N, T) int64 numbers of groups perturbed at each step; default
        :func:`steps_from_features_in_step` (which starts with 0, the unperturbed input).
    grouping:
        A precomputed grouping of ``batch.x`` (else ``plan.grouping`` is applied).

    Returns
    -------
    scores:
        (N, T) float64 target scores.
    fractions:
        (N, T) float64 share of groups perturbed at each step, k_t / G_i.
    grouping:
        The grouping used.
    """
    batch.require_model()
    x, a = batch.x, batch.a
    if a is None:
        raise ValueError("removal_curve needs attributions.")
    grp = grouping if grouping is not None else plan.grouping(x)
    if steps is None:
        steps = steps_from_features_in_step(grp.n_groups, features_in_step)
    steps = steps.to(device=x.device, dtype=torch.int64)
    n, t_count = steps.shape

    group_scores = grp.reduce(a, plan.group_reduction)
    random_keys = None
    if plan.order == "random":
        random_keys = _rng.permutation_keys(_rng.combine(batch.keys, 0x0DE5), grp.max_groups)
    order = rank_groups(group_scores, grp.valid(), plan.order, random_keys=random_keys)
    # rank[i, g] = position of group g in sample i's order
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous()
    )
    rank_map = grp.expand(rank)  # (N, Cg, *S)

    imputer = plan.imputer
    needs_keys = imputer.stochastic
    base = None
    if isinstance(imputer, Baseline):
        base = imputer.values(x, batch.keys if needs_keys else None)
        base = base.expand_as(x) if base.shape[0] == 1 else base
    row_keys_base = batch.keys if needs_keys else None
    insertion = plan.mode == "insertion"

    def build(index: tuple[torch.Tensor, ...]) -> torch.Tensor:
        i, t = index
        k = steps[i, t].reshape(-1, *([1] * (x.ndim - 1)))
        perturbed = rank_map[i] < k
        if insertion:
            perturbed = ~perturbed
        xi = x[i]
        if base is not None:
            return torch.where(perturbed, base[i], xi)
        keys = None if row_keys_base is None else row_keys_base[i]
        return imputer.fill(xi, perturbed, keys=keys)

    scores = batch.runner.run(  # type: ignore[union-attr]
        build, (n, t_count), y=batch.y, row_shape=tuple(x.shape[1:]), desc=desc
    )
    fractions = steps.to(torch.float64) / grp.n_groups.to(torch.float64).unsqueeze(1)
    return scores.to(torch.float64), fractions, grp


def trapezoid_auc(curve: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Per-sample trapezoid area under ``curve`` (N, T) over ``fractions`` (N, T) or (T,)."""
    if fractions.ndim == 1:
        fractions = fractions.expand_as(curve)
    return torch.trapezoid(curve, fractions, dim=1)
