"""Cross-checks against the released metaquantus 0.0.5 (a test-only reference oracle).

metaquantus is installed without its dependencies into ``.oracle/metaquantus`` (see
``benchmarks/_metaquantus.py``); these tests are marked ``oracle`` and skip when it is absent.
Where metaquantus is correct, our criteria equal its numbers exactly; where it has the
``score_direction`` bug (IEC_AR of higher-is-better metrics), we show that ours is right.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import metaeval as me
from benchmarks._metaquantus import load_metaquantus
from metaeval import criteria as C
from metaeval.results import MetaEvaluationResult, MetricRecord, RunBlock

pytestmark = pytest.mark.oracle


@pytest.fixture(scope="module")
def mq():
    module = load_metaquantus()
    if module is None:
        pytest.skip("metaquantus 0.0.5 is not installed in .oracle/metaquantus "
                    "(pip install --no-deps --target .oracle/metaquantus metaquantus==0.0.5)")
    return module


def _mq_suite(mq):
    return {
        "Model Resilience Test": mq.ModelPerturbationTest(
            type="Resilience", noise_type="multiplicative", mean=1.0, std=0.001),
        "Model Adversary Test": mq.ModelPerturbationTest(
            type="Adversary", noise_type="multiplicative", mean=1.0, std=2.0),
        "Input Resilience Test": mq.InputPerturbationTest(type="Resilience", noise=0.001),
        "Input Adversary Test": mq.InputPerturbationTest(type="Adversary", noise=5.0),
    }


def test_per_perturbation_kernels_equal_metaquantus(mq):
    m = mq.MetaEvaluation
    rng = np.random.default_rng(8)
    for _ in range(5):
        q_star = rng.random((4, 30))
        q_hat = q_star + rng.normal(0, 0.3, (4, 30))
        mask = rng.random(30) < 0.7
        p = C.iac_pvalues(q_star, q_hat[None], mask[None]).values[0]
        for j in range(4):
            assert p[j] == pytest.approx(
                m.compute_iac_score(q_star[j], q_hat[j], mask, "Model Resilience Test"))
            assert 1 - p[j] == pytest.approx(
                m.compute_iac_score(q_star[j], q_hat[j], mask, "Model Adversary Test"))
        assert C.iec_nr(q_star, q_hat[None], mask[None]).values[0] == pytest.approx(
            m.compute_iec_resilience(q_star, q_hat, mask))
        # lower-is-better: metaquantus' "lower" branch is right
        assert C.iec_ar(q_star, q_hat[None], mask[None], higher_is_better=False).values[0] \
            == pytest.approx(m.compute_iec_adversary(q_star, q_hat, mask, "lower"))
        # higher-is-better: only its None/False branch is right ...
        ours = C.iec_ar(q_star, q_hat[None], mask[None], higher_is_better=True).values[0]
        assert ours == pytest.approx(m.compute_iec_adversary(q_star, q_hat, mask, None))


def test_metaquantus_score_direction_bug_and_ours(mq):
    """MetaQuantus' score-direction bug (docs/metaeval.md): Q* = [0.9, 0.8, 0.7], Q̂ = 0.1 (quality
    dropped)."""
    q_star = np.array([[0.9], [0.8], [0.7]])
    q_hat = np.full((3, 1), 0.1)
    mask = np.array([True])
    got = {d: mq.MetaEvaluation.compute_iec_adversary(q_star, q_hat, mask, d)
           for d in ("higher", "lower", None)}
    assert got == {"higher": 0.0, "lower": 0.0, None: 1.0}  # "higher" takes the lower branch
    ours = C.iec_ar(q_star, q_hat[None], mask[None], higher_is_better=True).values[0]
    assert ours == 1.0


def _block(hib: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_l, n, n_i, n_k = 3, 25, 2, 3
    tests = me.default_suite()
    q_star = rng.random((n_l, n))
    q_hat = {t.name: q_star + rng.normal(0, 0.1 if t.type == "Resilience" else 0.5,
                                         (n_i, n_k, n_l, n)) for t in tests}
    masks = {t.name: rng.random((n_i, n_k, n)) < (0.9 if t.type == "Resilience" else 0.4)
             for t in tests}
    methods = ["a", "b", "c"]
    rec = MetricRecord("m", "f", hib, "m", q_star, q_hat, {t.name: (True, "") for t in tests})
    block = RunBlock("d", "net", tests, methods, n_i, n_k, np.zeros(n, int), None, masks,
                     {k: np.zeros((n_i, n_k, n), int) for k in masks}, {"m": rec})
    return block


def _metaquantus_on(mq, block, score_direction):
    rec = block.metrics["m"]
    run = mq.MetaEvaluation(test_suite=_mq_suite(mq), xai_methods={m: {} for m in block.methods},
                            iterations=block.iterations, nr_perturbations=block.nr_perturbations,
                            write_to_file=False)
    names = [t.name for t in block.tests]
    run.results_y_preds = block.y_pred
    run.results_eval_scores = {t: {m: rec.q_star[j] for j, m in enumerate(block.methods)}
                               for t in names}
    run.results_eval_scores_perturbed = {
        t: {i: {m: rec.q_hat[t][i, :, j] for j, m in enumerate(block.methods)}
            for i in range(block.iterations)} for t in names}
    run.results_indices_perturbed = {t: {i: block.masks[t][i] for i in range(block.iterations)}
                                     for t in names}
    run.run_intra_analysis()
    run.run_inter_analysis(score_direction=score_direction)
    run.run_meta_consistency_analysis()
    return run.results_meta_consistency_scores


@pytest.mark.parametrize("hib, direction, agrees", [
    (False, "lower", True),   # lower-is-better: metaquantus is right
    (True, None, True),       # higher-is-better through its working (None) branch
    (True, "higher", False),  # the shipped configs' "higher": IEC_AR inverted
])
def test_aggregation_equals_metaquantus_where_it_is_correct(mq, hib, direction, agrees):
    block = _block(hib)
    ours = MetaEvaluationResult([block]).summary().set_index("space")
    theirs = _metaquantus_on(mq, block, direction)
    for space in ("Model", "Input"):
        t = theirs[space]
        res = t["consistency_results"]
        per_it = t["consistency_scores"]
        for c, key in (("IAC_NR", "IAC_{NR}"), ("IAC_AR", "IAC_{AR}"), ("IEC_NR", "IEC_{NR}")):
            assert ours.loc[space, c] == pytest.approx(res[f"{key} mean"])
            # the spread over iterations of its own per-iteration values
            assert ours.loc[space, f"{c}_std"] == pytest.approx(np.std(per_it[key]))
            if c != "IAC_AR":
                assert ours.loc[space, f"{c}_std"] == pytest.approx(res[f"{key} std"])
        # metaquantus 0.0.5 reports IAC_NR's std as "IAC_{AR} std" (not in its per-iteration
        # IAC_AR values); ours is the std of those values
        assert res["IAC_{AR} std"] == res["IAC_{NR} std"]
        assert res["IAC_{AR} std"] != pytest.approx(np.std(per_it["IAC_{AR}"]))
        same_ar = bool(ours.loc[space, "IEC_AR"] == pytest.approx(res["IEC_{AR} mean"]))
        same_mc = bool(ours.loc[space, "MC"] == pytest.approx(t["MC_mean"]))
        assert same_ar is agrees and same_mc is agrees
        if agrees:
            assert ours.loc[space, "MC_std"] == pytest.approx(t["MC_std"])
        else:
            # the bug computes the lower-is-better fraction: 1 - ours minus the ties
            assert res["IEC_{AR} mean"] == pytest.approx(1 - ours.loc[space, "IEC_AR"])


@pytest.mark.slow
def test_metaquantus_input_test_is_degenerate_for_input_agnostic_metrics(mq, quantus):
    """MetaQuantus scores clean-input explanations under the input test, so Sparseness sees the
    same inputs and gets IAC_NR = IEC_NR = 1 exactly (the "always the same" estimator); we
    report that pairing as not applicable, and re-explaining makes it informative."""
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 8 * 8, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    net.eval()
    x = torch.rand(12, 1, 8, 8, generator=gen).numpy()
    y = net(torch.from_numpy(x)).argmax(1).numpy()
    suite = {k: v for k, v in _mq_suite(mq).items() if k.startswith("Input")}
    run = mq.MetaEvaluation(test_suite=suite, xai_methods={"Saliency": {}, "InputXGradient": {}},
                            iterations=1, nr_perturbations=2, write_to_file=False)
    run(estimator=quantus.Sparseness(disable_warnings=True, normalise=True, abs=True,
                                     return_aggregate=False),
        model=net, x_batch=x, y_batch=y, s_batch=None, softmax=False, device="cpu")
    res = run.results_meta_consistency_scores["Input"]["consistency_results"]
    assert res["IAC_{NR} mean"] == 1.0 and res["IEC_{NR} mean"] == 1.0

    import evalkit as ek

    ours_orig = me.MetaEvaluation([me.InputPerturbationTest("Resilience", 0.001,
                                                            re_explain=False),
                                   me.InputPerturbationTest("Adversary", 5.0,
                                                            re_explain=False)],
                                  {"Saliency": {}, "InputXGradient": {}}, iterations=1,
                                  nr_perturbations=2)(ek.metrics.Sparseness(), net, x, y)
    assert not ours_orig.summary()["applicable"].iloc[0]
    ours = me.MetaEvaluation([me.InputPerturbationTest("Resilience", 0.001),
                              me.InputPerturbationTest("Adversary", 5.0)],
                             {"Saliency": {}, "InputXGradient": {}}, iterations=1,
                             nr_perturbations=2)(ek.metrics.Sparseness(), net, x, y)
    row = ours.summary().iloc[0]
    assert row["applicable"] and row["IAC_NR"] < 1.0
