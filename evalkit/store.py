"""Crash-safe persistence of evaluation results (SQLite from the standard library) and the
configuration hashes that key them.

:func:`evalkit.evaluate` splits its work into **units**: one (method, metric, chunk of samples)
each, or one (method, metric) over the whole set for set-level metrics. With
``store="results.sqlite"`` every finished unit is committed as one row at once, and a method's
explanations are computed chunk by chunk just before the chunk's units, so a killed run loses
at most the chunk in flight (its explanations and unfinished units), and running the same call
again reads every stored unit back instead of computing it (explaining only the rows of the
chunks still to score).

What a stored row is keyed by
-----------------------------
A row's key is a hash of two parts:

* the **cell hash** of its (method, metric): the metric's class and resolved parameters
  (including the seed :func:`~evalkit.evaluate` derived for it), the method's resolved
  configuration (registered name and keyword arguments, or the explain function's qualified
  name and the hash of its source code), the **model fingerprint** (the class and a hash of
  every parameter and buffer of a ``torch.nn.Module``, and what its ``fingerprint_config()``
  returns where it defines one (e.g. a detector's score thresholds, in
  :class:`~evalkit.models.DetectionModel`), the wrapper's softmax, target and
  output function), the device type and the evalkit version;
* the **data fingerprint** of its chunk: a hash of the chunk's inputs, labels, masks and (for
  methods given as attribution arrays) attributions.

Change any of these and the key changes: old rows are never mixed with new settings (they stay
in the file, unused). Because the data part is per chunk, extending a data set at its end keeps
the chunks already computed. Settings that do not change scores (``batch_size``, ``progress``,
``disable_warnings``, ``aggregate``) are not part of the key.

What can be hashed: ``None``, numbers, strings, sequences, mappings, NumPy arrays and tensors
(by their bytes), functions (qualified name and source), ``functools.partial``, metrics, torch
modules, objects with ``get_params`` or plain attributes; anything else by its ``repr`` with
memory addresses removed (such an object is identified only by that text).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import inspect
import io
import json
import math
import pickle
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__

__all__ = [
    "ResultStore",
    "UnitRecord",
    "canonical",
    "data_fingerprint",
    "fingerprint",
    "model_fingerprint",
]

SCHEMA_VERSION = 1
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_MAX_DEPTH = 8


# ---------------------------------------------------------------------- canonical descriptions
def _qualname(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if name is None:
        name = type(obj).__qualname__
    return f"{module}.{name}"


def _array_digest(arr: Any) -> dict[str, Any]:
    if isinstance(arr, torch.Tensor):
        t = arr.detach().cpu().contiguous()
        shape, dtype = list(t.shape), str(t.dtype)
        try:
            raw = t.numpy().tobytes()
        except (TypeError, RuntimeError):  # bfloat16 and friends: hash the raw bytes
            raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
    else:
        a = np.ascontiguousarray(arr)
        shape, dtype = list(a.shape), str(a.dtype)
        raw = a.tobytes() if a.dtype != object else pickle.dumps(a.tolist())
    h = hashlib.blake2b(raw, digest_size=16).hexdigest()
    return {"__array__": shape, "dtype": dtype, "blake2b": h}


def _source_digest(fn: Any) -> str | None:
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        return None
    return hashlib.blake2b(src.encode(), digest_size=8).hexdigest()


def canonical(obj: Any, _depth: int = 0) -> Any:
    """A JSON-serialisable description of ``obj`` that is stable across runs and processes.

    Used for configuration hashes and for the resolved configurations recorded in
    :class:`~evalkit.results.Results`. See the module docstring for what is described how.
    """
    if _depth > _MAX_DEPTH:
        return _ADDRESS.sub("", repr(obj))
    d = _depth + 1
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return v if math.isfinite(v) else repr(v)
    if isinstance(obj, complex):
        return {"__complex__": [canonical(obj.real), canonical(obj.imag)]}
    if isinstance(obj, enum.Enum):
        return f"{_qualname(type(obj))}.{obj.name}"
    if isinstance(obj, np.ndarray | torch.Tensor):
        return _array_digest(obj)
    if isinstance(obj, torch.dtype | torch.device | np.dtype):
        return str(obj)
    if isinstance(obj, torch.Generator):
        return {"__generator__": int(obj.initial_seed())}
    if isinstance(obj, Mapping):
        return {str(k): canonical(v, d) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, list | tuple):
        return [canonical(v, d) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted((canonical(v, d) for v in obj), key=repr)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, type):
        return {"__class__": _qualname(obj)}
    if isinstance(obj, functools.partial):
        return {"__partial__": canonical(obj.func, d), "args": canonical(obj.args, d),
                "kwargs": canonical(obj.keywords, d)}
    if isinstance(obj, torch.nn.Module):
        return model_fingerprint(obj)
    from .metrics.base import Metric

    if isinstance(obj, Metric):
        return {"__metric__": _qualname(type(obj)), "params": canonical(obj.get_params(), d)}
    if inspect.ismethod(obj):
        return {"__method__": _qualname(obj.__func__), "source": _source_digest(obj.__func__),
                "self": canonical(obj.__self__, d)}
    if inspect.isfunction(obj) or inspect.isbuiltin(obj) or isinstance(obj, np.ufunc):
        out: dict[str, Any] = {"__callable__": _qualname(obj)}
        src = _source_digest(obj) if inspect.isfunction(obj) else None
        if src is not None:
            out["source"] = src
        return out
    if dataclasses.is_dataclass(obj):
        return {"__dataclass__": _qualname(type(obj)),
                "fields": {f.name: canonical(getattr(obj, f.name), d)
                           for f in dataclasses.fields(obj)}}
    get_params = getattr(obj, "get_params", None)
    if callable(get_params):
        try:
            params = get_params()
        except Exception:  # e.g. scikit-learn's deep=True on odd estimators
            params = None
        if isinstance(params, Mapping):
            return {"__object__": _qualname(type(obj)), "params": canonical(params, d)}
    state = getattr(obj, "__dict__", None)
    if isinstance(state, dict):
        public = {k: v for k, v in state.items() if not k.startswith("_")}
        return {"__object__": _qualname(type(obj)), "state": canonical(public, d)}
    return {"__repr__": _ADDRESS.sub("", repr(obj)), "type": _qualname(type(obj))}


def fingerprint(obj: Any) -> str:
    """A 32-hex-digit BLAKE2 hash of :func:`canonical` ``(obj)``."""
    text = json.dumps(canonical(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def data_fingerprint(*arrays: Any) -> str:
    """A hash of the bytes, shapes and dtypes of ``arrays`` (None entries allowed)."""
    h = hashlib.blake2b(digest_size=16)
    for arr in arrays:
        h.update(json.dumps(None if arr is None else _array_digest(arr)).encode())
    return h.hexdigest()


def model_fingerprint(model: Any) -> dict[str, Any]:
    """What identifies a model's behaviour: for a ``torch.nn.Module`` its class and a hash of
    every parameter and buffer (names, shapes, dtypes, values), and its ``fingerprint_config()``
    where it has one (settings outside the state dict); for a
    :class:`~evalkit.models.ModelWrapper` also its softmax, target and output function; for
    other callables their qualified name and, when they can be pickled, a hash of their pickle."""
    from .models import ModelWrapper

    if isinstance(model, ModelWrapper):
        out = {"__wrapper__": type(model).__name__, "softmax": model.softmax,
               "target": canonical(model.target), "model": model_fingerprint(model.model)}
        if getattr(model, "autocast", None) is not None:  # mixed-precision forward passes
            out["autocast"] = str(model.autocast)
        if getattr(model, "output_fn", None) is not None:  # e.g. out["out"] of a dict output
            out["output_fn"] = canonical(model.output_fn)
        return out
    if isinstance(model, torch.nn.Module):
        h = hashlib.blake2b(digest_size=16)
        for name, t in model.state_dict(keep_vars=False).items():
            h.update(name.encode())
            if isinstance(t, torch.Tensor):
                h.update(json.dumps(_array_digest(t)).encode())
        module_fp: dict[str, Any] = {"__module__": _qualname(type(model)),
                                     "state": h.hexdigest()}
        settings = getattr(model, "fingerprint_config", None)
        if callable(settings):  # settings that change outputs but are not in the state dict
            module_fp["config"] = canonical(settings())
        return module_fp
    if model is None:
        return {"__model__": None}
    out: dict[str, Any] = {"__model__": canonical(model) if inspect.isroutine(model)
                           else _qualname(type(model))}
    try:
        out["pickle"] = hashlib.blake2b(pickle.dumps(model), digest_size=16).hexdigest()
    except Exception:  # unpicklable callables are identified by name only
        pass
    return out


# ---------------------------------------------------------------------- the store
def _to_blob(arr: np.ndarray | None) -> bytes | None:
    if arr is None:
        return None
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr), allow_pickle=False)
    return buf.getvalue()


def _from_blob(blob: bytes | None) -> np.ndarray | None:
    if blob is None:
        return None
    return np.load(io.BytesIO(blob), allow_pickle=False)


def _diagnostics_to_blob(values: Mapping[str, Any], per_sample: Iterable[str]) -> bytes:
    """One ``.npz`` of a unit's diagnostics: arrays as they are, DataFrames as their values,
    index and columns (exact), plain values as JSON (no pickles, so a store never runs code
    when read)."""
    import pandas as pd

    arrays: dict[str, np.ndarray] = {"__per_sample__": np.array(sorted(per_sample), dtype=str)}
    for name, value in values.items():
        if isinstance(value, np.ndarray) and value.dtype != object:
            arrays[f"a:{name}"] = value
        elif isinstance(value, pd.DataFrame):
            arrays[f"f:{name}"] = value.to_numpy()
            arrays[f"fi:{name}"] = np.array(json.dumps(
                {"index": value.index.tolist(), "columns": value.columns.tolist(),
                 "names": [value.index.name, value.columns.name]}, default=_json_default))
        else:
            arrays[f"j:{name}"] = np.array(json.dumps(value, default=_json_default))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return repr(value)


def _diagnostics_from_blob(blob: bytes | None) -> tuple[dict[str, Any], frozenset[str]]:
    if blob is None:
        return {}, frozenset()
    import pandas as pd

    values: dict[str, Any] = {}
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        per_sample = frozenset(str(s) for s in data["__per_sample__"])
        for key in data.files:
            kind, _, name = key.partition(":")
            if kind == "a":
                values[name] = data[key]
            elif kind == "f":
                axes = json.loads(str(data[f"fi:{name}"]))
                frame = pd.DataFrame(data[key], index=axes["index"], columns=axes["columns"])
                frame.index.name, frame.columns.name = axes["names"]
                values[name] = frame
            elif kind == "j":
                values[name] = json.loads(str(data[key]))
    return values, per_sample


@dataclass
class UnitRecord:
    """One finished unit of work: the scores of one (method, metric) on samples
    ``start:stop``.

    ``nan_reasons`` maps positions *within the unit* (0 .. stop - start - 1) to reasons;
    ``curves`` is (stop - start, T) or None; ``diagnostics`` what the metric recorded besides
    its scores (``MetricBatch.record``), those named in ``per_sample_diagnostics`` with one
    entry per sample of the unit.
    """

    key: str
    cell_hash: str
    method: str
    metric: str
    start: int
    stop: int
    scores: np.ndarray
    nan_reasons: dict[int, str] = field(default_factory=dict)
    curves: np.ndarray | None = None
    curve_x: np.ndarray | None = None
    seed: int | None = None
    elapsed: float = 0.0
    diagnostics: dict[str, Any] = field(default_factory=dict)
    per_sample_diagnostics: frozenset[str] = frozenset()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    cell_hash TEXT PRIMARY KEY, method TEXT NOT NULL, metric TEXT NOT NULL,
    config TEXT NOT NULL, evalkit_version TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS units (
    key TEXT PRIMARY KEY, cell_hash TEXT NOT NULL, method TEXT NOT NULL, metric TEXT NOT NULL,
    start INTEGER NOT NULL, stop INTEGER NOT NULL, scores BLOB NOT NULL,
    nan_reasons TEXT NOT NULL, curves BLOB, curve_x BLOB, seed INTEGER, elapsed REAL NOT NULL,
    created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS units_cell ON units (cell_hash);
CREATE TABLE IF NOT EXISTS diagnostics (key TEXT PRIMARY KEY, blob BLOB NOT NULL);
"""


