"""Leaderboards: direction-aware ranks, both aggregation orders, rescaling, bootstrap intervals,
families, exports, and the Quantus tutorial's normalise-and-rank table done right."""

from __future__ import annotations

import io
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from evalkit import EvalkitWarning
from evalkit.leaderboard import Leaderboard, rank_methods
from evalkit.results import CellError, Results


def _results(scores, hib=True, families=None):
    return Results.from_scores(scores, higher_is_better=hib, families=families)


# ---------------------------------------------------------------------- ranks
def test_rank_methods_known_values():
    np.testing.assert_array_equal(rank_methods([0.1, 0.9, 0.5], True), [3, 1, 2])
    np.testing.assert_array_equal(rank_methods([0.1, 0.9, 0.5], False), [1, 3, 2])
    np.testing.assert_array_equal(rank_methods([2.0, 1.0, 2.0, 0.0], True), [1.5, 3, 1.5, 4])
    r = rank_methods([0.3, np.nan, 0.7], True)
    np.testing.assert_array_equal(r[[0, 2]], [2, 1])
    assert np.isnan(r[1])
    # per sample (axis 0 = methods)
    s = np.array([[1.0, 5.0], [2.0, 4.0]])
    np.testing.assert_array_equal(rank_methods(s, True), [[2, 1], [1, 2]])


def test_the_two_aggregation_orders_differ_on_a_known_case():
    # A wins three samples by a little, B wins one by a lot (higher is better)
    r = _results({"A": {"m": [2.0, 2.0, 2.0, 0.0]}, "B": {"m": [1.0, 1.0, 1.0, 10.0]}})
    rta = Leaderboard(r, mode="rank_then_aggregate", n_boot=0)
    atr = Leaderboard(r, mode="aggregate_then_rank", n_boot=0)
    assert rta.ranks.loc["A", "m"] == pytest.approx(1.25)
    assert rta.ranks.loc["B", "m"] == pytest.approx(1.75)
    assert list(rta.table.index) == ["A", "B"]
    assert atr.ranks.loc["A", "m"] == 2 and atr.ranks.loc["B", "m"] == 1
    assert list(atr.table.index) == ["B", "A"]
    assert rta.scores.loc["A", "m"] == pytest.approx(1.5)
    assert rta.scores.loc["B", "m"] == pytest.approx(3.25)


def test_direction_is_respected():
    scores = {"A": {"err": [0.1, 0.2]}, "B": {"err": [0.5, 0.6]}}
    low = Leaderboard(_results(scores, hib={"err": False}), n_boot=0)
    high = Leaderboard(_results(scores, hib={"err": True}), n_boot=0)
    assert low.ranks.loc["A", "err"] == 1 and high.ranks.loc["A", "err"] == 2
    assert low.table.index[0] == "A" and high.table.index[0] == "B"


def test_complete_cases_and_unranked_methods():
    nan = np.nan
    r = _results({"A": {"m": [1.0, 2.0, nan, 4.0]}, "B": {"m": [2.0, 1.0, 9.0, 3.0]},
                  "C": {"m": [nan, nan, nan, nan]}})
    board = Leaderboard(r, mode="aggregate_then_rank", n_boot=0, incomplete="common")
    long = board.long.set_index("method")
    assert (long["n_samples"] == 3).all()  # sample 2 dropped for every method; C not ranked
    assert long.loc["B", "score"] == pytest.approx(2.0)  # mean of 2, 1, 3 (not 3.75)
    assert long.loc["A", "score"] == pytest.approx(7 / 3)
    assert not long.loc["C", "ranked"] and np.isnan(long.loc["C", "rank"])
    assert board.ranks.loc["A", "m"] == 1 and board.ranks.loc["B", "m"] == 2
    assert board.table.index[-1] == "C" and np.isnan(board.table.loc["C", "mean rank"])
    # a method with no mean rank has no position (the rule of evalkit.ranking: NaN is not
    # ranked); it used to get the place after the ranked methods
    assert list(board.table["position"][:2]) == [1, 2]
    assert np.isnan(board.table.loc["C", "position"])


