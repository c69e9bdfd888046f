"""Prediction gaps on important and unimportant features: PGI and PGU (OpenXAI, Agarwal et al.
2022)."""

from __future__ import annotations

import math
from typing import Any

import torch

from ... import _rng
from ..._validation import check_bool, check_scalar, check_top_k
from ...perturb import GaussianNoise, Noise, make_grouping, rank_groups
from ...perturb._select import rank_select
from .._removal import clean_scores, flag_nonfinite
from .._ties import RanksFeatures
from ..base import MetricBatch

#: rng stream of the prediction-gap noise
_GAP_STREAM = 0x96A9

#: the largest share of a row's elements whose noise is drawn at their positions only (then
#: gathered and scattered); above it the whole row's noise is drawn and blended (the same
#: numbers either way: only the cost differs)
_POSITIONS_SHARE = 0.5
#: the same where the positions are found once per call (their cost is not per chunk):
#: drawing and blending a whole row costs less only above about 90 % of it
_POSITIONS_SHARE_WHOLE_CALL = 0.8

#: the most elements (samples x sizes x row elements) whose perturbed positions are found once
#: per call instead of per chunk
_WHOLE_CALL_ELEMENTS = 1 << 22


class _PredictionGap(RanksFeatures):
    """Shared kernel of PGI and PGU: the mean absolute change of the target score when the
    top-k (``_perturb_top`` True) or the other features are perturbed with noise."""

    family = "faithfulness"
    modalities = ("image", "series", "tabular")
    stochastic = True
    default_softmax = True
    default_normalise = False
    #: no benchmark spec yet (tabular workload W4 of issue 19 is not in benchmarks/ yet)
    benchmark_spec = False
    _perturb_top: bool = True

    def __init__(self, k: int | float = 0.25, nr_samples: int = 100,
                 perturb_std: float = 0.1, perturb_mean: float = 0.0, *, auc: bool = False,
                 grouping: Any = "pixels", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = check_top_k(k)
        self.nr_samples = check_scalar("nr_samples", nr_samples, int, min_val=1)
        self.perturb_std = check_scalar("perturb_std", perturb_std, (int, float), min_val=0)
        self.perturb_mean = check_scalar("perturb_mean", perturb_mean, (int, float))
        self.auc = check_bool("auc", auc)
        self.grouping = grouping
        self._grouping = make_grouping(grouping)

    def _random_sources(self) -> dict[str, Any]:
        return {"noise": self.perturb_std > 0 or self.perturb_mean != 0}

    @classmethod
    def conformance_params(cls) -> dict[str, Any]:
        """Cheap settings for :func:`evalkit.testing.check_metric`."""
        return {"nr_samples": 4}

    def _resolve_k(self, n_features: torch.Tensor) -> torch.Tensor:
        """Each sample's k from its own number of features ``n_features`` (N,), OpenXAI's
        rule: a fraction is rounded up (at least 1); an int is capped at the number of
        features."""
        if isinstance(self.k, float):
            return torch.ceil(self.k * n_features.to(torch.float64)).to(
                n_features.dtype).clamp(min=1)
        return n_features.clamp(max=self.k)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        batch.require_model()
        assert batch.a is not None
        x = batch.x
        dev = x.device
        grp = self._grouping.for_modality(batch.modality)(x)
        # features ranked by the magnitude of their summed attribution (ties: group-id order)
        magnitude = grp.reduce(batch.a, "sum").abs()
        order = rank_groups(magnitude, grp.valid(), "morf")
        rank = torch.empty_like(order).scatter_(
            1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
            .contiguous())
        rank_map = grp.expand(rank)  # (N, ...) position of each element's feature
        g = grp.n_groups.to(dev)
        # k per sample from its own feature count (a sample with fewer features gets a
        # smaller k, not the largest sample's k capped at its count)
        k_each = self._resolve_k(g)
        k_max = int(k_each.max())
        ks = (torch.arange(1, k_max + 1, device=dev) if self.auc
              else torch.tensor([k_max], device=dev))
        k_rows = torch.minimum(ks.unsqueeze(0), k_each.unsqueeze(1))  # (N, T)
        noise = batch.modality.valid_noise(GaussianNoise(self.perturb_mean, self.perturb_std))
        draws = self.nr_samples
        # draw j of sample i has its own key: the noise of a row depends on (sample, draw)
        # only, the same at every step (only the mask changes) and in any chunking
        draw_keys = _rng.combine(batch.keys.unsqueeze(1), _GAP_STREAM,
                                 torch.arange(draws).unsqueeze(0))  # (N, draws)
        t_count = ks.shape[0]
        per_sample = batch.modality.per_sample
        top = self._perturb_top
        additive = getattr(noise, "draws", None) is None
        # flat views for index_select (several times faster than advanced indexing on the CPU)
        flat_k = k_rows.reshape(-1)
        flat_keys = draw_keys.reshape(-1)
        rank_small = rank_map.to(torch.int32) if g.numel() and int(g.max()) < 2**31 else rank_map

        row_shape = tuple(x.shape[1:])
        row_size = math.prod(row_shape)

        def positions_of(pairs: torch.Tensor, share: float
                         ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
            """The flat positions (P, L) of the perturbed elements of the (sample, k) pairs
            ``pairs`` (flat, i * T + t), and which of them are real (None: all; a pair with
            fewer is padded with unperturbed positions), or None where more than ``share`` of
            a row is perturbed (then the whole row's noise is drawn and blended)."""
            ranks = rank_small.index_select(0, torch.div(pairs, t_count, rounding_mode="floor"))
            bound = flat_k.index_select(0, pairs).to(ranks.dtype).view(
                -1, *[1] * len(row_shape))
            hit = (ranks < bound if top else ranks >= bound).expand(
                pairs.shape[0], *row_shape).reshape(pairs.shape[0], row_size)
            count = hit.sum(1)
            width = int(count.max())
            if width > share * row_size:
                return None
            # the perturbed positions first, in ascending order (a stable sort of the flags)
            pos = torch.sort(hit.to(torch.uint8), stable=True, dim=1, descending=True).indices
            pos = pos[:, :width].contiguous()
            if bool((count == width).all()):
                return pos, None
            return pos, torch.arange(width, device=pos.device) < count.unsqueeze(1)

        # the pairs' positions once for the call where they are small (a table's, a series'),
        # else per chunk for the chunk's pairs (an image's would not fit)
        whole_call = (additive and batch.n * t_count * row_size <= _WHOLE_CALL_ELEMENTS)
        whole = (positions_of(torch.arange(batch.n * t_count, device=dev),
                              _POSITIONS_SHARE_WHOLE_CALL) if whole_call else None)

        def noisy_positions(i: torch.Tensor, t: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
            """:func:`positions_of` for the rows (i, t) of a chunk (B, L)."""
            if whole_call:
                if whole is None:
                    return None
                pair = i * t_count + t
                pos, real = whole
                return (pos.index_select(0, pair),
                        None if real is None else real.index_select(0, pair))
            uniq, inverse = torch.unique_consecutive(i * t_count + t, return_inverse=True)
            found = positions_of(uniq, _POSITIONS_SHARE)
            if found is None:
                return None
            pos, real = found
            return (pos.index_select(0, inverse),
                    None if real is None else real.index_select(0, inverse))

        def build(index: tuple[torch.Tensor, ...]) -> torch.Tensor:
            i, t, j = index
            kk = flat_k.index_select(0, i * t_count + t)
            xi = x.index_select(0, i)
            keys = flat_keys.index_select(0, i * draws + j)
            if additive:  # x + noise on the top-k (PGI) or the other (PGU) features
                found = noisy_positions(i, t)
                if found is not None:
                    # only the perturbed elements' noise is drawn (each element has its own
                    # counter in the row's stream: the same numbers as the whole row's)
                    pos, real = found
                    flat = xi.view(xi.shape[0], row_size)
                    if pos.shape[1] == 0:
                        return xi
                    n = noise.sample_at(keys, row_shape, xi.dtype, pos).to(xi.device)
                    if real is None:
                        # x + noise at the (distinct) positions in one pass: scatter_add_
                        # adds in the dtype as ``x.gather(1, pos) + n`` then scatter_ would
                        flat.scatter_add_(1, pos, n)
                        return xi
                    kept = flat.gather(1, pos)
                    flat.scatter_(1, pos, torch.where(real, kept + n, kept))
                    return xi
                ranks = rank_small.index_select(0, i)
                n = noise.sample(keys, tuple(xi.shape[1:]), xi.dtype).to(xi.device)
                return rank_select(ranks, per_sample(kk.to(ranks.dtype), ranks), xi + n, xi,
                                   below=top)
            ranks = rank_map.index_select(0, i)
            mask = ranks < per_sample(kk, ranks)
            if not top:
                mask = ~mask
            return _noisy_rows(noise, xi, keys, mask.expand_as(xi))

        shape = (batch.n, t_count, draws)
        scores = batch.runner.run(build, shape, y=batch.y,  # type: ignore[union-attr]
                                  row_shape=tuple(x.shape[1:]), desc=type(self).__name__)
        flag_nonfinite(batch, scores)
        gaps = (scores.to(torch.float64) - clean_scores(batch).view(-1, 1, 1)).abs().mean(2)
        if not top:  # PGU with k covering every feature perturbs nothing: exactly no gap
            gaps = gaps.masked_fill(k_rows >= g.unsqueeze(1), 0.0)
        batch.record("k", k_rows[:, -1].cpu(), per_sample=True)
        if not self.auc:
            return gaps[:, 0]
        if t_count == 1:
            return gaps[:, 0]
        fractions = torch.linspace(0, 1, t_count, dtype=torch.float64, device=dev)
        batch.set_curves(gaps, fractions)
        return torch.trapezoid(gaps, fractions, dim=1)


def _noisy_rows(noise: Noise, x: torch.Tensor, keys: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
    """Perturbed copies of the rows ``x`` (B, ...), noise from ``keys`` (B,) only where
    ``mask`` (B, ...) holds; a noise with ``draws`` (a table's
    :class:`~evalkit.perturb.ColumnNoise`) keeps the rows valid."""
    if getattr(noise, "draws", None) is not None:
        return noise(x, keys, mask=mask)  # type: ignore[call-arg]
    n = noise.sample(keys, tuple(x.shape[1:]), x.dtype).to(x.device)
    return torch.where(mask, x + n, x)


_PARAMS = """
    Parameters
    ----------
    k:
        The number of top features: an int, or a fraction of the features (float in (0, 1],
        rounded up, at least 1; OpenXAI's rule). Default 0.25, OpenXAI's benchmark setting.
        An int above a sample's number of features means all of them. k is resolved per
        sample from that sample's own number of features (with a grouping that gives samples
        different feature counts, k=0.25 is a quarter of each sample's features).
    nr_samples:
        Noise draws per sample (OpenXAI: 100).
    perturb_std, perturb_mean:
        The Gaussian noise N(perturb_mean, perturb_std^2) added to each perturbed element
        (OpenXAI: mean 0, std 0.1), in input units. On a table with a column spec
        (:class:`~evalkit.modality.TabularModality`) the noise keeps rows valid: continuous
        columns get it scaled by their ``scales``, ordinal columns are snapped to their
        levels, and categorical features are resampled with probability ``flip_prob``
        (default sqrt(2/pi) * perturb_std, OpenXAI's flip rate).
    auc:
        False (default): the gap at k. True: the area under the gap over k = 1..K (K from
        ``k``) on a [0, 1] axis (OpenXAI's leaderboard "AUC" setting), with the per-k gaps in
        ``curves_``. K is the largest sample's k; a sample with a smaller k keeps its gap at
        its own k for the remaining steps. Where K is 1 there is no area: the score is the
        gap at k (as with ``auc=False``) and no curve is recorded.
    grouping:
        The features (default: the modality's: pixels, time steps, columns or a table's
        column groups; see :func:`evalkit.perturb.make_grouping`).

    Features are ranked by the magnitude of their attribution (summed over a feature's
    elements; ties in feature order); the target score is the class probability by default
    (``softmax=True``; OpenXAI reads the model's probability output). The noise is seeded per
    sample (``seed``): draw j of a sample comes from the key of (sample, j), the same at every
    k, so a score does not depend on the batch or the chunking (evalkit's counter-based keyed
    generator, docs/concepts.md; the numbers a seed gives changed when it replaced one NumPy
    generator per key, their distribution did not). ``k_`` records each sample's k.

    Differences from OpenXAI: the gap is read on the target class's score (OpenXAI reads the
    first output column: the same for binary classifiers); draws are keyed per sample (OpenXAI
    seeds the global RNG with the sample index).

    Reference: C. Agarwal, S. Krishna, E. Saxena, M. Pawelczyk, N. Johnson, I. Puri, M. Zitnik,
    H. Lakkaraju, "OpenXAI: Towards a Transparent Evaluation of Model Explanations", NeurIPS
    2022 (Datasets and Benchmarks).
"""

_PAPER = ("Agarwal et al., OpenXAI: Towards a Transparent Evaluation of Model Explanations, "
          "NeurIPS 2022 Datasets and Benchmarks")


class PGI(_PredictionGap):
    """Prediction Gap on Important feature perturbation (Agarwal et al. 2022): the expected
    absolute change of the prediction when the explanation's top-k features are perturbed with
    Gaussian noise. **Higher is better**: perturbing what an explanation calls important should
    change the prediction.

        PGI(x, a) = E_eps [ |f(x) - f(x + eps * 1[top-k(a)])| ]
    <<PARAMS>>
    """

    higher_is_better = True
    paper = _PAPER
    _perturb_top = True


class PGU(_PredictionGap):
    """Prediction Gap on Unimportant feature perturbation (Agarwal et al. 2022): the expected
    absolute change of the prediction when every feature *outside* the explanation's top k is
    perturbed with Gaussian noise. **Lower is better**: perturbing what an explanation calls
    unimportant should not change the prediction.

        PGU(x, a) = E_eps [ |f(x) - f(x + eps * 1[not top-k(a)])| ]

    When k covers every feature nothing is perturbed and the gap is 0.
    <<PARAMS>>
    """

    higher_is_better = False
    paper = _PAPER
    _perturb_top = False


for _cls in (PGI, PGU):
    _cls.__doc__ = (_cls.__doc__ or "").replace("    <<PARAMS>>\n", _PARAMS.strip("\n") + "\n")
