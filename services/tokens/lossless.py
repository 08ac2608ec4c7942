"""Lossless rewrites of free text (see ``segments``): the model is told the same thing in
fewer tokens, and nothing a reader could need is lost.

- ``layout``: trailing spaces, runs of blank lines and spaces inside lines, padded
  markdown table cells. Leading indentation is kept (it nests markdown lists).
- ``json``: every JSON object or array embedded in the text is minified; a list of
  uniform records becomes ``{"columns": [...], "rows": [[...], ...]}`` when that is
  fewer tokens. Both parse back to the same data (the records form by zipping).
- ``xml``: a well-formed XML document becomes inter-element-whitespace-free XML or JSON,
  whichever is fewest tokens for the target tokenizer, and only when fewer than the
  original (measured per input: markup is not always dearer than JSON).

Each function takes free text (never a code block) and returns text; ``count`` is the
target model's token counter.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

from services.tokens import segments

Count = Callable[[str], int]

_PARAGRAPH_BREAK = re.compile(r"(\n[ \t]*\n+)")
_XML_LINE = re.compile(r"(?m)^[ \t]*<(?:\?xml|[A-Za-z_])")
_TRAILING = re.compile(r"[ \t]+$", re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")
_INNER_SPACES = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")
_TABLE_ROW = re.compile(r"^[ \t]*\|.*\|[ \t]*$")
_DELIMITER_CELL = re.compile(r"^\s*(:?)-+(:?)\s*$")


def layout(text: str) -> str:
    """Layout of prose and markdown; embedded JSON and XML documents (whose string
    values may hold meaningful runs of spaces) are left to their own stages."""
    out: list[str] = []
    pos = 0
    for begin, end, _ in json_spans(text):
        out.append(_layout_prose(text[pos:begin]))
        out.append(text[begin:end])
        pos = end
    out.append(_layout_prose(text[pos:]))
    return "".join(out)


def _layout_prose(text: str) -> str:
    pieces = _PARAGRAPH_BREAK.split(text)
    for i in range(0, len(pieces), 2):
        opened = _XML_LINE.search(pieces[i])
        if opened is not None and _is_xml_document(pieces[i][opened.start():]):
            pieces[i] = _layout_lines(pieces[i][: opened.start()]) + pieces[i][opened.start():]
        else:
            pieces[i] = _layout_lines(pieces[i])
    return _BLANK_RUNS.sub("\n\n", "".join(pieces))


def _layout_lines(text: str) -> str:
    lines = []
    for line in _TRAILING.sub("", text).split("\n"):
        if _TABLE_ROW.match(line):
            line = _compact_table_row(line)
        else:
            line = _INNER_SPACES.sub(" ", line)
        lines.append(line)
    return "\n".join(lines)


def _compact_table_row(line: str) -> str:
    cells = line.strip()[1:-1].split("|")
    if any(c.endswith("\\") for c in cells):  # escaped pipes: leave the row alone
        return line
    out = []
    for cell in cells:
        delimiter = _DELIMITER_CELL.match(cell)
        out.append(f"{delimiter[1]}---{delimiter[2]}" if delimiter else cell.strip())
    return "|" + "|".join(out) + "|"


# --- JSON ------------------------------------------------------------------------------

_JSON_START = re.compile(r"(?m)^[ \t]*[\[{]")
_DECODER = json.JSONDecoder(object_pairs_hook=lambda pairs: _unique_keys(pairs))


class _DuplicateKeys(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):  # minifying would silently drop a value
        raise _DuplicateKeys("duplicate keys")
    return result


def minify(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def records_table(value: Any) -> dict[str, Any] | None:
    """``{"columns", "rows"}`` for a list of >= 2 objects with the same keys in the same
    order, else None."""
    if not (isinstance(value, list) and len(value) >= 2 and all(isinstance(v, dict)
                                                                for v in value)):
        return None
    columns = list(value[0])
    if not columns or any(list(v) != columns for v in value[1:]):
        return None
    return {"columns": columns, "rows": [list(v.values()) for v in value]}


def json_spans(text: str) -> list[tuple[int, int, Any]]:
    """(start, end, value) of each JSON object or array that starts a line."""
    spans: list[tuple[int, int, Any]] = []
    pos = 0
    for start in _JSON_START.finditer(text):
        begin = start.end() - 1
        if begin < pos:
            continue
        try:
            value, end = _DECODER.raw_decode(text, begin)
        except ValueError:
            continue
        spans.append((begin, end, value))
        pos = end
    return spans


def json_blocks(text: str, count: Count) -> str:
    """Minify (or tabulate) each JSON object/array that starts a line."""
    out: list[str] = []
    pos = 0
    for begin, end, value in json_spans(text):
        original = text[begin:end]
        out.append(text[pos:begin])
        out.append(_smallest(original, [minify(value), _tabulated(value)], count))
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _tabulated(value: Any) -> str | None:
    """Minified, with every list of uniform records (at any depth) as a table; None when
    there is no such list."""
    found = False

    def walk(node: Any) -> Any:
        nonlocal found
        table = records_table(node)
        if table is not None:
            found = True
            table["rows"] = [[walk(v) for v in row] for row in table["rows"]]
            return table
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    converted = walk(value)
    return minify(converted) if found else None


def _smallest(original: str, candidates: list[str | None], count: Count) -> str:
    best, best_tokens = original, None
    for candidate in candidates:
        if candidate is None or candidate == original:
            continue
        if best_tokens is None:
            best_tokens = count(original)
        tokens = count(candidate)
        if tokens < best_tokens:
            best, best_tokens = candidate, tokens
    return best


# --- XML -------------------------------------------------------------------------------

_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>\s*")
_BETWEEN_TAGS = re.compile(r">\s+<")




def xml_document(text: str, count: Count) -> str:
    """Each paragraph's XML document (from a line that opens a tag to the paragraph's
    end) in its fewest-token lossless form."""
    pieces = _PARAGRAPH_BREAK.split(text)
    for i in range(0, len(pieces), 2):
        opened = _XML_LINE.search(pieces[i])
        if opened is not None:
            head, doc = pieces[i][: opened.start()], pieces[i][opened.start():]
            pieces[i] = head + _xml_compact(doc, count)
    return "".join(pieces)


def _xml_compact(text: str, count: Count) -> str:
    stripped = text.strip()
    root = _parse_xml(stripped) if _is_xml_document(text) else None
    if root is None or _has_mixed_content(root):
        return text
    candidates: list[str | None] = []
    if "<![CDATA[" not in stripped and "<!--" not in stripped:
        candidates.append(_BETWEEN_TAGS.sub("><", stripped))
    if _json_convertible(root, stripped):
        candidates.append(minify({root.tag: _element_value(root)}))
    best = _smallest(stripped, candidates, count)
    if best is stripped:
        return text
    lead = text[: len(text) - len(text.lstrip())]
    trail = text[len(text.rstrip()) :]
    return lead + best + trail


def _is_xml_document(text: str) -> bool:
    stripped = text.strip()
    return (stripped.startswith("<") and stripped.endswith(">")
            and _parse_xml(stripped) is not None)


def _parse_xml(text: str) -> ET.Element | None:
    try:
        return ET.fromstring(text)
    except ET.ParseError:
        return None


def _has_mixed_content(element: ET.Element) -> bool:
    """Text beside child elements, where whitespace may matter (``<b>a</b> <i>b</i>``)."""
    children = list(element)
    if children and ((element.text or "").strip()
                     or any((c.tail or "").strip() for c in children)):
        return True
    return any(_has_mixed_content(c) for c in children)


def _json_convertible(root: ET.Element, text: str) -> bool:
    """JSON keeps every fact only without namespaces, comments or processing instructions
    (ElementTree drops them) and when same-named siblings are contiguous (JSON groups
    them, so their order among other siblings must not matter)."""
    if "<!--" in text or "<!DOCTYPE" in text or _XML_DECL.sub("", text).count("<?"):
        return False
    for element in root.iter():
        if element.tag.startswith("{") or any(k.startswith("{") for k in element.attrib):
            return False
        seen: list[str] = []
        for child in element:
            if child.tag in seen and seen[-1] != child.tag:
                return False
            if not seen or seen[-1] != child.tag:
                seen.append(child.tag)
            if child.tag.startswith("@") or child.tag == "#text":
                return False
    return True


def _element_value(element: ET.Element) -> Any:
    children = list(element)
    text = element.text if element.text is not None else ""
    if not children and not element.attrib:
        return text
    value: dict[str, Any] = {f"@{k}": v for k, v in element.attrib.items()}
    if not children:
        if text:
            value["#text"] = text
        return value
    for child in children:
        child_value = _element_value(child)
        if child.tag in value:
            existing = value[child.tag]
            if isinstance(existing, list) and getattr(existing, "_grouped", False):
                existing.append(child_value)
            else:
                value[child.tag] = _Grouped([existing, child_value])
        else:
            value[child.tag] = child_value
    return value


class _Grouped(list):
    """A list made from repeated sibling elements (not a JSON list in the source)."""

    _grouped = True


# --- duplicates ------------------------------------------------------------------------

MIN_DUPLICATE_CHARS = 40  # shorter repeats ("Thanks!", "Yes.") carry meaning in place


def dedupe(texts: list[str], frozen: list[bool]) -> list[str]:
    """Drop a paragraph (outside code blocks) that appeared earlier in this or another
    message. Frozen texts (the last user message) are never changed but their
    paragraphs count as seen only after every other text has been checked; a text is
    never emptied by this."""
    seen: set[str] = set()
    out = []
    for text, keep in zip(texts, frozen, strict=True):
        if keep:
            out.append(text)
            continue
        deduped = segments.map_free(text, lambda free: _drop_seen(free, seen))
        out.append(deduped if deduped.strip() else text)
    return out


def _drop_seen(text: str, seen: set[str]) -> str:
    pieces = _PARAGRAPH_BREAK.split(text)
    kept: list[str] = []
    for i in range(0, len(pieces), 2):
        paragraph = pieces[i]
        key = paragraph.strip()
        if len(key) >= MIN_DUPLICATE_CHARS and key in seen:
            continue
        seen.add(key)
        if kept:
            kept.append(pieces[i - 1] if i else "\n\n")
        kept.append(paragraph)
    return "".join(kept)
