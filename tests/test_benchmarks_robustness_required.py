"""The required-work floor of the noise-based robustness rows on W4-W6 (their floor is
explain() of the N x K perturbed inputs and the bare forward of the other rows they run): that
floor plus the steps their definition requires per call (the noise of every copy added to the
inputs, the distances of the score, the predicted classes where flipped draws are dropped),
declared in benchmarks.specs.robustness, timed, stored and rendered like the randomisation
rows'. Presence, counts and values only: speed is never asserted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _required_floor_helpers import build_case as _build
from _required_floor_helpers import check_per_call_steps

from benchmarks import harness, run
from benchmarks.harness import Context
from benchmarks.specs import robustness as rob
from benchmarks.workloads import get_workload


@pytest.mark.parametrize("name, wname, steps", [
    ("MaxSensitivity[Saliency]", "W4", ("4,800 noise values (float32)",
                                        "map distances ||a(x) - a(x'_k)|| over ||a(x)|| "
                                        "(16 x 10 draws of 30 values, order 2)")),
    ("AvgSensitivity[Saliency]", "W4", ("noise values", "over ||a(x)||")),
    ("LocalLipschitzEstimate[Saliency]", "W4", ("noise values", "input distances",
                                                "over the input distances")),
    ("RelativeInputStability[Saliency]", "W4", ("noise values", "relative input changes",
                                                "relative map changes",
                                                "predicted class of 16 x 10 draws")),
    ("RelativeOutputStability[Saliency]", "W4", ("noise values", "output changes",
                                                 "relative map changes", "predicted class")),
    ("RelativeRepresentationStability[Saliency]", "W4", (
        "noise values", "relative changes of layer net.2's outputs (16 x 10 draws of 64 "
        "values", "relative map changes", "predicted class")),
    ("MaxSensitivity[Saliency]", "W5", ("60,000 noise values (float32)",
                                        "(4 x 10 draws of 500 values, order 2)")),
    ("RelativeRepresentationStability[Saliency]", "W5", ("noise values", "layer pool",
                                                         "relative map changes",
                                                         "predicted class")),
])
def test_robustness_rows_declare_their_per_call_steps(name, wname, steps):
    _, _, case = _build(name, wname, n=16 if wname == "W4" else 4)
    check_per_call_steps(case, steps)


def test_noise_step_draws_as_many_values_as_the_copies_hold():
    from evalkit.perturb import GaussianNoise, TokenDropout, UniformNoise

    x = torch.zeros((3, 5))
    for noise in (UniformNoise(0.2), UniformNoise(0.02, 0.2), GaussianNoise(0.0, 0.1)):
        step = rob.noise_step(x, 4, noise)
        assert step is not None and step.what.startswith("60 noise values (float32)")
        assert len(step.forms) == 2
    assert rob.noise_step(x, 4, TokenDropout(0.1)) is None


def test_distance_forms_agree_with_each_other_and_with_the_metric():
    """Each form gives the per-draw values the score is the maximum of: MaxSensitivity's
    ||a - a'_k|| / ||a||, computed here from the definition."""
    gen = torch.Generator().manual_seed(0)
    ref = torch.rand((4, 6), generator=gen, dtype=torch.float64)
    new = torch.rand((4, 3, 6), generator=gen, dtype=torch.float64)
    expected = torch.linalg.vector_norm(new - ref[:, None], dim=-1) / torch.linalg.vector_norm(
        ref, dim=-1)[:, None]
    step = rob.distance_step("d", ref, new, 2.0, scale_ref=True)
    assert set(step.forms) == {"torch.linalg.vector_norm", "numpy linalg.norm", "torch.cdist"}
    for fn in step.forms.values():
        assert np.allclose(np.asarray(fn()), expected.numpy())
    # relative changes: ||(a - a'_k) / max(|a|, eps)||, as RelativeInputStability's numerator
    rel = rob.distance_step("r", ref, new, 2.0, relative_eps=1e-6,
                            differences=new - ref[:, None])
    assert {"torch.cdist of the scaled values", "torch.linalg.vector_norm of the noise"} <= set(
        rel.forms)
    want = torch.linalg.vector_norm((ref[:, None] - new) / ref.abs().clamp_min(1e-6)[:, None],
                                    dim=-1)
    for fn in rel.forms.values():
        assert np.allclose(np.asarray(fn()), want.numpy())


def test_other_metrics_and_settings_get_no_robustness_step():
    from evalkit.metrics import MaxSensitivity, get

    w = get_workload("W4", n=8)
    assert rob.required_robustness_work("MPRT", get("MPRT")(), w, w.a) is None
    assert rob.required_robustness_work("MaxSensitivity", MaxSensitivity(
        nr_samples=2, norm_numerator=lambda v: v.abs().sum(1)), w, w.a) is None
    # the paper's absolute sensitivity (no denominator) is still described
    work = rob.required_robustness_work("MaxSensitivity", MaxSensitivity(
        nr_samples=2, norm_denominator=None), w, w.a)
    assert work is not None and not any("over ||a(x)||" in s.what for s in work.per_call)
    # keep: no predicted classes needed
    work = rob.required_robustness_work("RelativeInputStability", get("RelativeInputStability")(
        nr_samples=2, on_prediction_change="keep"), w, w.a)
    assert work is not None and not any("predicted" in s.what for s in work.per_call)


def test_run_case_times_and_stores_the_robustness_required_floor():
    w, spec, _ = _build("RelativeOutputStability[Saliency]", "W4", 16)
    res = harness.run_case(spec, w, Context(batch_size=8, device=torch.device("cpu")),
                           repeats=1, min_time=0.0)
    assert not res.error and "required_floor_error" not in res.extra
    assert res.extra["required_floor_s"] > 0 and "written_floor_s" not in res.extra
    assert "noise values" in res.extra["required_steps"]
    assert "output changes" in res.extra["required_steps"]


def test_robustness_required_floor_is_rendered():
    r = harness.Result(metric="MaxSensitivity", family="robustness", workload="W4", n=2000,
                       ours_s=3.0, floor_s=2.0, ours_fwd=harness.ForwardCount(19, 20000))
    r.extra["required_floor_s"] = 2.2
    r.extra["required_steps"] = "600,000 noise values (float32) drawn and added (x)"
    assert run.unreachable_floor(r) is None  # 1.1 x: the 1.25 target stays within reach
    note = run._required_note(r)
    assert "the explain() floor with the work the metric's definition requires" in note
    assert "ours / that 1.36" in note
    # the paragraph on the lower bounds comes with the rows that have a written floor
    removal = harness.Result(metric="AverageDrop", family="faithfulness", workload="W4", n=2000,
                             ours_s=1.0, floor_s=0.5, ours_fwd=harness.ForwardCount(2, 4000))
    removal.extra["written_floor_s"] = 0.6
    lines = run._modality_lines([r, removal])
    row = next(line for line in lines if line.startswith("| MaxSensitivity | W4"))
    assert "| 1.10 | 1.36 |" in row
    text = " ".join(lines)
    assert "The noise-based robustness rows" in text
    assert "`benchmarks/specs/robustness.py`" in text