def test_tied_mean_ranks_share_the_average_position():
    """One tie rule for every rank of the table (evalkit.ranking): methods tied on the mean
    rank share the average of their positions (they used to share the first, 1, 1, 3)."""
    r = _results({"A": {"m": [1.0, 0.0]}, "B": {"m": [0.0, 1.0]}, "C": {"m": [-1.0, -1.0]}})
    board = Leaderboard(r, n_boot=0)
    assert board.table.loc["A", "mean rank"] == board.table.loc["B", "mean rank"] == 1.5
    assert list(board.table.index) == ["A", "B", "C"]
    assert list(board.table["position"]) == [1.5, 1.5, 3]


def test_failed_cells_are_not_ranked():
    r = _results({"A": {"m": [1.0, 2.0], "k": [1.0, 1.0]}, "B": {"m": [0.0, 0.0],
                                                               "k": [0.0, 5.0]}})
    r.errors[("B", "k")] = CellError("B", "k", "RuntimeError", "boom")
    board = Leaderboard(r, n_boot=0)
    assert np.isnan(board.ranks.loc["B", "k"]) and board.ranks.loc["A", "k"] == 1
    assert "error" in board.to_markdown()


def test_rescaling_between_baseline_and_best():
    r = _results({"A": {"lo": [0.2], "hi": [0.9]}, "B": {"lo": [0.5], "hi": [0.6]},
                  "Random": {"lo": [0.8], "hi": [0.3]}}, hib={"lo": False, "hi": True})
    board = Leaderboard(r, rescale="Random", n_boot=0)
    np.testing.assert_allclose(board.scores["lo"], [1.0, 0.5, 0.0])
    np.testing.assert_allclose(board.scores["hi"], [1.0, 0.5, 0.0])
    np.testing.assert_allclose(board.table.loc[["A", "B", "Random"], "mean scaled score"],
                               [1.0, 0.5, 0.0])
    # the ranks do not change
    plain = Leaderboard(r, n_boot=0)
    pd.testing.assert_frame_equal(board.ranks, plain.ranks)
    with pytest.raises(ValueError, match="rescale"):
        Leaderboard(r, rescale="Nope")


def test_rescaling_when_the_baseline_is_best_warns_and_says_so():
    r = _results({"A": {"m": [0.2], "k": [0.9]}, "Random": {"m": [0.7], "k": [0.1]}})
    with pytest.warns(EvalkitWarning, match=r"on \['m'\], so these metrics cannot be rescaled"):
        board = Leaderboard(r, rescale="Random", n_boot=0)
    assert board.not_rescalable == ["m"]
    assert board.scores["m"].isna().all()
    np.testing.assert_allclose(board.scores.loc[["A", "Random"], "k"], [1.0, 0.0])
    assert "Not rescalable (Random scores best): m." in board.caption()
    assert Leaderboard(r, n_boot=0).not_rescalable == []


def test_family_and_overall_ranks():
    r = _results(
        {"A": {"m1": [3.0], "m2": [3.0], "g": [1.0]},
         "B": {"m1": [2.0], "m2": [1.0], "g": [3.0]},
         "C": {"m1": [1.0], "m2": [2.0], "g": [2.0]}},
        families={"m1": "F", "m2": "F", "g": "G"})
    board = Leaderboard(r, n_boot=0)
    fam = board.families.set_index(["method", "family"])["rank"]
    assert fam["A", "F"] == 1 and fam["B", "F"] == 2.5 and fam["C", "F"] == 2.5
    assert fam["B", "G"] == 1 and fam["C", "G"] == 2 and fam["A", "G"] == 3
    # the mean rank weighs each family the same (not each metric)
    np.testing.assert_allclose(board.table.loc[["A", "B", "C"], "mean rank"],
                               [2.0, 1.75, 2.25])
    assert list(board.table.index) == ["B", "A", "C"]
    assert list(board.table["position"]) == [1, 2, 3]


