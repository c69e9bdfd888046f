"""The required-work floor of the W4-W6 rows (benchmarks.harness.required_floor): the written
(or drawn) floor plus the ranking and the scoring that the metric's definition requires at the
row's settings, declared per row in benchmarks.specs.modalities; stored, rendered and used
where the page calls the 1.25 floor target out of reach. Counts and presence only: speed is
never asserted."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks import harness, run
from benchmarks.harness import Context, RequiredWork, Result
from benchmarks.specs import all_specs, modalities
from benchmarks.workloads import get_workload


def _build(name: str, wname: str, n: int = 16):
    w = get_workload(wname, n=n)
    spec = next(s for s in all_specs() if s.name == name)
    return w, spec, spec.build(w, Context(batch_size=8, device=torch.device("cpu")))


def test_rows_declare_the_steps_their_definition_requires():
    _, _, pf = _build("PixelFlipping", "W4")
    assert pf.required is not None and pf.required.score == "softmax"
    assert tuple(pf.required.ranked.shape) == (16, 30) and pf.required.kth is None  # full order
    _, _, lo = _build("LogOdds", "W4")
    # log-odds of the logits; only the top 20 % (6 of 30 columns) are read: one split
    assert lo.required.score == "log_softmax" and lo.required.kth == (24,)
    _, _, msd = _build("MinimalSubsetDeletion", "W4")
    assert msd.required.score == "argmax"  # whether the prediction is kept: no softmax
    _, _, drop = _build("AverageDrop", "W4")
    assert drop.required.ranked is None and drop.required.score == "softmax"
    _, _, pf5 = _build("PixelFlipping", "W5", n=4)
    # 25 channel values a step: a split at each step's boundary of the 1,500 values
    assert pf5.required.kth == tuple(range(25, 1500, 25))
    # softmax=False and a score that reads the values, not their order: no step at all
    for name in ("Completeness", "FaithfulnessCorrelation", "FaithfulnessEstimate",
                 "Infidelity[gaussian]"):
        _, _, case = _build(name, "W4")
        assert case.floor == "forward" and case.written_floor and case.required is None, name


def test_softmax_false_and_non_ranking_settings_get_no_step():
    from evalkit.metrics import get

    w = get_workload("W4", n=8)
    row = modalities.SETTINGS["PixelFlipping"]["tabular"]
    logits = get("PixelFlipping")(softmax=False, **row.ours)
    work = modalities.required_work("PixelFlipping", "tabular", logits, w, row)
    assert work.score is None and work.ranked is not None  # still ranks
    soft = get("SoftSufficiency")(nr_samples=1)
    work = modalities.required_work("SoftSufficiency", "tabular", soft, w,
                                    modalities.SETTINGS["SoftSufficiency"]["tabular"])
    assert work.ranked is None and work.score == "softmax"  # Bernoulli masks: no order
    soft_logits = get("SoftSufficiency")(nr_samples=1, softmax=False)
    assert modalities.required_work("SoftSufficiency", "tabular", soft_logits, w,
                                    modalities.SETTINGS["SoftSufficiency"]["tabular"]) is None


def test_only_metrics_whose_score_reads_the_order_are_ranked():
    from evalkit.metrics import get
    from evalkit.metrics._ties import RanksFeatures

    for name in modalities.RANKINGS:
        assert issubclass(get(name), RanksFeatures), name


def test_ranking_candidates_give_the_known_order():
    ranked = torch.tensor([[3.0, 1.0, 2.0, 0.0, 5.0], [0.5, 4.0, 1.0, 3.0, 2.0]])
    top2 = [{4, 0}, {1, 3}]
    full = harness.ranking_candidates(ranked, None)
    assert set(full) == {"torch.argsort", "numpy argsort"}
    for fn in full.values():
        order = np.asarray(fn())
        assert [set(r[-2:].tolist()) for r in order] == top2
    split = harness.ranking_candidates(ranked, (3,))  # only the top-2 set
    assert set(split) == {"torch.argsort", "numpy argsort", "numpy argpartition",
                          "torch.topk (k=2, unsorted)"}
    got = [split["numpy argpartition"](), split["torch.topk (k=2, unsorted)"]().indices]
    assert [set(r[3:].tolist()) for r in np.asarray(got[0])] == top2
    assert [set(r.tolist()) for r in got[1]] == top2
    nested = harness.ranking_candidates(ranked, (1, 3))
    assert "torch.topk (k=4, sorted)" in nested
    with pytest.raises(ValueError, match="kth"):
        RequiredWork(ranked=ranked, kth=(3, 1))
    with pytest.raises(ValueError, match="score"):
        RequiredWork(score="probabilities")


def test_scorers_give_the_value_the_metric_reads():
    out = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    y = torch.tensor([[1], [0]])
    p = torch.softmax(out, 1).gather(1, y).squeeze(1)
    for fn in harness.SCORERS["softmax"].values():
        assert torch.allclose(fn(out, y).reshape(-1), p)
    for fn in harness.SCORERS["log_softmax"].values():
        assert torch.allclose(fn(out, y).reshape(-1), p.log())
    for fn in harness.SCORERS["argmax"].values():
        assert fn(out, y).tolist() == [True, False]


def test_required_floor_ranks_once_and_scores_each_chunk():
    w = get_workload("W4", n=16)
    ranks: list[int] = []
    scored: list[tuple[int, ...]] = []
    fn = harness.forward_floor(w, 40, 16, write=True, rank=lambda: ranks.append(1),
                               score=lambda out, y: scored.append((*out.shape, *y.shape)))
    fn()
    # one ranking per call; 3 chunks (16 + 16 + 8 rows) scored with their labels
    assert ranks == [1] and scored == [(16, 3, 16, 1), (16, 3, 16, 1), (8, 3, 8, 1)]
    work = RequiredWork(ranked=w.a, kth=None, score="softmax")
    fn, text = harness.required_floor(w, 40, 16, work)
    with harness.count_forwards(w.model) as count:
        fn()
    assert (count.calls, count.rows) == (3, 40)
    assert "one ranking per call (the full order of 16 x 30" in text
    assert "softmax scoring per chunk" in text
    assert harness.required_floor(w, 40, 16, RequiredWork()) == (None, "")


def test_run_case_times_and_stores_the_required_floor():
    w, spec, _ = _build("LogOdds", "W4")
    ctx = Context(batch_size=8, device=torch.device("cpu"))
    res = harness.run_case(spec, w, ctx, repeats=1, min_time=0.0)
    assert not res.error
    assert res.extra["required_floor_s"] > 0 and res.extra["written_floor_s"] > 0
    assert "log_softmax scoring" in res.extra["required_steps"]
    w, spec, _ = _build("Completeness", "W4")
    res = harness.run_case(spec, w, ctx, repeats=1, min_time=0.0)
    assert not res.error and "written_floor_s" in res.extra
    assert "required_floor_s" not in res.extra and "required_steps" not in res.extra


def _row(floor: float, written: float | None = None, drawn: float | None = None,
         required: float | None = None) -> Result:
    r = Result(metric="M", family="faithfulness", workload="W4", n=10, ours_s=10.0,
               floor_s=floor, ours_fwd=harness.ForwardCount(1, 10))
    for key, v in (("written_floor_s", written), ("drawn_floor_s", drawn),
                   ("required_floor_s", required)):
        if v is not None:
            r.extra[key] = v
    if required is not None:
        r.extra["required_steps"] = "softmax scoring per chunk (torch.softmax + gather)"
    return r


def test_unreachable_floor_uses_the_required_floor():
    assert run.unreachable_floor(_row(1.0, written=1.1, required=1.2)) is None
    assert math.isclose(run.unreachable_floor(_row(1.0, written=1.1, required=1.9)), 1.9)
    assert math.isclose(run.unreachable_floor(_row(1.0, written=1.1, drawn=2.2, required=1.9)),
                        2.2)
    text = run._floor_miss_text(_row(1.0, written=1.1, required=1.9))
    assert "out of reach: building the inputs and the ranking and scoring" in text
    assert "1.90 x" in text and "ours / that 5.26" in text
    text = run._floor_miss_text(_row(1.0, written=1.7, required=1.3))
    assert "out of reach: building the inputs alone makes the floor 1.70 x" in text


def test_required_floor_is_rendered():
    r = _row(1.0, written=1.1, required=1.9)
    note = run._row_cells(r)[-2]
    assert "the written floor with the work the metric's definition requires" in note
    assert "softmax scoring per chunk" in note and "1.90 x the floor; ours / that 5.26" in note
    assert run._required_note(_row(1.0, written=1.1)) == ""
    lines = run._modality_lines([r])
    head = next(line for line in lines if line.startswith("| metric | workload"))
    assert "required floor (x floor) | ours / required" in head
    row = next(line for line in lines if line.startswith("| M | W4"))
    assert "| 1.90 | 5.26 |" in row and "1.25 out of reach" in row
    assert any("*required floor*" in line for line in lines)


def test_the_samples_own_inputs_are_forwarded_unwritten(monkeypatch):
    w = get_workload("W4", n=16)
    writes: list[int] = []
    drawn: list[int] = []
    real_where, real_rand = torch.where, torch.rand

    def counting_where(cond, a, b):
        writes.append(a.shape[0])
        return real_where(cond, a, b)

    def counting_rand(*size, **kwargs):
        out = real_rand(*size, **kwargs)
        drawn.append(out.numel())
        return out

    floors = {bare: harness.forward_floor(w, 40, 16, write=True, draws=240, bare_rows=bare)
              for bare in (0, 16, 20, 40)}
    monkeypatch.setattr(torch, "where", counting_where)
    monkeypatch.setattr(torch, "rand", counting_rand)
    got = {}
    for bare, fn in floors.items():
        writes.clear()
        drawn.clear()
        with harness.count_forwards(w.model) as count:
            fn()
        got[bare] = (list(writes), list(drawn), count.rows)
    # chunks of 16 + 16 + 8 rows; a chunk that starts among the first `bare` rows is not
    # written, the draws go to the written rows (all 240 of them in every case)
    assert got[0] == ([16, 16, 8], [96, 96, 48], 40)
    assert got[16] == ([16, 8], [160, 80], 40)
    assert got[20] == ([8], [240], 40)  # the straddling chunk too: fewer writes, never more
    assert got[40] == ([16, 16, 8], [96, 96, 48], 40)  # draws need written rows: all written
    plain = harness.forward_floor(w, 16, 16, write=True, bare_rows=16)
    writes.clear()
    plain()
    assert writes == []  # only the samples' own inputs (Consistency): nothing to write


@pytest.mark.parametrize("wname", ["W4", "W5", "W6"])
def test_every_modality_row_builds(wname):
    """Each W4-W6 spec builds its case (with its floors and required steps): a metric's API
    change that breaks a spec's glue shows here, not as a row that says 'build failed'."""
    w = get_workload(wname, n=4)
    ctx = Context(batch_size=8, device=torch.device("cpu"))
    failed = []
    for spec in all_specs():
        if wname not in spec.workloads:
            continue
        try:
            spec.build(w, ctx)
        except Exception as exc:  # collected, reported together
            failed.append(f"{spec.name}: {type(exc).__name__}: {exc}")
    assert not failed, failed
