"""Smoke test of the benchmark harness (benchmarks/): it runs, and its table is well formed.

Speed is never asserted here; the numbers live in benchmarks/data/results.json, rendered as
docs/benchmarks.md (tests/test_benchmarks_render.py keeps the two in step).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks import harness, store
from benchmarks.run import COLUMNS, main
from benchmarks.specs import all_specs, check_spec_coverage, select_specs
from benchmarks.workloads import BlackBoxModel, ResNet18, get_workload

SMOKE = ["PixelFlipping", "Sparseness"]


def _table(md: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the per-family result tables (one table per family)."""
    lines = [ln for ln in md.split("## Results", 1)[1].splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    rows = [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in lines
            if not ln.startswith("| metric |") and not ln.startswith("|---")]
    assert all(ln == lines[0] for ln in lines if ln.startswith("| metric |"))
    return header, rows


def _check(results, md: str, *, with_quantus: bool) -> None:
    header, rows = _table(md)
    assert header[: len(COLUMNS)] == COLUMNS
    assert [r.metric for r in results] == SMOKE
    assert len(rows) == len(SMOKE)
    assert all(len(r) == len(header) for r in rows)
    for r in results:
        assert not r.error, r.error
        assert r.workload == "W1" and r.n == 8
        assert math.isfinite(r.ours_s) and r.ours_s > 0
        if with_quantus:
            assert not r.quantus_error, r.quantus_error
            assert math.isfinite(r.quantus_s) and r.quantus_s > 0
            assert math.isfinite(r.speedup) and r.speedup > 0
            assert r.agreement_value is not None and math.isfinite(r.agreement_value)
        else:
            assert math.isnan(r.quantus_s) and r.quantus_fwd is None
    pf, sp = results
    assert math.isfinite(pf.floor_s) and pf.floor_s > 0 and math.isfinite(pf.floor_ratio)
    # 8 samples x (84 removal steps + the unperturbed input), plus at most a shape probe
    assert 8 * 85 <= pf.ours_fwd.rows <= 8 * 85 + 1
    if with_quantus:
        assert pf.quantus_fwd.rows == 8 * 84
        assert pf.agreement_value < 1e-3
        assert sp.agreement_value < 1e-5
    assert sp.ours_fwd.rows == 0 and math.isnan(sp.floor_s)


@pytest.mark.parametrize("with_quantus", [pytest.param(True, marks=pytest.mark.oracle), False],
                         ids=["quantus", "no-quantus"])
def test_quick_run(tmp_path, with_quantus):
    if with_quantus:
        pytest.importorskip("quantus")
    out = tmp_path / "bench.md"
    argv = ["--quick", "--workloads", "W1", "--metrics", *SMOKE, "--out", str(out)]
    if not with_quantus:
        argv.append("--no-quantus")
    results, md = main(argv)
    _check(results, md, with_quantus=with_quantus)
    assert out.read_text(encoding="utf-8") == md
    assert "AMD" in md or "cpu" in md  # machine details header
    data = store.load(out.with_suffix(".json"))  # the data beside a page outside docs/
    assert sorted(r.metric for r in data.results()) == sorted(SMOKE) and len(data.runs) == 1
    assert f"from the data in `{out.with_suffix('.json')}`" in md


def test_update_merges_rows(tmp_path):
    out = tmp_path / "bench.md"
    common = ["--quick", "--no-quantus", "--workloads", "W1", "--out", str(out)]
    main([*common, "--metrics", "Sparseness"])
    _, md = main([*common, "--metrics", "Complexity", "--update"])
    _, rows = _table(md)
    assert sorted(r[0] for r in rows) == ["Complexity", "Sparseness"]


def test_specs_registry():
    names = [s.name for s in all_specs()]
    assert len(names) == len(set(names))
    assert {"PixelFlipping", "Sparseness", "Complexity", "EffectiveComplexity",
            "Saliency", "IntegratedGradients"} <= set(names)
    assert [s.name for s in select_specs(families=["complexity"])] == [
        "Sparseness", "Complexity", "EffectiveComplexity"]
    with pytest.raises(KeyError):
        select_specs(["NoSuchMetric"])


def test_workloads_are_seeded_and_leave_global_rng_alone():
    state = torch.random.get_rng_state()
    w = get_workload("W1", 8)
    assert torch.equal(state, torch.random.get_rng_state())
    assert w.x.shape == (8, 3, 28, 28) and w.a.shape == (8, 1, 28, 28)
    assert w.a_channels.shape == (8, 3, 28, 28) and w.s.shape == (8, 1, 28, 28)
    assert float(w.x.min()) >= 0 and float(w.x.max()) <= 1
    assert not w.model.training
    with torch.inference_mode():
        assert torch.equal(w.model(w.x).argmax(1), w.y)
    again = get_workload("W1", 8)
    assert again is w  # cached
    assert isinstance(w.model, BlackBoxModel)
    assert sum(p.numel() for p in ResNet18().parameters()) == 11_689_512  # torchvision's count


def test_timing_primitives():
    calls = []
    t = harness.time_alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                 repeats=2, min_time=0.0)
    assert calls == ["a", "b", "a", "b", "a", "b"]  # one warm-up each, then alternating
    assert len(t["a"].times) == 2 and t["a"].median >= 0
    model = torch.nn.Linear(3, 2)
    with harness.count_forwards(model) as c:
        model(torch.zeros(5, 3))
        model(torch.zeros(2, 3))
    model(torch.zeros(1, 3))
    assert (c.calls, c.rows) == (2, 7) and not model._forward_pre_hooks
    with harness.count_forwards(model) as c:
        xg = torch.zeros(4, 3, requires_grad=True)
        torch.autograd.grad(model(xg).sum(), xg)  # an explanation: forward and backward
        model(torch.ones(3, 3, requires_grad=True))  # recorded, but no gradient reaches it
        with torch.no_grad():
            model(torch.zeros(2, 3))
        with torch.inference_mode():
            model(torch.zeros(1, 3))
    assert (c.rows, c.grad_rows) == (10, 4) and not model._forward_hooks
    ag = harness.max_abs_diff(np.array([1.0, np.nan]), np.array([1.5, np.nan]))
    assert ag.value == 0.5


