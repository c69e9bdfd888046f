"""The measured benchmark data, kept apart from the page rendered from it.

``benchmarks/data/results.json`` (committed) holds every measured row and the provenance of the
runs that measured them; ``docs/benchmarks.md`` is rendered from it (``python -m benchmarks.run
--render``). The file is one JSON object::

    {"format": 1,
     "runs": {"<run id>": {"date": ..., "cpu": ..., "torch": ..., "command": ..., ...}, ...},
     "results": [{"metric": ..., "workload": ..., "ours_s": ..., "extra": {"run": ...}}, ...]}

``runs`` keeps each run's details in the order they were recorded (the order of the page's run
tables). ``results`` has one record per row (a :meth:`benchmarks.harness.Result.to_dict`, NaN
written as ``null``), its keys sorted, the records sorted by family, metric and workload, and the
file indented, so a diff shows which values of which rows changed. A record's ``extra["run"]``
names the run it came from. Fields the code does not know are kept as they are (rendering ignores
them), so the format is open to extra per-row columns.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .harness import Result

__all__ = ["DATA_PATH", "FORMAT", "BenchmarkData", "from_legacy_page", "load", "record",
           "result", "row_key", "save"]

#: the committed data behind ``docs/benchmarks.md``
DATA_PATH = Path(__file__).resolve().parent / "data" / "results.json"
#: version of the file's layout (bump it, and convert the file, when the layout changes)
FORMAT = 1


def _json_default(o: Any) -> Any:
    if isinstance(o, float | np.floating):
        return None if not math.isfinite(float(o)) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    return str(o)


def _clean(d: Any) -> Any:
    """NaN -> None recursively (JSON has no NaN)."""
    if isinstance(d, dict):
        return {k: _clean(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_clean(v) for v in d]
    if isinstance(d, float) and not math.isfinite(d):
        return None
    return d


def _sorted_keys(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _sorted_keys(d[k]) for k in sorted(d)}
    if isinstance(d, list):
        return [_sorted_keys(v) for v in d]
    return d


def record(r: Result) -> dict[str, Any]:
    """A row as stored: ``r.to_dict()`` as plain JSON values (NaN as None), keys sorted."""
    return _sorted_keys(json.loads(json.dumps(_clean(r.to_dict()), default=_json_default)))


def result(rec: dict[str, Any]) -> Result:
    """The :class:`Result` of a stored record (seconds stored as None are NaN again; fields
    :class:`Result` does not have are ignored)."""
    d = {k: (math.nan if v is None and k.endswith("_s") else v) for k, v in rec.items()}
    return Result.from_dict(d)


def row_key(rec: dict[str, Any]) -> tuple[str, str, str]:
    """What a newer row replaces in ``--update``: the row of the same metric, workload and
    process condition (``extra["condition"]``: ``"fresh"``, ``"used"``, or none)."""
    return rec["metric"], rec["workload"], (rec.get("extra") or {}).get("condition", "")


def _order(rec: dict[str, Any]) -> tuple[str, str, str]:
    return rec.get("family", ""), rec["metric"], rec["workload"]


_NUMBER_LIST_RE = re.compile(r"\[\n\s*((?:-?[\d.eE+-]+,\s+)*-?[\d.eE+-]+)\n\s*\]")


def _one_line(m: re.Match[str]) -> str:
    return "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]"


@dataclass
class BenchmarkData:
    """Stored rows and the runs they came from."""

    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_results(cls, results: Iterable[Result],
                     runs: dict[str, dict[str, Any]]) -> BenchmarkData:
        return cls(runs=_clean(dict(runs)), records=[record(r) for r in results])

    def results(self) -> list[Result]:
        return [result(rec) for rec in self.records]

    def merged(self, newer: BenchmarkData) -> BenchmarkData:
        """These rows, those of ``newer`` replacing the ones with the same :func:`row_key`; the
        rows kept are not rewritten, and runs no row comes from any more are dropped."""
        fresh = {row_key(rec) for rec in newer.records}
        kept = [rec for rec in self.records if row_key(rec) not in fresh]
        used = {rec.get("extra", {}).get("run") for rec in kept}
        runs = {k: v for k, v in self.runs.items() if k in used} | newer.runs
        return BenchmarkData(runs=runs, records=kept + newer.records)

    def dumps(self) -> str:
        """The file's text: deterministic for the same data."""
        records = sorted((_sorted_keys(rec) for rec in self.records), key=_order)
        data = {"format": FORMAT, "runs": self.runs, "results": records}
        text = json.dumps(data, indent=1, ensure_ascii=False, default=_json_default)
        # lists of numbers (forward calls and rows) on one line; a JSON string holds no raw
        # newline, so only the layout matches
        return _NUMBER_LIST_RE.sub(_one_line, text) + "\n"

    @classmethod
    def loads(cls, text: str) -> BenchmarkData:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise ValueError(f"Benchmark data of format {data.get('format')!r}; this code reads "
                             f"format {FORMAT}.")
        return cls(runs=data.get("runs", {}), records=list(data.get("results", [])))


def load(path: Path | str = DATA_PATH) -> BenchmarkData:
    """The data stored at ``path``; empty if there is no file."""
    path = Path(path)
    if not path.exists():
        return BenchmarkData()
    return BenchmarkData.loads(path.read_text(encoding="utf-8"))


def save(data: BenchmarkData, path: Path | str = DATA_PATH) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data.dumps(), encoding="utf-8")


_LEGACY_RE = re.compile(r"<!-- benchmark-data\n(.*?)\n-->", re.S)


def from_legacy_page(text: str) -> BenchmarkData:
    """The data a page written before this file existed embedded in an HTML comment
    (``<!-- benchmark-data ... -->``), unchanged: ``python -m benchmarks.run --import-page
    OLD.md`` converts such a page (e.g. from an older branch)."""
    m = _LEGACY_RE.search(text)
    if not m:
        raise ValueError("The page embeds no benchmark data (no '<!-- benchmark-data' comment).")
    data = json.loads(m.group(1))
    return BenchmarkData(runs=data.get("runs", {}),
                         records=[_sorted_keys(rec) for rec in data.get("results", [])])
