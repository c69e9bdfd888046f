"""The list of Quantus behaviours evalkit deliberately differs from is part of the repository.

docs/migrating-quantus.md ("Where evalkit deliberately differs from Quantus") has one row per
stable id, with an anchor (``migrating-quantus.md#c5``). Docstrings, benchmark notes, docs and
tests cite an id as "deviation C5"; every id cited must have its row, and no file may point at
notes that live outside the repository.
"""

from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TABLE_PAGE = ROOT / "docs" / "migrating-quantus.md"
SECTION = "## Where evalkit deliberately differs from Quantus"

CITATION = re.compile(r"\b[Dd]eviation\s+C(\d+)\b")
OLD_CITATION = re.compile(r"\b[Bb]ug\s+C\d+\b")  # the form used before the table existed
ROW = re.compile(r'^\| <a id="c(\d+)"></a>C(\d+) \|')
LINK = re.compile(r"migrating-quantus\.md#c(\d+)\b")
SELF_LINK = re.compile(r"\]\(#c(\d+)\)")
# Pointers to notes outside the repository (written in pieces so this file does not match).
OUTSIDE = re.compile("|".join(re.escape(s) for s in (
    "../" + "shared", "shared/" + "reference", "reference" + " notes", "landscape" + " notes",
    "reference/" + "quantus.md", "reference/" + "metaquantus.md", "reference/" + "gradcam.md",
)), re.IGNORECASE)

SKIP_DIRS = {".git", ".venv", "venv", "build", "site", "node_modules", "__pycache__", ".oracle",
             ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints"}
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".txt", ".toml", ".cfg", ".yml", ".yaml", ".json",
                 ".rst", ".ini", ".sh"}


@cache
def repository_files() -> tuple[Path, ...]:
    """Tracked and untracked-but-not-ignored files (git), else a walk that skips .git, virtual
    environments and build outputs."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], cwd=ROOT, capture_output=True, check=True,
                             timeout=60).stdout.decode()
        files = [ROOT / p for p in out.split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        files = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS
                           and not (Path(dirpath) / d / "pyvenv.cfg").exists()]
            files += [Path(dirpath) / f for f in filenames]
    return tuple(sorted(p for p in files if p.suffix in TEXT_SUFFIXES and p.is_file()))


@cache
def text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def hits(pattern: re.Pattern[str], path: Path) -> list[tuple[int, re.Match[str]]]:
    content = text(path)
    return [(content.count("\n", 0, m.start()) + 1, m) for m in pattern.finditer(content)]


def split_cells(row: str) -> list[str]:
    """Cells of a Markdown table row; ``\\|`` and pipes inside `code` do not split."""
    cells, cell, in_code, i = [], "", False, 0
    while i < len(row):
        ch = row[i]
        if ch == "\\" and row[i + 1: i + 2] == "|":
            cell, i = cell + "\\|", i + 2
            continue
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += ch
        i += 1
    cells.append(cell.strip())
    return cells[1:-1]  # the row starts and ends with a pipe


@cache
def table_rows() -> dict[int, list[str]]:
    page = text(TABLE_PAGE)
    assert SECTION in page, f"{rel(TABLE_PAGE)} has no section {SECTION!r}"
    section = page.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows: dict[int, list[str]] = {}
    for line in section.splitlines():
        m = ROW.match(line)
        if m is None:
            continue
        assert m.group(1) == m.group(2), f"anchor and id differ: {line[:40]}"
        n = int(m.group(1))
        assert n not in rows, f"C{n} has two rows"
        rows[n] = split_cells(line)
    return rows


def test_table_has_one_complete_row_per_id_in_order():
    rows = table_rows()
    assert rows, "no deviation rows found"
    assert list(rows) == sorted(rows)
    for n, cells in rows.items():
        assert len(cells) == 4 and all(cells), f"C{n}: want id | Quantus | evalkit | Shown by"


def test_every_cited_deviation_has_a_row():
    ids = set(table_rows())
    missing = [f"{rel(p)}:{line}: C{m.group(1)}" for p in repository_files()
               for line, m in hits(CITATION, p) if int(m.group(1)) not in ids]
    assert not missing, "deviation ids without a row in docs/migrating-quantus.md:\n" + \
        "\n".join(missing)


def test_links_to_deviation_anchors_resolve():
    ids = set(table_rows())
    broken = [f"{rel(p)}:{line}: #c{m.group(1)}" for p in repository_files()
              for line, m in hits(LINK, p) if int(m.group(1)) not in ids]
    broken += [f"{rel(TABLE_PAGE)}:{line}: #c{m.group(1)}"
               for line, m in hits(SELF_LINK, TABLE_PAGE) if int(m.group(1)) not in ids]
    assert not broken, "links to missing deviation rows:\n" + "\n".join(broken)


def test_tests_named_in_the_table_exist():
    """The "Shown by" column names tests as ``file::[Class::]name``; the name must still be
    defined somewhere under tests/ (files may be split or renamed)."""
    defined = set()
    for p in (ROOT / "tests").rglob("test_*.py"):  # tests/quantus_suite/ too
        defined.update(re.findall(r"^\s*(?:def|class)\s+(\w+)", text(p), re.MULTILINE))
    missing = []
    for n, cells in table_rows().items():
        for ref in re.findall(r"`((?:\w+/)*test_\w+\.py(?:::\w+)+)`", cells[3]):
            if ref.rsplit("::", 1)[1] not in defined:
                missing.append(f"C{n}: {ref}")
    assert not missing, "tests named in the deviation table not found:\n" + "\n".join(missing)


@pytest.mark.parametrize("pattern, what", [
    (OUTSIDE, "a pointer to notes outside the repository (cite docs/ pages instead)"),
    (OLD_CITATION, "the old citation form (write 'deviation Cn', see docs/migrating-quantus.md)"),
], ids=["outside-notes", "old-citation-form"])
def test_repository_is_self_contained(pattern, what):
    found = [f"{rel(p)}:{line}: {m.group(0)!r}" for p in repository_files()
             for line, m in hits(pattern, p)]
    assert not found, f"{what}:\n" + "\n".join(found)
