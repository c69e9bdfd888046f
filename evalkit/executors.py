"""Executors: where the units of an evaluation run, under one driver.

>>> results = ek.evaluate(metrics, methods, model, x, y, store="runs.sqlite",
...                       executor="ray")                                 # doctest: +SKIP
>>> with ek.RayExecutor(address="auto", num_gpus_per_worker=1) as ray_ex:  # doctest: +SKIP
...     results = ek.evaluate(metrics, methods, model, x, y, executor=ray_ex)

The driver and the executors
----------------------------
Every run of :func:`evalkit.evaluate` goes through one driver,
:meth:`Executor.run_evaluation`: open the store, take the plan, read back the units the store
already holds, hand the others to the executor, commit each unit it finishes, assemble the
:class:`~evalkit.results.Results` and warn about failed cells and undefined scores. An executor
supplies only :meth:`Executor.run_units`: how the pending units (and the explanations they
need) run, reporting each finished or failed unit to the driver's :class:`UnitSink`.

* :class:`LocalExecutor` (``"local"``, the default) runs them in this process, method by
  method and chunk by chunk.
* :class:`RayExecutor` (``"ray"``, optional extra ``pip install xai-evalkit[ray]``) spreads them
  (and the units of :class:`metaeval.MetaEvaluationBenchmark`, through
  :meth:`Executor.imap_unordered`) over the workers of a Ray cluster: an existing one
  (``address=``, or the one this process is already connected to) or a local one it starts for
  the run.

The driver and the executors know an evaluation only through :class:`PlannedEvaluation`
(implemented by :class:`evalkit.evaluate.Evaluation`), so this module sits below
:mod:`evalkit.evaluate` and never imports it.

How a Ray run is organised
--------------------------
The evaluation (model, data, resolved metrics and methods) is shipped once to the cluster's
object store (``ray.put``); each worker process loads it once and keeps it for the run's later
tasks. The work then mirrors the in-process executor step by step, so that the numbers are the
same bit for bit:

1. **Explanations**: one task per method explains the rows of the method's pending units, as the
   in-process executor does (``explain="method"``, the default). The attributions go to the
   object store (owned by the driver; Ray re-runs the task if a worker is lost).
   ``explain="chunk"`` instead explains each chunk inside its own task (more parallel, bounded
   memory; explanations then come from smaller batches, which can change the last bits of
   floating-point results).
2. **Units**: one task per (method, chunk) runs that chunk's units (one per metric) in plan
   order inside one :func:`evalkit.forward_cache`, exactly like the in-process executor, and
   *streams* each finished unit back to the driver as soon as it is done.
3. **The driver writes the store**: each unit is committed to the
   :class:`~evalkit.store.ResultStore` when it arrives. A task whose worker dies (killed, out of
   memory, node lost) is run again (up to ``max_retries`` times) and the units that had already
   arrived are skipped, so nothing finished is lost and nothing is stored twice. Units already in
   the store are never sent to the cluster.

Bit-for-bit equality with the in-process run holds when the workers run the same builds of
torch and evalkit on the same kind of device with the same number of intra-op threads
(``num_cpus_per_worker``, default 1; CPU reductions can round differently with another thread
count): every seed is derived from the evaluation's seed and the metric's or method's name and
each sample's values, never from process state.
"""

from __future__ import annotations

import contextlib
import time
import traceback
import uuid
import warnings
from abc import ABC, abstractmethod
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch

from ._text import end_sentence, join_sentences
from ._validation import EvalkitWarning, UndefinedScoreWarning
from .results import CellError
from .store import ResultStore

if TYPE_CHECKING:
    from .results import Results
    from .store import UnitRecord

__all__ = ["Executor", "LocalExecutor", "PlannedEvaluation", "RayExecutor", "UnitSink",
           "WorkUnit", "as_executor"]

EXPLAIN_MODES = ("method", "chunk")

Cell = tuple[str, str]


@dataclass(frozen=True)
class WorkUnit:
    """One unit of work: ``metric`` on ``method``'s explanations of samples ``start:stop``.

    ``key`` identifies its stored row (configuration hash and data fingerprint, see
    :mod:`evalkit.store`); ``cell_hash`` the (method, metric) configuration alone.
    """

    method: str
    metric: str
    start: int
    stop: int
    key: str
    cell_hash: str


