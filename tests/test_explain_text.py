"""``explain()`` on token ids (N, L): embedding-layer gradients, mask-token perturbations,
attention masks and padding, against answers computed by hand on tiny models.

The bag-of-embeddings model ``logit_c = mean_t W_c . E[ids_t] + b_c`` is linear in the
embeddings, so every additive method has a closed form: the contribution of token t is
``W_c . (E[ids_t] - E[mask]) / L`` (with the mask token as the reference), the gradient at the
embedding is ``W_c / L``, and a token's occlusion drop is its contribution.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit.explain import available_methods, explainer_info
from evalkit.modality import TokensModality

VOCAB, DIM, CLASSES, LENGTH = 12, 4, 3, 6
MASK = 0
DOCS = Path(__file__).resolve().parent.parent / "docs"


class Bag(nn.Module):
    """Embedding -> (tanh) -> mean over tokens -> linear."""

    def __init__(self, nonlinear: bool = False, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.embedding = nn.Embedding(VOCAB, DIM)
        self.act = nn.Tanh() if nonlinear else nn.Identity()
        self.fc = nn.Linear(DIM, CLASSES)
        with torch.no_grad():
            self.embedding.weight.copy_(torch.randn(VOCAB, DIM, generator=gen))
            self.fc.weight.copy_(torch.randn(CLASSES, DIM, generator=gen))
            self.fc.bias.copy_(torch.randn(CLASSES, generator=gen))
        self.double()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.embedding(ids)).mean(1))


class MaskedBag(Bag):
    """Takes ``(ids, attention_mask)``: the mean over the positions whose mask is 1."""

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keep = attention_mask.to(torch.float64).unsqueeze(-1)
        pooled = (self.act(self.embedding(ids)) * keep).sum(1) / keep.sum(1)
        return self.fc(pooled)


class TwoEmbeddings(Bag):
    """Token and position embeddings: two nn.Embedding layers."""

    def __init__(self) -> None:
        super().__init__()
        self.position = nn.Embedding(LENGTH, DIM).double()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = self.position(torch.arange(ids.shape[1], device=ids.device))
        return self.fc((self.embedding(ids) + pos).mean(1))


class NoEmbedding(nn.Module):
    """Scores ids through a lookup table without any embedding module."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(VOCAB, CLASSES, dtype=torch.float64,
                                              generator=torch.Generator().manual_seed(3)))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids].mean(1)


def _ids(n: int = 4, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (n, LENGTH), generator=gen)


def _labels(n: int = 4) -> torch.Tensor:
    return torch.arange(n) % CLASSES


def _contributions(model: Bag, ids: torch.Tensor, y: torch.Tensor,
                   mask: int = MASK) -> torch.Tensor:
    """``W_y . (E[ids_t] - E[mask]) / L`` per token (the linear Bag)."""
    e = model.embedding.weight.detach()
    w = model.fc.weight.detach()[y]  # (N, D)
    return torch.einsum("nld,nd->nl", e[ids] - e[mask], w) / ids.shape[1]


def _logit(model: nn.Module, ids: torch.Tensor, y: torch.Tensor, *args) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, *args)[torch.arange(len(y)), y]


TOKEN_METHODS = available_methods("tokens")


# ============================================================================ known answers
def test_every_issue_method_supports_tokens():
    for name in ("LayerIntegratedGradients", "LayerGradientXActivation", "Saliency",
                 "InputXGradient", "IntegratedGradients", "Occlusion", "FeatureAblation",
                 "Lime", "KernelShap", "DeepLift", "GradientShap", "Random", "Constant"):
        assert name in TOKEN_METHODS, name
        assert explainer_info(name).supports("tokens")


def test_input_x_gradient_is_the_per_token_contribution():
    model, ids, y = Bag(), _ids(), _labels()
    a = ek.explain(model, ids, y, "InputXGradient")
    e = model.embedding.weight.detach()
    w = model.fc.weight.detach()[y]
    expected = torch.einsum("nld,nd->nl", e[ids], w) / LENGTH
    assert a.shape == ids.shape and a.dtype == torch.float64
    torch.testing.assert_close(a, expected, rtol=1e-12, atol=1e-12)
    # LayerGradientXActivation at the (default) embedding layer is the same quantity
    torch.testing.assert_close(ek.explain(model, ids, y, "LayerGradientXActivation"), expected)


