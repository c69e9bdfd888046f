"""Quantus 0.6's axiomatic metric tests (tests/metrics/test_axiomatic_metrics.py), ported.

InputInvariance returns 1.0/0.0 where Quantus returns booleans; ``1.0 in [True, False]`` holds
in Python, so the assertion reads the same.
"""

from __future__ import annotations

import numpy as np
import pytest
from qs_port import attributions, case, explain, resolve, run

import evalkit as ek

PER_CHANNEL = ("C36: explain() keeps one attribution per channel (Quantus' explain sums over "
               "channels), so the (10, 1, 100) a_batch and the re-explanations differ in shape")


def _setup(request, model, data, params):
    model, data = resolve(request, model, data)
    return model, data, attributions(model, data, params)


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"normalise": True, "disable_warnings": False, "display_progressbar": False}},
         1.0),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": True,
          "init": {"normalise": True, "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         1.0),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"abs": True, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         1.0),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": True,
          "init": {"abs": True, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         1.0),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"abs": False, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         1.0),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"abs": False, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         1.0),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"normalise": False, "disable_warnings": True, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         1.0),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": True,
          "init": {"normalise": False, "disable_warnings": True, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         1.0),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"normalise": False, "disable_warnings": True, "display_progressbar": True,
                   "return_aggregate": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         1.0),
])
def test_completeness(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    _, scores = run(ek.metrics.Completeness, model, data, a_batch, params)
    assert scores is not None


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"normalise": True, "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         1.0),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"normalise": True, "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         1.0),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"eps": 0.01, "normalise": True, "disable_warnings": True,
                   "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         1.0),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": True,
          "init": {"eps": 0.01, "normalise": True, "disable_warnings": True,
                   "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         1.0),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"normalise": False, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         1.0),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": True,
          "init": {"normalise": False, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         1.0),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"eps": 1e-10, "normalise": True, "disable_warnings": True,
                   "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         1.0),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": True,
          "init": {"eps": 1e-10, "normalise": True, "disable_warnings": True,
                   "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         1.0),
])
def test_non_sensitivity(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    _, scores = run(ek.metrics.NonSensitivity, model, data, a_batch, params)
    assert scores is not None


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_mnist_model_tf", "load_mnist_images_tf",
         {"a_batch_generate": True,
          "init": {"abs": False, "normalise": False, "input_shift": 0.2,
                   "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain,
                   "explain_func_kwargs": {"method": "VanillaGradients"}}},
         {"dtypes": [True, False]}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"abs": False, "normalise": False, "input_shift": -1,
                   "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Gradient"}}},
         {"dtypes": [True, False]},
         deviation=PER_CHANNEL, raises=ValueError),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": True,
          "init": {"abs": False, "normalise": False, "input_shift": -0.9,
                   "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Gradient"}}},
         {"dtypes": [True, False]}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": True,
          "init": {"abs": False, "normalise": False, "input_shift": -1,
                   "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "InputXGradient"}}},
         {"dtypes": [True, False]}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": True,
          "init": {"abs": False, "normalise": False, "input_shift": -1,
                   "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"dtypes": [True, False]}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": True,
          "init": {"abs": True, "normalise": True, "input_shift": -1, "disable_warnings": True,
                   "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"dtypes": [True, False]}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": True,
          "init": {"abs": False, "normalise": False, "input_shift": -1,
                   "disable_warnings": True, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "InputXGradient"}}},
         {"dtypes": [True, False]}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"abs": False, "normalise": False, "input_shift": -1,
                   "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "InputXGradient"}}},
         {"dtypes": [True, False]},
         deviation=PER_CHANNEL, raises=ValueError),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"abs": False, "normalise": False, "input_shift": -1,
                   "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"dtypes": [True, False]},
         deviation=PER_CHANNEL, raises=ValueError),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"abs": True, "normalise": True, "input_shift": -1, "disable_warnings": True,
                   "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"dtypes": [True, False]},
         deviation=PER_CHANNEL, raises=ValueError),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"abs": False, "normalise": False, "input_shift": -1,
                   "disable_warnings": True, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "InputXGradient"}}},
         {"dtypes": [True, False]},
         deviation=PER_CHANNEL, raises=ValueError),
])
def test_input_invariance(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    _, scores = run(ek.metrics.InputInvariance, model, data, a_batch, params)
    assert np.all([s in expected["dtypes"] for s in scores])
