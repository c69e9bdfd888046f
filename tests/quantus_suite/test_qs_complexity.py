"""Quantus 0.6's complexity metric tests (tests/metrics/test_complexity_metrics.py), ported.

Model-free cases pass ``model=None`` with attributions, as in Quantus; the tabular cases run the
Titanic-sized MLP on ``titanic_like`` rows.
"""

from __future__ import annotations

import numpy as np
import pytest
from qs_port import case, explain, resolve, seeded

import evalkit as ek


def explain_func_stub(*args, **kwargs):
    """Quantus' stub explanation for its TensorFlow tabular model: uniform noise in [0, 0.5)."""
    input_shape = kwargs.get("inputs").shape
    return np.random.default_rng(0).uniform(low=0, high=0.5, size=input_shape)


def _scores(metric_cls, request, model, data, params):
    model, data = resolve(request, model, data)
    return seeded(metric_cls, **params.get("init", {}))(
        model=model, x_batch=data["x_batch"], y_batch=data["y_batch"],
        a_batch=data.get("a_batch"), **params.get("call", {}))


@pytest.mark.parametrize("model,data,params,expected", [
    case(None, "almost_uniform_1d",
         {"init": {"normalise": False, "disable_warnings": False, "display_progressbar": False}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_2d",
         {"init": {"normalise": False, "disable_warnings": False, "display_progressbar": False}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_1d",
         {"init": {"normalise": True, "disable_warnings": True, "display_progressbar": False}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_2d",
         {"init": {"normalise": True, "disable_warnings": True, "display_progressbar": False}},
         {"max": 1.0, "min": 0.0}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d_no_abatch",
         {"init": {"normalise": False, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain}},
         {"max": 1.0, "min": 0.0}),
    case("load_mnist_model", "almost_uniform_2d_no_abatch",
         {"init": {"normalise": False, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_1d",
         {"init": {"normalise": False, "abs": False, "disable_warnings": True,
                   "display_progressbar": False}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_2d",
         {"init": {"normalise": False, "abs": False, "disable_warnings": True,
                   "display_progressbar": False}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_1d",
         {"init": {"normalise": False, "disable_warnings": True, "display_progressbar": True}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_2d",
         {"init": {"normalise": False, "disable_warnings": True, "display_progressbar": True}},
         {"max": 1.0, "min": 0.0}),
    case("titanic_model_torch", "titanic_dataset",
         {"init": {"normalise": True, "abs": True, "disable_warnings": True,
                   "display_progressbar": False},
          "call": {"explain_func": explain,
                   "explain_func_kwargs": {"method": "IntegratedGradients", "reduce_axes": ()}}},
         {"max": 1.0, "min": 0.0}),
    case("titanic_model_tf", "titanic_dataset",
         {"init": {"normalise": True, "abs": True, "disable_warnings": True,
                   "display_progressbar": False},
          "call": {"explain_func": explain_func_stub}},
         {"max": 1.0, "min": 0.0}),
])
def test_sparseness(request, model, data, params, expected):
    scores = _scores(ek.metrics.Sparseness, request, model, data, params)
    if isinstance(expected, float):
        assert all(s == expected for s in scores)
    else:
        assert all((s > expected["min"]) & (s < expected["max"]) for s in scores)


@pytest.mark.parametrize("model,data,params,expected", [
    case(None, "almost_uniform_1d",
         {"init": {"normalise": False, "disable_warnings": False, "display_progressbar": False}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_2d",
         {"init": {"normalise": False, "disable_warnings": False, "display_progressbar": False}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_1d",
         {"init": {"normalise": True, "disable_warnings": True, "display_progressbar": False}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_2d",
         {"init": {"normalise": True, "disable_warnings": True, "display_progressbar": False}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_1d",
         {"init": {"normalise": False, "abs": False, "disable_warnings": True,
                   "display_progressbar": False}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_2d",
         {"init": {"normalise": False, "abs": False, "disable_warnings": True,
                   "display_progressbar": False}},
         {"max": 1.0, "min": 0.0}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d_no_abatch",
         {"init": {"normalise": False, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain}},
         {"max": 1.0, "min": 0.0}),
    case("load_mnist_model", "almost_uniform_2d_no_abatch",
         {"init": {"normalise": False, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_1d",
         {"init": {"normalise": False, "disable_warnings": True, "display_progressbar": True}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_2d",
         {"init": {"normalise": False, "disable_warnings": True, "display_progressbar": True}},
         {"max": 1.0, "min": 0.0}),
    case("titanic_model_torch", "titanic_dataset",
         {"init": {"normalise": True, "abs": True, "disable_warnings": True,
                   "display_progressbar": False},
          "call": {"explain_func": explain,
                   "explain_func_kwargs": {"method": "IntegratedGradients", "reduce_axes": ()}}},
         {"max": 1.0, "min": 0.0}),
    case("titanic_model_tf", "titanic_dataset",
         {"init": {"normalise": True, "abs": True, "disable_warnings": True,
                   "display_progressbar": False},
          "call": {"explain_func": explain_func_stub}},
         {"max": 1.0, "min": 0.0}),
])
def test_complexity(request, model, data, params, expected):
    scores = _scores(ek.metrics.Complexity, request, model, data, params)
    assert scores is not None


@pytest.mark.parametrize("model,data,params,expected", [
    case(None, "almost_uniform_1d",
         {"init": {"normalise": True, "disable_warnings": False, "display_progressbar": False}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_2d",
         {"init": {"normalise": True, "disable_warnings": False, "display_progressbar": False}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_1d",
         {"init": {"normalise": False, "disable_warnings": True, "display_progressbar": False}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_2d",
         {"init": {"normalise": False, "disable_warnings": True, "display_progressbar": False}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_1d",
         {"init": {"normalise": False, "abs": False, "disable_warnings": True,
                   "display_progressbar": False}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_2d",
         {"init": {"normalise": False, "abs": False, "disable_warnings": True,
                   "display_progressbar": False}},
         {"max": 1.0, "min": 0.0}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d_no_abatch",
         {"init": {"normalise": False, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain}},
         {"max": 1.0, "min": 0.0}),
    case("load_mnist_model", "almost_uniform_2d_no_abatch",
         {"init": {"normalise": False, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_1d",
         {"init": {"normalise": False, "disable_warnings": True, "display_progressbar": True}},
         {"max": 1.0, "min": 0.0}),
    case(None, "almost_uniform_2d",
         {"init": {"normalise": False, "disable_warnings": True, "display_progressbar": True}},
         {"max": 1.0, "min": 0.0}),
    case("titanic_model_torch", "titanic_dataset",
         {"init": {"normalise": True, "abs": True, "disable_warnings": True,
                   "display_progressbar": False},
          "call": {"explain_func": explain,
                   "explain_func_kwargs": {"method": "IntegratedGradients", "reduce_axes": ()}}},
         {"max": 1.0, "min": 0.0}),
    case("titanic_model_tf", "titanic_dataset",
         {"init": {"normalise": True, "abs": True, "disable_warnings": True,
                   "display_progressbar": False},
          "call": {"explain_func": explain_func_stub}},
         {"max": 1.0, "min": 0.0}),
])
def test_effective_complexity(request, model, data, params, expected):
    scores = _scores(ek.metrics.EffectiveComplexity, request, model, data, params)
    assert scores is not None