def test_every_registered_metric_has_a_spec():
    # except metrics tagged benchmark_spec = False (tests/test_benchmarks_render.py)
    specs = all_specs()
    check_spec_coverage(specs)
    # suites and the meta-evaluation measure no single metric
    assert {s.name for s in specs if not s.registered} >= {
        "FaithfulnessSuite[separate]", "RobustnessSuite[forward_cache]", "MetaEvaluation (W3)"}


def _result(metric, family="faithfulness", workload="W1", **kw):
    r = harness.Result(metric=metric, family=family, workload=workload, n=8, **kw)
    r.extra["rounds"] = 3
    return r


def test_targets_summary_misses_and_sharing_render():
    from benchmarks import run

    fwd = harness.ForwardCount
    results = [
        # within the floor target and faster than Quantus
        _result("PixelFlipping", ours_s=1.0, quantus_s=1.5, floor_s=0.9),
        # misses the floor target (1.5x) and is slower than Quantus
        _result("Deletion", ours_s=1.5, quantus_s=1.2, floor_s=1.0),
        # a Python-loop metric: 5x applies only where Quantus is >= 5x the floor
        _result("ROAD", ours_s=1.0, quantus_s=3.0, floor_s=1.0),       # Quantus 3x floor
        _result("IROF[1-channel]", ours_s=1.0, quantus_s=4.0, floor_s=0.5),  # reachable, missed
        _result("NonSensitivity", family="axiomatic", workload="W2",
                note="not run on W2: too many rows", extra={"skipped": "too many rows"}),
        _result("FaithfulnessSuite[separate]", ours_s=2.0, ours_fwd=fwd(10, 1000)),
        _result("FaithfulnessSuite[forward_cache]", ours_s=1.0, ours_fwd=fwd(6, 400),
                floor_s=0.9, settings="one forward_cache() around A, B"),
        # the family's own targets (specs' speedup_targets): 10x on W1 for localisation ...
        _result("TopKIntersection", family="localisation", ours_s=1.0, quantus_s=8.0),
        _result("TopKIntersection", family="localisation", workload="W2", ours_s=1.0,
                quantus_s=2.0),  # no target on W2
        # ... 2x for MPRT, where Quantus is at least 2x the floor
        _result("MPRT", family="randomisation", ours_s=1.0, quantus_s=2.5, floor_s=1.0),
        _result("MPRT", family="randomisation", workload="W2", ours_s=1.0, quantus_s=1.5,
                floor_s=1.0),  # Quantus 1.5x the floor: 2x unreachable
    ]
    checks = {(r.metric, r.workload): run._checks(r) for r in results}
    checks.update({r.metric: checks[(r.metric, r.workload)] for r in results
                   if r.workload == "W1"})
    none = {"floor": None, "quantus": None, "loop": None, "spec": None}
    assert checks["PixelFlipping"] == {**none, "floor": True, "quantus": True}
    assert checks["Deletion"] == {**none, "floor": False, "quantus": False}
    assert checks["ROAD"]["loop"] is None and checks["ROAD"]["quantus"] is True
    assert checks["IROF[1-channel]"]["loop"] is False
    assert checks["NonSensitivity", "W2"] == none
    assert all(v is None for v in checks["FaithfulnessSuite[separate]"].values())
    assert checks["TopKIntersection"]["spec"] is False
    assert checks["TopKIntersection", "W2"]["spec"] is None
    assert checks["MPRT"]["spec"] is True
    assert checks["MPRT", "W2"]["spec"] is None

    md = run.render_markdown(results, {"r": {"date": "r", "command": "cmd"}}, "cmd")
    summary = md.split("## Summary", 1)[1].split("## Rows that miss", 1)[0]
    faith = next(ln for ln in summary.splitlines() if ln.startswith("| faithfulness |"))
    # floor: PixelFlipping, ROAD met; Deletion, IROF missed
    assert "2/4 (2/4 rows)" in faith and "0/1 (0/1 rows)" in faith
    misses = md.split("## Rows that miss a target", 1)[1].split("## ", 1)[0]
    assert "| Deletion | W1 (N=8) | floor ratio <= 1.25 | 1.50 |" in misses
    assert "| IROF[1-channel] | W1 (N=8) | >= 5x Quantus |" in misses
    assert "| TopKIntersection | W1 (N=8) | >= 10x Quantus | speed-up 8.00 |" in misses
    loc = next(ln for ln in summary.splitlines() if ln.startswith("| localisation |"))
    assert loc.endswith("| 0/1 (0/1 rows) |")
    assert ">= 10x on W1 for PointingGame" in summary and ">= 2x on W1, W2 for MPRT" in summary
    assert "PixelFlipping" not in misses and "NonSensitivity" not in misses
    sharing = md.split("## Shared work", 1)[1].split("## ", 1)[0]
    assert "| FaithfulnessSuite | W1 (N=8) | 1000 / 400 (60% saved) |" in sharing
    _, rows = _table(md)
    skipped = next(r for r in rows if r[0] == "NonSensitivity")
    assert "not run on W2: too many rows" in skipped[COLUMNS.index("note")]


