"""The CAM family: closed forms on a global-average-pooling + linear head, independent reference
implementations (NumPy SVD, an explicit Score-CAM loop, captum's LayerGradCam), token layouts,
options, and clear errors."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _explain_helpers import N_CLASSES, BnNet, GapNet, inputs, make
from torch import nn

import evalkit as ek
from evalkit._validation import EvalkitWarning
from evalkit.explain import (
    DEFAULT_AUGMENTATIONS,
    fullgrad_decomposition,
    swin_reshape_transform,
    vit_reshape_transform,
)
from evalkit.models import wrap_model

LAYER = "features.relu2"


def activations(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The layer's output, recorded independently of evalkit."""
    store = []
    handle = dict(model.named_modules())[layer].register_forward_hook(
        lambda m, i, o: store.append(o.detach().clone())
    )
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store[0]


@pytest.fixture
def gap():
    model = make(GapNet)
    x, y = inputs(4)
    A = activations(model, x, LAYER)  # (N, K, 8, 8), >= 0
    W = model.fc.weight.detach()[y]  # (N, K): the explained class's weights
    return model, x, y, A, W


def raw(method, model, x, y, **kw):
    return ek.explain(model, x, y, method=method, layer=kw.pop("layer", LAYER), raw=True, **kw)


# ============================================================================ closed forms
def test_cam_equals_gradcam_and_hirescam_on_gap_linear_head(gap):
    model, x, y, A, W = gap
    hw = A.shape[2] * A.shape[3]
    cam = (W[:, :, None, None] * A).sum(1, keepdim=True)  # CAM (Zhou et al. 2016)
    gradcam = raw("GradCAM", model, x, y)
    hirescam = raw("HiResCAM", model, x, y)
    torch.testing.assert_close(gradcam, cam / hw)
    torch.testing.assert_close(hirescam, cam / hw)
    # XGrad-CAM's weights are the gradient itself when it is constant per channel
    torch.testing.assert_close(raw("XGradCAM", model, x, y), cam / hw)


def test_layercam_and_elementwise_closed_form(gap):
    model, x, y, A, W = gap
    hw = A.shape[2] * A.shape[3]
    expected = (W.clamp_min(0)[:, :, None, None] * A).sum(1, keepdim=True) / hw
    torch.testing.assert_close(raw("LayerCAM", model, x, y), expected)
    torch.testing.assert_close(raw("GradCAMElementWise", model, x, y), expected)  # A >= 0


def test_gradcam_plusplus_closed_form(gap):
    """g = W/hw per channel: alpha = 1 / (2 + S_k g), w_k = hw ReLU(g) alpha (eq. 19)."""
    model, x, y, A, W = gap
    hw = A.shape[2] * A.shape[3]
    g = W / hw
    S = A.sum((2, 3))
    w = hw * g.clamp_min(0) / (2 + S * g)
    expected = (w[:, :, None, None] * A).sum(1, keepdim=True)
    torch.testing.assert_close(raw("GradCAMPlusPlus", model, x, y), expected)


def test_ablationcam_closed_form(gap):
    """Ablating channel k (to 0) lowers the logit by W_k mean(A_k): w_k = W_k mean(A_k) / |y|."""
    model, x, y, A, W = gap
    with torch.no_grad():
        logit = model(x).gather(1, y[:, None])
    w = W * A.mean((2, 3)) / logit.abs()
    expected = (w[:, :, None, None] * A).sum(1, keepdim=True)
    torch.testing.assert_close(raw("AblationCAM", model, x, y), expected)


def test_ablationcam_negative_logit_keeps_sign():
    """pytorch-grad-cam divides by y, which flips the map when the logit is negative (#555)."""
    model = make(GapNet)
    with torch.no_grad():
        model.fc.bias.fill_(-100.0)  # every logit negative
    x, y = inputs(3)
    A = activations(model, x, LAYER)
    W = model.fc.weight.detach()[y]
    with torch.no_grad():
        logit = model(x).gather(1, y[:, None])
    assert bool((logit < 0).all())
    expected = ((W * A.mean((2, 3)) / logit.abs())[:, :, None, None] * A).sum(1, keepdim=True)
    torch.testing.assert_close(raw("AblationCAM", model, x, y), expected)


