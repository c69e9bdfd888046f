"""Attention rollout (Abnar & Zuidema 2020): the recomputed attention weights against the
module's own ``need_weights=True`` output, known answers on hand-built attention stacks, the
options, clear errors, and that nothing on the model is changed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit.explain import explainer_info
from evalkit.explain.rollout import rollout
from evalkit.models import wrap_model


# ============================================================================ hand-built stacks
class PixelAttention(nn.Module):
    """A 1-channel 2 x 2 image becomes 5 tokens, ``[CLS, p1, p2, p3, p4]`` with embedding
    ``e = (pixel, 1)`` (CLS: ``(0, 1)``). Layer 1 has one head whose score for key j is the
    pixel value of token j (0 for CLS), so every row of its attention is
    ``softmax(0, p1..p4)``; with pixels ``log(1), log(2), log(3), log(4)`` that is
    ``r = (1, 1, 2, 3, 4) / 11``. Layer 2 (``two_layers``) has a zero query projection: uniform
    attention ``1 / 5``. ``uniform_head`` adds a second head of zeros to layer 1 (uniform)."""

    def __init__(self, two_layers: bool = False, uniform_head: bool = False) -> None:
        super().__init__()
        heads = 2 if uniform_head else 1
        dim = 2 * heads
        self.dim = dim
        self.attn1 = nn.MultiheadAttention(dim, heads, batch_first=True, dtype=torch.float64)
        with torch.no_grad():
            w = torch.zeros(3 * dim, dim, dtype=torch.float64)
            # head 1: q = (0, sqrt(2) * e[1]), k = (0, e[0]) -> q.k / sqrt(2) = pixel of key
            w[1, 1] = math.sqrt(2.0)
            w[dim + 1, 0] = 1.0
            w[2 * dim:, :] = torch.eye(dim)
            self.attn1.in_proj_weight.copy_(w)
            self.attn1.in_proj_bias.zero_()
        self.attn2 = None
        if two_layers:
            self.attn2 = nn.MultiheadAttention(dim, heads, batch_first=True,
                                               dtype=torch.float64)
            with torch.no_grad():
                self.attn2.in_proj_weight[:dim].zero_()  # zero queries: uniform attention
                self.attn2.in_proj_bias.zero_()
        self.head = nn.Linear(dim, 3, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.flatten(1)  # (N, 4)
        n = x.shape[0]
        e = torch.zeros(n, 5, self.dim, dtype=x.dtype)
        e[:, 1:, 0] = pixels
        e[:, :, 1] = 1.0
        t = e + self.attn1(e, e, e, need_weights=False)[0]
        if self.attn2 is not None:
            t = t + self.attn2(t, t, t, need_weights=False)[0]
        return self.head(t[:, 0])


def pixel_image() -> torch.Tensor:
    """Pixels log(1), log(2), log(3), log(4): attention weights (1, 1, 2, 3, 4) / 11."""
    return torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)).reshape(1, 1, 2, 2)


def rollout_map(model: nn.Module, x: torch.Tensor, **kw) -> np.ndarray:
    return ek.explain(model, x, method="AttentionRollout", raw=True, **kw).numpy()


R = np.array([1.0, 1.0, 2.0, 3.0, 4.0]) / 11


def test_one_layer_rollout_by_hand():
    # A = (W + I) / 2 with every row of W equal to r: the CLS row over the patches is r[1:] / 2
    got = rollout_map(PixelAttention(), pixel_image())
    np.testing.assert_allclose(got.reshape(-1), R[1:] / 2, rtol=1e-12)
    assert got.shape == (1, 1, 2, 2)


def test_two_layer_rollout_by_hand():
    # R = A2 A1, A2 = (U + I) / 2 (uniform U), A1 = (W + I) / 2:
    # row 0 of R = (mean of A1's rows) / 2 + A1[0] / 2 = r / 2 + 1 / (4 T) + e0 / 4
    got = rollout_map(PixelAttention(two_layers=True), pixel_image())
    np.testing.assert_allclose(got.reshape(-1), R[1:] / 2 + 1 / 20, rtol=1e-12)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_head_fusion_by_hand(fusion):
    # head 1 attends with r, head 2 uniformly (u = 1/5); fused, plus I, rows re-normalised
    u = np.full(5, 0.2)
    fused = {"mean": (R + u) / 2, "max": np.maximum(R, u), "min": np.minimum(R, u)}[fusion]
    row0 = fused.copy()
    row0[0] += 1.0
    expected = row0[1:] / row0.sum()
    got = rollout_map(PixelAttention(uniform_head=True), pixel_image(), head_fusion=fusion)
    np.testing.assert_allclose(got.reshape(-1), expected, rtol=1e-12)


def test_discard_ratio_by_hand():
    # 25 weights, 10 of them (columns 0 and 1 of every row) are the smallest, 1/11: dropping
    # 40 % zeroes exactly those; row 0 becomes (1, 0, 2/11, 3/11, 4/11) / (20/11)
    got = rollout_map(PixelAttention(), pixel_image(), discard_ratio=0.4)
    np.testing.assert_allclose(got.reshape(-1), np.array([0.0, 2.0, 3.0, 4.0]) / 20, atol=1e-15)


def test_uniform_attention_gives_a_constant_map():
    # the second layer alone (layer=): uniform attention -> (U + I) / 2, patches 1/10 each
    model = PixelAttention(two_layers=True)
    got = rollout_map(model, pixel_image(), layer="attn2")
    np.testing.assert_allclose(got, np.full((1, 1, 2, 2), 0.1), rtol=1e-12)


def test_rollout_of_matrices_by_hand():
    w1 = torch.tensor([[[[0.5, 0.5], [0.25, 0.75]]]], dtype=torch.float64)
    w2 = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64)
    a1 = torch.tensor([[0.75, 0.25], [0.125, 0.875]], dtype=torch.float64)
    # w2 = I: A2 = I, so the rollout is A1
    torch.testing.assert_close(rollout([w1, w2])[0], a1)
    torch.testing.assert_close(rollout([w1, w1])[0], a1 @ a1)


# ============================================================================ weights
class WeightsUser(nn.Module):
    """Calls its attention in every way a model may: batch-first or not, need_weights given
    positionally or by keyword (False, or True with averaged or per-head weights), with masks;
    it uses the weights it asked for, so a hook that returned others would change its output."""

    def __init__(self, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.patch = nn.Conv2d(3, 8, 4, 4)
        self.attn = nn.ModuleList([nn.MultiheadAttention(8, 2, batch_first=batch_first)
                                   for _ in range(4)])
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)  # (N, 16, 8)
        if not self.batch_first:
            t = t.transpose(0, 1)
        mask = torch.zeros(16, 16, dtype=torch.bool)
        mask[0, 5] = True
        padding = torch.zeros(x.shape[0], 16, dtype=torch.bool)
        padding[:, 3] = True
        out, w = self.attn[0](t, t, t, need_weights=False)
        assert w is None
        t = t + out
        out, w = self.attn[1](t, t, t, None, True, mask)  # positional: averaged weights
        assert w.shape == (x.shape[0], 16, 16)
        t = t + out + w.sum()
        out, w = self.attn[2](t, t, t, key_padding_mask=padding, average_attn_weights=False)
        assert w.shape == (x.shape[0], 2, 16, 16)
        t = t + out + w.amax()
        out, _ = self.attn[3](t, t, t)
        t = t + out
        return self.fc((t if self.batch_first else t.transpose(0, 1)).mean(1))


@pytest.mark.parametrize("batch_first", [True, False])
def test_callers_get_what_they_asked_for_and_the_weights_are_the_modules(batch_first):
    torch.manual_seed(0)
    model = WeightsUser(batch_first).double().eval()
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    # the per-head weights each module returns when asked, layer by layer
    weights = []
    names = ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask")

    def per_head(m, args, kwargs, _out):
        call = {**dict(zip(names, args, strict=False)), **kwargs,
                "need_weights": True, "average_attn_weights": False}
        weights.append(m.forward(**call)[1])  # forward, not m(...): no hooks, no recursion

    hooks = [m.register_forward_hook(per_head, with_kwargs=True) for m in model.attn]
    with torch.no_grad():
        expected_out = model(x)
    for h in hooks:
        h.remove()
    expected = rollout(weights)[:, 0, 1:].reshape(3, 1, 3, 5)
    wrapper = wrap_model(model)
    with wrapper.evaluation():
        from evalkit.explain.rollout import attention_rollout_grid

        got = attention_rollout_grid(wrapper, x, prefix_tokens=1, height=3)
        torch.testing.assert_close(wrapper(x), expected_out)  # hooks gone, model as before
    torch.testing.assert_close(got, expected)


class TinyEncoderViT(nn.Module):
    """Patches -> CLS + tokens -> nn.TransformerEncoder (2 layers, 2 heads) -> CLS head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1)
        return self.fc(self.encoder(t)[:, 0])