class PlannedEvaluation(Protocol):
    """What the driver and the executors use of an evaluation (see
    :class:`evalkit.evaluate.Evaluation`, which implements it)."""

    #: samples
    n: int
    #: the inputs (their device is where the work runs)
    x: torch.Tensor
    #: ``{name: metric}`` as given (their ``disable_warnings`` silences the NaN warning)
    metrics: Mapping[str, Any]
    #: ``{(method, metric): configuration hash}``, in the order of the results' cells
    cell_hashes: Mapping[Cell, str]
    #: ``{(method, metric): configuration}`` (stored with the cell)
    cell_configs: Mapping[Cell, dict[str, Any]]

    def plan(self) -> list[WorkUnit]:
        """Every unit, method by method, chunk by chunk."""

    def precomputed(self, method: str) -> bool:
        """Whether ``method`` was given as an attribution array (explained on every row)."""

    def explain(self, method: str, rows: torch.Tensor | None = None) -> torch.Tensor:
        """(N, ...) attributions of ``method`` for ``rows`` (NaN elsewhere)."""

    def compute_unit(self, unit: WorkUnit, attributions: torch.Tensor) -> UnitRecord:
        """Run one unit on the method's attributions (all N rows or the unit's)."""

    def assemble(self, records: Sequence[UnitRecord],
                 errors: Mapping[Cell, CellError] | None = None, *,
                 resumed: Mapping[Cell, int] | None = None,
                 explain_timings: Mapping[str, float] | None = None,
                 wall_time: float | None = None, store: str | None = None) -> Results:
        """The results of finished units (any order)."""


class UnitSink:
    """The driver's side of a run: where an executor reports what became of each pending unit.

    Every pending unit ends exactly once, as :meth:`finished` (its record is committed to the
    store) or :meth:`failed`; a unit reported twice (e.g. by a retried task) is ignored.
    A cell's error is the one of its first failing chunk, as in a run chunk by chunk, whatever
    order the failures arrive in.
    """

    def __init__(self, store: ResultStore | None, bar: Any) -> None:
        self.store = store
        self.bar = bar
        self.records: list[UnitRecord] = []
        self.errors: dict[Cell, CellError] = {}
        self.explain_timings: dict[str, float] = {}
        self._done: set[str] = set()
        self._error_at: dict[Cell, int] = {}

    def done(self, unit: WorkUnit) -> bool:
        """Whether ``unit`` has already ended (finished or failed)."""
        return unit.key in self._done

    def cell_failed(self, unit: WorkUnit) -> bool:
        """Whether a unit of ``unit``'s cell has failed (its later units need not run)."""
        return (unit.method, unit.metric) in self.errors

    def finished(self, record: UnitRecord) -> bool:
        """Commit a finished unit; False (and nothing done) if it had already ended."""
        if record.key in self._done:
            return False
        self._done.add(record.key)
        self.records.append(record)
        if self.store is not None:
            self.store.put(record)
        self.bar.update(1)
        return True

    def failed(self, unit: WorkUnit, exc_type: str, message: str, tb: str = "", *,
               explaining: bool = False) -> None:
        """``unit`` raised, or (``explaining``) explaining the rows it needs failed; the
        cell's error then has no sample range."""
        if unit.key in self._done:
            return
        self._done.add(unit.key)
        self.bar.update(1)
        cell = (unit.method, unit.metric)
        if cell not in self._error_at or unit.start < self._error_at[cell]:
            self._error_at[cell] = unit.start
            self.errors[cell] = CellError(unit.method, unit.metric, exc_type, message, tb,
                                          None if explaining else (unit.start, unit.stop))

    def skipped(self, unit: WorkUnit) -> None:
        """``unit`` was not run because its cell had already failed."""
        if unit.key not in self._done:
            self._done.add(unit.key)
            self.bar.update(1)

    def explained(self, method: str, seconds: float) -> None:
        """Time spent explaining ``method`` (summed over the calls)."""
        self.explain_timings[method] = self.explain_timings.get(method, 0.0) + float(seconds)

    def status(self, text: str, *, refresh: bool = False) -> None:
        """What runs now (shown next to the progress bar)."""
        self.bar.set_postfix_str(text, refresh=refresh)


