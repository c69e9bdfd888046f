"""The model contract: :class:`ModelWrapper`.

A wrapper turns a user's model (a ``torch.nn.Module`` or any callable) into one interface:
``predict`` in memory-bounded batches on the model's device under ``torch.inference_mode``,
``score`` (the target scalar per sample), and context managers that yield modified *copies*
(randomised layers, noisy parameters) without ever touching the user's model.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._batching import resolve_batch_size
from .._validation import EvalkitWarning, as_tensor, check_labels
from ..modality import Modality, as_modality
from .targets import _BaseTarget, as_target

__all__ = ["ForwardCounter", "ModelCallError", "ModelWrapper", "looks_like_probabilities",
           "same_device"]

#: how far a row's sum may be from 1 for the row to count as probabilities (float32 softmax
#: outputs of 1000 classes sum to 1 within about 1e-6)
PROBABILITY_SUM_ATOL = 1e-4


def looks_like_probabilities(outputs: torch.Tensor) -> bool:
    """Whether outputs (N, C, ...) are already probabilities over the class axis (dim 1):
    C >= 2, every value finite and in [0, 1], every row summing to 1 within
    :data:`PROBABILITY_SUM_ATOL`. Logits pass this test only by accident (all >= 0 and summing
    to exactly 1)."""
    if outputs.ndim < 2 or outputs.shape[1] < 2 or not outputs.is_floating_point():
        return False
    if not bool(torch.isfinite(outputs).all()):
        return False
    if bool((outputs < 0).any()) or bool((outputs > 1).any()):
        return False
    sums = outputs.to(torch.float64).sum(1)
    return bool(((sums - 1).abs() <= PROBABILITY_SUM_ATOL).all())


class ModelCallError(TypeError):
    """The model could not be called the way it was wrapped, and the message says why and what
    to change (e.g. a function of torch tensors wrapped to receive NumPy arrays); not blamed
    on the layout of ``x``."""


@dataclass
class ForwardCounter:
    """Counts the forward calls a wrapper issued and the rows (inputs) they carried."""

    calls: int = 0
    rows: int = 0

    def reset(self) -> None:
        self.calls = 0
        self.rows = 0


class ModelWrapper(ABC):
    """Base class of the model wrappers; build one with :func:`evalkit.models.wrap_model`.

    Parameters
    ----------
    softmax:
        Apply a softmax over the class axis (dim 1) to the model's outputs, so targets read
        probabilities. ``None`` leaves the choice to the metric using the wrapper (each metric
        has a documented default); ``True``/``False`` is a fixed choice. The user's model is
        never rewritten: the softmax is applied to its outputs.

        **Outputs that are already probabilities** (a function returning ``predict_proba``,
        a module ending in ``nn.Softmax``: rows >= 0 summing to 1, see
        :func:`looks_like_probabilities`) never get a second softmax by a metric's *default*:
        the metric checks the raw outputs on its first forward pass (:meth:`check_softmax`),
        switches its softmax off and warns (``wrap_model(model, softmax=False)`` says it
        once and silences the warning). An explicit ``softmax=True`` is kept, with a warning.
        A softmax over a class axis of size 1 (every score 1.0; switched off with a warning),
        or over outputs (N,) that have no class axis (switched off), is never applied by
        default and refused when asked for.
    target:
        Which scalar of the outputs is scored; see :mod:`evalkit.models.targets`.
    batch_size:
        Default number of inputs per forward call (``None``: chosen from a memory budget).
    """

    #: whether gradients of the outputs with respect to the inputs are available
    differentiable: bool = False
    #: why gradients are not available and how to get them (appended to gradient errors)
    not_differentiable_hint: str = ""

    def __init__(
        self,
        *,
        softmax: bool | None = None,
        target: object = None,
        batch_size: int | None = None,
    ) -> None:
        if softmax is not None and not isinstance(softmax, bool):
            raise TypeError(f"`softmax` must be True, False or None; got {softmax!r}.")
        self.softmax = softmax
        self.target: _BaseTarget = as_target(target)
        if softmax and not self.target.softmax_applies:
            raise ValueError(self._no_softmax_message())
        self.batch_size = batch_size
        self.counter = ForwardCounter()
        self._output_shapes: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._probability_outputs: dict[tuple[int, ...], bool] = {}

    # ----------------------------------------------------------------- abstract interface
    @property
    @abstractmethod
    def model(self) -> Any:
        """The wrapped user object."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where inputs are sent and outputs live."""

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype:
        """The floating dtype the model expects."""

    @abstractmethod
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw outputs for a batch ``x`` already on ``self.device``."""

    # ----------------------------------------------------------------- options
    def with_options(self, **options: Any) -> ModelWrapper:
        """A view of this wrapper with other ``softmax``/``target``/``batch_size`` settings.

        The view shares the model and the forward counter; the original is unchanged.
        """
        view = copy.copy(self)
        for key, value in options.items():
            if key == "softmax":
                if value is not None and not isinstance(value, bool):
                    raise TypeError(f"`softmax` must be True, False or None; got {value!r}.")
                view.softmax = value
            elif key == "target":
                view.target = as_target(value)
            elif key == "batch_size":
                view.batch_size = value
            else:
                raise TypeError(f"Unknown wrapper option {key!r}.")
        return view

    # ----------------------------------------------------------------- forward paths
    def prepare(self, x: Any, modality: Modality | str | None = None) -> torch.Tensor:
        """Convert inputs to a tensor on the model's device: floating-point data in the model's
        dtype; integer data as the modality says (``None``: inferred from ``x``;
        :meth:`~evalkit.modality.Modality.from_integers`): token ids are carried as they are,
        integer series and tables become the model's dtype, integer images only with a stated
        ``value_range`` (else a ``ValueError`` names the fix)."""
        t = as_tensor(x, "x")
        if not (t.is_floating_point() or t.is_complex()):
            t = as_modality(modality, t).from_integers(t, "x", dtype=self.dtype)
        elif t.dtype != self.dtype:
            t = t.to(self.dtype)
        return t.to(self.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs for one batch, with autograd as the ambient mode allows (for explainers)."""
        self.counter.calls += 1
        self.counter.rows += int(x.shape[0])
        out = self._forward(x)
        if self.softmax:
            out = torch.softmax(out, dim=1)
        return out

    def predict(self, x: Any, *, batch_size: int | None = None) -> torch.Tensor:
        """Outputs for all of ``x`` in batches, under ``torch.inference_mode``.

        Returns a tensor on the wrapper's device.
        """
        x = self.prepare(x)
        n = x.shape[0]
        if n == 0:
            raise ValueError("`x` is an empty batch (N = 0); give at least one sample.")
        bs = self.resolve_batch_size(x, batch_size)
        outs = []
        with self.evaluation(), torch.inference_mode():
            for start in range(0, n, bs):
                outs.append(self(x[start : start + bs]))
        # outside inference mode, callers get an ordinary tensor they may modify: the
        # concatenation of several chunks is one already, a single chunk is cloned
        return torch.cat(outs, 0) if len(outs) > 1 else outs[0].clone()

    def score(self, x: Any, y: Any = None, *, batch_size: int | None = None) -> torch.Tensor:
        """The target score of every sample, shape (N,); ``y`` is validated for the target."""
        x = self.prepare(x)
        yt = None if y is None else check_labels(as_tensor(y, "y", device=self.device), len(x))
        self.check_labels(x, yt)
        outputs = self.predict(x, batch_size=batch_size)
        return self.target(outputs, yt)

    def select(self, outputs: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Apply the target to outputs already computed."""
        return self.target(outputs, y)

    def resolve_batch_size(self, x: torch.Tensor, batch_size: int | None = None) -> int:
        row_bytes = int(np.prod(x.shape[1:], dtype=np.int64)) * x.element_size()
        chosen = batch_size if batch_size is not None else self.batch_size
        return resolve_batch_size(chosen, row_bytes, device_type=self.device.type)

    def output_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        """Per-sample output shape for inputs like ``x`` (one cached forward on one sample,
        before any softmax: its outputs also tell :meth:`check_softmax` whether they are
        probabilities already)."""
        key = tuple(x.shape[1:])
        if key not in self._output_shapes:
            shared = self._shared_probe(x)
            if shared is not None:
                table, shared_key = shared
                known = table.get(shared_key)
                if known is not None:
                    self._output_shapes[key], self._probability_outputs[key] = known
                    return self._output_shapes[key]
            raw_view = self if not self.softmax else self.with_options(softmax=False)
            try:
                # a copy of the row: a model that writes into its input must not change x
                out = raw_view.predict(x[:1].clone())
            except ModelCallError:
                raise
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                # the first forward of a call: a wrong rank or layout of x fails here, deep in
                # the model; say which argument and shape it was
                raise ValueError(
                    f"The model cannot run on `x` of shape {tuple(x.shape)} (one sample: "
                    f"{tuple(x.shape[1:])}); check its rank and layout (e.g. channels first, "
                    f"(N, C, H, W) for a 2-D CNN). The model raised {type(exc).__name__}: {exc}"
                ) from exc
            self._output_shapes[key] = tuple(out.shape[1:])
            self._probability_outputs[key] = looks_like_probabilities(out)
            if shared is not None:
                table[shared_key] = (self._output_shapes[key], self._probability_outputs[key])
        return self._output_shapes[key]

    def _shared_probe(self, x: torch.Tensor) -> tuple[dict[Any, Any], Any] | None:
        """Where the probe of :meth:`output_shape` may be shared with other wrappers of the
        same model: a table and this probe's key in it, or None (the default: each wrapper
        probes once). A model passed as it is to every metric call is wrapped anew each time,
        and the probe (a forward of one sample, a fixed cost of every call: about 0.1 ms for
        a small MLP, 0.3 ms for a small 1-D CNN) would run again each time."""
        return None

    def _no_softmax_message(self) -> str:
        return (f"{type(self.target).__name__} scores outputs that have no class axis (e.g. "
                "detections, embeddings): a softmax over them is not meaningful. Pass "
                "softmax=False.")

    def check_softmax(self, x: torch.Tensor, *, by_default: bool,
                      who: str = "The metric") -> ModelWrapper:
        """This wrapper, or a view without softmax, after checking that a softmax makes sense
        for the raw outputs on inputs like ``x`` (see ``softmax`` in the class docstring).

        ``by_default``: the softmax is a metric's default, not the user's choice; it is then
        switched off (with a warning) for outputs that are probabilities already or have a
        class axis of size 1. An explicit choice is kept for probabilities (with a warning)
        and refused for a class axis of size 1.
        """
        if not self.softmax:
            return self
        if not self.target.softmax_applies:  # e.g. detections, embeddings
            if not by_default:
                raise ValueError(self._no_softmax_message())
            return self.with_options(softmax=False)
        shape = self.output_shape(x)
        key = tuple(x.shape[1:])
        fix = ("wrap the model with evalkit.models.wrap_model(model, softmax=False) (or pass "
               "softmax=False to the metric)")
        if len(shape) == 0 or shape[0] == 1:
            msg = (f"The model returns one value per sample (per-sample output shape {shape}): "
                   + ("there is no class axis to take a softmax over."
                      if len(shape) == 0 else
                      "a softmax over it is 1.0 for every input, so every score would be "
                      "the same."))
            if not by_default:
                raise ValueError(f"{msg} Pass softmax=False; for a binary classifier's decision "
                                 "value use target=BinaryTarget().")
            if len(shape) == 0:  # nothing a softmax could apply to: no number changes
                return self.with_options(softmax=False)
            warnings.warn(f"{msg} {who}'s default softmax is not applied; {fix} to say so.",
                          EvalkitWarning, stacklevel=4)
            return self.with_options(softmax=False)
        if self._probability_outputs.get(key, False):
            msg = ("The model's outputs are already probabilities (every value in [0, 1], each "
                   "row summing to 1, e.g. predict_proba or a final nn.Softmax)")
            if by_default:
                warnings.warn(f"{msg}: {who}'s default softmax is not applied a second time; "
                              f"{fix} to say so.", EvalkitWarning, stacklevel=4)
                return self.with_options(softmax=False)
            warnings.warn(f"{msg}, and softmax=True applies a second softmax to them, as asked "
                          f"(it flattens the probabilities towards uniform). If that is not "
                          f"intended, {fix}.", EvalkitWarning, stacklevel=4)
        return self

    def check_labels(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Validate ``y`` for the wrapper's target (e.g. class indices within range)."""
        self.target.check(y, self.output_shape(x))

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[None]:
        """Context in which the model behaves deterministically (eval mode for torch)."""
        yield

    # ----------------------------------------------------------------- copies
    def randomise_layers(
        self, order: str = "top_down", *, seed: int = 42, layer_names: list[str] | None = None
    ) -> Iterator[tuple[str, ModelWrapper]]:
        raise NotImplementedError(
            f"{type(self).__name__} cannot randomise layers: it has no access to the model's "
            "parameters. Wrap a torch.nn.Module to use randomisation metrics."
        )

    def perturbed(
        self, noise_type: str = "multiplicative", mean: float | None = None, std: float = 0.01, *,
        seed: int = 0,
    ) -> contextlib.AbstractContextManager[ModelWrapper]:
        raise NotImplementedError(
            f"{type(self).__name__} cannot perturb parameters: it has no access to them. "
            "Wrap a torch.nn.Module to use model perturbation tests."
        )

    def randomised(
        self, layer_names: list[str], *, seed: int = 42
    ) -> contextlib.AbstractContextManager[ModelWrapper]:
        raise NotImplementedError(
            f"{type(self).__name__} cannot randomise layers: it has no access to the model's "
            "parameters. Wrap a torch.nn.Module to use randomisation metrics."
        )

    def capture(
        self, layer_names: list[str]
    ) -> contextlib.AbstractContextManager[dict[str, list[torch.Tensor]]]:
        raise NotImplementedError(
            f"{type(self).__name__} exposes no hidden layers; wrap a torch.nn.Module."
        )

    def hidden_representations(
        self, x: Any, layer_names: list[str], *, batch_size: int | None = None
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError(
            f"{type(self).__name__} exposes no hidden layers; wrap a torch.nn.Module."
        )

    def __repr__(self) -> str:
        opts = [f"softmax={self.softmax}", f"target={self.target!r}", f"device={self.device}"]
        return f"{type(self).__name__}({type(self.model).__name__}, {', '.join(opts)})"


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Device equality that treats ``cpu``/``cpu:0`` and ``cuda``/``cuda:<current>`` alike."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.type == "cuda":
        ia = a.index if a.index is not None else torch.cuda.current_device()
        ib = b.index if b.index is not None else torch.cuda.current_device()
        return ia == ib
    return a.type == "cpu" or a.index == b.index
