"""Noise models for input perturbations (robustness metrics, meta-evaluation input tests).

Each model draws from per-row keys (:mod:`evalkit._rng`), never from a global RNG:
``noise(x, keys)`` returns ``x + n`` for one key per row of ``x``. :class:`ColumnNoise` wraps
one of them for tables with a column spec (:class:`evalkit.modality.TabularModality`): it keeps
every perturbed row valid (categories stay categories, ordinals stay on their levels).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from .. import _rng

__all__ = ["ColumnNoise", "GaussianNoise", "Noise", "UniformNoise", "make_noise",
           "mean_absolute_noise"]

#: rng stream of the categorical resampling of :class:`ColumnNoise` (the continuous part uses
#: the wrapped noise's own draws from the same keys)
_FLIP_STREAM = 0xCA7E


class Noise:
    """Base class: additive noise, optionally restricted to a mask and clipped to a range."""

    def sample(
        self, keys: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype
    ) -> torch.Tensor:
        raise NotImplementedError

    def sample_at(self, keys: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype,
                  at: torch.Tensor) -> torch.Tensor:
        """The draws of :meth:`sample` at the flat positions ``at`` (B, m) of each row only:
        ``sample(keys, shape, dtype).reshape(B, -1).gather(1, at)``. Keyed noise draws each
        element from its own counter, so the models here skip the other elements' draws."""
        return self.sample(keys, shape, dtype).reshape(keys.shape[0], -1).gather(
            1, at.to(device=keys.device, dtype=torch.int64))

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
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
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

    def sample_at(self, keys: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype,
                  at: torch.Tensor) -> torch.Tensor:
        return _rng.normal(keys, shape, mean=self.perturb_mean, std=self.perturb_std,
                           dtype=dtype, at=at)


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

    def _bounds(self) -> tuple[float, float]:
        if self.upper_bound is None:
            return -self.lower_bound, self.lower_bound
        return self.lower_bound, self.upper_bound

    def sample(
        self, keys: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype
    ) -> torch.Tensor:
        low, high = self._bounds()
        if high == low:
            return torch.full((keys.shape[0], *shape), low, dtype=dtype, device=keys.device)
        return _rng.uniform(keys, shape, low=low, high=high, dtype=dtype)

    def sample_at(self, keys: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype,
                  at: torch.Tensor) -> torch.Tensor:
        low, high = self._bounds()
        if high == low:
            return torch.full(tuple(at.shape), low, dtype=dtype, device=keys.device)
        return _rng.uniform(keys, shape, low=low, high=high, dtype=dtype, at=at)


def make_noise(spec: object = "gaussian", **kwargs: float) -> Noise:
    """Resolve ``"gaussian"``/``"uniform"`` (with their parameters) or a :class:`Noise`."""
    if isinstance(spec, Noise):
        return spec
    if spec == "gaussian":
        return GaussianNoise(**kwargs)
    if spec == "uniform":
        return UniformNoise(**kwargs)
    raise ValueError(f"Unknown noise {spec!r}; use 'gaussian', 'uniform' or a Noise object.")


def mean_absolute_noise(noise: Noise) -> float:
    """E|n| of one element of ``noise``: sigma sqrt(2/pi) for zero-mean Gaussian noise (the
    folded normal's mean in general), the mean of |U| for uniform noise. Other noise models
    have no closed form here: a ``ValueError`` asks for an explicit value."""
    if isinstance(noise, GaussianNoise):
        mu, sigma = noise.perturb_mean, noise.perturb_std
        if sigma == 0:
            return abs(mu)
        return (sigma * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * sigma * sigma))
                + mu * math.erf(mu / (sigma * math.sqrt(2))))
    if isinstance(noise, UniformNoise):
        if noise.upper_bound is None:
            low, high = -noise.lower_bound, noise.lower_bound
        else:
            low, high = noise.lower_bound, noise.upper_bound
        if high == low:
            return abs(low)
        if low >= 0 or high <= 0:
            return abs(low + high) / 2
        return (high * high + low * low) / (2 * (high - low))
    raise ValueError(f"No mean absolute value is known for {noise!r}; give the categorical "
                     "resampling probability (`flip_prob`) explicitly.")


