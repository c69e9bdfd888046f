"""evaluate(): sharing of explanations, error isolation, seeds, chunking, results, configuration
hashes, and the demo data's sanity claims."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from _evaluate_helpers import CountingExplainer, _Boom, problem

import evalkit as ek
from evalkit import _rng
from evalkit.evaluate import Evaluation, explain_methods
from evalkit.results import Results

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.EvalkitWarning")


@pytest.fixture(scope="module")
def data():
    return problem(12)


def _cheap_metrics():
    return {
        "PF": ek.metrics.PixelFlipping(features_in_step=256),
        "RRA": ek.metrics.RelevanceRankAccuracy(),
        "Sparseness": ek.metrics.Sparseness(),
    }


# ---------------------------------------------------------------------- sharing
class TestSharing:
    def test_each_method_explained_once_for_all_metrics(self, data):
        model, x, y, s = data
        a, b = CountingExplainer("Saliency"), CountingExplainer("InputXGradient")
        r = ek.evaluate({**_cheap_metrics(), "Complexity": ek.metrics.Complexity()},
                        {"A": a, "B": b}, model, x, y, s, chunk_size=5, progress=False)
        # each input explained once (one call per chunk of 5, just before the chunk's units),
        # although 4 metrics ran on 3 chunks each
        assert a.calls == [5, 5, 2] and b.calls == [5, 5, 2]
        assert not r.errors
        assert all(np.isfinite(r["A", k]).all() for k in r.metrics)

    def test_registered_methods_explained_once(self, data):
        model, x, y, s = data
        seen: list[tuple[str, int]] = []

        def counting_explain(model, x, y, method, **kw):
            seen.append((method, int(x.shape[0])))
            return ek.explain(model, x, y, method=method, **kw)

        ek.evaluate(_cheap_metrics(), {"Saliency": {"reduce_channels": "abs_sum"},
                                       "InputXGradient": {}}, model, x, y, s,
                    explain_fn=counting_explain, chunk_size=4, progress=False)
        # Quantus' convention: the display name is injected as `method`; each row once
        assert sorted(seen) == [("InputXGradient", 4)] * 3 + [("Saliency", 4)] * 3

    def test_reexplaining_metric_gets_the_method_function(self, data):
        model, x, y, s = data
        a = CountingExplainer("Saliency")
        r = ek.evaluate({"RandomLogit": ek.metrics.RandomLogit(num_classes=4),
                         "RRA": ek.metrics.RelevanceRankAccuracy()},
                        {"A": a}, model, x, y, s, chunk_size=6, progress=False)
        assert not r.errors
        # per chunk: the shared explanation of its 6 rows, then RandomLogit's re-explanation
        assert a.calls == [6, 6, 6, 6]

    def test_method_kwargs_do_not_leak(self, data):
        """Quantus deviation C21: one method's explain kwargs leaked into the next method's."""
        model, x, y, _s = data
        seen: dict[str, dict] = {}

        def fn(model, x, y, method, **kw):
            seen[method] = dict(kw)
            return ek.explain(model, x, y, method="Saliency")

        ek.evaluate({"Sparseness": ek.metrics.Sparseness()},
                    {"first": {"reduce_channels": "sum"}, "second": {}}, model, x, y,
                    explain_fn=fn, progress=False)
        assert seen["first"] == {"reduce_channels": "sum"}
        assert seen["second"] == {}

    def test_forward_passes_shared_between_curve_metrics(self, data):
        model, x, y, _s = data
        a = ek.explain(model, x, y, method="Saliency", reduce_channels="abs_sum")
        pf = ek.metrics.PixelFlipping(features_in_step=64)
        de = ek.metrics.Deletion(features_in_step=64, perturb_baseline="black")

        def rows(metrics):
            w = ek.wrap_model(model)
            w.output_shape(torch.as_tensor(x))
            w.counter.reset()
            r = ek.evaluate(metrics, {"a": a}, w, x, y, progress=False)
            return r, w.counter.rows

        r_both, both = rows({"PF": pf, "Del": de})
        _, alone = rows({"PF": pf})
        assert both < 1.2 * alone  # Deletion's curve came from the cache
        np.testing.assert_allclose(r_both["a", "PF"], r_both["a", "Del"], rtol=1e-10)


# ---------------------------------------------------------------------- errors
class TestErrors:
    def test_failing_cell_is_recorded_and_the_run_goes_on(self, data):
        model, x, y, s = data
        _Boom.calls = 0
        with pytest.warns(ek.EvalkitWarning, match="cells failed"):
            r = ek.evaluate({"boom": _Boom(), "RRA": ek.metrics.RelevanceRankAccuracy()},
                            {"Saliency": {}, "Random": {}}, model, x, y, s, chunk_size=4,
                            progress=False)
        assert set(r.errors) == {("Saliency", "boom"), ("Random", "boom")}
        err = r.errors["Saliency", "boom"]
        assert err.type == "RuntimeError" and "boom" in err.message
        assert "Traceback" in err.traceback and "_evaluate" in err.traceback
        assert err.samples == (0, 4)
        assert _Boom.calls == 2  # a failed cell is not retried on its other chunks
        assert np.isnan(r["Saliency", "boom"]).all()
        assert np.isfinite(r["Saliency", "RRA"]).all() and np.isfinite(r["Random", "RRA"]).all()
        summary = r.summary()
        assert summary.loc[("Saliency", "boom"), "error"].startswith("RuntimeError: boom")
        assert pd.isna(summary.loc[("Saliency", "RRA"), "error"])

    def test_failing_explanation_fails_only_its_method(self, data):
        model, x, y, s = data

        def broken(model, x, y, **kw):
            return torch.zeros(3, 1, 32, 32)  # wrong number of rows

        r = ek.evaluate(_cheap_metrics(), {"broken": broken, "ok": {"method": "Saliency"}},
                        model, x, y, s, progress=False)
        assert {c[0] for c in r.errors} == {"broken"}
        assert "one attribution per input" in r.errors["broken", "PF"].message
        assert r.errors["broken", "PF"].samples is None
        assert np.isfinite(r["ok", "PF"]).all()

    def test_array_method_cannot_feed_a_reexplaining_metric(self, data):
        model, x, y, s = data
        a = ek.explain(model, x, y, method="Saliency")
        r = ek.evaluate({"MaxSens": ek.metrics.MaxSensitivity(nr_samples=2),
                         "RRA": ek.metrics.RelevanceRankAccuracy()},
                        {"precomputed": a}, model, x, y, s, progress=False)
        err = r.errors["precomputed", "MaxSens"]
        assert "an attribution array is not enough" in err.message
        assert "needs an explain function" in err.message
        assert ("precomputed", "RRA") not in r.errors

    def test_groundtruth_control_receives_the_masks(self, data):
        model, x, y, s = data
        r = ek.evaluate({"RRA": ek.metrics.RelevanceRankAccuracy(),
                         "RandomLogit": ek.metrics.RandomLogit(num_classes=4),
                         "MaxSens": ek.metrics.MaxSensitivity(nr_samples=2)},
                        {"GroundTruth": {}, "mask array": s.astype(np.float32)}, model, x, y, s,
                        chunk_size=5, progress=False)
        np.testing.assert_array_equal(r["GroundTruth", "RRA"], np.ones(12))
        np.testing.assert_array_equal(r["GroundTruth", "RRA"], r["mask array", "RRA"])
        # RandomLogit re-explains the same inputs (other labels): the masks follow them
        np.testing.assert_allclose(r["GroundTruth", "RandomLogit"], 1.0)
        # MaxSensitivity re-explains perturbed copies, whose masks are unknown: the pairing
        # is not applicable (NaN with the reason on every sample, every chunk), not a failure
        assert ("GroundTruth", "MaxSens") not in r.errors
        assert np.isnan(r["GroundTruth", "MaxSens"]).all()
        reasons = r.nan_reasons["GroundTruth", "MaxSens"]
        assert sorted(reasons) == list(range(12))
        assert all(v.startswith("not applicable: GroundTruth needs masks")
                   and "not inputs of the evaluation" in v for v in reasons.values())
        board = r.leaderboard(n_boot=0).to_markdown(ci=False)
        row = next(line for line in board.splitlines() if line.startswith("| GroundTruth"))
        assert "n/a" in row and "error" not in row

    def test_groundtruth_without_masks_is_a_cell_error(self, data):
        model, x, y, _ = data
        r = ek.evaluate({"Sparseness": ek.metrics.Sparseness()},
                        {"GroundTruth": {}, "Saliency": {}}, model, x, y, progress=False)
        assert "needs the ground-truth masks" in r.errors["GroundTruth", "Sparseness"].message
        assert ("Saliency", "Sparseness") not in r.errors


# ---------------------------------------------------------------------- validation
class TestValidation:
    def test_argument_types(self, data):
        model, x, y, s = data
        with pytest.raises(TypeError, match="xai_methods"):
            ek.evaluate(_cheap_metrics(), 42, model, x, y)
        with pytest.raises(TypeError, match=r"xai_methods\['m'\]"):
            ek.evaluate(_cheap_metrics(), {"m": 3.5}, model, x, y)
        with pytest.raises(TypeError, match=r"metrics\['bad'\]"):
            ek.evaluate({"bad": np.mean}, {"Saliency": {}}, model, x, y)
        with pytest.raises(ValueError, match="metrics` is empty"):
            ek.evaluate({}, {"Saliency": {}}, model, x, y)
        with pytest.raises(ValueError, match="one row per input"):
            ek.evaluate(_cheap_metrics(), {"a": np.zeros((3, 1, 32, 32))}, model, x, y)
        with pytest.raises(ValueError, match="one mask per input"):
            ek.evaluate(_cheap_metrics(), {"Saliency": {}}, model, x, y, s[:3])
        with pytest.raises(ValueError, match="chunk_size"):
            ek.evaluate(_cheap_metrics(), {"Saliency": {}}, model, x, y, chunk_size=0)
        with pytest.raises(ValueError, match="Unknown explanation method"):
            ek.evaluate(_cheap_metrics(), {"Salincy": {}}, model, x, y)

    def test_convenience_forms(self, data):
        model, x, y, _s = data
        r = ek.evaluate(["Sparseness", ek.metrics.Complexity()], ["Saliency", "Sobel"],
                        model, x, y, progress=False)
        assert r.metrics == ["Sparseness", "Complexity"]
        assert r.methods == ["Saliency", "Sobel"]

    def test_callers_objects_untouched(self, data):
        model, x, y, s = data
        metric = ek.metrics.FaithfulnessCorrelation(nr_runs=5, subset_size=16, seed=123)
        x0, s0 = x.copy(), s.copy()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        ek.evaluate({"FC": metric}, {"Saliency": {}}, model, x, y, s, progress=False)
        assert metric.seed == 123 and metric.scores_ is None
        np.testing.assert_array_equal(x, x0)
        np.testing.assert_array_equal(s, s0)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
        assert not model.training


# ---------------------------------------------------------------------- seeds and chunking
class TestSeedsAndChunks:
    def _stochastic(self):
        return {"FC": ek.metrics.FaithfulnessCorrelation(nr_runs=6, subset_size=32),
                "Sparseness": ek.metrics.Sparseness()}

    def test_seeds_are_derived_from_the_seed_and_the_metric_name(self, data):
        model, x, y, _s = data
        r = ek.evaluate(self._stochastic(), {"Saliency": {}}, model, x, y, seed=7,
                        progress=False)
        assert r.seed == 7
        assert r.seeds["FC"] == _rng.derive_seed(7, "metric", "FC") & ((1 << 63) - 1)
        assert r.metric_info["FC"]["seed"] == r.seeds["FC"]

    def test_reproducible_and_independent_of_metric_order(self, data):
        model, x, y, _s = data
        m = self._stochastic()
        r1 = ek.evaluate(m, {"Saliency": {}}, model, x, y, seed=7, progress=False)
        r2 = ek.evaluate(dict(reversed(list(m.items()))), {"Saliency": {}}, model, x, y, seed=7,
                         progress=False)
        r3 = ek.evaluate(m, {"Saliency": {}}, model, x, y, seed=8, progress=False)
        np.testing.assert_array_equal(r1["Saliency", "FC"], r2["Saliency", "FC"])
        assert not np.allclose(r1["Saliency", "FC"], r3["Saliency", "FC"])

    def test_stochastic_explainers_get_derived_seeds(self, data):
        model, x, y, _s = data
        maps = explain_methods({"Random": {}}, model, x, y, seed=3)
        expected = ek.explain(model, x, y, method="Random",
                              seed=_rng.derive_seed(3, "method", "Random") & ((1 << 63) - 1))
        np.testing.assert_array_equal(maps["Random"], expected)
        r = ek.evaluate({"Sparseness": ek.metrics.Sparseness()}, {"Random": {}}, model, x, y,
                        seed=3, progress=False)
        np.testing.assert_allclose(r["Random", "Sparseness"],
                                   ek.metrics.Sparseness()(model, x, y, expected), rtol=1e-12)

    def test_chunked_equals_unchunked(self, data):
        model, x, y, s = data
        metrics = {**self._stochastic(), "PF": ek.metrics.PixelFlipping(features_in_step=128),
                   "MaxSens": ek.metrics.MaxSensitivity(nr_samples=2),
                   "RRA": ek.metrics.RelevanceRankAccuracy()}
        methods = {"Saliency": {"reduce_channels": "abs_sum"}, "Random": {}}
        whole = ek.evaluate(metrics, methods, model, x, y, s, chunk_size=None, progress=False)
        parts = ek.evaluate(metrics, methods, model, x, y, s, chunk_size=5, progress=False)
        for cell in whole.scores:
            np.testing.assert_allclose(parts.scores[cell], whole.scores[cell], rtol=1e-6,
                                       atol=1e-9, err_msg=str(cell))
        c1, c2 = whole.curves["Saliency", "PF"], parts.curves["Saliency", "PF"]
        assert c1.shape == (12, 9)
        np.testing.assert_allclose(c2, c1, rtol=1e-6, atol=1e-9)

    def test_batch_size_does_not_change_results(self, data):
        model, x, y, s = data
        r1 = ek.evaluate(_cheap_metrics(), {"Saliency": {}}, model, x, y, s, progress=False)
        r2 = ek.evaluate(_cheap_metrics(), {"Saliency": {}}, model, x, y, s, batch_size=3,
                         progress=False)
        for cell in r1.scores:
            np.testing.assert_allclose(r2.scores[cell], r1.scores[cell], rtol=1e-6, atol=1e-9)
        assert r1.config_hashes == r2.config_hashes


# ---------------------------------------------------------------------- results
@pytest.fixture(scope="module")
def results(data):
    model, x, y, s = data
    return ek.evaluate(_cheap_metrics(), {"Saliency": {"reduce_channels": "abs_sum"},
                                          "Sobel": {}}, model, x, y, s, progress=False)


class TestResults:
    def test_tidy_frame(self, results):
        f = results.to_frame()
        assert list(f.columns) == ["method", "metric", "sample", "score", "family",
                                   "higher_is_better", "nan_reason"]
        assert len(f) == 2 * 3 * 12
        row = f[(f.method == "Sobel") & (f.metric == "PF") & (f["sample"] == 4)].iloc[0]
        assert row.score == results["Sobel", "PF"][4]
        assert row.family == "faithfulness" and not row.higher_is_better

    def test_summary_statistics(self, results):
        summ = results.summary()
        v = results["Saliency", "RRA"]
        row = summ.loc[("Saliency", "RRA")]
        assert row["mean"] == pytest.approx(v.mean())
        assert row["std"] == pytest.approx(v.std(ddof=1))
        assert row["sem"] == pytest.approx(v.std(ddof=1) / np.sqrt(12))
        assert row["n_valid"] == 12 and row["n_nan"] == 0
        assert row["time_s"] > 0
        wide = results.summary(wide=True)
        assert list(wide.index) == ["Saliency", "Sobel"] and list(wide.columns) == ["PF", "RRA",
                                                                                    "Sparseness"]

    def test_nan_reasons_and_counts(self, data):
        model, x, y, _s = data
        a = ek.explain(model, x, y, method="Saliency")
        a[[2, 5]] = 0.0  # all-zero maps: Sparseness is undefined there
        with pytest.warns(ek.UndefinedScoreWarning, match="a x Sparseness: 2"):
            r = ek.evaluate({"Sparseness": ek.metrics.Sparseness()}, {"a": a}, model, x, y,
                            chunk_size=4, progress=False)
        assert set(r.nan_reasons["a", "Sparseness"]) == {2, 5}
        assert r.summary().loc[("a", "Sparseness"), "n_nan"] == 2
        f = r.to_frame()
        assert f.nan_reason.notna().sum() == 2

    def test_configuration_is_recorded(self, results):
        info = results.metric_info["PF"]
        assert info["class"] == "evalkit.metrics.faithfulness.PixelFlipping"
        assert info["params"]["features_in_step"] == 256
        assert info["higher_is_better"] is False and info["family"] == "faithfulness"
        assert "features_in_step=256" in info["repr"]
        assert results.method_info["Saliency"]["method"] == "Saliency"
        assert results.method_info["Saliency"]["kwargs"]["reduce_channels"] == "abs_sum"
        for lib in ("evalkit", "torch", "numpy", "captum", "scipy", "scikit-image", "matplotlib"):
            assert lib in results.versions
        text = results.to_json()
        assert json.loads(text)["metrics"]["PF"]["params"]["features_in_step"] == 256
        assert len(results.config_hashes) == 6 and results.wall_time > 0

    def test_from_scores(self):
        r = Results.from_scores({"a": {"m": [1.0, 2.0]}, "b": {"m": [3.0, 4.0]}},
                                higher_is_better={"m": False})
        assert r.n == 2 and r.methods == ["a", "b"] and not r.higher_is_better("m")
        with pytest.raises(ValueError, match="same number of samples"):
            Results.from_scores({"a": {"m": [1.0]}, "b": {"m": [1.0, 2.0]}})


# ---------------------------------------------------------------------- configuration hashes
class TestConfigurationHash:
    def _hashes(self, metrics, methods, model, x, y, s=None, **kw):
        return Evaluation(metrics, methods, model, x, y, s, **kw).cell_hashes

    def test_changes_with_each_setting(self, data):
        model, x, y, _s = data
        base = self._hashes({"PF": ek.metrics.PixelFlipping(features_in_step=64)},
                            {"Saliency": {}}, model, x, y)
        cell = ("Saliency", "PF")
        changed_param = self._hashes({"PF": ek.metrics.PixelFlipping(features_in_step=32)},
                                     {"Saliency": {}}, model, x, y)
        changed_method = self._hashes({"PF": ek.metrics.PixelFlipping(features_in_step=64)},
                                      {"Saliency": {"reduce_channels": "sum"}}, model, x, y)
        changed_seed = self._hashes({"PF": ek.metrics.PixelFlipping(features_in_step=64)},
                                    {"Saliency": {}}, model, x, y, seed=1)
        other = problem(12)[0]
        with torch.no_grad():
            other.fc.bias.add_(1e-3)
        changed_model = self._hashes({"PF": ek.metrics.PixelFlipping(features_in_step=64)},
                                     {"Saliency": {}}, other, x, y)
        hashes = {base[cell], changed_param[cell], changed_method[cell], changed_seed[cell],
                  changed_model[cell]}
        assert len(hashes) == 5
        # settings that do not change scores keep the hash
        same = self._hashes({"PF": ek.metrics.PixelFlipping(features_in_step=64, progress=True,
                                                            disable_warnings=True)},
                            {"Saliency": {}}, model, x, y, batch_size=7, chunk_size=3)
        assert same[cell] == base[cell]

    def test_data_is_part_of_the_unit_key(self, data):
        model, x, y, _s = data
        ev = Evaluation({"S": ek.metrics.Sparseness()}, {"Saliency": {}}, model, x, y,
                        chunk_size=4)
        x2 = x.copy()
        x2[5, 0, 0, 0] += 0.25
        ev2 = Evaluation({"S": ek.metrics.Sparseness()}, {"Saliency": {}}, model, x2, y,
                         chunk_size=4)
        k1 = [u.key for u in ev.plan()]
        k2 = [u.key for u in ev2.plan()]
        assert k1[0] == k2[0] and k1[2] == k2[2]  # chunks 0:4 and 8:12 unchanged
        assert k1[1] != k2[1]


# ---------------------------------------------------------------------- the demo's claims
def test_controls_on_the_shapes_data():
    """On the demo data, the ground-truth mask ranks first on localisation, and a random map
    ranks below every model-based method on most metrics (with Sobel, the other model-blind
    control, it holds the last places)."""
    from evalkit.datasets import make_shapes
    from evalkit.zoo import load_shapes_cnn

    d = make_shapes(16, seed=2026)
    metrics = {
        "PointingGame": ek.metrics.PointingGame(),
        "RelevanceRank": ek.metrics.RelevanceRankAccuracy(),
        "AUC": ek.metrics.AUC(),
        "Sparseness": ek.metrics.Sparseness(),
        "Insertion": ek.metrics.Insertion(n_steps=16),
        "PixelFlipping": ek.metrics.PixelFlipping(features_in_step=64),
        "RandomLogit": ek.metrics.RandomLogit(num_classes=4),
    }
    model_based = ["Saliency", "InputXGradient", "GradCAM"]
    methods = {"Saliency": {"reduce_channels": "abs_sum"},
               "InputXGradient": {"reduce_channels": "sum"},
               "GradCAM": {"layer": "features.conv3"}, "Random": {}, "Sobel": {},
               "GroundTruth": {}}
    r = ek.evaluate(metrics, methods, load_shapes_cnn(), d.x, d.y, d.masks, progress=False)
    assert not r.errors
    for mode in ("rank_then_aggregate", "aggregate_then_rank"):
        board = r.leaderboard(mode=mode, n_boot=0)
        loc = board.table["localisation rank"]
        assert loc.idxmin() == "GroundTruth", mode
        for k in ("PointingGame", "RelevanceRank", "AUC"):
            assert board.ranks.loc["GroundTruth", k] == board.ranks[k].min(), (mode, k)
        behind = [k for k in r.metrics
                  if (board.ranks.loc["Random", k] > board.ranks.loc[model_based, k]).all()]
        assert len(behind) >= 5, (mode, behind)
        last_two = [k for k in r.metrics
                    if board.ranks.loc["Random", k] >= board.ranks[k].drop("Random").nlargest(
                        2).min()]
        assert len(last_two) >= 5, (mode, last_two)
        assert (board.table.loc["Random", "mean rank"]
                > board.table.loc[[*model_based, "GroundTruth"], "mean rank"]).all()


def test_explain_methods_warns_and_skips_failures(data):
    model, x, y, _s = data

    def broken(model, x, y, **kw):
        raise RuntimeError("nope")

    with pytest.warns(ek.EvalkitWarning, match="nope"):
        maps = explain_methods({"ok": {"method": "Saliency"}, "broken": broken}, model, x[:2],
                               y[:2])
    assert set(maps) == {"ok"} and maps["ok"].shape[0] == 2


def test_no_warnings_for_clean_runs(data):
    model, x, y, s = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = ek.evaluate(_cheap_metrics(), {"Saliency": {}}, model, x, y, s, progress=False)
    assert isinstance(r.summary(), pd.DataFrame)


def test_direction_set_by_the_metric_object_ranks_the_leaderboard(data):
    """Completeness(return_residual=True) scores a residual (lower is better) although the
    class default is higher-is-better; results and ranks follow the object."""
    model, x, y, _ = data
    n = 6
    # Saliency maps have larger sums than the output, IG's sum to it (small residuals)
    r = ek.evaluate({"residual": ek.metrics.Completeness(return_residual=True),
                     "passes": ek.metrics.Completeness()},
                    {"IntegratedGradients": {"n_steps": 64}, "Saliency": {}},
                    model, x[:n], y[:n], progress=False)
    assert r.higher_is_better("residual") is False and r.higher_is_better("passes") is True
    res = r.scores["IntegratedGradients", "residual"], r.scores["Saliency", "residual"]
    assert np.nanmean(res[0]) < np.nanmean(res[1])
    ranks = r.leaderboard(n_boot=0).ranks
    if np.all(np.isfinite(res[0])) and np.all(np.isfinite(res[1])):
        assert ranks.loc["IntegratedGradients", "residual"] == 1
