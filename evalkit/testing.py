"""Conformance checks for metrics: does a metric keep the promises of the metric protocol?

In the spirit of scikit-learn's ``check_estimator`` / ``parametrize_with_checks`` and
torchmetrics' ``MetricTester``: every check is a small named function that calls the metric on
tiny, deterministic fixtures (a model, inputs, labels, attributions and masks per input
modality) and compares what it returns under a change that must not matter.

>>> from evalkit.testing import check_metric
>>> check_metric(MyMetric(n_steps=4))          # doctest: +SKIP
[CheckResult(name='protocol', passed=True, message=''), ...]

and in a test module, one test per (metric, check):

    from evalkit.testing import parametrize_with_checks

    @parametrize_with_checks([MyMetric(n_steps=4), MyOtherMetric])
    def test_conformance(metric, check):
        check(metric)

The checks (:data:`CHECKS`, in this order; each is skipped with the reason where it does not
apply):

* ``protocol``: the call returns a float64 ndarray (N,); ``scores_`` equals it;
  ``nan_reasons_`` names a reason for exactly the NaN samples; ``seed_`` is the seed used;
  ``aggregate`` gives ``aggregate(scores)``.
* ``per_sample_independence``: a sample's score alone equals its score in the batch (not for
  ``set_level`` metrics).
* ``permutation_equivariance``: permuting the batch permutes the scores (set-level metrics too:
  the set is the same).
* ``batch_size_invariance``: ``batch_size`` 1, 2 and N (the runner's and the explainer's
  chunks) give the scores of the default.
* ``chunk_invariance``: scoring the batch in pieces (as :func:`evalkit.evaluate` does with
  ``chunk_size``) and concatenating gives the scores of one call (not for ``set_level``
  metrics).
* ``seeded_determinism``: the same seed gives identical scores; with ``seed=None`` the recorded
  ``seed_`` reproduces them.
* ``declared_stochasticity``: a ``stochastic`` metric gives different scores (or
  ``curves_``) under one of :data:`STOCHASTIC_SEEDS` other seeds; any other metric gives the
  same scores and curves under another seed.
* ``no_mutation``: the call leaves the model (parameters, buffers, ``.grad``,
  ``requires_grad``, training flags, hooks), the inputs ``x``, ``y``, ``a``, ``s`` (NumPy and
  torch), the metric's parameters and the global random generators (``random``, NumPy, torch)
  unchanged.
* ``nan_with_reason``: a NaN in one attribution row makes that sample NaN with a reason and
  leaves the others' scores unchanged (set-level metrics: only the first part); constant and
  all-zero maps give finite scores or NaN with a reason, never an exception.
* ``clone_and_params``: ``clone()``, ``type(m)(**m.get_params())`` and ``set_params(seed=...)``
  give metrics with the expected parameters (``set_params`` is checked against its documented
  result only, not for copying or updating in place) that score like the original; ``repr``
  works.
* ``metadata``: the metadata read on the instance (``higher_is_better``, ``stochastic``,
  ``set_level``, ``modalities``, ...) equal what ``metric.metadata()`` and the store
  (:meth:`evalkit.evaluate.Evaluation.metric_info`, which results, leaderboards and metaeval
  read) report for it, and a clone's; a call leaves them unchanged; for a registered class,
  the row of :func:`evalkit.metrics.list_metrics` (one per class) equals a default
  instance's.
* ``modality_applicability``: on the fixture of every modality the metric does not declare
  (``metric.modalities``), the call raises a ``ValueError`` that names the metric (not another
  exception, not the model's own error, and no scores); run once per metric, with its first
  declared modality.
* ``device_and_dtype``: NumPy and torch inputs, float64 inputs (cast to the model's dtype) and
  float32 attributions give the same scores; a float64 copy of the model close ones (not for
  stochastic metrics, whose draws depend on the dtype); on a machine with CUDA, the model and
  inputs on the GPU give a NumPy array close to the CPU scores (stochastic metrics: close to
  another CUDA call, since random streams are equal per device type only). On token ids,
  int32 ids stand in for float64 inputs.

Besides these per-fixture checks, *metric checks* judge a whole metric and run only when asked
for by name in ``checks`` (never by default, so the conformance suite keeps its cost): other
packages register them with :func:`register_check`, or declare them under the entry-point group
:data:`CHECKS_ENTRY_POINT_GROUP` (loaded the first time an unknown check is requested).
``metaeval.validity`` registers ``"validity"`` when it is imported: a direction-sanity check on
its known-mechanism testbeds, whose message is the metric's validity report card
(``check_metric(m, checks=[*CHECKS, "validity"])``, or ``checks="all"``; see
``docs/validity.md``).

Fixtures are registered per modality (:func:`register_fixture`) and built once per process;
built in: ``"image"`` (3x8x8, a small CNN with batch norm), ``"series"`` (2 channels x 16
steps, a 1-D CNN), ``"tabular"`` (:data:`TABULAR_FEATURES` columns, an MLP) and ``"tokens"``
(int64 ids (N, :data:`TOKENS_LENGTH`) from a vocabulary of :data:`TOKENS_VOCABULARY`, a
mean-of-embeddings classifier whose layer ``embedding`` returns (N, L, 8); attributions are
the tokens' exact shares of the target logit). A
metric is checked on the modalities its instance declares (``metric.modalities``: they may
depend on its parameters, e.g. ``ROAD(imputer=...)``). Metric classes are instantiated with
their ``conformance_params()`` classmethod if they define one, else with the cheap settings in
:data:`CHEAP_PARAMS` (evalkit's own metrics), else with their defaults.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import unittest
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._validation import UndefinedScoreWarning
from .metrics import Metric

__all__ = [
    "CHEAP_PARAMS",
    "CHECKS",
    "CHECKS_ENTRY_POINT_GROUP",
    "METADATA_FIELDS",
    "METRIC_CHECKS",
    "STOCHASTIC_SEEDS",
    "TABULAR_FEATURES",
    "TOKENS_LENGTH",
    "TOKENS_VOCABULARY",
    "CheckResult",
    "Fixture",
    "cheap_metric",
    "check_metric",
    "get_fixture",
    "parametrize_with_checks",
    "register_check",
    "register_fixture",
    "run_check",
    "run_metric_check",
]

#: the seed every check runs with, unless it varies the seed on purpose
SEED = 0
#: tolerances for scores that must be equal up to float32 rounding (the model's outputs differ
#: in their last bits with the size of a forward batch)
RTOL, ATOL = 1e-4, 1e-6
#: tolerances for a float64 copy of the model against the float32 model
RTOL_DTYPE, ATOL_DTYPE = 1e-3, 1e-4

#: cheap settings for evalkit's own metrics, so the suite stays fast on the tiny fixtures
CHEAP_PARAMS: dict[str, dict[str, Any]] = {
    "PixelFlipping": {"features_in_step": 2},
    "Deletion": {"n_steps": 8},
    "Insertion": {"n_steps": 8, "blur_kernel_size": 3, "blur_sigma": 1.0},
    "RegionPerturbation": {"patch_size": 2, "regions_evaluation": 4},
    "Selectivity": {"patch_size": 2},
    "IROF": {"segmentation_kwargs": {"n_segments": 8}},
    "Monotonicity": {"features_in_step": 4},
    # two features a step: a rank correlation over 8 steps of a 16-step series, not 4, so
    # the scores change with the seed of the uniform baseline
    "MonotonicityCorrelation": {"nr_samples": 3, "features_in_step": 2},
    "SensitivityN": {"features_in_step": 4, "nr_subsets": 4},
    "FaithfulnessCorrelation": {"nr_runs": 8, "subset_size": 4},
    "FaithfulnessEstimate": {"features_in_step": 4},
    "Infidelity": {"n_perturb_samples": 3, "perturb_patch_sizes": (2,)},
    "ROAD": {"percentages": (20, 50, 80), "score": "confidence"},
    "Sufficiency": {"distance_func": "euclidean", "threshold": 0.9},
    "Consistency": {"discretise_func": "top_n", "n": 1},
    "AvgSensitivity": {"nr_samples": 2},
    "MaxSensitivity": {"nr_samples": 2},
    "LocalLipschitzEstimate": {"nr_samples": 2},
    "RelativeInputStability": {"nr_samples": 2},
    "RelativeOutputStability": {"nr_samples": 2},
    "RelativeRepresentationStability": {"nr_samples": 2, "layer_names": "all"},
    "Continuity": {"nr_steps": 3},
    "TopKIntersection": {"k": 8},
    "SmoothMPRT": {"nr_samples": 2},
    "AOPC": {"features_in_step": 4},
    "SoftComprehensiveness": {"nr_samples": 2},
    "SoftSufficiency": {"nr_samples": 2},
}

#: how many other seeds ``declared_stochasticity`` tries before it calls a stochastic metric
#: deterministic
STOCHASTIC_SEEDS = 5

_PERMUTATION = (2, 0, 3, 1)  # a derangement of the 4 fixture samples


# ============================================================================ results
@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``passed`` is True for a passed or skipped check."""

    name: str
    passed: bool
    message: str = ""
    skipped: bool = False
    modality: str = "image"
    #: what a metric check produced besides the message (the ``"validity"`` check: the
    #: :class:`metaeval.validity.ValidityReport`); None for the per-fixture checks
    details: Any = dataclasses.field(default=None, compare=False, repr=False)


