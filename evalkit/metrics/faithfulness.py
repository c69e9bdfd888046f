"""Faithfulness: does removing what the explanation calls important change the prediction?

Curve metrics return one scalar per sample, the area under the curve computed with the
trapezoid rule over the *fraction* of features perturbed in [0, 1] (so scores compare across
step sizes), and expose the curves in ``metric.curves_`` (N, T) with the x-axis in
``metric.curve_x_``. The first point of every curve is the unperturbed input.
"""

from __future__ import annotations

from typing import Any

import torch

from .._validation import check_scalar
from ..perturb import make_grouping, make_imputer
from ._removal import RemovalPlan, removal_curve, trapezoid_auc
from .base import Metric, MetricBatch

__all__ = ["PixelFlipping"]


class PixelFlipping(Metric):
    """Pixel-Flipping (Bach et al. 2015): remove features in order of decreasing relevance.

    Features (groups of ``grouping``, pixels by default) are replaced by ``perturb_baseline``
    cumulatively, ``features_in_step`` at a time, most relevant first; the curve records the
    target score after each step, starting with the unperturbed input. The score is the area
    under that curve over the fraction of features removed. A faithful explanation makes the
    score fall fast: **lower is better**.

    Deviations from Quantus (``quantus.PixelFlipping``):

    * a feature is a pixel (all channels together) by default; ``grouping="channel_values"``
      counts channel values as Quantus does;
    * the curve starts at the unperturbed input and the area is taken over the fraction of
      features removed (Quantus integrates with unit spacing over its T steps without the
      unperturbed point); the raw curve is in ``curves_``;
    * the return value is always the per-sample area; ``return_auc_per_sample=False`` is not
      supported (read ``curves_`` instead).

    Parameters
    ----------
    features_in_step:
        Groups removed per step.
    perturb_baseline:
        Replacement: a name (``"black"``, ``"mean"``, ``"uniform"``, ...), a number, an array,
        or an :class:`~evalkit.perturb.Imputer`. See :mod:`evalkit.perturb.baselines`.
    grouping:
        ``"pixels"`` (default), ``"channel_values"``, a patch size, ``"slic"``, a label
        array, or a :class:`~evalkit.perturb.FeatureGrouping`.

    Reference: S. Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions
    by Layer-Wise Relevance Propagation", PLoS ONE 10(7), 2015.
    """

    family = "faithfulness"
    higher_is_better = False
    default_softmax = True
    paper = (
        "Bach et al., On Pixel-Wise Explanations for Non-Linear Classifier Decisions by "
        "Layer-Wise Relevance Propagation, PLoS ONE 2015"
    )

    def __init__(
        self,
        features_in_step: int = 1,
        perturb_baseline: Any = "black",
        *,
        grouping: Any = "pixels",
        **kwargs: Any,
    ) -> None:
        if kwargs.pop("return_auc_per_sample", True) is False:
            raise ValueError(
                "evalkit's PixelFlipping always returns the per-sample area under the curve; "
                "the curves themselves are in `metric.curves_` after the call."
            )
        super().__init__(**kwargs)
        self.features_in_step = check_scalar("features_in_step", features_in_step, int,
                                             min_val=1)
        self.perturb_baseline = perturb_baseline
        self.grouping = grouping
        self._plan = RemovalPlan(make_grouping(grouping), make_imputer(perturb_baseline))

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        curve, fractions, _ = removal_curve(
            batch, self._plan, features_in_step=self.features_in_step, desc=type(self).__name__
        )
        batch.set_curves(curve, fractions[0] if _shared_axis(fractions) else fractions)
        return trapezoid_auc(curve, fractions)


def _shared_axis(fractions: torch.Tensor) -> bool:
    return bool((fractions == fractions[:1]).all())
