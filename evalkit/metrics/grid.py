"""Grid localisation protocols of Rao, Böhle & Schiele (2022): GridPG, DiFull and DiPart.

An n x n grid (default 2 x 2) of images from n^2 different classes, each classified
confidently on its own, is explained for the class of one cell; the score is the share of the
*positive* attribution that falls in that cell (1 is perfect, a uniform map scores 1/n^2).
The three protocols differ only in the model that is explained:

* **GridPG** (the grid pointing game, Böhle et al. 2021): the user's model, with its normal
  forward on the whole grid image. The other cells hold other classes, so attribution there is
  *probably* wrong, but the model does see them.
* **DiFull** (fully disconnected): :class:`DisconnectedGrid` runs the model on each cell
  separately, one classification head per cell. The output for a cell's class depends on that
  cell alone, so any attribution outside it is *provably* unfaithful, and a gradient method
  (Saliency, InputXGradient, IntegratedGradients) scores exactly 1 by construction.
* **DiPart** (partially disconnected): :class:`PartiallyDisconnectedGrid` runs the
  convolutional feature extractor on the whole grid and the classification head on each cell's
  region of the feature map, so only the receptive fields at the cell borders connect cells:
  the true attribution lies mostly in the cell.

Workflow (``x``, ``y`` the user's images and labels; ``features``/``head`` the model's split)::

    grids = make_grids(x, y, model=model, grid_size=2, seed=0)  # confident images only
    g = grids.samples()                                 # one row per (grid, cell)
    a = explain(model, g.x, g.y, "IntegratedGradients")
    GridPG()(model, g.x, g.y, a, s=g.masks)             # or cells=g.cells

    difull = DisconnectedGrid(model, grid_size=2)       # any model
    t = difull.targets(g.cells, g.y)                    # the head of the cell, its class
    a = explain(difull, g.x, t, "InputXGradient")
    DiFull()(difull, g.x, t, a, cells=g.cells)          # 1.0 by construction

    dipart = PartiallyDisconnectedGrid(features=model.features, head=head)
    ...

The disconnected models output (N, K * n^2) scores: column ``c * n^2 + k`` is head ``k``'s
(cell ``k``'s, row-major) score for class ``c``; :meth:`DisconnectedGrid.targets` computes
it. Both expose the grid-shaped feature map as the layer ``grid_features`` (their
``cam_layer``), so CAM methods work on them when they are built from ``features=`` and
``head=``.

Reference: S. Rao, M. Böhle, B. Schiele, "Towards Better Understanding Attribution Methods",
CVPR 2022 (the grid pointing game: M. Böhle, M. Fritz, B. Schiele, "Convolutional Dynamic
Alignment Networks for Interpretable Classifications", CVPR 2021).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _rng
from .._validation import as_tensor, check_bool, check_scalar, is_numpy_like, to_numpy
from ..models import wrap_model
from ..models.base import looks_like_probabilities
from .base import MetricBatch
from .localisation import (
    _flag_mask_sizes,
    _LocalisationMetric,
    _pixel_maps,
    _pixel_masks,
    _positive_mass_ratio,
)

__all__ = [
    "DiFull",
    "DiPart",
    "DisconnectedGrid",
    "GridPG",
    "GridSamples",
    "Grids",
    "PartiallyDisconnectedGrid",
    "build_grids",
    "grid_cell_masks",
    "make_grids",
]

_RAO = ("Rao, Böhle & Schiele, Towards Better Understanding Attribution Methods, "
        "CVPR 2022")


# --------------------------------------------------------------------------- layout
def _check_grid_size(grid_size: Any) -> int:
    return int(check_scalar("grid_size", grid_size, int, min_val=1))


def _bounds(length: int, n: int) -> list[int]:
    """Cell boundaries along one axis: cell i covers [b[i], b[i + 1]) (equal cells when n
    divides the length; otherwise the later cells are one pixel larger)."""
    return [(i * length) // n for i in range(n + 1)]


def grid_cell_masks(cells: Any, grid_size: int, size: Any) -> Any:
    """bool masks (M, 1, H, W) of the cells ``cells`` (M,) (row-major indices in
    ``range(grid_size ** 2)``: 0 is the top-left cell, ``grid_size - 1`` the top-right one) of
    an image of ``size`` (H, W) split into ``grid_size`` x ``grid_size`` cells. NumPy in gives
    NumPy out."""
    n = _check_grid_size(grid_size)
    h, w = (int(v) for v in size)
    numpy_like = not isinstance(cells, torch.Tensor)
    c = as_tensor(np.asarray(cells) if isinstance(cells, list | tuple) else cells, "cells")
    if c.ndim != 1 or c.dtype.is_floating_point or c.dtype == torch.bool:
        raise ValueError(f"`cells` must be (M,) integer cell indices; got {tuple(c.shape)} "
                         f"{c.dtype}.")
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= n * n):
        raise ValueError(f"`cells` must lie in [0, {n * n}) for a {n}x{n} grid.")
    rows = torch.as_tensor(np.searchsorted(_bounds(h, n), np.arange(h), side="right") - 1,
                           device=c.device)
    cols = torch.as_tensor(np.searchsorted(_bounds(w, n), np.arange(w), side="right") - 1,
                           device=c.device)
    which = rows.reshape(h, 1) * n + cols.reshape(1, w)  # (H, W) cell index of each pixel
    masks = (which.unsqueeze(0) == c.to(torch.int64).reshape(-1, 1, 1)).unsqueeze(1)
    return to_numpy(masks) if numpy_like else masks


def build_grids(tiles: Any) -> Any:
    """Assemble tiles (M, n*n, C, H, W), in row-major cell order, into grids (M, C, nH, nW).
    For n = 2 this is :func:`evalkit.masks.build_mosaics`."""
    numpy_like = is_numpy_like(tiles)
    t = as_tensor(tiles, "tiles")
    if t.ndim != 5:
        raise ValueError(f"`tiles` must be (M, n*n, C, H, W); got shape {tuple(t.shape)}.")
    n = round(t.shape[1] ** 0.5)
    if n * n != t.shape[1]:
        raise ValueError(f"`tiles` must hold n*n tiles per grid; got {t.shape[1]}.")
    m, c, h, w = t.shape[0], t.shape[2], t.shape[3], t.shape[4]
    # (M, n, n, C, H, W) -> (M, C, n, H, n, W): a row of cells, then a pixel row in it
    out = t.reshape(m, n, n, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(m, c, n * h, n * w)
    return to_numpy(out) if numpy_like else out


def _split_cells(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The n*n cells of (N, C, H, W) in row-major order."""
    hb, wb = _bounds(x.shape[-2], n), _bounds(x.shape[-1], n)
    return [x[..., hb[i]:hb[i + 1], wb[j]:wb[j + 1]] for i in range(n) for j in range(n)]


