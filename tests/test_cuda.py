"""The GPU path: the same calls on CUDA give the CPU's numbers (skipped without a GPU).

Each family's representative metric, explain() with a captum method and a native CAM, and a
whole evaluate() run on the shipped data and model, once with the model on the CPU and once on
CUDA. Keyed random draws come from different generators on the two devices (Philox on CUDA),
so stochastic parts are compared as distributions, deterministic parts value by value.
``EVALKIT_TEST_DEVICE`` names another device to compare with the CPU (``cpu`` checks the tests
themselves on a machine without a GPU).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import evalkit as ek
from evalkit.datasets import make_shapes
from evalkit.zoo import load_shapes_cnn

DEVICE = os.environ.get("EVALKIT_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                reason="no CUDA device")


@pytest.fixture(scope="module")
def shapes():
    d = make_shapes(16, seed=7)
    return tuple(torch.as_tensor(v) for v in (d.x, d.y, d.masks))


def _both(fn):
    """fn(model) on the CPU and on CUDA, as NumPy."""
    cpu = load_shapes_cnn()
    gpu = load_shapes_cnn().to(DEVICE)
    out = []
    for model in (cpu, gpu):
        r = fn(model)
        out.append(r.detach().cpu().numpy() if torch.is_tensor(r) else np.asarray(r))
    return out


@pytest.mark.parametrize("method,kw", [("Saliency", {}), ("IntegratedGradients", {"n_steps": 8}),
                                       ("GradCAM", {"layer": "features.conv3"}),
                                       ("ScoreCAM", {"layer": "features.conv3"})])
def test_explain_agrees(shapes, method, kw):
    x, y, _ = shapes
    cpu, gpu = _both(lambda m: ek.explain(m, x.to(next(m.parameters()).device), y, method=method,
                                          **kw))
    scale = max(float(np.abs(cpu).max()), 1e-12)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4 * scale, rtol=1e-3)


@pytest.mark.parametrize("metric", [
    lambda: ek.metrics.PixelFlipping(features_in_step=64),
    lambda: ek.metrics.RegionPerturbation(patch_size=4, regions_evaluation=8),
    lambda: ek.metrics.FaithfulnessEstimate(features_in_step=64),
    lambda: ek.metrics.RelevanceRankAccuracy(),
    lambda: ek.metrics.AUC(),
    lambda: ek.metrics.Sparseness(),
    lambda: ek.metrics.Completeness(),
    lambda: ek.metrics.MPRT(layer_order="top_down"),
    lambda: ek.metrics.ROAD(percentages=[20, 50, 80], noise=0.0),
], ids=["PixelFlipping", "RegionPerturbation", "FaithfulnessEstimate", "RelevanceRank", "AUC",
        "Sparseness", "Completeness", "MPRT", "ROAD-noise-free"])
def test_deterministic_metrics_agree(shapes, metric):
    x, y, s = shapes
    a = ek.explain(load_shapes_cnn(), x, y, method="Saliency", reduce_channels="abs_sum")

    def run(model):
        dev = next(model.parameters()).device
        return metric()(model, x.to(dev), y.to(dev), a.to(dev), s=s.to(dev),
                        explain_kwargs={"method": "Saliency", "reduce_channels": "abs_sum"})

    cpu, gpu = _both(run)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4, rtol=1e-3, equal_nan=True)


def test_stochastic_metric_distributions_agree(shapes):
    x, y, _ = shapes
    metric = ek.metrics.MaxSensitivity(nr_samples=10, seed=0)

    def run(model):
        dev = next(model.parameters()).device
        return metric(model, x.to(dev), y.to(dev), explain_fn=ek.explain,
                      explain_kwargs={"method": "Saliency"})

    cpu, gpu = _both(run)
    assert np.isfinite(gpu).all()
    assert abs(float(np.median(gpu)) - float(np.median(cpu))) < 0.25 * float(np.median(cpu))


def test_evaluate_on_cuda_keeps_everything_on_the_device(shapes):
    x, y, s = shapes
    metrics = {"PF": ek.metrics.PixelFlipping(features_in_step=64),
               "RRA": ek.metrics.RelevanceRankAccuracy(),
               "Sparseness": ek.metrics.Sparseness()}
    methods = {"Saliency": {"reduce_channels": "abs_sum"}, "GradCAM": {"layer": "features.conv3"}}
    cpu = ek.evaluate(metrics, methods, load_shapes_cnn(), x, y, s, progress=False)
    gpu = ek.evaluate(metrics, methods, load_shapes_cnn().to(DEVICE), x.to(DEVICE),
                      y.to(DEVICE), s.to(DEVICE), progress=False)
    assert not gpu.errors
    for cell in cpu.scores:
        np.testing.assert_allclose(gpu.scores[cell], cpu.scores[cell], atol=1e-4, rtol=1e-3)
