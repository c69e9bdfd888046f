"""Randomisation specs: MPRT and SmoothMPRT with Saliency against Quantus.

Both metrics are explanation-bound: the floor is the bare forward+backward (input gradient) of
every explanation they need, at the runner's batch size:

* MPRT with ``a`` given: one explanation of the batch per randomised layer, L x N rows (our
  default computes no self-comparison of the un-randomised model; Quantus does, +N rows);
* SmoothMPRT with ``nr_samples`` K: the smoothed reference and every layer, (L + 1) x N x K
  rows (Quantus does the same amount of explaining, in K calls of the batch per model).

The per-layer similarities cannot agree exactly: the random weights differ (evalkit seeds each
layer from the seed and its name; Quantus reseeds the global RNG with ``seed + 1`` before every
layer), batch-norm layers are re-initialised differently (evalkit keeps their running
statistics, Quantus resets them), and SmoothMPRT's noise differs. The agreement column shows the
per-layer mean similarities side by side for orientation. Exact agreement with Quantus' seeding
reproduced is a test (tests/test_randomisation.py::TestQuantusOracle).
"""

from __future__ import annotations

import numpy as np

from evalkit.metrics import MPRT, SmoothMPRT
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
             "model (+N); weights differ (per-layer seeds, batch-norm statistics kept)",
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
             "(with quantus.explain, whatever explain_func says: bug C6); noise and weights "
             "differ",
    )


SPECS = [
    Spec("MPRT", "randomisation", _mprt),
    Spec("SmoothMPRT", "randomisation", _smooth_mprt),
]
