"""Benchmark harness: times evalkit's metrics against the bare forward-pass floor and, where the
installed ``quantus`` package has the same metric, against Quantus on identical inputs; the
meta-evaluation (W3) against MetaQuantus 0.0.5; W4-W6 are tabular, series and text workloads
(``benchmarks/workloads.py``, ``benchmarks/specs/modalities.py``).

Regenerate the whole of ``docs/benchmarks.md`` with one command (about two hours of one core)::

    python -m benchmarks.run --full

The measured rows are stored in ``benchmarks/data/results.json`` (see ``benchmarks/store.py``)
and the page is rendered from them (``python -m benchmarks.run --render``). See
``python -m benchmarks.run --help`` and ``benchmarks/run.py``. Nothing here is imported by
evalkit; speed targets are measured here, never asserted in tests.
"""
