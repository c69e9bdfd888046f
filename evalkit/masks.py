"""Ground truth for localisation: masks from boxes, boxes from masks and maps, IoU, tolerance
dilation, 2x2 mosaics (for Focus) and the CAM paper's box-localisation protocol.

Everything is vectorised over the batch. NumPy in gives NumPy out; tensors in give tensors out
on the same device.

Box convention
--------------
A box is ``(x0, y0, x1, y1)`` in pixel units, ``x`` along the width (columns) and ``y`` along
the height (rows), **end-exclusive**: the integer box ``(x0, y0, x1, y1)`` covers
``mask[y0:y1, x0:x1]`` and has area ``(x1 - x0) * (y1 - y0)`` (the convention of
:func:`evalkit.datasets.make_shapes`). In general a pixel (row ``r``, column ``c``) is inside a
box when its centre is: ``x0 <= c + 0.5 < x1`` and ``y0 <= r + 0.5 < y1``; for integer boxes
this is exactly the slice above, and fractional boxes work too. Boxes reaching outside the image
are clipped to it. ``inclusive=True`` reads ``x1, y1`` as the last covered pixel (add 1), as in
annotation formats that store the last pixel rather than the end.

>>> import numpy as np
>>> masks_from_boxes(np.array([[1, 0, 3, 2]]), (3, 4))[0, 0].astype(int)
array([[0, 1, 1, 0],
       [0, 1, 1, 0],
       [0, 0, 0, 0]])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import _rng
from ._validation import as_tensor, check_option, check_scalar, is_numpy_like, to_numpy

__all__ = [
    "BoxLocalisationResult",
    "Mosaics",
    "box_iou",
    "boxes_from_maps",
    "boxes_from_masks",
    "build_mosaics",
    "cam_localisation",
    "dilate",
    "make_mosaics",
    "masks_from_boxes",
    "quadrant_masks",
]

#: quadrant order used by mosaics and Focus: top-left, top-right, bottom-left, bottom-right
QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


def _size2(size: Any) -> tuple[int, int]:
    if isinstance(size, int | np.integer) and not isinstance(size, bool):
        size = (int(size), int(size))
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise TypeError(f"`size` must be an int or a pair (H, W); got {size!r}.") from None
    if h < 1 or w < 1:
        raise ValueError(f"`size` must be positive; got {(h, w)}.")
    return h, w


def _out(t: torch.Tensor, numpy_like: bool) -> Any:
    return to_numpy(t) if numpy_like else t


# --------------------------------------------------------------------------- boxes and masks
def _box_tensor(boxes: Any, name: str = "boxes") -> tuple[torch.Tensor, bool, int]:
    """Boxes as a float64 tensor (N, K, 4) (NaN rows pad ragged lists), whether the input was
    NumPy-like, and the input's rank (1 for a single box, 2 for (N, 4), 3 for (N, K, 4))."""
    if isinstance(boxes, list | tuple) and boxes and not isinstance(boxes[0], numbers_like):
        parts = [as_tensor(b, f"{name}[{i}]", dtype=torch.float64).reshape(-1, 4)
                 if np.size(b) % 4 == 0 else _bad_box(name, np.shape(b))
                 for i, b in enumerate(boxes)]
        k = max(1, max(p.shape[0] for p in parts))
        device = parts[0].device
        out = torch.full((len(parts), k, 4), float("nan"), dtype=torch.float64, device=device)
        for i, p in enumerate(parts):
            out[i, : p.shape[0]] = p.to(device)
        numpy_like = not isinstance(boxes[0], torch.Tensor)
        return out, numpy_like, 3
    numpy_like = not isinstance(boxes, torch.Tensor)
    t = as_tensor(boxes, name, dtype=torch.float64)
    if t.ndim == 0 or t.shape[-1] != 4 or t.ndim > 3:
        _bad_box(name, tuple(t.shape))
    rank = t.ndim
    if rank == 1:
        t = t.reshape(1, 1, 4)
    elif rank == 2:
        t = t.unsqueeze(1)
    return t, numpy_like, rank


