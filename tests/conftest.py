"""Shared fixtures. The released `quantus` package is a test-only reference oracle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

METAQUANTUS_ORACLE = Path(__file__).resolve().parent.parent / ".oracle" / "metaquantus"


def pytest_sessionstart(session):
    """Fetch the metaquantus 0.0.5 oracle from the package registry once, if it is missing.

    It cannot be a ``dev`` requirement: it depends on torchvision and timm, which do not install
    beside the CPU torch build CI uses, so it goes without dependencies into the git-ignored
    ``.oracle/`` (the cross-checks only need its pure-Python kernels). Set
    ``EVALKIT_FETCH_ORACLES=0`` to skip; the tests that need it then skip with the reason.
    """
    if os.environ.get("EVALKIT_FETCH_ORACLES", "1") == "0" or METAQUANTUS_ORACLE.exists():
        return
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                        str(METAQUANTUS_ORACLE), "metaquantus==0.0.5"],
                       check=True, capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"metaquantus oracle not fetched ({exc}); its cross-checks will skip")


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
