"""evalkit: evaluate explanations of neural networks, correctly and fast.

Layers (each imports only those above it in this list): ``models`` (wrappers, targets),
``perturb`` (groupings, baselines, noise), ``runner`` (batched forward passes), ``explain``,
``metrics``.
"""

from . import (
    metrics,
    models,
    perturb,
    runner,
)
from ._validation import EvalkitWarning, UndefinedScoreWarning
from ._version import __version__
from .explain import explain
from .models import wrap_model

__all__ = [
    "EvalkitWarning",
    "UndefinedScoreWarning",
    "__version__",
    "explain",
    "metrics",
    "models",
    "perturb",
    "runner",
    "wrap_model",
]
