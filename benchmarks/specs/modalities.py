"""Rows on the non-image workloads (issue 19): W4 (tabular), W5 (series), W6 (token ids).

Every registered metric whose class declares a workload's modality (``Metric.modalities``,
:data:`benchmarks.workloads.MODALITY_WORKLOADS`) gets a row there. :func:`extend_specs` adds the
workload to the metric's spec (the one named after the metric, else its first variant, e.g.
``MaxSensitivity[Saliency]``; a metric tagged ``benchmark_spec = False`` gets one with only these
workloads), so W1/W2 and W4-W6 rows of one metric share a name. Each row is measured like the
image rows: ours against the bare model work it issued (the floor) and, where Quantus 0.6 runs
on the input, against Quantus with the same settings. Quantus takes (N, F) and (N, C, T) arrays
for many metrics but not token ids, so W6 rows have no Quantus column.

Settings (:data:`SETTINGS`) are the image specs' where they transfer, sized for the input:

* removal curves remove one column per step on W4 (30 steps) and 25 channel values per step
  on W5 (``grouping="channel_values"``: Quantus' features, 60 steps of the 1,500 values;
  Quantus asks for a step dividing T = 500), with
  per-channel attributions there (``a_channels``), as the W1 Quantus rows do; patch metrics use
  1-column and 10-step windows; token metrics remove one token per step;
* explanation-bound metrics (robustness, randomisation, InputInvariance) re-explain with
  Saliency (summed over channels on W5, Quantus' default), ``nr_samples=10``; their floor is,
  as for the image robustness rows, ``explain()`` of as many rows as they explained (the
  explainer's own cost is not the metric's) plus the bare forward of their other rows;
* the other model-bound rows have the forward floor, and also the forward floor with each
  perturbed input row written once before its forward (``extra["written_floor_s"]``; the
  samples' own N inputs, which the metrics here forward unchanged to compare with, are not
  written: the chunks that start among the first N rows go unwritten; where a metric forwards
  no unperturbed row, e.g. ROAD's accuracy against the labels, the bound writes N rows fewer
  than it needs and stays below every implementation): on W4 the MLP
  costs about 0.2 us a row, less than building a perturbed row, so that floor shows what any
  implementation that builds its inputs must spend;
* evalkit's random numbers are keyed (each draw a hash of its row's key, the keys hashed from
  the samples' values: batch-independent draws), a cost the model floor does not cover; every
  model-bound row times it in one more untimed run (the note's "keyed random draws") and counts
  the numbers drawn, and the *drawn floor* is the written floor plus as many numbers drawn with
  torch's own unkeyed generator; ROAD's part is its imputation (keyed noise included);
* the *required-work floor* (``extra["required_floor_s"]``, the steps in
  ``extra["required_steps"]``) is the written floor (the drawn floor where that is timed) plus
  the steps that the metric's definition requires at the row's settings, so that no correct
  implementation skips them (:func:`required_work`, :class:`benchmarks.harness.RequiredWork`):
  one ranking of the attributions per call where the score reads their order
  (:data:`RANKINGS`: the full order for one feature per removal step or Spearman ranks, a
  split at each step's boundary where a step removes several features, the top-k set where
  only that is read), by the cheapest of NumPy's default unstable ``argsort``,
  ``torch.argsort``, NumPy's ``argpartition`` at the split positions and ``torch.topk``,
  chosen by timing each on the row's attributions (a ranking compares the values at least as
  a library's vectorised sort or selection does; a loop over rows in Python is slower); and
  per chunk the scoring of the outputs the metric reads (the target's softmax probability;
  its log-softmax for LogOdds' log-odds; the argmax where the score is whether the
  prediction is kept: MinimalSubset*, ROAD's accuracy, FFidelity's ``quantity="correct"``,
  Consistency's predictions), by the cheapest library form of that value. A metric with
  ``softmax=False`` scores nothing (it reads the logits); one whose score uses the
  attribution values and not their order ranks nothing (FaithfulnessCorrelation's random
  subsets, Infidelity, Completeness, the soft rationale metrics, AverageDrop and kin,
  NonSensitivity, FaithfulnessEstimate with one feature a step). Work a metric may organise
  otherwise (normalising maps, windows' sums, correlations) is left out, so the bound stays
  below every implementation; the randomisation rows (explain() floor) have one too: that
  floor plus the per-call steps of their definition (a model copy with the randomised layers
  re-initialised, the similarity or entropy of the maps, the off-target labels, SmoothMPRT's
  noisy inputs and means; :func:`benchmarks.specs.randomisation.required_randomisation_work`),
  and so do the noise-based robustness rows (the perturbed inputs' noise, the score's distances,
  the predicted classes where flipped draws are dropped;
  :func:`benchmarks.specs.robustness.required_robustness_work`);
* the model-free metrics score the workload's Saliency maps against its masks (W4: the
  informative features, W5: one interval per sample, W6: one rationale span per sample);
  they have no floor.

A metric whose settings here do not declare the modality, or which cannot run there, gets a row
that says why (:data:`SKIPS`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..harness import (
    Agreement,
    Case,
    Context,
    PartTimer,
    RequiredWork,
    TimedExplainer,
    max_abs_diff,
)
from ..workloads import MODALITY_WORKLOADS, Workload

__all__ = ["RANKINGS", "SETTINGS", "SKIPS", "Ranking", "Row", "extend_specs", "modality_build",
           "required_work"]


@dataclass(frozen=True)
class Row:
    """One metric's settings on one modality.

    ``ours``/``quantus``: constructor keyword arguments (``quantus`` None: no Quantus row; a
    string: why not); ``a``: which attributions (``"a"`` or the per-channel ``"a_channels"``);
    ``out``: what ours returns for the agreement check (``"scores"``; ``"curves"``:
    ``curves_`` without the unperturbed point; ``"set"``: the set-level curve; ``"layers"``:
    the per-layer mean scores); ``quantus_name``: the Quantus class if not the
    same name; ``settings``/``note``: the row's text."""

    ours: dict[str, Any] = field(default_factory=dict)
    quantus: dict[str, Any] | str | None = None
    a: str = "a"
    out: str = "scores"
    quantus_name: str | None = None
    settings: str = ""
    note: str = ""
    #: ``f(w) -> attributions`` replacing ``a`` (e.g. Integrated Gradients for Completeness)
    attributions: Callable[[Workload], torch.Tensor] | None = None
    #: extra call keyword arguments of ours, ``f(w) -> dict``
    call: Callable[[Workload], dict[str, Any]] | None = None
    #: ``f(w) -> s`` replacing the workload's masks (the agreement metrics' real-valued
    #: reference)
    masks: Callable[[Workload], torch.Tensor] | None = None
    #: the first n samples only (the row says so)
    subset: int | None = None
    #: the agreement column's text where the outputs differ by design (means shown with it)
    differs: str = ""
    #: Quantus gets ``batch_size`` >= N (set-level metrics: Quantus compares within its batch
    #: chunk, ours within the whole set)
    quantus_whole_set: bool = False
    #: the agreement check, ``f(ours, quantus) -> Agreement``, replacing the generic one
    agreement: Callable[[Any, Any], Agreement] | None = None
    #: constructor keyword arguments that depend on the workload, ``f(w) -> dict`` (a model
    #: standing in for a trained copy), added to ``ours``
    make: Callable[[Workload], dict[str, Any]] | None = None
    #: the floor, ``f(w, ctx) -> Case.floor``, replacing the generic one (work the generic
    #: floors do not describe, e.g. an attack's double backward)
    floor: Callable[[Workload, Context], Any] | None = None


