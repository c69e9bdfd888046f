"""Layer resolution, context-managed activation capture, and a guard that undoes any change a
third-party explainer leaves on the user's modules.

Nothing here mutates the user's model beyond the lifetime of a ``with`` block: hooks are removed
on exit (also on error), and :func:`module_guard` restores the modules' attributes and hook
tables exactly as they were.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._hook_handles import HookHandles
from ..models import ModelWrapper

__all__ = [
    "capture",
    "default_cam_layer",
    "interpolate_to",
    "module_guard",
    "require_module",
    "resolve_embedding_layer",
    "resolve_layer",
    "resolve_layers",
]

LayerSpec = str | nn.Module
_PATH = re.compile(r"^(?:model\.)?[A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\.\d+|\[-?\d+\])*$")
_TOKEN = re.compile(r"\.?([A-Za-z_]\w*)|\.(\d+)|\[(-?\d+)\]")


def require_module(model: ModelWrapper, method: str) -> nn.Module:
    """The wrapped ``torch.nn.Module``, or a clear TypeError naming ``method``."""
    module = getattr(model, "model", None)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"{method} needs a torch.nn.Module (it hooks the model's layers), but the model is a "
            f"{type(module).__name__} behind {type(model).__name__}; wrap a torch module, or use "
            "a black-box method such as Occlusion, FeatureAblation, Lime or KernelShap."
        )
    return module


def require_gradients(model: ModelWrapper, method: str) -> None:
    if not model.differentiable:
        raise TypeError(
            f"{method} needs gradients, but {type(model).__name__} is not differentiable; use a "
            "torch model, or a black-box method such as Occlusion, FeatureAblation, Lime or "
            "KernelShap." + (f" {model.not_differentiable_hint}" if model.not_differentiable_hint
                             else "")
        )


def _walk_path(root: nn.Module, spec: str) -> nn.Module:
    """Follow an attribute path such as ``"model.layer4[-1]"`` without ``eval``."""
    path = spec[len("model."):] if spec.startswith("model.") else spec
    obj: Any = root
    pos = 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if m is None:  # pragma: no cover - excluded by _PATH
            raise KeyError(spec)
        name, digits, index = m.groups()
        if name is not None:
            obj = getattr(obj, name)
        else:
            obj = obj[int(digits if digits is not None else index)]
        pos = m.end()
    if not isinstance(obj, nn.Module):
        raise KeyError(spec)
    return obj


def resolve_layer(root: nn.Module, layer: LayerSpec) -> tuple[str, nn.Module]:
    """``(name, module)`` for a layer given by name or as a module object.

    Names are those of ``root.named_modules()`` (``"features.conv3"``, ``"layer4.1"``). An
    attribute path in Python syntax (``"layer4[-1]"``, ``"model.features[-1]"``, as Quantus'
    ``gc_layer`` strings) is followed attribute by attribute and index by index, never
    ``eval``'d. A module object must be part of ``root``.
    """
    named = dict(root.named_modules())
    if isinstance(layer, nn.Module):
        for name, module in named.items():
            if module is layer:
                return name, module
        raise ValueError(
            f"The layer {type(layer).__name__} given as a module object is not part of the model."
        )
    if not isinstance(layer, str):
        raise TypeError(
            f"A layer must be given by name (str) or as a torch.nn.Module; got "
            f"{type(layer).__name__}."
        )
    if layer in named and layer:
        return layer, named[layer]
    if _PATH.match(layer):
        with contextlib.suppress(AttributeError, IndexError, KeyError, TypeError):
            module = _walk_path(root, layer)
            for name, m in named.items():
                if m is module:
                    return name, m
    close = difflib.get_close_matches(layer, [n for n in named if n], n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    some = ", ".join(repr(n) for n in list(named)[1:9])
    raise ValueError(f"Unknown layer {layer!r}.{hint} Layers are named as in "
                     f"model.named_modules(), e.g. {some}.")


def resolve_embedding_layer(model: Any, spec: Any = None, method: str = "This method") -> nn.Module:
    """The embedding layer of ``model`` (a module or a wrapper): ``spec`` (a module of the
    model, or its name / attribute path), else the model's only ``nn.Embedding``; a clear
    error naming ``method`` and ``embedding_layer=`` otherwise."""
    root = model.model if isinstance(model, ModelWrapper) else model
    if not isinstance(root, nn.Module):
        raise TypeError(
            f"{method} on token ids attributes at the embedding layer, which needs a "
            f"torch.nn.Module; the model is a {type(root).__name__}. Use a perturbation method "
            "(Occlusion, FeatureAblation, Lime, KernelShap), which replaces tokens by the mask "
            "token id."
        )
    if spec is not None:
        return resolve_layer(root, spec)[1]
    found = [name for name, m in root.named_modules() if isinstance(m, nn.Embedding)]
    if len(found) == 1:
        return resolve_layer(root, found[0])[1]
    what = "no nn.Embedding" if not found else f"{len(found)} nn.Embedding layers {found}"
    raise ValueError(
        f"{method} on token ids attributes at the embedding layer, and the model has {what}: "
        "name it with embedding_layer= (a module of the model or its name, e.g. "
        "embedding_layer='embedding' or 'bert.embeddings'), or use a perturbation method "
        "(Occlusion, FeatureAblation, Lime, KernelShap)."
    )


def resolve_layers(root: nn.Module, layers: Any) -> list[tuple[str, nn.Module]]:
    """One or several layers (a name, a module, or a list/tuple of them)."""
    if isinstance(layers, str | nn.Module):
        return [resolve_layer(root, layers)]
    if isinstance(layers, Sequence) and len(layers) > 0:
        return [resolve_layer(root, item) for item in layers]
    raise TypeError(
        "`layer` must be a layer name, a torch.nn.Module, or a non-empty list of them; got "
        f"{layers!r}."
    )


def default_cam_layer(root: nn.Module) -> str:
    """The layer CAM methods use when none is given: ``root.cam_layer`` if the model declares
    one (as :class:`evalkit.zoo.ShapesCNN` does), otherwise the last convolution module."""
    declared = getattr(root, "cam_layer", None)
    if isinstance(declared, str):
        return declared
    convs = [name for name, m in root.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if not convs:
        raise ValueError(
            "The model has no convolution layer to use by default; pass `layer=` (a name from "
            "model.named_modules() or a module), e.g. the last block of a transformer with a "
            "`reshape_transform`."
        )
    return convs[-1]


# ============================================================================ capture
@dataclass
class Captured:
    """Outputs recorded by :func:`capture`: one list of tensors per hooked module."""

    names: list[str]
    outputs: list[list[torch.Tensor]] = field(default_factory=list)

    def single(self) -> list[torch.Tensor]:
        """The one output of every layer in the last forward pass (errors otherwise)."""
        result = []
        for name, outs in zip(self.names, self.outputs, strict=True):
            if not outs:
                raise ValueError(
                    f"The layer {name!r} was not called in the forward pass, so it has no "
                    "activation; choose a layer on the path from the input to the output."
                )
            if len(outs) > 1:
                raise ValueError(
                    f"The layer {name!r} was called {len(outs)} times in one forward pass (a "
                    "module reused in the network); choose a layer that runs once per forward."
                )
            result.append(outs[0])
        return result

    def clear(self) -> None:
        for outs in self.outputs:
            outs.clear()


def _first_tensor(output: Any, name: str) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    if isinstance(output, torch.Tensor):
        return output, lambda t: t
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        rest = list(output[1:])
        kind = type(output)
        return output[0], lambda t: kind([t, *rest]) if kind is list else tuple([t, *rest])
    raise TypeError(
        f"The layer {name!r} returns {type(output).__name__}; CAM methods need a layer whose "
        "output is a tensor (or a tuple whose first element is one)."
    )


@contextlib.contextmanager
def capture(
    layers: Sequence[tuple[str, nn.Module]],
    *,
    replace: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
    keep: bool = True,
) -> Iterator[Captured]:
    """Record the output of each layer during forward passes inside the context.

    The recorded tensor is the layer's own output, and the network continues with a *clone* of
    it. An in-place operation after the layer (``ReLU(inplace=True)``, ``out += identity``)
    therefore changes the clone, never the recorded activation, and gradients with respect to
    the recorded tensor flow through the clone. (pytorch-grad-cam records an alias, so on the CPU
    its activations are silently post-ReLU.)

    ``replace(i, output)`` may return a tensor to use downstream instead of the output of layer
    ``i`` (AblationCAM); with ``keep=False`` nothing is recorded (many forward passes whose
    activations are not needed). Hooks are removed on exit, also on error.
    """
    record = Captured([name for name, _ in layers], [[] for _ in layers])

    def hook_for(i: int, name: str) -> Callable[..., Any]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            tensor, rebuild = _first_tensor(output, name)
            if keep:
                record.outputs[i].append(tensor)
            new = replace(i, tensor) if replace is not None else None
            return rebuild(tensor.clone() if new is None else new)

        return hook

    with HookHandles() as hooks:
        for i, (name, module) in enumerate(layers):
            hooks.forward(module, hook_for(i, name))
        yield record


# ============================================================================ guard
@contextlib.contextmanager
def module_guard(root: nn.Module) -> Iterator[None]:
    """Restore every module's attributes and hook tables on exit.

    Third-party explainers (captum's DeepLift, LRP, guided backprop) attach hooks and attributes
    (``rule``, ``input``, ``output``...) to the user's modules and are meant to remove them; LRP
    even deletes a ``rule`` the user had set. This guard snapshots ``vars(module)`` and the keys
    of every hook dictionary, and on exit removes added attributes and hooks and puts back
    removed or rebound ones. Parameter *values* are not copied (see the tests, which check them
    bitwise).
    """
    snapshot = []
    for m in root.modules():
        attrs = dict(vars(m))
        hooks = {k: set(v) for k, v in attrs.items() if "hook" in k and isinstance(v, dict)}
        snapshot.append((m, attrs, hooks))
    try:
        yield
    finally:
        for m, attrs, hooks in snapshot:
            current = vars(m)
            for key in [k for k in current if k not in attrs]:
                del current[key]
            for key, value in attrs.items():
                if current.get(key, _MISSING) is not value:
                    current[key] = value
            for key, keys in hooks.items():
                table = current[key]
                for handle_id in [h for h in table if h not in keys]:
                    del table[handle_id]


_MISSING = object()


# ============================================================================ resizing
def interpolation_mode(spatial_dims: int, mode: str | None = None) -> str:
    if mode is not None:
        return mode
    return {1: "linear", 2: "bilinear", 3: "trilinear"}.get(spatial_dims, "nearest")


def interpolate_to(
    maps: torch.Tensor, size: Sequence[int], mode: str | None = None
) -> torch.Tensor:
    """Resize (N, C, *s) maps to the spatial ``size`` with ``F.interpolate``.

    ``mode=None`` picks linear / bilinear / trilinear by the number of spatial axes
    (``align_corners=False``, as ``cv2.resize``).
    """
    size = tuple(int(s) for s in size)
    if tuple(maps.shape[2:]) == size:
        return maps
    if maps.ndim - 2 != len(size):
        raise ValueError(
            f"Cannot resize maps of shape {tuple(maps.shape)} to the input's spatial size {size}: "
            "the layer's output has a different number of spatial axes (pass a "
            "`reshape_transform` for token layouts, or raw=True)."
        )
    mode = interpolation_mode(len(size), mode)
    smooth = mode in ("linear", "bilinear", "bicubic", "trilinear")
    kwargs = {"align_corners": False} if smooth else {}
    return F.interpolate(maps, size=size, mode=mode, **kwargs)