def _stitch_cells(parts: Sequence[torch.Tensor], n: int) -> torch.Tensor:
    """Inverse of :func:`_split_cells`: n*n (N, C, h_i, w_j) pieces into one map."""
    rows = [torch.cat(list(parts[i * n:(i + 1) * n]), dim=-1) for i in range(n)]
    return torch.cat(rows, dim=-2)


# --------------------------------------------------------------------------- the data
@dataclass(frozen=True, eq=False)
class GridSamples:
    """One row per (grid, cell) to explain and score (from :meth:`Grids.samples`).

    ``x`` (M, C, nH, nW): each grid, repeated once per scored cell; ``y`` (M,): the class of
    the cell (explain this class; for the disconnected models use
    :meth:`DisconnectedGrid.targets`); ``cells`` (M,): the cell's row-major index (pass as
    ``cells=`` to the metrics); ``masks`` bool (M, 1, nH, nW): the cell as a mask (or pass
    ``s=masks``); ``grid`` (M,): the index of the grid in :attr:`Grids.images`.
    """

    x: Any
    y: Any
    cells: Any
    masks: Any
    grid: Any
    grid_size: int

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True, eq=False)
class Grids:
    """n x n grids of images from different classes (from :func:`make_grids`).

    Attributes
    ----------
    images:
        The grids (G, C, nH, nW), same type and dtype as the input images.
    labels:
        (G, n*n) the class of each cell, row-major (cell 0 is the top-left one).
    indices:
        int64 (G, n*n) the index of each cell's image in the input batch.
    grid_size:
        n.
    selected:
        int64 indices of the input images that passed the confidence filter (all images when
        no model was given).
    confidence:
        The threshold used (None without a model).
    seed:
        The seed actually used (reproduces the draw), or None when a Generator was given.
    """

    images: Any
    labels: Any
    indices: Any
    grid_size: int
    selected: Any
    confidence: float | None = None
    seed: int | None = field(default=None)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def cell_masks(self) -> Any:
        """bool (n*n, 1, nH, nW): the mask of each cell, row-major."""
        n = self.grid_size
        cells = np.arange(n * n) if not isinstance(self.images, torch.Tensor) else \
            torch.arange(n * n, device=self.images.device)
        return grid_cell_masks(cells, n, tuple(self.images.shape[-2:]))

    def samples(self, cells: str | Sequence[int] = "all") -> GridSamples:
        """The rows to explain and score: every grid once per cell in ``cells``: ``"all"``
        (default, GridPG's protocol), ``"corners"`` (the top-left and bottom-right cells
        only, as the authors' code evaluates DiFull and DiPart), or a sequence of row-major
        cell indices. Rows are grid-major (grid 0's cells first)."""
        n = self.grid_size
        if isinstance(cells, str):
            if cells == "all":
                chosen = list(range(n * n))
            elif cells == "corners":
                chosen = sorted({0, n * n - 1})
            else:
                raise ValueError(f"`cells` must be 'all', 'corners' or cell indices; got "
                                 f"{cells!r}.")
        else:
            chosen = [int(c) for c in cells]
            if not chosen or min(chosen) < 0 or max(chosen) >= n * n:
                raise ValueError(f"`cells` must be indices in [0, {n * n}); got {cells!r}.")
        g = len(self)
        grid_idx = np.repeat(np.arange(g), len(chosen))
        cell_idx = np.tile(np.asarray(chosen, dtype=np.int64), g)
        labels = np.asarray(to_numpy(self.labels) if isinstance(self.labels, torch.Tensor)
                            else self.labels)
        y = labels[grid_idx, cell_idx]
        if isinstance(self.images, torch.Tensor):
            dev = self.images.device
            gi = torch.as_tensor(grid_idx, device=dev)
            ci = torch.as_tensor(cell_idx, device=dev)
            x = self.images[gi]
            y_out: Any = torch.as_tensor(y, device=dev)
        else:
            gi, ci, x, y_out = grid_idx, cell_idx, self.images[grid_idx], y
        masks = grid_cell_masks(ci, n, tuple(self.images.shape[-2:]))
        return GridSamples(x=x, y=y_out, cells=ci, masks=masks, grid=gi, grid_size=n)


