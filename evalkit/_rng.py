"""Explicit, stateless randomness.

Every random number evalkit draws is a pure function of ``(seed, key, shape)``: keys are derived
with a counter-based mixer (the SplitMix64 finaliser, vectorised in torch). This gives three
guarantees that a stateful ``torch.Generator`` cannot give when work is chunked:

* the global RNGs of Python, NumPy and torch are never read or advanced;
* a sample's draws do not depend on the batch size, the chunking, or the other samples in the
  batch: sample keys are derived from the seed and the sample's own values
  (:func:`sample_keys`), and each row of a perturbation batch carries its own key;
* the same seed gives the same numbers on every run on the same device type.

Keys are int64 tensors; arithmetic wraps modulo 2**64 as in two's complement. Bulk draws
(:func:`uniform`, :func:`normal`) are counter-based: draw ``j`` of a row is a hash of the row's
key, the stream and ``j``, computed for all rows at once (no generator is seeded per key), so
one key per perturbed row costs no more than one per sample. (Before issue 19's speed work, each
key seeded a NumPy PCG64 generator; the numbers drawn for a seed changed then, their
distribution did not.)
"""

from __future__ import annotations

import functools
import hashlib
import math
import secrets

import numpy as np
import torch

__all__ = [
    "combine",
    "derive_seed",
    "mix",
    "normal",
    "permutation_keys",
    "resolve_seed",
    "sample_keys",
    "scalar_uniform",
    "smallest_uniforms",
    "uniform",
]

_GOLDEN = 0x9E3779B97F4A7C15
_M64 = (1 << 64) - 1
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB


def _signed(v: int) -> int:
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


_GOLDEN_S = _signed(_GOLDEN)
_C1_S = _signed(_C1)
_C2_S = _signed(_C2)
_C1_U = np.uint64(_C1)
_C2_U = np.uint64(_C2)


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix_numpy(z: np.ndarray) -> np.ndarray:
    """:func:`mix` of a uint64 array, in place (NumPy has a logical shift; torch int64 has not,
    and NumPy's per-call cost is a fraction of torch's for the few keys of a batch)."""
    z ^= z >> np.uint64(30)
    z *= _C1_U
    z ^= z >> np.uint64(27)
    z *= _C2_U
    z ^= z >> np.uint64(31)
    return z


def _as_uint64(t: torch.Tensor) -> np.ndarray:
    """A CPU int64 tensor's values as a new, at least 1-d uint64 array (two's complement)."""
    return np.array(t.detach().numpy(), dtype=np.int64, ndmin=1).view(np.uint64)


def _from_uint64(a: np.ndarray, shape: torch.Size) -> torch.Tensor:
    return torch.from_numpy(a.view(np.int64)).reshape(shape)


def mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser: a bijective 64-bit mixing function on int64 tensors."""
    if z.device.type == "cpu":
        return _from_uint64(_mix_numpy(_as_uint64(z.to(torch.int64))), z.shape)
    z = (z ^ _shr(z, 30)) * _C1_S
    z = (z ^ _shr(z, 27)) * _C2_S
    return z ^ _shr(z, 31)


def _mix_int(v: int) -> int:
    v &= (1 << 64) - 1
    v = ((v ^ (v >> 30)) * _C1) & ((1 << 64) - 1)
    v = ((v ^ (v >> 27)) * _C2) & ((1 << 64) - 1)
    return _signed(v ^ (v >> 31))


def derive_seed(seed: int, *labels: int | str) -> int:
    """A new 64-bit seed from ``seed`` and labels (e.g. a layer name or a stream number)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(int(seed).to_bytes(16, "little", signed=True))
    for label in labels:
        h.update(b"\x00" + str(label).encode())
    return _signed(int.from_bytes(h.digest(), "little"))


def resolve_seed(seed: int | np.integer | torch.Generator | None) -> int:
    """Turn a user ``seed`` into a concrete integer.

    ``None`` draws fresh entropy from the operating system (not from any global RNG), so runs
    differ; the resolved value is recorded by the caller so that a run can be reproduced.
    A ``torch.Generator`` is advanced by one draw.
    """
    if seed is None:
        return secrets.randbits(63)
    if isinstance(seed, torch.Generator):
        return int(torch.randint(0, 2**62, (1,), generator=seed).item())
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"`seed` must be an int, a torch.Generator or None; got {seed!r}.")
    return int(seed)


