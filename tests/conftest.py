"""Shared fixtures. The released `quantus` package is a test-only reference oracle."""

from __future__ import annotations

import os
import re
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

    quantus 0.6.0 calls ``np.trapz`` (removed in NumPy 2.4, deviation C16) and prints warnings;
    tests using this fixture are marked ``oracle`` automatically.
    """
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # type: ignore[attr-defined]  # noqa: NPY201
    return pytest.importorskip("quantus")


@pytest.fixture(scope="session")
def torchvision():
    """torchvision (the optional ``vision`` extra: detection, segmentation and ViT models with
    random weights, never downloaded). Tests using this fixture are marked ``vision`` and skip
    where it is absent or does not import beside the installed torch (the CPU torch 2.13 of the
    README's install); run them in an environment with ``pip install torch==2.14.1
    torchvision==0.29.1`` and ``pip install -e ".[dev,vision]"``."""
    try:
        import torchvision as tv
    except Exception as exc:  # ImportError, or RuntimeError "operator torchvision::nms ..."
        pytest.skip("torchvision, the vision extra, is absent or broken here "
                    f"({type(exc).__name__})")
    return tv


#: set by .ci/run, where the dev extra is installed: a test skipped because a tool of that extra
#: (quantus, mkdocs, nbclient, ray, ...) is missing fails instead, so that a broken install can
#: never pass CI by silently skipping the oracle cross-checks, the docs build or the notebooks
REQUIRE_EXTRAS = os.environ.get("EVALKIT_REQUIRE_EXTRAS") == "1"
_MISSING_TOOL = re.compile(r"could not import|not installed|need scikit-learn")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if REQUIRE_EXTRAS and rep.skipped and isinstance(rep.longrepr, tuple):
        reason = str(rep.longrepr[2])
        if _MISSING_TOOL.search(reason):
            rep.outcome = "failed"
            rep.longrepr = f"EVALKIT_REQUIRE_EXTRAS=1, but the test was skipped: {reason}"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "quantus" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.oracle)
        if "torchvision" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.vision)


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    """One torch thread per test process: the tests use tiny models, for which thread start-up
    costs more than it saves, and several test processes may share the machine's cores."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
