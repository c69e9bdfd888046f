"""Replacement baselines and imputers: what a removed feature is replaced with.

Two levels:

* :class:`Imputer` is the general hook: ``fill(x, mask, keys=...)`` returns ``x`` with the masked
  elements replaced, and may look at the mask (noisy linear imputation for ROAD does).
* :class:`Baseline` is an imputer whose replacement values do not depend on the mask: its
  ``values(x, keys)`` are computed once per sample and reused for every step of a curve, which is
  what makes batched perturbation cheap.

Named baselines (``perturb_baseline`` in Quantus terms):

=================  ===========================================================================
``"black"``        per-sample minimum of x (as in Quantus; with standardised images the
                   darkest value is not 0)
``"white"``        per-sample maximum of x
``"mean"``         per-sample mean of x (over all elements)
``"channel_mean"`` per-sample, per-channel mean
``"zero"``         0 (``"constant"`` with ``value=...`` for another constant; numbers also work)
``"uniform"``      i.i.d. U(``uniform_low``, ``uniform_high``) per element (default [0, 1))
``"random"``       i.i.d. uniform per element within the sample's own [min, max]
``"blur"``         Gaussian blur of x (``blur_sigma``, ``blur_kernel_size``), per channel
=================  ===========================================================================

On token ids (:class:`~evalkit.modality.TokensModality`) the values come from the modality
(:meth:`~evalkit.modality.Modality.baseline_values`): named statistics mean the mask token,
numbers and integer arrays are explicit ids, random baselines are refused, and ids are never
cast to floating point. Every kernel replaces through the modality
(:meth:`Baseline.fill` with ``modality=``, :meth:`~evalkit.modality.Modality.replace`);
:class:`TokenDeletion` (``"delete"``) deletes tokens and re-pads instead (see
:mod:`evalkit.perturb.tokens`, which also holds the token-dropout noise).

Random baselines draw from per-sample keys (:mod:`evalkit._rng`), so a sample's replacement
values are the same in any batch. Unlike Quantus 0.6 (deviation C27), ``"uniform"`` draws one value
per element, not one per sample.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import _rng
from .._validation import as_tensor

__all__ = ["BASELINES", "Baseline", "Imputer", "TokenDeletion", "gaussian_blur", "impute",
           "make_imputer"]

#: tokens for :meth:`Imputer.cache_token` (unique for the life of the process)
_INSTANCE_IDS = itertools.count()

BASELINES = ("black", "white", "mean", "channel_mean", "zero", "constant", "uniform", "random",
             "blur")


class Imputer(ABC):
    """Replaces masked input elements. Subclass this to plug in a new strategy."""

    #: whether the replacement is random (then ``keys`` must be given)
    stochastic: bool = False
    #: whether :meth:`fill` takes the batch's modality (``modality=``); the kernels pass it to
    #: such imputers (baselines resolve token ids through it, token deletion its pad id)
    modality_aware: bool = False

    @abstractmethod
    def fill(
        self, x: torch.Tensor, mask: torch.Tensor, *, keys: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return ``x`` (B, ...) with the elements where ``mask`` (bool, broadcastable) is True
        replaced. ``keys`` (B,) are the rows' random keys for stochastic imputers."""

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"

    def cache_token(self) -> bytes:
        """What identifies this imputer's replacements in :func:`evalkit.forward_cache` keys.

        The default is unique to the instance (never shared with another object, even after
        this one is freed): a user's imputer may hold state that its ``repr`` does not show.
        An imputer whose output depends only on parameters its ``repr`` shows may return
        ``repr(self).encode()`` so that equal instances share forward passes. An imputer must
        not change between the calls of one ``forward_cache()`` block.
        """
        token = self.__dict__.get("_cache_token")
        if token is None:
            token = self.__dict__["_cache_token"] = f"instance:{next(_INSTANCE_IDS)}".encode()
        return token


