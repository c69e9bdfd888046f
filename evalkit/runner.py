"""The batched forward runner: where the speed comes from.

Perturbation metrics need the model's target score on many modified inputs: samples x steps x
draws. :class:`ForwardRunner` takes a *builder* that makes any slice of those inputs on demand,
walks the flattened index space in chunks as large as the memory budget allows, runs the model
once per chunk under ``torch.inference_mode`` and evaluation mode, and scatters the target scores
into a tensor of the requested shape. Inputs are never all materialised at once, and no metric
loops over samples in Python.

Chunks follow sample-major order, so one chunk covers all steps of a few samples, and a
sample's scores do not depend on the chunk size (the model sees each input exactly once).
"""

from __future__ import annotations

import math
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any

import torch

from ._batching import resolve_batch_size
from ._progress import tqdm
from .models.base import ModelWrapper

__all__ = ["Builder", "ForwardRunner", "Reducer"]

#: ``build(index) -> inputs``: ``index`` is a tuple of (B,) int64 tensors, one per axis of the
#: work shape (``index[0]`` is the sample); returns the (B, *input_shape) inputs of those rows.
Builder = Callable[[tuple[torch.Tensor, ...]], torch.Tensor]
#: ``reduce(outputs, index) -> values``: maps model outputs of a chunk to (B, ...) values.
Reducer = Callable[[torch.Tensor, tuple[torch.Tensor, ...]], torch.Tensor]



