"""Randomisation specs: MPRT, SmoothMPRT, EfficientMPRT and RandomLogit with Saliency against
Quantus.

Both metrics are explanation-bound: the floor is the bare forward+backward (input gradient) of
every explanation they need, at the runner's batch size:

* MPRT with ``a`` given: one explanation of the batch per randomised layer, L x N rows (our
  default computes no self-comparison of the un-randomised model; Quantus does, +N rows);
* SmoothMPRT with ``nr_samples`` K: the smoothed reference and every layer, (L + 1) x N x K
  rows (Quantus does the same amount of explaining, in K calls of the batch per model).
* EfficientMPRT (``skip_layers=True``, both defaults): one explanation of the fully randomised
  model, N rows (Quantus also re-explains the original model, +N);
* RandomLogit: one explanation of every sample for another class, N rows.

The per-layer similarities cannot agree exactly: the random weights differ (evalkit seeds each
layer from the seed and its name; Quantus reseeds the global RNG with ``seed + 1`` before every
layer), batch-norm layers are re-initialised differently (evalkit draws random weights and
keeps their running statistics, Quantus resets them to constants), and SmoothMPRT's noise
differs. The agreement column shows the
per-layer mean similarities side by side for orientation. Exact agreement with Quantus' seeding
reproduced is a test (tests/test_randomisation.py::TestQuantusOracle).
"""

from __future__ import annotations

import numpy as np
import torch

from evalkit.metrics import MPRT, EfficientMPRT, RandomLogit, SmoothMPRT
from evalkit.models import randomisable_layers

from ..harness import Agreement, Case, Context, forward_backward_floor
from ..workloads import Workload
from . import Spec

_SMOOTH_SAMPLES = 10


#: evalkit's default explainer with these options: Quantus' "Saliency" (|gradient| summed over
#: channels, the workload's ``a``)
_SALIENCY = {"method": "Saliency", "reduce_channels": "sum"}


def _layer_means(frame) -> np.ndarray:
    return frame.drop(index="original", errors="ignore").mean(axis=1).to_numpy()


def _quantus_layer_means(scores: dict) -> np.ndarray:
    return np.array([np.mean(v) for k, v in scores.items() if k != "original"])


def _agreement(ours: np.ndarray, theirs: np.ndarray) -> Agreement:
    if ours.shape != theirs.shape:
        return Agreement(None, f"layer counts differ: ours {ours.shape}, Quantus {theirs.shape}")
    pairs = ", ".join(f"{o:.2f}/{t:.2f}" for o, t in zip(ours, theirs, strict=True))
    return Agreement(None, f"per-layer mean Spearman ours/Quantus: {pairs} (different random "
                           "weights, see note)")


def _mprt(w: Workload, ctx: Context) -> Case:
    n_layers = len(randomisable_layers(w.model))
    metric = MPRT()

    def ours() -> np.ndarray:
        metric(w.model, w.x, w.y, w.a, explain_kwargs=_SALIENCY)
        return _layer_means(metric.layer_scores_)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.MPRT(disable_warnings=True, display_progressbar=False)
        x, y, a = w.np("x"), w.np("y"), w.np("a")

        def quantus_fn() -> np.ndarray:
            scores = q(model=w.model, x_batch=x, y_batch=y, a_batch=a.copy(),
                       explain_func=ctx.quantus.explain,
                       explain_func_kwargs={"method": "Saliency"},
                       device=ctx.quantus_device, batch_size=ctx.batch_size)
            return _quantus_layer_means(scores)

    return Case(
        ours=ours, quantus=quantus_fn, agreement=_agreement,
        floor=lambda rows, calls: forward_backward_floor(w, n_layers * w.n, ctx.batch_size),
        settings=f"Saliency (|grad| summed over channels), top_down cascade over {n_layers} "
                 "layers, Spearman, a given",
        note="floor: L x N bare input gradients; Quantus also re-explains the un-randomised "
             "model (+N); weights differ (per-layer seeds, random batch-norm weights, statistics "
             "kept)",
    )


def _smooth_mprt(w: Workload, ctx: Context) -> Case:
    n_layers = len(randomisable_layers(w.model))
    k = _SMOOTH_SAMPLES
    metric = SmoothMPRT(nr_samples=k)

    def ours() -> np.ndarray:
        metric(w.model, w.x, w.y, w.a, explain_kwargs=_SALIENCY)
        return _layer_means(metric.layer_scores_)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.SmoothMPRT(nr_samples=k, disable_warnings=True,
                                   display_progressbar=False)
        x, y, a = w.np("x"), w.np("y"), w.np("a")

        def quantus_fn() -> np.ndarray:
            scores = q(model=w.model, x_batch=x, y_batch=y, a_batch=a.copy(),
                       explain_func=ctx.quantus.explain,
                       explain_func_kwargs={"method": "Saliency"},
                       device=ctx.quantus_device, batch_size=ctx.batch_size)
            return _quantus_layer_means(scores)

    rows = (n_layers + 1) * w.n * k
    return Case(
        ours=ours, quantus=quantus_fn, agreement=_agreement,
        floor=lambda _rows, _calls: forward_backward_floor(w, rows, ctx.batch_size),
        settings=f"Saliency, nr_samples={k}, bottom_up over {n_layers} layers, Spearman, "
                 "smoothed reference",
        note=f"floor: (L + 1) x N x {k} bare input gradients; Quantus does the same explaining "
             "(with quantus.explain, whatever explain_func says: deviation C6); noise and weights "
             "differ",
    )


