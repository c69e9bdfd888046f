"""Quantus 0.6's robustness metric tests (tests/metrics/test_robustness_metrics.py), ported.

Quantus' ``mock_prediction_changed`` fixture replaces the model's ``predict`` by random logits
(so every perturbation may flip the prediction) while explanations still use the real model;
here :func:`prediction_changing` wraps the model the same way: its forward passes without
gradients (evalkit's predictions) return seeded random logits, those with gradients (the
explanations) run the real model. Quantus' discretisation functions are given by name.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qs_port import attributions, case, explain, resolve, run, seeded, within

import evalkit as ek

ABOVE_ONE = ("Quantus asserts np.all(<generator>), which is always true; sensitivities of the "
             "shapes LeNet's Saliency maps lie above 1 on some images")
NO_PARTNER = "C31: a sample whose discretised map no other sample shares is NaN, not 0"
FLIP_DROPS = ("C33: return_nan_when_prediction_changes=True drops the flipped draws; a sample "
              "is NaN only if every draw flipped")
SERIES = "C34: Continuity translates (N, C, T) series too; Quantus refuses them"


class PredictionChanging(torch.nn.Module):
    """``model`` whose predictions are random logits in [-100, 100) (10 classes, drawn from a
    generator seeded with 42) and whose explanations are the real model's."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.generator = torch.Generator().manual_seed(42)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.model(x)
        logits = torch.rand((x.shape[0], 10), generator=self.generator, dtype=x.dtype)
        return logits * 200 - 100


@pytest.fixture
def mock_prediction_changed():
    return PredictionChanging


