"""Text metrics and token perturbation: ERASER comprehensiveness/sufficiency, their soft
variants, AOPC, token plausibility (TokenF1, IOUF1, AUPRC), token replacement/deletion in the
removal kernels, token-dropout noise, and the existing model-free and randomisation families
on token ids. Known answers are computed by hand on a model that reads one planted token."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from evalkit.metrics import (
    AOPC,
    AUPRC,
    IOUF1,
    MPRT,
    Complexity,
    ERASERComprehensiveness,
    ERASERSufficiency,
    MaxSensitivity,
    PixelFlipping,
    RandomLogit,
    SoftComprehensiveness,
    SoftSufficiency,
    Sparseness,
    TokenF1,
)
from evalkit.modality import ImageModality, TokensModality
from evalkit.perturb import Baseline, TokenDeletion, TokenDropout, make_imputer
from evalkit.perturb.baselines import impute
from evalkit.testing import check_metric, get_fixture

PLANTED, W = 7, 3.0
P_PLANTED = 1 / (1 + math.exp(-W))  # p(y=1 | x) when the planted token is present


class Planted(nn.Module):
    """Two classes; logit_1 = W * (number of planted tokens), logit_0 = 0: the model reads
    only the planted token."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(20, 1)
        with torch.no_grad():
            self.embedding.weight.zero_()
            self.embedding.weight[PLANTED] = W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hits = self.embedding(x).sum((1, 2))
        return torch.stack([torch.zeros_like(hits), hits], 1)