def numpy_generator(seed: int | np.random.Generator | None
                    ) -> tuple[np.random.Generator, int | None]:
    """A NumPy generator for a seed argument, and the seed it was made from: an int (or None:
    fresh OS entropy, returned so that it can be recorded) gives a new generator; a given
    ``numpy.random.Generator`` is used as it is (advanced by its user; seed None)."""
    if isinstance(seed, np.random.Generator):
        return seed, None
    used = resolve_seed(seed)
    return np.random.default_rng(used & ((1 << 63) - 1)), used


def sample_keys(x: torch.Tensor, seed: int) -> torch.Tensor:
    """One int64 key per sample, from the seed and the sample's values only.

    Two identical samples get the same key; a sample gets the same key in any batch. The key
    hashes the sample's float32 bit patterns: each (position, 32-bit word) pair is mixed with
    the seed's salt by the SplitMix64 finaliser (a bijection, so distinct pairs give distinct
    terms), the terms are summed modulo 2**64 and the sum mixed again (an additive hash in the
    manner of Bellare & Micciancio's AdHash, vectorised over samples and positions; not meant
    to resist crafted collisions). (Before issue 19's speed work each row was hashed with
    BLAKE2b in a Python loop: the keys, and so every seeded draw, changed then.)
    """
    n = x.shape[0]
    words = np.ascontiguousarray(
        # the row width from the shape: reshape(n, -1) cannot infer it for an empty batch
        x.detach().to("cpu", torch.float32).numpy().reshape(n, math.prod(x.shape[1:]))
    ).view(np.uint32)
    d = words.shape[1]
    salt = np.uint64(derive_seed(int(seed), "sample keys") & _M64)
    sums = np.zeros(n, dtype=np.uint64)
    if d:
        positions = np.arange(d, dtype=np.uint64)
        for rows, cols in _blocks(n, d):
            z = words[rows, cols].astype(np.uint64)
            z <<= np.uint64(32)
            z |= positions[None, cols]
            z ^= salt
            sums[rows] += _mix_numpy(z).sum(axis=1, dtype=np.uint64)
    keys = _mix_numpy(_mix_numpy(sums ^ salt) + np.uint64(d))
    return torch.from_numpy(keys.view(np.int64)).to(x.device)


def combine(keys: torch.Tensor, *streams: int | torch.Tensor) -> torch.Tensor:
    """Derive row keys from parent keys and stream indices (e.g. step, draw), elementwise
    (tensor streams broadcast with the keys)."""
    out = keys.to(torch.int64)
    if out.device.type == "cpu":  # the same arithmetic in NumPy: a few us, not tens
        a = _as_uint64(out)
        shape = out.shape
        for st in streams:
            if isinstance(st, torch.Tensor):
                v = _as_uint64(st.to("cpu", torch.int64))
                if st.shape != shape:  # torch.broadcast_shapes: ~15 us of Python per call
                    shape = torch.broadcast_shapes(shape, st.shape)
            else:
                v = np.uint64(_mix_int(int(st) + 1) & _M64)
            a = _mix_numpy(a * np.uint64(_GOLDEN) + v + np.uint64(1))
        return _from_uint64(a, shape)
    for st in streams:
        if isinstance(st, torch.Tensor):
            st = st.to(device=out.device, dtype=torch.int64)
        else:
            st = _mix_int(int(st) + 1)
        out = mix(out * _GOLDEN_S + st + 1)
    return out


def scalar_uniform(keys: torch.Tensor, *, stream: int = 0) -> torch.Tensor:
    """One U[0, 1) float64 draw per key, fully vectorised (for cheap per-row decisions)."""
    bits = combine(keys, stream)
    return _shr(bits, 11).to(torch.float64) * (1.0 / (1 << 53))


#: elements mixed per pass of the NumPy path (a few hundred KiB: the passes stay in cache)
_BLOCK = 1 << 14