# ---------------------------------------------------------------------- bootstrap
def test_bootstrap_intervals_match_a_direct_computation():
    rng = np.random.default_rng(0)
    n, n_boot, seed = 6, 50, 11
    scores = {"A": rng.normal(1.0, 1.0, n), "B": rng.normal(0.5, 1.0, n),
              "C": rng.normal(0.0, 1.0, n)}
    r = _results({k: {"m": v} for k, v in scores.items()}, hib={"m": True})
    for mode in ("rank_then_aggregate", "aggregate_then_rank"):
        board = Leaderboard(r, mode=mode, n_boot=n_boot, seed=seed, ci=0.9)
        counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=n_boot)
        s = np.stack([scores[k] for k in "ABC"])
        means, ranks = [], []
        for c in counts:
            idx = np.repeat(np.arange(n), c)
            mean = s[:, idx].mean(1)
            means.append(mean)
            if mode == "rank_then_aggregate":
                ranks.append(rank_methods(s[:, idx], True).mean(1))
            else:
                ranks.append(rank_methods(mean, True))
        means, ranks = np.array(means), np.array(ranks)
        long = board.long.set_index("method").loc[list("ABC")]
        np.testing.assert_allclose(long["score_lo"], np.percentile(means, 5, axis=0))
        np.testing.assert_allclose(long["score_hi"], np.percentile(means, 95, axis=0))
        np.testing.assert_allclose(long["rank_lo"], np.percentile(ranks, 5, axis=0))
        np.testing.assert_allclose(long["rank_hi"], np.percentile(ranks, 95, axis=0))
        np.testing.assert_allclose(long["score"], s.mean(1))
        # one metric, one family: the mean-rank interval is the metric's rank interval
        np.testing.assert_allclose(board.table.loc[list("ABC"), "rank lo"], long["rank_lo"])


def test_bootstrap_is_seeded_and_covers_the_estimate():
    rng = np.random.default_rng(1)
    r = _results({"A": {"m": rng.normal(size=40)}, "B": {"m": rng.normal(0.3, size=40)}})
    b1 = Leaderboard(r, n_boot=300, seed=4)
    b2 = Leaderboard(r, n_boot=300, seed=4)
    b3 = Leaderboard(r, n_boot=300, seed=5)
    pd.testing.assert_frame_equal(b1.long, b2.long)
    assert not np.allclose(b1.long["score_lo"], b3.long["score_lo"])
    long = b1.long
    assert (long["score_lo"] <= long["score"]).all() and (long["score"] <= long["score_hi"]).all()
    assert Leaderboard(r, n_boot=0).long["score_lo"].isna().all()


def test_more_samples_narrow_the_intervals():
    rng = np.random.default_rng(2)

    def width(n):
        r = _results({"A": {"m": rng.normal(size=n)}, "B": {"m": rng.normal(size=n)}})
        long = Leaderboard(r, n_boot=400, seed=0).long
        return float((long["score_hi"] - long["score_lo"]).mean())

    assert width(400) < 0.5 * width(25)


# ---------------------------------------------------------------------- exports
class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.bold = 0, 0

    def handle_starttag(self, tag, attrs):
        self.rows += tag == "tr"
        self.bold += tag == "b"


@pytest.fixture()
def board():
    r = _results({"my_method": {"PF": [0.2, 0.3, 0.25], "Loc": [0.9, 0.8, 0.7],
                                "Loc2": [0.5, 0.6, 0.7]},
                  "Random": {"PF": [0.5, 0.4, 0.45], "Loc": [0.1, 0.3, 0.2],
                             "Loc2": [0.6, 0.7, 0.8]}},
                 hib={"PF": False, "Loc": True, "Loc2": True},
                 families={"PF": "faithfulness", "Loc": "localisation", "Loc2": "localisation"})
    return Leaderboard(r, n_boot=100)


def test_markdown_export(board):
    md = board.to_markdown()
    lines = md.splitlines()
    assert lines[0] == ("| method | PF ↓ | Loc ↑ | Loc2 ↑ | faithfulness | localisation | "
                        "mean rank |")
    assert lines[2] == ("| my_method | **0.250 (1.0, 3/3)** | **0.800 (1.0, 3/3)** | "
                        "0.600 (2.0, 3/3) | **1.0** | **1.5** | **1.25 [1.2, 1.2]** |")
    assert lines[3] == ("| Random | 0.450 (2.0, 3/3) | 0.200 (2.0, 3/3) | **0.700 (1.0, 3/3)** | "
                        "2.0 | **1.5** | 1.75 [1.8, 1.8] |")
    assert "bootstrap CI" in md and "1 = best" in md
    assert "[" not in board.to_markdown(ci=False, caption=False)


