"""Noise models for input perturbations (robustness metrics, meta-evaluation input tests).

Each model draws from per-row keys (:mod:`evalkit._rng`), never from a global RNG:
``noise(x, keys)`` returns ``x + n`` for one key per row of ``x``.
"""

from __future__ import annotations

import torch

from .. import _rng

__all__ = ["GaussianNoise", "Noise", "UniformNoise", "make_noise"]


class Noise:
    """Base class: additive noise, optionally restricted to a mask and clipped to a range."""

    def sample(
        self, keys: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype
    ) -> torch.Tensor:
        raise NotImplementedError

    def __call__(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        clip: tuple[float | torch.Tensor, float | torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``x + noise`` for rows keyed by ``keys`` (B,); ``mask`` limits where noise is added
        and ``clip=(low, high)`` keeps the result inside a data range."""
        if keys.shape[0] != x.shape[0]:
            raise ValueError(f"Need one key per row: {keys.shape[0]} keys for {x.shape[0]} rows.")
        n = self.sample(keys, tuple(x.shape[1:]), x.dtype)
        if mask is not None:
            n = n * mask.to(n.dtype)
        out = x + n
        if clip is not None:
            low, high = (torch.as_tensor(c, dtype=out.dtype, device=out.device) for c in clip)
            out = torch.clamp(out, min=low, max=high)
        return out

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class GaussianNoise(Noise):
    """n ~ N(perturb_mean, perturb_std**2), i.i.d. per element."""

    def __init__(self, perturb_mean: float = 0.0, perturb_std: float = 0.1) -> None:
        if perturb_std < 0:
            raise ValueError(f"`perturb_std` must be >= 0; got {perturb_std}.")
        self.perturb_mean = float(perturb_mean)
        self.perturb_std = float(perturb_std)

    def sample(
        self, keys: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype
    ) -> torch.Tensor:
        return _rng.normal(keys, shape, mean=self.perturb_mean, std=self.perturb_std, dtype=dtype)


class UniformNoise(Noise):
    """n ~ U(-lower_bound, lower_bound), or U(lower_bound, upper_bound) if ``upper_bound`` is
    set (the Quantus convention for ``lower_bound``/``upper_bound``)."""

    def __init__(self, lower_bound: float = 0.02, upper_bound: float | None = None) -> None:
        if upper_bound is None and lower_bound < 0:
            raise ValueError("`lower_bound` must be >= 0 when `upper_bound` is None.")
        if upper_bound is not None and upper_bound <= lower_bound:
            raise ValueError("`upper_bound` must be larger than `lower_bound`.")
        self.lower_bound = float(lower_bound)
        self.upper_bound = None if upper_bound is None else float(upper_bound)

    def sample(
        self, keys: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype
    ) -> torch.Tensor:
        if self.upper_bound is None:
            low, high = -self.lower_bound, self.lower_bound
        else:
            low, high = self.lower_bound, self.upper_bound
        if high == low:
            return torch.full((keys.shape[0], *shape), low, dtype=dtype, device=keys.device)
        return _rng.uniform(keys, shape, low=low, high=high, dtype=dtype)


def make_noise(spec: object = "gaussian", **kwargs: float) -> Noise:
    """Resolve ``"gaussian"``/``"uniform"`` (with their parameters) or a :class:`Noise`."""
    if isinstance(spec, Noise):
        return spec
    if spec == "gaussian":
        return GaussianNoise(**kwargs)
    if spec == "uniform":
        return UniformNoise(**kwargs)
    raise ValueError(f"Unknown noise {spec!r}; use 'gaussian', 'uniform' or a Noise object.")
