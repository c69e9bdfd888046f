"""Axiomatic metrics: Completeness, NonSensitivity, InputInvariance.

Known answers: Integrated Gradients is complete on a linear model and (with enough steps) on a
ReLU network, the gradient is not; the non-sensitivity toy scenarios (sum / constant / top-row /
bottom-row models) give 0, 4, 16 and 4 violations; the gradient is input invariant under a
bias-compensated mean shift while Input x Gradient and zero-baseline Integrated Gradients are not
(Kindermans et al. 2019).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit._validation import EvalkitWarning
from evalkit.metrics import Completeness, InputInvariance, NonSensitivity, get
from evalkit.models import wrap_model


def seeded(factory, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory().eval()


def relu_net(in_ch=1, size=10, n_classes=4, padding=0, bias=True):
    def make():
        conv = nn.Conv2d(in_ch, 5, 3, padding=padding, bias=bias)
        side = size - 2 + 2 * padding
        return nn.Sequential(conv, nn.ReLU(), nn.Conv2d(5, 4, 3), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * (side - 2) ** 2, n_classes))

    return seeded(make)


def linear_model(d=12, n_classes=3):
    return seeded(lambda: nn.Sequential(nn.Flatten(), nn.Linear(d, n_classes)))


def images(n, shape=(1, 10, 10), seed=0):
    return torch.rand((n, *shape), generator=torch.Generator().manual_seed(seed))


def predicted(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


# ============================================================================ Completeness
class TestCompleteness:
    def test_integrated_gradients_linear_model_exact(self):
        model = linear_model()
        x = images(6, (1, 3, 4))
        y = predicted(model, x)
        m = Completeness(perturb_baseline="zero", rtol=0.0, atol=1e-5)
        scores = m(model, x, y, explain_kwargs={"method": "IntegratedGradients", "n_steps": 8})
        np.testing.assert_array_equal(scores, 1.0)
        assert m.residuals_.max() < 1e-5
        # the residual itself
        r = Completeness(perturb_baseline="zero", return_residual=True)(
            model, x, y, explain_kwargs={"method": "IntegratedGradients", "n_steps": 8})
        np.testing.assert_allclose(r, m.residuals_)

    def test_integrated_gradients_relu_network_within_tolerance(self):
        model = relu_net()
        x = images(6)
        y = predicted(model, x)
        m = Completeness(perturb_baseline="zero")
        scores = m(model, x, y,
                   explain_kwargs={"method": "IntegratedGradients", "n_steps": 256})
        np.testing.assert_array_equal(scores, 1.0)
        rel = m.residuals_ / np.abs(m.output_differences_)
        assert rel.max() < 0.01
        # the gradient is not complete
        grad = Completeness(perturb_baseline="zero")(model, x, y,
                                                     explain_kwargs={"method": "Gradient"})
        assert grad.mean() < 0.5

    def test_values_are_the_definition(self):
        model = relu_net()
        x = images(4)
        y = predicted(model, x)
        a = torch.randn(4, 1, 10, 10, generator=torch.Generator().manual_seed(1))
        m = Completeness(perturb_baseline="black", return_residual=True)
        r = m(model, x, y, a)
        with torch.no_grad():
            base = x.reshape(4, -1).amin(1).reshape(4, 1, 1, 1).expand_as(x)
            delta = (model(x) - model(base)).gather(1, y[:, None]).squeeze(1).double()
        expected = (a.double().reshape(4, -1).sum(1) - delta).abs()
        np.testing.assert_allclose(r, expected.numpy(), rtol=1e-5)
        np.testing.assert_allclose(m.output_differences_, delta.numpy(), rtol=1e-5)
        np.testing.assert_allclose(m.attribution_sums_, a.double().reshape(4, -1).sum(1))

    def test_baseline_must_match_the_explainer(self):
        model = relu_net()
        x = images(4) * 0.5 + 0.5  # minimum >= 0.5: "black" differs from zero
        y = predicted(model, x)
        kw = {"method": "IntegratedGradients", "n_steps": 128}
        good = Completeness(perturb_baseline="zero")(model, x, y, explain_kwargs=kw)
        bad = Completeness(perturb_baseline="black", rtol=0.01)(model, x, y, explain_kwargs=kw)
        assert good.mean() == 1.0 and bad.mean() < 1.0

    def test_output_func_and_tolerances(self):
        model = linear_model()
        x = images(3, (1, 3, 4))
        y = predicted(model, x)
        a = torch.zeros(3, 1, 3, 4)
        m = Completeness(perturb_baseline="zero", output_func=lambda d: d * 0.0)
        np.testing.assert_array_equal(m(model, x, y, a), 1.0)
        with pytest.raises(TypeError, match="output_func"):
            Completeness(output_func=3)
        with pytest.raises(ValueError):
            Completeness(rtol=-1)

    def test_absolute_and_relative_tolerance_known_answers(self):
        """On a linear model with a zero baseline, a = W_y * x is complete; an offset e added to
        one element gives the residual |e|: it passes iff |e| <= atol + rtol * |f(x) - f(0)|."""
        model = linear_model()
        x = images(4, (1, 3, 4)) + 0.5
        y = predicted(model, x)
        w = model[1].weight.detach()[y].reshape(4, 1, 3, 4)
        delta = (x * w).reshape(4, -1).sum(1).double()
        exact = (x * w).double()
        frac = torch.tensor([0.05, 0.15, -0.05, -0.15], dtype=torch.float64)
        a = exact.clone()
        a[:, 0, 0, 0] += frac * delta.abs()  # residuals 5 % and 15 % of |delta|
        rel = Completeness(perturb_baseline="zero", rtol=0.1, atol=0.0)
        np.testing.assert_array_equal(rel(model, x, y, a), [1.0, 0.0, 1.0, 0.0])
        np.testing.assert_allclose(rel.residuals_, (frac * delta).abs().numpy(), rtol=1e-5)
        np.testing.assert_allclose(rel.output_differences_, delta.numpy(), rtol=1e-5)
        b = exact.clone()
        b[:, 0, 0, 0] += torch.tensor([0.09, 0.11, -0.09, -0.11], dtype=torch.float64)
        absolute = Completeness(perturb_baseline="zero", rtol=0.0, atol=0.1)
        np.testing.assert_array_equal(absolute(model, x, y, b), [1.0, 0.0, 1.0, 0.0])
        both = Completeness(perturb_baseline="zero", rtol=0.1, atol=0.1)
        assert both(model, x, y, b).tolist() == [1.0, 1.0, 1.0, 1.0]
        # the residual mode returns |e|, and its direction flips (lower is better)
        res = Completeness(perturb_baseline="zero", return_residual=True)
        np.testing.assert_allclose(res(model, x, y, b), [0.09, 0.11, 0.09, 0.11], rtol=1e-4)
        assert res.higher_is_better is False and Completeness().higher_is_better is True
        assert Completeness.higher_is_better is True
        # a NaN attribution row is NaN with a reason, the others unaffected
        b[2, 0, 1, 1] = float("nan")
        m = Completeness(perturb_baseline="zero", rtol=0.0, atol=0.1, disable_warnings=True)
        out = m(model, x, y, b)
        assert np.isnan(out[2]) and "NaN" in m.nan_reasons_[2]
        np.testing.assert_array_equal(out[[0, 1, 3]], [1.0, 0.0, 0.0])

    def test_normalise_warns_and_default_is_off(self):
        assert not Completeness().normalise and not Completeness().abs
        with pytest.warns(EvalkitWarning, match="normalised"):
            Completeness(normalise=True)

    def test_two_rows_per_sample_one_runner_call(self):
        model = relu_net()
        x = images(5)
        y = predicted(model, x)
        w = wrap_model(model)
        a = torch.zeros(5, 1, 10, 10)
        w.counter.reset()
        Completeness()(w, x, y, a)
        # one call to check the labels' output shape, one runner call of 2N rows
        assert w.counter.rows == 2 * 5 + 1

    def test_quantus_exact_equality_always_fails(self, quantus):
        """Deviation C3: exact float equality (with normalisation on) rejects every sample."""
        model = linear_model()
        x = images(6, (1, 3, 4))
        y = predicted(model, x)
        a = ek.explain(model, x, y, method="IntegratedGradients", n_steps=8,
                       baselines=torch.zeros_like(x))
        q = quantus.Completeness(disable_warnings=True, perturb_baseline=0.0)
        q_scores = q(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(),
                     device="cpu")
        assert not any(q_scores)
        ours = Completeness(perturb_baseline=0.0)(model, x, y, a)
        np.testing.assert_array_equal(ours, 1.0)

    def test_metadata(self):
        assert get("Completeness") is Completeness
        assert Completeness.family == "axiomatic" and Completeness.higher_is_better


# ============================================================================ NonSensitivity
class _Toy(nn.Module):
    """Models on (N, 1, 2, 2) or (N, 1, 4, 4) inputs with one output."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        if self.kind == "sum":
            out = x.sum((1, 2, 3))
        elif self.kind == "constant":
            out = torch.full((x.shape[0],), 100.0) + 0 * x.sum((1, 2, 3))
        elif self.kind == "top_row":
            out = x[:, :, 0, :].sum((1, 2))
        else:  # "bottom_row"
            out = x[:, :, 1, :].sum((1, 2))
        return (out + self.dummy).reshape(-1, 1)


