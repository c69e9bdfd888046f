"""metaeval's input perturbation tests on tables with a column spec and on token ids: the noise
goes through the modality (``valid_noise``), so perturbed rows stay valid (one-hot rows,
ordinal levels), and on token ids the test drops tokens (``drop_rate``, the mask token) or
refuses with a message saying what to give."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
import metaeval as me
from evalkit.metrics import PixelFlipping, Sparseness
from evalkit.modality import TabularModality, TokensModality
from metaeval.suite import InputPerturbationTest

# columns: 0, 1 continuous; 2..4 a one-hot feature; 5 ordinal with levels 0..3
SPEC = TabularModality(kinds=["continuous", "continuous", "categorical", "categorical",
                              "categorical", "ordinal"],
                       groups=[[2, 3, 4]], categories={5: [0, 1, 2, 3]})
INPUT_TESTS = [InputPerturbationTest("Resilience", 0.3), InputPerturbationTest("Adversary", 2.0)]


def _table(n: int = 24):
    gen = torch.Generator().manual_seed(0)
    cont = torch.rand(n, 2, generator=gen)
    hot = torch.nn.functional.one_hot(torch.randint(0, 3, (n,), generator=gen), 3).float()
    ordinal = torch.randint(0, 4, (n, 1), generator=gen).float()
    x = torch.cat([cont, hot, ordinal], 1)
    model = nn.Sequential(nn.Linear(6, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(3, 6, generator=gen))
        y = model(x).argmax(1)
    return model.eval(), x, y


def _valid_rows(xh: torch.Tensor) -> torch.Tensor:
    block = xh[:, 2:5]
    one_hot = ((block == 0) | (block == 1)).all(1) & (block.sum(1) == 1)
    ordinal = torch.isin(xh[:, 5], torch.tensor([0.0, 1.0, 2.0, 3.0]))
    return one_hot & ordinal


def test_input_noise_keeps_a_tables_rows_valid_under_its_column_spec():
    model, x, y = _table()
    meta = me.MetaEvaluation(INPUT_TESTS, ["Saliency"], iterations=1, nr_perturbations=1)
    spec_state = meta.prepare(model, x, y, modality=SPEC)
    plain_state = meta.prepare(model, x, y)
    for test in INPUT_TESTS:
        xh = meta._perturbed_input(spec_state, test, 0, 0)
        assert _valid_rows(xh).all(), test.name
        # the continuous columns moved, within the clip range (the batch's [min, max])
        assert not torch.equal(xh[:, :2], x[:, :2])
        lo, hi = spec_state.data_range
        assert float(xh[:, :2].min()) >= lo and float(xh[:, :2].max()) <= hi
        # without the spec every column gets additive noise: rows are no longer valid
        plain = meta._perturbed_input(plain_state, test, 0, 0)
        assert not _valid_rows(plain).any(), test.name
    # the large noise flips categories (flip probability capped at 1): some one-hot rows
    # change, to another valid category
    adversary = meta._perturbed_input(spec_state, INPUT_TESTS[1], 0, 0)
    assert not torch.equal(adversary[:, 2:5], x[:, 2:5])


def test_the_meta_evaluation_passes_the_column_spec_to_the_metrics():
    model, x, y = _table()
    meta = me.MetaEvaluation(INPUT_TESTS, ["Saliency"], iterations=1, nr_perturbations=2,
                             seed=0)
    metrics = {"PF": PixelFlipping(), "Sparseness": Sparseness()}
    res = meta(metrics, model, x, y, modality=SPEC)
    block = res.blocks[0]
    # every perturbed input passed the spec's validation (the metrics check it), and the
    # one-hot group is one feature: 4 features, 5 points on each PixelFlipping curve
    q_star = block.metrics["PF"].q_star
    assert np.isfinite(q_star).all()
    pf = PixelFlipping()
    a = ek.explain(model, x, y, method="Saliency")
    pf(model, x, y, a, modality=SPEC)
    assert pf.curves_.shape == (x.shape[0], 5)
    # a perturbation that broke a one-hot row would have failed the call: the scores exist
    for name in metrics:
        for test in INPUT_TESTS:
            assert np.isfinite(block.metrics[name].q_hat[test.name]).any()


def _tokens(n: int = 12, length: int = 16):
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(1, 20, (n, length), generator=gen)

    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embedding = nn.Embedding(20, 4)
            self.head = nn.Linear(4, 3)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.embedding(ids).mean(1))

    torch.manual_seed(0)
    model = Bag().eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_input_tests_refuse_token_ids_without_a_drop_rate():
    model, x, y = _tokens()
    meta = me.MetaEvaluation(me.default_suite(), ["Saliency"], iterations=1,
                             nr_perturbations=1)
    with pytest.raises(ValueError, match=r"Input Resilience Test, Input Adversary Test: "
                                         r"additive input noise is not defined for tokens.*"
                                         r"drop_rate="):
        meta.prepare(model, x, y)
    with pytest.raises(ValueError, match="`drop_rate` must be in"):
        InputPerturbationTest("Resilience", drop_rate=1.5)


def test_input_tests_drop_tokens_on_ids():
    model, x, y = _tokens()
    tests = [InputPerturbationTest("Resilience", drop_rate=0.1),
             InputPerturbationTest("Adversary", drop_rate=0.6)]
    meta = me.MetaEvaluation(tests, {"InputXGradient": {"embedding_layer": "embedding"}},
                             iterations=1, nr_perturbations=2, seed=0)
    mask_id = 0
    state = meta.prepare(model, x, y, modality=TokensModality(mask_token_id=mask_id))
    for test, rate in zip(tests, (0.1, 0.6), strict=True):
        xh = meta._perturbed_input(state, test, 0, 0)
        assert xh.dtype == torch.int64 and xh.shape == x.shape
        dropped = xh != x
        # a changed token became the mask token (the ids are 1..19: none is 0 before)
        assert (xh[dropped] == mask_id).all()
        assert abs(float(dropped.double().mean()) - rate) < 0.15
        # the draws are seeded per (test, iteration, perturbation)
        assert torch.equal(xh, meta._perturbed_input(state, test, 0, 0))
        assert not torch.equal(xh, meta._perturbed_input(state, test, 0, 1))
    # the whole meta-evaluation runs on ids, with a removal metric and a model-free one
    # (InputXGradient: the embedding gradient of a mean of embeddings is the same for every
    # token, so Saliency would give constant maps)
    res = meta({"PF": PixelFlipping(), "Sparseness": Sparseness()}, model, x, y,
               modality=TokensModality(mask_token_id=mask_id))
    block = res.blocks[0]
    assert np.isfinite(block.metrics["PF"].q_star).all()
    assert tests[0].params()["drop_rate"] == 0.1
    assert "drop_rate" not in InputPerturbationTest("Resilience").params()
