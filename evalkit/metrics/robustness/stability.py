"""Relative Input, Output and Representation Stability (Agarwal et al. 2022)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ..._hook_handles import HookHandles, record_outputs
from ..._validation import check_scalar
from ..base import MetricBatch
from ._engine import (
    _Chunk,
    _documented,
    _flat,
    _Forward,
    _minus,
    _NoiseRobustness,
)


# ---------------------------------------------------------------------------- relative stability
def _leaf_layers(model: torch.nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n and next(m.children(), None) is None]


def _divisors(ref: torch.Tensor, eps_min: float) -> torch.Tensor:
    """max(|ref|, eps_min), the elementwise divisors of a relative change."""
    return ref.abs().clamp_min_(eps_min)  # in place: abs() is a fresh tensor


def _relative_change(ref: torch.Tensor, new: torch.Tensor, eps_min: float, p: float,
                     owned: bool = False, scale: torch.Tensor | None = None) -> torch.Tensor:
    """|| (ref - new) / max(|ref|, eps_min) ||_p over the last axis (``ref`` broadcasts against
    ``new``), computed in the tensors' dtype, returned as float64. ``owned``: ``new`` is a
    buffer the caller gives up (see ``_Chunk.a_owned``): the differences are computed in it,
    as ``new - ref``, whose elements are exactly the negatives of ``ref - new`` (IEEE
    subtraction rounds symmetrically), so the norm is the same. ``scale``: the divisors
    (:func:`_divisors` of ``ref``) where the caller has them already."""
    if scale is None:
        scale = _divisors(ref, eps_min)
    diff = _minus(new, ref, True) if owned else ref - new
    # in place where the dtypes agree: one temporary of the (S, K, D) stack instead of two
    diff = diff.div_(scale) if diff.dtype == scale.dtype else diff / scale
    return torch.linalg.vector_norm(diff, ord=p, dim=-1).to(torch.float64)


class _RelativeStability(_NoiseRobustness):
    """Relative stability (Agarwal et al. 2022): the relative change of the explanation over the
    relative change of the input, the output or a representation, maximised over the draws."""

    default_on_prediction_change = "drop_draw"
    default_normalise_func = "second_moment"

    def __init__(self, nr_samples: int = 200, perturb_func: Any = "uniform",
                 perturb_mean: float = 0.0, perturb_std: float = 0.1,
                 lower_bound: float = 0.02, upper_bound: float | None = 0.2,
                 eps_min: float = 1e-6, p_norm: float = 2, *,
                 on_prediction_change: str | None = None,
                 return_nan_when_prediction_changes: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._setup_noise(nr_samples, perturb_func, perturb_mean, perturb_std, lower_bound,
                          upper_bound)
        self._setup_relative(eps_min, p_norm)
        self._setup_prediction_change(on_prediction_change, return_nan_when_prediction_changes)

    def _setup_relative(self, eps_min: float, p_norm: float) -> None:
        self.eps_min = check_scalar("eps_min", eps_min, (int, float), min_val=0,
                                    include_min=False)
        self.p_norm = check_scalar("p_norm", p_norm, (int, float), min_val=1)

    def _numerator(self, batch: MetricBatch, chunk: _Chunk) -> torch.Tensor:
        s, k = chunk.a_ok.shape
        a0 = _flat(batch.a[chunk.rows]).unsqueeze(1)  # type: ignore[index]
        return _relative_change(a0, chunk.a.reshape(s, k, -1), self.eps_min, self.p_norm,
                                owned=chunk.a_owned)

    def _ratio(self, numer: torch.Tensor, denom: torch.Tensor) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
        return numer / denom.clamp_min(self.eps_min), torch.ones_like(numer, dtype=torch.bool)


@_documented
class RelativeInputStability(_RelativeStability):
    """Relative input stability (Agarwal et al. 2022). **Lower is better**.

    RIS(x) = max_k ||(a - a'_k) / a||_p / max(||(x - x'_k) / x||_p, eps_min), with elementwise
    divisions (floored at eps_min, see below), over the perturbations that keep the predicted
    class (``on_prediction_change="drop_draw"``, the default, as in OpenXAI's class-preserving
    variant).

    Parameters
    ----------
    <<NOISE>>
    <<RELATIVE>>

    <<DEVIATIONS>>

    Reference: C. Agarwal, N. Johnson, M. Pawelczyk, S. Krishna, E. Saxena, M. Zitnik,
    H. Lakkaraju, "Rethinking Stability for Attribution-based Explanations", arXiv:2203.06877,
    2022.
    """

    paper = ("Agarwal et al., Rethinking Stability for Attribution-based Explanations, "
             "arXiv 2022")

    def _draw_values(self, batch, chunk, clean):
        s, k = chunk.a_ok.shape
        x0 = _flat(batch.x[chunk.rows]).unsqueeze(1)
        denom = _relative_change(x0, chunk.x.reshape(s, k, -1), self.eps_min, self.p_norm)
        return self._ratio(self._numerator(batch, chunk), denom)


@_documented
class RelativeOutputStability(_RelativeStability):
    """Relative output stability (Agarwal et al. 2022). **Lower is better**.

    ROS(x) = max_k ||(a - a'_k) / a||_p / max(||h(x) - h(x'_k)||_p, eps_min), where h are the
    model's outputs (logits; probabilities with ``softmax=True``), over the class-preserving
    perturbations by default. The model outputs on the perturbed inputs come from the same
    forward pass as the prediction check. The denominator is the paper's (and Quantus')
    absolute output change; OpenXAI's implementation divides by the relative change
    ||(h(x) - h(x'_k)) / h(x)||_p instead.

    Parameters
    ----------
    <<NOISE>>
    <<RELATIVE>>

    <<DEVIATIONS>>

    Reference: C. Agarwal et al., "Rethinking Stability for Attribution-based Explanations",
    arXiv:2203.06877, 2022.
    """

    paper = RelativeInputStability.paper
    needs_outputs = True

    def _draw_values(self, batch, chunk, clean):
        h0 = clean[chunk.rows]
        h = chunk.fwd
        denom = torch.linalg.vector_norm(h - h0.unsqueeze(1), ord=self.p_norm, dim=2)
        return self._ratio(self._numerator(batch, chunk), denom)


class _RepresentationForward(_Forward):
    """Model outputs plus, per row, the relative change of the captured layers' outputs with
    respect to the unperturbed sample's. The unperturbed pass (``clean=True``) stores the
    flattened representations (N, R) in the model's dtype and returns the outputs only.

    In the perturbed passes each layer's output is subtracted from the unperturbed rows when
    the layer returns, into the chunk's gathered copy of those rows (a buffer of the engine's
    own: a later in-place operation, e.g. ``ReLU(inplace=True)``, cannot change it, and no
    copy of the output is kept): the same elementwise operations on the same numbers as
    recording a copy and subtracting afterwards, so the same values."""

    spec = None
    needs_samples = True

    def __init__(self, metric: RelativeRepresentationStability, module: torch.nn.Module,
                 layers: list[str], n: int, *, skip_silent: bool = False) -> None:
        self.metric = metric
        self.module = module
        self.layers = layers
        self.n = n
        #: leave out layers that do not run (layer_names="all": e.g. an unused head)
        self.skip_silent = skip_silent
        self.clean = True
        self.clean_reps: torch.Tensor | None = None
        #: the divisors of the clean representations (N, R), once for all of their draws
        self.clean_scale: torch.Tensor | None = None
        self._used: list[str] | None = None
        #: layer -> (column offset, width) of each of its calls in the representation
        self._layout: dict[str, list[tuple[int, int]]] = {}
        self._store: dict[str, list[Any]] | None = None
        self._sample_of_row: torch.Tensor | None = None
        #: the samples of the chunk's rows, and (perturbed passes) their differences (B, R)
        self._sample: torch.Tensor | None = None
        self._diff: torch.Tensor | None = None

    def begin(self, sample_of_row: torch.Tensor) -> None:
        self._sample_of_row = sample_of_row

    def rows(self, index: torch.Tensor) -> None:
        self._sample = self._sample_of_row.index_select(0, index)  # type: ignore[union-attr]
        self._diff = None
        if self._store is not None:
            # a chunk retried after running out of memory starts its layer calls afresh
            for calls in self._store.values():
                calls.clear()

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        if self.clean:
            # copies taken when each layer returns: a later in-place operation
            # (ReLU(inplace=True) after the layer) would otherwise change the recorded output
            with record_outputs(self.module, self.layers, copy=True) as store:
                self._store = store
                try:
                    yield
                finally:
                    self._store = None
            return
        modules = dict(self.module.named_modules())
        store: dict[str, list[Any]] = {name: [] for name in self.layers}
        with HookHandles() as hooks:
            for name in store:
                hooks.forward(modules[name], self._difference_hook(name, store[name]))
            self._store = store
            try:
                yield
            finally:
                self._store = None

    def _difference_hook(self, name: str, calls: list[Any]) -> Any:
        slots = self._layout.get(name, [])

        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, tuple | list):
                output = output[0]
            flat = output.reshape(output.shape[0], -1)
            j = len(calls)
            clean = self.clean_reps
            assert clean is not None
            if (j >= len(slots) or slots[j][1] != flat.shape[1]
                    or torch.result_type(flat, clean) != clean.dtype):
                calls.append(False)  # not as in the unperturbed pass: reduce() raises
                return
            if self._diff is None:
                # the unperturbed rows, gathered (index_select: the same rows as
                # clean[sample], several times faster on the CPU)
                self._diff = clean.index_select(0, self._sample)  # type: ignore[arg-type]
            offset, width = slots[j]
            cols = self._diff[:, offset:offset + width]
            torch.sub(flat, cols, out=cols)  # reps - clean, as _relative_change's owned form
            calls.append(True)

        return hook

    def _layers_that_ran(self) -> list[tuple[str, list[Any]]]:
        """(name, what its hooks recorded) of the layers that ran in the chunk's forward pass;
        a silent layer is left out where ``skip_silent``, else an error."""
        ran = []
        for name in self.layers:
            captured = self._store[name]  # type: ignore[index]
            if not captured:
                if self.skip_silent:
                    continue
                raise RuntimeError(f"Layer {name!r} produced no output in the forward pass.")
            ran.append((name, captured))
        return ran

    def _reps(self) -> torch.Tensor:
        parts = []
        used = []
        layout: dict[str, list[tuple[int, int]]] = {}
        width = 0
        for name, captured in self._layers_that_ran():
            used.append(name)
            for out in captured:
                flat = out.reshape(out.shape[0], -1)
                layout.setdefault(name, []).append((width, flat.shape[1]))
                width += flat.shape[1]
                parts.append(flat)
            captured.clear()
        if self._used is None:
            if not parts:
                raise RuntimeError(f"None of the layers {self.layers} ran in the forward pass.")
            self._used = used
            self._layout = layout
        elif used != self._used:
            raise RuntimeError("The representation layers that ran differ between forward "
                               f"passes ({self._used} vs {used}).")
        # one layer's recorded copy is the representation as it is (no second copy)
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    def _differences(self) -> torch.Tensor:
        """The chunk's ``reps - clean`` (B, R), written by the hooks."""
        used = []
        ok = True
        for name, captured in self._layers_that_ran():
            used.append(name)
            ok = ok and all(captured) and len(captured) == len(self._layout[name])
            captured.clear()
        if used != self._used or not ok or self._diff is None:
            raise RuntimeError("The representation layers that ran differ between forward "
                               f"passes ({self._used} vs {used}, or their calls or widths).")
        return self._diff

    def reduce(self, outputs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        out = super().reduce(outputs, index)
        if self.clean:
            reps = self._reps()
            if self.clean_reps is None:
                self.clean_reps = torch.empty((self.n, reps.shape[1]), dtype=reps.dtype,
                                              device=reps.device)
            self.clean_reps[self._sample] = reps
            return out
        if self.clean_scale is None:
            self.clean_scale = _divisors(self.clean_reps, self.metric.eps_min)  # type: ignore[arg-type]
        # (reps - clean) / max(|clean|, eps_min) and its norm, as _relative_change computes it
        diff = self._differences().div_(self.clean_scale.index_select(0, self._sample))  # type: ignore[arg-type]
        self._diff = None
        rel = torch.linalg.vector_norm(diff, ord=self.metric.p_norm, dim=-1).to(torch.float64)
        return torch.cat([out, rel.unsqueeze(1)], 1)


@_documented
class RelativeRepresentationStability(_RelativeStability):
    """Relative representation stability (Agarwal et al. 2022). **Lower is better**.

    RRS(x) = max_k ||(a - a'_k) / a||_p / max(||(L(x) - L(x'_k)) / L(x)||_p, eps_min), where
    L(x) concatenates the (flattened) outputs of the chosen layers, over the class-preserving
    perturbations by default.

    Parameters
    ----------
    layer_names:
        The layers whose outputs form the representation, by module name (see
        ``model.named_modules()``), e.g. ``["fc.0"]``. Required: choose them explicitly;
        ``"all"`` takes every leaf module that runs in the forward pass (memory-hungry, and it
        mixes scales). :meth:`resolve_layers` shows the names chosen for a model.
    layer_indices:
        Quantus' alternative: positions in Quantus' list of layers, i.e. every named module
        except the model itself and ``nn.Sequential`` containers, in ``named_modules()``
        order; negative positions count from the end. Give one of ``layer_names`` and
        ``layer_indices``.
    <<NOISE>>
    <<RELATIVE>>

    <<DEVIATIONS>>
    Layers (RRS): no default (Quantus takes all layers); ``"all"`` means the leaf modules that
    run (Quantus: every module but ``nn.Sequential`` containers, so a residual block's output
    and those of the layers inside it all enter); each layer's output is recorded as a copy
    when the layer returns (Quantus keeps the tensor, so a following ``ReLU(inplace=True)``
    rectifies the recorded representation); negative ``layer_indices`` count from the end
    (Quantus' are off by one: -1 selects nothing).

    Needs a ``torch.nn.Module`` (the layers are read with forward hooks, removed afterwards).

    Reference: C. Agarwal et al., "Rethinking Stability for Attribution-based Explanations",
    arXiv:2203.06877, 2022.
    """

    paper = RelativeInputStability.paper
    needs_outputs = True

    def __init__(self, nr_samples: int = 200, perturb_func: Any = "uniform",
                 perturb_mean: float = 0.0, perturb_std: float = 0.1,
                 lower_bound: float = 0.02, upper_bound: float | None = 0.2,
                 eps_min: float = 1e-6, p_norm: float = 2, *,
                 layer_names: list[str] | str | None = None,
                 layer_indices: list[int] | None = None,
                 on_prediction_change: str | None = None,
                 return_nan_when_prediction_changes: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(nr_samples, perturb_func, perturb_mean, perturb_std, lower_bound,
                         upper_bound, eps_min, p_norm, on_prediction_change=on_prediction_change,
                         return_nan_when_prediction_changes=return_nan_when_prediction_changes,
                         **kwargs)
        if layer_names is not None and layer_indices is not None:
            raise ValueError("Give either `layer_names` or `layer_indices`, not both.")
        if isinstance(layer_names, str) and layer_names != "all":
            layer_names = [layer_names]
        if isinstance(layer_indices, int | np.integer) and not isinstance(layer_indices, bool):
            layer_indices = [int(layer_indices)]
        self.layer_names = layer_names
        self.layer_indices = layer_indices

    def resolve_layers(self, model: torch.nn.Module) -> list[str]:
        """The names of the layers whose outputs form the representation of ``model``."""
        named = list(model.named_modules())
        if self.layer_names is None and self.layer_indices is None:
            leaves = _leaf_layers(model)
            raise ValueError(
                "RelativeRepresentationStability needs the representation layers: pass "
                f"layer_names=[...] (e.g. {leaves[-3:]}) or layer_names='all' for every leaf "
                "module."
            )
        if self.layer_names == "all":
            return _leaf_layers(model)
        if self.layer_indices is not None:
            # Quantus' list: every module but the model itself and nn.Sequential containers
            listed = [n for n, m in named if n and not isinstance(m, torch.nn.Sequential)]
            out = []
            for i in self.layer_indices:
                if isinstance(i, bool) or not isinstance(i, int | np.integer):
                    raise TypeError(f"`layer_indices` must be integers; got {i!r}.")
                if not -len(listed) <= i < len(listed):
                    raise ValueError(f"layer index {i} is out of range: the model has "
                                     f"{len(listed)} indexable layers ({listed}).")
                out.append(listed[i])
            return out
        return list(self.layer_names)  # type: ignore[arg-type]

    def _resolve_layers(self, batch: MetricBatch) -> list[str]:
        module = getattr(batch.model, "model", None)
        if not isinstance(module, torch.nn.Module) or not hasattr(batch.model, "capture"):
            raise TypeError("RelativeRepresentationStability needs a torch.nn.Module: it reads "
                            "hidden layers with forward hooks.")
        return self.resolve_layers(module)

    def _forward(self, batch: MetricBatch) -> _Forward:
        return _RepresentationForward(self, batch.model.model,  # type: ignore[union-attr]
                                      self._resolve_layers(batch), batch.n,
                                      skip_silent=self.layer_names == "all")

    def _clean_forward(self, batch: MetricBatch, forward: _Forward) -> torch.Tensor:
        assert isinstance(forward, _RepresentationForward)
        outputs = super()._clean_forward(batch, forward)
        forward.clean = False
        return outputs

    def _draw_values(self, batch, chunk, clean):
        denom = chunk.fwd[:, :, -1]
        return self._ratio(self._numerator(batch, chunk), denom)
