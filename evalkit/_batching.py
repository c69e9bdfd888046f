"""Batch-size resolution under a memory budget (shared by the runner, predict and explain)."""

from __future__ import annotations

import ctypes
import os
import re
import sys

__all__ = ["CPU_MALLOC_SETTINGS", "DEFAULT_MEMORY_BUDGET", "MAX_AUTO_BATCH",
           "SMALL_ROWS_CALL_BYTES", "SMALL_ROWS_CHUNK_BYTES", "SMALL_ROWS_MAX_BATCH",
           "keep_cpu_heap", "parse_bytes",
           "resolve_batch_size"]

#: bytes of *input* data per forward chunk when no batch size is given, by device type. On a
#: CPU, throughput peaks when a chunk's activations stay near the caches (measured on the W1
#: benchmark CNN: 165 us/sample at 256 rows, 400 us/sample at 2048 rows), and one chunk's
#: memory must fit the free heap glibc keeps between chunks (64 MiB, see :func:`keep_cpu_heap`):
#: at 4 MiB (445 rows of W1, 6 of W2's 224 x 224 images) a W1 forward pass spans 50-60 MiB of
#: heap and re-faulted its pages in 3 of 6 processes measured (up to 17,000 faults a chunk);
#: 2 MiB (222 and 3 rows) spans about half and faulted in none, at the same speed per row on
#: W1 (W2: about 4 % slower than 6-row chunks that do not fault). A GPU wants large chunks.
DEFAULT_MEMORY_BUDGET = {"cpu": 2 * 2**20, "cuda": 256 * 2**20}
#: the largest batch chosen automatically, by device type (on a CPU, for rows that are not
#: small: see :data:`SMALL_ROWS_CHUNK_BYTES`)
MAX_AUTO_BATCH = {"cpu": 512, "cuda": 8192}
#: on a CPU, rows so small that :data:`MAX_AUTO_BATCH` of them hold less input than this get
#: chunks of this much input instead, up to :data:`SMALL_ROWS_MAX_BATCH` rows. Where a row is a
#: few dozen values (a table's), the model is small too and each chunk's fixed costs (the
#: Python around a forward, the target selection, a few small ops: tens of us) weigh as much
#: as the rows: the W4 MLP (30 float32 features, 120 bytes) ran its bare forwards at 0.19-0.25 us a
#: row in 512-row chunks and 0.16-0.21 us in 1,024-2,184-row chunks, and PixelFlipping on it
#: took 20-25 % less time in 1,092-row chunks. Rows of 256 bytes and more keep 512: W6's 64
#: token ids (256 bytes as the runner counts them, in the model's dtype) are embedded into
#: activations a hundred times larger, and its transformer ran 45 % slower per row in 1,024-row
#: chunks than in 512-row ones.
SMALL_ROWS_CHUNK_BYTES = 128 * 2**10
SMALL_ROWS_MAX_BATCH = 4096
#: on a CPU, input bytes of small rows that a metric hands to one call of ``evalkit.explain``
#: (or of an explain function with ``chunks_internally = True``) when it explains rows itself
#: (``evalkit.metrics.base.explain_call_rows``; other explain functions get at most
#: :data:`SMALL_ROWS_MAX_BATCH` rows): each call still computes in the model's chunks, so what
#: a call adds is its input and output, not activations; each call has fixed costs
#: (validation, set-up: about 0.3 ms), which W4's 20,000 perturbed rows paid 7 times in calls
#: of 3,276 rows and pay once in one call of 2.4 MB
SMALL_ROWS_CALL_BYTES = 8 * 2**20

#: glibc malloc settings applied once, on the first CPU chunk (see :func:`keep_cpu_heap`): the
#: largest mmap threshold and the trim threshold that glibc itself adopts dynamically
#: (mallopt(3): DEFAULT_MMAP_THRESHOLD_MAX is 32 MiB on 64-bit systems, and the trim threshold
#: follows at twice the mmap threshold)
CPU_MALLOC_SETTINGS = {"M_MMAP_THRESHOLD": 32 * 2**20, "M_TRIM_THRESHOLD": 64 * 2**20}
_MALLOPT_PARAM = {"M_TRIM_THRESHOLD": -1, "M_MMAP_THRESHOLD": -3}
#: environment variables through which a user configures glibc malloc; any of them set means
#: the user chose, and :func:`keep_cpu_heap` changes nothing
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
               "MALLOC_MMAP_MAX_")
