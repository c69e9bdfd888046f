"""The benchmark data (benchmarks/data/results.json) and the page rendered from it
(docs/benchmarks.md): they cannot drift apart, the data round-trips, and a metric tagged
``benchmark_spec = False`` needs no spec while an untagged one does."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks import harness, run, store
from benchmarks.specs import Spec, all_specs, check_spec_coverage, missing_specs
from benchmarks.workloads import get_workload
from evalkit.metrics import base


def test_committed_page_is_the_rendering_of_the_committed_data():
    data = store.load(store.DATA_PATH)
    assert data.records and data.runs
    page = run.PAGE_PATH.read_text(encoding="utf-8")
    rendered = run.render_page(data, "docs/benchmarks.md", store.DATA_PATH)
    assert page == rendered, (
        "docs/benchmarks.md is not the rendering of benchmarks/data/results.json (a change of "
        "the data, the tables' code, the specs' targets or the registry); run "
        "`python -m benchmarks.run --render` and commit the page.")
    assert "<!-- benchmark-data" not in page  # the data live only in the data file


def test_committed_data_round_trips():
    text = store.DATA_PATH.read_text(encoding="utf-8")
    data = store.BenchmarkData.loads(text)
    assert data.dumps() == text  # the file is exactly what the code writes
    runs = set(data.runs)
    for rec in data.records:
        # every stored field survives Result and back (fields Result has and the record lacks,
        # added by later code, are not compared)
        back = store.record(store.result(rec))
        assert {k: back[k] for k in rec} == rec, rec["metric"]
        assert rec["extra"]["run"] in runs  # each row names the run it came from
    keys = [store.row_key(rec) for rec in data.records]
    assert len(keys) == len(set(keys))
    # provenance of each run
    for meta in data.runs.values():
        assert {"date", "cpu", "torch", "quantus", "evalkit", "command", "clock"} <= set(meta)


def _row(metric: str, workload: str = "W1", run_id: str = "r1", **kw) -> harness.Result:
    r = harness.Result(metric=metric, family="complexity", workload=workload, n=8, **kw)
    r.extra.update(rounds=3, run=run_id)
    return r


def test_data_format_nan_unknown_fields_and_merge():
    old = store.BenchmarkData.from_results(
        [_row("Sparseness", ours_s=0.5, floor_s=math.nan, agreement_value=np.float64(1e-7),
              ours_fwd=harness.ForwardCount(0, 0)),
         _row("Complexity", ours_s=0.25)],
        {"r1": {"date": "r1", "command": "python -m benchmarks.run --metrics Sparseness"}})
    # a later harness may store extra per-row fields: they are kept and rendering ignores them
    old.records[1] |= {"condition": "used process", "wall_s": 0.3}
    text = old.dumps()
    back = store.BenchmarkData.loads(text)
    assert back.dumps() == text
    sparse = next(rec for rec in back.records if rec["metric"] == "Sparseness")
    assert sparse["floor_s"] is None and sparse["ours_fwd"] == [0, 0]
    assert math.isnan(store.result(sparse).floor_s)
    assert store.result(sparse).agreement_value == 1e-7
    assert list(sparse) == sorted(sparse)  # keys sorted: stable diffs
    md = run.render_page(back)
    assert "| Complexity | complexity | W1 (N=8) |" in md

    newer = store.BenchmarkData.from_results(
        [_row("Sparseness", run_id="r2", ours_s=0.4)], {"r2": {"date": "r2", "command": "c2"}})
    merged = back.merged(newer)
    assert sorted(merged.runs) == ["r1", "r2"]
    kept = next(rec for rec in merged.records if rec["metric"] == "Complexity")
    assert kept["condition"] == "used process" and kept["wall_s"] == 0.3  # kept as stored
    assert next(r for r in merged.results() if r.metric == "Sparseness").ours_s == 0.4
    # several runs: the page says so and gives each row's run
    md = run.render_page(merged)
    assert "this file merges several runs" in md and "| r2 |" in md
    # a run no row comes from any more is dropped
    assert list(merged.merged(store.BenchmarkData.from_results(
        [_row("Complexity", run_id="r3", ours_s=0.2)], {"r3": {"date": "r3"}})).runs) == [
        "r2", "r3"]

    with pytest.raises(ValueError, match="format"):
        store.BenchmarkData.loads(json.dumps({"format": 0, "runs": {}, "results": []}))


def test_legacy_page_data_is_imported_unchanged(tmp_path):
    results = [_row("Sparseness", ours_s=0.5, quantus_s=1.5), _row("Complexity", ours_s=0.25)]
    runs = {"r1": {"date": "r1", "command": "python -m benchmarks.run --out old.md"}}
    embedded = {"runs": runs, "results": [store._clean(r.to_dict()) for r in results]}
    body = run.render_markdown(results, runs, "cmd")
    page = tmp_path / "old.md"
    page.write_text(body + "\n<!-- benchmark-data\n" + json.dumps(embedded) + "\n-->\n",
                    encoding="utf-8")
    data = store.from_legacy_page(page.read_text(encoding="utf-8"))
    assert data.runs == runs
    assert sorted(json.dumps(r, sort_keys=True) for r in data.records) == sorted(
        json.dumps(r, sort_keys=True) for r in embedded["results"])
    # the command line does the same and renders the new page beside it
    out = tmp_path / "new.md"
    got, md = run.main(["--import-page", str(page), "--out", str(out)])
    assert [r.metric for r in got] == ["Sparseness", "Complexity"]
    assert store.load(tmp_path / "new.json").dumps() == data.dumps()
    assert out.read_text(encoding="utf-8") == md and "<!-- benchmark-data" not in md
    with pytest.raises(ValueError, match="embeds no benchmark data"):
        store.from_legacy_page(md)


@pytest.fixture
def scratch_registry(monkeypatch):
    """The metric registry, restored after the test (metric classes register when defined)."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))


