"""Continuity under translations (Montavon et al. 2018)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..._validation import check_scalar
from ...modality import Modality
from ...perturb import Baseline, Noise, make_imputer
from ..base import MetricBatch
from ._engine import (
    _callable_draws,
    _Draws,
    _make_noise,
    _noise_draws,
    _noise_spec,
    _perturb_name,
    _PerturbationRobustness,
    _resolve_norm,
    _translation_draws,
    translation_shifts,
)
from .sensitivity import _lipschitz_ratios

_TRANSLATIONS = ("translation_x", "translation_y")
#: relative difference (to ||a||) below which a re-explanation of the unchanged input counts as
#: equal to ``a`` (float32 rounding of a deterministic explainer in another batch composition)
_ZERO_SHIFT_RTOL = 1e-5


class Continuity(_PerturbationRobustness):
    """Explanation continuity (Montavon, Samek & Müller 2018). **Lower is better**.

    C(x) = max_k ||a(x) - a(x'_k)||_1 / ||x - x'_k||_2 over ``nr_steps`` perturbations of x,
    by default horizontal translations (``-W + k * ((2W + 1) // nr_steps)`` pixels, k = 1..K,
    the grid of Quantus 0.6) whose vacated columns take ``perturb_baseline`` ("black": the
    sample's minimum). A continuous explanation changes little when the input is shifted a
    little.

    Parameters
    ----------
    nr_steps:
        Number of perturbations (K).
    perturb_func:
        ``"translation_x"`` (default; along the last axis, also for (N, C, T) series),
        ``"translation_y"`` (images), ``"gaussian"``/``"uniform"``/an
        :class:`evalkit.perturb.Noise` (keyed noise, ``nr_steps`` draws, parameters as in
        :class:`LocalLipschitzEstimate`), or a callable ``f(x, step) -> x'`` on (B, ...) tensors
        (deterministic and row by row, so that scores do not depend on the batch;
        ``step`` = 0..nr_steps-1).
    perturb_baseline:
        Fill of the vacated positions of a translation: any evalkit baseline ("black", "white",
        "mean", "zero", a number, an array...).
    norm_numerator, norm_denominator:
        Default ``"l1"`` and ``"l2"`` (the paper's), or see :class:`LocalLipschitzEstimate`.
    on_prediction_change, return_nan_when_prediction_changes:
        See the module docstring (default ``"keep"``).
    include_zero_shift:
        Whether a perturbation that leaves the input unchanged (x' = x: the zero shift, which
        the default grid holds e.g. on 28-pixel-wide images) is scored. False (default) is the
        paper's definition, a maximum over x' != x: the step is left out, so an explainer's own
        randomness only shows through the smallest non-zero shift, divided by that shift's
        input change. True scores it (an unperturbed copy is appended where the grid lacks
        one): ||a(x) - a'(x)||_1 / 0 is unbounded where the re-explanation of x differs from
        ``a`` (a random explainer: its explanation is not a function of the input), and such a
        sample is NaN with that reason; where it equals ``a`` (up to float32 rounding, relative
        1e-5) the step adds 0, which never changes the maximum. evalkit's own random explainers
        draw from each sample's key, so they repeat ``a`` at the zero shift.

    Deviations from Quantus 0.6: the chosen perturbation is used (Quantus ignores
    ``perturb_func`` and ``perturb_baseline`` and always translates along x with "black",
    deviation C19); the given ``a`` is the explanation of x, normalised and abs-ed once, like
    every re-explanation (Quantus re-explains x, and normalises and abs-es twice, deviation C19);
    normalisation is per sample (deviation C1); the zero shift is left out by default, as in the
    paper: Quantus scores its grid's zero shift with ``+1e-9`` in the denominator, which gives 0
    for a deterministic explainer but about 1e9 times the noise for a random one, so the noise
    decides the score (deviation C38; ``include_zero_shift=True`` makes such a sample NaN); the
    prediction-change check compares with the predicted class of x, not with ``y``, and does
    not crash on NumPy 2 (deviation C16).

    Reference: G. Montavon, W. Samek, K.-R. Müller, "Methods for Interpreting and Understanding
    Deep Neural Networks", Digital Signal Processing 73, 2018.
    """

    default_abs = True
    default_normalise = True
    stochastic = False
    modalities = ("image", "series")  # translation_x by default; noise widens it
    paper = ("Montavon, Samek & Müller, Methods for Interpreting and Understanding Deep Neural "
             "Networks, Digital Signal Processing 2018")

    def __init__(self, nr_steps: int = 28, perturb_func: Any = "translation_x",
                 perturb_baseline: Any = "black", norm_numerator: Any = "l1",
                 norm_denominator: Any = "l2", *, perturb_mean: float = 0.0,
                 perturb_std: float = 0.1, lower_bound: float = 0.02,
                 upper_bound: float | None = None, on_prediction_change: str | None = None,
                 return_nan_when_prediction_changes: bool | None = None,
                 include_zero_shift: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nr_steps = check_scalar("nr_steps", nr_steps, int, min_val=1)
        if not isinstance(include_zero_shift, bool):
            raise TypeError("`include_zero_shift` must be True or False; got "
                            f"{include_zero_shift!r}.")
        self.include_zero_shift = include_zero_shift
        self.perturb_func = perturb_func
        self.perturb_baseline = perturb_baseline
        self.perturb_mean = perturb_mean
        self.perturb_std = perturb_std
        self.lower_bound = lower_bound
        self.upper_bound = upper_bound
        self.norm_numerator = norm_numerator
        self.norm_denominator = norm_denominator
        self._num = _resolve_norm("norm_numerator", norm_numerator)
        self._den = _resolve_norm("norm_denominator", norm_denominator)
        self._baseline = make_imputer(perturb_baseline)
        if not isinstance(self._baseline, Baseline):
            raise TypeError("`perturb_baseline` must be a baseline (a name, number or array), "
                            "not a mask-dependent imputer.")
        self._noise: Noise | None = None
        #: the perturbation: a translation name, a Noise or a user callable
        self._perturb = _perturb_name(perturb_func)
        name = self._perturb if isinstance(self._perturb, str) else None
        if isinstance(self._perturb, Noise) or name in ("gaussian", "uniform"):
            self._noise = _make_noise(self._perturb, perturb_mean, perturb_std, lower_bound,
                                      upper_bound)
        elif name not in _TRANSLATIONS and (name is not None or not callable(self._perturb)):
            raise ValueError("`perturb_func` must be 'translation_x', 'translation_y', "
                             "'gaussian', 'uniform', an evalkit.perturb.Noise or a callable "
                             f"f(x, step) -> x'; got {perturb_func!r}.")
        self._setup_prediction_change(on_prediction_change, return_nan_when_prediction_changes)

    def _random_sources(self) -> dict[str, Any]:
        # random noise, or a translation that shifts in random baseline values (a user
        # callable is the user's own business: not known to be random)
        translation = self._noise is None and isinstance(self._perturb, str)
        return {"noise": self._noise is not None,
                "translated-in baseline": translation and bool(self._baseline.stochastic)}

    def _check_modality(self, modality: Modality) -> None:
        # a translation on numeric data without its axis: say which perturbation works there
        # (other refusals, e.g. any perturbation of token ids, are the generic one)
        translation = self._noise is None and isinstance(self._perturb, str)
        if translation and modality.additive_noise and modality.name not in self.modalities:
            raise ValueError(
                "Translations need (N, C, T) series or (N, C, H, W) images ('translation_y': "
                f"images only); {modality.name} inputs have no such axis for "
                f"{type(self).__name__} to shift along. Use a noise perturbation "
                "(perturb_func='gaussian') instead."
            )

    def _derived_metadata(self) -> dict[str, Any]:
        derived = dict(super()._derived_metadata())
        # a translation shifts along a spatial axis (x: the last one; y: images only)
        if self._noise is None and self._perturb == "translation_x":
            derived["modalities"] = ("image", "series")
        elif self._noise is None and self._perturb == "translation_y":
            derived["modalities"] = ("image",)
        else:
            derived["modalities"] = ("image", "series", "tabular")
        return derived

    @property
    def nr_samples(self) -> int:  # type: ignore[override]
        return self.nr_steps

    def _draws(self, batch: MetricBatch) -> _Draws:
        if self._noise is not None:
            draws = _noise_draws(self._noise, self.nr_steps)
        elif isinstance(self._perturb, str):  # a translation (checked in __init__)
            draws = _translation_draws(self._perturb[-1], self.nr_steps, self._baseline,
                                       batch.x, batch.modality)
            axis = batch.modality.translation_axis(batch.x, self._perturb[-1])
            if 0 in translation_shifts(batch.x.shape[axis], self.nr_steps):
                return draws  # the grid's own zero shift is scored or left out by the ratio
        else:
            draws = _callable_draws(self._perturb, self.nr_steps)
        return _with_zero_shift(draws) if self.include_zero_shift else draws

    def seed_scope(self) -> str | None:
        if self._noise is None and isinstance(self._perturb, str):  # a translation
            # deterministic unless the baseline is random; array baselines have no short name
            if isinstance(self._baseline.kind, np.ndarray | torch.Tensor):
                return None
            return f"translation|{self._perturb}|{self.nr_steps}|{self._baseline!r}"
        if self._noise is not None:
            return _noise_spec(self._noise, self.nr_steps)  # the same draws as the noise metrics
        return None

    def _undefined_reason(self) -> str:
        return "no perturbation changed the input (||x - x'|| = 0)"

    def _draw_values(self, batch, chunk, clean):
        ratios, moved = _lipschitz_ratios(batch, chunk, self._num, self._den)
        if not self.include_zero_shift:
            return ratios, moved
        # where x' = x the ratio holds the numerator ||a - a'|| (see _lipschitz_ratios);
        # differences within float32 rounding (a deterministic explainer run in another batch
        # composition) count as equal
        a0 = batch.a[chunk.rows].reshape(chunk.idx.shape[0], -1)  # type: ignore[index]
        scale = self._num(a0.to(torch.float64)).unsqueeze(1)
        differs = ~moved & (ratios > _ZERO_SHIFT_RTOL * scale)
        rows = torch.zeros(batch.n, dtype=torch.bool, device=ratios.device)
        rows[chunk.rows] = differs.any(1)
        batch.set_nan(rows, "the re-explanation of the unchanged input (the zero shift) differs "
                            "from `a`: a random explainer's continuity is unbounded "
                            "(include_zero_shift=True)")
        return torch.where(moved, ratios, torch.zeros_like(ratios)), torch.ones_like(moved)


def _with_zero_shift(draws: _Draws) -> _Draws:
    """The draws plus one unperturbed copy of each sample (the zero shift), last."""
    def make(x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return torch.cat([draws.make(x, keys), x.unsqueeze(1)], 1)

    spec = None if draws.spec is None else draws.spec + b"|zero shift"
    return _Draws(draws.k + 1, make, spec)
