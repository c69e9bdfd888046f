"""The progress bar class: the notebook widget where it can render, the text bar elsewhere.

``tqdm.auto`` warns ("IProgress not found") in Jupyter when ipywidgets is missing, which it is
in a default install; this picks the text bar there instead, silently.
"""

from __future__ import annotations

import importlib.util

from tqdm.std import tqdm as _text_tqdm


def _pick():
    try:
        from IPython import get_ipython  # optional: present under Jupyter
    except ImportError:
        return _text_tqdm
    shell = get_ipython()
    if shell is None or "IPKernelApp" not in getattr(shell, "config", {}):
        return _text_tqdm
    if importlib.util.find_spec("ipywidgets") is None:
        return _text_tqdm
    from tqdm.notebook import tqdm as notebook_tqdm

    return notebook_tqdm


def tqdm(*args, **kwargs):
    """A progress bar; same arguments as ``tqdm.tqdm``."""
    return _pick()(*args, **kwargs)
