"""How the perturbation-robustness engine chunks its explain calls: small CPU rows (a table's
few dozen features) are explained in calls of whole model chunks up to
``SMALL_ROWS_CALL_BYTES`` of input under an automatic batch size, a given batch size still
bounds every call, and the scores do not depend on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _explain_helpers import CountingExplainer
from torch import nn

import evalkit as ek
from evalkit._batching import SMALL_ROWS_CALL_BYTES
from evalkit.metrics import AvgSensitivity, MaxSensitivity, RelativeInputStability

N, FEATURES, K = 300, 30, 10  # 3,000 perturbed rows of 120 bytes (the runner chunks 1,092)


def _data() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(N, FEATURES)
    return model, x, model(x).argmax(1)


@pytest.mark.parametrize("cls", [MaxSensitivity, AvgSensitivity, RelativeInputStability])
def test_small_rows_take_few_explain_calls_with_the_same_scores(cls) -> None:
    model, x, y = _data()
    a = ek.explain(model, x, y, method="Saliency")
    counter = CountingExplainer()
    metric = cls(nr_samples=K, seed=0, disable_warnings=True)
    scores = metric(model, x, y, a, explain_fn=counter, explain_kwargs={"method": "Saliency"})
    assert counter.rows == [N * K]  # one call: 3,000 rows of 120 bytes
    assert max(counter.rows) * FEATURES * 4 <= SMALL_ROWS_CALL_BYTES

    # a given batch size bounds every call, and the scores are the same
    bounded = CountingExplainer()
    again = cls(nr_samples=K, seed=0, disable_warnings=True)(
        model, x, y, a, explain_fn=bounded, explain_kwargs={"method": "Saliency"},
        batch_size=1092)
    assert bounded.rows == [1092, 1092, 816]
    np.testing.assert_array_equal(scores, again)


def test_large_rows_keep_the_model_chunk_size() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 100, 3)).eval()
    x = torch.randn(80, 3, 100)  # 1,200 bytes a row: not small
    counter = CountingExplainer()
    y = model(x).argmax(1)
    a = ek.explain(model, x, y, method="Saliency")
    MaxSensitivity(nr_samples=K, seed=0)(model, x, y, a, explain_fn=counter,
                                         explain_kwargs={"method": "Saliency"})
    chunk = ek.wrap_model(model).resolve_batch_size(x)
    assert chunk < 80 * K and max(counter.rows) == chunk


def test_attack_on_small_rows_scores_as_in_model_chunks() -> None:
    from evalkit.metrics import AdversarialTopKIntersection

    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(1500, FEATURES)  # one attack chunk by default, two of 1,092 rows below
    y = model(x).argmax(1)
    a = ek.explain(model, x, y, method="Saliency")
    kw = {"explain_kwargs": {"method": "Saliency"}}
    whole = AdversarialTopKIntersection(nr_steps=3, seed=0, disable_warnings=True)(
        model, x, y, a, **kw)
    chunked = AdversarialTopKIntersection(nr_steps=3, seed=0, disable_warnings=True)(
        model, x, y, a, batch_size=1092, **kw)
    np.testing.assert_array_equal(whole, chunked)


@pytest.mark.parametrize("cls", [MaxSensitivity, RelativeInputStability])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_explain_functions_outputs_are_left_unchanged(cls, dtype) -> None:
    """The draw values are computed in the engine's own float64 copy of the re-explanations,
    never in the tensors an explain function returned (it may keep them)."""
    model, x, y = _data()
    model = model.to(dtype)
    x = x.to(dtype)
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keeping(m, xs, ys, **kw):
        out = ek.explain(m, xs, ys, **kw)
        kept.append((out, out.clone()))
        return out

    a = ek.explain(model, x, y, method="Saliency")
    cls(nr_samples=K, seed=0, disable_warnings=True)(
        model, x, y, a, explain_fn=keeping, explain_kwargs={"method": "Saliency"})
    assert kept
    for out, copy in kept:
        assert torch.equal(out, copy)


def test_only_a_function_that_chunks_itself_gets_calls_over_4096_rows() -> None:
    """evalkit.explain (or a function with ``chunks_internally = True``) gets one call of the
    5,000 perturbed rows; another explain function, which may hold a whole call's
    activations, gets whole model chunks up to 4,096 rows; the scores are the same."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(500, FEATURES)
    y = model(x).argmax(1)
    a = ek.explain(model, x, y, method="Saliency")
    kw = {"explain_kwargs": {"method": "Saliency"}}
    chunking = CountingExplainer(chunks_internally=True)
    plain = CountingExplainer()
    s1 = MaxSensitivity(nr_samples=K, seed=0)(model, x, y, a, explain_fn=chunking, **kw)
    s2 = MaxSensitivity(nr_samples=K, seed=0)(model, x, y, a, explain_fn=plain, **kw)
    assert chunking.rows == [500 * K]
    assert plain.rows == [3276, 500 * K - 3276]  # 3 whole chunks of 1,092 <= 4,096
    np.testing.assert_array_equal(s1, s2)