def _reference_rollout(model: TinyEncoderViT, x: torch.Tensor) -> torch.Tensor:
    """The rollout from the weights the modules return with need_weights=True, by a loop."""
    t = torch.cat([model.cls.expand(x.shape[0], -1, -1),
                   model.patch(x).flatten(2).transpose(1, 2)], 1)
    result = None
    for layer in model.encoder.layers:
        h = t
        _, w = layer.self_attn(h, h, h, need_weights=True, average_attn_weights=True)
        a = 0.5 * w + 0.5 * torch.eye(w.shape[-1], dtype=w.dtype)
        result = a if result is None else a @ result
        t = layer(t)
    return result[:, 0, 1:].reshape(x.shape[0], 1, 4, 4)


def test_rollout_matches_a_reference_on_a_transformer_encoder():
    torch.manual_seed(2)
    model = TinyEncoderViT().double().eval()
    x = torch.rand(3, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        expected = _reference_rollout(model, x)
    got = ek.explain(model, x, method="AttentionRollout", raw=True)
    torch.testing.assert_close(got, expected)
    full = ek.explain(model, x, method="AttentionRollout")
    assert full.shape == (3, 1, 16, 16)
    # bilinear resizing of the grid; rows of a rollout sum to 1, so the map is in [0, 1]
    assert float(full.min()) >= 0 and float(full.max()) <= 1
    # per-sample: the same map in any batch
    torch.testing.assert_close(ek.explain(model, x[1:2], method="AttentionRollout"), full[1:2])


# ============================================================================ contract
def test_registered_and_class_agnostic():
    info = explainer_info("AttentionRollout")
    assert info.requires_module and not info.requires_gradients and not info.uses_target
    assert "AttentionRollout" in ek.explain.__globals__["available_methods"]("image")
    torch.manual_seed(3)
    model = TinyEncoderViT().eval()
    x = torch.rand(2, 3, 16, 16)
    np.testing.assert_array_equal(
        ek.explain(model, x, torch.tensor([0, 1]), method="AttentionRollout").numpy(),
        ek.explain(model, x, torch.tensor([2, 2]), method="AttentionRollout").numpy())
    out = ek.explain(model, x.numpy(), method="AttentionRollout")  # NumPy in, NumPy out
    assert isinstance(out, np.ndarray) and out.shape == (2, 1, 16, 16)


def test_nothing_on_the_model_changes():
    torch.manual_seed(4)
    model = TinyEncoderViT().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ek.explain(model, torch.rand(2, 3, 16, 16), method="AttentionRollout")
    assert model.training
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_hooks_with_kwargs
        assert not m._forward_pre_hooks
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(ValueError):  # hooks are removed on error too
        ek.explain(model, torch.rand(2, 3, 16, 16), method="AttentionRollout", class_token=99)
    assert all(not m._forward_hooks for m in model.modules())


def test_clear_errors():
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="MultiheadAttention modules"):
        ek.explain(cnn, x, method="AttentionRollout")
    model = TinyEncoderViT().eval()
    with pytest.raises(ValueError, match="head_fusion"):
        ek.explain(model, x, method="AttentionRollout", head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        ek.explain(model, x, method="AttentionRollout", discard_ratio=1.0)
    with pytest.raises(ValueError, match="are not"):
        ek.explain(model, x, method="AttentionRollout", layer="patch")
    with pytest.raises(ValueError, match="grid"):
        ek.explain(model, x, method="AttentionRollout", height=3, width=3)
    with pytest.raises(TypeError, match="unexpected"):
        ek.explain(model, x, method="AttentionRollout", reshape_transform=None)
    with pytest.raises(ValueError):  # NaN inputs are refused before any work
        ek.explain(model, torch.full((1, 3, 16, 16), float("nan")), method="AttentionRollout")
    with pytest.raises(ValueError, match="does not apply"):
        ek.explain(model, torch.rand(2, 5), method="AttentionRollout")

    class Unused(TinyEncoderViT):
        def __init__(self) -> None:
            super().__init__()
            self.spare = nn.MultiheadAttention(8, 2)

    with pytest.raises(ValueError, match="did not run"):
        ek.explain(Unused().eval(), x, method="AttentionRollout")


def test_prefix_tokens_and_class_token():
    torch.manual_seed(5)
    model = TinyEncoderViT().double().eval()
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    wrapper = wrap_model(model)
    from evalkit.explain.rollout import attention_rollout_grid

    with wrapper.evaluation():
        base = attention_rollout_grid(wrapper, x)
        # two prefix tokens leave 15 patches: a 3 x 5 grid read from the row of token 1
        other = attention_rollout_grid(wrapper, x, prefix_tokens=2, class_token=1, height=3)
    assert base.shape == (1, 1, 4, 4) and other.shape == (1, 1, 3, 5)
    assert not torch.allclose(base.flatten()[1:], other.flatten())


@pytest.mark.slow
def test_rollout_on_torchvision_vit_b_16(torchvision):
    """vit_b_16(weights=None) at 224 x 224: the 12 attention layers (called with
    need_weights=False) against the weights the modules return when asked, block by block."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.vit_b_16(weights=None).eval()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t = model._process_input(x)
        t = torch.cat([model.class_token.expand(2, -1, -1), t], 1) + model.encoder.pos_embedding
        expected = None
        for block in model.encoder.layers:
            h = block.ln_1(t)
            _, w = block.self_attention(h, h, h, need_weights=True, average_attn_weights=True)
            a = 0.5 * w + 0.5 * torch.eye(197)
            expected = a if expected is None else a @ expected
            t = block(t)
    expected = expected[:, 0, 1:].reshape(2, 1, 14, 14)
    got = ek.explain(model, x, method="AttentionRollout", raw=True)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)
    full = ek.explain(model, x, method="AttentionRollout")
    assert full.shape == (2, 1, 224, 224)
    assert all(not m._forward_hooks for m in model.modules())


def test_the_registry_contract_on_a_transformer():
    """What tests/test_explain_methods.py checks of every method on a CNN, on a ViT: nothing on
    the model changes (attributes, hook tables, flags, weights, .grad), nor the global RNGs or
    hooks; per-sample maps in any batch; NumPy in, NumPy out; constant inputs give finite
    maps."""
    from _explain_helpers import assert_unchanged, module_state, rng_states, same_rng
    from torch.nn.modules.module import _global_forward_hooks

    torch.manual_seed(6)
    model = TinyEncoderViT().double().train()
    model.encoder.layers[0].eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64)
    x_before, before, rng = x.clone(), module_state(model), rng_states()
    hooks = dict(_global_forward_hooks)
    full = ek.explain(model, x, method="AttentionRollout")
    assert_unchanged(model, before)
    assert model.training and not model.encoder.layers[0].training
    assert same_rng(rng, rng_states()) and hooks == dict(_global_forward_hooks)
    assert torch.equal(x, x_before) and full.dtype == x.dtype
    torch.testing.assert_close(ek.explain(model, x, method="AttentionRollout", batch_size=1),
                               full, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(ek.explain(model, x.numpy(), method="AttentionRollout"),
                               full.numpy())
    zeros = ek.explain(model, torch.zeros(2, 3, 16, 16, dtype=torch.float64),
                       method="AttentionRollout")
    assert bool(torch.isfinite(zeros).all())
