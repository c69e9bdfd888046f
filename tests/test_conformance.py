"""The conformance suite (:mod:`evalkit.testing`) over every registered metric, and over
instances whose settings change their metadata; test-only broken metrics fail exactly the
checks they should.

Every (metric, check) pair that fails today because of a library bug is listed in
``KNOWN_FAILURES`` with the bug, and runs as ``xfail(strict=True)``: fixing the bug makes the
test XPASS, which fails the suite until the entry is removed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import evalkit as ek
from evalkit import _rng
from evalkit.metrics import Metric, MetricBatch, list_metrics
from evalkit.perturb import make_imputer
from evalkit.testing import CHECKS, cheap_metric, check_metric, parametrize_with_checks

# ============================================================================ every metric
REGISTERED = {name: cheap_metric(name) for name in list_metrics()["name"]}

#: instances whose settings change what their metadata should say
NON_DEFAULT = {
    "ROAD(order='morf')": cheap_metric("ROAD", order="morf"),
    "ROAD(order='lerf')": cheap_metric("ROAD", order="lerf"),
    "ROAD(noise=0)": cheap_metric("ROAD", noise=0.0),
    "RegionPerturbation(order='lerf')": cheap_metric("RegionPerturbation", order="lerf"),
    "RegionPerturbation(order='random')": cheap_metric("RegionPerturbation", order="random"),
    "PixelFlipping(perturb_baseline='uniform')": cheap_metric("PixelFlipping",
                                                              perturb_baseline="uniform"),
    "Deletion(perturb_baseline='uniform')": cheap_metric("Deletion", perturb_baseline="uniform"),
    "SensitivityN(subsets='morf')": cheap_metric("SensitivityN", subsets="morf"),
    "MonotonicityCorrelation(perturb_baseline='black')": cheap_metric(
        "MonotonicityCorrelation", perturb_baseline="black"),
    "Infidelity(perturb_func='patches')": cheap_metric("Infidelity", perturb_func="patches"),
    "AverageDrop(invert=True)": cheap_metric("AverageDrop", invert=True),
    "Continuity(perturb_func='gaussian')": cheap_metric("Continuity", perturb_func="gaussian"),
    "MPRT(similarity_func='mse')": cheap_metric("MPRT", similarity_func="mse"),
    "RandomLogit(similarity_func='mse')": cheap_metric("RandomLogit", similarity_func="mse"),
    "Completeness(return_residual=True)": cheap_metric("Completeness", return_residual=True),
    "InputInvariance(return_residual=True)": cheap_metric("InputInvariance",
                                                          return_residual=True),
    "Completeness(perturb_baseline='uniform', return_residual=True)": cheap_metric(
        "Completeness", perturb_baseline="uniform", return_residual=True),
    "NonSensitivity(perturb_baseline='uniform', eps=0.01)": cheap_metric(
        "NonSensitivity", perturb_baseline="uniform", eps=0.01),
    # an imputer widens ROAD's modalities from images to every numeric one
    "ROAD(imputer=make_imputer('mean'))": cheap_metric("ROAD", imputer=make_imputer("mean")),
    # text: an embedding layer makes the soft rationale metrics token metrics; token deletion
    # narrows the removal metrics to tokens, a random baseline to numeric data
    "SoftComprehensiveness(embedding_layer='embedding')": cheap_metric(
        "SoftComprehensiveness", embedding_layer="embedding"),
    "SoftSufficiency(embedding_layer='embedding')": cheap_metric(
        "SoftSufficiency", embedding_layer="embedding"),
    "ERASERComprehensiveness(perturb_baseline='delete')": cheap_metric(
        "ERASERComprehensiveness", perturb_baseline="delete"),
    "AOPC(order='lerf', perturb_baseline='uniform')": cheap_metric(
        "AOPC", order="lerf", perturb_baseline="uniform"),
    "TokenF1(threshold=0.5)": cheap_metric("TokenF1", threshold=0.5),
}

# ROAD on tables: the background's two meanings (reference rows: per sample; the batch:
# set-level) and the Turbé et al. random-order reference of AUCSE
NON_DEFAULT.update({
    "ROAD(background='batch')": cheap_metric("ROAD", background="batch"),
    "ROAD(background=rows)": cheap_metric(
        "ROAD", background=np.random.default_rng(0).normal(size=(16, 12))),
    "AUCSE(order='random')": cheap_metric("AUCSE", order="random"),
    "IROF(perturb_baseline=0)": cheap_metric("IROF", perturb_baseline=0.0),
})

# token ids: a canvas of mask tokens makes Insertion a token metric (the blurred one is not),
# a binary map the confidence metrics (a removal of the tokens below the percentile); the
# deterministic first-order attack, and a distance as the data randomisation similarity
NON_DEFAULT.update({
    "Insertion(perturb_baseline='black')": cheap_metric("Insertion", perturb_baseline="black"),
    "AverageDrop(threshold_percentile=50)": cheap_metric("AverageDrop", threshold_percentile=50),
    "AverageGain(threshold_percentile=50, invert=True)": cheap_metric(
        "AverageGain", threshold_percentile=50, invert=True),
    "AdversarialTopKIntersection(attack='loss', random_start=False)": cheap_metric(
        "AdversarialTopKIntersection", attack="loss", random_start=False),
    "DataRandomisation(similarity_func='mse')": cheap_metric(
        "DataRandomisation", similarity_func="mse"),
})

# F-Fidelity: FFid- (lower is better), and a removal no larger than the cap (deterministic);
# and the CAM composites: ARCC without imputation noise is deterministic; a random masking
# baseline makes Coherency stochastic;
# and IDSDS with a random deletion value: stochastic (seeded per sample)
NON_DEFAULT.update({
    "FFidelity(sign='-')": cheap_metric("FFidelity", sign="-"),
    "FFidelity(alpha=0.1, beta=0.1, removal_ratio=1)": cheap_metric(
        "FFidelity", alpha=0.1, beta=0.1, removal_ratio=1.0),
    "ARCC(noise=0)": cheap_metric("ARCC", noise=0.0),
    "Coherency(perturb_baseline='uniform')": cheap_metric("Coherency",
                                                          perturb_baseline="uniform"),
    "IDSDS(perturb_baseline='uniform')": cheap_metric("IDSDS", perturb_baseline="uniform"),
})


#: (metric id, check, the library bug it shows) for bugs not fixed yet, each a strict xfail
#: (fixed so far: instance metadata, ROAD(noise=0) and random axiomatic baselines' stochastic
#: flags, the MPRT family's undeclared seed dependence, Continuity's refusal message)
KNOWN_BUGS: list[tuple[str, str, str]] = []
KNOWN_FAILURES: dict[str, dict[str, str]] = {}
for _id, _check, _bug in KNOWN_BUGS:
    KNOWN_FAILURES.setdefault(_id, {})[_check] = _bug


@parametrize_with_checks({**REGISTERED, **NON_DEFAULT}, expected_failed_checks=KNOWN_FAILURES)
def test_metric_conformance(metric, check):
    check(metric)


def test_every_registered_metric_is_checked():
    assert set(REGISTERED) == set(list_metrics()["name"])
    assert set(KNOWN_FAILURES) <= set(REGISTERED) | set(NON_DEFAULT)
    assert all(set(v) <= set(CHECKS) for v in KNOWN_FAILURES.values())


# ============================================================================ broken metrics
# Not registered (no ``family``). ``Reference`` keeps every promise; each broken metric breaks
# one and must fail exactly the checks that promise is behind.
class Reference(Metric):
    """The fall of the target score when the features attributed above the sample's mean are
    set to zero; a constant map is NaN with a reason. Declared for images only, so that each
    broken metric is checked on one fixture (and refuses the others)."""

    higher_is_better = True
    default_normalise = False
    modalities = ("image",)

    def _scores(self, batch: MetricBatch) -> torch.Tensor:
        x = batch.x
        flat = batch.a.expand_as(x).reshape(batch.n, -1)
        kept = (flat <= flat.mean(1, keepdim=True)).reshape(x.shape)
        before = batch.runner.outputs(x, y=batch.y)
        after = batch.runner.outputs(torch.where(kept, x, torch.zeros_like(x)), y=batch.y)
        batch.set_nan(flat.amax(1) == flat.amin(1), "the attribution is constant")
        return (before - after).to(torch.float64)

    def _evaluate(self, batch: MetricBatch) -> torch.Tensor:
        return self._scores(batch)


class BatchNormalised(Reference):
    """Centres the scores over the batch: a sample's score depends on the others."""

    def _evaluate(self, batch):
        scores = self._scores(batch)
        return scores - scores.mean()


