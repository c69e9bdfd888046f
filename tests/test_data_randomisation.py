"""The data randomisation test (Adebayo et al. 2018): the permuted-label training helper on the
shipped shapes model, the DataRandomisation metric, and MPRT's stop_layer (the progressive
layer randomisation of Xplique)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from evalkit.datasets import make_shapes
from evalkit.metrics import MPRT, DataRandomisation, SmoothMPRT, get, list_metrics
from evalkit.metrics.data_randomisation import (
    permuted_labels,
    reinitialised_copy,
    train_on_permuted_labels,
)
from evalkit.testing import get_fixture
from evalkit.zoo import load_shapes_cnn

SALIENCY = {"method": "Saliency", "reduce_channels": "sum"}


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.inference_mode():
        return float((model(x).argmax(1) == y).double().mean())


@pytest.fixture(scope="module")
def shapes():
    """The shipped model, 192 training and 64 held-out images, and a copy trained on permuted
    labels (3 epochs: a few seconds on a CPU)."""
    model = load_shapes_cnn()
    train, test = make_shapes(192, seed=11), make_shapes(64, seed=12)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    before = copy.deepcopy(model.state_dict())
    rng_before = torch.random.get_rng_state()
    permuted = train_on_permuted_labels(model, x, y, epochs=3, seed=0)
    return {"model": model, "x": x, "y": y, "x_test": torch.from_numpy(test.x),
            "y_test": torch.from_numpy(test.y), "permuted": permuted, "before": before,
            "rng_before": rng_before}


def test_permuted_labels_are_a_seeded_permutation():
    y = torch.arange(20) % 4
    p = permuted_labels(y, seed=3)
    assert torch.equal(p.sort().values, y.sort().values)  # class counts kept
    assert torch.equal(p, permuted_labels(y, seed=3)) and not torch.equal(p, y)
    assert not torch.equal(p, permuted_labels(y, seed=4))


def test_training_leaves_the_user_model_and_the_global_rng_alone(shapes):
    model = shapes["model"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, shapes["before"][name]), name
    assert torch.equal(torch.random.get_rng_state(), shapes["rng_before"])
    assert shapes["permuted"] is not model and not shapes["permuted"].training


def test_the_permuted_label_model_is_near_chance_and_its_maps_differ(shapes):
    model, permuted = shapes["model"], shapes["permuted"]
    x, y = shapes["x_test"], shapes["y_test"]
    assert _accuracy(model, x, y) > 0.9
    # 4 balanced classes: chance is 0.25; nothing the copy learned relates to the true labels
    assert _accuracy(permuted, x, y) < 0.5
    metric = DataRandomisation(randomised_model=permuted)
    scores = metric(model, x, y, explain_kwargs=SALIENCY)
    # known answer: an identical model gives identical maps (Spearman 1) ...
    same = DataRandomisation(randomised_model=copy.deepcopy(model))(
        model, x, y, explain_kwargs=SALIENCY)
    np.testing.assert_allclose(same, np.ones(len(y)), atol=1e-12)
    # ... the permuted-label model's maps are far from the trained model's
    assert np.nanmean(scores) < 0.5 and np.nanmean(scores) < np.nanmean(same) - 0.5


def test_training_is_reproducible_per_seed():
    model = load_shapes_cnn()
    data = make_shapes(32, seed=13)
    kw = {"epochs": 1, "batch_size": 16}
    one = train_on_permuted_labels(model, data.x, data.y, seed=1, **kw)
    two = train_on_permuted_labels(model, data.x, data.y, seed=1, **kw)
    other = train_on_permuted_labels(model, data.x, data.y, seed=2, **kw)
    for (name, p1), p2 in zip(one.named_parameters(), two.parameters(), strict=True):
        assert torch.equal(p1, p2), name
    assert any(not torch.equal(p1, p3) for p1, p3 in zip(one.parameters(), other.parameters(),
                                                          strict=True))
    with pytest.raises(ValueError, match="one class index"):
        train_on_permuted_labels(model, data.x, data.y[:5])
    with pytest.raises(TypeError):
        train_on_permuted_labels(lambda t: t, data.x, data.y)


def test_metric_metadata_options_and_errors():
    row = list_metrics().set_index("name").loc["DataRandomisation"]
    assert row["family"] == "randomisation" and not bool(row["higher_is_better"])
    assert "Adebayo" in row["paper"] and bool(row["re_explains"]) and not bool(row["stochastic"])
    assert get("DataRandomization") is DataRandomisation
    assert DataRandomisation(similarity_func="mse").higher_is_better
    f = get_fixture("tabular")
    with pytest.raises(ValueError, match="randomised_model"):
        DataRandomisation()(f.model, f.x, f.y, f.a)
    with pytest.raises(ValueError, match="evaluated model itself"):
        DataRandomisation(randomised_model=f.model)(f.model, f.x, f.y, f.a)
    with pytest.raises(TypeError):
        DataRandomisation(randomised_model=3)
    # a callable is called with the evaluated model; a constant map is NaN with a reason
    metric = DataRandomisation(randomised_model=reinitialised_copy)
    a = f.a.clone()
    a[0] = 1.0
    with pytest.warns(UserWarning, match="undefined"):
        scores = metric(f.model, f.x, f.y, a)
    assert math.isnan(scores[0]) and "constant" in metric.nan_reasons_[0]
    assert np.isfinite(scores[1:]).all()


# ---------------------------------------------------------------------- MPRT stop_layer
def test_mprt_stop_layer_cuts_the_cascade():
    f = get_fixture("image")  # layers conv, bn, fc
    full = MPRT()
    full(f.model, f.x, f.y, f.a)
    top = MPRT(stop_layer="bn")
    scores = top(f.model, f.x, f.y, f.a)
    assert list(top.layer_scores_.index) == ["fc", "bn"]
    # the same copies as the first two steps of the full cascade
    np.testing.assert_allclose(top.layer_scores_.to_numpy(),
                               full.layer_scores_.loc[["fc", "bn"]].to_numpy())
    np.testing.assert_allclose(scores, top.layer_scores_.to_numpy().mean(0))
    bottom = MPRT(stop_layer="bn", layer_order="bottom_up")
    bottom(f.model, f.x, f.y, f.a)
    assert list(bottom.layer_scores_.index) == ["conv", "bn"]
    last = MPRT(stop_layer="bn", skip_layers=True)
    np.testing.assert_allclose(last(f.model, f.x, f.y, f.a), top.layer_scores_.loc["bn"])
    # with the structural similarity of the variant, and inherited by SmoothMPRT
    ssim = MPRT(stop_layer="fc", similarity_func="ssim")
    assert np.isfinite(ssim(f.model, f.x, f.y, f.a)).all()
    smooth = SmoothMPRT(stop_layer="conv", nr_samples=2)
    smooth(f.model, f.x, f.y, f.a)
    assert list(smooth.layer_scores_.index) == ["conv"]


def test_mprt_stop_layer_validation():
    f = get_fixture("image")
    with pytest.raises(ValueError, match=r"\['fc', 'bn', 'conv'\]"):
        MPRT(stop_layer="nope")(f.model, f.x, f.y, f.a)
    with pytest.raises(ValueError, match="unknown `stop_layer`"):
        MPRT(stop_layer="bn", norm_layers="skip")(f.model, f.x, f.y, f.a)
    with pytest.raises(TypeError):
        MPRT(stop_layer=2)
    assert MPRT(stop_layer="bn").get_params()["stop_layer"] == "bn"
    assert "stop_layer='bn'" in repr(MPRT(stop_layer="bn"))
