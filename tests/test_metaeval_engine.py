"""The meta-evaluation pipeline on a tiny model: seeding, sharing, applicability, masks,
clipping, reference-estimator calibration, benchmark resumption, results and plots."""

from __future__ import annotations

import copy

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from _evaluate_helpers import tiny_cnn

import evalkit as ek
import metaeval as me
from evalkit.store import ResultStore

matplotlib.use("Agg")

METHODS = {"Saliency": {}, "InputXGradient": {}}


@pytest.fixture(scope="module")
def data():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 8, 8, generator=gen)
    model = tiny_cnn()
    with torch.no_grad():
        y = model(x).argmax(1)
    s = torch.zeros(16, 1, 8, 8, dtype=torch.bool)
    s[:, :, 2:6, 2:6] = True
    return model, x, y, s


class CountingExplain:
    """An explain function that counts its calls (and explains with evalkit)."""

    def __init__(self) -> None:
        self.calls = 0
        self.rows = 0

    def __call__(self, model, x, y, **kw):
        self.calls += 1
        self.rows += int(x.shape[0])
        return ek.explain(model, x, y, **kw)


def _suite():
    return me.default_suite()


# --------------------------------------------------------------------------- basics
def test_same_seed_same_numbers_and_the_model_is_untouched(data):
    model, x, y, _s = data
    before = copy.deepcopy(model.state_dict())
    model.train()
    metrics = {"Sparseness": ek.metrics.Sparseness(),
               "FC": ek.metrics.FaithfulnessCorrelation(nr_runs=4, subset_size=8)}
    run = me.MetaEvaluation(_suite(), METHODS, iterations=1, nr_perturbations=2, seed=3)
    a = run(metrics, model, x, y).summary()
    b = me.MetaEvaluation(_suite(), METHODS, iterations=1, nr_perturbations=2, seed=3)(
        metrics, model, x, y).summary()
    pd.testing.assert_frame_equal(a, b)
    assert model.training  # the training flag is restored
    model.eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    c = me.MetaEvaluation(_suite(), METHODS, iterations=1, nr_perturbations=2, seed=4)(
        metrics, model, x, y).summary()
    assert not np.allclose(a["IAC_NR"].to_numpy(), c["IAC_NR"].to_numpy(), equal_nan=True)
    assert run.result_ is not None


def test_masks_follow_the_predictions_and_coverage_is_reported(data):
    model, x, y, _ = data
    res = me.MetaEvaluation(_suite(), METHODS, iterations=2, nr_perturbations=2, seed=0)(
        ek.metrics.Sparseness(), model, x, y)
    block = res.blocks[0]
    for test in block.tests:
        changed = block.y_pred_perturbed[test.name] != block.y_pred
        want = ~changed if test.type == "Resilience" else changed
        np.testing.assert_array_equal(block.masks[test.name], want)
    cov = res.coverage()
    assert set(cov["test"]) == {t.name for t in block.tests}
    row = cov[cov["test"] == "Model Adversary Test"].iloc[0]
    assert 0 < row["kept_mean"] <= 1  # sigma = 2 flips predictions
    s = res.summary()
    assert {"kept_NR", "kept_AR", "chance_IEC_NR", "chance_IEC_AR", "chance_MC"} <= set(s.columns)
    assert s["chance_IEC_NR"].iloc[0] == pytest.approx(1 / 2)  # continuous scores, L = 2


def test_explanations_and_perturbations_are_shared_by_all_metrics(data):
    model, x, y, s = data
    counter = CountingExplain()
    run = me.MetaEvaluation(_suite(), METHODS, iterations=1, nr_perturbations=2, seed=0,
                            explain_fn=counter)
    run({"Sparseness": ek.metrics.Sparseness(), "Complexity": ek.metrics.Complexity(),
         "PointingGame": ek.metrics.PointingGame()}, model, x, y, s=s)
    units = len(run.tests) * 1 * 2
    # one explanation per method for the clean input, and one per method and unit
    assert counter.calls == len(METHODS) * (1 + units)


