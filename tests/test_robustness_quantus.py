"""Cross-checks of the robustness family against the released quantus 0.6.0 (a test-only oracle).

Same seeds are impossible across libraries, so the comparisons are either deterministic special
cases (an identity explainer, translations, weight-times-input attributions of a linear model,
hand-made discrete maps) or paired comparisons of stochastic scores: per sample, ours minus
Quantus' must average to zero within a few standard errors.

Settings avoid Quantus' known bugs (docs/migrating-quantus.md): ``normalise=False`` (its
normalisation runs over the whole batch, deviation C1), ``return_nan_when_prediction_changes=False``
(deviation C18), ``batch_size`` >= N for Consistency (it compares within chunks), and explicit
discretisers (its ``top_n_sign`` takes the first n entries, deviation C10).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_robustness import CNN, Linear, cnn_data

import evalkit as ek
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
)


def identity_np(model, inputs, targets, **kw):
    return np.array(inputs, copy=True)


def _q(metric, model, x, y, a, explain_func, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = metric(model=model, x_batch=x, y_batch=y, a_batch=a, explain_func=explain_func,
                     device="cpu", **kw)
    return np.asarray(out, dtype=np.float64)


def _paired_close(ours: np.ndarray, theirs: np.ndarray, k_se: float = 4.0) -> None:
    """The mean paired difference is within ``k_se`` standard errors of zero."""
    d = ours - theirs
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert abs(d.mean()) <= k_se * se + 1e-9 * np.abs(theirs).mean(), (d.mean(), se)


def _linear_setup(n: int = 16, seed: int = 0):
    model = Linear(3 * 4 * 4, 4, seed=seed).eval()
    g = torch.Generator().manual_seed(seed + 1)
    x = 0.5 + 0.5 * torch.rand(n, 3, 4, 4, generator=g)  # no near-zero inputs
    with torch.no_grad():
        y = model(x).argmax(1)
    w = model.fc.weight.detach()

    def w_times_x(m, xs, ys, **kw):
        return (w[ys] * xs.reshape(len(xs), -1)).reshape(xs.shape)

    def w_times_x_np(model, inputs, targets, **kw):
        wn = w.numpy()
        return (wn[targets] * inputs.reshape(len(inputs), -1)).reshape(inputs.shape)

    return model, x, y, w_times_x, w_times_x_np


# ============================================================================ deterministic
def test_lipschitz_identity_explainer(quantus):
    x, y = cnn_data(8)
    q = quantus.LocalLipschitzEstimate(nr_samples=5, normalise=False, disable_warnings=True)
    theirs = _q(q, CNN, x.numpy(), y.numpy(), x.numpy(), identity_np)
    ours = LocalLipschitzEstimate(nr_samples=5, normalise=False, seed=0)(
        CNN, x, y, x, explain_fn=numpy_explain_fn(identity_np))
    np.testing.assert_allclose(ours, 1.0, rtol=1e-6)
    np.testing.assert_allclose(theirs, ours, rtol=1e-6)  # Quantus' +1e-10 and float64 noise


@pytest.mark.parametrize("abs_", [True, False])
def test_continuity_translations_agree(quantus, abs_):
    """Translations are deterministic: the same scores as Quantus (whose perturb_func is ignored
    anyway, deviation C19) on its only perturbation, with the same explainer."""
    x, y = cnn_data(12)
    xn, yn = x.numpy(), y.numpy()
    kw = {"method": "Gradient"}  # signed gradients (abs=False matters)
    q = quantus.Continuity(nr_steps=8, normalise=False, abs=abs_, disable_warnings=True)
    theirs = _q(q, CNN, xn, yn, None, quantus.explain, explain_func_kwargs=kw)
    a = quantus.explain(CNN, xn, yn, **kw)
    ours = Continuity(nr_steps=8, normalise=False, abs=abs_)(
        CNN, x, y, a, explain_fn=numpy_explain_fn(quantus.explain), explain_kwargs=kw)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_relative_input_stability_linear(quantus):
    """Weight-times-input attributions of a linear model change relatively exactly like the
    input: RIS = 1 in both libraries, for any noise."""
    model, x, y, w_x, w_x_np = _linear_setup()
    q = quantus.RelativeInputStability(nr_samples=5, return_nan_when_prediction_changes=False,
                                       disable_warnings=True)
    theirs = _q(q, model, x.numpy(), y.numpy(), w_x_np(None, x.numpy(), y.numpy()), w_x_np)
    ours = RelativeInputStability(nr_samples=5, seed=0, on_prediction_change="keep")(
        model, x, y, explain_fn=w_x)
    np.testing.assert_allclose(theirs, 1.0, rtol=1e-4)
    np.testing.assert_allclose(ours, 1.0, rtol=1e-4)


def test_consistency_with_sign_discretiser(quantus):
    x, y = cnn_data(12)
    g = torch.Generator().manual_seed(0)
    patterns = (torch.rand(3, 3, 8, 8, generator=g) > 0.5).float() + 0.0
    a = patterns[torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 2, 0])]
    a = a * (1 + torch.rand(a.shape, generator=g))  # same sign pattern, different values
    a[11] = (torch.rand(3, 8, 8, generator=g) > 0.5).float()  # a singleton label
    from quantus.functions.discretise_func import sign

    q = quantus.Consistency(discretise_func=sign, disable_warnings=True)
    theirs = _q(q, CNN, x.numpy(), y.numpy(), a.numpy(), None, batch_size=64)
    m = Consistency(discretise_func="sign")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ek.UndefinedScoreWarning)
        ours = m(CNN, x, y, a)
    assert np.isnan(ours[11]) and theirs[11] == 0.0  # Quantus: 0 for "no partner" (1e-9)
    np.testing.assert_allclose(ours[:11], theirs[:11], atol=1e-8)


def test_consistency_quantus_top_n_sign_is_first_entries(quantus):
    """Deviation C10: Quantus' default discretiser labels maps by their first 5 entries."""
    x, y = cnn_data(6)
    a = torch.zeros(6, 1, 8, 8) + 0.01
    for i in range(6):
        a[i, 0, 4 + i % 3, 4] = 1.0  # three different most relevant pixels
    q = quantus.Consistency(disable_warnings=True)
    theirs = _q(q, CNN, x.numpy(), y.numpy(), a.numpy(), None, batch_size=64)
    preds = CNN(x).argmax(1).numpy()
    # every map gets Quantus' label of its first 5 entries, i.e. one label for all
    expected_q = np.array([(preds[np.arange(6) != i] == preds[i]).mean() for i in range(6)])
    np.testing.assert_allclose(theirs, expected_q, atol=1e-8)
    ours = Consistency(discretise_func="top_n_sign", n=1)(CNN, x, y, a)
    expected = np.array([(preds[[j for j in range(6) if j % 3 == i % 3 and j != i]]
                          == preds[i]).mean() for i in range(6)])
    np.testing.assert_allclose(ours, expected, atol=1e-12)