def _setup(request, model, data, params):
    model, data = resolve(request, model, data)
    return model, data, attributions(model, data, params)


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_1d_3ch_conv_model", "almost_uniform_1d_no_abatch",
         {"init": {"lower_bound": 0.2, "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"lower_bound": 0.2, "nr_samples": 10, "disable_warnings": False,
                   "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0},
         vacuous=ABOVE_ONE, raises=AssertionError),
    case("load_1d_3ch_conv_model", "almost_uniform_1d_no_abatch",
         {"init": {"lower_bound": 0.2, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"lower_bound": 0.2, "nr_samples": 10, "disable_warnings": True,
                   "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0},
         vacuous=ABOVE_ONE, raises=AssertionError),
    case("load_1d_3ch_conv_model", "almost_uniform_1d_no_abatch",
         {"init": {"lower_bound": 0.2, "disable_warnings": True, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"lower_bound": 0.2, "nr_samples": 10, "disable_warnings": True,
                   "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0},
         vacuous=ABOVE_ONE, raises=AssertionError),
    case("load_mnist_model_tf", "load_mnist_images_tf",
         {"init": {"lower_bound": 0.2, "nr_samples": 10, "disable_warnings": True,
                   "display_progressbar": True, "abs": True, "normalise": True},
          "call": {"explain_func": explain,
                   "explain_func_kwargs": {"method": "VanillaGradients"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_mnist_model_tf", "load_mnist_images_tf",
         {"init": {"lower_bound": 0.2, "nr_samples": 10, "disable_warnings": True,
                   "display_progressbar": True, "abs": True, "normalise": True,
                   "return_aggregate": True},
          "call": {"explain_func": explain,
                   "explain_func_kwargs": {"method": "VanillaGradients"}}},
         {"min": 0.0, "max": 1.0}),
])
def test_max_sensitivity(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    _, scores = run(ek.metrics.MaxSensitivity, model, data, a_batch, params)
    if isinstance(expected, float):
        assert all(s == expected for s in scores)
    else:
        assert within(scores, expected["min"], expected["max"])


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_1d_3ch_conv_model", "almost_uniform_1d_no_abatch",
         {"a_batch_generate": False,
          "init": {"perturb_std": 0.1, "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"perturb_std": 0.1, "nr_samples": 10, "disable_warnings": False,
                   "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d_no_abatch",
         {"a_batch_generate": False,
          "init": {"perturb_std": 0.1, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"perturb_std": 0.1, "nr_samples": 10, "disable_warnings": True,
                   "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d_no_abatch",
         {"a_batch_generate": False,
          "init": {"perturb_std": 0.1, "disable_warnings": True, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"perturb_std": 0.1, "nr_samples": 10, "disable_warnings": True,
                   "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"perturb_std": 0.1, "nr_samples": 10, "disable_warnings": True,
                   "display_progressbar": True, "return_aggregate": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
])
def test_local_lipschitz_estimate(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    _, scores = run(ek.metrics.LocalLipschitzEstimate, model, data, a_batch, params)
    assert scores is not None


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_1d_3ch_conv_model", "almost_uniform_1d_no_abatch",
         {"a_batch_generate": False,
          "init": {"nr_steps": 10, "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"exception": ValueError},
         deviation=SERIES),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"nr_steps": 10, "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d_no_abatch",
         {"a_batch_generate": False,
          "init": {"nr_steps": 10, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"exception": ValueError},
         deviation=SERIES),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"nr_steps": 10, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d_no_abatch",
         {"a_batch_generate": False,
          "init": {"nr_steps": 10, "disable_warnings": True, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"exception": ValueError},
         deviation=SERIES),
])
def test_continuity(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    if isinstance(expected, dict) and "exception" in expected:
        with pytest.raises(expected["exception"]):
            run(ek.metrics.Continuity, model, data, a_batch, params)
        return
    _, scores = run(ek.metrics.Continuity, model, data, a_batch, params)
    assert scores is not None


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_1d_3ch_conv_model", "almost_uniform_1d_no_abatch",
         {"a_batch_generate": False,
          "init": {"lower_bound": 0.2, "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"lower_bound": 0.2, "nr_samples": 10, "disable_warnings": False,
                   "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0},
         vacuous=ABOVE_ONE, raises=AssertionError),
    case("load_1d_3ch_conv_model", "almost_uniform_1d_no_abatch",
         {"a_batch_generate": False,
          "init": {"lower_bound": 0.2, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"lower_bound": 0.2, "nr_samples": 10, "disable_warnings": True,
                   "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0},
         vacuous=ABOVE_ONE, raises=AssertionError),
    case("load_1d_3ch_conv_model", "almost_uniform_1d_no_abatch",
         {"a_batch_generate": False,
          "init": {"lower_bound": 0.2, "disable_warnings": True, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"lower_bound": 0.2, "nr_samples": 10, "disable_warnings": True,
                   "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0},
         vacuous=ABOVE_ONE, raises=AssertionError),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"lower_bound": 0.2, "nr_samples": 10, "disable_warnings": True,
                   "display_progressbar": True, "return_aggregate": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0},
         fixture=("sensitivities of the shapes LeNet's Saliency maps lie above 1 on some "
                  "images (see the cases above); with seed 42's draws their mean is 1.02"),
         raises=AssertionError),
])
def test_avg_sensitivity(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    _, scores = run(ek.metrics.AvgSensitivity, model, data, a_batch, params)
    if isinstance(expected, float):
        assert all(s == expected for s in scores)
    else:
        assert within(scores, expected["min"], expected["max"])


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_mnist_model", "load_mnist_images",
         {"init": {"discretise_func": "floating_points", "disable_warnings": True,
                   "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}},
          "a_batch_generate": False},
         {"min": 0.0, "max": 1.0},
         deviation=NO_PARTNER, raises=AssertionError),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"discretise_func": "sign", "disable_warnings": True,
                   "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}},
          "a_batch_generate": False},
         {"min": 0.0, "max": 1.0},
         deviation=NO_PARTNER, raises=AssertionError),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"discretise_func": "top_n_sign", "disable_warnings": True,
                   "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}},
          "a_batch_generate": False},
         {"min": 0.0, "max": 1.0},
         deviation=NO_PARTNER, raises=AssertionError),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"discretise_func": "rank", "disable_warnings": True,
                   "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}},
          "a_batch_generate": False},
         {"min": 0.0, "max": 1.0},
         deviation=NO_PARTNER, raises=AssertionError),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"discretise_func": "rank", "disable_warnings": True,
                   "display_progressbar": False, "return_aggregate": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}},
          "a_batch_generate": False},
         {"min": 0.0, "max": 1.0},
         deviation=NO_PARTNER, raises=AssertionError),
])
def test_consistency(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    if "exception" in expected:
        with pytest.raises(expected["exception"]):
            run(ek.metrics.Consistency, model, data, a_batch, params)
        return
    _, scores = run(ek.metrics.Consistency, model, data, a_batch, params)
    assert within(scores[0], expected["min"], expected["max"])


@pytest.mark.parametrize("metric,model,data,params", [
    case("LocalLipschitzEstimate", "load_mnist_model", "load_mnist_images",
         {"perturb_std": 255, "perturb_mean": 255},
         deviation=FLIP_DROPS, raises=AssertionError),
    case("LocalLipschitzEstimate", "load_1d_3ch_conv_model", "almost_uniform_1d_no_abatch",
         {"perturb_std": 255, "perturb_mean": 255},
         deviation=FLIP_DROPS, raises=AssertionError),
    case("AvgSensitivity", "load_mnist_model", "load_mnist_images",
         {"lower_bound": 1.0, "upper_bound": 255.0},
         deviation=FLIP_DROPS, raises=AssertionError),
    case("AvgSensitivity", "load_1d_3ch_conv_model", "almost_uniform_1d_no_abatch",
         {"lower_bound": 1.0, "upper_bound": 255.0},
         deviation=FLIP_DROPS, raises=AssertionError),
    case("MaxSensitivity", "load_mnist_model", "load_mnist_images",
         {"lower_bound": 1.0, "upper_bound": 255.0},
         deviation=FLIP_DROPS, raises=AssertionError),
    case("MaxSensitivity", "load_1d_3ch_conv_model", "almost_uniform_1d_no_abatch",
         {"lower_bound": 1.0, "upper_bound": 255.0},
         deviation=FLIP_DROPS, raises=AssertionError),
])
def test_return_nan_when_prediction_changes(request, metric, model, data, params,
                                            mock_prediction_changed):
    model, data = resolve(request, model, data)
    metric_instance = seeded(getattr(ek.metrics, metric), **params, disable_warnings=True,
                             nr_samples=10, return_nan_when_prediction_changes=True)
    result = metric_instance(mock_prediction_changed(model), data["x_batch"], data["y_batch"],
                             explain_func=explain, explain_func_kwargs={"method": "Saliency"})
    assert np.isnan(result).all()


@pytest.mark.xfail(reason=f"deviation {FLIP_DROPS}", strict=True, raises=AssertionError)
def test_return_nan_when_prediction_changes_continuity(load_mnist_model, load_mnist_images,
                                                       mock_prediction_changed):
    metric_instance = seeded(ek.metrics.Continuity, disable_warnings=True,
                             return_nan_when_prediction_changes=True, nr_steps=10)
    result = metric_instance(mock_prediction_changed(load_mnist_model),
                             load_mnist_images["x_batch"], load_mnist_images["y_batch"],
                             explain_func=explain, explain_func_kwargs={"method": "Saliency"})
    for r in result:
        assert np.isnan(r).any()
