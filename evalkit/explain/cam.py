"""The CAM family, implemented natively in torch on the model's device.

Every method computes, for each target layer with activations ``A`` (N, K, *s) and (for the
gradient methods) ``G = d score / d A``, a per-channel *weighted activation* ``T`` (N, K, *s);
the layer's map is ``sum_k T_k`` (or, with ``eigen_smooth``, the projection of ``T`` on its
first principal component). Written from the papers:

=====================  ==========================================================  =========
method                 T (weighted activations)                                    passes
=====================  ==========================================================  =========
GradCAM                ``mean_s(G_k) * A_k`` (Selvaraju et al. 2017)                1F + 1B
HiResCAM               ``G_k * A_k`` (Draelos & Carin 2020)                         1F + 1B
GradCAMElementWise     ``ReLU(G_k * A_k)`` (Pillai et al. 2021)                     1F + 1B
GradCAMPlusPlus        ``w_k * A_k``, ``w_k = sum_s alpha * ReLU(G)``,               1F + 1B
                       ``alpha = G^2 / (2 G^2 + sum_s(A_k) G^3)``, 0 where the
                       denominator is 0 (Chattopadhay et al. 2018, eq. 19)
XGradCAM               ``w_k * A_k``, ``w_k = sum_s(G A) / sum_s(A)`` (Fu et al.)   1F + 1B
LayerCAM               ``ReLU(G_k) * A_k`` (Jiang et al. 2021)                      1F + 1B
EigenCAM               first principal component of ``A`` (Muhammad & Yeasin)       1F
EigenGradCAM           first principal component of ``G * A``                       1F + 1B
ScoreCAM               ``w_k * A_k``, ``w = softmax_k(score(x * M_k))`` with        1F + NK F
                       ``M_k`` the min-max scaled upsampled ``A_k`` (Wang et al.)
AblationCAM            ``w_k * A_k``, ``w_k = (y - y_k) / |y|`` with ``y_k`` the     1F + NK F
                       score with channel k ablated (Desai & Ramaswamy 2020)
RandomCAM              ``w_k * A_k``, ``w_k ~ U(-1, 1)`` (a sanity baseline)         1F
FullGrad               input-gradient and bias-gradient maps of every layer         1F + 1B
                       (Srinivas & Fleuret 2019); ignores ``layer``; token-layout
                       linear layers through ``reshape_transform``
=====================  ==========================================================  =========

Options (all methods): ``layer`` (a name from ``model.named_modules()``, a Python path such as
``"layer4[-1]"`` (never ``eval``'d), a module object, or a list of them; default: the model's
``cam_layer`` attribute or its last convolution), ``reshape_transform`` (maps a layer output to
(N, K, *s), e.g. :func:`~evalkit.explain.vit_reshape_transform` for (N, tokens, K) layouts; it is
applied to activations *and* gradients), ``aug_smooth`` (test-time augmentation: horizontal
flips x input scales 0.9/1.0/1.1, maps flipped back and averaged; ``aug_transforms`` takes a list
of ``(flip, scale)`` pairs), ``eigen_smooth``, ``relu`` (default True), ``upsample_mode``
(``F.interpolate`` mode; default bilinear for images) and ``raw``.

Vision transformers: every method (and FullGrad, for its token-layout linear layers, and
:class:`~evalkit.explain.DeepFeatureFactorization`) takes the ``reshape_transform`` of the
layer's layout. For torchvision's ``vit_b_16``: ``layer="encoder.layers.encoder_layer_11.ln_1"``
with :func:`vit_reshape_transform` (class token dropped, 14 x 14 grid); for ``swin_t``:
``layer="features[-1]"`` (or ``"norm"``) with :func:`swin_reshape_transform`. A layer whose
output does not have the input's spatial rank after the transform (tokens picked without one),
and an ``nn.LayerNorm`` / ``nn.Linear`` layer (channels-last by construction) picked without
one, raise a ``ValueError`` that names both transforms (see ``docs/tutorials/vit.md``).

Output: (N, 1, *S) at the input's spatial size: the layer map, ReLU'd (``relu=True``), resized
with ``F.interpolate``. It is **not** min-max normalised (metrics normalise explicitly). With
several layers each layer's map is divided by its per-sample maximum absolute value before the
maps are averaged. ``raw=True`` returns the signed map at the layer's resolution, (N, 1, *s), or
(N, L, *s) for L layers of equal size (no ReLU, no resizing, no normalisation).

Differences from pytorch-grad-cam, on purpose:

* all arithmetic (weights, SVD, resizing) stays in torch on the model's device, in float32 for
  half-precision models; nothing is copied to the host;
* gradients come from ``torch.autograd.grad`` with respect to the hooked activations: no
  ``model.zero_grad()``, no ``loss.backward()``, the parameters' ``.grad`` is never written;
  the model's train/eval flags are restored (never a permanent ``model.eval()``);
* hooks live in a ``with`` block and are removed on exit, also on error; exceptions are never
  swallowed;
* the recorded activation is the layer's own output (the network continues on a clone), so an
  in-place op after the layer cannot alter it (pytorch-grad-cam sees post-ReLU values on the
  CPU);
* ``y`` must have one entry per sample (no silent ``zip`` truncation), a layer that receives no
  gradient raises a clear error, and an all-zero gradient warns;
* the principal-component sign is fixed: the projection is oriented to correlate positively
  with ``sum_k T_k`` (pytorch-grad-cam's sign is arbitrary, #364);
* GradCAM++: no ``1e-6`` in the denominator (exact closed form, 0 where it vanishes);
* ScoreCAM: weights ``softmax_k`` of the wrapper's target score on the masked inputs, as in the
  paper's Algorithm 1 (with logits this is pytorch-grad-cam's choice); ``weighting="score"``
  uses the raw scores instead (the Score-CAM reference code, with ``softmax=True``). The masked
  inputs are built lazily per chunk and run through :class:`evalkit.runner.ForwardRunner`, never
  materialised as an (N, K, C, H, W) block;
* AblationCAM: the ablated channel is set to ``ablation_value`` (default 0, as in the paper)
  and the score drop is divided by ``|y|``, not ``y``, so a negative logit does not flip the map
  (#555); token layouts work through the same ``reshape_transform`` (no special ablation
  layer);
* FullGrad: each gradient map is rescaled to [0, 1] per sample over all its channels (the
  authors' code), not per channel; ``raw`` does not apply (FullGrad is defined at input size).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import _rng
from .._validation import EvalkitWarning
from ..models import ModelWrapper
from ..runner import ForwardRunner
from ._hooks import capture, default_cam_layer, interpolate_to, require_module, resolve_layers
from .core import GRID_MODALITIES, register_explainer

__all__ = ["DEFAULT_AUGMENTATIONS", "check_channels_first", "layout_error",
           "swin_reshape_transform", "vit_reshape_transform"]

#: (horizontal flip, input scale) pairs of ``aug_smooth=True``
DEFAULT_AUGMENTATIONS: tuple[tuple[bool, float], ...] = tuple(
    (flip, scale) for flip in (False, True) for scale in (1.0, 1.1, 0.9)
)


# ============================================================================ reshape transforms
def vit_reshape_transform(
    height: int | None = None, width: int | None = None, prefix_tokens: int = 1
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A ``reshape_transform`` for (N, tokens, K) layer outputs (ViT, DeiT, CLIP).

    Drops the first ``prefix_tokens`` tokens (CLS = 1; DeiT with a distillation token or models
    with register tokens have more) and folds the rest into an (N, K, height, width) grid. A
    missing side is inferred from the token count (a square grid when both are missing; give
    ``height`` or ``width`` for non-square inputs).

    Which layer: the ``ln_1`` (pre-attention layer norm) of the **last encoder block**, e.g.
    torchvision's ``vit_b_16``: ``layer="encoder.layers.encoder_layer_11.ln_1"`` ((N, 197, 768)
    at 224 x 224: the CLS token and 14 x 14 patch tokens). Its tokens reach the class token
    through the last attention. Not the last block itself, nor ``encoder.ln``: their patch
    tokens do not reach the head, which reads only the class token, so their gradients are 0.

    >>> cam = evalkit.explain(vit, x, y, method="GradCAM",                # doctest: +SKIP
    ...                       layer="encoder.layers.encoder_layer_11.ln_1",
    ...                       reshape_transform=vit_reshape_transform())
    """

    def transform(t: torch.Tensor) -> torch.Tensor:
        if t.ndim != 3:
            raise ValueError(f"vit_reshape_transform expects (N, tokens, K); got {tuple(t.shape)}.")
        tokens = t[:, prefix_tokens:, :]
        h, w = _grid(tokens.shape[1], height, width, prefix_tokens)
        return tokens.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    return transform