def _counters(n: int, device: torch.device) -> torch.Tensor:
    """``(j + 1) * golden`` for j < n, int64 (wrapping): SplitMix64's state increments."""
    j = torch.arange(1, n + 1, dtype=torch.int64, device=device)
    return j * _GOLDEN_S


def _bits_torch(seeds: torch.Tensor, n: int) -> torch.Tensor:
    """(R, n) int64 words: word j of row r is SplitMix64's output j for state ``seeds[r]``."""
    return mix(seeds.unsqueeze(1) + _counters(n, seeds.device).unsqueeze(0))


def _blocks(rows: int, n: int, block: int = _BLOCK):
    """(row slice, column slice) blocks of about ``block`` elements covering (rows, n)."""
    if n >= block:
        for r in range(rows):
            for c in range(0, n, block):
                yield slice(r, r + 1), slice(c, min(n, c + block))
    else:
        step = block // n
        for r in range(0, rows, step):
            yield slice(r, min(rows, r + step)), slice(0, n)


def _tiled_counters(n: int, rows: int) -> np.ndarray:
    """The counters of :func:`_counters` (as uint64) repeated for ``rows`` rows of ``n``, flat
    and read-only: a block's words start as its rows' seeds plus this (a broadcast add of a
    column to a row costs several flat adds in NumPy). Blocks of up to
    :data:`_SMALLEST_BLOCK` elements are cached; a wider row (one row a block) is not, so the
    cache never holds more than 32 such small arrays."""
    if n * rows <= _SMALLEST_BLOCK:
        return _tiled_counters_cached(n, rows)
    return _tile_counters(n, rows)


@functools.lru_cache(maxsize=32)
def _tiled_counters_cached(n: int, rows: int) -> np.ndarray:
    return _tile_counters(n, rows)


def _tile_counters(n: int, rows: int) -> np.ndarray:
    out = np.tile(np.arange(1, n + 1, dtype=np.uint64) * np.uint64(_GOLDEN), rows)
    out.flags.writeable = False
    return out


def _stream_seeds(keys: torch.Tensor, stream: int) -> np.ndarray:
    """``combine(keys, stream)`` of CPU keys as a uint64 array (no tensor round trip)."""
    a = _as_uint64(keys.to(torch.int64))
    a *= np.uint64(_GOLDEN)
    a += np.uint64((_mix_int(int(stream) + 1) + 1) & _M64)
    return _mix_numpy(a)


#: the shift, offset and scale that turn a word into a draw, per (kind, narrow): a uniform is
#: the word's top 53 bits (top 24 when narrow) over 2**53 (2**24); a normal's argument to the
#: inverse CDF is ``2u - 1`` for ``u = ((w >> 11) + 1/2) / 2**53``, computed as
#: ``((w >> 11) + 1/2) / 2**52 - 1``: halving a power-of-two scale is exact, so the bits are
#: those of ``2 * u - 1``
_CONVERSIONS = {
    ("uniform", True): (40, 0.0, 1.0 / (1 << 24), 0.0),
    ("uniform", False): (11, 0.0, 1.0 / (1 << 53), 0.0),
    ("normal", False): (11, 0.5, 1.0 / (1 << 52), 1.0),
}


def _mix_to_last_shift(z: np.ndarray, t: np.ndarray) -> None:
    """SplitMix64's finaliser on the uint64 states ``z`` in place, up to (not including) its
    last xor-shift ``z ^= z >> 31``; ``t`` a scratch buffer of ``z``'s shape."""
    np.right_shift(z, np.uint64(30), out=t)
    z ^= t
    z *= _C1_U
    np.right_shift(z, np.uint64(27), out=t)
    z ^= t
    z *= _C2_U


