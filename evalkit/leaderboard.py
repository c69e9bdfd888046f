"""Leaderboards: direction-aware ranks of explanation methods, with bootstrap confidence
intervals, per-family summaries and exports (markdown, LaTeX, HTML, CSV).

>>> board = results.leaderboard(mode="rank_then_aggregate", rescale="Random")  # doctest: +SKIP
>>> board.table                      # numeric, one row per method, best first  # doctest: +SKIP
>>> print(board.to_markdown())                                                  # doctest: +SKIP

Semantics
---------
* **Directions and ties.** Every metric declares ``higher_is_better``; rank 1 is the best
  method on every metric, and ties share the average rank (the one rule of
  :mod:`evalkit.ranking`, which the plots use too). Scores are never passed through ``abs``
  or inverted by hand (the Quantus tutorial's table takes ``abs`` of signed correlations and
  inverts only the column named "Robustness"; see ``tests/test_leaderboard.py``).
* **Two ways to combine samples** (Maier-Hein et al., "Why rankings of biomedical image
  analysis competitions should be interpreted with care", Nature Communications 2018), chosen
  explicitly with ``mode``:

  - ``"rank_then_aggregate"`` (default): rank the methods on each sample, then average each
    method's ranks over the samples. Robust to a few samples with extreme scores.
  - ``"aggregate_then_rank"``: average each method's scores over the samples, then rank the
    means (what a table of mean scores implies).

* **Incomplete methods** (``incomplete=``): a method may have no score (NaN) on some samples,
  and those are often its hardest ones, so dropping them would flatter it. Every cell shows its
  coverage (samples with a score / samples), and the policy is explicit:

  - ``"worst"`` (default): a sample where a method has no score ranks it last on that sample
    (tied with the other methods without a score there), the "missing is worst" convention of
    challenge rankings (Wiesenfarth et al., "Methods and open-source toolkit for analyzing and
    visualizing challenge results", Scientific Reports 2021); ``"aggregate_then_rank"`` ranks
    the methods with fewer scored samples after those with more, then by mean score. Means are
    over each method's own scored samples; ``n_samples`` counts the samples where at least one
    method has a score.
  - ``"common"``: ranks and means over the samples where every ranked method has a score
    (complete cases; ``n_samples`` says how many): the same samples for every method, and
    a method's missing samples are dropped for all of them.

  A method whose cell failed or is NaN on every sample is not ranked on that metric.
* **Rescaling** (``rescale=<baseline method>``, e.g. a random explanation): each metric's mean
  score becomes ``(score - baseline) / (best - baseline)``, so the baseline scores 0 and the
  best observed method 1 whatever the metric's direction and units (as openproblems-bio does
  between random and perfect baselines). Ranks do not change; rescaled scores can be averaged
  across metrics (``mean scaled score``).
* **Families.** A family's rank is the mean of its metrics' ranks; the overall ``mean rank``
  is the mean over families (each family weighs the same however many metrics it has);
  ``position`` ranks the methods by it (ties share the average position; a method with no
  mean rank has none and is listed last).
* **Bootstrap confidence intervals** over samples: ``n_boot`` resamples of the samples with
  replacement (one seeded ``numpy.random.Generator``), the same resample for every method and
  metric (paired); every statistic above (scores, rescaled scores, ranks, family ranks, mean
  rank) is recomputed on each resample and its percentile interval reported.
"""

from __future__ import annotations

import html
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._validation import EvalkitWarning
from .ranking import rank_methods

if TYPE_CHECKING:  # pragma: no cover
    from ._types import ScoredResults

__all__ = ["INCOMPLETE", "MODES", "Leaderboard", "rank_methods"]

MODES = ("rank_then_aggregate", "aggregate_then_rank")
INCOMPLETE = ("worst", "common")
_BOOT_BLOCK = 256  # bootstrap rows processed at once (bounds memory for large N)


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    finite = np.isfinite(a)
    count = finite.sum(axis)
    total = np.where(finite, a, 0.0).sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


