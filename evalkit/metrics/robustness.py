"""Robustness: do explanations stay put when the input changes a little?

Every metric here except :class:`Consistency` re-explains perturbed copies of each input.

How they run
------------
* **K perturbed copies of each sample, explained together.** The N x K perturbed inputs are built
  lazily, a few samples at a time (as many as fit a memory budget, ``stack_budget``), stacked
  into one (S*K, ...) batch and explained through the same chunked path as
  :meth:`MetricBatch.explain` (the explain function is called on chunks of the batch size; the
  metric's ``normalise``/``abs`` are applied per sample). Never one explain call per draw.
  Any explain function works: gradient methods, black-box ones (Occlusion, Lime) and plain
  callables ``f(model, x, y, **kw)``.
* **Seeded noise, independent of the batch.** Each sample's whole (K, ...) block of noise is
  drawn from that sample's key (:mod:`evalkit._rng`; the key depends only on the seed and the
  sample's values), so a sample's perturbations and score are the same alone or in any batch,
  in any order, with any ``batch_size`` and any chunking.
* **Prediction changes** (``on_prediction_change``): a perturbation may flip the model's
  predicted class. ``"keep"`` counts every draw; ``"drop_draw"`` ignores the draws whose
  predicted class differs from that of the unperturbed input (OpenXAI's class-preserving
  perturbations; the score is NaN only if *every* draw flipped; OpenXAI draws more perturbations
  than it keeps, so raise ``nr_samples`` to keep about as many); ``"nan_sample"`` makes the
  sample NaN as soon as one draw flipped (what Quantus' ``np.max`` does, bug C18). Quantus'
  boolean ``return_nan_when_prediction_changes`` maps ``True -> "drop_draw"`` and
  ``False -> "keep"``. The check costs one forward pass per perturbed input; the predictions of
  the unperturbed inputs are computed once.
* **Shared between metrics.** Inside ``with evalkit.cache.forward_cache():``, metrics with the
  same perturbation (noise model and parameters, ``nr_samples``, seed) and the same explain
  function share the perturbed inputs' explanations and model outputs
  (:class:`evalkit.cache.ExplanationCache`): e.g. MaxSensitivity and AvgSensitivity with the
  same settings explain once, and so do RelativeInputStability and RelativeOutputStability.
  :func:`evalkit.evaluate` runs each unit inside such a context and seeds metrics with equal
  :meth:`seed_scope` (their perturbation settings) alike, so there they share by default.

After each call a metric exposes ``draw_scores_`` (N, K): the per-draw values (NaN for draws
that did not count) and ``prediction_changed_`` (N, K) bool (None when not computed). The call
option ``stack_budget`` (bytes, or a string like ``"64MiB"``) bounds the perturbed inputs and
explanations built at once (default 256 MiB on CPU, 1 GiB on CUDA).

Quantus' own norm, discretisation and perturbation functions (``quantus.fro_norm``,
``quantus.functions.perturb_func.uniform_noise``, ``translation_x_direction``...) are recognised
by name and replaced by the equivalents here, with the metric's parameters. Not supported from
Quantus: ``similarity_func`` (the metrics compute their own ratios; choose
``norm_numerator``/``norm_denominator``), other NumPy ``perturb_func`` callables and
``perturb_func_kwargs`` (use ``perturb_func="gaussian"``/``"uniform"`` with their parameters or
an :class:`evalkit.perturb.Noise`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from .. import _rng
from .._batching import parse_bytes
from .._validation import check_option, check_scalar
from ..cache import (
    ExplanationCache,
    active_explanation_cache,
    combine_hashes,
    model_key,
    row_hashes,
)
from ..perturb import Baseline, Noise, make_imputer, make_noise
from .base import Metric, MetricBatch

__all__ = [
    "ON_PREDICTION_CHANGE",
    "AvgSensitivity",
    "Consistency",
    "Continuity",
    "LocalLipschitzEstimate",
    "MaxSensitivity",
    "RelativeInputStability",
    "RelativeOutputStability",
    "RelativeRepresentationStability",
]

ON_PREDICTION_CHANGE = ("keep", "drop_draw", "nan_sample")

#: rng stream of the input noise, shared by every noise-based robustness metric (so that metrics
#: with the same noise settings and seed draw the same perturbations and can share them)
_NOISE_STREAM = 0x0B05
#: bytes of perturbed inputs plus their explanations built at once, by device type (the explain
#: function is then called in chunks of the batch size; fewer, larger stacks leave fewer partial
#: chunks)
_STACK_BUDGET = {"cpu": 256 * 2**20, "cuda": 1024 * 2**20}


# ============================================================================ norms
def _l1(v: torch.Tensor) -> torch.Tensor:
    return v.abs().sum(1)


def _l2(v: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(v, ord=2, dim=1)


def _linf(v: torch.Tensor) -> torch.Tensor:
    return v.abs().amax(1)


_NORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "l1": _l1, "manhattan": _l1, "distance_manhattan": _l1,
    "l2": _l2, "euclidean": _l2, "fro": _l2, "fro_norm": _l2, "l2_norm": _l2,
    "distance_euclidean": _l2,
    "linf": _linf, "linf_norm": _linf, "chebyshev": _linf,
}


def _resolve_norm(name: str, spec: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``"l1"``, ``"l2"`` (= ``"fro"``), ``"linf"`` (Quantus' names too), or a callable mapping
    an (M, D) tensor of differences (attributions in float64, inputs in their own dtype) to (M,)
    norms. Quantus' own functions (``quantus.fro_norm``, ``quantus.distance_euclidean``...)
    are recognised by name and replaced by the equivalent here."""
    spec = _quantus_name(spec, _NORMS)
    if callable(spec):
        return spec
    if isinstance(spec, str) and spec in _NORMS:
        return _NORMS[spec]
    raise ValueError(f"`{name}` must be 'l1', 'l2' ('fro'), 'linf' or a callable (M, D) -> (M,); "
                     f"got {spec!r}.")


def _quantus_name(spec: Any, names: Any) -> Any:
    """A function from the quantus package -> its name, when we implement that name."""
    module = getattr(spec, "__module__", None) or ""
    name = getattr(spec, "__name__", None)
    if callable(spec) and module.split(".")[0] == "quantus" and name in names:
        return name
    return spec


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


# ============================================================================ perturbations
@dataclass
class _Draws:
    """How the K perturbed copies of each sample are made.

    ``make(x, keys)`` maps S samples (S, ...) and their keys (S,) to (S, K, ...); it must depend
    on each sample and its key only. ``spec`` identifies the perturbation for the cache (None:
    never cached).
    """

    k: int
    make: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    spec: bytes | None


def _noise_spec(noise: Noise, k: int) -> str:
    return f"noise|{noise!r}|{k}|{_NOISE_STREAM}"


