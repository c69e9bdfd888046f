"""One primitive for torch hooks: a list of handles that are removed together.

Every place that hooks a user's module registers through :class:`HookHandles`, used as a
context manager, so the hooks are removed when the block exits, also on error, and the module's
hook tables are left exactly as they were. :func:`record_outputs` is the common case built on
it: record the outputs of named layers during the forward passes inside a block.

The shape follows zennit's handle collections (``zennit.core.RemovableHandleList``) and
``torch.utils.hooks.RemovableHandle``; the tests are in ``tests/test_hook_handles.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["HOOK_KINDS", "HookHandles", "HookKind", "record_outputs"]

HookKind = Literal["forward", "forward_pre", "full_backward", "full_backward_pre"]
#: hook kind -> the ``nn.Module`` method that registers it
HOOK_KINDS: dict[str, str] = {
    "forward": "register_forward_hook",
    "forward_pre": "register_forward_pre_hook",
    "full_backward": "register_full_backward_hook",
    "full_backward_pre": "register_full_backward_pre_hook",
}


class HookHandles:
    """Removable hook handles, removed together by :meth:`remove` or on leaving a ``with``.

    Usage::

        with HookHandles() as hooks:
            hooks.forward(model.fc, lambda module, inputs, output: seen.append(output))
            model(x)
        # the hook is gone here, also when the block raised

    ``add`` takes any handle with a ``remove()`` method (a module's or a tensor's
    ``RemovableHandle``). A handle is removed at most once: :meth:`remove` forgets each handle
    before removing it, so calling it again does nothing, and a removal that raises does not
    keep the others in place (the first error is raised after all were tried). The object can
    be used again after it was emptied, but not entered while it is already entered.
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []
        self._entered = False

    def __len__(self) -> int:
        return len(self._handles)

    def __repr__(self) -> str:
        return f"HookHandles({len(self._handles)} handles)"

    def add(self, handle: RemovableHandle) -> RemovableHandle:
        """Keep ``handle`` for removal; returns it."""
        if not callable(getattr(handle, "remove", None)):
            raise TypeError(f"Expected a hook handle with a remove() method; got {handle!r}.")
        self._handles.append(handle)
        return handle

    def register(self, module: nn.Module, kind: HookKind, fn: Callable[..., Any],
                 **kwargs: Any) -> RemovableHandle:
        """Register ``fn`` as a ``kind`` hook on ``module`` and keep its handle.

        ``kind`` is ``"forward"``, ``"forward_pre"``, ``"full_backward"`` or
        ``"full_backward_pre"``; ``kwargs`` go to the matching ``nn.Module.register_*_hook``
        (``prepend``, ``with_kwargs``, ``always_call``).
        """
        method = HOOK_KINDS.get(kind)
        if method is None:
            raise ValueError(f"Unknown hook kind {kind!r}; expected one of {list(HOOK_KINDS)}.")
        return self.add(getattr(module, method)(fn, **kwargs))

    def forward(self, module: nn.Module, fn: Callable[..., Any], **kwargs: Any
                ) -> RemovableHandle:
        """``register(module, "forward", fn, **kwargs)``: ``fn(module, args, output)``."""
        return self.register(module, "forward", fn, **kwargs)

    def forward_pre(self, module: nn.Module, fn: Callable[..., Any], **kwargs: Any
                    ) -> RemovableHandle:
        """``register(module, "forward_pre", fn, **kwargs)``: ``fn(module, args)``."""
        return self.register(module, "forward_pre", fn, **kwargs)

    def full_backward(self, module: nn.Module, fn: Callable[..., Any], **kwargs: Any
                      ) -> RemovableHandle:
        """``register(module, "full_backward", fn, **kwargs)``:
        ``fn(module, grad_input, grad_output)``."""
        return self.register(module, "full_backward", fn, **kwargs)

    def remove(self) -> None:
        """Remove every handle once, in registration order, even if one removal raises."""
        # forgotten before any removal runs: a second call (or a re-raise) removes nothing twice
        handles, self._handles = self._handles, []
        error: BaseException | None = None
        for handle in handles:
            try:
                handle.remove()
            except BaseException as exc:  # keep removing; report the first failure
                if error is None:
                    error = exc
        if error is not None:
            raise error

    def __enter__(self) -> HookHandles:
        if self._entered:
            raise RuntimeError("This HookHandles is already in use by a `with` block; create "
                               "a new one for a nested block.")
        self._entered = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._entered = False
        self.remove()


@contextlib.contextmanager
def record_outputs(module: nn.Module, layer_names: Sequence[str], *, copy: bool = True
                   ) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record the outputs of ``module``'s named layers during forward passes in the block.

    Yields a dict ``name -> list of output tensors``, one entry per call of the layer (a name
    given twice is recorded once). A layer that returns a tuple or list is recorded by its
    first element. With ``copy=True`` each output is cloned when the layer returns, so a later
    in-place operation (``ReLU(inplace=True)`` after the layer) cannot change what was
    recorded; ``copy=False`` keeps the layer's own tensor (for gradients with respect to it,
    or when nothing runs in place). The hooks are removed on exit, also on error.
    """
    modules = dict(module.named_modules())
    missing = [name for name in layer_names if not name or name not in modules]
    if missing:
        raise ValueError(f"Unknown layers {missing}; e.g. {list(modules)[1:8]}.")
    store: dict[str, list[torch.Tensor]] = {name: [] for name in layer_names}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, tuple | list):
                output = output[0]
            store[name].append(output.clone() if copy else output)

        return hook

    with HookHandles() as hooks:
        for name in store:
            hooks.forward(modules[name], hook_for(name))
        yield store