@pytest.fixture
def counting_methods(monkeypatch):
    """Saliency and (stochastic) GradientShap registered under new names that count the rows
    they explain: the default evalkit.explain path, as used by metrics that re-explain."""
    import dataclasses

    from evalkit.explain import core

    rows = {"CountingSaliency": 0, "CountingGradientShap": 0}
    for name, base in (("CountingSaliency", "Saliency"),
                       ("CountingGradientShap", "GradientShap")):
        info = core.explainer_info(base)

        def fn(model, x, y, _name=name, _fn=info.fn, **kw):
            rows[_name] += int(x.shape[0])
            return _fn(model, x, y, **kw)

        monkeypatch.setitem(core._EXPLAINERS, name, dataclasses.replace(info, name=name, fn=fn))
    return rows


def test_robustness_metrics_with_one_seed_scope_share_their_re_explanations(
        data, counting_methods):
    """MaxSensitivity and AvgSensitivity with the same noise settings have the same
    seed_scope(): seeded from it (as evalkit.evaluate does), they draw the same perturbed
    inputs in every unit, the unperturbed one included, and the second reads the first's
    re-explanations from the unit's explanation cache: together they explain no more rows than
    one of them alone, and their scores are those of separate runs."""
    model, x, y, _ = data
    suite = [me.ModelPerturbationTest("Resilience", std=0.001),
             me.InputPerturbationTest("Resilience", 0.001)]
    methods = {"sal": {"method": "CountingSaliency"}, "gs": {"method": "CountingGradientShap"}}

    def make():
        return {"Max": ek.metrics.MaxSensitivity(nr_samples=3),
                "Avg": ek.metrics.AvgSensitivity(nr_samples=3)}

    assert make()["Max"].seed_scope() == make()["Avg"].seed_scope() is not None

    def run(names):
        for k in counting_methods:
            counting_methods[k] = 0
        metrics = {k: v for k, v in make().items() if k in names}
        res = me.MetaEvaluation(suite, methods, iterations=1, nr_perturbations=2, seed=0)(
            metrics, model, x, y)
        return dict(counting_methods), res

    alone_max, res_max = run(["Max"])
    alone_avg, res_avg = run(["Avg"])
    both, res_both = run(["Max", "Avg"])
    n = x.shape[0]
    units = 1 + len(suite) * 2
    # every row explained: the clean and perturbed inputs once per unit (<= n rows each, the
    # masks may drop some) and, per unit, 3 noisy copies of each sample for the metric
    for method in counting_methods:
        assert alone_max[method] == alone_avg[method] == both[method]
        assert both[method] <= units * n * (1 + 3)
        assert both[method] > units * 3 * n * 0.5  # the metric's re-explanations are counted
    for name, alone in (("Max", res_max), ("Avg", res_avg)):
        a, b = alone.blocks[0].metrics[name], res_both.blocks[0].metrics[name]
        np.testing.assert_allclose(b.q_star, a.q_star)
        for test in b.q_hat:
            np.testing.assert_allclose(b.q_hat[test], a.q_hat[test])


def test_input_agnostic_metrics_are_not_applicable_to_the_original_input_test(data):
    model, x, y, s = data
    suite = me.default_suite(re_explain=False, clip="metaquantus")
    metrics = {"Sparseness": ek.metrics.Sparseness(), "PG": ek.metrics.PointingGame(),
               "FC": ek.metrics.FaithfulnessCorrelation(nr_runs=4, subset_size=8)}
    res = me.MetaEvaluation(suite, METHODS, iterations=1, nr_perturbations=2, seed=0)(
        metrics, model, x, y, s=s)
    summ = res.summary().set_index(["metric", "space"])
    for name in ("Sparseness", "PG"):
        assert not summ.loc[(name, "Input"), "applicable"]
        assert np.isnan(summ.loc[(name, "Input"), "MC"])
        assert "re_explain=False" in summ.loc[(name, "Input"), "note"]
        assert summ.loc[(name, "Model"), "applicable"]
        # MC̄ falls back to the applicable space instead of averaging in a meaningless 0.5
        assert summ.loc[(name, "Mean"), "MC"] == pytest.approx(summ.loc[(name, "Model"), "MC"])
        block = res.blocks[0]
        assert np.isnan(block.metrics[name].q_hat["Input Resilience Test"]).all()
    assert summ.loc[("FC", "Input"), "applicable"]  # it runs the model on x
    # re-explaining the perturbed input (the default) makes the test applicable again
    res2 = me.MetaEvaluation(me.default_suite(), METHODS, iterations=1, nr_perturbations=1,
                             seed=0)({"Sparseness": ek.metrics.Sparseness()}, model, x, y)
    assert res2.summary()["applicable"].all()


