"""Sufficiency (Dasgupta et al. 2022): a set-level metric."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..._validation import check_bool, check_scalar
from ...models.targets import BaseTarget
from .._removal import flag_nonfinite
from ..base import Metric, MetricBatch
from ._common import valid_samples


class Sufficiency(Metric):
    """Sufficiency (Dasgupta, Frost & Moshkovitz 2022), **set-level**: the local sufficiency
    of a sample's explanation is the share of the *other samples of the batch* whose
    explanation lies within ``threshold`` of it (the explanation "applies" to them) that the
    model assigns the same predicted class. **Higher is better**; the mean over samples is
    the global sufficiency.

    Distances between the flattened attributions are ``scipy.spatial.distance.cdist``'s with
    ``distance_func`` (any metric name scipy accepts, or a callable on two vectors; the
    (standardised) Euclidean ones are computed in torch on the device, within about 1e-10
    relative), divided by the largest distance in the batch when ``normalise_distances``
    (Quantus divides by the maximum too), so ``threshold`` is relative. For ``"seuclidean"``
    the variance of each feature is its sample variance over the batch's attributions A
    (``var(A, ddof=1)``): the distances of ``scipy.spatial.distance.pdist(A, "seuclidean")``,
    or of ``cdist(A, A, "seuclidean", V=var(A, axis=0, ddof=1))``. A plain
    ``cdist(A, A, "seuclidean")`` takes the variance over the stacked ``[A; A]``, smaller by
    the factor 2(N-1)/(2N-1) for every feature, so its distances are larger by one common
    factor: the same after the default normalisation, different with
    ``normalise_distances=False``. The neighbourhoods use the whole batch passed
    to the call: scores depend on which samples are evaluated together (that is the metric's
    definition), never on ``batch_size``.

    Deviations from Quantus (deviation C9): every scipy distance works (Quantus passes ``V=None`` to
    all of them and only ``"seuclidean"`` runs); for ``"seuclidean"`` a feature with zero
    variance over the batch is given unit variance (its differences are all zero) instead of
    turning every distance into NaN; a sample without neighbours is NaN with a reason (Quantus
    returns 0).

    Reference: S. Dasgupta, N. Frost, M. Moshkovitz, "Framework for Evaluating Faithfulness of
    Local Explanations", ICML 2022.
    """

    family = "faithfulness"
    higher_is_better = True
    default_abs = True
    default_softmax = True
    set_level = True
    paper = ("Dasgupta, Frost & Moshkovitz, Framework for Evaluating Faithfulness of Local "
             "Explanations, ICML 2022")

    def __init__(self, threshold: float = 0.6, distance_func: Any = "seuclidean", *,
                 normalise_distances: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = check_scalar("threshold", threshold, (int, float), min_val=0)
        if not (callable(distance_func) or isinstance(distance_func, str)):
            raise TypeError("`distance_func` must be a scipy metric name or a callable.")
        self.distance_func = distance_func
        self.normalise_distances = check_bool("normalise_distances", normalise_distances)

    def distances(self, a: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """The (N, N) distance matrix of flattened attributions ``a`` (N, D), normalised when
        ``normalise_distances``; NumPy in, NumPy out; a tensor in, a float64 tensor on its
        device out.

        (Standardised) Euclidean distances are computed in torch on ``a``'s device (see
        :func:`_euclidean_distances`); other distances by ``scipy.spatial.distance.cdist``."""
        device = a.device if isinstance(a, torch.Tensor) else torch.device("cpu")
        if self.distance_func in _EUCLIDEAN:
            d = _euclidean_distances(self._scaled(torch.as_tensor(a)))
            if self.distance_func == "sqeuclidean":
                d = d * d
        else:
            from scipy.spatial.distance import cdist

            arr = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
            try:
                d = torch.from_numpy(cdist(arr, arr, self.distance_func)).to(device)
            except (ValueError, np.linalg.LinAlgError) as err:
                raise ValueError(
                    f"Sufficiency: scipy's cdist failed with distance_func="
                    f"{self.distance_func!r} on {arr.shape[0]} attributions of {arr.shape[1]} "
                    f"features: {err}"
                ) from err
        if self.normalise_distances:
            top = float(d.max()) if d.numel() else 0.0
            if not math.isfinite(top):  # the largest finite distance (one pass when all are)
                finite = d[torch.isfinite(d)]
                top = float(finite.max()) if finite.numel() else 0.0
            if top > 0:
                d = d.div_(top)
        return d if isinstance(a, torch.Tensor) else d.cpu().numpy()

    def _scaled(self, a: torch.Tensor) -> torch.Tensor:
        """The flattened maps (N, D) as float64, each feature divided by its standard deviation
        over the batch for ``"seuclidean"`` (unit variance where it is 0)."""
        t = a.to(torch.float64)
        if self.distance_func == "seuclidean":
            var = (t.var(0, unbiased=True) if t.shape[0] > 1
                   else torch.ones(t.shape[1], dtype=t.dtype, device=t.device))
            t = t / torch.where(var > 0, var, torch.ones_like(var)).sqrt()
        return t

    def _neighbour_counts(self, a: torch.Tensor, pred: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For each sample, the number of neighbours within the threshold and the number of
        those with the same prediction, two (N,) float64 counts equal to those of the
        ``distances`` and ``agree_pairwise`` matrices, without building them (the route for
        the Euclidean distances and the default agreement of 1-D predictions).

        The pairwise work is the metric's own cost (N^2 pairs, many times the forward pass of
        a small model's N rows), so it runs on the pairs i <= j only, the pair (j, i) taking
        the value of (i, j): the same number wherever the product ``t @ t.T`` is symmetric
        (u.v and v.u are sums of the same products; MKL's is, bit for bit), as |u|^2 + |v|^2
        and the direct sum of a cancelling pair are either way round. After the one matrix
        product, a block of rows i at a time, over the columns j >= i, is finished in place
        (in cache) and then tested; its neighbours are counted for its rows, and mirrored for
        its columns, by small matrix products per predicted class. Returns None where the
        largest distance is not finite: the caller then takes the whole matrices."""
        t = self._scaled(a)
        n = t.shape[0]
        sq = (t * t).sum(1)
        d2 = t @ t.T  # its upper triangle finished in place, block by block
        blocks = _upper_blocks(n)
        top2 = torch.zeros((), dtype=torch.float64, device=t.device)
        # a block is at least one row of n - start pairs (wider than _BLOCK_ELEMENTS where
        # n is)
        buffer = torch.empty(max(_BLOCK_ELEMENTS, n), dtype=torch.float64, device=t.device)
        on_cpu = t.device.type == "cpu"
        for start, stop in blocks:
            rows, width = stop - start, n - start
            upper = d2[start:stop, start:]
            total = torch.add(sq[start:stop].unsqueeze(1), sq[start:].unsqueeze(0),
                              out=buffer[:rows * width].view(rows, width))
            # total - 2 u.v in one pass (the product by -2 is exact: the same bits as
            # multiplying first); no clamp at 0: a negative d^2 cancelled (see below), and
            # the running maximum starts at 0
            block = torch.add(total, upper, alpha=-2.0, out=upper)
            # NumPy's max: several times faster on the CPU
            top2 = torch.maximum(top2, torch.tensor(block.numpy().max()) if on_cpu
                                 else block.amax())
        if not math.isfinite(float(top2)):
            return None
        largest_sq = float(sq.max())
        limit = self._limit(top2)
        if not (t.shape[1] <= _CANCEL_FEATURES and float(top2) > _CANCEL_MARGIN * largest_sq
                and limit is not None and limit >= _CANCEL_MARGIN * largest_sq):
            # the pairs whose matrix-product form may cancel are summed directly, as
            # _euclidean_distances does; skipped above, where provably nothing changes: a
            # pair is summed only where its d^2 is at most 1e-6 of |u|^2 + |v|^2, and then
            # (with few enough features for the rounding of both forms to stay within 1e-9 of
            # that) both its values are under _CANCEL_MARGIN times the largest |u|^2: a
            # neighbour either way (under the limit), never the largest d^2 (above it), and
            # the pairs (i, i) are no one's neighbour
            top2 = self._sum_cancelling_pairs(t, sq, d2, blocks, top2)
            limit = self._limit(top2)
        if limit is None:
            return None
        codes = torch.unique(pred, return_inverse=True)[1]
        classes = int(codes.max()) + 1
        onehot = None
        if classes <= _COUNTED_CLASSES and n < (1 << 24):
            # one column per predicted value (counts below 2^24 are exact in float32, so the
            # sums of the row and the mirrored column blocks are the whole rows' counts)
            onehot = torch.zeros((n, classes), dtype=torch.float32, device=t.device)
            onehot[torch.arange(n, device=t.device), codes] = 1.0
            by_class = torch.zeros((n, classes), dtype=torch.float32, device=t.device)
        else:
            count = torch.zeros(n, dtype=torch.int64, device=t.device)
            both = torch.zeros_like(count)
        near_buffer = torch.empty(max(_BLOCK_ELEMENTS, n), dtype=torch.float32 if onehot is not None
                                  else torch.bool, device=t.device)
        for start, stop in blocks:
            width = n - start
            near = near_buffer[:(stop - start) * width].view(stop - start, width)
            if on_cpu:  # NumPy writes the comparison as float32 several times faster
                np.less_equal(d2[start:stop, start:].numpy(), limit, out=near.numpy())
            else:
                torch.le(d2[start:stop, start:], limit, out=near)
            near[:, :stop - start].fill_diagonal_(False)
            mirrored = near[:, stop - start:]  # the pairs (j, i) of the columns j >= stop
            if onehot is not None:
                by_class[start:stop] += near @ onehot[start:]
                by_class[stop:] += mirrored.T @ onehot[start:stop]
                continue
            same = pred[start:stop].unsqueeze(1) == pred[start:].unsqueeze(0)
            count[start:stop] += _row_counts(near)
            count[stop:] += mirrored.sum(0)
            near.logical_and_(same)
            both[start:stop] += _row_counts(near)
            both[stop:] += mirrored.sum(0)
        if onehot is not None:
            count = by_class.sum(1)
            both = by_class.gather(1, codes.unsqueeze(1)).squeeze(1)
        return count.to(torch.float64), both.to(torch.float64)

    def _limit(self, top2: torch.Tensor) -> float | None:
        """The largest d^2 whose finished distance (square root, squared again for
        ``"sqeuclidean"``, normalised by the largest distance, whose square is ``top2``) is
        within the threshold; None where the largest distance is not finite.

        Finishing is monotone in d^2, so a pair is near exactly when its d^2 is at most
        this."""
        top = float(top2.sqrt())
        squared = self.distance_func == "sqeuclidean"
        if squared:
            top = top * top  # the square of the largest distance, rounded as d * d is
        if not math.isfinite(top):
            return None
        scale = top if self.normalise_distances and top > 0 else None
        threshold = float(self.threshold)
        # where the exact real-number answer lies (the search corrects it to the bit)
        guess = threshold * (scale or 1.0)
        return _largest_within(lambda v: _finish(v, squared=squared, scale=scale),
                               threshold, guess if squared else guess * guess)

    @staticmethod
    def _sum_cancelling_pairs(t: torch.Tensor, sq: torch.Tensor, d2: torch.Tensor,
                              blocks: list[tuple[int, int]], top2: torch.Tensor
                              ) -> torch.Tensor:
        """Replace, in the finished upper triangle of ``d2``, the d^2 of the pairs whose
        matrix-product form may cancel (d^2 at most 1e-6 of |u|^2 + |v|^2) by their direct sums
        (:func:`_exact_squares`), and return the largest d^2 after that (``top2`` before)."""
        n = t.shape[0]
        # no pair can cancel where d^2 exceeds 1e-6 of the largest |u|^2 + |v|^2: the test of
        # each pair's own bound (below) runs on the few pairs under that
        bound = float(sq.max()) * 2e-6
        near_i, near_j = [], []
        for start, stop in blocks:
            block = d2[start:stop, start:]
            if block.device.type == "cpu":  # NumPy's nonzero: several times faster
                width = n - start
                flat = torch.from_numpy(np.flatnonzero(block.numpy() <= bound))
                i, j = flat // width, flat % width
            else:
                i, j = (block <= bound).nonzero(as_tuple=True)
            if i.numel():
                own = block[i, j] <= (sq[i + start] + sq[j + start]).mul_(1e-6)
                near_i.append(i[own] + start)
                near_j.append(j[own] + start)
        if not near_i:
            return top2
        i, j = torch.cat(near_i), torch.cat(near_j)
        before = d2[i, j]
        exact = _exact_squares(t, i, j, sq)
        d2[i, j] = exact
        if bool((before == top2).any()):  # the largest was summed again: look again
            top2 = torch.zeros((), dtype=torch.float64, device=t.device)
            for start, stop in blocks:
                top2 = torch.maximum(top2, d2[start:stop, start:].amax())
            return top2
        return torch.maximum(top2, exact.max())

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        batch.require_model()
        a = batch.a
        assert a is not None
        n = batch.n
        target = batch.target
        pred = batch.runner.outputs(  # type: ignore[union-attr]
            batch.x, reduce=lambda out, index: target.predict_or_nan(out)).to(batch.device)
        flag_nonfinite(batch, pred)
        # a sample whose attribution or prediction is not finite is no one's neighbour (it is
        # NaN itself) and takes no part in the distances' normalisation
        ok = valid_samples(batch)
        idx = ok.nonzero().flatten()
        counts = None
        if (self.distance_func in _EUCLIDEAN and idx.numel() == n and pred.ndim == 1
                and n >= _BLOCKED_SAMPLES
                and type(target).agree_pairwise is BaseTarget.agree_pairwise):
            counts = self._neighbour_counts(a.reshape(n, -1), pred)
        if counts is not None:
            count, both = counts
            batch.set_nan(count == 0, "no other sample's explanation is within the threshold")
            return both / count.clamp_min(1)
        if idx.numel() == n:  # every sample valid: the distances as they are (no N x N copy)
            d = torch.as_tensor(self.distances(a.reshape(n, -1))).to(batch.device, torch.float64)
        else:
            d = torch.full((n, n), math.inf, dtype=torch.float64, device=batch.device)
            if idx.numel():
                sub = torch.as_tensor(self.distances(a[idx].reshape(idx.numel(), -1)))
                d[idx.unsqueeze(1), idx.unsqueeze(0)] = sub.to(batch.device, torch.float64)
        near = d <= self.threshold
        near.fill_diagonal_(False)
        same = target.agree_pairwise(pred)  # NaN (no prediction) agrees with nothing
        count = _row_counts(near)
        batch.set_nan(count == 0, "no other sample's explanation is within the threshold")
        return _row_counts(near.logical_and_(same)).to(torch.float64) / count.clamp_min(1)


