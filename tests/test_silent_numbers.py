"""Issue 21: inputs that gave a plausible but wrong number, and errors that blamed the wrong thing.

One group of tests per item: (1) a second softmax on outputs that are probabilities already,
(2) integer images cast to float without a word about their range, (3) constant and all-zero
maps scored by the order of tied features, (4) Completeness against another baseline than the
explainer's, (5) (N,) outputs, decision functions and torch functions wrapped as NumPy callables.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit import metrics as M
from evalkit.metrics._ties import CONSTANT_MAP, RanksFeatures
from evalkit.modality import ImageModality, TokensModality
from evalkit.models import BinaryTarget, OutputIndex, wrap_model
from evalkit.models.base import ModelCallError, looks_like_probabilities

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.UndefinedScoreWarning")


def _net(seed: int = 0, classes: int = 4) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 36, classes)).double().eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(3)
    x = torch.rand((6, 3, 6, 6), generator=g, dtype=torch.float64)
    net = _net()
    with torch.no_grad():
        y = net(x).argmax(1)
    a = torch.randn((6, 1, 6, 6), generator=g, dtype=torch.float64)
    return net, x, y, a


# ------------------------------------------------------------------ 1. double softmax
def test_probability_function_gets_no_second_softmax_by_default(data):
    net, x, y, a = data
    probs = nn.Sequential(net, nn.Softmax(dim=1))

    def predict_proba(batch: np.ndarray) -> np.ndarray:  # a NumPy function of probabilities
        with torch.no_grad():
            return probs(torch.as_tensor(batch, dtype=torch.float64)).numpy()

    metric = M.PixelFlipping(features_in_step=6)
    want = metric(wrap_model(predict_proba, softmax=False), x, y, a)
    for model in (predict_proba, probs):  # a plain function; a module ending in nn.Softmax
        with pytest.warns(ek.EvalkitWarning, match="already probabilities"):
            got = metric(model, x, y, a)
        np.testing.assert_allclose(got, want, rtol=1e-6)  # (the function runs in float32)
    # on logits the default softmax applies, with no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", ek.EvalkitWarning)
        logits = metric(net, x, y, a)
    np.testing.assert_allclose(logits, metric(probs, x, y, a, softmax=False), rtol=1e-12)
    # an explicit softmax=True is kept, with a warning
    with pytest.warns(ek.EvalkitWarning, match="second softmax"):
        twice = M.PixelFlipping(features_in_step=6, softmax=True)(predict_proba, x, y, a)
    assert not np.allclose(twice, want)


def test_softmax_over_a_single_output_is_not_applied(data):
    net, x, _, a = data
    one = nn.Sequential(net, nn.Linear(4, 1).double())
    zeros = torch.zeros(6, dtype=torch.long)
    with pytest.warns(ek.EvalkitWarning, match="1.0 for every input"):
        got = M.PixelFlipping(features_in_step=6)(one, x, zeros, a)
    want = M.PixelFlipping(features_in_step=6, softmax=False)(one, x, zeros, a)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    with pytest.raises(ValueError, match="softmax=False"):
        M.PixelFlipping(features_in_step=6, softmax=True)(one, x, zeros, a)


def test_probability_detection():
    assert looks_like_probabilities(torch.tensor([[0.2, 0.8], [1.0, 0.0]]))
    assert not looks_like_probabilities(torch.tensor([[0.2, 0.7]]))  # does not sum to 1
    assert not looks_like_probabilities(torch.tensor([[1.5, -0.5]]))  # negative
    assert not looks_like_probabilities(torch.tensor([[1.0]]))  # one class
    assert not looks_like_probabilities(torch.tensor([0.5, 0.5]))  # no class axis


# ------------------------------------------------------------------ 2. integer images
def test_integer_images_need_a_stated_range(data):
    net, _, y, a = data
    x8 = torch.randint(0, 256, (6, 3, 6, 6), generator=torch.Generator().manual_seed(0),
                       dtype=torch.uint8)
    metric = M.PixelFlipping(features_in_step=6)
    for call in (lambda: metric(net, x8, y, a), lambda: metric(net, x8.numpy(), y, a),
                 lambda: ek.explain(net, x8, y), lambda: wrap_model(net).predict(x8),
                 lambda: M.Sparseness()(None, x8, y, a)):
        with pytest.raises(ValueError, match=r"integer images.*x\.float\(\) / 255.*value_range"):
            call()
    stated = metric(net, x8, y, a, modality=ImageModality(value_range=(0, 255)))
    np.testing.assert_allclose(stated, metric(net, x8.double(), y, a), rtol=1e-12)
    with pytest.raises(ValueError, match="outside the stated value_range"):
        metric(net, x8, y, a, modality=ImageModality(value_range=(0, 1)))


def test_token_ids_and_integer_series_keep_their_meaning():
    ids = torch.tensor([[5, 2, 9], [1, 0, 3]])
    wrapper = wrap_model(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))
    assert torch.equal(wrapper.prepare(ids, TokensModality()), ids)  # never cast
    series = torch.randint(0, 5, (2, 1, 7))
    assert torch.equal(wrapper.prepare(series, "series"), series.float())  # counts: numbers


# ------------------------------------------------------------------ 3. constant maps
RANKING = [
    M.PixelFlipping(features_in_step=6), M.Deletion(n_steps=6), M.Insertion(n_steps=6),
    M.RegionPerturbation(patch_size=2, regions_evaluation=5), M.Selectivity(patch_size=3),
    M.IROF(segmentation_kwargs={"n_segments": 6}), M.Monotonicity(features_in_step=6),
    M.ROAD(percentages=[25, 75], seed=0), M.SensitivityN(features_in_step=6, subsets="morf"),
    M.FaithfulnessEstimate(features_in_step=5),
    M.MonotonicityCorrelation(nr_samples=2, features_in_step=5, seed=0),
    M.PointingGame(), M.RelevanceRankAccuracy(), M.TopKIntersection(k=5), M.AUC(),
    M.Consistency(),
]


@pytest.mark.parametrize("metric", RANKING, ids=lambda m: type(m).__name__)
def test_constant_and_zero_maps_are_nan_with_a_reason(metric, data):
    net, x, y, a = data
    s = torch.zeros((6, 1, 6, 6), dtype=torch.bool)
    s[..., 1:4, 1:4] = True
    odd = a.clone()
    odd[0] = 0.0  # all zero
    odd[1] = 0.3  # constant
    assert isinstance(metric, RanksFeatures) and metric.constant_maps == "nan"
    out = metric(net, x, y, odd, s=s)
    assert np.isnan(out[:2]).all()
    assert metric.nan_reasons_[0] == metric.nan_reasons_[1] == CONSTANT_MAP
    assert not any(metric.nan_reasons_.get(i) == CONSTANT_MAP for i in range(2, 6))
    # the option keeps the tie-broken score
    scoring = metric.clone().set_params(constant_maps="score")
    kept = scoring(net, x, y, odd, s=s)
    assert not any(r == CONSTANT_MAP for r in scoring.nan_reasons_.values())
    if not metric.set_level:
        np.testing.assert_allclose(kept[2:], out[2:], rtol=1e-12)


def test_issue_examples_pixelflipping_and_relevance_rank_accuracy(data):
    net, x, y, _ = data
    zero = torch.zeros((6, 1, 6, 6), dtype=torch.float64)
    s = torch.zeros((6, 1, 6, 6), dtype=torch.bool)
    s[..., :2, :] = True
    assert np.isnan(M.PixelFlipping()(net, x, y, zero)).all()
    assert np.isnan(M.RelevanceRankAccuracy()(None, x, y, zero, s=s)).all()
    # today's numbers, on request
    assert np.isfinite(M.PixelFlipping(constant_maps="score")(net, x, y, zero)).all()
    np.testing.assert_allclose(
        M.RelevanceRankAccuracy(constant_maps="score")(None, x, y, zero, s=s), 1 / 3)


def test_random_orders_do_not_rank_and_keep_scoring_constant_maps(data):
    net, x, y, _ = data
    const = torch.full((6, 1, 6, 6), 0.5, dtype=torch.float64)
    out = M.RegionPerturbation(patch_size=2, order="random", seed=1)(net, x, y, const)
    assert np.isfinite(out).all()


def test_partial_ties_are_ranked_in_group_id_order(data):
    """A map with one relevant pixel and ties elsewhere: removal order is that pixel, then the
    tied pixels in raster order (the same as a strictly decreasing raster ramp behind it)."""
    net, x, y, _ = data
    partial = torch.zeros((6, 1, 6, 6), dtype=torch.float64)
    partial[:, 0, 4, 4] = 1.0
    ramp = -torch.arange(36, dtype=torch.float64).reshape(1, 1, 6, 6).repeat(6, 1, 1, 1) - 1
    ramp[:, 0, 4, 4] = 1.0
    metric = M.PixelFlipping(features_in_step=4, normalise=False)
    np.testing.assert_array_equal(metric(net, x, y, partial), metric(net, x, y, ramp))


# ------------------------------------------------------------------ 4. Completeness baseline
def test_completeness_uses_the_explainers_baseline(data):
    net, x, y, _ = data
    x = x + 0.2  # a per-sample minimum far from IG's zero baseline
    ig = {"method": "IntegratedGradients", "n_steps": 200}
    a = ek.explain(net, x, y, **ig)
    metric = M.Completeness()
    np.testing.assert_array_equal(metric(net, x, y, a), 1.0)  # as explain() returned it
    assert "IntegratedGradients" in metric.baseline_
    np.testing.assert_array_equal(metric(net, x, y, a.clone(), explain_kwargs=ig), 1.0)
    np.testing.assert_array_equal(metric(net, x, y, explain_kwargs=ig), 1.0)  # explains itself
    shifted = torch.full_like(x, 0.1)
    a2 = ek.explain(net, x, y, baselines=shifted, **ig)
    np.testing.assert_array_equal(metric(net, x, y, a2), 1.0)
    # an unknown provenance keeps Quantus' default, "black"
    np.testing.assert_array_equal(metric(net, x, y, a.clone()), 0.0)
    assert "black" in metric.baseline_
    # an explicit, different baseline is used, with a warning
    with pytest.warns(ek.EvalkitWarning, match="baseline"):
        np.testing.assert_array_equal(M.Completeness(perturb_baseline="black")(net, x, y, a),
                                      0.0)
    results = ek.evaluate(metrics={"Completeness": M.Completeness()},
                          xai_methods={"IG": ig}, model=net, x=x, y=y, progress=False)
    np.testing.assert_array_equal(results.to_frame()["score"].to_numpy(), 1.0)


# ------------------------------------------------------------------ 5. errors
def test_outputs_without_a_class_axis_name_the_target(data):
    net, x, y, a = data
    flat = nn.Sequential(net, nn.Linear(4, 1).double(), nn.Flatten(0))  # (N,) outputs
    with pytest.raises(ValueError, match="no class axis") as err:
        M.PixelFlipping()(flat, x, y, a)
    assert "BinaryTarget" in str(err.value) and "OutputIndex" in str(err.value)
    assert "rank and layout" not in str(err.value)
    with pytest.raises(ValueError, match="no class axis"):
        ek.explain(flat, x, y)


def test_decision_function_works_with_binary_target():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, 5)).astype(np.float32)
    labels = (features[:, 0] - features[:, 1] > 0).astype(int)
    clf = LogisticRegression().fit(features, labels)
    model = wrap_model(clf.decision_function, target=BinaryTarget())
    d = clf.decision_function(features)
    want = np.where(labels == 1, d, -d)  # the log-odds of the labelled class
    np.testing.assert_allclose(model.score(features, labels).numpy(), want, rtol=1e-5)
    np.testing.assert_array_equal(model.target.predict(torch.as_tensor(d)).numpy(),
                                  clf.predict(features))
    a = np.abs(rng.normal(size=features.shape))
    out = M.PixelFlipping()(model, features, labels, a, modality="tabular")
    assert np.isfinite(out).all()
    with pytest.raises(ValueError, match="labels 0 or 1"):
        model.score(features, labels + 1)
    from sklearn.svm import LinearSVC

    with pytest.raises(TypeError, match=r"decision_function, target=BinaryTarget\(\)"):
        wrap_model(LinearSVC().fit(features, labels))
    reg = wrap_model(clf.decision_function, target=OutputIndex())
    np.testing.assert_allclose(reg.score(features).numpy(), d, rtol=1e-5)


def test_torch_function_wrapped_as_numpy_callable_hints_input_type(data):
    _, x, y, a = data
    net = _net().float()
    x = x.float()

    def fn(t):
        return net(t)

    with pytest.raises(TypeError, match="input_type='torch'"):
        ek.explain(fn, x, y, method="Saliency")
    with pytest.raises(ModelCallError, match="input_type='torch'"):
        M.PixelFlipping()(fn, x, y, a)
    wrapped = wrap_model(fn, input_type="torch")
    assert ek.explain(wrapped, x, y, method="Saliency").shape == x.shape


# the kernels through which a metric orders features by attribution
_RANKING_CALLS = ("order_groups", "rank_groups", "removal_curve", "_expected_top_hits",
                  "_average_ranks_sorted")


def _ranking_calls(cls: type) -> list[str]:
    """The calls in a metric class's own code (and its metric bases') that order features by
    attribution: ``order_groups`` with an order other than "index"/"random", or a kernel that
    ranks (removal curves, top-k hits, average ranks)."""
    import ast
    import inspect
    import textwrap

    found = []
    for klass in cls.__mro__:
        if klass is M.Metric or not issubclass(klass, M.Metric):
            continue
        # the methods' source (a class moved to its package's name has no findable source)
        code = "\n".join(textwrap.dedent(inspect.getsource(f)) for f in vars(klass).values()
                         if inspect.isfunction(f))
        for node in ast.walk(ast.parse(code)):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name not in _RANKING_CALLS:
                continue
            if name == "order_groups":
                order = node.args[2] if len(node.args) > 2 else next(
                    (k.value for k in node.keywords if k.arg == "order"), None)
                if isinstance(order, ast.Constant) and order.value in ("index", "random"):
                    continue
            found.append(f"{klass.__name__}: {name}")
    return found


def test_every_metric_that_ranks_features_handles_constant_maps():
    """A registered metric whose code orders features by attribution subclasses
    RanksFeatures, so that constant maps are NaN with a reason (or scored on request)."""
    missing = {}
    for name in M.list_metrics()["name"]:
        cls = M.get(name)
        calls = _ranking_calls(cls)
        if calls and not issubclass(cls, RanksFeatures):
            missing[name] = calls
    assert not missing, f"rank features but do not subclass RanksFeatures: {missing}"


def test_constant_maps_are_the_maps_whose_feature_values_are_all_equal():
    from types import SimpleNamespace

    from evalkit.metrics._ties import constant_maps

    a = torch.randn(6, 3, 4, 5)
    a[1] = 2.5  # constant
    a[2] = 0.0
    a[2, 0, 0, 0] = -0.0  # -0.0 equals 0.0: still constant
    a[3, 1, 2, 3] = float("nan")  # a NaN feature: not constant
    a[4] = float("nan")  # all NaN: not constant (NaN equals nothing)
    a[5, :, :, :] = 1.0
    a[5, 0, 0, 0] = 1.5  # one feature differs (its channel sum)
    batch = SimpleNamespace(a=a, modality=ImageModality(), metric=None)
    features = a.sum(1).reshape(6, -1)
    lo, hi = torch.aminmax(features, dim=1)
    assert constant_maps(batch).tolist() == (hi == lo).tolist() == [
        False, True, True, False, False, False]
