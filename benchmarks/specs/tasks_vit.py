"""Vision-transformer rows (issue 20) on W9, torchvision's ViT-B/16 with random weights.

* explainers: ``AttentionRollout`` (one forward pass; floor: the bare forward of the N images)
  and ``GradCAM[ViT]`` at the last block's ``ln_1`` with ``vit_reshape_transform()`` (floor: N
  forward passes with the gradient at that layer);
* metrics, on the workload's GradCAM maps (16 x 16 patches: the ViT's own tokens):
  ``PixelFlipping[ViT]`` (7 steps of 28 patches; floor: the forward rows it issued),
  ``MaxSensitivity[ViT]`` re-explaining with AttentionRollout (3 samples; floor: explain() on
  the N x 3 perturbed inputs), ``RandomLogit[ViT]`` re-explaining with GradCAM (floor: N
  forward passes with the gradient at the layer).

Quantus 0.6 has neither attention rollout nor reshape transforms, so these rows have no Quantus
column; the target is the floor ratio (1.25). The metric rows are the ``tasks_vit`` family;
AttentionRollout's row is in the explainers family (on W1 and W2, CNNs, a row says why it does
not run). The rows run only where torchvision imports
(``python -m benchmarks.run --workloads W9``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import evalkit
from evalkit.explain import vit_reshape_transform
from evalkit.metrics import MaxSensitivity, PixelFlipping, RandomLogit

from ..harness import Case, Context
from ..workloads import Workload
from . import Spec
from ._tasks import vision_workloads

FAMILY = "tasks_vit"
#: the layer of torchvision's ViT-B/16 whose tokens reach the class token (the last block's
#: pre-attention layer norm): (N, 197, 768)
VIT_LAYER = "encoder.layers.encoder_layer_11.ln_1"
_CAM = {"method": "GradCAM", "layer": VIT_LAYER}
#: robustness samples
K = 3


def _cam_kwargs() -> dict[str, Any]:
    return {**_CAM, "reshape_transform": vit_reshape_transform()}


def _gradcam_maps(w: Workload) -> torch.Tensor:
    """The workload's GradCAM maps (computed once per workload)."""
    if "_vit_gradcam" not in w.__dict__:
        w.__dict__["_vit_gradcam"] = evalkit.explain(w.model, w.x, w.y, **_cam_kwargs())
    return w.__dict__["_vit_gradcam"]


