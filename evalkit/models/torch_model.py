"""Wrapper for ``torch.nn.Module`` models, with context-managed copies and hooks.

Nothing here mutates the user's module: evaluation mode is entered and the exact per-module
training flags restored afterwards; randomised and noisy models are deep copies; hooks are
removed when their context exits, even on error.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from .._hook_handles import record_outputs
from .._rng import derive_seed
from .._validation import check_option
from ._copy import copy_module
from .base import ModelWrapper, same_device

__all__ = ["TorchModel", "randomisable_layers"]

LAYER_ORDERS = ("top_down", "bottom_up", "independent")
NOISE_TYPES = ("multiplicative", "additive")
AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


#: the probes of :meth:`ModelWrapper.output_shape` (output shape, whether the outputs are
#: probabilities) shared by every wrapper of a module, keyed by what they depend on: the
#: module's structure, the per-sample input shape and dtype and ``autocast``
_PROBES: weakref.WeakKeyDictionary[nn.Module, dict[Any, Any]] = weakref.WeakKeyDictionary()


def module_structure(module: nn.Module) -> tuple[Any, ...]:
    """What a module's output shape depends on besides its inputs, cheaply (about 1 us per
    submodule): each submodule's identity, type and hook counts, and each parameter's identity,
    shape and dtype, depth first. Replacing a layer, reshaping or re-typing a parameter, or
    adding a hook changes it; training the weights in place does not, nor does a plain
    attribute that the forward reads (a detection limit set by hand): as for a wrapper passed
    to many calls, which probes once, such a change needs a new module or wrapper."""
    out: list[Any] = []
    stack = [module]
    while stack:
        m = stack.pop()
        out.append((id(m), type(m), len(m._forward_hooks), len(m._forward_pre_hooks)))
        for p in m._parameters.values():
            if p is not None:
                out.append((id(p), p.shape, p.dtype))
        stack.extend(c for c in m._modules.values() if c is not None)
    return tuple(out)


def _any_training(module: nn.Module) -> bool:
    """Whether any submodule is in training mode: a plain walk of the children (the check runs
    on every forward chunk, and ``modules()`` costs several times more per submodule)."""
    stack = [module]
    while stack:
        m = stack.pop()
        if m.training:
            return True
        stack.extend(c for c in m._modules.values() if c is not None)
    return False


def randomisable_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters (not through children), in definition order.

    These are the "layers" of layer-randomisation tests (conv, linear, normalisation...).
    """
    return [
        (name, m)
        for name, m in module.named_modules()
        if name and any(True for _ in m.parameters(recurse=False))
    ]


