"""The baseline an explanation is complete against, known to :func:`evalkit.explain`.

Integrated Gradients and DeepLift attribute f(x) - f(x') to the features, for a baseline x'
(zero by default, or the ``baselines`` argument). A metric that checks that property
(:class:`~evalkit.metrics.Completeness`) must use the same x'. :func:`explain` knows it, so it
remembers it for the array it returns (:func:`remember_reference`, looked up by the array's
identity, for as long as the array lives: NumPy arrays and tensors take no attributes that
survive conversion), and a metric given ``explain_kwargs`` works it out from the method and its
arguments (:func:`reference_baseline`).
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["COMPLETE_METHODS", "ReferenceBaseline", "attached_reference", "reference_baseline",
           "remember_reference"]

#: methods whose attributions sum to f(x) - f(baseline), with their default baseline
COMPLETE_METHODS: dict[str, float] = {"IntegratedGradients": 0.0, "DeepLift": 0.0}

#: (method name, baseline: a number or an array broadcastable to x)
ReferenceBaseline = tuple[str, Any]

_REMEMBERED: dict[int, tuple[weakref.ref, ReferenceBaseline]] = {}


def reference_baseline(method: str | None, kwargs: dict[str, Any] | None = None
                       ) -> ReferenceBaseline | None:
    """``(method, baseline)`` for a method (its registered name, see
    :func:`~evalkit.explain.explainer_info`) whose attributions are complete against a
    baseline (its ``baselines``/Quantus' ``baseline`` argument, else its default), or None."""
    if method not in COMPLETE_METHODS:
        return None
    kwargs = kwargs or {}
    given = kwargs.get("baselines", kwargs.get("baseline"))
    return method, COMPLETE_METHODS[method] if given is None else given


def remember_reference(result: Any, reference: ReferenceBaseline | None) -> None:
    """Remember the reference baseline of an array :func:`explain` returns."""
    if reference is None:
        return
    key = id(result)

    def forget(_: weakref.ref, key: int = key) -> None:
        _REMEMBERED.pop(key, None)

    try:
        _REMEMBERED[key] = (weakref.ref(result, forget), reference)
    except TypeError:  # an object without weak references: nothing to remember
        return


def attached_reference(a: Any) -> ReferenceBaseline | None:
    """The reference baseline :func:`explain` remembered for exactly this array, or None."""
    entry = _REMEMBERED.get(id(a))
    if entry is None or entry[0]() is not a:
        return None
    return entry[1]
