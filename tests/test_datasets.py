"""The synthetic data sets (evalkit.datasets: shapes, tabular, series, text) and the shipped
ShapesCNN (evalkit.zoo)."""

from __future__ import annotations

import hashlib
from importlib import resources

import numpy as np
import pytest
import torch
from torch import nn

from evalkit.datasets import (
    CLASS_NAMES,
    SERIES_CLASS_NAMES,
    TEXT_MASK_ID,
    TEXT_PAD_ID,
    TEXT_UNK_ID,
    TEXT_VOCABULARY,
    SeriesDataset,
    ShapesDataset,
    TabularDataset,
    TextDataset,
    make_series,
    make_shapes,
    make_tabular,
    make_text,
    tabular_informative_columns,
)
from evalkit.zoo import ShapesCNN, load_shapes_cnn, shapes_cnn_info

FIELDS = ("x", "y", "masks", "boxes")


@pytest.fixture(scope="module")
def data() -> ShapesDataset:
    return make_shapes(64, seed=5)


@pytest.fixture(scope="module")
def model() -> ShapesCNN:
    return load_shapes_cnn()


def _probs(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        p = torch.softmax(model(torch.from_numpy(x)), dim=1)
    return p[torch.arange(len(y)), torch.from_numpy(y)].numpy()


# --- data set ------------------------------------------------------------------------------


def test_shapes_and_dtypes(data: ShapesDataset) -> None:
    assert len(data) == 64
    assert data.x.shape == (64, 3, 32, 32) and data.x.dtype == np.float32
    assert data.y.shape == (64,) and data.y.dtype == np.int64
    assert data.masks.shape == (64, 1, 32, 32) and data.masks.dtype == np.bool_
    assert data.boxes.shape == (64, 4) and data.boxes.dtype == np.int64
    assert data.class_names == CLASS_NAMES == ("circle", "square", "triangle", "cross")
    assert 0.0 <= data.x.min() and data.x.max() <= 1.0
    assert set(np.unique(data.y)) == set(range(4))  # every class occurs


@pytest.mark.parametrize("image_size, n_distractors", [(16, 0), (16, 3), (40, 5)])
def test_other_sizes(image_size: int, n_distractors: int) -> None:
    d = make_shapes(12, seed=2, image_size=image_size, n_distractors=n_distractors)
    assert d.x.shape == (12, 3, image_size, image_size)
    assert d.masks.shape == (12, 1, image_size, image_size)
    assert d.masks.any(axis=(1, 2, 3)).all()


def test_deterministic_and_prefix_stable() -> None:
    a = make_shapes(40, seed=3)
    b = make_shapes(40, seed=3)
    prefix = make_shapes(7, seed=3)
    other = make_shapes(40, seed=4)
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        np.testing.assert_array_equal(getattr(prefix, f), getattr(a, f)[:7])
    assert not np.array_equal(a.x, other.x)
    assert not np.array_equal(a.masks, other.masks)


def test_no_global_random_state_used() -> None:
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002 (the global state is the point)
    torch_state = torch.get_rng_state().clone()
    make_shapes(5, seed=1)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_masks_and_boxes(data: ShapesDataset) -> None:
    masks = data.masks[:, 0]
    assert masks.any(axis=(1, 2)).all()
    for i, (x0, y0, x1, y1) in enumerate(data.boxes):
        assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
        inside = np.zeros_like(masks[i])
        inside[y0:y1, x0:x1] = True
        assert not (masks[i] & ~inside).any()  # the mask lies in the box ...
        box = masks[i, y0:y1, x0:x1]  # ... and the box is tight: every edge row/col is touched
        assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()


def test_target_is_unoccluded_and_solid(data: ShapesDataset) -> None:
    # The target is drawn last in one solid colour: all its pixels are equal, so no distractor
    # or background pixel hides inside the mask.
    for i in range(len(data)):
        pixels = data.x[i][:, data.masks[i, 0]]
        assert (pixels == pixels[:, :1]).all()


def test_distractors_are_small_and_leave_the_rest_unchanged() -> None:
    # Distractors are drawn after (and independently of) the background and the target, so the
    # same seed with and without them differs only in the distractors' outline pixels.
    bare = make_shapes(32, seed=9, n_distractors=0)
    one = make_shapes(32, seed=9, n_distractors=1)
    for f in ("y", "masks", "boxes"):
        np.testing.assert_array_equal(getattr(bare, f), getattr(one, f))
    changed = (bare.x != one.x).any(axis=1)  # (N, H, W)
    assert not (changed & one.masks[:, 0]).any()
    assert changed.any(axis=(1, 2)).all()
    assert (changed.sum(axis=(1, 2)) < one.masks.sum(axis=(1, 2, 3))).all()


def test_subset_and_indexing(data: ShapesDataset) -> None:
    part = data[2:5]
    assert isinstance(part, ShapesDataset) and len(part) == 3
    np.testing.assert_array_equal(part.x, data.x[2:5])
    picked = data.subset([0, 3])
    np.testing.assert_array_equal(picked.boxes, data.boxes[[0, 3]])
    chosen = data[data.y == 2]
    assert len(chosen) == 16 and (chosen.y == 2).all()
    with pytest.raises(TypeError, match="slice"):
        data[0]
    assert "n=64" in repr(data)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n": 0}, "`n`"),
        ({"n": -3}, "`n`"),
        ({"n": 4, "image_size": 15}, "`image_size`"),
        ({"n": 4, "image_size": 0}, "`image_size`"),
        ({"n": 4, "n_distractors": -1}, "`n_distractors`"),
        ({"n": 4, "seed": -1}, "`seed`"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_shapes(**kwargs)


@pytest.mark.parametrize("kwargs", [{"n": 2.5}, {"n": True}, {"n": 4, "image_size": 32.0}])
def test_non_integer_arguments_raise_type_error(kwargs: dict) -> None:
    with pytest.raises(TypeError, match="integer"):
        make_shapes(**kwargs)


# --- model -----------------------------------------------------------------------------------


def test_architecture() -> None:
    m = ShapesCNN()
    names = dict(m.named_modules())
    for name in ("features.conv1", "features.conv2", "features.conv3", "gap", "fc"):
        assert name in names
    assert m.cam_layer == "features.conv3"
    assert isinstance(m.fc, nn.Linear) and isinstance(m.gap, nn.AdaptiveAvgPool2d)
    assert not any(getattr(mod, "inplace", False) for mod in m.modules())
    for size in (16, 32, 48):
        assert m.eval()(torch.rand(2, 3, size, size)).shape == (2, 4)


def test_head_is_gap_plus_linear(model: ShapesCNN, data: ShapesDataset) -> None:
    # What makes Grad-CAM equal CAM: logits = fc(spatial mean of the last conv block).
    x = torch.from_numpy(data.x[:8])
    with torch.inference_mode():
        acts = model.features(x)
        expected = acts.mean(dim=(2, 3)) @ model.fc.weight.T + model.fc.bias
        torch.testing.assert_close(model(x), expected)


def test_pretrained_model_loads_in_eval_mode(model: ShapesCNN) -> None:
    assert isinstance(model, ShapesCNN)
    assert not any(mod.training for mod in model.modules())
    assert next(model.parameters()).device.type == "cpu"
    fresh = load_shapes_cnn(pretrained=False)
    assert not fresh.training
    assert not torch.equal(fresh.fc.weight, model.fc.weight)


def test_pretrained_accuracy(model: ShapesCNN) -> None:
    d = make_shapes(500, seed=123)
    with torch.inference_mode():
        logits = model(torch.from_numpy(d.x))
    assert not torch.allclose(logits.sum(1), torch.ones(500))  # logits, not probabilities
    acc = (logits.argmax(1).numpy() == d.y).mean()
    assert acc >= 0.9, acc


def test_weights_file_and_metadata() -> None:
    weights = resources.files("evalkit").joinpath("assets", "shapes_cnn.pt")
    blob = weights.read_bytes()
    assert len(blob) < 1_000_000
    info = shapes_cnn_info()
    assert info["class_names"] == list(CLASS_NAMES)
    assert info["n_classes"] == 4 and info["image_size"] == 32
    assert info["test"]["accuracy"] >= 0.9 and info["test"]["seed"] != info["train"]["seed"]
    assert info["weights_sha256"] == hashlib.sha256(blob).hexdigest()


def test_decision_depends_on_the_target(model: ShapesCNN) -> None:
    # Replace the target by the background mean, or an equally shaped, non-overlapping region
    # elsewhere (the mask translated, with wrap-around): only the first should hurt.
    d = make_shapes(100, seed=11)
    rng = np.random.default_rng(0)
    x_target, x_other = d.x.copy(), d.x.copy()
    keep = np.zeros(len(d), dtype=bool)
    for i in range(len(d)):
        mask = d.masks[i, 0]
        fill = d.x[i][:, ~mask].mean(axis=1, keepdims=True)
        x_target[i][:, mask] = fill
        for _ in range(100):
            moved = np.roll(mask, tuple(rng.integers(0, 32, size=2)), axis=(0, 1))
            if not (moved & mask).any():
                x_other[i][:, moved] = fill
                keep[i] = True
                break
    assert keep.mean() > 0.8
    p = _probs(model, d.x, d.y)[keep]
    drop_target = (p - _probs(model, x_target, d.y)[keep]).mean()
    drop_other = (p - _probs(model, x_other, d.y)[keep]).mean()
    assert drop_target > 0.4
    assert drop_target > 10 * max(drop_other, 0.01)


# --- tabular, series and text data sets --------------------------------------------------------


MAKERS = {"tabular": make_tabular, "series": make_series, "text": make_text}
PER_SAMPLE = {"tabular": ("x", "y", "masks"), "series": ("x", "y", "masks", "windows"),
              "text": ("x", "y", "masks", "attention_mask")}


def test_tabular_layout() -> None:
    d = make_tabular(200, seed=3)
    assert isinstance(d, TabularDataset) and len(d) == 200
    assert d.x.shape == (200, 12) and d.x.dtype == np.float32
    assert d.y.dtype == np.int64 and set(np.unique(d.y)) == {0, 1}
    assert d.masks.shape == d.x.shape and d.masks.dtype == np.bool_
    assert (d.masks == d.masks[:1]).all()  # the same informative set for every row
    assert d.feature_groups == ((9, 10, 11),)
    assert d.informative == (*tabular_informative_columns(9, 4), 9, 10, 11)
    assert tuple(np.flatnonzero(d.masks[0])) == d.informative
    np.testing.assert_array_equal(d.x[:, 9:].sum(1), 1.0)  # one-hot
    assert set(np.unique(d.x[:, 9:])) == {0.0, 1.0}
    assert d.feature_names[-3:] == ("cat=a", "cat=b", "cat=c") and len(d.feature_names) == 12
    assert 0.35 < d.y.mean() < 0.65


def test_tabular_label_is_the_documented_function_of_the_informative_columns() -> None:
    d = make_tabular(500, seed=4)
    cont = list(d.informative[:4])
    z = d.x[:, cont].astype(np.float64)
    score = z[:, 0] - z[:, 1] + z[:, 2] - z[:, 3] + 0.8 * z[:, 0] * z[:, 1]
    score += d.x[:, 9:].astype(np.float64) @ np.array([1.0, 0.0, -1.0])
    np.testing.assert_array_equal(d.y, (score > 0).astype(np.int64))
    # (so the label never reads the other columns), and those are independent of it
    noise = [j for j in range(12) if j not in d.informative]
    assert noise and all(abs(np.corrcoef(d.x[:, j], d.y)[0, 1]) < 0.15 for j in noise)


def test_tabular_without_categories_and_other_sizes() -> None:
    d = make_tabular(50, seed=0, n_features=30, n_informative=6, n_categories=0)
    assert d.x.shape == (50, 30) and d.feature_groups == ()
    assert d.informative == tabular_informative_columns(30, 6)
    assert d.masks.sum(1).tolist() == [6] * 50
    one = make_tabular(20, seed=0, n_features=2, n_informative=1, n_categories=0)
    assert one.x.shape == (20, 2)


def test_series_layout_and_windows() -> None:
    d = make_series(90, seed=3)
    assert isinstance(d, SeriesDataset) and len(d) == 90
    assert d.x.shape == (90, 2, 64) and d.x.dtype == np.float32
    assert d.masks.shape == (90, 1, 64) and d.masks.dtype == np.bool_
    assert d.class_names == SERIES_CLASS_NAMES
    np.testing.assert_array_equal(d.y, np.arange(90) % 3)
    assert ((d.windows[:, 1] - d.windows[:, 0]) == 16).all()
    assert (d.windows[:, 0] >= 0).all() and (d.windows[:, 1] <= 64).all()
    for i, (start, stop) in enumerate(d.windows):
        expected = np.zeros(64, dtype=bool)
        expected[start:stop] = True
        np.testing.assert_array_equal(d.masks[i, 0], expected)
    assert len(np.unique(d.windows[:, 0])) > 20  # positions vary


def test_series_class_lives_in_the_window_only() -> None:
    # Without noise and drift the series is zero outside its window, and inside it holds the
    # class pattern: bumps are positive, dips negative, waves change sign.
    d = make_series(30, seed=1, noise=0.0, n_channels=3)
    inside = [d.x[i][:, d.masks[i, 0]] for i in range(30)]
    outside = np.stack([d.x[i][:, ~d.masks[i, 0]] for i in range(30)])
    # the drift remains outside the window; it is the same whatever the class
    assert np.abs(outside).max() <= 0.3 + 1e-6
    for i, w in enumerate(inside):
        mid = w[:, 6:10]
        if d.y[i] == 0:
            assert (mid > 0.3).all()
        elif d.y[i] == 1:
            assert (mid < -0.3).all()
        else:
            assert (w.max(1) > 0.3).all() and (w.min(1) < -0.3).all()


def test_text_layout_and_vocabulary() -> None:
    d = make_text(100, seed=3)
    assert isinstance(d, TextDataset) and len(d) == 100
    assert d.x.shape == (100, 16) and d.x.dtype == np.int64
    assert d.masks.shape == d.attention_mask.shape == (100, 16)
    assert d.masks.dtype == d.attention_mask.dtype == np.bool_
    assert d.vocabulary == TEXT_VOCABULARY
    assert TEXT_VOCABULARY[TEXT_PAD_ID] == "[PAD]" and TEXT_VOCABULARY[TEXT_UNK_ID] == "[UNK]"
    assert TEXT_VOCABULARY[TEXT_MASK_ID] == "[MASK]"
    assert d.x.min() >= 0 and d.x.max() < len(TEXT_VOCABULARY)
    np.testing.assert_array_equal(d.x == TEXT_PAD_ID, ~d.attention_mask)
    assert not np.isin(d.x, [TEXT_UNK_ID, TEXT_MASK_ID]).any()
    lengths = d.attention_mask.sum(1)
    assert lengths.min() >= 8 and lengths.max() <= 16
    # left-aligned: no token after the padding starts
    assert (np.diff(d.attention_mask.astype(int), axis=1) <= 0).all()
    assert d.rationales is d.masks
    assert len(d.decode(0)) == lengths[0] and "[PAD]" not in d.decode(0)


def test_text_label_is_decided_by_the_rationale_words() -> None:
    d = make_text(200, seed=5, max_rationale=4)
    negative = {TEXT_VOCABULARY.index(w) for w in ("bad", "awful", "terrible", "boring", "hate",
                                                   "dull", "poor", "worst")}
    positive = {TEXT_VOCABULARY.index(w) for w in ("good", "great", "excellent", "wonderful",
                                                   "love", "enjoyable", "brilliant", "superb")}
    counts = d.masks.sum(1)
    assert counts.min() >= 1 and counts.max() <= 4
    assert not (d.masks & ~d.attention_mask).any()
    for i in range(len(d)):
        planted = set(d.x[i][d.masks[i]].tolist())
        rest = set(d.x[i][~d.masks[i] & d.attention_mask[i]].tolist())
        assert planted <= (positive if d.y[i] == 1 else negative)
        assert not rest & (positive | negative)  # sentiment words occur only in the rationale


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_new_sets_deterministic_prefix_stable_and_sliceable(kind: str) -> None:
    make = MAKERS[kind]
    a, b, prefix, other = make(30, seed=3), make(30, seed=3), make(7, seed=3), make(30, seed=4)
    for f in PER_SAMPLE[kind]:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
        np.testing.assert_array_equal(getattr(prefix, f), getattr(a, f)[:7])
    assert not np.array_equal(a.x, other.x)
    part = a[2:5]
    assert type(part) is type(a) and len(part) == 3
    for f in PER_SAMPLE[kind]:
        np.testing.assert_array_equal(getattr(part, f), getattr(a, f)[2:5])
    picked = a.subset(a.y == 1)
    assert (picked.y == 1).all() and len(picked) == int((a.y == 1).sum())
    picked.x[...] = 0  # a copy
    assert a.x.any()
    with pytest.raises(TypeError, match="slice"):
        a[0]
    with pytest.raises(TypeError, match="boolean"):
        a.subset(np.array([0.5]))
    assert "n=30" in repr(a)


def test_new_sets_leave_global_random_state_alone() -> None:
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002 (the global state is the point)
    for make in MAKERS.values():
        make(5, seed=1)
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002


@pytest.mark.parametrize(
    "make, kwargs, error, match",
    [
        (make_tabular, {"n": 0}, ValueError, "`n`"),
        (make_tabular, {"n": 4, "seed": -1}, ValueError, "`seed`"),
        (make_tabular, {"n": 4, "n_categories": 1}, ValueError, "`n_categories`"),
        (make_tabular, {"n": 4, "n_features": 5, "n_informative": 3}, ValueError,
         "`n_informative`"),
        (make_tabular, {"n": 4, "n_informative": 0}, ValueError, "`n_informative`"),
        (make_tabular, {"n": 4.0}, TypeError, "integer"),
        (make_series, {"n": 4, "window": 65}, ValueError, "`window`"),
        (make_series, {"n": 4, "length": 7}, ValueError, "`length`"),
        (make_series, {"n": 4, "n_channels": 0}, ValueError, "`n_channels`"),
        (make_series, {"n": 4, "noise": -0.1}, ValueError, "`noise`"),
        (make_series, {"n": 4, "noise": float("nan")}, ValueError, "`noise`"),
        (make_series, {"n": 4, "noise": "0.1"}, TypeError, "number"),
        (make_text, {"n": 4, "length": 1}, ValueError, "`length`"),
        (make_text, {"n": 4, "min_length": 17}, ValueError, "`min_length`"),
        (make_text, {"n": 4, "max_rationale": 0}, ValueError, "`max_rationale`"),
        (make_text, {"n": True}, TypeError, "integer"),
    ],
)
def test_new_sets_validate_arguments(make, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        make(**kwargs)