_NO_TOKENS = "Quantus 0.6 takes no token ids"

# --------------------------------------------------------------------------- settings
_T, _S, _K = "tabular", "series", "tokens"
K = 10  # robustness and randomisation samples


def _removal(tab_fis: int = 1, ser_fis: int = 25, **extra: Any) -> dict[str, Row]:
    """A removal-curve metric with Quantus' ``features_in_step`` and channel values on W5."""
    return {
        _T: Row(dict(features_in_step=tab_fis, **extra),
                dict(features_in_step=tab_fis, **extra),
                settings=f"Saliency, columns, features_in_step={tab_fis} "
                         f"({30 // tab_fis} steps)"),
        _S: Row(dict(features_in_step=ser_fis, grouping="channel_values", **extra),
                dict(features_in_step=ser_fis, **extra), a="a_channels",
                settings=f"per-channel Saliency, channel values, features_in_step={ser_fis} "
                         f"({1500 // ser_fis} steps)"),
    }


def _curves(rows: dict[str, Row]) -> dict[str, Row]:
    return {k: dataclasses.replace(r, out="curves") for k, r in rows.items()}


def _completeness_a(w: Workload) -> torch.Tensor:
    import evalkit

    return evalkit.explain(w.model, w.x, w.y, method="IntegratedGradients", n_steps=32,
                           baselines=0.0 * w.x).detach()


def _reference_map(w: Workload) -> torch.Tensor:
    """The agreement metrics' reference: InputXGradient (channels summed on W5; per token on
    W6), the same layout as the workload's Saliency maps."""
    import evalkit

    kw: dict[str, Any] = {"reduce_channels": "sum"} if w.x.ndim == 3 else {}
    return evalkit.explain(w.model, w.x, w.y, method="InputXGradient", **kw).detach()


def _gradient_a(w: Workload) -> torch.Tensor:
    import evalkit

    return evalkit.explain(w.model, w.x, w.y, method="Gradient").detach()


def _pairwise_floor(w: Workload, ctx: Context) -> Callable[[int, int], Callable[[], None]]:
    """A set-level metric's floor (Sufficiency): the bare forward of the rows ours issued plus
    the pairwise work of the whole set that any implementation does, bare: float64 Euclidean
    distances of all N flattened maps (``torch.cdist``), the threshold test and each sample's
    neighbour count. At N = 2000 that work is N^2 = 4 million pairs, many times the forward of
    W4's N rows, which the forward floor alone leaves out."""
    from ..harness import forward_floor

    maps = w.a.detach().reshape(w.n, -1).to(torch.float64)

    def make(rows: int, _calls: int) -> Callable[[], None]:
        forward = forward_floor(w, rows, ctx.batch_size)

        def run() -> None:
            if forward is not None:
                forward()
            near = torch.cdist(maps, maps) <= 0.6
            near.sum(1)

        return run

    return make


