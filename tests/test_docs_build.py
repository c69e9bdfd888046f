"""The documentation site builds with warnings as errors, and what it promises holds.

* ``mkdocs build --strict`` succeeds (in a subprocess, into a temporary folder), and the metric
  and explanation-method catalogues that ``docs/_hooks/catalogue.py`` generates from the
  registries list every registered metric and method;
* the getting-started example of ``docs/index.md`` runs and prints what the page says it prints.

CI runs only pytest, so this is where the docs are built in CI. Skipped (with the reason) when
the ``docs`` extra (mkdocs, mkdocs-material, mkdocstrings[python]) is not installed, except
under ``.ci/run`` (``EVALKIT_REQUIRE_EXTRAS=1``, see ``tests/conftest.py``), where that fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_DOC_TOOLS = {
    "mkdocs": "mkdocs",
    "material": "mkdocs-material",
    "mkdocstrings": "mkdocstrings",
    "mkdocstrings_handlers.python": "mkdocstrings-python",
}


def _missing_doc_tools() -> list[str]:
    missing = []
    for module, package in _DOC_TOOLS.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # the parent package of a dotted name is missing
            found = False
        if not found:
            missing.append(package)
    return missing


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    missing = _missing_doc_tools()
    if missing:
        pytest.skip(f"documentation tools not installed ({', '.join(missing)}); "
                    'install them with pip install -e ".[docs]"')
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, (
        f"mkdocs build --strict failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    )
    return out


def _text(html: str) -> str:
    return re.sub(r"<[^>]+>", " ", html)


def test_strict_build_and_every_page_rendered(site):
    for page in ("index.html", "concepts/index.html", "metrics/index.html",
                 "explainers/index.html", "evaluate/index.html", "metaeval/index.html",
                 "benchmarks/index.html", "migrating-quantus/index.html",
                 "migrating-gradcam/index.html", "architecture/index.html",
                 "contributing/index.html", "api/metrics/index.html",
                 "api/explain/index.html"):
        assert (site / page).is_file(), page
    # the hook's helper files are not published as pages or assets
    assert not (site / "_hooks").exists()


def test_metric_catalogue_lists_the_registry(site):
    import evalkit as ek

    html = (site / "metrics" / "index.html").read_text(encoding="utf-8")
    assert "evalkit:metric-catalogue" not in html
    frame = ek.metrics.list_metrics()
    # only evalkit's own metrics: test modules register test-only metrics in this process
    names = [n for n in frame["name"] if ek.metrics.get(n).__module__.startswith("evalkit.")]
    assert len(names) >= 40
    for name in names:
        assert f'id="{name.lower()}"' in html, f"{name} has no catalogue entry"
        cls = ek.metrics.get(name)
        assert f'href="../api/metrics/#{cls.__module__}.{cls.__qualname__}"' in html, name
    text = _text(html)
    assert "Deviations from Quantus" in text and "lower is better" in text
    # e.g. PixelFlipping's entry: direction, paper and its deviations quoted from the docstring
    entry = text.split("PixelFlipping(features_in_step", 1)[1][:3000]
    assert "Bach et al." in entry and "unit spacing" in entry


def test_explainer_catalogue_lists_the_registry(site):
    from evalkit.explain import available_methods

    html = (site / "explainers" / "index.html").read_text(encoding="utf-8")
    assert "evalkit:explainer-catalogue" not in html
    for name in available_methods():
        assert f"<code>{name}</code>" in html, f"{name} is missing from the catalogue"
    # Quantus' spelling of its GradCAM is listed as an alias
    assert "<code>GradCam</code>" in html


def _block(markdown: str, heading: str, lang: str) -> str:
    section = markdown.split(heading, 1)[1]
    return section.split(f"```{lang}\n", 1)[1].split("```", 1)[0]


def test_getting_started_example_runs_as_printed():
    page = (DOCS / "index.md").read_text(encoding="utf-8")
    code = _block(page, "## A first evaluation", "python")
    expected = _block(page, "## A first evaluation", "text").strip().splitlines()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/index.md", "exec"), {"__name__": "__docs__"})
    got = out.getvalue().strip().splitlines()
    assert len(got) == len(expected), (got, expected)
    number = re.compile(r"-?\d+\.\d+")
    for g, e in zip(got, expected, strict=True):
        assert number.sub("#", g) == number.sub("#", e), (g, e)
        # printed with 3 decimals: allow a last-digit difference between machines
        for gv, ev in zip(number.findall(g), number.findall(e), strict=True):
            assert abs(float(gv) - float(ev)) <= 1.5e-3, (g, e)
