"""Ranks of methods: the one tie rule that leaderboards and plots share.

Pure NumPy/SciPy and nothing else of evalkit, so that every view of results (the
:class:`~evalkit.leaderboard.Leaderboard`, the figures of :mod:`evalkit.plotting`) ranks
methods the same way.

The rule
--------
* **Direction.** Rank 1 is the best method: the highest score when ``higher_is_better``,
  else the lowest. Callers pass the metric's direction; they never negate or ``abs`` scores.
* **Ties share the average of the places they occupy** (fractional ranking,
  ``scipy.stats.rankdata(method="average")``): two methods tied for first both rank 1.5, the
  next one ranks 3. Where a distribution over places is needed (how often a method takes each
  rank, :func:`place_shares`), a method in a tie block of ``t`` methods takes each of the
  block's ``t`` places with share ``1/t``; the mean place of that share is its average rank,
  so the two views agree.
* **NaN is not ranked**: a NaN score gets a NaN rank (and no place); the other methods are
  ranked among themselves, as if it were absent. Infinite scores are ordinary values
  (``+inf`` is the best score when higher is better). Views that need complete cases (the
  leaderboard's samples, the rows of a rank-frequency plot) select them before ranking.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata

__all__ = ["place_shares", "rank_methods", "tie_blocks"]


def rank_methods(scores: Any, higher_is_better: bool, *, axis: int = 0) -> np.ndarray:
    """Ranks of the methods along ``axis`` (1 = best, ties share the average rank, NaN scores
    get NaN ranks; see the module docstring). Returns float64 of the shape of ``scores``."""
    s = np.asarray(scores, dtype=np.float64)
    key = -s if higher_is_better else s
    return rankdata(key, axis=axis, method="average", nan_policy="omit")


def tie_blocks(scores: Any, higher_is_better: bool, *, axis: int = -1
               ) -> tuple[np.ndarray, np.ndarray]:
    """The first and last place of each method's tie block along ``axis`` (equal for a method
    without ties; NaN for a NaN score), derived from :func:`rank_methods`: ``t`` methods tied
    at average rank ``r`` occupy places ``r - (t-1)/2`` to ``r + (t-1)/2``."""
    ranks = np.moveaxis(rank_methods(scores, higher_is_better, axis=axis), axis, -1)
    # methods in one tie block, and only they, share an average rank (the blocks are disjoint
    # runs of places, so their midpoints differ); NaN equals nothing
    tied = (ranks[..., :, None] == ranks[..., None, :]).sum(-1)
    half = np.where(tied > 0, (tied - 1) / 2.0, np.nan)
    first, last = ranks - half, ranks + half
    return np.moveaxis(first, -1, axis), np.moveaxis(last, -1, axis)


def place_shares(scores: Any, higher_is_better: bool) -> np.ndarray:
    """``(..., M, M)`` shares of the places ``1..M`` each of the ``M`` methods of the last
    axis takes: 1 at its rank without ties, ``1/t`` on each place of a tie block of ``t``
    methods (zero everywhere for a NaN score). ``shares @ arange(1, M + 1)`` is
    :func:`rank_methods`."""
    first, last = tie_blocks(scores, higher_is_better, axis=-1)
    places = np.arange(1, first.shape[-1] + 1)
    inside = (places >= first[..., None]) & (places <= last[..., None])
    with np.errstate(invalid="ignore"):
        return np.where(inside, 1.0 / (last - first + 1)[..., None], 0.0)
