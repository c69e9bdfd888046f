"""The grid protocols of Rao et al. (2022): the grid builder, the disconnected models (DiFull,
DiPart) and the GridPG/DiFull/DiPart metrics, with hand-computed values and the shipped shapes
model end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from evalkit import explain
from evalkit._validation import UndefinedScoreWarning
from evalkit.masks import build_mosaics
from evalkit.metrics import DiFull, DiPart, GridPG, RelevanceMassAccuracy, list_metrics
from evalkit.metrics.grid import (
    DisconnectedGrid,
    PartiallyDisconnectedGrid,
    build_grids,
    grid_cell_masks,
    make_grids,
)

METRICS = (GridPG, DiFull, DiPart)


# --------------------------------------------------------------------------- layout
def test_build_grids_is_build_mosaics_for_two_and_row_major_for_three():
    tiles = torch.randn(3, 4, 2, 5, 6)
    assert torch.equal(build_grids(tiles), build_mosaics(tiles))
    # 3x3: tile k (constant k) lands in row k // 3, column k % 3
    tiles = torch.arange(9.0).reshape(1, 9, 1, 1, 1).expand(2, 9, 1, 2, 3)
    grid = build_grids(tiles.numpy())
    assert isinstance(grid, np.ndarray) and grid.shape == (2, 1, 6, 9)
    np.testing.assert_array_equal(grid[0, 0, ::2, ::3], np.arange(9.0).reshape(3, 3))
    with pytest.raises(ValueError, match="n\\*n tiles"):
        build_grids(torch.zeros(1, 3, 1, 2, 2))


def test_cell_masks_partition_the_image():
    masks = grid_cell_masks(np.arange(4), 2, (4, 6))
    assert masks.shape == (4, 1, 4, 6) and masks.dtype == bool
    np.testing.assert_array_equal(masks.sum(0), np.ones((1, 4, 6)))
    assert masks[1, 0, :2, 3:].all() and masks[1].sum() == 6  # top-right
    # an odd size: every pixel in exactly one cell, the later cells a pixel larger
    odd = grid_cell_masks(torch.arange(9), 3, (7, 8))
    assert isinstance(odd, torch.Tensor)
    assert torch.equal(odd.sum(0), torch.ones(1, 7, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="in \\[0, 4\\)"):
        grid_cell_masks([4], 2, (4, 4))
    with pytest.raises(ValueError, match="integer"):
        grid_cell_masks(np.array([0.5]), 2, (4, 4))


# --------------------------------------------------------------------------- the builder
def _data(n_per_class: int = 6, n_classes: int = 5, size: int = 4):
    """Images whose pixels all hold their index (so a cell tells which image it is)."""
    n = n_per_class * n_classes
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, 2, size, size)
    y = torch.arange(n) % n_classes
    return x.clone(), y


def test_make_grids_structure():
    x, y = _data()
    grids = make_grids(x, y, 5, seed=3)
    assert len(grids) == 5 and grids.images.shape == (5, 2, 8, 8)
    assert grids.grid_size == 2 and grids.confidence is None and grids.seed == 3
    idx = grids.indices.numpy()
    labels = np.asarray(grids.labels)
    assert len(set(idx.ravel().tolist())) == idx.size  # each image used once
    assert all(len(set(row)) == 4 for row in labels.tolist())  # different classes per grid
    np.testing.assert_array_equal(labels, y.numpy()[idx])
    # the cell holds its image: read the index back from the pixels
    masks = grids.cell_masks[:, 0]
    for g in range(5):
        for k in range(4):
            assert torch.all(grids.images[g, 0][masks[k]] == idx[g, k])
    # reproducible, and a different seed draws differently
    again = make_grids(x, y, 5, seed=3)
    assert torch.equal(again.images, grids.images)
    assert not torch.equal(make_grids(x, y, 5, seed=4).indices, grids.indices)


def test_make_grids_types_seed_and_global_rng_untouched():
    x, y = _data()
    # the global generators are never read or advanced (their state is only inspected here)
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()  # noqa: NPY002
    grids = make_grids(x.numpy(), y.numpy(), 2, grid_size=2, seed=None)
    assert isinstance(grids.images, np.ndarray) and isinstance(grids.labels, np.ndarray)
    assert isinstance(grids.seed, int)
    assert np.array_equal(make_grids(x.numpy(), y.numpy(), 2, seed=grids.seed).images,
                          grids.images)
    rows = grids.samples("corners")
    assert isinstance(rows.x, np.ndarray) and isinstance(rows.masks, np.ndarray)
    assert rows.cells.tolist() == [0, 3, 0, 3] and rows.y.tolist() == grids.labels[:, [0, 3]]\
        .ravel().tolist()
    np.testing.assert_allclose(GridPG()(None, rows.x, rows.y, rows.masks.astype(float),
                                        cells=rows.cells), 1.0)
    gen = np.random.default_rng(0)
    assert make_grids(x, y, 2, seed=gen).seed is None
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])  # noqa: NPY002


def test_make_grids_runs_out_and_refuses():
    x, y = _data(n_per_class=2, n_classes=4)
    with pytest.warns(UserWarning, match="built 2 of the 3"):
        grids = make_grids(x, y, 3, seed=0)
    assert len(grids) == 2
    assert len(make_grids(x, y, seed=0)) == 2  # as many as the images allow
    with pytest.raises(ValueError, match="needs 9 classes"):
        make_grids(x, y, grid_size=3, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        make_grids(x, y, grid_size=1)


def test_make_grids_same_class_corners_and_three_by_three():
    x, y = _data(n_per_class=4, n_classes=4)
    grids = make_grids(x, y, 2, same_class_corners=True, seed=1)
    labels = np.asarray(grids.labels)
    assert (labels[:, 0] == labels[:, 3]).all()
    assert (grids.indices[:, 0] != grids.indices[:, 3]).all()  # two different images
    assert all(len(set(row)) == 3 for row in labels.tolist())
    x9, y9 = _data(n_per_class=2, n_classes=10)
    g9 = make_grids(x9, y9, 2, grid_size=3, seed=0)
    assert g9.images.shape == (2, 2, 12, 12) and g9.cell_masks.shape == (9, 1, 12, 12)


class _Probabilities(nn.Module):
    """Class probabilities read from the image: pixel value v gives p(label) = v / 100."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.n_classes = n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        label = x[:, 1, 0, 0].long()
        p = x[:, 0, 0, 0] / 100
        rest = (1 - p) / (self.n_classes - 1)
        out = rest.unsqueeze(1).repeat(1, self.n_classes)
        return out.scatter(1, label.unsqueeze(1), p.unsqueeze(1))


