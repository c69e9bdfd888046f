"""Tests of the perturbation engine (`evalkit.perturb`): feature groupings, baselines/imputers
and noise models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evalkit import _rng
from evalkit.perturb import (
    BASELINES,
    Baseline,
    ChannelValues,
    Columns,
    CustomGrouping,
    FeatureGrouping,
    GaussianNoise,
    Grouping,
    Imputer,
    Patches,
    Pixels,
    Superpixels,
    UniformNoise,
    Windows,
    gaussian_blur,
    make_grouping,
    make_imputer,
    make_noise,
    rank_groups,
)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def assert_partition(g: Grouping, x: torch.Tensor) -> None:
    """Every element of every sample is in exactly one group, every group id is used."""
    labels = g.labels.expand(x.shape[0], *g.labels.shape[1:])
    assert labels.dtype == torch.int64
    torch.broadcast_shapes(g.labels.shape, x.shape)  # broadcastable
    for i in range(x.shape[0]):
        ids = torch.unique(labels[i])
        assert ids.tolist() == list(range(int(g.n_groups[i])))


# ============================================================================ groupings
class TestPixelsChannels:
    def test_pixels_tabular(self):
        x = rand(3, 5)
        g = Pixels()(x)
        assert g.labels.shape == (1, 5) and g.shared
        assert g.n_groups.tolist() == [5, 5, 5]
        assert g.labels[0].tolist() == [0, 1, 2, 3, 4]

    def test_pixels_series(self):
        x = rand(2, 3, 7)
        g = Pixels()(x)
        assert g.labels.shape == (1, 1, 7)
        assert g.n_groups.tolist() == [7, 7]
        assert_partition(g, x)

    def test_pixels_image(self):
        x = rand(2, 3, 4, 5)
        g = Pixels()(x)
        assert g.labels.shape == (1, 1, 4, 5)
        assert g.max_groups == 20
        assert g.labels[0, 0, 1, 2] == 1 * 5 + 2  # row-major
        assert_partition(g, x)
        # each pixel group holds all 3 channel values
        assert torch.equal(g.sizes(x), torch.full((2, 20), 3.0))
        assert torch.equal(g.sizes(), torch.ones(2, 20))

    def test_channel_values(self):
        x = rand(2, 3, 4, 5)
        g = ChannelValues()(x)
        assert g.labels.shape == (1, 3, 4, 5)
        assert g.n_groups.tolist() == [60, 60]
        assert_partition(g, x)
        assert g.labels[0, 2, 3, 4] == 59


class TestPatches:
    def test_odd_sizes(self):
        x = rand(2, 3, 7, 5)
        g = Patches(3)(x)
        assert g.labels.shape == (1, 1, 7, 5)
        assert g.n_groups.tolist() == [math.ceil(7 / 3) * math.ceil(5 / 3)] * 2 == [6, 6]
        assert_partition(g, x)
        lab = g.labels[0, 0]
        # every element in exactly one patch: the patch sizes add up to H*W
        sizes = torch.bincount(lab.flatten())
        assert sizes.sum() == 35
        assert sorted(sizes.tolist()) == sorted([9, 6, 9, 6, 3, 2])
        # each patch is a contiguous rectangle of at most 3x3
        for gid in range(6):
            rows, cols = (lab == gid).nonzero(as_tuple=True)
            h = int(rows.max() - rows.min()) + 1
            w = int(cols.max() - cols.min()) + 1
            assert h <= 3 and w <= 3 and h * w == (lab == gid).sum()
        # the reference: row // 3 and col // 3 identify the patch
        rr, cc = torch.meshgrid(torch.arange(7), torch.arange(5), indexing="ij")
        assert torch.equal(lab, (rr // 3) * 2 + cc // 3)

    def test_rectangular_patch_size(self):
        x = rand(1, 1, 6, 9)
        g = Patches((2, 4))(x)
        assert g.max_groups == 3 * 3
        assert_partition(g, x)

    def test_divisible(self):
        g = Patches(2)(rand(1, 3, 4, 4))
        assert g.max_groups == 4
        assert torch.equal(torch.bincount(g.labels.flatten()), torch.full((4,), 4))

    def test_tabular_and_series(self):
        g = Patches(2)(rand(2, 5))
        assert g.labels.tolist() == [[0, 0, 1, 1, 2]]
        w = Windows(3)(rand(2, 4, 10))
        assert w.labels.shape == (1, 1, 10)
        assert w.labels[0, 0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
        assert w.n_groups.tolist() == [4, 4]
        assert repr(Windows(3)) == "Windows(window_size=3)"

    def test_errors(self):
        for bad in (0, -2, True, (2, 0), (), (2.0, 2)):
            with pytest.raises(ValueError, match="`patch_size`"):
                Patches(bad)
        with pytest.raises(ValueError, match="larger than the input extent"):
            Patches(4)(rand(1, 3, 3, 8))
        with pytest.raises(ValueError, match="2 entries but the inputs have 1 spatial"):
            Patches((2, 2))(rand(1, 3, 8))


def test_patches_float_size_clear_error():
    with pytest.raises(ValueError, match="`patch_size`"):
        Patches(1.5)


class TestColumns:
    def test_groups(self):
        x = rand(3, 7)
        g = Columns([[0, 2], [4, 5]])(x)
        assert g.labels.tolist() == [[0, 2, 0, 3, 1, 1, 4]]
        assert g.n_groups.tolist() == [5, 5, 5]
        assert_partition(g, x)
        assert Columns()(x).labels.tolist() == [list(range(7))]

    @pytest.mark.parametrize(
        ("groups", "match"),
        [([[0, 9]], "out of range"), ([[]], "empty"), ([[-1]], "out of range"),
         ([[0, 1], [1, 2]], "overlaps")],
    )
    def test_errors(self, groups, match):
        with pytest.raises(ValueError, match=match):
            Columns(groups)(rand(2, 5))

    def test_non_tabular(self):
        with pytest.raises(ValueError, match=r"tabular inputs \(N, D\)"):
            Columns()(rand(2, 3, 4))


class TestCustomGrouping:
    def test_shared_map_renumbered(self):
        x = rand(2, 3, 2, 3)
        lab = np.array([[10, 10, -4], [7, 7, -4]])
        g = CustomGrouping(lab)(x)
        assert g.labels.shape == (1, 1, 2, 3)
        assert g.labels[0, 0].tolist() == [[2, 2, 0], [1, 1, 0]]
        assert g.n_groups.tolist() == [3, 3]
        assert_partition(g, x)

    def test_per_sample_maps(self):
        x = rand(2, 1, 2, 2)
        lab = torch.tensor([[[[5, 5], [5, 9]]], [[[0, 1], [2, 3]]]])
        g = CustomGrouping(lab)(x)
        assert g.n_groups.tolist() == [2, 4]
        assert not g.shared
        assert g.valid().tolist() == [[True, True, False, False], [True] * 4]
        assert_partition(g, x)

    def test_tabular_and_float_labels(self):
        g = CustomGrouping(np.array([3.0, 3.0, 1.0]))(rand(2, 3))
        assert g.labels.tolist() == [[1, 1, 0]]
        with pytest.raises(ValueError, match="integers"):
            CustomGrouping(np.array([0.5, 1.0, 1.0]))(rand(2, 3))

    def test_errors(self):
        with pytest.raises(ValueError, match="do not fit"):
            CustomGrouping(np.zeros((2, 2, 2, 2, 2)))(rand(2, 1, 2, 2))
        with pytest.raises(ValueError, match="do not broadcast"):
            CustomGrouping(np.zeros((3, 3)))(rand(2, 1, 2, 2))
        with pytest.raises(ValueError, match="do not broadcast"):
            CustomGrouping(np.zeros((3, 1, 2, 2)))(rand(2, 1, 2, 2))


class TestSuperpixels:
    @staticmethod
    def blocks() -> torch.Tensor:
        x = torch.zeros(2, 3, 12, 12)
        x[0, :, :, 6:] = 1.0  # two halves
        x[1, :, :6, :6] = 0.25  # four quadrants
        x[1, :, :6, 6:] = 0.5
        x[1, :, 6:, :6] = 0.75
        x[1, :, 6:, 6:] = 1.0
        return x

    def test_felzenszwalb_per_sample_counts(self):
        x = self.blocks()
        g = Superpixels("felzenszwalb", scale=1, sigma=0.1, min_size=5)(x)
        assert g.labels.shape == (2, 1, 12, 12) and not g.shared
        assert g.n_groups.tolist() == [2, 4]
        assert_partition(g, x)
        lab = g.labels[0, 0]
        assert len(torch.unique(lab[:, :6])) == 1 and len(torch.unique(lab[:, 6:])) == 1
        assert g.valid().tolist()[0] == [True, True, False, False]

    def test_slic(self):
        x = self.blocks()
        g = Superpixels("slic", n_segments=4, compactness=0.1)(x)
        assert_partition(g, x)
        assert g.n_groups.tolist() == [int(g.labels[i].max()) + 1 for i in range(2)]
        # the quadrant image is split along its edges
        lab = g.labels[1, 0]
        for r0, c0 in ((0, 0), (0, 6), (6, 0), (6, 6)):
            assert len(torch.unique(lab[r0 + 1 : r0 + 5, c0 + 1 : c0 + 5])) == 1
        # single-channel images work too
        g1 = Superpixels("slic", n_segments=4)(x[:, :1])
        assert_partition(g1, x[:, :1])
        g2 = Superpixels("felzenszwalb", scale=1, sigma=0.1, min_size=5)(x[:, :1])
        assert g2.n_groups.tolist() == [2, 4]

    def test_per_sample_independent_of_batch_and_scale(self):
        x = self.blocks()
        sp = Superpixels("felzenszwalb", scale=1, sigma=0.1, min_size=5)
        full = sp(x)
        alone = sp(x[1:])
        assert torch.equal(alone.labels[0], full.labels[1])
        scaled = sp(x * 40 - 7)  # per-image min-max scaling
        assert torch.equal(scaled.labels, full.labels)

    def test_errors(self):
        with pytest.raises(ValueError, match="images"):
            Superpixels()(rand(2, 3, 8))
        with pytest.raises(ValueError, match="`method`"):
            Superpixels("quickshift")


def test_make_grouping():
    assert isinstance(make_grouping(None), Pixels)
    assert isinstance(make_grouping("pixels"), Pixels)
    assert isinstance(make_grouping("channel_values"), ChannelValues)
    assert isinstance(make_grouping(4), Patches)
    assert isinstance(make_grouping("slic"), Superpixels)
    assert make_grouping("felzenszwalb").method == "felzenszwalb"
    p = Patches(2)
    assert make_grouping(p) is p
    assert issubclass(Windows, FeatureGrouping)
    for bad in ("patches", 2.5, True):
        with pytest.raises(ValueError, match="`grouping`"):
            make_grouping(bad)
    assert repr(Patches(3)) == "Patches(patch_size=3)"


def test_make_grouping_from_numpy_label_array():
    g = make_grouping(np.array([[0, 1], [1, 1]]))
    assert isinstance(g, CustomGrouping)
    assert g(rand(1, 3, 2, 2)).n_groups.tolist() == [2]


def test_make_grouping_from_tensor_label_array():
    g = make_grouping(torch.tensor([[0, 1], [1, 1]]))
    assert isinstance(g, CustomGrouping)
    assert g(rand(1, 3, 2, 2)).n_groups.tolist() == [2]


class TestGroupingOps:
    def test_reduce_sum_mean_max(self):
        x = torch.zeros(2, 1, 2, 3)
        g = CustomGrouping(np.array([[0, 0, 1], [2, 2, 2]]))(x)
        a = torch.tensor([[[[1.0, 3.0, -2.0], [4.0, 5.0, 6.0]]],
                          [[[0.0, 0.0, 1.0], [-1.0, -2.0, -3.0]]]])
        assert g.reduce(a, "sum").tolist() == [[4.0, -2.0, 15.0], [0.0, 1.0, -6.0]]
        assert g.reduce(a, "mean").tolist() == [[2.0, -2.0, 5.0], [0.0, 1.0, -2.0]]
        assert g.reduce(a, "max").tolist() == [[3.0, -2.0, 6.0], [0.0, 1.0, -1.0]]
        assert g.reduce(a.double()).dtype == torch.float64
        assert g.reduce(a.long()).dtype == torch.float32
        with pytest.raises(ValueError, match="`reduction`"):
            g.reduce(a, "median")

    def test_reduce_of_one_element_groups_is_the_scatter_result(self):
        # one element per group (pixels of a 1-channel map, a table's columns) skips the
        # scatter: the same bits, -0.0 becoming 0.0 and NaN staying NaN as scatter_add makes
        from evalkit.perturb.groupings import Grouping

        class Scattered(Grouping):
            def one_element_per_group(self, shape=None) -> bool:
                return False

        special = torch.tensor([0.0, -0.0, math.nan, math.inf, -math.inf, 1e-45, 3.0, -2.5])
        gen = torch.Generator().manual_seed(0)
        cases = [(rand(5, 8), special[torch.randint(0, 8, (5, 8), generator=gen)]),
                 (rand(5, 3, 4, 4), special[torch.randint(0, 8, (5, 1, 4, 4), generator=gen)]),
                 (rand(5, 3, 4, 4), special[torch.randint(0, 8, (5, 3, 4, 4), generator=gen)]),
                 (rand(5, 8), special[torch.randint(0, 8, (5, 8), generator=gen)].double()),
                 (rand(5, 8), torch.randint(-3, 3, (5, 8), generator=gen))]
        skipped = 0
        for x, a in cases:
            for grouping in (Pixels(), ChannelValues(), Columns([[0, 1]]) if x.ndim == 2
                             else Patches(2)):
                grp = grouping(x)
                shape = torch.broadcast_shapes(a.shape, (a.shape[0], *grp.labels.shape[1:]))
                skipped += grp.one_element_per_group(shape)
                for reduction in ("sum", "mean", "max"):
                    got = grp.reduce(a, reduction)
                    want = Scattered(grp.labels, grp.n_groups).reduce(a, reduction)
                    bits = torch.int64 if got.dtype == torch.float64 else torch.int32
                    assert got.dtype == want.dtype and got.shape == want.shape
                    assert torch.equal(got.view(bits), want.view(bits))
        assert skipped == 9  # and the other groupings took the scatter

    def test_reduce_invalid_groups_nan(self):
        x = torch.zeros(2, 1, 1, 3)
        lab = torch.tensor([[[[0, 0, 0]]], [[[0, 1, 2]]]])
        g = CustomGrouping(lab)(x)
        out = g.reduce(torch.ones(2, 1, 1, 3), "sum")
        assert out[0, 0] == 3 and math.isnan(out[0, 1]) and math.isnan(out[0, 2])
        assert out[1].tolist() == [1.0, 1.0, 1.0]

    def test_facts_known_at_build_time_match_the_tensors(self):
        # Pixels, ChannelValues, Patches and Columns state their group count (and whether the
        # labels are 0..G-1 in element order) as they build them; a Grouping given only the
        # tensors finds the same answers from them
        from evalkit.perturb.groupings import Grouping

        cases = [(rand(3, 8), Pixels()), (rand(3, 8), ChannelValues()),
                 (rand(3, 8), Patches(3)), (rand(3, 8), Columns([[0, 5], [2, 3, 4]])),
                 (rand(3, 8), Columns()), (rand(3, 2, 7), Pixels()), (rand(3, 2, 7), Patches(1)),
                 (rand(3, 2, 7), ChannelValues()), (rand(2, 3, 5, 4), Patches((2, 3))),
                 (rand(2, 1, 5, 4), Pixels()), (rand(2, 3, 5, 4), ChannelValues())]
        for x, grouping in cases:
            built = grouping(x)
            plain = Grouping(built.labels, built.n_groups)
            assert built.max_groups == plain.max_groups == int(built.labels.max()) + 1
            assert built.complete and plain.complete
            assert torch.equal(built.valid(), plain.valid())
            own = (built.labels.shape[0], *built.labels.shape[1:])
            for shape in (own, (x.shape[0], *built.labels.shape[1:]), x.shape):
                assert built.one_element_per_group(shape) == plain.one_element_per_group(shape)
            assert built.one_element_per_group() == plain.one_element_per_group()
        ragged = CustomGrouping(torch.tensor([[0, 0, 1], [0, 1, 2]]))(rand(2, 3))
        assert ragged.max_groups == 3 and not ragged.complete
        assert not ragged.one_element_per_group()
        assert ragged.valid().tolist() == [[True, True, False], [True, True, True]]
        assert Pixels()(rand(2, 6)).one_element_per_group((2, 6))
        assert not Patches(2)(rand(2, 6)).one_element_per_group((2, 6))
        # other tensors put in with dataclasses.replace are not taken for the old ones
        import dataclasses

        pairs = torch.tensor([[0, 0, 1, 1, 2, 2]])
        merged = dataclasses.replace(Pixels()(rand(2, 6)), labels=pairs,
                                     n_groups=torch.tensor([3, 3]))
        assert merged.max_groups == 3 and not merged.one_element_per_group()

    def test_one_channel_attribution_vs_channel_values(self):
        x = rand(2, 3, 2, 2)
        g = ChannelValues()(x)
        a1 = rand(2, 1, 2, 2, seed=1)
        out = g.reduce(a1, "sum")
        assert out.shape == (2, 12)
        # each channel value gets its pixel's attribution
        want = a1.expand(2, 3, 2, 2).reshape(2, 12)
        assert torch.allclose(out, want)

    def test_three_channel_attribution_vs_pixels(self):
        x = rand(2, 3, 2, 2)
        g = Pixels()(x)
        a3 = rand(2, 3, 2, 2, seed=2)
        assert torch.allclose(g.reduce(a3, "sum"), a3.sum(1).reshape(2, 4), atol=1e-6)
        assert torch.allclose(g.reduce(a3, "mean"), a3.mean(1).reshape(2, 4), atol=1e-6)
        assert torch.allclose(g.reduce(a3, "max"), a3.amax(1).reshape(2, 4))
        # patches over a 3-channel map: sum over channels and patch pixels
        gp = Patches(2)(rand(2, 3, 4, 4))
        a = rand(2, 3, 4, 4, seed=3)
        want = a.reshape(2, 3, 2, 2, 2, 2).sum(dim=(1, 3, 5)).reshape(2, 4)
        assert torch.allclose(gp.reduce(a), want, atol=1e-5)
        assert torch.equal(gp.sizes(a), torch.full((2, 4), 12.0))

    def test_expand_and_mask(self):
        x = rand(3, 2, 3, 4)
        g = Patches(2)(x)  # 2 x 2 = 4 groups
        vals = torch.arange(12.0).reshape(3, 4)
        out = g.expand(vals)
        assert out.shape == (3, 1, 3, 4)
        assert torch.equal(out[1, 0], torch.tensor([[4.0, 4, 5, 5], [4, 4, 5, 5], [6, 6, 7, 7]]))
        sel = torch.tensor([[True, False, False, True]])
        m = g.mask(sel, torch.tensor([2]))
        assert m.dtype == torch.bool and m.shape == (1, 1, 3, 4)
        assert m[0, 0].tolist() == [[True, True, False, False]] * 2 + [[False, False, True, True]]
        # per-sample labels with sample_idx
        lab = torch.tensor([[[[0, 1]]], [[[1, 0]]]])
        gc = CustomGrouping(lab)(rand(2, 1, 1, 2))
        sel = torch.tensor([[True, False], [True, False], [True, False]])
        got = gc.mask(sel, torch.tensor([1, 0, 1]))
        assert got[:, 0, 0].tolist() == [[False, True], [True, False], [False, True]]

    def test_reduce_expand_roundtrip(self):
        x = rand(2, 3, 5, 7)
        g = Patches(3)(x)
        sums = g.reduce(torch.ones(2, 1, 5, 7))
        assert torch.equal(g.expand(sums).sum(dim=(1, 2, 3)),
                           (sums**2).sum(1))  # sum over pixels of its patch size

    def test_labels_for(self):
        g = Pixels()(rand(4, 3, 2, 2))
        assert g.labels_for(torch.tensor([0, 3, 3])).shape == (3, 1, 2, 2)


class TestRankGroups:
    def test_morf_lerf_stable_ties(self):
        s = torch.tensor([[0.5, 2.0, 0.5, -1.0, 2.0]])
        valid = torch.ones(1, 5, dtype=torch.bool)
        assert rank_groups(s, valid, "morf").tolist() == [[1, 4, 0, 2, 3]]
        assert rank_groups(s, valid, "lerf").tolist() == [[3, 0, 2, 1, 4]]
        ties = torch.zeros(1, 6)
        assert rank_groups(ties, torch.ones(1, 6, dtype=torch.bool)).tolist() == [list(range(6))]

    def test_invalid_last_and_nan(self):
        s = torch.tensor([[9.0, 1.0, float("nan"), 3.0], [1.0, 2.0, 3.0, 4.0]])
        valid = torch.tensor([[False, True, True, True], [True, True, False, False]])
        morf = rank_groups(s, valid, "morf")
        assert morf.tolist() == [[3, 1, 2, 0], [1, 0, 2, 3]]  # NaN counts as 0
        lerf = rank_groups(s, valid, "lerf")
        assert lerf.tolist() == [[2, 1, 3, 0], [0, 1, 2, 3]]
        keys = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.7, 0.3, 0.0, 0.1]])
        rnd = rank_groups(s, valid, "random", random_keys=keys)
        assert rnd.tolist() == [[3, 2, 1, 0], [1, 0, 2, 3]]

    def test_the_stable_order_on_every_row(self):
        # the CPU path sorts with NumPy's unstable argsort and re-sorts the rows with ties or
        # NaN stably: every row must get the stable order of the keys (s, or -s descending),
        # ties by lower index first and NaN last (NumPy's), as torch's stable sort without NaN
        from evalkit.perturb.groupings import _stable_argsort

        gen = torch.Generator().manual_seed(0)
        pool = torch.tensor([0.0, -0.0, 1.0, -1.0, math.inf, -math.inf, math.nan, 5e-324],
                            dtype=torch.float64)
        rows = [torch.randn(50, 30, generator=gen, dtype=torch.float64),
                pool[torch.randint(0, 8, (50, 17), generator=gen)],
                torch.randint(-2, 3, (50, 40), generator=gen).to(torch.float64),
                torch.randn(3, 1, generator=gen, dtype=torch.float64)]
        for s in rows:
            for descending in (True, False):
                got = _stable_argsort(s, descending=descending)
                keys = (-s if descending else s).numpy()
                want = torch.from_numpy(np.argsort(keys, axis=1, kind="stable"))
                assert torch.equal(got, want)
                if not bool(s.isnan().any()):
                    assert torch.equal(got, torch.sort(s, dim=1, descending=descending,
                                                       stable=True).indices)

    def test_random_is_keyed_permutation(self):
        keys = _rng.sample_keys(rand(3, 4), 0)
        pk = _rng.permutation_keys(keys, 8)
        valid = torch.ones(3, 8, dtype=torch.bool)
        r1 = rank_groups(torch.zeros(3, 8), valid, "random", random_keys=pk)
        r2 = rank_groups(torch.zeros(3, 8), valid, "random", random_keys=pk)
        assert torch.equal(r1, r2)
        for row in r1:
            assert sorted(row.tolist()) == list(range(8))

    def test_errors(self):
        valid = torch.ones(1, 3, dtype=torch.bool)
        with pytest.raises(ValueError, match="random_keys"):
            rank_groups(torch.zeros(1, 3), valid, "random")
        with pytest.raises(ValueError, match="`order`"):
            rank_groups(torch.zeros(1, 3), valid, "MoRF")


# ============================================================================ baselines
def hand_batch() -> torch.Tensor:
    """(2, 2, 2, 3) with easy statistics."""
    x0 = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]],
                       [[-1.0, 0.0, 1.0], [2.0, 2.0, 2.0]]])
    x1 = torch.full((2, 2, 3), 10.0)
    x1[1] = 20.0
    return torch.stack([x0, x1])


class TestBaselines:
    def test_black_white_mean(self):
        x = hand_batch()
        assert Baseline("black").values(x).flatten().tolist() == [-1.0, 10.0]
        assert Baseline("white").values(x).flatten().tolist() == [6.0, 20.0]
        mean = Baseline("mean").values(x)
        assert mean.shape == (2, 1, 1, 1)
        assert torch.allclose(mean.flatten(), torch.tensor([27.0 / 12, 15.0]))

    def test_channel_mean(self):
        x = hand_batch()
        cm = Baseline("channel_mean").values(x)
        assert cm.shape == (2, 2, 1, 1)
        assert torch.allclose(cm.flatten(), torch.tensor([3.5, 1.0, 10.0, 20.0]))
        # tabular: falls back to the per-sample mean
        t = torch.tensor([[1.0, 3.0], [0.0, 4.0]])
        assert Baseline("channel_mean").values(t).flatten().tolist() == [2.0, 2.0]

    def test_zero_constant_number(self):
        x = hand_batch()
        filled = Baseline("zero").fill(x, torch.ones_like(x, dtype=torch.bool))
        assert torch.equal(filled, torch.zeros_like(x))
        c = Baseline("constant", value=0.7).values(x)
        assert c.shape == (1, 1, 1, 1) and c.item() == pytest.approx(0.7)
        assert Baseline(3).values(x).item() == 3.0
        assert Baseline(np.float64(0.25)).values(x).item() == 0.25

    def test_array_one_input_and_batch(self):
        x = hand_batch()
        one = np.arange(12, dtype=np.float64).reshape(2, 2, 3)
        v = Baseline(one).values(x)
        assert v.shape == (1, 2, 2, 3) and v.dtype == x.dtype
        assert torch.equal(v[0], torch.as_tensor(one, dtype=torch.float32))
        batch = torch.arange(24.0).reshape(2, 2, 2, 3)
        assert torch.equal(Baseline(batch).values(x), batch)
        with pytest.raises(ValueError, match="shape of one input"):
            Baseline(np.zeros((2, 3))).values(x)

    def test_fill_only_masked(self):
        x = hand_batch()
        mask = torch.zeros(2, 1, 2, 3, dtype=torch.bool)
        mask[:, :, 0, 0] = True
        out = Baseline("black").fill(x, mask)
        assert out[0, :, 0, 0].tolist() == [-1.0, -1.0]
        assert out[1, :, 0, 0].tolist() == [10.0, 10.0]
        keep = ~mask.expand_as(x)
        assert torch.equal(out[keep], x[keep])
        assert torch.equal(x, hand_batch())  # out of place

    def test_uniform_per_element_in_range_keyed(self):
        x = rand(4, 3, 5, 5)
        b = Baseline("uniform", uniform_low=-2.0, uniform_high=-1.0)
        assert b.stochastic
        keys = _rng.sample_keys(x, 3)
        v = b.values(x, keys)
        assert v.shape == x.shape
        assert float(v.min()) >= -2.0 and float(v.max()) < -1.0
        assert torch.unique(v[0]).numel() > 50  # one value per element (cf. Quantus deviation C27)
        assert not torch.equal(v[0], v[1])  # different samples, different draws
        # keyed by sample: the same values in any batch
        v_alone = b.values(x[2:3], keys[2:3])
        assert torch.equal(v_alone[0], v[2])
        assert torch.equal(b.values(x, keys), v)
        with pytest.raises(ValueError, match="needs per-sample keys"):
            b.values(x)

    def test_random_within_sample_range(self):
        x = hand_batch()
        keys = _rng.sample_keys(x, 0)
        v = Baseline("random").values(x, keys)
        assert v.shape == x.shape
        assert float(v[0].min()) >= -1.0 and float(v[0].max()) <= 6.0
        assert float(v[1].min()) >= 10.0 and float(v[1].max()) <= 20.0
        assert torch.unique(v[1]).numel() == 12
        assert torch.equal(Baseline("random").values(x[1:], keys[1:])[0], v[1])

    def test_blur_constant_and_shapes(self):
        const = torch.full((2, 3, 7, 5), 4.5)
        out = Baseline("blur", blur_sigma=2.0).values(const)
        assert out.shape == const.shape
        assert torch.allclose(out, const, atol=1e-5)
        for shape in ((1, 2, 7, 5), (2, 1, 1, 9), (1, 3, 4, 6), (2, 2, 11)):
            y = rand(*shape)
            assert gaussian_blur(y, 1.5).shape == y.shape
        with pytest.raises(ValueError, match="Blur needs"):
            gaussian_blur(rand(2, 5), 1.0)

    def test_blur_matches_scipy_reflect(self):
        from scipy.ndimage import gaussian_filter

        x = rand(2, 3, 9, 11, seed=4).double()
        out = gaussian_blur(x, 1.0)
        want = gaussian_filter(x.numpy(), sigma=(0, 0, 1.0, 1.0), mode="mirror", truncate=3.0)
        np.testing.assert_allclose(out.numpy(), want, atol=1e-10)
        # the mean of every channel is roughly preserved and the image is smoother
        assert out.diff(dim=-1).abs().mean() < x.diff(dim=-1).abs().mean()

    def test_blur_even_kernel_size(self):
        with pytest.raises(ValueError, match="positive odd integer"):
            Baseline("blur", blur_sigma=1.0, blur_kernel_size=4)
        with pytest.raises(ValueError, match="positive odd integer"):
            gaussian_blur(rand(1, 2, 9, 9), 1.0, kernel_size=4)

    def test_blur_small_sigma_is_identity(self):
        x = rand(1, 2, 6, 5)
        assert torch.allclose(gaussian_blur(x, 0.05), x, atol=1e-6)

    def test_errors(self):
        with pytest.raises(ValueError, match="Unknown baseline 'grey'"):
            Baseline("grey")
        for bad in (True, [0.0, 1.0], None):
            with pytest.raises(TypeError, match="`perturb_baseline`"):
                Baseline(bad)
        with pytest.raises(ValueError, match="uniform_high"):
            Baseline("uniform", uniform_low=1.0, uniform_high=1.0)
        with pytest.raises(ValueError, match="blur_sigma"):
            Baseline("blur", blur_sigma=0.0)

    def test_all_named_kinds_work(self):
        x = rand(2, 3, 5, 5)
        keys = _rng.sample_keys(x, 0)
        for kind in BASELINES:
            v = Baseline(kind).values(x, keys)
            assert torch.broadcast_shapes(v.shape, x.shape) == x.shape, kind
            assert torch.isfinite(v).all(), kind


class TestMakeImputer:
    def test_resolution(self):
        b = make_imputer("white")
        assert isinstance(b, Baseline) and b.kind == "white"
        assert make_imputer("constant", value=2.0).value == 2.0
        assert make_imputer(0.5).kind == 0.5
        assert make_imputer(b) is b
        with pytest.raises(TypeError, match="cannot be combined"):
            make_imputer(b, value=1.0)
        with pytest.raises(ValueError, match="Unknown baseline"):
            make_imputer("nope")
        assert "Baseline(kind='white'" in repr(b)

    def test_custom_imputer(self):
        class Negate(Imputer):
            def fill(self, x, mask, *, keys=None):
                return torch.where(mask, -x, x)

        imp = make_imputer(Negate())
        x = hand_batch()
        out = imp.fill(x, x > 4)
        assert torch.equal(out, torch.where(x > 4, -x, x))
        assert not imp.stochastic


# ============================================================================ noise
class TestNoise:
    def test_gaussian_statistics(self):
        x = torch.zeros(8, 1000)
        keys = torch.arange(8, dtype=torch.int64)
        out = GaussianNoise(perturb_mean=0.3, perturb_std=0.2)(x, keys)
        assert abs(float(out.mean()) - 0.3) < 0.01
        assert abs(float(out.std()) - 0.2) < 0.01

    def test_uniform_statistics_and_quantus_bounds(self):
        x = torch.zeros(8, 1000)
        keys = torch.arange(8, dtype=torch.int64)
        sym = UniformNoise(lower_bound=0.1)(x, keys)  # U(-0.1, 0.1)
        assert float(sym.min()) >= -0.1 and float(sym.max()) < 0.1
        assert float(sym.min()) < -0.09 and float(sym.max()) > 0.09
        assert abs(float(sym.mean())) < 0.005
        assert abs(float(sym.var()) - 0.2**2 / 12) < 3e-4
        asym = UniformNoise(lower_bound=0.2, upper_bound=0.5)(x, keys)  # U(0.2, 0.5)
        assert float(asym.min()) >= 0.2 and float(asym.max()) < 0.5
        assert abs(float(asym.mean()) - 0.35) < 0.01
        assert torch.equal(UniformNoise(lower_bound=0.0)(x, keys), x)

    @pytest.mark.oracle
    def test_quantus_uniform_noise_convention(self):
        pf = pytest.importorskip("quantus.functions.perturb_func")
        arr = np.zeros(500)
        idx = np.arange(500)
        q_sym = pf.uniform_noise(arr, indices=idx, indexed_axes=[0], lower_bound=0.1)
        q_asym = pf.uniform_noise(arr, indices=idx, indexed_axes=[0], lower_bound=0.2,
                                  upper_bound=0.5)
        keys = torch.zeros(1, dtype=torch.int64)
        e_sym = UniformNoise(0.1)(torch.zeros(1, 500), keys).numpy()
        e_asym = UniformNoise(0.2, 0.5)(torch.zeros(1, 500), keys).numpy()
        for q, e, lo, hi in ((q_sym, e_sym, -0.1, 0.1), (q_asym, e_asym, 0.2, 0.5)):
            for arr_ in (q, e):  # both draw from the same interval
                assert lo <= arr_.min() < lo + 0.02 and hi - 0.02 < arr_.max() <= hi

    def test_mask_and_clip(self):
        x = torch.zeros(2, 3, 4)
        keys = torch.tensor([1, 2])
        mask = torch.zeros(2, 1, 4, dtype=torch.bool)
        mask[:, :, :2] = True
        out = GaussianNoise(perturb_std=1.0)(x, keys, mask=mask)
        assert torch.equal(out[..., 2:], torch.zeros(2, 3, 2))
        assert (out[..., :2] != 0).all()
        clipped = GaussianNoise(perturb_std=5.0)(x, keys, clip=(-0.5, 0.5))
        assert float(clipped.min()) >= -0.5 and float(clipped.max()) <= 0.5
        t_lo, t_hi = torch.full((3, 4), -0.1), torch.full((3, 4), 0.2)
        tensor_clip = GaussianNoise(perturb_std=5.0)(x, keys, clip=(t_lo, t_hi))
        assert bool((tensor_clip >= t_lo).all()) and bool((tensor_clip <= t_hi).all())
        assert bool((tensor_clip == t_lo).any()) and bool((tensor_clip == t_hi).any())

    def test_clip_mixed_tensor_and_float(self):
        x = torch.zeros(2, 3, 4)
        out = GaussianNoise(perturb_std=5.0)(x, torch.tensor([1, 2]),
                                             clip=(torch.full((3, 4), -0.1), 0.1))
        assert bool((out >= torch.tensor(-0.1)).all()) and bool((out <= 0.1).all())

    def test_key_determinism_and_row_independence(self):
        x = rand(4, 2, 5)
        keys = _rng.sample_keys(x, 9)
        for noise in (GaussianNoise(), UniformNoise(0.3)):
            a = noise(x, keys)
            assert torch.equal(a, noise(x, keys))
            assert torch.equal(noise(x[2:3], keys[2:3])[0], a[2])
            assert not torch.equal(a - x, noise(x, keys + 1) - x)
            assert not torch.equal(a[0] - x[0], a[1] - x[1])
        assert torch.equal(x, rand(4, 2, 5))  # out of place

    def test_errors(self):
        with pytest.raises(ValueError, match="one key per row"):
            GaussianNoise()(torch.zeros(3, 2), torch.zeros(2, dtype=torch.int64))
        with pytest.raises(ValueError, match="perturb_std"):
            GaussianNoise(perturb_std=-1)
        with pytest.raises(ValueError, match="lower_bound"):
            UniformNoise(-0.1)
        with pytest.raises(ValueError, match="upper_bound"):
            UniformNoise(0.5, 0.5)

    def test_make_noise(self):
        g = make_noise("gaussian", perturb_std=0.5)
        assert isinstance(g, GaussianNoise) and g.perturb_std == 0.5
        u = make_noise("uniform", lower_bound=0.1, upper_bound=0.2)
        assert isinstance(u, UniformNoise) and u.upper_bound == 0.2
        assert make_noise(g) is g
        with pytest.raises(ValueError, match="Unknown noise"):
            make_noise("salt")
        assert repr(g) == "GaussianNoise(perturb_mean=0.0, perturb_std=0.5)"
