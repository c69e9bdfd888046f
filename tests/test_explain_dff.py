"""Deep Feature Factorization (NMF in torch) and the image overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _explain_helpers import (
    BnNet,
    GapNet,
    assert_unchanged,
    inputs,
    make,
    module_state,
    rng_states,
    same_rng,
)

from evalkit.explain import (
    DeepFeatureFactorization,
    FactorizationResult,
    deep_feature_factorization,
    nmf,
    show_cam_on_image,
    show_factorization_on_image,
    vit_reshape_transform,
)


# ============================================================================ NMF
def test_nmf_recovers_a_planted_factorisation():
    g = torch.Generator().manual_seed(0)
    W0 = torch.rand((12, 3), generator=g, dtype=torch.float64)
    H0 = torch.rand((3, 40), generator=g, dtype=torch.float64)
    V = W0 @ H0
    rng = rng_states()
    W, H, error, n_iter = nmf(V, 3, max_iter=3000, tol=1e-10, seed=1)
    assert same_rng(rng, rng_states())
    assert error < 1e-3 and 0 < n_iter <= 3000
    assert bool((W >= 0).all()) and bool((H >= 0).all())
    torch.testing.assert_close(W @ H, V, rtol=0, atol=2e-2)
    again = nmf(V, 3, max_iter=3000, tol=1e-10, seed=1)
    assert torch.equal(again[0], W) and torch.equal(again[1], H)
    other = nmf(V, 3, max_iter=50, seed=2)
    assert not torch.equal(other[0], W)
    gen = torch.Generator().manual_seed(5)
    a = nmf(V, 3, max_iter=20, seed=gen)
    b = nmf(V, 3, max_iter=20, seed=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0])


def test_nmf_errors_and_zero_matrix():
    with pytest.raises(ValueError, match="non-negative"):
        nmf(-torch.ones(3, 3), 2)
    with pytest.raises(ValueError, match="n_components"):
        nmf(torch.ones(3, 3), 0)
    with pytest.raises(ValueError, match="matrix"):
        nmf(torch.ones(3), 1)
    W, H, error, _ = nmf(torch.zeros(4, 5), 2, max_iter=20)
    assert torch.isfinite(W).all() and torch.isfinite(H).all() and error == 0.0


# ============================================================================ DFF
def test_dff_result_on_a_gap_model():
    model = make(GapNet)
    x, _ = inputs(3)
    dff = DeepFeatureFactorization(model, "features.relu2", computation_on_concepts="fc",
                                   max_iter=500)
    res = dff(x, n_components=4)
    assert isinstance(res, FactorizationResult)
    assert res.concepts.shape == (4, 6)
    assert res.heatmaps.shape == (3, 4, 8, 8) and res.raw_heatmaps.shape == (3, 4, 8, 8)
    assert float(res.heatmaps.min()) >= 0 and float(res.heatmaps.max()) <= 1
    with torch.no_grad():
        torch.testing.assert_close(res.concept_scores, model.fc(res.concepts))
    # the factorisation reconstructs the activations: A ~ sum_j H_j (c_j - offset) + offset
    A = dff.activations(x).double()
    offset = A.transpose(0, 1).reshape(6, -1).amin(1)
    basis = res.concepts - offset
    recon = torch.einsum("njhw,jk->nkhw", res.raw_heatmaps, basis) + offset[None, :, None, None]
    rel = float(torch.linalg.norm(A - recon) / torch.linalg.norm(A - offset[None, :, None, None]))
    assert rel == pytest.approx(res.reconstruction_error, rel=1e-6)
    assert rel < 0.3
    # tutorial-style unpacking, and reproducibility from the seed
    concepts, heatmaps, scores = res
    assert concepts is res.concepts and scores is res.concept_scores
    assert heatmaps is res.heatmaps
    again = dff(x, n_components=4)
    assert torch.equal(again.concepts, res.concepts)


def test_dff_numpy_module_layer_and_tokens():
    model = make(GapNet)
    x, _ = inputs(2)
    res = deep_feature_factorization(model, x.numpy(), model.features.relu2, n_components=2,
                                     computation_on_concepts=model.fc)
    assert isinstance(res.heatmaps, np.ndarray) and res.concept_scores.shape == (2, 3)
    plain = deep_feature_factorization(model, x, "features.relu2", n_components=2)
    assert plain.concept_scores is None
    np.testing.assert_allclose(res.heatmaps, plain.heatmaps.numpy())

    # a token layout through reshape_transform: (N, 1 + 64, K) with a CLS token
    class Tokens(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model
            self.tokens = torch.nn.Identity()

        def forward(self, x):
            a = self.inner.features(x)
            t = torch.cat([a.mean((2, 3))[:, None], a.flatten(2).transpose(1, 2)], 1)
            return self.inner.fc(self.tokens(t)[:, 1:].mean(1))

    tok = deep_feature_factorization(Tokens(), x, "tokens", n_components=2,
                                     reshape_transform=vit_reshape_transform())
    torch.testing.assert_close(tok.heatmaps, plain.heatmaps)
    with pytest.raises(ValueError, match="reshape_transform"):
        deep_feature_factorization(Tokens(), x, "tokens", n_components=2)


def test_dff_leaves_the_model_as_it_was():
    """Parameters, buffers (batch-norm statistics), .grad, train/eval flags, hooks and the
    global RNGs are the same after a factorisation, in train mode too."""
    model = make(BnNet)
    model.train()  # dropout and batch-norm would change buffers in train mode
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    hook = model.fc.register_forward_hook(lambda *_: None)
    x, _ = inputs(3)
    before, rng = module_state(model), rng_states()
    res = deep_feature_factorization(model, x, "features.relu2", n_components=2,
                                     computation_on_concepts="fc")
    assert res.heatmaps.shape == (3, 2, 8, 8)
    assert_unchanged(model, before)
    assert model.training and same_rng(rng, rng_states())
    assert list(model.fc._forward_hooks) == [hook.id]  # the user's hook, and only it
    hook.remove()


# ============================================================================ overlays
def test_show_cam_on_image_rgb_and_pure():
    img = np.full((4, 5, 3), 0.5)
    mask = np.zeros((4, 5))
    mask[0, 0] = 1.0
    img_before, mask_before = img.copy(), mask.copy()
    out = show_cam_on_image(img, mask, image_weight=0.0)
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
    np.testing.assert_array_equal(img, img_before)
    np.testing.assert_array_equal(mask, mask_before)
    assert out[0, 0, 0] > out[0, 0, 2]  # jet(1) is red, in RGB order
    assert out[1, 1, 2] > out[1, 1, 0]  # jet(0) is blue
    chw = show_cam_on_image(torch.from_numpy(img).permute(2, 0, 1), torch.from_numpy(mask)[None],
                            image_weight=0.0)
    np.testing.assert_array_equal(chw, out)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        show_cam_on_image(img * 255, mask)
    with pytest.raises(ValueError, match="map"):
        show_cam_on_image(img, np.zeros((3, 3)))
    flat = show_cam_on_image(img, np.ones((4, 5)))  # a constant map is all "0"
    assert len(np.unique(flat.reshape(-1, 3), axis=0)) == 1


def test_show_factorization_on_image():
    img = np.zeros((6, 6, 3))
    maps = np.zeros((2, 6, 6))
    maps[0, :, :3] = 1.0
    maps[1, :, 3:] = 0.5
    before = maps.copy()
    out = show_factorization_on_image(img, maps, colors=[(1, 0, 0), (0, 0, 1)], image_weight=0.0)
    np.testing.assert_array_equal(maps, before)  # not zeroed in place
    assert out.shape == (6, 6, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 255 and out[0, 0, 2] == 0  # concept 0: red at full brightness
    assert out[0, 5, 2] > 0 and out[0, 5, 0] == 0 and out[0, 5, 2] < 255  # concept 1: dimmer
    labelled = show_factorization_on_image(img, maps, concept_labels=["a", "b"])
    assert labelled.shape == (6, 9, 3)
    with pytest.raises(ValueError, match="labels"):
        show_factorization_on_image(img, maps, concept_labels=["a"])
    with pytest.raises(ValueError, match="colours"):
        show_factorization_on_image(img, maps, colors=[(1, 0, 0)])
