"""The shared perturbation engine: feature groupings, baselines/imputers and noise models."""

from .baselines import BASELINES, Baseline, Imputer, gaussian_blur, make_imputer
from .groupings import (
    ChannelValues,
    Columns,
    CustomGrouping,
    DefaultFeatures,
    FeatureGrouping,
    Grouping,
    Patches,
    Pixels,
    Superpixels,
    Windows,
    make_grouping,
    rank_groups,
)
from .imputation import (
    ConditionalMeanImputer,
    GaussianReplacement,
    KNNImputer,
    MarginalMeanImputer,
    NoisyLinearImputer,
    SeriesLinearImputer,
)
from .noise import ColumnNoise, GaussianNoise, Noise, UniformNoise, make_noise
from .tokens import TokenDeletion, TokenDropout

__all__ = [
    "BASELINES",
    "Baseline",
    "ChannelValues",
    "ColumnNoise",
    "Columns",
    "ConditionalMeanImputer",
    "CustomGrouping",
    "DefaultFeatures",
    "FeatureGrouping",
    "GaussianNoise",
    "GaussianReplacement",
    "Grouping",
    "Imputer",
    "KNNImputer",
    "MarginalMeanImputer",
    "Noise",
    "NoisyLinearImputer",
    "Patches",
    "Pixels",
    "SeriesLinearImputer",
    "Superpixels",
    "TokenDeletion",
    "TokenDropout",
    "UniformNoise",
    "Windows",
    "gaussian_blur",
    "make_grouping",
    "make_imputer",
    "make_noise",
    "rank_groups",
]
