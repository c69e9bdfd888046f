"""Helpers shared by the faithfulness metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ... import _quantus_compat
from ..._validation import check_option
from ...perturb import Grouping
from ..base import MetricBatch

NO_CHANGE = "the perturbations did not change the prediction"
SAME_CHANGE = "every perturbation changed the prediction by the same amount"
CONST_ATTR = "the attribution sums are constant over the perturbations"


def _shared_axis(fractions: torch.Tensor) -> bool:
    return bool((fractions == fractions[:1]).all())


def set_curves(batch: MetricBatch, curve: torch.Tensor, fractions: torch.Tensor) -> None:
    batch.set_curves(curve, fractions[0] if _shared_axis(fractions) else fractions)


def valid_samples(batch: MetricBatch) -> torch.Tensor:
    """(N,) bool: samples not already undefined (their attribution was finite). Set-level
    metrics leave the others out of the set."""
    return batch.defined()


def flag_correlation(batch: MetricBatch, a_const: torch.Tensor, b_const: torch.Tensor,
                      b: torch.Tensor, valid: torch.Tensor | None = None) -> None:
    """Reasons for the undefined correlations of
    :func:`~evalkit.metrics.similarity.correlate_rows` (``b``: the output changes,
    whose constant value tells "no change" from "the same change every time")."""
    if bool(b_const.any()):
        ok = torch.isfinite(b) if valid is None else valid & torch.isfinite(b)
        zero = ((b == 0) | ~ok).all(1)
        batch.set_nan(b_const & zero, NO_CHANGE)
        batch.set_nan(b_const, SAME_CHANGE)
    batch.set_nan(a_const, CONST_ATTR)


def check_similarity(similarity_func: Any) -> Any:
    similarity_func = _quantus_compat.similarity_name(similarity_func)  # "correlation_spearman"
    if callable(similarity_func):
        return similarity_func
    return check_option("similarity_func", similarity_func, ("pearson", "spearman"))


def row_percentile(v: torch.Tensor, q: float) -> torch.Tensor:
    """The q-th percentile of each row, linear interpolation (NumPy's default)."""
    srt = v.sort(dim=1).values
    pos = torch.tensor(q / 100 * (v.shape[1] - 1), dtype=torch.float64)
    lo = int(torch.floor(pos))
    hi = min(lo + 1, v.shape[1] - 1)
    frac = float(pos - lo)
    return srt[:, lo] + frac * (srt[:, hi] - srt[:, lo])


def gather_per_sample(blocks_of: Callable[[torch.Tensor], torch.Tensor], i: torch.Tensor,
                       j: torch.Tensor) -> torch.Tensor:
    """``blocks_of(samples)[., j[b]]`` of sample ``i[b]`` for every row b.

    ``blocks_of`` takes the distinct sample indices of the rows and returns their per-sample
    blocks (U, K, ...) in one vectorised call (random draws keyed per sample, so a block does
    not depend on which samples share the call); memory is bounded by the runner's chunk.
    """
    uniq, inverse = torch.unique(i, return_inverse=True)
    return blocks_of(uniq)[inverse, j]


def n_groups_check(name: str, value: int, grp: Grouping, what: str) -> None:
    g_min = int(grp.n_groups.min())
    if value > g_min:
        raise ValueError(f"`{name}`={value} is larger than the number of {what} of some inputs "
                         f"({g_min}).")
