"""Helpers shared by the faithfulness metrics."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..._validation import check_option
from ...perturb import Grouping
from ...perturb.baselines import Baseline, Imputer
from ..base import MetricBatch

NO_CHANGE = "the perturbations did not change the prediction"
SAME_CHANGE = "every perturbation changed the prediction by the same amount"
CONST_ATTR = "the attribution sums are constant over the perturbations"


def _shared_axis(fractions: torch.Tensor) -> bool:
    return bool((fractions == fractions[:1]).all())


def set_curves(batch: MetricBatch, curve: torch.Tensor, fractions: torch.Tensor) -> None:
    batch.set_curves(curve, fractions[0] if _shared_axis(fractions) else fractions)


def _rank_rows(v: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Average ranks (1-based, ties averaged) of the valid entries of each row."""
    from scipy.stats import rankdata

    arr = v.detach().cpu().numpy().astype(np.float64)
    arr = np.where(valid.cpu().numpy(), arr, np.inf)
    ranks = rankdata(arr, axis=1, method="average")
    return torch.from_numpy(ranks).to(v.device)


def correlate(
    a: torch.Tensor,
    b: torch.Tensor,
    kind: str | Callable[[np.ndarray, np.ndarray], float],
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise correlation of ``a`` and ``b`` (N, K) over the ``valid`` entries.

    ``kind``: ``"pearson"``, ``"spearman"`` (average ranks for ties) or a callable
    ``f(a_row, b_row) -> float`` on two 1-D NumPy arrays (e.g. Quantus'
    ``correlation_kendall_tau``), called once per row on its valid entries: a user function
    forces that Python loop. Returns ``(corr, a_constant, b_constant)``: the two masks flag
    rows where a correlation is undefined (and ``corr`` is NaN there).
    """
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    if valid is None:
        valid = torch.ones_like(a, dtype=torch.bool)
    inf = torch.tensor(math.inf, dtype=torch.float64, device=a.device)
    a_const = torch.where(valid, a, inf).amin(1) == torch.where(valid, a, -inf).amax(1)
    b_const = torch.where(valid, b, inf).amin(1) == torch.where(valid, b, -inf).amax(1)
    few = valid.sum(1) < 2
    a_const = a_const | few
    undefined = a_const | b_const
    if callable(kind):
        a_np, b_np, v_np = (t.detach().cpu().numpy() for t in (a, b, valid))
        und = undefined.cpu().numpy()
        vals = np.full(a_np.shape[0], np.nan)
        for i in np.flatnonzero(~und):
            vals[i] = float(np.asarray(kind(a_np[i, v_np[i]], b_np[i, v_np[i]])).reshape(-1)[0])
        corr = torch.from_numpy(vals).to(a.device)
    else:
        if kind == "spearman":
            a = _rank_rows(a, valid)
            b = _rank_rows(b, valid)
        w = valid.to(torch.float64)
        cnt = w.sum(1, keepdim=True).clamp_min(1)
        da = (a.nan_to_num(0) - (a.nan_to_num(0) * w).sum(1, keepdim=True) / cnt) * w
        db = (b.nan_to_num(0) - (b.nan_to_num(0) * w).sum(1, keepdim=True) / cnt) * w
        den = torch.sqrt((da * da).sum(1) * (db * db).sum(1))
        corr = (da * db).sum(1) / torch.where(den > 0, den, torch.ones_like(den))
    return corr.masked_fill(undefined, math.nan), a_const, b_const


def valid_samples(batch: MetricBatch) -> torch.Tensor:
    """(N,) bool: samples not already undefined (their attribution was finite). Set-level
    metrics leave the others out of the set."""
    return torch.tensor([r is None for r in batch.nan_reasons], dtype=torch.bool,
                        device=batch.device)


def flag_correlation(batch: MetricBatch, a_const: torch.Tensor, b_const: torch.Tensor,
                      b: torch.Tensor, valid: torch.Tensor | None = None) -> None:
    """Reasons for the undefined correlations of :func:`correlate` (``b``: the output changes,
    whose constant value tells "no change" from "the same change every time")."""
    if bool(b_const.any()):
        ok = torch.isfinite(b) if valid is None else valid & torch.isfinite(b)
        zero = ((b == 0) | ~ok).all(1)
        batch.set_nan(b_const & zero, NO_CHANGE)
        batch.set_nan(b_const, SAME_CHANGE)
    batch.set_nan(a_const, CONST_ATTR)


def check_similarity(similarity_func: Any) -> Any:
    if callable(similarity_func):
        return similarity_func
    return check_option("similarity_func", similarity_func, ("pearson", "spearman"))


def baseline_values(imputer: Imputer, x: torch.Tensor,
                     keys: torch.Tensor | None) -> torch.Tensor | None:
    """Per-sample replacement values (N, ...) of a mask-independent baseline, else None."""
    if not isinstance(imputer, Baseline):
        return None
    base = imputer.values(x, keys if imputer.stochastic else None)
    return base.expand_as(x) if base.shape[0] == 1 else base


def replace_features(imputer: Imputer, base: torch.Tensor | None, xi: torch.Tensor,
                     mask: torch.Tensor, i: torch.Tensor,
                     keys: torch.Tensor | None) -> torch.Tensor:
    if base is not None:
        return torch.where(mask, base[i], xi)
    return imputer.fill(xi, mask, keys=None if keys is None else keys[i])


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
