"""Evaluation metrics, one module per family, behind one protocol (:class:`Metric`).

>>> import evalkit as ek
>>> ek.metrics.list_metrics()                     # doctest: +SKIP
>>> ek.metrics.get("PixelFlipping")(features_in_step=28)(model, x, y, a)   # doctest: +SKIP
"""

from .base import FAMILIES, Metric, MetricBatch, clone, get, list_metrics, register
from .normalise import (
    get_normaliser,
    normalise_by_average_second_moment_estimate,
    normalise_by_max,
    normalise_by_negative,
)

__all__ = [
    "FAMILIES",
    "Metric",
    "MetricBatch",
    "clone",
    "get",
    "get_normaliser",
    "list_metrics",
    "normalise_by_average_second_moment_estimate",
    "normalise_by_max",
    "normalise_by_negative",
    "register",
]

from . import similarity
from .agreement import (
    FeatureAgreement,
    PairwiseRankAgreement,
    RankAgreement,
    SignAgreement,
    SignedRankAgreement,
)
from .axiomatic import Completeness, InputInvariance, NonSensitivity
from .complexity import Complexity, EffectiveComplexity, Sparseness
from .faithfulness import (
    IROF,
    PGI,
    PGU,
    ROAD,
    AverageDrop,
    AverageGain,
    AverageIncrease,
    Deletion,
    FaithfulnessCorrelation,
    FaithfulnessEstimate,
    Infidelity,
    Insertion,
    Monotonicity,
    MonotonicityCorrelation,
    PixelFlipping,
    RegionPerturbation,
    Selectivity,
    SensitivityN,
    Sufficiency,
)
from .localisation import (
    AUC,
    AttributionLocalisation,
    BoxLocalisation,
    EnergyPointingGame,
    Focus,
    PointingGame,
    RelevanceMassAccuracy,
    RelevanceRankAccuracy,
    TopKIntersection,
)
from .randomisation import (
    MPRT,
    EfficientMPRT,
    ModelParameterRandomisation,
    RandomLogit,
    SmoothMPRT,
)
from .robustness import (
    AvgSensitivity,
    Consistency,
    Continuity,
    LocalLipschitzEstimate,
    MaxSensitivity,
    RelativeInputStability,
    RelativeOutputStability,
    RelativeRepresentationStability,
)

__all__ += ["Complexity", "EffectiveComplexity", "PixelFlipping", "Sparseness"]
__all__ += [
    "IROF",
    "ROAD",
    "AverageDrop",
    "AverageGain",
    "AverageIncrease",
    "Deletion",
    "FaithfulnessCorrelation",
    "FaithfulnessEstimate",
    "Infidelity",
    "Insertion",
    "Monotonicity",
    "MonotonicityCorrelation",
    "RegionPerturbation",
    "Selectivity",
    "SensitivityN",
    "Sufficiency",
]

__all__ += [
    "AUC",
    "AttributionLocalisation",
    "BoxLocalisation",
    "EnergyPointingGame",
    "Focus",
    "PointingGame",
    "RelevanceMassAccuracy",
    "RelevanceRankAccuracy",
    "TopKIntersection",
]
__all__ += ["MPRT", "EfficientMPRT", "ModelParameterRandomisation", "RandomLogit",
            "SmoothMPRT", "similarity"]
__all__ += ["Completeness", "InputInvariance", "NonSensitivity"]

from .faithfulness import (  # noqa: E402 - text: ERASER rationale metrics and AOPC
    AOPC,
    ERASERComprehensiveness,
    ERASERSufficiency,
    SoftComprehensiveness,
    SoftSufficiency,
)
from .localisation import AUPRC, IOUF1, TokenF1  # noqa: E402 - token plausibility

__all__ += [
    "AOPC",
    "AUPRC",
    "IOUF1",
    "ERASERComprehensiveness",
    "ERASERSufficiency",
    "SoftComprehensiveness",
    "SoftSufficiency",
    "TokenF1",
]

__all__ += [
    "AvgSensitivity",
    "Consistency",
    "Continuity",
    "LocalLipschitzEstimate",
    "MaxSensitivity",
    "RelativeInputStability",
    "RelativeOutputStability",
    "RelativeRepresentationStability",
]

from .faithfulness import AUCSE  # noqa: E402  (time series, Turbé et al. 2023)

__all__ += ["AUCSE"]
__all__ += ["PGI", "PGU"]
__all__ += [
    "FeatureAgreement",
    "PairwiseRankAgreement",
    "RankAgreement",
    "SignAgreement",
    "SignedRankAgreement",
]

from .grid import DiFull, DiPart, GridPG  # noqa: E402 - grid protocols (Rao et al. 2022)

__all__ += ["DiFull", "DiPart", "GridPG"]

from .faithfulness import (  # noqa: E402  (issue 23: log-odds, information curves, subsets)
    AIC,
    SIC,
    LogOdds,
    MinimalSubsetDeletion,
    MinimalSubsetInsertion,
)

__all__ += ["AIC", "SIC", "LogOdds", "MinimalSubsetDeletion", "MinimalSubsetInsertion"]

from .faithfulness import ABPC, NAOPC, SRG  # noqa: E402  (issue 23: post-Quantus faithfulness)

__all__ += ["ABPC", "NAOPC", "SRG"]

from .robustness import AdversarialTopKIntersection  # noqa: E402 - Ghorbani et al. 2019

__all__ += ["AdversarialTopKIntersection"]

from .data_randomisation import DataRandomisation  # noqa: E402 - Adebayo et al. 2018

__all__ += ["DataRandomisation"]

from .faithfulness import FFidelity  # noqa: E402 - Zheng et al. 2025 (F-Fidelity)

__all__ += ["FFidelity"]
