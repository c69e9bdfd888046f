"""Explainer registry and the ``explain`` entry point."""

from __future__ import annotations

import contextlib
import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .. import _quantus_compat
from .._batching import resolve_batch_size
from .._validation import as_tensor, check_labels, check_option, is_numpy_like
from ..modality import Modality, as_modality
from ..models import ModelWrapper, wrap_model
from ..models.targets import _BaseTarget
from ._hooks import require_gradients, require_module, resolve_embedding_layer

__all__ = [
    "ExplainerInfo",
    "available_methods",
    "explain",
    "explainer_info",
    "get_explainer",
    "numpy_explain_fn",
    "register_explainer",
    "register_token_explainer",
]

#: ``fn(model: ModelWrapper, x: Tensor, y: Tensor | None, **kwargs) -> Tensor`` per method
Explainer = Callable[..., torch.Tensor]

_REDUCTIONS = (None, "sum", "mean", "abs_sum", "max_abs")
#: bytes of *input* per explainer call when no batch size is given. Explainers run backward
#: passes (and captum expands inputs over steps), so a chunk holds far more activation memory
#: than a forward-only runner chunk of the same input size: the CUDA budget is smaller than the
#: runner's. A chunk that still runs out of CUDA memory is retried at half the size. On the
#: CPU, 2 MiB (222 rows of W1's 3 x 28 x 28 inputs) keeps a Saliency chunk's memory within the
#: heap that glibc keeps between chunks (4 MiB chunks re-faulted their pages: 0.60 against
#: 0.53 ms per row; see evalkit._batching.keep_cpu_heap).
EXPLAIN_MEMORY_BUDGET = {"cpu": 2 * 2**20, "cuda": 32 * 2**20}


@dataclass(frozen=True)
class ExplainerInfo:
    """What an explanation method needs and gives; the registry's record of a method.

    Attributes
    ----------
    name:
        The registered name.
    fn:
        ``fn(model: ModelWrapper, x, y, **kwargs) -> Tensor`` (``x`` a chunk on the model's
        device, ``y`` its labels or None).
    requires_gradients:
        Needs a differentiable wrapper (a torch model); ``explain`` raises a TypeError otherwise.
    requires_module:
        Needs a ``torch.nn.Module`` (it hooks layers): CAMs, layer methods, DeepLift, LRP...
    uses_target:
        Explains the wrapper's target score (so ``y`` is validated against it). False for
        class-agnostic maps (EigenCAM, LayerActivation) and for the controls.
    model_free:
        Does not look at the model at all (the controls).
    per_sample:
        Keyword arguments that hold one row per sample (e.g. ``masks`` of GroundTruth, per-sample
        ``baselines``): ``explain`` slices them along with ``x`` when it chunks the batch. A value
        whose first axis is not N is passed to every chunk unchanged (a shared baseline).
    needs_masks:
        Needs ground-truth masks, passed as ``masks=`` (GroundTruth). ``evaluate()`` and metrics
        can look this up to pass their ``s``.
    stochastic:
        Draws random numbers (always from a ``seed`` keyword, per sample; never the global RNG).
    batch_dependent:
        A sample's map depends on the other samples of its batch. No registered method is.
    quantus_names:
        Accept Quantus' keyword names (``baseline``, ``gc_layer``, ``interpolate``,
        ``interpolate_mode``, ``xai_lib_kwargs``); ``explain`` renames them to evalkit's
        (``baselines``, ``layer``, ``upsample_mode``, ``constructor_kwargs``) before the call.
    modalities:
        The input modalities the method is defined for (names of
        :data:`evalkit.modality.MODALITIES`: ``"image"``, ``"series"``, ``"tabular"``,
        ``"tokens"``); ``explain`` refuses others with an error that names the method and what
        to use instead. ``None`` (the default for methods registered by users): not declared,
        every input is passed to ``fn``.
    token_fn:
        The implementation used on token ids (N, L) (the ``"tokens"`` modality), if it differs
        from ``fn``: attribution at the embedding layer, or perturbation by a mask token
        (:mod:`evalkit.explain.tokens`). It returns one value per token, (N, L).
    """

    name: str
    fn: Explainer
    requires_gradients: bool = False
    requires_module: bool = False
    uses_target: bool = True
    model_free: bool = False
    per_sample: tuple[str, ...] = ()
    needs_masks: bool = False
    stochastic: bool = False
    batch_dependent: bool = False
    quantus_names: bool = False
    modalities: tuple[str, ...] | None = None
    token_fn: Explainer | None = None

    def supports(self, modality: str) -> bool:
        """Whether the method is defined for inputs of ``modality`` (a name)."""
        return self.modalities is None or modality in self.modalities


