"""Synthetic image data with ground-truth localisation, for evaluating explanations.

:func:`make_shapes` draws small RGB images, each holding one *target* shape whose kind is the
class label, a few *distractor* shapes that carry no class information, and a textured
background. Because the class is decided by the target's pixels only, a faithful explanation
should concentrate on the target, and the exact target mask and bounding box come with every
image (for localisation metrics).

>>> data = make_shapes(100, seed=0)
>>> data.x.shape, data.y.shape, data.masks.shape, data.boxes.shape
((100, 3, 32, 32), (100,), (100, 1, 32, 32), (100, 4))

How the target is told apart (independently of its class): it is a large, *filled* shape in a
solid saturated colour, drawn last so nothing covers it. Distractors are smaller and only
*outlined* (one pixel wide); their kinds are drawn from the same four shapes and their colours
from the same distribution as the target's, independently of the label, so neither kind nor
colour gives the class away.
"""

from __future__ import annotations

import colorsys
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CLASS_NAMES", "ShapesDataset", "make_shapes"]

#: class names of :func:`make_shapes`, in label order
CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

_MIN_IMAGE_SIZE = 16
# Shape "radius" as a fraction of the image size. The ranges do not overlap, so size is a
# second, class-independent cue (besides filled vs outlined) for which object is the target.
_TARGET_RADIUS = (0.18, 0.28)
_DISTRACTOR_RADIUS = (0.08, 0.13)
# Every shape of radius r fits in a disc of radius _EXTENT * r around its centre (the square's
# and triangle's corners reach ~1.2 r), which keeps shapes inside the image.
_EXTENT = 1.2
_PLACEMENT_TRIES = 20


@dataclass(frozen=True, eq=False)
class ShapesDataset:
    """Images, labels and ground truth from :func:`make_shapes`.

    Attributes
    ----------
    x:
        float32 (N, 3, H, W), values in [0, 1].
    y:
        int64 (N,), class labels indexing ``class_names``.
    masks:
        bool (N, 1, H, W), True exactly on the target object's pixels.
    boxes:
        int64 (N, 4), the target's tight bounding box ``(x0, y0, x1, y1)``, end-exclusive:
        ``masks[i, 0, y0:y1, x0:x1]`` holds every target pixel.
    class_names:
        the name of each class.
    """

    x: np.ndarray
    y: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    class_names: tuple[str, ...] = CLASS_NAMES

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: slice | Sequence[int] | np.ndarray) -> ShapesDataset:
        """The samples at ``indices`` (a slice, integer indices or a boolean mask), copied."""
        if isinstance(indices, slice):
            idx: slice | np.ndarray = indices
        else:
            idx = np.asarray(indices)
            if idx.dtype != bool and not np.issubdtype(idx.dtype, np.integer):
                raise TypeError(
                    f"`indices` must be a slice, integers or a boolean mask; got dtype {idx.dtype}."
                )
            if idx.ndim != 1:
                raise ValueError(f"`indices` must be one-dimensional; got shape {idx.shape}.")
        return ShapesDataset(
            x=self.x[idx].copy(),
            y=self.y[idx].copy(),
            masks=self.masks[idx].copy(),
            boxes=self.boxes[idx].copy(),
            class_names=self.class_names,
        )

    def __getitem__(self, indices: slice | Sequence[int] | np.ndarray) -> ShapesDataset:
        if isinstance(indices, numbers.Integral):
            # A bare integer would drop the batch axis, unlike every other index; be explicit.
            raise TypeError(
                "Index a ShapesDataset with a slice or an index array (e.g. data[i:i + 1]); "
                "use data.x[i], data.y[i] for a single sample's arrays."
            )
        return self.subset(indices)

    def __repr__(self) -> str:
        n, c, h, w = self.x.shape
        return f"ShapesDataset(n={n}, image=({c}, {h}, {w}), classes={self.class_names})"


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer; got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}; got {value}.")
    return int(value)


