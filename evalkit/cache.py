"""A row-level cache of target scores shared by metrics in one evaluation.

Many perturbation metrics ask the model about the same inputs: PixelFlipping, Deletion,
SensitivityN (``subsets="morf"``) and RegionPerturbation/Selectivity with the same baseline walk
the same removal curve; almost every metric needs the score of the unperturbed input. Inside

>>> import evalkit as ek
>>> with ek.forward_cache() as cache:                              # doctest: +SKIP
...     pf = ek.metrics.PixelFlipping(features_in_step=28)(model, x, y, a)
...     de = ek.metrics.Deletion(features_in_step=28, perturb_baseline="black")(model, x, y, a)
>>> cache.stats()                                                  # doctest: +SKIP

the second metric forwards only the rows the first did not compute.

What a cached value is keyed by
-------------------------------
A value is one target score of one perturbed input. Its key has three parts:

* the **model key** (:func:`model_key`): the identity of the wrapped model object, the version
  counters of all its parameters and buffers (any in-place update, such as an optimiser step,
  changes them), its dtype, device, evaluation-mode flag, ``softmax`` setting and target. A
  plain callable is identified by the object alone: do not mutate its state inside a cache
  context;
* a **sample fingerprint**: a BLAKE2 hash of everything that determines the sequence of
  perturbed inputs of one sample: the input's bytes, its label, the group label map, the
  *order* of the groups (not the attribution values: two attributions that rank the groups the
  same way share their rows), the replacement values (or the imputer and its random key);
* the **row**: which groups are perturbed, as a window ``lo <= rank < hi`` of that order.

The unperturbed input has a key of its own (model key, input bytes, label), shared by every
metric. Keys are exact: a hit returns the score the model gave on a bit-identical input.

Memory
------
The cache is off unless a context is active (or a cache is passed explicitly). It holds at most
``max_rows`` scores (default one million, about 100-150 MB of Python objects) and evicts the
least recently used samples first.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["CacheStats", "ExplanationCache", "ForwardCache", "active_cache",
           "active_explanation_cache", "explanation_cache", "forward_cache", "model_key"]

_ACTIVE: contextvars.ContextVar[ForwardCache | None] = contextvars.ContextVar(
    "evalkit_forward_cache", default=None
)


@dataclass
class CacheStats:
    """Counts of looked-up rows: ``hits`` were served from the cache, ``misses`` were run."""

    hits: int = 0
    misses: int = 0
    stored: int = 0
    evicted: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class ForwardCache:
    """Target scores of perturbed inputs, keyed by (model, sample fingerprint, row).

    Use it as a context manager (``with ForwardCache() as c:``) or through
    :func:`forward_cache`; metrics that support sharing look up :func:`active_cache`.

    Parameters
    ----------
    max_rows:
        The most scores held; the least recently used samples are evicted beyond it.
    """

    def __init__(self, max_rows: int = 1_000_000) -> None:
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"`max_rows` must be a positive integer; got {max_rows!r}.")
        self.max_rows = max_rows
        self._store: OrderedDict[bytes, dict[Any, float]] = OrderedDict()
        self._rows = 0
        self._tokens: list[contextvars.Token] = []
        self.stats_ = CacheStats()

    # ------------------------------------------------------------------ context protocol
    def __enter__(self) -> ForwardCache:
        self._tokens.append(_ACTIVE.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.reset(self._tokens.pop())

    # ------------------------------------------------------------------ storage
    def __len__(self) -> int:
        return self._rows

    def clear(self) -> None:
        self._store.clear()
        self._rows = 0

    def stats(self) -> CacheStats:
        return self.stats_

    def lookup(self, fingerprints: list[bytes], rows: list[list[Any]]) -> list[list[float | None]]:
        """For each sample ``fingerprints[i]``, the cached score of each row key in ``rows[i]``
        (``None`` where absent)."""
        out: list[list[float | None]] = []
        hits = 0
        for fp, keys in zip(fingerprints, rows, strict=True):
            entry = self._store.get(fp)
            if entry is None:
                out.append([None] * len(keys))
                continue
            self._store.move_to_end(fp)
            vals = [entry.get(k) for k in keys]
            hits += sum(v is not None for v in vals)
            out.append(vals)
        total = sum(len(k) for k in rows)
        self.stats_.hits += hits
        self.stats_.misses += total - hits
        return out

    def store(self, fingerprints: list[bytes], rows: list[list[Any]],
              values: list[list[float]]) -> None:
        """Store ``values[i][j]`` under ``(fingerprints[i], rows[i][j])``."""
        for fp, keys, vals in zip(fingerprints, rows, values, strict=True):
            if not keys:
                continue
            entry = self._store.get(fp)
            if entry is None:
                entry = self._store[fp] = {}
            else:
                self._store.move_to_end(fp)
            before = len(entry)
            entry.update(zip(keys, vals, strict=True))
            added = len(entry) - before
            self._rows += added
            self.stats_.stored += added
        while self._rows > self.max_rows and len(self._store) > 1:
            _, old = self._store.popitem(last=False)
            self._rows -= len(old)
            self.stats_.evicted += len(old)

    def __repr__(self) -> str:
        s = self.stats_
        return (f"ForwardCache(rows={self._rows}, max_rows={self.max_rows}, hits={s.hits}, "
                f"misses={s.misses})")


def active_cache() -> ForwardCache | None:
    """The cache of the innermost active :func:`forward_cache` context, or None."""
    return _ACTIVE.get()


@contextlib.contextmanager
def forward_cache(cache: ForwardCache | None = None, *,
                  max_rows: int = 1_000_000) -> Iterator[ForwardCache]:
    """Share forward passes between the metrics called inside the block.

    Yields the :class:`ForwardCache` (a new one unless ``cache`` is given, so one cache can
    serve several blocks). See the module docstring for what is shared and how it is keyed.
    """
    c = cache if cache is not None else ForwardCache(max_rows=max_rows)
    with c:
        yield c


# ---------------------------------------------------------------------- fingerprints
def model_key(wrapper: Any) -> bytes:
    """A key that changes whenever the wrapped model could score an input differently."""
    h = hashlib.blake2b(digest_size=16)
    model = wrapper.model
    h.update(repr((type(wrapper).__name__, id(model), str(wrapper.dtype), str(wrapper.device),
                   getattr(wrapper, "eval_mode", None), wrapper.softmax,
                   _target_key(wrapper.target), id(getattr(wrapper, "output_fn", None)),
                   getattr(wrapper, "channels_last", None))).encode())
    if getattr(wrapper, "autocast", None) is not None:
        h.update(f"autocast:{wrapper.autocast}".encode())
    if isinstance(model, torch.nn.Module):
        versions = [(id(t), t._version, t.data_ptr()) for t in model.parameters()]
        versions += [(id(t), t._version, t.data_ptr()) for t in model.buffers()]
        h.update(repr(versions).encode())
    return h.digest()


def _target_key(target: Any) -> str:
    fn = getattr(target, "fn", None)
    if fn is not None:
        return f"callable:{id(fn)}"
    return repr(target)


def row_hashes(t: torch.Tensor | None, n: int) -> list[bytes]:
    """One 16-byte BLAKE2 digest per row of ``t`` (N or 1 rows; ``b""`` for None)."""
    if t is None:
        return [b""] * n
    arr = np.ascontiguousarray(t.detach().cpu().numpy())
    arr = arr.reshape(arr.shape[0], -1) if arr.ndim > 1 else arr.reshape(-1, 1)
    tag = str(arr.dtype).encode()
    digests = [hashlib.blake2b(row.tobytes() + tag, digest_size=16).digest() for row in arr]
    if len(digests) == 1 and n != 1:
        digests = digests * n
    return digests


def combine_hashes(*parts: list[bytes] | bytes) -> list[bytes]:
    """Element-wise hash of several per-sample digest lists (a bytes part is shared)."""
    n = max(len(p) for p in parts if isinstance(p, list))
    out = []
    for i in range(n):
        h = hashlib.blake2b(digest_size=16)
        for p in parts:
            piece = p[i] if isinstance(p, list) else p
            h.update(len(piece).to_bytes(4, "little"))
            h.update(piece)
        out.append(h.digest())
    return out


# ---------------------------------------------------------------------- explanations of perturbed
# inputs (robustness metrics). A separate keyspace attached to each ForwardCache: the same
# ``forward_cache()`` context shares both, and the ForwardCache class itself is unchanged.
class ExplanationCache:
    """Per-sample blocks of tensors that robustness metrics share within one evaluation.

    Robustness metrics (MaxSensitivity, AvgSensitivity, LocalLipschitzEstimate, the relative
    stabilities, Continuity) explain K perturbed copies of every sample. Metrics with the same
    perturbation (noise model and parameters, number of draws, seed) and the same explain
    function ask for identical re-explanations; inside a :func:`forward_cache` context the
    second metric reads them from here instead of explaining again. Values are tensors, one
    block per sample and kind (e.g. the (K, ...) raw explanations of its perturbed copies, or the
    (K, C) model outputs on them), keyed by bytes that fingerprint everything they depend on
    (see ``evalkit.metrics.robustness``). Explanations are stored raw, before any metric's
    ``normalise``/``abs``, so metrics with different preprocessing share them too.

    The cache assumes explain functions are deterministic given their inputs and keyword
    arguments (a stochastic explainer with a ``seed`` keyword is). Objects identified by
    ``id()`` in keys (explain functions, models) are kept alive by :meth:`pin` so an id cannot
    be reused while the cache lives.

    Get the one attached to a forward cache with :func:`explanation_cache` (its ``clear()`` and
    ``stats()`` are separate from the ForwardCache's).

    Parameters
    ----------
    max_bytes:
        The most tensor bytes held (default 1 GiB); the least recently used blocks are evicted
        beyond it.
    """

    def __init__(self, max_bytes: int = 2**30) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"`max_bytes` must be a positive integer; got {max_bytes!r}.")
        self.max_bytes = max_bytes
        self._store: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._pinned: dict[int, Any] = {}
        self.stats_ = CacheStats()

    def __len__(self) -> int:
        return len(self._store)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        self._store.clear()
        self._bytes = 0

    def stats(self) -> CacheStats:
        """Counts of looked-up blocks (``hits``, ``misses``), ``stored`` and ``evicted``."""
        return self.stats_

    def pin(self, obj: Any) -> int:
        """Keep ``obj`` alive while the cache lives and return its ``id`` (for use in keys)."""
        self._pinned[id(obj)] = obj
        return id(obj)

    def get(self, keys: list[bytes]) -> list[torch.Tensor | None]:
        """The stored block of each key, or None."""
        out: list[torch.Tensor | None] = []
        for k in keys:
            v = self._store.get(k)
            if v is not None:
                self._store.move_to_end(k)
            out.append(v)
        hits = sum(v is not None for v in out)
        self.stats_.hits += hits
        self.stats_.misses += len(keys) - hits
        return out

    def put(self, keys: list[bytes], values: list[torch.Tensor]) -> None:
        """Store ``values[i]`` (detached) under ``keys[i]``, evicting old blocks beyond the
        budget (a block larger than the whole budget is not stored)."""
        for k, v in zip(keys, values, strict=True):
            size = v.element_size() * v.numel()
            if size > self.max_bytes:
                continue
            old = self._store.pop(k, None)
            if old is not None:
                self._bytes -= old.element_size() * old.numel()
            self._store[k] = v.detach()
            self._bytes += size
            self.stats_.stored += 1
        while self._bytes > self.max_bytes and self._store:
            _, old = self._store.popitem(last=False)
            self._bytes -= old.element_size() * old.numel()
            self.stats_.evicted += 1

    def __repr__(self) -> str:
        s = self.stats_
        return (f"ExplanationCache(blocks={len(self._store)}, bytes={self._bytes}, "
                f"max_bytes={self.max_bytes}, hits={s.hits}, misses={s.misses})")


_EXPLANATION_CACHES: weakref.WeakKeyDictionary[ForwardCache, ExplanationCache] = (
    weakref.WeakKeyDictionary()
)


def explanation_cache(cache: ForwardCache) -> ExplanationCache:
    """The :class:`ExplanationCache` attached to a :class:`ForwardCache` (made on first use).

    >>> with forward_cache() as c:                                     # doctest: +SKIP
    ...     ek.metrics.MaxSensitivity(nr_samples=10, seed=0)(model, x, y, a)
    ...     ek.metrics.AvgSensitivity(nr_samples=10, seed=0)(model, x, y, a)  # no re-explaining
    >>> explanation_cache(c).stats()                                   # doctest: +SKIP
    """
    store = _EXPLANATION_CACHES.get(cache)
    if store is None:
        store = _EXPLANATION_CACHES[cache] = ExplanationCache()
    return store


def active_explanation_cache() -> ExplanationCache | None:
    """The explanation cache of the innermost active :func:`forward_cache` context, or None."""
    c = active_cache()
    return None if c is None else explanation_cache(c)
