"""Local Lipschitz Estimate, Max-Sensitivity and Avg-Sensitivity."""

from __future__ import annotations

from typing import Any

import torch

from ..base import MetricBatch
from ._engine import (
    _Chunk,
    _documented,
    _flat,
    _minus,
    _NoiseRobustness,
    _resolve_norm,
)


@_documented
class LocalLipschitzEstimate(_NoiseRobustness):
    """Local Lipschitz estimate of the explanation function (Alvarez-Melis & Jaakkola 2018).
    **Lower is better**.

    L(x) = max_k ||a(x) - a(x'_k)||_num / ||x - x'_k||_den over K noisy copies
    x'_k = x + eps_k (Gaussian by default), with both norms L2 by default.

    Parameters
    ----------
    norm_numerator, norm_denominator:
        ``"l2"`` (default), ``"l1"``, ``"linf"`` or a callable on (M, D) differences.
    <<NOISE>>

    Deviations from Quantus 0.6: attributions are normalised per sample (Quantus normalises over
    the whole batch, deviation C1); the denominator has no ``+1e-10`` (a draw that leaves the input
    unchanged is left out instead: its ratio is undefined); ``softmax`` defaults to False (it
    would only change what the default explainer explains; Quantus' softmax=True only affects its
    argmax check); with ``return_nan_when_prediction_changes=True`` flipped draws are dropped
    instead of making the whole sample NaN (deviation C18; ``on_prediction_change="nan_sample"``
    gives Quantus' behaviour). The predicted class of x (not ``y``) is the reference, as in Quantus.

    Reference: D. Alvarez-Melis, T. S. Jaakkola, "On the Robustness of Interpretability
    Methods", ICML WHI workshop 2018, arXiv:1806.08049.
    """

    default_normalise = True
    paper = ("Alvarez-Melis & Jaakkola, On the Robustness of Interpretability Methods, "
             "arXiv 2018")

    def __init__(self, nr_samples: int = 200, perturb_func: Any = "gaussian",
                 perturb_mean: float = 0.0, perturb_std: float = 0.1,
                 lower_bound: float = 0.02, upper_bound: float | None = None,
                 norm_numerator: Any = "l2", norm_denominator: Any = "l2", *,
                 on_prediction_change: str | None = None,
                 return_nan_when_prediction_changes: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._setup_noise(nr_samples, perturb_func, perturb_mean, perturb_std, lower_bound,
                          upper_bound)
        self.norm_numerator = norm_numerator
        self.norm_denominator = norm_denominator
        self._num = _resolve_norm("norm_numerator", norm_numerator)
        self._den = _resolve_norm("norm_denominator", norm_denominator)
        self._setup_prediction_change(on_prediction_change, return_nan_when_prediction_changes)

    def _undefined_reason(self) -> str:
        return "no perturbation changed the input (||x - x'|| = 0)"

    def _draw_values(self, batch, chunk, clean):
        return _lipschitz_ratios(batch, chunk, self._num, self._den)


def _lipschitz_ratios(batch: MetricBatch, chunk: _Chunk, num, den):
    s, k = chunk.a_ok.shape
    a0 = batch.a[chunk.rows]  # type: ignore[index]
    da = _minus(chunk.a, a0.unsqueeze(1), chunk.a_owned).reshape(s * k, -1)
    # the inputs' differences in their own dtype (what the model saw; a float64 copy of the whole
    # stack would cost more than the rest of the metric's arithmetic)
    dx = (chunk.x - batch.x[chunk.rows].unsqueeze(1)).reshape(s * k, -1)
    numer = num(da).reshape(s, k).to(torch.float64)
    denom = den(dx).reshape(s, k).to(torch.float64)
    ok = denom > 0
    return numer / torch.where(ok, denom, torch.ones_like(denom)), ok


@_documented
class MaxSensitivity(_NoiseRobustness):
    """Max-sensitivity of the explanation (Yeh et al. 2019). **Lower is better**.

    SENS_max(x) = max_k ||a(x) - a(x'_k)|| / ||a(x)|| over K copies x'_k = x + U(-r, r)
    (``lower_bound`` = r = 0.2 by default: uniform in the L-infinity ball of radius r, as the
    paper's experiments sample; Frobenius/L2 norms). The denominator ||a(x)|| makes the score
    comparable across explainers of different scales; it is the form of the authors'
    experiment code and of the fixed Quantus (#288/#289). The paper's formula has no
    denominator (``norm_denominator=None`` gives it).

    Parameters
    ----------
    norm_numerator, norm_denominator:
        ``"fro"`` (= ``"l2"``, default), ``"l1"``, ``"linf"``, a callable on (M, D) tensors, or
        None for the denominator (the absolute, unnormalised sensitivity).
    <<NOISE>>

    Deviations from Quantus 0.6: a sample whose attribution is all zero (||a|| = 0) is NaN with a
    reason (Quantus: inf or NaN from 0/0); otherwise as for :class:`LocalLipschitzEstimate`
    (per-sample preprocessing, deviation C1; flipped draws dropped rather than NaN-ing the sample,
    deviation C18).

    Reference: C.-K. Yeh, C.-Y. Hsieh, A. S. Suggala, D. I. Inouye, P. Ravikumar, "On the
    (In)fidelity and Sensitivity of Explanations", NeurIPS 2019.
    """

    paper = "Yeh et al., On the (In)fidelity and Sensitivity of Explanations, NeurIPS 2019"
    reduction = "max"
    feature_dropout_noise = True  # no input distance: token dropout on token ids works

    def __init__(self, nr_samples: int = 200, perturb_func: Any = "uniform",
                 perturb_mean: float = 0.0, perturb_std: float = 0.1,
                 lower_bound: float = 0.2, upper_bound: float | None = None,
                 norm_numerator: Any = "fro", norm_denominator: Any = "fro", *,
                 on_prediction_change: str | None = None,
                 return_nan_when_prediction_changes: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._setup_noise(nr_samples, perturb_func, perturb_mean, perturb_std, lower_bound,
                          upper_bound)
        self.norm_numerator = norm_numerator
        self.norm_denominator = norm_denominator
        self._num = _resolve_norm("norm_numerator", norm_numerator)
        self._den = (None if norm_denominator is None
                     else _resolve_norm("norm_denominator", norm_denominator))
        self._setup_prediction_change(on_prediction_change, return_nan_when_prediction_changes)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        if self._den is not None:
            norm_a = self._den(_flat(batch.a))  # type: ignore[arg-type]
            batch.set_nan(norm_a == 0, "attribution is all zero (||a|| = 0)")
        return super()._evaluate(batch)

    def _draw_values(self, batch, chunk, clean):
        s, k = chunk.a_ok.shape
        a0 = batch.a[chunk.rows]  # type: ignore[index]
        da = _flat(_minus(chunk.a, a0.unsqueeze(1), chunk.a_owned).reshape(s * k, *a0.shape[1:]))
        numer = self._num(da).reshape(s, k)
        if self._den is None:
            return numer, torch.ones_like(numer, dtype=torch.bool)
        denom = self._den(_flat(a0)).unsqueeze(1).expand(s, k)
        ok = denom > 0
        return numer / torch.where(ok, denom, torch.ones_like(denom)), ok

    def _undefined_reason(self) -> str:
        return "attribution is all zero (||a|| = 0)"


class AvgSensitivity(MaxSensitivity):
    """Average sensitivity of the explanation (Yeh et al. 2019). **Lower is better**.

    SENS_avg(x) = mean_k ||a(x) - a(x'_k)|| / ||a(x)||: :class:`MaxSensitivity` with the mean
    over the draws instead of the maximum (over the draws that count, see
    ``on_prediction_change``). Parameters as for :class:`MaxSensitivity`.

    Deviations from Quantus 0.6: as for :class:`MaxSensitivity`. With
    ``return_nan_when_prediction_changes=True`` Quantus averages with ``np.mean``, so one flipped
    draw makes the sample NaN; here the flipped draws are left out of the mean.

    Reference: C.-K. Yeh et al., "On the (In)fidelity and Sensitivity of Explanations",
    NeurIPS 2019.
    """

    reduction = "mean"
