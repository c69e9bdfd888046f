"""The row sorts of evalkit.metrics._sorting against torch's stable sort."""

import numpy as np
import pytest
import torch

from evalkit.metrics._sorting import stable_argsort_rows


def _rows(kind: int, n: int, g: int, rng: np.random.Generator) -> np.ndarray:
    if kind == 0:  # distinct values
        return rng.standard_normal((n, g))
    if kind == 1:  # many exact ties
        return rng.integers(-3, 3, (n, g)).astype(np.float64)
    if kind == 2:  # zeros of both signs among distinct values
        a = rng.standard_normal((n, g))
        a[a < 0.3] = 0.0
        a[rng.random((n, g)) < 0.2] *= -0.0
        return a
    if kind == 3:  # infinities and subnormal-sized values
        a = rng.standard_normal((n, g)) * 1e-300
        a[:, ::3] = np.inf
        a[:, 1::5] = -np.inf
        return a
    if kind == 4:  # values a few ulps apart: equal in the packed high bits, not equal
        base = rng.standard_normal((n, 1))
        return base + rng.integers(0, 4, (n, g)) * np.spacing(base)
    return rng.standard_normal((n, g)) * 1e300


@pytest.mark.parametrize("kind", range(6))
@pytest.mark.parametrize("g", [1, 2, 3, 30, 500, 1500])
def test_stable_argsort_rows_is_the_stable_order(kind: int, g: int) -> None:
    rng = np.random.default_rng(1000 * kind + g)
    a = _rows(kind, 9, g, rng)
    for keys in (a, -a):
        expected = torch.sort(torch.from_numpy(keys), dim=1, stable=True).indices.numpy()
        got = stable_argsort_rows(np.ascontiguousarray(keys))
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, expected)


def test_stable_argsort_rows_wide_rows_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # more columns than the packed index bits may hold: NumPy's stable argsort
    import evalkit.metrics._sorting as sorting

    monkeypatch.setattr(sorting, "_MAX_INDEX_BITS", 4)
    keys = np.random.default_rng(0).integers(0, 5, (3, 40)).astype(np.float64)
    expected = np.argsort(keys, axis=1, kind="stable")
    np.testing.assert_array_equal(stable_argsort_rows(keys), expected)