def test_applicability_rules():
    sparse, fc = ek.metrics.Sparseness(), ek.metrics.FaithfulnessCorrelation()
    mpt = me.ModelPerturbationTest("Resilience", std=0.01)
    ipt_orig = me.InputPerturbationTest("Resilience", 0.01, re_explain=False)
    ipt = me.InputPerturbationTest("Resilience", 0.01)
    assert me.applicability(sparse, mpt, ["Saliency"])[0]
    assert not me.applicability(sparse, mpt, ["Sobel"])[0]  # model-free explainer
    assert me.applicability(sparse, mpt, ["Sobel", "Saliency"])[0]
    assert not me.applicability(sparse, ipt_orig, ["Saliency"])[0]
    assert me.applicability(fc, ipt_orig, ["Saliency"])[0]
    assert me.applicability(sparse, ipt, ["Saliency"])[0]
    assert not me.applicability(sparse, ipt, ["Constant"])[0]
    assert not me.reads_input(sparse) and me.reads_input(fc)
    assert me.reads_input(ek.metrics.MaxSensitivity())


def test_applicability_uses_the_registered_method_not_the_display_name(data):
    """Regression: display names that are not registered (C1, C2) were looked up as unknown
    methods, assumed to read the model and input, and Sparseness of two Constant maps was
    reported applicable with the meaningless MC = 0.5 of an estimator that cannot react."""
    model, x, y, _ = data
    sparse = ek.metrics.Sparseness()
    consts = {"C1": {"method": "Constant"}, "C2": {"method": "Constant", "constant_value": 2.0}}
    for methods in (consts, {"Constant": {}}):
        res = me.MetaEvaluation(_suite(), methods, iterations=1, nr_perturbations=1, seed=0)(
            {"Sparseness": sparse}, model, x, y)
        summ = res.summary()
        assert not summ["applicable"].any(), methods
        assert summ["MC"].isna().all()
        block = res.blocks[0]
        assert all(not ok for ok, _ in block.metrics["Sparseness"].applicable.values())
        for q in block.metrics["Sparseness"].q_hat.values():
            assert np.isnan(q).all()  # not scored at all
    # a renamed model-reading method next to the controls makes the tests applicable again
    res = me.MetaEvaluation(_suite(), {**consts, "grad": {"method": "Saliency"}},
                            iterations=1, nr_perturbations=1, seed=0)({"Sparseness": sparse},
                                                                      model, x, y)
    assert res.summary()["applicable"].all()
    # a custom explain function is opaque: kept applicable, as before
    res = me.MetaEvaluation(_suite(), consts, iterations=1, nr_perturbations=1, seed=0,
                            explain_fn=CountingExplain())({"Sparseness": sparse}, model, x, y)
    assert res.summary()["applicable"].all()


def test_masks_are_required_by_localisation_metrics(data):
    model, x, y, _ = data
    res = me.MetaEvaluation(_suite(), METHODS, iterations=1, nr_perturbations=1, seed=0)(
        {"PG": ek.metrics.PointingGame()}, model, x, y)
    assert np.isnan(res.summary()["MC"]).all()
    assert "needs masks" in res.nan_reasons()["reason"].iloc[0]


