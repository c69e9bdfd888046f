"""Ground-truth agreement (Krishna et al. 2022): how far an explanation agrees with a known
reference attribution, e.g. the true coefficients of a linear model.

Family: localisation (ground-truth agreement). Model-free (a model is used only to explain
when ``a`` is None), per sample, vectorised over the batch.

The reference
-------------
The ground truth is passed as ``s``: a **real-valued reference map** aligned like the
attributions ((N, F) for tables; (N, 1|C, ...) or (N, ...) for other inputs), not a binary
mask (these metrics set ``real_valued_s``, so ``s`` is not checked for 0/1 values). For a
linear model with coefficients w explained at x against a baseline b, the reference of the
explained class is ``w * (x - b)`` (or ``w`` itself for rankings that ignore the input); for a
binary logistic regression explained for class 0, negate it (OpenXAI flips the coefficients by
the predicted class). A boolean ground-truth feature set also works (its features rank
above the others, all tied).

In :func:`evalkit.evaluate`, ``s`` is one array passed to every metric, and the other metrics
check it as a binary mask: evaluate the agreement metrics with a real-valued reference in a call
of their own (or give them the binary feature set the other metrics take).

Features and top-k
------------------
Features are the modality's (:meth:`~evalkit.modality.Modality.feature_maps`: pixels with
channels summed, time steps, columns, tokens, or a table's column groups, whose attributions
are summed). A feature's importance is the magnitude of its value; its sign is the sign of
its value. ``k`` is an int or a fraction of the features (rounded up, at least 1; OpenXAI's
rule; default 0.25, OpenXAI's benchmark setting).

Ties
----
Features tied in magnitude are ranked by feature index (the lower index first: a stable sort),
the same order in the explanation and in the reference, so that a map compared with itself
agrees fully whatever its ties (1 on every metric; breaking ties independently at random in
each map, even in expectation, scored a map with tied features below 1 against itself). A
constant map ranks its features in index order.

Undefined scores are NaN with a reason: a reference (or attribution) row with NaN/Inf, or a
reference that is zero everywhere (it ranks nothing, the analogue of an empty mask).

Reference: S. Krishna, T. Han, A. Gu, J. Pombra, S. Jabbari, S. Wu, H. Lakkaraju, "The
Disagreement Problem in Explainable Machine Learning: A Practitioner's Perspective", TMLR 2024
(arXiv:2202.01602, 2022).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._validation import check_top_k, finite_rows
from .base import Metric, MetricBatch

__all__ = [
    "FeatureAgreement",
    "PairwiseRankAgreement",
    "RankAgreement",
    "SignAgreement",
    "SignedRankAgreement",
]

_PAPER = ("Krishna et al., The Disagreement Problem in Explainable Machine Learning: "
          "A Practitioner's Perspective, TMLR 2024 (arXiv:2202.01602)")


def feature_positions(values: torch.Tensor) -> torch.Tensor:
    """For each entry of the rows ``values`` (N, P): its 0-based position when the row is
    ranked by descending magnitude, ties by index (a stable sort), (N, P) int64."""
    n, p = values.shape
    idx = torch.sort(values.abs(), dim=1, descending=True, stable=True).indices
    pos = torch.arange(p, device=values.device).expand(n, p)
    return torch.empty_like(idx).scatter_(1, idx, pos)


class _AgreementMetric(Metric):
    """Shared preparation: per-feature maps of the explanation and of the reference ``s``."""

    family = "localisation"
    modalities = ("image", "series", "tabular", "tokens")
    higher_is_better = True
    needs_masks = True
    needs_model = False
    real_valued_s = True
    paper = _PAPER
    default_normalise = False
    #: model-free and cheap: no benchmark spec
    benchmark_spec = False

    def _maps(self, batch: MetricBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, P) float64 per-feature values of the explanation and of the reference."""
        assert batch.a is not None
        if batch.s is None:
            raise ValueError(f"{type(self).__name__} needs a reference attribution `s`.")
        a, _ = batch.modality.feature_maps(batch.a)
        ref = batch.s.to(torch.float64)
        finite = finite_rows(ref)
        batch.set_nan(~finite, "reference `s` contains NaN or Inf")
        ref = torch.where(batch.modality.per_sample(finite, ref), ref, torch.zeros_like(ref))
        ref, _ = batch.modality.feature_maps(ref)
        batch.set_nan((ref == 0).all(1), "reference `s` is zero everywhere (it ranks nothing)")
        return a.to(torch.float64), ref


