"""Sentences for user-facing messages.

Messages are often built from other messages (a cell's error inside a warning, a worker's
error inside a report). Appending ``"."`` to a message that already ends a sentence gives
``".."`` or ``".)."``; these helpers end every part exactly once.
"""

from __future__ import annotations

_CLOSERS = ")]\"'`"
_TERMINALS = (".", "!", "?")


def end_sentence(text: str) -> str:
    """``text`` (stripped) ending a sentence exactly once: a period is added unless it already
    ends with ``.``, ``!`` or ``?``, possibly followed by closing brackets or quotes (``"...
    is wrong.)"``). A trailing ellipsis (``"(N, ...)"``) does not end a sentence."""
    stripped = text.strip()
    if not stripped:
        return ""
    core = stripped.rstrip(_CLOSERS)
    if core.endswith(_TERMINALS) and not core.endswith("..."):
        return stripped
    return stripped + "."


def join_sentences(*parts: str | None) -> str:
    """The non-empty ``parts`` as sentences separated by one space, each ended once."""
    return " ".join(s for s in (end_sentence(p) for p in parts if p) if s)


def malformed_punctuation(text: str) -> list[str]:
    """The places where ``text`` ends a sentence twice (``..`` outside an ellipsis, ``.).``,
    ``.;``, ``?.``): empty for a well-formed message. Used by the tests that scan messages."""
    import re

    # a terminal mark not itself part of an ellipsis, optional closers, then "." or ";"
    # that does not start an ellipsis
    return re.findall(r"(?<!\.)[.!?][)\]\"'`]*[.;](?!\.)", text)
