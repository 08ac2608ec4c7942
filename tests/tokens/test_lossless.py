"""Lossless stages on crafted inputs: code survives byte for byte, JSON stays valid and
equal, XML converts only when that is fewer tokens, duplicates go but never the last
user message's."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from services.tokens import segments, text_counter
from services.tokens.lossless import dedupe, json_blocks, layout, records_table, xml_document

count = text_counter()

CODE = "```python\ndef f(x):\n    return  x   *  2    \n\n\n\n# end   \n```\n"


def test_code_blocks_survive_layout_byte_identical() -> None:
    text = "Fix   this:   \n\n\n\n" + CODE + "\n\n\nThanks   a lot.  "
    out = segments.map_free(text, layout)
    assert CODE in out
    assert out.startswith("Fix this:\n\n") and out.endswith("Thanks a lot.")


def test_unclosed_fence_is_protected_to_the_end() -> None:
    text = "intro   text\n~~~\nraw    text   \n"
    assert segments.map_free(text, layout) == "intro text\n~~~\nraw    text   \n"


def test_keep_markers_protect_a_region() -> None:
    text = "a   b\n<!-- keep -->x    y\n\n\n\nz<!-- /keep -->"
    assert segments.map_free(text, layout) == "a b\n<!-- keep -->x    y\n\n\n\nz<!-- /keep -->"


def test_markdown_table_padding_is_removed() -> None:
    table = "| name   | qty |\n|:-------|----:|\n| apple  |   3 |"
    assert layout(table) == "|name|qty|\n|:---|---:|\n|apple|3|"


def test_json_is_minified_valid_and_equal() -> None:
    value = {"user": {"name": "Ann  Lee", "tags": ["a", "b"], "score": 1.5e3, "ok": True,
                      "none": None, "text": "line\nbreak \u00e9"}}
    text = "Here:\n" + json.dumps(value, indent=4) + "\nDone."
    out = json_blocks(text, count)
    assert count(out) < count(text)
    body = out[len("Here:\n"): -len("\nDone.")]
    assert json.loads(body) == value


def test_layout_leaves_spaces_inside_json_strings_alone() -> None:
    text = 'Data:\n{"a":   "x    y"}\nok'
    assert json.loads(layout(text)[len("Data:\n"): -len("\nok")]) == {"a": "x    y"}


def test_json_with_duplicate_keys_is_left_alone() -> None:
    text = '{\n  "a": 1,\n  "a": 2\n}'
    assert json_blocks(text, count) == text


def test_uniform_records_become_header_and_rows() -> None:
    records = [{"id": i, "name": f"item {i}", "price": i * 1.25, "in_stock": i % 2 == 0}
               for i in range(20)]
    text = json.dumps(records, indent=2)
    out = json_blocks(text, count)
    table = json.loads(out)
    assert table["columns"] == ["id", "name", "price", "in_stock"]
    assert [dict(zip(table["columns"], row, strict=True)) for row in table["rows"]] == records
    assert count(out) < count(json.dumps(records, separators=(",", ":")))


def test_records_with_different_keys_are_not_tabulated() -> None:
    assert records_table([{"a": 1}, {"b": 2}]) is None
    assert records_table([{"a": 1}]) is None


def _equal_xml(a: str, b: str) -> bool:
    def canon(e: ET.Element) -> tuple:
        return (e.tag, e.attrib, (e.text or "").strip(), [canon(c) for c in e])
    return canon(ET.fromstring(a)) == canon(ET.fromstring(b))


FEED = """<?xml version="1.0"?>
<rss version="2.0">
  <channel>
    <title>News</title>
    <item>
      <title>First  story</title>
      <link>https://example.org/1</link>
    </item>
    <item>
      <title>Second story</title>
      <link>https://example.org/2</link>
    </item>
  </channel>
</rss>"""


def test_xml_document_converts_when_smaller_and_keeps_every_fact() -> None:
    out = xml_document(FEED, count)
    assert count(out) < count(FEED)
    if out.startswith("{"):
        rss = json.loads(out)["rss"]
        assert rss["@version"] == "2.0"
        assert [i["title"] for i in rss["channel"]["item"]] == ["First  story", "Second story"]
    else:
        assert _equal_xml(out, FEED)


def test_xml_is_not_converted_when_that_would_not_be_smaller() -> None:
    tiny = "<a>b</a>"
    assert xml_document(tiny, count) == tiny


@pytest.mark.parametrize("doc", [
    "<p>Hello <b>big</b> <i>world</i></p>",  # mixed content: whitespace may matter
    "<a>\n  <b>1</b>\n  <c>2</c>\n  <b>3</b>\n</a>",  # interleaved siblings: order matters
    "<x:a xmlns:x='urn:x'>\n  <x:b>1</x:b>\n</x:a>",  # namespaces
])
def test_xml_that_json_cannot_hold_is_never_converted_to_json(doc: str) -> None:
    out = xml_document(doc, count)
    assert not out.lstrip().startswith("{")
    assert _equal_xml(out, doc)


def test_not_xml_is_left_alone() -> None:
    text = "<not closed\n\nif a < b and c > d"
    assert xml_document(text, count) == text


PARAGRAPH = "The refund policy allows returns within 30 days of delivery for all items."


def test_duplicate_paragraphs_across_messages_are_removed_once() -> None:
    texts = [f"Policy:\n\n{PARAGRAPH}", f"Context again:\n\n{PARAGRAPH}\n\nMore.", "Short.",
             "Short."]
    out = dedupe(texts, [False, False, False, False])
    assert out[0] == texts[0]
    assert out[1] == "Context again:\n\nMore."
    assert out[2:] == ["Short.", "Short."]  # short repeats carry meaning in place


def test_last_user_message_is_never_deduplicated() -> None:
    texts = [PARAGRAPH, PARAGRAPH]
    assert dedupe(texts, [False, True]) == texts


def test_a_message_is_never_emptied_by_dedupe() -> None:
    texts = [PARAGRAPH, PARAGRAPH, "Question?"]
    assert dedupe(texts, [False, False, True])[1] == PARAGRAPH
