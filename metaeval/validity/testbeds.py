"""The library of known-mechanism testbeds of :mod:`metaeval.validity`.

Each testbed is a tiny torch model whose mechanism is known analytically (which input features
it reads, how they combine, what the exact attribution of its output is), inputs, candidate
explanations (explain functions, so that metrics which re-explain call them on perturbed inputs
and randomised models) and the partial order the mechanism fixes (which candidate must beat
which, each with a one-sentence why). A metric that ranks a decided pair the other way round is
wrong *on that mechanism*; see :func:`metaeval.validity.validity_report` and
``docs/validity.md``.

=================  ===========================================================================
mechanism          what the model does; what a correct metric must see
=================  ===========================================================================
``linear``         z = w . x + b (mixed signs): the exact attribution w * (x - x') is known;
                   it beats its negation, a sign-blind copy and noise
``region``         reads only a known region (through a monotone nonlinear model): a map inside
                   the region beats one outside it (masks ``s`` for localisation)
``saturation``     z = A clamp(u . x_R, max=1) + v . x_rest: the gradient is exactly zero on
                   the evidence, which carries the output; Integrated Gradients (closed form)
                   beats the gradient (Sundararajan et al. 2017)
``invariance``     linear on a region, constant outside it: its gradient (the weights) is
                   the same at every input; maps that move with ignored inputs are less stable
``interaction``    the product of two regions' evidence (AND, or XOR of their signs): a map of
                   both regions (the closed-form IG) beats a map of one of them
``model-aware``    a small CNN / MLP whose decision reads one part of the input: gradient maps
                   depend on the weights, edge and intensity maps do not (model
                   randomisation, Adebayo et al. 2018)
``sparsity``       reads one feature: the one-hot map beats a spread and a uniform map
``completeness``   a bias-free ReLU network (positively homogeneous): gradient x (input -
                   baseline) is complete *and* input invariant; the gradient is not complete,
                   gradient x input not input invariant (Kindermans et al. 2019)
``set-level``      each class is a template; the class's template (the model's gradient) is
                   class-consistent, a template of a random other class is not (Sufficiency
                   and Consistency, Dasgupta et al. 2022)
``grid``           a 2 x 2 grid of cells, one head per cell that reads only its own cell (the
                   fully disconnected model of DiFull, Rao et al. 2022): a map inside the
                   explained cell beats one spread over the grid, which beats one of the
                   other cells only (GridPG, DiFull, DiPart, Focus on their own protocol)
=================  ===========================================================================

Conventions every testbed keeps:

* numeric inputs are shifted so that each sample's minimum is exactly 0: the metrics' default
  ``"black"`` baseline (the per-sample minimum) and the ``"zero"`` baseline coincide, and the
  exact candidates (computed against the per-sample minimum, so that they stay exact on a
  user's data in :func:`~metaeval.validity.plant_mechanism`) are exact against either;
* two-class models output the logits (-z(x), z(x)): the explained logit and the softmax
  probability move together, so an attribution exact for the logit ranks features for the
  probability too;
* maps have the shapes metrics take: (N, 1, H, W) images, (N, 1, T) series, (N, F) tables,
  (N, L) tokens; token ids are (N, L) int64 with 0 the mask token (the default
  ``mask_token_id`` of :class:`evalkit.modality.TokensModality`), whose embedding is zero;
* everything is deterministic given ``seed`` (weights, data, and the random candidates, which
  are keyed on each sample's values as evalkit's controls are), and builders never touch the
  global random generators.

References: W. Lee et al., "XAI-Units: Benchmarking Explainability Methods with Unit Tests",
FAccT 2025 (arXiv:2506.01059); Y. Zhang et al., "AttributionLab: Faithfulness of Feature
Attribution Under Controllable Environments", 2024 (arXiv:2310.06514); B. Clark, R. Wilming,
S. Haufe, "XAI-TRIS: Non-linear image benchmarks to quantify false positive post-hoc
attribution of feature importance", Machine Learning 2024; R. Hesse, S. Schaub-Meyer, S. Roth,
"FunnyBirds: A Synthetic Vision Dataset for a Part-Based Analysis of Explainable AI Methods",
ICCV 2023; M. Sundararajan, A. Taly, Q. Yan, "Axiomatic Attribution for Deep Networks", ICML
2017; J. Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018; P.-J. Kindermans et
al., "The (Un)reliability of Saliency Methods", LNCS 11700, 2019; S. Dasgupta, N. Frost,
M. Moshkovitz, "Framework for Evaluating Faithfulness of Local Explanations", ICML 2022.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from evalkit import _rng
from evalkit.metrics.grid import grid_cell_masks

from .testbed import MECHANISMS, Candidate, OrderedPair, Testbed

__all__ = [
    "DEFAULT_N",
    "DEFAULT_SHAPES",
    "TESTBED_MODALITIES",
    "TOKENS_VOCABULARY",
    "CNNModel",
    "GridCellModel",
    "HomogeneousModel",
    "LinearModel",
    "ProductModel",
    "RegionModel",
    "SaturatingModel",
    "TemplateModel",
    "TokenScoreModel",
    "build_testbed",
    "class_templates_testbed",
    "completeness_testbed",
    "default_region",
    "grid_testbed",
    "interaction_testbed",
    "invariance_testbed",
    "linear_testbed",
    "list_testbeds",
    "model_aware_testbed",
    "one_hot_testbed",
    "region_testbed",
    "saturation_testbed",
    "train_size",
]

#: the modalities testbeds are built for
TESTBED_MODALITIES = ("image", "series", "tabular", "tokens")
#: the default shape of one input per modality: small, so that every registered metric runs on
#: every testbed in minutes on one core
DEFAULT_SHAPES: dict[str, tuple[int, ...]] = {
    "image": (3, 12, 12), "series": (2, 24), "tabular": (12,), "tokens": (12,)}
#: the default number of samples of a testbed
DEFAULT_N = 16
#: the vocabulary of the token testbeds (id 0 is the mask token)
TOKENS_VOCABULARY = 20


# ============================================================================ layout helpers
def _check_modality(modality: str) -> str:
    if modality not in TESTBED_MODALITIES:
        raise ValueError(f"Unknown modality {modality!r}; testbeds exist for "
                         f"{TESTBED_MODALITIES}.")
    return modality


def _has_channels(modality: str) -> bool:
    return modality in ("image", "series")


def _feature_shape(modality: str, shape: Sequence[int]) -> tuple[int, ...]:
    """The arrangement of the features (pixels, time steps, columns, tokens) of one input."""
    return tuple(shape[1:]) if _has_channels(modality) else tuple(shape)


def _to_map(contributions: torch.Tensor, modality: str) -> torch.Tensor:
    """Per-element values (N, *shape) as the map metrics take: channels summed to one."""
    if _has_channels(modality):
        return contributions.sum(1, keepdim=True)
    return contributions


def _elements(features: torch.Tensor, modality: str, shape: Sequence[int]) -> torch.Tensor:
    """A mask over the features as a mask over the elements of one input (channels alike)."""
    if _has_channels(modality):
        return features.unsqueeze(0).expand(shape[0], *features.shape).clone()
    return features.clone()


def _masks(features: torch.Tensor, modality: str, n: int) -> torch.Tensor:
    """Ground-truth masks ``s`` for n samples in the layout of the maps (bool)."""
    if _has_channels(modality):
        return features.reshape(1, 1, *features.shape).expand(n, 1, *features.shape).clone()
    return features.reshape(1, *features.shape).expand(n, *features.shape).clone()


def _baseline(x: torch.Tensor) -> torch.Tensor:
    """The per-sample minimum of x, shaped to broadcast: evalkit's ``"black"`` baseline."""
    return x.flatten(1).min(1).values.reshape(-1, *([1] * (x.ndim - 1)))