# ============================================================================ fixtures
@dataclass(frozen=True, eq=False)
class Fixture:
    """Tiny deterministic data for one modality: a model, inputs ``x`` (N, ...), labels ``y``
    (N,), attributions ``a`` aligned with ``x`` and boolean masks ``s``."""

    modality: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    a: torch.Tensor
    s: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


_FIXTURE_BUILDERS: dict[str, Callable[[], Fixture]] = {}
_FIXTURES: dict[str, Fixture] = {}


def register_fixture(modality: str, builder: Callable[[], Fixture]) -> None:
    """Register how to build the fixture of a modality (built on first use, then reused).

    The builder must be deterministic and fast; the checks assume 4 samples, at least two
    features per sample and attributions without ties."""
    _FIXTURE_BUILDERS[modality] = builder
    _FIXTURES.pop(modality, None)


def get_fixture(modality: str) -> Fixture:
    """The (cached) fixture of a modality."""
    if modality not in _FIXTURES:
        if modality not in _FIXTURE_BUILDERS:
            raise KeyError(f"No conformance fixture for modality {modality!r}; known: "
                           f"{sorted(_FIXTURE_BUILDERS)}. Add one with register_fixture().")
        _FIXTURES[modality] = _FIXTURE_BUILDERS[modality]()
    return _FIXTURES[modality]


class _TinyCNN(nn.Module):
    """3x8x8 images, 3 classes; batch norm and dropout make training flags matter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.drop = nn.Dropout(0.25)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1)))


#: columns of the tabular fixture: wide enough for the default windows and top-k of the
#: metrics (RandomLogit's SSIM window of 7, TopKIntersection's k)
TABULAR_FEATURES = 12
#: tokens of the token fixture, and the vocabulary they are drawn from
TOKENS_LENGTH, TOKENS_VOCABULARY = 12, 20


class _TinyMLP(nn.Module):
    """(N, 12) tables, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(TABULAR_FEATURES, 8)
        self.drop = nn.Dropout(0.25)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


