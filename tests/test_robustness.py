"""Tests of the robustness family (evalkit/metrics/robustness/).

Known answers (identity, constant and weight-times-input explainers on linear models, with
deterministic perturbations computed by hand), direction checks, prediction-change semantics,
seeding and independence from the batch, explain-call batching, sharing through the cache, and
edge cases. Cross-checks with the released quantus are in test_robustness_quantus.py.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit.cache import explanation_cache, forward_cache
from evalkit.explain import numpy_explain_fn
from evalkit.metrics import (
    AvgSensitivity,
    Consistency,
    Continuity,
    LocalLipschitzEstimate,
    MaxSensitivity,
    RelativeInputStability,
    RelativeOutputStability,
    RelativeRepresentationStability,
    get,
    list_metrics,
)
from evalkit.metrics.robustness import translation_shifts
from evalkit.perturb import GaussianNoise, Noise, UniformNoise

NOISE_METRICS = [LocalLipschitzEstimate, MaxSensitivity, AvgSensitivity, RelativeInputStability,
                 RelativeOutputStability]


# ============================================================================ helpers
class FixedNoise(Noise):
    """Deterministic noise: draw k adds ``scales[k] * pattern`` (the same for every sample)."""

    def __init__(self, pattern: torch.Tensor, scales: list[float]) -> None:
        self.pattern = pattern
        self.scales = scales

    def sample(self, keys, shape, dtype):
        k = shape[0]
        assert k == len(self.scales)
        s = torch.tensor(self.scales, dtype=dtype).reshape(k, *([1] * (len(shape) - 1)))
        block = s * self.pattern.to(dtype).reshape(1, *shape[1:])
        return block.unsqueeze(0).expand(len(keys), *shape).clone()

    def __repr__(self) -> str:
        return f"FixedNoise({self.pattern.tolist()}, {self.scales})"


class Linear(nn.Module):
    """f(x) = W flatten(x) + b."""

    def __init__(self, d: int, c: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(d, c)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(c, d, generator=g))
            self.fc.bias.copy_(torch.randn(c, generator=g))

    def forward(self, x):
        return self.fc(x.reshape(x.shape[0], -1))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).flatten(1))


CNN = SmallCNN().eval()


def cnn_data(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    with torch.no_grad():
        y = CNN(x).argmax(1)
    return x, y


def identity_explain(model, x, y, **kw):
    return x.clone()


def constant_explain(model, x, y, **kw):
    return torch.full_like(x, 0.5)


def w_times_x(model, x, y, **kw):
    """Weight-times-input attribution of a Linear model: W[y] * x (exact for linear models)."""
    w = model.fc.weight.detach()[y]
    return (w * x.reshape(x.shape[0], -1)).reshape(x.shape)


class CountingExplain:
    """An explain function that counts its calls and rows (and records its inputs)."""

    def __init__(self, fn=None) -> None:
        self.fn = fn or (lambda model, x, y, **kw: ek.explain(model, x, y, method="Saliency"))
        self.calls = 0
        self.rows = 0
        self.inputs: list[torch.Tensor] = []

    def __call__(self, model, x, y, **kw):
        self.calls += 1
        self.rows += int(x.shape[0])
        self.inputs.append(x.detach().clone())
        return self.fn(model, x, y, **kw)


def linear_data(n: int = 4, d: int = 6, c: int = 3, seed: int = 1):
    model = Linear(d, c, seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 100)
    x = 0.5 + 0.5 * torch.rand(n, d, generator=g)  # bounded away from 0
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


# ============================================================================ metadata
class TestMetadata:
    def test_registered_with_directions(self):
        frame = list_metrics("robustness").set_index("name")
        expected = {"LocalLipschitzEstimate", "MaxSensitivity", "AvgSensitivity", "Continuity",
                    "Consistency", "RelativeInputStability", "RelativeOutputStability",
                    "RelativeRepresentationStability"}
        assert expected <= set(frame.index)
        for name in expected - {"Consistency"}:
            assert not frame.loc[name, "higher_is_better"], name
            assert frame.loc[name, "re_explains"], name
        # Quantus labels Consistency LOWER (deviation C10); the paper treats higher as better
        assert frame.loc["Consistency", "higher_is_better"]
        assert frame.loc["Consistency", "set_level"]
        assert not frame.loc["Consistency", "re_explains"]
        assert get("maxsensitivity") is MaxSensitivity

    @pytest.mark.parametrize("cls", [*NOISE_METRICS, Continuity, Consistency,
                                     RelativeRepresentationStability])
    def test_params_round_trip(self, cls):
        m = cls()
        clone = m.clone()
        assert clone.get_params() == m.get_params()
        assert repr(cls()) == f"{cls.__name__}()"

    @pytest.mark.parametrize("cls", [*NOISE_METRICS, Continuity, Consistency,
                                     RelativeRepresentationStability])
    def test_docstrings_state_quantus_deviations(self, cls):
        doc = cls.__doc__
        assert doc and "Deviations from Quantus" in doc and "Reference" in doc and "<<" not in doc
        assert ("Lower is better" in doc) != cls.higher_is_better

    def test_quantus_prediction_flag_mapping(self):
        assert MaxSensitivity().on_prediction_change_ == "keep"
        assert RelativeInputStability().on_prediction_change_ == "drop_draw"
        m = MaxSensitivity(return_nan_when_prediction_changes=True)
        assert m.on_prediction_change_ == "drop_draw"
        assert m.clone().on_prediction_change_ == "drop_draw"
        assert RelativeInputStability(
            return_nan_when_prediction_changes=False).on_prediction_change_ == "keep"
        with pytest.raises(ValueError, match="pass only one of them"):
            MaxSensitivity(return_nan_when_prediction_changes=True,
                           on_prediction_change="nan_sample")
        with pytest.raises(ValueError, match="on_prediction_change"):
            MaxSensitivity(on_prediction_change="sometimes")

    def test_parameter_validation(self):
        with pytest.raises(ValueError, match="nr_samples"):
            MaxSensitivity(nr_samples=0)
        with pytest.raises(ValueError, match="perturb_func"):
            LocalLipschitzEstimate(perturb_func="salt")
        with pytest.raises(ValueError, match="norm_numerator"):
            LocalLipschitzEstimate(norm_numerator="l3")
        with pytest.raises(ValueError, match="upper_bound"):
            RelativeInputStability(lower_bound=0.3, upper_bound=0.2)
        with pytest.raises(ValueError, match="eps_min"):
            RelativeInputStability(eps_min=0)
        with pytest.raises(ValueError, match="translation_x"):
            Continuity(perturb_func="rotation")
        with pytest.raises(ValueError, match="discretise_func"):
            Consistency(discretise_func="first_n")
        with pytest.raises(TypeError, match="unexpected keyword"):
            MaxSensitivity(similarity_func="difference")


# ============================================================================ known answers
class TestKnownAnswers:
    def test_lipschitz_of_identity_explainer_is_one(self):
        x, y = cnn_data()
        for noise in ("gaussian", "uniform"):
            m = LocalLipschitzEstimate(nr_samples=7, perturb_func=noise, normalise=False, seed=3)
            out = m(CNN, x, y, explain_fn=identity_explain)
            np.testing.assert_allclose(out, 1.0, rtol=1e-6)  # float32 input differences
            np.testing.assert_allclose(m.draw_scores_, 1.0, rtol=1e-6)  # float32 input differences

    def test_lipschitz_l1_over_l2_with_fixed_noise(self):
        x, y = cnn_data(3)
        d = x[0].numel()
        pattern = torch.where(torch.arange(d) % 2 == 0, 1.0, -1.0).reshape(x.shape[1:])
        m = LocalLipschitzEstimate(nr_samples=3, perturb_func=FixedNoise(pattern, [0.1, -0.2, 0.3]),
                                   norm_numerator="l1", norm_denominator="l2", normalise=False)
        out = m(CNN, x, y, explain_fn=identity_explain)
        np.testing.assert_allclose(out, math.sqrt(d), rtol=1e-6)  # ||v||_1/||v||_2 for +-c

    @pytest.mark.parametrize("cls", [*NOISE_METRICS, Continuity])
    def test_constant_explainer_is_perfectly_robust(self, cls):
        x, y = cnn_data()
        kw = {"nr_steps": 6} if cls is Continuity else {"nr_samples": 5, "seed": 0}
        out = cls(on_prediction_change="keep", **kw)(CNN, x, y, explain_fn=constant_explain)
        np.testing.assert_array_equal(out, 0.0)

    def test_linear_model_closed_forms(self):
        model, x, y = linear_data()
        w = model.fc.weight.detach().double()
        d = x.shape[1]
        delta = torch.linspace(-1, 1, d).double() * 0.05
        scales = [1.0, -2.0, 0.5]
        noise = FixedNoise(delta.float(), scales)
        a = w_times_x(model, x, y).double()
        xd = x.double()
        # the perturbed inputs are float32: take the differences the model really saw
        deltas = [(x + s * delta.float()).double() - xd for s in scales]

        # MaxSensitivity / AvgSensitivity: ||W_y * delta_k|| / ||W_y * x||
        ratios = torch.stack([(w[y] * dk).norm(dim=1) / a.norm(dim=1) for dk in deltas], 1)
        ms = MaxSensitivity(nr_samples=3, perturb_func=noise)(model, x, y, explain_fn=w_times_x)
        av = AvgSensitivity(nr_samples=3, perturb_func=noise)(model, x, y, explain_fn=w_times_x)
        np.testing.assert_allclose(ms, ratios.amax(1).numpy(), rtol=1e-5)
        np.testing.assert_allclose(av, ratios.mean(1).numpy(), rtol=1e-5)

        # Lipschitz (L2/L2): ||W_y * delta_k|| / ||delta_k||
        lips = torch.stack([(w[y] * dk).norm(dim=1) / dk.norm(dim=1) for dk in deltas], 1)
        ll = LocalLipschitzEstimate(nr_samples=3, perturb_func=noise, normalise=False)(
            model, x, y, explain_fn=w_times_x)
        np.testing.assert_allclose(ll, lips.amax(1).numpy(), rtol=1e-5)

        # RIS: the relative change of W_y * x is delta / x, the same as the input's: exactly 1
        ris = RelativeInputStability(nr_samples=3, perturb_func=noise,
                                     on_prediction_change="keep")(model, x, y,
                                                                  explain_fn=w_times_x)
        np.testing.assert_allclose(ris, 1.0, rtol=1e-5)

        # ROS: ||delta / x|| / ||W delta||
        ros_k = torch.stack([(dk / xd).norm(dim=1) / (dk @ w.T).norm(dim=1) for dk in deltas], 1)
        ros = RelativeOutputStability(nr_samples=3, perturb_func=noise,
                                      on_prediction_change="keep")(model, x, y,
                                                                   explain_fn=w_times_x)
        np.testing.assert_allclose(ros, ros_k.amax(1).numpy(), rtol=1e-4)

        # RRS with the linear layer as representation: ||delta/x|| / ||W delta / (W x + b)||
        h = xd @ w.T + model.fc.bias.detach().double()
        rrs_k = torch.stack([(dk / xd).norm(dim=1) / ((dk @ w.T) / h).norm(dim=1)
                             for dk in deltas], 1)
        rrs = RelativeRepresentationStability(
            nr_samples=3, perturb_func=noise, layer_names=["fc"],
            on_prediction_change="keep")(model, x, y, explain_fn=w_times_x)
        np.testing.assert_allclose(rrs, rrs_k.amax(1).numpy(), rtol=1e-4)

    def test_ris_is_one_for_input_x_gradient_on_linear_model_with_random_noise(self):
        model, x, y = linear_data(n=5, d=10)
        m = RelativeInputStability(nr_samples=20, seed=0, on_prediction_change="keep",
                                   lower_bound=0.01, upper_bound=0.05)
        out = m(model, x, y, explain_kwargs={"method": "InputXGradient"})
        np.testing.assert_allclose(out, 1.0, rtol=1e-4)
        np.testing.assert_allclose(m.draw_scores_, 1.0, rtol=1e-4)

    def test_avg_is_mean_of_draws_and_below_max(self):
        x, y = cnn_data()
        mx = MaxSensitivity(nr_samples=8, seed=5)
        av = AvgSensitivity(nr_samples=8, seed=5)
        a = ek.explain(CNN, x, y, method="Saliency")
        smax = mx(CNN, x, y, a)
        savg = av(CNN, x, y, a)
        np.testing.assert_allclose(savg, av.draw_scores_.mean(1), rtol=1e-12)
        np.testing.assert_allclose(smax, mx.draw_scores_.max(1), rtol=1e-12)
        np.testing.assert_allclose(mx.draw_scores_, av.draw_scores_, rtol=1e-12)  # same draws
        assert (savg <= smax + 1e-12).all() and (savg > 0).all()

    def test_absolute_sensitivity_without_denominator(self):
        x, y = cnn_data(3)
        a = ek.explain(CNN, x, y, method="Saliency")
        rel = MaxSensitivity(nr_samples=4, seed=1)(CNN, x, y, a)
        absolute = MaxSensitivity(nr_samples=4, seed=1, norm_denominator=None)(CNN, x, y, a)
        norm_a = a.double().reshape(3, -1).norm(dim=1).numpy()
        np.testing.assert_allclose(absolute / norm_a, rel, rtol=1e-6)

    def test_direction_noise_level(self):
        """More noise -> larger sensitivity (the metrics measure what they claim)."""
        x, y = cnn_data(8)
        a = ek.explain(CNN, x, y, method="Saliency")
        small = AvgSensitivity(nr_samples=8, lower_bound=0.01, seed=0)(CNN, x, y, a)
        large = AvgSensitivity(nr_samples=8, lower_bound=0.5, seed=0)(CNN, x, y, a)
        assert (large > small).all()

    def test_direction_smooth_vs_noisy_explainer(self):
        """An explainer that ignores the input is more robust than one that amplifies it."""
        model, x, y = linear_data(n=6, d=8)
        steep = LocalLipschitzEstimate(nr_samples=10, seed=0, normalise=False)(
            model, x, y, explain_fn=lambda m, xs, ys: 10 * xs)
        flat = LocalLipschitzEstimate(nr_samples=10, seed=0, normalise=False)(
            model, x, y, explain_fn=lambda m, xs, ys: 0.1 * xs)
        np.testing.assert_allclose(steep, 10.0, rtol=1e-6)
        np.testing.assert_allclose(flat, 0.1, rtol=1e-6)


# ============================================================================ Continuity
def _manual_shift(img: np.ndarray, shift: int, fill: float, axis: int) -> np.ndarray:
    out = np.full_like(img, fill)
    length = img.shape[axis]
    for j in range(length):
        src = j - shift
        if 0 <= src < length:
            if axis == img.ndim - 1:
                out[..., j] = img[..., src]
            else:
                out[..., j, :] = img[..., src, :]
    return out


class TestContinuity:
    def test_shift_grid_matches_quantus(self):
        assert translation_shifts(28, 28) == list(range(-26, 29, 2))
        assert translation_shifts(5, 11) == list(range(-4, 7))
        with pytest.raises(ValueError, match="nr_steps"):
            translation_shifts(5, 12)

    @pytest.mark.parametrize(("func", "axis"), [("translation_x", 3), ("translation_y", 2)])
    @pytest.mark.parametrize("baseline", ["black", "white", 0.25])
    def test_identity_explainer_by_hand(self, func, axis, baseline):
        g = torch.Generator().manual_seed(2)
        x = torch.rand(2, 2, 5, 6, generator=g)
        y = torch.zeros(2, dtype=torch.int64)
        model = Linear(2 * 5 * 6, 3).eval()
        m = Continuity(nr_steps=5, perturb_func=func, perturb_baseline=baseline,
                       abs=False, normalise=False)
        out = m(model, x, y, explain_fn=identity_explain)
        length = x.shape[axis]
        expected = []
        for i in range(2):
            img = x[i].numpy().astype(np.float64)
            fill = {"black": img.min(), "white": img.max()}.get(baseline, baseline)
            best = -np.inf
            for s in translation_shifts(length, 5):
                d = (img - _manual_shift(img, s, fill, axis - 1)).ravel()
                if np.linalg.norm(d) > 0:
                    best = max(best, np.abs(d).sum() / np.linalg.norm(d))
            expected.append(best)
        np.testing.assert_allclose(out, expected, rtol=1e-6)

    def test_linear_model_weight_times_input_closed_form(self):
        """Continuity of W_y * x on a linear model over (N, C, T) series: the explanation
        changes by W_y * (x - x'), so C = max_k ||W_y * d_k||_1 / ||d_k||_2 for the shifted
        copies' differences d_k (zero fill)."""
        n, t = 4, 7
        model = Linear(t, 3, seed=5).eval()
        g = torch.Generator().manual_seed(5)
        x = torch.rand(n, 1, t, generator=g) + 0.1
        with torch.no_grad():
            y = model(x).argmax(1)
        out = Continuity(nr_steps=5, perturb_baseline=0.0, abs=False, normalise=False)(
            model, x, y, explain_fn=w_times_x)
        w = model.fc.weight.detach().double()[y]
        expected = []
        for i in range(n):
            xi = x[i, 0].double().numpy()
            best = -np.inf
            for shift in translation_shifts(t, 5):
                d = xi - _manual_shift(xi[None], shift, 0.0, 1)[0]
                if np.linalg.norm(d) > 0:
                    best = max(best, np.abs(w[i].numpy() * d).sum() / np.linalg.norm(d))
            expected.append(best)
        np.testing.assert_allclose(out, expected, rtol=1e-6)

    def test_honours_perturbation_choice(self):
        """Quantus ignores perturb_func/perturb_baseline (deviation C19); here each choice
        matters."""
        x, y = cnn_data(3)
        a = ek.explain(CNN, x, y, method="Saliency")
        kw = dict(nr_steps=6, normalise=False)
        tx = Continuity(perturb_func="translation_x", **kw)(CNN, x, y, a)
        ty = Continuity(perturb_func="translation_y", **kw)(CNN, x, y, a)
        white = Continuity(perturb_func="translation_x", perturb_baseline="white", **kw)(
            CNN, x, y, a)
        noise = Continuity(perturb_func="gaussian", perturb_std=0.05, seed=0, **kw)(CNN, x, y, a)
        for other in (ty, white, noise):
            assert not np.allclose(tx, other)
        # a callable perturbation: shifting brightness by step-dependent amounts
        calls = []

        def brighten(xs, step):
            calls.append(step)
            return xs + 0.01 * (step + 1)

        out = Continuity(perturb_func=brighten, **kw)(CNN, x, y, a)
        assert sorted(set(calls)) == list(range(6)) and np.isfinite(out).all()

    def test_stochastic_flag_follows_the_perturbation(self):
        """Translations with a fixed baseline are deterministic; noise, or a translation that
        shifts in random values, is stochastic (evaluate() and metaeval seed by the flag)."""
        assert not Continuity().stochastic
        assert Continuity(perturb_func="gaussian").stochastic
        assert Continuity(perturb_func="uniform").stochastic
        assert Continuity(perturb_baseline="uniform").stochastic
        x, y = cnn_data(3)
        a = ek.explain(CNN, x, y, method="Saliency")
        kw = dict(nr_steps=3, perturb_baseline="uniform")
        first = Continuity(seed=1, **kw)(CNN, x, y, a)
        assert not np.allclose(first, Continuity(seed=2, **kw)(CNN, x, y, a))
        np.testing.assert_array_equal(Continuity(nr_steps=3, seed=1)(CNN, x, y, a),
                                      Continuity(nr_steps=3, seed=2)(CNN, x, y, a))

    def test_noise_continuity_equals_lipschitz_with_l1_l2(self):
        x, y = cnn_data(4)
        a = ek.explain(CNN, x, y, method="Saliency")
        c = Continuity(nr_steps=5, perturb_func="gaussian", perturb_std=0.05, seed=9, abs=False,
                       normalise=False)(CNN, x, y, a)
        ll = LocalLipschitzEstimate(nr_samples=5, perturb_std=0.05, seed=9, normalise=False,
                                    norm_numerator="l1", norm_denominator="l2")(CNN, x, y, a)
        np.testing.assert_allclose(c, ll, rtol=1e-10)

    def test_uses_given_attribution_normalised_once(self):
        """The given `a` is the reference (Quantus re-explains x and normalises twice)."""
        x, y = cnn_data(3)
        counter = CountingExplain()
        a = counter(CNN, x, y)
        counter.calls = counter.rows = 0
        Continuity(nr_steps=4)(CNN, x, y, a, explain_fn=counter)
        assert counter.rows == 3 * 4  # only the perturbed inputs; x itself is not re-explained

    def test_tabular_translation_is_rejected(self):
        model, x, y = linear_data()
        with pytest.raises(ValueError, match=r"Translations need .* Use a noise perturbation"):
            Continuity(nr_steps=3)(model, x, y, explain_fn=identity_explain)
        out = Continuity(nr_steps=3, perturb_func="uniform", lower_bound=0.1, seed=0)(
            model, x, y, explain_fn=identity_explain)
        assert np.isfinite(out).all()


# ============================================================================ Consistency
Y6 = torch.zeros(6, dtype=torch.int64)  # labels (unused by Consistency; the target needs them)


class TestConsistency:
    @staticmethod
    def _setup():
        # 2 features -> predicted class = argmax of (x0, x1, 0.5)
        model = Linear(2, 3).eval()
        with torch.no_grad():
            model.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
            model.fc.bias.copy_(torch.tensor([0.0, 0.0, 0.5]))
        x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.9, 0.0], [0.0, 0.0],
                          [0.0, 3.0]])
        # predictions: 0, 0, 1, 0, 2, 1
        return model, x

    def test_top_n_matches_the_stable_sort(self):
        # the selection (argpartition) and the stable-sort fallback for rows with a tie at the
        # n-th value or a NaN both give the set of a stable descending sort's first n: ties
        # (equal |a|, +-a, zeros) go to the lower index, NaN counts as the largest
        from evalkit.metrics.robustness.consistency import _top_n_set

        gen = torch.Generator().manual_seed(0)
        a32 = torch.randint(-3, 4, (200, 12), generator=gen).to(torch.float32) / 2
        a32[0] = 0.0
        cases = [a32.double(), a32.double() + 1e-12 * torch.rand(200, 12, generator=gen,
                                                                 dtype=torch.float64),
                 torch.where(torch.rand(200, 12, generator=gen) < 0.1,
                             torch.tensor(float("nan"), dtype=torch.float64), a32.double())]
        for flat in cases:
            for n in (1, 5, 12):
                expected = torch.sort(flat.abs(), dim=1, descending=True,
                                      stable=True).indices[:, :n]
                assert torch.equal(_top_n_set(flat, n), torch.sort(expected, dim=1).values)
            assert _top_n_set(flat, 0).shape == (200, 0)

    def test_hand_computed(self):
        model, x = self._setup()
        # top-1 feature labels: f0, f0, f0, f1, f1, f1
        a = torch.tensor([[1.0, 0.1], [2.0, 0.0], [0.9, 0.2], [0.1, 1.0], [0.0, 5.0],
                          [0.3, 0.4]])
        m = Consistency(discretise_func="top_n", n=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = m(model, x, Y6, a)
        # group f0 = {0, 1, 2} with preds {0, 0, 1}; group f1 = {3, 4, 5} with preds {0, 2, 1}
        np.testing.assert_allclose(out, [0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
        # global: ordered pairs with equal labels: 6 + 6; with equal predictions: 2 + 0
        assert m.consistency_ == pytest.approx(2 / 12)

    def test_singleton_label_is_nan_with_reason(self):
        model, x = self._setup()
        a = torch.eye(2)[[0, 0, 1, 0, 0, 0]] + 0.01
        m = Consistency(discretise_func="top_n", n=1)
        with pytest.warns(ek.UndefinedScoreWarning):
            out = m(model, x, Y6, a)
        assert math.isnan(out[2]) and "no other sample" in m.nan_reasons_[2]
        # the other five share f0 and have predictions 0, 0, 0, 2, 1
        np.testing.assert_allclose(np.delete(out, 2), [0.5, 0.5, 0.5, 0.0, 0.0])

    def test_top_n_is_really_the_top_n(self):
        """Quantus' top_n_sign takes the first n entries (deviation C10): maps that agree on their
        first entries but have different most relevant features get the same label there."""
        a = torch.zeros(6, 1, 4, 4)
        for i in range(6):
            a[i, 0, 3, i % 4] = 1.0  # most relevant pixel in the last row; first row all 0
        m = Consistency(discretise_func="top_n_sign", n=1)
        labels = m._labels(a.double())
        assert len(set(labels.tolist())) == 4
        assert labels[0] == labels[4] and labels[1] == labels[5]

    def test_signs_and_other_discretisers(self):
        m = Consistency(discretise_func="top_n_sign", n=2, abs=False)
        a = torch.tensor([[3.0, -2.0, 0.1], [3.0, 2.0, 0.1], [1.0, -5.0, 0.0]]).double()
        labels = m._labels(a)
        assert labels[0] != labels[1]  # same top-2 set, different sign
        assert labels[0] == labels[2]  # same set {0, 1} with signs (+, -)
        assert Consistency(discretise_func="top_n", n=2)._labels(a).unique().numel() == 1
        rank = Consistency(discretise_func="rank")._labels(a)  # orders 0,2,1 / 0,1,2 / 0,2,1
        assert rank[0] == rank[2] and rank[0] != rank[1]
        assert Consistency(discretise_func="floating_points", n=0)._labels(
            torch.tensor([[1.2], [0.9], [3.0]]).double()).tolist()[:2] == [0, 0]
        custom = Consistency(discretise_func=lambda flat: (flat.sum(1) > 1).long())
        assert custom._labels(a).tolist() == [1, 1, 0]

    def test_independent_of_order_and_batch_size(self):
        model, x = self._setup()
        a = torch.tensor([[1.0, 0.1], [2.0, 0.0], [0.9, 0.2], [0.1, 1.0], [0.0, 5.0],
                          [0.3, 0.4]])
        m = Consistency(discretise_func="top_n", n=1)
        ref = m(model, x, Y6, a)
        perm = torch.tensor([5, 3, 1, 0, 4, 2])
        np.testing.assert_allclose(m(model, x[perm], Y6[perm], a[perm]), ref[perm.numpy()])
        np.testing.assert_allclose(m(model, x, Y6, a, batch_size=1), ref)


# ============================================================================ prediction changes
class TestPredictionChange:
    @staticmethod
    def _setup():
        """Class 0 iff sum(x) > 0.5 (two classes); sample sums 1.0; draw k shifts every
        element by scales[k], flipping the prediction when the shift is negative enough."""
        model = Linear(4, 2).eval()
        with torch.no_grad():
            model.fc.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
            model.fc.bias.copy_(torch.tensor([-0.5, 0.0]))
        x = torch.full((2, 4), 0.25)
        y = torch.zeros(2, dtype=torch.int64)
        # draws 1 and 3 flip (sum 1 + 4 * -0.2 = 0.2 < 0.5)
        noise = FixedNoise(torch.ones(4), [0.05, -0.2, 0.1, -0.2])
        return model, x, y, noise

    def explain(self, model, x, y, **kw):
        # a = x**2: the change of the explanation grows with the shift
        return x ** 2

    def test_modes(self):
        model, x, y, noise = self._setup()
        kw = dict(nr_samples=4, perturb_func=noise)
        keep = MaxSensitivity(**kw)
        out_keep = keep(model, x, y, explain_fn=self.explain)
        assert keep.prediction_changed_ is None  # no check, no forward passes
        drop = MaxSensitivity(on_prediction_change="drop_draw", **kw)
        out_drop = drop(model, x, y, explain_fn=self.explain)
        np.testing.assert_array_equal(drop.prediction_changed_,
                                      [[False, True, False, True]] * 2)
        assert np.isnan(drop.draw_scores_[:, [1, 3]]).all()
        np.testing.assert_allclose(out_drop, np.nanmax(keep.draw_scores_[:, [0, 2]], 1))
        assert (out_keep > out_drop).all()  # the big negative shifts were dropped
        nan = MaxSensitivity(on_prediction_change="nan_sample", **kw)
        with pytest.warns(ek.UndefinedScoreWarning):
            out_nan = nan(model, x, y, explain_fn=self.explain)
        assert np.isnan(out_nan).all()
        assert "on_prediction_change='nan_sample'" in nan.nan_reasons_[0]
        # Quantus' flag: True drops the flipped draws (a single flip never NaNs the sample)
        q = MaxSensitivity(return_nan_when_prediction_changes=True, **kw)
        np.testing.assert_allclose(q(model, x, y, explain_fn=self.explain), out_drop)

    def test_all_draws_flip(self):
        model, x, y, _ = self._setup()
        noise = FixedNoise(torch.ones(4), [-0.2, -0.3])
        m = AvgSensitivity(nr_samples=2, perturb_func=noise, on_prediction_change="drop_draw")
        with pytest.warns(ek.UndefinedScoreWarning):
            out = m(model, x, y, explain_fn=self.explain)
        assert np.isnan(out).all()
        assert "every perturbation changed the predicted class" in m.nan_reasons_[0]

    def test_reference_is_the_prediction_not_the_label(self):
        model, x, _, noise = self._setup()
        y_wrong = torch.ones(2, dtype=torch.int64)  # labels disagree with the prediction
        m = MaxSensitivity(nr_samples=4, perturb_func=noise, on_prediction_change="drop_draw")
        m(model, x, y_wrong, explain_fn=self.explain)
        np.testing.assert_array_equal(m.prediction_changed_, [[False, True, False, True]] * 2)

    def test_relative_stabilities_drop_by_default(self):
        model, x, y, noise = self._setup()
        x = x + 0.01 * torch.arange(4.0)  # no zero elements
        for cls in (RelativeInputStability, RelativeOutputStability):
            m = cls(nr_samples=4, perturb_func=noise)
            out = m(model, x, y, explain_fn=self.explain)
            assert np.isfinite(out).all()
            assert np.isnan(m.draw_scores_[:, [1, 3]]).all()
            assert np.isfinite(m.draw_scores_[:, [0, 2]]).all()

    def test_regression_outputs_need_keep(self):
        model = nn.Linear(4, 1)
        x = torch.rand(3, 4)
        m = MaxSensitivity(nr_samples=2, on_prediction_change="drop_draw", seed=0)
        y = torch.zeros(3, dtype=torch.int64)
        out = m(model, x, y, explain_fn=identity_explain)  # (N, 1) outputs: argmax is 0
        assert np.isfinite(out).all()


# ============================================================================ seeding / batching
class TestBatchIndependence:
    @pytest.mark.parametrize("make", [
        *[lambda cls=cls: cls(nr_samples=6, seed=11) for cls in NOISE_METRICS],
        lambda: RelativeRepresentationStability(nr_samples=6, seed=11, layer_names=["relu"]),
        # draws 0, 1, 5, 4, 1 of 6 flip per sample
        lambda: MaxSensitivity(nr_samples=6, seed=11, lower_bound=0.3,
                               on_prediction_change="drop_draw"),
        lambda: Continuity(nr_steps=6, perturb_func="gaussian", seed=11),
        lambda: Continuity(nr_steps=6, perturb_baseline="uniform", seed=11),  # random fill
    ], ids=[*[c.__name__ for c in NOISE_METRICS], "RRS", "MaxSensitivity-drop_draw",
            "Continuity-gaussian", "Continuity-uniform-fill"])
    def test_alone_in_batch_permuted_and_batch_sizes(self, make):
        x, y = cnn_data(5)
        a = ek.explain(CNN, x, y, method="Saliency")
        m = make()
        ref = m(CNN, x, y, a)
        ref_draws = m.draw_scores_.copy()
        ref_changed = m.prediction_changed_
        assert np.isfinite(ref).all()
        alone = m(CNN, x[2:3], y[2:3], a[2:3])
        np.testing.assert_allclose(alone, ref[2:3], rtol=1e-5)
        perm = torch.tensor([4, 2, 0, 3, 1])
        np.testing.assert_allclose(m(CNN, x[perm], y[perm], a[perm]), ref[perm.numpy()],
                                   rtol=1e-5)
        np.testing.assert_allclose(m(CNN, x, y, a, batch_size=1), ref, rtol=1e-5)
        np.testing.assert_allclose(m(CNN, x, y, a, batch_size=7, stack_budget=1), ref,
                                   rtol=1e-5)
        np.testing.assert_allclose(m.draw_scores_, ref_draws, rtol=1e-5)
        if ref_changed is not None:
            np.testing.assert_array_equal(m.prediction_changed_, ref_changed)

    def test_perturbed_inputs_are_bit_identical(self):
        x, y = cnn_data(4)
        seen = {}
        for label, xs, ys, kw in [("batch", x, y, {}), ("alone", x[1:2], y[1:2], {}),
                                  ("chunked", x, y, {"batch_size": 3, "stack_budget": 1})]:
            counter = CountingExplain(identity_explain)
            LocalLipschitzEstimate(nr_samples=5, seed=4)(CNN, xs, ys, xs, explain_fn=counter,
                                                         **kw)
            seen[label] = torch.cat(counter.inputs)
        assert torch.equal(seen["alone"], seen["batch"][5:10])
        assert torch.equal(seen["chunked"], seen["batch"])

    def test_seed(self):
        x, y = cnn_data(3)
        a = ek.explain(CNN, x, y, method="Saliency")
        r1 = MaxSensitivity(nr_samples=4, seed=1)(CNN, x, y, a)
        r2 = MaxSensitivity(nr_samples=4, seed=1)(CNN, x, y, a)
        r3 = MaxSensitivity(nr_samples=4, seed=2)(CNN, x, y, a)
        np.testing.assert_array_equal(r1, r2)
        assert not np.allclose(r1, r3)
        m = MaxSensitivity(nr_samples=4)
        r4 = m(CNN, x, y, a)
        np.testing.assert_array_equal(MaxSensitivity(nr_samples=4, seed=m.seed_)(CNN, x, y, a),
                                      r4)

    def test_global_rng_untouched(self):
        x, y = cnn_data(2)
        state = torch.get_rng_state()
        np_state = np.random.get_state()[1].copy()  # noqa: NPY002
        LocalLipschitzEstimate(nr_samples=3, seed=0)(CNN, x, y)
        assert torch.equal(state, torch.get_rng_state())
        np.testing.assert_array_equal(np_state, np.random.get_state()[1])  # noqa: NPY002

    def test_noise_parameters_are_used(self):
        x, y = cnn_data(2)
        counter = CountingExplain(identity_explain)
        LocalLipschitzEstimate(nr_samples=400, perturb_mean=0.3, perturb_std=0.05, seed=0)(
            CNN, x, y, x, explain_fn=counter)
        d = torch.cat(counter.inputs).reshape(2, 400, -1) - x.reshape(2, 1, -1)
        assert abs(float(d.mean()) - 0.3) < 0.01 and abs(float(d.std()) - 0.05) < 0.01
        counter = CountingExplain(identity_explain)
        RelativeInputStability(nr_samples=400, seed=0, on_prediction_change="keep")(
            CNN, x, y, x, explain_fn=counter)
        d = torch.cat(counter.inputs).reshape(2, 400, -1) - x.reshape(2, 1, -1)
        assert 0.02 <= float(d.min()) and float(d.max()) <= 0.2  # Quantus' U(0.02, 0.2)
        counter = CountingExplain(identity_explain)
        MaxSensitivity(nr_samples=400, seed=0)(CNN, x, y, x, explain_fn=counter)
        d = torch.cat(counter.inputs).reshape(2, 400, -1) - x.reshape(2, 1, -1)
        assert -0.2 <= float(d.min()) < -0.19 and 0.19 < float(d.max()) <= 0.2


# ============================================================================ explain batching
class TestExplainBatching:
    def test_stacked_not_per_draw(self):
        x, y = cnn_data(6)
        a = ek.explain(CNN, x, y, method="Saliency")
        counter = CountingExplain()
        MaxSensitivity(nr_samples=10, seed=0)(CNN, x, y, a, explain_fn=counter)
        assert counter.calls == 1 and counter.rows == 60
        counter = CountingExplain()
        MaxSensitivity(nr_samples=10, seed=0)(CNN, x, y, a, explain_fn=counter, batch_size=16)
        assert counter.calls == 4 and counter.rows == 60  # 16 + 16 + 16 + 12 rows

    def test_default_chunks_follow_the_memory_budget(self):
        """Without a batch size, the N*K stack is explained in chunks of the size the wrapper
        picks from its input-memory budget: a few large calls, never one per draw or sample."""
        x, y = cnn_data(60)
        size = ek.wrap_model(CNN).resolve_batch_size(x)
        counter = CountingExplain(identity_explain)
        MaxSensitivity(nr_samples=10, seed=0)(CNN, x, y, x, explain_fn=counter)
        assert counter.rows == 600 and counter.calls == math.ceil(600 / size)
        assert max(len(t) for t in counter.inputs) == min(size, 600)

    def test_multi_dimensional_labels_follow_their_copies(self):
        """Regression: labels of shape (N, ...) (multi-label targets) were flattened when
        repeated for the K copies; each copy must get its sample's label row."""
        from evalkit.models.targets import MultiLabelTarget

        x, _ = cnn_data(3)
        y = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 1], [1, 1, 0, 0, 0]])
        wrapper = ek.wrap_model(CNN, target=MultiLabelTarget())
        seen = []

        def fn(model, xs, ys, **kw):
            seen.append(ys.clone())
            return ek.explain(model, xs, ys, method="Saliency")

        m = MaxSensitivity(nr_samples=4, seed=0)
        out = m(wrapper, x, y, explain_fn=fn)
        assert torch.equal(seen[-1], y.repeat_interleave(4, dim=0))
        assert np.isfinite(out).all()
        np.testing.assert_allclose(m(wrapper, x[1:2], y[1:2], explain_fn=fn), out[1:2],
                                   rtol=1e-6)

    def test_memory_budget_chunks_samples(self):
        x, y = cnn_data(6)
        counter = CountingExplain()
        # budget for ~2 samples' stacks (10 x 192 elements x (4 + 8) bytes each)
        MaxSensitivity(nr_samples=10, seed=0)(CNN, x, y, x, explain_fn=counter,
                                              stack_budget=2 * 10 * 192 * 12)
        assert counter.calls == 3 and counter.rows == 60

    def test_black_box_and_numpy_explainers(self):
        x, y = cnn_data(3)
        out = MaxSensitivity(nr_samples=3, seed=0)(
            CNN, x, y, explain_kwargs={"method": "Occlusion", "sliding_window_shapes": (3, 4, 4),
                                       "strides": (3, 4, 4)})
        assert np.isfinite(out).all() and (out > 0).all()

        def numpy_fn(model, inputs, targets, **kw):
            assert isinstance(inputs, np.ndarray)
            return np.abs(inputs).sum(1, keepdims=True)

        out = LocalLipschitzEstimate(nr_samples=3, seed=0)(
            CNN, x, y, explain_fn=numpy_explain_fn(numpy_fn))
        assert np.isfinite(out).all()

    @pytest.mark.slow
    def test_lime_on_stacked_inputs(self):
        """A stochastic black-box explainer (per-sample seeded) works on the N*K stack and
        gives the same score for a sample alone or in a batch."""
        x, y = cnn_data(2)
        kw = {"method": "Lime", "n_samples": 10, "seed": 0}
        m = MaxSensitivity(nr_samples=2, seed=0)
        both = m(CNN, x, y, explain_kwargs=kw)
        alone = m(CNN, x[1:], y[1:], explain_kwargs=kw)
        # the compared sample must be scored (LIME with 10 samples gives an all-zero map, a
        # NaN score, for about 3 % of samples, whichever the draws: here sample 0)
        assert np.isfinite(both[1:]).all()
        np.testing.assert_allclose(alone, both[1:], rtol=1e-5)

    def test_layout_mismatch_is_a_clear_error(self):
        x, y = cnn_data(2)
        a1 = ek.explain(CNN, x, y, method="Saliency", reduce_channels="sum")
        with pytest.raises(ValueError, match="same layout as `a`"):
            MaxSensitivity(nr_samples=2, seed=0)(CNN, x, y, a1)
        out = MaxSensitivity(nr_samples=2, seed=0)(
            CNN, x, y, a1, explain_kwargs={"method": "Saliency", "reduce_channels": "sum"})
        assert np.isfinite(out).all()


