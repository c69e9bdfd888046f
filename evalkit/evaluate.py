"""``evaluate()``: every explanation method under every metric, in one call.

>>> results = ek.evaluate(                                             # doctest: +SKIP
...     metrics={"PixelFlipping": ek.metrics.PixelFlipping(features_in_step=32),
...              "RelevanceRank": ek.metrics.RelevanceRankAccuracy(),
...              "MaxSensitivity": ek.metrics.MaxSensitivity(nr_samples=10)},
...     xai_methods={"Saliency": {"reduce_channels": "abs_sum"},
...                  "GradCAM": {"layer": "features.conv3"},
...                  "Random": {}},
...     model=model, x=x, y=y, s=masks, store="results.sqlite")

How it runs
-----------
* **Each method is explained once**, and its attributions are shared by every metric: each
  sample's row is explained once, chunk by chunk, just before the chunk's units. Metrics that
  re-explain (robustness, randomisation, ...: ``Metric.re_explains``) get the method's explain
  function as well.
* **Units of work.** Samples are processed in chunks of ``chunk_size``; one unit is one
  (method, metric, chunk), or one (method, metric) over the whole set for set-level metrics
  (``Metric.set_level``). Because every evalkit metric has per-sample semantics (a sample's
  score does not depend on the other samples of its batch), the chunked run gives the scores of
  an unchunked one. :class:`Evaluation` exposes the plan (:meth:`Evaluation.plan`), the
  explanation step (:meth:`Evaluation.explain`) and the unit (:meth:`Evaluation.compute_unit`)
  so that executors (:mod:`evalkit.executors`) can schedule units: one driver
  (:meth:`evalkit.executors.Executor.run_evaluation`) stores, resumes and assembles, and each
  executor supplies only how the pending units run.
* **Forward passes are shared**: the units of one method and chunk run inside one
  :func:`evalkit.forward_cache`, so removal/insertion curves with the same ordering and
  baseline, and robustness metrics with the same perturbations, reuse each other's work.
* **Crash-safe and resumable** with ``store=``: see :mod:`evalkit.store`.
* **Distributed** with ``executor="ray"`` (or a :class:`evalkit.executors.RayExecutor`): the
  units run on the workers of a Ray cluster with the same results; see
  :mod:`evalkit.executors`.
* **Errors stay in their cell**: a (method, metric) that raises is recorded in
  ``Results.errors`` with its traceback, and the run goes on.
* **Seeds**: each metric runs with a seed derived from ``seed`` and the metric's name (never
  from a global RNG), so results do not depend on the order of the metrics; metrics with a
  ``seed_scope()`` (robustness metrics: their perturbation settings) get one derived from that
  scope instead, so those with the same settings perturb alike and share explanations; stochastic
  registered explainers (``Random``, ``GradientShap``, ...) given no ``seed`` get one derived
  from ``seed`` and the method's name.

Differences from ``quantus.evaluate`` (deviation C21): wrong argument
types raise a TypeError; one method's keyword arguments never leak into another's; a failing
metric is recorded instead of printed and followed by a ``KeyError``; results are per-sample
scores with their configuration, never pre-aggregated.
"""

from __future__ import annotations

import copy
import hashlib
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import _progress, _rng
from ._validation import (
    EvalkitWarning,
    as_tensor,
    check_labels,
    is_numpy_like,
)
from ._version import __version__
from .executors import Executor, LocalExecutor, WorkUnit, as_executor
from .metrics.base import Metric
from .modality import Modality, as_modality
from .models import ModelWrapper, wrap_model
from .results import CellError, Results, UnitDiagnostics, library_versions
from .store import (
    ResultStore,
    UnitRecord,
    canonical,
    data_fingerprint,
    fingerprint,
    model_fingerprint,
)

__all__ = ["Evaluation", "WorkUnit", "evaluate", "explain_methods"]

#: samples per unit of work when ``chunk_size`` is not given
DEFAULT_CHUNK_SIZE = 256
# Metric parameters that do not change scores (left out of configuration hashes).
_NON_SCORING = ("progress", "disable_warnings", "aggregate")
_SEED_MASK = (1 << 63) - 1


class NeedsExplainFunction(ValueError):
    """A re-explaining metric was paired with a method given only as an attribution array."""


class UnknownInputsError(ValueError):
    """A method with per-sample arguments (GroundTruth's masks) was asked to explain inputs
    that are not the evaluation's own (perturbed copies made by a robustness metric): the
    pairing is not applicable, and the evaluation scores that cell NaN with the reason instead
    of failing it."""