#: every built-in modality
ALL_MODALITIES = ("image", "series", "tabular", "tokens")
#: inputs with features laid out along axes (what convolution layers and CAMs need)
GRID_MODALITIES = ("image", "series")
#: floating-point inputs: input-gradient and hooked-backprop methods apply as they are
FLOAT_MODALITIES = ("image", "series", "tabular")

#: what to use instead, per modality, when a method does not apply
_INSTEAD = {
    "tokens": "For token ids use LayerIntegratedGradients, LayerGradientXActivation, "
              "IntegratedGradients, Saliency, Gradient, InputXGradient, GradientShap or "
              "DeepLift (at the embedding layer: pass `embedding_layer=`), or Occlusion, "
              "FeatureAblation, Lime or KernelShap (tokens replaced by the mask token id).",
    "tabular": "For (N, F) tables use an input-space method (Saliency, InputXGradient, "
               "IntegratedGradients, GradientShap, DeepLift, LRP, Occlusion, "
               "FeatureAblation, Lime, KernelShap); layer methods need `layer=` and "
               "`raw=True`.",
    "series": "For (N, C, T) series use an input-space method (Saliency, "
              "IntegratedGradients, Occlusion, ...) or a CAM over a Conv1d layer.",
    "image": "Use an input-space method (Saliency, IntegratedGradients, Occlusion, ...).",
}


#: Quantus' ``explain`` keyword names -> evalkit's
QUANTUS_KWARGS = {
    "baseline": "baselines",
    "gc_layer": "layer",
    "interpolate_mode": "upsample_mode",
    "xai_lib_kwargs": "constructor_kwargs",
}


_EXPLAINERS: dict[str, ExplainerInfo] = {}
_ALIASES: dict[str, str] = {}
_ALIAS_SPELLINGS: dict[str, str] = {}


def register_explainer(
    name: str,
    *,
    aliases: tuple[str, ...] = (),
    overwrite: bool = False,
    **info: Any,
) -> Callable[[Explainer], Explainer]:
    """Decorator registering ``fn(model, x, y, **kwargs) -> Tensor`` under ``name``.

    ``model`` is a :class:`~evalkit.models.ModelWrapper`; ``x`` a batch on its device; ``y``
    the labels (or None). Return attributions of shape (N, C, ...) or (N, 1, ...), one row per
    input. Further keyword arguments are :class:`ExplainerInfo` fields (e.g.
    ``requires_gradients=True``, ``per_sample=("masks",)``).

    >>> @register_explainer("Sign")                                    # doctest: +SKIP
    ... def sign(model, x, y, **kw):
    ...     return torch.sign(x)
    """
    unknown = set(info) - (set(ExplainerInfo.__dataclass_fields__) - {"name", "fn"})
    if unknown:
        raise TypeError(f"Unknown explainer properties {sorted(unknown)}.")

    modalities = info.get("modalities")
    if modalities is not None:
        info["modalities"] = tuple(modalities)

    def decorate(fn: Explainer) -> Explainer:
        if not overwrite and name in _EXPLAINERS:
            raise ValueError(f"An explainer named {name!r} is already registered.")
        _EXPLAINERS[name] = ExplainerInfo(name=name, fn=fn, **info)
        for alias in aliases:
            _ALIASES[alias.lower()] = name
            _ALIAS_SPELLINGS[alias] = name
        return fn

    return decorate


def register_token_explainer(
    name: str, *, per_sample: tuple[str, ...] = ()
) -> Callable[[Explainer], Explainer]:
    """Decorator attaching ``fn(model, ids, y, **kwargs) -> (N, L)`` as the token-ids
    implementation (:attr:`ExplainerInfo.token_fn`) of the registered method ``name``, adding
    ``"tokens"`` to its modalities and ``per_sample`` (e.g. ``"attention_mask"``) to its
    per-sample keyword arguments."""

    def decorate(fn: Explainer) -> Explainer:
        info = explainer_info(name)
        modalities = tuple(dict.fromkeys((*(info.modalities or FLOAT_MODALITIES), "tokens")))
        rows = tuple(dict.fromkeys((*info.per_sample, *per_sample)))
        _EXPLAINERS[info.name] = replace(info, token_fn=fn, modalities=modalities,
                                         per_sample=rows)
        return fn

    return decorate


