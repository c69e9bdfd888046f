"""Element selection by integer bit masks: ``torch.where(mask, fill, x)`` without a bool mask.

On the CPU, ``torch.where`` (and ``masked_fill``) copies element by element, about 5 ns per
element in a single thread, and a comparison that makes a bool mask costs a few ns more: for a
small model (a table's MLP, about 0.2 us a row) building a perturbed row this way costs more
than the model. Bitwise operations on an integer view of the same width are vectorised, several
times faster, and select exactly the same bits (NaN payloads and signed zeros included):

``where(m, f, x) == f ^ ((x ^ f) & k)`` with ``k`` all ones where ``m`` is False (keep x), and
zero where it is True, read as integers of the values' width.

:func:`select` is ``torch.where(mask, fill, x)`` for a bool mask; :class:`RankWindows` builds
the rows of a removal curve, ``where(lo <= rank < hi, fill, x)``, from a rank map without ever
making a bool mask (``hi - 1 - rank`` is negative exactly where ``rank >= hi``, so an arithmetic
shift by the width's sign bit is the keep mask). Both fall back to ``torch.where`` where bit
selection does not apply (CUDA, where ``torch.where`` is one fused kernel; dtypes without an
integer of the same width; mixed devices) or does not pay: ``torch.where`` is branchy, fast on
sparse or regular masks and slow on dense random ones, and on chunks too large for the cache
(more than :data:`_CACHE_ELEMENTS`) its one pass beats several bitwise passes, so
:func:`select`, :func:`rank_select` and :func:`window_select` use it there.
"""

from __future__ import annotations

import torch

__all__ = ["RankWindows", "bits_dtype", "rank_select", "replaces_by_where", "select",
           "select_kept", "window_select", "zero_unkept_"]

_BITS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.int64: torch.int64,
    torch.int32: torch.int32,
    torch.int16: torch.int16,
    torch.int8: torch.int8,
    torch.uint8: torch.uint8,
}


#: above this many elements a chunk is memory-bound: torch.where's one pass beats the bit
#: operations' several (measured on (349, 3, 500) rows); below it, bits win on dense masks
_CACHE_ELEMENTS = 1 << 18


def bits_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The integer dtype of ``x``'s width for bit selection, or None where ``torch.where`` is
    the better (or only) choice: non-CPU tensors, bool and complex data."""
    if x.device.type != "cpu":
        return None
    return _BITS.get(x.dtype)


def _as_bits(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # view() of a 0-d tensor to a dtype of the same width is allowed, and so is any stride
    return t if t.dtype == dtype else t.view(dtype)


def _fits(shape: torch.Size, into: torch.Size) -> bool:
    """Whether ``shape`` broadcasts into ``into`` without enlarging it (torch.broadcast_shapes
    costs tens of us a call)."""
    if shape == into:
        return True
    if len(shape) > len(into):
        return False
    return all(a == 1 or a == b for a, b in zip(reversed(shape), reversed(into), strict=False))


def _chunk_bits(x: torch.Tensor, fill: torch.Tensor,
                *others: torch.Tensor) -> torch.dtype | None:
    """The integer dtype for bit selection of one chunk, or None where ``torch.where`` is
    the better (or only) choice: see :func:`bits_dtype`, plus ``fill`` of another dtype or
    device, ``others`` (mask, ranks) on another device, autograd, and chunks larger than
    :data:`_CACHE_ELEMENTS`."""
    bits = bits_dtype(x)
    if (bits is None or fill.dtype != x.dtype or fill.device != x.device
            or any(t.device != x.device for t in others)
            or x.requires_grad or fill.requires_grad or x.numel() > _CACHE_ELEMENTS):
        return None
    return bits


def _blend(x: torch.Tensor, fill: torch.Tensor, keep: torch.Tensor,
           bits: torch.dtype) -> torch.Tensor:
    """``fill ^ ((x ^ fill) & keep)`` on ``bits`` views: x where ``keep`` is all ones, fill
    where it is 0 (``keep`` of dtype ``bits``, broadcastable against x and fill)."""
    fb = _as_bits(fill, bits)
    out = _as_bits(x, bits) ^ fb
    if _fits(keep.shape, out.shape):
        out &= keep
    else:  # the mask is larger than x and fill: the result takes its shape
        out = out & keep
    out ^= fb
    return out.view(x.dtype) if out.dtype != x.dtype else out


def select(mask: torch.Tensor, fill: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``torch.where(mask, fill, x)`` for a bool ``mask`` and ``fill`` of ``x``'s dtype (both
    broadcastable against ``x``; the result has their broadcast shape), bit for bit, through
    an integer view where :func:`bits_dtype` allows."""
    bits = _chunk_bits(x, fill, mask)
    if bits is None or mask.dtype != torch.bool:
        return torch.where(mask, fill, x)
    keep = mask.to(bits)  # 1 where replaced
    keep -= 1  # all ones where kept, 0 where replaced
    return _blend(x, fill, keep, bits)


