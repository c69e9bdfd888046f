"""evalkit.models._copy.copy_module: the same copy as ``copy.deepcopy`` (classes, attributes,
tensors, hooks and the sharing between them), for the kinds of module that users pass."""

from __future__ import annotations

import copy
import functools
import weakref
from collections import OrderedDict
from typing import Any

import pytest
import torch
from torch import nn

from evalkit.models._copy import copy_module


def _hook(_module: nn.Module, _args: Any, out: Any) -> Any:
    return out


class _Recorder:
    def __init__(self) -> None:
        self.calls = 0

    def hook(self, _module: nn.Module, _args: Any) -> None:
        self.calls += 1


class _Tied(nn.Module):
    """Weight tying, a submodule used twice, user attributes of every kind, a shared buffer
    view and a non-persistent buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.out = nn.Linear(4, 7, bias=False)
        self.out.weight = self.emb.weight
        self.block = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.again = self.block
        self.norm = nn.BatchNorm1d(4)
        base = torch.arange(6.0)
        self.register_buffer("whole", base)
        self.register_buffer("view", base[2:4])
        self.register_buffer("scratch", torch.ones(2), persistent=False)
        self.names = ["a", "b"]
        self.table = {"k": torch.zeros(2), "n": 3}
        self.pair = (1, "x")
        self.mixed = (torch.ones(1), 2)
        self.scale = 0.5
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.again(self.block(self.norm(self.emb(x).mean(1)))))


class _OwnDeepcopy(nn.Linear):
    def __deepcopy__(self, memo: dict) -> nn.Module:
        new = nn.Linear(self.in_features, self.out_features)
        new.load_state_dict(self.state_dict())
        new.marker = "own"  # type: ignore[attr-defined]
        return new


class _OwnState(nn.Linear):
    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["from_getstate"] = True
        return state


class _Views(nn.Module):
    """Buffers and tensor attributes that share storage (views, a transpose, an alias of a
    parameter), of other dtypes, empty or requiring gradients."""

    def __init__(self) -> None:
        super().__init__()
        base = torch.arange(12.0).reshape(3, 4)
        self.register_buffer("base", base)
        self.register_buffer("row", base[1])  # a view: storage offset 4
        self.register_buffer("transposed", base.t())  # not contiguous
        self.weight = nn.Parameter(torch.randn(3))
        self.register_buffer("alias", self.weight.detach())  # the parameter's storage
        self.register_buffer("in_half", torch.ones(3, dtype=torch.float16))
        self.register_buffer("empty", torch.empty(0))
        self.plain = base[2, 1:]  # a plain attribute viewing the buffer's storage
        self.needs_grad = torch.ones(2, requires_grad=True)


def _objects(module: nn.Module) -> list[tuple[str, Any]]:
    """(path, object) of every module, parameter, buffer and attribute value, duplicates
    kept, in a fixed order."""
    out: list[tuple[str, Any]] = []
    for name, m in module.named_modules(remove_duplicate=False):
        out.append((f"module:{name}", m))
        for key, value in m.__dict__.items():
            if key in ("_parameters", "_buffers", "_modules"):
                out.extend((f"{key}:{name}.{k}", v) for k, v in value.items())
            else:
                out.append((f"attr:{name}.{key}", value))
    return out


def _assert_same_copy(original: nn.Module, ours: nn.Module, reference: nn.Module) -> None:
    """``ours`` is what ``reference`` (a deepcopy) is: the same structure and values, the same
    objects shared with each other, and no tensor memory shared with ``original``."""
    mine, theirs = _objects(ours), _objects(reference)
    assert [p for p, _ in mine] == [p for p, _ in theirs]
    original_memory = {t.untyped_storage().data_ptr() for _, t in _objects(original)
                       if isinstance(t, torch.Tensor) and t.numel()}
    original_ids = {id(o) for _, o in _objects(original)
                    if not isinstance(o, int | float | str | bool | type(None) | tuple)}
    for (path, a), (_, b) in zip(mine, theirs, strict=True):
        assert type(a) is type(b), path
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b) and a.requires_grad == b.requires_grad, path
            assert a.dtype == b.dtype and a.stride() == b.stride(), path
            assert (a.grad is None) == (b.grad is None), path
            if a.numel():
                assert a.untyped_storage().data_ptr() not in original_memory, path
        elif isinstance(a, nn.Module):
            assert id(a) not in original_ids and a.training == b.training, path
        elif isinstance(a, dict | OrderedDict):
            assert list(a) == list(b), path
            assert all(type(x) is type(y) for x, y in zip(a.values(), b.values(),
                                                          strict=True)), path
        elif isinstance(a, list):
            assert len(a) == len(b) and id(a) not in original_ids, path
            for x, y in zip(a, b, strict=True):
                if isinstance(x, weakref.ref):
                    x, y = x(), y()
                assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, path
        elif isinstance(a, set):
            assert a == b and id(a) not in original_ids, path
        elif not isinstance(a, tuple | weakref.ref):
            assert a == b, path

    def sharing(objs: list[tuple[str, Any]]) -> list[tuple[int, int]]:
        return [(i, j) for i, (_, x) in enumerate(objs) for j, (_, y) in enumerate(objs)
                if i < j and not isinstance(x, int | float | str | bool | type(None) | tuple)
                and x is y]

    def storages(objs: list[tuple[str, Any]]) -> list[tuple[int, int]]:
        ptr = {i: x.untyped_storage().data_ptr() for i, (_, x) in enumerate(objs)
               if isinstance(x, torch.Tensor) and x.numel()}
        return [(i, j) for i in ptr for j in ptr if i < j and ptr[i] == ptr[j]]

    assert sharing(mine) == sharing(theirs)
    assert storages(mine) == storages(theirs)


def _models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    hooked = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                           nn.Linear(4 * 6 * 6, 2))
    hooked[0].register_forward_hook(_hook)
    hooked[1].register_forward_pre_hook(_Recorder().hook)  # a bound method: deep-copied
    hooked[4].register_forward_hook(functools.partial(_hook))
    hooked[1].train()
    with_grad = nn.Linear(3, 2)
    with_grad(torch.ones(1, 3)).sum().backward()
    param_norm = nn.utils.parametrizations.weight_norm(nn.Linear(3, 3))
    return {
        "mlp": nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)),
        "tied": _Tied(),
        "hooked": hooked,
        "with_grad": with_grad,
        "double": nn.Sequential(nn.Conv1d(2, 3, 3), nn.GroupNorm(1, 3)).double(),
        "lstm": nn.LSTM(3, 4, num_layers=2, batch_first=True),
        "transformer": nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True),
        "own_deepcopy": nn.Sequential(_OwnDeepcopy(2, 2), nn.Linear(2, 1)),
        "own_getstate": nn.Sequential(_OwnState(2, 2)),
        "parametrized": param_norm,
        "views": _Views(),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_copy_module_is_deepcopy(name: str) -> None:
    model = _models()[name]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ours, reference = copy_module(model), copy.deepcopy(model)
    _assert_same_copy(model, ours, reference)
    # the copy is independent: training it leaves the original as it was
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_copy_module_keeps_own_copy_methods() -> None:
    models = _models()
    assert copy_module(models["own_deepcopy"])[0].marker == "own"
    assert copy_module(models["own_getstate"])[0].from_getstate is True


def test_copy_module_hooks_run_on_the_copy() -> None:
    model = nn.Linear(2, 2)
    rec = _Recorder()
    model.register_forward_pre_hook(rec.hook)
    ours = copy_module(model)
    ours(torch.ones(1, 2))
    # as with deepcopy, the bound method's object was copied: the user's recorder is untouched
    assert rec.calls == 0
    assert next(iter(ours._forward_pre_hooks.values())).__self__.calls == 1


def test_copy_module_same_outputs() -> None:
    torch.manual_seed(1)
    model = _models()["transformer"].eval()
    x = torch.randn(2, 5, 8)
    assert torch.equal(copy_module(model)(x), model(x))


def test_copy_module_rejects_non_modules() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        copy_module([nn.Linear(1, 1)])  # type: ignore[arg-type]


class _NewStateDict(nn.Module):
    """A module whose ``__getstate__`` builds a new dict (and a new config in it)."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = {"scale": 2.0}

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["cfg"] = dict(self.cfg)
        return state


def test_copy_module_keeps_a_built_state_alive_until_the_copy_ends() -> None:
    # the state dicts __getstate__ builds are memoised by address: freed early, a later
    # object at the same address took another module's copied state
    root = nn.Sequential(nn.Sequential(nn.Linear(2, 2)), _NewStateDict(),
                         nn.Sequential(nn.Linear(2, 2)), _NewStateDict())
    for _ in range(3):
        ours = copy_module(root)
        assert ours[1].cfg == {"scale": 2.0} and ours[3].cfg == {"scale": 2.0}
        assert ours[1].cfg is not ours[3].cfg


def test_buffer_with_unusual_strides_keeps_them_as_deepcopy_does():
    """A tensor that is its whole storage may carry any stride on a size-1 dimension: the
    copy keeps deepcopy's strides, not the contiguous ones."""
    module = nn.Module()
    module.register_buffer("b", torch.randn(3, 1).t())  # (1, 3), strides (1, 1)
    want = copy.deepcopy(module)
    got = copy_module(module)
    assert got.b.stride() == want.b.stride() == module.b.stride()
    assert torch.equal(got.b, module.b)
    assert got.b.data_ptr() != module.b.data_ptr()
