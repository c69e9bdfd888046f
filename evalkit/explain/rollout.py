"""Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020)
for vision transformers.

Each layer's attention ``W_l`` (N, heads, T, T) is fused over its heads (mean, max or min) and
the residual connection is accounted for by adding the identity and re-normalising the rows,
``A_l = (W_l + I) / rowsum(W_l + I)`` (for mean-fused heads, the paper's ``0.5 W + 0.5 I``). The
rollout multiplies the layers from the input up, ``R = A_L ... A_2 A_1``: row ``i`` of ``R`` is
how much token ``i`` at the top draws from every input token. The map is the class token's row
over the patch tokens, folded into the patch grid and resized to the input (bilinear):

>>> a = evalkit.explain(vit, x, method="AttentionRollout")            # doctest: +SKIP
>>> a.shape                                                           # doctest: +SKIP
(N, 1, 224, 224)

The attention weights are those of every ``nn.MultiheadAttention`` module of the model
(torchvision's ``VisionTransformer`` and ``nn.TransformerEncoder``), in the order they run, or
of the modules named by ``layer=``. Many models call these modules with ``need_weights=False``
(torchvision's ViT does), so a forward pre-hook asks each call for its per-head weights
(``need_weights=True, average_attn_weights=False``) and a forward hook records them and hands
the caller what it asked for (``None``, or the head-averaged weights); the module computes its
attention with its explicit path instead of the fused kernel (the same values up to rounding),
and the hooks are removed on exit, also on error. Nothing on the model is changed. The map is
class-agnostic: ``y`` is not used (the paper's rollout does not look at the output). It is not
min-max normalised (metrics normalise explicitly); its values lie in [0, 1].

Options: ``head_fusion`` (``"mean"``, the paper's; ``"max"``, ``"min"``), ``discard_ratio``
(default 0: set that share of the smallest fused weights of every layer and sample to 0 before
the identity is added, the noise filter of Gildenblat's *vit-explain*, not in the paper),
``layer`` (attention modules, by name, path or object, or a list), ``prefix_tokens`` (tokens
before the patches: 1 for the class token, more with distillation or register tokens),
``class_token`` (the row read, default 0), ``height``/``width`` (the patch grid; default square),
``upsample_mode`` and ``raw`` (the map at the patch grid, (N, 1, h, w)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._hook_handles import HookHandles
from ..models import ModelWrapper
from ._hooks import interpolate_to, require_module, resolve_layers
from .cam import _grid
from .core import register_explainer

__all__ = ["HEAD_FUSIONS", "attention_rollout", "attention_rollout_grid", "rollout"]

#: how the heads of a layer are fused
HEAD_FUSIONS = ("mean", "max", "min")
#: (position, name) of nn.MultiheadAttention.forward's arguments that decide what it returns
_WEIGHT_FLAGS = ((4, "need_weights"), (6, "average_attn_weights"))


def rollout(attentions: Sequence[torch.Tensor], *, head_fusion: str = "mean",
            discard_ratio: float = 0.0) -> torch.Tensor:
    """The attention rollout ``A_L ... A_1`` (N, T, T) of per-layer attention weights
    (N, heads, T, T) (first layer first), with ``A_l`` the head-fused weights plus the identity,
    rows re-normalised (Abnar & Zuidema 2020); see the module docstring for ``discard_ratio``."""
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"`head_fusion` must be one of {HEAD_FUSIONS}; got {head_fusion!r}.")
    ratio = float(discard_ratio)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"`discard_ratio` must be in [0, 1); got {discard_ratio!r}.")
    if not attentions:
        raise ValueError("Attention rollout needs the weights of at least one attention layer.")
    result = None
    for weights in attentions:
        if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2]:
            raise ValueError(
                f"Attention rollout needs self-attention weights (N, heads, T, T); got "
                f"{tuple(weights.shape)} (cross-attention, or a sequence of another length)."
            )
        if head_fusion == "mean":
            fused = weights.mean(1)
        elif head_fusion == "max":
            fused = weights.amax(1)
        else:
            fused = weights.amin(1)
        n, t = fused.shape[:2]
        dropped = int(t * t * ratio)
        if dropped:
            flat = fused.reshape(n, -1)
            lowest = flat.topk(dropped, dim=1, largest=False).indices
            fused = flat.scatter(1, lowest, 0.0).reshape(n, t, t)
        eye = torch.eye(t, dtype=fused.dtype, device=fused.device)
        a = fused + eye
        a = a / a.sum(-1, keepdim=True)
        result = a if result is None else a @ result
    return result


def _attention_modules(root: nn.Module, layer: Any) -> list[tuple[str, nn.Module]]:
    if layer is not None:
        found = resolve_layers(root, layer)
        wrong = [name for name, m in found if not isinstance(m, nn.MultiheadAttention)]
        if wrong:
            raise ValueError(
                f"AttentionRollout reads nn.MultiheadAttention modules; {wrong} are not (name "
                "the attention modules themselves, e.g. "
                "'encoder.layers.encoder_layer_0.self_attention')."
            )
        return found
    found = [(name, m) for name, m in root.named_modules()
             if isinstance(m, nn.MultiheadAttention)]
    if not found:
        raise ValueError(
            f"AttentionRollout needs a transformer with nn.MultiheadAttention modules (such as "
            f"torchvision's ViT or nn.TransformerEncoder); {type(root).__name__} has none. "
            "Attention modules that compute attention with their own code (timm, Hugging Face) "
            "are not read; for CNNs use a CAM or a gradient method."
        )
    return found


def attention_rollout_grid(model: ModelWrapper, x: torch.Tensor, *, layer: Any = None,
                           head_fusion: str = "mean", discard_ratio: float = 0.0,
                           prefix_tokens: int = 1, class_token: int = 0,
                           height: int | None = None, width: int | None = None) -> torch.Tensor:
    """The rollout row of ``class_token`` over the patch tokens, (N, 1, h, w)."""
    root = require_module(model, "AttentionRollout")
    modules = _attention_modules(root, layer)
    names = {id(m): name for name, m in modules}
    calls: list[tuple[str, torch.Tensor]] = []
    asked: list[tuple[bool, bool]] = []  # what each pending call's caller asked for

    def ask_for_weights(module: nn.Module, args: tuple[Any, ...],
                        kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if module.bias_k is not None or module.add_zero_attn:
            raise ValueError(
                "AttentionRollout does not support nn.MultiheadAttention with add_bias_kv=True "
                "or add_zero_attn=True (the extra key has no input token to roll out to)."
            )
        args, kwargs = list(args), dict(kwargs)
        flags = []
        for index, name in _WEIGHT_FLAGS:  # positional or keyword, default True
            if len(args) > index:
                flags.append(bool(args[index]))
                args[index] = name == "need_weights"
            else:
                flags.append(bool(kwargs.get(name, True)))
                kwargs[name] = name == "need_weights"
        asked.append((flags[0], flags[1]))
        return tuple(args), kwargs

    def record(module: nn.Module, _args: Any, _kwargs: Any, output: Any) -> Any:
        need, average = asked.pop()
        out, weights = output
        per_head = weights.unsqueeze(0) if weights.dim() == 3 else weights  # unbatched input
        dtype = torch.float64 if weights.dtype == torch.float64 else torch.float32
        calls.append((names[id(module)], per_head.detach().to(dtype)))  # half: in float32
        if not need:
            return out, None
        return out, weights.mean(-3) if average else weights

    with HookHandles() as hooks, torch.no_grad():
        for _, module in modules:
            hooks.forward_pre(module, ask_for_weights, with_kwargs=True)
            hooks.forward(module, record, with_kwargs=True)
        model(x)
    ran = [name for name, _ in calls]
    missing = [name for name, _ in modules if name not in ran]
    if missing or len(ran) != len(set(ran)):
        twice = sorted({name for name in ran if ran.count(name) > 1})
        raise ValueError(
            "AttentionRollout needs every attention module to run once per forward pass; "
            + (f"{missing} did not run" if missing else f"{twice} ran more than once")
            + " (pass the modules to roll out through with layer=)."
        )
    r = rollout([w for _, w in calls], head_fusion=head_fusion, discard_ratio=discard_ratio)
    t = r.shape[-1]
    if not 0 <= int(class_token) < t or not 0 <= int(prefix_tokens) < t:
        raise ValueError(f"class_token={class_token} and prefix_tokens={prefix_tokens} must "
                         f"index the {t} tokens.")
    row = r[:, int(class_token), int(prefix_tokens):]
    h, w = _grid(row.shape[1], height, width, int(prefix_tokens))
    return row.reshape(row.shape[0], 1, h, w)


@register_explainer("AttentionRollout", requires_module=True, uses_target=False,
                    modalities=("image",))
def attention_rollout(model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None,
                      **kw: Any) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) for vision transformers with
    ``nn.MultiheadAttention`` (torchvision's ViT): the class token's row of the product of the
    layers' head-fused attention (plus the identity, for the residual connections, rows
    re-normalised), over the patch grid, resized to the input. Class-agnostic (``y`` is not
    used); options ``head_fusion`` (mean/max/min), ``discard_ratio``, ``layer``,
    ``prefix_tokens``, ``class_token``, ``height``/``width``, ``upsample_mode``, ``raw``
    (see :mod:`evalkit.explain.rollout`). One forward pass, no gradients."""
    options = {key: kw.pop(key) for key in ("layer", "head_fusion", "discard_ratio",
                                            "prefix_tokens", "class_token", "height", "width")
               if key in kw}
    upsample_mode = kw.pop("upsample_mode", None)
    raw = bool(kw.pop("raw", False))
    if kw:
        raise TypeError(f"AttentionRollout got unexpected keyword arguments {sorted(kw)}.")
    if x.ndim != 4:
        raise ValueError(f"AttentionRollout needs images (N, C, H, W); got {tuple(x.shape)}.")
    grid = attention_rollout_grid(model, x, **options)
    out = grid if raw else interpolate_to(grid, x.shape[2:], upsample_mode)
    return out.to(x.dtype)