def available_methods(modality: str | None = None) -> list[str]:
    """Names of the registered explanation methods (those defined for ``modality``, a name
    such as ``"tokens"``, if given)."""
    if modality is None:
        return sorted(_EXPLAINERS)
    return sorted(name for name, info in _EXPLAINERS.items() if info.supports(modality))


def explainer_info(method: str) -> ExplainerInfo:
    """The :class:`ExplainerInfo` of a method.

    Lookup order: a registered name, an alias as spelled (Quantus' ``"GradCam"`` is captum's
    LayerGradCam, ``"Control Var. Sobel Filter"`` is Sobel), then both case-insensitively
    (``"gradcam"`` is the native GradCAM).
    """
    if not isinstance(method, str):
        raise TypeError(f"`method` must be a method name (str); got {type(method).__name__}.")
    if method in _EXPLAINERS:
        return _EXPLAINERS[method]
    if method in _ALIAS_SPELLINGS:  # an alias as written, e.g. Quantus' "GradCam"
        return _EXPLAINERS[_ALIAS_SPELLINGS[method]]
    lower = {k.lower(): k for k in _EXPLAINERS}
    if method.lower() in lower:
        return _EXPLAINERS[lower[method.lower()]]
    if method.lower() in _ALIASES:
        return _EXPLAINERS[_ALIASES[method.lower()]]
    close = difflib.get_close_matches(method, list(_EXPLAINERS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"Unknown explanation method {method!r}.{hint} "
                     f"Available: {', '.join(sorted(_EXPLAINERS))}.")


def get_explainer(method: str) -> Explainer:
    """The explainer function registered under ``method``."""
    return explainer_info(method).fn


def _quantus_inputs(x: Any, y: Any, kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """Accept Quantus' keyword names ``inputs`` and ``targets`` for ``x`` and ``y``."""
    for alias, name, value in (("inputs", "x", x), ("targets", "y", y)):
        if alias in kwargs:
            if value is not None:
                raise TypeError(f"Got both `{name}` and its Quantus alias `{alias}`.")
            if alias == "inputs":
                x = kwargs.pop(alias)
            else:
                y = kwargs.pop(alias)
    if x is None:
        raise TypeError("explain() missing the inputs `x` (Quantus' `inputs`).")
    return x, y


def explain(
    model: Any,
    x: Any = None,
    y: Any = None,
    method: str = "Saliency",
    *,
    reduce_channels: str | None = None,
    batch_size: int | None = None,
    softmax: bool | None = None,
    target: object = None,
    modality: Modality | str | None = None,
    **kwargs: Any,
) -> Any:
    """Explain ``model``'s target score on inputs ``x`` (labels ``y``) with ``method``.

    Parameters
    ----------
    model:
        ``torch.nn.Module``, callable or :class:`~evalkit.models.ModelWrapper`.
    x:
        A batch, (N, C, H, W) images, (N, C, T) series, (N, D) tabular rows or (N, L) integer
        token ids; NumPy or torch. Token ids are passed to the model as they are (never cast);
        see :mod:`evalkit.explain.tokens` for the methods defined on them and their options
        (``embedding_layer=``, ``mask_token_id=``, ``attention_mask=``,
        ``additional_forward_args=``, ``pad_token_id=``, ``embedding_reduce=``).
        Quantus' keywords ``inputs=`` and ``targets=`` are accepted for ``x`` and ``y``, and
        its ``reduce_axes`` (``()`` or ``(1,)``) for ``reduce_channels`` (None or ``"sum"``).
    y:
        One label per sample for the wrapper's target (class indices by default).
    method:
        A registered name (see :func:`available_methods`), e.g. ``"Saliency"``,
        ``"IntegratedGradients"``, ``"GradCAM"``, ``"Sobel"``.
    reduce_channels:
        ``None`` returns what the method gives: one value per input element (N, C, ...) for
        input-space methods (Saliency, IntegratedGradients, Occlusion...), one map (N, 1, ...)
        for CAMs and the Sobel/Constant/GroundTruth controls. ``"sum"``, ``"mean"``,
        ``"abs_sum"`` or ``"max_abs"`` reduce over the channel axis to (N, 1, ...).
    batch_size:
        Inputs per explainer call (default: from an input-memory budget; a CUDA chunk that
        runs out of memory is retried at half the size). Every registered method is per-sample,
        so the result does not depend on it.
    softmax, target:
        Override the wrapper's output settings for this explanation: the explained scalar is
        ``target(softmax?(model(x)), y)``, e.g. the class logit (default), the class probability
        (``softmax=True``), or any custom score callable ``(outputs, y) -> (N,)``.
    modality:
        The kind of input (a name, e.g. ``"tokens"``, or a :class:`~evalkit.modality.Modality`
        such as ``TokensModality(mask_token_id=103)``); default inferred from ``x`` (integer
        (N, L) inputs are token ids). A method not defined for it raises a ValueError that
        says what to use instead (:attr:`ExplainerInfo.modalities`). On tokens, the
        modality's ``mask_token_id`` is the default replacement/baseline token.
    **kwargs:
        Passed to the method (``n_steps``, ``baselines``, ``layer``, ``seed``, ``masks``...).
        Keyword arguments that hold one row per sample (``masks``, per-sample ``baselines``)
        are sliced with ``x`` (see :class:`ExplainerInfo`); NumPy arrays are converted to
        tensors on the model's device.

    Returns
    -------
    Attributions as a NumPy array if ``x`` was one, else a tensor on the model's device.

    Notes
    -----
    Runs with autograd enabled even inside ``torch.no_grad()`` or ``torch.inference_mode()``,
    in the wrapper's evaluation mode (every module's training flag is restored afterwards).
    Gradients are taken with ``torch.autograd.grad`` with respect to inputs or activations
    only: the ``.grad`` of the model's parameters is never written.
    """
    x, y = _quantus_inputs(x, y, kwargs)
    if kwargs.get("reduce_axes") is not None:  # Quantus' name: () none, (1,) channel sum
        reduce_channels = _quantus_compat.channel_reduction(kwargs.pop("reduce_axes"),
                                                            reduce_channels)
    check_option("reduce_channels", reduce_channels, _REDUCTIONS)
    info = explainer_info(method)
    wrapper = wrap_model(model, softmax=softmax, target=target)
    numpy_in = is_numpy_like(x)
    kind = as_modality(modality, x)
    if not info.supports(kind.name):
        why = " (it needs inputs with spatial or time axes)" \
            if set(info.modalities or ()) <= set(GRID_MODALITIES) else ""
        raise ValueError(
            f"{info.name} does not apply to {kind.name} inputs ({kind.layout}); it is defined "
            f"for {', '.join(info.modalities or ())}{why}. {_INSTEAD.get(kind.name, '')}"
            .rstrip()
        )
    xt = kind.check(wrapper.prepare(x, kind), dtype=wrapper.dtype)
    tokens = kind.integer_inputs
    fn = info.token_fn if tokens and info.token_fn is not None else info.fn
    if fn is not info.fn:
        kwargs.setdefault("mask_token_id", getattr(kind, "mask_token_id", 0))
    n = xt.shape[0]
    yt = None if y is None else check_labels(as_tensor(y, "y", device=wrapper.device), n)
    if not info.model_free:
        if info.requires_module:
            require_module(wrapper, info.name)
        if info.requires_gradients:
            require_gradients(wrapper, info.name)
        if info.uses_target:
            wrapper = wrapper.with_options(target=_CheckedTarget(wrapper.target))
    if info.quantus_names:
        kwargs = _rename_quantus_kwargs(kwargs, xt)
    kwargs = _tensor_kwargs(kwargs, wrapper)
    per_sample = info.per_sample
    if tokens:  # the model's extra inputs have one row per text, whatever the method
        per_sample = tuple(dict.fromkeys((*per_sample, "attention_mask",
                                          "additional_forward_args")))
    sliced = [k for k in per_sample if _is_per_sample(kwargs.get(k), n)]

    if fn is not info.fn:
        size = explain_rows(_token_row_like(xt, wrapper, kwargs), wrapper, batch_size)
    else:
        size = explain_rows(xt, wrapper, batch_size)
    parts = []
    with wrapper.evaluation(), torch.inference_mode(False), torch.enable_grad():
        if xt.is_inference():
            xt = xt.clone()
        start = 0
        while start < n:
            stop = min(n, start + size)
            chunk_kw = dict(kwargs)
            for k in sliced:
                chunk_kw[k] = _slice_rows(kwargs[k], start, stop, n)
            xs = xt[start:stop]
            ys = None if yt is None else yt[start:stop]
            try:
                out = fn(wrapper, xs, ys, **chunk_kw)
            except torch.cuda.OutOfMemoryError:
                if size == 1 or batch_size is not None:
                    raise
                size = max(1, size // 2)
                torch.cuda.empty_cache()
                continue
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                if start == 0 and not info.model_free:
                    # a wrong rank or layout of x fails deep inside the model; one forward on
                    # one sample (only on this error path) tells whether x is the cause, and
                    # then the error names it
                    try:
                        wrapper.output_shape(xs)
                    except ValueError as named:
                        if type(named.__cause__) is type(exc):  # the same failure
                            raise named from exc
                raise
            out = as_tensor(out, "explanation", device=wrapper.device).detach()
            dtype = xs.dtype if xs.is_floating_point() else wrapper.dtype  # token ids: floats
            if out.is_floating_point() and out.dtype != dtype:
                out = out.to(dtype)  # e.g. scikit-learn surrogates return float32
            if out.ndim == 0 or out.shape[0] != stop - start:
                raise RuntimeError(
                    f"The explainer {info.name!r} returned shape {tuple(out.shape)} for "
                    f"{stop - start} inputs; it must return one attribution per input."
                )
            if tokens:
                out = _zero_padding(out, xs, chunk_kw)
            parts.append(out)
            start = stop
    a = torch.cat(parts, 0) if len(parts) > 1 else parts[0]
    a = _reduce_channels(a, reduce_channels)
    result = a.cpu().numpy() if numpy_in else a
    from ._reference import reference_baseline, remember_reference

    remember_reference(result, reference_baseline(info.name, kwargs))  # for Completeness
    return result


class _CheckedTarget(_BaseTarget):
    """The wrapper's target, validating the labels against the outputs it is given before
    scoring them (``target.check``): a bad label fails on the explainer's first forward pass,
    with the target's message, and without an extra forward pass just to learn the output
    shape (for a fresh wrapper that would be one more model call per ``explain``)."""

    def __init__(self, inner: _BaseTarget) -> None:
        self.inner = inner
        self.uses_class_labels = inner.uses_class_labels

    def __call__(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        self.inner.check(y, tuple(outputs.shape[1:]))
        return self.inner(outputs, y)

    def check(self, y: torch.Tensor | None, output_shape: tuple[int, ...]) -> None:
        self.inner.check(y, output_shape)

    def __repr__(self) -> str:
        return repr(self.inner)


def explain_rows(x: torch.Tensor, model: ModelWrapper, batch_size: int | None = None) -> int:
    """Inputs per explainer call: ``batch_size`` (or the wrapper's), else as many rows like
    ``x``'s as :data:`EXPLAIN_MEMORY_BUDGET` allows on the model's device."""
    # math.prod: np.prod of a torch.Size costs more than the rest of this function
    row_bytes = math.prod(x.shape[1:]) * x.element_size()
    kind = "cuda" if model.device.type == "cuda" else "cpu"
    requested = batch_size if batch_size is not None else model.batch_size
    return resolve_batch_size(requested, row_bytes, EXPLAIN_MEMORY_BUDGET[kind], kind)


#: embedding width assumed for the explain memory budget when the layer is no nn.Embedding
DEFAULT_EMBEDDING_WIDTH = 256


def _token_row_like(ids: torch.Tensor, model: ModelWrapper,
                    kwargs: dict[str, Any]) -> torch.Tensor:
    """A (1, L, E) stand-in for one row of embeddings, for the explain memory budget: a chunk
    of token ids holds E floats per token once embedded, not one int64."""
    width = DEFAULT_EMBEDDING_WIDTH
    if isinstance(getattr(model, "model", None), torch.nn.Module):
        with contextlib.suppress(TypeError, ValueError):
            layer = resolve_embedding_layer(model, kwargs.get("embedding_layer"))
            width = int(getattr(layer, "embedding_dim", width))
    return torch.empty((1, ids.shape[1], width), dtype=model.dtype, device="meta")


def _rename_quantus_kwargs(kwargs: dict[str, Any], x: torch.Tensor) -> dict[str, Any]:
    out = dict(kwargs)
    for old, new in QUANTUS_KWARGS.items():
        if old in out:
            if new in out:
                raise TypeError(f"Pass `{new}` or Quantus' `{old}`, not both.")
            out[new] = out.pop(old)
    if isinstance(kwargs.get("gc_layer"), str):  # 'model._modules.get("conv_2")' -> "conv_2"
        out["layer"] = _quantus_compat.layer_path(kwargs["gc_layer"])
    if "interpolate" in out:  # Quantus' target size of layer maps: here always the input size
        size = out.pop("interpolate")
        if size is not None and tuple(int(s) for s in size) != tuple(x.shape[2:]):
            raise ValueError(
                f"interpolate={tuple(size)}: explain() resizes layer maps to the input size "
                f"{tuple(x.shape[2:])} (or leaves them at the layer's size with raw=True)."
            )
    return out


def _is_per_sample(value: Any, n: int) -> bool:
    if isinstance(value, tuple | list):  # e.g. additional_forward_args: any per-sample item
        return any(_is_per_sample(v, n) for v in value)
    return isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n and n > 1


def _slice_rows(value: Any, start: int, stop: int, n: int) -> Any:
    """Rows ``start:stop`` of a per-sample value (of the per-sample items of a tuple)."""
    if isinstance(value, tuple | list):
        return type(value)(_slice_rows(v, start, stop, n) if _is_per_sample(v, n) else v
                           for v in value)
    return value[start:stop]


def _tensor_kwargs(kwargs: dict[str, Any], wrapper: ModelWrapper) -> dict[str, Any]:
    """NumPy arrays in ``kwargs`` become tensors on the model's device (floats in its dtype)."""
    out = {}
    for key, value in kwargs.items():
        if isinstance(value, tuple) and any(isinstance(v, np.ndarray | torch.Tensor)
                                            for v in value):
            out[key] = tuple(_tensor_kwargs({key: v}, wrapper)[key] for v in value)
            continue
        if isinstance(value, np.ndarray):
            t = as_tensor(value, key, device=wrapper.device)
            if t.is_floating_point():
                t = t.to(wrapper.dtype)
            value = t
        elif isinstance(value, torch.Tensor) and value.device != wrapper.device:
            value = value.to(wrapper.device)
        out[key] = value
    return out


def _zero_padding(a: torch.Tensor, ids: torch.Tensor, kw: dict[str, Any]) -> torch.Tensor:
    """A per-token map with 0 at the padding of ``ids``: where ``attention_mask`` is 0 or the
    id is ``pad_token_id`` (the controls too, so that no method puts mass on padding)."""
    mask, pad = kw.get("attention_mask"), kw.get("pad_token_id")
    if (mask is None and pad is None) or tuple(a.shape) != tuple(ids.shape):
        return a
    keep = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
    if mask is not None:
        keep &= torch.as_tensor(mask, device=ids.device).reshape(ids.shape) != 0
    if pad is not None:
        keep &= ids != int(pad)
    return torch.where(keep, a, torch.zeros((), dtype=a.dtype, device=a.device))


def _reduce_channels(a: torch.Tensor, how: str | None) -> torch.Tensor:
    if how is None or a.ndim < 3:
        return a
    if how == "sum":
        return a.sum(1, keepdim=True)
    if how == "mean":
        return a.mean(1, keepdim=True)
    if how == "abs_sum":
        return a.abs().sum(1, keepdim=True)
    return a.abs().amax(1, keepdim=True)


def numpy_explain_fn(fn: Callable[..., np.ndarray]) -> Callable[..., torch.Tensor]:
    """Adapt a Quantus-style ``fn(model, inputs: ndarray, targets: ndarray, **kw) -> ndarray``
    to evalkit's explain-function protocol (tensors in)."""

    def adapted(model: Any, x: torch.Tensor, y: torch.Tensor | None, **kw: Any) -> torch.Tensor:
        raw = model.model if isinstance(model, ModelWrapper) else model
        out = fn(raw, x.detach().cpu().numpy(), None if y is None else y.cpu().numpy(), **kw)
        return torch.as_tensor(np.asarray(out), device=x.device)

    adapted.__name__ = getattr(fn, "__name__", "numpy_explain_fn")
    return adapted


#: explain() computes in its own chunks (:func:`explain_rows`): a metric may hand it calls of
#: many small rows at once (see ``evalkit.metrics.base.explain_call_rows``)
explain.chunks_internally = True  # type: ignore[attr-defined]
