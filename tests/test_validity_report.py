"""metaeval.validity's report engine on hand-built testbeds whose answers are known: a metric that
is right by construction is "correct", its sign-flipped twin "wrong", a constant metric
"undecided", a localisation metric without masks "not applicable", a raising metric "error";
the paired test and its tie rule on synthetic scores; NaN handling; seeds; outputs; the
MetaEvaluation table; the check_metric hook."""

from __future__ import annotations

import functools
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import evalkit as ek
import metaeval as me
from evalkit import testing
from metaeval import validity as mv
from metaeval.validity import (
    VERDICTS,
    Candidate,
    OrderedPair,
    ValidityReport,
    validity_check,
    validity_report,
)
from metaeval.validity._stats import decide_pair, score_scale

N = 24


# ============================================================================ testbeds
class _LinearModel(nn.Module):
    """logit 1 = w . x, logit 0 = -w . x: the exact attribution of class 1 is w * x."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.flatten(1) * self.w.flatten()).sum(1)
        return torch.stack([-z, z], 1)


class _RegionModel(nn.Module):
    """logit 1 = the sum of the inputs inside a fixed region, logit 0 its negative: the model
    reads the region only."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x * self.mask).flatten(1).sum(1)
        return torch.stack([-z, z], 1)


def _noise(shape: torch.Size, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def linear_testbed(n: int = N, families: tuple[str, ...] | None = None) -> mv.Testbed:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, generator=g)
    x = torch.randn(n, 12, generator=g)
    candidates = {
        "exact": Candidate("exact", lambda m, x, y: x * w, "w * x"),
        "negated": Candidate("negated", lambda m, x, y: -x * w, "-(w * x)"),
        "random": Candidate("random", lambda m, x, y: _noise(x.shape, 1), "noise"),
    }
    order = (OrderedPair("exact", "random", "w * x is the model's exact attribution"),
             OrderedPair("exact", "negated", "the signs of w * x are the model's"))
    return mv.Testbed("linear-test", "linear", "tabular", "a linear model", _LinearModel(w).eval(),
                   x, torch.ones(n, dtype=torch.long), candidates, order, families=families,
                   metric_kwargs={"modality": "tabular"})


def region_testbed(n: int = N) -> mv.Testbed:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:5, 2:5] = 1
    x = torch.rand(n, 1, 8, 8, generator=g)
    candidates = {
        "region": Candidate("region", lambda m, x, y: x * mask),
        "outside": Candidate("outside", lambda m, x, y: x * (1 - mask)),
        "random": Candidate("random", lambda m, x, y: _noise(x.shape, 2).abs()),
    }
    order = (OrderedPair("region", "outside", "the model reads the region only"),
             OrderedPair("region", "random", "the model reads the region only"))
    return mv.Testbed("region-test", "region", "image", "a model that reads one region",
                   _RegionModel(mask).eval(), x, torch.ones(n, dtype=torch.long), candidates,
                   order, s=mask.bool().expand(n, 1, 8, 8).clone())


@pytest.fixture(scope="module")
def beds() -> list[mv.Testbed]:
    return [linear_testbed(), region_testbed()]


# ============================================================================ third-party metrics
class GradientAgreement:
    """Right by construction: the Pearson correlation of the map with gradient x input, which
    is the exact contribution of each feature for the testbeds' (piecewise) linear models.
    A plain class (not an evalkit Metric) following the call protocol."""

    higher_is_better = True
    family = "faithfulness"

    def __call__(self, model, x, y, a, *, s=None, explain_fn=None, **kwargs):
        xg = x.detach().clone().requires_grad_(True)
        out = model(xg).gather(1, y[:, None]).sum()
        (grad,) = torch.autograd.grad(out, xg)
        truth = (grad * x).flatten(1).double()
        a = torch.as_tensor(a).flatten(1).double()
        a, truth = a - a.mean(1, keepdim=True), truth - truth.mean(1, keepdim=True)
        return (torch.sum(a * truth, 1) / (a.norm(dim=1) * truth.norm(dim=1))).numpy()


