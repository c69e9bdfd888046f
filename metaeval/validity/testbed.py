"""The testbed protocol of :mod:`metaeval.validity`: a model whose mechanism is known, inputs,
and candidate explanations with a known partial order (which must beat which).

A metric is *valid* on a testbed when it scores every decided pair in the known order (the
better candidate above the worse one, after the metric's direction is taken into account).
Testbeds follow the known-mechanism designs of XAI-Units (Lee et al., 2025), AttributionLab
(Zhang et al., 2024), XAI-TRIS (Clark et al., 2024) and FunnyBirds (Hesse et al., ICCV 2023);
see ``docs/validity.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: ``f(model, x, y) -> attributions``: the signature of :func:`evalkit.explain` without the
#: keyword arguments; what a metric's ``explain_fn`` receives.
ExplainFn = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]

#: the mechanisms a testbed can plant (``Testbed.mechanism``)
MECHANISMS = ("linear", "region", "saturation", "invariance", "interaction", "model-aware",
              "sparsity", "completeness", "set-level", "grid")


@dataclass(frozen=True)
class OrderedPair:
    """``better`` must score better than ``worse`` (both names of ``Testbed.candidates``)."""

    better: str
    worse: str
    why: str  #: one sentence: the mechanism that makes ``better`` the right explanation


@dataclass(frozen=True)
class Candidate:
    """One candidate explanation: an explain function (so that metrics which re-explain, e.g.
    robustness and randomisation metrics, call it on perturbed inputs or randomised models)."""

    name: str
    explain_fn: ExplainFn
    description: str = ""

    def __call__(self, model: Any, x: torch.Tensor, y: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.explain_fn(model, x, y)


@dataclass(eq=False)
class Testbed:
    """A model with a known mechanism, inputs, and candidates with a known partial order.

    ``model`` is in eval mode and deterministic; ``x`` (N, ...) and ``y`` (N,) are what a
    metric receives; ``s`` holds ground-truth masks where the mechanism has a region (for
    localisation metrics); ``families`` lists the metric families the testbed speaks to
    (``None``: every family whose metrics can run on it); ``metric_kwargs`` are call keyword
    arguments every metric gets on this testbed (e.g. ``{"modality": "tabular"}``);
    ``reference`` is the exact attribution map where the mechanism fixes one (real-valued,
    in the layout of the candidates' maps: the ``s`` the ground-truth agreement metrics take,
    which set ``real_valued_s``).

    ``metrics`` names metrics the testbed speaks to outside its ``families`` (e.g. one
    axiomatic metric whose axiom the mechanism decides, where the family's other axioms are
    not decided). ``call_options`` are call keyword arguments for the metrics that declare
    them in their own ``call_options``: the layout of a protocol's inputs, e.g. a grid's
    target ``cells`` (GridPG, DiFull, DiPart) or a mosaic's target ``quadrants`` (Focus); a
    metric that gets one gets no ``s`` (those metrics take either, not both). ``train`` is
    ``(x_train, y_train)``: inputs drawn apart from ``x``, from the same distribution, with
    the model's own predictions as labels, for metrics that train a copy of the model
    (F-Fidelity's fine-tuning, the data randomisation test); never the evaluated ``x``.
    """

    name: str
    mechanism: str
    modality: str
    description: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    candidates: Mapping[str, Candidate]
    order: tuple[OrderedPair, ...]
    s: torch.Tensor | None = None
    families: tuple[str, ...] | None = None
    metric_kwargs: Mapping[str, Any] = field(default_factory=dict)
    reference: torch.Tensor | None = None
    metrics: tuple[str, ...] = ()
    call_options: Mapping[str, Any] = field(default_factory=dict)
    train: tuple[torch.Tensor, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"Unknown mechanism {self.mechanism!r}; one of {MECHANISMS}.")
        for pair in self.order:
            for name in (pair.better, pair.worse):
                if name not in self.candidates:
                    raise ValueError(f"Testbed {self.name!r}: the order names {name!r}, which "
                                     f"is not a candidate ({sorted(self.candidates)}).")
        if self.train is not None:
            if len(self.train) != 2 or self.train[0].shape[0] != self.train[1].shape[0]:
                raise ValueError(f"Testbed {self.name!r}: `train` must be a pair (x_train, "
                                 "y_train) with one label per input.")
            if self.train[0].shape[1:] != self.x.shape[1:]:
                raise ValueError(f"Testbed {self.name!r}: `train` inputs have the shape "
                                 f"{tuple(self.train[0].shape[1:])}, the testbed's "
                                 f"{tuple(self.x.shape[1:])}.")

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def explanation(self, name: str) -> torch.Tensor:
        """The candidate's map on the testbed's own inputs and model."""
        return self.candidates[name](self.model, self.x, self.y).detach()