def _finish_block(z: np.ndarray, t: np.ndarray, block: np.ndarray, kind: str,
                  narrow: bool, unit: float | None = None) -> None:
    """Mix the flat uint64 states ``z`` (SplitMix64's finaliser, in place; ``t`` a scratch
    buffer of the same size) and write their draws into the flat float ``block``. ``unit``
    (uniforms only): the factor of the shifted word instead of its conversion scale (see
    :func:`_uniform_factor`)."""
    shift, offset, scale, minus = _CONVERSIONS[kind, narrow]
    _mix_to_last_shift(z, t)
    if shift >= 31:  # (z ^ (z >> 31)) >> s is z >> s when s + 31 >= 64: skip the step
        np.right_shift(z, np.uint64(shift), out=z)
    else:
        np.right_shift(z, np.uint64(31), out=t)
        z ^= t
        np.right_shift(z, np.uint64(shift), out=z)
    # the shifted word fits in 53 bits: as int64 it converts to float exactly (and faster
    # than from uint64)
    block[...] = z.view(np.int64)
    if offset:
        block += offset
    block *= block.dtype.type(scale if unit is None else unit)
    if minus:
        block -= minus


def _uniform_factor(ftype: type, unit: float, scale: float) -> float | None:
    """``unit * scale`` in ``ftype`` where multiplying a uniform's shifted word ``v`` by it
    gives the bits of ``(v * unit) * scale`` (None where it may not): ``v * unit`` is exact
    (a power-of-two unit), so both products round the same real number, provided
    ``unit * scale`` is itself exact (a finite scale whose product stays a normal float)."""
    s = ftype(scale)
    fused = ftype(unit) * s
    if not math.isfinite(s) or (s != 0 and abs(fused) < np.finfo(ftype).tiny):
        return None
    return float(fused)


def _adds_nothing(ftype: type, a: float, scale: float, kind: str) -> bool:
    """Whether adding ``a`` (in ``ftype``) to every draw scaled by ``scale`` leaves its bits:
    ``x + (-0.0)`` is ``x`` for every ``x``; ``x + 0.0`` is ``x`` unless ``x`` is -0.0, which
    a uniform (``u >= 0``) times a scale of positive sign never is, nor a normal draw (never
    0: ``|x| > 1e-16`` from its inverse CDF's argument, ``|2u - 1| >= 2**-53``) times a scale
    of magnitude at least 1e-20 (the product stays above float32's smallest normal)."""
    af = ftype(a)
    if af != 0:
        return False
    if math.copysign(1.0, af) < 0:
        return True
    s = ftype(scale)
    if kind == "uniform":
        return math.copysign(1.0, s) > 0 and not math.isnan(s)
    return bool(abs(s) >= 1e-20)


#: outputs from this many bytes are aligned (below, the few microseconds it costs are more
#: than their vector loads lose)
_ALIGN_FROM = 1 << 16


def _aligned_empty(shape: tuple[int, int], dtype: type) -> np.ndarray:
    """A new C-contiguous NumPy array, on a 64-byte boundary as torch's allocator gives from
    :data:`_ALIGN_FROM` bytes (NumPy's own are 16-byte aligned, which slows torch's vector
    kernels and matrix products that read the draws later). A NumPy buffer all the same: a
    fresh large one faults in fewer pages than ``torch.empty``'s."""
    size = shape[0] * shape[1] * np.dtype(dtype).itemsize
    if size < _ALIGN_FROM:
        return np.empty(shape, dtype=dtype)
    raw = np.empty(size + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start : start + size].view(dtype).reshape(shape)


#: draws finished per pass of :func:`_draw_numpy`: the block's words and floats stay in the
#: cache between NumPy's passes, and torch's per-call cost (erfinv, scaling) stays small
_DRAW_BLOCK = 1 << 15


