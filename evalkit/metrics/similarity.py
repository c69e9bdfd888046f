"""Similarity and distance functions between batches of explanations, vectorised in torch.

Every function takes two batches ``a`` and ``b`` of the same shape (N, ...) and returns one value
per row, a float64 tensor of shape (N,), computed on the tensors' device without a Python loop
over samples. Correlations flatten each row; :func:`ssim` and :func:`hog` read the spatial
structure of the maps ((N, C, H, W) images, (N, C, T) or (N, D) series, (N, C, D, H, W)
volumes).

Undefined values are NaN, never a silent number: the correlation of a constant map, the cosine of
an all-zero map. :func:`undefined_reason` says why a row is undefined.

Functions are registered by name (:func:`get_similarity`, :func:`list_similarities`), so metrics
take ``similarity_func="spearman"`` or any callable ``f(a, b) -> (N,)``. Quantus' names
(``"correlation_spearman"``, ``"correlation_pearson"``, ``"ssim"``, ``"mse"``,
``"distance_euclidean"``...) resolve to the same functions. Quantus-style NumPy functions
``f(a, b, batched=True)`` can be adapted with :func:`numpy_similarity`. Register new ones with
:func:`register_similarity`.

=========================  ==============================================  ============
name                       value                                           kind
=========================  ==============================================  ============
``spearman``               Spearman rank correlation (average ranks)       similarity
``pearson``                Pearson correlation                             similarity
``cosine``                 cosine similarity (Quantus' ``cosine`` is the   similarity
                           *distance*, registered here as
                           ``cosine_distance``)
``ssim``                   structural similarity (Wang et al. 2004), as    similarity
                           ``skimage.metrics.structural_similarity``
``hog``                    Pearson correlation of HOG descriptors          similarity
                           (Adebayo et al. 2018), as ``skimage.feature.hog``
``mse``                    mean squared difference                         distance
``abs_difference``         mean absolute difference                        distance
``squared_difference``     sum of squared differences                      distance
``euclidean``              L2 norm of the difference                       distance
``manhattan``              L1 norm of the difference                       distance
``cosine_distance``        1 - cosine similarity                           distance
=========================  ==============================================  ============
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._validation import finite_rows
from ._sorting import sort_rows

__all__ = [
    "SimilarityInfo",
    "abs_difference",
    "correlate_rows",
    "cosine",
    "cosine_distance",
    "euclidean",
    "get_similarity",
    "hog",
    "hog_features",
    "list_similarities",
    "manhattan",
    "mse",
    "numpy_similarity",
    "pearson",
    "rank",
    "register_similarity",
    "similarity_info",
    "spearman",
    "squared_difference",
    "ssim",
    "undefined_reason",
]

#: ``f(a: Tensor (N, ...), b: Tensor (N, ...)) -> Tensor (N,)``
SimilarityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(a)
    b = torch.as_tensor(b, device=a.device)
    if a.shape != b.shape:
        raise ValueError(
            f"Similarity inputs must have the same shape; got {tuple(a.shape)} and "
            f"{tuple(b.shape)}."
        )
    if a.ndim < 1:
        raise ValueError("Similarity inputs need a batch axis: shape (N, ...).")
    return a.to(torch.float64), b.to(torch.float64)


def _flat(a: torch.Tensor) -> torch.Tensor:
    return a.reshape(a.shape[0], -1)


# ============================================================================ correlations
def rank(a: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Ranks 1..D along the last axis of a 2-D tensor, ties given their average rank
    (as ``scipy.stats.rankdata(method="average")``), float64, vectorised over rows.

    ``valid`` (N, D) bool: rank only these entries of each row (1..n_valid); the others are
    ranked after them and are meant to be ignored."""
    a = torch.as_tensor(a)
    if a.ndim != 2:
        raise ValueError(f"rank needs a 2-D tensor (N, D); got shape {tuple(a.shape)}.")
    if valid is not None:  # NaN sorts after +inf, so a valid +inf never ties an excluded entry
        a = torch.where(valid.to(a.device), a.to(torch.float64),
                        torch.tensor(math.nan, dtype=torch.float64, device=a.device))
    n, d = a.shape
    if d == 0:
        return torch.empty((n, 0), dtype=torch.float64, device=a.device)
    if a.device.type == "cpu":
        return torch.from_numpy(_rank_numpy(a.detach().numpy()))
    sorted_vals, order = sort_rows(a, indices=True)
    pos = torch.arange(d, device=a.device).expand(n, d)
    # a tie group spans [start, end] in sorted order; every member gets (start + end) / 2 + 1
    first = torch.ones((n, d), dtype=torch.bool, device=a.device)
    first[:, 1:] = sorted_vals[:, 1:] != sorted_vals[:, :-1]
    last = torch.ones((n, d), dtype=torch.bool, device=a.device)
    last[:, :-1] = first[:, 1:]
    start = torch.where(first, pos, torch.zeros_like(pos)).cummax(1).values
    end = torch.where(last, pos, torch.full_like(pos, d)).flip(1).cummin(1).values.flip(1)
    avg = (start + end).to(torch.float64) / 2 + 1
    out = torch.empty((n, d), dtype=torch.float64, device=a.device)
    return out.scatter_(1, order, avg)


