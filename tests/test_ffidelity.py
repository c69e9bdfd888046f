"""F-Fidelity (Zheng et al., ICLR 2025): the random-masking fine-tuning helper and FFid+/FFid-.

Known answers by hand on a linear model (the drop of a removal by a zero baseline is the sum of
the removed w_j x_j), the helper's promises (a copy is trained, the user's model and the global
generators are untouched, the same seed gives the same weights), the fine-tuned model's
plumbing and caching, edge cases, and a CI-sized run on the shipped shapes model.
"""

from __future__ import annotations

import copy
import pickle
import time

import numpy as np
import pytest
import torch
from torch import nn

from evalkit import _rng
from evalkit import metrics as M
from evalkit.datasets import make_shapes
from evalkit.metrics._ties import CONSTANT_MAP
from evalkit.metrics.faithfulness.ffidelity import (
    fine_tune_with_random_masking,
    random_removal_masks,
)
from evalkit.zoo import load_shapes_cnn

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.UndefinedScoreWarning")


def _linear(w: list[float]) -> nn.Module:
    """logit_0 = w . x, logit_1 = 0 (class 0 is scored)."""
    model = nn.Linear(len(w), 2, bias=False)
    with torch.no_grad():
        model.weight.zero_()
        model.weight[0] = torch.tensor(w)
    return model.eval()


# ------------------------------------------------------------------------ known answers
def test_fidelity_plus_and_minus_by_hand_without_fine_tuning():
    # contributions w_j x_j = 6, 1, 4, 3, 2 (5 features); a = w * x ranks them 0, 2, 3, 4, 1
    model = _linear([3.0, 1.0, 2.0, 1.0, 1.0])
    x = np.array([[2.0, 1.0, 2.0, 3.0, 2.0]], dtype=np.float32)
    a = np.array([[6.0, 1.0, 4.0, 3.0, 2.0]])
    y = np.array([0])
    common = dict(fine_tuned_model="none", stochastic_removal=False, quantity="score",
                  perturb_baseline=0.0, softmax=False)
    # alpha 0.4: E = top ceil(0.4 * 5) = 2 features {0, 2}: FFid+ = 6 + 4, FFid- = 1 + 3 + 2
    plus = M.FFidelity(sign="+", alpha=0.4, **common)(model, x, y, a)
    minus = M.FFidelity(sign="-", alpha=0.4, **common)(model, x, y, a)
    np.testing.assert_allclose(plus, [10.0], rtol=1e-6)
    np.testing.assert_allclose(minus, [6.0], rtol=1e-6)
    # several alphas are averaged: alpha 0.2 -> E = {0}: 6; alpha 0.6 -> {0, 2, 3}: 13
    both = M.FFidelity(sign="+", alpha=(0.2, 0.6), **common)(model, x, y, a)
    np.testing.assert_allclose(both, [(6.0 + 13.0) / 2], rtol=1e-6)
    # ceil: alpha 0.3 of 5 features is 2 features
    np.testing.assert_allclose(M.FFidelity(sign="+", alpha=0.3, **common)(model, x, y, a),
                               [10.0], rtol=1e-6)