def test_latex_export(board):
    tex = board.to_latex(label="tab:lb")
    assert "\\begin{tabular}{lrrrrrr}" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    assert "my\\_method" in tex and "PF $\\downarrow$" in tex and "Loc $\\uparrow$" in tex
    assert "\\textbf{0.250 (1.0, 3/3)}" in tex and "\\label{tab:lb}" in tex
    assert "95\\%" in tex


def test_html_export(board):
    text = board.to_html()
    parser = _Cells()
    parser.feed(text)
    assert parser.rows == 3 and parser.bold >= 4
    assert text.startswith('<table class="evalkit-leaderboard">')
    assert board._repr_html_() == text


def test_csv_export(board, tmp_path):
    frame = pd.read_csv(io.StringIO(board.to_csv()), index_col=0)
    np.testing.assert_allclose(frame.to_numpy(dtype=float), board.table.to_numpy(dtype=float))
    board.to_csv(tmp_path / "lb.csv", long=True)
    long = pd.read_csv(tmp_path / "lb.csv")
    assert {"score_lo", "rank_hi", "n_samples"} <= set(long.columns) and len(long) == 6


def test_family_columns_only_when_they_add_something():
    r = _results({"A": {"m": [1.0], "k": [2.0]}, "B": {"m": [2.0], "k": [1.0]}})
    md = Leaderboard(r, n_boot=0).to_markdown()
    assert md.splitlines()[0] == "| method | m ↑ | k ↑ | mean rank |"
    assert "Family columns" not in md


def test_argument_checks():
    r = _results({"A": {"m": [1.0]}})
    with pytest.raises(ValueError, match="mode"):
        Leaderboard(r, mode="rank")
    with pytest.raises(ValueError, match="n_boot"):
        Leaderboard(r, n_boot=-1)
    with pytest.raises(ValueError, match="ci"):
        Leaderboard(r, ci=1.5)
    with pytest.raises(ValueError, match="Unknown method"):
        Leaderboard(r, methods=["B"])


# ---------------------------------------------------------------------- the Quantus tutorial
# quantus.evaluate results stored in the Quantus tutorial (seeds/004), aggregated by np.mean.
TUTORIAL = {
    "LayerGradCam": {"Robustness": 6.385364405314127, "Faithfulness": 0.012830701450853242,
                     "Localisation": 0.5945537119866623, "Complexity": 0.534340942620482,
                     "Sensitivity": -0.011923145576686991},
    "Saliency": {"Robustness": 0.8709124883015951, "Faithfulness": 0.11204023012353007,
                 "Localisation": 0.5945537119866623, "Complexity": 0.534340942620482,
                 "Sensitivity": 0.10401733999005232},
    "GradientShap": {"Robustness": 1.8177134116490683, "Faithfulness": 0.12337100760315674,
                     "Localisation": 0.5945537119866623, "Complexity": 0.534340942620482,
                     "Sensitivity": 0.03112477971924486},
    "IntegratedGradients": {"Robustness": 1.1781942049662273,
                            "Faithfulness": 0.1820758061666603,
                            "Localisation": 0.5945537119866623,
                            "Complexity": 0.534340942620482,
                            "Sensitivity": 0.017489182288717948},
    "FusionGrad": {"Robustness": 1.395110293229421, "Faithfulness": 0.1478673954202166,
                   "Localisation": 0.5614189583462068, "Complexity": 0.4727508018004431,
                   "Sensitivity": -0.005249520387875365},
    "Random": {"Robustness": 0.7098723664216617, "Faithfulness": 0.13276692371798132,
               "Localisation": 0.5101552561594804, "Complexity": 0.3331452921782692,
               "Sensitivity": -4.37913867605053e-06},
}
# The table the tutorial prints (its ranks: higher = better).
TUTORIAL_TABLE = pd.DataFrame(
    {"Faithfulness": [1.0, 2.0, 3.0, 6.0, 5.0, 4.0], "Localisation": [4.5, 4.5, 4.5, 4.5, 2.0, 1.0],
     "Complexity": [4.5, 4.5, 4.5, 4.5, 2.0, 1.0], "Sensitivity": [3.0, 6.0, 5.0, 4.0, 2.0, 1.0],
     "Robustness": [1.0, 5.0, 2.0, 4.0, 3.0, 6.0]},
    index=list(TUTORIAL))