def _rank_numpy(a: np.ndarray) -> np.ndarray:
    """:func:`rank` on the CPU with NumPy (single-threaded vectorised row operations are much
    faster than torch's CPU kernels for many short rows)."""
    n, d = a.shape
    order = np.argsort(a, axis=1)
    # flat indices: one 1-D gather and one 1-D scatter (take/put_along_axis build index grids)
    order += np.arange(0, n * d, d)[:, None]
    flat = order.reshape(-1)
    # the sorted values live in the output's buffer until the ranks overwrite them (few fresh
    # allocations: on the CPU their page faults cost as much as the arithmetic)
    out = np.empty(n * d, dtype=np.float64)
    # mode="clip": the indices are valid, and numpy buffers ``out`` in its default "raise" mode
    sorted_vals = np.take(a.reshape(-1), flat, out=out if a.dtype == np.float64 else None,
                          mode="clip").reshape(n, d)
    first = np.ones((n, d), dtype=bool)
    np.not_equal(sorted_vals[:, 1:], sorted_vals[:, :-1], out=first[:, 1:])
    if first.all():  # no ties (usual for real-valued maps): the rank is the sorted position + 1
        out[order] = np.arange(1.0, d + 1.0)
        return out.reshape(n, d)
    pos = np.broadcast_to(np.arange(d), (n, d))
    last = np.ones((n, d), dtype=bool)
    last[:, :-1] = first[:, 1:]
    start = np.maximum.accumulate(np.where(first, pos, 0), axis=1)
    end = np.minimum.accumulate(np.where(last, pos, d)[:, ::-1], axis=1)[:, ::-1]
    out[flat] = ((start + end) / 2.0 + 1.0).reshape(-1)
    return out.reshape(n, d)


