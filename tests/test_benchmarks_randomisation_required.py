"""The required-work floor of the randomisation rows on W4-W6 (their floor is explain() of
the rows they explain): that floor plus the per-call steps their definition requires (a model
copy with the randomised layers re-initialised, the similarity or entropy of the maps, the
off-target labels), declared in benchmarks.specs.randomisation, timed, stored and rendered like
the removal rows' required floor. Presence, counts and values only: speed is never asserted."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _required_floor_helpers import build_case as _build
from _required_floor_helpers import check_per_call_steps

from benchmarks import harness, run
from benchmarks.harness import Context, RequiredStep, RequiredWork, Result
from benchmarks.specs import all_specs
from benchmarks.specs import randomisation as rspec
from benchmarks.workloads import get_workload


@pytest.mark.parametrize("name, wname, steps", [
    ("MPRT", "W4", ("model copy with its 3 layers", "Spearman of |a| for 3 map pairs")),
    ("EfficientMPRT", "W4", ("model copy with its 3 layers", "histogram entropy (100 bins)")),
    ("RandomLogit", "W4", ("SSIM of 16 map pairs (normalised", "off-target labels")),
    ("DataRandomisation", "W4", ("Spearman of |a| for 1 map pair",)),
    ("SmoothMPRT", "W4", ("model copy", "noisy inputs", "mean of each of 4 models",
                          "Spearman of |a| for 3 map pairs")),
    ("MPRT", "W5", ("model copy with its 7 layers", "Spearman of |a| for 7 map pairs")),
])
def test_randomisation_rows_declare_their_per_call_steps(name, wname, steps):
    _, _, case = _build(name, wname, n=16 if wname == "W4" else 4)
    check_per_call_steps(case, steps)


def test_model_copy_step_leaves_the_model_and_the_generator_as_they_were():
    w = get_workload("W4", n=4)
    before = {k: v.clone() for k, v in w.model.state_dict().items()}
    state = torch.get_rng_state()
    step = rspec.model_copy_step(w.model, ["net.0", "net.2", "net.4"])
    for fn in step.forms.values():
        fn()
    assert torch.equal(torch.get_rng_state(), state)
    after = w.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_entropy_step_matches_the_metric_s_histogram_entropy():
    """The forms compute the same entropy (to rounding) as EfficientMPRT's numpy-histogram
    entropy on maps whose values fall inside bins (not on edges)."""
    from evalkit.metrics.randomisation import _histogram_entropy

    gen = torch.Generator().manual_seed(0)
    maps = torch.rand((5, 40), generator=gen, dtype=torch.float64)
    expected = _histogram_entropy(maps, torch.full((5,), 10))
    got = []
    step = rspec.entropy_step([maps], 10)
    # the forms return nothing (they are timed, not read): recompute as the numpy form does
    x = maps.numpy()
    lo = x.min(1, keepdims=True)
    idx = np.minimum(((x - lo) * (10 / (x.max(1, keepdims=True) - lo))).astype(int), 9)
    for row in idx:
        counts = np.bincount(row, minlength=10)
        got.append(math.log(40) - np.log(counts[row]).mean())
    assert np.allclose(got, expected.numpy())
    for fn in step.forms.values():
        fn()


def test_spearman_and_ssim_steps_offer_library_forms():
    w = get_workload("W5", n=4)
    sp = rspec.spearman_step(w.a, w.a.flip(-1), 2, absolute=True)
    assert {"numpy argsort ranks", "scipy.stats.rankdata", "torch.argsort ranks"} <= set(
        sp.forms)
    ss = rspec.ssim_step(w.a, w.a.flip(-1), normalise=True)
    assert "skimage structural_similarity per sample" in ss.forms
    assert "scipy.ndimage.uniform_filter" in ss.forms


def test_other_settings_get_no_randomisation_step():
    from evalkit.metrics import MPRT, get

    w = get_workload("W4", n=8)
    kw = {"method": "Saliency"}
    assert rspec.required_randomisation_work("MPRT", MPRT(similarity_func="cosine"), w, w.a,
                                             kw) is None
    assert rspec.required_randomisation_work("EfficientMPRT", get("EfficientMPRT")(
        n_bins="sqrt"), w, w.a, kw) is None
    assert rspec.required_randomisation_work("MaxSensitivity", get("MaxSensitivity")(), w, w.a,
                                             kw) is None


def test_with_required_steps_runs_the_floor_and_the_cheapest_form():
    calls: list[str] = []
    step = RequiredStep("s", {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")})
    fn, text = harness.with_required_steps(lambda: calls.append("floor"), (step,))
    calls.clear()
    fn()
    assert calls[0] == "floor" and len(calls) == 2 and calls[1] in ("a", "b")
    assert text.startswith("s (") and text.endswith(")")
    assert RequiredWork(per_call=(step,)).steps
    with pytest.raises(ValueError, match="no forms"):
        RequiredStep("empty", {})


def test_run_case_times_and_stores_the_randomisation_required_floor():
    w, spec, _ = _build("DataRandomisation", "W4")
    res = harness.run_case(spec, w, Context(batch_size=8, device=torch.device("cpu")),
                           repeats=1, min_time=0.0)
    assert not res.error and "required_floor_error" not in res.extra
    assert res.extra["required_floor_s"] > 0 and "written_floor_s" not in res.extra
    assert "Spearman of |a| for 1 map pair" in res.extra["required_steps"]


def test_randomisation_required_floor_is_rendered():
    r = Result(metric="MPRT", family="randomisation", workload="W4", n=10, ours_s=3.0,
               floor_s=1.0, ours_fwd=harness.ForwardCount(1, 10))
    r.extra["required_floor_s"] = 1.6
    r.extra["required_steps"] = "one model copy with its 3 layers re-initialised (x)"
    assert math.isclose(run.unreachable_floor(r), 1.6)
    text = run._floor_miss_text(r)
    assert "out of reach: the floor and the steps the metric requires alone make 1.60 x" in text
    note = run._required_note(r)
    assert "the explain() floor with the work the metric's definition requires" in note
    assert "ours / that 1.88" in note
    row = next(line for line in run._modality_lines([r]) if line.startswith("| MPRT | W4"))
    assert "| 1.60 | 1.88 |" in row and "1.25 out of reach" in row


def test_timed_explainer_counts_the_models_it_explained_with():
    seen: list[int] = []
    timed = harness.TimedExplainer(lambda model, x, y: seen.append(len(x)))
    a, b = object(), object()
    for model in (a, a, b, b, a):
        timed(model, torch.zeros(3, 2), None)
    assert (timed.calls, timed.rows, timed.models) == (5, 15, 3)
    timed.reset()
    assert (timed.calls, timed.rows, timed.models) == (0, 0, 0)


# MPRT with the maps given explains with its 3 randomised copies (the MLP's 3 layers)
@pytest.mark.parametrize("name, models", [("MPRT", 3), ("EfficientMPRT", 1),
                                          ("MaxSensitivity[Saliency]", 1)])
def test_explain_floor_explains_once_per_model_ours_used(name, models, monkeypatch):
    import evalkit

    w = get_workload("W4", n=16)
    ctx = Context(batch_size=8, device=torch.device("cpu"))
    spec = next(s for s in all_specs() if s.name == name)
    res = harness.run_case(spec, w, ctx, repeats=1, min_time=0.0)
    assert not res.error and res.extra["explained_models"] == models
    case = spec.build(w, ctx)
    case.ours()
    rows_per_call: list[int] = []
    real = evalkit.explain
    monkeypatch.setattr(evalkit, "explain",
                        lambda m, x, y, **kw: rows_per_call.append(len(x)) or real(m, x, y, **kw))
    case.floor(case.explainer.rows, 0)()
    assert len(rows_per_call) == case.explainer.models
    assert sum(rows_per_call) == case.explainer.rows
