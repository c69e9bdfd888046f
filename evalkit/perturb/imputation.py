"""Mask-dependent imputers: noisy linear imputation for ROAD (Rong, Leemann et al., ICML 2022)
on images (:class:`NoisyLinearImputer`) and series (:class:`SeriesLinearImputer`), and imputers
defined for tables (:class:`MarginalMeanImputer`, :class:`ConditionalMeanImputer`,
:class:`KNNImputer`; see "Tables" below), and :class:`GaussianReplacement` (keyed Gaussian
noise as a baseline: the replacement of Turbé et al.'s time-series masking metric).

:class:`NoisyLinearImputer` replaces every removed pixel by the weighted mean of its 8
neighbours (weight 1/6 for the 4 orthogonal neighbours, 1/12 for the 4 diagonal ones; they sum
to 1), where neighbours that are themselves removed are unknowns too. That is a sparse linear
system per image (discrete harmonic in-painting with the kept pixels as boundary values), solved
exactly for all channels at once; Gaussian noise ``N(0, noise**2)`` is then added to the imputed
values so that the imputation is harder to detect.

Equation of a removed pixel u (in-bounds neighbours n with weights w_n, S_u their total weight):
``S_u v_u - sum_{n removed} w_n v_n = sum_{n kept} w_n x_n``. The matrix is symmetric and, as
long as at least one pixel of the image is kept, positive definite.

Batching: the images of a call are solved together as block-diagonal systems, built with
vectorised NumPy (no per-image or per-pixel Python loop): small images as one banded Cholesky
(LAPACK ``pbsv``) per group of images of similar bandwidth, larger ones as one sparse LU
(SuperLU, nested-dissection order) per block of at most ``max_unknowns`` unknowns. The solve
runs on the CPU (scipy has no GPU or batched sparse solver); inputs on another device are
copied there and back. The noise is drawn from the rows' random keys (:mod:`evalkit._rng`), one
field per distinct key, so a sample gets the same noise field whatever the batch.

Series
------
:class:`SeriesLinearImputer` is the 1-D analogue of the same equations: a removed time step has
two neighbours (weight 1/2 each; one at either end of the series), so the harmonic solution is
the straight line between the nearest kept steps before and after it, and a run of removed
steps at either end takes the value of the nearest kept step. It is computed in closed form
(two cumulative scans over time, no solve), per channel, with the same ``N(0, noise**2)`` noise
on the imputed values.

Tables
------
Tables have no neighbourhood structure; a removed column is estimated from other *rows*, the
**background**: a user-given reference set (``reference=``, e.g. training rows), or, with
``reference=None``, the batch being scored with the row itself left out (every background row
equal to the imputed row is left out, duplicates included, so a row never imputes its own
removed values). An unbound imputer with ``reference=None`` has no background; a metric binds
it to its batch with :meth:`TableImputer.with_background` (ROAD does). With the batch as
background a sample's imputation depends on the other samples, so a metric using it is
set-level (``ROAD(background="batch")`` says so); with a fixed reference it is per sample.

* :class:`MarginalMeanImputer`: each removed column becomes the background's column mean.
* :class:`ConditionalMeanImputer`: the mean of the removed columns given the kept ones under a
  Gaussian fitted to the background (mean mu, covariance Sigma, plus a small ridge):
  ``x_R = mu_R + Sigma_RK Sigma_KK^-1 (x_K - mu_K)``; one batched Cholesky solve per chunk.
* :class:`KNNImputer`: the mean of the removed columns over the ``k`` background rows nearest
  to the row on its kept columns (Euclidean distance of the columns standardised by the
  background's standard deviations); ties by background order.

All three are deterministic functions of the row, its mask and the background; with
``noise > 0`` they add ``N(0, (noise * sd_j)**2)`` noise to an imputed column j (sd_j the
background's standard deviation of that column: columns have their own scales), drawn from the
rows' keys like the image imputer's.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from typing import Any

import numpy as np
import torch

from .. import _rng
from .baselines import Baseline, Imputer

__all__ = [
    "NEIGHBOUR_WEIGHTS",
    "ConditionalMeanImputer",
    "GaussianReplacement",
    "KNNImputer",
    "MarginalMeanImputer",
    "NoisyLinearImputer",
    "SeriesLinearImputer",
    "TableImputer",
    "linear_imputation",
    "linear_interpolation_1d",
]

#: (row offset, column offset, weight) of the 8 neighbours
NEIGHBOUR_WEIGHTS: tuple[tuple[int, int, float], ...] = (
    (0, 1, 1 / 6), (0, -1, 1 / 6), (1, 0, 1 / 6), (-1, 0, 1 / 6),
    (1, 1, 1 / 12), (1, -1, 1 / 12), (-1, 1, 1 / 12), (-1, -1, 1 / 12),
)


class NoisyLinearImputer(Imputer):
    """ROAD's noisy linear imputation (see the module docstring).

    Parameters
    ----------
    noise:
        Standard deviation of the Gaussian noise added to the imputed values, in input units
        (0.01 in the ROAD paper, Quantus and pytorch-grad-cam). 0 gives the exact linear
        imputation (deterministic).
    max_unknowns:
        The largest block-diagonal system solved in one call (bounds memory).

    ``fill(x, mask, keys)`` takes images (B, C, H, W) and a mask broadcastable to them. A mask
    with one channel (or identical channels) removes whole pixels, and all channels are
    solved together; a mask that differs between channels is solved per channel.
    """

    def __init__(self, noise: float = 0.01, *, max_unknowns: int = 400_000) -> None:
        if isinstance(noise, bool) or not isinstance(noise, int | float) or noise < 0:
            raise ValueError(f"`noise` must be a number >= 0; got {noise!r}.")
        if not isinstance(max_unknowns, int) or max_unknowns < 1:
            raise ValueError(f"`max_unknowns` must be a positive integer; got {max_unknowns!r}.")
        self.noise = float(noise)
        self.max_unknowns = max_unknowns
        self.stochastic = self.noise > 0

    def cache_token(self) -> bytes:
        # the output depends only on ``noise`` (``max_unknowns`` bounds memory, not values), so
        # equal instances share forward passes
        return f"NoisyLinearImputer(noise={self.noise!r})".encode()

    def fill(
        self, x: torch.Tensor, mask: torch.Tensor, *, keys: torch.Tensor | None = None
    ) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(
                f"NoisyLinearImputer needs images (B, C, H, W); got shape {tuple(x.shape)}."
            )
        mask = mask.to(torch.bool)
        if mask.ndim != 4:
            raise ValueError(f"The mask must have 4 axes like x; got {tuple(mask.shape)}.")
        b, c, h, w = x.shape
        mask = mask.expand(b, mask.shape[1], h, w)
        if mask.shape[1] != 1 and not bool((mask == mask[:, :1]).all()):
            # channel-specific masks: one system per (image, channel)
            xs = x.reshape(b * c, 1, h, w)
            ms = mask.expand(b, c, h, w).reshape(b * c, 1, h, w)
            out = linear_imputation(xs, ms[:, 0], max_unknowns=self.max_unknowns)
            out = out.reshape(b, c, h, w)
            pix = mask.expand(b, c, h, w)
        else:
            pix2d = mask[:, 0]
            out = linear_imputation(x, pix2d, max_unknowns=self.max_unknowns)
            pix = pix2d.unsqueeze(1).expand(b, c, h, w)
        if self.noise > 0:
            if keys is None:
                raise ValueError("NoisyLinearImputer with noise > 0 needs per-row random keys.")
            uniq, inverse = torch.unique(keys, return_inverse=True)
            fields = _rng.normal(uniq, (c, h, w), std=self.noise, dtype=out.dtype,
                                 stream=0x90AD)
            out = torch.where(pix, out + fields[inverse], out)
        return out


def linear_imputation(x: torch.Tensor, mask: torch.Tensor, *,
                      max_unknowns: int = 400_000) -> torch.Tensor:
    """Exact (noise-free) linear imputation of the pixels ``mask`` (B, H, W) of ``x``
    (B, C, H, W); see :class:`NoisyLinearImputer`. Returns a new tensor like ``x``.

    Small images (the shorter side at most ``BAND_LIMIT`` pixels) are solved with banded
    Cholesky (LAPACK ``pbsv``) on the unknowns only, ordered along the shorter side so that the
    bandwidth is at most that side + 1, one call per group of images (see
    :func:`_solve_banded`): the cheapest exact route for many small systems. Larger images use
    one sparse LU (SuperLU, nested-dissection order) per block of images, whose fill grows far
    slower than a band. An image with every pixel removed has no boundary values; its pixels
    become 0 (the system would be singular). The removed pixels' values are not read: a NaN or
    inf there does not change the result.
    """
    b, _c, h, w = x.shape
    m = mask.detach().to("cpu").numpy().astype(bool, copy=False)
    if m.shape != (b, h, w):
        raise ValueError(f"mask must have shape {(b, h, w)}; got {m.shape}.")
    xv = x.detach().to("cpu", torch.float64).numpy()
    # row-major order couples pixels one row apart: the band is a row (+1) wide, so rows
    # run along the shorter side
    transpose = h < w
    if transpose:
        xv = xv.transpose(0, 1, 3, 2)
        m = m.transpose(0, 2, 1)
    xv = np.ascontiguousarray(xv)
    m = np.ascontiguousarray(m)
    counts = m.reshape(b, -1).sum(1)
    full = counts == m.shape[1] * m.shape[2]
    out = xv.copy()
    if full.any():
        out[full] = 0.0
    todo = np.flatnonzero((counts > 0) & ~full)
    if todo.size:
        with _single_blas_thread():
            if min(h, w) <= BAND_LIMIT:
                # a bounded number of pixels at a time: the systems' float64 work arrays then
                # stay small enough to be reused from the heap and the caches (one call over
                # thousands of small images spent more time in fresh memory than in LAPACK)
                step = max(1, BAND_GROUP_PIXELS // (h * w))
                for start in range(0, todo.size, step):
                    part = todo[start : start + step]
                    out[part] = _solve_banded(xv[part], m[part])
            else:
                _solve_sparse(xv, m, out, todo, counts, max_unknowns)
    if transpose:
        out = out.transpose(0, 1, 3, 2)
    return torch.from_numpy(np.ascontiguousarray(out)).to(device=x.device, dtype=x.dtype)


#: pixels (images x H x W) per :func:`_solve_banded` call
BAND_GROUP_PIXELS = 1 << 17

#: images whose shorter side is at most this are solved with banded Cholesky. The two routes
#: break even near 160 x 160 on ROAD-like masks; at 224 x 224 (W2's removal masks) the sparse
#: LU is 1.15x faster, at 384 x 384 2x, and the band matrix keeps growing with the cube of the
#: side
BAND_LIMIT = 160


#: LAPACK's banded Cholesky switches to its blocked, multi-threaded BLAS form from this
#: bandwidth on (ILAENV's block size for DPBTRF)
BLOCKED_KD = 32

_CONTROLLER: object | None = None


def _blas_controller():
    """A cached ``threadpoolctl.ThreadpoolController`` (False if threadpoolctl is missing).

    Building a controller inspects every loaded library (milliseconds); limiting through a
    cached one costs microseconds."""
    global _CONTROLLER
    if _CONTROLLER is None:
        try:
            from scipy.linalg import lapack  # noqa: F401  (load scipy's BLAS before inspecting)
            from threadpoolctl import ThreadpoolController

            _CONTROLLER = ThreadpoolController()
        except Exception:  # threadpoolctl is optional
            _CONTROLLER = False
    return _CONTROLLER


class _single_blas_thread:
    """Limit BLAS to one thread (when threadpoolctl is installed). Blocked band factorisations
    gain nothing from threads on these sizes, and on a busy machine OpenBLAS' spinning threads
    made them ten times slower."""

    def __enter__(self):
        ctrl = _blas_controller()
        self._ctx = ctrl.limit(limits=1, user_api="blas") if ctrl else None
        if self._ctx is not None:
            self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


def _system(xv: np.ndarray, m: np.ndarray):
    """Diagonal (H*W,), right-hand sides (S, C, H*W) and the (pixel j, pixel j + d, weight)
    couplings (d > 0) of the unknowns of each image, over the flattened pixels. The removed
    pixels' own values take no part (a NaN or inf there does not reach its neighbours)."""
    s, c, h, w = xv.shape
    known = np.where(m[:, None], 0.0, xv)  # not xv * ~m: a removed NaN times 0 is NaN
    rhs = np.zeros((s, c, h, w))
    diag = np.zeros((h, w))
    couplings = []
    n = h * w
    r, col = np.divmod(np.arange(n), w)
    for dr, dc, wt in NEIGHBOUR_WEIGHTS:
        # pixels (r, c) whose neighbour (r + dr, c + dc) is in bounds: shifted slices, no
        # fancy indexing over the (S, C, H, W) block
        tr = slice(max(0, -dr), h - max(0, dr))
        tc = slice(max(0, -dc), w - max(0, dc))
        sr = slice(max(0, dr), h - max(0, -dr))
        sc = slice(max(0, dc), w - max(0, -dc))
        rhs[:, :, tr, tc] += wt * known[:, :, sr, sc]
        diag[tr, tc] += wt
        if dr * w + dc > 0:
            rr, cc = r + dr, col + dc
            j = np.flatnonzero((rr >= 0) & (rr < h) & (cc >= 0) & (cc < w))
            couplings.append((j, rr[j] * w + cc[j], wt))
    return diag.reshape(n), rhs.reshape(s, c, n), couplings


