"""Reliability statistics of a set of metrics on the same evaluation results.

Beyond MetaQuantus: psychometric and benchmark-science measures of whether a metric's verdict
on explanation methods can be trusted, computed from per-sample scores (n samples x L methods
per metric):

* **Inter-rater reliability**, Krippendorff's alpha over per-sample method rankings: each
  sample is a rater that ranks the methods (the units); alpha = 1 - D_o / D_e (Tomsett,
  Harborne, Chakraborty, Gurram, Preece, "Sanity Checks for Saliency Metrics", AAAI 2020;
  Krippendorff, "Computing Krippendorff's Alpha-Reliability", 2011). Krippendorff's reading:
  alpha >= 0.8 reliable, 0.667-0.8 tentative, below 0.667 not reliable.
* **Inter-method reliability**: Spearman correlation across samples between the scores of two
  methods, averaged over pairs (high: the metric tracks the samples, not the explainers).
* **Rank agreement between metrics / variants** (internal consistency): per-sample Kendall
  tau-b and Spearman rho between two metrics' method rankings, averaged over samples; Kendall
  tau between their leaderboards; standardised Cronbach's alpha of a group of metrics.
* **Discriminative power**, the MAD ratio: between-method MAD over the mean within-method MAD
  (Gevaert et al., "Evaluating Feature Attribution Methods in the Image Domain", Machine
  Learning 2024).
* **Significance against a random baseline**: a paired Wilcoxon signed-rank test of each method
  against the baseline method, with Holm and Benjamini-Hochberg corrections, the median
  difference and the common-language effect size (CLES).
* **Rank stability**: bootstrap over samples, re-rank the methods by mean score, report
  P(rank = r) per method, the Kendall tau between bootstrap and full-data leaderboards, and how
  often the winner stays the winner (Maier-Hein et al., Nature Communications 2018).

Everything is direction-aware: rank 1 is the best method under the metric's own direction.
:func:`reliability_report` computes all of it and a leaderboard in one call.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats

from evalkit._rng import derive_seed

__all__ = [
    "ReliabilityReport",
    "benjamini_hochberg",
    "bootstrap_rank_stability",
    "cronbach_alpha",
    "holm",
    "inter_method_reliability",
    "krippendorff_alpha",
    "mad_ratio",
    "method_ranks",
    "rank_agreement",
    "reliability_report",
    "wilcoxon_vs_baseline",
]

LEVELS = ("nominal", "ordinal", "interval", "ratio")


# --------------------------------------------------------------------------- Krippendorff
def krippendorff_alpha(data: Any, level: str = "ordinal") -> float:
    """Krippendorff's alpha of a reliability data matrix (raters x units), NaN = missing.

    alpha = 1 - D_o / D_e from the coincidence matrix of the values (Krippendorff 2011):
    o_ck = sum over units u of (pairs of values c, k from different raters in u) / (m_u - 1),
    n_c = sum_k o_ck, D_o = sum o_ck d2_ck / n, D_e = sum n_c n_k d2_ck / (n (n - 1)), with the
    difference function d2 of the ``level``: ``"nominal"`` 1[c != k], ``"ordinal"``
    (sum_{g=c..k} n_g - (n_c + n_k) / 2)^2, ``"interval"`` (c - k)^2, ``"ratio"``
    ((c - k) / (c + k))^2. Units with fewer than two values are not pairable and ignored.
    Returns NaN when D_e = 0 (a single value overall: no variation to agree on).
    """
    if level not in LEVELS:
        raise ValueError(f"`level` must be one of {LEVELS}; got {level!r}.")
    d = np.asarray(data, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"`data` must be a (raters, units) matrix; got shape {d.shape}.")
    finite = np.isfinite(d)
    values = np.unique(d[finite])
    if values.size == 0:
        return float("nan")
    idx = np.searchsorted(values, np.where(finite, d, values[0]))
    n_v = values.size
    # counts[u, v]: raters that gave value v to unit u
    counts = np.zeros((d.shape[1], n_v))
    units = np.broadcast_to(np.arange(d.shape[1]), d.shape)
    np.add.at(counts, (units[finite], idx[finite]), 1.0)
    m_u = counts.sum(1)
    pairable = m_u >= 2
    c = counts[pairable]
    if c.size == 0:
        return float("nan")
    weights = 1.0 / (m_u[pairable] - 1.0)
    o = np.einsum("u,uc,uk->ck", weights, c, c) - np.diag((weights[:, None] * c).sum(0))
    n_c = o.sum(1)
    n = n_c.sum()
    if level == "nominal":
        d2 = 1.0 - np.eye(n_v)
    elif level == "interval":
        d2 = (values[:, None] - values[None, :]) ** 2
    elif level == "ratio":
        with np.errstate(invalid="ignore", divide="ignore"):
            s = values[:, None] + values[None, :]
            d2 = np.where(s != 0, ((values[:, None] - values[None, :]) / np.where(s != 0, s, 1))
                          ** 2, 0.0)
    else:
        cum = np.concatenate([[0.0], np.cumsum(n_c)])
        lo = np.minimum.outer(np.arange(n_v), np.arange(n_v))
        hi = np.maximum.outer(np.arange(n_v), np.arange(n_v))
        d2 = (cum[hi + 1] - cum[lo] - (n_c[:, None] + n_c[None, :]) / 2.0) ** 2
    d_o = (o * d2).sum() / n
    d_e = (np.outer(n_c, n_c) * d2).sum() / (n * (n - 1.0))
    if d_e == 0:
        return float("nan")
    return float(1.0 - d_o / d_e)


# --------------------------------------------------------------------------- ranks
def method_ranks(scores: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Per-sample ranks of the methods (n, L): 1 = best under the metric's direction, ties get
    the average rank; rows with a NaN are NaN."""
    s = np.asarray(scores, dtype=np.float64)
    oriented = -s if higher_is_better else s
    ranks = scipy.stats.rankdata(oriented, axis=1, method="average")
    ranks[~np.isfinite(s).all(1)] = np.nan
    return ranks