class _TinyConv1d(nn.Module):
    """(N, 2, 16) series, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool1d(2)
        self.drop = nn.Dropout(0.25)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.pool(torch.relu(self.conv(x))).flatten(1)))


class _TinyEmbeddingBag(nn.Module):
    """(N, 12) int64 token ids from a vocabulary of 20, 3 classes: the mean of the tokens'
    embeddings, then a linear head. The embedding layer returns one vector per token, (N, L,
    8), so that metrics hooking an embedding layer (``embedding_layer="embedding"``) apply; the
    weights are those of an ``nn.EmbeddingBag`` built with the same seed."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(TOKENS_VOCABULARY, 8)
        self.drop = nn.Dropout(0.25)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.embedding(x).mean(1)))

    def token_contributions(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each token's exact share of the target logit (N, L) (the logit is the bias plus
        their sum)."""
        weights = self.fc.weight[y]  # (N, 8)
        return torch.einsum("nld,nd->nl", self.embedding.weight[x], weights) / x.shape[1]


def _build(modality: str, make_model: Callable[[], nn.Module], x_shape: tuple[int, ...],
           s_shape: tuple[int, ...]) -> Fixture:
    """Seeded weights and data; the model in evaluation mode except its top module (mixed
    flags on purpose: a metric must restore each module's own flag); attributions are the
    model's Saliency maps (the explainer the re-explaining checks use), so their layout is
    the one re-explanations have."""
    from .explain import explain

    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = make_model()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.3, 0.3, generator=g)
                module.running_var.uniform_(0.5, 1.5, generator=g)
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        # zero-sum class weights, no bias: the prediction depends on the input, not on the
        # positive mean of the pooled features
        head.bias.zero_()
        head.weight.sub_(head.weight.mean(1, keepdim=True)).mul_(4)
    model.eval()
    # four inputs predicted as different classes where the model allows; the labels are the
    # predictions except for the last sample (correct and wrong predictions both occur)
    if modality == "tokens":
        pool = torch.stack([torch.randperm(TOKENS_VOCABULARY, generator=g)[:x_shape[0]]
                            for _ in range(32)])
    else:
        pool = torch.randn(32, *x_shape, generator=g)
    with torch.no_grad():
        pred = model(pool).argmax(1)
    first = [int((pred == c).nonzero()[0]) for c in pred.unique().tolist()]
    chosen = (first + [i for i in range(32) if i not in first])[:4]
    x = pool[chosen].clone()
    y = pred[chosen].clone()
    y[3] = (y[3] + 1) % int(head.out_features)
    model.training = True  # the top module only: mixed flags, which a metric must restore
    if modality == "tokens":
        with torch.no_grad():
            a = model.token_contributions(x, y).to(torch.float64)
    else:
        a = explain(model, x, y, "Saliency")
    s = torch.zeros(4, *s_shape, dtype=torch.bool)
    flat = s.reshape(4, -1)
    size = flat.shape[1]
    for i in range(4):  # a block of about a third of the features, at a different place each
        start = (i * size) // 5
        flat[i, start : start + max(1, size // 3)] = True
    return Fixture(modality, model, x, y, a, flat.reshape(s.shape))


def _build_tokens() -> Fixture:
    """Token ids without repeats within a sequence (so the attributions have no ties); the
    attributions are the tokens' exact contributions to the target logit (token ids have no
    gradient: only model-free metrics and those re-explaining with an explainer that handles
    ids apply to tokens)."""
    return _build("tokens", _TinyEmbeddingBag, (TOKENS_LENGTH,), (TOKENS_LENGTH,))


register_fixture("image", lambda: _build("image", _TinyCNN, (3, 8, 8), (1, 8, 8)))
register_fixture("tabular", lambda: _build("tabular", _TinyMLP, (TABULAR_FEATURES,),
                                           (TABULAR_FEATURES,)))
register_fixture("series", lambda: _build("series", _TinyConv1d, (2, 16), (1, 16)))
register_fixture("tokens", _build_tokens)


# ============================================================================ instances
def cheap_metric(metric: type[Metric] | str, **params: Any) -> Metric:
    """An instance of a metric class with cheap settings for the checks: the class's
    ``conformance_params()`` if it defines that classmethod, else :data:`CHEAP_PARAMS` for
    evalkit's own metrics; ``params`` override them."""
    from .metrics import get

    cls = get(metric) if isinstance(metric, str) else metric
    hook = getattr(cls, "conformance_params", None)
    base = dict(hook()) if callable(hook) else dict(CHEAP_PARAMS.get(cls.__name__, {}))
    base.update(params)
    return cls(**base)


def _as_instance(metric: Metric | type[Metric]) -> Metric:
    return cheap_metric(metric) if isinstance(metric, type) else metric


def _modalities(metric: Metric) -> tuple[str, ...]:
    """The modalities the instance declares (its own: they may depend on its parameters)."""
    declared = metric.modalities
    if isinstance(declared, str):
        declared = (declared,)
    return tuple(str(getattr(m, "name", m)) for m in declared)


# ============================================================================ the context
class _Context:
    """One metric on one modality's fixture: prepared copies, calls, a cached reference."""

    def __init__(self, metric: Metric, modality: str) -> None:
        self.original = metric
        self.modality = modality
        self.fixture = get_fixture(modality)
        self.name = type(metric).__name__

    # ---- metrics
    def metric(self, seed: int | None = SEED, **attrs: Any) -> Metric:
        """A deep copy of the metric with a fixed seed and no aggregation: the checks vary
        one thing at a time on copies, so the caller's instance is never touched (the copy's
        parameters are set as attributes, not through ``set_params``, which one check tests
        on its own)."""
        m = copy.deepcopy(self.original)
        m.seed = seed
        m.aggregate = None
        m.progress = False
        for k, v in attrs.items():
            setattr(m, k, v)
        return m

    def model(self) -> nn.Module:
        return copy.deepcopy(self.fixture.model)

    # ---- calls
    def call_kwargs(self, metric: Metric) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if getattr(metric, "re_explains", False):
            from .explain import explain

            kwargs["explain_fn"] = explain
            # on the token fixture (embedding, mean, linear) the embedding gradient is the same
            # for every token: a constant map; InputXGradient gives each token's contribution
            method = "InputXGradient" if self.fixture.modality == "tokens" else "Saliency"
            kwargs["explain_kwargs"] = {"method": method}
        return kwargs

    def inputs(self, index: Sequence[int] | slice | None = None) -> dict[str, torch.Tensor]:
        """Fresh copies of the fixture's tensors (a metric that writes into them cannot spoil
        the next call), optionally a subset of the samples."""
        fx = self.fixture
        out = {"x": fx.x, "y": fx.y, "a": fx.a, "s": fx.s}
        if index is not None:
            idx = torch.as_tensor(index) if not isinstance(index, slice) else index
            out = {k: v[idx] for k, v in out.items()}
        return {k: v.clone() for k, v in out.items()}

    def call(self, metric: Metric | None = None, model: Any = None,
             inputs: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """The raw result of one call (no conversion)."""
        metric = self.metric() if metric is None else metric
        model = self.model() if model is None else model
        data = dict(self.inputs() if inputs is None else inputs)
        kw = {**self.call_kwargs(metric), **kwargs}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedScoreWarning)
            return metric(model, data["x"], data["y"], data["a"], s=data["s"], **kw)

    def scores(self, *args: Any, **kwargs: Any) -> np.ndarray:
        """The scores of one call as a flat float64 array (the checks other than
        ``protocol`` do not depend on the return type)."""
        return np.asarray(self.call(*args, **kwargs), dtype=np.float64).reshape(-1)

    def reference(self) -> np.ndarray:
        """The scores of the plain call (seed :data:`SEED`), computed once per metric object,
        parameter values and modality."""
        try:
            cache = _REFERENCES.setdefault(self.original, {})
            key = (self.modality, repr(self.original.get_params()))
        except Exception:  # unhashable, not weak-referenceable or broken get_params: no cache
            cache, key = {}, None
        if key not in cache:
            cache[key] = self.scores()
        return cache[key].copy()