# ---------------------------------------------------------------------- explanation methods
class _RowMatched:
    """An explain function whose per-sample keyword arguments (GroundTruth's ``masks``,
    per-sample ``baselines``) follow the inputs it is given.

    Metrics call explain functions on any rows (chunks, the same inputs with other labels,
    randomised models). Each input row is matched to its sample by a hash of its values; rows
    that are not inputs of the evaluation (perturbed copies made by robustness metrics) have no
    per-sample values, which is an error rather than a silent misalignment.
    """

    def __init__(self, name: str, fn: Callable[..., Any], per_sample: dict[str, torch.Tensor],
                 x: torch.Tensor) -> None:
        from .cache import row_hashes

        self.name = name
        self.fn = fn
        self.per_sample = per_sample
        self.dtype = x.dtype
        self.index: dict[bytes, int] = {}
        for i, h in enumerate(row_hashes(x, x.shape[0])):
            self.index.setdefault(h, i)
        self.__name__ = getattr(fn, "__name__", "explain")

    def rows(self, x: Any) -> torch.Tensor:
        from .cache import row_hashes

        t = as_tensor(x, "x")
        hashes = row_hashes(t.to(self.dtype), t.shape[0])
        idx = [self.index.get(h, -1) for h in hashes]
        missing = sum(i < 0 for i in idx)
        if missing:
            raise UnknownInputsError(
                f"{self.name} needs {', '.join(self.per_sample)} for each input, but {missing} "
                f"of {len(idx)} inputs it was asked to explain are not inputs of the evaluation "
                "(perturbed copies, e.g. made by a robustness metric), so their "
                f"{', '.join(self.per_sample)} are unknown."
            )
        return torch.tensor(idx, dtype=torch.long)

    def __call__(self, model: Any, x: Any, y: Any = None, **kwargs: Any) -> Any:
        idx = self.rows(x)
        for key, full in self.per_sample.items():
            kwargs[key] = full[idx.to(full.device)]
        return self.fn(model, x, y, **kwargs)


@dataclass
class _Method:
    name: str
    kind: str  # "registered", "callable" or "array"
    fn: Callable[..., Any] | None
    kwargs: dict[str, Any]
    per_sample: dict[str, torch.Tensor]
    attributions: torch.Tensor | None
    config: dict[str, Any]
    error: str | None = None  # a configuration problem found before running
    _matched: _RowMatched | None = None

    def explain_function(self, x: torch.Tensor) -> tuple[Callable[..., Any], dict[str, Any]]:
        """``(fn, kwargs)`` for metrics: ``fn(model, x, y, **kwargs)``."""
        if self.fn is None:
            raise NeedsExplainFunction(
                f"this metric re-explains inputs, so it needs an explain function; an "
                f"attribution array is not enough for method {self.name!r}. Give the method as "
                "a dict of explain() arguments or as a callable f(model, x, y, **kwargs)."
            )
        if self.per_sample:
            if self._matched is None:
                self._matched = _RowMatched(self.name, self.fn, self.per_sample, x)
            return self._matched, dict(self.kwargs)
        return self.fn, dict(self.kwargs)


def _method_seed(seed: int, name: str) -> int:
    return _rng.derive_seed(seed, "method", name) & _SEED_MASK


def _metric_seed(seed: int, name: str) -> int:
    return _rng.derive_seed(seed, "metric", name) & _SEED_MASK


def seed_label(name: str, metric: Metric) -> str:
    """What a metric's seed derives from: its ``seed_scope()`` where it has one, else its name
    in the evaluation. Metrics with the same scope (robustness metrics with the same
    perturbation settings) get the same seed, so they draw the same perturbations and share
    their explanations through the unit's forward cache (also used by metaeval)."""
    scope = getattr(metric, "seed_scope", None)
    label = scope() if callable(scope) else None
    return name if label is None else f"scope:{label}"


