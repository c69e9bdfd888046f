"""NAOPC (Edin et al. 2024): AOPC rescaled per input by the lowest and highest AOPC that any
feature ordering reaches, with the paper's beam-search bounds and exact bounds for small
inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..._validation import check_option, check_scalar
from ...perturb import Grouping, Imputer, make_grouping, make_imputer
from ...perturb._select import replaces_by_where, select, select_kept
from ...perturb.baselines import impute
from .._removal import RemovalPlan, baseline_values, clean_scores, run_rows
from .._ties import RanksFeatures
from ..base import MetricBatch
from ._common import set_curves
from .aopc import aopc_drops, mean_over_steps
from .rationales import FollowsRemovalPlan

__all__ = ["NAOPC", "aopc_bounds"]

#: the reason a sample is undefined when every ordering gives the same AOPC
FLAT_BOUNDS = ("every ordering of the features gives the same AOPC (the model's output does "
               "not depend on the removal order): nothing to normalise by")
#: the most features the exact bounds enumerate (2^G forward passes per sample)
EXACT_LIMIT = 16
_UNBOUNDED = 1 << 62
#: the most bits of (sample, feature set) the beam search packs into one int64 key (more
#: features, or samples, fall back to the row-wise unique of the (sample, set) rows)
_PACKED_BITS = 62


def _set_scores(batch: MetricBatch, grp: Grouping, imputer: Imputer, base, sample_idx,
                removed, desc: str, *, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Target scores (M,) of the samples ``sample_idx`` (M,) with the feature sets
    ``removed`` ((M, G) bool, or with ``weights`` (G,) (M,) int64 codes: feature j removed
    where ``code & weights[j]``) replaced: one runner call."""
    x, modality = batch.x, batch.modality
    keys = batch.keys if imputer.stochastic else None
    # bit selection where the modality replaces by torch.where (same values, several times
    # faster on the CPU; see evalkit.perturb._select)
    by_bits = base is not None and replaces_by_where(modality) and base.dtype == x.dtype
    # one element per feature (a table's columns, pixels of a 1-channel map): the feature
    # mask is the element mask, no gather through the labels
    label_shape = tuple(grp.labels.shape[1:])
    one_element = grp.one_element_per_group()

    def build(m: torch.Tensor) -> torch.Tensor:
        i = sample_idx.index_select(0, m)
        sets = removed.index_select(0, m)
        if weights is not None and by_bits:
            # the kept features straight from the codes, selected without a negated mask
            kept = (sets.unsqueeze(1) & weights) == 0
            kept = (kept.reshape(-1, *label_shape) if one_element else grp.mask(kept, i))
            return select_kept(kept, x.index_select(0, i), base.index_select(0, i))
        if weights is not None:
            sets = (sets.unsqueeze(1) & weights) != 0
        mask = grp.mask(sets, i)
        if by_bits:
            return select(mask, base.index_select(0, i), x.index_select(0, i))
        if base is not None:
            return modality.replace(x[i], mask, base[i])
        return impute(imputer, x[i], mask, keys=None if keys is None else keys[i],
                      modality=modality)

    return run_rows(batch, build, sample_idx, desc=desc)


def _by_sample_then_value(sample: torch.Tensor, value: torch.Tensor, n: int) -> torch.Tensor:
    """The order of the entries by ``sample`` (in 0..n-1), then by decreasing ``value``, then
    by index: two stable sorts (by -value, then by sample), or on the CPU, without NaN, one
    NumPy argsort of the unique int64 keys (sample, dense rank of -value, index), whose
    order is the same, and a SIMD argsort of the values for the ranks: 2-3x faster."""
    m = value.shape[0]
    if (value.device.type != "cpu" or m == 0 or (n * m + m) * m >= 2**62
            or bool(value.isnan().any())):
        by_value = torch.argsort(-value, stable=True)
        return by_value[torch.argsort(sample[by_value], stable=True)]
    neg = (-value).numpy()
    ordered = np.argsort(neg)
    increases = np.empty(m, dtype=np.int64)
    increases[0] = 0
    np.not_equal(neg[ordered[1:]], neg[ordered[:-1]], out=increases[1:])  # -0.0 == 0.0
    dense = np.empty(m, dtype=np.int64)
    dense[ordered] = np.cumsum(increases)
    key = (sample.numpy().astype(np.int64) * m + dense) * m + np.arange(m, dtype=np.int64)
    return torch.from_numpy(np.argsort(key))