def test_quantus_functions_are_recognised(quantus):
    from quantus.functions import discretise_func, norm_func, similarity_func

    m = MaxSensitivity(norm_numerator=norm_func.fro_norm, norm_denominator=norm_func.fro_norm)
    ref = MaxSensitivity()
    x, y = cnn_data(3)
    a = ek.explain(CNN, x, y, method="Saliency")
    np.testing.assert_allclose(m.set_params(seed=0)(CNN, x, y, a),
                               ref.set_params(seed=0)(CNN, x, y, a))
    ll = LocalLipschitzEstimate(norm_numerator=similarity_func.distance_manhattan)
    assert ll._num.__name__ == "_l1"
    c = Consistency(discretise_func=discretise_func.top_n_sign)
    assert c.discretise_func == "top_n_sign"  # ours: the real top-n (deviation C10)


def test_quantus_perturbation_functions_are_recognised(quantus):
    """Ported code passing Quantus' perturbation functions gets the same perturbation here
    (Continuity must not call them as f(x, step) callables)."""
    from quantus.functions import perturb_func as pf

    x, y = cnn_data(3)
    a = ek.explain(CNN, x, y, method="Saliency")
    for q_fn, ours in ((pf.uniform_noise, "uniform"), (pf.batch_gaussian_noise, "gaussian")):
        m = MaxSensitivity(nr_samples=3, seed=0, perturb_func=q_fn)
        assert m.seed_scope() == MaxSensitivity(nr_samples=3, perturb_func=ours).seed_scope()
        np.testing.assert_array_equal(
            m(CNN, x, y, a), MaxSensitivity(nr_samples=3, seed=0, perturb_func=ours)(CNN, x, y, a))
    for q_fn, ours in ((pf.translation_x_direction, "translation_x"),
                       (pf.translation_y_direction, "translation_y"),
                       (pf.gaussian_noise, "gaussian")):
        got = Continuity(nr_steps=4, perturb_func=q_fn, seed=0)(CNN, x, y, a)
        np.testing.assert_array_equal(
            got, Continuity(nr_steps=4, perturb_func=ours, seed=0)(CNN, x, y, a))


