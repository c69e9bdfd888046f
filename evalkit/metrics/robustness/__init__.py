"""Robustness: do explanations stay put when the input changes a little?

Every metric here except :class:`Consistency` re-explains perturbed copies of each input.

How they run
------------
* **K perturbed copies of each sample, explained together.** The N x K perturbed inputs are built
  lazily, a few samples at a time (as many as fit a memory budget, ``stack_budget``), stacked
  into one (S*K, ...) batch and explained through the same chunked path as
  :meth:`MetricBatch.explain` (the explain function is called on chunks of the batch size; the
  metric's ``normalise``/``abs`` are applied per sample). Never one explain call per draw.
  Any explain function works: gradient methods, black-box ones (Occlusion, Lime) and plain
  callables ``f(model, x, y, **kw)``.
* **Seeded noise, independent of the batch.** Each sample's whole (K, ...) block of noise is
  drawn from that sample's key (:mod:`evalkit._rng`; the key depends only on the seed and the
  sample's values), so a sample's perturbations and score are the same alone or in any batch,
  in any order, with any ``batch_size`` and any chunking.
* **Prediction changes** (``on_prediction_change``): a perturbation may flip the model's
  predicted class. ``"keep"`` counts every draw; ``"drop_draw"`` ignores the draws whose
  predicted class differs from that of the unperturbed input (OpenXAI's class-preserving
  perturbations; the score is NaN only if *every* draw flipped; OpenXAI draws more perturbations
  than it keeps, so raise ``nr_samples`` to keep about as many); ``"nan_sample"`` makes the
  sample NaN as soon as one draw flipped (what Quantus' ``np.max`` does, deviation C18). Quantus'
  boolean ``return_nan_when_prediction_changes`` maps ``True -> "drop_draw"`` and
  ``False -> "keep"``. The check costs one forward pass per perturbed input; the predictions of
  the unperturbed inputs are computed once.
* **Shared between metrics.** Inside ``with evalkit.cache.forward_cache():``, metrics with the
  same perturbation (noise model and parameters, ``nr_samples``, seed) and the same explain
  function share the perturbed inputs' explanations and model outputs
  (:class:`evalkit.cache.ExplanationCache`): e.g. MaxSensitivity and AvgSensitivity with the
  same settings explain once, and so do RelativeInputStability and RelativeOutputStability.
  :func:`evalkit.evaluate` runs each unit inside such a context and seeds metrics with equal
  :meth:`seed_scope` (their perturbation settings) alike, so there they share by default.

After each call a metric exposes ``draw_scores_`` (N, K): the per-draw values (NaN for draws
that did not count) and ``prediction_changed_`` (N, K) bool (None when not computed). The call
option ``stack_budget`` (bytes, or a string like ``"64MiB"``) bounds the perturbed inputs and
explanations built at once (default 256 MiB on CPU, 1 GiB on CUDA).

Quantus' own norm, discretisation and perturbation functions (``quantus.fro_norm``,
``quantus.functions.perturb_func.uniform_noise``, ``translation_x_direction``...) are recognised
by name and replaced by the equivalents here, with the metric's parameters. Not supported from
Quantus: ``similarity_func`` (the metrics compute their own ratios; choose
``norm_numerator``/``norm_denominator``), other NumPy ``perturb_func`` callables and
``perturb_func_kwargs`` (use ``perturb_func="gaussian"``/``"uniform"`` with their parameters or
an :class:`evalkit.perturb.Noise`).

The engine lives in ``_engine``; the metrics in ``sensitivity``, ``continuity``, ``stability``
and ``consistency``; import them from here. :class:`AdversarialTopKIntersection` (``attack``)
does not use the engine: it attacks each input with a seeded, label-preserving PGD instead of
drawing noise, then re-explains the attacked input once.
"""

from __future__ import annotations

from ..base import publish_as_package
from ._engine import ON_PREDICTION_CHANGE
from ._engine import translation_shifts as translation_shifts  # public helper
from .consistency import Consistency
from .continuity import Continuity
from .sensitivity import AvgSensitivity, LocalLipschitzEstimate, MaxSensitivity
from .stability import (
    RelativeInputStability,
    RelativeOutputStability,
    RelativeRepresentationStability,
)

__all__ = [
    "ON_PREDICTION_CHANGE",
    "AvgSensitivity",
    "Consistency",
    "Continuity",
    "LocalLipschitzEstimate",
    "MaxSensitivity",
    "RelativeInputStability",
    "RelativeOutputStability",
    "RelativeRepresentationStability",
]

from .attack import AdversarialTopKIntersection  # Ghorbani et al. 2019

__all__ += ["AdversarialTopKIntersection"]

# stored configurations, pickles and reprs name the public path, as before the split into
# submodules (a store written before keeps its cell hashes)
publish_as_package(globals())
