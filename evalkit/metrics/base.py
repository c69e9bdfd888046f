"""The metric protocol shared by every evaluation metric.

``metric(model, x, y, a=None, *, s=None, explain_fn=None, explain_kwargs=None, batch_size=None,
device=None) -> numpy.ndarray`` of per-sample scores, shape (N,). The base class does
everything that is not specific to one metric, once: input conversion and validation, explaining
on demand, per-sample ``normalise`` and ``abs``, seeding, NaN bookkeeping and aggregation.
A metric implements :meth:`Metric._evaluate` on a :class:`MetricBatch` of tensors.

Subclasses declare metadata as class attributes (``family``, ``higher_is_better``, ...) and are
registered by class name on definition; see :func:`get` and :func:`list_metrics`. The class
attributes are the defaults; metadata that depend on parameters (ROAD's direction follows its
``order``, a random baseline makes a metric stochastic) are derived by each instance from its
current parameters (see :meth:`Metric._derived_metadata` and :meth:`Metric._random_sources`).
"""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, TypeVar

import numpy as np
import pandas as pd
import torch

from .. import _progress, _quantus_compat, _rng
from .._batching import (
    MAX_AUTO_BATCH,
    SMALL_ROWS_CALL_BYTES,
    SMALL_ROWS_CHUNK_BYTES,
    SMALL_ROWS_MAX_BATCH,
)
from .._validation import (
    EvalkitWarning,
    UndefinedScoreWarning,
    all_finite,
    as_tensor,
    check_bool,
    check_labels,
    finite_rows,
    to_numpy,
)
from ..modality import Modality, as_modality
from ..models import ModelWrapper, wrap_model
from ..perturb.noise import Noise
from ..runner import ForwardRunner
from .normalise import abs_normalised_by_max, get_normaliser, normalise_by_max

__all__ = ["FAMILIES", "Metric", "MetricBatch", "clone", "get", "list_metrics", "register"]

FAMILIES = ("faithfulness", "robustness", "localisation", "complexity", "randomisation",
            "axiomatic")

_REGISTRY: dict[str, type[Metric]] = {}
#: names a diagnostic may not take (their ``<name>_`` attributes are the call's own results)
_RESERVED_DIAGNOSTICS = frozenset({"scores", "nan_reasons", "curves", "curve_x", "seed",
                                   "diagnostics", "per_sample_diagnostics"})
_ALIASES: dict[str, str] = {}

# Quantus' __call__ keyword names, accepted so that ported code runs unchanged.
_CALL_ALIASES = {
    "x_batch": "x",
    "y_batch": "y",
    "a_batch": "a",
    "s_batch": "s",
    "explain_func": "explain_fn",
    "explain_func_kwargs": "explain_kwargs",
}


@dataclass(eq=False)
class MetricBatch:
    """Everything a metric's ``_evaluate`` needs, as tensors on one device.

    ``x`` (N, ...) inputs; ``y`` labels (or None); ``a`` attributions aligned with ``x``
    (float64, after ``normalise``/``abs``; rows with non-finite values are zeroed and already
    flagged NaN); ``s`` bool masks or None; ``model`` the wrapper (None for model-free metrics
    called without one); ``runner`` the batched forward runner; ``seed`` the resolved seed;
    ``modality`` what the inputs are (layout, features, replacement; :mod:`evalkit.modality`).
    The wrapper's :attr:`target` says which output is scored and what the model predicts.
    """

    metric: Metric
    x: torch.Tensor
    y: torch.Tensor | None
    a: torch.Tensor | None
    s: torch.Tensor | None
    model: ModelWrapper | None
    runner: ForwardRunner | None
    seed: int
    modality: Modality
    model_obj: Any = None
    explain_fn: Callable[..., Any] | None = None
    explain_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: why each undefined sample is undefined, by sample index (the first reason given wins)
    nan_reasons: dict[int, str] = field(default_factory=dict)
    curves: torch.Tensor | None = None
    curve_x: torch.Tensor | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    per_sample_diagnostics: set[str] = field(default_factory=set)
    unstored_diagnostics: set[str] = field(default_factory=set)

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def target(self) -> Any:
        """The wrapper's target (:mod:`evalkit.models.targets`): the scored output
        (``target(outputs, y)``), the prediction (``predict``) and when two agree
        (``agree``). Raises if the metric was called without a model."""
        return self.require_model().target

    @cached_property
    def keys(self) -> torch.Tensor:
        """Per-sample random keys from the seed and each sample's values (see ``_rng``)."""
        return _rng.sample_keys(self.x, self.seed)

    def defined(self) -> torch.Tensor:
        """(N,) bool: the samples not (yet) undefined; set-level metrics leave the others out
        of the set."""
        defined = np.ones(self.n, dtype=bool)
        if self.nan_reasons:
            defined[np.fromiter(self.nan_reasons, dtype=np.intp,
                                count=len(self.nan_reasons))] = False
        return torch.from_numpy(defined).to(self.device)

    def set_nan(self, mask: torch.Tensor | np.ndarray, reason: str) -> None:
        """Mark samples (bool mask (N,)) as undefined with a reason (the first reason wins)."""
        m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        reasons = self.nan_reasons
        # the samples without a reason yet, in index order (as a loop of setdefault adds them)
        reasons.update(dict.fromkeys([i for i in np.flatnonzero(m).tolist()
                                      if i not in reasons], reason))

    def record(self, name: str, value: Any, *, per_sample: bool | None = None,
               store: bool = True) -> None:
        """Keep a diagnostic of this call (the subsets drawn, the draws whose prediction
        changed, the per-layer scores...): after the call it is ``metric.diagnostics_[name]``
        and the attribute ``metric.<name>_``, and :func:`evalkit.evaluate` stores it with the
        scores. Tensors become NumPy arrays. ``per_sample`` (default: an array whose first
        axis has N entries) marks one entry per sample, so that chunked runs concatenate it.
        ``store=False`` keeps a bulky value that the seed reproduces on the metric only (the
        result store does not keep it).
        """
        if name in _RESERVED_DIAGNOSTICS:
            raise ValueError(f"{name!r} is not a diagnostic name: metric.{name}_ holds the call's "
                             "own results.")
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if per_sample is None:
            per_sample = isinstance(value, np.ndarray) and value.ndim >= 1 and (
                value.shape[0] == self.n)
        self.diagnostics[name] = value
        if per_sample:
            self.per_sample_diagnostics.add(name)
        else:
            self.per_sample_diagnostics.discard(name)
        if store:
            self.unstored_diagnostics.discard(name)
        else:
            self.unstored_diagnostics.add(name)

    def set_curves(self, curves: torch.Tensor, x_axis: torch.Tensor | np.ndarray) -> None:
        """Expose per-sample curves (N, T) and their x-axis (T,) as ``metric.curves_``."""
        self.curves = curves
        self.curve_x = torch.as_tensor(x_axis)

    def require_model(self) -> ModelWrapper:
        if self.model is None or self.runner is None:
            raise ValueError(f"{type(self.metric).__name__} needs a model; got model=None.")
        return self.model

    def explain(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        *,
        model: ModelWrapper | None = None,
    ) -> torch.Tensor:
        """Explain new inputs with the metric's explain function and preprocessing.

        ``model`` explains with another wrapper instead (e.g. a randomised copy from
        ``batch.model.randomise_layers``): a user ``explain_fn`` then receives its raw module,
        the default explainer the wrapper itself. Called in chunks of the batch size; returns
        float64 attributions aligned with ``x``.
        """
        return self.metric._explain(self, x, y, model=model)


