"""Tabular data (N, F) end to end: the column spec, its groups as default features, noise that
keeps rows valid, PGI/PGU, the ground-truth agreement family, localisation on feature sets,
models (callables, predict_proba, scikit-learn, torch MLPs) and known answers on a linear
model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit import metrics as M
from evalkit._validation import UndefinedScoreWarning
from evalkit.modality import TabularModality
from evalkit.models import wrap_model
from evalkit.perturb import (
    ColumnNoise,
    Columns,
    DefaultFeatures,
    GaussianNoise,
    Pixels,
    UniformNoise,
    make_grouping,
)
from evalkit.perturb.noise import mean_absolute_noise

# a table: a continuous column, an ordinal column with levels 0..3, a one-hot block of three
# categories, a label-encoded categorical column with codes {0, 1, 2}, a continuous column
KINDS = ["continuous", "ordinal", "categorical", "categorical", "categorical", "categorical",
         "continuous"]
SPEC = TabularModality(kinds=KINDS, groups=[[2, 3, 4]], categories={1: [0, 1, 2, 3],
                                                                      5: [0, 1, 2]},
                       scales=[0.5, 1, 1, 1, 1, 1, 2.0], flip_prob=0.3)


def make_table(n: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 7)
    x[:, 0] = torch.randn(n, generator=g)
    x[:, 1] = torch.randint(0, 4, (n,), generator=g).float()
    x[:, 2:5] = nn.functional.one_hot(torch.randint(0, 3, (n,), generator=g), 3).float()
    x[:, 5] = torch.randint(0, 3, (n,), generator=g).float()
    x[:, 6] = torch.randn(n, generator=g)
    return x


def assert_valid_rows(rows: torch.Tensor) -> None:
    rows = rows.reshape(-1, 7)
    assert torch.equal(rows[:, 2:5].sum(1), torch.ones(len(rows)))
    assert bool(((rows[:, 2:5] == 0) | (rows[:, 2:5] == 1)).all())
    assert bool(torch.isin(rows[:, 1], torch.tensor([0.0, 1, 2, 3])).all())
    assert bool(torch.isin(rows[:, 5], torch.tensor([0.0, 1, 2])).all())


class MLP(nn.Module):
    def __init__(self, f: int = 7, classes: int = 2, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.fc1 = nn.Linear(f, 16)
            self.fc2 = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class Recorder(nn.Module):
    """A model that keeps every input it is given (to inspect the perturbed rows)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.model(x)


# ------------------------------------------------------------------------------- the spec
def test_spec_repr_equality_and_defaults():
    assert TabularModality() == TabularModality()
    assert SPEC == TabularModality(kinds=KINDS, groups=[(2, 3, 4)],
                                   categories={5: (0, 1, 2), 1: (0, 1, 2, 3)},
                                   scales=[0.5, 1, 1, 1, 1, 1, 2], flip_prob=0.3)
    assert hash(SPEC) == hash(TabularModality(kinds=KINDS, groups=[[2, 3, 4]],
                                              categories={1: [0, 1, 2, 3], 5: [0, 1, 2]},
                                              scales=[0.5, 1, 1, 1, 1, 1, 2.0],
                                              flip_prob=0.3))
    assert SPEC.one_hot_groups == ((2, 3, 4),)
    assert SPEC.n_columns == 7
    assert TabularModality().default_grouping == "pixels"
    assert isinstance(SPEC.default_grouping, Columns)
    assert "kinds=" in repr(SPEC)
    x = make_table()
    assert SPEC.check(x) is not None


@pytest.mark.parametrize("kwargs, message", [
    ({"kinds": ["continuous", "nominal"]}, "must be among"),
    ({"kinds": ["categorical", "continuous"], "groups": [[0, 1]]}, "mixes categorical"),
    ({"kinds": ["categorical", "continuous"]}, "neither in a one-hot group"),
    ({"kinds": ["continuous"], "categories": {0: [1, 2]}}, "not a label-encoded"),
    ({"kinds": ["continuous", "continuous"], "groups": [[0, 1], [1]]}, "overlaps"),
    ({"kinds": ["continuous"], "groups": [[0, 3]]}, "out of range"),
    ({"scales": [1.0, -1.0]}, ">= 0"),
    ({"flip_prob": 1.5}, "flip_prob"),
])
def test_spec_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TabularModality(**kwargs)


