"""The counter-based keyed generator of ``evalkit._rng`` (issue 19's speed work).

Draw ``j`` of a row is a function of (row key, stream, j) computed for all rows at once. These
tests check what the change must keep: the draws' distributions (moments, uniformity, tails),
independence across keys and along a stream, determinism, that a row's draws depend on its key
alone (batch, chunk and shape prefix), that the NumPy (CPU) path equals the torch path used on
other devices, and that the metrics which draw per sample or per perturbed row still score a
sample the same in any batch or chunk.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evalkit import _rng
from evalkit.testing import cheap_metric, check_metric

# bounds below are about 5 standard errors of the statistic: a failure is not chance


def _keys(n: int, start: int = 0) -> torch.Tensor:
    return torch.arange(start, start + n, dtype=torch.int64)


def _torch_reference(keys: torch.Tensor, n: int, stream: int, kind: str,
                     dtype: torch.dtype) -> torch.Tensor:
    """The draws as the non-CPU path computes them (torch int64 arithmetic)."""
    seeds = _rng.combine(keys, stream)
    words = _rng._bits_torch(seeds, n)
    if kind == "uniform" and dtype != torch.float64:
        return (_rng._shr(words, 40).to(torch.float32) * (1.0 / (1 << 24))).to(dtype)
    u = _rng._shr(words, 11).to(torch.float64)
    if kind == "uniform":
        return u * (1.0 / (1 << 53))
    u = (u + 0.5) * (2.0 / (1 << 53)) - 1.0
    return (torch.erfinv(u) * math.sqrt(2.0)).to(dtype)


class TestDistribution:
    def test_uniform_moments_and_bins_one_draw_per_key(self):
        # the regime the change is for: many keys, few draws each (one per perturbed row)
        u = _rng.uniform(_keys(200_000), (1,), dtype=torch.float64).flatten().numpy()
        assert u.min() >= 0.0 and u.max() < 1.0
        assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / u.size)
        assert abs(u.var() - 1 / 12) < 5 * math.sqrt(1 / 180 / u.size)
        counts = np.bincount((u * 50).astype(np.int64), minlength=50)
        expected = u.size / 50
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 49 + 5 * math.sqrt(2 * 49)  # chi-square, 49 degrees of freedom

    def test_uniform_along_one_stream(self):
        u = _rng.uniform(_keys(1, 77), (200_000,), dtype=torch.float64).flatten().numpy()
        assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / u.size)
        counts = np.bincount((u * 50).astype(np.int64), minlength=50)
        chi2 = float(((counts - u.size / 50) ** 2 / (u.size / 50)).sum())
        assert chi2 < 49 + 5 * math.sqrt(2 * 49)

    def test_float32_uniforms_are_exact_24_bit_values_below_one(self):
        u = _rng.uniform(_keys(500), (400,), dtype=torch.float32)
        assert u.dtype == torch.float32
        scaled = u.double() * (1 << 24)
        assert torch.equal(scaled, scaled.round())
        assert float(u.max()) < 1.0 and float(u.min()) >= 0.0
        assert abs(float(u.double().mean()) - 0.5) < 5 * math.sqrt(1 / 12 / u.numel())

    def test_every_bit_is_fair(self):
        seeds = _rng.combine(_keys(4000), 9)
        words = _rng._bits_torch(seeds, 50).flatten()
        bits = torch.stack([(words >> b) & 1 for b in range(64)], 1).double()
        freq = bits.mean(0)
        assert float((freq - 0.5).abs().max()) < 5 * math.sqrt(0.25 / words.numel())

    def test_normal_moments_and_tails(self):
        z = _rng.normal(_keys(100_000), (4,), dtype=torch.float64).flatten().numpy()
        n = z.size
        assert np.isfinite(z).all()
        assert abs(z.mean()) < 5 / math.sqrt(n)
        assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
        assert abs(float(((z - z.mean()) ** 3).mean())) < 5 * math.sqrt(15 / n)  # skewness
        assert abs(float((z**4).mean()) - 3) < 5 * math.sqrt(96 / n)  # kurtosis
        for t, p in ((1.0, 0.3173105), (2.0, 0.0455003), (3.0, 0.0026998)):
            share = float((np.abs(z) > t).mean())
            assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n), t

    def test_normal_mean_std_and_dtype(self):
        z = _rng.normal(_keys(300), (200,), mean=-1.5, std=0.25)
        assert z.dtype == torch.float32 and z.shape == (300, 200)
        assert abs(float(z.double().mean()) + 1.5) < 5 * 0.25 / math.sqrt(z.numel())
        assert abs(float(z.double().std()) - 0.25) < 0.01

    def test_uniform_range_arguments(self):
        v = _rng.uniform(_keys(100), (100,), low=-2.0, high=3.0, dtype=torch.float64)
        assert float(v.min()) >= -2.0 and float(v.max()) < 3.0
        assert abs(float(v.mean()) - 0.5) < 5 * 5 * math.sqrt(1 / 12 / v.numel())


class TestIndependence:
    def test_neighbouring_keys_are_uncorrelated(self):
        # keys 0, 1, 2, ... (and rows of one sample: combine(key, stream, j)) must not give
        # related streams
        u = _rng.uniform(_keys(2001), (100,), dtype=torch.float64)
        r = np.corrcoef(u[:-1].flatten().numpy(), u[1:].flatten().numpy())[0, 1]
        assert abs(r) < 5 / math.sqrt(2000 * 100)
        rows = _rng.combine(torch.full((2000,), 123, dtype=torch.int64), 5, _keys(2000))
        first = _rng.uniform(rows, (1,), dtype=torch.float64).flatten().numpy()
        r = np.corrcoef(first[:-1], first[1:])[0, 1]
        assert abs(r) < 5 / math.sqrt(2000)

    def test_draws_along_a_stream_are_uncorrelated(self):
        u = _rng.uniform(_keys(50), (4000,), dtype=torch.float64).numpy()
        lag1 = [np.corrcoef(row[:-1], row[1:])[0, 1] for row in u]
        assert abs(float(np.mean(lag1))) < 5 / math.sqrt(50 * 4000)

    def test_streams_of_one_key_differ(self):
        keys = _keys(64)
        a = _rng.uniform(keys, (32,), stream=1, dtype=torch.float64).flatten().numpy()
        b = _rng.uniform(keys, (32,), stream=2, dtype=torch.float64).flatten().numpy()
        assert not np.array_equal(a, b)
        assert abs(np.corrcoef(a, b)[0, 1]) < 5 / math.sqrt(a.size)

    def test_pairs_of_uniforms_fill_the_square(self):
        # 2-D equidistribution of consecutive draws: a 10 x 10 grid of (u_j, u_j+1)
        u = _rng.uniform(_keys(1000), (200,), dtype=torch.float64).numpy()
        cells = (u[:, :-1:2] * 10).astype(int) * 10 + (u[:, 1::2] * 10).astype(int)
        counts = np.bincount(cells.ravel(), minlength=100)
        expected = cells.size / 100
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 99 + 5 * math.sqrt(2 * 99)


class TestKeyedness:
    def test_determinism(self):
        keys = torch.tensor([3, -7, 2**62, -(2**63)], dtype=torch.int64)
        for fn in (_rng.uniform, _rng.normal):
            assert torch.equal(fn(keys, (3, 4)), fn(keys, (3, 4)))

    def test_a_row_depends_on_its_key_alone(self):
        keys = torch.randint(-(2**62), 2**62, (40,), generator=torch.Generator().manual_seed(1))
        for fn in (_rng.uniform, _rng.normal):
            full = fn(keys, (5, 7), dtype=torch.float64, stream=4)
            perm = torch.randperm(40, generator=torch.Generator().manual_seed(2))
            assert torch.equal(fn(keys[perm], (5, 7), dtype=torch.float64, stream=4), full[perm])
            for lo in range(0, 40, 7):  # any chunking
                part = fn(keys[lo : lo + 7], (5, 7), dtype=torch.float64, stream=4)
                assert torch.equal(part, full[lo : lo + 7])

    def test_a_shorter_stream_is_a_prefix(self):
        keys = _keys(9, 100)
        long = _rng.uniform(keys, (50,), dtype=torch.float64)
        assert torch.equal(_rng.uniform(keys, (20,), dtype=torch.float64), long[:, :20])
        zl = _rng.normal(keys, (50,), dtype=torch.float64)
        assert torch.equal(_rng.normal(keys, (20,), dtype=torch.float64), zl[:, :20])

    def test_large_blocks_equal_small_ones(self):
        # rows longer than the NumPy path's block are split into column blocks; many short
        # rows share one block: the numbers are the same
        keys = _keys(3, 5)
        n = _rng._DRAW_BLOCK * 2 + 123
        long = _rng.uniform(keys, (n,), dtype=torch.float64)
        assert torch.equal(long, _torch_reference(keys, n, 0, "uniform", torch.float64))

    @pytest.mark.parametrize("kind", ["uniform", "normal"])
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
    def test_numpy_path_equals_the_torch_path(self, kind, dtype):
        keys = torch.randint(-(2**62), 2**62, (37,), generator=torch.Generator().manual_seed(3))
        for n in (1, 7, 1000):
            fn = _rng.uniform if kind == "uniform" else _rng.normal
            got = fn(keys, (n,), dtype=dtype, stream=11)
            want = _torch_reference(keys, n, 11, kind, dtype)
            assert got.dtype == dtype
            if kind == "uniform":
                assert torch.equal(got, want)
            else:
                torch.testing.assert_close(got, want, rtol=0, atol=1e-12 if dtype ==
                                           torch.float64 else 0)

    def test_empty_draws(self):
        assert _rng.uniform(_keys(0), (4,)).shape == (0, 4)
        assert _rng.normal(_keys(3), (0, 2)).shape == (3, 0, 2)

    def test_global_rngs_untouched(self):
        torch_state = torch.get_rng_state().clone()
        np_state = np.random.get_state()[1].copy()  # noqa: NPY002
        _rng.uniform(_keys(10), (10,))
        _rng.normal(_keys(10), (10,))
        _rng.sample_keys(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), 1)
        assert torch.equal(torch.get_rng_state(), torch_state)
        assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002


class TestSampleKeys:
    def test_one_key_per_sample_in_any_batch(self):
        x = torch.randn(6, 3, 100, 100, generator=torch.Generator().manual_seed(0))
        keys = _rng.sample_keys(x, 5)  # rows of 30,000 values: hashed in column blocks
        assert keys.dtype == torch.int64 and torch.unique(keys).numel() == 6
        for i in range(6):
            assert _rng.sample_keys(x[i : i + 1], 5).item() == keys[i].item()
        assert torch.equal(_rng.sample_keys(x.flip(0), 5), keys.flip(0))
        assert not torch.equal(_rng.sample_keys(x, 6), keys)

    def test_every_position_and_bit_matters(self):
        x = torch.randn(1, 40, generator=torch.Generator().manual_seed(1))
        bits = x.view(torch.int32)
        variants = [x]
        for p in range(40):
            for b in (0, 13, 31):
                v = bits.clone()
                v[0, p] ^= 1 << b if b < 31 else -(2**31)
                variants.append(v.view(torch.float32))
        swapped = x.clone()
        swapped[0, [0, 1]] = x[0, [1, 0]]
        variants.append(swapped)
        keys = _rng.sample_keys(torch.cat(variants), 0)
        assert torch.unique(keys).numel() == len(variants)

    def test_length_matters_and_identical_samples_share_a_key(self):
        z3 = torch.zeros(2, 3)
        z4 = torch.zeros(1, 4)
        k3 = _rng.sample_keys(z3, 0)
        assert k3[0] == k3[1]
        assert k3[0] != _rng.sample_keys(z4, 0)[0]

    def test_token_ids_and_dtypes(self):
        ids = torch.randint(0, 1000, (5, 64), generator=torch.Generator().manual_seed(2))
        assert torch.equal(_rng.sample_keys(ids, 3), _rng.sample_keys(ids.float(), 3))


# metrics that draw per sample or per perturbed row: a sample's score may not depend on the
# batch, the chunking or the other samples
_METRICS = {
    "PGI": cheap_metric("PGI"),
    "PGU": cheap_metric("PGU"),
    "Infidelity": cheap_metric("Infidelity"),
    "MonotonicityCorrelation": cheap_metric("MonotonicityCorrelation"),
    "FaithfulnessCorrelation": cheap_metric("FaithfulnessCorrelation"),
    "SoftComprehensiveness": cheap_metric("SoftComprehensiveness"),
    "SoftSufficiency": cheap_metric("SoftSufficiency"),
}
_CHECKS = ("per_sample_independence", "batch_size_invariance", "chunk_invariance",
           "seeded_determinism", "declared_stochasticity")


@pytest.mark.parametrize("name", list(_METRICS))
@pytest.mark.parametrize("modality", ["tabular", "series"])
def test_keyed_metrics_are_batch_invariant(name, modality):
    metric = _METRICS[name]
    if modality not in metric.modalities:
        pytest.skip(f"{name} does not declare {modality} inputs")
    results = check_metric(metric, modality=modality, checks=_CHECKS, raise_on_failure=False)
    failed = [f"{r.name}: {r.message}" for r in results if not r.passed]
    assert not failed, failed
    assert any(not r.skipped for r in results)


class TestDrawsAtPositions:
    """``at=``: only some draws of each row, the same numbers as the whole row's."""

    @pytest.mark.parametrize("kind", ["uniform", "normal"])
    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
    def test_equal_to_the_whole_rows_draws(self, kind, dtype):
        gen = torch.Generator().manual_seed(4)
        keys = torch.randint(-(2**62), 2**62, (300,), generator=gen)
        fn = _rng.uniform if kind == "uniform" else _rng.normal
        for shape, m in (((30,), 8), ((3, 500), 40), ((_rng._DRAW_BLOCK + 3,), 2)):
            at = torch.randint(0, math.prod(shape), (300, m), generator=gen)
            for kw in ({}, {"low": -1.0, "high": 2.0} if kind == "uniform"
                       else {"mean": 0.5, "std": 0.1}):
                whole = fn(keys, shape, dtype=dtype, stream=5, **kw)
                got = fn(keys, shape, dtype=dtype, stream=5, at=at, **kw)
                assert got.dtype == dtype and got.shape == at.shape
                assert torch.equal(got, whole.reshape(300, -1).gather(1, at))

    def test_positions_wider_than_a_block(self):
        keys = _keys(3, 11)
        n = _rng._DRAW_BLOCK * 2 + 5
        at = torch.randint(0, n, (3, _rng._DRAW_BLOCK + 7),
                           generator=torch.Generator().manual_seed(2))
        for fn in (_rng.uniform, _rng.normal):
            assert torch.equal(fn(keys, (n,), at=at), fn(keys, (n,)).gather(1, at))

    def test_the_device_paths_formula(self):
        # the words at positions as the non-CPU path computes them
        keys = _keys(20, 3)
        at = torch.randint(0, 50, (20, 7), generator=torch.Generator().manual_seed(5))
        seeds = _rng.combine(keys, 2)
        words = _rng.mix(seeds.unsqueeze(1) + (at + 1) * _rng._GOLDEN_S)
        assert torch.equal(words, _rng._bits_torch(seeds, 50).gather(1, at))

    def test_rows_and_positions_must_match(self):
        with pytest.raises(ValueError, match="one row per key"):
            _rng.uniform(_keys(3), (5,), at=torch.zeros((2, 1), dtype=torch.int64))

    def test_noise_models_sample_at(self):
        from evalkit.perturb import GaussianNoise, Noise, UniformNoise

        class Doubled(Noise):  # a user noise without its own sample_at: the generic gather
            def sample(self, keys, shape, dtype):
                return 2 * _rng.uniform(keys, shape, dtype=dtype)

        keys = _keys(64)
        at = torch.randint(0, 24, (64, 5), generator=torch.Generator().manual_seed(6))
        for noise in (GaussianNoise(0.2, 0.3), UniformNoise(0.1), UniformNoise(-1.0, 3.0),
                      UniformNoise(0.0), Doubled()):
            whole = noise.sample(keys, (4, 6), torch.float32).reshape(64, -1)
            assert torch.equal(noise.sample_at(keys, (4, 6), torch.float32, at),
                               whole.gather(1, at)), noise


