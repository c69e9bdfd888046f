"""Page faults and CPU time per forward chunk, in a fresh and in a used process (issue 18).

Each (workload, chunk size, condition, heap setting) is measured in ``--repeat`` new processes
(the heap's layout, and with it whether a chunk fits, varies from process to process with
address-space randomisation): build the workload's model (seeded weights, batch-norm statistics
from one row, so that building it allocates next to nothing, as loading a model would),
put the process in the condition (``used``: :func:`benchmarks.harness.dirty_process`), then
run ``--calls`` chunks of ``chunk`` rows through :class:`evalkit.runner.ForwardRunner` after
eight warm-up chunks (the heap grows to its steady size over the first five or so), and report
the minor page faults per call (``getrusage(RUSAGE_SELF).ru_minflt``: mean and median over the
calls) and the CPU time per row (``time.process_time``).
``--heap glibc`` leaves glibc's malloc thresholds as the process left them (evalkit before
issue 18's fix); ``--heap evalkit`` is what the runner does now
(:func:`evalkit._batching.keep_cpu_heap`)::

    python -m benchmarks.scripts.chunk_faults                       # the default table
    python -m benchmarks.scripts.chunk_faults --workloads W1 --chunks W1=222,445 --threads 2

Page-fault counts are exact and robust to other processes on the machine; CPU times are not
(shared caches), so compare them within one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
#: the chunk sizes measured by default: W1 (3x28x28, 9,408 B a row) and W2 (3x224x224,
#: 602,112 B a row); 445 / 6 rows are the former 4 MiB default, 222 / 3 the 2 MiB one
DEFAULT_CHUNKS = {"W1": (64, 111, 222, 320, 445, 512), "W2": (1, 2, 3, 4, 6)}


def measure(workload: str, chunk: int, condition: str, heap: str, threads: int,
            calls: int | None = None, path: str = "forward") -> dict[str, Any]:
    """One measurement, in this process (meant to be a fresh one). ``path="explain"`` times
    ``evalkit.explain(..., method="Saliency", batch_size=chunk)`` (forward and backward, the
    activations kept for the backward pass) instead of the runner's forward chunks."""
    import resource
    import time

    import torch

    import evalkit
    from benchmarks.harness import dirty_process
    from benchmarks.workloads import BlackBoxModel, ResNet18, seeded_model, smooth_images
    from evalkit import _batching
    from evalkit.models import wrap_model
    from evalkit.runner import ForwardRunner

    torch.set_num_threads(threads)
    if heap == "glibc":
        _batching._cpu_heap_state = False  # decided already: glibc's thresholds stay as they are
    if workload == "W1":
        model = seeded_model(lambda: BlackBoxModel(3, 7), smooth_images(1, 3, 28, seed=2),
                             seed=0)
        x = smooth_images(chunk, 3, 28, seed=1)
    else:
        model = seeded_model(lambda: ResNet18(1000), smooth_images(1, 3, 224, seed=12),
                             seed=10)
        x = smooth_images(chunk, 3, 224, seed=11)
    if condition == "used":
        dirty_process()
    y = torch.zeros(chunk, dtype=torch.int64)
    runner = ForwardRunner(wrap_model(model), batch_size=chunk)

    def one() -> Any:
        if path == "explain":
            return evalkit.explain(model, x, y, method="Saliency", batch_size=chunk)
        return runner.outputs(x, y=y)

    for _ in range(8):
        one()
    calls = calls or (max(6, 2000 // chunk) if workload == "W1" else max(4, 12 // chunk))
    faults, cpu = [], 0.0
    for _ in range(calls):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
        one()
        cpu += time.process_time() - t0
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {"workload": workload, "path": path, "chunk": chunk, "condition": condition,
            "heap": heap, "threads": threads, "calls": calls,
            "faults_per_call": sum(faults) / calls,
            "median_faults_per_call": sorted(faults)[calls // 2],
            "ms_per_row": 1e3 * cpu / (calls * chunk),
            "heap_kept": _batching._cpu_heap_state}


def _run_child(args: list[str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.scripts.chunk_faults", "--one",
                           *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", default=["W1", "W2"], choices=["W1", "W2"])
    p.add_argument("--chunks", nargs="+", default=None, metavar="W=C1,C2",
                   help="chunk sizes per workload (default: DEFAULT_CHUNKS)")
    p.add_argument("--conditions", nargs="+", default=["fresh", "used"],
                   choices=["fresh", "used"])
    p.add_argument("--heap", nargs="+", default=["glibc", "evalkit"],
                   choices=["glibc", "evalkit"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calls", type=int, default=None, help="timed chunks per measurement")
    p.add_argument("--repeat", type=int, default=3, help="new processes per configuration")
    p.add_argument("--path", default="forward", choices=["forward", "explain"],
                   help="forward: the runner's chunks; explain: Saliency (forward + backward) "
                        "in chunks of that many rows")
    p.add_argument("--json", default=None, help="also write the records here")
    p.add_argument("--one", nargs=4, default=None, metavar=("W", "CHUNK", "COND", "HEAP"),
                   help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = _parser().parse_args(argv)
    if args.one:
        w, chunk, cond, heap = args.one
        print(json.dumps(measure(w, int(chunk), cond, heap, args.threads, args.calls,
                                 args.path)))
        return []
    chunks = {w: list(c) for w, c in DEFAULT_CHUNKS.items()}
    for item in args.chunks or []:
        w, _, sizes = item.partition("=")
        chunks[w] = [int(c) for c in sizes.split(",")]
    records = []
    print(f"{args.path} path, {args.threads} torch thread(s), {args.repeat} processes each; "
          "a process faults when its median chunk takes over 100 page faults\n")
    print("| workload | chunk | condition | heap | processes that fault | faults / call "
          "(each process: median) | ms / row (CPU, mean) |")
    print("|---|---|---|---|---|---|---|")
    for w in args.workloads:
        for chunk in chunks[w]:
            for heap in args.heap:
                for cond in args.conditions:
                    extra = ["--threads", str(args.threads), "--path", args.path]
                    extra += [] if args.calls is None else ["--calls", str(args.calls)]
                    recs = [_run_child([w, str(chunk), cond, heap, *extra])
                            for _ in range(args.repeat)]
                    records += recs
                    medians = [r["median_faults_per_call"] for r in recs]
                    ms = sum(r["ms_per_row"] for r in recs) / len(recs)
                    print(f"| {w} | {chunk} | {cond} | {heap} | "
                          f"{sum(m > 100 for m in medians)}/{len(recs)} | "
                          f"{', '.join(map(str, medians))} | {ms:.3f} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1), encoding="utf-8")
    return records


if __name__ == "__main__":
    main()
