"""The hook primitive (``evalkit._hook_handles``) and every place that hooks a user's module.

Each user must leave every module's hook tables exactly as it found them, after a normal exit
and after an error inside the hooked block.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from benchmarks.harness import count_forwards
from evalkit._hook_handles import HOOK_KINDS, HookHandles, record_outputs
from evalkit.explain._hooks import capture as explain_capture
from evalkit.explain.captum_methods import _check_single_use
from evalkit.metrics.axiomatic import InputInvariance
from evalkit.models import wrap_model


def make_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 3))


def hook_tables(root: nn.Module) -> list[dict[str, list[int]]]:
    """Every hook dictionary of every module (``_forward_hooks``, ``_forward_pre_hooks``,
    ``_backward_hooks``, ``_forward_hooks_with_kwargs``...) as ordered lists of handle ids."""
    return [
        {key: list(value) for key, value in vars(m).items()
         if "hook" in key and isinstance(value, dict)}
        for m in root.modules()
    ]


def with_user_hooks(net: nn.Module) -> list[int]:
    """Install hooks of the user's own (kept across the test), so the tables are not empty."""
    calls: list[int] = []
    net[0].register_forward_hook(lambda *_: calls.append(1))
    net[2].register_forward_pre_hook(lambda *_: calls.append(2))
    net[2].register_full_backward_hook(lambda *_: calls.append(3))
    return calls


class CountingHandle:
    def __init__(self, fail: bool = False) -> None:
        self.removed = 0
        self.fail = fail

    def remove(self) -> None:
        self.removed += 1
        if self.fail:
            raise RuntimeError("removal failed")