@pytest.mark.parametrize("name", ["PGI", "PGU"])
@pytest.mark.parametrize("k", [0.1, 0.3, 0.9])
def test_prediction_gap_positions_equal_the_blend(monkeypatch, name, k):
    # drawing only the perturbed elements' noise gives the scores of drawing whole rows, also
    # with rows of unequal perturbed counts (groups of 1 and 2 features, a sample with fewer)
    from evalkit.metrics.faithfulness import prediction_gap

    gen = torch.Generator().manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 12, 3))
    x = torch.randn(5, 2, 12, generator=gen)
    a = torch.randn(5, 2, 12, generator=gen)
    labels = (torch.arange(12).repeat(5, 1) // 2).unsqueeze(1)  # (N, 1, T): per time step
    labels[0, :, 6:] = 5  # sample 0: fewer features, one large group
    y = torch.tensor([0, 1, 2, 0, 1])
    scores = {}
    # the whole rows' noise; positions found per chunk; positions found once for the call
    for share, whole_call in ((0.0, 0), (1.0, 0), (1.0, 1 << 22)):
        monkeypatch.setattr(prediction_gap, "_POSITIONS_SHARE", share)
        monkeypatch.setattr(prediction_gap, "_WHOLE_CALL_ELEMENTS", whole_call)
        metric = getattr(prediction_gap, name)(k=k, nr_samples=6, grouping=labels, seed=3,
                                               auc=True)
        scores[share, whole_call] = torch.as_tensor(
            metric(model, x, y, a, modality="series", batch_size=7))
    first, *others = scores.values()
    assert all(torch.equal(first, other) for other in others)


def test_sample_keys_of_an_empty_batch_are_empty():
    # reshape(0, -1) cannot infer the row width: the keys of no samples are no keys
    for shape in ((0, 30), (0, 3, 8, 8), (0,)):
        keys = _rng.sample_keys(torch.zeros(shape), 0)
        assert keys.dtype == torch.int64 and keys.shape == (0,)
    full = torch.randn(4, 3, 5)
    assert torch.equal(_rng.sample_keys(full, 7)[:2], _rng.sample_keys(full[:2], 7))


def _argpartition_subsets(keys: torch.Tensor, shape: tuple[int, ...], k: int,
                          valid: torch.Tensor | None = None) -> torch.Tensor:
    """The k smallest float64 uniforms of each row as every draw and an argpartition give
    them (what ``smallest_uniforms`` must reproduce), ascending."""
    u = _rng.uniform(keys, shape, dtype=torch.float64)
    if valid is not None:
        u = u.masked_fill(~valid.view(valid.shape[0], *[1] * (len(shape) - 1), -1), math.inf)
    idx = np.argpartition(u.numpy(), k - 1, axis=-1)[..., :k]
    idx.sort(axis=-1)
    return torch.from_numpy(idx)


class TestSmallestUniforms:
    @pytest.mark.parametrize(("shape", "k"), [((20, 1500), 150), ((20, 1500), 1),
                                              ((7, 3, 5000), 20), ((40, 64), 6),
                                              ((5, 300), 200), ((9,), 3), ((4, 30), 30)])
    def test_equal_to_an_argpartition_of_every_draw(self, shape, k):
        keys = _rng.combine(_keys(13), 0xFC0)
        assert torch.equal(_rng.smallest_uniforms(keys, shape, k),
                           _argpartition_subsets(keys, shape, k))

    def test_a_wide_row_without_candidates_is_drawn_in_full(self):
        # one row a block (over 32,768 draws) and k=1: no draw of this key is under the
        # threshold, which left the candidate ranking nothing to take from
        keys = torch.tensor([4908])
        assert torch.equal(_rng.smallest_uniforms(keys, (1, 32769), 1),
                           _argpartition_subsets(keys, (1, 32769), 1))

    def test_invalid_positions_are_never_chosen(self):
        keys = _keys(12)
        valid = torch.ones(12, 1000, dtype=torch.bool)
        valid[::3, 600:] = False
        got = _rng.smallest_uniforms(keys, (50, 1000), 40, valid=valid)
        assert torch.equal(got, _argpartition_subsets(keys, (50, 1000), 40, valid))
        assert int(got[::3].max()) < 600

    def test_rows_short_of_candidates_are_drawn_in_full(self, monkeypatch):
        # no margin above k: about half the rows have fewer than k draws under the threshold
        monkeypatch.setattr(_rng, "_CANDIDATE_SIGMAS", 0.0)
        keys = _keys(10)
        valid = torch.ones(10, 800, dtype=torch.bool)
        valid[1, 500:] = False
        assert torch.equal(_rng.smallest_uniforms(keys, (30, 800), 60, valid=valid),
                           _argpartition_subsets(keys, (30, 800), 60, valid))

    def test_a_tie_at_the_kth_draw_marks_the_row(self):
        # equal 53-bit draws are too rare to search for: the ranking step gets doctored keys.
        # Row 0's 2nd and 3rd smallest tie (k=2: argpartition would take either), row 1's 1st
        # and 2nd tie below the k-th (no ambiguity), row 2 has one candidate only
        row = np.array([0, 0, 0, 0, 1, 1, 1, 2])
        draws = np.array([9, 5, 1, 5, 3, 3, 8, 2])
        ends = np.array([4, 7, 8])  # the candidates up to each row's end
        chosen, bad = _rng._rank_candidates(draws | (row << 53), row, ends, 2)
        assert bad.tolist() == [True, False, True]
        assert chosen[row == 1].tolist() == [True, True, False]

    def test_errors(self):
        with pytest.raises(ValueError, match="`k`"):
            _rng.smallest_uniforms(_keys(2), (10,), 11)
        with pytest.raises(ValueError, match="valid positions"):
            _rng.smallest_uniforms(_keys(2), (10,), 5,
                                   valid=torch.arange(10).expand(2, 10) < 3)

    def test_empty(self):
        assert _rng.smallest_uniforms(_keys(0), (4, 10), 2).shape == (0, 4, 2)
