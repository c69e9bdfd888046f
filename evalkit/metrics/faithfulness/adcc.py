"""Composite CAM scores: Coherency, ADCC (Poppi et al. 2021) and ARCC (Domeniconi et al. 2026).

All three read the explanation as a CAM: the attribution min-max normalised to [0, 1] per
sample, ``e``. The masked input is ``b + e * (x - b)`` with b = ``perturb_baseline`` (default
0: ``x * e``, as in both papers and pytorch-grad-cam). The components:

* **Coherency**: the Pearson correlation between the explanation of x and the explanation of
  the masked input (re-explained with the metric's explain function), rescaled to [0, 1] as
  ``(rho + 1) / 2``; a CAM that keeps pointing at the same evidence once the rest is dimmed
  is coherent.
* **Complexity**: ``||e||_1 / size``, the mean of the normalised map (0: empty, 1: all ones).
* **Average Drop**: :class:`~evalkit.metrics.faithfulness.AverageDrop` (relative drop of the
  target confidence on the masked input).
* **ROAD**: :class:`~evalkit.metrics.faithfulness.ROAD` with ``order="combined"`` and
  ``score="confidence"`` (pytorch-grad-cam's ``ROADCombined``), in [-0.5, 0.5]; ARCC reads it
  as ``clip(2 * ROAD, 0, 1)``.

ADCC and ARCC are the harmonic means of three scores in [0, 1] (higher is better): a zero in
any of them gives 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..._validation import finite_rows
from ...perturb import make_imputer
from .._removal import baseline_values
from ..base import Metric, MetricBatch
from ..similarity import _pearson_rows
from .confidence import AverageDrop
from .road import ROAD

__all__ = ["ADCC", "ARCC", "Coherency", "harmonic_mean3"]

_POPPI = ("Poppi et al., Revisiting The Evaluation of Class Activation Mapping for "
          "Explainability: A Novel Metric and Experimental Analysis, CVPR Workshops 2021")
_DOMENICONI = ("Domeniconi et al., How to Evaluate and Refine your CAM, arXiv 2605.14641, "
               "2026")

_CONSTANT_MAP = ("the explanation is constant (e.g. all zero): it cannot be normalised to "
                 "[0, 1] and its correlation is undefined")
_CONSTANT_REEXPLAINED = ("the explanation of the masked input is constant: the correlation is "
                         "undefined")
_NONFINITE_REEXPLAINED = ("the explanation of the masked input is not finite (NaN or Inf; e.g. "
                          "the model's outputs on it are not finite)")


def harmonic_mean3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Element-wise harmonic mean ``3 / (1/a + 1/b + 1/c)`` of non-negative scores, written as
    ``3abc / (ab + bc + ca)`` so that a zero component gives 0 exactly (its limit) instead of
    a division by zero."""
    num = 3 * a * b * c
    den = a * b + b * c + c * a
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.zeros_like(den))


def _unit_maps(batch: MetricBatch) -> torch.Tensor:
    """The attributions min-max normalised to [0, 1] per sample (the CAM); constant maps are
    flagged NaN (their map is returned as zeros)."""
    a = batch.a
    if a is None:
        raise ValueError(f"{type(batch.metric).__name__} needs attributions.")
    flat = a.reshape(batch.n, -1)
    lo, hi = flat.amin(1), flat.amax(1)
    const = hi <= lo
    batch.set_nan(const, _CONSTANT_MAP)
    per_sample = batch.modality.per_sample
    span = torch.where(const, torch.ones_like(hi), hi - lo)
    return (a - per_sample(lo, a)) / per_sample(span, a)


def _complexity(batch: MetricBatch, e: torch.Tensor) -> torch.Tensor:
    """Mean of the [0, 1] map per sample: its L1 norm over its size."""
    return e.reshape(batch.n, -1).mean(1)