_REFERENCES: weakref.WeakKeyDictionary[Metric, dict[Any, np.ndarray]] = (
    weakref.WeakKeyDictionary())


def _skip(reason: str) -> None:
    raise unittest.SkipTest(reason)


def _differs(got: np.ndarray, want: np.ndarray, rtol: float = RTOL, atol: float = ATOL) -> str:
    """'' when equal within the tolerances (NaN where NaN), else a description."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return f"shape {got.shape} instead of {want.shape}"
    same_nan = np.isnan(got) == np.isnan(want)
    close = np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True) & same_nan
    if close.all():
        return ""
    bad = np.flatnonzero(~close)
    shown = ", ".join(f"sample {i}: {float(got[i])!r} vs {float(want[i])!r}" for i in bad[:4])
    return f"{bad.size} of {got.size} scores differ ({shown})"


def _fail_if(message: str, what: str) -> None:
    if message:
        raise AssertionError(f"{what}: {message}")


# ============================================================================ the checks
def check_protocol(ctx: _Context) -> None:
    n = ctx.fixture.n
    metric = ctx.metric()
    out = ctx.call(metric)
    if not isinstance(out, np.ndarray):
        raise AssertionError(f"the call returned a {type(out).__name__}, not a numpy.ndarray")
    if out.shape != (n,) or out.dtype != np.float64:
        raise AssertionError(f"the call returned {out.dtype} of shape {out.shape}; expected "
                             f"float64 of shape ({n},)")
    scores = getattr(metric, "scores_", None)
    if not isinstance(scores, np.ndarray) or _differs(scores, out, 0.0, 0.0):
        raise AssertionError("`scores_` is not the returned array")
    reasons = getattr(metric, "nan_reasons_", None)
    if not isinstance(reasons, dict):
        raise AssertionError(f"`nan_reasons_` is a {type(reasons).__name__}, not a dict")
    if not all(isinstance(k, int | np.integer) and 0 <= k < n and isinstance(v, str) and v
               for k, v in reasons.items()):
        raise AssertionError(f"`nan_reasons_` must map sample indices to reasons; got {reasons}")
    nan = set(np.flatnonzero(np.isnan(out)).tolist())
    if set(reasons) != nan:
        raise AssertionError(f"NaN samples {sorted(nan)} but `nan_reasons_` names "
                             f"{sorted(reasons)}")
    if getattr(metric, "seed_", None) != SEED:
        raise AssertionError(f"`seed_` is {getattr(metric, 'seed_', None)!r}; the metric was "
                             f"called with seed={SEED}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # np.nanmean of all-NaN scores
        aggregated = ctx.call(ctx.metric(aggregate=np.nanmean))
    if np.ndim(aggregated) != 0:
        raise AssertionError(f"aggregate=np.nanmean returned shape {np.shape(aggregated)}")
    if not np.isnan(out).all():
        _fail_if(_differs(np.reshape(aggregated, 1), np.reshape(np.nanmean(out), 1)),
                 "aggregate=np.nanmean is not the mean of the scores")


def check_per_sample_independence(ctx: _Context) -> None:
    if getattr(ctx.original, "set_level", False):
        _skip("a set-level metric: a sample's score depends on the set by definition")
    ref = ctx.reference()
    alone = np.concatenate([ctx.scores(inputs=ctx.inputs([i])) for i in range(ctx.fixture.n)])
    _fail_if(_differs(alone, ref), "each sample scored alone vs in the batch")


def check_permutation_equivariance(ctx: _Context) -> None:
    n = ctx.fixture.n
    # not a rotation: a metric that compares neighbours in the batch must notice
    perm = list(_PERMUTATION) if n == len(_PERMUTATION) else list(range(n))[::-1]
    got = ctx.scores(inputs=ctx.inputs(perm))
    _fail_if(_differs(got, ctx.reference()[perm]), f"the batch permuted by {perm}")


def check_batch_size_invariance(ctx: _Context) -> None:
    ref = ctx.reference()
    for size in (1, 2, ctx.fixture.n):
        _fail_if(_differs(ctx.scores(batch_size=size), ref), f"batch_size={size} vs the default")


def check_chunk_invariance(ctx: _Context) -> None:
    if getattr(ctx.original, "set_level", False):
        _skip("a set-level metric is scored on the whole set, never in chunks")
    n = ctx.fixture.n
    pieces = [slice(0, 1), slice(1, 3), slice(3, n)]
    got = np.concatenate([ctx.scores(inputs=ctx.inputs(p)) for p in pieces])
    _fail_if(_differs(got, ctx.reference()), "samples scored in chunks [0], [1, 2], [3:]")


def check_seeded_determinism(ctx: _Context) -> None:
    ref = ctx.reference()
    _fail_if(_differs(ctx.scores(), ref, 0.0, 0.0), f"two calls with seed={SEED}")
    fresh = ctx.metric(seed=None)
    first = ctx.scores(fresh)
    used = getattr(fresh, "seed_", None)
    if not isinstance(used, int | np.integer):
        raise AssertionError(f"with seed=None, `seed_` is {used!r}, not the int used")
    _fail_if(_differs(ctx.scores(ctx.metric(seed=int(used))), first, 0.0, 0.0),
             f"seed=None, then seed=seed_ ({used})")


def _scores_and_curves(ctx: _Context, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    metric = ctx.metric(seed=seed)
    scores = ctx.scores(metric)
    curves = getattr(metric, "curves_", None)
    return scores, None if curves is None else np.asarray(curves, dtype=np.float64)


def _same_draws(a: tuple[np.ndarray, np.ndarray | None],
                b: tuple[np.ndarray, np.ndarray | None]) -> bool:
    """Whether two calls gave the same scores and, where exposed, the same curves."""
    same = np.array_equal(a[0], b[0], equal_nan=True)
    if a[1] is not None and b[1] is not None:
        same = same and a[1].shape == b[1].shape and np.array_equal(a[1], b[1], equal_nan=True)
    return same


def check_declared_stochasticity(ctx: _Context) -> None:
    first = _scores_and_curves(ctx, SEED)
    stochastic = bool(getattr(ctx.original, "stochastic", False))
    if stochastic:
        # scores with few distinct values (0/1 accuracies, rank correlations of a few points)
        # can coincide under several seeds on tiny inputs: up to STOCHASTIC_SEEDS other seeds,
        # stopping at the first that changes the scores or the curves the metric exposes
        for k in range(1, STOCHASTIC_SEEDS + 1):
            if not _same_draws(first, _scores_and_curves(ctx, SEED + k)):
                return
        raise AssertionError(
            f"declared stochastic, but seeds {SEED} to {SEED + STOCHASTIC_SEEDS} give "
            f"identical scores {first[0].tolist()}" + ("" if first[1] is None
                                                      else " and curves"))
    else:
        other = _scores_and_curves(ctx, SEED + 1)
        _fail_if(_differs(other[0], first[0], 0.0, 0.0),
                 f"declared not stochastic, but seeds {SEED} and {SEED + 1} give different "
                 "scores")
        if not _same_draws(first, other):
            raise AssertionError(f"declared not stochastic, but seeds {SEED} and {SEED + 1} "
                                 "give different curves_")


def _model_state(model: nn.Module) -> dict[str, Any]:
    def hooks(m: nn.Module) -> tuple:
        names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                 "_backward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks")
        return tuple(tuple(getattr(m, h, {}).keys()) for h in names)

    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "training": {n: m.training for n, m in model.named_modules()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "grad": {n: None if p.grad is None else p.grad.clone()
                 for n, p in model.named_parameters()},
        "hooks": {n: hooks(m) for n, m in model.named_modules()},
        "global_hooks": tuple(len(getattr(nn.modules.module, h, {})) for h in (
            "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")),
        "modules": [n for n, _ in model.named_modules()],
    }


def _state_diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    out = []
    for key in ("training", "requires_grad", "hooks", "global_hooks", "modules"):
        if before[key] != after[key]:
            out.append(f"model {key} changed")
    if before["state"].keys() != after["state"].keys():
        out.append("the model's state_dict keys changed")
    else:
        changed = [k for k in before["state"]
                   if not torch.equal(before["state"][k], after["state"][k])]
        if changed:
            out.append(f"model tensors changed: {changed}")
    grads = [k for k in before["grad"] if not (
        (before["grad"][k] is None and after["grad"].get(k) is None)
        or (before["grad"][k] is not None and after["grad"].get(k) is not None
            and torch.equal(before["grad"][k], after["grad"][k])))]
    if grads:
        out.append(f"parameters' .grad changed: {grads}")
    return out


def _rng_state() -> tuple[Any, ...]:
    legacy = np.random.get_state()[1].copy()  # noqa: NPY002 - the global one must stay as is
    return (random.getstate(), legacy, torch.get_rng_state().clone())


def _rng_changed(before: tuple[Any, ...], after: tuple[Any, ...]) -> list[str]:
    names = ("Python's `random`", "NumPy's global RNG", "torch's global RNG")
    same = (before[0] == after[0], np.array_equal(before[1], after[1]),
            torch.equal(before[2], after[2]))
    return [f"{name} state changed" for name, ok in zip(names, same, strict=True) if not ok]


def check_no_mutation(ctx: _Context) -> None:
    problems: list[str] = []
    for kind in ("torch", "numpy"):
        metric = ctx.metric()
        params = _snapshot_params(metric)
        model = ctx.model()
        first = next(iter(model.parameters()), None)
        if first is not None:  # a gradient the call must neither zero nor accumulate into
            first.grad = torch.full_like(first, 0.5)
        inputs = ctx.inputs()
        if kind == "numpy":
            inputs = {k: v.numpy().copy() for k, v in inputs.items()}
        kept = {k: copy.deepcopy(v) for k, v in inputs.items()}
        model_before = _model_state(model)
        rng_before = _rng_state()
        ctx.call(metric, model, inputs)
        problems += _rng_changed(rng_before, _rng_state())
        problems += _state_diff(model_before, _model_state(model))
        for k, v in inputs.items():
            same = (torch.equal(v, kept[k]) if isinstance(v, torch.Tensor)
                    else np.array_equal(v, kept[k], equal_nan=True))
            if not same:
                problems.append(f"`{k}` ({kind}) was modified")
        changed = _params_diff(params, _snapshot_params(metric))
        if changed:
            problems.append(f"the metric's parameters changed: {changed}")
        if problems:
            break
    if problems:
        raise AssertionError("; ".join(dict.fromkeys(problems)))


def check_nan_with_reason(ctx: _Context) -> None:
    fx = ctx.fixture
    bad = 1
    inputs = ctx.inputs()
    flat = inputs["a"].reshape(fx.n, -1)
    flat[bad, flat.shape[1] // 2] = math.nan
    metric = ctx.metric()
    out = ctx.scores(metric, inputs=inputs)
    reasons = getattr(metric, "nan_reasons_", {})
    if not np.isnan(out[bad]) or not reasons.get(bad):
        raise AssertionError(f"a NaN in attribution row {bad} gave score {out[bad]!r} and "
                             f"reason {reasons.get(bad)!r}; expected NaN with a reason")
    if not getattr(ctx.original, "set_level", False):
        keep = [i for i in range(fx.n) if i != bad]
        _fail_if(_differs(out[keep], ctx.reference()[keep]),
                 f"a NaN in attribution row {bad} changed other samples' scores")
    for what, value in (("constant", 0.5), ("all-zero", 0.0)):
        inputs = ctx.inputs()
        inputs["a"] = torch.full_like(inputs["a"], value)
        metric = ctx.metric()
        try:
            out = ctx.scores(metric, inputs=inputs)
        except Exception as err:
            raise AssertionError(f"{what} attribution maps raised {type(err).__name__}: "
                                 f"{err}") from err
        reasons = getattr(metric, "nan_reasons_", {})
        silent = [i for i in np.flatnonzero(~np.isfinite(out)) if not reasons.get(int(i))]
        if silent:
            raise AssertionError(f"{what} maps gave non-finite scores without a reason for "
                                 f"samples {silent}")


def _same(a: Any, b: Any) -> bool:
    """Parameter equality: arrays and tensors by value, containers element-wise, objects of one
    class without an ``__eq__`` of their own (imputers, noise models) by their attributes,
    other objects by ``==``."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and torch.equal(a.cpu(), b.cpu()))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(
            _same(u, v) for u, v in zip(a, b, strict=True))
    if a is b:
        return True
    if (type(a) is type(b) and type(a).__eq__ is object.__eq__
            and hasattr(a, "__dict__") and hasattr(b, "__dict__")):
        # identity equality says nothing about a copy: compare what the objects hold
        return _same(vars(a), vars(b))
    try:
        return bool(a == b)
    except Exception:
        return False