def _row_counts(m: torch.Tensor) -> torch.Tensor:
    """(N,) int32 numbers of True per row of the bool matrix ``m`` (N, N): summed as bytes
    into int32, 3-4x faster than ``m.sum(1)`` (which widens every element to int64)."""
    return m.view(torch.uint8).sum(1, dtype=torch.int32)


#: the distances computed in torch (the others by scipy's cdist)
_EUCLIDEAN = ("seuclidean", "euclidean", "sqeuclidean")


#: the fewest samples for which the blocked path pays (below, the N x N matrices are small)
_BLOCKED_SAMPLES = 256

#: the most distinct predictions whose neighbours are counted by a matrix product (one
#: column each); more (e.g. a regression's values) are compared pair by pair
_COUNTED_CLASSES = 256


#: the skipped scan for cancelling pairs (see ``Sufficiency._neighbour_counts``): at most this
#: many features (the rounding of D-term sums stays within D * 2^-53 relative: below 1e-9),
#: and the largest d^2 and the limit at least this multiple of the largest |u|^2
_CANCEL_FEATURES = 1 << 20
_CANCEL_MARGIN = 4e-6

#: the most pairs of a block of :func:`_upper_blocks` (1 MiB of float64: a block and its
#: buffer stay in a core's cache)
_BLOCK_ELEMENTS = 1 << 17