def _mean_scores_agreement(what: str):
    def agreement(ours: np.ndarray, theirs: np.ndarray) -> Agreement:
        o = np.asarray(ours, dtype=float)
        t = np.asarray(theirs, dtype=float)
        return Agreement(None, f"mean score ours {np.nanmean(o):.3g} / Quantus "
                               f"{np.nanmean(t):.3g} ({what})")

    return agreement


def _efficient_mprt(w: Workload, ctx: Context) -> Case:
    n_layers = len(randomisable_layers(w.model))
    metric = EfficientMPRT()

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a, explain_kwargs=_SALIENCY)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.EfficientMPRT(disable_warnings=True, display_progressbar=False)
        x, y, a = w.np("x"), w.np("y"), w.np("a")

        def quantus_fn() -> np.ndarray:
            return np.asarray(q(model=w.model, x_batch=x, y_batch=y, a_batch=a.copy(),
                                explain_func=ctx.quantus.explain,
                                explain_func_kwargs={"method": "Saliency"},
                                device=ctx.quantus_device, batch_size=ctx.batch_size),
                              dtype=np.float64)

    return Case(
        ours=ours, quantus=quantus_fn,
        agreement=_mean_scores_agreement("different random weights; Quantus re-explains the "
                                         "original model"),
        floor=lambda rows, calls: forward_backward_floor(w, w.n, ctx.batch_size),
        settings=f"Saliency, skip_layers=True (fully randomised model, {n_layers} layers "
                 "bottom_up), 100 bins",
        note="floor: N bare input gradients (the randomised model's explanations); Quantus "
             "also re-explains the original model (+N)",
    )


def _random_logit(w: Workload, ctx: Context) -> Case:
    metric = RandomLogit()
    with torch.inference_mode():
        n_classes = int(w.model(w.x[:1]).shape[1])

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a, explain_kwargs=_SALIENCY)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.RandomLogit(num_classes=n_classes, disable_warnings=True)
        x, y, a = w.np("x"), w.np("y"), w.np("a")

        def quantus_fn() -> np.ndarray:
            return np.asarray(q(model=w.model, x_batch=x, y_batch=y, a_batch=a.copy(),
                                explain_func=ctx.quantus.explain,
                                explain_func_kwargs={"method": "Saliency"},
                                device=ctx.quantus_device, batch_size=ctx.batch_size),
                              dtype=np.float64)

    return Case(
        ours=ours, quantus=quantus_fn,
        agreement=_mean_scores_agreement("the random classes differ; SSIM with a 2-D window "
                                         "(ours) vs on the flattened maps (Quantus)"),
        floor=lambda rows, calls: forward_backward_floor(w, w.n, ctx.batch_size),
        settings=f"Saliency, SSIM, normalised, num_classes={n_classes} (Quantus' 1000 default "
                 "crashes on W1, deviation C11)",
        note="floor: N bare input gradients (the other class's explanations)",
    )


SPECS = [
    # issue 7: MPRT and SmoothMPRT with Saliency at least 2x faster than Quantus 0.6
    Spec("MPRT", "randomisation", _mprt, speedup_targets=(("W1", 2.0), ("W2", 2.0))),
    # (L + 1) x N x K explanations per call: 14 x 256 x 10 = 35,840 gradients on W1 and
    # 42 x 4 x 10 = 1,680 ResNet-18 gradients on W2, for each side and the floor
    Spec("SmoothMPRT", "randomisation", _smooth_mprt, subset=(("W1", 64), ("W2", 1)),
         speedup_targets=(("W1", 2.0), ("W2", 2.0))),
    Spec("EfficientMPRT", "randomisation", _efficient_mprt),
    Spec("RandomLogit", "randomisation", _random_logit),
]


# --------------------------------------------------------------------------- data randomisation
def _data_randomisation(w: Workload, ctx: Context) -> Case:
    from evalkit.metrics import DataRandomisation
    from evalkit.metrics.data_randomisation import reinitialised_copy

    # training on permuted labels is the user's one-off cost, not the metric's: a re-initialised
    # copy (same architecture, same explanation cost) stands in for the permuted-label model
    other = reinitialised_copy(w.model, seed=0)
    metric = DataRandomisation(randomised_model=other)

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, w.a, explain_kwargs=_SALIENCY)

    return Case(
        ours=ours, floor=lambda rows, calls: forward_backward_floor(w, w.n, ctx.batch_size),
        settings="Saliency, Spearman of |a|; a re-initialised copy stands in for the "
                 "permuted-label model (its training is not timed); no Quantus equivalent",
        note="floor: N bare input gradients (the other model's explanations)",
    )


SPECS += [Spec("DataRandomisation", "randomisation", _data_randomisation)]