def _snapshot_params(metric: Metric) -> dict[str, Any]:
    return copy.deepcopy(metric.get_params())


def _params_diff(want: Mapping[str, Any], got: Mapping[str, Any]) -> list[str]:
    if want.keys() != got.keys():
        return [f"names {sorted(set(want) ^ set(got))}"]
    return [f"{k}: {got[k]!r} instead of {want[k]!r}" for k in want if not _same(want[k], got[k])]


def check_clone_and_params(ctx: _Context) -> None:
    base = ctx.metric(seed=ctx.original.seed)
    params = base.get_params()
    repr(base)
    clone = base.clone()
    if clone is base or type(clone) is not type(base):
        raise AssertionError("clone() must return a new metric of the same class")
    _fail_if("; ".join(_params_diff(params, clone.get_params())), "clone().get_params()")
    rebuilt = type(base)(**params)
    _fail_if("; ".join(_params_diff(params, rebuilt.get_params())),
             "type(m)(**m.get_params()).get_params()")
    target = copy.deepcopy(base)
    changed = target.set_params(seed=123)
    got = changed.get_params() if isinstance(changed, Metric) else None
    if got is None or not _same(got.get("seed"), 123):
        raise AssertionError("set_params(seed=123) did not return a metric whose get_params() "
                             "has seed=123")
    _fail_if("; ".join(_params_diff({**params, "seed": 123}, got)),
             "set_params(seed=123).get_params()")
    ref = ctx.reference()
    for what, copy_ in (("clone()", clone), ("type(m)(**m.get_params())", rebuilt)):
        copy_.seed, copy_.aggregate = SEED, None
        _fail_if(_differs(ctx.scores(copy_), ref, 0.0, 0.0), f"the scores of {what}")


