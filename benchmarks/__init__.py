"""Benchmark harness: times evalkit's metrics against the bare forward-pass floor and, where the
installed ``quantus`` package has the same metric, against Quantus on identical inputs.

Run ``python -m benchmarks.run --help``; the results table lives in ``docs/benchmarks.md``.
Nothing here is imported by evalkit; speed targets are measured here, never asserted in tests.
"""
