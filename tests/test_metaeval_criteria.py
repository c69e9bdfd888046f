"""Known-answer tests of the MetaQuantus criteria on constructed score arrays."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats

from metaeval import criteria as C
from metaeval.results import MetaEvaluationResult, MetricRecord, RunBlock
from metaeval.suite import InputPerturbationTest, ModelPerturbationTest


# --------------------------------------------------------------------------- IAC
def test_iac_is_the_zsplit_wilcoxon_pvalue_over_kept_finite_pairs():
    rng = np.random.default_rng(3)
    q_star = rng.random((2, 12))
    q_hat = (q_star + rng.normal(0, 0.2, (2, 12)))[None]
    mask = np.ones((1, 12), dtype=bool)
    mask[0, :3] = False
    q_hat[0, 1, 5] = np.nan
    res = C.iac_pvalues(q_star, q_hat, mask)
    want0 = scipy.stats.wilcoxon(q_star[0, 3:], q_hat[0, 0, 3:], zero_method="zsplit")[1]
    keep = np.arange(12) >= 3
    keep[5] = False
    want1 = scipy.stats.wilcoxon(q_star[1, keep], q_hat[0, 1, keep], zero_method="zsplit")[1]
    np.testing.assert_allclose(res.values[0], [want0, want1])
    assert res.n_used.tolist() == [[9, 8]]


@pytest.mark.parametrize("n, zeros, seed", [
    (10, 3, 0),   # zeros among few pairs (SciPy >= 1.13: a permutation test)
    (11, 2, 1),
    (30, 8, 2),   # zeros among more pairs (normal approximation)
    (80, 40, 3),  # half the differences zero, > 50 pairs
    (25, 24, 4),  # a single non-zero difference
])
def test_zsplit_pvalues_with_partly_zero_differences_equal_scipy(n, zeros, seed):
    rng = np.random.default_rng(seed)
    a = np.round(rng.random(n), 2)  # coarse scores: tied |differences| as well
    b = a + np.round(rng.normal(0, 0.1, n), 2)
    same = rng.choice(n, zeros, replace=False)
    b[same] = a[same]
    assert 0 < (a - b != 0).sum() <= n - zeros
    want = scipy.stats.wilcoxon(a, b, zero_method="zsplit", alternative="two-sided").pvalue
    assert C.wilcoxon_pvalue(a, b) == want
    # through the per-perturbation kernel, over a mask, with a NaN pair dropped
    mask = np.ones(n + 2, bool)
    mask[-1] = False
    q_star = np.concatenate([a, [np.nan, 0.3]])[None]
    q_hat = np.concatenate([b, [0.5, 0.9]])[None, None]
    got = C.iac_pvalues(q_star, q_hat, mask[None])
    assert got.values[0, 0] == want and got.n_used[0, 0] == n


def test_iac_identical_scores_give_p_one_even_for_a_single_pair():
    q = np.array([[0.3, 0.2, 0.9]])
    assert C.iac_pvalues(q, q[None], np.ones((1, 3), bool)).values[0, 0] == 1.0
    one = np.array([True, False, False])
    assert C.iac_pvalues(q, q[None], one[None]).values[0, 0] == 1.0


def test_iac_empty_mask_is_undefined_not_zero():
    q = np.random.default_rng(0).random((3, 5))
    res = C.iac_pvalues(q, q[None] + 1, np.zeros((1, 5), bool))
    assert np.isnan(res.values).all()
    assert (res.n_used == 0).all()
    # all pairs NaN: also undefined
    res = C.iac_pvalues(np.full((1, 4), np.nan), np.ones((1, 1, 4)), np.ones((1, 4), bool))
    assert np.isnan(res.values).all()


def test_iac_all_differences_one_sign_gives_the_exact_two_sided_pvalue():
    rng = np.random.default_rng(1)
    q = rng.random((1, 10))
    p = C.iac_pvalues(q, q[None] + 5 + rng.random((1, 1, 10)), np.ones((1, 10), bool))
    assert p.values[0, 0] == pytest.approx(2 / 2**10)


# --------------------------------------------------------------------------- IEC_NR
def test_iec_nr_counts_exact_rank_position_agreement():
    # sample 0: ranking unchanged (3/3); sample 1: two methods swap (1/3 agree)
    q_star = np.array([[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]])
    q_hat = np.array([[0.2, 0.6], [0.6, 0.2], [1.0, 1.0]])[None]
    v = C.iec_nr(q_star, q_hat, np.ones((1, 2), bool))
    assert v.values[0] == pytest.approx((1 + 1 / 3) / 2)
    # reversing the ranking of 3 methods keeps only the middle one
    rev = C.iec_nr(q_star[:, :1], -q_star[None, :, :1], np.ones((1, 1), bool))
    assert rev.values[0] == pytest.approx(1 / 3)


def test_iec_nr_ties_agree_only_when_the_tie_block_is_unchanged():
    q_star = np.array([[1.0], [1.0], [0.0]])  # methods 0 and 1 tied at the top
    same_ties = np.array([[[2.0], [2.0], [0.5]]])
    broken = np.array([[[2.0], [1.0], [0.5]]])
    mask = np.ones((1, 1), bool)
    assert C.iec_nr(q_star, same_ties, mask).values[0] == 1.0
    # method 2 keeps its block (rank 0); methods 0/1 go from block (1, 2) to singletons
    assert C.iec_nr(q_star, broken, mask).values[0] == pytest.approx(1 / 3)
    lo, hi = C.tie_blocks(q_star)
    assert lo[:, 0].tolist() == [1, 1, 0] and hi[:, 0].tolist() == [2, 2, 0]


def test_iec_nr_without_ties_equals_argsort_position_agreement():
    rng = np.random.default_rng(5)
    q_star = rng.random((5, 40))
    q_hat = rng.random((3, 5, 40))
    mask = rng.random((3, 40)) < 0.6
    got = C.iec_nr(q_star, q_hat, mask).values
    r0 = np.argsort(q_star, axis=0)
    for k in range(3):
        rk = np.argsort(q_hat[k], axis=0)
        want = (r0 == rk)[:, mask[k]].mean()
        assert got[k] == pytest.approx(want)


def test_iec_nr_skips_rows_with_nan_and_empty_masks():
    q_star = np.array([[0.1, np.nan, 0.3], [0.2, 0.5, 0.1]])
    q_hat = q_star[None].copy()
    q_hat[0, 0, 1] = 0.7
    v = C.iec_nr(q_star, q_hat, np.ones((1, 3), bool))
    assert v.n_used[0] == 2 and v.values[0] == 1.0
    e = C.iec_nr(q_star, q_hat, np.zeros((1, 3), bool))
    assert np.isnan(e.values[0]) and e.n_used[0] == 0


def test_iec_nr_chance_level():
    rng = np.random.default_rng(2)
    l_ = 4
    q_star = rng.random((l_, 30))
    q_hat = rng.random((2, l_, 30))
    ch = C.iec_nr_chance(q_star, q_hat, np.ones((2, 30), bool))
    np.testing.assert_allclose(ch.values, 1 / l_)
    # all tied before and after: chance 1 (a perfect IEC_NR carries no information)
    ones = np.ones((l_, 6))
    assert C.iec_nr_chance(ones, ones[None], np.ones((1, 6), bool)).values[0] == 1.0
    # a binary metric: blocks {0,1} and {2,3}; after: same block structure
    qs = np.array([[1.0], [1.0], [0.0], [0.0]])
    qh = np.array([[[0.0], [1.0], [1.0], [0.0]]])
    assert C.iec_nr_chance(qs, qh, np.ones((1, 1), bool)).values[0] == pytest.approx(0.5)
    # the permutation null by brute force
    perms = [np.array(p) for p in __import__("itertools").permutations(range(4))]
    brute = np.mean([C.iec_nr(qs, qh[:, p], np.ones((1, 1), bool)).values[0] for p in perms])
    assert brute == pytest.approx(0.5)


# --------------------------------------------------------------------------- IEC_AR
@pytest.mark.parametrize("higher_is_better", [True, False])
def test_iec_ar_direction_comes_from_the_metric(higher_is_better):
    q_star = np.array([[0.9, 0.8, 0.7]])
    dropped = np.array([[[0.1, 0.1, 0.1]]])
    v = C.iec_ar(q_star, dropped, np.ones((1, 3), bool), higher_is_better=higher_is_better)
    # scores fell: worse for higher-is-better metrics, better for lower-is-better ones
    assert v.values[0] == (1.0 if higher_is_better else 0.0)


def test_iec_ar_ties_count_as_no_reaction_and_nan_pairs_are_dropped():
    q_star = np.array([[0.5, 0.5, 0.5, 0.5]])
    q_hat = np.array([[[0.5, 0.4, 0.6, np.nan]]])
    mask = np.array([[True, True, True, True]])
    v = C.iec_ar(q_star, q_hat, mask, higher_is_better=True)
    assert v.values[0] == pytest.approx(1 / 3) and v.n_used[0] == 3
    assert np.isnan(C.iec_ar(q_star, q_hat, ~mask, higher_is_better=True).values[0])


def test_iec_ar_rejects_string_directions():
    q = np.zeros((1, 2))
    with pytest.raises(TypeError, match="higher_is_better"):
        C.iec_ar(q, q[None], np.ones((1, 2), bool), higher_is_better="higher")


def test_shape_and_type_validation():
    q = np.zeros((2, 3))
    with pytest.raises(ValueError, match="q_hat"):
        C.iec_nr(q, np.zeros((1, 3, 3)), np.ones((1, 3), bool))
    with pytest.raises(ValueError, match="mask"):
        C.iec_nr(q, np.zeros((1, 2, 3)), np.ones((2, 3), bool))
    with pytest.raises(TypeError, match="boolean"):
        C.iec_nr(q, np.zeros((1, 2, 3)), np.ones((1, 3)))
    with pytest.raises(ValueError, match="q_star"):
        C.iac_pvalues(np.zeros(3), np.zeros((1, 1, 3)), np.ones((1, 3), bool))


def test_chance_levels():
    c = C.chance_levels(6)
    assert c["IEC_NR"] == pytest.approx(1 / 6)
    assert c["MC"] == pytest.approx((1.5 + 1 / 6) / 4)
    with pytest.raises(ValueError):
        C.chance_levels(0)


# --------------------------------------------------------------------------- tie-aware chance
def _sign_flip_mean_p(q_star: np.ndarray, q_hat: np.ndarray) -> float:
    """E[p] under the exchangeable-pairs null by brute force: every way of swapping the two
    scores of the untied pairs, each p-value from wilcoxon_pvalue (i.e. SciPy)."""
    untied = np.flatnonzero(q_star != q_hat)
    ps = []
    for swap in itertools.product([False, True], repeat=untied.size):
        a, b = q_star.copy(), q_hat.copy()
        sw = untied[np.array(swap, dtype=bool)]
        a[sw], b[sw] = q_hat[sw], q_star[sw]
        ps.append(C.wilcoxon_pvalue(a, b))
    return float(np.mean(ps))


def test_iec_ar_chance_is_half_the_fraction_of_untied_pairs():
    # 3 finite pairs, 2 untied: chance 1/2 * 2/3; IEC_AR itself is 1/3 (one got worse)
    q_star = np.array([[0.5, 0.5, 0.5, 0.5]])
    q_hat = np.array([[[0.5, 0.4, 0.6, np.nan]]])
    mask = np.ones((1, 4), bool)
    ch = C.iec_ar_chance(q_star, q_hat, mask)
    assert ch.values[0] == pytest.approx(1 / 3) and ch.n_used[0] == 3
    # a binary metric scoring every method 1, two of 2 x 4 pairs dropped to 0 after the
    # perturbation: IEC_AR = 2/8, chance 1/2 * 2/8 (not 0.5)
    ones = np.ones((2, 4))
    dropped = ones.copy()
    dropped[0, 1] = dropped[1, 3] = 0.0
    assert C.iec_ar(ones, dropped[None], mask, higher_is_better=True).values[0] == 0.25
    assert C.iec_ar_chance(ones, dropped[None], mask).values[0] == 0.125
    # nothing changed: chance 0; continuous scores: 1/2; empty mask: undefined
    assert C.iec_ar_chance(ones, ones[None], mask).values[0] == 0.0
    rng = np.random.default_rng(0)
    assert C.iec_ar_chance(rng.random((3, 9)), rng.random((1, 3, 9)),
                           np.ones((1, 9), bool)).values[0] == 0.5
    assert np.isnan(C.iec_ar_chance(ones, dropped[None], ~mask).values[0])


def test_iac_chance_known_answers():
    mask = np.ones((1, 6), bool)
    q = np.array([[0.2, 0.4, 0.4, 0.9, 0.1, 0.3]])
    # every pair tied: p = 1 whatever the signs, so IAC_NR's chance is 1 (IAC_AR's 0)
    assert C.iac_chance(q, q[None], mask).values[0, 0] == 1.0
    # two untied pairs (differences 1 and 2, no zeros): T = sum of the positive ranks is
    # 0, 1, 2 or 3 with probability 1/4 each; the exact two-sided p-values are 0.5, 1, 1, 0.5
    two = C.iac_chance(np.array([[0.0, 0.0]]), np.array([[[1.0, 2.0]]]), np.ones((1, 2), bool))
    assert two.values[0, 0] == pytest.approx(0.75)
    # continuous scores, many pairs: 1/2 (the normal approximation of the null is exact
    # at the centre of a symmetric statistic)
    rng = np.random.default_rng(4)
    big = C.iac_chance(rng.random((1, 400)), rng.random((1, 1, 400)), np.ones((1, 400), bool))
    assert big.values[0, 0] == pytest.approx(0.5, abs=1e-12)
    # undefined where the p-value is
    assert np.isnan(C.iac_chance(q, q[None], ~mask).values[0, 0])


@pytest.mark.parametrize("n, changed, seed", [
    (10, 2, 0),    # zeros, few pairs (SciPy >= 1.13: permutation p-values)
    (9, 3, 1),
    (7, 7, 2),     # no zeros, no ties: SciPy's exact test
    (20, 5, 3),    # zeros, > 13 pairs (asymptotic)
    (60, 7, 4),    # > 50 pairs (asymptotic)
    (200, 8, 5),   # mostly tied, like a binary metric that rarely changes
])
def test_iac_chance_equals_the_sign_flip_null_by_brute_force(n, changed, seed):
    rng = np.random.default_rng(seed)
    if changed == n:  # continuous scores
        q_star, q_hat = rng.random(n), rng.random(n)
    else:
        q_star = rng.integers(0, 3, n).astype(float)  # ties among the scores too
        q_hat = q_star.copy()
        idx = rng.choice(n, changed, replace=False)
        q_hat[idx] = rng.integers(0, 3, changed) + rng.choice([-0.5, 0.5], changed)
    got = C.iac_chance(q_star[None], q_hat[None, None], np.ones((1, n), bool)).values[0, 0]
    assert got == pytest.approx(_sign_flip_mean_p(q_star, q_hat), abs=1e-12)
    if n >= 60:
        assert got > 0.6  # the zero differences push E[p] far above 0.5


def test_iac_chance_normal_approximation_is_close_to_the_exact_null(monkeypatch):
    rng = np.random.default_rng(6)
    n, changed = 1024, 60
    q_star = np.zeros(n)
    q_hat = q_star.copy()
    q_hat[rng.choice(n, changed, replace=False)] = rng.normal(0, 1, changed)
    args = (q_star[None], q_hat[None, None], np.ones((1, n), bool))
    approx = C.iac_chance(*args).values[0, 0]  # 60 pairs x ranks ~1,000: over the budget
    monkeypatch.setattr(C, "_EXACT_NULL_BUDGET", 10**9)
    exact = C.iac_chance(*args).values[0, 0]
    assert approx != exact and approx == pytest.approx(exact, abs=1e-3)
    assert exact > 0.7


# --------------------------------------------------------------------------- aggregation
def _block(q_star, q_hat_by_test, masks_by_test, higher_is_better=True, tests=None):
    tests = tests or [ModelPerturbationTest("Resilience", std=0.01),
                      ModelPerturbationTest("Adversary", std=1.0)]
    i_, k_ = next(iter(masks_by_test.values())).shape[:2]
    rec = MetricRecord(name="m", family="f", higher_is_better=higher_is_better,
                       description="m", q_star=q_star, q_hat=q_hat_by_test,
                       applicable={t.name: (True, "") for t in tests})
    return RunBlock(dataset="d", model="net", tests=tests, methods=["a", "b"], iterations=i_,
                    nr_perturbations=k_, y_pred=np.zeros(q_star.shape[1], int), y_true=None,
                    masks=masks_by_test,
                    y_pred_perturbed={t: np.zeros(m.shape, int) for t, m in masks_by_test.items()},
                    metrics={"m": rec})


def test_aggregation_matches_the_definitions():
    rng = np.random.default_rng(11)
    n, i_, k_ = 20, 3, 2
    q_star = rng.random((2, n))
    res_hat = q_star + rng.normal(0, 0.05, (i_, k_, 2, n))
    adv_hat = rng.random((i_, k_, 2, n))
    m_res = rng.random((i_, k_, n)) < 0.9
    m_adv = rng.random((i_, k_, n)) < 0.5
    block = _block(q_star, {"Model Resilience Test": res_hat, "Model Adversary Test": adv_hat},
                   {"Model Resilience Test": m_res, "Model Adversary Test": m_adv})
    s = MetaEvaluationResult([block]).summary()
    row = s[s["space"] == "Model"].iloc[0]
    per_t = {c: [] for c in C.CRITERIA}
    chance_t = {c: [] for c in C.CRITERIA}
    for t in range(i_):
        per_t["IAC_NR"].append(C.iac_pvalues(q_star, res_hat[t], m_res[t]).values.mean())
        per_t["IAC_AR"].append((1 - C.iac_pvalues(q_star, adv_hat[t], m_adv[t]).values).mean())
        per_t["IEC_NR"].append(C.iec_nr(q_star, res_hat[t], m_res[t]).values.mean())
        per_t["IEC_AR"].append(C.iec_ar(q_star, adv_hat[t], m_adv[t],
                                        higher_is_better=True).values.mean())
        chance_t["IAC_NR"].append(C.iac_chance(q_star, res_hat[t], m_res[t]).values.mean())
        chance_t["IAC_AR"].append((1 - C.iac_chance(q_star, adv_hat[t], m_adv[t]).values)
                                  .mean())
        chance_t["IEC_NR"].append(C.iec_nr_chance(q_star, res_hat[t], m_res[t]).values.mean())
        chance_t["IEC_AR"].append(C.iec_ar_chance(q_star, adv_hat[t], m_adv[t]).values.mean())
    for c in C.CRITERIA:
        assert row[c] == pytest.approx(np.mean(per_t[c]))
        assert row[f"{c}_std"] == pytest.approx(np.std(per_t[c]))
        assert row[f"chance_{c}"] == pytest.approx(np.mean(chance_t[c]))
    mc_t = np.mean([per_t[c] for c in C.CRITERIA], axis=0)
    assert row["MC"] == pytest.approx(mc_t.mean())
    assert row["MC_std"] == pytest.approx(mc_t.std())
    # continuous scores: no ties, so IEC_NR's chance is 1/L and IEC_AR's 1/2 exactly; IAC's is
    # E[p] of the exact test on 10-20 pairs (a little above 0.5 by its discreteness)
    assert row["chance_IEC_NR"] == 0.5 and row["chance_IEC_AR"] == 0.5
    assert 0.5 <= row["chance_IAC_NR"] < 0.53 and 0.47 < row["chance_IAC_AR"] <= 0.5
    assert row["chance_MC"] == pytest.approx(np.mean([row[f"chance_{c}"] for c in C.CRITERIA]))
    assert row["kept_NR"] == pytest.approx(m_res.mean())
    it = MetaEvaluationResult([block]).to_frame("iteration")
    np.testing.assert_allclose(it["MC"], mc_t)


def test_empty_adversary_masks_are_reported_and_make_mc_undefined():
    q = np.random.default_rng(0).random((2, 8))
    i_, k_ = 2, 2
    hat = np.broadcast_to(q, (i_, k_, 2, 8)).copy()
    block = _block(q, {"Model Resilience Test": hat, "Model Adversary Test": hat},
                   {"Model Resilience Test": np.ones((i_, k_, 8), bool),
                    "Model Adversary Test": np.zeros((i_, k_, 8), bool)})
    s = MetaEvaluationResult([block]).summary()
    row = s[s["space"] == "Model"].iloc[0]
    assert np.isnan(row["IAC_AR"]) and np.isnan(row["IEC_AR"]) and np.isnan(row["MC"])
    assert row["IAC_NR"] == 1.0 and row["kept_AR"] == 0.0
    assert "no prediction changed in 4 of 4" in row["note"]
    lenient = MetaEvaluationResult([block], undefined="ignore").summary()
    assert lenient[lenient["space"] == "Model"].iloc[0]["MC"] == pytest.approx(1.0)
    table = MetaEvaluationResult([block]).table()
    assert table.loc[table["space"] == "Model", "IAC_AR"].iloc[0] == "undefined"


def test_partially_empty_masks_are_left_out_of_the_mean():
    q = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]])
    hat = np.broadcast_to(q, (1, 2, 2, 4)).copy()
    adv = hat.copy()
    adv[0, 0] -= 1.0  # perturbation 0: everything got worse (higher is better)
    m_adv = np.array([[[True, True, False, False], [False, False, False, False]]])
    block = _block(q, {"Model Resilience Test": hat, "Model Adversary Test": adv},
                   {"Model Resilience Test": np.ones((1, 2, 4), bool),
                    "Model Adversary Test": m_adv})
    row = MetaEvaluationResult([block]).summary().iloc[0]
    assert row["IEC_AR"] == 1.0  # the empty perturbation is not a 0
    assert row["undefined"] == 1 + 2  # one IEC value and two IAC values (one per method)


def test_mean_space_is_the_mean_over_spaces_and_na_spaces_are_excluded():
    q = np.random.default_rng(4).random((2, 10))
    hat = np.broadcast_to(q, (1, 1, 2, 10)).copy()
    tests = [ModelPerturbationTest("Resilience", std=0.01),
             ModelPerturbationTest("Adversary", std=1.0),
             InputPerturbationTest("Resilience", 0.01), InputPerturbationTest("Adversary", 1.0)]
    ones = np.ones((1, 1, 10), bool)
    block = _block(q, {t.name: hat for t in tests}, {t.name: ones for t in tests}, tests=tests)
    rec = block.metrics["m"]
    s = MetaEvaluationResult([block]).summary()
    assert s["space"].tolist() == ["Model", "Input", "Mean"]
    assert s.iloc[2]["MC"] == pytest.approx(s.iloc[:2]["MC"].mean())
    rec.applicable["Input Resilience Test"] = (False, "reason")
    s = MetaEvaluationResult([block]).summary()
    assert not s.iloc[1]["applicable"] and np.isnan(s.iloc[1]["MC"])
    assert s.iloc[2]["MC"] == pytest.approx(s.iloc[0]["MC"])
    assert "over Model only" in s.iloc[2]["note"]


def test_summary_reports_tie_aware_chance_levels_of_a_binary_metric():
    """A Pointing-Game-like metric: every method scores 1; the Resilience perturbation changes
    nothing, the Adversary one drops 3 of the 2 x 6 scores to 0."""
    q = np.ones((2, 6))
    adv = q.copy()
    adv[0, [1, 4]] = 0.0
    adv[1, 2] = 0.0
    ones = np.ones((1, 1, 6), bool)
    block = _block(q, {"Model Resilience Test": q[None, None].copy(),
                       "Model Adversary Test": adv[None, None]},
                   {"Model Resilience Test": ones, "Model Adversary Test": ones})
    row = MetaEvaluationResult([block]).summary().iloc[0]
    # NR: nothing changed and everything is tied: perfect criteria, at chance level 1
    assert row["IAC_NR"] == row["chance_IAC_NR"] == 1.0
    assert row["IEC_NR"] == row["chance_IEC_NR"] == 1.0
    # AR: 3 of 12 pairs got worse; under the exchangeable-pairs null each untied pair is worse
    # with probability 1/2 and a tied pair never: 1/2 * 3/12
    assert row["IEC_AR"] == 0.25 and row["chance_IEC_AR"] == 0.125
    want_iac_ar = 1 - np.mean([_sign_flip_mean_p(q[j], adv[j]) for j in range(2)])
    assert row["chance_IAC_AR"] == pytest.approx(want_iac_ar)
    assert row["chance_MC"] == pytest.approx((1 + want_iac_ar + 1 + 0.125) / 4)
    table = MetaEvaluationResult([block]).table()
    assert table.loc[0, "chance_IEC_AR"] == "0.125" and table.loc[0, "chance_IEC_NR"] == "1.000"