class TorchModel(ModelWrapper):
    """A ``torch.nn.Module`` behind the :class:`ModelWrapper` interface.

    Parameters
    ----------
    model:
        The module. It is never moved, copied (except inside the randomisation/noise contexts),
        switched between train and eval mode for good, or given hooks that outlive a call.
    softmax, target, batch_size:
        See :class:`ModelWrapper`.
    device:
        Must match the device of the model's parameters if given (evalkit never moves your
        model); ``None`` uses that device.
    eval_mode:
        Run forward passes in evaluation mode (the default), restoring every module's training
        flag afterwards. With ``False`` the model runs in whatever mode it is in: dropout and
        batch-norm statistics then make scores depend on the batch, and batch-norm layers in
        training mode update their running statistics (the user's model changes).
    output_fn:
        Optional function that extracts the output tensor from what the module returns (e.g.
        ``lambda out: out.logits`` for Hugging Face models).
    autocast:
        Run the model's forward passes under ``torch.autocast`` with this dtype
        (``torch.bfloat16`` or ``torch.float16``; ``True`` means ``torch.bfloat16``) on the
        model's device type: mixed precision for speed on GPUs. The outputs are cast back to
        float32 (float64 for a float64 model) before any target, softmax or metric maths, and
        gradients reach the inputs in their own dtype. ``None`` (default): full precision.
        Scores then differ from a full-precision run by the autocast's rounding; the setting
        is part of the model's fingerprint (store keys) and forward-cache keys.
    """

    differentiable = True

    def __init__(
        self,
        model: nn.Module,
        *,
        softmax: bool | None = None,
        target: object = None,
        device: torch.device | str | None = None,
        batch_size: int | None = None,
        eval_mode: bool = True,
        output_fn: Callable[[Any], torch.Tensor] | None = None,
        autocast: torch.dtype | bool | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"TorchModel needs a torch.nn.Module; got {type(model).__name__}.")
        if autocast is True:
            autocast = torch.bfloat16
        elif autocast is False:
            autocast = None
        if autocast is not None and autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"`autocast` must be torch.bfloat16, torch.float16, True or None; "
                             f"got {autocast!r}.")
        self.autocast: torch.dtype | None = autocast
        super().__init__(softmax=softmax, target=target, batch_size=batch_size)
        self._model = model
        self.eval_mode = bool(eval_mode)
        self.output_fn = output_fn
        param = next(iter(model.parameters()), None)
        if param is None:
            param = next(iter(model.buffers()), None)
        model_device = param.device if param is not None else torch.device("cpu")
        if device is not None:
            wanted = torch.device(device)
            if not same_device(wanted, model_device):
                raise ValueError(
                    f"The model's parameters are on {model_device} but device={wanted} was "
                    f"requested. evalkit never moves your model: call model.to({str(wanted)!r}) "
                    "yourself, or leave `device` unset."
                )
        self._device = model_device
        # the first floating parameter's dtype (not a list of all: wrapping is per call)
        self._dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()),
                           torch.get_default_dtype())

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with (torch.autocast(device_type=self._device.type, dtype=self.autocast)
              if self.autocast is not None else contextlib.nullcontext()):
            out = self._model(x)
            if self.output_fn is not None:
                out = self.output_fn(out)
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"The model returned {type(out).__name__}, not a tensor; pass "
                "`output_fn=` to wrap_model to extract the output tensor."
            )
        if self.autocast is not None and out.is_floating_point():
            # metric maths (targets, softmax, differences of scores) in full precision
            out = out.to(torch.promote_types(self._dtype, torch.float32))
        return out

    def _shared_probe(self, x: torch.Tensor) -> tuple[dict[Any, Any], Any] | None:
        # in evaluation mode only: with eval_mode=False the probe runs in the module's own
        # mode and may update batch-norm statistics, which sharing would change; and not with
        # an output_fn (a closure as a key could keep the module alive, and one made anew per
        # call would never match)
        if not self.eval_mode or self.output_fn is not None:
            return None
        try:
            table = _PROBES.setdefault(self._model, {})
        except TypeError:  # a module that cannot be weakly referenced
            return None
        return table, (module_structure(self._model), tuple(x.shape[1:]), x.dtype,
                       self.autocast)

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[None]:
        if not self.eval_mode or not _any_training(self._model):
            yield
            return
        flags = [(m, m.training) for m in self._model.modules()]
        self._model.eval()
        try:
            yield
        finally:
            for m, training in flags:
                m.training = training

    # ----------------------------------------------------------------- copies
    def _copy(self, module: nn.Module) -> TorchModel:
        clone = copy.copy(self)
        clone._model = module
        clone._output_shapes = {}
        clone._probability_outputs = {}
        return clone

    def randomise_layers(
        self,
        order: str = "top_down",
        *,
        seed: int = 42,
        layer_names: list[str] | None = None,
        keep_buffers: bool = False,
    ) -> Iterator[tuple[str, TorchModel]]:
        """Yield ``(layer_name, wrapper)`` for progressively randomised copies of the model.

        ``order``: ``"top_down"`` randomises layers cumulatively from the output to the input
        (cascading, Adebayo et al. 2018); ``"bottom_up"`` cumulatively from the input;
        ``"independent"`` one layer at a time with all others at their trained values.
        Each layer is re-initialised with its own ``reset_parameters`` under a seed derived
        from ``seed`` and the layer's name, so a layer gets the same weights on every run and in
        every order. The global RNG state is saved and restored around each initialisation.
        The yielded wrapper is only valid until the next step; the user's model is untouched.

        ``keep_buffers=True`` re-initialises a layer's parameters only and keeps its buffers:
        ``reset_parameters`` of a batch-norm layer also resets the running statistics, which
        this restores (the trained statistics stay, the affine parameters are re-initialised).
        """
        check_option("order", order, LAYER_ORDERS)
        layers = randomisable_layers(self._model)
        if layer_names is not None:
            known = {name for name, _ in layers}
            missing = [n for n in layer_names if n not in known]
            if missing:
                raise ValueError(
                    f"Unknown or parameter-free layers {missing}; randomisable layers are "
                    f"{sorted(known)}."
                )
            layers = [(n, m) for n, m in layers if n in set(layer_names)]
        names = [name for name, _ in layers]
        if order == "top_down":
            names = names[::-1]
        work = copy_module(self._model)
        modules = dict(work.named_modules())
        pristine = copy.deepcopy(work.state_dict()) if order == "independent" else None
        try:
            for name in names:
                if pristine is not None:
                    work.load_state_dict(pristine)
                _reinitialise(modules[name], derive_seed(seed, "layer", name),
                              keep_buffers=keep_buffers)
                yield name, self._copy(work)
        finally:
            del work, modules, pristine

    @contextlib.contextmanager
    def randomised(
        self, layer_names: list[str], *, seed: int = 42, keep_buffers: bool = False
    ) -> Iterator[TorchModel]:
        """A copy with the given layers re-initialised (see :meth:`randomise_layers`)."""
        work = copy_module(self._model)
        modules = dict(work.named_modules())
        for name in layer_names:
            if name not in modules:
                raise ValueError(f"Unknown layer {name!r}.")
        layers = [modules[name] for name in layer_names]
        # one fork of the global RNG state for the whole copy (not one per layer): each layer
        # seeds the generators it draws from itself, so its values are the same
        with _forked_rng(layers):
            for name, layer in zip(layer_names, layers, strict=True):
                _draw_initialisation(layer, derive_seed(seed, "layer", name),
                                     keep_buffers=keep_buffers)
        yield self._copy(work)

    @contextlib.contextmanager
    def perturbed(
        self,
        noise_type: str = "multiplicative",
        mean: float | None = None,
        std: float = 0.01,
        *,
        seed: int = 0,
    ) -> Iterator[TorchModel]:
        """A copy whose parameters carry Gaussian noise ``eps ~ N(mean, std**2)``.

        ``mean`` defaults to 1 for multiplicative noise and 0 for additive noise (both leave the
        parameters unchanged on average).
        ``"multiplicative"``: ``theta * eps``; ``"additive"``: ``theta + eps`` (every parameter
        tensor; buffers such as batch-norm statistics are left alone, as in MetaQuantus). Each
        parameter's noise is drawn from its own generator seeded from ``seed`` and its name.
        """
        check_option("noise_type", noise_type, NOISE_TYPES)
        if mean is None:
            mean = 1.0 if noise_type == "multiplicative" else 0.0
        if std < 0:
            raise ValueError(f"`std` must be >= 0; got {std}.")
        work = copy_module(self._model)
        with torch.no_grad():
            for name, p in work.named_parameters():
                gen = torch.Generator(device=p.device)
                gen.manual_seed(derive_seed(seed, "param", name) & ((1 << 63) - 1))
                eps = torch.empty_like(p).normal_(mean, std, generator=gen)
                if noise_type == "multiplicative":
                    p.mul_(eps)
                else:
                    p.add_(eps)
        yield self._copy(work)

    # ----------------------------------------------------------------- hidden layers
    @contextlib.contextmanager
    def capture(self, layer_names: list[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
        """Record the outputs of named layers during forward passes inside the context.

        Yields a dict ``name -> list of output tensors`` (one per forward call; a name given
        twice is recorded once). Each output is copied when the layer returns, so a later
        in-place operation (``ReLU(inplace=True)``) cannot change what was recorded. The hooks
        are removed on exit, also on error (:func:`evalkit._hook_handles.record_outputs`).
        """
        with record_outputs(self._model, layer_names, copy=True) as store:
            yield store

    def hidden_representations(
        self, x: Any, layer_names: list[str], *, batch_size: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Outputs of the named layers for all of ``x``, each of shape (N, ...)."""
        with self.capture(layer_names) as store:
            self.predict(x, batch_size=batch_size)
        return {name: torch.cat(parts, 0) for name, parts in store.items()}


def _reinitialise(module: nn.Module, seed: int, *, keep_buffers: bool = False) -> None:
    """Re-draw a layer's parameters from its default initialisation under ``seed``.

    ``reset_parameters`` draws from the global RNG, so that state is forked (saved and restored)
    around it: the caller's random streams are unaffected. Layers without ``reset_parameters``
    get N(0, std) with the std of the trained values. ``keep_buffers`` restores the layer's own
    buffers afterwards (e.g. batch-norm running statistics, which ``reset_parameters`` resets).
    """
    with _forked_rng([module]):
        _draw_initialisation(module, seed, keep_buffers=keep_buffers)


def _forked_rng(modules: list[nn.Module]) -> contextlib.AbstractContextManager[Any]:
    """The global RNG state saved and restored around re-initialising ``modules``: the CPU's
    and that of each CUDA device their own parameters are on."""
    cuda = sorted({p.device.index or 0 for m in modules for p in m.parameters(recurse=False)
                   if p.device.type == "cuda"})
    return torch.random.fork_rng(devices=cuda)


def _draw_initialisation(module: nn.Module, seed: int, *, keep_buffers: bool = False) -> None:
    """The draws of :func:`_reinitialise`, in the global RNG state as it is (the caller forks
    it)."""
    saved = (
        {name: b.detach().clone() for name, b in module.named_buffers(recurse=False)}
        if keep_buffers else {}
    )
    seed &= (1 << 63) - 1
    params = list(module.parameters(recurse=False))
    cuda = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    with torch.no_grad():
        if all(p.device.type in ("cpu", "cuda") for p in params):
            # the generators the layer draws from, and only those: torch.manual_seed also
            # seeds every other device type (each records a stack trace, about 0.5 ms a layer
            # on a CPU-only build) and CUDA devices the fork does not restore
            torch.default_generator.manual_seed(seed)
            for idx in cuda:
                torch.cuda.default_generators[idx].manual_seed(seed)
        else:
            torch.manual_seed(seed)
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            for p in params:
                std = float(p.std()) if p.numel() > 1 else 1.0
                p.normal_(0.0, std if std > 0 else 1.0)
        for name, value in saved.items():
            getattr(module, name).copy_(value)