def test_input_noise_is_clipped_to_the_data_range(data):
    model, x, y, _ = data
    run = me.MetaEvaluation(_suite(), METHODS, iterations=1, nr_perturbations=1, seed=0)
    state = run.prepare(model, x * 0.5 + 0.2, y)
    lo, hi = state.data_range
    big = me.InputPerturbationTest("Adversary", 5.0)
    xh = run._perturbed_input(state, big, 0, 0)
    assert float(xh.min()) >= lo and float(xh.max()) <= hi
    assert not torch.equal(xh, state.x)
    mq = run._perturbed_input(state, me.InputPerturbationTest("Adversary", 5.0,
                                                              clip="metaquantus"), 0, 0)
    assert float(mq.min()) >= lo and float(mq.max()) > hi  # MetaQuantus' upper bound never binds
    fixed = run._perturbed_input(state, me.InputPerturbationTest("Adversary", 5.0,
                                                                 clip=(0.0, 1.0)), 0, 0)
    assert float(fixed.min()) >= 0.0 and float(fixed.max()) <= 1.0
    free = run._perturbed_input(state, me.InputPerturbationTest("Adversary", 5.0, clip=None),
                                0, 0)
    assert float((free - state.x).abs().max()) <= 5.0 and float(free.max()) > 1.0
    # the noise of a sample does not depend on the batch it is in
    state2 = run.prepare(model, (x * 0.5 + 0.2)[3:9], y[3:9])
    state2.data_range = state.data_range
    part = run._perturbed_input(state2, big, 0, 0)
    torch.testing.assert_close(part, xh[3:9])


# --------------------------------------------------------------------------- calibration
@pytest.fixture(scope="module")
def calibration(data):
    model, _, _, _ = data
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(64, 1, 8, 8, generator=gen)
    estimators = {
        "same": me.ReferenceEstimator("same"),
        "different": me.ReferenceEstimator("different"),
        "worse": me.ReferenceEstimator("different", shift="worse", higher_is_better=False),
        "random": me.ReferenceEstimator("random"),
    }
    suite = [me.ModelPerturbationTest("Resilience", std=0.001),
             me.ModelPerturbationTest("Adversary", std=2.0),
             me.InputPerturbationTest("Resilience", 0.001),
             me.InputPerturbationTest("Adversary", 5.0)]
    run = me.MetaEvaluation(suite, {"a": {"method": "Saliency"}, "b": {"method": "Saliency"},
                                    "c": {"method": "Saliency"}},
                            iterations=2, nr_perturbations=5, seed=0)
    return run(estimators, model, x).summary().set_index(["metric", "space"])


def test_reference_same_estimator_scores_exactly_its_derivation(calibration):
    for space in ("Model", "Input"):
        r = calibration.loc[("same", space)]
        assert (r["IAC_NR"], r["IAC_AR"], r["IEC_NR"], r["IEC_AR"]) == (1.0, 0.0, 1.0, 0.0)
        assert r["MC"] == 0.5


def test_reference_different_estimator(calibration):
    l_ = 3
    for space in ("Model", "Input"):
        r = calibration.loc[("different", space)]
        kept = min(r["kept_NR"], r["kept_AR"]) * 64
        assert r["IAC_NR"] < 0.05 and r["IAC_AR"] > 0.9, (kept, r["IAC_NR"])
        assert r["IEC_NR"] == pytest.approx(1 / l_, abs=0.08)
        assert r["IEC_AR"] == 0.0  # quality improved: never "worse"
        assert r["MC"] == pytest.approx((1 + 1 / l_) / 4, abs=0.05)
        w = calibration.loc[("worse", space)]
        assert w["IEC_AR"] == 1.0
        assert w["MC"] == pytest.approx((2 + 1 / l_) / 4, abs=0.05)


def test_reference_random_estimator_sits_at_the_chance_levels(calibration):
    for space in ("Model", "Input"):
        r = calibration.loc[("random", space)]
        assert r["IAC_NR"] == pytest.approx(0.5, abs=0.15)
        assert r["IAC_AR"] == pytest.approx(0.5, abs=0.15)
        assert r["IEC_NR"] == pytest.approx(r["chance_IEC_NR"], abs=0.06)
        assert r["IEC_AR"] == pytest.approx(0.5, abs=0.06)
        assert r["MC"] == pytest.approx(r["chance_MC"], abs=0.07)


