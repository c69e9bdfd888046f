"""The validity report: does each metric rank the explanation that matches a model's known
mechanism above the ones that do not?

MetaQuantus (Hedström et al., "The Meta-Evaluation Problem in Explainable AI: Identifying
Reliable Estimators with MetaQuantus", TMLR 2023) asks whether a metric is *stable* under small
perturbations and *discriminative* under large ones; it cannot say whether the metric is
*right*. :func:`validity_report` asks that on testbeds whose mechanism is known (linear models
with exact attributions, models that read one region only, saturating models, ...: the designs
of XAI-Units, Lee et al. 2025; AttributionLab, Zhang et al. 2024; XAI-TRIS, Clark et al. 2024;
FunnyBirds, Hesse et al., ICCV 2023), each with candidate explanations in a known partial order
(:class:`~metaeval.validity.Testbed`).

For every metric x testbed:

1. **Applicability.** The cell is ``"not applicable"``, with the reason, when the testbed's
   modality is not one the metric declares (``metric.modalities``, and the metric's own
   refusal of a setting, e.g. ROAD's default imputer on tables), when the metric needs masks
   (``needs_masks``) and the testbed has none (``s`` is None), when it compares with a
   real-valued reference map (``real_valued_s``: the ground-truth agreement metrics, which get
   ``Testbed.reference`` as their ``s``) and the testbed fixes none, when the testbed's
   ``families`` leave out the metric's family (unless the testbed names the metric in
   ``Testbed.metrics``), when the metric scores a protocol's layout (:data:`PROTOCOL_OPTIONS`:
   a grid's ``cells``, a mosaic's ``quadrants``, declared in its ``call_options``) and the
   testbed gives none in ``Testbed.call_options``, or when the metric trains a copy of the
   model and was given none (:func:`training_need`) and the testbed has no training split
   (``Testbed.train``). A metric without a family (a third-party metric that declares none)
   is tried on every testbed.
2. **Scores.** Every candidate named in the testbed's order is scored with
   ``metric(model, x, y, a=candidate map, s=s, explain_fn=candidate, **testbed.metric_kwargs)``
   (``explain_fn`` is the candidate itself, so re-explaining metrics explain perturbed inputs
   and randomised models with it); a metric that declares one of ``Testbed.call_options``
   gets it, and then no ``s``. A metric that trains a copy of the model and was given none
   gets the testbed's training split (:func:`with_training_split`: F-Fidelity fine-tunes on
   it with its own defaults and seed, the data randomisation test trains its permuted-label
   copy on it with :func:`evalkit.metrics.data_randomisation.train_on_permuted_labels`'
   defaults, seed 0); the caller's metric is never changed. A stochastic metric runs once
   per seed of ``seeds`` (an evalkit metric through its ``seed`` parameter; a third-party one
   through a ``seed`` or ``random_state`` attribute, or a call keyword of that name), with
   the same seed for every candidate (common random numbers: within a seed, the candidates'
   scores differ by their maps only); a deterministic one runs once.
   Any exception, or scores that are not one number per sample, make the cell ``"error"``
   with the message; the report never stops on a metric's failure.
3. **Pairs.** Each ordered pair is decided by the paired test of :mod:`metaeval.validity._stats`
   (:func:`~metaeval.validity._stats.decide_pair`): per-sample scores averaged over the seeds,
   NaN samples dropped and counted, differences taken in the metric's direction
   (``higher_is_better``), differences within ``rtol`` times the largest absolute score of the
   cell counted as ties, then a two-sided Wilcoxon signed-rank test at ``alpha`` with the
   rank-biserial effect giving the side. A pair is *decided* when ``p < alpha``; its outcome is
   ``"in order"`` or ``"reversed"``, else ``"undecided"``.
4. **Verdict.** ``"wrong"`` if any decided pair is reversed; ``"correct"`` if at least one pair
   is decided and every decided pair is in the known order; ``"undecided"`` if no pair is
   decided; ``"not applicable"`` and ``"error"`` as above.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import evalkit
from evalkit import _progress
from evalkit._validation import EvalkitWarning
from evalkit.cache import forward_cache
from evalkit.modality import as_modality

from ..engine import _direction
from ._stats import PairDecision, decide_pair, score_scale
from .testbed import Testbed

__all__ = [
    "VERDICTS",
    "ReportCard",
    "ValidityReport",
    "combine",
    "validity_check",
    "validity_report",
]

#: the verdicts of one metric x testbed cell, in the order tables and plots show them
VERDICTS = ("correct", "wrong", "undecided", "not applicable", "error")
#: the colours of the verdicts in :meth:`ValidityReport.plot`
VERDICT_COLOURS = {"correct": "#4daf4a", "wrong": "#e41a1c", "undecided": "#d9d9d9",
                   "not applicable": "#ffffff", "error": "#984ea3"}
_GLYPHS = {"correct": "✓", "wrong": "✗", "undecided": "?", "not applicable": "", "error": "!"}
#: attribute or call-keyword names through which a third-party metric takes a seed
SEED_NAMES = ("seed", "random_state")

_EVIDENCE_COLUMNS = ["metric", "family", "testbed", "mechanism", "modality", "better", "worse",
                     "why", "n", "n_nan", "n_ties", "seeds", "mean_better", "mean_worse",
                     "median_better", "median_worse", "effect", "p_value", "decided", "outcome"]
_VERDICT_COLUMNS = ["metric", "family", "testbed", "mechanism", "modality", "verdict", "reason",
                    "pairs", "decided", "in_order", "reversed"]


# ============================================================================ metrics
def _as_metrics(metrics: Any) -> dict[str, Any]:
    """``{display name: metric instance}`` from an instance, a class, a registered name, a
    list of those, or a dict ``{name: metric}``. Directions are checked as MetaEvaluation
    checks them (:func:`metaeval.engine._direction`: a bool, never a truthy string)."""
    if isinstance(metrics, Mapping):
        items = list(metrics.items())
    elif isinstance(metrics, str | type) or not isinstance(metrics, Iterable):
        items = [(None, metrics)]
    else:
        items = [(None, m) for m in metrics]
    if not items:
        raise ValueError("`metrics` is empty; give at least one metric.")
    out: dict[str, Any] = {}
    for key, metric in items:
        if key is not None and not isinstance(key, str):
            raise TypeError(f"Metric names must be strings; got {key!r}.")
        if isinstance(metric, str):
            name = key or metric
            metric = evalkit.metrics.get(metric)()
        elif isinstance(metric, type):
            name = key or metric.__name__
            metric = metric()
        else:
            name = key or type(metric).__name__
        if not callable(metric):
            raise TypeError(f"Metric {name!r} must be callable as metric(model, x, y, a, s=..., "
                            f"explain_fn=...); got {type(metric).__name__}.")
        _direction(metric, name)
        if name in out:
            raise ValueError(f"Two metrics are named {name!r}; pass a dict {{name: metric}}.")
        out[name] = metric
    return out


def _family(metric: Any) -> str:
    return str(getattr(metric, "family", "") or "")


def _is_evalkit(metric: Any) -> bool:
    return isinstance(metric, evalkit.metrics.Metric)


def _seed_route(metric: Any) -> tuple[str, str] | None:
    """How a metric takes a seed: ``("param", "seed")`` for evalkit metrics, ``("attr", name)``
    or ``("kwarg", name)`` for a third-party one, None if it takes none."""
    if _is_evalkit(metric):
        return ("param", "seed")
    for name in SEED_NAMES:
        if hasattr(metric, name):
            return ("attr", name)
    try:
        params = inspect.signature(metric.__call__).parameters
    except (TypeError, ValueError):
        return None
    for name in SEED_NAMES:
        if name in params:
            return ("kwarg", name)
    return None


def _seeds_for(metric: Any, seeds: Sequence[int]) -> list[int | None]:
    """The seeds a metric runs with: all of them for a stochastic metric that takes a seed,
    the first for one that does not declare randomness (its scores would repeat), None for a
    metric that takes no seed."""
    route = _seed_route(metric)
    if route is None:
        return [None]
    if not bool(getattr(metric, "stochastic", True)):
        return [seeds[0]]
    return list(seeds)


def _seeded(metric: Any, seed: int | None) -> tuple[Any, dict[str, Any]]:
    """The metric to call with ``seed`` and the call keywords that pass it: a copy where the
    seed is a parameter or attribute (the caller's object is never changed), the metric itself
    where it is a call keyword or where there is none."""
    if _is_evalkit(metric):
        from evalkit.evaluate import _run_metric_clone

        return _run_metric_clone(metric, 0 if seed is None else seed), {}
    route = _seed_route(metric)
    if seed is None or route is None:
        return metric, {}
    if route[0] == "attr":
        try:
            m = copy.deepcopy(metric)
        except Exception:  # a metric that cannot be copied keeps its own seed
            return metric, {}
        setattr(m, route[1], seed)
        return m, {}
    return metric, {route[1]: seed}


# ============================================================================ testbeds
def _as_testbeds(testbeds: Any, n: int | None) -> list[Testbed]:
    if testbeds is None:
        from .testbeds import build_testbed, list_testbeds

        return [build_testbed(name, n=n) for name in list_testbeds()]
    if isinstance(testbeds, Testbed | str):
        testbeds = [testbeds]
    out: list[Testbed] = []
    for tb in testbeds:
        if isinstance(tb, str):
            from .testbeds import build_testbed

            tb = build_testbed(tb, n=n)
        if not isinstance(tb, Testbed):
            raise TypeError(f"`testbeds` must hold Testbed objects or testbed names; got "
                            f"{type(tb).__name__}.")
        out.append(tb)
    if not out:
        raise ValueError("`testbeds` is empty.")
    names = [tb.name for tb in out]
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise ValueError(f"Testbed names must be unique; repeated: {dup}.")
    return out


#: call options that carry a protocol's input layout: a metric that declares one in its
#: ``call_options`` is judged only on testbeds that give it (``Testbed.call_options``)
PROTOCOL_OPTIONS = {
    "cells": "image grids (the target cell of each row; Rao et al. 2022's protocol)",
    "quadrants": "mosaics (the target quadrants of each row; Arias-Duart et al. 2022's "
                 "protocol)",
}


def _protocol_options(metric: Any) -> tuple[str, ...]:
    declared = getattr(metric, "call_options", ()) or ()
    return tuple(o for o in PROTOCOL_OPTIONS if o in declared)


def training_need(metric: Any) -> str | None:
    """What a metric that trains a copy of the model needs and was not given, or None: an
    F-Fidelity without its fine-tuned copy (``fine_tuned_model`` and ``fine_tune_data`` both
    None), a data randomisation test without its permuted-label model
    (``randomised_model`` None)."""
    missing = object()
    if (getattr(metric, "fine_tuned_model", missing) is None
            and getattr(metric, "fine_tune_data", missing) is None):
        return "a copy of the model fine-tuned on training data (F-Fidelity)"
    if getattr(metric, "randomised_model", missing) is None:
        return "a copy of the model trained on permuted training labels"
    return None


@dataclass(frozen=True, eq=False)
class _PermutedLabelModel:
    """``f(model) -> nn.Module``: a copy of ``model`` trained on ``x`` with its labels ``y``
    permuted (:func:`evalkit.metrics.data_randomisation.train_on_permuted_labels` at its
    defaults, seed 0); picklable."""

    x: torch.Tensor
    y: torch.Tensor

    def __call__(self, model: Any) -> Any:
        from evalkit.metrics.data_randomisation import train_on_permuted_labels

        return train_on_permuted_labels(model, self.x, self.y, seed=0)


def with_training_split(metric: Any, testbed: Testbed) -> Any:
    """``metric``, or a copy of it that trains its copy of the model on ``testbed.train``
    where it needs one and was given none (:func:`training_need`): F-Fidelity gets
    ``fine_tune_data=testbed.train`` (it fine-tunes once per model, with its own defaults and
    seed), the data randomisation test a ``randomised_model`` that trains on the split with
    permuted labels. The caller's metric is never changed."""
    if training_need(metric) is None or testbed.train is None or not _is_evalkit(metric):
        return metric
    if getattr(metric, "fine_tuned_model", ...) is None:
        return metric.clone().set_params(fine_tune_data=tuple(testbed.train))
    return metric.clone().set_params(randomised_model=_PermutedLabelModel(*testbed.train))


def applicability(metric: Any, testbed: Testbed) -> tuple[bool, str]:
    """Whether ``metric`` can be judged on ``testbed``, and the reason when it cannot (the
    rules of the module docstring)."""
    modality = testbed.metric_kwargs.get("modality", testbed.modality)
    try:
        mod = as_modality(modality, testbed.x)
    except (TypeError, ValueError) as err:
        return False, f"the testbed's modality is not understood: {err}"
    if _is_evalkit(metric):
        try:  # a setting's own, more specific refusal (e.g. ROAD's imputer on tables)
            metric._check_modality(mod)
        except ValueError as err:
            return False, str(err)
    declared = getattr(metric, "modalities", None)
    if declared is not None:
        names = (declared,) if isinstance(declared, str) else tuple(declared)
        names = tuple(str(getattr(d, "name", d)) for d in names)
        if mod.name not in names:
            return False, (f"the metric declares the modalities {', '.join(names) or 'none'}, "
                           f"not {mod.name}")
    if _real_valued_s(metric):
        if _reference(testbed) is None:
            return False, ("the metric compares with a reference map (real-valued `s`) and "
                           "the testbed fixes none")
    elif bool(getattr(metric, "needs_masks", False)) and testbed.s is None:
        return False, "the metric needs masks `s` and the testbed has none"
    family = _family(metric)
    named = {type(metric).__name__, str(getattr(metric, "name", "") or "")}
    if (testbed.families is not None and family and family not in testbed.families
            and not named & set(testbed.metrics)):
        return False, (f"the testbed speaks to the {', '.join(testbed.families)} "
                       f"famil{'y' if len(testbed.families) == 1 else 'ies'}, not {family}")
    protocol = _protocol_options(metric)
    if protocol and not any(o in testbed.call_options for o in protocol):
        return False, (f"the metric scores {PROTOCOL_OPTIONS[protocol[0]]} and the testbed "
                       f"gives no `{protocol[0]}`")
    need = training_need(metric)
    if need is not None and testbed.train is None:
        return False, f"the metric needs {need} and the testbed has no training split"
    return True, ""


def _real_valued_s(metric: Any) -> bool:
    """Whether the metric's ``s`` is a real-valued reference map (the ground-truth agreement
    metrics) rather than binary masks."""
    return bool(getattr(metric, "real_valued_s", False))


def _reference(testbed: Testbed) -> torch.Tensor | None:
    """The testbed's exact map where its mechanism fixes one (``Testbed.reference``)."""
    return getattr(testbed, "reference", None)


# ============================================================================ scoring a cell
@dataclass
class _Cell:
    verdict: str
    reason: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def _candidates(testbed: Testbed) -> list[str]:
    return list(dict.fromkeys(n for p in testbed.order for n in (p.better, p.worse)))


class _Explanations:
    """Each testbed's candidate maps, computed once for all metrics."""

    def __init__(self) -> None:
        self._maps: dict[tuple[int, str], torch.Tensor] = {}

    def get(self, testbed: Testbed, name: str) -> torch.Tensor:
        key = (id(testbed), name)
        if key not in self._maps:
            self._maps[key] = testbed.explanation(name)
        return self._maps[key]


def _score(metric: Any, testbed: Testbed, name: str, a: torch.Tensor,
           seed: int | None) -> np.ndarray:
    m, extra = _seeded(metric, seed)
    # a protocol's layout (a grid's cells, a mosaic's quadrants) replaces the masks
    declared = getattr(metric, "call_options", ()) or ()
    options = {k: v for k, v in testbed.call_options.items() if k in declared}
    with warnings.catch_warnings():
        # undefined scores are counted (n_nan), costs are those of small testbeds
        warnings.simplefilter("ignore", EvalkitWarning)
        s = _reference(testbed) if _real_valued_s(metric) else testbed.s
        out = m(testbed.model, testbed.x, testbed.y, a.clone(), s=None if options else s,
                explain_fn=testbed.candidates[name], **testbed.metric_kwargs, **options,
                **extra)
    scores = np.asarray(out, dtype=np.float64)
    if scores.shape != (testbed.n,):
        raise ValueError(f"the metric returned scores of shape {scores.shape} for the "
                         f"{testbed.n} samples of the testbed; expected ({testbed.n},)")
    return scores


def _judge(name: str, metric: Any, testbed: Testbed, explanations: _Explanations,
           seeds: Sequence[int], alpha: float, rtol: float) -> _Cell:
    ok, why = applicability(metric, testbed)
    if not ok:
        return _Cell("not applicable", why)
    try:
        metric = with_training_split(metric, testbed)
    except Exception as err:  # a metric's failure is its verdict, never the report's
        return _Cell("error", f"{type(err).__name__}: {err}")
    used = _seeds_for(metric, seeds)
    scores: dict[str, np.ndarray] = {}
    try:
        for cand in _candidates(testbed):
            a = explanations.get(testbed, cand)
            scores[cand] = np.stack([_score(metric, testbed, cand, a, s) for s in used])
    except Exception as err:  # a metric's failure is its verdict, never the report's
        return _Cell("error", f"{type(err).__name__}: {err}")
    higher = _direction(metric, name)
    scale = score_scale(*scores.values())
    rows = []
    for pair in testbed.order:
        d: PairDecision = decide_pair(scores[pair.better], scores[pair.worse],
                                      higher_is_better=higher, alpha=alpha, rtol=rtol,
                                      scale=scale)
        rows.append({"better": pair.better, "worse": pair.worse, "why": pair.why,
                     "n": d.n, "n_nan": d.n_nan, "n_ties": d.n_ties, "seeds": len(used),
                     "mean_better": d.mean_better, "mean_worse": d.mean_worse,
                     "median_better": d.median_better, "median_worse": d.median_worse,
                     "effect": d.effect, "p_value": d.p_value, "decided": d.decided,
                     "outcome": d.outcome, "_note": d.note})
    verdict, reason = _verdict(rows)
    counts = {"pairs": len(rows), "decided": sum(r["decided"] for r in rows),
              "in_order": sum(r["outcome"] == "in order" for r in rows),
              "reversed": sum(r["outcome"] == "reversed" for r in rows)}
    return _Cell(verdict, reason, rows, counts)


def _verdict(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """The verdict of a cell from its pairs (the rules of the module docstring)."""
    if not rows:
        return "undecided", "the testbed orders no pair"
    reversed_ = [r for r in rows if r["outcome"] == "reversed"]
    decided = [r for r in rows if r["decided"]]
    if reversed_:
        shown = "; ".join(f"{r['worse']} beats {r['better']} (p = {r['p_value']:.2g}, "
                          f"effect {r['effect']:+.2f})" for r in reversed_)
        return "wrong", f"{len(reversed_)} of {len(rows)} pairs reversed: {shown}"
    if decided:
        return "correct", (f"{len(decided)} of {len(rows)} pairs decided, all in the known "
                           "order")
    notes = sorted({r["_note"] for r in rows if r["_note"]})
    return "undecided", "no pair decided: " + "; ".join(notes)


# ============================================================================ the report
@dataclass(frozen=True)
class ReportCard:
    """One metric's verdicts by testbed: which mechanisms it recovers and which it fails."""

    metric: str
    family: str
    higher_is_better: bool
    verdicts: pd.DataFrame  #: testbed, mechanism, modality, verdict, reason

    def _where(self, verdict: str) -> list[str]:
        v = self.verdicts[self.verdicts["verdict"] == verdict]
        return [f"{r.testbed} ({r.mechanism})" for r in v.itertuples()]

    @property
    def recovers(self) -> list[str]:
        """The mechanisms (testbeds) on which the metric is correct."""
        return sorted(set(self.verdicts.loc[self.verdicts["verdict"] == "correct",
                                            "mechanism"]))

    @property
    def fails(self) -> list[str]:
        """The mechanisms (testbeds) on which the metric is wrong."""
        return sorted(set(self.verdicts.loc[self.verdicts["verdict"] == "wrong",
                                            "mechanism"]))

    def __str__(self) -> str:
        direction = "higher" if self.higher_is_better else "lower"
        lines = [f"{self.metric} ({self.family or 'no family'}; {direction} is better)"]
        for verdict in VERDICTS:
            v = self.verdicts[self.verdicts["verdict"] == verdict]
            if not len(v):
                continue
            lines.append(f"  {verdict}:")
            lines += [f"    {r.testbed} ({r.mechanism})" + (f": {r.reason}" if r.reason else "")
                      for r in v.itertuples()]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The card as a markdown list."""
        direction = "higher" if self.higher_is_better else "lower"
        lines = [f"**{self.metric}** ({self.family or 'no family'}; {direction} is better)", ""]
        for verdict in VERDICTS:
            where = self._where(verdict)
            if where:
                lines.append(f"- {verdict}: {', '.join(where)}")
        return "\n".join(lines)


class ValidityReport:
    """The outcome of :func:`validity_report`.

    * :attr:`evidence`: one row per metric x testbed x ordered pair (tidy): ``metric, family,
      testbed, mechanism, modality, better, worse, why, n, n_nan, n_ties, seeds, mean_better,
      mean_worse, median_better, median_worse, effect, p_value, decided, outcome``;
    * :attr:`verdicts`: one row per metric x testbed: ``verdict`` (one of :data:`VERDICTS`),
      ``reason``, and the numbers of ``pairs``, ``decided``, ``in_order`` and ``reversed``;
    * :meth:`counts`, :meth:`summary`, :meth:`card`, :meth:`grid`; :meth:`plot`;
      :meth:`to_markdown` and :meth:`to_latex` (no optional dependency).
    """

    def __init__(self, evidence: pd.DataFrame, verdicts: pd.DataFrame,
                 directions: Mapping[str, bool], config: Mapping[str, Any] | None = None
                 ) -> None:
        self.evidence = evidence
        self.verdicts = verdicts
        self.directions = dict(directions)
        self.config = dict(config or {})

    def __repr__(self) -> str:
        c = self.verdicts["verdict"].value_counts()
        parts = ", ".join(f"{int(c.get(v, 0))} {v}" for v in VERDICTS)
        return (f"ValidityReport({self.verdicts['metric'].nunique()} metrics x "
                f"{self.verdicts['testbed'].nunique()} testbeds: {parts})")

    @property
    def metrics(self) -> list[str]:
        return list(dict.fromkeys(self.verdicts["metric"]))

    @property
    def testbeds(self) -> list[str]:
        return list(dict.fromkeys(self.verdicts["testbed"]))

    def counts(self, by: str = "family") -> pd.DataFrame:
        """How many cells have each verdict, by ``by`` (``"family"``, ``"metric"``,
        ``"testbed"``, ``"mechanism"`` or ``"modality"``): one row per group, one column per
        verdict (:data:`VERDICTS`), and ``total``."""
        if by not in ("family", "metric", "testbed", "mechanism", "modality"):
            raise ValueError(f"`by` must be family, metric, testbed, mechanism or modality; "
                             f"got {by!r}.")
        v = self.verdicts.assign(family=self.verdicts["family"].replace("", "(none)"))
        table = pd.crosstab(v[by], v["verdict"]).reindex(columns=list(VERDICTS), fill_value=0)
        order = list(dict.fromkeys(v[by]))
        table = table.reindex(order).fillna(0).astype(int)
        table["total"] = table.sum(axis=1)
        table.columns.name = None
        return table

    def summary(self) -> pd.DataFrame:
        """One row per metric: ``metric, family, higher_is_better``, the count of each verdict,
        ``recovers`` (the mechanisms with a correct verdict) and ``fails`` (those with a wrong
        one)."""
        rows = []
        for name in self.metrics:
            v = self.verdicts[self.verdicts["metric"] == name]
            row: dict[str, Any] = {"metric": name, "family": v["family"].iloc[0],
                                   "higher_is_better": self.directions.get(name)}
            for verdict in VERDICTS:
                row[verdict] = int((v["verdict"] == verdict).sum())
            row["recovers"] = ", ".join(sorted(set(v.loc[v["verdict"] == "correct",
                                                         "mechanism"])))
            row["fails"] = ", ".join(sorted(set(v.loc[v["verdict"] == "wrong", "mechanism"])))
            rows.append(row)
        return pd.DataFrame(rows, columns=["metric", "family", "higher_is_better", *VERDICTS,
                                           "recovers", "fails"])

    def grid(self) -> pd.DataFrame:
        """The verdicts as a metric x testbed table."""
        g = self.verdicts.pivot(index="metric", columns="testbed", values="verdict")
        g = g.reindex(index=self.metrics, columns=self.testbeds)
        g.index.name, g.columns.name = "metric", None
        return g

    def card(self, metric: str) -> ReportCard:
        """The report card of one metric (:class:`ReportCard`)."""
        if metric not in self.metrics:
            raise KeyError(f"No metric {metric!r} in the report; it has {self.metrics}.")
        v = self.verdicts[self.verdicts["metric"] == metric]
        return ReportCard(metric, str(v["family"].iloc[0]), bool(self.directions[metric]),
                          v[["testbed", "mechanism", "modality", "verdict", "reason"]]
                          .reset_index(drop=True))

    def _table(self, table: str) -> pd.DataFrame:
        if table == "grid":
            return self.grid().reset_index()
        if table == "summary":
            return self.summary()
        if table == "counts":
            return self.counts().reset_index()
        if table == "verdicts":
            return self.verdicts
        if table == "evidence":
            return self.evidence
        raise ValueError(f"`table` must be grid, summary, counts, verdicts or evidence; got "
                         f"{table!r}.")

    def to_markdown(self, table: str = "grid", *, digits: int = 3) -> str:
        """A GitHub-flavoured markdown table: ``"grid"`` (metric x testbed verdicts, default),
        ``"summary"``, ``"counts"`` (by family), ``"verdicts"`` or ``"evidence"``. Written
        here, so it needs no optional package (pandas' own needs ``tabulate``)."""
        frame = self._table(table)
        cells = [[_text(v, digits).replace("|", "\\|") for v in row]
                 for row in frame.itertuples(index=False)]
        head = [str(c).replace("|", "\\|") for c in frame.columns]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(lines)

    def to_latex(self, table: str = "grid", *, digits: int = 3, caption: str | None = None,
                 label: str | None = None) -> str:
        """A LaTeX ``table`` with a booktabs ``tabular`` of the same tables as
        :meth:`to_markdown` (no optional package: pandas' own needs ``jinja2``)."""
        from evalkit.leaderboard import _latex_escape

        frame = self._table(table)
        head = [_latex_escape(str(c)) for c in frame.columns]
        body = [[_latex_escape(_text(v, digits)) for v in row]
                for row in frame.itertuples(index=False)]
        lines = ["\\begin{table}[t]", "\\centering"]
        if caption:
            lines.append(f"\\caption{{{_latex_escape(caption)}}}")
        if label:
            lines.append(f"\\label{{{label}}}")
        lines += [f"\\begin{{tabular}}{{{'l' * len(head)}}}", "\\toprule",
                  " & ".join(head) + " \\\\", "\\midrule"]
        lines += [" & ".join(r) + " \\\\" for r in body]
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (NaN as null); :meth:`from_dict` reads it back."""
        def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
            return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]

        return {"evidence": records(self.evidence), "verdicts": records(self.verdicts),
                "directions": dict(self.directions), "config": self.config}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ValidityReport:
        evidence = pd.DataFrame(d["evidence"], columns=_EVIDENCE_COLUMNS)
        for col in ("mean_better", "mean_worse", "median_better", "median_worse", "effect",
                    "p_value"):
            evidence[col] = evidence[col].astype(float)
        return cls(evidence, pd.DataFrame(d["verdicts"], columns=_VERDICT_COLUMNS),
                   {k: bool(v) for k, v in d["directions"].items()}, d.get("config"))

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON (e.g. to regenerate the docs' tables without a
        rerun)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ValidityReport:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def plot(self, *, figsize: tuple[float, float] | None = None,
             glyphs: bool = True) -> Any:
        """The metric x testbed grid coloured by verdict (green correct, red wrong, grey
        undecided, white not applicable, purple error), with a legend. Returns the matplotlib
        Figure (nothing is drawn through pyplot or written to disk)."""
        from matplotlib.colors import ListedColormap
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch

        g = self.grid()
        code = {v: i for i, v in enumerate(VERDICTS)}
        values = g.apply(lambda col: col.map(code)).to_numpy(dtype=float)
        n_rows, n_cols = values.shape
        figsize = figsize or (max(4.0, 1.0 + 0.55 * n_cols), max(2.5, 1.2 + 0.3 * n_rows))
        fig = Figure(figsize=figsize)
        ax = fig.subplots()
        cmap = ListedColormap([VERDICT_COLOURS[v] for v in VERDICTS])
        ax.imshow(values, cmap=cmap, vmin=-0.5, vmax=len(VERDICTS) - 0.5, aspect="auto")
        ax.set_xticks(range(n_cols), list(g.columns), rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n_rows), list(g.index), fontsize=8)
        ax.set_xticks(np.arange(-0.5, n_cols), minor=True)
        ax.set_yticks(np.arange(-0.5, n_rows), minor=True)
        ax.grid(which="minor", color="#999999", lw=0.5)
        ax.tick_params(which="minor", length=0)
        if glyphs:
            for i in range(n_rows):
                for j in range(n_cols):
                    verdict = g.iat[i, j]
                    if isinstance(verdict, str) and _GLYPHS.get(verdict):
                        ax.text(j, i, _GLYPHS[verdict], ha="center", va="center", fontsize=8,
                                color="white" if verdict in ("correct", "wrong", "error")
                                else "black")
        ax.legend(handles=[Patch(facecolor=VERDICT_COLOURS[v], edgecolor="#999999", label=v)
                           for v in VERDICTS],
                  loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        ax.set_title("Validity: known order recovered per metric x testbed", fontsize=10)
        fig.tight_layout()
        return fig


def _plain(v: Any) -> Any:
    """A JSON value: Python scalars, NaN as None."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _text(v: Any, digits: int) -> str:
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, float | np.floating):
        if not math.isfinite(float(v)):
            return "" if math.isnan(float(v)) else str(v)
        return f"{float(v):.{digits}g}" if abs(float(v)) < 10 ** -digits else \
            f"{float(v):.{digits}f}"
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v)


def validity_report(
    metrics: Any,
    testbeds: Any = None,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    alpha: float = 0.05,
    rtol: float = 1e-5,
    progress: bool | None = None,
    n: int | None = None,
) -> ValidityReport:
    """Judge every metric on every testbed: does it score the explanation that matches the
    model's known mechanism above the others?

    Parameters
    ----------
    metrics:
        An evalkit metric instance, class or registered name, a list of those, or a dict
        ``{name: metric}``; third-party metrics work the same when they follow the protocol:
        ``metric(model, x, y, a, *, s=..., explain_fn=..., **kwargs) -> (N,) scores`` with a
        bool ``higher_is_better`` (and optionally ``family``, ``modalities``, ``needs_masks``,
        ``stochastic``, a ``seed`` / ``random_state`` attribute or call keyword).
    testbeds:
        :class:`~metaeval.validity.Testbed` objects or names of the testbed library
        (:func:`metaeval.validity.testbeds.list_testbeds`); None: every testbed of the
        library, built with ``n`` samples.
    seeds:
        The seeds of stochastic metrics (one run each; deterministic metrics run once).
    alpha:
        The significance level of each pair's Wilcoxon signed-rank test.
    rtol:
        Differences within ``rtol`` times the largest absolute score the metric gives on the
        testbed are ties.
    progress:
        A progress bar over the metric x testbed cells (default: where the run is
        interactive).
    n:
        Samples per testbed built from a name (default: the library's).

    Returns
    -------
    ValidityReport
        See the module docstring for the rules of applicability, pairs and verdicts.
    """
    resolved = _as_metrics(metrics)
    beds = _as_testbeds(testbeds, n)
    seeds = tuple(seeds)
    if not seeds or not all(isinstance(s, int | np.integer) and not isinstance(s, bool)
                            for s in seeds):
        raise ValueError(f"`seeds` must be a non-empty sequence of ints; got {seeds!r}.")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"`alpha` must lie in (0, 1); got {alpha!r}.")
    if not float(rtol) >= 0.0:
        raise ValueError(f"`rtol` must be >= 0; got {rtol!r}.")
    explanations = _Explanations()
    evidence, verdicts = [], []
    bar = _progress.tqdm(total=len(resolved) * len(beds), desc="validity", unit="cell",
                         disable=not _progress.resolve(progress), leave=False)
    try:
        for tb in beds:
            # the metrics on one testbed share the forward rows they have in common (the
            # cache's keys are exact: the same model, input bytes and perturbation)
            with forward_cache():
                for name, metric in resolved.items():
                    bar.set_postfix_str(f"{name} on {tb.name}", refresh=False)
                    cell = _judge(name, metric, tb, explanations, seeds, float(alpha),
                                  float(rtol))
                    ids = {"metric": name, "family": _family(metric), "testbed": tb.name,
                           "mechanism": tb.mechanism, "modality": tb.modality}
                    evidence += [{**ids, **{k: v for k, v in r.items() if k != "_note"}}
                                 for r in cell.rows]
                    verdicts.append({**ids, "verdict": cell.verdict, "reason": cell.reason,
                                     **{k: cell.counts.get(k, 0) for k in
                                        ("pairs", "decided", "in_order", "reversed")}})
                    bar.update(1)
    finally:
        bar.close()
    order = {name: i for i, name in enumerate(resolved)}
    verdict_frame = pd.DataFrame(verdicts, columns=_VERDICT_COLUMNS)
    verdict_frame = verdict_frame.sort_values("metric", key=lambda s: s.map(order),
                                              kind="stable").reset_index(drop=True)
    evidence_frame = pd.DataFrame(evidence, columns=_EVIDENCE_COLUMNS)
    evidence_frame = evidence_frame.sort_values("metric", key=lambda s: s.map(order),
                                                kind="stable").reset_index(drop=True)
    config = {"seeds": list(seeds), "alpha": float(alpha), "rtol": float(rtol),
              "testbeds": [tb.name for tb in beds], "metrics": {k: repr(m) for k, m in
                                                                resolved.items()}}
    return ValidityReport(evidence_frame, verdict_frame,
                          {k: _direction(m, k) for k, m in resolved.items()}, config)


