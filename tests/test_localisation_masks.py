"""Tests of `evalkit.masks`: boxes <-> masks, IoU, disk dilation, mosaics, CAM box protocol."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from evalkit.masks import (
    box_iou,
    boxes_from_maps,
    boxes_from_masks,
    build_mosaics,
    cam_localisation,
    dilate,
    make_mosaics,
    masks_from_boxes,
    quadrant_masks,
)


# --------------------------------------------------------------------------- boxes -> masks
def test_masks_from_boxes_single_box_is_a_slice():
    m = masks_from_boxes(np.array([2, 1, 5, 3]), (4, 6))
    expected = np.zeros((4, 6), bool)
    expected[1:3, 2:5] = True
    assert m.dtype == bool and m.shape == (4, 6)
    np.testing.assert_array_equal(m, expected)


def test_masks_from_boxes_batched_multi_and_ragged():
    boxes = np.array([[0, 0, 2, 2], [1, 1, 3, 4]])
    m = masks_from_boxes(boxes, 4)
    assert m.shape == (2, 1, 4, 4)
    assert m[0, 0].sum() == 4 and m[1, 0].sum() == 6
    # (N, K, 4) with NaN padding: union of the real boxes
    multi = np.array([[[0, 0, 1, 1], [3, 3, 4, 4]], [[1, 1, 2, 2], [np.nan] * 4]])
    mm = masks_from_boxes(multi, 4)
    assert mm[0, 0].sum() == 2 and mm[0, 0, 0, 0] and mm[0, 0, 3, 3]
    assert mm[1, 0].sum() == 1 and mm[1, 0, 1, 1]
    # a ragged list, including a sample without boxes (empty mask)
    ragged = [np.array([[0, 0, 1, 1], [3, 3, 4, 4]]), np.zeros((0, 4))]
    mr = masks_from_boxes(ragged, 4)
    np.testing.assert_array_equal(mr[0], mm[0])
    assert not mr[1].any()


def test_masks_from_boxes_clipping_fractions_and_inclusive():
    # a box reaching outside the image is clipped
    m = masks_from_boxes(np.array([[-3, -2, 2, 10]]), (4, 5))[0, 0]
    expected = np.zeros((4, 5), bool)
    expected[:, :2] = True
    np.testing.assert_array_equal(m, expected)
    # pixel-centre rule for fractional boxes: column c is in iff x0 <= c + 0.5 < x1
    mf = masks_from_boxes(np.array([0.6, 0.0, 2.5, 1.0]), (1, 4))
    np.testing.assert_array_equal(mf[0], [False, True, False, False])
    mf2 = masks_from_boxes(np.array([0.5, 0.0, 2.6, 1.0]), (1, 4))
    np.testing.assert_array_equal(mf2[0], [True, True, True, False])
    # inclusive ends cover the last pixel
    mi = masks_from_boxes(np.array([1, 1, 2, 2]), (4, 4), inclusive=True)
    assert mi.sum() == 4 and mi[2, 2]
    # a zero-area box gives an empty mask
    assert not masks_from_boxes(np.array([2, 2, 2, 3]), (4, 4)).any()


def test_masks_from_boxes_errors_and_torch_io():
    with pytest.raises(ValueError, match="x1 < x0"):
        masks_from_boxes(np.array([[3, 0, 1, 2]]), 4)
    with pytest.raises(ValueError, match="boxes"):
        masks_from_boxes(np.zeros((2, 3)), 4)
    with pytest.raises(TypeError, match="size"):
        masks_from_boxes(np.array([0, 0, 1, 1]), "big")
    t = masks_from_boxes(torch.tensor([[0, 0, 2, 2]]), (3, 3))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.bool and t.shape == (1, 1, 3, 3)


def test_boxes_from_masks_roundtrip_and_empty():
    rng = np.random.default_rng(0)
    boxes = []
    for _ in range(20):
        x0, y0 = rng.integers(0, 10, 2)
        boxes.append([x0, y0, x0 + rng.integers(1, 6), y0 + rng.integers(1, 6)])
    boxes = np.array(boxes)
    masks = masks_from_boxes(boxes, (16, 16))
    np.testing.assert_array_equal(boxes_from_masks(masks), boxes)
    empty = np.zeros((1, 1, 5, 5), bool)
    np.testing.assert_array_equal(boxes_from_masks(empty), [[0, 0, 0, 0]])
    single = np.zeros((5, 5), bool)
    single[4, 1] = True
    np.testing.assert_array_equal(boxes_from_masks(single), [1, 4, 2, 5])


def test_box_iou_known_values():
    a = np.array([[0, 0, 2, 2], [0, 0, 4, 4], [0, 0, 0, 0], [0, 0, 0, 0]])
    b = np.array([[1, 1, 3, 3], [0, 0, 4, 4], [0, 0, 2, 2], [0, 0, 0, 0]])
    iou = box_iou(a, b)
    np.testing.assert_allclose(iou[:3], [1 / 7, 1.0, 0.0])
    assert np.isnan(iou[3])  # both empty: undefined
    # several ground-truth boxes: the best match counts
    multi = np.array([[[5, 5, 6, 6], [0, 0, 2, 1]]])
    np.testing.assert_allclose(box_iou(np.array([[0, 0, 2, 2]]), multi), [0.5])


# --------------------------------------------------------------------------- dilation
def _brute_dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    pts = np.argwhere(mask)
    rr, cc = np.indices(mask.shape)
    out = np.zeros_like(mask)
    for r, c in pts:
        out |= (rr - r) ** 2 + (cc - c) ** 2 <= radius**2
    return out


@pytest.mark.parametrize("radius", [0, 1, 1.5, 2, 3.2, 5, 15])
def test_dilate_matches_brute_force_disk(radius):
    rng = np.random.default_rng(int(radius * 10))
    masks = rng.random((4, 17, 23)) > 0.97
    out = dilate(masks, radius)
    for i in range(4):
        np.testing.assert_array_equal(out[i], _brute_dilate(masks[i], radius))


def test_dilate_exact_boundary_and_1d():
    m = np.zeros((1, 11, 11), bool)
    m[0, 5, 5] = True
    # (3, 4) is at distance exactly 5
    assert dilate(m, 5)[0, 5 + 3, 5 + 4]
    assert not dilate(m, 4.99)[0, 5 + 3, 5 + 4]
    line = np.zeros((2, 10), bool)
    line[0, 4] = True
    d = dilate(line, 2, ndim=1)
    np.testing.assert_array_equal(d[0], [0, 0, 1, 1, 1, 1, 1, 0, 0, 0])
    assert not d[1].any()
    assert isinstance(dilate(torch.from_numpy(m), 1), torch.Tensor)


# --------------------------------------------------------------------------- mosaics
def test_build_mosaics_and_quadrant_masks_layout():
    tiles = np.stack([np.full((1, 1, 2, 3), v) for v in range(4)], axis=1)  # (1, 4, 1, 2, 3)
    mosaic = build_mosaics(tiles)
    assert mosaic.shape == (1, 1, 4, 6)
    np.testing.assert_array_equal(mosaic[0, 0, :2, :3], 0)  # top-left
    np.testing.assert_array_equal(mosaic[0, 0, :2, 3:], 1)  # top-right
    np.testing.assert_array_equal(mosaic[0, 0, 2:, :3], 2)  # bottom-left
    np.testing.assert_array_equal(mosaic[0, 0, 2:, 3:], 3)  # bottom-right
    for q in range(4):
        flags = np.zeros((1, 4), int)
        flags[0, q] = 1
        m = quadrant_masks(flags, (4, 6))
        np.testing.assert_array_equal(m[0, 0], mosaic[0, 0] == q)
    with pytest.raises(ValueError, match="0/1"):
        quadrant_masks(np.array([[2, 0, 0, 0]]), 4)


def test_make_mosaics_structure_and_reproducibility():
    rng = np.random.default_rng(0)
    n = 40
    y = np.repeat(np.arange(4), 10)
    x = rng.random((n, 1, 5, 5)).astype(np.float32)
    state = np.random.get_state()  # noqa: NPY002 (checking that the legacy RNG is untouched)
    torch_state = torch.random.get_rng_state()
    mos = make_mosaics(x, y, mosaics_per_class=6, seed=3)
    assert np.array_equal(np.random.get_state()[1], state[1])  # noqa: NPY002
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert mos.x.shape == (24, 1, 10, 10) and len(mos) == 24
    np.testing.assert_array_equal(mos.y, np.repeat(np.arange(4), 6))
    assert (mos.quadrants.sum(1) == 2).all()
    np.testing.assert_array_equal(mos.quadrants, mos.labels == mos.y[:, None])
    np.testing.assert_array_equal(mos.labels, y[mos.indices])
    assert all(len(set(row)) == 4 for row in mos.indices.tolist())  # four different images
    # tiles are the source images in their quadrants
    i = 5
    np.testing.assert_array_equal(mos.x[i, :, :5, 5:], x[mos.indices[i, 1]])
    np.testing.assert_array_equal(mos.x[i, :, 5:, :5], x[mos.indices[i, 2]])
    np.testing.assert_array_equal(mos.masks[:, 0, :5, :5], np.repeat(
        mos.quadrants[:, 0, None, None], 5, 1).repeat(5, 2))
    again = make_mosaics(x, y, mosaics_per_class=6, seed=3)
    np.testing.assert_array_equal(again.indices, mos.indices)
    other = make_mosaics(x, y, mosaics_per_class=6, seed=4)
    assert not np.array_equal(other.indices, mos.indices)
    # an explicit Generator is used (and advanced)
    gen = np.random.default_rng(7)
    m1 = make_mosaics(x, y, 2, seed=gen)
    m2 = make_mosaics(x, y, 2, seed=gen)
    assert m1.seed is None and not np.array_equal(m1.indices, m2.indices)
    # seed=None draws fresh entropy and records it
    fresh = make_mosaics(x, y, 2)
    np.testing.assert_array_equal(make_mosaics(x, y, 2, seed=fresh.seed).indices, fresh.indices)


def test_make_mosaics_positions_are_uniform():
    y = np.repeat(np.arange(2), 3)
    x = np.zeros((6, 1, 2, 2))
    mos = make_mosaics(x, y, mosaics_per_class=2000, seed=0)
    share = mos.quadrants.mean(0)
    np.testing.assert_allclose(share, 0.5, atol=0.03)


def test_make_mosaics_torch_and_skipped_classes():
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    x = torch.rand(6, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="skipped classes"):
        mos = make_mosaics(x, y, 3, seed=1)
    assert isinstance(mos.x, torch.Tensor) and mos.x.shape == (6, 3, 8, 8)
    assert set(mos.y.tolist()) == {0, 1}
    with pytest.raises(ValueError, match="skipped"):
        make_mosaics(x[:2], y[:2], 1, seed=0)
    with pytest.raises(ValueError, match="one label per image"):
        make_mosaics(x, y[:3], 1, seed=0)


# --------------------------------------------------------------------------- CAM protocol
def _two_blobs() -> np.ndarray:
    m = np.zeros((1, 12, 12))
    m[0, 1:3, 1:4] = 1.0  # 6 pixels, the maximum
    m[0, 6:10, 6:10] = 0.5  # 16 pixels, above 20 % of the maximum
    m[0, 0, 11] = 0.1  # below the threshold
    return m


def test_cam_localisation_largest_component_and_iou():
    maps = np.repeat(_two_blobs(), 3, 0)
    gt = np.array([[6, 6, 10, 10], [5, 6, 10, 10], [1, 1, 4, 3]])
    res = cam_localisation(maps, gt)
    np.testing.assert_array_equal(res.boxes, [[6, 6, 10, 10]] * 3)
    np.testing.assert_allclose(res.iou, [1.0, 16 / 20, 0.0])
    np.testing.assert_array_equal(res.correct, [1.0, 1.0, 0.0])
    assert res.accuracy == pytest.approx(2 / 3)
    # a threshold above 50 % of the maximum keeps only the small blob
    res_hi = cam_localisation(maps, gt, threshold=0.6)
    np.testing.assert_array_equal(res_hi.boxes[0], [1, 1, 4, 3])
    np.testing.assert_array_equal(res_hi.correct, [0.0, 0.0, 1.0])
    # an IoU threshold of 0.9 rejects the 0.8 match
    assert cam_localisation(maps, gt, iou_threshold=0.9).correct[1] == 0.0


def test_cam_localisation_modes_connectivity_and_ties():
    m = np.zeros((1, 6, 6))
    m[0, 0, 0] = m[0, 1, 1] = m[0, 2, 2] = 1.0  # a diagonal: one 8-connected component
    m[0, 4, 4:6] = 1.0  # two 4-connected pixels
    gt = np.array([[0, 0, 3, 3]])
    assert cam_localisation(m, gt, connectivity=2).correct[0] == 1.0
    # 4-connectivity: the diagonal splits into three 1-pixel parts, the pair wins
    np.testing.assert_array_equal(boxes_from_maps(m, connectivity=1), [[4, 4, 6, 5]])
    # two components of equal size: the first in raster order wins
    t = np.zeros((1, 5, 5))
    t[0, 3, 0:2] = 1.0
    t[0, 0, 3:5] = 1.0
    np.testing.assert_array_equal(boxes_from_maps(t), [[3, 0, 5, 1]])
    # "top" keeps a fraction of the pixels; "minmax" rescales first
    g = np.arange(100, dtype=float).reshape(1, 10, 10)  # row-major ramp
    np.testing.assert_array_equal(boxes_from_maps(g, mode="top", threshold=0.2), [[0, 8, 10, 10]])
    shifted = g + 1000.0  # "max" keeps everything, "minmax" keeps the top 80 %
    np.testing.assert_array_equal(boxes_from_maps(shifted), [[0, 0, 10, 10]])
    np.testing.assert_array_equal(boxes_from_maps(shifted, mode="minmax", threshold=0.8),
                                  [[0, 8, 10, 10]])


def test_cam_localisation_degenerate_maps():
    maps = np.zeros((4, 6, 6))
    maps[1] = -1.0  # nothing positive: nothing kept in "max" mode
    maps[2, 0, 0] = np.nan
    maps[3, 2:4, 2:4] = 1.0
    gt = np.array([[0, 0, 3, 3], [0, 0, 3, 3], [0, 0, 3, 3], [2, 2, 2, 4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = cam_localisation(maps, gt)
    np.testing.assert_array_equal(res.boxes[:2], [[0, 0, 0, 0]] * 2)
    np.testing.assert_array_equal(res.iou[:2], [0.0, 0.0])
    assert np.isnan(res.iou[2]) and "NaN" in res.nan_reasons[2]
    assert np.isnan(res.correct[3]) and "empty" in res.nan_reasons[3]
    assert res.accuracy == 0.0
    with pytest.raises(ValueError, match="samples"):
        cam_localisation(maps, gt[:2])


def test_cam_localisation_torch_and_channels():
    maps = torch.from_numpy(np.repeat(_two_blobs()[:, None], 3, 1))  # (1, 3, H, W): summed
    res = cam_localisation(maps, torch.tensor([[6, 6, 10, 10]]))
    assert res.correct[0] == 1.0 and isinstance(res.iou, np.ndarray)