def swin_reshape_transform(
    height: int | None = None, width: int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A ``reshape_transform`` for Swin-style channels-last outputs: (N, h, w, K) or (N, h*w, K)
    (no class token) -> (N, K, h, w).

    Which layer: the last stage, e.g. torchvision's ``swin_t``: ``layer="features[-1]"`` (the
    last stage's output, (N, 7, 7, 768) at 224 x 224) or ``layer="norm"`` (the final layer
    norm, same shape); both are channels-last. (torchvision's ``permute`` layer, after
    ``norm``, is already (N, 768, 7, 7) and needs no transform.) Models that keep the tokens
    flat, (N, h*w, K) (timm's older Swin), are folded into a square grid unless ``height`` /
    ``width`` say otherwise.

    >>> cam = evalkit.explain(swin, x, y, method="GradCAM", layer="features[-1]",  # doctest: +SKIP
    ...                       reshape_transform=swin_reshape_transform())
    """

    def transform(t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 4:
            return t.permute(0, 3, 1, 2)
        if t.ndim != 3:
            raise ValueError(
                f"swin_reshape_transform expects (N, h, w, K) or (N, h*w, K); got {tuple(t.shape)}."
            )
        h, w = _grid(t.shape[1], height, width, 0)
        return t.reshape(t.shape[0], h, w, t.shape[2]).permute(0, 3, 1, 2)

    return transform


def _grid(n: int, height: int | None, width: int | None, prefix: int) -> tuple[int, int]:
    if height is None and width is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"{n} tokens (after dropping {prefix} prefix tokens) do not form a square grid; "
                "pass height= and width= (or the right prefix_tokens)."
            )
        return side, side
    if height is None:
        height = n // width
    if width is None:
        width = n // height
    if height * width != n:
        raise ValueError(f"A {height} x {width} grid does not hold {n} tokens.")
    return height, width


# ============================================================================ machinery
@dataclass
class _LayerData:
    """What a weighting function sees for one target layer (one chunk)."""

    name: str
    module: nn.Module
    index: int
    A: torch.Tensor  # (N, K, *s), detached, float32/64
    G: torch.Tensor | None  # same shape, or None for gradient-free methods
    A_raw: torch.Tensor  # the layer's output as the model produced it (detached)
    x: torch.Tensor
    y: torch.Tensor | None
    score: torch.Tensor | None  # (N,) target scores of x (detached)
    model: ModelWrapper
    reshape: Callable[[torch.Tensor], torch.Tensor] | None
    options: dict[str, Any]

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(range(2, self.A.ndim))

    def channel_view(self, w: torch.Tensor) -> torch.Tensor:
        """(N, K) weights as (N, K, 1, ..., 1)."""
        return w.reshape(*w.shape[:2], *([1] * (self.A.ndim - 2)))


@dataclass(frozen=True)
class _Spec:
    name: str
    weigh: Callable[[_LayerData], torch.Tensor]
    gradients: bool = True
    needs_score: bool = False
    always_eigen: bool = False
    options: tuple[str, ...] = ()


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def layout_error(name: str, shape: Any, ndim: int, method: str = "CAM methods") -> ValueError:
    """The error for a layer output that is not (N, K, *spatial) with the input's spatial axes:
    it says which ``reshape_transform`` fits which layout (and the layers to pick)."""
    return ValueError(
        f"The activations of layer {name!r} have shape {shape}; {method} need (N, K, *spatial) "
        f"with the input's {ndim - 2} spatial axes. Token layers need a reshape_transform: "
        "(N, tokens, K) with a class token (ViT, e.g. torchvision's vit_b_16 layer "
        "'encoder.layers.encoder_layer_11.ln_1'): "
        "reshape_transform=evalkit.explain.vit_reshape_transform(); channels-last (N, h, w, K) "
        "(Swin, e.g. torchvision's swin_t layer 'features[-1]' or 'norm'): "
        "reshape_transform=evalkit.explain.swin_reshape_transform()."
    )


#: modules that act on the last axis of their input: their outputs are channels-last
_CHANNELS_LAST = (nn.LayerNorm, nn.Linear)


def check_channels_first(layers: Sequence[tuple[str, nn.Module]], reshape, ndim: int,
                         method: str = "CAM methods") -> None:
    """Refuse, before any forward pass, a ``nn.LayerNorm`` or ``nn.Linear`` layer (exactly
    those types: they act on the last axis, so their output is channels-last, (N, tokens, K)
    or (N, h, w, K)) picked without a ``reshape_transform``: a 4-D channels-last output would
    otherwise be read as (N, K, h, w) without any error. A layer whose output is channels-first
    after all can pass ``reshape_transform=lambda t: t``."""
    if reshape is not None:
        return
    for name, module in layers:
        if type(module) in _CHANNELS_LAST:
            raise ValueError(
                f"The layer {name!r} is a {type(module).__name__}, which acts on the last axis, "
                f"so its output is channels-last (N, tokens, K) or (N, h, w, K); {method} need "
                "(N, K, *spatial). Pass reshape_transform=evalkit.explain."
                "vit_reshape_transform() for ViT tokens with a class token (torchvision's "
                "vit_b_16: 'encoder.layers.encoder_layer_11.ln_1'), or swin_reshape_transform() "
                "for Swin's (N, h, w, K) (torchvision's swin_t: 'features[-1]' or 'norm'); "
                "reshape_transform=lambda t: t if the output is channels-first after all."
            )


def _reshaped(t: torch.Tensor, reshape, name: str, ndim: int) -> torch.Tensor:
    """The (reshaped) layer output, which must be (N, K, *s) with as many spatial axes as the
    input (``ndim`` = the input's rank)."""
    out = reshape(t) if reshape is not None else t
    if not isinstance(out, torch.Tensor) or out.ndim != ndim or out.shape[0] != t.shape[0]:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise layout_error(name, shape, ndim)
    return out


def _gradients(
    score: torch.Tensor, acts: list[torch.Tensor], names: list[str]
) -> list[torch.Tensor]:
    if not score.requires_grad:
        raise ValueError(
            "The target score does not depend on the input through autograd (did the model run "
            "under torch.no_grad(), or detach its output?); gradient CAMs need autograd."
        )
    for act, name in zip(acts, names, strict=True):
        if not act.requires_grad:
            raise ValueError(
                f"The output of layer {name!r} was computed without autograd (torch.no_grad() "
                "or .detach() inside the model), so no gradient can reach it; choose another "
                "layer or a gradient-free method (EigenCAM, ScoreCAM, AblationCAM)."
            )
    grads = torch.autograd.grad(score.sum(), acts, allow_unused=True)
    out = []
    for g, name in zip(grads, names, strict=True):
        if g is None:
            raise ValueError(
                f"No gradient reaches layer {name!r}: its output does not influence the target "
                "score (for example the output tokens of the last ViT block, of which only CLS "
                "is used; take the block's norm1 instead)."
            )
        out.append(g)
    return out


def _layer_maps(
    spec: _Spec,
    model: ModelWrapper,
    layers: list[tuple[str, nn.Module]],
    x: torch.Tensor,
    y: torch.Tensor | None,
    reshape,
    eigen_smooth: bool,
    options: dict[str, Any],
) -> list[torch.Tensor]:
    names = [name for name, _ in layers]
    xg = x.detach().requires_grad_(spec.gradients)
    with capture(layers) as record, torch.set_grad_enabled(spec.gradients):
        outputs = model(xg)
        acts = record.single()
        score = model.select(outputs, y) if spec.gradients or spec.needs_score else None
    grads = _gradients(score, acts, names) if spec.gradients else [None] * len(acts)
    score = None if score is None else score.detach()
    maps = []
    for i, ((name, module), act, grad) in enumerate(zip(layers, acts, grads, strict=True)):
        act = act.detach()
        dtype = _compute_dtype(act)
        A = _reshaped(act, reshape, name, x.ndim).to(dtype)
        G = None if grad is None else _reshaped(grad, reshape, name, x.ndim).to(dtype)
        if G is not None and not bool(G.any()):
            warnings.warn(
                f"The gradient of the target score at layer {name!r} is exactly zero for every "
                "sample of this batch (after reshape_transform), so their gradient CAM maps are "
                "zero. Is the "
                "layer disconnected from the target (e.g. patch tokens of the last ViT block, "
                "when only CLS feeds the head)?",
                EvalkitWarning,
                stacklevel=2,
            )
        data = _LayerData(name, module, i, A, G, act, x.detach(), y, score, model, reshape,
                          options)
        with torch.no_grad():
            T = spec.weigh(data)
            if spec.always_eigen or eigen_smooth:
                maps.append(_first_component(T))
            else:
                maps.append(T.sum(1, keepdim=True))
    return maps


def _first_component(T: torch.Tensor) -> torch.Tensor:
    """Projection of each sample's (positions x channels) matrix, centred per channel, on its
    first principal component; oriented to correlate positively with ``T.sum(1)``.

    The component comes from a symmetric eigendecomposition of the smaller Gram matrix
    (``M M^T`` or ``M^T M``), batched: the same projection ``M v1 = s1 u1`` as an SVD, many
    times faster for the small, wide matrices of CAM layers (49 x 2048 for ResNet-50)."""
    n, k = T.shape[:2]
    spatial = T.shape[2:]
    M = T.reshape(n, k, -1).transpose(1, 2)  # (N, P, K)
    M = M - M.mean(1, keepdim=True)
    if M.shape[1] <= M.shape[2]:
        values, vectors = torch.linalg.eigh(M @ M.transpose(1, 2))  # ascending
        proj = vectors[..., -1] * values[:, -1:].clamp_min(0).sqrt()  # (N, P) = s1 u1
    else:
        _, vectors = torch.linalg.eigh(M.transpose(1, 2) @ M)
        proj = (M @ vectors[..., -1:]).squeeze(-1)  # (N, P) = M v1
    ref = T.sum(1).reshape(n, -1)
    ref = ref - ref.mean(1, keepdim=True)
    sign = torch.sign((proj * ref).sum(1))
    peak = proj.gather(1, proj.abs().argmax(1, keepdim=True)).squeeze(1)
    sign = torch.where(sign == 0, torch.sign(peak), sign)
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return (proj * sign[:, None]).reshape(n, 1, *spatial)


def _finish(maps: list[torch.Tensor], x: torch.Tensor, names: list[str], *, raw: bool,
            relu: bool, upsample_mode: str | None) -> torch.Tensor:
    if raw:
        if len(maps) == 1:
            return maps[0]
        shapes = {tuple(m.shape[2:]) for m in maps}
        if len(shapes) > 1:
            raise ValueError(
                f"raw=True with several layers needs maps of one size; the layers {names} give "
                f"{sorted(shapes)}. Use raw=False (maps resized to the input) or one layer."
            )
        return torch.cat(maps, 1)
    out = []
    for m in maps:
        if relu:
            m = m.clamp_min(0)
        out.append(interpolate_to(m, x.shape[2:], upsample_mode))
    if len(out) == 1:
        return out[0]
    scaled = []
    for m in out:
        peak = m.abs().flatten(1).amax(1).reshape(-1, *([1] * (m.ndim - 1)))
        scaled.append(torch.where(peak > 0, m / torch.where(peak > 0, peak, 1), 0))
    return torch.stack(scaled, 0).mean(0)


def _augmented(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, aug_smooth: bool,
               aug_transforms: Sequence[tuple[bool, float]] | None) -> torch.Tensor:
    if not aug_smooth and aug_transforms is None:
        return fn(x)
    augs = list(aug_transforms) if aug_transforms is not None else list(DEFAULT_AUGMENTATIONS)
    if not augs:
        raise ValueError("`aug_transforms` is empty.")
    total = None
    for flip, scale in augs:
        xa = x * float(scale)
        if flip:
            xa = xa.flip(-1)
        m = fn(xa)
        if flip:
            m = m.flip(-1)
        total = m if total is None else total + m
    return total / len(augs)


def _run(spec: _Spec, model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, kw):
    module = require_module(model, spec.name)
    layer = kw.pop("layer", None)
    targets = kw.pop("target_layers", None)  # pytorch-grad-cam's name
    if layer is None:
        layer = targets
    layers = resolve_layers(module, layer if layer is not None else default_cam_layer(module))
    reshape = kw.pop("reshape_transform", None)
    aug_smooth = bool(kw.pop("aug_smooth", False))
    aug_transforms = kw.pop("aug_transforms", None)
    eigen_smooth = bool(kw.pop("eigen_smooth", False))
    raw = bool(kw.pop("raw", False))
    relu = bool(kw.pop("relu", True))
    upsample_mode = kw.pop("upsample_mode", None)
    options = {key: kw.pop(key) for key in spec.options if key in kw}
    options["upsample_mode"] = upsample_mode
    if kw:
        raise TypeError(f"{spec.name} got unexpected keyword arguments {sorted(kw)}.")
    if spec.name == "HiResCAM" and eigen_smooth:
        warnings.warn("HiResCAM with eigen_smooth=True loses its faithfulness guarantee.",
                      EvalkitWarning, stacklevel=4)
    if x.ndim < 3:
        raise ValueError(f"{spec.name} needs inputs with spatial axes (N, C, ...); got "
                         f"{tuple(x.shape)}.")
    check_channels_first(layers, reshape, x.ndim)
    names = [name for name, _ in layers]

    def one(xa: torch.Tensor) -> torch.Tensor:
        maps = _layer_maps(spec, model, layers, xa, y, reshape, eigen_smooth, options)
        return _finish(maps, xa, names, raw=raw, relu=relu, upsample_mode=upsample_mode)

    return _augmented(one, x, aug_smooth, aug_transforms).to(x.dtype)


def _register(spec: _Spec, doc: str) -> None:
    def explainer(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
        return _run(spec, model, x, y, kw)

    explainer.__name__ = spec.name
    explainer.__qualname__ = spec.name
    explainer.__doc__ = doc
    register_explainer(
        spec.name,
        requires_module=True,
        requires_gradients=spec.gradients,
        uses_target=spec.gradients or spec.needs_score,
        quantus_names=True,
        modalities=GRID_MODALITIES,
    )(explainer)


# ============================================================================ weightings
def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _w_gradcam(d: _LayerData) -> torch.Tensor:
    return d.G.mean(d.spatial, keepdim=True) * d.A


def _w_hirescam(d: _LayerData) -> torch.Tensor:
    return d.G * d.A


def _w_elementwise(d: _LayerData) -> torch.Tensor:
    return (d.G * d.A).clamp_min(0)


def _w_gradcampp(d: _LayerData) -> torch.Tensor:
    g2 = d.G * d.G
    g3 = g2 * d.G
    denominator = 2 * g2 + d.A.sum(d.spatial, keepdim=True) * g3
    alpha = _safe_div(g2, denominator)
    w = (alpha * d.G.clamp_min(0)).sum(d.spatial, keepdim=True)
    return w * d.A


def _w_xgradcam(d: _LayerData) -> torch.Tensor:
    w = _safe_div((d.G * d.A).sum(d.spatial, keepdim=True), d.A.sum(d.spatial, keepdim=True))
    return w * d.A


def _w_layercam(d: _LayerData) -> torch.Tensor:
    return d.G.clamp_min(0) * d.A


def _w_eigencam(d: _LayerData) -> torch.Tensor:
    return d.A


def _w_eigengradcam(d: _LayerData) -> torch.Tensor:
    return d.G * d.A


def _w_random(d: _LayerData) -> torch.Tensor:
    keys = _rng.sample_keys(d.x, int(d.options.get("seed", 0)))
    w = _rng.uniform(keys, (d.A.shape[1],), low=-1.0, high=1.0, dtype=d.A.dtype,
                     stream=d.index)
    return d.channel_view(w) * d.A


def _runner(d: _LayerData) -> ForwardRunner:
    return ForwardRunner(d.model, batch_size=d.options.get("forward_batch_size"),
                         memory_budget=d.options.get("memory_budget"))


def _w_scorecam(d: _LayerData) -> torch.Tensor:
    weighting = d.options.get("weighting", "softmax")
    if weighting not in ("softmax", "score"):
        raise ValueError(f"`weighting` must be 'softmax' or 'score'; got {weighting!r}.")
    n, k = d.A.shape[:2]
    A, x = d.A, d.x
    size = x.shape[2:]
    mode = d.options.get("upsample_mode")

    def build(index: tuple[torch.Tensor, ...]) -> torch.Tensor:
        i, c = index
        m = interpolate_to(A[i, c].unsqueeze(1), size, mode)
        flat = m.flatten(1)
        lo = flat.amin(1)
        span = flat.amax(1) - lo
        view = (-1,) + (1,) * (m.ndim - 1)
        m = _safe_div(m - lo.reshape(view), span.reshape(view).expand_as(m))
        return x[i] * m.to(x.dtype)

    scores = _runner(d).run(build, (n, k), y=d.y, row_shape=tuple(x.shape[1:]))
    scores = scores.to(A.dtype)
    w = torch.softmax(scores, dim=1) if weighting == "softmax" else scores
    return d.channel_view(w) * A


def _channel_positions(d: _LayerData) -> torch.Tensor | None:
    """For each channel k of the reshaped activation, the flat positions of its elements in the
    layer's raw output (K, P_k); None when the channel axis is axis 1 of the raw output."""
    if d.reshape is None:
        return None
    per_sample = math.prod(d.A_raw.shape[1:])
    index = torch.arange(per_sample, dtype=torch.float64, device=d.A.device)
    mapped = d.reshape(index.reshape(1, *d.A_raw.shape[1:]))
    ok = (
        isinstance(mapped, torch.Tensor)
        and tuple(mapped.shape[1:]) == tuple(d.A.shape[1:])
        and bool((mapped == mapped.round()).all())
        and bool(((mapped >= 0) & (mapped < per_sample)).all())
    )
    if not ok:
        raise ValueError(
            "AblationCAM with a reshape_transform needs a transform that only rearranges "
            "elements (slicing, reshape, permute), so each channel can be ablated in the layer's "
            "own layout."
        )
    return mapped[0].reshape(d.A.shape[1], -1).round().long()


def _w_ablationcam(d: _LayerData) -> torch.Tensor:
    n, k = d.A.shape[:2]
    value = float(d.options.get("ablation_value", 0.0))
    positions = _channel_positions(d)
    cached = d.A_raw
    current: dict[str, tuple[torch.Tensor, ...]] = {}

    def build(index: tuple[torch.Tensor, ...]) -> torch.Tensor:
        current["index"] = index
        return d.x[index[0]]

    def ablate(_i: int, out: torch.Tensor) -> torch.Tensor:
        i, c = current["index"]
        base = cached[i].clone()
        if positions is None:
            base[torch.arange(base.shape[0], device=base.device), c] = value
        else:
            flat = base.reshape(base.shape[0], -1)
            flat.scatter_(1, positions[c], value)
            base = flat.reshape(base.shape)
        return base.to(out.dtype)

    with capture([(d.name, d.module)], replace=ablate, keep=False):
        ablated = _runner(d).run(build, (n, k), y=d.y, row_shape=tuple(d.x.shape[1:]))
    y0 = d.score.to(d.A.dtype).unsqueeze(1)
    drop = y0 - ablated.to(d.A.dtype)
    scale = y0.abs()
    w = torch.where(scale > 0, drop / torch.where(scale > 0, scale, 1), drop)
    return d.channel_view(w) * d.A


_CAM_OPTIONS = ("forward_batch_size", "memory_budget")

_register(_Spec("GradCAM", _w_gradcam), "Grad-CAM: channel weights are the spatial means of "
          "the gradients (Selvaraju et al. 2017). See the module docstring for the options.")
_register(_Spec("HiResCAM", _w_hirescam), "HiResCAM: element-wise gradient x activation summed "
          "over channels (Draelos & Carin 2020); equals Grad-CAM when the layer is followed by "
          "global average pooling and a linear head.")
_register(_Spec("GradCAMElementWise", _w_elementwise), "Grad-CAM element-wise: ReLU(gradient x "
          "activation) summed over channels (Pillai et al. 2021).")
_register(_Spec("GradCAMPlusPlus", _w_gradcampp), "Grad-CAM++ (Chattopadhay et al. 2018) in its "
          "closed form with powers of the gradient (eq. 19); alpha is 0 where its denominator "
          "vanishes (no 1e-6 added).")
_register(_Spec("XGradCAM", _w_xgradcam), "XGrad-CAM (Fu et al. 2020): gradients weighted by "
          "the normalised activations.")
_register(_Spec("LayerCAM", _w_layercam), "LayerCAM (Jiang et al. 2021): positive gradients "
          "times activations, element-wise; suited to earlier layers.")
_register(_Spec("EigenCAM", _w_eigencam, gradients=False, always_eigen=True), "Eigen-CAM "
          "(Muhammad & Yeasin 2020): first principal component of the activations; "
          "class-agnostic (``y`` is ignored), sign oriented along the channel sum.")
_register(_Spec("EigenGradCAM", _w_eigengradcam, always_eigen=True), "Eigen-Grad-CAM: first "
          "principal component of gradient x activation (class-discriminative).")
_register(_Spec("ScoreCAM", _w_scorecam, gradients=False, needs_score=True,
                options=(*_CAM_OPTIONS, "weighting")),
          "Score-CAM (Wang et al. 2020): channels weighted by the softmax over channels of the "
          "target score of the input masked by each upsampled, min-max scaled activation map. "
          "``weighting='score'`` uses the raw scores; ``forward_batch_size`` / "
          "``memory_budget`` bound the masked-input chunks (evalkit.runner.ForwardRunner).")
_register(_Spec("AblationCAM", _w_ablationcam, gradients=False, needs_score=True,
                options=(*_CAM_OPTIONS, "ablation_value")),
          "Ablation-CAM (Desai & Ramaswamy 2020): w_k = (y - y_k) / |y| with y_k the target "
          "score when channel k of the layer is set to ``ablation_value`` (default 0). One "
          "forward pass per (sample, channel), in runner chunks; the layers before the target "
          "layer are recomputed (the model is never split or rewritten).")
_register(_Spec("RandomCAM", _w_random, gradients=False, options=("seed",)), "RandomCAM: "
          "channel weights U(-1, 1), drawn per sample from ``seed`` (default 0) and the "
          "sample's values (batch-independent); a sanity baseline that costs one forward pass.")


# ============================================================================ FullGrad
def _bias_layers(root: nn.Module) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(name, module, bias) for every module with an additive bias: convolutions and linear
    layers with ``bias``, and batch norms (effective bias ``beta - mu gamma / sqrt(var + eps)``,
    which requires evaluation mode with running statistics)."""
    out = []
    for name, m in root.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd | nn.Linear) and m.bias is not None:
            out.append((name, m, m.bias.detach()))
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.training or m.running_mean is None or m.running_var is None:
                raise ValueError(
                    f"FullGrad needs batch-norm layers in evaluation mode with running "
                    f"statistics; {name!r} uses batch statistics (wrap the model with "
                    "eval_mode=True, the default)."
                )
            scale = torch.rsqrt(m.running_var + m.eps)
            gamma = m.weight.detach() if m.weight is not None else torch.ones_like(scale)
            beta = m.bias.detach() if m.bias is not None else torch.zeros_like(scale)
            out.append((name, m, beta - m.running_mean * gamma * scale))
    return out


def fullgrad_decomposition(
    model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None
) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
    """The full-gradient decomposition (Srinivas & Fleuret 2019) of the target score.

    Returns ``input_part = x * d score / d x`` (N, C, *S) and, for every biased layer that ran,
    its bias-gradient ``b * d score / d z`` (z the layer's output) in the layer's own layout:
    channels on axis 1 for convolutions and batch norms, on the last axis for linear layers
    (whose bias is added along it: (N, K), or (N, tokens, K) in a transformer). For a piecewise
    linear network (ReLU, max-pooling, batch norm in evaluation mode) the total sum of all parts
    equals the target score exactly; with softmax attention, GELU or layer norms (vision
    transformers) it does not, and linear maps that a module calls functionally with its
    weights (``nn.MultiheadAttention``'s projections, Swin's window attention) are not hooked.
    """
    input_part, parts = _fullgrad_parts(model, x, y)
    return input_part, [(name, part) for name, _, part in parts]


def _fullgrad_parts(
    model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None
) -> tuple[torch.Tensor, list[tuple[str, nn.Module, torch.Tensor]]]:
    module = require_module(model, "FullGrad")
    biased = _bias_layers(module)
    xg = x.detach().requires_grad_(True)
    with capture([(name, m) for name, m, _ in biased]) as record, torch.enable_grad():
        score = model.select(model(xg), y)
    acts = [outs[-1] if outs else None for outs in record.outputs]
    used = [(i, a) for i, a in enumerate(acts) if a is not None and a.requires_grad]
    grads = torch.autograd.grad(score.sum(), [xg] + [a for _, a in used], allow_unused=True)
    input_part = (grads[0] * x).detach()
    parts = []
    for (i, _), g in zip(used, grads[1:], strict=True):
        if g is None:
            continue
        name, layer, bias = biased[i]
        if isinstance(layer, nn.Linear):  # the bias is added along the last axis
            shape = (1,) * (g.ndim - 1) + (-1,)
        else:
            shape = (1, -1) + (1,) * (g.ndim - 2)
        parts.append((name, layer, (g * bias.to(g.dtype).reshape(shape)).detach()))
    return input_part, parts


def _rescale(t: torch.Tensor) -> torch.Tensor:
    """|t| min-max scaled to [0, 1] per sample (over all channels and positions)."""
    t = t.abs()
    flat = t.flatten(1)
    lo = flat.amin(1).reshape(-1, *([1] * (t.ndim - 1)))
    span = flat.amax(1).reshape(lo.shape) - lo
    return _safe_div(t - lo, span.expand_as(t))


@register_explainer("FullGrad", requires_module=True, requires_gradients=True,
                    quantus_names=True, modalities=GRID_MODALITIES)
def fullgrad(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, **kw: Any):
    """FullGrad saliency (Srinivas & Fleuret 2019): ``psi(|x * grad_x|)`` plus, for every
    convolution / batch-norm layer, ``psi(|b * d score / d z|)`` resized to the input and summed
    over channels, with ``psi`` a per-sample min-max rescaling over all channels (the authors'
    code; pytorch-grad-cam rescales per channel). ``layer`` is ignored (all biased layers are
    used); ``aug_smooth``/``aug_transforms`` and ``upsample_mode`` apply; ``raw`` does not
    (FullGrad is defined at input size).

    Linear layers take part in the decomposition (:func:`fullgrad_decomposition`); those with
    an (N, K) output have no position and no map. Those with token outputs (a vision
    transformer's MLPs: (N, tokens, K) in ViT, (N, h, w, K) in Swin) give a map through
    ``reshape_transform`` (the transform of their layout, e.g.
    :func:`vit_reshape_transform`, which drops the class token's part, or
    :func:`swin_reshape_transform`); without one they raise an error. On transformers FullGrad
    is a heuristic: the decomposition is not complete there (softmax attention, GELU and
    layer norms are not piecewise linear, and attention projections that a module applies
    functionally are not hooked)."""
    if kw.pop("layer", None) is not None:
        warnings.warn("FullGrad uses every biased layer; `layer` is ignored.", EvalkitWarning,
                      stacklevel=3)
    aug_smooth = bool(kw.pop("aug_smooth", False))
    aug_transforms = kw.pop("aug_transforms", None)
    upsample_mode = kw.pop("upsample_mode", None)
    reshape = kw.pop("reshape_transform", None)
    kw.pop("raw", None)
    if kw:
        raise TypeError(f"FullGrad got unexpected keyword arguments {sorted(kw)}.")
    if x.ndim < 3:
        raise ValueError(f"FullGrad needs inputs with spatial axes; got {tuple(x.shape)}.")

    def one(xa: torch.Tensor) -> torch.Tensor:
        input_part, parts = _fullgrad_parts(model, xa, y)
        dtype = _compute_dtype(input_part)
        total = _rescale(input_part.to(dtype)).sum(1, keepdim=True)
        tokens = [name for name, layer, part in parts
                  if isinstance(layer, nn.Linear) and part.ndim > 2]
        if tokens and reshape is None:
            raise ValueError(
                f"FullGrad: the linear layers {tokens[:3]}{' ...' if len(tokens) > 3 else ''} "
                "have token outputs (N, tokens, K) or (N, h, w, K), channels last; pass the "
                "reshape_transform of their layout (evalkit.explain.vit_reshape_transform() "
                "for ViT, swin_reshape_transform() for Swin)."
            )
        for name, layer, part in parts:
            if isinstance(layer, nn.Linear):
                if part.ndim <= 2:
                    continue  # (N, K): no position
                part = _reshaped(part, reshape, name, xa.ndim)
            elif part.ndim != xa.ndim:
                continue
            # resizing is linear, so the channel sum is taken first, at the layer's size
            m = _rescale(part.to(dtype)).sum(1, keepdim=True)
            total = total + interpolate_to(m, xa.shape[2:], upsample_mode)
        return total

    return _augmented(one, x, aug_smooth, aug_transforms).to(x.dtype)

