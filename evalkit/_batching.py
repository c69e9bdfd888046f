"""Batch-size resolution under a memory budget (shared by the runner, predict and explain)."""

from __future__ import annotations

import re

__all__ = ["DEFAULT_MEMORY_BUDGET", "MAX_AUTO_BATCH", "parse_bytes", "resolve_batch_size"]

#: bytes of *input* data per forward chunk when no batch size is given, by device type. On a
#: CPU, throughput peaks when a chunk's activations stay near the caches (measured on the W1
#: benchmark CNN: 165 us/sample at 256 rows, 400 us/sample at 2048 rows); a GPU wants large
#: chunks to fill its cores.
DEFAULT_MEMORY_BUDGET = {"cpu": 4 * 2**20, "cuda": 256 * 2**20}
#: the largest batch chosen automatically, by device type
MAX_AUTO_BATCH = {"cpu": 512, "cuda": 8192}

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30}


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
    (default: per device type, see ``DEFAULT_MEMORY_BUDGET``)."""
    if batch_size is not None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer; got {batch_size!r}.")
        return batch_size
    kind = "cuda" if device_type == "cuda" else "cpu"
    budget = parse_bytes(memory_budget) or DEFAULT_MEMORY_BUDGET[kind]
    return int(max(1, min(MAX_AUTO_BATCH[kind], budget // max(1, row_bytes))))
