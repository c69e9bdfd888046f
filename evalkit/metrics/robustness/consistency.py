"""Consistency (Dasgupta et al. 2022): a set-level metric."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..._validation import check_option, check_scalar
from .._removal import flag_nonfinite
from .._ties import RanksFeatures
from ..base import MetricBatch
from ._engine import (
    _flat,
    _quantus_name,
)

_DISCRETISERS = ("top_n_sign", "top_n", "sign", "rank", "floating_points")


class Consistency(RanksFeatures):
    """Consistency of explanations and predictions (Dasgupta, Frost & Moshkovitz 2022).
    **Higher is better.** Set-level.

    Each attribution map is discretised into a label (``discretise_func``); the score of sample
    i is the share of the *other* samples with the same label that also have the same predicted
    class: P(f(x_j) = f(x_i) | e(x_j) = e(x_i), j != i). The global consistency of the data set
    (the same probability over all ordered pairs with equal labels) is ``consistency_`` after a
    call. A sample whose label no other sample shares is NaN with a reason.

    Set-level: a sample's score depends on the other samples in the call (that is the
    definition); it does not depend on ``batch_size`` or the order of the samples.

    Parameters
    ----------
    discretise_func:
        ``"top_n_sign"`` (default): the set of the n features with the largest |a| (ties: lower
        index first) with their signs; ``"top_n"``: that set without signs; ``"sign"``: the sign
        pattern of every feature; ``"rank"``: the full descending order; ``"floating_points"``:
        the values rounded to n decimals; or a callable mapping the (N, D) float64 attributions
        to (N, m) codes (rows compared for equality) or (N,) labels. Quantus' functions of
        these names are recognised and replaced by the ones here.
    n:
        n of the top-n discretisers (default 5; at least 1, else ValueError) or the decimals of
        ``"floating_points"`` (default 2; 0 rounds to integers).

    With the default ``abs=True`` (as in Quantus) every attribution is non-negative, so
    ``"top_n_sign"`` and ``"sign"`` see no negative signs; pass ``abs=False`` to use them.

    Deviations from Quantus 0.6: ``"top_n_sign"`` really takes the n most relevant features
    (Quantus takes the first n entries of the flattened map, deviation C10, so on images every map
    gets the same label); the direction is higher-is-better as in the paper (Quantus declares LOWER,
    deviation C10); a sample without a same-label partner is NaN, not 0; the whole call is one set
    (Quantus compares within each ``batch_size`` chunk).

    Reference: S. Dasgupta, N. Frost, M. Moshkovitz, "Framework for Evaluating Faithfulness of
    Local Explanations", ICML 2022.
    """

    family = "robustness"
    higher_is_better = True
    set_level = True
    default_abs = True
    default_normalise = True
    default_softmax = False
    paper = ("Dasgupta, Frost & Moshkovitz, Framework for Evaluating Faithfulness of Local "
             "Explanations, ICML 2022")

    def __init__(self, discretise_func: Any = "top_n_sign", n: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        discretise_func = _quantus_name(discretise_func, _DISCRETISERS)
        if not callable(discretise_func):
            check_option("discretise_func", discretise_func, _DISCRETISERS)
        self.discretise_func = discretise_func
        self.n = check_scalar("n", n, int, min_val=0, allow_none=True)
        if self.n == 0 and discretise_func in ("top_n_sign", "top_n"):
            raise ValueError(f"`n` must be at least 1 for discretise_func={discretise_func!r} "
                             "(the top 0 features would give every map the same label); got "
                             "0. n=0 is valid for 'floating_points' (0 decimals).")
        self.consistency_: float | None = None

    def _ranks_attributions(self) -> bool:
        # the top-n and rank labels of a constant map are its first indices: any two constant
        # maps would share a label by the tie order alone
        return isinstance(self.discretise_func, str) and self.discretise_func in (
            "top_n_sign", "top_n", "rank")

    def _labels(self, a: torch.Tensor) -> torch.Tensor:
        """(N,) int64 labels: equal iff the discretised maps are equal."""
        flat = _flat(a).to(torch.float64)
        f = self.discretise_func
        if callable(f):
            codes = torch.as_tensor(f(flat), device=a.device)
        elif f in ("top_n_sign", "top_n"):
            n = min(self.n if self.n is not None else 5, flat.shape[1])
            labels = _top_n_labels(flat, n, signs=f == "top_n_sign")
            if labels is not None:
                return labels
            idx = _top_n_set(flat, n)
            codes = idx
            if f == "top_n_sign":
                codes = torch.cat([idx, torch.sign(flat.gather(1, idx)).to(torch.int64)], 1)
        elif f == "sign":
            codes = torch.sign(flat).to(torch.int64)
        elif f == "rank":
            codes = torch.sort(flat, dim=1, descending=True, stable=True).indices
        else:  # floating_points
            decimals = self.n if self.n is not None else 2
            codes = torch.round(flat, decimals=decimals)
        if codes.ndim == 1:
            codes = codes.unsqueeze(1)
        if codes.shape[0] != a.shape[0]:
            raise ValueError(f"`discretise_func` returned {codes.shape[0]} rows for "
                             f"{a.shape[0]} attributions.")
        return _row_labels(codes.reshape(codes.shape[0], -1))

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        batch.require_model()
        x = batch.x
        target = batch.target
        pred = batch.runner.run(  # type: ignore[union-attr]
            lambda index: x.index_select(0, index[0]), (batch.n,),
            reduce=lambda out, index: target.predict_or_nan(out),
            row_shape=tuple(x.shape[1:]), desc="predictions")
        flag_nonfinite(batch, pred)  # a NaN output has no predicted class
        # the set: samples whose attribution and prediction are finite (the others are NaN
        # themselves and nobody's partner)
        ok = batch.defined().to(pred.device)
        pred = target.codes(torch.where(ok.reshape(-1, *([1] * (pred.ndim - 1))), pred,
                                        torch.zeros_like(pred)))
        labels = self._labels(batch.a)  # type: ignore[arg-type]
        # counts per explanation label and per (label, predicted class) pair within the set,
        # O(N)
        w = ok.to(torch.float64)
        n_lab = int(labels.max()) + 1
        pair = labels * (int(pred.max()) + 1) + pred
        same_label = torch.bincount(labels, weights=w, minlength=n_lab)[labels] - w
        same_both = torch.bincount(pair, weights=w)[pair] - w
        defined = ok & (same_label > 0)
        score = same_both / same_label.clamp_min(1)
        batch.set_nan(~defined, "no other sample has the same discretised explanation")
        pairs = float((same_label * w).sum())
        batch.record("consistency", float((same_both * w).sum()) / pairs if pairs
                     else float("nan"))
        return torch.where(defined, score, torch.full_like(score, float("nan")))


#: the most values (samples x features) whose top-n labels :func:`_top_n_labels` packs into
#: bits (two per feature), so that its temporaries stay small; larger maps (images) take the
#: index sets
_PACKED_VALUES = 1 << 22


def _top_n_labels(flat: torch.Tensor, n: int, *, signs: bool) -> torch.Tensor | None:
    """(N,) int64 labels of the top-n sets of the rows of ``flat`` (N, G) float64 (with the
    signs of the selected values when ``signs``), equal iff :func:`_top_n_set` (and the signs
    it gathers) are equal; None where this shortcut does not apply (more than
    :data:`_PACKED_VALUES` values, n = 0, NaN): the caller then takes the index sets.

    A row's set is the n largest |a|, ties at the n-th value broken by the lower index (the
    first n of a stable descending sort). Its n-th largest value (and the one below it) comes
    from one row-wise selection of the values (NumPy's vectorised partition); where the value
    below it differs, the set is every |a| at or above it; rows with a tie across that
    boundary take the lowest-index tied features. The set, and the sign of each selected value
    (positive, zero, negative: two bits), are packed into bits and grouped as integers or byte
    strings: no sort of index sets, no grouping of index rows.
    """
    rows, g = flat.shape
    if n == 0 or rows == 0 or rows * g > _PACKED_VALUES:
        return None
    values = flat.detach().cpu().numpy()
    mag = np.abs(values)
    if np.isnan(mag.sum()):  # a NaN: its place in the order is the index sets' business
        return None
    # the n-th largest value in its sorted place, the smaller values before it (one
    # selection, no sort of the whole row; NumPy's vectorised partition takes one kth only)
    parted = np.partition(mag, g - n, axis=1)
    nth = parted[:, g - n]
    keep = mag >= nth[:, None]
    if n < g:
        # the value just below the n-th largest: the largest of those before it
        tied = np.flatnonzero(parted[:, :g - n].max(axis=1) == nth)
        if tied.size:  # more values equal the n-th than fit: the lowest indices among them
            sub = mag[tied]
            above = sub > nth[tied, None]
            at = sub == nth[tied, None]
            room = n - np.count_nonzero(above, axis=1)
            keep[tied] = above | (at & (np.cumsum(at, axis=1) <= room[:, None]))
    if signs:
        # positive: (1, 0), zero: (1, 1), negative: (0, 1); nothing for an unselected feature
        bits = np.concatenate([keep & (values >= 0), keep & (values <= 0)], axis=1)
    else:
        bits = keep
    packed = np.packbits(bits, axis=1, bitorder="little")
    if packed.shape[1] <= 8:
        wide = np.zeros((rows, 8), dtype=np.uint8)
        wide[:, :packed.shape[1]] = packed
        keys = wide.view(np.uint64).ravel()
    else:
        keys = np.ascontiguousarray(packed).view(
            np.dtype((np.void, packed.shape[1]))).ravel()
    inverse = np.unique(keys, return_inverse=True)[1].reshape(-1)
    return torch.from_numpy(inverse.astype(np.int64)).to(flat.device)


def _top_n_set(flat: torch.Tensor, n: int) -> torch.Tensor:
    """(N, n) int64 indices, ascending, of the n largest |a| per row of ``flat`` (N, G)
    float64, ties broken by the lower index: the first n of a stable descending sort (NaN
    the largest, as torch sorts), as a set.

    NumPy's ``argpartition`` finds the n largest of each row (one selection, no sort; torch's
    row-wise sort and ``topk`` cost about 0.5 us a row more, most of the metric's own time on
    the W4 and W5 benchmarks). Where the n-th largest value is tied with a value outside the
    selection, or a row has a NaN, the selection is not unique: those rows take the stable
    sort."""
    rows = flat.shape[0]
    if n == 0 or rows == 0:
        return torch.empty((rows, 0), dtype=torch.int64, device=flat.device)
    mag = flat.abs().detach().cpu().numpy()
    part = np.argpartition(-mag, n - 1, axis=1)[:, :n]
    # the n-th largest value: argpartition's n-th entry (the others are at least as large)
    nth = mag[np.arange(rows), part[:, n - 1]][:, None]
    # unique: exactly n values >= the n-th largest, and no NaN (argpartition puts NaN last)
    unique = np.count_nonzero(mag >= nth, axis=1) == n
    if np.isnan(mag).any():
        unique &= ~np.isnan(mag).any(1)
    top = np.sort(part, axis=1)
    if not unique.all():
        redo = np.flatnonzero(~unique)
        ordered = torch.sort(torch.from_numpy(mag[redo]), dim=1, descending=True,
                             stable=True).indices[:, :n]
        top[redo] = torch.sort(ordered, dim=1).values.numpy()
    return torch.from_numpy(top.astype(np.int64, copy=False)).to(flat.device)


def _row_labels(codes: torch.Tensor) -> torch.Tensor:
    """(N,) int64 labels of the rows of ``codes`` (N, m): equal iff the rows are equal.

    Integer codes are grouped by their bytes (one sort of N fixed-size byte strings), which
    is many times faster than ``torch.unique(dim=0)`` (the metric's own cost on a small model,
    e.g. the W4 benchmark's MLP); the labels only name groups, so their numbering does not
    matter. Floating-point codes keep ``torch.unique`` (0.0 and -0.0 are equal, their bytes
    are not). Zero-width codes (a callable's (N, 0)) are all equal: every label is 0."""
    if codes.shape[1] == 0:  # torch.unique(dim=0) refuses a zero-sized dimension
        return torch.zeros(codes.shape[0], dtype=torch.int64, device=codes.device)
    if codes.is_floating_point() or codes.is_complex():
        return torch.unique(codes, dim=0, return_inverse=True)[1]
    # the narrowest integer type that holds every code (equal rows stay equal, distinct rows
    # distinct): fewer bytes to sort (top-n indices of a few hundred features fit int16)
    if codes.dtype in (torch.int16, torch.int32, torch.int64):
        lo, hi = (int(v) for v in torch.aminmax(codes))
        for narrow in (torch.int8, torch.int16, torch.int32):
            info = torch.iinfo(narrow)
            if codes.dtype.itemsize > narrow.itemsize and info.min <= lo and hi <= info.max:
                codes = codes.to(narrow)
                break
    arr = np.ascontiguousarray(codes.detach().cpu().numpy())
    rows = arr.view(np.dtype((np.void, arr.dtype.itemsize * arr.shape[1]))).ravel()
    inverse = np.unique(rows, return_inverse=True)[1].reshape(-1)
    return torch.from_numpy(inverse.astype(np.int64)).to(codes.device)