# The metrics behind the columns and their directions: MaxSensitivity (lower is better),
# FaithfulnessCorrelation, RelevanceRankAccuracy, Sparseness and EfficientMPRT (higher).
DIRECTIONS = {"Robustness": False, "Faithfulness": True, "Localisation": True,
              "Complexity": True, "Sensitivity": True}


def tutorial_ranks(results: dict) -> pd.DataFrame:
    """The tutorial's post-processing, step by step: absolute values of the aggregated scores,
    divide by the column maximum, invert only the column named "Robustness", rank ascending."""
    df = pd.DataFrame.from_dict(results).T.abs()
    normalised = df.loc[:, ~df.columns.isin(["Robustness"])].apply(lambda x: x / x.max())
    normalised["Robustness"] = df["Robustness"].min() / df["Robustness"].values
    return normalised.rank()


def test_tutorial_table_is_reproduced():
    pd.testing.assert_frame_equal(tutorial_ranks(TUTORIAL)[list(TUTORIAL_TABLE.columns)],
                                  TUTORIAL_TABLE)


def test_tutorial_table_with_directions_right():
    r = Results.from_scores(TUTORIAL, higher_is_better=DIRECTIONS)
    ours = Leaderboard(r, mode="aggregate_then_rank", n_boot=0).ranks
    n = len(TUTORIAL)
    flipped = n + 1 - TUTORIAL_TABLE  # the tutorial's "higher = better" ranks as 1 = best
    # where every score is positive and the direction is handled, the two agree ...
    for col in ("Faithfulness", "Localisation", "Complexity", "Robustness"):
        pd.testing.assert_series_equal(ours[col], flipped[col], check_names=False)
    # ... but the tutorial takes abs() of EfficientMPRT's signed scores: LayerGradCam's
    # -0.0119 becomes the third best score, above Random's -0.000004 (really 4th vs 6th)
    expected = pd.Series({"Saliency": 1.0, "GradientShap": 2.0, "IntegratedGradients": 3.0,
                          "Random": 4.0, "FusionGrad": 5.0, "LayerGradCam": 6.0})
    pd.testing.assert_series_equal(ours["Sensitivity"], expected[ours.index], check_names=False)
    assert flipped.loc["LayerGradCam", "Sensitivity"] == 4.0
    assert flipped.loc["Random", "Sensitivity"] == 6.0


def test_tutorial_recipe_fails_on_other_directions():
    """A constructed case: a signed correlation (higher is better) and a lower-is-better
    metric that is not called "Robustness". The tutorial's recipe ranks both backwards."""
    scores = {"good": {"FaithCorr": 0.6, "Entropy": 2.0},
              "flat": {"FaithCorr": 0.05, "Entropy": 3.0},
              "anti": {"FaithCorr": -0.8, "Entropy": 5.0}}
    dirs = {"FaithCorr": True, "Entropy": False}
    tut = len(scores) + 1 - tutorial_ranks({k: {**v, "Robustness": 1.0}
                                            for k, v in scores.items()})
    assert tut.loc["anti", "FaithCorr"] == 1.0  # anti-correlated ranked best
    assert tut.loc["anti", "Entropy"] == 1.0  # the most complex map ranked best
    ours = Leaderboard(Results.from_scores(scores, higher_is_better=dirs), n_boot=0).ranks
    assert list(ours.loc[["good", "flat", "anti"], "FaithCorr"]) == [1.0, 2.0, 3.0]
    assert list(ours.loc[["good", "flat", "anti"], "Entropy"]) == [1.0, 2.0, 3.0]