def _resolve_method(
    name: str,
    spec: Any,
    *,
    explain_fn: Callable[..., Any] | None,
    n: int,
    x: torch.Tensor,
    s: torch.Tensor | None,
    seed: int,
    batch_size: int | None,
    modality: Modality | None = None,
) -> _Method:
    from .explain import explain as ek_explain
    from .explain import explainer_info

    if not isinstance(name, str):
        raise TypeError(f"`xai_methods` keys are display names (str); got {name!r}.")
    if isinstance(spec, np.ndarray | torch.Tensor):
        a = as_tensor(spec, f"xai_methods[{name!r}]", device=x.device)
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError(
                f"xai_methods[{name!r}] is an attribution array of shape {tuple(a.shape)}; it "
                f"needs one row per input (N = {n})."
            )
        if not a.is_floating_point():
            a = a.to(torch.float32)
        return _Method(name, "array", None, {}, {}, a, {"kind": "array"})
    if callable(spec) and not isinstance(spec, Mapping):
        return _Method(name, "callable", spec, {}, {}, None,
                       {"kind": "callable", "explain_fn": canonical(spec)})
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"xai_methods[{name!r}] must be a dict of explain() keyword arguments, a callable "
            f"f(model, x, y, **kwargs) or an attribution array; got {type(spec).__name__}."
        )
    kwargs = dict(spec)
    own_fn = kwargs.pop("explain_fn", None)
    if own_fn is not None and not callable(own_fn):
        raise TypeError(f"xai_methods[{name!r}]['explain_fn'] must be callable.")
    fn = own_fn or explain_fn or ek_explain
    if fn is not ek_explain:
        if own_fn is None or "method" in kwargs:  # Quantus-style dispatching explain function
            kwargs.setdefault("method", name)
        return _Method(name, "callable", fn, kwargs, {}, None,
                       {"kind": "callable", "explain_fn": canonical(fn),
                        "kwargs": canonical(kwargs)})

    method = kwargs.pop("method", name)
    info = explainer_info(method)  # unknown names raise here, with suggestions
    kwargs = {"method": info.name, **kwargs}
    error = None
    if info.needs_masks and "masks" not in kwargs and "s" not in kwargs:
        if s is None:
            error = (f"method {name!r} ({info.name}) needs the ground-truth masks: pass `s` to "
                     "evaluate().")
        else:
            kwargs["masks"] = s
    if info.stochastic and "seed" not in kwargs:
        kwargs["seed"] = _method_seed(seed, name)
    if batch_size is not None:
        kwargs.setdefault("batch_size", batch_size)
    per_sample: dict[str, torch.Tensor] = {}
    for key in info.per_sample:
        value = kwargs.get(key)
        if isinstance(value, np.ndarray | torch.Tensor) and value.ndim >= 1 and value.shape[0] == n:
            per_sample[key] = as_tensor(value, key, device=x.device)
            del kwargs[key]
    config = {
        "kind": "registered",
        "method": info.name,
        "kwargs": canonical({k: v for k, v in kwargs.items() if k != "batch_size"}),
        "per_sample": sorted(per_sample),
    }
    if modality is not None and "modality" not in kwargs:
        # an explicit modality (e.g. token ids with their mask token) reaches explain() too;
        # it is part of the evaluation's stored configuration already, not of the method's
        kwargs["modality"] = modality
    return _Method(name, "registered", ek_explain, kwargs, per_sample, None, config, error)


def _normalise_methods(xai_methods: Any) -> dict[str, Any]:
    if isinstance(xai_methods, str):
        return {xai_methods: {}}
    if isinstance(xai_methods, Mapping):
        return dict(xai_methods)
    if isinstance(xai_methods, Sequence):
        if not all(isinstance(m, str) for m in xai_methods):
            raise TypeError("A list of `xai_methods` must hold registered method names (str).")
        return {m: {} for m in xai_methods}
    raise TypeError(
        "`xai_methods` must be a dict {name: explain kwargs | callable | attribution array} or "
        f"a list of method names; got {type(xai_methods).__name__}."
    )


def _normalise_metrics(metrics: Any) -> dict[str, Metric]:
    from . import metrics as ek_metrics

    if isinstance(metrics, Metric):
        metrics = {type(metrics).__name__: metrics}
    elif isinstance(metrics, str):
        metrics = {metrics: metrics}
    elif isinstance(metrics, Sequence) and not isinstance(metrics, Mapping):
        items = list(metrics)
        metrics = {}
        for m in items:
            key = m if isinstance(m, str) else type(m).__name__
            metrics[key] = m
    if not isinstance(metrics, Mapping):
        raise TypeError(f"`metrics` must be a dict {{name: Metric}}; got {type(metrics).__name__}.")
    out: dict[str, Metric] = {}
    for key, metric in metrics.items():
        if not isinstance(key, str):
            raise TypeError(f"`metrics` keys are display names (str); got {key!r}.")
        if isinstance(metric, str):
            metric = ek_metrics.get(metric)()
        elif isinstance(metric, type) and issubclass(metric, Metric):
            metric = metric()
        if not isinstance(metric, Metric):
            raise TypeError(
                f"metrics[{key!r}] must be an evalkit Metric (e.g. ek.metrics.PixelFlipping()); "
                f"got {type(metric).__name__}."
            )
        out[key] = metric
    if not out:
        raise ValueError("`metrics` is empty.")
    return out