#: the most band-matrix bytes one banded solve may use (images are solved in groups below it)
BAND_BYTES = 64 * 2**20


def _solve_banded(xv: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Banded Cholesky solves of many images with no Python loop over the images.

    The block-diagonal matrix of several images' banded systems is itself banded (no coupling
    between blocks), so one LAPACK ``pbsv`` call solves a whole group of images. The cost of a
    band solve grows with the square of its bandwidth, which is each image's own largest offset
    between coupled unknowns (few removed pixels: a narrow band); images are therefore sorted
    by bandwidth and grouped with images of similar bandwidth.
    """
    s, c, h, w = xv.shape
    n = h * w
    mf = m.reshape(s, n)
    diag, rhs, couplings = _system(xv, m)
    cum = np.cumsum(mf, 1)
    kd = np.zeros(s, dtype=np.int64)
    for j, nb, _wt in couplings:
        off = np.where(mf[:, j] & mf[:, nb], cum[:, nb] - cum[:, j], 0)
        kd = np.maximum(kd, off.max(1, initial=0))  # a 1-pixel-wide image has no partner
    nu = mf.sum(1)
    order = np.argsort(kd, kind="stable")
    out = xv.reshape(s, c, n).copy()
    start = 0
    while start < s:
        stop = start + 1
        total = int(nu[order[start]])
        base_kd = int(kd[order[start]])
        while stop < s:
            k_next = int(kd[order[stop]])
            grown = total + int(nu[order[stop]])
            if k_next > 1.25 * base_kd + 2 or grown * (k_next + 1) * 8 > BAND_BYTES:
                break
            total = grown
            stop += 1
        group = order[start:stop]
        if int(kd[group[-1]]) >= BLOCKED_KD and not _blas_controller():
            # without threadpoolctl BLAS threads cannot be limited: sparse LU instead
            out[group] = _solve_block(xv[group], m[group]).reshape(len(group), c, n)
        else:
            _solve_band_group(group, mf, diag, rhs, couplings, out)
        start = stop
    return out.reshape(s, c, h, w)


def _solve_band_group(idx: np.ndarray, mf: np.ndarray, diag: np.ndarray, rhs: np.ndarray,
                      couplings: list, out: np.ndarray) -> None:
    """One ``pbsv`` call for the images ``idx``; writes the solution into ``out`` (S, C, n)."""
    from scipy.linalg import lapack

    sub = mf[idx]
    g, n = sub.shape
    gid = (np.cumsum(sub.reshape(-1)) - 1).reshape(g, n)  # global index of each unknown
    si, pix = np.nonzero(sub)  # all unknowns, in global order
    u = si.shape[0]
    rows = []
    kd = 0
    for j, nb, wt in couplings:
        ss, k = np.nonzero(sub[:, j] & sub[:, nb])
        if ss.size:
            a = gid[ss, j[k]]
            off = gid[ss, nb[k]] - a
            rows.append((a, off, wt))
            kd = max(kd, int(off.max()))
    ab = np.zeros((kd + 1, u), order="F")
    ab[0] = diag[pix]
    for a, off, wt in rows:
        ab[off, a] = -wt
    b_all = np.asfortranarray(rhs[idx[si], :, pix])  # (U, C)
    _, sol, info = lapack.dpbsv(ab, b_all, lower=1, overwrite_ab=1, overwrite_b=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"Linear imputation system is singular (info={info}).")
    out[idx[si], :, pix] = sol


def _solve_sparse(xv: np.ndarray, m: np.ndarray, out: np.ndarray, todo: np.ndarray,
                  counts: np.ndarray, max_unknowns: int) -> None:
    start = 0
    while start < len(todo):
        total = 0
        stop = start
        while stop < len(todo) and (stop == start or total + counts[todo[stop]] <= max_unknowns):
            total += counts[todo[stop]]
            stop += 1
        sel = todo[start:stop]
        out[sel] = _solve_block(xv[sel], m[sel])
        start = stop


#: the largest rectangle a nested dissection keeps whole
ND_LEAF_PIXELS = 16


@functools.lru_cache(maxsize=8)
def _nd_rank(h: int, w: int) -> np.ndarray:
    """Each pixel's position in a geometric nested-dissection order of an h x w grid (George
    1973): a rectangle's two halves first, then the one-pixel line between them (the
    8-neighbour stencil couples nothing across it), recursively down to at most
    ``ND_LEAF_PIXELS`` pixels: O(n log n) fill in the factor of a full grid."""
    order: list[np.ndarray] = []
    stack: list = [(0, h, 0, w)]
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray):
            order.append(item)
            continue
        r0, r1, c0, c1 = item
        hh, ww = r1 - r0, c1 - c0
        if hh <= 0 or ww <= 0:
            continue
        rows, cols = np.arange(r0, r1), np.arange(c0, c1)
        if hh * ww <= ND_LEAF_PIXELS:
            order.append((rows[:, None] * w + cols[None, :]).reshape(-1))
        elif hh >= ww:
            cut = r0 + hh // 2
            # popped last-in first-out: first half, second half, then the separator
            stack += [cut * w + cols, (cut + 1, r1, c0, c1), (r0, cut, c0, c1)]
        else:
            cut = c0 + ww // 2
            stack += [rows * w + cut, (r0, r1, cut + 1, c1), (r0, r1, c0, cut)]
    rank = np.empty(h * w, dtype=np.int64)
    rank[np.concatenate(order)] = np.arange(h * w)
    rank.setflags(write=False)  # shared by every caller through the cache
    return rank


def _solve_block(xv: np.ndarray, m: np.ndarray) -> np.ndarray:
    """One block-diagonal sparse system for the images ``xv`` (S, C, H, W)."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import splu

    s, c, h, w = xv.shape
    n = h * w
    mf = m.reshape(s, n)
    diag, rhs, couplings = _system(xv, m)
    si, pix = np.nonzero(mf)
    # each image's unknowns in nested-dissection order, kept by SuperLU (NATURAL): 15-20 % more
    # fill than its own minimum-degree ordering, but half the time (no ordering step, and
    # large dense separator blocks for its supernodes)
    order = np.argsort(si * n + _nd_rank(h, w)[pix], kind="stable")
    si, pix = si[order], pix[order]
    u = si.shape[0]
    var = np.full((s, n), -1, dtype=np.int64)
    var[si, pix] = np.arange(u)
    rows = [np.arange(u)]
    cols = [np.arange(u)]
    vals = [diag[pix]]
    for j, nb, wt in couplings:
        ss, k = np.nonzero(mf[:, j] & mf[:, nb])
        a, bb = var[ss, j[k]], var[ss, nb[k]]
        rows += [a, bb]
        cols += [bb, a]
        vals += [np.full(a.shape[0], -wt)] * 2
    a_mat = csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                       shape=(u, u))
    lu = splu(a_mat, permc_spec="NATURAL", diag_pivot_thresh=0.0,
              options={"SymmetricMode": True})
    sol = lu.solve(rhs.transpose(0, 2, 1)[si, pix])
    out = xv.reshape(s, c, n).copy()
    out.transpose(0, 2, 1)[si, pix] = sol
    return out.reshape(s, c, h, w)