# ============================================================================ sharing
class TestSharing:
    def test_max_and_avg_share_explanations(self):
        x, y = cnn_data(4)
        a = ek.explain(CNN, x, y, method="Saliency")
        counter = CountingExplain()
        alone_max = MaxSensitivity(nr_samples=5, seed=3)(CNN, x, y, a, explain_fn=counter)
        alone_avg = AvgSensitivity(nr_samples=5, seed=3, normalise=True)(CNN, x, y, a,
                                                                         explain_fn=counter)
        assert counter.rows == 40
        counter = CountingExplain()
        with forward_cache() as cache:
            r_max = MaxSensitivity(nr_samples=5, seed=3)(CNN, x, y, a, explain_fn=counter)
            r_avg = AvgSensitivity(nr_samples=5, seed=3, normalise=True)(CNN, x, y, a,
                                                                         explain_fn=counter)
            assert counter.rows == 20  # the second metric explained nothing
            store = explanation_cache(cache)
            assert store.stats().hits == 4 and len(store) == 4
            # different seed, noise or explainer settings: no sharing
            MaxSensitivity(nr_samples=5, seed=4)(CNN, x, y, a, explain_fn=counter)
            assert counter.rows == 40
            MaxSensitivity(nr_samples=5, seed=3, lower_bound=0.1)(CNN, x, y, a,
                                                                   explain_fn=counter)
            assert counter.rows == 60
            MaxSensitivity(nr_samples=5, seed=3)(CNN, x, y, a, explain_fn=counter,
                                                 explain_kwargs={"unused": 1})
            assert counter.rows == 80
        np.testing.assert_array_equal(r_max, alone_max)
        np.testing.assert_array_equal(r_avg, alone_avg)

    def test_relative_stabilities_share_explanations_and_forwards(self):
        x, y = cnn_data(4)
        a = ek.explain(CNN, x, y, method="Saliency")
        counter = CountingExplain()
        wrapper = ek.wrap_model(CNN)
        with forward_cache():
            ris = RelativeInputStability(nr_samples=5, seed=0)(wrapper, x, y, a,
                                                               explain_fn=counter)
            rows_after_ris = wrapper.counter.rows
            ros = RelativeOutputStability(nr_samples=5, seed=0)(wrapper, x, y, a,
                                                                explain_fn=counter)
        assert counter.rows == 20
        # ROS forwards only the 4 unperturbed inputs; the 20 perturbed outputs are shared
        assert wrapper.counter.rows - rows_after_ris == 4
        np.testing.assert_allclose(ris, RelativeInputStability(nr_samples=5, seed=0)(
            CNN, x, y, a, explain_fn=counter))
        np.testing.assert_allclose(ros, RelativeOutputStability(nr_samples=5, seed=0)(
            CNN, x, y, a, explain_fn=counter))

    def test_default_explainer_shares_too(self):
        x, y = cnn_data(3)
        a = ek.explain(CNN, x, y, method="Saliency")
        wrapper = ek.wrap_model(CNN)
        with forward_cache() as cache:
            MaxSensitivity(nr_samples=4, seed=0)(wrapper, x, y, a)
            before = wrapper.counter.rows
            AvgSensitivity(nr_samples=4, seed=0)(wrapper, x, y, a)
            assert wrapper.counter.rows == before  # no explanation, no forward pass
            assert explanation_cache(cache).stats().hits == 3

    def test_metrics_of_different_classes_share_the_same_perturbations(self):
        x, y = cnn_data(4)
        a = ek.explain(CNN, x, y, method="Saliency")
        counter = CountingExplain()
        with forward_cache():
            MaxSensitivity(nr_samples=5, seed=3)(CNN, x, y, a, explain_fn=counter)
            LocalLipschitzEstimate(nr_samples=5, seed=3, perturb_func="uniform",
                                   lower_bound=0.2)(CNN, x, y, a, explain_fn=counter)
            assert counter.rows == 20
            # Continuity with Gaussian noise draws what LocalLipschitzEstimate draws
            LocalLipschitzEstimate(nr_samples=5, seed=3)(CNN, x, y, a, explain_fn=counter)
            Continuity(nr_steps=5, perturb_func="gaussian", seed=3)(CNN, x, y, a,
                                                                     explain_fn=counter)
            assert counter.rows == 40
        assert MaxSensitivity(nr_samples=5).seed_scope() == LocalLipschitzEstimate(
            nr_samples=5, perturb_func="uniform", lower_bound=0.2).seed_scope()
        assert Continuity(nr_steps=5, perturb_func="gaussian").seed_scope() == \
            LocalLipschitzEstimate(nr_samples=5).seed_scope()
        assert MaxSensitivity(nr_samples=5).seed_scope() != MaxSensitivity(
            nr_samples=6).seed_scope()
        assert Continuity(perturb_func=lambda xs, step: xs).seed_scope() is None

    def test_evaluate_shares_between_metrics_with_the_same_settings(self):
        """evaluate() gives metrics with the same perturbation settings the same seed (derived
        from their seed_scope, not their names), so they explain the perturbed inputs once."""
        x, y = cnn_data(4)
        counter = CountingExplain()
        metrics = {"Max": MaxSensitivity(nr_samples=5), "Avg": AvgSensitivity(nr_samples=5),
                   "LLE": LocalLipschitzEstimate(nr_samples=5, perturb_func="uniform",
                                                 lower_bound=0.2),
                   "Max0.1": MaxSensitivity(nr_samples=5, lower_bound=0.1)}
        r = ek.evaluate(metrics, {"Sal": counter}, CNN, x, y, seed=0, progress=False)
        # 4 rows for the method's own explanations, 20 shared by Max/Avg/LLE, 20 for Max0.1
        assert counter.rows == 4 + 20 + 20
        assert r.seeds["Max"] == r.seeds["Avg"] == r.seeds["LLE"] != r.seeds["Max0.1"]
        for name, metric in metrics.items():
            alone = metric.clone().set_params(seed=r.seeds[name])(CNN, x, y,
                                                                  explain_fn=counter)
            np.testing.assert_allclose(r["Sal", name], alone, rtol=1e-12, err_msg=name)
        # the same seeds whatever the names and order of the metrics
        r2 = ek.evaluate({"b": AvgSensitivity(nr_samples=5), "a": MaxSensitivity(nr_samples=5)},
                         {"Sal": counter}, CNN, x, y, seed=0, progress=False)
        assert r2.seeds["a"] == r2.seeds["b"] == r.seeds["Max"]

    def test_cache_eviction_budget(self):
        x, y = cnn_data(4)
        with forward_cache() as cache:
            store = explanation_cache(cache)
            store.max_bytes = 3 * 5 * 192 * 4  # room for three samples' explanations
            MaxSensitivity(nr_samples=5, seed=0)(CNN, x, y, x, explain_fn=identity_explain)
            assert len(store) == 3 and store.stats().evicted == 1


