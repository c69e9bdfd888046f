"""evalkit: evaluate explanations of neural networks, correctly and fast.

Layers (each imports only those above it in this list): ``modality`` (what the inputs are),
``models`` (wrappers, targets), ``perturb`` (groupings, baselines, noise), ``runner`` (batched
forward passes), ``explain``, ``metrics``; ``masks`` (ground-truth masks, boxes, mosaics)
stands beside them. See docs/architecture.md.
"""

from . import (
    masks,
    metrics,
    modality,
    models,
    perturb,
    runner,
)
from ._validation import EvalkitWarning, UndefinedScoreWarning
from ._version import __version__
from .cache import ForwardCache, forward_cache
from .evaluate import evaluate
from .executors import RayExecutor
from .explain import explain
from .models import wrap_model
from .results import Results

#: submodules imported on first access (``ek.datasets.make_shapes``, ``ek.zoo``, ...)
_LAZY_SUBMODULES = ("datasets", "zoo", "leaderboard", "plotting", "ranking", "cli", "testing")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "EvalkitWarning",
    "ForwardCache",
    "RayExecutor",
    "Results",
    "UndefinedScoreWarning",
    "__version__",
    "evaluate",
    "explain",
    "forward_cache",
    "masks",
    "metrics",
    "modality",
    "models",
    "perturb",
    "runner",
    "wrap_model",
]
