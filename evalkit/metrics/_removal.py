"""The shared kernel of removal and insertion curves.

Many faithfulness metrics are the same computation with different knobs: order the feature
groups by attribution, perturb a *window* of that order (the first k groups for a deletion
curve, all but the first k for an insertion curve, groups k..k+s for a single-block removal),
replace the perturbed groups with a baseline or an imputer, and read the model's target score.

:func:`window_scores` does that for every sample and step in one runner call, building each
perturbed input on the fly from a per-element rank map: the input of (sample i, row t) is
``where(lo[i, t] <= rank_i < hi[i, t], baseline_i, x_i)``. Rows that perturb nothing reuse the
score of the unperturbed input (:func:`clean_scores`), consecutive duplicate rows (a sample
with fewer groups than the longest) are computed once, and when a
:func:`~evalkit.cache.forward_cache` is active, rows another metric already computed on the
same model, input, order and baseline are read from the cache instead of being forwarded.

Every replacement goes through the batch's modality: a baseline's values come from
:meth:`~evalkit.modality.Modality.baseline_values` and are put in with
:meth:`~evalkit.modality.Modality.replace`, an imputer fills through
:func:`~evalkit.perturb.baselines.impute`. On token ids that means the mask token (or an explicit
id, or deletion with re-padding, :class:`~evalkit.perturb.TokenDeletion`), never a cast to
floating point; on numeric data the values are the baseline's own, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .. import _rng
from ..cache import active_cache, combine_hashes, model_key, row_hashes
from ..modality import Modality
from ..perturb import FeatureGrouping, Grouping, Imputer, rank_groups
from ..perturb._select import RankWindows, replaces_by_where, window_select
from ..perturb.baselines import Baseline, impute
from ..runner import take_rows
from ._sorting import stable_argsort_rows
from .base import MetricBatch

__all__ = [
    "Ordering",
    "RemovalPlan",
    "RowWriter",
    "baseline_values",
    "block_windows",
    "cached_rows",
    "clean_scores",
    "group_scores",
    "identity_groups",
    "order_groups",
    "removal_curve",
    "row_range",
    "run_row_sources",
    "run_rows",
    "sample_fingerprints",
    "steps_from_features_in_step",
    "subset_scores",
    "trapezoid_auc",
    "window_scores",
]

_ORDERS = ("morf", "lerf", "random", "index")


@dataclass(frozen=True)
class RemovalPlan:
    """How groups are ordered and replaced.

    ``order``: ``"morf"`` (most relevant first), ``"lerf"`` (least relevant first),
    ``"random"`` (a seeded random order per sample) or ``"index"`` (group-id order, e.g. the
    raster scan of patches); ``group_reduction``: how a group's attribution is summarised for
    the ordering (``"sum"``, ``"mean"`` or ``"max"``); ``mode``: ``"deletion"`` replaces the
    first k groups of x by the baseline, ``"insertion"`` starts from the baseline and puts the
    first k groups of x back.
    """

    grouping: FeatureGrouping
    imputer: Imputer
    order: str = "morf"
    group_reduction: str = "sum"
    mode: str = "deletion"


@dataclass
class Ordering:
    """The groups of a batch, their attribution per group, and the order they are perturbed in.

    ``group_scores`` (N, G) float64 (NaN for groups a sample lacks); ``order`` (N, G) group ids,
    first perturbed first; ``rank_map`` (N, Cg, *S) the position of each element's group in its
    sample's order (broadcastable against x).
    """

    grouping: Grouping
    group_scores: torch.Tensor
    order: torch.Tensor
    rank_map: torch.Tensor
    order_name: str

    @property
    def n_groups(self) -> torch.Tensor:
        return self.grouping.n_groups


def order_groups(
    batch: MetricBatch,
    grouping: FeatureGrouping | Grouping,
    order: str = "morf",
    group_reduction: str = "sum",
    *,
    stream: int = 0x0DE5,
) -> Ordering:
    """Group the batch's inputs and order the groups by the batch's attributions."""
    if order not in _ORDERS:
        raise ValueError(f"`order` must be one of {_ORDERS}; got {order!r}.")
    if batch.a is None:
        raise ValueError(f"{type(batch.metric).__name__} needs attributions.")
    grp = (grouping if isinstance(grouping, Grouping)
           else grouping.for_modality(batch.modality)(batch.x))
    g_max = grp.max_groups
    complete = grp.complete  # every sample has every group
    identity = complete and identity_groups(grp)
    scores = group_scores(grp, batch.a, group_reduction, identity=identity)
    if order in ("morf", "lerf") and scores.device.type == "cpu" and scores.ndim == 2:
        order_t = _rank_on_cpu(scores, None if complete else grp.valid(), order)
    elif order == "index":
        ids = torch.arange(g_max, device=scores.device, dtype=torch.float64)
        order_t = rank_groups(-ids.expand_as(scores), grp.valid(), "morf")
    elif order == "random":
        keys = _rng.permutation_keys(_rng.combine(batch.keys, stream), g_max)
        order_t = rank_groups(scores, grp.valid(), "random", random_keys=keys)
    else:
        order_t = rank_groups(scores, grp.valid(), order)
    rank = torch.empty_like(order_t).scatter_(
        1, order_t, torch.arange(order_t.shape[1], device=order_t.device).expand_as(order_t)
        .contiguous()
    )
    if identity:
        # one group per element in group-id order (pixels of a 1-channel map, a table's
        # columns): the rank map is the ranks themselves, no gather through the labels
        rank_map = rank.view(rank.shape[0], *grp.labels.shape[1:])
    else:
        rank_map = grp.expand(rank)
    return Ordering(grp, scores, order_t, rank_map, order)


def identity_groups(grp: Grouping) -> bool:
    """Whether ``grp`` is one shared label map 0..G-1 in element order and every sample has
    every group (pixels of a 1-channel map, a table's columns): per-group values are then
    the elements' own, in order (:func:`group_scores`, ``Grouping.expand`` is a reshape)."""
    return grp.one_element_per_group()


def group_scores(grp: Grouping, a: torch.Tensor, reduction: str = "sum", *,
                 identity: bool | None = None) -> torch.Tensor:
    """``grp.reduce(a, reduction)``, the same values; where every group is one element of
    ``a`` in order (``identity``: :func:`identity_groups`, computed if None) a ``"sum"`` or
    ``"mean"`` is the elements themselves plus 0.0 (as the reduction's own shortcut for such
    groups: -0.0 becomes 0.0), without the reduction's checks and broadcasts."""
    n = a.shape[0]
    if (reduction in ("sum", "mean") and a.shape == (n, *grp.labels.shape[1:])
            and (identity_groups(grp) if identity is None else identity)):
        dtype = a.dtype if a.is_floating_point() else torch.float32
        return a.reshape(n, -1).to(dtype) + 0.0
    return grp.reduce(a, reduction)


def _rank_on_cpu(scores: torch.Tensor, valid: torch.Tensor | None, order: str) -> torch.Tensor:
    """:func:`~evalkit.perturb.rank_groups` of ``scores`` (N, G) on the CPU for ``"morf"`` or
    ``"lerf"`` (``valid`` None: every group exists), the same order: the scores as float64
    with NaN as 0 (and infinities as the largest finite values, as ``nan_to_num``), missing
    groups last, ties in group-id order; ranked by one sort of packed words
    (:func:`~evalkit.metrics._sorting.stable_argsort_rows`) instead of an argsort and a
    sort."""
    s = scores.detach().to(torch.float64).numpy()
    if not np.isfinite(s).all():
        s = np.nan_to_num(s, nan=0.0)
    if valid is not None:
        s = np.where(valid.numpy(), s, -np.inf if order == "morf" else np.inf)
    keys = np.negative(s) if order == "morf" else s
    return torch.from_numpy(stable_argsort_rows(keys))


def block_windows(n_groups: torch.Tensor, features_in_step: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Non-overlapping blocks of ``features_in_step`` groups in a sample's order:
    ``(lo, hi, valid)``, each (N, T) with T = ceil(max G / features_in_step); block t spans
    ranks [lo, hi) and ``valid`` marks the blocks a sample has (it may have fewer groups)."""
    t_count = -(-int(n_groups.max()) // features_in_step)
    t = torch.arange(t_count, device=n_groups.device)
    lo = (t * features_in_step).unsqueeze(0).expand(n_groups.shape[0], -1)
    return lo, lo + features_in_step, lo < n_groups.unsqueeze(1)


def steps_from_features_in_step(n_groups: torch.Tensor, features_in_step: int) -> torch.Tensor:
    """k_t = min(t * features_in_step, G_i) for t = 0..T, T = ceil(max G / features_in_step).

    Returns (N, T + 1) int64 counts of groups perturbed at each step (step 0: none).
    """
    g_max = int(n_groups.max())
    n_steps = -(-g_max // features_in_step)
    t = torch.arange(n_steps + 1, device=n_groups.device, dtype=torch.int64)
    return torch.minimum(t.unsqueeze(0) * features_in_step, n_groups.unsqueeze(1))


# ---------------------------------------------------------------------- row runner
QUANTITIES = ("score", "correct")


def _reducer(batch: MetricBatch, quantity: str, y_rows: torch.Tensor | None):
    """``score``: the wrapper's target score; ``correct``: 1.0 where the target's prediction
    is the label (``Target.hits``; NaN for rows with non-finite outputs)."""
    if quantity == "score":
        return None
    if quantity == "correct":
        if y_rows is None:
            raise ValueError(f"{type(batch.metric).__name__} needs labels `y` for accuracy.")
        target = batch.target

        def reduce(outputs: torch.Tensor, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return target.hits(outputs, y_rows[index[0]])

        return reduce
    raise ValueError(f"Unknown quantity {quantity!r}; use one of {QUANTITIES}.")


#: the reason a sample is undefined when the model gave a non-finite value for one of its rows
NONFINITE_OUTPUT = "the model's output is not finite (NaN or Inf) on an input the metric ran"


def flag_nonfinite(batch: MetricBatch, values: torch.Tensor,
                   sample_idx: torch.Tensor | None = None) -> None:
    """Mark the samples with a non-finite model value undefined (:data:`NONFINITE_OUTPUT`), so
    that no later step (a correlation, a comparison) turns a NaN into a number silently.

    ``values``: (N, ...) with the samples along the first axis, or (M,) rows of the samples
    ``sample_idx`` (M,)."""
    finite = torch.isfinite(values)
    if bool(finite.all()):  # the common case: one reduction, no per-sample bookkeeping
        return
    bad = ~finite
    if sample_idx is None:
        per_sample = bad.reshape(values.shape[0], -1).any(1)
    else:
        per_sample = torch.zeros(batch.n, dtype=torch.bool, device=values.device)
        per_sample[sample_idx.to(values.device)[bad]] = True
    if bool(per_sample.any()):
        batch.set_nan(per_sample, NONFINITE_OUTPUT)


@dataclass(frozen=True)
class RowWriter:
    """A source's rows that can be written straight into part of a larger chunk:
    ``write(m, out)`` writes the rows ``m`` (B,) into ``out``, a new contiguous (B, *shape)
    tensor of ``dtype``. Called with ``m`` alone it returns the rows as a new tensor, like any
    builder (or ``alone(m)``, where given: e.g. a plain gather). A chunk that spans the
    samples' own rows and a metric's perturbed rows is then built in one buffer
    (:func:`_forward_sources`), not built in parts and concatenated (one copy of every row
    fewer)."""

    write: Callable[[torch.Tensor, torch.Tensor], object]
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    alone: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, m: torch.Tensor) -> torch.Tensor:
        if self.alone is not None:
            return self.alone(m)
        out = torch.empty((int(m.shape[0]), *self.shape), dtype=self.dtype, device=self.device)
        self.write(m, out)
        return out


def row_range(m: torch.Tensor) -> tuple[int, int] | None:
    """``(start, stop)`` where the row ids ``m`` (B,) are ``arange(start, stop)`` (the
    runner's chunks: the rows are then slices, views, not gathers), else None."""
    k = int(m.shape[0])
    if k == 0:
        return None
    start = int(m[0])
    if int(m[-1]) - start + 1 != k or (k > 2 and not bool((m.diff() == 1).all())):
        return None
    return start, start + k


def _one_buffer(pieces: list[tuple[int, Callable[[torch.Tensor], torch.Tensor] | torch.Tensor]],
                x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """One builder for the rows of all ``pieces`` in order, or None where a piece cannot write
    into a shared buffer (it is not a :class:`RowWriter` of x's rows; a tensor of rows gains
    nothing: its part of a chunk is copied either way, and its chunks are views): a chunk
    inside one piece is that piece's own rows, a chunk across pieces is one new tensor that
    each piece writes its part of. The runner then forwards one source: the same rows in the
    same chunks, without building the parts separately and concatenating them."""
    shape = tuple(x.shape[1:])
    for _, build in pieces:
        if not (isinstance(build, RowWriter) and build.dtype == x.dtype
                and build.shape == shape and build.device == x.device):
            return None
    offsets = [0]
    for rows, _ in pieces:
        offsets.append(offsets[-1] + rows)
    device = x.device

    def build(mm: torch.Tensor) -> torch.Tensor:
        # the runner asks for consecutive rows: mm is arange(start, stop)
        start = int(mm[0]) if mm.shape[0] else 0
        stop = start + int(mm.shape[0])
        parts = [(src, lo, max(start, lo), min(stop, hi))
                 for (_, src), lo, hi in zip(pieces, offsets[:-1], offsets[1:], strict=True)
                 if max(start, lo) < min(stop, hi)]
        if len(parts) == 1:
            src, lo, a, b = parts[0]
            return src(mm if lo == 0 else mm - lo)
        out = torch.empty((stop - start, *shape), dtype=x.dtype, device=device)
        for src, lo, a, b in parts:
            src.write(torch.arange(a - lo, b - lo, dtype=torch.int64, device=device),
                      out[a - start:b - start])
        return out

    return build


@dataclass
class _Rows:
    """One source of rows for :func:`_forward_sources`: ``build(m) -> inputs`` for its row ids
    ``m`` (B,), whose samples are ``sample_idx`` (M,); with ``fingerprints`` (N,) and
    ``row_keys`` (M,) its rows go through the active forward cache (:func:`cached_rows`)."""

    #: or the rows themselves, a tensor of the metric's own making (its chunks are views)
    build: Callable[[torch.Tensor], torch.Tensor] | torch.Tensor
    sample_idx: torch.Tensor
    row_keys: list | None = None
    fingerprints: list[bytes] | None = None


def _forward_sources(batch: MetricBatch, sources: list[_Rows], quantity: str,
                     desc: str | None) -> list[torch.Tensor]:
    """(M_k,) float64 values of the rows of each source. Rows an active forward cache holds
    are read from it; all the others, of every source, run in ONE chunked runner pass
    (:meth:`~evalkit.runner.ForwardRunner.run_concat`), so that a metric's unperturbed and
    perturbed rows share full chunks instead of two half-empty calls. Samples with a
    non-finite value are flagged (:func:`flag_nonfinite`); new values are stored in the
    cache."""
    batch.require_model()
    cache = active_cache()
    device = batch.device
    outs: list[torch.Tensor | None] = []
    runs: list[tuple[_Rows, torch.Tensor | None, list[bytes] | None]] = []
    for src in sources:
        m = int(src.sample_idx.shape[0])
        if cache is None or src.fingerprints is None or m == 0:
            outs.append(None)
            runs.append((src, None, None))
            continue
        assert src.row_keys is not None
        fps = combine_hashes(src.fingerprints, quantity.encode())
        s_list = src.sample_idx.tolist()
        groups: dict[int, list[int]] = {}
        for j, i in enumerate(s_list):
            groups.setdefault(i, []).append(j)
        order = sorted(groups)
        got = cache.lookup([fps[i] for i in order],
                           [[src.row_keys[j] for j in groups[i]] for i in order])
        out = torch.full((m,), float("nan"), dtype=torch.float64, device=device)
        missing: list[int] = []
        hit_rows: list[int] = []
        hit_values: list[float] = []
        for i, vals in zip(order, got, strict=True):
            for j, v in zip(groups[i], vals, strict=True):
                if v is None:
                    missing.append(j)
                else:
                    hit_rows.append(j)
                    hit_values.append(v)
        if hit_rows:  # one copy to the device, not one per cached row
            out[torch.tensor(hit_rows, dtype=torch.int64, device=device)] = torch.tensor(
                hit_values, dtype=torch.float64, device=device)
        outs.append(out)
        miss = torch.tensor(sorted(missing), dtype=torch.int64, device=device)
        runs.append((src, miss, fps))

    # the rows to run: all of a source's, or its cache misses
    pieces: list[tuple[int, Callable[[torch.Tensor], torch.Tensor] | torch.Tensor]] = []
    samples: list[torch.Tensor] = []
    for src, miss, _ in runs:
        if miss is None:
            if src.sample_idx.shape[0]:
                pieces.append((int(src.sample_idx.shape[0]), src.build))
                samples.append(src.sample_idx)
        elif miss.shape[0]:
            build = src.build
            if isinstance(build, torch.Tensor):
                pieces.append((int(miss.shape[0]), lambda mm, rows=build, miss=miss:
                               rows.index_select(0, miss.index_select(0, mm))))
            else:
                pieces.append((int(miss.shape[0]), lambda mm, build=build, miss=miss:
                               build(miss.index_select(0, mm))))
            samples.append(src.sample_idx.index_select(0, miss))
    new = None
    if len(pieces) > 1 and all(miss is None for _, miss, _ in runs):
        fused = _one_buffer(pieces, batch.x)
        if fused is not None:
            pieces = [(sum(rows for rows, _ in pieces), fused)]
    if pieces:
        sample_idx = samples[0] if len(samples) == 1 else torch.cat(samples)
        y_rows = None if batch.y is None else take_rows(batch.y, sample_idx)
        new = batch.runner.run_concat(  # type: ignore[union-attr]
            pieces, y=y_rows, reduce=_reducer(batch, quantity, y_rows),
            row_shape=tuple(batch.x.shape[1:]), desc=desc,
        ).to(torch.float64)
        flag_nonfinite(batch, new, sample_idx)

    results: list[torch.Tensor] = []
    pos = 0
    whole = len(runs) == 1
    for (src, miss, fps), out in zip(runs, outs, strict=True):
        if miss is None:
            m = int(src.sample_idx.shape[0])
            if m == 0:
                results.append(torch.empty(0, dtype=torch.float64, device=device))
                continue
            assert new is not None
            results.append(new if whole else new[pos:pos + m])
            pos += m
            continue
        assert out is not None and fps is not None
        k = int(miss.shape[0])
        if k:
            assert new is not None
            vals = new[pos:pos + k]
            pos += k
            out[miss] = vals
            s_list = src.sample_idx.tolist()
            per: dict[int, tuple[list, list]] = {}
            for j, v in zip(miss.tolist(), vals.tolist(), strict=True):
                ks, vs = per.setdefault(s_list[j], ([], []))
                ks.append(src.row_keys[j])  # type: ignore[index]
                vs.append(v)
            idxs = sorted(per)
            cache.store([fps[i] for i in idxs], [per[i][0] for i in idxs],  # type: ignore[union-attr]
                        [per[i][1] for i in idxs])
        if k < int(src.sample_idx.shape[0]):  # cached rows: the rows run were flagged above
            flag_nonfinite(batch, out, src.sample_idx)
        results.append(out)
    return results


def _clean_source(batch: MetricBatch, quantity: str) -> _Rows | None:
    """The samples' own rows as a source, or None where this call already has their values
    (:func:`clean_scores`)."""
    if batch.extra.get(f"_clean_{quantity}") is not None:
        return None
    x = batch.x
    n = batch.n
    # copies of the rows (not views of the user's x, which a model that writes into its
    # input would change)
    rows = RowWriter(lambda m, out: torch.index_select(x, 0, m, out=out), tuple(x.shape[1:]),
                     x.dtype, x.device, alone=lambda m: x.index_select(0, m))
    return _Rows(rows, torch.arange(n, device=x.device), [()] * n,
                 sample_fingerprints(batch, b"clean"))


def _forward_with_clean(batch: MetricBatch, rows: _Rows, quantity: str, desc: str | None,
                        with_clean: bool) -> torch.Tensor:
    """The values of ``rows``; with ``with_clean``, the samples' own rows (where this call
    has not got them yet) run first in the same pass and are kept for :func:`clean_scores`."""
    clean = _clean_source(batch, quantity) if with_clean else None
    if clean is None:
        return _forward_sources(batch, [rows], quantity, desc)[0]
    clean_values, values = _forward_sources(batch, [clean, rows], quantity, desc)
    batch.extra[f"_clean_{quantity}"] = clean_values
    return values


def run_rows(batch: MetricBatch, build_rows, sample_idx: torch.Tensor, *,
             quantity: str = "score", desc: str | None = None,
             with_clean: bool = False) -> torch.Tensor:
    """Run the model on M irregular rows: ``build_rows(m) -> inputs`` for row ids ``m`` (B,),
    whose samples are ``sample_idx`` (M,) (for the labels). Returns (M,) float64 values;
    samples with a non-finite value are flagged (:func:`flag_nonfinite`).

    ``with_clean``: the metric will also read :func:`clean_scores`; the samples' own rows then
    run in the same pass (fewer, fuller forward calls), unless this call already has them."""
    batch.require_model()
    if int(sample_idx.shape[0]) == 0 and not with_clean:
        return torch.empty(0, dtype=torch.float64, device=batch.device)
    return _forward_with_clean(batch, _Rows(build_rows, sample_idx), quantity, desc,
                               with_clean)


def run_row_sources(batch: MetricBatch, sources: list[tuple], *, quantity: str = "score",
                    desc: str | None = None, with_clean: bool = False) -> list[torch.Tensor]:
    """:func:`run_rows` for several sources of rows at once, all in one chunked pass:
    ``sources`` are ``(build_rows, sample_idx)`` pairs (``build_rows`` a function of the
    source's row ids, or a tensor of its rows of the metric's own making); returns each
    source's (M_k,) float64 values. ``with_clean`` as in :func:`run_rows`."""
    batch.require_model()
    rows = [_Rows(build, idx) for build, idx in sources]
    clean = _clean_source(batch, quantity) if with_clean else None
    if clean is None:
        return _forward_sources(batch, rows, quantity, desc)
    clean_values, *values = _forward_sources(batch, [clean, *rows], quantity, desc)
    batch.extra[f"_clean_{quantity}"] = clean_values
    return values


def cached_rows(
    batch: MetricBatch,
    sample_idx: torch.Tensor,
    row_keys: list,
    fingerprints: list[bytes] | None,
    build_rows,
    *,
    quantity: str = "score",
    desc: str | None = None,
    with_clean: bool = False,
) -> torch.Tensor:
    """:func:`run_rows` through the active :func:`~evalkit.cache.forward_cache` (if any).

    Row m belongs to sample ``sample_idx[m]`` and has the hashable key ``row_keys[m]`` within
    that sample; ``fingerprints`` (N,) identify everything else that determines the inputs
    (see :mod:`evalkit.cache`). Without an active cache (or fingerprints) this is
    :func:`run_rows`. ``build_rows`` may also be a tensor of the M rows, of the metric's own
    making (the runner then forwards views of it). ``with_clean``: as in :func:`run_rows`
    (the samples' own rows go through the cache too: a cached unperturbed score is read, not
    forwarded).
    """
    batch.require_model()
    if int(sample_idx.shape[0]) == 0 and not with_clean:
        return torch.empty(0, dtype=torch.float64, device=batch.device)
    use_cache = active_cache() is not None and fingerprints is not None
    rows = _Rows(build_rows, sample_idx, row_keys if use_cache else None,
                 fingerprints if use_cache else None)
    return _forward_with_clean(batch, rows, quantity, desc, with_clean)


def sample_fingerprints(batch: MetricBatch, *parts: list[bytes] | bytes) -> list[bytes] | None:
    """Per-sample fingerprints for :func:`cached_rows`: model, input, label and ``parts``
    (None when no cache is active, so nothing is hashed)."""
    if active_cache() is None:
        return None
    return combine_hashes(_model_and_inputs(batch), *parts) if parts else _model_and_inputs(batch)


def clean_scores(batch: MetricBatch, quantity: str = "score") -> torch.Tensor:
    """(N,) float64 target scores (or correctness) of the unperturbed inputs, computed once per
    call and shared between metrics through the cache (metrics that also run perturbed rows
    get them in the same pass with ``with_clean=True``)."""
    memo_key = f"_clean_{quantity}"
    memo = batch.extra.get(memo_key)
    if memo is not None:
        return memo
    batch.require_model()
    source = _clean_source(batch, quantity)
    assert source is not None
    out = _forward_sources(batch, [source], quantity, "unperturbed")[0]
    batch.extra[memo_key] = out
    return out


def _model_and_inputs(batch: MetricBatch) -> list[bytes]:
    memo = batch.extra.get("_fp_base")
    if memo is None:
        mk = model_key(batch.model)
        memo = combine_hashes(row_hashes(batch.x, batch.n), row_hashes(batch.y, batch.n), mk)
        batch.extra["_fp_base"] = memo
    return memo


# ---------------------------------------------------------------------- subsets
def baseline_values(imputer: Imputer, x: torch.Tensor, keys: torch.Tensor | None,
                    modality: Modality | None = None) -> torch.Tensor | None:
    """Per-sample replacement values (N, ...) of a mask-independent baseline (computed once
    and reused for every perturbed row of a sample), else None (the imputer looks at the
    mask, so it fills each row). With the batch's ``modality`` the values come from it (token
    ids: the mask token or explicit ids, never a cast)."""
    if not isinstance(imputer, Baseline):
        return None
    keys = keys if imputer.stochastic else None
    base = (imputer.values(x, keys) if modality is None
            else modality.baseline_values(imputer, x, keys))
    return base.expand_as(x) if base.shape[0] == 1 else base


def subset_scores(
    batch: MetricBatch,
    imputer: Imputer,
    shape: tuple[int, ...],
    mask_of: Callable[..., torch.Tensor] | None = None,
    *,
    fill_of: Callable[..., torch.Tensor] | None = None,
    keys_of: Callable[..., torch.Tensor] | None = None,
    window_of: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None,
    desc: str | None = None,
) -> torch.Tensor:
    """Target scores (N, *shape) float64 of every sample with a subset of its features
    replaced: the kernel of the subset and correlation metrics.

    Row (i, j...) perturbs the elements ``mask_of(i, j...)`` ((B, ...) bool, broadcastable
    against ``x[i]``) of sample i, replaced through the batch's modality
    (:meth:`~evalkit.modality.Modality.replace`) by the baseline's per-sample values, or by
    ``fill_of(i, j...)`` (e.g. one random draw per row), or filled by a mask-dependent
    imputer with the keys ``keys_of(i, j...)`` (default: the samples' keys). All rows run in
    one runner call, built chunk by chunk; samples with a non-finite output are flagged
    (:func:`flag_nonfinite`).

    ``window_of(i, j...) -> (rank, lo, hi)`` may stand in for ``mask_of`` where the mask is a
    window of a rank map, ``lo <= rank < hi`` (``rank`` (B, ...) integer, ``lo``/``hi``
    broadcastable against it): with a baseline, such rows are selected bit by bit without
    a bool mask (:func:`~evalkit.perturb._select.window_select`).
    """
    if (mask_of is None) == (window_of is None):
        raise ValueError("subset_scores needs exactly one of `mask_of` and `window_of`.")
    batch.require_model()
    x = batch.x
    modality = batch.modality
    sample_keys = batch.keys if imputer.stochastic else None
    base = baseline_values(imputer, x, batch.keys, modality) if fill_of is None else None
    is_baseline = isinstance(imputer, Baseline)
    # where the modality replaces by torch.where, window_of rows are selected bit by bit (the
    # same values, several times faster on the CPU, no bool compare: evalkit.perturb._select);
    # a bool mask from mask_of goes to torch.where (fast for sparse masks such as random
    # subsets)
    by_where = replaces_by_where(modality)
    replace = modality.replace

    def window_rows(index: tuple[torch.Tensor, ...], fill: torch.Tensor) -> torch.Tensor:
        rank, lo, hi = window_of(*index)  # type: ignore[misc]
        xi = x.index_select(0, index[0])
        fill_t = torch.as_tensor(fill, device=x.device)
        if by_where and fill_t.dtype == x.dtype:
            return window_select(rank, lo, hi, fill_t, xi)
        return replace(xi, (rank >= lo) & (rank < hi), fill_t)

    def build(index: tuple[torch.Tensor, ...]) -> torch.Tensor:
        i = index[0]
        if window_of is not None and (base is not None or (fill_of is not None
                                                           and is_baseline)):
            return window_rows(index, fill_of(*index) if fill_of is not None
                               else base.index_select(0, i))
        if window_of is not None:
            rank, lo, hi = window_of(*index)
            mask = (rank >= lo) & (rank < hi)
        else:
            mask = mask_of(*index)
        if fill_of is not None and is_baseline:
            return replace(x.index_select(0, i), mask, fill_of(*index))
        if base is not None:
            return replace(x.index_select(0, i), mask, base.index_select(0, i))
        if keys_of is not None:
            keys = keys_of(*index)
        else:
            keys = None if sample_keys is None else sample_keys[i]
        return impute(imputer, x.index_select(0, i), mask, keys=keys, modality=modality)

    scores = batch.runner.run(build, (batch.n, *shape), y=batch.y,  # type: ignore[union-attr]
                              row_shape=tuple(x.shape[1:]), desc=desc)
    flag_nonfinite(batch, scores)
    return scores.to(torch.float64)


# ---------------------------------------------------------------------- windows
def window_scores(
    batch: MetricBatch,
    ordering: Ordering,
    imputer: Imputer,
    lo: torch.Tensor,
    hi: torch.Tensor,
    *,
    keys: torch.Tensor | None = None,
    quantity: str = "score",
    desc: str | None = None,
    with_clean: bool = False,
) -> torch.Tensor:
    """Target scores (N, T) float64 with the groups of rank ``lo[i, t] <= r < hi[i, t]``
    perturbed by ``imputer`` in sample i's order.

    ``keys`` (N,): random keys passed to a stochastic imputer (default: the batch's sample
    keys). Rows that perturb no group get the unperturbed score. ``quantity="correct"`` reads
    1 where the target's prediction is y (``Target.hits``; the argmax for classifiers)
    instead of the target score. ``with_clean``: the caller will also read
    :func:`clean_scores`; the samples' own rows then run in the same pass as the perturbed
    ones (see :func:`run_rows`).
    """
    batch.require_model()
    x = batch.x
    dev = x.device
    n, t_count = lo.shape
    identity, dup, flat, ti, r_lo, r_hi = _window_rows(lo, hi, ordering.n_groups, dev)

    stochastic = getattr(imputer, "stochastic", False)
    row_keys = (batch.keys if keys is None else keys) if stochastic else None
    modality = batch.modality
    base = None
    if isinstance(imputer, Baseline):
        # kept in its broadcastable shape ((N or 1, ...), e.g. one value per sample): a row
        # gathers its sample's values, not an expanded copy of x
        base = modality.baseline_values(imputer, x, row_keys)
    rank_map = ordering.rank_map

    scores = torch.full((n, t_count), float("nan"), dtype=torch.float64, device=dev)
    any_identity = bool(identity.any())

    if flat.shape[0]:
        # removal curves perturb prefixes of the order (lo = 0): one comparison per element
        prefixes = not bool(r_lo.any())
        per_sample_base = base is not None and base.shape[0] == n and n > 1
        # where the modality replaces by torch.where, the rows are selected bit by bit from the
        # rank map (no bool mask, no torch.where: several times faster on the CPU)
        windows = (RankWindows.make(x, base, rank_map)
                   if base is not None and replaces_by_where(modality) else None)
        if windows is not None:
            b_hi = windows.thresholds(r_hi)
            b_lo = None if prefixes else windows.thresholds(r_lo)

        def write(m: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
            assert windows is not None
            return windows.rows(ti.index_select(0, m), b_hi.index_select(0, m),
                                None if b_lo is None else b_lo.index_select(0, m), out=out)

        def build(m: torch.Tensor) -> torch.Tensor:
            # index_select: several times faster than advanced indexing on the CPU, which
            # matters where the model is small (a table's MLP)
            i = ti.index_select(0, m)
            r = rank_map.index_select(0, i)
            perturbed = r < modality.per_sample(r_hi.index_select(0, m), r)
            if not prefixes:
                perturbed &= r >= modality.per_sample(r_lo.index_select(0, m), r)
            xi = x.index_select(0, i)
            if base is not None:
                return modality.replace(xi, perturbed,
                                        base.index_select(0, i) if per_sample_base else base)
            k = None if row_keys is None else row_keys[i]
            return impute(imputer, xi, perturbed, keys=k, modality=modality)

        fps = None
        keys_list: list = []
        if active_cache() is not None:
            fps = _window_fingerprints(batch, ordering, imputer,
                                       None if base is None else base.expand_as(x), row_keys)
            keys_list = list(zip(r_lo.tolist(), r_hi.tolist(), strict=True))
        # bit-selected rows are written straight into the runner's chunk; the samples' own
        # rows (the identity windows' score, or the caller's) run in the same pass
        rows = (build if windows is None
                else RowWriter(write, tuple(x.shape[1:]), x.dtype, x.device))
        scores.view(-1).index_copy_(0, flat, cached_rows(
            batch, ti, keys_list, fps, rows, quantity=quantity, desc=desc,
            with_clean=with_clean or any_identity))
    if any_identity:
        clean = clean_scores(batch, quantity)
        scores = torch.where(identity, clean.unsqueeze(1), scores)

    if t_count > 1 and bool(dup.any()):
        # a repeated window takes the score of the last step before it that was run: a forward
        # fill over steps as one gather (one host sync to skip it where nothing repeats: the
        # cummax costs more than the test, 0.7 ms on 2,000 x 31 steps)
        steps = torch.arange(t_count, device=dev).expand(n, t_count)
        source = torch.where(dup, torch.zeros_like(steps), steps).cummax(1).values
        scores = scores.gather(1, source)
    return scores


def _window_rows(lo: torch.Tensor, hi: torch.Tensor, n_groups: torch.Tensor,
                 device: torch.device) -> tuple[torch.Tensor, ...]:
    """The rows :func:`window_scores` runs, from windows ``lo``/``hi`` (N, T) clipped to
    [0, G_i]: ``identity`` (N, T) (the window is empty: the unperturbed score), ``dup``
    (N, T) (the same window as the step before), and for the M rows to run, sample-major,
    their flat positions, samples, ``lo`` and ``hi`` (each (M,) int64). On the CPU in NumPy
    (the same integer arithmetic: a few us a step instead of tens for torch's calls on
    these small arrays)."""
    if device.type == "cpu":
        return _window_rows_numpy(lo, hi, n_groups)
    return _window_rows_torch(lo, hi, n_groups, device)


def _window_rows_numpy(lo: torch.Tensor, hi: torch.Tensor, n_groups: torch.Tensor
                       ) -> tuple[torch.Tensor, ...]:
    """:func:`_window_rows` on the CPU, in NumPy."""
    t_count = lo.shape[1]
    lo_a = lo.detach().to("cpu", torch.int64).numpy()
    hi_a = hi.detach().to("cpu", torch.int64).numpy()
    g = n_groups.detach().to("cpu", torch.int64).numpy()[:, None]
    lo_c = np.maximum(lo_a, 0)
    hi_c = np.minimum(hi_a, g)
    ident = hi_c <= lo_c
    lo_c[ident] = 0
    hi_c[ident] = 0
    dup_a = np.zeros_like(ident)
    if t_count > 1:
        dup_a[:, 1:] = (lo_c[:, 1:] == lo_c[:, :-1]) & (hi_c[:, 1:] == hi_c[:, :-1])
    flat_a = np.flatnonzero(~(ident | dup_a))  # (M,) sample-major
    return (torch.from_numpy(ident), torch.from_numpy(dup_a), torch.from_numpy(flat_a),
            torch.from_numpy(flat_a // t_count if t_count > 1 else flat_a.copy()),
            torch.from_numpy(lo_c.reshape(-1)[flat_a]),
            torch.from_numpy(hi_c.reshape(-1)[flat_a]))


def _window_rows_torch(lo: torch.Tensor, hi: torch.Tensor, n_groups: torch.Tensor,
                       device: torch.device) -> tuple[torch.Tensor, ...]:
    """:func:`_window_rows` in torch, on ``device``."""
    n, t_count = lo.shape
    lo = lo.to(device=device, dtype=torch.int64)
    hi = hi.to(device=device, dtype=torch.int64)
    g = n_groups.to(device).unsqueeze(1)
    lo_c = lo.clamp(0)
    hi_c = hi - (hi - g).clamp_min_(0)  # min(hi, g)
    identity = hi_c <= lo_c
    lo_c = torch.where(identity, torch.zeros_like(lo_c), lo_c)
    hi_c = torch.where(identity, torch.zeros_like(hi_c), hi_c)
    dup = torch.zeros_like(identity)
    if t_count > 1:
        dup[:, 1:] = (lo_c[:, 1:] == lo_c[:, :-1]) & (hi_c[:, 1:] == hi_c[:, :-1])
    flat = (~identity & ~dup).reshape(-1).nonzero().squeeze(1)
    # the rows' samples: a gather from the (N, T) sample ids, several times faster than an
    # int64 division of the flat positions
    ti = (torch.arange(n, device=device).unsqueeze(1).expand(n, t_count).reshape(-1)
          .index_select(0, flat))
    return (identity, dup, flat, ti, lo_c.reshape(-1).index_select(0, flat),
            hi_c.reshape(-1).index_select(0, flat))


def _window_fingerprints(batch: MetricBatch, ordering: Ordering, imputer: Imputer,
                         base: torch.Tensor | None, row_keys: torch.Tensor | None) -> list[bytes]:
    n = batch.n
    grp = ordering.grouping
    labels = row_hashes(grp.labels, n)
    order = row_hashes(ordering.order, n)
    if base is not None:
        repl = row_hashes(base, n)
    else:
        repl = combine_hashes(row_hashes(row_keys, n), imputer.cache_token())
    return combine_hashes(_model_and_inputs(batch), labels, order, repl, b"window")


# ---------------------------------------------------------------------- curves
def removal_curve(
    batch: MetricBatch,
    plan: RemovalPlan,
    steps: torch.Tensor | None = None,
    *,
    features_in_step: int = 1,
    grouping: Grouping | None = None,
    ordering: Ordering | None = None,
    desc: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, Grouping]:
    """Target scores along a removal (or insertion) curve.

    Parameters
    ----------
    steps:
        (N, T) int64 numbers of groups removed (deletion) or inserted (insertion) at each step;
        default :func:`steps_from_features_in_step` (which starts with 0).
    grouping:
        A precomputed grouping of ``batch.x`` (else ``plan.grouping`` is applied).
    ordering:
        A precomputed :class:`Ordering` (else computed from the plan).

    Returns
    -------
    scores:
        (N, T) float64 target scores.
    fractions:
        (N, T) float64 share of groups removed (inserted) at each step, k_t / G_i.
    grouping:
        The grouping used.
    """
    batch.require_model()
    if ordering is None:
        ordering = order_groups(batch, grouping if grouping is not None else plan.grouping,
                                plan.order, plan.group_reduction)
    grp = ordering.grouping
    if steps is None:
        steps = steps_from_features_in_step(grp.n_groups, features_in_step)
    steps = steps.to(device=batch.device, dtype=torch.int64)
    g = grp.n_groups.to(batch.device).unsqueeze(1).expand_as(steps)
    if plan.mode == "insertion":
        lo, hi = steps, g
    elif plan.mode == "deletion":
        lo, hi = torch.zeros_like(steps), steps
    else:
        raise ValueError(f"`mode` must be 'deletion' or 'insertion'; got {plan.mode!r}.")
    scores = window_scores(batch, ordering, plan.imputer, lo, hi, desc=desc)
    fractions = steps.to(torch.float64) / grp.n_groups.to(torch.float64).unsqueeze(1)
    return scores, fractions, grp


def trapezoid_auc(curve: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Per-sample trapezoid area under ``curve`` (N, T) over ``fractions`` (N, T) or (T,)."""
    if fractions.ndim == 1:
        fractions = fractions.expand_as(curve)
    return torch.trapezoid(curve, fractions, dim=1)