@pytest.fixture(scope="module")
def calibration6(data):
    """The reference estimators with L = 6 methods (MetaQuantus' MNIST setting) on 40 samples,
    so that every perturbation keeps at most 50 pairs and SciPy's Wilcoxon test is exact."""
    model, _, _, _ = data
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    estimators = {
        "same": me.ReferenceEstimator("same"),
        "different": me.ReferenceEstimator("different"),
        "worse": me.ReferenceEstimator("different", shift="worse", higher_is_better=False),
        "random": me.ReferenceEstimator("random"),
    }
    run = me.MetaEvaluation(_suite(), {m: {"method": "Saliency"} for m in "abcdef"},
                            iterations=2, nr_perturbations=3, seed=1)
    return run(estimators, model, x)


def test_reference_estimators_with_six_methods(calibration6):
    l_ = 6
    summ = calibration6.summary().set_index(["metric", "space"])
    iac = calibration6.to_frame().query("criterion.str.startswith('IAC')")
    assert iac["n_used"].max() <= 40 and (iac["n_used"] > 0).all()  # pairs per p-value
    for space in ("Model", "Input"):
        same = summ.loc[("same", space)]
        assert (same["IAC_NR"], same["IAC_AR"], same["IEC_NR"], same["IEC_AR"]) == (1, 0, 1, 0)
        assert same["MC"] == 0.5
        # every pair tied before and after: IAC and IEC_AR sit exactly at their chance levels
        # (p = 1 and "never worse" whatever the null); only its ranking (IEC_NR = 1, chance
        # 1/L: untied U(0, 1) scores across methods) is informative
        for c in ("IAC_NR", "IAC_AR", "IEC_AR"):
            assert same[f"chance_{c}"] == same[c], c
        assert same["chance_IEC_NR"] == pytest.approx(1 / l_, abs=1e-12)
        assert same["chance_MC"] == pytest.approx((1 + 1 / l_) / 4)

        diff = summ.loc[("different", space)]
        assert diff["IEC_AR"] == 0.0  # quality always improved
        assert diff["IEC_NR"] == pytest.approx(1 / l_, abs=0.05)
        assert diff["chance_IEC_NR"] == pytest.approx(1 / l_, abs=1e-12)  # no ties
        assert diff["chance_IEC_AR"] == 0.5
        assert diff["MC"] == pytest.approx((1 + 1 / l_) / 4, abs=0.02)  # MetaQuantus: 0.29
        assert summ.loc[("worse", space), "IEC_AR"] == 1.0

        rnd = summ.loc[("random", space)]
        assert rnd["IEC_NR"] == pytest.approx(1 / l_, abs=0.05)
        assert rnd["IEC_AR"] == pytest.approx(0.5, abs=0.06)
        assert rnd["IAC_NR"] == pytest.approx(0.5, abs=0.15)
        assert rnd["IAC_AR"] == pytest.approx(0.5, abs=0.15)
        assert rnd["MC"] == pytest.approx((1.5 + 1 / l_) / 4, abs=0.07)


def test_reference_different_estimator_iac_is_exactly_two_over_two_to_the_n(calibration6):
    """Every perturbed score of "different" is better than its unperturbed one, so all n kept
    differences have one sign: the signed-rank statistic takes its extreme value, which has
    probability 1/2**n under the exact null distribution (no ties, n <= 50), and the two-sided
    p-value is 2/2**n. (MetaQuantus only expects IAC_NR ~ 0; this is the exact value
    that follows from the definition.)"""
    frame = calibration6.to_frame()
    rows = frame[(frame["metric"] == "different") & frame["criterion"].str.startswith("IAC")]
    assert len(rows) == 4 * 2 * 3 * 6  # tests x iterations x perturbations x methods
    n = rows["n_used"].to_numpy()
    p = 2.0 / 2.0 ** n
    want = np.where(rows["criterion"] == "IAC_NR", p, 1 - p)
    np.testing.assert_allclose(rows["value"].to_numpy(), want, rtol=1e-9, atol=0)
    # and the summary's IAC_NR is their mean over (perturbation, method), then iterations
    for test, space in (("Model Resilience Test", "Model"), ("Input Resilience Test", "Input")):
        r = rows[rows["test"] == test]
        per_t = [2.0 / 2.0 ** r[r["iteration"] == t]["n_used"].to_numpy() for t in range(2)]
        got = calibration6.summary().set_index(["metric", "space"]).loc[("different", space)]
        assert got["IAC_NR"] == pytest.approx(np.mean([v.mean() for v in per_t]), rel=1e-9)


