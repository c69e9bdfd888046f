"""The validity report card (issue 22): the table of metric names that mean something else in
Quantus 0.6, the committed report-card data file, the catalogue column fed from it, and a smoke
run of the script that regenerates them (the full regeneration is too slow for a test).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import evalkit.metrics as metrics_module
from evalkit.metrics import get, list_metrics
from evalkit.metrics.similarity import ssim
from metaeval.validity.quantus_names import (
    ASPECTS,
    SAME_NAME_DIFFERENT_MEANING,
    QuantusNameDifference,
    same_name_markdown,
    same_name_rows,
)

ROOT = Path(__file__).resolve().parents[1]
MIGRATION_PAGE = ROOT / "docs" / "migrating-quantus.md"


# ============================================================================ same names
def test_same_name_entries_are_registered_metrics():
    registered = set(list_metrics()["name"])
    assert set(SAME_NAME_DIFFERENT_MEANING) <= registered
    for entries in SAME_NAME_DIFFERENT_MEANING.values():
        assert entries and all(isinstance(e, QuantusNameDifference) for e in entries)
        assert all(e.aspect in ASPECTS and e.quantus and e.evalkit for e in entries)


def test_unknown_aspect_is_refused():
    with pytest.raises(ValueError, match="aspect"):
        QuantusNameDifference("colour", "a", "b")


def test_reproducing_settings_construct():
    """Every "Quantus' meaning in evalkit" constructor in the table is a valid call."""
    namespace = {**vars(metrics_module), "ssim": ssim}
    for row in same_name_rows():
        code = row["reproduce"]
        if not code or code.startswith("metric."):
            continue
        metric = eval(code.split(";")[0], namespace)  # our own table of code snippets
        assert type(metric).__name__ == row["metric"]


def test_cited_deviations_have_rows():
    page = MIGRATION_PAGE.read_text(encoding="utf-8")
    for row in same_name_rows():
        for dev in filter(None, row["deviations"].split(", ")):
            assert f'<a id="{dev.lower()}"></a>{dev} |' in page, dev


def test_migration_page_shows_the_table():
    page = MIGRATION_PAGE.read_text(encoding="utf-8")
    match = re.search(r"<!-- same-name table: begin \(generated\) -->\n(.*?)"
                      r"<!-- same-name table: end -->", page, re.S)
    assert match, "the generated same-name table is missing from docs/migrating-quantus.md"
    assert match.group(1) == same_name_markdown(""), (
        "docs/migrating-quantus.md is stale: run python scripts/validity_report.py --write")


def test_same_names_against_quantus(quantus):
    """The oracle: every listed name is a Quantus 0.6 metric; a listed direction difference
    is one (Quantus' declared direction differs from ours at the defaults); the default
    differences that Quantus' signature shows are real."""
    import inspect

    for name, entries in SAME_NAME_DIFFERENT_MEANING.items():
        q = getattr(quantus, name)
        theirs = str(q.score_direction).rsplit(".", 1)[-1]
        ours = "HIGHER" if get(name).higher_is_better else "LOWER"
        assert (theirs != ours) == any(e.aspect == "direction" for e in entries), name
    defaults = {k: p.default for k, p in
                inspect.signature(quantus.AttributionLocalisation.__init__).parameters.items()}
    assert defaults["abs"] is True and defaults["positive_attributions"] is False
    al = get("AttributionLocalisation")()
    assert al.abs is False and al.positive_attributions is True
    assert get("Infidelity")().perturb_func == "gaussian"


# ============================================================================ the data file
DATA_FILE = ROOT / "docs" / "_data" / "validity.json"
VERDICTS = ("correct", "wrong", "undecided", "not applicable", "error")


def _catalogue():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_catalogue_under_test",
                                                  ROOT / "docs" / "_hooks" / "catalogue.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_validity_report_under_test",
                                                  ROOT / "scripts" / "validity_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _evalkit_names() -> set[str]:
    frame = list_metrics()
    return {n for n in frame["name"] if get(n).__module__.startswith("evalkit.")}


def test_data_file_matches_the_registry():
    """Every registered metric has its report card, with valid verdicts on known testbeds;
    regenerate with ``python scripts/validity_report.py --write``."""
    import json

    data = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    assert set(data["metrics"]) == _evalkit_names(), (
        "docs/_data/validity.json is stale: run python scripts/validity_report.py --write")
    beds = set(data["testbeds"])
    mechanisms = {b["mechanism"] for b in data["testbeds"].values()}
    for name, m in data["metrics"].items():
        assert m["family"] == get(name).family, name
        assert set(m["cells"]) == beds, name
        for cell in m["cells"].values():
            assert cell["verdict"] in VERDICTS, (name, cell)
        for key in ("recovers", "fails"):
            assert set(m[key]) <= mechanisms, (name, key)
        for key, verdict in (("wrong_on", "wrong"), ("undecided_on", "undecided"),
                             ("error_on", "error")):
            assert m[key] == [b for b, c in m["cells"].items() if c["verdict"] == verdict]
        if m["quantus"] is not None:
            assert all(c["verdict"] in VERDICTS for c in m["quantus"].values()), name
        for alt in m["alternatives"]:
            assert alt["verdict"] in VERDICTS and alt["testbed"] in beds, (name, alt)
    for family, counts in data["counts"]["evalkit"].items():
        assert sum(counts[v] for v in VERDICTS) == counts["total"], family
    assert data["same_name_different_meaning"] == same_name_rows()


def test_catalogue_shows_the_report_card_column():
    catalogue = _catalogue()
    data = catalogue.validity_data()
    text = catalogue.metric_catalogue()
    header = next(line for line in text.splitlines() if line.startswith("| metric |"))
    assert header.rstrip(" |").endswith("report card")
    rows = {line.split("](")[0].lstrip("| ["): line for line in text.splitlines()
            if line.startswith("| [")}
    for name, m in data["metrics"].items():
        cell = rows[name].rstrip(" |").rsplit("|", 1)[-1].strip()
        assert cell == catalogue.report_card_cell(data, name)
        for mechanism in m["recovers"]:
            assert mechanism in cell
    assert text.count("**Report card**") == len(data["metrics"])


def test_catalogue_without_data_has_an_empty_column(tmp_path):
    catalogue = _catalogue()
    assert catalogue.validity_data(tmp_path / "absent.json") == {}
    assert catalogue.report_card_cell({}, "Sparseness") == ""
    assert catalogue.report_card_lines({}, "Sparseness") == []


# ============================================================================ the script
def test_script_smoke(tmp_path, monkeypatch):
    """The regeneration on 2 metrics x 2 testbeds, with the Quantus column where the oracle is
    installed, written to copies of the docs pages."""
    import importlib.util

    from metaeval.validity.testbeds import list_testbeds

    script = _script()
    beds = list(list_testbeds())[:2]
    page, migration = tmp_path / "validity.md", tmp_path / "migrating-quantus.md"
    page.write_text("# Validity\n\n## Testbeds\n\nText of the others.\n", encoding="utf-8")
    migration.write_text(MIGRATION_PAGE.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(script, "DATA_FILE", tmp_path / "_data" / "validity.json")
    monkeypatch.setattr(script, "VALIDITY_PAGE", page)
    monkeypatch.setattr(script, "MIGRATION_PAGE", migration)
    data = script.run(["Sparseness", "PixelFlipping"], beds, n=8, seeds=(0,))
    assert set(data["metrics"]) == {"Sparseness", "PixelFlipping"}
    assert set(data["testbeds"]) == set(beds)
    has_quantus = importlib.util.find_spec("quantus") is not None
    for m in data["metrics"].values():
        assert set(m["cells"]) == set(beds)
        assert (m["quantus"] is not None and set(m["quantus"]) == set(beds)) == has_quantus
    assert data["config"]["torch_threads"] == 1
    script.write(data)
    script.write(data)  # idempotent: the generated blocks are replaced, not appended again
    text = page.read_text(encoding="utf-8")
    assert text.startswith("# Validity\n\n## Testbeds\n\nText of the others.")
    assert text.count("## Report card") == 1 and text.count("## Differences from Quantus") == 1
    assert "| Sparseness |" in text
    assert migration.read_text(encoding="utf-8") == MIGRATION_PAGE.read_text(encoding="utf-8")
    assert (tmp_path / "_data" / "validity.json").exists()


def test_quantus_column_counts_crashes_as_errors(quantus):
    """A Quantus metric that raises, or returns no per-sample scores, is an "error" cell with
    the exception type."""
    from metaeval.validity.report import validity_report
    from metaeval.validity.testbeds import build_testbed

    script = _script()
    bed = build_testbed("image-linear", n=8)
    metric = script.QuantusMetric("SensitivityN", quantus)  # set-level: one value per batch
    report = validity_report({"SensitivityN": metric}, [bed], seeds=(0,), progress=False)
    cell = report.verdicts.iloc[0]
    assert cell["verdict"] == "error" and cell["reason"].startswith("QuantusOutputError")

    class Crashing(script.QuantusMetric):
        def _run(self, *args, **kwargs):
            raise IndexError("a crash inside quantus")

    report = validity_report({"PixelFlipping": Crashing("PixelFlipping", quantus)}, [bed],
                             seeds=(0,), progress=False)
    assert report.verdicts.iloc[0]["verdict"] == "error"
    assert report.verdicts.iloc[0]["reason"].startswith("IndexError")


def test_quantus_metric_restores_the_global_rngs(quantus):
    import numpy as np
    import torch

    from metaeval.validity.testbeds import build_testbed

    bed = build_testbed("image-linear", n=4)
    metric = _script().QuantusMetric("FaithfulnessCorrelation", quantus)
    # the legacy global state is what Quantus draws from and must get back
    np_state = np.random.get_state()[1].copy()  # noqa: NPY002
    torch_state = torch.get_rng_state().clone()
    a = bed.explanation(next(iter(bed.candidates)))
    first = metric(bed.model, bed.x, bed.y, a, explain_fn=next(iter(bed.candidates.values())))
    again = metric(bed.model, bed.x, bed.y, a, explain_fn=next(iter(bed.candidates.values())))
    np.testing.assert_array_equal(first, again)  # seeded from metric.seed
    assert (np.random.get_state()[1] == np_state).all()  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_quantus_focus_is_judged_on_the_mosaic_layout_only(quantus):
    """The Quantus oracle's Focus takes the grid testbed's target quadrants as its
    `custom_batch`; on testbeds without a mosaic it is not applicable, as evalkit's Focus."""
    from metaeval.validity.report import validity_report
    from metaeval.validity.testbeds import build_testbed

    metric = _script().QuantusMetric("Focus", quantus)
    assert metric.call_options == ("quadrants",)
    beds = [build_testbed("image-region", n=8), build_testbed("image-grid", n=8)]
    v = validity_report({"Focus": metric}, beds, seeds=(0,), progress=False).verdicts
    v = v.set_index("testbed")
    assert v.loc["image-region", "verdict"] == "not applicable"
    assert v.loc["image-grid", "verdict"] == "correct", v.loc["image-grid", "reason"]