def _confident(model: Any, x: torch.Tensor, y: np.ndarray, threshold: float,
               batch_size: int | None) -> np.ndarray:
    """Indices of the images the model classifies as their label with a probability of at
    least ``threshold`` (softmax of the outputs, unless they are probabilities already)."""
    wrapper = wrap_model(model)
    outputs = wrapper.predict(x, batch_size=batch_size).detach().to(torch.float64)
    if outputs.ndim != 2:
        raise ValueError("make_grids(model=...) needs class scores (N, K) from the model; got "
                         f"shape {tuple(outputs.shape)}.")
    probs = outputs if looks_like_probabilities(outputs) else outputs.softmax(1)
    labels = torch.as_tensor(y, device=probs.device, dtype=torch.int64)
    if int(labels.min()) < 0 or int(labels.max()) >= probs.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {probs.shape[1]}) of the model's "
                         "outputs.")
    p = probs.gather(1, labels.unsqueeze(1)).squeeze(1)
    keep = (probs.argmax(1) == labels) & (p >= threshold)
    return to_numpy(keep.nonzero().flatten().cpu()).astype(np.int64)


def make_grids(
    x: Any,
    y: Any,
    n_grids: int | None = None,
    *,
    grid_size: int = 2,
    model: Any = None,
    confidence: float = 0.99,
    same_class_corners: bool = False,
    classes: Sequence[Any] | None = None,
    batch_size: int | None = None,
    seed: int | np.random.Generator | None = None,
) -> Grids:
    """Build the n x n grids of the GridPG, DiFull and DiPart protocols (Rao et al. 2022).

    Each grid holds ``grid_size ** 2`` images of *different* classes in a uniformly random
    arrangement (cell classes drawn uniformly without replacement from the classes that still
    have images); each image is used at most once, so at most ``len(x) // grid_size ** 2``
    grids are made. ``n_grids`` (default: as many as the images allow) grids are made; when
    the images run out first, fewer are returned with a warning.

    Confident images only: with ``model``, an image is used only if the model predicts its
    label ``y`` with a softmax probability of at least ``confidence`` (default 0.99, the
    paper's threshold; the outputs are used as they are when they are probabilities already).
    The paper filters with several models at once (an image must pass all of them): pass the
    images that pass, or filter with each model and intersect :attr:`Grids.selected`. Without
    a model every image is used (filter them yourself).

    ``same_class_corners``: the top-left and bottom-right cells hold two different images of
    the same class (an option of the authors' code for DiFull/DiPart: a method that follows
    the class, not the model's wiring, then attributes to both corners).

    ``seed`` is an int, a ``numpy.random.Generator`` (advanced by the draw), or None (fresh OS
    entropy; the value is recorded in ``Grids.seed``). The global RNGs are never used. NumPy
    in gives NumPy out; tensors in give tensors on the same device.
    """
    n = _check_grid_size(grid_size)
    if n < 2:
        raise ValueError("`grid_size` must be at least 2 (a grid of one cell has no other "
                         "cells to attribute to).")
    if n_grids is not None:
        check_scalar("n_grids", n_grids, int, min_val=1)
    check_scalar("confidence", confidence, (int, float), min_val=0, max_val=1)
    check_bool("same_class_corners", same_class_corners)
    numpy_like = is_numpy_like(x)
    pool = as_tensor(x, "x")
    if pool.ndim != 4:
        raise ValueError(f"`x` must be a batch of images (N, C, H, W); got {tuple(pool.shape)}.")
    y_np = np.asarray(to_numpy(y) if isinstance(y, torch.Tensor) else y)
    if y_np.shape != (pool.shape[0],):
        raise ValueError(f"`y` must have one label per image, shape ({pool.shape[0]},); got "
                         f"{y_np.shape}.")
    rng, used_seed = _rng.numpy_generator(seed)

    if model is not None:
        selected = _confident(model, pool, y_np, float(confidence), batch_size)
    else:
        selected = np.arange(pool.shape[0], dtype=np.int64)
    wanted = np.unique(y_np) if classes is None else np.unique(np.asarray(list(classes)))
    pools = {}
    for c in wanted:
        own = selected[y_np[selected] == c]
        if own.size:
            pools[c] = list(own[rng.permutation(own.size)])  # drawn from the end
    n_cells = n * n
    n_distinct = n_cells - 1 if same_class_corners else n_cells
    limit = n_grids if n_grids is not None else pool.shape[0]
    rows, labels = [], []
    while len(rows) < limit:
        avail = [c for c in pools if pools[c]]
        if len(avail) < n_distinct:
            break
        chosen = [avail[i] for i in rng.choice(len(avail), size=n_distinct, replace=False)]
        if same_class_corners:
            pairs = [c for c in chosen if len(pools[c]) >= 2]
            if not pairs:
                break
            repeated = pairs[int(rng.integers(len(pairs)))]
            others = [c for c in chosen if c != repeated]
            middle = [others[i] for i in rng.permutation(len(others))]
            cell_classes = [repeated, *middle, repeated]
        else:
            cell_classes = [chosen[i] for i in rng.permutation(len(chosen))]
        rows.append([pools[c].pop() for c in cell_classes])
        labels.append(cell_classes)
    needed = f"{n_distinct} classes with confident images" + (
        " (one of them with two)" if same_class_corners else "")
    if not rows:
        raise ValueError(f"make_grids: no grid can be built: a {n}x{n} grid needs {needed}; "
                         f"{len(selected)} of {pool.shape[0]} images passed"
                         + (f" the confidence filter (>= {confidence})" if model is not None
                            else "") + f", from {len(pools)} classes.")
    if n_grids is not None and len(rows) < n_grids:
        warnings.warn(f"make_grids: built {len(rows)} of the {n_grids} grids asked for: the "
                      f"images ran out (each image is used once; a grid needs {needed}).",
                      stacklevel=2)
    idx = np.asarray(rows, dtype=np.int64)
    lab = y_np[idx]
    images = build_grids(pool[torch.as_tensor(idx, device=pool.device)])
    conf = float(confidence) if model is not None else None
    if numpy_like:
        return Grids(images=to_numpy(images), labels=lab, indices=idx, grid_size=n,
                     selected=selected, confidence=conf, seed=used_seed)
    dev = pool.device
    lab_out = torch.as_tensor(lab, device=dev) if isinstance(y, torch.Tensor) else lab
    return Grids(images=images, labels=lab_out, indices=torch.as_tensor(idx, device=dev),
                 grid_size=n, selected=torch.as_tensor(selected, device=dev),
                 confidence=conf, seed=used_seed)