# --------------------------------------------------------------------------- benchmark
def test_benchmark_shares_units_and_resumes_from_the_store(data, tmp_path):
    model, x, y, s = data
    counter = CountingExplain()
    run = me.MetaEvaluation(_suite(), METHODS, iterations=1, nr_perturbations=2, seed=0,
                            explain_fn=counter)
    datasets = {"tiny": {"x": x, "y": y, "s": s, "models": {"a": model, "b": tiny_cnn(1)}}}
    metrics = {"Complexity": {"Sparseness": ek.metrics.Sparseness()},
               "Localisation": {"PG": ek.metrics.PointingGame()}}
    path = tmp_path / "meta.sqlite"
    bench = me.MetaEvaluationBenchmark(run, metrics, datasets, store=path)
    first = bench.run()
    units = 1 + len(run.tests) * 2
    assert bench.stats_["units_computed"] == 2 * units
    assert counter.calls == 2 * len(METHODS) * units
    summ = first.summary()
    assert set(summ["model"]) == {"a", "b"}
    assert set(summ["family"]) == {"Complexity", "Localisation"}

    counter.calls = 0
    again = me.MetaEvaluationBenchmark(run, metrics, datasets, store=path)
    second = again.run()
    assert again.stats_["units_loaded"] == 2 * units and again.stats_["units_computed"] == 0
    assert counter.calls == 0
    pd.testing.assert_frame_equal(first.summary(), second.summary())

    # a new metric: only its scores are computed (the units' explanations are redone once)
    more = {**metrics, "Faithfulness": {"FC": ek.metrics.FaithfulnessCorrelation(
        nr_runs=4, subset_size=8)}}
    third_b = me.MetaEvaluationBenchmark(run, more, datasets, store=ResultStore(path))
    third = third_b.run()
    assert third_b.stats_["scores_computed"] == 2 * units
    assert third_b.stats_["scores_loaded"] == 2 * 2 * units
    old = third.summary()
    old = old[old["metric"] != "FC"].reset_index(drop=True)
    pd.testing.assert_frame_equal(old, first.summary())


def test_benchmark_equals_single_runs(data):
    model, x, y, _s = data
    run = me.MetaEvaluation(_suite(), METHODS, iterations=1, nr_perturbations=1, seed=5)
    bench = me.MetaEvaluationBenchmark(
        run, {"Sparseness": ek.metrics.Sparseness()},
        {"tiny": {"x": x, "y": y, "models": {"net": model}}}).run()
    single = run({"Sparseness": ek.metrics.Sparseness()}, model, x, y)
    cols = ["IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR", "MC"]
    np.testing.assert_allclose(bench.summary()[cols].to_numpy(dtype=float),
                               single.summary()[cols].to_numpy(dtype=float))


# --------------------------------------------------------------------------- results
def test_result_frames_persistence_and_plots(data, tmp_path):
    model, x, y, s = data
    res = me.MetaEvaluation(_suite(), METHODS, iterations=2, nr_perturbations=2, seed=0)(
        {"Sparseness": ek.metrics.Sparseness(), "PG": ek.metrics.PointingGame(),
         **me.reference_estimators()}, model, x, y, s=s)
    long = res.to_frame()
    n_rows = 5 * 4 * 2 * 2 * (len(METHODS) + 1)
    assert len(long) == n_rows
    assert {"criterion", "iteration", "perturbation", "method", "value", "kept"} <= set(long)
    it = res.to_frame("iteration")
    assert len(it) == 5 * 2 * 2
    table = res.table()
    assert table["MC"].str.contains("±").any()
    # the chance levels are columns of the table
    assert {f"chance_{c}" for c in (*me.CRITERIA, "MC")} <= set(table.columns)
    summ = res.summary()
    spar = (summ["metric"] == "Sparseness") & (summ["space"] == "Model")
    assert table.loc[spar.to_numpy(), "chance_IEC_NR"].iloc[0] == \
        f"{summ.loc[spar, 'chance_IEC_NR'].iloc[0]:.3f}"
    assert "chance_MC" not in res.table(chance=False).columns
    scores = res.scores_frame()
    assert len(scores) == 5 * 16 * len(METHODS) * (1 + 4 * 2 * 2)
    path = tmp_path / "res.json"
    res.save(path)
    back = me.MetaEvaluationResult.load(path)
    pd.testing.assert_frame_equal(back.summary(), res.summary())
    assert list(res.ranking()["rank"])
    fig = res.plot_area(n_cols=3)
    assert len([a for a in fig.axes if a.has_data()]) == 5
    fig2 = res.plot_scatter()
    assert len(fig2.axes) == 2
    import matplotlib.pyplot as plt

    plt.close("all")


