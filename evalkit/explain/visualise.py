"""Overlays of explanations on images, with NumPy and matplotlib only (no OpenCV).

Both functions take images as float arrays in [0, 1], (H, W, 3) or (3, H, W) (NumPy or torch),
never modify their arguments, and return ``uint8`` RGB arrays (H, W', 3). pytorch-grad-cam's
``show_cam_on_image`` returns BGR colours by default (its "inverted colours" reports); these are
always RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["show_cam_on_image", "show_factorization_on_image"]


def _array(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.array(value, dtype=np.float64)  # a copy: the caller's array is never touched
    if not np.isfinite(arr).all():
        raise ValueError(f"`{name}` contains NaN or Inf values.")
    return arr


def _image(img: Any) -> np.ndarray:
    arr = _array(img, "img")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"`img` must be (H, W, 3), (3, H, W) or (H, W); got {arr.shape}.")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.min() < 0 or arr.max() > 1:
        raise ValueError(
            "`img` must hold floats in [0, 1] (e.g. uint8 / 255); got values in "
            f"[{arr.min():.3g}, {arr.max():.3g}]."
        )
    return arr


def _map2d(mask: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    arr = np.squeeze(_array(mask, name))
    if arr.ndim != 2 or arr.shape != shape:
        raise ValueError(f"`{name}` must be one (H, W) = {shape} map; got {np.shape(mask)}.")
    return arr


def show_cam_on_image(
    img: Any,
    mask: Any,
    *,
    colormap: str = "jet",
    image_weight: float = 0.5,
    normalise: bool = True,
) -> np.ndarray:
    """Blend a heatmap over an image.

    Parameters
    ----------
    img:
        Float image in [0, 1], (H, W, 3) or (3, H, W).
    mask:
        The map, (H, W) (or (1, H, W)); min-max scaled to [0, 1] when ``normalise`` (a
        constant map becomes 0), else expected in [0, 1] and clipped.
    colormap:
        A matplotlib colormap name.
    image_weight:
        Weight of the image in the blend: ``(1 - w) * heatmap + w * img``, then divided by its
        maximum.

    Returns
    -------
    ``uint8`` RGB array (H, W, 3).
    """
    import matplotlib

    if not 0.0 <= float(image_weight) <= 1.0:
        raise ValueError(f"`image_weight` must be in [0, 1]; got {image_weight}.")
    image = _image(img)
    m = _map2d(mask, image.shape[:2], "mask")
    if normalise:
        span = m.max() - m.min()
        m = (m - m.min()) / span if span > 0 else np.zeros_like(m)
    m = np.clip(m, 0.0, 1.0)
    heat = matplotlib.colormaps[colormap](m)[..., :3]
    blend = (1.0 - image_weight) * heat + image_weight * image
    peak = blend.max()
    if peak > 0:
        blend = blend / peak
    return np.uint8(np.round(255 * blend))


def show_factorization_on_image(
    img: Any,
    explanations: Any,
    *,
    colors: Sequence[Sequence[float]] | np.ndarray | None = None,
    image_weight: float = 0.5,
    concept_labels: Sequence[str] | None = None,
    legend_width: float = 0.5,
) -> np.ndarray:
    """One picture of k concept heatmaps (e.g. ``FactorizationResult.heatmaps[i]``).

    Each pixel takes the colour of the concept with the highest value there, with that value
    as its brightness (HSV value); the coloured map is blended with the image. Concept colours
    default to evenly spaced ``gist_rainbow`` hues. With ``concept_labels`` a legend is drawn
    with matplotlib and placed to the right (``legend_width`` times the image width).
    ``explanations`` is not modified (pytorch-grad-cam zeroes the losing pixels in place).

    Returns
    -------
    ``uint8`` RGB array (H, W, 3), or (H, W + legend, 3) with labels.
    """
    import matplotlib
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    image = _image(img)
    maps = np.squeeze(_array(explanations, "explanations"))
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3 or maps.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"`explanations` must be (k, H, W) with (H, W) = {image.shape[:2]}; got "
            f"{np.shape(explanations)}."
        )
    k = maps.shape[0]
    if colors is None:
        palette = matplotlib.colormaps["gist_rainbow"](np.arange(k) / max(k, 1))[:, :3]
    else:
        palette = np.asarray(colors, dtype=np.float64)[:, :3]
        if palette.shape[0] < k:
            raise ValueError(f"{palette.shape[0]} colours for {k} concepts.")
        if palette.max() > 1:
            palette = palette / 255.0
    winner = maps.argmax(0)
    value = np.clip(np.take_along_axis(maps, winner[None], 0)[0], 0.0, 1.0)
    hsv = rgb_to_hsv(palette[winner])
    hsv[..., 2] = value
    coloured = hsv_to_rgb(hsv)
    blend = (1.0 - image_weight) * coloured + image_weight * image
    peak = blend.max()
    if peak > 0:
        blend = blend / peak
    out = np.uint8(np.round(255 * blend))
    if concept_labels is None:
        return out
    if len(concept_labels) != k:
        raise ValueError(f"{len(concept_labels)} concept labels for {k} concepts.")
    return np.concatenate([out, _legend(palette[:k], concept_labels, out.shape[0],
                                        max(1, int(out.shape[1] * legend_width)))], axis=1)


def _legend(palette: np.ndarray, labels: Sequence[str], height: int, width: int) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    handles = [Patch(color=tuple(c), label=str(label)) for c, label in zip(palette, labels,
                                                                             strict=True)]
    fig.legend(handles=handles, loc="center", frameon=False, fontsize="small")
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())[..., :3]
    if rgba.shape[:2] != (height, width):  # rounding of the figure size in pixels
        rows = np.linspace(0, rgba.shape[0] - 1, height).round().astype(int)
        cols = np.linspace(0, rgba.shape[1] - 1, width).round().astype(int)
        rgba = rgba[rows][:, cols]
    return np.ascontiguousarray(rgba, dtype=np.uint8)