TOY_SCENARIOS = [
    # (model, x, a, features_in_step, expected violations)
    ("top_row", [[1.0, 2.0], [3.0, 4.0]], [[10.0, 10.0], [0.0, 0.0]], 2, 0),
    ("sum", [[5.0, 5.0], [5.0, 5.0]], "tiny", 2, 4),
    ("constant", "random4", "ones4", 2, 16),
    ("bottom_row", [[1.0, 2.0], [3.0, 4.0]], [[10.0, 10.0], [0.0, 0.0]], 1, 4),
]


class TestNonSensitivity:
    @pytest.mark.parametrize(("kind", "x", "a", "fis", "expected"), TOY_SCENARIOS)
    def test_toy_scenarios(self, kind, x, a, fis, expected):
        """The scenarios of Quantus' logic tests, on our own toy models."""
        gen = torch.Generator().manual_seed(0)
        xt = torch.rand(1, 1, 4, 4, generator=gen) if x == "random4" else torch.tensor([[x]])
        if a == "tiny":
            at = 1e-6 + 1e-6 * torch.rand(1, 1, 2, 2, generator=gen)
        elif a == "ones4":
            at = torch.ones(1, 1, 4, 4)
        else:
            at = torch.tensor([[a]])
        m = NonSensitivity(eps=1e-5, features_in_step=fis, perturb_baseline="uniform",
                           normalise=False, softmax=False)
        scores = m(_Toy(kind).eval(), xt, torch.zeros(1, dtype=torch.long), at)
        assert scores.tolist() == [expected]

    def test_counts_match_definition_on_a_network(self):
        model = relu_net(size=6)
        x = images(3, (1, 6, 6))
        y = predicted(model, x)
        a = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(2))
        a[a < 0.3] = 0.0
        m = NonSensitivity(eps=1e-3, normalise=False, softmax=False)
        scores = m(model, x, y, a)
        # by hand: replace each pixel by the per-sample minimum, one at a time
        with torch.no_grad():
            base = model(x).gather(1, y[:, None]).squeeze(1)
            expected = []
            for i in range(3):
                count = 0
                lo = x[i].min()
                for p in range(36):
                    xp = x[i : i + 1].clone().reshape(1, -1)
                    xp[0, p] = lo
                    change = (model(xp.reshape(1, 1, 6, 6))[0, y[i]] - base[i]).abs()
                    zero = a[i].reshape(-1)[p].abs() < 1e-3
                    count += int(bool(zero) == bool(change >= 1e-3))
                expected.append(count)
        assert scores.tolist() == expected
        assert m.sensitive_.shape == (3, 36)

    def test_linear_in_batch_size(self):
        model = relu_net(size=6)
        w = wrap_model(model)
        for n in (2, 6):
            x = images(n, (1, 6, 6))
            y = predicted(model, x)
            w.counter.reset()
            NonSensitivity(features_in_step=4)(w, x, y, torch.rand(n, 1, 6, 6))
            # one runner call over N x (groups + 1) rows (+ one cached label-check forward)
            assert w.counter.rows - n * (36 // 4 + 1) in (0, 1)
            assert w.counter.calls <= 2

    def test_per_sample_independent_of_batch(self):
        model = relu_net(size=6)
        x = images(5, (1, 6, 6))
        y = predicted(model, x)
        a = torch.rand(5, 1, 6, 6, generator=torch.Generator().manual_seed(3))
        full = NonSensitivity(eps=1e-2, perturb_baseline="uniform")(model, x, y, a)
        part = NonSensitivity(eps=1e-2, perturb_baseline="uniform")(model, x[1:3], y[1:3], a[1:3])
        np.testing.assert_array_equal(part, full[1:3])

    def test_channel_values_grouping_and_rgb(self):
        model = relu_net(in_ch=3, size=6)
        x = images(2, (3, 6, 6))
        y = predicted(model, x)
        a1 = torch.rand(2, 1, 6, 6)
        px = NonSensitivity(normalise=False)(model, x, y, a1)
        assert (px <= 36).all()
        cv = NonSensitivity(normalise=False, grouping="channel_values")(model, x, y, a1)
        assert (cv <= 108).all()

    def test_matches_quantus_060_per_channel_value(self, quantus):
        """Quantus 0.6.0 perturbs each channel value alone (features_in_step=1) and XORs per
        feature: the same count as grouping='channel_values'."""
        model = relu_net(in_ch=1, size=6)
        x = images(4, (1, 6, 6))
        y = predicted(model, x)
        a = torch.rand(4, 1, 6, 6, generator=torch.Generator().manual_seed(4))
        a[a < 0.4] = 0.0
        q = quantus.NonSensitivity(eps=1e-3, abs=True, normalise=False, disable_warnings=True)
        q_scores = q(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a.numpy(),
                     softmax=False, device="cpu")
        ours = NonSensitivity(eps=1e-3, normalise=False, softmax=False,
                              grouping="channel_values")(model, x, y, a)
        np.testing.assert_array_equal(ours, np.asarray(q_scores, dtype=float))


# ============================================================================ InputInvariance
def mlp():
    return seeded(lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 16), nn.ReLU(),
                                        nn.Linear(16, 4)))