def test_inputs_are_checked_against_the_spec():
    x = make_table()
    with pytest.raises(ValueError, match="columns"):
        SPEC.check(x[:, :6])
    bad = x.clone()
    bad[3, 2:5] = torch.tensor([1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="row 3 is not one-hot"):
        SPEC.check(bad)
    bad = x.clone()
    bad[4, 5] = 7.0
    with pytest.raises(ValueError, match="column 5"):
        SPEC.check(bad)
    spec = TabularModality(kinds=["ordinal", "continuous"])
    with pytest.raises(ValueError, match="ordinal column 0"):
        spec.check(torch.tensor([[0.5, 1.0]]))
    # a metric call refuses invalid rows before any work
    with pytest.raises(ValueError, match="not one-hot"):
        M.Sparseness()(None, bad[:, :].clone().index_fill_(1, torch.tensor([5]), 0.0)
                       .index_fill_(1, torch.tensor([2, 3]), 1.0), None,
                       torch.rand(24, 7), modality=SPEC)


# ------------------------------------------------------------------------------- groupings
def test_default_features_resolve_to_the_modality():
    assert isinstance(make_grouping(None), DefaultFeatures)
    assert isinstance(make_grouping("pixels"), Pixels)  # still pixels where no modality is known
    x = make_table()
    grouped = make_grouping("pixels").for_modality(SPEC)(x)
    assert int(grouped.n_groups[0]) == 5  # columns 0, 1, 5, 6 and the one-hot block
    assert torch.equal(grouped.labels[0], torch.tensor([1, 2, 0, 0, 0, 3, 4]))
    plain = make_grouping("pixels").for_modality(TabularModality())(x)
    assert int(plain.n_groups[0]) == 7
    explicit = make_grouping("channel_values").for_modality(SPEC)(x)  # one per column
    assert int(explicit.n_groups[0]) == 7


def test_removal_removes_one_hot_groups_together():
    x = make_table(8)
    model = Recorder(MLP())
    a = torch.randn(8, 7)
    metric = M.PixelFlipping(perturb_baseline="zero")
    metric(model, x, torch.zeros(8, dtype=torch.long), a, modality=SPEC)
    assert metric.curves_.shape == (8, 6)  # 5 features: 6 points
    rows = torch.cat(model.seen)
    block = rows[:, 2:5]
    # each perturbed row keeps the whole block or removes it whole, never part of it
    whole = (block.sum(1) == 1) | (block.sum(1) == 0)
    assert bool(whole.all())
    metric(model, x, torch.zeros(8, dtype=torch.long), a)  # no spec: one feature per column
    assert metric.curves_.shape == (8, 8)


# ------------------------------------------------------------------------------- noise
def test_column_noise_keeps_rows_valid_and_is_keyed():
    x = make_table(30)
    noise = SPEC.valid_noise(GaussianNoise(0.0, 0.7))
    assert isinstance(noise, ColumnNoise)
    keys = torch.arange(30, dtype=torch.int64) * 7919
    d = noise.draws(x, keys, 200)
    assert d.shape == (30, 200, 7)
    assert_valid_rows(d)
    # categorical features change with the given probability, to another category
    onehot_changed = (d[:, :, 2:5] != x[:, None, 2:5]).any(-1).double().mean()
    label_changed = (d[:, :, 5] != x[:, None, 5]).double().mean()
    assert abs(float(onehot_changed) - 0.3) < 0.03
    assert abs(float(label_changed) - 0.3) < 0.03
    # continuous noise is scaled per column (absolute scales, not batch statistics)
    assert abs(float((d[:, :, 0] - x[:, None, 0]).std()) - 0.5 * 0.7) < 0.03
    assert abs(float((d[:, :, 6] - x[:, None, 6]).std()) - 2.0 * 0.7) < 0.1
    # the continuous draws are those of the plain noise from the same keys, scaled
    plain = GaussianNoise(0.0, 0.7).sample(keys, (200, 7), x.dtype)
    assert torch.allclose(d[:, :, 0] - x[:, None, 0], 0.5 * plain[:, :, 0], atol=1e-6)
    # a row's draws depend on its key alone
    d2 = noise.draws(x[[5, 2]], keys[[5, 2]], 200)
    assert torch.equal(d2, d[[5, 2]])
    # a mask limits the perturbation; a one-hot block is resampled only when masked
    mask = torch.zeros(30, 7, dtype=torch.bool)
    mask[:, 0] = True
    m = noise(x, keys, mask=mask)
    assert torch.equal(m[:, 1:], x[:, 1:])
    assert not torch.equal(m[:, 0], x[:, 0])


def test_ordinal_levels_are_snapped_and_default_flip_rate():
    spec = TabularModality(kinds=["ordinal", "ordinal"], categories={0: [0, 5, 10]})
    x = torch.tensor([[5.0, 2.0]])
    d = spec.valid_noise(GaussianNoise(0, 4.0)).draws(x, torch.tensor([3]), 500)
    assert bool(torch.isin(d[..., 0], torch.tensor([0.0, 5, 10])).all())
    assert bool((d[..., 1] == d[..., 1].round()).all())
    assert {0.0, 5.0, 10.0} <= set(d[..., 0].flatten().tolist())
    # flip probability defaults to E|n| of the noise (OpenXAI: sqrt(2/pi) sigma)
    assert mean_absolute_noise(GaussianNoise(0, 0.1)) == pytest.approx(0.1 * math.sqrt(2 / math.pi))
    assert mean_absolute_noise(UniformNoise(0.2)) == pytest.approx(0.1)
    assert mean_absolute_noise(UniformNoise(0.02, 0.2)) == pytest.approx(0.11)
    cn = ColumnNoise(GaussianNoise(0, 0.1), ["categorical"] * 3, one_hot=[[0, 1, 2]])
    assert cn.flip_prob == pytest.approx(0.1 * math.sqrt(2 / math.pi))
    with pytest.raises(TypeError, match="not additive"):
        cn.sample(torch.tensor([1]), (3,), torch.float32)


def test_robustness_noise_on_a_spec_keeps_rows_valid():
    x = make_table(6)
    y = torch.zeros(6, dtype=torch.long)
    seen: list[torch.Tensor] = []

    def explain_fn(model, xs, ys, **kw):
        seen.append(torch.as_tensor(xs).clone())
        return torch.as_tensor(xs) * 0.5

    metric = M.MaxSensitivity(nr_samples=20, perturb_func="gaussian", perturb_std=0.5, seed=1)
    scores = metric(MLP(), x, y, explain_fn=explain_fn, modality=SPEC)
    assert np.isfinite(scores).all()
    perturbed = torch.cat(seen[1:])
    assert perturbed.shape[0] == 6 * 20
    assert_valid_rows(perturbed)
    # without the spec the same metric adds fractional noise to every column
    seen.clear()
    metric(MLP(), x, y, explain_fn=explain_fn)
    assert not bool(torch.isin(torch.cat(seen[1:])[:, 5], torch.tensor([0.0, 1, 2])).all())


# ------------------------------------------------------------------------------- PGI / PGU
class OnlyFirst(nn.Module):
    """logit of class 1 = 2 * x0, class 0 = 0: only feature 0 matters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.zeros_like(x[:, 0]), 2 * x[:, 0]], 1)


def test_prediction_gaps_by_hand_on_three_features():
    x = torch.tensor([[0.3, -1.0, 2.0], [1.0, 0.5, -0.5]])
    y = torch.ones(2, dtype=torch.long)
    good = torch.tensor([[5.0, 1.0, 0.5], [-4.0, 2.0, 1.0]])  # feature 0 on top
    bad = torch.tensor([[0.0, 1.0, 1.0], [0.1, -2.0, 1.0]])  # feature 0 last
    kw = dict(k=1, nr_samples=64, perturb_std=0.2, softmax=False, seed=3)
    # perturbing the unimportant features of a model that reads only feature 0 changes nothing
    assert np.array_equal(M.PGU(**kw)(OnlyFirst(), x, y, good), [0.0, 0.0])
    assert np.array_equal(M.PGI(**kw)(OnlyFirst(), x, y, bad), [0.0, 0.0])
    # PGI of the right map, recomputed by hand from the inputs the model saw
    model = Recorder(OnlyFirst())
    pgi = M.PGI(**kw)
    got = pgi(model, x, y, good)
    rows = torch.cat(model.seen)
    perturbed = rows[~(rows == x[0]).all(1) & ~(rows == x[1]).all(1)]
    assert perturbed.shape == (128, 3)
    # only feature 0 moved; rows are sample-major
    assert torch.equal(perturbed[:64, 1:], x[0, 1:].expand(64, 2))
    assert torch.equal(perturbed[64:, 1:], x[1, 1:].expand(64, 2))
    by_hand = (2 * perturbed[:, 0].double() - 2 * x[:, 0].double().repeat_interleave(64)).abs()
    assert np.allclose(got, by_hand.reshape(2, 64).mean(1).numpy())
    # the gap is 2 * E|eps| = 2 * 0.2 * sqrt(2 / pi) in expectation
    assert np.allclose(got, 2 * 0.2 * math.sqrt(2 / math.pi), rtol=0.25)
    assert pgi.k_.tolist() == [1, 1]
    # higher PGI / lower PGU for the right map
    assert (M.PGI(**kw)(OnlyFirst(), x, y, good) > M.PGI(**kw)(OnlyFirst(), x, y, bad)).all()
    assert M.PGI.higher_is_better and not M.PGU.higher_is_better


def test_prediction_gap_options_and_determinism():
    x = make_table(6)
    y = torch.zeros(6, dtype=torch.long)
    a = torch.randn(6, 7)
    model = MLP()
    first = M.PGI(nr_samples=20, seed=0)(model, x, y, a)
    assert np.array_equal(first, M.PGI(nr_samples=20, seed=0)(model, x, y, a))
    # per sample: the same score alone, in another order, at any batch size
    assert np.allclose(M.PGI(nr_samples=20, seed=0)(model, x[[4]], y[[4]], a[[4]]), first[[4]])
    assert np.allclose(M.PGI(nr_samples=20, seed=0)(model, x, y, a, batch_size=5), first)
    # k as a fraction: ceil(0.25 * 7) = 2 columns
    pgi = M.PGI(nr_samples=20, seed=0)
    pgi(model, x, y, a)
    assert pgi.k_.tolist() == [2] * 6
    # AUC over k = 1..K with the per-k gaps as curves
    auc = M.PGI(k=3, nr_samples=20, seed=0, auc=True)
    scores = auc(model, x, y, a)
    assert auc.curves_.shape == (6, 3) and np.isfinite(scores).all()
    assert np.allclose(auc.curves_[:, 1], M.PGI(k=2, nr_samples=20, seed=0)(model, x, y, a))
    # PGU with every feature in the top k perturbs nothing
    assert np.array_equal(M.PGU(k=7, nr_samples=5, seed=0)(model, x, y, a), np.zeros(6))
    # on a spec'd table the perturbed rows stay valid and the one-hot block is one feature
    rec = Recorder(model)
    pgu = M.PGU(k=1, nr_samples=30, perturb_std=0.5, seed=0)
    pgu(rec, x, y, a, modality=SPEC)
    assert_valid_rows(torch.cat(rec.seen))
    assert pgu.k_.tolist() == [1] * 6
    with pytest.raises(ValueError):
        M.PGI(k=0)
    with pytest.raises(ValueError):
        M.PGI(k=1.5)


# ------------------------------------------------------------------------------- agreement
def test_agreement_by_hand():
    a = torch.tensor([[3.0, -2.0, 1.0, 0.0], [1.0, 2.0, -3.0, 0.25]])
    s = torch.tensor([[1.0, 2.0, -3.0, 0.5], [1.0, 2.0, -3.0, 0.5]])
    # sample 0: top2(a) = {0, 1} at positions 0, 1; top2(s) = {2, 1} at 0, 1; feature 1 is
    # shared, at the same position, with opposite signs. sample 1: a ranks like s
    # (2, 1, 0, 3) with the same signs.
    def run(cls, **kw):
        return cls(**kw)(None, a, None, a, s=s, modality="tabular")

    assert np.allclose(run(M.FeatureAgreement, k=2), [0.5, 1.0])
    assert np.allclose(run(M.RankAgreement, k=2), [0.5, 1.0])
    assert np.allclose(run(M.SignAgreement, k=2), [0.0, 1.0])
    assert np.allclose(run(M.SignedRankAgreement, k=2), [0.0, 1.0])
    assert np.allclose(run(M.FeatureAgreement, k=0.5), [0.5, 1.0])  # ceil(0.5 * 4) = 2
    assert np.allclose(run(M.FeatureAgreement, k=4), [1.0, 1.0])
    # pairs of sample 0: (0,1) no, (0,2) no, (0,3) yes, (1,2) no, (1,3) yes, (2,3) yes
    assert np.allclose(run(M.PairwiseRankAgreement), [0.5, 1.0])
    # a reversed ranking disagrees on every pair
    rev = M.PairwiseRankAgreement()(None, torch.zeros(1, 4), None, torch.tensor([[4.0, 3, 2, 1]]),
                                     s=torch.tensor([[1.0, 2, 3, 4]]), modality="tabular")
    assert np.allclose(rev, [0.0])


def test_agreement_ties_follow_the_feature_order():
    # a map against itself agrees fully whatever its ties: tied features are ranked by index,
    # the same order in both maps (independent random ties scored FeatureAgreement 2/3 here)
    tied = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0], [0.5, -0.5, 0.5, 0.5, 0.2]])
    run = dict(model=None, x=tied, y=None, a=tied, s=tied, modality="tabular")
    for name in ("FeatureAgreement", "RankAgreement", "SignAgreement", "SignedRankAgreement"):
        np.testing.assert_array_equal(M.get(name)(k=2)(**run), [1.0, 1.0])
    np.testing.assert_array_equal(M.PairwiseRankAgreement()(**run), [1.0, 1.0])
    # a constant map ranks its features in index order
    s = torch.tensor([[0.5, 1.0, 2.0, 3.0, 4.0]])
    const = torch.full((1, 5), 0.7)
    run = dict(model=None, x=const, y=None, a=const, s=s, modality="tabular")
    assert M.FeatureAgreement(k=2)(**run)[0] == 0.0  # {0, 1} against {4, 3}
    assert M.FeatureAgreement(k=4)(**run)[0] == 0.75  # {0, 1, 2, 3} against {4, 3, 2, 1}
    assert M.RankAgreement(k=2)(**run)[0] == 0.0
    assert M.PairwiseRankAgreement()(**run)[0] == 0.0  # every pair reversed
    # a boolean ground-truth feature set works as a reference
    mask = torch.tensor([[True, True, False, False, False]])
    a = torch.tensor([[2.0, 1.5, 0.1, 0.2, 0.0]])
    assert np.allclose(M.FeatureAgreement(k=2)(None, a, None, a, s=mask), [1.0])


def test_agreement_edge_cases():
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    s = torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 0.0], [math.nan, 1.0, 0.0]])
    metric = M.FeatureAgreement(k=1)
    with pytest.warns(UndefinedScoreWarning):
        out = metric(None, a, None, a, s=s, modality="tabular")
    assert out[0] == 1.0 and np.isnan(out[1:]).all()
    assert "zero everywhere" in metric.nan_reasons_[1]
    assert "NaN" in metric.nan_reasons_[2]
    with pytest.raises(ValueError, match="exceeds"):
        M.RankAgreement(k=5)(None, a, None, a, s=torch.ones(3, 3), modality="tabular")
    with pytest.raises(ValueError, match="needs ground-truth"):
        M.SignAgreement()(None, a, None, a)


def test_agreement_counts_a_one_hot_group_as_one_feature():
    a = torch.tensor([[0.1, 0.2, 0.5, 0.4, 0.3, 0.0, 0.05]])
    ref = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    x = make_table(1)
    # grouped: the block (0.5 + 0.4 + 0.3) is the top feature of both maps
    assert M.FeatureAgreement(k=1)(None, x, None, a, s=ref, modality=SPEC)[0] == 1.0
    # per column, k=2: column 2 is in both top 2; the reference's second place goes to
    # column 0, the first of the six columns tied at zero (ties by index): 1 / 2
    assert M.FeatureAgreement(k=2)(None, x, None, a, s=ref, modality="tabular")[0] == 0.5


# ------------------------------------------------------------------------------- localisation
LOCALISATION = ["TopKIntersection", "PointingGame", "AttributionLocalisation", "EnergyPointingGame",
                "RelevanceMassAccuracy", "RelevanceRankAccuracy", "AUC"]


@pytest.mark.parametrize("name", LOCALISATION)
def test_localisation_on_a_ground_truth_feature_set(name):
    a = torch.tensor([[0.9, 0.8, 0.1, 0.0, 0.05], [0.0, 0.1, 0.2, 0.9, 0.8]])
    s = torch.tensor([[True, True, False, False, False], [False, False, False, True, True]])
    kw = {"k": 2} if name == "TopKIntersection" else {}
    good = M.get(name)(**kw)(None, a, None, a, s=s)
    worse = M.get(name)(**kw)(None, a, None, a.flip(1), s=s)
    assert np.isfinite(good).all()
    assert (good >= worse).all() and (good > worse).any()


def test_localisation_with_column_groups():
    x = make_table(1)
    a = torch.tensor([[0.1, 0.2, 0.3, 0.3, 0.3, 0.5, 0.0]])
    group = torch.tensor([[False, False, True, True, True, False, False]])
    # per column, the top column is 5; grouped, the one-hot block (0.9) is the top feature
    assert M.PointingGame()(None, x, None, a, s=group, modality="tabular")[0] == 0.0
    assert M.PointingGame()(None, x, None, a, s=group, modality=SPEC)[0] == 1.0
    assert M.TopKIntersection(k=1)(None, x, None, a, s=group, modality=SPEC)[0] == 1.0
    with pytest.raises(ValueError, match="part of a column group"):
        M.PointingGame()(None, x, None, a, s=torch.tensor([[0, 0, 1, 0, 0, 0, 0]]),
                         modality=SPEC)
    # heatmaps still show one value per column
    assert SPEC.display_map(a[0]).shape == (1, 7)


# ------------------------------------------------------------------------------- models
def _data(n: int = 12, f: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, f)).astype(np.float32)
    w = np.array([2.0, -1.5, 0.0, 0.5, 0.0][:f], dtype=np.float32)
    y = (x @ w > 0).astype(np.int64)
    return x, y, w


def _end_to_end(model, x, y, a, explain_kwargs):
    """A few metrics of each family on one model; every score finite where defined."""
    out = {
        "PixelFlipping": M.PixelFlipping(perturb_baseline="zero")(model, x, y, a),
        "FaithfulnessCorrelation": M.FaithfulnessCorrelation(
            nr_runs=10, subset_size=2, perturb_baseline="zero", seed=0)(model, x, y, a),
        "PGI": M.PGI(nr_samples=10, seed=0)(model, x, y, a),
        "PGU": M.PGU(nr_samples=10, seed=0)(model, x, y, a),
        "MaxSensitivity": M.MaxSensitivity(nr_samples=3, seed=0)(
            model, x, y, explain_fn=ek.explain, explain_kwargs=explain_kwargs),
        "Sparseness": M.Sparseness()(model, x, y, a),
        "FeatureAgreement": M.FeatureAgreement(k=2)(None, x, y, a, s=np.abs(a) + 1),
        "RelevanceRankAccuracy": M.RelevanceRankAccuracy()(
            None, x, y, a, s=np.eye(x.shape[1], dtype=bool)[np.zeros(len(x), int)]),
    }
    for name, scores in out.items():
        assert np.asarray(scores).shape == (len(x),), name
        assert np.isfinite(np.asarray(scores, dtype=float)).any(), name
    return out


def test_callable_returning_probabilities():
    x, y, w = _data()

    def predict(batch: np.ndarray) -> np.ndarray:
        p = 1 / (1 + np.exp(-(batch @ w)))
        return np.stack([1 - p, p], 1)

    model = wrap_model(predict, softmax=False)  # already probabilities
    a = w * x
    _end_to_end(model, x, y, a, {"method": "FeatureAblation"})


def test_object_with_predict_proba():
    x, y, w = _data()

    class Booster:  # XGBoost-like: predict_proba on NumPy arrays
        def predict_proba(self, batch: np.ndarray) -> np.ndarray:
            p = 1 / (1 + np.exp(-(np.asarray(batch) @ w)))
            return np.stack([1 - p, p], 1)

    wrapped = wrap_model(Booster())
    assert wrapped.softmax is False  # predict_proba is recognised and not softened again
    _end_to_end(Booster(), x, y, w * x, {"method": "FeatureAblation"})


def test_sklearn_logistic_regression():
    linear_model = pytest.importorskip("sklearn.linear_model")
    x, y, _ = _data(40)
    clf = linear_model.LogisticRegression().fit(x, y)
    a = clf.coef_[0] * x * np.where(y == 1, 1, -1)[:, None]
    out = _end_to_end(clf, x[:10], y[:10], a[:10].astype(np.float32),
                      {"method": "FeatureAblation"})
    assert np.isfinite(out["PGI"]).all()


def test_torch_mlp_with_gradients_and_randomisation():
    x, y, _ = _data(8)
    model = MLP(f=5)
    a = ek.explain(model, x, y, "Saliency")
    _end_to_end(model, x, y, a, {"method": "Saliency"})
    mprt = M.MPRT(seed=0)
    scores = mprt(model, x, y, a, explain_fn=ek.explain, explain_kwargs={"method": "Saliency"})
    assert np.isfinite(scores).all()
    # explanations of a fully randomised MLP are not those of the trained one
    assert (scores < 0.999).all()
    logit = M.RandomLogit(similarity_func="pearson", num_classes=2, seed=0)
    scores = logit(model, x, y, a, explain_fn=ek.explain, explain_kwargs={"method": "Saliency"})
    assert np.isfinite(scores).all() and (scores <= 1 + 1e-9).all()


# ------------------------------------------------------------------------------- known answer
class Linear2(nn.Module):
    """Two classes; the class-1 logit is w . x + b, the class-0 logit 0."""

    def __init__(self, w: torch.Tensor, b: float = 0.3) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone(), requires_grad=False)
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], 1)


def test_exact_linear_attribution_ranks_first_on_faithfulness():
    g = torch.Generator().manual_seed(1)
    w = torch.tensor([3.0, -2.0, 1.5, 0.5, -1.0, 0.2])
    x = torch.randn(16, 6, generator=g)
    y = torch.ones(16, dtype=torch.long)
    model = Linear2(w)
    exact = w * (x - 0.0)  # coef * (x - baseline), baseline 0
    random = torch.randn(16, 6, generator=g)
    maps = {"exact": exact, "random": random, "negated": -exact}
    pf = {k: M.PixelFlipping(perturb_baseline="zero")(model, x, y, v).mean()
          for k, v in maps.items()}
    assert pf["exact"] < pf["random"] < pf["negated"]  # lower is better
    fc = {k: M.FaithfulnessCorrelation(nr_runs=30, subset_size=3, perturb_baseline="zero",
                                       seed=0)(model, x, y, v)
          for k, v in maps.items()}
    # exact: every subset's attribution sum is the logit change: correlation 1
    assert np.allclose(fc["exact"], 1.0)
    assert np.allclose(fc["negated"], -1.0)
    assert fc["exact"].mean() > fc["random"].mean() > fc["negated"].mean()
    pgi = {k: M.PGI(k=2, nr_samples=50, softmax=False, seed=0)(model, x, y, v).mean()
           for k, v in maps.items()}
    pgu = {k: M.PGU(k=2, nr_samples=50, softmax=False, seed=0)(model, x, y, v).mean()
           for k, v in maps.items()}
    assert pgi["exact"] > pgi["random"] and pgu["exact"] < pgu["random"]
    # the negated map has the same magnitudes: same top k, same gaps
    assert pgi["exact"] == pytest.approx(pgi["negated"])
    agree = {k: M.SignedRankAgreement(k=3)(None, x, y, v, s=exact).mean() for k, v in maps.items()}
    assert agree["exact"] == 1.0 and agree["negated"] == 0.0


def test_evaluate_on_a_table_with_a_column_spec():
    x = make_table(8)
    model = MLP()
    with torch.no_grad():
        y = model(x).argmax(1)
    s = torch.zeros(8, 7, dtype=torch.bool)
    s[:, 2:5] = True  # the one-hot block is the ground-truth feature
    results = ek.evaluate(
        metrics={"PGI": M.PGI(nr_samples=5), "PixelFlipping": M.PixelFlipping(),
                 "MaxSensitivity": M.MaxSensitivity(nr_samples=3),
                 "FeatureAgreement": M.FeatureAgreement(k=1),
                 "TopKIntersection": M.TopKIntersection(k=1)},
        xai_methods={"Saliency": {}, "InputXGradient": {}},
        model=model, x=x, y=y, s=s, modality=SPEC, seed=0, progress=False)
    frame = results.to_frame()
    assert frame["score"].notna().all(), frame[frame["score"].isna()]