#: the metadata an instance may derive from its parameters (``family``, ``paper`` and the
#: defaults of the shared options are fixed per class)
DERIVED_METADATA = ("higher_is_better", "needs_masks", "needs_gradients", "needs_model",
                    "re_explains", "stochastic", "set_level", "modalities")


class _MetadataField:
    """One metadatum of :data:`DERIVED_METADATA`: the class default when read on the class
    (``PixelFlipping.stochastic``, :func:`list_metrics`), the instance's value, derived from its
    current parameters, when read on an instance (``PixelFlipping(perturb_baseline="uniform")
    .stochastic``).

    Subclasses keep declaring plain class attributes (``higher_is_better = False``);
    ``Metric.__init_subclass__`` turns each into such a field. The value is computed on every
    read, never stored, so it cannot go stale when parameters change. A value assigned on an
    instance (``metric.higher_is_better = False``) pins it for that instance until
    :meth:`Metric.set_params` rebuilds it (a non-data descriptor, for user code that pins a
    direction by hand; metrics derive theirs in ``_derived_metadata``).
    """

    def __init__(self, default: bool | tuple[str, ...]) -> None:
        self.default = default
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Metric | None, owner: type | None = None) -> Any:
        if instance is None:
            return self.default
        if self.name == "stochastic":
            return instance._is_stochastic()
        return instance._derived_metadata().get(self.name, self.default)

    def __repr__(self) -> str:
        return f"_MetadataField({self.default!r})"


def _install_metadata_fields(cls: type) -> None:
    for name in DERIVED_METADATA:
        value = cls.__dict__.get(name)
        # plain values only (bools; a tuple of names for `modalities`): a class that defines
        # its own property keeps it
        if isinstance(value, tuple) and name == "modalities":
            metadatum = _MetadataField(tuple(value))
            metadatum.__set_name__(cls, name)
            setattr(cls, name, metadatum)
        elif isinstance(value, bool | np.bool_):
            metadatum = _MetadataField(bool(value))
            metadatum.__set_name__(cls, name)
            setattr(cls, name, metadatum)


def _source_is_random(name: str, source: Any) -> bool:
    """Whether one random source of a metric is active: a bool says so itself, a noise model
    always draws, an imputer or baseline draws when its ``stochastic`` says so."""
    if isinstance(source, bool | np.bool_):
        return bool(source)
    if isinstance(source, Noise):
        return True
    flag = getattr(source, "stochastic", None)
    if isinstance(flag, bool | np.bool_):
        return bool(flag)
    raise TypeError(f"Random source {name!r} must be a bool, a Noise, or an imputer/baseline "
                    f"with a bool `stochastic`; got {type(source).__name__}.")


@functools.cache
def _init_parameters(cls: type) -> tuple[tuple[str, ...], tuple[tuple[str, Any], ...]]:
    """The constructor parameters of a metric class, read from the signatures of the
    ``__init__`` methods along its MRO up to :class:`Metric`: their names (first occurrence,
    without ``self``, ``*args`` and ``**kwargs``), and the (name, default) pairs of those with
    a default, in the order met. Cached per class: ``get_params`` runs on every call (the cost
    check), and ``inspect.signature`` costs tens of microseconds per ``__init__``."""
    names: list[str] = []
    defaults: list[tuple[str, Any]] = []
    for klass in cls.__mro__:
        if klass is object or "__init__" not in klass.__dict__:
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                if p.name not in names:
                    names.append(p.name)
            if p.default is not p.empty:
                defaults.append((p.name, p.default))
        if klass is Metric:
            break
    return tuple(names), tuple(defaults)


