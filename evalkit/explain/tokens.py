"""Explanations of models over token ids (N, L): the ``"tokens"`` modality.

Token ids are integers and have no gradient, so **gradient methods attribute at the embedding
layer**: the gradient of the target score with respect to the embedding layer's output
(N, L, E), computed through captum's layer methods (or natively for GradientShap), and reduced
over the embedding dimension to **one value per token, (N, L)**. **Perturbation methods**
replace tokens by a **mask token id** and never look inside the model. The ids themselves are
passed to the model as they are: never cast to floating point, never written to.

Registered methods and what they compute on token ids (``S``: the target score, ``e``: the
embedding layer's output):

- ``Saliency``: ``abs(dS/de)``, reduced per token; ``Gradient``: ``dS/de`` (signed).
- ``InputXGradient``: ``e * dS/de`` (captum's LayerGradientXActivation at the embedding
  layer); ``LayerGradientXActivation``: the same at ``layer=`` (default: the embedding layer).
- ``IntegratedGradients``, ``LayerIntegratedGradients``: captum's LayerIntegratedGradients at
  the embedding layer, from the embedding of the mask token at every position (``baselines=``:
  other baseline *ids*); a sample's attributions sum to ``S(ids) - S(baseline ids)``.
- ``DeepLift``: captum's LayerDeepLift at the embedding layer, with the same reference.
- ``GradientShap``: GradientSHAP in embedding space (native, seeded per sample), baseline: the
  mask token's embedding.
- ``LayerActivation``: the output of ``layer=`` (default: the embedding layer), class-agnostic.
- ``Occlusion``: ``S(ids) - S(ids with a window of tokens masked)``, averaged over the windows
  that cover a token (``sliding_window_shapes=(w,)``, default 1; ``strides``, default 1).
- ``FeatureAblation``: ``S(ids) - S(ids with the token's group masked)``; groups from
  ``feature_mask``, (N or 1, L) integer labels (default: each token its own feature).
- ``Lime``, ``KernelShap``: captum's surrogates over binary token features (present, or
  replaced by the mask token), seeded per sample.
- ``Random``, ``Constant``, ``GroundTruth``: the controls, (N, L).

Options (keyword arguments of :func:`evalkit.explain`):

- ``embedding_layer``: the embedding layer, an ``nn.Module`` of the model or its name /
  attribute path (``"embedding"``, ``"bert.embeddings"``, ``"encoder.layers[0]"``). Default:
  the model's only ``nn.Embedding``; a model with none or several must name it. Its output must
  be laid out (N, L, ...) (batch first).
- ``embedding_reduce``: how the (N, L, E) attribution becomes one value per token: ``"sum"``
  (default; the sum over the embedding dimension, so that a token's value is its share of the
  score for the additive methods) or ``"norm"`` (the L2 norm over it: magnitudes, the sign is
  lost).
- ``mask_token_id``: the replacement token of the perturbation methods and the baseline token
  of the path/reference methods. Default: the modality's ``mask_token_id``
  (:class:`~evalkit.modality.TokensModality`; pass ``modality=TokensModality(mask_token_id=...)``
  or this argument, e.g. your tokenizer's ``[MASK]`` or ``[PAD]`` id).
- ``attention_mask``, ``additional_forward_args``: extra inputs of the model, which is called as
  ``model(ids, attention_mask, *additional_forward_args)`` (each only when given). Tensors with
  one row per sample are sliced and expanded with the ids (over integration steps,
  perturbations...); other values are passed as they are. A model that takes the ids only is
  the common case and needs neither.
- ``pad_token_id``: positions holding this id, and positions where ``attention_mask`` is 0, are
  padding: they get exactly 0 attribution from every method, and the perturbation methods never
  perturb them. Without either, padding is treated as any other token (the reference methods
  give it 0 when the mask token is the pad token: its embedding equals the baseline's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .. import _rng
from .._validation import check_option
from ..models import ModelWrapper
from ..models.torch_model import TorchModel
from ._hooks import (
    module_guard,
    require_gradients,
    require_module,
    resolve_embedding_layer,
    resolve_layer,
)
from .captum_methods import (
    _check_single_use,
    _constructor_kwargs,
    _integration_rule,
    _no_delta,
    _quiet_hook_warning,
    _seeded_global_rngs,
)
from .core import (
    DEFAULT_EMBEDDING_WIDTH,
    EXPLAIN_MEMORY_BUDGET,
    _token_row_like,
    register_token_explainer,
)

__all__ = ["TOKEN_PER_SAMPLE", "resolve_embedding_layer"]

#: keyword arguments of the token methods that hold one row per sample (sliced with the ids)
TOKEN_PER_SAMPLE = ("attention_mask", "additional_forward_args", "baselines", "feature_mask")

_REDUCE = ("sum", "norm")


# ============================================================================ plumbing
def _token_rows(ids: torch.Tensor, model: ModelWrapper, embedding: nn.Module | None) -> int:
    """(sample, step) rows per forward/backward pass of the path methods."""
    width = int(getattr(embedding, "embedding_dim", DEFAULT_EMBEDDING_WIDTH))
    row = ids.shape[1] * width * torch.empty((), dtype=model.dtype).element_size()
    budget = EXPLAIN_MEMORY_BUDGET["cuda" if model.device.type == "cuda" else "cpu"]
    return max(ids.shape[0], budget // max(1, row))


class _BoundArgs(nn.Module):
    """``ids -> net(ids, *args)``: the user's model with its extra inputs bound for one call."""

    def __init__(self, net: nn.Module, args: tuple[Any, ...]) -> None:
        super().__init__()
        self.net = net
        object.__setattr__(self, "bound_args", args)

    def forward(self, ids: torch.Tensor) -> Any:
        return self.net(ids, *self.bound_args)