def _centred_rows(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A CPU (N, D) tensor's rows minus their means, and their sums of squares: the half of
    :func:`_pearson_rows` that one side needs, kept when one side is compared with many."""
    xn = x.detach().numpy().astype(np.float64, copy=False)
    xn = xn - xn.mean(1, keepdims=True)
    return xn, np.einsum("ij,ij->i", xn, xn)


def _pearson_centred(x: tuple[Any, np.ndarray], y: tuple[Any, np.ndarray], *,
                     products: bool = False) -> torch.Tensor:
    """Row-wise Pearson correlation of two :func:`_centred_rows` results, clipped to
    [-1, 1]; NaN where a row has no spread. ``products``: ``x[0]`` holds the rows' centred
    product sums already (``y[0]`` is unused)."""
    (xn, xx), (yn, yy) = x, y
    num = xn if products else np.einsum("ij,ij->i", xn, yn)
    den = np.sqrt(xx * yy)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return torch.from_numpy(np.clip(r, -1.0, 1.0))


#: the longest rows :func:`_pearson_with_ranks_of` takes: below it every sum of centred ranks
#: and their products is an exact float64 (multiples of 1/4 under 2**51), so any summation
#: order gives the same number
_EXACT_RANK_SUMS = 100_000


def _pearson_with_ranks_of(ref: tuple[np.ndarray, np.ndarray], other: np.ndarray
                           ) -> torch.Tensor:
    """``_pearson_centred(ref, _centred_rows(rank(other)))`` for ``ref`` the centred ranks of
    CPU rows, without building ``other``'s ranks where its rows have no ties: then a row's
    ranks are its sorted positions 1..D, their mean (D + 1) / 2, their centred sum of squares
    D (D^2 - 1) / 12, and the centred product sum is sum_k ref[order_k] * (k + 1) (``ref`` sums
    to 0). All of these are exact (:data:`_EXACT_RANK_SUMS`), so they are the numbers the
    general path computes. Rows with ties (or very long rows) take the general path."""
    n, d = other.shape
    if d > _EXACT_RANK_SUMS or d < 2:
        return _pearson_centred(ref, _centred_rows(torch.from_numpy(_rank_numpy(other))))
    order = np.argsort(other, axis=1)
    order += np.arange(0, n * d, d)[:, None]
    flat = order.reshape(-1)
    ordered = np.take(other.reshape(-1), flat, mode="clip").reshape(n, d)
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        return _pearson_centred(ref, _centred_rows(torch.from_numpy(_rank_numpy(other))))
    xn, xx = ref
    num = np.take(xn.reshape(-1), flat, mode="clip").reshape(n, d) @ np.arange(1.0, d + 1.0)
    yy = np.full(n, d * (d * d - 1) / 12)
    # the general path's centred ranks would be exact too: the same num and yy
    return _pearson_centred((num, xx), (None, yy), products=True)


def _pearson_rows(x: torch.Tensor, y: torch.Tensor,
                  valid: torch.Tensor | None = None) -> torch.Tensor:
    """Pearson correlation of each row pair of (N, D) tensors over the ``valid`` entries
    (all when None), clipped to [-1, 1]; NaN where a row has no spread."""
    if x.device.type == "cpu":  # NumPy's single-threaded row reductions are faster on the CPU
        if valid is None:
            return _pearson_centred(_centred_rows(x), _centred_rows(y))
        xn = x.detach().numpy().astype(np.float64, copy=False)
        yn = y.detach().numpy().astype(np.float64, copy=False)
        w = valid.detach().cpu().numpy()
        cnt = np.maximum(w.sum(1, keepdims=True), 1)
        xn = np.where(w, xn, 0.0)
        yn = np.where(w, yn, 0.0)
        xn = np.where(w, xn - xn.sum(1, keepdims=True) / cnt, 0.0)
        yn = np.where(w, yn - yn.sum(1, keepdims=True) / cnt, 0.0)
        return _pearson_centred((xn, np.einsum("ij,ij->i", xn, xn)),
                                (yn, np.einsum("ij,ij->i", yn, yn)))
    if valid is None:
        x = x - x.mean(1, keepdim=True)
        y = y - y.mean(1, keepdim=True)
    else:
        w = valid.to(x.device)
        cnt = w.sum(1, keepdim=True).clamp_min(1)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        x = torch.where(w, x, zero)
        y = torch.where(w, y, zero)
        x = torch.where(w, x - x.sum(1, keepdim=True) / cnt, zero)
        y = torch.where(w, y - y.sum(1, keepdim=True) / cnt, zero)
    num = (x * y).sum(1)
    den = torch.sqrt((x * x).sum(1) * (y * y).sum(1))
    out = num / den
    out = torch.where(den > 0, out, torch.full_like(out, math.nan))
    return out.clamp(-1.0, 1.0)


def correlate_rows(
    a: torch.Tensor,
    b: torch.Tensor,
    kind: str | Callable[[np.ndarray, np.ndarray], float] = "pearson",
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise correlation of ``a`` and ``b`` (N, K) over the ``valid`` entries (all when
    None): the one correlation kernel of the correlation metrics; :func:`pearson` and
    :func:`spearman` use the same row kernels (``_pearson_rows``, :func:`rank`).

    ``kind``: ``"pearson"``, ``"spearman"`` (Pearson of the average ranks, ties averaged, as
    ``scipy.stats.spearmanr``) or a callable ``f(a_row, b_row) -> float`` on two 1-D NumPy
    arrays (e.g. Quantus' ``correlation_kendall_tau``), called once per row on its valid
    entries (a user function forces that Python loop). Returns ``(corr, a_constant,
    b_constant)``: the masks flag the rows where a correlation is undefined (fewer than two
    valid entries count as constant ``a``); ``corr`` is NaN there and clipped to [-1, 1].
    """
    a = torch.as_tensor(a).to(torch.float64)
    b = torch.as_tensor(b, device=a.device).to(torch.float64)
    inf = torch.tensor(math.inf, dtype=torch.float64, device=a.device)
    if valid is None:
        a_const = a.amin(1) == a.amax(1)
        b_const = b.amin(1) == b.amax(1)
        a_const = a_const | (a.shape[1] < 2)
    else:
        valid = valid.to(a.device)
        a_const = torch.where(valid, a, inf).amin(1) == torch.where(valid, a, -inf).amax(1)
        b_const = torch.where(valid, b, inf).amin(1) == torch.where(valid, b, -inf).amax(1)
        a_const = a_const | (valid.sum(1) < 2)
    undefined = a_const | b_const
    if callable(kind):
        v_np = None if valid is None else valid.detach().cpu().numpy()
        a_np, b_np = a.detach().cpu().numpy(), b.detach().cpu().numpy()
        vals = np.full(a_np.shape[0], np.nan)
        for i in np.flatnonzero(~undefined.cpu().numpy()):
            ai, bi = (a_np[i], b_np[i]) if v_np is None else (a_np[i, v_np[i]], b_np[i, v_np[i]])
            vals[i] = float(np.asarray(kind(ai, bi)).reshape(-1)[0])
        corr = torch.from_numpy(vals).to(a.device)
    else:
        if kind == "spearman":
            a, b = rank(a, valid), rank(b, valid)
        elif kind != "pearson":
            raise ValueError(f"`kind` must be 'pearson', 'spearman' or a callable; got {kind!r}.")
        corr = _pearson_rows(a, b, valid).to(a.device)
    return corr.masked_fill(undefined, math.nan), a_const, b_const


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each flattened row pair; NaN where a row is constant."""
    a, b = _pair(a, b)
    return _pearson_rows(_flat(a), _flat(b))


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each flattened row pair (Pearson correlation of the
    average ranks, as ``scipy.stats.spearmanr``); NaN where a row is constant."""
    a, b = _pair(a, b)
    fa, fb = _flat(a), _flat(b)
    if fa.device.type == "cpu" and fa.shape[1]:
        out = _pearson_with_ranks_of(_centred_rows(rank(fa)), fb.detach().numpy())
    else:
        out = _pearson_rows(rank(fa), rank(fb))
    finite = finite_rows(fa) & finite_rows(fb)
    return torch.where(finite, out, torch.full_like(out, math.nan))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each flattened row pair; NaN where a row is all zero."""
    a, b = _pair(a, b)
    fa, fb = _flat(a), _flat(b)
    den = fa.norm(dim=1) * fb.norm(dim=1)
    out = (fa * fb).sum(1) / den
    return torch.where(den > 0, out.clamp(-1.0, 1.0), torch.full_like(out, math.nan))


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity (Quantus' ``cosine``, scipy's cosine distance)."""
    return 1.0 - cosine(a, b)


# ============================================================================ distances
def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared difference per row."""
    a, b = _pair(a, b)
    return (_flat(a) - _flat(b)).pow(2).mean(1)


def abs_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per row."""
    a, b = _pair(a, b)
    return (_flat(a) - _flat(b)).abs().mean(1)


def squared_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences per row."""
    a, b = _pair(a, b)
    return (_flat(a) - _flat(b)).pow(2).sum(1)


def euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L2 norm of the difference per row."""
    a, b = _pair(a, b)
    return (_flat(a) - _flat(b)).norm(dim=1)


def manhattan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 norm of the difference per row."""
    a, b = _pair(a, b)
    return (_flat(a) - _flat(b)).abs().sum(1)


# ============================================================================ SSIM
def _split_channels(a: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(N, ...) -> (N, C, *spatial) with C the channel count used for averaging.

    (N, D) is one channel of a 1-D signal; (N, C, *S) with 1 to 3 spatial axes keeps C.
    """
    if a.ndim == 2:
        return a.unsqueeze(1), 1
    if a.ndim in (3, 4, 5):
        return a, a.shape[1]
    raise ValueError(
        "SSIM and HOG need maps of shape (N, D), (N, C, T), (N, C, H, W) or (N, C, D, H, W); "
        f"got {tuple(a.shape)}."
    )


def _symmetric_pad(x: torch.Tensor, axis: int, r: int) -> torch.Tensor:
    """Pad ``r`` elements on both sides of ``axis`` by reflection including the edge
    (``scipy.ndimage`` mode ``"reflect"``, NumPy ``"symmetric"``)."""
    if r == 0:
        return x
    length = x.shape[axis]
    if r <= length:  # slices and a cat: no index tensor and no gather
        return torch.cat([x.narrow(axis, 0, r).flip(axis), x,
                          x.narrow(axis, length - r, r).flip(axis)], axis)
    # a pad wider than the axis reflects more than once: gather through periodic indices
    idx = torch.arange(length, device=x.device)
    left = _reflect_index(-r, 0, length, x.device)
    right = _reflect_index(length, length + r, length, x.device)
    return torch.index_select(x, axis, torch.cat([left, idx, right]))


def _reflect_index(start: int, stop: int, length: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(start, stop, device=device)
    period = 2 * length
    i = torch.remainder(i, period)
    return torch.where(i < length, i, period - 1 - i)


def _filter(x: torch.Tensor, kernel: torch.Tensor, n_spatial: int, *,
            first_padded: bool = False) -> torch.Tensor:
    """Separable filter of (M, *spatial) with a 1-D kernel along every spatial axis, edges
    handled by symmetric reflection (``scipy.ndimage`` ``mode="reflect"``); same shape out.
    ``first_padded``: ``x`` is already padded along the first spatial axis."""
    r = (kernel.numel() - 1) // 2
    out = x
    for axis in range(1, n_spatial + 1):
        padded = out if (first_padded and axis == 1) else _symmetric_pad(out, axis, r)
        moved = padded.movedim(axis, -1)
        shape = moved.shape
        if shape[-1] <= _BANDED_MAX:
            flat = moved.reshape(-1, shape[-1]) @ _banded(kernel, shape[-1])
        else:
            flat = F.conv1d(moved.reshape(-1, 1, shape[-1]), kernel.reshape(1, 1, -1))
        out = flat.reshape(*shape[:-1], flat.shape[-1]).movedim(-1, axis)
    return out


#: the longest padded axis filtered by a banded matrix product instead of ``conv1d``: a float64
#: ``conv1d`` of one channel takes torch's slow path, about 14x slower than the product for
#: 10,000 rows of 36 values (a table's maps), while the product's zeros add nothing and its
#: taps are summed in the same order (the same bits where this was measured); for longer axes
#: the product does most of its work on zeros and is no faster
_BANDED_MAX = 64


def _banded(kernel: torch.Tensor, length: int) -> torch.Tensor:
    """The (length, length - k + 1) matrix whose product with a row is the row's valid
    correlation with ``kernel`` (``conv1d``'s output)."""
    k = kernel.numel()
    out_len = length - k + 1
    rows = torch.arange(k, device=kernel.device)[:, None] + torch.arange(
        out_len, device=kernel.device)[None, :]
    band = torch.zeros((length, out_len), dtype=kernel.dtype, device=kernel.device)
    band[rows, torch.arange(out_len, device=kernel.device).expand(k, -1)] = kernel[:, None]
    return band


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    win_size: int | None = None,
    gaussian_weights: bool = False,
    sigma: float = 1.5,
    data_range: float | None = None,
    K1: float = 0.01,
    K2: float = 0.03,
    use_sample_covariance: bool = True,
) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004) of each pair of maps.

    Computes what ``skimage.metrics.structural_similarity`` computes for one pair (with
    ``channel_axis=0`` for multi-channel maps: the mean of the per-channel values), vectorised
    over the batch: local means, variances and covariance under a uniform ``win_size`` window
    (default 7) or a Gaussian window (``gaussian_weights=True``, ``sigma``, truncated at
    3.5 sigma: 11 taps at sigma 1.5), averaged over the positions at least a window radius away
    from the border. (N, C, H, W) maps give 2-D SSIM per channel, (N, D) and (N, C, T) give 1-D
    SSIM, (N, C, D, H, W) 3-D SSIM.

    ``data_range``: the dynamic range of the values. ``None`` (default) uses, per pair, the
    joint range max(a, b) - min(a, b) (Quantus' choice); pass a number to fix it. A pair of
    constant, equal maps has zero range: the constants then vanish and the SSIM is 1 (0 / 0
    cannot occur for equal maps; unequal constant maps give NaN).
    """
    a, b = _pair(a, b)
    xa, _ = _split_channels(a)
    xb, _ = _split_channels(b)
    n, c = xa.shape[:2]
    spatial = tuple(xa.shape[2:])
    n_spatial = len(spatial)
    if gaussian_weights:
        if sigma <= 0:
            raise ValueError(f"`sigma` must be > 0; got {sigma}.")
        r = int(3.5 * sigma + 0.5)
        if win_size is None:
            win_size = 2 * r + 1
        t = torch.arange(-r, r + 1, dtype=torch.float64, device=a.device)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel = kernel / kernel.sum()
    else:
        if win_size is None:
            win_size = 7
        kernel = torch.full((win_size,), 1.0 / win_size, dtype=torch.float64, device=a.device)
    if not isinstance(win_size, int) or win_size < 1 or win_size % 2 == 0:
        raise ValueError(f"`win_size` must be a positive odd int; got {win_size!r}.")
    if any(s < win_size for s in spatial):
        raise ValueError(
            f"`win_size` {win_size} exceeds the map extent {spatial}; pass a smaller odd "
            "win_size."
        )
    if data_range is None:
        fa, fb = _flat(a), _flat(b)
        hi = torch.maximum(fa.amax(1), fb.amax(1))
        lo = torch.minimum(fa.amin(1), fb.amin(1))
        rng = (hi - lo).reshape(n, 1, *([1] * n_spatial))
    else:
        rng = torch.full((n, 1, *([1] * n_spatial)), float(data_range), dtype=torch.float64,
                         device=a.device)
    n_points = win_size**n_spatial
    cov_norm = n_points / (n_points - 1) if use_sample_covariance and n_points > 1 else 1.0

    flat_a = xa.reshape(n * c, *spatial)
    flat_b = xb.reshape(n * c, *spatial)
    pad = (win_size - 1) // 2
    if a.device.type == "cpu" and _fma_chain_is_conv1d(tuple(kernel.tolist())):
        s = _ssim_map_cpu(flat_a, flat_b, kernel, rng, cov_norm, K1, K2).reshape(
            n, c, *(dim - 2 * pad for dim in spatial))
    else:
        s = _ssim_map_padded(flat_a, flat_b, kernel, rng, cov_norm, K1, K2, n, c)
    if a.device.type == "cpu":  # NumPy's row reduction of booleans is many times faster
        same = torch.from_numpy(
            np.equal(a.detach().numpy(), b.detach().numpy()).reshape(n, -1).all(1))
    else:
        same = (xa == xb).reshape(n, -1).all(1)
    per_channel = s.reshape(n, c, -1).mean(2)
    out = per_channel.mean(1)
    # identical maps are perfectly similar even when their range is 0 (0/0 above)
    return torch.where(same, torch.ones_like(out), out)


def _ssim_map_padded(flat_a: torch.Tensor, flat_b: torch.Tensor, kernel: torch.Tensor,
                     rng: torch.Tensor, cov_norm: float, K1: float, K2: float, n: int,
                     c: int) -> torch.Tensor:
    """:func:`ssim`'s per-position values (N, C, *valid) off the CPU: the five maps filtered
    over their reflection-padded extent (``conv1d`` or a banded product), then cropped."""
    spatial = tuple(flat_a.shape[1:])
    n_spatial = len(spatial)
    win_size = kernel.numel()
    # the five filtered maps are written into one buffer already padded along the first
    # spatial axis (no stack and no padding copy; the same values)
    r = (kernel.numel() - 1) // 2
    length = spatial[0]
    if r <= length:
        stacked = torch.empty((5, n * c, length + 2 * r, *spatial[1:]), dtype=flat_a.dtype,
                              device=flat_a.device)
        mid = stacked.narrow(2, r, length)
        mid[0] = flat_a
        mid[1] = flat_b
        torch.mul(flat_a, flat_a, out=mid[2])
        torch.mul(flat_b, flat_b, out=mid[3])
        torch.mul(flat_a, flat_b, out=mid[4])
        if r:
            stacked.narrow(2, 0, r).copy_(mid.narrow(2, 0, r).flip(2))
            stacked.narrow(2, r + length, r).copy_(mid.narrow(2, length - r, r).flip(2))
        filt = _filter(stacked.reshape(5 * n * c, *stacked.shape[2:]), kernel, n_spatial,
                       first_padded=True)
    else:
        stacked = torch.stack([flat_a, flat_b, flat_a * flat_a, flat_b * flat_b,
                               flat_a * flat_b])
        filt = _filter(stacked.reshape(5 * n * c, *spatial), kernel, n_spatial)
    pad = (win_size - 1) // 2
    crop = (slice(None), slice(None), *(slice(pad, dim - pad) for dim in spatial))
    # only the positions a window radius from the border enter the mean: the element-wise
    # terms below are computed there only
    ux, uy, uxx, uyy, uxy = (f[crop] for f in filt.reshape(5, n, c, *spatial).unbind(0))
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (K1 * rng) ** 2
    c2 = (K2 * rng) ** 2
    num = (2 * ux * uy + c1) * (2 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    return num / den


@functools.lru_cache(maxsize=64)
def _fma_chain_is_conv1d(taps: tuple[float, ...]) -> bool:
    """Whether, on this machine, ``add_`` with ``alpha`` chains to the bits of a float64
    ``conv1d`` with these taps (both fused multiply-adds in tap order, as with MKL on x86-64):
    checked once per window on a few long rows (the tap-by-tap form is used only on axes too
    long for the banded product); where they differ the CPU keeps the padded path
    (:func:`_ssim_map_padded`)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((8, 4 * _BANDED_MAX + len(taps)), generator=gen, dtype=torch.float64) * 3
    kernel = torch.tensor(taps, dtype=torch.float64)
    conv = F.conv1d(x[:, None], kernel.reshape(1, 1, -1))[:, 0]
    return torch.equal(_valid_filter(x, 1, kernel, list(taps)), conv)


def _valid_filter(x: torch.Tensor, axis: int, kernel: torch.Tensor, taps: list[float]
                  ) -> torch.Tensor:
    """The correlation of ``x`` with ``kernel`` along ``axis`` at the positions whose window
    lies inside the axis (``len(taps) - 1`` fewer), computed as :func:`_filter` computes
    them: an axis short enough for the banded product is reflection-padded and multiplied as
    there (the product's shape decides its kernel, hence its bits), then cropped; a longer axis
    is filtered tap by tap with the fused multiply-add chain ``conv1d`` computes
    (``acc = x_0 w_0``, then ``acc = fma(x_t, w_t, acc)``, which is ``add_`` with ``alpha``),
    without padding: the valid windows never reach it."""
    length = x.shape[axis]
    r = (len(taps) - 1) // 2
    if length + 2 * r <= _BANDED_MAX:
        moved = _symmetric_pad(x, axis, r).movedim(axis, -1)
        flat = moved.reshape(-1, length + 2 * r) @ _banded(kernel, length + 2 * r)
        flat = flat[:, r:length - r]
        return flat.reshape(*moved.shape[:-1], length - 2 * r).movedim(-1, axis)
    out_len = length - len(taps) + 1
    acc = x.narrow(axis, 0, out_len) * taps[0]
    for t in range(1, len(taps)):
        acc.add_(x.narrow(axis, t, out_len), alpha=taps[t])
    return acc


#: map values per chunk of :func:`_ssim_map_cpu` (about 256 KiB of float64 per map): the five
#: maps of a chunk and their terms stay in the core's cache through the filter's passes
_SSIM_CHUNK = 32768
#: the same where an axis is filtered tap by tap (too long for the banded product): each of
#: the filter's seven passes then reads the five maps and writes its output, and with the
#: chunk above (about 2.6 MiB in all) these spill a core's 2 MiB L2, so each pass runs about
#: twice as slowly; half as many values fit (W5's 64 x 500 maps: 2.05 -> 1.73 ms a call,
#: measured interleaved), while the banded product's chunks keep the larger size (their
#: per-chunk steps cost more: W4's 2,000 x 30 maps take 3.7 ms in chunks of 32,768, 4.7 ms in
#: chunks of 16,384)
_SSIM_CHUNK_CHAINED = 16384


def _ssim_map_cpu(flat_a: torch.Tensor, flat_b: torch.Tensor, kernel: torch.Tensor,
                  rng: torch.Tensor, cov_norm: float, K1: float, K2: float) -> torch.Tensor:
    """:func:`ssim`'s per-position values (N x C, *valid) on the CPU: the numbers of
    :func:`_ssim_map_padded` with less work. Only the positions a window radius from the
    border enter the mean, and their windows never reach the padding, so the five maps are
    filtered at those positions only (:func:`_valid_filter`, the same bits as
    :func:`_filter`), and the formula runs in place (the same operations in the same order),
    in chunks of rows small enough that a chunk's maps stay in the core's cache through the
    filter's passes (each tap of a long axis is one pass)."""
    m = flat_a.shape[0]
    spatial = flat_a.shape[1:]
    taps = kernel.tolist()
    valid = tuple(dim - len(taps) + 1 for dim in spatial)
    rng = rng.reshape(-1, *([1] * len(spatial)))
    c = m // rng.shape[0]
    if c > 1:  # one range per sample, for each of its channels
        rng = rng.repeat_interleave(c, 0)
    c1_all = (K1 * rng) ** 2
    c2_all = (K2 * rng) ** 2
    out = torch.empty((m, *valid), dtype=flat_a.dtype)
    chained = any(dim + len(taps) - 1 > _BANDED_MAX for dim in spatial)
    step = max(1, (_SSIM_CHUNK_CHAINED if chained else _SSIM_CHUNK) // max(1, flat_a[0].numel()))
    for start in range(0, m, step):
        stop = min(m, start + step)
        xa, xb = flat_a[start:stop], flat_b[start:stop]
        rows = stop - start
        stacked = torch.empty((5, rows, *spatial), dtype=flat_a.dtype)
        stacked[0] = xa
        stacked[1] = xb
        torch.mul(xa, xa, out=stacked[2])
        torch.mul(xb, xb, out=stacked[3])
        torch.mul(xa, xb, out=stacked[4])
        filt = stacked.reshape(5 * rows, *spatial)
        for axis in range(1, filt.ndim):
            filt = _valid_filter(filt, axis, kernel, taps)
        ux, uy, uxx, uyy, uxy = filt.reshape(5, rows, *valid).unbind(0)
        c1, c2 = c1_all[start:stop], c2_all[start:stop]
        ux_ux = ux * ux
        uy_uy = uy * uy
        # in the filter's output (a fresh array of this chunk): the same values, fewer arrays
        vx = uxx.sub_(ux_ux).mul_(cov_norm)
        vy = uyy.sub_(uy_uy).mul_(cov_norm)
        vxy = uxy.sub_(ux * uy).mul_(cov_norm)
        num = (2 * ux).mul_(uy).add_(c1).mul_(vxy.mul_(2).add_(c2))
        den = ux_ux.add_(uy_uy).add_(c1).mul_(vx.add_(vy).add_(c2))
        torch.div(num, den, out=out[start:stop])
    return out


# ============================================================================ HOG
def hog_features(
    a: torch.Tensor,
    *,
    orientations: int = 9,
    pixels_per_cell: int | tuple[int, int] = 8,
    cells_per_block: int | tuple[int, int] = 3,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Histogram-of-oriented-gradients descriptors of (N, C, H, W) or (N, H, W) maps, (N, F).

    The same features as ``skimage.feature.hog(image, orientations, pixels_per_cell,
    cells_per_block, block_norm="L2-Hys")`` per map (with ``channel_axis`` for C > 1: at each
    pixel the channel with the largest gradient magnitude), vectorised over the batch: central
    differences (zero at the border), unsigned orientations in [0, 180) hard-binned, the mean
    magnitude per bin and cell, and L2-Hys normalisation of overlapping blocks of cells.
    """
    a = torch.as_tensor(a).to(torch.float64)
    if a.ndim == 3:
        a = a.unsqueeze(1)
    if a.ndim != 4:
        raise ValueError(f"HOG needs (N, C, H, W) or (N, H, W) maps; got {tuple(a.shape)}.")
    cr, cc = (pixels_per_cell, pixels_per_cell) if isinstance(pixels_per_cell, int) \
        else tuple(pixels_per_cell)
    br, bc = (cells_per_block, cells_per_block) if isinstance(cells_per_block, int) \
        else tuple(cells_per_block)
    n, _, h, w = a.shape
    n_cells_r, n_cells_c = h // cr, w // cc
    n_blocks_r, n_blocks_c = n_cells_r - br + 1, n_cells_c - bc + 1
    if n_blocks_r <= 0 or n_blocks_c <= 0:
        raise ValueError(
            f"Maps of {h}x{w} are too small for HOG with pixels_per_cell=({cr}, {cc}) and "
            f"cells_per_block=({br}, {bc}): they need at least {br * cr}x{bc * cc}."
        )
    g_row = torch.zeros_like(a)
    g_col = torch.zeros_like(a)
    g_row[:, :, 1:-1, :] = a[:, :, 2:, :] - a[:, :, :-2, :]
    g_col[:, :, :, 1:-1] = a[:, :, :, 2:] - a[:, :, :, :-2]
    if a.shape[1] > 1:
        mag_all = torch.hypot(g_row, g_col)
        pick = mag_all.argmax(1, keepdim=True)
        g_row = g_row.gather(1, pick)
        g_col = g_col.gather(1, pick)
    g_row, g_col = g_row[:, 0], g_col[:, 0]
    mag = torch.hypot(g_col, g_row)
    ori = torch.remainder(torch.rad2deg(torch.atan2(g_row, g_col)), 180.0)
    width = 180.0 / orientations
    bins = torch.floor(ori / width).clamp(0, orientations - 1).to(torch.int64)
    # cells: only the top-left n_cells * cell_size region counts (as skimage)
    mag = mag[:, : n_cells_r * cr, : n_cells_c * cc]
    bins = bins[:, : n_cells_r * cr, : n_cells_c * cc]
    cell_r = torch.arange(n_cells_r * cr, device=a.device) // cr
    cell_c = torch.arange(n_cells_c * cc, device=a.device) // cc
    cell = (cell_r[:, None] * n_cells_c + cell_c[None, :]).reshape(1, -1)
    index = cell * orientations + bins.reshape(n, -1)
    hist = torch.zeros((n, n_cells_r * n_cells_c * orientations), dtype=torch.float64,
                       device=a.device)
    hist = hist.scatter_add(1, index, mag.reshape(n, -1)) / (cr * cc)
    hist = hist.reshape(n, n_cells_r, n_cells_c, orientations)
    blocks = hist.unfold(1, br, 1).unfold(2, bc, 1)  # (N, nbr, nbc, O, br, bc)
    blocks = blocks.permute(0, 1, 2, 4, 5, 3)  # (N, nbr, nbc, br, bc, O)
    flat = blocks.reshape(n, n_blocks_r, n_blocks_c, -1)
    out = flat / torch.sqrt((flat * flat).sum(-1, keepdim=True) + eps**2)
    out = out.clamp(max=0.2)
    out = out / torch.sqrt((out * out).sum(-1, keepdim=True) + eps**2)
    return out.reshape(n, -1)


def hog(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    orientations: int = 9,
    pixels_per_cell: int | tuple[int, int] = 8,
    cells_per_block: int | tuple[int, int] = 3,
) -> torch.Tensor:
    """Pearson correlation of the HOG descriptors (:func:`hog_features`) of each pair of
    (N, C, H, W) maps: the structural similarity measure of Adebayo et al. (2018). Maps
    smaller than one block (24x24 at the defaults) need smaller ``pixels_per_cell``."""
    a, b = _pair(a, b)
    kw = dict(orientations=orientations, pixels_per_cell=pixels_per_cell,
              cells_per_block=cells_per_block)
    return _pearson_rows(hog_features(a, **kw), hog_features(b, **kw))


# ============================================================================ registry
@dataclass(frozen=True)
class SimilarityInfo:
    """A registered similarity: ``kind`` is ``"similarity"`` (higher = more alike) or
    ``"distance"`` (lower = more alike); ``range`` the values it can take."""

    name: str
    fn: SimilarityFn
    kind: str = "similarity"
    range: tuple[float, float] = (-1.0, 1.0)
    description: str = ""


_SIMILARITIES: dict[str, SimilarityInfo] = {}
_ALIASES: dict[str, str] = {}


def register_similarity(
    name: str,
    fn: SimilarityFn | None = None,
    *,
    kind: str = "similarity",
    range: tuple[float, float] = (-math.inf, math.inf),
    aliases: tuple[str, ...] = (),
    description: str = "",
    overwrite: bool = False,
) -> Any:
    """Register ``fn(a, b) -> (N,)`` under ``name`` (usable as a decorator without ``fn``).

    ``kind``: ``"similarity"`` or ``"distance"``; ``range``: the values it can take.
    """
    if kind not in ("similarity", "distance"):
        raise ValueError(f"`kind` must be 'similarity' or 'distance'; got {kind!r}.")

    def decorate(f: SimilarityFn) -> SimilarityFn:
        if not callable(f):
            raise TypeError("A similarity function must be callable: f(a, b) -> (N,).")
        if not overwrite and (name in _SIMILARITIES or name.lower() in _ALIASES):
            raise ValueError(f"A similarity named {name!r} is already registered.")
        _SIMILARITIES[name] = SimilarityInfo(name, f, kind, range,
                                             description or (f.__doc__ or "").split("\n")[0])
        for alias in aliases:
            _ALIASES[alias.lower()] = name
        return f

    return decorate(fn) if fn is not None else decorate


def similarity_info(name: str) -> SimilarityInfo:
    """The :class:`SimilarityInfo` registered under ``name`` (case-insensitive; Quantus names
    such as ``"correlation_spearman"`` resolve)."""
    if not isinstance(name, str):
        raise TypeError(f"Similarity names are strings; got {type(name).__name__}.")
    if name in _SIMILARITIES:
        return _SIMILARITIES[name]
    lower = {k.lower(): k for k in _SIMILARITIES}
    key = name.lower()
    if key in lower:
        return _SIMILARITIES[lower[key]]
    if key in _ALIASES:
        return _SIMILARITIES[_ALIASES[key]]
    close = difflib.get_close_matches(name, list(_SIMILARITIES), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"Unknown similarity function {name!r}.{hint} "
                     f"Available: {', '.join(sorted(_SIMILARITIES))}.")


def get_similarity(spec: str | SimilarityFn) -> SimilarityFn:
    """Resolve a name (see the module table) or return a callable unchanged."""
    if callable(spec):
        return spec
    return similarity_info(spec).fn


def list_similarities() -> list[SimilarityInfo]:
    """Every registered similarity, sorted by name."""
    return [_SIMILARITIES[k] for k in sorted(_SIMILARITIES)]


def numpy_similarity(fn: Callable[..., Any], **kwargs: Any) -> SimilarityFn:
    """Adapt a Quantus-style ``fn(a, b, batched=True, **kwargs)`` on NumPy (N, D) arrays (one
    flattened row per sample) to the evalkit convention (tensors in, (N,) tensor out)."""

    def adapted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = _pair(a, b)
        out = fn(_flat(a).cpu().numpy(), _flat(b).cpu().numpy(), batched=True, **kwargs)
        return torch.as_tensor(np.asarray(out, dtype=np.float64).reshape(-1), device=a.device)

    adapted.__name__ = getattr(fn, "__name__", "numpy_similarity")
    return adapted


def undefined_reason(
    a: torch.Tensor, b: torch.Tensor, func: str | SimilarityFn
) -> list[str | None]:
    """Why each row's similarity is undefined (None where it is defined or the reason is not
    known): constant maps for correlations, all-zero maps for cosine."""
    name = func if isinstance(func, str) else getattr(func, "__name__", "")
    try:
        name = similarity_info(name).name if name else ""
    except ValueError:
        name = ""
    fa = _flat(torch.as_tensor(a))
    fb = _flat(torch.as_tensor(b))
    reasons: list[str | None] = [None] * fa.shape[0]
    finite = (finite_rows(fa) & finite_rows(fb)).tolist()
    for i, ok in enumerate(finite):
        if not ok:
            reasons[i] = "an explanation contains NaN or Inf"
    if name in ("spearman", "pearson", "hog"):
        const_a = (fa == fa[:, :1]).all(1).tolist()
        const_b = (fb == fb[:, :1]).all(1).tolist()
        for i, (ca, cb) in enumerate(zip(const_a, const_b, strict=True)):
            if reasons[i] is not None:
                continue
            if ca and cb:
                reasons[i] = "both explanations are constant (correlation undefined)"
            elif ca:
                reasons[i] = "the first explanation is constant (correlation undefined)"
            elif cb:
                reasons[i] = "the second explanation is constant (correlation undefined)"
    elif name in ("cosine", "cosine_distance"):
        za = (fa == 0).all(1).tolist()
        zb = (fb == 0).all(1).tolist()
        for i, (ca, cb) in enumerate(zip(za, zb, strict=True)):
            if (ca or cb) and reasons[i] is None:
                reasons[i] = "an explanation is all zero (cosine undefined)"
    return reasons


register_similarity("spearman", spearman, range=(-1.0, 1.0),
                    aliases=("correlation_spearman", "spearmanr"))
register_similarity("pearson", pearson, range=(-1.0, 1.0),
                    aliases=("correlation_pearson", "pearsonr"))
register_similarity("cosine", cosine, range=(-1.0, 1.0), aliases=("cosine_similarity",))
register_similarity("ssim", ssim, range=(-1.0, 1.0), aliases=("structural_similarity",))
register_similarity("hog", hog, range=(-1.0, 1.0), aliases=("hog_pearson",))
register_similarity("mse", mse, kind="distance", range=(0.0, math.inf))
register_similarity("abs_difference", abs_difference, kind="distance", range=(0.0, math.inf))
register_similarity("squared_difference", squared_difference, kind="distance",
                    range=(0.0, math.inf))
register_similarity("euclidean", euclidean, kind="distance", range=(0.0, math.inf),
                    aliases=("distance_euclidean",))
register_similarity("manhattan", manhattan, kind="distance", range=(0.0, math.inf),
                    aliases=("distance_manhattan",))
register_similarity("cosine_distance", cosine_distance, kind="distance", range=(0.0, 2.0))