def _noise_draws(noise: Noise, k: int) -> _Draws:
    def make(x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        # one stream per sample, the sample's whole (K, ...) block at once
        n = noise.sample(_rng.combine(keys, _NOISE_STREAM), (k, *x.shape[1:]), x.dtype)
        return x.unsqueeze(1) + n.to(x.device)

    return _Draws(k, make, _noise_spec(noise, k).encode())


def translation_shifts(length: int, nr_steps: int) -> list[int]:
    """The shifts of Continuity's translations: ``-L + k * ((2L + 1) // nr_steps)`` for
    k = 1..nr_steps (the grid of Quantus 0.6), from almost fully left to fully right."""
    dx = (2 * length + 1) // nr_steps
    if dx == 0:
        raise ValueError(f"`nr_steps` ({nr_steps}) must be at most 2 * {length} + 1 for "
                         f"translations over {length} positions.")
    return [-length + k * dx for k in range(1, nr_steps + 1)]


def _translate(x: torch.Tensor, shift: int, axis: int, fill: torch.Tensor) -> torch.Tensor:
    """Move the content of ``x`` by ``shift`` positions along ``axis`` (positive: towards
    higher indices); vacated positions take ``fill`` (broadcastable against x)."""
    length = x.shape[axis]
    out = fill.expand_as(x).clone()
    m = length - abs(shift)
    if m > 0:
        src = x.narrow(axis, max(0, -shift), m)
        out.narrow(axis, max(0, shift), m).copy_(src)
    return out


def _translation_draws(direction: str, nr_steps: int, baseline: Baseline, x: torch.Tensor
                       ) -> _Draws:
    if direction == "x":
        if x.ndim < 3:
            raise ValueError(
                "Translations need (N, C, T) or (N, C, H, W) inputs; got shape "
                f"{tuple(x.shape)}. Use a noise perturbation (perturb_func='gaussian') instead."
            )
        axis = x.ndim - 1
    else:
        if x.ndim != 4:
            raise ValueError(f"'translation_y' needs (N, C, H, W) images; got {tuple(x.shape)}.")
        axis = 2
    shifts = translation_shifts(x.shape[axis], nr_steps)

    def make(xs: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        fill = baseline.values(xs, keys if baseline.stochastic else None)
        return torch.stack([_translate(xs, s, axis, fill) for s in shifts], 1)

    spec = f"translation|{direction}|{shifts}|{baseline!r}".encode()
    if isinstance(baseline.kind, np.ndarray | torch.Tensor):
        spec = None  # array baselines: not worth fingerprinting
    return _Draws(nr_steps, make, spec)


def _callable_draws(fn: Callable[[torch.Tensor, int], torch.Tensor], k: int) -> _Draws:
    def make(x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        parts = []
        for step in range(k):
            out = torch.as_tensor(fn(x, step), device=x.device)
            if out.shape != x.shape:
                raise ValueError(f"`perturb_func` returned shape {tuple(out.shape)} for inputs of "
                                 f"shape {tuple(x.shape)}; it must keep the shape.")
            parts.append(out.to(x.dtype))
        return torch.stack(parts, 1)

    return _Draws(k, make, None)


#: Quantus' perturbation functions -> the equivalent here (their parameters are the metric's)
_QUANTUS_PERTURB = {
    "gaussian_noise": "gaussian", "batch_gaussian_noise": "gaussian",
    "uniform_noise": "uniform", "batch_uniform_noise": "uniform",
    "translation_x_direction": "translation_x", "batched_translation": "translation_x",
    "translation_y_direction": "translation_y",
}


def _perturb_name(perturb_func: Any) -> Any:
    """A function from the quantus package -> our name for the same perturbation."""
    name = _quantus_name(perturb_func, _QUANTUS_PERTURB)
    return _QUANTUS_PERTURB[name] if isinstance(name, str) and name in _QUANTUS_PERTURB else name


def _make_noise(perturb_func: Any, perturb_mean: float, perturb_std: float,
                lower_bound: float, upper_bound: float | None) -> Noise:
    """The noise model of ``perturb_func`` with the metric's parameters for that kind."""
    perturb_func = _perturb_name(perturb_func)
    if isinstance(perturb_func, Noise):
        return perturb_func
    params = {"gaussian": {"perturb_mean": perturb_mean, "perturb_std": perturb_std},
              "uniform": {"lower_bound": lower_bound, "upper_bound": upper_bound}}
    if not isinstance(perturb_func, str) or perturb_func not in params:
        raise ValueError("`perturb_func` must be 'gaussian', 'uniform' or an "
                         f"evalkit.perturb.Noise; got {perturb_func!r}.")
    return make_noise(perturb_func, **params[perturb_func])


def _resolve_on_change(value: str | None, quantus_flag: bool | None, default: str) -> str:
    mapped = None if quantus_flag is None else ("drop_draw" if quantus_flag else "keep")
    if quantus_flag is not None and not isinstance(quantus_flag, bool):
        raise TypeError("`return_nan_when_prediction_changes` must be True, False or None.")
    if value is None:
        return mapped or default
    check_option("on_prediction_change", value, ON_PREDICTION_CHANGE)
    if mapped is not None and mapped != value:
        raise ValueError(
            f"`return_nan_when_prediction_changes={quantus_flag}` means "
            f"on_prediction_change={mapped!r}, but on_prediction_change={value!r} was given; "
            "pass only one of them."
        )
    return value


# ============================================================================ forward passes
class _Forward:
    """What a forward pass over perturbed inputs returns per row: the model outputs (B, C),
    float64 (the predicted class and, for RelativeOutputStability, the output change)."""

    spec: bytes | None = b"outputs"

    def context(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def reduce(self, outputs: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        if outputs.ndim != 2:
            raise ValueError(
                "Checking predictions needs (N, classes) model outputs; the model returned "
                f"shape {tuple(outputs.shape)}. Use on_prediction_change='keep'."
            )
        return outputs.to(torch.float64)


@dataclass
class _Chunk:
    """The perturbed copies of S samples: ``idx`` (S,) sample indices, ``x`` (S, K, ...)
    perturbed inputs, ``a`` (S, K, ...) their preprocessed explanations (float64) or None,
    ``a_ok`` (S, K) finite re-explanations, ``fwd`` (S, K, m) forward values or None."""

    idx: torch.Tensor
    x: torch.Tensor
    a: torch.Tensor | None
    a_ok: torch.Tensor
    fwd: torch.Tensor | None


def _sample_fingerprints(batch: MetricBatch, draws: _Draws) -> list[bytes]:
    memo = batch.extra.get("_robust_fp")
    if memo is None or memo[0] != draws.spec:
        n = batch.n
        base = combine_hashes(row_hashes(batch.x, n), row_hashes(batch.y, n),
                              row_hashes(batch.keys, n), model_key(batch.model), draws.spec)
        memo = (draws.spec, base)
        batch.extra["_robust_fp"] = memo
    return memo[1]


def _explainer_spec(batch: MetricBatch, store: ExplanationCache) -> bytes:
    fn = batch.explain_fn
    parts: list[str] = [f"model:{store.pin(batch.model.model)}"]  # type: ignore[union-attr]
    if fn is None:
        parts.append("evalkit.explain")
    else:
        parts.append(f"fn:{store.pin(fn)}")
        parts.append(f"model_arg:{store.pin(batch.model_obj)}")
    for key in sorted(batch.explain_kwargs):
        value = batch.explain_kwargs[key]
        if isinstance(value, torch.Tensor | np.ndarray):
            t = torch.as_tensor(value)
            digest = row_hashes(t.reshape(1, -1), 1)[0].hex()
            parts.append(f"{key}=tensor{tuple(t.shape)}:{t.dtype}:{digest}")
        else:
            parts.append(f"{key}={value!r}")
    return "|".join(parts).encode()


def _stack_samples(batch: MetricBatch, k: int) -> int:
    """Samples per chunk: their K perturbed inputs and (float64) explanations fit the budget."""
    budget = parse_bytes(batch.extra.get("stack_budget")) or _STACK_BUDGET[
        "cuda" if batch.device.type == "cuda" else "cpu"]
    numel = int(np.prod(batch.x.shape[1:], dtype=np.int64))
    per_sample = k * numel * (batch.x.element_size() + 8)
    return max(1, budget // max(1, per_sample))


# ============================================================================ the base class
class _PerturbationRobustness(Metric):
    """Shared machinery of the metrics that re-explain K perturbed copies of every sample."""

    family = "robustness"
    higher_is_better = False
    re_explains = True
    stochastic = True
    default_abs = False
    default_normalise = False
    default_softmax = False
    #: "max" or "mean" over the draws
    reduction: ClassVar[str] = "max"
    default_on_prediction_change: ClassVar[str] = "keep"
    #: the metric needs the model outputs on every perturbed input (not only for the check)
    needs_outputs: ClassVar[bool] = False
    call_options = ("stack_budget",)

    # set by subclasses' __init__
    nr_samples: int
    on_prediction_change_: str

    def _setup_prediction_change(self, on_prediction_change: str | None,
                                 return_nan_when_prediction_changes: bool | None) -> None:
        self.return_nan_when_prediction_changes = return_nan_when_prediction_changes
        self.on_prediction_change = on_prediction_change
        #: the resolved policy: "keep", "drop_draw" or "nan_sample"
        self.on_prediction_change_ = _resolve_on_change(
            on_prediction_change, return_nan_when_prediction_changes,
            self.default_on_prediction_change)
        self.draw_scores_: np.ndarray | None = None
        self.prediction_changed_: np.ndarray | None = None

    def seed_scope(self) -> str | None:
        """What the random perturbations depend on besides the seed, or None.

        Metrics with equal scopes draw identical perturbations from the same seed.
        :func:`evalkit.evaluate` therefore derives their seed from the scope rather than from
        the metric's name: robustness metrics with the same perturbation settings in one
        evaluation perturb identically and share the explanations of the perturbed inputs
        (through the forward cache each unit runs in), instead of each explaining its own
        N x K copies.
        """
        return None

    # ---- hooks
    def _draws(self, batch: MetricBatch) -> _Draws:
        raise NotImplementedError

    def _forward(self, batch: MetricBatch) -> _Forward:
        return _Forward()

    def _draw_values(self, batch: MetricBatch, chunk: _Chunk, clean: torch.Tensor | None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(S, K) float64 values per draw and (S, K) bool: whether each value is defined."""
        raise NotImplementedError

    def _undefined_reason(self) -> str:
        return "the value is undefined for every perturbation"

    # ---- the engine
    def _iter_chunks(self, batch: MetricBatch, draws: _Draws, forward: _Forward | None
                     ) -> Iterator[_Chunk]:
        """The perturbed copies of every sample, a few samples at a time (see module doc)."""
        x = batch.x
        k = draws.k
        n = batch.n
        store = active_explanation_cache() if draws.spec is not None else None
        fps = _sample_fingerprints(batch, draws) if store is not None else None
        espec = _explainer_spec(batch, store) if store is not None else b""
        fwd_cached = store is not None and forward is not None and forward.spec is not None
        per_chunk = _stack_samples(batch, k)
        keys = batch.keys
        for start in range(0, n, per_chunk):
            idx = torch.arange(start, min(n, start + per_chunk), device=x.device)
            s = idx.shape[0]
            xp = draws.make(x[idx], keys[idx])  # (S, K, ...)
            flat_x = xp.reshape(s * k, *x.shape[1:])
            raw: list[torch.Tensor | None] = [None] * s
            fwd: list[torch.Tensor | None] = [None] * s
            ekeys = fkeys = None
            if store is not None:
                ekeys = combine_hashes([fps[i] for i in idx.tolist()], espec + b"|expl")
                raw = store.get(ekeys)
                if fwd_cached:
                    fkeys = combine_hashes([fps[i] for i in idx.tolist()],
                                           forward.spec + b"|fwd")
                    fwd = store.get(fkeys)
            # ---- explanations of the samples not in the cache
            todo = [j for j in range(s) if raw[j] is None]
            got = None
            if todo:
                xs = flat_x if len(todo) == s else flat_x[_rows_of(todo, k, x.device)]
                ys = None if batch.y is None else batch.y[idx[todo]].repeat_interleave(k, dim=0)
                got = self._run_explain(batch, xs, ys)
                if store is not None:  # copies: a view would keep the whole chunk alive
                    blocks = got.reshape(len(todo), k, *got.shape[1:])
                    store.put([ekeys[j] for j in todo], [b.clone() for b in blocks])
                    for j, b in zip(todo, blocks, strict=True):
                        raw[j] = b
            if len(todo) == s:
                a_raw = got
            else:
                a_raw = torch.stack(raw, 0)  # (S, K, ...)
                a_raw = a_raw.reshape(s * k, *a_raw.shape[2:])
            a_ok = torch.isfinite(_flat(a_raw)).all(1).reshape(s, k)
            a = self._preprocess_attributions(batch, a_raw, flat_x, flag_nan=False)
            a = a.reshape(s, k, *a.shape[1:])
            # ---- forward values
            fwd_t = None
            if forward is not None:
                todo = [j for j in range(s) if fwd[j] is None]
                if todo:
                    sample_of_row = idx[todo].repeat_interleave(k)
                    xs = flat_x if len(todo) == s else flat_x[_rows_of(todo, k, x.device)]
                    with forward.context():
                        vals = batch.runner.run(  # type: ignore[union-attr]
                            lambda index, xs=xs: xs[index[0]], (xs.shape[0],),
                            reduce=lambda out, index, sr=sample_of_row: forward.reduce(
                                out, sr[index[0]]),
                            row_shape=tuple(x.shape[1:]), desc="perturbed inputs")
                    vals = vals.reshape(len(todo), k, -1)
                    for j, v in zip(todo, vals, strict=True):
                        fwd[j] = v
                    if fwd_cached:
                        store.put([fkeys[j] for j in todo], [fwd[j].clone() for j in todo])
                fwd_t = vals if len(todo) == s else torch.stack(fwd, 0)
            yield _Chunk(idx=idx, x=xp, a=a, a_ok=a_ok, fwd=fwd_t)

    def _clean_forward(self, batch: MetricBatch, forward: _Forward) -> torch.Tensor:
        """Model outputs (N, C) float64 of the unperturbed inputs, once per call."""
        x = batch.x
        samples = torch.arange(batch.n, device=x.device)
        with forward.context():
            return batch.runner.run(  # type: ignore[union-attr]
                lambda index: x[index[0]], (batch.n,),
                reduce=lambda out, index: forward.reduce(out, samples[index[0]]),
                row_shape=tuple(x.shape[1:]), desc="unperturbed inputs")

    def _check_attribution_layout(self, batch: MetricBatch, a_pert: torch.Tensor) -> None:
        shape = tuple(batch.a.shape[1:])  # type: ignore[union-attr]
        if tuple(a_pert.shape[2:]) != shape:
            raise ValueError(
                f"The re-explanations have shape {tuple(a_pert.shape[2:])} per input but `a` has "
                f"{shape}; the explain function must produce the same layout as `a` (e.g. pass "
                "explain_kwargs={'reduce_channels': 'sum'} for channel-summed maps, or leave "
                "`a` as None to explain with the same function)."
            )

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        batch.require_model()
        draws = self._draws(batch)
        k = draws.k
        n = batch.n
        dev = batch.device
        mode = self.on_prediction_change_
        check = mode != "keep"
        forward = self._forward(batch) if (check or self.needs_outputs) else None
        clean = self._clean_forward(batch, forward) if forward is not None else None
        pred = None
        if check:
            pred = clean.argmax(1)  # type: ignore[union-attr]

        values = torch.full((n, k), float("nan"), dtype=torch.float64, device=dev)
        defined = torch.zeros((n, k), dtype=torch.bool, device=dev)
        finite = torch.ones((n, k), dtype=torch.bool, device=dev)
        changed = torch.zeros((n, k), dtype=torch.bool, device=dev) if check else None
        for chunk in self._iter_chunks(batch, draws, forward):
            self._check_attribution_layout(batch, chunk.a)
            v, d = self._draw_values(batch, chunk, clean)
            values[chunk.idx] = v
            defined[chunk.idx] = d
            finite[chunk.idx] = chunk.a_ok
            if check:
                n_out = clean.shape[1]  # type: ignore[union-attr]
                changed[chunk.idx] = (  # type: ignore[index]
                    chunk.fwd[:, :, :n_out].argmax(2)  # type: ignore[index]
                    != pred[chunk.idx].unsqueeze(1))  # type: ignore[index]

        bad_expl = ~finite.all(1)
        batch.set_nan(bad_expl, "a re-explanation of a perturbed input contains NaN or Inf")
        use = defined & finite
        if mode == "drop_draw":
            use = use & ~changed  # type: ignore[operator]
            batch.set_nan(changed.all(1),  # type: ignore[union-attr]
                          "every perturbation changed the predicted class "
                          "(on_prediction_change='drop_draw')")
        elif mode == "nan_sample":
            batch.set_nan(changed.any(1),  # type: ignore[union-attr]
                          "a perturbation changed the predicted class "
                          "(on_prediction_change='nan_sample')")
        batch.set_nan(~use.any(1), self._undefined_reason())
        masked = torch.where(use, values, torch.full_like(values, float("nan")))
        if self.reduction == "max":
            score = torch.where(use, values, torch.full_like(values, -float("inf"))).amax(1)
        else:
            count = use.sum(1)
            score = torch.where(use, values, torch.zeros_like(values)).sum(1) / count.clamp_min(1)
        score = torch.where(use.any(1), score, torch.full_like(score, float("nan")))
        self.draw_scores_ = masked.cpu().numpy()
        self.prediction_changed_ = None if changed is None else changed.cpu().numpy()
        return score


def _rows_of(samples: list[int], k: int, device: torch.device) -> torch.Tensor:
    s = torch.tensor(samples, dtype=torch.int64, device=device)
    return (s.unsqueeze(1) * k + torch.arange(k, device=device)).reshape(-1)


class _NoiseRobustness(_PerturbationRobustness):
    """Metrics whose perturbations are additive input noise (``perturb_func``)."""

    perturb_func: Any
    perturb_mean: float
    perturb_std: float
    lower_bound: float
    upper_bound: float | None

    def _setup_noise(self, nr_samples: int, perturb_func: Any, perturb_mean: float,
                     perturb_std: float, lower_bound: float, upper_bound: float | None) -> None:
        self.nr_samples = check_scalar("nr_samples", nr_samples, int, min_val=1)
        self.perturb_func = perturb_func
        self.perturb_mean = check_scalar("perturb_mean", perturb_mean, (int, float))
        self.perturb_std = check_scalar("perturb_std", perturb_std, (int, float), min_val=0)
        self.lower_bound = check_scalar("lower_bound", lower_bound, (int, float))
        self.upper_bound = check_scalar("upper_bound", upper_bound, (int, float),
                                        allow_none=True)
        self.noise_ = _make_noise(perturb_func, perturb_mean, perturb_std, lower_bound,
                                  upper_bound)

    def _draws(self, batch: MetricBatch) -> _Draws:
        return _noise_draws(self.noise_, self.nr_samples)

    def seed_scope(self) -> str | None:
        return _noise_spec(self.noise_, self.nr_samples)


_RELATIVE_DOC = """
    eps_min:
        Floor of the elementwise divisors and of the denominator (default 1e-6): the relative
        change of v is ||(v - v') / max(|v|, eps_min)||_p and the ratio's denominator is
        max(denominator, eps_min), as in the paper. This is numerically safe (never inf or
        NaN); Quantus instead replaces only exact zeros by eps_min (divisors in (0, eps_min)
        explode) and only a denominator of exactly 0.
    p_norm:
        The norm's order (2, as in Quantus; OpenXAI's ``p_norm``).
"""

_RELATIVE_DEVIATIONS = """
    Deviations from Quantus 0.6: flipped draws are dropped rather than turning the whole sample
    into NaN (C18; ``on_prediction_change="nan_sample"`` reproduces Quantus); the result is not
    aggregated twice (C18); the safe divisors above; per-sample normalisation (C1) when
    ``normalise=True``. The default perturbation is Quantus' x + U(0.02, 0.2) (always
    positive). The predicted class of x is computed once (Quantus re-predicts x for every draw).
"""


def _documented(cls: type) -> type:
    """Fill the shared parameter and deviation paragraphs into a class docstring."""
    doc = cls.__doc__ or ""
    for token, text in (("<<NOISE>>", _NOISE_DOC), ("<<RELATIVE>>", _RELATIVE_DOC),
                        ("<<DEVIATIONS>>", _RELATIVE_DEVIATIONS)):
        doc = doc.replace(f"    {token}\n", text.strip("\n") + "\n")
    cls.__doc__ = doc
    return cls


_NOISE_DOC = """
    nr_samples:
        Perturbed copies per sample (K).
    perturb_func:
        ``"gaussian"`` (x + N(perturb_mean, perturb_std^2) on every element), ``"uniform"``
        (x + U(-lower_bound, lower_bound), or U(lower_bound, upper_bound) when ``upper_bound`` is
        set: Quantus' convention) or an :class:`evalkit.perturb.Noise`.
    on_prediction_change:
        ``"keep"``, ``"drop_draw"`` or ``"nan_sample"``; see the module docstring.
    return_nan_when_prediction_changes:
        Quantus' name: True means ``"drop_draw"``, False ``"keep"``.
"""


# ============================================================================ metrics
@_documented
class LocalLipschitzEstimate(_NoiseRobustness):
    """Local Lipschitz estimate of the explanation function (Alvarez-Melis & Jaakkola 2018).
    **Lower is better**.

    L(x) = max_k ||a(x) - a(x'_k)||_num / ||x - x'_k||_den over K noisy copies
    x'_k = x + eps_k (Gaussian by default), with both norms L2 by default.

    Parameters
    ----------
    norm_numerator, norm_denominator:
        ``"l2"`` (default), ``"l1"``, ``"linf"`` or a callable on (M, D) differences.
    <<NOISE>>

    Deviations from Quantus 0.6: attributions are normalised per sample (Quantus normalises over
    the whole batch, C1); the denominator has no ``+1e-10`` (a draw that leaves the input
    unchanged is left out instead: its ratio is undefined); ``softmax`` defaults to False (it
    would only change what the default explainer explains; Quantus' softmax=True only affects its
    argmax check); with ``return_nan_when_prediction_changes=True`` flipped draws are dropped
    instead of making the whole sample NaN (C18; ``on_prediction_change="nan_sample"`` gives
    Quantus' behaviour). The predicted class of x (not ``y``) is the reference, as in Quantus.

    Reference: D. Alvarez-Melis, T. S. Jaakkola, "On the Robustness of Interpretability
    Methods", ICML WHI workshop 2018, arXiv:1806.08049.
    """

    default_normalise = True
    paper = ("Alvarez-Melis & Jaakkola, On the Robustness of Interpretability Methods, "
             "arXiv 2018")

    def __init__(self, nr_samples: int = 200, perturb_func: Any = "gaussian",
                 perturb_mean: float = 0.0, perturb_std: float = 0.1,
                 lower_bound: float = 0.02, upper_bound: float | None = None,
                 norm_numerator: Any = "l2", norm_denominator: Any = "l2", *,
                 on_prediction_change: str | None = None,
                 return_nan_when_prediction_changes: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._setup_noise(nr_samples, perturb_func, perturb_mean, perturb_std, lower_bound,
                          upper_bound)
        self.norm_numerator = norm_numerator
        self.norm_denominator = norm_denominator
        self._num = _resolve_norm("norm_numerator", norm_numerator)
        self._den = _resolve_norm("norm_denominator", norm_denominator)
        self._setup_prediction_change(on_prediction_change, return_nan_when_prediction_changes)

    def _undefined_reason(self) -> str:
        return "no perturbation changed the input (||x - x'|| = 0)"

    def _draw_values(self, batch, chunk, clean):
        return _lipschitz_ratios(batch, chunk, self._num, self._den)


def _lipschitz_ratios(batch: MetricBatch, chunk: _Chunk, num, den):
    s, k = chunk.a_ok.shape
    a0 = batch.a[chunk.idx]  # type: ignore[index]
    da = (chunk.a - a0.unsqueeze(1)).reshape(s * k, -1)
    # the inputs' differences in their own dtype (what the model saw; a float64 copy of the whole
    # stack would cost more than the rest of the metric's arithmetic)
    dx = (chunk.x - batch.x[chunk.idx].unsqueeze(1)).reshape(s * k, -1)
    numer = num(da).reshape(s, k).to(torch.float64)
    denom = den(dx).reshape(s, k).to(torch.float64)
    ok = denom > 0
    return numer / torch.where(ok, denom, torch.ones_like(denom)), ok


@_documented
class MaxSensitivity(_NoiseRobustness):
    """Max-sensitivity of the explanation (Yeh et al. 2019). **Lower is better**.

    SENS_max(x) = max_k ||a(x) - a(x'_k)|| / ||a(x)|| over K copies x'_k = x + U(-r, r)
    (``lower_bound`` = r = 0.2 by default: uniform in the L-infinity ball of radius r, as the
    paper's experiments sample; Frobenius/L2 norms). The denominator ||a(x)|| makes the score
    comparable across explainers of different scales; it is the form of the authors'
    experiment code and of the fixed Quantus (#288/#289). The paper's formula has no
    denominator (``norm_denominator=None`` gives it).

    Parameters
    ----------
    norm_numerator, norm_denominator:
        ``"fro"`` (= ``"l2"``, default), ``"l1"``, ``"linf"``, a callable on (M, D) tensors, or
        None for the denominator (the absolute, unnormalised sensitivity).
    <<NOISE>>

    Deviations from Quantus 0.6: a sample whose attribution is all zero (||a|| = 0) is NaN with a
    reason (Quantus: inf or NaN from 0/0); otherwise as for :class:`LocalLipschitzEstimate`
    (per-sample preprocessing, C1; flipped draws dropped rather than NaN-ing the sample, C18).

    Reference: C.-K. Yeh, C.-Y. Hsieh, A. S. Suggala, D. I. Inouye, P. Ravikumar, "On the
    (In)fidelity and Sensitivity of Explanations", NeurIPS 2019.
    """

    paper = "Yeh et al., On the (In)fidelity and Sensitivity of Explanations, NeurIPS 2019"
    reduction = "max"

    def __init__(self, nr_samples: int = 200, perturb_func: Any = "uniform",
                 perturb_mean: float = 0.0, perturb_std: float = 0.1,
                 lower_bound: float = 0.2, upper_bound: float | None = None,
                 norm_numerator: Any = "fro", norm_denominator: Any = "fro", *,
                 on_prediction_change: str | None = None,
                 return_nan_when_prediction_changes: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._setup_noise(nr_samples, perturb_func, perturb_mean, perturb_std, lower_bound,
                          upper_bound)
        self.norm_numerator = norm_numerator
        self.norm_denominator = norm_denominator
        self._num = _resolve_norm("norm_numerator", norm_numerator)
        self._den = (None if norm_denominator is None
                     else _resolve_norm("norm_denominator", norm_denominator))
        self._setup_prediction_change(on_prediction_change, return_nan_when_prediction_changes)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        if self._den is not None:
            norm_a = self._den(_flat(batch.a))  # type: ignore[arg-type]
            batch.set_nan(norm_a == 0, "attribution is all zero (||a|| = 0)")
        return super()._evaluate(batch)

    def _draw_values(self, batch, chunk, clean):
        s, k = chunk.a_ok.shape
        a0 = batch.a[chunk.idx]  # type: ignore[index]
        da = _flat((chunk.a - a0.unsqueeze(1)).reshape(s * k, *a0.shape[1:]))
        numer = self._num(da).reshape(s, k)
        if self._den is None:
            return numer, torch.ones_like(numer, dtype=torch.bool)
        denom = self._den(_flat(a0)).unsqueeze(1).expand(s, k)
        ok = denom > 0
        return numer / torch.where(ok, denom, torch.ones_like(denom)), ok

    def _undefined_reason(self) -> str:
        return "attribution is all zero (||a|| = 0)"


class AvgSensitivity(MaxSensitivity):
    """Average sensitivity of the explanation (Yeh et al. 2019). **Lower is better**.

    SENS_avg(x) = mean_k ||a(x) - a(x'_k)|| / ||a(x)||: :class:`MaxSensitivity` with the mean
    over the draws instead of the maximum (over the draws that count, see
    ``on_prediction_change``). Parameters as for :class:`MaxSensitivity`.

    Deviations from Quantus 0.6: as for :class:`MaxSensitivity`. With
    ``return_nan_when_prediction_changes=True`` Quantus averages with ``np.mean``, so one flipped
    draw makes the sample NaN; here the flipped draws are left out of the mean.

    Reference: C.-K. Yeh et al., "On the (In)fidelity and Sensitivity of Explanations",
    NeurIPS 2019.
    """

    reduction = "mean"


_TRANSLATIONS = ("translation_x", "translation_y")


class Continuity(_PerturbationRobustness):
    """Explanation continuity (Montavon, Samek & Müller 2018). **Lower is better**.

    C(x) = max_k ||a(x) - a(x'_k)||_1 / ||x - x'_k||_2 over ``nr_steps`` perturbations of x,
    by default horizontal translations (``-W + k * ((2W + 1) // nr_steps)`` pixels, k = 1..K,
    the grid of Quantus 0.6) whose vacated columns take ``perturb_baseline`` ("black": the
    sample's minimum). A continuous explanation changes little when the input is shifted a
    little.

    Parameters
    ----------
    nr_steps:
        Number of perturbations (K).
    perturb_func:
        ``"translation_x"`` (default; along the last axis, also for (N, C, T) series),
        ``"translation_y"`` (images), ``"gaussian"``/``"uniform"``/an
        :class:`evalkit.perturb.Noise` (keyed noise, ``nr_steps`` draws, parameters as in
        :class:`LocalLipschitzEstimate`), or a callable ``f(x, step) -> x'`` on (B, ...) tensors
        (deterministic and row by row, so that scores do not depend on the batch;
        ``step`` = 0..nr_steps-1).
    perturb_baseline:
        Fill of the vacated positions of a translation: any evalkit baseline ("black", "white",
        "mean", "zero", a number, an array...).
    norm_numerator, norm_denominator:
        Default ``"l1"`` and ``"l2"`` (the paper's), or see :class:`LocalLipschitzEstimate`.
    on_prediction_change, return_nan_when_prediction_changes:
        See the module docstring (default ``"keep"``).

    Deviations from Quantus 0.6: the chosen perturbation is used (Quantus ignores
    ``perturb_func`` and ``perturb_baseline`` and always translates along x with "black", C19);
    the given ``a`` is the explanation of x, normalised and abs-ed once, like every
    re-explanation (Quantus re-explains x, and normalises and abs-es twice, C19); normalisation
    is per sample (C1); no ``+1e-9`` in the denominator: a step that leaves the input unchanged
    (the zero shift) is left out (with a deterministic explainer its ratio is 0, which never
    changes the maximum); the prediction-change check compares with the predicted class of x,
    not with ``y``, and does not crash on NumPy 2 (C16).

    Reference: G. Montavon, W. Samek, K.-R. Müller, "Methods for Interpreting and Understanding
    Deep Neural Networks", Digital Signal Processing 73, 2018.
    """

    default_abs = True
    default_normalise = True
    stochastic = False
    paper = ("Montavon, Samek & Müller, Methods for Interpreting and Understanding Deep Neural "
             "Networks, Digital Signal Processing 2018")

    def __init__(self, nr_steps: int = 28, perturb_func: Any = "translation_x",
                 perturb_baseline: Any = "black", norm_numerator: Any = "l1",
                 norm_denominator: Any = "l2", *, perturb_mean: float = 0.0,
                 perturb_std: float = 0.1, lower_bound: float = 0.02,
                 upper_bound: float | None = None, on_prediction_change: str | None = None,
                 return_nan_when_prediction_changes: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nr_steps = check_scalar("nr_steps", nr_steps, int, min_val=1)
        self.perturb_func = perturb_func
        self.perturb_baseline = perturb_baseline
        self.perturb_mean = perturb_mean
        self.perturb_std = perturb_std
        self.lower_bound = lower_bound
        self.upper_bound = upper_bound
        self.norm_numerator = norm_numerator
        self.norm_denominator = norm_denominator
        self._num = _resolve_norm("norm_numerator", norm_numerator)
        self._den = _resolve_norm("norm_denominator", norm_denominator)
        self._baseline = make_imputer(perturb_baseline)
        if not isinstance(self._baseline, Baseline):
            raise TypeError("`perturb_baseline` must be a baseline (a name, number or array), "
                            "not a mask-dependent imputer.")
        self._noise: Noise | None = None
        #: the perturbation: a translation name, a Noise or a user callable
        self._perturb = _perturb_name(perturb_func)
        name = self._perturb if isinstance(self._perturb, str) else None
        if isinstance(self._perturb, Noise) or name in ("gaussian", "uniform"):
            self._noise = _make_noise(self._perturb, perturb_mean, perturb_std, lower_bound,
                                      upper_bound)
        elif name not in _TRANSLATIONS and (name is not None or not callable(self._perturb)):
            raise ValueError("`perturb_func` must be 'translation_x', 'translation_y', "
                             "'gaussian', 'uniform', an evalkit.perturb.Noise or a callable "
                             f"f(x, step) -> x'; got {perturb_func!r}.")
        # random noise, or a translation that shifts in random baseline values (a user
        # callable is the user's own business: not known to be random)
        self.stochastic = self._noise is not None or (
            isinstance(self._perturb, str) and bool(self._baseline.stochastic))
        self._setup_prediction_change(on_prediction_change, return_nan_when_prediction_changes)

    @property
    def nr_samples(self) -> int:  # type: ignore[override]
        return self.nr_steps

    def _draws(self, batch: MetricBatch) -> _Draws:
        if self._noise is not None:
            return _noise_draws(self._noise, self.nr_steps)
        if isinstance(self._perturb, str):  # a translation (checked in __init__)
            return _translation_draws(self._perturb[-1], self.nr_steps, self._baseline, batch.x)
        return _callable_draws(self._perturb, self.nr_steps)

    def seed_scope(self) -> str | None:
        if self._noise is None and isinstance(self._perturb, str):  # a translation
            # deterministic unless the baseline is random; array baselines have no short name
            if isinstance(self._baseline.kind, np.ndarray | torch.Tensor):
                return None
            return f"translation|{self._perturb}|{self.nr_steps}|{self._baseline!r}"
        if self._noise is not None:
            return _noise_spec(self._noise, self.nr_steps)  # the same draws as the noise metrics
        return None

    def _undefined_reason(self) -> str:
        return "no perturbation changed the input (||x - x'|| = 0)"

    def _draw_values(self, batch, chunk, clean):
        return _lipschitz_ratios(batch, chunk, self._num, self._den)


# ---------------------------------------------------------------------------- relative stability
def _leaf_layers(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n and next(m.children(), None) is None]


def _relative_change(ref: torch.Tensor, new: torch.Tensor, eps_min: float, p: float
                     ) -> torch.Tensor:
    """|| (ref - new) / max(|ref|, eps_min) ||_p over the last axis (``ref`` broadcasts against
    ``new``), computed in the tensors' dtype, returned as float64."""
    scale = ref.abs().clamp_min(eps_min)
    return torch.linalg.vector_norm((ref - new) / scale, ord=p, dim=-1).to(torch.float64)


class _RelativeStability(_NoiseRobustness):
    """Relative stability (Agarwal et al. 2022): the relative change of the explanation over the
    relative change of the input, the output or a representation, maximised over the draws."""

    default_on_prediction_change = "drop_draw"
    default_normalise_func = "second_moment"

    def __init__(self, nr_samples: int = 200, perturb_func: Any = "uniform",
                 perturb_mean: float = 0.0, perturb_std: float = 0.1,
                 lower_bound: float = 0.02, upper_bound: float | None = 0.2,
                 eps_min: float = 1e-6, p_norm: float = 2, *,
                 on_prediction_change: str | None = None,
                 return_nan_when_prediction_changes: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._setup_noise(nr_samples, perturb_func, perturb_mean, perturb_std, lower_bound,
                          upper_bound)
        self._setup_relative(eps_min, p_norm)
        self._setup_prediction_change(on_prediction_change, return_nan_when_prediction_changes)

    def _setup_relative(self, eps_min: float, p_norm: float) -> None:
        self.eps_min = check_scalar("eps_min", eps_min, (int, float), min_val=0,
                                    include_min=False)
        self.p_norm = check_scalar("p_norm", p_norm, (int, float), min_val=1)

    def _numerator(self, batch: MetricBatch, chunk: _Chunk) -> torch.Tensor:
        s, k = chunk.a_ok.shape
        a0 = _flat(batch.a[chunk.idx]).unsqueeze(1)  # type: ignore[index]
        return _relative_change(a0, chunk.a.reshape(s, k, -1), self.eps_min, self.p_norm)

    def _ratio(self, numer: torch.Tensor, denom: torch.Tensor) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
        return numer / denom.clamp_min(self.eps_min), torch.ones_like(numer, dtype=torch.bool)


@_documented
class RelativeInputStability(_RelativeStability):
    """Relative input stability (Agarwal et al. 2022). **Lower is better**.

    RIS(x) = max_k ||(a - a'_k) / a||_p / max(||(x - x'_k) / x||_p, eps_min), with elementwise
    divisions (floored at eps_min, see below), over the perturbations that keep the predicted
    class (``on_prediction_change="drop_draw"``, the default, as in OpenXAI's class-preserving
    variant).

    Parameters
    ----------
    <<NOISE>>
    <<RELATIVE>>

    <<DEVIATIONS>>

    Reference: C. Agarwal, N. Johnson, M. Pawelczyk, S. Krishna, E. Saxena, M. Zitnik,
    H. Lakkaraju, "Rethinking Stability for Attribution-based Explanations", arXiv:2203.06877,
    2022.
    """

    paper = ("Agarwal et al., Rethinking Stability for Attribution-based Explanations, "
             "arXiv 2022")

    def _draw_values(self, batch, chunk, clean):
        s, k = chunk.a_ok.shape
        x0 = _flat(batch.x[chunk.idx]).unsqueeze(1)
        denom = _relative_change(x0, chunk.x.reshape(s, k, -1), self.eps_min, self.p_norm)
        return self._ratio(self._numerator(batch, chunk), denom)


@_documented
class RelativeOutputStability(_RelativeStability):
    """Relative output stability (Agarwal et al. 2022). **Lower is better**.

    ROS(x) = max_k ||(a - a'_k) / a||_p / max(||h(x) - h(x'_k)||_p, eps_min), where h are the
    model's outputs (logits; probabilities with ``softmax=True``), over the class-preserving
    perturbations by default. The model outputs on the perturbed inputs come from the same
    forward pass as the prediction check. The denominator is the paper's (and Quantus')
    absolute output change; OpenXAI's implementation divides by the relative change
    ||(h(x) - h(x'_k)) / h(x)||_p instead.

    Parameters
    ----------
    <<NOISE>>
    <<RELATIVE>>

    <<DEVIATIONS>>

    Reference: C. Agarwal et al., "Rethinking Stability for Attribution-based Explanations",
    arXiv:2203.06877, 2022.
    """

    paper = RelativeInputStability.paper
    needs_outputs = True

    def _draw_values(self, batch, chunk, clean):
        h0 = clean[chunk.idx]
        h = chunk.fwd
        denom = torch.linalg.vector_norm(h - h0.unsqueeze(1), ord=self.p_norm, dim=2)
        return self._ratio(self._numerator(batch, chunk), denom)


class _RepresentationForward(_Forward):
    """Model outputs plus, per row, the relative change of the captured layers' outputs with
    respect to the unperturbed sample's. The unperturbed pass (``clean=True``) stores the
    flattened representations (N, R) in the model's dtype and returns the outputs only."""

    spec = None

    def __init__(self, metric: RelativeRepresentationStability, module: torch.nn.Module,
                 layers: list[str], n: int, *, skip_silent: bool = False) -> None:
        self.metric = metric
        self.module = module
        self.layers = layers
        self.n = n
        #: leave out layers that do not run (layer_names="all": e.g. an unused head)
        self.skip_silent = skip_silent
        self.clean = True
        self.clean_reps: torch.Tensor | None = None
        self._used: list[str] | None = None
        self._store: dict[str, list[torch.Tensor]] | None = None

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        modules = dict(self.module.named_modules())
        missing = [name for name in self.layers if not name or name not in modules]
        if missing:
            raise ValueError(f"Unknown layers {missing}; e.g. {list(modules)[1:8]}.")
        store: dict[str, list[torch.Tensor]] = {name: [] for name in self.layers}

        def hook_for(name: str) -> Callable[..., None]:
            def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
                if isinstance(output, tuple | list):
                    output = output[0]
                # a copy taken now: a later in-place operation (ReLU(inplace=True) after the
                # layer) would otherwise change the recorded output
                store[name].append(output.reshape(output.shape[0], -1).clone())

            return hook

        handles = [modules[name].register_forward_hook(hook_for(name)) for name in self.layers]
        self._store = store
        try:
            yield
        finally:
            self._store = None
            for h in handles:
                h.remove()

    def _reps(self) -> torch.Tensor:
        parts = []
        used = []
        for name in self.layers:
            captured = self._store[name]  # type: ignore[index]
            if not captured:
                if self.skip_silent:
                    continue
                raise RuntimeError(f"Layer {name!r} produced no output in the forward pass.")
            used.append(name)
            parts.extend(captured)
            captured.clear()
        if self._used is None:
            if not parts:
                raise RuntimeError(f"None of the layers {self.layers} ran in the forward pass.")
            self._used = used
        elif used != self._used:
            raise RuntimeError("The representation layers that ran differ between forward "
                               f"passes ({self._used} vs {used}).")
        return torch.cat(parts, 1)

    def reduce(self, outputs: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        out = super().reduce(outputs, sample)
        reps = self._reps()
        if self.clean:
            if self.clean_reps is None:
                self.clean_reps = torch.empty((self.n, reps.shape[1]), dtype=reps.dtype,
                                              device=reps.device)
            self.clean_reps[sample] = reps
            return out
        rel = _relative_change(self.clean_reps[sample], reps,  # type: ignore[index]
                               self.metric.eps_min, self.metric.p_norm)
        return torch.cat([out, rel.unsqueeze(1)], 1)


@_documented
class RelativeRepresentationStability(_RelativeStability):
    """Relative representation stability (Agarwal et al. 2022). **Lower is better**.

    RRS(x) = max_k ||(a - a'_k) / a||_p / max(||(L(x) - L(x'_k)) / L(x)||_p, eps_min), where
    L(x) concatenates the (flattened) outputs of the chosen layers, over the class-preserving
    perturbations by default.

    Parameters
    ----------
    layer_names:
        The layers whose outputs form the representation, by module name (see
        ``model.named_modules()``), e.g. ``["fc.0"]``. Required: choose them explicitly;
        ``"all"`` takes every leaf module that runs in the forward pass (memory-hungry, and it
        mixes scales). :meth:`resolve_layers` shows the names chosen for a model.
    layer_indices:
        Quantus' alternative: positions in Quantus' list of layers, i.e. every named module
        except the model itself and ``nn.Sequential`` containers, in ``named_modules()``
        order; negative positions count from the end. Give one of ``layer_names`` and
        ``layer_indices``.
    <<NOISE>>
    <<RELATIVE>>

    <<DEVIATIONS>>
    Layers (RRS): no default (Quantus takes all layers); ``"all"`` means the leaf modules that
    run (Quantus: every module but ``nn.Sequential`` containers, so a residual block's output
    and those of the layers inside it all enter); each layer's output is recorded as a copy
    when the layer returns (Quantus keeps the tensor, so a following ``ReLU(inplace=True)``
    rectifies the recorded representation); negative ``layer_indices`` count from the end
    (Quantus' are off by one: -1 selects nothing).

    Needs a ``torch.nn.Module`` (the layers are read with forward hooks, removed afterwards).

    Reference: C. Agarwal et al., "Rethinking Stability for Attribution-based Explanations",
    arXiv:2203.06877, 2022.
    """

    paper = RelativeInputStability.paper
    needs_outputs = True

    def __init__(self, nr_samples: int = 200, perturb_func: Any = "uniform",
                 perturb_mean: float = 0.0, perturb_std: float = 0.1,
                 lower_bound: float = 0.02, upper_bound: float | None = 0.2,
                 eps_min: float = 1e-6, p_norm: float = 2, *,
                 layer_names: list[str] | str | None = None,
                 layer_indices: list[int] | None = None,
                 on_prediction_change: str | None = None,
                 return_nan_when_prediction_changes: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(nr_samples, perturb_func, perturb_mean, perturb_std, lower_bound,
                         upper_bound, eps_min, p_norm, on_prediction_change=on_prediction_change,
                         return_nan_when_prediction_changes=return_nan_when_prediction_changes,
                         **kwargs)
        if layer_names is not None and layer_indices is not None:
            raise ValueError("Give either `layer_names` or `layer_indices`, not both.")
        if isinstance(layer_names, str) and layer_names != "all":
            layer_names = [layer_names]
        if isinstance(layer_indices, int | np.integer) and not isinstance(layer_indices, bool):
            layer_indices = [int(layer_indices)]
        self.layer_names = layer_names
        self.layer_indices = layer_indices

    def resolve_layers(self, model: torch.nn.Module) -> list[str]:
        """The names of the layers whose outputs form the representation of ``model``."""
        named = list(model.named_modules())
        if self.layer_names is None and self.layer_indices is None:
            leaves = _leaf_layers(model)
            raise ValueError(
                "RelativeRepresentationStability needs the representation layers: pass "
                f"layer_names=[...] (e.g. {leaves[-3:]}) or layer_names='all' for every leaf "
                "module."
            )
        if self.layer_names == "all":
            return _leaf_layers(model)
        if self.layer_indices is not None:
            # Quantus' list: every module but the model itself and nn.Sequential containers
            listed = [n for n, m in named if n and not isinstance(m, torch.nn.Sequential)]
            out = []
            for i in self.layer_indices:
                if isinstance(i, bool) or not isinstance(i, int | np.integer):
                    raise TypeError(f"`layer_indices` must be integers; got {i!r}.")
                if not -len(listed) <= i < len(listed):
                    raise ValueError(f"layer index {i} is out of range: the model has "
                                     f"{len(listed)} indexable layers ({listed}).")
                out.append(listed[i])
            return out
        return list(self.layer_names)  # type: ignore[arg-type]

    def _resolve_layers(self, batch: MetricBatch) -> list[str]:
        module = getattr(batch.model, "model", None)
        if not isinstance(module, torch.nn.Module) or not hasattr(batch.model, "capture"):
            raise TypeError("RelativeRepresentationStability needs a torch.nn.Module: it reads "
                            "hidden layers with forward hooks.")
        return self.resolve_layers(module)

    def _forward(self, batch: MetricBatch) -> _Forward:
        return _RepresentationForward(self, batch.model.model,  # type: ignore[union-attr]
                                      self._resolve_layers(batch), batch.n,
                                      skip_silent=self.layer_names == "all")

    def _clean_forward(self, batch: MetricBatch, forward: _Forward) -> torch.Tensor:
        assert isinstance(forward, _RepresentationForward)
        outputs = super()._clean_forward(batch, forward)
        forward.clean = False
        return outputs

    def _draw_values(self, batch, chunk, clean):
        denom = chunk.fwd[:, :, -1]
        return self._ratio(self._numerator(batch, chunk), denom)


# ============================================================================ Consistency
_DISCRETISERS = ("top_n_sign", "top_n", "sign", "rank", "floating_points")


class Consistency(Metric):
    """Consistency of explanations and predictions (Dasgupta, Frost & Moshkovitz 2022).
    **Higher is better.** Set-level.

    Each attribution map is discretised into a label (``discretise_func``); the score of sample
    i is the share of the *other* samples with the same label that also have the same predicted
    class: P(f(x_j) = f(x_i) | e(x_j) = e(x_i), j != i). The global consistency of the data set
    (the same probability over all ordered pairs with equal labels) is ``consistency_`` after a
    call. A sample whose label no other sample shares is NaN with a reason.

    Set-level: a sample's score depends on the other samples in the call (that is the
    definition); it does not depend on ``batch_size`` or the order of the samples.

    Parameters
    ----------
    discretise_func:
        ``"top_n_sign"`` (default): the set of the n features with the largest |a| (ties: lower
        index first) with their signs; ``"top_n"``: that set without signs; ``"sign"``: the sign
        pattern of every feature; ``"rank"``: the full descending order; ``"floating_points"``:
        the values rounded to n decimals; or a callable mapping the (N, D) float64 attributions
        to (N, m) codes (rows compared for equality) or (N,) labels. Quantus' functions of
        these names are recognised and replaced by the ones here.
    n:
        n of the top-n discretisers (default 5) or the decimals of ``"floating_points"``
        (default 2).

    With the default ``abs=True`` (as in Quantus) every attribution is non-negative, so
    ``"top_n_sign"`` and ``"sign"`` see no negative signs; pass ``abs=False`` to use them.

    Deviations from Quantus 0.6: ``"top_n_sign"`` really takes the n most relevant features
    (Quantus takes the first n entries of the flattened map, C10, so on images every map gets
    the same label); the direction is higher-is-better as in the paper (Quantus declares LOWER,
    C10); a sample without a same-label partner is NaN, not 0; the whole call is one set
    (Quantus compares within each ``batch_size`` chunk).

    Reference: S. Dasgupta, N. Frost, M. Moshkovitz, "Framework for Evaluating Faithfulness of
    Local Explanations", ICML 2022.
    """

    family = "robustness"
    higher_is_better = True
    set_level = True
    default_abs = True
    default_normalise = True
    default_softmax = False
    paper = ("Dasgupta, Frost & Moshkovitz, Framework for Evaluating Faithfulness of Local "
             "Explanations, ICML 2022")

    def __init__(self, discretise_func: Any = "top_n_sign", n: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        discretise_func = _quantus_name(discretise_func, _DISCRETISERS)
        if not callable(discretise_func):
            check_option("discretise_func", discretise_func, _DISCRETISERS)
        self.discretise_func = discretise_func
        self.n = check_scalar("n", n, int, min_val=0, allow_none=True)
        self.consistency_: float | None = None

    def _labels(self, a: torch.Tensor) -> torch.Tensor:
        """(N,) int64 labels: equal iff the discretised maps are equal."""
        flat = _flat(a).to(torch.float64)
        f = self.discretise_func
        if callable(f):
            codes = torch.as_tensor(f(flat), device=a.device)
        elif f in ("top_n_sign", "top_n"):
            n = min(self.n if self.n is not None else 5, flat.shape[1])
            # stable descending sort by |a|: ties are broken by the lower index
            order = torch.sort(flat.abs(), dim=1, descending=True, stable=True).indices[:, :n]
            idx = torch.sort(order, dim=1).values
            codes = idx
            if f == "top_n_sign":
                codes = torch.cat([idx, torch.sign(flat.gather(1, idx)).to(torch.int64)], 1)
        elif f == "sign":
            codes = torch.sign(flat).to(torch.int64)
        elif f == "rank":
            codes = torch.sort(flat, dim=1, descending=True, stable=True).indices
        else:  # floating_points
            decimals = self.n if self.n is not None else 2
            codes = torch.round(flat, decimals=decimals)
        if codes.ndim == 1:
            codes = codes.unsqueeze(1)
        if codes.shape[0] != a.shape[0]:
            raise ValueError(f"`discretise_func` returned {codes.shape[0]} rows for "
                             f"{a.shape[0]} attributions.")
        return torch.unique(codes.reshape(codes.shape[0], -1), dim=0, return_inverse=True)[1]

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        batch.require_model()
        x = batch.x
        pred = batch.runner.run(  # type: ignore[union-attr]
            lambda index: x[index[0]], (batch.n,),
            reduce=lambda out, index: _argmax_2d(out), row_shape=tuple(x.shape[1:]),
            desc="predictions")
        labels = self._labels(batch.a)  # type: ignore[arg-type]
        # counts per explanation label and per (label, predicted class) pair, O(N)
        n_lab = int(labels.max()) + 1
        pair = labels * (int(pred.max()) + 1) + pred
        same_label = torch.bincount(labels, minlength=n_lab)[labels] - 1
        same_both = torch.bincount(pair)[pair] - 1
        defined = same_label > 0
        score = same_both.to(torch.float64) / same_label.clamp_min(1).to(torch.float64)
        batch.set_nan(~defined, "no other sample has the same discretised explanation")
        pairs = int(same_label.sum())
        self.consistency_ = (float(same_both.sum()) / pairs) if pairs else float("nan")
        return torch.where(defined, score, torch.full_like(score, float("nan")))


def _argmax_2d(outputs: torch.Tensor) -> torch.Tensor:
    if outputs.ndim != 2:
        raise ValueError("Consistency needs (N, classes) model outputs to compare predicted "
                         f"classes; got shape {tuple(outputs.shape)}.")
    return outputs.argmax(1)
