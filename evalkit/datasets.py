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

Three more modalities come with the same conventions (``n``, ``seed``, ``x``, ``y``, ground-truth
``masks`` that broadcast against ``x``, ``subset``/slicing, prefix-stable sampling):

* :func:`make_tabular`: (N, F) tables whose binary label is a known function of a few
  *informative* columns (and of a one-hot categorical group); the other columns are noise.
* :func:`make_series`: (N, C, T) series whose class is decided by a pattern planted in one
  window at a random position; everything outside the window is class-independent noise.
* :func:`make_text`: (N, L) int64 token ids over a small vocabulary; the sentiment-like label is
  decided by planted positive or negative words (the rationale), the rest is filler.
"""

from __future__ import annotations

import colorsys
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "SERIES_CLASS_NAMES",
    "TABULAR_CLASS_NAMES",
    "TEXT_CLASS_NAMES",
    "TEXT_MASK_ID",
    "TEXT_PAD_ID",
    "TEXT_UNK_ID",
    "TEXT_VOCABULARY",
    "SeriesDataset",
    "ShapesDataset",
    "TabularDataset",
    "TextDataset",
    "make_series",
    "make_shapes",
    "make_tabular",
    "make_text",
    "tabular_informative_columns",
]

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
        idx = _as_index(indices)
        return ShapesDataset(
            x=self.x[idx].copy(),
            y=self.y[idx].copy(),
            masks=self.masks[idx].copy(),
            boxes=self.boxes[idx].copy(),
            class_names=self.class_names,
        )

    def __getitem__(self, indices: slice | Sequence[int] | np.ndarray) -> ShapesDataset:
        _refuse_integer(indices, type(self).__name__)
        return self.subset(indices)

    def __repr__(self) -> str:
        n, c, h, w = self.x.shape
        return f"ShapesDataset(n={n}, image=({c}, {h}, {w}), classes={self.class_names})"


def _as_index(indices: slice | Sequence[int] | np.ndarray) -> slice | np.ndarray:
    """A slice, or a 1-D array of integer indices or a boolean mask."""
    if isinstance(indices, slice):
        return indices
    idx = np.asarray(indices)
    if idx.dtype != bool and not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(
            f"`indices` must be a slice, integers or a boolean mask; got dtype {idx.dtype}."
        )
    if idx.ndim != 1:
        raise ValueError(f"`indices` must be one-dimensional; got shape {idx.shape}.")
    return idx


def _refuse_integer(indices: object, owner: str) -> None:
    if isinstance(indices, numbers.Integral):
        # A bare integer would drop the batch axis, unlike every other index; be explicit.
        raise TypeError(
            f"Index a {owner} with a slice or an index array (e.g. data[i:i + 1]); "
            "use data.x[i], data.y[i] for a single sample's arrays."
        )


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


# --- shared by the tabular, series and text data sets ------------------------------------------


class _Samples:
    """Length, slicing and ``subset`` of a frozen dataclass whose ``_per_sample`` fields have
    the sample axis first (the other fields describe the data set and are shared)."""

    _per_sample: ClassVar[tuple[str, ...]] = ()
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, indices: slice | Sequence[int] | np.ndarray):  # -> the same type
        """The samples at ``indices`` (a slice, integer indices or a boolean mask), copied."""
        idx = _as_index(indices)
        return replace(self, **{f: getattr(self, f)[idx].copy() for f in self._per_sample})

    def __getitem__(self, indices: slice | Sequence[int] | np.ndarray):
        _refuse_integer(indices, type(self).__name__)
        return self.subset(indices)


def _check_float(value: object, name: str, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number; got {value!r}.")
    if not math.isfinite(float(value)) or value < minimum:
        raise ValueError(f"`{name}` must be a finite number >= {minimum}; got {value}.")
    return float(value)


# --- tabular -----------------------------------------------------------------------------------

#: class names of :func:`make_tabular`, in label order
TABULAR_CLASS_NAMES: tuple[str, ...] = ("negative", "positive")
# The task (which columns are informative) is fixed, not drawn from `seed`: a model trained on
# one seed must be scored on data of another seed with the same labelling rule.
_TABULAR_TASK_SEED = 1912
_TABULAR_INTERACTION = 0.8


@dataclass(frozen=True, eq=False)
class TabularDataset(_Samples):
    """Rows, labels and ground truth from :func:`make_tabular`.

    Attributes
    ----------
    x:
        float32 (N, F): continuous columns first (standard normal), then the one-hot columns of
        the categorical feature (0/1), if any.
    y:
        int64 (N,), labels indexing ``class_names``.
    masks:
        bool (N, F), True on the columns the label depends on (the same for every row: the
        informative continuous columns and every column of the categorical group).
    informative:
        the indices of the informative columns (those True in ``masks``), ascending.
    feature_groups:
        the multi-column features: the one-hot group of the categorical feature, as
        ``((first, ..., last),)`` (empty without one). Pass it to
        :class:`evalkit.perturb.Columns` (``Columns(groups=data.feature_groups)``) so that
        removal metrics treat the group as one feature.
    feature_names:
        a name per column (``"f0"``, ... and ``"cat=a"``, ...).
    class_names:
        the name of each class.
    """

    _per_sample: ClassVar[tuple[str, ...]] = ("x", "y", "masks")

    x: np.ndarray
    y: np.ndarray
    masks: np.ndarray
    informative: tuple[int, ...]
    feature_groups: tuple[tuple[int, ...], ...]
    feature_names: tuple[str, ...]
    class_names: tuple[str, ...] = TABULAR_CLASS_NAMES

    def __repr__(self) -> str:
        n, f = self.x.shape
        return (f"TabularDataset(n={n}, features={f}, informative={self.informative}, "
                f"groups={self.feature_groups}, classes={self.class_names})")


def tabular_informative_columns(n_continuous: int, n_informative: int) -> tuple[int, ...]:
    """The informative continuous columns of :func:`make_tabular` (ascending): a fixed
    choice that depends on the two counts only, never on the data seed."""
    rng = np.random.default_rng([_TABULAR_TASK_SEED, n_continuous, n_informative])
    return tuple(sorted(int(c) for c in rng.choice(n_continuous, n_informative, replace=False)))


def make_tabular(
    n: int, *, seed: int = 0, n_features: int = 12, n_informative: int = 4,
    n_categories: int = 3,
) -> TabularDataset:
    """Draw ``n`` rows of a binary task whose label depends on a known set of columns.

    The first ``n_features - n_categories`` columns are continuous, i.i.d. standard normal; the
    last ``n_categories`` are the one-hot encoding of a categorical feature drawn uniformly (no
    categorical feature with ``n_categories=0``). ``n_informative`` continuous columns, fixed
    by :func:`tabular_informative_columns` (the same for every seed), and the categorical
    feature decide the label; the other columns are noise the label never reads::

        score = z_0 - z_1 + z_2 - ... + 0.8 z_0 z_1 + offset[category]
        y     = 1 if score > 0 else 0

    where ``z_j`` is the j-th informative column (in column order), the product term exists
    when ``n_informative >= 2`` (a non-linear interaction, so a linear model is not enough),
    and ``offset`` runs evenly from +1 (first category) to -1 (last). The classes are
    balanced in expectation (the score's distribution is symmetric about 0), not exactly.

    Row ``i`` is a pure function of ``(seed, i)`` and the sizes: it is drawn from its own
    ``numpy.random.default_rng([seed, i])``, so ``make_tabular(10)`` is the first ten rows of
    ``make_tabular(100)``.

    Parameters
    ----------
    n:
        Number of rows (>= 1).
    seed:
        Non-negative integer; different seeds give independent rows of the same task.
    n_features:
        Columns in all, one-hot columns included (>= 2).
    n_informative:
        Informative continuous columns (>= 1, at most the continuous columns).
    n_categories:
        Categories of the categorical feature (0: none, else >= 2).
    """
    n = _check_int(n, "n", 1)
    seed = _check_int(seed, "seed", 0)
    n_features = _check_int(n_features, "n_features", 2)
    n_informative = _check_int(n_informative, "n_informative", 1)
    n_categories = _check_int(n_categories, "n_categories", 0)
    if n_categories == 1:
        raise ValueError("`n_categories` must be 0 (no categorical feature) or >= 2; got 1.")
    n_continuous = n_features - n_categories
    if n_informative > n_continuous:
        raise ValueError(
            f"`n_informative` must be at most the {n_continuous} continuous columns "
            f"(n_features - n_categories = {n_features} - {n_categories}); got {n_informative}."
        )

    informative = tabular_informative_columns(n_continuous, n_informative)
    x = np.zeros((n, n_features), dtype=np.float64)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        x[i, :n_continuous] = rng.standard_normal(n_continuous)
        if n_categories:
            x[i, n_continuous + int(rng.integers(n_categories))] = 1.0
    z = x[:, list(informative)]
    signs = np.where(np.arange(n_informative) % 2 == 0, 1.0, -1.0)
    score = z @ signs
    if n_informative >= 2:
        score += _TABULAR_INTERACTION * z[:, 0] * z[:, 1]
    group: tuple[int, ...] = tuple(range(n_continuous, n_features))
    if n_categories:
        score += x[:, n_continuous:] @ np.linspace(1.0, -1.0, n_categories)
    y = (score > 0).astype(np.int64)

    columns = informative + group
    masks = np.zeros((n, n_features), dtype=bool)
    masks[:, list(columns)] = True
    names = tuple(f"f{j}" for j in range(n_continuous)) + tuple(
        f"cat={_category_name(k)}" for k in range(n_categories))
    return TabularDataset(x=x.astype(np.float32), y=y, masks=masks, informative=columns,
                          feature_groups=(group,) if n_categories else (), feature_names=names)


def _category_name(k: int) -> str:
    # a, b, ..., z, then aa, ab, ...: short labels for plots
    letters = "abcdefghijklmnopqrstuvwxyz"
    return letters[k] if k < 26 else letters[k // 26 - 1] + letters[k % 26]


# --- time series -------------------------------------------------------------------------------

#: class names of :func:`make_series`, in label order (the planted pattern)
SERIES_CLASS_NAMES: tuple[str, ...] = ("bump", "dip", "wave")
_PATTERN_AMPLITUDE = 1.2
_DRIFT_AMPLITUDE = 0.3


@dataclass(frozen=True, eq=False)
class SeriesDataset(_Samples):
    """Series, labels and ground truth from :func:`make_series`.

    Attributes
    ----------
    x:
        float32 (N, C, T).
    y:
        int64 (N,), class labels indexing ``class_names``: the planted pattern.
    masks:
        bool (N, 1, T), True exactly on the planted window (the same window in every channel;
        one channel, as the shapes' masks, broadcasts against ``x``).
    windows:
        int64 (N, 2), the window ``(start, stop)``, end-exclusive:
        ``masks[i, 0, start:stop]`` is all True and nothing else is.
    class_names:
        the name of each class.
    """

    _per_sample: ClassVar[tuple[str, ...]] = ("x", "y", "masks", "windows")

    x: np.ndarray
    y: np.ndarray
    masks: np.ndarray
    windows: np.ndarray
    class_names: tuple[str, ...] = SERIES_CLASS_NAMES

    def __repr__(self) -> str:
        n, c, t = self.x.shape
        w = int(self.windows[0, 1] - self.windows[0, 0]) if n else 0
        return (f"SeriesDataset(n={n}, channels={c}, length={t}, window={w}, "
                f"classes={self.class_names})")


def _pattern(label: int, window: int) -> np.ndarray:
    """The class pattern over a window: a raised-cosine bump, its negative, or two cycles of a
    sine under the same envelope."""
    u = (np.arange(window) + 0.5) / window
    envelope = np.sin(math.pi * u) ** 2
    if label == 0:
        return _PATTERN_AMPLITUDE * envelope
    if label == 1:
        return -_PATTERN_AMPLITUDE * envelope
    return _PATTERN_AMPLITUDE * np.sin(4 * math.pi * u) * np.sqrt(envelope)


def make_series(
    n: int, *, seed: int = 0, n_channels: int = 2, length: int = 64, window: int = 16,
    noise: float = 0.25,
) -> SeriesDataset:
    """Draw ``n`` series whose class is decided by a pattern planted in one window.

    Classes (see :data:`SERIES_CLASS_NAMES`): a *bump* (raised cosine), a *dip* (its negative)
    and a *wave* (two sine cycles under the envelope), each of height 1.2 and ``window`` steps
    long, added to every channel (with a per-channel gain in [0.7, 1.3]) at a start drawn
    uniformly over the series. Outside the window the series is class-independent: a slow
    sinusoidal drift per channel (amplitude up to 0.3, 0.5 to 2 cycles per series) plus white
    Gaussian noise of standard deviation ``noise``, which also runs through the window.
    Labels cycle, ``y[i] = i % 3``, so every prefix is balanced.

    Sample ``i`` is a pure function of ``(seed, i)`` and the sizes (its own
    ``numpy.random.default_rng([seed, i])``): ``make_series(10)`` is the first ten series of
    ``make_series(100)``.

    Parameters
    ----------
    n:
        Number of series (>= 1).
    seed:
        Non-negative integer; different seeds give independent data sets.
    n_channels:
        Channels per series (>= 1).
    length:
        Time steps (>= 8, and >= ``window``).
    window:
        Length of the class-determining window (>= 4).
    noise:
        Standard deviation of the white noise (>= 0).
    """
    n = _check_int(n, "n", 1)
    seed = _check_int(seed, "seed", 0)
    n_channels = _check_int(n_channels, "n_channels", 1)
    length = _check_int(length, "length", 8)
    window = _check_int(window, "window", 4)
    noise = _check_float(noise, "noise", 0.0)
    if window > length:
        raise ValueError(f"`window` ({window}) must not exceed `length` ({length}).")

    patterns = [_pattern(k, window) for k in range(len(SERIES_CLASS_NAMES))]
    t = (np.arange(length) + 0.5) / length
    x = np.empty((n, n_channels, length), dtype=np.float64)
    windows = np.empty((n, 2), dtype=np.int64)
    y = np.arange(n, dtype=np.int64) % len(SERIES_CLASS_NAMES)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        start = int(rng.integers(length - window + 1))
        drift = rng.random((n_channels, 3))  # amplitude, cycles, phase
        gains = _between(0.7, 1.3, rng.random(n_channels))
        white = rng.standard_normal((n_channels, length))
        cycles = _between(0.5, 2.0, drift[:, 1:2])
        x[i] = (_DRIFT_AMPLITUDE * drift[:, :1]
                * np.sin(2 * math.pi * (cycles * t + drift[:, 2:3])) + noise * white)
        x[i, :, start:start + window] += gains[:, None] * patterns[y[i]]
        windows[i] = (start, start + window)
    steps = np.arange(length)
    masks = (steps >= windows[:, :1]) & (steps < windows[:, 1:])
    return SeriesDataset(x=x.astype(np.float32), y=y, masks=masks[:, None, :], windows=windows)


# --- text --------------------------------------------------------------------------------------

#: class names of :func:`make_text`, in label order
TEXT_CLASS_NAMES: tuple[str, ...] = ("negative", "positive")
#: the padding id (after the end of each text; ``attention_mask`` is False there)
TEXT_PAD_ID = 0
#: the id of an unknown word (never drawn by :func:`make_text`; for user input)
TEXT_UNK_ID = 1
#: the id of a masked token, the replacement of removed tokens that keeps the length
TEXT_MASK_ID = 2
_SPECIAL_WORDS = ("[PAD]", "[UNK]", "[MASK]")
_POSITIVE_WORDS = ("good", "great", "excellent", "wonderful", "love", "enjoyable", "brilliant",
                   "superb")
_NEGATIVE_WORDS = ("bad", "awful", "terrible", "boring", "hate", "dull", "poor", "worst")
_FILLER_WORDS = ("the", "a", "an", "movie", "film", "plot", "story", "actor", "actors", "scene",
                 "scenes", "music", "was", "is", "were", "and", "but", "it", "this", "that",
                 "very", "quite", "really", "rather", "some", "of", "in", "with", "director",
                 "ending", "cast", "script")
#: the vocabulary of :func:`make_text`: ``TEXT_VOCABULARY[id]`` is the word of a token id
TEXT_VOCABULARY: tuple[str, ...] = (_SPECIAL_WORDS + _NEGATIVE_WORDS + _POSITIVE_WORDS
                                    + _FILLER_WORDS)
# ids by role: the sentiment words of each class (label order), then the filler
_SENTIMENT_IDS = (
    np.arange(len(_SPECIAL_WORDS), len(_SPECIAL_WORDS) + len(_NEGATIVE_WORDS)),
    np.arange(len(_SPECIAL_WORDS) + len(_NEGATIVE_WORDS),
              len(_SPECIAL_WORDS) + len(_NEGATIVE_WORDS) + len(_POSITIVE_WORDS)),
)
_FILLER_IDS = np.arange(len(TEXT_VOCABULARY) - len(_FILLER_WORDS), len(TEXT_VOCABULARY))


@dataclass(frozen=True, eq=False)
class TextDataset(_Samples):
    """Token ids, labels and rationales from :func:`make_text`.

    Attributes
    ----------
    x:
        int64 (N, L) token ids into ``vocabulary``; texts are left-aligned and padded with
        :data:`TEXT_PAD_ID` (0).
    y:
        int64 (N,), labels indexing ``class_names`` (0 negative, 1 positive).
    masks:
        bool (N, L), the ground-truth rationale: True exactly on the planted sentiment words,
        which decide the label (also :attr:`rationales`).
    attention_mask:
        bool (N, L), True on the text's tokens and False on the padding.
    vocabulary:
        the word of each id (:data:`TEXT_VOCABULARY`): ``[PAD]`` (0), ``[UNK]`` (1),
        ``[MASK]`` (2), then the negative words, the positive words and the filler.
    class_names:
        the name of each class.
    """

    _per_sample: ClassVar[tuple[str, ...]] = ("x", "y", "masks", "attention_mask")

    x: np.ndarray
    y: np.ndarray
    masks: np.ndarray
    attention_mask: np.ndarray
    vocabulary: tuple[str, ...] = TEXT_VOCABULARY
    class_names: tuple[str, ...] = TEXT_CLASS_NAMES
    #: the padding, unknown-word and mask ids
    pad_id: ClassVar[int] = TEXT_PAD_ID
    unk_id: ClassVar[int] = TEXT_UNK_ID
    mask_id: ClassVar[int] = TEXT_MASK_ID

    @property
    def rationales(self) -> np.ndarray:
        """The ground-truth rationale masks (N, L) (the same array as ``masks``)."""
        return self.masks

    def decode(self, index: int) -> list[str]:
        """The words of text ``index``, padding left out."""
        ids = self.x[index][self.attention_mask[index]]
        return [self.vocabulary[int(t)] for t in ids]

    def __repr__(self) -> str:
        n, length = self.x.shape
        return (f"TextDataset(n={n}, length={length}, vocabulary={len(self.vocabulary)}, "
                f"classes={self.class_names})")


def make_text(
    n: int, *, seed: int = 0, length: int = 16, min_length: int | None = None,
    max_rationale: int = 3,
) -> TextDataset:
    """Draw ``n`` short texts whose sentiment-like label is decided by planted words.

    Each text has a length drawn uniformly from ``[min_length, length]`` (default
    ``min_length = length // 2``), then padding. Between 1 and ``max_rationale`` of its
    positions (uniformly, at most the text's length) hold *sentiment words* of its class:
    negative words (``"bad"``, ``"awful"``, ...) for label 0, positive words (``"good"``,
    ``"great"``, ...) for label 1; every other position holds a *filler* word drawn uniformly
    from a class-independent list (``"the"``, ``"movie"``, ``"plot"``, ...). So the label is a
    function of the planted words alone (the polarity of any of them), and ``masks`` (the
    rationale) marks exactly those words. Labels cycle, ``y[i] = i % 2``.

    Text ``i`` is a pure function of ``(seed, i)`` and the sizes (its own
    ``numpy.random.default_rng([seed, i])``): ``make_text(10)`` is the first ten texts of
    ``make_text(100)``. Ids: see :data:`TEXT_VOCABULARY`, :data:`TEXT_PAD_ID` (0),
    :data:`TEXT_UNK_ID` (1), :data:`TEXT_MASK_ID` (2).

    Parameters
    ----------
    n:
        Number of texts (>= 1).
    seed:
        Non-negative integer; different seeds give independent data sets.
    length:
        Tokens per row, padding included (>= 2).
    min_length:
        Shortest text (1 to ``length``; default ``length // 2``).
    max_rationale:
        Most sentiment words per text (>= 1).
    """
    n = _check_int(n, "n", 1)
    seed = _check_int(seed, "seed", 0)
    length = _check_int(length, "length", 2)
    min_length = length // 2 if min_length is None else _check_int(min_length, "min_length", 1)
    max_rationale = _check_int(max_rationale, "max_rationale", 1)
    if min_length > length:
        raise ValueError(f"`min_length` ({min_length}) must not exceed `length` ({length}).")

    x = np.full((n, length), TEXT_PAD_ID, dtype=np.int64)
    masks = np.zeros((n, length), dtype=bool)
    lengths = np.empty(n, dtype=np.int64)
    y = np.arange(n, dtype=np.int64) % len(TEXT_CLASS_NAMES)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        size = int(rng.integers(min_length, length + 1))
        k = int(rng.integers(1, min(max_rationale, size) + 1))
        where = rng.choice(size, k, replace=False)
        x[i, :size] = rng.choice(_FILLER_IDS, size)
        x[i, where] = rng.choice(_SENTIMENT_IDS[y[i]], k)
        masks[i, where] = True
        lengths[i] = size
    attention = np.arange(length) < lengths[:, None]
    return TextDataset(x=x, y=y, masks=masks, attention_mask=attention)
