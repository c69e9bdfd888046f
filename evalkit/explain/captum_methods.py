"""Gradient-based methods through captum.

Every method explains the wrapper's *target score*: captum gets a forward function that returns
``target(outputs, y)`` (one scalar per input), with ``y`` passed as an additional forward
argument so captum expands it together with the inputs (e.g. over Integrated Gradients steps).
Gradients are taken with respect to the inputs only (captum uses ``torch.autograd.grad``), so the
``.grad`` of the model's parameters is never touched.
"""

from __future__ import annotations

from typing import Any

import torch

from ..models import ModelWrapper
from .core import register_explainer


def _scalar_forward(model: ModelWrapper):
    def forward(inputs: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return model.select(model(inputs), y)

    return forward


def _require_gradients(model: ModelWrapper, method: str) -> None:
    if not model.differentiable:
        raise TypeError(
            f"{method} needs gradients, but {type(model).__name__} is not differentiable; "
            "use a torch model, or a black-box method such as Occlusion."
        )


def _args(y: torch.Tensor | None) -> tuple[Any, ...] | None:
    return None if y is None else (y,)


def _grad_input(x: torch.Tensor) -> torch.Tensor:
    """A gradient-requiring alias of ``x`` (the caller's tensor keeps requires_grad=False)."""
    return x.detach().requires_grad_(True)


@register_explainer("Gradient")
def gradient(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """Signed input gradient of the target score (Simonyan et al. 2014, without abs)."""
    from captum.attr import Saliency

    _require_gradients(model, "Gradient")
    return Saliency(_scalar_forward(model)).attribute(
        _grad_input(x), abs=False, additional_forward_args=_args(y), **kw
    )


@register_explainer("Saliency")
def saliency(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """Absolute input gradient (Simonyan, Vedaldi & Zisserman 2014)."""
    from captum.attr import Saliency

    _require_gradients(model, "Saliency")
    kw.setdefault("abs", True)
    return Saliency(_scalar_forward(model)).attribute(
        _grad_input(x), additional_forward_args=_args(y), **kw
    )


@register_explainer("InputXGradient")
def input_x_gradient(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """Input times gradient (Shrikumar et al. 2016)."""
    from captum.attr import InputXGradient

    _require_gradients(model, "InputXGradient")
    return InputXGradient(_scalar_forward(model)).attribute(
        _grad_input(x), additional_forward_args=_args(y), **kw
    )


@register_explainer("IntegratedGradients")
def integrated_gradients(
    model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any
):
    """Integrated Gradients (Sundararajan et al. 2017); ``n_steps`` (default 50), ``baselines``
    (default zeros) and ``method`` pass through to captum."""
    from captum.attr import IntegratedGradients

    _require_gradients(model, "IntegratedGradients")
    kw.setdefault("internal_batch_size", x.shape[0])
    return IntegratedGradients(_scalar_forward(model)).attribute(
        _grad_input(x), additional_forward_args=_args(y), **kw
    )