def _rank_vector(means: np.ndarray, higher_is_better: bool) -> np.ndarray:
    oriented = -means if higher_is_better else means
    return scipy.stats.rankdata(oriented, axis=-1, method="average")


def _kendall_tau_b(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall tau-b between rows of a and b (..., L), vectorised; NaN if either is constant."""
    sa = np.sign(a[..., :, None] - a[..., None, :])
    sb = np.sign(b[..., :, None] - b[..., None, :])
    iu = np.triu_indices(a.shape[-1], 1)
    sa, sb = sa[..., iu[0], iu[1]], sb[..., iu[0], iu[1]]
    num = (sa * sb).sum(-1)
    den = np.sqrt((sa != 0).sum(-1) * (sb != 0).sum(-1).astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


# --------------------------------------------------------------------------- per metric
def mad_ratio(scores: np.ndarray, *, between: str = "medians") -> float:
    """Discriminative power: between-method MAD / mean within-method MAD (n, L scores).

    Within: the mean over methods of median_i |s_ij - median_i s_ij|. Between
    (``"medians"``): the median absolute deviation of the L method medians from their median;
    ``"pooled"``: of all scores from the pooled median (the later AttriBench variant). Higher
    means the metric separates methods more than its per-sample noise. NaN scores are ignored;
    NaN if the within-method MAD is 0.
    """
    s = np.asarray(scores, dtype=np.float64)
    if between not in ("medians", "pooled"):
        raise ValueError(f"`between` must be 'medians' or 'pooled'; got {between!r}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(s, axis=0)
        within = np.nanmean(np.nanmedian(np.abs(s - med), axis=0))
        if between == "medians":
            b = np.nanmedian(np.abs(med - np.nanmedian(med)))
        else:
            b = np.nanmedian(np.abs(s - np.nanmedian(s)))
    if not np.isfinite(within) or within == 0:
        return float("nan")
    return float(b / within)


def inter_method_reliability(scores: np.ndarray) -> float:
    """Mean Spearman correlation across samples between pairs of methods' scores (complete
    rows only). High values mean the metric responds to the sample more than to the method."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s).all(1)]
    if s.shape[0] < 3 or s.shape[1] < 2:
        return float("nan")
    r = scipy.stats.rankdata(s, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        c = np.corrcoef(r.T)  # a constant method gives NaN correlations, left out
    iu = np.triu_indices(s.shape[1], 1)
    vals = c[iu]
    return float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN entries stay NaN and do not count)."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adj
    return out


