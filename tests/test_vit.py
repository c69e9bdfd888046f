"""Vision transformers: every CAM method, FullGrad and DFF through ``reshape_transform`` on tiny
ViT- and Swin-like modules laid out like torchvision's (CI, no torchvision), clear errors for
token layers picked without a transform; then, with torchvision (the ``vision`` extra), the
real ViT-B/16 and Swin-T with random weights (slow) and the pytorch-grad-cam 1.5.7 oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit.explain import (
    DeepFeatureFactorization,
    fullgrad_decomposition,
    swin_reshape_transform,
    vit_reshape_transform,
)
from evalkit.models import wrap_model

CAM_METHODS = ["GradCAM", "HiResCAM", "GradCAMElementWise", "GradCAMPlusPlus", "XGradCAM",
               "LayerCAM", "EigenCAM", "EigenGradCAM", "ScoreCAM", "AblationCAM", "RandomCAM"]


# ============================================================================ tiny models
class EncoderBlock(nn.Module):
    """torchvision's ViT block: ln_1 -> self_attention (need_weights=False) -> + input;
    ln_2 -> mlp -> +."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(t)
        t = t + self.self_attention(h, h, h, need_weights=False)[0]
        return t + self.mlp(self.ln_2(t))


class TinyViT(nn.Module):
    """A ViT laid out as torchvision's: ``conv_proj`` patches, a class token, ``encoder.layers``
    of blocks, ``encoder.ln``, a head on the class token. 16 x 16 images, 4 x 4 patches:
    (N, 17, 8) tokens."""

    def __init__(self, dim: int = 8, depth: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.conv_proj = nn.Conv2d(3, dim, 4, 4)
        self.class_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.1 * torch.randn(1, 17, dim))
        self.encoder = nn.Module()
        self.encoder.layers = nn.Sequential(*[EncoderBlock(dim, 2) for _ in range(depth)])
        self.encoder.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.conv_proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.class_token.expand(x.shape[0], -1, -1), t], 1) + self.pos
        t = self.encoder.ln(self.encoder.layers(t))
        return self.head(t[:, 0])


class Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t.permute(*self.dims)


