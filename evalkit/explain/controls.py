"""Control "explanations" for sanity checks.

``Random``, ``Constant`` and ``Sobel`` carry no information about the model (a method that does
not beat them on a metric tells little, Adebayo et al. 2018; the pytorch-grad-cam tutorial
compares every CAM with Sobel and RandomCAM). ``GroundTruth`` returns the ground-truth mask
itself: the best a localisation metric can see, and a check of the metric.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .. import _rng
from .._validation import as_tensor, check_attributions, check_option
from ..models import ModelWrapper
from .core import ALL_MODALITIES, GRID_MODALITIES, register_explainer

_CONTROL = {"model_free": True, "uses_target": False, "modalities": ALL_MODALITIES}


def _map_dtype(model: ModelWrapper, x: torch.Tensor) -> torch.dtype:
    """The dtype of a control map: the inputs' (floating) dtype, or for integer token ids the
    model's floating dtype."""
    if x.is_floating_point():
        return x.dtype
    return model.dtype if isinstance(model, ModelWrapper) else torch.get_default_dtype()


@register_explainer("Random", aliases=("Control Var. Random Uniform",), stochastic=True,
                    **_CONTROL)
def random_uniform(
    model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, *, seed: int = 0,
    channels: int = 1, **_: Any
) -> torch.Tensor:
    """U[0, 1) noise, seeded per sample (same map for a sample in any batch): (N, channels,
    ...) for images and series, (N, F) for tables, (N, L) for token ids."""
    keys = _rng.sample_keys(x, seed)
    shape = (channels, *x.shape[2:]) if x.ndim > 2 else tuple(x.shape[1:])
    return _rng.uniform(keys, shape, dtype=_map_dtype(model, x))


@register_explainer("Constant", aliases=("Control Var. Constant",), **_CONTROL)
def constant(
    model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, *, constant_value: float = 1.0,
    **_: Any
) -> torch.Tensor:
    """The same value everywhere: (N, 1, ...) for images and series, (N, F) for tables,
    (N, L) for token ids."""
    shape = (x.shape[0], 1, *x.shape[2:]) if x.ndim > 2 else tuple(x.shape)
    return torch.full(shape, float(constant_value), dtype=_map_dtype(model, x), device=x.device)


_LUMA = (0.299, 0.587, 0.114)


@register_explainer("Sobel", aliases=("Control Var. Sobel Filter", "SobelCAM"),
                    **{**_CONTROL, "modalities": GRID_MODALITIES})
def sobel(
    model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, *, grayscale: str = "mean",
    **_: Any
) -> torch.Tensor:
    """Sobel edge magnitude ``0.5 |Gx| + 0.5 |Gy|`` of the grey image, (N, 1, H, W); for time
    series the 1-D analogue, the gradient magnitude along time, (N, 1, T).

    The grey image is the channel mean (``grayscale="mean"``) or, for 3-channel RGB inputs,
    ``grayscale="luma"`` (0.299 R + 0.587 G + 0.114 B, as ``cv2.COLOR_RGB2GRAY``). The 3 x 3
    Sobel kernels run as a torch convolution with reflected borders (OpenCV's default
    ``BORDER_REFLECT_101``). Unlike pytorch-grad-cam's ``sobel_cam`` it works on the input
    tensor as given (no uint8 conversion or saturation), batched on the model's device.

    Series (N, C, T): the channel mean ``s`` and its central difference
    ``|s[t+1] - s[t-1]| / 2`` (a 1-D signal has no cross axis to smooth along), with the same
    reflected borders, so the first and last steps get 0. Tables and token ids have no axis
    to differentiate along: ``explain`` refuses them (the method declares image and series).
    """
    check_option("grayscale", grayscale, ("mean", "luma"))
    if x.ndim == 3:
        return _sobel_1d(x)
    if x.ndim != 4:
        raise ValueError(f"Sobel needs images (N, C, H, W) or series (N, C, T); got shape "
                         f"{tuple(x.shape)}.")
    if x.shape[2] < 2 or x.shape[3] < 2:
        raise ValueError(f"Sobel needs images of at least 2 x 2 pixels; got {tuple(x.shape)}.")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.detach().to(dtype)
    if grayscale == "luma":
        if x.shape[1] != 3:
            raise ValueError(f"grayscale='luma' needs 3-channel RGB images; got {x.shape[1]}.")
        w = torch.tensor(_LUMA, dtype=dtype, device=x.device).reshape(1, 3, 1, 1)
        gray = (xf * w).sum(1, keepdim=True)
    else:
        gray = xf.mean(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=dtype,
                      device=x.device)
    kernels = torch.stack([kx, kx.T]).unsqueeze(1)  # (2, 1, 3, 3): d/dx, d/dy
    g = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="reflect"), kernels)
    return (0.5 * g.abs().sum(1, keepdim=True)).to(x.dtype)


def _sobel_1d(x: torch.Tensor) -> torch.Tensor:
    """``|s[t+1] - s[t-1]| / 2`` of the channel mean ``s``, reflected borders: (N, 1, T)."""
    if x.shape[2] < 2:
        raise ValueError(f"Sobel needs series of at least 2 time steps; got {tuple(x.shape)}.")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    signal = x.detach().to(dtype).mean(1, keepdim=True)
    padded = F.pad(signal, (1, 1), mode="reflect")
    return (0.5 * (padded[..., 2:] - padded[..., :-2]).abs()).to(x.dtype)


@register_explainer("GroundTruth", aliases=("Control Var. Ground Truth",),
                    per_sample=("masks", "s"), needs_masks=True, **_CONTROL)
def ground_truth(
    model: ModelWrapper, x: torch.Tensor, y: torch.Tensor | None, *, masks: Any = None,
    s: Any = None, **_: Any
) -> torch.Tensor:
    """The ground-truth mask as the explanation: ``explain(model, x, y, "GroundTruth",
    masks=s)``.

    ``masks`` (``s`` is accepted too, the metrics' name) has one mask per sample: (N, 1, *S),
    (N, C, *S) or (N, *S); binary or soft values are returned as they are, as floats of shape
    (N, 1 or C, *S). ``explain`` slices the masks with the inputs when it chunks the batch
    (``ExplainerInfo.per_sample``). Callers that re-explain perturbed copies of the inputs
    (robustness metrics) must pass the masks aligned with those copies, e.g. each sample's mask
    repeated once per perturbation; ``explainer_info("GroundTruth").needs_masks`` tells
    ``evaluate()`` to pass them.
    """
    given = masks if masks is not None else s
    if given is None:
        raise ValueError(
            "GroundTruth needs the ground-truth masks: explain(model, x, y, "
            "method='GroundTruth', masks=s) with one mask per sample."
        )
    m = as_tensor(given, "masks", device=x.device)
    dtype = _map_dtype(model, x)
    if m.dtype == torch.bool or not m.is_floating_point():
        m = m.to(dtype)
    return check_attributions(m, x, name="masks", allow_non_finite=False).to(dtype)
