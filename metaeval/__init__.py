"""metaeval: meta-evaluation of explanation metrics (how reliable is a metric?).

Builds on :mod:`evalkit` (evalkit never imports it).

* MetaQuantus' perturbation tests and criteria (Hedström et al., "The Meta-Evaluation Problem
  in Explainable AI: Identifying Reliable Estimators with MetaQuantus", TMLR 2023):
  :class:`ModelPerturbationTest`, :class:`InputPerturbationTest`, :func:`default_suite`,
  :class:`MetaEvaluation` (IAC_NR, IAC_AR, IEC_NR, IEC_AR and MC; higher is better),
  :class:`MetaEvaluationResult`, and :class:`MetaEvaluationBenchmark` (data sets x models x
  metric families, every perturbation and explanation shared by all metrics, resumable).
* Reference estimators with known criteria: :class:`ReferenceEstimator`.
* Reliability statistics of a set of metrics on the same results (Tomsett et al. AAAI 2020;
  Gevaert et al. 2024): :func:`reliability_report`, :func:`krippendorff_alpha` and friends in
  :mod:`metaeval.reliability`.
* Validity on testbeds whose mechanism is known (does a metric rank the right explanation
  first?): :func:`validity_report` and :class:`ValidityReport` in :mod:`metaeval.validity`
  (verdicts beside MC: :meth:`MetaEvaluationResult.with_validity`; a third-party metric's
  report card: ``evalkit.testing.check_metric(metric, checks=["validity"])``).
"""

import evalkit

from . import criteria, plots, reliability, validity
from .benchmark import MetaEvaluationBenchmark
from .criteria import CRITERIA, chance_levels
from .engine import MetaEvaluation
from .reference import REFERENCE_KINDS, ReferenceEstimator, reference_estimators
from .reliability import ReliabilityReport, krippendorff_alpha, reliability_report
from .results import MetaEvaluationResult
from .suite import (
    InputPerturbationTest,
    ModelPerturbationTest,
    applicability,
    default_suite,
    reads_input,
)
from .validity import ValidityReport, validity_report

__all__ = [
    "CRITERIA",
    "REFERENCE_KINDS",
    "InputPerturbationTest",
    "MetaEvaluation",
    "MetaEvaluationBenchmark",
    "MetaEvaluationResult",
    "ModelPerturbationTest",
    "ReferenceEstimator",
    "ReliabilityReport",
    "ValidityReport",
    "applicability",
    "chance_levels",
    "criteria",
    "default_suite",
    "evalkit_version",
    "krippendorff_alpha",
    "plots",
    "reads_input",
    "reference_estimators",
    "reliability",
    "reliability_report",
    "validity",
    "validity_report",
]

evalkit_version = evalkit.__version__