def test_gradcam_matches_captum_layergradcam():
    model = make(BnNet)
    x, y = inputs(3)
    from captum.attr import LayerGradCam

    ref = LayerGradCam(model, model.features.relu2).attribute(x, target=y)
    torch.testing.assert_close(raw("GradCAM", model, x, y), ref)
    via_captum = ek.explain(model, x, y, method="LayerGradCam", layer=LAYER, raw=True)
    torch.testing.assert_close(via_captum, ref)


def test_default_output_is_relu_then_bilinear_upsampling():
    model = make(BnNet)  # features.relu2 is 4 x 4 on 8 x 8 inputs
    x, y = inputs(3)
    r = raw("GradCAM", model, x, y)
    assert r.shape == (3, 1, 4, 4)
    up = ek.explain(model, x, y, method="GradCAM", layer=LAYER)
    expected = F.interpolate(r.clamp_min(0), size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, expected)
    signed = ek.explain(model, x, y, method="GradCAM", layer=LAYER, relu=False)
    torch.testing.assert_close(
        signed, F.interpolate(r, size=(8, 8), mode="bilinear", align_corners=False)
    )
    nearest = ek.explain(model, x, y, method="GradCAM", layer=LAYER, upsample_mode="nearest")
    torch.testing.assert_close(nearest, F.interpolate(r.clamp_min(0), size=(8, 8)))


def test_shapes_cnn_gradcam_is_cam():
    zoo = pytest.importorskip("evalkit.zoo")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = zoo.ShapesCNN().double().eval()
    x = torch.rand((2, 3, 32, 32), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 3])
    A = activations(model, x, model.cam_layer)
    W = model.fc.weight.detach()[y]
    cam = (W[:, :, None, None] * A).sum(1, keepdim=True) / (A.shape[2] * A.shape[3])
    torch.testing.assert_close(ek.explain(model, x, y, method="GradCAM", raw=True), cam)
    torch.testing.assert_close(ek.explain(model, x, y, method="HiResCAM", raw=True), cam)


# ============================================================================ references
def _pc_reference(T: np.ndarray) -> np.ndarray:
    """First principal component projection per sample with NumPy, oriented along sum_k T_k."""
    out = []
    for t in T:
        k = t.shape[0]
        M = t.reshape(k, -1).T
        M = M - M.mean(0)
        _, _, vt = np.linalg.svd(M, full_matrices=False)
        proj = M @ vt[0]
        ref = t.sum(0).reshape(-1)
        if np.dot(proj, ref - ref.mean()) < 0:
            proj = -proj
        out.append(proj.reshape(1, *t.shape[1:]))
    return np.stack(out)


def test_eigencam_matches_numpy_svd(gap):
    model, x, _, A, _ = gap
    expected = torch.from_numpy(_pc_reference(A.numpy()))
    got = raw("EigenCAM", model, x, None)  # class-agnostic: y is not needed
    torch.testing.assert_close(got, expected)
    # oriented: positively correlated with the channel sum
    s = A.sum(1).flatten(1)
    assert bool(((got.flatten(1) * (s - s.mean(1, keepdim=True))).sum(1) > 0).all())


def test_eigengradcam_and_eigen_smooth_match_numpy_svd(gap):
    model, x, y, A, W = gap
    hw = A.shape[2] * A.shape[3]
    G = (W / hw)[:, :, None, None].expand_as(A)
    torch.testing.assert_close(raw("EigenGradCAM", model, x, y),
                               torch.from_numpy(_pc_reference((G * A).numpy())))
    torch.testing.assert_close(raw("GradCAM", model, x, y, eigen_smooth=True),
                               torch.from_numpy(_pc_reference((G * A).numpy())))
    with pytest.warns(EvalkitWarning, match="faithfulness"):
        raw("HiResCAM", model, x, y, eigen_smooth=True)


def _scorecam_reference(model, x, y, layer, weighting="softmax"):
    A = activations(model, x, layer)
    n, k = A.shape[:2]
    scores = torch.zeros((n, k), dtype=x.dtype)
    with torch.no_grad():
        for i, c in itertools.product(range(n), range(k)):
            m = F.interpolate(A[i, c][None, None], size=x.shape[2:], mode="bilinear",
                              align_corners=False)
            lo, hi = m.min(), m.max()
            m = (m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)
            scores[i, c] = model(x[i : i + 1] * m)[0, y[i]]
    w = torch.softmax(scores, 1) if weighting == "softmax" else scores
    return (w[:, :, None, None] * A).sum(1, keepdim=True)


