"""What the views of results (leaderboards, plots) read from them.

The views depend on this protocol rather than on :class:`evalkit.results.Results`, so the data
object can offer them as convenience methods (``results.leaderboard()``, ``results.plot()``)
without an import cycle: ``results -> leaderboard -> ranking`` is a one-way chain.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import pandas as pd

Cell = tuple[str, str]

__all__ = ["Cell", "ScoredResults"]


class ScoredResults(Protocol):
    """Per-sample scores of (method, metric) cells with each metric's direction and family
    (implemented by :class:`evalkit.results.Results`)."""

    methods: list[str]
    metrics: list[str]
    n: int
    #: ``{(method, metric): (n,) scores}``, NaN where undefined
    scores: Mapping[Cell, np.ndarray]
    #: ``{(method, metric): (n, T) curves}`` and their x-axes, for metrics that record curves
    curves: Mapping[Cell, np.ndarray]
    curve_x: Mapping[Cell, np.ndarray]
    #: the cells that failed (their scores are NaN)
    errors: Mapping[Cell, Any]

    def family(self, metric: str) -> str: ...

    def higher_is_better(self, metric: str) -> bool: ...

    def summary(self, *, wide: bool = False) -> pd.DataFrame: ...