class Executor(ABC):
    """Where the units of :func:`evalkit.evaluate` (and of metaeval's benchmark) run."""

    #: the name :func:`as_executor` knows it by
    name: ClassVar[str] = ""
    #: whether jobs run in this process on the caller's objects (so their side effects are
    #: visible to the caller)
    in_process: ClassVar[bool] = True

    def session(self) -> contextlib.AbstractContextManager[Any]:
        """A context in which several runs share the executor's resources (e.g. one Ray
        cluster for all the units of a benchmark)."""
        return contextlib.nullcontext(self)

    def run_evaluation(self, evaluation: PlannedEvaluation, *,
                       store: str | Path | ResultStore | None = None,
                       progress: bool = True) -> Results:
        """Run every unit of ``evaluation`` that ``store`` does not hold; see
        :func:`evalkit.evaluate`.

        The driver, the same for every executor: open the store and record the cells'
        configurations, take the plan, read back the stored units, :meth:`run_units` the
        others (each is committed as it finishes), assemble the results (units in plan order,
        errors in cell order) and warn about failed cells and undefined scores.
        """
        from tqdm import tqdm

        started = time.perf_counter()
        own_store = isinstance(store, str | Path)
        db: ResultStore | None = ResultStore(store) if own_store else store
        if db is not None and not isinstance(db, ResultStore):
            raise TypeError("`store` must be a file path or an evalkit.store.ResultStore.")
        try:
            units = evaluation.plan()
            order = {u.key: i for i, u in enumerate(units)}
            stored = db.present(u.key for u in units) if db is not None else set()
            if db is not None:
                for cell, h in evaluation.cell_hashes.items():
                    db.put_cell(h, cell[0], cell[1], evaluation.cell_configs[cell])
            resumed_records: list[UnitRecord] = []
            resumed: Counter[Cell] = Counter()
            pending: dict[str, list[WorkUnit]] = {}
            for u in units:
                rec = db.get(u.key) if db is not None and u.key in stored else None
                if rec is not None:
                    resumed_records.append(rec)
                    resumed[u.method, u.metric] += 1
                else:
                    pending.setdefault(u.method, []).append(u)
            bar = tqdm(total=len(units), initial=len(resumed_records), disable=not progress,
                       unit="unit", desc="evaluate", dynamic_ncols=True, leave=True)
            with contextlib.closing(bar):
                sink = UnitSink(db, bar)
                self.run_units(evaluation, pending, sink)
            records = sorted(resumed_records + sink.records, key=lambda r: order[r.key])
            errors = {cell: sink.errors[cell] for cell in evaluation.cell_hashes
                      if cell in sink.errors}
            results = evaluation.assemble(
                records, errors, resumed=dict(resumed), explain_timings=sink.explain_timings,
                wall_time=time.perf_counter() - started,
                store=None if db is None else str(db.path))
        finally:
            if own_store and db is not None:
                db.close()
        _warn_about(evaluation, results)
        return results

    @abstractmethod
    def run_units(self, evaluation: PlannedEvaluation, pending: Mapping[str, list[WorkUnit]],
                  sink: UnitSink) -> None:
        """Explain and run the ``pending`` units (``{method: units in plan order}``; possibly
        empty), reporting every unit to ``sink`` as it finishes or fails (and the time spent
        explaining). Called by :meth:`run_evaluation`, once per run."""

    @abstractmethod
    def imap_unordered(self, fn: Callable[..., Any], shared: Any,
                       items: Sequence[tuple[Any, ...]], *, progress: bool = False,
                       desc: str = "units", device: torch.device | str = "cpu",
                       ) -> Iterator[tuple[int, Any]]:
        """Yield ``(i, fn(shared, *items[i]))`` for every item, in the order they finish.

        ``fn`` must be a module-level function (workers import it by name); ``shared`` is
        shipped to the workers once; ``device`` is where the work runs (a CUDA device makes
        tasks reserve GPUs). An exception raised by ``fn`` is raised here.
        """


def _warn_about(evaluation: PlannedEvaluation, results: Results) -> None:
    """Warn about failed cells and undefined (NaN) scores of metrics that have warnings on."""
    # stacklevel 4: the caller of evaluate() (warn <- _warn_about <- run_evaluation <- evaluate)
    if results.errors:
        # each error is a message of its own: join them as sentences (no ".." or ".).")
        listed = [str(e) for e in list(results.errors.values())[:5]]
        more = None if len(results.errors) <= 5 else f"And {len(results.errors) - 5} more"
        warnings.warn(join_sentences(
            f"{len(results.errors)} of {len(evaluation.cell_hashes)} (method, metric) cells "
            "failed", *listed, more, "See `results.errors`"), EvalkitWarning, stacklevel=4)
    loud = [name for name, m in evaluation.metrics.items() if not m.disable_warnings]
    parts = []
    for (mname, kname), reasons in results.nan_reasons.items():
        if kname not in loud or (mname, kname) in results.errors or not reasons:
            continue
        common = Counter(reasons.values()).most_common(1)[0][0]
        parts.append(f"{mname} x {kname}: {len(reasons)} ({common})")
    if parts:
        shown = "; ".join(parts[:6]) + ("" if len(parts) <= 6 else f"; ... {len(parts) - 6} "
                                        "more cells")
        warnings.warn(f"Undefined (NaN) scores of {evaluation.n} samples: {shown}. See "
                      "`results.nan_reasons`.", UndefinedScoreWarning, stacklevel=4)