@pytest.mark.parametrize("weighting", ["softmax", "score"])
def test_scorecam_matches_explicit_loop(weighting):
    model = make(BnNet)
    x, y = inputs(3)
    expected = _scorecam_reference(model, x, y, LAYER, weighting)
    got = raw("ScoreCAM", model, x, y, weighting=weighting)
    torch.testing.assert_close(got, expected)
    chunked = raw("ScoreCAM", model, x, y, weighting=weighting, forward_batch_size=5)
    torch.testing.assert_close(chunked, expected)


def test_randomcam_seeded_per_sample(gap):
    model, x, _, _, _ = gap
    a = raw("RandomCAM", model, x, None, seed=3)
    torch.testing.assert_close(a, raw("RandomCAM", model, x, None, seed=3))
    assert not torch.allclose(a, raw("RandomCAM", model, x, None, seed=4))
    torch.testing.assert_close(raw("RandomCAM", model, x[1:2], None, seed=3), a[1:2])


# ============================================================================ in-place, frozen
class InplaceNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(5, N_CLASSES)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


def test_activation_is_recorded_before_a_later_inplace_op():
    model = make(InplaceNet)
    x, y = inputs(3)
    with torch.no_grad():
        A = model.conv(x)  # pre-ReLU, with negative values
    assert bool((A < 0).any())
    hw = A.shape[2] * A.shape[3]
    G = model.fc.weight.detach()[y][:, :, None, None] / hw * (A > 0)
    expected = (G.mean((2, 3), keepdim=True) * A).sum(1, keepdim=True)
    torch.testing.assert_close(raw("GradCAM", model, x, y, layer="conv"), expected)
    # and the model's own output is unchanged by the hook's clone
    with torch.no_grad():
        torch.testing.assert_close(wrap_model(model).predict(x), model(x))


def test_frozen_parameters_still_give_gradient_cams(gap):
    model, x, y, A, W = gap
    for p in model.parameters():
        p.requires_grad_(False)
    cam = (W[:, :, None, None] * A).sum(1, keepdim=True) / (A.shape[2] * A.shape[3])
    torch.testing.assert_close(raw("GradCAM", model, x, y), cam)
    assert all(not p.requires_grad for p in model.parameters())


# ============================================================================ options
def test_layers_by_name_path_module_and_list(gap):
    model, x, y, _, _ = gap
    ref = raw("GradCAM", model, x, y)
    torch.testing.assert_close(raw("GradCAM", model, x, y, layer="features[3]"), ref)
    torch.testing.assert_close(raw("GradCAM", model, x, y, layer="model.features.relu2"), ref)
    torch.testing.assert_close(raw("GradCAM", model, x, y, layer=model.features.relu2), ref)
    torch.testing.assert_close(raw("GradCAM", model, x, y, layer=[LAYER]), ref)
    # default: the last convolution (features.conv2), whose output feeds the ReLU
    conv = raw("GradCAM", model, x, y, layer="features.conv2")
    torch.testing.assert_close(ek.explain(model, x, y, method="GradCAM", raw=True), conv)


def test_several_layers(gap):
    model, x, y, _, _ = gap
    layers = ["features.relu1", LAYER]
    both = raw("GradCAM", model, x, y, layer=layers)
    single = [raw("GradCAM", model, x, y, layer=name) for name in layers]
    torch.testing.assert_close(both, torch.cat(single, 1))
    avg = ek.explain(model, x, y, method="GradCAM", layer=layers)
    scaled = []
    for m in single:
        m = m.clamp_min(0)
        peak = m.flatten(1).amax(1).reshape(-1, 1, 1, 1)
        scaled.append(torch.where(peak > 0, m / peak.clamp_min(1e-300), 0))
    torch.testing.assert_close(avg, (scaled[0] + scaled[1]) / 2)
    bn = make(BnNet)
    with pytest.raises(ValueError, match="one size"):
        raw("GradCAM", bn, x, y, layer=["features.relu1", LAYER])
    assert ek.explain(bn, x, y, method="GradCAM", layer=["features.relu1", LAYER]).shape == \
        (4, 1, 8, 8)


def test_aug_smooth_is_the_average_of_flipped_and_scaled_maps():
    model = make(BnNet)
    x, y = inputs(2)
    got = ek.explain(model, x, y, method="GradCAM", layer=LAYER, aug_smooth=True)
    maps = []
    for flip, scale in DEFAULT_AUGMENTATIONS:
        xa = (x * scale).flip(-1) if flip else x * scale
        m = ek.explain(model, xa, y, method="GradCAM", layer=LAYER)
        maps.append(m.flip(-1) if flip else m)
    assert len(maps) == 6
    torch.testing.assert_close(got, torch.stack(maps).mean(0))
    plain = ek.explain(model, x, y, method="GradCAM", layer=LAYER)
    torch.testing.assert_close(
        ek.explain(model, x, y, method="GradCAM", layer=LAYER, aug_transforms=[(False, 1.0)]),
        plain,
    )


