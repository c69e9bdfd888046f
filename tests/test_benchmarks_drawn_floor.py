"""The drawn floor of the W4-W6 rows (benchmarks.harness) and where the page calls the 1.25 floor
target out of reach (benchmarks.run.unreachable_floor)."""

from __future__ import annotations

import math

import torch

from benchmarks import harness, run
from benchmarks.harness import PartTimer, Result
from benchmarks.workloads import get_workload


def test_part_timer_counts_values():
    part = PartTimer("draws")
    fn = part.wrap(lambda n: torch.zeros(n), count=lambda out: out.numel())
    fn(3)
    fn(4)
    assert part.values == 7 and part.seconds >= 0
    part.reset()
    assert part.values == 0 and part.seconds == 0


def test_drawn_floor_draws_what_it_is_told(monkeypatch):
    w = get_workload("W4", n=16)
    drawn: list[int] = []
    real_rand = torch.rand

    def counting_rand(*size, **kwargs):
        out = real_rand(*size, **kwargs)
        drawn.append(out.numel())
        return out

    fn = harness.forward_floor(w, 40, 16, write=True, draws=400)
    monkeypatch.setattr(torch, "rand", counting_rand)
    fn()
    # 3 chunks (16 + 16 + 8 rows), 10 numbers a row
    assert drawn == [160, 160, 80]
    written = harness.forward_floor(w, 40, 16, write=True)
    drawn.clear()  # its fixed mask is drawn once, when it is built
    written()
    assert drawn == []  # the written floor alone draws nothing per call


def _row(floor: float, written: float | None = None, drawn: float | None = None) -> Result:
    r = Result(metric="M", family="faithfulness", workload="W4", n=10, ours_s=10.0,
               floor_s=floor)
    if written is not None:
        r.extra["written_floor_s"] = written
    if drawn is not None:
        r.extra["drawn_floor_s"] = drawn
    return r


def test_unreachable_floor():
    assert run.unreachable_floor(_row(1.0)) is None
    assert run.unreachable_floor(_row(1.0, written=1.2)) is None  # 1.25 can still be met
    assert math.isclose(run.unreachable_floor(_row(1.0, written=1.7)), 1.7)
    assert math.isclose(run.unreachable_floor(_row(1.0, written=1.2, drawn=2.1)), 2.1)
    assert run.unreachable_floor(_row(0.0, written=1.7)) is None  # no floor measured
    text = run._floor_miss_text(_row(1.0, written=1.7, drawn=2.1))
    assert "out of reach" in text and "2.10 x" in text
