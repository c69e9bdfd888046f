"""Explainer specs: ``evalkit.explain`` vs ``quantus.explain``; floor = bare forward+backward."""

from __future__ import annotations

import numpy as np

import evalkit

from ..harness import Agreement, Case, Context, max_abs_diff
from ..workloads import Workload
from . import Spec


def _saliency(w: Workload, ctx: Context) -> Case:
    def ours() -> np.ndarray:
        return evalkit.explain(w.model, w.x, w.y, method="Saliency",
                               reduce_channels="sum").cpu().numpy()

    quantus_fn = None
    if ctx.quantus is not None:
        x, y = w.np("x"), w.np("y")

        def quantus_fn() -> np.ndarray:
            return np.asarray(ctx.quantus.explain(w.model, x, y, method="Saliency",
                                                  device=ctx.quantus_device))

    return Case(ours=ours, quantus=quantus_fn,
                agreement=lambda o, t: max_abs_diff(o, t),
                floor="forward_backward",
                settings="|grad| of the predicted logit, summed over channels")


_IG_STEPS = 10


def _integrated_gradients(w: Workload, ctx: Context) -> Case:
    def ours() -> np.ndarray:
        return evalkit.explain(w.model, w.x, w.y, method="IntegratedGradients",
                               n_steps=_IG_STEPS, integration_method="riemann_trapezoid",
                               reduce_channels="sum").cpu().numpy()

    quantus_fn = None
    if ctx.quantus is not None:
        x, y = w.np("x"), w.np("y")

        def quantus_fn() -> np.ndarray:
            return np.asarray(ctx.quantus.explain(w.model, x, y, method="IntegratedGradients",
                                                  device=ctx.quantus_device))

    def agreement(o: np.ndarray, t: np.ndarray) -> Agreement:
        ag = max_abs_diff(o, t)
        ag.text = f"max |a| {float(np.abs(t).max()):.2g}"
        return ag

    return Case(ours=ours, quantus=quantus_fn, agreement=agreement,
                floor="forward_backward",
                settings=f"n_steps={_IG_STEPS}, riemann_trapezoid (Quantus' hard-coded rule), "
                         "zero baseline, summed over channels")


SPECS = [
    Spec("Saliency", "explainers", _saliency),
    Spec("IntegratedGradients", "explainers", _integrated_gradients),
]