# ============================================================================ HookHandles
class TestHookHandles:
    def test_hooks_fire_inside_and_are_removed_on_normal_exit(self):
        net = make_net()
        with_user_hooks(net)
        before = hook_tables(net)
        seen: list[str] = []
        with HookHandles() as hooks:
            hooks.forward_pre(net[0], lambda m, args: seen.append("pre"))
            hooks.forward(net[0], lambda m, args, out: seen.append("forward"))
            hooks.full_backward(net[2], lambda m, gi, go: seen.append("backward"))
            assert len(hooks) == 3
            assert hook_tables(net) != before
            net(torch.randn(2, 4)).sum().backward()
        assert seen == ["pre", "forward", "backward"]
        assert len(hooks) == 0
        assert hook_tables(net) == before
        net(torch.randn(2, 4)).sum().backward()
        assert seen == ["pre", "forward", "backward"]  # gone: nothing more recorded

    def test_hooks_are_removed_on_exception(self):
        net = make_net()
        with_user_hooks(net)
        before = hook_tables(net)
        with pytest.raises(KeyError, match="inside"), HookHandles() as hooks:
            hooks.forward(net[0], lambda *_: None)
            hooks.register(net[1], "full_backward_pre", lambda *_: None)
            raise KeyError("inside")
        assert hook_tables(net) == before

    def test_a_failed_registration_removes_the_earlier_ones(self):
        net = make_net()
        before = hook_tables(net)
        with pytest.raises(TypeError), HookHandles() as hooks:
            hooks.forward(net[0], lambda *_: None)
            hooks.forward(net[0], lambda *_: None, no_such_option=True)
        assert hook_tables(net) == before

    def test_keyword_arguments_reach_torch_and_their_extra_tables_are_restored(self):
        net = make_net()
        user_calls = with_user_hooks(net)
        order: list[str] = []
        net[0].register_forward_hook(lambda *_: order.append("user"))
        before = hook_tables(net)
        with HookHandles() as hooks:
            hooks.forward(net[0], lambda m, args, kwargs, out: order.append("kwargs"),
                          with_kwargs=True, always_call=True, prepend=True)
            hooks.forward_pre(net[0], lambda m, args, kwargs: None, with_kwargs=True)
            assert net[0]._forward_hooks_with_kwargs and net[0]._forward_hooks_always_called
            net(torch.randn(1, 4))
        # prepend=True puts ours before the user's hook
        assert order == ["kwargs", "user"]
        assert hook_tables(net) == before
        assert not net[0]._forward_hooks_with_kwargs
        assert not net[0]._forward_hooks_always_called
        assert user_calls  # the user's hooks still fire

    def test_each_handle_is_removed_exactly_once(self):
        handles = [CountingHandle() for _ in range(3)]
        hooks = HookHandles()
        for h in handles:
            assert hooks.add(h) is h
        hooks.remove()
        hooks.remove()
        with hooks:
            pass
        assert [h.removed for h in handles] == [1, 1, 1]

    def test_a_failing_removal_does_not_keep_the_others(self):
        first, failing, last = CountingHandle(), CountingHandle(fail=True), CountingHandle()
        hooks = HookHandles()
        for h in (first, failing, last):
            hooks.add(h)
        with pytest.raises(RuntimeError, match="removal failed"):
            hooks.remove()
        assert [h.removed for h in (first, failing, last)] == [1, 1, 1]
        hooks.remove()  # nothing is left to remove, and nothing is removed twice
        assert [h.removed for h in (first, failing, last)] == [1, 1, 1]

    def test_a_failing_removal_on_exit_still_removes_the_module_hooks(self):
        net = make_net()
        before = hook_tables(net)
        with pytest.raises(RuntimeError, match="removal failed"), HookHandles() as hooks:
            hooks.add(CountingHandle(fail=True))
            hooks.forward(net[2], lambda *_: None)
        assert hook_tables(net) == before

    def test_nested_use_of_one_object_is_refused_and_the_outer_block_still_cleans_up(self):
        net = make_net()
        before = hook_tables(net)
        hooks = HookHandles()
        with pytest.raises(RuntimeError, match="already in use"), hooks:
            hooks.forward(net[0], lambda *_: None)
            with hooks:
                pass
        assert hook_tables(net) == before
        # usable again once the block has exited
        with hooks:
            hooks.forward(net[0], lambda *_: None)
            assert len(hooks) == 1
        assert hook_tables(net) == before

    def test_separate_objects_nest(self):
        net = make_net()
        before = hook_tables(net)
        with HookHandles() as outer:
            outer.forward(net[0], lambda *_: None)
            with HookHandles() as inner:
                inner.forward(net[0], lambda *_: None)
                assert len(net[0]._forward_hooks) == 2
            assert len(net[0]._forward_hooks) == 1
        assert hook_tables(net) == before

    def test_tensor_hook_handles_are_accepted(self):
        t = torch.ones(2, requires_grad=True)
        seen = []
        with HookHandles() as hooks:
            hooks.add(t.register_hook(lambda g: seen.append(g)))
        (t * 2).sum().backward()
        assert seen == []

    def test_bad_arguments(self):
        hooks = HookHandles()
        with pytest.raises(ValueError, match="Unknown hook kind 'backward'"):
            hooks.register(nn.ReLU(), "backward", lambda *_: None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="remove"):
            hooks.add(object())  # type: ignore[arg-type]
        assert len(hooks) == 0
        assert set(HOOK_KINDS) == {"forward", "forward_pre", "full_backward",
                                   "full_backward_pre"}


