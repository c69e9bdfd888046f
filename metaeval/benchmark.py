"""Meta-evaluation benchmarks: data sets x models x metric families x metrics.

For each (data set, model) the units of :mod:`metaeval.engine` are computed once and shared by
every metric of every family: one set of unperturbed explanations per method, one perturbed
model or input per (test, iteration, perturbation), one explanation per method on it, then every
metric scores it. MetaQuantus' ``MetaEvaluationBenchmarking`` recomputes all of this for each
estimator (and the unperturbed scores for each test).

Resuming uses evalkit's result store (:class:`evalkit.store.ResultStore`, one committed SQLite
row per record) and its hashing (:func:`evalkit.store.fingerprint` of canonical descriptions,
:func:`~evalkit.store.data_fingerprint`, :func:`~evalkit.store.model_fingerprint`). With
``store="meta.sqlite"`` every unit's mask and predictions, and every (metric, method) score row
of it, are committed as soon as they exist, keyed by a hash of

* the **context**: the meta-evaluation's settings (:meth:`MetaEvaluation.config`), the data
  fingerprint of ``x``, ``y``, ``s`` and the model fingerprint;
* the **unit**: ``"unperturbed"`` or (test parameters, iteration, perturbation);
* for scores, the **cell**: the metric's class and resolved parameters, and the method.

A rerun reads them back and computes only what is missing: a metric added later costs only
its own scoring (plus the explanations of each unit it needs, recomputed once per unit).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.store import (
    ResultStore,
    UnitRecord,
    data_fingerprint,
    fingerprint,
    model_fingerprint,
)

from .engine import MetaEvaluation, _as_metrics
from .results import MetaEvaluationResult

__all__ = ["MetaEvaluationBenchmark"]

STORE_SCHEMA = 1
_UNIT = "__metaeval_unit__"


class MetaEvaluationBenchmark:
    """Meta-evaluate metric families on several data sets and models, sharing all the work.

    Parameters
    ----------
    meta_evaluation:
        The :class:`~metaeval.MetaEvaluation` that defines tests, methods, iterations,
        perturbations and seed.
    metrics:
        ``{family: {name: metric}}`` (the family labels the result's rows), or a flat
        ``{name: metric}`` (each metric's own ``family``).
    datasets:
        ``{dataset: {"x": ..., "y": ..., "s": ... (optional), "models": {name: model}}}``.
    store:
        An SQLite file path (or an :class:`evalkit.store.ResultStore`) to commit units to and
        resume from; None keeps everything in memory. A file can be shared with
        :func:`evalkit.evaluate` (the keys never collide).

    ``run()`` returns one :class:`~metaeval.results.MetaEvaluationResult` with a block per
    (dataset, model); ``stats_`` counts the units computed and loaded.
    """

    def __init__(self, meta_evaluation: MetaEvaluation, metrics: Mapping[str, Any],
                 datasets: Mapping[str, Mapping[str, Any]], *,
                 store: str | Path | ResultStore | None = None) -> None:
        if not isinstance(meta_evaluation, MetaEvaluation):
            raise TypeError("`meta_evaluation` must be a metaeval.MetaEvaluation.")
        self.meta_evaluation = meta_evaluation
        self.metrics, self.families = _flatten(metrics)
        if not isinstance(datasets, Mapping) or not datasets:
            raise ValueError("`datasets` must be a non-empty dict {name: {'x', 'y', 'models'}}.")
        for name, d in datasets.items():
            if not isinstance(d, Mapping) or "x" not in d or "models" not in d:
                raise ValueError(f"Data set {name!r} needs 'x' and 'models' (and usually 'y', "
                                 "'s').")
            if not isinstance(d["models"], Mapping) or not d["models"]:
                raise ValueError(f"Data set {name!r}: 'models' must be a non-empty dict.")
        self.datasets = datasets
        if store is None or isinstance(store, ResultStore):
            self.store = store
        else:
            self.store = ResultStore(store)
        self.stats_: dict[str, int] = {}

    def run(self) -> MetaEvaluationResult:
        me = self.meta_evaluation
        self.stats_ = {"units_computed": 0, "units_loaded": 0, "scores_computed": 0,
                       "scores_loaded": 0}
        blocks = []
        for dname, d in self.datasets.items():
            for mname, model in d["models"].items():
                blocks.append(self._run_one(me, dname, d, mname, model))
        return MetaEvaluationResult(blocks, config=me.config(), undefined=me.undefined)

    # ------------------------------------------------------------------ one (dataset, model)
    def _run_one(self, me: MetaEvaluation, dname: str, d: Mapping[str, Any], mname: str,
                 model: Any) -> Any:
        state = me.prepare(model, d["x"], d.get("y"), d.get("s"))
        context = fingerprint({
            "metaeval_store": STORE_SCHEMA, "config": me.config(),
            "data": data_fingerprint(state.x, state.y_true, state.s),
            "model": model_fingerprint(model),
        })
        cells = {n: fingerprint({"context": context, "metric": m})
                 for n, m in self.metrics.items()}

        unperturbed = self._unit(state, context, cells, ("unperturbed",),
                                 lambda todo: me.run_unperturbed(state, todo))
        units = {}
        for test in me.tests:
            for t in range(me.iterations):
                for k in range(me.nr_perturbations):
                    label = (test.params(), t, k)
                    units[(test.name, t, k)] = self._unit(
                        state, context, cells, label,
                        lambda todo, test=test, t=t, k=k: me.run_perturbation(
                            state, todo, test, t, k, unperturbed=unperturbed))
        block = me.assemble(self.metrics, state, unperturbed, units, dataset=dname, model=mname)
        for name, rec in block.metrics.items():
            rec.family = self.families.get(name, rec.family)
        return block

    def _unit(self, state: Any, context: str, cells: Mapping[str, str], label: tuple,
              compute: Any) -> dict[str, Any]:
        """Load a unit's stored parts; compute the metrics that are missing."""
        me = self.meta_evaluation
        store = self.store
        n = int(state.x.shape[0])
        methods = list(me.xai_methods)
        unit_keys = {part: fingerprint([context, "unit", label, part])
                     for part in ("y_pred", "mask")}
        score_keys = {(name, m): fingerprint([cells[name], "scores", label, m])
                      for name in self.metrics for m in methods}
        have: dict[str, Any] = {}
        scores: dict[str, np.ndarray] = {}
        reasons: dict[str, dict[str, int]] = {}
        if store is not None:
            found = store.present([*unit_keys.values(), *score_keys.values()])
            if unit_keys["y_pred"] in found:
                have["y_pred"] = store.get(unit_keys["y_pred"]).scores.astype(np.int64)
                if label != ("unperturbed",) and unit_keys["mask"] in found:
                    have["mask"] = store.get(unit_keys["mask"]).scores.astype(bool)
            for name in self.metrics:
                keys = [score_keys[(name, m)] for m in methods]
                if all(k in found for k in keys):
                    recs = [store.get(k) for k in keys]
                    scores[name] = np.stack([r.scores for r in recs])
                    reasons[name] = dict(Counter(v for r in recs
                                                 for v in r.nan_reasons.values()))
        complete = "y_pred" in have and (label == ("unperturbed",) or "mask" in have)
        todo = {n_: m for n_, m in self.metrics.items() if n_ not in scores}
        if todo or not complete:
            out = compute(todo)
            self.stats_["units_computed"] += 1
            self.stats_["scores_computed"] += len(todo)
            have = {"y_pred": np.asarray(out["y_pred"])}
            if "mask" in out:
                have["mask"] = np.asarray(out["mask"], dtype=bool)
            for name in todo:
                scores[name] = out["scores"][name]
                reasons[name] = out["nan_reasons"].get(name, {})
                if store is not None:
                    pos = out.get("nan_positions", {}).get(name, {})
                    for j, m in enumerate(methods):
                        store.put(UnitRecord(
                            key=score_keys[(name, m)], cell_hash=cells[name], method=m,
                            metric=name, start=0, stop=n, scores=scores[name][j],
                            nan_reasons=dict(pos.get(m, {}))))
            if store is not None:
                for part, arr in have.items():
                    store.put(UnitRecord(key=unit_keys[part], cell_hash=context, method=_UNIT,
                                         metric=part, start=0, stop=n,
                                         scores=np.asarray(arr, dtype=np.float64)))
        else:
            self.stats_["units_loaded"] += 1
        self.stats_["scores_loaded"] += len(self.metrics) - len(todo)
        if label == ("unperturbed",):
            have["has_masks"] = state.s is not None
        return {**have, "scores": scores, "nan_reasons": reasons}


def _flatten(metrics: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    if not isinstance(metrics, Mapping) or not metrics:
        raise ValueError("`metrics` must be a non-empty dict.")
    flat: dict[str, Any] = {}
    families: dict[str, str] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            for name, m in _as_metrics(value, None).items():
                if name in flat:
                    raise ValueError(f"Metric name {name!r} appears in two families.")
                flat[name] = m
                families[name] = key
        else:
            flat.update(_as_metrics(value, key))
    return flat, families
