"""Smoke tests of the harness's process conditions (fresh / used process, issue 18) and of its
plain-process wall time (a user's script in a new process, issue 24), at tiny sizes.

Speed is never asserted here; only that the paths run and label their rows.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from benchmarks import harness, run, store
from benchmarks.specs import Spec


def _fake_spec(name: str = "Fake") -> Spec:
    def build(w, ctx):
        return harness.Case(ours=lambda: np.zeros(w.n), floor=None)

    return Spec(name, "complexity", build, workloads=("W1",))


def test_used_condition_dirties_the_process_before_each_case(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(run, "dirty_process", lambda: calls.append("dirty"))
    monkeypatch.setattr(run, "select_specs",
                        lambda *a, **k: [_fake_spec("A"), _fake_spec("B")])
    monkeypatch.setattr(run, "PARTIAL_DIR", tmp_path)
    results, meta = run.run_benchmarks(workloads=("W1",), use_quantus=False, n={"W1": 8},
                                       repeats=1, min_time=0.0, verbose=False,
                                       condition="used")
    assert calls == ["dirty", "dirty"]
    assert [r.extra["condition"] for r in results] == ["used", "used"]
    assert "dirty_process" in meta["condition"]
    # without a condition nothing is dirtied and rows carry no condition
    calls.clear()
    results, _ = run.run_benchmarks(workloads=("W1",), use_quantus=False, n={"W1": 8},
                                    repeats=1, min_time=0.0, verbose=False)
    assert calls == [] and all("condition" not in r.extra for r in results)


def test_dirty_process_is_deterministic_numpy_work():
    rng_state = np.random.get_state()[1].copy()  # noqa: NPY002  # the legacy global RNG
    torch_state = torch.random.get_rng_state()
    harness.dirty_process()
    harness.dirty_process(seed=1)
    # its own seeded generator: the global random states are untouched; its arrays straddle
    # glibc's largest dynamic mmap threshold (32 MiB), so it moves the allocator's state
    assert np.array_equal(np.random.get_state()[1], rng_state)  # noqa: NPY002
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert max(harness.DIRTY_ARRAYS_MIB) > 32 > min(harness.DIRTY_ARRAYS_MIB)


def test_conditions_run_each_case_in_a_new_process(tmp_path):
    out = tmp_path / "bench.md"
    results, _ = run.main(["--quick", "--no-quantus", "--workloads", "W1", "--metrics",
                            "Sparseness", "--conditions", "fresh", "used", "--out", str(out)])
    assert [(r.metric, r.extra["condition"]) for r in results] == [
        ("Sparseness", "fresh"), ("Sparseness", "used")]
    for r in results:
        assert not r.error, r.error
        assert r.workload == "W1" and r.n == 8
        assert math.isfinite(r.ours_s) and r.ours_s > 0
    data = store.load(out.with_suffix(".json"))  # the data written beside the page
    back = data.results()
    assert sorted(r.extra["condition"] for r in back) == ["fresh", "used"]
    assert "new process" in next(iter(data.runs.values()))["conditions"]


def test_plain_process_wall_time_at_default_and_one_thread(monkeypatch, tmp_path):
    # issue 24's script, two samples and one iteration, in plain processes
    script = harness.PlainScript("benchmarks.scripts.issue24_w3",
                                 ("--iterations", "1", "--methods", "harness"),
                                 n_key="W3", default_n=2)
    monkeypatch.setitem(harness.PLAIN_SCRIPTS, "Fake", script)
    monkeypatch.setattr(run, "select_specs", lambda *a, **k: [_fake_spec("Fake")])
    monkeypatch.setattr(run, "PARTIAL_DIR", tmp_path)
    results, _ = run.run_benchmarks(workloads=("W1",), use_quantus=False, n={"W1": 8},
                                    repeats=1, min_time=0.0, verbose=False,
                                    plain_threads=[0, 1])
    (row,) = results
    assert "plain_error" not in row.extra, row.extra.get("plain_error")
    walls, process_walls = row.extra["plain_wall_s"], row.extra["plain_process_wall_s"]
    assert set(walls) == set(process_walls) == {"default", "1"}
    for key in walls:
        # the timed call is part of its process (imports and set-up come on top)
        assert 0 < walls[key] < process_walls[key]
    # "default": torch's choice in a new process (this one may have set its own)
    assert row.extra["plain_threads"]["1"] == 1 and row.extra["plain_threads"]["default"] >= 1
    assert row.extra["plain_command"].startswith(
        "python -m benchmarks.scripts.issue24_w3 --iterations 1 --methods harness --n 2")
    # a spec without a plain script gets no such fields
    assert harness.plain_process_times("NoScript", harness.Context(
        batch_size=8, device=torch.device("cpu"))) == {}
