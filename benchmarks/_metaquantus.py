"""Import the released ``metaquantus`` 0.0.5 as a reference oracle (tests and benchmarks only).

metaquantus 0.0.5 cannot be installed with its dependencies beside this project's torch (it
requires torchvision and timm; torchvision from the registry does not import with our torch).
Its code paths that compute the criteria need neither: only ``helpers/configs.py`` imports
torchvision, at module level, to build pretrained models in functions we never call. So the
oracle is installed without dependencies into a separate directory::

    .venv/bin/pip install --no-deps --target .oracle/metaquantus metaquantus==0.0.5

(``.oracle/`` is git-ignored; ``EVALKIT_METAQUANTUS_PATH`` points elsewhere) and imported here
with an empty stand-in module for ``torchvision`` if the real one is absent, plus the
``np.trapz`` shim that quantus 0.6.0 needs on NumPy 2.4. metaquantus is LGPL: it is only ever
imported, never copied, and evalkit/metaeval never import it.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATH = ROOT / ".oracle" / "metaquantus"


def metaquantus_path() -> Path:
    return Path(os.environ.get("EVALKIT_METAQUANTUS_PATH", DEFAULT_PATH))


def _stub_torchvision() -> bool:
    """Put a stand-in torchvision in ``sys.modules`` if the real one does not import; True if
    a stub was installed (the caller removes it again after the import)."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        tv = types.ModuleType("torchvision")
        tv.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
        tv.models = types.ModuleType("torchvision.models")  # type: ignore[attr-defined]
        tv.models.__spec__ = importlib.machinery.ModuleSpec("torchvision.models", None)
        sys.modules["torchvision"] = tv
        sys.modules["torchvision.models"] = tv.models  # type: ignore[attr-defined]
        return True
    return False


def load_metaquantus() -> Any | None:
    """The metaquantus module, or None if it is not installed where expected."""
    if "metaquantus" in sys.modules:
        return sys.modules["metaquantus"]
    path = metaquantus_path()
    if not (path / "metaquantus").is_dir():
        return None
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # type: ignore[attr-defined]  # noqa: NPY201
    if str(path) not in sys.path:
        sys.path.append(str(path))
    stubbed = _stub_torchvision()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import metaquantus
    except Exception:
        return None
    finally:
        if stubbed:  # nobody else should see the stand-in
            sys.modules.pop("torchvision", None)
            sys.modules.pop("torchvision.models", None)
    return metaquantus