#: metadata fields compared between the instance and ``metadata()`` / ``list_metrics()``
METADATA_FIELDS = ("family", "higher_is_better", "needs_masks", "needs_gradients", "needs_model",
                   "re_explains", "stochastic", "set_level", "modalities", "default_abs",
                   "default_normalise", "default_softmax", "paper")


def _metadata_diff(want: Mapping[str, Any], got: Mapping[str, Any], what: str) -> list[str]:
    return [f"{field}: {what} says {got.get(field)!r} instead of {want[field]!r}"
            for field in METADATA_FIELDS if field in want and not _same(want[field],
                                                                        got.get(field))]


def check_metadata(ctx: _Context) -> None:
    from .metrics import base as metric_base
    from .metrics import list_metrics

    metric = ctx.original
    meta = metric.metadata()
    problems = []
    for field in METADATA_FIELDS:
        if field in meta and hasattr(metric, field) and not _same(getattr(metric, field),
                                                                   meta[field]):
            problems.append(f"{field}: the instance says {getattr(metric, field)!r}, "
                            f"metadata() says {meta[field]!r}")
    # metadata are a function of the parameters: a clone has the same, and a call changes none
    problems += _metadata_diff(meta, metric.clone().metadata(), "clone().metadata()")
    called = ctx.metric(seed=SEED)
    ctx.call(called)
    problems += _metadata_diff(meta, called.metadata(), "metadata() after a call")
    name = type(metric).__name__
    if metric_base._REGISTRY.get(name) is type(metric):
        # list_metrics() has one row per class: the metadata of the default settings, so it
        # is compared with a default instance (where one can be built without arguments)
        try:
            default = type(metric)()
        except TypeError:
            default = None
        frame = list_metrics()
        row = frame[frame["name"] == name]
        if len(row) != 1:
            problems.append(f"list_metrics() has {len(row)} rows named {name!r}")
        elif default is not None:
            listed = row.iloc[0].to_dict()
            for field in METADATA_FIELDS:
                value = listed.get(field)
                value = bool(value) if isinstance(value, np.bool_) else value
                if field in listed and hasattr(default, field) and not _same(
                        value, getattr(default, field)):
                    problems.append(f"{field}: a default {name}() says "
                                    f"{getattr(default, field)!r}, list_metrics() says "
                                    f"{value!r}")
    from .evaluate import Evaluation

    fx = ctx.fixture
    planned = Evaluation({"metric": metric}, {"given": fx.a.numpy()}, ctx.model(), fx.x, fx.y,
                         fx.s)
    stored = planned.metric_info()["metric"]
    for field in METADATA_FIELDS:
        if field in stored and hasattr(metric, field) and not _same(stored[field],
                                                                     getattr(metric, field)):
            problems.append(f"{field}: the instance says {getattr(metric, field)!r}, the store "
                            f"(evaluate's metric_info) says {stored[field]!r}")
    if problems:
        raise AssertionError("; ".join(problems))


