"""The Quantus call-surface gaps the ported suite found, each pinned by a small test (all of
them failed before the fix): return shapes, keyword names, options given as Quantus functions,
explain-function calls and Quantus' validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import evalkit as ek


def _model() -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                   torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3)).eval()


def _data(n: int = 4):
    rng = np.random.default_rng(0)
    return rng.random((n, 3, 8, 8)), np.arange(n) % 3, rng.random((n, 1, 8, 8))


def test_return_aggregate_gives_a_one_element_array_as_quantus_list():
    x, y, a = _data()
    per_sample = ek.metrics.Sparseness()(None, x, y, a)
    out = ek.metrics.Sparseness(return_aggregate=True)(model=None, x_batch=x, y_batch=y,
                                                      a_batch=a)
    assert out.shape == (1,) and out[0] == pytest.approx(per_sample.mean())
    assert ek.metrics.Sparseness(aggregate=np.mean)(None, x, y, a).shape == ()


def quantus_named(name):
    def fn(*args, **kwargs):
        raise AssertionError("never called: the name stands for evalkit's own behaviour")
    fn.__name__ = name
    return fn


@pytest.mark.parametrize("perturb_func", ["batch_baseline_replacement_by_indices",
                                          quantus_named("baseline_replacement_by_indices")])
def test_perturb_func_naming_the_baseline_replacement_is_accepted(perturb_func):
    x, y, a = _data()
    ref = ek.metrics.PixelFlipping(features_in_step=8)(_model(), x, y, a)
    out = ek.metrics.PixelFlipping(features_in_step=8, perturb_func=perturb_func)(
        _model(), x, y, a)
    np.testing.assert_array_equal(out, ref)
    assert isinstance(ek.metrics.ROAD(perturb_func="noisy_linear_imputation"), ek.metrics.ROAD)
    assert ek.metrics.Infidelity(perturb_func="baseline_replacement_by_indices").perturb_func \
        == "patches"
    with pytest.raises(TypeError, match="perturb_func"):
        ek.metrics.PixelFlipping(perturb_func="gaussian_noise")
    with pytest.raises(TypeError, match="perturb_func"):  # no perturb_baseline to stand for
        ek.metrics.Sparseness(perturb_func="baseline_replacement_by_indices")


def test_quantus_similarity_names_in_the_faithfulness_correlations():
    x, y, a = _data(6)
    kw = {"nr_runs": 5, "subset_size": 8, "seed": 1}
    ref = ek.metrics.FaithfulnessCorrelation(similarity_func="spearman", **kw)(_model(), x, y, a)
    out = ek.metrics.FaithfulnessCorrelation(similarity_func="correlation_spearman", **kw)(
        _model(), x, y, a)
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(ValueError, match="similarity_func"):
        ek.metrics.MonotonicityCorrelation(similarity_func="correlation_kendall_tau")


def test_explain_accepts_quantus_keywords():
    x, y, _ = _data()
    ref = ek.explain(_model(), x, y, method="Saliency")
    out = ek.explain(model=_model(), inputs=x, targets=y, method="Saliency")
    np.testing.assert_array_equal(out, ref)
    summed = ek.explain(_model(), x, y, method="Saliency", reduce_axes=(1,))
    np.testing.assert_allclose(summed, ref.sum(1, keepdims=True))
    np.testing.assert_array_equal(
        ek.explain(_model(), x, y, method="Saliency", reduce_axes=()), ref)
    with pytest.raises(ValueError, match="reduce_axes"):
        ek.explain(_model(), x, y, method="Saliency", reduce_axes=(2, 3))
    with pytest.raises(TypeError, match="alias"):
        ek.explain(_model(), x, y, inputs=x)


def test_explain_functions_are_called_with_quantus_keywords():
    x, y, _ = _data()
    seen = []

    def keyword_only(*, model, inputs, targets, **kwargs):
        seen.append(("keyword_only", tuple(inputs.shape), kwargs))
        return np.ones(tuple(inputs.shape))

    def var_args(*args, **kwargs):  # as Quantus' own test stubs
        seen.append(("var_args", tuple(kwargs["inputs"].shape), {}))
        return np.ones(tuple(kwargs["inputs"].shape))

    ek.metrics.PixelFlipping(features_in_step=16)(model=_model(), x_batch=x, y_batch=y,
                                                  explain_func=keyword_only,
                                                  explain_func_kwargs={"k": 1})
    ek.metrics.PixelFlipping(features_in_step=16)(model=_model(), x_batch=x, y_batch=y,
                                                  explain_func=var_args)
    assert seen == [("keyword_only", (4, 3, 8, 8), {"k": 1}), ("var_args", (4, 3, 8, 8), {})]


def test_get_auc_score_is_the_mean_unit_spacing_area_of_the_curves():
    x, y, a = _data()
    metric = ek.metrics.Selectivity(patch_size=4)
    metric(_model(), x, y, a)
    assert type(metric.get_auc_score) is np.float64
    assert metric.get_auc_score == pytest.approx(
        np.mean(np.trapezoid(metric.curves_, dx=1.0, axis=1)))
    with pytest.raises(AttributeError, match="curves"):
        _ = ek.metrics.Selectivity().get_auc_score


@pytest.mark.parametrize("spec, path", [
    ('model._modules.get("conv_2")', "conv_2"), ("model._modules['conv_2']", "conv_2"),
    ("model.layer4[-1]", "layer4[-1]"), ("model.features[3].conv", "features[3].conv"),
    ("conv_2", "conv_2"), ("model.x()", "model.x()"),
])
def test_quantus_gc_layer_expressions_are_read_as_paths(spec, path):
    from evalkit._quantus_compat import layer_path

    assert layer_path(spec) == path


def test_gc_layer_expression_in_explain():
    x, y, _ = _data()
    ref = ek.explain(_model(), x, y, method="LayerGradCam", gc_layer="0")
    out = ek.explain(_model(), x, y, method="LayerGradCam", gc_layer='model._modules.get("0")')
    np.testing.assert_array_equal(out, ref)


def test_subset_size_of_every_feature_is_refused_as_in_quantus():
    x, y, a = _data()
    with pytest.raises(ValueError, match="smaller than the number of features"):
        ek.metrics.FaithfulnessCorrelation(subset_size=64, nr_runs=2)(_model(), x, y, a)


def test_missing_inputs_is_both_type_and_value_error():
    for exc in (TypeError, ValueError):
        with pytest.raises(exc, match="missing the inputs"):
            ek.metrics.Focus()(model=_model(), x_batch=None, y_batch=None, custom_batch=None)


def test_efficient_mprt_accepts_quantus_complexity_and_similarity_functions():
    metric = ek.metrics.EfficientMPRT(complexity_func=quantus_named("discrete_entropy"),
                                      similarity_func="correlation_spearman")
    assert metric.similarity_func == "spearman"
    with pytest.raises(TypeError, match="complexity_func"):
        ek.metrics.EfficientMPRT(complexity_func="entropy")
