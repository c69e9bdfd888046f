"""The meta-evaluation engine: perturb once, explain once, score every metric.

For one model and data set, the work of a meta-evaluation is organised in *units* that every
metric being meta-evaluated shares:

* the **unperturbed unit**: the model's predictions ŷ, one explanation per method, and each
  metric's scores of them (once, not once per test as in MetaQuantus);
* one **perturbation unit** per (test, iteration t, perturbation k): one perturbed model (a
  seeded noisy copy from the wrapper) or one perturbed input batch, its predictions and sample
  mask, one explanation per method on it, and each metric's scores.

A unit's result (masks, predictions and per-metric score arrays) is a plain dict of NumPy
arrays, so :class:`~metaeval.benchmark.MetaEvaluationBenchmark` can store and resume it.
Randomness: the model noise, the input noise, stochastic explainers and stochastic metrics each
get a seed derived from the meta-evaluation's ``seed`` and the unit's labels
(:func:`evalkit._rng.derive_seed`); the global RNGs are never used. A metric's seed derives from
its ``seed_scope()`` where it has one, else from its name (as in :func:`evalkit.evaluate`), so
robustness metrics with the same perturbation settings (MaxSensitivity and AvgSensitivity)
draw the same perturbed inputs and share their re-explanations through the forward cache that
every unit, the unperturbed one included, runs in.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import evalkit
from evalkit import _progress, _rng
from evalkit._validation import UndefinedScoreWarning, as_tensor, check_labels
from evalkit.cache import forward_cache
from evalkit.evaluate import seed_label
from evalkit.modality import Modality, as_modality
from evalkit.models import ClassTarget, ModelWrapper, as_target, wrap_model
from evalkit.perturb import TokenDropout, UniformNoise
from evalkit.store import canonical

from .reference import ReferenceEstimator
from .results import MetaEvaluationResult, MetricRecord, RunBlock
from .suite import (
    InputPerturbationTest,
    ModelPerturbationTest,
    PerturbationTest,
    applicability,
    as_suite,
)

__all__ = ["MetaEvaluation"]

RANDOMNESS = ("independent", "common")


def _as_methods(xai_methods: Any) -> dict[str, dict[str, Any]]:
    if xai_methods is None:
        raise ValueError("`xai_methods` is required, e.g. {'Saliency': {}, "
                         "'IntegratedGradients': {'n_steps': 16}}.")
    if isinstance(xai_methods, str):
        xai_methods = [xai_methods]
    if isinstance(xai_methods, Mapping):
        out = {}
        for name, kw in xai_methods.items():
            if not isinstance(name, str):
                raise TypeError(f"`xai_methods` keys must be method names; got {name!r}.")
            if kw is None:
                kw = {}
            if not isinstance(kw, Mapping):
                raise TypeError(f"`xai_methods[{name!r}]` must be a dict of keyword arguments.")
            out[name] = dict(kw)
    else:
        out = {}
        for name in xai_methods:
            if not isinstance(name, str):
                raise TypeError(f"`xai_methods` must hold method names; got {name!r}.")
            out[name] = {}
    if not out:
        raise ValueError("`xai_methods` is empty; give at least one explanation method.")
    return out


def _as_metrics(metric: Any, name: str | None) -> dict[str, Any]:
    if isinstance(metric, Mapping):
        if not metric:
            raise ValueError("`metric` is an empty dict.")
        out = {}
        for k, m in metric.items():
            if not isinstance(k, str):
                raise TypeError(f"Metric names must be strings; got {k!r}.")
            out[k] = _check_metric(m, k)
        return out
    key = name or (type(metric).__name__ if not isinstance(metric, ReferenceEstimator)
                   else f"Reference:{metric.kind}")
    return {key: _check_metric(metric, key)}


def _direction(m: Any, name: str) -> bool:
    """The metric's ``higher_is_better`` as a bool; anything but a bool (or NumPy bool) raises:
    IEC_AR's direction must never come from the truthiness of a string or number (MetaQuantus
    0.0.5 tests ``if score_direction:``, so ``"higher"`` takes its lower-is-better branch)."""
    value = getattr(m, "higher_is_better", None)
    if not isinstance(value, bool | np.bool_):
        raise TypeError(
            f"Metric {name!r} ({type(m).__name__}) declares higher_is_better={value!r}; it must "
            "be a bool (True: higher scores are better, False: lower are), since IEC_AR reads "
            "the direction from it.")
    return bool(value)


def _check_metric(m: Any, name: str) -> Any:
    if isinstance(m, ReferenceEstimator):
        _direction(m, name)
        return m
    if not isinstance(m, evalkit.metrics.Metric):
        raise TypeError(f"Metric {name!r} must be an evalkit Metric (or a ReferenceEstimator); "
                        f"got {type(m).__name__}.")
    _direction(m, name)
    if getattr(m, "aggregate", None) is not None:
        raise ValueError(f"Metric {name!r} aggregates its scores (aggregate=...); meta-evaluation "
                         "needs per-sample scores: create it without `aggregate`.")
    if getattr(m, "set_level", False):
        raise ValueError(f"Metric {name!r} is set-level (one score per data set, not per "
                         "sample); the criteria need per-sample scores.")
    return m


@dataclass
class _State:
    """Everything a unit needs about one (model, data) pair."""

    wrapper: ModelWrapper
    x: torch.Tensor
    y_true: torch.Tensor | None
    y_pred: torch.Tensor
    target: torch.Tensor
    s: torch.Tensor | None
    keys: torch.Tensor
    data_range: tuple[float, float]
    #: the inputs' modality (inferred from ``x`` unless given): the metrics get it, and the
    #: input tests perturb through it (a table's column spec, token dropout on ids)
    modality: Modality | None = None
    explanations: dict[str, torch.Tensor] = field(default_factory=dict)
    timings: Counter = field(default_factory=Counter)


class MetaEvaluation:
    """Meta-evaluate metrics with the MetaQuantus perturbation tests and criteria.

    Hedström, Bommer, Wickstrøm, Samek, Lapuschkin, Höhne, "The Meta-Evaluation Problem in
    Explainable AI: Identifying Reliable Estimators with MetaQuantus", TMLR 2023. Every
    criterion and the MC score lie in [0, 1]; **higher is better** (ideal m* = (1, 1, 1, 1)).

    Parameters
    ----------
    tests:
        Perturbation tests (a list, or MetaQuantus' dict of named tests); default
        :func:`~metaeval.default_suite`. At most one test per (space, type).
    xai_methods:
        ``{name: explain kwargs}`` (or a list of names). A kwargs dict may hold ``"method"``
        to give a registered method another display name; whether a test is applicable is
        judged by that registered method (``{"C1": {"method": "Constant"}}`` is the Constant
        control whatever its display name).
    iterations, nr_perturbations:
        ``I`` iterations of ``K`` perturbations each (MetaQuantus' ``iterations`` and
        ``nr_perturbations``). Criteria are averaged over the K perturbations within an
        iteration; the spread (std) is over iterations.
    seed:
        An int; every random draw (model noise, input noise, stochastic explainers and
        metrics) derives from it and the unit's labels.
    target:
        ``"prediction"`` (default, as MetaQuantus): explain and score the model's predicted
        class ŷ; ``"label"``: the given ``y``.
    model_target:
        Which output the metrics and explainers score: an evalkit target
        (:mod:`evalkit.models.targets`, the ``target`` of :func:`evalkit.evaluate` and
        :func:`evalkit.explain`), given to the model's wrapper; default the wrapper's own (the
        class logit of a plain module). With ``target="prediction"`` its labels are the
        target's predictions: a :class:`~evalkit.models.SegmentationTarget` explains each
        pixel's predicted class (label maps), a :class:`~evalkit.models.SimilarityTarget`
        with a concept ignores them; per-sample references of a ``SimilarityTarget()`` need
        ``target="label"`` with the references as ``y``. Predictions that are not one class per
        sample (maps, embeddings) are recorded as -1 in the result's ``y_pred``; whether they
        changed is in the tests' masks. Part of :meth:`config` (and so of stored keys).
    randomness:
        ``"independent"`` (default): each call of a stochastic metric or explainer gets its own
        seed, as MetaQuantus' fresh global draws do, so a metric's own randomness counts against
        its noise resilience. ``"common"``: the same seeds before and after a perturbation
        (common random numbers), isolating the perturbation's effect.
    undefined:
        How MC treats an undefined criterion (no sample kept by any perturbation of a test):
        ``"nan"`` (default) makes that space's MC NaN; ``"ignore"`` averages the defined
        criteria (MetaQuantus' ``nanmean`` since its PR #9; 0.0.5 gives NaN).
    explain_fn:
        ``f(model, x, y, **kwargs) -> attributions``; default :func:`evalkit.explain`
        (``method=`` from the method name).
    batch_size:
        Rows per forward/explain call for the metrics (default from a memory budget).
    keep_scores:
        Keep every per-sample score in the result (for :meth:`MetaEvaluationResult.scores_frame`
        and re-analysis; a few floats per sample and perturbation).
    score_all:
        Only the samples a perturbation's mask keeps enter the criteria, so by default only
        they are explained and scored after that perturbation (the others are NaN); evalkit's
        explanations and metrics are per sample, so their scores are exactly those of a full
        run. ``True`` scores every sample (as MetaQuantus does). A custom ``explain_fn`` always
        gets every sample (it might depend on the batch).
    progress:
        A progress bar over the units (with one line per unit: its time and how many
        predictions changed); default (None): where the run is interactive (stderr is a
        terminal, or a Jupyter kernel). Before the run, a metric estimated to need very many
        forward rows (:meth:`evalkit.metrics.Metric.estimated_forward_rows` times the samples,
        methods and perturbation units) warns with the setting to change.

    Call it with a metric (or a dict of metrics, evaluated together on shared perturbations
    and explanations), the model, inputs ``x``, labels ``y`` and, for localisation metrics,
    masks ``s``; it returns a :class:`~metaeval.results.MetaEvaluationResult`.

    >>> me = MetaEvaluation(default_suite(), {"Saliency": {}, "IntegratedGradients": {}},
    ...                     iterations=3, nr_perturbations=5, seed=0)      # doctest: +SKIP
    >>> res = me({"Sparseness": Sparseness(), "PG": PointingGame()}, model, x, y, s=s)
    >>> res.summary()                                                  # doctest: +SKIP
    """

    def __init__(
        self,
        tests: Any = None,
        xai_methods: Any = None,
        iterations: int = 3,
        nr_perturbations: int = 5,
        seed: int = 0,
        *,
        target: str = "prediction",
        model_target: object = None,
        randomness: str = "independent",
        undefined: str = "nan",
        explain_fn: Callable[..., Any] | None = None,
        batch_size: int | None = None,
        keep_scores: bool = True,
        score_all: bool = False,
        progress: bool | None = None,
    ) -> None:
        self.tests = as_suite(tests)
        self.xai_methods = _as_methods(xai_methods)
        for arg, v in (("iterations", iterations), ("nr_perturbations", nr_perturbations)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise ValueError(f"`{arg}` must be a positive integer; got {v!r}.")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise TypeError(f"`seed` must be an int; got {seed!r}.")
        if target not in ("prediction", "label"):
            raise ValueError(f"`target` must be 'prediction' or 'label'; got {target!r}.")
        if randomness not in RANDOMNESS:
            raise ValueError(f"`randomness` must be one of {RANDOMNESS}; got {randomness!r}.")
        if undefined not in ("nan", "ignore"):
            raise ValueError(f"`undefined` must be 'nan' or 'ignore'; got {undefined!r}.")
        if explain_fn is not None and not callable(explain_fn):
            raise TypeError("`explain_fn` must be callable: f(model, x, y, **kwargs).")
        self.iterations = int(iterations)
        self.nr_perturbations = int(nr_perturbations)
        self.seed = int(seed)
        self.target = target
        self.model_target = None if model_target is None else as_target(model_target)
        self.randomness = randomness
        self.undefined = undefined
        self.explain_fn = explain_fn
        self.batch_size = batch_size
        self.keep_scores = bool(keep_scores)
        self.score_all = bool(score_all)
        self.progress = _progress.resolve(progress)
        self.result_: MetaEvaluationResult | None = None

    def __repr__(self) -> str:
        return (f"MetaEvaluation(tests={[t.name for t in self.tests]}, "
                f"xai_methods={list(self.xai_methods)}, iterations={self.iterations}, "
                f"nr_perturbations={self.nr_perturbations}, seed={self.seed})")

    def config(self) -> dict[str, Any]:
        """The settings that determine the numbers (recorded in results and store keys)."""
        return {
            "tests": [t.params() for t in self.tests],
            "xai_methods": {k: {kk: repr(vv) for kk, vv in v.items()}
                            for k, v in self.xai_methods.items()},
            "iterations": self.iterations,
            "nr_perturbations": self.nr_perturbations,
            "seed": self.seed,
            "target": self.target,
            "randomness": self.randomness,
            "score_all": self.score_all,
            "explain_fn": None if self.explain_fn is None else repr(self.explain_fn),
            # only when set: the stored keys of earlier runs stay valid
            **({} if self.model_target is None
               else {"model_target": canonical(self.model_target)}),
        }

    # ------------------------------------------------------------------ entry point
    def __call__(
        self,
        metric: Any,
        model: Any,
        x: Any,
        y: Any = None,
        s: Any = None,
        *,
        metric_name: str | None = None,
        dataset: str | None = None,
        model_name: str | None = None,
        modality: Any = None,
        **kwargs: Any,
    ) -> MetaEvaluationResult:
        """Meta-evaluate ``metric`` (one, or a dict ``{name: metric}`` sharing all the work)
        on ``model`` and ``x``; Quantus names ``x_batch``, ``y_batch``, ``s_batch`` work too.

        ``dataset`` and ``model_name`` label the result's ``dataset`` and ``model`` columns
        (default: the shape of ``x`` and the model's class name).
        ``modality`` (a name or an :class:`~evalkit.modality.Modality`, default inferred from
        ``x``) goes to every metric call and decides how the input tests perturb ``x``
        (:meth:`_perturbed_input`): e.g. ``TabularModality(kinds=..., groups=...)`` keeps
        one-hot rows and ordinal levels valid, ``TokensModality(mask_token_id=...)`` is the
        mask token of token dropout."""
        x, y, s = _aliases(x, y, s, kwargs)
        if dataset is None:
            dataset = "x" + str(tuple(getattr(x, "shape", (len(x),))))
        if model_name is None:
            model_name = type(model).__name__
        metrics = _as_metrics(metric, metric_name)
        state = self.prepare(model, x, y, s, modality=modality)
        n_units = 1 + len(self.tests) * self.iterations * self.nr_perturbations
        self._warn_about_cost(metrics, tuple(state.x.shape), n_units)
        bar = _progress.tqdm(total=n_units, desc="metaeval", unit="unit",
                             disable=not self.progress, leave=False)
        try:
            unperturbed = self.run_unperturbed(state, metrics)
            bar.update(1)
            units = {}
            for test in self.tests:
                for t in range(self.iterations):
                    for k in range(self.nr_perturbations):
                        units[(test.name, t, k)] = self.run_perturbation(
                            state, metrics, test, t, k, unperturbed=unperturbed)
                        bar.update(1)
        finally:
            bar.close()
        block = self.assemble(metrics, state, unperturbed, units, dataset=str(dataset),
                              model=str(model_name))
        result = MetaEvaluationResult([block], config=self.config(), undefined=self.undefined)
        self.result_ = result
        return result

    def _warn_about_cost(self, metrics: Mapping[str, Any], x_shape: tuple[int, ...],
                         n_units: int) -> None:
        """Warn once per metric, before any work, when its forward rows over every unit and
        method are estimated to be very many (the calls themselves do not warn again)."""
        runs = n_units * len(self.xai_methods)
        for name, metric in metrics.items():
            estimate_fn = getattr(metric, "estimated_forward_rows", None)
            if estimate_fn is None or getattr(metric, "disable_warnings", False):
                continue
            try:
                estimate = estimate_fn(x_shape)
            except Exception:  # an estimate must never stop a run
                continue
            _progress.warn_if_costly(
                name, estimate, x_shape[0], x_shape, runs=runs,
                what=f" over {n_units} units x {len(self.xai_methods)} methods", stacklevel=4)

    def _report(self, line: str) -> None:
        """One line per unit under the progress bar (stderr)."""
        _progress.write(line)

    # ------------------------------------------------------------------ preparation
    def prepare(self, model: Any, x: Any, y: Any = None, s: Any = None, *,
                modality: Any = None) -> _State:
        """Wrap the model, validate the data (against ``modality``, default inferred from
        ``x``), and compute the predictions ŷ."""
        wrapper = wrap_model(model)
        if self.model_target is not None:
            wrapper = wrapper.with_options(target=self.model_target)
        if any(isinstance(t, ModelPerturbationTest) for t in self.tests) and \
                type(wrapper).perturbed is ModelWrapper.perturbed:
            raise TypeError(
                f"Model perturbation tests need access to the parameters; a "
                f"{type(wrapper).__name__} has none. Wrap a torch.nn.Module, or meta-evaluate "
                "with input tests only (tests=[t for t in default_suite() if t.space == "
                "'Input'])."
            )
        if self.batch_size is not None:
            wrapper = wrapper.with_options(batch_size=self.batch_size)
        mod = as_modality(modality, x)
        self._check_input_tests(mod)
        xt = mod.check(wrapper.prepare(x), dtype=wrapper.dtype)
        n = xt.shape[0]
        yt = None if y is None else check_labels(as_tensor(y, "y", device=wrapper.device), n)
        st = None
        if s is not None:
            st = as_tensor(s, "s", device=wrapper.device)
            if st.shape[0] != n:
                raise ValueError(f"`s` must have one mask per sample ({n}); got {st.shape}.")
        out = wrapper.predict(xt)
        if out.ndim != 2 and isinstance(wrapper.target, ClassTarget):
            raise ValueError("MetaEvaluation needs a classifier: the model's outputs must have "
                             f"shape (N, classes); got {tuple(out.shape)}. For other outputs "
                             "give a model_target= (e.g. SegmentationTarget()).")
        y_pred = wrapper.target.predict(out)
        if self.target == "label":
            if yt is None:
                raise ValueError("target='label' needs the labels `y`.")
            target = yt
        else:
            target = y_pred
        return _State(
            wrapper=wrapper, x=xt, y_true=yt, y_pred=y_pred, target=target, s=st,
            keys=_rng.sample_keys(xt, self.seed),
            data_range=(float(xt.min()), float(xt.max())),
            modality=mod,
        )

    def _check_input_tests(self, modality: Modality) -> None:
        """Refuse input tests the data cannot take, before any work: additive noise on
        token ids (an input test needs a token-dropout ``drop_rate`` there)."""
        if modality.additive_noise:
            return
        missing = [t.name for t in self.tests
                   if isinstance(t, InputPerturbationTest) and t.drop_rate is None]
        if missing:
            raise ValueError(
                f"{', '.join(missing)}: additive input noise is not defined for "
                f"{modality.name} inputs ({modality.layout}). Give each input test a "
                "token-dropout rate, e.g. InputPerturbationTest('Resilience', drop_rate=0.05) "
                "and InputPerturbationTest('Adversary', drop_rate=0.5) (each token replaced "
                "by the mask token with that probability, evalkit.perturb.TokenDropout), or "
                "meta-evaluate with model tests only (tests=[t for t in default_suite() if "
                "t.space == 'Model'])."
            )

    def _explained_methods(self) -> list[Any]:
        """The method each display name explains with (``kwargs["method"]``, else the name
        itself), in order: applicability looks these up, so ``{"C1": {"method":
        "Constant"}}`` is treated as the Constant control it is."""
        return [kw.get("method", name) for name, kw in self.xai_methods.items()]

    def _seed(self, *labels: Any) -> int:
        return _rng.derive_seed(self.seed, *labels) & ((1 << 62) - 1)

    def _explain(self, state: _State, model: ModelWrapper, x: torch.Tensor, method: str,
                 unit: tuple, target: torch.Tensor | None = None) -> torch.Tensor:
        target = state.target if target is None else target
        kw = dict(self.xai_methods[method])
        name = kw.pop("method", method)
        if self.explain_fn is not None:
            return as_tensor(self.explain_fn(model.model, x, target, method=name, **kw),
                             "explanation", device=x.device)
        if "seed" not in kw and _stochastic(name):
            kw["seed"] = self._seed("explain", method, *(unit if self.randomness ==
                                                         "independent" else ()))
        return evalkit.explain(model, x, target, method=name, **kw)

    def _score(self, state: _State, name: str, metric: Any, model: ModelWrapper,
               x: torch.Tensor, a: torch.Tensor, method: str, unit: tuple,
               reasons: Counter, idx: torch.Tensor | None = None,
               positions: dict[int, str] | None = None) -> np.ndarray:
        kw = dict(self.xai_methods[method])
        explain_name = kw.pop("method", method)
        seed_labels = ("metric", seed_label(name, metric), method,
                       *(unit if self.randomness == "independent" else ()))
        m = metric
        if getattr(metric, "stochastic", False) or getattr(metric, "re_explains", False):
            m = metric.clone().set_params(seed=self._seed(*seed_labels))
        if self.explain_fn is not None:
            explain_kwargs = {"method": explain_name, **kw}
            explain_fn = self.explain_fn
        else:
            if _stochastic(explain_name) and "seed" not in kw:
                kw["seed"] = self._seed("metric-explain", *seed_labels[1:])
            explain_kwargs = {"method": explain_name, **kw}
            explain_fn = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedScoreWarning)
            warnings.simplefilter("ignore", _progress.CostWarning)  # warned once, up front
            target = state.target if idx is None else state.target[idx]
            s = state.s if idx is None or state.s is None else state.s[idx]
            scores = m(model, x, target, a, s=s, explain_fn=explain_fn,
                       explain_kwargs=explain_kwargs, batch_size=self.batch_size,
                       modality=state.modality)
        got = getattr(m, "nan_reasons_", {})
        for r in got.values():
            reasons[r] += 1
        if positions is not None:
            where = None if idx is None else idx.cpu().numpy()
            positions.update({int(i if where is None else where[i]): r for i, r in got.items()})
        return np.asarray(scores, dtype=np.float64)

    # ------------------------------------------------------------------ units
    def clean_explanation(self, state: _State, method: str) -> torch.Tensor:
        """The explanation of the unperturbed input by ``method`` (computed once)."""
        if method not in state.explanations:
            t0 = time.perf_counter()
            state.explanations[method] = self._explain(state, state.wrapper, state.x, method,
                                                       ("unperturbed",))
            state.timings["explain"] += time.perf_counter() - t0
        return state.explanations[method]

    def run_unperturbed(self, state: _State, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """The unperturbed unit: an explanation per method (kept on ``state``) and the scores
        ``{metric: (L, N)}``."""
        t0 = time.perf_counter()
        with forward_cache():
            # like a perturbation unit: metrics share forward passes and robustness metrics
            # with the same seed scope their re-explanations; the cache ends with the unit
            out = self._unperturbed_scores(state, metrics)
        if self.progress:
            self._report(f"[metaeval] unperturbed: {time.perf_counter() - t0:.2f} s")
        return out

    def _unperturbed_scores(self, state: _State, metrics: Mapping[str, Any]) -> dict[str, Any]:
        unit = ("unperturbed",)
        scores, reasons, positions = {}, {}, {}
        n = state.x.shape[0]
        for name, metric in metrics.items():
            t1 = time.perf_counter()
            counter: Counter = Counter()
            pos: dict[str, dict[int, str]] = {m: {} for m in self.xai_methods}
            if isinstance(metric, ReferenceEstimator):
                q = metric.unperturbed((len(self.xai_methods), n),
                                       self._seed("reference", name))
            elif getattr(metric, "needs_masks", False) and state.s is None:
                q = np.full((len(self.xai_methods), n), np.nan)
                counter["the metric needs masks `s`"] += len(self.xai_methods) * n
                pos = {m: dict.fromkeys(range(n), "the metric needs masks `s`")
                       for m in self.xai_methods}
            else:
                q = np.stack([
                    self._score(state, name, metric, state.wrapper, state.x,
                                self.clean_explanation(state, m), m, unit, counter,
                                positions=pos[m])
                    for m in self.xai_methods
                ])
            scores[name] = q
            reasons[name] = dict(counter)
            positions[name] = pos
            state.timings[f"score:{name}"] += time.perf_counter() - t1
        return {"scores": scores, "nan_reasons": reasons, "nan_positions": positions,
                "has_masks": state.s is not None, "y_pred": _prediction_record(state.y_pred)}

    def _perturbed_input(self, state: _State, test: InputPerturbationTest,
                         t: int, k: int) -> torch.Tensor:
        """The input test's perturbed batch, valid for the data's modality: uniform noise
        through :meth:`~evalkit.modality.Modality.valid_noise` (a table with a column spec
        gets a :class:`~evalkit.perturb.ColumnNoise`: one-hot rows stay one-hot, ordinal
        columns on their levels, ``clip`` on the continuous columns only), or on token ids
        token dropout at the test's ``drop_rate`` (:class:`~evalkit.perturb.TokenDropout`,
        the modality's mask token; ``clip`` does not apply)."""
        keys = _rng.combine(state.keys, self._seed("input", test.name, t, k))
        modality = state.modality if state.modality is not None else as_modality(None, state.x)
        if not modality.additive_noise:
            if test.drop_rate is None:
                self._check_input_tests(modality)
            return TokenDropout(test.drop_rate)(state.x, keys, modality=modality)
        noise = modality.valid_noise(UniformNoise(lower_bound=test.noise))
        if test.clip == "data":
            return noise(state.x, keys, clip=state.data_range)
        if test.clip == "metaquantus":  # MetaQuantus: clip(x̂, min(x), max(x̂))
            return noise(state.x, keys, clip=(state.data_range[0], math.inf))
        if test.clip is None:
            return noise(state.x, keys)
        return noise(state.x, keys, clip=test.clip)

    def run_perturbation(self, state: _State, metrics: Mapping[str, Any],
                         test: PerturbationTest, t: int, k: int,
                         unperturbed: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """One perturbation unit: ``{"y_pred": (N,), "mask": (N,), "scores": {metric: (L, N)}}``.

        Metrics for which the test is not applicable are not scored (NaN). Reference
        estimators need the unperturbed scores (``unperturbed``, from :meth:`run_unperturbed`).
        """
        t0 = time.perf_counter()
        unit = (test.name, t, k)
        methods = list(self.xai_methods)
        explained = self._explained_methods()
        todo = {n: m for n, m in metrics.items()
                if applicability(m, test, explained,
                                 custom_explainer=self.explain_fn is not None)[0]
                and not (getattr(m, "needs_masks", False) and state.s is None)}
        n, l_ = state.x.shape[0], len(methods)
        with forward_cache():
            # one cache per unit: a perturbed copy lives for the whole unit, so cached rows
            # can never be confused with another copy's
            if isinstance(test, ModelPerturbationTest):
                ctx = state.wrapper.perturbed(test.noise_type, test.mean, test.std,
                                              seed=self._seed("model", test.name, t, k))
                with ctx as model:
                    x = state.x
                    y_hat = model.target.predict(model.predict(x))
                    scores, reasons, positions = self._score_unit(
                        state, todo, model, x, unit, explain=True, unperturbed=unperturbed,
                        keep=self._kept(test, y_hat, state))
            else:
                model = state.wrapper
                x = self._perturbed_input(state, test, t, k)
                y_hat = model.target.predict(model.predict(x))
                scores, reasons, positions = self._score_unit(
                    state, todo, model, x, unit, explain=test.re_explain,
                    unperturbed=unperturbed, keep=self._kept(test, y_hat, state))
        for name in metrics:
            if name not in scores:
                scores[name] = np.full((l_, n), np.nan)
                reasons[name] = {}
                positions[name] = {m: {} for m in methods}
        changed = (~state.wrapper.target.agree(y_hat, state.y_pred)).cpu().numpy()
        state.timings["perturbation"] += time.perf_counter() - t0
        if self.progress:
            self._report(f"[metaeval] {test.name} t={t} k={k}: "
                         f"{time.perf_counter() - t0:.2f} s, "
                         f"{int(changed.sum())}/{n} predictions changed")
        return {"y_pred": _prediction_record(y_hat), "mask": test.keeps(changed),
                "scores": scores, "nan_reasons": reasons, "nan_positions": positions}

    def _kept(self, test: PerturbationTest, y_hat: torch.Tensor, state: _State
              ) -> torch.Tensor | None:
        """Indices of the samples the test's mask keeps, or None for all of them (or when
        ``score_all`` is set, or a custom explain function may depend on the batch)."""
        if self.score_all or self.explain_fn is not None:
            return None
        keep = test.keeps(~state.wrapper.target.agree(y_hat, state.y_pred))
        if bool(keep.all()):
            return None
        return keep.nonzero().flatten()

    def _score_unit(self, state: _State, metrics: Mapping[str, Any], model: ModelWrapper,
                    x: torch.Tensor, unit: tuple, *, explain: bool,
                    unperturbed: Mapping[str, Any] | None,
                    keep: torch.Tensor | None = None,
                    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, int]],
                               dict[str, dict[str, dict[int, str]]]]:
        real = {n: m for n, m in metrics.items() if not isinstance(m, ReferenceEstimator)}
        n = x.shape[0]
        if keep is not None:
            # Only the kept samples enter the criteria. evalkit's explanations and metrics are
            # per sample (a sample's result does not depend on its batch), so scoring the kept
            # subset gives exactly their scores; the others stay NaN.
            x = x[keep]
        explanations: dict[str, torch.Tensor] = {}
        if real and x.shape[0]:
            t0 = time.perf_counter()
            target = state.target if keep is None else state.target[keep]
            for method in self.xai_methods:
                if explain:
                    explanations[method] = self._explain(state, model, x, method, unit, target)
                else:
                    clean = self.clean_explanation(state, method)
                    explanations[method] = clean if keep is None else clean[keep]
            state.timings["explain"] += time.perf_counter() - t0
        scores, reasons, positions = {}, {}, {}
        for name, metric in metrics.items():
            t1 = time.perf_counter()
            counter: Counter = Counter()
            pos: dict[str, dict[int, str]] = {m: {} for m in self.xai_methods}
            if isinstance(metric, ReferenceEstimator):
                if unperturbed is None:
                    raise ValueError("Reference estimators need the unperturbed scores: pass "
                                     "`unperturbed=` (the result of run_unperturbed).")
                scores[name] = metric.perturbed(unperturbed["scores"][name],
                                                self._seed("reference", name), *unit)
            elif x.shape[0] == 0:
                scores[name] = np.full((len(self.xai_methods), n), np.nan)
            else:
                q = np.stack([
                    self._score(state, name, metric, model, x, explanations[m], m, unit,
                                counter, keep, positions=pos[m])
                    for m in self.xai_methods
                ])
                if keep is not None:
                    full = np.full((q.shape[0], n), np.nan)
                    full[:, keep.cpu().numpy()] = q
                    q = full
                scores[name] = q
            reasons[name] = dict(counter)
            positions[name] = pos
            state.timings[f"score:{name}"] += time.perf_counter() - t1
        return scores, reasons, positions

    # ------------------------------------------------------------------ assembling
    def assemble(self, metrics: Mapping[str, Any], state_or_info: Any,
                 unperturbed: Mapping[str, Any], units: Mapping[tuple, Mapping[str, Any]],
                 *, dataset: str = "", model: str = "") -> RunBlock:
        """Collect the units into a :class:`~metaeval.results.RunBlock`."""
        n_i, n_k = self.iterations, self.nr_perturbations
        methods = list(self.xai_methods)
        masks, preds = {}, {}
        for test in self.tests:
            masks[test.name] = np.stack([np.stack([
                np.asarray(units[(test.name, t, k)]["mask"], dtype=bool) for k in range(n_k)])
                for t in range(n_i)])
            preds[test.name] = np.stack([np.stack([
                np.asarray(units[(test.name, t, k)]["y_pred"]) for k in range(n_k)])
                for t in range(n_i)])
        explained = self._explained_methods()
        records = {}
        for name, metric in metrics.items():
            applicable = {}
            for test in self.tests:
                ok, why = applicability(metric, test, explained,
                                        custom_explainer=self.explain_fn is not None)
                if ok and getattr(metric, "needs_masks", False) and \
                        unperturbed.get("has_masks", True) is False:
                    ok, why = False, "the metric needs masks `s`"
                applicable[test.name] = (ok, why)
            q_hat = {test.name: np.stack([np.stack([
                np.asarray(units[(test.name, t, k)]["scores"][name], dtype=np.float64)
                for k in range(n_k)]) for t in range(n_i)]) for test in self.tests}
            reasons: Counter = Counter(unperturbed.get("nan_reasons", {}).get(name, {}))
            for u in units.values():
                reasons.update(u.get("nan_reasons", {}).get(name, {}))
            records[name] = MetricRecord(
                name=name,
                family=str(getattr(metric, "family", "") or ""),
                higher_is_better=_direction(metric, name),
                description=repr(metric),
                q_star=np.asarray(unperturbed["scores"][name], dtype=np.float64),
                q_hat=q_hat,
                applicable=applicable,
                nan_reasons=dict(reasons),
            )
        y_true = None
        timings: dict[str, float] = {}
        if isinstance(state_or_info, _State):
            y_true = None if state_or_info.y_true is None else \
                state_or_info.y_true.cpu().numpy()
            timings = dict(state_or_info.timings)
        return RunBlock(
            dataset=dataset, model=model, tests=list(self.tests), methods=methods,
            iterations=n_i, nr_perturbations=n_k,
            y_pred=np.asarray(unperturbed["y_pred"]), y_true=y_true,
            masks=masks, y_pred_perturbed=preds, metrics=records, timings=timings,
            keep_scores=self.keep_scores,
        )


def _prediction_record(pred: torch.Tensor) -> np.ndarray:
    """The (N,) predictions a result records: the classes, or -1 per sample for predictions
    that are not one class per sample (segmentation maps, embeddings)."""
    if pred.ndim == 1 and not pred.is_floating_point():
        return pred.cpu().numpy()
    return np.full(pred.shape[0], -1, dtype=np.int64)


def _stochastic(method: str) -> bool:
    try:
        from evalkit.explain import explainer_info

        return bool(explainer_info(method).stochastic)
    except (ValueError, TypeError):
        return False


def _aliases(x: Any, y: Any, s: Any, kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    names = {"x_batch": "x", "y_batch": "y", "s_batch": "s"}
    vals = {"x": x, "y": y, "s": s}
    for key, value in kwargs.items():
        if key not in names:
            raise TypeError(f"MetaEvaluation() got an unexpected keyword `{key}`.")
        if vals[names[key]] is not None:
            raise TypeError(f"Got both `{names[key]}` and its Quantus alias `{key}`.")
        vals[names[key]] = value
    if vals["x"] is None:
        raise TypeError("MetaEvaluation() missing the inputs `x`.")
    return vals["x"], vals["y"], vals["s"]