def _with_neighbours(o: Any, t: Any) -> Agreement:
    """Sufficiency: the samples with a neighbour in ours compared (the others are NaN here, 0
    in Quantus)."""
    o = np.asarray(o, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    defined = np.isfinite(o)
    if not defined.any():
        return Agreement(None, "no sample has a neighbour within the threshold: NaN here, 0 in "
                               "Quantus")
    ag = max_abs_diff(o[defined], t[defined])
    ag.text = (f"{int(defined.sum())}/{len(o)} samples with neighbours compared; the others "
               "are NaN here, 0 in Quantus")
    return ag


#: metric -> modality -> settings. A metric declaring a modality without an entry here runs
#: with its defaults (seed 0), Saliency maps and no Quantus row.
SETTINGS: dict[str, dict[str, Row]] = {
    # faithfulness: removal curves
    "PixelFlipping": _curves(_removal()),
    "FaithfulnessEstimate": _removal(),
    "Monotonicity": {k: dataclasses.replace(
        r, differs="by design: Quantus re-applies the baseline (deviation C2), ours restores "
                   "the features") for k, r in _removal().items()},
    "MonotonicityCorrelation": {
        _T: Row(dict(features_in_step=1, nr_samples=10, seed=0),
                dict(features_in_step=1, nr_samples=10),
                settings="Saliency, columns, features_in_step=1, nr_samples=10, uniform"),
        _S: Row(dict(features_in_step=50, nr_samples=10, grouping="channel_values", seed=0),
                dict(features_in_step=50, nr_samples=10), a="a_channels",
                settings="per-channel Saliency, channel values, features_in_step=50 (30 "
                         "blocks), nr_samples=10, uniform"),
    },
    "FaithfulnessCorrelation": {
        _T: Row(dict(nr_runs=100, subset_size=6, seed=0), dict(nr_runs=100, subset_size=6,
                                                              return_aggregate=False),
                settings="Saliency, columns, nr_runs=100, subset_size=6"),
        _S: Row(dict(nr_runs=100, subset_size=150, grouping="channel_values", seed=0),
                dict(nr_runs=100, subset_size=150, return_aggregate=False), a="a_channels",
                settings="per-channel Saliency, channel values, nr_runs=100, "
                         "subset_size=150"),
    },
    "SensitivityN": {
        _T: Row(dict(features_in_step=1, subsets="morf", normalise=False),
                dict(features_in_step=1, normalise=False, return_aggregate=False),
                out="set", settings="set-level (subsets='morf'), Saliency, columns, "
                                    "features_in_step=1, n up to 80 %, normalise=False"),
        _S: Row(dict(features_in_step=25, subsets="morf", grouping="channel_values",
                     n_max_percentage=0.8 / 3, normalise=False),
                dict(features_in_step=25, normalise=False, return_aggregate=False),
                a="a_channels", out="set",
                settings="set-level (subsets='morf'), per-channel Saliency, channel values, "
                         "features_in_step=25, n up to 80 % of T (Quantus' rule), "
                         "normalise=False"),
    },
    "Deletion": {_T: Row(dict(n_steps=30), settings="Saliency, columns, 30 steps, zero"),
                 _S: Row(dict(n_steps=50), settings="Saliency, time steps, 50 steps, zero")},
    "Insertion": {_S: Row(dict(n_steps=50), settings="Saliency, time steps, 50 steps, blur")},
    "RegionPerturbation": {
        _T: Row(dict(patch_size=1, regions_evaluation=30), dict(patch_size=1,
                                                                regions_evaluation=30),
                out="curves", settings="Saliency, single columns, morf, 30 regions"),
        _S: Row(dict(patch_size=10, regions_evaluation=50), dict(patch_size=10,
                                                                 regions_evaluation=50),
                out="curves", settings="Saliency, 10-step windows, morf, 50 regions"),
    },
    "Selectivity": {
        _T: Row(dict(patch_size=1), dict(patch_size=1), out="curves",
                settings="Saliency, single columns (30 steps)"),
        _S: Row(dict(patch_size=10), dict(patch_size=10), out="curves",
                settings="Saliency, 10-step windows (50 steps)"),
    },
    "Infidelity": {
        m: Row(dict(n_perturb_samples=10, noise_std=0.1, optimal_scaling=True, seed=0),
               "Quantus' Infidelity removes square image patches",
               settings="the paper's form: Gaussian noise N(0, 0.1^2), n_perturb_samples=10, "
                        "optimal scaling")
        for m in (_T, _S)},
    "Sufficiency": {m: Row(dict(threshold=0.6, normalise=False),
                           dict(threshold=0.6, normalise=False), quantus_whole_set=True,
                           agreement=_with_neighbours, floor=_pairwise_floor,
                           settings="set-level, Saliency (abs), threshold 0.6, "
                                    "normalise=False",
                           note="set-level: pairwise distances of all N maps (N^2 pairs); "
                                "floor: the N forward rows plus that pairwise work done bare "
                                "(float64 torch.cdist of the N maps, the threshold test, "
                                "neighbour counts); Quantus with batch_size >= N sees the same "
                                "set")
                    for m in (_T, _S)},
    "AOPC": {_T: Row(dict(features_in_step=1), settings="Saliency, columns, morf, 1 per step"),
             _S: Row(dict(features_in_step=10), settings="Saliency, time steps, morf, "
                                                        "10 per step (50 steps)"),
             _K: Row(dict(features_in_step=1), settings="token Saliency, morf, 1 token per "
                                                       "step (64 steps), mask token")},
    "SoftComprehensiveness": {m: Row(dict(nr_samples=1, seed=0), settings="nr_samples=1")
                              for m in (_T, _S)},
    "SoftSufficiency": {m: Row(dict(nr_samples=1, seed=0), settings="nr_samples=1")
                        for m in (_T, _S)},
    # robustness: Saliency, nr_samples=10 (Quantus: quantus.explain's Saliency)
    "LocalLipschitzEstimate": {m: Row(dict(nr_samples=K, normalise=False, seed=0),
                                      dict(nr_samples=K, normalise=False))
                               for m in (_T, _S)},
    "MaxSensitivity": {m: Row(dict(nr_samples=K, seed=0), dict(nr_samples=K))
                       for m in (_T, _S)},
    "AvgSensitivity": {m: Row(dict(nr_samples=K, seed=0), dict(nr_samples=K))
                       for m in (_T, _S)},
    "Continuity": {_S: Row(dict(nr_steps=K, normalise=False, seed=0),
                           dict(nr_steps=K, normalise=False))},
    "RelativeInputStability": {m: Row(dict(nr_samples=K, seed=0), dict(nr_samples=K))
                               for m in (_T, _S)},
    "RelativeOutputStability": {m: Row(dict(nr_samples=K, seed=0), dict(nr_samples=K))
                                for m in (_T, _S)},
    "RelativeRepresentationStability": {
        _T: Row(dict(nr_samples=K, seed=0, layer_names=["net.2"]),
                dict(nr_samples=K, layer_names=["net.2"]), settings=f"nr_samples={K}, layer net.2"),
        _S: Row(dict(nr_samples=K, seed=0, layer_names=["pool"]),
                dict(nr_samples=K, layer_names=["pool"]), settings=f"nr_samples={K}, layer pool"),
    },
    "Consistency": {m: Row({}, {}, settings="Saliency a, top_n_sign (n=5)",
                           quantus_whole_set=True,
                           differs="different discretisers by design: Quantus' top_n_sign "
                                   "reads the first 5 entries (deviation C10)")
                    for m in (_T, _S)},
    # randomisation: Saliency
    "MPRT": {m: Row({}, dict(display_progressbar=False), out="layers",
                    settings="Saliency, top_down cascade, Spearman, a given")
             for m in (_T, _S, _K)},
    "SmoothMPRT": {m: Row(dict(nr_samples=K, seed=0), dict(nr_samples=K,
                                                          display_progressbar=False),
                          out="layers",
                          settings=f"Saliency, nr_samples={K}") for m in (_T, _S)},
    "EfficientMPRT": {m: Row({}, dict(display_progressbar=False),
                             settings="Saliency, skip_layers=True") for m in (_T, _S, _K)},
    "RandomLogit": {_T: Row(dict(num_classes=3), dict(num_classes=3),
                            settings="Saliency, num_classes=3"),
                    _S: Row(dict(num_classes=4), dict(num_classes=4),
                            settings="Saliency, num_classes=4"),
                    _K: Row(dict(num_classes=2), dict(num_classes=2),
                            settings="token Saliency, num_classes=2")},
    # axiomatic
    "Completeness": {m: Row(dict(perturb_baseline="zero"), dict(perturb_baseline=0.0),
                            attributions=_completeness_a,
                            settings="IntegratedGradients (32 steps, zero baseline), "
                                     "baseline zero, rtol 5%",
                            differs="pass rates: Quantus tests exact equality after "
                                    "max-normalisation (deviation C3)") for m in (_T, _S)},
    "NonSensitivity": {
        _T: Row(dict(features_in_step=1, normalise=False),
                dict(features_in_step=1, normalise=False),
                settings="Saliency (abs), every column a feature, features_in_step=1, black, "
                         "normalise=False"),
        _S: Row(dict(features_in_step=1, grouping="channel_values", normalise=False),
                dict(features_in_step=1, normalise=False), subset=8,
                settings="Saliency (abs), every channel value a feature (1,500), "
                         "features_in_step=1, black, normalise=False",
                note="Quantus 0.6.0 runs only with features_in_step=1 (one predict call of "
                     "the batch per channel value)"),
    },
    "InputInvariance": {m: Row(dict(input_shift=-1.0), dict(input_shift=-1),
                               attributions=_gradient_a,
                               settings="Gradient, input shift -1, first-layer bias "
                                        "compensated",
                               differs="pass rates") for m in (_T, _S)},
    # localisation and complexity (model-free)
    "AttributionLocalisation": {m: Row(dict(abs=True), {}, settings="Saliency, abs=True")
                                for m in (_T, _S, _K)},
    "EnergyPointingGame": {m: Row({}, dict(abs=False, positive_attributions=True),
                                  quantus_name="AttributionLocalisation",
                                  settings="Saliency, positive part")
                           for m in (_T, _S, _K)},
    "TopKIntersection": {_T: Row(dict(k=6), dict(k=6), settings="Saliency, k=6"),
                         _S: Row(dict(k=50), dict(k=50), settings="Saliency, k=50"),
                         _K: Row(dict(k=8), dict(k=8), settings="token Saliency, k=8")},
    "EffectiveComplexity": {m: Row(dict(normalise=False), dict(normalise=False),
                                   settings="Saliency, eps=1e-5, normalise=False")
                            for m in (_T, _S, _K)},
}
#: model-free metrics compared with Quantus' class of the same name at the defaults
for _name in ("PointingGame", "RelevanceRankAccuracy", "RelevanceMassAccuracy", "AUC",
              "Sparseness", "Complexity"):
    SETTINGS[_name] = {m: Row({}, {}, settings="Saliency, defaults") for m in (_T, _S, _K)}
for _name in ("TokenF1", "AUPRC", "IOUF1", "AverageDrop", "AverageIncrease", "AverageGain",
              "ERASERComprehensiveness", "ERASERSufficiency"):
    SETTINGS[_name] = {m: Row({}, settings="defaults") for m in (_T, _S, _K)}
for _rows in SETTINGS.values():  # no Quantus on token ids
    if _K in _rows and _rows[_K].quantus is not None:
        _rows[_K] = dataclasses.replace(_rows[_K], quantus=_NO_TOKENS)

#: metric -> the spec its W4-W6 rows join, where not the one named after it (their settings'
#: variant)
_ATTACH = {"Infidelity": "Infidelity[gaussian]"}
#: metrics whose W4-W6 rows get a spec of their own, named after the metric (their image spec
#: is a variant that does not describe these rows, e.g. IROF[1-channel])
_OWN_SPEC = ("IROF",)

# token ids (W6): the removal metrics remove tokens (replaced by the mask token), one per step
_TOKENS = "token Saliency, mask token"
SETTINGS["PixelFlipping"][_K] = Row(dict(features_in_step=1), _NO_TOKENS, out="curves",
                                    settings=f"{_TOKENS}, features_in_step=1 (64 steps)")
SETTINGS["FaithfulnessEstimate"][_K] = Row(dict(features_in_step=1), _NO_TOKENS,
                                           settings=f"{_TOKENS}, features_in_step=1")
SETTINGS["Monotonicity"][_K] = Row(dict(features_in_step=1), _NO_TOKENS,
                                   settings=f"{_TOKENS}, features_in_step=1")
SETTINGS["FaithfulnessCorrelation"][_K] = Row(
    dict(nr_runs=100, subset_size=6, seed=0), _NO_TOKENS,
    settings=f"{_TOKENS}, nr_runs=100, subset_size=6 (about 10 % of 64, as W1's 224 of "
             "2,352)")
SETTINGS["SensitivityN"][_K] = Row(
    dict(features_in_step=1, subsets="morf", normalise=False), _NO_TOKENS, out="set",
    settings=f"set-level (subsets='morf'), {_TOKENS}, features_in_step=1, n up to 80 %, "
             "normalise=False")
SETTINGS["Deletion"][_K] = Row(dict(n_steps=64), settings=f"{_TOKENS}, 64 steps")
SETTINGS["RegionPerturbation"][_K] = Row(dict(patch_size=4, regions_evaluation=16),
                                         _NO_TOKENS, out="curves",
                                         settings=f"{_TOKENS}, 4-token windows, morf, 16 "
                                                  "regions")
SETTINGS["Selectivity"][_K] = Row(dict(patch_size=4), _NO_TOKENS, out="curves",
                                  settings=f"{_TOKENS}, 4-token windows (16 steps)")

for _name in ("FeatureAgreement", "PairwiseRankAgreement", "RankAgreement", "SignAgreement",
              "SignedRankAgreement"):
    SETTINGS[_name] = {m: Row({}, masks=_reference_map, settings="Saliency against an "
                              "InputXGradient reference (s), defaults") for m in (_T, _S, _K)}

#: metric -> modality -> why it gets a skipped row there instead
SKIPS: dict[str, dict[str, str]] = {}


# issue 23's metrics on W4-W6 (none is in Quantus). ABPC and SRG walk AOPC's MoRF and LeRF
# curves with AOPC's steps; NAOPC searches its bounds over coarser features (16-30 per input,
# a beam of 3, as its image rows); F-Fidelity and the data randomisation test run their
# evaluation step with a stand-in for the trained copy (its training is a one-off cost, not the
# metric's, and costs the same forwards on any weights).
def _randomised_copy(w: Workload) -> dict[str, Any]:
    from evalkit.metrics.data_randomisation import reinitialised_copy

    return {"randomised_model": reinitialised_copy(w.model, seed=0)}


def _attack_floor(w: Workload, ctx: Context) -> Any:
    from .robustness import attack_floor

    return attack_floor(w, ctx, steps=10)


_NOT_TRAINED = ("; fine_tuned_model='none': the workload's model stands in for the "
                "fine-tuned copy (fine-tuning is the user's one-off cost; the evaluation "
                "costs the same forwards on any weights)")
for _name in ("ABPC", "SRG"):
    SETTINGS[_name] = {m: dataclasses.replace(r, settings=r.settings.replace(
        "morf", "MoRF and LeRF")) for m, r in SETTINGS["AOPC"].items()}
SETTINGS["NAOPC"] = {
    _T: Row(dict(beam_width=3, seed=0), subset=256,
            settings="Saliency, columns (30 features), beam_width=3, morf, black"),
    _S: Row(dict(grouping=25, beam_width=3), settings="Saliency, 25-step windows (20 "
                                                      "features), beam_width=3, morf, black"),
    _K: Row(dict(grouping=4, beam_width=3), settings=f"{_TOKENS}, 4-token windows (16 "
                                                     "features), beam_width=3, morf"),
}
SETTINGS["LogOdds"] = {m: Row({}, settings=f"{what}, fraction=0.2, log-odds from logits")
                       for m, what in ((_T, "Saliency, columns, black"),
                                       (_S, "Saliency, time steps, black"),
                                       (_K, _TOKENS))}
for _name in ("MinimalSubsetDeletion", "MinimalSubsetInsertion"):
    SETTINGS[_name] = {m: Row({}, settings=f"{what}, n_steps=100 (at most one step per "
                                           "feature)")
                       for m, what in ((_T, "Saliency, columns, black"),
                                       (_S, "Saliency, time steps, black"),
                                       (_K, _TOKENS))}
SETTINGS["FFidelity"] = {
    m: Row(dict(fine_tuned_model="none", n_draws=10, seed=0),
           settings=f"{what}, FFid+, alpha 0.1..0.5, beta=0.1, removal_ratio=0.5, 10 draws, "
                    f"correct{_NOT_TRAINED}")
    for m, what in ((_T, "Saliency, columns, black"), (_S, "Saliency, time steps, black"),
                    (_K, _TOKENS))}
SETTINGS["DataRandomisation"] = {
    m: Row({}, make=_randomised_copy,
           settings=f"{what}, Spearman of |a|; a re-initialised copy stands in for the "
                    "permuted-label model (its training is not timed)")
    for m, what in ((_T, "Saliency"), (_S, "Saliency (channel-summed)"),
                    (_K, "token Saliency"))}
SETTINGS["AdversarialTopKIntersection"] = {
    m: Row(dict(k=k, epsilon=0.1, nr_steps=10, seed=0), floor=_attack_floor,
           settings=f"Saliency{what}, top-k attack (softplus beta 10), k={k}, epsilon=0.1 "
                    "(unit-scale inputs), 10 steps, random start",
           note="floor: per step a bare double backward of the smoothed model, per iterate a "
                "bare input gradient, plus the re-explanation and one forward of the N inputs")
    for m, k, what in ((_T, 6, ""), (_S, 50, " (channel-summed)"))}
for _name in ("Coherency", "ADCC"):
    SETTINGS[_name] = {_S: Row({}, settings="Saliency (channel-summed), x * map re-explained "
                                            "by Saliency, softmax")}
SETTINGS["ARCC"] = {_S: Row(dict(seed=0), settings="Saliency (channel-summed), x * map "
                            "re-explained by Saliency, softmax, ROAD confidence combined, "
                            "percentages [20, 40, 60, 80], noise 0.01")}
SETTINGS["IDSDS"] = {_S: Row(dict(patch_size=16),
                             settings="Saliency, 16-step windows (32 per series), single "
                                      "deletions, zero, logits, Spearman; workload model "
                                      "(fine-tuning not timed)")}


# --------------------------------------------------------------------------- building
def _cached(fn: Callable[[Workload], torch.Tensor], w: Workload,
            cache: dict[tuple[str, str, int], torch.Tensor]) -> torch.Tensor:
    key = (getattr(fn, "__name__", "a"), w.name, w.n)
    if key not in cache:
        cache[key] = fn(w)
    return cache[key]


def _attributions(w: Workload, row: Row, cache: dict[tuple[str, str, int], torch.Tensor]
                  ) -> torch.Tensor:
    return getattr(w, row.a) if row.attributions is None else _cached(row.attributions, w,
                                                                         cache)


def _explain_kwargs(w: Workload) -> dict[str, Any]:
    kw: dict[str, Any] = {"method": "Saliency"}
    if w.x.ndim == 3:  # series: summed over channels, as the workload's a
        kw["reduce_channels"] = "sum"
    return kw


def _quantus_args(w: Workload) -> tuple[np.ndarray, np.ndarray]:
    return w.np("x"), w.np("y")


def _agreement(stochastic: bool, out: str, differs: str) -> Callable[[Any, Any], Agreement]:
    def agreement(o: Any, t: Any) -> Agreement:
        o = np.asarray(o, dtype=np.float64)
        t = np.asarray(t, dtype=np.float64)
        if differs:
            return Agreement(None, f"mean ours {np.nanmean(o):.4g} / Quantus "
                                   f"{np.nanmean(t):.4g} ({differs})")
        if out == "set" and o.shape != t.shape:
            return Agreement(None, f"ours {o.size} n values, Quantus {t.size}: Quantus sizes "
                                   "its n range from the image axes")
        if out == "set":
            first = abs(float(o[0]) - float(t[0]))
            return Agreement(first, "first n only: later Quantus pairs the cumulative change "
                                    "with the last step's attribution sum (deviation C24)")
        if stochastic or o.shape != t.shape:
            both = np.isfinite(o).all() and np.isfinite(t).all()
            fmt = (f"mean ours {np.nanmean(o):.4g} / Quantus {np.nanmean(t):.4g}"
                   if o.size and t.size else "")
            why = "random draws differ" if stochastic else (
                f"outputs differ in form (ours {o.shape}, Quantus {t.shape})")
            return Agreement(None, f"{fmt} ({why})" + ("" if both else "; NaN present"))
        return max_abs_diff(o, t, text=out if out == "curves" else "", tol=1e-5)

    return agreement


def modality_build(name: str, modality: str) -> Callable[[Workload, Context], Case]:
    """The ``build(w, ctx)`` of metric ``name`` on a workload of ``modality``."""
    from evalkit.metrics import get

    cls = get(name)
    row = SETTINGS.get(name, {}).get(modality)
    if row is None:
        kw = {"seed": 0} if cls.stochastic else {}
        row = Row(kw, settings="defaults" + (", seed 0" if kw else ""),
                  note="no W4-W6 settings in benchmarks/specs/modalities.py: the "
                       "metric's defaults")
    cache: dict[tuple[str, str, int], torch.Tensor] = {}

    def build(w: Workload, ctx: Context) -> Case:
        import evalkit

        if row.subset is not None and row.subset < w.n:
            w = w.head(row.subset)
        metric = cls(**row.ours, **(row.make(w) if row.make is not None else {}))
        declared = tuple(metric.modalities)
        if modality not in declared:
            raise ValueError(f"{name}({row.ours}) declares {declared}, not {modality}")
        a = _attributions(w, row, cache)
        explainer = None
        call_kw: dict[str, Any] = {"modality": w.modality}
        model: Any = w.model
        if metric.needs_masks:
            call_kw["s"] = w.s if row.masks is None else _cached(row.masks, w, cache)
        if metric.re_explains:
            explainer = TimedExplainer(evalkit.explain, device=ctx.device)
            call_kw["explain_fn"] = explainer
            if row.attributions is _gradient_a:
                call_kw["explain_kwargs"] = {"method": "Gradient", "reduce_channels": None}
            else:
                call_kw["explain_kwargs"] = _explain_kwargs(w)
            # as a user evaluating many metrics would: explain() handed a raw module re-wraps
            # it and probes its output shape on every call
            model = evalkit.wrap_model(w.model)
        elif not metric.needs_model:
            model = None
        if row.call is not None:
            call_kw.update(row.call(w))

        part = None
        if metric.needs_model:
            part = _imputation_part(ctx) if name in _IMPUTED else _rng_part(ctx)
        timed_part = _timed_imputation if name in _IMPUTED else _timed_rng

        def ours() -> Any:
            if part is None:
                scores = metric(model, w.x, w.y, a, **call_kw)
            else:
                with timed_part(part):
                    scores = metric(model, w.x, w.y, a, **call_kw)
            if row.out == "curves":
                return metric.curves_[:, 1:]
            if row.out == "set":
                return metric.curves_[0]
            if row.out == "layers":  # per-layer means, as Quantus' per-layer dict
                # (NumPy, not pandas' drop and mean: this glue is timed with ours)
                frame = metric.layer_scores_
                values = frame.to_numpy(dtype=np.float64)[frame.index != "original"]
                finite = np.isfinite(values)
                return np.where(finite, values, 0.0).sum(1) / np.maximum(finite.sum(1), 1)
            return scores

        quantus_fn = None
        note = row.note
        if isinstance(row.quantus, str):
            note = "; ".join(p for p in (note, f"no Quantus row: {row.quantus}") if p)
        elif row.quantus is not None and ctx.quantus is not None:
            qcls = getattr(ctx.quantus, row.quantus_name or name)
            qkw = dict(row.quantus)
            q = qcls(disable_warnings=True, **qkw)
            xn, yn = _quantus_args(w)
            an = a.detach().cpu().numpy()
            q_call: dict[str, Any] = {}
            if metric.needs_masks:
                q_call["s_batch"] = w.np("s")
                if modality == _T:  # Quantus wants masks (N, 1, ...): the (N, 1, F) view
                    xn, an = xn[:, None], an[:, None]
                    q_call["s_batch"] = q_call["s_batch"][:, None]
                    note = "; ".join(p for p in (note, "Quantus gets the (N, 1, F) view "
                                                 "(it asserts masks with one channel)") if p)
            if metric.re_explains:
                q_call["explain_func"] = ctx.quantus.explain
                q_call["explain_func_kwargs"] = {
                    "method": "Gradient" if row.attributions is _gradient_a else "Saliency"}
            q_model = w.model if metric.needs_model else None
            q_batch = max(w.n, ctx.batch_size) if row.quantus_whole_set else ctx.batch_size

            def quantus_fn() -> Any:
                out = q(model=q_model, x_batch=xn, y_batch=yn, a_batch=an.copy(),
                        device=ctx.quantus_device, batch_size=q_batch, **q_call)
                if isinstance(out, dict):  # MPRT: per-layer scores
                    return np.array([np.mean(v) for k, v in out.items() if k != "original"])
                return np.asarray(out, dtype=np.float64)

        floor: Any = None
        if row.floor is not None:
            floor = row.floor(w, ctx)
        elif explainer is not None:
            floor = _explain_floor(w, ctx, explainer, call_kw["explain_kwargs"])
            note = "; ".join(p for p in (note, "floor: explain() of as many rows as ours "
                                         "explained (one call per model) + bare forward of "
                                         "its other rows") if p)
        elif metric.needs_model:
            floor = "forward"
        settings = row.settings or ", ".join(f"{k}={v!r}" for k, v in row.ours.items()
                                             if k != "seed")
        if metric.re_explains and "Saliency" not in settings and "Gradient" not in settings:
            settings = "Saliency, " + settings
        if row.subset is not None:
            settings = f"first {w.n} samples; {settings}"
        return Case(ours=ours, quantus=quantus_fn,
                    agreement=row.agreement or _agreement(bool(metric.stochastic), row.out,
                                                          row.differs),
                    floor=floor, settings=settings, note=note, explainer=explainer,
                    written_floor=floor == "forward", part=part,
                    drawn_floor=floor == "forward" and name not in _IMPUTED,
                    required=(required_work(name, modality, metric, w, row, cache)
                              if floor == "forward" else
                              _randomisation_work(name, metric, w, a, call_kw)
                              if explainer is not None and row.floor is None else None))

    return build


# --------------------------------------------------------------------------- required work
@dataclass(frozen=True)
class Ranking:
    """How a metric's definition reads the order of the attributions at a row's settings.

    ``window``: the order is of windows of that many time steps (tokens), each window's
    attributions summed, instead of the row's features (columns, time steps, channel values,
    tokens); ``split(metric, G)``: the positions (ascending order) at which the order is
    needed split, e.g. the top-k boundary, or the boundary of each removal step that takes
    several features; None: the full order."""

    window: int | None = None
    split: Callable[[Any, int], tuple[int, ...]] | None = None


def _order(window: int | None = None) -> Ranking:
    """The full order (one feature, or one window, per removal step; or ranks for Spearman)."""
    return Ranking(window)


def _blocks(step: int) -> Ranking:
    """Removal steps of ``step`` features: only each feature's step, from the top."""
    return Ranking(None, lambda _m, g: tuple(sorted(g - i for i in range(step, g, step))))


def _tops(sizes: Callable[[Any, int], list[int]]) -> Ranking:
    """Only the top-k sets, for the sizes k the metric reads (nested where several)."""
    return Ranking(None, lambda m, g: tuple(sorted({g - k for k in sizes(m, g) if 0 < k < g})))


def _half_up(v: float) -> int:
    return math.floor(v + 0.5)


def _sensitivity_n_sizes(m: Any, g: int) -> list[int]:
    step = m.features_in_step
    return [step * (i + 1) for i in range(int(m.n_max_percentage * g // step))]


def _road_split(m: Any, g: int) -> tuple[int, ...]:
    """ROAD's MoRF and LeRF sets at its percentages: a split at each from either end."""
    ks = {_half_up(p / 100 * g) for p in m._percentages}
    return tuple(sorted({k for k in ks if 0 < k < g} | {g - k for k in ks if 0 < k < g}))


def _quantile_split(m: Any, g: int) -> tuple[int, ...]:
    """AUCSE's masks at quantiles of each sample's attributions: a split at each quantile."""
    return tuple(sorted({int(q * g) for q in m._quantiles if 0 < int(q * g) < g}))


_ORDER_ROWS = {_T: _order(), _S: _blocks(10), _K: _order()}
#: metric -> modality -> how the metric's definition at the row's settings (:data:`SETTINGS`)
#: reads the order of the attributions; a metric or modality absent here is not ranked
#: (its score uses the attribution values, not their order: FaithfulnessCorrelation's random
#: subsets, Infidelity, Completeness, the soft rationale metrics, AverageDrop and kin,
#: NonSensitivity's single features; FaithfulnessEstimate with one feature per step: a
#: Pearson correlation of each feature's attribution with its removal's effect, whatever
#: order the features are removed in)
RANKINGS: dict[str, dict[str, Ranking]] = {
    "PixelFlipping": {_T: _order(), _S: _blocks(25), _K: _order()},
    "Deletion": dict(_ORDER_ROWS),  # W5: 50 steps of the 500 time steps
    "Insertion": {_S: _blocks(10)},
    "AOPC": dict(_ORDER_ROWS), "ABPC": dict(_ORDER_ROWS), "SRG": dict(_ORDER_ROWS),
    "RegionPerturbation": {_T: _order(), _S: _order(window=10), _K: _order(window=4)},
    "Selectivity": {_T: _order(), _S: _order(window=10), _K: _order(window=4)},
    "IROF": {_T: _order(), _S: _order(window=50)},  # W5: 10 windows of 50 time steps
    "Monotonicity": {_T: _order(), _S: _blocks(25), _K: _order()},
    "MonotonicityCorrelation": {_T: _order(), _S: _blocks(50)},  # Spearman; W5 blocks
    "FaithfulnessEstimate": {_S: _blocks(25)},  # W5: the 25-value steps follow the order
    "SensitivityN": {m: _tops(_sensitivity_n_sizes) for m in (_T, _S, _K)},
    "MinimalSubsetDeletion": {_T: _order(), _S: _blocks(5), _K: _order()},
    "MinimalSubsetInsertion": {_T: _order(), _S: _blocks(5), _K: _order()},
    "NAOPC": {_T: _order(), _S: _order(window=25), _K: _order(window=4)},
    "ROAD": {_S: Ranking(None, _road_split)},
    "AUCSE": {_S: Ranking(None, _quantile_split)},
    "IDSDS": {_S: _order(window=16)},  # Spearman of the windows' attributions
    "LogOdds": {m: _tops(lambda m, g: [max(1, _half_up(m.fraction * g))])
                for m in (_T, _S, _K)},
    **{name: {m: _tops(lambda m, g: [max(1, _half_up(p / 100 * g)) for p in m.percentages])
              for m in (_T, _S, _K)}
       for name in ("ERASERComprehensiveness", "ERASERSufficiency")},
    "FFidelity": {m: _tops(lambda m, g: [max(1, math.ceil(a * g - 1e-9)) for a in m._alphas])
                  for m in (_T, _S, _K)},
    **{name: {m: _tops(lambda m, g: [int(m._resolve_k(torch.tensor([g]))[0])])
                   for m in (_T, _S)}
       for name in ("PGI", "PGU")},
    "Consistency": {m: _tops(lambda m, g: [m.n if m.n is not None else 5])
                    for m in (_T, _S)},
}

#: metrics whose scored quantity is whether the prediction (argmax) is kept: no softmax is
#: needed for it, whatever the metric's ``softmax``
_ARGMAX_SCORED = frozenset({"MinimalSubsetDeletion", "MinimalSubsetInsertion", "Consistency"})


def _scoring(name: str, metric: Any) -> str | None:
    """How each forward row's outputs are scored at the metric's settings (a key of
    :data:`benchmarks.harness.SCORERS`), None where the logits are read as they are."""
    if name == "LogOdds":  # log-odds from the logits: a log-softmax of every row
        return "log_softmax"
    if (name in _ARGMAX_SCORED or getattr(metric, "quantity", None) == "correct"
            or (name == "ROAD" and metric.score == "accuracy")):
        return "argmax"
    softmax = metric.softmax if metric.softmax is not None else type(metric).default_softmax
    return "softmax" if softmax else None


def _ranked_values(w: Workload, row: Row, window: int | None,
                   cache: dict[tuple[str, str, int], torch.Tensor]) -> torch.Tensor:
    """(N, G) values whose order a ranking reads: the row's attributions per feature, or
    summed over windows of ``window`` steps of the last axis (the last window shorter)."""
    a = _attributions(w, row, cache).detach()
    if window is None:
        return a.reshape(a.shape[0], -1).contiguous()
    t = a.shape[-1]
    pad = -t % window
    flat = a.reshape(a.shape[0], -1, t).sum(1)
    if pad:
        flat = torch.nn.functional.pad(flat, (0, pad))
    return flat.reshape(a.shape[0], -1, window).sum(2).contiguous()


def required_work(name: str, modality: str, metric: Any, w: Workload, row: Row,
                  cache: dict[tuple[str, str, int], torch.Tensor] | None = None
                  ) -> RequiredWork | None:
    """The steps that ``metric``'s definition requires on this row (:data:`RANKINGS`,
    :func:`_scoring`), for the required-work floor; None where there are none."""
    ranking = RANKINGS.get(name, {}).get(modality)
    ranked, kth = None, None
    if ranking is not None:
        values = _ranked_values(w, row, ranking.window, {} if cache is None else cache)
        if name == "Consistency":  # the top-n of |a|
            values = values.abs()
        kth = None if ranking.split is None else ranking.split(metric, values.shape[1])
        if kth != ():  # () : every feature in the one set read: no order needed
            ranked = values
        else:
            kth = None
    work = RequiredWork(ranked=ranked, kth=kth if ranked is not None else None,
                        score=_scoring(name, metric))
    return work if work.steps else None


def _randomisation_work(name: str, metric: Any, w: Workload, a: torch.Tensor,
                        call_kw: dict[str, Any]) -> RequiredWork | None:
    """A randomisation row's required work besides its explain() floor (the model copy and
    re-initialisation, the similarity or entropy of the maps, the off-target labels:
    :func:`benchmarks.specs.randomisation.required_randomisation_work`); None for the other
    re-explaining rows."""
    from .randomisation import required_randomisation_work
    from .robustness import REQUIRED_ROBUSTNESS, required_robustness_work

    if "explain_kwargs" not in call_kw:
        return None
    if name in REQUIRED_ROBUSTNESS:  # the noise, the distances and the predicted classes
        return required_robustness_work(name, metric, w, a)
    return required_randomisation_work(name, metric, w, a, call_kw["explain_kwargs"])


def _rng_part(ctx: Context) -> PartTimer:
    return PartTimer("keyed random draws", ctx.device)


@contextlib.contextmanager
def _timed_rng(part: PartTimer) -> Iterator[None]:
    """Time evalkit's keyed random streams (``evalkit._rng``: the draws of each row hashed from
    its key, and the keys hashed from each sample's values) into ``part`` while ours runs, and
    count the numbers drawn (``part.values``, for the drawn floor): a cost that no model floor
    covers, large where the model is tiny (W4)."""
    from evalkit import _rng

    counts: dict[str, Callable[[Any], int] | None] = {
        "_fill": lambda out: out.numel(), "sample_keys": None}
    saved = {name: getattr(_rng, name) for name in counts}
    try:
        for name, fn in saved.items():
            setattr(_rng, name, part.wrap(fn, counts[name]))
        yield
    finally:
        for name, fn in saved.items():
            setattr(_rng, name, fn)


#: metrics whose rows are imputed (a mask-dependent fill such as ROAD's linear imputation):
#: their part is the imputation, keyed noise included, not the draws alone
_IMPUTED = frozenset({"ROAD"})


def _imputation_part(ctx: Context) -> PartTimer:
    return PartTimer("imputation", ctx.device)


@contextlib.contextmanager
def _timed_imputation(part: PartTimer) -> Iterator[None]:
    """Time the imputation of the perturbed rows (``evalkit.metrics._removal.impute``, which
    every window row of an imputing metric calls) into ``part`` while ours runs."""
    from evalkit.metrics import _removal

    saved = _removal.impute
    try:
        _removal.impute = part.wrap(saved)
        yield
    finally:
        _removal.impute = saved


def _explain_floor(w: Workload, ctx: Context, explainer: TimedExplainer,
                   explain_kwargs: dict[str, Any]) -> Callable[[int, int], Any]:
    """The floor of a re-explaining metric, as the image robustness rows: ``explain()`` (the
    same method and options) of as many of the workload's rows as ours explained, in one call
    per model ours explained with (the randomisation metrics explain with several models, whose
    rows no implementation can explain in one call; the rows are split evenly between the
    calls), plus a bare forward of the other rows it issued."""
    from ..harness import forward_floor

    def make(rows: int, _calls: int) -> Callable[[], None]:
        import evalkit

        explained = explainer.rows
        reps = -(-explained // w.n)
        stack = w.x.repeat(reps, *([1] * (w.x.ndim - 1)))[:explained]
        y_stack = w.y.repeat(reps)[:explained]
        models = max(1, min(explainer.models, explained))
        parts = [(stack[explained * i // models: explained * (i + 1) // models],
                  y_stack[explained * i // models: explained * (i + 1) // models])
                 for i in range(models)]
        wrapper = evalkit.wrap_model(w.model)
        fwd = forward_floor(w, max(0, rows - explained), ctx.batch_size)

        def run() -> None:
            for xs, ys in parts if explained else ():
                evalkit.explain(wrapper, xs, ys, **explain_kwargs)
            if fwd is not None:
                fwd()

        return run

    return make


def _dispatch(old: Callable[[Workload, Context], Case] | None,
              new: dict[str, Callable[[Workload, Context], Case]]
              ) -> Callable[[Workload, Context], Case]:
    def build(w: Workload, ctx: Context) -> Case:
        if w.name in new:
            return new[w.name](w, ctx)
        if old is None:
            raise KeyError(f"no build for {w.name}")
        return old(w, ctx)

    return build


def extend_specs(specs: list[Any]) -> list[Any]:
    """``specs`` with the W4-W6 rows added: each registered metric declaring a workload's
    modality runs there, through its spec (or a new one named after it)."""
    from evalkit.metrics import list_metrics

    from . import Spec, metric_needs_spec

    frame = list_metrics()
    out = list(specs)
    for name, family, modalities in zip(frame["name"], frame["family"], frame["modalities"],
                                        strict=True):
        new: dict[str, Callable[[Workload, Context], Case]] = {}
        skip: list[tuple[str, str]] = []
        for wname, modality in MODALITY_WORKLOADS.items():
            if modality not in tuple(modalities):
                continue
            reason = SKIPS.get(name, {}).get(modality)
            if reason is not None:
                skip.append((wname, reason))
            else:
                new[wname] = modality_build(str(name), modality)
        if not new and not skip:
            continue
        idx = next((i for i, s in enumerate(out) if s.name == _ATTACH.get(name, name)), None)
        if idx is None and name not in _OWN_SPEC:
            idx = next((i for i, s in enumerate(out) if s.registered == name), None)
        if idx is None:
            # a metric that needs a spec and has none is for check_spec_coverage to report;
            # one tagged benchmark_spec = False (no image rows) still gets its W4-W6 rows
            if name in _OWN_SPEC or not metric_needs_spec(str(name)):
                out.append(Spec(str(name), str(family), _dispatch(None, new),
                                workloads=tuple(new), skip=tuple(skip)))
            continue
        spec = out[idx]
        out[idx] = dataclasses.replace(
            spec, build=_dispatch(spec.build, new), workloads=spec.workloads + tuple(new),
            skip=spec.skip + tuple(skip))
    return out