numbers_like = (int, float, np.integer, np.floating)


def _bad_box(name: str, shape: tuple) -> Any:
    raise ValueError(
        f"`{name}` must hold boxes (x0, y0, x1, y1): shape (4,), (N, 4), (N, K, 4) or a list "
        f"of (K_i, 4) arrays; got shape {shape}."
    )


def _check_box_order(t: torch.Tensor, name: str) -> None:
    bad = (t[..., 2] < t[..., 0]) | (t[..., 3] < t[..., 1])
    if bool(bad.any()):
        raise ValueError(
            f"`{name}` has boxes with x1 < x0 or y1 < y0; boxes are (x0, y0, x1, y1) corners, "
            "not (x, y, width, height)."
        )


def masks_from_boxes(boxes: Any, size: Any, *, inclusive: bool = False) -> Any:
    """Binary masks covering the given boxes (see the module docstring for the convention).

    Parameters
    ----------
    boxes:
        One box ``(4,)``, one box per sample ``(N, 4)``, several per sample ``(N, K, 4)`` (rows
        of NaN are padding), or a list of ``(K_i, 4)`` arrays. Several boxes of a sample are
        united.
    size:
        The image size ``(H, W)`` (or an int for square images).
    inclusive:
        ``x1, y1`` name the last covered pixel instead of the end (1 is added).

    Returns
    -------
    bool masks: ``(H, W)`` for a single box, else ``(N, 1, H, W)``; NumPy if ``boxes`` was not a
    tensor.
    """
    h, w = _size2(size)
    t, numpy_like, rank = _box_tensor(boxes)
    _check_box_order(t, "boxes")
    if inclusive:
        t = t + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=t.dtype, device=t.device)
    cols = torch.arange(w, dtype=t.dtype, device=t.device) + 0.5
    rows = torch.arange(h, dtype=t.dtype, device=t.device) + 0.5
    in_x = (cols >= t[..., 0:1]) & (cols < t[..., 2:3])  # (N, K, W); NaN rows give False
    in_y = (rows >= t[..., 1:2]) & (rows < t[..., 3:4])  # (N, K, H)
    masks = (in_y.unsqueeze(-1) & in_x.unsqueeze(-2)).any(1)  # (N, H, W)
    out = masks[0] if rank == 1 else masks.unsqueeze(1)
    return _out(out, numpy_like)


def _as_mask_stack(masks: Any, name: str = "masks") -> tuple[torch.Tensor, bool, int]:
    """Masks as bool (N, H, W); accepts (H, W), (N, H, W) or (N, 1, H, W)."""
    numpy_like = is_numpy_like(masks)
    t = as_tensor(masks, name)
    rank = t.ndim
    if t.ndim == 2:
        t = t.unsqueeze(0)
    elif t.ndim == 4:
        if t.shape[1] != 1:
            raise ValueError(f"`{name}` must have one channel, (N, 1, H, W); got {tuple(t.shape)}.")
        t = t[:, 0]
    elif t.ndim != 3:
        raise ValueError(f"`{name}` must be (H, W), (N, H, W) or (N, 1, H, W); got "
                         f"{tuple(t.shape)}.")
    return t != 0, numpy_like, rank


def boxes_from_masks(masks: Any) -> Any:
    """The tight bounding box of each mask, int64 ``(N, 4)`` (``(4,)`` for one (H, W) mask),
    end-exclusive; an empty mask gives ``(0, 0, 0, 0)`` (area 0)."""
    m, numpy_like, rank = _as_mask_stack(masks)
    _, h, w = m.shape
    rows, cols = m.any(2), m.any(1)  # (N, H), (N, W)
    y0 = rows.to(torch.uint8).argmax(1)
    y1 = h - rows.flip(1).to(torch.uint8).argmax(1)
    x0 = cols.to(torch.uint8).argmax(1)
    x1 = w - cols.flip(1).to(torch.uint8).argmax(1)
    boxes = torch.stack([x0, y0, x1, y1], 1).to(torch.int64)
    boxes = torch.where(rows.any(1, keepdim=True), boxes, torch.zeros_like(boxes))
    return _out(boxes[0] if rank == 2 else boxes, numpy_like)