# --------------------------------------------------------------------------- the models
class _GridModel(nn.Module):
    """Shared parts of the disconnected models: one head per cell, outputs (N, K * n^2)."""

    #: the grid-shaped feature map, for CAM methods
    cam_layer: str = "grid_features"

    def __init__(self, grid_size: int) -> None:
        super().__init__()
        self.grid_size = _check_grid_size(grid_size)
        self.grid_features = nn.Identity()

    def targets(self, cells: Any, y: Any) -> Any:
        """The output column of cell ``cells``'s head for class ``y``: ``y * n^2 + cells``
        (elementwise; the type of ``y``)."""
        n2 = self.grid_size ** 2
        if isinstance(y, torch.Tensor):
            c = torch.as_tensor(cells, device=y.device).to(torch.int64)
            return y.to(torch.int64) * n2 + c
        return np.asarray(y, dtype=np.int64) * n2 + np.asarray(cells, dtype=np.int64)

    def _heads(self, fmap: torch.Tensor, head: nn.Module) -> torch.Tensor:
        """``head`` on each cell's region of the (N, C, H, W) map, as (N, K * n^2)."""
        n = self.grid_size
        parts = _split_cells(fmap, n)
        if len({tuple(p.shape) for p in parts}) == 1:  # one call for all cells
            out = head(torch.cat(parts, 0))
            out = out.reshape(n * n, fmap.shape[0], -1).permute(1, 0, 2)
        else:
            out = torch.stack([head(p) for p in parts], 1)
        # (N, n^2, K) -> (N, K, n^2) -> (N, K * n^2): column c * n^2 + k
        return out.transpose(1, 2).reshape(fmap.shape[0], -1)


