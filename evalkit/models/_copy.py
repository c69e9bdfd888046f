"""An independent copy of a ``torch.nn.Module``: ``copy.deepcopy``'s result, built faster.

The randomisation metrics copy the user's model on every call (the copy's layers are then
re-initialised). ``copy.deepcopy`` of a module walks every attribute of every submodule through
the generic pickling protocol (``__reduce_ex__``, ``_reconstruct``, a memo entry per object),
which costs more than copying the weights of a small model. :func:`copy_module` follows the
same protocol for the parts of a module that are known to need nothing more: a submodule whose
class copies the default way is rebuilt as ``copy.deepcopy`` rebuilds it (``cls.__new__``, its
``__getstate__`` copied, ``__setstate__``), plain ``dict`` state is copied entry by entry,
values that ``copy.deepcopy`` returns as they are (numbers, strings, functions, tuples of
those) are kept, empty hook dicts are made anew, ``nn.Parameter`` uses its own
``__deepcopy__``, and plain dense tensors (buffers) take the steps ``Tensor.__deepcopy__``
takes for them, without its generic checks. Everything else (other tensors, non-empty hook
dicts, user attributes, modules with their own copy methods) goes through ``copy.deepcopy``
with the same memo, so shared objects (tied weights, a submodule used twice, buffers that view
one storage) stay shared in the copy exactly as they would.
"""

from __future__ import annotations

import copy
import copyreg
import types
import weakref
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torch.overrides import has_torch_function_unary

__all__ = ["copy_module"]

#: the types that ``copy.deepcopy`` returns as they are (its atomic table)
_ATOMIC: frozenset[type] = frozenset({
    type(None), int, float, bool, complex, bytes, str, types.CodeType, type, range,
    types.BuiltinFunctionType, types.FunctionType, weakref.ref, property, type(Ellipsis),
    type(NotImplemented),
})

#: per module class: whether ``copy.deepcopy`` copies it the default way (``object``'s reduce:
#: ``cls.__new__(cls)``, then ``__setstate__`` of the copied ``__getstate__``); weak keys, so
#: classes made on the fly (torch's parametrisations make one per module) can still be freed
_DEFAULT_REDUCE: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()


def _copies_by_default(cls: type) -> bool:
    ok = _DEFAULT_REDUCE.get(cls)
    if ok is None:
        ok = (cls.__reduce_ex__ is object.__reduce_ex__
              and cls.__reduce__ is object.__reduce__
              and getattr(cls, "__deepcopy__", None) is None
              and cls not in copyreg.dispatch_table
              and not hasattr(cls, "__getnewargs_ex__")
              and not hasattr(cls, "__getnewargs__")
              and cls.__new__ is object.__new__
              and not issubclass(cls, list | dict)
              and callable(getattr(cls, "__setstate__", None)))
        _DEFAULT_REDUCE[cls] = ok
    return ok


def copy_module(module: nn.Module) -> nn.Module:
    """A deep copy of ``module``, equal to ``copy.deepcopy(module)`` (same classes, attributes,
    parameters, buffers, hooks and sharing), built with less per-attribute work."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"copy_module needs a torch.nn.Module; got {type(module).__name__}.")
    return _copy_module(module, {})


def _copy_module(module: nn.Module, memo: dict[Any, Any]) -> nn.Module:
    done = memo.get(id(module))
    if done is not None:
        return done
    cls = type(module)
    if not _copies_by_default(cls):
        return copy.deepcopy(module, memo)
    state = module.__getstate__()
    if type(state) is not dict:
        return copy.deepcopy(module, memo)
    # __getstate__ may build a new dict: kept alive to the end of the copy, as copy.deepcopy
    # keeps what it memoises, or a later object at its address would hit its memo entry
    memo.setdefault(id(memo), []).append(state)
    new = cls.__new__(cls)
    memo[id(module)] = new
    new.__setstate__(_copy_dict(state, memo))
    return new


def _copy_dict(d: dict[Any, Any], memo: dict[Any, Any]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    memo[id(d)] = out
    for key, value in d.items():
        out[key if type(key) in _ATOMIC else _copy_value(key, memo)] = _copy_value(value, memo)
    return out


def _copy_value(value: Any, memo: dict[Any, Any]) -> Any:
    cls = type(value)
    if cls in _ATOMIC:
        return value
    done = memo.get(id(value), memo)
    if done is not memo:
        return done
    if cls is nn.Parameter:
        return value.__deepcopy__(memo)
    if isinstance(value, nn.Module):
        return _copy_module(value, memo)
    if cls is dict:
        return _copy_dict(value, memo)
    if cls is tuple and all(type(v) in _ATOMIC for v in value):
        return value  # deepcopy returns such a tuple itself
    if cls is OrderedDict and not value:  # an unused hook table
        out: OrderedDict[Any, Any] = OrderedDict()
        memo[id(value)] = out
        return out
    if cls is set and all(type(v) in _ATOMIC for v in value):
        out_set = set(value)
        memo[id(value)] = out_set
        return out_set
    if cls is torch.Tensor:
        out_tensor = _copy_plain_tensor(value, memo)
        if out_tensor is not None:
            return out_tensor
    return copy.deepcopy(value, memo)


def _copy_plain_tensor(t: torch.Tensor, memo: dict[Any, Any]) -> torch.Tensor | None:
    """``copy.deepcopy`` of a plain dense tensor (a buffer: a leaf without gradient, hooks'
    state or attributes of its own), or None for any other tensor. The steps of
    ``Tensor.__deepcopy__`` for such a tensor, without its generic checks and wrappers (about
    25 us a tensor): its storage cloned once per copy (keyed in ``memo["torch"]`` as
    ``UntypedStorage.__deepcopy__`` keys it, so tensors that share a storage share its copy,
    whichever of the two paths copies them), and a tensor of the same offset, size and stride
    on it."""
    if (t.requires_grad or not t.is_leaf or t.grad is not None or t.layout is not torch.strided
            or t.device.type not in ("cpu", "cuda") or t.is_quantized or t.is_nested
            or t.is_conj() or t.is_neg() or t.__dict__ or has_torch_function_unary(t)
            or not torch._C._has_storage(t)):
        return None
    storage = t.untyped_storage()
    copies = memo.setdefault("torch", {})
    new_storage = copies.get(storage._cdata)
    if new_storage is None:
        if (t.storage_offset() == 0 and t.is_contiguous()
                and t.numel() * t.element_size() == storage.nbytes()):
            # the tensor is its whole storage: its clone is that storage's copy, viewed alike
            # preserve_format keeps the strides of a dense tensor (deepcopy's copy does:
            # size-1 dimensions may carry any stride)
            new = t.clone(memory_format=torch.preserve_format)
            copies[storage._cdata] = new.untyped_storage()
            memo[id(t)] = new
            return new
        new_storage = storage.clone()
        copies[storage._cdata] = new_storage
    new = t.new_empty([])
    new.set_(new_storage, t.storage_offset(), t.size(), t.stride())
    memo[id(t)] = new
    return new