def test_make_grids_keeps_confidently_classified_images_only():
    # images 0..7 (labels i % 4): confidences 99.5 % and 98 % alternate by pairs
    conf = torch.tensor([99.5, 99.5, 99.5, 99.5, 98.0, 98.0, 98.0, 98.0, 99.0, 99.0, 99.0, 99.0])
    y = torch.arange(12) % 4
    x = torch.stack([conf, y.float()], 1).reshape(12, 2, 1, 1).expand(12, 2, 2, 2).clone()
    grids = make_grids(x, y, model=_Probabilities(4), seed=0)
    # >= 0.99: the 99.5 % and 99.0 % images; the prediction must be the label as well
    assert grids.selected.tolist() == [0, 1, 2, 3, 8, 9, 10, 11] and grids.confidence == 0.99
    assert set(grids.indices.flatten().tolist()) <= set(grids.selected.tolist())
    strict = make_grids(x, y, model=_Probabilities(4), confidence=0.995, seed=0)
    assert strict.selected.tolist() == [0, 1, 2, 3] and len(strict) == 1
    with pytest.raises(ValueError, match="passed the confidence filter"):
        make_grids(x, y, model=_Probabilities(4), confidence=0.999)


def test_samples_rows_cells_and_masks():
    x, y = _data()
    grids = make_grids(x, y, 3, seed=0)
    g = grids.samples()
    assert len(g) == 12 and g.cells.tolist() == [0, 1, 2, 3] * 3
    assert g.grid.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(g.y, grids.labels.flatten())
    assert torch.equal(g.x[5], grids.images[1])
    assert torch.equal(g.masks, grid_cell_masks(g.cells, 2, (8, 8)))
    corners = grids.samples("corners")
    assert corners.cells.tolist() == [0, 3] * 3
    assert grids.samples([2]).y.tolist() == grids.labels[:, 2].tolist()
    with pytest.raises(ValueError):
        grids.samples("edges")
    with pytest.raises(ValueError):
        grids.samples([4])


# --------------------------------------------------------------------------- the models
class _Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


def _split_model():
    torch.manual_seed(0)  # test-local weights; the library never reads the global RNG
    features = _Backbone()
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 5))
    return features, head, nn.Sequential(features, head)