# ---------------------------------------------------------------------- series
#: the random stream of the imputation noise (shared with the image imputer: a (C, T) series
#: gets the noise field of the (C, 1, T) image)
_NOISE_STREAM = 0x90AD


def _check_noise(noise: Any, name: str = "noise") -> float:
    if isinstance(noise, bool) or not isinstance(noise, int | float) or noise < 0:
        raise ValueError(f"`{name}` must be a number >= 0; got {noise!r}.")
    return float(noise)


def linear_interpolation_1d(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Exact (noise-free) 1-D linear imputation of the steps ``mask`` (B, C, T) (bool, same
    shape) of ``x`` (B, C, T), per channel; see :class:`SeriesLinearImputer`. A removed step
    between kept steps t0 < t < t1 becomes ``x[t0] + (x[t1] - x[t0]) (t - t0) / (t1 - t0)``
    (computed in float64, in that order, then cast to x's dtype); removed steps before the
    first (after the last) kept step take its value; a channel with every step removed
    becomes 0 (as an image with every pixel removed). Returns a new tensor. The mask may also
    broadcast against ``x`` (e.g. (B, 1, T): the same steps removed in every channel); the
    neighbours' positions are then found once per series."""
    if x.ndim != 3:
        raise ValueError(f"linear_interpolation_1d needs series (B, C, T); got shape "
                         f"{tuple(x.shape)}.")
    return _imputed_series(x, _series_mask(x, mask))


def _series_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask`` as bool with x's number of axes (leading axes of size 1 added); a mask that
    does not broadcast against x fails here."""
    m = mask.to(torch.bool)
    m.expand(x.shape)
    if m.ndim != x.ndim:
        m = m.reshape((1,) * (x.ndim - m.ndim) + tuple(m.shape))
    return m


def _imputed_series(x: torch.Tensor, mask: torch.Tensor, noise: float = 0.0,
                    keys: torch.Tensor | None = None, who: str = "",
                    drawn: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """A new tensor: ``x`` (B, C, T) with the steps of ``mask`` (bool, broadcastable to x, with
    x's number of axes) replaced by their linear interpolation (:func:`linear_interpolation_1d`),
    plus the rows' N(0, noise**2) fields (one per distinct key of ``keys``:
    :func:`_distinct_noise_fields`, or ``drawn`` ahead: :func:`_row_fields`) when ``noise`` >
    0. A mask with one channel is imputed once per series, one with C channels per channel."""
    b, c, t_count = x.shape
    fields = field_rows = None
    if noise > 0:
        fields, field_rows = _row_fields(keys, (c, t_count), noise, x.dtype, who, drawn)
        field_rows = field_rows.expand(b)
    if mask.shape[1] != 1 and c != 1:
        # a mask per channel: every channel is a series of its own
        rows = mask.expand(b, c, t_count).reshape(b * c, t_count)
        if fields is not None:
            fields = fields.reshape(-1, 1, t_count)
            field_rows = (field_rows.unsqueeze(1) * c
                          + torch.arange(c, device=x.device)).reshape(-1)
        return _imputed_rows(x.reshape(b * c, 1, t_count), rows, fields, field_rows
                             ).view(b, c, t_count)
    return _imputed_rows(x, mask.expand(b, 1, t_count).reshape(b, t_count), fields,
                         field_rows)


def _imputed_rows(x: torch.Tensor, rows: torch.Tensor, fields: torch.Tensor | None,
                  field_rows: torch.Tensor | None) -> torch.Tensor:
    """:func:`_imputed_series` of series ``x`` (R, C, T) with one mask ``rows`` (R, T) for
    all their channels, noise ``fields`` (F, C, T) and ``field_rows`` (R,) each series' field.

    On the CPU, float32 and float64 series without autograd go through NumPy
    (:func:`_imputed_rows_numpy`: the same values, bit for bit, in fewer passes over memory);
    other devices and dtypes through torch (:func:`_imputed_rows_torch`)."""
    if (x.device.type == "cpu" and rows.device.type == "cpu" and x.dtype in _NUMPY_FLOATS
            and not x.requires_grad and not x.is_neg() and (fields is None or (
                fields.device.type == "cpu" and fields.dtype == x.dtype
                and not fields.requires_grad))):
        return _imputed_rows_numpy(x, rows, fields, field_rows)
    return _imputed_rows_torch(x, rows, fields, field_rows)


_NUMPY_FLOATS = (torch.float32, torch.float64)


def _imputed_rows_numpy(x: torch.Tensor, rows: torch.Tensor, fields: torch.Tensor | None,
                        field_rows: torch.Tensor | None) -> torch.Tensor:
    """:func:`_imputed_rows` on the CPU with NumPy, the same values bit for bit as
    :func:`_imputed_rows_torch`: the same float64 operations in the same order on each
    removed value (NumPy's and torch's element-wise IEEE arithmetic round alike).

    Fewer passes over memory than the torch form, which is what a removal curve's chunks
    (hundreds of series, about half their steps removed) spend their time on: the two scans
    over time run on int16 steps (products, no ``where``) and write the next-kept scan in
    forward order through a reversed view (no flips); NumPy's ``flatnonzero`` is several
    times faster than torch's ``nonzero``; each removed step's offsets to its kept neighbours
    are a few int64 operations (no division by T per value: one ``divmod``), the gathers
    clip instead of clamping indices first, and the float32-to-float64 casts happen inside
    the subtraction and the addition."""
    xn = x.detach().numpy()
    r_count, c, t_count = xn.shape
    removed = rows.numpy()
    kept = ~removed
    step_dtype = (np.int16 if t_count < 2**15 - 1 else np.int32 if t_count < 2**31 - 1
                  else np.int64)
    steps1 = np.arange(1, t_count + 1, dtype=step_dtype)
    # prev_1: the last kept step at or before each step, plus 1 (0: none); next_left: T minus
    # the first kept step at or after it (0: none), scanned backwards into a forward array
    prev_1 = np.maximum.accumulate(kept * steps1, axis=1)
    next_left = np.empty_like(prev_1)
    np.maximum.accumulate((kept * steps1[::-1])[:, ::-1], axis=1, out=next_left[:, ::-1])
    pos = np.flatnonzero(removed)  # flat (series, step) of the removed steps
    a = prev_1.reshape(-1).take(pos)
    b = next_left.reshape(-1).take(pos)
    series, t = np.divmod(pos, t_count)
    back = t + 1 - a  # t - t0, the distance to the kept step before
    ahead = (t_count - t) - b  # t1 - t
    span = back + ahead  # t1 - t0
    # channel-major values (C, R * T): a channel's removed steps are one gather
    # (a copy even where the transpose is contiguous, C = 1 or R = 1: x is the caller's)
    per_channel = xn.transpose(1, 0, 2).copy().reshape(c, r_count * t_count)
    # an edge step's missing side points outside its series: clipped, and replaced below
    before = per_channel.take(pos - back, axis=1, mode="clip")
    after = per_channel.take(pos + ahead, axis=1, mode="clip")
    with np.errstate(all="ignore"):  # torch's arithmetic warns about nothing either
        # before + (after - before) * (t - t0) / (t1 - t0), in that order, in float64 (the
        # step counts cast once per step, not once per channel inside each operation)
        value = np.subtract(after, before, dtype=np.float64)
        value *= back.astype(np.float64)
        value /= span.astype(np.float64)
        value += before
    # the few steps without a kept step on one side (or both): the kept one's value, or 0
    edge = np.flatnonzero(np.minimum(a, b) == 0)
    if edge.size:
        has_prev = a.take(edge) > 0
        has_next = b.take(edge) > 0
        value[:, edge] = np.where(has_prev, before[:, edge],
                                  np.where(has_next, after[:, edge], 0.0))
    imputed = value.astype(xn.dtype)
    if fields is not None:
        assert field_rows is not None
        fn = fields.detach().numpy()
        noise = np.ascontiguousarray(fn.reshape(fn.shape[0], c, t_count).transpose(1, 0, 2)
                                     ).reshape(c, -1)  # (C, F * T), as per_channel
        # a removed step's place in its field: pos + (field row - series) * T, the shift
        # computed once per series
        shift = (field_rows.numpy() - np.arange(r_count)) * t_count
        imputed += noise.take(pos + shift.take(series), axis=1)
    out = torch.from_numpy(per_channel)
    # torch's index_copy_ writes the (C, P) values several times faster than NumPy's
    # fancy assignment
    out.index_copy_(1, torch.from_numpy(pos), torch.from_numpy(imputed))
    return out.view(c, r_count, t_count).transpose(0, 1).contiguous()


def _imputed_rows_torch(x: torch.Tensor, rows: torch.Tensor, fields: torch.Tensor | None,
                        field_rows: torch.Tensor | None) -> torch.Tensor:
    """:func:`_imputed_rows` with torch operations (any device and dtype, autograd).

    Computed at the removed steps only (about half the values of a removal curve's rows, and
    no full-size float64 buffers): their kept neighbours' values gathered, the float64
    arithmetic done on them element by element (the same operations, in the same order, as
    on every position followed by a selection: the same bits), and one copy into x's
    values."""
    r_count, c, t_count = x.shape
    # int32 steps: half the bytes of the two scans (a series has fewer than 2**31 steps)
    steps = torch.arange(t_count, device=x.device, dtype=torch.int32)
    known = ~rows
    prev = torch.where(known, steps, -1).cummax(-1).values.view(-1)
    nxt = torch.where(known, steps, t_count).flip(-1).cummin(-1).values.flip(-1).view(-1)
    pos = rows.reshape(-1).nonzero().squeeze(1)  # flat (series, step) of the removed steps
    p0, p1 = prev.index_select(0, pos), nxt.index_select(0, pos)
    series = pos.div(t_count, rounding_mode="floor")
    start = series * t_count
    t = pos - start
    # channel-major values (C, R * T): a channel's removed steps are one index_select
    per_channel = torch.empty((c, r_count * t_count), dtype=x.dtype, device=x.device)
    per_channel.view(c, r_count, t_count).copy_(x.transpose(0, 1))
    before = per_channel.index_select(1, start + p0.clamp_min(0)).to(torch.float64)
    after = per_channel.index_select(1, start + p1.clamp_max(t_count - 1)).to(torch.float64)
    span = (p1 - p0).clamp_min(1).to(torch.float64)
    # before + (after - before) * (t - t0) / span, in that order
    value = after.sub(before).mul_((t - p0).to(torch.float64)).div_(span).add_(before)
    # the few steps without a kept step on one side (or both): the kept one's value, or 0
    edge = ((p0 < 0) | (p1 >= t_count)).nonzero().squeeze(1)
    if edge.numel():
        has_prev = p0.index_select(0, edge) >= 0
        has_next = p1.index_select(0, edge) < t_count
        edge_value = torch.where(has_prev, before.index_select(1, edge),
                                 after.index_select(1, edge).masked_fill_(~has_next, 0.0))
        value.index_copy_(1, edge, edge_value)
    value = value.to(x.dtype)
    if fields is not None:
        assert field_rows is not None
        noise = fields.transpose(0, 1).reshape(c, -1)  # (C, F * T), as per_channel
        value.add_(noise.index_select(1, field_rows.index_select(0, series) * t_count + t))
    per_channel.index_copy_(1, pos, value)
    return per_channel.view(c, r_count, t_count).transpose(0, 1).contiguous()


def _distinct_noise_fields(keys: torch.Tensor | None, shape: tuple[int, ...], std: float,
                           dtype: torch.dtype, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One N(0, std^2) field of ``shape`` per distinct key, and each row's field index."""
    if keys is None:
        raise ValueError(f"{who} with noise > 0 needs per-row random keys.")
    uniq, inverse = torch.unique(keys, return_inverse=True)
    return _rng.normal(uniq, shape, std=std, dtype=dtype, stream=_NOISE_STREAM), inverse


def _row_fields(keys: torch.Tensor | None, shape: tuple[int, ...], std: float,
                dtype: torch.dtype, who: str, drawn: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_distinct_noise_fields` of the rows' ``keys``, read from ``drawn`` (sorted
    distinct keys (K,), their fields (K, *shape), drawn ahead with the same ``std``) where it
    holds every key with fields of this shape, dtype and device: the same numbers (a field
    depends only on its key), without drawing them again."""
    if drawn is not None and keys is not None and keys.numel():
        known, fields = drawn
        if (tuple(fields.shape[1:]) == tuple(shape) and fields.dtype == dtype
                and fields.device == keys.device and known.numel()):
            where = torch.searchsorted(known, keys)
            found = known.index_select(0, where.clamp_max(known.numel() - 1)) == keys
            if bool(found.all()):
                return fields, where
    return _distinct_noise_fields(keys, shape, std, dtype, who)


def _noise_fields(keys: torch.Tensor | None, shape: tuple[int, ...], std: float,
                  dtype: torch.dtype, who: str) -> torch.Tensor:
    """One N(0, std^2) field of ``shape`` per row, drawn once per distinct key."""
    fields, inverse = _distinct_noise_fields(keys, shape, std, dtype, who)
    return fields[inverse]


class SeriesLinearImputer(Imputer):
    """ROAD's noisy linear imputation along time, for series (B, C, T) (see the module
    docstring: the 1-D analogue of :class:`NoisyLinearImputer`, in closed form).

    Parameters
    ----------
    noise:
        Standard deviation of the Gaussian noise added to the imputed values, in input units
        (0.01, as ROAD's); 0 gives the exact linear interpolation (deterministic).

    ``fill(x, mask, keys)``: the mask broadcasts against ``x``; a one-channel mask removes a
    time step in every channel, a per-channel mask is imputed per channel.
    """

    def __init__(self, noise: float = 0.01) -> None:
        self.noise = _check_noise(noise)
        self.stochastic = self.noise > 0
        #: the keys whose fields :meth:`with_fields_for` draws at the first fill, and then
        #: (sorted keys, their fields)
        self._ahead: torch.Tensor | None = None
        self._drawn: tuple[torch.Tensor, torch.Tensor] | None = None

    def cache_token(self) -> bytes:
        return f"SeriesLinearImputer(noise={self.noise!r})".encode()

    def with_fields_for(self, keys: torch.Tensor) -> SeriesLinearImputer:
        """A copy of this imputer that draws the noise fields of all ``keys`` (e.g. the
        samples' keys of one metric call) at its first fill, for that fill's series shape and
        dtype, and reads them afterwards (this imputer itself where it adds no noise).

        A metric that fills rows of the same samples in many chunks (ROAD: every percentage
        and both orders) then draws each sample's field once per call instead of once per
        chunk: the same numbers, as a field depends only on its key; rows with another key,
        shape or dtype draw theirs as before. Keep the copy for one call (it holds K x C x T
        values)."""
        if not self.stochastic:
            return self
        bound = copy.copy(self)
        bound._ahead = torch.unique(keys)
        bound._drawn = None
        return bound

    def fill(
        self, x: torch.Tensor, mask: torch.Tensor, *, keys: torch.Tensor | None = None
    ) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(
                f"SeriesLinearImputer needs series (B, C, T); got shape {tuple(x.shape)}."
            )
        if self._ahead is not None and self._drawn is None:
            known = self._ahead.to(x.device)
            self._drawn = (known, _rng.normal(known, tuple(x.shape[1:]), std=self.noise,
                                              dtype=x.dtype, stream=_NOISE_STREAM))
        return _imputed_series(x, _series_mask(x, mask), self.noise, keys,
                               "SeriesLinearImputer", self._drawn)


# ---------------------------------------------------------------------- tables
#: rows x features x features of the batched covariance solves (bounds their memory: 32 MiB)
_SOLVE_ELEMENTS = 1 << 22


class TableImputer(Imputer):
    """Base class of the imputers for tables (B, F) that estimate removed columns from a
    background set of rows (see the module docstring).

    Parameters
    ----------
    reference:
        Background rows (M, F) (array or tensor), or None: the batch a metric binds with
        :meth:`with_background`, each row left out of its own background.
    noise:
        Gaussian noise added to an imputed column, as a multiple of the background's standard
        deviation of that column (0: deterministic).
    """

    def __init__(self, reference: Any = None, *, noise: float = 0.0) -> None:
        self.reference = reference
        self.noise = _check_noise(noise)
        self.stochastic = self.noise > 0
        self._background: torch.Tensor | None = None
        self._leave_one_out = False
        if reference is not None:
            ref = torch.as_tensor(np.asarray(reference) if not isinstance(reference, torch.Tensor)
                                  else reference).detach()
            if ref.ndim != 2 or ref.shape[0] < 1 or not bool(torch.isfinite(ref).all()):
                raise ValueError("`reference` must be finite background rows (M, F) with M >= 1; "
                                 f"got shape {tuple(ref.shape)}.")
            self._background = ref.to("cpu", torch.float64)

    def with_background(self, x: torch.Tensor) -> TableImputer:
        """This imputer with the batch ``x`` (N, F) as its background, each row left out of its
        own (a copy; unchanged when a ``reference`` is set)."""
        if self.reference is not None:
            return self
        bound = copy.copy(self)
        bound._background = x.detach().to("cpu", torch.float64)
        bound._leave_one_out = True
        bound.__dict__.pop("_cache_token", None)
        return bound

    def cache_token(self) -> bytes:
        # the replacements depend on the parameters and the background's values
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{type(self).__name__}({self._params()!r}, loo={self._leave_one_out})".encode())
        if self._background is not None:
            h.update(np.ascontiguousarray(self._background.numpy()).tobytes())
        return h.digest()

    def _params(self) -> dict[str, Any]:
        return {"noise": self.noise}

    def fill(
        self, x: torch.Tensor, mask: torch.Tensor, *, keys: torch.Tensor | None = None
    ) -> torch.Tensor:
        name = type(self).__name__
        if x.ndim != 2:
            raise ValueError(f"{name} needs tables (B, F); got shape {tuple(x.shape)}.")
        if self._background is None:
            raise ValueError(f"{name}(reference=None) has no background rows: pass "
                             "`reference=` (e.g. training rows), or let a metric bind it to its "
                             "batch (ROAD(background='batch') does).")
        bg = self._background.to(x.device)
        if bg.shape[1] != x.shape[1]:
            raise ValueError(f"{name}: the background has {bg.shape[1]} columns but the inputs "
                             f"have {x.shape[1]}.")
        m = mask.to(torch.bool).expand(x.shape)
        xd = x.to(torch.float64)
        excluded = (_equal_rows(xd, bg) if self._leave_one_out
                    else torch.zeros((x.shape[0], bg.shape[0]), dtype=torch.bool,
                                     device=x.device))
        left = bg.shape[0] - excluded.sum(1)
        if bool((left < 1).any()):
            raise ValueError(f"{name}: a row has no other background row to impute from (the "
                             "batch holds only copies of it); give `reference=` rows.")
        values = self._impute(xd, m, bg, excluded)
        if self.noise > 0:
            sd = bg.std(0, correction=0)
            fields = _noise_fields(keys, (x.shape[1],), 1.0, torch.float64, name)
            values = values + fields * (self.noise * sd)
        return torch.where(m, values.to(x.dtype), x)

    def _impute(self, x: torch.Tensor, mask: torch.Tensor, bg: torch.Tensor,
                excluded: torch.Tensor) -> torch.Tensor:
        """Imputed values (B, F) float64 for every column (only the masked ones are used)."""
        raise NotImplementedError


def _equal_rows(x: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """(B, M) bool: background row m equals row b exactly. Candidates from one random
    projection, confirmed element by element (no (B, M, F) tensor)."""
    f = x.shape[1]
    w = torch.sin(torch.arange(1, f + 1, dtype=torch.float64, device=x.device) * 12.9898) + 2.0
    hx, hb = x @ w, bg @ w
    close = (hx.unsqueeze(1) - hb.unsqueeze(0)).abs() <= 1e-9 * (
        hx.abs().unsqueeze(1) + hb.abs().unsqueeze(0) + 1.0)
    pb, pm = close.nonzero(as_tuple=True)
    same = (x[pb] == bg[pm]).all(1)
    out = torch.zeros_like(close)
    out[pb[same], pm[same]] = True
    return out


def _background_moments(x: torch.Tensor, bg: torch.Tensor, excluded: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row background mean (B, F), number of excluded rows c (B,) and of rows left
    M - c (B,): the excluded rows of row b are c_b copies of x_b, so mean and scatter follow
    from the full background's by removing them (mu' = (M mu - c x) / (M - c); the scatter
    S' = S - c M / (M - c) (x - mu)(x - mu)^T is the caller's). A row with no excluded copy
    (c = 0) gets the full background's mean whatever its values (a NaN in it does not leak)."""
    m_total = bg.shape[0]
    mu = bg.mean(0)
    c = excluded.sum(1).to(torch.float64)
    count = m_total - c
    # only rows with excluded copies are corrected: 0 * NaN would be NaN
    removed = torch.where((c > 0).unsqueeze(1), c.unsqueeze(1) * x, torch.zeros_like(x))
    mean = (m_total * mu - removed) / count.unsqueeze(1)
    return mean, c, count


class MarginalMeanImputer(TableImputer):
    """Removed columns become the background's column means (see the module docstring); with
    the batch as background, the mean of the other rows."""

    def _impute(self, x, mask, bg, excluded):
        return _background_moments(x, bg, excluded)[0]


class ConditionalMeanImputer(TableImputer):
    """Removed columns become their mean given the kept columns under a Gaussian fitted to
    the background: ``mu_R + Sigma_RK Sigma_KK^-1 (x_K - mu_K)`` (see the module docstring).

    ``ridge``: added to the covariance's diagonal, relative to its mean variance (constant or
    collinear columns, e.g. one-hot groups, make the covariance singular). A background of one
    row (after leaving the row out) has no covariance: its mean is used.
    """

    def __init__(self, reference: Any = None, *, noise: float = 0.0,
                 ridge: float = 1e-6) -> None:
        super().__init__(reference, noise=noise)
        if isinstance(ridge, bool) or not isinstance(ridge, int | float) or ridge <= 0:
            raise ValueError(f"`ridge` must be a number > 0; got {ridge!r}.")
        self.ridge = float(ridge)

    def _params(self) -> dict[str, Any]:
        return {"noise": self.noise, "ridge": self.ridge}

    def _impute(self, x, mask, bg, excluded):
        b, f = x.shape
        m_total = bg.shape[0]
        mean, c, count = _background_moments(x, bg, excluded)
        mu = bg.mean(0)
        centred = bg - mu
        scatter = centred.T @ centred  # (F, F)
        out = torch.empty_like(x)
        eye = torch.eye(f, dtype=torch.float64, device=x.device)
        step = max(1, _SOLVE_ELEMENTS // max(1, f * f))
        for start in range(0, b, step):
            sl = slice(start, start + step)
            cc, cnt = c[sl], count[sl]
            # a row with no excluded copy has no correction (a NaN in it would give 0 * NaN)
            d = torch.where((cc > 0).unsqueeze(1), x[sl] - mu, torch.zeros_like(x[sl]))
            s = scatter - (cc * m_total / cnt).view(-1, 1, 1) * d.unsqueeze(2) * d.unsqueeze(1)
            cov = s / (cnt - 1).clamp_min(1).view(-1, 1, 1)
            cov = torch.where((cnt > 1).view(-1, 1, 1), cov, torch.zeros_like(cov))
            scale = torch.diagonal(cov, dim1=1, dim2=2).mean(1).clamp_min(1e-12)
            cov = cov + (self.ridge * scale).view(-1, 1, 1) * eye
            keep = ~mask[sl]
            both = keep.unsqueeze(2) & keep.unsqueeze(1)
            system = torch.where(both, cov, eye.expand_as(cov))
            rhs = torch.where(keep, x[sl] - mean[sl], torch.zeros_like(d))
            chol = torch.linalg.cholesky(system)
            z = torch.cholesky_solve(rhs.unsqueeze(2), chol).squeeze(2)
            out[sl] = mean[sl] + (cov @ z.unsqueeze(2)).squeeze(2)
        return out


class KNNImputer(TableImputer):
    """Removed columns become their mean over the ``k`` background rows nearest to the row on
    its kept columns (see the module docstring). A row with no kept column gets the
    background mean (every row is equally near).

    ``standardise``: measure distances on columns divided by the background's standard
    deviations (True, default; columns with other units then weigh alike), else raw values.
    Distances are computed on columns centred on the background's means (the same distances,
    without the loss of precision of a column with a large offset, e.g. a timestamp).
    """

    def __init__(self, reference: Any = None, *, k: int = 5, noise: float = 0.0,
                 standardise: bool = True) -> None:
        super().__init__(reference, noise=noise)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"`k` must be a positive integer; got {k!r}.")
        self.k = k
        self.standardise = bool(standardise)

    def _params(self) -> dict[str, Any]:
        return {"noise": self.noise, "k": self.k, "standardise": self.standardise}

    def _impute(self, x, mask, bg, excluded):
        sd = bg.std(0, correction=0) if self.standardise else torch.ones(
            bg.shape[1], dtype=torch.float64, device=x.device)
        sd = torch.where(sd > 0, sd, torch.ones_like(sd))
        # centred first: the expanded squares below cancel catastrophically on columns with a
        # large offset (1e9 + small differences picked the wrong neighbour)
        mu = bg.mean(0)
        xs, rs = (x - mu) / sd, (bg - mu) / sd
        xs = torch.where(mask, torch.zeros_like(xs), xs)  # a removed NaN: not 0 * NaN below
        keep = (~mask).to(torch.float64)
        # sum_f keep_f (x_f - r_f)^2 as three products (no (B, M, F) tensor)
        dist = ((keep * xs * xs).sum(1, keepdim=True) - 2 * (keep * xs) @ rs.T
                + keep @ (rs * rs).T).clamp_min(0)
        dist = dist.masked_fill(excluded, float("inf"))
        k = min(self.k, bg.shape[0])
        order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
        usable = torch.isfinite(dist.gather(1, order)).to(torch.float64)  # (B, k)
        near = (bg[order] * usable.unsqueeze(2)).sum(1) / usable.sum(1, keepdim=True)
        none_kept = keep.sum(1) == 0
        if bool(none_kept.any()):
            mean = _background_moments(x, bg, excluded)[0]
            near = torch.where(none_kept.unsqueeze(1), mean, near)
        return near


# ---------------------------------------------------------------------- noise replacement
class GaussianReplacement(Baseline):
    """A mask-independent replacement by i.i.d. ``N(mean, std**2)`` values per element, drawn
    once per sample from its key (:mod:`evalkit._rng`) and reused at every step; ``std=0``
    replaces by the constant ``mean``."""

    def __init__(self, std: float = 1.0, mean: float = 0.0) -> None:
        super().__init__("zero")
        self.kind = "gaussian"
        self.std = _check_noise(std, "std")
        if isinstance(mean, bool) or not isinstance(mean, int | float):
            raise ValueError(f"`mean` must be a number; got {mean!r}.")
        self.mean = float(mean)
        self.stochastic = self.std > 0

    def values(self, x: torch.Tensor, keys: torch.Tensor | None = None) -> torch.Tensor:
        if self.std == 0:
            return torch.full((1,) * x.ndim, float(self.mean), dtype=x.dtype, device=x.device)
        if keys is None:
            raise ValueError("GaussianReplacement with std > 0 needs per-sample keys.")
        return _rng.normal(keys, tuple(x.shape[1:]), mean=self.mean, std=self.std,
                           dtype=x.dtype, stream=0x7E5)

    def cache_token(self) -> bytes:
        return f"GaussianReplacement(std={self.std!r}, mean={self.mean!r})".encode()