def test_case_budget_uses_the_warm_up_when_one_round_does_not_fit():
    from benchmarks.specs import Spec

    w = get_workload("W1", 8)
    calls = []

    def build(w, ctx):
        return harness.Case(ours=lambda: calls.append("ours"), floor=None)

    spec = Spec("Fake", "faithfulness", build)
    ctx = harness.Context(batch_size=8, device=torch.device("cpu"))
    res = harness.run_case(spec, w, ctx, repeats=3, min_time=0.0, max_case_s=0.0)
    assert res.extra["rounds"] == 0 and calls == ["ours"]  # the counted call only
    assert math.isfinite(res.ours_s)
    calls.clear()
    res = harness.run_case(spec, w, ctx, repeats=3, min_time=0.0, max_case_s=1e9)
    assert res.extra["rounds"] == 3 and len(calls) == 1 + 3  # the counted call, 3 rounds


def test_spec_scale_builds_the_workload_at_its_own_size(monkeypatch, tmp_path):
    from benchmarks import run
    from benchmarks.specs import Spec

    seen = []

    def build(w, ctx):
        seen.append(w.n)
        return harness.Case(ours=lambda: np.zeros(w.n), floor=None)

    specs = [Spec("Scaled", "complexity", build, workloads=("W1",), scale=(("W1", 12),)),
             Spec("Plain", "complexity", build, workloads=("W1",))]
    monkeypatch.setattr(run, "select_specs", lambda *a, **k: specs)
    monkeypatch.setattr(run, "PARTIAL_DIR", tmp_path)
    results, _ = run.run_benchmarks(workloads=("W1",), use_quantus=False, n={"W1": 8},
                                    repeats=1, min_time=0.0, verbose=False)
    assert [r.n for r in results] == [12, 8] and seen == [12, 8]
    # --quick keeps every spec at the quick size
    seen.clear()
    results, _ = run.run_benchmarks(workloads=("W1",), use_quantus=False, quick=True,
                                    metrics=["x"], repeats=1, verbose=False)
    assert seen == [8, 8]


