"""Issue 24's plain user script: the W3 meta-evaluation as a user writes it, timed in wall time.

With no options this is the script of issue 24 (64 samples, two iterations, one torch thread,
the tutorial CNN with fresh random weights, uniform inputs in [-1, 1], one fixed 12 x 12 mask,
``{"IntegratedGradients": {}}``, i.e. evalkit's default of 50 Gauss-Legendre steps). The other
options switch one ingredient at a time to what the harness's W3 case uses, to find where the
two timings differ::

    python -m benchmarks.scripts.issue24_w3 --n 8 --iterations 1 --count
    python -m benchmarks.scripts.issue24_w3 --n 8 --iterations 1 --count --methods harness

``--methods harness`` gives IntegratedGradients the harness's (and Quantus') ``n_steps=10,
integration_method="riemann_trapezoid"``; ``--model harness`` / ``--data harness`` use the
harness's W1 model (seeded, batch-norm statistics calibrated) and its smooth images and random
rectangles; ``--threads 0`` keeps torch's default thread count. ``--count`` adds forward
calls/rows (a forward pre-hook), minor page faults and CPU time; ``--profile N`` prints the
N most expensive functions (cProfile, cumulative). The last line printed is a JSON record
(``wall_s`` of the meta-evaluation call, as the issue measures it) that the benchmark harness
reads when it times this script in a plain process.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

import numpy as np
import torch

USER_METHODS: dict[str, dict[str, Any]] = {
    "Saliency": {}, "IntegratedGradients": {}, "GradientShap": {}}
HARNESS_METHODS: dict[str, dict[str, Any]] = {
    "Saliency": {},
    "IntegratedGradients": {"n_steps": 10, "integration_method": "riemann_trapezoid"},
    "GradientShap": {},
}


class BlackBoxModel(torch.nn.Module):  # the DermaMNIST tutorial CNN (W1), as in the issue
    def __init__(self, c: int = 3, k: int = 7) -> None:
        super().__init__()
        nn = torch.nn
        self.layer1 = nn.Sequential(nn.Conv2d(c, 16, 3), nn.BatchNorm2d(16), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(16, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
                                    nn.MaxPool2d(2, 2))
        self.layer3 = nn.Sequential(nn.Conv2d(16, 64, 3), nn.BatchNorm2d(64), nn.ReLU())
        self.layer4 = nn.Sequential(nn.Conv2d(64, 64, 3), nn.BatchNorm2d(64), nn.ReLU())
        self.layer5 = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64),
                                    nn.ReLU(), nn.MaxPool2d(2, 2))
        self.fc = nn.Sequential(nn.Linear(1024, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                                nn.Linear(128, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer5(self.layer4(self.layer3(self.layer2(self.layer1(x)))))
        return self.fc(x.flatten(1))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=64, help="samples (default 64, the issue's)")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (default 1, as the issue's script; 0: torch's "
                        "default)")
    p.add_argument("--suite", default="tutorial", choices=["tutorial", "mnist", "imagenet"])
    p.add_argument("--methods", default="user", choices=["user", "harness"],
                   help="user: IntegratedGradients with evalkit's defaults (50 steps); "
                        "harness: 10 riemann_trapezoid steps as the harness and Quantus")
    p.add_argument("--model", default="user", choices=["user", "harness"],
                   help="user: fresh random init (torch.manual_seed(4321)); harness: W1's "
                        "seeded model with calibrated batch-norm statistics")
    p.add_argument("--data", default="user", choices=["user", "harness"],
                   help="user: uniform [-1, 1] inputs, one 12x12 mask; harness: W1's smooth "
                        "images and random rectangles")
    p.add_argument("--flush-denormal", action="store_true",
                   help="torch.set_flush_denormal(True) before running")
    p.add_argument("--glibc-heap", action="store_true",
                   help="leave glibc's malloc thresholds alone (as before evalkit set them, "
                        "see evalkit._batching.keep_cpu_heap)")
    p.add_argument("--cpu-budget", type=float, default=None, metavar="MIB",
                   help="the runner's default CPU chunk budget in MiB (4 before issue 18's "
                        "fix, 2 after)")
    p.add_argument("--explain-budget", type=float, default=None, metavar="MIB",
                   help="evalkit.explain's CPU chunk budget in MiB (EXPLAIN_MEMORY_BUDGET, 4)")
    p.add_argument("--library", default="evalkit", choices=["evalkit", "metaquantus"],
                   help="metaquantus: the same meta-evaluation with MetaQuantus 0.0.5 (the "
                        "harness's W3 comparison: one MetaEvaluation per metric, Quantus' own "
                        "explanations with its defaults; needs the oracle, see "
                        "benchmarks/_metaquantus.py)")
    p.add_argument("--count", action="store_true",
                   help="also count forward calls/rows, page faults and CPU time")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="print the N top functions by cumulative time (cProfile)")
    return p


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, np.ndarray, np.ndarray,
                                               np.ndarray]:
    """The model and the data ``(x, y, s)`` as the options ask."""
    n = args.n
    if args.model == "user":
        torch.manual_seed(4321)
        model = BlackBoxModel().eval()
    else:
        from benchmarks.workloads import get_workload

        model = get_workload("W1", max(n, 256)).model
    if args.data == "user":
        x = (torch.rand(n, 3, 28, 28, generator=torch.Generator().manual_seed(4321)) * 2
             - 1).numpy()
        s = np.zeros((n, 1, 28, 28), np.float32)
        s[:, :, 8:20, 8:20] = 1
    else:
        from benchmarks.workloads import get_workload

        w = get_workload("W1", max(n, 256))  # the harness's W3 takes W1's first n samples
        x, s = w.np("x")[:n], w.np("s")[:n]
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    return model, x, y, s


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    import evalkit as ek
    import metaeval as me
    from evalkit import _batching

    if args.glibc_heap:
        _batching._cpu_heap_state = False  # as if already decided: nothing is changed
    if args.cpu_budget is not None:
        _batching.DEFAULT_MEMORY_BUDGET["cpu"] = int(args.cpu_budget * 2**20)
    if args.explain_budget is not None:
        from evalkit.explain import core as explain_core

        explain_core.EXPLAIN_MEMORY_BUDGET["cpu"] = int(args.explain_budget * 2**20)

    model, x, y, s = build(args)
    if args.library == "metaquantus":
        return _metaquantus_main(args, model, x, y, s)
    metrics = {
        "Sparseness": ek.metrics.Sparseness(),
        "FaithfulnessCorrelation": ek.metrics.FaithfulnessCorrelation(
            nr_runs=10, subset_size=56, perturb_baseline="uniform"),
        "PointingGame": ek.metrics.PointingGame(),
        "MaxSensitivity": ek.metrics.MaxSensitivity(nr_samples=10, lower_bound=0.01),
    }
    methods = USER_METHODS if args.methods == "user" else HARNESS_METHODS
    mev = me.MetaEvaluation(me.default_suite(args.suite), methods,
                            iterations=args.iterations, nr_perturbations=3, seed=0)

    def call() -> Any:
        return mev(metrics, model, x, y, s=s)

    record: dict[str, Any] = {"n": args.n, "iterations": args.iterations,
                              "threads": torch.get_num_threads(), "suite": args.suite,
                              "methods": args.methods, "model": args.model, "data": args.data,
                              "glibc_heap": args.glibc_heap,
                              "cpu_budget": _batching.DEFAULT_MEMORY_BUDGET["cpu"],
                              "explain_budget": args.explain_budget,
                              "torch": torch.__version__}
    counter = None
    if args.count:
        from benchmarks.harness import count_forwards

        counter = count_forwards(model)
        count = counter.__enter__()
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        result = prof.runcall(call)
    else:
        result = call()
    record["wall_s"] = time.perf_counter() - t0
    if counter is not None:
        counter.__exit__(None, None, None)
        record.update(cpu_s=time.process_time() - cpu0,
                      minor_faults=resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0,
                      forward_calls=count.calls, forward_rows=count.rows,
                      grad_rows=count.grad_rows)
    summary = result.summary()
    mean = summary[summary["space"] == "Mean"]
    record["MC"] = {str(k): round(float(v), 6) for k, v in zip(mean["metric"], mean["MC"],
                                                               strict=True)}
    print(f"{record['wall_s']:.1f} s", file=sys.stderr)
    if args.profile:
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(args.profile)
    print(json.dumps(record))
    return record


def _metaquantus_main(args: argparse.Namespace, model: torch.nn.Module, x: np.ndarray,
                      y: np.ndarray, s: np.ndarray) -> dict[str, Any]:
    """MetaQuantus 0.0.5 on the same setting, as the harness runs it (timed the same way)."""
    import warnings

    from benchmarks._metaquantus import load_metaquantus
    from benchmarks._quantus import load_quantus
    from benchmarks.specs.metaeval import ITERATIONS, PERTURBATIONS, _mq_suite, _quantus_metrics

    q, mq = load_quantus(), load_metaquantus()
    if q is None or mq is None:
        raise SystemExit("MetaQuantus needs quantus and the metaquantus oracle installed.")
    xai = {"Saliency": {}, "IntegratedGradients": {}, "GradientShap": {}}
    metrics = _quantus_metrics(q)
    record: dict[str, Any] = {"n": args.n, "iterations": ITERATIONS, "library": "metaquantus",
                              "threads": torch.get_num_threads(), "model": args.model,
                              "data": args.data, "torch": torch.__version__}
    t0 = time.perf_counter()
    mc = {}
    for name, (metric, direction) in metrics.items():
        run = mq.MetaEvaluation(test_suite=_mq_suite(mq), xai_methods=xai,
                                iterations=ITERATIONS, nr_perturbations=PERTURBATIONS,
                                write_to_file=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run(estimator=metric, model=model, x_batch=x, y_batch=y, s_batch=s, softmax=False,
                device="cpu", score_direction=direction)
        r = run.results_meta_consistency_scores
        mc[name] = round(float(np.mean([r["Model"]["MC_mean"], r["Input"]["MC_mean"]])), 6)
    record["wall_s"] = time.perf_counter() - t0
    record["MC"] = mc
    print(f"{record['wall_s']:.1f} s", file=sys.stderr)
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
