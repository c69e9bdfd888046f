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
  scores finite. NR tests use ``p``, AR tests ``1 - p``. Chance level 0.5: under exchangeable
  scores (an estimator whose scores are unrelated draws) p is uniform, so E[p] = E[1 - p] = 0.5.
* **IEC_NR** (inter-consistency under minor perturbations): the fraction of (sample, method)
  pairs whose *rank position* is the same before and after the perturbation, over kept samples
  whose L scores are all finite in both. MetaQuantus compares ``argsort`` positions, which breaks
  ties arbitrarily; here a method's position is its tie block (the interval of ranks its tied
  group occupies) and it agrees when the interval is identical. Without ties this is exactly
  MetaQuantus' criterion. Chance level ``1/L`` (a uniformly random re-ranking); with ties the
  data-dependent chance level of :func:`iec_nr_chance` is reported as well.
* **IEC_AR** (inter-consistency under disruptive perturbations): the fraction of finite
  (sample, method) pairs of kept samples whose quality got *worse*: q̂ < q* for higher-is-better
  metrics, q̂ > q* for lower-is-better ones (equal scores count as no reaction, 0). The direction
  comes from the metric's own ``higher_is_better`` metadata (MetaQuantus 0.0.5 tests the
  truthiness of a string flag and so inverts this criterion for every higher-is-better metric).
  Chance level 0.5 for continuous scores.

A perturbation whose mask keeps no sample (no prediction flipped under an Adversary test, all
flipped under a Resilience test), or no finite pair, has an *undefined* value (NaN) and is
counted in the coverage; it never turns into 0 or 1.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.stats

__all__ = [
    "CHANCE",
    "CRITERIA",
    "CriterionValues",
    "chance_levels",
    "iac_pvalues",
    "iec_ar",
    "iec_nr",
    "iec_nr_chance",
    "tie_blocks",
    "wilcoxon_pvalue",
]

#: the four criteria, in MetaQuantus' order m = (IAC_NR, IAC_AR, IEC_NR, IEC_AR)
CRITERIA = ("IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR")

#: chance levels that do not depend on L (IEC_NR's is 1/L; see :func:`chance_levels`)
CHANCE = {"IAC_NR": 0.5, "IAC_AR": 0.5, "IEC_AR": 0.5}


def chance_levels(n_methods: int) -> dict[str, float]:
    """The value of each criterion (and MC) for an estimator whose scores are unrelated
    random draws: 0.5 for IAC_NR, IAC_AR and IEC_AR, ``1/L`` for IEC_NR, and their mean for MC.
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
    k_, l_, _ = q_hat.shape
    p = np.full((k_, l_), np.nan)
    used = np.zeros((k_, l_), dtype=np.int64)
    finite_star = np.isfinite(q_star)
    for k in range(k_):
        for j in range(l_):
            keep = mask[k] & finite_star[j] & np.isfinite(q_hat[k, j])
            used[k, j] = int(keep.sum())
            if used[k, j]:
                p[k, j] = wilcoxon_pvalue(q_star[j, keep], q_hat[k, j, keep])
    return CriterionValues(p, used)


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


def _masked_mean(per_sample: np.ndarray, rows: np.ndarray) -> CriterionValues:
    n = rows.sum(1)
    total = np.where(rows, per_sample, 0.0).sum(1)
    values = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    return CriterionValues(values.astype(np.float64), n.astype(np.int64))
