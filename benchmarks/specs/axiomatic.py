"""Axiomatic specs: Completeness, NonSensitivity and InputInvariance.

* Completeness: 2N forward rows (the input and the all-baseline input) in one runner call;
  Quantus issues the same rows. Both sides return pass/fail; ours uses a tolerance, Quantus exact
  float equality on normalised attributions (deviation C3), so the agreement column compares the
  residuals' inputs instead: our sum(a) - (f(x) - f(x')) is shown with Quantus' pass rate.
* NonSensitivity: N x (G + 1) forward rows in one runner call. Quantus 0.6.0 only works with
  ``features_in_step=1`` over channel values (other steps fail with a broadcast error): one
  predict call of the batch per channel value, 2352 on W1 (its unreleased ``main`` is quadratic
  in N). The Quantus-comparable entry therefore runs those settings on the first 8 samples of
  W1 (18,816 rows each side; the scores agree exactly); on W2 they would need 150,528 rows per
  image. ``NonSensitivity[patches]`` times our usual setting (square patches, all of W1, part
  of W2) on its own.
* InputInvariance: one explanation of the shifted input with the bias-compensated copy plus
  2N forward rows for the compensation check. Quantus assumes ``modules[1]`` is a biased
  convolution: on W1 that is a Sequential and on W2 a bias-free conv, so it fails on both (the
  error is recorded in the table).
"""

from __future__ import annotations

import numpy as np

import evalkit
from evalkit.metrics import Completeness, InputInvariance, NonSensitivity

from ..harness import (
    Agreement,
    Case,
    Context,
    TimedExplainer,
    forward_backward_floor,
    forward_floor,
    max_abs_diff,
)
from ..workloads import Workload
from . import Spec


def _pass_rate_agreement(ours: np.ndarray, theirs: np.ndarray) -> Agreement:
    o = np.asarray(ours, dtype=float)
    t = np.asarray(theirs, dtype=float)
    if o.shape != t.shape:
        return Agreement(None, f"shapes differ: ours {o.shape}, Quantus {t.shape}")
    return Agreement(None, f"pass rate ours {o.mean():.2f}, Quantus {t.mean():.2f}")


def _completeness(w: Workload, ctx: Context) -> Case:
    # integrated gradients with a zero baseline, checked against the zero baseline
    a = evalkit.explain(w.model, w.x, w.y, method="IntegratedGradients", n_steps=32,
                        baselines=0.0 * w.x).detach()
    metric = Completeness(perturb_baseline="zero")

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, a)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.Completeness(perturb_baseline=0.0, disable_warnings=True)
        x, y, an = w.np("x"), w.np("y"), a.cpu().numpy()

        def quantus_fn() -> np.ndarray:
            return np.asarray(q(model=w.model, x_batch=x, y_batch=y, a_batch=an,
                                device=ctx.quantus_device, batch_size=ctx.batch_size),
                              dtype=np.float64)

    return Case(ours=ours, quantus=quantus_fn, agreement=_pass_rate_agreement,
                floor="forward",
                settings="IntegratedGradients (32 steps, zero baseline) per channel, "
                         "baseline zero, rtol 5%",
                note="Quantus: exact equality after max-normalisation (deviation C3), so it never "
                     "passes")


_NS_SUBSET = 8


def _non_sensitivity(w: Workload, ctx: Context) -> Case:
    n = min(w.n, _NS_SUBSET)
    x, y, a = w.x[:n], w.y[:n], w.a[:n]
    metric = NonSensitivity(grouping="channel_values", features_in_step=1, normalise=False)

    def ours() -> np.ndarray:
        return metric(w.model, x, y, a)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.NonSensitivity(features_in_step=1, normalise=False,
                                       disable_warnings=True)
        xn, yn, an = w.np("x")[:n], w.np("y")[:n], w.np("a")[:n]

        def quantus_fn() -> np.ndarray:
            return np.asarray(q(model=w.model, x_batch=xn, y_batch=yn, a_batch=an,
                                device=ctx.quantus_device, batch_size=ctx.batch_size),
                              dtype=np.float64)

    d = int(np.prod(w.row_shape))
    return Case(ours=ours, quantus=quantus_fn, agreement=lambda o, t: max_abs_diff(o, t),
                floor="forward",
                settings=f"first {n} of {w.n} samples; 1-channel Saliency (abs), every channel "
                         f"value a feature ({d}), features_in_step=1, black, eps=1e-5, "
                         "normalise=False, softmax",
                note="Quantus 0.6.0 runs only with features_in_step=1 (one predict call of the "
                     "batch per channel value)")


_NS_PATCHES = {"W1": (4, None), "W2": (32, 8)}


def _non_sensitivity_patches(w: Workload, ctx: Context) -> Case:
    patch, subset = _NS_PATCHES.get(w.name, (4, None))
    n = min(w.n, subset or w.n)
    x, y, a = w.x[:n], w.y[:n], w.a[:n]
    metric = NonSensitivity(grouping=patch, normalise=False)

    def ours() -> np.ndarray:
        return metric(w.model, x, y, a)

    n_groups = (w.x.shape[-1] // patch) * (w.x.shape[-2] // patch)
    sub = f"first {n} of {w.n} samples; " if n < w.n else ""
    return Case(ours=ours, floor="forward",
                settings=f"{sub}1-channel Saliency, {patch}x{patch} patches ({n_groups} groups), "
                         "black baseline, eps=1e-5",
                note="ours only: Quantus 0.6.0 cannot group features (see NonSensitivity)")


def _input_invariance(w: Workload, ctx: Context) -> Case:
    explainer = TimedExplainer(
        lambda m, x, y: evalkit.explain(m, x, y, method="Gradient", reduce_channels=None),
        w.device)
    a = evalkit.explain(w.model, w.x, w.y, method="Gradient").detach()
    metric = InputInvariance(input_shift=-1.0)

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, a, explain_fn=explainer)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.InputInvariance(input_shift=-1, disable_warnings=True)
        x, y, an = w.np("x"), w.np("y"), a.cpu().numpy()

        def quantus_fn() -> np.ndarray:
            return np.asarray(q(model=w.model, x_batch=x, y_batch=y, a_batch=an,
                                explain_func=ctx.quantus.explain,
                                explain_func_kwargs={"method": "Gradient", "reduce_axes": None},
                                device=ctx.quantus_device, batch_size=ctx.batch_size),
                              dtype=np.float64)

    def floor(rows: int, calls: int):
        grads = forward_backward_floor(w, w.n, ctx.batch_size)
        fwd = forward_floor(w, 2 * w.n, ctx.batch_size)

        def run() -> None:
            grads()
            fwd()

        return run

    return Case(ours=ours, quantus=quantus_fn, agreement=_pass_rate_agreement, floor=floor,
                settings="Gradient (per channel), input shift -1, first-layer bias compensated",
                note="floor: N input gradients + 2N forward rows (the compensation check)",
                explainer=explainer)


SPECS = [
    Spec("Completeness", "axiomatic", _completeness),
    Spec("NonSensitivity", "axiomatic", _non_sensitivity, workloads=("W1",),
         skip=(("W2", "Quantus' only working setting (one feature per channel value) needs "
                      "150,528 forward rows per image; see NonSensitivity[patches]"),)),
    Spec("NonSensitivity[patches]", "axiomatic", _non_sensitivity_patches),
    Spec("InputInvariance", "axiomatic", _input_invariance),
]