def test_gradients_at_the_embedding():
    model, ids, y = Bag(), _ids(), _labels()
    w = model.fc.weight.detach()[y] / LENGTH  # dS/de_t for every t
    grad = ek.explain(model, ids, y, "Gradient")
    torch.testing.assert_close(grad, w.sum(1, keepdim=True).expand_as(grad))
    sal = ek.explain(model, ids, y, "Saliency")
    torch.testing.assert_close(sal, w.abs().sum(1, keepdim=True).expand_as(sal))
    norm = ek.explain(model, ids, y, "Saliency", embedding_reduce="norm")
    torch.testing.assert_close(norm, w.norm(dim=1, keepdim=True).expand_as(norm))
    with pytest.raises(ValueError, match="embedding_reduce"):
        ek.explain(model, ids, y, "Saliency", embedding_reduce="max")


@pytest.mark.parametrize("method", ["IntegratedGradients", "LayerIntegratedGradients",
                                    "DeepLift", "GradientShap"])
def test_reference_methods_on_a_linear_model_are_the_contributions(method):
    model, ids, y = Bag(), _ids(), _labels()
    a = ek.explain(model, ids, y, method)
    torch.testing.assert_close(a, _contributions(model, ids, y), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", ["LayerIntegratedGradients", "DeepLift"])
def test_completeness_on_a_nonlinear_model(method):
    """sum_t a_t = S(ids) - S(mask everywhere), to 1e-4 (IG: a quadrature of the path
    integral; DeepLift's Rescale rule: exact summation to delta)."""
    model, ids, y = Bag(nonlinear=True), _ids(), _labels()
    a = ek.explain(model, ids, y, method, n_steps=64) if "Integrated" in method else \
        ek.explain(model, ids, y, method)
    gap = _logit(model, ids, y) - _logit(model, torch.full_like(ids, MASK), y)
    torch.testing.assert_close(a.sum(1), gap, rtol=0, atol=1e-4)


def test_occlusion_with_the_mask_token_is_the_logit_drop_by_hand():
    model, ids, y = Bag(nonlinear=True), _ids(), _labels()
    a = ek.explain(model, ids, y, "Occlusion")
    full = _logit(model, ids, y)
    expected = torch.empty(ids.shape, dtype=torch.float64)
    for t in range(LENGTH):
        masked = ids.clone()
        masked[:, t] = MASK
        expected[:, t] = full - _logit(model, masked, y)
    torch.testing.assert_close(a, expected)
    torch.testing.assert_close(ek.explain(model, ids, y, "FeatureAblation"), expected)


def test_occlusion_windows_average_the_drops():
    model, ids, y = Bag(nonlinear=True), _ids(2), _labels(2)
    a = ek.explain(model, ids, y, "Occlusion", sliding_window_shapes=(2,), strides=2)
    full = _logit(model, ids, y)
    expected = torch.empty(ids.shape, dtype=torch.float64)
    for start in range(0, LENGTH, 2):
        masked = ids.clone()
        masked[:, start:start + 2] = MASK
        expected[:, start:start + 2] = (full - _logit(model, masked, y)).unsqueeze(1)
    torch.testing.assert_close(a, expected)


def test_feature_ablation_groups_share_the_drop():
    model, ids, y = Bag(nonlinear=True), _ids(2), _labels(2)
    groups = torch.tensor([[0, 0, 1, 1, 1, 2]])
    a = ek.explain(model, ids, y, "FeatureAblation", feature_mask=groups)
    full = _logit(model, ids, y)
    for g in range(3):
        masked = torch.where(groups == g, MASK, ids)
        drop = full - _logit(model, masked, y)
        torch.testing.assert_close(a[:, groups[0] == g],
                                   drop.unsqueeze(1).expand(-1, int((groups == g).sum())))


def test_the_mask_token_is_configurable():
    model, ids, y = Bag(), _ids(), _labels()
    by_kwarg = ek.explain(model, ids, y, "LayerIntegratedGradients", mask_token_id=5)
    by_modality = ek.explain(model, ids, y, "LayerIntegratedGradients",
                             modality=TokensModality(mask_token_id=5))
    expected = _contributions(model, ids, y, mask=5)
    torch.testing.assert_close(by_kwarg, expected)
    torch.testing.assert_close(by_modality, expected)
    occ = ek.explain(model, ids, y, "Occlusion", modality=TokensModality(mask_token_id=5))
    torch.testing.assert_close(occ, expected)


def test_kernel_shap_and_lime_recover_the_contributions_of_a_linear_model():
    """Exact Shapley values of a model linear in the present/absent tokens are the
    contributions; KernelShap's weighted least squares and LIME with an unregularised linear
    surrogate both fit them exactly."""
    from captum._utils.models.linear_model import SkLearnLinearRegression

    model, ids, y = Bag(), _ids(2), _labels(2)
    expected = _contributions(model, ids, y)
    ks = ek.explain(model, ids, y, "KernelShap", n_samples=200)
    torch.testing.assert_close(ks, expected, rtol=1e-5, atol=1e-6)
    lime = ek.explain(model, ids, y, "Lime", n_samples=200,
                      constructor_kwargs={"interpretable_model": SkLearnLinearRegression()})
    torch.testing.assert_close(lime, expected, rtol=1e-5, atol=1e-6)


# ============================================================================ ids untouched
class RecordingBag(Bag):
    """Records the dtype of every ids tensor it is given."""

    def __init__(self) -> None:
        super().__init__(nonlinear=True)
        self.seen: list[torch.dtype] = []

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self.seen.append(ids.dtype)
        return super().forward(ids)


@pytest.mark.parametrize("method", TOKEN_METHODS)
def test_ids_are_neither_mutated_nor_cast(method):
    model, ids, y = RecordingBag(), _ids(), _labels()
    before = ids.clone()
    kw = {"masks": torch.ones(ids.shape)} if explainer_info(method).needs_masks else {}
    a = ek.explain(model, ids, y, method, **kw)
    assert torch.equal(ids, before) and ids.dtype == torch.int64
    assert set(model.seen) <= {torch.int64}
    assert a.shape == ids.shape and a.is_floating_point() and bool(torch.isfinite(a).all())


@pytest.mark.parametrize("method", TOKEN_METHODS)
def test_numpy_in_numpy_out_and_batch_invariance(method):
    model, ids, y = Bag(nonlinear=True), _ids(5), _labels(5)
    kw = {"masks": np.ones(ids.shape)} if explainer_info(method).needs_masks else {}
    whole = ek.explain(model, ids.numpy(), y.numpy(), method, **kw)
    ones = ek.explain(model, ids.numpy(), y.numpy(), method, batch_size=2, **kw)
    assert isinstance(whole, np.ndarray) and whole.shape == ids.shape
    np.testing.assert_allclose(whole, ones, rtol=1e-9, atol=1e-12)


# ============================================================================ padding
PADDED = [m for m in TOKEN_METHODS if m not in ("Random", "Constant", "GroundTruth")]


@pytest.mark.parametrize("method", PADDED)
def test_attention_mask_flows_through_and_padding_gets_zero(method):
    """A model taking (ids, attention_mask): the mask reaches every forward call (with
    perturbed and expanded ids too), padded positions get exactly 0, and the other positions
    get what the same text without padding gets."""
    model, y = MaskedBag(nonlinear=True), _labels(2)
    short = _ids(2)[:, :4]
    padded = torch.cat([short, torch.full((2, 2), MASK)], 1)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]] * 2)
    kw = {"seed": 3} if explainer_info(method).stochastic else {}
    a = ek.explain(model, padded, y, method, attention_mask=mask, **kw)
    assert torch.all(a[:, 4:] == 0)
    ref = ek.explain(model, short, y, method, attention_mask=mask[:, :4], **kw)
    if method not in ("Lime", "KernelShap", "GradientShap"):  # their draws see the length
        torch.testing.assert_close(a[:, :4], ref, rtol=1e-6, atol=1e-8)