def test_model_floor_replays_gradient_and_forward_rows():
    w = get_workload("W1", 8)
    with harness.count_forwards(w.model) as c:
        harness.model_floor(w, grad_rows=10, rows=5, batch_size=4)()
    # 10 gradient rows in chunks of 4 (4, 4, 2), then 5 bare rows (4, 1)
    assert (c.calls, c.rows, c.grad_rows) == (5, 15, 10)
    assert harness.model_floor(w, 0, 0, 4) is None


def test_meta_target_is_unreachable_when_metaquantus_is_near_the_floor():
    from benchmarks import run

    def w3(ours_s, quantus_s, floor_s):
        return _result("MetaEvaluation (W3)", family="metaeval", ours_s=ours_s,
                       quantus_s=quantus_s, floor_s=floor_s)

    lines = run._metaeval_lines([w3(200.0, 650.0, 180.0)])
    assert "unreachable (MetaQuantus / floor 3.6" in lines[2] and "| 1.11 |" in lines[2]
    assert ">= 10x: met" in run._metaeval_lines([w3(50.0, 650.0, 40.0)])[2]
    assert ">= 10x: missed" in run._metaeval_lines([w3(100.0, 650.0, 40.0)])[2]


def test_part_timer_and_quantus_floor_reach_the_row_and_the_misses():
    from benchmarks import run
    from benchmarks.specs import Spec

    w = get_workload("W1", 8)
    part = harness.PartTimer("imputation")
    slow = part.wrap(lambda: sum(range(20000)))
    q_rows = []

    def build(w, ctx):
        def quantus_floor(count):
            q_rows.append((count.calls, count.rows))
            return harness.forward_floor(w, count.rows, ctx.batch_size, fill=0.0)

        return harness.Case(ours=lambda: (w.model(w.x), slow()), quantus=lambda: w.model(w.x),
                            part=part, quantus_floor=quantus_floor)

    spec = Spec("Fake", "faithfulness", build)
    ctx = harness.Context(batch_size=8, device=torch.device("cpu"), quantus=object())
    res = harness.run_case(spec, w, ctx, repeats=1, min_time=0.0)
    assert not res.error and q_rows == [(1, 8)]  # Quantus' counted calls and rows
    assert res.extra["part"] == "imputation" and res.extra["part_s"] > 0
    assert res.extra["quantus_floor_s"] > 0

    # a constant-image floor runs the same number of rows as the plain one
    with harness.count_forwards(w.model) as c:
        harness.forward_floor(w, 10, 4, fill=0.0)()
    assert (c.calls, c.rows) == (3, 10)

    road = _result("ROAD[1-channel]", ours_s=2.0, quantus_s=6.0, floor_s=0.5,
                   extra={"part": "imputation", "part_s": 1.0})
    mono = _result("Monotonicity", ours_s=6.0, quantus_s=5.6, floor_s=5.8,
                   extra={"quantus_floor_s": 4.9})
    misses = run._misses_lines([road, mono])
    text = "\n".join(misses)
    assert "floor + imputation alone is 3.00 x the floor" in text
    assert "Quantus / (floor + imputation) 4.0" in text
    assert "the model work of Quantus' rows is 4.90 s, of ours 5.80 s" in text
    assert "unreachable by a correct implementation" in text
    cells = run._row_cells(road)
    assert "imputation: 1.00 s of ours, 2.00 x the floor" in cells[COLUMNS.index("note")]


