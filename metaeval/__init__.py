"""metaeval: meta-evaluation of explanation metrics (how reliable is a metric?).

This package builds on :mod:`evalkit` (evalkit never imports it). It is a skeleton for now: the
perturbation tests and reliability statistics arrive with the meta-evaluation work.
"""

import evalkit

__all__ = ["evalkit_version"]

evalkit_version = evalkit.__version__
