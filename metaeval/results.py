"""Results of a meta-evaluation: raw score arrays in, tidy tables out.

A :class:`MetaEvaluationResult` keeps what was measured (per metric: the unperturbed scores
(L, N) and, per test, the perturbed scores (I, K, L, N); per test the sample masks (I, K, N))
and derives every criterion from it on demand, exactly as :mod:`metaeval.criteria` defines
them. Aggregation, as MetaQuantus' ``run_meta_consistency_analysis``:

* per iteration ``t``: ``IAC(t)`` = mean over methods and perturbations, ``IEC(t)`` = mean over
  perturbations (undefined perturbations, whose mask kept no sample, are left out);
* ``MC(t)`` = the unweighted mean of the four criteria of iteration ``t`` of one space (Model
  or Input);
* a criterion's value is the mean over iterations of ``c(t)``, its spread the (population)
  standard deviation over iterations; ``MC`` is the mean of the four criteria (= MetaQuantus'
  ``MC_mean`` when every value is defined), ``MC_std`` the std over iterations of ``MC(t)``;
* MC̄ (space ``"Mean"`` in :meth:`MetaEvaluationResult.summary`) is the mean of MC over the
  spaces, as in the paper's tables.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import criteria as C
from .suite import InputPerturbationTest, ModelPerturbationTest, PerturbationTest

__all__ = ["SCHEMA_VERSION", "MetaEvaluationResult", "MetricRecord", "RunBlock"]

SCHEMA_VERSION = 1
SPACES = ("Model", "Input")


@dataclass
class MetricRecord:
    """What was measured for one metric on one (dataset, model)."""

    name: str
    family: str
    higher_is_better: bool
    description: str
    q_star: np.ndarray  #: (L, N) unperturbed scores
    q_hat: dict[str, np.ndarray]  #: test name -> (I, K, L, N) perturbed scores
    applicable: dict[str, tuple[bool, str]]  #: test name -> (applicable, reason if not)
    nan_reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class RunBlock:
    """One (dataset, model) of a meta-evaluation: tests, masks and per-metric records."""

    dataset: str
    model: str
    tests: list[PerturbationTest]
    methods: list[str]
    iterations: int
    nr_perturbations: int
    y_pred: np.ndarray
    y_true: np.ndarray | None
    masks: dict[str, np.ndarray]  #: test name -> (I, K, N) bool
    y_pred_perturbed: dict[str, np.ndarray]  #: test name -> (I, K, N)
    metrics: dict[str, MetricRecord]
    timings: dict[str, float] = field(default_factory=dict)
    keep_scores: bool = True

    def test(self, space: str, type: str) -> PerturbationTest | None:
        for t in self.tests:
            if t.space == space and t.type == type:
                return t
        return None


def _nanmean(a: np.ndarray, axis: Any = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def _nanstd(a: np.ndarray, axis: Any = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanstd(a, axis=axis)


@dataclass
class _TestValues:
    criterion_iac: str
    criterion_iec: str
    iac: np.ndarray  #: (I, K, L)
    iac_n: np.ndarray
    iec: np.ndarray  #: (I, K)
    iec_n: np.ndarray
    iac_chance: np.ndarray  #: (I, K, L) chance level of each IAC value
    iec_chance: np.ndarray  #: (I, K) chance level of each IEC value
    kept: np.ndarray  #: (I, K) fraction of samples kept by the mask
    applicable: bool
    reason: str


def _test_values(block: RunBlock, rec: MetricRecord, test: PerturbationTest) -> _TestValues:
    fm = test.failure_mode
    n_i, n_k, n_l = block.iterations, block.nr_perturbations, len(block.methods)
    masks = block.masks[test.name]
    kept = masks.mean(-1)
    ok, why = rec.applicable.get(test.name, (True, ""))
    iac = np.full((n_i, n_k, n_l), np.nan)
    iac_n = np.zeros((n_i, n_k, n_l), dtype=np.int64)
    iec = np.full((n_i, n_k), np.nan)
    iec_n = np.zeros((n_i, n_k), dtype=np.int64)
    iac_chance = np.full((n_i, n_k, n_l), np.nan)
    iec_chance = np.full((n_i, n_k), np.nan)
    if ok:
        q_hat = rec.q_hat[test.name]
        for t in range(n_i):
            p = C.iac_pvalues(rec.q_star, q_hat[t], masks[t])
            e_p = C.iac_chance(rec.q_star, q_hat[t], masks[t], pvalues=p.values).values
            iac[t] = p.values if fm == "NR" else 1.0 - p.values
            iac_chance[t] = e_p if fm == "NR" else 1.0 - e_p
            iac_n[t] = p.n_used
            if fm == "NR":
                v = C.iec_nr(rec.q_star, q_hat[t], masks[t])
                iec_chance[t] = C.iec_nr_chance(rec.q_star, q_hat[t], masks[t]).values
            else:
                v = C.iec_ar(rec.q_star, q_hat[t], masks[t],
                             higher_is_better=rec.higher_is_better)
                iec_chance[t] = C.iec_ar_chance(rec.q_star, q_hat[t], masks[t]).values
            iec[t], iec_n[t] = v.values, v.n_used
    return _TestValues(f"IAC_{fm}", f"IEC_{fm}", iac, iac_n, iec, iec_n, iac_chance,
                       iec_chance, kept, ok, why)


class MetaEvaluationResult:
    """The outcome of :class:`~metaeval.MetaEvaluation` (or a benchmark of several).

    Tables (pandas):

    * :meth:`summary` (alias :meth:`scores`): one row per (dataset, model, metric, space) with
      the four criteria, MC, their spreads over iterations, their chance levels given the
      observed ties, the coverage (fraction of samples the masks kept) and applicability;
      space ``"Mean"`` is MC̄;
    * :meth:`table`: the same as "mean ± k·std" strings, in the layout of the paper's tables,
      with the chance levels as columns;
    * :meth:`to_frame`: the long format, one row per criterion value per perturbation (and
      per method for IAC); ``level="iteration"`` gives per-iteration criteria and MC(t);
    * :meth:`scores_frame`: every per-sample score (when ``keep_scores``);
    * :meth:`with_validity`: the summary beside the verdicts of a validity report
      (:func:`metaeval.validity.validity_report`).

    Plots: :meth:`plot_area` (the kite plots) and :meth:`plot_scatter`.
    """

    def __init__(self, blocks: Sequence[RunBlock], *, config: dict[str, Any] | None = None,
                 undefined: str = "nan") -> None:
        if undefined not in ("nan", "ignore"):
            raise ValueError(f"`undefined` must be 'nan' or 'ignore'; got {undefined!r}.")
        self.blocks = list(blocks)
        self.config = dict(config or {})
        self.undefined = undefined

    def __repr__(self) -> str:
        metrics = sorted({m for b in self.blocks for m in b.metrics})
        return (f"MetaEvaluationResult({len(self.blocks)} run(s), metrics={metrics}, "
                f"methods={self.blocks[0].methods if self.blocks else []})")

    # ------------------------------------------------------------------ core values
    @cached_property
    def _values(self) -> dict[tuple[int, str, str], _TestValues]:
        out = {}
        for bi, block in enumerate(self.blocks):
            for name, rec in block.metrics.items():
                for test in block.tests:
                    out[(bi, name, test.name)] = _test_values(block, rec, test)
        return out

    def _ids(self, block: RunBlock, rec: MetricRecord) -> dict[str, Any]:
        return {"dataset": block.dataset, "model": block.model, "family": rec.family,
                "metric": rec.name}

    def to_frame(self, level: str = "perturbation") -> pd.DataFrame:
        """Long format. ``level="perturbation"``: one row per (metric, test, iteration,
        perturbation[, method]) with ``value``, its ``chance`` level (see
        :mod:`metaeval.criteria`), ``n_used`` (samples or pairs that entered it) and ``kept``
        (fraction of samples the mask kept). ``level="iteration"``: one row per
        (metric, space, iteration) with the four criteria and MC(t)."""
        if level == "iteration":
            return self._iteration_frame()
        if level != "perturbation":
            raise ValueError(f"`level` must be 'perturbation' or 'iteration'; got {level!r}.")
        rows = []
        for bi, block in enumerate(self.blocks):
            for name, rec in block.metrics.items():
                ids = self._ids(block, rec)
                for test in block.tests:
                    v = self._values[(bi, name, test.name)]
                    base = {**ids, "space": test.space, "test": test.name,
                            "applicable": v.applicable}
                    for t in range(block.iterations):
                        for k in range(block.nr_perturbations):
                            for j, method in enumerate(block.methods):
                                rows.append({**base, "criterion": v.criterion_iac,
                                             "iteration": t, "perturbation": k,
                                             "method": method, "value": v.iac[t, k, j],
                                             "chance": v.iac_chance[t, k, j],
                                             "n_used": int(v.iac_n[t, k, j]),
                                             "kept": v.kept[t, k]})
                            rows.append({**base, "criterion": v.criterion_iec, "iteration": t,
                                         "perturbation": k, "method": None,
                                         "value": v.iec[t, k], "chance": v.iec_chance[t, k],
                                         "n_used": int(v.iec_n[t, k]),
                                         "kept": v.kept[t, k]})
        return pd.DataFrame(rows)

    def _space_iterations(self, bi: int, block: RunBlock, name: str, space: str
                          ) -> dict[str, np.ndarray]:
        """Per-iteration criteria (I,) of one space, and their chance levels (``chance_<c>``);
        NaN for a missing or N/A test."""
        out = {c: np.full(block.iterations, np.nan) for c in C.CRITERIA}
        out.update({f"chance_{c}": np.full(block.iterations, np.nan) for c in C.CRITERIA})
        for type_ in ("Resilience", "Adversary"):
            test = block.test(space, type_)
            if test is None:
                continue
            v = self._values[(bi, name, test.name)]
            if not v.applicable:
                continue
            out[v.criterion_iac] = _nanmean(v.iac.reshape(block.iterations, -1), axis=1)
            out[v.criterion_iec] = _nanmean(v.iec, axis=1)
            # chance levels of the same values (NaN exactly where the value is undefined)
            out[f"chance_{v.criterion_iac}"] = _nanmean(
                v.iac_chance.reshape(block.iterations, -1), axis=1)
            out[f"chance_{v.criterion_iec}"] = _nanmean(v.iec_chance, axis=1)
        for prefix in ("", "chance_"):
            out[f"{prefix}MC"] = self._mc(np.stack([out[f"{prefix}{c}"] for c in C.CRITERIA]),
                                          axis=0)
        return out

    def _mc(self, criteria: np.ndarray, axis: int | None = None) -> Any:
        """The mean of the four criteria (axis ``axis``): undefined ones are skipped with
        ``undefined="ignore"``, else they make MC undefined."""
        return _nanmean(criteria, axis=axis) if self.undefined == "ignore" \
            else criteria.mean(axis)

    def _iteration_frame(self) -> pd.DataFrame:
        rows = []
        for bi, block in enumerate(self.blocks):
            spaces = [s for s in SPACES if any(t.space == s for t in block.tests)]
            for name, rec in block.metrics.items():
                for space in spaces:
                    it = self._space_iterations(bi, block, name, space)
                    for t in range(block.iterations):
                        rows.append({**self._ids(block, rec), "space": space, "iteration": t,
                                     **{c: it[c][t] for c in (*C.CRITERIA, "MC")}})
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ summary
    def summary(self) -> pd.DataFrame:
        """One row per (dataset, model, metric, space) plus a ``"Mean"`` space row (MC̄).

        Columns: the four criteria and ``MC`` (means over iterations) with ``*_std``
        (std over iterations); ``chance_*``: each criterion's chance level given the observed
        scores and ties (see :mod:`metaeval.criteria`: :func:`~metaeval.criteria.iac_chance`,
        :func:`~metaeval.criteria.iec_nr_chance`, :func:`~metaeval.criteria.iec_ar_chance`),
        averaged exactly as the criterion is, and ``chance_MC`` their mean; for continuous
        scores they are 0.5, 0.5, 1/L, 0.5 (:func:`~metaeval.criteria.chance_levels`), with
        ties they can be far from it (a binary metric that rarely changes has IAC_NR and
        IEC_NR chance levels near 1 and an IEC_AR chance level near 0); NaN where the test is
        not applicable; ``kept_NR``/``kept_AR`` (mean fraction of samples kept by the
        Resilience/Adversary masks: the coverage); ``undefined`` (perturbation values left
        undefined by an empty mask); ``applicable`` and ``note``.
        """
        rows = []
        for bi, block in enumerate(self.blocks):
            spaces = [s for s in SPACES if any(t.space == s for t in block.tests)]
            for _name, rec in block.metrics.items():
                ids = self._ids(block, rec)
                space_rows = []
                for space in spaces:
                    row = self._summary_row(bi, block, rec, space)
                    space_rows.append(row)
                    rows.append({**ids, **row})
                if len(space_rows) > 1:
                    rows.append({**ids, **self._mean_row(space_rows)})
        frame = pd.DataFrame(rows)
        return frame

    scores = summary

    def _summary_row(self, bi: int, block: RunBlock, rec: MetricRecord, space: str
                     ) -> dict[str, Any]:
        it = self._space_iterations(bi, block, rec.name, space)
        row: dict[str, Any] = {"space": space}
        # _nanmean/_nanstd give NaN (silently) where every iteration is undefined
        for c in C.CRITERIA:
            row[c] = _nanmean(it[c])
            row[f"{c}_std"] = _nanstd(it[c])
        row["MC"] = self._mc(np.array([row[c] for c in C.CRITERIA]))
        row["MC_std"] = _nanstd(it["MC"])
        for c in C.CRITERIA:
            row[f"chance_{c}"] = _nanmean(it[f"chance_{c}"])
        row["chance_MC"] = self._mc(np.array([row[f"chance_{c}"] for c in C.CRITERIA]))
        notes, applicable, undefined = [], True, 0
        for type_, fm in (("Resilience", "NR"), ("Adversary", "AR")):
            test = block.test(space, type_)
            if test is None:
                row[f"kept_{fm}"] = np.nan
                notes.append(f"no {space} {type_} test")
                applicable = False
                continue
            v = self._values[(bi, rec.name, test.name)]
            row[f"kept_{fm}"] = float(v.kept.mean())
            if not v.applicable:
                applicable = False
                notes.append(f"{test.name} not applicable: {v.reason}")
                continue
            undefined += int(np.isnan(v.iec).sum() + np.isnan(v.iac).sum())
            n_empty = int((block.masks[test.name].sum(-1) == 0).sum())
            if n_empty:
                what = "no prediction changed" if fm == "AR" else "every prediction changed"
                notes.append(f"{test.name}: {what} in {n_empty} of "
                             f"{block.iterations * block.nr_perturbations} perturbations")
        row["undefined"] = undefined
        row["applicable"] = applicable
        row["note"] = "; ".join(notes)
        return row

    def _mean_row(self, space_rows: list[dict[str, Any]]) -> dict[str, Any]:
        """MC̄: criteria, MC and their chance levels averaged over the spaces whose tests
        apply."""
        use = [r for r in space_rows if r["applicable"]]
        row: dict[str, Any] = {"space": "Mean"}
        for c in (*C.CRITERIA, "MC"):  # NaN where no space has a value
            row[c] = _nanmean(np.array([r[c] for r in use], dtype=np.float64))
            row[f"{c}_std"] = np.nan
        for c in (*C.CRITERIA, "MC"):
            row[f"chance_{c}"] = _nanmean(np.array([r[f"chance_{c}"] for r in use],
                                                   dtype=np.float64))
        for fm in ("NR", "AR"):
            row[f"kept_{fm}"] = np.nan
        row["undefined"] = int(sum(r["undefined"] for r in use))
        row["applicable"] = bool(use)
        row["note"] = ("" if len(use) == len(space_rows) else
                       f"MC̄ over {', '.join(r['space'] for r in use) or 'no space'} only")
        return row

    def table(self, std_times: float = 2.0, *, digits: int = 3,
              spaces: Sequence[str] = ("Model", "Input", "Mean"),
              chance: bool = True) -> pd.DataFrame:
        """The summary as "mean ± std_times·std" strings (the paper prints ± 2σ), one row per
        (dataset, model, family, metric, space); N/A rows say so. With ``chance`` (default),
        columns ``chance_IAC_NR`` ... ``chance_MC`` give each row's chance levels (see
        :meth:`summary`): a criterion at its chance level carries no information about the metric.
        """
        s = self.summary()
        s = s[s["space"].isin(spaces)]
        out = s[["dataset", "model", "family", "metric", "space"]].copy()
        columns = [(c, c, True) for c in (*C.CRITERIA, "MC")]
        if chance:
            columns += [(f"chance_{c}", f"chance_{c}", False) for c in (*C.CRITERIA, "MC")]
        for col, key, spread in columns:
            cells = []
            for _, r in s.iterrows():
                if not r["applicable"] and r["space"] != "Mean":
                    cells.append("n/a")
                elif not np.isfinite(r[key]):
                    cells.append("undefined")
                elif spread and np.isfinite(r[f"{key}_std"]):
                    cells.append(f"{r[key]:.{digits}f} ± "
                                 f"{std_times * r[f'{key}_std']:.{digits}f}")
                else:
                    cells.append(f"{r[key]:.{digits}f}")
            out[col] = cells
        return out.reset_index(drop=True)

    def ranking(self) -> pd.DataFrame:
        """Metrics ranked by MC̄ within each (dataset, model, family); rank 1 = most reliable."""
        s = self.summary()
        s = s[s["space"] == ("Mean" if (s["space"] == "Mean").any() else s["space"].iloc[0])]
        s = s[["dataset", "model", "family", "metric", "MC", *C.CRITERIA]].copy()
        s["rank"] = s.groupby(["dataset", "model", "family"])["MC"].rank(
            ascending=False, method="min")
        return s.sort_values(["dataset", "model", "family", "rank"]).reset_index(drop=True)

    def coverage(self) -> pd.DataFrame:
        """Per (dataset, model, test): the mean, minimum and maximum fraction of samples the
        masks kept, and how many perturbations kept none."""
        rows = []
        for block in self.blocks:
            for test in block.tests:
                m = block.masks[test.name]
                kept = m.mean(-1)
                rows.append({"dataset": block.dataset, "model": block.model, "test": test.name,
                             "kept_mean": float(kept.mean()), "kept_min": float(kept.min()),
                             "kept_max": float(kept.max()),
                             "empty_masks": int((m.sum(-1) == 0).sum()),
                             "perturbations": int(kept.size)})
        return pd.DataFrame(rows)

    def scores_frame(self) -> pd.DataFrame:
        """Every per-sample score: one row per (metric, test or "unperturbed", iteration,
        perturbation, method, sample) with ``score`` and ``kept``."""
        rows = []
        for block in self.blocks:
            if not block.keep_scores:
                raise ValueError("Scores were not kept (keep_scores=False).")
            for name, rec in block.metrics.items():
                ids = {"dataset": block.dataset, "model": block.model, "metric": name}
                _n_l, n = rec.q_star.shape
                for j, method in enumerate(block.methods):
                    rows.append(pd.DataFrame({**ids, "test": "unperturbed", "iteration": -1,
                                              "perturbation": -1, "method": method,
                                              "sample": np.arange(n), "score": rec.q_star[j],
                                              "kept": True}))
                for test in block.tests:
                    q = rec.q_hat[test.name]
                    mk = block.masks[test.name]
                    for t in range(block.iterations):
                        for k in range(block.nr_perturbations):
                            for j, method in enumerate(block.methods):
                                rows.append(pd.DataFrame({
                                    **ids, "test": test.name, "iteration": t,
                                    "perturbation": k, "method": method,
                                    "sample": np.arange(n), "score": q[t, k, j],
                                    "kept": mk[t, k]}))
        return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()

    def nan_reasons(self) -> pd.DataFrame:
        """Why metric scores were undefined: (dataset, model, metric, reason, count)."""
        rows = [{"dataset": b.dataset, "model": b.model, "metric": name, "reason": r,
                 "count": c}
                for b in self.blocks for name, rec in b.metrics.items()
                for r, c in rec.nan_reasons.items()]
        return pd.DataFrame(rows, columns=["dataset", "model", "metric", "reason", "count"])

    def with_validity(self, report: Any, *, space: str | None = "Mean") -> pd.DataFrame:
        """MC scores and validity verdicts in one table: the :meth:`summary` rows of ``space``
        (default ``"Mean"``, MC̄; the only space when the result has one; None: every space)
        joined on the metric name with ``report.summary()`` of a
        :class:`metaeval.validity.ValidityReport` (the count of each verdict, and the
        mechanisms the metric ``recovers`` and ``fails``). A metric in only one of the two keeps
        its row, the other's columns empty. Reliability (MC: stable and discriminative) and
        validity (the known order recovered) are different questions; see
        ``docs/validity.md``."""
        validity = getattr(report, "summary", None)
        verdicts = getattr(report, "verdicts", None)
        if not callable(validity) or not isinstance(verdicts, pd.DataFrame):
            raise TypeError("`report` must be a metaeval.validity.ValidityReport (from "
                            f"validity_report); got {type(report).__name__}.")
        s = self.summary()
        if space is not None:
            spaces = list(dict.fromkeys(s["space"]))
            use = space if space in spaces else (spaces[0] if len(spaces) == 1 else None)
            if use is None:
                raise ValueError(f"The result has no {space!r} space; it has {spaces}.")
            s = s[s["space"] == use]
        keep = ["dataset", "model", "family", "metric", "space", "MC", *C.CRITERIA]
        v = validity().drop(columns=["higher_is_better"]).rename(
            columns={"family": "validity_family"})
        out = s[keep].merge(v, on="metric", how="outer", sort=False)
        missing = out["family"].isna() | (out["family"] == "")
        out["family"] = out["family"].where(~missing, out["validity_family"])
        counts = [c for c in v.columns if c not in ("metric", "validity_family", "recovers",
                                                      "fails")]
        out[counts] = out[counts].astype("Int64")
        return out.drop(columns=["validity_family"]).reset_index(drop=True)

    # ------------------------------------------------------------------ plots
    def plot_area(self, **kwargs: Any) -> Any:
        """Kite plots of the criteria per metric; see :func:`metaeval.plots.plot_area`."""
        from .plots import plot_area

        return plot_area(self, **kwargs)

    def plot_scatter(self, **kwargs: Any) -> Any:
        """IAC_NR vs IAC_AR and IEC_NR vs IEC_AR; see :func:`metaeval.plots.plot_scatter`."""
        from .plots import plot_scatter

        return plot_scatter(self, **kwargs)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (arrays as nested lists; NaN as null)."""
        blocks = []
        for b in self.blocks:
            blocks.append({
                "dataset": b.dataset, "model": b.model,
                "tests": [t.params() for t in b.tests], "methods": b.methods,
                "iterations": b.iterations, "nr_perturbations": b.nr_perturbations,
                "y_pred": _enc(b.y_pred), "y_true": None if b.y_true is None else _enc(b.y_true),
                "masks": {k: _enc(v) for k, v in b.masks.items()},
                "y_pred_perturbed": {k: _enc(v) for k, v in b.y_pred_perturbed.items()},
                "timings": b.timings, "keep_scores": b.keep_scores,
                "metrics": {n: {"name": r.name, "family": r.family,
                                "higher_is_better": r.higher_is_better,
                                "description": r.description, "q_star": _enc(r.q_star),
                                "q_hat": {k: _enc(v) for k, v in r.q_hat.items()},
                                "applicable": {k: list(v) for k, v in r.applicable.items()},
                                "nan_reasons": r.nan_reasons}
                            for n, r in b.metrics.items()},
            })
        return {"schema_version": SCHEMA_VERSION, "config": self.config,
                "undefined": self.undefined, "blocks": blocks}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MetaEvaluationResult:
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"Unsupported result schema {d.get('schema_version')!r}; this "
                             f"version reads {SCHEMA_VERSION}.")
        blocks = []
        for b in d["blocks"]:
            metrics = {}
            for n, r in b["metrics"].items():
                metrics[n] = MetricRecord(
                    name=r["name"], family=r["family"], higher_is_better=r["higher_is_better"],
                    description=r["description"], q_star=_dec(r["q_star"], float),
                    q_hat={k: _dec(v, float) for k, v in r["q_hat"].items()},
                    applicable={k: (bool(v[0]), str(v[1])) for k, v in r["applicable"].items()},
                    nan_reasons=dict(r["nan_reasons"]))
            blocks.append(RunBlock(
                dataset=b["dataset"], model=b["model"], tests=[_test_from(p) for p in b["tests"]],
                methods=list(b["methods"]), iterations=b["iterations"],
                nr_perturbations=b["nr_perturbations"], y_pred=_dec(b["y_pred"], int),
                y_true=None if b["y_true"] is None else _dec(b["y_true"], int),
                masks={k: _dec(v, bool) for k, v in b["masks"].items()},
                y_pred_perturbed={k: _dec(v, int) for k, v in b["y_pred_perturbed"].items()},
                metrics=metrics, timings=dict(b.get("timings", {})),
                keep_scores=b.get("keep_scores", True)))
        return cls(blocks, config=d.get("config"), undefined=d.get("undefined", "nan"))

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON."""
        Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> MetaEvaluationResult:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    @classmethod
    def concat(cls, results: Sequence[MetaEvaluationResult]) -> MetaEvaluationResult:
        """Several results as one (e.g. runs on different data sets)."""
        results = list(results)
        if not results:
            raise ValueError("Nothing to concatenate.")
        return cls([b for r in results for b in r.blocks], config=results[0].config,
                   undefined=results[0].undefined)


def _enc(a: np.ndarray) -> dict[str, Any]:
    a = np.asarray(a)
    if a.dtype.kind == "f":
        data = [None if not math.isfinite(v) else v for v in a.ravel().tolist()]
    else:
        data = a.ravel().tolist()
    return {"shape": list(a.shape), "data": data}


def _dec(d: dict[str, Any], kind: type) -> np.ndarray:
    data = d["data"]
    if kind is float:
        arr = np.array([np.nan if v is None else v for v in data], dtype=np.float64)
    elif kind is bool:
        arr = np.array(data, dtype=bool)
    else:
        arr = np.array(data, dtype=np.int64)
    return arr.reshape(d["shape"])


def _test_from(p: dict[str, Any]) -> PerturbationTest:
    p = dict(p)
    space = p.pop("space")
    if space == "Model":
        return ModelPerturbationTest(p["type"], p["noise_type"], p["mean"], p["std"])
    clip = p.get("clip", "data")
    if isinstance(clip, list):
        clip = tuple(clip)
    return InputPerturbationTest(p["type"], p["noise"], re_explain=p.get("re_explain", True),
                                 clip=clip)