class Baseline(Imputer):
    """A mask-independent replacement; see the module docstring for the named kinds.

    Parameters
    ----------
    kind:
        One of the names above, a number (constant fill), or an array/tensor broadcastable to
        one input (shape x[0]) or to the whole batch (shape x).
    """

    #: on token ids the values come from the modality (the mask token, explicit ids)
    modality_aware = True

    def __init__(
        self,
        kind: str | float | np.ndarray | torch.Tensor = "black",
        *,
        value: float = 0.0,
        uniform_low: float = 0.0,
        uniform_high: float = 1.0,
        blur_sigma: float = 5.0,
        blur_kernel_size: int | None = None,
    ) -> None:
        if isinstance(kind, str) and kind not in BASELINES:
            raise ValueError(
                f"Unknown baseline {kind!r}; choose one of {', '.join(BASELINES)}, a number or "
                "an array."
            )
        if isinstance(kind, bool) or not isinstance(
            kind, str | int | float | np.ndarray | torch.Tensor | np.generic
        ):
            raise TypeError(f"`perturb_baseline` must be a name, number or array; got {kind!r}.")
        if uniform_high <= uniform_low:
            raise ValueError("`uniform_high` must be larger than `uniform_low`.")
        if blur_sigma <= 0:
            raise ValueError(f"`blur_sigma` must be > 0; got {blur_sigma}.")
        if blur_kernel_size is not None and (
            isinstance(blur_kernel_size, bool) or not isinstance(blur_kernel_size, int)
            or blur_kernel_size < 1 or blur_kernel_size % 2 == 0
        ):
            raise ValueError(
                f"`blur_kernel_size` must be a positive odd integer; got {blur_kernel_size!r}."
            )
        self.kind = kind
        self.value = value
        self.uniform_low = uniform_low
        self.uniform_high = uniform_high
        self.blur_sigma = blur_sigma
        self.blur_kernel_size = blur_kernel_size
        self.stochastic = isinstance(kind, str) and kind in ("uniform", "random")

    def values(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        """Replacement values for a batch ``x`` (N, ...), broadcastable against ``x``."""
        kind = self.kind
        n = x.shape[0]
        flat = x.reshape(n, -1)
        stat_shape = (n,) + (1,) * (x.ndim - 1)
        if not isinstance(kind, str):
            t = as_tensor(kind, "perturb_baseline", dtype=x.dtype, device=x.device)
            if t.ndim == 0:
                return t.reshape((1,) * x.ndim)
            if tuple(t.shape) == tuple(x.shape[1:]):
                return t.unsqueeze(0)
            if tuple(t.shape) == tuple(x.shape):
                return t
            raise ValueError(
                f"A baseline array must have the shape of one input {tuple(x.shape[1:])} or of "
                f"the batch {tuple(x.shape)}; got {tuple(t.shape)}."
            )
        if kind == "black":
            return flat.amin(1).reshape(stat_shape)
        if kind == "white":
            return flat.amax(1).reshape(stat_shape)
        if kind == "mean":
            return flat.mean(1).reshape(stat_shape)
        if kind == "channel_mean":
            if x.ndim < 3:
                return flat.mean(1).reshape(stat_shape)
            return x.flatten(2).mean(2).reshape(n, x.shape[1], *([1] * (x.ndim - 2)))
        if kind in ("zero", "constant"):
            value = 0.0 if kind == "zero" else float(self.value)
            return torch.full((1,) * x.ndim, value, dtype=x.dtype, device=x.device)
        if kind == "blur":
            return gaussian_blur(x, self.blur_sigma, self.blur_kernel_size)
        if keys is None:
            raise ValueError(f"The {kind!r} baseline is random and needs per-sample keys.")
        if kind == "uniform":
            return _rng.uniform(keys, tuple(x.shape[1:]), low=self.uniform_low,
                                high=self.uniform_high, dtype=x.dtype)
        # "random": uniform within each sample's own range
        u = _rng.uniform(keys, tuple(x.shape[1:]), dtype=x.dtype)
        lo = flat.amin(1).reshape(stat_shape)
        hi = flat.amax(1).reshape(stat_shape)
        return lo + u * (hi - lo)

    def fill(
        self, x: torch.Tensor, mask: torch.Tensor, *, keys: torch.Tensor | None = None,
        modality: Any = None,
    ) -> torch.Tensor:
        """``x`` with the masked elements replaced by the baseline's values; with a
        ``modality``, values and replacement come from it (token ids: the mask token or an
        explicit id, never a cast)."""
        if modality is None:
            return torch.where(mask, self.values(x, keys), x)
        return modality.replace(x, mask, modality.baseline_values(self, x, keys))


class TokenDeletion(Imputer):
    """Deletion with re-padding: the masked tokens are dropped, the rest shifted left, and
    ``pad_token_id`` appended (None, default: the modality's pad id, ``TokensModality
    (pad_token_id=...)``, else its mask token id).

    Defined for token ids only (the modality's :meth:`~evalkit.modality.TokensModality.delete`);
    on other data it raises. A mask that selects every token leaves a sequence of pad ids.
    """

    modality_aware = True

    def __init__(self, pad_token_id: int | None = None) -> None:
        if pad_token_id is not None and (isinstance(pad_token_id, bool)
                                         or int(pad_token_id) != pad_token_id):
            raise ValueError(f"`pad_token_id` must be an integer id or None; got {pad_token_id!r}.")
        self.pad_token_id = None if pad_token_id is None else int(pad_token_id)

    def fill(self, x: torch.Tensor, mask: torch.Tensor, *, keys: torch.Tensor | None = None,
             modality: Any = None) -> torch.Tensor:
        delete = getattr(modality, "delete", None)
        if delete is None:
            from ..modality import TokensModality

            if x.is_floating_point() or x.ndim != 2:
                raise ValueError("TokenDeletion deletes tokens of (N, L) integer token ids; "
                                 f"got {tuple(x.shape)} {x.dtype} inputs.")
            delete = TokensModality().delete
        return delete(x, mask, self.pad_token_id)


def impute(imputer: Imputer, x: torch.Tensor, mask: torch.Tensor, *,
           keys: torch.Tensor | None = None, modality: Any = None) -> torch.Tensor:
    """``imputer.fill`` through the batch's modality: passed to imputers that take it
    (:attr:`Imputer.modality_aware`); on integer inputs (token ids) an imputer that returns
    floating-point values is refused rather than cast."""
    if getattr(imputer, "modality_aware", False):
        out = imputer.fill(x, mask, keys=keys, modality=modality)
    else:
        out = imputer.fill(x, mask, keys=keys)
    if modality is not None and getattr(modality, "integer_inputs", False) and (
            out.is_floating_point() or out.is_complex()):
        raise TypeError(f"{type(imputer).__name__} returned {out.dtype} values for "
                        f"{modality.name} inputs, which are integer ids and never cast; use a "
                        "baseline (the mask token), an id, or evalkit.perturb.TokenDeletion().")
    return out


def make_imputer(spec: Any = "black", **kwargs: Any) -> Imputer:
    """Resolve ``perturb_baseline`` (a name, number, array or :class:`Imputer`; ``"delete"``
    is token deletion with re-padding, :class:`~evalkit.perturb.TokenDeletion`)."""
    if isinstance(spec, Imputer):
        if kwargs:
            raise TypeError("Baseline options cannot be combined with an Imputer instance.")
        return spec
    if isinstance(spec, str) and spec == "delete":
        return TokenDeletion(**kwargs)
    return Baseline(spec, **kwargs)


def _gaussian_kernel(sigma: float, size: int, device: torch.device, dtype: torch.dtype):
    r = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-0.5 * (r / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def gaussian_blur(
    x: torch.Tensor, sigma: float = 5.0, kernel_size: int | None = None
) -> torch.Tensor:
    """Separable Gaussian blur of each channel over the spatial axes (reflect padding).

    Works on (N, C, T) and (N, C, H, W). The kernel size defaults to ``2 * ceil(3 sigma) + 1``,
    capped at the spatial extent.
    """
    if x.ndim not in (3, 4):
        raise ValueError(f"Blur needs (N, C, T) or (N, C, H, W) inputs; got {tuple(x.shape)}.")
    if kernel_size is None:
        size = 2 * math.ceil(3 * sigma) + 1
    elif isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 \
            or kernel_size % 2 == 0:
        raise ValueError(f"`kernel_size` must be a positive odd integer; got {kernel_size!r}.")
    else:
        size = kernel_size
    out = x
    for axis in range(2, x.ndim):
        extent = x.shape[axis]
        k = min(size, extent if extent % 2 == 1 else extent - 1)
        k = max(k, 1)
        kern = _gaussian_kernel(sigma, k, x.device, x.dtype)
        pad = k // 2
        moved = out.movedim(axis, -1)
        shape = moved.shape
        # every line as a channel of one depthwise convolution: the same sums as one
        # single-channel convolution per line (bit for bit on CPU), about 3x faster than a
        # batch of thousands of one-channel lines
        flat = moved.reshape(1, -1, shape[-1])
        if pad:
            flat = F.pad(flat, (pad, pad), mode="reflect" if pad < shape[-1] else "replicate")
        lines = flat.shape[1]
        flat = F.conv1d(flat, kern.reshape(1, 1, -1).expand(lines, 1, k), groups=lines)
        out = flat.reshape(shape).movedim(-1, axis)
    return out