class ResultStore:
    """An SQLite file of finished units (see the module docstring).

    Every :meth:`put` is its own committed transaction, so a process killed at any moment
    leaves the file consistent, holding every unit finished before the kill. Several processes
    may write to one file (e.g. the workers of a distributed executor): SQLite serialises the
    writes (write-ahead logging; a writer waits up to ``timeout`` seconds for the lock).

    Parameters
    ----------
    path:
        The database file (created with its parent folders if missing).
    timeout:
        Seconds to wait for a lock held by another process.
    """

    def __init__(self, path: str | Path, *, timeout: float = 60.0) -> None:
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise ValueError(f"`store` must be a file path; {str(self.path)!r} is a directory.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), timeout=timeout)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        with self._conn:
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise ValueError(
                    f"{self.path} was written with store schema {row[0]}; this evalkit reads "
                    f"schema {SCHEMA_VERSION}. Use a new file."
                )

    # ------------------------------------------------------------------ context and cleanup
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM units").fetchone()[0])

    def __repr__(self) -> str:
        return f"ResultStore({str(self.path)!r}, units={len(self)})"

    # ------------------------------------------------------------------ writing
    def put_cell(self, cell_hash: str, method: str, metric: str, config: Mapping[str, Any]) -> None:
        """Record the resolved configuration behind a cell hash (for inspection)."""
        with self._conn:
            self._conn.execute(
                "INSERT OR IGNORE INTO cells VALUES (?, ?, ?, ?, ?, ?)",
                (cell_hash, method, metric, json.dumps(config, sort_keys=True), __version__,
                 time.time()),
            )

    def put(self, record: UnitRecord) -> None:
        """Commit one finished unit (replacing a row with the same key)."""
        n = record.stop - record.start
        scores = np.asarray(record.scores, dtype=np.float64)
        if scores.shape != (n,):
            raise ValueError(f"UnitRecord.scores has shape {scores.shape}; expected ({n},).")
        with self._conn:
            self._conn.execute(
                "INSERT OR REPLACE INTO units VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.key, record.cell_hash, record.method, record.metric, int(record.start),
                 int(record.stop), _to_blob(scores),
                 json.dumps({str(k): v for k, v in record.nan_reasons.items()}),
                 _to_blob(record.curves), _to_blob(record.curve_x),
                 None if record.seed is None else int(record.seed), float(record.elapsed),
                 time.time()),
            )
            if record.diagnostics:
                self._conn.execute(
                    "INSERT OR REPLACE INTO diagnostics VALUES (?, ?)",
                    (record.key, _diagnostics_to_blob(record.diagnostics,
                                                      record.per_sample_diagnostics)))
            else:
                self._conn.execute("DELETE FROM diagnostics WHERE key = ?", (record.key,))

    # ------------------------------------------------------------------ reading
    def present(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` that have a stored row."""
        keys = list(keys)
        found: set[str] = set()
        for i in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            part = keys[i : i + 500]
            marks = ",".join("?" * len(part))
            rows = self._conn.execute(f"SELECT key FROM units WHERE key IN ({marks})", part)
            found.update(r[0] for r in rows)
        return found

    def get(self, key: str) -> UnitRecord | None:
        """The stored unit with this key, or None."""
        row = self._conn.execute(
            "SELECT key, cell_hash, method, metric, start, stop, scores, nan_reasons, curves, "
            "curve_x, seed, elapsed FROM units WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        diag = self._conn.execute("SELECT blob FROM diagnostics WHERE key = ?",
                                  (key,)).fetchone()
        diagnostics, per_sample = _diagnostics_from_blob(None if diag is None else diag[0])
        return UnitRecord(
            key=row[0], cell_hash=row[1], method=row[2], metric=row[3], start=row[4],
            stop=row[5], scores=_from_blob(row[6]),
            nan_reasons={int(k): v for k, v in json.loads(row[7]).items()},
            curves=_from_blob(row[8]), curve_x=_from_blob(row[9]), seed=row[10],
            elapsed=row[11], diagnostics=diagnostics, per_sample_diagnostics=per_sample,
        )

    def keys(self, cell_hash: str | None = None) -> list[str]:
        """Keys of the stored units (of one cell, or all)."""
        if cell_hash is None:
            rows = self._conn.execute("SELECT key FROM units ORDER BY rowid")
        else:
            rows = self._conn.execute("SELECT key FROM units WHERE cell_hash = ? ORDER BY rowid",
                                      (cell_hash,))
        return [r[0] for r in rows]

    def cell_config(self, cell_hash: str) -> dict[str, Any] | None:
        """The configuration recorded with :meth:`put_cell`, or None."""
        row = self._conn.execute("SELECT config FROM cells WHERE cell_hash = ?",
                                 (cell_hash,)).fetchone()
        return None if row is None else json.loads(row[0])
