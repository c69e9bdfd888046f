"""Benchmark specs, one module per metric family, so each family's entries live apart.

A spec names a metric (or explainer), its family, the workloads it runs on, and ``build(w, ctx)
-> Case``: how to run ours and the Quantus equivalent on workload ``w`` with the *same settings*,
how to compare their outputs, and what the floor is (see :class:`benchmarks.harness.Case`).

To add a metric: append a :class:`Spec` to ``SPECS`` in the family's module (e.g.
``benchmarks/specs/localisation.py``). ``all_specs()`` collects every module's ``SPECS``, then
adds the non-image workloads W4-W6 to the specs of the metrics declaring their modality
(``benchmarks/specs/modalities.py``: settings per metric and modality).

Every registered metric and explanation method needs a spec (:func:`check_spec_coverage`, run
by the tests), except a metric whose class declares ``benchmark_spec = False`` (a class-level
tag of :class:`evalkit.metrics.Metric`). A spec need not have a Quantus counterpart: its
``Case`` leaves ``quantus`` None and its rows have no Quantus column.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ..harness import Case, Context
from ..workloads import Workload

__all__ = ["FAMILY_MODULES", "IMPORT_ERRORS", "Spec", "all_specs", "at_model_free_scale",
           "check_spec_coverage", "metric_needs_spec", "missing_specs", "select_specs"]

#: family modules in table order (the ``family`` of their specs)
FAMILY_MODULES = ("explainers", "faithfulness", "robustness", "localisation", "complexity",
                  "randomisation", "axiomatic", "metaeval", "tasks_detection",
                  "tasks_segmentation")


@dataclass(frozen=True)
class Spec:
    """One benchmark entry. ``name`` is the table's metric column (unique)."""

    name: str
    family: str
    build: Callable[[Workload, Context], Case]
    workloads: tuple[str, ...] = ("W1", "W2")
    #: True: also part of the ``--quick`` smoke selection
    smoke: bool = False
    #: workload -> why the spec does not run there (the table gets a row saying so)
    skip: tuple[tuple[str, str], ...] = ()
    #: workload -> run on its first n samples only (too slow on all of them; the row says so)
    subset: tuple[tuple[str, int], ...] = ()
    #: workload -> build it with this many samples instead of its default (model-free metrics,
    #: whose targets are stated at a scale, e.g. W1 with 1,000+ samples); it takes precedence
    #: over ``--n`` (which keeps the model-heavy specs small), ``--quick`` over it
    scale: tuple[tuple[str, int], ...] = ()
    #: workload -> speed-up over Quantus an issue asks of this metric there (e.g. 10 on W1 for
    #: localisation and complexity, 2 for MPRT); checked where Quantus itself is that far
    #: above the floor
    speedup_targets: tuple[tuple[str, float], ...] = ()
    #: the registered metric this spec measures (default: ``name`` before any ``[variant]``);
    #: "" for entries that are not one metric (suites, the meta-evaluation)
    metric: str | None = None

    @property
    def registered(self) -> str:
        return self.name.split("[", 1)[0] if self.metric is None else self.metric


def at_model_free_scale(specs: list[Spec]) -> list[Spec]:
    """Issue 4's setting for the model-free families (localisation, complexity): W1 at 1,024
    samples (the per-sample loops of Quantus show at that scale; the issue asks for 1,000+) and
    W2 at its full 16, each at least 10x faster than Quantus 0.6 on W1."""
    return [dataclasses.replace(s, scale=(("W1", 1024), ("W2", 16)),
                                speedup_targets=(("W1", 10.0),)) for s in specs]


#: family module -> import error, for modules that could not be loaded (e.g. a metric that is
#: not implemented yet); their specs are skipped and the runner reports the error.
IMPORT_ERRORS: dict[str, str] = {}


#: issue 20: the ViT-B/16 rows (W9) and AttentionRollout's spec
FAMILY_MODULES += ("tasks_vit",)


def all_specs() -> list[Spec]:
    specs: list[Spec] = []
    for mod in FAMILY_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{mod}")
        except Exception as exc:  # one broken family must not stop the others
            IMPORT_ERRORS[mod] = f"{type(exc).__name__}: {exc}"
            continue
        specs.extend(getattr(module, "SPECS", []))
    try:  # the W4-W6 rows of every metric declaring their modality (issue 19)
        from .modalities import extend_specs

        specs = extend_specs(specs)
    except Exception as exc:
        IMPORT_ERRORS["modalities"] = f"{type(exc).__name__}: {exc}"
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"Duplicate benchmark spec names: {dupes}")
    return specs


def select_specs(metrics: list[str] | None = None, families: list[str] | None = None) -> list[Spec]:
    """Specs filtered by name (case-insensitive, exact) and/or family."""
    specs = all_specs()
    if metrics:
        wanted = {m.lower() for m in metrics}
        known = {s.name.lower() for s in specs}
        unknown = sorted(wanted - known)
        if unknown:
            skipped = f"; modules not loaded: {IMPORT_ERRORS}" if IMPORT_ERRORS else ""
            raise KeyError(f"Unknown benchmark metrics {unknown}; known: "
                           f"{sorted(s.name for s in specs)}{skipped}")
        specs = [s for s in specs if s.name.lower() in wanted]
    if families:
        fams = {f.lower() for f in families}
        specs = [s for s in specs if s.family.lower() in fams]
    return specs


def metric_needs_spec(name: str) -> bool:
    """Whether the registered metric ``name`` needs a benchmark spec: unless its class is tagged
    ``benchmark_spec = False``."""
    from evalkit.metrics import get

    return bool(getattr(get(name), "benchmark_spec", True))


def missing_specs(specs: list[Spec] | None = None) -> list[str]:
    """Registered metrics and explanation methods that need a spec and have none, sorted."""
    from evalkit.explain.core import available_methods
    from evalkit.metrics import list_metrics

    covered = {s.registered for s in (all_specs() if specs is None else specs)}
    metrics = [n for n in list_metrics()["name"] if n not in covered and metric_needs_spec(n)]
    methods = [n for n in available_methods() if n not in covered]
    return sorted(metrics + methods)


def check_spec_coverage(specs: list[Spec] | None = None) -> None:
    """Raise ``LookupError`` naming each registered metric or explanation method that needs a
    benchmark spec and has none."""
    missing = missing_specs(specs)
    if missing:
        raise LookupError(
            f"No benchmark spec for {', '.join(missing)}. Add a Spec to SPECS in "
            "benchmarks/specs/<family>.py (a Quantus counterpart is optional), or, for a metric "
            "that needs no benchmark, declare `benchmark_spec = False` on its class (see "
            "docs/contributing.md, 'Benchmarks').")