def check_modality_applicability(ctx: _Context) -> None:
    declared = _modalities(ctx.original)
    undeclared = [m for m in _FIXTURE_BUILDERS if m not in declared]
    if not undeclared:
        _skip("the metric declares every modality that has a fixture")
    first = next((m for m in declared if m in _FIXTURE_BUILDERS), None)
    if ctx.modality != first:
        _skip(f"checked once per metric, with its first declared modality ({first})")
    name = type(ctx.original).__name__
    problems = []
    for modality in undeclared:
        other = _Context(ctx.original, modality)
        try:
            other.call()
        except ValueError as err:
            if name not in str(err):
                problems.append(f"on {modality} inputs the ValueError does not name {name}: "
                                f"{err}")
        except Exception as err:
            problems.append(f"on {modality} inputs it raised {type(err).__name__} instead of "
                            f"a ValueError naming the metric: {err}")
        else:
            problems.append(f"{modality} inputs were scored, but the metric declares only "
                            f"{declared}")
    if problems:
        raise AssertionError("; ".join(problems))


def check_device_and_dtype(ctx: _Context) -> None:
    ref = ctx.reference()
    numpy_inputs = {k: v.numpy() for k, v in ctx.inputs().items()}
    _fail_if(_differs(ctx.scores(inputs=numpy_inputs), ref), "NumPy inputs vs torch inputs")
    ids = not ctx.fixture.x.is_floating_point()  # token ids: another integer width instead
    inputs = ctx.inputs()
    inputs["x"] = inputs["x"].int() if ids else inputs["x"].double()
    _fail_if(_differs(ctx.scores(inputs=inputs), ref),
             "int32 ids vs int64 ids" if ids else "float64 inputs vs float32 inputs")
    inputs = ctx.inputs()
    inputs["a"] = inputs["a"].float()
    _fail_if(_differs(ctx.scores(inputs=inputs), ref), "float32 attributions vs float64")
    # a stochastic metric draws its noise in the input's dtype, and a float64 generator gives
    # other numbers than a float32 one: its scores under a float64 model are other draws
    if not getattr(ctx.original, "stochastic", False):
        inputs = ctx.inputs()
        inputs["x"] = inputs["x"] if ids else inputs["x"].double()
        inputs["a"] = inputs["a"].double()
        _fail_if(_differs(ctx.scores(model=ctx.model().double(), inputs=inputs), ref,
                          RTOL_DTYPE, ATOL_DTYPE),
                 "a float64 copy of the model vs the float32 model")
    if torch.cuda.is_available():
        cuda = {k: v.cuda() for k, v in ctx.inputs().items()}
        got = ctx.call(model=ctx.model().cuda(), inputs=cuda)
        if not isinstance(got, np.ndarray) or got.shape != ref.shape:
            raise AssertionError(f"with a CUDA model the call returned a {type(got).__name__} "
                                 f"of shape {np.shape(got)}, not a NumPy array {ref.shape}")
        if getattr(ctx.original, "stochastic", False):
            # the random streams are the same per device type only: compare CUDA with CUDA
            again = ctx.scores(model=ctx.model().cuda(),
                               inputs={k: v.cuda() for k, v in ctx.inputs().items()})
            _fail_if(_differs(again, got, RTOL_DTYPE, ATOL_DTYPE),
                     "two calls with the same seed on CUDA")
        else:
            _fail_if(_differs(got, ref, RTOL_DTYPE, ATOL_DTYPE),
                     "the model and inputs on CUDA vs on the CPU")


#: the checks by name, in the order they run
CHECKS: dict[str, Callable[[_Context], None]] = {
    "protocol": check_protocol,
    "per_sample_independence": check_per_sample_independence,
    "permutation_equivariance": check_permutation_equivariance,
    "batch_size_invariance": check_batch_size_invariance,
    "chunk_invariance": check_chunk_invariance,
    "seeded_determinism": check_seeded_determinism,
    "declared_stochasticity": check_declared_stochasticity,
    "no_mutation": check_no_mutation,
    "nan_with_reason": check_nan_with_reason,
    "clone_and_params": check_clone_and_params,
    "metadata": check_metadata,
    "modality_applicability": check_modality_applicability,
    "device_and_dtype": check_device_and_dtype,
}


# ============================================================================ metric checks
#: ``f(metric) -> (passed, message, details)``: checks that judge a whole metric (not its calls
#: on one modality's fixture), by name; run only when ``checks`` names them
METRIC_CHECKS: dict[str, Callable[[Any], tuple[bool, str, Any]]] = {}
#: the entry-point group of installed packages that provide metric checks: an entry point
#: names a module that calls :func:`register_check` when imported
CHECKS_ENTRY_POINT_GROUP = "evalkit.checks"
#: where the metric checks that evalkit knows of come from (for the error when one is missing)
_CHECK_PROVIDERS = {"validity": "metaeval.validity"}


