"""Progress and cost: the progress bar class, whether a run is interactive, and the forward-row
estimates that warn before a run that would take hours.

``tqdm.auto`` warns ("IProgress not found") in Jupyter when ipywidgets is missing, which it is
in a default install; :func:`tqdm` picks the text bar there instead, silently.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tqdm.std import tqdm as _text_tqdm

from ._validation import EvalkitWarning

#: per-sample forward rows above which a metric call warns (default PixelFlipping on 224 x 224
#: images runs 50,177; at 32 x 32 it runs 1,025)
LARGE_ROWS_PER_SAMPLE = 5_000
#: forward rows of a whole run (metric call, evaluation or meta-evaluation) above which it warns
LARGE_TOTAL_ROWS = 5_000_000


class CostWarning(EvalkitWarning):
    """A run is estimated to need very many forward passes; the message names the setting."""


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


def write(line: str) -> None:
    """A line on stderr that does not break a progress bar being drawn there."""
    _text_tqdm.write(line, file=sys.stderr)


def interactive() -> bool:
    """Whether someone is watching: stderr is a terminal, or this is a Jupyter kernel."""
    try:
        if sys.stderr is not None and sys.stderr.isatty():
            return True
    except (AttributeError, ValueError):  # a closed or replaced stream
        pass
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def resolve(progress: bool | None) -> bool:
    """``progress=None`` (the default of evaluate() and MetaEvaluation): on where the run is
    interactive (:func:`interactive`), else off; a bool is taken as given."""
    return interactive() if progress is None else bool(progress)


@dataclass(frozen=True)
class ForwardRowEstimate:
    """How many rows a metric runs through the model per sample (its perturbed copies and
    draws, plus the sample itself; re-explanations are extra), and the setting that drives it.

    ``setting``/``value`` name the parameter with the largest share and ``advice`` how to
    change it (None when nothing dominates)."""

    per_sample: int
    setting: str | None = None
    value: object = None
    advice: str | None = None

    def total(self, n_samples: int) -> int:
        return self.per_sample * int(n_samples)


def n_features(x_shape: Sequence[int]) -> int:
    """Features a removal metric ranks: the positions of channel-first data (pixels, time
    steps: channels are perturbed together), the columns of (N, F) data."""
    shape = [int(d) for d in x_shape]
    if len(shape) >= 3:
        return math.prod(shape[2:])
    return shape[1] if len(shape) == 2 else 1


def generic_estimate(params: dict, x_shape: Sequence[int]) -> ForwardRowEstimate:
    """The fallback of :meth:`evalkit.metrics.Metric.estimated_forward_rows`, from the
    parameter names the metrics share: ``features_in_step`` (ceil(features / step) steps),
    ``n_steps``, ``nr_steps``, ``patch_size`` (patches), ``percentages``, ``nr_runs``, times
    ``nr_samples`` draws."""
    features = n_features(x_shape)
    factors: list[tuple[int, str, object, str | None]] = []
    step = params.get("features_in_step")
    if isinstance(step, int) and step > 0:
        suggest = max(1, features // 256)
        advice = (f"a larger `features_in_step`, e.g. {suggest} ({math.ceil(features / suggest)}"
                  " steps)" if suggest > step else None)
        factors.append((math.ceil(features / step), "features_in_step", step, advice))
    for name in ("n_steps", "nr_steps", "nr_runs"):
        v = params.get(name)
        if isinstance(v, int) and v > 0:
            factors.append((v + (name == "n_steps"), name, v, f"a smaller `{name}`"))
    patch = params.get("patch_size")
    if isinstance(patch, int) and patch > 0 and len(x_shape) >= 3:
        n_patches = math.prod(math.ceil(int(d) / patch) for d in x_shape[2:])
        factors.append((n_patches, "patch_size", patch, "a larger `patch_size`"))
    pct = params.get("percentages")
    if isinstance(pct, Iterable) and not isinstance(pct, str | bytes):
        factors.append((len(list(pct)), "percentages", pct, "fewer `percentages`"))
    steps = max((f[0] for f in factors), default=1)
    draws = params.get("nr_samples")
    if isinstance(draws, int) and draws > 0:
        factors.append((draws, "nr_samples", draws, "a smaller `nr_samples`"))
        steps *= draws
    top = max(factors, key=lambda f: f[0], default=None)
    if top is None:
        return ForwardRowEstimate(1 + steps)
    return ForwardRowEstimate(1 + steps, top[1], top[2], top[3])


def warn_if_costly(name: str, estimate: ForwardRowEstimate | None, n_samples: int,
                   x_shape: Sequence[int], *, runs: int = 1, what: str = "",
                   stacklevel: int = 3) -> bool:
    """Warn (:class:`CostWarning`) when ``estimate`` x ``n_samples`` x ``runs`` forward rows
    is large; True when it warned. ``runs``: how many times the metric runs on the data
    (methods, perturbations); ``what`` says which."""
    if estimate is None:
        return False
    total = estimate.total(n_samples) * int(runs)
    if estimate.per_sample <= LARGE_ROWS_PER_SAMPLE and total <= LARGE_TOTAL_ROWS:
        return False
    shape = "x".join(str(int(d)) for d in x_shape[1:])
    setting = "" if estimate.setting is None else \
        f" at {estimate.setting}={estimate.value!r}"
    advice = "" if estimate.advice is None else f" Fewer rows: {estimate.advice}."
    warnings.warn(
        f"{name}: about {estimate.per_sample:,} forward rows per sample{setting} on inputs of "
        f"shape {shape}, {total:,} in all{what}, which can take hours on a CPU.{advice} "
        "(The metric's disable_warnings=True silences this.)",
        CostWarning, stacklevel=stacklevel)
    return True