def _run_metric_clone(metric: Metric, seed: int) -> Metric:
    """A copy of ``metric`` with the evaluation's seed, per-sample output and no own warnings
    or progress bars (evaluate reports both). The caller's metric is never modified."""
    wanted = {"seed": seed, "aggregate": None, "progress": False, "disable_warnings": True}
    params = metric.get_params()
    try:
        return metric.clone().set_params(**{k: v for k, v in wanted.items() if k in params})
    except (TypeError, ValueError):  # a metric whose parameters do not round-trip
        clone = copy.deepcopy(metric)
        for k, v in wanted.items():
            setattr(clone, k, v)
        return clone


def _metric_config(metric: Metric) -> dict[str, Any]:
    params = {k: v for k, v in metric.get_params().items() if k not in _NON_SCORING}
    cls = type(metric)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "params": canonical(params)}


class Evaluation:
    """A planned evaluation: resolved metrics and methods, units of work and their keys.

    :func:`evaluate` builds one and hands it to an executor's driver
    (:meth:`evalkit.executors.Executor.run_evaluation`; :meth:`run` in this process), which
    takes :meth:`plan`, reads back stored units, lets the executor compute each method's
    attributions with :meth:`explain` (for the rows of the units it runs) and the units with
    :meth:`compute_unit` (anywhere the model and data are available; units of one method and
    chunk share forward passes inside one :func:`evalkit.forward_cache`), commits them to a
    :class:`~evalkit.store.ResultStore` and builds the :class:`~evalkit.results.Results` with
    :meth:`assemble`. It implements :class:`evalkit.executors.PlannedEvaluation`.

    The arguments are those of :func:`evaluate`.
    """

    def __init__(
        self,
        metrics: Mapping[str, Metric] | Sequence[Metric],
        xai_methods: Mapping[str, Any] | Sequence[str],
        model: Any,
        x: Any,
        y: Any,
        s: Any = None,
        *,
        explain_fn: Callable[..., Any] | None = None,
        seed: int | None = 0,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        chunk_size: int | None = None,
        modality: Modality | str | None = None,
        target: object = None,
    ) -> None:
        if explain_fn is not None and not callable(explain_fn):
            raise TypeError("`explain_fn` must be callable: f(model, x, y, **kwargs).")
        if chunk_size is None:
            chunk_size = DEFAULT_CHUNK_SIZE
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer) \
                or chunk_size < 1:
            raise ValueError(f"`chunk_size` must be a positive integer; got {chunk_size!r}.")
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
            raise ValueError(
                f"`batch_size` must be a positive integer or None; got {batch_size!r}.")
        self.seed = _rng.resolve_seed(seed)
        self.batch_size = batch_size
        self.device = device
        self.chunk_size = int(chunk_size)
        if target is not None:
            if model is None:
                raise ValueError("`target` says which output of the model is scored; there is "
                                 "no model.")
            # the wrapper carries the target to every metric and explainer, and into the model
            # fingerprint of every stored unit
            model = wrap_model(model, target=target, device=device)
        self.model = model
        self.metrics = _normalise_metrics(metrics)
        methods = _normalise_methods(xai_methods)
        if not methods:
            raise ValueError("`xai_methods` is empty.")

        self.wrapper: ModelWrapper | None = None
        #: what the inputs are (given, or inferred from x), passed to every metric call
        self.modality = as_modality(modality, x)
        if model is not None:
            self.wrapper = wrap_model(model, device=device)
            xt = self.wrapper.prepare(x, self.modality)
        else:
            xt = as_tensor(x, "x", device=device)
        self.x = self.modality.check(
            xt, dtype=None if self.wrapper is None else self.wrapper.dtype)
        self.n = int(self.x.shape[0])
        self.y = None if y is None else check_labels(as_tensor(y, "y", device=self.x.device),
                                                     self.n)
        self.s: torch.Tensor | None = None
        if s is not None:
            st = as_tensor(s, "s", device=self.x.device)
            if st.ndim == 0 or st.shape[0] != self.n:
                raise ValueError(f"`s` needs one mask per input (N = {self.n}); got shape "
                                 f"{tuple(st.shape)}.")
            self.s = st
        self.numpy_in = is_numpy_like(x)

        self.seeds = {name: _metric_seed(self.seed, seed_label(name, m))
                      for name, m in self.metrics.items()}
        self.run_metrics = {name: _run_metric_clone(m, self.seeds[name])
                            for name, m in self.metrics.items()}
        self.methods: dict[str, _Method] = {
            name: _resolve_method(name, spec, explain_fn=explain_fn, n=self.n, x=self.x, s=self.s,
                                  seed=self.seed, batch_size=batch_size,
                                  modality=self.modality if modality is not None else None)
            for name, spec in methods.items()
        }

        self.model_fingerprint = model_fingerprint(model)
        base = {
            "model": self.model_fingerprint,
            "device": self.x.device.type,
            "dtype": str(self.x.dtype),
            "evalkit": __version__,
        }
        if modality is not None:  # an explicit modality is part of what the scores mean
            base["modality"] = repr(self.modality)
        self.cell_configs: dict[tuple[str, str], dict[str, Any]] = {}
        self.cell_hashes: dict[tuple[str, str], str] = {}
        for mname, method in self.methods.items():
            for kname, metric in self.run_metrics.items():
                cfg = {**base, "method": method.config, "metric": _metric_config(metric)}
                self.cell_configs[mname, kname] = cfg
                self.cell_hashes[mname, kname] = fingerprint(cfg)
        self.chunks = [(i, min(i + self.chunk_size, self.n))
                       for i in range(0, self.n, self.chunk_size)]
        self._data_fp: dict[tuple[int, int], str] = {}

    # ------------------------------------------------------------------ planning
    def _chunk_fingerprint(self, method: str, start: int, stop: int) -> str:
        if (start, stop) not in self._data_fp:
            sl = slice(start, stop)
            self._data_fp[start, stop] = data_fingerprint(
                self.x[sl], None if self.y is None else self.y[sl],
                None if self.s is None else self.s[sl])
        fp = self._data_fp[start, stop]
        a = self.methods[method].attributions
        if a is not None:  # a method given as an array: its rows are data too
            fp = hashlib.blake2b((fp + data_fingerprint(a[start:stop])).encode(),
                                 digest_size=16).hexdigest()
        return fp

    def unit_key(self, method: str, metric: str, start: int, stop: int) -> str:
        """The store key of a unit (see :mod:`evalkit.store`)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(self.cell_hashes[method, metric].encode())
        h.update(self._chunk_fingerprint(method, start, stop).encode())
        h.update(f":{stop - start}".encode())
        return h.hexdigest()

    def plan(self) -> list[WorkUnit]:
        """Every unit, method by method; within a method chunk by chunk (so units sharing
        forward passes are adjacent), set-level metrics last on the whole set."""
        units = []
        for mname in self.methods:
            for start, stop in self.chunks:
                for kname, metric in self.run_metrics.items():
                    if not metric.set_level:
                        units.append(WorkUnit(mname, kname, start, stop,
                                              self.unit_key(mname, kname, start, stop),
                                              self.cell_hashes[mname, kname]))
            for kname, metric in self.run_metrics.items():
                if metric.set_level:
                    units.append(WorkUnit(mname, kname, 0, self.n,
                                          self.unit_key(mname, kname, 0, self.n),
                                          self.cell_hashes[mname, kname]))
        return units

    # ------------------------------------------------------------------ work
    def precomputed(self, method: str) -> bool:
        """Whether ``method`` was given as an attribution array (:meth:`explain` then returns
        every row, whatever rows are asked for)."""
        return self.methods[method].attributions is not None

    def explain(self, method: str, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Attributions of ``method`` for ``rows`` (sample indices; None: all), as an (N, ...)
        tensor on the model's device; rows not asked for are NaN. A method given as an array
        returns it."""
        m = self.methods[method]
        if m.attributions is not None:
            return m.attributions
        if m.error is not None:
            raise ValueError(m.error)
        fn, kwargs = m.explain_function(self.x)
        if rows is None or len(rows) == self.n:
            xs, ys, rows = self.x, self.y, None
        else:
            rows = torch.as_tensor(rows, dtype=torch.long, device=self.x.device)
            xs = self.x[rows]
            ys = None if self.y is None else self.y[rows]
        out = fn(self.model, xs, ys, **kwargs)
        a = as_tensor(out, f"explanation of {method!r}", device=self.x.device)
        if a.ndim == 0 or a.shape[0] != xs.shape[0]:
            raise RuntimeError(
                f"The explain function of {method!r} returned shape {tuple(a.shape)} for "
                f"{xs.shape[0]} inputs; it must return one attribution per input."
            )
        if not a.is_floating_point():
            a = a.to(torch.float32)
        if rows is None:
            return a
        full = torch.full((self.n, *a.shape[1:]), float("nan"), dtype=a.dtype, device=a.device)
        full[rows] = a
        return full

    def compute_unit(self, unit: WorkUnit, attributions: torch.Tensor) -> UnitRecord:
        """Run one unit; ``attributions`` holds the method's (N, ...) explanations (at least
        the unit's rows), or only the unit's ``stop - start`` rows. Raises what the metric
        raises."""
        metric = self.run_metrics[unit.metric]
        method = self.methods[unit.method]
        sl = slice(unit.start, unit.stop)
        rows = attributions.shape[0] if attributions.ndim else -1
        if rows != self.n:
            if rows != unit.stop - unit.start:
                raise ValueError(
                    f"`attributions` must have the evaluation's N = {self.n} rows or the unit's "
                    f"{unit.stop - unit.start}; got shape {tuple(attributions.shape)}.")
            attributions = attributions.to(self.x.device)
            sl_a = slice(0, unit.stop - unit.start)
        else:
            sl_a = sl
        kwargs: dict[str, Any] = {"s": None if self.s is None else self.s[sl],
                                  "batch_size": self.batch_size, "device": self.device,
                                  "modality": self.modality}
        # Completeness reads the explainer's baseline from its explain arguments
        if metric.re_explains or (getattr(metric, "uses_explain_kwargs", False)
                                  and method.fn is not None):
            fn, ekw = method.explain_function(self.x)
            kwargs["explain_fn"] = fn
            kwargs["explain_kwargs"] = ekw
        started = time.perf_counter()
        try:
            metric(self.model, self.x[sl], None if self.y is None else self.y[sl],
                   attributions[sl_a], **kwargs)
        except UnknownInputsError as exc:
            # e.g. GroundTruth under MaxSensitivity: its masks exist for the evaluation's
            # inputs only, so the pairing is undefined, not broken
            n_unit = unit.stop - unit.start
            return UnitRecord(
                key=unit.key, cell_hash=unit.cell_hash, method=unit.method,
                metric=unit.metric, start=unit.start, stop=unit.stop,
                scores=np.full(n_unit, np.nan),
                nan_reasons=dict.fromkeys(range(n_unit), f"not applicable: {exc}"),
                curves=None, curve_x=None, seed=None,
                elapsed=time.perf_counter() - started)
        elapsed = time.perf_counter() - started
        return UnitRecord(
            key=unit.key, cell_hash=unit.cell_hash, method=unit.method, metric=unit.metric,
            start=unit.start, stop=unit.stop, scores=np.array(metric.scores_, dtype=np.float64),
            nan_reasons=dict(metric.nan_reasons_),
            curves=None if metric.curves_ is None else np.array(metric.curves_),
            curve_x=None if metric.curve_x_ is None else np.array(metric.curve_x_),
            seed=metric.seed_, elapsed=elapsed,
            diagnostics={k: v for k, v in metric.diagnostics_.items()
                         if k not in metric.unstored_diagnostics_},
            per_sample_diagnostics=frozenset(metric.per_sample_diagnostics_),
        )

    # ------------------------------------------------------------------ results
    def metric_info(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name, metric in self.run_metrics.items():
            cls = type(metric)
            params = {k: v for k, v in metric.get_params().items() if k not in _NON_SCORING}
            meta = metric.metadata()  # the instance's own values, derived from its parameters
            out[name] = {
                "class": f"{cls.__module__}.{cls.__qualname__}",
                "family": meta["family"],
                "higher_is_better": meta["higher_is_better"],
                "set_level": meta["set_level"],
                "re_explains": meta["re_explains"],
                "stochastic": meta["stochastic"],
                "paper": meta["paper"],
                "params": canonical(params),
                "repr": repr(self.metrics[name]),
                "seed": self.seeds[name],
            }
        return out

    def method_info(self) -> dict[str, dict[str, Any]]:
        return {name: dict(m.config) for name, m in self.methods.items()}

    def assemble(
        self,
        records: Sequence[UnitRecord],
        errors: Mapping[tuple[str, str], CellError] | None = None,
        *,
        resumed: Mapping[tuple[str, str], int] | None = None,
        explain_timings: Mapping[str, float] | None = None,
        wall_time: float | None = None,
        store: str | None = None,
    ) -> Results:
        """Build :class:`~evalkit.results.Results` from finished units (any order)."""
        errors = dict(errors or {})
        scores = {cell: np.full(self.n, np.nan) for cell in self.cell_hashes}
        reasons: dict[tuple[str, str], dict[int, str]] = {cell: {} for cell in self.cell_hashes}
        curves: dict[tuple[str, str], np.ndarray] = {}
        curve_x: dict[tuple[str, str], np.ndarray] = {}
        diagnostics: dict[tuple[str, str], list[UnitDiagnostics]] = {}
        timings: dict[tuple[str, str], float] = dict.fromkeys(self.cell_hashes, 0.0)
        covered = {cell: np.zeros(self.n, dtype=bool) for cell in self.cell_hashes}
        for r in records:
            cell = (r.method, r.metric)
            if cell in errors:
                continue
            scores[cell][r.start : r.stop] = r.scores
            covered[cell][r.start : r.stop] = True
            for i, reason in r.nan_reasons.items():
                reasons[cell][r.start + int(i)] = reason
            timings[cell] += float(r.elapsed)
            if r.diagnostics:
                diagnostics.setdefault(cell, []).append(UnitDiagnostics(
                    r.start, r.stop, dict(r.diagnostics), frozenset(r.per_sample_diagnostics)))
            if r.curves is not None:
                c = np.asarray(r.curves, dtype=np.float64)
                c = c.reshape(c.shape[0], -1) if c.ndim == 1 else c
                have = curves.get(cell)
                width = c.shape[1] if have is None else max(have.shape[1], c.shape[1])
                if have is None or have.shape[1] < width:
                    grown = np.full((self.n, width), np.nan)
                    if have is not None:
                        grown[:, : have.shape[1]] = have
                    curves[cell] = have = grown
                have[r.start : r.stop, : c.shape[1]] = c
                if r.curve_x is not None and (cell not in curve_x
                                              or len(r.curve_x) > len(curve_x[cell])):
                    curve_x[cell] = np.asarray(r.curve_x)
        for cell, _err in errors.items():
            scores[cell][:] = np.nan
            reasons[cell] = {}
            curves.pop(cell, None)
            curve_x.pop(cell, None)
            diagnostics.pop(cell, None)
        for cell, cov in covered.items():
            if cell not in errors:
                for i in np.flatnonzero(~cov):
                    reasons[cell].setdefault(int(i), "not computed")
        return Results(
            methods=list(self.methods), metrics=list(self.metrics), n=self.n, scores=scores,
            nan_reasons=reasons, curves=curves, curve_x=curve_x, errors=errors,
            diagnostics=diagnostics,
            metric_info=self.metric_info(), method_info=self.method_info(), seed=self.seed,
            seeds=self.seeds, timings=timings, explain_timings=dict(explain_timings or {}),
            config_hashes=self.cell_hashes, resumed=dict(resumed or {}),
            versions=library_versions(), wall_time=wall_time, store=store,
            extra={"chunk_size": self.chunk_size,
                   # inferred or given: how the features were grouped, removed and plotted
                   "modality": repr(self.modality),
                   "data_fingerprint": data_fingerprint(self.x, self.y, self.s),
                   "model_fingerprint": self.model_fingerprint},
            source=self,  # what plot("explanations") needs: model, x, y, s and the methods
        )

    # ------------------------------------------------------------------ running
    def run(self, *, store: str | Path | ResultStore | None = None,
            progress: bool = True) -> Results:
        """Run every unit not already in ``store`` in this process (committing each as it
        finishes) and return the results: :meth:`evalkit.executors.Executor.run_evaluation`
        with a :class:`~evalkit.executors.LocalExecutor`. See :func:`evaluate`."""
        return LocalExecutor().run_evaluation(self, store=store, progress=progress)


def evaluate(
    metrics: Mapping[str, Metric] | Sequence[Metric],
    xai_methods: Mapping[str, Any] | Sequence[str],
    model: Any,
    x: Any,
    y: Any,
    s: Any = None,
    *,
    explain_fn: Callable[..., Any] | None = None,
    seed: int | None = 0,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    progress: bool | None = None,
    store: str | Path | ResultStore | None = None,
    chunk_size: int | None = None,
    executor: str | Executor | None = None,
    modality: Modality | str | None = None,
    target: object = None,
) -> Results:
    """Score every explanation method with every metric.

    Parameters
    ----------
    metrics:
        ``{display name: Metric}`` (a list of metrics is named by class). The metrics are not
        modified: each runs as a copy with the evaluation's seed.
    xai_methods:
        ``{display name: spec}``, where a spec is

        * a dict of :func:`evalkit.explain` keyword arguments: the registered method is the
          dict's ``"method"`` entry, else the display name (``{"GradCAM++": {"method":
          "GradCAMPlusPlus", "layer": "features.conv3"}}``). Methods that need masks
          (``GroundTruth``) receive ``s``; stochastic ones get a derived ``seed`` unless given.
          An ``"explain_fn"`` entry replaces :func:`evalkit.explain` for this method;
        * a callable ``f(model, x, y, **kwargs)`` returning attributions (tensors in, NumPy or
          torch out);
        * a precomputed attribution array (N, ...). Metrics that re-explain (robustness,
          randomisation) cannot use an array alone; their cells record an error saying so.

        A list of registered names means default arguments for each.
    model:
        A ``torch.nn.Module``, a callable, or a :class:`~evalkit.models.ModelWrapper`.
    x, y, s:
        Inputs (N, ...), labels (N,) and optional ground-truth masks (for localisation metrics
        and the GroundTruth control). NumPy or torch.
    explain_fn:
        An explain function used for dict specs instead of :func:`evalkit.explain`; it is
        called as ``explain_fn(model, x, y, method=<name>, **spec)`` (Quantus' convention).
    seed:
        Every metric runs with ``derive_seed(seed, metric name)``, or with one derived from its
        ``seed_scope()`` where it has one (recorded in ``Results.seeds``); ``None`` draws fresh
        entropy once (recorded in ``Results.seed``).
    batch_size:
        Inputs per forward/explain call (default: from a memory budget). Does not change
        results.
    device:
        Where model-free work runs; for torch models it must be the model's device.
    progress:
        Show a progress bar over the units of work; default (None): where the run is
        interactive (stderr is a terminal, or a Jupyter kernel). Before the run, a metric
        whose forward rows are estimated to be very many (its
        :meth:`~evalkit.metrics.Metric.estimated_forward_rows` times the samples and methods)
        warns with the setting to change (:class:`evalkit._progress.CostWarning`; its
        ``disable_warnings=True`` silences it).
    store:
        A path to an SQLite file (or a :class:`~evalkit.store.ResultStore`): every finished
        unit is committed as it completes, and units already stored under the same
        configuration hash are read back instead of computed (see :mod:`evalkit.store`).
    chunk_size:
        Samples per unit of work (default 256): what a killed run can lose, and the size of
        each metric call. Does not change results; a resumed run finds its stored units only
        with the same ``chunk_size``.
    executor:
        Where the units run: ``None``/``"local"`` in this process; ``"ray"`` (optional extra
        ``ray``) or an :class:`evalkit.executors.RayExecutor` on the workers of a Ray cluster,
        with the same results bit for bit and the same ``store`` semantics (see
        :mod:`evalkit.executors`).
    modality:
        What ``x`` is (``"image"``, ``"series"``, ``"tabular"``, ``"tokens"`` or a
        :class:`~evalkit.modality.Modality`); default: inferred from its shape and dtype
        (integer (N, L) inputs are token ids). Passed to every metric; an explicit one is part
        of the stored configuration.
    target:
        Which output every metric and explainer scores (:mod:`evalkit.models.targets`: e.g.
        ``SegmentationTarget(region="predicted")``, ``SimilarityTarget(reference)``, a callable
        ``(outputs, y) -> (N,)``); default the wrapper's own (the class logit for a plain
        module). The model is then wrapped with it (``wrap_model(model, target=target)``), so
        explain callables receive that wrapper (its ``.model`` is yours). The target is part
        of the model fingerprint of every stored unit: another target or reference never reads
        back results stored under this one.

    Returns
    -------
    :class:`~evalkit.results.Results`
    """
    evaluation = Evaluation(metrics, xai_methods, model, x, y, s, explain_fn=explain_fn, seed=seed,
                            batch_size=batch_size, device=device, chunk_size=chunk_size,
                            modality=modality, target=target)
    _warn_about_cost(evaluation)
    return as_executor(executor).run_evaluation(evaluation, store=store,
                                                progress=_progress.resolve(progress))


def _warn_about_cost(evaluation: Evaluation) -> None:
    """Warn before the run about each metric estimated to need very many forward rows (the
    metrics that run are copies without warnings: the user's metric decides)."""
    shape = tuple(evaluation.x.shape)
    n_methods = len(evaluation.methods)
    for name, metric in evaluation.metrics.items():
        if metric.disable_warnings:
            continue
        try:
            estimate = metric.estimated_forward_rows(shape)
        except Exception:  # an estimate must never stop a run
            continue
        label = name if name == type(metric).__name__ else f"{name} ({type(metric).__name__})"
        _progress.warn_if_costly(label, estimate, evaluation.n, shape, runs=n_methods,
                                 what=f" for {n_methods} method{'s' * (n_methods != 1)}",
                                 stacklevel=4)


def explain_methods(
    xai_methods: Mapping[str, Any] | Sequence[str],
    model: Any,
    x: Any,
    y: Any,
    s: Any = None,
    *,
    explain_fn: Callable[..., Any] | None = None,
    seed: int | None = 0,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    target: object = None,
) -> dict[str, np.ndarray]:
    """The attributions :func:`evaluate` would compute for each method (same seeds, same
    ``target``), as NumPy arrays; e.g. to draw a few of them with
    :func:`evalkit.plotting.plot_explanations`. Methods that fail are left out with an
    :class:`~evalkit.EvalkitWarning`."""
    from .metrics.complexity import Sparseness

    ev = Evaluation({"_": Sparseness()}, xai_methods, model, x, y, s, explain_fn=explain_fn,
                    seed=seed, batch_size=batch_size, device=device, target=target)
    out = {}
    for name in ev.methods:
        try:
            out[name] = ev.explain(name).detach().cpu().numpy()
        except Exception as exc:
            warnings.warn(f"Explaining {name!r} failed: {type(exc).__name__}: {exc}",
                          EvalkitWarning, stacklevel=2)
    return out