# ============================================================================ record_outputs
class TestRecordOutputs:
    def test_copies_the_output_before_a_later_inplace_op(self):
        net = make_net()
        x = torch.randn(8, 4)
        expected = net[0](x)
        assert (expected < 0).any()  # the in-place ReLU after it would change these
        with record_outputs(net, ["0"]) as store:
            net(x)
        assert len(store["0"]) == 1
        assert torch.equal(store["0"][0], expected)
        # without the copy the recorded tensor is the one the ReLU overwrote
        with record_outputs(net, ["0"], copy=False) as aliased:
            net(x)
        assert torch.equal(aliased["0"][0], expected.clamp_min(0))

    def test_one_entry_per_call_and_first_element_of_tuples(self):
        class Pair(nn.Module):
            def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return x + 1, x - 1

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.pair = Pair()

            def forward(self, x: torch.Tensor) -> Any:
                return self.pair(self.pair(x)[0])[0]

        net = Net()
        x = torch.zeros(2, 3)
        with record_outputs(net, ["pair"]) as store:
            net(x)
        assert [t[0, 0].item() for t in store["pair"]] == [1.0, 2.0]

    def test_a_name_given_twice_is_recorded_once_per_call(self):
        net = make_net()
        with record_outputs(net, ["2", "2"]) as store:
            net(torch.randn(3, 4))
        assert list(store) == ["2"] and len(store["2"]) == 1

    def test_unknown_layers_register_nothing(self):
        net = make_net()
        before = hook_tables(net)
        with pytest.raises(ValueError, match=r"Unknown layers \['nope', ''\]"), \
                record_outputs(net, ["0", "nope", ""]):
            pass
        assert hook_tables(net) == before

    def test_hooks_removed_on_exit_and_on_error(self):
        net = make_net()
        with_user_hooks(net)
        before = hook_tables(net)
        with record_outputs(net, ["0", "2"]):
            net(torch.randn(1, 4))
        assert hook_tables(net) == before
        with pytest.raises(ZeroDivisionError), record_outputs(net, ["0"]):
            net(torch.randn(1, 4))
            _ = 1 / 0
        assert hook_tables(net) == before


def test_torch_wrapper_hidden_representations_with_a_repeated_layer():
    """Before the primitive, ``capture(["2", "2"])`` hooked the layer twice and
    ``hidden_representations`` returned 2N rows."""
    net = make_net()
    x = torch.randn(5, 4)
    reps = wrap_model(net).hidden_representations(x, ["2", "2"])
    assert reps["2"].shape == (5, 3)
    with torch.no_grad():
        assert torch.allclose(reps["2"], net(x))


# ============================================================================ every user
class Raising(nn.Module):
    """A layer that fails in the forward pass: the hooks must be gone afterwards all the same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("forward failed")


def run_users(net: nn.Module) -> None:
    """Call every hooking site in evalkit (and the benchmark counter) once on ``net``."""
    w = wrap_model(net)
    x = torch.randn(2, 4)
    with w.capture(["0", "2"]):
        w.predict(x)
    with explain_capture([("0", net[0]), ("2", net[2])]):
        net(x)
    _check_single_use(w, x, "DeepLift")
    InputInvariance._first_layer(w, net, x)
    with count_forwards(net):
        net(x)


def test_every_user_leaves_the_hook_tables_as_it_found_them():
    net = make_net()
    user_calls = with_user_hooks(net)
    before = hook_tables(net)
    run_users(net)
    assert hook_tables(net) == before
    n = len(user_calls)
    net(torch.randn(1, 4)).sum().backward()
    assert len(user_calls) == n + 3


@pytest.mark.parametrize("user", ["wrapper_capture", "explain_capture", "single_use",
                                  "first_layer", "count_forwards"])
def test_every_user_removes_its_hooks_when_the_forward_pass_fails(user):
    net = make_net()
    net.append(Raising())
    with_user_hooks(net)
    before = hook_tables(net)
    w = wrap_model(net)
    x = torch.randn(2, 4)
    with pytest.raises(RuntimeError, match="forward failed"):
        if user == "wrapper_capture":
            with w.capture(["0"]):
                w.predict(x)
        elif user == "explain_capture":
            with explain_capture([("0", net[0])]):
                net(x)
        elif user == "single_use":
            _check_single_use(w, x, "DeepLift")
        elif user == "first_layer":
            InputInvariance._first_layer(w, net, x)
        else:
            with count_forwards(net):
                net(x)
    assert hook_tables(net) == before
