"""Views of a :class:`~evalkit.metrics.MetricBatch` that score something else on the same
inputs: other labels (the model's own predictions, for metrics that ask whether a perturbation
keeps the prediction) or another wrapper (a log-odds target)."""

from __future__ import annotations

import copy
import dataclasses

import torch

from ...models.base import ModelWrapper
from ..base import MetricBatch


def batch_view(batch: MetricBatch, *, y: torch.Tensor | None = None,
               model: ModelWrapper | None = None) -> MetricBatch:
    """``batch`` with other labels ``y`` and/or another ``model`` wrapper.

    The view shares the inputs, attributions, modality, seed, NaN reasons (a sample flagged on
    the view is flagged on ``batch``) and diagnostics; it has its own memo (``extra``), so the
    unperturbed scores and the cache fingerprints computed for the batch's labels or wrapper
    are never reused for the view's (the forward cache keys rows by labels and wrapper, so
    rows are shared only where they are the same)."""
    changes: dict = {"extra": {}}
    if y is not None:
        changes["y"] = y
    if model is not None:
        runner = copy.copy(batch.runner)
        runner.model = model  # type: ignore[union-attr]
        changes["model"] = model
        changes["runner"] = runner
    return dataclasses.replace(batch, **changes)


def prediction_view(batch: MetricBatch) -> tuple[MetricBatch, torch.Tensor]:
    """A view whose labels are the model's predictions on the unperturbed inputs, so that
    ``quantity="correct"`` reads 1 where a perturbed input keeps the original prediction; and
    those predictions (float64, NaN where the outputs are not finite: such samples are
    flagged)."""
    from .._removal import flag_nonfinite

    batch.require_model()
    target = batch.target
    pred = batch.runner.outputs(  # type: ignore[union-attr]
        batch.x, reduce=lambda out, index: target.predict_or_nan(out),
        desc="predictions").to(batch.device)
    flag_nonfinite(batch, pred)
    return batch_view(batch, y=torch.nan_to_num(pred, nan=0.0)), pred
