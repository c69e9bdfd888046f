"""What the Quantus call surface needs beyond keyword renames (see docs/migrating-quantus.md).

Quantus passes some options as functions (``perturb_func=batch_baseline_replacement_by_indices``)
and calls explanation functions with keywords
(``explain_func(model=..., inputs=..., targets=..., **kwargs)``). These helpers recognise both
without importing Quantus: a function is recognised by its name, so Quantus' own function and a
string of its name are the same choice.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["BASELINE_REPLACEMENT", "IMPUTATION", "function_name", "is_quantus_explain_func",
           "similarity_name"]

#: Quantus' feature replacement by a baseline value: what evalkit's removal metrics do with
#: ``perturb_baseline=`` (Quantus' default ``perturb_func`` of those metrics)
BASELINE_REPLACEMENT = frozenset({"baseline_replacement_by_indices",
                                  "batch_baseline_replacement_by_indices"})
#: Quantus' ROAD imputation (evalkit's ROAD default ``imputer``)
IMPUTATION = frozenset({"noisy_linear_imputation"})


def function_name(obj: Any) -> str | None:
    """The name a Quantus option given as a function or a string stands for (None if neither)."""
    if isinstance(obj, str):
        return obj
    if callable(obj):
        return getattr(obj, "__name__", None)
    return None


def is_quantus_explain_func(fn: Callable[..., Any]) -> bool:
    """True if ``fn`` takes Quantus' keywords ``inputs`` and ``targets``: evalkit then calls it
    with keywords, as Quantus does (so keyword-only parameters work)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "inputs" in params and "targets" in params


def similarity_name(spec: Any) -> Any:
    """Quantus' similarity functions by name: ``"correlation_spearman"`` (or Quantus' function
    of that name) becomes evalkit's registered name (``"spearman"``); anything else is
    returned unchanged."""
    from .metrics.similarity import similarity_info

    name = function_name(spec)
    if name is None or (not isinstance(spec, str) and not name.startswith(
            ("correlation_", "distance_", "cosine", "ssim", "abs_difference", "mse"))):
        return spec
    try:
        return similarity_info(name).name
    except ValueError:
        return spec
