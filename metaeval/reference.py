"""Reference estimators with known criteria, to calibrate a meta-evaluation.

They stand in for a metric inside :class:`~metaeval.MetaEvaluation` (the perturbations and
sample masks are the real ones; only the scores are synthetic), like MetaQuantus'
``sanity_check`` estimators (``helpers/sanity_checks.py``), and their criteria follow from the
definitions in :mod:`metaeval.criteria`:

=============  ===================================  ======  ======  ======  ======  ============
estimator      scores                               IAC_NR  IAC_AR  IEC_NR  IEC_AR  MC
=============  ===================================  ======  ======  ======  ======  ============
``same``       perturbed = unperturbed, U(0, 1)     1       0       1       0       0.5
``different``  perturbed = fresh U(0, 1) moved by   ~0 (1)  ~1 (1)  ~1/L    0 (2)   ~(1+1/L)/4
               10 towards *better* scores
``random``     every score a fresh U(0, 1) draw     ~0.5    ~0.5    ~1/L    ~0.5    ~(1.5+1/L)/4
                                                    (3)
=============  ===================================  ======  ======  ======  ======  ============

(1) all n differences have one sign, so the exact two-sided Wilcoxon p-value is 2 / 2**n
(n <= 50; SciPy's normal approximation beyond); IAC_AR = 1 - p. (2) quality improved, never
got worse; with ``shift="worse"`` IEC_AR = 1 and MC ~ (2 + 1/L) / 4. (3) the p-value of
exchangeable pairs is (up to the discreteness of the exact test) uniform, so its mean is 0.5.
"Same" is the estimator that fails adversarial reactivity (MetaQuantus' "Estimator_Same"),
"different" the one that fails noise resilience ("Estimator_Different": MC ~ 0.29 for L = 6).
"""

from __future__ import annotations

import numpy as np

from evalkit._rng import derive_seed

__all__ = ["REFERENCE_KINDS", "ReferenceEstimator", "reference_estimators"]

REFERENCE_KINDS = ("same", "different", "random")


class ReferenceEstimator:
    """A synthetic estimator whose criteria are known (see the module docstring).

    Parameters
    ----------
    kind:
        ``"same"``, ``"different"`` or ``"random"``.
    higher_is_better:
        The direction it declares (IEC_AR reads it, as for any metric).
    shift:
        For ``"different"``: ``"better"`` (default, as MetaQuantus' Estimator_Different under
        its higher-is-better branch) or ``"worse"``.
    """

    family = "reference"
    needs_model = False
    needs_masks = False
    re_explains = False
    reads_input = False
    stochastic = True

    def __init__(self, kind: str, *, higher_is_better: bool = True, shift: str = "better"
                 ) -> None:
        if kind not in REFERENCE_KINDS:
            raise ValueError(f"`kind` must be one of {REFERENCE_KINDS}; got {kind!r}.")
        if not isinstance(higher_is_better, bool):
            raise TypeError(f"`higher_is_better` must be a bool; got {higher_is_better!r}.")
        if shift not in ("better", "worse"):
            raise ValueError(f"`shift` must be 'better' or 'worse'; got {shift!r}.")
        self.kind = kind
        self.higher_is_better = higher_is_better
        self.shift = shift

    def __repr__(self) -> str:
        extra = f", shift={self.shift!r}" if self.kind == "different" else ""
        return (f"ReferenceEstimator({self.kind!r}, higher_is_better={self.higher_is_better}"
                f"{extra})")

    def _rng(self, seed: int, *labels: object) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(derive_seed(seed, "reference", self.kind,
                                                               *labels) & ((1 << 63) - 1)))

    def unperturbed(self, shape: tuple[int, int], seed: int) -> np.ndarray:
        """Unperturbed scores (L, N)."""
        return self._rng(seed, "unperturbed").random(shape)

    def perturbed(self, q_star: np.ndarray, seed: int, *labels: object) -> np.ndarray:
        """Scores (L, N) after the perturbation identified by ``labels``."""
        if self.kind == "same":
            return q_star.copy()
        fresh = self._rng(seed, "perturbed", *labels).random(q_star.shape)
        if self.kind == "random":
            return fresh
        better = 1.0 if self.higher_is_better else -1.0
        sign = better if self.shift == "better" else -better
        return fresh + sign * 10.0


def reference_estimators(higher_is_better: bool = True) -> dict[str, ReferenceEstimator]:
    """The three reference estimators by name, e.g. to meta-evaluate next to real metrics."""
    return {f"Reference:{k}": ReferenceEstimator(k, higher_is_better=higher_is_better)
            for k in REFERENCE_KINDS}