class Leaderboard:
    """Ranks of the methods of a :class:`~evalkit.results.Results` (see the module docstring).

    Parameters
    ----------
    results:
        The results to rank (a :class:`~evalkit.results.Results`, or any object with its
        ``methods``, ``metrics``, ``n``, ``scores``, ``errors``, ``family()`` and
        ``higher_is_better()``).
    mode:
        ``"rank_then_aggregate"`` or ``"aggregate_then_rank"``.
    rescale:
        Name of a baseline method (e.g. ``"Random"``) to rescale each metric's scores between
        it (0) and the best observed method (1); None keeps raw scores.
    n_boot:
        Bootstrap resamples for the confidence intervals (0: none).
    ci:
        Confidence level of the intervals.
    seed:
        Seed of the bootstrap's ``numpy.random.Generator``.
    methods, metrics:
        Subsets (and order) to rank; default all.
    incomplete:
        How methods without a score on some samples are ranked: ``"worst"`` (default: last on
        those samples) or ``"common"`` (only the samples every method covers); see the module
        docstring.

    Attributes
    ----------
    table:
        One row per method, best first: each metric's score (rescaled if ``rescale``), each
        family's rank (``"<family> rank"``), ``mean rank`` with ``rank lo``/``rank hi``,
        ``mean scaled score`` (with ``rescale``) and ``position``.
    long:
        One row per (method, metric): ``family``, ``higher_is_better``, ``score`` (mean over
        the complete cases) with ``score_lo``/``score_hi``, ``scaled`` (with ``rescale``) and its
        interval, ``rank`` with ``rank_lo``/``rank_hi``, ``n_samples``, ``ranked``, and the
        coverage: ``n_valid`` (samples the method has a score on) of ``n_total``.
    coverage:
        Method x metric table of ``n_valid`` (of ``results.n`` samples).
    families:
        One row per (method, family): ``rank``, ``rank_lo``, ``rank_hi``.
    ranks, scores:
        Method x metric tables of the ranks and of the (possibly rescaled) scores.
    not_rescalable:
        With ``rescale``: the metrics on which the baseline scores as well as the best method,
        so no method can be rescaled (n/a, with a warning and a caption note).
    """

    def __init__(
        self,
        results: ScoredResults,
        *,
        mode: str = "rank_then_aggregate",
        rescale: str | None = None,
        n_boot: int = 1000,
        ci: float = 0.95,
        seed: int = 0,
        methods: Sequence[str] | None = None,
        metrics: Sequence[str] | None = None,
        incomplete: str = "worst",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}; got {mode!r}.")
        if incomplete not in INCOMPLETE:
            raise ValueError(f"`incomplete` must be one of {INCOMPLETE}; got {incomplete!r}.")
        self.incomplete = incomplete
        if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 0:
            raise ValueError(f"`n_boot` must be a non-negative integer; got {n_boot!r}.")
        if not 0.0 < float(ci) < 1.0:
            raise ValueError(f"`ci` must be in (0, 1); got {ci!r}.")
        self.results = results
        self.mode = mode
        self.n_boot = int(n_boot)
        self.ci = float(ci)
        self.seed = seed
        self.methods = list(results.methods if methods is None else methods)
        self.metrics = list(results.metrics if metrics is None else metrics)
        for m in self.methods:
            if m not in results.methods:
                raise ValueError(f"Unknown method {m!r}; results have {results.methods}.")
        for k in self.metrics:
            if k not in results.metrics:
                raise ValueError(f"Unknown metric {k!r}; results have {results.metrics}.")
        if not self.methods or not self.metrics:
            raise ValueError("A leaderboard needs at least one method and one metric.")
        if rescale is not None and rescale not in self.methods:
            raise ValueError(f"`rescale` must name one of the methods {self.methods} (the "
                             f"baseline that scores 0); got {rescale!r}.")
        self.rescale = rescale
        self.families_order: list[str] = []
        for k in self.metrics:
            fam = results.family(k) or k
            if fam not in self.families_order:
                self.families_order.append(fam)
        self._compute()

    # ------------------------------------------------------------------ computation
    def _weights(self) -> list[np.ndarray]:
        """Row blocks of sample weights: the first row all ones (the point estimate), then
        ``n_boot`` multinomial resample counts."""
        n = self.results.n
        blocks = [np.ones((1, n))]
        if self.n_boot:
            rng = np.random.default_rng(self.seed)
            left = self.n_boot
            while left:
                b = min(left, _BOOT_BLOCK)
                blocks.append(rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(np.float64))
                left -= b
        return blocks

    def _compute(self) -> None:
        res = self.results
        n_m = len(self.methods)
        base_idx = None if self.rescale is None else self.methods.index(self.rescale)
        per_metric: dict[str, dict[str, Any]] = {}
        for k in self.metrics:
            s = np.stack([res.scores[m, k] for m in self.methods])  # (M, N)
            finite = np.isfinite(s)
            failed = np.array([(m, k) in res.errors for m in self.methods])
            ranked = ~failed & finite.any(1)
            hib = res.higher_is_better(k)
            sample_ranks = np.full_like(s, np.nan)
            if not ranked.any():
                valid = np.zeros(res.n, bool)
            elif self.incomplete == "common":
                valid = finite[ranked].all(0)
            else:  # "worst": every sample where some ranked method has a score
                valid = finite[ranked].any(0)
            if ranked.any() and valid.any():
                block = s[np.ix_(ranked, valid)]
                r = rank_methods(block, hib)
                # no score on a sample: last there, tied with the others without one (the
                # average of the places after the scored methods)
                n_scored = np.isfinite(block).sum(0, keepdims=True)
                r = np.where(np.isfinite(block), r, (n_scored + 1 + block.shape[0]) / 2.0)
                sample_ranks[np.ix_(ranked, valid)] = r
            # the samples each method's mean is over: its own scored ones ("worst") or the
            # common ones
            used = (finite & valid) if self.incomplete == "worst" else \
                np.broadcast_to(valid, s.shape)
            per_metric[k] = {"s": np.where(finite, s, 0.0), "ranked": ranked,
                             "valid": valid, "used": used.astype(np.float64), "hib": hib,
                             "n_valid": finite.sum(1), "sample_ranks": np.nan_to_num(sample_ranks)}

        # (R, M) statistics for R = 1 + n_boot weight rows, block by block
        stats: dict[str, list[np.ndarray]] = {}

        def add(name: str, value: np.ndarray) -> None:
            stats.setdefault(name, []).append(value)

        for w in self._weights():
            fam_parts: dict[str, list[np.ndarray]] = {f: [] for f in self.families_order}
            scaled_parts: dict[str, list[np.ndarray]] = {f: [] for f in self.families_order}
            for k in self.metrics:
                d = per_metric[k]
                wv = w * d["valid"]
                denom = wv.sum(1, keepdims=True)
                counts = w @ d["used"].T  # (R, M) resampled samples each mean is over
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean = (w @ (d["used"] * d["s"]).T) / counts  # (R, M)
                mean[:, ~d["ranked"]] = np.nan
                mean[counts == 0] = np.nan
                mean[denom[:, 0] == 0] = np.nan
                if self.mode == "rank_then_aggregate":
                    with np.errstate(invalid="ignore", divide="ignore"):
                        rank = (wv @ d["sample_ranks"].T) / denom
                    rank[:, ~d["ranked"]] = np.nan
                    rank[denom[:, 0] == 0] = np.nan
                else:
                    rank = rank_methods(mean, d["hib"], axis=1)
                    if self.incomplete == "worst":
                        # fewer scored samples first decides (counts are whole numbers, so
                        # one more sample outweighs any rank by mean), then the mean
                        rank = rank_methods(rank - counts * (n_m + 1), False, axis=1)
                add(f"score:{k}", mean)
                add(f"rank:{k}", rank)
                fam = res.family(k) or k
                fam_parts[fam].append(rank)
                if base_idx is not None:
                    fill = -np.inf if d["hib"] else np.inf
                    filled = np.where(np.isfinite(mean), mean, fill)
                    best = filled.max(1, keepdims=True) if d["hib"] else \
                        filled.min(1, keepdims=True)
                    best[~np.isfinite(best)] = np.nan
                    base = mean[:, base_idx : base_idx + 1]
                    with np.errstate(invalid="ignore", divide="ignore"):
                        scaled = (mean - base) / (best - base)
                    scaled[~np.isfinite(scaled)] = np.nan
                    add(f"scaled:{k}", scaled)
                    scaled_parts[fam].append(scaled)
            fam_ranks = []
            fam_scaled = []
            for f in self.families_order:
                fr = _nanmean(np.stack(fam_parts[f]), 0)
                add(f"family:{f}", fr)
                fam_ranks.append(fr)
                if base_idx is not None:
                    fam_scaled.append(_nanmean(np.stack(scaled_parts[f]), 0))
            add("overall", _nanmean(np.stack(fam_ranks), 0))
            if base_idx is not None:
                add("overall_scaled", _nanmean(np.stack(fam_scaled), 0))

        full = {name: np.concatenate(parts, 0) for name, parts in stats.items()}
        if base_idx is not None:
            self.not_rescalable = [
                k for k in self.metrics
                if np.isfinite(full[f"score:{k}"][0, base_idx])
                and not np.isfinite(full[f"scaled:{k}"][0]).any()
            ]
            if self.not_rescalable:
                warnings.warn(
                    f"rescale={self.rescale!r}: the baseline scores as well as the best method "
                    f"on {self.not_rescalable}, so these metrics cannot be rescaled (their "
                    "scaled scores are n/a) and the mean scaled score leaves them out for "
                    "every method.", EvalkitWarning, stacklevel=3)
        else:
            self.not_rescalable = []
        lo_q, hi_q = 100 * (1 - self.ci) / 2, 100 * (1 + self.ci) / 2

        def point_ci(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            a = full[name]
            if a.shape[0] == 1:
                nan = np.full(n_m, np.nan)
                return a[0], nan, nan
            boot = a[1:]
            lo = np.full(n_m, np.nan)
            hi = np.full(n_m, np.nan)
            ok = np.isfinite(boot).any(0)
            if ok.any():
                lo[ok] = np.nanpercentile(boot[:, ok], lo_q, axis=0)
                hi[ok] = np.nanpercentile(boot[:, ok], hi_q, axis=0)
            return a[0], lo, hi

        rows = []
        for k in self.metrics:
            d = per_metric[k]
            score, score_lo, score_hi = point_ci(f"score:{k}")
            rank, rank_lo, rank_hi = point_ci(f"rank:{k}")
            if base_idx is not None:
                scaled, scaled_lo, scaled_hi = point_ci(f"scaled:{k}")
            for i, m in enumerate(self.methods):
                row = {"method": m, "metric": k, "family": res.family(k) or k,
                       "higher_is_better": d["hib"], "score": score[i], "score_lo": score_lo[i],
                       "score_hi": score_hi[i]}
                if base_idx is not None:
                    row.update(scaled=scaled[i], scaled_lo=scaled_lo[i], scaled_hi=scaled_hi[i])
                row.update(rank=rank[i], rank_lo=rank_lo[i], rank_hi=rank_hi[i],
                           n_samples=int(d["valid"].sum()), ranked=bool(d["ranked"][i]),
                           n_valid=int(d["n_valid"][i]), n_total=int(res.n))
                rows.append(row)
        self.long = pd.DataFrame(rows)

        fam_rows = []
        for f in self.families_order:
            r, lo, hi = point_ci(f"family:{f}")
            for i, m in enumerate(self.methods):
                fam_rows.append({"method": m, "family": f, "rank": r[i], "rank_lo": lo[i],
                                 "rank_hi": hi[i]})
        self.families = pd.DataFrame(fam_rows)

        value = "scaled" if base_idx is not None else "score"
        self.scores = self.long.pivot(index="method", columns="metric", values=value).reindex(
            index=self.methods, columns=self.metrics)
        self.ranks = self.long.pivot(index="method", columns="metric", values="rank").reindex(
            index=self.methods, columns=self.metrics)
        self.coverage = self.long.pivot(index="method", columns="metric",
                                        values="n_valid").reindex(index=self.methods,
                                                                  columns=self.metrics)
        overall, overall_lo, overall_hi = point_ci("overall")
        table = self.scores.copy()
        table.columns = list(table.columns)
        fam_wide = self.families.pivot(index="method", columns="family", values="rank").reindex(
            index=self.methods, columns=self.families_order)
        for f in self.families_order:
            table[f"{f} rank"] = fam_wide[f]
        table["mean rank"] = overall
        table["rank lo"] = overall_lo
        table["rank hi"] = overall_hi
        if base_idx is not None:
            table["mean scaled score"] = point_ci("overall_scaled")[0]
        table["position"] = rank_methods(overall, higher_is_better=False)
        table.index.name = "method"
        order = np.lexsort((np.arange(n_m), np.where(np.isfinite(overall), overall, np.inf)))
        self.table = table.iloc[order]

    # ------------------------------------------------------------------ presentation
    def _metric_header(self, k: str, arrows: tuple[str, str]) -> str:
        return f"{k} {arrows[0] if self.results.higher_is_better(k) else arrows[1]}"

    def caption(self) -> str:
        """What the table's numbers are."""
        n_samples = sorted(set(self.long["n_samples"]))
        n_text = (f"{n_samples[0]}" if len(n_samples) == 1
                  else f"{n_samples[0]}-{n_samples[-1]}")
        over = (f"each method's scored samples of {self.results.n}"
                if self.incomplete == "worst" else f"the {n_text} samples every method scores")
        if self.rescale is not None:
            score_text = (f"mean scores over {over}, rescaled per metric so that "
                          f"{self.rescale} = 0 and the best method = 1 (higher is better)")
        else:
            score_text = f"mean scores over {over} (↑ higher is better, ↓ lower is better)"
        how = ("rank on each sample, then mean over samples" if self.mode == "rank_then_aggregate"
               else "rank of the mean score")
        if self.incomplete == "worst":
            how += ("; no score on a sample ranks last on it" if self.mode ==
                    "rank_then_aggregate" else "; fewer scored samples rank after more")
        ci_text = (f"; [{self.ci:.0%} bootstrap CI over samples, {self.n_boot} resamples]"
                   if self.n_boot else "")
        notes = ""
        cells = [(m, k) for m in self.methods for k in self.metrics]
        if any(c in self.results.errors for c in cells):
            notes += " error: the cell failed (see Results.errors)."
        if any(c not in self.results.errors and not np.isfinite(self.scores.loc[c])
               for c in cells):
            notes += " n/a: no score (undefined on every sample, or not rescalable)."
        if self.not_rescalable:
            notes += (f" Not rescalable ({self.rescale} scores best): "
                      f"{', '.join(self.not_rescalable)}.")
        family_text = ("Family columns: mean rank over the family's metrics; mean rank: over "
                       "families" if self._show_families() else "Mean rank: over families")
        return (f"Cells: {score_text}, with the rank and the coverage (samples with a score / "
                f"samples) in parentheses ({how}; 1 = best). "
                f"{family_text}{ci_text}.{notes}")

    def _show_families(self) -> bool:
        """Family columns are shown unless every family has one metric (they would repeat
        the metrics' ranks)."""
        return len(self.families_order) < len(self.metrics)

    def _cells(self, ci: bool, digits: int, arrows: tuple[str, str], bold: tuple[str, str]
               ) -> tuple[list[str], list[list[str]]]:
        t = self.table
        families = self.families_order if self._show_families() else []
        headers = ["method"] + [self._metric_header(k, arrows) for k in self.metrics]
        headers += [*families, "mean rank"]
        if self.rescale is not None:
            headers.append("mean scaled score")
        best_rank = {k: np.nanmin(self.ranks[k]) if np.isfinite(self.ranks[k]).any() else None
                     for k in self.metrics}
        fam_cols = [f"{f} rank" for f in families]
        best_fam = {c: np.nanmin(t[c]) if np.isfinite(t[c]).any() else None for c in fam_cols}
        best_overall = np.nanmin(t["mean rank"]) if np.isfinite(t["mean rank"]).any() else None
        rows = []
        for method in t.index:
            row = [method]
            for k in self.metrics:
                v, r = self.scores.loc[method, k], self.ranks.loc[method, k]
                if not np.isfinite(v):
                    err = (method, k) in self.results.errors
                    row.append("error" if err else "n/a")
                    continue
                cov = f"{int(self.coverage.loc[method, k])}/{self.results.n}"
                cell = f"{_fmt(v, digits)} ({_fmt_rank(r)}, {cov})"
                if best_rank[k] is not None and np.isclose(r, best_rank[k]):
                    cell = f"{bold[0]}{cell}{bold[1]}"
                row.append(cell)
            for c in fam_cols:
                v = t.loc[method, c]
                cell = _fmt_rank(v) if np.isfinite(v) else "n/a"
                if best_fam[c] is not None and np.isfinite(v) and np.isclose(v, best_fam[c]):
                    cell = f"{bold[0]}{cell}{bold[1]}"
                row.append(cell)
            v = t.loc[method, "mean rank"]
            cell = _fmt_rank(v, 2) if np.isfinite(v) else "n/a"
            if ci and self.n_boot and np.isfinite(t.loc[method, "rank lo"]):
                cell += f" [{_fmt_rank(t.loc[method, 'rank lo'])}, " \
                        f"{_fmt_rank(t.loc[method, 'rank hi'])}]"
            if best_overall is not None and np.isfinite(v) and np.isclose(v, best_overall):
                cell = f"{bold[0]}{cell}{bold[1]}"
            row.append(cell)
            if self.rescale is not None:
                row.append(_fmt(t.loc[method, "mean scaled score"], digits))
            rows.append(row)
        return headers, rows

    def to_markdown(self, *, ci: bool = True, digits: int = 3, caption: bool = True) -> str:
        """A GitHub-flavoured markdown table (best cell of each column in bold)."""
        headers, rows = self._cells(ci, digits, ("↑", "↓"), ("**", "**"))
        esc = [[c.replace("|", "\\|") for c in r] for r in [headers, *rows]]
        lines = ["| " + " | ".join(esc[0]) + " |",
                 "|" + "|".join([":---"] + ["---:"] * (len(headers) - 1)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
        if caption:
            lines += ["", self.caption()]
        return "\n".join(lines)

    def to_latex(self, *, ci: bool = True, digits: int = 3, caption: bool = True,
                 label: str | None = None) -> str:
        """A LaTeX ``table`` with a booktabs ``tabular`` (best cells in ``\\textbf``)."""
        headers, rows = self._cells(ci, digits, ("\x02", "\x03"), ("\x00", "\x01"))
        headers = [_latex_escape(h) for h in headers]
        body = [[_latex_escape(c) for c in r] for r in rows]
        spec = "l" + "r" * (len(headers) - 1)
        lines = ["\\begin{table}[t]", "\\centering"]
        if caption:
            lines.append(f"\\caption{{{_latex_escape(self.caption())}}}")
        if label:
            lines.append(f"\\label{{{label}}}")
        lines += [f"\\begin{{tabular}}{{{spec}}}", "\\toprule", " & ".join(headers) + " \\\\",
                  "\\midrule"]
        lines += [" & ".join(r) + " \\\\" for r in body]
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        return "\n".join(lines)

    def to_html(self, *, ci: bool = True, digits: int = 3, caption: bool = True) -> str:
        """An HTML ``<table class="evalkit-leaderboard">`` (best cells in ``<b>``)."""
        headers, rows = self._cells(ci, digits, ("↑", "↓"), ("\x00", "\x01"))

        def cell(text: str, tag: str) -> str:
            inner = html.escape(text).replace("\x00", "<b>").replace("\x01", "</b>")
            return f"<{tag}>{inner}</{tag}>"

        out = ['<table class="evalkit-leaderboard">']
        if caption:
            out.append(f"<caption>{html.escape(self.caption())}</caption>")
        out.append("<thead><tr>" + "".join(cell(h, "th") for h in headers) + "</tr></thead>")
        out.append("<tbody>")
        out += ["<tr>" + "".join(cell(c, "td") for c in r) + "</tr>" for r in rows]
        out += ["</tbody>", "</table>"]
        return "\n".join(out)

    def to_csv(self, path: str | Path | None = None, *, long: bool = False) -> str | None:
        """The numeric ``table`` (or ``long`` with every interval) as CSV; written to ``path``
        if given, else returned."""
        frame = self.long if long else self.table
        if path is None:
            return frame.to_csv(index=not long)
        frame.to_csv(path, index=not long)
        return None

    def __repr__(self) -> str:
        return self.to_markdown()

    def _repr_html_(self) -> str:
        return self.to_html()

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def _fmt(v: float, digits: int = 3) -> str:
    if not np.isfinite(v):
        return "n/a"
    a = abs(v)
    if a != 0 and (a < 10 ** (-digits) or a >= 10 ** (digits + 2)):
        return f"{v:.{max(digits - 1, 1)}e}"
    return f"{v:.{digits}f}" if a < 10 else f"{v:.{max(digits - 2, 1)}f}"


def _fmt_rank(v: float, decimals: int = 1) -> str:
    return f"{v:.{decimals}f}"


_LATEX = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#",
          "_": "\\_", "{": "\\{", "}": "\\}", "~": "\\textasciitilde{}",
          "^": "\\textasciicircum{}", "↑": "$\\uparrow$", "↓": "$\\downarrow$",
          "±": "$\\pm$",
          # markup from Leaderboard._cells: bold open/close, direction arrows
          "\x00": "\\textbf{", "\x01": "}", "\x02": "$\\uparrow$", "\x03": "$\\downarrow$"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in text)
