"""Diagnostics: what a metric records besides its scores (``MetricBatch.record``) reaches the
metric's ``diagnostics_`` and attributes, and survives the result store."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit.metrics import (
    MPRT,
    Completeness,
    FaithfulnessCorrelation,
    MaxSensitivity,
    RegionPerturbation,
)
from evalkit.store import ResultStore, UnitRecord

warnings.filterwarnings("ignore", category=ek.UndefinedScoreWarning)


def _data(n=4):
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():  # the same weights every time, the global RNG untouched
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(),
                              nn.Linear(2 * 4 * 4, 3))
    x = torch.rand((n, 1, 6, 6), generator=g)
    y = torch.zeros(n, dtype=torch.int64)
    a = torch.rand((n, 1, 6, 6), generator=g)
    return model.eval(), x, y, a


def test_recorded_values_reach_the_metric():
    model, x, y, a = _data()
    m = FaithfulnessCorrelation(nr_runs=5, subset_size=4, seed=0)
    m(model, x, y, a)
    assert set(m.diagnostics_) == {"subsets"}
    assert m.per_sample_diagnostics_ == frozenset({"subsets"})
    assert m.subsets_ is m.diagnostics_["subsets"]
    assert m.subsets_.shape == (4, 5, 4)


def test_per_sample_and_call_level_diagnostics():
    model, x, y, a = _data()
    m = Completeness()
    m(model, x, y, a)
    assert {"residuals", "output_differences", "attribution_sums"} <= m.per_sample_diagnostics_
    np.testing.assert_allclose(m.residuals_, m.attribution_sums_ - m.output_differences_,
                               atol=1e-12)
    mprt = MPRT(layer_order="bottom_up", seed=0)
    mprt(model, x, y, a, explain_fn=lambda mm, xx, yy: xx)
    assert isinstance(mprt.layer_scores_, pd.DataFrame)
    assert "layer_scores" not in mprt.per_sample_diagnostics_


def test_a_metric_without_diagnostics_records_none():
    model, x, y, _ = _data()
    m = MaxSensitivity(nr_samples=3, seed=0)
    m(model, x, y, explain_fn=lambda mm, xx, yy: xx)
    assert m.prediction_changed_ is None  # on_prediction_change="keep": nothing checked
    assert m.draw_scores_.shape == (4, 3)


def test_diagnostics_survive_the_store(tmp_path):
    frame = pd.DataFrame([[2 / 3, 0.123456789012345678]], index=["2020-01-01"], columns=[0, 1])
    frame.index.name, frame.columns.name = "layer", "sample"
    record = UnitRecord(
        key="k", cell_hash="c", method="Saliency", metric="M", start=0, stop=2,
        scores=np.array([1.0, 2.0]),
        diagnostics={"subsets": np.arange(6).reshape(2, 3), "consistency": 0.75,
                     "first_layer": "conv", "layer_scores": frame, "nothing": None},
        per_sample_diagnostics=frozenset({"subsets"}))
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(record)
        got = store.get("k")
    assert got is not None
    assert got.per_sample_diagnostics == frozenset({"subsets"})
    np.testing.assert_array_equal(got.diagnostics["subsets"], np.arange(6).reshape(2, 3))
    assert got.diagnostics["consistency"] == 0.75
    assert got.diagnostics["first_layer"] == "conv"
    assert got.diagnostics["nothing"] is None
    pd.testing.assert_frame_equal(got.diagnostics["layer_scores"], frame, check_exact=True)


def test_a_unit_without_diagnostics_reads_back_empty(tmp_path):
    record = UnitRecord(key="k", cell_hash="c", method="m", metric="M", start=0, stop=1,
                        scores=np.array([1.0]))
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(record)
        got = store.get("k")
    assert got is not None and got.diagnostics == {} and got.per_sample_diagnostics == set()


def _evaluate(store=None, chunk_size=2):
    model, x, y, a = _data(n=5)
    metrics = {"FC": FaithfulnessCorrelation(nr_runs=5, subset_size=4),
               "RP": RegionPerturbation(patch_size=2, regions_evaluation=9),
               "Consistency": ek.metrics.Consistency(discretise_func="sign")}
    return ek.evaluate(metrics, {"given": a.numpy()}, model, x, y, seed=3,
                       chunk_size=chunk_size, store=store, progress=False)


def test_evaluate_keeps_the_diagnostics_of_every_unit(tmp_path):
    res = _evaluate()
    order = res.diagnostic("given", "RP", "order")
    assert order.shape == (5, 9)  # three chunks concatenated in sample order
    # the same order as one direct call (per-sample semantics)
    direct = RegionPerturbation(patch_size=2, regions_evaluation=9)
    model, x, y, a = _data(n=5)
    direct(model, x, y, a)
    np.testing.assert_array_equal(order, direct.order_)
    # a set-level metric runs as one unit: its value as it is
    assert isinstance(res.diagnostic("given", "Consistency", "consistency"), float)
    # bulky values the seed reproduces stay on the metric only
    assert "subsets" in direct_fc().diagnostics_
    with pytest.raises(KeyError, match="order"):
        res.diagnostic("given", "RP", "nope")
    with pytest.raises(KeyError):
        res.diagnostic("given", "FC", "subsets")


def direct_fc():
    model, x, y, a = _data(n=5)
    m = FaithfulnessCorrelation(nr_runs=5, subset_size=4, seed=0)
    m(model, x, y, a)
    assert m.unstored_diagnostics_ == frozenset({"subsets"})
    return m


def test_diagnostics_come_back_from_a_resumed_run(tmp_path):
    store = tmp_path / "runs.sqlite"
    first = _evaluate(store=store)
    again = _evaluate(store=store)
    assert sum(again.resumed.values()) > 0
    np.testing.assert_array_equal(first.diagnostic("given", "RP", "order"),
                                  again.diagnostic("given", "RP", "order"))
    assert again.diagnostic("given", "Consistency", "consistency") == first.diagnostic(
        "given", "Consistency", "consistency")