# ============================================================================ stochastic
def test_max_and_avg_sensitivity_identity_distribution(quantus):
    """||delta|| / ||x|| with delta ~ U(-0.2, 0.2)^D: the same distribution in both."""
    x, y = cnn_data(48, seed=3)
    xn, yn = x.numpy(), y.numpy()
    for q_cls, ours_cls in ((quantus.MaxSensitivity, MaxSensitivity),
                            (quantus.AvgSensitivity, AvgSensitivity)):
        theirs = _q(q_cls(nr_samples=10, disable_warnings=True), CNN, xn, yn, xn.copy(),
                    identity_np)
        ours = ours_cls(nr_samples=10, seed=0)(CNN, x, y, x,
                                               explain_fn=numpy_explain_fn(identity_np))
        _paired_close(ours, theirs)
        np.testing.assert_allclose(ours, theirs, rtol=0.15)  # concentrated: D = 192


def test_lipschitz_saliency_distribution(quantus):
    x, y = cnn_data(48, seed=4)
    xn, yn = x.numpy(), y.numpy()
    kw = {"method": "Saliency"}
    a = quantus.explain(CNN, xn, yn, **kw)
    q = quantus.LocalLipschitzEstimate(nr_samples=10, normalise=False, disable_warnings=True)
    theirs = _q(q, CNN, xn, yn, a, quantus.explain, explain_func_kwargs=kw)
    ours = LocalLipschitzEstimate(nr_samples=10, normalise=False, seed=0)(
        CNN, x, y, a, explain_fn=numpy_explain_fn(quantus.explain), explain_kwargs=kw)
    _paired_close(ours, theirs)


def test_relative_stability_saliency_distribution(quantus):
    """RIS/ROS of Saliency on a CNN: heavy-tailed, so compared in log space (paired)."""
    x, y = cnn_data(48, seed=6)
    xn, yn = x.numpy(), y.numpy()
    kw = {"method": "Saliency"}
    a = quantus.explain(CNN, xn, yn, **kw)
    for q_cls, ours_cls in ((quantus.RelativeInputStability, RelativeInputStability),
                            (quantus.RelativeOutputStability, RelativeOutputStability)):
        q = q_cls(nr_samples=10, return_nan_when_prediction_changes=False,
                  disable_warnings=True)
        theirs = _q(q, CNN, xn, yn, a, quantus.explain, explain_func_kwargs=kw)
        ours = ours_cls(nr_samples=10, seed=0, on_prediction_change="keep")(
            CNN, x, y, a, explain_fn=numpy_explain_fn(quantus.explain), explain_kwargs=kw)
        _paired_close(np.log(ours), np.log(theirs))


def test_relative_output_and_representation_stability_linear(quantus):
    model, x, y, w_x, w_x_np = _linear_setup(n=48, seed=2)
    xn, yn = x.numpy(), y.numpy()
    a = w_x_np(None, xn, yn)
    q = quantus.RelativeOutputStability(nr_samples=10, return_nan_when_prediction_changes=False,
                                        disable_warnings=True)
    theirs = _q(q, model, xn, yn, a, w_x_np)
    ours = RelativeOutputStability(nr_samples=10, seed=0, on_prediction_change="keep")(
        model, x, y, a, explain_fn=w_x)
    _paired_close(ours, theirs)
    q = quantus.RelativeRepresentationStability(
        nr_samples=10, return_nan_when_prediction_changes=False, layer_names=["fc"],
        disable_warnings=True)
    theirs = _q(q, model, xn, yn, a, w_x_np)
    ours = RelativeRepresentationStability(
        nr_samples=10, seed=0, on_prediction_change="keep", layer_names=["fc"])(
        model, x, y, a, explain_fn=w_x)
    _paired_close(ours, theirs)


def test_quantus_nan_propagation_vs_drop_draw(quantus):
    """Deviation C18: with Quantus' default, one flipped draw makes the sample NaN; ours drops the
    draw unless on_prediction_change='nan_sample' is asked for, which matches Quantus' NaN pattern
    whenever the same draws flip (here: a model whose prediction flips for large noise)."""
    x, y = cnn_data(16, seed=5)
    xn, yn = x.numpy(), y.numpy()
    kw = {"method": "Saliency"}
    a = quantus.explain(CNN, xn, yn, **kw)
    q = quantus.RelativeInputStability(
        nr_samples=10, perturb_func_kwargs={"lower_bound": 0.2, "upper_bound": 0.6},
        disable_warnings=True)
    theirs = _q(q, CNN, xn, yn, a, quantus.explain, explain_func_kwargs=kw)
    assert np.isnan(theirs).any()  # some samples lost to a single flip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ek.UndefinedScoreWarning)
        m = RelativeInputStability(nr_samples=10, lower_bound=0.2, upper_bound=0.6, seed=0)
        ours = m(CNN, x, y, a, explain_fn=numpy_explain_fn(quantus.explain),
                 explain_kwargs=kw)
    flipped_some = m.prediction_changed_.any(1) & ~m.prediction_changed_.all(1)
    assert flipped_some.any() and np.isfinite(ours[flipped_some]).all()