def test_pad_token_id_zeroes_padding_without_an_attention_mask():
    model, ids, y = Bag(), _ids(), _labels()
    ids[:, -2:] = 11
    a = ek.explain(model, ids, y, "InputXGradient", pad_token_id=11)
    assert torch.all(a[:, -2:] == 0) and torch.all(a[:, :-2] != 0)
    occ = ek.explain(model, ids, y, "Occlusion", pad_token_id=11)
    assert torch.all(occ[:, -2:] == 0)


def test_additional_forward_args_are_sliced_and_expanded():
    class Scaled(Bag):
        def forward(self, ids, scale):
            return super().forward(ids) * scale.unsqueeze(1)

    model, ids, y = Scaled(), _ids(4), _labels(4)
    scale = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64)
    expected = _contributions(model, ids, y) * scale.unsqueeze(1)
    for method in ("LayerIntegratedGradients", "Occlusion", "GradientShap"):
        a = ek.explain(model, ids, y, method, additional_forward_args=(scale,), batch_size=3)
        torch.testing.assert_close(a, expected, rtol=1e-9, atol=1e-9)


# ============================================================================ embedding layer
def test_embedding_layer_by_name_or_module_and_clear_errors():
    model, ids, y = TwoEmbeddings(), _ids(), _labels()
    with pytest.raises(ValueError, match=r"InputXGradient.*2 nn.Embedding.*embedding_layer="):
        ek.explain(model, ids, y, "InputXGradient")
    by_name = ek.explain(model, ids, y, "InputXGradient", embedding_layer="embedding")
    by_module = ek.explain(model, ids, y, "InputXGradient", embedding_layer=model.embedding)
    torch.testing.assert_close(by_name, by_module)
    e, w = model.embedding.weight.detach(), model.fc.weight.detach()[y]
    torch.testing.assert_close(by_name, torch.einsum("nld,nd->nl", e[ids], w) / LENGTH)
    # layer= names another per-token layer, and then no embedding needs resolving
    act = ek.explain(model, ids, y, "LayerGradientXActivation", layer="embedding")
    torch.testing.assert_close(act, by_name)
    with pytest.raises(ValueError, match=r"Saliency.*no nn.Embedding.*embedding_layer="):
        ek.explain(NoEmbedding(), ids, y, "Saliency")
    # perturbation methods need no embedding layer
    assert ek.explain(NoEmbedding(), ids, y, "Occlusion").shape == ids.shape