def _top_per_sample(sample: torch.Tensor, value: torch.Tensor, width: torch.Tensor,
                    n: int) -> torch.Tensor:
    """Indices of the ``width[i]`` largest ``value`` of each sample i (ties: first index)."""
    by_sample = _by_sample_then_value(sample, value, n)
    s = sample[by_sample]
    counts = torch.bincount(s, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(s.shape[0], device=s.device) - starts[s]
    return by_sample[rank < width[s]]


def aopc_bounds(batch: MetricBatch, grp: Grouping, imputer: Imputer, width: torch.Tensor,
                samples: torch.Tensor | None = None, *, desc: str = "NAOPC bounds"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The lowest and highest AOPC (features removed one at a time, every feature removed at
    the end; the mean over the G + 1 points as in :class:`AOPC`) over orderings of each
    sample's features: ``(lower, upper)``, each (N,) float64 (NaN for samples not in
    ``samples``).

    The search is the paper's beam search, one beam for the maximum and one for the minimum:
    a state is a set of removed features with the summed drops of the best prefix that
    reaches it; at each step every state is extended by every remaining feature, and the
    ``width[i]`` best states of sample i are kept. Prefixes that reach the same set are merged
    into the best one (the drops to come depend on the set only, so no ordering is lost): with
    ``width`` at least C(G, G/2) the search is the exact dynamic programme over all 2^G subsets,
    which equals the enumeration of all G! orderings. The candidates of both beams and of all
    samples of a step are scored in one runner call.
    """
    dev = batch.device
    n = batch.n
    g_max = grp.max_groups
    valid = grp.valid().to(dev)
    width = width.to(dev)
    clean = clean_scores(batch)
    base = baseline_values(imputer, batch.x, batch.keys, batch.modality)
    start = torch.arange(n, device=dev) if samples is None else samples.to(dev)
    # the two beams side by side: direction 0 maximises, 1 minimises (sign flips the sums)
    sample = torch.cat([start, start])
    direction = torch.cat([torch.zeros_like(start), torch.ones_like(start)])
    sets = torch.zeros((sample.shape[0], g_max), dtype=torch.bool, device=dev)
    total = torch.zeros(sample.shape[0], dtype=torch.float64, device=dev)
    # feature j of a set is bit G - 1 - j: the first feature is the most significant
    weights = 1 << torch.arange(g_max - 1, -1, -1, device=dev, dtype=torch.int64)
    packed = g_max + max(1, n - 1).bit_length() <= _PACKED_BITS
    all_bits = (1 << g_max) - 1 if packed else 0
    for _ in range(g_max):
        remaining = valid[sample] & ~sets
        done = ~remaining.any(1)
        if bool(done.all()):
            break
        k, j = remaining.nonzero(as_tuple=True)
        # index_select: several times faster than advanced indexing for these long index sets
        cand_sample, cand_dir = sample.index_select(0, k), direction.index_select(0, k)
        # one forward per distinct (sample, set), whichever beam proposed it, in the
        # lexicographic order of (sample, set as 0/1 columns)
        if packed:
            # (sample, set) packed in one int64 whose numeric order is that lexicographic
            # order: a 1-D unique, not the far slower row-wise unique of the (M, 1 + G) keys;
            # the sets are unpacked chunk by chunk where the rows are built
            codes = (sets.to(torch.int64) * weights).sum(1)
            key = (cand_sample << g_max) | codes.index_select(0, k) | weights.index_select(0, j)
            uniq, inverse = torch.unique(key, return_inverse=True)
            u_sample = uniq >> g_max
            u_sets = uniq & all_bits
            scores = _set_scores(batch, grp, imputer, base, u_sample, u_sets, desc,
                                 weights=weights)
        else:
            cand_sets = sets[k].clone()
            cand_sets[torch.arange(k.shape[0], device=dev), j] = True
            key = torch.cat([cand_sample.unsqueeze(1), cand_sets.to(torch.int64)], 1)
            uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
            u_sample = uniq[:, 0]
            u_sets = uniq[:, 1:].bool()
            scores = _set_scores(batch, grp, imputer, base, u_sample, u_sets, desc)
        cand_total = (total.index_select(0, k)
                      + (clean.index_select(0, u_sample) - scores).index_select(0, inverse))
        # merge the prefixes of a set per beam: the best sum (signed so that larger is better)
        sign = 1.0 - 2.0 * cand_dir.to(torch.float64)
        slot = inverse * 2 + cand_dir
        best = torch.full((uniq.shape[0] * 2,), float("-inf"), dtype=torch.float64,
                          device=dev)
        best = best.scatter_reduce(0, slot, sign * cand_total, reduce="amax")
        present = torch.zeros_like(best, dtype=torch.bool).scatter_(0, slot, True)
        slots = present.nonzero(as_tuple=True)[0]
        s_sample, s_dir = u_sample[slots // 2], slots % 2
        # the width best states per (sample, beam)
        chosen = _top_per_sample(s_sample * 2 + s_dir, best[slots], width.repeat_interleave(2),
                                 2 * n)
        new = slots[chosen]
        new_sample, new_dir = u_sample[new // 2], new % 2
        new_sets = u_sets[new // 2]
        if packed:
            new_sets = (new_sets.unsqueeze(1) & weights) != 0
        new_total = best[new] * (1.0 - 2.0 * new_dir.to(torch.float64))
        # finished states (every feature removed) stay as they are
        sample = torch.cat([new_sample, sample[done]])
        direction = torch.cat([new_dir, direction[done]])
        sets = torch.cat([new_sets, sets[done]])
        total = torch.cat([new_total, total[done]])
    g = grp.n_groups.to(dev).to(torch.float64)
    upper = torch.full((n,), float("-inf"), dtype=torch.float64, device=dev)
    lower = torch.full((n,), float("inf"), dtype=torch.float64, device=dev)
    up = direction == 0
    upper = upper.scatter_reduce(0, sample[up], total[up], reduce="amax")
    lower = lower.scatter_reduce(0, sample[~up], total[~up], reduce="amin")
    searched = torch.zeros(n, dtype=torch.bool, device=dev)
    searched[start] = True
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=dev)
    return (torch.where(searched, lower / (g + 1), nan),
            torch.where(searched, upper / (g + 1), nan))


class NAOPC(FollowsRemovalPlan, RanksFeatures):
    """Normalised AOPC, NAOPC (Edin et al. 2024), over the features of any modality (pixels,
    time steps, columns, tokens).

    :class:`AOPC` with features removed one at a time in ``order`` of the attribution until
    every feature is removed, rescaled per input by the lowest and highest AOPC that any
    ordering of that input's features reaches:

        NAOPC(x) = (AOPC(x) - AOPC_min(x)) / (AOPC_max(x) - AOPC_min(x)),

    so that scores compare across inputs and models whose AOPC ranges differ (the paper's
    point: raw AOPC rankings of explanations across models can be misleading). In [0, 1]; 1
    is the best ordering there is. With ``order="morf"`` (the paper's comprehensiveness)
    **higher is better**; with ``order="lerf"`` (sufficiency: the same bounds, the least
    relevant first) lower is better (the instance's ``higher_is_better`` is False).

    The bounds come from the paper's beam search (``beam_width`` states kept per step, one
    search for the maximum and one for the minimum, the candidates of both and of every sample
    scored in one runner call per step; :func:`aopc_bounds`), or, for inputs with at most
    ``exact_max_features`` features and ``exact="auto"`` (or always with ``exact=True``), the
    exact bounds over all G! orderings (a search without a width limit: 2^G forward passes).
    A beam bound is a bound the search reached, so it lies inside the exact range; since the
    explanation's own ordering is one ordering too, its AOPC widens the searched range where
    the beam missed it, and the score stays in [0, 1]. ``aopc_``, ``aopc_min_`` and
    ``aopc_max_`` hold the per-sample AOPC and bounds; ``curves_`` the AOPC drops. An input
    whose bounds coincide (no ordering matters) is NaN with a reason; a constant map is NaN
    with a reason (``constant_maps``).

    Cost: the beam search runs about beam_width * G^2 forward passes per input (G: features),
    so use a coarse ``grouping`` (patches, superpixels) on images.

    Parameters
    ----------
    order:
        ``"morf"`` (default) or ``"lerf"``.
    beam_width:
        States kept per step and direction (the paper's beam size).
    exact:
        ``"auto"`` (exact bounds for inputs with at most ``exact_max_features`` features),
        ``True`` (always exact, at most 16 features) or ``False`` (always the beam).
    exact_max_features:
        The largest input ``exact="auto"`` bounds exactly.
    perturb_baseline:
        Replacement (a name, number, array, ``"delete"`` for token deletion, or an
        :class:`~evalkit.perturb.Imputer`).
    grouping:
        The features (default ``"pixels"``: pixels, time steps, columns or tokens).

    Reference: J. Edin, A. G. Motzfeldt, C. L. Christensen, T. Ruotsalo, L. Maaløe, M. Maistro,
    "Normalized AOPC: Fixing Misleading Faithfulness Metrics for Feature Attribution
    Explainability", ACL 2025 (arXiv 2408.08137).
    """

    family = "faithfulness"
    higher_is_better = True
    default_softmax = True
    modalities = ("image", "series", "tabular", "tokens")
    paper = ("Edin et al., Normalized AOPC: Fixing Misleading Faithfulness Metrics for Feature "
             "Attribution Explainability, ACL 2025 (arXiv 2408.08137)")

    def __init__(self, order: str = "morf", beam_width: int = 5, exact: bool | str = "auto",
                 exact_max_features: int = 8, perturb_baseline: Any = "black", *,
                 grouping: Any = "pixels", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.order = check_option("order", order, ("morf", "lerf"))
        self.beam_width = check_scalar("beam_width", beam_width, int, min_val=1)
        if exact not in ("auto", True, False):
            raise ValueError(f"`exact` must be 'auto', True or False; got {exact!r}.")
        self.exact = exact
        self.exact_max_features = check_scalar("exact_max_features", exact_max_features, int,
                                               min_val=1, max_val=EXACT_LIMIT)
        self.perturb_baseline = perturb_baseline
        self.grouping = grouping
        self._plan = RemovalPlan(make_grouping(grouping), make_imputer(perturb_baseline),
                                 order=order)

    @classmethod
    def conformance_params(cls) -> dict[str, Any]:
        """Cheap settings for :func:`evalkit.testing.check_metric`: a narrow beam, exact
        bounds only on the smallest inputs."""
        return {"beam_width": 1, "exact_max_features": 4}

    def _derived_metadata(self) -> dict[str, Any]:
        return {**super()._derived_metadata(), "higher_is_better": self.order == "morf"}

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        drops, fractions, valid = aopc_drops(batch, self._plan, self.order, 1, None,
                                             desc=type(self).__name__)
        set_curves(batch, drops, fractions)
        aopc = mean_over_steps(drops, valid)
        grp = self._plan.grouping.for_modality(batch.modality)(batch.x)
        g = grp.n_groups.to(batch.device)
        if self.exact is True:
            if int(g.max()) > EXACT_LIMIT:
                raise ValueError(f"exact=True enumerates 2^G feature sets; an input has "
                                 f"{int(g.max())} features (at most {EXACT_LIMIT}). Use a "
                                 "coarser `grouping` or exact='auto'.")
            exact = torch.ones_like(g, dtype=torch.bool)
        elif self.exact == "auto":
            exact = g <= self.exact_max_features
        else:
            exact = torch.zeros_like(g, dtype=torch.bool)
        width = torch.where(exact, torch.full_like(g, _UNBOUNDED),
                            torch.full_like(g, self.beam_width))
        todo = (batch.defined() & torch.isfinite(aopc)).nonzero(as_tuple=True)[0]
        lower, upper = aopc_bounds(batch, grp, self._plan.imputer, width, todo,
                                   desc=f"{type(self).__name__} bounds")
        # the explanation's ordering is an ordering: a beam that missed it widens to it
        lower = torch.minimum(lower, aopc)
        upper = torch.maximum(upper, aopc)
        span = upper - lower
        flat = span <= 1e-12 * torch.maximum(upper.abs(), lower.abs()).clamp(min=1.0)
        batch.set_nan(flat & torch.isfinite(span), FLAT_BOUNDS)
        batch.record("aopc", aopc)
        batch.record("aopc_min", lower)
        batch.record("aopc_max", upper)
        batch.record("exact_bounds", exact)
        return torch.where(flat, torch.full_like(aopc, float("nan")),
                           (aopc - lower) / span.clamp(min=1e-300))
