"""Import the installed ``quantus`` (a reference to time against), with the shims it needs.

quantus 0.6.0 calls ``np.trapz``, removed in NumPy 2.4 (deviation C16). The shim
is applied here, inside the benchmarks only; evalkit never patches NumPy.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np


def load_quantus() -> Any | None:
    """The quantus module, or None if it is not installed."""
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # type: ignore[attr-defined]  # noqa: NPY201
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import quantus
    except ImportError:
        return None
    return quantus


def quantus_version() -> str:
    q = load_quantus()
    return "not installed" if q is None else str(getattr(q, "__version__", "?"))