class TestShiftedModel:
    @pytest.mark.parametrize(
        ("factory", "shape", "kind"),
        [
            (lambda: relu_net(in_ch=3, size=8), (3, 8, 8), "bias"),
            (lambda: relu_net(in_ch=3, size=8, padding=1), (3, 8, 8), "bias map"),
            (lambda: relu_net(in_ch=3, size=8, bias=False), (3, 8, 8), "bias"),
            (mlp, (3, 6, 6), "bias"),
        ],
    )
    @pytest.mark.parametrize("shift", [-1.0, np.array([0.5, -0.2, 1.5]).reshape(3, 1, 1)])
    def test_shifted_copy_computes_the_same_function(self, factory, shape, kind, shift):
        model = factory()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        x = images(5, shape)
        m = InputInvariance(input_shift=shift)
        work, name, got_kind = m.shifted_model(wrap_model(model), x)
        assert got_kind == kind and name in ("0", "1")
        d = torch.as_tensor(shift, dtype=x.dtype)
        with torch.no_grad():
            torch.testing.assert_close(work(x + d), model(x), rtol=1e-5, atol=1e-5)
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())

    def test_trained_model_with_padded_bias_free_first_conv(self):
        from evalkit.datasets import make_shapes
        from evalkit.zoo import load_shapes_cnn

        model = load_shapes_cnn()
        data = make_shapes(4, seed=2)
        x = torch.as_tensor(data.x)
        m = InputInvariance(input_shift=-0.5)
        work, name, kind = m.shifted_model(wrap_model(model), x)
        assert name == "features.conv1.conv" and kind == "bias map"
        with torch.no_grad():
            torch.testing.assert_close(work(x - 0.5), model(x), rtol=1e-4, atol=1e-4)
        scores = m(model, data.x, data.y, explain_kwargs={"method": "Gradient"})
        np.testing.assert_array_equal(scores, 1.0)

    def test_input_transformed_before_first_layer(self):
        class Scaled(nn.Module):
            def __init__(self):
                super().__init__()
                self.net = relu_net()

            def forward(self, x):
                return self.net(x * 2.0)

        model = seeded(Scaled)
        with pytest.raises(ValueError, match="does not receive the model's input"):
            InputInvariance()(model, images(2), torch.zeros(2, dtype=torch.long),
                              explain_kwargs={"method": "Gradient"})

    def test_no_first_layer_and_callable_model(self):
        class NoLayer(nn.Module):
            def __init__(self):
                super().__init__()
                self.w = nn.Parameter(torch.ones(()))

            def forward(self, x):
                return x.reshape(len(x), -1)[:, :3] * self.w

        with pytest.raises(ValueError, match="none was called"):
            InputInvariance()(seeded(NoLayer), images(2), torch.zeros(2, dtype=torch.long),
                              torch.ones(2, 1, 10, 10))
        fn = wrap_model(lambda arr: arr.reshape(len(arr), -1)[:, :3])
        with pytest.raises(NotImplementedError, match=r"torch\.nn\.Module"):
            InputInvariance()(fn, images(2).numpy(), np.zeros(2, dtype=int),
                              np.ones((2, 1, 10, 10)))

    def test_bad_shift(self):
        with pytest.raises(TypeError, match="input_shift"):
            InputInvariance(input_shift="up")
        model = relu_net()
        with pytest.raises(ValueError, match="does not broadcast"):
            InputInvariance(input_shift=np.ones(4))(model, images(2), torch.zeros(2).long(),
                                                    torch.ones(2, 1, 10, 10))