def test_disconnected_grid_outputs_are_the_model_on_each_cell():
    features, head, model = _split_model()
    x = torch.randn(2, 2, 8, 8)
    difull = DisconnectedGrid(model, grid_size=2)
    out = difull(x)
    assert out.shape == (2, 5 * 4)
    cells = [x[..., :4, :4], x[..., :4, 4:], x[..., 4:, :4], x[..., 4:, 4:]]
    for k, cell in enumerate(cells):
        torch.testing.assert_close(out[:, k::4], model(cell))  # column c * 4 + k
    split = DisconnectedGrid(features=features, head=head, grid_size=2)
    torch.testing.assert_close(split(x), out)
    # no information flows between cells: the head of cell 1 has no gradient elsewhere
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(difull(xg)[:, difull.targets(1, 3)].sum(), xg)
    outside = ~grid_cell_masks([1], 2, (8, 8))[0, 0]
    assert grad[:, :, outside].abs().max() == 0 and grad[:, :, ~outside].abs().max() > 0
    # odd sizes fall back to one call per cell
    odd = torch.randn(1, 2, 7, 9)
    torch.testing.assert_close(DisconnectedGrid(model, grid_size=2)(odd)[:, 3::4],
                               model(odd[..., 3:, 4:]))
    assert DisconnectedGrid(model).targets(np.array([0, 3]), np.array([2, 1])).tolist() == [8, 7]
    with pytest.raises(TypeError):
        DisconnectedGrid(model, features=features, head=head)
    with pytest.raises(TypeError):
        DisconnectedGrid(features=features)


def test_partially_disconnected_grid_heads_on_feature_regions():
    features, head, _ = _split_model()
    x = torch.randn(2, 2, 8, 8)
    dipart = PartiallyDisconnectedGrid(features, head, grid_size=2)
    out = dipart(x)
    f = features(x)
    torch.testing.assert_close(out[:, 2::4], head(f[..., 4:, :4]))  # cell 2, bottom-left
    # the cells are connected only through the convolution at the borders: cell 0's head has
    # gradient in cell 0 and the first pixel row/column across its border, nowhere else
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(dipart(xg)[:, dipart.targets(0, 1)].sum(), xg)
    reach = torch.zeros(8, 8, dtype=torch.bool)
    reach[:5, :5] = True
    assert grad[:, :, ~reach].abs().max() == 0 and grad[..., 4, :4].abs().max() > 0
    assert dipart.cam_layer == "grid_features"
    with pytest.raises(TypeError):
        PartiallyDisconnectedGrid(lambda t: t, head)


# --------------------------------------------------------------------------- known answers
class _CellSum(nn.Module):
    """Logit of class c = sum of the pixels of one fixed cell, cell c (2x2 grid, 4 classes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        masks = grid_cell_masks(torch.arange(4), 2, x.shape[-2:]).to(x.dtype)  # (4, 1, H, W)
        return torch.einsum("nchw,kchw->nk", x, masks.expand(4, x.shape[1], -1, -1))


class _Sum(nn.Module):
    """Logit of class c = (c + 1) * the sum of the pixels (on one cell, in DiFull)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum((1, 2, 3)).unsqueeze(1) * torch.arange(1.0, 5.0)


def test_known_answer_input_x_gradient_scores_one():
    x = torch.rand(4, 3, 8, 8) + 0.1  # positive pixels: x * grad is positive in the cell
    cells = torch.tensor([0, 1, 2, 3])
    y = cells  # class c is read from cell c
    a = explain(_CellSum(), x, y, "InputXGradient")
    np.testing.assert_allclose(GridPG()(None, x, y, a, cells=cells), np.ones(4))
    difull = DisconnectedGrid(_Sum(), grid_size=2)
    labels = torch.tensor([3, 0, 2, 1])
    t = difull.targets(cells, labels)
    a = explain(difull, x, t, "InputXGradient")
    for metric in (DiFull(), DiPart()):
        np.testing.assert_allclose(metric(difull, x, t, a, cells=cells), np.ones(4))


def test_known_answer_uniform_and_hand_computed_maps():
    x = torch.zeros(2, 1, 6, 6)
    uniform = torch.ones(2, 1, 6, 6)
    for metric in METRICS:
        np.testing.assert_allclose(metric()(None, x, None, uniform, cells=[0, 3]), [0.25] * 2)
    np.testing.assert_allclose(GridPG(grid_size=3)(None, x, None, uniform, cells=[4, 8]),
                               [1 / 9] * 2)
    # 3 inside cell 0 (9 pixels), 1 elsewhere, -5 at one pixel of cell 3 (ignored): the
    # positive mass inside is 27 of 27 + 27 - 1 = 53; for cell 3: 8 of 53
    a = torch.ones(1, 1, 6, 6)
    a[0, 0, :3, :3] = 3
    a[0, 0, 5, 5] = -5
    np.testing.assert_allclose(GridPG()(None, x[:1], None, a, cells=[0]), [27 / 53])
    np.testing.assert_allclose(GridPG()(None, x[:1], None, a, cells=[3]), [8 / 53])
    # the cell as a mask gives the same, and so does RelevanceMassAccuracy (the shared code)
    s = grid_cell_masks([0], 2, (6, 6))
    np.testing.assert_allclose(GridPG()(None, x[:1], None, a, s=s), [27 / 53])
    np.testing.assert_allclose(RelevanceMassAccuracy()(None, x[:1], None, a, s=s), [27 / 53])


