"""Quantus 0.6's relative stability tests (tests/metrics/test_relative_stability.py), ported.

RelativeInputStability, RelativeOutputStability and RelativeRepresentationStability with
``nr_samples=5``; the labels are the model's predictions, as in Quantus' test.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from qs_port import case, explain, resolve, seeded

import evalkit as ek

RIS_CONSTRUCTOR = functools.partial(seeded, ek.metrics.RelativeInputStability, nr_samples=5,
                                    disable_warnings=True)
ROS_CONSTRUCTOR = functools.partial(seeded, ek.metrics.RelativeOutputStability, nr_samples=5,
                                    disable_warnings=True)
RRS_CONSTRUCTOR = functools.partial(seeded, ek.metrics.RelativeRepresentationStability,
                                    nr_samples=5, disable_warnings=True)


NO_LAYERS = ("C32: RelativeRepresentationStability has no default layers (Quantus takes every "
             "layer); layer_names must be given")


def predict(model: torch.nn.Module, x_batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(x_batch, dtype=torch.float32)).argmax(axis=1).numpy()


def _check(constructor, request, model, data, init_kwargs, call_kwargs):
    model, data = resolve(request, model, data)
    metric = constructor(**init_kwargs)
    x_batch = data["x_batch"]
    y_batch = predict(model, x_batch)
    result = np.asarray(metric(model=model, x_batch=x_batch, y_batch=y_batch,
                               explain_func=explain, **call_kwargs))
    assert (result != np.nan).all()
    if init_kwargs.get("return_aggregate", False):
        assert result.shape == (1,)
    else:
        assert result.shape[0] == x_batch.shape[0]


@pytest.mark.parametrize("model,data,init_kwargs,call_kwargs", [
    case("load_mnist_model", "load_mnist_images",
         {},
         {"explain_func_kwargs": {"method": "GradientShap"}}),
    case("load_mnist_model", "load_mnist_images",
         {"abs": True, "normalise": True, "return_aggregate": True,
          "return_nan_when_prediction_changes": False},
         {}),
    case("load_mnist_model_tf", "load_mnist_images_tf",
         {},
         {"explain_func_kwargs": {"method": "IntegratedGradients"}}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {},
         {}),
    case("load_mnist_model", "almost_uniform_2d_no_abatch",
         {},
         {}),
])
def test_relative_input_stability(request, model, data, init_kwargs, call_kwargs):
    _check(RIS_CONSTRUCTOR, request, model, data, init_kwargs, call_kwargs)


@pytest.mark.parametrize("model,data,init_kwargs,call_kwargs", [
    case("load_mnist_model", "load_mnist_images",
         {},
         {"explain_func_kwargs": {"method": "GradientShap"}}),
    case("load_mnist_model", "load_mnist_images",
         {"abs": True, "normalise": True, "return_aggregate": True,
          "return_nan_when_prediction_changes": False},
         {}),
    case("load_mnist_model_tf", "load_mnist_images_tf",
         {},
         {"explain_func_kwargs": {"method": "IntegratedGradients"}}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {},
         {}),
    case("load_mnist_model", "almost_uniform_2d_no_abatch",
         {},
         {}),
])
def test_relative_output_stability(request, model, data, init_kwargs, call_kwargs):
    _check(ROS_CONSTRUCTOR, request, model, data, init_kwargs, call_kwargs)


@pytest.mark.parametrize("model,data,init_kwargs,call_kwargs", [
    case("load_mnist_model", "load_mnist_images",
         {},
         {"explain_func_kwargs": {"method": "GradientShap"}},
         deviation=NO_LAYERS, raises=ValueError),
    case("load_mnist_model", "load_mnist_images",
         {"abs": True, "normalise": True, "return_aggregate": True,
          "return_nan_when_prediction_changes": False},
         {},
         deviation=NO_LAYERS, raises=ValueError),
    case("load_mnist_model_tf", "load_mnist_images_tf",
         {},
         {"explain_func_kwargs": {"method": "IntegratedGradients"}}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {},
         {},
         deviation=NO_LAYERS, raises=ValueError),
    case("load_mnist_model", "almost_uniform_2d_no_abatch",
         {},
         {},
         deviation=NO_LAYERS, raises=ValueError),
])
def test_relative_representation_stability(request, model, data, init_kwargs, call_kwargs):
    _check(RRS_CONSTRUCTOR, request, model, data, init_kwargs, call_kwargs)


@pytest.mark.parametrize("metric", [RIS_CONSTRUCTOR, ROS_CONSTRUCTOR, RRS_CONSTRUCTOR],
                         ids=["RIS", "ROS", "RRS"])
def test_return_nan(metric, load_mnist_model_tf, load_mnist_images_tf):
    # Quantus runs this on its TensorFlow LeNet only; the fixture skips
    x_batch = load_mnist_images_tf["x_batch"]
    y_batch = predict(load_mnist_model_tf, x_batch)
    result = metric()(model=load_mnist_model_tf, x_batch=x_batch, y_batch=y_batch,
                      explain_func=explain)
    assert np.isnan(result).any()