def test_stochastic_removal_by_hand_on_equal_contributions():
    # the top 4 features contribute 2 each, the other 4 contribute 0.5 each (G = 8):
    # beta 0.25 caps a removal at 2 features, so every draw of FFid+ removes two of the top
    # four (drop 4) and every draw of FFid- two of the bottom four (drop 1), whichever they are
    model = _linear([1.0] * 8)
    x = np.array([[2.0, 2.0, 2.0, 2.0, 0.5, 0.5, 0.5, 0.5]], dtype=np.float32)
    a = np.array([[8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    y = np.array([0])
    common = dict(fine_tuned_model="none", alpha=0.5, beta=0.25, n_draws=6, quantity="score",
                  perturb_baseline=0.0, softmax=False, seed=1)
    np.testing.assert_allclose(M.FFidelity(sign="+", **common)(model, x, y, a), [4.0],
                               rtol=1e-6)
    np.testing.assert_allclose(M.FFidelity(sign="-", **common)(model, x, y, a), [1.0],
                               rtol=1e-6)


def test_defaults_are_the_papers():
    # Zheng et al. / the authors' code: beta 0.1, alpha (share of the part removed per draw)
    # 0.5, 50 samples, accuracy-based fidelity
    metric = M.FFidelity()
    assert metric.beta == 0.1 and metric.removal_ratio == 0.5
    assert metric.n_draws == 50 and metric.quantity == "correct"


def test_removal_ratio_by_hand_on_equal_contributions():
    # 8 features contributing 2 each (top 4 by a) and 0.5 each; alpha 0.5: the part is the top
    # 4 features. beta 1 (no cap): removal_ratio 0.5 removes ceil(0.5 * 4) = 2 of them per
    # draw (drop 4), removal_ratio 1 all 4 (drop 8), 0.3 ceil(1.2) = 2; beta 0.125 caps a
    # removal at ceil(1) = 1 feature (drop 2)
    model = _linear([1.0] * 8)
    x = np.array([[2.0, 2.0, 2.0, 2.0, 0.5, 0.5, 0.5, 0.5]], dtype=np.float32)
    a = np.array([[8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    y = np.array([0])
    common = dict(fine_tuned_model="none", alpha=0.5, n_draws=5, quantity="score",
                  perturb_baseline=0.0, softmax=False, seed=2)

    def plus(**kw: float) -> float:
        return float(M.FFidelity(sign="+", **common, **kw)(model, x, y, a)[0])

    assert plus(beta=1.0) == pytest.approx(4.0)
    assert plus(beta=1.0, removal_ratio=1.0) == pytest.approx(8.0)
    assert plus(beta=1.0, removal_ratio=0.3) == pytest.approx(4.0)
    assert plus(beta=0.125) == pytest.approx(2.0)
    # FFid-: the bottom 4 (0.5 each), half of them per draw
    minus = M.FFidelity(sign="-", beta=1.0, **common)(model, x, y, a)
    np.testing.assert_allclose(minus, [1.0], rtol=1e-6)
    with pytest.raises(ValueError, match="removal_ratio"):
        M.FFidelity(removal_ratio=0.0)


def test_stochastic_draws_are_subsets_of_the_part_of_the_cap_size():
    # distinct powers of two as contributions: each draw's drop names the features it removed
    w = [2.0**j for j in range(8)]
    model = _linear(w)
    x = np.ones((1, 8), dtype=np.float32)
    a = np.array([[2.0**j for j in range(8)]])  # rank order: 7, 6, ..., 0
    metric = M.FFidelity(sign="+", fine_tuned_model="none", alpha=0.5, beta=0.25, n_draws=8,
                         quantity="score", perturb_baseline=0.0, softmax=False, seed=3)
    metric(model, x, np.array([0]), a)
    mean_drop = float(metric.drops_per_alpha_[0, 0])
    # every draw removes 2 of the top-4 features {4, 5, 6, 7}: a drop between 16 + 32 and
    # 64 + 128, and the mean of such drops
    assert 48.0 <= mean_drop <= 192.0
    # FFid- never touches the top half: drops are sums of two of {1, 2, 4, 8}
    minus = M.FFidelity(sign="-", fine_tuned_model="none", alpha=0.5, beta=0.25, n_draws=8,
                        quantity="score", perturb_baseline=0.0, softmax=False, seed=3)
    assert 3.0 <= float(minus(model, x, np.array([0]), a)[0]) <= 12.0


def test_correct_quantity_counts_prediction_flips():
    # logit_0 = x0 + x1 + x2 - 1.5 (class 0 while two of the three are on); removing the top 2
    # features flips the prediction (FFid+ = 1 - 0), removing the last one does not (FFid- = 0)
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
        lin.bias.copy_(torch.tensor([-1.5, 0.0]))
    x = np.ones((1, 3), dtype=np.float32)
    a = np.array([[3.0, 2.0, 1.0]])
    common = dict(fine_tuned_model="none", alpha=0.6, stochastic_removal=False,
                  perturb_baseline=0.0)
    assert M.FFidelity(sign="+", **common)(lin, x, np.array([0]), a)[0] == 1.0
    assert M.FFidelity(sign="-", **common)(lin, x, np.array([0]), a)[0] == 0.0


# --------------------------------------------------------------------- the fine-tuned model
def test_scores_are_read_on_the_fine_tuned_model():
    user = _linear([1.0, 1.0, 1.0, 1.0])
    tuned = _linear([4.0, 3.0, 2.0, 1.0])
    x = np.ones((2, 4), dtype=np.float32)
    a = np.array([[4.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 4.0]])
    y = np.array([0, 0])
    common = dict(alpha=0.5, stochastic_removal=False, quantity="score", perturb_baseline=0.0,
                  softmax=False)
    on_tuned = M.FFidelity(fine_tuned_model=tuned, **common)(user, x, y, a)
    np.testing.assert_allclose(on_tuned, [7.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(M.FFidelity(fine_tuned_model="none", **common)(tuned, x, y, a),
                               on_tuned, rtol=1e-12)


def test_a_callable_fine_tunes_once_per_model_and_again_after_a_weight_change():
    calls: list[nn.Module] = []

    def tune(model: nn.Module) -> nn.Module:
        calls.append(model)
        return _linear([2.0, 2.0])

    user = _linear([1.0, 1.0])
    metric = M.FFidelity(fine_tuned_model=tune, alpha=0.5, stochastic_removal=False,
                         quantity="score", perturb_baseline=0.0, softmax=False)
    x = np.ones((1, 2), dtype=np.float32)
    a = np.array([[2.0, 1.0]])
    first = metric(user, x, np.array([0]), a)
    second = metric(user, x, np.array([0]), a)
    assert len(calls) == 1 and calls[0] is user
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, [2.0], rtol=1e-6)
    with torch.no_grad():
        user.weight.mul_(2.0)
    metric(user, x, np.array([0]), a)
    assert len(calls) == 2


def test_fine_tune_data_trains_a_copy_once_and_never_the_user_model():
    torch.manual_seed(0)
    user = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    before = {k: v.clone() for k, v in user.state_dict().items()}
    gen = np.random.default_rng(0)
    x_train = gen.random((40, 6)).astype(np.float32)
    y_train = (x_train[:, 0] > 0.5).astype(np.int64)
    x = gen.random((4, 6)).astype(np.float32)
    y = np.array([0, 1, 0, 1])
    a = gen.random((4, 6))
    metric = M.FFidelity(fine_tune_data=(x_train, y_train), fine_tune_kwargs={"epochs": 1},
                         alpha=0.5, beta=0.3, n_draws=3, quantity="score", seed=0)
    first = metric(user, x, y, a)
    ((_, tuned),) = metric._copies.values()
    assert tuned is not user
    metric(user, x, y, a)
    assert next(iter(metric._copies.values()))[1] is tuned  # reused, not trained again
    for k, v in user.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # the copy is the helper's, with the metric's settings
    by_hand = fine_tune_with_random_masking(user, x_train, y_train, beta=0.3, epochs=1, seed=0)
    np.testing.assert_allclose(
        M.FFidelity(fine_tuned_model=by_hand, alpha=0.5, beta=0.3, n_draws=3,
                    quantity="score", seed=0)(user, x, y, a), first, rtol=1e-12)


def test_a_metric_with_a_cached_copy_pickles_and_fine_tunes_again():
    user = _linear([1.0, 1.0])
    metric = M.FFidelity(fine_tuned_model=copy.deepcopy, alpha=0.5, n_draws=2, seed=0,
                         quantity="score")
    x, a, y = np.ones((1, 2), np.float32), np.array([[2.0, 1.0]]), np.array([0])
    first = metric(user, x, y, a)
    assert len(metric._copies) == 1
    back = pickle.loads(pickle.dumps(metric))
    assert len(back._copies) == 0
    np.testing.assert_array_equal(back(user, x, y, a), first)


def test_missing_fine_tuned_model_is_an_error_that_says_what_to_pass():
    with pytest.raises(ValueError, match="fine_tune_with_random_masking"):
        M.FFidelity()(_linear([1.0, 1.0]), np.ones((1, 2), np.float32), np.array([0]),
                      np.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="'none'"):
        M.FFidelity(fine_tuned_model="identity")
    with pytest.raises(ValueError, match="alpha"):
        M.FFidelity(alpha=1.5)
    with pytest.raises(ValueError, match="beta"):
        M.FFidelity(beta=0.0)


# ---------------------------------------------------------------------------- the helper
def _tiny_data():
    gen = np.random.default_rng(1)
    x = gen.random((24, 3, 6, 6)).astype(np.float32)
    y = (x[:, 0].mean((1, 2)) > 0.5).astype(np.int64)
    return x, y


def _tiny_cnn() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.2),
                         nn.Flatten(), nn.Linear(4 * 36, 2)).eval()


def test_helper_trains_a_copy_leaves_the_model_and_the_global_generators_alone():
    x, y = _tiny_data()
    model = _tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    np.random.seed(5)  # noqa: NPY002 - the legacy global generator must stay untouched
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002
    tuned = fine_tune_with_random_masking(model, x, y, beta=0.3, epochs=2, batch_size=8,
                                          lr=1e-2, seed=7)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    assert tuned is not model and not tuned.training and not model.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    changed = [not torch.equal(v, before[k]) for k, v in tuned.state_dict().items()]
    assert all(changed)
    # reproducible: same seed, same weights; another seed, other weights
    again = fine_tune_with_random_masking(model, x, y, beta=0.3, epochs=2, batch_size=8,
                                          lr=1e-2, seed=7)
    other = fine_tune_with_random_masking(model, x, y, beta=0.3, epochs=2, batch_size=8,
                                          lr=1e-2, seed=8)
    for (k, v), w in zip(tuned.state_dict().items(), again.state_dict().values(),
                         strict=True):
        torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)
    assert any(not torch.equal(v, o) for v, o in zip(tuned.state_dict().values(),
                                                      other.state_dict().values(), strict=True))


def test_helper_validates_its_inputs():
    x, y = _tiny_data()
    with pytest.raises(TypeError, match=r"nn\.Module"):
        fine_tune_with_random_masking(lambda t: t, x, y)
    with pytest.raises(ValueError, match="class index"):
        fine_tune_with_random_masking(_tiny_cnn(), x, y[:3])
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fine_tune_with_random_masking(_tiny_cnn(), bad, y)
    with pytest.raises(ValueError, match="beta"):
        fine_tune_with_random_masking(_tiny_cnn(), x, y, beta=2.0)


def test_random_removal_masks_remove_up_to_beta_and_depend_on_the_keys_only():
    x = torch.rand(200, 3, 10, 10)
    keys = _rng.combine(torch.full((200,), 11, dtype=torch.int64), torch.arange(200))
    masks = random_removal_masks(x, keys, beta=0.3)
    assert masks.shape == (200, 1, 10, 10)
    fractions = masks.float().mean((1, 2, 3))
    assert float(fractions.max()) < 0.3
    # rates are uniform in [0, 0.3): the mean fraction is about 0.15
    assert abs(float(fractions.mean()) - 0.15) < 0.03
    # a sample's mask depends on its key only (not on the batch it is drawn in)
    np.testing.assert_array_equal(random_removal_masks(x[5:9], keys[5:9], beta=0.3),
                                  masks[5:9])


# ---------------------------------------------------------------------------- edge cases
def test_metadata_direction_and_registration():
    assert "FFidelity" in set(M.list_metrics()["name"])
    plus, minus = M.FFidelity(), M.FFidelity(sign="-")
    assert plus.higher_is_better and not minus.higher_is_better
    assert plus.family == "faithfulness" and "Zheng" in plus.paper
    assert plus.stochastic and not M.FFidelity(stochastic_removal=False).stochastic
    # a part no larger than the cap is removed whole by every draw when removal_ratio is 1
    assert not M.FFidelity(alpha=0.1, beta=0.1, removal_ratio=1.0).stochastic
    assert M.FFidelity(alpha=0.1, beta=0.1).stochastic
    assert set(plus.modalities) == {"image", "series", "tabular", "tokens"}


def test_constant_and_nan_maps_are_nan_with_reasons():
    model = _linear([1.0, 2.0, 3.0])
    x = np.ones((3, 3), dtype=np.float32)
    a = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [np.nan, 1.0, 2.0]])
    metric = M.FFidelity(fine_tuned_model="none", alpha=0.4, n_draws=2, seed=0)
    scores = metric(model, x, np.array([0, 0, 0]), a)
    assert np.isfinite(scores[0]) and np.isnan(scores[1:]).all()
    assert metric.nan_reasons_[1] == CONSTANT_MAP
    assert "NaN" in metric.nan_reasons_[2]


def test_same_seed_same_scores_and_batch_independent():
    gen = np.random.default_rng(4)
    model = _linear([1.0, -1.0, 2.0, 0.5, 1.5, -0.5])
    x = gen.random((5, 6)).astype(np.float32)
    a = gen.random((5, 6))
    y = np.zeros(5, dtype=np.int64)
    metric = M.FFidelity(fine_tuned_model="none", alpha=0.5, beta=0.35, n_draws=4,
                         quantity="score", seed=9)
    full = metric(model, x, y, a)
    np.testing.assert_array_equal(full, metric(model, x, y, a))
    np.testing.assert_allclose(metric(model, x[2:], y[2:], a[2:]), full[2:], rtol=1e-12)
    np.testing.assert_allclose(metric(model, x, y, a, batch_size=2), full, rtol=1e-12)


# ------------------------------------------------------------------ the shipped shapes model
def test_shapes_model_fine_tunes_fast_keeps_accuracy_and_ranks_maps():
    model = load_shapes_cnn()
    train, test = make_shapes(256, seed=11), make_shapes(32, seed=12)
    start = time.perf_counter()
    tuned = fine_tune_with_random_masking(model, train.x, train.y, beta=0.2, epochs=2,
                                          lr=3e-4, seed=0)
    assert time.perf_counter() - start < 20.0
    with torch.no_grad():
        base_acc = (model(torch.as_tensor(test.x)).argmax(1).numpy() == test.y).mean()
        tuned_acc = (tuned(torch.as_tensor(test.x)).argmax(1).numpy() == test.y).mean()
    assert tuned_acc >= 0.75 * base_acc
    good = test.masks.astype(np.float64)
    rand = np.random.default_rng(0).random(good.shape)
    for sign in "+-":
        metric = M.FFidelity(sign=sign, alpha=(0.05, 0.1, 0.2), beta=0.2, n_draws=4,
                             fine_tuned_model=tuned, quantity="score", seed=0)
        s_good = np.nanmean(metric(model, test.x, test.y, good))
        s_rand = np.nanmean(metric(model, test.x, test.y, rand))
        # FFid+: removing the shape hurts more than removing random pixels; FFid-: less
        assert (s_good > s_rand) if sign == "+" else (s_good < s_rand), (sign, s_good, s_rand)


def test_helper_fine_tunes_token_ids_with_the_mask_token():
    from evalkit.modality import TokensModality

    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(20, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.embedding(ids).mean(1))

    torch.manual_seed(0)
    model = Bag().eval()
    ids = torch.randint(1, 20, (16, 8))
    labels = (ids[:, 0] > 10).long()
    modality = TokensModality(mask_token_id=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = fine_tune_with_random_masking(model, ids, labels, beta=0.5, epochs=1, lr=1e-2,
                                          modality=modality)
    # only the ids that were seen change: the mask token's embedding row is trained
    assert not torch.equal(tuned.embedding.weight[0], before["embedding.weight"][0])
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