class _ClassOrInstanceMethod:
    """A method that receives the class when called on the class and the instance when called
    on an instance (``metadata()``: the class defaults, or the instance's values)."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, instance: Any, owner: type | None = None) -> Callable[..., Any]:
        target = owner if instance is None else instance
        return functools.partial(self.func, target)


_MetricT = TypeVar("_MetricT", bound="Metric")


def explain_call_rows(batch: MetricBatch, x: torch.Tensor) -> int | None:
    """Inputs per explain-function call when a metric explains ``x`` itself: None (the
    model's chunk size, as for any explanation) unless the rows are small CPU rows under an
    automatic batch size.

    Rows under 256 bytes (a table's few dozen features: the runner's "small rows", see
    :data:`evalkit._batching.SMALL_ROWS_CHUNK_BYTES`) get several whole model chunks a call:
    the N x K perturbed copies of a table (robustness) or the N rows of each randomised model
    (randomisation) then take one or a few explain calls instead of dozens, each with its
    fixed validation and setup costs (W4 MaxSensitivity: 1 call of 20,000 rows instead of 19
    of 1,092; MPRT: one call per layer instead of two). :func:`evalkit.explain`, and an explain
    function that says it computes in its own chunks (an attribute ``chunks_internally =
    True``), get up to :data:`~evalkit._batching.SMALL_ROWS_CALL_BYTES` of input a call, since
    a call then adds only its input and output; any other explain function, which may hold
    a whole call's activations or expand its rows (integration steps), gets up to
    :data:`~evalkit._batching.SMALL_ROWS_MAX_BATCH` rows. Whole chunks: ``explain()`` splits
    each call into chunks of the same size as before (its own chunk size for small rows is
    the model's), so it computes on exactly the rows it computed on before."""
    model = batch.model
    # token ids are embedded into far larger rows: they keep the model's chunks
    if (batch.batch_size is not None or model is None or model.batch_size is not None
            or model.device.type != "cpu" or not x.is_floating_point()):
        return None
    row_bytes = max(1, math.prod(x.shape[1:]) * x.element_size())
    if row_bytes * MAX_AUTO_BATCH["cpu"] >= SMALL_ROWS_CHUNK_BYTES:
        return None
    chunk = model.resolve_batch_size(x)
    fn = batch.explain_fn
    if fn is None or getattr(fn, "chunks_internally", False) is True:
        rows = SMALL_ROWS_CALL_BYTES // row_bytes
    else:
        rows = min(SMALL_ROWS_MAX_BATCH, SMALL_ROWS_CALL_BYTES // row_bytes)
    whole = rows // chunk
    return whole * chunk if whole > 1 else None


class Metric:
    """Base class of all metrics. See the module docstring for the calling protocol.

    Parameters shared by every metric
    ---------------------------------
    abs:
        Take the absolute value of attributions before scoring (``None``: the metric's default).
    normalise:
        Normalise each attribution map on its own (never over the batch) before scoring.
    normalise_func:
        ``"max"`` (a / max|a|), ``"negative"`` (positive and negative parts separately),
        ``"second_moment"`` (a / sqrt(mean a^2)), or a callable on the (N, ...) batch.
    softmax:
        Score class probabilities instead of logits. ``None``: the wrapper's setting if the
        model was wrapped with an explicit ``softmax``, else the metric's default.
    aggregate:
        A function applied to the per-sample scores (e.g. ``np.nanmean``); ``None`` returns
        them as an (N,) array. Quantus' ``return_aggregate``/``aggregate_func`` are accepted;
        ``return_aggregate=True`` returns the aggregate as a (1,) array, like Quantus'
        one-element list (``aggregate=`` returns a 0-d array).
    seed:
        An int, a ``torch.Generator`` or ``None`` (fresh entropy, recorded in ``seed_``).
        Random draws depend only on the seed and each sample's values, never on the batch.
    progress:
        Show progress bars for long work.
    disable_warnings:
        Silence evalkit's warnings about undefined (NaN) scores.

    Attributes set by each call
    ---------------------------
    scores_ : numpy.ndarray (N,)
    nan_reasons_ : dict[int, str]
        Why each NaN score is undefined, by sample index.
    curves_, curve_x_ : numpy.ndarray or None
        Per-sample curves (N, T) and their x-axis, for curve metrics.
    diagnostics_ : dict[str, Any]
        What the metric recorded besides the scores (``MetricBatch.record``), each also set
        as the attribute ``<name>_`` (e.g. ``subsets_``, ``prediction_changed_``);
        ``per_sample_diagnostics_`` names those with one entry per sample.
    seed_ : int
        The seed actually used.
    """

    # ---- metadata (override in subclasses). The booleans of DERIVED_METADATA are class
    # defaults; an instance derives its own in `_derived_metadata` and `_random_sources`.
    family: ClassVar[str] = ""
    higher_is_better: ClassVar[bool] = True
    needs_masks: ClassVar[bool] = False
    needs_gradients: ClassVar[bool] = False
    needs_model: ClassVar[bool] = True
    re_explains: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False
    set_level: ClassVar[bool] = False
    paper: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    #: the input modalities the metric is defined for (:mod:`evalkit.modality`); a call on
    #: other data fails with a clear error instead of a silently wrong number
    modalities: ClassVar[tuple[str, ...]] = ("image", "series", "tabular")
    #: ``s`` is a real-valued reference map aligned like the attributions (the ground-truth
    #: agreement metrics), not a binary mask
    real_valued_s: ClassVar[bool] = False
    #: metric-specific keyword arguments accepted by ``__call__`` (passed in ``batch.extra``)
    call_options: ClassVar[tuple[str, ...]] = ()
    #: False: needs no spec in ``benchmarks/specs/`` (see docs/contributing.md, "Benchmarks")
    benchmark_spec: ClassVar[bool] = True

    # ---- defaults of the shared options (Quantus' per-metric defaults unless documented)
    default_abs: ClassVar[bool] = False
    default_normalise: ClassVar[bool] = True
    default_normalise_func: ClassVar[str] = "max"
    default_softmax: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _install_metadata_fields(cls)
        if cls.family and not cls.__name__.startswith("_") and not inspect.isabstract(cls):
            if cls.family not in FAMILIES:
                raise ValueError(f"{cls.__name__}.family must be one of {FAMILIES}.")
            register(cls)

    def __init__(
        self,
        *,
        abs: bool | None = None,
        normalise: bool | None = None,
        normalise_func: str | Callable[..., torch.Tensor] | None = None,
        softmax: bool | None = None,
        aggregate: Callable[[np.ndarray], Any] | None = None,
        seed: int | torch.Generator | None = None,
        progress: bool = False,
        disable_warnings: bool = False,
        **quantus_kwargs: Any,
    ) -> None:
        return_aggregate = quantus_kwargs.pop("return_aggregate", None)
        aggregate_func = quantus_kwargs.pop("aggregate_func", None)
        display_progressbar = quantus_kwargs.pop("display_progressbar", None)
        normalise_func_kwargs = quantus_kwargs.pop("normalise_func_kwargs", None)
        self._pop_default_perturb_func(quantus_kwargs)
        if quantus_kwargs:
            raise TypeError(
                f"{type(self).__name__} got unexpected keyword arguments {sorted(quantus_kwargs)}; "
                f"valid parameters are {sorted(self._param_names())}."
            )
        if normalise_func_kwargs:
            raise TypeError("`normalise_func_kwargs` is not supported: normalisation is always "
                            "per sample; pass a callable as `normalise_func` instead.")
        if return_aggregate:
            # Quantus returns [aggregate]: a (1,) array here; evalkit's `aggregate=` a 0-d one
            aggregate = _quantus_compat.QuantusAggregate(aggregate or aggregate_func or np.mean)
        if display_progressbar is not None:
            progress = bool(display_progressbar)
        self.abs = self.default_abs if abs is None else check_bool("abs", abs)
        self.normalise = (
            self.default_normalise if normalise is None else check_bool("normalise", normalise)
        )
        self.normalise_func = normalise_func or self.default_normalise_func
        get_normaliser(self.normalise_func)
        if softmax is not None:
            check_bool("softmax", softmax)
        self.softmax = softmax
        if aggregate is not None and not callable(aggregate):
            raise TypeError("`aggregate` must be a callable such as numpy.nanmean, or None.")
        self.aggregate = aggregate
        if seed is not None and not isinstance(seed, int | np.integer | torch.Generator):
            raise TypeError(f"`seed` must be an int, a torch.Generator or None; got {seed!r}.")
        self.seed = seed
        self.progress = check_bool("progress", progress)
        self.disable_warnings = check_bool("disable_warnings", disable_warnings)
        self.scores_: np.ndarray | None = None
        self.nan_reasons_: dict[int, str] = {}
        self.curves_: np.ndarray | None = None
        self.curve_x_: np.ndarray | None = None
        self.seed_: int | None = None
        self.diagnostics_: dict[str, Any] = {}
        self.per_sample_diagnostics_: frozenset[str] = frozenset()
        self.unstored_diagnostics_: frozenset[str] = frozenset()

    @classmethod
    def _pop_default_perturb_func(cls, quantus_kwargs: dict[str, Any]) -> None:
        """Accept Quantus' ``perturb_func`` where it names what this metric already does:
        baseline replacement by indices on metrics that replace features by
        ``perturb_baseline``, noisy linear imputation on metrics with an ``imputer``. Any other
        perturbation function stays an unexpected keyword (a TypeError)."""
        if "perturb_func" not in quantus_kwargs:
            return
        name = _quantus_compat.function_name(quantus_kwargs["perturb_func"])
        params = cls._param_names()
        if (name in _quantus_compat.BASELINE_REPLACEMENT and "perturb_baseline" in params) or (
                name in _quantus_compat.IMPUTATION and "imputer" in params):
            del quantus_kwargs["perturb_func"]

    @property
    def get_auc_score(self) -> float:
        """Quantus' ``get_auc_score`` (a property there too): the mean over samples of the area
        under each curve of the last call (``curves_``), by the trapezoid rule with unit
        spacing. Undefined (NaN) samples are left out."""
        if self.curves_ is None:
            raise AttributeError(f"{type(self).__name__} has no curves: call a curve metric "
                                 "first (get_auc_score reads `curves_`).")
        areas = np.trapezoid(self.curves_, dx=1.0, axis=1)
        return np.float64(np.nanmean(areas))

    # ----------------------------------------------------------------- sklearn-style protocol
    @classmethod
    def _param_names(cls) -> list[str]:
        return list(_init_parameters(cls)[0])

    def estimated_forward_rows(self, x_shape: tuple[int, ...]
                               ) -> _progress.ForwardRowEstimate | None:
        """About how many rows each sample of inputs of shape ``x_shape`` (N, ...) sends
        through the model (its perturbed copies and draws, plus itself; re-explanations are
        extra), and the setting that drives it: the check that warns before a run that would
        take hours (:class:`evalkit._progress.CostWarning`). The default reads the parameter
        names metrics share (:func:`evalkit._progress.generic_estimate`); a metric whose cost
        follows other settings overrides it (None: unknown)."""
        if not self.needs_model:
            return None  # reads attributions and masks only (an explanation is extra)
        return _progress.generic_estimate(self.get_params(deep=False), x_shape)

    def _check_cost(self, x_shape: tuple[int, ...]) -> bool:
        """Warn when this call is estimated to be large (unless ``disable_warnings``); True
        when it is, so that an interactive run shows its progress."""
        if self.disable_warnings:
            return False
        try:
            estimate = self.estimated_forward_rows(tuple(x_shape))
        except Exception:  # an estimate must never stop a run
            return False
        return _progress.warn_if_costly(type(self).__name__, estimate, x_shape[0], x_shape,
                                        stacklevel=5)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters, resolved (e.g. the class default of ``abs`` filled in).

        ``deep`` is accepted for scikit-learn compatibility; metrics hold no nested estimators,
        so it changes nothing.
        """
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self: _MetricT, **params: Any) -> _MetricT:
        """Change parameters **in place** and return ``self`` (scikit-learn's semantics).

        The merged parameters are validated by the constructor, which also rebuilds everything
        derived from them (groupings, imputers, resolved options) and clears the results of an
        earlier call (``scores_``, ``curves_``...), which belong to the old parameters. On an
        invalid value the metric is left unchanged. For a changed copy that leaves this metric
        alone, use ``metric.clone().set_params(...)``.
        """
        if not params:
            return self
        current = self.get_params()
        unknown = set(params) - set(current)
        if unknown:
            raise TypeError(f"Unknown parameters {sorted(unknown)} for {type(self).__name__}; "
                            f"valid parameters are {sorted(current)}.")
        current.update(params)
        rebuilt = type(self)(**current)
        self.__dict__.clear()
        self.__dict__.update(rebuilt.__dict__)
        return self

    def clone(self: _MetricT) -> _MetricT:
        """A new, uncalled metric with the same parameters (see :func:`clone`)."""
        return type(self)(**self.get_params())

    def __repr__(self) -> str:
        defaults = type(self)._defaults()
        shown = [
            f"{k}={v!r}" for k, v in self.get_params().items()
            if k in defaults and not _same(v, defaults[k])
        ]
        return f"{type(self).__name__}({', '.join(shown)})"

    @classmethod
    def _defaults(cls) -> dict[str, Any]:
        out: dict[str, Any] = {
            "abs": cls.default_abs,
            "normalise": cls.default_normalise,
            "normalise_func": cls.default_normalise_func,
        }
        for name, default in _init_parameters(cls)[1]:
            if name not in out:
                out[name] = default
        return out

    @_ClassOrInstanceMethod
    def metadata(self_or_cls: Metric | type[Metric]) -> dict[str, Any]:
        """The metadata as a dict: on the class, its defaults (one row of :func:`list_metrics`);
        on an instance, its own values, derived from its current parameters
        (``ROAD(order="morf").metadata()["higher_is_better"]`` is False, ``ROAD.metadata()``'s
        True)."""
        cls = self_or_cls if isinstance(self_or_cls, type) else type(self_or_cls)
        return {
            "name": cls.__name__,
            "family": cls.family,
            "higher_is_better": bool(self_or_cls.higher_is_better),
            "needs_masks": bool(self_or_cls.needs_masks),
            "needs_gradients": bool(self_or_cls.needs_gradients),
            "needs_model": bool(self_or_cls.needs_model),
            "re_explains": bool(self_or_cls.re_explains),
            "stochastic": bool(self_or_cls.stochastic),
            "set_level": bool(self_or_cls.set_level),
            "modalities": tuple(self_or_cls.modalities),
            "default_abs": cls.default_abs,
            "default_normalise": cls.default_normalise,
            "default_softmax": cls.default_softmax,
            "paper": cls.paper,
        }

    # ----------------------------------------------------------------- derived metadata
    def _derived_metadata(self) -> dict[str, Any]:
        """The metadata of :data:`DERIVED_METADATA` (except ``stochastic``) that depend on
        this instance's parameters, computed from them on every read; override in metrics
        whose direction, set level... change with a parameter, e.g. ROAD:
        ``{"higher_is_better": self.order != "morf"}``. Metadata left out keep the class
        default. Never assign metadata in ``__init__``: a stored value goes stale."""
        return {}

    def _random_sources(self) -> dict[str, Any]:
        """This instance's sources of randomness by name, each a bool (active or not) or the
        object that draws (an :class:`~evalkit.perturb.Imputer` or baseline: active when its
        ``stochastic`` is True; a :class:`~evalkit.perturb.Noise`: always active).

        The one rule for ``stochastic``: a metric is stochastic when any of its random
        sources is active. Override to declare them from the current parameters, e.g.
        ``{"random subsets": self.subsets == "random", "baseline": self._imputer}``. The
        default is one source, the class's declared ``stochastic`` (metrics whose randomness
        does not depend on parameters).
        """
        return {"sampling": type(self).stochastic}

    def _is_stochastic(self) -> bool:
        return any(_source_is_random(name, source)
                   for name, source in self._random_sources().items())

    # ----------------------------------------------------------------- the protocol
    def __call__(
        self,
        model: Any = None,
        x: Any = None,
        y: Any = None,
        a: Any = None,
        *,
        s: Any = None,
        explain_fn: Callable[..., Any] | None = None,
        explain_kwargs: Mapping[str, Any] | None = None,
        batch_size: int | None = None,
        device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Score explanations ``a`` of ``model`` on inputs ``x`` with labels ``y``.

        Parameters
        ----------
        model:
            A ``torch.nn.Module``, a callable on NumPy batches, or a
            :class:`~evalkit.models.ModelWrapper`. May be None for metrics that only read
            attributions and masks (``needs_model`` False) when ``a`` is given.
        x, y:
            Inputs (N, ...) channel-first and their labels (N,) (or what the target needs).
        a:
            Attributions broadcastable to ``x`` ((N, C, ...), (N, 1, ...) or (N, ...)).
            ``None``: computed with ``explain_fn(model, x, y, **explain_kwargs)``.
        s:
            Binary ground-truth masks, for localisation metrics.
        explain_fn:
            ``f(model, x, y, **kwargs) -> attributions``: receives the ``model`` argument as
            given and ``x``/``y`` as tensors on the model's device; may return NumPy or torch.
            A function with Quantus' parameter names ``inputs`` and ``targets`` is called as
            Quantus calls it, ``f(model=..., inputs=..., targets=..., **kwargs)`` (with tensors;
            wrap a function on NumPy arrays in :func:`evalkit.explain.numpy_explain_fn`).
            Default: :func:`evalkit.explain` (``method`` in ``explain_kwargs``, default
            ``"Saliency"``).
        batch_size:
            Inputs per forward/explain call (default: from a per-device input memory budget,
            see :class:`~evalkit.runner.ForwardRunner`).
        device:
            For model-free metrics, where to compute; for torch models it must match the
            model's device (evalkit never moves your model).

        modality:
            What ``x`` is: ``"image"``, ``"series"``, ``"tabular"``, ``"tokens"`` or a
            :class:`~evalkit.modality.Modality` (e.g. ``TokensModality(mask_token_id=103)``).
            Default: inferred from the shape and dtype of ``x``. A metric refuses a modality it
            is not defined for (its ``modalities``) with a ``ValueError``.

        Quantus keyword names (``x_batch``, ``y_batch``, ``a_batch``, ``s_batch``,
        ``explain_func``, ``explain_func_kwargs``, ``channel_first``, ``softmax``) are accepted.

        Returns
        -------
        numpy.ndarray
            Per-sample scores (N,), float64, NaN where undefined (see ``nan_reasons_``); or
            ``aggregate(scores)`` if ``aggregate`` was set.
        """
        x, y, a, s, explain_fn, explain_kwargs, extra = self._resolve_call_aliases(
            x, y, a, s, explain_fn, explain_kwargs, kwargs
        )
        if x is None:
            raise _quantus_compat.MissingInputsError(
                f"{type(self).__name__}() missing the inputs `x`.")
        batch = self._prepare(model, x, y, a, s, explain_fn, explain_kwargs, batch_size, device,
                              extra)
        scores = self._evaluate(batch)
        result = self._finalise(batch, scores)
        if self.aggregate is not None:
            return np.asarray(self.aggregate(result))
        return result

    def _resolve_call_aliases(self, x, y, a, s, explain_fn, explain_kwargs, kwargs):
        values = {"x": x, "y": y, "a": a, "s": s, "explain_fn": explain_fn,
                  "explain_kwargs": explain_kwargs}
        extra: dict[str, Any] = {}
        channel_first = kwargs.pop("channel_first", None)
        softmax = kwargs.pop("softmax", None)
        modality = kwargs.pop("modality", None)
        if modality is not None:
            extra["_modality"] = modality
        for key, value in kwargs.items():
            if key in _CALL_ALIASES:
                target = _CALL_ALIASES[key]
                if values[target] is not None:
                    raise TypeError(f"Got both `{target}` and its Quantus alias `{key}`.")
                values[target] = value
            elif key in self.call_options:
                extra[key] = value
            elif key in ("model_predict_kwargs", "custom_batch"):
                raise TypeError(
                    f"`{key}` is not supported; wrap the model with evalkit.models.wrap_model "
                    "or pass the metric-specific argument."
                )
            else:
                raise TypeError(f"{type(self).__name__}() got an unexpected keyword `{key}`.")
        if softmax is not None:
            extra["_softmax_override"] = check_bool("softmax", softmax)
        if channel_first is False:
            extra["_channels_last"] = True
        return (values["x"], values["y"], values["a"], values["s"], values["explain_fn"],
                values["explain_kwargs"], extra)

    # ----------------------------------------------------------------- preparation
    def _resolve_softmax(self, wrapper: ModelWrapper, extra: dict[str, Any]
                         ) -> tuple[ModelWrapper, bool]:
        """The wrapper with this call's softmax, and whether that softmax is the metric's
        default (not the user's choice: :meth:`ModelWrapper.check_softmax` may then switch it
        off for outputs that are probabilities already)."""
        by_default = False
        if "_softmax_override" in extra:
            choice = extra.pop("_softmax_override")
        elif self.softmax is not None:
            choice = self.softmax
        elif wrapper.softmax is not None:
            return wrapper, False
        else:
            choice, by_default = self.default_softmax, True
        view = wrapper if wrapper.softmax == choice else wrapper.with_options(softmax=choice)
        return view, by_default

    def _prepare(self, model, x, y, a, s, explain_fn, explain_kwargs, batch_size, device, extra):
        channels_last = extra.pop("_channels_last", False)
        modality = as_modality(extra.pop("_modality", None), x)
        self._check_modality(modality)  # a setting's own, more specific refusal first
        modality.check_applies(self)
        wrapper: ModelWrapper | None = None
        softmax_by_default = False
        # Model-free metrics given attributions ignore the model: no wrapping, no label checks,
        # no forward pass (Quantus-style calls pass a model and no labels to them).
        if model is not None and (self.needs_model or a is None):
            wrapper, softmax_by_default = self._resolve_softmax(
                wrap_model(model, device=device), extra)
            if batch_size is not None:
                wrapper = wrapper.with_options(batch_size=batch_size)
        elif self.needs_model or a is None:
            raise ValueError(
                f"{type(self).__name__} needs a model"
                + ("" if self.needs_model else " to compute attributions (a is None)") + "."
            )

        if wrapper is not None:
            xt = wrapper.prepare(x, modality)
        else:
            xt = as_tensor(x, "x", device=device)
        if channels_last:
            xt = modality.channels_first(xt)
        xt = modality.check(xt, dtype=None if wrapper is None else wrapper.dtype)
        n = xt.shape[0]
        dev = xt.device

        yt = None
        if y is not None:
            yt = check_labels(as_tensor(y, "y", device=dev), n)
        if wrapper is not None:
            wrapper.check_labels(xt, yt)
            # no second softmax on probabilities, none over a single output
            wrapper = wrapper.check_softmax(xt, by_default=softmax_by_default,
                                            who=type(self).__name__)

        seed = _rng.resolve_seed(self.seed)
        # a large call warns first, and shows its progress where someone is watching
        costly = wrapper is not None and self._check_cost(tuple(xt.shape))
        runner = (
            ForwardRunner(wrapper, batch_size=batch_size,
                          progress=self.progress or (costly and _progress.interactive()))
            if wrapper is not None else None
        )
        batch = MetricBatch(
            metric=self, x=xt, y=yt, a=None, s=None, model=wrapper, runner=runner, seed=seed,
            modality=modality,
            model_obj=model, explain_fn=explain_fn, explain_kwargs=dict(explain_kwargs or {}),
            batch_size=batch_size, extra=extra,
        )

        if s is not None:
            st = as_tensor(s, "s", device=dev)
            if channels_last:
                st = modality.channels_first(st, like=xt)
            batch.s = (modality.align(st, xt, "s") if self.real_valued_s
                       else modality.align_masks(st, xt))
        elif self.needs_masks:
            raise ValueError(f"{type(self).__name__} needs ground-truth masks `s`.")

        if a is None:
            if wrapper is None:
                raise ValueError("Attributions `a` are None and there is no model to explain.")
            raw = self._run_explain(batch, xt, yt)
        else:
            raw = as_tensor(a, "a", device=dev)
            if channels_last:
                raw = modality.channels_first(raw, like=xt)
        batch.a = self._preprocess_attributions(batch, raw, xt, flag_nan=True)
        self._flag_attributions(batch)
        return batch

    def _preprocess_attributions(
        self, batch: MetricBatch, raw: torch.Tensor, x: torch.Tensor, *, flag_nan: bool
    ) -> torch.Tensor:
        aligned = batch.modality.align(raw, x)
        normaliser = get_normaliser(self.normalise_func) if self.normalise else None
        if (normaliser is normalise_by_max and aligned.is_floating_point()
                and aligned.dtype != torch.float64 and aligned.device == batch.device
                and all_finite(aligned)):
            # a narrower float map (float32: most explanations): |a| and its maximum are exact
            # in its own dtype, and the division promotes to float64, so one pass writes the
            # float64 result, the same values as converting first
            return _divided_by_max(aligned, absolute=self.abs)
        a = aligned.to(device=batch.device, dtype=torch.float64)
        # a new tensor (a conversion, not the caller's float64 map): the steps below may
        # write into it, the same values as out of place with one temporary fewer each
        owned = a is not aligned
        if not all_finite(a):
            finite = finite_rows(a)
            if flag_nan:
                batch.set_nan(~finite, "attribution contains NaN or Inf")
            a = torch.where(batch.modality.per_sample(finite, a), a, torch.zeros_like(a))
            owned = True
        if normaliser is normalise_by_max and self.abs:
            # |a / m| is |a| / m exactly (m > 0; IEEE division rounds symmetrically): one
            # pass of |a| serves the maximum and the result
            return abs_normalised_by_max(a, inplace=owned)
        if normaliser is normalise_by_max:
            a = normalise_by_max(a, inplace=owned)
        elif normaliser is not None:
            a = normaliser(a)
            owned = False  # a callable's result may be anything, its input included
        if self.abs:
            a = a.abs_() if owned else a.abs()
        return a

    # ----------------------------------------------------------------- explaining
    def _explain_callable(self, batch: MetricBatch) -> tuple[Callable[..., Any], dict[str, Any]]:
        if batch.explain_fn is not None:
            if not callable(batch.explain_fn):
                raise TypeError("`explain_fn` must be callable: f(model, x, y, **kwargs).")
            return batch.explain_fn, batch.explain_kwargs
        from ..explain import explain

        return explain, batch.explain_kwargs

    def _run_explain(
        self,
        batch: MetricBatch,
        x: torch.Tensor,
        y: torch.Tensor | None,
        model: ModelWrapper | None = None,
        rows: int | None = None,
    ) -> torch.Tensor:
        """The explain function on ``x`` (labels ``y``), in calls of ``rows`` inputs (default:
        the batch size, else :func:`explain_call_rows` for small CPU rows, else the model's
        chunk size for inputs like ``x``)."""
        fn, kwargs = self._explain_callable(batch)
        if model is not None:
            # a user's explain function gets a copy of what it was given: the raw module, or a
            # wrapper (which carries the target, e.g. a detection or segmentation target)
            model_arg: Any = (model.model if batch.explain_fn is not None
                              and not isinstance(batch.model_obj, ModelWrapper) else model)
        else:
            model_arg = batch.model_obj if batch.explain_fn is not None else batch.model
        if rows is None:
            rows = explain_call_rows(batch, x)
        if rows is not None:
            size = rows
        elif batch.model is not None:
            size = batch.model.resolve_batch_size(x, batch.batch_size)
        else:
            size = batch.batch_size if batch.batch_size is not None else len(x)
        quantus_style = _quantus_compat.is_quantus_explain_func(fn)
        parts = []
        for start in range(0, x.shape[0], size):
            xs = x[start : start + size]
            ys = None if y is None else y[start : start + size]
            out = call_explain_fn(fn, model_arg, xs, ys, kwargs, quantus_style)
            parts.append(as_tensor(out, "explanation", device=x.device))
        return torch.cat(parts, 0) if len(parts) > 1 else parts[0]

    def _explain(
        self,
        batch: MetricBatch,
        x: torch.Tensor,
        y: torch.Tensor | None,
        model: ModelWrapper | None = None,
    ) -> torch.Tensor:
        raw = self._run_explain(batch, x, y, model)
        return self._preprocess_attributions(batch, raw, x, flag_nan=False)

    # ----------------------------------------------------------------- hooks
    def _check_modality(self, modality: Modality) -> None:
        """Refuse a modality with a message more specific than the generic "does not apply"
        (called before the instance's ``modalities`` are checked); e.g. ROAD's default
        imputer names the ``imputer=`` to pass."""

    def _flag_attributions(self, batch: MetricBatch) -> None:
        """Mark the samples whose attributions this metric cannot score (NaN with a reason,
        :meth:`MetricBatch.set_nan`), once, after preprocessing and before ``_evaluate``; e.g.
        the constant maps of metrics that rank features (:mod:`evalkit.metrics._ties`)."""

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        """Compute the (N,) scores. Subclasses implement this."""
        raise NotImplementedError

    def _finalise(self, batch: MetricBatch, scores: torch.Tensor) -> np.ndarray:
        if not isinstance(scores, torch.Tensor) or scores.shape != (batch.n,):
            raise RuntimeError(
                f"{type(self).__name__}._evaluate must return a tensor of shape ({batch.n},)."
            )
        out = to_numpy(scores.to(torch.float64)).copy()
        reasons = batch.nan_reasons
        unexplained = [i for i in np.flatnonzero(~np.isfinite(out)).tolist()
                       if i not in reasons]
        if unexplained:
            reasons = {**reasons, **dict.fromkeys(unexplained, "score is not finite")}
        if reasons:
            out[np.fromiter(reasons, dtype=np.intp, count=len(reasons))] = np.nan
        self.scores_ = out
        self.nan_reasons_ = dict(sorted(reasons.items()))
        self.curves_ = None if batch.curves is None else to_numpy(batch.curves.to(torch.float64))
        self.curve_x_ = None if batch.curve_x is None else to_numpy(batch.curve_x)
        self.seed_ = batch.seed
        self.diagnostics_ = dict(batch.diagnostics)
        self.per_sample_diagnostics_ = frozenset(batch.per_sample_diagnostics)
        self.unstored_diagnostics_ = frozenset(batch.unstored_diagnostics)
        for name, value in batch.diagnostics.items():
            setattr(self, f"{name}_", value)
        if self.nan_reasons_ and not self.disable_warnings:
            counts = Counter(self.nan_reasons_.values())
            detail = "; ".join(f"{r}: {c}" for r, c in counts.most_common())
            warnings.warn(
                f"{type(self).__name__}: {len(self.nan_reasons_)} of {batch.n} scores are "
                f"undefined (NaN) ({detail}). See `nan_reasons_`.",
                UndefinedScoreWarning,
                stacklevel=3,
            )
        return out


_install_metadata_fields(Metric)


def _divided_by_max(a: torch.Tensor, *, absolute: bool) -> torch.Tensor:
    """``normalise_by_max`` of a finite floating map narrower than float64 (its absolute
    value with ``absolute``), as float64, bit for bit as converting it to float64 first:
    |a| and the per-sample maximum are exact in ``a``'s dtype, and the division promotes
    both operands to float64 before dividing."""
    mag = a.abs()
    scale = mag.reshape(mag.shape[0], -1).amax(1).to(torch.float64)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.div(mag if absolute else a, scale.reshape(-1, *([1] * (a.ndim - 1))))


def call_explain_fn(fn: Callable[..., Any], model: Any, x: Any, y: Any,
                    kwargs: Mapping[str, Any], quantus_style: bool | None = None) -> Any:
    """Call an explain function as evalkit does, ``fn(model, x, y, **kwargs)``, or with
    Quantus' keywords ``fn(model=..., inputs=..., targets=..., **kwargs)`` when its signature
    asks for them (:func:`evalkit._quantus_compat.is_quantus_explain_func`)."""
    if quantus_style is None:
        quantus_style = _quantus_compat.is_quantus_explain_func(fn)
    if quantus_style:
        return fn(model=model, inputs=x, targets=y, **kwargs)
    return fn(model, x, y, **kwargs)


def clone(metric: _MetricT) -> _MetricT:
    """A new, uncalled metric of the same class with the same parameters (scikit-learn's
    ``clone``). Parameter values are passed to the new metric as they are, not deep-copied:
    arrays, imputers and a ``torch.Generator`` seed are shared (no metric modifies them)."""
    if not isinstance(metric, Metric):
        raise TypeError(f"clone() takes an evalkit Metric; got {type(metric).__name__}.")
    return metric.clone()


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return a is b


def publish_as_package(namespace: dict[str, Any]) -> None:
    """Give the classes a package exports (its ``__all__``) the package's name as their
    ``__module__``, so that a metric family split into submodules keeps the public path in
    stored configurations, pickles and reprs."""
    for name in namespace["__all__"]:
        obj = namespace[name]
        if isinstance(obj, type):
            obj.__module__ = namespace["__name__"]


# --------------------------------------------------------------------- registry
def register(cls: type[Metric]) -> type[Metric]:
    """Register a metric class under its name (and its ``aliases``)."""
    previous = _REGISTRY.get(cls.__name__)
    if previous is not None and previous is not cls and (
        previous.__module__, previous.__qualname__) != (cls.__module__, cls.__qualname__):
        warnings.warn(
            f"A metric named {cls.__name__!r} from {previous.__module__} is replaced by the one "
            f"from {cls.__module__}.", EvalkitWarning, stacklevel=3,
        )
    _REGISTRY[cls.__name__] = cls
    for alias in cls.aliases:
        _ALIASES[alias.lower()] = cls.__name__
    return cls


def get(name: str) -> type[Metric]:
    """Look up a metric class by name (case-insensitive), e.g. ``get("PixelFlipping")``."""
    if not isinstance(name, str):
        raise TypeError(f"Metric names are strings; got {type(name).__name__}.")
    by_lower = {k.lower(): k for k in _REGISTRY}
    key = name.lower()
    if key in by_lower:
        return _REGISTRY[by_lower[key]]
    if key in _ALIASES:
        return _REGISTRY[_ALIASES[key]]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"No metric named {name!r}.{hint} See evalkit.metrics.list_metrics().")


def list_metrics(family: str | None = None) -> pd.DataFrame:
    """All registered metrics and their metadata, one row each, sorted by family and name.

    The metadata are the classes' (their default settings); some depend on an instance's
    parameters and are derived by the instance (``metric.metadata()``, ``metric.stochastic``):
    e.g. ``PixelFlipping(perturb_baseline="uniform").stochastic`` is True,
    ``SensitivityN(subsets="morf").set_level`` too.
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(f"`family` must be one of {FAMILIES}; got {family!r}.")
    rows = [cls.metadata() for cls in _REGISTRY.values()]
    frame = pd.DataFrame(rows, columns=list(Metric.metadata().keys()))
    if family is not None:
        frame = frame[frame["family"] == family]
    order = {f: i for i, f in enumerate(FAMILIES)}
    frame = frame.assign(_o=frame["family"].map(order)).sort_values(["_o", "name"])
    return frame.drop(columns="_o").reset_index(drop=True)
