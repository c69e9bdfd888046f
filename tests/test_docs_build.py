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
import json
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


# ---------------------------------------------------------------------- every code block runs
# Every fenced ``python`` block of README.md and docs/**/*.md runs (tests/_docs_runner.py: one
# subprocess per page, the page's blocks in order in one namespace, from a temporary folder),
# or is marked ``<!-- docs-test: skip: <reason> -->`` on the line before its fence; the marked
# blocks are counted here per page, so a new one changes this test. Before issue 21 only the
# first block of docs/index.md ran: README.md and the other pages were not collected, blocks
# in tabs (indented) were not found, and there was no way to mark a block that cannot run.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs_runner import PYTHON, code_blocks  # noqa: E402

_SKIP_MARKER = re.compile(r"<!--\s*docs-test:\s*skip")
#: a page whose examples need an optional extra says so once, anywhere in its text:
#: ``<!-- docs-test: needs: torchvision -->``; the page's test skips where the module is absent
_NEEDS_MARKER = re.compile(r"<!--\s*docs-test:\s*needs:\s*(?P<module>[\w.]+)\s*-->")
#: pages whose blocks take more than ~15 s of CPU (whole evaluations, meta-evaluations: up to
#: minutes); CI runs them, as it runs every slow test
_SLOW_PAGES = {"README.md", "docs/evaluate.md", "docs/contributing.md",
               "docs/migrating-gradcam.md", "docs/metaeval.md", "docs/migrating-quantus.md"}
#: blocks marked as not runnable offline, per page
_SKIPPED = {"README.md": 1, "docs/concepts.md": 1, "docs/migrating-gradcam.md": 4,
            "docs/migrating-quantus.md": 4}


def _pages() -> list[str]:
    docs = sorted(str(p.relative_to(ROOT)) for p in DOCS.rglob("*.md") if "_hooks" not in p.parts)
    return ["README.md", *docs]


def _markers_outside_code(text: str) -> int:
    """Skip markers in the page's text (not those shown inside code blocks)."""
    count, fence = 0, None
    for line in text.splitlines():
        stripped = line.strip()
        if fence is None and stripped.startswith("```"):
            fence = line[: len(line) - len(line.lstrip())]
        elif fence is not None and stripped == "```":
            fence = None
        elif fence is None and _SKIP_MARKER.search(line):
            count += 1
    return count


def _python_blocks(page: str):
    return [b for b in code_blocks((ROOT / page).read_text(encoding="utf-8"))
            if b.lang in PYTHON]


def test_skipped_blocks_are_marked_counted_and_explained():
    skipped = {}
    for page in _pages():
        text = (ROOT / page).read_text(encoding="utf-8")
        blocks = _python_blocks(page)
        marked = [b for b in blocks if b.skip is not None]
        # a marker that does not sit right before a python block would skip nothing
        assert _markers_outside_code(text) == len(marked), page
        for b in marked:
            assert len(b.skip) > 10, (page, b.line, b.skip)  # a reason, not a bare "skip"
        if marked:
            skipped[page] = len(marked)
    assert skipped == _SKIPPED
    runnable = sum(len([b for b in _python_blocks(p) if b.skip is None]) for p in _pages())
    assert runnable >= 25  # README, concepts, contributing, evaluate, explainers, ... pages


def test_code_block_parser_finds_blocks_in_tabs():
    text = ('=== "evalkit"\n\n    <!-- docs-test: skip: the other side -->\n    ```python\n'
            '    import quantus\n    ```\n\n```python\nx = 1\n```\n\n```\noutput\n```\n')
    blocks = code_blocks(text)
    assert [(b.lang, b.code, b.skip) for b in blocks] == [
        ("python", "import quantus\n", "the other side"), ("python", "x = 1\n", None),
        ("", "output\n", None)]


@pytest.mark.parametrize("page", [
    pytest.param(p, marks=pytest.mark.slow) if p in _SLOW_PAGES else p
    for p in _pages() if _python_blocks(p)])
def test_every_python_block_of_the_page_runs(page, tmp_path):
    for need in _NEEDS_MARKER.finditer((ROOT / page).read_text(encoding="utf-8")):
        if importlib.util.find_spec(need["module"]) is None:
            pytest.skip(f"the page needs {need['module']} (an optional extra), absent here")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "_docs_runner.py"),
                           str(ROOT / page)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = outcome["failed"]
    assert failed is None, f"{page}:{failed['line']} failed:\n{failed['traceback']}"
    assert len(outcome["ran"]) + len(outcome["skipped"]) == len(_python_blocks(page))
    assert len(outcome["skipped"]) == _SKIPPED.get(page, 0)