def box_iou(boxes_a: Any, boxes_b: Any) -> Any:
    """Elementwise intersection over union of two (N, 4) box arrays (NaN where both are empty).

    ``boxes_b`` may also be (N, K, 4) or a list of (K_i, 4) arrays: the IoU with the best
    matching box of each sample is returned (rows of NaN are ignored).
    """
    a, numpy_like, rank_a = _box_tensor(boxes_a, "boxes_a")
    b, _, _ = _box_tensor(boxes_b, "boxes_b")
    if a.shape[1] != 1:
        raise ValueError("`boxes_a` must hold one box per sample, (N, 4).")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"`boxes_a` has {a.shape[0]} boxes but `boxes_b` has {b.shape[0]}.")
    b = b.to(a.device)
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]).clamp_min(0) * (a[..., 3] - a[..., 1]).clamp_min(0)
    area_b = (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)
    union = area_a + area_b - inter
    iou = torch.where(union > 0, inter / torch.where(union > 0, union, torch.ones_like(union)),
                      torch.full_like(union, float("nan")))
    best = torch.where(torch.isnan(iou), torch.full_like(iou, -1.0), iou).amax(1)
    best = torch.where(best < 0, torch.full_like(best, float("nan")), best)
    return _out(best[0] if rank_a == 1 else best, numpy_like)


# --------------------------------------------------------------------------- dilation
def _int_sqrt_floor(v: float) -> int:
    """The largest integer w >= 0 with w*w <= v (exact for the float inputs used here)."""
    if v < 0:
        return -1
    w = math.isqrt(math.floor(v))
    while (w + 1) * (w + 1) <= v:
        w += 1
    return w


def _dilate_last(m: torch.Tensor, w: int) -> torch.Tensor:
    """Dilate bool ``m`` along its last axis by ``w`` pixels on each side (running sums)."""
    if w <= 0:
        return m
    n = m.shape[-1]
    c = torch.nn.functional.pad(m.to(torch.int32).cumsum(-1), (1, 0))  # c[j] = sum m[:j]
    idx = torch.arange(n, device=m.device)
    hi = (idx + w + 1).clamp(max=n)
    lo = (idx - w).clamp(min=0)
    return (c[..., hi] - c[..., lo]) > 0


def dilate(masks: Any, radius: float, *, ndim: int = 2) -> Any:
    """Dilate binary masks by a disk (a Euclidean ball) of ``radius`` pixels.

    A pixel of the result is True when some True pixel of the input lies at a Euclidean distance
    ``<= radius`` (pixel centres on the integer grid). The last ``ndim`` axes (1 or 2) are
    spatial; any leading axes are batch axes. Computed as a union of row-shifted 1-D dilations
    (one running sum per distinct half-width), O((2 radius + 1) * size) per mask.
    """
    check_scalar("radius", radius, (int, float), min_val=0)
    check_option("ndim", ndim, (1, 2))
    numpy_like = is_numpy_like(masks)
    m = as_tensor(masks, "masks") != 0
    if m.ndim < ndim:
        raise ValueError(f"`masks` needs at least {ndim} axes; got shape {tuple(m.shape)}.")
    r = math.floor(radius)
    r2 = float(radius) ** 2
    if r == 0:
        return _out(m.clone(), numpy_like)
    if ndim == 1:
        return _out(_dilate_last(m, r), numpy_like)
    h = m.shape[-2]
    out = torch.zeros_like(m)
    rows_cache: dict[int, torch.Tensor] = {}
    for dy in range(-min(r, h - 1), min(r, h - 1) + 1):
        half = _int_sqrt_floor(r2 - dy * dy)
        if half not in rows_cache:
            rows_cache[half] = _dilate_last(m, half)
        d = rows_cache[half]
        # out[..., i, :] |= d[..., i + dy, :] where the row exists
        if dy >= 0:
            out[..., : h - dy, :] |= d[..., dy:, :]
        else:
            out[..., -dy:, :] |= d[..., : h + dy, :]
    return _out(out, numpy_like)


