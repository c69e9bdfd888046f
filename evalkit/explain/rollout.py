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
(torchvision's ViT does), so the weights are recomputed, in a forward hook, from the module's
own input and projection weights (``softmax(Q K^T / sqrt(d))`` per head, with the call's
``attn_mask`` / ``key_padding_mask``); the forward pass itself is unchanged, and the hooks are
removed on exit, also on error. The map is class-agnostic: ``y`` is not used (the paper's
rollout does not look at the output). It is not min-max normalised (metrics normalise
explicitly); its values lie in [0, 1].

Options: ``head_fusion`` (``"mean"``, the paper's; ``"max"``, ``"min"``), ``discard_ratio``
(default 0: set that share of the smallest fused weights of every layer and sample to 0 before
the identity is added, the noise filter of Gildenblat's *vit-explain*, not in the paper),
``layer`` (attention modules, by name, path or object, or a list), ``prefix_tokens`` (tokens
before the patches: 1 for the class token, more with distillation or register tokens),
``class_token`` (the row read, default 0), ``height``/``width`` (the patch grid; default square),
``upsample_mode`` and ``raw`` (the map at the patch grid, (N, 1, h, w)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._hook_handles import HookHandles
from ..models import ModelWrapper
from ._hooks import interpolate_to, require_module, resolve_layers
from .cam import _grid
from .core import register_explainer

__all__ = ["HEAD_FUSIONS", "attention_rollout", "attention_rollout_grid", "attention_weights",
           "rollout"]

#: how the heads of a layer are fused
HEAD_FUSIONS = ("mean", "max", "min")


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def attention_weights(module: nn.MultiheadAttention, args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> torch.Tensor:
    """The per-head attention weights (N, heads, L, S) that ``module(*args, **kwargs)``
    computes: ``softmax(Q K^T / sqrt(d) + mask)`` from its input projections (as
    ``need_weights=True, average_attn_weights=False`` would return them in evaluation mode)."""
    if module.bias_k is not None or module.add_zero_attn:
        raise ValueError(
            "Attention rollout does not support nn.MultiheadAttention with add_bias_kv=True or "
            "add_zero_attn=True (the extra key has no input token to roll out to)."
        )
    query = _argument(args, kwargs, 0, "query")
    key = _argument(args, kwargs, 1, "key")
    batched = query.dim() == 3
    if not batched:  # (L, E): one unbatched sequence
        query, key = query.unsqueeze(1), key.unsqueeze(1)
    if module.batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    # (L, N, E) from here on, as in the module's own computation
    dtype = torch.float64 if query.dtype == torch.float64 else torch.float32
    e = module.embed_dim
    bias = module.in_proj_bias
    b_q = b_k = None
    if bias is not None:
        b_q, b_k = bias[:e].to(dtype), bias[e:2 * e].to(dtype)
    if module._qkv_same_embed_dim:
        w_q, w_k = module.in_proj_weight[:e], module.in_proj_weight[e:2 * e]
    else:
        w_q, w_k = module.q_proj_weight, module.k_proj_weight
    q = F.linear(query.to(dtype), w_q.to(dtype), b_q)
    k = F.linear(key.to(dtype), w_k.to(dtype), b_k)
    length, n = q.shape[:2]
    source = k.shape[0]
    heads = module.num_heads
    d = e // heads
    q = q.reshape(length, n, heads, d).permute(1, 2, 0, 3)  # (N, H, L, d)
    k = k.reshape(source, n, heads, d).permute(1, 2, 0, 3)  # (N, H, S, d)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    attn_mask = _argument(args, kwargs, 5, "attn_mask")
    padding = _argument(args, kwargs, 3, "key_padding_mask")
    if bool(kwargs.get("is_causal", False)) and attn_mask is None:
        attn_mask = torch.ones(length, source, dtype=torch.bool, device=q.device).triu(1)
    if attn_mask is not None:
        mask = _additive(attn_mask, dtype)
        scores = scores + (mask.reshape(n, heads, length, source) if mask.dim() == 3 else mask)
    if padding is not None:
        scores = scores + _additive(padding, dtype).reshape(n, 1, 1, source)
    return torch.softmax(scores, dim=-1)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True: not attended) as -inf, a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf"))
    return mask.to(dtype)


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

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], _out: Any) -> None:
        calls.append((names[id(module)], attention_weights(module, args, kwargs)))

    with HookHandles() as hooks, torch.no_grad():
        for _, module in modules:
            hooks.forward(module, hook, with_kwargs=True)
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
