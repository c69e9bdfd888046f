"""The paired test that decides one ordered pair of candidates (``better`` must beat ``worse``).

:func:`decide_pair` takes the per-sample scores of both candidates (one row per seed) and the
metric's direction, and returns a :class:`PairDecision`. The rules (documented once here and in
``docs/validity.md``):

1. **Seeds.** A sample's score is the mean of its finite scores over the seeds (a metric without
   randomness runs once). Samples are the units of the test: repeated seeds of one sample are
   not independent observations, so they are averaged, never pooled.
2. **NaN.** A sample whose score is NaN for either candidate (in every seed) is dropped; the
   number dropped is ``n_nan``; ``n`` samples remain.
3. **Direction.** The difference of sample ``i`` is ``d_i = (b_i - w_i)`` when higher scores are
   better and ``(w_i - b_i)`` when lower are: ``d_i > 0`` means the sample agrees with the
   known order.
4. **Ties.** ``|d_i| <= rtol * scale`` counts as a tie (``d_i = 0``), where ``scale`` is the
   largest absolute finite score the metric gave any candidate on the testbed: differences at
   the level of floating-point noise (and the exact ties of binary or sign-blind scores) are no
   evidence either way.
5. **Test.** The Wilcoxon signed-rank test (two-sided; ``zero_method="zsplit"``: the ranks of
   tied samples count half for each side, so ties weigh against a decision; Wilcoxon 1945,
   Pratt 1959), p-value ``p``. The effect is the matched-pairs rank-biserial correlation
   ``r = (R+ - R-) / (n (n + 1) / 2)`` in [-1, 1] (Kerby 2014), with the same tie split:
   ``r > 0`` leans towards the known order.
6. **Decision.** The pair is *decided* when ``p < alpha`` and ``r != 0``; its outcome is
   ``"in order"`` (``r > 0``) or ``"reversed"`` (``r < 0``). Otherwise it is ``"undecided"``
   (all tied, not significant, or no sample left). ``alpha`` holds per pair (no correction for
   the several pairs of a testbed).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["OUTCOMES", "PairDecision", "decide_pair", "score_scale"]

#: the outcomes of one ordered pair
OUTCOMES = ("in order", "reversed", "undecided")


@dataclass(frozen=True)
class PairDecision:
    """The evidence on one ordered pair (see the module docstring for the rules)."""

    n: int  #: samples with both scores defined
    n_nan: int  #: samples dropped because a score is NaN
    n_ties: int  #: samples whose difference is within the tolerance
    mean_better: float
    mean_worse: float
    median_better: float
    median_worse: float
    effect: float  #: rank-biserial correlation in [-1, 1]; > 0: towards the known order
    p_value: float
    decided: bool
    outcome: str  #: "in order", "reversed" or "undecided"
    note: str = ""  #: why an undecided pair is undecided


def _per_sample(scores: np.ndarray) -> np.ndarray:
    """(seeds, N) or (N,) -> (N,): the mean of the finite values over seeds (NaN if none)."""
    a = np.asarray(scores, dtype=np.float64)
    if a.ndim == 1:
        return a
    if a.ndim != 2:
        raise ValueError(f"Scores must be (N,) or (seeds, N); got shape {a.shape}.")
    finite = np.isfinite(a)
    count = finite.sum(0)
    total = np.where(finite, a, 0.0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def score_scale(*scores: np.ndarray) -> float:
    """The largest absolute finite score in ``scores`` (0.0 if none): the scale of the tie
    tolerance."""
    values = [np.abs(np.asarray(s, dtype=np.float64)) for s in scores]
    finite = [v[np.isfinite(v)] for v in values]
    return float(max((f.max() for f in finite if f.size), default=0.0))


def decide_pair(better: np.ndarray, worse: np.ndarray, *, higher_is_better: bool,
                alpha: float = 0.05, rtol: float = 1e-5, scale: float | None = None
                ) -> PairDecision:
    """Decide whether ``better`` beats ``worse`` on paired samples.

    ``better`` and ``worse`` are (N,) per-sample scores or (seeds, N); ``scale`` is the scale of
    the tie tolerance (default: :func:`score_scale` of the two). Returns a
    :class:`PairDecision`.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"`alpha` must lie in (0, 1); got {alpha!r}.")
    if not rtol >= 0.0:
        raise ValueError(f"`rtol` must be >= 0; got {rtol!r}.")
    b, w = _per_sample(better), _per_sample(worse)
    if b.shape != w.shape:
        raise ValueError(f"The candidates' scores must pair up; got {b.shape} and {w.shape}.")
    keep = np.isfinite(b) & np.isfinite(w)
    n_nan = int((~keep).sum())
    b, w = b[keep], w[keep]
    n = int(b.size)
    if scale is None:
        scale = score_scale(b, w)
    if n == 0:
        return PairDecision(0, n_nan, 0, math.nan, math.nan, math.nan, math.nan, math.nan,
                            math.nan, False, "undecided", "no sample has both scores defined")
    d = (b - w) if higher_is_better else (w - b)
    tied = np.abs(d) <= rtol * scale
    d = np.where(tied, 0.0, d)
    n_ties = int(tied.sum())
    summary = (float(b.mean()), float(w.mean()), float(np.median(b)), float(np.median(w)))
    if n_ties == n:
        return PairDecision(n, n_nan, n_ties, *summary, 0.0, 1.0, False, "undecided",
                            "every sample ties (within rtol)")
    ranks = stats.rankdata(np.abs(d))
    r_plus = float(ranks[d > 0].sum() + 0.5 * ranks[d == 0].sum())
    r_minus = float(ranks[d < 0].sum() + 0.5 * ranks[d == 0].sum())
    effect = (r_plus - r_minus) / (n * (n + 1) / 2.0)
    with warnings.catch_warnings():
        # scipy warns that the exact distribution is unavailable with ties or zeros and uses
        # the normal approximation, which is what we want there
        warnings.simplefilter("ignore")
        p = float(stats.wilcoxon(d, zero_method="zsplit", alternative="two-sided").pvalue)
    decided = bool(p < alpha and effect != 0.0)
    if decided:
        return PairDecision(n, n_nan, n_ties, *summary, effect, p, True,
                            "in order" if effect > 0 else "reversed")
    return PairDecision(n, n_nan, n_ties, *summary, effect, p, False, "undecided",
                        f"not significant (p = {p:.3g} >= alpha = {alpha:g})")