def take_rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[index]`` along the first axis: ``index_select`` (a few us less per chunk than
    advanced indexing, which shows where the model is small), the index moved to ``t``'s
    device first where it lives elsewhere."""
    if index.device != t.device:
        index = index.to(t.device)
    return t.index_select(0, index)

class ForwardRunner:
    """Runs a wrapped model over lazily built inputs in memory-bounded chunks.

    Parameters
    ----------
    model:
        The :class:`~evalkit.models.ModelWrapper`.
    batch_size:
        Rows per forward call. ``None`` chooses the largest chunk whose *input* fits in
        ``memory_budget`` (default 2 MiB on CPU, 256 MiB on CUDA), up to 512 (CPU) or 8192
        (CUDA) rows; on a CPU, rows under 256 bytes (a table's) get up to 128 KiB of input per
        chunk, at most 4096 rows (see :data:`evalkit._batching.SMALL_ROWS_CHUNK_BYTES`).
    memory_budget:
        Bytes (or a string like ``"512MiB"``) of input per chunk when ``batch_size`` is None.
    progress:
        Show a tqdm progress bar over the rows.
    cache:
        Optional mapping used by :meth:`run` when it is given a ``cache_key``: results are
        stored under the key and returned without any forward pass on a repeat.

    On CUDA, a chunk that runs out of memory is retried at half the size.
    """

    def __init__(
        self,
        model: ModelWrapper,
        *,
        batch_size: int | None = None,
        memory_budget: int | str | None = None,
        progress: bool = False,
        cache: MutableMapping[Any, torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.memory_budget = memory_budget
        self.progress = progress
        self.cache = cache

    def chunk_size(self, row_shape: tuple[int, ...], dtype: torch.dtype) -> int:
        row_bytes = math.prod(int(d) for d in row_shape) * dtype.itemsize
        chosen = self.batch_size if self.batch_size is not None else self.model.batch_size
        return resolve_batch_size(chosen, row_bytes,
                                  self.memory_budget, self.model.device.type)

    def run(
        self,
        build: Builder,
        shape: tuple[int, ...],
        *,
        y: torch.Tensor | None = None,
        reduce: Reducer | None = None,
        row_shape: tuple[int, ...],
        desc: str | None = None,
        cache_key: Any = None,
    ) -> torch.Tensor:
        """Evaluate the model on every row of the work ``shape`` = (N, ...).

        Returns a tensor of shape ``shape`` (or ``shape + extra`` when ``reduce`` returns extra
        axes). By default each row's value is the wrapper's target score with label
        ``y[index[0]]``.
        """
        if cache_key is not None and self.cache is not None and cache_key in self.cache:
            return self.cache[cache_key].clone()
        if reduce is None:
            reduce = self._target_reducer(y)
        total = math.prod(shape)
        if total == 0:
            return torch.empty(shape, dtype=self.model.dtype, device=self.model.device)
        dims = torch.tensor(shape, dtype=torch.int64)
        device = self.model.device

        def make(start: int, stop: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
            # built on the model's device: no host-to-device copy (a sync on CUDA) per chunk
            index = _unravel(torch.arange(start, stop, dtype=torch.int64, device=device), dims)
            return build(index), index

        out = self._walk(make, total, reduce, row_shape, desc)
        # a normal tensor (not an inference tensor), so callers may update it in place
        result = out.reshape(*shape, *out.shape[1:]).clone()
        if cache_key is not None and self.cache is not None:
            self.cache[cache_key] = result.clone()
        return result

    def run_concat(
        self,
        sources: Sequence[tuple[int, Callable[[torch.Tensor], torch.Tensor] | torch.Tensor]],
        *,
        y: torch.Tensor | None = None,
        reduce: Reducer | None = None,
        row_shape: tuple[int, ...],
        desc: str | None = None,
    ) -> torch.Tensor:
        """Evaluate the model on the rows of several sources, one after the other, in ONE
        chunked pass: a chunk may end in one source and go on in the next, so that the
        forward calls are as few and as full as the chunk size allows (a conv net's call of
        64 rows costs much more than half a call of 128).

        ``sources``: ``(rows, build)`` pairs; ``build(local)`` returns the inputs of the
        source's rows ``local`` ((B,) int64 in ``[0, rows)``); or ``build`` is a tensor of the
        rows as they are (already on the model's device, in its dtype): a chunk within it is a
        view of it, not a copy (pass only tensors of the caller's own making: a model that
        writes into its input would write into them). ``y`` and ``reduce`` index the
        concatenated rows (``index[0]`` is the row's position among all rows). Returns
        ``(total, ...)`` values, the sources' rows in order.
        """
        sizes = [int(rows) for rows, _ in sources]
        total = sum(sizes)
        if total == 0:
            return torch.empty((0,), dtype=self.model.dtype, device=self.model.device)
        if reduce is None:
            reduce = self._target_reducer(y)
        device = self.model.device
        offsets = [0]
        for rows in sizes:
            offsets.append(offsets[-1] + rows)

        def make(start: int, stop: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
            parts = []
            for (_, build), lo, hi in zip(sources, offsets[:-1], offsets[1:], strict=True):
                a, b = max(start, lo), min(stop, hi)
                if a >= b:
                    continue
                if isinstance(build, torch.Tensor):
                    parts.append(build[a - lo:b - lo])
                else:
                    parts.append(build(torch.arange(a - lo, b - lo, dtype=torch.int64,
                                                    device=device)))
            inputs = parts[0] if len(parts) == 1 else torch.cat(parts)
            return inputs, (torch.arange(start, stop, dtype=torch.int64, device=device),)

        return self._walk(make, total, reduce, row_shape, desc).clone()

    def _target_reducer(self, y: torch.Tensor | None) -> Reducer:
        model = self.model

        def reduce(outputs: torch.Tensor, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
            if y is None:
                return model.select(outputs, None)
            return model.select(outputs, take_rows(y, index[0]))

        return reduce

    def _walk(
        self,
        make: Callable[[int, int], tuple[torch.Tensor, tuple[torch.Tensor, ...]]],
        total: int,
        reduce: Reducer,
        row_shape: tuple[int, ...],
        desc: str | None,
    ) -> torch.Tensor:
        """Rows ``[0, total)`` in chunks: ``make(start, stop) -> (inputs, index)``, the model
        on the inputs, ``reduce(outputs, index)``; returns the (total, ...) values (an
        inference tensor: callers clone it)."""
        chunk = self.chunk_size(row_shape, self.model.dtype)
        out: torch.Tensor | None = None
        # no bar object at all when progress is off (a disabled tqdm still costs tens of us,
        # a fixed cost per call that shows where the model is small)
        bar = (tqdm(total=total, desc=desc, unit="input", leave=False) if self.progress
               else None)
        start = 0
        with self.model.evaluation(), torch.inference_mode():
            while start < total:
                stop = min(total, start + chunk)
                try:
                    values = self._chunk_values(make, start, stop, reduce)
                except torch.cuda.OutOfMemoryError:
                    if chunk == 1:
                        raise
                    chunk = max(1, chunk // 2)
                    torch.cuda.empty_cache()
                    continue
                if out is None:
                    out = torch.empty((total, *values.shape[1:]), dtype=values.dtype,
                                      device=values.device)
                out[start:stop] = values
                del values  # before the next chunk is built (see _chunk_values)
                if bar is not None:
                    bar.update(stop - start)
                start = stop
        if bar is not None:
            bar.close()
        assert out is not None
        return out

    def _chunk_values(
        self,
        make: Callable[[int, int], tuple[torch.Tensor, tuple[torch.Tensor, ...]]],
        start: int,
        stop: int,
        reduce: Reducer,
    ) -> torch.Tensor:
        """The reduced values of rows ``[start, stop)``. Each chunk's inputs and outputs are
        freed as soon as they are used (the inputs before the reducer runs, the outputs before
        the next chunk is built), so that the next chunk's buffers take the same memory, still
        in the cache: held until the next chunk replaced them, a small model's forward passes
        over a table's rows took 3-9 % longer (W4's MLP, 20,000 rows in 1,092-row chunks)."""
        inputs, index = make(start, stop)
        outputs = self.model(inputs)
        del inputs
        return reduce(outputs, index)

    def outputs(
        self,
        x: torch.Tensor,
        *,
        y: torch.Tensor | None = None,
        reduce: Reducer | None = None,
        desc: str | None = None,
    ) -> torch.Tensor:
        """Convenience: run already-built inputs ``x`` (N, ...) through the same chunking."""
        x = self.model.prepare(x)
        # index_select: the same copy as x[i], several times faster on the CPU
        return self.run(lambda index: x.index_select(0, index[0]), (x.shape[0],), y=y,
                        reduce=reduce,
                        row_shape=tuple(x.shape[1:]), desc=desc)


def _unravel(flat: torch.Tensor, dims: torch.Tensor) -> tuple[torch.Tensor, ...]:
    if dims.numel() == 1:  # one axis: the flat positions are the index (no % and // per chunk)
        return (flat,)
    out = []
    rem = flat
    for d in reversed(dims.tolist()):
        out.append(rem % d)
        rem = rem // d
    return tuple(reversed(out))
