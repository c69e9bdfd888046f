"""The result of :func:`evalkit.evaluate`: per-sample scores with everything needed to trust
and reproduce them.

>>> results = ek.evaluate(metrics, methods, model, x, y, s=masks)      # doctest: +SKIP
>>> results.to_frame()          # one row per (method, metric, sample)   # doctest: +SKIP
>>> results.summary()           # mean, std, sem, n_valid, n_nan per cell # doctest: +SKIP
>>> results.leaderboard()       # direction-aware ranks with bootstrap CIs # doctest: +SKIP
>>> results.plot("radar")       # a matplotlib Figure                      # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import json
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .leaderboard import Leaderboard

__all__ = ["CellError", "Results", "library_versions"]

Cell = tuple[str, str]


@dataclass(frozen=True)
class CellError:
    """Why one (method, metric) cell has no scores: the exception and its traceback.

    ``samples`` is the (start, stop) range of the unit that failed (None when the method's
    explanation failed before any unit ran).
    """

    method: str
    metric: str
    type: str
    message: str
    traceback: str = ""
    samples: tuple[int, int] | None = None

    def __str__(self) -> str:
        where = "" if self.samples is None else f" (samples {self.samples[0]}:{self.samples[1]})"
        return f"{self.method} x {self.metric}{where}: {self.type}: {self.message}"


def library_versions() -> dict[str, str]:
    """Versions of evalkit and the libraries that determine its numbers."""
    import torch

    from ._version import __version__

    out = {"evalkit": __version__, "torch": torch.__version__, "numpy": np.__version__,
           "pandas": pd.__version__, "python": platform.python_version()}
    try:
        import captum

        out["captum"] = captum.__version__
    except Exception:  # captum is a dependency, but a broken install must not lose results
        out["captum"] = "unavailable"
    import importlib.metadata as md

    # the other libraries whose code computes numbers (superpixels, progress and plots do not
    # change scores, but a report names them all)
    for dist in ("scipy", "scikit-image", "matplotlib", "tqdm"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


@dataclass(frozen=True)
class UnitDiagnostics:
    """What one unit's metric recorded besides its scores, for samples ``start:stop``;
    ``per_sample`` names the values with one entry per sample of the unit."""

    start: int
    stop: int
    values: Mapping[str, Any]
    per_sample: frozenset[str] = frozenset()


class Results:
    """Per-sample scores of every (method, metric) cell of an evaluation.

    Attributes
    ----------
    methods, metrics:
        Display names, in the order given to :func:`~evalkit.evaluate`.
    n:
        Number of samples.
    scores:
        ``{(method, metric): ndarray (n,)}``; NaN where undefined (see ``nan_reasons``) and for
        failed cells (see ``errors``).
    nan_reasons:
        ``{(method, metric): {sample: reason}}``.
    curves, curve_x:
        ``{(method, metric): ndarray (n, T)}`` and the curves' x-axis (T,), for metrics that
        record curves (removal/insertion curves, ...).
    diagnostics:
        ``{(method, metric): [UnitDiagnostics, ...]}``: what each unit's metric recorded
        besides its scores (``MetricBatch.record``); read them with :meth:`diagnostic`.
    errors:
        ``{(method, metric): CellError}`` for cells that failed; the other cells are complete.
    metric_info:
        ``{metric: {...}}``: class, family, direction (``higher_is_better``), ``set_level``,
        ``re_explains``, the fully resolved parameters (JSON-serialisable), the metric's repr
        and the seed it ran with.
    method_info:
        ``{method: {...}}``: how the method was given (``"registered"``, ``"callable"`` or
        ``"array"``), the registered method and its keyword arguments, the explain function.
    seed, seeds:
        The evaluation's seed and each metric's derived seed.
    timings, explain_timings:
        Seconds per cell (summed over its units, including units read from a store, which keep
        the time they took when computed) and seconds to explain each method in this run.
    config_hashes:
        ``{(method, metric): hash}``: what the stored rows of each cell are keyed by (see
        :mod:`evalkit.store`).
    resumed:
        ``{(method, metric): units}`` read from the store instead of computed.
    versions:
        Library versions (:func:`library_versions`).
    wall_time:
        Seconds the evaluation took.
    source:
        The evaluation that computed these results (its model, inputs, labels, masks and
        methods; a reference, not a copy), so that ``plot("explanations")`` can show the
        explanations it scored without being given ``x`` and the attributions. None for results
        built with :meth:`from_scores` or read from JSON.
    """

    def __init__(
        self,
        *,
        methods: Iterable[str],
        metrics: Iterable[str],
        n: int,
        scores: Mapping[Cell, np.ndarray],
        nan_reasons: Mapping[Cell, Mapping[int, str]] | None = None,
        curves: Mapping[Cell, np.ndarray] | None = None,
        curve_x: Mapping[Cell, np.ndarray] | None = None,
        diagnostics: Mapping[Cell, Sequence[UnitDiagnostics]] | None = None,
        errors: Mapping[Cell, CellError] | None = None,
        metric_info: Mapping[str, Mapping[str, Any]] | None = None,
        method_info: Mapping[str, Mapping[str, Any]] | None = None,
        seed: int | None = None,
        seeds: Mapping[str, int] | None = None,
        timings: Mapping[Cell, float] | None = None,
        explain_timings: Mapping[str, float] | None = None,
        config_hashes: Mapping[Cell, str] | None = None,
        resumed: Mapping[Cell, int] | None = None,
        versions: Mapping[str, str] | None = None,
        wall_time: float | None = None,
        store: str | None = None,
        extra: Mapping[str, Any] | None = None,
        source: Any = None,
    ) -> None:
        self.source = source
        self.methods = list(methods)
        self.metrics = list(metrics)
        self.n = int(n)
        self.scores = {k: np.asarray(v, dtype=np.float64) for k, v in scores.items()}
        for (method, metric), v in self.scores.items():
            if v.shape != (self.n,):
                raise ValueError(
                    f"scores[{method!r}, {metric!r}] has shape {v.shape}; expected ({self.n},)."
                )
        for method in self.methods:
            for metric in self.metrics:
                self.scores.setdefault((method, metric), np.full(self.n, np.nan))
        self.nan_reasons = {k: dict(v) for k, v in (nan_reasons or {}).items()}
        self.curves = dict(curves or {})
        self.curve_x = dict(curve_x or {})
        self.diagnostics = {k: sorted(v, key=lambda u: u.start)
                            for k, v in (diagnostics or {}).items()}
        self.errors = dict(errors or {})
        self.metric_info = {k: dict(v) for k, v in (metric_info or {}).items()}
        for metric in self.metrics:
            info = self.metric_info.setdefault(metric, {})
            info.setdefault("family", "")
            info.setdefault("higher_is_better", True)
        self.method_info = {k: dict(v) for k, v in (method_info or {}).items()}
        self.seed = seed
        self.seeds = dict(seeds or {})
        self.timings = dict(timings or {})
        self.explain_timings = dict(explain_timings or {})
        self.config_hashes = dict(config_hashes or {})
        self.resumed = dict(resumed or {})
        self.versions = dict(versions) if versions is not None else library_versions()
        self.wall_time = wall_time
        self.store = store
        self.extra = dict(extra or {})

    def __getstate__(self) -> dict[str, Any]:
        # a pickled Results carries its numbers, not the model and data of its evaluation
        state = dict(self.__dict__)
        state["source"] = None
        return state

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_scores(
        cls,
        scores: Mapping[str, Mapping[str, Any]],
        *,
        higher_is_better: Mapping[str, bool] | bool = True,
        families: Mapping[str, str] | None = None,
    ) -> Results:
        """Results from per-sample scores computed elsewhere: ``{method: {metric: (n,)}}``.

        Scalars are one sample each. ``higher_is_better`` gives each metric's direction (one
        bool for all); ``families`` each metric's family (default: the metric's own name, so
        each metric is its own family). Useful to rank published numbers.
        """
        methods = list(scores)
        metrics: list[str] = []
        for row in scores.values():
            for metric in row:
                if metric not in metrics:
                    metrics.append(metric)
        arrays = {(m, k): np.atleast_1d(np.asarray(v, dtype=np.float64))
                  for m, row in scores.items() for k, v in row.items()}
        lengths = {v.shape[0] for v in arrays.values()}
        if len(lengths) != 1:
            raise ValueError(f"Every cell needs the same number of samples; got {sorted(lengths)}.")
        if isinstance(higher_is_better, bool):
            directions = dict.fromkeys(metrics, higher_is_better)
        else:
            missing = set(metrics) - set(higher_is_better)
            if missing:
                raise ValueError(f"`higher_is_better` has no direction for {sorted(missing)}.")
            directions = {k: bool(higher_is_better[k]) for k in metrics}
        info = {k: {"family": (families or {}).get(k, k), "higher_is_better": directions[k]}
                for k in metrics}
        return cls(methods=methods, metrics=metrics, n=lengths.pop(), scores=arrays,
                   metric_info=info)

    # ------------------------------------------------------------------ access
    def __getitem__(self, cell: Cell) -> np.ndarray:
        method, metric = cell
        if (method, metric) not in self.scores:
            raise KeyError(f"No cell ({method!r}, {metric!r}); methods {self.methods}, "
                           f"metrics {self.metrics}.")
        return self.scores[method, metric]

    def family(self, metric: str) -> str:
        return str(self.metric_info[metric].get("family", ""))

    def higher_is_better(self, metric: str) -> bool:
        return bool(self.metric_info[metric].get("higher_is_better", True))

    def __repr__(self) -> str:
        failed = f", {len(self.errors)} failed cells" if self.errors else ""
        return (f"Results({len(self.methods)} methods x {len(self.metrics)} metrics x "
                f"{self.n} samples{failed})")

    # ------------------------------------------------------------------ frames
    def diagnostic(self, method: str, metric: str, name: str) -> Any:
        """One diagnostic of a cell (e.g. ``"subsets"``, ``"prediction_changed"``,
        ``"layer_scores"``; the metric's ``diagnostics_`` names).

        A per-sample diagnostic comes back as one array over the samples, in order (the
        units' arrays concatenated; a sample no unit covered, or arrays whose trailing shapes
        differ between units, give a list of ``(start, stop, value)`` instead). Any other
        diagnostic comes back as its value when one unit ran the cell (set-level metrics), else
        as the list of ``(start, stop, value)`` per unit.
        """
        units = [u for u in self.diagnostics.get((method, metric), []) if name in u.values]
        if not units:
            known = sorted({k for u in self.diagnostics.get((method, metric), [])
                            for k in u.values})
            raise KeyError(f"No diagnostic {name!r} for ({method!r}, {metric!r}); recorded: "
                           f"{known or 'none'}.")
        parts = [(u.start, u.stop, u.values[name]) for u in units]
        per_sample = all(name in u.per_sample for u in units)
        if per_sample:
            arrays = [np.asarray(v) for _, _, v in parts]
            contiguous = parts[0][0] == 0 and parts[-1][1] == self.n and all(
                a[1] == b[0] for a, b in itertools.pairwise(parts))
            if contiguous and len({a.shape[1:] for a in arrays}) == 1:
                return np.concatenate(arrays, 0)
            return parts
        return parts[0][2] if len(parts) == 1 else parts

    def to_frame(self) -> pd.DataFrame:
        """A tidy DataFrame, one row per (method, metric, sample): ``method``, ``metric``,
        ``sample``, ``score``, ``family``, ``higher_is_better``, ``nan_reason``."""
        parts = []
        for method in self.methods:
            for metric in self.metrics:
                reasons = self.nan_reasons.get((method, metric), {})
                err = self.errors.get((method, metric))
                reason_col = [reasons.get(i) for i in range(self.n)]
                if err is not None:
                    reason_col = [f"error: {err.type}"] * self.n
                parts.append(pd.DataFrame({
                    "method": method,
                    "metric": metric,
                    "sample": np.arange(self.n),
                    "score": self.scores[method, metric],
                    "family": self.family(metric),
                    "higher_is_better": self.higher_is_better(metric),
                    "nan_reason": reason_col,
                }))
        frame = pd.concat(parts, ignore_index=True)
        frame["method"] = pd.Categorical(frame["method"], categories=self.methods)
        frame["metric"] = pd.Categorical(frame["metric"], categories=self.metrics)
        return frame

    def summary(self, *, wide: bool = False) -> pd.DataFrame:
        """Aggregate table: per (method, metric) the ``mean``, ``std`` (ddof=1), ``sem``,
        ``median``, ``n_valid``, ``n_nan``, ``family``, ``higher_is_better``, ``time_s`` and
        ``error`` (the failure message or None). NaN scores are left out of the statistics.

        ``wide=True`` gives only the means, methods x metrics.
        """
        rows = []
        for method in self.methods:
            for metric in self.metrics:
                v = self.scores[method, metric]
                valid = v[np.isfinite(v)]
                k = valid.size
                std = float(np.std(valid, ddof=1)) if k > 1 else np.nan
                err = self.errors.get((method, metric))
                rows.append({
                    "method": method,
                    "metric": metric,
                    "family": self.family(metric),
                    "higher_is_better": self.higher_is_better(metric),
                    "mean": float(valid.mean()) if k else np.nan,
                    "std": std,
                    "sem": std / np.sqrt(k) if k > 1 else np.nan,
                    "median": float(np.median(valid)) if k else np.nan,
                    "n_valid": int(k),
                    "n_nan": int(self.n - k),
                    "time_s": self.timings.get((method, metric), np.nan),
                    "error": None if err is None else f"{err.type}: {err.message}",
                })
        frame = pd.DataFrame(rows).set_index(["method", "metric"])
        if wide:
            return frame["mean"].unstack("metric").reindex(index=self.methods,
                                                           columns=self.metrics)
        return frame

    # ------------------------------------------------------------------ configuration
    def config(self) -> dict[str, Any]:
        """Everything needed to reproduce the run, as a JSON-serialisable dict."""
        return {
            "n": self.n,
            "seed": self.seed,
            "seeds": self.seeds,
            "metrics": self.metric_info,
            "methods": self.method_info,
            "config_hashes": {f"{m} | {k}": h for (m, k), h in self.config_hashes.items()},
            "versions": self.versions,
            **self.extra,
        }

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`config` as JSON."""
        return json.dumps(self.config(), default=str, **kwargs)

    # ------------------------------------------------------------------ views
    def leaderboard(self, **kwargs: Any) -> Leaderboard:
        """A :class:`~evalkit.leaderboard.Leaderboard` (keyword arguments go to it)."""
        from .leaderboard import Leaderboard

        return Leaderboard(self, **kwargs)

    def plot(self, kind: str = "radar", **kwargs: Any) -> Figure:
        """Plot the results: ``"radar"`` (family ranks), ``"bars"`` (mean scores with
        bootstrap error bars), ``"distributions"`` (per-sample scores; ``"violin"``/``"box"``),
        ``"curves"`` (mean curves with their spread) or ``"explanations"`` (an image grid of
        explanations with their scores). Keyword arguments go to the function in
        :mod:`evalkit.plotting`. Returns the matplotlib Figure.

        ``"explanations"`` after :func:`~evalkit.evaluate` needs nothing more: the images and
        the methods' explanations of the shown samples (``samples=4``: the first four, or
        indices) come from the evaluation (``source``), with the same seeds as the scored
        ones. Results without a source need ``x=`` and ``attributions=``."""
        from . import plotting

        if kind == "explanations" and kwargs.get("x") is None \
                and kwargs.get("attributions") is None and self.source is not None:
            kwargs = self._explanations_from_source(kwargs)
        return plotting.plot(self, kind, **kwargs)

    def _explanations_from_source(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``x``, ``attributions``, ``y`` and ``sample_indices`` of the samples to show,
        explained again (only those rows) by the evaluation that computed the scores."""
        import warnings

        import torch

        from ._validation import EvalkitWarning

        ev = self.source
        samples = kwargs.pop("samples", 4)
        if isinstance(samples, int | np.integer):
            rows = list(range(min(int(samples), self.n)))
        else:
            rows = [int(i) for i in samples]
        index = torch.as_tensor(rows, dtype=torch.long, device=ev.x.device)
        methods = kwargs.get("methods") or [m for m in self.methods
                                            if not all((m, k) in self.errors
                                                       for k in self.metrics)]
        attributions = {}
        for m in methods:
            try:
                attributions[m] = ev.explain(m, index)[index].detach().cpu().numpy()
            except Exception as exc:  # a method that cannot be explained is left out
                warnings.warn(f"plot('explanations') leaves out {m!r}: explaining it failed "
                              f"({type(exc).__name__}: {exc})", EvalkitWarning, stacklevel=3)
        if kwargs.get("methods") is not None:
            kwargs["methods"] = [m for m in kwargs["methods"] if m in attributions]
        kwargs.update(x=ev.x[index].detach().cpu().numpy(), attributions=attributions,
                      sample_indices=rows, samples=len(rows))
        if kwargs.get("y") is None and ev.y is not None:
            kwargs["y"] = ev.y[index].detach().cpu().numpy()
        return kwargs