class SwinBlock(nn.Module):
    """A channels-last block (N, h, w, K): norm -> token-mixing over the grid -> MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mix = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        h = self.norm1(t).permute(0, 3, 1, 2)
        t = t + self.mix(h).permute(0, 2, 3, 1)
        return t + self.mlp(self.norm2(t))


class TinySwin(nn.Module):
    """Laid out as torchvision's Swin: ``features`` (patch embedding to channels-last, then
    stages of (N, h, w, K) blocks), ``norm`` (channels-last), ``permute`` (to (N, K, h, w)),
    ``avgpool``, ``flatten``, ``head``."""

    def __init__(self, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, dim, 4, 4), Permute(0, 2, 3, 1), nn.LayerNorm(dim)),
            nn.Sequential(SwinBlock(dim), SwinBlock(dim)),
        )
        self.norm = nn.LayerNorm(dim)
        self.permute = Permute(0, 3, 1, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.permute(self.norm(self.features(x)))
        return self.head(self.flatten(self.avgpool(t)))


def build(factory, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory().double().eval()


def images(n: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand((n, 3, 16, 16), generator=gen, dtype=torch.float64),
            torch.arange(n) % 3)


VIT_LAYER = "encoder.layers[-1].ln_1"


# ============================================================================ every method
@pytest.mark.parametrize("method", [*CAM_METHODS, "FullGrad"])
def test_every_method_runs_on_vit_tokens(method):
    model = build(TinyViT)
    x, y = images()
    kw = {} if method == "FullGrad" else {"layer": VIT_LAYER}
    a = ek.explain(model, x, y, method=method, reshape_transform=vit_reshape_transform(), **kw)
    assert a.shape == (2, 1, 16, 16) and bool(torch.isfinite(a).all())
    if method not in ("RandomCAM", "EigenCAM"):  # class-discriminative maps differ per class
        other = ek.explain(model, x, (y + 1) % 3, method=method,
                           reshape_transform=vit_reshape_transform(), **kw)
        assert not torch.allclose(a, other)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_swin_channels_last_layer_equals_the_permuted_layer(method):
    """The map at Swin's channels-last ``norm`` with swin_reshape_transform is the map at the
    channels-first ``permute`` layer after it (the same values, laid out (N, K, h, w))."""
    model = build(TinySwin)
    x, y = images()
    at_norm = ek.explain(model, x, y, method=method, layer="norm", raw=True,
                         reshape_transform=swin_reshape_transform())
    at_permute = ek.explain(model, x, y, method=method, layer="permute", raw=True)
    torch.testing.assert_close(at_norm, at_permute)
    assert at_norm.shape == (2, 1, 4, 4)


@pytest.mark.parametrize("method", CAM_METHODS)
def test_vit_token_layer_equals_its_grid(method):
    """The map at a token layer through vit_reshape_transform is the map at a layer holding the
    same patch tokens as a channels-first grid (an identity module fed the reshaped tokens)."""

    class Tapped(TinyViT):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Identity()
            self.grid = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.conv_proj(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.class_token.expand(x.shape[0], -1, -1), t], 1) + self.pos
            t = self.tokens(t)
            # the grid layer holds the patch tokens; the class token goes round it
            g = self.grid(t[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, 4, 4))
            t = torch.cat([t[:, :1], g.flatten(2).transpose(1, 2)], 1)
            t = self.encoder.ln(self.encoder.layers(t))
            return self.head(t[:, 0])

    model = build(Tapped)
    x, y = images(3)
    tokens = ek.explain(model, x, y, method=method, layer="tokens", raw=True,
                        reshape_transform=vit_reshape_transform())
    grid = ek.explain(model, x, y, method=method, layer="grid", raw=True)
    torch.testing.assert_close(tokens, grid)


def test_dff_on_vit_and_swin_tokens():
    x, _ = images(3)
    vit = DeepFeatureFactorization(build(TinyViT), VIT_LAYER,
                                   reshape_transform=vit_reshape_transform())(x, n_components=2)
    assert vit.heatmaps.shape == (3, 2, 16, 16) and vit.raw_heatmaps.shape == (3, 2, 4, 4)
    swin_model = build(TinySwin)
    swin = DeepFeatureFactorization(swin_model, "norm", reshape_transform=swin_reshape_transform(),
                                    computation_on_concepts="head")(x, n_components=2)
    permuted = DeepFeatureFactorization(swin_model, "permute",
                                        computation_on_concepts="head")(x, n_components=2)
    torch.testing.assert_close(swin.raw_heatmaps, permuted.raw_heatmaps)
    assert swin.concept_scores.shape == (2, 3)


# ============================================================================ clear errors
@pytest.mark.parametrize("method", CAM_METHODS)
def test_token_layer_without_transform_raises_for_every_cam(method):
    model = build(TinyViT)
    x, y = images()
    # a (N, tokens, K) block output: the activations' rank is not the input's
    with pytest.raises(ValueError, match="vit_reshape_transform") as info:
        ek.explain(model, x, y, method=method, layer="encoder.layers.1")
    assert "(2, 17, 8)" in str(info.value) and "swin_reshape_transform" in str(info.value)
    # a LayerNorm (channels-last by construction), before any forward pass
    with pytest.raises(ValueError, match="LayerNorm, which acts on the last axis"):
        ek.explain(model, x, y, method=method, layer=VIT_LAYER)
    # Swin's 4-D channels-last norm would otherwise be read as (N, K=h, w, K)
    with pytest.raises(ValueError, match="swin_reshape_transform"):
        ek.explain(build(TinySwin), x, y, method=method, layer="norm")


def test_token_layers_without_transform_raise_for_fullgrad_and_dff():
    x, y = images()
    with pytest.raises(ValueError, match="FullGrad: the linear layers"):
        ek.explain(build(TinyViT), x, y, method="FullGrad")
    with pytest.raises(ValueError, match="vit_reshape_transform"):
        ek.explain(build(TinySwin), x, y, method="FullGrad")
    with pytest.raises(ValueError, match="DeepFeatureFactorization need"):
        DeepFeatureFactorization(build(TinyViT), "encoder.layers.1")(x, n_components=2)
    with pytest.raises(ValueError, match="LayerNorm, which acts on the last axis"):
        DeepFeatureFactorization(build(TinySwin), "norm")(x, n_components=2)


def test_identity_transform_overrides_the_channels_last_check():
    model = build(TinySwin)
    x, y = images()
    a = ek.explain(model, x, y, method="GradCAM", layer="features.0.2", raw=True,
                   reshape_transform=lambda t: t.permute(0, 3, 1, 2))
    assert a.shape == (2, 1, 4, 4)


# ============================================================================ FullGrad
class TokenMLP(nn.Module):
    """Piecewise linear on tokens: patches -> Linear on (N, tokens, K) -> ReLU -> mean -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 6, 4, 4)
        self.mix = nn.Linear(6, 5)
        self.act = nn.ReLU()
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)  # (N, 16, 6)
        return self.head(self.act(self.mix(t)).mean(1))


