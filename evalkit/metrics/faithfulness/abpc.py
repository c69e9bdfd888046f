"""ABPC (Schulz et al. 2020): the area between the LeRF and MoRF perturbation curves, over the
AOPC kernel."""

from __future__ import annotations

from typing import Any

import torch

from ..._validation import check_scalar
from ...perturb import make_grouping, make_imputer
from .._removal import RemovalPlan
from .._ties import RanksFeatures
from ..base import MetricBatch
from ._common import set_curves
from .aopc import aopc_drops, mean_over_steps
from .rationales import FollowsRemovalPlan


def morf_lerf_drops(batch: MetricBatch, plan: RemovalPlan, features_in_step: int,
                    n_steps: int | None, desc: str
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The MoRF and LeRF drop curves of :func:`~evalkit.metrics.faithfulness.aopc.aopc_drops`
    on the same plan (grouping and replacement), with the same steps: ``(morf, lerf,
    fractions, valid)``, each (N, T). Inside a :func:`~evalkit.forward_cache` the two curves
    share their rows with AOPC(order="morf") and AOPC(order="lerf")."""
    morf, fractions, valid = aopc_drops(batch, plan, "morf", features_in_step, n_steps,
                                        desc=f"{desc} (MoRF)")
    lerf, _, _ = aopc_drops(batch, plan, "lerf", features_in_step, n_steps,
                            desc=f"{desc} (LeRF)")
    return morf, lerf, fractions, valid


class _TwoCurves(FollowsRemovalPlan, RanksFeatures):
    """Shared parameters of the metrics over the MoRF and LeRF curves of one plan."""

    family = "faithfulness"
    higher_is_better = True
    default_softmax = True
    modalities = ("image", "series", "tabular", "tokens")

    def __init__(self, features_in_step: int = 1, n_steps: int | None = None,
                 perturb_baseline: Any = "black", *, grouping: Any = "pixels",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.features_in_step = check_scalar("features_in_step", features_in_step, int,
                                             min_val=1)
        self.n_steps = check_scalar("n_steps", n_steps, int, min_val=1, allow_none=True)
        self.perturb_baseline = perturb_baseline
        self.grouping = grouping
        self._plan = RemovalPlan(make_grouping(grouping), make_imputer(perturb_baseline))

    def _curves(self, batch: MetricBatch):
        return morf_lerf_drops(batch, self._plan, self.features_in_step, self.n_steps,
                               type(self).__name__)


class ABPC(_TwoCurves):
    """Area between the perturbation curves, ABPC (Schulz et al. 2020), over the features of
    any modality (pixels, time steps, columns, tokens).

    Features (groups of ``grouping``) are removed ``features_in_step`` at a time, cumulatively,
    once most relevant first (MoRF, x_M^(k)) and once least relevant first (LeRF, x_L^(k)), for
    the same L steps as :class:`AOPC`. The score is the mean gap between the two curves,

        ABPC(x) = 1 / (L + 1) * sum_{k=0..L} f(x_L^(k)) - f(x_M^(k))
                = AOPC_MoRF(x) - AOPC_LeRF(x),

    large when removing the top features destroys the prediction while removing the bottom
    ones keeps it: **higher is better**. Reporting the two orders together cancels the part of
    the drop that any removal causes (the out-of-distribution effect the paper points out).
    ``curves_`` holds the gaps f(x_L^(k)) - f(x_M^(k)) over the fraction of features removed.
    Ties are removed in feature order in both curves; a constant map is NaN with a reason
    (``constant_maps``). The paper's dataset ABPC is the mean of the scores.

    Parameters
    ----------
    features_in_step:
        Features removed per step.
    n_steps:
        Steps L (None: every feature removed at the end).
    perturb_baseline:
        Replacement (a name, number, array, ``"delete"`` for token deletion, or an
        :class:`~evalkit.perturb.Imputer`).
    grouping:
        The features (default ``"pixels"``: pixels, time steps, columns or tokens).

    Reference: K. Schulz, L. Sixt, F. Tombari, T. Landgraf, "Restricting the Flow: Information
    Bottlenecks for Attribution", ICLR 2020.
    """

    paper = ("Schulz et al., Restricting the Flow: Information Bottlenecks for Attribution, "
             "ICLR 2020")

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        morf, lerf, fractions, valid = self._curves(batch)
        gap = morf - lerf  # f(x_L) - f(x_M): the drops' difference
        set_curves(batch, gap, fractions)
        return mean_over_steps(gap, valid)
