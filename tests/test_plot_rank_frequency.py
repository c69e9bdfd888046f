"""Rank frequencies across settings and their stacked-bar plot (the parameter-sensitivity
figure of the Quantus tutorial)."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
import pytest

from evalkit.plotting import plot_rank_frequency, rank_frequencies

matplotlib.use("Agg")

# four settings (rows) x three methods; the last row ties A and B for first place
SCORES = pd.DataFrame({"A": [3.0, 3.0, 1.0, 2.0], "B": [2.0, 1.0, 2.0, 2.0],
                       "C": [1.0, 2.0, 3.0, 0.0]})
# by hand: A is 1st in rows 0, 1 and half of row 3, 2nd in half of row 3, 3rd in row 2 ...
EXPECTED = pd.DataFrame([[2.5, 0.5, 1.0], [0.5, 2.5, 1.0], [1.0, 1.0, 2.0]],
                        index=["A", "B", "C"], columns=[1, 2, 3]) / 4


def test_known_answer_with_a_tie():
    freq = rank_frequencies(SCORES)
    np.testing.assert_allclose(freq.to_numpy(), EXPECTED.to_numpy())
    assert list(freq.index) == ["A", "B", "C"]
    assert list(freq.columns) == [1, 2, 3]
    assert freq.attrs == {"n_settings": 4, "n_dropped": 0}
    # each method's shares and each rank's shares sum to one (one place per method per row)
    np.testing.assert_allclose(freq.sum(axis=1), 1.0)
    np.testing.assert_allclose(freq.sum(axis=0), 1.0)


def test_direction():
    lower = rank_frequencies(SCORES, higher_is_better=False)
    higher_of_negated = rank_frequencies(-SCORES)
    pd.testing.assert_frame_equal(lower, higher_of_negated)
    # A, best in most rows when higher is better, is mostly last when lower is better
    assert lower.loc["A", 3] == pytest.approx(2.5 / 4)


def test_all_tied_rows_spread_evenly():
    freq = rank_frequencies(np.ones((5, 4)))
    np.testing.assert_allclose(freq.to_numpy(), 0.25)


def test_nan_rows_are_left_out_and_counted():
    with_nan = pd.concat([SCORES, pd.DataFrame({"A": [np.nan], "B": [9.0], "C": [9.0]})],
                         ignore_index=True)
    freq = rank_frequencies(with_nan)
    np.testing.assert_allclose(freq.to_numpy(), EXPECTED.to_numpy())
    assert freq.attrs == {"n_settings": 4, "n_dropped": 1}
    with pytest.raises(ValueError, match="finite"):
        rank_frequencies(pd.DataFrame({"A": [np.nan], "B": [1.0]}))


def test_row_order_and_input_forms_do_not_matter():
    base = rank_frequencies(SCORES)
    shuffled = rank_frequencies(SCORES.iloc[[2, 0, 3, 1]])
    pd.testing.assert_frame_equal(base, shuffled)
    as_dict = rank_frequencies({k: SCORES[k].to_list() for k in SCORES})
    pd.testing.assert_frame_equal(base, as_dict)
    as_array = rank_frequencies(SCORES.to_numpy())
    np.testing.assert_allclose(as_array.to_numpy(), base.to_numpy())
    assert list(as_array.index) == ["M1", "M2", "M3"]


def test_bad_inputs():
    with pytest.raises(ValueError, match="two methods"):
        rank_frequencies(pd.DataFrame({"A": [1.0, 2.0]}))
    with pytest.raises(ValueError, match="2-D"):
        rank_frequencies(np.zeros(3))
    with pytest.raises(ValueError, match="same number"):
        rank_frequencies({"A": [1.0, 2.0], "B": [1.0]})


def test_plot_stacks_the_frequencies(tmp_path):
    fig = plot_rank_frequency(SCORES)
    ax = fig.axes[0]
    # reference methods A', B', C' (labelled A, B, C) first, then the three methods
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["A", "B", "C", "A", "B", "C"]
    # one bar container per rank; bar j of rank r has height 100 * share
    containers = ax.containers
    assert len(containers) == 3
    heights = np.array([[p.get_height() for p in c.patches] for c in containers])  # (rank, bar)
    np.testing.assert_allclose(heights[:, :3], 100 * np.eye(3))
    np.testing.assert_allclose(heights[:, 3:], 100 * EXPECTED.to_numpy().T)
    # the segments stack: rank 2 starts where rank 1 ends
    bottoms = np.array([p.get_y() for p in containers[1].patches])
    np.testing.assert_allclose(bottoms, heights[0])
    assert "4 settings" in ax.get_xlabel()
    fig.savefig(tmp_path / "rank_frequency.png", dpi=60)
    assert (tmp_path / "rank_frequency.png").stat().st_size > 5_000


def test_plot_without_reference():
    fig = plot_rank_frequency(SCORES, reference=False, title="FaithfulnessCorrelation")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B", "C"]
    assert fig.get_suptitle() == "FaithfulnessCorrelation"