class LocalExecutor(Executor):
    """Run everything in this process (the default; ``executor="local"``)."""

    name = "local"
    in_process = True

    def run_units(self, evaluation: PlannedEvaluation, pending: Mapping[str, list[WorkUnit]],
                  sink: UnitSink) -> None:
        for method, units in pending.items():
            self._run_method(evaluation, method, units, sink)

    @staticmethod
    def _run_method(ev: PlannedEvaluation, method: str, units: list[WorkUnit],
                    sink: UnitSink) -> None:
        from .cache import explanation_cache, forward_cache

        by_chunk: dict[tuple[int, int], list[WorkUnit]] = {}
        for u in units:
            by_chunk.setdefault((u.start, u.stop), []).append(u)
        # Rows are explained chunk by chunk, just before the chunk's units (each row once, the
        # result shared by every metric), so a killed run loses at most the explanations and
        # scores of the chunk in flight.
        a: torch.Tensor | None = None
        explained = np.zeros(ev.n, dtype=bool)
        groups = list(by_chunk.items())
        for k, ((start, stop), group) in enumerate(groups):
            need = np.zeros(ev.n, dtype=bool)
            need[start:stop] = True
            need &= ~explained
            if need.any():
                sink.status(f"explaining {method} [{start}:{stop}]", refresh=True)
                t0 = time.perf_counter()
                try:
                    part = ev.explain(method, torch.from_numpy(np.flatnonzero(need)))
                except Exception as exc:
                    tb = traceback.format_exc()
                    for u in (u for _, g in groups[k:] for u in g):
                        sink.failed(u, type(exc).__name__,
                                    f"explaining the method failed: {exc}", tb,
                                    explaining=True)
                    return
                sink.explained(method, time.perf_counter() - t0)
                if a is None:  # the first part (NaN outside its rows), or given attributions
                    a = part
                    explained |= np.ones(ev.n, dtype=bool) if ev.precomputed(method) else need
                else:
                    idx = torch.from_numpy(np.flatnonzero(need)).to(a.device)
                    a[idx] = part[idx]
                    explained |= need
            with forward_cache() as cache:
                for u in group:
                    if sink.cell_failed(u):  # a cell that failed once is not retried
                        sink.skipped(u)
                        continue
                    sink.status(f"{u.method} / {u.metric} [{u.start}:{u.stop}]")
                    try:
                        rec = ev.compute_unit(u, a)
                    except Exception as exc:
                        sink.failed(u, type(exc).__name__, str(exc), traceback.format_exc())
                    else:
                        sink.finished(rec)
                cache.clear()
                explanation_cache(cache).clear()

    def imap_unordered(self, fn: Callable[..., Any], shared: Any,
                       items: Sequence[tuple[Any, ...]], *, progress: bool = False,
                       desc: str = "units", device: torch.device | str = "cpu",
                       ) -> Iterator[tuple[int, Any]]:
        for i, args in enumerate(items):
            yield i, fn(shared, *args)

    def __repr__(self) -> str:
        return "LocalExecutor()"


def as_executor(executor: str | Executor | None) -> Executor:
    """``None``/``"local"`` -> :class:`LocalExecutor`; ``"ray"`` -> :class:`RayExecutor` with
    default settings (a local cluster, or the one this process is connected to); an
    :class:`Executor` is returned as is."""
    if executor is None:
        return LocalExecutor()
    if isinstance(executor, Executor):
        return executor
    if isinstance(executor, str):
        key = executor.strip().lower()
        if key in ("local", "sequential", "in-process"):
            return LocalExecutor()
        if key == "ray":
            return RayExecutor()
        raise ValueError(f"Unknown executor {executor!r}; expected 'local', 'ray' or an "
                         "evalkit.executors.Executor.")
    raise TypeError(f"`executor` must be 'local', 'ray' or an evalkit.executors.Executor; got "
                    f"{type(executor).__name__}.")


# ---------------------------------------------------------------------- Ray
def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "executor='ray' needs Ray, an optional dependency: pip install 'xai-evalkit[ray]' "
            "(or pip install ray)."
        ) from exc
    return ray


# Worker side. Each Ray worker process keeps the payloads it loaded (an evaluation, or a
# benchmark's shared state) by token, so a run's model and data are deserialised once per
# process rather than once per task.
_PAYLOADS: OrderedDict[str, Any] = OrderedDict()
_MAX_PAYLOADS = 2


def _load_payload(box: list[Any]) -> Any:
    token, ref = box
    if token in _PAYLOADS:
        _PAYLOADS.move_to_end(token)
        return _PAYLOADS[token]
    import ray

    obj = ray.get(ref)
    _PAYLOADS[token] = obj
    while len(_PAYLOADS) > _MAX_PAYLOADS:
        _PAYLOADS.popitem(last=False)
    return obj


