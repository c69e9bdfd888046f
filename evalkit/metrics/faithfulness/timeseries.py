"""Time-series masking metrics of Turbé et al. (2023): AUC of the normalised score drop."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..._validation import as_tensor, check_option, check_scalar
from ...cache import active_cache
from ...perturb import make_grouping
from ...perturb.groupings import Grouping
from ...perturb.imputation import GaussianReplacement
from .._removal import Ordering, clean_scores, order_groups, window_scores
from .._ties import RanksFeatures
from ..base import MetricBatch
from ._common import set_curves

__all__ = ["AUCSE"]

#: the paper's quantiles of the positive relevance: 0.05, 0.15, ..., 0.95 and 1.0
TURBE_QUANTILES = (0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95, 1.0)
#: the paper's replacement: N(0, sigma^2) with sigma = 0.5 / sqrt(3) (the standard deviation of
#: U(-0.5, 0.5)), in units of the standardised inputs
TURBE_NOISE_STD = 0.5 / math.sqrt(3.0)



class AUCSE(RanksFeatures):
    """AUC of the normalised score drop S~_E (Turbé, Bjelogrlic, Lovis & Mengaldo 2023), the
    time-series masking metric of "Evaluation of post-hoc interpretability methods in
    time-series classification": mask the points the explanation calls most relevant and read
    how far the model's score falls towards its uninformed value. **Higher is better.**

    Per sample, the features are the individual points (channel, time step) of the series
    (``grouping="channel_values"``). The candidates are the points of non-negative relevance
    (as in the paper, only relevance for the class is masked); for each quantile q of
    ``quantiles`` the points whose relevance is at least the q-quantile of the candidates'
    relevance (linear interpolation) are masked: replaced by ``N(0, noise_std**2)`` values
    (the paper's "normal" replacement, meant for standardised series;
    :class:`~evalkit.perturb.imputation.GaussianReplacement`). With S the target score
    (probability by default) of x, S_k that of x with the top k points masked, and E the
    model's expected score,

        S~_E(k) = 1 - (S_k - E) / (S - E), clipped to [-1, 1],

    is 0 when masking changes nothing and 1 when the score has fallen to E. The score is the
    area under S~_E over the fraction of points masked N~ = k / (C T), from (0, 0) through the
    quantiles' points to (1, S~_E of the largest mask) (the paper closes the curve the same
    way), by the trapezoid rule. ``curves_`` holds S~_E (N, Q + 2) over ``curve_x_`` (N, Q + 2);
    ``score_drops_`` the raw drops Delta S = S - S_k (N, Q) and ``masked_fractions_`` N~ (N, Q).

    Parameters
    ----------
    quantiles:
        Quantiles of the non-negative relevance (default the paper's 0.05, 0.15, ..., 0.95, 1).
    noise_std:
        Standard deviation of the replacement values (default 0.5 / sqrt(3), the paper's; 0
        replaces by 0).
    expected_score:
        E. ``None`` (default): the sample's own score with *every* point replaced (the
        uninformed input, with the same replacement values), so a sample's score depends on
        nothing else. The paper uses the mean prediction of the class over the data set; pass
        that as a number or one number per class (an array indexed by ``y``).
    order:
        ``"morf"`` (default): mask by relevance; ``"random"``: mask the same number of points
        chosen at random (seeded), the paper's reference curve for a random explanation.
    grouping:
        ``"channel_values"`` (default, the paper's points), ``"pixels"`` (whole time steps) or
        any grouping of :func:`~evalkit.perturb.make_grouping`.

    Deliberate differences from the paper: it averages N~ and S~_E over samples per quantile
    and integrates the mean curve with Simpson's rule; here each sample has its own area
    (trapezoid rule; the mean of the scores is the data-set value up to that order of
    operations), and E is per sample unless given. The paper's alternative "permutation"
    replacement is not provided. Undefined (NaN with a reason): a sample without a
    non-negative attribution, or whose score equals E.

    Reference: H. Turbé, M. Bjelogrlic, C. Lovis, G. Mengaldo, "Evaluation of post-hoc
    interpretability methods in time-series classification", Nature Machine Intelligence 5,
    250-260, 2023.
    """

    family = "faithfulness"
    higher_is_better = True
    default_softmax = True
    stochastic = True
    modalities = ("series",)
    paper = ("Turbé, Bjelogrlic, Lovis & Mengaldo, Evaluation of post-hoc interpretability "
             "methods in time-series classification, Nature Machine Intelligence 2023")
    aliases = ("AUC_S_E", "InterpretTime")
    # the benchmark workloads are images (W1, W2); its spec comes with the series workload W5
    benchmark_spec = False

    def __init__(self, quantiles: Sequence[float] | None = None,
                 noise_std: float = TURBE_NOISE_STD, *, expected_score: Any = None,
                 order: str = "morf", grouping: Any = "channel_values", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        qs = list(TURBE_QUANTILES if quantiles is None else quantiles)
        if not qs or any(isinstance(q, bool) or not isinstance(q, int | float) or not 0 <= q <= 1
                         for q in qs):
            raise ValueError(f"`quantiles` must be numbers in [0, 1]; got {quantiles!r}.")
        self.quantiles = quantiles
        self._quantiles = sorted(float(q) for q in qs)[::-1]  # growing masks
        self.noise_std = check_scalar("noise_std", noise_std, (int, float), min_val=0)
        if expected_score is not None and not isinstance(expected_score, int | float):
            as_tensor(expected_score, "expected_score")  # validated again per call
        self.expected_score = expected_score
        self.order = check_option("order", order, ("morf", "random"))
        self.grouping = grouping
        self._grouping = make_grouping(grouping)
        self._replacement = GaussianReplacement(float(noise_std))

    def _random_sources(self) -> dict[str, Any]:
        return {"replacement": self._replacement, "random order": self.order == "random"}

    def _expected(self, batch: MetricBatch, full: torch.Tensor | None) -> torch.Tensor:
        if self.expected_score is None:
            assert full is not None
            return full
        if isinstance(self.expected_score, int | float):
            return torch.full((batch.n,), float(self.expected_score), dtype=torch.float64,
                              device=batch.device)
        table = as_tensor(self.expected_score, "expected_score", dtype=torch.float64,
                          device=batch.device).reshape(-1)
        if batch.y is None:
            raise ValueError("AUCSE: a per-class `expected_score` needs labels `y`.")
        y = batch.y.reshape(-1).to(torch.int64)
        if bool((y < 0).any()) or bool((y >= table.shape[0]).any()):
            raise ValueError(f"AUCSE: `expected_score` has {table.shape[0]} entries; labels "
                             "index outside it.")
        return table[y]

    def _ranks_attributions(self) -> bool:
        return self.order != "random"

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        # "morf" masks the points at or above each quantile of the relevance: a comparison
        # with the thresholds decides them (:func:`_threshold_ordering`), and the full order
        # of the points is only built where that shortcut does not apply
        if self.order == "morf":
            if batch.a is None:
                raise ValueError(f"{type(self).__name__} needs attributions.")
            grp = self._grouping.for_modality(batch.modality)(batch.x)
            rel = grp.reduce(batch.a, "sum")  # as order_groups' default reduction
            valid = grp.valid()
            ordering: Ordering | None = None
        else:
            ordering = order_groups(batch, self._grouping, self.order)
            grp = ordering.grouping
            rel = ordering.group_scores  # (N, G) float64, NaN for groups a sample lacks
            valid = grp.valid()
        candidate = valid & (rel.nan_to_num(-1.0) >= 0)
        n_cand = candidate.sum(1)
        batch.set_nan(n_cand == 0, "no non-negative attribution to mask")
        # quantiles of each sample's candidate relevance (linear interpolation, as NumPy's)
        ascending = _sorted_rows(torch.where(candidate, rel, torch.full_like(rel, math.inf)))
        q = torch.tensor(self._quantiles, dtype=torch.float64, device=rel.device)
        top = (n_cand - 1).clamp_min(0).to(torch.float64).unsqueeze(1)
        h = q.unsqueeze(0) * top
        lo = h.floor().to(torch.int64)
        hi = torch.minimum(lo + 1, top.to(torch.int64))
        v_lo, v_hi = ascending.gather(1, lo), ascending.gather(1, hi)
        tau = v_lo + (h - lo.to(torch.float64)) * (v_hi - v_lo)
        tau = torch.where(torch.isfinite(tau), tau, torch.zeros_like(tau))
        # the candidates at or above each threshold: all but those below it, which lead the
        # sorted row (the others are +inf there; tau is finite); compared in float64, as
        # the relevance (float32 or float64, widened exactly) meets tau (float64)
        counts = n_cand.unsqueeze(1) - torch.searchsorted(ascending.to(torch.float64),
                                                          tau.contiguous())
        counts = torch.where(n_cand.unsqueeze(1) > 0, counts, torch.zeros_like(counts))
        if ordering is None:
            ordering = _threshold_ordering(grp, rel, valid, tau, candidate, counts)
        if ordering is None:
            ordering = order_groups(batch, grp, self.order)
        g = ordering.n_groups.to(rel.device).unsqueeze(1)
        hi_all = counts if self.expected_score is not None else torch.cat([counts, g], 1)
        masked = window_scores(batch, ordering, self._replacement, torch.zeros_like(hi_all),
                               hi_all, desc=type(self).__name__, with_clean=True)
        full = masked[:, -1] if self.expected_score is None else None
        scores = masked[:, : counts.shape[1]]
        clean = clean_scores(batch)
        expected = self._expected(batch, full)
        span = clean - expected
        batch.set_nan(span == 0, "the score of x equals the expected score E (nothing to "
                                 "normalise by)")
        safe = torch.where(span != 0, span, torch.ones_like(span)).unsqueeze(1)
        normalised = (1 - (scores - expected.unsqueeze(1)) / safe).clamp(-1.0, 1.0)
        fractions = counts.to(torch.float64) / g.to(torch.float64)
        batch.record("score_drops", clean.unsqueeze(1) - scores, per_sample=True)
        batch.record("masked_fractions", fractions, per_sample=True)
        zeros = torch.zeros_like(fractions[:, :1])
        curve = torch.cat([zeros, normalised, normalised[:, -1:]], 1)
        x_axis = torch.cat([zeros, fractions, torch.ones_like(zeros)], 1)
        set_curves(batch, curve, x_axis)
        return torch.trapezoid(curve, x_axis, dim=1)


def _threshold_ordering(grp: Grouping, rel: torch.Tensor, valid: torch.Tensor,
                        tau: torch.Tensor, candidate: torch.Tensor, counts: torch.Tensor
                        ) -> Ordering | None:
    """An :class:`Ordering` whose rank map selects, for each step's window [0, counts[:, q]),
    exactly the points of the morf order's first counts[:, q] (the candidates at or above the
    threshold ``tau[:, q]``), without sorting the points; None where that cannot be shown
    cheaply (an active forward cache, whose keys name the full order; thresholds that do not
    decrease along the steps; a relevance that is not finite), and the caller sorts.

    Why the sets agree: exactly counts[:, q] points have a relevance >= tau[:, q] (all
    candidates: tau >= 0 where a sample has candidates), every other point's is smaller (or
    is not a valid group, ordered last), so they are the counts[:, q] largest, whatever the
    order among ties. With decreasing thresholds the sets grow: a point first selected at step
    q gets the rank counts[:, q - 1] (0 at q = 0), one never selected the last count (below
    the sample's number of groups: it is not a candidate), an invalid group the largest
    number of groups (never in a window)."""
    if active_cache() is not None:
        return None
    if tau.shape[1] > 1 and not bool((tau[:, 1:] <= tau[:, :-1]).all()):
        return None
    if not bool(torch.isfinite(torch.where(valid, rel, torch.zeros_like(rel))).all()):
        return None
    q_count = counts.shape[1]
    # (N, G): the first step that selects a point; the steps that select a candidate are
    # those whose threshold is at most its relevance (the last ones: the thresholds
    # decrease), none for the others
    selected = (torch.where(candidate, rel.to(tau.dtype), -math.inf).unsqueeze(1)
                >= tau.unsqueeze(2))  # (N, Q, G)
    # summed as bytes where they fit (a bool sum widens every element to int64)
    selecting = (selected.view(torch.uint8).sum(1, dtype=torch.uint8) if q_count <= 255
                 else selected.sum(1))
    first = q_count - selecting.to(torch.int64)
    previous = torch.cat([torch.zeros_like(counts[:, :1]), counts], 1)  # counts of step q - 1
    rank = previous.gather(1, first)
    rank = torch.where(valid, rank, torch.full_like(rank, grp.max_groups))
    return Ordering(grp, rel, rank, grp.expand(rank), "morf-thresholds")


def _sorted_rows(values: torch.Tensor) -> torch.Tensor:
    """Each row of ``values`` (N, G) float64 (no NaN) in ascending order. On the CPU by NumPy's
    vectorised sort, many times faster than torch's row-wise sort (64 series of 500 steps:
    about 0.2 ms instead of 4 ms); only the values are used, so equal values (0.0 and -0.0)
    may come in any order."""
    if values.device.type != "cpu":
        return values.sort(1).values
    return torch.from_numpy(np.sort(values.numpy(), axis=1))