def benjamini_hochberg(p: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg (FDR) adjusted p-values (NaN entries stay NaN and do not count)."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    raw = p[order] * m / np.arange(1, m + 1)
    adj = np.minimum(1.0, np.minimum.accumulate(raw[::-1])[::-1])
    out[order] = adj
    return out


def wilcoxon_vs_baseline(scores: np.ndarray, methods: Sequence[str], baseline: str,
                         higher_is_better: bool) -> pd.DataFrame:
    """Paired two-sided Wilcoxon signed-rank test of each method against ``baseline``.

    Differences are oriented so that positive = better than the baseline. Returns one row per
    method: ``n`` (finite pairs), ``median_diff``, ``cles`` (P(better) + P(tie)/2), ``statistic``,
    raw ``p`` (uncorrected; see :func:`reliability_report` for the corrections) and
    ``direction``: the side the test weighs, ``"better"``, ``"worse"`` or ``"tie"`` by the sign
    of the signed-rank sum of the non-zero differences (what the test's ``p`` is about). It is
    read separately from ``median_diff``: with many tied samples the median difference is 0
    while the non-zero differences lean clearly one way (a small ``p``).
    """
    s = np.asarray(scores, dtype=np.float64)
    methods = list(methods)
    if baseline not in methods:
        raise ValueError(f"Baseline method {baseline!r} is not among {methods}.")
    b = s[:, methods.index(baseline)]
    sign = 1.0 if higher_is_better else -1.0
    rows = []
    for j, m in enumerate(methods):
        if m == baseline:
            continue
        d = sign * (s[:, j] - b)
        d = d[np.isfinite(d)]
        row: dict[str, Any] = {"method": m, "baseline": baseline, "n": int(d.size),
                               "median_diff": float(np.median(d)) if d.size else np.nan,
                               "cles": float((d > 0).mean() + 0.5 * (d == 0).mean())
                               if d.size else np.nan,
                               "statistic": np.nan, "p": np.nan,
                               "direction": _signed_rank_direction(d)}
        if d.size and np.any(d != 0):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    res = scipy.stats.wilcoxon(d, alternative="two-sided")
                    row["statistic"], row["p"] = float(res[0]), float(res[1])
                except ValueError:
                    pass
        elif d.size:
            row["p"] = 1.0
        rows.append(row)
    return pd.DataFrame(rows)


def _signed_rank_direction(d: np.ndarray) -> str:
    """``"better"``/``"worse"``/``"tie"``: the sign of the Wilcoxon signed-rank sum
    (positive ranks minus negative ranks) of the non-zero differences ``d``."""
    nz = d[d != 0]
    if not nz.size:
        return "tie"
    ranks = scipy.stats.rankdata(np.abs(nz))
    signed = float(ranks[nz > 0].sum() - ranks[nz < 0].sum())
    return "better" if signed > 0 else "worse" if signed < 0 else "tie"


def bootstrap_rank_stability(scores: np.ndarray, methods: Sequence[str], higher_is_better: bool,
                             *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Bootstrap the samples (complete rows), rank methods by mean score each time.

    Returns ``{"rank_probabilities": DataFrame (method x rank 1..L, P(rank = r) with ties at
    their lowest rank), "mean_rank", "rank_ci" (2.5 and 97.5 percentiles), "tau": (n_boot,)
    Kendall tau-b between each bootstrap leaderboard and the full-data one, "winner_stability":
    P(the full-data winner is ranked first)}``. Resampling indices come from a generator seeded
    by ``seed`` (the global RNG is not used).
    """
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s).all(1)]
    n, l_ = s.shape
    methods = list(methods)
    if n == 0:
        raise ValueError("No sample has a finite score for every method.")
    gen = np.random.Generator(np.random.PCG64(derive_seed(seed, "bootstrap") & ((1 << 63) - 1)))
    idx = gen.integers(0, n, size=(n_boot, n))
    means = s[idx].mean(1)  # (B, L)
    full = _rank_vector(s.mean(0), higher_is_better)
    oriented = -means if higher_is_better else means
    ranks_min = scipy.stats.rankdata(oriented, axis=1, method="min")
    probs = np.stack([(ranks_min == r).mean(0) for r in range(1, l_ + 1)], axis=1)
    ranks_avg = scipy.stats.rankdata(oriented, axis=1, method="average")
    tau = _kendall_tau_b(ranks_avg, np.broadcast_to(full, ranks_avg.shape))
    winners = np.flatnonzero(full == full.min())
    return {
        "rank_probabilities": pd.DataFrame(probs, index=methods,
                                           columns=[f"P(rank={r})" for r in range(1, l_ + 1)]),
        "mean_rank": pd.Series(ranks_avg.mean(0), index=methods),
        "rank_ci": pd.DataFrame(np.percentile(ranks_avg, [2.5, 97.5], axis=0).T, index=methods,
                                columns=["rank_lo", "rank_hi"]),
        "tau": tau,
        "winner_stability": float(np.isin(ranks_min.argmin(1), winners).mean())
        if winners.size == 1 else float("nan"),
    }


def cronbach_alpha(items: np.ndarray) -> float:
    """Standardised Cronbach's alpha of k items (columns) over cases (rows):
    k r̄ / (1 + (k - 1) r̄), r̄ the mean inter-item Pearson correlation (complete rows)."""
    x = np.asarray(items, dtype=np.float64)
    x = x[np.isfinite(x).all(1)]
    k = x.shape[1]
    if k < 2 or x.shape[0] < 3:
        return float("nan")
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        c = np.corrcoef(x.T)
    iu = np.triu_indices(k, 1)
    r = np.nanmean(c[iu]) if np.isfinite(c[iu]).any() else np.nan
    return float(k * r / (1.0 + (k - 1.0) * r))


def rank_agreement(tables: Mapping[str, np.ndarray], higher_is_better: Mapping[str, bool]
                   ) -> dict[str, pd.DataFrame]:
    """Pairwise agreement between metrics scored on the same samples and methods.

    ``tables``: metric -> (n, L) scores (same samples and method order). Returns DataFrames
    (metric x metric): ``"kendall"`` and ``"spearman"`` (per-sample rank correlations of the
    method rankings, averaged over samples where both are defined) and ``"leaderboard_kendall"``
    (Kendall tau-b between the rankings of the mean scores).
    """
    names = list(tables)
    ranks = {m: method_ranks(tables[m], higher_is_better[m]) for m in names}
    means = {m: _rank_vector(_nanmean(tables[m]), higher_is_better[m]) for m in names}
    out = {k: pd.DataFrame(np.eye(len(names)), index=names, columns=names)
           for k in ("kendall", "spearman", "leaderboard_kendall")}
    for a_i, a in enumerate(names):
        for b in names[a_i + 1:]:
            ra, rb = ranks[a], ranks[b]
            both = np.isfinite(ra).all(1) & np.isfinite(rb).all(1)
            vals = {
                "kendall": _kendall_tau_b(ra[both], rb[both]),
                "spearman": _pearson_rows(ra[both], rb[both]),
            }
            for k, v in vals.items():
                out[k].loc[a, b] = out[k].loc[b, a] = _nanmean(v) if v.size else np.nan
            lb = float(_kendall_tau_b(means[a], means[b]))
            out["leaderboard_kendall"].loc[a, b] = out["leaderboard_kendall"].loc[b, a] = lb
    return out


def _nanmean(a: np.ndarray, axis: int | None = 0) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


# --------------------------------------------------------------------------- input handling
def _directions(names: Sequence[str], given: Any, data: Any,
                frame: pd.DataFrame) -> dict[str, bool]:
    out: dict[str, bool] = {}
    if isinstance(given, bool):
        return dict.fromkeys(names, given)
    if isinstance(given, Mapping):
        out.update({k: bool(v) for k, v in given.items()})
    for source in (getattr(data, "higher_is_better", None), getattr(data, "metrics", None)):
        if isinstance(source, Mapping):
            for k, v in source.items():
                if k in out:
                    continue
                hib = getattr(v, "higher_is_better", v)
                if isinstance(hib, bool | np.bool_):
                    out[k] = bool(hib)
    if "higher_is_better" in frame.columns:
        for k, g in frame.groupby("metric")["higher_is_better"]:
            out.setdefault(k, bool(g.iloc[0]))
    for name in names:
        if name in out:
            continue
        try:
            from evalkit.metrics import get

            out[name] = bool(get(name).higher_is_better)
        except (KeyError, TypeError):
            raise ValueError(
                f"The direction of metric {name!r} is unknown: pass higher_is_better="
                "{name: bool} (or a bool for all).") from None
    return {n: out[n] for n in names}


def _long_frame(data: Any, methods: Sequence[str] | None) -> pd.DataFrame:
    if hasattr(data, "to_frame") and not isinstance(data, pd.DataFrame | pd.Series):
        data = data.to_frame()
    if isinstance(data, pd.DataFrame):
        need = {"method", "metric", "sample", "score"}
        missing = need - set(data.columns)
        if missing:
            raise ValueError(f"The scores frame needs columns {sorted(need)}; missing "
                             f"{sorted(missing)}.")
        return data
    if not isinstance(data, Mapping):
        raise TypeError("`data` must be a tidy DataFrame (method, metric, sample, score), an "
                        "object with to_frame(), or a dict metric -> (N, L) array / "
                        "{method: (N,) array}.")
    parts = []
    for metric, v in data.items():
        if isinstance(v, Mapping):
            for method, arr in v.items():
                a = np.asarray(arr, dtype=np.float64).ravel()
                parts.append(pd.DataFrame({"metric": metric, "method": method,
                                           "sample": np.arange(a.size), "score": a}))
        else:
            a = np.asarray(v, dtype=np.float64)
            if a.ndim != 2:
                raise ValueError(f"Scores of {metric!r} must be (N, L); got {a.shape}.")
            if methods is None or len(methods) != a.shape[1]:
                raise ValueError(f"Scores of {metric!r} are an (N, L) array: pass `methods=` "
                                 f"with L = {a.shape[1]} names.")
            for j, method in enumerate(methods):
                parts.append(pd.DataFrame({"metric": metric, "method": method,
                                           "sample": np.arange(a.shape[0]), "score": a[:, j]}))
    return pd.concat(parts, ignore_index=True)


def _tables(frame: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], list[str]]:
    keys = ["metric", "method", "sample"]
    extra = [c for c in ("dataset", "model") if c in frame.columns
             and frame[c].nunique(dropna=False) > 1]
    if extra:
        raise ValueError(f"The scores hold several {extra}; compute one report per "
                         f"{'/'.join(extra)} (filter the frame first).")
    if frame.duplicated(keys).any():
        raise ValueError("Duplicate (metric, method, sample) rows in the scores.")
    methods = list(dict.fromkeys(frame["method"]))
    tables = {}
    for metric, g in frame.groupby("metric", sort=False):
        t = g.pivot(index="sample", columns="method", values="score")
        tables[str(metric)] = t.reindex(columns=[m for m in methods if m in t.columns])
    return tables, methods


# --------------------------------------------------------------------------- the report
@dataclass
class ReliabilityReport:
    """A leaderboard and the reliability of each metric, from one call of
    :func:`reliability_report`. All tables are pandas DataFrames."""

    leaderboard: pd.DataFrame  #: metric, method, mean, ci_lo, ci_hi, rank (1 = best), n
    reliability: pd.DataFrame  #: one row per metric (see :func:`reliability_report`)
    significance: pd.DataFrame  #: Wilcoxon tests against the baseline, with corrections
    agreement: dict[str, pd.DataFrame]  #: metric x metric rank agreement
    rank_probabilities: pd.DataFrame  #: metric, method, P(rank = r)
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> pd.DataFrame:
        """The per-metric reliability table."""
        return self.reliability

    def to_markdown(self, digits: int = 3) -> str:
        """Leaderboard and reliability tables as markdown text."""
        def md(df: pd.DataFrame) -> str:
            cols = list(df.columns)
            lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
            for _, r in df.iterrows():
                cells = [f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in r]
                lines.append("| " + " | ".join(cells) + " |")
            return "\n".join(lines)

        return ("## Leaderboard\n\n" + md(self.leaderboard) + "\n\n## Reliability\n\n"
                + md(self.reliability) + "\n")


def reliability_report(
    data: Any,
    *,
    higher_is_better: bool | Mapping[str, bool] | None = None,
    methods: Sequence[str] | None = None,
    baseline: str | None = "Random",
    alpha: float = 0.05,
    correction_scope: str = "metric",
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    groups: Mapping[str, Sequence[str]] | None = None,
) -> ReliabilityReport:
    """Leaderboard and reliability statistics of every metric in ``data``, in one call.

    Parameters
    ----------
    data:
        Per-sample scores: a tidy DataFrame with columns ``method``, ``metric``, ``sample``,
        ``score`` (one data set and model), an object with ``to_frame()`` giving one (such as
        evalkit's evaluation results), or a dict ``metric -> (N, L) array`` (with ``methods``)
        or ``metric -> {method: (N,) array}``.
    higher_is_better:
        A bool for all metrics or ``{metric: bool}``; otherwise read from ``data`` (its
        ``higher_is_better`` / ``metrics`` attributes or a ``higher_is_better`` column) or from
        the evalkit metric registry by name.
    baseline:
        The random-baseline method for the Wilcoxon tests (skipped, with a note, when absent).
    alpha, correction_scope:
        Significance level; Holm and BH corrections over the methods of each metric
        (``"metric"``, default) or over all tests of the report (``"all"``).
    n_boot, ci, seed:
        Bootstrap resamples of the samples, the CI level of the leaderboard means, the seed.
    groups:
        ``{group: [metrics]}`` for internal consistency (standardised Cronbach's alpha over the
        direction-aligned scores of the group's metrics); default: one group of all metrics.

    The ``reliability`` table has one row per metric: ``n_samples`` (complete rows used),
    ``n_methods``, ``alpha_ordinal`` and ``alpha_interval`` (Krippendorff, samples as raters of
    the method ranks), ``alpha_reading`` (reliable / tentative / unreliable), ``mad_ratio``,
    ``inter_method_rho``, ``bootstrap_tau`` (mean Kendall tau of bootstrap vs full leaderboard),
    ``winner_stability``, ``n_better_than_baseline`` (significant after Holm).
    """
    if correction_scope not in ("metric", "all"):
        raise ValueError(f"`correction_scope` must be 'metric' or 'all'; got "
                         f"{correction_scope!r}.")
    if not 0 < ci < 1:
        raise ValueError(f"`ci` must be in (0, 1); got {ci}.")
    frame = _long_frame(data, methods)
    tables, all_methods = _tables(frame)
    directions = _directions(list(tables), higher_is_better, data, frame)

    board, rel, sig, probs = [], [], [], []
    arrays = {}
    for metric, t in tables.items():
        hib = directions[metric]
        meths = list(t.columns)
        s = t.to_numpy(dtype=np.float64)
        arrays[metric] = s
        complete = s[np.isfinite(s).all(1)]
        boot = bootstrap_rank_stability(complete, meths, hib, n_boot=n_boot,
                                        seed=derive_seed(seed, metric)) if len(complete) else None
        # leaderboard: mean over each method's finite scores, bootstrap CI of the mean
        gen = np.random.Generator(np.random.PCG64(derive_seed(seed, "ci", metric)
                                                  & ((1 << 63) - 1)))
        means = _nanmean(s)
        rank = _rank_vector(np.where(np.isfinite(means), means, np.inf if not hib else -np.inf),
                            hib)
        q = [(1 - ci) / 2 * 100, (1 + ci) / 2 * 100]
        for j, m in enumerate(meths):
            col = s[:, j][np.isfinite(s[:, j])]
            if col.size:
                bm = col[gen.integers(0, col.size, size=(n_boot, col.size))].mean(1)
                lo, hi = np.percentile(bm, q)
            else:
                lo = hi = np.nan
            board.append({"metric": metric, "method": m, "mean": float(means[j]),
                          "ci_lo": float(lo), "ci_hi": float(hi), "rank": float(rank[j]),
                          "n": int(col.size), "higher_is_better": hib})
        if boot is not None:
            p = boot["rank_probabilities"].copy()
            p.insert(0, "method", p.index)
            p.insert(0, "metric", metric)
            p["mean_rank"] = boot["mean_rank"].to_numpy()
            probs.append(p.reset_index(drop=True))
        if baseline is not None and baseline in meths:
            w = wilcoxon_vs_baseline(s, meths, baseline, hib)
            w.insert(0, "metric", metric)
            sig.append(w)
        ranks = method_ranks(complete, hib)
        a_ord = krippendorff_alpha(ranks, "ordinal") if len(complete) > 1 else np.nan
        rel.append({
            "metric": metric, "higher_is_better": hib, "n_samples": len(complete),
            "n_methods": len(meths),
            "alpha_ordinal": a_ord,
            "alpha_interval": krippendorff_alpha(ranks, "interval")
            if len(complete) > 1 else np.nan,
            "alpha_reading": _reading(a_ord),
            "mad_ratio": mad_ratio(s),
            "inter_method_rho": inter_method_reliability(s),
            "bootstrap_tau": float(np.nanmean(boot["tau"])) if boot is not None
            and np.isfinite(boot["tau"]).any() else np.nan,
            "winner_stability": boot["winner_stability"] if boot is not None else np.nan,
        })

    significance = pd.concat(sig, ignore_index=True) if sig else pd.DataFrame(
        columns=["metric", "method", "baseline", "n", "median_diff", "cles", "statistic", "p",
                 "direction"])
    if len(significance):
        if correction_scope == "all":
            significance["p_holm"] = holm(significance["p"].to_numpy())
            significance["p_bh"] = benjamini_hochberg(significance["p"].to_numpy())
        else:
            significance["p_holm"] = np.nan
            significance["p_bh"] = np.nan
            for _, g in significance.groupby("metric"):
                significance.loc[g.index, "p_holm"] = holm(g["p"].to_numpy())
                significance.loc[g.index, "p_bh"] = benjamini_hochberg(g["p"].to_numpy())
        # the test and its direction are read separately: `significant` is the Holm-corrected
        # test; `direction` the side its signed ranks weigh (not the median difference, which
        # is 0 whenever most samples tie, even with a tiny p)
        significance["significant"] = significance["p_holm"] < alpha
        significance["better"] = significance["significant"] & (
            significance["direction"] == "better")
        significance["worse"] = significance["significant"] & (
            significance["direction"] == "worse")
    reliability = pd.DataFrame(rel)
    reliability["n_better_than_baseline"] = [
        int(significance.loc[significance["metric"] == m, "better"].sum())
        if len(significance) else np.nan for m in reliability["metric"]]

    same_shape = len({a.shape for a in arrays.values()}) == 1 and len(
        {tuple(t.columns) for t in tables.values()}) == 1
    agreement: dict[str, pd.DataFrame] = {}
    if same_shape and len(arrays) > 1:
        agreement = rank_agreement(arrays, directions)
        groups = groups or {"all": list(arrays)}
        rows = []
        for g, members in groups.items():
            unknown = [m for m in members if m not in arrays]
            if unknown:
                raise ValueError(f"Group {g!r} names unknown metrics {unknown}.")
            items = np.stack([(arrays[m] if directions[m] else -arrays[m]).ravel()
                              for m in members], axis=1)
            rows.append({"group": g, "metrics": ", ".join(members),
                         "cronbach_alpha": cronbach_alpha(items)})
        agreement["internal_consistency"] = pd.DataFrame(rows)
    return ReliabilityReport(
        leaderboard=pd.DataFrame(board).sort_values(["metric", "rank"]).reset_index(drop=True),
        reliability=reliability,
        significance=significance,
        agreement=agreement,
        rank_probabilities=pd.concat(probs, ignore_index=True) if probs else pd.DataFrame(),
        config={"baseline": baseline, "alpha": alpha, "correction_scope": correction_scope,
                "n_boot": n_boot, "ci": ci, "seed": seed, "methods": all_methods,
                "baseline_present": baseline is not None and baseline in all_methods},
    )


def _reading(a: float) -> str:
    if not np.isfinite(a):
        return "undefined"
    if a >= 0.8:
        return "reliable"
    if a >= 0.667:
        return "tentative"
    return "unreliable"
