"""Deep Feature Factorization (Collins, Achanta & Süsstrunk, ECCV 2018).

The activations of one layer for a batch of images, arranged as a (K channels x positions)
matrix, are factorised by non-negative matrix factorisation into ``n_components`` *concepts*
(directions in activation space) and, for every position of every image, how much of each
concept it holds. All images of the batch share the concepts (co-localisation); the per-concept
heatmaps show where each concept is. With the layer before the classifier's pooling, the
classifier head applied to the concept vectors says what each concept "is"
(``computation_on_concepts``).

>>> dff = DeepFeatureFactorization(model, "features.conv3", computation_on_concepts="fc")
>>> result = dff(x, n_components=4)                                     # doctest: +SKIP
>>> result.heatmaps.shape, result.concept_scores.shape                  # doctest: +SKIP
((N, 4, H, W), (4, n_classes))
>>> concepts, heatmaps, scores = result                                 # tutorial-style unpacking

Everything runs in torch on the model's device; the NMF initialisation draws from its own
``torch.Generator`` seeded by ``seed`` (never the global RNG), so results are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from .. import _rng
from .._validation import is_numpy_like
from ..modality import as_modality
from ..models import ModelWrapper, wrap_model
from ._hooks import capture, interpolate_to, require_module, resolve_layer
from .cam import check_channels_first, layout_error

__all__ = ["DeepFeatureFactorization", "FactorizationResult", "deep_feature_factorization", "nmf"]


def nmf(
    V: torch.Tensor,
    n_components: int,
    *,
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int | torch.Generator = 0,
) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """Non-negative matrix factorisation ``V ~ W @ H`` (Frobenius loss) by the multiplicative
    updates of Lee & Seung (2001).

    ``V`` (m, p) must be non-negative. The factors start from ``sqrt(mean(V) / k) * |N(0, 1)|``
    (scikit-learn's ``init="random"``) drawn from a generator seeded by ``seed`` (an int, or a
    ``torch.Generator`` used as is). Stops after ``max_iter`` iterations or when the relative
    decrease of the error over 10 iterations falls below ``tol``.

    Returns ``(W (m, k), H (k, p), relative_error, n_iter)`` with
    ``relative_error = ||V - WH||_F / ||V||_F``.
    """
    if V.ndim != 2:
        raise ValueError(f"`V` must be a matrix; got shape {tuple(V.shape)}.")
    if bool((V < 0).any()):
        raise ValueError("NMF needs a non-negative matrix `V`.")
    k = int(n_components)
    if k < 1:
        raise ValueError(f"`n_components` must be >= 1; got {n_components}.")
    m, p = V.shape
    if isinstance(seed, torch.Generator):
        gen = seed
    else:
        gen = torch.Generator(device=V.device)
        gen.manual_seed(_rng.resolve_seed(seed) & ((1 << 63) - 1))
    scale = float(torch.sqrt(V.mean() / k)) if bool(V.any()) else 1.0
    W = torch.randn((m, k), generator=gen, device=V.device, dtype=V.dtype).abs_() * scale
    H = torch.randn((k, p), generator=gen, device=V.device, dtype=V.dtype).abs_() * scale
    eps = torch.finfo(V.dtype).eps
    norm_v = float(torch.linalg.norm(V)) or 1.0
    previous = float(torch.linalg.norm(V - W @ H)) / norm_v
    it = 0
    for it in range(1, int(max_iter) + 1):
        H.mul_((W.T @ V) / ((W.T @ W) @ H).clamp_min(eps))
        W.mul_((V @ H.T) / (W @ (H @ H.T)).clamp_min(eps))
        if it % 10 == 0:
            error = float(torch.linalg.norm(V - W @ H)) / norm_v
            if previous - error < tol * max(previous, eps):
                previous = error
                break
            previous = error
    error = float(torch.linalg.norm(V - W @ H)) / norm_v
    return W, H, error, it


@dataclass
class FactorizationResult:
    """What :class:`DeepFeatureFactorization` returns.

    Attributes
    ----------
    concepts:
        (k, K) concept vectors in the layer's activation space (the NMF basis plus the
        per-channel offset that made the activations non-negative).
    heatmaps:
        (N, k, *S) where each concept is in each image, resized to the input and min-max scaled
        to [0, 1] per image and concept.
    raw_heatmaps:
        (N, k, *s) the NMF coefficients at the layer's resolution (not scaled).
    concept_scores:
        (k, ...) ``computation_on_concepts(concepts)`` (e.g. class logits per concept), or None.
    reconstruction_error:
        ``||V - WH||_F / ||V||_F`` of the factorisation.
    n_iter:
        NMF iterations run.

    Unpacks like pytorch-grad-cam's tuple: ``concepts, heatmaps, scores = result``.
    """

    concepts: Any
    heatmaps: Any
    raw_heatmaps: Any
    concept_scores: Any
    reconstruction_error: float
    n_iter: int

    def __iter__(self) -> Iterator[Any]:
        return iter((self.concepts, self.heatmaps, self.concept_scores))

    def numpy(self) -> FactorizationResult:
        """A copy with every tensor converted to a NumPy array."""
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
        return FactorizationResult(**values)


class DeepFeatureFactorization:
    """Deep Feature Factorization of one layer's activations.

    Parameters
    ----------
    model:
        A ``torch.nn.Module`` (or a wrapper of one).
    layer:
        The layer, by name (``model.named_modules()``), Python path or module object.
    reshape_transform:
        Maps the layer output to (N, K, *s): for token layouts,
        :func:`evalkit.explain.vit_reshape_transform` (ViT, e.g. torchvision's ``vit_b_16`` at
        ``"encoder.layers.encoder_layer_11.ln_1"``) or
        :func:`evalkit.explain.swin_reshape_transform` (Swin, e.g. ``swin_t`` at
        ``"features[-1]"``). A token layer (or an ``nn.LayerNorm`` / ``nn.Linear`` layer,
        channels-last by construction) without one raises a ``ValueError``.
    computation_on_concepts:
        Applied to the (k, K) concept vectors to score them: a callable, or the name of a
        submodule (e.g. ``"fc"`` for the classifier after global average pooling).
    max_iter, tol, seed:
        NMF settings (see :func:`nmf`); ``seed`` is an int or a ``torch.Generator``.
    batch_size:
        Images per forward pass when recording activations.
    """

    def __init__(
        self,
        model: Any,
        layer: Any,
        *,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        computation_on_concepts: Callable[[torch.Tensor], torch.Tensor] | str | None = None,
        max_iter: int = 200,
        tol: float = 1e-4,
        seed: int | torch.Generator = 0,
        batch_size: int | None = None,
    ) -> None:
        self.wrapper: ModelWrapper = wrap_model(model)
        module = require_module(self.wrapper, "DeepFeatureFactorization")
        self.layer_name, self.layer = resolve_layer(module, layer)
        if isinstance(computation_on_concepts, str):
            computation_on_concepts = resolve_layer(module, computation_on_concepts)[1]
        self.computation_on_concepts = computation_on_concepts
        self.reshape_transform = reshape_transform
        self.max_iter = max_iter
        self.tol = tol
        self.seed = seed
        self.batch_size = batch_size

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's (reshaped) activations for ``x`` (N, K, *s), in forward chunks."""
        check_channels_first([(self.layer_name, self.layer)], self.reshape_transform, x.ndim,
                             "DeepFeatureFactorization")
        wrapper = self.wrapper
        size = wrapper.resolve_batch_size(x, self.batch_size)
        parts = []
        with wrapper.evaluation(), torch.inference_mode():
            with capture([(self.layer_name, self.layer)]) as record:
                for start in range(0, x.shape[0], size):
                    record.clear()
                    wrapper(x[start : start + size])
                    (act,) = record.single()
                    parts.append(act)
        acts = torch.cat(parts, 0) if len(parts) > 1 else parts[0]
        out = self.reshape_transform(acts) if self.reshape_transform is not None else acts
        if not isinstance(out, torch.Tensor) or out.ndim != x.ndim or out.shape[0] != x.shape[0]:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise layout_error(self.layer_name, shape, x.ndim, "DeepFeatureFactorization")
        return out

    def __call__(self, x: Any, n_components: int = 16) -> FactorizationResult:
        """Factorise the layer's activations for the batch ``x`` into ``n_components``
        concepts shared by all its images. NumPy in gives NumPy arrays in the result."""
        numpy_in = is_numpy_like(x)
        xt = as_modality(None, x).check(self.wrapper.prepare(x), dtype=self.wrapper.dtype)
        A = self.activations(xt)
        dtype = torch.float64 if A.dtype == torch.float64 else torch.float32
        A = A.to(dtype)
        n, k_channels = A.shape[:2]
        spatial = tuple(A.shape[2:])
        V = A.transpose(0, 1).reshape(k_channels, -1)  # (K, N * positions)
        V = torch.nan_to_num(V, nan=0.0)
        offset = V.amin(1, keepdim=True)
        W, H, error, n_iter = nmf(V - offset, n_components, max_iter=self.max_iter,
                                  tol=self.tol, seed=self.seed)
        concepts = (W + offset).T.contiguous()  # (k, K)
        raw = H.reshape(n_components, n, *spatial).transpose(0, 1).contiguous()
        heat = interpolate_to(raw, xt.shape[2:]) if xt.ndim > 2 else raw
        flat = heat.flatten(2)
        lo = flat.amin(2).reshape(n, n_components, *([1] * (heat.ndim - 2)))
        span = flat.amax(2).reshape(lo.shape) - lo
        heat = torch.where(span > 0, (heat - lo) / torch.where(span > 0, span, 1), 0)
        scores = None
        if self.computation_on_concepts is not None:
            with torch.inference_mode():
                head = self.computation_on_concepts
                param = next(iter(head.parameters()), None) if isinstance(head, nn.Module) \
                    else None
                inp = concepts.to(param.dtype) if param is not None else concepts
                scores = head(inp)
        result = FactorizationResult(concepts, heat, raw, scores, error, n_iter)
        return result.numpy() if numpy_in else result


def deep_feature_factorization(
    model: Any, x: Any, layer: Any, n_components: int = 5, **kwargs: Any
) -> FactorizationResult:
    """One-call form of :class:`DeepFeatureFactorization`: ``DeepFeatureFactorization(model,
    layer, **kwargs)(x, n_components)``."""
    return DeepFeatureFactorization(model, layer, **kwargs)(x, n_components)
