"""Quantus 0.6's faithfulness metric tests (tests/metrics/test_faithfulness_metrics.py), ported.

The same cases, parameters and assertions, run against evalkit through the Quantus call
surface. Where Quantus returns curves or dicts, the assertion reads the place evalkit keeps
them (docs/migrating-quantus.md, "What to look out for"): PixelFlipping's and
RegionPerturbation's curves are ``metric.curves_``, ROAD's ``{percentage: accuracy}`` is the
mean of ``metric.curves_`` over samples.
"""

from __future__ import annotations

import numpy as np
import pytest
from qs_port import attributions, case, explain, resolve, run, within

import evalkit as ek

KENDALL = "C28: no Kendall tau similarity (Quantus' correlation_kendall_tau)"
NO_NEIGHBOUR = "C9: a sample with no neighbour within the threshold is NaN, not 0"
ABS_GRADIENT_SIGN = ("the correlation of |Gradient| with the drops is negative on some samples "
                     "of the shapes LeNet; Quantus asserts [0, 1]")
#: IROF on (N, C, T) series: Quantus (and evalkit before its series segments) refuse them
IROF_SERIES = ("C37: IROF scores series (contiguous windows of time steps); Quantus refuses "
               "non-image inputs") if "series" in ek.metrics.IROF().metadata()["modalities"] \
    else None
IROF_RISE = ("removing superpixels raises the class probability of some shapes images (a curve "
             "above 1), so their score is negative; Quantus asserts [0, 80]")


