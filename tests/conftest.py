"""Shared fixtures. The released `quantus` package is a test-only reference oracle."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def quantus():
    """Import the reference oracle, with the shims it needs on current NumPy.

    quantus 0.6.0 calls ``np.trapz`` (removed in NumPy 2.4, bug C16) and prints warnings;
    tests using this fixture are marked ``oracle`` automatically.
    """
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # type: ignore[attr-defined]  # noqa: NPY201
    return pytest.importorskip("quantus")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "quantus" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.oracle)
