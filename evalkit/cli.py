"""Command-line interface: ``evalkit demo``, ``evalkit metrics``, ``evalkit methods``."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["main"]

# (display name, metric name, constructor kwargs); metrics not yet available are skipped.
DEMO_METRICS: list[tuple[str, str, dict]] = [
    ("PixelFlipping", "PixelFlipping", {"features_in_step": 32}),
    ("Deletion", "Deletion", {}),
    ("RelevanceMass", "RelevanceMassAccuracy", {}),
    ("RelevanceRank", "RelevanceRankAccuracy", {}),
    ("PointingGame", "PointingGame", {}),
    ("Sparseness", "Sparseness", {}),
    ("Complexity", "Complexity", {}),
]
DEMO_METHODS: list[tuple[str, str, dict]] = [
    ("Saliency", "Saliency", {"reduce_channels": "abs_sum"}),
    ("IntegratedGradients", "IntegratedGradients", {"n_steps": 16, "reduce_channels": "sum"}),
    ("InputXGradient", "InputXGradient", {"reduce_channels": "sum"}),
    ("GradCAM", "GradCAM", {}),
    ("Random", "Random", {"seed": 0}),
]


def _demo(args: argparse.Namespace) -> int:
    import torch

    import evalkit as ek
    from evalkit.datasets import make_shapes
    from evalkit.explain import available_methods
    from evalkit.zoo import load_shapes_cnn

    started = time.perf_counter()
    n = 32 if args.quick else args.n
    data = make_shapes(n, seed=args.seed)
    model = load_shapes_cnn()
    wrapper = ek.wrap_model(model)
    with torch.inference_mode():
        pred = wrapper.predict(data.x).argmax(1).numpy()
    accuracy = float((pred == data.y).mean())
    print(f"evalkit {ek.__version__} demo: {n} synthetic shapes images (seed {args.seed}), "
          f"ShapesCNN accuracy {accuracy:.1%}")

    methods: dict[str, np.ndarray] = {}
    for name, method, kwargs in DEMO_METHODS:
        if method not in available_methods():
            continue
        methods[name] = ek.explain(model, data.x, data.y, method=method, **kwargs)
    methods["GroundTruth (mask)"] = data.masks.astype(np.float32)

    available = set(ek.metrics.list_metrics()["name"])
    columns = [(d, m, kw) for d, m, kw in DEMO_METRICS if m in available]
    table: dict[str, dict[str, str]] = {}
    for method_name, a in methods.items():
        row = {}
        for display, metric_name, kwargs in columns:
            metric = ek.metrics.get(metric_name)(**kwargs, disable_warnings=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores = metric(model, data.x, data.y, a, s=data.masks)
            mean = np.nanmean(scores)
            sem = np.nanstd(scores) / max(1, np.sqrt(np.isfinite(scores).sum()))
            row[display] = f"{mean:.3f} ± {sem:.3f}"
        table[method_name] = row

    header = ["method"] + [
        f"{d} {'↑' if ek.metrics.get(m).higher_is_better else '↓'}" for d, m, _ in columns
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method_name, row in table.items():
        lines.append("| " + " | ".join([method_name] + [row[d] for d, _, _ in columns]) + " |")
    print("\n".join(lines))
    print(f"(mean ± s.e.m. over {n} samples; ↑ higher is better, ↓ lower is better; "
          f"{time.perf_counter() - started:.1f} s)")
    return 0


def _metrics(args: argparse.Namespace) -> int:
    import evalkit as ek

    frame = ek.metrics.list_metrics(args.family)
    cols = ["name", "family", "higher_is_better", "needs_masks", "re_explains", "stochastic"]
    print(frame[cols].to_string(index=False))
    return 0


def _methods(args: argparse.Namespace) -> int:
    from evalkit.explain import available_methods

    print("\n".join(available_methods()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evalkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="evaluate explanation methods on the shipped data and model")
    demo.add_argument("--n", type=int, default=128, help="number of images (default 128)")
    demo.add_argument("--seed", type=int, default=2026, help="data seed (default 2026)")
    demo.add_argument("--quick", action="store_true", help="a 32-image run")
    demo.set_defaults(func=_demo)
    metrics = sub.add_parser("metrics", help="list the metrics and their metadata")
    metrics.add_argument("--family", default=None)
    metrics.set_defaults(func=_metrics)
    methods = sub.add_parser("methods", help="list the explanation methods")
    methods.set_defaults(func=_methods)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
