"""Faithfulness specs.

Quantus counts every channel value as a feature and ranks them by the attribution broadcast to
the input's shape; evalkit's default feature is a whole pixel. The Quantus-comparable entries
therefore use either per-channel attributions with ``grouping="channel_values"`` (the same
ordering, the same removals) or metrics whose features are pixel patches in both libraries
(RegionPerturbation, Selectivity, Infidelity); entries with our default grouping and no Quantus
equivalent are listed on their own.

Quantus' ROAD and IROF crash on RGB inputs with 1-channel attributions (deviation C13; IROF asserts
the mask shape equals the input shape), so their Quantus-comparable entries run on a 1-channel view
of the workload: the channel mean, fed to the workload's model through a module that repeats it
to 3 channels (the forward counter and the floor see the same model).

W2 (ResNet-18, 224x224, N=16, CPU) settings are reduced where the default would need thousands
of forward rows per sample; every entry states its settings.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from evalkit import forward_cache
from evalkit.metrics import (
    AOPC,
    IROF,
    ROAD,
    AverageDrop,
    AverageGain,
    AverageIncrease,
    Deletion,
    ERASERComprehensiveness,
    ERASERSufficiency,
    FaithfulnessCorrelation,
    FaithfulnessEstimate,
    Infidelity,
    Insertion,
    Monotonicity,
    MonotonicityCorrelation,
    PixelFlipping,
    RegionPerturbation,
    Selectivity,
    SensitivityN,
    SoftComprehensiveness,
    SoftSufficiency,
    Sufficiency,
)
from evalkit.perturb.imputation import NoisyLinearImputer

from ..harness import (
    Agreement,
    Case,
    Context,
    ForwardCount,
    PartTimer,
    forward_floor,
    max_abs_diff,
)
from ..workloads import Workload
from . import Spec

# channel values removed per step: 28 on W1 (84 steps of 2352); 12544 on W2 (12 steps of
# 150528). Quantus requires H*W % features_in_step == 0 (784 and 50176).
_PF_STEP = {"W1": 28, "W2": 12544}


def _step(w: Workload) -> int:
    return _PF_STEP.get(w.name, 28)


def _quantus_call(ctx: Context, metric: Any, model: nn.Module, x: np.ndarray, y: np.ndarray,
                  a: np.ndarray, **call_kw: Any):
    def call():
        return metric(model=model, x_batch=x, y_batch=y, a_batch=a,
                      device=ctx.quantus_device, batch_size=ctx.batch_size, **call_kw)

    return call


class _Repeat3(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, *x.shape[2:])


class _OneChannel:
    """A 1-channel view of a workload: inputs averaged over channels, the same model."""

    def __init__(self, w: Workload) -> None:
        self.x = w.x.mean(1, keepdim=True)
        self.model = nn.Sequential(_Repeat3(), w.model).eval()
        self.y = w.y
        self.a = w.a
        self.x_np = self.x.detach().cpu().numpy()


def _curves_agree(text: str = "curves"):
    def agreement(o: np.ndarray, t: np.ndarray) -> Agreement:
        ag = max_abs_diff(o, t, text=text, tol=1e-5)
        if ag.value is not None and ag.value > 1e-5:
            ag.text += " (the others: tied attributions ranked in another order)"
        return ag

    return agreement


# --------------------------------------------------------------------------- removal curves
def _pixel_flipping(w: Workload, ctx: Context) -> Case:
    fis = _step(w)
    ours_metric = PixelFlipping(features_in_step=fis, grouping="channel_values")

    def ours() -> np.ndarray:
        ours_metric(w.model, w.x, w.y, w.a_channels)
        return ours_metric.curves_[:, 1:]  # drop the unperturbed point Quantus does not have

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.PixelFlipping(features_in_step=fis, return_auc_per_sample=False,
                                      disable_warnings=True)
        quantus_fn = _quantus_call(ctx, q, w.model, w.np("x"), w.np("y"), w.np("a_channels"))
        inner = quantus_fn
        quantus_fn = lambda: np.asarray(inner())  # noqa: E731

    n_feat = int(np.prod(w.row_shape))
    return Case(
        ours=ours, quantus=quantus_fn, agreement=_curves_agree(),
        settings=f"per-channel Saliency, channel values, features_in_step={fis} "
                 f"({-(-n_feat // fis)} steps), black, softmax",
        note="curves compared (AUC conventions differ: ours trapezoid over the fraction removed "
             "from the unperturbed input, Quantus unit spacing)",
    )


_PF_PIXELS = {"W1": dict(features_in_step=28), "W2": dict(features_in_step=14, grouping=16)}


def _pixel_flipping_pixels(w: Workload, ctx: Context) -> Case:
    kw = _PF_PIXELS.get(w.name, dict(features_in_step=28))
    metric = PixelFlipping(**kw)

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a)

    grouping = kw.get("grouping", "pixels")
    what = f"{grouping}x{grouping} patches" if isinstance(grouping, int) else "pixels"
    return Case(
        ours=ours,
        settings=f"1-channel Saliency, {what}, features_in_step={kw['features_in_step']}",
        note="our default grouping; no Quantus equivalent (removing whole RGB pixels needs "
             "features_in_step = 3k, rejected by its H*W divisibility assert)",
    )


_RISE_STEPS = {"W1": 98, "W2": 12}


def _rise(cls: type):
    def build(w: Workload, ctx: Context) -> Case:
        steps = _RISE_STEPS.get(w.name, 98)
        metric = cls(n_steps=steps)

        def ours() -> np.ndarray:
            return metric(w.model, w.x, w.y, w.a)

        canvas = "zero" if cls is Deletion else "RISE blur (sigma 5, 11 px)"
        return Case(ours=ours, settings=f"1-channel Saliency, pixels, {steps} steps, "
                                        f"{canvas}, softmax",
                    note="not in Quantus")

    return build


_REGION = {"W1": dict(patch_size=4, regions_evaluation=49),
           "W2": dict(patch_size=16, regions_evaluation=12)}


def _region_perturbation(w: Workload, ctx: Context) -> Case:
    kw = _REGION.get(w.name, _REGION["W1"])
    metric = RegionPerturbation(**kw)

    def ours() -> np.ndarray:
        metric(w.model, w.x, w.y, w.a)
        return metric.curves_[:, 1:]

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.RegionPerturbation(disable_warnings=True, **kw)
        inner = _quantus_call(ctx, q, w.model, w.np("x"), w.np("y"), w.np("a"))
        quantus_fn = lambda: np.asarray(inner())  # noqa: E731
    return Case(ours=ours, quantus=quantus_fn, agreement=_curves_agree("drop curves"),
                settings=f"1-channel Saliency, {kw['patch_size']}x{kw['patch_size']} patches, "
                         f"morf, {kw['regions_evaluation']} regions, black, softmax",
                note="drop curves compared; score: AUC over the fraction of regions")


_SELECTIVITY = {"W1": 4, "W2": 56}


def _selectivity(w: Workload, ctx: Context) -> Case:
    p = _SELECTIVITY.get(w.name, 4)
    metric = Selectivity(patch_size=p)

    def ours() -> np.ndarray:
        metric(w.model, w.x, w.y, w.a)
        return metric.curves_[:, 1:]

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.Selectivity(patch_size=p, disable_warnings=True)
        inner = _quantus_call(ctx, q, w.model, w.np("x"), w.np("y"), w.np("a"))
        quantus_fn = lambda: np.asarray(inner())  # noqa: E731
    n_p = (w.row_shape[1] // p) * (w.row_shape[2] // p)
    return Case(ours=ours, quantus=quantus_fn, agreement=_curves_agree(),
                settings=f"1-channel Saliency, {p}x{p} patches ({n_p} steps), black, softmax")


_IROF_SEG = {"W1": 100, "W2": 16}


def _irof(w: Workload, ctx: Context) -> Case:
    one = _OneChannel(w)
    seg = _IROF_SEG.get(w.name, 100)
    metric = IROF(perturb_baseline=0.0, segmentation_kwargs={"n_segments": seg})

    def ours() -> np.ndarray:
        return metric(one.model, one.x, one.y, one.a)

    quantus_fn = None
    if ctx.quantus is not None and seg == 100:
        q = ctx.quantus.IROF(perturb_baseline=0.0, return_aggregate=False,
                             disable_warnings=True)
        inner = _quantus_call(ctx, q, one.model, one.x_np, w.np("y"), w.np("a"))
        quantus_fn = lambda: np.asarray(inner())  # noqa: E731

    def agreement(o: np.ndarray, t: np.ndarray) -> Agreement:
        return Agreement(None, "scales differ (ours 1 - AUC in [0, 1], Quantus G - unit-spacing "
                               "AUC) and SLIC runs on min-max scaled images here; identical "
                               "curves with identical segments are tested in "
                               "tests/test_faithfulness_quantus.py")

    return Case(ours=ours, quantus=quantus_fn, agreement=agreement,
                settings=f"1-channel view (channel mean), SLIC n_segments={seg}, baseline 0, "
                         "softmax",
                note="Quantus' IROF fails on RGB inputs (mask shape assert), hence the 1-channel "
                     "view; SLIC is a per-image CPU loop in both")


# --------------------------------------------------------------------------- correlations
def _faithfulness_estimate(w: Workload, ctx: Context) -> Case:
    fis = _step(w)
    metric = FaithfulnessEstimate(features_in_step=fis, grouping="channel_values")

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a_channels)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.FaithfulnessEstimate(features_in_step=fis, disable_warnings=True)
        inner = _quantus_call(ctx, q, w.model, w.np("x"), w.np("y"), w.np("a_channels"))
        quantus_fn = lambda: np.asarray(inner())  # noqa: E731
    n_feat = int(np.prod(w.row_shape))
    return Case(ours=ours, quantus=quantus_fn,
                agreement=lambda o, t: max_abs_diff(o, t, tol=1e-5),
                settings=f"per-channel Saliency, channel values, features_in_step={fis} "
                         f"({-(-n_feat // fis)} blocks), black, logits")


_FC = {"W1": dict(nr_runs=100, subset_size=224), "W2": dict(nr_runs=10, subset_size=224)}


def _faithfulness_correlation(w: Workload, ctx: Context) -> Case:
    kw = _FC.get(w.name, _FC["W1"])
    metric = FaithfulnessCorrelation(grouping="channel_values", seed=0, **kw)

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a_channels)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.FaithfulnessCorrelation(return_aggregate=False, disable_warnings=True,
                                                **kw)
        inner = _quantus_call(ctx, q, w.model, w.np("x"), w.np("y"), w.np("a_channels"))
        quantus_fn = lambda: np.asarray(inner())  # noqa: E731

    def agreement(o: np.ndarray, t: np.ndarray) -> Agreement:
        return Agreement(None, f"random subsets differ (mean ours {np.nanmean(o):.3f}, Quantus "
                               f"{np.nanmean(t):.3f}); equal to 1e-5 with the same subsets in "
                               "tests/test_faithfulness_quantus.py")

    return Case(ours=ours, quantus=quantus_fn, agreement=agreement,
                settings=f"per-channel Saliency, channel values, nr_runs={kw['nr_runs']}, "
                         f"subset_size={kw['subset_size']}, black, logits")


_SN = {"W1": dict(features_in_step=28), "W2": dict(features_in_step=12544)}


def _sensitivity_n_morf(w: Workload, ctx: Context) -> Case:
    kw = _SN.get(w.name, _SN["W1"])
    # Quantus takes n up to 80 % of H*W even when its features are the C*H*W channel values
    channels = w.row_shape[0]
    metric = SensitivityN(subsets="morf", grouping="channel_values", normalise=False,
                          n_max_percentage=0.8 / channels, **kw)

    def ours() -> np.ndarray:
        metric(w.model, w.x, w.y, w.a_channels)
        return metric.curves_[0]

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.SensitivityN(return_aggregate=False, normalise=False,
                                     disable_warnings=True, **kw)
        inner = _quantus_call(ctx, q, w.model, w.np("x"), w.np("y"), w.np("a_channels"))
        quantus_fn = lambda: np.asarray(inner())  # noqa: E731

    def agreement(o: np.ndarray, t: np.ndarray) -> Agreement:
        if o.shape != t.shape:
            return Agreement(None, f"shapes differ {o.shape} vs {t.shape}")
        first = abs(float(o[0]) - float(t[0]))
        return Agreement(first, "first n only: later Quantus pairs the cumulative change with "
                                "the last step's attribution sum (deviation C24)")

    return Case(ours=ours, quantus=quantus_fn, agreement=agreement,
                settings=f"set-level (subsets='morf'), per-channel Saliency, channel values, "
                         f"features_in_step={kw['features_in_step']}, n up to 80 % of H*W "
                         "(Quantus' rule), black, softmax, normalise=False",
                note="ours forwards only the n <= 80 % steps it uses; Quantus forwards the whole "
                     "curve")


_SN_RANDOM = {"W1": dict(features_in_step=56, nr_subsets=10),
              "W2": dict(features_in_step=10035, nr_subsets=4)}


def _sensitivity_n_random(w: Workload, ctx: Context) -> Case:
    kw = _SN_RANDOM.get(w.name, _SN_RANDOM["W1"])
    metric = SensitivityN(seed=0, **kw)

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a)

    return Case(ours=ours, settings=f"per-sample (random subsets), 1-channel Saliency, pixels, "
                                    f"features_in_step={kw['features_in_step']}, "
                                    f"nr_subsets={kw['nr_subsets']}, black, softmax",
                note="the paper's per-sample form; no Quantus equivalent")


_MONO = {"W1": 28, "W2": 12544}


def _monotonicity(w: Workload, ctx: Context) -> Case:
    fis = _MONO.get(w.name, 28)
    metric = Monotonicity(features_in_step=fis, grouping="channel_values")
    # Quantus forwards one step of all N samples per call, whatever its batch_size: ours and
    # both floors use N-row chunks too, so that only the rows differ (on W1 the runner's own
    # 445-row chunks run slower here after Quantus' NumPy work: the allocator then maps and
    # faults in fresh pages for every chunk)
    chunk = w.n

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a_channels, batch_size=chunk)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.Monotonicity(features_in_step=fis, disable_warnings=True)
        inner = _quantus_call(ctx, q, w.model, w.np("x"), w.np("y"), w.np("a_channels"))
        quantus_fn = lambda: np.asarray(inner(), dtype=float)  # noqa: E731

    def agreement(o: np.ndarray, t: np.ndarray) -> Agreement:
        return Agreement(None, f"by design: Quantus re-applies the baseline (deviation C2) and "
                               f"says {np.mean(t):.0%} monotonic, ours restores the features "
                               f"({np.mean(o):.0%})")

    def quantus_floor(count: ForwardCount):
        # what Quantus forwards because of deviation C2: black images (0 where x >= 0), one call of
        # the whole batch per step, whatever its batch_size
        per_call = max(1, count.rows // max(1, count.calls))
        return forward_floor(w, count.rows, per_call, fill=0.0)

    return Case(ours=ours, quantus=quantus_fn, agreement=agreement,
                floor=lambda rows, calls: forward_floor(w, rows, chunk),
                settings=f"per-channel Saliency (abs), channel values, features_in_step={fis}, "
                         f"black, softmax; {chunk}-row chunks (Quantus' per-step call)",
                note="not the same computation: because of deviation C2 Quantus forwards black "
                     "rows throughout, which the CPU runs faster than image rows (max-pooling a "
                     "constant image never mispredicts a branch), so the floor ratio is the "
                     "like-for-like measure here",
                quantus_floor=quantus_floor)


_MC = {"W1": dict(nr_samples=10, features_in_step=196),
       "W2": dict(nr_samples=2, features_in_step=25088)}


def _monotonicity_correlation(w: Workload, ctx: Context) -> Case:
    kw = _MC.get(w.name, _MC["W1"])
    metric = MonotonicityCorrelation(grouping="channel_values", seed=0, **kw)

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a_channels)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.MonotonicityCorrelation(disable_warnings=True, **kw)
        inner = _quantus_call(ctx, q, w.model, w.np("x"), w.np("y"), w.np("a_channels"))
        quantus_fn = lambda: np.asarray(inner())  # noqa: E731

    def agreement(o: np.ndarray, t: np.ndarray) -> Agreement:
        return Agreement(None, "random draws differ; Quantus' uniform baseline is one value per "
                               "sample (deviation C27), ours one per element; equal to 1e-5 with a "
                               "deterministic baseline in tests/test_faithfulness_quantus.py")

    n_feat = int(np.prod(w.row_shape))
    steps = -(-n_feat // kw["features_in_step"])
    return Case(ours=ours, quantus=quantus_fn, agreement=agreement,
                settings=f"per-channel Saliency (abs), channel values, features_in_step="
                         f"{kw['features_in_step']} ({steps} blocks), nr_samples="
                         f"{kw['nr_samples']}, uniform, softmax")


# --------------------------------------------------------------------------- infidelity
_INF = {"W1": ([4], 10), "W2": ([56], 3)}


def _infidelity_patches(w: Workload, ctx: Context) -> Case:
    sizes, repeats = _INF.get(w.name, ([4], 10))
    metric = Infidelity(perturb_func="patches", perturb_patch_sizes=sizes,
                        n_perturb_samples=repeats)

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.Infidelity(perturb_patch_sizes=sizes, n_perturb_samples=repeats,
                                   disable_warnings=True)
        inner = _quantus_call(ctx, q, w.model, w.np("x"), w.np("y"), w.np("a"))
        quantus_fn = lambda: np.asarray(inner())  # noqa: E731

    def agreement(o: np.ndarray, t: np.ndarray) -> Agreement:
        ag = max_abs_diff(o, t)
        if ag.value is not None:
            rel = ag.value / max(1e-12, float(np.abs(t).max()))
            ag.text = f"relative {rel:.1g}"
        return ag

    return Case(ours=ours, quantus=quantus_fn, agreement=agreement,
                settings=f"Quantus' deterministic variant: 1-channel Saliency, "
                         f"{sizes[0]}x{sizes[0]} patches cumulative, black, logits, "
                         f"n_perturb_samples={repeats}",
                note="Quantus repeats the identical deterministic pass n_perturb_samples times; "
                     "ours runs it once")


_INF_G = {"W1": 10, "W2": 4}


def _infidelity_gaussian(w: Workload, ctx: Context) -> Case:
    k = _INF_G.get(w.name, 10)
    metric = Infidelity(n_perturb_samples=k, noise_std=0.1, optimal_scaling=True, seed=0)

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a)

    return Case(ours=ours, settings=f"the paper's form: Gaussian I ~ N(0, 0.1^2), "
                                    f"n_perturb_samples={k}, optimal scaling, logits",
                note="no Quantus equivalent (its Infidelity is the patch variant); equal to "
                     "captum.metrics.infidelity on the same noise in the tests")


# --------------------------------------------------------------------------- ROAD
_ROAD_PCT = {"W1": [10, 20, 30, 40, 50, 60, 70, 80, 90], "W2": [20, 40, 60, 80]}


def _timed_road(ctx: Context, **kw: Any) -> tuple[ROAD, PartTimer]:
    """ROAD with its default imputer (noise 0.01) timed: the exact sparse solves are CPU work
    that the model floor does not cover."""
    timer = PartTimer("imputation", ctx.device)
    imputer = NoisyLinearImputer(0.01)
    imputer.fill = timer.wrap(imputer.fill)
    return ROAD(imputer=imputer, **kw), timer


def _road_quantus(w: Workload, ctx: Context) -> Case:
    one = _OneChannel(w)
    pct = _ROAD_PCT.get(w.name, _ROAD_PCT["W1"])
    metric, part = _timed_road(ctx, percentages=pct, order="morf", score="accuracy", seed=0)

    def ours() -> np.ndarray:
        metric(one.model, one.x, one.y, one.a)
        return metric.morf_curves_.mean(0)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.ROAD(percentages=pct, disable_warnings=True)
        inner = _quantus_call(ctx, q, one.model, one.x_np, w.np("y"), w.np("a"))
        quantus_fn = lambda: np.asarray(list(inner().values()))  # noqa: E731

    def agreement(o: np.ndarray, t: np.ndarray) -> Agreement:
        ag = max_abs_diff(o, t)
        ag.text = ("mean MoRF accuracy per percentage; the noise draws differ (equal without "
                   "noise in the tests)")
        return ag

    return Case(ours=ours, quantus=quantus_fn, agreement=agreement,
                settings="1-channel view (channel mean), 1-channel Saliency, MoRF, accuracy, "
                         f"percentages {pct}, noise 0.01",
                note="Quantus fails on RGB with 1-channel attributions (deviation C13), hence the "
                     "1-channel view", part=part)


def _road_rgb(w: Workload, ctx: Context) -> Case:
    pct = _ROAD_PCT.get(w.name, _ROAD_PCT["W1"])
    metric, part = _timed_road(ctx, percentages=pct, seed=0)

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a)

    return Case(ours=ours,
                settings="RGB, 1-channel Saliency, combined (LeRF - MoRF)/2, accuracy, "
                         f"percentages {pct}, noise 0.01",
                note="our defaults; Quantus cannot run this (deviation C13)", part=part)


# --------------------------------------------------------------------------- other
def _confidence(cls: type):
    def build(w: Workload, ctx: Context) -> Case:
        metric = cls()

        def ours() -> np.ndarray:
            return metric(w.model, w.x, w.y, w.a)

        return Case(ours=ours, settings="1-channel Saliency min-max normalised, x * map, "
                                        "softmax",
                    note="not in Quantus (pytorch-grad-cam loops over images on the CPU)")

    return build


_SUFF = {"W1": 0.6, "W2": 0.8}


def _sufficiency(w: Workload, ctx: Context) -> Case:
    th = _SUFF.get(w.name, 0.6)
    metric = Sufficiency(threshold=th, normalise=False)

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.Sufficiency(threshold=th, normalise=False, disable_warnings=True)
        inner = _quantus_call(ctx, q, w.model, w.np("x"), w.np("y"), w.np("a"))
        quantus_fn = lambda: np.asarray(inner())  # noqa: E731

    def agreement(o: np.ndarray, t: np.ndarray) -> Agreement:
        defined = np.isfinite(o)
        ag = max_abs_diff(o[defined], t[defined])
        ag.text = (f"{int(defined.sum())}/{len(o)} samples with neighbours compared; the others "
                   "are NaN here, 0 in Quantus")
        return ag

    return Case(ours=ours, quantus=quantus_fn, agreement=agreement,
                settings=f"set-level, 1-channel Saliency (abs), seuclidean, threshold {th}, "
                         "normalise=False",
                note="Quantus works on its batch chunk; both see the whole set here")


_SUITE_REGION = {"W1": dict(patch_size=4, regions_evaluation=49),
                 "W2": dict(patch_size=56, regions_evaluation=16)}


def _suite(w: Workload) -> list:
    fis = _PF_PIXELS.get(w.name, {}).get("features_in_step", 28)
    grouping = _PF_PIXELS.get(w.name, {}).get("grouping", "pixels")
    reg = _SUITE_REGION.get(w.name, _SUITE_REGION["W1"])
    return [
        PixelFlipping(features_in_step=fis, grouping=grouping),
        Deletion(features_in_step=fis, perturb_baseline="black", grouping=grouping),
        SensitivityN(features_in_step=fis, subsets="morf", grouping=grouping),
        FaithfulnessEstimate(features_in_step=fis * 4, grouping=grouping, softmax=True),
        RegionPerturbation(**reg),
        Selectivity(patch_size=reg["patch_size"]),
        AverageDrop(), AverageIncrease(), AverageGain(),
    ]


def _suite_case(shared: bool):
    def build(w: Workload, ctx: Context) -> Case:
        suite = _suite(w)

        def ours() -> list:
            if shared:
                with forward_cache():
                    return [m(w.model, w.x, w.y, w.a) for m in suite]
            return [m(w.model, w.x, w.y, w.a) for m in suite]

        names = ", ".join(type(m).__name__ for m in suite)
        return Case(ours=ours,
                    settings=("one forward_cache() around " if shared else "separately: ")
                    + names,
                    note="PixelFlipping/Deletion/SensitivityN walk the same MoRF curve, "
                         "RegionPerturbation/Selectivity the same patch curve, the confidence "
                         "metrics the same x * map; all share f(x)" if shared else
                         "the same metrics without the cache")

    return build


SPECS = [
    Spec("PixelFlipping", "faithfulness", _pixel_flipping, smoke=True),
    Spec("PixelFlipping[pixels]", "faithfulness", _pixel_flipping_pixels),
    Spec("Deletion", "faithfulness", _rise(Deletion)),
    Spec("Insertion", "faithfulness", _rise(Insertion)),
    Spec("RegionPerturbation", "faithfulness", _region_perturbation),
    Spec("Selectivity", "faithfulness", _selectivity),
    Spec("IROF[1-channel]", "faithfulness", _irof),
    Spec("FaithfulnessEstimate", "faithfulness", _faithfulness_estimate),
    Spec("FaithfulnessCorrelation", "faithfulness", _faithfulness_correlation),
    Spec("SensitivityN[morf]", "faithfulness", _sensitivity_n_morf),
    Spec("SensitivityN[random]", "faithfulness", _sensitivity_n_random),
    Spec("Monotonicity", "faithfulness", _monotonicity),
    Spec("MonotonicityCorrelation", "faithfulness", _monotonicity_correlation),
    Spec("Infidelity[patches]", "faithfulness", _infidelity_patches),
    Spec("Infidelity[gaussian]", "faithfulness", _infidelity_gaussian),
    Spec("ROAD[1-channel]", "faithfulness", _road_quantus),
    Spec("ROAD", "faithfulness", _road_rgb),
    Spec("AverageDrop", "faithfulness", _confidence(AverageDrop)),
    Spec("AverageIncrease", "faithfulness", _confidence(AverageIncrease)),
    Spec("AverageGain", "faithfulness", _confidence(AverageGain)),
    Spec("Sufficiency", "faithfulness", _sufficiency),
    Spec("FaithfulnessSuite[separate]", "faithfulness", _suite_case(False), metric=""),
    Spec("FaithfulnessSuite[forward_cache]", "faithfulness", _suite_case(True), metric=""),
]


# --------------------------------------------------------------------------- text (issue 19)
# AOPC and the ERASER/soft rationale metrics are defined for token ids too; on the image
# workloads they run on pixels (W2: 16x16 patches), which no Quantus metric computes.
_AOPC = {"W1": dict(features_in_step=28), "W2": dict(features_in_step=14, grouping=16)}


def _aopc(w: Workload, ctx: Context) -> Case:
    kw = _AOPC.get(w.name, _AOPC["W1"])
    metric = AOPC(**kw)

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a)

    grouping = kw.get("grouping", "pixels")
    what = f"{grouping}x{grouping} patches" if isinstance(grouping, int) else "pixels"
    return Case(ours=ours, settings=f"1-channel Saliency, {what}, morf, "
                                    f"features_in_step={kw['features_in_step']}, black, softmax",
                note="not in Quantus (RegionPerturbation(score='aopc') over square patches is)")


def _rationale(cls: type, **fixed: Any):
    def build(w: Workload, ctx: Context) -> Case:
        kw = {**fixed, **({"grouping": 16} if w.name == "W2" else {})}
        metric = cls(**kw)

        def ours() -> np.ndarray:
            return metric(w.model, w.x, w.y, w.a)

        what = "16x16 patches" if w.name == "W2" else "pixels"
        return Case(ours=ours, settings=f"1-channel Saliency, {what}, "
                                        f"{', '.join(f'{k}={v!r}' for k, v in fixed.items())}"
                                        f"{', ' if fixed else ''}softmax",
                    note="not in Quantus (text metrics; on images the rationale is pixels)")

    return build


SPECS += [
    Spec("AOPC", "faithfulness", _aopc),
    Spec("ERASERComprehensiveness", "faithfulness", _rationale(ERASERComprehensiveness)),
    Spec("ERASERSufficiency", "faithfulness", _rationale(ERASERSufficiency)),
    Spec("SoftComprehensiveness", "faithfulness",
         _rationale(SoftComprehensiveness, nr_samples=1, seed=0)),
    Spec("SoftSufficiency", "faithfulness", _rationale(SoftSufficiency, nr_samples=1, seed=0)),
]


# --------------------------------------------------------------------------- issue 23
# Log-odds, Minimal Subset Deletion / Insertion and the performance information curves; none
# is in Quantus. W2 ranks 16x16 patches for the removal metrics (196 features); SIC and AIC
# reveal pixels as in the XRAI paper, and their time includes the WebP encoding of every
# distinct revealed image (work on the CPU that the forward floor does not count).
def _issue23(name: str, settings: str, w1: dict[str, Any], w2: dict[str, Any]):
    def build(w: Workload, ctx: Context) -> Case:
        from evalkit import metrics as _metrics

        kw = w2 if w.name == "W2" else w1
        metric = getattr(_metrics, name)(**kw)
        part = stats = None
        if name in ("SIC", "AIC"):
            # the information axis: PIL's lossless WebP encoding (quality 100, the paper's
            # settings) of each distinct revealed image, on the CPU: the definition's own cost,
            # at the codec's speed, so floor + encoding bounds any implementation
            part = PartTimer("WebP encoding", ctx.device)
            metric._encode = part.wrap(metric._encode, count=lambda _size: 1)

            def stats() -> dict[str, Any]:
                return {"images_encoded": part.values}

        def ours() -> np.ndarray:
            return metric(w.model, w.x, w.y, w.a)

        what = ", ".join(f"{k}={v!r}" for k, v in kw.items())
        return Case(ours=ours, settings=f"1-channel Saliency, {settings}"
                                        f"{', ' + what if what else ''}",
                    part=part, part_is_floor=part is not None, stats=stats,
                    note="not in Quantus")

    return build


SPECS += [
    Spec("LogOdds", "faithfulness",
         _issue23("LogOdds", "pixels, fraction=0.2, black, log-odds from logits", {},
                  {"grouping": 16})),
    Spec("MinimalSubsetDeletion", "faithfulness",
         _issue23("MinimalSubsetDeletion", "black, n_steps=100", {}, {"grouping": 16})),
    Spec("MinimalSubsetInsertion", "faithfulness",
         _issue23("MinimalSubsetInsertion", "black, n_steps=100", {}, {"grouping": 16})),
    Spec("SIC", "faithfulness",
         _issue23("SIC", "pixels, XRAI thresholds, blur canvas, WebP, softmax", {}, {})),
    Spec("AIC", "faithfulness",
         _issue23("AIC", "pixels, XRAI thresholds, blur canvas, WebP", {}, {})),
]


# --------------------------------------------------------------------------- issue 23
# ABPC and SRG walk the MoRF and LeRF curves of AOPC's plan (AOPC's steps); NAOPC searches the
# bounds over orderings of 7x7 (W1: 16 features) or 56x56 patches (W2: 16 features) with a
# beam of 3 (about 3 * 16^2 forwards per input). None is in Quantus.
from evalkit.metrics import ABPC, NAOPC, SRG  # noqa: E402

_TWO_CURVES = _AOPC


def _two_curves(cls: type):
    def build(w: Workload, ctx: Context) -> Case:
        kw = _TWO_CURVES.get(w.name, _TWO_CURVES["W1"])
        metric = cls(**kw)

        def ours() -> np.ndarray:
            return metric(w.model, w.x, w.y, w.a)

        grouping = kw.get("grouping", "pixels")
        what = f"{grouping}x{grouping} patches" if isinstance(grouping, int) else "pixels"
        return Case(ours=ours, settings=f"1-channel Saliency, {what}, MoRF and LeRF, "
                                        f"features_in_step={kw['features_in_step']}, black, "
                                        "softmax",
                    note="not in Quantus")

    return build


_NAOPC = {"W1": dict(grouping=7, beam_width=3), "W2": dict(grouping=56, beam_width=3)}


def _naopc(w: Workload, ctx: Context) -> Case:
    kw = _NAOPC.get(w.name, _NAOPC["W1"])
    metric = NAOPC(**kw)

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a)

    return Case(ours=ours, settings=f"1-channel Saliency, {kw['grouping']}x{kw['grouping']} "
                                    f"patches (16 features), beam_width={kw['beam_width']}, "
                                    "morf, black, softmax",
                note="not in Quantus")


SPECS += [
    Spec("ABPC", "faithfulness", _two_curves(ABPC)),
    Spec("SRG", "faithfulness", _two_curves(SRG)),
    Spec("NAOPC", "faithfulness", _naopc),
]


# F-Fidelity: the evaluation step only. Fine-tuning is a one-off training outside the timed
# call (evalkit.metrics.faithfulness.fine_tune_with_random_masking); an untrained deep copy
# stands in for the fine-tuned model, which costs the same forwards.
from evalkit.metrics import FFidelity  # noqa: E402


def _ffidelity(w: Workload, ctx: Context) -> Case:
    import copy

    from ..harness import count_forwards

    fine_tuned = copy.deepcopy(w.model)
    metric = FFidelity(fine_tuned_model=fine_tuned, n_draws=10, seed=0)
    # the runner counts the workload model's forwards only; the masked rows go through the
    # copy, so count those here and add them to the floor (same architecture, same cost)
    copy_rows = [0]

    def ours() -> np.ndarray:
        with count_forwards(fine_tuned) as count:
            out = metric(w.model, w.x, w.y, w.a)
        copy_rows[0] = count.rows
        return out

    def floor(rows: int, _calls: int):
        return forward_floor(w, rows + copy_rows[0], ctx.batch_size)

    return Case(ours=ours, floor=floor,
                settings="1-channel Saliency, pixels, FFid+, alpha 0.1..0.5, beta=0.1, "
                         "10 draws, black, correct; fine-tuning not timed (a copy of the "
                         "model stands in)",
                note="not in Quantus; fwd rows count the user's model only, the floor adds "
                     "the copy's masked rows")


SPECS += [Spec("FFidelity", "faithfulness", _ffidelity)]

# --------------------------------------------------------------------------- issue 23
# Coherency, ADCC and ARCC re-explain the input masked by the min-max normalised map (x * e)
# with Saliency summed over channels (the workload's `a`), through a TimedExplainer for the
# explainer share. Floor: explain() on those N masked inputs plus the bare forward rows ours
# issued besides the explainer's (ADCC: Average Drop's N + N; ARCC: ROAD's imputed rows, whose
# sparse solves are timed as a part). pytorch-grad-cam 1.5.7 ships Coherency, Complexity and
# ARCC, but its package imports torchvision: where it imports (a venv with torchvision), the
# ARCC row times its ARCC as the reference (`_gradcam_arcc`); elsewhere the row says why not
# (tests/test_adcc.py checks against its metrics module, imported on its own).
from evalkit.metrics import ADCC, ARCC, Coherency  # noqa: E402

_ARCC_PERCENTAGES = [20, 40, 60, 80]


def _unit_cams(a: torch.Tensor) -> torch.Tensor:
    """The 1-channel maps (N, 1, H, W) min-max normalised per sample, (N, H, W)."""
    flat = a.reshape(a.shape[0], -1)
    lo = flat.amin(1).reshape(-1, 1, 1)
    span = (flat.amax(1) - flat.amin(1)).reshape(-1, 1, 1)
    return (a[:, 0] - lo) / span


def _gradcam_arcc(w: Workload, wrapper: Any, explain_kwargs: dict[str, Any]
                  ) -> tuple[str, Any, Any] | str:
    """pytorch-grad-cam's ARCC on the workload, as ``(name, reference, agreement)`` for a
    :class:`Case`, or why it cannot run here.

    Same inputs and settings as ours: the min-max normalised maps as its ``grayscale_cams``,
    the class-y softmax probability as its targets (``ClassifierOutputSoftmaxTarget``), the
    same explainer (evalkit's Saliency summed over channels) as its ``base_method``, ROAD at
    percentiles [20, 40, 60, 80] with its noisy linear imputer (noise 0.01). Its noise comes
    from torch's global generator, seeded 0 before each call inside ``fork_rng``.
    Two differences of definition, which the agreement reports: the noise streams (ours keys
    each sample's noise), and how many pixels a percentage removes (ours floor(G p / 100);
    its pixels at or above ``np.percentile``'s interpolated threshold, one more at some
    percentages). The agreement check therefore also runs both sides without noise, and ours
    once more with its percentages set to remove the counts pytorch-grad-cam removes.
    """
    import contextlib
    import importlib.metadata

    try:
        from pytorch_grad_cam.metrics import road as gradcam_road
        from pytorch_grad_cam.metrics.arcc import ARCC as GradCamARCC
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
        version = importlib.metadata.version("grad-cam")
    except Exception as exc:  # absent, or its torchvision does not import beside this torch
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    import evalkit

    name = f"pytorch-grad-cam {version}"
    cams = _unit_cams(w.a).to(torch.float32).cpu().numpy()
    targets = [ClassifierOutputSoftmaxTarget(int(c)) for c in w.y]
    categories = w.y

    def base_method(input_tensor: torch.Tensor, targets: Any) -> np.ndarray:
        a = evalkit.explain(wrapper, input_tensor, categories[: input_tensor.shape[0]],
                            **explain_kwargs)
        return a[:, 0].detach().cpu().numpy()

    reference_metric = GradCamARCC(base_method, road_percentiles=list(_ARCC_PERCENTAGES))

    def reference() -> np.ndarray:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return reference_metric(w.x, cams, targets, w.model)

    @contextlib.contextmanager
    def gradcam_noise(noise: float):
        init = gradcam_road.NoisyLinearImputer.__init__
        saved = init.__defaults__
        init.__defaults__ = (noise, *saved[1:])
        try:
            yield
        finally:
            init.__defaults__ = saved

    def removed_counts() -> list[int] | None:
        """The pixel counts pytorch-grad-cam's ROAD removes, if the same for every sample and
        both orders (ties in a map can make them differ), else None."""
        counts = set()
        for cam in cams.reshape(len(cams), -1):
            morf = sorted(int((cam >= np.percentile(cam, q)).sum()) for q in _ARCC_PERCENTAGES)
            lerf = sorted(int((1 - cam >= np.percentile(1 - cam, q)).sum())
                          for q in _ARCC_PERCENTAGES)
            if morf != lerf:
                return None
            counts.add(tuple(morf))
        return list(counts.pop()) if len(counts) == 1 else None

    def ours_without_noise(percentages: list[float]) -> np.ndarray:
        metric = ARCC(percentages=percentages, noise=0.0)
        return metric(wrapper, w.x, w.y, w.a, explain_fn=evalkit.explain,
                      explain_kwargs=explain_kwargs)

    def agreement(ours_out: Any, ref_out: Any) -> Agreement:
        with gradcam_noise(0.0):
            ref_still = reference()
        still = max_abs_diff(ours_without_noise(list(_ARCC_PERCENTAGES)), ref_still)
        parts = ["noise 0.01 at the row's settings, drawn from other streams (torch's global "
                 "generator there, per-sample keys here)",
                 f"noise 0 on both sides: max abs diff {still.value:.2g}"]
        counts = removed_counts()
        g = cams[0].size
        if counts is None:
            parts.append("ties make its removed-pixel counts differ between samples")
        elif counts != [int(np.floor(g * p / 100 + 1e-9)) for p in _ARCC_PERCENTAGES]:
            matched = max_abs_diff(ours_without_noise([100 * k / g for k in counts]),
                                   ref_still)
            parts.append(f"{matched.value:.2g} with ours removing its pixel counts "
                         f"({', '.join(map(str, counts))} of {g}; ours floor(G p / 100))")
        return max_abs_diff(ours_out, ref_out, text="; ".join(parts))

    return name, reference, agreement


def _cam_composite(cls: type):
    def build(w: Workload, ctx: Context) -> Case:
        import evalkit

        from ..harness import TimedExplainer

        part = None
        if cls is ARCC:
            metric = cls(percentages=list(_ARCC_PERCENTAGES), seed=0)
            part = PartTimer("imputation", ctx.device)
            for imputer in metric._road._imputers.values():
                imputer.fill = part.wrap(imputer.fill)
        else:
            metric = cls()
        te = TimedExplainer(evalkit.explain, device=ctx.device)
        explain_kwargs = {"method": "Saliency", "reduce_channels": "sum"}
        wrapper = evalkit.wrap_model(w.model)  # its output shape is probed once, not per call

        def ours() -> np.ndarray:
            return metric(wrapper, w.x, w.y, w.a, explain_fn=te, explain_kwargs=explain_kwargs)

        def floor(rows: int, _calls: int):
            masked = w.x * _unit_cams(w.a).unsqueeze(1).to(w.x.dtype)
            # the rows counted include the explainer's own N forwards, which explain() repeats
            fwd = forward_floor(w, max(0, rows - w.n), ctx.batch_size)

            def run() -> None:
                evalkit.explain(wrapper, masked, w.y, **explain_kwargs)
                if fwd is not None:
                    fwd()

            return run

        settings = "1-channel Saliency, x * map re-explained by Saliency, softmax"
        note = ("not in Quantus; pytorch-grad-cam 1.5.7's package does not import beside this "
                "torch (torchvision)")
        reference: dict[str, Any] = {}
        if cls is ARCC:
            settings += ", ROAD confidence combined, percentages [20, 40, 60, 80], noise 0.01"
            got = _gradcam_arcc(w, wrapper, explain_kwargs)
            if isinstance(got, str):
                note = f"not in Quantus; no reference: pytorch-grad-cam does not import ({got})"
            else:
                name, ref, agreement = got
                reference = dict(reference=ref, reference_name=name,
                                 reference_agreement=agreement)
                note = (f"not in Quantus; reference: {name}'s ARCC on the same maps, targets "
                        "(class-y softmax) and explainer (its base_method: the same Saliency)")
        return Case(ours=ours, floor=floor, settings=settings, explainer=te, part=part,
                    note=note, **reference)

    return build


SPECS += [
    Spec("Coherency", "faithfulness", _cam_composite(Coherency)),
    Spec("ADCC", "faithfulness", _cam_composite(ADCC)),
    Spec("ARCC", "faithfulness", _cam_composite(ARCC)),
]


# --------------------------------------------------------------------------- issue 23: IDSDS
# IDSDS deletes each patch of a grid on its own: 4x4 patches on W1 (49 rows per input), 56x56
# on W2 (16 rows per input; the paper-sized 16x16 grid of 196 patches would be 3152 ResNet-18
# rows). The protocol's step 1, fine-tuning a copy on patch deletions, is not timed (nor run):
# the scoring costs the same on any weights, so it runs on the workload's model and maps.
from evalkit.metrics import IDSDS  # noqa: E402

_IDSDS = {"W1": dict(patch_size=4), "W2": dict(patch_size=56)}


def _idsds(w: Workload, ctx: Context) -> Case:
    kw = _IDSDS.get(w.name, _IDSDS["W1"])
    metric = IDSDS(**kw)

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a)

    p = kw["patch_size"]
    return Case(ours=ours, settings=f"1-channel Saliency, {p}x{p} patches, single deletions, "
                                    "zero, logits, Spearman; workload model (fine-tuning not "
                                    "timed)",
                note="not in Quantus")


SPECS += [Spec("IDSDS", "faithfulness", _idsds)]
