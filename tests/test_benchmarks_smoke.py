"""Smoke test of the benchmark harness (benchmarks/): it runs, and its table is well formed.

Speed is never asserted here; the numbers live in docs/benchmarks.md.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks import harness
from benchmarks.run import COLUMNS, main, read_existing
from benchmarks.specs import all_specs, select_specs
from benchmarks.workloads import BlackBoxModel, ResNet18, get_workload

SMOKE = ["PixelFlipping", "Sparseness"]


def _table(md: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in md.split("## Results", 1)[1].splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    rows = [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in lines[2:]]
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


@pytest.mark.parametrize("with_quantus", [True, False], ids=["quantus", "no-quantus"])
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
    back, runs = read_existing(out)
    assert [r.metric for r in back] == SMOKE and len(runs) == 1


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
    ag = harness.max_abs_diff(np.array([1.0, np.nan]), np.array([1.5, np.nan]))
    assert ag.value == 0.5
