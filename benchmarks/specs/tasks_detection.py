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

import evalkit
from evalkit.models import BoxScoreTarget, ModelWrapper

from ..workloads import Workload
from ._tasks import TaskRows, task_specs, vision_workloads

FAMILY = "tasks_detection"
#: pixels removed per step: 16 steps of the 25,600 pixels of a 160 x 160 image
_STEP = 1600


def _wrapper(w: Workload) -> ModelWrapper:
    """The workload's detector with the box-score target (the references are ``w.y``)."""
    return evalkit.wrap_model(w.model, target=BoxScoreTarget())


#: W7 where torchvision imports, else no workload (nothing runs, nothing fails)
_WORKLOADS = vision_workloads("W7")

SPECS = task_specs(TaskRows(
    family=FAMILY, suffix="detection", workloads=_WORKLOADS, wrap=_wrapper, step=_STEP,
    gradcam={"method": "GradCAM"},
    removal_floor=lambda model, w, ctx: "forward", removal_note="", removal_suffix="",
    road_kwargs={}, road_score_text="accuracy (reference still detected)",
    gradcam_settings="end of the backbone (detector.backbone.body.16), box score",
    score_name="box score", model_noun="detector", mprt_timed=True,
    mask_text="the reference box",
))