def register_check(name: str, check: Callable[[Any], tuple[bool, str, Any]]) -> None:
    """Register a metric check: ``check(metric) -> (passed, message, details)``, run by
    :func:`check_metric` when ``checks`` names it (a raised exception is a failure). The names
    of :data:`CHECKS` are taken."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"A check's name must be a non-empty string; got {name!r}.")
    if name in CHECKS:
        raise ValueError(f"{name!r} is a built-in check; choose another name.")
    if not callable(check):
        raise TypeError(f"check {name!r} must be callable: check(metric) -> (passed, message, "
                        "details).")
    METRIC_CHECKS[name] = check


def _metric_check(name: str) -> Callable[[Any], tuple[bool, str, Any]]:
    """The registered metric check ``name``, loading the entry points of
    :data:`CHECKS_ENTRY_POINT_GROUP` once if it is not registered yet."""
    if name not in METRIC_CHECKS:
        _load_check_entry_points(name)
    if name not in METRIC_CHECKS:
        known = sorted(set(CHECKS) | set(METRIC_CHECKS))
        hint = (f" It is registered by `import {_CHECK_PROVIDERS[name]}`."
                if name in _CHECK_PROVIDERS else "")
        raise KeyError(f"Unknown check {name!r}; checks are {known}.{hint}")
    return METRIC_CHECKS[name]


def _load_check_entry_points(name: str | None = None) -> None:
    """Import the modules that installed packages declare under
    :data:`CHECKS_ENTRY_POINT_GROUP` (those of check ``name`` only, if given) and that are
    not registered yet; they register their checks when imported."""
    from importlib.metadata import entry_points

    for point in entry_points(group=CHECKS_ENTRY_POINT_GROUP):
        if point.name not in METRIC_CHECKS and (name is None or point.name == name):
            point.load()


def run_metric_check(metric: Any, check: str) -> CheckResult:
    """Run one registered metric check (see :func:`register_check`); never raises for a
    failed check."""
    func = _metric_check(check)
    try:
        passed, message, details = func(metric)
    except Exception as err:
        return CheckResult(check, False, f"raised {type(err).__name__}: {err}",
                           modality="all")
    return CheckResult(check, bool(passed), str(message), modality="all", details=details)


# ============================================================================ running
def run_check(metric: Metric | type[Metric], check: str, *, modality: str = "image"
              ) -> CheckResult:
    """Run one check on one modality (a metric check, on every testbed it has); never raises
    for a failed check (see the result)."""
    if check not in CHECKS:  # a metric check (an unknown name raises a KeyError there)
        return run_metric_check(_as_instance(metric), check)
    metric = _as_instance(metric)
    try:
        ctx = _Context(metric, modality)
    except KeyError as err:
        return CheckResult(check, True, str(err.args[0]), skipped=True, modality=modality)
    try:
        CHECKS[check](ctx)
    except unittest.SkipTest as skip:
        return CheckResult(check, True, str(skip), skipped=True, modality=modality)
    except AssertionError as err:
        return CheckResult(check, False, str(err), modality=modality)
    except Exception as err:  # a crash is a failure of that check, named with its cause
        return CheckResult(check, False, f"raised {type(err).__name__}: {err}",
                           modality=modality)
    return CheckResult(check, True, modality=modality)


def check_metric(
    metric: Metric | type[Metric],
    *,
    modality: str | Iterable[str] | None = None,
    checks: str | Iterable[str] | None = None,
    raise_on_failure: bool = True,
) -> list[CheckResult]:
    """Run the conformance checks on a metric (an instance, or a class instantiated with
    :func:`cheap_metric`).

    Parameters
    ----------
    metric:
        The metric. Give an instance with cheap settings (few steps, few draws): every check
        calls it a few times on 4 samples.
    modality:
        The modality (or modalities) to check on; default: those the metric instance
        declares (``metric.modalities``).
    checks:
        Names from :data:`CHECKS` and of registered metric checks (:data:`METRIC_CHECKS`,
        e.g. ``"validity"`` once ``metaeval.validity`` is imported); default: every check of
        :data:`CHECKS` (no metric check: they are opt-in); ``"all"``: those and every metric
        check registered or declared by an installed package.
    raise_on_failure:
        Raise an ``AssertionError`` naming every failed check and what differed.

    Returns
    -------
    list[CheckResult]
        One per check and modality; skipped checks have ``skipped=True`` and the reason.
    """
    metric = _as_instance(metric)
    if checks is None:
        names = list(CHECKS)
    elif checks == "all":
        _load_check_entry_points()
        names = [*CHECKS, *METRIC_CHECKS]
    else:
        names = [checks] if isinstance(checks, str) else list(checks)
    per_fixture = [name for name in names if name in CHECKS]
    whole = [name for name in names if name not in CHECKS]
    for name in whole:
        _metric_check(name)  # an unknown name raises before any work
    results = []
    if per_fixture:
        modalities = (_modalities(metric) if modality is None
                      else (modality,) if isinstance(modality, str) else tuple(modality))
        results = [run_check(metric, name, modality=m) for m in modalities
                   for name in per_fixture]
    results += [run_metric_check(metric, name) for name in whole]
    failed = [r for r in results if not r.passed]
    if failed and raise_on_failure:
        lines = "\n".join(f"  [{r.modality}] {r.name}: {r.message}" for r in failed)
        raise AssertionError(f"{type(metric).__name__} failed {len(failed)} conformance "
                             f"check(s):\n{lines}")
    return results


class _Check:
    """One named check, callable on a metric as ``check(metric)`` inside a test: raises
    ``AssertionError`` on failure and skips the test (pytest's skip, else
    ``unittest.SkipTest``) when it does not apply."""

    def __init__(self, name: str, modality: str) -> None:
        self.name = name
        self.modality = modality

    def __call__(self, metric: Metric | type[Metric]) -> None:
        result = run_check(metric, self.name, modality=self.modality)
        if result.skipped:
            try:
                import pytest
            except ImportError:
                raise unittest.SkipTest(result.message) from None
            pytest.skip(result.message)
        if not result.passed:
            raise AssertionError(f"{type(_as_instance(metric)).__name__} "
                                 f"[{self.modality}] {self.name}: {result.message}")

    def __repr__(self) -> str:
        return f"check_{self.name}" + ("" if self.modality == "image" else f"[{self.modality}]")


def parametrize_with_checks(
    metrics: Iterable[Metric | type[Metric]] | Mapping[str, Metric | type[Metric]],
    *,
    expected_failed_checks: (Mapping[str, Mapping[str, str]]
                             | Callable[[Metric], Mapping[str, str]] | None) = None,
) -> Any:
    """A ``pytest.mark.parametrize("metric, check", ...)`` over every metric x modality x
    check, with ids such as ``PixelFlipping-per_sample_independence`` (the modality is added
    when it is not ``"image"``).

    ``metrics`` may be a mapping from an id to a metric. ``expected_failed_checks`` marks
    (metric, check) pairs as ``xfail(strict=True)`` with the reason: either a mapping
    ``{id: {check: reason}}`` or a function ``metric -> {check: reason}``.
    """
    import pytest

    items = (list(metrics.items()) if isinstance(metrics, Mapping)
             else [(None, m) for m in metrics])
    params = []
    for label, item in items:
        metric = _as_instance(item)
        label = label or type(metric).__name__
        if callable(expected_failed_checks):
            expected = dict(expected_failed_checks(metric))
        else:
            expected = dict((expected_failed_checks or {}).get(label, {}))
        for modality in _modalities(metric):
            for name in CHECKS:
                marks = ([pytest.mark.xfail(strict=True, raises=AssertionError,
                                            reason=expected[name])]
                         if name in expected else [])
                suffix = "" if modality == "image" else f"-{modality}"
                params.append(pytest.param(metric, _Check(name, modality), marks=marks,
                                           id=f"{label}-{name}{suffix}"))
    return pytest.mark.parametrize("metric, check", params)

