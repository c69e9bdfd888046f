"""evalkit.metrics.similarity: vectorised similarity functions against scipy / scikit-image."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import scipy.spatial.distance as ssd
import scipy.stats as st
import torch
from skimage.feature import hog as sk_hog
from skimage.metrics import structural_similarity as sk_ssim

from evalkit.metrics import similarity as sim

RNG = np.random.default_rng(0)


def pair(shape, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=shape)
    return a, a + noise * rng.normal(size=shape)


def t(a):
    return torch.as_tensor(a)


def joint_range(a, b):
    return float(max(a.max(), b.max()) - min(a.min(), b.min()))


# ============================================================================ correlations
class TestCorrelations:
    def test_rank_matches_scipy_with_ties(self):
        a = RNG.integers(0, 6, size=(7, 50)).astype(float)
        expected = np.stack([st.rankdata(row) for row in a])
        np.testing.assert_array_equal(sim.rank(t(a)).numpy(), expected)

    def test_rank_rejects_non_2d(self):
        with pytest.raises(ValueError, match="2-D"):
            sim.rank(torch.zeros(3))

    @pytest.mark.parametrize("ties", [False, True])
    def test_spearman_matches_scipy(self, ties):
        a, b = pair((9, 1, 6, 7))
        if ties:
            a = np.round(a)
            b = np.round(b * 2)
        ours = sim.spearman(t(a), t(b)).numpy()
        ref = [st.spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a, b, strict=True)]
        np.testing.assert_allclose(ours, ref, atol=1e-12)

    @pytest.mark.parametrize("d", [2, 3, 30, 500, 784])
    def test_pearson_with_ranks_of_is_the_general_path(self, d):
        # the tie-free shortcut (sorted positions, closed-form sums) gives the bits of ranking
        # and centring; rows with ties, NaN or signed zeros fall back or agree
        gen = np.random.default_rng(d)
        ref = sim._centred_rows(sim.rank(torch.from_numpy(gen.normal(size=(12, d)))))
        for kind in range(5):
            other = gen.normal(size=(12, d))
            if kind == 1:
                other = np.round(other)  # ties
            elif kind == 2:
                other[3, 0] = np.nan
            elif kind == 3 and d > 2:
                other[5, :2] = [0.0, -0.0]
            elif kind == 4:
                other = np.abs(other) / np.abs(other).max(1, keepdims=True)
            general = sim._pearson_centred(ref, sim._centred_rows(sim.rank(torch.from_numpy(
                other))))
            fast = sim._pearson_with_ranks_of(ref, other)
            assert torch.equal(fast.nan_to_num(7.0), general.nan_to_num(7.0)), kind

    def test_pearson_matches_scipy(self):
        a, b = pair((5, 3, 8))
        ours = sim.pearson(t(a), t(b)).numpy()
        ref = [st.pearsonr(x.ravel(), y.ravel())[0] for x, y in zip(a, b, strict=True)]
        np.testing.assert_allclose(ours, ref, atol=1e-12)

    def test_cosine_matches_scipy(self):
        a, b = pair((4, 20))
        np.testing.assert_allclose(sim.cosine(t(a), t(b)).numpy(),
                                   [1 - ssd.cosine(x, y) for x, y in zip(a, b, strict=True)],
                                   atol=1e-12)
        np.testing.assert_allclose(sim.cosine_distance(t(a), t(b)).numpy(),
                                   [ssd.cosine(x, y) for x, y in zip(a, b, strict=True)],
                                   atol=1e-12)

    def test_known_values(self):
        # the Quantus unit vectors: spearman([-1, 1, 1], [0, 0, 2]) = 0.5
        a = t([[-1.0, 1.0, 1.0], [1.0, 2.0, 3.0]])
        b = t([[0.0, 0.0, 2.0], [3.0, 2.0, 1.0]])
        np.testing.assert_allclose(sim.spearman(a, b).numpy(), [0.5, -1.0])
        np.testing.assert_allclose(sim.pearson(a, a).numpy(), [1.0, 1.0])

    @pytest.mark.parametrize("fn", [sim.spearman, sim.pearson])
    def test_constant_rows_are_nan_with_reason(self, fn):
        a = t([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
        b = t([[1.0, 2.0, 3.0], [4.0, 4.0, 4.0], [0.0, 0.0, 0.0]])
        out = fn(a, b).numpy()
        assert np.isnan(out).all()
        reasons = sim.undefined_reason(a, b, fn.__name__)
        assert "first explanation is constant" in reasons[0]
        assert "second explanation is constant" in reasons[1]
        assert "both explanations are constant" in reasons[2]

    def test_cosine_zero_row(self):
        out = sim.cosine(t([[0.0, 0.0], [1.0, 0.0]]), t([[1.0, 2.0], [1.0, 0.0]])).numpy()
        assert math.isnan(out[0]) and out[1] == 1.0
        assert "all zero" in sim.undefined_reason(t([[0.0, 0.0]]), t([[1.0, 2.0]]), "cosine")[0]

    def test_nan_rows_stay_nan_and_do_not_leak(self):
        a, b = pair((3, 10))
        a[1, 4] = np.nan
        for fn in (sim.spearman, sim.pearson, sim.cosine, sim.mse):
            out = fn(t(a), t(b)).numpy()
            assert np.isnan(out[1])
            assert np.isfinite(out[[0, 2]]).all()

    def test_rows_independent_of_batch(self):
        a, b = pair((6, 2, 9, 9))
        for fn in (sim.spearman, sim.pearson, sim.ssim):
            full = fn(t(a), t(b)).numpy()
            part = fn(t(a[2:4]), t(b[2:4])).numpy()
            np.testing.assert_allclose(full[2:4], part, atol=1e-12)

    def test_shape_errors(self):
        with pytest.raises(ValueError, match="same shape"):
            sim.spearman(torch.zeros(2, 3), torch.zeros(2, 4))
        with pytest.raises(ValueError, match="batch axis"):
            sim.pearson(torch.tensor(1.0), torch.tensor(1.0))


class TestDistances:
    def test_values(self):
        a, b = pair((4, 3, 5))
        fa, fb = a.reshape(4, -1), b.reshape(4, -1)
        d = fa - fb
        np.testing.assert_allclose(sim.mse(t(a), t(b)).numpy(), (d**2).mean(1))
        np.testing.assert_allclose(sim.abs_difference(t(a), t(b)).numpy(), np.abs(d).mean(1))
        np.testing.assert_allclose(sim.squared_difference(t(a), t(b)).numpy(), (d**2).sum(1))
        np.testing.assert_allclose(sim.euclidean(t(a), t(b)).numpy(), np.linalg.norm(d, axis=1))
        np.testing.assert_allclose(sim.manhattan(t(a), t(b)).numpy(), np.abs(d).sum(1))

    def test_float32_inputs_give_float64(self):
        a, b = pair((2, 8))
        out = sim.mse(t(a).float(), t(b).float())
        assert out.dtype == torch.float64


# ============================================================================ SSIM
class TestSSIM:
    @pytest.mark.parametrize("gaussian", [False, True])
    @pytest.mark.parametrize("sample_cov", [True, False])
    def test_images_match_skimage(self, gaussian, sample_cov):
        a, b = pair((3, 3, 28, 30))
        ours = sim.ssim(t(a), t(b), gaussian_weights=gaussian,
                        use_sample_covariance=sample_cov).numpy()
        ref = [sk_ssim(x, y, channel_axis=0, gaussian_weights=gaussian,
                       use_sample_covariance=sample_cov, data_range=joint_range(x, y))
               for x, y in zip(a, b, strict=True)]
        np.testing.assert_allclose(ours, ref, atol=1e-12)

    def test_one_channel_maps(self):
        a, b = pair((4, 1, 16, 16))
        ours = sim.ssim(t(a), t(b)).numpy()
        ref = [sk_ssim(x[0], y[0], data_range=joint_range(x, y))
               for x, y in zip(a, b, strict=True)]
        np.testing.assert_allclose(ours, ref, atol=1e-12)

    def test_flat_signals_are_1d_ssim(self):
        a, b = pair((3, 100))
        ours = sim.ssim(t(a), t(b), win_size=5).numpy()
        ref = [sk_ssim(x, y, win_size=5, data_range=joint_range(x, y))
               for x, y in zip(a, b, strict=True)]
        np.testing.assert_allclose(ours, ref, atol=1e-12)

    def test_volumes_and_fixed_range(self):
        a, b = pair((2, 1, 9, 10, 11))
        ours = sim.ssim(t(a), t(b), data_range=4.0).numpy()
        ref = [sk_ssim(x[0], y[0], data_range=4.0) for x, y in zip(a, b, strict=True)]
        np.testing.assert_allclose(ours, ref, atol=1e-12)

    def test_odd_window_and_border_reflection(self):
        # a gaussian filter narrower than the crop uses the reflected border (scipy "reflect")
        a, b = pair((2, 1, 20, 20))
        ours = sim.ssim(t(a), t(b), gaussian_weights=True, sigma=0.8, win_size=7).numpy()
        ref = [sk_ssim(x[0], y[0], gaussian_weights=True, sigma=0.8, win_size=7,
                       data_range=joint_range(x, y)) for x, y in zip(a, b, strict=True)]
        np.testing.assert_allclose(ours, ref, atol=1e-12)

    def test_identical_maps(self):
        a, _ = pair((2, 1, 10, 10))
        const = np.full((1, 1, 10, 10), 3.0)
        np.testing.assert_allclose(sim.ssim(t(a), t(a)).numpy(), [1.0, 1.0])
        # equal constant maps have zero joint range: skimage gives 0/0, we give 1
        assert sim.ssim(t(const), t(const)).item() == 1.0
        # a constant map against a varying one is defined
        assert np.isfinite(sim.ssim(t(const), t(a[:1])).item())

    def test_errors(self):
        with pytest.raises(ValueError, match="exceeds the map extent"):
            sim.ssim(torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 5, 5))
        with pytest.raises(ValueError, match="odd"):
            sim.ssim(torch.zeros(1, 1, 9, 9), torch.zeros(1, 1, 9, 9), win_size=4)
        with pytest.raises(ValueError, match="SSIM and HOG need"):
            sim.ssim(torch.zeros(1, 1, 2, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2, 2))


    @pytest.mark.parametrize("length", [65, 70, 100, 230, 506, 1000])
    @pytest.mark.parametrize("gaussian", [False, True])
    def test_fma_chain_is_conv1d(self, length, gaussian):
        # the CPU path filters long axes tap by tap with add_(alpha) (a fused multiply-add)
        # where its one-time check says that gives conv1d's bits (the padded path's, and the
        # former ones); then every length here must agree too
        taps = torch.exp(-0.5 * (torch.arange(-5, 6, dtype=torch.float64) / 1.5) ** 2) \
            if gaussian else torch.full((7,), 1 / 7, dtype=torch.float64)
        taps = taps / taps.sum()
        if not sim._fma_chain_is_conv1d(tuple(taps.tolist())):
            pytest.skip("add_(alpha) is not conv1d's arithmetic on this machine: the CPU keeps "
                        "the padded SSIM path")
        gen = torch.Generator().manual_seed(length)
        x = torch.randn((40, length), generator=gen, dtype=torch.float64) * 7
        conv = torch.nn.functional.conv1d(x[:, None], taps.reshape(1, 1, -1))[:, 0]
        assert torch.equal(sim._valid_filter(x, 1, taps, taps.tolist()), conv)

    @pytest.mark.parametrize("shape", [(6, 30), (9, 64), (5, 1, 500), (4, 3, 40), (3, 1, 28, 28),
                                       (2, 2, 70, 20), (1, 1, 100, 100), (3, 1, 7), (2, 2, 9, 7),
                                       (2, 1, 8, 9, 10)])
    @pytest.mark.parametrize("options", [{}, {"gaussian_weights": True}, {"win_size": 3},
                                         {"data_range": 2.0, "use_sample_covariance": False}])
    def test_cpu_path_is_the_padded_path(self, shape, options, monkeypatch):
        # the CPU path (valid positions only, no padding, in cache-sized chunks) gives the bits
        # of the padded path (filter everything, crop), including NaN maps and equal maps
        gen = torch.Generator().manual_seed(len(shape))
        a = torch.randn(shape, generator=gen, dtype=torch.float64)
        b = a + 0.3 * torch.randn(shape, generator=gen, dtype=torch.float64)
        b[0] = a[0]
        a.reshape(shape[0], -1)[-1, 2] = math.nan
        try:
            fast = sim.ssim(a, b, **options)
        except ValueError:
            return  # the window does not fit: both paths refuse alike
        monkeypatch.setattr(sim, "_SSIM_CHUNK", 1)  # one row a chunk: chunking changes nothing
        assert torch.equal(sim.ssim(a, b, **options).nan_to_num(5.0), fast.nan_to_num(5.0))

        def padded(fa, fb, kernel, rng, cov_norm, k1, k2):
            n = rng.shape[0]
            r = (kernel.numel() - 1) // 2
            out = sim._ssim_map_padded(fa, fb, kernel, rng, cov_norm, k1, k2, n,
                                       fa.shape[0] // n)
            return out.reshape(fa.shape[0], *(d - 2 * r for d in fa.shape[1:]))

        monkeypatch.setattr(sim, "_ssim_map_cpu", padded)
        slow = sim.ssim(a, b, **options)
        assert torch.equal(torch.isnan(slow), torch.isnan(fast))
        assert torch.equal(slow.nan_to_num(5.0), fast.nan_to_num(5.0))
        assert torch.equal(slow.nan_to_num(5.0).signbit(), fast.nan_to_num(5.0).signbit())

# ============================================================================ HOG
class TestHOG:
    def test_features_match_skimage(self):
        a = RNG.normal(size=(3, 1, 28, 28))
        ours = sim.hog_features(t(a)).numpy()
        ref = np.stack([sk_hog(x[0], orientations=9, pixels_per_cell=(8, 8),
                               cells_per_block=(3, 3), block_norm="L2-Hys") for x in a])
        np.testing.assert_allclose(ours, ref, atol=1e-6)

    def test_multichannel_features_match_skimage(self):
        a = RNG.normal(size=(2, 3, 40, 33))
        ours = sim.hog_features(t(a), orientations=6, pixels_per_cell=4,
                                cells_per_block=2).numpy()
        ref = np.stack([sk_hog(x, orientations=6, pixels_per_cell=(4, 4), cells_per_block=(2, 2),
                               block_norm="L2-Hys", channel_axis=0) for x in a])
        np.testing.assert_allclose(ours, ref, atol=1e-6)

    def test_similarity_is_pearson_of_features(self):
        a, b = pair((3, 1, 32, 32))
        fa = sim.hog_features(t(a)).numpy()
        fb = sim.hog_features(t(b)).numpy()
        ref = [st.pearsonr(x, y)[0] for x, y in zip(fa, fb, strict=True)]
        np.testing.assert_allclose(sim.hog(t(a), t(b)).numpy(), ref, atol=1e-10)
        np.testing.assert_allclose(sim.hog(t(a), t(a)).numpy(), 1.0)

    def test_constant_map_nan_and_small_map_error(self):
        a, b = pair((1, 1, 24, 24))
        assert math.isnan(sim.hog(torch.zeros(1, 1, 24, 24), t(b)).item())
        with pytest.raises(ValueError, match="too small"):
            sim.hog_features(torch.zeros(1, 1, 16, 16))
        small = functools.partial(sim.hog, pixels_per_cell=4)
        assert np.isfinite(small(t(a[:, :, :16, :16]), t(b[:, :, :16, :16])).item())


# ============================================================================ registry
class TestRegistry:
    def test_names_and_aliases(self):
        assert sim.get_similarity("spearman") is sim.spearman
        assert sim.get_similarity("correlation_spearman") is sim.spearman
        assert sim.get_similarity("Correlation_Pearson") is sim.pearson
        assert sim.get_similarity("distance_euclidean") is sim.euclidean
        assert sim.similarity_info("mse").kind == "distance"
        assert sim.similarity_info("ssim").kind == "similarity"
        names = {info.name for info in sim.list_similarities()}
        assert {"spearman", "pearson", "cosine", "ssim", "hog", "mse"} <= names

    def test_callable_passthrough_and_unknown(self):
        f = lambda a, b: a.sum(1)  # noqa: E731
        assert sim.get_similarity(f) is f
        with pytest.raises(ValueError, match="Did you mean spearman"):
            sim.get_similarity("spearmann")
        with pytest.raises(TypeError):
            sim.similarity_info(3)

    def test_register(self):
        name = "test_negative_mse"
        sim.register_similarity(name, lambda a, b: -sim.mse(a, b), kind="similarity")
        try:
            assert sim.get_similarity(name)(torch.zeros(1, 2), torch.ones(1, 2)).item() == -1.0
            with pytest.raises(ValueError, match="already registered"):
                sim.register_similarity(name, sim.mse)
            with pytest.raises(ValueError, match="kind"):
                sim.register_similarity("x", sim.mse, kind="weird")
        finally:
            sim._SIMILARITIES.pop(name, None)

    def test_numpy_adapter(self):
        a, b = pair((3, 2, 4))

        def np_fn(x, y, batched=False):
            assert batched and x.shape == (3, 8)
            return [st.spearmanr(r, s)[0] for r, s in zip(x, y, strict=True)]

        adapted = sim.numpy_similarity(np_fn)
        np.testing.assert_allclose(adapted(t(a), t(b)).numpy(),
                                   sim.spearman(t(a), t(b)).numpy(), atol=1e-12)


# ============================================================================ Quantus oracle
class TestQuantusOracle:
    def test_correlations_and_mse(self, quantus):
        a, b = pair((6, 30))
        np.testing.assert_allclose(sim.spearman(t(a), t(b)).numpy(),
                                   quantus.correlation_spearman(a, b, batched=True), atol=1e-12)
        np.testing.assert_allclose(sim.pearson(t(a), t(b)).numpy(),
                                   quantus.correlation_pearson(a, b, batched=True), atol=1e-12)
        np.testing.assert_allclose(sim.mse(t(a), t(b)).numpy(),
                                   quantus.mse(a, b, batched=True), atol=1e-12)

    def test_ssim_on_flattened_maps(self, quantus):
        # Quantus' RandomLogit applies SSIM to flattened maps: a 1-D window over raster order
        a, b = pair((4, 1, 12, 12))
        fa, fb = a.reshape(4, -1), b.reshape(4, -1)
        ref = quantus.ssim(fa, fb, batched=True)
        np.testing.assert_allclose(sim.ssim(t(fa), t(fb)).numpy(), ref, atol=1e-12)