def _bound(model: ModelWrapper, args: tuple[Any, ...]) -> ModelWrapper:
    """A view of the wrapper that calls the model with ``args`` after the ids (same options,
    same forward counter)."""
    if not args:
        return model
    if isinstance(model, TorchModel):
        return model._copy(_BoundArgs(model.model, args))
    fn = getattr(model, "fn", None)
    if callable(fn):  # a CallableModel: NumPy callables get the extra tensors as arrays too
        import copy

        if getattr(model, "input_type", "torch") == "numpy":
            args = tuple(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a
                         for a in args)
        view = copy.copy(model)
        view.fn = lambda batch: fn(batch, *args)  # type: ignore[attr-defined]
        return view
    raise TypeError(
        f"{type(model).__name__} cannot pass extra inputs (attention_mask, "
        "additional_forward_args) to its model; wrap a torch module or a callable."
    )


def _score_forward(model: ModelWrapper):
    """captum's forward function: ``(ids, y, *extra) -> target score (N,)``."""

    def forward(ids: torch.Tensor, y: torch.Tensor | None = None, *extra: Any) -> torch.Tensor:
        bound = _bound(model, extra)
        return bound.select(bound(ids), y)

    return forward


class _ScoreModule(nn.Module):
    """The score as an ``nn.Module`` whose only child is the user's model (DeepLift hooks its
    modules); extra inputs are bound per call."""

    def __init__(self, model: ModelWrapper) -> None:
        super().__init__()
        self.net = require_module(model, "DeepLift")
        object.__setattr__(self, "_wrapper", model)

    def forward(self, ids: torch.Tensor, y: torch.Tensor | None = None, *extra: Any):
        bound = _bound(self._wrapper, extra)
        return bound.select(bound(ids), y)


def _extra_args(kw: dict[str, Any]) -> tuple[Any, ...]:
    """The model's inputs after the ids: ``attention_mask`` then ``additional_forward_args``."""
    mask = kw.pop("attention_mask", None)
    more = kw.pop("additional_forward_args", None)
    if more is None:
        more = ()
    elif not isinstance(more, tuple | list):
        more = (more,)
    return ((mask,) if mask is not None else ()) + tuple(more)


