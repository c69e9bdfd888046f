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

With ``executor="ray"`` (or an :class:`evalkit.executors.RayExecutor`) the units of each
(data set, model) run on the workers of a Ray cluster: the unperturbed unit first, then every
perturbation unit in parallel (each in its own forward cache, with seeds derived from its labels,
so the numbers equal an in-process run). The driver commits each unit to the store as it
arrives; a unit whose worker is lost is run again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evalkit.executors import Executor, as_executor
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
    executor:
        Where the units run: ``None``/``"local"`` in this process, ``"ray"`` or an
        :class:`evalkit.executors.RayExecutor` on a Ray cluster (same numbers; see the module
        docstring).

    ``run()`` returns one :class:`~metaeval.results.MetaEvaluationResult` with a block per
    (dataset, model); ``stats_`` counts the units computed and loaded.
    """

    def __init__(self, meta_evaluation: MetaEvaluation, metrics: Mapping[str, Any],
                 datasets: Mapping[str, Mapping[str, Any]], *,
                 store: str | Path | ResultStore | None = None,
                 executor: str | Executor | None = None) -> None:
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
        self.executor = as_executor(executor)
        self.stats_: dict[str, int] = {}

    def run(self) -> MetaEvaluationResult:
        me = self.meta_evaluation
        self.stats_ = {"units_computed": 0, "units_loaded": 0, "scores_computed": 0,
                       "scores_loaded": 0}
        blocks = []
        with self.executor.session():  # e.g. one Ray cluster for every block
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
        ex = self.executor
        device = state.x.device

        first = self._load(state, context, cells, ("unperturbed",))
        if first.needed:
            for _i, out in ex.imap_unordered(
                    _unperturbed_job, (me, state, self.metrics), [(tuple(first.todo),)],
                    progress=False, device=device):
                if not ex.in_process:  # the worker's clean explanations and timings come back
                    state.explanations.update(out.pop("explanations", {}))
                    state.timings.update(out.pop("timings", {}))
                self._finish(first, out)
        unperturbed = first.result()

        pending: dict[tuple, _Pending] = {}
        jobs: list[tuple[tuple, tuple]] = []
        for i, test in enumerate(me.tests):
            for t in range(me.iterations):
                for k in range(me.nr_perturbations):
                    p = self._load(state, context, cells, (test.params(), t, k))
                    pending[(test.name, t, k)] = p
                    if p.needed:
                        jobs.append(((test.name, t, k), (i, t, k, tuple(p.todo))))
        if jobs:
            results = ex.imap_unordered(
                _perturbation_job, (me, state, self.metrics, unperturbed),
                [args for _key, args in jobs], progress=me.progress and not ex.in_process,
                desc=f"metaeval {dname}/{mname}", device=device)
            for j, out in results:
                if not ex.in_process:
                    state.timings.update(out.pop("timings", {}))
                self._finish(pending[jobs[j][0]], out)
        units = {key: p.result() for key, p in pending.items()}
        block = me.assemble(self.metrics, state, unperturbed, units, dataset=dname, model=mname)
        for name, rec in block.metrics.items():
            rec.family = self.families.get(name, rec.family)
        return block

    def _load(self, state: Any, context: str, cells: Mapping[str, str],
              label: tuple) -> _Pending:
        """A unit's stored parts, and the metrics it still has to compute."""
        me = self.meta_evaluation
        store = self.store
        methods = list(me.xai_methods)
        p = _Pending(label=label, n=int(state.x.shape[0]), methods=methods, cells=dict(cells),
                     has_masks=state.s is not None)
        p.unit_keys = {part: fingerprint([context, "unit", label, part])
                       for part in ("y_pred", "mask")}
        p.unit_context = context
        p.score_keys = {(name, m): fingerprint([cells[name], "scores", label, m])
                        for name in self.metrics for m in methods}
        if store is not None:
            found = store.present([*p.unit_keys.values(), *p.score_keys.values()])
            if p.unit_keys["y_pred"] in found:
                p.have["y_pred"] = store.get(p.unit_keys["y_pred"]).scores.astype(np.int64)
                if label != ("unperturbed",) and p.unit_keys["mask"] in found:
                    p.have["mask"] = store.get(p.unit_keys["mask"]).scores.astype(bool)
            for name in self.metrics:
                keys = [p.score_keys[(name, m)] for m in methods]
                if all(k in found for k in keys):
                    recs = [store.get(k) for k in keys]
                    p.scores[name] = np.stack([r.scores for r in recs])
                    p.reasons[name] = dict(Counter(v for r in recs
                                                   for v in r.nan_reasons.values()))
        complete = "y_pred" in p.have and (label == ("unperturbed",) or "mask" in p.have)
        p.todo = [n_ for n_ in self.metrics if n_ not in p.scores]
        p.needed = bool(p.todo) or not complete
        if not p.needed:
            self.stats_["units_loaded"] += 1
        self.stats_["scores_loaded"] += len(self.metrics) - len(p.todo)
        return p

    def _finish(self, p: _Pending, out: Mapping[str, Any]) -> None:
        """Take a computed unit's output and commit it to the store."""
        store = self.store
        self.stats_["units_computed"] += 1
        self.stats_["scores_computed"] += len(p.todo)
        p.have = {"y_pred": np.asarray(out["y_pred"])}
        if "mask" in out:
            p.have["mask"] = np.asarray(out["mask"], dtype=bool)
        for name in p.todo:
            p.scores[name] = out["scores"][name]
            p.reasons[name] = out["nan_reasons"].get(name, {})
            if store is not None:
                pos = out.get("nan_positions", {}).get(name, {})
                for j, m in enumerate(p.methods):
                    store.put(UnitRecord(
                        key=p.score_keys[(name, m)], cell_hash=p.cells[name], method=m,
                        metric=name, start=0, stop=p.n, scores=p.scores[name][j],
                        nan_reasons=dict(pos.get(m, {}))))
        if store is not None:
            for part, arr in p.have.items():
                store.put(UnitRecord(key=p.unit_keys[part], cell_hash=p.unit_context,
                                     method=_UNIT, metric=part, start=0, stop=p.n,
                                     scores=np.asarray(arr, dtype=np.float64)))