class ReseedsGlobalRNG(Reference):
    """Adds noise from NumPy's global generator, reseeded with the seed on every call (the
    Quantus way): reproducible, but a sample's draw depends on its position in the batch."""

    stochastic = True

    def _evaluate(self, batch):
        np.random.seed(batch.seed % 2**32)  # noqa: NPY002 - the bug this metric demonstrates
        noise = torch.from_numpy(np.random.rand(batch.n))  # noqa: NPY002
        return self._scores(batch) + 1e-2 * noise


class MutatesAttributions(Reference):
    """Rescales the caller's attributions in place (the scores do not depend on the scale)."""

    def __call__(self, model, x, y, a=None, **kwargs):
        a *= 2
        return super().__call__(model, x, y, a, **kwargs)


class ColumnScores(Reference):
    """Returns the scores as a column (N, 1)."""

    def __call__(self, *args, **kwargs):
        out = super().__call__(*args, **kwargs)
        return out if self.aggregate is not None else out.reshape(-1, 1)


class FlipsDirection(Reference):
    """Higher is better on the class, lower on instances with ``invert=True`` (the default),
    pinned in ``__init__`` instead of derived in ``_derived_metadata``: consistent on the
    instance, but a registered subclass's ``list_metrics()`` row (the class default) is not
    what a default instance says."""

    def __init__(self, invert: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.invert = invert
        self.higher_is_better = not invert

    def _evaluate(self, batch):
        scores = self._scores(batch)
        return -scores if self.invert else scores


class DirectionFromTheData(Reference):
    """Decides its direction when called, from the sign of the scores it computed (lower is
    better when the drops come out positive): the metadata change with a call, so results and
    leaderboards read another direction than the metric declared before."""

    def _evaluate(self, batch):
        scores = self._scores(batch)
        self.higher_is_better = bool(scores.mean() < 0)
        return scores


class ReshapesToImages(Reference):
    """Declares images only, but reshapes every input to a one-row image (N, 1, 1, P) first
    (Quantus-style), so other data is never refused: the model gets inputs of the wrong rank
    and fails with its own error, where the metric should have said that it does not apply."""

    def __call__(self, model, x, y, a=None, **kwargs):
        def flat(t):
            return None if t is None else t.reshape(t.shape[0], 1, 1, -1)

        x = torch.as_tensor(x)
        if x.ndim < 4:
            x, a = flat(x), flat(torch.as_tensor(a))
            kwargs["s"] = flat(None if kwargs.get("s") is None else torch.as_tensor(kwargs["s"]))
        return super().__call__(model, x, y, a, **kwargs)


class UndeclaredRandomness(Reference):
    """Adds seeded per-sample noise (correctly keyed) but declares ``stochastic=False``."""

    def _evaluate(self, batch):
        return self._scores(batch) + 1e-3 * _rng.scalar_uniform(batch.keys, stream=7)


class CrashesOnConstantMaps(Reference):
    """Raises on a constant map instead of returning NaN with a reason."""

    def _evaluate(self, batch):
        flat = batch.a.reshape(batch.n, -1)
        if bool((flat.amax(1) == flat.amin(1)).any()):
            raise ZeroDivisionError("the attribution range is zero")
        return self._scores(batch)


class StoresDerivedParameter(Reference):
    """Stores ``steps + 1`` under the parameter's name: ``type(m)(**m.get_params())`` is
    another metric."""

    def __init__(self, steps: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.steps = steps + 1


class ScalesNumPyInputs(Reference):
    """Divides NumPy inputs by 255 (taking them for 8-bit images), tensors not."""

    def __call__(self, model, x, y, a=None, **kwargs):
        if isinstance(x, np.ndarray):
            x = x / 255.0
        return super().__call__(model, x, y, a, **kwargs)


class ComparesWithNextSample(Reference):
    """A set-level metric that is not a function of the set: each sample is compared with the
    next one in the batch, so the scores depend on the order."""

    set_level = True

    def _evaluate(self, batch):
        scores = self._scores(batch)
        return scores - scores.roll(-1)


BROKEN = [
    (Reference(), set()),
    (BatchNormalised(), {"per_sample_independence", "chunk_invariance", "nan_with_reason"}),
    (ReseedsGlobalRNG(), {"no_mutation", "per_sample_independence", "permutation_equivariance",
                          "chunk_invariance"}),
    (MutatesAttributions(), {"no_mutation"}),
    (ColumnScores(), {"protocol"}),
    (DirectionFromTheData(), {"metadata"}),
    (ReshapesToImages(), {"modality_applicability"}),
    (UndeclaredRandomness(), {"declared_stochasticity"}),
    (CrashesOnConstantMaps(), {"nan_with_reason"}),
    (StoresDerivedParameter(), {"clone_and_params"}),
    (ScalesNumPyInputs(), {"device_and_dtype"}),
    (ComparesWithNextSample(), {"permutation_equivariance"}),
]


@pytest.fixture
def _restore_numpy_rng():
    state = np.random.get_state()  # noqa: NPY002 - ReseedsGlobalRNG reseeds the global one
    yield
    np.random.set_state(state)  # noqa: NPY002


@pytest.mark.usefixtures("_restore_numpy_rng")
@pytest.mark.parametrize("metric, expected", BROKEN, ids=[type(m).__name__ for m, _ in BROKEN])
def test_broken_metric_fails_exactly_its_checks(metric, expected):
    results = check_metric(metric, raise_on_failure=False)
    assert [(r.modality, r.name) for r in results] == [("image", c) for c in CHECKS]
    failed = {r.name for r in results if not r.passed}
    assert failed == expected, {r.name: r.message for r in results if not r.passed}
    skipped = {r.name for r in results if r.skipped}
    assert skipped == ({"per_sample_independence", "chunk_invariance"} if metric.set_level
                       else set())


def test_failure_messages_name_the_check_and_the_difference():
    with pytest.raises(AssertionError, match=r"BatchNormalised failed 3 conformance check"
                       r"(.|\n)*per_sample_independence: each sample scored alone vs in the "
                       r"batch: \d of 4 scores differ \(sample"):
        check_metric(BatchNormalised())
    with pytest.raises(AssertionError, match=r"higher_is_better: metadata\(\) after a call "
                                             r"says False instead of True"):
        check_metric(DirectionFromTheData(), checks=["metadata"])
    result, = check_metric(ReshapesToImages(), checks=["modality_applicability"],
                           raise_on_failure=False)
    assert not result.passed and all(  # the model's own errors, not a refusal
        f"on {m} inputs the ValueError does not name ReshapesToImages" in result.message
        for m in ("tabular", "series", "tokens"))
    result, = check_metric(ColumnScores(), checks=["protocol"], raise_on_failure=False)
    assert not result.passed and "shape (4, 1)" in result.message


def test_a_check_runs_on_copies_and_never_changes_the_metric():
    metric = cheap_metric("PixelFlipping", seed=None)
    before = metric.get_params()
    check_metric(metric, checks=["clone_and_params", "seeded_determinism"])
    assert metric.get_params() == before and metric.scores_ is None


class EveryModality(Reference):
    modalities = ("image", "series", "tabular", "tokens")


@pytest.mark.parametrize("modality", ["image", "tabular", "series", "tokens"])
def test_reference_metric_passes_on_every_modality(modality):
    fixture = ek.testing.get_fixture(modality)
    assert fixture.n == 4 and fixture.a.shape == fixture.x.shape
    assert fixture.x.is_floating_point() is (modality != "tokens")
    results = check_metric(EveryModality(), modality=modality, raise_on_failure=False)
    assert all(r.passed and r.modality == modality for r in results), results
    # declared everywhere: nothing to refuse
    skipped = {r.name: r.message for r in results if r.skipped}
    assert "declares every modality" in skipped.pop("modality_applicability")
    assert skipped == {}


def test_modality_applicability_runs_once_per_metric():
    image, series = (check_metric(cheap_metric("Insertion"), modality=m,
                                  checks=["modality_applicability"])[0]
                     for m in ("image", "series"))
    assert image.passed and not image.skipped
    assert series.skipped and "first declared modality (image)" in series.message


def test_declared_modalities_and_unknown_ones():
    class TabularOnly(Reference):
        modalities = ("tabular", "graph")

    results = check_metric(TabularOnly(), checks=["protocol", "modality_applicability"],
                           raise_on_failure=False)
    assert [(r.modality, r.name, r.passed, r.skipped) for r in results] == [
        ("tabular", "protocol", True, False), ("tabular", "modality_applicability", True, False),
        ("graph", "protocol", True, True), ("graph", "modality_applicability", True, True)]
    assert "No conformance fixture for modality 'graph'" in results[2].message


def test_parametrize_with_checks_ids_and_expected_failures():
    mark = parametrize_with_checks({"Flipped": FlipsDirection(), "Ref": Reference},
                                   expected_failed_checks={"Flipped": {"metadata": "the bug"}})
    assert mark.args[0] == "metric, check"
    ids = [p.id for p in mark.args[1]]
    assert ids[:2] == ["Flipped-protocol", "Flipped-per_sample_independence"]
    assert len(ids) == 2 * len(CHECKS) and "Ref-metadata" in ids
    xfails = {p.id: p.marks[0].kwargs for p in mark.args[1] if p.marks}
    assert xfails == {"Flipped-metadata": {"strict": True, "raises": AssertionError,
                                           "reason": "the bug"}}
    by_class = parametrize_with_checks([Reference])
    assert by_class.args[1][0].id == "Reference-protocol"


def test_lazy_top_level_access():
    assert ek.testing.check_metric is check_metric


def test_metadata_compares_list_metrics_with_a_default_instance():
    from evalkit.metrics import base

    class ConformanceFlipsByDefault(FlipsDirection):  # registers itself: it has a family
        family = "complexity"

    try:
        result, = check_metric(ConformanceFlipsByDefault(), checks=["metadata"],
                               raise_on_failure=False)
        assert not result.passed
        assert ("higher_is_better: a default ConformanceFlipsByDefault() says False, "
                "list_metrics() says True") in result.message
        result, = check_metric(ConformanceFlipsByDefault(invert=False), checks=["metadata"],
                               raise_on_failure=False)
        assert "list_metrics() says True" in result.message  # the default instance still flips
    finally:
        base._REGISTRY.pop("ConformanceFlipsByDefault", None)
    assert "ConformanceFlipsByDefault" not in set(list_metrics()["name"])


def test_continuity_refusals_name_the_metric():
    """Continuity refused every undeclared modality with its translation message, which named
    no metric and, on token ids or with a noise perturbation, advised the wrong fix."""
    tabular, tokens = (ek.testing.get_fixture(m) for m in ("tabular", "tokens"))
    with pytest.raises(ValueError, match=r"Translations need .* no such axis for Continuity "
                                         r"to shift along\. Use a noise perturbation"):
        cheap_metric("Continuity")(tabular.model, tabular.x, tabular.y, tabular.a)
    for metric in (cheap_metric("Continuity"), cheap_metric("Continuity",
                                                            perturb_func="gaussian")):
        with pytest.raises(ValueError, match=r"^Continuity does not apply to tokens inputs"):
            metric(tokens.model, tokens.x, tokens.y, tokens.a)