def _keep(ids: torch.Tensor, kw: dict[str, Any]) -> torch.Tensor | None:
    """(N, L) bool: the positions that are not padding (``attention_mask`` != 0 and not
    ``pad_token_id``), or None when every position counts."""
    pad = kw.pop("pad_token_id", None)
    mask = kw.get("attention_mask")
    keep = None
    if mask is not None:
        mask = torch.as_tensor(mask, device=ids.device)
        if tuple(mask.shape) != tuple(ids.shape):
            raise ValueError(f"`attention_mask` must have the shape of the ids "
                             f"{tuple(ids.shape)}; got {tuple(mask.shape)}.")
        keep = mask != 0
    if pad is not None:
        not_pad = ids != int(pad)
        keep = not_pad if keep is None else keep & not_pad
    return keep


def _finish(attr: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    attr = attr.detach()
    return attr if keep is None else torch.where(keep, attr, torch.zeros_like(attr))


def _reduce(attr: torch.Tensor, ids: torch.Tensor, how: str, method: str) -> torch.Tensor:
    """(N, L, ...) layer attributions -> (N, L) per token."""
    if attr.ndim < 2 or tuple(attr.shape[:2]) != tuple(ids.shape):
        raise ValueError(
            f"{method}: the layer's attribution has shape {tuple(attr.shape)}, which is not laid "
            f"out per token like the ids {tuple(ids.shape)} (N, L, ...); choose a batch-first "
            "layer (the embedding layer) or pass raw=True for the layer's own attribution."
        )
    if attr.ndim == 2:
        return attr
    flat = attr.reshape(*ids.shape, -1)
    return flat.sum(-1) if how == "sum" else flat.norm(dim=-1)


def _mask_ids(ids: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    return torch.full_like(ids, int(mask_token_id))


def _baseline_ids(ids: torch.Tensor, kw: dict[str, Any], mask_token_id: int) -> torch.Tensor:
    """Baseline ids: ``baselines`` (an id, (L,), (1, L) or (N, L) ids) or the mask token."""
    given = kw.pop("baselines", None)
    if given is None:
        return _mask_ids(ids, mask_token_id)
    if isinstance(given, int):
        return _mask_ids(ids, given)
    b = torch.as_tensor(given, device=ids.device)
    if b.is_floating_point() or b.dtype == torch.bool:
        raise ValueError(
            "On token ids, `baselines` are token ids (integers): the baseline of the embedding "
            f"methods is the embedding of those ids; got {b.dtype} values."
        )
    b = b.to(ids.dtype)
    if b.ndim == 1:
        b = b.unsqueeze(0)
    if b.shape[1:] != ids.shape[1:]:
        raise ValueError(f"`baselines` ids must have shape (N or 1, {ids.shape[1]}); got "
                         f"{tuple(b.shape)}.")
    return b.expand_as(ids).contiguous()


def _setup(model: ModelWrapper, ids: torch.Tensor, kw: dict[str, Any], method: str):
    """Pop the token options shared by the embedding methods; the layer attributed at is
    ``layer=`` if given (any layer whose output is laid out (N, L, ...)), else the embedding
    layer."""
    require_gradients(model, method)
    how = check_option("embedding_reduce", kw.pop("embedding_reduce", "sum"), _REDUCE)
    keep = _keep(ids, kw)
    extra = _extra_args(kw)
    mask_token_id = int(kw.pop("mask_token_id", 0))
    embedding = kw.pop("embedding_layer", None)
    spec = kw.pop("layer", None)  # another per-token layer (a transformer block...)
    if spec is not None:
        layer = resolve_layer(require_module(model, method), spec)[1]
    else:
        layer = resolve_embedding_layer(model, embedding, method)
    return how, keep, extra, mask_token_id, layer


def _args(y: torch.Tensor | None, extra: tuple[Any, ...]) -> tuple[Any, ...] | None:
    if y is None and not extra:
        return None
    return (y, *extra)


# ============================================================================ embedding gradients
def _layer_gxa(model: ModelWrapper, ids: torch.Tensor, y: torch.Tensor | None,
               kw: dict[str, Any], method: str, *, multiply: bool, absolute: bool):
    import captum.attr as ca

    how, keep, extra, _, layer = _setup(model, ids, kw, method)
    raw = bool(kw.pop("raw", False))
    kw.pop("abs", None)
    explainer = ca.LayerGradientXActivation(_score_forward(model), layer,
                                            multiply_by_inputs=multiply)
    attr = explainer.attribute(ids, additional_forward_args=_args(y, extra), **kw)
    if isinstance(attr, tuple | list):
        attr = attr[0]
    if absolute:
        attr = attr.abs()
    if raw:
        return attr.detach()
    return _finish(_reduce(attr, ids, how, method), keep)


@register_token_explainer("Saliency", per_sample=TOKEN_PER_SAMPLE)
def token_saliency(model: ModelWrapper, ids: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """``|dS/de|`` at the embedding layer's output, summed (or L2 norm) over the embedding
    dimension: (N, L)."""
    absolute = bool(kw.get("abs", True))
    return _layer_gxa(model, ids, y, kw, "Saliency", multiply=False, absolute=absolute)


@register_token_explainer("Gradient", per_sample=TOKEN_PER_SAMPLE)
def token_gradient(model: ModelWrapper, ids: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """The signed gradient at the embedding layer's output, reduced per token."""
    return _layer_gxa(model, ids, y, kw, "Gradient", multiply=False, absolute=False)


@register_token_explainer("InputXGradient", per_sample=TOKEN_PER_SAMPLE)
def token_input_x_gradient(model: ModelWrapper, ids: torch.Tensor, y: torch.Tensor | None,
                           **kw: Any):
    """``e * dS/de`` at the embedding layer (the embedding as the input), reduced per token."""
    return _layer_gxa(model, ids, y, kw, "InputXGradient", multiply=True, absolute=False)


@register_token_explainer("LayerGradientXActivation", per_sample=TOKEN_PER_SAMPLE)
def token_layer_gradient_x_activation(model: ModelWrapper, ids: torch.Tensor,
                                      y: torch.Tensor | None, **kw: Any):
    """Gradient times activation at ``layer`` (default: the embedding layer), reduced per
    token; ``raw=True`` returns the layer-shaped attribution."""
    return _layer_gxa(model, ids, y, kw, "LayerGradientXActivation", multiply=True,
                      absolute=False)


def _layer_ig(model: ModelWrapper, ids: torch.Tensor, y: torch.Tensor | None,
              kw: dict[str, Any], method: str) -> torch.Tensor:
    import captum.attr as ca

    how, keep, extra, mask_token_id, embedding = _setup(model, ids, kw, method)
    raw = bool(kw.pop("raw", False))
    _no_delta(kw, method)
    _integration_rule(kw)
    ctor = _constructor_kwargs(kw)
    baselines = _baseline_ids(ids, kw, mask_token_id)
    kw.setdefault("internal_batch_size", _token_rows(ids, model, embedding))
    explainer = ca.LayerIntegratedGradients(_score_forward(model), embedding, **ctor)
    attr = explainer.attribute(ids, baselines=baselines,
                               additional_forward_args=_args(y, extra), **kw)
    if isinstance(attr, tuple | list):
        attr = attr[0]
    if raw:
        return attr.detach()
    return _finish(_reduce(attr, ids, how, method), keep)


@register_token_explainer("IntegratedGradients", per_sample=TOKEN_PER_SAMPLE)
def token_integrated_gradients(model: ModelWrapper, ids: torch.Tensor, y: torch.Tensor | None,
                               **kw: Any):
    """LayerIntegratedGradients at the embedding layer (see ``LayerIntegratedGradients``)."""
    return _layer_ig(model, ids, y, kw, "IntegratedGradients")


@register_token_explainer("LayerIntegratedGradients", per_sample=TOKEN_PER_SAMPLE)
def token_layer_integrated_gradients(model: ModelWrapper, ids: torch.Tensor,
                                     y: torch.Tensor | None, **kw: Any):
    """Integrated gradients at the embedding layer (Sundararajan et al. 2017), from the
    embedding of the baseline ids (default: the mask token at every position) to the
    embedding of the ids; summed per token, so a sample's attributions add up to
    ``S(ids) - S(baseline ids)``. ``n_steps`` (50), ``integration_method`` and
    ``internal_batch_size`` pass through to captum."""
    return _layer_ig(model, ids, y, kw, "LayerIntegratedGradients")


@register_token_explainer("DeepLift", per_sample=TOKEN_PER_SAMPLE)
def token_deep_lift(model: ModelWrapper, ids: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """DeepLIFT (Rescale) at the embedding layer (captum's LayerDeepLift), reference: the
    embedding of the baseline ids (default: the mask token everywhere)."""
    import captum.attr as ca

    how, keep, extra, mask_token_id, embedding = _setup(model, ids, kw, "DeepLift")
    _no_delta(kw, "DeepLift")
    _check_single_use(_bound(model, tuple(_first_rows(extra, ids.shape[0]))), ids, "DeepLift")
    baselines = _baseline_ids(ids, kw, mask_token_id)
    ctor = _constructor_kwargs(kw)
    score_module = _ScoreModule(model)
    with module_guard(score_module.net), _quiet_hook_warning():
        attr = ca.LayerDeepLift(score_module, embedding, **ctor).attribute(
            ids, baselines=baselines, additional_forward_args=_args(y, extra), **kw)
    if isinstance(attr, tuple | list):
        attr = attr[0]
    return _finish(_reduce(attr, ids, how, "DeepLift"), keep)


def _first_rows(extra: tuple[Any, ...], n: int) -> Iterator[Any]:
    for value in extra:
        yield value[:1] if isinstance(value, torch.Tensor) and value.ndim and \
            value.shape[0] == n else value


@contextlib.contextmanager
def _replaced_output(layer: nn.Module, values: list[torch.Tensor | None]) -> Iterator[None]:
    """While active, ``layer`` returns ``values[0]`` (when set) instead of its output."""

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> Any:
        return values[0] if values[0] is not None else output

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _embed(model: ModelWrapper, layer: nn.Module, ids: torch.Tensor,
           extra: tuple[Any, ...]) -> torch.Tensor:
    """The embedding layer's output for ``ids`` (one forward pass, no gradients)."""
    seen: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        seen.append(output.detach())

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            _bound(model, extra)(ids)
    finally:
        handle.remove()
    if not seen:
        raise ValueError("The embedding layer did not run in the model's forward pass; pass "
                         "embedding_layer= naming a layer that the ids go through.")
    return seen[0]


@register_token_explainer("GradientShap", per_sample=TOKEN_PER_SAMPLE)
def token_gradient_shap(model: ModelWrapper, ids: torch.Tensor, y: torch.Tensor | None, *,
                        n_samples: int = 5, stdevs: float = 0.0, seed: int = 0,
                        multiply_by_inputs: bool = True, **kw: Any) -> torch.Tensor:
    """GradientSHAP in embedding space: ``mean_j (e' - b) * grad S(b + alpha_j (e' - b))`` with
    ``b`` the embedding of the baseline ids (default: the mask token everywhere), ``e' = e +
    eps`` (``stdevs``) and ``alpha_j ~ U(0, 1)`` drawn per sample from ``seed``."""
    how, keep, extra, mask_token_id, layer = _setup(model, ids, kw, "GradientShap")
    if int(n_samples) < 1:
        raise ValueError(f"`n_samples` must be >= 1; got {n_samples}.")
    baselines = _baseline_ids(ids, kw, mask_token_id)
    if kw:
        raise TypeError(f"GradientShap on token ids got unexpected arguments {sorted(kw)}.")
    n_samples = int(n_samples)
    emb = _embed(model, layer, ids, extra)
    base = _embed(model, layer, baselines, extra)
    n = ids.shape[0]
    keys = _rng.sample_keys(ids, seed)
    dtype = emb.dtype
    alpha = _rng.uniform(keys, (n_samples,), dtype=dtype, stream=1)
    inputs = emb.unsqueeze(1).expand(n, n_samples, *emb.shape[1:])
    if stdevs:
        inputs = inputs + _rng.normal(keys, (n_samples, *emb.shape[1:]), std=float(stdevs),
                                      dtype=dtype, stream=3)
    base = base.unsqueeze(1)
    view = (n, n_samples) + (1,) * (emb.ndim - 1)
    points = (base + alpha.reshape(view) * (inputs - base)).reshape(n * n_samples,
                                                                     *emb.shape[1:])
    rep_ids = ids.repeat_interleave(n_samples, 0)
    rep_y = None if y is None else y.repeat_interleave(n_samples, 0)
    rep_extra = tuple(_repeat(v, n, n_samples) for v in extra)
    rows = _token_rows(ids, model, layer)
    grads = []
    slot: list[torch.Tensor | None] = [None]
    with _replaced_output(layer, slot):
        for start in range(0, points.shape[0], rows):
            stop = start + rows
            part = points[start:stop].detach().requires_grad_(True)
            slot[0] = part
            bound = _bound(model, tuple(_rows(v, start, stop, n * n_samples)
                                        for v in rep_extra))
            score = bound.select(bound(rep_ids[start:stop]),
                                 None if rep_y is None else rep_y[start:stop])
            grads.append(torch.autograd.grad(score.sum(), part)[0])
    grad = torch.cat(grads).reshape(n, n_samples, *emb.shape[1:])
    contrib = grad * (inputs - base) if multiply_by_inputs else grad
    return _finish(_reduce(contrib.mean(1), ids, how, "GradientShap"), keep)


def _repeat(value: Any, n: int, times: int) -> Any:
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == n:
        return value.repeat_interleave(times, 0)
    return value


def _rows(value: Any, start: int, stop: int, n: int) -> Any:
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == n:
        return value[start:stop]
    return value


@register_token_explainer("LayerActivation", per_sample=TOKEN_PER_SAMPLE)
def token_layer_activation(model: ModelWrapper, ids: torch.Tensor, y: torch.Tensor | None,
                           **kw: Any):
    """The output of ``layer`` (default: the embedding layer), reduced per token
    (class-agnostic)."""
    how = check_option("embedding_reduce", kw.pop("embedding_reduce", "sum"), _REDUCE)
    keep = _keep(ids, kw)
    extra = _extra_args(kw)
    kw.pop("mask_token_id", None)
    layer = kw.pop("layer", None)
    embedding = kw.pop("embedding_layer", None)
    module = resolve_layer(require_module(model, "LayerActivation"), layer)[1] \
        if layer is not None else resolve_embedding_layer(model, embedding, "LayerActivation")
    raw = bool(kw.pop("raw", False))
    out = _embed(model, module, ids, extra)
    if raw:
        return out
    return _finish(_reduce(out, ids, how, "LayerActivation"), keep)


# ============================================================================ perturbation
def _scores(model: ModelWrapper, batch: torch.Tensor, y: torch.Tensor | None,
            extra: tuple[Any, ...], rows: int) -> torch.Tensor:
    """Target scores of a batch of ids, ``rows`` per forward call (extra inputs per row)."""
    out = []
    n = batch.shape[0]
    with torch.no_grad():
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            bound = _bound(model, tuple(_rows(v, start, stop, n) for v in extra))
            out.append(bound.select(bound(batch[start:stop]),
                                    None if y is None else y[start:stop]))
    return torch.cat(out) if len(out) > 1 else out[0]


def _perturbed_drop(model: ModelWrapper, ids: torch.Tensor, y: torch.Tensor | None,
                    extra: tuple[Any, ...], masks: torch.Tensor, fill: int,
                    rows: int) -> torch.Tensor:
    """``S(ids) - S(ids with masks[:, k] replaced)`` for K masks per sample: (N, K)."""
    n, k = masks.shape[:2]
    base = _scores(model, ids, y, extra, rows)
    if k == 0:
        return base.new_zeros((n, 0))
    batch = torch.where(masks, torch.full((), int(fill), dtype=ids.dtype, device=ids.device),
                        ids.unsqueeze(1)).reshape(n * k, -1)
    rep_y = None if y is None else y.repeat_interleave(k, 0)
    rep_extra = tuple(_repeat(v, n, k) for v in extra)
    scores = _scores(model, batch, rep_y, rep_extra, rows).reshape(n, k)
    return base.unsqueeze(1) - scores


def _forward_rows(model: ModelWrapper, ids: torch.Tensor, kw: dict[str, Any]) -> int:
    """Perturbed texts per forward call: the forward runner's budget for rows of *embedded*
    tokens (E floats per token, the model's own embedding width when it has one nn.Embedding),
    not of int64 ids, which would put E/2 times as many rows in a call."""
    return model.resolve_batch_size(_token_row_like(ids, model, kw))


def _black_box_setup(ids: torch.Tensor, kw: dict[str, Any]):
    keep = _keep(ids, kw)
    extra = _extra_args(kw)
    fill = kw.pop("mask_token_id", 0)
    baselines = kw.pop("baselines", None)
    if baselines is not None:
        if not isinstance(baselines, int) and not (
                isinstance(baselines, torch.Tensor) and baselines.ndim == 0
                and not baselines.is_floating_point()):
            raise ValueError("On token ids, `baselines` of a perturbation method is one token "
                             f"id (the replacement); got {baselines!r}. Use mask_token_id=.")
        fill = int(baselines)
    kw.pop("embedding_layer", None)
    kw.pop("embedding_reduce", None)
    return keep, extra, int(fill)


@register_token_explainer("Occlusion", per_sample=TOKEN_PER_SAMPLE)
def token_occlusion(model: ModelWrapper, ids: torch.Tensor, y: torch.Tensor | None, *,
                    sliding_window_shapes: Any = None, strides: Any = None,
                    window: Any = None, **kw: Any) -> torch.Tensor:
    """Windows of ``w`` tokens (``sliding_window_shapes=(w,)``, default 1) replaced by the
    mask token every ``strides`` tokens (default 1); a token's value is the mean score drop
    of the windows that cover it (captum's rule). With ``w = 1``: the score drop when that
    token alone is masked."""
    rows = _forward_rows(model, ids, kw)
    keep, extra, fill = _black_box_setup(ids, kw)
    kw.pop("perturbations_per_eval", None)
    if kw:
        raise TypeError(f"Occlusion on token ids got unexpected arguments {sorted(kw)}.")
    shape = sliding_window_shapes if sliding_window_shapes is not None else window
    width = int(_one(shape, 1, "sliding_window_shapes"))
    stride = int(_one(strides, 1, "strides"))
    n, length = ids.shape
    if width < 1 or stride < 1 or width > length:
        raise ValueError(f"Occlusion on token ids needs 1 <= window <= L={length} and "
                         f"stride >= 1; got window {width}, stride {stride}.")
    starts = torch.arange(0, length - width + 1, stride, device=ids.device)
    pos = torch.arange(length, device=ids.device)
    windows = (pos >= starts[:, None]) & (pos < starts[:, None] + width)  # (K, L)
    masks = windows.unsqueeze(0).expand(n, -1, -1)
    if keep is not None:
        masks = masks & keep.unsqueeze(1)
    drop = _perturbed_drop(model, ids, y, extra, masks, fill, rows)
    covered = windows.to(drop.dtype)
    attr = (drop @ covered) / covered.sum(0).clamp_min(1)
    return _finish(attr, keep)


def _one(value: Any, default: int, name: str) -> int:
    if value is None:
        return default
    if isinstance(value, tuple | list):
        if len(value) != 1:
            raise ValueError(f"`{name}` on token ids has one entry (tokens); got {value!r}.")
        value = value[0]
    return int(value)


def _groups(ids: torch.Tensor, feature_mask: Any, keep: torch.Tensor | None) -> torch.Tensor:
    """(N, L) int64 group labels; -1 marks padding (never perturbed)."""
    if feature_mask is None:
        labels = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    else:
        labels = torch.as_tensor(feature_mask, device=ids.device)
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError("`feature_mask` holds integer group labels, one per token.")
        if labels.ndim == 1:
            labels = labels.unsqueeze(0)
        if labels.shape[1:] != ids.shape[1:] or labels.shape[0] not in (1, ids.shape[0]):
            raise ValueError(f"`feature_mask` must have shape (N or 1, {ids.shape[1]}); got "
                             f"{tuple(labels.shape)}.")
        labels = labels.to(torch.int64).expand_as(ids)
    if keep is not None:
        labels = torch.where(keep, labels, torch.full_like(labels, -1))
    return labels


@register_token_explainer("FeatureAblation", per_sample=TOKEN_PER_SAMPLE)
def token_feature_ablation(model: ModelWrapper, ids: torch.Tensor, y: torch.Tensor | None,
                           **kw: Any) -> torch.Tensor:
    """Each token (or group of ``feature_mask``) replaced by the mask token; its value is the
    score drop ``S(ids) - S(ablated)``, shared by the tokens of the group."""
    rows = _forward_rows(model, ids, kw)
    keep, extra, fill = _black_box_setup(ids, kw)
    groups = _groups(ids, kw.pop("feature_mask", None), keep)
    kw.pop("perturbations_per_eval", None)
    if kw:
        raise TypeError(f"FeatureAblation on token ids got unexpected arguments {sorted(kw)}.")
    labels = torch.unique(groups[groups >= 0])
    masks = groups.unsqueeze(1) == labels.reshape(1, -1, 1)  # (N, K, L)
    drop = _perturbed_drop(model, ids, y, extra, masks, fill, rows)
    attr = (drop.unsqueeze(-1) * masks.to(drop.dtype)).sum(1)
    return _finish(attr, keep)


def _token_surrogate(cls_name: str, model: ModelWrapper, ids: torch.Tensor,
                     y: torch.Tensor | None, kw: dict[str, Any]) -> torch.Tensor:
    """captum's Lime/KernelShap over binary features: feature j present (the sample's tokens
    of group j) or absent (replaced by the mask token). The surrogate sees the binary vectors
    only (LIME's text setting, Ribeiro et al. 2016): the kernel distance is computed between
    them, never between ids."""
    import captum.attr as ca

    seed = kw.pop("seed", 0)
    ctor = _constructor_kwargs(kw)
    rows = _forward_rows(model, ids, kw)
    keep, extra, fill = _black_box_setup(ids, kw)
    groups = _groups(ids, kw.pop("feature_mask", None), keep)
    n_samples = int(kw.get("n_samples", 25))
    kw.setdefault("perturbations_per_eval", min(rows, n_samples))
    keys = _rng.sample_keys(ids, seed)
    seeds = (_rng.combine(keys, 7) & ((1 << 63) - 1)).tolist()
    out = torch.zeros(ids.shape, dtype=model.dtype, device=ids.device)
    fill_t = torch.full((), fill, dtype=ids.dtype, device=ids.device)
    for i in range(ids.shape[0]):
        labels = torch.unique(groups[i][groups[i] >= 0])
        if labels.numel() == 0:
            continue
        index = torch.searchsorted(labels, groups[i].clamp_min(0))  # position -> feature
        present = groups[i] >= 0
        row = ids[i]
        extra_i = tuple(_rows(v, i, i + 1, ids.shape[0]) for v in extra)

        def forward(z: torch.Tensor, y_rows: torch.Tensor | None = None, *ex: Any,
                    row=row, index=index, present=present) -> torch.Tensor:
            on = (z[:, index] > 0.5) | ~present  # padding is never replaced
            batch = torch.where(on, row, fill_t)
            bound = _bound(model, ex)
            return bound.select(bound(batch), y_rows)

        ones = torch.ones((1, labels.numel()), dtype=model.dtype, device=ids.device)
        explainer = getattr(ca, cls_name)(forward, **ctor)
        y_i = None if y is None else y[i : i + 1]
        with _seeded_global_rngs(int(seeds[i]), ids.device), torch.no_grad():
            phi = explainer.attribute(ones, baselines=0.0,
                                      additional_forward_args=_args(y_i, extra_i), **kw)
        out[i] = torch.where(present, phi[0].to(out.dtype)[index], out.new_zeros(()))
    return _finish(out, keep)


@register_token_explainer("Lime", per_sample=TOKEN_PER_SAMPLE)
def token_lime(model: ModelWrapper, ids: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """LIME over tokens (features: tokens or ``feature_mask`` groups; absent = mask token);
    seeded per sample by ``seed``."""
    return _token_surrogate("Lime", model, ids, y, kw)


@register_token_explainer("KernelShap", per_sample=TOKEN_PER_SAMPLE)
def token_kernel_shap(model: ModelWrapper, ids: torch.Tensor, y: torch.Tensor | None,
                      **kw: Any):
    """Kernel SHAP over tokens (features and baseline as for Lime); seeded per sample."""
    return _token_surrogate("KernelShap", model, ids, y, kw)
