"""Complexity specs (model-free: no forward passes, so no floor)."""

from __future__ import annotations

import numpy as np

from evalkit.metrics import Complexity, EffectiveComplexity, Sparseness

from ..harness import Case, Context, max_abs_diff
from ..workloads import Workload
from . import Spec, at_model_free_scale


def _model_free(ours_cls, quantus_name: str, *, settings: str, note: str = "",
                agreement_text: str = "", **kwargs):
    def build(w: Workload, ctx: Context) -> Case:
        metric = ours_cls(**kwargs)

        def ours() -> np.ndarray:
            return metric(None, w.x, w.y, w.a)

        quantus_fn = None
        if ctx.quantus is not None:
            q = getattr(ctx.quantus, quantus_name)(disable_warnings=True, **kwargs)
            x, y, a = w.np("x"), w.np("y"), w.np("a")

            def quantus_fn() -> np.ndarray:
                return np.asarray(q(model=None, x_batch=x, y_batch=y, a_batch=a,
                                    device=ctx.quantus_device, batch_size=ctx.batch_size))

        return Case(ours=ours, quantus=quantus_fn,
                    agreement=lambda o, t: max_abs_diff(o, t, text=agreement_text),
                    floor=None, settings=settings, note=note)

    return build


SPECS = [
    Spec("Sparseness", "complexity",
         _model_free(Sparseness, "Sparseness", settings="1-channel Saliency, defaults",
                     agreement_text="Quantus adds 1e-7 to |a|"),
         smoke=True),
    Spec("Complexity", "complexity",
         _model_free(Complexity, "Complexity", settings="1-channel Saliency, defaults",
                     agreement_text="Quantus adds 1e-12 inside the log")),
    Spec("EffectiveComplexity", "complexity",
         _model_free(EffectiveComplexity, "EffectiveComplexity",
                     settings="1-channel Saliency, eps=1e-5, normalise=False",
                     note="normalise=False on both: with normalisation Quantus divides by the "
                          "batch-global max (deviation C1), so its counts depend on the batch",
                     normalise=False)),
]

SPECS = at_model_free_scale(SPECS)
