"""Regenerate the validity report card of every registered metric, with the Quantus 0.6 column.

    python scripts/validity_report.py                 # run and print the summary
    python scripts/validity_report.py --write         # ... and rewrite the docs (see below)
    python scripts/validity_report.py --metrics Sparseness PixelFlipping --testbeds linear
    python scripts/validity_report.py --no-quantus    # evalkit only

It runs :func:`metaeval.validity.validity_report` for every registered evalkit metric (at its
defaults, except where :func:`settings` says otherwise: the sample counts of :data:`CHEAP`,
where a default is sized for a paper's figure rather than for a check (200 perturbations where
10 decide the same pairs); the sizes of :data:`SIZED`, where a default assumes larger inputs
than the testbeds'; the arguments of :data:`REQUIRED`, which have no default) on every
testbed of :mod:`metaeval.validity.testbeds`, then scores the same candidates with the Quantus
0.6 metric of the same name (:class:`QuantusMetric`: a test-only oracle, imported here only;
the package never imports quantus) and judges those scores with the same rules, then tries the
settings of :data:`ALTERNATIVES` where the default fails. With ``--write`` it writes

* ``docs/_data/validity.json``: the verdicts, the reasons, the counts, the settings, the
  timing (the metric catalogue's "report card" column reads it: ``docs/_hooks/catalogue.py``);
* ``docs/validity.md``: the generated sections "## Report card" and "## Differences from
  Quantus";
* ``docs/migrating-quantus.md``: the table "Same name, different meaning".

Runs on one core (``torch.set_num_threads(1)``); the time is recorded in the data file.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import os
import platform
import re
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# one core: NumPy's and SciPy's BLAS threads too (set before they load), torch's in run()
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout: this checkout's evalkit and metaeval
    sys.path.insert(0, str(ROOT))

import evalkit  # noqa: E402
from metaeval.validity.quantus_names import (  # noqa: E402
    SAME_NAME_DIFFERENT_MEANING,
    same_name_markdown,
    same_name_rows,
)

DATA_FILE = ROOT / "docs" / "_data" / "validity.json"
VALIDITY_PAGE = ROOT / "docs" / "validity.md"
MIGRATION_PAGE = ROOT / "docs" / "migrating-quantus.md"

#: constructor arguments that make a metric cheap enough for the report, where its default
#: is a sample count sized for a paper's figure (the same names in Quantus, which keeps them)
CHEAP: dict[str, dict[str, Any]] = {
    "MaxSensitivity": {"nr_samples": 10},
    "AvgSensitivity": {"nr_samples": 10},
    "LocalLipschitzEstimate": {"nr_samples": 10},
    "RelativeInputStability": {"nr_samples": 10},
    "RelativeOutputStability": {"nr_samples": 10},
    "RelativeRepresentationStability": {"nr_samples": 10},
    "FaithfulnessCorrelation": {"nr_runs": 20},
    "SmoothMPRT": {"nr_samples": 5},
    "MonotonicityCorrelation": {"nr_samples": 10},
    "SensitivityN": {"nr_subsets": 10, "features_in_step": 4},
    # the beam search costs about beam_width * G^2 forward passes per input: 4-feature
    # patches, as the metric's docstring advises on images (pixels: 100 s per image testbed)
    "NAOPC": {"grouping": 4},
}

#: defaults sized for larger inputs (ImageNet or MNIST images) than the testbeds' (12 x 12
#: images, 24-step series, 12-column tables, 12 tokens), where they do not fit: scaled down
SIZED: dict[str, dict[str, Any]] = {
    "FaithfulnessCorrelation": {"subset_size": 3},  # 224 features; a quarter of the smallest
    "IDSDS": {"patch_size": 4},  # 16 x 16 patches
    "Continuity": {"nr_steps": 12},  # 28 translations (at most 2 W + 1)
    "TopKIntersection": {"k": 0.1},  # 1000 features: here the top 10 %
}

#: arguments a metric needs and has no default for, where the testbeds can give them
REQUIRED: dict[str, dict[str, Any]] = {
    "RelativeRepresentationStability": {"layer_names": "all"},
}


def settings(name: str) -> dict[str, Any]:
    """The constructor arguments a metric gets in the report (its defaults otherwise)."""
    return {**CHEAP.get(name, {}), **SIZED.get(name, {}), **REQUIRED.get(name, {})}


#: settings tried where a metric's default is wrong or undecided on a testbed of one of the
#: modalities (None: any): (metric, constructor arguments, modalities, why it should help)
ALTERNATIVES: list[tuple[str, dict[str, Any], tuple[str, ...] | None, str]] = [
    ("FaithfulnessCorrelation", {"subset_size": 11}, ("series", "tabular"),
     "a subset large enough to take the model out of saturation (11 of 24 steps, 11 of 12 "
     "columns)"),
    ("FaithfulnessCorrelation", {"subset_size": 72}, ("image",),
     "a subset large enough to take the model out of saturation (half the 144 pixels)"),
    ("ROAD", {"score": "confidence"}, None,
     "the change of the target score instead of an accuracy that rarely flips"),
    ("Insertion", {"perturb_baseline": "black"}, None,
     "a black canvas holds none of the evidence a blurred one keeps"),
    ("Infidelity", {"optimal_scaling": True}, None,
     "the error after the best rescaling of the map: no longer a matter of its scale"),
    ("FFidelity", {"quantity": "score"}, None,
     "the drop of the target's probability instead of a 0/1 correctness that removing at "
     "most beta = 10 % of the features rarely flips"),
]

#: Quantus' data types -> evalkit's modality names
_QUANTUS_MODALITIES = {"IMAGE": "image", "TIMESERIES": "series", "TABULAR": "tabular",
                       "TEXT": "tokens"}
#: Quantus arguments that give one score per sample (or per-sample inputs the report needs)
_QUANTUS_PER_SAMPLE: dict[str, dict[str, Any]] = {
    "PixelFlipping": {"return_auc_per_sample": True},
    "MPRT": {"return_average_correlation": True},
    "SmoothMPRT": {"return_average_correlation": True},
}
#: Quantus metrics whose result is a curve per sample, reduced by Quantus' own AUC helper
_QUANTUS_CURVES = ("Selectivity", "RegionPerturbation")
#: Quantus metrics whose result is one value per step for the whole batch (deviation C24)
_QUANTUS_SET_LEVEL = ("SensitivityN",)


# ============================================================================ Quantus
def load_quantus() -> Any | None:
    """The quantus 0.6 oracle with the NumPy shim it needs (deviation C16), or None."""
    from benchmarks._quantus import load_quantus as load

    return load()


class QuantusOutputError(ValueError):
    """A Quantus metric whose result is not one score per sample."""


class QuantusMetric:
    """A Quantus 0.6 metric in the third-party metric protocol of the validity report.

    It scores the testbed's candidate maps with ``quantus.<name>`` (the candidate is the
    ``explain_func``, so re-explaining metrics explain with it), reduced to one score per sample
    where Quantus returns curves (Quantus' own ``calculate_auc``) or a per-percentage dict
    (ROAD: one call per sample, the mean over the percentages); its direction is the one the
    Quantus class declares (what a Quantus user follows). Its family, mask needs and randomness
    are those of the evalkit metric of the same name, and its constructor arguments are the
    settings of :data:`CHEAP` and :data:`SIZED` that Quantus accepts (a share ``k`` becomes a
    count) plus what makes the result per sample; masks that repeat over the channels are
    passed with one channel, the form Quantus asserts. Quantus draws from
    the global RNGs: each call seeds them from ``seed`` inside a fork, and restores them.
    """

    def __init__(self, name: str, quantus: Any, kwargs: Mapping[str, Any] | None = None,
                 seed: int = 0) -> None:
        self.name = name
        self._quantus = quantus
        self._cls = getattr(quantus, name)
        reference = evalkit.metrics.get(name)
        accepted = inspect.signature(self._cls.__init__).parameters
        # the cheap and sized settings, not REQUIRED: Quantus' own default is what those mean
        cheap = {k: v for k, v in {**CHEAP.get(name, {}), **SIZED.get(name, {})}.items()
                 if k in accepted}
        self.kwargs = {**cheap, "return_aggregate": False, **_QUANTUS_PER_SAMPLE.get(name, {}),
                       **(kwargs or {})}
        direction = str(self._cls.score_direction).rsplit(".", 1)[-1]
        self.higher_is_better = direction == "HIGHER"
        self.family = reference.family
        self.needs_masks = bool(reference.needs_masks)
        self.stochastic = bool(reference.stochastic)
        self.softmax = bool(reference.default_softmax)
        self.modalities = tuple(sorted(
            _QUANTUS_MODALITIES[str(d).rsplit(".", 1)[-1]]
            for d in getattr(self._cls, "data_applicability", ())
            if str(d).rsplit(".", 1)[-1] in _QUANTUS_MODALITIES))
        self.seed = seed
        # a mosaic's target quadrants reach Quantus' Focus as its `custom_batch` (the same
        # flags in the same order), so the report judges it on the testbeds that give them
        self.call_options = tuple(o for o in reference.call_options if o == "quadrants")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"quantus.{self.name}({args})"

    def __deepcopy__(self, memo: dict) -> QuantusMetric:
        return type(self)(self.name, self._quantus, copy.deepcopy(self.kwargs, memo),
                             self.seed)

    def __call__(self, model: Any, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, *,
                 s: torch.Tensor | None = None, explain_fn: Any = None,
                 quadrants: Any = None, **_: Any) -> np.ndarray:
        # Quantus draws from the global NumPy RNG: seed it for the call, then restore it
        state = np.random.get_state()  # noqa: NPY002
        try:
            with torch.random.fork_rng():
                np.random.seed(self.seed)  # noqa: NPY002
                torch.manual_seed(self.seed)
                if self.name == "ROAD":  # one curve per call: one call per sample
                    return np.array([self._road_sample(model, x[i:i + 1], y[i:i + 1],
                                                       a[i:i + 1], explain_fn)
                                     for i in range(x.shape[0])])
                return self._reduce(self._run(model, x, y, a, s, explain_fn, quadrants),
                                    x.shape[0])
        finally:
            np.random.set_state(state)  # noqa: NPY002

    def _run(self, model: Any, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor,
             s: torch.Tensor | None, explain_fn: Any, quadrants: Any = None) -> Any:
        def explain_func(model: Any, inputs: Any, targets: Any, **_: Any) -> np.ndarray:
            out = explain_fn(model, torch.as_tensor(np.asarray(inputs), dtype=x.dtype),
                             torch.as_tensor(np.asarray(targets)))
            return torch.as_tensor(out).detach().cpu().numpy()

        kwargs = dict(self.kwargs)
        if isinstance(kwargs.get("k"), float) and 0 < kwargs["k"] < 1:  # Quantus takes counts
            kwargs["k"] = max(1, round(kwargs["k"] * int(np.prod(x.shape[2:] or x.shape[1:]))))
        if self.name == "RandomLogit" and "num_classes" not in kwargs:
            with torch.no_grad():  # Quantus' default of 1000 classes crashes (deviation C11)
                kwargs["num_classes"] = int(model(x[:1]).shape[-1])
        if s is not None and s.ndim == 4 and s.shape[1] > 1 and bool((s == s[:, :1]).all()):
            s = s[:, :1]  # Quantus takes one mask channel; evalkit broadcasts either
        metric = self._cls(**kwargs, disable_warnings=True)
        extra = {} if quadrants is None else {
            "custom_batch": [tuple(int(v) for v in row) for row in np.asarray(quadrants)]}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return metric(model=model, x_batch=x.detach().cpu().numpy(),
                          y_batch=y.detach().cpu().numpy(),
                          a_batch=a.detach().cpu().numpy(),
                          s_batch=None if s is None else s.detach().cpu().numpy(),
                          explain_func=explain_func, device="cpu", softmax=self.softmax,
                          batch_size=int(x.shape[0]), **extra)

    def _road_sample(self, model, x, y, a, explain_fn) -> float:
        out = self._run(model, x, y, a, None, explain_fn)
        if not isinstance(out, Mapping):
            raise QuantusOutputError(f"quantus.ROAD returned {type(out).__name__}, not a dict "
                                     "of percentages")
        return float(np.mean([float(v) for v in out.values()]))

    def _reduce(self, out: Any, n: int) -> np.ndarray:
        if self.name in _QUANTUS_SET_LEVEL:
            raise QuantusOutputError(f"quantus.{self.name} returns one value per step for the "
                                     "whole batch, not one score per sample")
        if isinstance(out, Mapping):
            raise QuantusOutputError(f"quantus.{self.name} returned a dict "
                                     f"({list(out)[:3]}...), not one score per sample")
        if self.name in _QUANTUS_CURVES:
            from quantus.helpers.utils import calculate_auc

            return np.array([calculate_auc(np.asarray(c, dtype=np.float64)) for c in out])
        values = np.asarray(out, dtype=np.float64)
        if values.shape != (n,):
            raise QuantusOutputError(f"quantus.{self.name} returned shape {values.shape} for "
                                     f"{n} samples (a set-level or per-step result), not one "
                                     "score per sample")
        return values


def quantus_metrics(names: Sequence[str], quantus: Any) -> dict[str, QuantusMetric]:
    """The Quantus metrics of the same name as ``names`` (those Quantus 0.6 has)."""
    return {n: QuantusMetric(n, quantus) for n in names
            if isinstance(getattr(quantus, n, None), type)}


# ============================================================================ evalkit
def registered_metrics() -> list[str]:
    frame = evalkit.metrics.list_metrics()
    return [n for n in frame["name"] if evalkit.metrics.get(n).__module__.startswith("evalkit.")]


def evalkit_metrics(names: Sequence[str]) -> dict[str, Any]:
    """Each metric at its defaults, except for :func:`settings`."""
    out = {}
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out[name] = evalkit.metrics.get(name)(**settings(name))
    return out


# ============================================================================ running
def run(metrics: Sequence[str] | None = None, testbeds: Sequence[Any] | None = None, *,
        n: int | None = None, seeds: Sequence[int] = (0, 1, 2), alternatives: bool = True,
        quantus: bool = True) -> dict[str, Any]:
    """Run the report (and the Quantus column, and the alternatives) and return the data that
    ``docs/_data/validity.json`` holds. ``testbeds``: names of the testbed library or
    :class:`~metaeval.validity.Testbed` objects (default: every testbed of the library)."""
    from metaeval.validity import Testbed
    from metaeval.validity import report as report_module

    names = list(metrics) if metrics else registered_metrics()
    torch.set_num_threads(1)
    t0 = _clock()
    if testbeds is None:
        from metaeval.validity.testbeds import list_testbeds

        testbeds = list(list_testbeds())
    beds = []
    for b in testbeds:
        if not isinstance(b, Testbed):
            from metaeval.validity.testbeds import build_testbed

            b = build_testbed(b, n=n)
        beds.append(b)
    timing: dict[str, float] = {"testbeds": _since(t0)}
    t = _clock()
    ours = report_module.validity_report(evalkit_metrics(names), beds, seeds=seeds,
                                         progress=False)
    timing["evalkit"] = _since(t)

    theirs = None
    q = load_quantus() if quantus else None
    if q is not None:
        t = _clock()
        qm = quantus_metrics(names, q)
        if qm:
            theirs = report_module.validity_report(qm, beds, seeds=seeds, progress=False)
        timing["quantus"] = _since(t)

    alt_rows: list[dict[str, Any]] = []
    if alternatives:
        t = _clock()
        alt_rows = _alternatives(ours, beds, names, seeds, report_module)
        timing["alternatives"] = _since(t)
    timing["total"] = _since(t0)
    return _data(ours, theirs, beds, alt_rows, timing, seeds, n, quantus_version=(
        None if q is None else str(getattr(q, "__version__", "?"))))


def _clock() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def _since(start: tuple[float, float]) -> dict[str, float]:
    """CPU seconds of this process (one core: torch runs one thread) and wall seconds."""
    cpu, wall = _clock()
    return {"cpu": round(cpu - start[0], 1), "wall": round(wall - start[1], 1)}


def _alternatives(ours: Any, beds: list[Any], names: Sequence[str], seeds: Sequence[int],
                  report_module: Any) -> list[dict[str, Any]]:
    """Each alternative setting on the testbeds where its metric's default is wrong or
    undecided."""
    rows = []
    v = ours.verdicts
    by_name = {b.name: b for b in beds}
    for metric, kwargs, modalities, why in ALTERNATIVES:
        if metric not in names:
            continue
        failing = v[(v["metric"] == metric) & v["verdict"].isin(["wrong", "undecided"])]
        if modalities is not None:
            failing = failing[failing["modality"].isin(modalities)]
        if failing.empty:
            continue
        label = f"{metric}({', '.join(f'{k}={val!r}' for k, val in kwargs.items())})"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            instance = evalkit.metrics.get(metric)(**{**settings(metric), **kwargs})
        alt = report_module.validity_report({label: instance},
                                            [by_name[t] for t in failing["testbed"]],
                                            seeds=seeds, progress=False)
        for r in alt.verdicts.itertuples():
            default = failing.loc[failing["testbed"] == r.testbed, "verdict"].iloc[0]
            rows.append({"metric": metric, "setting": label, "kwargs": kwargs, "why": why,
                         "testbed": r.testbed, "mechanism": r.mechanism, "default": default,
                         "verdict": r.verdict, "reason": r.reason})
    return rows


def _cells(report: Any) -> dict[str, dict[str, dict[str, str]]]:
    out: dict[str, dict[str, dict[str, str]]] = {}
    for r in report.verdicts.itertuples():
        out.setdefault(r.metric, {})[r.testbed] = {"verdict": r.verdict,
                                                   "reason": _short(r.reason)}
    return out


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _counts(report: Any) -> dict[str, dict[str, int]]:
    table = report.counts(by="family")
    return {str(f): {str(c): int(table.loc[f, c]) for c in table.columns} for f in table.index}


def _data(ours: Any, theirs: Any, beds: list[Any], alt_rows: list[dict[str, Any]],
          timing: dict[str, dict[str, float]], seeds: Sequence[int], n: int | None,
          quantus_version: str | None) -> dict[str, Any]:
    quantus_cells = _cells(theirs) if theirs is not None else {}
    metrics: dict[str, Any] = {}
    for name in ours.metrics:
        card = ours.card(name)
        metrics[name] = {
            "family": card.family,
            "higher_is_better": card.higher_is_better,
            "settings": settings(name),
            "cells": _cells(ours).get(name, {}),
            "quantus": quantus_cells.get(name),
            "alternatives": [r for r in alt_rows if r["metric"] == name],
            "same_name_differences": len(SAME_NAME_DIFFERENT_MEANING.get(name, ())),
        }
    out = {
        "generated_by": "python scripts/validity_report.py --write",
        "config": {"seeds": list(seeds), "n": n, "alpha": ours.config.get("alpha"),
                   "rtol": ours.config.get("rtol"), "cheap_settings": CHEAP,
                   "sized_settings": SIZED, "required_settings": REQUIRED,
                   "torch_threads": torch.get_num_threads(), "quantus": quantus_version,
                   "torch": torch.__version__, "numpy": np.__version__,
                   "python": platform.python_version()},
        "timing_s": timing,
        "load_average": _load(),
        "testbeds": {b.name: {"mechanism": b.mechanism, "modality": b.modality,
                              "description": b.description, "n": b.n} for b in beds},
        "counts": {"evalkit": _counts(ours),
                   "quantus": _counts(theirs) if theirs is not None else None},
        "metrics": metrics,
        "same_name_different_meaning": same_name_rows(),
    }
    return summarise(out)


def summarise(data: dict[str, Any]) -> dict[str, Any]:
    """Each metric's summary from its cells: ``recovers`` (mechanisms with a correct testbed
    and no wrong one), ``fails`` (mechanisms with a wrong testbed), and the testbeds it is
    ``wrong_on``, ``undecided_on`` and ``error_on``."""
    mechanism = {b: t["mechanism"] for b, t in data["testbeds"].items()}
    for m in data["metrics"].values():
        by: dict[str, list[str]] = {}
        for bed, cell in m["cells"].items():
            by.setdefault(cell["verdict"], []).append(bed)
        wrong = {mechanism[b] for b in by.get("wrong", [])}
        m["recovers"] = sorted({mechanism[b] for b in by.get("correct", [])} - wrong)
        m["fails"] = sorted(wrong)
        m["wrong_on"] = by.get("wrong", [])
        m["undecided_on"] = by.get("undecided", [])
        m["error_on"] = by.get("error", [])
        for old in ("undecided", "errors"):
            m.pop(old, None)
    return data


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ============================================================================ writing
_GLYPH = {"correct": "✓", "wrong": "✗", "undecided": "?", "not applicable": "·", "error": "!"}
REPORT_BEGIN = "<!-- validity report card: begin (generated) -->"
REPORT_END = "<!-- validity report card: end -->"
DIFF_BEGIN = "<!-- validity quantus differences: begin (generated) -->"
DIFF_END = "<!-- validity quantus differences: end -->"
SAME_BEGIN = "<!-- same-name table: begin (generated) -->"
SAME_END = "<!-- same-name table: end -->"


def _counts_table(data: dict[str, Any]) -> list[str]:
    verdicts = ("correct", "wrong", "undecided", "not applicable", "error")
    lines = ["| family | library | " + " | ".join(verdicts) + " |",
             "|---|---|" + "|".join("---:" for _ in verdicts) + "|"]
    ours, theirs = data["counts"]["evalkit"], data["counts"]["quantus"] or {}
    for family in ours:
        for lib, table in (("evalkit", ours), ("Quantus 0.6", theirs)):
            if family in table:
                row = table[family]
                lines.append(f"| {family} | {lib} | "
                             + " | ".join(str(row.get(v, 0)) for v in verdicts) + " |")
    return lines


def _grid(data: dict[str, Any]) -> list[str]:
    beds = list(data["testbeds"])
    lines = ["| metric | " + " | ".join(beds) + " |", "|---|" + "|".join(":-:" for _ in beds)
             + "|"]
    for name, m in data["metrics"].items():
        cells = []
        for b in beds:
            ours = _GLYPH[m["cells"].get(b, {}).get("verdict", "not applicable")]
            q = m["quantus"]
            if q is not None and b in q:
                ours += " / " + _GLYPH[q[b]["verdict"]]
            cells.append(ours)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _cpu(timing: dict[str, Any], part: str) -> str:
    return f"{timing[part]['cpu']:.0f} s" if part in timing else "not run"


def _settings_text(table: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{name} " + ", ".join(f"`{k}={v!r}`" for k, v in kw.items())
                     for name, kw in table.items())


def report_card_markdown(data: dict[str, Any]) -> str:
    t = data["timing_s"]
    load = data.get("load_average")
    lines = [
        REPORT_BEGIN,
        "",
        f"Generated by `{data['generated_by']}` ({len(data['metrics'])} metrics x "
        f"{len(data['testbeds'])} testbeds, seeds {data['config']['seeds']}, alpha "
        f"{data['config']['alpha']}, rtol {data['config']['rtol']}; Quantus "
        f"{data['config']['quantus'] or 'not installed'}). Every metric runs at its defaults, "
        "except: fewer samples where a default is sized for a paper's figure ("
        + _settings_text(data["config"]["cheap_settings"]) + "); sizes scaled to the "
        "testbeds' small inputs where a default assumes ImageNet or MNIST images ("
        + _settings_text(data["config"]["sized_settings"]) + "); arguments without a default ("
        + _settings_text(data["config"]["required_settings"]) + "). The data are in "
        "`docs/_data/validity.json`; the metric catalogue's \"report card\" column reads them.",
        "",
        f"Time on one core (`torch.set_num_threads(1)`; CPU seconds of the process): "
        f"{t['total']['cpu']:.0f} s in all: evalkit {_cpu(t, 'evalkit')}, the Quantus column "
        f"{_cpu(t, 'quantus')}, the alternative settings {_cpu(t, 'alternatives')}, building "
        f"the testbeds {_cpu(t, 'testbeds')} ({t['total']['wall']:.0f} s of wall time"
        + (f" on a shared machine with load average {load[0]:.1f}" if load else "") + ").",
        "",
        "### Counts per family",
        "",
        *_counts_table(data),
        "",
        "### Metric x testbed",
        "",
        "✓ correct, ✗ wrong, ? undecided, · not applicable, ! error; evalkit / Quantus 0.6 "
        "where Quantus has a metric of the same name.",
        "",
        *_grid(data),
        "",
    ]
    alts = [a for m in data["metrics"].values() for a in m["alternatives"]]
    if alts:
        lines += ["### Settings that recover a failure", "",
                  "| metric | testbed | default | setting | verdict | why |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {a['metric']} | {a['testbed']} | {a['default']} | `{a['setting']}` | "
                  f"{a['verdict']} | {a['why']} |" for a in alts]
        lines.append("")
    lines.append(REPORT_END)
    return "\n".join(lines) + "\n"


_JUDGED = ("correct", "wrong", "undecided")


def differences_markdown(data: dict[str, Any]) -> str:
    disagree, errors = [], {}
    for name, m in data["metrics"].items():
        q = m["quantus"]
        if not q:
            continue
        for bed, cell in m["cells"].items():
            theirs = q.get(bed, {})
            if theirs.get("verdict") == "error":
                kind = theirs["reason"].split(":", 1)[0]
                errors.setdefault(name, {}).setdefault(kind, []).append(bed)
            elif (cell["verdict"] in _JUDGED and theirs.get("verdict") in _JUDGED
                  and theirs["verdict"] != cell["verdict"]):
                disagree.append(f"| {name} | {bed} | {cell['verdict']} | {theirs['verdict']} |")
    lines = [
        DIFF_BEGIN,
        "",
        "The metrics below share their name with a Quantus 0.6 metric but compute something "
        "else at their defaults, so their verdicts need not agree "
        "(`metaeval.validity.quantus_names.SAME_NAME_DIFFERENT_MEANING`; also in "
        "[Migrating from Quantus](migrating-quantus.md#same-name-different-meaning)):",
        "",
        same_name_markdown("migrating-quantus.md").rstrip("\n"),
        "",
    ]
    if disagree:
        lines += ["Cells that both libraries judge, with different verdicts (the reasons are in "
                  "`docs/_data/validity.json`):", "",
                  "| metric | testbed | evalkit | Quantus 0.6 |", "|---|---|---|---|",
                  *disagree, ""]
    if errors:
        lines += ["Cells where the Quantus metric raised (or returned no per-sample scores), by "
                  "exception type:", "", "| metric | exception | testbeds |", "|---|---|---|"]
        for name, kinds in errors.items():
            for kind, beds in kinds.items():
                lines.append(f"| {name} | `{kind}` | {', '.join(beds)} |")
        lines.append("")
    lines.append(DIFF_END)
    return "\n".join(lines) + "\n"


def _replace_section(text: str, heading: str, begin: str, end: str, body: str) -> str:
    """Put ``body`` (which starts with ``begin`` and ends with ``end``) under ``heading``:
    replace the generated block if there is one, else append the section at the end."""
    if begin in text and end in text:
        return re.sub(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", lambda _: body,
                      text, flags=re.S)
    return text.rstrip("\n") + f"\n\n{heading}\n\n{body}"


def compact(data: dict[str, Any]) -> dict[str, Any]:
    """The data as committed: reasons kept where a verdict needs one (wrong, undecided, error),
    shortened; "correct" and "not applicable" cells hold the verdict only (the full reasons
    come with a run: ``ValidityReport.verdicts``)."""
    out = copy.deepcopy(data)
    for m in out["metrics"].values():
        for cells in (m["cells"], m["quantus"] or {}):
            for cell in cells.values():
                if cell["verdict"] in ("correct", "not applicable"):
                    cell.pop("reason", None)
                elif "reason" in cell:
                    cell["reason"] = _short(cell["reason"], 160)
    return out


def write(data: dict[str, Any]) -> None:
    data = compact(summarise(data))
    DATA_FILE.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, sort_keys=False, default=_json, ensure_ascii=False)
    # one line per cell: {"verdict": ...[, "reason": ...]}
    text = re.sub(r'\{\n\s+("verdict": "[^"]*")(,\n\s+("reason": "(?:[^"\\]|\\.)*"))?\n\s+\}',
                  lambda m: "{" + m.group(1) + (", " + m.group(3) if m.group(3) else "") + "}",
                  text)
    DATA_FILE.write_text(text + "\n", encoding="utf-8")
    page = VALIDITY_PAGE.read_text(encoding="utf-8") if VALIDITY_PAGE.exists() else (
        "# Validity\n")
    page = _replace_section(page, "## Report card", REPORT_BEGIN, REPORT_END,
                            report_card_markdown(data))
    page = _replace_section(page, "## Differences from Quantus", DIFF_BEGIN, DIFF_END,
                            differences_markdown(data))
    VALIDITY_PAGE.write_text(page, encoding="utf-8")
    migration = MIGRATION_PAGE.read_text(encoding="utf-8")
    migration = _replace_section(migration, "## Same name, different meaning", SAME_BEGIN,
                                 SAME_END, f"{SAME_BEGIN}\n{same_name_markdown('')}{SAME_END}\n")
    MIGRATION_PAGE.write_text(migration, encoding="utf-8")


def _json(value: Any) -> Any:
    if isinstance(value, np.integer | np.floating):
        v = value.item()
        return None if isinstance(v, float) and not math.isfinite(v) else v
    if isinstance(value, range | tuple | set):
        return list(value)
    return repr(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", nargs="+", help="registered names (default: all)")
    parser.add_argument("--testbeds", nargs="+", help="testbed names (default: all)")
    parser.add_argument("--n", type=int, default=None, help="samples per testbed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-quantus", action="store_true", help="skip the Quantus column")
    parser.add_argument("--no-alternatives", action="store_true")
    parser.add_argument("--write", action="store_true",
                        help="rewrite docs/_data/validity.json and the generated docs sections")
    parser.add_argument("--data", type=Path, help="also write the data file here")
    parser.add_argument("--from-data", type=Path,
                        help="render the docs from this data file instead of running")
    args = parser.parse_args(argv)
    if args.from_data is not None:
        data = json.loads(args.from_data.read_text(encoding="utf-8"))
    else:
        data = run(args.metrics, args.testbeds, n=args.n, seeds=args.seeds,
                   alternatives=not args.no_alternatives, quantus=not args.no_quantus)
    if args.data is not None:
        args.data.write_text(json.dumps(data, indent=1, default=_json) + "\n", encoding="utf-8")
    if args.write:
        write(data)
    counts = data["counts"]
    print(json.dumps({"timing_s": data["timing_s"], "evalkit": counts["evalkit"],
                      "quantus": counts["quantus"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
