"""The rows the task families share (issue 20): the same metrics on a task model (detection,
segmentation) scored by that task's target, each family stating only its settings
(:class:`TaskRows`); and the torchvision check of the families whose workloads need it.

Not a family module (no ``SPECS``): :mod:`benchmarks.specs.tasks_detection` and
:mod:`benchmarks.specs.tasks_segmentation` build their specs with :func:`task_specs`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

import evalkit
from evalkit.metrics import (
    ROAD,
    EfficientMPRT,
    Insertion,
    MaxSensitivity,
    PixelFlipping,
    RelevanceMassAccuracy,
)
from evalkit.models import ModelWrapper
from evalkit.perturb.imputation import NoisyLinearImputer

from ..harness import Case, Context, PartTimer, TimedExplainer, _sync, clock
from ..workloads import Workload
from . import Spec

_ROAD_PCT = [20, 40, 60, 80]
_K = 4  # MaxSensitivity's perturbed copies per image
_IMPUTATION_NOTE = "the floor leaves out the noisy linear imputation (its seconds: part)"
_COPY_PART = "copying and re-initialising"


def timed_iterations(timer: PartTimer,
                     fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """``fn``, a generator function, with the time spent inside it (between the caller's
    ``next`` calls: building and tearing down what it yields) added to ``timer``."""
    def wrapped(*args: Any, **kwargs: Any) -> Iterator[Any]:
        it = fn(*args, **kwargs)
        while True:
            _sync(timer.device)
            t0 = clock()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                _sync(timer.device)
                timer.seconds += clock() - t0
            yield item
    return wrapped

#: what a removal row's ``Case.floor`` is, given the wrapped model, the workload and the context
RemovalFloor = Callable[[ModelWrapper, Workload, Context], Any]


def vision_workloads(*names: str) -> tuple[str, ...]:
    """``names`` where torchvision imports, else no workload: the specs are listed everywhere
    (the page renders the same), and asking for their workloads without torchvision runs
    nothing instead of failing."""
    try:
        importlib.import_module("torchvision")
    except Exception:  # ImportError, or a torchvision built for another torch
        return ()
    return names


def gradient_floor(model: ModelWrapper, x: torch.Tensor,
                   y: torch.Tensor) -> Callable[[], None]:
    """Forward of ``x`` with autograd and the gradient of the target's score w.r.t. the
    inputs: the bare model work of a gradient explanation of these rows."""
    def run() -> None:
        with model.evaluation():
            xg = x.detach().requires_grad_(True)
            torch.autograd.grad(model.target(model.model(xg), y).sum(), xg)

    return run


@dataclass(frozen=True)
class TaskRows:
    """One task family's settings; :func:`task_specs` builds its rows from them.

    The texts are the rows' ``settings`` and ``note`` pieces as the page shows them.
    """

    family: str
    #: the spec names' suffix, e.g. ``"detection"`` for ``"ROAD[detection]"``
    suffix: str
    workloads: tuple[str, ...]
    #: the workload's model wrapped with the task's target
    wrap: Callable[[Workload], ModelWrapper]
    #: pixels removed per step (PixelFlipping, Insertion)
    step: int
    #: the GradCAM call's keyword arguments (re-explanations and the GradCAM row)
    gradcam: dict[str, Any]
    #: the removal rows' (PixelFlipping, Insertion, ROAD) floor
    removal_floor: RemovalFloor
    #: the removal rows' note (ROAD's adds the imputation); "" for none
    removal_note: str
    #: appended to PixelFlipping's and Insertion's settings (e.g. ", softmax")
    removal_suffix: str
    #: ROAD's keyword arguments beyond percentages, imputer and seed
    road_kwargs: dict[str, Any]
    #: ROAD's response in its settings, e.g. "accuracy (reference still detected)"
    road_score_text: str
    #: the GradCAM row's settings
    gradcam_settings: str
    #: what the gradient floor differentiates, e.g. "box score"
    score_name: str
    #: the model in the EfficientMPRT texts, e.g. "detector"
    model_noun: str
    #: EfficientMPRT re-explains through a :class:`TimedExplainer` (else evalkit.explain)
    mprt_timed: bool
    #: the mask of RelevanceMassAccuracy, e.g. "the reference box"
    mask_text: str


def _removal_case(task: TaskRows, metric: Any, w: Workload, ctx: Context, settings: str,
                  note: str, part: PartTimer | None = None) -> Case:
    model = task.wrap(w)

    def ours() -> np.ndarray:
        return metric(model, w.x, w.y, w.a)

    return Case(ours=ours, floor=task.removal_floor(model, w, ctx), part=part,
                settings=settings, note=note)


def _pixel_flipping(task: TaskRows, w: Workload, ctx: Context) -> Case:
    return _removal_case(task, PixelFlipping(features_in_step=task.step), w, ctx,
                         f"GradCAM a, {task.step} pixels per step (16 steps), black baseline"
                         f"{task.removal_suffix}", task.removal_note)


def _insertion(task: TaskRows, w: Workload, ctx: Context) -> Case:
    return _removal_case(task, Insertion(features_in_step=task.step), w, ctx,
                         f"GradCAM a, {task.step} pixels per step, blurred start"
                         f"{task.removal_suffix}", task.removal_note)


def _road(task: TaskRows, w: Workload, ctx: Context) -> Case:
    timer = PartTimer("imputation", ctx.device)
    imputer = NoisyLinearImputer(0.01)
    imputer.fill = timer.wrap(imputer.fill)
    metric = ROAD(percentages=_ROAD_PCT, imputer=imputer, **task.road_kwargs, seed=0)
    note = "; ".join(n for n in (task.removal_note, _IMPUTATION_NOTE) if n)
    return _removal_case(task, metric, w, ctx,
                         f"GradCAM a, combined (LeRF - MoRF)/2, {task.road_score_text}, "
                         f"percentages {_ROAD_PCT}, noise 0.01", note, part=timer)


def _gradcam(task: TaskRows, w: Workload, ctx: Context) -> Case:
    model = task.wrap(w)

    def ours() -> np.ndarray:
        return evalkit.explain(model, w.x, w.y, **task.gradcam).cpu().numpy()

    return Case(ours=ours, floor=lambda rows, calls: gradient_floor(model, w.x, w.y),
                settings=task.gradcam_settings,
                note=f"floor: forward + input gradient of the {task.score_name} (GradCAM "
                     "stops at the layer)")


def _max_sensitivity(task: TaskRows, w: Workload, ctx: Context) -> Case:
    model = task.wrap(w)
    metric = MaxSensitivity(nr_samples=_K, seed=0)
    te = TimedExplainer(evalkit.explain, device=ctx.device)
    # the same uniform draws as the metric's: the floor explains rows of the same shape
    stacked = w.x.repeat_interleave(_K, 0)
    y_stacked = w.y.repeat_interleave(_K, 0)

    def ours() -> np.ndarray:
        return metric(model, w.x, w.y, w.a, explain_fn=te, explain_kwargs=task.gradcam)

    return Case(ours=ours, explainer=te,
                floor=lambda rows, calls: gradient_floor(model, stacked, y_stacked),
                settings=f"GradCAM, nr_samples={_K}, keep",
                note="floor: forward + input gradient of the N*K perturbed inputs")


def _efficient_mprt(task: TaskRows, w: Workload, ctx: Context) -> Case:
    model = task.wrap(w)
    metric = EfficientMPRT(disable_warnings=True)
    # any implementation copies the model and re-initialises its layers: timed as a part,
    # like ROAD's imputation, to show what the model-work floor leaves out
    timer = PartTimer(_COPY_PART, ctx.device)
    metric._randomised_models = timed_iterations(  # type: ignore[method-assign]
        timer, metric._randomised_models)
    # mprt_timed False: the metric's own evalkit.explain (tasks_segmentation says why)
    te = TimedExplainer(evalkit.explain, device=ctx.device) if task.mprt_timed else None
    explain: dict[str, Any] = {} if te is None else {"explain_fn": te}

    def ours() -> np.ndarray:
        return metric(model, w.x, w.y, w.a, **explain, explain_kwargs=task.gradcam)

    return Case(ours=ours, explainer=te, part=timer,
                floor=lambda rows, calls: gradient_floor(model, w.x, w.y),
                settings=f"GradCAM, the fully randomised {task.model_noun} (skip_layers)",
                note="floor: forward + input gradient of the N inputs (one explanation); "
                     f"it leaves out {_COPY_PART} the {task.model_noun} (its seconds: part)")


def _relevance_mass(task: TaskRows, w: Workload, ctx: Context) -> Case:
    metric = RelevanceMassAccuracy()

    def ours() -> np.ndarray:
        return metric(None, w.x, w.y, w.a, s=w.s)

    return Case(ours=ours, floor=None, settings=f"GradCAM a, {task.mask_text} as the mask")


_ROWS: list[tuple[str, Callable[[TaskRows, Workload, Context], Case]]] = [
    ("GradCAM", _gradcam),
    ("PixelFlipping", _pixel_flipping),
    ("Insertion", _insertion),
    ("ROAD", _road),
    ("MaxSensitivity", _max_sensitivity),
    ("EfficientMPRT", _efficient_mprt),
    ("RelevanceMassAccuracy", _relevance_mass),
]


def task_specs(task: TaskRows) -> list[Spec]:
    """The family's rows: GradCAM, PixelFlipping, Insertion, ROAD, MaxSensitivity,
    EfficientMPRT and RelevanceMassAccuracy, named ``"<metric>[<suffix>]"``."""
    return [Spec(f"{name}[{task.suffix}]", task.family, partial(build, task),
                 workloads=task.workloads, metric=name)
            for name, build in _ROWS]
