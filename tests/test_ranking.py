"""The one tie rule of evalkit.ranking: average ranks, direction-aware, NaN not ranked; tie
blocks and place shares derived from it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata

from evalkit.ranking import place_shares, rank_methods, tie_blocks


def test_average_ranks_known_values():
    np.testing.assert_array_equal(rank_methods([0.1, 0.9, 0.5], True), [3, 1, 2])
    np.testing.assert_array_equal(rank_methods([0.1, 0.9, 0.5], False), [1, 3, 2])
    np.testing.assert_array_equal(rank_methods([2.0, 1.0, 2.0, 0.0], True), [1.5, 3, 1.5, 4])
    np.testing.assert_array_equal(rank_methods([5.0, 5.0, 5.0], False), [2, 2, 2])


def test_nan_is_not_ranked_and_inf_is_a_value():
    r = rank_methods([0.3, np.nan, 0.7, np.inf], True)
    np.testing.assert_array_equal(r[[0, 2, 3]], [3, 2, 1])
    assert np.isnan(r[1])
    assert np.isnan(rank_methods([np.nan, np.nan], True)).all()


def test_axis():
    s = np.array([[1.0, 5.0, 3.0], [2.0, 4.0, 3.0]])  # 2 methods x 3 samples
    np.testing.assert_array_equal(rank_methods(s, True), [[2, 1, 1.5], [1, 2, 1.5]])
    np.testing.assert_array_equal(rank_methods(s, True, axis=1), [[3, 1, 2], [3, 1, 2]])


def test_tie_blocks_are_the_places_a_tie_occupies():
    first, last = tie_blocks([2.0, 1.0, 2.0, 0.0, 2.0], True)
    np.testing.assert_array_equal(first, [1, 4, 1, 5, 1])
    np.testing.assert_array_equal(last, [3, 4, 3, 5, 3])
    first, last = tie_blocks([[1.0, np.nan, 1.0], [3.0, 2.0, 1.0]], False, axis=-1)
    np.testing.assert_array_equal(first[0, [0, 2]], [1, 1])
    np.testing.assert_array_equal(last[0, [0, 2]], [2, 2])
    assert np.isnan(first[0, 1]) and np.isnan(last[0, 1])
    np.testing.assert_array_equal(first[1], [3, 2, 1])
    # along axis 0 (methods in rows) as rank_methods
    f0, l0 = tie_blocks(np.array([[1.0, 4.0], [1.0, 2.0], [0.0, 2.0]]), True, axis=0)
    np.testing.assert_array_equal(f0, [[1, 1], [1, 2], [3, 2]])
    np.testing.assert_array_equal(l0, [[2, 1], [2, 3], [3, 3]])


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_place_shares_agree_with_average_ranks_and_scipys_tie_blocks(higher_is_better):
    """Random scores with many ties: each method's mean place is its average rank, and the
    shares are those of scipy's min/max tie blocks (what rank_frequencies used before it used
    this module), bit for bit."""
    rng = np.random.default_rng(0)
    s = rng.integers(0, 4, size=(200, 6)).astype(float)
    shares = place_shares(s, higher_is_better)
    assert shares.shape == (200, 6, 6)
    np.testing.assert_array_equal(shares.sum(-1), 1.0)  # one place per method
    np.testing.assert_allclose(shares.sum(-2), 1.0)  # one method per place
    # (1/3 + 1/3 + 1/3 rounds: equal up to the last bit)
    np.testing.assert_allclose(shares @ np.arange(1, 7),
                               rank_methods(s, higher_is_better, axis=-1), rtol=1e-15)
    key = -s if higher_is_better else s
    lo = rankdata(key, axis=1, method="min")
    hi = rankdata(key, axis=1, method="max")
    places = np.arange(1, 7)
    inside = (places >= lo[..., None]) & (places <= hi[..., None])
    np.testing.assert_array_equal(shares, inside / (hi - lo + 1)[..., None])


def test_place_shares_of_a_nan_score_are_zero():
    shares = place_shares([[1.0, np.nan, 2.0]], True)
    np.testing.assert_array_equal(shares[0], [[0, 1, 0], [0, 0, 0], [1, 0, 0]])