def test_validation_errors(data):
    model, x, y, _ = data
    with pytest.raises(ValueError, match="xai_methods"):
        me.MetaEvaluation(_suite(), None)
    with pytest.raises(ValueError, match="one per space"):
        me.MetaEvaluation([me.ModelPerturbationTest("Resilience", std=0.1)] * 2, METHODS)
    with pytest.raises(ValueError, match="type"):
        me.ModelPerturbationTest("Robust", std=0.1)
    with pytest.raises(ValueError, match="std"):
        me.ModelPerturbationTest("Adversary", std=0.0)
    with pytest.raises(ValueError, match="noise"):
        me.InputPerturbationTest("Adversary", -1.0)
    with pytest.raises(ValueError, match="clip"):
        me.InputPerturbationTest("Adversary", 1.0, clip=(1.0, 0.0))
    with pytest.raises(ValueError, match="iterations"):
        me.MetaEvaluation(_suite(), METHODS, iterations=0)
    run = me.MetaEvaluation(_suite(), METHODS, iterations=1, nr_perturbations=1)
    with pytest.raises(ValueError, match="aggregate"):
        run(ek.metrics.Sparseness(aggregate=np.mean), model, x, y)
    with pytest.raises(TypeError, match="evalkit Metric"):
        run(lambda *a: 0, model, x, y)
    with pytest.raises(ValueError, match="label"):
        me.MetaEvaluation(_suite(), METHODS, target="label")(ek.metrics.Sparseness(), model, x)
    with pytest.raises(ValueError, match="setting"):
        me.default_suite("cifar")


@pytest.mark.parametrize("direction", ["higher", "lower", 1, 0, None, np.float64(1.0)])
def test_a_non_bool_direction_is_rejected_naming_the_metric(data, direction):
    model, x, y, _ = data

    class Odd(ek.metrics.Sparseness):
        pass

    odd = Odd()
    odd.higher_is_better = direction
    run = me.MetaEvaluation(_suite(), METHODS, iterations=1, nr_perturbations=1)
    with pytest.raises(TypeError, match=r"'odd sparseness' \(Odd\) declares higher_is_better"):
        run({"odd sparseness": odd}, model, x, y)
    with pytest.raises(TypeError, match=r"'Odd'.*must be a bool"):
        run(odd, model, x, y)  # named by its class
    with pytest.raises(TypeError, match="higher_is_better"):
        me.MetaEvaluationBenchmark(run, {"Complexity": {"odd": odd}},
                                   {"d": {"x": x, "y": y, "models": {"net": model}}})


def test_numpy_bool_directions_are_accepted(data):
    model, x, y, _ = data
    metric = ek.metrics.Sparseness()
    metric.higher_is_better = np.bool_(False)
    res = me.MetaEvaluation(_suite(), METHODS, iterations=1, nr_perturbations=1)(
        {"flipped": metric}, model, x, y)
    rec = res.blocks[0].metrics["flipped"]
    assert rec.higher_is_better is False  # stored as a plain bool


def test_default_suite_settings():
    mnist = {t.name: t for t in me.default_suite()}
    assert mnist["Model Adversary Test"].std == 2.0 and mnist["Input Adversary Test"].noise == 5.0
    assert mnist["Model Resilience Test"].std == 0.001
    assert mnist["Input Resilience Test"].noise == 0.001
    imagenet = {t.name: t for t in me.default_suite("imagenet")}
    assert imagenet["Model Adversary Test"].std == 0.5
    tutorial = {t.name: t for t in me.default_suite("tutorial")}
    assert tutorial["Input Adversary Test"].noise == 3.0
    assert all(t.mean == 1.0 for t in mnist.values() if t.space == "Model")