# --------------------------------------------------------------------------- mosaics (Focus)
@dataclass(frozen=True, eq=False)
class Mosaics:
    """2x2 mosaics for :class:`~evalkit.metrics.Focus` (from :func:`make_mosaics`).

    Attributes
    ----------
    x:
        The mosaics (M, C, 2H, 2W), same type and dtype as the input images.
    y:
        The target class of each mosaic (M,); explain this class.
    quadrants:
        bool (M, 4): True where the tile belongs to the target class, in the order top-left,
        top-right, bottom-left, bottom-right. Pass it to Focus as ``quadrants=``.
    labels:
        (M, 4) the class of each tile.
    indices:
        int64 (M, 4) the index of each tile's image in the input batch.
    seed:
        The seed actually used (reproduces the draw), or None when a Generator was given.
    """

    x: Any
    y: Any
    quadrants: Any
    labels: Any
    indices: Any
    seed: int | None = field(default=None)

    @property
    def masks(self) -> Any:
        """bool (M, 1, 2H, 2W): the target quadrants as masks."""
        size = tuple(self.x.shape[-2:])
        return quadrant_masks(self.quadrants, size)

    def __len__(self) -> int:
        return int(self.x.shape[0])


def build_mosaics(tiles: Any) -> Any:
    """Assemble tiles (M, 4, C, H, W) into 2x2 mosaics (M, C, 2H, 2W), tiles in the order
    top-left, top-right, bottom-left, bottom-right."""
    numpy_like = is_numpy_like(tiles)
    t = as_tensor(tiles, "tiles")
    if t.ndim < 3 or t.shape[1] != 4:
        raise ValueError(f"`tiles` must be (M, 4, C, H, W); got shape {tuple(t.shape)}.")
    top = torch.cat([t[:, 0], t[:, 1]], dim=-1)
    bottom = torch.cat([t[:, 2], t[:, 3]], dim=-1)
    return _out(torch.cat([top, bottom], dim=-2), numpy_like)


