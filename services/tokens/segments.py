"""Split text into the parts a stage may rewrite and the parts it must leave alone.

Fenced code blocks (``` or ~~~, CommonMark style) and regions a caller marked with
``<!-- keep -->`` ... ``<!-- /keep -->`` are *protected*: every stage passes them through
byte for byte. Everything else is *free* text. ``join(split(text)) == text`` always, so a
stage that changes nothing changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_PROTECTED = re.compile(
    r"(?P<fence>^(?P<mark>`{3,}|~{3,})[^\n]*\n.*?^(?P=mark)[ \t]*$(?:\n|\Z))"
    r"|(?P<keep><!--\s*keep\s*-->.*?<!--\s*/keep\s*-->)",
    re.DOTALL | re.MULTILINE,
)
_UNCLOSED_FENCE = re.compile(r"^(`{3,}|~{3,})[^\n]*\n", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    protected: bool


def split(text: str) -> list[Segment]:
    """Free and protected segments, in order. An unclosed fence protects to the end."""
    out: list[Segment] = []
    pos = 0
    for match in _PROTECTED.finditer(text):
        if match.start() > pos:
            out.extend(_free_until_unclosed(text[pos : match.start()]))
        out.append(Segment(match.group(0), True))
        pos = match.end()
    if pos < len(text):
        out.extend(_free_until_unclosed(text[pos:]))
    return out


def _free_until_unclosed(text: str) -> list[Segment]:
    opened = _UNCLOSED_FENCE.search(text)
    if opened is None:
        return [Segment(text, False)]
    head, tail = text[: opened.start()], text[opened.start() :]
    return ([Segment(head, False)] if head else []) + [Segment(tail, True)]


def join(segments: list[Segment]) -> str:
    return "".join(s.text for s in segments)


def map_free(text: str, rewrite: Callable[[str], str]) -> str:
    """Apply ``rewrite`` to every free segment, leaving protected ones untouched."""
    return "".join(s.text if s.protected else rewrite(s.text) for s in split(text))


def has_protected(text: str) -> bool:
    return any(s.protected for s in split(text))