def test_fullgrad_decomposition_is_complete_with_token_linear_layers():
    """The bias of a linear layer on (N, tokens, K) is added along the last axis; before the
    fix its bias-gradient was broadcast along axis 1 (a crash for 16 tokens and 5 channels)."""
    model = build(TokenMLP)
    x, y = images(3)
    wrapper = wrap_model(model)
    with wrapper.evaluation():
        input_part, parts = fullgrad_decomposition(wrapper, x, y)
        score = wrapper.score(x, y)
    assert [name for name, _ in parts] == ["patch", "mix", "head"]
    assert parts[1][1].shape == (3, 16, 5)
    total = input_part.flatten(1).sum(1) + sum(p.flatten(1).sum(1) for _, p in parts)
    torch.testing.assert_close(total, score)
    a = ek.explain(model, x, y, method="FullGrad",
                   reshape_transform=vit_reshape_transform(prefix_tokens=0))
    assert a.shape == (3, 1, 16, 16) and bool(torch.isfinite(a).all())


# ============================================================================ torchvision (slow)
def _vit_b_16(tv, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return tv.models.vit_b_16(weights=None).eval()


def _swin_t(tv, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return tv.models.swin_t(weights=None).eval()


def _batch(n: int = 2, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, 3, 14, 14), generator=gen)
    x = torch.nn.functional.interpolate(coarse, size=(224, 224), mode="bilinear")
    return x, torch.tensor([1, 7][:n])


@pytest.mark.slow
def test_torchvision_layouts_match_the_transforms(torchvision):
    vit, swin = _vit_b_16(torchvision), _swin_t(torchvision)
    x, _ = _batch(1)
    wrapper = wrap_model(vit)
    with wrapper.capture(["encoder.layers.encoder_layer_11.ln_1"]) as acts, torch.no_grad():
        vit(x)
    (tokens,) = acts["encoder.layers.encoder_layer_11.ln_1"]
    assert tuple(tokens.shape) == (1, 197, 768)
    assert vit_reshape_transform()(tokens).shape == (1, 768, 14, 14)
    wrapper = wrap_model(swin)
    with wrapper.capture(["features.7", "norm"]) as acts, torch.no_grad():
        swin(x)
    for name in ("features.7", "norm"):
        (t,) = acts[name]
        assert tuple(t.shape) == (1, 7, 7, 768)
        assert swin_reshape_transform()(t).shape == (1, 768, 7, 7)


def _vit_with_head(tv, seed: int = 0) -> nn.Module:
    """vit_b_16(weights=None) with a seeded random head: torchvision initialises the ViT head
    to zeros, so without this every logit is 0 and every gradient of a class score is 0."""
    model = _vit_b_16(tv, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        model.heads.head.weight.copy_(0.02 * torch.randn(model.heads.head.weight.shape,
                                                         generator=gen))
    return model


def _boxes(n: int = 2) -> torch.Tensor:
    s = torch.zeros((n, 1, 224, 224), dtype=torch.bool)
    s[0, :, 32:128, 64:160] = True
    if n > 1:
        s[1, :, 96:208, 16:112] = True
    return s


VIT_B_LAYER = "encoder.layers.encoder_layer_11.ln_1"


@pytest.mark.slow
def test_vit_b_16_maps_and_metrics(torchvision):
    """GradCAM, attention rollout and Saliency on a random ViT-B/16 at 224 x 224 (N=2), then a
    faithfulness, a robustness, a randomisation and a localisation metric on them."""
    model = _vit_with_head(torchvision)
    x, y = _batch()
    cam_kw = {"layer": VIT_B_LAYER, "reshape_transform": vit_reshape_transform()}
    cam = ek.explain(model, x, y, method="GradCAM", **cam_kw)
    rollout = ek.explain(model, x, method="AttentionRollout")
    assert cam.shape == rollout.shape == (2, 1, 224, 224)
    assert float(cam.amax()) > 0 and bool(torch.isfinite(rollout).all())
    assert float(rollout.min()) > 0  # rollout rows are positive (identity plus softmax)

    pixel_flipping = ek.metrics.PixelFlipping(features_in_step=49, grouping=16)  # 4 steps
    scores = pixel_flipping(model, x, y, cam)
    assert scores.shape == (2,) and np.isfinite(scores).all()
    with torch.no_grad():  # the curve starts at the unperturbed class probability
        probabilities = torch.softmax(model(x), 1)[torch.arange(2), y]
    np.testing.assert_allclose(pixel_flipping.curves_[:, 0], probabilities.numpy(), rtol=1e-4)

    sensitivity = ek.metrics.MaxSensitivity(nr_samples=2)
    sens = sensitivity(model, x, y, rollout, explain_fn=ek.explain,
                       explain_kwargs={"method": "AttentionRollout"})
    assert sens.shape == (2,) and np.isfinite(sens).all() and (sens >= 0).all()

    random_logit = ek.metrics.RandomLogit(num_classes=1000, similarity_func="pearson")
    similarity = random_logit(model, x, y, cam, explain_fn=ek.explain,
                              explain_kwargs={"method": "GradCAM", **cam_kw})
    # GradCAM of a random-weight ViT for a drawn other class can be all zero (ReLU of a
    # negative map): that sample is NaN with the reason, never a silent number
    assert similarity.shape == (2,) and np.isfinite(similarity).any()
    for i in np.flatnonzero(np.isnan(similarity)):
        assert "constant" in random_logit.nan_reasons_[int(i)]

    pointing = ek.metrics.RelevanceRankAccuracy()(model, x, y, cam, s=_boxes())
    assert pointing.shape == (2,) and ((pointing >= 0) & (pointing <= 1)).all()


@pytest.mark.slow
def test_swin_t_maps_and_metrics(torchvision):
    """GradCAM at Swin-T's last stage (channels-last, swin_reshape_transform) and Saliency on a
    random Swin-T at 224 x 224 (N=2), then faithfulness, robustness, randomisation and
    localisation metrics."""
    model = _swin_t(torchvision)
    x, y = _batch()
    cam_kw = {"layer": "features[-1]", "reshape_transform": swin_reshape_transform()}
    cam = ek.explain(model, x, y, method="GradCAM", **cam_kw)
    # torchvision's channels-last norm with the transform = the channels-first permute after it
    torch.testing.assert_close(
        ek.explain(model, x, y, method="GradCAM", layer="norm",
                   reshape_transform=swin_reshape_transform()),
        ek.explain(model, x, y, method="GradCAM", layer="permute"))
    saliency = ek.explain(model, x, y, method="Saliency", reduce_channels="sum")
    assert cam.shape == saliency.shape == (2, 1, 224, 224) and float(cam.amax()) > 0

    pixel_flipping = ek.metrics.PixelFlipping(features_in_step=49, grouping=16)
    scores = pixel_flipping(model, x, y, saliency)
    assert scores.shape == (2,) and np.isfinite(scores).all()
    sensitivity = ek.metrics.MaxSensitivity(nr_samples=2)
    sens = sensitivity(model, x, y, cam, explain_fn=ek.explain,
                       explain_kwargs={"method": "GradCAM", **cam_kw})
    assert np.isfinite(sens).all() and (sens >= 0).all()
    random_logit = ek.metrics.RandomLogit(num_classes=1000, similarity_func="pearson")
    assert np.isfinite(random_logit(model, x, y, cam, explain_fn=ek.explain,
                                    explain_kwargs={"method": "GradCAM", **cam_kw})).all()
    pointing = ek.metrics.PointingGame()(model, x, y, cam, s=_boxes())
    assert set(np.unique(pointing)) <= {0.0, 1.0}


# ============================================================================ the oracle
def _gradcam_oracle():
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils import reshape_transforms
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except Exception:  # ImportError, or its cv2 / torchvision imports failing
        pytest.skip("the optional pytorch-grad-cam 1.5.7 oracle is absent")
    return pytorch_grad_cam, reshape_transforms, ClassifierOutputTarget


def _assert_agree(ours: torch.Tensor, theirs: np.ndarray) -> None:
    """Correlation > 0.999 per image; an all-zero map (every position ReLU'd away, e.g.
    LayerCAM on a random network) must be all zero in both."""
    ours_np = ours.detach().numpy().reshape(len(theirs), -1)
    for o, t in zip(ours_np, theirs.reshape(len(theirs), -1), strict=True):
        if np.ptp(o) == 0 or np.ptp(t) == 0:
            assert np.ptp(o) == np.ptp(t) == 0
        else:
            assert np.corrcoef(o, t)[0, 1] > 0.999


@pytest.mark.slow
@pytest.mark.parametrize("method", ["GradCAM", "HiResCAM", "LayerCAM"])
def test_vit_b_16_cams_agree_with_pytorch_grad_cam(torchvision, method):
    """pytorch-grad-cam with its own ViT reshape transform (tutorial: the last block's ln_1,
    14 x 14 grid) on the same random ViT-B/16: correlation > 0.999 per image (its maps are
    min-max scaled, ours not: correlation ignores that)."""
    gc, transforms, target = _gradcam_oracle()
    model = _vit_with_head(torchvision)
    x, y = _batch()
    ours = ek.explain(model, x, y, method=method, layer=VIT_B_LAYER,
                      reshape_transform=vit_reshape_transform())
    with getattr(gc, method)(model=model, target_layers=[model.encoder.layers[-1].ln_1],
                             reshape_transform=transforms.vit_reshape_transform) as cam:
        theirs = cam(input_tensor=x, targets=[target(int(c)) for c in y])
    _assert_agree(ours, theirs)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["GradCAM", "HiResCAM", "LayerCAM"])
def test_swin_t_cams_agree_with_pytorch_grad_cam(torchvision, method):
    """pytorch-grad-cam's Swin transform expects flat (N, 49, K) tokens (timm's layout);
    torchvision's last stage is (N, 7, 7, K), so the oracle gets it flattened first."""
    gc, transforms, target = _gradcam_oracle()
    model = _swin_t(torchvision)
    x, y = _batch()
    ours = ek.explain(model, x, y, method=method, layer="features[-1]",
                      reshape_transform=swin_reshape_transform())

    def theirs_transform(t: torch.Tensor) -> torch.Tensor:
        return transforms.swinT_reshape_transform(t.flatten(1, 2))

    with getattr(gc, method)(model=model, target_layers=[model.features[-1]],
                             reshape_transform=theirs_transform) as cam:
        theirs = cam(input_tensor=x, targets=[target(int(c)) for c in y])
    _assert_agree(ours, theirs)
