"""Every faithfulness metric against the same edge cases and invariances.

One small instance of each of the 17 metrics of issue 3 (a registry test makes sure a new metric
is added here). For each: a non-finite attribution row gives NaN with a reason for that sample
only (the others are what they are without it, set-level metrics included); all-zero and
constant maps never crash (metrics that rank features give NaN with the constant-map reason,
or with constant_maps="score" rank ties in group-id order; correlation and confidence metrics
give NaN with a reason); NaN inputs are rejected naming `x`; scores do not
depend on the batch size or the order of the samples (nor, for per-sample metrics, on the
other samples), and the same seed gives identical numbers; the class docstring states the
direction and cites the paper.
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch
from torch import nn

import evalkit as ek
from evalkit import metrics as M
from evalkit.metrics._ties import CONSTANT_MAP, RanksFeatures

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.UndefinedScoreWarning")

N = 6


def _metrics() -> dict[str, ek.metrics.Metric]:
    return {
        "PixelFlipping": M.PixelFlipping(features_in_step=6),
        "Deletion": M.Deletion(n_steps=6),
        "Insertion": M.Insertion(n_steps=6),
        "RegionPerturbation": M.RegionPerturbation(patch_size=2, regions_evaluation=5),
        "Selectivity": M.Selectivity(patch_size=3),
        "IROF": M.IROF(segmentation_kwargs={"n_segments": 6}),
        "SensitivityN": M.SensitivityN(features_in_step=6, nr_subsets=4, seed=0),
        "FaithfulnessCorrelation": M.FaithfulnessCorrelation(nr_runs=6, subset_size=5, seed=0),
        "FaithfulnessEstimate": M.FaithfulnessEstimate(features_in_step=6),
        "Monotonicity": M.Monotonicity(features_in_step=6),
        "MonotonicityCorrelation": M.MonotonicityCorrelation(nr_samples=3, features_in_step=6,
                                                             seed=0),
        "Infidelity": M.Infidelity(n_perturb_samples=4, seed=0),
        "ROAD": M.ROAD(percentages=[25, 75], seed=0),
        "AverageDrop": M.AverageDrop(),
        "AverageIncrease": M.AverageIncrease(),
        "AverageGain": M.AverageGain(),
        "Sufficiency": M.Sufficiency(threshold=0.9),
        # issue 19 (text metrics that also run on images)
        "AOPC": M.AOPC(features_in_step=6),
        "ERASERComprehensiveness": M.ERASERComprehensiveness(),
        "ERASERSufficiency": M.ERASERSufficiency(),
        "SoftComprehensiveness": M.SoftComprehensiveness(nr_samples=2, seed=0),
        "SoftSufficiency": M.SoftSufficiency(nr_samples=2, seed=0),
        "PGI": M.PGI(nr_samples=4, seed=0),
        "PGU": M.PGU(nr_samples=4, seed=0),
        # issue 23
        "LogOdds": M.LogOdds(),
        "MinimalSubsetDeletion": M.MinimalSubsetDeletion(features_in_step=6),
        "MinimalSubsetInsertion": M.MinimalSubsetInsertion(features_in_step=6),
        # (on a black canvas: the small random CNN scores its blurred inputs as high as x)
        "SIC": M.SIC(thresholds=(0.1, 0.3, 0.6), perturb_baseline="black", compression="png"),
        "AIC": M.AIC(thresholds=(0.1, 0.3, 0.6), perturb_baseline="black", compression="png"),

        # issue 23 (post-Quantus faithfulness); NAOPC on 3x3 patches: 4 features, exact bounds
        "ABPC": M.ABPC(features_in_step=6),
        "SRG": M.SRG(features_in_step=6),
        "NAOPC": M.NAOPC(grouping=3),
        # F-Fidelity on a deep copy of the model (the protocol, not the fine-tuning)
        "FFidelity": M.FFidelity(fine_tuned_model=copy.deepcopy, alpha=0.2, n_draws=3,
                                 quantity="score", seed=0),

        # issue 23: composite CAM scores (re-explain with evalkit's default explainer)
        "Coherency": M.Coherency(),
        "ADCC": M.ADCC(),
        "ARCC": M.ARCC(percentages=[25, 75], seed=0),

        # IDSDS on 2x2 patches (9 single deletions; no fine-tuning: the protocol's mechanics)
        "IDSDS": M.IDSDS(patch_size=2),
    }


# variants: set-level and stochastic-baseline forms of the same classes
VARIANTS = {
    "SensitivityN[morf]": M.SensitivityN(features_in_step=6, subsets="morf", normalise=False),
    "PixelFlipping[uniform]": M.PixelFlipping(features_in_step=6, perturb_baseline="uniform",
                                              seed=3),
    "Selectivity[random]": M.Selectivity(patch_size=3, perturb_baseline="random", seed=3),
    "IROF[uniform]": M.IROF(segmentation_kwargs={"n_segments": 6}, perturb_baseline="uniform",
                            seed=3),
    "Monotonicity[uniform]": M.Monotonicity(features_in_step=6, perturb_baseline="uniform",
                                            seed=3),
    "FaithfulnessEstimate[uniform]": M.FaithfulnessEstimate(features_in_step=6,
                                                            perturb_baseline="uniform", seed=3),
    "RegionPerturbation[random]": M.RegionPerturbation(patch_size=2, order="random", seed=3),
    "Infidelity[patches,uniform]": M.Infidelity(perturb_func="patches", perturb_patch_sizes=[3],
                                                perturb_baseline="uniform",
                                                n_perturb_samples=2, seed=3),
    "ROAD[confidence]": M.ROAD(percentages=[25, 75], score="confidence", seed=3),
    "AverageDrop[uniform]": M.AverageDrop(perturb_baseline="uniform", seed=3),
    "Deletion[uniform]": M.Deletion(n_steps=6, perturb_baseline="uniform", seed=3),
    "IROF[felzenszwalb]": M.IROF(segmentation_method="felzenszwalb",
                                 segmentation_kwargs={"scale": 2, "min_size": 2}),
}

ALL = {**_metrics(), **VARIANTS}
CORRELATION = ("SensitivityN", "FaithfulnessCorrelation", "FaithfulnessEstimate",
               "MonotonicityCorrelation", "IDSDS")
CONFIDENCE = ("AverageDrop", "AverageIncrease", "AverageGain")
#: importance min-max scaled per sample: a constant map is NaN with a reason
SOFT = ("SoftComprehensiveness", "SoftSufficiency")
#: CAMs min-max scaled and correlated: a constant map is NaN with a reason
CAM_COMPOSITES = ("Coherency", "ADCC", "ARCC")


def _is_set_level(metric) -> bool:
    return bool(metric.set_level)


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                              nn.Linear(4 * 36, 3)).double().eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand((N, 3, 6, 6), generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    a = torch.randn((N, 1, 6, 6), generator=g, dtype=torch.float64)
    return model, x, y, a


def test_every_faithfulness_metric_is_covered():
    # the fixtures are images; series-only metrics (AUCSE) have their edge cases in
    # tests/test_series.py and the conformance suite
    frame = ek.metrics.list_metrics("faithfulness")
    registered = {n for n, mods in zip(frame["name"], frame["modalities"], strict=True)
                  if "image" in mods}
    assert registered == set(_metrics()), registered ^ set(_metrics())


@pytest.mark.parametrize("name", list(ALL))
def test_nan_attribution_row_is_nan_with_reason_and_leaves_the_others(name, data):
    model, x, y, a = data
    metric = ALL[name]
    bad = a.clone()
    bad[2, 0, 1, 1] = float("nan")
    s = metric(model, x, y, bad)
    assert np.isnan(s[2])
    assert "NaN or Inf" in metric.nan_reasons_[2]
    keep = [0, 1, 3, 4, 5]
    ref = metric(model, x[keep], y[keep], a[keep])
    np.testing.assert_allclose(s[keep], ref, rtol=1e-12, atol=1e-12)
    inf = a.clone()
    inf[0, 0, 0, 0] = float("inf")
    s2 = metric(model, x, y, inf)
    assert np.isnan(s2[0]) and "NaN or Inf" in metric.nan_reasons_[0]


@pytest.mark.parametrize("name", list(ALL))
def test_zero_and_constant_maps_never_crash(name, data):
    model, x, y, a = data
    metric = ALL[name]
    odd = a.clone()
    odd[0] = 0.0
    odd[1] = 0.5
    s = metric(model, x, y, odd)
    assert s.shape == (N,)
    base = name.split("[")[0]
    for i in (0, 1):
        if np.isnan(s[i]):
            assert i in metric.nan_reasons_  # never an unexplained NaN
    ranks = isinstance(metric, RanksFeatures) and metric._ranks_attributions()
    if ranks:  # nothing to rank: NaN with the reason, unless constant_maps="score"
        assert np.isnan(s[:2]).all()
        assert all(metric.nan_reasons_[i] == CONSTANT_MAP for i in (0, 1))
        scored = metric.clone().set_params(constant_maps="score")(model, x, y, odd)
        if base not in CORRELATION:  # correlations of constant block sums stay undefined
            assert np.isfinite(scored[:2]).all(), metric.nan_reasons_
        if not _is_set_level(metric):  # (a set-level score changes with its set)
            np.testing.assert_allclose(scored[2:], s[2:], rtol=1e-12)
    elif base in CORRELATION:
        assert np.isnan(s[:2]).all()
        assert all("constant" in metric.nan_reasons_[i] for i in (0, 1))
    elif base in CONFIDENCE or base in SOFT or base in CAM_COMPOSITES:
        assert np.isnan(s[:2]).all()
        assert all("constant" in metric.nan_reasons_[i] for i in (0, 1))
    elif base not in ("Sufficiency", "SensitivityN"):
        assert np.isfinite(s[:2]).all(), metric.nan_reasons_
    # rows with a real attribution are unaffected by the degenerate ones (per-sample metrics)
    if not _is_set_level(metric):
        np.testing.assert_allclose(s[2:], metric(model, x[2:], y[2:], a[2:]), rtol=1e-12)


@pytest.mark.parametrize("name", ["PixelFlipping", "Deletion", "Insertion", "Selectivity",
                                  "RegionPerturbation", "Monotonicity"])
def test_ties_are_ranked_in_group_id_order(name, data):
    """With constant_maps="score", a constant map ranks the groups in raster order (MoRF)
    and reverse for the ascending orders: the same scores as a strictly decreasing (or
    increasing) raster ramp."""
    model, x, y, _ = data
    metric = ALL[name].clone().set_params(constant_maps="score")
    ramp = -torch.arange(36, dtype=torch.float64).reshape(1, 1, 6, 6).expand(N, 1, 6, 6)
    if name == "Monotonicity":  # ascending order, abs by default: ties first id first
        metric = metric.clone().set_params(abs=False)
        ramp = -ramp
    const = torch.full((N, 1, 6, 6), 0.25, dtype=torch.float64)
    np.testing.assert_array_equal(metric(model, x, y, const), metric(model, x, y, ramp))


class _NaNOnSample(nn.Module):
    """``model``, except that its outputs are NaN for inputs that are not one of ``clean``
    (``when="perturbed"``), or for every input whose first channel's corner equals that of
    ``clean[target]``, perturbed or not (``when="sample"``)."""

    def __init__(self, model: nn.Module, clean: torch.Tensor, when: str, target: int = 0):
        super().__init__()
        self.model, self.clean, self.when, self.target = model, clean, when, target

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        out = self.model(inp)
        if self.when == "perturbed":
            dist = (inp.flatten(1)[:, None] - self.clean.flatten(1)[None]).abs().amax(2)
            bad = dist.amin(1) > 0
        else:  # the marker pixel is never perturbed by the metrics below: a bottom-right one
            bad = inp[:, 0, -1, -1] == self.clean[self.target, 0, -1, -1]
        return out.masked_fill(bad[:, None], float("nan"))


# (Coherency reads no model output itself: its explainer does, see tests/test_adcc.py)
@pytest.mark.parametrize("name", [n for n in ALL if not n.startswith(("Sufficiency",
                                                                      "Coherency"))])
def test_non_finite_model_outputs_give_nan_with_a_reason(name, data):
    """A model that returns NaN on perturbed inputs gives NaN scores with the reason, never a
    number: a correlation must not read a NaN output change as 0, nor Monotonicity a NaN
    comparison as "not monotonic"."""
    model, x, y, a = data
    metric = ALL[name]
    s = metric(_NaNOnSample(model, x, "perturbed"), x, y, a)
    assert np.isnan(s).all(), s
    assert all("not finite" in metric.nan_reasons_[i] for i in range(N)), metric.nan_reasons_


@pytest.mark.parametrize("name", ["Sufficiency", "PixelFlipping", "FaithfulnessCorrelation",
                                  "ROAD", "SensitivityN[morf]"])
def test_a_sample_with_non_finite_outputs_is_left_out(name, data):
    """NaN outputs on one sample's inputs: that sample is NaN with the reason; set-level
    metrics compute the set without it (as for a non-finite attribution)."""
    model, x, y, a = data
    metric = ALL[name]
    s = metric(_NaNOnSample(model, x, "sample", target=2), x, y, a)
    assert np.isnan(s[2]) and "not finite" in metric.nan_reasons_[2]
    keep = [0, 1, 3, 4, 5]
    np.testing.assert_allclose(s[keep], metric(model, x[keep], y[keep], a[keep]), rtol=1e-12,
                               atol=1e-12)


def test_nan_inputs_are_rejected_naming_x(data):
    model, x, y, a = data
    bad = x.clone()
    bad[1, 0, 0, 0] = float("nan")
    for metric in _metrics().values():
        with pytest.raises(ValueError, match="`x`"):
            metric(model, bad, y, a)


@pytest.mark.parametrize("name", list(ALL))
def test_batch_size_order_and_seed_invariance(name, data):
    model, x, y, a = data
    metric = ALL[name]
    full = metric(model, x, y, a)
    for bs in (1, 4):
        np.testing.assert_allclose(metric(model, x, y, a, batch_size=bs), full, rtol=1e-12,
                                   atol=1e-12, err_msg=f"batch_size={bs}")
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    np.testing.assert_allclose(metric(model, x[perm], y[perm], a[perm]), full[perm.numpy()],
                               rtol=1e-12, atol=1e-12)
    if not _is_set_level(metric):
        np.testing.assert_allclose(metric(model, x[4:5], y[4:5], a[4:5]), full[4:5],
                                   rtol=1e-12, atol=1e-12)
    if metric.stochastic and metric.seed is not None:
        again = metric.clone()(model, x, y, a)
        np.testing.assert_array_equal(again, full)
        if name not in ("ROAD", "Monotonicity[uniform]"):  # 0/1 scores: may all agree
            other = metric.clone().set_params(seed=metric.seed + 100)(model, x, y, a)
            assert not np.allclose(other, full, equal_nan=True)


@pytest.mark.parametrize("name", list(ALL))
def test_stochastic_flag_says_whether_the_metric_draws_random_numbers(name, data):
    """`stochastic` is True exactly where the scores depend on the seed (random baselines,
    orders, subsets, noise): evaluate() and metaeval seed by it, and list_metrics reports it."""
    model, x, y, a = data
    metric = ALL[name]
    first = metric.clone().set_params(seed=1)(model, x, y, a)
    second = metric.clone().set_params(seed=2)(model, x, y, a)
    depends = not np.allclose(first, second, equal_nan=True)
    if depends:
        assert metric.stochastic, name
    if not metric.stochastic:
        np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("name", list(_metrics()))
def test_docstring_states_direction_paper_and_quantus_differences(name):
    cls = ek.metrics.get(name)
    doc = " ".join((cls.__doc__ or "").split())
    want = "higher is better" if cls.higher_is_better else "lower is better"
    assert re.search(want, doc, re.IGNORECASE), f"{name}: direction not stated"
    assert re.search(r"(19|20)\d\d", doc) and "Reference" in doc, f"{name}: no citation"
    assert cls.paper
    quantus_has = {"FaithfulnessCorrelation", "FaithfulnessEstimate", "PixelFlipping",
                   "RegionPerturbation", "Selectivity", "SensitivityN", "IROF", "Monotonicity",
                   "MonotonicityCorrelation", "Infidelity", "Sufficiency", "ROAD"}
    if name in quantus_has:
        assert "Quantus" in doc, f"{name}: differences from Quantus not stated"


@pytest.mark.parametrize("name", ["PixelFlipping", "Deletion", "Insertion", "Selectivity",
                                  "RegionPerturbation", "IROF", "PixelFlipping[uniform]"])
def test_curve_metrics_return_the_trapezoid_area_over_the_fraction_perturbed(name, data):
    model, x, y, a = data
    metric = ALL[name]
    s = metric(model, x, y, a)
    curves, xs = metric.curves_, metric.curve_x_
    assert curves.shape[0] == N and curves.ndim == 2
    xs2 = np.broadcast_to(xs, curves.shape)
    assert np.all(xs2[:, 0] == 0) and np.all(np.diff(xs2, axis=1) >= 0)
    assert np.all(xs2 <= 1)
    if name != "RegionPerturbation":  # its curve stops after regions_evaluation regions
        assert np.all(xs2[:, -1] == 1)
    auc = np.trapezoid(curves, xs2, axis=1)
    np.testing.assert_allclose(s, 1 - auc if name == "IROF" else auc, rtol=1e-12, atol=1e-12)
    # scores compare across step sizes: a finer step walks the same features
    if name == "PixelFlipping":
        fine = M.PixelFlipping(features_in_step=1)
        fine(model, x, y, a)
        assert fine.curves_.shape[1] == 37
        np.testing.assert_allclose(fine.curves_[:, ::6], curves, rtol=1e-12)


def test_empty_and_full_perturbation_sets(data):
    """Perturbing nothing gives the unperturbed answer; perturbing everything is defined."""
    model, x, y, a = data
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).double().numpy()
    road0 = M.ROAD(percentages=[0], order="morf", seed=0)
    np.testing.assert_array_equal(road0(model, x, y, a), correct)
    np.testing.assert_array_equal(M.ROAD(percentages=[0], seed=0)(model, x, y, a), np.zeros(N))
    road_all = M.ROAD(percentages=[0, 100], order="morf", score="confidence", seed=0)
    s = road_all(model, x, y, a)
    assert np.isfinite(s).all() and (road_all.curves_[:, 0] == 0).all()
    assert (road_all.curves_[:, 1] != 0).all()  # everything imputed: the input changed
    # keeping every element (the 0th percentile) leaves x as it is: no drop, increase or gain
    for cls in (M.AverageDrop, M.AverageIncrease, M.AverageGain):
        np.testing.assert_array_equal(cls(threshold_percentile=0)(model, x, y, a), np.zeros(N))
        # the 100th keeps only the top element(s): defined, and a real perturbation
        top = cls(threshold_percentile=100)(model, x, y, a)
        assert np.isfinite(top).all()
    drop_top = M.AverageDrop(threshold_percentile=100, relative=False)(model, x, y, a)
    drop_all = M.AverageDrop(threshold_percentile=0, relative=False)(model, x, y, a)
    assert (drop_top >= drop_all).all() and (drop_top > 0).any()


def test_soft_pair_drops_elements_whose_keep_probability_is_nan():
    """Importances of +-1e308 overflow the min-max span (q = inf / inf = NaN for every
    feature but the smallest, which gets q = 0): a NaN keep probability drops its element
    (u < NaN is False). Sufficiency (keep q) then drops everything, comprehensiveness
    (keep 1 - q) keeps only the smallest feature: every draw scores that input."""
    import warnings

    from evalkit.metrics import SoftComprehensiveness, SoftSufficiency

    torch.manual_seed(0)
    model = nn.Linear(4, 3).eval()
    x = torch.randn(3, 4)
    y = torch.zeros(3, dtype=torch.long)
    a = torch.full((3, 4), 1e308, dtype=torch.float64)
    a[:, 0] = -1e308
    only_first = torch.zeros_like(x)
    only_first[:, 0] = x[:, 0]
    with torch.no_grad():
        p_empty = torch.softmax(model(torch.zeros_like(x)), 1)[:, 0].numpy()
        p_first = torch.softmax(model(only_first), 1)[:, 0].numpy()
    for cls, want in ((SoftSufficiency, p_empty), (SoftComprehensiveness, p_first)):
        metric = cls(nr_samples=2, normalise=False, abs=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metric(model, x, y, a)
        draws = np.asarray(metric.draw_scores_)
        np.testing.assert_allclose(draws, np.repeat(want[:, None], 2, 1), rtol=1e-6)
