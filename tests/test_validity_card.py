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
