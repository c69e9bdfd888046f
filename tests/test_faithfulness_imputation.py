"""ROAD's noisy linear imputation (evalkit.perturb.imputation): exact neighbour weights,
hand-computable solutions, every solver route, noise placement and seeding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit import _rng
from evalkit.perturb import imputation as imp
from evalkit.perturb.imputation import NEIGHBOUR_WEIGHTS, NoisyLinearImputer, linear_imputation


def test_neighbour_weights_are_the_papers():
    """1/6 for the 4 orthogonal and 1/12 for the 4 diagonal neighbours; they sum to 1."""
    w = {(dr, dc): wt for dr, dc, wt in NEIGHBOUR_WEIGHTS}
    assert len(w) == 8 and (0, 0) not in w
    for (dr, dc), wt in w.items():
        assert wt == pytest.approx(1 / 6 if abs(dr) + abs(dc) == 1 else 1 / 12)
    assert sum(w.values()) == pytest.approx(1.0)


def test_single_pixel_known_answers():
    g = torch.Generator().manual_seed(0)
    x = torch.rand((1, 2, 4, 5), generator=g, dtype=torch.float64)
    # interior pixel: the weighted mean of its 8 neighbours
    m = torch.zeros((1, 4, 5), dtype=torch.bool)
    m[0, 1, 2] = True
    out = linear_imputation(x, m)
    xi = x[0]
    want = (xi[:, 0, 2] + xi[:, 2, 2] + xi[:, 1, 1] + xi[:, 1, 3]) / 6 + (
        xi[:, 0, 1] + xi[:, 0, 3] + xi[:, 2, 1] + xi[:, 2, 3]) / 12
    torch.testing.assert_close(out[0, :, 1, 2], want, rtol=1e-12, atol=1e-12)
    # corner pixel: its 3 in-bound neighbours, weights renormalised by their sum 5/12
    m = torch.zeros((1, 4, 5), dtype=torch.bool)
    m[0, 0, 0] = True
    out2 = linear_imputation(x, m)
    want2 = (2 * xi[:, 0, 1] + 2 * xi[:, 1, 0] + xi[:, 1, 1]) / 5
    torch.testing.assert_close(out2[0, :, 0, 0], want2, rtol=1e-12, atol=1e-12)
    # everything else untouched
    keep = ~m[0]
    torch.testing.assert_close(out2[0][:, keep], x[0][:, keep], rtol=0, atol=0)


def _plane(h, w, c=3):
    r = torch.arange(h, dtype=torch.float64).reshape(h, 1)
    q = torch.arange(w, dtype=torch.float64).reshape(1, w)
    return torch.stack([0.3 * r - 0.2 * q + k for k in range(c)]).unsqueeze(0)


@pytest.mark.parametrize("route", ["banded", "sparse", "banded_no_threadpoolctl"])
@pytest.mark.parametrize("shape", [(9, 9), (12, 7), (7, 40)])
def test_a_plane_is_reproduced_exactly(route, shape, monkeypatch):
    """Removed interior pixels of a linear image: the weighted neighbour mean of a plane is the
    plane, so the unique solution is the plane itself (any mask that keeps the border)."""
    if route == "sparse":
        monkeypatch.setattr(imp, "BAND_LIMIT", 0)
    if route == "banded_no_threadpoolctl":
        monkeypatch.setattr(imp, "_CONTROLLER", False)
        monkeypatch.setattr(imp, "BLOCKED_KD", 2)  # route the wide bands to the sparse LU
    h, w = shape
    x = _plane(h, w).expand(5, -1, -1, -1).clone()
    g = torch.Generator().manual_seed(1)
    m = torch.rand((5, h, w), generator=g) < torch.tensor([0.1, 0.4, 0.7, 0.95, 1.0]).reshape(
        5, 1, 1)
    m[:, 0, :] = m[:, -1, :] = m[:, :, 0] = m[:, :, -1] = False
    noisy = x + 5 * m.unsqueeze(1)  # the removed values must not matter
    out = linear_imputation(noisy, m)
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)


def test_routes_agree_on_random_images(monkeypatch):
    g = torch.Generator().manual_seed(2)
    x = torch.rand((6, 3, 10, 13), generator=g, dtype=torch.float64)
    m = torch.rand((6, 10, 13), generator=g) < torch.linspace(0.05, 0.99, 6).reshape(6, 1, 1)
    banded = linear_imputation(x, m)
    monkeypatch.setattr(imp, "BAND_LIMIT", 0)
    sparse = linear_imputation(x, m)
    torch.testing.assert_close(banded, sparse, rtol=1e-10, atol=1e-12)
    # one image at a time gives the same as the batch (groups of images in one band solve)
    monkeypatch.setattr(imp, "BAND_LIMIT", 64)
    single = torch.cat([linear_imputation(x[i : i + 1], m[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(banded, single, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("shape", [(6, 40), (40, 6)])
def test_band_runs_along_the_shorter_side(monkeypatch, shape):
    # the band solve's cost grows with the square of its width: rows must run along the
    # shorter side (width <= that side + 1), whichever axis it is
    from scipy.linalg import lapack

    widths = []
    real = lapack.dpbsv

    def spy(ab, b, **kw):
        widths.append(ab.shape[0] - 1)
        return real(ab, b, **kw)

    monkeypatch.setattr(lapack, "dpbsv", spy)
    h, w = shape
    g = torch.Generator().manual_seed(4)
    x = torch.rand((2, 2, h, w), generator=g, dtype=torch.float64)
    m = torch.rand((2, h, w), generator=g) < 0.9
    out = linear_imputation(x, m)
    assert widths and max(widths) <= min(h, w) + 1
    monkeypatch.setattr(imp, "BAND_LIMIT", 0)  # the sparse LU has no band: same answer
    torch.testing.assert_close(out, linear_imputation(x, m), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 9), (9, 1), (1, 2), (2, 1)])
def test_one_pixel_wide_images(monkeypatch, shape):
    # a line of pixels: the gaps are linear interpolations of their ends (weight 1/6 each)
    h, w = shape
    x = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w) ** 2
    m = torch.zeros((1, h, w), dtype=torch.bool)
    m.view(-1)[1 : h * w - 1] = True
    m.view(-1)[0] = h * w == 2  # 2 pixels: remove the first, copy of the second
    out = linear_imputation(x, m)
    line = x.reshape(-1)
    if h * w == 2:
        expected = torch.stack([line[1], line[1]])
    else:
        expected = torch.linspace(float(line[0]), float(line[-1]), h * w, dtype=torch.float64)
    torch.testing.assert_close(out.reshape(-1), expected, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(imp, "BAND_LIMIT", 0)
    torch.testing.assert_close(linear_imputation(x, m), out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1), (1, 30), (30, 1), (5, 7), (17, 40), (64, 64)])
def test_nested_dissection_order_is_a_separating_permutation(shape):
    # the sparse route's elimination order: every pixel once, and the top separator (the middle
    # line across the longer side) comes after everything it separates
    h, w = shape
    rank = imp._nd_rank(h, w)
    assert sorted(rank.tolist()) == list(range(h * w))
    assert not rank.flags.writeable  # shared through the cache
    grid = rank.reshape(h, w)
    if h * w > imp.ND_LEAF_PIXELS:
        line = grid[h // 2] if h >= w else grid[:, w // 2]
        assert line.min() > np.delete(grid, h // 2 if h >= w else w // 2,
                                      axis=0 if h >= w else 1).max()


def test_all_removed_and_nothing_removed():
    x = torch.rand((2, 1, 5, 5), dtype=torch.float64)
    m = torch.zeros((2, 5, 5), dtype=torch.bool)
    m[1] = True
    out = linear_imputation(x, m)
    torch.testing.assert_close(out[0], x[0], rtol=0, atol=0)
    assert torch.equal(out[1], torch.zeros_like(out[1]))  # no boundary values: 0


def test_noise_only_on_imputed_pixels_seeded_per_key():
    g = torch.Generator().manual_seed(3)
    x = torch.rand((3, 3, 16, 16), generator=g, dtype=torch.float64)
    m = (torch.rand((3, 1, 16, 16), generator=g) < 0.5)
    keys = _rng.sample_keys(x, 7)
    clean = NoisyLinearImputer(0.0).fill(x, m)
    noisy = NoisyLinearImputer(0.2).fill(x, m, keys=keys)
    diff = noisy - clean
    mm = m.expand_as(x)
    assert torch.equal(diff[~mm], torch.zeros_like(diff[~mm]))
    assert abs(float(diff[mm].std()) - 0.2) < 0.02 and abs(float(diff[mm].mean())) < 0.02
    # a row's noise depends on its key alone, not on the batch
    alone = NoisyLinearImputer(0.2).fill(x[1:2], m[1:2], keys=keys[1:2])
    torch.testing.assert_close(alone, noisy[1:2], rtol=0, atol=1e-15)
    again = NoisyLinearImputer(0.2).fill(x, m, keys=keys)
    assert torch.equal(again, noisy)
    with pytest.raises(ValueError, match="keys"):
        NoisyLinearImputer(0.2).fill(x, m)


def test_channel_specific_masks_are_solved_per_channel():
    g = torch.Generator().manual_seed(4)
    x = torch.rand((2, 2, 6, 6), generator=g, dtype=torch.float64)
    m = torch.rand((2, 2, 6, 6), generator=g) < 0.4
    out = NoisyLinearImputer(0.0).fill(x, m)
    for c in range(2):
        ref = linear_imputation(x[:, c : c + 1], m[:, c])
        torch.testing.assert_close(out[:, c : c + 1], ref, rtol=1e-12, atol=1e-12)


def test_input_validation():
    with pytest.raises(ValueError, match="noise"):
        NoisyLinearImputer(-1.0)
    with pytest.raises(ValueError, match="images"):
        NoisyLinearImputer(0.0).fill(torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        linear_imputation(torch.zeros(1, 1, 4, 4), torch.zeros(1, 3, 4, dtype=torch.bool))


def test_float32_inputs_keep_their_dtype_and_device():
    x = torch.rand((2, 3, 8, 8))
    m = torch.rand((2, 8, 8)) < 0.3
    out = linear_imputation(x, m)
    assert out.dtype == torch.float32 and out.device == x.device
    np.testing.assert_allclose(out.numpy(), linear_imputation(x.double(), m).numpy(), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_series_numpy_and_torch_routes_agree_bit_for_bit(dtype):
    """The series imputer's CPU route (NumPy) and its torch route give the same bits: NaN,
    infinities and -0.0 in the series, runs at both ends, rows with nothing or everything
    removed, one channel or several, with and without noise fields; the input is not
    written (a one-channel series' transpose is a view of it)."""
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    g = torch.Generator().manual_seed(0)
    for r, c, t in [(1, 1, 1), (3, 1, 2), (1, 1, 7), (6, 3, 40), (5, 2, 301), (0, 3, 5)]:
        for density in (0.0, 0.3, 0.7, 1.0):
            x = torch.randn(r, c, t, generator=g, dtype=dtype)
            if x.numel() >= 4:
                x.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -0.0, -float("inf")],
                                              dtype=dtype)
            rows = torch.rand(r, t, generator=g) < density
            if r >= 3:
                rows[0], rows[1] = True, False
                rows[2, : t // 2] = True  # a leading run
            fields = torch.randn(2, c, t, generator=g, dtype=dtype) * 0.01
            field_rows = torch.randint(0, 2, (r,), generator=g)
            for noise in ((None, None), (fields, field_rows)):
                before = x.clone()
                ours = imp._imputed_rows_numpy(x, rows, *noise)
                assert torch.equal(x.view(bits), before.view(bits))
                ref = imp._imputed_rows_torch(x, rows, *noise)
                assert ours.shape == ref.shape and ours.is_contiguous()
                assert torch.equal(ours.view(bits), ref.view(bits)), (r, c, t, density)


def test_series_fields_drawn_ahead_are_the_fields_drawn_per_chunk(monkeypatch):
    """SeriesLinearImputer.with_fields_for draws each key's noise field once: filling with the
    bound copy gives the bits of the unbound imputer, for rows whose keys it holds (no draw)
    and for rows with other keys (drawn as before); ROAD on series draws no field per chunk."""
    from evalkit.metrics.faithfulness import ROAD
    from evalkit.perturb.imputation import SeriesLinearImputer

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 40, generator=g)
    mask = torch.rand(6, 1, 40, generator=g) < 0.5
    keys = torch.tensor([5, 9, 5, 2, 9, 2])
    plain = SeriesLinearImputer(0.1)
    bound = plain.with_fields_for(torch.tensor([9, 2, 5, 7]))
    draws = []
    real = imp._distinct_noise_fields
    monkeypatch.setattr(imp, "_distinct_noise_fields", lambda *a: draws.append(a) or real(*a))
    assert torch.equal(bound.fill(x, mask, keys=keys), plain.fill(x, mask, keys=keys))
    assert len(draws) == 1  # the plain imputer's; the bound one drew its fields ahead
    other = torch.tensor([5, 9, 5, 2, 9, 11])  # key 11 was not drawn ahead
    assert torch.equal(bound.fill(x, mask, keys=other), plain.fill(x, mask, keys=other))
    assert len(draws) == 3
    per_channel = torch.rand(6, 3, 40, generator=g) < 0.5
    assert torch.equal(bound.fill(x, per_channel, keys=keys),
                       plain.fill(x, per_channel, keys=keys))
    assert torch.equal(bound.fill(x[:, :2], mask, keys=keys),  # another shape: drawn
                       plain.fill(x[:, :2], mask, keys=keys))
    noiseless = SeriesLinearImputer(0.0)
    assert noiseless.with_fields_for(keys) is noiseless

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(120, 3))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    a = torch.rand(6, 3, 40, generator=g)
    road = ROAD(percentages=(20, 60), score="confidence", seed=0)
    draws.clear()
    scores = road(model, x, y, a, modality="series")
    assert not draws
    monkeypatch.setattr(SeriesLinearImputer, "with_fields_for", lambda self, *a: self)
    again = road(model, x, y, a, modality="series")
    assert draws and np.array_equal(scores, again, equal_nan=True)