def _set_threads(threads: int | None) -> None:
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _failure(exc: BaseException) -> tuple[str, str, str]:
    return type(exc).__name__, str(exc), traceback.format_exc()


def _explain_task(box: list[Any], method: str, rows: np.ndarray | None,
                  threads: int | None) -> tuple[tuple[Any, ...], Any]:
    """Explain ``rows`` of ``method`` (Evaluation.explain); returns (status, attributions)."""
    try:
        ev = _load_payload(box)
    except Exception as exc:
        return ("fatal", *_failure(exc)), None
    _set_threads(threads)
    started = time.perf_counter()
    try:
        a = ev.explain(method, None if rows is None else torch.from_numpy(rows))
    except Exception as exc:
        return ("error", *_failure(exc)), None
    elapsed = time.perf_counter() - started
    return ("ok", elapsed), _to_host(a)


def _to_host(a: torch.Tensor) -> Any:
    """NumPy when the dtype allows (read without a copy from the object store), else a tensor."""
    t = a.detach().cpu()
    try:
        return t.numpy()
    except TypeError:  # bfloat16 and friends
        return t


def _rows_tensor(arr: Any, start: int, stop: int, device: torch.device) -> torch.Tensor:
    if isinstance(arr, np.ndarray):
        return torch.from_numpy(np.array(arr[start:stop])).to(device)
    return arr[start:stop].clone().to(device)


def _group_task(box: list[Any], units: list[WorkUnit], attributions: Any,
                threads: int | None) -> Iterator[tuple[Any, ...]]:
    """Run the units of one (method, chunk), streaming one item per unit."""
    try:
        ev = _load_payload(box)
    except Exception as exc:
        yield ("fatal", *_failure(exc))
        return
    _set_threads(threads)
    from .cache import explanation_cache, forward_cache

    start, stop = units[0].start, units[0].stop
    explained = None
    if attributions is None:  # explain="chunk": this task explains its own rows
        t0 = time.perf_counter()
        try:
            a = ev.explain(units[0].method, torch.arange(start, stop))[start:stop]
        except Exception as exc:
            yield ("explain_error", *_failure(exc))
            return
        explained = time.perf_counter() - t0
    else:
        a = _rows_tensor(attributions, start, stop, ev.x.device)
    yield ("explained", explained)
    with forward_cache() as cache:
        for unit in units:
            try:
                rec = ev.compute_unit(unit, a)
            except Exception as exc:
                yield ("error", unit.key, *_failure(exc))
            else:
                yield ("ok", rec)
        cache.clear()
        explanation_cache(cache).clear()


def _map_task(box: list[Any], fn: Callable[..., Any], args: tuple[Any, ...],
              threads: int | None) -> tuple[Any, ...]:
    try:
        shared = _load_payload(box)
    except Exception as exc:
        return ("fatal", *_failure(exc))
    _set_threads(threads)
    try:
        return ("ok", fn(shared, *args))
    except Exception as exc:
        try:
            import pickle

            pickle.dumps(exc)
            carried: BaseException | None = exc
        except Exception:
            carried = None
        return ("raise", *_failure(exc), carried)


# Driver side.
@dataclass
class _Job:
    kind: str  # "explain", "group" or "map"
    method: str = ""
    units: list[Any] = field(default_factory=list)
    rows: np.ndarray | None = None
    index: int = -1
    args: tuple[Any, ...] = ()
    attempts: int = 0
    status: Any = None  # explain: the status ref
    array: Any = None  # explain: the attributions ref
    seen_header: bool = False


class _Fatal(RuntimeError):
    pass


