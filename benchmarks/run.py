"""Run the benchmark specs and write the markdown table.

    python -m benchmarks.run                              # every spec on W1 and W2, CPU
    python -m benchmarks.run --metrics PixelFlipping --workloads W1 --repeats 5
    python -m benchmarks.run --families complexity --update   # refresh only these rows
    python -m benchmarks.run --quick --no-quantus --out -     # smoke run, print only

The markdown (``--out``, default ``docs/benchmarks.md``) embeds the raw results as JSON in an
HTML comment, so ``--update`` can replace some rows and keep the others (each row says which run
it came from).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._quantus import load_quantus
from .harness import Context, Result, run_case, set_clock
from .specs import FAMILY_MODULES, all_specs, select_specs
from .workloads import WORKLOADS, get_workload

__all__ = ["COLUMNS", "machine_info", "main", "render_markdown", "run_benchmarks"]

COLUMNS = [
    "metric", "family", "workload", "settings", "ours (s)", "Quantus (s)",
    "speed-up (Quantus / ours)", "floor (s)", "floor ratio (ours / floor)",
    "ours fwd calls / rows", "Quantus fwd calls / rows", "explainer share", "agreement", "note",
]

_DATA_RE = re.compile(r"<!-- benchmark-data\n(.*?)\n-->", re.S)


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
    verbose: bool = True,
) -> tuple[list[Result], dict[str, Any]]:
    """Run the selected specs on the selected workloads; returns (results, run metadata)."""
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
    from evalkit.models import wrap_model
    from evalkit.runner import ForwardRunner

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for wname in workloads:
            todo = [s for s in specs if wname in s.workloads]
            if not todo:
                continue
            w = get_workload(wname, (n or {}).get(wname), dev, quick=quick)
            chunk = ForwardRunner(wrap_model(w.model)).chunk_size(w.row_shape, w.x.dtype)
            ctx = Context(batch_size=chunk, device=dev, quantus=quantus, quick=quick)
            meta.setdefault("workloads", {})[wname] = (
                f"{w.description}; runner batch {chunk} rows")
            for spec in todo:
                if verbose:
                    print(f"[{wname}] {spec.name} ...", file=sys.stderr, flush=True)
                res = run_case(spec, w, ctx, repeats=repeats, min_time=min_time,
                               verbose=verbose and bool(os.environ.get("BENCH_TRACEBACK")))
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
    share = "—" if r.explainer_share is None else f"{100 * r.explainer_share:.0f} %"
    return [
        r.metric, r.family, f"{r.workload} (N={r.n})", r.settings, _fmt_s(r.ours_s), quantus,
        _fmt_ratio(r.speedup), _fmt_s(r.floor_s), _fmt_ratio(r.floor_ratio),
        r.ours_fwd.text() if r.ours_fwd else "—",
        r.quantus_fwd.text() if r.quantus_fwd else "—",
        share, r.agreement or "—", note,
    ]


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


def render_markdown(results: list[Result], runs: dict[str, dict[str, Any]],
                    command: str) -> str:
    results = _sorted(results)
    lines = [
        "# Benchmarks",
        "",
        "Generated by the harness in `benchmarks/`; do not edit by hand. Regenerate with:",
        "",
        "```",
        command,
        "```",
        "",
        "How to read the table:",
        "",
        "- **ours / Quantus (s)**: median seconds per call over the timed rounds, measured in "
        "the same process and alternating (ours, Quantus, floor, ours, ...) after one counted "
        "warm-up call each, on identical inputs and settings. Quantus gets `batch_size` equal "
        "to our runner's batch (rows per forward call), so forward counts compare.",
        "- **speed-up** = Quantus / ours (> 1: evalkit is faster).",
        "- **floor**: the bare model work the metric needs, timed the same way: the forward "
        "rows our run issued, at our runner's batch size, under `torch.inference_mode` "
        "(forward+backward for explainers). **floor ratio** = ours / floor (1.00 = no overhead "
        "above the model). Model-free metrics have no floor.",
        "- **fwd calls / rows**: forward calls of the model and the inputs they carried "
        "(a forward pre-hook on the model; includes one-row shape probes).",
        "- **agreement**: max abs difference between our and Quantus' outputs on the same "
        "inputs, or why they differ by design.",
        "- Speed targets are never asserted in tests; they are measured here, one run, and "
        "timings on a shared machine are noisy (see the load averages).",
        "- To add a metric, append a `Spec` to `SPECS` in its family's module under "
        "`benchmarks/specs/`, then refresh its rows with `python -m benchmarks.run --metrics "
        "NAME --update` (other rows are kept, with the run they came from).",
        "",
    ]
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
    multi = len(runs) > 1
    cols = COLUMNS + (["run"] if multi else [])
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for r in results:
        cells = _row_cells(r) + ([str(r.extra.get("run", ""))] if multi else [])
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines.append("")
    data = _clean({"runs": runs, "results": [r.to_dict() for r in results]})
    lines += ["<!-- benchmark-data", json.dumps(data, default=_json_default), "-->", ""]
    return "\n".join(lines)


def _json_default(o: Any) -> Any:
    if isinstance(o, float | np.floating):
        return None if not math.isfinite(float(o)) else float(o)
    if isinstance(o, np.integer):
        return int(o)
    return str(o)


def _clean(d: Any) -> Any:
    """NaN -> None recursively (JSON has no NaN)."""
    if isinstance(d, dict):
        return {k: _clean(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_clean(v) for v in d]
    if isinstance(d, float) and not math.isfinite(d):
        return None
    return d


def read_existing(path: Path) -> tuple[list[Result], dict[str, dict[str, Any]]]:
    """Results and runs embedded in an existing benchmarks markdown file."""
    if not path.exists():
        return [], {}
    m = _DATA_RE.search(path.read_text(encoding="utf-8"))
    if not m:
        return [], {}
    data = json.loads(m.group(1))
    results = []
    for d in data.get("results", []):
        d = {k: (math.nan if v is None and k.endswith("_s") else v) for k, v in d.items()}
        results.append(Result.from_dict(d))
    return results, data.get("runs", {})


# --------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", nargs="+", default=["W1", "W2"], choices=sorted(WORKLOADS))
    p.add_argument("--metrics", nargs="+", default=None, help="spec names (default: all)")
    p.add_argument("--families", nargs="+", default=None, choices=list(FAMILY_MODULES))
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (median reported)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny N, 1 repeat, only the smoke specs unless --metrics")
    p.add_argument("--n", nargs="+", default=None, metavar="W=N",
                   help="override sample counts, e.g. --n W1=64 W2=4")
    p.add_argument("--no-quantus", action="store_true", help="time ours only")
    p.add_argument("--min-time", type=float, default=None,
                   help="repeat calls faster than this (s) within one measurement")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall time (default) or this process's CPU time (with --threads 1: "
                        "robust to other processes sharing the cores)")
    p.add_argument("--out", default="docs/benchmarks.md", help="markdown file, or - for none")
    p.add_argument("--update", action="store_true",
                   help="keep rows of --out not re-run now (merge by metric and workload)")
    p.add_argument("--json", default=None, help="also write the raw results as JSON here")
    p.add_argument("--rerender", action="store_true",
                   help="run nothing: rewrite --out from the data embedded in it (after a "
                        "change of the table's format)")
    return p


def main(argv: Sequence[str] | None = None) -> tuple[list[Result], str]:
    args = _parser().parse_args(argv)
    if args.rerender:
        path = Path(args.out)
        old_results, old_runs = read_existing(path)
        if not old_results:
            raise SystemExit(f"{path} holds no embedded benchmark data to re-render.")
        commands = {m.get("command", "") for m in old_runs.values()}
        regen = commands.pop() if len(commands) == 1 else (
            f"python -m benchmarks.run --out {shlex.quote(args.out)}"
            "   # (this file merges several runs; see each run's command below)")
        md = render_markdown(old_results, old_runs, regen)
        path.write_text(md, encoding="utf-8")
        print(f"re-rendered {path}", file=sys.stderr)
        return old_results, md
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
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = "python -m benchmarks.run " + " ".join(shlex.quote(a) for a in argv_list)
    results, meta = run_benchmarks(
        workloads=args.workloads, metrics=args.metrics, families=args.families,
        repeats=args.repeats, device=args.device, quick=args.quick,
        use_quantus=not args.no_quantus, n=n, min_time=args.min_time, threads=args.threads,
        clock=args.clock,
    )
    meta["command"] = command.strip()
    meta["repeats"] = args.repeats
    run_id = meta["date"]
    for r in results:
        r.extra["run"] = run_id
    runs = {run_id: meta}
    out_path = None if args.out == "-" else Path(args.out)
    all_results = results
    if args.update and out_path is not None:
        old, old_runs = read_existing(out_path)
        fresh = {(r.metric, r.workload) for r in results}
        kept = [r for r in old if (r.metric, r.workload) not in fresh]
        all_results = kept + results
        used = {r.extra.get("run") for r in kept}
        runs = {k: v for k, v in old_runs.items() if k in used} | runs
    regen = command.strip() if not args.update else (
        "python -m benchmarks.run --out " + shlex.quote(args.out)
        + "   # (this file merges several runs; see each run's command below)")
    md = render_markdown(all_results, _clean(runs), regen)
    print(md.split("<!-- benchmark-data")[0])
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(md, encoding="utf-8")
        print(f"wrote {out_path}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(
            _clean({"runs": runs, "results": [r.to_dict() for r in all_results]}),
            indent=1, default=_json_default), encoding="utf-8")
    return all_results, md


if __name__ == "__main__":
    main()
