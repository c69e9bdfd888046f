"""The ``explain`` entry point and the registry: names and aliases, custom explainers, NumPy /
torch conventions, channel reduction, chunking, autograd contexts, targets, and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _explain_helpers import BnNet, GapNet, inputs, make

import evalkit as ek
from evalkit.explain import (
    ExplainerInfo,
    available_methods,
    explainer_info,
    get_explainer,
    numpy_explain_fn,
    register_explainer,
)
from evalkit.explain import core as explain_core
from evalkit.models import wrap_model


@pytest.fixture
def scratch_registry():
    """Register test explainers without leaking them into other tests."""
    explainers = dict(explain_core._EXPLAINERS)
    aliases = dict(explain_core._ALIASES)
    spellings = dict(explain_core._ALIAS_SPELLINGS)
    yield
    for table, saved in ((explain_core._EXPLAINERS, explainers),
                         (explain_core._ALIASES, aliases),
                         (explain_core._ALIAS_SPELLINGS, spellings)):
        table.clear()
        table.update(saved)


# ============================================================================ registry
def test_names_aliases_and_suggestions():
    assert explainer_info("GradCam").name == "LayerGradCam"  # Quantus' spelling
    assert explainer_info("gradcam").name == "GradCAM"
    assert explainer_info("saliency").name == "Saliency"
    assert explainer_info("Control Var. Random Uniform").name == "Random"
    assert get_explainer("Sobel") is explainer_info("sobel").fn
    with pytest.raises(ValueError, match=r"Did you mean.*GradCAM"):
        explainer_info("GradCAN")
    with pytest.raises(TypeError, match="method name"):
        explainer_info(3)
    methods = available_methods()
    assert methods == sorted(methods) and "FullGrad" in methods


def test_the_builtin_methods_register_when_the_package_loads():
    """The registry (explain/core.py) imports none of the built-in modules (no import cycle):
    they register when the package loads, which any import of evalkit.explain's modules does
    first, so the registry is never seen half filled."""
    import subprocess
    import sys

    code = ("import importlib; core = importlib.import_module('evalkit.explain.core'); "
            "print(' '.join(sorted(core._EXPLAINERS)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert {"Saliency", "IntegratedGradients", "GradCAM", "Sobel", "Random"} <= set(out)
    assert set(out) == set(available_methods())


def test_register_custom_explainer(scratch_registry):
    @register_explainer("Sign", aliases=("sign-of-input",), per_sample=("scale",))
    def sign(model, x, y, *, scale=1.0):
        return torch.sign(x) * (scale.reshape(-1, 1, 1, 1) if torch.is_tensor(scale) else scale)

    x, y = inputs(4)
    model = make(GapNet)
    torch.testing.assert_close(ek.explain(model, x, y, method="sign-of-input"), torch.sign(x))
    scale = torch.arange(4, dtype=torch.float64)
    out = ek.explain(model, x, y, method="Sign", scale=scale, batch_size=3)
    torch.testing.assert_close(out, torch.sign(x) * scale.reshape(-1, 1, 1, 1))
    assert isinstance(explainer_info("Sign"), ExplainerInfo)
    with pytest.raises(ValueError, match="already registered"):
        register_explainer("Sign")(sign)
    register_explainer("Sign", overwrite=True)(sign)
    with pytest.raises(TypeError, match="Unknown explainer properties"):
        register_explainer("Other", differentiable=True)

    @register_explainer("Broken")
    def broken(model, x, y):
        return x[:1]

    with pytest.raises(RuntimeError, match="one attribution per input"):
        ek.explain(model, x, y, method="Broken")


def test_numpy_explain_fn_adapter(scratch_registry):
    def quantus_style(model, inputs, targets, **kw):
        assert isinstance(inputs, np.ndarray) and isinstance(targets, np.ndarray)
        return np.ones_like(inputs[:, :1]) * targets[:, None, None, None]

    register_explainer("QuantusStyle")(numpy_explain_fn(quantus_style))
    x, y = inputs(3)
    out = ek.explain(make(GapNet), x, y, method="QuantusStyle")
    torch.testing.assert_close(out, y.double().reshape(-1, 1, 1, 1).expand(3, 1, 8, 8))


# ============================================================================ conventions
def test_numpy_and_torch_conventions():
    model = make(GapNet)
    x, y = inputs(3)
    a = ek.explain(model, x, y)  # default method: Saliency
    assert isinstance(a, torch.Tensor) and a.shape == x.shape and a.device == x.device
    torch.testing.assert_close(a, ek.explain(model, x, y, method="Saliency"))
    n = ek.explain(model, x.numpy(), y.numpy())
    assert isinstance(n, np.ndarray) and n.dtype == np.float64
    np.testing.assert_allclose(n, a.numpy())
    # labels as a list, float32 inputs cast to the model's dtype
    f = ek.explain(model, x.float(), list(y.tolist()))
    assert f.dtype == torch.float64


@pytest.mark.parametrize("how", ["sum", "mean", "abs_sum", "max_abs"])
def test_reduce_channels(how):
    model = make(GapNet)
    x, y = inputs(2)
    full = ek.explain(model, x, y, method="Gradient")
    red = ek.explain(model, x, y, method="Gradient", reduce_channels=how)
    expected = {"sum": full.sum(1, keepdim=True), "mean": full.mean(1, keepdim=True),
                "abs_sum": full.abs().sum(1, keepdim=True),
                "max_abs": full.abs().amax(1, keepdim=True)}[how]
    torch.testing.assert_close(red, expected)
    cam = ek.explain(model, x, y, method="GradCAM", reduce_channels=how)
    assert cam.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="reduce_channels"):
        ek.explain(model, x, y, reduce_channels="median")


def test_autograd_contexts_do_not_matter():
    model = make(GapNet)
    x, y = inputs(2)
    ref = ek.explain(model, x, y, method="Gradient")
    cam = ek.explain(model, x, y, method="GradCAM")
    hires = ek.explain(model, x, y, method="HiResCAM")
    with torch.no_grad():
        torch.testing.assert_close(ek.explain(model, x, y, method="Gradient"), ref)
        torch.testing.assert_close(ek.explain(model, x, y, method="GradCAM"), cam)
    with torch.inference_mode():
        xi = x.clone()  # an inference tensor
        torch.testing.assert_close(ek.explain(model, xi, y, method="Gradient"), ref)
        torch.testing.assert_close(ek.explain(model, xi, y, method="HiResCAM"), hires)


def test_targets_are_honoured():
    model = make(GapNet)
    x, y = inputs(3)

    def margin(outputs, labels):
        return outputs[:, 0] - outputs[:, 1]

    got = ek.explain(model, x, None, method="Gradient", target=margin)
    xg = x.clone().requires_grad_(True)
    out = model(xg)
    (expected,) = torch.autograd.grad((out[:, 0] - out[:, 1]).sum(), xg)
    torch.testing.assert_close(got, expected)

    prob = ek.explain(model, x, y, method="Gradient", softmax=True)
    xg = x.clone().requires_grad_(True)
    p = torch.softmax(model(xg), 1).gather(1, y[:, None]).sum()
    (expected,) = torch.autograd.grad(p, xg)
    torch.testing.assert_close(prob, expected)

    # CAMs too: the Grad-CAM of a custom score is that of its gradient
    cam = ek.explain(model, x, None, method="GradCAM", target=margin, raw=True,
                     layer="features.relu2")
    W = model.fc.weight.detach()
    A = _act(model, x)
    w = (W[0] - W[1]) / 64
    torch.testing.assert_close(cam, (w[None, :, None, None] * A).sum(1, keepdim=True))
    # a wrapper's target and softmax are used as they are
    wrapped = wrap_model(model, target=margin)
    torch.testing.assert_close(ek.explain(wrapped, x, None, method="Gradient"), got)


def _act(model, x):
    store = []
    h = model.features.relu2.register_forward_hook(lambda m, i, o: store.append(o.detach()))
    with torch.no_grad():
        model(x)
    h.remove()
    return store[0]


def test_label_errors():
    model = make(GapNet)
    x, y = inputs(4)
    with pytest.raises(ValueError, match="3 entries but `x` has 4"):
        ek.explain(model, x, y[:3], method="Saliency")
    with pytest.raises(ValueError, match="valid labels"):
        ek.explain(model, x, y + 5, method="IntegratedGradients")
    with pytest.raises(ValueError, match="`y` is required"):
        ek.explain(model, x, None, method="Saliency")
    with pytest.raises(ValueError, match="NaN"):
        ek.explain(model, x * float("nan"), y)
    # class-agnostic methods need no labels
    assert ek.explain(model, x, None, method="EigenCAM").shape == (4, 1, 8, 8)
    assert ek.explain(model, x, None, method="LayerActivation").shape == (4, 1, 8, 8)


def test_x_the_model_cannot_take_is_named():
    """A wrong rank or layout fails deep in the model: the error names `x` and its shape (as
    on the metric path) and keeps the model's own error as the cause."""
    model = make(GapNet)
    x, y = inputs(4)
    for bad in (x[:, 0], x.permute(0, 2, 3, 1)):  # no channel axis; channels last
        for method in ("Saliency", "IntegratedGradients", "GradCAM"):
            with pytest.raises(ValueError, match=r"cannot run on `x` of shape \(4, ") as info:
                ek.explain(model, bad, y, method=method)
            assert isinstance(info.value.__cause__, RuntimeError)
    # an error that is not about x is left as it was, and model-free methods never blame the
    # model (Sobel's own message for a 1-channel input with luma weights)
    with pytest.raises(ValueError, match="valid labels"):
        ek.explain(model, x, y + 5, method="Saliency")
    with pytest.raises(ValueError) as info:
        ek.explain(model, x[:, :1], y, method="Sobel", grayscale="luma")
    assert "cannot run on `x`" not in str(info.value)


