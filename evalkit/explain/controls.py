"""Control "explanations" for sanity checks: they carry no information about the model."""

from __future__ import annotations

from typing import Any

import torch

from .. import _rng
from ..models import ModelWrapper
from .core import register_explainer


@register_explainer("Random", aliases=("Control Var. Random Uniform",))
def random_uniform(
    model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, *, seed: int = 0,
    channels: int = 1, **_: Any
) -> torch.Tensor:
    """U[0, 1) noise, seeded per sample (same map for a sample in any batch)."""
    keys = _rng.sample_keys(x, seed)
    shape = (channels, *x.shape[2:]) if x.ndim > 2 else tuple(x.shape[1:])
    return _rng.uniform(keys, shape, dtype=x.dtype)


@register_explainer("Constant", aliases=("Control Var. Constant",))
def constant(
    model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, *, constant_value: float = 1.0,
    **_: Any
) -> torch.Tensor:
    """The same value everywhere."""
    shape = (x.shape[0], 1, *x.shape[2:]) if x.ndim > 2 else tuple(x.shape)
    return torch.full(shape, float(constant_value), dtype=x.dtype, device=x.device)
