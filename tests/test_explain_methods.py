"""Properties every registered explanation method must have: the right shape, no trace left on
the model (weights, .grad, train/eval flags, hooks, attributes, global RNG), per-sample results
independent of the batch, and finite values."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from _explain_helpers import (
    N_CLASSES,
    BnNet,
    assert_unchanged,
    inputs,
    make,
    module_state,
    rng_states,
    same_rng,
)
from torch.nn.modules.module import (
    _global_backward_hooks,
    _global_forward_hooks,
    _global_forward_pre_hooks,
)

import evalkit as ek
from evalkit.explain import available_methods, explainer_info

HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None

#: fast settings per method (the defaults are exercised elsewhere)
KWARGS = {
    "IntegratedGradients": {"n_steps": 8},
    "LayerConductance": {"n_steps": 8},
    "InternalInfluence": {"n_steps": 8},
    "GradientShap": {"n_samples": 4, "stdevs": 0.1},
    "Lime": {"patch_size": 4, "n_samples": 12},
    "KernelShap": {"patch_size": 4, "n_samples": 12},
    "FeatureAblation": {"patch_size": 2},
    "GroundTruth": {},  # masks are added per batch
}

#: methods whose output has the input's channels (the rest give one map)
INPUT_SHAPED = {
    "Gradient", "Saliency", "InputXGradient", "IntegratedGradients", "GradientShap", "DeepLift",
    "DeepLiftShap", "GuidedBackprop", "Deconvolution", "LRP", "Occlusion", "FeatureAblation",
    "Lime", "KernelShap", "GuidedGradCam",
}

ISSUE_METHODS = {
    # captum
    "Saliency", "Gradient", "InputXGradient", "IntegratedGradients", "GradientShap", "DeepLift",
    "DeepLiftShap", "GuidedBackprop", "Deconvolution", "Occlusion", "FeatureAblation", "Lime",
    "KernelShap", "LayerGradCam", "GuidedGradCam", "LayerConductance", "LayerActivation",
    "InternalInfluence", "LayerGradientXActivation", "LRP",
    # CAM family
    "GradCAM", "HiResCAM", "GradCAMElementWise", "GradCAMPlusPlus", "XGradCAM", "LayerCAM",
    "EigenCAM", "EigenGradCAM", "ScoreCAM", "AblationCAM", "FullGrad", "RandomCAM",
    # controls
    "Random", "Constant", "Sobel", "GroundTruth",
}


def _methods():
    out = []
    for name in available_methods():
        marks = []
        if name in ("Lime", "KernelShap") and not HAS_SKLEARN:
            marks.append(pytest.mark.skip(reason="captum's Lime/KernelShap need scikit-learn"))
        if name == "AttentionRollout":  # these tests use a CNN; the same contract on a ViT:
            marks.append(pytest.mark.skip(reason="needs attention modules: tests/test_rollout.py"))
        out.append(pytest.param(name, marks=marks))
    return out


def _kwargs(method: str, x: torch.Tensor) -> dict:
    kw = dict(KWARGS.get(method, {}))
    if method == "GroundTruth":
        kw["masks"] = (x[:, :1] > 0.5).double()
    return kw


def test_every_issue_method_is_registered():
    assert ISSUE_METHODS <= set(available_methods())


@pytest.mark.parametrize("method", _methods())
def test_shape_and_finite(method):
    model = make(BnNet)
    x, y = inputs(3)
    a = ek.explain(model, x, y, method=method, **_kwargs(method, x))
    assert isinstance(a, torch.Tensor)
    expected = (3, 3, 8, 8) if method in INPUT_SHAPED else (3, 1, 8, 8)
    assert tuple(a.shape) == expected
    assert bool(torch.isfinite(a).all())
    assert a.dtype == x.dtype


@pytest.mark.parametrize("method", _methods())
def test_model_inputs_and_global_state_untouched(method):
    model = make(BnNet)
    # a mixed train/eval state and accumulated gradients, all of which must survive
    model.train()
    model.features.bn1.eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    x, y = inputs(3)
    x_before = x.clone()
    before = module_state(model)
    rng = rng_states()
    hooks = (dict(_global_forward_hooks), dict(_global_forward_pre_hooks),
             dict(_global_backward_hooks))
    ek.explain(model, x, y, method=method, **_kwargs(method, x))
    assert_unchanged(model, before)
    assert model.training and not model.features.bn1.training and model.drop.training
    assert same_rng(rng, rng_states())
    assert torch.equal(x, x_before) and not x.requires_grad
    assert hooks == (dict(_global_forward_hooks), dict(_global_forward_pre_hooks),
                     dict(_global_backward_hooks))


@pytest.mark.parametrize("method", _methods())
def test_batch_size_invariance(method):
    model = make(BnNet)
    x, y = inputs(4, seed=3)
    kw = _kwargs(method, x)
    full = ek.explain(model, x, y, method=method, **kw)
    one_by_one = ek.explain(model, x, y, method=method, batch_size=1, **kw)
    torch.testing.assert_close(one_by_one, full, rtol=1e-7, atol=1e-9)
    # a sample alone gives the same map as inside the batch
    solo_kw = dict(kw)
    if "masks" in solo_kw:
        solo_kw["masks"] = solo_kw["masks"][2:3]
    alone = ek.explain(model, x[2:3], y[2:3], method=method, **solo_kw)
    torch.testing.assert_close(alone, full[2:3], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("method", _methods())
def test_numpy_in_numpy_out(method):
    model = make(BnNet)
    x, y = inputs(2)
    kw = _kwargs(method, x)
    if "masks" in kw:
        kw["masks"] = kw["masks"].numpy()
    a = ek.explain(model, x.numpy(), y.numpy(), method=method, **kw)
    assert type(a).__module__ == "numpy"
    b = ek.explain(model, x, y, method=method, **_kwargs(method, x))
    assert a.shape == tuple(b.shape)
    torch.testing.assert_close(torch.from_numpy(a), b)


@pytest.mark.parametrize(
    "method", [p for p in _methods() if explainer_info(p.values[0]).uses_target])
def test_custom_score_callable_is_honoured(method):
    """Every method that explains the target explains a custom score callable exactly as it
    explains the class that callable selects: a callable picking class (y + 1) mod C, called with
    the labels y, gives the map of the labels (y + 1) mod C under the default class target (a
    method that ignored the callable would explain y instead)."""
    model = make(BnNet)
    x, y = inputs(3, seed=4)
    kw = _kwargs(method, x)
    if method == "Lime":  # captum's default Lasso zeroes every weight of this tiny model
        from captum._utils.models.linear_model import SkLearnLinearRegression

        kw["constructor_kwargs"] = {"interpretable_model": SkLearnLinearRegression()}
    shifted = (y + 1) % N_CLASSES

    def next_class(outputs, labels):
        return outputs.gather(1, ((labels + 1) % N_CLASSES).reshape(-1, 1)).squeeze(1)

    custom = ek.explain(model, x, y, method=method, target=next_class, **kw)
    by_label = ek.explain(model, x, shifted, method=method, **kw)
    torch.testing.assert_close(custom, by_label, rtol=1e-7, atol=1e-9)
    assert not torch.allclose(custom, ek.explain(model, x, y, method=method, **kw))


@pytest.mark.parametrize("method", _methods())
def test_info_is_consistent(method):
    info = explainer_info(method)
    assert info.name == method
    assert not info.batch_dependent
    if info.model_free:
        assert not info.requires_gradients and not info.requires_module


@pytest.mark.parametrize("method", _methods())
def test_constant_input_gives_finite_maps(method):
    """Degenerate inputs (all zeros: constant activations, zero gradients, zero-span masks,
    a rank-0 SVD) give finite maps, never NaN."""
    model = make(BnNet)
    x = torch.zeros((2, 3, 8, 8), dtype=torch.float64)
    y = torch.tensor([0, 2])
    a = ek.explain(model, x, y, method=method, **_kwargs(method, x))
    assert bool(torch.isfinite(a).all())


def test_nan_input_is_rejected():
    model = make(BnNet)
    x, y = inputs(2)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        ek.explain(model, x, y, method="GradCAM")
