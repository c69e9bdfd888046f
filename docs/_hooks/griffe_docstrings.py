"""A griffe extension that adapts evalkit's docstrings to mkdocstrings' numpy parser.

evalkit's docstrings are numpy-style with two house habits the parser does not expect:

* free paragraphs (``Deviations from Quantus ...``, ``Reference: ...``) *after* a ``Parameters``
  block. NumPy's parser reads everything up to the next section header as parameters, so these
  paragraphs are moved up, after the description and before the first section;
* Sphinx roles (``:class:`~evalkit.perturb.Imputer```), rendered here as inline code.

Doctest lines (``>>> ...``) outside an ``Examples`` section become ``pycon`` code blocks.
The docstrings in the code are not changed; only what the site shows.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|obj|data|exc|const):`~?([^`]+)`")
_DASHES = re.compile(r"^\s*-{3,}\s*$")
_DOCTEST_FLAG = re.compile(r"\s*#\s*doctest:.*$")
#: sections whose items are ``name:`` / ``name : type`` lines followed by indented text
_ITEM_SECTIONS = {"parameters", "other parameters", "attributes", "keyword arguments",
                  "args", "arguments"}
_NAMES = r"\*{0,2}[A-Za-z_]\w*(?:,\s*\*{0,2}[A-Za-z_]\w*)*"
#: an item line: ``name``, ``name:``, ``name : type`` (a colon followed by text needs a space
#: before it, so ``Reference: S. Bach...`` is prose, not a parameter)
_ITEM = re.compile(rf"^{_NAMES}\s*(?::\s*|\s+:\s+.+)?$")


def _role_to_code(text: str) -> str:
    def short(m: re.Match[str]) -> str:
        target = m.group(1)
        full = m.group(0)
        name = target.rsplit(".", 1)[-1] if "`~" in full else target
        return f"`{name}`"

    return _ROLE.sub(short, text)


def _doctests_to_blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    in_examples = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and _DASHES.match(lines[i + 1]) and line.strip():
            in_examples = line.strip().lower() == "examples"
        if not in_examples and line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            block = []
            # a doctest example runs to the next blank line (prompts and expected output)
            while i < len(lines) and lines[i].strip():
                block.append(_DOCTEST_FLAG.sub("", lines[i][len(indent):]))
                i += 1
            if out and out[-1].strip():
                out.append("")
            out += [f"{indent}```pycon", *(indent + b for b in block), f"{indent}```"]
            if i < len(lines) and lines[i].strip():
                out.append("")
            continue
        out.append(line)
        i += 1
    return out


def _hoist_trailing_prose(lines: list[str]) -> list[str]:
    """Move unindented prose that follows an item section to before the first section."""
    first_section = None
    hoisted: list[list[str]] = []
    kept: list[str] = []
    i = 0
    section = None
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and line.strip() and _DASHES.match(lines[i + 1]):
            if first_section is None:
                first_section = len(kept)
            section = line.strip().lower()
            kept += [line, lines[i + 1]]
            i += 2
            continue
        # (an unindented line that is not an item cannot continue a description)
        if (section in _ITEM_SECTIONS and line.strip() and not line.startswith(" ")
                and not _ITEM.match(line)):
            # a paragraph of prose: everything up to the next section header or item line
            para: list[str] = []
            while i < len(lines):
                if i + 1 < len(lines) and lines[i].strip() and _DASHES.match(lines[i + 1]):
                    break
                if lines[i].strip() and not lines[i].startswith(" ") and _ITEM.match(lines[i]) \
                        and para and not para[-1].strip():
                    break
                para.append(lines[i])
                i += 1
            while para and not para[-1].strip():
                para.pop()
            hoisted.append(para)
            section = None  # the prose ends the item section
            continue
        kept.append(line)
        i += 1
    if not hoisted or first_section is None:
        return lines
    before = kept[:first_section]
    while before and not before[-1].strip():
        before.pop()
    block: list[str] = []
    for para in hoisted:
        block += ["", *para]
    return [*before, *block, "", *kept[first_section:]]


def _plain_section_titles(lines: list[str]) -> list[str]:
    """``Parameters shared by every metric`` -> ``Parameters`` (likewise Attributes), so the
    numpy parser reads the items instead of showing the block as an admonition."""
    out = list(lines)
    for i in range(len(out) - 1):
        m = re.match(r"^(\s*)(Parameters|Attributes)\s+\S.*$", out[i])
        if m and _DASHES.match(out[i + 1]):
            out[i] = m.group(1) + m.group(2)
            out[i + 1] = m.group(1) + "-" * len(m.group(2))
    return out


def rewrite(text: str) -> str:
    lines = _plain_section_titles(_role_to_code(text).splitlines())
    lines = _hoist_trailing_prose(lines)
    lines = _doctests_to_blocks(lines)
    return "\n".join(lines)


def _live_doc(path: str) -> str | None:
    module, _, name = path.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return inspect.getdoc(obj)


class EvalkitDocstrings(griffe.Extension):
    """Rewrite each docstring once, when its object is created."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None or not obj.docstring.value:
            return
        if "<<" in obj.docstring.value:
            # a template filled in at import time (robustness metrics share paragraphs):
            # document what Python sees
            live = _live_doc(obj.path)
            if live:
                obj.docstring.value = live
        obj.docstring.value = rewrite(obj.docstring.value)

    def on_class_members(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        # typing.Protocol classes get ``typing._no_init_or_replace_init`` as ``__init__``, an
        # alias griffe cannot resolve; such a class has no constructor worth documenting
        init = cls.members.get("__init__")
        if init is not None and init.is_alias and init.target_path.startswith("typing."):
            del cls.members["__init__"]
