"""The randomisation metrics explain each (randomised) model's rows of a table in whole
model chunks per call, as the robustness engine does (``explain_call_rows``): a few calls
instead of one per model chunk, with the same scores; a given batch size still bounds them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _explain_helpers import CountingExplainer
from torch import nn

import evalkit as ek
from evalkit.metrics import MPRT, EfficientMPRT, RandomLogit, SmoothMPRT

N, FEATURES = 2500, 30  # rows of 120 bytes: the runner chunks 1,092, a call takes 69,888


@pytest.mark.parametrize("cls, kwargs, models", [
    (MPRT, {}, 3), (EfficientMPRT, {}, 1), (RandomLogit, {"num_classes": 3}, 1)])
def test_each_model_explains_a_tables_rows_in_one_call(cls, kwargs, models) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3)).eval()
    x = torch.randn(N, FEATURES)
    y = model(x).argmax(1)
    a = ek.explain(model, x, y, method="Saliency")
    counter = CountingExplainer()
    scores = cls(seed=0, **kwargs)(model, x, y, a, explain_fn=counter,
                                   explain_kwargs={"method": "Saliency"})
    assert counter.rows == [N] * models

    bounded = CountingExplainer()
    again = cls(seed=0, **kwargs)(model, x, y, a, explain_fn=bounded,
                                  explain_kwargs={"method": "Saliency"}, batch_size=1092)
    assert bounded.rows == [1092, 1092, 316] * models
    if isinstance(scores, dict):
        for key in scores:
            np.testing.assert_array_equal(scores[key], again[key])
    else:
        np.testing.assert_array_equal(scores, again)


def test_smooth_mprt_explains_a_models_noisy_rows_in_whole_model_chunks(monkeypatch) -> None:
    # a call budget of 4,096 rows of 120 bytes: three whole model chunks (3,276 rows) a call
    import evalkit.metrics.base as base

    monkeypatch.setattr(base, "SMALL_ROWS_CALL_BYTES", 4096 * FEATURES * 4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(700, FEATURES)
    y = model(x).argmax(1)
    a = ek.explain(model, x, y, method="Saliency")
    counter = CountingExplainer()
    kw = dict(seed=0, nr_samples=5, reference="given")
    scores = SmoothMPRT(**kw)(model, x, y, a, explain_fn=counter,
                              explain_kwargs={"method": "Saliency"})
    assert counter.rows == [3276, 224] * 2  # 3,500 noisy rows per randomised model
    bounded = CountingExplainer()
    again = SmoothMPRT(**kw)(model, x, y, a, explain_fn=bounded,
                             explain_kwargs={"method": "Saliency"}, batch_size=1092)
    assert bounded.rows == [1092, 1092, 1092, 224] * 2
    np.testing.assert_array_equal(np.asarray(scores), np.asarray(again))
