"""Constant attribution maps in the metrics that rank features.

A metric whose score depends on the *order* of the features by attribution (removal and
insertion curves, ROAD, block correlations, rank-based localisation) has nothing to rank in a
map whose features are all tied, a constant or all-zero map: any number it gives is decided by
how the ties are broken, not by the explanation (PixelFlipping scored 0.706 and
RelevanceRankAccuracy 0.072 for all-zero maps). Such metrics subclass :class:`RanksFeatures`,
whose ``constant_maps`` option says what a constant map gets:

* ``"nan"`` (default): NaN with the reason :data:`CONSTANT_MAP`, recorded in ``nan_reasons_``
  like every undefined score (set-level metrics leave the sample out of the set);
* ``"score"``: the number the tie-breaking rule gives (evalkit before this option, Quantus).

A map is constant when its per-feature values (:meth:`evalkit.modality.Modality.feature_maps`:
pixels with the channels summed, time steps, columns, tokens), after ``normalise`` and ``abs``,
are all equal. The check runs once, in :meth:`Metric._prepare`, through the hook
:meth:`Metric._flag_attributions`.

**Partially constant maps** (some features tied, e.g. a map that is zero outside an object) are
scored, with one documented rule per kind of metric: removal, insertion and block metrics order
tied groups by their group id, a stable order (raster order for pixels and patches;
:func:`evalkit.perturb.rank_groups`), so the result is deterministic and independent of the
seed; rank-based localisation metrics (RelevanceRankAccuracy, TopKIntersection, PointingGame,
AUC) give the exact expectation over a uniformly random order of the tied values (AUC: average
ranks).

A new metric that ranks features subclasses :class:`RanksFeatures` (before its family's base
class) and, when only some settings rank (``RegionPerturbation(order="random")`` does not),
overrides :meth:`RanksFeatures._ranks_attributions`.
"""

from __future__ import annotations

from typing import Any

import torch

from .._validation import check_option
from .base import Metric, MetricBatch

__all__ = ["CONSTANT_MAP", "CONSTANT_MAP_POLICIES", "RanksFeatures", "constant_maps"]

#: what a constant map may get: NaN with a reason, or the tie-broken score
CONSTANT_MAP_POLICIES = ("nan", "score")

#: the NaN reason of a constant map
CONSTANT_MAP = ("the attribution is constant (all features tied, e.g. an all-zero map): the "
                "feature order the score depends on is undefined (constant_maps='score' "
                "scores it in tie-breaking order)")


def constant_maps(batch: MetricBatch, a: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) bool: the samples whose per-feature attribution values are all equal."""
    a = batch.a if a is None else a
    if a is None:
        raise ValueError(f"{type(batch.metric).__name__} needs attributions.")
    features, _ = batch.modality.feature_maps(a)
    if features.device.type == "cpu":
        # torch's CPU aminmax along a dimension is several times slower than amin and amax
        # apart (8 against 1.1 ms for 64 maps of 224 x 224 float32, one thread)
        return features.amax(1) == features.amin(1)
    lo, hi = torch.aminmax(features, dim=1)  # one pass for both
    return hi == lo


class RanksFeatures(Metric):
    """Base of the metrics whose score depends on the order of features by attribution; see
    the module docstring.

    Parameters
    ----------
    constant_maps:
        ``"nan"`` (default): a constant or all-zero map is NaN with a reason; ``"score"``: it is
        scored with the ties in their documented order (group-id order for removal curves,
        the expectation over random orders for localisation ranks).
    """

    def __init__(self, *, constant_maps: str = "nan", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.constant_maps = check_option("constant_maps", constant_maps,
                                          CONSTANT_MAP_POLICIES)

    def _ranks_attributions(self) -> bool:
        """Whether this instance's score depends on the order of the features by
        attribution (False for settings that order at random or by index)."""
        return True

    def _flag_attributions(self, batch: MetricBatch) -> None:
        super()._flag_attributions(batch)
        if self.constant_maps == "nan" and self._ranks_attributions():
            batch.set_nan(constant_maps(batch), CONSTANT_MAP)
