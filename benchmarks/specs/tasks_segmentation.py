"""Semantic segmentation specs (issue 20): the metrics on W8, a plain-torch segmentation net
(conv backbone and FCN head, :class:`benchmarks.workloads.SegmentationNet`) scored by
``SegmentationTarget(region="predicted")``: each image's most frequent predicted class summed
over the pixels predicted as it.

No Quantus counterpart: Quantus has no segmentation target. The floors are the bare model work:

* removal metrics (PixelFlipping, Insertion, ROAD): the rows our run scored, at the runner's
  batch size, each a bare forward pass **and its score**: the softmax over classes (the
  metrics' default) and the target's sum over the predicted region. A segmentation net's
  outputs are (classes, H, W) per row, so scoring them is a pass over a tensor as large as a
  feature map, not the gather of one logit of a classifier: any implementation does it (on
  W8's small net it costs about a sixth of the forward pass). ROAD's imputation is CPU work
  the floor does not cover (its seconds are in the row's ``part``);
* the gradient rows (GradCAM, MaxSensitivity's re-explanations, EfficientMPRT's explanation of
  the randomised net): a forward pass of the rows with autograd and the gradient of the region
  score with respect to the inputs (all rows at once);
* RelevanceMassAccuracy is model-free (no floor): the workload's GradCAM maps against the
  scored regions.
"""

from __future__ import annotations

import math
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
from evalkit.models import ModelWrapper, SegmentationTarget
from evalkit.perturb.imputation import NoisyLinearImputer

from ..harness import Case, Context, PartTimer, TimedExplainer
from ..workloads import Workload
from . import Spec

FAMILY = "tasks_segmentation"
#: pixels removed per step: 16 steps of the 16,384 pixels of a 128 x 128 image
_STEP = 1024
_ROAD_PCT = [20, 40, 60, 80]
_K = 4  # MaxSensitivity's perturbed copies per image
_GRADCAM = {"method": "GradCAM", "layer": "backbone.3"}
_SCORE_FLOOR = "floor: forward + softmax + region sum of the rows scored"


def _wrapper(w: Workload) -> ModelWrapper:
    """The workload's net with the predicted-region target (the classes are ``w.y``)."""
    return evalkit.wrap_model(w.model, target=SegmentationTarget(region="predicted"))


def _gradient_floor(model: ModelWrapper, x: torch.Tensor,
                    y: torch.Tensor) -> Callable[[], None]:
    """Forward of ``x`` with autograd and the gradient of the region score w.r.t. the inputs:
    the bare model work of a gradient explanation of these rows."""
    def run() -> None:
        with model.evaluation():
            xg = x.detach().requires_grad_(True)
            torch.autograd.grad(model.target(model.model(xg), y).sum(), xg)

    return run


def _chunks(t: torch.Tensor, rows: int, batch_size: int) -> list[torch.Tensor]:
    """``rows`` rows of ``t`` (cycled) in chunks of ``batch_size``."""
    reps = math.ceil(rows / t.shape[0])
    full = t.repeat(reps, *([1] * (t.ndim - 1)))[:rows]
    return list(full.split(max(1, batch_size)))


def _score_floor(model: ModelWrapper, w: Workload, rows: int, batch_size: int,
                 softmax: bool = True) -> Callable[[], None] | None:
    """``rows`` bare forward rows of the workload's inputs in chunks of ``batch_size``, each
    chunk's outputs scored as the metric scores them (softmax over classes, then the target),
    under ``torch.inference_mode``."""
    if rows <= 0:
        return None
    xs, ys = _chunks(w.x, rows, batch_size), _chunks(w.y, rows, batch_size)
    net, target = model.model, model.target

    def run() -> None:
        with model.evaluation(), torch.inference_mode():
            for xc, yc in zip(xs, ys, strict=True):
                out = net(xc)
                target(torch.softmax(out, 1) if softmax else out, yc)

    return run


def _pixel_flipping(w: Workload, ctx: Context) -> Case:
    model = _wrapper(w)
    metric = PixelFlipping(features_in_step=_STEP)

    def ours() -> np.ndarray:
        return metric(model, w.x, w.y, w.a)

    return Case(ours=ours, floor=lambda rows, calls: _score_floor(model, w, rows,
                                                                  ctx.batch_size),
                settings=f"GradCAM a, {_STEP} pixels per step (16 steps), black baseline, "
                         "softmax", note=_SCORE_FLOOR)


def _insertion(w: Workload, ctx: Context) -> Case:
    model = _wrapper(w)
    metric = Insertion(features_in_step=_STEP)

    def ours() -> np.ndarray:
        return metric(model, w.x, w.y, w.a)

    return Case(ours=ours, floor=lambda rows, calls: _score_floor(model, w, rows,
                                                                  ctx.batch_size),
                settings=f"GradCAM a, {_STEP} pixels per step, blurred start, softmax",
                note=_SCORE_FLOOR)


def _road(w: Workload, ctx: Context) -> Case:
    model = _wrapper(w)
    timer = PartTimer("imputation", ctx.device)
    imputer = NoisyLinearImputer(0.01)
    imputer.fill = timer.wrap(imputer.fill)
    metric = ROAD(percentages=_ROAD_PCT, imputer=imputer, score="confidence", seed=0)

    def ours() -> np.ndarray:
        return metric(model, w.x, w.y, w.a)

    return Case(ours=ours, part=timer,
                floor=lambda rows, calls: _score_floor(model, w, rows, ctx.batch_size),
                settings=f"GradCAM a, combined (LeRF - MoRF)/2, confidence (the region's "
                         f"summed class probability), percentages {_ROAD_PCT}, noise 0.01",
                note=f"{_SCORE_FLOOR}; the floor leaves out the noisy linear imputation (its "
                     "seconds: part)")


def _gradcam(w: Workload, ctx: Context) -> Case:
    model = _wrapper(w)

    def ours() -> np.ndarray:
        return evalkit.explain(model, w.x, w.y, **_GRADCAM).cpu().numpy()

    return Case(ours=ours, floor=lambda rows, calls: _gradient_floor(model, w.x, w.y),
                settings="backbone.3, the predicted region's summed logit",
                note="floor: forward + input gradient of the region score (GradCAM stops at "
                     "the layer)")


def _max_sensitivity(w: Workload, ctx: Context) -> Case:
    model = _wrapper(w)
    metric = MaxSensitivity(nr_samples=_K, seed=0)
    te = TimedExplainer(evalkit.explain, device=ctx.device)
    stacked = w.x.repeat_interleave(_K, 0)  # rows of the same shape as the metric's draws
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

    # evalkit.explain itself (no timed wrapper): a user's explain function re-explaining the
    # randomised copy gets the bare module, without the segmentation target, on this branch
    def ours() -> np.ndarray:
        return metric(model, w.x, w.y, w.a, explain_kwargs=_GRADCAM)

    return Case(ours=ours,
                floor=lambda rows, calls: _gradient_floor(model, w.x, w.y),
                settings="GradCAM, the fully randomised net (skip_layers)",
                note="floor: forward + input gradient of the N inputs (one explanation); "
                     "copying and re-initialising the net is not in it")


def _relevance_mass(w: Workload, ctx: Context) -> Case:
    metric = RelevanceMassAccuracy()

    def ours() -> np.ndarray:
        return metric(None, w.x, w.y, w.a, s=w.s)

    return Case(ours=ours, floor=None, settings="GradCAM a, the scored region as the mask")


SPECS = [
    Spec(f"{name}[segmentation]", FAMILY, build, workloads=("W8",), metric=name)
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
