"""What the Quantus call surface needs beyond keyword renames (see docs/migrating-quantus.md).

Quantus passes some options as functions (``perturb_func=batch_baseline_replacement_by_indices``)
and calls explanation functions with keywords
(``explain_func(model=..., inputs=..., targets=..., **kwargs)``). These helpers recognise both
without importing Quantus: a function is recognised by its name, so Quantus' own function and a
string of its name are the same choice.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "BASELINE_REPLACEMENT",
    "IMPUTATION",
    "MissingInputsError",
    "channel_reduction",
    "function_name",
    "is_quantus_explain_func",
    "layer_path",
    "similarity_name",
]

#: Quantus' feature replacement by a baseline value: what evalkit's removal metrics do with
#: ``perturb_baseline=`` (Quantus' default ``perturb_func`` of those metrics)
BASELINE_REPLACEMENT = frozenset({"baseline_replacement_by_indices",
                                  "batch_baseline_replacement_by_indices"})
#: Quantus' ROAD imputation (evalkit's ROAD default ``imputer``)
IMPUTATION = frozenset({"noisy_linear_imputation"})


class MissingInputsError(TypeError, ValueError):
    """A metric called without inputs ``x``: a TypeError (a missing argument), and also the
    ValueError Quantus raises for it, so code written for either catches it."""


def function_name(obj: Any) -> str | None:
    """The name a Quantus option given as a function or a string stands for (None if neither)."""
    if isinstance(obj, str):
        return obj
    if callable(obj):
        return getattr(obj, "__name__", None)
    return None


def is_quantus_explain_func(fn: Callable[..., Any]) -> bool:
    """True if ``fn`` takes Quantus' keywords ``inputs`` and ``targets``, or only ``*args`` and
    ``**kwargs``: evalkit then calls it with keywords, as Quantus does
    (``fn(model=..., inputs=..., targets=..., **kwargs)``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    if "inputs" in params and "targets" in params:
        return True
    # f(*args, **kwargs) accepts either call; Quantus' keywords give it the names it reads
    kinds = {p.kind for p in params.values()}
    return bool(params) and kinds <= {inspect.Parameter.VAR_POSITIONAL,
                                      inspect.Parameter.VAR_KEYWORD}


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


_ACCESS = re.compile(
    r"""\._modules\.get\((['"])(?P<get>[^'"]+)\1\)"""  # ._modules.get("name")
    r"""|\._modules\[(['"])(?P<item>[^'"]+)\3\]"""  # ._modules["name"]
    r"""|\[(?P<index>-?\d+)\]"""  # [i]
    r"""|\.(?P<attr>[A-Za-z_]\w*)"""  # .name
)


def layer_path(spec: str) -> str:
    """Quantus' ``gc_layer`` strings are Python expressions it ``eval``s, e.g.
    ``'model._modules.get("conv_2")'`` or ``"model.layer4[-1]"``; evalkit never evaluates
    code, so the usual forms (``model`` followed by ``._modules.get("name")``,
    ``._modules["name"]``, ``.name`` and ``[i]``) are read as the layer path they name
    (``"conv_2"``, ``"layer4[-1]"``). Anything else is returned unchanged (a layer name)."""
    text = spec.strip()
    if not text.startswith("model") or text == "model":
        return spec
    parts: list[str] = []
    pos = len("model")
    while pos < len(text):
        m = _ACCESS.match(text, pos)
        if m is None:
            return spec
        if m.group("index") is not None:
            if not parts:
                return spec
            parts[-1] += f"[{m.group('index')}]"
        else:
            parts.append(m.group("get") or m.group("item") or m.group("attr"))
        pos = m.end()
    return ".".join(parts)


def channel_reduction(reduce_axes: Any, reduce_channels: str | None) -> str | None:
    """Quantus' ``explain(..., reduce_axes=...)`` as evalkit's ``reduce_channels``: ``()``
    keeps every element (None), ``(1,)`` sums over the channel axis (``"sum"``, Quantus'
    default). Other axes are refused: evalkit reduces over channels only."""
    axes = tuple(int(a) for a in reduce_axes)
    if axes == ():
        wanted = None
    elif axes == (1,):
        wanted = "sum"
    else:
        raise ValueError(f"reduce_axes={axes}: only () (no reduction) and (1,) (sum over the "
                         "channel axis) are supported; see `reduce_channels`.")
    if reduce_channels is not None and reduce_channels != wanted:
        raise TypeError(f"Got both reduce_channels={reduce_channels!r} and Quantus' "
                        f"reduce_axes={axes}; pass one.")
    return wanted


class QuantusAggregate:
    """Quantus' ``return_aggregate=True``: ``aggregate_func`` applied to the per-sample scores,
    returned in a one-element array (Quantus returns ``[aggregate_func(scores)]``). As the
    metric's ``aggregate`` parameter it survives ``clone()`` and ``set_params()``."""

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func

    def __call__(self, scores: Any) -> Any:
        import numpy as np

        return np.asarray(self.func(scores)).reshape(1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuantusAggregate) and other.func is self.func

    def __hash__(self) -> int:
        return hash(("QuantusAggregate", id(self.func)))

    def __repr__(self) -> str:
        name = getattr(self.func, "__name__", repr(self.func))
        return f"QuantusAggregate({name})"
