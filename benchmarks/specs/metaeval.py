"""Meta-evaluation spec, workload W3: the MetaQuantus tutorial setting on W1's model.

W3 = W1's model (the DermaMNIST tutorial CNN) and its first 64 samples (``--n W3=16`` for
fewer); the four MetaQuantus
tests of the ImageNet tutorial (``default_suite("tutorial")``: model noise sigma 0.001 / 0.5,
uniform input noise +-0.001 / +-3.0), iterations 2, perturbations 3; explanation methods
Saliency, IntegratedGradients (10 steps, Quantus' ``riemann_trapezoid``) and GradientShap;
four metrics meta-evaluated: Sparseness, FaithfulnessCorrelation (nr_runs 10, subset 56,
uniform baseline: the paper's settings for 28 x 28 inputs), PointingGame (the workload's
rectangles as masks) and MaxSensitivity (nr_samples 10, lower_bound 0.01).

* **ours**: one :class:`metaeval.MetaEvaluation` call for the four metrics together: every
  perturbed model and input, and every explanation of it, is computed once and scored by all
  four metrics; the unperturbed explanations once per method.
* **MetaQuantus**: metaquantus 0.0.5 (``.oracle/metaquantus``, see ``benchmarks/_metaquantus.py``)
  run once per metric with the equivalent Quantus 0.6.0 metrics, as its
  ``MetaEvaluationBenchmarking`` does (``score_direction`` set as its configs do). It has no
  ``batch_size`` argument. If it is not installed the column stays empty.

Agreement: the random draws differ (model noise, input noise, FaithfulnessCorrelation
subsets, MaxSensitivity noise), so the numbers cannot match exactly; the table shows each
metric's MC̄ for ours (default: the input tests re-explain the perturbed input), for ours in
MetaQuantus' own input-test mode (``re_explain=False, clip="metaquantus"``: the like-for-like
run, untimed) and for MetaQuantus.

Floor: the bare model work of our run: each row it ran with autograd recording (the explanations
and MaxSensitivity's re-explanations) as a forward pass plus an input gradient, every other row
(metric passes, predictions) as a bare forward pass, at the runner's batch size. Where
MetaQuantus itself is less than 10x above that floor, no implementation doing the same model
work can be 10x faster, and the table says so.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

import metaeval as me
from evalkit.metrics import FaithfulnessCorrelation, MaxSensitivity, PointingGame, Sparseness

from .._metaquantus import load_metaquantus
from ..harness import Agreement, Case, Context
from ..workloads import Workload
from . import Spec

N = 64
ITERATIONS, PERTURBATIONS = 2, 3
METHODS: dict[str, dict[str, Any]] = {
    "Saliency": {},
    "IntegratedGradients": {"n_steps": 10, "integration_method": "riemann_trapezoid"},
    "GradientShap": {},
}


def _ours_metrics() -> dict[str, Any]:
    return {
        "Sparseness": Sparseness(),
        "FaithfulnessCorrelation": FaithfulnessCorrelation(nr_runs=10, subset_size=56,
                                                           perturb_baseline="uniform"),
        "PointingGame": PointingGame(),
        "MaxSensitivity": MaxSensitivity(nr_samples=10, lower_bound=0.01),
    }


def _quantus_metrics(q: Any) -> dict[str, tuple[Any, str]]:
    common = {"disable_warnings": True, "return_aggregate": False}
    return {
        "Sparseness": (q.Sparseness(**common), "higher"),
        "FaithfulnessCorrelation": (q.FaithfulnessCorrelation(
            nr_runs=10, subset_size=56, perturb_baseline="uniform", **common), "higher"),
        "PointingGame": (q.PointingGame(**common), "higher"),
        "MaxSensitivity": (q.MaxSensitivity(nr_samples=10, lower_bound=0.01, **common),
                           "lower"),
    }


def _mq_suite(mq: Any) -> dict[str, Any]:
    s = me.suite.SUITES["tutorial"]
    return {
        "Model Resilience Test": mq.ModelPerturbationTest(
            type="Resilience", noise_type="multiplicative", mean=1.0, std=s["model_nr_std"]),
        "Model Adversary Test": mq.ModelPerturbationTest(
            type="Adversary", noise_type="multiplicative", mean=1.0, std=s["model_ar_std"]),
        "Input Resilience Test": mq.InputPerturbationTest(type="Resilience", noise=s["input_nr"]),
        "Input Adversary Test": mq.InputPerturbationTest(type="Adversary", noise=s["input_ar"]),
    }


def _build(w: Workload, ctx: Context) -> Case:
    n = min(ctx.n.get("W3", N), w.n)
    x, y, s = w.x[:n], w.y[:n], w.s[:n]
    run = me.MetaEvaluation(me.default_suite("tutorial"), METHODS, iterations=ITERATIONS,
                            nr_perturbations=PERTURBATIONS, seed=0)
    metrics = _ours_metrics()

    def mean_mc(meta: me.MetaEvaluation) -> dict[str, float]:
        summ = meta(metrics, w.model, x, y, s=s).summary()
        return dict(zip(summ.loc[summ["space"] == "Mean", "metric"],
                        summ.loc[summ["space"] == "Mean", "MC"], strict=True))

    def ours() -> dict[str, float]:
        return mean_mc(run)

    mq = load_metaquantus() if ctx.quantus is not None else None
    theirs = None
    if mq is not None:
        q = ctx.quantus
        xn, yn = w.np("x")[:n], w.np("y")[:n]
        sn = w.np("s")[:n]
        q_metrics = _quantus_metrics(q)
        xai = {"Saliency": {}, "IntegratedGradients": {}, "GradientShap": {}}

        def theirs() -> dict[str, float]:
            out = {}
            for name, (metric, direction) in q_metrics.items():
                m = mq.MetaEvaluation(test_suite=_mq_suite(mq), xai_methods=xai,
                                      iterations=ITERATIONS, nr_perturbations=PERTURBATIONS,
                                      write_to_file=False)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m(estimator=metric, model=w.model, x_batch=xn, y_batch=yn, s_batch=sn,
                      softmax=False, device=ctx.quantus_device, score_direction=direction)
                r = m.results_meta_consistency_scores
                out[name] = float(np.mean([r["Model"]["MC_mean"], r["Input"]["MC_mean"]]))
            return out

    def agreement(o: dict[str, float], t: dict[str, float]) -> Agreement:
        # untimed: our run in MetaQuantus' own input-test mode (the unperturbed explanation
        # scored on the perturbed input, its clipping), the like-for-like comparison
        like = mean_mc(me.MetaEvaluation(
            me.default_suite("tutorial", re_explain=False, clip="metaquantus"), METHODS,
            iterations=ITERATIONS, nr_perturbations=PERTURBATIONS, seed=0))
        text = ", ".join(f"{k} {o[k]:.3f}/{like[k]:.3f}/{t[k]:.3f}" for k in o)
        return Agreement(None, "MC̄ ours (default: input tests re-explain) / ours in "
                               "MetaQuantus' input-test mode / MetaQuantus (different random "
                               f"draws): {text}")

    return Case(
        ours=ours, quantus=theirs, agreement=agreement, floor="model",
        settings=(f"N={n}, suite 'tutorial', I={ITERATIONS}, K={PERTURBATIONS}, Saliency/IG/"
                  "GradientShap, Sparseness+FC+PointingGame+MaxSensitivity"),
        note=("ours: the 4 metrics in one call, sharing every perturbation and explanation; "
              "MetaQuantus 0.0.5: one run per metric (its benchmarking loop)"),
    )


SPECS = [Spec("MetaEvaluation (W3)", "metaeval", _build, workloads=("W1",), metric="")]


def _validity_script() -> Any:
    """scripts/validity_report.py (the report card's settings live there, beside the docs it
    writes), loaded from the checkout."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "validity_report.py"
    spec = importlib.util.spec_from_file_location("_validity_report_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def _build_validity(w: Workload, ctx: Context) -> Case:
    from metaeval.validity import build_testbed, list_testbeds, validity_report

    script = _validity_script()
    names = script.registered_metrics()
    beds = [build_testbed(b) for b in list_testbeds()]

    def ours() -> int:
        report = validity_report(script.evalkit_metrics(names), beds, seeds=(0, 1, 2),
                                 progress=False)
        return len(report.verdicts)

    return Case(
        ours=ours, floor=None,
        settings=(f"{len(names)} metrics x {len(beds)} testbeds, seeds 0-2, the report card's "
                  "settings (scripts/validity_report.py)"),
        note=("the evalkit part of `python scripts/validity_report.py` (no Quantus column): the "
              "issue asks for under 10 minutes of one core; the testbeds are the workload, "
              "not W1's data"),
    )


SPECS.append(Spec("ValidityReport (testbeds)", "metaeval", _build_validity, workloads=("W1",),
                  metric=""))
