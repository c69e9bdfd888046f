"""Tests of the input-validation helpers (`evalkit._validation`) and the stateless RNG
(`evalkit._rng`)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from evalkit import _rng
from evalkit._batching import parse_bytes, resolve_batch_size
from evalkit._validation import (
    as_tensor,
    check_attributions,
    check_bool,
    check_inputs,
    check_labels,
    check_masks,
    check_option,
    check_scalar,
    is_numpy_like,
    to_numpy,
)

M64 = (1 << 64) - 1


# ============================================================================ _validation
class TestAsTensor:
    def test_numpy_shares_but_never_writes(self):
        arr = np.arange(12, dtype=np.float32).reshape(3, 4)
        ref = arr.copy()
        t = as_tensor(arr, "x")
        assert t.dtype == torch.float32 and tuple(t.shape) == (3, 4)
        # out-of-place maths on the result leaves the source alone
        _ = t * 2 + 1
        _ = t.abs().sum()
        np.testing.assert_array_equal(arr, ref)

    def test_read_only_numpy_is_accepted_and_copied(self):
        arr = np.arange(6, dtype=np.float64).reshape(2, 3)
        arr.flags.writeable = False
        t = as_tensor(arr, "x")
        assert torch.equal(t, torch.arange(6, dtype=torch.float64).reshape(2, 3))
        # the tensor does not alias the read-only buffer: writing to it must not fail or leak
        t[0, 0] = 100.0
        assert arr[0, 0] == 0.0
        assert not arr.flags.writeable

    def test_non_contiguous_and_fortran_and_big_endian(self):
        base = np.arange(24, dtype=np.float32).reshape(4, 6)
        sliced = base[:, ::2]
        fortran = np.asfortranarray(base)
        big = base.astype(">f4")
        for arr in (sliced, fortran, big):
            ref = arr.copy()
            t = as_tensor(arr, "x")
            np.testing.assert_array_equal(t.numpy(), ref)
            np.testing.assert_array_equal(arr, ref)
        assert as_tensor(big, "x").dtype == torch.float32

    def test_tensor_is_detached_and_not_mutated(self):
        src = torch.randn(3, 4, requires_grad=True)
        ref = src.detach().clone()
        t = as_tensor(src, "x")
        assert not t.requires_grad
        _ = t * 3
        assert torch.equal(src.detach(), ref)
        assert src.requires_grad and src.grad is None

    def test_dtype_and_device_conversion_does_not_touch_source(self):
        arr = np.arange(5, dtype=np.int64)
        t = as_tensor(arr, "y", dtype=torch.float64, device="cpu")
        assert t.dtype == torch.float64
        t += 1  # a converted copy: the source keeps its values
        np.testing.assert_array_equal(arr, np.arange(5))

    def test_lists_scalars_and_numpy_scalars(self):
        assert as_tensor([1.0, 2.0], "x").tolist() == [1.0, 2.0]
        assert as_tensor(3, "x").item() == 3
        assert as_tensor(np.float32(1.5), "x").item() == 1.5

    @pytest.mark.parametrize("bad", [object(), "abc", {"a": 1}, None])
    def test_bad_type_names_argument(self, bad):
        with pytest.raises(TypeError, match="`my_arg`"):
            as_tensor(bad, "my_arg")

    def test_object_array_rejected_naming_argument(self):
        with pytest.raises(TypeError, match="`weird`"):
            as_tensor(np.array([object(), object()]), "weird")


def test_is_numpy_like_and_to_numpy():
    assert is_numpy_like(np.zeros(2)) and is_numpy_like(np.float32(1))
    assert not is_numpy_like(torch.zeros(2)) and not is_numpy_like([1.0])
    t = torch.arange(3.0, requires_grad=True)
    out = to_numpy(t * 2)
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, [0.0, 2.0, 4.0])


class TestCheckInputs:
    def test_rank_error_names_argument_and_shape(self):
        with pytest.raises(ValueError, match=r"`x_in`.*at least 2 dimensions.*\(5,\)"):
            check_inputs(torch.zeros(5), "x_in")

    def test_empty_batch(self):
        with pytest.raises(ValueError, match=r"`x`.*empty batch"):
            check_inputs(torch.zeros(0, 3, 4, 4))

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
    def test_non_finite_names_samples(self, bad):
        x = torch.zeros(4, 2, 3)
        x[2, 1, 0] = bad
        with pytest.raises(ValueError, match=r"`x`.*NaN or Inf.*samples 2\b"):
            check_inputs(x)

    def test_integer_inputs_become_float_and_source_untouched(self):
        x = torch.arange(6).reshape(2, 3)
        out = check_inputs(x)
        assert out.is_floating_point()
        assert x.dtype == torch.int64

    def test_valid_input_returned(self):
        x = torch.randn(2, 3, 4, 4)
        assert check_inputs(x) is x


class TestCheckLabels:
    def test_none_passthrough(self):
        assert check_labels(None, 3) is None

    def test_scalar_rejected(self):
        with pytest.raises(ValueError, match=r"`y`.*scalar"):
            check_labels(torch.tensor(1), 3)

    def test_wrong_length_names_both(self):
        with pytest.raises(ValueError, match=r"`labels` has 2 entries but `x` has 3"):
            check_labels(torch.tensor([0, 1]), 3, name="labels")

    def test_ok(self):
        y = torch.tensor([0, 1, 2])
        assert check_labels(y, 3) is y


class TestCheckAttributions:
    x = torch.zeros(2, 3, 5, 4)

    @pytest.mark.parametrize(
        "shape", [(2, 3, 5, 4), (2, 1, 5, 4), (2, 5, 4)]
    )
    def test_accepted_shapes_broadcast(self, shape):
        a = torch.randn(shape)
        out = check_attributions(a, self.x)
        assert out.ndim == 4
        assert torch.broadcast_shapes(out.shape, self.x.shape) == self.x.shape
        # the values are the same (only a view / unsqueeze)
        assert torch.equal(out.reshape(a.shape), a)

    @pytest.mark.parametrize(
        "shape", [(2, 2, 5, 4), (2, 3, 4, 5), (2, 20), (2, 3, 5, 4, 1), (2, 5)]
    )
    def test_rejected_shapes_name_argument(self, shape):
        with pytest.raises(ValueError, match=r"`a` of shape .*cannot be aligned"):
            check_attributions(torch.randn(shape), self.x)

    def test_wrong_sample_count(self):
        with pytest.raises(ValueError, match=r"`attr` has 3 samples but `x` has 2"):
            check_attributions(torch.randn(3, 3, 5, 4), self.x, name="attr")

    def test_tabular(self):
        x = torch.zeros(4, 6)
        assert check_attributions(torch.randn(4, 6), x).shape == (4, 6)
        with pytest.raises(ValueError, match="`a`"):
            check_attributions(torch.randn(4, 1), x)

    def test_integer_attributions_become_float(self):
        a = torch.ones(2, 3, 5, 4, dtype=torch.int64)
        assert check_attributions(a, self.x).is_floating_point()

    def test_non_finite(self):
        a = torch.randn(2, 3, 5, 4)
        a[1, 0, 0, 0] = float("nan")
        assert torch.isnan(check_attributions(a, self.x)).any()  # allowed by default
        with pytest.raises(ValueError, match="`a` contains NaN"):
            check_attributions(a, self.x, allow_non_finite=False)


class TestCheckMasks:
    x = torch.zeros(2, 3, 4, 4)

    def test_binary_float_to_bool(self):
        s = (torch.rand(2, 4, 4) > 0.5).float()
        out = check_masks(s, self.x)
        assert out.dtype == torch.bool and out.shape == (2, 1, 4, 4)
        assert torch.equal(out[:, 0], s.bool())

    def test_non_binary_rejected(self):
        s = torch.zeros(2, 1, 4, 4)
        s[0, 0, 0, 0] = 0.5
        with pytest.raises(ValueError, match=r"`s` must be a binary mask.*0\.5"):
            check_masks(s, self.x)

    def test_nan_mask_rejected(self):
        s = torch.zeros(2, 1, 4, 4)
        s[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="`s` contains NaN"):
            check_masks(s, self.x)

    def test_mismatched_n_names_mask(self):
        with pytest.raises(ValueError, match=r"`s` has 3 samples"):
            check_masks(torch.zeros(3, 1, 4, 4), self.x)


class TestScalarBoolOption:
    def test_check_scalar(self):
        assert check_scalar("k", 3, int, min_val=1) == 3
        with pytest.raises(TypeError, match="`k` must be an integer, got a bool"):
            check_scalar("k", True, int)
        with pytest.raises(TypeError, match="`k` must be an integer, got str"):
            check_scalar("k", "3", int)
        with pytest.raises(ValueError, match="`k` must be >= 1, got 0"):
            check_scalar("k", 0, int, min_val=1)
        with pytest.raises(ValueError, match="`p` must be < 1"):
            check_scalar("p", 1.0, float, max_val=1.0, include_max=False)
        with pytest.raises(ValueError, match="`p` must be > 0"):
            check_scalar("p", 0.0, float, min_val=0.0, include_min=False)
        assert check_scalar("k", None, int, allow_none=True) is None
        assert check_scalar("flag", True, (bool, int)) is True

    def test_check_bool(self):
        assert check_bool("abs", np.bool_(True)) is True
        with pytest.raises(TypeError, match="`abs` must be True or False"):
            check_bool("abs", 1)

    def test_check_option(self):
        assert check_option("order", "morf", ("morf", "lerf")) == "morf"
        with pytest.raises(ValueError, match=r"`order` must be one of 'morf', 'lerf'; got 'MORF'"):
            check_option("order", "MORF", ("morf", "lerf"))


class TestBatching:
    def test_parse_bytes(self):
        assert parse_bytes(None) is None
        assert parse_bytes(1000) == 1000
        assert parse_bytes("2KiB") == 2048
        assert parse_bytes(" 1.5 MB ") == 1_500_000
        for bad in ("lots", "12 parsecs", 0, -3):
            with pytest.raises(ValueError, match="memory_budget"):
                parse_bytes(bad)

    def test_resolve_batch_size(self):
        from evalkit import _batching

        assert resolve_batch_size(7, 10**9) == 7
        assert resolve_batch_size(None, 1000, 4000) == 4
        assert resolve_batch_size(None, 1000, "4kb") == 4
        assert resolve_batch_size(None, 10**12) == 1  # never 0
        cap = _batching.MAX_AUTO_BATCH
        cpu_cap = cap["cpu"] if isinstance(cap, dict) else cap
        assert resolve_batch_size(None, 256) == cpu_cap  # capped
        assert resolve_batch_size(None, 1) == _batching.SMALL_ROWS_MAX_BATCH  # tiny rows
        for bad in (0, -1, 2.5, True):
            with pytest.raises(ValueError, match="batch_size"):
                resolve_batch_size(bad, 10)


# ============================================================================ _rng
def _splitmix64_finaliser(v: int) -> int:
    """Pure-Python reference: the SplitMix64 output function on uint64."""
    v &= M64
    v = ((v ^ (v >> 30)) * 0xBF58476D1CE4E5B9) & M64
    v = ((v ^ (v >> 27)) * 0x94D049BB133111EB) & M64
    return v ^ (v >> 31)


def _to_signed(v: int) -> int:
    v &= M64
    return v - (1 << 64) if v >= 1 << 63 else v


def _global_rng_states():
    np_state = np.random.get_state()  # noqa: NPY002
    return (torch.get_rng_state().clone(), np_state, random.getstate())


def _assert_global_rng_unchanged(before):
    t, n, p = before
    assert torch.equal(torch.get_rng_state(), t)
    n2 = np.random.get_state()  # noqa: NPY002
    assert n2[0] == n[0] and np.array_equal(n2[1], n[1]) and n2[2:] == n[2:]
    assert random.getstate() == p


class TestMix:
    def test_matches_pure_python_reference(self):
        gen = random.Random(1234)
        vals = [0, 1, 2, M64, 1 << 63, (1 << 63) - 1, 0x9E3779B97F4A7C15]
        vals += [gen.getrandbits(64) for _ in range(200)]
        t = torch.tensor([_to_signed(v) for v in vals], dtype=torch.int64)
        got = _rng.mix(t).tolist()
        want = [_to_signed(_splitmix64_finaliser(v)) for v in vals]
        assert got == want
        # the scalar helper agrees too
        assert [_rng._mix_int(v) for v in vals] == want

    def test_known_value(self):
        # SplitMix64's first output for seed 0 is mix(0 + golden gamma)
        golden = 0x9E3779B97F4A7C15
        t = torch.tensor([_to_signed(golden)], dtype=torch.int64)
        assert _rng.mix(t).item() == _to_signed(0xE220A8397B1DCDAF)

    def test_bijective_on_sample(self):
        t = torch.arange(-5000, 5000, dtype=torch.int64)
        assert torch.unique(_rng.mix(t)).numel() == t.numel()


class TestDraws:
    def test_uniform_statistics(self):
        keys = torch.arange(20, dtype=torch.int64)
        u = _rng.uniform(keys, (2000,), dtype=torch.float64)
        assert u.shape == (20, 2000)
        assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
        assert abs(float(u.mean()) - 0.5) < 0.01
        assert abs(float(u.var()) - 1 / 12) < 0.005
        v = _rng.uniform(keys, (100,), low=-2.0, high=3.0)
        assert v.dtype == torch.float32
        assert float(v.min()) >= -2.0 and float(v.max()) < 3.0

    def test_normal_statistics(self):
        keys = torch.arange(10, dtype=torch.int64) * 7919
        z = _rng.normal(keys, (4000,), mean=2.0, std=0.5, dtype=torch.float64)
        assert abs(float(z.mean()) - 2.0) < 0.02
        assert abs(float(z.std()) - 0.5) < 0.02

    def test_rows_are_not_all_the_same(self):
        u = _rng.uniform(torch.arange(5, dtype=torch.int64), (50,))
        assert torch.unique(u[:, 0]).numel() == 5

    def test_determinism(self):
        keys = torch.tensor([3, -7, 2**62, -(2**63)], dtype=torch.int64)
        for fn in (_rng.uniform, _rng.normal):
            assert torch.equal(fn(keys, (3, 4)), fn(keys, (3, 4)))
        assert torch.equal(_rng.scalar_uniform(keys), _rng.scalar_uniform(keys))

    def test_streams_differ(self):
        keys = torch.arange(4, dtype=torch.int64)
        u0 = _rng.uniform(keys, (8,), stream=0)
        assert not torch.equal(u0, _rng.uniform(keys, (8,), stream=1))

    def test_key_independence_of_rows(self):
        keys = torch.tensor([11, 22, 33, 44, 55], dtype=torch.int64)
        full_u = _rng.uniform(keys, (6, 3))
        full_n = _rng.normal(keys, (6, 3))
        full_s = _rng.scalar_uniform(keys, stream=3)
        other = torch.tensor([99, 33, -1], dtype=torch.int64)  # 33 in a different batch/position
        for i in range(len(keys)):
            alone = keys[i : i + 1]
            assert torch.equal(_rng.uniform(alone, (6, 3))[0], full_u[i])
            assert torch.equal(_rng.normal(alone, (6, 3))[0], full_n[i])
            assert torch.equal(_rng.scalar_uniform(alone, stream=3)[0], full_s[i])
        assert torch.equal(_rng.uniform(other, (6, 3))[1], full_u[2])

    def test_scalar_uniform_range_and_stats(self):
        u = _rng.scalar_uniform(torch.arange(20000, dtype=torch.int64))
        assert u.dtype == torch.float64
        assert float(u.min()) >= 0 and float(u.max()) < 1
        assert abs(float(u.mean()) - 0.5) < 0.01

    def test_permutation_keys(self):
        keys = torch.arange(6, dtype=torch.int64)
        pk = _rng.permutation_keys(keys, 9)
        assert pk.shape == (6, 9) and pk.dtype == torch.float64
        perms = pk.argsort(1)
        for row in perms:
            assert sorted(row.tolist()) == list(range(9))
        # not all the same permutation
        assert len({tuple(r.tolist()) for r in perms}) > 1

    def test_combine(self):
        keys = torch.tensor([1, 2, 3], dtype=torch.int64)
        a = _rng.combine(keys, 5)
        assert torch.equal(a, _rng.combine(keys, 5))
        assert not torch.equal(a, _rng.combine(keys, 6))
        # a tensor stream gives per-row streams; elementwise
        s = torch.tensor([0, 1, 2])
        c = _rng.combine(keys, s)
        for i in range(3):
            assert c[i] == _rng.combine(keys[i : i + 1], s[i : i + 1])[0]
        # nested combination is order-sensitive
        assert not torch.equal(_rng.combine(keys, 1, 2), _rng.combine(keys, 2, 1))

    def test_derive_seed(self):
        assert _rng.derive_seed(1, "layer", "fc") == _rng.derive_seed(1, "layer", "fc")
        assert _rng.derive_seed(1, "layer", "fc") != _rng.derive_seed(2, "layer", "fc")
        assert _rng.derive_seed(1, "layer", "fc") != _rng.derive_seed(1, "layer", "fc2")
        assert -(2**63) <= _rng.derive_seed(-5, 3) < 2**63


def _invert_xorshift_right(v: int, s: int) -> int:
    out = v
    for _ in range(64 // s + 1):
        out = v ^ (out >> s)
    return out & M64


def _inverse_mix(v: int) -> int:
    inv1 = pow(0xBF58476D1CE4E5B9, -1, 1 << 64)
    inv2 = pow(0x94D049BB133111EB, -1, 1 << 64)
    v &= M64
    v = _invert_xorshift_right(v, 31)
    v = (v * inv2) & M64
    v = _invert_xorshift_right(v, 27)
    v = (v * inv1) & M64
    return _invert_xorshift_right(v, 30)


def _key_for_generator_seed(seed: int, stream: int = 0) -> int:
    """The key whose stream state ``_rng.combine(key, stream)`` is ``seed`` (combine is a
    bijection)."""
    golden_inv = pow(0x9E3779B97F4A7C15, -1, 1 << 64)
    s = _rng._mix_int(stream + 1) & M64
    u = _inverse_mix(seed)
    return _to_signed(((u - s - 1) * golden_inv) & M64)


def test_inverse_helpers_are_right():
    for v in (0, 1, 12345, M64, 1 << 63):
        assert _inverse_mix(_splitmix64_finaliser(v)) == v & M64
    for seed in (5, 5 + (1 << 40), 123456789):
        key = torch.tensor([_key_for_generator_seed(seed)], dtype=torch.int64)
        assert _rng.combine(key, 0).tolist() == [_to_signed(seed)]


def test_distinct_keys_give_distinct_draws():
    # keys whose stream states differ only above bit 32 must still give different streams

    k1 = _key_for_generator_seed(5)
    k2 = _key_for_generator_seed(5 + (1 << 40))
    keys = torch.tensor([k1, k2], dtype=torch.int64)
    assert k1 != k2
    u = _rng.uniform(keys, (16,))
    assert not torch.equal(u[0], u[1])


class TestSampleKeys:
    def test_depends_only_on_values_and_seed(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(5, 3, 4, 4, generator=g)
        k = _rng.sample_keys(x, 7)
        assert k.dtype == torch.int64 and k.shape == (5,)
        assert torch.unique(k).numel() == 5
        # same sample, any batch, any position
        perm = torch.tensor([4, 2, 0, 1, 3])
        assert torch.equal(_rng.sample_keys(x[perm], 7), k[perm])
        for i in range(5):
            assert _rng.sample_keys(x[i : i + 1], 7).item() == k[i].item()
        other = torch.cat([torch.randn(2, 3, 4, 4, generator=g), x[1:2]])
        assert _rng.sample_keys(other, 7)[2] == k[1]
        # identical samples get identical keys
        dup = torch.stack([x[0], x[0]])
        kk = _rng.sample_keys(dup, 7)
        assert kk[0] == kk[1] == k[0]
        # the seed matters
        assert not torch.equal(_rng.sample_keys(x, 8), k)

    def test_dtype_and_layout_agnostic(self):
        x = torch.randn(3, 2, 5)
        k = _rng.sample_keys(x, 1)
        assert torch.equal(_rng.sample_keys(x.double(), 1), k)
        nc = x.transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous view, same values
        assert not nc.is_contiguous()
        assert torch.equal(_rng.sample_keys(nc, 1), k)
        # numpy-backed tensor
        assert torch.equal(_rng.sample_keys(torch.from_numpy(x.numpy().copy()), 1), k)

    def test_does_not_mutate(self):
        x = torch.randn(3, 4)
        ref = x.clone()
        _rng.sample_keys(x, 3)
        assert torch.equal(x, ref)


class TestResolveSeed:
    def test_int_and_numpy_int(self):
        assert _rng.resolve_seed(5) == 5
        assert _rng.resolve_seed(np.int64(9)) == 9
        assert isinstance(_rng.resolve_seed(np.int32(9)), int)

    def test_none_draws_fresh_entropy_without_global_rng(self):
        before = _global_rng_states()
        seeds = {_rng.resolve_seed(None) for _ in range(5)}
        _assert_global_rng_unchanged(before)
        assert len(seeds) > 1
        assert all(isinstance(s, int) and 0 <= s < 2**63 for s in seeds)

    def test_generator(self):
        g1 = torch.Generator().manual_seed(3)
        g2 = torch.Generator().manual_seed(3)
        a = _rng.resolve_seed(g1)
        assert a == _rng.resolve_seed(g2)  # same generator state, same seed
        assert _rng.resolve_seed(g1) != a  # the generator was advanced

    @pytest.mark.parametrize("bad", [True, 1.5, "3", [1]])
    def test_bad(self, bad):
        with pytest.raises(TypeError, match="`seed`"):
            _rng.resolve_seed(bad)


def test_global_rng_untouched_by_all_rng_functions():
    torch.manual_seed(123)
    np.random.seed(5)  # noqa: NPY002
    random.seed(9)
    before = _global_rng_states()
    keys = _rng.sample_keys(torch.randn(4, 3, generator=torch.Generator().manual_seed(1)), 2)
    _rng.uniform(keys, (10,))
    _rng.normal(keys, (10,))
    _rng.scalar_uniform(keys)
    _rng.permutation_keys(keys, 5)
    _rng.combine(keys, 1, torch.arange(4))
    _rng.resolve_seed(None)
    _rng.resolve_seed(torch.Generator().manual_seed(0))
    _rng.derive_seed(1, "a")
    _assert_global_rng_unchanged(before)