def test_large_stacked_batch_in_chunks():
    """Re-explaining metrics call explain on N * K inputs: any batch size, same maps."""
    model = make(BnNet)
    x, y = inputs(64, seed=4)
    for method in ("Saliency", "GradCAM", "Sobel"):
        full = ek.explain(model, x, y, method=method)
        torch.testing.assert_close(ek.explain(model, x, y, method=method, batch_size=7), full)
    wrapper = wrap_model(model)
    wrapper.counter.reset()
    ek.explain(wrapper, x, y, method="GradCAM", batch_size=16)
    # one forward per chunk: labels are checked on the explainer's own outputs, no extra pass
    assert wrapper.counter.calls == 64 // 16


def test_batch_size_zero_is_rejected():
    model = make(GapNet)
    x, y = inputs(2)
    with pytest.raises(ValueError, match="batch_size"):
        ek.explain(model, x, y, batch_size=0)


def test_quantus_keyword_names():
    model = make(GapNet)
    x, y = inputs(4)
    b = torch.rand(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(0))
    ref = ek.explain(model, x, y, method="IntegratedGradients", baselines=b, n_steps=5)
    # `baseline` is renamed before chunking, so a per-sample baseline is sliced too
    got = ek.explain(model, x, y, method="IntegratedGradients", baseline=b, n_steps=5,
                     batch_size=3)
    torch.testing.assert_close(got, ref)
    cam = ek.explain(model, x, y, method="GradCAM", layer="features.relu2")
    torch.testing.assert_close(
        ek.explain(model, x, y, method="GradCAM", gc_layer="model.features[3]",
                   interpolate=(8, 8), interpolate_mode="bilinear"), cam)
    ek.explain(model, x, y, method="GuidedGradCam", gc_layer="features.relu2",
               interpolate_mode="nearest")
    with pytest.raises(ValueError, match="input size"):
        ek.explain(model, x, y, method="LayerGradCam", gc_layer="features.relu2",
                   interpolate=(4, 4))
    with pytest.raises(TypeError, match="not both"):
        ek.explain(model, x, y, method="IntegratedGradients", baseline=b, baselines=b)
    torch.testing.assert_close(
        ek.explain(model, x, y, method="IntegratedGradients",
                   xai_lib_kwargs={"multiply_by_inputs": False}),
        ek.explain(model, x, y, method="IntegratedGradients",
                   constructor_kwargs={"multiply_by_inputs": False}))