class DisconnectedGrid(_GridModel):
    """The DiFull setting (Rao et al. 2022): the model applied to each cell of an n x n grid
    separately, with one classification head per cell, so that no information flows between
    cells.

    Give ``model`` (any classifier (N, C, H, W) -> (N, K) that accepts one cell), or its
    split ``features=`` (the convolutional feature extractor) and ``head=`` (the rest, from the
    feature map to the class scores, e.g. ``nn.Sequential(model.gap, nn.Flatten(),
    model.fc)``). With the split, the cells' feature maps are stitched into one grid-shaped
    map, the layer ``grid_features`` (the ``cam_layer``: CAM methods work), and the head runs
    on each cell's region of it; without it, CAM methods have no grid-shaped layer to use.

    The output is (N, K * n^2): column ``c * n^2 + k`` is the score of class ``c`` from the
    head of cell ``k`` (row-major), i.e. the model's score of ``c`` on cell ``k`` alone;
    :meth:`targets` gives the column to explain. Explain the logits (a softmax over these
    columns would mix the heads). The wrapped modules are shared with the user's model (not
    copied) and never changed.
    """

    def __init__(self, model: nn.Module | None = None, *, features: nn.Module | None = None,
                 head: nn.Module | None = None, grid_size: int = 2) -> None:
        super().__init__(grid_size)
        if (model is None) == (features is None and head is None):
            raise TypeError("Give either `model`, or `features=` and `head=`.")
        if model is None and (features is None or head is None):
            raise TypeError("`features=` and `head=` go together.")
        self.model = model
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (N, K * n^2) for grids (N, C, nH, nW)."""
        n = self.grid_size
        if self.model is not None:  # the model is the head of each cell of the input
            return self._heads(x, self.model)
        cells = _split_cells(x, n)
        same = len({tuple(c.shape) for c in cells}) == 1
        if same:  # the cells go through the feature extractor together, each on its own
            f = self.features(torch.cat(cells, 0))
            parts = list(f.chunk(n * n, 0))
        else:
            parts = [self.features(c) for c in cells]
        fmap = self.grid_features(_stitch_cells(parts, n))
        return self._heads(fmap, self.head)


class PartiallyDisconnectedGrid(_GridModel):
    """The DiPart setting (Rao et al. 2022): the feature extractor ``features`` runs on the
    whole n x n grid, and the classification ``head`` on each cell's region of its feature map
    (one head per cell), so cells are connected only through the receptive fields of the
    convolutions at the cell borders.

    ``features``: the convolutional part, (N, C, nH, nW) -> (N, C', H', W'); ``head``: the
    rest, from a region of the feature map to the class scores (N, K) (for a model ending in
    global average pooling and a linear layer: ``nn.Sequential(model.gap, nn.Flatten(),
    model.fc)``). The feature map is exposed as the layer ``grid_features`` (the
    ``cam_layer``). Outputs and targets as :class:`DisconnectedGrid`.
    """

    def __init__(self, features: nn.Module, head: nn.Module, *, grid_size: int = 2) -> None:
        super().__init__(grid_size)
        if not isinstance(features, nn.Module) or not isinstance(head, nn.Module):
            raise TypeError("`features` and `head` must be torch modules (the model's split "
                            "into its feature extractor and its classification head).")
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (N, K * n^2) for grids (N, C, nH, nW)."""
        fmap = self.grid_features(self.features(x))
        if fmap.ndim != 4 or fmap.shape[-2] < self.grid_size or fmap.shape[-1] < self.grid_size:
            raise ValueError(f"`features` must give a (N, C, H, W) map of at least "
                             f"{self.grid_size}x{self.grid_size}; got {tuple(fmap.shape)}.")
        return self._heads(fmap, self.head)


# --------------------------------------------------------------------------- the metrics
class _GridLocalisation(_LocalisationMetric):
    """Share of the positive attribution in the target cell of a grid."""

    needs_masks = False
    modalities = ("image",)  # cells of an image grid
    call_options = ("cells",)
    paper = _RAO

    def __init__(self, grid_size: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.grid_size = _check_grid_size(grid_size)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        cells = batch.extra.get("cells")
        if cells is not None and batch.s is not None:
            raise TypeError(f"Give either `cells` or masks `s` to {type(self).__name__}, not "
                            "both.")
        if cells is None and batch.s is None:
            raise ValueError(f"{type(self).__name__} needs the target cell of each row: "
                             "cells=samples.cells (see evalkit.metrics.grid.make_grids), or the "
                             "cells as masks `s`.")
        a, spatial = _pixel_maps(batch)
        if cells is not None:
            if len(spatial) != 2:
                raise ValueError(f"{type(self).__name__} needs image grids (N, C, H, W).")
            c = as_tensor(np.asarray(cells) if isinstance(cells, list | tuple) else cells,
                          "cells", device=batch.device)
            if c.shape != (batch.n,):
                raise ValueError(f"`cells` must hold one cell index per row, shape "
                                 f"({batch.n},); got {tuple(c.shape)}.")
            s = grid_cell_masks(c, self.grid_size, spatial).reshape(batch.n, -1)
        else:
            s = _pixel_masks(batch)
        _flag_mask_sizes(batch, s)
        return _positive_mass_ratio(batch, a, s)


class GridPG(_GridLocalisation):
    """Grid pointing game, GridPG (Böhle et al. 2021; Rao et al. 2022): on an n x n
    grid of confidently classified images from different classes
    (:func:`~evalkit.metrics.grid.make_grids`), the user's model classifies the whole grid
    with its normal forward and the attribution for the class of one cell is scored.

    The score is sum of max(a, 0) in the cell / sum of max(a, 0) over the grid, the share
    of the positive attribution that falls in the target cell (the quantity of
    :class:`~evalkit.metrics.RelevanceMassAccuracy`, computed by the same code).
    **Higher is better**; in [0, 1]: 1 when all positive attribution is in the cell, 1/n^2
    for a uniform map. A map without positive attribution (all zero or all negative) is NaN
    with a reason, as are rows with NaN or Inf attributions. Call it on the rows of
    :meth:`Grids.samples` with ``cells=g.cells`` (``grid_size`` must match the grids), or
    with ``s=g.masks``.

    Parameters
    ----------
    grid_size:
        n, the grid's side in cells (default 2); used with ``cells=``.

    Reference: S. Rao, M. Böhle, B. Schiele, "Towards Better Understanding Attribution
    Methods", CVPR 2022; M. Böhle, M. Fritz, B. Schiele, "Convolutional Dynamic Alignment
    Networks for Interpretable Classifications", CVPR 2021.
    """

    aliases = ("GridPointingGame",)


class DiFull(_GridLocalisation):
    """DiFull (Rao et al. 2022): the grid localisation score on the *fully
    disconnected* model :class:`~evalkit.metrics.grid.DisconnectedGrid`, which runs the model
    on each cell separately with one head per cell. The output for a cell's class depends on
    that cell only, so attribution outside it is provably unfaithful: a faithful method scores
    1 (gradient methods do by construction).

    Explain the disconnected model for ``difull.targets(g.cells, g.y)`` and score those
    attributions; the authors evaluate the top-left and bottom-right cells
    (``grids.samples("corners")``).

    The score is sum of max(a, 0) in the cell / sum of max(a, 0) over the grid, the share
    of the positive attribution that falls in the target cell (the quantity of
    :class:`~evalkit.metrics.RelevanceMassAccuracy`, computed by the same code).
    **Higher is better**; in [0, 1]: 1 when all positive attribution is in the cell, 1/n^2
    for a uniform map. A map without positive attribution (all zero or all negative) is NaN
    with a reason, as are rows with NaN or Inf attributions. Call it on the rows of
    :meth:`Grids.samples` with ``cells=g.cells`` (``grid_size`` must match the grids), or
    with ``s=g.masks``.

    Parameters
    ----------
    grid_size:
        n, the grid's side in cells (default 2); used with ``cells=``.

    Reference: S. Rao, M. Böhle, B. Schiele, "Towards Better Understanding Attribution
    Methods", CVPR 2022.
    """


class DiPart(_GridLocalisation):
    """DiPart (Rao et al. 2022): the grid localisation score on the *partially
    disconnected* model :class:`~evalkit.metrics.grid.PartiallyDisconnectedGrid`, whose
    feature extractor sees the whole grid while the classification head runs on each cell's
    region of the feature map. Cells are connected only through the receptive fields at their
    borders, so the true attribution lies mostly, not provably only, in the cell.

    Explain the partially disconnected model for ``dipart.targets(g.cells, g.y)`` and score
    those attributions.

    The score is sum of max(a, 0) in the cell / sum of max(a, 0) over the grid, the share
    of the positive attribution that falls in the target cell (the quantity of
    :class:`~evalkit.metrics.RelevanceMassAccuracy`, computed by the same code).
    **Higher is better**; in [0, 1]: 1 when all positive attribution is in the cell, 1/n^2
    for a uniform map. A map without positive attribution (all zero or all negative) is NaN
    with a reason, as are rows with NaN or Inf attributions. Call it on the rows of
    :meth:`Grids.samples` with ``cells=g.cells`` (``grid_size`` must match the grids), or
    with ``s=g.masks``.

    Parameters
    ----------
    grid_size:
        n, the grid's side in cells (default 2); used with ``cells=``.

    Reference: S. Rao, M. Böhle, B. Schiele, "Towards Better Understanding Attribution
    Methods", CVPR 2022.
    """
