"""Explainer registry and the ``explain`` entry point."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._validation import as_tensor, check_inputs, check_labels, check_option, is_numpy_like
from ..models import ModelWrapper, wrap_model

__all__ = [
    "available_methods",
    "explain",
    "get_explainer",
    "numpy_explain_fn",
    "register_explainer",
]

#: ``fn(model: ModelWrapper, x: Tensor, y: Tensor | None, **kwargs) -> Tensor`` per method
Explainer = Callable[..., torch.Tensor]

_EXPLAINERS: dict[str, Explainer] = {}
_ALIASES: dict[str, str] = {}
_REDUCTIONS = (None, "sum", "mean", "abs_sum", "max_abs")


def register_explainer(
    name: str, *, aliases: tuple[str, ...] = (), overwrite: bool = False
) -> Callable[[Explainer], Explainer]:
    """Decorator registering ``fn(model, x, y, **kwargs) -> Tensor`` under ``name``.

    ``model`` is a :class:`~evalkit.models.ModelWrapper`; ``x`` a batch on its device; ``y``
    the labels (or None). Return attributions of shape (N, C, ...) or (N, 1, ...).
    """

    def decorate(fn: Explainer) -> Explainer:
        if not overwrite and name in _EXPLAINERS:
            raise ValueError(f"An explainer named {name!r} is already registered.")
        _EXPLAINERS[name] = fn
        for alias in aliases:
            _ALIASES[alias.lower()] = name
        return fn

    return decorate


def available_methods() -> list[str]:
    """Names of the registered explanation methods."""
    _load_builtin()
    return sorted(_EXPLAINERS)


def get_explainer(method: str) -> Explainer:
    _load_builtin()
    if method in _EXPLAINERS:
        return _EXPLAINERS[method]
    lower = {k.lower(): k for k in _EXPLAINERS}
    if method.lower() in lower:
        return _EXPLAINERS[lower[method.lower()]]
    if method.lower() in _ALIASES:
        return _EXPLAINERS[_ALIASES[method.lower()]]
    close = difflib.get_close_matches(method, list(_EXPLAINERS), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"Unknown explanation method {method!r}.{hint} "
                     f"Available: {', '.join(sorted(_EXPLAINERS))}.")


def explain(
    model: Any,
    x: Any,
    y: Any = None,
    method: str = "Saliency",
    *,
    reduce_channels: str | None = None,
    batch_size: int | None = None,
    softmax: bool | None = None,
    target: object = None,
    **kwargs: Any,
) -> Any:
    """Explain ``model``'s target score on inputs ``x`` (labels ``y``) with ``method``.

    Parameters
    ----------
    model:
        ``torch.nn.Module``, callable or :class:`~evalkit.models.ModelWrapper`.
    method:
        A registered name (see :func:`available_methods`), e.g. ``"Saliency"``,
        ``"IntegratedGradients"``.
    reduce_channels:
        ``None`` keeps one value per input element (N, C, ...); ``"sum"``, ``"mean"``,
        ``"abs_sum"`` or ``"max_abs"`` reduce over the channel axis to (N, 1, ...).
    batch_size:
        Inputs per explainer call (default: from the memory budget).
    softmax, target:
        Override the wrapper's output settings for this explanation.
    **kwargs:
        Passed to the method (e.g. ``n_steps``, ``baselines`` for IntegratedGradients).

    Returns
    -------
    Attributions as a NumPy array if ``x`` was one, else a tensor on the model's device.
    """
    check_option("reduce_channels", reduce_channels, _REDUCTIONS)
    fn = get_explainer(method)
    wrapper = wrap_model(model, softmax=softmax, target=target)
    numpy_in = is_numpy_like(x)
    xt = check_inputs(wrapper.prepare(x))
    yt = None if y is None else check_labels(as_tensor(y, "y", device=wrapper.device), len(xt))
    size = wrapper.resolve_batch_size(xt, batch_size)
    parts = []
    with wrapper.evaluation():
        for start in range(0, xt.shape[0], size):
            xs = xt[start : start + size]
            ys = None if yt is None else yt[start : start + size]
            out = fn(wrapper, xs, ys, **kwargs)
            parts.append(as_tensor(out, "explanation", device=wrapper.device).detach())
    a = torch.cat(parts, 0) if len(parts) > 1 else parts[0]
    a = _reduce_channels(a, reduce_channels)
    return a.cpu().numpy() if numpy_in else a


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


_LOADED = False


def _load_builtin() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        from . import captum_methods, controls  # noqa: F401
