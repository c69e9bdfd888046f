"""Attribution methods through captum (and GradientShap natively, with per-sample randomness).

Every method explains the wrapper's *target score*: captum gets a forward function that returns
``target(outputs, y)`` (one scalar per input), with ``y`` passed as an additional forward
argument so captum expands it together with the inputs (over Integrated Gradients steps,
DeepLift baselines, occlusion windows...). Gradients are taken with respect to the inputs or a
layer only (captum uses ``torch.autograd.grad``), so the ``.grad`` of the model's parameters is
never touched.

Keyword arguments pass through to captum's ``attribute``; arguments for the captum
*constructor* (e.g. ``multiply_by_inputs``) go in ``constructor_kwargs``. Layers are given by
name (``"features.conv3"``, or a Python path such as ``"layer4[-1]"``, never ``eval``'d) or as a
module, in ``layer``. Quantus' names (``baseline``, ``gc_layer``, ``interpolate_mode``,
``xai_lib_kwargs``) are accepted (see ``ExplainerInfo.quantus_names``).

Methods that hook the model's modules (DeepLift, DeepLiftShap, GuidedBackprop, Deconvolution,
GuidedGradCam, LRP) run inside a guard that restores every module's hooks and attributes
afterwards; captum's DeepLift and LRP need each ``nn.ReLU`` module to be used once in the forward
pass (not reused, not functional ``F.relu``) to be correct.

Stochastic methods never touch the global RNGs' state as seen by the caller: GradientShap is
implemented here with per-sample streams from ``evalkit._rng``; Lime and KernelShap (whose
captum implementations draw from torch's and NumPy's global generators) run one sample at a
time with those generators seeded from the sample's key and restored afterwards. Each sample's
attribution therefore depends only on ``seed`` and the sample, not on the batch.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _rng
from .._hook_handles import HookHandles
from ..models import ModelWrapper
from ..perturb import Patches, make_grouping
from ._hooks import (
    default_cam_layer,
    interpolate_to,
    module_guard,
    require_gradients,
    require_module,
    resolve_layer,
)
from .core import FLOAT_MODALITIES, GRID_MODALITIES, explain_rows, register_explainer

__all__: list[str] = []

# the methods with a token-ids implementation get "tokens" from evalkit.explain.tokens
_GRAD = {"requires_gradients": True, "quantus_names": True, "modalities": FLOAT_MODALITIES}
_MODULE = {"requires_gradients": True, "requires_module": True, "quantus_names": True,
           "modalities": FLOAT_MODALITIES}
_GRID_MODULE = {**_MODULE, "modalities": GRID_MODALITIES}
_BLACK_BOX = {"quantus_names": True, "modalities": FLOAT_MODALITIES}
_BASELINES = ("baselines",)


# ============================================================================ plumbing
def _scalar_forward(model: ModelWrapper):
    def forward(inputs: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return model.select(model(inputs), y)

    return forward


class _ScoreModule(nn.Module):
    """``x, y -> target(model(x), y)`` as an ``nn.Module`` whose only child is the user's model
    (captum's DeepLift, LRP and guided backprop need a module to hook). Building it registers
    the user's model as a child of *this* module; the user's model is not changed."""

    def __init__(self, wrapper: ModelWrapper) -> None:
        super().__init__()
        self.net = require_module(wrapper, "This method")
        object.__setattr__(self, "_wrapper", wrapper)

    def forward(self, inputs: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self._wrapper.select(self._wrapper(inputs), y)


def _args(y: torch.Tensor | None) -> tuple[Any, ...] | None:
    return None if y is None else (y,)


def _grad_input(x: torch.Tensor) -> torch.Tensor:
    """A gradient-requiring alias of ``x`` (the caller's tensor keeps requires_grad=False)."""
    return x.detach().requires_grad_(True)


def _constructor_kwargs(kw: dict[str, Any]) -> dict[str, Any]:
    return dict(kw.pop("constructor_kwargs", None) or {})


def _integration_rule(kw: dict[str, Any]) -> None:
    """captum's integration rule is called ``method``, which is ``explain``'s own argument:
    it is passed as ``integration_method`` (e.g. ``"riemann_trapezoid"``)."""
    if "integration_method" in kw:
        kw["method"] = kw.pop("integration_method")


def _no_delta(kw: dict[str, Any], method: str) -> None:
    if kw.pop("return_convergence_delta", False):
        raise TypeError(
            f"explain() returns attributions only; call captum.attr.{method} directly for "
            "return_convergence_delta=True."
        )


def _layer(model: ModelWrapper, kw: dict[str, Any], method: str) -> nn.Module:
    module = require_module(model, method)
    spec = kw.pop("layer", None)
    if spec is None:
        try:
            spec = default_cam_layer(module)
        except ValueError as exc:
            raise ValueError(f"{method}: {exc}") from None
    return resolve_layer(module, spec)[1]


def _forward_rows(x: torch.Tensor, model: ModelWrapper) -> int:
    """Perturbations per sample per forward call for the black-box methods: the forward
    runner's rows per call (a forward-only budget) shared by the chunk's samples."""
    return max(1, model.resolve_batch_size(x) // max(1, x.shape[0]))


def _step_rows(x: torch.Tensor, model: ModelWrapper, minimum: int) -> int:
    """captum's ``internal_batch_size`` for path methods (IG, conductance...): as many
    (sample, step) rows per forward/backward pass as the explain memory budget allows, so a
    small chunk does not pay one pass per step; at least ``minimum``."""
    return max(minimum, explain_rows(x, model))


def _feature_mask(x: torch.Tensor, kw: dict[str, Any]) -> None:
    """``patch_size=`` or ``grouping=`` (any evalkit grouping spec) -> captum ``feature_mask``."""
    patch = kw.pop("patch_size", None)
    grouping = kw.pop("grouping", None)
    if patch is None and grouping is None:
        return
    if "feature_mask" in kw:
        raise TypeError("Pass either `feature_mask` or `patch_size`/`grouping`, not both.")
    spec = Patches(patch) if patch is not None else make_grouping(grouping)
    kw["feature_mask"] = spec(x).labels


def _upsampled_layer_map(
    attr: torch.Tensor, x: torch.Tensor, *, raw: bool, upsample_mode: str | None, layer_reduce: str
) -> torch.Tensor:
    if raw:
        return attr
    if x.ndim == 2:  # table columns have no layout a layer's units could be resized to
        if attr.shape == x.shape:
            return attr
        raise ValueError(
            f"The layer attribution has shape {tuple(attr.shape)}, which cannot be mapped onto "
            f"the {x.shape[1]} columns of the inputs {tuple(x.shape)}; pass raw=True for the "
            "layer's own attribution, or use an input-space method."
        )
    if attr.ndim != x.ndim:
        raise ValueError(
            f"The layer attribution has shape {tuple(attr.shape)}, which cannot be resized to "
            f"the inputs {tuple(x.shape)}; choose a spatial layer or pass raw=True."
        )
    if attr.shape[1] != 1:
        if layer_reduce not in ("sum", "mean"):
            raise ValueError(f"`layer_reduce` must be 'sum' or 'mean'; got {layer_reduce!r}.")
        attr = attr.sum(1, keepdim=True) if layer_reduce == "sum" else attr.mean(1, keepdim=True)
    return interpolate_to(attr, x.shape[2:], upsample_mode)


@contextlib.contextmanager
def _seeded_global_rngs(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's (CPU and the model's CUDA device), NumPy's and Python's global generators
    for a third-party call, and restore all of them afterwards."""
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global state, restored
    py_state = random.getstate()
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for idx in cuda:
            torch.cuda.default_generators[idx].manual_seed(seed)
        np.random.seed(seed % 2**32)  # noqa: NPY002 - captum draws from it
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)  # noqa: NPY002
            random.setstate(py_state)


# ============================================================================ gradients
def _input_gradient(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None,
                    kw: dict[str, Any], *, abs: bool) -> torch.Tensor:
    """The input gradient of the per-sample target scores, as captum's ``Saliency`` computes
    it, with one backward seeded by ones instead of captum's ``autograd.grad`` over the
    ``unbind`` of the scores: captum's form builds one gradient seed per sample, a fixed cost
    that outweighs a small model's backward (2,000 rows of a 30-64-64-3 MLP: about 11 ms vs
    1 ms on one CPU thread). Every seed is 1.0 in both forms, so the gradients are the same bits.
    Other keyword arguments (captum's ``target``, ...) keep captum's own path."""
    if kw:
        from captum.attr import Saliency

        return Saliency(_scalar_forward(model)).attribute(
            _grad_input(x), abs=abs, additional_forward_args=_args(y), **kw
        )
    inputs = _grad_input(x)
    with torch.enable_grad():
        scores = _scalar_forward(model)(inputs, y)  # (N,): the target checks the shape
        (grad,) = torch.autograd.grad(scores, inputs, grad_outputs=torch.ones_like(scores))
    return grad.abs() if abs else grad


@register_explainer("Gradient", **_GRAD)
def gradient(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """Signed input gradient of the target score (Simonyan et al. 2014, without abs); Quantus'
    default method."""
    require_gradients(model, "Gradient")
    kw.pop("abs", None)
    return _input_gradient(model, x, y, kw, abs=False)


@register_explainer("Saliency", **_GRAD)
def saliency(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """Absolute input gradient (Simonyan, Vedaldi & Zisserman 2014)."""
    require_gradients(model, "Saliency")
    take_abs = kw.pop("abs", True)
    return _input_gradient(model, x, y, kw, abs=take_abs)


@register_explainer("InputXGradient", **_GRAD)
def input_x_gradient(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """Input times gradient (Shrikumar et al. 2016)."""
    require_gradients(model, "InputXGradient")
    if kw:
        from captum.attr import InputXGradient

        return InputXGradient(_scalar_forward(model)).attribute(
            _grad_input(x), additional_forward_args=_args(y), **kw
        )
    return x.detach() * _input_gradient(model, x, y, kw, abs=False)


@register_explainer("IntegratedGradients", per_sample=_BASELINES, **_GRAD)
def integrated_gradients(
    model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any
):
    """Integrated Gradients (Sundararajan et al. 2017).

    ``n_steps`` (default 50), ``baselines`` (default zeros; a scalar, one (1, ...) baseline or
    one per sample), ``integration_method`` (captum's ``method``, default ``"gausslegendre"``)
    and ``internal_batch_size`` (default: as many sample-steps per pass as the explain memory
    budget allows, at least the chunk) pass through to captum. Quantus hard-codes
    ``n_steps=10, method="riemann_trapezoid"``; pass ``n_steps=10,
    integration_method="riemann_trapezoid"`` to reproduce it. Note that captum's trapezoid
    weights sum to ``(n_steps - 1) / n_steps``, not 1, so that rule loses completeness by that
    factor (10 % with Quantus' settings); the default Gauss-Legendre rule does not.
    """
    from captum.attr import IntegratedGradients

    require_gradients(model, "IntegratedGradients")
    _no_delta(kw, "IntegratedGradients")
    _integration_rule(kw)
    ctor = _constructor_kwargs(kw)
    kw.setdefault("internal_batch_size", _step_rows(x, model, x.shape[0]))
    return IntegratedGradients(_scalar_forward(model), **ctor).attribute(
        _grad_input(x), additional_forward_args=_args(y), **kw
    )


@register_explainer("GradientShap", stochastic=True, **_GRAD)
def gradient_shap(
    model: ModelWrapper,
    x: torch.Tensor,
    y: torch.Tensor | None,
    *,
    baselines: Any = None,
    n_samples: int = 5,
    stdevs: float = 0.0,
    seed: int = 0,
    multiply_by_inputs: bool = True,
) -> torch.Tensor:
    """GradientSHAP (Lundberg & Lee 2017; captum's estimator), implemented natively.

    For each sample, ``n_samples`` draws of a baseline ``b`` from the distribution
    ``baselines`` (B, ...) (default: a single zero baseline), a point ``alpha ~ U(0, 1)`` and
    Gaussian input noise ``eps ~ N(0, stdevs**2)``; with ``x' = x + eps``::

        phi(x) = mean_j (x'_j - b_j) * grad f(b_j + alpha_j (x'_j - b_j))

    (without the ``(x' - b)`` factor when ``multiply_by_inputs=False``). This is
    ``captum.attr.GradientShap``'s estimator, but captum draws from NumPy's and torch's global
    RNGs and its draws depend on the batch; here every sample has its own stream from ``seed``
    and its values, so the result is reproducible and independent of the batch.
    """
    require_gradients(model, "GradientShap")
    if int(n_samples) < 1:
        raise ValueError(f"`n_samples` must be >= 1; got {n_samples}.")
    n_samples = int(n_samples)
    n = x.shape[0]
    if baselines is None:
        dist = torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=x.device)
    elif isinstance(baselines, int | float):
        dist = torch.full((1, *x.shape[1:]), float(baselines), dtype=x.dtype, device=x.device)
    else:
        dist = torch.as_tensor(baselines, dtype=x.dtype, device=x.device)
        if dist.ndim == x.ndim - 1:
            dist = dist.unsqueeze(0)
        if tuple(dist.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(
                f"`baselines` must have shape (B, {', '.join(map(str, x.shape[1:]))}); got "
                f"{tuple(dist.shape)}."
            )
    keys = _rng.sample_keys(x, seed)
    alpha = _rng.uniform(keys, (n_samples,), dtype=x.dtype, stream=1)
    pick = (_rng.uniform(keys, (n_samples,), dtype=torch.float64, stream=2) * dist.shape[0])
    pick = pick.long().clamp_(max=dist.shape[0] - 1)
    inputs = x.unsqueeze(1).expand(n, n_samples, *x.shape[1:])
    if stdevs:
        inputs = inputs + _rng.normal(keys, (n_samples, *x.shape[1:]), std=float(stdevs),
                                      dtype=x.dtype, stream=3)
    base = dist[pick]  # (n, n_samples, ...)
    view = (n, n_samples) + (1,) * (x.ndim - 1)
    points = (base + alpha.reshape(view) * (inputs - base)).reshape(n * n_samples, *x.shape[1:])
    ys = None if y is None else y.repeat_interleave(n_samples, 0)
    # the n * n_samples points in passes of the explain budget's rows: one pass over all of
    # them costs up to twice as much per row on a CPU (activations fall out of the caches)
    rows = explain_rows(x, model)
    grads = []
    for start in range(0, points.shape[0], rows):
        part = points[start : start + rows].detach().requires_grad_(True)
        score = model.select(model(part), None if ys is None else ys[start : start + rows])
        grads.append(torch.autograd.grad(score.sum(), part)[0])
    grad = torch.cat(grads).reshape(n, n_samples, *x.shape[1:])
    contrib = grad * (inputs - base) if multiply_by_inputs else grad
    return contrib.mean(1)


# ============================================================================ hooked backprop
#: captum's rules that keep per-module state: one call per forward pass or wrong attributions
_STATEFUL_RULES = ("DeepLift", "DeepLiftShap", "LRP")


def _check_single_use(model: ModelWrapper, x: torch.Tensor, method: str) -> None:
    """Raise when a leaf module runs more than once per forward pass (one sample shows it):
    captum's DeepLift and LRP store one input/output per module, so a reused ``nn.ReLU``
    gets the state of its last call (DeepLift then fails with a RuntimeError deep inside
    captum, LRP silently returns wrong relevances)."""
    root = require_module(model, method)
    counts: dict[str, int] = {}

    def hook_for(name: str):
        def hook(_module: nn.Module, _inputs: Any) -> None:
            counts[name] = counts.get(name, 0) + 1

        return hook

    with HookHandles() as hooks:
        for name, m in root.named_modules():
            if name and not any(True for _ in m.children()):
                hooks.forward_pre(m, hook_for(name))
        with torch.no_grad():
            model(x[:1])
    reused = sorted(name for name, c in counts.items() if c > 1)
    if reused:
        raise ValueError(
            f"{method}: the modules {reused} run more than once per forward pass; captum's "
            f"{method} keeps one state per module, so it cannot attribute through them. Give "
            "each use its own module (e.g. one nn.ReLU per activation), or use a gradient "
            "method (IntegratedGradients, GuidedBackprop)."
        )


#: leaf modules captum's LRP has no default rule for, given the epsilon rule: the 1-D and 3-D
#: counterparts of the 2-D layers it has (the same linear rule), and reshapes, for which the
#: epsilon rule passes relevance through unchanged (grad / out * in, with out = in reshaped)
_LRP_EPSILON = (nn.Conv1d, nn.Conv3d, nn.AvgPool1d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                nn.AdaptiveAvgPool3d, nn.BatchNorm1d, nn.BatchNorm3d, nn.Flatten, nn.Unflatten,
                nn.Identity)


def _lrp_default_rules(root: nn.Module) -> None:
    """Give the 1-D/3-D layers without a ``rule`` captum's epsilon rule (inside a
    :func:`module_guard`, which removes the attribute afterwards)."""
    from captum.attr._utils.lrp_rules import EpsilonRule

    for m in root.modules():
        if type(m) in _LRP_EPSILON and not hasattr(m, "rule"):
            m.rule = EpsilonRule()


def _modified_backprop(cls_name: str, model: ModelWrapper, x, y, kw) -> torch.Tensor:
    import captum.attr as ca

    require_gradients(model, cls_name)
    if cls_name in _STATEFUL_RULES:
        _check_single_use(model, x, cls_name)
    score_module = _ScoreModule(model)
    with module_guard(score_module.net), _quiet_hook_warning():
        if cls_name == "LRP":
            _lrp_default_rules(score_module.net)
        return getattr(ca, cls_name)(score_module, **_constructor_kwargs(kw)).attribute(
            _grad_input(x), additional_forward_args=_args(y), **kw
        )


@register_explainer("DeepLift", per_sample=_BASELINES, **_MODULE)
def deep_lift(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """DeepLIFT with the Rescale rule (Shrikumar et al. 2017), ``baselines`` default zeros.

    Needs every module to run once per forward pass (a reused ``nn.ReLU`` raises a
    ValueError); functional ``F.relu`` calls get plain gradients."""
    _no_delta(kw, "DeepLift")
    return _modified_backprop("DeepLift", model, x, y, kw)


@register_explainer("DeepLiftShap", **_MODULE)
def deep_lift_shap(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """DeepLIFT averaged over a distribution of ``baselines`` (B >= 2, ...) (Lundberg & Lee
    2017). Default: two zero baselines, which equals DeepLift with a zero baseline."""
    _no_delta(kw, "DeepLiftShap")
    if kw.get("baselines") is None:
        kw["baselines"] = torch.zeros((2, *x.shape[1:]), dtype=x.dtype, device=x.device)
    return _modified_backprop("DeepLiftShap", model, x, y, kw)


@register_explainer("GuidedBackprop", **_MODULE)
def guided_backprop(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """Guided backpropagation (Springenberg et al. 2015): ReLU modules pass only positive
    gradients where their input was positive (``nn.ReLU`` modules only; ``F.relu`` calls are
    not modified)."""
    return _modified_backprop("GuidedBackprop", model, x, y, kw)


@register_explainer("Deconvolution", **_MODULE)
def deconvolution(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """Deconvolution (Zeiler & Fergus 2014): ReLU modules pass ReLU of the gradient."""
    return _modified_backprop("Deconvolution", model, x, y, kw)


@register_explainer("LRP", **_MODULE)
def lrp(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """Layer-wise relevance propagation (Bach et al. 2015) with captum's rules (epsilon rule by
    default; a ``rule`` attribute set on a module is honoured and kept).

    captum supports models built from Conv2d, Linear, pooling, BatchNorm2d, ReLU, Dropout and
    Tanh modules (functional ops such as ``torch.flatten`` are fine); other leaf modules raise
    captum's TypeError."""
    _no_delta(kw, "LRP")
    return _modified_backprop("LRP", model, x, y, kw)


@contextlib.contextmanager
def _quiet_hook_warning() -> Iterator[None]:
    with warnings.catch_warnings():
        # captum announces (each call) that it hooks the ReLUs and removes the hooks afterwards
        warnings.filterwarnings("ignore", message=r"\s*Setting (forward, )?backward hooks")
        yield


# ============================================================================ perturbation
@register_explainer("Occlusion", per_sample=_BASELINES, **_BLACK_BOX)
def occlusion(
    model: ModelWrapper,
    x: torch.Tensor,
    y: torch.Tensor | None,
    *,
    sliding_window_shapes: tuple[int, ...] | None = None,
    strides: Any = None,
    window: tuple[int, ...] | None = None,
    **kw: Any,
):
    """Occlusion (Zeiler & Fergus 2014): the score change when a sliding window is replaced by
    ``baselines`` (default 0). Black-box: works with any model.

    Defaults (captum has none): ``sliding_window_shapes`` covers all channels and 4 x 4
    positions (``(C, 4, 4)`` for images; ``window`` is Quantus' name), ``strides`` half the
    window along the spatial axes, ``perturbations_per_eval`` from the memory budget.
    """
    from captum.attr import Occlusion

    shapes = sliding_window_shapes if sliding_window_shapes is not None else window
    if shapes is None:
        if x.ndim == 2:
            shapes = (min(4, x.shape[1]),)
        else:
            shapes = (x.shape[1], *(min(4, s) for s in x.shape[2:]))
    shapes = tuple(int(s) for s in shapes)
    if strides is None:
        strides = (shapes[0], *(max(1, s // 2) for s in shapes[1:])) if x.ndim > 2 else \
            (max(1, shapes[0] // 2),)
    kw.setdefault("perturbations_per_eval", _forward_rows(x, model))
    with torch.no_grad():
        return Occlusion(_scalar_forward(model)).attribute(
            x.detach(), sliding_window_shapes=shapes, strides=strides,
            additional_forward_args=_args(y), **kw,
        )


@register_explainer("FeatureAblation", per_sample=("baselines", "feature_mask"), **_BLACK_BOX)
def feature_ablation(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """Feature ablation: the score change when a feature (group) is replaced by ``baselines``
    (default 0). Black-box. Without ``feature_mask`` every input element is its own feature
    (captum's default); ``patch_size=p`` groups square patches shared by all channels, and
    ``grouping=`` takes any evalkit grouping (e.g. ``evalkit.perturb.Superpixels()``)."""
    from captum.attr import FeatureAblation

    _feature_mask(x, kw)
    kw.setdefault("perturbations_per_eval", _forward_rows(x, model))
    with torch.no_grad():
        return FeatureAblation(_scalar_forward(model)).attribute(
            x.detach(), additional_forward_args=_args(y), **kw
        )


def _surrogate(cls_name: str, model: ModelWrapper, x, y, kw) -> torch.Tensor:
    import captum.attr as ca

    seed = kw.pop("seed", 0)
    ctor = _constructor_kwargs(kw)
    _feature_mask(x, kw)
    mask = kw.pop("feature_mask", None)
    baselines = kw.pop("baselines", None)
    kw.setdefault("perturbations_per_eval", min(_forward_rows(x[:1], model),
                                                kw.get("n_samples", 50)))
    explainer = getattr(ca, cls_name)(_scalar_forward(model), **ctor)
    keys = _rng.sample_keys(x, seed)
    seeds = (_rng.combine(keys, 7) & ((1 << 63) - 1)).tolist()
    out = []
    for i in range(x.shape[0]):
        m_i = mask if mask is None or mask.shape[0] == 1 else mask[i : i + 1]
        b_i = baselines
        if isinstance(baselines, torch.Tensor) and baselines.ndim == x.ndim and \
                baselines.shape[0] == x.shape[0]:
            b_i = baselines[i : i + 1]
        with _seeded_global_rngs(int(seeds[i]), x.device), torch.no_grad():
            out.append(explainer.attribute(
                x[i : i + 1].detach(), baselines=b_i, feature_mask=m_i,
                additional_forward_args=None if y is None else (y[i : i + 1],), **kw,
            ))
    return torch.cat(out, 0)


@register_explainer("Lime", per_sample=("baselines", "feature_mask"), stochastic=True,
                    **_BLACK_BOX)
def lime(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """LIME (Ribeiro et al. 2016) with captum's defaults (``n_samples=25``, a Lasso surrogate
    from scikit-learn). Black-box. Use ``feature_mask``, ``patch_size`` or ``grouping`` to
    define interpretable features (by default every element is one, which is rarely useful
    for images). Seeded per sample by ``seed`` (default 0)."""
    return _surrogate("Lime", model, x, y, kw)


@register_explainer("KernelShap", per_sample=("baselines", "feature_mask"), stochastic=True,
                    **_BLACK_BOX)
def kernel_shap(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """Kernel SHAP (Lundberg & Lee 2017) through captum (``n_samples=25`` by default, a linear
    surrogate from scikit-learn). Black-box; features as for :func:`lime`; seeded per sample."""
    return _surrogate("KernelShap", model, x, y, kw)


# ============================================================================ layer methods
def _layer_attribution(
    cls_name: str, model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None,
    kw: dict[str, Any], *, target_free: bool = False,
) -> torch.Tensor:
    import captum.attr as ca

    require_gradients(model, cls_name)
    raw = bool(kw.pop("raw", False))
    upsample_mode = kw.pop("upsample_mode", None)
    layer_reduce = kw.pop("layer_reduce", "sum")
    _no_delta(kw, cls_name)
    _integration_rule(kw)
    layer = _layer(model, kw, cls_name)
    ctor = _constructor_kwargs(kw)
    explainer = getattr(ca, cls_name)(_scalar_forward(model), layer, **ctor)
    if cls_name == "LayerConductance":  # finite differences: at least two steps per pass
        kw.setdefault("internal_batch_size", _step_rows(x, model, 2 * x.shape[0]))
    elif cls_name in ("InternalInfluence", "LayerIntegratedGradients"):
        kw.setdefault("internal_batch_size", _step_rows(x, model, x.shape[0]))
    attr = explainer.attribute(_grad_input(x), additional_forward_args=_args(y), **kw)
    if isinstance(attr, tuple | list):
        attr = attr[0]
    return _upsampled_layer_map(attr.detach(), x, raw=raw, upsample_mode=upsample_mode,
                                layer_reduce=layer_reduce)


_LAYER_DOC = """

    Options shared by the layer methods: ``layer`` (name or module; default: the model's
    ``cam_layer`` or its last convolution), ``raw=True`` returns captum's layer-shaped
    attribution (N, C_layer, h, w) untouched; otherwise the layer channels are reduced by
    ``layer_reduce`` (``"sum"``, or ``"mean"``) and the map is resized to the input with
    ``F.interpolate`` (``upsample_mode``, default bilinear): (N, 1, H, W).
"""


@register_explainer("LayerGradCam", aliases=("GradCam",), **_GRID_MODULE)
def layer_grad_cam(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """Grad-CAM through captum (``relu_attributions=False`` by default, as captum), upsampled
    to the input. evalkit's native ``"GradCAM"`` is the same map with more options."""
    return _layer_attribution("LayerGradCam", model, x, y, kw)


@register_explainer("GuidedGradCam", **_GRID_MODULE)
def guided_grad_cam(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """Guided Grad-CAM (Selvaraju et al. 2017): guided backpropagation times the upsampled
    (ReLU'd) Grad-CAM of ``layer``; (N, C, H, W)."""
    import captum.attr as ca

    require_gradients(model, "GuidedGradCam")
    layer = _layer(model, kw, "GuidedGradCam")
    if "upsample_mode" in kw:  # captum calls it interpolate_mode (default "nearest")
        kw["interpolate_mode"] = kw.pop("upsample_mode")
    score_module = _ScoreModule(model)
    with module_guard(score_module.net), _quiet_hook_warning():
        return ca.GuidedGradCam(score_module, layer, **_constructor_kwargs(kw)).attribute(
            _grad_input(x), additional_forward_args=_args(y), **kw
        )


@register_explainer("LayerConductance", per_sample=_BASELINES, **_MODULE)
def layer_conductance(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """Layer conductance (Dhamdhere et al. 2018): integrated gradients flowing through each
    unit of ``layer`` (``n_steps=50``, ``baselines`` default zeros)."""
    return _layer_attribution("LayerConductance", model, x, y, kw)


@register_explainer("LayerActivation", uses_target=False, **_MODULE)
def layer_activation(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """The activations of ``layer`` (class-agnostic)."""
    import captum.attr as ca

    raw = bool(kw.pop("raw", False))
    upsample_mode = kw.pop("upsample_mode", None)
    layer_reduce = kw.pop("layer_reduce", "sum")
    layer = _layer(model, kw, "LayerActivation")
    with torch.no_grad():  # the raw outputs as forward function: no target, no labels needed
        attr = ca.LayerActivation(model, layer).attribute(x.detach(), **kw)
    return _upsampled_layer_map(attr, x, raw=raw, upsample_mode=upsample_mode,
                                layer_reduce=layer_reduce)


@register_explainer("InternalInfluence", per_sample=_BASELINES, **_MODULE)
def internal_influence(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """Internal influence (Leino et al. 2018): gradients at ``layer`` integrated along the path
    from ``baselines`` to the input."""
    return _layer_attribution("InternalInfluence", model, x, y, kw)


@register_explainer("LayerIntegratedGradients", per_sample=_BASELINES, **_MODULE)
def layer_integrated_gradients(
    model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any
):
    """Integrated gradients at ``layer`` (captum's LayerIntegratedGradients): the path runs
    from the layer's activation for ``baselines`` (default zeros) to its activation for ``x``
    (``n_steps=50``). On token ids, the layer is the embedding layer and the baseline the mask
    token's embedding (:mod:`evalkit.explain.tokens`)."""
    return _layer_attribution("LayerIntegratedGradients", model, x, y, kw)


@register_explainer("LayerGradientXActivation", **_MODULE)
def layer_gradient_x_activation(
    model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any
):
    """Gradient times activation at ``layer``."""
    return _layer_attribution("LayerGradientXActivation", model, x, y, kw)


for _fn in (layer_grad_cam, layer_conductance, layer_activation, internal_influence,
            layer_gradient_x_activation, layer_integrated_gradients):
    _fn.__doc__ = (_fn.__doc__ or "") + _LAYER_DOC