def _draw_numpy(seeds: np.ndarray, at: np.ndarray | None, out: np.ndarray, kind: str,
                a: float, b: float) -> None:
    """Fill ``out`` (R, m), a new float32 or float64 array, with :func:`_fill`'s draws
    for the uint64 row seeds ``seeds`` (R,): draw j of row r (``at[r, j]`` where ``at`` is
    given), a block of rows (or of a wide row) at a time from hash to scaled value, so that no
    (R, m) array of words or float64 values is made. Each value has the bits of
    :func:`_fill`'s whole-array form (the erfinv, the scaling by ``sqrt(2)``, ``b`` and ``a``
    in the same dtypes and order); steps that cannot change a bit are fused or left out (a
    uniform's power-of-two unit and its scale in one product, an add of zero to values that
    are never -0.0, a product by 1)."""
    rows, m = out.shape
    narrow = kind == "uniform" and out.dtype != np.float64
    wide = m >= _DRAW_BLOCK
    step = 1 if wide else _DRAW_BLOCK // m
    size = min(_DRAW_BLOCK if wide else step * m, rows * m)
    z_buf = np.empty(size, dtype=np.uint64)
    t_buf = np.empty_like(z_buf)
    # a normal is finished in float64 (its inverse CDF too) before it is cast to ``out``
    # (in the scratch words' buffer: they are spent when the floats are written)
    scratch = (t_buf.view(np.float64)
               if kind == "normal" and out.dtype != np.float64 else None)
    tiled = None if wide or at is not None else _tiled_counters(m, step)
    ftype = out.dtype.type
    scale = b - a if kind == "uniform" else b
    scaled = (a, b) != (0.0, 1.0) and ftype(scale) != 1
    unit = None
    if kind == "uniform" and scaled:
        unit = _uniform_factor(ftype, _CONVERSIONS[kind, narrow][2], scale)
        scaled = unit is None
    added = (a, b) != (0.0, 1.0) and not _adds_nothing(ftype, a, scale, kind)
    if at is not None:
        at = at.view(np.uint64)
        # the counters (j + 1) * golden as j * golden + golden: the golden goes to the seeds
        seeds = seeds + np.uint64(_GOLDEN)
    for rs, cs in _blocks(rows, m, _DRAW_BLOCK):
        shape = (rs.stop - rs.start, cs.stop - cs.start)
        count = shape[0] * shape[1]
        z = z_buf[:count]
        if at is not None:
            np.multiply(at[rs, cs], np.uint64(_GOLDEN), out=z.reshape(shape))
            z.reshape(shape)[...] += seeds[rs, None]
        elif wide:
            np.multiply(np.arange(cs.start + 1, cs.stop + 1, dtype=np.uint64),
                        np.uint64(_GOLDEN), out=z)
            z += seeds[rs.start]
        else:
            z.reshape(shape)[...] = seeds[rs, None]
            z += tiled[:count]
        target = out[rs, cs].reshape(-1)  # a view: rows of a block are whole rows
        floats = target if scratch is None else scratch[:count]
        _finish_block(z, t_buf[:count], floats, kind, narrow, unit)
        if kind == "normal":
            torch.from_numpy(floats).erfinv_()
            floats *= math.sqrt(2.0)
            if scratch is not None:
                target[...] = floats
        # NumPy's float32 (float64) product and sum of the value and the rounded scalar:
        # the same operation, bit for bit, as torch's ``mul_(scale).add_(a)``
        if scaled:
            target *= ftype(scale)
        if added:
            target += ftype(a)