def make_shapes(
    n: int, *, seed: int = 0, image_size: int = 32, n_distractors: int = 2
) -> ShapesDataset:
    """Draw ``n`` synthetic images of shapes with ground-truth masks and boxes.

    Classes (see :data:`CLASS_NAMES`): circle, square, triangle, cross. Labels cycle,
    ``y[i] = i % 4``, so every prefix is balanced; positions, sizes, rotations, colours and
    backgrounds are random.

    Sample ``i`` is a pure function of ``(seed, i, image_size, n_distractors)``: it is drawn
    from its own ``numpy.random.default_rng([seed, i])`` and never from global random state,
    so ``make_shapes(10)`` is the first ten samples of ``make_shapes(100)``. The background and
    the target are drawn before the distractors: changing ``n_distractors`` only adds or removes
    distractor pixels (handy for ablations).

    Parameters
    ----------
    n:
        Number of images (>= 1).
    seed:
        Non-negative integer; different seeds give independent data sets.
    image_size:
        Height and width in pixels (>= 16).
    n_distractors:
        Number of distractor shapes per image (>= 0).
    """
    n = _check_int(n, "n", 1)
    seed = _check_int(seed, "seed", 0)
    image_size = _check_int(image_size, "image_size", _MIN_IMAGE_SIZE)
    n_distractors = _check_int(n_distractors, "n_distractors", 0)

    params = [_sample_params(np.random.default_rng([seed, i]), i, image_size, n_distractors)
              for i in range(n)]
    x = np.empty((n, 3, image_size, image_size), dtype=np.float32)
    masks = np.empty((n, 1, image_size, image_size), dtype=bool)
    # Rendering is elementwise per sample (no reductions across samples, no BLAS), so chunking
    # cannot change a sample's pixels; chunks only bound the float64 working set.
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        x[start:stop], masks[start:stop, 0] = _render(params[start:stop], image_size)

    rows = masks[:, 0].any(axis=2)
    cols = masks[:, 0].any(axis=1)
    boxes = np.stack(
        [cols.argmax(axis=1), rows.argmax(axis=1),
         image_size - cols[:, ::-1].argmax(axis=1), image_size - rows[:, ::-1].argmax(axis=1)],
        axis=1,
    ).astype(np.int64)
    y = np.array([p.label for p in params], dtype=np.int64)
    return ShapesDataset(x=x, y=y, masks=masks, boxes=boxes)


# --- sampling ----------------------------------------------------------------------------------

_CHUNK = 64  # samples per rendering block: small enough to stay in cache
_NOISE_CELLS = 5  # the background's smooth noise is bilinearly upsampled from 5 x 5 cells


@dataclass(frozen=True)
class _Params:
    """Everything random about one image; the target is the last shape."""

    label: int
    base: np.ndarray  # (3,) background colour
    cells: np.ndarray  # (3, cells, cells) smooth-noise control points
    stripes: tuple[float, float, float, float]  # angle, cycles per image, phase, amplitude
    kinds: np.ndarray  # (S,) shape kinds (labels)
    geometry: np.ndarray  # (S, 4) centre y, centre x, radius, rotation
    colours: np.ndarray  # (S, 3) RGB


def _between(low: float, high: float, u: np.ndarray | float) -> np.ndarray | float:
    """Map U[0, 1) draws onto [low, high)."""
    return low + (high - low) * u


def _saturated(u: np.ndarray) -> tuple[float, float, float]:
    # Hue from u[0]; saturation and value >= 0.75, so one channel is >= 0.75 and one <= 0.25:
    # the colour stands out from the greyish background whatever its brightness.
    return colorsys.hsv_to_rgb(u[0], _between(0.75, 1.0, u[1]), _between(0.75, 1.0, u[2]))


def _sample_params(
    rng: np.random.Generator, index: int, size: int, n_distractors: int
) -> _Params:
    # A few bulk draws rather than many scalar ones: the per-call overhead dominates otherwise.
    k2 = _NOISE_CELLS * _NOISE_CELLS
    head = rng.random(4 + 3 * k2 + 4 + 7)
    dist = rng.random((n_distractors, 6))
    tries = rng.random((n_distractors, _PLACEMENT_TRIES, 2))

    label = index % len(CLASS_NAMES)
    base = _between(0.2, 0.6, head[0]) + _between(-0.08, 0.08, head[1:4])
    cells = _between(-0.08, 0.08, head[4:4 + 3 * k2]).reshape(3, _NOISE_CELLS, _NOISE_CELLS)
    s = head[4 + 3 * k2:]
    stripes = (_between(0.0, math.pi, s[0]), _between(2.0, 6.0, s[1]),
               _between(0.0, 2 * math.pi, s[2]), _between(0.0, 0.06, s[3]))

    # The target is placed first so that the distractors can be placed around it.
    t = s[4:]
    t_radius = _between(*_TARGET_RADIUS, t[0]) * size
    t_margin = _EXTENT * t_radius + 1.0
    t_cy, t_cx = _between(t_margin, size - t_margin, t[1:3])
    target = (t_cy, t_cx, t_radius, _between(0.0, 2 * math.pi, t[3]))

    kinds, geometry, colours = [], [], []
    for d, pos in zip(dist, tries, strict=True):
        kinds.append(min(int(d[0] * len(CLASS_NAMES)), len(CLASS_NAMES) - 1))
        radius = _between(*_DISTRACTOR_RADIUS, d[1]) * size
        margin = _EXTENT * radius + 1.0
        centres = _between(margin, size - margin, pos)  # (tries, 2)
        # Keep distractors off the target (a pixel of gap) where there is room: the first try
        # that is far enough, else the farthest. Overlap would not spoil the ground truth (the
        # target is drawn on top), but a gap keeps the object boundaries unambiguous.
        gap = np.hypot(centres[:, 0] - t_cy, centres[:, 1] - t_cx)
        far = gap >= _EXTENT * (radius + t_radius) + 1.5
        cy, cx = centres[far.argmax() if far.any() else gap.argmax()]
        geometry.append((cy, cx, radius, _between(0.0, 2 * math.pi, d[2])))
        colours.append(_saturated(d[3:6]))
    kinds.append(label)
    geometry.append(target)
    colours.append(_saturated(t[4:7]))
    return _Params(label, base, cells, stripes, np.array(kinds), np.array(geometry),
                   np.array(colours))