def select_kept(kept: torch.Tensor, x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``torch.where(kept, x, fill)`` for a bool ``kept`` (True: x's element stays), bit for
    bit: :func:`select` of the complementary mask, without negating it."""
    bits = _chunk_bits(x, fill, kept)
    if bits is None or kept.dtype != torch.bool:
        return torch.where(kept, x, fill)
    keep = kept.to(bits)  # 1 where kept
    keep.neg_()  # all ones where kept, 0 where replaced
    return _blend(x, fill, keep, bits)


def zero_unkept_(out: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``out.masked_fill_(~kept, 0)`` in place for a bool ``kept`` broadcastable into ``out``
    (True: the element stays; ``out`` non-overlapping: no expanded view), bit for bit (a
    zeroed float is +0.0): an AND of ``out``'s bits with the mask widened to all ones,
    without negating the mask (about 2.5 times faster than a negation and ``masked_fill_`` on
    the CPU, (64, 3, 500) float32 rows), where :func:`bits_dtype` allows and the chunk is
    cache-sized; else ``masked_fill_``."""
    bits = bits_dtype(out)
    if (bits is None or kept.dtype != torch.bool or kept.device != out.device
            or out.requires_grad or out.numel() > _CACHE_ELEMENTS
            or not _fits(kept.shape, out.shape)):
        return out.masked_fill_(~kept, 0)
    keep = kept.to(bits)  # 1 where kept
    keep.neg_()  # all ones where kept, 0 where zeroed
    _as_bits(out, bits).bitwise_and_(keep)
    return out


class RankWindows:
    """The rows ``where(lo <= rank < hi, fill, x)`` of a batch, row by row, bit for bit.

    ``x`` (N, ...); ``fill`` the replacement values of ``x``'s dtype, broadcastable against x
    (one value per sample, per element, or shared); ``rank`` (N, ...) integer, broadcastable
    against x (the rank of each element's group in its sample's order). Use :meth:`make` to
    get an instance only where bit selection applies (else None: use ``torch.where``).
    """

    def __init__(self, x: torch.Tensor, fill: torch.Tensor, rank: torch.Tensor,
                 bits: torch.dtype) -> None:
        self.dtype = x.dtype
        self.bits = bits
        xb = _as_bits(x, bits)
        #: x's bits (a view): a prefix row is x ^ (diff & replaced)
        self.x = xb
        if fill.ndim < x.ndim:
            fill = fill.reshape((1,) * (x.ndim - fill.ndim) + tuple(fill.shape))
        fb = _as_bits(fill, bits)
        #: x ^ fill per sample: a row is fill ^ (diff & keep)
        self.diff = (xb ^ fb).contiguous()
        self.fill = fb.contiguous()
        self.shared_fill = fb.shape[0] == 1
        # ranks in int32 where they fit (half the bytes to gather); the sign bit of
        # hi - 1 - rank is the keep mask
        wide = int(rank.max()) >= 2**30 if rank.numel() else False
        self.rank_dtype = torch.int64 if wide else torch.int32
        self.rank = rank.to(self.rank_dtype).contiguous()
        self.shift = 63 if wide else 31

    @classmethod
    def make(cls, x: torch.Tensor, fill: torch.Tensor, rank: torch.Tensor) -> RankWindows | None:
        """An instance, or None where bit selection does not apply (see :func:`bits_dtype`;
        ``fill`` must be a tensor on x's device, of x's dtype after conversion)."""
        bits = bits_dtype(x)
        if (bits is None or not isinstance(fill, torch.Tensor) or fill.device != x.device
                or x.requires_grad or fill.requires_grad):
            return None
        if fill.dtype != x.dtype:
            if fill.is_complex() or fill.dtype == torch.bool:
                return None
            fill = fill.to(x.dtype)
        return cls(x, fill, rank, bits)

    def thresholds(self, t: torch.Tensor) -> torch.Tensor:
        """Per-row rank bounds (M,) in the rank dtype, to pass to :meth:`rows` (converted once
        for all rows, not per chunk)."""
        return t.to(self.rank_dtype)

    def rows(self, i: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor | None = None, *,
             out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows of samples ``i`` (B,) with the elements of rank ``lo <= rank < hi`` replaced
        (``hi``, ``lo`` (B,) from :meth:`thresholds`; ``lo`` None: 0). ``out``: a contiguous
        (B, ...) tensor of x's dtype to write the rows into (e.g. part of a larger chunk)."""
        r = self.rank.index_select(0, i)
        shape = (-1,) + (1,) * (r.ndim - 1)
        if lo is None:
            # rank - hi is negative exactly where an element is replaced: its sign spread by
            # the shift is the replace mask, computed in place on the gathered ranks (a new
            # mask buffer and a broadcast xor with the fill cost more than a gather of x)
            r -= hi.reshape(shape)
            r >>= self.shift
            if r.dtype != self.bits:  # -1 and 0 convert exactly to any signed width
                r = r.to(self.bits)
            out = self._gather_diff(i, out)
            out &= r
            out ^= self.x.index_select(0, i)
            return out.view(self.dtype) if out.dtype != self.dtype else out
        keep = (hi - 1).reshape(shape) - r  # negative where rank >= hi
        keep >>= self.shift
        below = r - lo.reshape(shape)  # also kept where rank < lo
        below >>= self.shift
        keep |= below
        if keep.dtype != self.bits:  # -1 and 0 convert exactly to any signed width
            keep = keep.to(self.bits)
        out = self._gather_diff(i, out)
        out &= keep
        out ^= self.fill if self.shared_fill else self.fill.index_select(0, i)
        return out.view(self.dtype) if out.dtype != self.dtype else out

    def _gather_diff(self, i: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
        """``diff`` of samples ``i``, as a new tensor or written into ``out`` (bits view)."""
        if out is None:
            return self.diff.index_select(0, i)
        return torch.index_select(self.diff, 0, i, out=_as_bits(out, self.bits))


def replaces_by_where(modality: object) -> bool:
    """Whether ``modality.replace(x, mask, fill)`` is the plain ``torch.where(mask, fill, x)``
    of :meth:`evalkit.modality.Modality.replace` (not overridden, e.g. by token ids' checks),
    so that :func:`select` and :class:`RankWindows` may stand in for it."""
    from ..modality import Modality

    return getattr(type(modality), "replace", None) is Modality.replace


def rank_select(rank: torch.Tensor, bound: torch.Tensor, fill: torch.Tensor, x: torch.Tensor,
                *, below: bool = True) -> torch.Tensor:
    """``torch.where(rank < bound, fill, x)`` (``below`` False: ``rank >= bound``), bit for bit,
    without a bool mask where :func:`bits_dtype` allows.

    ``rank`` integer (B, ...), ``bound`` integer broadcastable against it (e.g. (B, 1, ...)),
    both non-negative and below 2**31 (int32) or 2**62; ``fill`` of x's dtype,
    broadcastable against x, with ``rank`` broadcastable against x too."""
    bits = _chunk_bits(x, fill, rank)
    if bits is None:
        return torch.where(rank < bound if below else rank >= bound, fill, x)
    shift = 8 * rank.element_size() - 1
    if below:  # replace where rank < bound: keep where bound - 1 - rank < 0
        keep = (bound - 1) - rank
    else:  # replace where rank >= bound: keep where rank - bound < 0
        keep = rank - bound
    keep >>= shift
    if keep.dtype != bits:
        keep = keep.to(bits)
    return _blend(x, fill, keep, bits)


def window_select(rank: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, fill: torch.Tensor,
                  x: torch.Tensor) -> torch.Tensor:
    """``torch.where((lo <= rank) & (rank < hi), fill, x)``, bit for bit, without a bool mask
    where :func:`bits_dtype` allows (``rank``, ``lo``, ``hi`` as in :func:`rank_select`)."""
    bits = _chunk_bits(x, fill, rank)
    if bits is None:
        return torch.where((rank >= lo) & (rank < hi), fill, x)
    shift = 8 * rank.element_size() - 1
    keep = (hi - 1) - rank  # negative where rank >= hi
    keep >>= shift
    below = rank - lo  # negative where rank < lo
    below >>= shift
    keep |= below
    if keep.dtype != bits:
        keep = keep.to(bits)
    return _blend(x, fill, keep, bits)
