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

import torch

import evalkit
from evalkit.models import ModelWrapper, SegmentationTarget

from ..workloads import Workload
from ._tasks import TaskRows, task_specs

FAMILY = "tasks_segmentation"
#: pixels removed per step: 16 steps of the 16,384 pixels of a 128 x 128 image
_STEP = 1024
_SCORE_FLOOR = "floor: forward + softmax + region sum of the rows scored"


def _wrapper(w: Workload) -> ModelWrapper:
    """The workload's net with the predicted-region target (the classes are ``w.y``)."""
    return evalkit.wrap_model(w.model, target=SegmentationTarget(region="predicted"))


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


SPECS = task_specs(TaskRows(
    family=FAMILY, suffix="segmentation", workloads=("W8",), wrap=_wrapper, step=_STEP,
    gradcam={"method": "GradCAM", "layer": "backbone.3"},
    removal_floor=lambda model, w, ctx: (
        lambda rows, calls: _score_floor(model, w, rows, ctx.batch_size)),
    removal_note=_SCORE_FLOOR, removal_suffix=", softmax",
    road_kwargs={"score": "confidence"},
    road_score_text="confidence (the region's summed class probability)",
    gradcam_settings="backbone.3, the predicted region's summed logit",
    score_name="region score", model_noun="net",
    # EfficientMPRT calls evalkit.explain itself (no timed wrapper): a user's explain function
    # re-explaining the randomised copy gets the bare module, without the segmentation
    # target, on this branch
    mprt_timed=False,
    mask_text="the scored region",
))