@dataclass
class _Pending:
    """One unit of a benchmark: what the store held, what is left to compute."""

    label: tuple
    n: int
    methods: list[str]
    cells: dict[str, str]
    has_masks: bool
    unit_keys: dict[str, str] = field(default_factory=dict)
    unit_context: str = ""
    score_keys: dict[tuple[str, str], str] = field(default_factory=dict)
    have: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    reasons: dict[str, dict[str, int]] = field(default_factory=dict)
    todo: list[str] = field(default_factory=list)
    needed: bool = False

    def result(self) -> dict[str, Any]:
        have = dict(self.have)
        if self.label == ("unperturbed",):
            have["has_masks"] = self.has_masks
        return {**have, "scores": self.scores, "nan_reasons": self.reasons}


# Jobs (module level: Ray workers import them by name). ``shared`` is the caller's objects in
# process, or the worker's copy of them.
def _unperturbed_job(shared: tuple, todo: tuple[str, ...]) -> dict[str, Any]:
    me, state, metrics = shared
    before = Counter(state.timings)
    out = me.run_unperturbed(state, {n: metrics[n] for n in todo})
    out["explanations"] = dict(state.explanations)
    out["timings"] = dict(Counter(state.timings) - before)
    return out


def _perturbation_job(shared: tuple, test_index: int, t: int, k: int,
                      todo: tuple[str, ...]) -> dict[str, Any]:
    me, state, metrics, unperturbed = shared
    before = Counter(state.timings)
    out = me.run_perturbation(state, {n: metrics[n] for n in todo}, me.tests[test_index], t, k,
                              unperturbed=unperturbed)
    out["timings"] = dict(Counter(state.timings) - before)
    return out


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