def _square_np(model, inputs, targets, **kw):
    return np.asarray(inputs, dtype=np.float32) ** 2


@pytest.mark.parametrize("name", ["LocalLipschitzEstimate", "MaxSensitivity", "AvgSensitivity",
                                  "RelativeInputStability", "RelativeOutputStability",
                                  "RelativeRepresentationStability"])
def test_score_distributions_over_many_draws(quantus, name):
    """A smooth nonlinear explainer (a = x**2) with default noise: each sample's score is a
    function of its K random draws, so over 300 samples the two libraries' scores must follow
    the same distribution (two-sample Kolmogorov-Smirnov) with the same mean (Welch z)."""
    from scipy.stats import ks_2samp

    n = 300
    g = torch.Generator().manual_seed(7)
    x = 0.2 + torch.rand(n, 1, 4, 4, generator=g)
    model = Linear(16, 3, seed=3).eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    xn, yn = x.numpy(), y.numpy()
    a = _square_np(None, xn, yn)
    ours_cls = {c.__name__: c for c in (LocalLipschitzEstimate, MaxSensitivity, AvgSensitivity,
                                        RelativeInputStability, RelativeOutputStability,
                                        RelativeRepresentationStability)}[name]
    q_kw: dict = {"nr_samples": 3, "disable_warnings": True}
    kw: dict = {"nr_samples": 3, "seed": 0}
    if name == "LocalLipschitzEstimate":
        # Quantus normalises over the batch (deviation C1)
        q_kw["normalise"] = kw["normalise"] = False
    if name.startswith("Relative"):
        q_kw["return_nan_when_prediction_changes"] = False
        kw["on_prediction_change"] = "keep"
    if name == "RelativeRepresentationStability":
        q_kw["layer_names"] = kw["layer_names"] = ["fc"]
    q = getattr(quantus, name)(**q_kw)
    state = np.random.get_state()  # noqa: NPY002  (Quantus draws from the global generator)
    try:
        np.random.seed(1234)  # noqa: NPY002  (deterministic test; restored below)
        theirs = _q(q, model, xn, yn, a, _square_np)
    finally:
        np.random.set_state(state)  # noqa: NPY002
    ours = ours_cls(**kw)(model, x, y, a, explain_fn=numpy_explain_fn(_square_np))
    if name in ("RelativeInputStability", "RelativeOutputStability",
                "RelativeRepresentationStability"):
        ours, theirs = np.log(ours), np.log(theirs)  # ratios: compare on the log scale
    assert np.isfinite(ours).all() and np.isfinite(theirs).all()
    assert ks_2samp(ours, theirs).pvalue > 1e-3
    se = np.sqrt(ours.var(ddof=1) / n + theirs.var(ddof=1) / n)
    assert abs(ours.mean() - theirs.mean()) <= 4 * se



def test_layer_indices_select_quantus_layers(quantus):
    """``layer_indices`` index Quantus' layer list (the modules except the model itself and
    nn.Sequential containers): the same position selects the same layer in both libraries.
    Quantus' negative indices are off by one (-1 selects nothing); ours count from the end."""
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.act = nn.Tanh()

        def forward(self, x):
            return self.act(self.conv(x)) + x

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            with torch.random.fork_rng():
                torch.manual_seed(0)
                self.block = Block()
                self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))

        def forward(self, x):
            return self.head(self.block(x))

    net = Net().eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)).numpy()
    from quantus.helpers.model.pytorch_model import PyTorchModel

    qm = PyTorchModel(net, channel_first=True, softmax=False, device="cpu")
    listed = RelativeRepresentationStability(layer_indices=list(range(5))).resolve_layers(net)
    assert listed == ["block", "block.conv", "block.act", "head.0", "head.1"]
    for i, name in enumerate(listed):
        np.testing.assert_array_equal(qm.get_hidden_representations(x, layer_indices=[i]),
                                      qm.get_hidden_representations(x, layer_names=[name]))
    with pytest.raises(ValueError):  # Quantus: "No hidden representations were selected"
        qm.get_hidden_representations(x, layer_indices=[-1])
    assert RelativeRepresentationStability(layer_indices=[-1]).resolve_layers(net) == ["head.1"]