class Flipped:
    """A metric's sign-flipped twin: the same scores, the opposite declared direction."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.higher_is_better = not inner.higher_is_better
        self.family = getattr(inner, "family", "")

    def __call__(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


class ConstantMetric:
    higher_is_better = True

    def __call__(self, model, x, y, a, **kwargs):
        return np.full(x.shape[0], 0.5)


class RaisingMetric:
    higher_is_better = True

    def __call__(self, model, x, y, a, **kwargs):
        raise RuntimeError("boom on purpose")


class WrongShapeMetric:
    higher_is_better = True

    def __call__(self, model, x, y, a, **kwargs):
        return np.zeros(x.shape[0] + 1)


class HalfNaN(GradientAgreement):
    """GradientAgreement with the first half of the samples undefined."""

    def __call__(self, model, x, y, a, **kwargs):
        scores = super().__call__(model, x, y, a, **kwargs)
        scores[: x.shape[0] // 2] = np.nan
        return scores


class AllNaN:
    higher_is_better = True

    def __call__(self, model, x, y, a, **kwargs):
        return np.full(x.shape[0], np.nan)


class SeedAttribute(GradientAgreement):
    """A stochastic third-party metric with a ``seed`` attribute: records the seeds it ran
    with (on the class, since each run gets a copy)."""

    seen: list = []  # noqa: RUF012
    seed = None

    def __call__(self, model, x, y, a, **kwargs):
        type(self).seen.append(self.seed)
        return super().__call__(model, x, y, a, **kwargs)


class SeedKeyword(GradientAgreement):
    """A third-party metric that takes ``random_state`` per call."""

    def __init__(self) -> None:
        self.seen = []

    def __call__(self, model, x, y, a, *, random_state=None, **kwargs):
        self.seen.append(random_state)
        return super().__call__(model, x, y, a, **kwargs)


# ============================================================================ known answers
def test_known_verdicts_on_hand_built_testbeds(beds):
    right = GradientAgreement()
    report = validity_report({"right": right, "flipped": Flipped(right),
                              "constant": ConstantMetric(), "PointingGame": "PointingGame",
                              "raising": RaisingMetric(), "shape": WrongShapeMetric()},
                             beds, progress=False)
    v = report.verdicts.set_index(["metric", "testbed"])["verdict"]
    assert v["right", "linear-test"] == "correct" and v["right", "region-test"] == "correct"
    assert v["flipped", "linear-test"] == "wrong" and v["flipped", "region-test"] == "wrong"
    assert v["constant", "linear-test"] == "undecided"
    assert v["constant", "region-test"] == "undecided"
    assert v["PointingGame", "linear-test"] == "not applicable"
    assert v["PointingGame", "region-test"] == "correct"
    assert v["raising", "linear-test"] == "error" and v["shape", "region-test"] == "error"
    reasons = report.verdicts.set_index(["metric", "testbed"])["reason"]
    assert "needs masks" in reasons["PointingGame", "linear-test"]
    assert reasons["raising", "linear-test"] == "RuntimeError: boom on purpose"
    assert "shape (25,)" in reasons["shape", "linear-test"]
    assert "every sample ties" in reasons["constant", "linear-test"]
    assert reasons["right", "linear-test"] == "2 of 2 pairs decided, all in the known order"
    assert "negated beats exact" in reasons["flipped", "linear-test"]
    # every pair of the right metric is decided in order, the twin's reversed with the same p
    ev = report.evidence
    right_ev, flipped_ev = ev[ev["metric"] == "right"], ev[ev["metric"] == "flipped"]
    assert (right_ev["outcome"] == "in order").all() and right_ev["decided"].all()
    assert (flipped_ev["outcome"] == "reversed").all()
    np.testing.assert_allclose(flipped_ev["p_value"].to_numpy(), right_ev["p_value"].to_numpy())
    np.testing.assert_allclose(flipped_ev["effect"].to_numpy(), -right_ev["effect"].to_numpy())
    # the exact map agrees perfectly with gradient x input: every sample in order, effect 1
    assert np.allclose(right_ev["effect"], 1.0)
    assert np.allclose(right_ev["mean_better"], 1.0)
    # 24 samples all in order: the exact two-sided Wilcoxon p-value is 2 / 2^24 where the
    # differences have no ties (exact vs negated: every difference is 2, the normal
    # approximation with ties applies)
    p = right_ev.set_index(["testbed", "worse"])["p_value"]
    assert p["region-test", "outside"] == pytest.approx(2.0 / 2**24)
    assert p["linear-test", "negated"] < 1e-4
    assert (right_ev["n"] == N).all() and (right_ev["n_nan"] == 0).all()
    # errors and n/a cells have no evidence rows; decided cells have one per pair
    assert set(ev["metric"]) == {"right", "flipped", "constant", "PointingGame"}
    assert len(ev) == 2 + 2 + 2 + 2 + 2 + 2 + 2


def test_applicability_reasons_modality_masks_and_families():
    tb = linear_testbed(families=("faithfulness",))
    report = validity_report({"SIC": "SIC", "Sparseness": ek.metrics.Sparseness(),
                              "PointingGame": "PointingGame", "right": GradientAgreement()},
                             [tb], progress=False)
    r = report.verdicts.set_index("metric")
    assert r.loc["SIC", "verdict"] == "not applicable"
    assert r.loc["SIC", "reason"] == "the metric declares the modalities image, not tabular"
    assert r.loc["Sparseness", "verdict"] == "not applicable"
    assert "faithfulness famil" in r.loc["Sparseness", "reason"]
    assert "complexity" in r.loc["Sparseness", "reason"]
    assert r.loc["PointingGame", "verdict"] == "not applicable"
    assert r.loc["right", "verdict"] == "correct"
    # a setting's own refusal comes first: ROAD's default imputer on a table
    road = validity_report(ek.metrics.ROAD(), [linear_testbed()], progress=False).verdicts
    assert road["verdict"].tolist() == ["not applicable"]
    assert "background=" in road["reason"].iloc[0]


def test_agreement_metrics_compare_with_the_testbed_reference_map():
    tb = linear_testbed()
    report = validity_report(["SignedRankAgreement"], [tb], progress=False)
    assert report.verdicts["verdict"].tolist() == ["not applicable"]
    assert "reference map" in report.verdicts["reason"].iloc[0]
    # the exact map w * x as the reference (set as an attribute: Testbed.reference)
    tb.reference = tb.explanation("exact")
    report = validity_report(["SignedRankAgreement"], [tb], progress=False)
    assert report.verdicts["verdict"].tolist() == ["correct"]
    ev = report.evidence.set_index("worse")
    assert ev.loc["random", "outcome"] == "in order"
    assert ev.loc["negated", "mean_better"] == pytest.approx(1.0)


def test_protocol_metrics_are_judged_only_where_the_testbed_gives_their_layout():
    """GridPG, DiFull, DiPart need a grid's `cells`, Focus a mosaic's `quadrants`: "not
    applicable" without them (they would otherwise score the masks `s` of a region, which is
    not their protocol), judged where Testbed.call_options gives them, and then called without
    `s` (they take either, not both)."""
    region, grid = mv.build_testbed("image-region", n=8), mv.build_testbed("image-grid", n=8)
    names = ["GridPG", "DiFull", "DiPart", "Focus"]
    r = validity_report(names, [region, grid], progress=False).verdicts
    off = r[r["testbed"] == "image-region"].set_index("metric")
    assert (off["verdict"] == "not applicable").all()
    assert "image grids" in off.loc["GridPG", "reason"] and "`cells`" in off.loc["GridPG", "reason"]
    assert "mosaics" in off.loc["Focus", "reason"] and "`quadrants`" in off.loc["Focus", "reason"]
    on = r[r["testbed"] == "image-grid"]
    assert (on["verdict"] == "correct").all(), on[["metric", "reason"]]
    # a third-party metric that declares `cells` gets them, and no masks
    seen = {}

    class CellShare:
        higher_is_better = True
        family = "localisation"
        call_options = ("cells",)

        def __call__(self, model, x, y, a, *, s=None, explain_fn=None, cells=None, **kw):
            seen["s"], seen["cells"] = s, cells
            return ek.metrics.GridPG()(model, x, y, a, cells=cells)

    assert validity_report(CellShare(), [grid], progress=False).verdicts["verdict"].tolist() == [
        "correct"]
    assert seen["s"] is None and torch.equal(seen["cells"], grid.call_options["cells"])


def test_metrics_that_train_a_copy_use_the_testbed_training_split():
    """F-Fidelity without its fine-tuned copy, and the data randomisation test without its
    permuted-label model, train on Testbed.train (never the evaluated x): judged where the
    testbed has a split, "not applicable" with the reason where it has none; the caller's
    metric keeps its settings."""
    ffid = ek.metrics.FFidelity(n_draws=4)
    linear = mv.build_testbed("image-linear", n=8)
    assert linear.train is not None
    report = validity_report({"FFidelity": ffid}, [linear], seeds=(0,), progress=False)
    assert report.verdicts["verdict"].tolist() == ["correct"], report.verdicts["reason"]
    assert ffid.fine_tune_data is None and ffid.fine_tuned_model is None  # not changed
    tuned = mv.report.with_training_split(ffid, linear)
    assert tuned is not ffid and tuned.fine_tune_data[0] is linear.train[0]
    linear.train = None
    cell = validity_report({"FFidelity": ffid}, [linear], seeds=(0,), progress=False).verdicts
    assert cell["verdict"].tolist() == ["not applicable"]
    assert "training split" in cell["reason"].iloc[0]
    # a metric given its copy needs no split
    assert mv.report.training_need(ek.metrics.FFidelity(fine_tuned_model="none")) is None
    aware = mv.build_testbed("image-model-aware", n=8)
    rand = ek.metrics.DataRandomisation()
    report = validity_report({"DataRandomisation": rand}, [aware], progress=False)
    assert report.verdicts["verdict"].tolist() == ["correct"], report.verdicts["reason"]
    assert rand.randomised_model is None


def test_a_testbed_can_name_a_metric_outside_its_families():
    """Testbed.metrics: NonSensitivity (axiomatic) is judged on the one-hot and region
    testbeds, whose models ignore features; the other axiomatic metrics are not."""
    bed = mv.build_testbed("image-one-hot", n=8)
    assert "NonSensitivity" in bed.metrics and "axiomatic" not in bed.families
    r = validity_report(["NonSensitivity", "Completeness"], [bed], progress=False)
    v = r.verdicts.set_index("metric")
    assert v.loc["NonSensitivity", "verdict"] == "correct"
    assert v.loc["Completeness", "verdict"] == "not applicable"


def test_testbed_refuses_a_malformed_training_split():
    tb = linear_testbed(n=6)
    with pytest.raises(ValueError, match="one label per input"):
        mv.Testbed(tb.name, tb.mechanism, tb.modality, tb.description, tb.model, tb.x, tb.y,
                   tb.candidates, tb.order, train=(tb.x, tb.y[:3]))
    with pytest.raises(ValueError, match="shape"):
        mv.Testbed(tb.name, tb.mechanism, tb.modality, tb.description, tb.model, tb.x, tb.y,
                   tb.candidates, tb.order, train=(tb.x[:, :4], tb.y))


def test_a_third_party_metric_declaring_modalities_is_held_to_them(beds):
    class ImageOnly(GradientAgreement):
        modalities = ("image",)

    r = validity_report(ImageOnly(), beds, progress=False).verdicts.set_index("testbed")
    assert r.loc["linear-test", "verdict"] == "not applicable"
    assert "image, not tabular" in r.loc["linear-test", "reason"]
    assert r.loc["region-test", "verdict"] == "correct"


def test_a_metric_without_family_is_tried_on_every_testbed():
    class NoFamily(GradientAgreement):
        family = ""

    tb = linear_testbed(families=("localisation",))
    assert validity_report(NoFamily(), [tb], progress=False).verdicts["verdict"].tolist() == [
        "correct"]


def test_evalkit_metrics_by_name_class_and_instance_with_seeds(beds):
    report = validity_report(["Sparseness", ek.metrics.PixelFlipping,
                              ek.metrics.FaithfulnessCorrelation(nr_runs=20, subset_size=3)],
                             beds[:1], progress=False)
    assert report.metrics == ["Sparseness", "PixelFlipping", "FaithfulnessCorrelation"]
    ev = report.evidence.set_index("metric")
    # deterministic metrics run once, a stochastic one once per seed
    assert set(ev.loc["Sparseness", "seeds"]) == {1}
    assert set(ev.loc["PixelFlipping", "seeds"]) == {1}
    assert set(ev.loc["FaithfulnessCorrelation", "seeds"]) == {3}
    # Sparseness is sign-blind: the exact map and its negation tie on every sample
    tie = report.evidence[(report.evidence["metric"] == "Sparseness")
                          & (report.evidence["worse"] == "negated")].iloc[0]
    assert tie["n_ties"] == N and tie["outcome"] == "undecided" and tie["p_value"] == 1.0
    assert report.verdicts.set_index("metric").loc["PixelFlipping", "verdict"] == "correct"


def test_a_stochastic_metric_is_run_with_every_seed_and_the_caller_object_kept(beds):
    SeedAttribute.seen = []
    metric = SeedAttribute()
    validity_report(metric, beds[:1], seeds=(3, 4), progress=False)
    # three candidates, two seeds each; the caller's metric keeps its own seed
    assert sorted(SeedAttribute.seen) == [3, 3, 3, 4, 4, 4]
    assert metric.seed is None
    kw = SeedKeyword()
    validity_report(kw, beds[:1], seeds=(7, 8), progress=False)
    assert sorted(kw.seen) == [7, 7, 7, 8, 8, 8]
    # a metric that declares no randomness and takes a seed runs with the first seed only
    SeedAttribute.seen = []

    class Deterministic(SeedAttribute):
        stochastic = False

    validity_report(Deterministic(), beds[:1], seeds=(5, 6), progress=False)
    assert SeedAttribute.seen == [5, 5, 5]


def test_nan_scores_are_dropped_with_a_count(beds):
    report = validity_report({"half": HalfNaN(), "none": AllNaN()}, beds[:1], progress=False)
    ev = report.evidence.set_index("metric")
    assert (ev.loc["half", "n"] == N // 2).all() and (ev.loc["half", "n_nan"] == N // 2).all()
    assert (ev.loc["half", "p_value"] < 0.01).all()
    assert (ev.loc["none", "n"] == 0).all() and (ev.loc["none", "n_nan"] == N).all()
    v = report.verdicts.set_index("metric")
    assert v.loc["half", "verdict"] == "correct"
    assert v.loc["none", "verdict"] == "undecided"
    assert "no sample has both scores defined" in v.loc["none", "reason"]


def test_bad_arguments_are_refused(beds):
    with pytest.raises(TypeError, match="must be a bool"):
        validity_report({"m": type("M", (), {"higher_is_better": "higher",
                                             "__call__": lambda self, *a, **k: 0})()}, beds)
    with pytest.raises(TypeError, match="callable"):
        validity_report({"m": object()}, beds)
    with pytest.raises(ValueError, match="seeds"):
        validity_report(GradientAgreement(), beds, seeds=())
    with pytest.raises(ValueError, match="alpha"):
        validity_report(GradientAgreement(), beds, alpha=1.5)
    with pytest.raises(ValueError, match="unique"):
        validity_report(GradientAgreement(), [beds[0], beds[0]])
    with pytest.raises(TypeError, match="Testbed"):
        validity_report(GradientAgreement(), [42])
    with pytest.raises(ValueError, match="empty"):
        validity_report({}, beds)


# ============================================================================ the paired test
def test_paired_test_known_p_values_and_effect():
    b, w = np.arange(1.0, 11.0), np.zeros(10)
    d = decide_pair(b, w, higher_is_better=True)
    # ten positive differences: the exact two-sided p-value is 2 / 2^10, the effect 1
    assert d.p_value == pytest.approx(2.0 / 2**10) and d.effect == 1.0
    assert d.decided and d.outcome == "in order" and d.n == 10 and d.n_ties == 0
    flipped = decide_pair(b, w, higher_is_better=False)
    assert flipped.outcome == "reversed" and flipped.effect == -1.0
    assert flipped.p_value == pytest.approx(d.p_value)
    # differences 3, -1, 2: ranks 3, 1, 2, R+ = 5, R- = 1, effect (5 - 1) / 6
    small = decide_pair(np.array([3.0, -1.0, 2.0]), np.zeros(3), higher_is_better=True)
    assert small.effect == pytest.approx(4 / 6)
    assert not small.decided and small.outcome == "undecided"  # p = 0.5 with three samples
    assert small.mean_better == pytest.approx(4 / 3) and small.median_better == 2.0


def test_the_smallest_decidable_sample_and_alpha():
    # six differences of one sign: p = 2 / 64 < 0.05; five: 2 / 32 > 0.05
    assert decide_pair(np.arange(1.0, 7.0), np.zeros(6), higher_is_better=True).decided
    five = decide_pair(np.arange(1.0, 6.0), np.zeros(5), higher_is_better=True)
    assert five.p_value == pytest.approx(2 / 32) and not five.decided
    assert decide_pair(np.arange(1.0, 6.0), np.zeros(5), higher_is_better=True,
                       alpha=0.1).decided


def test_differences_within_the_relative_tolerance_are_ties():
    rng = np.random.default_rng(0)
    w = rng.uniform(1, 2, 30)
    noise = w + 1e-9  # float noise: far below rtol x the scale (about 2)
    d = decide_pair(noise, w, higher_is_better=True, rtol=1e-5)
    assert d.n_ties == 30 and not d.decided and d.p_value == 1.0 and d.effect == 0.0
    assert d.note == "every sample ties (within rtol)"
    assert decide_pair(noise, w, higher_is_better=True, rtol=0.0).decided
    # the tolerance is relative to the given scale (the cell's largest score)
    assert decide_pair(w + 1e-3, w, higher_is_better=True, rtol=1e-5).decided
    assert not decide_pair(w + 1e-3, w, higher_is_better=True, rtol=1e-5,
                           scale=1e3).decided
    assert score_scale(np.array([1.0, -3.0, np.nan]), np.array([2.0])) == 3.0
    assert score_scale(np.array([np.nan])) == 0.0


def test_ties_weigh_against_a_decision():
    # six samples in order and twenty ties: the tied ranks split between the sides
    b = np.r_[np.arange(1.0, 7.0), np.zeros(20)]
    d = decide_pair(b, np.zeros(26), higher_is_better=True)
    assert d.n_ties == 20 and d.effect > 0 and d.p_value > 0.05 and not d.decided
    assert d.note.startswith("not significant")


def test_seeds_are_averaged_per_sample_and_nan_dropped():
    better = np.array([[1.0, np.nan, 3.0, np.nan], [3.0, 2.0, np.nan, np.nan]])
    worse = np.zeros((2, 4))
    d = decide_pair(better, worse, higher_is_better=True)
    # per sample: mean(1, 3) = 2, 2, 3, and the last sample is NaN in every seed
    assert d.n == 3 and d.n_nan == 1
    assert d.mean_better == pytest.approx(7 / 3) and d.median_better == 2.0
    with pytest.raises(ValueError, match="pair up"):
        decide_pair(np.zeros(3), np.zeros(4), higher_is_better=True)
    with pytest.raises(ValueError, match="alpha"):
        decide_pair(np.zeros(3), np.zeros(3), higher_is_better=True, alpha=0.0)


# ============================================================================ the report object
@pytest.fixture(scope="module")
def report(beds) -> ValidityReport:
    right = GradientAgreement()
    return validity_report({"right": right, "flipped": Flipped(right),
                            "constant": ConstantMetric(), "PointingGame": "PointingGame",
                            "raising": RaisingMetric()}, beds, progress=False)


def test_frames_counts_summary_and_card(report):
    assert list(report.evidence.columns[:8]) == ["metric", "family", "testbed", "mechanism",
                                                 "modality", "better", "worse", "why"]
    for col in ("n", "n_nan", "mean_better", "mean_worse", "median_better", "median_worse",
                "effect", "p_value", "decided", "outcome"):
        assert col in report.evidence.columns
    assert len(report.verdicts) == 5 * 2
    by_family = report.counts()
    assert list(by_family.columns) == [*VERDICTS, "total"]
    assert by_family.loc["faithfulness"].tolist() == [2, 2, 0, 0, 0, 4]
    assert by_family.loc["localisation"].tolist() == [1, 0, 0, 1, 0, 2]
    assert by_family.loc["(none)"].tolist() == [0, 0, 2, 0, 2, 4]
    assert report.counts("testbed").loc["linear-test", "total"] == 5
    with pytest.raises(ValueError, match="by"):
        report.counts("colour")
    s = report.summary().set_index("metric")
    assert s.loc["right", "recovers"] == "linear, region" and s.loc["right", "fails"] == ""
    assert s.loc["flipped", "fails"] == "linear, region"
    assert not s.loc["flipped", "higher_is_better"] and s.loc["right", "higher_is_better"]
    card = report.card("flipped")
    assert card.fails == ["linear", "region"] and card.recovers == []
    text = str(card)
    assert text.startswith("flipped (faithfulness; lower is better)")
    assert "wrong:" in text and "negated beats exact" in text
    assert "- wrong: linear-test (linear), region-test (region)" in card.to_markdown()
    with pytest.raises(KeyError, match=r"No metric .nope."):
        report.card("nope")
    assert "5 metrics x 2 testbeds" in repr(report)
    g = report.grid()
    assert g.shape == (5, 2) and g.loc["PointingGame", "linear-test"] == "not applicable"


def test_markdown_and_latex_need_no_optional_package(report, monkeypatch):
    monkeypatch.setitem(sys.modules, "tabulate", None)  # importing it now fails
    monkeypatch.setitem(sys.modules, "jinja2", None)
    md = report.to_markdown()
    lines = md.splitlines()
    assert lines[0] == "| metric | linear-test | region-test |"
    assert lines[1] == "|---|---|---|"
    assert "| right | correct | correct |" in lines
    assert "| PointingGame | not applicable | correct |" in lines
    ev = report.to_markdown("evidence").splitlines()
    assert len(ev) == 2 + len(report.evidence)
    assert report.to_markdown("summary").splitlines()[0].startswith("| metric | family |")
    tex = report.to_latex(caption="Validity", label="tab:validity")
    assert "\\begin{tabular}{lll}" in tex and "\\toprule" in tex and "\\bottomrule" in tex
    assert "\\caption{Validity}" in tex and "\\label{tab:validity}" in tex
    assert "right & correct & correct \\\\" in tex
    assert "linear-test" in tex
    # underscores (n_nan) are escaped in LaTeX
    assert "n\\_nan" in report.to_latex("evidence")
    with pytest.raises(ValueError, match="table"):
        report.to_markdown("kite")


def test_save_and_load_round_trip(report, tmp_path):
    report.save(tmp_path / "validity.json")
    again = ValidityReport.load(tmp_path / "validity.json")
    pd.testing.assert_frame_equal(again.verdicts, report.verdicts)
    pd.testing.assert_frame_equal(again.evidence, report.evidence)
    assert again.directions == report.directions and again.config == report.config
    assert again.to_markdown("summary") == report.to_markdown("summary")


def test_plot_returns_a_figure(report):
    from matplotlib.figure import Figure

    fig = report.plot()
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["linear-test", "region-test"]
    assert [t.get_text() for t in ax.get_yticklabels()] == report.metrics
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(VERDICTS)
    glyphs = sorted(t.get_text() for t in ax.texts)
    assert glyphs.count("✓") == 3 and glyphs.count("✗") == 2 and glyphs.count("!") == 2


def test_progress_bar_counts_cells(beds, monkeypatch):
    from evalkit import _progress

    made = []

    class Bar:
        def __init__(self, *args, **kwargs):
            self.kwargs, self.n = kwargs, 0
            made.append(self)

        def update(self, k):
            self.n += k

        def set_postfix_str(self, *a, **k):
            pass

        def close(self):
            pass

    monkeypatch.setattr(_progress, "tqdm", Bar)
    validity_report([GradientAgreement(), ConstantMetric()], beds, progress=True)
    assert made[0].kwargs["total"] == 4 and made[0].n == 4 and not made[0].kwargs["disable"]


# ============================================================================ with MetaEvaluation
def test_validity_beside_mc_in_one_table(report):
    gen = torch.Generator().manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 8 * 8, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    net.eval()
    x = torch.rand(8, 1, 8, 8, generator=gen)
    s = torch.zeros(8, 1, 8, 8, dtype=torch.bool)
    s[:, :, 2:6, 2:6] = True
    result = me.MetaEvaluation(me.default_suite(), {"Saliency": {}, "InputXGradient": {}},
                               iterations=1, nr_perturbations=2, seed=0, progress=False)(
        {"PointingGame": ek.metrics.PointingGame(), "Sparseness": ek.metrics.Sparseness()},
        net, x, s=s)
    table = result.with_validity(report)
    assert isinstance(table, pd.DataFrame)
    rows = table.set_index("metric")
    # the meta-evaluated metrics have MC and verdict counts; the others only verdicts
    assert rows.loc["PointingGame", "space"] == "Mean"
    assert np.isfinite(rows.loc["PointingGame", "MC"])
    assert rows.loc["PointingGame", "correct"] == 1
    assert rows.loc["PointingGame", "not applicable"] == 1
    assert rows.loc["PointingGame", "recovers"] == "region"
    assert pd.isna(rows.loc["Sparseness", "correct"]) and np.isfinite(rows.loc["Sparseness",
                                                                                "MC"])
    assert np.isnan(rows.loc["flipped", "MC"]) and rows.loc["flipped", "wrong"] == 2
    assert rows.loc["flipped", "family"] == "faithfulness"
    assert set(table["metric"]) == {"PointingGame", "Sparseness", "right", "flipped",
                                    "constant", "raising"}
    pd.testing.assert_frame_equal(mv.combine(result, report), table)
    every = result.with_validity(report, space=None)
    assert set(every.dropna(subset=["space"])["space"]) == {"Model", "Input", "Mean"}
    with pytest.raises(ValueError, match="no 'Sideways' space"):
        result.with_validity(report, space="Sideways")
    with pytest.raises(TypeError, match="ValidityReport"):
        result.with_validity(object())


# ============================================================================ check_metric
@pytest.fixture
def small_validity_check(monkeypatch, beds):
    """The registered "validity" check, on the hand-built testbeds (the library's are another
    helper's subject)."""
    monkeypatch.setitem(testing.METRIC_CHECKS, "validity",
                        functools.partial(validity_check, testbeds=beds))


def test_check_metric_gives_a_third_party_metric_its_report_card(small_validity_check):
    [result] = testing.check_metric(GradientAgreement(), checks=["validity"])
    assert result.name == "validity" and result.passed and not result.skipped
    assert "GradientAgreement (faithfulness; higher is better)" in result.message
    assert "correct:" in result.message
    assert isinstance(result.details, ValidityReport)
    assert set(result.details.verdicts["verdict"]) == {"correct"}


def test_check_metric_catches_a_flipped_direction(small_validity_check):
    with pytest.raises(AssertionError, match="is higher_is_better=False right"):
        testing.check_metric(Flipped(GradientAgreement()), checks=["validity"])
    [result] = testing.check_metric(Flipped(GradientAgreement()), checks=["validity"],
                                    raise_on_failure=False)
    assert not result.passed and "wrong on 2 testbeds and correct on 0" in result.message
    [crash] = testing.check_metric(RaisingMetric(), checks=["validity"],
                                   raise_on_failure=False)
    assert not crash.passed and "raised on every applicable testbed" in crash.message


def test_the_validity_check_is_opt_in(small_validity_check, monkeypatch):
    ran = []
    monkeypatch.setitem(testing.METRIC_CHECKS, "validity",
                        lambda metric: ran.append(metric) or (True, "", None))
    results = testing.check_metric(ek.metrics.Sparseness(), modality="tabular",
                                   checks=["protocol"])
    assert [r.name for r in results] == ["protocol"] and not ran
    # the default (checks=None) runs the per-fixture checks only
    assert "validity" not in testing.CHECKS
    both = testing.check_metric(ek.metrics.Sparseness(), modality="tabular",
                                checks=["protocol", "validity"])
    assert [r.name for r in both] == ["protocol", "validity"] and len(ran) == 1
    assert testing.run_check(ek.metrics.Sparseness(), "validity").passed and len(ran) == 2
    # "all": the per-fixture checks and every registered metric check
    every = testing.check_metric(ek.metrics.Sparseness(), modality="tabular", checks="all")
    assert [r.name for r in every] == [*testing.CHECKS, *testing.METRIC_CHECKS]
    assert len(ran) == 3
    # one name alone is one check, not its letters
    assert [r.name for r in testing.check_metric(ek.metrics.Sparseness(), modality="tabular",
                                                 checks="validity")] == ["validity"]


def test_metric_checks_registry_and_missing_provider(monkeypatch):
    import importlib.metadata

    monkeypatch.delitem(testing.METRIC_CHECKS, "validity")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])
    with pytest.raises(KeyError, match=r"import metaeval\.validity"):
        testing.check_metric(GradientAgreement(), checks=["validity"])
    with pytest.raises(KeyError, match="Unknown check 'nonsense'"):
        testing.check_metric(GradientAgreement(), checks=["nonsense"])

    class Point:
        name = "validity"

        def load(self):
            testing.register_check("validity", lambda m: (True, "loaded", None))

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [Point()])
    [result] = testing.check_metric(GradientAgreement(), checks=["validity"])
    assert result.passed and result.message == "loaded"
    with pytest.raises(ValueError, match="built-in"):
        testing.register_check("protocol", lambda m: (True, "", None))
    with pytest.raises(TypeError, match="callable"):
        testing.register_check("other", 3)


def test_importing_metaeval_validity_registers_the_check():
    import metaeval.validity as validity

    assert testing.METRIC_CHECKS["validity"] is validity.validity_check
