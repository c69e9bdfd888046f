"""Metric metadata: class defaults on the class, values derived from the parameters on an
instance (one mechanism, one rule for ``stochastic``), as reported by ``metadata()``,
``evaluate()``'s ``Results.metric_info`` and a resumed store; and scikit-learn's semantics of
``get_params`` / ``set_params`` / ``clone``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from _evaluate_helpers import problem

import evalkit as ek
from evalkit.metrics import (
    IROF,
    MPRT,
    ROAD,
    AverageDrop,
    AverageIncrease,
    Completeness,
    Continuity,
    Deletion,
    FaithfulnessCorrelation,
    FaithfulnessEstimate,
    Infidelity,
    InputInvariance,
    Insertion,
    MaxSensitivity,
    Metric,
    MetricBatch,
    Monotonicity,
    MonotonicityCorrelation,
    NonSensitivity,
    PixelFlipping,
    RandomLogit,
    RegionPerturbation,
    Selectivity,
    SensitivityN,
    SmoothMPRT,
    Sparseness,
)
from evalkit.metrics.base import _REGISTRY, DERIVED_METADATA, _source_is_random
from evalkit.perturb import Baseline, NoisyLinearImputer

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.EvalkitWarning")

REGISTERED = sorted(_REGISTRY)


# ---------------------------------------------------------------------- defaults
@pytest.mark.parametrize("name", REGISTERED)
def test_a_default_instance_reports_the_class_defaults(name):
    cls = _REGISTRY[name]
    metric = cls()
    assert metric.metadata() == cls.metadata()
    for key in DERIVED_METADATA:
        kind = tuple if key == "modalities" else bool
        assert isinstance(getattr(cls, key), kind), (name, key)
        assert isinstance(getattr(metric, key), kind), (name, key)
    # metadata are derived, never stored on the instance (a stored value goes stale)
    assert not set(DERIVED_METADATA) & set(vars(metric)), name
    derived = metric._derived_metadata()
    assert set(derived) <= set(DERIVED_METADATA) - {"stochastic"}, name
    for source_name, source in metric._random_sources().items():
        _source_is_random(source_name, source)  # a valid source: raises otherwise


def test_list_metrics_reports_the_class_defaults():
    frame = ek.metrics.list_metrics().set_index("name")
    for name in REGISTERED:
        row = frame.loc[name]
        for key, value in _REGISTRY[name].metadata().items():
            if key != "name":
                assert row[key] == value, (name, key)
    assert frame.loc["ROAD", "higher_is_better"] and frame.loc["ROAD", "stochastic"]
    assert not frame.loc["SensitivityN", "set_level"]
    assert not frame.loc["PixelFlipping", "stochastic"]


# ---------------------------------------------------------------------- non-default instances
# (label, factory, the metadata in which the instance differs from its class)
NON_DEFAULT: list[tuple[str, Callable[[], Metric], dict[str, bool]]] = [
    ("ROAD-morf", lambda: ROAD(order="morf"), {"higher_is_better": False}),
    ("ROAD-noise0", lambda: ROAD(noise=0.0), {"stochastic": False}),
    ("ROAD-black-imputer", lambda: ROAD(imputer=Baseline("black")), {"stochastic": False}),
    ("MPRT-mse", lambda: MPRT(similarity_func="mse"), {"higher_is_better": True}),
    ("SmoothMPRT-mse", lambda: SmoothMPRT(similarity_func="mse"), {"higher_is_better": True}),
    ("RandomLogit-mse", lambda: RandomLogit(similarity_func="mse"), {"higher_is_better": True}),
    ("Completeness-residual", lambda: Completeness(return_residual=True),
     {"higher_is_better": False}),
    ("InputInvariance-residual", lambda: InputInvariance(return_residual=True),
     {"higher_is_better": False}),
    ("Completeness-uniform", lambda: Completeness(perturb_baseline="uniform"),
     {"stochastic": True}),
    ("NonSensitivity-uniform", lambda: NonSensitivity(perturb_baseline="uniform"),
     {"stochastic": True}),
    ("PixelFlipping-uniform", lambda: PixelFlipping(perturb_baseline="uniform"),
     {"stochastic": True}),
    ("Deletion-uniform", lambda: Deletion(perturb_baseline="uniform"), {"stochastic": True}),
    ("Insertion-uniform", lambda: Insertion(perturb_baseline="uniform"), {"stochastic": True}),
    ("Selectivity-uniform", lambda: Selectivity(perturb_baseline="uniform"),
     {"stochastic": True}),
    ("IROF-uniform", lambda: IROF(perturb_baseline="uniform"), {"stochastic": True}),
    ("Monotonicity-uniform", lambda: Monotonicity(perturb_baseline="uniform"),
     {"stochastic": True}),
    ("FaithfulnessEstimate-uniform", lambda: FaithfulnessEstimate(perturb_baseline="uniform"),
     {"stochastic": True}),
    ("SensitivityN-morf", lambda: SensitivityN(subsets="morf"),
     {"set_level": True, "stochastic": False}),
    ("RegionPerturbation-lerf", lambda: RegionPerturbation(order="lerf"),
     {"higher_is_better": False}),
    ("RegionPerturbation-random", lambda: RegionPerturbation(order="random"),
     {"stochastic": True}),
    ("MonotonicityCorrelation-black", lambda: MonotonicityCorrelation(perturb_baseline="black"),
     {"stochastic": False}),
    ("Infidelity-patches", lambda: Infidelity(perturb_func="patches"), {"stochastic": False}),
    ("AverageDrop-invert", lambda: AverageDrop(invert=True), {"higher_is_better": True}),
    ("AverageIncrease-invert", lambda: AverageIncrease(invert=True),
     {"higher_is_better": False}),
    ("AverageDrop-uniform", lambda: AverageDrop(perturb_baseline="uniform"),
     {"stochastic": True}),
    ("Continuity-gaussian", lambda: Continuity(perturb_func="gaussian"), {"stochastic": True}),
    ("Continuity-uniform-fill", lambda: Continuity(perturb_baseline="uniform"),
     {"stochastic": True}),
]

# instances whose metadatum keeps the class default (the rule does not over-report)
SAME_AS_CLASS: list[tuple[str, Callable[[], Metric], str, bool]] = [
    ("SensitivityN-morf-uniform", lambda: SensitivityN(subsets="morf",
                                                       perturb_baseline="uniform"),
     "stochastic", True),
    ("RegionPerturbation-random-direction", lambda: RegionPerturbation(order="random"),
     "higher_is_better", True),
    ("Infidelity-patches-uniform", lambda: Infidelity(perturb_func="patches",
                                                      perturb_baseline="uniform"),
     "stochastic", True),
    ("FaithfulnessCorrelation-black", lambda: FaithfulnessCorrelation(perturb_baseline="black"),
     "stochastic", True),
    ("Continuity-callable-uniform-fill",
     lambda: Continuity(perturb_func=lambda x, step: x, perturb_baseline="uniform"),
     "stochastic", False),
    ("ROAD-lerf", lambda: ROAD(order="lerf"), "higher_is_better", True),
]


@pytest.mark.parametrize(("label", "make", "changes"), NON_DEFAULT,
                         ids=[c[0] for c in NON_DEFAULT])
def test_an_instance_reports_its_own_metadata(label, make, changes):
    metric = make()
    cls = type(metric)
    # modalities may follow the same setting: test_modalities_follow_the_settings
    own = {k: v for k, v in metric.metadata().items() if k != "modalities"}
    assert own == {k: v for k, v in {**cls.metadata(), **changes}.items() if k != "modalities"}
    row = ek.metrics.list_metrics().set_index("name").loc[cls.__name__]
    for key, value in changes.items():
        assert getattr(metric, key) is value
        assert getattr(cls, key) is (not value) and cls.metadata()[key] is (not value)
        assert cls().metadata()[key] is (not value)
        assert bool(row[key]) is (not value)  # list_metrics keeps the class default
    assert metric.clone().metadata() == metric.metadata()


@pytest.mark.parametrize(("label", "make", "key", "value"), SAME_AS_CLASS,
                         ids=[c[0] for c in SAME_AS_CLASS])
def test_an_instance_keeps_the_class_value_where_its_parameters_do_not_change_it(
        label, make, key, value):
    metric = make()
    assert getattr(metric, key) is value and getattr(type(metric), key) is value


def test_completeness_with_a_random_baseline_is_stochastic_because_it_depends_on_the_seed():
    """The bug the single rule fixes: Completeness (and NonSensitivity) said
    ``stochastic=False`` with a random baseline (so metaeval did not seed them), yet the scores
    depend on the seed."""
    model, x, y, _ = problem(4)
    a = ek.explain(model, x, y, method="Saliency")
    def make(seed: int) -> Completeness:
        return Completeness(perturb_baseline="uniform", return_residual=True, seed=seed)

    first, second = make(1)(model, x, y, a), make(2)(model, x, y, a)
    assert not np.allclose(first, second, equal_nan=True)
    assert make(1).stochastic is True


# ---------------------------------------------------------------------- set_params, clone
def test_metadata_follow_set_params_in_place():
    """The stale-metadata bug: metadata must follow the parameters of the object itself."""
    road = ROAD()
    assert road.set_params(order="morf") is road
    assert road.higher_is_better is False and road.metadata()["higher_is_better"] is False
    assert road.set_params(order="lerf").higher_is_better is True

    pf = PixelFlipping()
    assert pf.stochastic is False
    pf.set_params(perturb_baseline="uniform")
    assert pf.stochastic is True and pf._plan.imputer.stochastic  # derived state rebuilt
    pf.set_params(perturb_baseline="black")
    assert pf.stochastic is False

    sens = SensitivityN()
    sens.set_params(subsets="morf")
    assert sens.set_level is True and sens.stochastic is False
    mprt = MPRT()
    mprt.set_params(similarity_func="mse")
    assert mprt.higher_is_better is True
    comp = Completeness()
    comp.set_params(return_residual=True)
    assert comp.higher_is_better is False
    cont = Continuity()
    cont.set_params(perturb_func="uniform")
    assert cont.stochastic is True
    mc = MonotonicityCorrelation()
    mc.set_params(perturb_baseline="black")
    assert mc.stochastic is False
    assert ROAD.higher_is_better is True and PixelFlipping.stochastic is False  # classes kept


def test_metadata_follow_parameters_assigned_directly():
    """Derived on every read: even a parameter assigned as an attribute is followed (where
    the metric reads that attribute when it computes)."""
    road = ROAD()
    road.order = "morf"
    assert road.higher_is_better is False and road.metadata()["higher_is_better"] is False
    mprt = MPRT()
    mprt.similarity_func = "mse"
    assert mprt.higher_is_better is True


def test_set_params_validates_like_the_constructor_and_leaves_the_metric_unchanged():
    road = ROAD(order="morf", percentages=[20])
    with pytest.raises(ValueError, match="order"):
        road.set_params(order="bogus")
    with pytest.raises(TypeError, match="Unknown parameters"):
        road.set_params(colour="red")
    assert road.order == "morf" and road.percentages == [20] and road.higher_is_better is False
    imputer = road._imputer
    road.set_params(noise=0.0)
    assert road._imputer is not imputer and isinstance(road._imputer, NoisyLinearImputer)
    assert road._imputer.noise == 0.0 and road.stochastic is False
    assert road.set_params() is road


def test_set_params_clears_the_results_of_earlier_parameters():
    a = np.random.default_rng(0).random((3, 1, 4, 4))
    metric = Sparseness()
    metric(None, a, None, a)
    assert metric.scores_ is not None
    metric.set_params(abs=True)
    assert metric.abs is True and metric.scores_ is None and metric.nan_reasons_ == {}


def test_clone_is_a_new_uncalled_metric_with_the_same_parameters():
    a = np.random.default_rng(0).random((3, 1, 4, 4))
    metric = Sparseness(abs=True)
    metric(None, a, None, a)
    twin = metric.clone()
    assert twin is not metric and type(twin) is Sparseness and twin.scores_ is None
    assert twin.get_params() == metric.get_params()
    assert ek.metrics.clone(metric).get_params() == metric.get_params()
    road = ROAD(order="lerf", percentages=[10, 50])
    other = road.clone().set_params(order="morf")
    assert road.order == "lerf" and road.higher_is_better is True
    assert other.order == "morf" and other.higher_is_better is False
    assert other._grouping is not road._grouping and other._imputer is not road._imputer
    with pytest.raises(TypeError, match="evalkit Metric"):
        ek.metrics.clone("ROAD")


def test_get_params_returns_the_constructor_parameters():
    road = ROAD(order="morf")
    params = road.get_params(deep=True)
    assert params == road.get_params(deep=False)
    assert params["order"] == "morf" and params["noise"] == 0.01 and "seed" in params
    assert not set(DERIVED_METADATA) & set(params)
    assert type(road)(**params).get_params() == params


# ---------------------------------------------------------------------- a user metric
class _UserMetric(Metric):
    """A user metric with a parameter-dependent direction and random source (not registered:
    leading underscore)."""

    family = "faithfulness"
    higher_is_better = True
    stochastic = False

    def __init__(self, flip: bool = False, noisy: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.flip = flip
        self.noisy = noisy

    def _derived_metadata(self) -> dict[str, bool]:
        return {"higher_is_better": not self.flip}

    def _random_sources(self) -> dict[str, Any]:
        return {"noise": self.noisy}

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        return batch.a.reshape(batch.n, -1).sum(1)


def test_a_user_metric_derives_its_metadata_through_the_same_hooks():
    metric = _UserMetric(flip=True, noisy=True)
    assert (metric.higher_is_better, metric.stochastic) == (False, True)
    assert (_UserMetric.higher_is_better, _UserMetric.stochastic) == (True, False)
    assert _UserMetric().metadata() == _UserMetric.metadata()
    metric.set_params(flip=False, noisy=False)
    assert metric.metadata() == _UserMetric.metadata()
    # an instance may still pin a value by hand (until set_params rebuilds it)
    metric.higher_is_better = False
    assert metric.higher_is_better is False and metric.metadata()["higher_is_better"] is False
    metric.set_params(noisy=True)
    assert metric.higher_is_better is True


def test_an_invalid_random_source_is_reported():
    class _Bad(_UserMetric):
        def _random_sources(self) -> dict[str, Any]:
            return {"mystery": "uniform"}

    with pytest.raises(TypeError, match="mystery"):
        _ = _Bad().stochastic


# ---------------------------------------------------------------------- evaluate and the store
def _instance_metrics() -> dict[str, Metric]:
    return {
        "ROAD-morf": ROAD(order="morf", percentages=[50]),
        "Completeness-residual": Completeness(return_residual=True),
        "PF-uniform": PixelFlipping(features_in_step=256, perturb_baseline="uniform"),
        "SensN-morf": SensitivityN(subsets="morf", features_in_step=256),
        "MonoCorr-black": MonotonicityCorrelation(nr_samples=2, features_in_step=256,
                                                  perturb_baseline="black"),
        "MPRT-mse": MPRT(similarity_func="mse"),
        "MaxSens": MaxSensitivity(nr_samples=2),
    }


EXPECTED = {
    "ROAD-morf": {"higher_is_better": False, "stochastic": True, "set_level": False},
    "Completeness-residual": {"higher_is_better": False, "stochastic": False,
                              "set_level": False},
    "PF-uniform": {"higher_is_better": False, "stochastic": True, "set_level": False},
    "SensN-morf": {"higher_is_better": True, "stochastic": False, "set_level": True},
    "MonoCorr-black": {"higher_is_better": True, "stochastic": False, "set_level": False},
    "MPRT-mse": {"higher_is_better": True, "stochastic": True, "set_level": False},
    "MaxSens": {"higher_is_better": False, "stochastic": True, "set_level": False},
}


def test_evaluate_and_the_store_record_the_instance_metadata(tmp_path):
    model, x, y, _ = problem(4)
    metrics = _instance_metrics()
    before = {k: (m.get_params(), dict(vars(m))) for k, m in metrics.items()}
    store = str(tmp_path / "r.sqlite")
    first = ek.evaluate(metrics, ["Saliency"], model, x, y, seed=0, store=store,
                        progress=False)
    assert not first.errors
    resumed = ek.evaluate(_instance_metrics(), ["Saliency"], model, x, y, seed=0, store=store,
                          progress=False)
    for results in (first, resumed):
        config = json.loads(results.to_json())["metrics"]
        for name, want in EXPECTED.items():
            info = results.metric_info[name]
            got = {k: info[k] for k in want}
            assert got == want, name
            assert {k: config[name][k] for k in want} == want, name
            assert results.higher_is_better(name) is want["higher_is_better"]
            assert info["re_explains"] is metrics[name].re_explains
    np.testing.assert_array_equal(resumed["Saliency", "PF-uniform"],
                                  first["Saliency", "PF-uniform"])
    # evaluate() runs copies: the user's metrics are neither changed nor called
    for name, metric in metrics.items():
        params, state = before[name]
        assert metric.get_params() == params and metric.scores_ is None, name
        assert set(vars(metric)) == set(state), name
        assert metric.metadata()["higher_is_better"] is EXPECTED[name]["higher_is_better"]



IMAGE_SERIES_TABULAR = ("image", "series", "tabular")


@pytest.mark.parametrize(("make", "modalities"), [
    (lambda: ek.metrics.ROAD(), ("image", "series")),
    (lambda: ek.metrics.ROAD(background="batch"), IMAGE_SERIES_TABULAR),
    (lambda: ek.metrics.ROAD(imputer=ek.perturb.make_imputer("mean")), IMAGE_SERIES_TABULAR),
    (lambda: ek.metrics.Insertion(), ("image", "series")),
    # a canvas of mask tokens is defined for ids, a blurred or random one is not
    (lambda: ek.metrics.Insertion(perturb_baseline="black"), (*IMAGE_SERIES_TABULAR, "tokens")),
    (lambda: ek.metrics.Continuity(), ("image", "series")),
    (lambda: ek.metrics.Continuity(perturb_func="translation_y"), ("image",)),
    (lambda: ek.metrics.Continuity(perturb_func="gaussian"), IMAGE_SERIES_TABULAR),
    (lambda: ek.metrics.IROF(), IMAGE_SERIES_TABULAR),
    (lambda: ek.metrics.Sparseness(), (*IMAGE_SERIES_TABULAR, "tokens")),
    (lambda: ek.metrics.Insertion(perturb_baseline="uniform"), IMAGE_SERIES_TABULAR),
    (lambda: ek.metrics.PixelFlipping(), (*IMAGE_SERIES_TABULAR, "tokens")),
    (lambda: ek.metrics.PixelFlipping(perturb_baseline="delete"), ("tokens",)),
    (lambda: ek.metrics.MonotonicityCorrelation(), IMAGE_SERIES_TABULAR),
], ids=["ROAD", "ROAD-background", "ROAD-imputer", "Insertion", "Insertion-black", "Continuity",
        "Continuity-y", "Continuity-noise", "IROF", "Sparseness", "Insertion-uniform",
        "PixelFlipping", "PixelFlipping-delete", "MonotonicityCorrelation"])
def test_modalities_follow_the_settings(make, modalities):
    metric = make()
    assert metric.modalities == modalities
    assert metric.metadata()["modalities"] == modalities
    assert metric.clone().modalities == modalities
