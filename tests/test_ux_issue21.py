"""Issue 21: leaderboards with coverage, cost estimates and progress, user-facing messages,
the CLI's configuration checks and exit codes, docs that run, and metaeval's reports.

Each test here failed on the main branch the issue was filed against.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import evalkit as ek
import metaeval as me
from evalkit.datasets import make_shapes
from evalkit.zoo import load_shapes_cnn

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.EvalkitWarning")


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(6, seed=3), load_shapes_cnn()


# ---------------------------------------------------------------------- metaeval (item 6)
def test_single_metaevaluation_names_its_dataset_and_model(shapes):
    data, model = shapes
    run = me.MetaEvaluation(me.default_suite(), {"Saliency": {}}, iterations=1,
                            nr_perturbations=1, seed=0)
    summary = run({"Sparseness": ek.metrics.Sparseness()}, model, data.x[:4], data.y[:4]).summary()
    assert (summary["dataset"] == "x(4, 3, 32, 32)").all()
    assert (summary["model"] == type(model).__name__).all()
    named = run({"Sparseness": ek.metrics.Sparseness()}, model, data.x[:4], data.y[:4],
                dataset="shapes", model_name="cnn").summary()
    assert set(named["dataset"]) == {"shapes"} and set(named["model"]) == {"cnn"}


def test_significance_reports_direction_and_test_separately():
    # 40 samples: 30 tie the baseline exactly, 10 are better: the median difference is 0,
    # the signed-rank test is clearly significant, and the method is better
    n = 40
    base = np.linspace(0.0, 1.0, n)
    better = base.copy()
    better[:10] += 0.5
    frame = pd.concat([pd.DataFrame({"metric": "M", "method": m, "sample": np.arange(n),
                                     "score": s}) for m, s in (("A", better),
                                                               ("Random", base))])
    sig = me.reliability_report(frame, higher_is_better=True, n_boot=10).significance.iloc[0]
    assert sig["median_diff"] == 0.0 and sig["p"] < 0.01
    assert sig["significant"] and sig["direction"] == "better"
    assert sig["better"] and not sig["worse"]
    lower = me.reliability_report(frame, higher_is_better=False, n_boot=10).significance.iloc[0]
    assert lower["direction"] == "worse" and lower["worse"] and not lower["better"]


# ---------------------------------------------------------------------- leaderboards (item 1)
def _incomplete_results():
    # A has no score on its three hardest samples; B scores every sample (higher is better)
    nan = np.nan
    return ek.Results.from_scores({"A": {"m": [0.9, 0.8, nan, nan, nan]},
                                   "B": {"m": [0.85, 0.75, 0.1, 0.1, 0.1]}},
                                  higher_is_better={"m": True})


@pytest.mark.parametrize("mode", ["rank_then_aggregate", "aggregate_then_rank"])
def test_an_incomplete_method_does_not_improve_by_missing_its_hard_samples(mode):
    board = _incomplete_results().leaderboard(mode=mode, n_boot=20)
    assert list(board.table.index) == ["B", "A"]
    if mode == "rank_then_aggregate":  # A is last on the three samples it has no score on
        assert board.ranks.loc["A", "m"] == pytest.approx((1 + 1 + 2 + 2 + 2) / 5)
    long = board.long.set_index("method")
    assert long.loc["A", "n_valid"] == 2 and long.loc["B", "n_valid"] == 5
    assert (long["n_total"] == 5).all()
    assert board.coverage.loc["A", "m"] == 2
    # complete cases, the former only behaviour, is an explicit choice
    common = _incomplete_results().leaderboard(mode=mode, n_boot=0, incomplete="common")
    assert list(common.table.index) == ["A", "B"]
    with pytest.raises(ValueError, match="incomplete"):
        _incomplete_results().leaderboard(incomplete="drop")


def test_every_leaderboard_cell_shows_its_coverage():
    board = _incomplete_results().leaderboard(n_boot=0)
    md = board.to_markdown()
    assert "(1.6, 2/5)" in md and "(1.4, 5/5)" in md
    assert "coverage (samples with a score / samples)" in md
    assert "2/5" in board.to_latex() and "2/5" in board.to_html()


# ---------------------------------------------------------------------- CLI (items 3 and 4)
def _toml(tmp_path, text, name="c.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


_GOOD = """
[run]
seed = 0
[data]
n = 4
[methods.Sobel]
[metrics.Sparseness]
"""


def _no_work(monkeypatch):
    import evalkit.cli as cli

    def fail(*a, **k):
        raise AssertionError("work started before the configuration was validated")

    monkeypatch.setattr(cli, "_load_data", fail)
    monkeypatch.setattr(cli, "_load_model", fail)


@pytest.mark.parametrize("text, expected", [
    (_GOOD.replace("[run]", "[runn]"), "Unknown section [runn]. Did you mean [run]?"),
    (_GOOD.replace("seed = 0", "sed = 0"), "[run] has no key 'sed'. Did you mean 'seed'?"),
    (_GOOD + '[leaderboard]\nmod = "aggregate_then_rank"\n',
     "[leaderboard] has no key 'mod'. Did you mean 'mode'?"),
    (_GOOD.replace("n = 4", "n = 4\nsede = 1"), "Did you mean 'seed'?"),
    (_GOOD.replace("[metrics.Sparseness]", "[metrics.Sparsenes]"),
     "No metric named 'Sparsenes'. Did you mean Sparseness"),
    (_GOOD + "[metrics.PixelFlipping]\nfeatures_in_stp = 8\n",
     "Did you mean 'features_in_step' for 'features_in_stp'?"),
    (_GOOD.replace("[methods.Sobel]", "[methods.Sobl]"), "Did you mean Sobel?"),
    (_GOOD + '[report]\nplots = ["radr"]\n', "Did you mean 'radar'?"),
])
def test_config_mistakes_are_one_line_errors_before_any_work(tmp_path, monkeypatch, capsys,
                                                             text, expected):
    _no_work(monkeypatch)
    from evalkit.cli import main

    assert main(["run", _toml(tmp_path, text), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "--debug" in err


def test_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    _no_work(monkeypatch)
    from evalkit.cli import main

    path = _toml(tmp_path, _GOOD.replace("[metrics.Sparseness]", "[metrics.Sparsenes]"))
    assert main(["run", path, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert main(["--debug", "run", path]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_failed_cells_exit_non_zero_unless_allowed(tmp_path, capsys):
    from evalkit.cli import main

    # a layer the model does not have: explaining GradCAM fails, so its cell fails
    path = _toml(tmp_path, _GOOD.replace("[methods.Sobel]", "[methods.Sobel]\n"
                                         "[methods.GradCAM]\nlayer = \"no_such_layer\"")
                 + "[metrics.Complexity]\n")
    args = ["run", path, "--no-progress", "--no-report", "--no-store"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "2 of 4 cells could not be computed" in captured.out
    assert "Unknown layer 'no_such_layer'" in captured.out
    assert "2 of 4 cells failed" in captured.err and "--allow-failures" in captured.err
    assert main([*args, "--allow-failures"]) == 0


def test_a_pairing_that_does_not_apply_is_no_failure(tmp_path, capsys):
    """GroundTruth's masks exist for the evaluation's inputs only: under MaxSensitivity (which
    re-explains perturbed copies) its scores are undefined, shown n/a, and the run succeeds."""
    from evalkit.cli import main

    path = _toml(tmp_path, _GOOD.replace("[methods.Sobel]", "[methods.Sobel]\n"
                                         "[methods.GroundTruth]")
                 + "[metrics.MaxSensitivity]\nnr_samples = 2\n")
    assert main(["run", path, "--no-progress", "--no-report", "--no-store"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| GroundTruth"))
    assert "n/a" in row and "error" not in row


# ---------------------------------------------------------------------- messages (item 3)
def test_sentence_helpers():
    from evalkit._text import end_sentence, join_sentences, malformed_punctuation

    assert end_sentence("pass `s` to evaluate()") == "pass `s` to evaluate()."
    assert end_sentence("(pass `modality=` if that is wrong.)") == \
        "(pass `modality=` if that is wrong.)"
    assert end_sentence("shape (N, ...)") == "shape (N, ...)."
    assert join_sentences("2 cells failed", "A x m: it is wrong.)", None, "See `errors`") == \
        "2 cells failed. A x m: it is wrong.) See `errors`."
    assert malformed_punctuation("wrong.). See") == [".)."]
    assert malformed_punctuation("done.. See") == [".."]
    assert malformed_punctuation("shape (N, ...). See e.g. v0.6.0.") == []


def _messages_from_bad_calls(shapes) -> list[str]:
    """What a user reads: exceptions of the validation layer, cell errors and the warnings of
    evaluate() that embed them."""
    import warnings

    import torch

    data, model = shapes
    x, y = data.x[:4], data.y[:4]
    messages = []
    bad_calls = [
        lambda: ek.metrics.PixelFlipping()(model, x[0], y, None),               # rank of x
        lambda: ek.metrics.PixelFlipping()(model, x, y[:2], np.ones((4, 1, 32, 32))),
        lambda: ek.metrics.PixelFlipping()(model, x, y, np.ones((4, 1, 8, 8))),
        lambda: ek.metrics.RelevanceRankAccuracy()(model, x, y, np.ones((4, 1, 32, 32))),
        lambda: ek.metrics.PixelFlipping(features_in_stp=3),
        lambda: ek.metrics.ROAD()(model, np.random.default_rng(2).random((4, 5)).astype(
            "float32"), y, np.ones((4, 5))),
        lambda: ek.metrics.AUCSE()(model, np.random.default_rng(2).random((4, 5)).astype(
            "float32"), y, np.ones((4, 5))),                                   # series only
        lambda: ek.metrics.get("PixelFliping"),
        lambda: ek.explain(model, x, y, method="Salency"),
        lambda: ek.explain(model, x, y, method="GradCAM", layer="nope"),
        lambda: ek.metrics.PixelFlipping()(model, np.full((4, 3, 32, 32), np.nan, "float32"),
                                           y, np.ones((4, 1, 32, 32))),
        lambda: ek.evaluate({"PF": ek.metrics.PixelFlipping()}, {"A": np.ones((3, 1, 32, 32))},
                            model, x, y, progress=False),
    ]
    for call in bad_calls:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                call()
            except Exception as exc:  # every message is scanned
                messages.append(exc.args[0] if isinstance(exc, KeyError) else str(exc))
            else:
                raise AssertionError(f"{call} did not raise")
    tabular = torch.nn.Sequential(torch.nn.Linear(5, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = ek.evaluate(
            {"IROF": ek.metrics.IROF(), "MaxSensitivity": ek.metrics.MaxSensitivity(nr_samples=2),
             "Sparseness": ek.metrics.Sparseness()},
            {"Pre": np.random.default_rng(0).random((4, 5)), "GroundTruth": {}},
            tabular, np.random.default_rng(1).random((4, 5)).astype("float32"), y,
            progress=False)
    messages += [str(w.message) for w in caught]
    messages += [str(e) for e in results.errors.values()]
    assert len(results.errors) >= 3
    return messages


def test_user_facing_messages_end_each_sentence_once(shapes):
    from evalkit._text import malformed_punctuation

    messages = _messages_from_bad_calls(shapes)
    assert any("is wrong.)" in m for m in messages)  # the message that gave ".)." before
    bad = {m: malformed_punctuation(m) for m in messages if malformed_punctuation(m)}
    assert not bad, bad


# ---------------------------------------------------------------------- docs (item 5)
def test_plot_explanations_after_evaluate_needs_no_arrays(shapes):
    from evalkit.evaluate import explain_methods

    data, model = shapes
    results = ek.evaluate({"PF": ek.metrics.PixelFlipping(features_in_step=256)},
                          {"Saliency": {}, "Random": {}}, model, data.x, data.y,
                          progress=False, chunk_size=4)
    fig = results.plot("explanations")
    assert len(fig.axes) == 4 * 3  # four samples: the input and two methods
    fig = results.plot("explanations", samples=[4, 5], methods=["Random"])
    assert len(fig.axes) == 2 * 2
    # the maps shown are those scored: same seeds as explain_methods / evaluate
    shown = results.source.explain("Random", np.array([4, 5]))[[4, 5]].numpy()
    np.testing.assert_array_equal(shown, explain_methods({"Random": {}}, model, data.x,
                                                         data.y)["Random"][[4, 5]])
    with pytest.raises(ValueError, match="needs the inputs `x`"):
        ek.Results.from_scores({"A": {"m": [1.0]}}).plot("explanations")
    import pickle

    copy = pickle.loads(pickle.dumps(results))  # the numbers, not the model and data
    assert copy.source is None and np.array_equal(copy.scores["Random", "PF"],
                                                  results.scores["Random", "PF"])


# ---------------------------------------------------------------------- cost and progress (item 2)
class _Stop(Exception):
    pass


class _StopsOnPerturbations:
    """A model that answers for the inputs themselves (2 rows) and stops at the first batch of
    perturbed copies: the test only needs what happens before the work."""

    def __init__(self):
        import torch

        self.module = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                          torch.nn.Linear(3, 4))

    def __call__(self, x):
        if x.shape[0] > 2:
            raise _Stop
        return self.module(x)


def _big_images():
    return np.random.default_rng(0).random((2, 3, 224, 224)).astype("float32"), np.array([0, 1])


def test_metric_estimates_its_forward_rows():
    est = ek.metrics.PixelFlipping().estimated_forward_rows((2, 3, 224, 224))
    assert est.per_sample == 224 * 224 + 1 and est.setting == "features_in_step"
    assert ek.metrics.PixelFlipping(features_in_step=224).estimated_forward_rows(
        (2, 3, 224, 224)).per_sample == 225
    assert ek.metrics.MaxSensitivity(nr_samples=10).estimated_forward_rows(
        (2, 3, 32, 32)).setting == "nr_samples"
    assert ek.metrics.Sparseness().estimated_forward_rows((2, 3, 32, 32)) is None  # no model


def test_a_costly_metric_call_warns_before_any_work_naming_the_setting():
    import warnings

    from evalkit._progress import CostWarning

    x, y = _big_images()
    model = _StopsOnPerturbations()
    with pytest.warns(CostWarning, match=r"PixelFlipping: about 50,177 forward rows per sample "
                      r"at features_in_step=1 .* 100,354 in all.*features_in_step`, e.g. 196"), \
            pytest.raises(_Stop):
        ek.metrics.PixelFlipping()(_Wrapped(model), x, y, np.ones((2, 1, 224, 224)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CostWarning)  # a cheap setting does not warn
        with pytest.raises(_Stop):
            ek.metrics.PixelFlipping(features_in_step=224)(_Wrapped(model), x, y,
                                                           np.ones((2, 1, 224, 224)))
        with pytest.raises(_Stop):  # nor does a metric with its warnings off
            ek.metrics.PixelFlipping(disable_warnings=True)(_Wrapped(model), x, y,
                                                            np.ones((2, 1, 224, 224)))


def _Wrapped(model):
    """``model`` as a torch module (evalkit runs torch models as given)."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model.module

        def forward(self, x):
            return model(x)

    return Wrapped().eval()