# --- rendering ---------------------------------------------------------------------------------


def _interp_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Left indices and weights that linearly interpolate n_in samples onto n_out pixels."""
    pos = (np.arange(n_out) + 0.5) * (n_in - 1) / n_out
    lo = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 2)
    return lo, pos - lo


def _render(params: Sequence[_Params], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (B, 3, H, W) float32 and target masks (B, H, W) for a chunk of samples."""
    coords = np.arange(size, dtype=np.float64) + 0.5
    grid_y, grid_x = coords[:, None], coords[None, :]

    # Background: tinted grey + bilinearly upsampled smooth noise + faint stripes.
    lo, frac = _interp_weights(_NOISE_CELLS, size)
    cells = np.stack([p.cells for p in params])  # (B, 3, k, k)
    rows = cells[:, :, lo, :] * (1 - frac)[:, None] + cells[:, :, lo + 1, :] * frac[:, None]
    noise = rows[..., lo] * (1 - frac) + rows[..., lo + 1] * frac  # (B, 3, H, W)
    angle, cycles, phase, amplitude = (np.array(v)[:, None, None]
                                       for v in zip(*(p.stripes for p in params), strict=True))
    along = grid_x * np.cos(angle) + grid_y * np.sin(angle)
    stripes = amplitude * np.sin(2 * math.pi * cycles * along / size + phase)
    base = np.stack([p.base for p in params])[:, :, None, None]
    img = base + noise + stripes[:, None]

    kinds = np.stack([p.kinds for p in params])  # (B, S)
    geometry = np.stack([p.geometry for p in params])  # (B, S, 4)
    colours = np.stack([p.colours for p in params])  # (B, S, 3)
    n_slots = kinds.shape[1]
    target = np.zeros(img.shape[:1] + img.shape[2:], dtype=bool)
    for slot in range(n_slots):  # distractors first (outlined), the target last (filled)
        shape = _shape_masks(kinds[:, slot], geometry[:, slot], grid_y, grid_x)
        if slot < n_slots - 1:
            shape = _outline(shape)
        else:
            target = shape
        img = np.where(shape[:, None], colours[:, slot, :, None, None], img)
    np.clip(img, 0.0, 1.0, out=img)
    return img.astype(np.float32), target


def _shape_masks(
    kinds: np.ndarray, geometry: np.ndarray, grid_y: np.ndarray, grid_x: np.ndarray
) -> np.ndarray:
    """Filled shapes as bool (B, H, W) masks, by testing pixel centres in each shape's frame."""
    cy, cx, radius, angle = (geometry[:, j, None, None] for j in range(4))
    dy, dx = grid_y - cy, grid_x - cx
    c, s = np.cos(angle), np.sin(angle)
    u = c * dx + s * dy
    v = c * dy - s * dx
    out = np.zeros(u.shape, dtype=bool)
    for kind in range(len(CLASS_NAMES)):
        sel = kinds == kind
        if sel.any():
            out[sel] = _KIND_TESTS[kind](u[sel], v[sel], radius[sel])
    return out


def _circle(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    return u * u + v * v <= r * r


def _square(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    # Half-side 0.85 r: about the circle's area, so area alone says little about the class.
    return np.maximum(np.abs(u), np.abs(v)) <= 0.85 * r


def _triangle(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    # Equilateral, circumradius 1.2 r (inradius 0.6 r), a vertex at +v: inside all three edges,
    # whose outward normals point away from the opposite vertices.
    inside = np.ones(u.shape, dtype=bool)
    for k in range(3):
        normal = math.pi + 2 * math.pi * k / 3
        inside &= u * math.sin(normal) + v * math.cos(normal) <= 0.5 * _EXTENT * r
    return inside


def _cross(u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    # A plus sign: two bars of half-length r and half-width r / 3.
    au, av = np.abs(u), np.abs(v)
    arm = r / 3
    return ((au <= arm) & (av <= r)) | ((av <= arm) & (au <= r))


_KIND_TESTS = (_circle, _square, _triangle, _cross)


def _outline(filled: np.ndarray) -> np.ndarray:
    """The one-pixel inner boundary of (B, H, W) masks: pixels with a 4-neighbour outside."""
    interior = filled.copy()
    interior[:, 1:, :] &= filled[:, :-1, :]
    interior[:, :-1, :] &= filled[:, 1:, :]
    interior[:, :, 1:] &= filled[:, :, :-1]
    interior[:, :, :-1] &= filled[:, :, 1:]
    # Pixels on the image border have an outside neighbour too.
    interior[:, 0, :] = interior[:, -1, :] = False
    interior[:, :, 0] = interior[:, :, -1] = False
    return filled & ~interior
