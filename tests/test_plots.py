"""Plots render to files (Agg), with the content they promise."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from _evaluate_helpers import problem

import evalkit as ek
from evalkit import plotting
from evalkit.evaluate import explain_methods
from evalkit.leaderboard import Leaderboard

matplotlib.use("Agg")
pytestmark = pytest.mark.filterwarnings("ignore::evalkit.EvalkitWarning")


@pytest.fixture(scope="module")
def setup():
    model, x, y, s = problem(6, seed=8)
    methods = {"Saliency": {"reduce_channels": "abs_sum"}, "GradCAM": {}, "Random": {}}
    metrics = {"PF": ek.metrics.PixelFlipping(features_in_step=128),
               "Insertion": ek.metrics.Insertion(n_steps=8),
               "RRA": ek.metrics.RelevanceRankAccuracy(),
               "Sparseness": ek.metrics.Sparseness()}
    r = ek.evaluate(metrics, methods, model, x, y, s, progress=False)
    return r, model, x, y, s, methods


def _saved(fig, path):
    fig.savefig(path, dpi=80)
    # an empty figure of the same size is ~2 KB; drawn axes, bars and text make it larger
    blank = type(fig)(figsize=fig.get_size_inches())
    blank.savefig(path.with_suffix(".blank.png"), dpi=80)
    assert path.exists()
    assert path.stat().st_size > 2 * path.with_suffix(".blank.png").stat().st_size
    return path


@pytest.mark.parametrize("kind", ["radar", "bars", "distributions", "violin", "box", "curves"])
def test_plots_render(setup, tmp_path, kind):
    r = setup[0]
    fig = r.plot(kind)
    assert isinstance(fig, matplotlib.figure.Figure)
    _saved(fig, tmp_path / f"{kind}.png")


def test_radar_geometry(setup):
    r = setup[0]
    board = Leaderboard(r, n_boot=0)
    fig = plotting.plot_radar(r, leaderboard=board)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == board.families_order
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == set(r.methods)
    # radius = n_methods + 1 - rank, closed polygon (first point repeated)
    radius = lines["Random"].get_ydata()
    expected = 3 + 1 - board.table.loc["Random", [f"{f} rank" for f in board.families_order]]
    np.testing.assert_allclose(radius[:-1], expected.to_numpy())
    assert radius[0] == radius[-1]
    by_metric = plotting.plot_radar(r, by="metric", leaderboard=board)
    assert [t.get_text() for t in by_metric.axes[0].get_xticklabels()] == r.metrics


def test_bars_show_the_intervals(setup):
    r = setup[0]
    board = Leaderboard(r, n_boot=200, seed=0)
    fig = plotting.plot_bars(r, leaderboard=board, metrics=["RRA"])
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, board.scores["RRA"].to_numpy())
    assert ax.get_title() == "RRA ↑"


def test_curves_mean_and_errors(setup):
    r = setup[0]
    fig = plotting.plot_curves(r, metrics=["PF"], methods=["Saliency"], spread="std")
    line = fig.axes[0].get_lines()[0]
    np.testing.assert_allclose(line.get_ydata(), np.nanmean(r.curves["Saliency", "PF"], 0))
    with pytest.raises(ValueError, match="Unknown metric with curves"):
        plotting.plot_curves(r, metrics=["RRA"])
    with pytest.raises(ValueError, match="spread"):
        plotting.plot_curves(r, spread="range")


def test_explanation_grid_prints_the_scores(setup, tmp_path):
    r, model, x, y, s, methods = setup
    maps = explain_methods(methods, model, x[:3], y[:3], s[:3])
    fig = r.plot("explanations", x=x[:3], attributions=maps, metric="RRA", y=y[:3],
                 class_names=["circle", "square", "triangle", "cross"])
    axes = np.array(fig.axes).reshape(3, 4)
    texts = [t.get_text() for t in axes[1, 2].texts]
    assert texts == [f"{r['GradCAM', 'RRA'][1]:.3f}"]
    assert axes[0, 1].get_title() == "Saliency"
    assert axes[2, 0].get_title().startswith("sample 2: ")
    _saved(fig, tmp_path / "grid.png")
    # the shown images can be any samples of the results
    fig = plotting.plot_explanations(r, x[[4]], {m: maps[m][:1] for m in maps}, metric="PF",
                                     sample_indices=[4])
    assert fig.axes[1].texts[0].get_text() == f"{r['Saliency', 'PF'][4]:.3f}"
    with pytest.raises(ValueError, match="attributions"):
        plotting.plot_explanations(r, x[:3])
    with pytest.raises(ValueError, match="images"):
        plotting.plot_explanations(r, x[:3, 0], maps)


def test_unknown_kind(setup):
    with pytest.raises(ValueError, match="kind"):
        setup[0].plot("pie")


def test_nan_cells_do_not_break_plots(tmp_path):
    r = ek.Results.from_scores({"A": {"m": [1.0, np.nan, 2.0], "k": [np.nan] * 3},
                                "B": {"m": [0.5, 0.4, 0.3], "k": [1.0, 2.0, 3.0]}})
    for kind in ("radar", "bars", "distributions", "box"):
        _saved(r.plot(kind), tmp_path / f"{kind}.png")


# ---------------------------------------------------------------------- explanations off images
def _modality_results(n, methods=("A", "B")):
    return ek.Results.from_scores({m: {"score": np.arange(n, dtype=float) + k}
                                   for k, m in enumerate(methods)})


def test_series_explanations_shade_each_channel(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 30))
    maps = {"A": rng.normal(size=(3, 2, 30)), "B": np.abs(rng.normal(size=(3, 1, 30)))}
    r = _modality_results(3)
    fig = r.plot("explanations", x=x, attributions=maps, metric="score", samples=2)
    axes = np.array(fig.axes).reshape(2, 2)
    for ax in axes.ravel():
        assert len(ax.get_lines()) == 2  # one line per channel
        assert len(ax.collections) == 2  # one shaded band per channel
    # the lines are the series, the band spans the line and the line plus the scaled map
    np.testing.assert_allclose(axes[1, 0].get_lines()[1].get_ydata(), x[1, 1])
    band = axes[0, 0].collections[0].get_paths()[0].vertices
    assert band[:, 1].min() < x[0, 0].min() + 1e-9 or band[:, 1].max() > x[0, 0].max() - 1e-9
    assert axes[0, 1].get_title() == "B"
    assert [t.get_text() for t in axes[1, 1].texts] == [f"{r['B', 'score'][1]:.3f}"]
    _saved(fig, tmp_path / "series.png")
    with pytest.raises(ValueError, match="images"):  # image maps on series inputs
        plotting.plot_explanations(None, x, {"A": rng.normal(size=(3, 1, 30, 30))})


def test_tabular_explanations_are_bars_per_feature(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5))
    a = np.array([[1.0, -2.0, 0.5, 0.0, 3.0], [0.1, 0.2, -0.3, 0.4, -0.5]])
    names = ["age", "income", "height", "weight", "score"]
    fig = plotting.plot_explanations(_modality_results(2), x, {"A": a, "B": -a},
                                     feature_names=names)
    axes = np.array(fig.axes).reshape(2, 2)
    bars = axes[0, 0].patches
    assert len(bars) == 5
    np.testing.assert_allclose([b.get_height() for b in bars], a[0])
    # positive red, negative blue
    from matplotlib.colors import to_rgba
    assert bars[0].get_facecolor() == to_rgba("tab:red")
    assert bars[1].get_facecolor() == to_rgba("tab:blue")
    assert [t.get_text() for t in axes[1, 1].get_xticklabels()] == names
    _saved(fig, tmp_path / "tabular.png")
    with pytest.raises(ValueError, match="feature_names"):
        plotting.plot_explanations(None, x, {"A": a}, feature_names=names[:2])


def test_token_explanations_colour_each_token(tmp_path):
    ids = np.array([[3, 1, 4, 0, 0], [2, 2, 1, 3, 0]])
    a = np.array([[1.0, -1.0, 0.0, 0.5, 0.0], [0.2, 0.1, -0.4, 0.0, 0.0]])
    vocab = ["<pad>", "bad", "good", "movie", "plot"]
    fig = plotting.plot_explanations(_modality_results(2, ("A",)), ids, {"A": a}, vocab=vocab,
                                     pad_id=0)
    axes = fig.axes
    tokens = [t for t in axes[0].texts if t.get_bbox_patch() is not None
              and t.get_text() in vocab]
    assert [t.get_text() for t in tokens] == ["movie", "bad", "plot"]  # pads left out
    red, blue = (tokens[0].get_bbox_patch().get_facecolor(),
                 tokens[1].get_bbox_patch().get_facecolor())
    assert red[0] > red[2] and blue[2] > blue[0]  # positive red, negative blue
    assert tokens[2].get_bbox_patch().get_facecolor()[:3] == pytest.approx((1, 1, 1), abs=0.01)
    _saved(fig, tmp_path / "tokens.png")


def test_tokens_html_escapes_and_colours():
    out = plotting.tokens_html([5, 6, 0], [1.0, -0.5, 0.0],
                               vocab={5: "<b>", 6: "a&b", 0: "[PAD]"}, pad_id=0)
    assert isinstance(out, str) and out._repr_html_() == str(out)
    assert "&lt;b&gt;" in out and "a&amp;b" in out
    assert "<b>" not in out and "[PAD]" not in out
    assert out.count("<span") == 2
    assert "rgb(255, 0, 0)" in out  # the largest positive value: full red
    two = plotting.tokens_html(np.array([[1, 2], [3, 4]]), np.ones((2, 2)))
    assert two.count("<div") == 2 and ">3<" in two
    with pytest.raises(ValueError, match="one value per token"):
        plotting.tokens_html([1, 2], [1.0])