def test_methods_without_a_token_form_name_themselves_and_the_fix():
    model, ids, y = Bag(), _ids(), _labels()
    for method in ("GradCAM", "LayerGradCam", "GuidedBackprop", "LRP", "LayerConductance",
                   "Sobel"):
        with pytest.raises(ValueError, match=rf"{method} does not apply to tokens.*"
                                             r"LayerIntegratedGradients"):
            ek.explain(model, ids, y, method)


def test_black_box_callable_on_ids():
    model, ids, y = Bag(nonlinear=True), _ids(), _labels()

    def predict(batch: np.ndarray) -> np.ndarray:
        assert np.issubdtype(batch.dtype, np.integer)
        with torch.no_grad():
            return model(torch.as_tensor(batch)).numpy()

    a = ek.explain(predict, ids.numpy(), y.numpy(), "Occlusion")
    np.testing.assert_allclose(a, ek.explain(model, ids, y, "Occlusion").numpy(), rtol=1e-6)
    with pytest.raises(TypeError, match="Saliency"):
        ek.explain(predict, ids.numpy(), y.numpy(), "Saliency")


def test_numpy_callable_gets_the_attention_mask_as_an_array():
    model, y = MaskedBag(nonlinear=True), _labels(2)
    ids = _ids(2)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])

    def predict(batch: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        assert isinstance(attention_mask, np.ndarray) and len(attention_mask) == len(batch)
        with torch.no_grad():
            return model(torch.as_tensor(batch), torch.as_tensor(attention_mask)).numpy()

    a = ek.explain(predict, ids.numpy(), y.numpy(), "FeatureAblation",
                   attention_mask=mask.numpy())
    expected = ek.explain(model, ids, y, "FeatureAblation", attention_mask=mask)
    np.testing.assert_allclose(a, expected.numpy(), rtol=1e-6, atol=1e-7)
    assert np.all(a[mask.numpy() == 0] == 0)


# ============================================================================ controls
def test_controls_give_per_token_float_maps():
    model, ids, y = Bag(), _ids(), _labels()
    r = ek.explain(model, ids, y, "Random", seed=1)
    assert r.shape == ids.shape and r.dtype == torch.float64
    assert torch.equal(r[1:2], ek.explain(model, ids[1:2], y[1:2], "Random", seed=1))
    c = ek.explain(model, ids, y, "Constant", constant_value=2.0)
    assert torch.equal(c, torch.full(ids.shape, 2.0, dtype=torch.float64))
    g = ek.explain(model, ids, y, "GroundTruth", masks=ids > 5)
    assert torch.equal(g, (ids > 5).double())
    # no method puts mass on padding, the controls included (also when chunked)
    mask = torch.ones_like(ids)
    mask[1:, 4:] = 0
    for method in ("Random", "Constant"):
        a = ek.explain(model, ids, y, method, attention_mask=mask, batch_size=2)
        assert torch.all(a[mask == 0] == 0) and torch.all(a[mask == 1] != 0)


# ============================================================================ docs
def test_docs_example_runs():
    page = (DOCS / "explainers.md").read_text(encoding="utf-8")
    section = page.split("## Text, tabular and time series", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "docs/explainers.md", "exec"), {"__name__": "__docs__"})


def test_evaluate_passes_its_modality_to_explain():
    """evaluate(modality=TokensModality(mask_token_id=k)) explains with that mask token, as
    explain(..., modality=...) does (the scores are those of the explicitly explained maps)."""
    model, ids, y = Bag(), _ids(), _labels()
    modality = TokensModality(mask_token_id=3)
    results = ek.evaluate({"Sparseness": ek.metrics.Sparseness()}, {"Occlusion": {}}, model,
                          ids, y, modality=modality, progress=False)
    expected = ek.explain(model, ids, y, "Occlusion", modality=modality)
    default = ek.explain(model, ids, y, "Occlusion")
    want = ek.metrics.Sparseness()(model, ids, y, expected, modality=modality)
    other = ek.metrics.Sparseness()(model, ids, y, default, modality=modality)
    assert not np.allclose(want, other)  # the mask token matters for this model
    np.testing.assert_allclose(results["Occlusion", "Sparseness"], want, rtol=1e-6)
