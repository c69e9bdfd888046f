"""Smoke tests of the non-image benchmark workloads W4 (tabular), W5 (series), W6 (token ids):
they are seeded and shaped as the issue says, every metric declaring their modality has a row
there, and a tiny run of each measures what the page reports. Speed is never asserted."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import harness
from benchmarks.run import main
from benchmarks.specs import all_specs
from benchmarks.workloads import MODALITY_WORKLOADS, WORKLOADS, get_workload

QUICK = {name: WORKLOADS[name][2] for name in MODALITY_WORKLOADS}


@pytest.mark.parametrize("name", list(MODALITY_WORKLOADS))
def test_workload_is_seeded_and_shaped(name):
    state = torch.random.get_rng_state()
    w = get_workload(name, quick=True)
    assert torch.equal(state, torch.random.get_rng_state())
    n = QUICK[name]
    expected = {"W4": ((n, 30), torch.float32), "W5": ((n, 3, 500), torch.float32),
                "W6": ((n, 64), torch.int64)}[name]
    assert (tuple(w.x.shape), w.x.dtype) == expected
    assert w.s.dtype == torch.bool and w.s.any(dim=tuple(range(1, w.s.ndim))).all()
    assert w.a.shape[0] == n and torch.isfinite(w.a).all()
    assert w.modality is not None and w.modality.name == MODALITY_WORKLOADS[name]
    with torch.inference_mode():
        assert torch.equal(w.model(w.x).argmax(1), w.y)
    # the defaults are the sizes
    assert WORKLOADS[name][1] == {"W4": 10_000, "W5": 256, "W6": 128}[name]


def test_w4_masks_are_the_features_the_model_reads():
    w = get_workload("W4", quick=True)
    assert torch.equal(w.s, w.s[:1].expand_as(w.s)) and int(w.s[0].sum()) == 6
    informative = w.a.abs()[:, w.s[0]].mean()
    assert informative > 3 * w.a.abs()[:, ~w.s[0]].mean()


def test_every_metric_declaring_a_modality_has_a_row_there():
    from evalkit.metrics import list_metrics

    specs = all_specs()
    frame = list_metrics()
    for name, modalities in zip(frame["name"], frame["modalities"], strict=True):
        for wname, modality in MODALITY_WORKLOADS.items():
            rows = [s for s in specs if s.registered == name
                    and (wname in s.workloads or wname in dict(s.skip))]
            assert (len(rows) == 1) == (modality in modalities), (name, wname, rows)


def test_token_floors_take_the_gradient_at_the_embedding():
    w = get_workload("W6", quick=True)
    with harness.count_forwards(w.model) as c:
        harness.forward_backward_floor(w, 10, 4)()
        harness.forward_floor(w, 5, 4, write=True)()
    assert (c.calls, c.rows, c.grad_rows) == (5, 15, 10)
    assert w.x.dtype == torch.int64  # never cast


def test_quick_run_on_w4_to_w6(tmp_path):
    out = tmp_path / "bench.md"
    metrics = ["PixelFlipping", "AOPC", "Sparseness", "MaxSensitivity[Saliency]", "IOUF1"]
    results, md = main(["--quick", "--no-quantus", "--workloads", *MODALITY_WORKLOADS,
                        "--metrics", *metrics, "--out", str(out)])
    got = {(r.metric, r.workload) for r in results}
    assert got == {("PixelFlipping", "W4"), ("PixelFlipping", "W5"), ("PixelFlipping", "W6"),
                   ("AOPC", "W4"),
                   ("AOPC", "W5"), ("AOPC", "W6"), ("Sparseness", "W4"), ("Sparseness", "W5"),
                   ("Sparseness", "W6"), ("MaxSensitivity[Saliency]", "W4"),
                   ("MaxSensitivity[Saliency]", "W5"), ("IOUF1", "W5"), ("IOUF1", "W6")}
    for r in results:
        assert not r.error, (r.metric, r.workload, r.error)
        assert r.n == QUICK[r.workload] and math.isfinite(r.ours_s)
        if r.metric in ("Sparseness", "IOUF1"):
            assert math.isnan(r.floor_s) and r.ours_fwd.rows == 0
            continue
        assert r.floor_s > 0 and math.isfinite(r.floor_ratio)
        assert r.extra["part"] == "keyed random draws" and r.extra["part_s"] >= 0
        if r.metric == "MaxSensitivity[Saliency]":
            assert r.extra["explained_rows"] == 10 * r.n and r.extra["part_s"] > 0
        else:  # removal curves: the floor with written inputs too
            assert r.extra["written_floor_s"] > 0
    aopc = next(r for r in results if (r.metric, r.workload) == ("AOPC", "W6"))
    assert aopc.ours_fwd.rows >= aopc.n * 64  # one token per step, 64 steps
    section = md.split("## Tabular, series and text (W4-W6)", 1)[1].split("\n## ", 1)[0]
    assert "**W4** (tabular)" in section and "**W6** (tokens)" in section
    assert "| AOPC | W6 (N=8) |" in section
    summary = md.split("## Summary", 1)[1].split("## Rows that miss", 1)[0]
    assert "with rows (W1 / W2 / W4 / W5 / W6)" in summary


@pytest.mark.oracle
def test_quantus_runs_on_tables_and_series():
    pytest.importorskip("quantus")
    results, _ = main(["--quick", "--workloads", "W4", "W5", "--metrics", "PixelFlipping",
                       "Sparseness", "--out", "-"])
    assert len(results) == 4
    for r in results:
        assert not r.error and not r.quantus_error, (r.metric, r.workload, r.quantus_error)
        assert r.agreement_value is not None and r.agreement_value < 1e-5


def test_consistency_groups_integer_codes_as_torch_unique_does():
    # the W4 speed fix: integer codes grouped by their bytes, the same partition as
    # torch.unique(dim=0) (the labels only name the groups)
    from evalkit.metrics.robustness.consistency import _row_labels

    known = _row_labels(torch.tensor([[1, 2], [1, 2], [2, 1], [-1, 2]]))
    assert known[0] == known[1] and len(set(known.tolist())) == 3
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.int64, torch.int32, torch.bool, torch.float64):
        codes = torch.randint(-2, 3, (500, 4), generator=gen).to(dtype)
        ours = _row_labels(codes)
        ref = torch.unique(codes, dim=0, return_inverse=True)[1]
        assert torch.equal(ours[:, None] == ours[None], ref[:, None] == ref[None])
    zeros = torch.tensor([[0.0], [-0.0]])  # floating point: equal values, different bytes
    assert _row_labels(zeros)[0] == _row_labels(zeros)[1]
