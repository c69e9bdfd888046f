"""The shared machinery of the ported Quantus 0.6 metric tests (no Quantus import).

Quantus' tests parametrise ``(model, data, params, expected)`` with lazy fixtures; here a case
names its fixtures by string and :func:`resolve` fetches them. ``params`` keeps Quantus'
layout: ``init`` (constructor keywords), ``call`` (call keywords), ``a_batch_generate``.
Options Quantus passes as functions are given by their Quantus names (strings): evalkit
resolves ``similarity_func``, ``normalise_func`` and the default ``perturb_func`` names.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import evalkit as ek

#: Quantus' ``quantus.explain``: evalkit's explain accepts its ``inputs=``/``targets=`` keywords
explain = ek.explain


def case(*values: Any,
         deviation: str | None = None, fixture: str | None = None, numerics: str | None = None,
         vacuous: str | None = None, skip: str | None = None,
         quantus_xfail: bool = False, raises: type | None = None, id: str | None = None) -> Any:
    """One ported case: its parameter values (usually ``model, data, params, expected``, the
    fixtures by name). Marks, each a strict xfail unless said otherwise:

    * ``deviation``: the documented deviation it hits (``"C12: ..."``; None: no mark, for a
      deviation that depends on a capability of the code under test);
    * ``fixture``: an assertion about the trained model's values that fails on the stand-in
      fixtures;
    * ``numerics``: an exact float comparison that differs in the last bits;
    * ``vacuous``: Quantus' assertion can never fail (e.g. ``np.all`` of a generator) and the
      check it spells out does not hold (README.md lists these three);
    * ``skip``: why the case cannot run on evalkit (a skip, not an xfail);
    * ``quantus_xfail``: marked xfail (not strict) in Quantus' own suite, and stays so.

    ``raises``: the exception the xfail expects (default: any)."""
    marks = []
    if deviation is not None:
        marks.append(pytest.mark.xfail(reason=f"deviation {deviation}", strict=True,
                                       raises=raises))
    if fixture is not None:
        marks.append(pytest.mark.xfail(reason=f"fixture: {fixture}", strict=True, raises=raises))
    if vacuous is not None:
        marks.append(pytest.mark.xfail(reason=f"vacuous in Quantus: {vacuous}", strict=True,
                                       raises=raises))
    if numerics is not None:
        marks.append(pytest.mark.xfail(reason=f"numerics: {numerics}", strict=True,
                                       raises=raises))
    if quantus_xfail:
        marks.append(pytest.mark.xfail(reason="marked xfail in Quantus 0.6's own suite",
                                       strict=False))
    if skip is not None:
        marks.append(pytest.mark.skip(reason=skip))
    return pytest.param(*values, marks=marks, id=id)


def resolve(request: pytest.FixtureRequest, model: str | None, data: str) -> tuple[Any, dict]:
    """The model and the data dict of a case, from their fixture names."""
    model_obj = None if model is None else request.getfixturevalue(model)
    return model_obj, dict(request.getfixturevalue(data))


def attributions(model: Any, data: dict, params: dict) -> Any:
    """``a_batch`` as Quantus' tests build it: explained with the call's ``explain_func`` when
    ``a_batch_generate`` (default True), else the data's own ``a_batch`` (or None)."""
    call = params.get("call", {})
    if params.get("a_batch_generate", True):
        func = call["explain_func"]
        return func(model=model, inputs=data["x_batch"], targets=data["y_batch"],
                    **call.get("explain_func_kwargs", {}))
    return data.get("a_batch")


#: Quantus' tests reseed every global RNG with 42 before each test (its autouse
#: ``reset_prngs``); evalkit draws no global randomness, so its metrics get ``seed=42``
QUANTUS_TEST_SEED = 42


def seeded(metric_cls: Any, **init: Any) -> Any:
    """``metric_cls(**init)`` with ``seed=42`` added where the metric takes a seed and none is
    given, the counterpart of Quantus' per-test reseeding (so strict outcomes are stable)."""
    if "seed" not in init and "seed" in metric_cls._param_names():
        init["seed"] = QUANTUS_TEST_SEED
    return metric_cls(**init)


def run(metric_cls: type, model: Any, data: dict, a_batch: Any, params: dict,
        **extra: Any) -> tuple[Any, Any]:
    """Build the metric from ``params["init"]`` (seeded, see :func:`seeded`) and call it
    Quantus' way; returns ``(metric, scores)``."""
    metric = seeded(metric_cls, **params.get("init", {}))
    scores = metric(model=model, x_batch=data["x_batch"], y_batch=data["y_batch"],
                    a_batch=a_batch, **params.get("call", {}), **extra)
    return metric, scores


def within(values: Any, low: float, high: float) -> bool:
    """Every value in [low, high] (Quantus' range assertions)."""
    arr = np.asarray(values, dtype=float)
    return bool(np.all((arr >= low) & (arr <= high)))
