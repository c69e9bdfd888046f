"""Axiomatic: does the explanation satisfy a property every good explanation should have?

* :class:`Completeness` (Sundararajan et al. 2017): the attributions add up to the change of the
  output between the input and a baseline.
* :class:`NonSensitivity` (Nguyen & Rodriguez Martinez 2020): features the model does not react
  to get zero attribution, and the other way round.
* :class:`InputInvariance` (Kindermans et al. 2019): a constant shift of the input, absorbed by
  the first layer's bias, leaves the explanation unchanged.

Each runs its forward passes through the batched runner (one call for the whole batch) and
never touches the user's model: InputInvariance builds a modified copy.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .._hook_handles import HookHandles
from .._validation import EvalkitWarning, as_tensor, check_bool, check_scalar, finite_rows
from ..modality import Modality
from ..models import ModelWrapper
from ..models._copy import copy_module
from ..perturb import make_grouping, make_imputer
from ..perturb.baselines import Baseline
from .base import Metric, MetricBatch

__all__ = ["Completeness", "InputInvariance", "NonSensitivity"]


def _bool_or_residual(passed: torch.Tensor, residual: torch.Tensor, as_residual: bool
                      ) -> torch.Tensor:
    return residual.to(torch.float64) if as_residual else passed.to(torch.float64)


# ============================================================================ Completeness
class Completeness(Metric):
    """Completeness (Sundararajan, Taly & Yan 2017). **Higher is better** (1 = satisfied).

    An attribution is complete when its sum equals the change of the target score between the
    input and the baseline: sum_i a_i = f(x) - f(x'), where x' has every feature replaced by
    ``perturb_baseline`` (Integrated Gradients satisfies it by construction, up to the
    integration error; so do DeepLift and LRP's conservation variants). The score is 1.0 if
    |sum(a) - output_func(f(x) - f(x'))| <= ``atol`` + ``rtol`` * |output_func(f(x) - f(x'))|
    and 0.0 otherwise, or, with ``return_residual=True``, the residual itself (lower is then
    better). The residuals, output differences and attribution sums of the last call are in
    ``residuals_``, ``output_differences_`` and ``attribution_sums_``.

    **The baseline** must be the one the explanation was computed against, or every sample
    fails (Integrated Gradients against zero, checked against the per-sample minimum: 0 on
    every sample). The rule:

    * ``perturb_baseline=None`` (default): the explainer's baseline when it is known, else
      ``"black"`` (the per-sample minimum of x, Quantus' default). It is known for the methods
      that are complete against a baseline (``IntegratedGradients``, ``DeepLift``: their
      ``baselines`` argument, default zero) when the attributions come from
      :func:`evalkit.explain`: computed by the metric (``explain_kwargs={"method": ...}``),
      passed as ``a`` exactly as ``explain`` returned them, or passed with
      ``explain_fn=evalkit.explain`` (or none) and ``explain_kwargs`` naming the method
      (:func:`evalkit.evaluate` passes them). ``baseline_`` says which baseline was used.
    * An explicit ``perturb_baseline`` is used as given; when it differs from the known
      explainer's baseline, an ``EvalkitWarning`` says so.

    Attributions are summed over their own elements (a 1-channel map is not broadcast over the
    input channels first).

    Deviations from Quantus (``quantus.Completeness`` 0.6): a tolerance instead of exact float
    equality, and ``normalise=False`` by default (Quantus divides ``a`` by its maximum, which
    breaks the sum, and then compares floats with ``==``, so every sample fails: deviation C3).
    A warning is issued when ``normalise=True`` is requested. The default baseline is the
    explainer's when known (above; Quantus always uses ``"black"``).

    Parameters
    ----------
    perturb_baseline:
        The baseline x' (a name, number, array or imputer; see :mod:`evalkit.perturb`);
        ``None``: the explainer's baseline when known, else ``"black"`` (see above).
    output_func:
        Applied to f(x) - f(x') (a tensor (N,)) before the comparison; default identity.
    rtol, atol:
        Relative (to |f(x) - f(x')|) and absolute tolerance. The default ``rtol=0.05`` is the
        5% criterion Sundararajan et al. give for choosing the number of integration steps.
    return_residual:
        Return |sum(a) - output_func(f(x) - f(x'))| instead of the pass/fail value; the
        instance's ``higher_is_better`` is then False.

    Reference: M. Sundararajan, A. Taly, Q. Yan, "Axiomatic Attribution for Deep Networks",
    ICML 2017.
    """

    family = "axiomatic"
    higher_is_better = True
    default_abs = False
    default_normalise = False
    default_softmax = False
    paper = "Sundararajan, Taly & Yan, Axiomatic Attribution for Deep Networks, ICML 2017"
    #: evaluate() passes the method's explain function and arguments with the attributions,
    #: so that the explainer's baseline is known (see the class docstring)
    uses_explain_kwargs: ClassVar[bool] = True

    def __init__(
        self,
        perturb_baseline: Any = None,
        output_func: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        rtol: float = 0.05,
        atol: float = 1e-4,
        return_residual: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("normalise"):
            warnings.warn(
                "Completeness with normalise=True compares the sum of *normalised* attributions "
                "with an output difference; the property is then generally violated.",
                EvalkitWarning, stacklevel=2)
        super().__init__(**kwargs)
        self.perturb_baseline = perturb_baseline
        self._imputer = make_imputer("black" if perturb_baseline is None else perturb_baseline)
        if output_func is not None and not callable(output_func):
            raise TypeError("`output_func` must be callable on a tensor (N,), or None.")
        self.output_func = output_func
        self.rtol = check_scalar("rtol", rtol, (int, float), min_val=0)
        self.atol = check_scalar("atol", atol, (int, float), min_val=0)
        self.return_residual = check_bool("return_residual", return_residual)
        self.residuals_: np.ndarray | None = None
        self.output_differences_: np.ndarray | None = None
        self.attribution_sums_: np.ndarray | None = None
        self.baseline_: str | None = None

    def _prepare(self, model, x, y, a, s, explain_fn, explain_kwargs, batch_size, device, extra):
        batch = super()._prepare(model, x, y, a, s, explain_fn, explain_kwargs, batch_size,
                                 device, extra)
        batch.extra["_reference"] = self._resolve_reference(batch, a)
        return batch

    def _resolve_reference(self, batch: MetricBatch, a: Any
                           ) -> tuple[torch.Tensor | None, str]:
        """The explainer's baseline broadcast to x where it is to be used (see the class
        docstring), else None (``perturb_baseline`` is used), and a description of the
        baseline used; warns on a mismatch."""
        from ..explain import explain as ek_explain
        from ..explain import explainer_info
        from ..explain._reference import attached_reference, reference_baseline

        known = attached_reference(a) if a is not None else None
        if known is None and batch.explain_fn in (None, ek_explain):
            method = batch.explain_kwargs.get("method", "Saliency" if a is None else None)
            try:
                name = explainer_info(method).name if isinstance(method, str) else None
            except ValueError:  # an unknown name: explain() itself says so when it runs
                name = None
            known = reference_baseline(name, batch.explain_kwargs)
        described = (repr(self.perturb_baseline) if self.perturb_baseline is not None
                     else "'black' (the per-sample minimum of x)")
        if known is None:
            return None, described
        method, value = known
        x = batch.x
        try:
            # a number, one input's shape, (1, ...) or one row per sample, as explain takes
            values = torch.broadcast_to(torch.as_tensor(value, device=x.device).to(x.dtype),
                                        x.shape)
        except RuntimeError:
            values = None
        if values is None:
            warnings.warn(f"Completeness: the attributions are from {method}, whose baseline "
                          f"cannot be aligned with x {tuple(x.shape)}; using {described}.",
                          EvalkitWarning, stacklevel=4)
            return None, described
        shown = f"{value:g}" if isinstance(value, int | float) else "its `baselines` array"
        if self.perturb_baseline is None:
            return values, f"the baseline of {method} ({shown})"
        own = self._imputer.fill(x, torch.ones_like(x, dtype=torch.bool),
                                 keys=batch.keys if self._imputer.stochastic else None)
        if not torch.allclose(own.to(x.dtype), values):
            warnings.warn(
                f"Completeness compares with perturb_baseline={described}, but the "
                f"attributions are from {method}, computed against the baseline {shown}: their "
                "sums cannot match f(x) - f(x'). Leave perturb_baseline unset to use the "
                "explainer's baseline.", EvalkitWarning, stacklevel=4)
        return None, described

    def _derived_metadata(self) -> dict[str, bool]:
        # a residual is an error: the direction of this instance flips (metaeval and anyone
        # reading ``metric.higher_is_better`` rank by it)
        return {"higher_is_better": not self.return_residual}

    def _random_sources(self) -> dict[str, Any]:
        return {"baseline": self._imputer}

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        batch.require_model()
        assert batch.a is not None and batch.runner is not None
        x = batch.x
        reference, described = batch.extra.pop("_reference", (None, None))
        batch.record("baseline", described, per_sample=False)
        if reference is not None:  # the explainer's own baseline (see the class docstring)
            x_base = reference
        else:
            keys = batch.keys if self._imputer.stochastic else None
            full = torch.ones_like(x, dtype=torch.bool)
            x_base = self._imputer.fill(x, full, keys=keys)
        modality = batch.modality
        if (type(modality).replace is Modality.replace and x_base.dtype == x.dtype
                and x_base.shape == x.shape):
            # each row is x's or the baseline's, unchanged: the rows in the runner's order
            # (sample-major: x_i, then its baseline) written once, whose chunks the runner
            # forwards as views (the same rows and chunks as building them chunk by chunk)
            rows = torch.stack([x, x_base], 1).reshape(2 * batch.n, *x.shape[1:])
            y_rows = None if batch.y is None else batch.y.repeat_interleave(2, 0)
            scores = batch.runner.run_concat(
                [(2 * batch.n, rows)], y=y_rows, row_shape=tuple(x.shape[1:]),
                desc="Completeness").reshape(batch.n, 2).to(torch.float64)
            return self._score(batch, scores)

        def build(index: tuple[torch.Tensor, ...]) -> torch.Tensor:
            i, which = index
            # index_select: the same rows as x[i], several times faster on the CPU
            xi = x.index_select(0, i)
            return modality.replace(xi, modality.per_sample(which == 1, xi),
                                    x_base.index_select(0, i))

        scores = batch.runner.run(build, (batch.n, 2), y=batch.y, row_shape=tuple(x.shape[1:]),
                                  desc="Completeness").to(torch.float64)
        return self._score(batch, scores)

    def _score(self, batch: MetricBatch, scores: torch.Tensor) -> torch.Tensor:
        """The scores from the (N, 2) target scores of x and of its baseline."""
        assert batch.a is not None
        x = batch.x
        delta = scores[:, 0] - scores[:, 1]
        if self.output_func is not None:
            delta = torch.as_tensor(self.output_func(delta), device=x.device).to(torch.float64)
            if delta.shape != (batch.n,):
                raise RuntimeError(f"output_func returned shape {tuple(delta.shape)}; expected "
                                   f"({batch.n},).")
        total = batch.a.reshape(batch.n, -1).sum(1)
        residual = (total - delta).abs()
        passed = residual <= self.atol + self.rtol * delta.abs()
        batch.set_nan(~torch.isfinite(delta), "the model's output difference is not finite")
        batch.record("residuals", residual, per_sample=True)
        batch.record("output_differences", delta, per_sample=True)
        batch.record("attribution_sums", total, per_sample=True)
        return _bool_or_residual(passed, residual, self.return_residual)


# ============================================================================ NonSensitivity
class NonSensitivity(Metric):
    """Non-sensitivity (Nguyen & Rodriguez Martinez 2020). **Lower is better** (0 = satisfied).

    The set of features with zero attribution should be the set of features the model is not
    sensitive to. Each feature group (``grouping``, merged ``features_in_step`` at a time in
    group-id order, e.g. raster order for pixels) is replaced by ``perturb_baseline`` on its
    own, and the group is *insensitive* when |f(x) - f(x with the group replaced)| < ``eps``.
    An attribution element is *zero* when |a_i| < ``eps``. The score counts the violations,
    i.e. the size of the symmetric difference: elements with zero attribution in a sensitive
    group, plus elements with non-zero attribution in an insensitive group.

    Violations are counted per element of the attribution map (a 1-channel map counts pixels, a
    C-channel map channel values), each element taking its group's sensitivity; with
    ``grouping="channel_values"`` a 1-channel map is broadcast over the input channels first,
    which is Quantus' count.

    All N x (G + 1) forward passes (the unperturbed input and one per group) go through the
    runner in one call: linear in the batch size (Quantus' ``main`` predicts the whole batch
    for every sample and group: quadratic).

    Deviations from Quantus: the zero test uses |a| (Quantus tests a < eps, so negative
    attributions count as zero when ``abs=False``); groups default to whole pixels
    (``grouping="channel_values"`` for Quantus' per-channel-value features); normalisation is
    per sample, so with the default ``normalise=True`` ``eps`` is relative to each map's
    largest |a| (Quantus: the batch's, deviation C1).

    Reference: A. Nguyen, M. Rodriguez Martinez, "On Quantitative Aspects of Model
    Interpretability", arXiv:2007.07584, 2020.
    """

    family = "axiomatic"
    higher_is_better = False
    default_abs = True
    default_normalise = True
    default_softmax = True
    paper = ("Nguyen & Rodriguez Martinez, On Quantitative Aspects of Model Interpretability, "
             "arXiv 2020")

    def __init__(
        self,
        eps: float = 1e-5,
        features_in_step: int = 1,
        perturb_baseline: Any = "black",
        *,
        grouping: Any = "pixels",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.eps = check_scalar("eps", eps, (int, float), min_val=0)
        self.features_in_step = check_scalar("features_in_step", features_in_step, int,
                                             min_val=1)
        self.perturb_baseline = perturb_baseline
        self._imputer = make_imputer(perturb_baseline)
        self.grouping = grouping
        self._grouping = make_grouping(grouping)
        self.sensitive_: np.ndarray | None = None

    def _random_sources(self) -> dict[str, Any]:
        return {"baseline": self._imputer}

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        batch.require_model()
        assert batch.a is not None and batch.runner is not None
        x = batch.x
        n = batch.n
        grouping = self._grouping.for_modality(batch.modality)(x)
        labels = grouping.labels // self.features_in_step  # (N|1, Cg, *S)
        n_groups = (grouping.n_groups + self.features_in_step - 1) // self.features_in_step
        g_max = int(n_groups.max())
        keys = batch.keys if self._imputer.stochastic else None
        values = None
        if isinstance(self._imputer, Baseline):
            values = self._imputer.values(x, keys)
            values = values.expand(torch.broadcast_shapes(values.shape, x.shape))
        shared = labels.shape[0] == 1
        modality = batch.modality

        def build(index: tuple[torch.Tensor, ...]) -> torch.Tensor:
            i, col = index
            xi = x[i]
            lab = labels.expand(len(i), *labels.shape[1:]) if shared else labels[i]
            mask = lab == modality.per_sample(col - 1, lab)  # column 0: nothing replaced
            if values is not None:
                vi = values[i] if values.shape[0] == n else values.expand_as(xi)
                return modality.replace(xi, mask, vi)
            row_keys = None if keys is None else keys[i]
            return self._imputer.fill(xi, mask.expand_as(xi), keys=row_keys)

        scores = batch.runner.run(build, (n, g_max + 1), y=batch.y,
                                  row_shape=tuple(x.shape[1:]),
                                  desc="NonSensitivity").to(torch.float64)
        change = (scores[:, 1:] - scores[:, :1]).abs()  # (N, G)
        valid = torch.arange(g_max, device=x.device)[None, :] < n_groups[:, None]
        sensitive = (change >= self.eps) & valid
        batch.record("sensitive", sensitive, per_sample=True)
        batch.set_nan(~torch.isfinite(scores).all(1), "a model output is not finite")

        a = batch.a
        shape = torch.broadcast_shapes(a.shape, (n, *labels.shape[1:]))
        lab = labels.expand(n if shared else labels.shape[0], *labels.shape[1:]).expand(shape)
        elem_sensitive = sensitive.gather(1, lab.reshape(n, -1))
        zero = a.expand(shape).reshape(n, -1).abs() < self.eps
        return (zero == elem_sensitive).sum(1).to(torch.float64)


# ============================================================================ InputInvariance
_FIRST_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class _ShiftCompensated(nn.Module):
    """``layer(x) - offset``: a per-position bias, for zero-padded convolutions, where a
    per-channel bias cannot absorb an input shift at the borders."""

    def __init__(self, layer: nn.Module, offset: torch.Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("offset", offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x) - self.offset


class InputInvariance(Metric):
    """Input invariance (Kindermans et al. 2019). **Higher is better** (1 = invariant).

    Two models that compute the same function up to a constant shift of the input, m2(x + d) =
    m1(x), should get the same explanation: a(m2, x + d) = a(m1, x). m2 is a copy of the model
    whose first layer (the first Conv1d/2d/3d or Linear applied to the input) absorbs the shift
    in its bias: b2 = b1 - W d. The score is 1.0 when the two explanations agree within
    max|a2 - a1| <= ``atol`` + ``rtol`` * max|a1| (per sample), else 0.0; with
    ``return_residual=True`` the relative residual max|a2 - a1| / max|a1| instead.

    Kindermans et al. show that gradient-based methods such as Gradient / Saliency and
    SmoothGrad are input invariant (the two functions have the same gradients), while
    Input x Gradient, and Integrated Gradients or Deep Taylor decomposition with a reference
    point that does not move with the input (e.g. a zero baseline), are not.

    The compensation is verified: the copy's outputs on x + d must equal the model's outputs on
    x (a ValueError otherwise, e.g. when the input is rescaled before the first layer). When the
    first layer is a zero-padded convolution, W d is not constant at the borders; the copy then
    subtracts the exact per-position response of the layer to d (a bias map) instead of
    changing the per-channel bias. ``first_layer_`` and ``compensation_`` report what was done.

    Deviations from Quantus (``quantus.InputInvariance`` 0.6): the first layer is found from
    the forward pass (Quantus assumes ``modules[1]`` is a biased convolution), linear first
    layers and bias-free layers work, the compensation is exact at padded borders, every input
    element is shifted (Quantus' ``perturb_batch`` passes ``indices[i][1:]``, so the first
    element of each input stays unshifted and the shifted model sees a different input there),
    and the tolerance is relative to each map's scale (Quantus: ``np.isclose(atol=1e-4)``
    elementwise).

    Parameters
    ----------
    input_shift:
        The shift d: a number, or an array broadcastable to one input (e.g. per channel
        (C, 1, 1)).
    rtol, atol:
        Tolerances of the comparison (relative to max|a1| per sample, and absolute).
    return_residual:
        Return max|a2 - a1| / max|a1| per sample instead of pass/fail (lower is then better).

    Reference: P.-J. Kindermans et al., "The (Un)reliability of Saliency Methods", in
    Explainable AI: Interpreting, Explaining and Visualizing Deep Learning, LNCS 11700, 2019.
    """

    family = "axiomatic"
    higher_is_better = True
    re_explains = True
    default_abs = False
    default_normalise = False
    default_softmax = False
    paper = ("Kindermans et al., The (Un)reliability of Saliency Methods, Explainable AI "
             "(LNCS 11700), 2019")

    def __init__(
        self,
        input_shift: Any = -1.0,
        *,
        rtol: float = 1e-3,
        atol: float = 1e-6,
        return_residual: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("perturb_func", None)  # Quantus' shift function: the shift is built in
        if kwargs.get("normalise") or kwargs.get("abs"):
            warnings.warn("InputInvariance compares raw explanations; normalise/abs can hide "
                          "or create differences.", EvalkitWarning, stacklevel=2)
        super().__init__(**kwargs)
        if isinstance(input_shift, bool) or not isinstance(
            input_shift, int | float | np.ndarray | torch.Tensor | np.generic
        ):
            raise TypeError(f"`input_shift` must be a number or an array; got {input_shift!r}.")
        self.input_shift = input_shift
        self.rtol = check_scalar("rtol", rtol, (int, float), min_val=0)
        self.atol = check_scalar("atol", atol, (int, float), min_val=0)
        self.return_residual = check_bool("return_residual", return_residual)
        self.first_layer_: str | None = None
        self.compensation_: str | None = None
        self.residuals_: np.ndarray | None = None

    def _derived_metadata(self) -> dict[str, bool]:
        # a residual is an error: the direction of this instance flips (metaeval and anyone
        # reading ``metric.higher_is_better`` rank by it)
        return {"higher_is_better": not self.return_residual}

    # ------------------------------------------------------------------ the shifted copy
    def _shift(self, x: torch.Tensor) -> torch.Tensor:
        d = as_tensor(self.input_shift, "input_shift", dtype=x.dtype, device=x.device)
        try:
            return torch.broadcast_to(d, x.shape[1:]).unsqueeze(0)
        except RuntimeError as err:
            raise ValueError(
                f"`input_shift` of shape {tuple(d.shape)} does not broadcast to one input of "
                f"shape {tuple(x.shape[1:])}."
            ) from err

    def shifted_model(self, model: ModelWrapper, x: torch.Tensor) -> tuple[nn.Module, str, str]:
        """A deep copy of ``model``'s module whose first layer absorbs the shift, the first
        layer's name, and the kind of compensation (``"bias"`` or ``"bias map"``)."""
        module = getattr(model, "model", None)
        if not isinstance(module, nn.Module):
            raise NotImplementedError(
                "InputInvariance needs a torch.nn.Module: it changes the first layer's bias "
                f"in a copy of the model; got {type(model).__name__}."
            )
        d = self._shift(x)
        probe = x[:1].detach().clone()
        name, layer_input_shape = self._first_layer(model, module, probe)
        work = copy_module(module)  # copy.deepcopy's copy, built with less work
        layer = work.get_submodule(name)  # the path's modules only, not a walk of all
        with torch.no_grad():
            d_in = d.reshape(layer_input_shape)
            comp = layer(d_in) - layer(torch.zeros_like(d_in))  # W d, with the layer's padding
            channel_dim = 1 if isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d) \
                else comp.ndim - 1
            per_channel = comp.movedim(channel_dim, -1).reshape(-1, comp.shape[channel_dim])
            if per_channel.shape[0] == 1:
                # one position (a linear layer): allclose of the row with itself, which only
                # NaN fails
                constant = not bool(per_channel.isnan().any())
            else:
                constant = bool(torch.allclose(
                    per_channel, per_channel[:1].expand_as(per_channel), rtol=1e-5,
                    atol=1e-6 * (1 + float(comp.abs().max()))))
            if constant:
                shift = per_channel[0]
                if layer.bias is None:
                    layer.bias = nn.Parameter(-shift.clone())
                else:
                    layer.bias.sub_(shift)
                kind = "bias"
            else:
                parent_name, _, child = name.rpartition(".")
                parent = work.get_submodule(parent_name)
                if parent is work and not parent_name and name == "":
                    raise ValueError("InputInvariance cannot wrap the model itself.")
                setattr(parent, child, _ShiftCompensated(layer, comp.detach().clone()))
                kind = "bias map"
        return work, name, kind

    @staticmethod
    def _first_layer(model: ModelWrapper, module: nn.Module, probe: torch.Tensor
                     ) -> tuple[str, tuple[int, ...]]:
        names = {m: n for n, m in module.named_modules()}
        calls: list[tuple[nn.Module, torch.Tensor]] = []

        def hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
            if args and isinstance(args[0], torch.Tensor):
                calls.append((mod, args[0]))

        with HookHandles() as hooks:
            for m in module.modules():
                if isinstance(m, _FIRST_LAYER_TYPES):
                    hooks.forward_pre(m, hook)
            with model.evaluation(), torch.no_grad():
                module(probe)
        if not calls:
            raise ValueError("InputInvariance needs a model whose first layer is a Conv1d, "
                             "Conv2d, Conv3d or Linear layer; none was called.")
        first, first_in = calls[0]
        same_data = (first_in.data_ptr() == probe.data_ptr()
                     and first_in.numel() == probe.numel())
        if not same_data:
            raise ValueError(
                f"InputInvariance: the first Conv/Linear layer ({names[first]!r}) does not "
                "receive the model's input unchanged (the model transforms the input first), "
                "so its bias cannot absorb an input shift."
            )
        return names[first], tuple(first_in.shape)

    # ------------------------------------------------------------------ evaluate
    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        model = batch.require_model()
        assert batch.a is not None
        x = batch.x
        work, name, kind = self.shifted_model(model, x)
        shifted = model._copy(work)  # a wrapper with the same options around the copy
        x_shift = x + self._shift(x)
        batch.record("first_layer", name)
        batch.record("compensation", kind)
        # the compensation must be exact: m2(x + d) == m1(x)
        ref = model.predict(x).to(torch.float64)
        out = shifted.predict(x_shift).to(torch.float64)
        scale = float(ref.abs().max()) if ref.numel() else 0.0
        err = float((out - ref).abs().max()) if ref.numel() else 0.0
        if not math.isfinite(err) or err > 1e-3 * max(scale, 1.0):
            raise ValueError(
                f"InputInvariance: the shifted copy does not reproduce the model (max output "
                f"difference {err:.3g}); the first layer {name!r} cannot absorb the shift."
            )
        raw = self._run_explain(batch, x_shift, batch.y, shifted)
        finite = finite_rows(raw)
        a2 = self._preprocess_attributions(batch, raw, x_shift, flag_nan=False)
        a1 = batch.a
        if a2.shape != a1.shape:
            raise ValueError(
                f"InputInvariance: the explain function returns attributions of shape "
                f"{tuple(a2.shape)} but `a` has shape {tuple(a1.shape)}; compute `a` with the "
                "same explain function."
            )
        diff = torch.sub(a2, a1).abs_().reshape(batch.n, -1).amax(1)
        scale_a = a1.reshape(batch.n, -1).abs().amax(1)
        passed = diff <= self.atol + self.rtol * scale_a
        batch.set_nan(~finite, "the shifted model's explanation contains NaN or Inf")
        positive = scale_a > 0
        rel = diff / torch.where(positive, scale_a, 1.0)
        rel = torch.where(positive | (diff == 0), rel, math.inf)
        batch.record("residuals", rel, per_sample=True)
        if self.return_residual:
            batch.set_nan((scale_a == 0) & (diff > 0),
                          "the original explanation is all zero: the relative residual is "
                          "undefined")
        return _bool_or_residual(passed, rel, self.return_residual)