def _labels(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    if y is None:
        with torch.no_grad():
            return model(x).argmax(1)
    return torch.as_tensor(y, device=x.device).long().reshape(-1)


def _class_sign(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """+1 for class 1 and -1 for class 0 of a two-class model with logits (-z, z)."""
    return (2 * y - 1).to(dtype)


def default_region(feature_shape: Sequence[int], *, corner: str = "first") -> torch.Tensor:
    """A box of about a third of every axis of the features (pixels (H, W), time steps (T,),
    columns (F,), tokens (L,)), off-centre: starting a sixth in (``corner="first"``) or ending
    a sixth before the end (``corner="last"``). Bool, ``feature_shape``."""
    if corner not in ("first", "last"):
        raise ValueError(f"`corner` must be 'first' or 'last'; got {corner!r}.")
    mask = torch.zeros(tuple(feature_shape), dtype=torch.bool)
    slices = []
    for d in feature_shape:
        size = max(1, math.ceil(d / 3))
        start = d // 6 if corner == "first" else max(0, d - d // 6 - size)
        slices.append(slice(start, start + size))
    mask[tuple(slices)] = True
    return mask


def _new_module(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module without touching the global RNG (its default initialisation is then
    overwritten from a seeded generator)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def _generator(seed: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(_rng.derive_seed(seed, "testbed", stream)
                                         & ((1 << 63) - 1))


def _shift_to_zero(x: torch.Tensor) -> torch.Tensor:
    """Each sample shifted so that its minimum is exactly 0 (see the module docstring)."""
    return x - _baseline(x)


def _numeric_inputs(n: int, shape: Sequence[int], gen: torch.Generator,
                    lit: torch.Tensor | None = None, *, background: float = 1.0) -> torch.Tensor:
    """U(0, background) inputs, with the elements of ``lit`` (element mask, or one per sample)
    drawn from U(0.5, 1) instead; each sample shifted to a minimum of exactly 0."""
    x = torch.rand(n, *shape, generator=gen) * background
    if lit is not None:
        bright = 0.5 + 0.5 * torch.rand(n, *shape, generator=gen)
        x = torch.where(lit.expand(n, *shape) if lit.ndim == len(shape) else lit, bright, x)
    return _shift_to_zero(x)


def _token_inputs(n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(1, TOKENS_VOCABULARY, (n, length), generator=gen)


# ============================================================================ models
class _TwoClass(nn.Module):
    """Logits (-z(x), z(x)) from a score z: class 1 when z > 0."""

    def score(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.score(x)
        return torch.stack([-z, z], 1)


class LinearModel(_TwoClass):
    """z = w . x + b on the flattened input (one ``nn.Linear``, which receives the input
    unchanged, so that InputInvariance can absorb a shift in its bias). The exact attribution
    of class c's logit against a baseline x' is sign(c) w * (x - x'), summing to the change of
    the logit (completeness)."""

    def __init__(self, n_inputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_inputs, 1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))[:, 0]


class RegionModel(_TwoClass):
    """Reads only the elements of a fixed mask (a buffer: it survives layer randomisation):
    z = v . sum_positions softplus(conv(x * mask)) - c, with non-negative convolution
    weights and positive head weights, so z increases with every feature of the region and
    does not depend on any other. Images use a 3 x 3 ``Conv2d``, series a ``Conv1d``, tables a
    ``Linear`` layer."""

    def __init__(self, modality: str, shape: Sequence[int], mask: torch.Tensor,
                 hidden: int = 4) -> None:
        super().__init__()
        self.modality = modality
        self.register_buffer("mask", mask.to(torch.float32))
        if modality == "image":
            self.body: nn.Module = nn.Conv2d(shape[0], hidden, 3, padding=1)
        elif modality == "series":
            self.body = nn.Conv1d(shape[0], hidden, 3, padding=1)
        else:
            self.body = nn.Linear(int(math.prod(shape)), hidden)
        self.head = nn.Linear(hidden, 1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        read = x * self.mask.to(x.dtype)
        if self.modality == "tabular":
            hidden = F.softplus(self.body(read.flatten(1)))
        else:
            hidden = F.softplus(self.body(read)).flatten(2).sum(2)
        return self.head(hidden)[:, 0]


class SaturatingModel(_TwoClass):
    """z = A clamp(e(x), max=1) + d(x) with e and d the two rows of one ``nn.Linear`` on the
    flattened input: e the evidence (non-negative weights on a region), d a small distractor
    (mixed weights elsewhere, bias -c). Where e(x) > 1 the output is saturated: the gradient
    is exactly zero on the evidence, which still carries A of the output.

    :meth:`integrated_gradients` gives Integrated Gradients in closed form (exact, no
    quadrature): along the straight path from x' the evidence moves linearly, so a region
    feature's share is A u_i (x_i - x'_i) times the fraction of the path on which e < 1.
    """

    def __init__(self, n_inputs: int, amplitude: float = 2.0) -> None:
        super().__init__()
        self.linear = nn.Linear(n_inputs, 2)
        self.register_buffer("amplitude", torch.tensor(float(amplitude)))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x.flatten(1))
        return self.amplitude.to(h.dtype) * torch.clamp(h[:, 0], max=1.0) + h[:, 1]

    def evidence(self, x: torch.Tensor) -> torch.Tensor:
        """e(x), (N,)."""
        return self.linear(x.flatten(1))[:, 0]

    def integrated_gradients(self, x: torch.Tensor, y: torch.Tensor,
                             baseline: torch.Tensor) -> torch.Tensor:
        """Exact Integrated Gradients of class y's logit against ``baseline`` (broadcastable
        to x), per element (N, *x.shape[1:])."""
        base = baseline.expand_as(x)
        hx, hb = self.linear(x.flatten(1)), self.linear(base.flatten(1))
        below = _fraction_below(hb[:, 0], hx[:, 0], 1.0)
        weight = self.linear.weight.to(x.dtype)
        delta = (x - base).flatten(1)
        amp = self.amplitude.to(x.dtype)
        contrib = amp * below[:, None] * weight[0] * delta + weight[1] * delta
        return (_class_sign(y, x.dtype)[:, None] * contrib).reshape(x.shape)


def _fraction_below(start: torch.Tensor, end: torch.Tensor, level: float) -> torch.Tensor:
    """The share of the straight path from ``start`` to ``end`` (per sample) below ``level``."""
    span = end - start
    safe = torch.where(span == 0, torch.ones_like(span), span)
    crossing = ((level - start) / safe).clamp(0, 1)
    rising = torch.where(span > 0, crossing, 1 - crossing)
    flat = (start < level).to(start.dtype)
    return torch.where(span == 0, flat, rising)


class ProductModel(_TwoClass):
    """z = k p_A(x) p_B(x) - c, where p_A and p_B are the two rows of one ``nn.Linear`` on the
    flattened input (each reads one region; their biases centre them): with both regions'
    evidence positive this is an AND (either region alone cannot raise z), with centred
    evidence and k < 0 an XOR of the regions' signs. Neither region alone determines the output.

    :meth:`integrated_gradients` gives the exact Integrated Gradients: along the straight path
    p_A and p_B move linearly, so region A's features get k a_i (x_i - x'_i) times the mean of
    p_B over the path, and the other way round.
    """

    def __init__(self, n_inputs: int, gain: float = 1.0, offset: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.Linear(n_inputs, 2)
        self.register_buffer("gain", torch.tensor(float(gain)))
        self.register_buffer("offset", torch.tensor(float(offset)))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        p = self.linear(x.flatten(1))
        return self.gain.to(p.dtype) * p[:, 0] * p[:, 1] - self.offset.to(p.dtype)

    def integrated_gradients(self, x: torch.Tensor, y: torch.Tensor,
                             baseline: torch.Tensor) -> torch.Tensor:
        """Exact Integrated Gradients of class y's logit against ``baseline``, per element."""
        base = baseline.expand_as(x)
        px, pb = self.linear(x.flatten(1)), self.linear(base.flatten(1))
        mean_path = (px + pb) / 2  # the mean of a linear function over the path
        weight = self.linear.weight.to(x.dtype)
        delta = (x - base).flatten(1)
        contrib = (weight[0] * delta * mean_path[:, 1:2] + weight[1] * delta * mean_path[:, 0:1])
        contrib = self.gain.to(x.dtype) * contrib
        return (_class_sign(y, x.dtype)[:, None] * contrib).reshape(x.shape)


class CNNModel(nn.Module):
    """A small randomly initialised network with two classes: two 3 x 3 convolutions with ReLU
    and average pooling for images and series, a two-layer MLP for tables. Its gradients
    depend on every layer's weights (the model of the model-randomisation testbeds)."""

    def __init__(self, modality: str, shape: Sequence[int], hidden: int = 6) -> None:
        super().__init__()
        if modality == "image":
            conv, pool = nn.Conv2d, nn.AdaptiveAvgPool2d(3)
            pooled = hidden * 9
        elif modality == "series":
            conv, pool = nn.Conv1d, nn.AdaptiveAvgPool1d(3)
            pooled = hidden * 3
        else:
            conv = None
        if conv is not None:
            self.features: nn.Module = nn.Sequential(
                conv(shape[0], hidden, 3, padding=1), nn.ReLU(),
                conv(hidden, hidden, 3, padding=1), nn.ReLU(), pool, nn.Flatten())
            self.classifier = nn.Linear(pooled, 2)
        else:
            self.features = nn.Sequential(nn.Flatten(), nn.Linear(int(math.prod(shape)), 16),
                                          nn.ReLU())
            self.classifier = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class HomogeneousModel(_TwoClass):
    """A bias-free ReLU network (convolutions or linear layers, ReLU, average pooling): it is
    positively homogeneous, z(a x) = a z(x) for a >= 0, so z(0) = 0 and, by Euler's theorem,
    z(x) = sum_i x_i dz/dx_i: gradient x input is complete against the zero baseline and equals
    Integrated Gradients. The first layer receives the input unchanged (InputInvariance adds
    the bias that absorbs its shift)."""

    def __init__(self, modality: str, shape: Sequence[int], hidden: int = 4) -> None:
        super().__init__()
        if modality == "image":
            self.body: nn.Module = nn.Sequential(
                nn.Conv2d(shape[0], hidden, 3, padding=1, bias=False), nn.ReLU(),
                nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.ReLU(),
                nn.AdaptiveAvgPool2d(2), nn.Flatten())
            width = hidden * 4
        elif modality == "series":
            self.body = nn.Sequential(
                nn.Conv1d(shape[0], hidden, 3, padding=1, bias=False), nn.ReLU(),
                nn.AdaptiveAvgPool1d(2), nn.Flatten())
            width = hidden * 2
        else:
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(int(math.prod(shape)), 8,
                                                              bias=False), nn.ReLU())
            width = 8
        self.head = nn.Linear(width, 1, bias=False)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))[:, 0]


class TemplateModel(nn.Module):
    """Template matching: logits W x with one template (a row of W, supported on its own
    block of features) per class; the gradient of class c's logit is its template."""

    def __init__(self, n_inputs: int, n_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_inputs, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class GridCellModel(nn.Module):
    """An n x n grid of cells (:func:`evalkit.metrics.grid.grid_cell_masks`), one two-class
    head per cell, each reading only its own cell: Rao et al.'s fully disconnected model
    (DiFull), built in. Head k scores z_k(x) = v . sum_positions softplus(conv(x * cell_k)) - c
    with the network of :class:`RegionModel` (non-negative 3 x 3 convolution, positive head),
    shared by the heads, so z_k increases with every feature of cell k and depends on no
    other. The output (N, 2 n^2) has the layout of
    :class:`evalkit.metrics.grid.DisconnectedGrid`: column c n^2 + k is cell k's logit of class
    c, (-z_k, z_k) (:meth:`targets`)."""

    def __init__(self, shape: Sequence[int], grid_size: int = 2, hidden: int = 4) -> None:
        super().__init__()
        self.grid_size = int(grid_size)
        cells = torch.arange(self.grid_size ** 2)
        masks = grid_cell_masks(cells, self.grid_size, tuple(shape[1:]))  # (n^2, 1, H, W)
        self.register_buffer("cell_masks", masks.to(torch.float32))
        self.body = nn.Conv2d(shape[0], hidden, 3, padding=1)
        self.head = nn.Linear(hidden, 1)

    def cell_scores(self, x: torch.Tensor) -> torch.Tensor:
        """z_k(x) of every cell, (N, n^2)."""
        masks = self.cell_masks.to(x.dtype)
        read = x.unsqueeze(1) * masks.unsqueeze(0)  # (N, n^2, C, H, W): each cell alone
        hidden = F.softplus(self.body(read.flatten(0, 1))).flatten(2).sum(2)
        return self.head(hidden)[:, 0].reshape(x.shape[0], masks.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.cell_scores(x)
        return torch.cat([-z, z], 1)

    def targets(self, cells: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The output column of cell ``cells``'s head for class ``y``: y n^2 + cells."""
        return y.to(torch.int64) * self.grid_size ** 2 + cells.to(torch.int64)


class TokenScoreModel(_TwoClass):
    """Token ids (N, L): z = sum_t r_t s(x_t) - c with s(v) = embedding(v) . w the score of
    token v and r a fixed 0/1 mask over positions (a buffer; all ones: every position is
    read). The mask token 0 has a zero embedding (``padding_idx``), so a token's exact
    contribution against the mask token is r_t s(x_t) (:meth:`token_contributions`).
    ``embedding`` returns one vector per token (N, L, D), so metrics that hook an embedding
    layer apply."""

    def __init__(self, length: int, vocabulary: int = TOKENS_VOCABULARY, dim: int = 4,
                 reads: torch.Tensor | None = None, offset: float = 0.0,
                 mask_token_id: int = 0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, dim, padding_idx=mask_token_id)
        self.scorer = nn.Linear(dim, 1, bias=False)
        reads = torch.ones(length) if reads is None else reads.to(torch.float32)
        self.register_buffer("reads", reads)
        self.register_buffer("offset", torch.tensor(float(offset)))

    def token_scores(self, x: torch.Tensor) -> torch.Tensor:
        """s(x_t) for every position, read or not, (N, L)."""
        return self.scorer(self.embedding(x))[..., 0]

    def token_contributions(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each token's exact contribution to class y's logit against the mask token, (N, L)."""
        contrib = self.token_scores(x) * self.reads
        return _class_sign(y, contrib.dtype)[:, None] * contrib

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return (self.token_scores(x) * self.reads).sum(1) - self.offset


# ============================================================================ candidates
# Candidates are small picklable callables f(model, x, y) -> map, computed from the model
# they are given (a randomised or shifted copy included), never from a captured one.
def _gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """d logit_y / dx, computed even when the caller runs under inference mode."""
    labels = _labels(model, x, y)
    with torch.inference_mode(False), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        out = model(xg)
        picked = out.gather(1, labels.to(out.device).reshape(-1, 1)).sum()
        (grad,) = torch.autograd.grad(picked, xg)
    return grad.detach()


@dataclass(frozen=True, eq=False)
class GradientMap:
    """The model's gradient of the explained logit, times nothing (``times="none"``), the
    input (``"input"``) or the input minus the per-sample-minimum baseline
    (``"input-baseline"``); channels summed; ``scale`` multiplies (-1: the negation),
    ``absolute`` takes magnitudes."""

    modality: str
    times: str = "input-baseline"
    scale: float = 1.0
    absolute: bool = False

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        grad = _gradient(model, x, y)
        if self.times == "input":
            grad = grad * x
        elif self.times == "input-baseline":
            grad = grad * (x - _baseline(x))
        out = _to_map(grad, self.modality) * self.scale
        return out.abs() if self.absolute else out


@dataclass(frozen=True, eq=False)
class OtherClassGradient:
    """The gradient map of a class other than the explained one, drawn per sample (keyed on
    the sample's values and ``seed``, so the same sample always gets the same class)."""

    modality: str
    n_classes: int
    seed: int = 0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        labels = _labels(model, x, y)
        keys = _rng.sample_keys(x, self.seed)
        draw = _rng.uniform(keys, (1,), dtype=torch.float64)[:, 0].to(labels.device)
        shift = 1 + (draw * (self.n_classes - 1)).long().clamp(max=self.n_classes - 2)
        return _to_map(_gradient(model, x, (labels + shift) % self.n_classes), self.modality)


@dataclass(frozen=True, eq=False)
class OtherCellsMap:
    """Grid testbeds: gradient x (input - baseline) of the heads of the *other* cells of the
    grid for the explained class, summed (output columns in the layout of
    :class:`GridCellModel`: column c n^2 + k is cell k's class c); channels summed."""

    grid_size: int = 2

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        labels = _labels(model, x, y)
        n2 = self.grid_size ** 2
        cls, cell = labels // n2, labels % n2
        out = torch.zeros_like(x)
        for step in range(1, n2):
            out = out + _gradient(model, x, cls * n2 + (cell + step) % n2)
        return _to_map(out * (x - _baseline(x)), "image")


@dataclass(frozen=True, eq=False)
class ExactMap:
    """The model's own closed-form attribution (``model.<method>(x, y, baseline)`` against
    the per-sample minimum, or ``token_contributions`` for tokens), channels summed;
    ``scale`` and ``absolute`` as for :class:`GradientMap`, ``within`` an element mask that
    keeps only those elements (e.g. one of two regions)."""

    modality: str
    method: str = "integrated_gradients"
    scale: float = 1.0
    absolute: bool = False
    within: torch.Tensor | None = None

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        labels = _labels(model, x, y)
        with torch.no_grad():
            if self.method == "token_contributions":
                contrib = model.token_contributions(x, labels)
            else:
                contrib = getattr(model, self.method)(x, labels, _baseline(x))
        if self.within is not None:
            contrib = contrib * self.within.to(contrib.device, contrib.dtype)
        out = _to_map(contrib, self.modality) * self.scale
        return out.abs() if self.absolute else out


@dataclass(frozen=True, eq=False)
class TokenScoreMap:
    """Token testbeds: the magnitude of every position's token score |s(x_t)|, read by the
    model or not, optionally only at the positions of ``within`` (a model-aware map of the
    tokens, placed where the model may not look)."""

    within: torch.Tensor | None = None

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            out = model.token_scores(x).abs()
        if self.within is not None:
            out = out * self.within.to(out.device, out.dtype)
        return out


@dataclass(frozen=True, eq=False)
class IntensityMap:
    """Model-blind: the input's distance to the per-sample-minimum baseline, |x - x'|,
    channels summed, optionally only at the elements of ``within``."""

    modality: str
    within: torch.Tensor | None = None

    def __call__(self, model: Any, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        out = (x - _baseline(x)).abs()
        if self.within is not None:
            out = out * self.within.to(out.device, out.dtype)
        return _to_map(out, self.modality)


@dataclass(frozen=True, eq=False)
class EdgeMap:
    """Model-blind: the edge magnitude of the channel-mean input (central differences,
    |d/dh| + |d/dw| for images, |d/dt| for series, replicated borders), (N, 1, ...)."""

    def __call__(self, model: Any, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        grey = x.mean(1, keepdim=True)
        if x.ndim == 4:
            padded = F.pad(grey, (1, 1, 1, 1), mode="replicate")
            dh = padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1]
            dw = padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2]
            return (dh.abs() + dw.abs()) / 2
        padded = F.pad(grey, (1, 1), mode="replicate")
        return (padded[:, :, 2:] - padded[:, :, :-2]).abs() / 2


@dataclass(frozen=True, eq=False)
class SumMap:
    """The sum of other candidates' maps (all in the same layout)."""

    parts: tuple[Callable[..., torch.Tensor], ...]

    def __call__(self, model: Any, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        out = self.parts[0](model, x, y)
        for part in self.parts[1:]:
            out = out + part(model, x, y)
        return out


@dataclass(frozen=True, eq=False)
class RandomMap:
    """Model-blind noise: N(0, 1) (``signed``) or U(0, 1) values in the map layout, keyed on
    each sample's values and ``seed`` (a sample gets the same map in any batch; a perturbed
    sample gets a new one)."""

    modality: str
    seed: int = 0
    signed: bool = True

    def __call__(self, model: Any, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        shape = (1, *x.shape[2:]) if _has_channels(self.modality) else tuple(x.shape[1:])
        dtype = x.dtype if x.is_floating_point() else torch.float32
        keys = _rng.sample_keys(x, self.seed)
        draw = _rng.normal if self.signed else _rng.uniform
        return draw(keys, shape, dtype=dtype).to(x.device)


@dataclass(frozen=True, eq=False)
class ConstantMap:
    """The same value everywhere (a uniform, maximally spread map)."""

    modality: str

    def __call__(self, model: Any, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        shape = (x.shape[0], 1, *x.shape[2:]) if _has_channels(self.modality) else x.shape
        dtype = x.dtype if x.is_floating_point() else torch.float32
        return torch.ones(shape, dtype=dtype, device=x.device)


def _candidates(*items: tuple[str, Callable[..., torch.Tensor], str]) -> dict[str, Candidate]:
    return {name: Candidate(name, fn, description) for name, fn, description in items}


def _pairs(*items: tuple[str, str, str]) -> tuple[OrderedPair, ...]:
    return tuple(OrderedPair(better, worse, why) for better, worse, why in items)


# ============================================================================ parameter helpers
def _fill(param: torch.Tensor, values: torch.Tensor) -> None:
    with torch.no_grad():
        param.copy_(values.reshape(param.shape).to(param.dtype))


def _predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


def _require_positive_score(model: _TwoClass, x: torch.Tensor, what: str) -> None:
    with torch.no_grad():
        z = model.score(x)
    if not bool((z > 0).all()):
        raise RuntimeError(f"{what}: the planted model does not predict class 1 on every "
                           "sample (an internal error of the testbed construction).")


def _median_offset(z: torch.Tensor) -> float:
    """A bias that splits the samples into two predicted classes: the median score, midway
    between the two middle scores for an even count (no sample sits on the boundary)."""
    return float(torch.quantile(z.detach().double(), 0.5)) if z.numel() > 1 else float(z[0]) - 1.0


def _positive_offset(z: torch.Tensor) -> float:
    """A bias c with z - c > 0 on every sample: half the smallest score when all are positive
    (removing the evidence then flips the class), else the smallest score less half the
    spread (a user's data may give negative evidence)."""
    low, high = float(z.min()), float(z.max())
    if low > 0:
        return low / 2
    return low - max((high - low) / 2, abs(low) / 2, 1e-3)


def _as_image_or_series(modality: str) -> bool:
    return modality in ("image", "series")


def _numeric_only(modality: str, message: str) -> None:
    """Refuse token ids where a mechanism needs numeric inputs."""
    if modality == "tokens":
        raise ValueError(message)


def _shift_score(model: _TwoClass, x: torch.Tensor, bias: torch.Tensor | None,
                 offset_of: Callable[[torch.Tensor], float]) -> None:
    """Move the class boundary by ``offset_of`` the model's scores on ``x`` (computed with
    ``bias`` zeroed): through ``bias`` or, for a token model (``bias`` None), its ``offset``."""
    with torch.no_grad():
        if bias is not None:
            bias.zero_()
        offset = offset_of(model.score(x))
        if bias is None:
            model.offset.fill_(offset)
        else:
            bias.fill_(-offset)


def _eval_predictions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The labels of a planted model: its predictions on ``x``, in eval mode."""
    model.eval()
    return _predictions(model, x)


def _class_one(model: _TwoClass, x: torch.Tensor, name: str) -> torch.Tensor:
    """The labels of a model planted to predict class 1 on every sample of ``x`` (checked),
    with the model put in eval mode."""
    model.eval()
    _require_positive_score(model, x, name)
    return torch.ones(x.shape[0], dtype=torch.long)


def _random_candidate(modality: str, seed: int, description: str = "N(0, 1) noise, model-blind"
                      ) -> tuple[str, Callable[..., torch.Tensor], str]:
    return ("random", RandomMap(modality, seed), description)


def _random_parameters(model: nn.Module, gen: torch.Generator, *, he: bool) -> None:
    """Every parameter N(0, 1/fan_in) from ``gen`` (``he``: N(0, 2/fan_in))."""
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            if he:
                p.copy_(torch.randn(p.shape, generator=gen) * math.sqrt(2 / fan_in))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))


def _testbed(name: str, mechanism: str, modality: str, description: str, model: nn.Module,
             x: torch.Tensor, y: torch.Tensor, candidates: dict[str, Candidate],
             order: tuple[OrderedPair, ...], *, reference: str | None = None,
             **fields: Any) -> Testbed:
    """A planted testbed with the modality's metric arguments; ``reference``: the candidate
    whose map (on the testbed's inputs) is the ground truth."""
    truth = None if reference is None else candidates[reference](model, x, y).detach()
    return Testbed(name=name, mechanism=mechanism, modality=modality, description=description,
                   model=model, x=x, y=y, candidates=candidates, order=order,
                   metric_kwargs=_metric_kwargs(modality), reference=truth, **fields)


# ============================================================================ planters
#: metrics outside a testbed's families that the models which ignore features decide: the
#: non-sensitivity axiom (Nguyen & Rodriguez Martinez 2020) asks that exactly the features
#: the model ignores get zero attribution, which the region and one-hot candidates' order
#: (zero outside the read features > non-zero there) decides
_IGNORES_FEATURES = ("NonSensitivity",)

# Each planter builds a testbed on given inputs x (already checked); the public builders
# generate the inputs, plant_mechanism passes the user's.
def _plant_linear(x: torch.Tensor, modality: str, seed: int, name: str) -> Testbed:
    gen = _generator(seed, "linear-weights")
    if modality == "tokens":
        model = _token_model(x, seed, gen, positive=False)
        _shift_score(model, x, None, _median_offset)
        exact: Callable[..., torch.Tensor] = ExactMap(modality, "token_contributions")
        negated: Callable[..., torch.Tensor] = ExactMap(modality, "token_contributions", -1.0)
        absolute: Callable[..., torch.Tensor] = ExactMap(modality, "token_contributions",
                                                         absolute=True)
        how = "the tokens' exact contributions against the mask token"
    else:
        n_inputs = int(math.prod(x.shape[1:]))
        model = _new_module(lambda: LinearModel(n_inputs), seed)
        _fill(model.linear.weight, torch.randn(n_inputs, generator=gen) / math.sqrt(n_inputs)
              * 4)
        _shift_score(model, x, model.linear.bias, _median_offset)
        exact = GradientMap(modality, "input-baseline")
        negated = GradientMap(modality, "input-baseline", scale=-1.0)
        absolute = GradientMap(modality, "input-baseline", absolute=True)
        how = "w * (x - x') with x' the per-sample minimum (the 'black' baseline)"
    y = _eval_predictions(model, x)
    candidates = _candidates(
        ("exact", exact, f"the exact attribution, {how}: complete"),
        ("negated", negated, "the exact attribution negated"),
        ("absolute", absolute, "the magnitude of the exact attribution (sign-blind)"),
        _random_candidate(modality, seed),
    )
    order = _pairs(
        ("exact", "negated", "the model is linear, so the exact attribution ranks the features "
         "by their true contribution and its negation ranks them in reverse."),
        ("exact", "absolute", "half the weights are negative: a sign-blind map ranks evidence "
         "against the class as high as evidence for it."),
        ("exact", "random", "the exact attribution is the model's mechanism; noise carries no "
         "information about it."),
    )
    return _testbed(
        name, "linear", modality,
        ("Linear model z = w . x + b with mixed-sign weights (logits (-z, z)); the "
         "exact attribution is known and complete (XAI-Units' weighted features; "
         "Lee et al. 2025)."),
        model, x, y, candidates, order,
        families=("faithfulness", "localisation", "axiomatic"),
        reference="exact",
    )


def _plant_region(x: torch.Tensor, modality: str, seed: int, name: str,
                  region: torch.Tensor) -> Testbed:
    gen = _generator(seed, "region-weights")
    shape = tuple(x.shape[1:])
    if modality == "tokens":
        model = _token_model(x, seed, gen, positive=True, reads=region)
        inside: Callable[..., torch.Tensor] = ExactMap(modality, "token_contributions")
        outside: Callable[..., torch.Tensor] = TokenScoreMap(within=~region)
        inside_how = "the read tokens' exact contributions"
        outside_how = "the token scores of the positions the model does not read"
    else:
        model = _new_module(lambda: RegionModel(modality, shape, _elements(region, modality,
                                                                           shape)), seed)
        _fill(model.body.weight, torch.rand(model.body.weight.shape, generator=gen) + 0.1)
        _fill(model.body.bias, -torch.rand(model.body.bias.shape, generator=gen))
        _fill(model.head.weight, torch.rand(model.head.weight.shape, generator=gen) + 0.5)
        inside = GradientMap(modality, "input-baseline")
        outside = IntensityMap(modality, within=_elements(~region, modality, shape))
        inside_how = "gradient x (input - baseline) of the model (zero outside the region)"
        outside_how = "the input's intensity outside the region (model-blind)"
    _shift_score(model, x, None if modality == "tokens" else model.head.bias, _positive_offset)
    y = _class_one(model, x, name)
    candidates = _candidates(
        ("inside", inside, inside_how),
        ("outside", outside, outside_how),
        _random_candidate(modality, seed),
    )
    order = _pairs(
        ("inside", "outside", "the model reads only the region: every feature the outside map "
         "ranks high can change without changing the output."),
        ("inside", "random", "the model reads only the region, and its output increases with "
         "every feature there; noise ranks ignored features as often as read ones."),
    )
    return _testbed(
        name, "region", modality,
        ("A model that reads only a known region (a fixed mask, then a monotone "
         "nonlinear network): its output is constant when only the outside "
         "changes (AttributionLab, Zhang et al. 2024; XAI-TRIS, Clark et al. "
         "2024)."),
        model, x, y, candidates, order,
        s=_masks(region, modality, x.shape[0]), families=("localisation", "faithfulness"),
        metrics=_IGNORES_FEATURES,
    )


def _plant_saturation(x: torch.Tensor, modality: str, seed: int, name: str,
                      region: torch.Tensor, amplitude: float = 2.0,
                      saturation: float = 2.5) -> Testbed:
    _numeric_only(modality, "The saturation mechanism needs numeric inputs; token ids have no "
                            "gradient (use 'linear' or 'region' for tokens).")
    gen = _generator(seed, "saturation-weights")
    shape = tuple(x.shape[1:])
    n_inputs = int(math.prod(shape))
    inside = _elements(region, modality, shape).reshape(-1)
    model = _new_module(lambda: SaturatingModel(n_inputs, amplitude), seed)
    evidence = (torch.rand(n_inputs, generator=gen) + 0.2) * inside
    distractor = torch.randn(n_inputs, generator=gen) * (~inside)
    with torch.no_grad():
        flat = x.flatten(1)
        lo = float(flat.min())
        # evidence counted from the data's minimum, scaled so that every sample is saturated
        # `saturation` times over; the distractor carries at most a sixth of the amplitude
        raw = (flat - lo) @ evidence
        if float(raw.min()) <= 0:
            raise ValueError(f"{name}: the region holds no evidence above the data's minimum "
                             "on some sample; choose a region where the inputs vary.")
        evidence = evidence * saturation / float(raw.min())
        spread = ((flat - lo) @ distractor).abs().max()
        distractor = distractor * (amplitude / 6) / max(float(spread), 1e-12)
        model.linear.weight.copy_(torch.stack([evidence, distractor]))
        model.linear.bias.copy_(torch.tensor([-lo * float(evidence.sum()),
                                              -lo * float(distractor.sum()) - amplitude / 2]))
    y = _class_one(model, x, name)
    candidates = _candidates(
        ("integrated_gradients", ExactMap(modality, "integrated_gradients"),
         "Integrated Gradients in closed form against the per-sample minimum: complete"),
        ("gradient", GradientMap(modality, "none"), "the gradient: zero on the saturated "
         "evidence"),
        ("gradient_x_input", GradientMap(modality, "input-baseline"),
         "gradient x (input - baseline): zero on the saturated evidence"),
        _random_candidate(modality, seed),
    )
    order = _pairs(
        ("integrated_gradients", "gradient", "the evidence carries the output but is "
         "saturated, so its gradient is zero; IG integrates over the path and credits it "
         "(Sundararajan et al. 2017)."),
        ("integrated_gradients", "gradient_x_input", "gradient x input inherits the zero "
         "gradient of the saturated evidence and credits only the distractor."),
        ("integrated_gradients", "random", "IG is exact for this model; noise carries no "
         "information about it."),
    )
    return _testbed(
        name, "saturation", modality,
        ("z = A clamp(e(x), max=1) + d(x): the evidence e (a region) saturates, "
         "so the gradient is zero where the output comes from, while a small "
         "distractor elsewhere has a gradient (Sundararajan et al. 2017; XAI-Units' "
         "shattered/saturated gradients, Lee et al. 2025)."),
        model, x, y, candidates, order,
        s=_masks(region, modality, x.shape[0]),
        families=("faithfulness", "localisation", "axiomatic"),
        reference="integrated_gradients",
    )


def _plant_invariance(x: torch.Tensor, modality: str, seed: int, name: str,
                      region: torch.Tensor) -> Testbed:
    _numeric_only(modality, "The invariance mechanism needs numeric inputs (robustness metrics "
                            "add noise); use 'region' for tokens.")
    gen = _generator(seed, "invariance-weights")
    shape = tuple(x.shape[1:])
    n_inputs = int(math.prod(shape))
    inside = _elements(region, modality, shape).reshape(-1)
    model = _new_module(lambda: LinearModel(n_inputs), seed)
    # |w| <= 0.5: a read feature moves gradient x input by at most half its own change
    weights = (torch.rand(n_inputs, generator=gen) - 0.5) * inside
    _fill(model.linear.weight, weights)
    _shift_score(model, x, model.linear.bias, _median_offset)
    y = _eval_predictions(model, x)
    outside = _elements(~region, modality, shape)
    candidates = _candidates(
        ("gradient", GradientMap(modality, "none"), "the gradient: the model's weights, "
         "constant (the model is linear on the region and ignores the rest)"),
        ("leaky", SumMap((GradientMap(modality, "none"), IntensityMap(modality, outside))),
         "the gradient plus the input's intensity outside the region: moves only with "
         "features the model ignores"),
        ("intensity", IntensityMap(modality), "the input's intensity everywhere: changes with "
         "every feature, read or ignored (model-blind)"),
        _random_candidate(modality, seed, "N(0, 1) noise keyed on the input: a new map for "
                          "every perturbed input"),
    )
    order = _pairs(
        ("gradient", "leaky", "the mechanism is the same at every input, so its explanation "
         "need not change; the leaky map changes with features the model ignores."),
        ("gradient", "intensity", "the model is linear on the region and ignores the rest, so "
         "its gradient does not change under any input perturbation, the intensity map does."),
        ("gradient", "random", "the gradient is constant; the noise map is redrawn for every "
         "perturbed input."),
    )
    return _testbed(
        name, "invariance", modality,
        ("A model linear on a region and constant outside it: an explanation of "
         "its mechanism changes only with the features it reads (robustness; "
         "XAI-Units, Lee et al. 2025)."),
        model, x, y, candidates, order,
        s=_masks(region, modality, x.shape[0]), families=("robustness",),
    )


def _plant_interaction(x: torch.Tensor, modality: str, seed: int, name: str,
                       region_a: torch.Tensor, region_b: torch.Tensor, kind: str) -> Testbed:
    gen = _generator(seed, f"interaction-{kind}-weights")
    shape = tuple(x.shape[1:])
    n_inputs = int(math.prod(shape))
    in_a = _elements(region_a, modality, shape).reshape(-1)
    in_b = _elements(region_b, modality, shape).reshape(-1)
    # each region's evidence is a positively weighted mean of its elements (weights sum to 1)
    wa = (torch.rand(n_inputs, generator=gen) + 0.5) * in_a
    wb = (torch.rand(n_inputs, generator=gen) + 0.5) * in_b
    wa, wb = wa / wa.sum(), wb / wb.sum()
    if kind == "and":
        gain, offset, centre = 4.0, 1.0, 0.0   # z = 4 p_A p_B - 1: class 1 needs both regions
    else:
        gain, offset, centre = -16.0, 0.0, 0.5  # z = -16 (p_A - .5)(p_B - .5): exactly one lit
    model = _new_module(lambda: ProductModel(n_inputs, gain, offset), seed)
    with torch.no_grad():
        model.linear.weight.copy_(torch.stack([wa, wb]))
        model.linear.bias.fill_(-centre)
    y = _eval_predictions(model, x)
    within_a = _elements(region_a, modality, shape)
    candidates = _candidates(
        ("both", ExactMap(modality, "integrated_gradients"),
         "Integrated Gradients in closed form: credits both regions"),
        ("one", ExactMap(modality, "integrated_gradients", within=within_a),
         "the same map restricted to region A"),
        _random_candidate(modality, seed),
    )
    what = ("the output is the product of both regions' evidence (an AND)" if kind == "and"
            else "the class is the XOR of the two regions' signs")
    order = _pairs(
        ("both", "one", f"{what}: neither region alone determines it, and the exact "
         "attribution gives each region its share; a map of region A alone misses B's."),
        ("both", "random", "the map of both regions is the exact attribution; noise carries "
         "no information about the mechanism."),
    )
    return _testbed(
        name, "interaction", modality,
        (f"Two regions that interact ({kind.upper()}): z = k p_A p_B - c with each "
         "p a region's evidence, so the output needs both (XAI-Units' interacting "
         "features and boolean formulas, Lee et al. 2025; XAI-TRIS' XOR, Clark "
         "et al. 2024)."),
        model, x, y, candidates, order,
        s=_masks(region_a | region_b, modality, x.shape[0]),
        families=("localisation", "faithfulness", "axiomatic"),
        reference="both",
    )


def _model_aware_focus(model: CNNModel, modality: str) -> torch.Tensor:
    """A 0/1 mask over the inputs of the classifier (image/series) or its first layer's
    columns (tables) that keeps one part of the input."""
    if modality == "tabular":
        first = model.features[1]
        keep = torch.zeros(first.in_features)
        keep[: max(1, first.in_features // 3)] = 1
        first.weight.mul_(keep)
        return torch.ones_like(model.classifier.weight)
    cells = 9 if modality == "image" else 3  # the pooled grid, flattened per channel
    keep = torch.zeros(model.classifier.in_features)
    keep[::cells] = 1  # cell 0 of every channel
    return keep.expand_as(model.classifier.weight)


def _plant_model_aware(x: torch.Tensor, modality: str, seed: int, name: str) -> Testbed:
    _numeric_only(modality, "The model-aware testbed needs numeric inputs (gradients).")
    gen = _generator(seed, "model-aware-weights")
    shape = tuple(x.shape[1:])
    model = _new_module(lambda: CNNModel(modality, shape), seed)
    _random_parameters(model, gen, he=False)
    with torch.no_grad():
        # structure, as training gives: the decision reads one part of the input (the first
        # pooled cell of the CNN, the first third of the columns of the MLP), so the gradient
        # is concentrated there and randomising the layers spreads it
        model.classifier.weight.mul_(_model_aware_focus(model, modality))
        # both classes predicted: class 1's bias at the median logit difference
        logits = model(x)
        model.classifier.bias[1] -= _median_offset(logits[:, 1] - logits[:, 0])
    y = _eval_predictions(model, x)
    items: list[tuple[str, Callable[..., torch.Tensor], str]] = [
        ("gradient", GradientMap(modality, "none"), "the gradient: depends on every weight"),
        ("gradient_x_input", GradientMap(modality, "input-baseline"),
         "gradient x (input - baseline): depends on the weights and on the input"),
        ("intensity", IntensityMap(modality), "the input's intensity: ignores the model"),
    ]
    pairs = [
        ("gradient", "intensity", "the intensity map ignores the model, so randomising the "
         "weights cannot change it, while it changes the gradient (Adebayo et al. 2018)."),
        ("gradient_x_input", "intensity", "gradient x input depends on the weights; the "
         "intensity map is the same for any model."),
    ]
    if _as_image_or_series(modality):
        items.append(("edges", EdgeMap(), "an edge map of the input: ignores the model"))
        pairs += [
            ("gradient", "edges", "an edge detector ignores the model: randomising the "
             "weights leaves it unchanged (Adebayo et al. 2018)."),
            ("gradient_x_input", "edges", "gradient x input depends on the weights; an edge "
             "map is the same for any model."),
        ]
    return _testbed(
        name, "model-aware", modality,
        ("A small network whose decision reads one part of the input (as a "
         "trained one would): gradient maps depend on its weights, edge and "
         "intensity maps do not, so a randomisation metric must rank the former "
         "above (Adebayo et al. 2018)."),
        model, x, y, _candidates(*items), _pairs(*pairs),
        families=("randomisation",),
    )


def _plant_one_hot(x: torch.Tensor, modality: str, seed: int, name: str,
                   feature: torch.Tensor) -> Testbed:
    gen = _generator(seed, "one-hot-weights")
    shape = tuple(x.shape[1:])
    if modality == "tokens":
        model = _token_model(x, seed, gen, positive=True, reads=feature)
        one_hot: Callable[..., torch.Tensor] = ExactMap(modality, "token_contributions")
        spread: Callable[..., torch.Tensor] = TokenScoreMap()
        spread_how = "the scores of every token, read or not"
    else:
        n_inputs = int(math.prod(shape))
        model = _new_module(lambda: LinearModel(n_inputs), seed)
        weights = (torch.rand(n_inputs, generator=gen) + 0.5) * _elements(
            feature, modality, shape).reshape(-1)
        _fill(model.linear.weight, weights)
        one_hot = GradientMap(modality, "input-baseline")
        spread = IntensityMap(modality)
        spread_how = "the input's intensity everywhere (model-blind)"
    _shift_score(model, x, None if modality == "tokens" else model.linear.bias,
                 _positive_offset)
    y = _class_one(model, x, name)
    candidates = _candidates(
        ("one_hot", one_hot, "the exact attribution: non-zero on the one feature read"),
        ("spread", spread, spread_how),
        ("uniform", ConstantMap(modality), "the same value everywhere"),
    )
    order = _pairs(
        ("one_hot", "spread", "the model reads one feature: the one-hot map is its exact "
         "attribution, the spread map credits features it ignores."),
        ("one_hot", "uniform", "the model reads one feature: the simplest correct explanation "
         "is one-hot, a uniform map is the most complex and credits every ignored feature."),
    )
    return _testbed(
        name, "sparsity", modality,
        ("A model that reads a single feature: the exact explanation is one-hot "
         "(complexity; XAI-Units, Lee et al. 2025)."),
        model, x, y, candidates, order,
        s=_masks(feature, modality, x.shape[0]),
        families=("complexity", "localisation", "faithfulness"),
        reference="one_hot",
        metrics=_IGNORES_FEATURES,
    )


def _plant_completeness(x: torch.Tensor, modality: str, seed: int, name: str) -> Testbed:
    _numeric_only(modality, "The completeness testbed needs numeric inputs (gradients).")
    gen = _generator(seed, "completeness-weights")
    shape = tuple(x.shape[1:])
    model = _new_module(lambda: HomogeneousModel(modality, shape), seed)
    _random_parameters(model, gen, he=True)
    y = _eval_predictions(model, x)
    candidates = _candidates(
        ("exact", GradientMap(modality, "input-baseline"),
         "gradient x (input - x'), x' the per-sample minimum: equals IG, complete and input "
         "invariant"),
        ("gradient", GradientMap(modality, "none"), "the gradient: input invariant, not "
         "complete"),
        ("gradient_x_input", GradientMap(modality, "input"),
         "gradient x input: complete against zero, not input invariant"),
        _random_candidate(modality, seed, "N(0, 1) noise: neither"),
    )
    order = _pairs(
        ("exact", "gradient", "completeness: the model is positively homogeneous, so "
         "gradient x (input - 0) sums to the output change exactly, the gradient does not."),
        ("exact", "gradient_x_input", "input invariance: after a shift absorbed by the first "
         "layer's bias the exact map is unchanged, gradient x input changes (Kindermans et "
         "al. 2019)."),
        ("exact", "random", "the exact map satisfies both axioms, noise neither."),
    )
    return _testbed(
        name, "completeness", modality,
        ("A bias-free ReLU network (positively homogeneous): gradient x (input - "
         "baseline) is Integrated Gradients, complete and input invariant "
         "(Sundararajan et al. 2017; Kindermans et al. 2019)."),
        model, x, y, candidates, order,
        families=("axiomatic",), reference="exact",
    )


def _plant_class_templates(x: torch.Tensor, modality: str, seed: int, name: str,
                           blocks: Sequence[torch.Tensor]) -> Testbed:
    _numeric_only(modality, "The class-template testbed needs numeric inputs.")
    gen = _generator(seed, "templates-weights")
    shape = tuple(x.shape[1:])
    n_inputs = int(math.prod(shape))
    n_classes = len(blocks)
    model = _new_module(lambda: TemplateModel(n_inputs, n_classes), seed)
    rows = [(torch.rand(n_inputs, generator=gen) + 0.5)
            * _elements(b, modality, shape).reshape(-1) for b in blocks]
    rows = [r / r.sum() for r in rows]
    with torch.no_grad():
        model.linear.weight.copy_(torch.stack(rows))
        model.linear.bias.zero_()
    y = _eval_predictions(model, x)
    candidates = _candidates(
        ("class_template", GradientMap(modality, "none"),
         "the gradient of the predicted class: its template, the same for every sample of "
         "the class"),
        ("other_template", OtherClassGradient(modality, n_classes, seed),
         "the template of a random other class (drawn per sample)"),
        _random_candidate(modality, seed),
    )
    order = _pairs(
        ("class_template", "other_template", "each class is decided by its own template: "
         "samples with the same template explanation share a prediction, samples with a "
         "random other class's template do not."),
        ("class_template", "random", "the class template is the mechanism and the same for "
         "every sample of a class; noise groups nothing."),
    )
    return _testbed(
        name, "set-level", modality,
        ("Template matching: each class is a template on its own block of "
         "features (FunnyBirds-style parts, Hesse et al. 2023); explanations that "
         "are the class's template are consistent across samples (Sufficiency and "
         "Consistency, Dasgupta et al. 2022)."),
        model, x, y, candidates, order,
        s=torch.stack([_masks(blocks[int(c)], modality, 1)[0] for c in y]),
        families=("faithfulness", "robustness"),
    )


def _plant_grid(x: torch.Tensor, cells: torch.Tensor, seed: int, name: str,
                grid_size: int) -> Testbed:
    gen = _generator(seed, "grid-weights")
    shape = tuple(x.shape[1:])
    model = _new_module(lambda: GridCellModel(shape, grid_size), seed)
    _fill(model.body.weight, torch.rand(model.body.weight.shape, generator=gen) + 0.1)
    _fill(model.body.bias, -torch.rand(model.body.bias.shape, generator=gen))
    _fill(model.head.weight, torch.rand(model.head.weight.shape, generator=gen) + 0.5)
    with torch.no_grad():  # every explained head predicts its class 1 (positive evidence)
        model.head.bias.zero_()
        z = model.cell_scores(x).gather(1, cells.reshape(-1, 1))[:, 0]
        model.head.bias.fill_(-_positive_offset(z))
    model.eval()
    y = model.targets(cells, torch.ones_like(cells))
    inside = GradientMap("image", "input-baseline")
    other = OtherCellsMap(grid_size)
    candidates = _candidates(
        ("inside", inside, "gradient x (input - baseline) of the explained cell's head: "
         "zero outside the cell"),
        ("spread", SumMap((inside, other)), "the same map of every cell's head for the "
         "class: the explained cell and the other cells"),
        ("other_cells", other, "the same map of the other cells' heads: none of it in the "
         "explained cell"),
        _random_candidate("image", seed),
    )
    order = _pairs(
        ("inside", "spread", "the explained output is read from its cell alone: a map that "
         "also credits the other cells, on which it provably does not depend, is less right."),
        ("inside", "other_cells", "the explained output does not depend on the other cells "
         "at all; the other-cells map puts all of its relevance there."),
        ("inside", "random", "the explained output is read from its cell alone; noise is "
         "spread over all cells."),
        ("spread", "other_cells", "both maps credit the ignored cells, only the spread map "
         "also credits the cell that is read."),
    )
    quadrants = (F.one_hot(cells, 4).to(torch.int64) if grid_size == 2 else None)
    options: dict[str, Any] = {"cells": cells.clone()}
    if quadrants is not None:
        options["quadrants"] = quadrants
    return _testbed(
        name, "grid", "image",
        (f"A {grid_size} x {grid_size} grid of cells with one head per cell that reads only "
         "its own cell (the fully disconnected model of DiFull, Rao et al. 2022, by "
         "construction); each sample explains the head of one cell, brighter than the "
         "others. GridPG, DiFull and DiPart score the same quantity on it (their models "
         "differ, not their scores); Focus reads the cell as its target quadrant."),
        model, x, y, candidates, order,
        s=grid_cell_masks(cells, grid_size, shape[1:]), families=("localisation",),
        call_options=options,
    )


def _vocabulary(x: torch.Tensor) -> int:
    return max(int(x.max()) + 1, 2)


def _token_model(x: torch.Tensor, seed: int, gen: torch.Generator, *, positive: bool,
                 reads: torch.Tensor | None = None) -> TokenScoreModel:
    """A token-score model over the length and vocabulary of ``x`` (built under ``seed``),
    its parameters drawn from ``gen`` (:func:`_fill_token_model`)."""
    model = _new_module(lambda: TokenScoreModel(x.shape[1], _vocabulary(x), reads=reads), seed)
    _fill_token_model(model, gen, positive=positive)
    return model


def _fill_token_model(model: TokenScoreModel, gen: torch.Generator, *, positive: bool) -> None:
    """Embeddings and scorer from ``gen``; the mask token's embedding stays zero. With
    ``positive`` every token's score is positive (evidence for class 1)."""
    with torch.no_grad():
        emb = torch.randn(model.embedding.weight.shape, generator=gen)
        w = torch.randn(model.scorer.weight.shape, generator=gen)
        if positive:
            emb, w = emb.abs() + 0.1, w.abs() + 0.1
        emb[model.embedding.padding_idx] = 0
        model.embedding.weight.copy_(emb)
        model.scorer.weight.copy_(w)


def _metric_kwargs(modality: str) -> dict[str, Any]:
    return {} if modality == "image" else {"modality": modality}


def train_size(n: int) -> int:
    """The size of a testbed's training split (``Testbed.train``) for ``n`` evaluated
    samples: four times as many, at least 64 (a few mini-batches of fine-tuning)."""
    return max(64, 4 * n)


def _with_train(bed: Testbed, x_train: torch.Tensor) -> Testbed:
    """``bed`` with its training split: ``x_train`` (drawn from the testbed's own input
    distribution under a stream of its own, so never the evaluated ``x``) labelled with the
    model's predictions, in eval mode, so that a copy trained on it learns the mechanism's
    labels."""
    bed.train = (x_train, _predictions(bed.model.eval(), x_train))
    return bed


# ============================================================================ builders
def _resolve(modality: str, n: int | None, shape: Sequence[int] | None
             ) -> tuple[int, tuple[int, ...]]:
    _check_modality(modality)
    n = DEFAULT_N if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"`n` must be an int >= 2; got {n!r}.")
    shape = DEFAULT_SHAPES[modality] if shape is None else tuple(int(d) for d in shape)
    rank = 3 if modality == "image" else 2 if modality == "series" else 1
    if len(shape) != rank or min(shape) < 1:
        raise ValueError(f"`shape` of a {modality} input must have {rank} positive sizes "
                         f"(without the sample axis); got {tuple(shape)}.")
    return n, shape


def _data(modality: str, n: int, shape: tuple[int, ...], seed: int,
          lit: torch.Tensor | None = None, *, stream: str = "data", **kw: Any) -> torch.Tensor:
    gen = _generator(seed, stream)
    if modality == "tokens":
        return _token_inputs(n, shape[0], gen)
    return _numeric_inputs(n, shape, gen, lit, **kw)


def linear_testbed(modality: str = "image", *, n: int | None = None, seed: int = 0,
                   shape: Sequence[int] | None = None) -> Testbed:
    """A linear model with mixed-sign weights (logits (-z, z), z = w . x + b; for tokens a
    sum of token scores), on U(0, 1) inputs (token ids from a vocabulary of 20).

    Candidates: ``exact`` (w * (x - x'), complete), ``negated``, ``absolute`` (sign-blind),
    ``random``. Order: exact beats each of the others. ``reference`` holds the exact map (for
    the ground-truth agreement metrics). Families: faithfulness, localisation (agreement with
    the reference), axiomatic. XAI-Units' weighted features (Lee et al. 2025).
    """
    n, shape = _resolve(modality, n, shape)
    bed = _plant_linear(_data(modality, n, shape, seed), modality, seed, f"{modality}-linear")
    return _with_train(bed, _data(modality, train_size(n), shape, seed, stream="train"))


def region_testbed(modality: str = "image", *, n: int | None = None, seed: int = 0,
                   shape: Sequence[int] | None = None) -> Testbed:
    """A model that reads only a box of about a third of every axis (:func:`default_region`)
    through a monotone nonlinear network, so its output is constant when only the outside
    changes and increases with every read feature; the region's inputs are bright.

    Candidates: ``inside`` (gradient x (input - baseline), zero outside the region),
    ``outside`` (intensity outside the region), ``random``. Order: inside beats outside and
    random. ``s``: the region. AttributionLab (Zhang et al. 2024); XAI-TRIS (Clark et al.
    2024).
    """
    n, shape = _resolve(modality, n, shape)
    region = default_region(_feature_shape(modality, shape))
    lit = None if modality == "tokens" else _elements(region, modality, shape)
    x = _data(modality, n, shape, seed, lit, background=0.5)
    bed = _plant_region(x, modality, seed, f"{modality}-region", region)
    return _with_train(bed, _data(modality, train_size(n), shape, seed, lit, background=0.5,
                                  stream="train"))


def saturation_testbed(modality: str = "image", *, n: int | None = None, seed: int = 0,
                       shape: Sequence[int] | None = None) -> Testbed:
    """z = A clamp(e(x), max=1) + d(x): the evidence e of a region is saturated on every
    sample (e(x) >= 2.5), so the gradient is exactly zero there, while IG (closed form)
    credits it; a small distractor elsewhere has a gradient.

    Candidates: ``integrated_gradients`` (exact, complete), ``gradient``, ``gradient_x_input``,
    ``random``. Order: IG beats each. ``s``: the evidence region. Sundararajan et al. 2017.
    """
    _numeric_only(modality, "No saturation testbed for tokens (token ids have no gradient).")
    n, shape = _resolve(modality, n, shape)
    region = default_region(_feature_shape(modality, shape))
    lit = _elements(region, modality, shape)
    x = _data(modality, n, shape, seed, lit)
    bed = _plant_saturation(x, modality, seed, f"{modality}-saturation", region)
    return _with_train(bed, _data(modality, train_size(n), shape, seed, lit, stream="train"))


def invariance_testbed(modality: str = "image", *, n: int | None = None, seed: int = 0,
                       shape: Sequence[int] | None = None) -> Testbed:
    """A model linear on a region (|w| <= 0.5) and constant outside it, for robustness.

    Candidates: ``gradient`` (the weights: constant), ``leaky`` (the gradient plus the input's
    intensity outside the region: it changes only with ignored features), ``intensity``
    (changes everywhere), ``random`` (redrawn per input). Order: the gradient beats each.
    """
    _numeric_only(modality, "No invariance testbed for tokens (robustness metrics add noise).")
    n, shape = _resolve(modality, n, shape)
    region = default_region(_feature_shape(modality, shape))
    x = _data(modality, n, shape, seed)
    bed = _plant_invariance(x, modality, seed, f"{modality}-invariance", region)
    return _with_train(bed, _data(modality, train_size(n), shape, seed, stream="train"))


def interaction_testbed(modality: str = "image", *, kind: str = "and", n: int | None = None,
                        seed: int = 0, shape: Sequence[int] | None = None) -> Testbed:
    """Two regions A and B (opposite corners) that interact: ``kind="and"`` z = 4 p_A p_B - 1
    with both regions bright (either region removed flips the class); ``kind="xor"`` z = -16
    (p_A - 1/2)(p_B - 1/2), class 1 when exactly one region is bright (half the samples).

    Candidates: ``both`` (closed-form IG), ``one`` (IG restricted to A), ``random``. Order:
    both beats one and random. ``s``: A | B. XAI-Units (Lee et al. 2025); XAI-TRIS (Clark et
    al. 2024).
    """
    if kind not in ("and", "xor"):
        raise ValueError(f"`kind` must be 'and' or 'xor'; got {kind!r}.")
    _numeric_only(modality, "No interaction testbed for tokens.")
    n, shape = _resolve(modality, n, shape)
    fshape = _feature_shape(modality, shape)
    region_a = default_region(fshape, corner="first")
    region_b = default_region(fshape, corner="last")
    if bool((region_a & region_b).any()):
        raise ValueError(f"The input shape {shape} is too small for two disjoint regions.")
    elem_a, elem_b = _elements(region_a, modality, shape), _elements(region_b, modality, shape)

    def lit_of(rows: int, stream: str) -> torch.Tensor:
        if kind == "and":
            return elem_a | elem_b
        # half the samples: exactly one region bright (alternating), the others both or none
        gen = _generator(seed, stream)
        lit_a = torch.rand(rows, generator=gen) < 0.5
        one = torch.arange(rows) % 2 == 0
        lit_b = torch.where(one, ~lit_a, lit_a)
        view = (-1, *([1] * len(shape)))
        return (lit_a.reshape(view) & elem_a) | (lit_b.reshape(view) & elem_b)

    x = _data(modality, n, shape, seed, lit_of(n, "xor-pattern"), background=0.5)
    bed = _plant_interaction(x, modality, seed, f"{modality}-{kind}", region_a, region_b, kind)
    rows = train_size(n)
    return _with_train(bed, _data(modality, rows, shape, seed, lit_of(rows, "xor-pattern-train"),
                                  background=0.5, stream="train"))


def model_aware_testbed(modality: str = "image", *, n: int | None = None, seed: int = 0,
                        shape: Sequence[int] | None = None) -> Testbed:
    """A small random CNN (MLP for tables) for the randomisation metrics.

    Candidates: ``gradient``, ``gradient_x_input`` (model-aware), ``intensity`` and, for
    images and series, ``edges`` (model-blind). Order: each model-aware map beats each
    model-blind one. Adebayo et al. 2018.
    """
    _numeric_only(modality, "No model-aware testbed for tokens.")
    n, shape = _resolve(modality, n, shape)
    x = _data(modality, n, shape, seed)
    bed = _plant_model_aware(x, modality, seed, f"{modality}-model-aware")
    return _with_train(bed, _data(modality, train_size(n), shape, seed, stream="train"))


def one_hot_testbed(modality: str = "image", *, n: int | None = None, seed: int = 0,
                    shape: Sequence[int] | None = None) -> Testbed:
    """A model that reads one feature (a pixel, time step, column or token position, bright
    on every sample), for complexity.

    Candidates: ``one_hot`` (the exact attribution), ``spread`` (intensity everywhere; token
    scores everywhere for tokens), ``uniform``. Order: one_hot beats both. ``s``: the feature.
    """
    n, shape = _resolve(modality, n, shape)
    fshape = _feature_shape(modality, shape)
    feature = torch.zeros(fshape, dtype=torch.bool)
    feature[tuple(d // 3 for d in fshape)] = True
    lit = None if modality == "tokens" else _elements(feature, modality, shape)
    x = _data(modality, n, shape, seed, lit)
    bed = _plant_one_hot(x, modality, seed, f"{modality}-one-hot", feature)
    return _with_train(bed, _data(modality, train_size(n), shape, seed, lit, stream="train"))


def completeness_testbed(modality: str = "image", *, n: int | None = None, seed: int = 0,
                         shape: Sequence[int] | None = None) -> Testbed:
    """A bias-free ReLU network (positively homogeneous), for the axiomatic metrics.

    Candidates: ``exact`` (gradient x (input - x'), complete and input invariant),
    ``gradient`` (invariant, not complete), ``gradient_x_input`` (complete, not invariant),
    ``random``. Order: exact beats each. Sundararajan et al. 2017; Kindermans et al. 2019.
    """
    _numeric_only(modality, "No completeness testbed for tokens.")
    n, shape = _resolve(modality, n, shape)
    x = _data(modality, n, shape, seed)
    bed = _plant_completeness(x, modality, seed, f"{modality}-completeness")
    return _with_train(bed, _data(modality, train_size(n), shape, seed, stream="train"))


def class_templates_testbed(modality: str = "image", *, n: int | None = None, seed: int = 0,
                            shape: Sequence[int] | None = None,
                            n_classes: int = 3) -> Testbed:
    """Template matching with ``n_classes`` classes, each a template on its own block of
    features; sample i is class i mod n_classes (its block bright), for the set-level metrics
    (Sufficiency, Consistency) and per-sample faithfulness.

    Candidates: ``class_template`` (the predicted class's gradient: its template),
    ``other_template`` (a random other class's), ``random``. Order: class_template beats both.
    ``s``: each sample's class block. FunnyBirds (Hesse et al. 2023); Dasgupta et al. 2022.
    """
    _numeric_only(modality, "No class-template testbed for tokens.")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"`n_classes` must be an int >= 2; got {n_classes!r}.")
    n, shape = _resolve(modality, n, shape)
    fshape = _feature_shape(modality, shape)
    blocks = _template_blocks(fshape, n_classes)

    def lit_of(rows: int) -> torch.Tensor:  # sample i is class i mod n_classes
        return torch.stack([_elements(blocks[int(c)], modality, shape)
                            for c in torch.arange(rows) % n_classes])

    x = _data(modality, n, shape, seed, lit_of(n), background=0.3)
    bed = _plant_class_templates(x, modality, seed, f"{modality}-class-templates", blocks)
    rows = train_size(n)
    return _with_train(bed, _data(modality, rows, shape, seed, lit_of(rows), background=0.3,
                                  stream="train"))


def grid_testbed(modality: str = "image", *, n: int | None = None, seed: int = 0,
                 shape: Sequence[int] | None = None, grid_size: int = 2) -> Testbed:
    """A ``grid_size`` x ``grid_size`` grid of cells (2 x 2: 6 x 6 cells of a 12 x 12 image)
    and a model with one head per cell that reads only its own cell
    (:class:`GridCellModel`, Rao et al.'s DiFull model by construction). Sample i explains
    the head of cell i mod n^2 (its target ``y`` is that head's class-1 column), and that cell
    is bright, so it is also the cell the model is most confident about.

    Candidates: ``inside`` (gradient x (input - baseline) of the explained head: zero outside
    its cell), ``spread`` (the same for every head: the whole grid), ``other_cells`` (the other
    heads only), ``random``. Order: inside beats spread, other_cells and random; spread beats
    other_cells. ``s``: the explained cell; ``call_options``: ``cells`` (GridPG, DiFull,
    DiPart) and, for 2 x 2 grids, ``quadrants`` (Focus). Rao, Böhle & Schiele, CVPR 2022;
    Arias-Duart et al., FUZZ-IEEE 2022.
    """
    if modality != "image":
        raise ValueError(f"The grid testbed is built for images; got {modality!r}.")
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 2:
        raise ValueError(f"`grid_size` must be an int >= 2; got {grid_size!r}.")
    n, shape = _resolve(modality, n, shape)
    if min(shape[1:]) < grid_size:
        raise ValueError(f"The input shape {shape} is too small for a {grid_size} x "
                         f"{grid_size} grid.")

    def lit_of(cells: torch.Tensor) -> torch.Tensor:
        masks = grid_cell_masks(cells, grid_size, shape[1:])  # (rows, 1, H, W)
        return masks.expand(-1, shape[0], -1, -1)

    cells = torch.arange(n) % grid_size ** 2
    x = _data(modality, n, shape, seed, lit_of(cells), background=0.5)
    bed = _plant_grid(x, cells, seed, f"{modality}-grid", grid_size)
    train_cells = torch.arange(train_size(n)) % grid_size ** 2
    return _with_train(bed, _data(modality, train_cells.shape[0], shape, seed,
                                  lit_of(train_cells), background=0.5, stream="train"))


def _template_blocks(fshape: tuple[int, ...], n_classes: int) -> list[torch.Tensor]:
    """Disjoint blocks of features, one per class: bands of the first feature axis cut into
    cells along the last (a 2-D grid for images, segments for 1-D features)."""
    total = int(math.prod(fshape))
    if total < 2 * n_classes:
        raise ValueError(f"{n_classes} class templates need at least {2 * n_classes} "
                         f"features; got {total}.")
    flat_blocks = []
    size = total // n_classes
    if len(fshape) == 2:  # the largest square cells of which the grid holds n_classes
        h, w = fshape
        side = next(s for s in range(min(h, w), 0, -1) if (h // s) * (w // s) >= n_classes)
        cells = [(r, c) for r in range(0, h - side + 1, side) for c in range(0, w - side + 1, side)]
        step = len(cells) / n_classes
        for k in range(n_classes):
            r, c = cells[int(k * step)]
            mask = torch.zeros(fshape, dtype=torch.bool)
            mask[r : r + side, c : c + side] = True
            flat_blocks.append(mask)
        return flat_blocks
    half = max(1, size // 2)  # each block half its share: gaps between the blocks
    for k in range(n_classes):
        mask = torch.zeros(total, dtype=torch.bool)
        mask[k * size : k * size + half] = True
        flat_blocks.append(mask.reshape(fshape))
    return flat_blocks


# ============================================================================ registry
@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., Testbed]
    modality: str
    mechanism: str
    options: tuple[tuple[str, Any], ...] = ()


def _register() -> dict[str, _Entry]:
    table: dict[str, _Entry] = {}
    plan: list[tuple[str, Callable[..., Testbed], str, tuple[str, ...], tuple]] = [
        ("linear", linear_testbed, "linear", TESTBED_MODALITIES, ()),
        ("region", region_testbed, "region", TESTBED_MODALITIES, ()),
        ("saturation", saturation_testbed, "saturation", ("image", "series", "tabular"), ()),
        ("invariance", invariance_testbed, "invariance", ("image", "series", "tabular"), ()),
        ("and", interaction_testbed, "interaction", ("image",), (("kind", "and"),)),
        ("xor", interaction_testbed, "interaction", ("image",), (("kind", "xor"),)),
        ("model-aware", model_aware_testbed, "model-aware", ("image", "series", "tabular"), ()),
        ("one-hot", one_hot_testbed, "sparsity", TESTBED_MODALITIES, ()),
        ("completeness", completeness_testbed, "completeness", ("image",), ()),
        ("class-templates", class_templates_testbed, "set-level", ("image", "tabular"), ()),
        ("grid", grid_testbed, "grid", ("image",), ()),
    ]
    for suffix, builder, mechanism, modalities, options in plan:
        for modality in modalities:
            table[f"{modality}-{suffix}"] = _Entry(builder, modality, mechanism, options)
    return table


_TESTBEDS = _register()


def list_testbeds(modality: str | None = None, mechanism: str | None = None) -> list[str]:
    """The names of the registered testbeds (``"<modality>-<mechanism>"``, e.g.
    ``"image-linear"``, ``"image-xor"``), optionally only those of one modality
    (``"image"``, ``"series"``, ``"tabular"``, ``"tokens"``) and/or one mechanism (one of
    :data:`~metaeval.validity.MECHANISMS`), in registration order."""
    if modality is not None:
        _check_modality(modality)
    if mechanism is not None and mechanism not in MECHANISMS:
        raise ValueError(f"Unknown mechanism {mechanism!r}; one of {MECHANISMS}.")
    return [name for name, entry in _TESTBEDS.items()
            if (modality is None or entry.modality == modality)
            and (mechanism is None or entry.mechanism == mechanism)]


def build_testbed(name: str, *, n: int | None = None, seed: int = 0,
                  shape: Sequence[int] | None = None) -> Testbed:
    """Build a registered testbed by name (:func:`list_testbeds`) with ``n`` samples
    (``None``: :data:`DEFAULT_N`, 16) from ``seed``: the same name, n, seed and shape give the
    same model, inputs and candidates.

    ``shape`` is the shape of one input without the sample axis (``None``:
    :data:`DEFAULT_SHAPES`, e.g. (3, 12, 12) for images). Larger inputs let metrics whose
    defaults need many features run at their defaults (FaithfulnessCorrelation's
    ``subset_size=224`` and Continuity's ``nr_steps=28`` need 16 x 16 images), at a cost:
    NAOPC's beam search at its defaults takes about 4-5 times longer on 16 x 16 than on
    12 x 12."""
    if name not in _TESTBEDS:
        raise ValueError(f"Unknown testbed {name!r}; one of {list(_TESTBEDS)}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"`seed` must be an int; got {seed!r}.")
    entry = _TESTBEDS[name]
    return entry.builder(entry.modality, n=n, seed=seed, shape=shape, **dict(entry.options))