def planted_batch(n: int = 3, length: int = 10):
    """Token ids 1..19 without the planted one, the planted token at position 2 + i; labels
    1; the planted rationale as attributions (1 there, a small ramp elsewhere, no ties)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 20, (n, length), generator=g)
    x[x == PLANTED] = 1
    pos = torch.arange(n) + 2
    x[torch.arange(n), pos] = PLANTED
    ramp = torch.linspace(0.0, 0.1, length).expand(n, length).clone()
    a = ramp.clone()
    a[torch.arange(n), pos] = 1.0
    y = torch.ones(n, dtype=torch.int64)
    return x, y, a, pos


# ============================================================================ the kernels
def test_named_baselines_replace_tokens_by_the_mask_token_and_never_cast():
    tok = TokensModality(mask_token_id=103)
    x = torch.tensor([[5, 6, 7]])
    mask = torch.tensor([[False, True, True]])
    for kind in ("black", "mean", "white", "channel_mean"):
        out = Baseline(kind).fill(x, mask, modality=tok)
        assert out.dtype == torch.int64 and out.tolist() == [[5, 103, 103]]
    assert Baseline(42).fill(x, mask, modality=tok).tolist() == [[5, 42, 42]]
    assert Baseline("zero").fill(x, mask, modality=tok).tolist() == [[5, 0, 0]]
    assert Baseline("constant", value=9).fill(x, mask, modality=tok).tolist() == [[5, 9, 9]]
    ids = np.array([1, 2, 3])
    assert Baseline(ids).fill(x, mask, modality=tok).tolist() == [[5, 2, 3]]
    with pytest.raises(ValueError, match="random values, which are not token ids"):
        Baseline("uniform").fill(x, mask, keys=torch.zeros(1, dtype=torch.int64), modality=tok)
    with pytest.raises(ValueError, match="integer ids"):
        Baseline(0.5).fill(x, mask, modality=tok)
    with pytest.raises(TypeError, match="never by floating-point"):
        tok.replace(x, mask, torch.tensor(0.5))


def test_baseline_fill_through_a_numeric_modality_is_unchanged():
    x = torch.randn(2, 3, 4, 4)
    mask = torch.rand(2, 1, 4, 4) > 0.5
    for kind in ("black", "mean", "channel_mean", 0.3):
        base = Baseline(kind)
        assert torch.equal(base.fill(x, mask, modality=ImageModality()), base.fill(x, mask))


def test_token_deletion_drops_shifts_and_repads():
    x = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    mask = torch.tensor([[False, True, False, True], [True, True, True, True]])
    tok = TokensModality(mask_token_id=103, pad_token_id=0)
    assert tok.delete(x, mask).tolist() == [[5, 7, 0, 0], [0, 0, 0, 0]]
    assert impute(TokenDeletion(), x, mask, modality=tok).tolist() == [[5, 7, 0, 0], [0, 0, 0, 0]]
    assert TokenDeletion(pad_token_id=9).fill(x, mask, modality=tok).tolist()[0] == [5, 7, 9, 9]
    # no pad id: the mask token pads
    assert TokensModality(mask_token_id=103).delete(x, mask)[0].tolist() == [5, 7, 103, 103]
    assert isinstance(make_imputer("delete"), TokenDeletion)
    assert repr(TokensModality(mask_token_id=3)) == "TokensModality(mask_token_id=3)"


def test_an_imputer_returning_floats_on_token_ids_is_refused():
    class Floats(TokenDeletion):
        modality_aware = False

        def fill(self, x, mask, *, keys=None):
            return x.double()

    with pytest.raises(TypeError, match="never cast"):
        impute(Floats(), torch.tensor([[1, 2]]), torch.tensor([[True, False]]),
               modality=TokensModality())


def test_removal_metrics_replace_tokens_by_the_configured_mask_token():
    """The removal kernel on ids: the removed tokens become the modality's mask token. With
    the planted token as mask token, removing the planted token (the first step) changes
    nothing; the next steps plant more of it (negative drops)."""
    x, y, a, _ = planted_batch()
    model = Planted()
    metric = AOPC(n_steps=1)
    got = metric(model, x, y, a, modality=TokensModality(mask_token_id=0))
    assert np.allclose(got, (P_PLANTED - 0.5) / 2)
    same = AOPC(n_steps=1)(model, x, y, a, modality=TokensModality(mask_token_id=PLANTED))
    assert np.allclose(same, 0.0)
    assert np.allclose(AOPC(n_steps=1, perturb_baseline=PLANTED)(model, x, y, a), 0.0)
    more = AOPC(n_steps=2)
    more(model, x, y, a, modality=TokensModality(mask_token_id=PLANTED))
    p2 = 1 / (1 + math.exp(-2 * W))  # the second step plants a second token
    assert np.allclose(more.curves_, [[0.0, 0.0, P_PLANTED - p2]] * 3)
    # the kernel is shared, the declaration per replacement: a random baseline is no id
    with pytest.raises(ValueError, match="PixelFlipping does not apply to tokens"):
        PixelFlipping(perturb_baseline="uniform")(model, x, y, a)


# ============================================================================ ERASER
def test_eraser_comprehensiveness_and_sufficiency_of_the_planted_rationale():
    x, y, a, _ = planted_batch()
    model = Planted()
    comp = ERASERComprehensiveness()
    got = comp(model, x, y, a)
    # every bin's rationale holds the planted token: removing it leaves p = 0.5
    assert np.allclose(got, P_PLANTED - 0.5)
    assert np.allclose(comp.curves_, P_PLANTED - 0.5)
    assert comp.rationale_sizes_.tolist() == [[1, 1, 1, 2, 5]] * 3  # of 10 tokens
    assert np.allclose(comp.curve_x_, [0.01, 0.05, 0.1, 0.2, 0.5])
    suff = ERASERSufficiency()(model, x, y, a)
    assert np.allclose(suff, 0.0)  # the rationale alone keeps the prediction
    # the reversed ranking puts the planted token last: never in a rationale of <= 50 %
    assert np.allclose(ERASERComprehensiveness()(model, x, y, -a), 0.0)
    assert np.allclose(ERASERSufficiency()(model, x, y, -a), P_PLANTED - 0.5)
    # one k, and deletion with re-padding (the model reads no position: the same answer)
    assert np.allclose(ERASERComprehensiveness(percentages=20)(model, x, y, a), P_PLANTED - 0.5)
    assert np.allclose(ERASERComprehensiveness(perturb_baseline="delete")(model, x, y, a),
                       P_PLANTED - 0.5)
    assert ERASERComprehensiveness.higher_is_better and not ERASERSufficiency.higher_is_better


def test_eraser_with_deletion_shifts_a_positional_model():
    """A model that reads position 0 only: deleting the first token shifts the second one in,
    masking it does not."""

    class FirstToken(nn.Module):
        def forward(self, x):
            hit = (x[:, 0] == PLANTED).to(torch.float32) * W
            return torch.stack([torch.zeros_like(hit), hit], 1)

    x = torch.tensor([[1, PLANTED, 3, 4]])
    a = torch.tensor([[1.0, 0.0, 0.1, 0.2]])  # the first token is the rationale
    y = torch.tensor([1])
    masked = ERASERComprehensiveness(percentages=25)(FirstToken(), x, y, a)
    deleted = ERASERComprehensiveness(percentages=25, perturb_baseline="delete")(
        FirstToken(), x, y, a)
    assert np.allclose(masked, 0.0)  # 0.5 - 0.5
    assert np.allclose(deleted, 0.5 - P_PLANTED)  # the planted token moved to position 0


def test_eraser_on_constant_and_nan_maps():
    x, y, a, _ = planted_batch()
    model = Planted()
    metric = ERASERComprehensiveness(percentages=10)
    # a constant map ranks nothing: NaN with a reason; constant_maps="score" removes the ties
    # in feature order: the first token (not the planted one)
    with pytest.warns(Warning):
        assert np.isnan(metric(model, x, y, torch.zeros_like(a))).all()
    assert "constant" in metric.nan_reasons_[0]
    scored = metric.clone().set_params(constant_maps="score")
    assert np.allclose(scored(model, x, y, torch.zeros_like(a)), 0.0)
    a_nan = a.clone()
    a_nan[1, 0] = float("nan")
    with pytest.warns(Warning):
        got = metric(model, x, y, a_nan)
    assert np.isnan(got[1]) and "NaN" in metric.nan_reasons_[1]
    assert np.allclose(got[[0, 2]], P_PLANTED - 0.5)


def test_eraser_runs_on_images():
    fx = get_fixture("image")
    got = ERASERComprehensiveness(percentages=(10, 50))(fx.model, fx.x, fx.y, fx.a)
    assert got.shape == (4,) and np.isfinite(got).all()


# ============================================================================ soft variants
def test_soft_metrics_on_the_planted_model():
    """Importance: 1 on the planted token, <= 0.1 elsewhere after min-max scaling. Soft
    comprehensiveness keeps the planted token's 1-d embedding with probability 0: it is always
    dropped, the logit falls to 0 (p = 0.5, the empty input's): Soft-NC = 1. Soft sufficiency
    keeps it with probability 1: Soft-NS = 1."""
    x, y, a, _ = planted_batch()
    a = torch.where(a >= 1, a, torch.zeros_like(a))  # others 0: exactly 0 / 1 importance
    model = Planted()
    nc = SoftComprehensiveness(embedding_layer="embedding", nr_samples=3, seed=1)
    assert np.allclose(nc(model, x, y, a), 1.0)
    assert nc.draw_scores_.shape == (3, 3) and np.allclose(nc.draw_scores_, 0.5)
    ns = SoftSufficiency(embedding_layer="embedding", seed=1)
    assert np.allclose(ns(model, x, y, a), 1.0)
    raw = SoftSufficiency(embedding_layer="embedding", normalised_by_empty=False, seed=1)
    assert np.allclose(raw(model, x, y, a), 1.0)  # 1 - max(0, p - p) = 1
    raw_c = SoftComprehensiveness(embedding_layer="embedding", normalised_by_empty=False)
    assert np.allclose(raw_c(model, x, y, a), P_PLANTED - 0.5)
    # the reversed map: the planted token is the least important (kept by comprehensiveness,
    # dropped by sufficiency)
    assert np.allclose(SoftComprehensiveness(embedding_layer="embedding")(model, x, y, 1 - a),
                       0.0)
    assert np.allclose(SoftSufficiency(embedding_layer="embedding")(model, x, y, 1 - a), 0.0)


def test_soft_metrics_are_seeded_and_need_an_embedding_layer_on_tokens():
    fx = get_fixture("tokens")
    metric = SoftComprehensiveness(embedding_layer="embedding", nr_samples=2)
    first = metric.set_params(seed=3)(fx.model, fx.x, fx.y, fx.a)
    again = SoftComprehensiveness(embedding_layer="embedding", nr_samples=2, seed=3)(
        fx.model, fx.x, fx.y, fx.a)
    other = SoftComprehensiveness(embedding_layer="embedding", nr_samples=2, seed=4)(
        fx.model, fx.x, fx.y, fx.a)
    assert np.array_equal(first, again, equal_nan=True)
    assert not np.array_equal(first, other, equal_nan=True)
    assert SoftComprehensiveness(embedding_layer="embedding").modalities == ("tokens",)
    with pytest.raises(ValueError, match="pass embedding_layer="):
        SoftComprehensiveness()(fx.model, fx.x, fx.y, fx.a)
    with pytest.raises(ValueError, match="one vector per token"):
        SoftSufficiency(embedding_layer="fc")(fx.model, fx.x, fx.y, fx.a)
    const = SoftSufficiency(embedding_layer="embedding")
    out = const(fx.model, fx.x, fx.y, torch.ones_like(fx.a))
    assert np.isnan(out).all() and "constant" in const.nan_reasons_[0]
    # the hook is gone after the call
    assert not fx.model.embedding._forward_hooks


# ============================================================================ AOPC
def test_aopc_by_hand():
    x, y, a, _ = planted_batch(n=2, length=4)
    model = Planted()
    # MoRF: the planted token goes first: drops 0, d, d, d, d over k = 0..4
    d = P_PLANTED - 0.5
    assert np.allclose(AOPC()(model, x, y, a), 4 * d / 5)
    # LeRF: it goes last: drops 0, 0, 0, 0, d
    lerf = AOPC(order="lerf")
    assert np.allclose(lerf(model, x, y, a), d / 5) and not lerf.higher_is_better
    # two tokens a step, two steps: drops 0, d, d
    assert np.allclose(AOPC(features_in_step=2)(model, x, y, a), 2 * d / 3)
    # one step only: drops 0, d
    assert np.allclose(AOPC(n_steps=1)(model, x, y, a), d / 2)


# ============================================================================ plausibility
def test_token_f1_by_hand():
    a = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.0]])
    s = torch.tensor([[True, False, False, True, False]])
    x = torch.arange(5).reshape(1, 5)
    kw = {"normalise": False}
    assert np.allclose(TokenF1(**kw)(None, x, None, a, s=s), 0.5)  # top-2 {0, 2}: 1 hit
    m = TokenF1(threshold=0.15, **kw)
    assert np.allclose(m(None, x, None, a, s=s), 0.8)  # {0, 2, 3}: P 2/3, R 1
    assert np.allclose(m.precision_, 2 / 3) and np.allclose(m.recall_, 1.0)
    assert np.allclose(TokenF1(k=1, **kw)(None, x, None, a, s=s), 2 / 3)  # P 1, R 1/2
    # ties: a constant map is NaN with a reason; with constant_maps="score" it scores the
    # expected F1, k |s| / L hits of k
    with pytest.warns(Warning):
        assert np.isnan(TokenF1(**kw)(None, x, None, torch.ones_like(a), s=s)).all()
    scored = TokenF1(constant_maps="score", **kw)
    assert np.allclose(scored(None, x, None, torch.ones_like(a), s=s), 0.4)
    # nothing above the threshold: F1 0; an empty rationale: NaN with a reason
    assert np.allclose(TokenF1(threshold=2.0, **kw)(None, x, None, a, s=s), 0.0)
    empty = TokenF1(**kw)
    with pytest.warns(Warning):
        assert np.isnan(empty(None, x, None, a, s=torch.zeros_like(s))).all()
    assert "empty" in empty.nan_reasons_[0]


def test_iou_f1_by_hand():
    s = torch.tensor([[0, 1, 1, 1, 0, 0, 1, 1]], dtype=torch.bool)  # spans [1, 4), [6, 8)
    x = torch.arange(8).reshape(1, 8)
    kw = {"normalise": False}
    # top 5 = {0, 1, 2, 6, 7}: spans [0, 3) (IOU 2/4 = 0.5 with [1, 4)) and [6, 8) (IOU 1)
    a = torch.tensor([[0.8, 0.9, 0.85, 0.1, 0.0, 0.05, 0.7, 0.75]])
    assert np.allclose(IOUF1(**kw)(None, x, None, a, s=s), 1.0)
    # the top token alone, span [1, 2): IOU 1/3 with [1, 4): no match at 0.5 ...
    one = torch.tensor([[0.0, 0.9, 0.1, 0.2, 0.0, 0.05, 0.3, 0.4]])
    assert np.allclose(IOUF1(k=1, **kw)(None, x, None, one, s=s), 0.0)
    # ... a match at 0.3: precision 1, recall 1/2
    low = IOUF1(k=1, iou_threshold=0.3, **kw)
    assert np.allclose(low(None, x, None, one, s=s), 2 / 3)
    assert np.allclose(low.recall_, 0.5) and np.allclose(low.precision_, 1.0)
    # one true span, one predicted span: IOU > 0.5 is a hit
    s1 = torch.tensor([[0, 1, 1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    a1 = torch.tensor([[0.0, 0.0, 0.9, 0.8, 0.7, 0.6, 0.0, 0.0]])  # [2, 6): IOU 3/5
    assert np.allclose(IOUF1(**kw)(None, x, None, a1 + 0.01 * torch.arange(8), s=s1), 1.0)
    const = IOUF1(**kw)
    with pytest.warns(Warning):
        assert np.isnan(const(None, x, None, torch.ones_like(a), s=s)).all()
    assert "constant" in const.nan_reasons_[0]


def test_auprc_by_hand():
    from sklearn.metrics import average_precision_score

    x = torch.arange(4).reshape(1, 4)
    kw = {"normalise": False}
    cases = [([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0], 0.5 + 0.5 * 2 / 3),
             ([0.9, 0.5, 0.5, 0.1], [1, 0, 1, 0], 0.5 + 0.5 * 2 / 3),
             ([0.5, 0.5, 0.9, 0.1], [1, 0, 0, 1], 0.5 / 3 + 0.5 * 0.5),
             ([0.3, 0.3, 0.3, 0.3], [1, 0, 0, 1], 0.5)]  # a constant map: the prevalence
    for values, truth, want in cases:
        a = torch.tensor([values])
        s = torch.tensor([truth], dtype=torch.bool)
        # (a constant map is NaN with a reason by default; scored on request)
        got = AUPRC(constant_maps="score", **kw)(None, x, None, a, s=s)
        assert np.allclose(got, want)
        assert np.allclose(got, average_precision_score(truth, values))
    full = AUPRC(**kw)
    with pytest.warns(Warning):
        assert np.isnan(full(None, x, None, torch.rand(1, 4), s=torch.ones(1, 4, dtype=bool)))
    assert "whole input" in full.nan_reasons_[0]


def test_auprc_matches_sklearn_on_random_maps():
    from sklearn.metrics import average_precision_score

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (20, 15), generator=g).to(torch.float64)  # many ties
    s = torch.rand(20, 15, generator=g) < 0.3
    s[:, 0], s[:, 1] = True, False
    got = AUPRC(normalise=False)(None, torch.zeros(20, 15, dtype=torch.int64), None, a, s=s)
    want = [average_precision_score(s[i].numpy(), a[i].numpy()) for i in range(20)]
    assert np.allclose(got, want)


# ============================================================================ other families
def test_model_free_families_on_token_ids():
    fx = get_fixture("tokens")
    one_hot = torch.zeros_like(fx.a)
    one_hot[:, 0] = 1.0
    # one token holds everything: the sparsest map, entropy 0
    assert np.allclose(Sparseness()(None, fx.x, None, one_hot), 1 - 1 / fx.x.shape[1], atol=0.1)
    assert np.allclose(Complexity()(None, fx.x, None, one_hot), 0.0)
    uniform = torch.ones_like(fx.a)
    assert np.allclose(Complexity()(None, fx.x, None, uniform), math.log(fx.x.shape[1]))
    for metric in (Sparseness(), Complexity()):
        check_metric(metric, modality="tokens")


def _token_explainer(model, x, y, **kwargs):
    """The fixture model's exact token contributions (an explainer that handles ids)."""
    with torch.no_grad():
        emb = model.embedding.weight[x]  # (N, L, D)
        w = model.fc.weight[y]
        return torch.einsum("nld,nd->nl", emb, w) / x.shape[1]


def test_randomisation_metrics_run_on_token_ids_with_an_embedding_explainer():
    """RandomLogit, MPRT and EfficientMPRT declare token ids (they re-explain with the explain
    function, which handles ids) and compute per-sample results on them; SmoothMPRT adds input
    noise and stays undefined for ids."""
    from evalkit.metrics import EfficientMPRT, SmoothMPRT

    fx = get_fixture("tokens")
    with pytest.raises(ValueError, match="SmoothMPRT does not apply to tokens"):
        SmoothMPRT()(fx.model, fx.x, fx.y, fx.a, explain_fn=_token_explainer)
    outs = {}
    for cls in (RandomLogit, MPRT, EfficientMPRT):
        assert "tokens" in cls.modalities
        out = cls(seed=0)(fx.model, fx.x, fx.y, fx.a, explain_fn=_token_explainer)
        assert out.shape == (4,) and np.isfinite(out).all(), (cls.__name__, out)
        first = cls(seed=0)(fx.model, fx.x[:1], fx.y[:1], fx.a[:1], explain_fn=_token_explainer)
        assert np.allclose(first, out[:1]), cls.__name__
        outs[cls.__name__] = out
    # a randomised model explains differently: MPRT's rank correlations are below 1
    assert np.all(outs["MPRT"] < 1)


def test_max_sensitivity_with_token_dropout():
    x, y, a, _ = planted_batch(n=3, length=6)
    model = Planted()

    def planted_map(model, x, y, **kwargs):
        return (x == PLANTED).to(torch.float64)

    metric = MaxSensitivity(nr_samples=4, perturb_func=TokenDropout(0.5), seed=0)
    assert metric.modalities == ("tokens",)
    got = metric(model, x, y, planted_map(None, x, y), explain_fn=planted_map)
    # a draw that drops the planted token zeroes the map: ||a - a'|| / ||a|| = 1, else 0
    assert set(np.unique(metric.draw_scores_)) <= {0.0, 1.0}
    assert np.array_equal(got, metric.draw_scores_.max(1))
    alone = [MaxSensitivity(nr_samples=4, perturb_func=TokenDropout(0.5), seed=0)(
        model, x[i:i + 1], y[i:i + 1], planted_map(None, x[i:i + 1], y), explain_fn=planted_map)
        for i in range(3)]
    assert np.array_equal(np.concatenate(alone), got)
    # the draws replace tokens by the mask token, about half of them
    from evalkit.metrics.robustness._engine import _dropout_draws

    draws = _dropout_draws(TokenDropout(0.5), 50, TokensModality(mask_token_id=0))
    copies = draws.make(x, torch.arange(3))
    changed = copies != x.unsqueeze(1)
    assert bool((copies[changed] == 0).all()) and 0.35 < changed.double().mean() < 0.65
    with pytest.raises(ValueError, match=r"additive noise.*TokenDropout"):
        MaxSensitivity(nr_samples=2)(model, x, y, a, explain_fn=planted_map)
    with pytest.raises(ValueError, match="distance between inputs"):
        from evalkit.metrics import LocalLipschitzEstimate

        LocalLipschitzEstimate(perturb_func=TokenDropout(0.1))


# ============================================================================ conformance
@pytest.mark.parametrize("metric", [
    ERASERComprehensiveness(), ERASERSufficiency(), AOPC(features_in_step=4),
    ERASERComprehensiveness(perturb_baseline="delete", percentages=(10, 50)),
    SoftComprehensiveness(embedding_layer="embedding", nr_samples=2),
    SoftSufficiency(embedding_layer="embedding", nr_samples=2),
    TokenF1(), IOUF1(), AUPRC(),
], ids=lambda m: repr(m))
def test_new_metrics_conform_on_tokens(metric):
    check_metric(metric, modality="tokens")


def test_evaluate_runs_the_text_metrics_on_token_ids():
    """evaluate() passes the modality to every metric: the mask token of the given modality
    is what the removal metrics insert."""
    import evalkit as ek

    x, y, a, _ = planted_batch()
    model = Planted()
    metrics = {"comp": ERASERComprehensiveness(), "suff": ERASERSufficiency(),
               "aopc": AOPC(n_steps=1), "f1": TokenF1()}
    s = a >= 1  # the planted token is the human rationale
    results = ek.evaluate(metrics, {"planted": a.numpy(), "reversed": (-a).numpy()}, model,
                          x, y, s.numpy(), modality=TokensModality(mask_token_id=0))
    frame = results.to_frame()
    mean = frame.groupby(["method", "metric"])["score"].mean()
    assert np.isclose(mean["planted", "comp"], P_PLANTED - 0.5)
    assert np.isclose(mean["reversed", "comp"], 0.0)
    assert np.isclose(mean["planted", "suff"], 0.0)
    assert np.isclose(mean["planted", "f1"], 1.0) and np.isclose(mean["reversed", "f1"], 0.0)
    # the planted token as mask token: removing it changes nothing
    again = ek.evaluate({"aopc": AOPC(n_steps=1)}, {"planted": a.numpy()}, model, x, y,
                        modality=TokensModality(mask_token_id=PLANTED))
    assert np.allclose(again.to_frame()["score"], 0.0)