class RayExecutor(Executor):
    """Spread the units of an evaluation over the workers of a Ray cluster.

    Parameters
    ----------
    address:
        The cluster to connect to (``"auto"``, ``"ray://host:10001"``, ...). ``None``: the
        cluster this process is already connected to (``ray.init`` called before), else a local
        one started for the run and shut down after it (or when the ``with`` block of the
        executor ends).
    num_workers:
        The most tasks in flight at once (workers busy at a time); for a local cluster also the
        number of worker processes it gets (``num_workers * num_cpus_per_worker`` CPUs).
        ``None``: as many as the cluster's CPUs (and GPUs, when tasks take GPUs) allow.
    num_cpus_per_worker:
        CPUs each task reserves; also its torch intra-op threads (bit-for-bit equality with an
        in-process run needs the same thread count there).
    num_gpus_per_worker:
        GPUs each task reserves (fractions pack several tasks onto one GPU; Ray sets each
        worker's ``CUDA_VISIBLE_DEVICES``). ``None``: 1 when the model is on CUDA, else 0.
        The evaluation runs on the device of the model as given (a CUDA model must be on
        ``cuda:0``, which is each worker's own GPU).
    max_retries:
        How many times a task whose worker was lost is run again before its units are
        recorded as failed cells (their finished units stay stored either way).
    explain:
        ``"method"`` (default): one task per method explains all its pending rows, as the
        in-process executor does (identical attributions); ``"chunk"``: each (method, chunk)
        task explains its own rows (more parallel; bounded memory).
    init_kwargs:
        Extra arguments for ``ray.init`` (e.g. ``runtime_env``) when this executor connects.

    After a run, ``stats_`` counts tasks submitted, tasks retried, units received and
    duplicates skipped.
    """

    name = "ray"
    in_process = False

    def __init__(
        self,
        address: str | None = None,
        *,
        num_workers: int | None = None,
        num_cpus_per_worker: float = 1,
        num_gpus_per_worker: float | None = None,
        max_retries: int = 3,
        explain: str = "method",
        init_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if address is not None and not isinstance(address, str):
            raise TypeError(f"`address` must be a string or None; got {address!r}.")
        if num_workers is not None and (isinstance(num_workers, bool)
                                        or not isinstance(num_workers, int) or num_workers < 1):
            raise ValueError(f"`num_workers` must be a positive integer or None; got "
                             f"{num_workers!r}.")
        if not isinstance(num_cpus_per_worker, int | float) or num_cpus_per_worker <= 0:
            raise ValueError(f"`num_cpus_per_worker` must be > 0; got {num_cpus_per_worker!r}.")
        if num_gpus_per_worker is not None and (not isinstance(num_gpus_per_worker, int | float)
                                                or num_gpus_per_worker < 0):
            raise ValueError(f"`num_gpus_per_worker` must be >= 0 or None; got "
                             f"{num_gpus_per_worker!r}.")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"`max_retries` must be a non-negative integer; got {max_retries!r}.")
        if explain not in EXPLAIN_MODES:
            raise ValueError(f"`explain` must be one of {EXPLAIN_MODES}; got {explain!r}.")
        self.address = address
        self.num_workers = num_workers
        self.num_cpus_per_worker = num_cpus_per_worker
        self.num_gpus_per_worker = num_gpus_per_worker
        self.max_retries = max_retries
        self.explain = explain
        self.init_kwargs = dict(init_kwargs or {})
        self.stats_: Counter[str] = Counter()
        self._started = False  # this executor started (or connected) the Ray session
        self._held = False  # inside a ``with`` block: keep the session between runs
        self._remote: dict[str, Any] = {}

    def __repr__(self) -> str:
        parts = [f"address={self.address!r}"] if self.address else []
        for key in ("num_workers", "num_gpus_per_worker"):
            if getattr(self, key) is not None:
                parts.append(f"{key}={getattr(self, key)!r}")
        if self.explain != "method":
            parts.append(f"explain={self.explain!r}")
        return f"RayExecutor({', '.join(parts)})"

    # ------------------------------------------------------------------ the Ray session
    def __enter__(self) -> RayExecutor:
        self._connect()
        self._held = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._held = False
        self.close()

    @contextlib.contextmanager
    def session(self) -> Iterator[RayExecutor]:
        """Keep the Ray session between the runs inside the context; it starts (or connects)
        at the first run that needs it, and a cluster this executor started stops at the end
        (unless an enclosing ``with`` block holds it)."""
        if self._held:
            yield self
            return
        self._held = True
        try:
            yield self
        finally:
            self._held = False
            self.close()

    def close(self) -> None:
        """Shut down the Ray session if this executor started it (a cluster it started locally
        stops; a connection it opened is closed)."""
        if self._started:
            ray = _import_ray()
            ray.shutdown()
            self._started = False
            self._remote = {}

    def _connect(self) -> Any:
        ray = _import_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False}
            if self.address is not None:
                kwargs["address"] = self.address
            elif self.num_workers is not None:
                kwargs["num_cpus"] = int(np.ceil(self.num_workers * self.num_cpus_per_worker))
            kwargs.update(self.init_kwargs)
            ray.init(**kwargs)
            self._started = True
            self._remote = {}
        if not self._remote:
            self._remote = {
                "explain": ray.remote(_explain_task),
                "group": ray.remote(_group_task),
                "map": ray.remote(_map_task),
            }
        return ray

    def _release(self) -> None:
        if not self._held:
            self.close()

    def _task_options(self, ray: Any, device: torch.device) -> tuple[dict[str, Any], int]:
        gpus = self.num_gpus_per_worker
        if gpus is None:
            gpus = 1 if device.type == "cuda" else 0
        if device.type == "cuda" and device.index not in (None, 0):
            raise ValueError(
                f"The model is on {device}; each Ray worker sees its own GPU as cuda:0. Put the "
                "model on cuda:0 (the GPU the workers use is chosen by Ray).")
        resources = ray.cluster_resources()
        if gpus and not resources.get("GPU", 0):
            raise ValueError(
                f"num_gpus_per_worker={gpus} but the Ray cluster has no GPUs; start it with GPUs "
                "or pass num_gpus_per_worker=0.")
        if gpus and device.type != "cuda":
            warnings.warn(
                f"Tasks reserve {gpus} GPU(s) each, but the model is on {device}: the work runs "
                "on that device. Move the model to cuda:0 to use the workers' GPUs.",
                EvalkitWarning, stacklevel=4)
        if self.num_workers is not None:
            cap = self.num_workers
        else:  # what the cluster can run at once (more would only wait in Ray's queue)
            cap = int(resources.get("CPU", 1) // self.num_cpus_per_worker)
            if gpus:
                cap = min(cap, int(resources.get("GPU", 0) // gpus))
        return {"num_cpus": self.num_cpus_per_worker, "num_gpus": gpus}, max(1, cap)

    # ------------------------------------------------------------------ generic jobs
    def imap_unordered(self, fn: Callable[..., Any], shared: Any,
                       items: Sequence[tuple[Any, ...]], *, progress: bool = False,
                       desc: str = "units", device: torch.device | str = "cpu",
                       ) -> Iterator[tuple[int, Any]]:
        from tqdm import tqdm

        items = list(items)
        if not items:
            return
        ray = self._connect()
        inflight: dict[Any, _Job] = {}
        try:
            options, cap = self._task_options(ray, torch.device(device))
            threads = max(1, int(self.num_cpus_per_worker))
            box = [uuid.uuid4().hex, ray.put(shared)]
            queue = deque(_Job("map", index=i, args=tuple(a)) for i, a in enumerate(items))
            bar = tqdm(total=len(items), disable=not progress, unit="unit", desc=desc,
                       dynamic_ncols=True)
            with contextlib.closing(bar):
                while queue or inflight:
                    while queue and len(inflight) < cap:
                        job = queue.popleft()
                        ref = self._remote["map"].options(**options, max_retries=0).remote(
                            box, fn, job.args, threads)
                        inflight[ref] = job
                        self.stats_["tasks"] += 1
                    ready, _ = ray.wait(list(inflight), num_returns=1)
                    for ref in ready:
                        job = inflight.pop(ref)
                        try:
                            out = ray.get(ref)
                        except ray.exceptions.RayTaskError:
                            raise
                        except ray.exceptions.RayError as exc:
                            self._retry_or_raise(job, exc, queue)
                            continue
                        if out[0] == "fatal":
                            raise _fatal(out)
                        if out[0] == "raise":
                            _kind, tname, msg, tb, carried = out
                            if carried is not None:
                                _add_note(carried, f"Raised on a Ray worker:\n{tb}")
                                raise carried
                            raise RuntimeError(f"{tname}: {msg}\n\nRaised on a Ray worker:\n{tb}")
                        bar.update(1)
                        self.stats_["units"] += 1
                        yield job.index, out[1]
        finally:
            for ref in inflight:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            self._release()

    def _retry_or_raise(self, job: _Job, exc: BaseException, queue: deque) -> None:
        job.attempts += 1
        if job.attempts > self.max_retries:
            raise RuntimeError(f"A Ray task was lost {job.attempts} times (max_retries="
                               f"{self.max_retries}): {type(exc).__name__}: {exc}") from exc
        self.stats_["retries"] += 1
        queue.appendleft(job)

    # ------------------------------------------------------------------ evaluate()
    def run_units(self, evaluation: PlannedEvaluation, pending: Mapping[str, list[WorkUnit]],
                  sink: UnitSink) -> None:
        self.stats_ = Counter()
        if not any(pending.values()):
            return  # everything was in the store: no cluster needed
        ev = evaluation
        ray = self._connect()
        inflight: dict[Any, _Job] = {}
        try:
            options, cap = self._task_options(ray, ev.x.device)
            threads = max(1, int(self.num_cpus_per_worker))
            box = [uuid.uuid4().hex, ray.put(ev)]
            self.stats_["payload_puts"] += 1
            queue: deque[_Job] = deque()
            groups: dict[str, list[list[WorkUnit]]] = {}
            for mname, mine in pending.items():
                by_chunk: dict[tuple[int, int], list[WorkUnit]] = {}
                for u in mine:
                    by_chunk.setdefault((u.start, u.stop), []).append(u)
                groups[mname] = list(by_chunk.values())
                if self.explain == "method":
                    rows = np.zeros(ev.n, dtype=bool)
                    for u in mine:
                        rows[u.start : u.stop] = True
                    idx = None if rows.all() else np.flatnonzero(rows).astype(np.int64)
                    queue.append(_Job("explain", method=mname, rows=idx))
                else:
                    queue.extend(_Job("group", method=mname, units=g) for g in groups[mname])
            arrays: dict[str, Any] = {}

            def submit(job: _Job) -> None:
                self.stats_["tasks"] += 1
                if job.kind == "explain":
                    status, array = self._remote["explain"].options(
                        **options, num_returns=2, max_retries=self.max_retries).remote(
                        box, job.method, job.rows, threads)
                    job.status, job.array = status, array
                    inflight[status] = job
                else:
                    if all(sink.done(u) for u in job.units):
                        return
                    gen = self._remote["group"].options(**options, max_retries=0).remote(
                        box, job.units, arrays.get(job.method), threads)
                    job.seen_header = False
                    inflight[gen] = job

            while queue or inflight:
                while queue and len(inflight) < cap:
                    submit(queue.popleft())
                if not inflight:
                    continue
                ready, _ = ray.wait(list(inflight), num_returns=1)
                for waitable in ready:
                    job = inflight[waitable]
                    if job.kind == "explain":
                        del inflight[waitable]
                        try:
                            status = ray.get(waitable)
                        except ray.exceptions.RayError as exc:  # retries exhausted
                            for u in pending[job.method]:
                                sink.failed(u, type(exc).__name__,
                                            f"explaining the method failed: {exc}",
                                            explaining=True)
                            continue
                        if status[0] == "fatal":
                            raise _fatal(status)
                        if status[0] == "error":
                            _k, tname, msg, tb = status
                            for u in pending[job.method]:
                                sink.failed(u, tname, f"explaining the method failed: {msg}", tb,
                                            explaining=True)
                            continue
                        sink.explained(job.method, float(status[1]))
                        arrays[job.method] = job.array
                        # the method's chunks go first: a finished explanation is ready work
                        for g in reversed(groups[job.method]):
                            queue.appendleft(_Job("group", method=job.method, units=g))
                        continue
                    # a group: one streamed item
                    try:
                        ref = next(waitable)
                    except StopIteration:
                        del inflight[waitable]
                        continue
                    try:
                        item = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        raise _Fatal(f"A Ray task failed outside evalkit's code: {exc}") from exc
                    except ray.exceptions.RayError as exc:  # the worker (or its node) was lost
                        del inflight[waitable]
                        job.attempts += 1
                        if job.attempts > self.max_retries:
                            for u in job.units:
                                sink.failed(u, type(exc).__name__,
                                            f"the Ray worker running this unit was lost "
                                            f"{job.attempts} times: {exc}")
                        else:
                            self.stats_["retries"] += 1
                            queue.appendleft(job)
                        continue
                    kind = item[0]
                    if kind == "fatal":
                        raise _fatal(item)
                    if kind == "explained":
                        if item[1] is not None:
                            sink.explained(job.method, float(item[1]))
                    elif kind == "explain_error":
                        _k, tname, msg, tb = item
                        for u in job.units:
                            sink.failed(u, tname, f"explaining the method failed: {msg}", tb,
                                        explaining=True)
                    elif kind == "error":
                        _k, key, tname, msg, tb = item
                        u = next(u for u in job.units if u.key == key)
                        sink.failed(u, tname, msg, tb)
                    else:
                        rec = item[1]
                        self.stats_["units"] += 1
                        if not sink.finished(rec):
                            self.stats_["duplicates_skipped"] += 1
                            continue
                        sink.status(f"{rec.method} / {rec.metric} [{rec.start}:{rec.stop}]")
        finally:
            for waitable in inflight:
                with contextlib.suppress(Exception):
                    ray.cancel(waitable, force=True)
            self._release()


def _fatal(item: tuple[Any, ...]) -> _Fatal:
    _k, tname, msg, tb = item[:4]
    return _Fatal(
        f"A Ray worker could not load the model, data and settings shipped to it: {tname}: "
        f"{end_sentence(str(msg))} The workers need evalkit and every module your model, "
        "metrics and explain functions come from (pass "
        "init_kwargs={'runtime_env': {...}} or install them on the cluster).\n\nWorker "
        f"traceback:\n{tb}")


def _add_note(exc: BaseException, note: str) -> None:
    add = getattr(exc, "add_note", None)
    if callable(add):
        add(note)
