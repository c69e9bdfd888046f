"""Reliability statistics: known answers, directions, ties, NaNs and the one-call report."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

import metaeval as me
from metaeval import reliability as R

NAN = np.nan
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the worked example:
# 4 observers x 12 units, with published alphas nominal .743, ordinal .815, interval .849,
# ratio .797.
KRIPPENDORFF_EXAMPLE = np.array([
    [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
    [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
])


@pytest.mark.parametrize("level, want", [("nominal", 0.743), ("ordinal", 0.815),
                                         ("interval", 0.849), ("ratio", 0.797)])
def test_krippendorff_alpha_reproduces_the_published_example(level, want):
    assert R.krippendorff_alpha(KRIPPENDORFF_EXAMPLE, level) == pytest.approx(want, abs=5e-4)


@pytest.mark.oracle
def test_krippendorff_alpha_matches_the_krippendorff_package():
    path = Path(__file__).resolve().parent.parent / ".oracle" / "krippendorff"
    if str(path) not in sys.path:
        sys.path.append(str(path))
    kr = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(0)
    for _ in range(5):
        d = rng.integers(1, 6, size=(6, 10)).astype(float)
        d[rng.random(d.shape) < 0.25] = NAN
        for level in R.LEVELS:
            assert R.krippendorff_alpha(d, level) == pytest.approx(
                kr.alpha(reliability_data=d, level_of_measurement=level), abs=1e-10)


def test_krippendorff_alpha_edge_cases():
    ranks = np.tile([1.0, 2.0, 3.0], (5, 1))  # every sample ranks the methods alike
    assert R.krippendorff_alpha(ranks, "ordinal") == pytest.approx(1.0)
    assert np.isnan(R.krippendorff_alpha(np.ones((3, 4))))  # no variation at all
    assert np.isnan(R.krippendorff_alpha(np.full((2, 2), NAN)))
    with pytest.raises(ValueError, match="level"):
        R.krippendorff_alpha(ranks, "cardinal")
    with pytest.raises(ValueError, match="raters"):
        R.krippendorff_alpha(np.ones(3))
    # samples that disagree completely give a low alpha
    flip = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]] * 3)
    assert R.krippendorff_alpha(flip, "ordinal") < 0


def test_method_ranks_direction_ties_and_nan():
    s = np.array([[0.9, 0.1, 0.5], [0.2, 0.2, 0.7], [0.1, NAN, 0.3]])
    hi = R.method_ranks(s, True)
    np.testing.assert_allclose(hi[0], [1, 3, 2])
    np.testing.assert_allclose(hi[1], [2.5, 2.5, 1])
    assert np.isnan(hi[2]).all()
    np.testing.assert_allclose(R.method_ranks(s, False)[0], [3, 1, 2])


def test_holm_and_benjamini_hochberg_known_values():
    p = [0.01, 0.04, 0.03, 0.005]
    np.testing.assert_allclose(R.holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(R.benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(R.benjamini_hochberg(p), scipy.stats.false_discovery_control(p))
    with_nan = R.holm([0.01, NAN, 0.04])
    assert np.isnan(with_nan[1]) and with_nan[0] == pytest.approx(0.02)
    assert np.isnan(R.holm([NAN])).all()


def test_mad_ratio_known_value():
    s = np.array([[1.0, 10.0], [2.0, 12.0], [3.0, 14.0]])
    assert R.mad_ratio(s) == pytest.approx(5 / 1.5)
    # pooled: median of all 6 scores is 6.5; |s - 6.5| = 5.5 4.5 3.5 3.5 5.5 7.5 -> 5.0
    assert R.mad_ratio(s, between="pooled") == pytest.approx(5.0 / 1.5)
    assert np.isnan(R.mad_ratio(np.ones((4, 2))))


def test_inter_method_reliability():
    rng = np.random.default_rng(0)
    base = rng.random(30)
    s = np.stack([base, base * 2 + 1, base ** 3], axis=1)  # the sample decides everything
    assert R.inter_method_reliability(s) == pytest.approx(1.0)
    assert abs(R.inter_method_reliability(rng.random((200, 3)))) < 0.2


def test_wilcoxon_vs_baseline_orientation_and_values():
    rng = np.random.default_rng(1)
    base = rng.random(40)
    good = base + 0.5 + rng.normal(0, 0.05, 40)
    s = np.stack([good, base, base + rng.normal(0, 0.01, 40)], axis=1)
    t = R.wilcoxon_vs_baseline(s, ["good", "Random", "same"], "Random", True).set_index("method")
    assert t.loc["good", "median_diff"] > 0 and t.loc["good", "cles"] == 1.0
    assert t.loc["good", "p"] == pytest.approx(scipy.stats.wilcoxon(good - base)[1])
    lower = R.wilcoxon_vs_baseline(s, ["good", "Random", "same"], "Random", False)
    assert lower.set_index("method").loc["good", "median_diff"] < 0  # worse when lower wins
    equal = R.wilcoxon_vs_baseline(np.stack([base, base], 1), ["a", "Random"], "Random", True)
    assert equal["p"].iloc[0] == 1.0 and equal["cles"].iloc[0] == 0.5
    with pytest.raises(ValueError, match="Baseline"):
        R.wilcoxon_vs_baseline(s, ["a", "b", "c"], "Random", True)


def test_bootstrap_rank_stability():
    rng = np.random.default_rng(2)
    s = np.stack([rng.normal(5, 0.1, 50), rng.normal(0, 0.1, 50), rng.normal(-5, 0.1, 50)], 1)
    b = R.bootstrap_rank_stability(s, ["a", "b", "c"], True, n_boot=200, seed=0)
    assert b["winner_stability"] == 1.0
    np.testing.assert_allclose(b["tau"], 1.0)
    assert b["rank_probabilities"].loc["a", "P(rank=1)"] == 1.0
    assert b["mean_rank"].tolist() == [1.0, 2.0, 3.0]
    flipped = R.bootstrap_rank_stability(s, ["a", "b", "c"], False, n_boot=50, seed=0)
    assert flipped["mean_rank"].tolist() == [3.0, 2.0, 1.0]
    noisy = rng.normal(0, 1, (20, 3))
    b1 = R.bootstrap_rank_stability(noisy, ["a", "b", "c"], True, n_boot=100, seed=7)
    b2 = R.bootstrap_rank_stability(noisy, ["a", "b", "c"], True, n_boot=100, seed=7)
    np.testing.assert_array_equal(b1["tau"], b2["tau"])
    assert b1["tau"].mean() < 1.0


def test_rank_agreement_and_cronbach():
    rng = np.random.default_rng(3)
    a = rng.random((25, 4))
    out = R.rank_agreement({"a": a, "neg": -a, "rev": a}, {"a": True, "neg": False,
                                                         "rev": False})
    assert out["kendall"].loc["a", "neg"] == pytest.approx(1.0)
    assert out["spearman"].loc["a", "neg"] == pytest.approx(1.0)
    assert out["kendall"].loc["a", "rev"] == pytest.approx(-1.0)
    assert out["leaderboard_kendall"].loc["a", "neg"] == pytest.approx(1.0)
    x = rng.random(40)
    assert R.cronbach_alpha(np.stack([x, x, x], 1)) == pytest.approx(1.0)
    assert R.cronbach_alpha(rng.random((400, 3))) < 0.3


def _frame(rng, n=30):
    methods = ["Saliency", "IG", "Random"]
    rows = []
    means = {"Saliency": 0.8, "IG": 0.6, "Random": 0.2}
    for metric, sign in (("Good", 1.0), ("GoodLower", -1.0)):
        for m in methods:
            vals = sign * (means[m] + rng.normal(0, 0.05, n))
            rows.append(pd.DataFrame({"metric": metric, "method": m, "sample": np.arange(n),
                                      "score": vals}))
    noise = {m: rng.random(n) for m in methods}
    for m in methods:
        rows.append(pd.DataFrame({"metric": "Noise", "method": m, "sample": np.arange(n),
                                  "score": noise[m]}))
    return pd.concat(rows, ignore_index=True)


def test_reliability_report_from_a_tidy_frame():
    rng = np.random.default_rng(4)
    frame = _frame(rng)
    rep = me.reliability_report(frame, higher_is_better={"Good": True, "GoodLower": False,
                                                         "Noise": True}, n_boot=200)
    lb = rep.leaderboard.set_index(["metric", "method"])
    for metric in ("Good", "GoodLower"):
        assert lb.loc[(metric, "Saliency"), "rank"] == 1.0
        assert lb.loc[(metric, "Random"), "rank"] == 3.0
    assert lb.loc[("Good", "Saliency"), "ci_lo"] < 0.8 < lb.loc[("Good", "Saliency"), "ci_hi"]
    rel = rep.reliability.set_index("metric")
    assert rel.loc["Good", "alpha_ordinal"] > 0.8 and rel.loc["Good", "alpha_reading"] == "reliable"
    assert rel.loc["Noise", "alpha_ordinal"] < 0.3
    assert rel.loc["Good", "mad_ratio"] > rel.loc["Noise", "mad_ratio"]
    assert rel.loc["Good", "winner_stability"] == 1.0
    assert rel.loc["Good", "n_better_than_baseline"] == 2
    sig = rep.significance
    assert (sig["p_holm"] >= sig["p"] - 1e-15).all() and (sig["p_bh"] >= sig["p"] - 1e-15).all()
    good = sig[sig["metric"] == "GoodLower"]
    assert good["better"].all()
    agr = rep.agreement
    assert agr["kendall"].loc["Good", "GoodLower"] == pytest.approx(1.0)
    assert "internal_consistency" in agr
    assert set(rep.rank_probabilities["metric"]) == {"Good", "GoodLower", "Noise"}
    assert "## Leaderboard" in rep.to_markdown()
    all_scope = me.reliability_report(frame, higher_is_better={"Good": True,
                                                               "GoodLower": False,
                                                               "Noise": True},
                                      n_boot=50, correction_scope="all")
    assert len(all_scope.significance) == 6


def test_reliability_report_inputs_and_directions():
    rng = np.random.default_rng(5)
    arr = rng.random((20, 3))
    rep = me.reliability_report({"Sparseness": arr}, methods=["a", "b", "Random"], n_boot=20)
    assert rep.reliability["higher_is_better"].iloc[0]  # from the evalkit registry
    rep2 = me.reliability_report({"PixelFlipping": {"a": arr[:, 0], "b": arr[:, 1]}},
                                 n_boot=20, baseline=None)
    assert not rep2.leaderboard["higher_is_better"].iloc[0]
    assert rep2.config["baseline_present"] is False and rep2.significance.empty

    class Results:  # duck-typed evaluation results
        def __init__(self):
            self.higher_is_better = {"Custom": False}

        def to_frame(self):
            return pd.DataFrame({"metric": "Custom", "method": np.repeat(["a", "b"], 10),
                                 "sample": np.tile(np.arange(10), 2),
                                 "score": np.r_[np.zeros(10), np.ones(10)]})

    rep3 = me.reliability_report(Results(), n_boot=20)
    assert rep3.leaderboard.set_index("method").loc["a", "rank"] == 1.0
    with pytest.raises(ValueError, match="direction"):
        me.reliability_report({"Unknown": arr}, methods=["a", "b", "c"])
    with pytest.raises(ValueError, match="methods"):
        me.reliability_report({"Sparseness": arr})
    bad = _frame(rng)
    with pytest.raises(ValueError, match="Duplicate"):
        me.reliability_report(pd.concat([bad, bad.iloc[:1]]), higher_is_better=True)
    with pytest.raises(ValueError, match="columns"):
        me.reliability_report(bad.drop(columns="sample"), higher_is_better=True)


def test_reliability_report_handles_nan_scores():
    rng = np.random.default_rng(6)
    arr = rng.random((15, 3)) + np.array([1.0, 0.5, 0.0])
    arr[2, 1] = NAN
    rep = me.reliability_report({"Sparseness": arr}, methods=["a", "b", "Random"], n_boot=30)
    assert rep.reliability["n_samples"].iloc[0] == 14
    lb = rep.leaderboard.set_index("method")
    assert lb.loc["b", "n"] == 14 and lb.loc["a", "n"] == 15


def test_reliability_report_accepts_evalkit_results():
    import evalkit as ek

    rng = np.random.default_rng(9)
    scores = {m: {"PixelFlipping": rng.random(25) + shift, "Sparseness": rng.random(25) + shift}
              for m, shift in (("Saliency", 0.0), ("IG", 0.5), ("Random", 1.0))}
    results = ek.Results.from_scores(scores, higher_is_better={"PixelFlipping": False,
                                                               "Sparseness": True})
    rep = me.reliability_report(results, n_boot=50)
    lb = rep.leaderboard.set_index(["metric", "method"])
    assert lb.loc[("PixelFlipping", "Saliency"), "rank"] == 1.0  # lower is better
    assert lb.loc[("Sparseness", "Random"), "rank"] == 1.0
    assert set(rep.significance["metric"]) == {"PixelFlipping", "Sparseness"}
