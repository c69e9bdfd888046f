"""Localisation specs (model-free when attributions are given: no forward passes, no floor).

Every entry scores the workload's 1-channel Saliency maps ``a`` against its masks ``s`` (one
random rectangle per sample) with the same settings on both sides. Quantus is called with
``model=None`` (it only needs a model to explain); Focus needs one for its input checks, so the
workload's model is passed, but nothing is explained.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from evalkit.masks import build_mosaics, make_mosaics
from evalkit.metrics import (
    AUC,
    AUPRC,
    IOUF1,
    AttributionLocalisation,
    BoxLocalisation,
    EnergyPointingGame,
    Focus,
    PointingGame,
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
    TokenF1,
    TopKIntersection,
)

from ..harness import Case, Context, max_abs_diff
from ..workloads import Workload
from . import Spec, at_model_free_scale


def _masked(ours_cls: type, quantus_name: str | None, *, settings: str, note: str = "",
            ours_kwargs: dict[str, Any] | None = None,
            quantus_kwargs: dict[str, Any] | None = None, agreement_text: str = ""):
    def build(w: Workload, ctx: Context) -> Case:
        metric = ours_cls(**(ours_kwargs or {}))

        def ours() -> np.ndarray:
            return metric(None, w.x, w.y, w.a, s=w.s)

        quantus_fn = None
        if ctx.quantus is not None and quantus_name is not None:
            q = getattr(ctx.quantus, quantus_name)(disable_warnings=True,
                                                   **(quantus_kwargs or {}))
            x, y, a, s = w.np("x"), w.np("y"), w.np("a"), w.np("s")

            def quantus_fn() -> np.ndarray:
                return np.asarray(q(model=None, x_batch=x, y_batch=y, a_batch=a, s_batch=s,
                                    device=ctx.quantus_device, batch_size=ctx.batch_size),
                                  dtype=np.float64)

        return Case(ours=ours, quantus=quantus_fn,
                    agreement=lambda o, t: max_abs_diff(o, t, text=agreement_text),
                    floor=None, settings=settings, note=note)

    return build


def _focus(w: Workload, ctx: Context) -> Case:
    """Mosaics of the workload's images; their maps are the tiles' Saliency maps arranged the
    same way (what an explainer that looks only at each tile would give)."""
    per_class = max(1, math.ceil(w.n / 7))
    mos = make_mosaics(w.x, w.y, mosaics_per_class=per_class, seed=0)
    a = build_mosaics(w.a[mos.indices])
    metric = Focus()

    def ours() -> np.ndarray:
        return metric(None, mos.x, mos.y, a, quadrants=mos.quadrants)

    quantus_fn = None
    if ctx.quantus is not None:
        q = ctx.quantus.Focus(disable_warnings=True)
        x, y, a_np = mos.x.cpu().numpy(), mos.y.cpu().numpy(), a.cpu().numpy()
        custom = [tuple(int(v) for v in row) for row in mos.quadrants.cpu().tolist()]

        def quantus_fn() -> np.ndarray:
            return np.asarray(q(model=w.model, x_batch=x, y_batch=y, a_batch=a_np,
                                custom_batch=custom, device=ctx.quantus_device,
                                batch_size=ctx.batch_size), dtype=np.float64)

    return Case(ours=ours, quantus=quantus_fn, agreement=lambda o, t: max_abs_diff(o, t),
                floor=None, settings=f"{len(mos)} 2x2 mosaics of the workload's images, their "
                                     "tiles' Saliency maps",
                note="Quantus needs a model for its checks (not called)")


_TIES = "maps without ties: ties='mean' (ours) and Quantus' 'any' coincide"

SPECS = [
    Spec("PointingGame", "localisation",
         _masked(PointingGame, "PointingGame", settings="1-channel Saliency, tolerance=0",
                 note=_TIES)),
    Spec("PointingGame[tolerance=3]", "localisation",
         _masked(PointingGame, None, settings="1-channel Saliency, tolerance=3 px, weighted",
                 ours_kwargs=dict(tolerance=3, weighted=True),
                 note="no Quantus equivalent (no tolerance; weighted crashes, deviation C7)")),
    Spec("AttributionLocalisation", "localisation",
         _masked(AttributionLocalisation, "AttributionLocalisation",
                 settings="1-channel Saliency, abs=True (Quantus' default)",
                 ours_kwargs=dict(abs=True))),
    Spec("EnergyPointingGame", "localisation",
         _masked(EnergyPointingGame, "AttributionLocalisation",
                 settings="1-channel Saliency, positive part",
                 quantus_kwargs=dict(abs=False, positive_attributions=True),
                 note="Quantus equivalent: AttributionLocalisation(positive_attributions=True, "
                      "abs=False)")),
    Spec("TopKIntersection", "localisation",
         _masked(TopKIntersection, "TopKIntersection", settings="1-channel Saliency, k=100",
                 ours_kwargs=dict(k=100), quantus_kwargs=dict(k=100))),
    Spec("RelevanceRankAccuracy", "localisation",
         _masked(RelevanceRankAccuracy, "RelevanceRankAccuracy",
                 settings="1-channel Saliency, defaults")),
    Spec("RelevanceMassAccuracy", "localisation",
         _masked(RelevanceMassAccuracy, "RelevanceMassAccuracy",
                 settings="1-channel Saliency, defaults")),
    Spec("AUC", "localisation",
         _masked(AUC, "AUC", settings="1-channel Saliency, defaults",
                 note="Quantus: sklearn roc_curve per sample; ours: one batched rank formula",
                 agreement_text="Quantus' batch-global float32 normalisation can merge two "
                                "nearly equal values into a tie; 1e-16 with normalise=False")),
    Spec("Focus", "localisation", _focus),
    Spec("BoxLocalisation", "localisation",
         _masked(BoxLocalisation, None, settings="1-channel Saliency, 20 % of max, IoU >= 0.5",
                 note="CAM-paper protocol; no Quantus equivalent (components labelled with "
                      "scipy.ndimage on the CPU)")),
]

SPECS = at_model_free_scale(SPECS)

# token plausibility (issue 19): defined on any feature masks, IOUF1's spans on 1-D sequences;
# the model-free scale, without a speed-up target (no Quantus equivalent to compare with)
_SPANS = "spans of 1-D sequences (token ids, series): not defined for the image workloads"
_SCALE = (("W1", 1024), ("W2", 16))
SPECS += [
    Spec("TokenF1", "localisation",
         _masked(TokenF1, None, settings="1-channel Saliency, k = |mask|",
                 note="ERASER's token F1; no Quantus equivalent"), scale=_SCALE),
    Spec("AUPRC", "localisation",
         _masked(AUPRC, None, settings="1-channel Saliency, average precision",
                 note="ERASER's AUPRC; no Quantus equivalent"), scale=_SCALE),
    Spec("IOUF1", "localisation", _masked(IOUF1, None, settings="IOU >= 0.5"), workloads=(),
         skip=(("W1", _SPANS), ("W2", _SPANS))),
]

# grid protocols (issue 23; Rao et al. 2022): 2x2 grids of the workload's images, cell classes
# assigned round-robin (model-free: the score reads only the maps and the cell), every cell
# scored; at the model-free scale, without a speed-up target (no Quantus equivalent)
import torch  # noqa: E402

from evalkit.metrics import DiFull, DiPart, GridPG  # noqa: E402
from evalkit.metrics.grid import build_grids, make_grids  # noqa: E402


def _grid(metric_cls: type, *, disconnected: bool):
    """GridPG/DiPart: each grid's map is its tiles' Saliency maps arranged like the tiles (an
    explainer that looks only at each tile); DiFull: the target tile's map alone, zero
    elsewhere, which is exactly Saliency on the disconnected model (score 1 by construction)."""

    def build(w: Workload, ctx: Context) -> Case:
        pseudo = np.arange(w.n) % 4
        grids = make_grids(w.x, pseudo, seed=0)
        g = grids.samples()
        tiles = w.a[torch.as_tensor(grids.indices, device=w.a.device)][g.grid]  # (M, 4, 1, H, W)
        if disconnected:
            keep = torch.nn.functional.one_hot(g.cells, 4).to(tiles.dtype)
            tiles = tiles * keep.reshape(*keep.shape, 1, 1, 1)
        a = build_grids(tiles)
        metric = metric_cls()

        def ours() -> np.ndarray:
            return metric(None, g.x, g.y, a, cells=g.cells)

        what = ("the target tile's Saliency map, zero in the other cells" if disconnected
                else "the tiles' Saliency maps")
        return Case(ours=ours, floor=None,
                    settings=f"{len(g)} (grid, cell) rows of {len(grids)} 2x2 grids, {what}",
                    note="Rao et al. 2022; no Quantus equivalent")

    return build


SPECS += [
    Spec("GridPG", "localisation", _grid(GridPG, disconnected=False), scale=_SCALE),
    Spec("DiFull", "localisation", _grid(DiFull, disconnected=True), scale=_SCALE),
    Spec("DiPart", "localisation", _grid(DiPart, disconnected=False), scale=_SCALE),
]
