"""Run the benchmark specs and write the markdown table.

Regenerate the whole of ``docs/benchmarks.md`` (every spec on W1 and W2, the sharing suites,
the W3 meta-evaluation against MetaQuantus, the tabular, series and text workloads W4-W6,
machine details) with one command::

    python -m benchmarks.run --full

``--full`` stands for the arguments in :data:`FULL_ARGS` (CPU time of this process, one torch
thread, W2 at N=4, W4 at 2,000 rows, W5 at 64 series, at most ``--case-budget`` seconds of
timed rounds per case); it takes about 2 hours of one core. Quantus 0.6 must be installed (it
is in the dev venv) and MetaQuantus 0.0.5 in ``.oracle/metaquantus`` (``pip install --no-deps
--target .oracle/metaquantus metaquantus==0.0.5``, see ``benchmarks/_metaquantus.py``); without
them their columns stay empty.
Other uses::

    python -m benchmarks.run                              # every spec on W1 and W2, CPU
    python -m benchmarks.run --metrics PixelFlipping --workloads W1 --repeats 5
    python -m benchmarks.run --families complexity --update   # refresh only these rows
    python -m benchmarks.run --quick --no-quantus --out -     # smoke run, print only
    python -m benchmarks.run --metrics PixelFlipping --workloads W1 --conditions fresh used
    python -m benchmarks.run --metrics "MetaEvaluation (W3)" --plain 0 1  # + a plain script

    python -m benchmarks.run --render                     # the page again from the data

The measured rows and the runs they came from are stored in ``--data`` (for the default
``--out docs/benchmarks.md``: ``benchmarks/data/results.json``, committed; see
:mod:`benchmarks.store`), and the page is rendered from them, so ``--update`` can replace some
rows and keep the others (each row says which run it came from).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import store
from ._quantus import load_quantus
from .harness import (
    CONDITIONS,
    Context,
    Result,
    dirty_process,
    plain_process_times,
    run_case,
    run_conditions,
    set_clock,
    skipped_result,
)
from .specs import FAMILY_MODULES, all_specs, metric_needs_spec, select_specs
from .workloads import MODALITY_WORKLOADS, WORKLOADS, get_workload

__all__ = ["COLUMNS", "FULL_ARGS", "PAGE_PATH", "machine_info", "main", "render_markdown",
           "render_page", "run_benchmarks"]

COLUMNS = [
    "metric", "family", "workload", "settings", "ours (s)", "Quantus (s)",
    "speed-up (Quantus / ours)", "floor (s)", "floor ratio (ours / floor)",
    "ours fwd calls / rows", "Quantus fwd calls / rows", "explainer share", "agreement", "note",
    "rounds",
]

#: what ``--full`` stands for: the settings of the committed docs/benchmarks.md. CPU time of
#: this one-thread process is far less sensitive to other processes on a shared machine than wall
#: time; W2 (ResNet-18 at 224 x 224) runs on 4 of its 16 samples, W3 on its 64 (the issue's
#: setting: at N=16 MetaQuantus' fixed per-call costs, e.g. its ~1,000 gc.collect() calls,
#: inflate the ratio) and slow cases get fewer timed rounds (at most 15 s of them), so the
#: whole run takes about 2 hours of one core. Specs with a ``scale`` (the model-free
#: localisation and complexity metrics: W1 at 1,024 samples, W2 at 16) run at their own N.
#: W4 and W5 run at 2,000 of their 10,000 rows and 64 of their 256 series
#: (:data:`MODALITY_N_WHY`), W6 at its 128 texts.
FULL_ARGS = ("--workloads", "W1", "W2", "W4", "W5", "W6", "--n", "W2=4", "W3=64", "W4=2000",
             "W5=64", "--repeats", "3",
             "--case-budget", "15",
             "--threads", "1", "--clock", "cpu", "--out", "docs/benchmarks.md")

#: every finished case of a run, one JSON line each, in ``run-<pid>.jsonl`` (git-ignored): what
#: is left of an interrupted run
PARTIAL_DIR = Path(__file__).resolve().parent / "results"

#: the committed page, rendered from :data:`benchmarks.store.DATA_PATH`
PAGE_PATH = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


# --------------------------------------------------------------------------- machine details
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + (" (uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "n/a"


def machine_info(device: torch.device, quantus: Any) -> dict[str, Any]:
    import evalkit

    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "quantus": "not used" if quantus is None else getattr(quantus, "__version__", "?"),
        "evalkit": f"{evalkit.__version__} (git {_git_commit()})",
        "device": str(device),
    }
    try:
        import captum

        info["captum"] = captum.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# --------------------------------------------------------------------------- running
def run_benchmarks(
    *,
    workloads: Sequence[str] = ("W1", "W2"),
    metrics: Sequence[str] | None = None,
    families: Sequence[str] | None = None,
    repeats: int = 3,
    device: str = "cpu",
    quick: bool = False,
    use_quantus: bool = True,
    n: dict[str, int] | None = None,
    min_time: float | None = None,
    threads: int | None = None,
    clock: str = "wall",
    max_case_s: float | None = None,
    verbose: bool = True,
    condition: str | None = None,
    conditions: Sequence[str] | None = None,
    plain_threads: Sequence[int] | None = None,
) -> tuple[list[Result], dict[str, Any]]:
    """Run the selected specs on the selected workloads; returns (results, run metadata).

    ``condition``: the state of this process for each case (``"used"``: run
    :func:`~benchmarks.harness.dirty_process` before it); rows get ``extra["condition"]``.
    ``conditions``: run each case in a new process per condition instead (see
    :data:`~benchmarks.harness.CONDITIONS`). ``plain_threads``: also time the spec's plain
    script (:data:`~benchmarks.harness.PLAIN_SCRIPTS`) in a plain process, wall time, at
    these torch thread counts (0: torch's default); rows get ``extra["plain_wall_s"]`` etc."""
    dev = torch.device(device)
    if clock == "cpu" and dev.type == "cuda":
        raise ValueError("clock='cpu' cannot time CUDA work; use the wall clock.")
    if threads is not None:
        torch.set_num_threads(threads)
    set_clock(clock)
    quantus = load_quantus() if use_quantus else None
    specs = select_specs(list(metrics) if metrics else None,
                         list(families) if families else None)
    if quick and not metrics:
        specs = [s for s in specs if s.smoke]
    if min_time is None:
        min_time = 0.0 if quick else 0.2
    meta = machine_info(dev, quantus)
    from .specs import IMPORT_ERRORS

    for mod, err in IMPORT_ERRORS.items():
        meta[f"skipped spec module {mod}"] = err
        if verbose:
            print(f"skipped benchmarks.specs.{mod}: {err}", file=sys.stderr)
    meta["clock"] = ("wall (time.perf_counter)" if clock == "wall"
                     else "CPU time of this process (time.process_time)")
    meta["load before (1/5/15 min)"] = _load()
    results: list[Result] = []
    if conditions:  # each case in new processes, one per condition: nothing runs here
        cases = [(w, s.name) for w in workloads for s in specs
                 if w in s.workloads or w in dict(s.skip)]
        settings = dict(repeats=repeats, device=device, quick=quick, use_quantus=use_quantus,
                        n=n, min_time=min_time, threads=threads, clock=clock,
                        max_case_s=max_case_s)
        results, meta["conditions"] = run_conditions(
            cases, conditions, settings, plain_threads=plain_threads,
            log=(lambda text: print(text, file=sys.stderr, flush=True)) if verbose else None,
            one_line=_one_line)
        meta["load after (1/5/15 min)"] = _load()
        return results, meta
    if condition is not None:
        meta["condition"] = condition + (" (benchmarks.harness.dirty_process() before each "
                                         "case)" if condition == "used" else "")
    partial = None
    if not quick:
        partial = PARTIAL_DIR / f"run-{os.getpid()}.jsonl"
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text("", encoding="utf-8")
        if verbose:
            print(f"finished cases are appended to {partial}", file=sys.stderr)
    from evalkit.models import wrap_model
    from evalkit.runner import ForwardRunner

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for wname in workloads:
            todo = [s for s in specs if wname in s.workloads or wname in dict(s.skip)]
            if not todo:
                continue
            w = get_workload(wname, (n or {}).get(wname), dev, quick=quick)
            chunk = ForwardRunner(wrap_model(w.model)).chunk_size(w.row_shape, w.x.dtype)
            ctx = Context(batch_size=chunk, device=dev, quantus=quantus, quick=quick,
                          n=dict(n or {}))
            meta.setdefault("workloads", {})[wname] = (
                f"{w.description}; runner batch {chunk} rows")
            for spec in todo:
                if wname not in spec.workloads:
                    results.append(skipped_result(spec, w, ctx, dict(spec.skip)[wname]))
                    continue
                ws = w
                n_scale = dict(spec.scale).get(wname)
                if n_scale is not None and not quick:
                    ws = get_workload(wname, n_scale, dev)
                if verbose:
                    print(f"[{wname}] {spec.name} ...", file=sys.stderr, flush=True)
                if condition == "used":
                    dirty_process()
                t0 = time.perf_counter()
                res = run_case(spec, ws, ctx, repeats=repeats, min_time=min_time,
                               max_case_s=max_case_s,
                               verbose=verbose and bool(os.environ.get("BENCH_TRACEBACK")))
                res.extra["case_wall_s"] = round(time.perf_counter() - t0, 1)
                if condition is not None:
                    res.extra["condition"] = condition
                if plain_threads:
                    res.extra.update(plain_process_times(
                        spec.name, ctx, tuple(t or None for t in plain_threads)))
                if partial is not None:  # survives an interrupted run
                    with partial.open("a", encoding="utf-8") as f:
                        f.write(json.dumps(store.record(res)) + "\n")
                results.append(res)
                if verbose:
                    print("    " + _one_line(res), file=sys.stderr, flush=True)
    meta["load after (1/5/15 min)"] = _load()
    return results, meta


def _one_line(r: Result) -> str:
    if r.error:
        return f"ERROR {r.error}"
    parts = [f"ours {_fmt_s(r.ours_s)}"]
    if not math.isnan(r.quantus_s):
        parts.append(f"quantus {_fmt_s(r.quantus_s)} (x{r.speedup:.2f})")
    if r.quantus_error:
        parts.append(f"quantus error: {r.quantus_error}")
    if not math.isnan(r.floor_s):
        parts.append(f"floor {_fmt_s(r.floor_s)} (ratio {r.floor_ratio:.2f})")
    if r.agreement:
        parts.append(r.agreement)
    return ", ".join(parts)


# --------------------------------------------------------------------------- markdown
def _fmt_s(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 0.1:
        return f"{v:.2f}"
    if v >= 0.001:
        return f"{v:.4f}"
    return f"{v:.2e}"


def _fmt_ratio(v: float) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:.2f}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _row_cells(r: Result) -> list[str]:
    quantus = _fmt_s(r.quantus_s)
    if r.quantus_error:
        quantus = f"error: {r.quantus_error}"
    note = r.note
    if r.error:
        note = f"**{r.error}**" + (f"; {note}" if note else "")
    if r.extra.get("floor_error"):
        note += f" (floor failed: {r.extra['floor_error']})"
    part = _extra_s(r, "part_s")
    if part and r.floor_s > 0:
        note += (f" ({r.extra['part']}: {_fmt_s(part)} s of ours, {part / r.floor_s:.2f} x "
                 "the floor)")
    q_floor = _extra_s(r, "quantus_floor_s")
    if q_floor is not None:
        note += f" (the model work of Quantus' own rows: {_fmt_s(q_floor)} s)"
    written = _extra_s(r, "written_floor_s")
    if written is not None and written > 0 and r.floor_s > 0:
        note += (f" (the floor with each input row written once: {_fmt_s(written)} s, "
                 f"{written / r.floor_s:.2f} x the floor; ours / that {r.ours_s / written:.2f})")
    drawn = _extra_s(r, "drawn_floor_s")
    if drawn is not None and drawn > 0 and r.floor_s > 0:
        note += (f" (that and drawing as many random numbers as ours, "
                 f"{r.extra.get('drawn_values', '?')}, with torch.rand: {_fmt_s(drawn)} s, "
                 f"{drawn / r.floor_s:.2f} x the floor; ours / that {r.ours_s / drawn:.2f})")
    note += _required_note(r)
    note += _reference_note(r)
    share = "—" if r.explainer_share is None else f"{100 * r.explainer_share:.0f} %"
    if r.extra.get("explained_rows") is not None and r.explainer_share is not None:
        share += f" ({r.extra['explained_rows']} rows explained)"
    rounds = r.extra.get("rounds")
    rounds_text = "—" if rounds is None else ("warm-up" if rounds == 0 else str(rounds))
    return [
        r.metric, r.family, f"{r.workload} (N={r.n})", r.settings, _fmt_s(r.ours_s), quantus,
        _fmt_ratio(r.speedup), _fmt_s(r.floor_s), _fmt_ratio(r.floor_ratio),
        r.ours_fwd.text() if r.ours_fwd else "—",
        r.quantus_fwd.text() if r.quantus_fwd else "—",
        share, r.agreement or "—", note, rounds_text,
    ]


def _required_note(r: Result) -> str:
    """The required-work floor's text in a row's note, or ``""`` where it was not timed."""
    required = _extra_s(r, "required_floor_s")
    if required is None or not required > 0 or not r.floor_s > 0:
        return ""
    base = ("drawn" if _extra_s(r, "drawn_floor_s") else
            "written" if _extra_s(r, "written_floor_s") else "explain()")
    return (f" (the {base} floor with the work the metric's definition requires, "
            f"{r.extra.get('required_steps', '?')}: {_fmt_s(required)} s, "
            f"{required / r.floor_s:.2f} x the floor; ours / that {r.ours_s / required:.2f})")


def _reference_speedup(r: Result) -> float:
    """The reference implementation's time / ours (> 1: we are faster), NaN without one."""
    ref = _extra_s(r, "reference_s")
    return ref / r.ours_s if ref is not None and r.ours_s > 0 else math.nan


def _reference_note(r: Result) -> str:
    """The row's reference implementation (another library than Quantus), for its note."""
    name = r.extra.get("reference")
    if not name:
        return ""
    if r.extra.get("reference_error"):
        return f" ({name} failed: {r.extra['reference_error']})"
    fwd = r.extra.get("reference_fwd")
    text = (f" ({name}: {_fmt_s(r.extra.get('reference_s', math.nan))} s, speed-up "
            f"{_fmt_ratio(_reference_speedup(r))}")
    if fwd:
        text += f", its fwd calls / rows {fwd[0]} / {fwd[1]}"
    if r.extra.get("reference_agreement"):
        text += f"; agreement: {r.extra['reference_agreement']}"
    return text + ")"


def _reference_lines(results: list[Result]) -> list[str]:
    """Rows timed against another library's implementation (``Case.reference``)."""
    rows = [r for r in results if r.extra.get("reference") and _measured(r)]
    if not rows:
        return []
    lines = ["Metrics that Quantus lacks but another library ships are timed against that "
             "library where it imports, in the same alternating rounds (the row's note has the "
             "same numbers):", "",
             "| metric | workload | reference | ours (s) | reference (s) | speed-up (reference "
             "/ ours) | fwd calls / rows: ours; reference | agreement |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fwd = r.extra.get("reference_fwd")
        ours_fwd = r.ours_fwd.text() if r.ours_fwd else "—"
        ref_fwd = f"{fwd[0]} / {fwd[1]}" if fwd else "—"
        ref = (f"error: {r.extra['reference_error']}" if r.extra.get("reference_error")
               else _fmt_s(r.extra.get("reference_s", math.nan)))
        lines.append("| " + " | ".join(_cell(c) for c in [
            r.metric, f"{r.workload} (N={r.n})", r.extra["reference"], _fmt_s(r.ours_s), ref,
            _fmt_ratio(_reference_speedup(r)), f"{ours_fwd}; {ref_fwd}",
            r.extra.get("reference_agreement") or "—"]) + " |")
    return [*lines, ""]


def _shared_note(meta: dict[str, Any]) -> str:
    """A sentence when the load averages show other processes competing for the cores."""
    loads = []
    for key in ("load before (1/5/15 min)", "load after (1/5/15 min)"):
        try:
            loads.append(float(str(meta.get(key, "")).split("/")[0]))
        except ValueError:
            pass
    cores = meta.get("cores") or 1
    if not loads or max(loads) < 0.5 * cores + 1:
        return ""
    how = ("Timings are this process's CPU time"
           if str(meta.get("clock", "")).startswith("CPU") else "Timings are wall time")
    return (f"**Shared machine**: the 1-minute load average reached {max(loads):.1f} on "
            f"{cores} cores, so other processes competed for the CPU during this run. "
            f"{how} with {meta.get('torch threads')} torch thread(s); ratios measured in "
            "alternation are more reliable than absolute seconds.")


def _sorted(results: list[Result]) -> list[Result]:
    fam = list(FAMILY_MODULES)
    spec_order = {s.name: i for i, s in enumerate(all_specs())}

    def key(r: Result) -> tuple[int, int, str]:
        return (fam.index(r.family) if r.family in fam else len(fam),
                spec_order.get(r.metric, 10**6), r.workload)

    return sorted(results, key=key)


# --------------------------------------------------------------------------- targets
#: issue 3/6/11 targets: ours within this factor of the floor ...
FLOOR_TARGET = 1.25
#: ... never slower than Quantus ...
QUANTUS_TARGET = 1.0
#: ... and this much faster where Quantus 0.6 loops in Python per sample or per feature
#: (issue 3's list, plus the other metrics with such a loop)
LOOP_TARGET = 5.0
PYTHON_LOOP_METRICS = ("ROAD", "IROF", "Infidelity", "NonSensitivity", "AUC", "RandomLogit",
                       "EfficientMPRT")
#: issue 9: W3 this much faster than metaquantus 0.0.5 run per metric
META_TARGET = 10.0
#: speed-ups and floor ratios this close to a target are within the run-to-run noise
NOISE = 0.05


@functools.cache
def _specs_by_name() -> dict[str, Any]:
    return {s.name: s for s in all_specs()}


def _spec_of(r: Result) -> Any:
    """The spec a row came from (None for rows of specs that no longer exist)."""
    return _specs_by_name().get(r.metric)


def _registered(r: Result) -> str:
    """The registered metric (or explanation method) a row measures; "" for suites/W3."""
    spec = _spec_of(r)
    return spec.registered if spec is not None else r.metric.split("[", 1)[0]


def _speedup_target(r: Result) -> float | None:
    spec = _spec_of(r)
    return None if spec is None else dict(spec.speedup_targets).get(r.workload)


def _measured(r: Result) -> bool:
    return not r.error and not r.extra.get("skipped") and math.isfinite(r.ours_s)


def _checks(r: Result) -> dict[str, bool | None]:
    """Per target: True (met), False (missed), None (does not apply / not measured).
    The 5x target is None where Quantus itself is within 5x of the floor (it cannot be
    reached: the floor target decides there)."""
    out: dict[str, bool | None] = {"floor": None, "quantus": None, "loop": None, "spec": None}
    if not _measured(r) or not _registered(r):
        return out
    if math.isfinite(r.floor_ratio):
        out["floor"] = r.floor_ratio <= FLOOR_TARGET
    if math.isfinite(r.speedup):
        out["quantus"] = r.speedup >= QUANTUS_TARGET
        if _registered(r) in PYTHON_LOOP_METRICS:
            out["loop"] = _reachable_check(r, LOOP_TARGET)
        target = _speedup_target(r)
        if target is not None:
            out["spec"] = _reachable_check(r, target)
    return out


def _reachable_check(r: Result, target: float) -> bool | None:
    """speed-up >= target; None where Quantus itself is within ``target`` of the floor (no
    implementation doing the same model work can be that much faster)."""
    reachable = not (r.floor_s > 0) or r.quantus_s / r.floor_s >= target
    return (r.speedup >= target) if reachable else None


def _count(results: list[Result], key: str) -> str:
    """'met/measured metrics (met/measured rows)' for one target."""
    rows = [(r, _checks(r)[key]) for r in results]
    rows = [(r, ok) for r, ok in rows if ok is not None]
    if not rows:
        return "—"
    by_metric: dict[str, bool] = {}
    for r, ok in rows:
        name = _registered(r)
        by_metric[name] = by_metric.get(name, True) and bool(ok)
    return (f"{sum(by_metric.values())}/{len(by_metric)} ({sum(ok for _, ok in rows)}/"
            f"{len(rows)} rows)")


def _registry() -> dict[str, list[str]]:
    """family -> registered metric names (explanation methods for ``explainers``)."""
    out: dict[str, list[str]] = {}
    try:
        from evalkit.metrics import list_metrics

        frame = list_metrics()
        for name, fam in zip(frame["name"], frame["family"], strict=True):
            out.setdefault(str(fam), []).append(str(name))
    except Exception:  # rendering must not fail on a registry problem
        pass
    try:
        from evalkit.explain.core import available_methods

        out["explainers"] = list(available_methods())
    except Exception:
        pass
    return out


def _declared_modalities() -> dict[str, tuple[str, ...]]:
    """registered metric -> the modalities its class declares ({} when the registry cannot
    say)."""
    try:
        from evalkit.metrics import list_metrics

        frame = list_metrics()
        return {str(n): tuple(m) for n, m in zip(frame["name"], frame["modalities"],
                                                  strict=True)}
    except Exception:  # rendering must not fail on a registry problem
        return {}


def _needs_spec(name: str) -> bool:
    """Whether registered metric ``name`` needs a spec (True when the registry cannot say)."""
    try:
        return metric_needs_spec(name)
    except Exception:  # rendering must not fail on a registry problem
        return True


def _spec_targets_text() -> str:
    """'>= 10x on W1 for AUC, Focus, ...; >= 2x on W1, W2 for MPRT, ...' from the specs."""
    groups: dict[tuple[float, tuple[str, ...]], list[str]] = {}
    for spec in all_specs():
        by_target: dict[float, list[str]] = {}
        for wname, target in spec.speedup_targets:
            by_target.setdefault(target, []).append(wname)
        for target, wnames in by_target.items():
            names = groups.setdefault((target, tuple(wnames)), [])
            if spec.registered not in names:
                names.append(spec.registered)
    if not groups:
        return "none"
    return "; ".join(f">= {t:g}x on {', '.join(ws)} for {', '.join(names)}"
                     for (t, ws), names in sorted(groups.items(), reverse=True))


def _summary_lines(results: list[Result]) -> list[str]:
    reg = _registry()
    fams = [f for f in FAMILY_MODULES if f != "metaeval"]
    modal = [w for w in MODALITY_WORKLOADS if any(r.workload == w for r in results)]
    all_w = ["W1", "W2", *modal]
    lines = [
        f"| family | registered | with rows ({' / '.join(all_w)}) | floor ratio <= "
        f"{FLOOR_TARGET:g} | never slower than Quantus | >= {LOOP_TARGET:g}x where Quantus "
        "loops in Python | the family's own speed-up target |",
        "|---|---|---|---|---|---|---|",
    ]
    declared = _declared_modalities()
    undeclared_rows: list[str] = []  # W4-W6: declaring the modality, without a row there
    missing_all: list[str] = []
    unbenchmarked: list[str] = []  # without rows, their class tagged benchmark_spec = False
    for fam in fams:
        rows = [r for r in results if r.family == fam and _registered(r)]
        names = reg.get(fam, [])
        covered = {w: {_registered(r) for r in rows if r.workload == w and
                       (_measured(r) or r.extra.get("skipped"))} for w in all_w}
        for w in modal:
            undeclared_rows += [f"{n} ({w})" for n in names
                                if MODALITY_WORKLOADS[w] in declared.get(n, ())
                                and n not in covered[w]]
        missing = [n for n in names if not any(n in covered[w] for w in all_w)]
        unbenchmarked += [n for n in missing if fam != "explainers" and not _needs_spec(n)]
        missing = [n for n in missing if n not in unbenchmarked]
        missing_all += missing
        lines.append(
            f"| {fam} | {len(names) or '—'} | "
            f"{' / '.join(str(len(covered[w])) for w in all_w)} | "
            f"{_count(rows, 'floor')} | {_count(rows, 'quantus')} | {_count(rows, 'loop')} | "
            f"{_count(rows, 'spec')} |")
    lines.append("")
    lines.append(
        "Cells: metrics (explanation methods for *explainers*) meeting the target on every row "
        "where it applies / metrics it applies to, then the same in rows (metric x workload x "
        "variant). The floor target applies to rows with model work, the Quantus target to "
        "rows with a Quantus equivalent that ran, the "
        f"{LOOP_TARGET:g}x target to {', '.join(PYTHON_LOOP_METRICS)} (Quantus 0.6 loops in "
        "Python per sample or feature) where Quantus itself is at least "
        f"{LOOP_TARGET:g}x the floor (otherwise no implementation can be {LOOP_TARGET:g}x "
        "faster and the floor target decides). The family's own target: "
        f"{_spec_targets_text()}, on the same terms (checked where Quantus itself is that far "
        "above the floor). Suites and W3 are in their own sections.")
    if missing_all:
        lines += ["", f"**Registered but without rows**: {', '.join(sorted(missing_all))}."]
    else:
        lines += ["", "Every registered metric and explanation method has rows (a row may say "
                      "why it does not run on a workload)."]
    if modal:
        lines += ["", (f"**Declaring the modality of {', '.join(modal)} but without a row "
                       f"there**: {', '.join(undeclared_rows)}.") if undeclared_rows else
                  f"Every registered metric declaring the modality of {', '.join(modal)} "
                  "(tabular, series, tokens) has a row there (a row may say why it does not "
                  "run)."]
    if unbenchmarked:
        lines += ["", "Registered without a benchmark (their class declares `benchmark_spec = "
                      f"False`): {', '.join(sorted(unbenchmarked))}."]
    lines.append("")
    return lines


def _extra_s(r: Result, key: str) -> float | None:
    """Seconds stored in ``r.extra[key]`` if measured: ``"part_s"`` (the timed part of our work,
    e.g. ROAD's imputation), ``"quantus_floor_s"`` (the model work of the rows Quantus
    forwards, where they are not ours), ``"written_floor_s"`` (the floor with each input
    row written once before its forward: W4-W6), ``"drawn_floor_s"`` (that and the random
    numbers ours drew) or ``"required_floor_s"`` (that and the ranking and scoring the
    metric's definition requires)."""
    v = r.extra.get(key)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _part_floor(r: Result) -> float | None:
    """(floor + part) / floor where the row's timed part is itself a floor (work the metric's
    definition requires, done by a library: ``extra["part_is_floor"]``, e.g. SIC's WebP
    encoding), else None."""
    part = _extra_s(r, "part_s")
    if not (r.extra.get("part_is_floor") and part is not None and r.floor_s > 0):
        return None
    return (r.floor_s + part) / r.floor_s


def unreachable_floor(r: Result) -> float | None:
    """The least floor ratio that any implementation building the same inputs reaches, where
    it is above :data:`FLOOR_TARGET` (the target is then out of reach), else None: the largest
    of the written floor (each input row written once), the drawn floor (and as many random
    numbers drawn as ours, with torch's unkeyed generator) and the required-work floor (and
    the ranking and scoring the metric's definition requires, at the cheapest library speed
    on hand), W4-W6; or the floor plus a timed part that is itself a floor
    (:func:`_part_floor`)."""
    if not r.floor_s > 0:
        return None
    bounds = [v / r.floor_s for v in (_extra_s(r, "written_floor_s"),
                                      _extra_s(r, "drawn_floor_s"),
                                      _extra_s(r, "required_floor_s")) if v]
    least = max([*bounds, _part_floor(r) or 0.0], default=0.0)
    return least if least > FLOOR_TARGET else None


def _floor_miss_text(r: Result) -> str:
    """The floor ratio, and with a timed part the least ratio that part alone allows."""
    text = _fmt_ratio(r.floor_ratio)
    least = unreachable_floor(r)
    part_floor = _part_floor(r)
    by_part = least is not None and part_floor == least
    if by_part:
        text += (f" (out of reach: floor + {r.extra['part']} alone is {least:.2f} x the floor, "
                 f"{_fmt_s(_extra_s(r, 'part_s'))} s of {r.extra['part']}; ours / that "
                 f"{r.floor_ratio / least:.2f})")
    elif least is not None:
        required = _extra_s(r, "required_floor_s")
        if required is not None and math.isclose(required / r.floor_s, least) and (
                _extra_s(r, "written_floor_s") is None):
            # an explain() floor (the randomisation rows): the per-call steps
            text += (f" (out of reach: the floor and the steps the metric requires alone make "
                     f"{least:.2f} x)")
        elif required is not None and math.isclose(required / r.floor_s, least):
            text += (f" (out of reach: building the inputs and the ranking and scoring the "
                     f"metric requires alone make the floor {least:.2f} x)")
        else:
            text += f" (out of reach: building the inputs alone makes the floor {least:.2f} x)"
    part = _extra_s(r, "part_s")
    if part and r.floor_s > 0 and not by_part:
        text += (f" ({r.extra['part']} {_fmt_s(part)} s: floor + {r.extra['part']} alone is "
                 f"{(r.floor_s + part) / r.floor_s:.2f} x the floor; ours / that "
                 f"{r.ours_s / (r.floor_s + part):.2f})")
    written = _extra_s(r, "written_floor_s")
    if written is not None and written > 0 and r.floor_s > 0:
        text += (f" (writing each input row once alone makes the floor "
                 f"{written / r.floor_s:.2f} x; ours / that {r.ours_s / written:.2f})")
    drawn = _extra_s(r, "drawn_floor_s")
    if drawn is not None and drawn > 0 and r.floor_s > 0:
        text += (f" (and drawing as many random numbers as ours with torch.rand "
                 f"{drawn / r.floor_s:.2f} x; ours / that {r.ours_s / drawn:.2f})")
    required = _extra_s(r, "required_floor_s")
    if required is not None and required > 0 and r.floor_s > 0:
        text += (f" (with the steps the metric's definition requires, "
                 f"{r.extra.get('required_steps', '?')}: {required / r.floor_s:.2f} x; "
                 f"ours / that {r.ours_s / required:.2f})")
    return text


def _quantus_miss_text(r: Result) -> str:
    """The speed-up, and where Quantus forwards other rows, what each computation costs."""
    text = f"speed-up {_fmt_ratio(r.speedup)}"
    q_floor = _extra_s(r, "quantus_floor_s")
    if q_floor is not None and r.floor_s > 0:
        text += (f" (not the same rows: the model work of Quantus' rows is {_fmt_s(q_floor)} s, "
                 f"of ours {_fmt_s(r.floor_s)} s")
        text += (", more than Quantus' whole run: unreachable by a correct implementation)"
                 if r.floor_s > r.quantus_s else ")")
    return text


def _loop_miss_text(r: Result) -> str:
    text = f"speed-up {_fmt_ratio(r.speedup)}"
    if not r.floor_s > 0:
        return text
    text += f" (Quantus / floor {r.quantus_s / r.floor_s:.1f}"
    part = _extra_s(r, "part_s")
    if part is not None:
        text += f", Quantus / (floor + {r.extra['part']}) {r.quantus_s / (r.floor_s + part):.1f}"
    return text + ")"


def _misses_lines(results: list[Result]) -> list[str]:
    rows = []
    for r in results:
        c = _checks(r)
        if c["floor"] is False:
            rows.append((r, f"floor ratio <= {FLOOR_TARGET:g}", _floor_miss_text(r),
                         r.floor_ratio <= FLOOR_TARGET * (1 + NOISE)))
        if c["quantus"] is False:
            rows.append((r, "never slower than Quantus", _quantus_miss_text(r),
                         r.speedup >= QUANTUS_TARGET * (1 - NOISE)))
        if c["loop"] is False:
            rows.append((r, f">= {LOOP_TARGET:g}x Quantus", _loop_miss_text(r), False))
        if c["spec"] is False:
            target = _speedup_target(r)
            rows.append((r, f">= {target:g}x Quantus", f"speed-up {_fmt_ratio(r.speedup)}",
                         r.speedup >= target * (1 - NOISE)))
        ref_speedup = _reference_speedup(r)
        if _measured(r) and ref_speedup < QUANTUS_TARGET:
            rows.append((r, f"never slower than {r.extra['reference']}",
                         f"speed-up {_fmt_ratio(ref_speedup)}",
                         ref_speedup >= QUANTUS_TARGET * (1 - NOISE)))
        if not _measured(r) and not r.extra.get("skipped"):
            rows.append((r, "runs", r.error or "no timing", False))
    if not rows:
        return ["No row misses a target.", ""]
    lines = ["| metric | workload | target | value | ours (s) | floor (s) | Quantus (s) | "
             "fwd rows ours / Quantus | within noise |", "|---|---|---|---|---|---|---|---|---|"]
    for r, target, value, noise in rows:
        fq = (f"{r.ours_fwd.rows if r.ours_fwd else '—'} / "
              f"{r.quantus_fwd.rows if r.quantus_fwd else '—'}")
        lines.append("| " + " | ".join(_cell(c) for c in [
            r.metric, f"{r.workload} (N={r.n})", target, value, _fmt_s(r.ours_s),
            _fmt_s(r.floor_s), _fmt_s(r.quantus_s), fq,
            f"yes (within {NOISE:.0%})" if noise else "no"]) + " |")
    lines += ["", f"*Within noise*: within {NOISE:.0%} of the target, about the spread between "
                  "repeated measurements on this machine.", ""]
    return lines


#: why W4-W6 are measured at the N of their rows (the workloads are defined at the issue's
#: sizes: W4 10,000 rows, W5 256 series, W6 128 texts); the rows name their N
MODALITY_N_WHY = (
    "W4 is measured on 2,000 of its 10,000 rows and W5 on 64 of its 256 series so that the "
    "whole W4-W6 run (about 140 rows, each ours, Quantus, the floor, the written floor, for "
    "rows that draw random numbers the drawn floor and, for rows whose metric ranks or scores, "
    "the required-work floor in alternation) fits about half an "
    "hour of one shared core: Quantus 0.6 loops in Python "
    "per sample in several of these metrics (MonotonicityCorrelation, the MPRT family), which "
    "takes minutes per call at 10,000 rows. Both models' cost is linear in N, so the ratios "
    "do not depend on it; W6 runs at its full 128 texts. Where a call's model work is small "
    "(the confidence and set-level rows, N forward rows or two), a call's fixed costs "
    "(validating the inputs, wrapping the model and probing its output shape, per-sample "
    "bookkeeping: a few milliseconds) weigh more at these N than at the issue's.")


#: what profiling (cProfile and per-part timers, one torch thread) found where W4-W6 rows stay
#: above the floor; measured 2026-12-07 (issue 19's speed work), the rows above are the current
#: numbers
MODALITY_PROFILES = (
    "- **Where 1.25 is out of reach on W4**: the MLP (30-64-64-3) costs about 0.2 us a row, "
    "less than building a perturbed row. Writing each perturbed row once (the *written "
    "floor*) alone makes the floor about 1.6-1.8 x for the removal curves; rows that draw "
    "random numbers also need those numbers (the *drawn floor*: as many drawn with "
    "`torch.rand`, about 2.6 ns each on one core, 1.7-2.4 x the floor for the soft rationale "
    "metrics, PGI/PGU, Infidelity and FFidelity). Adding the ranking and the scoring that each "
    "metric's definition requires (the *required floor*: for PixelFlipping one NumPy "
    "`argsort` of the 2,000 x 30 attributions and the target's softmax probability of each "
    "1,092-row chunk) makes it 1.4-2.7 x the floor (one thread, CPU time, the W4 run of "
    "2026-12-07 22:10 UTC on a quiet machine: the removal curves 1.8-2.1 x, AverageDrop and "
    "kin 1.5-1.55 x, Consistency 1.6 x, LogOdds 2.1 x, the soft rationale metrics "
    "1.8-1.9 x, PGI/PGU 2.1-2.2 x, FFidelity 2.2 x; of the randomisation rows, whose "
    "required floor adds the model copy and the similarity to explain(), MPRT 1.4 x, "
    "DataRandomisation 1.6 x, EfficientMPRT 2.35 x, RandomLogit 2.7 x). No "
    "implementation reaches 1.25 x there; the rows say *1.25 out of reach* and *ours / "
    "required* (else *ours / written*, *ours / drawn*) is the comparison that can be met.",
    "- **Keyed random draws** were one NumPy generator seeded per key (20-50 us each, a Python "
    "loop over keys) and a BLAKE2 hash per sample: 41 x the floor for SoftComprehensiveness, "
    "12 x for PGI/PGU and Infidelity, 7.6 x for MonotonicityCorrelation. They are now "
    "counter-based (`evalkit/_rng.py`: draw j of a row is SplitMix64's output j from the "
    "row's key, vectorised over rows in NumPy; sample keys an additive SplitMix64 hash of "
    "each sample's float32 words): about 4 ns a uniform and 8 ns a normal (inverse CDF) on "
    "one core whatever the number of keys (6,000 keys x 30 draws: 0.7 ms, was 50 ms; the "
    "sample keys of 2,000 x 30 inputs: 0.2 ms, was 1.4 ms), so PGI/PGU, Infidelity and "
    "MonotonicityCorrelation draw only a chunk's rows, each from its own (sample, draw) key. "
    "Keyed draws still cost 1.5-3 x `torch.rand`'s (`torch.randn`: 3.6 ns): the "
    "*keyed random draws* part column.",
    "- **Removal curves** (PixelFlipping, Deletion, FaithfulnessEstimate, ...): rows are "
    "gathered with `index_select` (4x faster than advanced indexing for 512 x 30 rows), "
    "prefix windows compare each element's rank once, and a per-sample baseline is gathered "
    "in its broadcastable shape; the scores are unchanged (bit-identical). What remains above "
    "the written floor is per-chunk work that is not the row: the runner's index arithmetic "
    "and the target selection, whose softmax over 3 classes costs about 30 us per 512-row "
    "chunk, 45 % of the MLP's 67 us (`torch.softmax` on a (512, 3) tensor; outside the row "
    "construction). A second pass (per-op timings of one 512-row chunk, one thread) took out "
    "the runner's `%` and `//` for one-axis work and the advanced indexing of per-row values "
    "(`index_select` instead), 10-20 % of these rows' time; per chunk there remain the MLP "
    "(about 88 us), its softmax (about 32 us: no faster form gives the same bits; an "
    "exp / sum / reciprocal by hand differs in the last bit for about 6 % of the values), "
    "the rank comparison and the `torch.where` (10 us each, the written floor pays the "
    "latter) and three row gathers (10 us); per call, ordering the features (a stable sort "
    "of N x G) and validating the inputs cost 2-4 ms.",
    "- **Third pass** (same scores bit for bit): removal rows are selected with bit "
    "operations on an integer view of the values where that beats `torch.where` (dense "
    "random masks on chunks of at most 2^18 elements, CPU; `evalkit/perturb/_select.py`), "
    "built from the rank map without a bool mask; NAOPC's beam search packs (sample, feature "
    "set) into one int64 whose order is the row order, so a 1-D unique replaces "
    "`torch.unique(dim=0)` (half of its call; 13.5 -> about 4 x the floor on W4); "
    "MonotonicityCorrelation draws its baseline values at once instead of 1,176 small keyed "
    "draws; the features are ordered by NumPy's sort (the same stable order, 1.4 -> 1.0 ms); "
    "per call, the metric's constructor parameters are read once per class (an "
    "`inspect.signature` per call), the output-shape probe runs once per module (not per "
    "call), re-initialising a layer seeds only the generators it draws from, and the NaN "
    "bookkeeping is sparse. PixelFlipping on W4, one process at low load: the floor 13.3 ms, "
    "the written floor 1.75 x, the runner on prebuilt rows 1.33 x, the runner with the "
    "softmax the metric scores 1.82 x, ours 3.1 x: before a row is built, the runner's "
    "per-chunk bookkeeping and the softmax (40-55 us per 512 x 3 chunk) already exceed the "
    "written floor; building the rows takes about 7.5 ms and per-call work (ordering, "
    "validation, windows, finalising) about 10 ms.",
    "- **AverageDrop, AverageIncrease, AverageGain** hashed every map row for the forward "
    "cache even when no cache was active (40 % of the call on W4): fixed in "
    "`evalkit/metrics/faithfulness/confidence.py` (hash only inside `forward_cache()`; the "
    "scores are unchanged). What remains is fixed per-call work (validation, wrapping the "
    "model, per-sample NaN bookkeeping) of a few milliseconds, next to two forward passes "
    "of under a millisecond.",
    "- **Consistency**: grouping the predictions (`Target.codes` on float (N, 1) predictions) "
    "used `torch.unique(dim=0)`, 2.1 ms at N = 2,000; a 1-D unique takes 26 us (and no "
    "longer splits equal rows when a NaN is among them). What remains is the metric's own "
    "discretisation of the maps (the top-n features of each map: one `topk` of (value bits, "
    "index) keys where the maps are exact in float32, 0.9 ms, else a stable sort, 1.2 ms) and "
    "per-call fixed costs next to one forward pass of the MLP (0.35 ms); it is O(N), not "
    "pairwise. **Sufficiency** is pairwise: its floor is the N forward rows plus the pairwise "
    "work of the set done bare (float64 `torch.cdist` of the N maps, the threshold test, "
    "neighbour counts; 4 million pairs at N = 2,000, about 30 x the forward rows on W4). Ours "
    "adds the standardised-Euclidean distances (within 1e-10 of scipy: an exact "
    "re-summation of cancelling pairs, run only where such a pair could change a count or "
    "the largest distance), the normalisation by the largest distance and the pairwise "
    "prediction test; from N = 256 it works in cache-sized blocks of the pairs i <= j only "
    "(the distances are symmetric), counting each block's neighbours for its rows and, "
    "mirrored, its columns.",
    "- **FFidelity** (stochastic removal, 10 draws, 5 alphas: 100,000 rows of 30 keyed "
    "uniforms each): its 58 x (keyed draws 49 x the floor) predates the counter-based draws; "
    "now each row keeps the part's `take` smallest draws through one sort (no rank scatter), "
    "with the rows' parts, sizes and keys gathered once per call, not per chunk.",
    "- **ROAD on W5**: the imputation (1-D linear interpolation along time, in float64, plus "
    "each sample's keyed noise field, drawn once per sample and call) costs about a third "
    "of the CNN's forward of the same rows (a NumPy route of the same float64 operations, "
    "about 27 ns an imputed value), so floor + imputation alone is about 1.35 x the floor "
    "(the *imputation* part column); 1.25 is out of reach for this imputation (ROAD is "
    "defined by it); ours is within about 12 % of floor + imputation.",
    "- **Explanation-bound rows** (robustness, randomisation): their floor is explain() of the "
    "rows they explain, so their ratio is the metric's own work around the explainer (drawing "
    "noise, randomising layers, similarities). Saliency, Gradient and InputXGradient are one "
    "backward seeded with ones (captum's form seeded one gradient per sample: 11 ms against the "
    "MLP's 1 ms backward for 2,000 W4 rows), so on W4 the explain floor fell about 5x and that "
    "own work now shows (robustness about 1.4-1.8 x the floor, randomisation 2.1-3.7 x except "
    "SmoothMPRT: model copies and re-initialisation, SSIM and rank similarities, histogram "
    "entropies), while ours is 3-4x faster than before in seconds. Small rows (a table's) are "
    "explained in calls of several whole model chunks (W4: one explain call of 20,000 rows "
    "instead of 19 for MaxSensitivity, one per randomised model instead of two for MPRT), and the "
    "floor of a metric that explains with several models (MPRT's randomised copies) makes one "
    "explain() call per model. For the randomisation rows the work around the explainer is part "
    "of the metric's definition: the *required floor* (the model copy and its re-initialised "
    "layers, the similarity or entropy of the maps at library speed) is about 1.4 x the floor for "
    "MPRT and 1.6 x for DataRandomisation on W4 (Spearman ranks), 2.35 x for EfficientMPRT (two "
    "histogram entropies) and 2.7 x for RandomLogit (SSIM), where the MLP's explain() of 2,000 "
    "rows is 1-3 ms; on W5 the CNN's explanations dominate (0.8-1.15 x). The noise-based "
    "robustness rows have a required floor too (the perturbed inputs' noise at torch's unkeyed "
    "speed, the score's distances and, where flipped draws are dropped, the predicted classes): "
    "about 1.1-1.2 x their explain() floor on W4 (each row's note gives its own).",
)


def _fmt_us(seconds: float) -> str:
    us = 1e6 * seconds
    return f"{us:.0f}" if us >= 10 else f"{us:.2g}"


def _modality_lines(results: list[Result]) -> list[str]:
    """W4-W6: what each workload is, the N measured, and per row the floor ratio beside the
    parts of our work the model floor leaves out (writing the inputs, keyed random draws)."""
    from .workloads import MODALITY_DESCRIPTIONS

    rows = [r for r in results if r.workload in MODALITY_WORKLOADS]
    if not rows:
        return []
    lines = ["The issue's non-image workloads, one per modality (`benchmarks/workloads.py`):", ""]
    for w in MODALITY_WORKLOADS:
        ns = sorted({r.n for r in rows if r.workload == w})
        if ns:
            lines.append(f"- **{w}** ({MODALITY_WORKLOADS[w]}): {MODALITY_DESCRIPTIONS[w]} "
                         f"Measured at N = {', '.join(map(str, ns))}.")
    lines += ["", MODALITY_N_WHY, ""]
    fpr = {}
    for w in MODALITY_WORKLOADS:
        per_row = [r.floor_s / r.ours_fwd.rows for r in rows
                   if r.workload == w and _measured(r) and r.floor_s > 0 and r.ours_fwd
                   and r.ours_fwd.rows and r.extra.get("written_floor_s") is not None]
        if per_row:
            fpr[w] = float(np.median(per_row))
    if fpr:
        lines += [
            "Why rows stay above the floor here: the floor is the model alone, and these models "
            "are small. Per forward row the bare model costs (median over the removal rows) "
            + ", ".join(f"{w} {_fmt_us(v)} us" for w, v in fpr.items())
            + ". Every implementation also builds each perturbed input (gathers, compares and "
            "writes its values): *written floor* times the floor with each perturbed input row "
            "written once before its forward (one `torch.where`; the samples' own N inputs, "
            "which a metric forwards unchanged, are not written), the least such work, and "
            "*ours / written* compares with that. A metric that perturbs at random also draws its "
            "random numbers: *drawn floor* is the written floor plus as many random numbers as "
            "ours drew (counted in its warm-up run) drawn with torch's own unkeyed generator "
            "(`torch.rand`), and *ours / drawn* compares with that. Steps that the metric's "
            "definition requires at the row's settings also cost every implementation: one "
            "ranking of the attributions per call where the score reads their order (removal "
            "curves, top-k sets, Spearman ranks; the cheapest of NumPy's default unstable "
            "`argsort`, `torch.argsort` and, where only a split of the order at some positions "
            "is needed, NumPy's `argpartition` at those positions or `torch.topk`, chosen by "
            "timing each on the row's attributions) and the scoring of each forward row's "
            "outputs that the metric reads (the target's softmax probability, its log-softmax "
            "for log-odds, or the argmax where the score is whether the prediction is kept; "
            "the cheapest of the library forms that give that value, per chunk; none where the "
            "metric reads logits). *required floor* is the written (or drawn) floor with those "
            "steps, timed in the same rounds, and *ours / required* compares with that; "
            "`benchmarks/specs/modalities.py` declares per row which steps apply (a metric "
            "whose score uses the attribution values and not their order ranks nothing). "
            "The randomisation rows (MPRT, SmoothMPRT, EfficientMPRT, RandomLogit, "
            "DataRandomisation), whose floor is explain() of the rows they explain, have a "
            "required floor too: that floor plus the steps their definition requires once per "
            "call, each the cheapest of the library forms timed on the row's maps "
            "(`benchmarks/specs/randomisation.py`): one copy of the model with the randomised "
            "layers re-initialised by torch's `reset_parameters` (`copy.deepcopy` of the model "
            "or of those layers only; no seeding), the similarity the row scores with (Spearman "
            "of |a|: the reference and each randomised map ranked by NumPy's `argsort`, "
            "`torch.argsort` or `scipy.stats.rankdata`, and the Pearson correlation of the "
            "ranks; SSIM of the normalised maps by `scipy.ndimage.uniform_filter`, torch's "
            "average pooling or `skimage`'s `structural_similarity` per sample; EfficientMPRT's "
            "histogram entropy of the original and the randomised maps by a NumPy or torch "
            "`bincount`), for RandomLogit one draw of the off-target labels, for SmoothMPRT "
            "the noisy inputs (`torch.randn`) and the mean of each model's explanations. "
            "The noise-based robustness rows (MaxSensitivity, AvgSensitivity, "
            "LocalLipschitzEstimate and the relative input, output and representation "
            "stabilities), whose floor is explain() of the N x K perturbed inputs (stacked "
            "before timing) and the bare forward of the rows they also run, have one as well "
            "(`benchmarks/specs/robustness.py`): that floor plus the perturbed inputs, as many "
            "noise values as the copies hold, of the inputs' dtype, drawn with torch's unkeyed "
            "generator (`Tensor.uniform_` or `normal_`, or `torch.rand` or `randn`) and added "
            "to the inputs; the distances of the score per draw at the row's norm, in the "
            "maps' own dtype (the maps' change, by `torch.linalg.vector_norm`, `torch.cdist` "
            "or NumPy's `linalg.norm`, over ||a|| for the sensitivities; the inputs' change for "
            "LocalLipschitzEstimate as the norm of the noise drawn; for the relative "
            "stabilities the elementwise relative change of the maps and of the inputs, the "
            "outputs' change or the representation layer's relative change, that layer's "
            "outputs taken as given); and, where draws that change the prediction are dropped "
            "(the relative stabilities' default), the argmax of each draw's outputs against "
            "the unperturbed one. "
            f"Where any of these floors alone exceeds {FLOOR_TARGET:g} x the model floor, the "
            "target is out of reach for any implementation and the floor ratio says so. "
            "evalkit's draws are keyed (each a "
            "hash of its row's key, the keys hashed from the samples' values, so that draws do "
            "not depend on the batch); the *part* column times them (in one more untimed run) "
            "as a multiple of the floor, or, for ROAD, its imputation. On W4's MLP "
            "(30-64-64-3) these per-element costs exceed the model's; on W5's CNN and W6's "
            "encoder the model dominates.", "",
            "What profiling found where rows stay above the floor:", "",
            *MODALITY_PROFILES, ""]
    head = ("| metric | workload | ours (s) | floor ratio | written floor (x floor) | ours / "
            "written | drawn floor (x floor) | ours / drawn | required floor (x floor) | ours / "
            "required | part (x floor) | Quantus (s) | speed-up | agreement |")
    lines += [head, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.extra.get("skipped"):
            continue
        written = _extra_s(r, "written_floor_s")
        drawn = _extra_s(r, "drawn_floor_s")
        required = _extra_s(r, "required_floor_s")
        part = _extra_s(r, "part_s")
        fl = r.floor_s if r.floor_s > 0 else None
        quantus = _fmt_s(r.quantus_s) if not r.quantus_error else "error (see the row)"
        ratio = _fmt_ratio(r.floor_ratio)
        if r.floor_ratio > FLOOR_TARGET and unreachable_floor(r) is not None:
            ratio += f" ({FLOOR_TARGET:g} out of reach)"
        lines.append("| " + " | ".join(_cell(c) for c in [
            r.metric, f"{r.workload} (N={r.n})", _fmt_s(r.ours_s), ratio,
            "—" if not (written and fl) else f"{written / fl:.2f}",
            "—" if not written else f"{r.ours_s / written:.2f}",
            "—" if not (drawn and fl) else f"{drawn / fl:.2f}",
            "—" if not drawn else f"{r.ours_s / drawn:.2f}",
            "—" if not (required and fl) else f"{required / fl:.2f}",
            "—" if not required else f"{r.ours_s / required:.2f}",
            "—" if not (part and fl) else f"{r.extra.get('part', 'part')} {part / fl:.2f}",
            quantus, _fmt_ratio(r.speedup), r.agreement or "—"]) + " |")
    return [*lines, ""]


def _sharing_lines(results: list[Result]) -> list[str]:
    pairs: dict[tuple[str, str], dict[str, Result]] = {}
    for r in results:
        if r.metric.endswith("[separate]") or r.metric.endswith("[forward_cache]"):
            base, _, kind = r.metric.partition("[")
            pairs.setdefault((base, r.workload), {})[kind.rstrip("]")] = r
    lines = ["| suite | workload | forward rows: separately / one evaluation (saved) | rows "
             "explained: separately / one evaluation | time (s): separately / one evaluation "
             "(speed-up) | floor ratio (one evaluation) | metrics |",
             "|---|---|---|---|---|---|---|"]
    n = 0
    for (base, wl), d in sorted(pairs.items()):
        sep, sh = d.get("separate"), d.get("forward_cache")
        if sep is None or sh is None or not (_measured(sep) and _measured(sh)):
            continue
        n += 1
        fr_sep = sep.ours_fwd.rows if sep.ours_fwd else 0
        fr_sh = sh.ours_fwd.rows if sh.ours_fwd else 0
        saved = f" ({1 - fr_sh / fr_sep:.0%} saved)" if fr_sep else ""
        ex_sep, ex_sh = sep.extra.get("explained_rows"), sh.extra.get("explained_rows")
        ex = "—" if ex_sep is None else f"{ex_sep} / {ex_sh}"
        if ex_sep:
            ex += f" ({1 - ex_sh / ex_sep:.0%} saved)"
        names = sh.settings.split("around ", 1)[-1]
        lines.append("| " + " | ".join(_cell(c) for c in [
            base, f"{wl} (N={sh.n})", f"{fr_sep} / {fr_sh}{saved}", ex,
            f"{_fmt_s(sep.ours_s)} / {_fmt_s(sh.ours_s)} (x{sep.ours_s / sh.ours_s:.2f})",
            _fmt_ratio(sh.floor_ratio), names]) + " |")
    if not n:
        return []
    return [
        *lines,
        "",
        "*Separately* is the sum of the parts: each metric called on its own. *One evaluation*: "
        "the same metric objects inside one `evalkit.forward_cache()` (what `evaluate()` opens "
        "per method and chunk). Forward rows count every input the model saw (explanations "
        "included); rows explained count the inputs handed to the explain function.",
        "",
    ]


def _explainer_share_lines(results: list[Result]) -> list[str]:
    table: dict[tuple[str, str], dict[str, Result]] = {}
    for r in results:
        if r.family != "robustness" or r.explainer_share is None or not _registered(r):
            continue
        base, _, variant = r.metric.partition("[")
        table.setdefault((base, variant.rstrip("]") or "—"), {})[r.workload] = r
    if not table:
        return []
    lines = ["| metric | explainer | W1: share of our time explaining | W2: share | "
             "W1: ours / floor / Quantus (s) | W2: ours / floor / Quantus (s) |",
             "|---|---|---|---|---|---|"]

    def share(r: Result | None) -> str:
        if r is None or r.explainer_share is None:
            return "—"
        rows = r.extra.get("explained_rows")
        return f"{100 * r.explainer_share:.0f} %" + (f" ({rows} rows)" if rows else "")

    def times(r: Result | None) -> str:
        if r is None:
            return "—"
        return f"{_fmt_s(r.ours_s)} / {_fmt_s(r.floor_s)} / {_fmt_s(r.quantus_s)}"

    for (base, variant), d in table.items():
        lines.append(f"| {base} | {variant} | {share(d.get('W1'))} | {share(d.get('W2'))} | "
                     f"{times(d.get('W1'))} | {times(d.get('W2'))} |")
    return [*lines, "", "Share: seconds inside the explain function / seconds of the whole "
                        "metric call (the rest is perturbing, forward checks and the metric "
                        "maths).", ""]


def _metaeval_lines(results: list[Result]) -> list[str]:
    rows = [r for r in results if r.family == "metaeval"]
    if not rows:
        return []
    lines = ["| entry | settings | ours (s) | MetaQuantus 0.0.5 (s) | floor (s) | floor ratio | "
             "speed-up | target | agreement | note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mq = f"error: {r.quantus_error}" if r.quantus_error else _fmt_s(r.quantus_s)
        if not r.quantus_error and not math.isfinite(r.quantus_s):
            mq = "— (no MetaQuantus run: not installed, or nothing to compare)"
        ok = "—"
        if math.isfinite(r.speedup):
            met = _reachable_check(r, META_TARGET)
            ok = ("met" if met else "missed") if met is not None else (
                f"unreachable (MetaQuantus / floor {r.quantus_s / r.floor_s:.1f}: no "
                f"implementation doing this model work can be {META_TARGET:g}x faster)")
        note = (f"**{r.error}**; " if r.error else "") + r.note
        floor = _fmt_s(r.floor_s) if r.floor_s > 0 else "—"
        ratio = _fmt_ratio(r.floor_ratio) if r.floor_s > 0 else "—"
        lines.append("| " + " | ".join(_cell(c) for c in [
            r.metric, r.settings, _fmt_s(r.ours_s), mq, floor, ratio, _fmt_ratio(r.speedup),
            f">= {META_TARGET:g}x: {ok}", r.agreement or "—", note]) + " |")
    plain = _plain_lines(rows)
    if plain:
        lines += ["", *plain]
    floor_text = (
        "Floor: the bare model work of our run (rows a gradient reached replayed as forward plus "
        "input gradient, every other row as a bare forward pass, at the runner's batch size). "
        f"The {META_TARGET:g}x target counts only where MetaQuantus itself is at least "
        f"{META_TARGET:g}x above that floor; otherwise no implementation doing the same model "
        "work can reach it, and the row says so.")
    return [*lines, "", floor_text, ""]


def _plain_lines(rows: list[Result]) -> list[str]:
    """W3 as a user runs it: the plain script's wall time in a new process, per thread count,
    beside the harness's floor (and MetaQuantus' script timed the same way)."""
    timed = [r for r in rows if r.extra.get("plain_wall_s")]
    if not timed:
        return []
    lines = ["As a user runs it: the same work as a plain script in a new Python process, wall "
             "clock of the meta-evaluation call (imports and set-up excluded), at torch's "
             "default thread count and at one thread (`--plain 0 1`); MetaQuantus' script is "
             "timed the same way. The floor is the one above (one thread, CPU time). The "
             "script is issue 24's with the harness's model, data and IntegratedGradients "
             "settings (10 `riemann_trapezoid` steps, as Quantus and MetaQuantus); without "
             "`--methods harness` it keeps evalkit's default of 50 Gauss-Legendre steps, about "
             "3x the gradient rows of MetaQuantus' IntegratedGradients, which is most of the "
             "1.8x the issue measured (see the script's docstring).", "",
             "| entry | torch threads | ours, plain (s) | ours / floor | MetaQuantus 0.0.5, "
             "plain (s) | MetaQuantus / ours | script |", "|---|---|---|---|---|---|---|"]
    for r in timed:
        ours, ref = r.extra["plain_wall_s"], r.extra.get("plain_reference_wall_s") or {}
        threads = r.extra.get("plain_threads", {})
        for key in ours:
            floor = f"{ours[key] / r.floor_s:.2f}" if r.floor_s > 0 else "—"
            theirs = ref.get(key)
            lines.append("| " + " | ".join(_cell(c) for c in [
                r.metric, f"{threads.get(key, key)} ({key})", _fmt_s(ours[key]), floor,
                "—" if theirs is None else _fmt_s(theirs),
                "—" if theirs is None else f"{theirs / ours[key]:.2f}",
                f"`{r.extra.get('plain_command', '')}`"]) + " |")
    if any(r.extra.get("plain_reference_command") for r in timed):
        lines += ["", "MetaQuantus' script: `" + next(
            r.extra["plain_reference_command"] for r in timed
            if r.extra.get("plain_reference_command")) + "`."]
    return [*lines, ""]


def _results_lines(results: list[Result], multi: bool) -> list[str]:
    cols = COLUMNS + (["run"] if multi else [])
    lines: list[str] = []
    fams = list(dict.fromkeys(r.family for r in results))
    for fam in fams:
        lines += [f"### {fam}", ""]
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for r in results:
            if r.family != fam:
                continue
            cells = _row_cells(r) + ([str(r.extra.get("run", ""))] if multi else [])
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        lines.append("")
    return lines


def render_markdown(results: list[Result], runs: dict[str, dict[str, Any]],
                    command: str, data_path: str = "benchmarks/data/results.json") -> str:
    """The page: tables of ``results``, the details of ``runs``; ``command`` regenerates it and
    ``data_path`` holds the data it is rendered from."""
    results = _sorted(results)
    lines = [
        "# Benchmarks",
        "",
        f"Generated by the harness in `benchmarks/` from the data in `{data_path}`; do not edit "
        "by hand (`python -m benchmarks.run --render` renders it again from the data). One "
        "command regenerates the whole file (every spec on W1 and W2, the suites, W3, the "
        "tabular, series and text workloads W4-W6; about 2 hours on one core):",
        "",
        "```",
        command,
        "```",
        "",
        "How to read the tables:",
        "",
        "- **ours / Quantus (s)**: median seconds per call over the timed rounds, measured in "
        "the same process and alternating (ours, Quantus, floor, ours, ...) after one counted "
        "warm-up call each, on identical inputs and settings. Quantus gets `batch_size` equal "
        "to our runner's batch (rows per forward call), so forward counts compare. Slow cases "
        "get fewer rounds (`--case-budget`: as many as fit that many seconds); *rounds* says "
        "how many, *warm-up* where one round did not fit and the counted warm-up call is the "
        "measurement (its one-off costs are negligible at that length).",
        "- **speed-up** = Quantus / ours (> 1: evalkit is faster).",
        "- **floor**: the bare model work the metric needs, timed the same way: the forward "
        "rows our run issued, at our runner's batch size, under `torch.inference_mode` "
        "(forward+backward for explainers; explain() of the stacked perturbed inputs for "
        "robustness metrics, in one call per model for the randomisation metrics, which "
        "explain with several; each spec states its floor). **floor ratio** = ours / floor "
        "(1.00 = no overhead above the model). Model-free metrics have no floor. Where a "
        "metric does CPU work the floor cannot cover (ROAD's exact imputation), the note "
        "gives that part's seconds, timed in one more untimed run; where that part is itself "
        "a floor (SIC and AIC's lossless WebP encoding with PIL, at the paper's settings), "
        "floor + part bounds every implementation from below, and where it exceeds the "
        "target the row says *out of reach*, as where building the inputs alone does "
        "(W4-W6: the *written floor*, each perturbed input row written once; the *drawn "
        "floor*, with as "
        "many random numbers as ours drew; the *required floor*, with the ranking of the "
        "attributions and the scoring of the outputs that the metric's definition requires, "
        "at the cheapest library speed on hand; see the W4-W6 section); where Quantus forwards "
        "other rows than ours (Monotonicity, deviation C2), the note gives the model work of "
        "Quantus' own rows, in its own chunks.",
        "- **fwd calls / rows**: forward calls of the model and the inputs they carried "
        "(a forward pre-hook on the model; includes one-row shape probes and the forward "
        "passes inside explanations).",
        "- **explainer share**: the share of our time spent inside the explain function, with "
        "the number of inputs it explained.",
        "- **agreement**: max abs difference between our and Quantus' outputs on the same "
        "inputs, or why they differ by design.",
        "- **Other reference implementations**: where Quantus lacks a metric but another "
        "library ships it (pytorch-grad-cam 1.5.7's ARCC), the spec runs that library too, "
        "where it imports, on the same inputs and settings, in the same alternating rounds; "
        "the row's note gives its seconds, the speed-up (its time / ours), its forward "
        "counts and the agreement of the values (with the differences of definition named), "
        "and *Against other reference implementations* below the summary lists these rows. "
        "\"Never slower\" applies to it as to Quantus. pytorch-grad-cam imports torchvision, "
        "so its rows are measured with a Python that has torchvision (the run's torch "
        "version says which).",
        "- Speed targets are never asserted in tests; they are measured here, one run, and "
        "timings on a shared machine are noisy (see the load averages).",
        "- To add a metric, append a `Spec` to `SPECS` in its family's module under "
        "`benchmarks/specs/`, then refresh its rows with `python -m benchmarks.run --metrics "
        "NAME --update` (other rows are kept, with the run they came from).",
        "",
        "## Summary",
        "",
    ]
    lines += _summary_lines(results)
    reference = _reference_lines(results)
    if reference:
        lines += ["### Against other reference implementations", "", *reference]
    lines += ["## Rows that miss a target", ""]
    lines += _misses_lines(results)
    modal = _modality_lines(results)
    if modal:
        lines += ["## Tabular, series and text (W4-W6)", "", *modal]
    sharing = _sharing_lines(results)
    if sharing:
        lines += ["## Shared work: a suite in one evaluation vs the sum of the parts", ""]
        lines += sharing
    share = _explainer_share_lines(results)
    if share:
        lines += ["## Robustness: time spent explaining", "", *share]
    meta_lines = _metaeval_lines(results)
    if meta_lines:
        lines += ["## Meta-evaluation (W3) vs MetaQuantus 0.0.5", "", *meta_lines]
    for run_id, meta in runs.items():
        lines += [f"## Run {run_id}", "", "| | |", "|---|---|"]
        for k, v in meta.items():
            if k == "workloads":
                for wk, wv in v.items():
                    lines.append(f"| workload {wk} | {_cell(wv)} |")
            elif k not in ("command",):
                lines.append(f"| {k} | {_cell(v)} |")
        if meta.get("command"):
            lines.append(f"| command | `{_cell(meta['command'])}` |")
        lines.append("")
        shared = _shared_note(meta)
        if shared:
            lines += [shared, ""]
    lines += ["## Results", ""]
    lines += _results_lines(results, len(runs) > 1)
    return "\n".join(lines)


def _repo_relative(path: Path | str) -> str:
    """``path`` relative to the repository root where it lies inside it (as the page shows it)."""
    try:
        return Path(path).resolve().relative_to(PAGE_PATH.parent.parent).as_posix()
    except ValueError:
        return str(path)


def render_page(data: store.BenchmarkData, out: str = "docs/benchmarks.md",
                data_path: Path | str = store.DATA_PATH) -> str:
    """The page ``out`` rendered from ``data`` (stored at ``data_path``): a function of the data
    and of the specs and registry it reports against (targets, registered metrics)."""
    commands = {m.get("command", "") for m in data.runs.values()}
    command = commands.pop() if len(commands) == 1 else (
        f"python -m benchmarks.run --out {shlex.quote(out)}"
        "   # (this file merges several runs; see each run's command below)")
    return render_markdown(data.results(), data.runs, command, _repo_relative(data_path))


def _data_path(out: str, data: str | None) -> Path | None:
    """Where the data of page ``out`` is stored: ``data`` if given ("-": nowhere), else the
    committed file for the committed page, else beside ``out`` with a ``.json`` suffix."""
    if data is not None:
        return None if data == "-" else Path(data)
    if out == "-":
        return None
    if Path(out).resolve() == PAGE_PATH:
        return store.DATA_PATH
    return Path(out).with_suffix(".json")


# --------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", nargs="+", default=["W1", "W2"], choices=sorted(WORKLOADS),
                   help="W1, W2: images; W4: tabular, W5: series, W6: token ids (issue 19)")
    p.add_argument("--metrics", nargs="+", default=None, help="spec names (default: all)")
    p.add_argument("--families", nargs="+", default=None, choices=list(FAMILY_MODULES))
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny N, 1 repeat, only the smoke specs unless --metrics")
    p.add_argument("--n", nargs="+", default=None, metavar="W=N",
                   help="override sample counts, e.g. --n W1=64 W2=4 W3=16 (W3: the "
                        "meta-evaluation's samples, default 64)")
    p.add_argument("--no-quantus", action="store_true", help="time ours only")
    p.add_argument("--min-time", type=float, default=None,
                   help="repeat calls faster than this (s) within one measurement")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--case-budget", type=float, default=None, metavar="S",
                   help="give a case only as many timed rounds as fit S seconds (at least "
                        "one; none, i.e. the counted warm-up call is the measurement, when one "
                        "round takes more than S)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall time (default) or this process's CPU time (with --threads 1: "
                        "robust to other processes sharing the cores)")
    p.add_argument("--conditions", nargs="+", default=None, choices=CONDITIONS,
                   help="run each case in a new process per condition: fresh, or used "
                        "(benchmarks.harness.dirty_process() first); rows get "
                        "extra['condition']")
    p.add_argument("--condition", default=None, choices=CONDITIONS,
                   help="the state of this process for each case (used: dirty_process() "
                        "before it); what --conditions runs in its children")
    p.add_argument("--plain", nargs="*", type=int, default=None, metavar="T",
                   help="also time the spec's plain script (benchmarks.harness.PLAIN_SCRIPTS, "
                        "e.g. W3's) in a plain process, wall time, at these torch thread "
                        "counts (default: 0 1; 0 is torch's default); rows get "
                        "extra['plain_wall_s']")
    p.add_argument("--out", default="docs/benchmarks.md", help="markdown file, or - for none")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="JSON file of the measured rows the page is rendered from, or - for "
                        "none (default: benchmarks/data/results.json for the default --out, "
                        "else --out with a .json suffix; none with --out -)")
    p.add_argument("--update", action="store_true",
                   help="keep the rows of --data not re-run now (merge by metric and workload)")
    p.add_argument("--json", default=None, help="also write the data as JSON here")
    p.add_argument("--full", action="store_true",
                   help="regenerate docs/benchmarks.md as committed: " + " ".join(FULL_ARGS))
    p.add_argument("--render", "--rerender", action="store_true",
                   help="run nothing: render --out from --data (after a change of the tables' "
                        "format, the specs' targets or the registry)")
    p.add_argument("--import-page", default=None, metavar="OLD.md",
                   help="run nothing: store the data an older page embedded (an HTML comment "
                        "'<!-- benchmark-data') in --data, then render --out from it")
    return p


def _write_page(md: str, out: str) -> None:
    if out == "-":
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(md, encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> tuple[list[Result], str]:
    """The command line; returns the rows of the page and the page's markdown."""
    argv_list = list(sys.argv[1:] if argv is None else argv)
    full = "--full" in argv_list
    if full:
        if len(argv_list) > 1:
            raise SystemExit("--full takes no other arguments (it stands for: "
                             + " ".join(FULL_ARGS) + ")")
        args = _parser().parse_args(list(FULL_ARGS))
    else:
        args = _parser().parse_args(argv_list)
    data_path = _data_path(args.out, args.data)
    if args.render or args.import_page:
        if data_path is None:
            raise SystemExit("--render and --import-page need a --data file.")
        if args.import_page:
            data = store.from_legacy_page(Path(args.import_page).read_text(encoding="utf-8"))
            store.save(data, data_path)
            print(f"wrote {data_path}", file=sys.stderr)
        else:
            data = store.load(data_path)
        if not data.records:
            raise SystemExit(f"{data_path} holds no benchmark data to render.")
        md = render_page(data, args.out, data_path)
        _write_page(md, args.out)
        return data.results(), md
    if args.quick and args.repeats == 3:
        args.repeats = 1
    n = None
    if args.n:
        n = {}
        for item in args.n:
            key, _, val = item.partition("=")
            n[key] = int(val)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but CUDA is not available.")
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in argv_list)
    results, meta = run_benchmarks(
        workloads=args.workloads, metrics=args.metrics, families=args.families,
        repeats=args.repeats, device=args.device, quick=args.quick,
        use_quantus=not args.no_quantus, n=n, min_time=args.min_time, threads=args.threads,
        clock=args.clock, max_case_s=args.case_budget, condition=args.condition,
        conditions=args.conditions,
        plain_threads=None if args.plain is None else (args.plain or [0, 1]),
    )
    meta["command"] = command.strip()
    if full:
        meta["--full stands for"] = " ".join(FULL_ARGS)
    meta["repeats"] = args.repeats
    if args.case_budget is not None:
        meta["case budget (s)"] = args.case_budget
    run_id = meta["date"]
    for r in results:
        r.extra["run"] = run_id
    data = store.BenchmarkData.from_results(results, {run_id: meta})
    if args.update and data_path is not None:
        data = store.load(data_path).merged(data)
    md = render_page(data, args.out, data_path if data_path is not None else store.DATA_PATH)
    print(md)
    if data_path is not None:
        store.save(data, data_path)
        print(f"wrote {data_path}", file=sys.stderr)
    _write_page(md, args.out)
    if args.json:
        store.save(data, args.json)
    return data.results(), md


if __name__ == "__main__":
    main()