_cpu_heap_state: bool | None = None

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30}


def keep_cpu_heap() -> bool:
    """Keep chunk-sized memory in glibc's heap between forward chunks (once per process).

    glibc returns the free top of its heap to the OS once it exceeds the *trim threshold*, and
    serves blocks above the *mmap threshold* with fresh mappings. Both start at 128 KiB and
    rise only when the process frees a mapped block, up to 32 / 64 MiB (mallopt(3)), so they
    depend on what the process did before: in a fresh process they end near the size of one
    activation, every forward chunk then grows the heap past the trim threshold and gives the
    pages back when it ends, and the next chunk faults them in again (on W1 15-50 page faults
    per row, 20-30 % more CPU time per row, at every chunk size from 111 to 445 rows); a
    process that has freed a large NumPy array has higher thresholds and mostly no faults
    (``python -m benchmarks.scripts.chunk_faults`` measures both). Setting the thresholds to the
    largest values glibc adopts by itself (:data:`CPU_MALLOC_SETTINGS`) makes every process
    behave like the best case: a chunk's memory stays in the heap (at most 64 MiB of free
    heap is kept), and blocks over 32 MiB are still mapped and unmapped.

    Only on Linux with glibc, and only if the user has not configured malloc through its
    environment variables (``MALLOC_TRIM_THRESHOLD_`` etc., or ``GLIBC_TUNABLES`` naming
    ``glibc.malloc``) and has not turned it off with ``EVALKIT_KEEP_HEAP=0`` (the setting is
    process-wide). Returns whether the settings are in place (applied now or before).
    """
    global _cpu_heap_state
    if _cpu_heap_state is not None:
        return _cpu_heap_state
    _cpu_heap_state = False
    if not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in _MALLOC_ENV) or "glibc.malloc" in os.environ.get(
            "GLIBC_TUNABLES", ""):
        return False
    if os.environ.get("EVALKIT_KEEP_HEAP", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  # glibc only (not musl)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _cpu_heap_state = all(mallopt(_MALLOPT_PARAM[name], value) == 1
                          for name, value in CPU_MALLOC_SETTINGS.items())
    return _cpu_heap_state


def parse_bytes(value: int | float | str | None) -> int | None:
    """Parse ``"512MiB"``, ``"2GB"`` or a number of bytes."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value <= 0:
            raise ValueError(f"`memory_budget` must be positive; got {value}.")
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", value)
        if m and m.group(2).lower() in _UNITS:
            return parse_bytes(float(m.group(1)) * _UNITS[m.group(2).lower()])
    raise ValueError(f"`memory_budget` must be a number of bytes or a string like '512MiB'; "
                     f"got {value!r}.")


def resolve_batch_size(
    batch_size: int | None,
    row_bytes: int,
    memory_budget: int | str | None = None,
    device_type: str = "cpu",
) -> int:
    """The number of rows per forward chunk: ``batch_size`` if given, else from the budget
    (default: per device type, see ``DEFAULT_MEMORY_BUDGET``), at most ``MAX_AUTO_BATCH`` rows
    (on a CPU, more for rows under 256 bytes: see ``SMALL_ROWS_CHUNK_BYTES``).

    For CPU chunks, the first call also applies :func:`keep_cpu_heap`, so that chunks of this
    size run without page faults in any process."""
    if device_type == "cpu":
        keep_cpu_heap()
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer; got {batch_size!r}.")
        return batch_size
    kind = "cuda" if device_type == "cuda" else "cpu"
    budget = parse_bytes(memory_budget) or DEFAULT_MEMORY_BUDGET[kind]
    row_bytes = max(1, row_bytes)
    cap = MAX_AUTO_BATCH[kind]
    if kind == "cpu":  # small rows: larger chunks (see SMALL_ROWS_CHUNK_BYTES)
        cap = max(cap, min(SMALL_ROWS_MAX_BATCH, SMALL_ROWS_CHUNK_BYTES // row_bytes))
    return int(max(1, min(cap, budget // row_bytes)))
