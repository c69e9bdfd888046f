"""The shared engine of the perturbation-robustness metrics: draws, stacking, re-explanation,
forward passes and prediction-change handling (see the package docstring)."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ... import _rng
from ..._batching import parse_bytes
from ..._validation import all_finite, check_option, check_scalar, finite_rows
from ...cache import (
    ExplanationCache,
    active_explanation_cache,
    combine_hashes,
    model_key,
    row_hashes,
)
from ...modality import Modality
from ...perturb import Baseline, GaussianNoise, Noise, TokenDropout, UniformNoise, make_noise
from ..base import Metric, MetricBatch

ON_PREDICTION_CHANGE = ("keep", "drop_draw", "nan_sample")

#: rng stream of the input noise, shared by every noise-based robustness metric (so that metrics
#: with the same noise settings and seed draw the same perturbations and can share them)
_NOISE_STREAM = 0x0B05
#: bytes of perturbed inputs plus their explanations built at once, by device type (the explain
#: function is then called in chunks of the batch size; fewer, larger stacks leave fewer partial
#: chunks)
_STACK_BUDGET = {"cpu": 256 * 2**20, "cuda": 1024 * 2**20}


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
    # the built-in noises return a fresh buffer of the requested dtype: x is added into it
    # (x + n is n + x bit for bit) instead of into a second (S, K, ...) tensor
    fresh = type(noise) in (GaussianNoise, UniformNoise)

    def make(x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        # one stream per sample, the sample's whole (K, ...) block at once
        n = noise.sample(_rng.combine(keys, _NOISE_STREAM), (k, *x.shape[1:]), x.dtype)
        n = n.to(x.device)
        if fresh and n.dtype == x.dtype and n.is_contiguous():
            return n.add_(x.unsqueeze(1))
        return x.unsqueeze(1) + n

    return _Draws(k, make, _noise_spec(noise, k).encode())


def _dropout_draws(noise: TokenDropout, k: int, modality: Modality) -> _Draws:
    """K copies of each sample with random features dropped the modality's way (token ids:
    replaced by the mask token), each token of each draw with probability ``noise.rate``, from
    the sample's key (the noise stream of the additive noises)."""
    def make(x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        drop = noise.drop_mask(_rng.combine(keys, _NOISE_STREAM), (k, *x.shape[1:]))
        copies = x.unsqueeze(1).expand(x.shape[0], k, *x.shape[1:])
        return modality.drop_features(copies, drop.to(x.device))

    # the replacement (the mask token id) is part of what the copies are
    return _Draws(k, make, f"{_noise_spec(noise, k)}|{modality!r}".encode())


def _valid_noise_draws(noise: Any, k: int) -> _Draws:
    """Draws of a non-additive noise that keeps inputs valid (``noise.draws(x, keys, k)``,
    e.g. :class:`~evalkit.perturb.ColumnNoise`), from the same keys as :func:`_noise_draws`."""
    def make(x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return noise.draws(x, _rng.combine(keys, _NOISE_STREAM), k)

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


def _translation_draws(direction: str, nr_steps: int, baseline: Baseline, x: torch.Tensor,
                       modality: Modality) -> _Draws:
    axis = modality.translation_axis(x, direction)
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


class _Forward:
    """What a forward pass over perturbed inputs returns per row: the model outputs (B, C),
    float64 (the prediction and, for RelativeOutputStability, the output change); outputs
    with more axes (detections (B, D, 6), maps) are flattened to (B, m)."""

    spec: bytes | None = b"outputs"
    #: the forward needs to know the samples of the rows (begin, rows)
    needs_samples: ClassVar[bool] = False

    def context(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def begin(self, sample_of_row: torch.Tensor) -> None:
        """A pass over rows starts: ``sample_of_row`` (R,) is the sample of each row."""

    def rows(self, index: torch.Tensor) -> None:
        """The rows ``index`` (positions in the pass, consecutive) are forwarded next."""

    def reduce(self, outputs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The values of the rows ``index`` (positions in the pass) from their outputs."""
        if outputs.ndim < 2:
            raise ValueError(
                "Checking predictions needs (N, classes) model outputs; the model returned "
                f"shape {tuple(outputs.shape)}. Use on_prediction_change='keep'."
            )
        return outputs.reshape(outputs.shape[0], -1).to(torch.float64)


@dataclass
class _Chunk:
    """The perturbed copies of S samples: ``idx`` (S,) sample indices (consecutive: ``rows``
    is the same selection as a slice, a view where ``idx`` gathers a copy), ``x`` (S, K, ...)
    perturbed inputs, ``a`` (S, K, ...) their preprocessed explanations (float64) or None,
    ``a_ok`` (S, K) finite re-explanations, ``fwd`` (S, K, m) forward values or None.
    ``a_owned``: ``a`` is the engine's own buffer (a float64 copy, not the explain function's
    output nor a view of the inputs it was given), used by nothing once the chunk's draw values
    are computed, so that they may be computed in it (:func:`_minus`)."""

    idx: torch.Tensor
    x: torch.Tensor
    a: torch.Tensor | None
    a_ok: torch.Tensor
    fwd: torch.Tensor | None
    rows: slice
    a_owned: bool = False
    #: every entry of ``a_ok`` is True
    all_finite: bool = False


def _minus(values: torch.Tensor, ref: torch.Tensor, owned: bool) -> torch.Tensor:
    """``values - ref`` (``ref`` broadcasting against ``values``), written into ``values``
    where it is the engine's own buffer of the result's dtype and shape: the same numbers
    without a second (S, K, ...) tensor."""
    if (owned and torch.result_type(values, ref) == values.dtype
            and torch.broadcast_shapes(values.shape, ref.shape) == values.shape):
        return values.sub_(ref)
    return values - ref


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
        plain_maps = (not self.normalise and not self.abs
                      and type(self)._preprocess_attributions is Metric._preprocess_attributions)
        keys = batch.keys
        for start in range(0, n, per_chunk):
            idx = torch.arange(start, min(n, start + per_chunk), device=x.device)
            s = idx.shape[0]
            rows = slice(start, start + s)
            # copies (a gather), not views: a user's perturb_func gets rows it may modify
            # (index_select: the same copy as x[idx], several times faster on the CPU)
            xp = draws.make(x.index_select(0, idx), keys.index_select(0, idx))  # (S, K, ...)
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
            # (without a cache every sample is to do: no scan of the S slots)
            todo = [j for j in range(s) if raw[j] is None] if store is not None else range(s)
            got = None
            if todo:
                xs = flat_x if len(todo) == s else flat_x[_rows_of(todo, k, x.device)]
                # all of the chunk: idx itself (indexing with a list of S ints costs more)
                sel = idx if len(todo) == s else idx[todo]
                ys = None if batch.y is None else batch.y[sel].repeat_interleave(k, dim=0)
                # small rows (a table's): calls of several whole model chunks, as
                # Metric._run_explain chooses (explain_call_rows)
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
            # one sum decides almost every row (finite_rows), instead of isfinite + all
            all_ok = all_finite(a_raw)
            a_ok = (torch.ones((s, k), dtype=torch.bool, device=a_raw.device) if all_ok
                    else finite_rows(_flat(a_raw)).reshape(s, k))
            if all_ok and plain_maps:
                # what _preprocess_attributions does with finite maps and neither
                # normalisation nor abs (a float64 copy), without its second finiteness sum
                a = batch.modality.align(a_raw, flat_x).to(device=batch.device,
                                                           dtype=torch.float64)
            else:
                a = self._preprocess_attributions(batch, a_raw, flat_x, flag_nan=False)
            # a new tensor (a float64 copy, normalised...), not the explain function's output
            # or a cached block
            a_owned = a.untyped_storage().data_ptr() != a_raw.untyped_storage().data_ptr()
            a = a.reshape(s, k, *a.shape[1:])
            # ---- forward values
            fwd_t = None
            if forward is not None:
                todo = [j for j in range(s) if fwd[j] is None] if fwd_cached else range(s)
                if todo:
                    xs = flat_x if len(todo) == s else flat_x[_rows_of(todo, k, x.device)]
                    if forward.needs_samples:
                        forward.begin((idx if len(todo) == s else idx[todo]).repeat_interleave(k))
                    # copies of the stack's rows (_forward_rows)
                    with forward.context():
                        vals = batch.runner.run(  # type: ignore[union-attr]
                            functools.partial(_forward_rows, forward, xs), (xs.shape[0],),
                            reduce=lambda out, index: forward.reduce(out, index[0]),
                            row_shape=tuple(x.shape[1:]), desc="perturbed inputs")
                    vals = vals.reshape(len(todo), k, -1)
                    if len(todo) != s or fwd_cached:  # per-sample views only where needed
                        for j, v in zip(todo, vals, strict=True):
                            fwd[j] = v
                    if fwd_cached:
                        store.put([fkeys[j] for j in todo], [fwd[j].clone() for j in todo])
                fwd_t = vals if len(todo) == s else torch.stack(fwd, 0)
            yield _Chunk(idx=idx, x=xp, a=a, a_ok=a_ok, fwd=fwd_t, rows=rows,
                         a_owned=a_owned, all_finite=all_ok)

    def _clean_forward(self, batch: MetricBatch, forward: _Forward) -> torch.Tensor:
        """Model outputs (N, C) float64 of the unperturbed inputs, once per call."""
        x = batch.x
        if forward.needs_samples:
            forward.begin(torch.arange(batch.n, device=x.device))
        with forward.context():
            return batch.runner.run(  # type: ignore[union-attr]
                functools.partial(_forward_rows, forward, x), (batch.n,),
                reduce=lambda out, index: forward.reduce(out, index[0]),
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
        target = batch.target
        if check:
            # the target predicts from outputs of their own shape (flattened in the passes)
            out_shape = tuple(batch.model.output_shape(batch.x))  # type: ignore[union-attr]
            n_out = math.prod(out_shape)
            pred = target.predict(clean[:, :n_out].reshape(-1, *out_shape))  # type: ignore[index]

        values = torch.full((n, k), float("nan"), dtype=torch.float64, device=dev)
        defined = torch.zeros((n, k), dtype=torch.bool, device=dev)
        finite = torch.ones((n, k), dtype=torch.bool, device=dev)
        changed = torch.zeros((n, k), dtype=torch.bool, device=dev) if check else None
        all_finite_maps = True
        for chunk in self._iter_chunks(batch, draws, forward):
            self._check_attribution_layout(batch, chunk.a)
            all_finite_maps = all_finite_maps and chunk.all_finite
            v, d = self._draw_values(batch, chunk, clean)
            values[chunk.rows] = v
            defined[chunk.rows] = d
            finite[chunk.rows] = chunk.a_ok
            if check:
                s_, k_ = chunk.fwd.shape[:2]  # type: ignore[union-attr]
                drawn = target.predict(chunk.fwd[:, :, :n_out].reshape(s_ * k_, *out_shape))  # type: ignore[index]
                before = pred[chunk.rows].repeat_interleave(k_, 0)  # type: ignore[index]
                changed[chunk.rows] = ~target.agree(drawn, before).reshape(s_, k_)  # type: ignore[index]

        if all_finite_maps:  # every re-explanation finite (one sum per chunk said so)
            use = defined
        else:
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
        if bool(use.all()):
            # every draw counts (the common case): the masks below would select every value
            masked = values
            score = values.amax(1) if self.reduction == "max" else values.sum(1) / k
        else:
            batch.set_nan(~use.any(1), self._undefined_reason())
            masked = torch.where(use, values, torch.full_like(values, float("nan")))
            if self.reduction == "max":
                score = torch.where(use, values, torch.full_like(values, -float("inf"))).amax(1)
            else:
                count = use.sum(1)
                score = (torch.where(use, values, torch.zeros_like(values)).sum(1)
                         / count.clamp_min(1))
            score = torch.where(use.any(1), score, torch.full_like(score, float("nan")))
        batch.record("draw_scores", masked, per_sample=True)
        batch.record("prediction_changed", changed, per_sample=changed is not None)
        return score


def _forward_rows(forward: _Forward, xs: torch.Tensor, index: tuple[torch.Tensor, ...]
                  ) -> torch.Tensor:
    """The runner's builder of a pass over the rows of ``xs``: copies of the rows (a gather),
    not views, so that a model that writes into its input cannot change the perturbed inputs
    that RIS and LLE read afterwards (index_select: the same copy as xs[i], several times
    faster on the CPU); ``forward`` is told which rows come next."""
    if forward.needs_samples:
        forward.rows(index[0])
    return xs.index_select(0, index[0])


def _rows_of(samples: list[int], k: int, device: torch.device) -> torch.Tensor:
    s = torch.tensor(samples, dtype=torch.int64, device=device)
    return (s.unsqueeze(1) * k + torch.arange(k, device=device)).reshape(-1)


class _NoiseRobustness(_PerturbationRobustness):
    """Metrics whose perturbations are additive input noise (``perturb_func``), or, on token
    ids, token dropout (:class:`~evalkit.perturb.TokenDropout`) for the metrics that accept it
    (:attr:`feature_dropout_noise`)."""

    perturb_func: Any
    perturb_mean: float
    perturb_std: float
    lower_bound: float
    upper_bound: float | None
    #: whether ``perturb_func=TokenDropout(rate)`` is accepted (then the metric is declared for
    #: token ids): only metrics that never measure a distance between inputs, which ids lack
    feature_dropout_noise: ClassVar[bool] = False

    def _drops_features(self) -> bool:
        return isinstance(getattr(self, "noise_", None), TokenDropout)

    def _derived_metadata(self) -> dict[str, Any]:
        derived = dict(super()._derived_metadata())
        if self._drops_features():
            derived["modalities"] = ("tokens",)
        return derived

    def _check_modality(self, modality: Modality) -> None:
        if self._drops_features():
            if not modality.feature_dropout:
                raise ValueError(
                    f"{type(self).__name__} with TokenDropout drops features, which is not "
                    f"defined for {modality.name} inputs ({modality.layout}); use additive "
                    "noise there."
                )
            return
        if not modality.additive_noise:
            raise ValueError(
                f"{type(self).__name__} perturbs inputs with additive noise, which is not "
                f"defined for {modality.name} inputs ({modality.layout})"
                + ("; pass perturb_func=evalkit.perturb.TokenDropout(rate) to drop tokens."
                   if modality.feature_dropout and type(self).feature_dropout_noise else ".")
            )

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
        if isinstance(self.noise_, TokenDropout) and not type(self).feature_dropout_noise:
            raise ValueError(
                f"{type(self).__name__} measures a distance between inputs, which token ids do "
                "not have: TokenDropout is for MaxSensitivity and AvgSensitivity."
            )

    def _draws(self, batch: MetricBatch) -> _Draws:
        if isinstance(self.noise_, TokenDropout):
            return _dropout_draws(self.noise_, self.nr_samples, batch.modality)
        noise = batch.modality.valid_noise(self.noise_)
        if noise is not self.noise_:  # a table's column spec: rows stay valid
            return _valid_noise_draws(noise, self.nr_samples)
        return _noise_draws(self.noise_, self.nr_samples)

    def _random_sources(self) -> dict[str, Any]:
        return {"noise": self.noise_}

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
    into NaN (deviation C18; ``on_prediction_change="nan_sample"`` reproduces Quantus); the result
    is not aggregated twice (deviation C18); the safe divisors above; per-sample normalisation
    (deviation C1) when ``normalise=True``. The default perturbation is Quantus' x + U(0.02, 0.2)
    (always positive). The predicted class of x is computed once (Quantus re-predicts x for every
    draw).
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
        set: Quantus' convention) or an :class:`evalkit.perturb.Noise`. On token ids, metrics
        that measure no input distance (MaxSensitivity, AvgSensitivity) take
        :class:`evalkit.perturb.TokenDropout` (``rate``: each token replaced by the mask token
        with that probability, seeded; synonym-free token-dropout noise) and are then declared
        for tokens only.
    on_prediction_change:
        ``"keep"``, ``"drop_draw"`` or ``"nan_sample"``; see the module docstring.
    return_nan_when_prediction_changes:
        Quantus' name: True means ``"drop_draw"``, False ``"keep"``.
"""
