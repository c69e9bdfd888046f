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


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    """One torch thread per test process: the tests use tiny models, for which thread start-up
    costs more than it saves, and several test processes may share the machine's cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
