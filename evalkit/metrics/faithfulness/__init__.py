"""Faithfulness: does removing what the explanation calls important change the prediction?

Conventions shared by every metric in this module:

* **Features** are groups of input elements (:mod:`evalkit.perturb.groupings`): pixels by
  default (all channels of a pixel together, so a 1-channel attribution on an RGB image
  perturbs whole pixels and a C-channel attribution is summed over channels per pixel).
  ``grouping="channel_values"`` counts every channel value as a feature, as Quantus does.
* **Curve metrics** return one scalar per sample, the area under the curve computed with the
  trapezoid rule over the *fraction* of features perturbed in [0, 1] (so scores compare across
  step sizes), and expose the curves in ``metric.curves_`` (N, T) with the x-axis in
  ``metric.curve_x_`` ((T,) or (N, T) when the number of features differs between samples).
  The first point of a removal curve is the unperturbed input; the first point of an insertion
  curve is the empty canvas.
* **Correlation metrics** return NaN with a reason (``metric.nan_reasons_``) when the
  perturbations change nothing or the attribution sums are constant, never a crash. Their
  ``similarity_func`` is ``"pearson"``, ``"spearman"`` or a callable ``f(a, b) -> float`` on
  two 1-D arrays (Quantus' ``similarity_func`` functions work), called once per sample.
* **Ties** in the attribution are ranked in group-id order (raster order for pixels and
  patches), a stable order: a partially tied map gets a deterministic score that does not
  depend on the seed. A map whose features are *all* tied (constant or all zero) is NaN with a
  reason in every metric that ranks features (curves, ROAD, block correlations,
  ``SensitivityN(subsets="morf")``; ``constant_maps="score"`` keeps the tie-broken score, see
  :mod:`evalkit.metrics._ties`); correlation and confidence metrics give NaN with a reason.
* **Non-finite attributions or model outputs**: a sample whose attribution has NaN or Inf, or
  for one of whose inputs (perturbed or not) the model returns a non-finite output, is NaN
  with a reason, and set-level metrics leave it out of the set. (A NaN output change is never
  read as "no change", nor a NaN comparison as "not monotonic".)
* **Forward sharing**: inside :func:`evalkit.forward_cache`, metrics that walk the same
  perturbed inputs (same model, input, group order and baseline or imputer) reuse each other's
  forward passes, and every metric reuses the unperturbed scores. A user's imputer is shared
  only by the same instance (see :meth:`~evalkit.perturb.Imputer.cache_token`).
* **Randomness** comes only from ``seed`` through per-sample keys (:mod:`evalkit._rng`): a
  sample gets the same draws in any batch, at any batch size, in any order.
* **Set-level** metrics (``Sufficiency``; ``SensitivityN(subsets="morf")``) are defined over a
  set of samples: they use the whole batch passed to the call, never a chunk of it.

The metrics live in submodules by kind (``curves``, ``correlation``, ``infidelity``, ``road``,
``confidence``, ``sufficiency``, ``timeseries``; ``aopc`` and ``rationales`` for AOPC and the
ERASER and soft rationale metrics, which run on token ids too) over the shared kernels of
:mod:`evalkit.metrics._removal`; import them from here.
"""

from __future__ import annotations

from ..base import publish_as_package
from .aopc import AOPC
from .confidence import AverageDrop, AverageGain, AverageIncrease
from .correlation import (
    FaithfulnessCorrelation,
    FaithfulnessEstimate,
    MonotonicityCorrelation,
    SensitivityN,
)
from .curves import (
    IROF,
    Deletion,
    Insertion,
    Monotonicity,
    PixelFlipping,
    RegionPerturbation,
    Selectivity,
)
from .infidelity import Infidelity
from .infidelity import infidelity_noise as infidelity_noise  # public helper, not in __all__
from .prediction_gap import PGI, PGU
from .rationales import (
    ERASERComprehensiveness,
    ERASERSufficiency,
    SoftComprehensiveness,
    SoftSufficiency,
)
from .road import ROAD
from .sufficiency import Sufficiency
from .timeseries import AUCSE

__all__ = [
    "AOPC",
    "IROF",
    "PGI",
    "PGU",
    "ROAD",
    "AverageDrop",
    "AverageGain",
    "AverageIncrease",
    "Deletion",
    "ERASERComprehensiveness",
    "ERASERSufficiency",
    "FaithfulnessCorrelation",
    "FaithfulnessEstimate",
    "Infidelity",
    "Insertion",
    "Monotonicity",
    "MonotonicityCorrelation",
    "PixelFlipping",
    "RegionPerturbation",
    "Selectivity",
    "SensitivityN",
    "SoftComprehensiveness",
    "SoftSufficiency",
    "Sufficiency",
]
__all__ += ["AUCSE"]

# issue 23: Log-odds, performance information curves, minimal subsets
from .information import AIC, SIC  # noqa: E402
from .logodds import LogOdds  # noqa: E402
from .minimal_subset import MinimalSubsetDeletion, MinimalSubsetInsertion  # noqa: E402

__all__ += ["AIC", "SIC", "LogOdds", "MinimalSubsetDeletion", "MinimalSubsetInsertion"]

# issue 23: metrics published since Quantus (ABPC, NAOPC, SRG) and the R-OMS helpers
from .abpc import ABPC  # noqa: E402
from .naopc import NAOPC  # noqa: E402
from .srg import SRG  # noqa: E402
from .srg import r_oms as r_oms  # noqa: E402  - public helper, not in __all__
from .srg import rank_occlusion_strategies as rank_occlusion_strategies  # noqa: E402

__all__ += ["ABPC", "NAOPC", "SRG"]

# issue 23: F-Fidelity (fine-tuning with random masking, FFid+ and FFid-)
from .ffidelity import FFidelity  # noqa: E402
from .ffidelity import fine_tune_with_random_masking as fine_tune_with_random_masking  # noqa: E402

__all__ += ["FFidelity"]


# stored configurations, pickles and reprs name the public path, as before the split into
# submodules (a store written before keeps its cell hashes)
publish_as_package(globals())