def test_explanation_cache_store():
    from evalkit.cache import ExplanationCache, active_explanation_cache

    store = ExplanationCache(max_bytes=100)
    store.put([b"a", b"b"], [torch.zeros(10), torch.zeros(10)])  # 40 bytes each
    assert store.nbytes == 80 and len(store) == 2
    store.put([b"a"], [torch.ones(5)])  # replacing a block updates the accounting
    assert store.nbytes == 60 and torch.equal(store.get([b"a"])[0], torch.ones(5))
    store.put([b"c"], [torch.zeros(20)])  # 80 bytes: evicts the least recently used ("b")
    assert store.get([b"b", b"c"])[0] is None and store.nbytes == 100
    store.put([b"huge"], [torch.zeros(100)])  # larger than the budget: not stored
    assert store.get([b"huge"]) == [None]
    fn = lambda: None  # noqa: E731
    assert store.pin(fn) == id(fn)
    store.clear()
    assert len(store) == 0 and store.nbytes == 0
    with pytest.raises(ValueError, match="max_bytes"):
        ExplanationCache(max_bytes=0)
    assert active_explanation_cache() is None
    with forward_cache() as c:
        assert active_explanation_cache() is explanation_cache(c)


# ============================================================================ edge cases
class TestEdgeCases:
    def test_zero_attribution_is_nan_with_reason(self):
        x, y = cnn_data(3)
        a = ek.explain(CNN, x, y, method="Saliency")
        a[1] = 0
        for cls in (MaxSensitivity, AvgSensitivity):
            m = cls(nr_samples=3, seed=0)
            with pytest.warns(ek.UndefinedScoreWarning):
                out = m(CNN, x, y, a)
            assert np.isnan(out[1]) and np.isfinite(out[[0, 2]]).all()
            assert m.nan_reasons_[1] == "attribution is all zero (||a|| = 0)"

    def test_nan_attribution_row(self):
        x, y = cnn_data(3)
        a = ek.explain(CNN, x, y, method="Saliency")
        a[2, 0, 0, 0] = float("nan")
        m = LocalLipschitzEstimate(nr_samples=3, seed=0)
        with pytest.warns(ek.UndefinedScoreWarning):
            out = m(CNN, x, y, a)
        assert np.isnan(out[2]) and np.isfinite(out[:2]).all()
        assert "NaN" in m.nan_reasons_[2]

    def test_nan_re_explanation(self):
        x, y = cnn_data(3)

        def flaky(model, xs, ys, **kw):
            out = xs.clone()
            out[xs[:, 0, 0, 0] > 0.6] = float("nan")
            return out

        m = MaxSensitivity(nr_samples=6, seed=0, lower_bound=0.3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = m(CNN, x, y, x, explain_fn=flaky)
        for i, r in m.nan_reasons_.items():
            assert math.isnan(out[i]) and "re-explanation" in r
        assert len(m.nan_reasons_) >= 1

    def test_zero_noise(self):
        x, y = cnn_data(2)
        m = LocalLipschitzEstimate(nr_samples=3, perturb_std=0.0, seed=0)
        with pytest.warns(ek.UndefinedScoreWarning):
            out = m(CNN, x, y, explain_fn=identity_explain)
        assert np.isnan(out).all() and "||x - x'|| = 0" in m.nan_reasons_[0]

    def test_relative_stability_is_finite_with_zeros(self):
        x, y = cnn_data(3)
        x[:, :, :2] = 0.0  # zero inputs
        a = torch.zeros_like(x)  # zero attribution everywhere
        for cls in (RelativeInputStability, RelativeOutputStability):
            out = cls(nr_samples=4, seed=0, on_prediction_change="keep")(
                CNN, x, y, a, explain_fn=lambda m, xs, ys: xs.clone())
            assert np.isfinite(out).all() and (out > 0).all()

    def test_relative_change_floor(self):
        """Divisors below eps_min are floored: values in (0, eps_min) do not explode."""
        model, x, y = linear_data(n=2, d=4)
        tiny = torch.full_like(x, 1e-12)
        m = RelativeInputStability(nr_samples=3, seed=0, on_prediction_change="keep",
                                   eps_min=1e-3)
        out = m(model, x, y, tiny, explain_fn=lambda mo, xs, ys: torch.full_like(xs, 2e-12))
        # numerator ||1e-12 / 1e-3|| = 2e-9 (not ||1e-12 / 1e-12|| = 2), denominator O(0.1)
        assert (out < 1e-6).all()

    def test_inputs_not_mutated(self):
        x, y = cnn_data(3)
        a = ek.explain(CNN, x, y, method="Saliency")
        x0, a0 = x.clone(), a.clone()
        MaxSensitivity(nr_samples=3, seed=0, normalise=True, abs=True)(CNN, x, y, a)
        assert torch.equal(x, x0) and torch.equal(a, a0)


# ============================================================================ RRS layers
class TestRepresentationLayers:
    def test_layers_must_be_chosen(self):
        x, y = cnn_data(2)
        with pytest.raises(ValueError, match="layer_names"):
            RelativeRepresentationStability(nr_samples=2, seed=0)(CNN, x, y)
        with pytest.raises(ValueError, match="Unknown layers"):
            RelativeRepresentationStability(nr_samples=2, seed=0, layer_names=["nope"])(CNN, x, y)
        with pytest.raises(ValueError, match="not both"):
            RelativeRepresentationStability(layer_names=["fc"], layer_indices=[1])

    def test_names_indices_and_all(self):
        x, y = cnn_data(3)
        a = ek.explain(CNN, x, y, method="Saliency")
        kw = dict(nr_samples=4, seed=0, on_prediction_change="keep")
        by_name = RelativeRepresentationStability(layer_names=["relu"], **kw)(CNN, x, y, a)
        # Quantus' positions: the modules except the model itself (conv, relu, fc)
        by_index = RelativeRepresentationStability(layer_indices=[1], **kw)(CNN, x, y, a)
        np.testing.assert_allclose(by_name, by_index)
        both = RelativeRepresentationStability(layer_names=["relu", "fc"], **kw)(CNN, x, y, a)
        every = RelativeRepresentationStability(layer_names="all", **kw)(CNN, x, y, a)
        explicit = RelativeRepresentationStability(layer_names=["conv", "relu", "fc"], **kw)(
            CNN, x, y, a)
        assert np.isfinite(both).all() and np.isfinite(every).all()
        np.testing.assert_allclose(every, explicit)
        fc = RelativeRepresentationStability(layer_names=["fc"], **kw)(CNN, x, y, a)
        np.testing.assert_allclose(
            fc, RelativeRepresentationStability(layer_indices=[-1], **kw)(CNN, x, y, a))
        assert not np.allclose(fc, by_name)
        # the hooks are gone afterwards
        assert all(not m._forward_hooks for m in CNN.modules())

    def test_resolve_layers(self):
        class Block(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = nn.Conv2d(3, 3, 3, padding=1)
                self.act = nn.ReLU()

            def forward(self, x):
                return self.act(self.conv(x)) + x

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.block = Block()
                self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))
                self.unused = nn.Linear(2, 2)

            def forward(self, x):
                return self.head(self.block(x))

        net = Net().eval()
        rrs = RelativeRepresentationStability
        assert rrs(layer_names="all").resolve_layers(net) == [
            "block.conv", "block.act", "head.0", "head.1", "unused"]
        # Quantus' list for indices skips the model and nn.Sequential containers only
        assert rrs(layer_indices=[0, 3, -1, -2]).resolve_layers(net) == [
            "block", "head.0", "unused", "head.1"]
        assert rrs(layer_indices=-2).resolve_layers(net) == ["head.1"]
        with pytest.raises(ValueError, match="out of range"):
            rrs(layer_indices=[6]).resolve_layers(net)
        with pytest.raises(TypeError, match="integers"):
            rrs(layer_indices=["head"]).resolve_layers(net)
        # "all" leaves out the layer that never runs; a named one that never runs is an error
        g = torch.Generator().manual_seed(0)
        x = torch.rand(3, 3, 8, 8, generator=g)
        y = torch.zeros(3, dtype=torch.int64)
        kw = dict(nr_samples=3, seed=0, on_prediction_change="keep")
        every = rrs(layer_names="all", **kw)(net, x, y, explain_fn=identity_explain)
        used = rrs(layer_names=["block.conv", "block.act", "head.0", "head.1"], **kw)(
            net, x, y, explain_fn=identity_explain)
        np.testing.assert_allclose(every, used)
        with pytest.raises(RuntimeError, match="produced no output"):
            rrs(layer_names=["unused"], **kw)(net, x, y, explain_fn=identity_explain)

    def test_representation_is_recorded_before_in_place_operations(self):
        """Regression: a layer followed by ReLU(inplace=True) must contribute its own output,
        not the rectified one the in-place ReLU leaves in the same tensor."""
        model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(inplace=True), nn.Linear(3, 2)).eval()
        with torch.no_grad():
            model[0].weight.copy_(torch.tensor([[1.0, -1.0, 0.5, 0.0], [-1.0, 0.5, 0.0, 1.0],
                                                [0.3, 0.3, -1.0, 0.2]]))
            model[0].bias.copy_(torch.tensor([0.1, -0.2, 0.15]))
            model[2].weight.copy_(torch.ones(2, 3))
            model[2].bias.zero_()
        x = torch.tensor([[0.2, 0.9, 0.4, 0.1], [0.8, 0.1, 0.6, 0.3]])
        y = torch.zeros(2, dtype=torch.int64)
        noise = FixedNoise(torch.tensor([0.1, -0.2, 0.05, 0.1]), [1.0, -0.5])
        out = RelativeRepresentationStability(
            nr_samples=2, perturb_func=noise, layer_names=["0"], on_prediction_change="keep")(
            model, x, y, explain_fn=identity_explain)
        xd = x.double()
        w, b = model[0].weight.detach().double(), model[0].bias.detach().double()
        h = xd @ w.T + b
        assert (h < 0).any() and (h.abs() > 0.05).all()  # the ReLU would change it
        expected = []
        for k in (1.0, -0.5):
            xp = (x + k * noise.pattern).double()
            num = ((xd - xp) / xd).norm(dim=1)
            den = ((h - (xp @ w.T + b)) / h.abs()).norm(dim=1)
            expected.append(num / den)
        np.testing.assert_allclose(out, torch.stack(expected, 1).amax(1).numpy(), rtol=1e-5)

    def test_layer_called_twice_contributes_both_outputs(self):
        """A layer that runs twice per forward pass enters the representation with both of its
        outputs, in call order (hand-computed relative change of the concatenation)."""

        class Shared(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.fc = nn.Linear(3, 3)
                self.act = nn.ReLU(inplace=True)
                self.head = nn.Linear(3, 2)

            def forward(self, x):
                return self.head(self.fc(self.act(self.fc(x))))

        torch.manual_seed(3)
        model = Shared().eval()
        x = torch.tensor([[0.5, 0.9, 0.4], [0.8, 0.3, 0.6], [0.7, 0.2, 0.1]])
        y = torch.zeros(3, dtype=torch.int64)
        noise = FixedNoise(torch.tensor([0.1, -0.2, 0.05]), [1.0, -0.5, 2.0])
        out = RelativeRepresentationStability(
            nr_samples=3, perturb_func=noise, layer_names=["fc"], on_prediction_change="keep")(
            model, x, y, explain_fn=identity_explain)
        w, b = model.fc.weight.detach().double(), model.fc.bias.detach().double()

        def rep(inputs):
            h1 = inputs @ w.T + b
            return torch.cat([h1, h1.clamp_min(0) @ w.T + b], 1)

        xd = x.double()
        ref = rep(xd)
        expected = []
        for k in (1.0, -0.5, 2.0):
            xp = (x + k * noise.pattern).double()
            num = ((xd - xp) / xd).norm(dim=1)
            den = ((ref - rep(xp)) / ref.abs().clamp_min(1e-6)).norm(dim=1)
            expected.append(num / den)
        np.testing.assert_allclose(out, torch.stack(expected, 1).amax(1).numpy(), rtol=1e-5)

    def test_layer_calls_that_differ_between_passes_raise(self):
        """A layer that runs once on the unperturbed inputs and twice on perturbed ones has no
        comparable representation: a clear error, not a shape error from deep inside."""

        class Flaky(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.fc = nn.Linear(3, 3)
                self.head = nn.Linear(3, 2)

            def forward(self, x):
                h = self.fc(x)
                if bool((x.abs() > 0.01).any()):  # the perturbed (non-zero) inputs
                    h = self.fc(h)
                return self.head(h)

        x = torch.zeros(2, 3)
        y = torch.zeros(2, dtype=torch.int64)
        with pytest.raises(RuntimeError, match="differ between forward passes"):
            RelativeRepresentationStability(nr_samples=2, seed=0, layer_names=["fc"],
                                            on_prediction_change="keep")(
                Flaky().eval(), x, y, explain_fn=constant_explain)

    @pytest.mark.parametrize("fail_rows", [5, 15])  # the unperturbed pass, the perturbed
    def test_chunk_retried_after_out_of_memory_gives_the_same_scores(self, fail_rows):
        """The runner retries a chunk that ran out of (CUDA) memory at half the size: the
        layer calls the failed attempt recorded must not count towards the retried chunk."""

        class FailsOnce(nn.Module):
            def __init__(self, fail_rows: int) -> None:
                super().__init__()
                self.fc = nn.Linear(3, 4)
                self.head = nn.Linear(4, 2)
                self.calls = 0
                self.fail_rows = fail_rows

            def forward(self, x):
                h = self.fc(x)  # the layer's hook has run when the error comes
                self.calls += 1
                if x.shape[0] == self.fail_rows:
                    self.fail_rows = -1  # once
                    raise torch.cuda.OutOfMemoryError("simulated")
                return self.head(torch.relu(h))

        g = torch.Generator().manual_seed(3)
        x = torch.randn(5, 3, generator=g)
        y = torch.zeros(5, dtype=torch.int64)
        metric = RelativeRepresentationStability(nr_samples=3, seed=0, layer_names=["fc"],
                                                 on_prediction_change="keep")
        torch.manual_seed(0)
        ref_model = FailsOnce(fail_rows=-1).eval()
        torch.manual_seed(0)
        model = FailsOnce(fail_rows=fail_rows).eval()
        want = metric(ref_model, x, y, explain_fn=constant_explain)
        got = metric(model, x, y, explain_fn=constant_explain)
        assert model.calls > ref_model.calls  # the failed attempt ran
        np.testing.assert_array_equal(got, want)

    def test_needs_a_torch_module(self):
        x, y = cnn_data(2)

        def fn(arr):
            return arr.reshape(arr.shape[0], -1)[:, :5]

        with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
            RelativeRepresentationStability(nr_samples=2, seed=0, layer_names=["fc"])(
                ek.wrap_model(fn), x.numpy(), y.numpy(), x.numpy(),
                explain_fn=identity_explain)


def test_gaussian_and_uniform_noise_objects_accepted():
    x, y = cnn_data(2)
    a = ek.explain(CNN, x, y, method="Saliency")
    r1 = MaxSensitivity(nr_samples=3, seed=0, perturb_func=UniformNoise(0.2))(CNN, x, y, a)
    r2 = MaxSensitivity(nr_samples=3, seed=0)(CNN, x, y, a)
    np.testing.assert_array_equal(r1, r2)
    r3 = MaxSensitivity(nr_samples=3, seed=0, perturb_func=GaussianNoise(0, 0.1))(CNN, x, y, a)
    r4 = MaxSensitivity(nr_samples=3, seed=0, perturb_func="gaussian")(CNN, x, y, a)
    np.testing.assert_array_equal(r3, r4)