def _layer_gradient_floor(w: Workload, rows: int, batch_size: int) -> Callable[[], None]:
    """``rows`` forward passes with the gradient of the explained logit at :data:`VIT_LAYER`'s
    output (what any gradient CAM needs; an input gradient would also run the backward pass
    through the 11 blocks below the layer), in chunks of ``batch_size``."""
    layer = dict(w.model.named_modules())[VIT_LAYER]
    batch_size = max(1, min(batch_size, rows))
    x = w.x.repeat(-(-rows // w.n), 1, 1, 1)[:rows]
    y = w.y.repeat(-(-rows // w.n))[:rows]

    def run() -> None:
        kept: list[torch.Tensor] = []
        handle = layer.register_forward_hook(lambda _m, _i, out: kept.append(out))
        try:
            for start in range(0, rows, batch_size):
                kept.clear()
                with torch.enable_grad():
                    out = w.model(x[start:start + batch_size])
                    score = out.gather(1, y[start:start + batch_size, None]).sum()
                    torch.autograd.grad(score, kept[0])
        finally:
            handle.remove()

    return run


def _rollout(w: Workload, ctx: Context) -> Case:
    def ours() -> np.ndarray:
        return evalkit.explain(w.model, w.x, method="AttentionRollout").cpu().numpy()

    return Case(ours=ours, floor="forward",
                settings="head_fusion=mean, discard_ratio=0, 12 layers; bilinear to 224 x 224",
                note="no Quantus equivalent; floor: the bare forward of the N images")


def _gradcam(w: Workload, ctx: Context) -> Case:
    def ours() -> np.ndarray:
        return evalkit.explain(w.model, w.x, w.y, **_cam_kwargs()).cpu().numpy()

    return Case(ours=ours,
                floor=lambda rows, calls: _layer_gradient_floor(w, w.n, ctx.batch_size),
                settings=f"layer {VIT_LAYER}, vit_reshape_transform() (14 x 14 grid)",
                note="no Quantus equivalent (Quantus has no reshape_transform); floor: N "
                     "forward passes with the gradient at the layer")


def _pixel_flipping(w: Workload, ctx: Context) -> Case:
    metric = PixelFlipping(features_in_step=28, grouping=16)
    a = _gradcam_maps(w)

    def ours() -> np.ndarray:
        return metric(w.model, w.x, w.y, a)

    return Case(ours=ours, settings="GradCAM maps, 16 x 16 patches, features_in_step=28 "
                                    "(7 steps), black, softmax",
                note="no Quantus row (its features are channel values)")


def _max_sensitivity(w: Workload, ctx: Context) -> Case:
    metric = MaxSensitivity(nr_samples=K, seed=0)
    wrapper = evalkit.wrap_model(w.model)
    a = evalkit.explain(w.model, w.x, method="AttentionRollout")
    kw = {"method": "AttentionRollout"}

    def ours() -> np.ndarray:
        return metric(wrapper, w.x, w.y, a, explain_fn=evalkit.explain, explain_kwargs=kw)

    def floor(_rows: int, _calls: int) -> Callable[[], None]:
        g = torch.Generator(device="cpu").manual_seed(0)
        noise = 0.4 * torch.rand((w.n, K, *w.x.shape[1:]), generator=g) - 0.2
        stack = (w.x.unsqueeze(1) + noise.to(w.x.device)).reshape(-1, *w.x.shape[1:])

        def run() -> None:
            evalkit.explain(w.model, stack, method="AttentionRollout")

        return run

    return Case(ours=ours, floor=floor, settings=f"AttentionRollout, nr_samples={K}, uniform "
                                                  "noise 0.2",
                note="floor: explain() on the N*K stacked inputs (rollout is one forward pass "
                     "each)")


def _random_logit(w: Workload, ctx: Context) -> Case:
    metric = RandomLogit(num_classes=1000)
    a = _gradcam_maps(w)
    kw = _cam_kwargs()
    # the model as an evalkit wrapper, as a user passes it to many calls: its output shape is
    # probed once (the counted warm-up), not with one extra forward row per call
    wrapper = evalkit.wrap_model(w.model)

    def ours() -> np.ndarray:
        return metric(wrapper, w.x, w.y, a, explain_fn=evalkit.explain, explain_kwargs=kw)

    return Case(ours=ours,
                floor=lambda rows, calls: _layer_gradient_floor(w, w.n, ctx.batch_size),
                settings="GradCAM (vit_reshape_transform), SSIM, num_classes=1000",
                note="floor: N forward passes with the gradient at the layer (the other "
                     "class's explanations)")


#: W9 where torchvision imports, else no workload: the specs are listed everywhere (the page
#: renders the same), and asking for W9 without torchvision runs nothing instead of failing
_WORKLOADS = vision_workloads("W9")
_NO_ATTENTION = "no nn.MultiheadAttention modules in this CNN (rollout is for transformers; W9)"

SPECS = [
    # the explainer's own row: in the explainers family, with W1/W2 rows saying why not there
    Spec("AttentionRollout", "explainers", _rollout, workloads=_WORKLOADS,
         skip=(("W1", _NO_ATTENTION), ("W2", _NO_ATTENTION))),
    *[Spec(f"{name}[ViT]", FAMILY, build, workloads=_WORKLOADS, metric=name)
      for name, build in [("GradCAM", _gradcam),
                          ("PixelFlipping", _pixel_flipping),
                          ("MaxSensitivity", _max_sensitivity),
                          ("RandomLogit", _random_logit)]],
]
