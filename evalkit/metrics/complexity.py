"""Complexity: how concise is an explanation? Model-free; computed per sample, vectorised.

Each metric reads one attribution map per sample (all of its elements: per pixel for a 1-channel
map, per channel value for a C-channel map) and never looks at other samples.
"""

from __future__ import annotations

from typing import Any

import torch

from .._validation import check_scalar
from ._sorting import sort_rows
from .base import Metric, MetricBatch

__all__ = ["Complexity", "EffectiveComplexity", "Sparseness"]


def _flat_abs(batch: MetricBatch) -> torch.Tensor:
    assert batch.a is not None
    return batch.a.reshape(batch.n, -1).abs()


class Sparseness(Metric):
    """Gini index of the absolute attributions (Chalasani et al. 2020). **Higher is better**.

    G = sum_i (2i - n - 1) |a|_(i) / (n sum_i |a|_(i)) with |a| sorted ascending: 0 for a uniform
    map, (n - 1)/n for a map with a single non-zero element. An all-zero map is undefined (NaN).

    Deviation from Quantus: no +1e-7 offset is added to the attributions. The offset scales the
    index by sum|a| / (sum|a| + n 1e-7) (the weights 2i - n - 1 sum to zero), which pulls sparse
    and small-valued maps towards 0; all-zero maps give NaN with a reason instead of Quantus' 0.
    |a| is used whatever ``abs`` says (the Gini index needs non-negative values).

    Reference: P. Chalasani et al., "Concise Explanations of Neural Networks using Adversarial
    Training", ICML 2020.
    """

    family = "complexity"
    modalities = ("image", "series", "tabular", "tokens")
    higher_is_better = True
    needs_model = False
    default_abs = True
    paper = ("Chalasani et al., Concise Explanations of Neural Networks using Adversarial "
             "Training, ICML 2020")

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        a = sort_rows(_flat_abs(batch))
        n = a.shape[1]
        total = a.sum(1)
        i = torch.arange(1, n + 1, dtype=a.dtype, device=a.device)
        gini = ((2 * i - n - 1) * a).sum(1) / (n * total)
        batch.set_nan(total == 0, "attribution is all zero")
        return gini


class Complexity(Metric):
    """Shannon entropy of the attribution distribution p_i = |a_i| / sum|a| (Bhatt et al.
    2020). **Lower is better**: 0 for a single non-zero element, log(n) for a uniform map.
    An all-zero map is undefined (NaN). Natural logarithm, as in the paper and Quantus.

    Deviations from Quantus: p log p is taken as 0 at p = 0 exactly (Quantus adds 1e-12 inside
    the logarithm, a difference below n * 1e-12); |a| is used whatever ``abs`` says (the
    distribution needs non-negative weights; Quantus divides signed values by sum|a| when
    ``abs=False`` and writes into the caller's array, deviation C15); an all-zero map is NaN with a
    reason (Quantus: NaN from 0/0 with a RuntimeWarning).

    Reference: U. Bhatt, A. Weller, J. M. F. Moura, "Evaluating and Aggregating Feature-based
    Model Explanations", IJCAI 2020.
    """

    family = "complexity"
    modalities = ("image", "series", "tabular", "tokens")
    higher_is_better = False
    needs_model = False
    default_abs = True
    paper = ("Bhatt, Weller & Moura, Evaluating and Aggregating Feature-based Model "
             "Explanations, IJCAI 2020")

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        a = _flat_abs(batch)
        total = a.sum(1, keepdim=True)
        p = a / torch.where(total > 0, total, torch.ones_like(total))
        entropy = -torch.special.xlogy(p, p).sum(1)
        batch.set_nan(total.squeeze(1) == 0, "attribution is all zero")
        return entropy


class EffectiveComplexity(Metric):
    """Number of features with |a_i| > ``eps`` (Nguyen & Rodriguez Martinez 2020).
    **Lower is better**. With the default per-sample max normalisation, ``eps`` is relative to
    each map's largest absolute value (in Quantus the maximum was taken over the whole batch,
    deviation C1, so a sample's count depended on the other samples); with ``normalise=False`` it is
    an absolute threshold and the counts equal Quantus'.

    A feature is one element of the map (a pixel of a 1-channel map, a channel value of a
    C-channel map). An all-zero map is NaN with a reason: it explains nothing, and a count of 0
    would rank it as the best (least complex) explanation (Quantus returns 0).

    Reference: A. Nguyen, M. Rodriguez Martinez, "On Quantitative Aspects of Model
    Interpretability", arXiv:2007.07584, 2020.
    """

    family = "complexity"
    modalities = ("image", "series", "tabular", "tokens")
    higher_is_better = False
    needs_model = False
    default_abs = True
    paper = ("Nguyen & Rodriguez Martinez, On Quantitative Aspects of Model Interpretability, "
             "arXiv 2020")

    def __init__(self, eps: float = 1e-5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.eps = check_scalar("eps", eps, (int, float), min_val=0)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        a = _flat_abs(batch)
        batch.set_nan(a.amax(1) == 0, "attribution is all zero")
        return (a > self.eps).sum(1).to(torch.float64)
