"""Shared by the tests of the benchmarks' required-work floors (not a test module)."""

from __future__ import annotations

import torch

from benchmarks.harness import Context
from benchmarks.specs import all_specs
from benchmarks.workloads import get_workload


def build_case(name: str, wname: str, n: int = 16):
    """(workload, spec, case) of the spec ``name`` on ``wname`` at ``n`` samples."""
    w = get_workload(wname, n=n)
    spec = next(s for s in all_specs() if s.name == name)
    return w, spec, spec.build(w, Context(batch_size=8, device=torch.device("cpu")))


def check_per_call_steps(case, steps: tuple[str, ...]) -> None:
    """``case`` has the explain() floor and exactly one per-call required step for each of
    ``steps`` (a part of its description), no ranking or scoring, and every form of every
    step runs on the row's data."""
    assert callable(case.floor) and case.explainer is not None  # the explain() floor
    assert case.required is not None and case.required.steps
    assert case.required.ranked is None and case.required.score is None
    whats = [s.what for s in case.required.per_call]
    for part in steps:
        assert any(part in what for what in whats), (part, whats)
    assert len(whats) == len(steps)
    for step in case.required.per_call:  # every form runs on the row's data
        for fn in step.forms.values():
            fn()
