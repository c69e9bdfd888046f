"""Tests of the model contract (`evalkit.models`): wrappers, targets, evaluation mode,
randomised / perturbed copies, hidden representations, and the proof that none of it touches
the user's model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit.modality import ImageModality
from evalkit.models import (
    CallableModel,
    ClassTarget,
    ModelWrapper,
    MultiLabelTarget,
    OutputIndex,
    SegmentationTarget,
    TorchModel,
    as_target,
    randomisable_layers,
    wrap_model,
)

N_CLASSES = 4


# ============================================================================ fixtures
class TinyNet(nn.Module):
    """Conv + BatchNorm + Dropout classifier on (N, 3, 8, 8) inputs, 4 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flat = nn.Flatten()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16, N_CLASSES)

    def forward(self, x):
        return self.fc(self.drop(self.flat(self.pool(self.relu(self.bn(self.conv1(x)))))))


class TinySegNet(nn.Module):
    """(N, 3, 6, 6) -> (N, 3 classes, 6, 6)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.head(x)


def make_tinynet(seed: int = 0) -> TinyNet:
    """A trained-looking TinyNet (non-default BN affine and running stats), built without
    touching the global RNG, left in a *mixed* mode: train() overall, BatchNorm in eval."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = TinyNet()
        with torch.no_grad():
            net.bn.weight.uniform_(0.5, 1.5)
            net.bn.bias.uniform_(-0.5, 0.5)
            net.train()
            for _ in range(3):
                net(torch.randn(8, 3, 8, 8) * 2 + 0.5)
    net.train()
    net.bn.eval()
    return net


