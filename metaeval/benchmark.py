"""Meta-evaluation benchmarks: data sets x models x metric families x metrics.

For each (data set, model) the units of :mod:`metaeval.engine` are computed once and shared by
every metric of every family: one set of unperturbed explanations per method, one perturbed
model or input per (test, iteration, perturbation), one explanation per method on it, then every
metric scores it. MetaQuantus' ``MetaEvaluationBenchmarking`` recomputes all of this for each
estimator (and the unperturbed scores for each test).

Resuming: with ``store=`` (a directory), each unit's masks and predictions and each metric's
scores of it are written as soon as they are computed, under keys that hash everything that
determines them (the meta-evaluation's settings, the data, the model's parameters, the unit and
the metric's parameters). A rerun loads what is stored and computes only what is missing (a
metric added later costs only its own scoring of the units, plus the explanations it needs).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .engine import MetaEvaluation, _as_metrics
from .reference import ReferenceEstimator
from .results import MetaEvaluationResult

__all__ = ["DirectoryStore", "MetaEvaluationBenchmark", "fingerprint"]

STORE_SCHEMA = 1


def fingerprint(obj: Any) -> str:
    """A content hash (hex) of arrays, tensors, ``nn.Module`` parameters/buffers, metrics
    (class and parameters) and plain data, for store keys."""
    h = hashlib.blake2b(digest_size=16)
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.nn.Module):
        h.update(f"module:{type(obj).__qualname__}".encode())
        for name, t in list(obj.named_parameters()) + list(obj.named_buffers()):
            h.update(name.encode())
            _feed(h, t)
    elif isinstance(obj, torch.Tensor):
        _feed(h, obj.detach().cpu().numpy())
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"nd:{a.dtype}:{a.shape}".encode())
        h.update(a.tobytes())
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(str(k).encode() + b":")
            _feed(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, list | tuple):
        h.update(b"[")
        for v in obj:
            _feed(h, v)
        h.update(b"]")
    elif hasattr(obj, "get_params"):
        h.update(f"metric:{type(obj).__module__}.{type(obj).__qualname__}".encode())
        _feed(h, {k: repr(v) for k, v in obj.get_params().items()})
    elif isinstance(obj, ReferenceEstimator):
        h.update(repr(obj).encode())
    elif hasattr(obj, "model") and hasattr(obj, "predict"):  # an evalkit ModelWrapper
        h.update(f"wrapper:{type(obj).__qualname__}:{obj.softmax}:{obj.target!r}".encode())
        _feed(h, obj.model)
    else:
        h.update(repr(obj).encode())


class DirectoryStore:
    """Units as files in a directory: ``<key>.npz`` (arrays) written atomically (a temporary
    file renamed into place), so an interrupted run leaves only complete units."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def _file(self, key: str) -> Path:
        return self.path / f"{key}.npz"

    def __contains__(self, key: str) -> bool:
        return self._file(key).exists()

    def get(self, key: str) -> dict[str, Any] | None:
        f = self._file(key)
        if not f.exists():
            return None
        with np.load(f, allow_pickle=False) as z:
            out: dict[str, Any] = {k: z[k] for k in z.files if k != "__meta__"}
            if "__meta__" in z.files:
                out.update(json.loads(str(z["__meta__"])))
        return out

    def put(self, key: str, arrays: Mapping[str, np.ndarray],
            meta: Mapping[str, Any] | None = None) -> None:
        buf = io.BytesIO()
        payload = {k: np.asarray(v) for k, v in arrays.items()}
        if meta:
            payload["__meta__"] = np.asarray(json.dumps(dict(meta)))
        np.savez(buf, **payload)
        fd, tmp = tempfile.mkstemp(dir=self.path, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buf.getvalue())
            os.replace(tmp, self._file(key))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def keys(self) -> list[str]:
        return sorted(p.stem for p in self.path.glob("*.npz"))


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
        A directory (or a :class:`DirectoryStore`) to save units in and resume from; None keeps
        everything in memory.

    ``run()`` returns one :class:`~metaeval.results.MetaEvaluationResult` with a block per
    (dataset, model); ``stats_`` counts the units computed and loaded.
    """

    def __init__(self, meta_evaluation: MetaEvaluation, metrics: Mapping[str, Any],
                 datasets: Mapping[str, Mapping[str, Any]], *,
                 store: str | Path | DirectoryStore | None = None) -> None:
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
        if store is None or isinstance(store, DirectoryStore):
            self.store = store
        else:
            self.store = DirectoryStore(store)
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
        base = fingerprint({"schema": STORE_SCHEMA, "config": me.config(),
                            "x": state.x, "y": state.y_true, "s": state.s, "model": model})
        metric_fp = {n: fingerprint(m) for n, m in self.metrics.items()}

        def key(*labels: Any) -> str:
            return fingerprint([base, *labels])

        unperturbed = self._unit(me, state, ("unperturbed",), key, metric_fp,
                                 lambda todo: me.run_unperturbed(state, todo))
        units = {}
        for test in me.tests:
            for t in range(me.iterations):
                for k in range(me.nr_perturbations):
                    label = (test.name, fingerprint(test.params()), t, k)
                    units[(test.name, t, k)] = self._unit(
                        me, state, label, key, metric_fp,
                        lambda todo, test=test, t=t, k=k: me.run_perturbation(
                            state, todo, test, t, k, unperturbed=unperturbed))
        block = me.assemble(self.metrics, state, unperturbed, units, dataset=dname, model=mname)
        for name, rec in block.metrics.items():
            rec.family = self.families.get(name, rec.family)
        return block

    def _unit(self, me: MetaEvaluation, state: Any, label: tuple, key: Any,
              metric_fp: Mapping[str, str], compute: Any) -> dict[str, Any]:
        """Load a unit's stored parts; compute the metrics that are missing."""
        store = self.store
        unit_key = key("unit", *label)
        have: dict[str, Any] = {}
        scores: dict[str, np.ndarray] = {}
        reasons: dict[str, dict[str, int]] = {}
        if store is not None:
            stored = store.get(unit_key)
            if stored is not None:
                have = stored
            for name in self.metrics:
                s = store.get(key("scores", *label, metric_fp[name]))
                if s is not None:
                    scores[name] = s["scores"]
                    reasons[name] = dict(s.get("nan_reasons", {}))
        todo = {n: m for n, m in self.metrics.items() if n not in scores}
        if todo or not have:
            out = compute(todo if todo else {})
            self.stats_["units_computed"] += 1
            self.stats_["scores_computed"] += len(todo)
            for name in todo:
                scores[name] = out["scores"][name]
                reasons[name] = out["nan_reasons"].get(name, {})
                if store is not None:
                    store.put(key("scores", *label, metric_fp[name]),
                              {"scores": scores[name]}, {"nan_reasons": reasons[name]})
            have = {k: v for k, v in out.items() if k not in ("scores", "nan_reasons")}
            if store is not None:
                arrays = {k: np.asarray(v) for k, v in have.items()
                          if isinstance(v, np.ndarray)}
                meta = {k: v for k, v in have.items() if not isinstance(v, np.ndarray)}
                store.put(unit_key, arrays, meta)
        else:
            self.stats_["units_loaded"] += 1
        self.stats_["scores_loaded"] += len(self.metrics) - len(todo)
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
