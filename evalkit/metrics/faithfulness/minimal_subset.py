"""Minimal Subset Deletion and Insertion (Gevaert et al. 2024): the smallest share of the
top-ranked features whose removal changes the prediction, or whose insertion restores it."""

from __future__ import annotations

from typing import Any

import torch

from ..._validation import check_option, check_scalar
from ...perturb import make_grouping, make_imputer
from .._removal import order_groups, steps_from_features_in_step, window_scores
from .._ties import RanksFeatures
from ..base import MetricBatch
from ._common import set_curves
from ._views import prediction_view
from .rationales import removal_modalities

#: what a sample whose prediction never changes (MSD) gets
NEVER_FLIPPED = ("one", "nan")
#: the NaN reason of ``never_flipped="nan"``
NO_FLIP = "removing every feature did not change the prediction"


class _MinimalSubset(RanksFeatures):
    """The shared computation of MSD and MSI (see :class:`MinimalSubsetDeletion`)."""

    family = "faithfulness"
    higher_is_better = False
    modalities = ("image", "series", "tabular", "tokens")
    paper = ("Gevaert, Rousseau, Becker, Valkenborg, De Bie & Saeys, Evaluating Feature "
             "Attribution Methods in the Image Domain, Machine Learning 2024")
    _mode = "deletion"

    def __init__(self, features_in_step: int | None = None, n_steps: int = 100,
                 perturb_baseline: Any = "black", *, never_flipped: str = "one",
                 grouping: Any = "pixels", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.features_in_step = check_scalar("features_in_step", features_in_step, int,
                                             min_val=1, allow_none=True)
        self.n_steps = check_scalar("n_steps", n_steps, int, min_val=1)
        self.perturb_baseline = perturb_baseline
        self.never_flipped = check_option("never_flipped", never_flipped, NEVER_FLIPPED)
        self.grouping = grouping
        self._grouping = make_grouping(grouping)
        self._imputer = make_imputer(perturb_baseline)

    def _derived_metadata(self) -> dict[str, Any]:
        return {"modalities": removal_modalities(self._imputer)}

    def _random_sources(self) -> dict[str, Any]:
        return {"baseline": self._imputer}

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        view, _ = prediction_view(batch)
        ordering = order_groups(batch, self._grouping, "morf")
        g = ordering.n_groups.to(batch.device)
        fis = self.features_in_step
        if fis is None:
            fis = max(1, -(-int(g.max()) // self.n_steps))
        steps = steps_from_features_in_step(g, fis).to(batch.device)  # (N, T), 0 ... G
        full = g.unsqueeze(1).expand_as(steps)
        if self._mode == "deletion":  # the first k groups replaced
            lo, hi = torch.zeros_like(steps), steps
        else:  # the first k groups kept, the others replaced
            lo, hi = steps, full
        # one pass over the whole curve: 1.0 where the perturbed input keeps the prediction
        kept = window_scores(view, ordering, self._imputer, lo, hi, quantity="correct",
                             desc=type(self).__name__)
        fractions = steps.to(torch.float64) / g.to(torch.float64).unsqueeze(1)
        set_curves(batch, kept, fractions)
        hit = (kept == 0) if self._mode == "deletion" else (kept == 1)
        found = hit.any(1)
        first = hit.to(torch.int64).argmax(1)  # the first step that flips (restores)
        score = fractions.gather(1, first.unsqueeze(1)).squeeze(1)
        if self.never_flipped == "nan":
            batch.set_nan(~found, NO_FLIP)
        return torch.where(found, score, torch.ones_like(score))


class MinimalSubsetDeletion(_MinimalSubset):
    """Minimal Subset Deletion, MSD (Gevaert et al. 2024): the smallest fraction of the
    features, removed in order of decreasing attribution, that changes the model's prediction.
    **Lower is better**: a faithful explanation ranks first the few features the prediction
    rests on.

    The features (groups of ``grouping``, pixels by default) are replaced by
    ``perturb_baseline`` cumulatively, ``features_in_step`` at a time (None: ``ceil(G /
    n_steps)``), most relevant first; the score is k / G for the first step k at which the
    prediction (the target's ``predict``: the argmax for classifiers) differs from the
    prediction on the unperturbed input. The whole curve is computed in one batched pass and
    read off, so the result is exact up to the step size (``features_in_step=1`` gives the
    exact minimal prefix). A sample whose prediction survives the removal of every feature
    scores 1.0 (``never_flipped="one"``, default; the number of features, as in the paper's
    AttriBench code) or NaN with a reason (``never_flipped="nan"``); ``curves_`` holds 1.0
    where the prediction is kept, over the fraction removed.

    The paper counts features; here the count is divided by G so that scores compare across
    image sizes and groupings (multiply by G for the count). Ties in the attribution are
    removed in feature order; constant maps are NaN (see :mod:`evalkit.metrics._ties`).

    Reference: A. Gevaert, A.-J. Rousseau, T. Becker, D. Valkenborg, T. De Bie, Y. Saeys,
    "Evaluating Feature Attribution Methods in the Image Domain", Machine Learning, 2024
    (arXiv:2202.12270).
    """

    _mode = "deletion"


class MinimalSubsetInsertion(_MinimalSubset):
    """Minimal Subset Insertion, MSI (Gevaert et al. 2024): the smallest fraction of the
    features, inserted onto the baseline in order of decreasing attribution, that restores the
    model's prediction on the unperturbed input. **Lower is better**.

    Starting from the all-baseline input (``perturb_baseline``, default ``"black"``), the most
    relevant features are put back ``features_in_step`` at a time; the score is k / G for the
    first step k at which the prediction equals the one on the unperturbed input (0 when the
    baseline alone already gets it: no feature is needed). Inserting every feature gives back
    the input, so every sample gets a score (at most 1.0; ``never_flipped`` never applies).
    The curve is computed in one batched pass; ``curves_`` holds 1.0 where the prediction is
    the original one, over the fraction inserted. Other parameters as in
    :class:`MinimalSubsetDeletion`.

    Reference: A. Gevaert, A.-J. Rousseau, T. Becker, D. Valkenborg, T. De Bie, Y. Saeys,
    "Evaluating Feature Attribution Methods in the Image Domain", Machine Learning, 2024
    (arXiv:2202.12270).
    """

    _mode = "insertion"
