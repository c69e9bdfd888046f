"""Object detection specs (issue 20): the metrics on W7, torchvision's Faster R-CNN with random
weights in :class:`evalkit.models.DetectionModel`, scored by
:class:`evalkit.models.BoxScoreTarget` (each image's top detection as the reference).

No Quantus counterpart: Quantus has no detection target. The floors are the bare model work:

* removal metrics (PixelFlipping, Insertion, ROAD): the forward rows our run issued, at the
  runner's batch size (ROAD's imputation is CPU work the floor does not cover: its seconds are
  in the note);
* the gradient rows (GradCAM, MaxSensitivity's re-explanations, EfficientMPRT's explanation of
  the randomised detector): a forward pass of the rows with autograd and the gradient of the
  box score with respect to the inputs, at the explainer's batch (all rows at once);
* RelevanceMassAccuracy is model-free (no floor).

torchvision is the ``vision`` extra, imported by the workload only: where it does not import,
the specs are still listed (so the page renders the same everywhere) but run on no workload,
so asking for W7 runs nothing instead of failing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import numpy as np
import torch

import evalkit
from evalkit.metrics import (
    ROAD,
    EfficientMPRT,
    Insertion,
    MaxSensitivity,
    PixelFlipping,
    RelevanceMassAccuracy,
)
from evalkit.models import BoxScoreTarget, ModelWrapper
from evalkit.perturb.imputation import NoisyLinearImputer

from ..harness import Case, Context, PartTimer, TimedExplainer
from ..workloads import Workload
from . import Spec

FAMILY = "tasks_detection"
#: pixels removed per step: 16 steps of the 25,600 pixels of a 160 x 160 image
_STEP = 1600
_ROAD_PCT = [20, 40, 60, 80]
_K = 4  # MaxSensitivity's perturbed copies per image
_GRADCAM = {"method": "GradCAM"}


def _wrapper(w: Workload) -> ModelWrapper:
    """The workload's detector with the box-score target (the references are ``w.y``)."""
    return evalkit.wrap_model(w.model, target=BoxScoreTarget())


def _gradient_floor(model: ModelWrapper, x: torch.Tensor,
                    y: torch.Tensor) -> Callable[[], None]:
    """Forward of ``x`` with autograd and the gradient of the box score w.r.t. the inputs:
    the bare model work of a gradient explanation of these rows."""
    def run() -> None:
        with model.evaluation():
            xg = x.detach().requires_grad_(True)
            torch.autograd.grad(model.target(model.model(xg), y).sum(), xg)

    return run


def _pixel_flipping(w: Workload, ctx: Context) -> Case:
    model = _wrapper(w)
    metric = PixelFlipping(features_in_step=_STEP)

    def ours() -> np.ndarray:
        return metric(model, w.x, w.y, w.a)

    return Case(ours=ours, floor="forward",
                settings=f"GradCAM a, {_STEP} pixels per step (16 steps), black baseline")


def _insertion(w: Workload, ctx: Context) -> Case:
    model = _wrapper(w)
    metric = Insertion(features_in_step=_STEP)

    def ours() -> np.ndarray:
        return metric(model, w.x, w.y, w.a)

    return Case(ours=ours, floor="forward",
                settings=f"GradCAM a, {_STEP} pixels per step, blurred start")


def _road(w: Workload, ctx: Context) -> Case:
    model = _wrapper(w)
    timer = PartTimer("imputation", ctx.device)
    imputer = NoisyLinearImputer(0.01)
    imputer.fill = timer.wrap(imputer.fill)
    metric = ROAD(percentages=_ROAD_PCT, imputer=imputer, seed=0)

    def ours() -> np.ndarray:
        return metric(model, w.x, w.y, w.a)

    return Case(ours=ours, floor="forward", part=timer,
                settings=f"GradCAM a, combined (LeRF - MoRF)/2, accuracy (reference still "
                         f"detected), percentages {_ROAD_PCT}, noise 0.01",
                note="the floor leaves out the noisy linear imputation (its seconds: part)")


def _gradcam(w: Workload, ctx: Context) -> Case:
    model = _wrapper(w)

    def ours() -> np.ndarray:
        return evalkit.explain(model, w.x, w.y, method="GradCAM").cpu().numpy()

    return Case(ours=ours, floor=lambda rows, calls: _gradient_floor(model, w.x, w.y),
                settings="end of the backbone (detector.backbone.body.16), box score",
                note="floor: forward + input gradient of the box score (GradCAM stops at the "
                     "layer)")


def _max_sensitivity(w: Workload, ctx: Context) -> Case:
    model = _wrapper(w)
    metric = MaxSensitivity(nr_samples=_K, seed=0)
    te = TimedExplainer(evalkit.explain, device=ctx.device)
    # the same uniform draws as the metric's: the floor explains rows of the same shape
    stacked = w.x.repeat_interleave(_K, 0)
    y_stacked = w.y.repeat_interleave(_K, 0)

    def ours() -> np.ndarray:
        return metric(model, w.x, w.y, w.a, explain_fn=te, explain_kwargs=_GRADCAM)

    return Case(ours=ours, explainer=te,
                floor=lambda rows, calls: _gradient_floor(model, stacked, y_stacked),
                settings=f"GradCAM, nr_samples={_K}, keep",
                note="floor: forward + input gradient of the N*K perturbed inputs")


def _efficient_mprt(w: Workload, ctx: Context) -> Case:
    model = _wrapper(w)
    metric = EfficientMPRT(disable_warnings=True)
    te = TimedExplainer(evalkit.explain, device=ctx.device)

    def ours() -> np.ndarray:
        return metric(model, w.x, w.y, w.a, explain_fn=te, explain_kwargs=_GRADCAM)

    return Case(ours=ours, explainer=te,
                floor=lambda rows, calls: _gradient_floor(model, w.x, w.y),
                settings="GradCAM, the fully randomised detector (skip_layers)",
                note="floor: forward + input gradient of the N inputs (one explanation); "
                     "copying and re-initialising the detector is not in it")


def _relevance_mass(w: Workload, ctx: Context) -> Case:
    metric = RelevanceMassAccuracy()

    def ours() -> np.ndarray:
        return metric(None, w.x, w.y, w.a, s=w.s)

    return Case(ours=ours, floor=None, settings="GradCAM a, the reference box as the mask")


def _vision_available() -> bool:
    try:
        importlib.import_module("torchvision")
    except Exception:  # ImportError, or a torchvision built for another torch
        return False
    return True


#: W7 where torchvision imports, else no workload (nothing runs, nothing fails)
_WORKLOADS = ("W7",) if _vision_available() else ()

SPECS = [
    Spec(f"{name}[detection]", FAMILY, build, workloads=_WORKLOADS, metric=name)
    for name, build in [
        ("GradCAM", _gradcam),
        ("PixelFlipping", _pixel_flipping),
        ("Insertion", _insertion),
        ("ROAD", _road),
        ("MaxSensitivity", _max_sensitivity),
        ("EfficientMPRT", _efficient_mprt),
        ("RelevanceMassAccuracy", _relevance_mass),
    ]
]