def _upper_blocks(n: int) -> list[tuple[int, int]]:
    """Row blocks ``(start, stop)`` of the upper triangle of an N x N matrix (rows
    ``start:stop``, columns ``start:``), each of at most ``_BLOCK_ELEMENTS`` pairs (at least
    one row): more rows per block as the rows shorten."""
    blocks, start = [], 0
    while start < n:
        stop = min(n, start + max(1, _BLOCK_ELEMENTS // (n - start)))
        blocks.append((start, stop))
        start = stop
    return blocks


def _finish(d2: float, *, squared: bool, scale: float | None) -> float:
    """One distance from its square, as the matrix path finishes it (IEEE square root and
    division: the same bits in Python as in torch)."""
    d = math.sqrt(d2)
    if squared:
        d = d * d
    return d / scale if scale is not None else d


def _largest_within(finish: Callable[[float], float], threshold: float,
                    guess: float = 0.0) -> float:
    """The largest float64 ``v >= 0`` with ``finish(v) <= threshold``, for a non-decreasing
    ``finish`` with ``finish(0) <= threshold``: from ``guess`` (an estimate) a few steps of one
    unit in the last place, else a bisection over the bit patterns of the non-negative
    doubles (ordered as integers)."""
    if finish(math.inf) <= threshold:
        return math.inf
    v = guess if math.isfinite(guess) and guess >= 0 else 0.0
    for _ in range(64):
        if finish(v) > threshold:
            v = math.nextafter(v, 0.0)
        elif finish(math.nextafter(v, math.inf)) <= threshold:
            v = math.nextafter(v, math.inf)
        else:
            return v

    def value(bits: int) -> float:
        return struct.unpack("<d", struct.pack("<q", bits))[0]

    lo, hi = 0, struct.unpack("<q", struct.pack("<d", math.inf))[0]
    while hi - lo > 1:  # finish(value(lo)) <= threshold < finish(value(hi))
        mid = (lo + hi) // 2
        if finish(value(mid)) <= threshold:
            lo = mid
        else:
            hi = mid
    return value(lo)


def _exact_squares(t: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                   sq: torch.Tensor) -> torch.Tensor:
    """|t[i] - t[j]|^2 summed directly, for the pairs whose matrix-product form cancels
    (``sq``: the rows' |t|^2). A row's pair with itself is 0 without the sum where the row is
    finite (its |t|^2 is: x - x is exactly 0), which is most of the pairs of a small batch."""
    out = torch.zeros(i.shape, dtype=t.dtype, device=t.device)
    summed = ((i != j) | ~torch.isfinite(sq.index_select(0, i))).nonzero().squeeze(1)
    i, j = i.index_select(0, summed), j.index_select(0, summed)
    for k in range(0, i.numel(), 4096):
        rows = slice(k, k + 4096)
        diff = t.index_select(0, i[rows]) - t.index_select(0, j[rows])
        out[summed[rows]] = (diff ** 2).sum(1)
    return out


def _euclidean_distances(t: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances of the rows of ``t`` (N, D), float64.

    Through the matrix product ``|u|^2 + |v|^2 - 2 u.v`` (one GEMM), except for the pairs where
    that difference cancels (``d^2`` below 1e-6 of ``|u|^2 + |v|^2``: near-identical rows, the
    diagonal), which are summed directly, so identical rows are exactly 0 apart and every
    distance is within about 1e-10 (relative) of scipy's ``cdist``.
    """
    sq = (t * t).sum(1)
    total = sq.unsqueeze(1) + sq.unsqueeze(0)
    # in place on the N x N temporaries (the same values as total - 2 * (t @ t.T))
    d2 = (t @ t.T).mul_(-2.0).add_(total).clamp_min_(0.0)
    i, j = (d2 <= total.mul_(1e-6)).nonzero(as_tuple=True)
    if i.numel():
        d2[i, j] = _exact_squares(t, i, j, sq)
    return d2.sqrt_()