def test_edge_cases_constant_zero_negative_nan():
    x = torch.zeros(5, 1, 4, 4)
    a = torch.ones(5, 1, 4, 4) * torch.tensor([2.0, 0.0, -1.0, 1.0, 1.0]).reshape(5, 1, 1, 1)
    a[3, 0, 1, 1] = float("nan")
    a[4] = -1.0
    a[4, 0, 3, 3] = 0.5  # the only positive pixel, in cell 3
    for cls in METRICS:
        metric = cls()
        with pytest.warns(UndefinedScoreWarning, match="3 of 5"):
            out = metric(None, x, None, a, cells=[0, 0, 0, 0, 3])
        assert out[0] == 0.25 and out[4] == 1.0  # a constant map scores 1/n^2
        assert np.isnan(out[1:4]).all()
        assert "no positive attribution" in metric.nan_reasons_[1]
        assert "no positive attribution" in metric.nan_reasons_[2]
        assert metric.nan_reasons_[3] == "attribution contains NaN or Inf"


def test_call_errors():
    x, a = torch.zeros(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="target cell"):
        GridPG()(None, x, None, a)
    with pytest.raises(TypeError, match="not both"):
        GridPG()(None, x, None, a, cells=[0, 1], s=grid_cell_masks([0, 1], 2, (4, 4)))
    with pytest.raises(ValueError, match="one cell index per row"):
        GridPG()(None, x, None, a, cells=[0])
    with pytest.raises(ValueError, match="in \\[0, 4\\)"):
        GridPG()(None, x, None, a, cells=[0, 4])
    with pytest.raises(ValueError):
        GridPG(grid_size=0)


def test_registered_with_metadata():
    rows = list_metrics().set_index("name").loc[["GridPG", "DiFull", "DiPart"]]
    assert (rows["family"] == "localisation").all() and rows["higher_is_better"].all()
    assert all(m == ("image",) for m in rows["modalities"])
    assert all("Rao" in p for p in rows["paper"])
    for cls in METRICS:
        assert "Higher is better" in cls.__doc__ and "CVPR 2022" in cls.__doc__


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def shapes_grids():
    from evalkit.datasets import make_shapes
    from evalkit.zoo import load_shapes_cnn

    model = load_shapes_cnn()
    data = make_shapes(24, seed=0)
    grids = make_grids(torch.from_numpy(data.x), torch.from_numpy(data.y), 3, model=model,
                       seed=0)
    return model, grids


def test_shapes_end_to_end(shapes_grids):
    model, grids = shapes_grids
    assert len(grids) == 3 and grids.confidence == 0.99
    g = grids.samples()
    head = nn.Sequential(model.gap, nn.Flatten(), model.fc)
    difull = DisconnectedGrid(features=model.features, head=head, grid_size=2)
    t = difull.targets(g.cells, g.y)
    with torch.no_grad():  # the disconnected model classifies each (confident) cell
        per_cell = difull(g.x).reshape(len(g), 4, 4)[torch.arange(len(g)), :, g.cells]
    assert torch.equal(per_cell.argmax(1), g.y)
    scores = {}
    for method, kw in (("Saliency", {}), ("InputXGradient", {}),
                       ("IntegratedGradients", {"n_steps": 16}), ("GradCAM", {})):
        a = explain(model, g.x, g.y, method, **kw)
        grid_pg = GridPG()(model, g.x, g.y, a, cells=g.cells)
        a_di = explain(difull, g.x, t, method, **kw)
        di_full = DiFull()(difull, g.x, t, a_di, cells=g.cells)
        assert ((grid_pg >= 0) & (grid_pg <= 1)).all() and not np.isnan(di_full).any()
        scores[method] = (float(grid_pg.mean()), float(di_full.mean()))
        if method != "GradCAM":  # gradient methods: exactly in the cell, by construction
            np.testing.assert_allclose(di_full, 1.0)
    # Grad-CAM at the last layer pools the gradient over the whole map, so its map for one
    # head bleeds into the disconnected cells (Rao et al.'s finding): well below 1
    assert scores["GradCAM"][1] < 0.9, scores