def _fill(
    keys: torch.Tensor,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    stream: int,
    kind: str,
    a: float,
    b: float,
    at: torch.Tensor | None = None,
) -> torch.Tensor:
    """One independent stream per key: ``kind`` "uniform" (U[a, b)) or "normal" (N(a, b**2)).

    Counter-based and vectorised over keys and draws: element ``j`` of row ``r`` comes from
    ``w = mix(combine(keys[r], stream) + (j + 1) * golden)``, i.e. output ``j`` of a SplitMix64
    generator (Steele et al. 2014) whose state starts at the row's combined key. A uniform is
    the top 53 bits of ``w`` (float64) or its top 24 bits (float32 and narrower), scaled to
    [0, 1) exactly; a normal is ``sqrt(2) * erfinv(2u - 1)`` of ``u = ((w >> 11) + 1/2) / 2**53``
    (inverse-CDF sampling, computed in float64). The words are identical on every device
    (NumPy on the CPU, torch elsewhere); so are the uniforms, the normals up to ``erfinv``'s
    rounding. No generator is seeded, so a row costs about as much as its draws: one key per
    perturbed row is as cheap as one per sample. ``at`` (R, m): only the draws at these flat
    positions of ``shape`` (each draw is its own counter's hash, so skipping the others
    changes nothing), returned as (R, m).
    """
    n = 1
    for d in shape:
        n *= int(d)
    r = keys.shape[0]
    out_shape = (r, *shape) if at is None else tuple(at.shape)
    if at is not None:
        if at.dim() != 2 or at.shape[0] != r:
            raise ValueError(f"`at` must be (rows, m) with one row per key; got {tuple(at.shape)} "
                             f"for {r} keys.")
        n = at.shape[1]
    if r == 0 or n == 0:
        return torch.empty(out_shape, dtype=dtype, device=keys.device)
    narrow = kind == "uniform" and dtype != torch.float64
    if keys.device.type == "cpu":  # the same numbers as below, computed in NumPy
        direct = dtype in (torch.float32, torch.float64)
        if direct:
            np_dtype = np.float32 if dtype == torch.float32 else np.float64
        else:  # drawn as below (float32 uniforms, float64 normals), then cast and scaled
            np_dtype = np.float32 if narrow else np.float64
        buf = _aligned_empty((r, n), np_dtype)
        _draw_numpy(_stream_seeds(keys, stream),
                    None if at is None else at.detach().to("cpu", torch.int64).numpy(),
                    buf, kind, *((a, b) if direct else (0.0, 1.0)))
        out = torch.from_numpy(buf).reshape(out_shape)
        if direct or (a, b) == (0.0, 1.0):
            return out.to(dtype)
        return out.to(dtype).mul_(b - a if kind == "uniform" else b).add_(a)
    seeds = combine(keys, stream)
    if at is None:
        words = _bits_torch(seeds, n)
    else:
        words = mix(seeds.unsqueeze(1) + (at.to(seeds.device, torch.int64) + 1) * _GOLDEN_S)
    if narrow:
        u = _shr(words, 40).to(torch.float32) * (1.0 / (1 << 24))
    elif kind == "uniform":
        u = _shr(words, 11).to(torch.float64) * (1.0 / (1 << 53))
    else:  # inverse CDF of 2u - 1 in (-1, 1): u never reaches 0 or 1, the draw is finite
        u = ((_shr(words, 11).to(torch.float64) + 0.5) * (1.0 / (1 << 52)) - 1.0).erfinv_()
    if kind == "uniform":
        out = u.to(dtype)
    else:
        out = u.mul_(math.sqrt(2.0)).to(dtype)
    out = out.reshape(out_shape)
    if (a, b) == (0.0, 1.0):
        return out
    # in place (out is this call's own buffer): the same operations as ``out * s + a``
    return out.mul_(b - a if kind == "uniform" else b).add_(a)


def uniform(
    keys: torch.Tensor,
    shape: tuple[int, ...],
    *,
    low: float = 0.0,
    high: float = 1.0,
    dtype: torch.dtype = torch.float32,
    stream: int = 0,
    at: torch.Tensor | None = None,
) -> torch.Tensor:
    """U[low, high) draws of shape ``(len(keys), *shape)``, one independent stream per key.

    The draws of a row depend only on its key, ``shape`` and ``stream`` (not on the other rows).
    Rows are vectorised (see :func:`_fill`): one key per perturbed row is as cheap as one per
    sample, and the same key gives the same uniforms on the CPU and on CUDA. ``at`` (R, m)
    int64: only the draws at these flat positions of ``shape``, as (R, m): the same numbers
    as ``uniform(keys, shape).reshape(R, -1).gather(1, at)``, without drawing the others.
    """
    return _fill(keys, shape, dtype, stream, "uniform", float(low), float(high), at)


def normal(
    keys: torch.Tensor,
    shape: tuple[int, ...],
    *,
    mean: float = 0.0,
    std: float = 1.0,
    dtype: torch.dtype = torch.float32,
    stream: int = 0,
    at: torch.Tensor | None = None,
) -> torch.Tensor:
    """N(mean, std**2) draws of shape ``(len(keys), *shape)``; see :func:`uniform` (``at``
    too)."""
    return _fill(keys, shape, dtype, stream, "normal", float(mean), float(std), at)


def permutation_keys(keys: torch.Tensor, n: int, *, stream: int = 0) -> torch.Tensor:
    """Random sort keys (B, n): ``argsort`` along the last axis is a uniform permutation."""
    return uniform(keys, (n,), dtype=torch.float64, stream=stream)