def images(n: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def labels(n: int = 5) -> torch.Tensor:
    return torch.arange(n) % N_CLASSES


def numpy_linear(seed: int = 3):
    """A NumPy 'model': (N, 3, 8, 8) float32 -> (N, 4) logits."""
    w = np.random.default_rng(seed).normal(size=(3 * 8 * 8, N_CLASSES)).astype(np.float32)

    def fn(batch: np.ndarray) -> np.ndarray:
        assert isinstance(batch, np.ndarray) and batch.dtype == np.float32
        return batch.reshape(len(batch), -1) @ w

    fn.w = w
    return fn


def snapshot(model: nn.Module) -> dict:
    """Everything about a module that evalkit promises not to touch."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grad": {
            name: None if p.grad is None else p.grad.detach().clone()
            for name, p in model.named_parameters()
        },
        "param_ids": {name: id(p) for name, p in model.named_parameters()},
        "hooks": {
            name: (
                dict(m._forward_hooks),
                dict(m._forward_pre_hooks),
                dict(m._backward_hooks),
                dict(getattr(m, "_backward_pre_hooks", {})),
            )
            for name, m in model.named_modules()
        },
        "torch_rng": torch.get_rng_state().clone(),
    }


def assert_same_snapshot(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        w = after["state"][k]
        assert v.dtype == w.dtype and v.shape == w.shape, k
        # bitwise equality (NaN-safe)
        assert torch.equal(v.view(-1).view(torch.uint8) if v.is_floating_point() else v,
                           w.view(-1).view(torch.uint8) if w.is_floating_point() else w), k
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["param_ids"] == after["param_ids"]
    for name, g in before["grad"].items():
        g2 = after["grad"][name]
        if g is None:
            assert g2 is None, f"{name}.grad was set"
        else:
            assert g2 is not None and torch.equal(g, g2), f"{name}.grad changed"
    assert before["hooks"] == after["hooks"]
    assert torch.equal(before["torch_rng"], after["torch_rng"])


def layer_state(model: nn.Module, layer: str) -> dict[str, torch.Tensor]:
    mod = dict(model.named_modules())[layer]
    out = {k: v.detach().clone() for k, v in mod.named_parameters(recurse=False)}
    return out


def layer_differs(a: nn.Module, b: nn.Module, layer: str) -> bool:
    sa, sb = layer_state(a, layer), layer_state(b, layer)
    return any(not torch.equal(sa[k], sb[k]) for k in sa)


LAYERS = ["conv1", "bn", "fc"]


# ============================================================================ wrap_model
class TestWrapModel:
    def test_module(self):
        w = wrap_model(make_tinynet())
        assert isinstance(w, TorchModel) and w.differentiable
        assert w.device == torch.device("cpu") and w.dtype == torch.float32
        assert isinstance(w.target, ClassTarget)
        assert "TorchModel(TinyNet" in repr(w)

    def test_numpy_callable(self):
        fn = numpy_linear()
        w = wrap_model(fn)
        assert isinstance(w, CallableModel) and not w.differentiable
        assert w.model is fn

    def test_predict_proba_object(self):
        class Clf:
            def __init__(self):
                self.calls = 0

            def predict_proba(self, x):
                self.calls += 1
                p = np.full((len(x), 3), 0.2)
                p[:, 0] = 0.6
                return p

        clf = Clf()
        w = wrap_model(clf)
        assert isinstance(w, CallableModel)
        out = w.predict(np.zeros((4, 5), dtype=np.float32))
        assert clf.calls == 1
        assert torch.allclose(out, torch.tensor([[0.6, 0.2, 0.2]] * 4, dtype=out.dtype))

    def test_wrapper_passthrough_and_views(self):
        w = wrap_model(make_tinynet())
        assert wrap_model(w) is w
        assert wrap_model(w, device="cpu") is w
        view = wrap_model(w, softmax=True)
        assert view is not w and view.softmax is True and w.softmax is None
        assert view.model is w.model and view.counter is w.counter
        tview = wrap_model(w, target=2)
        assert isinstance(tview.target, OutputIndex) and isinstance(w.target, ClassTarget)
        with pytest.raises(TypeError, match="cannot be applied to an existing wrapper"):
            wrap_model(w, eval_mode=False)
        with pytest.raises(ValueError, match="runs on cpu"):
            wrap_model(w, device="cuda")

    def test_with_options(self):
        w = wrap_model(make_tinynet())
        v = w.with_options(batch_size=2, softmax=False)
        assert v.batch_size == 2 and w.batch_size is None and v.softmax is False
        with pytest.raises(TypeError, match="Unknown wrapper option"):
            w.with_options(colour="red")
        with pytest.raises(TypeError, match="`softmax`"):
            w.with_options(softmax="yes")
        with pytest.raises(TypeError, match="`softmax`"):
            wrap_model(make_tinynet(), softmax=1)

    @pytest.mark.parametrize("bad", [3, "model", None])
    def test_bad_model(self, bad):
        with pytest.raises(TypeError, match="`model` must be"):
            wrap_model(bad)

    def test_device_mismatch_error(self):
        net = make_tinynet()
        with pytest.raises(ValueError, match=r"parameters are on cpu but device=cuda.*never moves"):
            wrap_model(net, device="cuda")
        with pytest.raises(ValueError, match="never moves"):
            TorchModel(net, device="meta")
        assert wrap_model(net, device="cpu").device == torch.device("cpu")
        assert next(net.parameters()).device.type == "cpu"

    def test_wrapper_device_equivalent_spelling(self):
        net = make_tinynet()
        assert wrap_model(net, device="cpu:0").device.type == "cpu"
        w = wrap_model(net)
        assert wrap_model(w, device="cpu:0") is w

    def test_parameter_free_module(self):
        w = wrap_model(nn.Flatten())
        assert w.device.type == "cpu" and w.dtype == torch.get_default_dtype()
        assert w.predict(torch.ones(2, 3, 2)).shape == (2, 6)

    def test_output_fn_and_non_tensor_output(self):
        class DictNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(4, 2)

            def forward(self, x):
                return {"logits": self.lin(x)}

        x = torch.randn(3, 4)
        with pytest.raises(TypeError, match="output_fn"):
            wrap_model(DictNet()).predict(x)
        out = wrap_model(DictNet(), output_fn=lambda o: o["logits"]).predict(x)
        assert out.shape == (3, 2)


# ============================================================================ predict / score
class TestPredictScore:
    def test_numpy_and_torch_inputs_agree(self):
        net = make_tinynet()
        w = wrap_model(net)
        x = images(5)
        out_t = w.predict(x)
        out_n = w.predict(x.numpy())
        assert isinstance(out_n, torch.Tensor)
        assert torch.equal(out_t, out_n)
        # equals a plain eval-mode forward
        net_copy = make_tinynet()
        net_copy.eval()
        with torch.no_grad():
            assert torch.allclose(out_t, net_copy(x), atol=1e-6)

    def test_float64_and_int_inputs_converted(self):
        w = wrap_model(make_tinynet())
        x = images(3)
        assert torch.equal(w.predict(x.double()), w.predict(x))
        xi = torch.randint(0, 3, (2, 3, 8, 8))
        with pytest.raises(ValueError, match="integer images"):
            w.predict(xi)  # an integer image does not say its range
        assert w.prepare(xi, ImageModality(value_range=(0, 2))).dtype == torch.float32
        series = torch.randint(0, 3, (2, 3, 8))  # integer series are numbers: cast
        assert w.prepare(series, "series").dtype == torch.float32

    @pytest.mark.parametrize("bs", [1, 2, 3, 7, None])
    def test_batch_size_invariance(self, bs):
        w = wrap_model(make_tinynet())
        x = images(7)
        ref = w.predict(x, batch_size=7)
        assert torch.allclose(w.predict(x, batch_size=bs), ref, atol=1e-6)
        assert torch.allclose(w.with_options(batch_size=bs).predict(x), ref, atol=1e-6)
        assert torch.allclose(w.score(x, labels(7), batch_size=bs), w.score(x, labels(7)),
                              atol=1e-6)

    def test_score_is_class_logit(self):
        w = wrap_model(make_tinynet())
        x, y = images(5), labels(5)
        logits = w.predict(x)
        s = w.score(x, y)
        assert s.shape == (5,)
        assert torch.equal(s, logits[torch.arange(5), y])
        assert torch.equal(w.score(x.numpy(), y.numpy()), s)

    def test_softmax_option(self):
        net = make_tinynet()
        w = wrap_model(net, softmax=True)
        x, y = images(4), labels(4)
        probs = w.predict(x)
        assert torch.allclose(probs.sum(1), torch.ones(4), atol=1e-6)
        logits = wrap_model(net, softmax=False).predict(x)
        assert torch.allclose(probs, torch.softmax(logits, 1), atol=1e-7)
        assert torch.allclose(w.score(x, y), probs[torch.arange(4), y])
        assert bool(((w.score(x, y) > 0) & (w.score(x, y) < 1)).all())

    def test_output_shape_cached(self):
        w = wrap_model(make_tinynet())
        x = images(3)
        assert w.output_shape(x) == (N_CLASSES,)
        calls = w.counter.calls
        assert w.output_shape(x) == (N_CLASSES,)
        assert w.counter.calls == calls  # cached: no forward

    def test_output_shape_probe_shared_by_wrappers_of_one_module(self):
        # a module passed as it is to every metric call is wrapped anew each time: the probe
        # runs once per module, and again after a change of its structure
        net = make_tinynet()
        x = images(3)
        first = wrap_model(net)
        assert first.output_shape(x) == (N_CLASSES,)
        assert first.counter.calls == 1
        second = wrap_model(net)
        assert second.output_shape(x) == (N_CLASSES,)
        assert second.counter.calls == 0  # shared: no forward
        # a wrapper that runs the module in its own mode (its probe may update batch-norm
        # statistics) or a changed head probe again
        own_mode = wrap_model(net, eval_mode=False)
        assert own_mode.output_shape(x) == (N_CLASSES,)
        assert own_mode.counter.calls == 1
        net.fc = nn.Linear(16, 2)
        third = wrap_model(net)
        assert third.output_shape(x) == (2,)
        assert third.counter.calls == 1
        # a forward hook may change what the module returns: it probes again too
        handle = net.register_forward_hook(lambda _m, _i, out: out[:, :1])
        try:
            assert wrap_model(net).output_shape(x) == (1,)
        finally:
            handle.remove()

    def test_forward_counter(self):
        w = wrap_model(make_tinynet())
        w.predict(images(7), batch_size=3)
        assert (w.counter.calls, w.counter.rows) == (3, 7)
        w.predict(images(2))
        assert (w.counter.calls, w.counter.rows) == (4, 9)
        w.counter.reset()
        assert (w.counter.calls, w.counter.rows) == (0, 0)
        view = w.with_options(softmax=True)
        view.predict(images(2))
        assert w.counter.rows == 2  # views share the counter

    def test_predict_inference_mode_no_grad(self):
        w = wrap_model(make_tinynet())
        out = w.predict(images(2))
        assert not out.requires_grad

    @pytest.mark.parametrize("batch_size", [None, 2])
    def test_predict_returns_an_ordinary_tensor(self, batch_size):
        # one chunk (cloned) or several (concatenated): not an inference tensor, so callers
        # may write into it and use it with autograd
        w = wrap_model(make_tinynet(), batch_size=batch_size)
        x = images(5)
        out = w.predict(x)
        assert not out.is_inference()
        expected = out.clone()
        out.add_(1.0)
        torch.testing.assert_close(out, expected + 1.0)
        assert torch.equal(w.predict(x), expected)

    def test_predict_empty_batch_clear_error_or_empty_output(self):
        w = wrap_model(make_tinynet())
        try:
            out = w.predict(torch.zeros(0, 3, 8, 8))
        except ValueError as err:
            assert "empty" in str(err)
        else:
            assert out.shape == (0, N_CLASSES)


# ============================================================================ targets
class TestTargets:
    def test_output_index(self):
        net = make_tinynet()
        x = images(4)
        logits = wrap_model(net).predict(x)
        w = wrap_model(net, target=2)
        assert isinstance(w.target, OutputIndex)
        assert torch.equal(w.score(x), logits[:, 2])
        assert torch.equal(w.score(x, labels(4)), logits[:, 2])  # ignores y
        assert torch.equal(OutputIndex(0)(torch.arange(3.0), None), torch.arange(3.0))
        with pytest.raises(ValueError, match="index=0"):
            OutputIndex(1)(torch.arange(3.0), None)

    def test_multilabel(self):
        out = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
        y = torch.tensor([[1, 0, 1], [0, 0, 0]])
        assert torch.equal(MultiLabelTarget()(out, y), torch.tensor([4.0, 0.0]))
        assert torch.equal(MultiLabelTarget("mean")(out, y), torch.tensor([2.0, 0.0]))
        MultiLabelTarget().check(y, (3,))
        with pytest.raises(ValueError, match="multi-hot"):
            MultiLabelTarget().check(torch.tensor([0, 1]), (3,))
        with pytest.raises(ValueError, match="multi-hot"):
            MultiLabelTarget().check(torch.zeros(2, 4), (3,))
        with pytest.raises(ValueError, match="multi-hot"):
            MultiLabelTarget()(out, None)
        with pytest.raises(ValueError, match="reduction"):
            MultiLabelTarget("max")

    def test_multilabel_through_wrapper(self):
        net = make_tinynet()
        x = images(3)
        y = np.array([[1, 1, 0, 0], [0, 0, 0, 1], [1, 0, 1, 0]])
        logits = wrap_model(net).predict(x)
        w = wrap_model(net, target=MultiLabelTarget())
        w.check_labels(x, torch.as_tensor(y))
        assert torch.allclose(w.score(x, y), (logits * torch.as_tensor(y)).sum(1))

    def test_segmentation(self):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            seg = TinySegNet()
        x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
        y = torch.tensor([2, 0])
        out = wrap_model(seg).predict(x)
        w = wrap_model(seg, target=SegmentationTarget())
        w.check_labels(x, y)
        assert torch.allclose(w.score(x, y), out[torch.arange(2), y].flatten(1).sum(1))
        wm = wrap_model(seg, target=SegmentationTarget(reduction="mean"))
        assert torch.allclose(wm.score(x, y), out[torch.arange(2), y].flatten(1).mean(1))
        region = torch.zeros(6, 6, dtype=torch.bool)
        region[1:3, 2:5] = True
        wr = wrap_model(seg, target=SegmentationTarget(region=region, reduction="mean"))
        want = out[torch.arange(2), y][:, 1:3, 2:5].flatten(1).mean(1)
        assert torch.allclose(wr.score(x, y), want)
        with pytest.raises(ValueError, match="contains the label 3"):
            w.check_labels(x, torch.tensor([0, 3]))
        with pytest.raises(ValueError, match="SegmentationTarget"):
            SegmentationTarget()(out, None)
        # the default class target rejects segmentation outputs with a pointer to the fix
        with pytest.raises(ValueError, match="SegmentationTarget"):
            wrap_model(seg).check_labels(x, y)

    def test_custom_callable(self):
        net = make_tinynet()
        x, y = images(3), labels(3)
        logits = wrap_model(net).predict(x)

        def margin(outputs, yy):
            return outputs[:, 0] - outputs[:, 1]

        w = wrap_model(net, target=margin)
        assert torch.allclose(w.score(x, y), logits[:, 0] - logits[:, 1])
        assert repr(w.target) == "margin"
        w.check_labels(x, None)  # custom targets do not validate y

    def test_custom_callable_bad_shape(self):
        w = wrap_model(make_tinynet(), target=lambda out, y: out[:, :1])
        with pytest.raises(ValueError, match=r"custom target must return a tensor of shape \(N,\)"):
            w.score(images(3), labels(3))
        w2 = wrap_model(make_tinynet(), target=lambda out, y: out[:, 0].tolist())
        with pytest.raises(ValueError, match="got list"):
            w2.score(images(3), labels(3))

    def test_as_target(self):
        assert isinstance(as_target(None), ClassTarget)
        assert isinstance(as_target(1), OutputIndex)
        t = MultiLabelTarget()
        assert as_target(t) is t
        with pytest.raises(TypeError, match="`target`"):
            as_target(True)
        with pytest.raises(TypeError, match="`target`"):
            as_target("class")

    def test_class_target_errors(self):
        with pytest.raises(ValueError, match="needs class labels"):
            ClassTarget()(torch.zeros(2, 3), None)
        with pytest.raises(ValueError, match=r"\(N, n_classes\)"):
            ClassTarget()(torch.zeros(2, 3, 4), torch.tensor([0, 1]))


class TestLabelValidation:
    w = wrap_model(make_tinynet())
    x = images(3)

    @pytest.mark.parametrize(
        ("y", "match"),
        [
            (torch.tensor([0, 1, 4]), r"label 4.*4 classes.*0 to 3"),
            (torch.tensor([0, -1, 2]), "label -1"),
            (torch.tensor([0.0, 1.5, 2.0]), "non-integer"),
            (torch.tensor([True, False, True]), "integer class indices"),
            (torch.tensor([[0], [1], [2]]), r"shape \(N,\)"),
            (None, "`y` is required"),
        ],
    )
    def test_wrapper_check_labels(self, y, match):
        with pytest.raises(ValueError, match=match):
            self.w.check_labels(self.x, y)

    def test_integral_floats_accepted(self):
        self.w.check_labels(self.x, torch.tensor([0.0, 1.0, 3.0]))
        self.w.check_labels(self.x, torch.tensor([0, 1, 3]))

    def test_wrong_length_via_validation(self):
        from evalkit._validation import check_labels

        with pytest.raises(ValueError, match="`y` has 2 entries but `x` has 3"):
            check_labels(torch.tensor([0, 1]), 3)

    @pytest.mark.parametrize("y", [[0.5, 1.7, 2.2], [0, 1]])
    def test_score_validates_labels(self, y):
        with pytest.raises(ValueError, match="`y`"):
            self.w.score(self.x, torch.tensor(y))

    def test_score_out_of_range_label_clear_error(self):
        with pytest.raises(ValueError, match="`y`"):
            self.w.score(self.x, torch.tensor([0, 1, 7]))

    @pytest.mark.parametrize(
        ("y", "match"), [([0, 1, 7], "label 7"), ([0, -1, 2], "label -1"),
                         ([0.5, 1.0, 2.0], "non-integer")]
    )
    def test_explain_validates_labels(self, y, match):
        with pytest.raises(ValueError, match=match):
            ek.explain(self.w, self.x, torch.tensor(y))


# ============================================================================ eval mode
class TestEvaluationMode:
    def test_restores_mixed_flags(self):
        net = make_tinynet()  # train overall, bn eval
        net.fc.eval()
        before = {n: m.training for n, m in net.named_modules()}
        assert len(set(before.values())) == 2  # really mixed
        w = wrap_model(net)
        with w.evaluation():
            assert not any(m.training for m in net.modules())
        assert {n: m.training for n, m in net.named_modules()} == before

    def test_restores_on_error(self):
        net = make_tinynet()
        before = {n: m.training for n, m in net.named_modules()}
        w = wrap_model(net)
        with pytest.raises(RuntimeError, match="boom"), w.evaluation():
            raise RuntimeError("boom")
        assert {n: m.training for n, m in net.named_modules()} == before

    def test_all_eval_model_untouched(self):
        net = make_tinynet().eval()
        w = wrap_model(net)
        with w.evaluation():
            assert not net.training
        assert not any(m.training for m in net.modules())

    def test_predict_is_deterministic_despite_dropout(self):
        net = make_tinynet()  # dropout in train mode
        w = wrap_model(net)
        x = images(6)
        assert torch.equal(w.predict(x), w.predict(x))
        assert net.training and net.drop.training

    def test_eval_mode_false_keeps_mode(self):
        net = make_tinynet()
        w = wrap_model(net, eval_mode=False)
        seen = []
        handle = net.drop.register_forward_hook(lambda m, i, o: seen.append(m.training))
        try:
            w.predict(images(2))
        finally:
            handle.remove()
        assert seen == [True]

    def test_callable_model_evaluation_is_noop(self):
        w = wrap_model(numpy_linear())
        with w.evaluation():
            pass


# ============================================================================ randomisation
class TestRandomiseLayers:
    def test_randomisable_layers(self):
        assert [n for n, _ in randomisable_layers(make_tinynet())] == LAYERS

    @pytest.mark.parametrize(
        ("order", "expected_names"),
        [
            ("top_down", ["fc", "bn", "conv1"]),
            ("bottom_up", ["conv1", "bn", "fc"]),
            ("independent", ["conv1", "bn", "fc"]),
        ],
    )
    def test_which_layers_differ_at_each_step(self, order, expected_names):
        net = make_tinynet()
        w = wrap_model(net)
        names, differing, prev_states = [], [], {}
        x = images(3)
        ref = w.predict(x)
        for name, rw in w.randomise_layers(order, seed=7):
            names.append(name)
            assert isinstance(rw, TorchModel) and rw.model is not net
            differing.append({lay for lay in LAYERS if layer_differs(net, rw.model, lay)})
            # a randomised layer keeps the same weights on later (cascading) steps
            for lay, st in prev_states.items():
                if order != "independent":
                    cur = layer_state(rw.model, lay)
                    assert all(torch.equal(st[k], cur[k]) for k in st), lay
            prev_states[name] = layer_state(rw.model, name)
            assert not torch.allclose(rw.predict(x), ref)
        assert names == expected_names
        if order == "independent":
            assert differing == [{n} for n in expected_names]
        else:
            assert differing == [set(expected_names[: i + 1]) for i in range(len(names))]

    def test_same_layer_same_weights_in_every_order(self):
        w = wrap_model(make_tinynet())
        per_order = {}
        for order in ("top_down", "bottom_up", "independent"):
            per_order[order] = {name: layer_state(rw.model, name)
                                for name, rw in w.randomise_layers(order, seed=3)}
        for lay in LAYERS:
            a = per_order["top_down"][lay]
            for order in ("bottom_up", "independent"):
                b = per_order[order][lay]
                assert all(torch.equal(a[k], b[k]) for k in a), (order, lay)

    def test_fully_randomised_models_agree(self):
        w = wrap_model(make_tinynet())
        td = [rw.model.state_dict() for _, rw in w.randomise_layers("top_down", seed=1)][-1]
        bu = [rw.model.state_dict() for _, rw in w.randomise_layers("bottom_up", seed=1)][-1]
        assert td.keys() == bu.keys()
        assert all(torch.equal(td[k], bu[k]) for k in td)

    def test_seed_determinism(self):
        w = wrap_model(make_tinynet())

        def weights(seed):
            return [layer_state(rw.model, n) for n, rw in w.randomise_layers("bottom_up",
                                                                              seed=seed)]

        a, b, c = weights(5), weights(5), weights(6)
        for sa, sb in zip(a, b, strict=True):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert any(not torch.equal(sa[k], sc[k]) for sa, sc in zip(a, c, strict=True) for k in sa)

    def test_layer_names_selection(self):
        w = wrap_model(make_tinynet())
        got = [n for n, _ in w.randomise_layers("top_down", layer_names=["conv1", "fc"])]
        assert got == ["fc", "conv1"]
        got = [n for n, _ in w.randomise_layers("bottom_up", layer_names=["fc", "conv1"])]
        assert got == ["conv1", "fc"]
        for name, rw in w.randomise_layers("independent", layer_names=["bn"]):
            assert name == "bn"
            assert not layer_differs(w.model, rw.model, "conv1")
            assert layer_differs(w.model, rw.model, "bn")

    def test_errors(self):
        w = wrap_model(make_tinynet())
        with pytest.raises(ValueError, match=r"Unknown or parameter-free layers \['nope'\]"):
            list(w.randomise_layers(layer_names=["nope"]))
        with pytest.raises(ValueError, match="parameter-free"):
            list(w.randomise_layers(layer_names=["relu"]))
        with pytest.raises(ValueError, match="`order`"):
            list(w.randomise_layers("sideways"))

    def test_yielded_wrapper_keeps_options(self):
        w = wrap_model(make_tinynet(), softmax=True, target=1)
        for _, rw in w.randomise_layers("top_down"):
            assert rw.softmax is True and isinstance(rw.target, OutputIndex)
            assert torch.allclose(rw.predict(images(2)).sum(1), torch.ones(2), atol=1e-6)

    def test_randomised_context(self):
        net = make_tinynet()
        w = wrap_model(net)
        with w.randomised(["fc"], seed=11) as rw:
            assert layer_differs(net, rw.model, "fc")
            assert not layer_differs(net, rw.model, "conv1")
            assert not layer_differs(net, rw.model, "bn")
            fc_weights = layer_state(rw.model, "fc")
        # the same layer weights as randomise_layers with the same seed
        for name, rw in w.randomise_layers("independent", seed=11, layer_names=["fc"]):
            st = layer_state(rw.model, name)
            assert all(torch.equal(st[k], fc_weights[k]) for k in st)
        with pytest.raises(ValueError, match="Unknown layer 'nope'"), w.randomised(["nope"]):
            pass

    def test_randomised_several_layers_match_the_cascade_and_keep_the_rng(self):
        # one fork of the global RNG for the whole copy: each layer still draws what it draws
        # in a cascade (its own seed), and the caller's random stream is unaffected
        w = wrap_model(make_tinynet())
        names = ["conv1", "bn", "fc"]
        cascade = [rw.model.state_dict() for _, rw in
                   w.randomise_layers("bottom_up", seed=3, layer_names=names)][-1]
        torch.manual_seed(123)
        before = torch.get_rng_state().clone()
        with w.randomised(names, seed=3) as rw:
            got = rw.model.state_dict()
            assert all(torch.equal(got[k], cascade[k]) for k in cascade)
        assert torch.equal(torch.get_rng_state(), before)

    def test_keep_buffers(self):
        net = make_tinynet()
        w = wrap_model(net)
        with w.randomised(["bn"], seed=0) as rw:  # reset_parameters also resets the stats
            assert torch.equal(rw.model.bn.running_mean, torch.zeros(4))
            assert torch.equal(rw.model.bn.running_var, torch.ones(4))
        with w.randomised(["bn"], seed=0, keep_buffers=True) as rw:
            assert torch.equal(rw.model.bn.running_mean, net.bn.running_mean)
            assert torch.equal(rw.model.bn.running_var, net.bn.running_var)
            assert layer_differs(net, rw.model, "bn")
        for name, rw in w.randomise_layers("independent", keep_buffers=True):
            assert torch.equal(rw.model.bn.running_var, net.bn.running_var), name

    def test_layer_without_reset_parameters(self):
        class Scale(nn.Module):
            def __init__(self):
                super().__init__()
                self.alpha = nn.Parameter(torch.full((10,), 3.0) + torch.arange(10.0))

            def forward(self, x):
                return x * self.alpha

        model = nn.Sequential(Scale(), nn.Linear(10, 2))
        w = wrap_model(model)
        before = model[0].alpha.detach().clone()
        with w.randomised(["0"], seed=1) as rw:
            new = rw.model[0].alpha.detach()
            assert not torch.equal(new, before)
        with w.randomised(["0"], seed=1) as rw2:
            assert torch.equal(rw2.model[0].alpha.detach(), new)
        assert torch.equal(model[0].alpha.detach(), before)


class TestPerturbed:
    def test_identity_noise(self):
        net = make_tinynet()
        w = wrap_model(net)
        x = images(4)
        with w.perturbed("multiplicative", mean=1.0, std=0.0, seed=3) as pw:
            assert pw.model is not net
            assert torch.equal(pw.predict(x), w.predict(x))
        with w.perturbed("additive", mean=0.0, std=0.0) as pw:
            assert torch.equal(pw.predict(x), w.predict(x))

    def test_seeded_determinism(self):
        w = wrap_model(make_tinynet())
        x = images(3)
        with w.perturbed(std=0.1, seed=1) as a, w.perturbed(std=0.1, seed=1) as b:
            assert torch.equal(a.predict(x), b.predict(x))
            sa, sb = a.model.state_dict(), b.model.state_dict()
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
        with w.perturbed(std=0.1, seed=1) as a, w.perturbed(std=0.1, seed=2) as b:
            assert not torch.equal(a.model.fc.weight, b.model.fc.weight)

    def test_statistics(self):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            lin = nn.Linear(50, 40)
        w = wrap_model(lin)
        with w.perturbed("multiplicative", mean=1.0, std=0.1, seed=0) as pw:
            ratio = pw.model.weight.detach() / lin.weight.detach()
        assert abs(float(ratio.mean()) - 1.0) < 0.02
        assert abs(float(ratio.std()) - 0.1) < 0.02
        with w.perturbed("additive", mean=0.5, std=0.2, seed=0) as pw:
            diff = pw.model.weight.detach() - lin.weight.detach()
        assert abs(float(diff.mean()) - 0.5) < 0.02
        assert abs(float(diff.std()) - 0.2) < 0.02

    def test_buffers_untouched(self):
        net = make_tinynet()
        w = wrap_model(net)
        with w.perturbed("additive", mean=0.0, std=1.0) as pw:
            assert torch.equal(pw.model.bn.running_mean, net.bn.running_mean)
            assert torch.equal(pw.model.bn.running_var, net.bn.running_var)
            assert not torch.equal(pw.model.bn.weight, net.bn.weight)

    def test_errors(self):
        w = wrap_model(make_tinynet())
        with pytest.raises(ValueError, match="`std`"), w.perturbed(std=-1):
            pass
        with pytest.raises(ValueError, match="`noise_type`"), w.perturbed("gaussian"):
            pass


class TestHidden:
    def test_hidden_representations(self):
        net = make_tinynet()
        w = wrap_model(net)
        x = images(5)
        reps = w.hidden_representations(x, ["conv1", "pool", "fc"])
        assert reps["conv1"].shape == (5, 4, 8, 8)
        assert reps["pool"].shape == (5, 4, 2, 2)
        assert torch.equal(reps["fc"], w.predict(x))
        chunked = w.hidden_representations(x, ["conv1", "fc"], batch_size=2)
        assert torch.allclose(chunked["conv1"], reps["conv1"], atol=1e-6)
        assert torch.allclose(chunked["fc"], reps["fc"], atol=1e-6)
        assert all(not m._forward_hooks for m in net.modules())

    def test_capture_is_not_changed_by_a_later_inplace_op(self):
        net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
        w = wrap_model(net)
        x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
        reps = w.hidden_representations(x, ["0"])
        with torch.no_grad():
            expected = net[0](x)
        assert (expected < 0).any()  # the ReLU would have clipped these in place
        assert torch.equal(reps["0"], expected)

    def test_capture_removes_hooks_also_on_error(self):
        net = make_tinynet()
        w = wrap_model(net)
        with w.capture(["bn"]) as store:
            assert len(net.bn._forward_hooks) == 1
            w.predict(images(2))
            w.predict(images(3))
        assert [t.shape[0] for t in store["bn"]] == [2, 3]
        assert not net.bn._forward_hooks
        with pytest.raises(RuntimeError, match="inside"), w.capture(["fc"]):
            raise RuntimeError("inside")
        assert not net.fc._forward_hooks

    def test_unknown_layer(self):
        w = wrap_model(make_tinynet())
        with pytest.raises(ValueError, match="Unknown layers"), w.capture(["nope"]):
            pass
        with pytest.raises(ValueError, match="Unknown layers"):
            w.hidden_representations(images(2), [""])


# ============================================================================ CallableModel
class TestCallableModel:
    def test_numpy_callable_matches_reference(self):
        fn = numpy_linear()
        w = wrap_model(fn)
        x = images(4)
        out = w.predict(x)
        want = x.reshape(4, -1).numpy() @ fn.w
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)
        assert torch.equal(w.predict(x.numpy()), out)
        assert torch.allclose(w.predict(x, batch_size=3), out)
        y = labels(4)
        assert torch.equal(w.score(x, y), out[torch.arange(4), y])

    def test_channels_last(self):
        seen = []

        def fn(batch):
            seen.append(batch.shape)
            return batch.mean(axis=(1, 2))  # (N, C): one "logit" per channel

        w = CallableModel(fn, channels_last=True)
        x = images(2)
        out = w.predict(x)
        assert seen[-1] == (2, 8, 8, 3)
        assert torch.allclose(out, x.mean(dim=(2, 3)), atol=1e-6)
        assert wrap_model(fn, channels_last=True).channels_last

    def test_torch_input_type_is_differentiable(self):
        lin = nn.Linear(6, 3)
        seen = []

        def fn(t):
            seen.append(type(t))
            return lin(t)

        w = CallableModel(fn, input_type="torch")
        assert w.differentiable
        x = torch.randn(4, 6)
        assert torch.allclose(w.predict(x), lin(x).detach())
        assert seen == [torch.Tensor]
        a = ek.explain(w, x, torch.tensor([0, 1, 2, 0]), method="Gradient")
        assert a.shape == (4, 6)
        assert torch.allclose(a[0], lin.weight[0].detach())

    def test_returns_list_and_ints(self):
        w = CallableModel(lambda b: [[1, 0]] * len(b))
        out = w.predict(np.zeros((3, 2), dtype=np.float32))
        assert out.dtype == torch.float32 and out.shape == (3, 2)

    def test_wrong_row_count(self):
        w = wrap_model(lambda b: np.zeros((1, 4)))
        with pytest.raises(ValueError, match=r"returned \(1, 4\) for a batch of 3 inputs"):
            w.predict(np.zeros((3, 5), dtype=np.float32))

    def test_errors(self):
        with pytest.raises(TypeError, match="callable"):
            CallableModel(3)
        with pytest.raises(ValueError, match="`input_type`"):
            CallableModel(lambda b: b, input_type="jax")

    def test_no_parameter_access(self):
        w = wrap_model(numpy_linear())
        with pytest.raises(NotImplementedError, match="randomise"):
            w.randomise_layers("top_down")
        with pytest.raises(NotImplementedError, match="perturb"):
            w.perturbed()
        with pytest.raises(NotImplementedError, match="hidden"):
            w.hidden_representations(images(2), ["fc"])
        with pytest.raises(TypeError, match="not differentiable"):
            ek.explain(w, images(2), labels(2), method="Saliency")

    def test_randomised_not_implemented(self):
        w = wrap_model(numpy_linear())
        with pytest.raises(NotImplementedError), w.randomised(["fc"]):
            pass


# ============================================================================ no mutation
def test_no_mutation_of_user_model_after_everything():
    torch.manual_seed(2024)
    net = make_tinynet()
    net.conv1.weight.requires_grad_(False)  # mixed requires_grad
    net.fc.bias.grad = torch.full_like(net.fc.bias, 0.25)  # a pre-existing grad
    user_hook_calls = []
    handle = net.fc.register_forward_hook(lambda m, i, o: user_hook_calls.append(1))
    before = snapshot(net)

    w = wrap_model(net)
    x, y = images(4), labels(4)
    x_ref = x.clone()
    w.predict(x, batch_size=3)
    w.score(x, y)
    w.check_labels(x, y)
    with w.evaluation():
        pass
    for order in ("top_down", "bottom_up", "independent"):
        for _, rw in w.randomise_layers(order, seed=1):
            rw.predict(x)
    with w.randomised(["bn"]) as rw:
        rw.score(x, y)
    with w.perturbed("multiplicative", std=0.5) as pw:
        pw.predict(x)
    with w.perturbed("additive", mean=0.0, std=0.5) as pw:
        pw.predict(x)
    w.hidden_representations(x, ["conv1", "fc"])
    with w.capture(["bn"]):
        w.predict(x)
    for method, kw in (("Saliency", {}), ("IntegratedGradients", {"n_steps": 4}),
                       ("Gradient", {}), ("InputXGradient", {})):
        a = ek.explain(net, x, y, method=method, **kw)
        assert a.shape == x.shape and torch.isfinite(a).all()
        ek.explain(w, x.numpy(), y.numpy(), method=method, **kw)

    after = snapshot(net)
    assert_same_snapshot(before, after)
    assert torch.equal(x, x_ref)
    # the user's own hook is still installed and still fires
    n_calls = len(user_hook_calls)
    with torch.no_grad():
        net(x)
    assert len(user_hook_calls) == n_calls + 1
    handle.remove()


def test_explain_does_not_set_input_grad_or_requires_grad():
    net = make_tinynet()
    x = images(3).requires_grad_(True)
    y = labels(3)
    before = snapshot(net)
    a = ek.explain(net, x, y, method="Saliency")
    assert x.grad is None and x.requires_grad
    assert not a.requires_grad
    x2 = images(3)
    ek.explain(net, x2, y, method="IntegratedGradients", n_steps=3)
    assert not x2.requires_grad and x2.grad is None
    assert_same_snapshot(before, snapshot(net))


def test_saliency_matches_autograd():
    net = make_tinynet()
    x, y = images(3), labels(3)
    a = ek.explain(net, x, y, method="Gradient")
    ref = make_tinynet().eval()
    xr = x.clone().requires_grad_(True)
    out = ref(xr)[torch.arange(3), y].sum()
    (g,) = torch.autograd.grad(out, xr)
    assert torch.allclose(a, g, atol=1e-6)
    assert torch.allclose(ek.explain(net, x, y, method="Saliency"), g.abs(), atol=1e-6)


def test_explain_numpy_in_numpy_out_and_batching():
    net = make_tinynet()
    x, y = images(5), labels(5)
    a_np = ek.explain(net, x.numpy(), y.numpy(), method="Saliency", batch_size=2)
    assert isinstance(a_np, np.ndarray)
    a_t = ek.explain(net, x, y, method="Saliency")
    assert isinstance(a_t, torch.Tensor)
    np.testing.assert_allclose(a_np, a_t.numpy(), atol=1e-6)
    red = ek.explain(net, x, y, method="Saliency", reduce_channels="sum")
    assert red.shape == (5, 1, 8, 8)


def test_model_wrapper_is_abstract():
    with pytest.raises(TypeError):
        ModelWrapper()  # type: ignore[abstract]
