"""The command-line interface end to end: `evalkit run CONFIG.toml`, `evalkit demo`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from _evaluate_helpers import TESTS_DIR

import evalkit as ek
from evalkit.cli import _build_methods, _build_metrics, load_config, main, run_config
from evalkit.datasets import make_shapes
from evalkit.explain import available_methods
from evalkit.zoo import load_shapes_cnn

pytestmark = pytest.mark.filterwarnings("ignore::evalkit.EvalkitWarning")

TINY = """
[run]
name = "tiny benchmark"
seed = 1
chunk_size = 4

[data]
source = "shapes"
n = 6
seed = 5

[model]
source = "shapes_cnn"

[methods.Saliency]
reduce_channels = "abs_sum"

[methods."Grad CAM"]
method = "GradCAM"
layer = "features.conv3"

[methods.Random]

[metrics.PixelFlipping]
features_in_step = 256

[metrics.RelevanceRank]
metric = "RelevanceRankAccuracy"

[leaderboard]
mode = "aggregate_then_rank"
n_boot = 50
rescale = "Random"

[report]
plots = ["radar", "bars", "distributions", "curves", "explanations"]
explanation_samples = 2
explanation_metric = "RelevanceRank"
"""


@pytest.fixture()
def tiny(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY, encoding="utf-8")
    return path


def test_run_end_to_end(tiny, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["run", str(tiny), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "tiny benchmark: 3 methods x 2 metrics x 6 samples" in printed
    assert "| method | PixelFlipping ↓ | RelevanceRank ↑ |" in printed
    for name in ("leaderboard.md", "leaderboard.html", "leaderboard.tex", "leaderboard.csv",
                 "summary.csv", "scores.csv", "config.json", "results.sqlite"):
        assert (out / name).stat().st_size > 0, name
    for kind in ("radar", "bars", "distributions", "curves", "explanations"):
        assert (out / "plots" / f"{kind}.png").stat().st_size > 10_000, kind
    html = (out / "leaderboard.html").read_text()
    assert html.count("data:image/png;base64,") == 5
    assert "evalkit-leaderboard" in html and "Grad CAM" in html
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 3 * 2 * 6
    config = json.loads((out / "config.json").read_text())
    assert config["metrics"]["PixelFlipping"]["params"]["features_in_step"] == 256
    assert config["methods"]["Grad CAM"]["method"] == "GradCAM"
    assert config["seed"] == 1 and config["chunk_size"] == 4
    md = (out / "leaderboard.md").read_text()
    assert md.startswith("# tiny benchmark") and "rescaled per metric so that Random = 0" in md

    # the same command again reads every unit back from the store
    assert main(["run", str(tiny), "--out", str(out), "--no-progress", "--no-report"]) == 0
    assert "12 units read back from the store" in capsys.readouterr().out
    assert main(["run", str(tiny), "--out", str(out), "--no-progress", "--no-report",
                 "--fresh"]) == 0
    assert "read back" not in capsys.readouterr().out


def test_run_config_matches_evaluate(tiny):
    outcome = run_config(load_config(tiny), store=False, report=False, progress=False,
                         echo=lambda *a: None)
    r = outcome["results"]
    data = make_shapes(6, seed=5)
    direct = ek.evaluate({"PixelFlipping": ek.metrics.PixelFlipping(features_in_step=256),
                          "RelevanceRank": ek.metrics.RelevanceRankAccuracy()},
                         {"Saliency": {"reduce_channels": "abs_sum"},
                          "Grad CAM": {"method": "GradCAM", "layer": "features.conv3"},
                          "Random": {}},
                         load_shapes_cnn(), data.x, data.y, data.masks, seed=1,
                         chunk_size=4, progress=False)
    for cell in direct.scores:
        np.testing.assert_array_equal(r.scores[cell], direct.scores[cell])
    assert outcome["accuracy"] == 1.0
    assert outcome["leaderboard"].rescale == "Random"


def test_npz_data_and_python_model(tmp_path):
    data = make_shapes(5, seed=9)
    np.savez(tmp_path / "d.npz", x=data.x, y=data.y, masks=data.masks)
    model = load_shapes_cnn()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    (tmp_path / "c.toml").write_text(textwrap.dedent("""
        [data]
        source = "npz"
        path = "d.npz"
        [model]
        source = "python"
        factory = "evalkit.zoo:ShapesCNN"
        weights = "w.pt"
        [methods.Sobel]
        [metrics.RelevanceRank]
        metric = "RelevanceRankAccuracy"
        [report]
        plots = []
    """), encoding="utf-8")
    outcome = run_config(load_config(tmp_path / "c.toml"), out=tmp_path / "o", progress=False,
                         echo=lambda *a: None)
    expected = ek.metrics.RelevanceRankAccuracy()(model, data.x, data.y,
                                                  ek.explain(model, data.x, data.y, "Sobel"),
                                                  s=data.masks)
    np.testing.assert_allclose(outcome["results"]["Sobel", "RelevanceRank"], expected)
    assert not (tmp_path / "o" / "plots").exists()


def test_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\nsource = "csv"\n[methods.Saliency]\n[metrics.Sparseness]\n')
    with pytest.raises(ValueError, match="source"):
        run_config(load_config(bad), store=False, echo=lambda *a: None)
    no_metrics = tmp_path / "none.toml"
    no_metrics.write_text('[data]\nn = 2\n[methods.Saliency]\n')
    with pytest.raises(ValueError, match=r"\[metrics\]"):
        run_config(load_config(no_metrics), store=False, echo=lambda *a: None)


def test_demo_configuration_is_valid():
    config = load_config(None)
    metrics = _build_metrics(config["metrics"])
    methods = _build_methods(config["methods"])
    assert len(methods) == 8 and {"Random", "Sobel", "GroundTruth"} <= set(methods)
    for spec in methods.values():
        assert spec.get("method", None) is None or spec["method"] in available_methods()
    families = {type(m).family for m in metrics.values()}
    assert families == {"faithfulness", "localisation", "complexity", "robustness",
                        "randomisation"}


def test_demo_runs(tmp_path, capsys):
    assert main(["demo", "--n", "4", "--no-report", "--no-progress", "--out",
                 str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "evalkit demo: 8 methods x 9 metrics x 4 samples, model accuracy" in out
    for name in ("GradCAM++", "IntegratedGradients", "GroundTruth", "Sobel", "Random"):
        assert f"| {name} |" in out
    # the one pairing that does not apply (the mask of a perturbed input is unknown): n/a,
    # not a failed cell
    row = next(line for line in out.splitlines() if line.startswith("| GroundTruth |"))
    assert row.split("|")[9].strip() == "n/a"  # the MaxSensitivity column
    assert "could not be computed" not in out


def _leaderboard_rows(markdown: str) -> dict[str, list[str]]:
    """method -> its cells, from the first leaderboard table in ``markdown``."""
    lines = [ln for ln in markdown.splitlines() if ln.startswith("| ")]
    header = lines[0]
    assert header.startswith("| method | PixelFlipping")
    return {cells[0]: cells[1:] for ln in lines[1:]
            if (cells := [c.strip().strip("*") for c in ln.strip("|").split("|")])}


def _score_and_rank(cell: str) -> tuple[float, float]:
    score, rank = cell.replace("*", "").split(" (")
    return float(score), float(rank.rstrip(")").split(",")[0])  # "0.252 (4.5, 64/64)"


@pytest.mark.slow
def test_full_demo_matches_the_readme_and_ranks_the_controls(tmp_path, capsys):
    """The whole demo (64 samples, 8 methods, 9 metrics): the README shows its leaderboard, the
    ground-truth mask ranks first on localisation and the random map last on most metrics."""
    assert main(["demo", "--no-report", "--no-progress", "--out", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    ours = _leaderboard_rows(out)
    readme = _leaderboard_rows((TESTS_DIR.parent / "README.md").read_text(encoding="utf-8"))
    assert list(ours) == list(readme)  # the same order of methods
    n_metrics = 9
    for method, cells in ours.items():
        for got, shown in zip(cells[:n_metrics], readme[method][:n_metrics], strict=True):
            if got in ("error", "n/a") or shown in ("error", "n/a"):
                assert got == shown, method
                continue
            (gs, gr), (ss, sr) = _score_and_rank(got), _score_and_rank(shown)
            assert gs == pytest.approx(ss, abs=2e-3) and gr == pytest.approx(sr, abs=0.15), (
                method, got, shown)
    family = {name: float(cells[n_metrics + 1]) for name, cells in ours.items()}  # localisation
    assert min(family, key=family.get) == "GroundTruth"
    ranks = {name: [_score_and_rank(c)[1] if c not in ("error", "n/a") else np.nan
                    for c in cells[:n_metrics]] for name, cells in ours.items()}
    table = pd.DataFrame(ranks).T
    last = [k for k in table.columns if table.loc["Random", k] >= table[k].max() - 0.5]
    assert len(last) >= 5, last  # last or within half a rank of the last place


def test_listing_commands(capsys):
    assert main(["metrics", "--family", "localisation"]) == 0
    assert "PointingGame" in capsys.readouterr().out
    assert main(["methods"]) == 0
    assert "GradCAMPlusPlus" in capsys.readouterr().out


def test_console_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "evalkit.cli", "metrics"], capture_output=True,
                          text=True, timeout=300, cwd=str(TESTS_DIR.parent))
    assert proc.returncode == 0 and "RelevanceRankAccuracy" in proc.stdout


# --- evalkit demo --data tabular|series|text ---------------------------------------------------

from evalkit.cli import DEMO_DATA, _demo_config  # noqa: E402

OTHER_DEMOS = [d for d in DEMO_DATA if d != "images"]


@pytest.mark.parametrize("data", OTHER_DEMOS)
def test_other_demo_configurations_are_valid(data):
    config = _demo_config(data)
    metrics = _build_metrics(config["metrics"])
    methods = _build_methods(config["methods"])
    assert {"Random", "GroundTruth"} <= set(methods)
    for name, spec in methods.items():
        assert spec.get("method", name) in available_methods(), name
    families = {type(m).family for m in metrics.values()}
    modality = {"tabular": "tabular", "series": "series", "text": "tokens"}[data]
    for metric in metrics.values():
        assert modality in type(metric).modalities, type(metric).__name__
    if data == "text":  # what main has for token ids today: model-free families
        assert families >= {"localisation", "complexity"}
    else:
        assert families == {"faithfulness", "localisation", "complexity", "robustness",
                            "randomisation"}


@pytest.mark.parametrize("data", OTHER_DEMOS)
def test_other_demos_run_and_write_the_report(data, tmp_path, capsys):
    out = tmp_path / data
    assert main(["demo", "--data", data, "--n", "6", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"evalkit demo ({data}): " in printed and "x 6 samples, model accuracy" in printed
    assert "| GroundTruth |" in printed and "| Random |" in printed
    for name in ("leaderboard.md", "leaderboard.html", "leaderboard.tex", "leaderboard.csv",
                 "summary.csv", "scores.csv", "config.json", "results.sqlite"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "plots" / "radar.png").stat().st_size > 10_000
    scores = pd.read_csv(out / "scores.csv")
    config = _demo_config(data)
    assert len(scores) == len(config["methods"]) * len(config["metrics"]) * 6


@pytest.mark.parametrize("data", OTHER_DEMOS)
def test_other_demos_rank_the_ground_truth_first_on_localisation(data, tmp_path):
    config = _demo_config(data)
    config["data"]["args"]["n"] = 8
    config["leaderboard"]["n_boot"] = 50
    config["methods"] = {k: v for k, v in config["methods"].items()
                         if k in ("Random", "GroundTruth")}
    outcome = run_config(config, out=tmp_path, store=False, report=False, progress=False,
                         echo=lambda *a: None)
    assert outcome["accuracy"] >= 0.85
    results = outcome["results"]
    np.testing.assert_array_equal(results["GroundTruth", "RelevanceRank"], 1.0)
    assert np.nanmean(results["Random", "RelevanceRank"]) < 0.9


def test_demo_data_choice_and_default_folder(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--data", "audio"])
    assert "invalid choice" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--data", "series", "--n", "3", "--no-progress", "--no-report"]) == 0
    assert (tmp_path / "evalkit-demo-series" / "results.sqlite").is_file()
