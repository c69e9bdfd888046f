"""Shared pieces of the evaluate / store / CLI tests (not a test module).

Importable from a subprocess too (the kill-and-resume test runs :func:`resumable_run` in a
child process and again in the test process: the configuration hashes must agree, so the
metric classes live here, in a module both import under the same name).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

import evalkit as ek
from evalkit.datasets import make_shapes
from evalkit.metrics.complexity import Sparseness
from evalkit.zoo import load_shapes_cnn

TESTS_DIR = Path(__file__).resolve().parent
CALL_LOG = "EVALKIT_TEST_CALL_LOG"
DIE_AT = "EVALKIT_TEST_DIE_AT"


def tiny_cnn(seed: int = 0) -> torch.nn.Module:
    """A seeded 1-channel 8 x 8 CNN with 3 classes (eval mode), for metaeval tests."""
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return net.eval()


def problem(n: int = 12, seed: int = 3) -> tuple[torch.nn.Module, np.ndarray, np.ndarray,
                                                  np.ndarray]:
    """The shipped CNN and ``n`` synthetic 32 x 32 shapes images with masks."""
    data = make_shapes(n, seed=seed)
    return load_shapes_cnn(), data.x, data.y, data.masks


class _CountingSparseness(Sparseness):
    """Sparseness that logs each call (a line ``<tag> <rows>`` in the file named by
    ``$EVALKIT_TEST_CALL_LOG``) and, when ``$EVALKIT_TEST_DIE_AT`` is k, kills its process in
    the middle of its k-th call (before it returns, so that unit is never stored).

    The leading underscore keeps it out of the metric registry; ``tag`` (set it in a
    subclass) is not a parameter, so it does not change configuration hashes.
    """

    tag = "count"

    def _evaluate(self, batch: Any) -> torch.Tensor:
        path = os.environ.get(CALL_LOG)
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"{self.tag} {batch.n}\n")
            die_at = os.environ.get(DIE_AT)
            if die_at and len(read_log(path)) >= int(die_at):
                os._exit(17)
        return super()._evaluate(batch)


class _Boom(Sparseness):
    """A metric that always fails."""

    calls = 0

    def _evaluate(self, batch: Any) -> torch.Tensor:
        type(self).calls += 1
        raise RuntimeError("boom: this metric always fails")


def read_log(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.exists():
        return []
    return [line for line in p.read_text(encoding="utf-8").splitlines() if line]


class CountingExplainer:
    """A callable explanation method (Saliency) that counts its calls and rows."""

    def __init__(self, method: str = "Saliency", **kwargs: Any) -> None:
        self.method = method
        self.kwargs = kwargs
        self.calls: list[int] = []

    def __call__(self, model: Any, x: Any, y: Any = None, **kw: Any) -> Any:
        self.calls.append(int(x.shape[0]))
        return ek.explain(model, x, y, method=self.method, **self.kwargs)


def resumable_setup() -> dict[str, Any]:
    """The evaluation of the kill-and-resume test: 2 methods x 2 metrics x 4 chunks of 4."""
    model, x, y, s = problem(16, seed=11)
    metrics = {"count": _CountingSparseness(), "rank": ek.metrics.RelevanceRankAccuracy()}
    methods = {"Saliency": {"reduce_channels": "abs_sum"}, "Random": {}}
    return {"metrics": metrics, "xai_methods": methods, "model": model, "x": x, "y": y, "s": s,
            "chunk_size": 4, "seed": 5, "progress": False}


def resumable_run(store: str | None) -> ek.Results:
    return ek.evaluate(**resumable_setup(), store=store)

