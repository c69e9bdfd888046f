"""Explainer specs: ``evalkit.explain`` vs ``quantus.explain``; floor = bare forward+backward
(gradient methods) or bare forward (perturbation and gradient-free methods); none for the
model-free controls. Every registered method has a row (see the second half of the file)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import evalkit

from ..harness import Agreement, Case, Context, max_abs_diff
from ..workloads import Workload
from . import Spec


def _saliency(w: Workload, ctx: Context) -> Case:
    def ours() -> np.ndarray:
        return evalkit.explain(w.model, w.x, w.y, method="Saliency",
                               reduce_channels="sum").cpu().numpy()

    quantus_fn = None
    if ctx.quantus is not None:
        x, y = w.np("x"), w.np("y")

        def quantus_fn() -> np.ndarray:
            return np.asarray(ctx.quantus.explain(w.model, x, y, method="Saliency",
                                                  device=ctx.quantus_device))

    return Case(ours=ours, quantus=quantus_fn,
                agreement=lambda o, t: max_abs_diff(o, t),
                floor="forward_backward",
                settings="|grad| of the predicted logit, summed over channels")


_IG_STEPS = 10


def _integrated_gradients(w: Workload, ctx: Context) -> Case:
    def ours() -> np.ndarray:
        return evalkit.explain(w.model, w.x, w.y, method="IntegratedGradients",
                               n_steps=_IG_STEPS, integration_method="riemann_trapezoid",
                               reduce_channels="sum").cpu().numpy()

    quantus_fn = None
    if ctx.quantus is not None:
        x, y = w.np("x"), w.np("y")

        def quantus_fn() -> np.ndarray:
            return np.asarray(ctx.quantus.explain(w.model, x, y, method="IntegratedGradients",
                                                  device=ctx.quantus_device))

    def agreement(o: np.ndarray, t: np.ndarray) -> Agreement:
        ag = max_abs_diff(o, t)
        ag.text = f"max |a| {float(np.abs(t).max()):.2g}"
        return ag

    return Case(ours=ours, quantus=quantus_fn, agreement=agreement,
                floor="forward_backward",
                settings=f"n_steps={_IG_STEPS}, riemann_trapezoid (Quantus' hard-coded rule), "
                         "zero baseline, summed over channels")


SPECS = [
    Spec("Saliency", "explainers", _saliency),
    Spec("IntegratedGradients", "explainers", _integrated_gradients),
]


# --------------------------------------------------------------------------- every method
# One spec per registered explanation method (issue 5). Ours: ``evalkit.explain``, summed over
# channels (Quantus' default ``reduce_axes=(1,)``); Quantus: ``quantus.explain`` with the same
# settings where it has the method. Expensive methods run on the first ``subset`` samples of the
# workload (the row's n says how many).

#: CAM / layer-method target layer per workload: the last conv block's ReLU (W1, 8 x 8 x 64) and
#: the last residual stage (W2, 7 x 7 x 512); Quantus gets the same module as a Python path
_LAYER = {"W1": "layer5.2", "W2": "layer4"}
_QUANTUS_LAYER = {"W1": "model.layer5[2]", "W2": "model.layer4"}


def _size(w: Workload) -> tuple[int, int]:
    return (int(w.x.shape[2]), int(w.x.shape[3]))


def _method_spec(
    name: str,
    *,
    ours_kw: Callable[[Workload], dict[str, Any]] | None = None,
    quantus_kw: Callable[[Workload], dict[str, Any] | None] | None = None,
    quantus_method: str | None = None,
    floor: str | None = "forward_backward",
    subset: dict[str, int] | None = None,
    workloads: tuple[str, ...] = ("W1", "W2"),
    settings: str = "",
    note: str = "",
    compare: bool = True,
    compare_text: str = "random draws differ; not compared",
    labels: bool = True,
    skip: tuple[tuple[str, str], ...] = (),
) -> Spec:
    """A spec timing ``evalkit.explain(method=name)`` (and ``quantus.explain`` when
    ``quantus_kw`` gives settings for this workload)."""

    def build(w: Workload, ctx: Context) -> Case:
        # ``w`` is already cut to ``subset`` samples by the harness (the row says so)
        x, y = w.x, w.y
        kw = ours_kw(w) if ours_kw is not None else {}

        def ours() -> np.ndarray:
            return evalkit.explain(w.model, x, y if labels else None, method=name,
                                   reduce_channels="sum", **kw).cpu().numpy()

        quantus_fn = None
        qkw = quantus_kw(w) if (quantus_kw is not None and ctx.quantus is not None) else None
        if qkw is not None:
            xn, yn = w.np("x"), w.np("y")

            def quantus_fn() -> np.ndarray:
                return np.asarray(ctx.quantus.explain(
                    w.model, xn, yn, method=quantus_method or name,
                    device=ctx.quantus_device, **qkw))

        def agreement(o: np.ndarray, t: np.ndarray) -> Agreement:
            if not compare:
                return Agreement(None, compare_text)
            t = np.asarray(t).reshape(o.shape) if np.size(t) == np.size(o) else t
            return max_abs_diff(o, t)

        return Case(ours=ours, quantus=quantus_fn, agreement=agreement, floor=floor,
                    settings=settings, note=note)

    return Spec(name, "explainers", build, workloads=workloads, skip=skip,
                subset=tuple((subset or {}).items()))


def _layer(w: Workload) -> dict[str, Any]:
    return {"layer": _LAYER[w.name]}


def _layer_nearest(w: Workload) -> dict[str, Any]:
    return {"layer": _LAYER[w.name], "upsample_mode": "nearest"}


#: Quantus resizes layer maps with captum's ``LayerAttribution.interpolate`` (nearest by default)
_NEAREST = "nearest-neighbour resizing to the input, as Quantus"


def _q_layer(w: Workload) -> dict[str, Any]:
    return {"gc_layer": _QUANTUS_LAYER[w.name], "interpolate": _size(w)}


def _cam(name: str, **extra: Any) -> Spec:
    return _method_spec(name, ours_kw=_layer, settings="layer " + "/".join(
        f"{k}: {v}" for k, v in _LAYER.items()) + "; ReLU, bilinear to input size",
        note="no Quantus equivalent (pytorch-grad-cam is not installed)", **extra)


_NO_Q = "Quantus has no such method"
_GRAD_FLOOR = "forward_backward"

SPECS += [
    # ---- gradients
    _method_spec("Gradient", quantus_kw=lambda w: {}, settings="signed input gradient"),
    _method_spec("InputXGradient", quantus_kw=lambda w: {}, settings="input x gradient"),
    _method_spec("GradientShap", ours_kw=lambda w: {"n_samples": 5},
                 quantus_kw=lambda w: {}, compare=False,
                 settings="n_samples=5, zero baseline, stdevs=0",
                 note="ours: native, per-sample seeded draws; Quantus: captum (global RNG)"),
    _method_spec("DeepLift", quantus_kw=lambda w: {}, settings="zero baseline"),
    _method_spec("DeepLiftShap", quantus_kw=lambda w: {}, subset={"W1": 32},
                 settings="zero baselines",
                 note="ours: 2 zero baselines (2 rows per input); Quantus: zeros_like(x), i.e. "
                      "N baselines, N x N rows; same attributions"),
    _method_spec("GuidedBackprop", quantus_kw=lambda w: None, settings="",
                 note=_NO_Q + " in quantus.explain's captum list"),
    _method_spec("Deconvolution", quantus_kw=lambda w: {}),
    _method_spec("LRP", quantus_kw=lambda w: {}, workloads=("W1",), settings="epsilon rule",
                 skip=(("W2", "captum's LRP has no rule for ResNet-18's residual additions"),)),
    # ---- perturbations (black-box)
    _method_spec("Occlusion", floor="forward", subset={"W1": 8, "W2": 2},
                 ours_kw=lambda w: ({"window": (3, 7, 7), "strides": 1} if w.name == "W1"
                                    else {"window": (3, 56, 56), "strides": (3, 28, 28)}),
                 quantus_kw=lambda w: {"window": (3, 7, 7)} if w.name == "W1" else None,
                 settings="W1: 3x7x7 window, stride 1 (Quantus' fixed stride); "
                          "W2: 3x56x56 window, stride 28",
                 note="W2: Quantus' stride 1 would need 28,561 windows per image"),
    _method_spec("FeatureAblation", floor="forward", subset={"W1": 2, "W2": 2},
                 ours_kw=lambda w: {} if w.name == "W1" else {"patch_size": 32},
                 quantus_kw=lambda w: {} if w.name == "W1" else None,
                 settings="W1: every element a feature (captum's default, as Quantus); "
                          "W2: 32 x 32 patches"),
    _method_spec("Lime", floor="forward", subset={"W1": 8, "W2": 2}, compare=False,
                 ours_kw=lambda w: {} if w.name == "W1" else {"patch_size": 32},
                 quantus_kw=lambda w: {} if w.name == "W1" else None,
                 settings="n_samples=25 (captum); W1: every element a feature, as Quantus; "
                          "W2: 32 x 32 patches"),
    _method_spec("KernelShap", floor="forward", subset={"W1": 8, "W2": 2}, compare=False,
                 ours_kw=lambda w: {} if w.name == "W1" else {"patch_size": 32},
                 quantus_kw=lambda w: {} if w.name == "W1" else None,
                 settings="n_samples=25 (captum); W1: every element a feature, as Quantus; "
                          "W2: 32 x 32 patches"),
    # ---- captum layer methods
    _method_spec("LayerGradCam", ours_kw=_layer_nearest, quantus_kw=_q_layer,
                 settings="signed; " + _NEAREST),
    _method_spec("GuidedGradCam", ours_kw=_layer,
                 quantus_kw=lambda w: {"gc_layer": _QUANTUS_LAYER[w.name]}),
    _method_spec("LayerConductance", ours_kw=lambda w: {**_layer(w), "n_steps": 10},
                 quantus_kw=None, settings="n_steps=10, layer channels summed, resized",
                 note="Quantus runs captum's default 50 steps (no n_steps passthrough); "
                      "not timed against it"),
    _method_spec("LayerActivation", ours_kw=_layer_nearest, quantus_kw=_q_layer, labels=False,
                 floor="forward", settings="layer channels summed; " + _NEAREST),
    _method_spec("InternalInfluence", ours_kw=lambda w: {**_layer(w), "n_steps": 10},
                 quantus_kw=None, settings="n_steps=10, layer channels summed, resized",
                 note="Quantus runs captum's default 50 steps; not timed against it"),
    _method_spec("LayerGradientXActivation", ours_kw=_layer_nearest, quantus_kw=_q_layer,
                 settings="layer channels summed; " + _NEAREST),
    # ---- the CAM family (native torch)
    _cam("GradCAM"),
    _cam("HiResCAM"),
    _cam("GradCAMElementWise"),
    _cam("GradCAMPlusPlus"),
    _cam("XGradCAM"),
    _cam("LayerCAM"),
    _cam("EigenCAM", floor="forward"),
    _cam("EigenGradCAM"),
    _cam("ScoreCAM", floor="forward", subset={"W1": 32, "W2": 1}),
    _cam("AblationCAM", floor="forward", subset={"W1": 32, "W2": 1}),
    _cam("RandomCAM", floor="forward"),
    _method_spec("FullGrad", settings="all conv/BN biases; bilinear to input size",
                 note="no Quantus equivalent"),
    # ---- controls (model-free: no floor)
    _method_spec("Random", floor=None, labels=False, quantus_kw=lambda w: {},
                 quantus_method="Control Var. Random Uniform", compare=False),
    _method_spec("Constant", floor=None, labels=False,
                 ours_kw=lambda w: {"constant_value": 0.5},
                 quantus_kw=lambda w: {"constant_value": 0.5},
                 quantus_method="Control Var. Constant"),
    _method_spec("Sobel", floor=None, labels=False, quantus_kw=lambda w: {},
                 quantus_method="Control Var. Sobel Filter", compare=False,
                 compare_text="different filters by design (see note)",
                 note="Quantus: scipy's N-d Sobel of each image (C x H x W) clipped to [0, 1], "
                      "channel mean; ours: 2-D Sobel magnitude of the grey image (different "
                      "maps)"),
    _method_spec("GroundTruth", floor=None, labels=False, ours_kw=lambda w: {"masks": w.s},
                 note="returns the masks; Quantus has no such control"),
    # ---- issue 19: integrated gradients at a layer (on token ids: at the embedding layer)
    _method_spec("LayerIntegratedGradients", ours_kw=lambda w: {**_layer(w), "n_steps": 10},
                 quantus_kw=None, settings="n_steps=10, layer channels summed, resized",
                 note=_NO_Q),
]