#: the candidate threshold of :func:`smallest_uniforms`: ``k + 4 sqrt(k) + 4`` expected
#: candidates per row leaves a row fewer than k (and so the full draw) with probability ~3e-5
_CANDIDATE_SIGMAS = 4.0
#: rows of :func:`smallest_uniforms`' candidates sorted at once: the row index sits above the
#: 53 bits of a draw in one int64 sort key, so at most 2**10
_SORT_ROWS = 1 << 10
#: draws hashed per pass of :func:`smallest_uniforms` (its passes are fewer than
#: :func:`_draw_numpy`'s, so a larger block pays)
_SMALLEST_BLOCK = 1 << 16
#: above this share of candidates a row is cheaper drawn and partitioned in full
_CANDIDATE_SHARE = 0.3


def smallest_uniforms(keys: torch.Tensor, shape: tuple[int, ...], k: int, *,
                      valid: torch.Tensor | None = None, stream: int = 0) -> torch.Tensor:
    """The positions (R, *shape[:-1], k), ascending, of the ``k`` smallest draws along the
    last axis of ``uniform(keys, shape, dtype=torch.float64, stream=stream)``: a uniform
    random k-subset of each row's positions. ``valid`` (R, shape[-1]) bool: positions that
    are never chosen (as if their draws were +inf; each row needs at least ``k`` valid).

    The same subsets as an ``argpartition`` of the float64 draws (ties, two equal 53-bit
    draws at the k-th place, fall back to it), cheaper on the CPU: a draw is below the k-th
    smallest when few are, so only the draws under a threshold (about ``k + 4 sqrt(k)`` of a
    row, from the top bits of the hash, before its last steps) are finished and ranked; a row
    with fewer than ``k`` under it is drawn in full.
    """
    r = keys.shape[0]
    *lead, g = (int(d) for d in shape)
    if not 1 <= k <= g:
        raise ValueError(f"`k` must be in [1, {g}]; got {k}.")
    runs = math.prod(lead)
    if valid is not None and tuple(valid.shape) != (r, g):
        raise ValueError(f"`valid` must be ({r}, {g}); got {tuple(valid.shape)}.")
    if r == 0:
        return torch.empty((0, *lead, k), dtype=torch.int64, device=keys.device)
    n_valid = g if valid is None else int(valid.sum(1).min())
    if n_valid < k:
        raise ValueError(f"Every row needs at least k={k} valid positions; one has {n_valid}.")
    threshold = (k + _CANDIDATE_SIGMAS * math.sqrt(k) + _CANDIDATE_SIGMAS) / n_valid
    if keys.device.type != "cpu" or threshold > _CANDIDATE_SHARE:
        return _smallest_full(keys, shape, k, valid, stream)
    seeds = _stream_seeds(keys, stream)
    # draw j = run * g + c of a key's stream: the row (key, run) starts at counter run * g
    row_seeds = (seeds[:, None] + np.arange(runs, dtype=np.uint64)[None, :]
                 * np.uint64(g * _GOLDEN & _M64)).reshape(-1)
    rows = r * runs
    # compare the hash's top 31 bits before its last xor-shift (which leaves them unchanged):
    # a threshold that is a multiple of 2**-31 then reads the same bits as the finished word
    bound = np.uint64(min(math.ceil(threshold * 2.0**31), (1 << 31) - 1) << 33)
    valid_np = None if valid is None else valid.detach().to("cpu", torch.bool).numpy()
    out = np.empty((rows, k), dtype=np.int64)
    full_rows: list[np.ndarray] = []
    step = max(1, min(_SORT_ROWS, _SMALLEST_BLOCK // g))
    tiled = _tiled_counters(g, step).reshape(step, g)
    z_buf = np.empty((step, g), dtype=np.uint64)
    t_buf = np.empty_like(z_buf)
    m_buf = np.empty((step, g), dtype=bool)
    row_bits = np.arange(step, dtype=np.int64) << 53
    # a block's row r ends at flat position (r + 1) * g, and starts at r * g
    row_ends = np.arange(1, step + 1, dtype=np.int64) * g
    row_starts = (row_ends - g)[:, None]
    for lo in range(0, rows, step):
        hi = min(rows, lo + step)
        b = hi - lo
        z, t = z_buf[:b], t_buf[:b]
        np.add(tiled[:b], row_seeds[lo:hi, None], out=z)
        _mix_to_last_shift(z, t)
        below = np.less(z, bound, out=m_buf[:b])
        if valid_np is not None:
            below &= valid_np[np.arange(lo, hi) // runs]
        flat = np.flatnonzero(below)
        local = flat // g
        w = z.reshape(-1).take(flat)
        w ^= w >> np.uint64(31)
        w >>= np.uint64(11)
        # (row, draw) in one sortable int64: each row's candidates in order of their draws
        sort_key = w.view(np.int64)
        sort_key |= row_bits.take(local)
        # the candidates before each row's end (flat is ascending): a search per row,
        # cheaper than counting the candidates' rows
        ends = np.searchsorted(flat, row_ends[:b])
        chosen, bad = _rank_candidates(sort_key, local, ends, k)
        if bad.any():
            chosen &= ~bad.take(local)
            full_rows.append(np.flatnonzero(bad) + lo)
            columns = flat
            columns -= local * g
            out[np.flatnonzero(~bad) + lo] = columns[chosen].reshape(-1, k)
        else:  # k chosen per row, in order: their flat positions less their rows' starts
            np.subtract(flat[chosen].reshape(b, k), row_starts[:b], out=out[lo:hi])
    if full_rows:
        again = np.concatenate(full_rows)
        u = np.empty((again.size, g), dtype=np.float64)
        _draw_numpy(row_seeds[again], None, u, "uniform", 0.0, 1.0)
        if valid_np is not None:
            u[~valid_np[again // runs]] = np.inf
        picked = np.argpartition(u, k - 1, axis=1)[:, :k]
        picked.sort(axis=1)
        out[again] = picked
    return torch.from_numpy(out).view(r, *lead, k).to(keys.device)


def _rank_candidates(sort_key: np.ndarray, local: np.ndarray, ends: np.ndarray, k: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Which candidates are their row's k smallest, and which rows cannot say: ``sort_key``
    (C,) int64 the (row, draw) keys of the candidates of ``len(ends)`` rows, ``local`` (C,)
    their rows, ascending, ``ends`` (rows,) the number of candidates up to each row's end. A
    row with fewer than k candidates, or whose (k+1)-th smallest draw equals its k-th
    (argpartition would take one of the two), is bad: the caller draws it in full."""
    if sort_key.size == 0:  # no candidate in any row: every row is drawn in full
        return np.zeros(0, dtype=bool), np.ones(ends.shape[0], dtype=bool)
    counts = ends.copy()
    counts[1:] -= ends[:-1]
    ranked = np.sort(sort_key)
    kth_at = ends - counts + (k - 1)
    short = counts < k
    kth_at[short] = 0
    kth = ranked.take(kth_at)
    bad = short | (ranked.take(np.minimum(kth_at + 1, ends - 1)) == kth) & (counts > k)
    return sort_key <= kth.take(local), bad


def _smallest_full(keys: torch.Tensor, shape: tuple[int, ...], k: int,
                   valid: torch.Tensor | None, stream: int) -> torch.Tensor:
    """:func:`smallest_uniforms` from every draw: argpartition on the CPU, topk elsewhere."""
    u = uniform(keys, shape, dtype=torch.float64, stream=stream)
    if valid is not None:
        u = u.masked_fill(~valid.to(u.device).view(valid.shape[0], *[1] * (len(shape) - 1),
                                                    valid.shape[1]), math.inf)
    if u.device.type == "cpu":
        # the order within a subset depends on the CPU's SIMD kernels (and differs from
        # topk's): sorted positions are the same on every machine and device
        idx = np.argpartition(u.numpy(), k - 1, axis=-1)[..., :k]
        idx.sort(axis=-1)
        return torch.from_numpy(idx)
    return u.topk(k, dim=-1, largest=False).indices.sort(dim=-1).values