@pytest.fixture(scope="module")
def data():
    model = relu_net(in_ch=3, size=8, padding=1)
    x = images(6, (3, 8, 8))
    return model, x, predicted(model, x)


class TestInputInvariance:
    """Kindermans et al. 2019: gradients are input invariant, Input x Gradient and IG with a
    zero reference point are not, IG with a reference that moves with the input is."""

    @pytest.mark.parametrize(
        ("method", "kw", "invariant"),
        [
            ("Gradient", {}, True),
            ("Saliency", {}, True),
            ("InputXGradient", {}, False),
            ("IntegratedGradients", {"n_steps": 16}, False),
        ],
    )
    def test_paper_statements(self, data, method, kw, invariant):
        model, x, y = data
        m = InputInvariance(input_shift=-1.0)
        scores = m(model, x, y, explain_kwargs={"method": method, **kw})
        np.testing.assert_array_equal(scores, 1.0 if invariant else 0.0)
        if invariant:
            assert m.residuals_.max() < 1e-4
        else:
            assert m.residuals_.min() > 0.05

    def test_integrated_gradients_with_moving_reference_is_invariant(self, data):
        model, x, y = data

        def ig_min_baseline(mdl, xs, ys):
            base = xs.amin(dim=(1, 2, 3), keepdim=True).expand_as(xs).contiguous()
            return ek.explain(mdl, xs, ys, method="IntegratedGradients", n_steps=16,
                              baselines=base)

        scores = InputInvariance(input_shift=-1.0)(model, x, y, explain_fn=ig_min_baseline)
        np.testing.assert_array_equal(scores, 1.0)

    def test_residual_mode_and_user_model_untouched(self, data):
        model, x, y = data
        state = {k: v.clone() for k, v in model.state_dict().items()}
        m = InputInvariance(return_residual=True)
        assert m.higher_is_better is False and InputInvariance().higher_is_better is True
        r = m(model, x, y, explain_kwargs={"method": "InputXGradient"})
        np.testing.assert_allclose(r, m.residuals_)
        assert (r > 0.05).all()
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        assert m.first_layer_ == "0" and m.compensation_ == "bias map"

    def test_normalise_warning(self):
        with pytest.warns(EvalkitWarning):
            InputInvariance(normalise=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            InputInvariance()

    def test_against_quantus_on_an_unpadded_conv(self, quantus):
        """Quantus shifts every input element except the first (its perturb_batch passes
        ``indices[i][1:]``), so its shifted model sees a different input and the gradient can
        fail; with the first element made irrelevant (zero corner weights) both agree."""
        model = relu_net(in_ch=1, size=10)
        x = images(4)
        y = predicted(model, x)

        def q_grad(model, inputs, targets, **kw):
            xs = torch.as_tensor(inputs).requires_grad_(True)
            out = model(xs).gather(1, torch.as_tensor(targets).long()[:, None]).sum()
            (g,) = torch.autograd.grad(out, xs)
            return g.detach().numpy()

        def q_ixg(model, inputs, targets, **kw):
            return q_grad(model, inputs, targets) * inputs

        def run(mdl, fn):
            a = fn(mdl, x.numpy(), y.numpy())
            q_scores = quantus.InputInvariance(disable_warnings=True)(
                model=mdl, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a, explain_func=fn,
                device="cpu")
            ours = InputInvariance()(mdl, x, y, a, explain_fn=lambda m, xs, ys: torch.as_tensor(
                fn(m, xs.detach().numpy(), ys.numpy())))
            return np.asarray(q_scores, dtype=float), ours

        q, ours = run(model, q_grad)
        np.testing.assert_array_equal(ours, 1.0)
        assert q.min() == 0.0  # the unshifted first element changes the explanation

        with torch.no_grad():
            model[0].weight[:, :, 0, 0] = 0.0  # the first element no longer matters
        for fn, expected in ((q_grad, 1.0), (q_ixg, 0.0)):
            q, ours = run(model, fn)
            np.testing.assert_array_equal(q, expected)
            np.testing.assert_array_equal(ours, expected)


def test_metadata():
    for cls in (Completeness, NonSensitivity, InputInvariance):
        assert cls.family == "axiomatic"
        assert get(cls.__name__) is cls
    assert not NonSensitivity.higher_is_better


def _input_gradient(m, xs, ys):
    xs = xs.clone().requires_grad_(True)
    m(xs).gather(1, ys.view(-1, 1)).sum().backward()
    return xs.grad


def test_input_invariance_with_per_sample_gradients_through_vmap():
    """torch.func's per-sample gradients (vmap over grad) run the shifted copy on batched
    tensors: the metric must not inspect them (a gradient is input invariant here)."""
    from torch.func import grad, vmap

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(5, 6)
    y = model(x).argmax(1)

    def per_sample_grad(m, xs, ys):
        def f(xi, yi):
            return m(xi.unsqueeze(0))[0].gather(0, yi.view(1)).sum()

        return vmap(grad(f))(xs, ys)

    scores = InputInvariance(input_shift=-1.0)(model, x, y, per_sample_grad(model, x, y),
                                               explain_fn=per_sample_grad)
    np.testing.assert_array_equal(scores, np.ones(5))


@pytest.mark.parametrize(("n", "batch_size"), [(3, None), (4, None), (6, 4)])
def test_input_invariance_sequence_first_model_with_a_per_step_shift(n, batch_size):
    """A sequence-first model transposes (N, T, F) before its first Linear: the bias map of a
    shift that varies over T must follow the layer's own input layout, also where a chunk
    has as many rows as there are time steps."""

    class SeqFirst(nn.Module):
        def __init__(self, t: int, f: int) -> None:
            super().__init__()
            self.fc = nn.Linear(f, 4)
            self.head = nn.Linear(4 * t, 3)

        def forward(self, x):
            h = torch.tanh(self.fc(x.transpose(0, 1)))  # (T, N, 4)
            return self.head(h.transpose(0, 1).reshape(x.shape[0], -1))

    torch.manual_seed(0)
    t, f = 4, 3
    model = SeqFirst(t, f).eval()
    shift = torch.randn(t, f)
    x = torch.randn(n, t, f)
    y = model(x).argmax(1)
    residual = InputInvariance(input_shift=shift, return_residual=True)(
        wrap_model(model, batch_size=batch_size), x, y, _input_gradient(model, x, y),
        explain_fn=_input_gradient)
    assert residual.shape == (n,)
    assert np.all(residual < 1e-5)  # the gradient of the compensated copy is the model's
