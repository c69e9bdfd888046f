"""Mixed-precision forward passes: ``TorchModel(..., autocast=torch.bfloat16)``.

Run on the CPU here (bfloat16 and float16 autocast work there); on CUDA the same code path
runs under ``torch.autocast("cuda")``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _evaluate_helpers import problem

import evalkit as ek
from evalkit.cache import model_key
from evalkit.models import TorchModel, wrap_model
from evalkit.store import model_fingerprint


@pytest.fixture(scope="module")
def data():
    model, x, y, s = problem(8, seed=2)
    return model, torch.as_tensor(x), torch.as_tensor(y), s


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_outputs_are_float32_and_close_to_full_precision(data, dtype):
    model, x, _y, _s = data
    full = wrap_model(model).predict(x)
    mixed = wrap_model(model, autocast=dtype).predict(x)
    assert mixed.dtype == torch.float32 and mixed.shape == full.shape
    # the forward really ran in reduced precision: not bit-identical, but close
    assert not torch.equal(mixed, full)
    scale = float(full.abs().max())
    tol = (2**-7 if dtype == torch.bfloat16 else 2**-10) * 16 * scale
    assert float((mixed - full).abs().max()) < tol
    assert next(model.parameters()).dtype == torch.float32  # the caller's model untouched


def test_softmax_and_targets_read_float32_outputs(data):
    model, x, y, _s = data
    w = TorchModel(model, autocast=True, softmax=True)
    assert w.autocast == torch.bfloat16
    probs = w.predict(x)
    assert probs.dtype == torch.float32
    np.testing.assert_allclose(probs.sum(1).numpy(), 1.0, rtol=1e-6)
    assert w.score(x, y).dtype == torch.float32


def test_gradients_reach_the_inputs_in_their_dtype(data):
    model, x, y, _s = data
    full = ek.explain(model, x, y, method="Saliency")
    mixed = ek.explain(wrap_model(model, autocast=torch.bfloat16), x, y, method="Saliency")
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed).all()
    corr = np.corrcoef(full.flatten().numpy(), mixed.flatten().numpy())[0, 1]
    assert corr > 0.95


def test_metrics_under_autocast(data):
    model, x, y, _s = data
    a = ek.explain(model, x, y, method="Saliency", reduce_channels="abs_sum")
    metric = ek.metrics.PixelFlipping(features_in_step=128)
    full = metric(model, x, y, a)
    mixed = metric(wrap_model(model, autocast=torch.bfloat16), x, y, a)
    assert np.isfinite(mixed).all()
    np.testing.assert_allclose(mixed, full, atol=0.05)


def test_autocast_is_part_of_fingerprints_and_cache_keys(data):
    model, x, y, _s = data
    plain, mixed = wrap_model(model), wrap_model(model, autocast=torch.bfloat16)
    assert model_fingerprint(plain) != model_fingerprint(mixed)
    assert model_fingerprint(plain) == model_fingerprint(wrap_model(model))  # unchanged keys
    assert model_key(plain) != model_key(mixed)
    a = ek.explain(model, x, y, method="Saliency", reduce_channels="abs_sum")
    metric = ek.metrics.PixelFlipping(features_in_step=128)
    with ek.forward_cache() as cache:
        full = metric(plain, x, y, a)
        hits = cache.stats().hits
        half = metric(mixed, x, y, a)
        assert cache.stats().hits == hits  # no full-precision row served to the mixed run
    assert not np.array_equal(full, half)
    r1 = ek.evaluate({"PF": metric}, {"Saliency": {}}, plain, x, y, progress=False)
    r2 = ek.evaluate({"PF": metric}, {"Saliency": {}}, mixed, x, y, progress=False)
    assert r1.config_hashes != r2.config_hashes


def test_autocast_argument(data):
    model = data[0]
    assert TorchModel(model, autocast=False).autocast is None
    assert TorchModel(model).autocast is None
    with pytest.raises(ValueError, match="autocast"):
        TorchModel(model, autocast=torch.float32)
    with pytest.raises(ValueError, match="autocast"):
        TorchModel(model, autocast="bf16")