def test_callable_models_get_input_tests_only(data):
    model, x, y, _ = data

    def predict(arr):
        with torch.no_grad():
            return model(torch.as_tensor(arr)).numpy()

    run = me.MetaEvaluation(_suite(), {"Sobel": {}}, iterations=1, nr_perturbations=1)
    with pytest.raises(TypeError, match="Input"):
        run(ek.metrics.Sparseness(), predict, x.numpy(), y.numpy())
    inputs_only = [t for t in me.default_suite() if t.space == "Input"]
    res = me.MetaEvaluation(inputs_only, {"Sobel": {}}, iterations=1, nr_perturbations=1)(
        ek.metrics.Sparseness(), predict, x.numpy(), y.numpy())
    assert res.summary()["space"].tolist() == ["Input"]


def test_scoring_only_the_kept_samples_is_exact(data):
    model, x, y, s = data
    metrics = {"Sparseness": ek.metrics.Sparseness(), "PG": ek.metrics.PointingGame(),
               "FC": ek.metrics.FaithfulnessCorrelation(nr_runs=4, subset_size=8),
               "MaxSens": ek.metrics.MaxSensitivity(nr_samples=2)}
    methods = {"Saliency": {}, "GradientShap": {}}
    kept = me.MetaEvaluation(_suite(), methods, iterations=1, nr_perturbations=2, seed=1)(
        metrics, model, x, y, s=s)
    full = me.MetaEvaluation(_suite(), methods, iterations=1, nr_perturbations=2, seed=1,
                             score_all=True)(metrics, model, x, y, s=s)
    cols = ["IAC_NR", "IAC_AR", "IEC_NR", "IEC_AR", "MC"]
    np.testing.assert_allclose(kept.summary()[cols].to_numpy(dtype=float),
                               full.summary()[cols].to_numpy(dtype=float))
    bk, bf = kept.blocks[0], full.blocks[0]
    saw_subset = False
    for name in metrics:
        for test in bk.tests:
            mask = bk.masks[test.name][:, :, None, :]  # (I, K, 1, N)
            qk, qf = bk.metrics[name].q_hat[test.name], bf.metrics[name].q_hat[test.name]
            np.testing.assert_allclose(np.where(mask, qk, 0.0), np.where(mask, qf, 0.0))
            assert np.isnan(qk[np.broadcast_to(~mask, qk.shape)]).all()
            saw_subset |= bool((~mask).any())
    assert saw_subset


class _Flaky(ek.metrics.Sparseness):
    """Sparseness that fails after ``budget`` calls (a run killed part-way)."""

    budget: int | None = None

    def _evaluate(self, batch):
        if _Flaky.budget is not None:
            if _Flaky.budget <= 0:
                raise RuntimeError("killed")
            _Flaky.budget -= 1
        return super()._evaluate(batch)


def test_benchmark_resumes_after_a_crash(data, tmp_path):
    model, x, y, _ = data
    run = me.MetaEvaluation(_suite(), METHODS, iterations=1, nr_perturbations=2, seed=0)
    datasets = {"tiny": {"x": x, "y": y, "models": {"net": model}}}
    path = tmp_path / "crash.sqlite"
    _Flaky.budget = 2 * len(METHODS) + 1  # the unperturbed unit and one more unit, then fail
    try:
        with pytest.raises(RuntimeError, match="killed"):
            me.MetaEvaluationBenchmark(run, {"s": _Flaky()}, datasets, store=path).run()
    finally:
        _Flaky.budget = None
    resumed = me.MetaEvaluationBenchmark(run, {"s": _Flaky()}, datasets, store=path)
    got = resumed.run()
    assert resumed.stats_["units_loaded"] == 2
    assert resumed.stats_["units_computed"] == 1 + len(run.tests) * 2 - 2
    fresh = me.MetaEvaluationBenchmark(run, {"s": _Flaky()}, datasets).run()
    pd.testing.assert_frame_equal(got.summary(), fresh.summary())