# ============================================================================ MetaEvaluation
def combine(result: Any, report: ValidityReport, *, space: str | None = "Mean"
            ) -> pd.DataFrame:
    """MC scores and validity verdicts in one table: the function form of
    :meth:`metaeval.MetaEvaluationResult.with_validity` (which see), ``result`` being a
    :class:`~metaeval.MetaEvaluationResult`."""
    with_validity = getattr(result, "with_validity", None)
    if not callable(with_validity):
        raise TypeError(f"`result` must be a MetaEvaluationResult; got {type(result).__name__}.")
    return with_validity(report, space=space)


# ============================================================================ check_metric
def validity_check(metric: Any, *, testbeds: Any = None, seeds: Sequence[int] = (0,),
                   n: int | None = None) -> tuple[bool, str, ValidityReport]:
    """The ``"validity"`` check of :func:`evalkit.testing.check_metric`: a direction-sanity
    check on the validity testbeds. It fails when the metric is wrong on more testbeds than it
    is correct (the mark of a flipped ``higher_is_better``), or when every applicable testbed
    errored; either way the message is the metric's report card. ``testbeds`` default: the
    library's testbeds of the modalities the metric declares (every one if it declares none),
    with ``n`` samples each. Returns ``(passed, message, report)``."""
    if testbeds is None:
        from .testbeds import list_testbeds

        declared = getattr(metric, "modalities", None)
        if declared is None:
            testbeds = list_testbeds()
        else:
            names = (declared,) if isinstance(declared, str) else tuple(declared)
            testbeds = list(dict.fromkeys(
                t for m in names for t in list_testbeds(modality=str(getattr(m, "name", m)))))
        if not testbeds:
            return True, "no validity testbed has a modality the metric declares", None
    report = validity_report({_display_name(metric): metric}, testbeds, seeds=seeds,
                             progress=False, n=n)
    name = report.metrics[0]
    counts = report.summary().iloc[0]
    card = str(report.card(name))
    applicable = int(counts[list(VERDICTS[:3])].sum() + counts["error"])
    if applicable == 0:
        return True, "no validity testbed applies to the metric\n" + card, report
    if counts["error"] == applicable:
        return False, "the metric raised on every applicable testbed\n" + card, report
    if counts["wrong"] > counts["correct"]:
        return False, (f"wrong on {counts['wrong']} testbeds and correct on "
                       f"{counts['correct']}: is higher_is_better="
                       f"{report.directions[name]} right?\n" + card), report
    return True, card, report


def _display_name(metric: Any) -> str:
    return metric.__name__ if isinstance(metric, type) else type(metric).__name__