def _setup(request, model, data, params):
    model, data = resolve(request, model, data)
    return model, data, attributions(model, data, params)


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_func": "batch_baseline_replacement_by_indices", "nr_runs": 10,
                   "perturb_baseline": "mean", "similarity_func": "correlation_spearman",
                   "normalise": True, "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": -1.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_func": "batch_baseline_replacement_by_indices", "nr_runs": 10,
                   "perturb_baseline": "mean", "similarity_func": "correlation_spearman",
                   "normalise": True, "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": -1.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"perturb_func": "batch_baseline_replacement_by_indices", "nr_runs": 10,
                   "similarity_func": "correlation_spearman", "normalise": True,
                   "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": -1.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_func": "batch_baseline_replacement_by_indices", "nr_runs": 10,
                   "similarity_func": "correlation_spearman", "normalise": True,
                   "disable_warnings": True, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": -1.0, "max": 1.0}),
    case("load_mnist_model_tf", "load_mnist_images_tf",
         {"init": {"perturb_func": "batch_baseline_replacement_by_indices", "nr_runs": 10,
                   "perturb_baseline": "mean", "similarity_func": "correlation_spearman",
                   "normalise": True, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain,
                   "explain_func_kwargs": {"method": "IntegratedGradients"}}},
         {"min": -1.0, "max": 1.0}),
    case("load_mnist_model_tf", "load_mnist_images_tf",
         {"init": {"perturb_func": "batch_baseline_replacement_by_indices", "nr_runs": 10,
                   "similarity_func": "correlation_spearman", "normalise": True,
                   "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "GradientsInput"}}},
         {"min": -1.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_func": "batch_baseline_replacement_by_indices",
                   "perturb_baseline": "mean", "nr_runs": 10,
                   "similarity_func": "correlation_spearman", "normalise": True,
                   "subset_size": 100, "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain}},
         {"min": -1.0, "max": 1.0}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"perturb_func": "batch_baseline_replacement_by_indices",
                   "perturb_baseline": "mean", "nr_runs": 10,
                   "similarity_func": "correlation_spearman", "normalise": True,
                   "subset_size": 10, "disable_warnings": True, "display_progressbar": False},
          "call": {}},
         {"min": -1.0, "max": 1.0}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"perturb_func": "batch_baseline_replacement_by_indices",
                   "perturb_baseline": "mean", "nr_runs": 10,
                   "similarity_func": "correlation_spearman", "normalise": True,
                   "subset_size": 100, "disable_warnings": True, "display_progressbar": False},
          "call": {}},
         {"exception": ValueError}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_func": "batch_baseline_replacement_by_indices",
                   "perturb_baseline": "mean", "nr_runs": 10,
                   "similarity_func": "correlation_spearman", "normalise": True,
                   "subset_size": 784, "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain}},
         {"exception": ValueError}),
])
def test_faithfulness_correlation(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    if "exception" in expected:
        with pytest.raises(expected["exception"]):
            run(ek.metrics.FaithfulnessCorrelation, model, data, a_batch, params)
        return
    _, scores = run(ek.metrics.FaithfulnessCorrelation, model, data, a_batch, params)
    assert within(scores[0], expected["min"], expected["max"])


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_func": "batch_baseline_replacement_by_indices",
                   "features_in_step": 28, "perturb_baseline": "uniform", "normalise": True,
                   "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": -1.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_func": "batch_baseline_replacement_by_indices",
                   "features_in_step": 196, "perturb_baseline": "uniform", "normalise": True,
                   "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": -1.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_func": "batch_baseline_replacement_by_indices",
                   "features_in_step": 28, "perturb_baseline": "uniform", "normalise": True,
                   "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Gradient"}}},
         {"min": -1.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"perturb_func": "batch_baseline_replacement_by_indices",
                   "features_in_step": 28, "perturb_baseline": "uniform", "abs": True,
                   "normalise": True, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Gradient"}}},
         {"min": 0.0, "max": 1.0},
         fixture=ABS_GRADIENT_SIGN),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_func": "batch_baseline_replacement_by_indices",
                   "features_in_step": 28, "perturb_baseline": "uniform", "normalise": True,
                   "disable_warnings": True, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": -1.0, "max": 1.0}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"perturb_func": "batch_baseline_replacement_by_indices",
                   "perturb_baseline": "uniform", "features_in_step": 10, "normalise": True,
                   "disable_warnings": False, "display_progressbar": False},
          "call": {}},
         {"min": -1.0, "max": 1.0}),
])
def test_faithfulness_estimate(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    _, scores = run(ek.metrics.FaithfulnessEstimate, model, data, a_batch, params)
    assert within(scores, expected["min"], expected["max"])


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_baseline": "mean", "segmentation_method": "slic", "normalise": True,
                   "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 80.0},
         fixture=IROF_RISE),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"perturb_baseline": "mean", "segmentation_method": "slic", "normalise": True,
                   "abs": True, "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 80.0},
         fixture=IROF_RISE),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_baseline": "mean", "segmentation_method": "slic", "normalise": True,
                   "disable_warnings": True, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 80.0},
         fixture=IROF_RISE),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"perturb_baseline": "mean", "segmentation_method": "slic", "normalise": True,
                   "disable_warnings": False, "display_progressbar": False},
          "call": {}},
         {"exception": ValueError},
         deviation=IROF_SERIES),
])
def test_iterative_removal_of_features(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    if "exception" in expected:
        with pytest.raises(expected["exception"]):
            run(ek.metrics.IROF, model, data, a_batch, params)
        return
    _, scores = run(ek.metrics.IROF, model, data, a_batch, params)
    assert within(scores, expected["min"], expected["max"])


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_func": "batch_baseline_replacement_by_indices",
                   "features_in_step": 28, "perturb_baseline": "black", "normalise": True,
                   "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"allowed_dtypes": [True, False]}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_func": "batch_baseline_replacement_by_indices",
                   "features_in_step": 28, "perturb_baseline": "white", "normalise": True,
                   "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"allowed_dtypes": [True, False]}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"perturb_func": "batch_baseline_replacement_by_indices",
                   "features_in_step": 28, "perturb_baseline": "mean", "normalise": True,
                   "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Gradient"}}},
         {"allowed_dtypes": [True, False]}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_func": "batch_baseline_replacement_by_indices",
                   "features_in_step": 28, "perturb_baseline": "black", "normalise": True,
                   "disable_warnings": True, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"allowed_dtypes": [True, False]}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"perturb_func": "batch_baseline_replacement_by_indices",
                   "perturb_baseline": "black", "features_in_step": 10, "normalise": True,
                   "disable_warnings": False, "display_progressbar": False},
          "call": {}},
         {"allowed_dtypes": [True, False]}),
])
def test_monotonicity_arya(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    _, scores = run(ek.metrics.Monotonicity, model, data, a_batch, params)
    assert all(s in expected["allowed_dtypes"] for s in scores)


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"eps": 1e-05, "nr_samples": 10, "features_in_step": 28, "normalise": True,
                   "abs": True, "perturb_baseline": "uniform",
                   "similarity_func": "correlation_kendall_tau", "disable_warnings": False,
                   "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         1.0,
         deviation=KENDALL),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"eps": 1e-05, "nr_samples": 10, "features_in_step": 28, "normalise": True,
                   "abs": True, "perturb_baseline": "uniform",
                   "similarity_func": "correlation_kendall_tau", "disable_warnings": True,
                   "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         1.0,
         deviation=KENDALL),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"eps": 1e-05, "nr_samples": 10, "features_in_step": 10, "normalise": True,
                   "abs": True, "perturb_baseline": "uniform",
                   "similarity_func": "correlation_kendall_tau", "disable_warnings": True,
                   "display_progressbar": False},
          "call": {}},
         1.0,
         deviation=KENDALL),
])
def test_monotonicity_correlation(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    _, scores = run(ek.metrics.MonotonicityCorrelation, model, data, a_batch, params)
    assert scores is not None


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": True,
          "init": {"perturb_baseline": "mean", "features_in_step": 28, "normalise": True,
                   "abs": True, "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": True,
          "init": {"perturb_baseline": "mean", "features_in_step": 14, "normalise": False,
                   "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": True,
          "init": {"perturb_baseline": "uniform", "features_in_step": 56, "normalise": False,
                   "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"perturb_baseline": "uniform", "features_in_step": 112, "normalise": False,
                   "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_baseline": "mean", "features_in_step": 28, "normalise": True,
                   "abs": True, "disable_warnings": True, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"features_in_step": 10, "normalise": False,
                   "perturb_func": "batch_baseline_replacement_by_indices",
                   "perturb_baseline": "mean", "disable_warnings": True},
          "call": {}},
         {"min": 0.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_baseline": "uniform", "features_in_step": 56, "normalise": True,
                   "abs": True, "disable_warnings": True, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 14.0}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"features_in_step": 10, "normalise": False,
                   "perturb_func": "batch_baseline_replacement_by_indices",
                   "perturb_baseline": "mean", "disable_warnings": True},
          "call": {}},
         {"min": 0.0, "max": 10.0}),
])
def test_pixel_flipping(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    metric, _ = run(ek.metrics.PixelFlipping, model, data, a_batch, params)
    # Quantus returns the per-sample curves; evalkit returns their AUC and keeps them here
    assert within(metric.curves_, expected["min"], expected["max"])


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": True,
          "init": {"perturb_baseline": "mean", "patch_size": 7, "normalise": True,
                   "order": "morf", "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": -1.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"perturb_baseline": "mean", "patch_size": 7, "normalise": True,
                   "order": "random", "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": -1.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"perturb_baseline": "mean", "patch_size": 7, "normalise": True,
                   "order": "morf", "disable_warnings": True,
                   "perturb_func": "batch_baseline_replacement_by_indices"},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": -1.0, "max": 1.0}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"disable_warnings": True, "display_progressbar": False}, "call": {}},
         {"min": -1.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_baseline": "mean", "patch_size": 7, "normalise": True,
                   "order": "morf", "disable_warnings": True, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": -1.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_baseline": "mean", "patch_size": 7, "normalise": True,
                   "order": "morf", "disable_warnings": True, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": -1.0, "max": 1.0}),
])
def test_region_perturbation(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    metric, _ = run(ek.metrics.RegionPerturbation, model, data, a_batch, params)
    assert within(metric.curves_, expected["min"], expected["max"])


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_baseline": "mean", "patch_size": 7, "normalise": True, "abs": True,
                   "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"type": np.float64}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"perturb_baseline": "uniform", "patch_size": 4, "normalise": True,
                   "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"type": np.float64}),
    case("load_mnist_model_tf", "load_mnist_images_tf",
         {"init": {"perturb_baseline": "uniform", "patch_size": 4, "normalise": True,
                   "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain,
                   "explain_func_kwargs": {"method": "VanillaGradients"}}},
         {"type": np.float64}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_baseline": "mean", "patch_size": 7, "normalise": True, "abs": True,
                   "disable_warnings": True, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"type": np.float64}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"perturb_baseline": "mean", "patch_size": 7, "normalise": True, "abs": True,
                   "disable_warnings": False, "display_progressbar": False},
          "call": {}},
         {"type": np.float64}),
    case("load_mnist_model", "load_mnist_images",
         {"return_auc": True,
          "init": {"perturb_baseline": "mean", "patch_size": 7, "normalise": True, "abs": True,
                   "disable_warnings": False, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"type": np.float64}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"perturb_baseline": "mean", "patch_size": 7, "normalise": True, "abs": True,
                   "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"type": np.float64}),
])
def test_selectivity(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    metric, _ = run(ek.metrics.Selectivity, model, data, a_batch, params)
    assert type(metric.get_auc_score) is expected["type"]


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_baseline": "black", "n_max_percentage": 0.9, "features_in_step": 28,
                   "similarity_func": "correlation_spearman", "normalise": True, "abs": True,
                   "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": -1.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_baseline": "black", "n_max_percentage": 0.8, "features_in_step": 28,
                   "similarity_func": "correlation_spearman", "normalise": True,
                   "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": -1.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"perturb_baseline": "black", "n_max_percentage": 0.7, "features_in_step": 28,
                   "similarity_func": "correlation_spearman", "normalise": True,
                   "disable_warnings": True, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Gradient"}}},
         {"min": -1.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_baseline": "black", "n_max_percentage": 0.9, "features_in_step": 28,
                   "similarity_func": "correlation_spearman", "normalise": True, "abs": True,
                   "disable_warnings": True, "display_progressbar": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": -1.0, "max": 1.0}),
    case("load_1d_3ch_conv_model", "almost_uniform_1d",
         {"a_batch_generate": False,
          "init": {"perturb_baseline": "black", "n_max_percentage": 0.9, "features_in_step": 10,
                   "similarity_func": "correlation_spearman", "normalise": True, "abs": True,
                   "disable_warnings": False, "display_progressbar": False},
          "call": {}},
         {"min": -1.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_baseline": "black", "n_max_percentage": 0.9, "features_in_step": 28,
                   "similarity_func": "correlation_spearman", "normalise": True, "abs": True,
                   "disable_warnings": False, "display_progressbar": True,
                   "return_aggregate": True},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": -1.0, "max": 1.0}),
])
def test_sensitivity_n(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    _, scores = run(ek.metrics.SensitivityN, model, data, a_batch, params)
    assert all((s >= expected["min"]) & (s <= expected["max"]) for s in scores)


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_func": "batch_baseline_replacement_by_indices",
                   "return_aggregate": False, "normalise": True, "abs": True,
                   "disable_warnings": False, "display_progressbar": False,
                   "n_perturb_samples": 10},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"perturb_func": "batch_baseline_replacement_by_indices",
                   "return_aggregate": False, "normalise": True, "abs": True,
                   "disable_warnings": False, "display_progressbar": False,
                   "n_perturb_samples": 5},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {}),
])
def test_infidelity(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    _, scores = run(ek.metrics.Infidelity, model, data, a_batch, params)
    assert scores is not None


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_mnist_model", "load_mnist_images",
         {"init": {"perturb_func": "noisy_linear_imputation", "normalise": True, "abs": True,
                   "disable_warnings": False, "display_progressbar": False,
                   "percentages": list(range(1, 100, 2))},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"perturb_func": "noisy_linear_imputation", "normalise": True, "abs": True,
                   "disable_warnings": False, "display_progressbar": False,
                   "percentages": list(range(1, 100, 2))},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0}),
])
def test_ROAD(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    metric, _ = run(ek.metrics.ROAD, model, data, a_batch, params)
    # Quantus returns {percentage: mean MoRF accuracy}; evalkit keeps the MoRF curves here
    by_percentage = dict(zip(metric.percentages, metric.morf_curves_.mean(axis=0), strict=True))
    assert within(list(by_percentage.values()), expected["min"], expected["max"])


@pytest.mark.parametrize("model,data,params,expected", [
    case("load_mnist_model", "load_mnist_images",
         {"init": {"threshold": 0.2, "normalise": False, "abs": False,
                   "disable_warnings": False, "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0},
         deviation=NO_NEIGHBOUR),
    case("load_mnist_model", "load_mnist_images",
         {"a_batch_generate": False,
          "init": {"threshold": 0.6, "normalise": True, "abs": True, "disable_warnings": False,
                   "display_progressbar": False},
          "call": {"explain_func": explain, "explain_func_kwargs": {"method": "Saliency"}}},
         {"min": 0.0, "max": 1.0},
         deviation=NO_NEIGHBOUR),
])
def test_sufficiency(request, model, data, params, expected):
    model, data, a_batch = _setup(request, model, data, params)
    _, scores = run(ek.metrics.Sufficiency, model, data, a_batch, params)
    assert within(scores[0], expected["min"], expected["max"])