def test_a_reference_implementation_is_timed_beside_ours_and_reported():
    from benchmarks import run
    from benchmarks.specs import Spec

    w = get_workload("W1", 8)
    calls = []

    def build(w, ctx):
        def reference():
            calls.append("reference")
            w.model(w.x)
            return np.ones(w.n) * 0.5

        return harness.Case(
            ours=lambda: np.zeros(w.n), floor=None, reference=reference,
            reference_name="otherlib 1.0",
            reference_agreement=lambda o, r: harness.max_abs_diff(o, r, text="by design"))

    spec = Spec("Fake", "faithfulness", build)
    ctx = harness.Context(batch_size=8, device=torch.device("cpu"))  # no Quantus
    res = harness.run_case(spec, w, ctx, repeats=2, min_time=0.0)
    assert not res.error and calls == ["reference"] * 3  # the counted warm-up, 2 rounds
    assert res.extra["reference"] == "otherlib 1.0" and res.extra["reference_fwd"] == [1, 8]
    assert res.extra["reference_s"] > 0 and res.extra["reference_agreement_value"] == 0.5
    assert res.extra["reference_agreement"] == "max abs diff 0.5 (by design)"
    assert math.isnan(res.quantus_s)  # the Quantus columns stay Quantus'

    def failing(w, ctx):
        return harness.Case(ours=lambda: 0, floor=None, reference=lambda: 1 / 0,
                            reference_name="broken 0.1")

    res = harness.run_case(Spec("Fake", "faithfulness", failing), w, ctx, repeats=1,
                           min_time=0.0)
    assert not res.error and "ZeroDivisionError" in res.extra["reference_error"]
    assert "reference_s" not in res.extra

    fast = _result("ARCC", ours_s=1.0, floor_s=0.5, extra={
        "reference": "otherlib 1.0", "reference_s": 4.0, "reference_fwd": [3, 24],
        "reference_agreement": "max abs diff 0.01"})
    slow = _result("ARCC", workload="W2", ours_s=2.0, floor_s=1.9, extra={
        "reference": "otherlib 1.0", "reference_s": 1.0})
    note = run._row_cells(fast)[COLUMNS.index("note")]
    assert ("otherlib 1.0: 4.00 s, speed-up 4.00, its fwd calls / rows 3 / 24; agreement: "
            "max abs diff 0.01") in note
    md = run.render_markdown([fast, slow], {"r": {"date": "r", "command": "cmd"}}, "cmd")
    table = md.split("### Against other reference implementations", 1)[1].split("## ", 1)[0]
    assert "| ARCC | W1 (N=8) | otherlib 1.0 | 1.00 | 4.00 | 4.00 |" in table
    misses = md.split("## Rows that miss a target", 1)[1].split("## ", 1)[0]
    assert "| ARCC | W2 (N=8) | never slower than otherlib 1.0 | speed-up 0.50 |" in misses
    assert "| ARCC | W1 (N=8) | never slower" not in misses


def test_a_part_that_is_a_floor_makes_the_target_out_of_reach():
    from benchmarks import run

    webp = _result("SIC", ours_s=5.1, floor_s=0.75, extra={
        "part": "WebP encoding", "part_s": 4.2, "part_is_floor": True})
    assert run.unreachable_floor(webp) == pytest.approx((0.75 + 4.2) / 0.75)
    text = run._floor_miss_text(webp)
    assert text == ("6.80 (out of reach: floor + WebP encoding alone is 6.60 x the floor, 4.20 s "
                    "of WebP encoding; ours / that 1.03)")
    # a part of our own work (not a floor) does not make the target out of reach
    own = _result("ROAD", ours_s=2.0, floor_s=0.5, extra={"part": "imputation", "part_s": 1.0})
    assert run.unreachable_floor(own) is None
    assert "out of reach" not in run._floor_miss_text(own)
    # nor does a floor part that leaves the target within reach
    small = _result("SIC", ours_s=1.5, floor_s=1.0, extra={
        "part": "WebP encoding", "part_s": 0.1, "part_is_floor": True})
    assert run.unreachable_floor(small) is None