def test_evaluate_warns_once_per_costly_metric_before_the_run():
    import warnings

    from evalkit._progress import CostWarning

    x, y = _big_images()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = ek.evaluate({"PF": ek.metrics.PixelFlipping(),
                               "cheap": ek.metrics.PixelFlipping(features_in_step=224)},
                              {"A": np.ones((2, 1, 224, 224)), "B": np.ones((2, 1, 224, 224))},
                              _Wrapped(_StopsOnPerturbations()), x, y, progress=False)
    cost = [str(w.message) for w in caught if issubclass(w.category, CostWarning)]
    assert len(cost) == 1 and cost[0].startswith("PF (PixelFlipping): about 50,177")
    assert "200,708 in all for 2 methods" in cost[0]
    assert ("A", "PF") in results.errors  # stopped by the stand-in model


def test_progress_is_shown_where_the_run_is_interactive(monkeypatch, capsys, shapes):
    from evalkit import _progress

    data, model = shapes
    monkeypatch.setattr(_progress, "interactive", lambda: False)
    assert _progress.resolve(None) is False and _progress.resolve(True) is True
    ek.evaluate({"S": ek.metrics.Sparseness()}, {"Sobel": {}}, model, data.x, data.y)
    assert "unit" not in capsys.readouterr().err
    monkeypatch.setattr(_progress, "interactive", lambda: True)
    assert _progress.resolve(None) is True and _progress.resolve(False) is False
    ek.evaluate({"S": ek.metrics.Sparseness()}, {"Sobel": {}}, model, data.x, data.y)
    assert "unit" in capsys.readouterr().err
    run = me.MetaEvaluation(me.default_suite(), {"Sobel": {}}, iterations=1,
                            nr_perturbations=1, seed=0)
    assert run.progress
    run({"Sparseness": ek.metrics.Sparseness()}, model, data.x[:4], data.y[:4])
    err = capsys.readouterr().err
    assert "metaeval" in err and "[metaeval] unperturbed" in err


def test_metaevaluation_warns_once_before_any_work():
    import warnings

    from evalkit._progress import CostWarning

    x, y = _big_images()
    run = me.MetaEvaluation(me.default_suite(), {"Sobel": {}}, iterations=1,
                            nr_perturbations=1, seed=0, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(_Stop):
            run({"PF": ek.metrics.PixelFlipping()}, _Wrapped(_StopsOnPerturbations()), x, y)
    cost = [str(w.message) for w in caught if issubclass(w.category, CostWarning)]
    assert len(cost) == 1 and "over 5 units x 1 methods" in cost[0]
