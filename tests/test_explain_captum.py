"""captum-backed methods: closed forms (linear models), completeness, agreement with captum
called directly and with the released quantus (a test-only oracle), black-box models, and the
guards around captum's hooks and RNG use."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _explain_helpers import BnNet, GapNet, inputs, make, rng_states, same_rng
from torch import nn

import evalkit as ek
from evalkit.models import CallableModel, wrap_model

HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None


class Linear(nn.Module):
    """f(x) = W flatten(x) + b on (N, 3, 4, 4) inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(48, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.fixture
def linear():
    model = make(Linear)
    x = torch.rand((4, 3, 4, 4), dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0])
    w = model.fc.weight.detach()[y].reshape(4, 3, 4, 4)
    return model, x, y, w


# ============================================================================ closed forms
@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_left", "riemann_middle",
                                  "riemann_trapezoid"])
def test_integrated_gradients_completeness_linear(linear, rule):
    model, x, y, w = linear
    b = torch.full_like(x, 0.3)
    a = ek.explain(model, x, y, method="IntegratedGradients", baselines=b, n_steps=7,
                   integration_method=rule)
    f = wrap_model(model).score
    # captum's trapezoid weights sum to (n - 1) / n instead of 1 (its step sizes are 1/n with
    # halved ends), so Quantus' hard-coded riemann_trapezoid loses completeness by that factor
    factor = 6 / 7 if rule == "riemann_trapezoid" else 1.0
    torch.testing.assert_close(a.flatten(1).sum(1), factor * (f(x, y) - f(b, y)))
    torch.testing.assert_close(a, factor * (x - b) * w)


def test_integrated_gradients_completeness_nonlinear():
    model = make(BnNet)
    x, y = inputs(3)
    a = ek.explain(model, x, y, method="IntegratedGradients", n_steps=400)
    f = wrap_model(model).score
    torch.testing.assert_close(a.flatten(1).sum(1), f(x, y) - f(torch.zeros_like(x), y),
                               rtol=0, atol=2e-3)


def test_per_sample_baselines_are_sliced_with_the_batch(linear):
    model, x, y, w = linear
    b = torch.rand(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(5))
    full = ek.explain(model, x, y, method="IntegratedGradients", baselines=b)
    torch.testing.assert_close(full, (x - b) * w)
    torch.testing.assert_close(
        ek.explain(model, x, y, method="IntegratedGradients", baselines=b, batch_size=1), full
    )
    shared = ek.explain(model, x, y, method="IntegratedGradients", baselines=b[:1], batch_size=3)
    torch.testing.assert_close(shared, (x - b[:1]) * w)
    torch.testing.assert_close(ek.explain(model, x, y, method="DeepLift", baselines=b,
                                          batch_size=1), (x - b) * w)


def test_gradient_family_linear(linear):
    model, x, y, w = linear
    torch.testing.assert_close(ek.explain(model, x, y, method="Gradient"), w)
    torch.testing.assert_close(ek.explain(model, x, y, method="Saliency"), w.abs())
    torch.testing.assert_close(ek.explain(model, x, y, method="InputXGradient"), x * w)
    torch.testing.assert_close(ek.explain(model, x, y, method="DeepLift"), x * w)
    torch.testing.assert_close(ek.explain(model, x, y, method="DeepLiftShap"), x * w)


