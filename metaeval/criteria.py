"""The MetaQuantus criteria as kernels on score arrays (NumPy, float64).

Hedström, Bommer, Wickstrøm, Samek, Lapuschkin, Höhne, "The Meta-Evaluation Problem in
Explainable AI: Identifying Reliable Estimators with MetaQuantus", TMLR 2023.

Notation: ``L`` explanation methods, ``N`` samples, ``K`` perturbations of one iteration.
``q_star`` (L, N) are a metric's scores of the unperturbed explanations, ``q_hat`` (K, L, N) its
scores after each perturbation, ``mask`` (K, N) the samples a perturbation keeps (Resilience:
prediction unchanged; Adversary: prediction flipped). Every criterion lies in [0, 1] and higher
is better for all of them (the ideal estimator is m* = (1, 1, 1, 1)).

Per perturbation ``k``:

* **IAC** (intra-consistency), per method ``j``: the two-sided Wilcoxon signed-rank p-value
  (``zero_method="zsplit"``) of the pairs (q*_ij, q̂_kij) over the kept samples ``i`` with both
  scores finite. NR tests use ``p``, AR tests ``1 - p``.
* **IEC_NR** (inter-consistency under minor perturbations): the fraction of (sample, method)
  pairs whose *rank position* is the same before and after the perturbation, over kept samples
  whose L scores are all finite in both. MetaQuantus compares ``argsort`` positions, which breaks
  ties arbitrarily; here a method's position is its tie block (the interval of ranks its tied
  group occupies) and it agrees when the interval is identical. Without ties this is exactly
  MetaQuantus' criterion.
* **IEC_AR** (inter-consistency under disruptive perturbations): the fraction of finite
  (sample, method) pairs of kept samples whose quality got *worse*: q̂ < q* for higher-is-better
  metrics, q̂ > q* for lower-is-better ones (equal scores count as no reaction, 0). The direction
  comes from the metric's own ``higher_is_better`` metadata (MetaQuantus 0.0.5 tests the
  truthiness of a string flag and so inverts this criterion for every higher-is-better metric).

**Chance levels** are each criterion's expected value under a null that keeps the observed
scores and ties but removes what the criterion looks for:

* IAC and IEC_AR compare each pair (q*, q̂) before and after the perturbation; their null
  exchanges the two scores of every pair with probability ½ (the null of the Wilcoxon test).
  :func:`iac_chance` is E[p] under it: 0.5 for continuous scores (up to the discreteness of
  small exact tests), 1 when every pair is tied (p = 1 whatever the signs), and far above 0.5
  when most pairs are tied (the zero differences widen the test's null distribution: with 12
  changed pairs among 1,024 it is 0.87). :func:`iec_ar_chance` is half the fraction of untied
  pairs (a tied pair never counts as worse): 0.5 for continuous scores, 0 when nothing changed.
* IEC_NR compares rank positions across methods; its null hands each sample's perturbed scores
  to the methods in a uniformly random order (:func:`iec_nr_chance`): 1/L without ties, 1 when
  everything is tied.

:func:`chance_levels` gives the values for continuous scores (0.5, 0.5, 1/L, 0.5).

A perturbation whose mask keeps no sample (no prediction flipped under an Adversary test, all
flipped under a Resilience test), or no finite pair, has an *undefined* value (NaN) and is
counted in the coverage; it never turns into 0 or 1.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.stats
from scipy.special import ndtr

__all__ = [
    "CHANCE",
    "CRITERIA",
    "CriterionValues",
    "chance_levels",
    "iac_chance",
    "iac_pvalues",
    "iec_ar",
    "iec_ar_chance",
    "iec_nr",
    "iec_nr_chance",
    "tie_blocks",
    "wilcoxon_pvalue",
]

#: the four criteria, in MetaQuantus' order m = (IAC_NR, IAC_AR, IEC_NR, IEC_AR)
CRITERIA = ("IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR")

#: chance levels for continuous (untied) scores that do not depend on L (IEC_NR's is 1/L; see
#: :func:`chance_levels`); with ties see :func:`iac_chance`, :func:`iec_ar_chance` and
#: :func:`iec_nr_chance`
CHANCE = {"IAC_NR": 0.5, "IAC_AR": 0.5, "IEC_AR": 0.5}


def chance_levels(n_methods: int) -> dict[str, float]:
    """The value of each criterion (and MC) for an estimator whose scores are unrelated
    continuous random draws (no ties): 0.5 for IAC_NR, IAC_AR and IEC_AR, ``1/L`` for IEC_NR,
    and their mean for MC. With tied scores the chance levels depend on the data (see the
    module docstring); :meth:`~metaeval.MetaEvaluationResult.summary` reports those.
    """
    if n_methods < 1:
        raise ValueError(f"`n_methods` must be >= 1; got {n_methods}.")
    out = {"IAC_NR": 0.5, "IAC_AR": 0.5, "IEC_NR": 1.0 / n_methods, "IEC_AR": 0.5}
    out["MC"] = float(np.mean([out[c] for c in CRITERIA]))
    return out


@dataclass
class CriterionValues:
    """Per-perturbation values of one criterion and how many samples/pairs each used."""

    values: np.ndarray  #: criterion values, NaN where undefined
    n_used: np.ndarray  #: samples (IAC: pairs) that entered each value


def _check(q_star: np.ndarray, q_hat: np.ndarray, mask: np.ndarray):
    q_star = np.asarray(q_star, dtype=np.float64)
    q_hat = np.asarray(q_hat, dtype=np.float64)
    mask = np.asarray(mask)
    if q_star.ndim != 2:
        raise ValueError(f"`q_star` must have shape (L, N); got {q_star.shape}.")
    if q_hat.ndim == 2:
        q_hat = q_hat[None]
    if q_hat.ndim != 3 or q_hat.shape[1:] != q_star.shape:
        raise ValueError(f"`q_hat` must have shape (K, L, N) with (L, N) = {q_star.shape}; "
                         f"got {q_hat.shape}.")
    if mask.ndim == 1:
        mask = np.broadcast_to(mask, (q_hat.shape[0], mask.shape[0]))
    if mask.shape != (q_hat.shape[0], q_star.shape[1]):
        raise ValueError(f"`mask` must have shape (K, N) = {(q_hat.shape[0], q_star.shape[1])}; "
                         f"got {mask.shape}.")
    if mask.dtype != bool:
        raise TypeError(f"`mask` must be boolean; got {mask.dtype}.")
    return q_star, q_hat, mask


def wilcoxon_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of paired samples, ``zero_method="zsplit"``.

    Pairs with a non-finite member are dropped. No pair left: NaN (undefined). All differences
    zero: 1.0 (no evidence of change; SciPy gives exactly this for two or more pairs and raises
    for one). Anything else is ``scipy.stats.wilcoxon`` as MetaQuantus calls it.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size == 0:
        return float("nan")
    if np.all(a == b):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            p = scipy.stats.wilcoxon(a, b, alternative="two-sided", zero_method="zsplit")[1]
        except ValueError:
            return float("nan")
    return float(p)


def iac_pvalues(q_star: np.ndarray, q_hat: np.ndarray, mask: np.ndarray) -> CriterionValues:
    """Wilcoxon p-values (K, L) of unperturbed versus perturbed scores, per perturbation and
    method, over the kept samples with finite pairs (NaN where none is left).

    NR tests use these p-values as IAC values; AR tests use ``1 - p``. One SciPy call per
    (perturbation, method): the kept samples differ per perturbation, so the test cannot be
    batched into one call.
    """
    q_star, q_hat, mask = _check(q_star, q_hat, mask)
    return _over_kept_pairs(q_star, q_hat, mask, lambda k, j, a, b: wilcoxon_pvalue(a, b))


def _over_kept_pairs(q_star: np.ndarray, q_hat: np.ndarray, mask: np.ndarray,
                     fn: Callable[[int, int, np.ndarray, np.ndarray], float]) -> CriterionValues:
    """``fn(k, j, q*, q̂)`` per perturbation k and method j, on the kept samples whose two
    scores are finite (NaN where none is left), with the number of pairs used."""
    k_, l_, _ = q_hat.shape
    out = np.full((k_, l_), np.nan)
    used = np.zeros((k_, l_), dtype=np.int64)
    finite_star = np.isfinite(q_star)
    for k in range(k_):
        for j in range(l_):
            keep = mask[k] & finite_star[j] & np.isfinite(q_hat[k, j])
            used[k, j] = int(keep.sum())
            if used[k, j]:
                out[k, j] = fn(k, j, q_star[j, keep], q_hat[k, j, keep])
    return CriterionValues(out, used)


#: above this many (pairs x rank units), :func:`iac_chance` approximates the null distribution
#: of the signed-rank statistic by a normal one instead of computing it exactly
_EXACT_NULL_BUDGET = 5_000_000


def iac_chance(q_star: np.ndarray, q_hat: np.ndarray, mask: np.ndarray,
               pvalues: np.ndarray | None = None) -> CriterionValues:
    """The chance level of IAC per perturbation and method (K, L): E[p] of the p-value of
    :func:`iac_pvalues` when the two scores of every kept finite pair are exchanged with
    probability ½ (the sign-flip null of the Wilcoxon test), keeping the observed differences
    and ties. It is the chance level of IAC_NR; IAC_AR's is ``1 - E[p]``.

    * every pair tied: 1 (p is 1 whatever the signs);
    * continuous scores: 0.5 for many pairs (a little more for a few pairs: the exact test is
      discrete, e.g. 0.537 for 8 pairs);
    * mostly tied pairs (a binary metric that rarely changes): well above 0.5, because the
      zero differences' ranks widen the test's null distribution (12 changed pairs among 1,024
      give 0.87).

    The null distribution of the statistic is computed exactly (by the distribution of subset
    sums of the untied pairs' ranks) where that is cheap, else approximated by a normal
    distribution (many untied pairs, where the approximation error is about 0.001 or less). Which of
    SciPy's p-values (exact/permutation for small samples, asymptotic otherwise) applies is
    read off the observed p-value, so the level is that of the p-values the criterion used;
    ``pvalues`` (K, L) from :func:`iac_pvalues` saves recomputing them. NaN where the p-value
    is undefined.
    """
    q_star, q_hat, mask = _check(q_star, q_hat, mask)
    p_obs = iac_pvalues(q_star, q_hat, mask).values if pvalues is None else pvalues
    return _over_kept_pairs(q_star, q_hat, mask,
                            lambda k, j, a, b: _null_mean_pvalue(a - b, float(p_obs[k, j])))


def _subset_sums(weights: np.ndarray) -> np.ndarray:
    """P(sum of a uniformly random subset of the integer ``weights`` = s), s = 0..sum."""
    total = int(weights.sum())
    probs = np.zeros(total + 1)
    probs[0] = 1.0
    top = 0
    for w in (int(v) for v in weights):
        shifted = probs[: top + 1].copy()
        probs[: top + 1] *= 0.5
        probs[w: w + top + 1] += 0.5 * shifted
        top += w
    return probs


def _null_mean_pvalue(d: np.ndarray, p_obs: float) -> float:
    """E[p] of the two-sided zsplit Wilcoxon p-value of the differences ``d`` when each
    difference's sign is flipped with probability ½ (``p_obs``: the observed p-value)."""
    n = d.size
    if n == 0:
        return float("nan")
    untied = d != 0
    if not untied.any():
        return 1.0  # wilcoxon_pvalue gives 1 for all-zero differences, whatever the signs
    if not np.isfinite(p_obs):
        return float("nan")
    a = np.abs(d)
    ranks = scipy.stats.rankdata(a)  # average ranks of |d|, zeros included (zsplit)
    r = ranks[untied]
    # the statistic: T = sum of the ranks of the positive differences (+ half the zeros'
    # ranks, a constant); under the null T - sum(r)/2 is symmetric around 0
    _, counts = np.unique(a, return_counts=True)
    se = np.sqrt((n * (n + 1.0) * (2 * n + 1.0) - 0.5 * float(np.sum(counts**3 - counts))) / 24)
    centre = r.sum() / 2

    def asymptotic(t: np.ndarray | float) -> np.ndarray:
        return np.minimum(1.0, 2 * ndtr(-np.abs(np.asarray(t) - centre) / se))

    weights = np.rint(2 * r).astype(np.int64)  # ranks are multiples of 1/2
    small = n <= 50  # SciPy may use an exact or permutation p-value only up to 50 pairs
    if not small and r.size * int(weights.sum()) > _EXACT_NULL_BUDGET:
        # T approximately normal with variance sum(r^2)/4: E[2 Phi(-|X|/se)] for X ~ N(0, s^2)
        # is 1 - (2/pi) arctan(s/se)
        s = 0.5 * float(np.sqrt(np.sum(r**2)))
        return float(1.0 - 2.0 / np.pi * np.arctan(s / se))
    probs = _subset_sums(weights)
    support = np.flatnonzero(probs > 0)
    prob = probs[support]
    t = support / 2.0
    e_asymptotic = float(np.sum(prob * asymptotic(t)))
    if not small:
        return e_asymptotic
    # exact (no ties) or permutation p-values: p(t) = min(1, 2 min(P(T <= t), P(T >= t)))
    below = np.cumsum(prob)
    above = np.cumsum(prob[::-1])[::-1]
    p_exact = np.minimum(1.0, 2 * np.minimum(below, above))
    t_obs = float(np.sum(r[d[untied] > 0]))
    i = int(np.searchsorted(t, t_obs))
    tol = 1e-9 * max(1.0, p_obs)
    exact_fits = i < t.size and t[i] == t_obs and abs(p_exact[i] - p_obs) <= tol
    if exact_fits and abs(float(asymptotic(t_obs)) - p_obs) > tol:
        return float(np.sum(prob * p_exact))
    return e_asymptotic


def tie_blocks(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank intervals of the methods (axis 0) per sample: ``lo`` is the number of methods with a
    strictly lower score, ``hi`` one less than the number with a lower or equal score. A method
    without ties has ``lo == hi`` (its 0-based ascending rank); tied methods share an interval.
    """
    s = np.asarray(scores, dtype=np.float64)
    less = s[None, :, ...] < s[:, None, ...]  # [j, l]: s_l < s_j
    leq = s[None, :, ...] <= s[:, None, ...]
    return less.sum(1), leq.sum(1) - 1


def _kept_rows(q_star: np.ndarray, q_hat: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(K, N): kept samples whose L scores are finite before and after."""
    return mask & np.isfinite(q_star).all(0)[None] & np.isfinite(q_hat).all(1)


def iec_nr(q_star: np.ndarray, q_hat: np.ndarray, mask: np.ndarray) -> CriterionValues:
    """IEC_NR per perturbation (K,): the mean over kept samples and methods of
    ``1[tie block of method j unchanged]`` (see the module docstring)."""
    q_star, q_hat, mask = _check(q_star, q_hat, mask)
    lo0, hi0 = tie_blocks(q_star)  # (L, N)
    lo1, hi1 = tie_blocks(q_hat.transpose(1, 0, 2))  # (L, K, N)
    same = (lo1 == lo0[:, None]) & (hi1 == hi0[:, None])  # (L, K, N)
    per_sample = same.mean(0)  # (K, N)
    rows = _kept_rows(q_star, q_hat, mask)
    return _masked_mean(per_sample, rows)


def iec_nr_chance(q_star: np.ndarray, q_hat: np.ndarray, mask: np.ndarray) -> CriterionValues:
    """The IEC_NR an estimator would get if each sample's perturbed scores were handed to the
    methods in a uniformly random order (a permutation null that keeps the observed ties).

    Method j keeps its tie block (lo, hi) only if it receives a value whose block in the
    perturbed scores is exactly (lo, hi); such a value, if it exists, is held by hi - lo + 1 of
    the L methods, so the probability is (hi - lo + 1) / L. Without ties this is 1/L. A metric
    whose scores are all tied in both (e.g. a binary metric that is always 1) has chance level
    1: its perfect IEC_NR carries no information.
    """
    q_star, q_hat, mask = _check(q_star, q_hat, mask)
    l_ = q_star.shape[0]
    lo0, hi0 = tie_blocks(q_star)  # (L, N)
    lo1, hi1 = tie_blocks(q_hat.transpose(1, 0, 2))  # (L, K, N)
    # exists[j, k, n]: some method l has, after the perturbation, the block j had before
    exists = ((lo1[None] == lo0[:, None, None]) & (hi1[None] == hi0[:, None, None])).any(1)
    prob = np.where(exists, (hi0 - lo0 + 1)[:, None] / l_, 0.0)  # (L, K, N)
    rows = _kept_rows(q_star, q_hat, mask)
    return _masked_mean(prob.mean(0), rows)


def iec_ar(
    q_star: np.ndarray, q_hat: np.ndarray, mask: np.ndarray, *, higher_is_better: bool
) -> CriterionValues:
    """IEC_AR per perturbation (K,): the fraction of finite (kept sample, method) pairs whose
    score got worse (direction from ``higher_is_better``; ties count 0)."""
    if not isinstance(higher_is_better, bool | np.bool_):
        raise TypeError("`higher_is_better` must be a bool (the metric's metadata); got "
                        f"{higher_is_better!r}.")
    q_star, q_hat, mask = _check(q_star, q_hat, mask)
    worse = q_hat < q_star[None] if higher_is_better else q_hat > q_star[None]  # (K, L, N)
    finite = np.isfinite(q_hat) & np.isfinite(q_star)[None]
    use = finite & mask[:, None, :]
    n = use.sum((1, 2))
    hits = (worse & use).sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(n > 0, hits / np.maximum(n, 1), np.nan)
    return CriterionValues(values.astype(np.float64), n.astype(np.int64))


def iec_ar_chance(q_star: np.ndarray, q_hat: np.ndarray, mask: np.ndarray) -> CriterionValues:
    """The chance level of IEC_AR per perturbation (K,): its expected value when the two scores
    of every finite kept (sample, method) pair are exchanged with probability ½ (the null of
    IAC), keeping the observed ties. A tied pair never counts as worse and an untied one is
    worse with probability ½, so it is half the fraction of untied pairs: 0.5 for continuous
    scores, 0 when no score changed. It does not depend on the direction."""
    q_star, q_hat, mask = _check(q_star, q_hat, mask)
    finite = np.isfinite(q_hat) & np.isfinite(q_star)[None]
    use = finite & mask[:, None, :]
    n = use.sum((1, 2))
    untied = ((q_hat != q_star[None]) & use).sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(n > 0, 0.5 * untied / np.maximum(n, 1), np.nan)
    return CriterionValues(values.astype(np.float64), n.astype(np.int64))


def _masked_mean(per_sample: np.ndarray, rows: np.ndarray) -> CriterionValues:
    n = rows.sum(1)
    total = np.where(rows, per_sample, 0.0).sum(1)
    values = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    return CriterionValues(values.astype(np.float64), n.astype(np.int64))