class _TopKAgreement(_AgreementMetric):
    """Top-k agreement: the share of the top k features of the explanation that satisfy the
    metric's condition against the reference."""

    _same_position = False
    _same_sign = False

    def __init__(self, k: int | float = 0.25, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = check_top_k(k)

    def _resolve_k(self, n_features: int) -> int:
        if isinstance(self.k, float):
            return max(1, math.ceil(self.k * n_features))
        if self.k > n_features:
            raise ValueError(f"{type(self).__name__}: k={self.k} exceeds the {n_features} "
                             "features per sample; use a smaller k or a fraction such as "
                             "k=0.25.")
        return self.k

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        a, ref = self._maps(batch)
        k = self._resolve_k(a.shape[1])
        pos_a, pos_b = feature_positions(a), feature_positions(ref)
        hit = ((pos_a == pos_b) if self._same_position else (pos_b < k)) & (pos_a < k)
        hit = hit.to(torch.float64)
        if self._same_sign:
            hit = hit * (torch.sign(a) == torch.sign(ref)).to(torch.float64)
        return hit.sum(1) / k


_K_DOC = """
    Parameters
    ----------
    k:
        The number of top features: an int (at most the number of features), or a fraction
        of them (float in (0, 1], rounded up, at least 1). Default 0.25 (OpenXAI).

    The reference is ``s``, a real-valued map (see :mod:`evalkit.metrics.agreement`); ties are
    ranked by feature index, the same order in both maps. Reference: Krishna et al., "The
    Disagreement Problem in Explainable Machine Learning: A Practitioner's Perspective", TMLR
    2024 (arXiv:2202.01602).
"""


def _documented(cls: type) -> type:
    cls.__doc__ = (cls.__doc__ or "").replace("    <<K>>\n", _K_DOC.strip("\n") + "\n")
    return cls


@_documented
class FeatureAgreement(_TopKAgreement):
    """Feature agreement (Krishna et al. 2022): the share of the explanation's top-k features
    (by magnitude) that are also among the reference's top k,
    |top_k(a) ∩ top_k(s)| / k. **Higher is better**; 1 when both pick the same features.
    <<K>>
    """

    aliases = ("feature_agreement",)


@_documented
class RankAgreement(_TopKAgreement):
    """Rank agreement (Krishna et al. 2022): the share of the top k positions that hold the
    same feature in the explanation and in the reference (by magnitude). **Higher is better**.
    <<K>>
    """

    aliases = ("rank_agreement",)
    _same_position = True


@_documented
class SignAgreement(_TopKAgreement):
    """Sign agreement (Krishna et al. 2022): the share of the top k features that are among
    the top k of both maps *and* have the same sign in both (a zero matches only a zero).
    **Higher is better**.
    <<K>>
    """

    aliases = ("sign_agreement",)
    _same_sign = True


@_documented
class SignedRankAgreement(_TopKAgreement):
    """Signed rank agreement (Krishna et al. 2022): the share of the top k positions that hold
    the same feature, with the same sign, in the explanation and in the reference.
    **Higher is better**.
    <<K>>
    """

    aliases = ("signed_rank_agreement",)
    _same_position = True
    _same_sign = True


class PairwiseRankAgreement(_AgreementMetric):
    """Pairwise rank agreement (Krishna et al. 2022): the share of feature pairs whose relative
    order by magnitude is the same in the explanation and in the reference. **Higher is
    better**; 1 for the same ranking, 0 for the reversed one, 0.5 at chance.

    Every pair of features counts (OpenXAI's setting; the paper allows a chosen subset); a
    pair tied in a map is ordered by feature index there (the lower index first, the same
    order in both maps), so the score is concordant / pairs. The pairs are compared
    directly: the cost grows with the square of the number of features, so the metric is
    declared for tables, series and tokens, not images.

    Reference: Krishna et al., "The Disagreement Problem in Explainable Machine Learning: A
    Practitioner's Perspective", TMLR 2024 (arXiv:2202.01602).
    """

    aliases = ("pairwise_rank_agreement",)
    modalities = ("series", "tabular", "tokens")

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        a, ref = self._maps(batch)
        n, p = a.shape
        out = torch.full((n,), math.nan, dtype=torch.float64, device=a.device)
        if p < 2:
            batch.set_nan(torch.ones(n, dtype=torch.bool, device=a.device),
                          "fewer than two features: no pairs to compare")
            return out
        # positions with ties by index: every pair is ordered, the same way in both maps
        ma, mb = feature_positions(a).to(torch.float64), feature_positions(ref).to(torch.float64)
        pairs = p * (p - 1) / 2
        # rows in blocks so that a block's (B, P, P) comparisons stay within ~32 MiB
        block = max(1, (2**22) // (p * p))
        for start in range(0, n, block):
            sa = torch.sign(ma[start:start + block, :, None] - ma[start:start + block, None, :])
            sb = torch.sign(mb[start:start + block, :, None] - mb[start:start + block, None, :])
            net = (sa * sb).sum((1, 2)) / 2  # concordant - discordant, each pair once
            out[start:start + block] = 0.5 + net / (2 * pairs)
        return out