def quadrant_masks(quadrants: Any, size: Any) -> Any:
    """bool masks (M, 1, H, W) covering the quadrants flagged in ``quadrants`` (M, 4) (order
    top-left, top-right, bottom-left, bottom-right). The image is split at ``H // 2`` and
    ``W // 2`` (the middle row/column of an odd size belongs to the bottom/right quadrants)."""
    h, w = _size2(size)
    numpy_like = not isinstance(quadrants, torch.Tensor)
    q = as_tensor(np.asarray(quadrants) if isinstance(quadrants, list | tuple) else quadrants,
                  "quadrants")
    if q.ndim != 2 or q.shape[1] != 4:
        raise ValueError(f"`quadrants` must be (M, 4) flags; got shape {tuple(q.shape)}.")
    values = torch.unique(q)
    if not bool(((values == 0) | (values == 1)).all()):
        raise ValueError("`quadrants` must hold 0/1 (or bool) flags.")
    q = q != 0
    bottom = (torch.arange(h, device=q.device) >= h // 2).reshape(h, 1)
    right = (torch.arange(w, device=q.device) >= w // 2).reshape(1, w)
    which = bottom.to(torch.int64) * 2 + right.to(torch.int64)  # (H, W) quadrant index 0..3
    masks = q[:, which]  # (M, H, W)
    return _out(masks.unsqueeze(1), numpy_like)


def _distinct_pairs(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """m uniformly random ordered pairs of distinct indices in range(n), shape (m, 2)."""
    i = rng.integers(0, n, size=m)
    j = rng.integers(0, n - 1, size=m)
    j = j + (j >= i)
    return np.stack([i, j], 1)


def make_mosaics(
    x: Any,
    y: Any,
    mosaics_per_class: int = 10,
    *,
    classes: Sequence[Any] | None = None,
    seed: int | np.random.Generator | None = None,
) -> Mosaics:
    """Build the 2x2 mosaics of the Focus protocol (Arias-Duart et al. 2022).

    Each mosaic holds two different images of its target class and two different images of
    other classes (drawn uniformly from all images not of the target class), in a uniformly
    random arrangement. ``mosaics_per_class`` mosaics are made for each class in ``classes``
    (default: every label of ``y``; classes with fewer than two images are skipped with a
    warning), in sorted class order.

    ``seed`` is an int, a ``numpy.random.Generator`` (advanced by the draw), or None (fresh OS
    entropy; the value is recorded in ``Mosaics.seed``). The global RNGs are never used.
    """
    check_scalar("mosaics_per_class", mosaics_per_class, int, min_val=1)
    numpy_like = is_numpy_like(x)
    xt = as_tensor(x, "x")
    if xt.ndim < 3:
        raise ValueError(f"`x` must be a batch of images (N, C, H, W); got {tuple(xt.shape)}.")
    y_np = np.asarray(to_numpy(y) if isinstance(y, torch.Tensor) else y)
    if y_np.shape != (xt.shape[0],):
        raise ValueError(f"`y` must have one label per image, shape ({xt.shape[0]},); got "
                         f"{y_np.shape}.")
    rng, used_seed = _rng.numpy_generator(seed)
    wanted = np.unique(y_np) if classes is None else np.asarray(list(classes))
    tiles, targets, flags = [], [], []
    skipped = []
    for c in wanted:
        own = np.flatnonzero(y_np == c)
        other = np.flatnonzero(y_np != c)
        if own.size < 2 or other.size < 2:
            skipped.append(c)
            continue
        m = mosaics_per_class
        chosen = np.concatenate(
            [own[_distinct_pairs(rng, own.size, m)], other[_distinct_pairs(rng, other.size, m)]],
            axis=1,
        )  # (m, 4): two target tiles, then two others
        order = rng.permuted(np.tile(np.arange(4), (m, 1)), axis=1)
        tiles.append(np.take_along_axis(chosen, order, axis=1))
        flags.append(order < 2)
        targets.append(np.full(m, c))
    if skipped:
        msg = (f"make_mosaics: skipped classes {skipped}: a mosaic needs two images of its class "
               "and two of other classes.")
        if len(skipped) == len(wanted):
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    idx = np.concatenate(tiles, 0).astype(np.int64)
    quadrants = np.concatenate(flags, 0)
    target = np.concatenate(targets, 0)
    labels = y_np[idx]
    mosaics = build_mosaics(xt[torch.as_tensor(idx, device=xt.device)])
    if numpy_like:
        return Mosaics(x=to_numpy(mosaics), y=target, quadrants=quadrants, labels=labels,
                       indices=idx, seed=used_seed)
    dev = xt.device
    y_out = torch.as_tensor(target, device=dev) if isinstance(y, torch.Tensor) else target
    lab_out = torch.as_tensor(labels, device=dev) if isinstance(y, torch.Tensor) else labels
    return Mosaics(x=mosaics, y=y_out, quadrants=torch.as_tensor(quadrants, device=dev),
                   labels=lab_out, indices=torch.as_tensor(idx, device=dev), seed=used_seed)


# --------------------------------------------------------------------------- CAM protocol
@dataclass(frozen=True, eq=False)
class BoxLocalisationResult:
    """Per-sample results of :func:`cam_localisation` (NumPy arrays, length N).

    ``iou``: IoU of the predicted box with the (best matching) ground-truth box; ``correct``:
    1.0 where ``iou >= iou_threshold``, else 0.0; both NaN where undefined (``nan_reasons``).
    ``boxes``: int64 (N, 4) predicted boxes, ``(0, 0, 0, 0)`` when no pixel was kept.
    """

    iou: np.ndarray
    correct: np.ndarray
    boxes: np.ndarray
    iou_threshold: float
    nan_reasons: dict[int, str] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        """Localisation accuracy: the mean of ``correct`` over the defined samples."""
        ok = ~np.isnan(self.correct)
        return float(self.correct[ok].mean()) if ok.any() else float("nan")


_MODES = ("max", "minmax", "top")


def _maps_stack(maps: Any) -> torch.Tensor:
    t = as_tensor(maps, "maps")
    if t.ndim == 2:
        t = t.unsqueeze(0)
    elif t.ndim == 4:
        t = t.sum(1)  # channels summed, as the localisation metrics do
    elif t.ndim != 3:
        raise ValueError(f"`maps` must be (H, W), (N, H, W) or (N, C, H, W); got "
                         f"{tuple(t.shape)}.")
    return t.to(torch.float64)


def _foreground(m: torch.Tensor, threshold: float, mode: str) -> torch.Tensor:
    """The pixels kept by the threshold, bool (N, H, W); rows must be finite."""
    flat = m.reshape(m.shape[0], -1)
    hi = flat.amax(1).reshape(-1, 1, 1)
    if mode == "max":
        return (m >= threshold * hi) & (hi > 0)
    if mode == "minmax":
        lo = flat.amin(1).reshape(-1, 1, 1)
        span = hi - lo
        scaled = (m - lo) / torch.where(span > 0, span, torch.ones_like(span))
        return torch.where(span > 0, scaled >= threshold, torch.ones_like(m, dtype=torch.bool))
    # "top": the top `threshold` fraction of pixels, ties at the cut included
    k = max(1, math.ceil(threshold * flat.shape[1]))
    kth = flat.topk(k, dim=1).values[:, -1].reshape(-1, 1, 1)
    return m >= kth


def boxes_from_maps(
    maps: Any, *, threshold: float = 0.2, mode: str = "max", connectivity: int = 2
) -> Any:
    """Predicted boxes of the CAM protocol: threshold each map, keep the largest connected
    component of the kept pixels, return its tight bounding box (int64 (N, 4), end-exclusive;
    ``(0, 0, 0, 0)`` when nothing is kept). See :func:`cam_localisation` for the options."""
    check_scalar("threshold", threshold, (int, float), min_val=0, max_val=1)
    check_option("mode", mode, _MODES)
    check_option("connectivity", connectivity, (1, 2))
    numpy_like = is_numpy_like(maps)
    m = _maps_stack(maps)
    finite = torch.isfinite(m).flatten(1).all(1)
    m = torch.where(finite.reshape(-1, 1, 1), m, torch.zeros_like(m))
    fg = _foreground(m, float(threshold), mode) & finite.reshape(-1, 1, 1)
    boxes = torch.as_tensor(_largest_component_boxes(to_numpy(fg), connectivity),
                            device=m.device)
    return _out(boxes, numpy_like)


def _largest_component_boxes(fg: np.ndarray, connectivity: int) -> np.ndarray:
    """Tight box of the largest connected component of each (H, W) slice of ``fg`` (N, H, W).

    One ``scipy.ndimage.label`` call labels the whole batch with a structuring element that
    connects pixels only within a slice; a tie in size goes to the component met first in
    raster order.
    """
    from scipy import ndimage

    n = fg.shape[0]
    boxes = np.zeros((n, 4), dtype=np.int64)
    if not fg.any():
        return boxes
    plane = ndimage.generate_binary_structure(2, connectivity)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = plane
    labels, count = ndimage.label(fg, structure=structure)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    slices = ndimage.find_objects(labels)
    sample = np.fromiter((sl[0].start for sl in slices), dtype=np.int64, count=count)
    ids = np.arange(count)
    # per sample: largest size first, then the lowest label (first in raster order)
    order = np.lexsort((ids, -sizes, sample))
    first = np.ones(count, dtype=bool)
    first[1:] = sample[order][1:] != sample[order][:-1]
    for lab in order[first]:
        _, rs, cs = slices[lab]
        boxes[sample[lab]] = (cs.start, rs.start, cs.stop, rs.stop)
    return boxes


def cam_localisation(
    maps: Any,
    boxes: Any,
    *,
    threshold: float = 0.2,
    mode: str = "max",
    iou_threshold: float = 0.5,
    connectivity: int = 2,
) -> BoxLocalisationResult:
    """The weakly supervised localisation protocol of the CAM paper (Zhou et al., CVPR 2016).

    For each map: keep the pixels above ``threshold`` (default: 20 % of the map's maximum),
    take the largest connected component of the kept pixels, and compare its bounding box with
    the ground-truth box: IoU >= ``iou_threshold`` (0.5) counts as a correct localisation.

    Parameters
    ----------
    maps:
        Saliency maps at image resolution: (N, H, W), (N, 1, H, W), or (N, C, H, W) (summed over
        channels), NumPy or torch.
    boxes:
        Ground-truth boxes (x0, y0, x1, y1), end-exclusive: (N, 4), or (N, K, 4) / a list of
        (K_i, 4) arrays for several objects per image (the best-matching box counts, as in the
        ILSVRC localisation evaluation).
    threshold, mode:
        ``"max"`` (default; the CAM paper: "segment the regions of which the value is above 20%
        of the max value of the CAM") keeps ``map >= threshold * max(map)``, nothing when the
        maximum is <= 0. ``"minmax"`` keeps ``(map - min) / (max - min) >= threshold`` (the
        min-max normalised variant of later weakly-supervised-localisation code; a constant map
        keeps every pixel). ``"top"`` keeps the top ``threshold`` fraction of pixels (the CAM
        tutorial's wording "keep the top 20 % highest pixels"; ties at the cut are kept).
    connectivity:
        2 (default): 8-connected components; 1: 4-connected.

    Returns
    -------
    :class:`BoxLocalisationResult` with per-sample ``iou``, ``correct``, predicted ``boxes``
    and ``accuracy``. A map with no kept pixel gets an empty box and IoU 0 (a failed
    localisation); a map with NaN/Inf values or an empty ground-truth box is NaN with a reason.

    Connected components are labelled on the CPU with ``scipy.ndimage.label``, in one call for
    the whole batch (a structuring element that never links two samples).
    """
    check_scalar("iou_threshold", iou_threshold, (int, float), min_val=0, max_val=1)
    m = _maps_stack(maps)
    n = m.shape[0]
    gt, _, rank = _box_tensor(boxes)
    if rank == 1:
        gt = gt.reshape(1, 1, 4)
    if gt.shape[0] != n:
        raise ValueError(f"`boxes` has {gt.shape[0]} samples but `maps` has {n}.")
    _check_box_order(gt, "boxes")
    pred = as_tensor(boxes_from_maps(m, threshold=threshold, mode=mode,
                                     connectivity=connectivity), "pred").cpu()
    gt = gt.cpu()
    iou = np.asarray(box_iou(pred.to(torch.float64), gt), dtype=np.float64).copy()
    reasons: dict[int, str] = {}
    finite = to_numpy(torch.isfinite(m).flatten(1).all(1))
    gt_area = ((gt[..., 2] - gt[..., 0]).clamp_min(0) * (gt[..., 3] - gt[..., 1]).clamp_min(0))
    gt_empty = to_numpy(~(torch.nan_to_num(gt_area, nan=0.0) > 0).any(1))
    pred_np = to_numpy(pred)
    for i in range(n):
        if not finite[i]:
            reasons[i] = "saliency map contains NaN or Inf"
        elif gt_empty[i]:
            reasons[i] = "ground-truth box is empty"
    iou = np.where(np.isnan(iou), 0.0, iou)  # an empty prediction against a real box
    for i in reasons:
        iou[i] = np.nan
    correct = np.where(np.isnan(iou), np.nan, (iou >= iou_threshold).astype(np.float64))
    return BoxLocalisationResult(iou=iou, correct=correct, boxes=pred_np,
                                 iou_threshold=float(iou_threshold), nan_reasons=reasons)