def test_gradient_shap_linear_and_seeded(linear):
    model, x, y, w = linear
    b = torch.rand((5, 3, 4, 4), dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    # one baseline: exact, whatever the draws
    one = ek.explain(model, x, y, method="GradientShap", baselines=b[:1], n_samples=3)
    torch.testing.assert_close(one, (x - b[:1]) * w)
    # a distribution: (x - mean of the drawn baselines) * w; the same seed gives the same draws
    rng = rng_states()
    a1 = ek.explain(model, x, y, method="GradientShap", baselines=b, n_samples=50, seed=7)
    assert same_rng(rng, rng_states())
    a2 = ek.explain(model, x, y, method="GradientShap", baselines=b, n_samples=50, seed=7)
    torch.testing.assert_close(a1, a2)
    a3 = ek.explain(model, x, y, method="GradientShap", baselines=b, n_samples=50, seed=8)
    assert not torch.allclose(a1, a3)
    torch.testing.assert_close(a1, (x - b.mean(0)) * w, rtol=0, atol=0.25)
    # noise on the inputs: completeness in expectation, sample means stay close
    noisy = ek.explain(model, x, y, method="GradientShap", baselines=b[:1], n_samples=200,
                       stdevs=0.05)
    torch.testing.assert_close(noisy, (x - b[:1]) * w, rtol=0, atol=0.02)
    grads_only = ek.explain(model, x, y, method="GradientShap", multiply_by_inputs=False)
    torch.testing.assert_close(grads_only, w)


def test_gradient_shap_agrees_with_captum_in_expectation():
    from captum.attr import GradientShap

    model = make(BnNet)
    x, y = inputs(2)
    b = torch.zeros((1, *x.shape[1:]), dtype=x.dtype)
    ours = ek.explain(model, x, y, method="GradientShap", baselines=b, n_samples=400)
    from evalkit.explain.captum_methods import _seeded_global_rngs

    with _seeded_global_rngs(0, x.device):  # captum draws from the global generators
        ref = GradientShap(model).attribute(x, baselines=b, target=y, n_samples=400)
    torch.testing.assert_close(ours.flatten(1).sum(1), ref.flatten(1).sum(1), rtol=0.1,
                               atol=5e-3)


def test_deeplift_summation_to_delta():
    model = make(BnNet)
    x, y = inputs(3)
    a = ek.explain(model, x, y, method="DeepLift")
    f = wrap_model(model).score
    torch.testing.assert_close(a.flatten(1).sum(1), f(x, y) - f(torch.zeros_like(x), y))


# ============================================================================ agreement
def test_agrees_with_captum_called_directly():
    import captum.attr as ca

    model = make(BnNet)
    x, y = inputs(3)
    direct = {
        "Saliency": ca.Saliency(model).attribute(x.clone().requires_grad_(), target=y),
        "GuidedBackprop": ca.GuidedBackprop(model).attribute(x.clone(), target=y),
        "Deconvolution": ca.Deconvolution(model).attribute(x.clone(), target=y),
        "LRP": ca.LRP(model).attribute(x.clone(), target=y),
        "Occlusion": ca.Occlusion(model).attribute(
            x, sliding_window_shapes=(3, 4, 4), strides=(3, 2, 2), target=y),
        "GuidedGradCam": ca.GuidedGradCam(model, model.features.relu2).attribute(
            x.clone(), target=y),
        "LayerConductance": ca.LayerConductance(model, model.features.relu2).attribute(
            x, target=y, n_steps=20),
        "InternalInfluence": ca.InternalInfluence(model, model.features.relu2).attribute(
            x, target=y, n_steps=20),
        "LayerGradientXActivation": ca.LayerGradientXActivation(
            model, model.features.relu2).attribute(x, target=y),
        "LayerActivation": ca.LayerActivation(model, model.features.relu2).attribute(x),
    }
    layer_methods = {"LayerConductance", "InternalInfluence", "LayerGradientXActivation",
                     "LayerActivation"}
    for name, ref in direct.items():
        kw = {"layer": "features.relu2"} if name in layer_methods | {"GuidedGradCam"} else {}
        if name in ("LayerConductance", "InternalInfluence"):
            kw["n_steps"] = 20
        if name in layer_methods:
            got = ek.explain(model, x, y, method=name, raw=True, **kw)
            torch.testing.assert_close(got, ref, msg=name)
            up = ek.explain(model, x, y, method=name, **kw)
            expected = F.interpolate(ref.sum(1, keepdim=True), size=(8, 8), mode="bilinear",
                                     align_corners=False)
            torch.testing.assert_close(up, expected, msg=name)
        else:
            got = ek.explain(model, x, y, method=name, **kw)
            assert got.dtype == x.dtype, name  # captum's Occlusion gives float32 here
            torch.testing.assert_close(got, ref.to(x.dtype), msg=name)


def test_quantus_oracle(quantus):
    """Same numbers as ``quantus.explain`` (which sums over channels by default)."""
    model = make(GapNet).float()
    x, y = inputs(3, dtype=torch.float32)
    xn, yn = x.numpy(), y.numpy()
    cases = [
        ("Saliency", {}, {}),
        ("Gradient", {}, {}),
        ("InputXGradient", {}, {}),
        ("IntegratedGradients", {}, {"n_steps": 10}),
        ("Occlusion", {"window": (1, 4, 4)}, {"window": (1, 4, 4), "strides": 1}),
    ]
    for method, qkw, ekw in cases:
        ref = quantus.explain(model, xn, yn, method=method, device="cpu", **qkw)
        if method == "IntegratedGradients":
            ekw["integration_method"] = "riemann_trapezoid"  # quantus' hard-coded rule
        got = ek.explain(model, xn, yn, method=method, reduce_channels="sum", **ekw)
        np.testing.assert_allclose(got, ref.reshape(got.shape), rtol=1e-4, atol=1e-6,
                                   err_msg=method)
    ref = quantus.explain(model, xn, yn, method="GradCam", gc_layer="model.features[3]",
                          device="cpu", interpolate=(8, 8))
    got = ek.explain(model, xn, yn, method="GradCam", gc_layer="model.features[3]")
    np.testing.assert_allclose(got, ref.reshape(got.shape), rtol=1e-4, atol=1e-6)
    sobel = quantus.explain(model, xn, yn, method="Control Var. Sobel Filter", device="cpu")
    assert sobel.shape[0] == 3  # quantus' Sobel (skimage, per channel) differs by design


# ============================================================================ black-box models
def _numpy_model(torch_model):
    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch_model(torch.from_numpy(batch)).numpy()

    return predict


@pytest.mark.parametrize("method", ["Occlusion", "FeatureAblation", "Lime", "KernelShap"])
def test_black_box_methods_work_on_callables(method):
    if method in ("Lime", "KernelShap") and not HAS_SKLEARN:
        pytest.skip("captum's Lime/KernelShap need scikit-learn")
    model = make(BnNet)
    x, y = inputs(2)
    kw = {"patch_size": 4, "n_samples": 10} if method in ("Lime", "KernelShap") else {}
    if method == "FeatureAblation":
        kw["patch_size"] = 2
    wrapped = CallableModel(_numpy_model(model), dtype=torch.float64)
    got = ek.explain(wrapped, x.numpy(), y.numpy(), method=method, **kw)
    ref = ek.explain(model, x.numpy(), y.numpy(), method=method, **kw)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("method", ["Saliency", "IntegratedGradients", "DeepLift", "LRP",
                                    "LayerGradCam", "GradCAM", "ScoreCAM"])
def test_gradient_and_layer_methods_need_a_torch_model(method):
    model = make(BnNet)
    x, y = inputs(2)
    wrapped = CallableModel(_numpy_model(model), dtype=torch.float64)
    with pytest.raises(TypeError, match=r"differentiable|torch\.nn\.Module"):
        ek.explain(wrapped, x.numpy(), y.numpy(), method=method)


@pytest.mark.skipif(not HAS_SKLEARN, reason="captum's Lime/KernelShap need scikit-learn")
@pytest.mark.parametrize("method", ["Lime", "KernelShap"])
def test_surrogates_seeded_per_sample(method):
    model = make(BnNet)
    with torch.no_grad():
        model.fc.weight.mul_(100.0)  # a signal the Lasso surrogate does not shrink to 0
    x, y = inputs(3)
    kw = {"patch_size": 4, "n_samples": 16}
    rng = rng_states()
    a = ek.explain(model, x, y, method=method, seed=1, **kw)
    assert same_rng(rng, rng_states())
    torch.testing.assert_close(a, ek.explain(model, x, y, method=method, seed=1, **kw))
    b = ek.explain(model, x, y, method=method, seed=2, **kw)
    assert not torch.equal(a, b)
    # patches: constant within each 4 x 4 patch (shared by the channels)
    assert bool((a[..., :4, :4] == a[:, :1, :1, :1]).all())


def test_feature_ablation_patches_and_groupings():
    model = make(BnNet)
    x, y = inputs(2)
    a = ek.explain(model, x, y, method="FeatureAblation", patch_size=4)
    from captum.attr import FeatureAblation

    mask = torch.arange(4).reshape(2, 2).repeat_interleave(4, 0).repeat_interleave(4, 1)
    ref = FeatureAblation(model).attribute(x, target=y, feature_mask=mask[None, None])
    torch.testing.assert_close(a, ref)
    grouped = ek.explain(model, x, y, method="FeatureAblation", grouping=ek.perturb.Patches(4))
    torch.testing.assert_close(grouped, ref)
    with pytest.raises(TypeError, match="either"):
        ek.explain(model, x, y, method="FeatureAblation", patch_size=4, feature_mask=mask)


# ============================================================================ hooks and rules
def test_lrp_keeps_a_user_rule_and_drops_captums():
    from captum.attr._utils.lrp_rules import EpsilonRule

    model = make(BnNet)
    rule = EpsilonRule(epsilon=1e-3)
    model.fc.rule = rule
    x, y = inputs(2)
    ek.explain(model, x, y, method="LRP")
    assert model.fc.rule is rule
    assert not hasattr(model.features.conv1, "rule")
    from captum.attr import LRP

    ek_lrp = ek.explain(model, x, y, method="LRP")
    torch.testing.assert_close(ek_lrp, LRP(model).attribute(x.clone(), target=y))


def test_lrp_unsupported_module_is_captums_error():
    # nn.GELU has no LRP rule (nn.Flatten gets evalkit's pass-through epsilon rule, which
    # the guard removes again with captum's)
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.GELU(), nn.Flatten(), nn.Linear(72, 3)).double()
    x, y = inputs(2)
    with pytest.raises(TypeError, match="no rule"):
        ek.explain(model, x, y, method="LRP")
    for m in model.modules():
        assert not hasattr(m, "rule")


