"""Per-sample attribution normalisation (never over the batch; cf. Quantus deviation C1).

Every function maps a batch (N, ...) to a batch of the same shape, normalising each sample over
all of its own elements, out of place. All-zero maps are returned unchanged (as zeros).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "NORMALISERS",
    "get_normaliser",
    "normalise_by_average_second_moment_estimate",
    "normalise_by_max",
    "normalise_by_negative",
]


def _per_sample(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample (N,) statistic to broadcast against ``like`` (N, ...)."""
    return scale.reshape(scale.shape[0], *([1] * (like.ndim - 1)))


def _divide_by_max(values: torch.Tensor, magnitude: torch.Tensor, *,
                   inplace: bool = False) -> torch.Tensor:
    """``values`` / the per-sample maximum of ``magnitude`` (|a|), left as they are where that
    maximum is 0; ``inplace``: divided in place (the same values)."""
    scale = magnitude.reshape(magnitude.shape[0], -1).amax(1)
    scale = _per_sample(torch.where(scale > 0, scale, torch.ones_like(scale)), values)
    return values.div_(scale) if inplace else values / scale


def normalise_by_max(a: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """a / max|a| per sample, so each map lies in [-1, 1] with max |a| = 1. ``inplace``:
    ``a`` is divided in place (evalkit's own copies; the same values)."""
    return _divide_by_max(a, a.abs(), inplace=inplace)


def abs_normalised_by_max(a: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """``normalise_by_max(a).abs()``, bit for bit, in one pass of |a| fewer: |a / m| is
    |a| / m exactly for m > 0 (IEEE division rounds symmetrically). ``inplace``: written into
    ``a`` (evalkit's own copies)."""
    mag = a.abs_() if inplace else a.abs()
    return _divide_by_max(mag, mag, inplace=True)


def normalise_by_negative(a: torch.Tensor) -> torch.Tensor:
    """Positive values / max(a) and negative values / |min(a)|, per sample, into [-1, 1]."""
    flat = a.reshape(a.shape[0], -1)
    pos = flat.amax(1).clamp_min(0)
    neg = (-flat.amin(1)).clamp_min(0)
    pos = _per_sample(torch.where(pos > 0, pos, torch.ones_like(pos)), a)
    neg = _per_sample(torch.where(neg > 0, neg, torch.ones_like(neg)), a)
    return torch.where(a > 0, a / pos, a / neg)


def normalise_by_average_second_moment_estimate(a: torch.Tensor) -> torch.Tensor:
    """a / sqrt(mean(a**2)) per sample (unit second moment; Agarwal et al. 2022)."""
    m2 = a.reshape(a.shape[0], -1).pow(2).mean(1).sqrt()
    return a / _per_sample(torch.where(m2 > 0, m2, torch.ones_like(m2)), a)


NORMALISERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "max": normalise_by_max,
    "negative": normalise_by_negative,
    "second_moment": normalise_by_average_second_moment_estimate,
    "normalise_by_max": normalise_by_max,
    "normalise_by_negative": normalise_by_negative,
    "normalise_by_average_second_moment_estimate": normalise_by_average_second_moment_estimate,
}


def get_normaliser(spec: str | Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Resolve ``"max"``, ``"negative"``, ``"second_moment"`` or a callable.

    A callable receives the (N, ...) batch as a tensor and must return the same shape,
    normalising each sample on its own.
    """
    if callable(spec):
        return spec
    if isinstance(spec, str) and spec in NORMALISERS:
        return NORMALISERS[spec]
    raise ValueError(
        f"Unknown normalise_func {spec!r}; use 'max', 'negative', 'second_moment' or a callable."
    )
