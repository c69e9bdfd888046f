"""Infidelity (Yeh et al. 2019)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ... import _quantus_compat, _rng
from ..._validation import check_bool, check_option, check_scalar
from ...perturb import Patches, make_imputer
from ...perturb.baselines import Baseline
from .._removal import (
    baseline_values,
    clean_scores,
    flag_nonfinite,
    order_groups,
    window_scores,
)
from ..base import Metric, MetricBatch


class Infidelity(Metric):
    """Explanation infidelity (Yeh et al. 2019): the expected squared error between the
    explanation's prediction of an output change and the actual change,

        INFD(a, f, x) = E_I [ (I^T a - (f(x) - f(x - I)))^2 ],

    over random perturbations I. **Lower is better**. Per-sample; the expectation is estimated
    with ``n_perturb_samples`` draws seeded per sample, draw r from the key of (sample, r)
    (:func:`infidelity_noise`; the numbers a seed gives changed when evalkit's counter-based
    keyed generator replaced one NumPy generator per key, their distribution did not).

    Perturbations (``perturb_func``):

    * ``"gaussian"`` (default; the paper's noisy-baseline perturbation): I ~ N(0, noise_std^2)
      i.i.d. per input element, in input units;
    * ``"patches"`` (Quantus' deterministic variant): non-overlapping square patches of each
      size in ``perturb_patch_sizes`` are replaced by ``perturb_baseline`` cumulatively in
      raster order; for step k, I_k = x - x_k; the loss is the mean over the steps, averaged
      over the patch sizes (and over ``n_perturb_samples`` draws only if the baseline is
      random; Quantus repeats identical work). Unlike Quantus (deviation C12), any H and W work
      (border patches are smaller).

    ``optimal_scaling=True`` replaces ``a`` by ``beta a`` with the beta that minimises the
    error, beta = E[I^T a Delta] / E[(I^T a)^2] (Yeh et al., and captum's ``normalize=True``),
    so the score does not depend on the scale of the attribution. Recommended when comparing
    methods whose attributions have different scales.

    A 1-channel attribution on a C-channel input is broadcast over the channels
    (I^T a = sum over all elements of a * I). Defaults: ``normalise=False`` (the raw
    attribution scale matters unless ``optimal_scaling``), logits (``softmax=False``).

    Validity (``docs/validity.md``, report card): the squared error depends on the map's scale,
    so on region-only and XOR models a map outside the evidence can win;
    ``optimal_scaling=True`` recovers both (not saturation).

    Reference: C.-K. Yeh et al., "On the (In)fidelity and Sensitivity of Explanations",
    NeurIPS 2019.
    """

    family = "faithfulness"
    higher_is_better = False
    default_normalise = False
    stochastic = True
    paper = "Yeh et al., On the (In)fidelity and Sensitivity of Explanations, NeurIPS 2019"

    def __init__(self, perturb_func: str = "gaussian", n_perturb_samples: int = 10,
                 noise_std: float = 0.1, *, optimal_scaling: bool = False,
                 perturb_baseline: Any = "black", perturb_patch_sizes: Sequence[int] = (4,),
                 loss_func: str = "mse", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if _quantus_compat.function_name(perturb_func) in _quantus_compat.BASELINE_REPLACEMENT:
            perturb_func = "patches"  # Quantus' perturb_func of its (patch) variant, by name
        self.perturb_func = check_option("perturb_func", perturb_func, ("gaussian", "patches"))
        self.n_perturb_samples = check_scalar("n_perturb_samples", n_perturb_samples, int,
                                              min_val=1)
        self.noise_std = check_scalar("noise_std", noise_std, (int, float), min_val=0,
                                      include_min=False)
        self.optimal_scaling = check_bool("optimal_scaling", optimal_scaling)
        self.perturb_baseline = perturb_baseline
        sizes = (perturb_patch_sizes,) if isinstance(perturb_patch_sizes, int) else tuple(
            perturb_patch_sizes)
        for p in sizes:
            check_scalar("perturb_patch_sizes", p, int, min_val=1)
        self.perturb_patch_sizes = sizes
        self.loss_func = check_option("loss_func", loss_func, ("mse",))
        self._imputer = make_imputer(perturb_baseline)
        if self.perturb_func == "patches" and not isinstance(self._imputer, Baseline):
            raise ValueError("perturb_func='patches' needs a mask-independent perturb_baseline "
                             "(a name, number or array), not an Imputer: I = x - x_k must be "
                             "known before the model is run.")

    def _random_sources(self) -> dict[str, Any]:
        return {"gaussian perturbations": self.perturb_func == "gaussian",
                "baseline": self._imputer}

    def _loss(self, dots: torch.Tensor, deltas: torch.Tensor,
              valid: torch.Tensor | None = None) -> torch.Tensor:
        w = torch.ones_like(dots) if valid is None else valid.to(dots.dtype)
        cnt = w.sum(1)
        if self.optimal_scaling:
            num = (dots * deltas * w).sum(1)
            den = (dots * dots * w).sum(1)
            beta = num / torch.where(den > 0, den, torch.ones_like(den))
            dots = dots * beta.unsqueeze(1)
        return (((dots - deltas) ** 2) * w).sum(1) / cnt

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        if self.perturb_func == "gaussian":
            return self._gaussian(batch)
        return self._patches(batch)

    def _gaussian(self, batch: MetricBatch) -> torch.Tensor:
        x = batch.x
        k = self.n_perturb_samples
        a = batch.a
        assert a is not None
        keys = batch.keys
        std = float(self.noise_std)

        dots = torch.full((batch.n, k), math.nan, dtype=torch.float64, device=x.device)
        flat_dots = dots.view(-1)
        # every row's key at once (row (i, r) is flat row i * k + r), not per chunk
        row_keys = _row_keys(keys.unsqueeze(1), torch.arange(k).unsqueeze(0)).reshape(-1)
        row_shape = tuple(x.shape[1:])
        # the float64 attributions once per call, and one float64 buffer for every chunk's
        # products a * I (consumed before the next chunk): the same values as casting both
        # per chunk (a float32 value converts to float64 exactly)
        a64 = a.to(torch.float64)
        products: list[torch.Tensor] = []

        def build(index: tuple[torch.Tensor, ...]) -> torch.Tensor:
            i, r = index
            flat = i * k + r
            noise = _rng.normal(row_keys.index_select(0, flat), row_shape, std=std,
                                dtype=x.dtype).to(x.device)
            a_rows = a64.index_select(0, i)
            shape = torch.broadcast_shapes(a_rows.shape, noise.shape)
            if not products or products[0].shape[1:] != shape[1:] or (
                    products[0].shape[0] < shape[0]):
                products[:] = [torch.empty(shape, dtype=torch.float64, device=x.device)]
            # the noise cast to float64 first, then a float64 product in place: the same
            # values as the mixed-dtype ``a_rows * noise`` (which casts each float32 the same
            # way), somewhat faster (several times on 2-D rows)
            product = products[0][: shape[0]].copy_(noise).mul_(a_rows)
            flat_dots.index_copy_(0, flat, product.flatten(1).sum(1))
            # in place on the fresh rows: the same values as ``x[i] - noise``, no new buffer
            return x.index_select(0, i).sub_(noise)

        scores = batch.runner.run(build, (batch.n, k), y=batch.y,  # type: ignore[union-attr]
                                  row_shape=tuple(x.shape[1:]), desc=type(self).__name__)
        flag_nonfinite(batch, scores)
        deltas = clean_scores(batch).unsqueeze(1) - scores.to(torch.float64)
        return self._loss(dots, deltas)

    def _patches(self, batch: MetricBatch) -> torch.Tensor:
        x = batch.x
        a = batch.a
        assert a is not None
        clean = clean_scores(batch)
        repeats = self.n_perturb_samples if self._imputer.stochastic else 1
        losses = []
        for r in range(repeats):
            keys = _rng.combine(batch.keys, 0x1F1D, r) if self._imputer.stochastic else None
            base = baseline_values(self._imputer, x, keys)
            for p in self.perturb_patch_sizes:
                grouping = Patches(p)
                ordering = order_groups(batch, grouping, "index")
                grp = ordering.grouping
                g = grp.n_groups
                t = torch.arange(1, int(g.max()) + 1, device=g.device)
                hi = torch.minimum(t.unsqueeze(0), g.unsqueeze(1))
                lo = torch.zeros_like(hi)
                scores = window_scores(batch, ordering, self._imputer, lo, hi, keys=keys,
                                       desc=type(self).__name__)
                deltas = clean.unsqueeze(1) - scores
                assert base is not None  # checked in __init__
                per_group = grp.reduce(a * (x.to(torch.float64) - base.to(torch.float64)),
                                       "sum").nan_to_num(0.0)
                dots = per_group.gather(1, ordering.order).cumsum(1).gather(1, hi - 1)
                valid = t.unsqueeze(0) <= g.unsqueeze(1)
                losses.append(self._loss(dots, deltas, valid))
        return torch.stack(losses, 1).mean(1)


def infidelity_noise(keys: torch.Tensor, n_perturb_samples: int, shape: tuple[int, ...],
                     std: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The Gaussian perturbations I of :class:`Infidelity` for samples with ``keys``:
    (len(keys), n_perturb_samples, *shape)."""
    rows = _row_keys(keys.unsqueeze(1), torch.arange(n_perturb_samples).unsqueeze(0))
    return _rng.normal(rows.reshape(-1), shape, std=std, dtype=dtype).reshape(
        keys.shape[0], n_perturb_samples, *shape)


def _row_keys(sample_keys: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:
    """The key of perturbation ``draw`` of the samples with ``sample_keys`` (broadcast): each
    perturbation is drawn from its own key, so a chunk of rows draws only its own rows."""
    return _rng.combine(sample_keys, 0x1F1D, draw)