def test_convergence_delta_is_refused(linear):
    model, x, y, _ = linear
    with pytest.raises(TypeError, match="return_convergence_delta"):
        ek.explain(model, x, y, method="IntegratedGradients", return_convergence_delta=True)


def test_constructor_kwargs(linear):
    model, x, y, w = linear
    a = ek.explain(model, x, y, method="IntegratedGradients",
                   constructor_kwargs={"multiply_by_inputs": False})
    torch.testing.assert_close(a, w)
    b = ek.explain(model, x, y, method="IntegratedGradients",
                   xai_lib_kwargs={"multiply_by_inputs": False})
    torch.testing.assert_close(b, w)


def test_layer_method_on_a_non_spatial_layer():
    model = make(GapNet)
    x, y = inputs(2)
    with pytest.raises(ValueError, match="raw=True"):
        ek.explain(model, x, y, method="LayerActivation", layer="fc")
    assert ek.explain(model, x, y, method="LayerActivation", layer="fc", raw=True).shape == (2, 3)


class SharedRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()  # used twice
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.relu(self.conv2(self.relu(self.conv1(x)))).mean((2, 3)))


def test_reused_modules_are_refused_by_stateful_rules():
    model = make(SharedRelu)
    x, y = inputs(2)
    for method in ("DeepLift", "DeepLiftShap", "LRP"):
        with pytest.raises(ValueError, match=r"\['relu'\] run more than once"):
            ek.explain(model, x, y, method=method)
        for m in model.modules():
            assert not m._forward_pre_hooks and not m._forward_hooks
    assert ek.explain(model, x, y, method="GuidedBackprop").shape == x.shape  # per-call hooks


@pytest.mark.parametrize("method, abs_, times_input", [
    ("Saliency", True, False), ("Gradient", False, False), ("InputXGradient", False, True)])
def test_native_input_gradient_is_captums_bit_for_bit(method, abs_, times_input):
    # Saliency, Gradient and InputXGradient seed one backward with ones instead of captum's
    # autograd.grad over the unbound scores: the same gradients, bit for bit
    import captum.attr as ca

    model = make(BnNet)
    x, y = inputs(5)
    ref = ca.Saliency(model).attribute(x.clone().requires_grad_(), target=y, abs=abs_)
    if times_input:
        ref = x * ref
    got = ek.explain(model, x, y, method=method)
    assert torch.equal(got, ref.detach())
    assert not x.requires_grad and got.grad_fn is None



def test_native_input_gradient_keeps_captums_path_for_other_arguments():
    # keyword arguments the native path does not take still reach captum, which rejects
    # an unknown one as before
    model = make(BnNet)
    x, y = inputs(2)
    for method in ("Saliency", "Gradient", "InputXGradient"):
        with pytest.raises(TypeError, match="unexpected keyword argument 'steps'"):
            ek.explain(model, x, y, method=method, steps=3)