# ============================================================================ token layouts
class TokenNet(nn.Module):
    """A conv stem whose output is re-laid out as (N, 1 + h*w, K) tokens with a CLS token; the
    head reads the patch tokens (``cls_head=True``: only CLS)."""

    def __init__(self, cls_head: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, padding=1, stride=2)
        self.act = nn.ReLU()
        self.cls = nn.Parameter(torch.randn(1, 1, 5))
        self.tokens = nn.Identity()
        self.fc = nn.Linear(5, N_CLASSES)
        self.cls_head = cls_head

    def forward(self, x):
        a = self.act(self.conv(x))
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), a.flatten(2).transpose(1, 2)], 1)
        t = self.tokens(t)
        return self.fc(t[:, 0] if self.cls_head else t[:, 1:].mean(1))


@pytest.mark.parametrize("method", ["GradCAM", "HiResCAM", "GradCAMPlusPlus", "LayerCAM",
                                    "EigenCAM", "ScoreCAM", "AblationCAM"])
def test_reshape_transform_token_layer_equals_grid_layer(method):
    model = make(TokenNet)
    x, y = inputs(3)
    grid = raw(method, model, x, y, layer="act")
    tokens = raw(method, model, x, y, layer="tokens", reshape_transform=vit_reshape_transform())
    torch.testing.assert_close(tokens, grid)


def test_token_layer_without_transform_and_cls_only_gradients():
    model = make(TokenNet)
    x, y = inputs(2)
    with pytest.raises(ValueError, match="reshape_transform"):
        raw("GradCAM", model, x, y, layer="tokens")
    cls_model = make(lambda: TokenNet(cls_head=True))
    with pytest.warns(EvalkitWarning, match="exactly zero"):
        raw("GradCAM", cls_model, x, y, layer="tokens", reshape_transform=vit_reshape_transform())


def test_reshape_transform_helpers():
    t = torch.arange(2 * 17 * 3, dtype=torch.float64).reshape(2, 17, 3)
    out = vit_reshape_transform()(t)
    assert out.shape == (2, 3, 4, 4)
    torch.testing.assert_close(out[:, :, 0, 1], t[:, 2])
    assert vit_reshape_transform(height=2)(t).shape == (2, 3, 2, 8)
    assert vit_reshape_transform(prefix_tokens=2, height=3, width=5)(t).shape == (2, 3, 3, 5)
    with pytest.raises(ValueError, match="square"):
        vit_reshape_transform(prefix_tokens=0)(t)
    with pytest.raises(ValueError, match="grid"):
        vit_reshape_transform(height=3, width=3)(t)
    swin = torch.randn(2, 4, 4, 3)
    torch.testing.assert_close(swin_reshape_transform()(swin), swin.permute(0, 3, 1, 2))
    torch.testing.assert_close(swin_reshape_transform()(swin.reshape(2, 16, 3)),
                               swin.permute(0, 3, 1, 2))


def test_ablationcam_rejects_a_transform_that_computes():
    model = make(TokenNet)
    x, y = inputs(2)
    vit = vit_reshape_transform()
    with pytest.raises(ValueError, match="rearranges"):
        raw("AblationCAM", model, x, y, layer="tokens", reshape_transform=lambda t: vit(t).abs()
            + 0.5)


# ============================================================================ FullGrad
def test_fullgrad_decomposition_is_complete():
    """For a piecewise-linear network: score = sum(x * grad_x) + sum of all bias-gradients."""
    model = make(BnNet)
    x, y = inputs(3)
    wrapper = wrap_model(model)
    with wrapper.evaluation():
        input_part, parts = fullgrad_decomposition(wrapper, x, y)
        score = wrapper.score(x, y)
    names = [name for name, _ in parts]
    assert names == ["features.bn1", "features.conv2", "fc"]
    total = input_part.flatten(1).sum(1) + sum(p.flatten(1).sum(1) for _, p in parts)
    torch.testing.assert_close(total, score)


