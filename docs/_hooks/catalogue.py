"""MkDocs hook: the metric and explanation-method catalogues, generated from the registries.

A page that contains ``<!-- evalkit:metric-catalogue -->`` (or ``explainer-catalogue``) gets
the marker replaced, at every build, by tables and entries built from
:func:`evalkit.metrics.list_metrics`, the metric classes (signature, docstring) and
:func:`evalkit.explain.available_methods` / ``explainer_info``. Nothing is written to disk, so
the catalogue cannot go stale: a metric added to the registry appears at the next build.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

METRIC_MARKER = "<!-- evalkit:metric-catalogue -->"
EXPLAINER_MARKER = "<!-- evalkit:explainer-catalogue -->"

_ROOT = Path(__file__).resolve().parents[2]
#: the validity report card's data (written by ``python scripts/validity_report.py --write``)
VALIDITY_DATA = _ROOT / "docs" / "_data" / "validity.json"
if str(_ROOT) not in sys.path:  # document the checkout, not some other installed copy
    sys.path.insert(0, str(_ROOT))


def _sibling(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_evalkit_docs_{name}",
                                                  Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_doc = _sibling("griffe_docstrings")

FAMILY_TITLES = {
    "faithfulness": "Faithfulness",
    "robustness": "Robustness",
    "localisation": "Localisation",
    "complexity": "Complexity",
    "randomisation": "Randomisation",
    "axiomatic": "Axiomatic",
}

EXPLAINER_GROUPS = {
    "evalkit.explain.captum_methods": "captum methods",
    "evalkit.explain.cam": "CAM family (native torch)",
    "evalkit.explain.controls": "Controls",
    "evalkit.explain.rollout": "Vision transformers (attention)",
}


# ------------------------------------------------------------------------------ text helpers
def _paragraphs(lines: list[str]) -> list[str]:
    paras, cur = [], []
    for line in lines:
        if line.strip():
            cur.append(line)
        elif cur:
            paras.append("\n".join(cur))
            cur = []
    if cur:
        paras.append("\n".join(cur))
    return paras


def _prose(doc: str) -> list[str]:
    """The paragraphs of a docstring before its first numpy section (trailing prose hoisted)."""
    lines = _doc._hoist_trailing_prose(_doc._role_to_code(doc).splitlines())
    for i in range(len(lines) - 1):
        if lines[i].strip() and _doc._DASHES.match(lines[i + 1]):
            lines = lines[:i]
            break
    return _paragraphs(lines)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    """One table cell: pipes escaped outside code spans (inside them the table parser keeps
    them, and an escape would show)."""
    parts = re.split(r"(`+[^`]*?`+)", _one_line(text))
    return "".join(p if p.startswith("`") else p.replace("|", "\\|") for p in parts)


def quantus_notes(cls: type) -> tuple[str, str]:
    """(title, markdown) of what a metric's docstring says about Quantus.

    The paragraph that starts a ``Deviation(s) from Quantus`` statement (from that phrase on),
    with the bullet list it introduces; otherwise every descriptive paragraph that mentions
    Quantus; otherwise nothing.
    """
    paras = _prose(inspect.getdoc(cls) or "")
    body = paras[1:]  # the first paragraph is the summary
    out: list[str] = []
    for i, para in enumerate(body):
        m = re.search(r"Deviations? from Quantus", para)
        if not m:
            continue
        out.append(_one_line(para[m.start():]))
        j = i + 1
        while j < len(body) and body[j].lstrip().startswith(("* ", "- ")):
            out.append(_bullets(body[j]))
            j += 1
    if out:
        return "Deviations from Quantus", "\n\n".join(out)
    notes: list[str] = []
    for para in body:
        if "Quantus" not in para or para.startswith("Reference"):
            continue
        if para.lstrip().startswith(("* ", "- ")):  # only the items that mention Quantus
            items = [i for i in _bullets(para).splitlines() if "Quantus" in i]
            notes.append("\n".join(items))
        else:
            notes.append(_one_line(para))
    if notes:
        return "Notes on Quantus", "\n\n".join(notes)
    return "", ""


def _bullets(para: str) -> str:
    items, cur = [], []
    for line in para.splitlines():
        if line.lstrip().startswith(("* ", "- ")):
            if cur:
                items.append(" ".join(cur))
            cur = [line.strip()[2:]]
        else:
            cur.append(line.strip())
    if cur:
        items.append(" ".join(cur))
    return "\n".join(f"* {item}" for item in items)


def _summary(obj: Any) -> str:
    paras = _prose(inspect.getdoc(obj) or "")
    return _one_line(paras[0]) if paras else ""


def _signature(cls: type) -> str:
    """The metric-specific constructor parameters with their defaults."""
    from evalkit.metrics import Metric

    shown: list[str] = []
    seen: set[str] = set()
    for klass in cls.__mro__:
        if klass is Metric or not issubclass(klass, Metric):
            break
        if "__init__" not in klass.__dict__:
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name in seen:
                continue
            seen.add(p.name)
            shown.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return f"{cls.__name__}({', '.join(shown)})"


def _yes(flag: Any) -> str:
    return "✓" if bool(flag) else ""


# ------------------------------------------------------------------------------ metrics
def metric_catalogue() -> str:
    from evalkit.metrics import FAMILIES, get, list_metrics

    frame = list_metrics()
    # only evalkit's own metrics (a test session may have registered others)
    frame = frame[[get(n).__module__.startswith("evalkit.") for n in frame["name"]]]
    if frame.empty:
        raise RuntimeError("evalkit.metrics.list_metrics() returned no metrics")
    out = [
        f"{len(frame)} metrics in {frame['family'].nunique()} families. ↑ higher is better, "
        "↓ lower is better. *masks*: needs ground-truth masks `s`; *gradients*: needs a "
        "differentiable (torch) model; *model*: runs the model (otherwise attributions and "
        "masks suffice); *re-explains*: calls the explain function again on perturbed inputs or "
        "models; *stochastic*: draws random numbers (seeded, per sample); *set-level*: a score "
        "defined over the data set rather than per sample; *report card*: the mechanisms of the "
        "[validity testbeds](validity.md#report-card) the metric recovers at its defaults (✓: "
        "no testbed of the mechanism in the wrong order) and the testbeds it ranks in the "
        "wrong order (✗).",
        "",
        "| metric | family | direction | masks | gradients | model | re-explains | stochastic "
        "| set-level | report card |",
        "|:---|:---|:---:|:---:|:---:|:---:|:---:|:---:|:---:|:---|",
    ]
    validity = validity_data()
    for row in frame.itertuples(index=False):
        arrow = "↑ higher" if row.higher_is_better else "↓ lower"
        out.append(
            f"| [{row.name}](#{row.name.lower()}) | {row.family} | {arrow} "
            f"| {_yes(row.needs_masks)} | {_yes(row.needs_gradients)} | {_yes(row.needs_model)} "
            f"| {_yes(row.re_explains)} | {_yes(row.stochastic)} | {_yes(row.set_level)} "
            f"| {report_card_cell(validity, row.name)} |"
        )
    for family in FAMILIES:
        rows = frame[frame["family"] == family]
        if rows.empty:
            continue
        out += ["", f"## {FAMILY_TITLES.get(family, family.title())}", ""]
        for row in rows.itertuples(index=False):
            out += _metric_entry(get(row.name), row, validity)
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------ report card
def validity_data(path: Path = VALIDITY_DATA) -> dict[str, Any]:
    """The committed report-card data (``{}`` where it has not been generated)."""
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def report_card_cell(data: dict[str, Any], name: str) -> str:
    """The catalogue's "report card" cell: ✓ the mechanisms recovered (no testbed of theirs
    wrong), ✗ the testbeds ranked in the wrong order."""
    m = data.get("metrics", {}).get(name)
    if m is None:
        return "not run" if data else ""
    parts = []
    if m["recovers"]:
        parts.append("✓ " + ", ".join(m["recovers"]))
    if m["wrong_on"]:
        parts.append("✗ " + ", ".join(m["wrong_on"]))
    if not parts and m["error_on"]:  # e.g. a metric that needs a model the testbeds lack
        reason = m["cells"][m["error_on"][0]].get("reason", "error")
        return _cell("! " + (reason if len(reason) <= 80 else reason[:77] + "..."))
    return _cell("; ".join(parts)) if parts else "no verdict"


def report_card_lines(data: dict[str, Any], name: str) -> list[str]:
    """The metric entry's report-card paragraph: verdicts at the defaults, the Quantus 0.6
    metric of the same name, and the settings that recover a failure."""
    m = data.get("metrics", {}).get(name)
    if m is None:
        return []
    said = []
    for label, key in (("recovers", "recovers"), ("is wrong on", "wrong_on"),
                       ("is undecided on", "undecided_on"), ("raises on", "error_on")):
        if m.get(key):
            said.append(f"{label} {', '.join(m[key])}")
    text = "; ".join(said) if said else "applies to no testbed"
    q = m.get("quantus")
    if q:
        right = sorted({data["testbeds"][b]["mechanism"] for b, c in q.items()
                        if c["verdict"] == "correct" and b in data.get("testbeds", {})})
        text += (f". Quantus 0.6's {name} recovers {', '.join(right)}" if right
                 else f". Quantus 0.6's {name} recovers none")
    fixes: dict[str, list[str]] = {}
    for a in m.get("alternatives", []):
        if a["verdict"] == "correct":
            fixes.setdefault(a["setting"], []).append(a["testbed"])
    if fixes:
        text += ". " + "; ".join(f"`{setting}` recovers {', '.join(beds)}"
                                 for setting, beds in fixes.items())
    return [f"**Report card** ([validity](validity.md#report-card)). At its defaults it "
            f"{text}.", ""]


def _metric_entry(cls: type, row: Any, validity: dict[str, Any] | None = None) -> list[str]:
    arrow = "**↑ higher is better**" if row.higher_is_better else "**↓ lower is better**"
    needs = [label for label, flag in (("masks", row.needs_masks),
                                       ("gradients", row.needs_gradients),
                                       ("a model", row.needs_model)) if flag]
    traits = [label for label, flag in (("re-explains", row.re_explains),
                                        ("stochastic", row.stochastic),
                                        ("set-level", row.set_level)) if flag]
    facts = [arrow, "needs " + ", ".join(needs) if needs else "model-free"]
    facts += traits
    defaults = (f"defaults: `abs={row.default_abs}`, `normalise={row.default_normalise}`, "
                f"`softmax={row.default_softmax}`")
    api = f"{cls.__module__}.{cls.__qualname__}"
    lines = [
        f"### {row.name}",
        "",
        " · ".join(facts) + " · " + defaults,
        "",
        f"`{_signature(cls)}`",
        "",
        _summary(cls),
        "",
    ]
    if cls.aliases:
        lines += ["Also registered as " + ", ".join(f"`{a}`" for a in cls.aliases) + ".", ""]
    if row.paper:
        lines += [f"**Paper.** {_one_line(row.paper)}", ""]
    title, notes = quantus_notes(cls)
    lead = re.match(r"Deviations? from Quantus", notes)
    if lead:  # the docstring's own lead phrase, in bold
        lines += [f"**{lead.group(0)}**{notes[lead.end():]}", ""]
    elif notes.startswith("* "):
        lines += [f"**{title}:**", "", notes, ""]
    elif notes:
        lines += [f"**{title}.** {notes}", ""]
    elif "Quantus" not in _summary(cls):  # else the summary above already says it
        lines += ["**Quantus.** No Quantus-specific notes in its docstring.", ""]
    lines += report_card_lines(validity or {}, row.name)
    lines += [f"Full documentation: [`{cls.__name__}`][{api}].", ""]
    return lines


# ------------------------------------------------------------------------------ explainers
def explainer_catalogue() -> str:
    from evalkit.explain import available_methods, core, explainer_info

    names = available_methods()
    if not names:
        raise RuntimeError("evalkit.explain.available_methods() returned no methods")
    aliases: dict[str, list[str]] = {}
    for alias, name in getattr(core, "_ALIAS_SPELLINGS", {}).items():
        aliases.setdefault(name, []).append(alias)
    groups: dict[str, list[Any]] = {}
    for name in names:
        info = explainer_info(name)
        group = EXPLAINER_GROUPS.get(info.fn.__module__, "Other (registered elsewhere)")
        groups.setdefault(group, []).append(info)
    out = [
        f"{len(names)} registered methods. *gradients*: needs a differentiable (torch) model; "
        "*module*: needs a `torch.nn.Module` (hooks layers); *target*: explains the wrapper's "
        "target score (class-agnostic maps and controls do not); *model-free*: never looks at "
        "the model; *masks*: needs ground-truth masks (`masks=`); *stochastic*: draws random "
        "numbers from its `seed`, per sample. *inputs*: the modalities it is defined for "
        "(image, series, tabular, tokens; `explain()` refuses others with an error that says "
        "what to use instead); on token ids (N, L) the gradient methods attribute at the "
        "embedding layer (so they need a `torch.nn.Module`) and the perturbation methods "
        "replace tokens by the mask token, see "
        "[Text, tabular and time series](#text-tabular-and-time-series). *Also accepted as*: "
        "alias spellings, e.g. Quantus' method names.",
    ]
    order = [*EXPLAINER_GROUPS.values(), "Other (registered elsewhere)"]
    for group in order:
        infos = groups.get(group)
        if not infos:
            continue
        out += [
            "", f"## {group[0].upper()}{group[1:]}", "",
            "| method | inputs | gradients | module | target | model-free | masks | stochastic "
            "| also accepted as | what it computes |",
            "|:---|:---|:---:|:---:|:---:|:---:|:---:|:---:|:---|:---|",
        ]
        for info in infos:
            also = ", ".join(f"`{a}`" for a in sorted(aliases.get(info.name, [])))
            inputs = ", ".join(getattr(info, "modalities", None) or ("any",))
            out.append(
                f"| `{info.name}` | {inputs} | {_yes(info.requires_gradients)} "
                f"| {_yes(info.requires_module)} | {_yes(info.uses_target)} "
                f"| {_yes(info.model_free)} | {_yes(info.needs_masks)} "
                f"| {_yes(info.stochastic)} | {also} | {_cell(_summary(info.fn))} |"
            )
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------ the hook
def on_page_markdown(markdown: str, *, page: Any, config: Any, files: Any) -> str:
    if METRIC_MARKER in markdown:
        markdown = markdown.replace(METRIC_MARKER, metric_catalogue())
    if EXPLAINER_MARKER in markdown:
        markdown = markdown.replace(EXPLAINER_MARKER, explainer_catalogue())
    return markdown