def _toy_metric(name: str, **tags) -> type[base.Metric]:
    """A new metric class; defining it registers it (it is never called here)."""
    return type(name, (base.Metric,), {"family": "complexity", "__module__": __name__, **tags})


def test_a_metric_tagged_benchmark_spec_false_needs_no_spec(scratch_registry):
    specs = all_specs()
    check_spec_coverage(specs)  # the registry as committed is covered
    _toy_metric("ToyUnbenchmarked", benchmark_spec=False)
    assert "ToyUnbenchmarked" in set(base.list_metrics()["name"])
    assert "ToyUnbenchmarked" not in missing_specs(specs)
    check_spec_coverage(specs)
    # the page's summary names it as registered without a benchmark, not as missing rows
    summary = "\n".join(run._summary_lines([]))
    tagged = next(line for line in summary.splitlines()
                  if "(their class declares `benchmark_spec = False`): " in line)
    assert "ToyUnbenchmarked" in tagged.rstrip(".").split(": ", 1)[1].split(", ")
    assert "without rows**: " in summary and "ToyUnbenchmarked," not in summary


def test_an_untagged_metric_without_a_spec_fails_the_check(scratch_registry):
    _toy_metric("ToyForgotten")
    specs = all_specs()
    assert missing_specs(specs) == ["ToyForgotten"]
    with pytest.raises(LookupError) as info:
        check_spec_coverage(specs)
    message = str(info.value)
    assert "No benchmark spec for ToyForgotten." in message
    assert "benchmarks/specs/<family>.py" in message and "benchmark_spec = False" in message
    # a spec without a Quantus counterpart covers it
    spec = Spec("ToyForgotten", "complexity",
                lambda w, ctx: harness.Case(ours=lambda: np.zeros(w.n), floor=None))
    check_spec_coverage([*specs, spec])


def test_a_spec_without_quantus_gives_a_row_without_the_quantus_column(monkeypatch, tmp_path):
    spec = Spec("OwnOnly", "complexity",
                lambda w, ctx: harness.Case(ours=lambda: np.zeros(w.n), floor=None),
                workloads=("W1",))
    monkeypatch.setattr(run, "select_specs", lambda *a, **k: [spec])
    monkeypatch.setattr(run, "PARTIAL_DIR", tmp_path)
    get_workload("W1", 8)
    results, _ = run.run_benchmarks(workloads=("W1",), n={"W1": 8}, repeats=1,
                                    min_time=0.0, verbose=False)
    (r,) = results
    assert not r.error and math.isfinite(r.ours_s) and math.isnan(r.quantus_s)
    cells = run._row_cells(r)
    assert cells[run.COLUMNS.index("Quantus (s)")] == "—"
    assert cells[run.COLUMNS.index("speed-up (Quantus / ours)")] == "—"
    assert run._checks(r)["quantus"] is None  # no Quantus target where there is no Quantus