class _CamComposite(Metric):
    """Shared parameters and the Coherency kernel of the CAM composites."""

    family = "faithfulness"
    higher_is_better = True
    re_explains = True
    default_softmax = True
    default_normalise = False
    default_abs = False
    modalities = ("image", "series")

    def __init__(self, perturb_baseline: Any = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.perturb_baseline = perturb_baseline
        self._mask_imputer = make_imputer(perturb_baseline)

    def _random_sources(self) -> dict[str, Any]:
        return {"baseline": self._mask_imputer}

    def _coherency(self, batch: MetricBatch, e: torch.Tensor) -> torch.Tensor:
        """(rho(a, explain(b + e (x - b))) + 1) / 2 per sample, float64."""
        x = batch.x
        base = baseline_values(self._mask_imputer, x, batch.keys if self.stochastic else None,
                               batch.modality)
        if base is None:
            raise ValueError(f"{type(self).__name__} needs a mask-independent "
                             "perturb_baseline (a value or a named baseline).")
        masked = base + e.to(x.dtype) * (x - base)
        # the raw re-explanation, to tell a non-finite one (preprocessing zeroes it) apart
        raw = self._run_explain(batch, masked, batch.y)
        finite = finite_rows(raw).to(batch.device)
        batch.set_nan(~finite, _NONFINITE_REEXPLAINED)
        a2 = self._preprocess_attributions(batch, raw, masked, flag_nan=False)
        a = batch.a
        assert a is not None
        # per-pixel maps (channels summed): a 1-channel CAM against a C-channel re-explanation
        pixels, _ = batch.modality.feature_maps(a)
        pixels2, _ = batch.modality.feature_maps(a2)
        if pixels2.shape != pixels.shape:
            raise ValueError(f"{type(self).__name__}: the explain function returns "
                             f"attributions of shape {tuple(a2.shape)} after alignment, which "
                             f"do not match `a` of shape {tuple(a.shape)}.")
        pixels2 = torch.where(finite.unsqueeze(1), pixels2, 0.0)
        const2 = pixels2.amax(1) <= pixels2.amin(1)
        batch.set_nan(const2 & finite, _CONSTANT_REEXPLAINED)
        rho = _pearson_rows(pixels, pixels2).to(batch.device)
        return (rho + 1) / 2


class Coherency(_CamComposite):
    """Coherency (Poppi et al. 2021): the Pearson correlation between the explanation of x and
    the explanation of the input masked by it, ``x * e`` (e: the attribution min-max
    normalised to [0, 1]), rescaled to [0, 1] as ``(rho + 1) / 2``. The masked input is
    re-explained with the metric's explain function (``explain_fn``). **Higher is better**:
    1 when the explanation is unchanged (up to a positive affine map) on the masked input.
    The correlation runs over pixels (time steps on series), channels summed, so a 1-channel
    CAM meets a C-channel re-explanation. Quantus has no such metric.

    ``perturb_baseline`` b makes the masked input ``b + e * (x - b)`` (default 0). A constant
    explanation (e.g. all zero), or a constant re-explanation, has no correlation: NaN with a
    reason (pytorch-grad-cam's ``Coherency`` adds 1e-8 to the denominator and returns 0.5).

    Reference: S. Poppi, M. Cornia, L. Baraldi, R. Cucchiara, "Revisiting The Evaluation of
    Class Activation Mapping for Explainability: A Novel Metric and Experimental Analysis",
    CVPR Workshops 2021.
    """

    paper = _POPPI

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        return self._coherency(batch, _unit_maps(batch))


class ADCC(_CamComposite):
    """ADCC (Poppi et al. 2021): the harmonic mean of Coherency, 1 - Complexity and
    1 - Average Drop, per sample: ``3 / (1/Coherency + 1/(1 - Complexity) + 1/(1 - AD))``.
    **Higher is better** (in [0, 1]).

    * Coherency: :class:`Coherency` (re-explains the masked input with ``explain_fn``);
    * Complexity: the L1 norm of the explanation min-max normalised to [0, 1], over its size;
    * Average Drop: :class:`~evalkit.metrics.faithfulness.AverageDrop` with the same
      ``perturb_baseline`` (``max(0, Y - O) / Y`` on the target's probability by default).

    The three components are kept per sample in ``coherency_``, ``complexity_`` and
    ``average_drop_`` (``diagnostics_``). A constant explanation is NaN with a reason (neither
    normalisable nor correlated); a zero component gives 0. Quantus has no such metric;
    pytorch-grad-cam 1.5.7 ships Coherency and Complexity, not ADCC.

    Reference: S. Poppi, M. Cornia, L. Baraldi, R. Cucchiara, "Revisiting The Evaluation of
    Class Activation Mapping for Explainability: A Novel Metric and Experimental Analysis",
    CVPR Workshops 2021.
    """

    paper = _POPPI

    def __init__(self, perturb_baseline: Any = 0.0, **kwargs: Any) -> None:
        super().__init__(perturb_baseline, **kwargs)
        self._average_drop = AverageDrop(perturb_baseline=perturb_baseline)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        e = _unit_maps(batch)
        # the model's scores first: a non-finite output is the reason named, not its effect
        # on the re-explanation
        drop = self._average_drop._evaluate(batch)
        coherency = self._coherency(batch, e)
        complexity = _complexity(batch, e)
        batch.record("coherency", coherency, per_sample=True)
        batch.record("complexity", complexity, per_sample=True)
        batch.record("average_drop", drop, per_sample=True)
        return harmonic_mean3(coherency, 1 - complexity, 1 - drop)


class ARCC(_CamComposite):
    """ARCC (Domeniconi et al. 2026): ADCC (Poppi et al. 2021) with Average Drop replaced by
    ROAD, per sample ``3 / (1/Coherency + 1/(1 - Complexity) + 1/clip(2 ROAD, 0, 1))``.
    **Higher is better** (in [0, 1]).

    * Coherency and Complexity: as in :class:`ADCC`;
    * ROAD: :class:`~evalkit.metrics.faithfulness.ROAD` with ``order="combined"`` and
      ``score="confidence"``, i.e. (LeRF mean - MoRF mean) / 2 of the change of the target's
      probability when ``percentages`` of the pixels (default 20, 40, 60, 80, as the paper
      and pytorch-grad-cam's ``ARCC``) are filled by noisy linear imputation (``noise``),
      rescaled as ``clip(2 ROAD, 0, 1)``.

    pytorch-grad-cam 1.5.7's ``ARCC`` computes the same quantity (its docstring says
    "geometric mean"; the code is a harmonic mean, with 1e-8 added to each component).
    The components are kept in ``coherency_``, ``complexity_`` and ``road_`` (the unscaled
    ROAD), and ROAD's curves in ``morf_curves_`` and ``lerf_curves_``. Stochastic through the
    imputation noise (seeded per sample); ``noise=0`` makes it deterministic. Quantus has no
    such metric.

    Reference: L. Domeniconi, A. Stramiglio, M. Lombardi, S. Salti, "How to Evaluate and
    Refine your CAM", arXiv 2605.14641, 2026.
    """

    paper = _DOMENICONI
    stochastic = True

    def __init__(self, percentages: Sequence[float] | None = (20, 40, 60, 80),
                 noise: float = 0.01, perturb_baseline: Any = 0.0, **kwargs: Any) -> None:
        super().__init__(perturb_baseline, **kwargs)
        self._road = ROAD(percentages, noise, order="combined", score="confidence")
        self.percentages = percentages
        self.noise = self._road.noise

    @classmethod
    def conformance_params(cls) -> dict[str, Any]:
        """Cheap settings for the conformance checks: two percentages."""
        return {"percentages": (20, 80)}

    def _random_sources(self) -> dict[str, Any]:
        return {**super()._random_sources(), **self._road._random_sources()}

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        e = _unit_maps(batch)
        road = self._road._evaluate(batch)
        coherency = self._coherency(batch, e)
        complexity = _complexity(batch, e)
        # ARCC is a score per sample, not a curve: ROAD's curves stay diagnostics only
        batch.curves = batch.curve_x = None
        batch.record("coherency", coherency, per_sample=True)
        batch.record("complexity", complexity, per_sample=True)
        batch.record("road", road, per_sample=True)
        return harmonic_mean3(coherency, 1 - complexity, (2 * road).clamp(0, 1))
