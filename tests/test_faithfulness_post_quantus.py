"""ABPC, NAOPC, SRG and R-OMS (issue 23): known answers computed by hand, NAOPC's beam bounds
against the exact bounds of a brute-force enumeration of every ordering, SRG's invariance to
an occlusion strategy that adds an out-of-scope artefact, and the R-OMS helpers."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit import metrics as M
from evalkit.metrics._ties import CONSTANT_MAP
from evalkit.metrics.faithfulness import r_oms, rank_occlusion_strategies
from evalkit.metrics.faithfulness.naopc import FLAT_BOUNDS

warnings.filterwarnings("ignore", category=ek.UndefinedScoreWarning)

W = (3.0, 2.0, 1.0)


class Linear(nn.Module):
    """logit_0 = w . x, logit_1 = -logit_0: removing feature j (to 0) drops logit_0 by w_j x_j."""

    def __init__(self, w=W) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x @ self.w
        return torch.stack([s, -s], 1)


def _linear_case(a):
    model = Linear()
    x = torch.ones((1, 3), dtype=torch.float64)
    y = torch.zeros(1, dtype=torch.int64)
    return model, x, y, torch.tensor([a], dtype=torch.float64)


# ------------------------------------------------------------------------ known answers
# f(x) = 6; an ordering (j1, j2, j3) drops 0, w_j1, w_j1 + w_j2, 6 at k = 0..3, so
# AOPC = (2 w_j1 + w_j2 + 6) / 4: the best ordering (3, 2, 1) gives 14/4 = 3.5, the worst
# (1, 2, 3) 10/4 = 2.5.
@pytest.mark.parametrize("a, want", [
    ((3.0, 2.0, 1.0), 1.0),     # the weights: the best ordering
    ((1.0, 2.0, 3.0), 0.0),     # reversed: the worst
    ((1.0, 3.0, 2.0), 0.25),    # (2, 3, 1): AOPC (4 + 1 + 6) / 4 = 2.75
])
def test_naopc_known_answer(a, want):
    model, x, y, attr = _linear_case(a)
    metric = M.NAOPC(perturb_baseline=0.0, softmax=False, abs=False, normalise=False)
    got = metric(model, x, y, attr)
    np.testing.assert_allclose(got, [want], atol=1e-12)
    np.testing.assert_allclose(metric.aopc_min_, [2.5], atol=1e-12)
    np.testing.assert_allclose(metric.aopc_max_, [3.5], atol=1e-12)
    assert bool(metric.exact_bounds_[0])


def test_naopc_lerf_uses_the_same_bounds():
    """Sufficiency: the least relevant first; the weights' order removes 1, 2, 3: AOPC 2.5,
    the lowest there is, which is the best for LeRF (lower is better)."""
    model, x, y, attr = _linear_case(W)
    metric = M.NAOPC(order="lerf", perturb_baseline=0.0, softmax=False, abs=False,
                     normalise=False)
    np.testing.assert_allclose(metric(model, x, y, attr), [0.0], atol=1e-12)
    assert metric.higher_is_better is False


@pytest.mark.parametrize("a, abpc, srg", [
    # MoRF drops (0, 3, 5, 6), LeRF drops (0, 1, 3, 6): gaps (0, 2, 2, 0)
    ((3.0, 2.0, 1.0), 1.0, 4 / 3),
    # order (2, 3, 1): MoRF drops (0, 2, 3, 6); LeRF (1, 3, 2): (0, 3, 4, 6); gaps (0, -1, -1, 0)
    ((1.0, 3.0, 2.0), -0.5, -2 / 3),
])
def test_abpc_and_srg_known_answers(a, abpc, srg):
    """ABPC: the mean gap over the 4 points; SRG: its trapezoid area over the fractions
    0, 1/3, 2/3, 1."""
    model, x, y, attr = _linear_case(a)
    kw = dict(perturb_baseline=0.0, softmax=False, abs=False, normalise=False)
    m_abpc, m_srg = M.ABPC(**kw), M.SRG(**kw)
    np.testing.assert_allclose(m_abpc(model, x, y, attr), [abpc], atol=1e-12)
    np.testing.assert_allclose(m_srg(model, x, y, attr), [srg], atol=1e-12)
    np.testing.assert_allclose(m_srg.curve_x_, [0, 1 / 3, 2 / 3, 1], atol=1e-12)


def _cnn_data(n=4):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 36, 3)).double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand((n, 3, 6, 6), generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    a = torch.randn((n, 1, 6, 6), generator=g, dtype=torch.float64)
    return model, x, y, a


def test_abpc_is_aopc_morf_minus_lerf_and_srg_the_area_of_the_same_gap():
    model, x, y, a = _cnn_data()
    kw = dict(features_in_step=4, perturb_baseline="mean")
    abpc = M.ABPC(**kw)
    got = abpc(model, x, y, a)
    want = M.AOPC(order="morf", **kw)(model, x, y, a) - M.AOPC(order="lerf", **kw)(model, x, y, a)
    np.testing.assert_allclose(got, want, atol=1e-12)
    srg = M.SRG(**kw)
    s = srg(model, x, y, a)
    np.testing.assert_allclose(srg.curves_, abpc.curves_, atol=1e-12)
    np.testing.assert_allclose(s, np.trapezoid(abpc.curves_, abpc.curve_x_, axis=1), atol=1e-12)


# ------------------------------------------------------------------ NAOPC beam order
def test_beam_order_is_the_two_stable_sorts():
    # the beam keeps each sample's best states in the order of two stable sorts (by -value,
    # then by sample); the CPU path packs (sample, rank of -value, index) into one int64 key
    from evalkit.metrics.faithfulness.naopc import _by_sample_then_value

    gen = torch.Generator().manual_seed(0)
    pool = torch.tensor([0.0, -0.0, 1.0, -1.0, float("inf"), -float("inf"), 0.5],
                        dtype=torch.float64)
    for trial in range(60):
        m, n = int(torch.randint(1, 300, (1,), generator=gen)), 1 + trial % 13
        sample = torch.randint(0, n, (m,), generator=gen)
        value = (pool[torch.randint(0, 7, (m,), generator=gen)] if trial % 2
                 else torch.randn(m, generator=gen, dtype=torch.float64))
        if trial % 7 == 0:
            value[0] = float("nan")  # the stable sorts themselves
        by_value = torch.argsort(-value, stable=True)
        want = by_value[torch.argsort(sample[by_value], stable=True)]
        assert torch.equal(_by_sample_then_value(sample, value, n), want)


# ------------------------------------------------------------------ NAOPC bounds vs exact
class SmallMLP(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                                 nn.Linear(16, 3)).double().eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _brute_force_bounds(model, x, y, baseline=0.0):
    """Every ordering of every sample's features, scored from the model directly (logits):
    (lower, upper, best ordering) per sample."""
    n, d = x.shape
    out = []
    for i in range(n):
        scores = {}
        for r in range(d + 1):
            for subset in itertools.combinations(range(d), r):
                xi = x[i].clone()
                xi[list(subset)] = baseline
                with torch.no_grad():
                    scores[frozenset(subset)] = float(model(xi[None])[0, y[i]])
        full = scores[frozenset()]
        aopcs = {}
        for perm in itertools.permutations(range(d)):
            drops = [full - scores[frozenset(perm[:k])] for k in range(d + 1)]
            aopcs[perm] = sum(drops) / (d + 1)
        best = max(aopcs, key=aopcs.get)
        out.append((min(aopcs.values()), max(aopcs.values()), best))
    return out


@pytest.fixture(scope="module")
def small_inputs():
    d = 6
    model = SmallMLP(d)
    g = torch.Generator().manual_seed(5)
    x = torch.randn((5, d), generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    a = torch.randn((5, d), generator=g, dtype=torch.float64)
    return model, x, y, a, _brute_force_bounds(model, x, y)


def test_exact_bounds_equal_the_enumeration_of_every_ordering(small_inputs):
    model, x, y, a, brute = small_inputs
    metric = M.NAOPC(perturb_baseline=0.0, softmax=False)  # exact="auto": 6 <= 8 features
    scores = metric(model, x, y, a)
    np.testing.assert_allclose(metric.aopc_min_, [b[0] for b in brute], atol=1e-10)
    np.testing.assert_allclose(metric.aopc_max_, [b[1] for b in brute], atol=1e-10)
    assert np.all((scores >= 0) & (scores <= 1))


@pytest.mark.parametrize("width", [1, 2, 3])
def test_beam_bounds_lie_within_the_exact_ones(small_inputs, width):
    model, x, y, a, brute = small_inputs
    metric = M.NAOPC(beam_width=width, exact=False, perturb_baseline=0.0, softmax=False)
    scores = metric(model, x, y, a)
    lower = np.array([b[0] for b in brute])
    upper = np.array([b[1] for b in brute])
    assert np.all(metric.aopc_min_ >= lower - 1e-10)
    assert np.all(metric.aopc_max_ <= upper + 1e-10)
    assert np.all((scores >= 0) & (scores <= 1))
    assert not metric.exact_bounds_.any()


@pytest.mark.parametrize("width", [1, 3])
def test_packed_and_row_wise_beam_search_agree(small_inputs, monkeypatch, width):
    """The beam search packs (sample, feature set) into one int64 key when it fits; the
    row-wise path (many features) gives the same bounds and scores, bit for bit."""
    from evalkit.metrics.faithfulness import naopc

    model, x, y, a, _ = small_inputs
    kw = dict(beam_width=width, exact=False, perturb_baseline=0.0, softmax=False)
    packed = M.NAOPC(**kw)
    s_packed = packed(model, x, y, a)
    monkeypatch.setattr(naopc, "_PACKED_BITS", 0)
    row_wise = M.NAOPC(**kw)
    s_rows = row_wise(model, x, y, a)
    np.testing.assert_array_equal(s_packed, s_rows)
    np.testing.assert_array_equal(packed.aopc_min_, row_wise.aopc_min_)
    np.testing.assert_array_equal(packed.aopc_max_, row_wise.aopc_max_)


def test_a_beam_as_wide_as_the_largest_layer_is_exact(small_inputs):
    """C(6, 3) = 20 sets at the widest step: a beam of 20 keeps every set."""
    model, x, y, a, brute = small_inputs
    metric = M.NAOPC(beam_width=20, exact=False, perturb_baseline=0.0, softmax=False)
    metric(model, x, y, a)
    np.testing.assert_allclose(metric.aopc_min_, [b[0] for b in brute], atol=1e-10)
    np.testing.assert_allclose(metric.aopc_max_, [b[1] for b in brute], atol=1e-10)


def test_the_best_ordering_scores_one(small_inputs):
    model, x, y, _, brute = small_inputs
    d = x.shape[1]
    best = torch.zeros_like(x)
    for i, (_, _, perm) in enumerate(brute):
        for position, feature in enumerate(perm):
            best[i, feature] = d - position  # the first removed gets the largest attribution
    metric = M.NAOPC(perturb_baseline=0.0, softmax=False, abs=False, normalise=False)
    np.testing.assert_allclose(metric(model, x, y, best), np.ones(len(x)), atol=1e-9)


class CountingModel(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize("exact", [False, True])
def test_naopc_forwards_do_not_grow_with_the_batch(small_inputs, exact):
    """One runner call per beam step for all samples and both bounds: the number of forward
    calls is the same for 2 samples as for 5."""
    model, x, y, a, _ = small_inputs
    calls = []
    for n in (2, 5):
        counting = CountingModel(model)
        M.NAOPC(beam_width=2, exact=exact, perturb_baseline=0.0, softmax=False)(
            counting, x[:n], y[:n], a[:n])
        calls.append(counting.calls)
    assert calls[0] == calls[1]
    assert calls[0] <= x.shape[1] + 4  # shape probe, clean scores, the AOPC curve, G steps


# --------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("metric", [M.NAOPC(grouping=3), M.ABPC(), M.SRG()],
                         ids=lambda m: type(m).__name__)
def test_constant_and_nan_maps(metric):
    model, x, y, a = _cnn_data()
    a = a.clone()
    a[0] = 0.0
    a[1] = 0.7
    a[2, 0, 3, 3] = float("nan")
    scores = metric(model, x, y, a)
    assert np.isnan(scores[:3]).all() and np.isfinite(scores[3])
    assert metric.nan_reasons_[0] == CONSTANT_MAP and metric.nan_reasons_[1] == CONSTANT_MAP
    assert "NaN or Inf" in metric.nan_reasons_[2]


def test_naopc_is_undefined_when_no_ordering_matters():
    class Flat(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros((x.shape[0], 2), dtype=x.dtype) + torch.tensor([1.0, 0.0])

    x = torch.rand((2, 4), dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.int64)
    a = torch.rand((2, 4), dtype=torch.float64)
    metric = M.NAOPC(perturb_baseline=0.0)
    assert np.isnan(metric(Flat(), x, y, a)).all()
    assert metric.nan_reasons_[0] == FLAT_BOUNDS


def test_exact_true_refuses_large_inputs():
    model, x, y, a = _cnn_data()
    with pytest.raises(ValueError, match="coarser"):
        M.NAOPC(exact=True)(model, x, y, a)
    with pytest.raises(ValueError):
        M.NAOPC(exact="yes")


def test_metadata():
    for cls, fragment in ((M.ABPC, "Schulz"), (M.NAOPC, "Edin"), (M.SRG, "Blücher")):
        assert cls.family == "faithfulness" and fragment in cls.paper
        assert cls.higher_is_better
        assert fragment in (cls.__doc__ or "")
        assert "higher is better" in (cls.__doc__ or "")
    assert M.ABPC(perturb_baseline="uniform").modalities == ("image", "series", "tabular")
    assert M.SRG(perturb_baseline="delete").modalities == ("tokens",)


# ----------------------------------------------------- SRG and the occlusion strategy
class ArtefactModel(nn.Module):
    """logit_0 = w . clip(x, 0, 1) + beta * (share of features below 0): features are in
    (0.2, 0.8), so an occlusion with -1 is out of the model's scope and adds an artefact that
    grows with the number of occluded features, whichever they are; occlusion with 0 does
    not."""

    def __init__(self, w, beta: float = 3.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float64), requires_grad=False)
        self.beta = beta

    def in_scope(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0, 1) @ self.w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.in_scope(x) + self.beta * (x < 0).to(x.dtype).mean(1)
        return torch.stack([s, -s], 1)


@pytest.fixture(scope="module")
def artefact_case():
    g = torch.Generator().manual_seed(7)
    w = torch.randn(8, generator=g, dtype=torch.float64)
    model = ArtefactModel(w)
    x = 0.2 + 0.6 * torch.rand((6, 8), generator=g, dtype=torch.float64)
    y = torch.zeros(6, dtype=torch.int64)
    good = w * x  # gradient x input
    noisy = good + torch.randn((6, 8), generator=g, dtype=torch.float64)
    return model, x, y, good, noisy


def test_srg_is_invariant_to_an_out_of_scope_occlusion(artefact_case):
    """The paper's claim (SRG breaks the connection to the occlusion strategy) on a model
    where the strategy adds an effect that depends only on how much is occluded: MIF and LIF
    change with the strategy, their difference does not."""
    model, x, y, good, noisy = artefact_case
    kw = dict(softmax=False, abs=False, normalise=False)
    for a in (good, noisy):
        srg = [M.SRG(perturb_baseline=b, **kw)(model, x, y, a) for b in (0.0, -1.0)]
        np.testing.assert_allclose(srg[0], srg[1], atol=1e-12)
        mif = [M.AOPC(order="morf", perturb_baseline=b, **kw)(model, x, y, a) for b in (0.0, -1.0)]
        assert np.abs(mif[0] - mif[1]).min() > 0.1
    # and SRG tells the faithful map from the noisy one
    m = M.SRG(perturb_baseline=-1.0, **kw)
    assert m(model, x, y, good).mean() > m(model, x, y, noisy).mean()


# ------------------------------------------------------------------------------ R-OMS
def test_r_oms_is_one_for_the_in_scope_occlusion(artefact_case):
    """With the model's own occlusion as the reference (the paper's R-OMS), occluding with 0
    is what the model does itself (R-OMS 1); occluding with -1 triggers the artefact."""
    model, x, y, _, _ = artefact_case

    def in_model(xr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s = model.in_scope(torch.where(mask, torch.zeros_like(xr), xr))
        return torch.stack([s, -s], 1)

    zero = r_oms(model, x, y, 0.0, reference=in_model, seed=1)
    minus = r_oms(model, x, y, -1.0, reference=in_model, seed=1)
    np.testing.assert_allclose(zero, np.ones(len(x)), atol=1e-12)
    assert np.all(minus < 1 - 1e-3)
    frame = rank_occlusion_strategies(model, x, y, [-1.0, 0.0], reference=in_model, seed=1)
    assert list(frame.columns) == ["imputer", "r_oms", "sem", "n", "rank"]
    assert frame["imputer"].tolist() == ["constant 0.0", "constant -1.0"]
    assert frame["rank"].tolist() == [1, 2]


def test_r_oms_references_agree_and_are_seeded(artefact_case):
    model, x, y, _, _ = artefact_case

    def unoccluded(xr: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return model(xr)

    default = r_oms(model, x, y, "mean", seed=2)
    np.testing.assert_allclose(r_oms(model, x, y, "mean", reference=unoccluded, seed=2),
                               default, atol=1e-12)
    # an imputer compared with itself (the same seeded draws) is perfectly in scope
    np.testing.assert_allclose(r_oms(model, x, y, "uniform", reference="uniform", seed=2),
                               np.ones(len(x)), atol=1e-12)
    np.testing.assert_array_equal(r_oms(model, x, y, "mean", seed=2), default)
    two = r_oms(model, x, y, "uniform", n_draws=2, seed=2)
    assert two.shape == (len(x),) and np.all((two >= -1) & (two <= 1 + 1e-12))
    with pytest.raises(ValueError, match="fractions"):
        r_oms(model, x, y, "mean", fractions=(0.5, 0.2))