def test_fullgrad_map():
    model = make(BnNet)
    x, y = inputs(3)
    a = ek.explain(model, x, y, method="FullGrad")
    assert a.shape == (3, 1, 8, 8) and bool((a >= 0).all())
    wrapper = wrap_model(model)
    with wrapper.evaluation():
        input_part, parts = fullgrad_decomposition(wrapper, x, y)

    def rescale(t):
        t = t.abs().flatten(1)
        lo, hi = t.min(1, keepdim=True).values, t.max(1, keepdim=True).values
        return (t - lo) / (hi - lo)

    expected = rescale(input_part).reshape(input_part.shape).sum(1, keepdim=True)
    for _, p in parts:
        if p.ndim == 4:
            m = rescale(p).reshape(p.shape)
            expected = expected + F.interpolate(m, size=(8, 8), mode="bilinear",
                                                align_corners=False).sum(1, keepdim=True)
    torch.testing.assert_close(a, expected)
    with pytest.warns(EvalkitWarning, match="ignored"):
        ek.explain(model, x, y, method="FullGrad", layer=LAYER)


def test_fullgrad_needs_running_statistics():
    model = make(BnNet).train()
    x, y = inputs(2)
    with pytest.raises(ValueError, match="running"):
        ek.explain(wrap_model(model, eval_mode=False), x, y, method="FullGrad")


# ============================================================================ errors
class SideNet(GapNet):
    """GapNet with a branch that runs but does not reach the output, and a frozen branch."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Conv2d(3, 2, 1)
        self.frozen = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        self.unused(x)
        with torch.no_grad():
            x = self.frozen(x)
        return super().forward(x)


def test_layer_errors(gap):
    model, x, y, _, _ = gap
    with pytest.raises(ValueError, match=r"Did you mean 'features\.relu2'"):
        raw("GradCAM", model, x, y, layer="features.relu3")
    with pytest.raises(ValueError, match="not part of the model"):
        raw("GradCAM", model, x, y, layer=nn.ReLU())
    with pytest.raises(TypeError, match="layer"):
        raw("GradCAM", model, x, y, layer=3)
    side = make(SideNet)
    with pytest.raises(ValueError, match="No gradient reaches layer 'unused'"):
        raw("GradCAM", side, x, y, layer="unused")
    with pytest.raises(ValueError, match="without autograd"):
        raw("GradCAM", side, x, y, layer="frozen")
    # gradient-free methods work on both
    assert raw("EigenCAM", side, x, None, layer="unused").shape == (4, 1, 8, 8)

    class Skip(GapNet):
        def forward(self, x):
            return self.fc(torch.flatten(self.gap(self.features.conv1(x)), 1)[:, :6].repeat(1, 2)
                           [:, :6])

    with pytest.raises(ValueError, match="not called"):
        raw("GradCAM", make(Skip), x, y, layer="features.conv2")


def test_label_and_input_errors(gap):
    model, x, y, _, _ = gap
    with pytest.raises(ValueError, match="3 entries but `x` has 4"):
        ek.explain(model, x, y[:3], method="GradCAM")
    with pytest.raises(ValueError, match="`y` is required"):
        ek.explain(model, x, None, method="GradCAM")
    with pytest.raises(ValueError, match="valid labels"):
        ek.explain(model, x, y + 10, method="ScoreCAM")
    with pytest.raises(ValueError, match="spatial"):
        ek.explain(nn.Sequential(nn.Linear(5, 3)), torch.rand(2, 5), [0, 1], method="GradCAM",
                   layer="0")
    with pytest.raises(TypeError, match="unexpected keyword"):
        ek.explain(model, x, y, method="GradCAM", n_steps=3)
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        ek.explain(lambda a: a.reshape(len(a), -1)[:, :3], x.numpy(), y.numpy(),
                   method="EigenCAM")


def test_hooks_removed_after_an_error(gap):
    model, x, y, _, _ = gap

    def broken(t):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        raw("GradCAM", model, x, y, reshape_transform=broken)
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


def test_no_warning_on_the_normal_path(gap):
    model, x, y, _, _ = gap
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("GradCAM", "ScoreCAM", "AblationCAM", "EigenCAM", "FullGrad"):
            ek.explain(model, x, y, method=method)


def test_output_devices_and_dtypes(gap):
    model, x, y, _, _ = gap
    a = ek.explain(model.float(), x.float(), y, method="GradCAMPlusPlus")
    assert a.dtype == torch.float32 and a.device == x.device
    assert ek.explain(model, x.numpy(), y.numpy(), method="LayerCAM").dtype == np.float32
    assert N_CLASSES == 3
