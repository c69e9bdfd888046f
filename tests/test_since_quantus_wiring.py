"""The metrics published since Quantus (issue 23) from the user-facing entry points: the shipped
``since_quantus`` configuration (``evalkit run since_quantus``) and metaeval's
MetaEvaluation, whose applicability rules know the metrics that read another model than the
one they are called with (F-Fidelity's fine-tuned copy, the permuted-label model)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from _evaluate_helpers import tiny_cnn

import metaeval as me
from evalkit.cli import _build_methods, _build_metrics, load_config, run_config
from evalkit.metrics import ABPC, IDSDS, Coherency, DataRandomisation, FFidelity
from metaeval.suite import applicability, reads_model

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.UndefinedScoreWarning")


# ---------------------------------------------------------------- the shipped configuration
def test_since_quantus_configuration_loads_by_name_and_is_valid():
    config = load_config("since_quantus")
    metrics = _build_metrics(config["metrics"])
    methods = _build_methods(config["methods"])
    names = {type(m).__name__ for m in metrics.values()}
    assert {"ABPC", "SRG", "NAOPC", "LogOdds", "MinimalSubsetDeletion", "SIC", "FFidelity",
            "IDSDS", "ADCC", "AdversarialTopKIntersection"} == names
    for metric in metrics.values():
        assert "image" in type(metric).modalities, type(metric).__name__
    # controls, and none whose masks a re-explaining metric could not follow
    assert {"Random", "Sobel"} <= set(methods) and "GroundTruth" not in methods
    assert metrics["FFidelity"].fine_tuned_model == "none"


def test_an_unknown_configuration_name_lists_the_shipped_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match="since_quantus"):
        load_config("no_such_configuration")
    # a path that does not exist is not looked up among the shipped files
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "since_quantus")


def test_since_quantus_configuration_runs_without_failed_cells(tmp_path):
    config = load_config("since_quantus")
    config["data"]["n"] = 4
    config["leaderboard"]["n_boot"] = 20
    config["methods"] = {k: v for k, v in config["methods"].items()
                         if k in ("Saliency", "Random")}
    outcome = run_config(config, out=tmp_path, store=False, report=False, progress=False,
                         echo=lambda *a: None)
    results = outcome["results"]
    assert not results.errors
    for metric in config["metrics"]:
        assert np.isfinite(results["Saliency", metric]).any(), metric


# ---------------------------------------------------------------- metaeval
def test_metrics_reading_another_model_are_not_reached_by_a_model_perturbation():
    model = tiny_cnn()
    mpt = me.ModelPerturbationTest("Resilience")
    # a given fine-tuned copy / permuted-label model takes every forward: perturbing the
    # evaluated model reaches the score only through the explanation methods
    for metric in (FFidelity(fine_tuned_model=copy.deepcopy(model)),
                   DataRandomisation(randomised_model=copy.deepcopy(model))):
        assert not reads_model(metric)
        ok, why = applicability(metric, mpt, ["Random"])
        assert not ok and "does not read the model" in why
        assert applicability(metric, mpt, ["Saliency"]) == (True, "")
    # fine-tuned from the evaluated model, or the model as given: it is read
    for metric in (FFidelity(fine_tuned_model=copy.deepcopy), FFidelity(fine_tuned_model="none"),
                   DataRandomisation(randomised_model=copy.deepcopy), ABPC(), IDSDS()):
        assert reads_model(metric)
        assert applicability(metric, mpt, ["Random"]) == (True, "")


def test_meta_evaluation_of_metrics_since_quantus():
    model = tiny_cnn()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 8, 8, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)
    metrics = {"ABPC": ABPC(features_in_step=8), "IDSDS": IDSDS(),
               "Coherency": Coherency(),
               "FFidelity": FFidelity(fine_tuned_model="none", n_draws=2, seed=0)}
    run = me.MetaEvaluation(me.default_suite(), {"Saliency": {}, "InputXGradient": {}},
                            iterations=1, nr_perturbations=2, seed=0)
    summary = run(metrics, model, x, y).summary()
    assert set(summary["metric"]) == set(metrics)
    # every pairing applies (each metric reads the model and the input) and is scored
    assert summary["applicable"].all()
    assert np.isfinite(summary["MC"].to_numpy(dtype=float)).all()
