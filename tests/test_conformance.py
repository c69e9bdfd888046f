"""The conformance suite (:mod:`evalkit.testing`) over every registered metric, and over
instances whose settings change their metadata; test-only broken metrics fail exactly the
checks they should.

Every (metric, check) pair that fails today because of a library bug is listed in
``KNOWN_FAILURES`` with the bug, and runs as ``xfail(strict=True)``: fixing the bug makes the
test XPASS, which fails the suite until the entry is removed.
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch

import evalkit as ek
from evalkit import testing
from evalkit.metrics import Metric, MetricBatch, base, list_metrics
from evalkit.testing import CHECKS, check_metric, cheap_metric, parametrize_with_checks

warnings.filterwarnings("ignore", category=ek.UndefinedScoreWarning)

# ============================================================================ every metric
REGISTERED = {name: cheap_metric(name) for name in list_metrics()["name"]}

#: instances whose settings change what their metadata should say
NON_DEFAULT = {
    "ROAD(order='morf')": cheap_metric("ROAD", order="morf"),
    "ROAD(order='lerf')": cheap_metric("ROAD", order="lerf"),
    "ROAD(noise=0)": cheap_metric("ROAD", noise=0.0),
    "RegionPerturbation(order='lerf')": cheap_metric("RegionPerturbation", order="lerf"),
    "RegionPerturbation(order='random')": cheap_metric("RegionPerturbation", order="random"),
    "PixelFlipping(perturb_baseline='uniform')": cheap_metric("PixelFlipping",
                                                              perturb_baseline="uniform"),
    "Deletion(perturb_baseline='uniform')": cheap_metric("Deletion", perturb_baseline="uniform"),
    "SensitivityN(subsets='morf')": cheap_metric("SensitivityN", subsets="morf"),
    "MonotonicityCorrelation(perturb_baseline='black')": cheap_metric(
        "MonotonicityCorrelation", perturb_baseline="black"),
    "Infidelity(perturb_func='patches')": cheap_metric("Infidelity", perturb_func="patches"),
    "AverageDrop(invert=True)": cheap_metric("AverageDrop", invert=True),
    "Continuity(perturb_func='gaussian')": cheap_metric("Continuity", perturb_func="gaussian"),
    "MPRT(similarity_func='mse')": cheap_metric("MPRT", similarity_func="mse"),
    "RandomLogit(similarity_func='mse')": cheap_metric("RandomLogit", similarity_func="mse"),
    "Completeness(return_residual=True)": cheap_metric("Completeness", return_residual=True),
    "InputInvariance(return_residual=True)": cheap_metric("InputInvariance",
                                                          return_residual=True),
}

def _class_metadata(field: str, cls_value: object, value: object) -> str:
    return (f"metadata() and list_metrics() read the class ({field}={cls_value}), but this "
            f"instance's __init__ sets {field}={value}")


_SEED_UNDECLARED = ("declares stochastic=False, but its scores depend on the seed, which "
                    "draws the re-initialised layers' weights")
_SEED_UNDECLARED_DTYPE = (_SEED_UNDECLARED + " (so a float64 copy of the model, whose "
                          "re-initialised weights are other draws, scores differently)")

#: (metric id, check, the library bug it shows); see the module docstring
KNOWN_BUGS: list[tuple[str, str, str]] = [
    ("MPRT", "declared_stochasticity", _SEED_UNDECLARED),
    ("MPRT", "device_and_dtype", _SEED_UNDECLARED_DTYPE),
    ("EfficientMPRT", "declared_stochasticity", _SEED_UNDECLARED),
    ("EfficientMPRT", "device_and_dtype", _SEED_UNDECLARED_DTYPE),
    ("MPRT(similarity_func='mse')", "declared_stochasticity", _SEED_UNDECLARED),
    ("MPRT(similarity_func='mse')", "device_and_dtype", _SEED_UNDECLARED_DTYPE),
    ("ROAD(noise=0)", "declared_stochasticity",
     "ROAD declares stochastic=True on the class and never derives it from its imputer: with "
     "noise=0 the imputation is deterministic and every seed gives the same scores"),
    ("ROAD(order='morf')", "metadata", _class_metadata("higher_is_better", True, False)),
    ("RegionPerturbation(order='lerf')", "metadata",
     _class_metadata("higher_is_better", True, False)),
    ("RegionPerturbation(order='random')", "metadata",
     _class_metadata("stochastic", False, True)),
    ("PixelFlipping(perturb_baseline='uniform')", "metadata",
     _class_metadata("stochastic", False, True)),
    ("Deletion(perturb_baseline='uniform')", "metadata",
     _class_metadata("stochastic", False, True)),
    ("SensitivityN(subsets='morf')", "metadata",
     _class_metadata("set_level", False, True) + "; likewise stochastic (True vs False)"),
    ("MonotonicityCorrelation(perturb_baseline='black')", "metadata",
     _class_metadata("stochastic", True, False)),
    ("Infidelity(perturb_func='patches')", "metadata",
     _class_metadata("stochastic", True, False)),
    ("AverageDrop(invert=True)", "metadata", _class_metadata("higher_is_better", False, True)),
    ("Continuity(perturb_func='gaussian')", "metadata",
     _class_metadata("stochastic", False, True)),
    ("MPRT(similarity_func='mse')", "metadata",
     _class_metadata("higher_is_better", False, True)),
    ("RandomLogit(similarity_func='mse')", "metadata",
     _class_metadata("higher_is_better", False, True)),
    ("Completeness(return_residual=True)", "metadata",
     _class_metadata("higher_is_better", True, False)),
    ("InputInvariance(return_residual=True)", "metadata",
     _class_metadata("higher_is_better", True, False)),
]
KNOWN_FAILURES: dict[str, dict[str, str]] = {}
for _id, _check, _bug in KNOWN_BUGS:
    KNOWN_FAILURES.setdefault(_id, {})[_check] = _bug


@parametrize_with_checks({**REGISTERED, **NON_DEFAULT}, expected_failed_checks=KNOWN_FAILURES)
def test_metric_conformance(metric, check):
    check(metric)


def test_every_registered_metric_is_checked():
    assert set(REGISTERED) == set(list_metrics()["name"])
    assert set(KNOWN_FAILURES) <= set(REGISTERED) | set(NON_DEFAULT)
    assert all(set(v) <= set(CHECKS) for v in KNOWN_FAILURES.values())
