"""The user's own check: plant a known mechanism into a model built for *your* inputs.

A metric that recovers the known order on the library's 12 x 12 testbeds may still fail at
your input size, your value range or your settings (a patch size larger than your images, a
baseline that is not the minimum of your data...). :func:`plant_mechanism` builds the same
mechanisms as :mod:`metaeval.validity.testbeds` (the same models, candidates and order) on your
own inputs ``x``, so that you can check a metric where you mean to use it:

>>> import torch
>>> from metaeval.validity import plant_mechanism
>>> x = torch.rand(8, 3, 32, 32)                  # your images (or series, tables, token ids)
>>> bed = plant_mechanism("region", x, seed=0)     # a model that reads only a region of x
>>> sorted(bed.candidates)
['inside', 'outside', 'random']

The planted models read your inputs as they are (any value range: the exact candidates are
computed against the per-sample minimum, evalkit's ``"black"`` baseline); the labels ``y`` are
fixed by the mechanism (the model's predictions, or class 1 where the mechanism needs positive
evidence). Known-mechanism testbeds follow XAI-Units (Lee et al. 2025) and AttributionLab
(Zhang et al. 2024); see ``docs/validity.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from evalkit._validation import as_tensor
from evalkit.modality import Modality, as_modality

from . import testbeds as _tb
from .testbed import Testbed

__all__ = ["PLANTABLE", "plant_mechanism"]

#: the mechanisms :func:`plant_mechanism` plants, and the modalities each supports
PLANTABLE: dict[str, tuple[str, ...]] = {
    "linear": ("image", "series", "tabular", "tokens"),
    "region": ("image", "series", "tabular", "tokens"),
    "saturation": ("image", "series", "tabular"),
    "invariance": ("image", "series", "tabular"),
    "sparsity": ("image", "series", "tabular", "tokens"),
    "model-aware": ("image", "series", "tabular"),
}


def plant_mechanism(kind: str, x: Any, *, modality: str | Modality | None = None,
                    region: Any = None, seed: int = 0, mask_token_id: int = 0) -> Testbed:
    """A testbed with a known mechanism, built for the inputs ``x`` you mean to evaluate on.

    Parameters
    ----------
    kind:
        The mechanism (:data:`PLANTABLE`): ``"linear"`` (exact attribution w * (x - x')),
        ``"region"`` (the model reads only ``region``; masks ``s``), ``"saturation"`` (the
        evidence in ``region`` saturates: zero gradient, exact IG), ``"invariance"`` (linear on
        ``region``, constant elsewhere; robustness), ``"sparsity"`` (reads one feature:
        ``region`` must then hold exactly one) or ``"model-aware"`` (a small random network:
        gradient maps vs model-blind maps; randomisation). (The completeness testbed is not
        planted: its exact map is complete against the zero baseline only, which is the
        "black" baseline only where every sample's minimum is 0, as in the library's data.)
    x:
        Your inputs (tensor or array): images (N, C, H, W), series (N, C, T), tables (N, F) or
        token ids (N, L) integers; at least two samples. They are used as given (a CPU copy,
        in their own floating dtype); the testbed's ``x`` is them.
    modality:
        ``"image"``, ``"series"``, ``"tabular"``, ``"tokens"`` or a
        :class:`~evalkit.modality.Modality`; ``None`` infers it from the shape and dtype.
    region:
        Where the mechanism reads (``"region"``, ``"saturation"``, ``"invariance"``,
        ``"sparsity"``): a boolean mask over the features, shaped (H, W) / (T,) / (F,) / (L,)
        (or with a leading channel axis of 1, or the shape of one input with identical
        channels). ``None``: a box of about a third of every axis
        (:func:`~metaeval.validity.testbeds.default_region`), or for ``"sparsity"`` the
        feature a third of the way along every axis.
    seed:
        The seed of the model's weights and of the random candidates (deterministic).
    mask_token_id:
        Token ids only: the id that stands for a removed token (its embedding is zero, so the
        exact contributions are against it); it must be the ``mask_token_id`` of the modality
        your metrics use (evalkit's default, 0).

    Returns
    -------
    Testbed
        With the same candidates and order as the library testbed of the mechanism (e.g.
        ``build_testbed("image-region")``), its ``families`` and, for non-image inputs,
        ``metric_kwargs={"modality": ...}``.
    """
    if kind not in PLANTABLE:
        raise ValueError(f"Unknown mechanism {kind!r} to plant; one of {list(PLANTABLE)}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an int; got {seed!r}.")
    x = as_tensor(x, "x").detach().cpu()
    mod = as_modality(modality, x)
    name = mod.name
    if name not in PLANTABLE[kind]:
        raise ValueError(f"The {kind!r} mechanism cannot be planted into {name} inputs; it "
                         f"supports {PLANTABLE[kind]}.")
    x = mod.check(x, "x").clone()
    rank = {"image": 4, "series": 3, "tabular": 2, "tokens": 2}[name]
    if x.ndim != rank:
        raise ValueError(f"plant_mechanism takes {name} inputs of rank {rank} (e.g. (N, C, H, "
                         f"W) images); got shape {tuple(x.shape)}.")
    if x.shape[0] < 2:
        raise ValueError(f"`x` must hold at least two samples; got {x.shape[0]}.")
    if name == "tokens":
        if int(x.min()) < 0:
            raise ValueError("Token ids must be non-negative.")
        if mask_token_id != 0:
            raise ValueError("plant_mechanism plants token models whose mask token is id 0 "
                             "(evalkit's default `mask_token_id`); got "
                             f"mask_token_id={mask_token_id}.")
    fshape = _tb._feature_shape(name, tuple(x.shape[1:]))
    mask = _feature_mask(region, name, tuple(x.shape[1:]), kind)
    build = x.to(torch.float32) if x.is_floating_point() else x
    label = f"planted-{name}-{kind}"
    if kind == "linear":
        bed = _tb._plant_linear(build, name, seed, label)
    elif kind == "region":
        bed = _tb._plant_region(build, name, seed, label, _or_default(mask, fshape))
    elif kind == "saturation":
        bed = _tb._plant_saturation(build, name, seed, label, _or_default(mask, fshape))
    elif kind == "invariance":
        bed = _tb._plant_invariance(build, name, seed, label, _or_default(mask, fshape))
    elif kind == "sparsity":
        if mask is None:
            mask = torch.zeros(fshape, dtype=torch.bool)
            mask[tuple(d // 3 for d in fshape)] = True
        bed = _tb._plant_one_hot(build, name, seed, label, mask)
    else:
        bed = _tb._plant_model_aware(build, name, seed, label)
    if x.is_floating_point() and x.dtype != torch.float32:
        # the model in the user's dtype, the testbed on the user's own values
        bed.model.to(x.dtype)
        bed.x = x
        if bed.reference is not None:
            bed.reference = bed.explanation(next(iter(bed.candidates)))
    return bed


def _or_default(mask: torch.Tensor | None, fshape: tuple[int, ...]) -> torch.Tensor:
    return _tb.default_region(fshape) if mask is None else mask


def _feature_mask(region: Any, modality: str, shape: tuple[int, ...], kind: str
                  ) -> torch.Tensor | None:
    """``region`` as a bool mask over the features, checked."""
    if region is None:
        return None
    if kind not in ("region", "saturation", "invariance", "sparsity"):
        raise ValueError(f"The {kind!r} mechanism takes no `region`.")
    fshape = _tb._feature_shape(modality, shape)
    mask = torch.as_tensor(np.asarray(region) if not isinstance(region, torch.Tensor)
                           else region).detach().cpu()
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("`region` must be a boolean (0/1) mask.")
        mask = mask.to(torch.bool)
    if tuple(mask.shape) == fshape:
        pass
    elif tuple(mask.shape) == (1, *fshape):
        mask = mask[0]
    elif _tb._has_channels(modality) and tuple(mask.shape) == tuple(shape):
        if not bool((mask == mask[:1]).all()):
            raise ValueError("`region` differs between channels; give one mask over the "
                             f"features, shape {fshape}.")
        mask = mask[0]
    else:
        raise ValueError(f"`region` of shape {tuple(mask.shape)} does not match the features "
                         f"of the inputs: expected {fshape} (or (1, *{fshape})).")
    count = int(mask.sum())
    total = mask.numel()
    if count == 0:
        raise ValueError("`region` is empty: the mechanism must read at least one feature.")
    if kind == "sparsity" and count != 1:
        raise ValueError(f"The 'sparsity' mechanism reads exactly one feature; `region` holds "
                         f"{count}.")
    if kind in ("region", "invariance") and count == total:
        raise ValueError("`region` covers every feature: there is no outside to ignore.")
    return mask.clone()