#: the column kinds of :class:`ColumnNoise`
_COLUMN_KINDS = ("continuous", "ordinal", "categorical")


class ColumnNoise(Noise):
    """Noise for tables that keeps every row valid under a column spec.

    * **continuous** columns: ``x + scale_j * n`` with ``n`` from the wrapped noise (the same
      draws the plain noise gives from the same keys) and ``scale_j`` the column's fixed scale
      (1 by default: the noise is in the column's own units). ``clip`` applies to them only.
    * **ordinal** columns: the same, then snapped to the nearest valid level (ties to the lower
      one); without listed levels, rounded to the nearest integer.
    * **categorical** features (a label-encoded column with its list of categories, or a group
      of one-hot columns): with probability ``flip_prob`` resampled uniformly among the *other*
      categories (never a fractional or empty one-hot row), else kept. A label-encoded value
      that is not among its column's categories is a ValueError (when categories are drawn).

    Parameters
    ----------
    base:
        The continuous noise (:class:`GaussianNoise`, :class:`UniformNoise`, ...).
    kinds:
        One of ``"continuous"``, ``"ordinal"``, ``"categorical"`` per column (anything else is
        a ValueError).
    one_hot:
        The one-hot groups (lists of columns, each all categorical).
    levels:
        ``{column: values}``: the categories of each label-encoded categorical column (needed)
        and the levels of ordinal columns (optional).
    scales:
        Per-column noise scales (F,), or None (all 1); a length other than the number of
        columns is a ValueError.
    flip_prob:
        The probability that a categorical feature changes in one draw; None: the mean
        absolute value of the wrapped noise (:func:`mean_absolute_noise`, OpenXAI's rule
        sqrt(2/pi) sigma for Gaussian noise), capped at 1.
    """

    def __init__(self, base: Noise, kinds: Sequence[str], *,
                 one_hot: Sequence[Sequence[int]] = (),
                 levels: Mapping[int, Sequence[float]] | None = None,
                 scales: Sequence[float] | None = None,
                 flip_prob: float | None = None) -> None:
        if isinstance(base, ColumnNoise):
            base = base.base
        self.base = base
        self.kinds = tuple(kinds)
        unknown = sorted({k for k in self.kinds if k not in _COLUMN_KINDS}, key=str)
        if unknown:
            raise ValueError(f"`kinds` must each be one of {_COLUMN_KINDS}; got {unknown}.")
        self.one_hot = tuple(tuple(int(c) for c in g) for g in one_hot)
        self.levels = {int(c): tuple(float(v) for v in vals)
                       for c, vals in sorted((levels or {}).items())}
        self.scales = None if scales is None else tuple(float(v) for v in scales)
        if self.scales is not None and len(self.scales) != len(self.kinds):
            raise ValueError(f"`scales` needs one value per column: {len(self.scales)} for "
                             f"{len(self.kinds)} columns.")
        if flip_prob is None:
            flip_prob = min(1.0, mean_absolute_noise(base))
        if not 0 <= flip_prob <= 1:
            raise ValueError(f"`flip_prob` must be in [0, 1]; got {flip_prob}.")
        self.flip_prob = float(flip_prob)
        in_groups = {c for g in self.one_hot for c in g}
        self._label_encoded = [c for c, k in enumerate(self.kinds)
                               if k == "categorical" and c not in in_groups]
        missing = [c for c in self._label_encoded if len(self.levels.get(c, ())) < 1]
        if missing:
            raise ValueError(f"Categorical columns {missing} need their categories (`levels`).")

    def sample(self, keys: torch.Tensor, shape: tuple[int, ...],
               dtype: torch.dtype) -> torch.Tensor:
        raise TypeError("ColumnNoise is not additive (categories are resampled); use "
                        "noise(x, keys) or draws(x, keys, k).")

    def draws(self, x: torch.Tensor, keys: torch.Tensor, k: int, *,
              mask: torch.Tensor | None = None,
              clip: tuple[float | torch.Tensor, float | torch.Tensor] | None = None
              ) -> torch.Tensor:
        """``k`` valid perturbed copies of each row of ``x`` (S, F): (S, k, F), each row's
        from its key alone. ``mask`` (S, F) bool limits the perturbation to those columns (a
        one-hot group is resampled when any of its columns is in the mask)."""
        if x.ndim != 2 or x.shape[1] != len(self.kinds):
            raise ValueError(f"ColumnNoise is for ({len(self.kinds)}-column) tables; got "
                             f"inputs of shape {tuple(x.shape)}.")
        if keys.shape[0] != x.shape[0]:
            raise ValueError(f"Need one key per row: {keys.shape[0]} keys for {x.shape[0]} rows.")
        f = x.shape[1]
        dev = x.device
        kind = self.kinds
        numeric = torch.tensor([kd != "categorical" for kd in kind], device=dev)
        n = self.base.sample(keys, (k, f), x.dtype).to(dev)
        if self.scales is not None:
            n = n * torch.tensor(self.scales, dtype=n.dtype, device=dev)
        if mask is not None:
            n = n * mask.unsqueeze(1).to(n.dtype)
        out = x.unsqueeze(1) + n * numeric.to(n.dtype)
        if clip is not None:
            low, high = (torch.as_tensor(c, dtype=out.dtype, device=dev) for c in clip)
            cont = torch.tensor([kd == "continuous" for kd in kind], device=dev)
            out = torch.where(cont, out.clamp(min=low, max=high), out)
        for c, kd in enumerate(kind):
            if kd != "ordinal":
                continue
            if c in self.levels:
                lv = torch.tensor(sorted(self.levels[c]), dtype=out.dtype, device=dev)
                if len(lv) == 1:
                    out[..., c] = lv[0]
                    continue
                v = out[..., c]
                # the nearest level, ties to the lower one (searchsorted: the upper neighbour)
                hi = torch.searchsorted(lv, v.contiguous()).clamp(1, len(lv) - 1)
                lo = hi - 1
                out[..., c] = torch.where(lv[hi] - v < v - lv[lo], lv[hi], lv[lo])
            else:
                out[..., c] = out[..., c].round()
        features = [[c] for c in self._label_encoded] + [list(g) for g in self.one_hot]
        if features and self.flip_prob > 0:
            u = _rng.uniform(_rng.combine(keys, _FLIP_STREAM), (k, len(features), 2),
                             dtype=torch.float64).to(dev)
            for j, cols in enumerate(features):
                flip = u[:, :, j, 0] < self.flip_prob  # (S, k)
                if mask is not None:
                    flip = flip & mask[:, cols].any(1, keepdim=True)
                if len(cols) == 1:
                    cats = torch.tensor(self.levels[cols[0]], dtype=x.dtype, device=dev)
                    hits = x[:, cols[0]].unsqueeze(1) == cats
                    if not bool(hits.any(1).all()):  # argmax would read it as category 0
                        bad = x[:, cols[0]][~hits.any(1)][0].item()
                        raise ValueError(f"ColumnNoise: column {cols[0]} holds {bad}, which is "
                                         f"not among its categories {self.levels[cols[0]]}.")
                    current = hits.to(torch.int64).argmax(1)
                else:
                    cats = None
                    current = x[:, cols].argmax(1)
                m = len(cols) if cats is None else int(cats.numel())
                if m < 2:
                    continue
                shift = 1 + (u[:, :, j, 1] * (m - 1)).floor().to(torch.int64).clamp(max=m - 2)
                new = (current.unsqueeze(1) + shift) % m  # uniform among the other m - 1
                if cats is not None:
                    out[:, :, cols[0]] = torch.where(flip, cats[new], out[:, :, cols[0]])
                else:
                    hot = torch.nn.functional.one_hot(new, m).to(out.dtype)
                    block = out[:, :, cols]
                    out[:, :, cols] = torch.where(flip.unsqueeze(2), hot, block)
        return out

    def __call__(
        self,
        x: torch.Tensor,
        keys: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        clip: tuple[float | torch.Tensor, float | torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One valid perturbed copy of each row of ``x`` (B, F), keyed by ``keys`` (B,)."""
        if mask is not None:
            mask = mask.expand_as(x)
        return self.draws(x, keys, 1, mask=mask, clip=clip)[:, 0]
